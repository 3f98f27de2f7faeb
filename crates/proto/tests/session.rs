//! Sessions between replicas: catch-up, clone, divergence, access, bad input, live pushes.

#![allow(clippy::unwrap_used)]

mod support;

use automerge::transaction::Transactable;
use automerge::{ActorId, Automerge, ROOT, ReadDoc};
use ferry_crdt::GCounter;
use ferry_proto::{ErrorCode, Event, Message, Role, Session, SessionConfig};
use ferry_store::{Access, CrdtState, DocId, DocKind, Store};
use support::{Faults, Replica, pump, pump_cut, sync, synced, trust};

fn friends() -> (Replica, Replica) {
    let (a, b) = (Replica::new(), Replica::new());
    trust(&a, &b, Access::ReadWrite);
    trust(&b, &a, Access::ReadWrite);
    (a, b)
}

fn get(store: &Store, doc: DocId, key: &str) -> Option<i64> {
    store
        .read(doc, |d| {
            d.get(ROOT, key).unwrap().and_then(|(v, _)| v.as_i64())
        })
        .ok()
        .flatten()
}

fn heads(store: &Store, doc: DocId) -> Vec<automerge::ChangeHash> {
    store.read(doc, |d| d.get_heads()).unwrap()
}

#[test]
fn identical_replicas_finish_in_one_round_trip_with_a_few_bytes() {
    let (a, b) = friends();
    let doc = a.store.create(DocKind::Automerge).unwrap();
    for i in 0..200 {
        a.store.change(doc, |tx| tx.put(ROOT, "n", i)).unwrap();
    }
    assert!(sync(&a, &b, Faults::default()).error.is_none());
    assert_eq!(heads(&a.store, doc), heads(&b.store, doc));

    let run = sync(&a, &b, Faults::default());
    assert!(run.error.is_none(), "{:?}", run.error);
    assert_eq!(run.turns, 1, "one round trip");
    let total = run.bytes[0] + run.bytes[1];
    assert!(total <= 100, "{total} bytes");
    assert!(run.events[0].contains(&Event::Reconciled));
}

#[test]
fn an_empty_replica_gets_one_snapshot() {
    let (a, b) = friends();
    let doc = a.store.create(DocKind::Automerge).unwrap();
    for i in 0..300 {
        a.store
            .change(doc, |tx| tx.put(ROOT, format!("k{i}"), i))
            .unwrap();
    }
    let saved = a.store.read(doc, Automerge::save).unwrap();
    let run = sync(&a, &b, Faults::default());
    assert!(run.error.is_none(), "{:?}", run.error);
    assert_eq!(heads(&a.store, doc), heads(&b.store, doc));
    assert_eq!(get(&b.store, doc, "k299"), Some(299));
    let snapshots = run.sent[0]
        .iter()
        .filter(|f| {
            matches!(
                Message::from_frame(f, u32::MAX),
                Ok(Message::Snapshot { .. })
            )
        })
        .count();
    assert_eq!(snapshots, 1);
    let total = run.bytes[0] + run.bytes[1];
    assert!(
        total as f64 <= saved.len() as f64 * 1.05 + 200.0,
        "{total} vs {}",
        saved.len()
    );
    assert!(run.events[1].contains(&Event::DocUpdated { doc }));
}

#[test]
fn diverged_copies_exchange_what_each_lacks() {
    let (a, b) = friends();
    let doc = a.store.create(DocKind::Automerge).unwrap();
    for i in 0..50 {
        a.store.change(doc, |tx| tx.put(ROOT, "base", i)).unwrap();
    }
    synced(&a, &b);
    a.store.change(doc, |tx| tx.put(ROOT, "a", 1)).unwrap();
    b.store.change(doc, |tx| tx.put(ROOT, "b", 2)).unwrap();
    let run = sync(&a, &b, Faults::default());
    assert!(run.error.is_none(), "{:?}", run.error);
    for s in [&a.store, &b.store] {
        assert_eq!(get(s, doc, "a"), Some(1));
        assert_eq!(get(s, doc, "b"), Some(2));
    }
    assert_eq!(heads(&a.store, doc), heads(&b.store, doc));
    assert_eq!(
        a.store.info(doc).unwrap().digest,
        b.store.info(doc).unwrap().digest
    );
    // The peer's heads are recorded as acknowledged, with the time of the sync.
    let record = a
        .store
        .sync_record(b.store.peer_id(), doc)
        .unwrap()
        .unwrap();
    assert_eq!(record.last_sync_millis, Some(1_000));
    assert!(record.acked.is_some());
}

#[test]
fn crdt_documents_merge_both_ways() {
    let (a, b) = friends();
    let doc = a.store.create(DocKind::GCounter).unwrap();
    a.store.increment(doc, 3).unwrap();
    synced(&a, &b);
    a.store.increment(doc, 1).unwrap();
    b.store.increment(doc, 10).unwrap();
    let run = sync(&a, &b, Faults::default());
    assert!(run.error.is_none(), "{:?}", run.error);
    for s in [&a.store, &b.store] {
        let CrdtState::GCounter(c) = s.crdt(doc).unwrap() else {
            panic!()
        };
        assert_eq!(c.value(), 14);
    }
}

#[test]
fn a_read_only_peer_receives_but_its_changes_are_not_stored() {
    let (a, b) = (Replica::new(), Replica::new());
    trust(&a, &b, Access::Read); // a takes nothing from b
    trust(&b, &a, Access::ReadWrite);
    let doc = a.store.create(DocKind::Automerge).unwrap();
    a.store.change(doc, |tx| tx.put(ROOT, "from_a", 1)).unwrap();
    synced(&a, &b);
    assert_eq!(get(&b.store, doc, "from_a"), Some(1));

    b.store.change(doc, |tx| tx.put(ROOT, "from_b", 2)).unwrap();
    a.store.change(doc, |tx| tx.put(ROOT, "again", 3)).unwrap();
    let before = a.store.info(doc).unwrap();
    let run = sync(&a, &b, Faults::default());
    assert!(run.error.is_none(), "{:?}", run.error);
    assert_eq!(get(&b.store, doc, "again"), Some(3));
    assert_eq!(get(&a.store, doc, "from_b"), None);
    assert_eq!(a.store.info(doc).unwrap(), before);
}

