//! The facade as an app uses it: handles, events, status, going offline and back.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use automerge::transaction::Transactable;
use automerge::{ROOT, ReadDoc};
use ferry::{
    Access, BackoffConfig, ConnectionState, DocKind, Error, Event, NetConfig, Origin, Replica,
};

const PATIENCE: Duration = Duration::from_secs(20);

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

async fn replica(dir: &tempfile::TempDir) -> Replica {
    Replica::builder(dir.path())
        .network(NetConfig {
            backoff: BackoffConfig {
                min: Duration::from_millis(50),
                max: Duration::from_millis(400),
            },
            connect_timeout: Duration::from_secs(2),
            ..NetConfig::default()
        })
        .open()
        .await
        .unwrap()
}

/// Replicas in `da` and `db` that trust each other; b serves, and a knows its address.
async fn a_knows_serving_b(
    da: &tempfile::TempDir,
    db: &tempfile::TempDir,
) -> (Replica, Replica, SocketAddr) {
    let (a, b) = (replica(da).await, replica(db).await);
    let b_addr = b.serve(loopback()).await.unwrap();
    b.allow_peer(a.peer_id(), Access::ReadWrite).await.unwrap();
    a.add_peer(b.peer_id(), b_addr, Access::ReadWrite)
        .await
        .unwrap();
    (a, b, b_addr)
}

