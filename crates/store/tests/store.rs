//! Behaviour of the store that apps and the sync layer rely on.

// Helpers outside #[test] functions fail loudly too; that is what a test wants.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use automerge::transaction::Transactable;
use automerge::{ActorId, Automerge, Change, ROOT, ReadDoc};
use ferry_store::{
    Access, CrdtState, DocId, DocKind, DocSyncStatus, Durability, Origin, PeerId, PeerInfo,
    RecvError, SpaceId, Store, StoreConfig, StoreError, StoreEvent, SyncRecord, SyncUpdate,
    Version, heads_digest,
};

/// Opens a closed store's database directly, to tamper with it. sled releases its lock from
/// a background thread after the store is dropped, so this waits for it.
fn open_sled(dir: &std::path::Path) -> sled::Db {
    for _ in 0..300 {
        match sled::open(dir.join("db")) {
            Ok(db) => return db,
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("{e}"),
        }
    }
    panic!("the store's lock was never released");
}

fn text(store: &Store, doc: DocId, key: &str) -> Option<String> {
    store
        .read(doc, |d| {
            d.get(ROOT, key)
                .unwrap()
                .and_then(|(v, _)| v.as_str().map(str::to_owned))
        })
        .unwrap()
}

#[test]
fn identity_is_created_once_kept_private_and_derives_the_ids() {
    let dir = tempfile::tempdir().unwrap();
    let first = Store::open(dir.path()).unwrap();
    let peer = first.peer_id();
    assert_eq!(peer, PeerId::from_public_key(first.identity().public_key()));
    assert_eq!(first.replica_id().as_bytes(), peer.as_bytes());
    drop(first);

    let mode = std::fs::metadata(dir.path().join("identity.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "key file mode {mode:o}");
    assert_eq!(Store::open(dir.path()).unwrap().peer_id(), peer);

    let other = tempfile::tempdir().unwrap();
    assert_ne!(Store::open(other.path()).unwrap().peer_id(), peer);
}

#[test]
fn automerge_changes_are_written_under_the_replica_id() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let doc = store.create(DocKind::Automerge).unwrap();
    store.change(doc, |tx| tx.put(ROOT, "k", "v")).unwrap();
    let actor = store.read(doc, |d| d.get_actor().clone()).unwrap();
    assert_eq!(actor, ActorId::from(*store.replica_id().as_bytes()));
}

#[test]
fn a_damaged_key_file_is_an_error_not_a_new_identity() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path()).unwrap());
    std::fs::write(dir.path().join("identity.key"), b"garbage").unwrap();
    let err = Store::open(dir.path()).unwrap_err();
    assert!(matches!(err, StoreError::Identity(_)), "{err:?}");
}

#[test]
fn an_unknown_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path()).unwrap());
    {
        let db = open_sled(dir.path());
        db.insert(b"f", &99u32.to_le_bytes()).unwrap();
        db.flush().unwrap();
    }
    let err = Store::open(dir.path()).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::UnknownFormat {
                found: 99,
                supported: 7
            }
        ),
        "{err:?}"
    );
}

#[test]
fn documents_are_created_listed_reopened_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let mut ids = Vec::new();
    {
        let store = Store::open(dir.path()).unwrap();
        for kind in DocKind::ALL {
            let doc = store.create(kind).unwrap();
            assert_eq!(store.info(doc).unwrap().kind, kind);
            ids.push(doc);
        }
        store
            .change(ids[0], |tx| tx.put(ROOT, "title", "notes"))
            .unwrap();
        store.increment(ids[1], 5).unwrap();
        store.decrement(ids[2], 2).unwrap();
        store.set_register(ids[3], b"lww".to_vec()).unwrap();
        store.set_register(ids[4], b"mv".to_vec()).unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    let mut listed = store.list().unwrap();
    listed.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(listed, expected);

    assert_eq!(text(&store, ids[0], "title").as_deref(), Some("notes"));
    assert!(matches!(store.crdt(ids[1]).unwrap(), CrdtState::GCounter(c) if c.value() == 5));
    assert!(matches!(store.crdt(ids[2]).unwrap(), CrdtState::PNCounter(c) if c.value() == -2));
    assert!(
        matches!(store.crdt(ids[3]).unwrap(), CrdtState::LwwRegister(r) if r.get() == Some(&b"lww".to_vec()))
    );
    assert!(
        matches!(store.crdt(ids[4]).unwrap(), CrdtState::MvRegister(r) if r.values() == [&b"mv".to_vec()])
    );

    store.delete(ids[0]).unwrap();
    assert!(matches!(store.info(ids[0]), Err(StoreError::NoSuchDocument(d)) if d == ids[0]));
    assert!(matches!(
        store.read(ids[0], |_| ()),
        Err(StoreError::NoSuchDocument(_))
    ));
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.list().unwrap().len(), 4);
}