#[test]
fn changes_forced_on_a_read_only_document_are_refused_and_not_stored() {
    let (a, b) = (Replica::new(), Replica::new());
    trust(&a, &b, Access::Read);
    trust(&b, &a, Access::ReadWrite);
    let doc = a.store.create(DocKind::Automerge).unwrap();
    a.store.change(doc, |tx| tx.put(ROOT, "k", 1)).unwrap();
    synced(&a, &b);
    let before = a.store.info(doc).unwrap();

    // b's software ignores the read-only flag and sends a change anyway.
    let message = sync_message_with_changes(&a, &b, doc, "forced", &[1]).encode();

    let mut sa = responder(&a, &b, SessionConfig::default());
    say_hello(&mut sa);
    sa.handle_frame(&Message::Sync { doc, message }.to_frame(), 0)
        .unwrap();
    let out: Vec<Message> = std::iter::from_fn(|| sa.poll_transmit())
        .map(|f| Message::from_frame(&f, u32::MAX).unwrap())
        .collect();
    assert!(
        out.contains(&Message::Refused {
            doc,
            code: ErrorCode::ReadOnly
        }),
        "{out:?}"
    );
    assert_eq!(a.store.info(doc).unwrap(), before);
    assert_eq!(get(&a.store, doc, "forced"), None);
}

#[test]
fn a_peer_never_learns_of_documents_it_may_not_read() {
    let (a, b) = friends();
    let shared = a.store.create(DocKind::Automerge).unwrap();
    let hidden = a.store.create(DocKind::Automerge).unwrap();
    let mut info = a.store.peer(b.store.peer_id()).unwrap().unwrap();
    info.docs.insert(hidden, Access::None);
    a.store.put_peer(&info).unwrap();
    a.store
        .change(hidden, |tx| tx.put(ROOT, "secret", 1))
        .unwrap();
    a.store
        .change(shared, |tx| tx.put(ROOT, "open", 1))
        .unwrap();

    let run = sync(&a, &b, Faults::default());
    assert!(run.error.is_none(), "{:?}", run.error);
    assert_eq!(get(&b.store, shared, "open"), Some(1));
    assert!(b.store.info(hidden).is_err());
    let id = hidden.as_bytes();
    for frame in &run.sent[0] {
        assert!(
            !frame.windows(16).any(|w| w == id),
            "a frame carried the hidden id"
        );
    }
    // Asking for it by id ends the session, and a learns nothing new.
    let mut sa = responder(&a, &b, SessionConfig::default());
    say_hello(&mut sa);
    let err = sa
        .handle_frame(&Message::Want { doc: hidden }.to_frame(), 0)
        .unwrap_err();
    assert!(
        matches!(err, ferry_proto::SessionError::NoAccess(d) if d == hidden),
        "{err}"
    );
    assert!(sa.is_closed());
    let last = std::iter::from_fn(|| sa.poll_transmit()).last().unwrap();
    assert!(matches!(
        Message::from_frame(&last, u32::MAX).unwrap(),
        Message::Error {
            code: ErrorCode::NoAccess,
            ..
        }
    ));
}

/// A responder session over `a` for peer `b`, before any frame from `b`.
fn responder(a: &Replica, b: &Replica, config: SessionConfig) -> Session {
    Session::new(a.store.clone(), b.store.peer_id(), Role::Responder, config).unwrap()
}

/// An initiator session over `a` for peer `b`.
fn initiator(a: &Replica, b: &Replica) -> Session {
    Session::new(
        a.store.clone(),
        b.store.peer_id(),
        Role::Initiator,
        SessionConfig::default(),
    )
    .unwrap()
}

/// Hands the session the peer's hello.
fn say_hello(s: &mut Session) {
    let hello = Message::Hello {
        version: ferry_proto::PROTOCOL_VERSION,
        capabilities: 0,
    };
    s.handle_frame(&hello.to_frame(), 0).unwrap();
}

/// A responder session over `a` for peer `b`, past the hello.
fn open_session(a: &Replica, b: &Replica) -> Session {
    let mut s = responder(
        a,
        b,
        SessionConfig {
            max_frame: 4096,
            ..SessionConfig::default()
        },
    );
    say_hello(&mut s);
    s
}

#[test]
fn malformed_frames_end_the_session_and_change_nothing() {
    let (a, b) = friends();
    let doc = a.store.create(DocKind::Automerge).unwrap();
    a.store.change(doc, |tx| tx.put(ROOT, "k", 1)).unwrap();
    let before = a.store.info(doc).unwrap();
    let good = Message::Want { doc }.to_frame();

    let mut oversized = good.clone();
    oversized[..4].copy_from_slice(&(1u32 << 30).to_le_bytes());
    let mut unknown = good.clone();
    unknown[4] = 0xee;
    let mut bad_payload = Message::State {
        doc,
        bytes: vec![1, 2, 3],
    }
    .to_frame();
    bad_payload.truncate(bad_payload.len() - 1);
    let len = (bad_payload.len() - 4) as u32;
    bad_payload[..4].copy_from_slice(&len.to_le_bytes());
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", good[..good.len() - 3].to_vec()),
        ("oversized length", oversized),
        ("unknown type", unknown),
        ("empty", Vec::new()),
        ("bad payload", bad_payload),
        (
            "garbage sync message",
            Message::Sync {
                doc,
                message: vec![0x42; 40],
            }
            .to_frame(),
        ),
        (
            "garbage snapshot",
            Message::Snapshot {
                doc,
                kind: DocKind::Automerge,
                space: ferry_store::SpaceId::DEFAULT,
                bytes: vec![0x85, 0x6f, 0x4a, 0x83, 1, 2],
            }
            .to_frame(),
        ),
        (
            "garbage change",
            Message::Changes {
                doc,
                heads: vec![],
                changes: vec![vec![0x85, 0x6f, 0x4a, 0x83, 0, 0, 0, 0, 1, 5, 1, 2, 3]],
            }
            .to_frame(),
        ),
        (
            "compressed change chunk",
            Message::Changes {
                doc,
                heads: vec![],
                changes: vec![vec![0x85, 0x6f, 0x4a, 0x83, 0, 0, 0, 0, 2, 1, 0]],
            }
            .to_frame(),
        ),
        (
            "a reconciliation turn from the future",
            Message::Reconcile {
                round: 7,
                ranges: vec![],
            }
            .to_frame(),
        ),
        (
            "unsupported version",
            Message::Hello {
                version: 99,
                capabilities: 0,
            }
            .to_frame(),
        ),
    ];
    for (name, frame) in cases {
        let mut s = if name == "unsupported version" {
            responder(&a, &b, SessionConfig::default())
        } else {
            open_session(&a, &b)
        };
        let err = s.handle_frame(&frame, 0);
        assert!(err.is_err(), "{name}: accepted");
        assert!(s.is_closed(), "{name}: still open");
        let last = std::iter::from_fn(|| s.poll_transmit()).last().unwrap();
        assert!(
            matches!(
                Message::from_frame(&last, u32::MAX),
                Ok(Message::Error { .. })
            ),
            "{name}: no error frame"
        );
        assert!(
            s.handle_frame(&good, 0).is_err(),
            "{name}: accepts after closing"
        );
        assert_eq!(a.store.info(doc).unwrap(), before, "{name}: store changed");
    }

    // A frame before hello.
    let mut s = responder(&a, &b, SessionConfig::default());
    assert!(s.handle_frame(&good, 0).is_err());
    assert!(s.is_closed());
}

