//! A flood of connection attempts from peers a relay does not know: after a few failed
//! handshakes their address is refused before any cryptography, while a trusted device (from
//! another address) syncs on, and a newcomer from a third address still gets its handshake.

#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use automerge::ROOT;
use automerge::transaction::Transactable;
use ferry_net::{NetConfig, Node, tls};
use ferry_store::{Access, DocKind, Store};
use support::{connected, eventually, open, same, trust};

/// Dials `relay` from `ip` as `who` (a replica it does not know) until `until`, a few
/// milliseconds apart; returns how many attempts ended in a connection.
async fn redial(
    who: Store,
    relay: (ferry_store::PeerId, SocketAddr),
    ip: [u8; 4],
    tries: Arc<AtomicU64>,
    until: Instant,
) -> u64 {
    let mut endpoint = quinn::Endpoint::client(SocketAddr::from((ip, 0))).unwrap();
    endpoint.set_default_client_config(tls::client_config(&who, relay.0).unwrap());
    let mut connected = 0;
    while Instant::now() < until {
        tries.fetch_add(1, Ordering::Relaxed);
        if let Ok(connecting) = endpoint.connect(relay.1, "ferry")
            && let Ok(Ok(_conn)) = tokio::time::timeout(Duration::from_secs(2), connecting).await
        {
            connected += 1;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    connected
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_peers_redialing_are_refused_and_a_trusted_device_syncs_on() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let (relay, device) = (open(dirs[0].path()), open(dirs[1].path()));
    let limit = 10;
    let config = NetConfig {
        max_failed_handshakes: limit,
        failure_window: Duration::from_secs(60),
        ..support::config(support::loopback())
    };
    let node_r = Node::start(relay.clone(), config).await.unwrap();
    trust(&relay, &device, None, Access::ReadWrite);
    trust(
        &device,
        &relay,
        Some(node_r.local_addr()),
        Access::ReadWrite,
    );
    let node_d = support::start(&device).await;
    eventually("the device connected", || {
        connected(&node_d, relay.peer_id())
    })
    .await;
    let doc = device.create(DocKind::Automerge).unwrap();
    eventually("the document on the relay", || same(&relay, &device, doc)).await;

    // 20 strangers redial from 127.0.0.2 for 3 s; meanwhile the device changes its document.
    let strangers: Vec<_> = (0..20).map(|_| tempfile::tempdir().unwrap()).collect();
    let tries = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(3);
    let target = (relay.peer_id(), node_r.local_addr());
    let attacks: Vec<_> = strangers
        .iter()
        .map(|dir| {
            tokio::spawn(redial(
                open(dir.path()),
                target,
                [127, 0, 0, 2],
                tries.clone(),
                until,
            ))
        })
        .collect();
    let mut latencies = Vec::new();
    let mut n = 0;
    while Instant::now() < until {
        n += 1;
        let written = Instant::now();
        device.change(doc, |tx| tx.put(ROOT, "n", n)).unwrap();
        eventually("the device's change on the relay", || {
            same(&relay, &device, doc)
        })
        .await;
        latencies.push(written.elapsed());
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let mut connections = 0;
    for attack in attacks {
        connections += attack.await.unwrap();
    }
    let tries = tries.load(Ordering::Relaxed);
    let refused = node_r.refused_handshakes();
    latencies.sort();
    println!(
        "{tries} attempts from strangers, {refused} refused before their handshake; the device's {} changes meanwhile: p50 {:.1?}, p99 {:.1?}",
        latencies.len(),
        latencies[latencies.len() / 2],
        latencies[latencies.len() * 99 / 100],
    );
    assert_eq!(connections, 0, "a stranger connected");
    // Beyond the first `limit` failures (and those already in their handshake then), every
    // attempt was refused before it began.
    assert!(tries > 200, "only {tries} attempts");
    assert!(
        refused >= tries - u64::from(limit) - 40,
        "{refused} of {tries} refused"
    );
    assert!(
        connected(&node_d, relay.peer_id()),
        "the device lost its connection"
    );

    // Another address is not held to the strangers' failures, and the device (127.0.0.1)
    // connects again after a cut.
    let newcomer = tempfile::tempdir().unwrap();
    let before = node_r.refused_handshakes();
    let once = redial(
        open(newcomer.path()),
        target,
        [127, 0, 0, 3],
        Arc::default(),
        Instant::now() + Duration::from_millis(1),
    )
    .await;
    assert_eq!(once, 0);
    assert_eq!(
        node_r.refused_handshakes(),
        before,
        "the newcomer was refused unheard"
    );
    node_d.disconnect(relay.peer_id());
    eventually("the device connected again", || {
        connected(&node_d, relay.peer_id()) && node_d.connection_stats(relay.peer_id()).is_some()
    })
    .await;
    device.change(doc, |tx| tx.put(ROOT, "after", 1)).unwrap();
    eventually("the device's change after the flood", || {
        same(&relay, &device, doc)
    })
    .await;
    node_d.shutdown().await;
    node_r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_peer_opening_hundreds_of_connections_keeps_one() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let (relay, peer) = (open(dirs[0].path()), open(dirs[1].path()));
    let node_r = support::start(&relay).await;
    trust(&relay, &peer, None, Access::ReadWrite);
    trust(&peer, &relay, None, Access::ReadWrite);
    let baseline = node_r.running_tasks();
    let mut endpoint = quinn::Endpoint::client(support::loopback()).unwrap();
    endpoint.set_default_client_config(tls::client_config(&peer, relay.peer_id()).unwrap());
    let mut conns = Vec::new();
    for _ in 0..300 {
        let conn = endpoint
            .connect(node_r.local_addr(), "ferry")
            .unwrap()
            .await
            .unwrap();
        // Each opens its session, as a real dialer would, and says nothing more. (The relay
        // may close it as a duplicate first: it registers connections as their handshakes
        // end on its side, not in the order they were dialed.)
        if let Ok((mut send, recv)) = conn.open_bi().await {
            let hello = ferry_proto::Message::Hello {
                version: ferry_proto::PROTOCOL_VERSION,
                capabilities: 0,
            }
            .to_frame();
            let _ = send.write_all(&hello).await;
            conns.push((conn, Some((send, recv))));
        } else {
            conns.push((conn, None));
        }
    }
    // Every connection but one is closed as a duplicate, and the relay keeps a task for one
    // connection only.
    eventually("all but one closed", || {
        conns
            .iter()
            .filter(|(c, _)| c.close_reason().is_none())
            .count()
            == 1
    })
    .await;
    eventually("the relay's tasks back to one connection's", || {
        node_r.running_tasks() <= baseline + 1
    })
    .await;
    node_r.shutdown().await;
}