#[test]
fn operations_on_the_wrong_kind_fail_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let counter = store.create(DocKind::GCounter).unwrap();
    let note = store.create(DocKind::Automerge).unwrap();
    let before = store.info(counter).unwrap();

    assert!(matches!(
        store.decrement(counter, 1),
        Err(StoreError::WrongKind { .. })
    ));
    assert!(matches!(
        store.set_register(counter, vec![1]),
        Err(StoreError::WrongKind { .. })
    ));
    assert!(matches!(
        store.change(counter, |tx| tx.put(ROOT, "k", 1)),
        Err(StoreError::WrongKind { .. })
    ));
    assert!(matches!(
        store.increment(note, 1),
        Err(StoreError::WrongKind { .. })
    ));
    assert!(matches!(
        store.create_with_id(counter, SpaceId::DEFAULT, DocKind::Automerge, Origin::Local),
        Err(StoreError::WrongKind { .. })
    ));
    assert_eq!(store.info(counter).unwrap(), before);
}

#[test]
fn remote_changes_apply_once_and_bad_ones_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let doc = store.create(DocKind::Automerge).unwrap();
    store.change(doc, |tx| tx.put(ROOT, "mine", 1)).unwrap();

    let mut remote = Automerge::new().with_actor(ActorId::from([9u8; 16]));
    remote
        .transact(|tx| tx.put(ROOT, "theirs", "hello"))
        .unwrap();
    let first = remote.get_changes(&[]);
    let peer = PeerId::from_bytes([9; 16]);

    let heads = store
        .apply_changes(doc, Origin::Remote(peer), first.clone())
        .unwrap();
    let info = store.info(doc).unwrap();
    assert_eq!(info.version, Version::Heads(heads.clone()));
    assert_eq!(info.digest, heads_digest(&heads));
    assert_eq!(info.changes, 2);

    // Again: nothing changes, nothing is written.
    assert_eq!(
        store
            .apply_changes(doc, Origin::Remote(peer), first.clone())
            .unwrap(),
        heads
    );
    assert_eq!(store.info(doc).unwrap(), info);

    // Bytes with anything after a good change do not parse: the caller never gets a change
    // to apply. (automerge's own load_incremental would quietly apply the good part.)
    let mut bytes = first[0].raw_bytes().to_vec();
    assert!(Change::from_bytes(bytes.clone()).is_ok());
    bytes.extend_from_slice(b"junk");
    assert!(Change::from_bytes(bytes).is_err());

    // A change whose dependency never arrived: refused with the missing hash, nothing
    // applied, not even the applicable change sent with it.
    let before_gap = remote.get_heads();
    remote.transact(|tx| tx.put(ROOT, "gap", 1)).unwrap();
    let gap = remote.get_changes(&before_gap);
    let after_gap = remote.get_heads();
    remote.transact(|tx| tx.put(ROOT, "after", 2)).unwrap();
    let after = remote.get_changes(&after_gap);
    let mut other = Automerge::new().with_actor(ActorId::from([8u8; 16]));
    other.transact(|tx| tx.put(ROOT, "unrelated", 3)).unwrap();
    let mut batch = after.clone();
    batch.extend(other.get_changes(&[]));
    let err = store
        .apply_changes(doc, Origin::Remote(peer), batch)
        .unwrap_err();
    match &err {
        StoreError::MissingDependencies { doc: d, missing } => {
            assert_eq!(*d, doc);
            assert_eq!(missing, &vec![gap[0].hash()]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(store.info(doc).unwrap(), info);
    assert_eq!(text(&store, doc, "unrelated"), None);

    // With the gap filled, in any order within the batch, both apply.
    let mut filled = after.clone();
    filled.extend(gap);
    let heads = store
        .apply_changes(doc, Origin::Remote(peer), filled)
        .unwrap();
    assert_eq!(
        heads.len(),
        2,
        "the local head and the remote one: {heads:?}"
    );
    assert!(heads.contains(&remote.get_heads()[0]));
    let info = store.info(doc).unwrap();
    assert_eq!(info.changes, 4);

    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.info(doc).unwrap(), info);
    assert_eq!(text(&store, doc, "theirs").as_deref(), Some("hello"));
}

#[test]
fn crdt_states_from_peers_merge_and_bad_ones_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let doc = store.create(DocKind::GCounter).unwrap();
    store.increment(doc, 2).unwrap();

    let mut theirs = ferry_crdt::GCounter::new();
    theirs
        .increment(ferry_crdt::ReplicaId::from_bytes([9; 16]), 5)
        .unwrap();
    let bytes = ferry_crdt::encode(&theirs).unwrap();
    let peer = Origin::Remote(PeerId::from_bytes([9; 16]));
    let digest = store.merge_state(doc, peer, &bytes).unwrap();
    assert_eq!(
        store.merge_state(doc, peer, &bytes).unwrap(),
        digest,
        "merging twice"
    );
    assert!(matches!(store.crdt(doc).unwrap(), CrdtState::GCounter(c) if c.value() == 7));

    let before = store.info(doc).unwrap();
    let err = store
        .merge_state(doc, peer, &[0xff, 0xff, 0xff])
        .unwrap_err();
    assert!(
        matches!(err, StoreError::BadState { doc: d, .. } if d == doc),
        "{err:?}"
    );
    assert_eq!(store.info(doc).unwrap(), before);
}

