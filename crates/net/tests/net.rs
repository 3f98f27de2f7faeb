//! Replicas syncing over QUIC on loopback: convergence, handshake pinning, bad input from a
//! pinned peer, read-only peers, going offline and coming back, relays, drops mid-sync,
//! duplicate connections and the network-changed retry. Every test stops by itself.

#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use automerge::transaction::Transactable;
use automerge::{ROOT, ReadDoc};
use ferry_net::{BackoffConfig, CloseCode, ConnectionState, NetConfig, NetEvent, Node, tls};
use ferry_store::{Access, CrdtState, DocId, DocInfo, DocKind, PeerId, Store};
use support::{PATIENCE, config, connected, eventually, loopback, open, same, start, trust};

fn get(store: &Store, doc: DocId, key: &str) -> Option<i64> {
    store
        .read(doc, |d| {
            d.get(ROOT, key)
                .ok()
                .flatten()
                .and_then(|(v, _)| v.as_i64())
        })
        .ok()
        .flatten()
}

fn counter(store: &Store, doc: DocId) -> i128 {
    match store.crdt(doc).unwrap() {
        CrdtState::GCounter(c) => i128::try_from(c.value()).unwrap(),
        CrdtState::PNCounter(c) => c.value(),
        other => panic!("not a counter: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_converge_on_every_kind_and_then_live() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (open(da.path()), open(db.path()));
    let node_b = start(&b).await;
    trust(&a, &b, Some(node_b.local_addr()), Access::ReadWrite);
    trust(&b, &a, None, Access::ReadWrite);
    let mut docs = Vec::new();
    for (i, kind) in DocKind::ALL.into_iter().enumerate() {
        for store in [&a, &b] {
            let doc = store.create(kind).unwrap();
            match kind {
                DocKind::Automerge => {
                    store.change(doc, |tx| tx.put(ROOT, "k", i as i64)).unwrap();
                }
                DocKind::GCounter | DocKind::PNCounter => {
                    store.increment(doc, 3).unwrap();
                }
                DocKind::LwwRegister | DocKind::MvRegister => {
                    store.set_register(doc, b"v".to_vec()).unwrap();
                }
            }
            docs.push(doc);
        }
    }
    let node_a = start(&a).await;
    eventually("catch-up", || docs.iter().all(|d| same(&a, &b, *d))).await;

    // Live: a change on either side reaches the other without a new connection.
    let (am, ctr) = (docs[0], docs[2]);
    a.change(am, |tx| tx.put(ROOT, "live", 1)).unwrap();
    b.increment(ctr, 4).unwrap();
    eventually("live changes", || {
        get(&b, am, "live") == Some(1) && counter(&a, ctr) == 7
    })
    .await;
    for doc in &docs {
        eventually("nothing pending", || {
            a.sync_status(b.peer_id(), *doc).unwrap().pending == 0
                && b.sync_status(a.peer_id(), *doc).unwrap().pending == 0
        })
        .await;
    }
    node_a.shutdown().await;
    node_b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_peer_is_refused_in_the_handshake() {
    let (db, dc) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (b, c) = (open(db.path()), open(dc.path()));
    let doc = b.create(DocKind::GCounter).unwrap();
    b.increment(doc, 1).unwrap();
    let node_b = start(&b).await;
    // c trusts b, but b has never heard of c.
    trust(&c, &b, Some(node_b.local_addr()), Access::ReadWrite);
    let node_c = start(&c).await;
    let err = node_c
        .sync_once(b.peer_id(), Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ferry_net::NetError::Connection { .. }),
        "{err}"
    );
    assert!(c.info(doc).is_err(), "c learned of b's document");

    // Nor does a dialer accept another known peer in place of the one it dialed.
    let dd = tempfile::tempdir().unwrap();
    let d = open(dd.path());
    trust(&b, &c, None, Access::ReadWrite);
    trust(&c, &d, Some(node_b.local_addr()), Access::ReadWrite); // b's address, d's id
    let err = node_c
        .sync_once(d.peer_id(), Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ferry_net::NetError::Connection { .. }),
        "{err}"
    );
    node_b.shutdown().await;
    node_c.shutdown().await;
}

/// Opens a raw QUIC connection from `c` (a peer `b` knows) to `b`, bypassing ferry's session.
async fn raw_connection(c: &Store, b: PeerId, addr: SocketAddr) -> quinn::Connection {
    let mut endpoint = quinn::Endpoint::client(loopback()).unwrap();
    endpoint.set_default_client_config(tls::client_config(c, b).unwrap());
    endpoint.connect(addr, "ferry").unwrap().await.unwrap()
}

async fn closed_with(conn: &quinn::Connection) -> Option<CloseCode> {
    match tokio::time::timeout(PATIENCE, conn.closed()).await.unwrap() {
        quinn::ConnectionError::ApplicationClosed(close) => CloseCode::of(close.error_code),
        other => panic!("closed otherwise: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_peer_sending_garbage_or_oversized_frames_is_closed_and_nothing_changes() {
    let (db, dc) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (b, c) = (open(db.path()), open(dc.path()));
    let doc = b.create(DocKind::Automerge).unwrap();
    b.change(doc, |tx| tx.put(ROOT, "k", 1)).unwrap();
    let before: DocInfo = b.info(doc).unwrap();
    trust(&b, &c, None, Access::ReadWrite);
    trust(&c, &b, None, Access::ReadWrite);
    let node_b = start(&b).await;

    let hello = ferry_proto::Message::Hello {
        version: 1,
        capabilities: 0,
    }
    .to_frame();
    let mut oversized = hello.clone();
    oversized.extend_from_slice(&0xffff_fff0u32.to_le_bytes());
    oversized.extend_from_slice(&[3; 64]);
    let mut garbage = hello.clone();
    garbage.extend_from_slice(&[9, 0, 0, 0, 0xee, 1, 2, 3, 4, 5, 6, 7, 8]);
    for (what, bytes) in [("garbage", garbage), ("oversized frame", oversized)] {
        let conn = raw_connection(&c, b.peer_id(), node_b.local_addr()).await;
        let (mut send, _recv) = conn.open_bi().await.unwrap();
        send.write_all(&bytes).await.unwrap();
        assert_eq!(
            closed_with(&conn).await,
            Some(CloseCode::Protocol),
            "{what}"
        );
        assert_eq!(b.info(doc).unwrap(), before, "{what}: the store changed");
        assert!(
            b.list().unwrap() == vec![doc],
            "{what}: a document appeared"
        );
    }
    node_b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_peer_too_slow_to_open_its_session_or_finish_a_frame_is_closed() {
    let (db, dc, dd) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let (b, c, d) = (open(db.path()), open(dc.path()), open(dd.path()));
    let doc = b.create(DocKind::Automerge).unwrap();
    b.change(doc, |tx| tx.put(ROOT, "k", 1)).unwrap();
    trust(&b, &c, None, Access::ReadWrite);
    trust(&c, &b, None, Access::ReadWrite);
    let timeout = Duration::from_millis(800);
    let node_b = Node::start(
        b.clone(),
        NetConfig {
            frame_timeout: timeout,
            ..config(loopback())
        },
    )
    .await
    .unwrap();
    // A well-behaved peer syncs with b all along.
    trust(&b, &d, None, Access::ReadWrite);
    trust(&d, &b, Some(node_b.local_addr()), Access::ReadWrite);
    let node_d = start(&d).await;
    eventually("d synced", || same(&b, &d, doc)).await;

    let hello = ferry_proto::Message::Hello {
        version: ferry_proto::PROTOCOL_VERSION,
        capabilities: 0,
    }
    .to_frame();
    // A frame that would be out of place once whole; it never is, at a byte every 300 ms.
    let ping = hello.clone();
    // Three slow peers: one that never opens its session; one that sends its hello a byte at
    // a time; one that sends its hello, then begins a frame and sends a byte at a time.
    for what in ["no session", "a slow hello", "a slow frame"] {
        let started = Instant::now();
        let conn = raw_connection(&c, b.peer_id(), node_b.local_addr()).await;
        let dribble = async {
            if what == "no session" {
                return std::future::pending::<()>().await;
            }
            let (mut send, _recv) = conn.open_bi().await.unwrap();
            if what == "a slow frame" {
                send.write_all(&hello).await.unwrap();
            }
            for byte in ping.iter().cycle() {
                if send.write_all(&[*byte]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            std::future::pending::<()>().await
        };
        let closed = tokio::select! {
            closed = closed_with(&conn) => closed,
            () = dribble => unreachable!(),
        };
        assert_eq!(closed, Some(CloseCode::Protocol), "{what}");
        let took = started.elapsed();
        assert!(
            took >= timeout,
            "{what}: closed after {took:?}, before its time"
        );
        // Meanwhile the well-behaved peer's changes go on.
        d.change(doc, |tx| tx.put(ROOT, what, 1)).unwrap();
        eventually("d's change on b", || same(&b, &d, doc)).await;
    }
    node_d.shutdown().await;
    node_b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_peer_asking_for_a_document_it_may_not_read_learns_nothing() {
    let (db, dc) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (b, c) = (open(db.path()), open(dc.path()));
    let secret = b.create_space("secret").unwrap();
    let hidden = b.create_in(secret, DocKind::Automerge).unwrap();
    b.change(hidden, |tx| tx.put(ROOT, "k", 1)).unwrap();
    let before = b.info(hidden).unwrap();
    // c may read and write the default space only.
    trust(&b, &c, None, Access::ReadWrite);
    trust(&c, &b, None, Access::ReadWrite);
    let node_b = start(&b).await;
    let hello = ferry_proto::Message::Hello {
        version: ferry_proto::PROTOCOL_VERSION,
        capabilities: 0,
    }
    .to_frame();
    // What b answers a request for the hidden document, and for one that does not exist.
    let mut answers = Vec::new();
    for doc in [hidden, DocId::random()] {
        let conn = raw_connection(&c, b.peer_id(), node_b.local_addr()).await;
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&hello).await.unwrap();
        send.write_all(&ferry_proto::Message::Want { doc }.to_frame())
            .await
            .unwrap();
        let mut bytes = Vec::new();
        while let Ok(Some(chunk)) = recv.read_chunk(1 << 16, true).await {
            bytes.extend_from_slice(&chunk.bytes);
        }
        assert_eq!(closed_with(&conn).await, Some(CloseCode::Protocol));
        let mut reader = ferry_proto::FrameReader::new(1 << 20);
        reader.push(&bytes);
        let mut error = None;
        while let Ok(Some(frame)) = reader.next_frame() {
            if let Ok(ferry_proto::Message::Error { code, detail }) =
                ferry_proto::Message::from_frame(&frame, 1 << 20)
            {
                error = Some((code, detail.replace(&doc.to_string(), "DOC")));
            }
        }
        answers.push(error.expect("an error frame before the close"));
    }
    assert_eq!(answers[0].0, ferry_proto::ErrorCode::NoAccess);
    assert_eq!(
        answers[0], answers[1],
        "the hidden document is told apart from one that does not exist"
    );
    assert_eq!(b.info(hidden).unwrap(), before);
    node_b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_peers_changes_are_not_stored() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (open(da.path()), open(db.path()));
    let doc = a.create(DocKind::Automerge).unwrap();
    a.change(doc, |tx| tx.put(ROOT, "from_a", 1)).unwrap();
    let count = a.create(DocKind::GCounter).unwrap();
    let node_a = start(&a).await;
    trust(&a, &b, None, Access::Read); // a takes nothing from b
    trust(&b, &a, Some(node_a.local_addr()), Access::ReadWrite);
    let node_b = start(&b).await;
    eventually("b gets a's documents", || {
        same(&a, &b, doc) && same(&a, &b, count)
    })
    .await;

    let mut events_b = node_b.subscribe();
    b.change(doc, |tx| tx.put(ROOT, "from_b", 2)).unwrap();
    b.increment(count, 9).unwrap();
    a.change(doc, |tx| tx.put(ROOT, "again", 3)).unwrap();
    eventually("b gets a's new change", || get(&b, doc, "again") == Some(3)).await;
    // a has answered both of b's pushes: refused.
    let mut refused = std::collections::BTreeSet::new();
    while refused.len() < 2 {
        let event = tokio::time::timeout(PATIENCE, events_b.recv())
            .await
            .unwrap();
        if let Ok(NetEvent::Session {
            event: ferry_proto::Event::Refused { doc, .. },
            ..
        }) = event
        {
            refused.insert(doc);
        }
    }
    assert_eq!(refused, [doc, count].into_iter().collect());
    assert_eq!(get(&a, doc, "from_b"), None);
    assert_eq!(counter(&a, count), 0);
    node_a.shutdown().await;
    node_b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_writes_on_both_sides_arrive_once_after_a_restart() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (open(da.path()), open(db.path()));
    let node_b = start(&b).await;
    let b_addr = node_b.local_addr();
    trust(&a, &b, Some(b_addr), Access::ReadWrite);
    trust(&b, &a, None, Access::ReadWrite);
    let chat = a.create(DocKind::Automerge).unwrap();
    let reads = a.create(DocKind::GCounter).unwrap();
    let node_a = start(&a).await;
    eventually("first sync", || same(&a, &b, chat) && same(&a, &b, reads)).await;

    // b goes down: its endpoint closes and its store is closed.
    node_b.shutdown().await;
    drop(node_b);
    drop(b);
    for i in 0..5 {
        a.change(chat, |tx| tx.put(ROOT, format!("a{i}"), i))
            .unwrap();
        a.increment(reads, 1).unwrap();
    }
    let b = open(db.path());
    for i in 0..3 {
        b.change(chat, |tx| tx.put(ROOT, format!("b{i}"), i))
            .unwrap();
        b.increment(reads, 10).unwrap();
    }
    assert_eq!(a.sync_status(b.peer_id(), chat).unwrap().pending, 5);
    assert_eq!(b.sync_status(a.peer_id(), chat).unwrap().pending, 3);
    eventually("a shows b as disconnected with a retry time", || {
        matches!(
            node_a.states().get(&b.peer_id()),
            Some(ConnectionState::Disconnected {
                next_retry: Some(_)
            })
        )
    })
    .await;

    // b comes back on the same address; a's dial loop finds it without being told.
    let node_b = Node::start(b.clone(), config(b_addr)).await.unwrap();
    eventually("both sides converge", || {
        same(&a, &b, chat) && same(&a, &b, reads)
    })
    .await;
    for store in [&a, &b] {
        for i in 0..5 {
            assert_eq!(get(store, chat, &format!("a{i}")), Some(i));
        }
        for i in 0..3 {
            assert_eq!(get(store, chat, &format!("b{i}")), Some(i));
        }
        // Each increment counted exactly once.
        assert_eq!(counter(store, reads), 5 + 30);
    }
    eventually("pending drops to 0", || {
        [chat, reads].iter().all(|d| {
            a.sync_status(b.peer_id(), *d).unwrap().pending == 0
                && b.sync_status(a.peer_id(), *d).unwrap().pending == 0
        })
    })
    .await;
    node_a.shutdown().await;
    node_b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_in_a_chain_converge_through_the_middle() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (a, r, b) = (
        open(dirs[0].path()),
        open(dirs[1].path()),
        open(dirs[2].path()),
    );
    let node_r = start(&r).await;
    // a and b know only the relay; the relay knows both but dials neither.
    trust(&a, &r, Some(node_r.local_addr()), Access::ReadWrite);
    trust(&b, &r, Some(node_r.local_addr()), Access::ReadWrite);
    trust(&r, &a, None, Access::ReadWrite);
    trust(&r, &b, None, Access::ReadWrite);
    let from_a = a.create(DocKind::Automerge).unwrap();
    a.change(from_a, |tx| tx.put(ROOT, "a", 1)).unwrap();
    let from_b = b.create(DocKind::PNCounter).unwrap();
    b.decrement(from_b, 2).unwrap();
    let node_a = start(&a).await;
    let node_b = start(&b).await;
    eventually("a and b converge through r", || {
        same(&a, &b, from_a) && same(&a, &b, from_b)
    })
    .await;
    // And live: a change on a reaches b through r.
    a.change(from_a, |tx| tx.put(ROOT, "later", 2)).unwrap();
    eventually("a live change reaches b", || {
        get(&b, from_a, "later") == Some(2)
    })
    .await;
    for node in [node_a, node_b, node_r] {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_dropped_in_the_middle_of_a_large_sync_converges_after_a_restart() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (open(da.path()), open(db.path()));
    let docs: Vec<DocId> = (0..300)
        .map(|i| {
            let doc = a.create(DocKind::Automerge).unwrap();
            a.change(doc, |tx| {
                tx.put(ROOT, "n", i)?;
                tx.put(ROOT, "text", "x".repeat(2_000))
            })
            .unwrap();
            doc
        })
        .collect();
    let node_a = start(&a).await;
    let a_addr = node_a.local_addr();
    trust(&a, &b, None, Access::ReadWrite);
    trust(&b, &a, Some(a_addr), Access::ReadWrite);
    let node_b = start(&b).await;
    let mut events = node_b.subscribe();
    // Drop b as soon as the first document arrives.
    loop {
        let event = tokio::time::timeout(PATIENCE, events.recv())
            .await
            .unwrap()
            .unwrap();
        if let NetEvent::Session {
            event: ferry_proto::Event::DocUpdated { .. },
            ..
        } = event
        {
            break;
        }
    }
    drop(node_b);
    let partial = b.list().unwrap().len();
    assert!(partial < docs.len(), "the sync finished before the drop");

    let node_b = start(&b).await;
    eventually("convergence after the restart", || {
        docs.iter().all(|d| same(&a, &b, *d))
    })
    .await;
    node_a.shutdown().await;
    node_b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_both_dial_at_once_one_connection_stays() {
    for _ in 0..3 {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, b) = (open(da.path()), open(db.path()));
        trust(&a, &b, None, Access::ReadWrite);
        trust(&b, &a, None, Access::ReadWrite);
        let (node_a, node_b) = (start(&a).await, start(&b).await);
        let (mut events_a, mut events_b) = (node_a.subscribe(), node_b.subscribe());
        // Both learn the other's address and dial at the same moment.
        trust(&a, &b, Some(node_b.local_addr()), Access::ReadWrite);
        trust(&b, &a, Some(node_a.local_addr()), Access::ReadWrite);
        node_a.dial(b.peer_id());
        node_b.dial(a.peer_id());
        eventually("connected", || {
            connected(&node_a, b.peer_id()) && connected(&node_b, a.peer_id())
        })
        .await;
        // The duplicate has gone on both sides once each runs its accept loop, its blob
        // fetcher, its dial loop and one connection (it may take the 1 s replacement grace).
        eventually("one connection left on each side", || {
            node_a.running_tasks() == 4 && node_b.running_tasks() == 4
        })
        .await;
        let doc = a.create(DocKind::GCounter).unwrap();
        a.increment(doc, 1).unwrap();
        eventually("the change arrives", || same(&a, &b, doc)).await;
        // Whichever connection each side dropped, neither ever lost the one it kept.
        for events in [&mut events_a, &mut events_b] {
            while let Ok(event) = events.try_recv() {
                assert!(
                    !matches!(
                        event,
                        NetEvent::Connection {
                            state: ConnectionState::Disconnected { .. },
                            ..
                        }
                    ),
                    "a kept connection was closed: {event:?}"
                );
            }
        }
        node_a.shutdown().await;
        node_b.shutdown().await;
    }
}

fn free_port() -> SocketAddr {
    let socket = std::net::UdpSocket::bind(loopback()).unwrap();
    socket.local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_changed_retries_at_once() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (open(da.path()), open(db.path()));
    // a dials b where nothing listens, until b's real address takes its place.
    trust(&a, &b, Some(free_port()), Access::ReadWrite);
    trust(&b, &a, None, Access::ReadWrite);
    let node_b = Node::start(b.clone(), config(loopback())).await.unwrap();
    // Long backoff: without the nudge, the next try would be many seconds away.
    let slow = NetConfig {
        backoff: BackoffConfig {
            min: Duration::from_secs(30),
            max: Duration::from_secs(60),
        },
        connect_timeout: Duration::from_millis(300),
        ..config(loopback())
    };
    let node_a = Node::start(a.clone(), slow).await.unwrap();
    let mut events = node_a.subscribe();
    // Dials fail until the jittered wait before the next one is long.
    let far = Duration::from_secs(10);
    loop {
        let event = tokio::time::timeout(PATIENCE, events.recv()).await.unwrap();
        if let Ok(NetEvent::Connection {
            state:
                ConnectionState::Disconnected {
                    next_retry: Some(at),
                },
            ..
        }) = event
            && at > std::time::SystemTime::now() + far
        {
            break;
        }
    }
    // The network is back (b is reachable at its real address), and the app says so the
    // moment it saw that state: the nudge must be heard, however soon it comes.
    trust(&a, &b, Some(node_b.local_addr()), Access::ReadWrite);
    let nudged = Instant::now();
    node_a.network_changed();
    eventually("connected after the nudge", || {
        connected(&node_a, b.peer_id())
    })
    .await;
    assert!(nudged.elapsed() < Duration::from_secs(5));
    node_a.shutdown().await;
    node_b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_off_sync_reports_what_it_sent_and_received() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (open(da.path()), open(db.path()));
    let mine = a.create(DocKind::GCounter).unwrap();
    a.increment(mine, 2).unwrap();
    let theirs = b.create(DocKind::Automerge).unwrap();
    b.change(theirs, |tx| tx.put(ROOT, "k", 1)).unwrap();
    let node_b = start(&b).await;
    trust(&b, &a, None, Access::ReadWrite);
    trust(&a, &b, Some(node_b.local_addr()), Access::ReadWrite);
    let node_a = Node::start_without_dialing(a.clone(), config(loopback()))
        .await
        .unwrap();
    let report = node_a
        .sync_once(b.peer_id(), Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!(report.sent.into_iter().collect::<Vec<_>>(), vec![mine]);
    assert_eq!(
        report.received.into_iter().collect::<Vec<_>>(),
        vec![theirs]
    );
    assert!(report.pending.is_empty(), "{:?}", report.pending);
    assert!(same(&a, &b, mine) && same(&a, &b, theirs));
    // The one-off node kept no connection.
    assert!(node_a.connection_stats(b.peer_id()).is_none());
    node_a.shutdown().await;
    node_b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serving_node_syncs_once_over_a_connection_it_keeps() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (open(da.path()), open(db.path()));
    let node_b = start(&b).await;
    trust(&b, &a, None, Access::ReadWrite);
    // a serves, but learns b's address only after starting: no dial loop runs for b yet.
    let node_a = start(&a).await;
    trust(&a, &b, Some(node_b.local_addr()), Access::ReadWrite);
    let doc = a.create(DocKind::PNCounter).unwrap();
    a.increment(doc, 5).unwrap();
    let report = node_a
        .sync_once(b.peer_id(), Duration::from_millis(200))
        .await
        .unwrap();
    assert!(report.sent.contains(&doc), "{report:?}");
    assert!(report.pending.is_empty(), "{report:?}");
    assert!(same(&a, &b, doc));
    assert!(connected(&node_a, b.peer_id()));
    // And again, over the same live connection: nothing moves.
    let again = node_a
        .sync_once(b.peer_id(), Duration::from_millis(200))
        .await
        .unwrap();
    assert!(again.sent.is_empty() && again.received.is_empty() && again.pending.is_empty());
    node_a.shutdown().await;
    node_b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_an_address_cannot_be_synced_once() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (open(da.path()), open(db.path()));
    trust(&a, &b, None, Access::ReadWrite);
    for node in [
        start(&a).await,
        Node::start_without_dialing(a.clone(), config(loopback()))
            .await
            .unwrap(),
    ] {
        let err = node
            .sync_once(b.peer_id(), Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(matches!(err, ferry_net::NetError::NoAddress(_)), "{err}");
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_keeps_no_task_for_a_connection_that_ended() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, relay) = (open(da.path()), open(db.path()));
    let node_relay = start(&relay).await;
    trust(&relay, &a, None, Access::ReadWrite);
    trust(&a, &relay, Some(node_relay.local_addr()), Access::ReadWrite);
    let node_a = Node::start_without_dialing(a.clone(), config(loopback()))
        .await
        .unwrap();
    let idle = node_relay.running_tasks();
    for _ in 0..20 {
        node_a
            .sync_once(relay.peer_id(), Duration::from_millis(50))
            .await
            .unwrap();
    }
    // Every connection ended; the relay is back to its accept loop alone.
    eventually("the relay's connection tasks to end", || {
        node_relay.running_tasks() <= idle
    })
    .await;
    node_a.shutdown().await;
    node_relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_off_sync_waits_for_an_acknowledgement_slower_than_its_quiet_window() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = open(da.path());
    // b makes its writes durable in groups every 1.5 s: it acknowledges a change only then,
    // long after the sync has gone quiet.
    let b = Store::open_with(
        db.path(),
        ferry_store::StoreConfig {
            durability: ferry_store::Durability::Batched {
                interval: Duration::from_millis(1_500),
            },
            ..ferry_store::StoreConfig::default()
        },
    )
    .unwrap();
    let node_b = start(&b).await;
    trust(&b, &a, None, Access::ReadWrite);
    trust(&a, &b, Some(node_b.local_addr()), Access::ReadWrite);
    let doc = a.create(DocKind::GCounter).unwrap();
    a.increment(doc, 1).unwrap();
    let node_a = Node::start_without_dialing(a.clone(), config(loopback()))
        .await
        .unwrap();
    let report = node_a
        .sync_once(b.peer_id(), Duration::from_millis(200))
        .await
        .unwrap();
    assert!(report.sent.contains(&doc), "{report:?}");
    assert!(report.pending.is_empty(), "{report:?}");
    assert_eq!(a.sync_status(b.peer_id(), doc).unwrap().pending, 0);
    node_a.shutdown().await;
    node_b.shutdown().await;
}

/// Keep-alives hold an idle connection open past the idle timeout: neither side drops it, and
/// no reconnection happens behind the app's back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_outlives_the_idle_timeout_on_both_sides() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (open(dir_a.path()), open(dir_b.path()));
    let quick = |listen| NetConfig {
        keep_alive: Duration::from_millis(200),
        idle_timeout: Duration::from_secs(1),
        ..config(listen)
    };
    let node_b = Node::start(b.clone(), quick(loopback())).await.unwrap();
    trust(&b, &a, None, Access::ReadWrite);
    trust(&a, &b, Some(node_b.local_addr()), Access::ReadWrite);
    let node_a = Node::start(a.clone(), quick(loopback())).await.unwrap();
    eventually("connected both ways", || {
        connected(&node_a, b.peer_id()) && connected(&node_b, a.peer_id())
    })
    .await;
    let (mut events_a, mut events_b) = (node_a.subscribe(), node_b.subscribe());
    // Four idle timeouts with nothing to sync.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for events in [&mut events_a, &mut events_b] {
        while let Ok(event) = events.try_recv() {
            assert!(
                !matches!(event, NetEvent::Connection { .. }),
                "the idle connection changed state: {event:?}"
            );
        }
    }
    assert!(connected(&node_a, b.peer_id()) && connected(&node_b, a.peer_id()));
    node_a.shutdown().await;
    node_b.shutdown().await;
}
