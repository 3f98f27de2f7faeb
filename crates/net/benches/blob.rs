//! A large blob between two nodes on loopback, against a raw quinn stream of the same bytes
//! in the same run:
//!
//! - **throughput**: the node's fetch (verified group by group, written and fsynced on the
//!   taker) against one raw quinn stream carrying the blob's file, read and dropped;
//! - **resume**: a fetch cut at half by closing the connection, then fetched again: the bytes
//!   the taker received over both connections, against the blob's length;
//! - **memory**: the process's peak RSS growth during each fetch, for the full blob and a
//!   quarter of it, so growth with the blob's size shows.
//!
//! `cargo bench -p ferry-net --bench blob` (`FERRY_BLOB_MB`, default 1024).

#![allow(clippy::unwrap_used)]

#[path = "support/memory.rs"]
mod memory;
#[path = "support/peers.rs"]
mod peers;

use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_net::{NetConfig, NetEvent, Node};
use ferry_store::{BlobHash, BlobPolicy, DocKind, SpaceId, Store};
use memory::{reset_peak, rss_mb};
use peers::{loopback, trust};

fn net() -> NetConfig {
    NetConfig {
        listen: loopback(),
        ..NetConfig::default()
    }
}

/// Where stores live: under `target/`, on the build disk, so every fsync is real.
fn base() -> tempfile::TempDir {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/bench-blob");
    std::fs::create_dir_all(dir).unwrap();
    tempfile::tempdir_in(dir).unwrap()
}

/// `len` bytes that do not compress, generated as they are read.
struct Noise {
    left: u64,
    xof: blake3::OutputReader,
}

impl Noise {
    fn new(len: u64, seed: u64) -> Self {
        let xof = blake3::Hasher::new()
            .update(&seed.to_le_bytes())
            .finalize_xof();
        Self { left: len, xof }
    }
}

impl Read for Noise {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.left as usize);
        self.xof.fill(&mut buf[..n]);
        self.left -= n as u64;
        Ok(n)
    }
}

/// A blob of `len` bytes on `holder`, and a document in the default space referring to it.
fn photo_on(holder: &Store, len: u64, seed: u64) -> BlobHash {
    let (hash, _) = holder.add_blob_from(Noise::new(len, seed)).unwrap();
    let doc = holder.create(DocKind::Automerge).unwrap();
    holder
        .change(doc, |tx| {
            automerge::transaction::Transactable::put(
                tx,
                automerge::ROOT,
                "photo",
                hash.reference(),
            )
        })
        .unwrap();
    hash
}

/// One raw quinn stream carrying the file at `path`, read in 256 KiB pieces and dropped on
/// the other side: the time it takes.
async fn raw_quinn(path: std::path::PathBuf) -> Duration {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert_der = cert.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let server_config = quinn::ServerConfig::with_single_cert(vec![cert_der.clone()], key).unwrap();
    let server = quinn::Endpoint::server(server_config, loopback()).unwrap();
    let addr = server.local_addr().unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert_der).unwrap();
    let mut client = quinn::Endpoint::client(loopback()).unwrap();
    client.set_default_client_config(
        quinn::ClientConfig::with_root_certificates(Arc::new(roots)).unwrap(),
    );
    let sender = tokio::spawn(async move {
        let conn = server.accept().await.unwrap().await.unwrap();
        let mut send = conn.open_uni().await.unwrap();
        let mut file = std::fs::File::open(path).unwrap();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = file.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            send.write_all(&buf[..n]).await.unwrap();
        }
        send.finish().unwrap();
        conn.closed().await;
    });
    let started = Instant::now();
    let conn = client.connect(addr, "localhost").unwrap().await.unwrap();
    let mut recv = conn.accept_uni().await.unwrap();
    let mut buf = vec![0u8; 256 * 1024];
    while recv.read(&mut buf).await.unwrap().is_some() {}
    let took = started.elapsed();
    conn.close(0u32.into(), b"done");
    let _ = sender.await;
    took
}

/// A holder serving blobs and a taker that fetches on demand, connected.
struct Pair {
    holder: Store,
    taker: Store,
    node_h: Node,
    node_t: Arc<Node>,
}