/// Overwrites every stored record of `doc` whose key starts with `tag` with garbage.
fn garble(dir: &std::path::Path, doc: DocId, tag: u8) -> usize {
    let db = open_sled(dir);
    let mut garbled = 0;
    for item in db.iter() {
        let (key, _) = item.unwrap();
        if key[0] == tag && key.len() >= 17 && key[1..17] == doc.as_bytes()[..] {
            db.insert(key, &b"\xde\xad\xbe\xef not a record"[..])
                .unwrap();
            garbled += 1;
        }
    }
    db.flush().unwrap();
    garbled
}

#[test]
fn a_damaged_document_names_itself_and_the_others_still_open() {
    for tag in [b's', b'i', b'd'] {
        let dir = tempfile::tempdir().unwrap();
        let (victim, others) = {
            let store = Store::open(dir.path()).unwrap();
            let victim = store.create(DocKind::Automerge).unwrap();
            let mut others = Vec::new();
            for kind in DocKind::ALL {
                others.push(store.create(kind).unwrap());
            }
            for doc in [victim, others[0]] {
                store.change(doc, |tx| tx.put(ROOT, "k", "v")).unwrap();
                store.compact(doc).unwrap();
                store.change(doc, |tx| tx.put(ROOT, "k2", "v2")).unwrap();
            }
            store.increment(others[1], 1).unwrap();
            (victim, others)
        };
        assert!(
            garble(dir.path(), victim, tag) > 0,
            "nothing to garble for {}",
            tag as char
        );

        let store = Store::open(dir.path()).unwrap();
        let err = store.read(victim, |_| ()).unwrap_err();
        assert!(
            matches!(err, StoreError::Damaged { doc, .. } if doc == victim),
            "tag {}: {err:?}",
            tag as char
        );
        assert!(err.to_string().contains(&victim.to_string()), "{err}");
        assert!(store.list().unwrap().contains(&victim));
        assert_eq!(text(&store, others[0], "k2").as_deref(), Some("v2"));
        assert!(matches!(store.crdt(others[1]).unwrap(), CrdtState::GCounter(c) if c.value() == 1));
    }
}