#[test]
fn live_changes_are_pushed_as_they_happen() {
    let (a, b) = friends();
    let doc = a.store.create(DocKind::Automerge).unwrap();
    a.store.change(doc, |tx| tx.put(ROOT, "n", 0)).unwrap();
    let counter = a.store.create(DocKind::PNCounter).unwrap();
    let new = |store: &Store, peer, role| {
        Session::new(store.clone(), peer, role, SessionConfig::default()).unwrap()
    };
    let sa = new(&a.store, b.store.peer_id(), Role::Initiator);
    let sb = new(&b.store, a.store.peer_id(), Role::Responder);
    let (_, [mut sa, sb]) = pump([sa, sb], Faults::default());
    assert_eq!(get(&b.store, doc, "n"), Some(0));

    a.store.change(doc, |tx| tx.put(ROOT, "n", 1)).unwrap();
    a.store.decrement(counter, 4).unwrap();
    sa.doc_changed(doc).unwrap();
    sa.doc_changed(counter).unwrap();
    let (run, _) = pump([sa, sb], Faults::default());
    assert!(run.error.is_none(), "{:?}", run.error);
    assert_eq!(get(&b.store, doc, "n"), Some(1));
    let CrdtState::PNCounter(c) = b.store.crdt(counter).unwrap() else {
        panic!()
    };
    assert_eq!(c.value(), -4);
    assert!(run.events[1].contains(&Event::DocUpdated { doc }));
}

#[test]
fn a_document_made_during_a_session_is_pushed_whole_without_a_round_of_heads() {
    let (a, b) = friends();
    let new = |store: &Store, peer, role| {
        Session::new(store.clone(), peer, role, SessionConfig::default()).unwrap()
    };
    let sa = new(&a.store, b.store.peer_id(), Role::Initiator);
    let sb = new(&b.store, a.store.peer_id(), Role::Responder);
    let (_, [mut sa, sb]) = pump([sa, sb], Faults::default());

    let doc = a.store.create(DocKind::Automerge).unwrap();
    a.store.change(doc, |tx| tx.put(ROOT, "n", 7)).unwrap();
    sa.doc_changed(doc).unwrap();
    let (run, _) = pump([sa, sb], Faults::default());
    assert!(run.error.is_none(), "{:?}", run.error);
    assert_eq!(get(&b.store, doc, "n"), Some(7));
    // Announced and sent whole, then acknowledged: no heads, no want, no automerge sync.
    let sent: Vec<&str> = messages(&run.sent[0]).iter().map(kind_name).collect();
    assert_eq!(sent, ["Pushing", "Snapshot"]);
    assert_eq!(
        messages(&run.sent[1])
            .iter()
            .map(kind_name)
            .collect::<Vec<_>>(),
        ["Ack"]
    );
    assert_eq!(pending(&a, &b, doc), 0);
}

#[test]
fn an_idle_session_forgets_its_peer_state_and_still_pushes_changes_alone() {
    let (a, b) = friends();
    let docs: Vec<DocId> = (0..5)
        .map(|i| {
            let doc = a.store.create(DocKind::Automerge).unwrap();
            a.store.change(doc, |tx| tx.put(ROOT, "n", i)).unwrap();
            doc
        })
        .collect();
    let counter = a.store.create(DocKind::GCounter).unwrap();
    a.store.increment(counter, 3).unwrap();
    let new = |store: &Store, peer, role| {
        Session::new(store.clone(), peer, role, SessionConfig::default()).unwrap()
    };
    let mut sa = new(&a.store, b.store.peer_id(), Role::Initiator);
    // Before the walk has ended there is work under way: nothing is forgotten.
    assert!(!sa.forget_idle());
    let sb = new(&b.store, a.store.peer_id(), Role::Responder);
    let (run, [mut sa, mut sb]) = pump([sa, sb], Faults::default());
    assert!(run.error.is_none(), "{:?}", run.error);
    assert!(sa.remembered() >= docs.len(), "{}", sa.remembered());

    assert!(sa.forget_idle());
    assert!(sb.forget_idle());
    assert_eq!((sa.remembered(), sb.remembered()), (0, 0));

    // A change after the rest goes out alone, from the version the peer acknowledged: no
    // round of heads, no automerge sync; and a counter as a delta.
    a.store.change(docs[2], |tx| tx.put(ROOT, "n", 70)).unwrap();
    a.store.increment(counter, 1).unwrap();
    sa.docs_changed([docs[2], counter]).unwrap();
    let (run, _) = pump([sa, sb], Faults::default());
    assert!(run.error.is_none(), "{:?}", run.error);
    assert_eq!(get(&b.store, docs[2], "n"), Some(70));
    let sent = messages(&run.sent[0]);
    assert!(matches!(sent[0], Message::Changes { .. }), "{sent:?}");
    assert!(matches!(sent[1], Message::Delta { .. }), "{sent:?}");
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_eq!(pending(&a, &b, docs[2]), 0);
    assert_eq!(pending(&a, &b, counter), 0);
}

