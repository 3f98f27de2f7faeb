//! ferry over QUIC on loopback, measured next to its anchors in one run:
//!
//! - live propagation: from a durable local commit on one replica to the change being durable
//!   and announced on the other (p50, p99), against one local durable commit;
//! - cloning the automerge-paper document (one change per keystroke) to an empty replica: time
//!   and UDP bytes, against automerge's own sync loop on the same document in memory.
//!
//! Run: `cargo bench -p ferry-net --bench live`.

#![allow(clippy::unwrap_used)]

#[path = "support/peers.rs"]
mod peers;

use peers::{loopback, trust};

// Shared with the store's tests, which also build the trace into a store.
#[allow(dead_code)]
#[path = "../../store/tests/support/trace.rs"]
mod trace;
// Shared with the proto crate's bench.
#[path = "../../proto/benches/support/anchor.rs"]
mod anchor;

use std::time::{Duration, Instant};

use automerge::sync::State;
use automerge::transaction::Transactable;
use automerge::{Automerge, ROOT};
use ferry_net::{ConnectionState, NetConfig, Node};
use ferry_store::{DocKind, Origin, Store, StoreEvent, Version};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[at]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Two stores under `target/`, on the build disk, so every flush is a real fsync.
fn stores() -> (tempfile::TempDir, Store, Store) {
    let base = concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/bench-net");
    std::fs::create_dir_all(base).unwrap();
    let dir = tempfile::tempdir_in(base).unwrap();
    let a = Store::open(dir.path().join("a")).unwrap();
    let b = Store::open(dir.path().join("b")).unwrap();
    (dir, a, b)
}

async fn connect(a: &Store, b: &Store) -> (Node, Node) {
    let config = NetConfig {
        listen: loopback(),
        ..NetConfig::default()
    };
    let node_b = Node::start(b.clone(), config.clone()).await.unwrap();
    trust(a, b, Some(node_b.local_addr()));
    trust(b, a, None);
    let node_a = Node::start(a.clone(), config).await.unwrap();
    while !matches!(
        node_a.states().get(&b.peer_id()),
        Some(ConnectionState::Connected { .. })
    ) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (node_a, node_b)
}

async fn live() {
    let (_dir, a, b) = stores();
    let doc = a.create(DocKind::Automerge).unwrap();
    a.change(doc, |tx| tx.put(ROOT, "n", 0)).unwrap();
    let (node_a, node_b) = connect(&a, &b).await;
    let mut on_b = b.subscribe_doc(doc);
    while b.info(doc).ok().map(|i| i.version) != a.info(doc).ok().map(|i| i.version) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    while on_b.try_recv().ok().flatten().is_some() {}

    let rounds = 1_000;
    let mut latencies = Vec::with_capacity(rounds);
    let mut commits = Vec::with_capacity(rounds);
    for i in 1..=rounds {
        let started = Instant::now();
        let store = a.clone();
        let heads = tokio::task::spawn_blocking(move || {
            store.change(doc, |tx| tx.put(ROOT, "n", i as i64)).unwrap();
            store.read(doc, |d| d.get_heads()).unwrap()
        })
        .await
        .unwrap();
        let committed = Instant::now();
        commits.push(committed - started);
        loop {
            match on_b.recv().await.unwrap() {
                StoreEvent::Changed {
                    origin: Origin::Remote(_),
                    version: Version::Heads(h),
                    ..
                } if h == heads => break,
                _ => {}
            }
        }
        latencies.push(committed.elapsed());
        // Spread the commits out a little, as typing does.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    latencies.sort();
    commits.sort();
    println!("live propagation, {rounds} changes one at a time (loopback, durable on both sides)");
    println!(
        "  commit on a -> durable and announced on b   p50 {:>7.3} ms   p99 {:>7.3} ms   max {:>7.3} ms   (target p99 <= 10 ms)",
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        ms(*latencies.last().unwrap())
    );
    println!(
        "  anchor: one durable local commit on a        p50 {:>7.3} ms   p99 {:>7.3} ms",
        ms(percentile(&commits, 0.5)),
        ms(percentile(&commits, 0.99))
    );
    node_a.shutdown().await;
    node_b.shutdown().await;
}

async fn clone_paper() {
    let paper = trace::one_change_per_edit(&trace::load());
    let saved = paper.save();

    // The anchor: automerge's own sync loop, in memory.
    let started = Instant::now();
    let (mut from, mut to) = (paper.clone(), Automerge::new());
    let (anchor_bytes, _) =
        anchor::automerge_sync(&mut from, &mut to, &mut State::new(), &mut State::new());
    let anchor_time = started.elapsed();
    assert_eq!(to.get_heads(), paper.get_heads());

    // ferry over QUIC: a holds the document, b is empty and dials in.
    let (_dir, a, b) = stores();
    let doc = a.create(DocKind::Automerge).unwrap();
    a.update(doc, Origin::Local, |am| am.load_incremental(&saved))
        .unwrap();
    let started = Instant::now();
    let (node_a, node_b) = connect(&a, &b).await;
    let heads = paper.get_heads();
    while b.read(doc, |d| d.get_heads()).ok() != Some(heads.clone()) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let ferry_time = started.elapsed();
    let stats = node_a.connection_stats(b.peer_id()).unwrap();
    let ferry_bytes = stats.udp_tx.bytes + stats.udp_rx.bytes;
    println!(
        "clone the paper document ({} changes, save() {} B) to an empty replica",
        paper.get_changes(&[]).len(),
        saved.len()
    );
    println!(
        "  ferry over QUIC (connect, reconcile, snapshot, durable on b)   {:>8.1} ms   {:>9} B on the wire (UDP, both ways)",
        ms(ferry_time),
        ferry_bytes
    );
    println!(
        "  anchor: automerge's sync loop in memory                        {:>8.1} ms   {:>9} B of sync messages",
        ms(anchor_time),
        anchor_bytes
    );
    println!(
        "  ferry / anchor: time {:.3}, bytes {:.3}",
        ferry_time.as_secs_f64() / anchor_time.as_secs_f64(),
        ferry_bytes as f64 / anchor_bytes as f64
    );
    node_a.shutdown().await;
    node_b.shutdown().await;
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("live bench: run with `cargo bench -p ferry-net --bench live`");
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        live().await;
        clone_paper().await;
    });
}