#[test]
fn a_lost_incremental_record_is_detected() {
    // Each incremental record carries the metadata after its commit, so a record lost from the
    // middle breaks the chain. (A lost last record would look like a commit that never
    // happened; sled's atomic inserts are what rule that out.)
    let dir = tempfile::tempdir().unwrap();
    let doc = {
        let store = Store::open(dir.path()).unwrap();
        let doc = store.create(DocKind::Automerge).unwrap();
        for (i, key) in ["a", "b", "c"].into_iter().enumerate() {
            store.change(doc, |tx| tx.put(ROOT, key, i as i64)).unwrap();
        }
        doc
    };
    {
        let db = open_sled(dir.path());
        let mut prefix = vec![b'i'];
        prefix.extend_from_slice(doc.as_bytes());
        let keys: Vec<_> = db.scan_prefix(prefix).keys().map(Result::unwrap).collect();
        assert_eq!(keys.len(), 3);
        db.remove(&keys[1]).unwrap();
        db.flush().unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    let err = store.read(doc, |_| ()).unwrap_err();
    assert!(
        matches!(err, StoreError::Damaged { doc: d, .. } if d == doc),
        "{err:?}"
    );
}

#[test]
fn counter_and_register_updates_survive_reopening_and_fold_into_a_snapshot() {
    // Each update is one delta record; a reopened store joins them with the snapshot, and
    // once they outgrow it they are folded in, so the stored size stays that of the state.
    let dir = tempfile::tempdir().unwrap();
    let (counter, register) = {
        let store = Store::open(dir.path()).unwrap();
        (
            store.create(DocKind::PNCounter).unwrap(),
            store.create(DocKind::LwwRegister).unwrap(),
        )
    };
    let mut largest = 0;
    for round in 0..4i128 {
        let store = Store::open(dir.path()).unwrap();
        let CrdtState::PNCounter(before) = store.crdt(counter).unwrap() else {
            panic!("a pncounter");
        };
        assert_eq!(before.value(), round * 300 - round * 100);
        for i in 0..300u64 {
            store.increment(counter, 1).unwrap();
            if i % 3 == 0 {
                store.decrement(counter, 1).unwrap();
            }
            store
                .set_register(register, format!("{round}/{i}").into_bytes())
                .unwrap();
        }
        largest = largest.max(store.info(counter).unwrap().stored_bytes);
        largest = largest.max(store.info(register).unwrap().stored_bytes);
    }
    let store = Store::open(dir.path()).unwrap();
    let CrdtState::PNCounter(c) = store.crdt(counter).unwrap() else {
        panic!("a pncounter");
    };
    assert_eq!(c.value(), 4 * 300 - 4 * 100);
    let CrdtState::LwwRegister(r) = store.crdt(register).unwrap() else {
        panic!("an lww register");
    };
    assert_eq!(r.get().map(Vec::as_slice), Some(&b"3/299"[..]));
    // 2,800 updates, each a record of tens of bytes, never held more than a few KiB.
    assert!(largest < 16 * 1024, "{largest} bytes stored");
    // Compacting by hand folds what is left; the state reads the same.
    store.compact(counter).unwrap();
    let info = store.info(counter).unwrap();
    let state = CrdtState::PNCounter(c);
    assert_eq!(info.stored_bytes, state.encode().len() as u64);
    assert_eq!(store.crdt(counter).unwrap(), state);
}

#[test]
fn events_carry_origin_and_version_in_commit_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut all = store.subscribe();
    let doc = store.create(DocKind::Automerge).unwrap();
    let other = store.create(DocKind::GCounter).unwrap();
    let mut one = store.subscribe_doc(doc);

    store.change(doc, |tx| tx.put(ROOT, "n", 1)).unwrap();
    store.increment(other, 1).unwrap();
    let mut remote = Automerge::new();
    remote.transact(|tx| tx.put(ROOT, "r", 1)).unwrap();
    let peer = PeerId::from_bytes([5; 16]);
    store
        .apply_changes(doc, Origin::Remote(peer), remote.get_changes(&[]))
        .unwrap();
    store.delete(other).unwrap();

    let mut seen = Vec::new();
    while let Some(event) = all.try_recv().unwrap() {
        seen.push(event);
    }
    let summary: Vec<(DocId, Option<Origin>)> = seen
        .iter()
        .map(|e| match e {
            StoreEvent::Changed { doc, origin, .. } => (*doc, Some(*origin)),
            StoreEvent::Deleted { doc, .. } => (*doc, None),
        })
        .collect();
    assert_eq!(
        summary,
        [
            (doc, Some(Origin::Local)),
            (other, Some(Origin::Local)),
            (doc, Some(Origin::Local)),
            (other, Some(Origin::Local)),
            (doc, Some(Origin::Remote(peer))),
            (other, None),
        ]
    );
    let StoreEvent::Changed { version, .. } = &seen[4] else {
        panic!()
    };
    assert_eq!(version, &store.info(doc).unwrap().version);

    // The per-document stream sees only its document.
    let mine: Vec<_> = std::iter::from_fn(|| one.try_recv().unwrap()).collect();
    assert_eq!(mine.len(), 2);
    assert!(mine.iter().all(|e| e.doc() == doc));
}