fn kind_name(m: &Message) -> &'static str {
    match m {
        Message::Pushing { .. } => "Pushing",
        Message::Snapshot { .. } => "Snapshot",
        Message::Ack { .. } => "Ack",
        Message::Heads { .. } => "Heads",
        Message::Want { .. } => "Want",
        Message::Sync { .. } => "Sync",
        Message::Changes { .. } => "Changes",
        _ => "other",
    }
}

#[test]
fn a_live_counter_push_is_a_delta_not_the_whole_state() {
    let (a, b) = friends();
    // A read count kept by 1,000 replicas: each increment used to push every entry.
    let mut many = GCounter::new();
    for i in 0..1000u32 {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&i.to_le_bytes());
        many.increment(ferry_crdt::ReplicaId::from_bytes(id), 1)
            .unwrap();
    }
    let counter = DocId::random();
    let state = CrdtState::GCounter(many).encode();
    let origin = ferry_store::Origin::Local;
    a.store
        .adopt_state(
            (counter, ferry_store::SpaceId::DEFAULT),
            DocKind::GCounter,
            origin,
            &state,
        )
        .unwrap();
    synced(&a, &b);
    let new = |store: &Store, peer, role| {
        Session::new(store.clone(), peer, role, SessionConfig::default()).unwrap()
    };
    let sa = new(&a.store, b.store.peer_id(), Role::Initiator);
    let sb = new(&b.store, a.store.peer_id(), Role::Responder);
    let (_, [mut sa, mut sb]) = pump([sa, sb], Faults::default());

    for round in 0..3 {
        a.store.increment(counter, 1).unwrap();
        sa.doc_changed(counter).unwrap();
        let run;
        (run, [sa, sb]) = pump([sa, sb], Faults::default());
        assert!(run.error.is_none(), "{:?}", run.error);
        let deltas: Vec<&Vec<u8>> = run.sent[0].iter().filter(|f| f[4] == 14).collect();
        assert_eq!(deltas.len(), 1, "round {round}: one delta");
        assert!(deltas[0].len() < 64, "a delta of {} bytes", deltas[0].len());
        assert!(state.len() > 10_000);
        // b holds a's state, and said so: nothing pending.
        assert_eq!(
            a.store.info(counter).unwrap().digest,
            b.store.info(counter).unwrap().digest
        );
        assert_eq!(
            a.store
                .sync_status(b.store.peer_id(), counter)
                .unwrap()
                .pending,
            0
        );
    }
    // b incremented too, concurrently: a's delta does not bring b to a's state, so b answers
    // with its whole state, and both end equal.
    b.store.increment(counter, 2).unwrap();
    a.store.increment(counter, 3).unwrap();
    sa.doc_changed(counter).unwrap();
    let (run, _) = pump([sa, sb], Faults::default());
    assert!(run.error.is_none(), "{:?}", run.error);
    assert_eq!(
        a.store.info(counter).unwrap().digest,
        b.store.info(counter).unwrap().digest
    );
    let CrdtState::GCounter(c) = a.store.crdt(counter).unwrap() else {
        panic!("a gcounter")
    };
    assert_eq!(c.value(), 1000 + 3 + 2 + 3);
}

#[test]
fn changes_relay_through_a_middle_replica() {
    let (a, r) = friends();
    let b = Replica::new();
    trust(&r, &b, Access::ReadWrite);
    trust(&b, &r, Access::ReadWrite);
    let doc = a.store.create(DocKind::Automerge).unwrap();
    a.store.change(doc, |tx| tx.put(ROOT, "a", 1)).unwrap();
    let counter = b.store.create(DocKind::GCounter).unwrap();
    b.store.increment(counter, 5).unwrap();
    for _ in 0..2 {
        synced(&a, &r);
        synced(&r, &b);
    }
    assert_eq!(get(&b.store, doc, "a"), Some(1));
    let CrdtState::GCounter(c) = a.store.crdt(counter).unwrap() else {
        panic!()
    };
    assert_eq!(c.value(), 5);
    let _ = GCounter::new();
}

/// Every message the frames decode to.
fn messages(frames: &[Vec<u8>]) -> Vec<Message> {
    frames
        .iter()
        .map(|f| Message::from_frame(f, u32::MAX).unwrap())
        .collect()
}

fn uses_automerge_sync(frames: &[Vec<u8>]) -> bool {
    messages(frames)
        .iter()
        .any(|m| matches!(m, Message::Heads { .. } | Message::Sync { .. }))
}

fn pending(from: &Replica, to: &Replica, doc: DocId) -> u64 {
    from.store
        .sync_status(to.store.peer_id(), doc)
        .unwrap()
        .pending
}

#[test]
fn after_a_sync_new_changes_travel_alone_and_are_acknowledged() {
    let (a, b) = friends();
    let doc = a.store.create(DocKind::Automerge).unwrap();
    for i in 0..100 {
        a.store.change(doc, |tx| tx.put(ROOT, "base", i)).unwrap();
    }
    synced(&a, &b);
    assert_eq!(pending(&a, &b, doc), 0);
    assert_eq!(pending(&b, &a, doc), 0);

    let before_a = heads(&a.store, doc);
    a.store.change(doc, |tx| tx.put(ROOT, "a", 1)).unwrap();
    let before_b = heads(&b.store, doc);
    b.store.change(doc, |tx| tx.put(ROOT, "b", 2)).unwrap();
    b.store.change(doc, |tx| tx.put(ROOT, "b", 3)).unwrap();
    assert_eq!(pending(&a, &b, doc), 1);
    assert_eq!(pending(&b, &a, doc), 2);
    let change_bytes = a
        .store
        .read(doc, |d| d.save_after(&before_a).len())
        .unwrap()
        + b.store
            .read(doc, |d| d.save_after(&before_b).len())
            .unwrap();

    let run = sync(&a, &b, Faults::default());
    assert!(run.error.is_none(), "{:?}", run.error);
    assert_eq!(heads(&a.store, doc), heads(&b.store, doc));
    assert_eq!(get(&a.store, doc, "b"), Some(3));
    assert_eq!(get(&b.store, doc, "a"), Some(1));
    // The stored state says what each side holds: the changes go straight across, without
    // automerge's handshake, and the whole session is the changes plus a little framing.
    assert!(!uses_automerge_sync(&run.sent[0]) && !uses_automerge_sync(&run.sent[1]));
    let total = run.bytes[0] + run.bytes[1];
    assert!(
        total <= change_bytes + 250,
        "{total} bytes for {change_bytes} bytes of changes"
    );
    assert_eq!(pending(&a, &b, doc), 0);
    assert_eq!(pending(&b, &a, doc), 0);
    assert!(run.events[0].contains(&Event::Acked { doc }));
    assert!(run.events[1].contains(&Event::Acked { doc }));
}

