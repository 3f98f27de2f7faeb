//! What the network tests share: stores, nodes on loopback, trust, and waiting.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use ferry_net::{BackoffConfig, ConnectionState, NetConfig, Node};
use ferry_store::{Access, DocId, PeerId, PeerInfo, SpaceId, Store};

/// The longest any wait in these tests may take.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub fn config(listen: SocketAddr) -> NetConfig {
    NetConfig {
        listen,
        backoff: BackoffConfig {
            min: Duration::from_millis(50),
            max: Duration::from_millis(500),
        },
        connect_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(5),
        keep_alive: Duration::from_secs(1),
        ..NetConfig::default()
    }
}

pub fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

pub async fn start(store: &Store) -> Node {
    Node::start(store.clone(), config(loopback()))
        .await
        .unwrap()
}

pub fn open(dir: &Path) -> Store {
    Store::open(dir).unwrap()
}

/// `a` lets `b` have `access` to everything, and dials it at `addr` if given.
pub fn trust(a: &Store, b: &Store, addr: Option<SocketAddr>, access: Access) {
    let mut info = a
        .peer(b.peer_id())
        .unwrap()
        .unwrap_or_else(|| PeerInfo::new(b.peer_id(), "peer"));
    info.addresses = addr.into_iter().collect();
    a.put_peer(&info).unwrap();
    a.grant(b.peer_id(), SpaceId::DEFAULT, access).unwrap();
}

/// Whether `node` has a connection to `peer` with its session running.
pub fn connected(node: &Node, peer: PeerId) -> bool {
    matches!(
        node.states().get(&peer),
        Some(ConnectionState::Connected { .. })
    )
}

/// Waits until `done` holds, polling; panics after [`PATIENCE`].
pub async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < PATIENCE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn same(a: &Store, b: &Store, doc: DocId) -> bool {
    match (a.info(doc), b.info(doc)) {
        (Ok(x), Ok(y)) => x.digest == y.digest,
        _ => false,
    }
}

/// CPU seconds this process has used, user and system (for figures the tests print).
pub fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return f64::NAN; // not Linux: the figure is left out
    };
    // After the command name (in parentheses): utime is the 12th field, stime the 13th, in
    // clock ticks (100 per second on Linux).
    let after = stat.rfind(')').map_or("", |at| &stat[at + 1..]);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) as f64 / 100.0
}
