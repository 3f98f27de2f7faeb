//! Whole documents larger than a frame: sent in parts, assembled beside the receiver's store,
//! taken in once whole and checked; refused when over the receiver's size limit; other
//! documents' frames go between the parts.

#![allow(clippy::unwrap_used)]

mod support;

use automerge::transaction::Transactable;
use automerge::{ROOT, ReadDoc, ScalarValue};
use ferry_proto::{ErrorCode, Message, Role, Session, SessionConfig};
use ferry_store::{Access, DocId, DocKind, Store, StoreConfig};
use support::{Faults, Replica, pump, trust};

/// Frames of at most 64 KiB, so a document of a few hundred KiB is "large" here.
fn small_frames() -> SessionConfig {
    SessionConfig {
        max_frame: 64 * 1024,
        part_bytes: 16 * 1024,
        step_bytes: 32 * 1024,
        ..support::config()
    }
}

/// `len` bytes that do not compress, the same for the same seed.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut bytes = vec![0; len];
    blake3::Hasher::new()
        .update(&seed.to_le_bytes())
        .finalize_xof()
        .fill(&mut bytes);
    bytes
}

/// A document of `photos` "photos" of `size` bytes each, as Automerge bytes values.
fn album(store: &Store, photos: u64, size: usize) -> DocId {
    let doc = store.create(DocKind::Automerge).unwrap();
    for i in 0..photos {
        let photo = noise(i, size);
        store
            .change(doc, |tx| {
                tx.put(ROOT, format!("photo{i}"), ScalarValue::Bytes(photo))
            })
            .unwrap();
    }
    doc
}

fn friends(b: Replica) -> (Replica, Replica) {
    let a = Replica::new();
    trust(&a, &b, Access::ReadWrite);
    trust(&b, &a, Access::ReadWrite);
    (a, b)
}

fn sessions(a: &Replica, b: &Replica, config: &SessionConfig) -> [Session; 2] {
    [
        Session::new(
            a.store.clone(),
            b.store.peer_id(),
            Role::Initiator,
            config.clone(),
        )
        .unwrap(),
        Session::new(
            b.store.clone(),
            a.store.peer_id(),
            Role::Responder,
            config.clone(),
        )
        .unwrap(),
    ]
}

fn messages(frames: &[Vec<u8>]) -> Vec<Message> {
    frames
        .iter()
        .map(|f| Message::from_frame(f, u32::MAX).unwrap())
        .collect()
}

#[test]
fn a_document_larger_than_a_frame_arrives_in_parts_and_whole() {
    let (a, b) = friends(Replica::new());
    let config = small_frames();
    let doc = album(&a.store, 5, 60 * 1024); // 300 KiB: five frames' worth
    let (run, _) = pump(sessions(&a, &b, &config), Faults::default());
    assert!(run.error.is_none(), "{:?}", run.error);

    assert_eq!(
        b.store.info(doc).unwrap().version,
        a.store.info(doc).unwrap().version
    );
    let photo = b
        .store
        .read(doc, |d| {
            d.get(ROOT, "photo3")
                .unwrap()
                .unwrap()
                .0
                .as_bytes()
                .map(<[u8]>::to_vec)
        })
        .unwrap();
    assert_eq!(photo, Some(noise(3, 60 * 1024)));
    // No frame over the limit, and the document went in parts: no whole snapshot of it.
    assert!(run.sent[0].iter().all(|f| f.len() <= 4 + 64 * 1024));
    let sent = messages(&run.sent[0]);
    let parts = sent
        .iter()
        .filter(|m| matches!(m, Message::SnapshotPart { .. }))
        .count();
    assert!(parts >= 300 / 16, "{parts} parts");
    assert!(
        !sent
            .iter()
            .any(|m| matches!(m, Message::Snapshot { doc: d, .. } if *d == doc))
    );
    // Acknowledged: nothing pending, and nothing left of the assembly beside b's store.
    assert_eq!(
        a.store.sync_status(b.store.peer_id(), doc).unwrap().pending,
        0
    );
}