#[test]
fn a_side_with_nothing_new_asks_for_what_it_lacks() {
    // Either side may be the one comparing: run both ways.
    for initiator_changed in [true, false] {
        let (a, b) = friends();
        let doc = a.store.create(DocKind::Automerge).unwrap();
        a.store.change(doc, |tx| tx.put(ROOT, "k", 0)).unwrap();
        synced(&a, &b);
        let changer = if initiator_changed { &a } else { &b };
        changer
            .store
            .change(doc, |tx| tx.put(ROOT, "k", 1))
            .unwrap();
        let run = sync(&a, &b, Faults::default());
        assert!(run.error.is_none(), "{:?}", run.error);
        assert_eq!(get(&a.store, doc, "k"), Some(1));
        assert_eq!(get(&b.store, doc, "k"), Some(1));
        assert!(!uses_automerge_sync(&run.sent[0]) && !uses_automerge_sync(&run.sent[1]));
        assert_eq!(pending(&a, &b, doc), 0);
        assert_eq!(pending(&b, &a, doc), 0);
    }
}

#[test]
fn live_pushes_are_acknowledged_and_the_status_drops_to_zero() {
    let (a, b) = friends();
    let doc = a.store.create(DocKind::Automerge).unwrap();
    a.store.change(doc, |tx| tx.put(ROOT, "n", 0)).unwrap();
    let counter = a.store.create(DocKind::GCounter).unwrap();
    let new = |store: &Store, peer, role| {
        Session::new(store.clone(), peer, role, SessionConfig::default()).unwrap()
    };
    let sa = new(&a.store, b.store.peer_id(), Role::Initiator);
    let sb = new(&b.store, a.store.peer_id(), Role::Responder);
    let (_, [mut sa, sb]) = pump([sa, sb], Faults::default());

    for i in 1..=3 {
        a.store.change(doc, |tx| tx.put(ROOT, "n", i)).unwrap();
        sa.doc_changed(doc).unwrap();
    }
    a.store.increment(counter, 2).unwrap();
    sa.doc_changed(counter).unwrap();
    assert_eq!(pending(&a, &b, doc), 3);
    assert_eq!(pending(&a, &b, counter), 1);
    let in_sync = |d| a.store.is_in_sync(b.store.peer_id(), d).unwrap();
    assert!(!in_sync(doc) && !in_sync(counter));
    let (run, _) = pump([sa, sb], Faults::default());
    assert!(run.error.is_none(), "{:?}", run.error);
    assert_eq!(get(&b.store, doc, "n"), Some(3));
    assert!(!uses_automerge_sync(&run.sent[0]));
    for d in [doc, counter] {
        assert!(
            run.events[0].contains(&Event::Acked { doc: d }),
            "{:?}",
            run.events[0]
        );
        let status = a.store.sync_status(b.store.peer_id(), d).unwrap();
        assert_eq!(status.pending, 0);
        assert_eq!(status.last_sync_millis, Some(1_000));
        assert!(in_sync(d));
    }
}

#[test]
fn documents_that_reached_a_peer_by_relay_are_confirmed_by_fingerprint() {
    let (a, r) = friends();
    let b = Replica::new();
    trust(&r, &b, Access::ReadWrite);
    trust(&b, &r, Access::ReadWrite);
    trust(&a, &b, Access::ReadWrite);
    trust(&b, &a, Access::ReadWrite);
    // More documents than one listing holds, so reconciliation compares fingerprints.
    let docs: Vec<DocId> = (0..40)
        .map(|i| {
            let doc = a.store.create(DocKind::Automerge).unwrap();
            a.store.change(doc, |tx| tx.put(ROOT, "i", i)).unwrap();
            doc
        })
        .collect();
    synced(&a, &r);
    synced(&r, &b);
    assert!(docs.iter().all(|d| pending(&a, &b, *d) == 1));

    let run = sync(&a, &b, Faults::default());
    assert!(run.error.is_none(), "{:?}", run.error);
    assert_eq!(run.turns, 1, "equal roots: one round trip");
    for doc in &docs {
        assert_eq!(pending(&a, &b, *doc), 0);
        assert_eq!(pending(&b, &a, *doc), 0);
        assert!(run.events[0].contains(&Event::Acked { doc: *doc }));
        assert!(run.events[1].contains(&Event::Acked { doc: *doc }));
    }
}

#[test]
fn changes_that_do_not_fit_what_this_side_holds_fall_back_to_automerge_sync() {
    let (a, b) = friends();
    let doc = a.store.create(DocKind::Automerge).unwrap();
    a.store.change(doc, |tx| tx.put(ROOT, "k", 0)).unwrap();
    synced(&a, &b);

    // Two changes on a fork of b's copy; a is sent only the second, whose dependency it lacks.
    let mut fork = b.store.read(doc, |d| d.fork()).unwrap();
    fork.set_actor(ActorId::from([9u8; 16]));
    fork.transact(|tx| tx.put(ROOT, "k", 1)).unwrap();
    fork.transact(|tx| tx.put(ROOT, "k", 2)).unwrap();
    let second = fork.get_last_local_change().unwrap();
    let before = a.store.info(doc).unwrap();

    let mut sa = responder(&a, &b, SessionConfig::default());
    say_hello(&mut sa);
    let changes = Message::Changes {
        doc,
        heads: fork.get_heads().iter().map(|h| h.0).collect(),
        changes: vec![second.raw_bytes().to_vec()],
    };
    sa.handle_frame(&changes.to_frame(), 0).unwrap();
    let out = messages(&std::iter::from_fn(|| sa.poll_transmit()).collect::<Vec<_>>());
    assert!(
        out.iter()
            .any(|m| matches!(m, Message::Heads { doc: d, .. } if *d == doc)),
        "{out:?}"
    );
    assert!(!sa.is_closed());
    assert_eq!(a.store.info(doc).unwrap(), before);
}