#[test]
fn a_slow_subscriber_is_told_it_lagged_and_never_blocks_writers() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        event_capacity: 4,
        ..StoreConfig::default()
    };
    let store = Store::open_with(dir.path(), config).unwrap();
    let doc = store.create(DocKind::GCounter).unwrap();
    let mut slow = store.subscribe();
    for _ in 0..20 {
        store.increment(doc, 1).unwrap(); // would hang here if a full subscriber blocked it
    }
    assert!(matches!(
        slow.try_recv(),
        Err(RecvError::Lagged { missed: 16 })
    ));
    // After the lag it goes on with the newest events.
    assert!(matches!(
        slow.try_recv(),
        Ok(Some(StoreEvent::Changed { .. }))
    ));
}

/// Four writers commit concurrently; every commit lands, and each document's events arrive in
/// its commit order.
fn concurrent_writers(durability: Durability) {
    const COMMITS: usize = 25;
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        durability,
        ..StoreConfig::default()
    };
    let store = Arc::new(Store::open_with(dir.path(), config).unwrap());
    let docs: Vec<DocId> = (0..4)
        .map(|_| store.create(DocKind::Automerge).unwrap())
        .collect();
    let mut events = store.subscribe();
    let threads: Vec<_> = docs
        .iter()
        .map(|doc| {
            let (store, doc) = (Arc::clone(&store), *doc);
            std::thread::spawn(move || {
                for i in 0..COMMITS as i64 {
                    store
                        .change(doc, |tx| tx.put(ROOT, format!("k{i}"), i))
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // Every commit's event was released once its flush was done, and per document they come
    // in commit order: after the k-th event, COMMITS - k changes are still to come.
    let mut seen = std::collections::HashMap::<DocId, usize>::new();
    for _ in 0..docs.len() * COMMITS {
        let StoreEvent::Changed {
            doc,
            version: Version::Heads(heads),
            ..
        } = events.blocking_recv().unwrap()
        else {
            panic!("unexpected event");
        };
        let k = seen.entry(doc).or_default();
        *k += 1;
        let after = store.read(doc, |d| d.get_changes(&heads).len()).unwrap();
        assert_eq!(after, COMMITS - *k, "event {k} of {doc} is out of order");
    }
    assert_eq!(events.try_recv().unwrap(), None);
    drop(events);
    drop(store);

    let store = Store::open(dir.path()).unwrap();
    for doc in docs {
        assert_eq!(store.info(doc).unwrap().changes, COMMITS as u64);
        let v = store
            .read(doc, |d| d.get(ROOT, "k24").unwrap().unwrap().0.as_i64())
            .unwrap();
        assert_eq!(v, Some(24));
    }
}

#[test]
fn concurrent_immediate_writers_all_land_and_events_keep_commit_order() {
    concurrent_writers(Durability::Immediate);
}

#[test]
fn concurrent_batched_writers_all_land_and_events_keep_commit_order() {
    concurrent_writers(Durability::Batched {
        interval: Duration::from_millis(2),
    });
}

#[test]
fn peers_and_access_persist() {
    let dir = tempfile::tempdir().unwrap();
    let peer = PeerId::from_bytes([3; 16]);
    let (shared, private) = (DocId::random(), DocId::random());
    let (team, other) = (SpaceId::random(), SpaceId::random());
    let (in_team, elsewhere) = {
        let store = Store::open(dir.path()).unwrap();
        let mut info = PeerInfo::new(peer, "relay");
        info.addresses.push("127.0.0.1:4433".parse().unwrap());
        info.docs.insert(private, Access::None);
        info.docs.insert(shared, Access::ReadWrite);
        assert!(matches!(
            store.grant(peer, team, Access::Read),
            Err(StoreError::NoSuchPeer(_))
        ));
        store.put_peer(&info).unwrap();
        store.grant(peer, team, Access::Read).unwrap();
        store.grant(peer, other, Access::ReadWrite).unwrap();
        store.revoke(peer, other).unwrap();
        let in_team = store.create_in(team, DocKind::GCounter).unwrap();
        let elsewhere = store.create_in(other, DocKind::GCounter).unwrap();
        let record = SyncRecord {
            automerge_state: vec![1, 2, 3],
            acked: Some(Version::Digest(ferry_crdt::Digest::from_bytes([7; 32]))),
            acked_changes: 3,
            last_sync_millis: Some(42),
        };
        store.put_sync_record(peer, shared, &record).unwrap();
        store.flush().unwrap();
        (in_team, elsewhere)
    };
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.peers().unwrap().len(), 1);
    assert_eq!(store.access(peer, shared).unwrap(), Access::ReadWrite);
    assert_eq!(store.access(peer, private).unwrap(), Access::None);
    assert_eq!(store.access(peer, in_team).unwrap(), Access::Read);
    assert_eq!(store.access(peer, elsewhere).unwrap(), Access::None);
    assert_eq!(store.grants(peer).unwrap(), vec![(team, Access::Read)]);
    // A document not held here: what the peer's grant on the space it is offered in says.
    assert_eq!(store.access(peer, DocId::random()).unwrap(), Access::None);
    assert_eq!(
        store.access_in(peer, DocId::random(), team).unwrap(),
        Access::Read
    );
    assert_eq!(
        store.access_in(peer, elsewhere, team).unwrap(),
        Access::None
    ); // its own space
    assert_eq!(
        store.access(PeerId::from_bytes([4; 16]), shared).unwrap(),
        Access::None
    );
    let record = store.sync_record(peer, shared).unwrap().unwrap();
    assert_eq!(record.last_sync_millis, Some(42));

    assert!(store.remove_peer(peer).unwrap());
    assert!(store.peer(peer).unwrap().is_none());
    assert!(store.sync_record(peer, shared).unwrap().is_none());
    assert!(!store.remove_peer(peer).unwrap());
}

#[test]
fn a_store_open_elsewhere_is_reported_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let err = Store::open(dir.path()).unwrap_err();
    assert!(matches!(err, StoreError::InUse { .. }), "{err:?}");
    assert!(err.to_string().contains("open in another process"), "{err}");
    // Closing the first lets it open, even straight away.
    drop(store);
    Store::open(dir.path()).unwrap();
}

#[test]
fn the_document_cache_stays_within_its_bound() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        cache_docs: std::num::NonZeroUsize::new(8).unwrap(),
        // Many small commits; group them so the test is quick.
        durability: Durability::Batched {
            interval: Duration::from_millis(1),
        },
        ..StoreConfig::default()
    };
    let store = Store::open_with(dir.path(), config).unwrap();
    let docs: Vec<DocId> = (0..300)
        .map(|i| {
            let doc = store.create(DocKind::Automerge).unwrap();
            store.change(doc, |tx| tx.put(ROOT, "i", i as i64)).unwrap();
            doc
        })
        .collect();
    assert!(store.loaded_docs() <= 8, "{} loaded", store.loaded_docs());
    // Every one reloads from disk when asked for, and the cache still holds at most 8.
    for (i, doc) in docs.iter().enumerate() {
        let v = store
            .read(*doc, |d| d.get(ROOT, "i").unwrap().unwrap().0.as_i64())
            .unwrap();
        assert_eq!(v, Some(i as i64));
        assert!(store.loaded_docs() <= 8);
    }
    assert_eq!(store.loaded_docs(), 8);
}