#[test]
fn documents_just_under_and_just_over_the_part_size_and_the_frame_limit() {
    let (a, b) = friends(Replica::new());
    let config = small_frames();
    // Single-key documents whose saved forms straddle the part size (16 KiB), then the frame
    // limit (64 KiB).
    let mut docs = Vec::new();
    for len in [15 * 1024, 17 * 1024, 63 * 1024, 65 * 1024] {
        let doc = a.store.create(DocKind::Automerge).unwrap();
        a.store
            .change(doc, |tx| {
                tx.put(ROOT, "b", ScalarValue::Bytes(noise(len as u64, len)))
            })
            .unwrap();
        docs.push(doc);
    }
    let saved: Vec<usize> = docs
        .iter()
        .map(|d| a.store.read(*d, |am| am.save().len()).unwrap())
        .collect();
    assert!(saved[0] <= 16 * 1024 && saved[1] > 16 * 1024, "{saved:?}");
    let frame = config.max_frame as usize;
    assert!(saved[2] < frame && saved[3] > frame, "{saved:?}");
    let (run, _) = pump(sessions(&a, &b, &config), Faults::default());
    assert!(run.error.is_none(), "{:?}", run.error);
    let sent = messages(&run.sent[0]);
    let whole = |doc: DocId| {
        sent.iter()
            .any(|m| matches!(m, Message::Snapshot { doc: d, .. } if *d == doc))
    };
    assert!(whole(docs[0]) && !docs[1..].iter().any(|d| whole(*d)));
    for doc in docs {
        assert_eq!(
            b.store.info(doc).unwrap().digest,
            a.store.info(doc).unwrap().digest
        );
    }
}

#[test]
fn a_peer_that_does_not_take_parts_gets_the_whole_snapshot() {
    let (a, b) = friends(Replica::new());
    let config = small_frames();
    let doc = album(&a.store, 1, 20 * 1024);
    let mut sa = sessions(&a, &b, &config).into_iter().next().unwrap();
    // An older peer: its hello names no capability.
    let hello = Message::Hello {
        version: ferry_proto::PROTOCOL_VERSION,
        capabilities: 0,
    };
    sa.handle_frame(&hello.to_frame(), 1_000).unwrap();
    let reply = Message::Reconcile {
        round: 1,
        ranges: vec![ferry_proto::Range::Items {
            prefix: ferry_proto::Prefix::ROOT,
            items: Vec::new(),
        }],
    };
    sa.handle_frame(&reply.to_frame(), 1_000).unwrap();
    while sa.has_backlog() {
        sa.work().unwrap();
    }
    let sent = messages(&std::iter::from_fn(|| sa.poll_transmit()).collect::<Vec<_>>());
    assert!(
        sent.iter()
            .any(|m| matches!(m, Message::Snapshot { doc: d, .. } if *d == doc)),
        "{sent:?}"
    );
    assert!(
        !sent
            .iter()
            .any(|m| matches!(m, Message::SnapshotPart { .. }))
    );
}

#[test]
fn a_document_over_the_receivers_limit_is_refused_and_the_rest_still_syncs() {
    let b = Replica::with_config(StoreConfig {
        max_doc_bytes: 100 * 1024,
        ..StoreConfig::default()
    });
    let (a, b) = friends(b);
    let config = small_frames();
    let big = album(&a.store, 4, 60 * 1024);
    let small = album(&a.store, 1, 1024);
    let (run, _) = pump(sessions(&a, &b, &config), Faults::default());
    assert!(run.error.is_none(), "{:?}", run.error);
    assert!(
        b.store.info(big).is_err(),
        "a document over the limit was stored"
    );
    assert!(b.store.info(small).is_ok());
    let refused = messages(&run.sent[1])
        .into_iter()
        .any(|m| matches!(m, Message::Refused { doc, code: ErrorCode::TooLarge } if doc == big));
    assert!(refused, "no TooLarge refusal");
    assert!(run.events[0].iter().any(|e| matches!(e, ferry_proto::Event::Refused { doc, code: ErrorCode::TooLarge } if *doc == big)));
    // Nothing of it kept beside the store either.
    let incoming = b.store_dir().join("incoming");
    let files = walk(&incoming);
    assert!(files.is_empty(), "{files:?}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .flat_map(|e| {
            if e.path().is_dir() {
                walk(&e.path())
            } else {
                vec![e.path()]
            }
        })
        .collect()
}

