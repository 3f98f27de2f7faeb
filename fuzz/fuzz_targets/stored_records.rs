//! Feeds arbitrary records to a store's sled tree, as a damaged or hostile disk would hold
//! them, then opens the store and reads everything in it: documents, their stored form, CRDT
//! states, sync records and status, peers, grants, spaces, blob references and policies.
//!
//! Nothing may panic: a record that does not decode is an error (`Damaged`, `DamagedRecord`,
//! `UnknownFormat`), never a crash. A record pointing to a file (`ferry-record-file:NAME`) is
//! among the inputs, names with `/` and `..` included: it must never reach outside the store.
//!
//! Input: a sequence of records, each a tag byte (chosen among the store's record prefixes),
//! a byte choosing one of two document ids (and peer ids, and space ids), a sequence byte for
//! change records, a length byte and that many value bytes; or, for one tag in eight, a value
//! that is a pointer to a record file with a name taken from the input.
//!
//! `cargo +nightly fuzz run stored_records -- -max_total_time=300` from the repository root.

#![no_main]

use ferry_store::{DocId, PeerId, SpaceId, Store};
use libfuzzer_sys::fuzz_target;

const DOCS: [[u8; 16]; 2] = [[1; 16], [2; 16]];
const PEERS: [[u8; 16]; 2] = [[7; 16], [8; 16]];
/// The store's record prefixes (see `crates/store/src/records.rs`).
const TAGS: &[u8] = b"dsiyprxkmacehj";

/// The key of a record with tag `tag`, for the ids chosen by `who`.
fn key(tag: u8, who: u8, seq: u8) -> Vec<u8> {
    let doc = DOCS[usize::from(who & 1)];
    let peer = PEERS[usize::from((who >> 1) & 1)];
    let space = if who & 4 == 0 {
        *SpaceId::DEFAULT.as_bytes()
    } else {
        [3; 16]
    };
    let mut key = vec![tag];
    match tag {
        b'i' => {
            key.extend_from_slice(&doc);
            key.extend_from_slice(&u64::from(seq).to_be_bytes());
        }
        b'y' => {
            key.extend_from_slice(&peer);
            key.extend_from_slice(&doc);
        }
        b'p' | b'r' => key.extend_from_slice(&peer),
        b'n' => {
            key.extend_from_slice(&space);
            key.extend_from_slice(&doc);
        }
        b'a' => {
            key.extend_from_slice(&peer);
            key.extend_from_slice(&space);
        }
        b'c' | b'e' => key.extend_from_slice(&space),
        b'h' => {
            key.extend_from_slice(&[9; 32]);
            key.extend_from_slice(&doc);
        }
        b'j' => {
            key.extend_from_slice(&doc);
            key.extend_from_slice(&[9; 32]);
        }
        _ => key.extend_from_slice(&doc),
    }
    key
}

fuzz_target!(|input: &[u8]| {
    // automerge may panic on bytes that parse but do not fit together; ferry catches that and
    // reports damage. A panic that escapes is still caught by libFuzzer and reported.
    static QUIET: std::sync::Once = std::sync::Once::new();
    QUIET.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    // The store in `outer/store`, beside a file no record may reach.
    let outer = tempfile::tempdir().expect("a temporary directory");
    let sentinel = outer.path().join("sentinel");
    std::fs::write(&sentinel, b"keep").expect("a sentinel");
    let dir = outer.path().join("store");
    let dir = &dir;
    std::fs::create_dir_all(dir).expect("the store's directory");
    // A real store first (its format marker and key), then records written under it.
    drop(Store::open(dir).expect("a store"));
    {
        // (sled's own threads let go of the tree a moment after the store is dropped.)
        let db = (0..500)
            .find_map(|_| {
                sled::open(dir.join("db"))
                    .map_err(|_| std::thread::sleep(std::time::Duration::from_millis(2)))
                    .ok()
            })
            .expect("the store's sled tree");
        let mut rest = input;
        while let [tag, who, seq, len, tail @ ..] = rest {
            let tag = TAGS[usize::from(*tag) % TAGS.len()];
            let len = usize::from(*len).min(tail.len());
            let (value, after) = tail.split_at(len);
            let value = if who & 0x80 != 0 {
                // A pointer to a record file, named by the input.
                let mut pointer = b"ferry-record-file:".to_vec();
                pointer.extend_from_slice(value);
                pointer
            } else {
                value.to_vec()
            };
            let _ = db.insert(key(tag, *who, *seq), value);
            rest = after;
        }
        let _ = db.flush();
    }
    let Ok(store) = Store::open(dir) else {
        return;
    };
    let docs = store.list().unwrap_or_default();
    for doc in docs.iter().copied().chain(DOCS.map(DocId::from_bytes)) {
        let _ = store.info(doc);
        let _ = store.read(doc, |d| d.get_heads());
        let _ = store.crdt(doc);
        let _ = store.stored_form(doc);
        let _ = store.space_of(doc);
        let _ = store.gone(doc);
        let _ = store.missing_blobs_of(doc);
        let _ = store.blobs_referenced_by(doc);
        for peer in PEERS.map(PeerId::from_bytes) {
            let _ = store.sync_record(peer, doc);
            let _ = store.sync_status(peer, doc);
            if let Ok(info) = store.info(doc) {
                let _ = store.access_to(peer, &info);
            }
        }
    }
    for peer in PEERS.map(PeerId::from_bytes) {
        let _ = store.peer(peer);
        let _ = store.docs_readable_by(peer);
        let _ = store.reconciled(peer);
        let _ = store.grants(peer);
    }
    let _ = store.peers();
    let _ = store.spaces();
    let _ = store.missing_blobs();
    let _ = store.blob_policy(SpaceId::DEFAULT);
    let _ = store.blobs();
    // Then what removes files: collection, compaction and deletion.
    let _ = store.collect_blobs(std::time::Duration::ZERO);
    for doc in docs {
        let _ = store.compact(doc);
        let _ = store.delete(doc);
    }
    drop(store);
    assert!(sentinel.exists(), "a record reached outside the store");
});