async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut done: impl FnMut() -> F,
) {
    let start = Instant::now();
    while !done().await {
        assert!(start.elapsed() < PATIENCE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handles_refuse_the_wrong_kind_and_unknown_documents() {
    let dir = tempfile::tempdir().unwrap();
    let r = replica(&dir).await;
    let counter = r.create_counter().await.unwrap();
    assert!(matches!(
        r.doc(counter.id()),
        Err(Error::WrongKind {
            found: DocKind::GCounter,
            ..
        })
    ));
    assert!(matches!(
        r.register(counter.id()),
        Err(Error::WrongKind { .. })
    ));
    let missing = ferry::DocId::random();
    assert!(matches!(r.counter(missing), Err(Error::NoSuchDocument(d)) if d == missing));
    // A grow-only counter does not go down, and is unchanged by trying.
    counter.increment(2).await.unwrap();
    assert!(counter.decrement(1).await.is_err());
    assert_eq!(counter.value().unwrap(), 2);
    // Serving twice is refused.
    let addr = r.serve(loopback()).await.unwrap();
    assert!(matches!(r.serve(loopback()).await, Err(Error::AlreadyServing(a)) if a == addr));
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_goes_from_pending_to_synced_across_going_offline_and_back() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b, b_addr) = a_knows_serving_b(&da, &db).await;
    let chat = a.create_doc().await.unwrap();
    let mut a_events = a.subscribe();
    let mut b_events = b.subscribe();
    a.serve(loopback()).await.unwrap();
    let on_b = b.doc_when_available(chat.id(), PATIENCE).await.unwrap();

    // b goes offline; a keeps writing, and its status says what b lacks and when a retries.
    b.shutdown().await;
    for i in 0..3 {
        chat.change(move |tx| tx.put(ROOT, format!("m{i}"), i))
            .await
            .unwrap();
    }
    let sent = chat.heads().unwrap()[0];
    eventually("a sees b disconnected with a retry time", || async {
        let status = a.sync_status().await.unwrap();
        let peer = status.peer(b.peer_id()).unwrap();
        peer.doc(chat.id()).is_some_and(|d| d.pending == 3)
            && matches!(
                peer.connection,
                ConnectionState::Disconnected {
                    next_retry: Some(_)
                }
            )
    })
    .await;
    assert!(!chat.acknowledged_by(b.peer_id(), sent).unwrap());
    on_b.change(|tx| tx.put(ROOT, "from_b", 1)).await.unwrap();

    // b comes back on the same address: a's retry finds it, and both sides catch up.
    b.serve(b_addr).await.unwrap();
    eventually("both caught up", || async {
        let (sa, sb) = (
            a.sync_status().await.unwrap(),
            b.sync_status().await.unwrap(),
        );
        sa.pending(chat.id()) == 0
            && sb.pending(chat.id()) == 0
            && chat.heads().unwrap() == on_b.heads().unwrap()
    })
    .await;
    assert!(chat.acknowledged_by(b.peer_id(), sent).unwrap());
    let status = a.sync_status().await.unwrap();
    let peer = status.peer(b.peer_id()).unwrap();
    assert!(
        peer.is_in_sync() && peer.doc(chat.id()).is_none(),
        "{peer:?}"
    );
    // Live pushes may be acknowledged before the session's comparison of everything ends.
    eventually("a sync with b that compared everything", || async {
        let status = a.sync_status().await.unwrap();
        status.peer(b.peer_id()).unwrap().last_sync.is_some()
    })
    .await;
    assert_eq!(
        on_b.read(|d| d.get(ROOT, "m2").unwrap().map(|(v, _)| v.as_i64()))
            .unwrap(),
        Some(Some(2))
    );

    // The UIs heard of it: a of its local changes, b's change and b holding everything; b of
    // a's changes arriving.
    let mut seen_a = Vec::new();
    while let Some(event) = a_events.try_next() {
        seen_a.push(event);
    }
    assert!(seen_a.contains(&Event::Changed {
        doc: chat.id(),
        origin: Origin::Local
    }));
    assert!(seen_a.contains(&Event::Changed {
        doc: chat.id(),
        origin: Origin::Remote(b.peer_id())
    }));
    assert!(seen_a.contains(&Event::Synced {
        peer: b.peer_id(),
        doc: chat.id()
    }));
    let mut seen_b = Vec::new();
    while let Some(event) = b_events.try_next() {
        seen_b.push(event);
    }
    assert!(seen_b.contains(&Event::Changed {
        doc: chat.id(),
        origin: Origin::Remote(a.peer_id())
    }));
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_register_writes_are_kept_or_settled_the_same_everywhere() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b, _) = a_knows_serving_b(&da, &db).await;
    let floors = a.create_multi_register().await.unwrap();
    let title = a.create_register().await.unwrap();
    a.serve(loopback()).await.unwrap();
    let wait_for = |kind| {
        let b = b.clone();
        let id = match kind {
            DocKind::MvRegister => floors.id(),
            _ => title.id(),
        };
        async move {
            eventually("arrival", || {
                let b = b.clone();
                async move { b.store().info(id).is_ok() }
            })
            .await;
        }
    };
    wait_for(DocKind::MvRegister).await;
    wait_for(DocKind::LwwRegister).await;

    // Both write while apart.
    a.shutdown().await;
    floors.set("4").await.unwrap();
    title.set("A's title").await.unwrap();
    let (floors_b, title_b) = (
        b.multi_register(floors.id()).unwrap(),
        b.register(title.id()).unwrap(),
    );
    floors_b.set("5").await.unwrap();
    title_b.set("B's title").await.unwrap();
    a.serve(loopback()).await.unwrap();
    eventually("both registers agree", || async {
        floors.values().unwrap().len() == 2
            && floors_b.values().unwrap().len() == 2
            && title.get().unwrap() == title_b.get().unwrap()
    })
    .await;
    // No typed floor is lost; each knows who wrote it.
    let mut values = floors.values().unwrap();
    values.sort();
    assert_eq!(values, vec![b"4".to_vec(), b"5".to_vec()]);
    assert!(floors.is_conflicted().unwrap());
    let writers: Vec<_> = floors
        .entries()
        .unwrap()
        .into_iter()
        .map(|(w, _)| w)
        .collect();
    assert!(writers.contains(&a.replica_id()) && writers.contains(&b.replica_id()));
    // Last writer wins, the same everywhere, and says whose write held.
    assert_eq!(title.writer().unwrap(), title_b.writer().unwrap());
    // Settling the conflict is one more write.
    floors.set("4").await.unwrap();
    eventually("settled everywhere", || async {
        floors_b.values().unwrap() == vec![b"4".to_vec()]
    })
    .await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_off_sync_from_an_offline_replica_reports_what_it_did() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b, _) = a_knows_serving_b(&da, &db).await;
    let notes = a.create_doc().await.unwrap();
    notes.change(|tx| tx.put(ROOT, "from_a", 1)).await.unwrap();
    assert_eq!(a.sync_status().await.unwrap().pending(notes.id()), 1);

    // a never serves: it dials b once, syncs, and disconnects.
    let mut events = a.subscribe();
    a.sync_once(b.peer_id()).await.unwrap();
    assert_eq!(a.sync_status().await.unwrap().pending(notes.id()), 0);
    let on_b = b.doc(notes.id()).unwrap();
    assert_eq!(
        on_b.read(|d| d.get(ROOT, "from_a").unwrap().map(|(v, _)| v.as_i64()))
            .unwrap(),
        Some(Some(1))
    );
    let mut seen = Vec::new();
    while let Some(event) = events.try_next() {
        seen.push(event);
    }
    assert!(
        seen.contains(&Event::Synced {
            peer: b.peer_id(),
            doc: notes.id()
        }),
        "{seen:?}"
    );

    // A change made on b comes back the same way, as a change from b.
    on_b.change(|tx| tx.put(ROOT, "from_b", 2)).await.unwrap();
    a.sync_once(b.peer_id()).await.unwrap();
    assert_eq!(
        notes
            .read(|d| d.get(ROOT, "from_b").unwrap().map(|(v, _)| v.as_i64()))
            .unwrap(),
        Some(Some(2))
    );
    let mut seen = Vec::new();
    while let Some(event) = events.try_next() {
        seen.push(event);
    }
    assert!(seen.contains(&Event::Changed {
        doc: notes.id(),
        origin: Origin::Remote(b.peer_id())
    }));
    a.shutdown().await;
    b.shutdown().await;
}