#[test]
fn a_part_changed_in_flight_ends_the_session_and_stores_nothing() {
    let (a, b) = friends(Replica::new());
    let config = small_frames();
    let doc = album(&a.store, 3, 40 * 1024);
    let [mut sa, mut sb] = sessions(&a, &b, &config);
    let mut error = None;
    let mut flipped = false;
    'run: for _ in 0..1000 {
        let mut moved = false;
        for from in [0, 1] {
            let (s, r) = if from == 0 {
                (&mut sa, &mut sb)
            } else {
                (&mut sb, &mut sa)
            };
            if s.is_loading() {
                // A document made ready, or read back and checked, on a thread of its own:
                // where the receiver finds that the parts do not match their digest.
                std::thread::sleep(std::time::Duration::from_millis(1));
                if let Err(e) = s.work() {
                    error = Some(e.to_string());
                    break 'run;
                }
                moved = true;
            }
            if s.has_backlog() {
                s.work().unwrap();
            }
            let frames: Vec<Vec<u8>> = std::iter::from_fn(|| s.poll_transmit()).collect();
            for mut frame in frames {
                moved = true;
                if let Ok(Message::SnapshotPart { offset, .. }) =
                    Message::from_frame(&frame, u32::MAX)
                    && offset > 0
                    && !flipped
                {
                    let at = frame.len() - 10;
                    frame[at] ^= 0x40;
                    flipped = true;
                }
                if let Err(e) = r.handle_frame(&frame, 1_000) {
                    error = Some(e.to_string());
                    break 'run;
                }
            }
        }
        if !moved {
            break;
        }
    }
    assert!(flipped);
    let error = error.expect("a flipped part went unnoticed");
    assert!(error.contains("digest"), "{error}");
    assert!(b.store.info(doc).is_err());
    assert!(walk(&b.store_dir().join("incoming")).is_empty());
}

#[test]
fn small_changes_go_between_the_parts_of_a_large_document() {
    let (a, b) = friends(Replica::new());
    let config = small_frames();
    let note = a.store.create(DocKind::Automerge).unwrap();
    a.store.change(note, |tx| tx.put(ROOT, "n", 0)).unwrap();
    let (_, [mut sa, mut sb]) = pump(sessions(&a, &b, &config), Faults::default());
    let doc = album(&a.store, 6, 60 * 1024);
    sa.doc_changed(doc).unwrap();
    // Frames move both ways a turn at a time; once the first part of the large document has
    // gone, the note changes.
    let mut sent = Vec::new();
    let mut changed = false;
    loop {
        let mut moved = false;
        if sa.is_loading() {
            std::thread::sleep(std::time::Duration::from_millis(1));
            moved = true;
        }
        if sa.has_backlog() || sa.is_loading() {
            sa.work().unwrap();
        }
        for frame in std::iter::from_fn(|| sa.poll_transmit()).collect::<Vec<_>>() {
            moved = true;
            sb.handle_frame(&frame, 1_000).unwrap();
            let part = matches!(
                Message::from_frame(&frame, u32::MAX),
                Ok(Message::SnapshotPart { .. })
            );
            sent.push(frame);
            if part && !changed {
                a.store.change(note, |tx| tx.put(ROOT, "n", 1)).unwrap();
                sa.doc_changed(note).unwrap();
                changed = true;
            }
        }
        if sb.is_loading() {
            // The large document is checked on a thread of its own meanwhile.
            std::thread::sleep(std::time::Duration::from_millis(1));
            sb.work().unwrap();
            moved = true;
        }
        for frame in std::iter::from_fn(|| sb.poll_transmit()).collect::<Vec<_>>() {
            moved = true;
            sa.handle_frame(&frame, 1_000).unwrap();
        }
        if !moved {
            break;
        }
    }
    let sent = messages(&sent);
    let change_at = sent
        .iter()
        .position(|m| matches!(m, Message::Changes { doc: d, .. } if *d == note))
        .unwrap();
    let last_part = sent
        .iter()
        .rposition(|m| matches!(m, Message::SnapshotPart { .. }))
        .unwrap();
    assert!(
        change_at < last_part,
        "the small change waited for the whole document"
    );
    assert_eq!(
        b.store.info(doc).unwrap().digest,
        a.store.info(doc).unwrap().digest
    );
    assert_eq!(
        b.store.info(note).unwrap().digest,
        a.store.info(note).unwrap().digest
    );
}

/// Whether `b` refused `doc` as too large in `run`, and `a` heard of it.
fn refused_as_too_large(run: &support::Run, doc: DocId) -> bool {
    let said = messages(&run.sent[1])
        .into_iter()
        .any(|m| matches!(m, Message::Refused { doc: d, code: ErrorCode::TooLarge } if d == doc));
    let heard = run.events[0].iter().any(|e| {
        matches!(e, ferry_proto::Event::Refused { doc: d, code: ErrorCode::TooLarge } if *d == doc)
    });
    said && heard
}

