//! Only durable changes are ever sent: a change whose flush is still running, though already
//! visible to reads, leaves in a frame only once it is on disk.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use automerge::transaction::Transactable;
use automerge::{Automerge, ROOT, ReadDoc};
use ferry_proto::{Message, PROTOCOL_VERSION, Role, Session, SessionConfig};
use ferry_store::{
    Access, DocKind, Durability, PeerId, PeerInfo, SpaceId, Store, StoreConfig, StoreEvent, Version,
};

fn batched(dir: &std::path::Path) -> Store {
    let config = StoreConfig {
        durability: Durability::Batched {
            interval: Duration::from_millis(500),
        },
        ..StoreConfig::default()
    };
    Store::open_with(dir, config).unwrap()
}

fn get(store: &Store, doc: ferry_store::DocId) -> Option<i64> {
    store
        .read(doc, |d| {
            d.get(ROOT, "k").unwrap().and_then(|(v, _)| v.as_i64())
        })
        .unwrap()
}

#[test]
fn a_change_waiting_for_its_flush_is_not_sent_before_it_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let a = batched(dir.path());
    let peer = PeerId::from_bytes([5; 16]);
    a.put_peer(&PeerInfo::new(peer, "b")).unwrap();
    a.grant(peer, SpaceId::DEFAULT, Access::ReadWrite).unwrap();
    let doc = a.create(DocKind::Automerge).unwrap();
    a.change(doc, |tx| tx.put(ROOT, "k", 1)).unwrap();

    let mut events = a.subscribe();
    let writer = {
        let a = a.clone();
        std::thread::spawn(move || a.change(doc, |tx| tx.put(ROOT, "k", 2)).unwrap())
    };
    // Applied, so reads see it, while its flush waits out the batching interval.
    let start = Instant::now();
    while get(&a, doc) != Some(2) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the change never applied"
        );
        std::thread::yield_now();
    }
    let new_heads = a.read(doc, Automerge::get_heads).unwrap();

    // The peer asks for the document whole.
    let mut session =
        Session::new(a.clone(), peer, Role::Responder, SessionConfig::default()).unwrap();
    let hello = Message::Hello {
        version: PROTOCOL_VERSION,
        capabilities: 0,
    };
    session.handle_frame(&hello.to_frame(), 0).unwrap();
    session
        .handle_frame(&Message::Want { doc }.to_frame(), 0)
        .unwrap();
    let mut sent = Vec::new();
    while let Some(frame) = session.poll_transmit() {
        sent.push(Message::from_frame(&frame, u32::MAX).unwrap());
    }

    // What was released to the peer is durable: the store announces a change only after its
    // flush, so the announcement of the new version must already be there.
    let snapshot = sent
        .iter()
        .find_map(|m| match m {
            Message::Snapshot { bytes, .. } => Some(Automerge::load(bytes).unwrap()),
            _ => None,
        })
        .expect("the peer got the document");
    if snapshot.get_heads() == new_heads {
        let mut announced = false;
        while let Ok(Some(event)) = events.try_recv() {
            announced |= matches!(
                event,
                StoreEvent::Changed { version: Version::Heads(ref h), .. } if *h == new_heads
            );
        }
        assert!(
            announced,
            "the change left in a frame before it was durable"
        );
    }
    writer.join().unwrap();
}