#[test]
fn sync_status_counts_what_a_peer_has_not_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let peer = PeerId::from_bytes([5; 16]);
    let doc = store.create(DocKind::Automerge).unwrap();
    for i in 0..3 {
        store.change(doc, |tx| tx.put(ROOT, "k", i)).unwrap();
    }
    assert_eq!(store.sync_status(peer, doc).unwrap().pending, 3);

    // The peer acknowledges the first two changes' heads, then a third and fourth arrive here.
    let heads_at_two = store
        .read(doc, |d| {
            let all = d.get_changes(&[]);
            vec![all[1].hash()]
        })
        .unwrap();
    let ack = |heads: Vec<automerge::ChangeHash>, at| SyncUpdate {
        acked: Some(Version::Heads(heads)),
        synced_at: at,
        ..SyncUpdate::default()
    };
    store
        .record_sync(peer, doc, ack(heads_at_two, None))
        .unwrap();
    store.change(doc, |tx| tx.put(ROOT, "k", 9)).unwrap();
    let status = store.sync_status(peer, doc).unwrap();
    assert_eq!(status.pending, 2);
    let all: Vec<automerge::ChangeHash> = store
        .read(doc, |d| {
            d.get_changes(&[]).iter().map(|c| c.hash()).collect()
        })
        .unwrap();
    let acknowledged: Vec<bool> = all
        .iter()
        .map(|h| store.acknowledged(peer, doc, *h).unwrap())
        .collect();
    assert_eq!(acknowledged, [true, true, false, false]);
    assert_eq!(status.last_sync_millis, None);

    // Acknowledging the current heads leaves nothing pending.
    let now = store.read(doc, |d| d.get_heads()).unwrap();
    store.record_sync(peer, doc, ack(now, Some(77))).unwrap();
    assert_eq!(
        store.sync_status(peer, doc).unwrap(),
        DocSyncStatus {
            pending: 0,
            last_sync_millis: Some(77)
        }
    );
    // A later reconciliation with the peer counts as a sync of the documents it holds whole.
    store.set_reconciled(peer, 90).unwrap();
    assert_eq!(
        store.sync_status(peer, doc).unwrap().last_sync_millis,
        Some(90)
    );

    // CRDT documents: pending while the acknowledged state is not the current one.
    let counter = store.create(DocKind::GCounter).unwrap();
    store.increment(counter, 1).unwrap();
    let digest = store.info(counter).unwrap().digest;
    store
        .record_sync(
            peer,
            counter,
            SyncUpdate {
                acked: Some(Version::Digest(digest)),
                ..SyncUpdate::default()
            },
        )
        .unwrap();
    assert_eq!(store.sync_status(peer, counter).unwrap().pending, 0);
    store.increment(counter, 1).unwrap();
    store.increment(counter, 1).unwrap();
    assert_eq!(store.sync_status(peer, counter).unwrap().pending, 2);

    // Forgetting the peer forgets its records.
    store.remove_peer(peer).unwrap();
    assert_eq!(store.sync_status(peer, doc).unwrap().pending, 4);
    assert_eq!(store.reconciled(peer).unwrap(), None);
}

