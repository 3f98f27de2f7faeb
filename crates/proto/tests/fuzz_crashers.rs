//! Inputs the `session_writes` fuzz target once crashed on (`tests/fuzz-crashers/`), replayed as
//! the target runs them: a session with a peer that may write, over a fresh store holding one
//! document. Nothing may panic, and what was stored must read whole and survive a reopen.

#![allow(clippy::unwrap_used)]

use automerge::transaction::Transactable;
use automerge::{ROOT, ReadDoc};
use ferry_proto::{Message, PROTOCOL_VERSION, Role, Session, SessionConfig};
use ferry_store::{Access, DocId, DocKind, Origin, PeerId, PeerInfo, SpaceId, Store};

/// The same document and peer as the fuzz target's.
const SHARED: DocId = DocId::from_bytes([1; 16]);
const PEER: PeerId = PeerId::from_bytes([7; 16]);

fn replay(input: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store
        .create_with_id(SHARED, SpaceId::DEFAULT, DocKind::Automerge, Origin::Local)
        .unwrap();
    store.change(SHARED, |tx| tx.put(ROOT, "k", 1)).unwrap();
    store.put_peer(&PeerInfo::new(PEER, "fuzzer")).unwrap();
    store
        .grant(PEER, SpaceId::DEFAULT, Access::ReadWrite)
        .unwrap();
    let config = SessionConfig {
        max_frame: 1 << 16,
        max_clock_skew_millis: u64::MAX,
        ..SessionConfig::default()
    };
    let mut session = Session::new(store.clone(), PEER, Role::Responder, config).unwrap();
    let (first, rest) = input.split_first().unwrap();
    if first % 4 != 0 {
        let hello = Message::Hello {
            version: PROTOCOL_VERSION,
            capabilities: 0,
        };
        let _ = session.handle_frame(&hello.to_frame(), 0);
    }
    let _ = session.handle_bytes(rest, 0);
    drop(session);
    let docs = store.list().unwrap();
    for doc in &docs {
        store.info(*doc).unwrap();
    }
    let kept = store.read(SHARED, |d| d.get(ROOT, "k").unwrap().is_some());
    assert!(kept.unwrap(), "the document lost its content");
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.list().unwrap(), docs);
}

#[test]
fn every_saved_crasher_is_handled() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fuzz-crashers");
    let mut replayed = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        replay(&std::fs::read(&path).unwrap());
        replayed += 1;
    }
    assert!(replayed > 0, "no crashers in {dir}");
}