#[test]
fn changes_from_a_read_only_peer_are_refused_and_not_stored() {
    let (a, b) = (Replica::new(), Replica::new());
    trust(&a, &b, Access::Read);
    trust(&b, &a, Access::ReadWrite);
    let doc = a.store.create(DocKind::Automerge).unwrap();
    a.store.change(doc, |tx| tx.put(ROOT, "k", 1)).unwrap();
    synced(&a, &b);
    let before = a.store.info(doc).unwrap();

    let mut fork = b.store.read(doc, |d| d.fork()).unwrap();
    fork.set_actor(ActorId::from([3u8; 16]));
    fork.transact(|tx| tx.put(ROOT, "forced", 1)).unwrap();
    let change = fork.get_last_local_change().unwrap();
    let mut sa = responder(&a, &b, SessionConfig::default());
    say_hello(&mut sa);
    let frame = Message::Changes {
        doc,
        heads: fork.get_heads().iter().map(|h| h.0).collect(),
        changes: vec![change.raw_bytes().to_vec()],
    }
    .to_frame();
    sa.handle_frame(&frame, 0).unwrap();
    let out = messages(&std::iter::from_fn(|| sa.poll_transmit()).collect::<Vec<_>>());
    assert!(
        out.contains(&Message::Refused {
            doc,
            code: ErrorCode::ReadOnly
        }),
        "{out:?}"
    );
    assert_eq!(a.store.info(doc).unwrap(), before);
    assert_eq!(get(&a.store, doc, "forced"), None);
}

#[test]
fn an_acknowledgement_lost_in_a_cut_session_is_made_good_by_the_next() {
    let (a, b) = friends();
    let doc = a.store.create(DocKind::Automerge).unwrap();
    a.store.change(doc, |tx| tx.put(ROOT, "k", 0)).unwrap();
    synced(&a, &b);
    a.store.change(doc, |tx| tx.put(ROOT, "k", 1)).unwrap();

    // b takes a's new change, and the session is cut before b's acknowledgement gets back.
    let sessions = [
        initiator(&a, &b),
        responder(&b, &a, SessionConfig::default()),
    ];
    let mut b_got_changes = false;
    let delivered = pump_cut(sessions, |from, m| {
        b_got_changes |= from == 0 && matches!(m, Message::Changes { .. });
        from == 1 && b_got_changes
    });
    assert!(
        delivered[0]
            .iter()
            .any(|m| matches!(m, Message::Changes { .. }))
    );
    assert_eq!(get(&b.store, doc, "k"), Some(1));
    assert_eq!(pending(&a, &b, doc), 1, "a never heard that b has it");

    // a changes the document again; b's copy is the one a sent, which a cannot name by its
    // digest alone. The next session still brings both to the same heads.
    a.store.change(doc, |tx| tx.put(ROOT, "k", 2)).unwrap();
    let run = sync(&a, &b, Faults::default());
    assert!(run.error.is_none(), "{:?}", run.error);
    assert_eq!(heads(&a.store, doc), heads(&b.store, doc));
    assert_eq!(get(&b.store, doc, "k"), Some(2));
    assert_eq!(pending(&a, &b, doc), 0);
    assert_eq!(pending(&b, &a, doc), 0);
}

/// A sync message from a fork of b's copy of `doc` that carries changes a lacks: `key` set to
/// each of `values` in turn, one change each.
fn sync_message_with_changes(
    a: &Replica,
    b: &Replica,
    doc: DocId,
    key: &str,
    values: &[i64],
) -> automerge::sync::Message {
    use automerge::sync::SyncDoc;
    let mut fork = b.store.read(doc, |d| d.fork()).unwrap();
    fork.set_actor(ActorId::from([5u8; 16]));
    for &value in values {
        fork.transact(|tx| tx.put(ROOT, key, value)).unwrap();
    }
    let mut peer_a = a.store.read(doc, |d| d.fork()).unwrap();
    let (mut state, mut state_a) = (automerge::sync::State::new(), automerge::sync::State::new());
    for _ in 0..6 {
        if let Some(m) = fork.generate_sync_message(&mut state) {
            if !m.changes.is_empty() {
                return m;
            }
            peer_a.receive_sync_message(&mut state_a, m).unwrap();
        }
        if let Some(m) = peer_a.generate_sync_message(&mut state_a) {
            fork.receive_sync_message(&mut state, m).unwrap();
        }
    }
    panic!("no message with changes");
}

#[test]
fn sync_messages_with_damaged_changes_end_the_session_and_change_nothing() {
    let (a, b) = friends();
    let doc = a.store.create(DocKind::Automerge).unwrap();
    a.store.change(doc, |tx| tx.put(ROOT, "k", 1)).unwrap();
    synced(&a, &b);
    let before = a.store.info(doc).unwrap();
    let good = sync_message_with_changes(&a, &b, doc, "new", &[1, 2]);
    let chunk: Vec<u8> = good.changes.iter().flatten().copied().collect();
    assert!(chunk.len() > 20);

    let mut flipped = chunk.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x55;
    let mut trailing = chunk.clone();
    trailing.extend_from_slice(&[0x85, 0x6f, 0x4a, 0x83, 0, 0]);
    let mut unknown_type = chunk.clone();
    unknown_type[8] = 9;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", chunk[..chunk.len() - 4].to_vec()),
        ("a byte flipped", flipped),
        ("a partial chunk after a good one", trailing),
        ("an unknown chunk type", unknown_type),
        ("a header alone", chunk[..9].to_vec()),
    ];
    for (name, changes) in cases {
        let mut damaged = good.clone();
        damaged.changes = vec![changes].into();
        let mut sa = responder(&a, &b, SessionConfig::default());
        say_hello(&mut sa);
        let frame = Message::Sync {
            doc,
            message: damaged.encode(),
        }
        .to_frame();
        assert!(sa.handle_frame(&frame, 0).is_err(), "{name}: accepted");
        assert!(sa.is_closed(), "{name}");
        assert_eq!(a.store.info(doc).unwrap(), before, "{name}: stored");
    }

    // The same message undamaged is taken, though its changes depend on ones it does not carry.
    let mut sa = responder(&a, &b, SessionConfig::default());
    say_hello(&mut sa);
    let frame = Message::Sync {
        doc,
        message: good.encode(),
    }
    .to_frame();
    sa.handle_frame(&frame, 0).unwrap();
    assert_eq!(get(&a.store, doc, "new"), Some(2));
}

