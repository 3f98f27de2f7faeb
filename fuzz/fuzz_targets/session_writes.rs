//! Feeds arbitrary byte streams, split into frames, into a `Session` with a peer that may
//! write, over a fresh store per input: snapshots, changes, sync messages, states and
//! tombstones from the input reach the store.
//!
//! Nothing may panic, and whatever the input stored must load: every document still reads
//! whole, and the store reopens with the same documents.
//!
//! Crashers it found are kept in `crates/proto/tests/fuzz-crashers/` and replayed by
//! `cargo test`.
//!
//! `cargo +nightly fuzz run session_writes fuzz/corpus/session_writes fuzz/seeds/session_writes`
//! from the repository root (see `fuzz/README.md`): the committed seeds are whole messages of
//! every kind to start from; new inputs go to the (ignored) first directory.

#![no_main]

use automerge::{ROOT, transaction::Transactable};
use ferry_proto::{Message, Role, Session, SessionConfig};
use ferry_store::{Access, DocId, DocKind, PeerId, PeerInfo, Store};
use libfuzzer_sys::fuzz_target;

/// The document every fresh store starts with, so changes and sync messages have a target.
const SHARED: DocId = DocId::from_bytes([1; 16]);
/// The peer: the same for every input, so recorded sessions replay.
const PEER: PeerId = PeerId::from_bytes([7; 16]);

fn fresh(dir: &std::path::Path) -> Store {
    let store = Store::open(dir).expect("a store");
    store
        .create_with_id(
            SHARED,
            ferry_store::SpaceId::DEFAULT,
            DocKind::Automerge,
            ferry_store::Origin::Local,
        )
        .expect("a document");
    store
        .change(SHARED, |tx| tx.put(ROOT, "k", 1))
        .expect("a change");
    store
        .put_peer(&PeerInfo::new(PEER, "fuzzer"))
        .expect("a peer");
    store
        .grant(PEER, ferry_store::SpaceId::DEFAULT, Access::ReadWrite)
        .expect("a grant");
    store
}

fuzz_target!(|input: &[u8]| {
    // ferry catches panics inside automerge (it may panic on changes that parse but do not fit
    // together) and refuses the input; libFuzzer's hook would abort on those too. A panic that
    // escapes is still caught by libFuzzer and reported.
    static QUIET: std::sync::Once = std::sync::Once::new();
    QUIET.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = fresh(dir.path());
    let config = SessionConfig {
        max_frame: 1 << 16,
        max_clock_skew_millis: u64::MAX,
        ..SessionConfig::default()
    };
    let Ok(mut session) = Session::new(store.clone(), PEER, Role::Responder, config) else {
        return;
    };
    let (hello, rest) = input.split_first().map_or((false, input), |(b, r)| (b % 4 != 0, r));
    if hello {
        let frame = Message::Hello {
            version: ferry_proto::PROTOCOL_VERSION,
            capabilities: 0,
        }
        .to_frame();
        let _ = session.handle_frame(&frame, 0);
    }
    let _ = session.handle_bytes(rest, 0);
    while session.poll_transmit().is_some() {}
    while session.poll_event().is_some() {}
    drop(session);

    // Whatever was stored loads whole, now and after a reopen.
    let docs = store.list().expect("a listing");
    let read = |store: &Store, doc: DocId| {
        let info = store.info(doc).expect("stored documents load");
        match info.kind {
            DocKind::Automerge => {
                store.read(doc, |_| ()).expect("an automerge document reads");
            }
            _ => {
                store.crdt(doc).expect("a crdt state reads");
            }
        }
        info
    };
    let infos: Vec<_> = docs.iter().map(|d| read(&store, *d)).collect();
    store.flush().expect("a flush");
    drop(store);
    let store = Store::open(dir.path()).expect("the store reopens");
    assert_eq!(store.list().expect("a listing"), docs);
    for (doc, info) in docs.iter().zip(infos) {
        assert_eq!(read(&store, *doc), info);
    }
});
