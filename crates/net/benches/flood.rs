//! A relay under a flood of strangers: 100 replicas it does not trust redial it from another
//! loopback address (127.0.0.2), each every 20 to 100 ms, from a process of their own (this
//! binary again). A trusted device's live changes to the relay are timed before the flood (the
//! anchor) and during it, with the relay's refusal of failing addresses on (ferry's default)
//! and off, in the same run; this process holds the relay and the device, and its CPU and peak
//! RSS are reported for each phase.
//!
//! Run: `cargo bench -p ferry-net --bench flood` (`FERRY_FLOOD_STRANGERS=N` to change the
//! crowd).

#![allow(clippy::unwrap_used)]

#[path = "support/memory.rs"]
mod memory;
#[path = "support/peers.rs"]
mod peers;

use memory::{reset_peak, rss_mb};
use peers::{loopback, trust};

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use automerge::ROOT;
use automerge::transaction::Transactable;
use ferry_net::{ConnectionState, NetConfig, Node, tls};
use ferry_store::{DocKind, Origin, Store, StoreEvent};

fn base() -> tempfile::TempDir {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/bench-flood");
    std::fs::create_dir_all(dir).unwrap();
    tempfile::tempdir_in(dir).unwrap()
}

/// This process's CPU seconds (user + system) and its RSS and peak RSS in MB.
fn usage() -> (f64, f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let cpu =
        (fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()) as f64 / 100.0;
    let (rss, peak) = rss_mb();
    (cpu, rss, peak)
}

/// The strangers' process: `count` replicas redialing `addr` until stdin closes.
async fn strangers(relay: ferry_store::PeerId, addr: SocketAddr, count: usize) {
    let dir = base();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..count {
        let store = Store::open(dir.path().join(format!("s{i}"))).unwrap();
        let mut endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 2], 0))).unwrap();
        endpoint.set_default_client_config(tls::client_config(&store, relay).unwrap());
        tasks.spawn(async move {
            loop {
                if let Ok(connecting) = endpoint.connect(addr, "ferry") {
                    let _ = tokio::time::timeout(Duration::from_secs(2), connecting).await;
                }
                let pause = 20 + rand::random::<u64>() % 80;
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
        });
    }
    println!("ready");
    tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        while std::io::stdin().read_line(&mut line).unwrap_or(0) > 0 {}
    })
    .await
    .unwrap();
    tasks.abort_all();
}

/// `rounds` live changes from `device` to `relay`, 10 ms apart: their latencies, sorted.
async fn live(
    device: &Store,
    relay: &Store,
    doc: ferry_store::DocId,
    rounds: usize,
) -> Vec<Duration> {
    let mut on_relay = relay.subscribe_doc(doc);
    let mut latencies = Vec::with_capacity(rounds);
    for i in 0..rounds {
        let started = Instant::now();
        let store = device.clone();
        let version = tokio::task::spawn_blocking(move || {
            store.change(doc, |tx| tx.put(ROOT, "n", i as i64)).unwrap();
            store.info(doc).unwrap().version
        })
        .await
        .unwrap();
        loop {
            match on_relay.recv().await.unwrap() {
                StoreEvent::Changed {
                    origin: Origin::Remote(_),
                    version: v,
                    ..
                } if v == version => break,
                _ => {}
            }
        }
        latencies.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    latencies.sort();
    latencies
}

fn line(what: &str, latencies: &[Duration], cpu: f64, seconds: f64, rss: (f64, f64)) {
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
    println!(
        "{what:<44} p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>6.2} ms   CPU {:.2} s in {:.1} s   RSS {:.0} MB (peak {:.0})",
        at(0.5),
        at(0.99),
        at(1.0),
        cpu,
        seconds,
        rss.0,
        rss.1,
    );
}

async fn scenario(gate: bool, count: usize) {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let dir = base();
    let relay = Store::open(dir.path().join("relay")).unwrap();
    let device = Store::open(dir.path().join("device")).unwrap();
    let config = NetConfig {
        listen: loopback(),
        max_failed_handshakes: if gate { 20 } else { u32::MAX },
        ..NetConfig::default()
    };
    let node_r = Node::start(relay.clone(), config.clone()).await.unwrap();
    trust(&relay, &device, None);
    trust(&device, &relay, Some(node_r.local_addr()));
    let node_d = Node::start(device.clone(), config).await.unwrap();
    while !matches!(
        node_d.states().get(&relay.peer_id()),
        Some(ConnectionState::Connected { .. })
    ) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let doc = device.create(DocKind::Automerge).unwrap();
    while relay.info(doc).is_err() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rounds = 300;
    reset_peak();
    let (cpu0, _, _) = usage();
    let started = Instant::now();
    let quiet = live(&device, &relay, doc, rounds).await;
    let (cpu1, rss, peak) = usage();
    let name = if gate { "on (default)" } else { "off" };
    line(
        &format!("refusal {name}: no strangers (anchor)"),
        &quiet,
        cpu1 - cpu0,
        started.elapsed().as_secs_f64(),
        (rss, peak),
    );

    let mut child = Command::new(std::env::current_exe().unwrap())
        .env("FERRY_FLOOD_ROLE", "strangers")
        .env("FERRY_FLOOD_RELAY", relay.peer_id().to_string())
        .env("FERRY_FLOOD_ADDR", node_r.local_addr().to_string())
        .env("FERRY_FLOOD_STRANGERS", count.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready.trim(), "ready");
    tokio::time::sleep(Duration::from_secs(1)).await;
    reset_peak();
    let (cpu0, _, _) = usage();
    let started = Instant::now();
    let flooded = live(&device, &relay, doc, rounds).await;
    let (cpu1, rss, peak) = usage();
    line(
        &format!("refusal {name}: {count} strangers redialing"),
        &flooded,
        cpu1 - cpu0,
        started.elapsed().as_secs_f64(),
        (rss, peak),
    );
    println!(
        "{:<44} {} attempts refused before their handshake",
        "",
        node_r.refused_handshakes()
    );
    drop(child.stdin.take());
    let _ = child.kill();
    let _ = child.wait();
    node_d.shutdown().await;
    node_r.shutdown().await;
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let count: usize = std::env::var("FERRY_FLOOD_STRANGERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    if std::env::var("FERRY_FLOOD_ROLE").as_deref() == Ok("strangers") {
        let relay = std::env::var("FERRY_FLOOD_RELAY").unwrap().parse().unwrap();
        let addr = std::env::var("FERRY_FLOOD_ADDR").unwrap().parse().unwrap();
        runtime.block_on(strangers(relay, addr, count));
        return;
    }
    println!(
        "a trusted device's live changes to its relay, 300 a phase, 10 ms apart (durable on both sides)"
    );
    runtime.block_on(scenario(false, count));
    runtime.block_on(scenario(true, count));
}
