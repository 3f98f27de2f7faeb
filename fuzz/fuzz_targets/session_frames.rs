//! Feeds arbitrary byte streams, split into frames, into a `Session` over a temporary store.
//!
//! Nothing may panic. The store holds one Automerge document the peer may only read and one it
//! may not see; whatever the input, neither may change.
//!
//! `cargo +nightly fuzz run session_frames` from the repository root (see `fuzz/README.md`).

#![no_main]

use std::sync::OnceLock;

use automerge::{ROOT, transaction::Transactable};
use ferry_proto::{Message, Role, Session, SessionConfig};
use ferry_store::{Access, DocId, DocInfo, DocKind, PeerId, PeerInfo, Store};
use libfuzzer_sys::fuzz_target;

struct Fixture {
    store: Store,
    peer: PeerId,
    docs: [(DocId, DocInfo); 2],
    _dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = Store::open(dir.path()).expect("a store");
        let peer = PeerId::from_bytes([7; 16]);
        let readable = store.create(DocKind::Automerge).expect("a document");
        store
            .change(readable, |tx| tx.put(ROOT, "k", 1))
            .expect("a change");
        let hidden = store.create(DocKind::GCounter).expect("a document");
        store.increment(hidden, 3).expect("an increment");
        let mut info = PeerInfo::new(peer, "fuzzer");
        info.docs.insert(hidden, Access::None);
        store.put_peer(&info).expect("a peer");
        store
            .grant(peer, ferry_store::SpaceId::DEFAULT, Access::Read)
            .expect("a grant");
        let docs = [readable, hidden].map(|d| (d, store.info(d).expect("info")));
        Fixture {
            store,
            peer,
            docs,
            _dir: dir,
        }
    })
}

fuzz_target!(|input: &[u8]| {
    let f = fixture();
    let Ok(mut session) = Session::new(
        f.store.clone(),
        f.peer,
        Role::Responder,
        SessionConfig {
            max_frame: 1 << 16,
            ..SessionConfig::default()
        },
    ) else {
        return;
    };
    // Most inputs start with a valid hello, so the fuzzer reaches the later phases.
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
    for (doc, info) in &f.docs {
        assert_eq!(&f.store.info(*doc).expect("still there"), info);
    }
});