async fn pair(dir: &std::path::Path) -> Pair {
    let holder = Store::open(dir.join("holder")).unwrap();
    let taker = Store::open(dir.join("taker")).unwrap();
    taker
        .set_blob_policy(SpaceId::DEFAULT, BlobPolicy::OnDemand)
        .unwrap();
    let node_h = Node::start(holder.clone(), net()).await.unwrap();
    trust(&holder, &taker, None);
    trust(&taker, &holder, Some(node_h.local_addr()));
    let node_t = Arc::new(Node::start(taker.clone(), net()).await.unwrap());
    Pair {
        holder,
        taker,
        node_h,
        node_t,
    }
}

async fn connected(node: &Node, peer: ferry_store::PeerId) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while node.connection_stats(peer).is_none() {
        assert!(Instant::now() < deadline, "no connection");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Fetches `hash` whole: the time and the peak RSS growth.
async fn fetch(pair: &Pair, hash: BlobHash) -> (Duration, f64) {
    connected(&pair.node_t, pair.holder.peer_id()).await;
    reset_peak();
    let before = rss_mb().1;
    let started = Instant::now();
    pair.node_t.fetch_blob(hash).await.unwrap();
    (started.elapsed(), rss_mb().1 - before)
}

fn main() {
    let mb: u64 = std::env::var("FERRY_BLOB_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let len = mb << 20;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = base();
    runtime.block_on(async {
        let pair = pair(dir.path()).await;
        let quarter = photo_on(&pair.holder, len / 4, 1);
        let whole = photo_on(&pair.holder, len, 2);
        let raw = raw_quinn(pair.holder.blob_location(whole).unwrap()).await;
        let raw_mbs = mb as f64 / raw.as_secs_f64();
        println!(
            "raw quinn stream, {mb} MB: {:.2} s, {raw_mbs:.0} MB/s",
            raw.as_secs_f64()
        );

        let (took_q, grew_q) = fetch(&pair, quarter).await;
        println!(
            "ferry fetch, {} MB: {:.2} s, {:.0} MB/s; peak RSS grew {grew_q:.1} MB",
            mb / 4,
            took_q.as_secs_f64(),
            (mb / 4) as f64 / took_q.as_secs_f64()
        );
        let (took, grew) = fetch(&pair, whole).await;
        let mbs = mb as f64 / took.as_secs_f64();
        println!(
            "ferry fetch, {mb} MB: {:.2} s, {mbs:.0} MB/s = {:.2}x raw quinn (target >= 0.5); \
             peak RSS grew {grew:.1} MB (a quarter of the blob: {grew_q:.1} MB)",
            took.as_secs_f64(),
            mbs / raw_mbs
        );

        // Cut at half, then fetched again: bytes received over both connections.
        let resumed = photo_on(&pair.holder, len, 3);
        let peer = pair.holder.peer_id();
        connected(&pair.node_t, peer).await;
        let mut events = pair.node_t.subscribe();
        let first_before = pair.node_t.connection_stats(peer).unwrap().udp_rx.bytes;
        let fetching = {
            let node_t = pair.node_t.clone();
            tokio::spawn(async move { node_t.fetch_blob(resumed).await })
        };
        let mut first = 0;
        while let Ok(event) = events.recv().await {
            if let NetEvent::BlobProgress { received, .. } = event
                && received >= len / 2
            {
                first = pair.node_t.connection_stats(peer).unwrap().udp_rx.bytes - first_before;
                pair.node_t.disconnect(peer);
                break;
            }
        }
        assert!(fetching.await.unwrap().is_err(), "the cut fetch completed");
        let (_, kept) = pair.taker.partial_blob(resumed).unwrap();
        connected(&pair.node_t, peer).await;
        let second_before = pair.node_t.connection_stats(peer).unwrap().udp_rx.bytes;
        pair.node_t.fetch_blob(resumed).await.unwrap();
        let second = pair.node_t.connection_stats(peer).unwrap().udp_rx.bytes - second_before;
        let total = first + second;
        println!(
            "cut at {:.0} MB (kept {:.0} MB) and resumed: {:.0} + {:.0} MB received = {:.3}x \
             the blob (target <= 1.1)",
            first as f64 / 1048576.0,
            kept as f64 / 1048576.0,
            first as f64 / 1048576.0,
            second as f64 / 1048576.0,
            total as f64 / len as f64
        );
        assert_eq!(
            pair.taker.blob_len(resumed).unwrap(),
            len,
            "the resumed blob is whole"
        );
        pair.node_t.shutdown().await;
        pair.node_h.shutdown().await;
    });
}