#[test]
fn info_never_goes_back_while_a_document_is_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        compact_min_bytes: 1,
        ..StoreConfig::default()
    };
    let store = Store::open_with(dir.path(), config).unwrap();
    let doc = store.create(DocKind::Automerge).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (store, stop) = (store.clone(), stop.clone());
        std::thread::spawn(move || {
            for i in 0..300i64 {
                store.change(doc, |tx| tx.put(ROOT, "n", i)).unwrap();
                if i % 3 == 0 {
                    store.compact(doc).unwrap();
                }
            }
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
        })
    };
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (store, stop) = (store.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut last = 0;
                let mut checked = 0u64;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let info = store.info(doc).unwrap();
                    assert!(info.changes >= last, "{} after {last}", info.changes);
                    last = info.changes;
                    // The version info names is one the document holds.
                    let Version::Heads(heads) = info.version else {
                        panic!("an automerge document's version is heads");
                    };
                    let known = store
                        .read(doc, |d| d.get_missing_deps(&heads).is_empty())
                        .unwrap();
                    assert!(known, "info named heads the document does not hold");
                    checked += 1;
                }
                checked
            })
        })
        .collect();
    writer.join().unwrap();
    for reader in readers {
        assert!(reader.join().unwrap() > 0);
    }
    // Quiet now: info and the document agree exactly.
    let info = store.info(doc).unwrap();
    let heads = store.read(doc, |d| d.get_heads()).unwrap();
    assert_eq!(info.version, Version::Heads(heads));
}