#[test]
fn heads_a_peer_named_that_arrive_by_another_peer_still_get_a_last_sync_time() {
    let (a, b, c) = (Replica::new(), Replica::new(), Replica::new());
    for (x, y) in [(&a, &b), (&a, &c), (&b, &c)] {
        trust(x, y, Access::ReadWrite);
        trust(y, x, Access::ReadWrite);
    }
    let doc = c.store.create(DocKind::Automerge).unwrap();
    c.store.change(doc, |tx| tx.put(ROOT, "k", 0)).unwrap();
    synced(&c, &a);
    synced(&c, &b);
    a.store.change(doc, |tx| tx.put(ROOT, "k", 1)).unwrap();

    // a and b have never synced with each other. b hears a's heads (in a's first sync message)
    // and the session is cut before a's change follows: b records a as holding heads that b
    // does not have.
    let sessions = [
        initiator(&a, &b),
        responder(&b, &a, SessionConfig::default()),
    ];
    let sync_message = |m: &Message| match m {
        Message::Sync { message, .. } => Some(automerge::sync::Message::decode(message).unwrap()),
        _ => None,
    };
    let delivered = pump_cut(sessions, |from, m| {
        let carries_changes = match m {
            Message::Changes { .. } | Message::Snapshot { .. } => true,
            _ => sync_message(m).is_some_and(|s| !s.changes.is_empty()),
        };
        from == 0 && carries_changes
    });
    assert!(
        delivered[0]
            .iter()
            .filter_map(sync_message)
            .any(|s| !s.heads.is_empty()),
        "a's sync message with its heads reached b"
    );
    assert_eq!(get(&b.store, doc, "k"), Some(0));

    // a's change reaches b through c; then a and b sync.
    synced(&a, &c);
    synced(&c, &b);
    assert_eq!(heads(&a.store, doc), heads(&b.store, doc));
    let run = sync(&a, &b, Faults::default());
    assert!(run.error.is_none(), "{:?}", run.error);
    for (x, y) in [(&a, &b), (&b, &a)] {
        let status = x.store.sync_status(y.store.peer_id(), doc).unwrap();
        assert_eq!(status.pending, 0);
        assert!(status.last_sync_millis.is_some());
    }
}

/// Frames the session over `store` sends after the peer's hello and `frames`, handled at
/// wall time `now`.
fn answers(store: &Store, peer: ferry_store::PeerId, frames: &[Message], now: u64) -> Vec<Message> {
    let mut session = Session::new(
        store.clone(),
        peer,
        Role::Responder,
        SessionConfig::default(),
    )
    .unwrap();
    let hello = Message::Hello {
        version: ferry_proto::PROTOCOL_VERSION,
        capabilities: 0,
    };
    session.handle_frame(&hello.to_frame(), now).unwrap();
    for frame in frames {
        session.handle_frame(&frame.to_frame(), now).unwrap();
    }
    std::iter::from_fn(|| session.poll_transmit())
        .map(|f| Message::from_frame(&f, u32::MAX).unwrap())
        .collect()
}

#[test]
fn a_register_stamped_too_far_ahead_is_refused_and_one_within_the_skew_is_taken() {
    let (a, b) = friends();
    let now = 1_800_000_000_000u64;
    let doc = a.store.create(DocKind::LwwRegister).unwrap();
    let peer = b.store.peer_id();
    let stamped = |value: &str, wall: u64| {
        let mut clock = ferry_crdt::Clock::new(ferry_crdt::ReplicaId::from_bytes([9; 16]));
        let mut register = ferry_crdt::LwwRegister::new();
        register.set(value.as_bytes().to_vec(), &mut clock, wall);
        ferry_crdt::encode(&register).unwrap()
    };
    let before = a.store.info(doc).unwrap().digest;

    // An hour ahead: refused, nothing stored, for an existing document and for a new one.
    let late = stamped("from the future", now + 3_600_000);
    let fresh = DocId::random();
    let sent = answers(
        &a.store,
        peer,
        &[
            Message::State {
                doc,
                bytes: late.clone(),
            },
            Message::Snapshot {
                doc: fresh,
                kind: DocKind::LwwRegister,
                space: ferry_store::SpaceId::DEFAULT,
                bytes: late,
            },
        ],
        now,
    );
    for refused in [doc, fresh] {
        assert!(
            sent.contains(&Message::Refused {
                doc: refused,
                code: ErrorCode::FutureStamp
            }),
            "{sent:?}"
        );
    }
    assert_eq!(a.store.info(doc).unwrap().digest, before);
    assert!(a.store.info(fresh).is_err());

    // A minute ahead, within the default ten: merged and acknowledged.
    let soon = stamped("a minute early", now + 60_000);
    let sent = answers(&a.store, peer, &[Message::State { doc, bytes: soon }], now);
    assert!(
        sent.iter().any(|m| matches!(m, Message::Ack { .. })),
        "{sent:?}"
    );
    let CrdtState::LwwRegister(register) = a.store.crdt(doc).unwrap() else {
        panic!("an lww document");
    };
    assert_eq!(
        register.get().map(Vec::as_slice),
        Some(&b"a minute early"[..])
    );
}

fn gone(store: &Store, doc: DocId) -> bool {
    matches!(
        store.info(doc),
        Err(ferry_store::StoreError::NoSuchDocument(_))
    )
}