/// Whether `doc` has `key`.
fn has(doc: &ferry::Doc, key: &str) -> bool {
    doc.read(|d| d.get(ROOT, key).unwrap().is_some()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_changes_and_removal_take_effect_on_the_live_connection() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b, _) = a_knows_serving_b(&da, &db).await;
    let a_addr = a.serve(loopback()).await.unwrap();
    // Two shared documents; `marker` stays shared, to show what did get through meanwhile.
    let (doc, marker) = (a.create_doc().await.unwrap(), a.create_doc().await.unwrap());
    doc.change(|tx| tx.put(ROOT, "v", 1)).await.unwrap();
    marker.change(|tx| tx.put(ROOT, "m", 0)).await.unwrap();
    let on_b = b.doc_when_available(doc.id(), PATIENCE).await.unwrap();
    let marker_b = b.doc_when_available(marker.id(), PATIENCE).await.unwrap();
    let marker_on_a = |key: &'static str| {
        let marker = marker.clone();
        move || {
            let marker = marker.clone();
            async move { has(&marker, key) }
        }
    };

    // Read: b's change to `doc` is refused and not stored; its later change to `marker`
    // comes through the same session, so the refused one was handled before it.
    a.set_access(b.peer_id(), doc.id(), Access::Read)
        .await
        .unwrap();
    on_b.change(|tx| tx.put(ROOT, "from_b", 1)).await.unwrap();
    marker_b.change(|tx| tx.put(ROOT, "m1", 1)).await.unwrap();
    eventually("b's marker on a", marker_on_a("m1")).await;
    assert!(
        !has(&doc, "from_b"),
        "a stored a change from a read-only peer"
    );

    // None: a's change to `doc` never goes out; a's later change to `marker` does.
    a.set_access(b.peer_id(), doc.id(), Access::None)
        .await
        .unwrap();
    doc.change(|tx| tx.put(ROOT, "secret", 1)).await.unwrap();
    marker.change(|tx| tx.put(ROOT, "m2", 1)).await.unwrap();
    eventually("a's marker on b", || {
        let marker_b = marker_b.clone();
        async move { has(&marker_b, "m2") }
    })
    .await;
    assert!(
        !has(&on_b, "secret"),
        "a sent a document the peer may not read"
    );

    // Removed: the connection closes, b's redials are refused in the handshake, and no sync
    // record for b reappears on a.
    let mut b_events = b.subscribe();
    b.add_peer(a.peer_id(), a_addr, Access::ReadWrite)
        .await
        .unwrap();
    assert!(a.remove_peer(b.peer_id()).await.unwrap());
    // b keeps dialing a; wait until a dial of b's has failed after the removal.
    let refused = tokio::time::timeout(PATIENCE, async {
        loop {
            if let Some(Event::Connection {
                peer,
                state:
                    ConnectionState::Disconnected {
                        next_retry: Some(_),
                    },
            }) = b_events.next().await
                && peer == a.peer_id()
            {
                return;
            }
        }
    })
    .await;
    assert!(refused.is_ok(), "b never saw a dial to a fail");
    let status = a.sync_status().await.unwrap();
    assert!(status.peer(b.peer_id()).is_none(), "{status:?}");
    for d in [doc.id(), marker.id()] {
        assert!(a.store().sync_record(b.peer_id(), d).unwrap().is_none());
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_photo_follows_the_survey_that_refers_to_it_and_strays_are_collected() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (phone, laptop, _) = a_knows_serving_b(&da, &db).await;
    let mut events = laptop.subscribe();
    let photo = phone.add_blob(vec![7; 200_000]).await.unwrap();
    let survey = phone.create_doc().await.unwrap();
    survey
        .change(move |tx| tx.put(ROOT, "photo", photo.reference()))
        .await
        .unwrap();
    phone.serve(loopback()).await.unwrap();
    // The laptop's policy for the default space is eager: the photo arrives by itself.
    let arrived = tokio::time::timeout(PATIENCE, async {
        loop {
            match events.next().await {
                Some(Event::BlobFetched { hash, len, .. }) if hash == photo => return len,
                Some(_) => {}
                None => panic!("the replica went away"),
            }
        }
    })
    .await
    .expect("the photo arrives");
    assert_eq!(arrived, 200_000);
    assert_eq!(laptop.blob(photo).await.unwrap(), vec![7; 200_000]);
    // Asked for again, it is here already.
    assert_eq!(laptop.fetch_blob(photo).await.unwrap(), 200_000);

    // A blob nothing refers to is collected once past the grace period; the photo stays.
    let stray = laptop
        .add_blob(b"never referred to".to_vec())
        .await
        .unwrap();
    assert!(
        laptop
            .collect_blobs(Duration::from_secs(60))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        laptop.collect_blobs(Duration::ZERO).await.unwrap(),
        vec![stray]
    );
    assert!(laptop.blob(photo).await.is_ok());
    let unknown = ferry::BlobHash::of(b"nobody has this");
    assert!(matches!(
        laptop.fetch_blob(unknown).await,
        Err(Error::Net(ferry::NetError::BlobUnavailable(h))) if h == unknown
    ));
    phone.shutdown().await;
    laptop.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_nothing_refers_to_are_collected_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let replica = Replica::builder(dir.path())
        .blob_grace(Duration::from_millis(200))
        .open()
        .await
        .unwrap();
    let kept = replica.add_blob(b"referred to".to_vec()).await.unwrap();
    let note = replica.create_doc().await.unwrap();
    note.change(move |tx| tx.put(ROOT, "attachment", kept.reference()))
        .await
        .unwrap();
    let stray = replica.add_blob(b"stray".to_vec()).await.unwrap();
    eventually("the stray blob collected", || async {
        replica.blob(stray).await.is_err()
    })
    .await;
    assert!(replica.blob(kept).await.is_ok());
}
