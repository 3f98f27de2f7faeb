//! The automerge-paper editing trace (`testdata/automerge-paper.json.gz`, see its README), read
//! for the store's trace test and benchmark.

use std::io::Read;

use automerge::transaction::Transactable;
use automerge::{Automerge, ObjId, ObjType, ROOT};
use ferry_store::{DocId, DocKind, Store};
use serde::Deserialize;

/// One edit: at `position`, delete `deleted` characters and insert `inserted`.
#[derive(Debug, Deserialize)]
pub(crate) struct Patch(pub(crate) usize, pub(crate) usize, pub(crate) String);

#[derive(Deserialize)]
struct Txn {
    patches: Vec<Patch>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct File {
    end_content: String,
    txns: Vec<Txn>,
}

/// The trace: its edits in order, and the text they end with.
pub(crate) struct Trace {
    pub(crate) edits: Vec<Patch>,
    pub(crate) end_content: String,
}

/// Reads the trace from the workspace's `testdata/`.
pub(crate) fn load() -> Trace {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/automerge-paper.json.gz"
    );
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut json = String::new();
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut json)
        .expect("the trace decompresses");
    let file: File = serde_json::from_str(&json).expect("the trace parses");
    Trace {
        edits: file.txns.into_iter().flat_map(|t| t.patches).collect(),
        end_content: file.end_content,
    }
}

/// Makes the document's text object, under the key "text".
pub(crate) fn create_text(tx: &mut impl Transactable) -> Result<ObjId, automerge::AutomergeError> {
    tx.put_object(ROOT, "text", ObjType::Text)
}

/// Applies `edits` to the text object `text`.
pub(crate) fn apply(
    tx: &mut impl Transactable,
    text: &ObjId,
    edits: &[Patch],
) -> Result<(), automerge::AutomergeError> {
    for Patch(position, deleted, inserted) in edits {
        tx.splice_text(text, *position, *deleted as isize, inserted)?;
    }
    Ok(())
}

/// Builds the trace into a new Automerge document in `store`: one commit making the text
/// object, then one commit per `edits_per_commit` edits. Returns the document.
pub(crate) fn build(store: &Store, trace: &Trace, edits_per_commit: usize) -> DocId {
    let doc = store.create(DocKind::Automerge).expect("a document");
    let text = store
        .change(doc, |tx| create_text(tx))
        .expect("the text object");
    for edits in trace.edits.chunks(edits_per_commit) {
        store
            .change(doc, |tx| apply(tx, &text, edits))
            .expect("a commit of edits");
    }
    doc
}

/// The whole trace as an in-memory document with one change per edit (the benches' paper
/// document).
#[allow(dead_code)] // the benches use it, the store's tests do not
pub(crate) fn one_change_per_edit(trace: &Trace) -> Automerge {
    let mut am = Automerge::new();
    let text = am
        .transact(|tx| create_text(tx))
        .map(|ok| ok.result)
        .unwrap();
    for edit in trace.edits.chunks(1) {
        am.transact(|tx| apply(tx, &text, edit)).unwrap();
    }
    am
}