#[test]
fn a_key_file_others_can_read_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let id = Store::open(dir.path()).unwrap().peer_id();
    let key = dir.path().join("identity.key");
    for mode in [0o640, 0o604, 0o620] {
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
        let err = Store::open(dir.path()).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Identity(ferry_store::IdentityError::Exposed { .. })
            ),
            "mode {mode:o}: {err:?}"
        );
    }
    // Made private again, it opens as the same replica.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(Store::open(dir.path()).unwrap().peer_id(), id);
}

#[test]
fn a_removed_peer_gets_no_sync_record_from_a_step_still_running() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let peer = PeerId::from_bytes([6; 16]);
    store.put_peer(&PeerInfo::new(peer, "laptop")).unwrap();
    store
        .grant(peer, SpaceId::DEFAULT, Access::ReadWrite)
        .unwrap();
    let doc = store.create(DocKind::GCounter).unwrap();
    let digest = store.increment(doc, 1).unwrap();
    let seen = |at| SyncUpdate {
        acked: Some(Version::Digest(digest)),
        synced_at: Some(at),
        ..SyncUpdate::default()
    };
    store.record_sync(peer, doc, seen(1)).unwrap();
    assert!(store.sync_record(peer, doc).unwrap().is_some());

    assert!(store.remove_peer(peer).unwrap());
    // What a session step that was already running would write next.
    store.record_sync(peer, doc, seen(2)).unwrap();
    store.set_reconciled(peer, 2).unwrap();
    assert!(store.sync_record(peer, doc).unwrap().is_none());
    assert_eq!(store.reconciled(peer).unwrap(), None);

    // Added again, it is a peer like any other.
    store.put_peer(&PeerInfo::new(peer, "laptop")).unwrap();
    store.record_sync(peer, doc, seen(3)).unwrap();
    assert_eq!(
        store
            .sync_record(peer, doc)
            .unwrap()
            .unwrap()
            .last_sync_millis,
        Some(3)
    );
}

#[test]
fn a_feed_that_falls_behind_keeps_every_change_once_and_never_overflows() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(
        dir.path(),
        StoreConfig {
            durability: Durability::Batched {
                interval: Duration::from_millis(1),
            },
            event_capacity: 16,
            ..StoreConfig::default()
        },
    )
    .unwrap();
    let (reader, other) = (PeerId::from_bytes([1; 16]), PeerId::from_bytes([2; 16]));
    for peer in [reader, other] {
        store.put_peer(&PeerInfo::new(peer, "peer")).unwrap();
    }
    let (shared, hidden) = (SpaceId::random(), SpaceId::random());
    store.grant(reader, shared, Access::Read).unwrap();
    store.grant(other, hidden, Access::ReadWrite).unwrap();
    let feed = store.watch(reader);
    let mut lagging = store.subscribe(); // an ordinary subscriber, for comparison
    let mut docs = std::collections::BTreeSet::new();
    for i in 0..300 {
        let doc = store.create_in(shared, DocKind::GCounter).unwrap();
        store.increment(doc, 1).unwrap();
        docs.insert(doc);
        if i % 2 == 0 {
            store.create_in(hidden, DocKind::GCounter).unwrap();
        }
    }
    // A change that came from the peer itself is not fed back to it.
    let theirs = DocId::random();
    store
        .create_with_id(theirs, shared, DocKind::GCounter, Origin::Remote(reader))
        .unwrap();
    let gathered = feed.try_next().unwrap();
    assert_eq!(gathered.docs, docs, "each change to what it may read, once");
    assert!(!gathered.access_widened);
    assert_eq!(feed.try_next(), None);
    assert!(matches!(lagging.try_recv(), Err(RecvError::Lagged { .. })));
    // A grant that shows the peer more is news too.
    store.grant(reader, hidden, Access::Read).unwrap();
    assert!(feed.try_next().unwrap().access_widened);
}