#[test]
fn a_decompression_bomb_is_refused_before_it_is_loaded() {
    let b = Replica::with_config(StoreConfig {
        max_doc_bytes: 8 << 20,
        ..StoreConfig::default()
    });
    let (a, b) = friends(b);
    // 64 MiB of zeros, which automerge's save compresses to a frame's worth: small on the
    // wire, a thousand times larger once loaded.
    let bomb = a.store.create(DocKind::Automerge).unwrap();
    a.store
        .change(bomb, |tx| {
            tx.put(ROOT, "zeros", ScalarValue::Bytes(vec![0; 64 << 20]))
        })
        .unwrap();
    let saved = a.store.read(bomb, |d| d.save().len()).unwrap();
    assert!(saved < 1 << 20, "{saved} bytes saved");
    let fine = album(&a.store, 1, 1024);
    let (run, _) = pump(sessions(&a, &b, &support::config()), Faults::default());
    assert!(run.error.is_none(), "{:?}", run.error);
    assert!(b.store.info(bomb).is_err(), "the bomb was stored");
    assert!(refused_as_too_large(&run, bomb));
    assert!(b.store.info(fine).is_ok());
}

#[test]
fn a_document_with_more_operations_than_the_receiver_allows_is_refused() {
    let b = Replica::with_config(StoreConfig {
        max_doc_ops: 500,
        ..StoreConfig::default()
    });
    let (a, b) = friends(b);
    let many = a.store.create(DocKind::Automerge).unwrap();
    a.store
        .change(many, |tx| {
            let list = tx.put_object(ROOT, "list", automerge::ObjType::List)?;
            for i in 0..1000 {
                tx.insert(&list, i, i as i64)?;
            }
            Ok::<_, automerge::AutomergeError>(())
        })
        .unwrap();
    let few = a.store.create(DocKind::Automerge).unwrap();
    a.store.change(few, |tx| tx.put(ROOT, "n", 1)).unwrap();
    let (run, _) = pump(sessions(&a, &b, &support::config()), Faults::default());
    assert!(run.error.is_none(), "{:?}", run.error);
    assert!(b.store.info(many).is_err());
    assert!(refused_as_too_large(&run, many));
    assert!(b.store.info(few).is_ok());
}

/// Bytes of `SnapshotPart`s among `frames`.
fn part_bytes(frames: &[Vec<u8>]) -> usize {
    messages(frames)
        .iter()
        .map(|m| match m {
            Message::SnapshotPart { bytes, .. } => bytes.len(),
            _ => 0,
        })
        .sum()
}

#[test]
fn a_transfer_cut_at_any_point_resumes_from_what_arrived() {
    let config = small_frames();
    let mut resumed = 0;
    // Fixed points, and random ones (a different set each run; a failure names its cut).
    let random = (0..4).map(|_| 4 + rand_below(18));
    for cut in [6, 9, 13, 17, 21].into_iter().chain(random) {
        let (a, b) = friends(Replica::new());
        let doc = album(&a.store, 5, 60 * 1024);
        let (first, _) = pump(
            sessions(&a, &b, &config),
            Faults {
                cut_after: Some(cut),
                duplicate_every: None,
            },
        );
        assert!(b.store.info(doc).is_err(), "cut at {cut}: already whole");
        // What the sender sends in parts: the document as stored.
        let total = a.store.stored_form(doc).unwrap().bytes.len();
        let kept: u64 = walk(&b.store_dir().join("incoming"))
            .iter()
            .map(|f| std::fs::metadata(f).unwrap().len())
            .sum();
        let (second, _) = pump(sessions(&a, &b, &config), Faults::default());
        assert!(second.error.is_none(), "cut at {cut}: {:?}", second.error);
        assert_eq!(
            b.store.info(doc).unwrap().digest,
            a.store.info(doc).unwrap().digest,
            "cut at {cut}"
        );
        // The second session sent what was missing, and at most what went out before the
        // peer's resume reached the sender (a step's worth, 32 KiB here) on top.
        let again = part_bytes(&second.sent[0]);
        let missing = total - usize::try_from(kept).unwrap();
        assert!(
            again <= missing + 32 * 1024,
            "cut at {cut}: {again} bytes sent again for {missing} missing (of {total}; {} in the first session)",
            part_bytes(&first.sent[0])
        );
        // (Where less than a step's worth had arrived, the first step covered it anyway.)
        if kept > 32 * 1024 {
            assert!(
                again < total,
                "cut at {cut}: started over: {again} of {total}, {kept} kept"
            );
            resumed += 1;
        }
        assert!(walk(&b.store_dir().join("incoming")).is_empty());
    }
    assert!(
        resumed >= 3,
        "only {resumed} cuts left more than a step to resume from"
    );
}

/// A number below `n`, from the system's randomness (std has no generator of its own).
fn rand_below(n: usize) -> usize {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_usize(n);
    usize::try_from(hasher.finish() % n as u64).unwrap()
}
