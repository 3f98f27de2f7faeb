//! A real editing trace into a stored document: 259,778 keystrokes of the automerge paper,
//! committed in batches, closed, reopened, and compared with the text the trace ends with.

// Helpers fail loudly; that is what a test wants.
#![allow(clippy::unwrap_used)]

mod support {
    pub(crate) mod trace;
}

use automerge::{ROOT, ReadDoc};
use ferry_store::Store;
use support::trace;

/// Edits per commit: 1,040 commits in all, with compactions along the way.
const EDITS_PER_COMMIT: usize = 250;

#[test]
fn the_paper_trace_survives_commits_compactions_and_a_reopen() {
    let trace = trace::load();
    assert_eq!(trace.edits.len(), 259_778);

    let dir = tempfile::tempdir().unwrap();
    let (doc, heads, changes) = {
        let store = Store::open(dir.path()).unwrap();
        let doc = trace::build(&store, &trace, EDITS_PER_COMMIT);
        let info = store.info(doc).unwrap();
        let heads = store.read(doc, |d| d.get_heads()).unwrap();
        (doc, heads, info.changes)
    };
    let expected_changes = 1 + trace.edits.len().div_ceil(EDITS_PER_COMMIT) as u64;
    assert_eq!(changes, expected_changes);

    let store = Store::open(dir.path()).unwrap();
    let (text, reopened_heads) = store
        .read(doc, |d| {
            let (_, text) = d.get(ROOT, "text").unwrap().unwrap();
            (d.text(&text).unwrap(), d.get_heads())
        })
        .unwrap();
    assert_eq!(reopened_heads, heads);
    assert_eq!(text.len(), 104_852);
    assert!(
        text == trace.end_content,
        "the reopened text differs from endContent"
    );
    assert_eq!(store.info(doc).unwrap().changes, expected_changes);
}