#[test]
fn a_deleted_document_stays_deleted_everywhere_and_wins_over_concurrent_edits() {
    let (a, b) = friends();
    let c = Replica::new();
    for (x, y) in [(&a, &c), (&c, &a), (&b, &c), (&c, &b)] {
        trust(x, y, Access::ReadWrite);
    }
    let note = a.store.create(DocKind::Automerge).unwrap();
    a.store.change(note, |tx| tx.put(ROOT, "k", 1)).unwrap();
    let count = a.store.create(DocKind::GCounter).unwrap();
    a.store.increment(count, 1).unwrap();
    synced(&a, &b);
    synced(&a, &c);
    assert!(!gone(&b.store, note) && !gone(&c.store, count));

    // Deleted on a while b edits both.
    a.store.delete(note).unwrap();
    a.store.delete(count).unwrap();
    b.store.change(note, |tx| tx.put(ROOT, "k", 2)).unwrap();
    b.store.increment(count, 5).unwrap();
    synced(&b, &a);
    for doc in [note, count] {
        assert!(gone(&a.store, doc), "b's edit brought {doc} back on a");
        assert!(gone(&b.store, doc), "b kept {doc}");
        assert!(b.store.gone(doc).unwrap().unwrap().is_deleted());
    }
    // c, which still has copies, learns of the deletes from b (not from a), and nothing comes
    // back in either direction.
    synced(&c, &b);
    synced(&a, &b);
    synced(&b, &c);
    for store in [&a.store, &b.store, &c.store] {
        assert!(gone(store, note) && gone(store, count));
        assert!(store.gone(note).unwrap().unwrap().is_deleted());
    }
}

#[test]
fn a_forgotten_document_is_not_fetched_again_and_stays_with_peers() {
    let (a, b) = friends();
    let doc = a.store.create(DocKind::Automerge).unwrap();
    a.store.change(doc, |tx| tx.put(ROOT, "k", 1)).unwrap();
    synced(&a, &b);
    b.store.forget(doc).unwrap();
    a.store.change(doc, |tx| tx.put(ROOT, "k", 2)).unwrap();
    synced(&a, &b);
    synced(&b, &a);
    assert!(gone(&b.store, doc));
    assert_eq!(get(&a.store, doc, "k"), Some(2), "a lost its copy");
}

#[test]
fn a_read_only_peer_cannot_delete() {
    let (a, b) = (Replica::new(), Replica::new());
    trust(&a, &b, Access::Read); // b may read a's documents, not change them
    trust(&b, &a, Access::ReadWrite);
    let doc = a.store.create(DocKind::Automerge).unwrap();
    a.store.change(doc, |tx| tx.put(ROOT, "k", 1)).unwrap();
    synced(&a, &b);
    b.store.delete(doc).unwrap();
    let run = sync(&b, &a, Faults::default());
    assert!(run.error.is_none(), "{:?}", run.error);
    assert_eq!(
        get(&a.store, doc, "k"),
        Some(1),
        "a read-only peer deleted a's copy"
    );
    assert!(gone(&b.store, doc));
    assert!(
        run.events[1]
            .iter()
            .all(|e| !matches!(e, Event::DocUpdated { doc: d } if *d == doc))
    );
}

#[test]
fn replicas_read_only_to_each_other_do_not_trade_states_forever() {
    let (a, b) = (Replica::new(), Replica::new());
    trust(&a, &b, Access::Read);
    trust(&b, &a, Access::Read);
    // One counter, held by both with different counts (as from a third replica each trusts).
    let doc = DocId::random();
    for (r, n) in [(&a, 1), (&b, 2)] {
        r.store
            .create_with_id(
                doc,
                ferry_store::SpaceId::DEFAULT,
                DocKind::GCounter,
                ferry_store::Origin::Local,
            )
            .unwrap();
        r.store.increment(doc, n).unwrap();
    }
    let before = [&a, &b].map(|r| r.store.info(doc).unwrap().digest);
    let run = sync(&a, &b, Faults::default());
    assert!(run.error.is_none(), "{:?}", run.error);
    assert!(run.turns < 10, "{} turns", run.turns);
    // Each refused the other's state.
    assert_eq!([&a, &b].map(|r| r.store.info(doc).unwrap().digest), before);
}

#[test]
fn frames_replayed_from_an_old_session_change_nothing() {
    let (a, b) = friends();
    let doc = a.store.create(DocKind::Automerge).unwrap();
    a.store.change(doc, |tx| tx.put(ROOT, "k", 1)).unwrap();
    let count = a.store.create(DocKind::PNCounter).unwrap();
    a.store.increment(count, 5).unwrap();
    // The old session: everything a sent b, recorded.
    let old = synced(&a, &b).sent[0].clone();
    // Since then both moved on, and synced again.
    a.store.change(doc, |tx| tx.put(ROOT, "k", 2)).unwrap();
    b.store.decrement(count, 3).unwrap();
    synced(&a, &b);
    let before: Vec<_> = [doc, count].map(|d| b.store.info(d).unwrap().digest).into();
    assert_eq!(get(&b.store, doc, "k"), Some(2));

    // The old session's frames, replayed to b as a new session from a: whatever b makes of
    // them, nothing it holds goes back or changes, and nothing panics.
    let mut replayed = responder(&b, &a, SessionConfig::default());
    let mut error = None;
    for frame in &old {
        if let Err(e) = replayed.handle_frame(frame, 2_000) {
            error = Some(e);
            break;
        }
        while replayed.poll_transmit().is_some() {}
    }
    let after: Vec<_> = [doc, count].map(|d| b.store.info(d).unwrap().digest).into();
    assert_eq!(after, before, "a replay changed b (ended with {error:?})");
    assert_eq!(get(&b.store, doc, "k"), Some(2));
    match b.store.crdt(count).unwrap() {
        CrdtState::PNCounter(c) => assert_eq!(c.value(), 2),
        other => panic!("{other:?}"),
    }
    // And the peers still sync as before.
    a.store.change(doc, |tx| tx.put(ROOT, "k", 3)).unwrap();
    synced(&a, &b);
    assert_eq!(get(&b.store, doc, "k"), Some(3));
}
