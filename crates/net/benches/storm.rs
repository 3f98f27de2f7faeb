//! A relay under a storm of devices, measured from outside the relay's process.
//!
//! The bench runs the relay in its own process (this binary again, with `FERRY_STORM_ROLE=relay`)
//! over a real on-disk store, and the devices here, each with its own identity, store and QUIC
//! endpoint. So the CPU and memory figures are the relay's alone, read from `/proc`.
//!
//! Scenarios (each prints one line of figures):
//! - `own`: `FERRY_STORM_DEVICES` devices (default 1,000), each in its own space with
//!   `FERRY_STORM_DOCS` small Automerge documents (default 10), all going online at once: the
//!   time until every document is durable on the relay.
//! - `shared`: `FERRY_STORM_SPACES` spaces (default 100) of 10 devices with 10 documents each: the
//!   time until every device holds its space's 100 documents; then live changes inside a space
//!   (one device writes, the other 9 receive), p50 and p99, while devices of other spaces write.
//! - `idle`: after `own`, the devices stay connected and do nothing for 10 s: the relay's CPU
//!   and memory meanwhile.
//! - `crowd`: `FERRY_STORM_CROWD` devices (default 10,000) connect and stay idle. Here devices
//!   share resources so that 10,000 fit in one process: each has its own identity (key pair and
//!   TLS certificate) and its own QUIC connection, but they share one endpoint and one store
//!   (for the peer table), and each only opens its session (hello, an empty listing) and then
//!   reads. The relay serves each as a full peer with its own (empty) space.
//!
//! Run: `cargo bench -p ferry-net --bench storm` (all of them), or name scenarios:
//! `cargo bench -p ferry-net --bench storm -- own idle`.
//!
//! Each line ends with the UDP datagrams the machine dropped meanwhile for a full receive
//! buffer: with drops, the time includes QUIC's loss recovery. To see where time goes,
//! `FERRY_STORM_TRACE=1` prints `shared`'s progress every 50 ms (and the connection state of the
//! last devices waiting), and `FERRY_STORM_LOG=ferry_net=debug` logs connections and sessions.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use automerge::ROOT;
use automerge::transaction::Transactable;
use ferry_net::{BackoffConfig, NetConfig, Node, tls};
use ferry_proto::{Message, PROTOCOL_VERSION, Prefix, Range};
use ferry_store::{Access, DocKind, Identity, PeerId, PeerInfo, SpaceId, Store, StoreEvent};

fn main() {
    // `FERRY_STORM_LOG=ferry_net=debug`, say: the devices log to stderr, the relay to a file
    // under target/bench-storm (its path is printed).
    if let Ok(filter) = std::env::var("FERRY_STORM_LOG") {
        let logs = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_ansi(false);
        if std::env::var("FERRY_STORM_ROLE").as_deref() == Ok("relay") {
            let path = format!("{BASE}/relay-{}.log", std::process::id());
            eprintln!("relay log: {path}");
            let file = std::fs::File::create(path).unwrap();
            logs.with_writer(std::sync::Mutex::new(file)).init();
        } else {
            logs.with_writer(std::io::stderr).init();
        }
    }
    if std::env::var("FERRY_STORM_ROLE").as_deref() == Ok("relay") {
        relay();
        return;
    }
    let wanted: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let runs = |name: &str| wanted.is_empty() || wanted.iter().any(|w| w == name);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        if runs("own") || runs("idle") {
            own(runs("idle")).await;
        }
        if runs("shared") {
            shared().await;
        }
        if runs("crowd") {
            crowd().await;
        }
    });
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Where stores live: under `target/`, on the build disk, so every flush is a real fsync.
fn base() -> tempfile::TempDir {
    std::fs::create_dir_all(BASE).unwrap();
    tempfile::tempdir_in(BASE).unwrap()
}

const BASE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/bench-storm");

/// Keep-alive interval, `FERRY_STORM_KEEPALIVE` seconds (default ferry's, 15), for the relay
/// and the devices.
fn keep_alive() -> Duration {
    let default = NetConfig::default().keep_alive.as_secs() as usize;
    Duration::from_secs(env("FERRY_STORM_KEEPALIVE", default) as u64)
}

/// The idle timeout that goes with [`keep_alive`]: three of them, as ferry's default.
fn idle_timeout() -> Duration {
    keep_alive() * 3
}

/// Nodes ask for `FERRY_STORM_UDP_BUFFER` bytes of socket buffer (default 4 MiB, ferry's).
fn net() -> NetConfig {
    NetConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        keep_alive: keep_alive(),
        idle_timeout: idle_timeout(),
        backoff: BackoffConfig {
            min: Duration::from_millis(200),
            max: Duration::from_secs(5),
        },
        udp_buffer: env("FERRY_STORM_UDP_BUFFER", 4 << 20),
        ..NetConfig::default()
    }
}

// ---- the relay's process ---------------------------------------------------------------------

/// The relay: serves its store, and takes commands on stdin, one per line:
/// `grant PEER SPACE` (know the peer, let it read and write the space), `sync` (answers `ok`
/// once every grant is in), `count` (answers `count N`: the documents durable here), `quit`.
fn relay() {
    let dir = std::env::var("FERRY_STORM_DIR").unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = Store::open(&dir).unwrap();
        let node = Node::start(store.clone(), net()).await.unwrap();
        let mut out = std::io::stdout();
        writeln!(out, "ready {} {}", store.peer_id(), node.local_addr()).unwrap();
        // Commands are read as they come, on a thread of their own.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        while let Some(line) = rx.recv().await {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["grant", peer, space] => {
                    let (peer, space): (PeerId, SpaceId) =
                        (peer.parse().unwrap(), space.parse().unwrap());
                    let store = store.clone();
                    tokio::task::spawn_blocking(move || {
                        store.put_peer(&PeerInfo::new(peer, "device")).unwrap();
                        store.grant(peer, space, Access::ReadWrite).unwrap();
                    })
                    .await
                    .unwrap();
                }
                ["sync"] => writeln!(out, "ok").unwrap(),
                ["count"] => {
                    let store = store.clone();
                    let n = tokio::task::spawn_blocking(move || {
                        store.wait_durable().unwrap();
                        store.list().unwrap().len()
                    })
                    .await
                    .unwrap();
                    writeln!(out, "count {n}").unwrap();
                }
                ["quit"] => break,
                other => panic!("unknown command {other:?}"),
            }
        }
        node.shutdown().await;
    });
}

/// The relay's process, seen from the generator.
struct Relay {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    id: PeerId,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Relay {
    fn start() -> Self {
        let dir = base();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env("FERRY_STORM_ROLE", "relay")
            .env("FERRY_STORM_DIR", dir.path().join("relay"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        eprintln!("relay process {}", child.id());
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let words: Vec<&str> = line.split_whitespace().collect();
        let ["ready", id, addr] = words.as_slice() else {
            panic!("the relay said {line:?}");
        };
        Self {
            id: id.parse().unwrap(),
            addr: addr.parse().unwrap(),
            child,
            stdin,
            stdout,
            _dir: dir,
        }
    }

    fn say(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap();
    }

    fn ask(&mut self, line: &str) -> String {
        self.say(line);
        let mut answer = String::new();
        self.stdout.read_line(&mut answer).unwrap();
        answer.trim().to_owned()
    }

    fn durable_docs(&mut self) -> usize {
        let answer = self.ask("count");
        answer.strip_prefix("count ").unwrap().parse().unwrap()
    }

    /// CPU seconds the relay has used (user and system).
    fn cpu_seconds(&self) -> f64 {
        cpu_seconds(&self.child.id().to_string())
    }

    /// The relay's resident memory now and at its peak, in MB.
    fn rss_mb(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kb = |key: &str| -> f64 {
            let line = status.lines().find(|l| l.starts_with(key)).unwrap();
            line.split_whitespace()
                .nth(1)
                .unwrap()
                .parse::<f64>()
                .unwrap()
        };
        (kb("VmRSS:") / 1024.0, kb("VmHWM:") / 1024.0)
    }

    fn stop(mut self) {
        self.say("quit");
        let _ = self.child.wait();
    }
}

/// CPU seconds process `pid` (or `self`) has used, user and system.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses): utime is the 12th, stime the
    // 13th, in clock ticks (100 per second on Linux).
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// Lets 2 s settle, then returns the relay's CPU seconds over 10 s and its RSS (MB) after.
async fn idle_for_10_s(relay: &Relay) -> (f64, f64) {
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = relay.cpu_seconds();
    tokio::time::sleep(Duration::from_secs(10)).await;
    (relay.cpu_seconds() - before, relay.rss_mb().0)
}

/// Time and CPU from the moment the devices go online.
struct Clock {
    started: Instant,
    relay_cpu: f64,
    own_cpu: f64,
    drops: u64,
}

/// What a scenario took: time, the relay's and the devices' CPU seconds, the relay's peak RSS.
struct Taken {
    took: Duration,
    cpu: f64,
    mine: f64,
    peak: f64,
    drops: u64,
}

impl std::fmt::Display for Taken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:>7.2} s  relay CPU {:>6.1} s  relay peak RSS {:>6.0} MB  devices' CPU {:>6.1} s  UDP drops {}",
            self.took.as_secs_f64(),
            self.cpu,
            self.peak,
            self.mine,
            self.drops
        )
    }
}

impl Clock {
    fn start(relay: &Relay) -> Self {
        Self {
            started: Instant::now(),
            relay_cpu: relay.cpu_seconds(),
            own_cpu: cpu_seconds("self"),
            drops: udp_receive_drops(),
        }
    }

    fn read(&self, relay: &Relay) -> Taken {
        Taken {
            took: self.started.elapsed(),
            cpu: relay.cpu_seconds() - self.relay_cpu,
            mine: cpu_seconds("self") - self.own_cpu,
            peak: relay.rss_mb().1,
            drops: udp_receive_drops() - self.drops,
        }
    }
}

/// UDP datagrams this machine dropped because a socket's receive buffer was full
/// (`RcvbufErrors` in /proc/net/snmp): a lossy run's times include QUIC's loss recovery.
fn udp_receive_drops() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "RcvbufErrors")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0)
}

// ---- devices ----------------------------------------------------------------------------------

/// One device: its own store (and so identity) and, once online, its own endpoint.
struct Device {
    store: Store,
    space: SpaceId,
    node: Option<Node>,
}

/// Makes a device with `docs` small documents in `space`, trusting the relay with it, and has
/// the relay grant it the space.
fn device(dir: &std::path::Path, relay: &mut Relay, space: SpaceId, docs: usize) -> Device {
    let store = Store::open(dir).unwrap();
    let mut info = PeerInfo::new(relay.id, "relay");
    info.addresses = vec![relay.addr];
    store.put_peer(&info).unwrap();
    store.grant(relay.id, space, Access::ReadWrite).unwrap();
    let quick = store.deferring();
    for i in 0..docs {
        let doc = quick.create_in(space, DocKind::Automerge).unwrap();
        quick
            .change(doc, |tx| tx.put(ROOT, "note", format!("note {i}")))
            .unwrap();
    }
    quick.wait_durable().unwrap();
    relay.say(&format!("grant {} {space}", store.peer_id()));
    Device {
        store,
        space,
        node: None,
    }
}

async fn online(devices: &mut [Device]) {
    for d in devices {
        d.node = Some(Node::start(d.store.clone(), net()).await.unwrap());
    }
}

/// Takes every device offline, all at once: each shutdown waits up to a second for its
/// connection to drain.
async fn offline(devices: &mut [Device]) {
    let mut shutdowns = tokio::task::JoinSet::new();
    for node in devices.iter_mut().filter_map(|d| d.node.take()) {
        shutdowns.spawn(async move { node.shutdown().await });
    }
    while shutdowns.join_next().await.is_some() {}
}

/// Waits (polling) until `done`, or panics after `limit`; returns the time taken.
async fn until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < limit,
            "{what}: not done after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

// ---- scenarios --------------------------------------------------------------------------------

async fn own(idle: bool) {
    let (n, per) = (
        env("FERRY_STORM_DEVICES", 1000),
        env("FERRY_STORM_DOCS", 10),
    );
    let dir = base();
    let mut relay = Relay::start();
    let mut devices = Vec::with_capacity(n);
    for i in 0..n {
        let space = SpaceId::random();
        devices.push(device(
            &dir.path().join(format!("d{i}")),
            &mut relay,
            space,
            per,
        ));
    }
    assert_eq!(relay.ask("sync"), "ok");
    let clock = Clock::start(&relay);
    online(&mut devices).await;
    let total = n * per;
    let mut last = 0;
    while last < total {
        assert!(
            clock.started.elapsed() < Duration::from_secs(600),
            "{last} of {total} documents on the relay after 600 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        last = relay.durable_docs();
    }
    println!(
        "own     devices {n:>6}  documents {total:>7}  all durable on the relay {}  (targets: 1,000 x 10 in <= 10 s, <= 500 MB)",
        clock.read(&relay)
    );
    if idle {
        // Everyone connected; nothing happens.
        let (cpu, rss) = idle_for_10_s(&relay).await;
        println!(
            "idle    devices {n:>6}  connected and idle for 10 s: relay CPU {cpu:>5.2} s ({:.1} %)  relay RSS {rss:>6.0} MB  (target at 10,000 devices: <= 1 GB, CPU near zero)",
            cpu * 10.0
        );
    }
    offline(&mut devices).await;
    relay.stop();
}

async fn shared() {
    let spaces = env("FERRY_STORM_SPACES", 100);
    let (per_space, per_device) = (10, 10);
    let dir = base();
    let mut relay = Relay::start();
    let mut devices = Vec::with_capacity(spaces * per_space);
    for s in 0..spaces {
        let space = SpaceId::random();
        for i in 0..per_space {
            let dir = dir.path().join(format!("s{s}d{i}"));
            devices.push(device(&dir, &mut relay, space, per_device));
        }
    }
    assert_eq!(relay.ask("sync"), "ok");
    // A device is counted again only when its store reports a change and it is still short,
    // so that watching costs the devices' process little.
    let mut news: Vec<_> = devices.iter().map(|d| d.store.subscribe()).collect();
    let clock = Clock::start(&relay);
    online(&mut devices).await;
    let whole = per_space * per_device;
    let mut short: Vec<usize> = (0..devices.len()).collect();
    let mut first = true;
    let trace = std::env::var_os("FERRY_STORM_TRACE").is_some();
    until(
        "every device holds its space",
        Duration::from_secs(600),
        || {
            let all = std::mem::take(&mut first);
            short.retain(|&i| {
                let d = &devices[i];
                let mut changed = all;
                while let Ok(Some(_)) | Err(ferry_store::RecvError::Lagged { .. }) =
                    news[i].try_recv()
                {
                    changed = true;
                }
                !changed
                    || d.store
                        .docs_in(d.space)
                        .map(|docs| docs.len() < whole)
                        .unwrap_or(true)
            });
            if trace {
                eprintln!(
                    "{:>6.2} s  {} devices short",
                    clock.started.elapsed().as_secs_f64(),
                    short.len()
                );
                if short.len() <= 20 {
                    for d in short.iter().map(|&i| &devices[i]) {
                        eprintln!(
                            "    {} holds {} {:?}",
                            d.store.peer_id(),
                            d.store.docs_in(d.space).map(|v| v.len()).unwrap_or(0),
                            d.node.as_ref().map(|n| n.states())
                        );
                    }
                }
            }
            short.is_empty()
        },
    )
    .await;
    println!(
        "shared  spaces {spaces:>4} x {per_space} devices x {per_device} documents  every device holds its space {}  (target: <= 10 s)",
        clock.read(&relay)
    );

    // Live changes inside one space while the others write too.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let busy = {
        let stop = stop.clone();
        let others: Vec<Store> = devices
            .iter()
            .skip(per_space)
            .map(|d| d.store.clone())
            .collect();
        let spaces: Vec<SpaceId> = devices.iter().skip(per_space).map(|d| d.space).collect();
        std::thread::spawn(move || {
            let mut i = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && !others.is_empty() {
                let k = i % others.len();
                let doc = others[k].docs_in(spaces[k]).unwrap()[i % whole];
                others[k]
                    .change(doc, |tx| tx.put(ROOT, "busy", i as i64))
                    .unwrap();
                i += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            i
        })
    };
    let group: Vec<&Device> = devices.iter().take(per_space).collect();
    let docs = group[0].store.docs_in(group[0].space).unwrap();
    let mut latencies = Vec::new();
    for sample in 0..200usize {
        let writer = group[sample % per_space];
        let doc = docs[sample % docs.len()];
        let mut events: Vec<_> = group
            .iter()
            .filter(|d| d.store.peer_id() != writer.store.peer_id())
            .map(|d| d.store.subscribe_doc(doc))
            .collect();
        let t = Instant::now();
        writer
            .store
            .change(doc, |tx| tx.put(ROOT, "live", sample as i64))
            .unwrap();
        let version = writer.store.info(doc).unwrap().version;
        for e in &mut events {
            loop {
                let event = tokio::time::timeout(Duration::from_secs(10), e.recv())
                    .await
                    .expect("a live change within 10 s")
                    .unwrap();
                if matches!(&event, StoreEvent::Changed { version: v, .. } if *v == version) {
                    break;
                }
            }
        }
        latencies.push(t.elapsed());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let busy_writes = busy.join().unwrap();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
    println!(
        "live    a change reaches the other {} devices of its space: p50 {:.1} ms  p99 {:.1} ms  ({} writes in other spaces meanwhile; target p99 <= 50 ms)",
        per_space - 1,
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        busy_writes
    );
    offline(&mut devices).await;
    relay.stop();
}

async fn crowd() {
    let n = env("FERRY_STORM_CROWD", 10_000);
    let dir = base();
    let mut relay = Relay::start();
    // One store for every device's peer table: each trusts the relay.
    let shared = Store::open(dir.path().join("devices")).unwrap();
    let mut info = PeerInfo::new(relay.id, "relay");
    info.addresses = vec![relay.addr];
    shared.put_peer(&info).unwrap();
    let identities: Vec<Identity> = (0..n).map(|_| Identity::generate().unwrap()).collect();
    for id in &identities {
        relay.say(&format!("grant {} {}", id.peer_id(), SpaceId::random()));
    }
    assert_eq!(relay.ask("sync"), "ok");
    let (rss_before, _) = relay.rss_mb();

    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(keep_alive()));
    transport.max_idle_timeout(Some(idle_timeout().try_into().unwrap()));
    let transport = std::sync::Arc::new(transport);
    let opening = [
        Message::Hello {
            version: PROTOCOL_VERSION,
            capabilities: 0,
        }
        .to_frame(),
        Message::Reconcile {
            round: 0,
            ranges: vec![Range::Items {
                prefix: Prefix::ROOT,
                items: Vec::new(),
            }],
        }
        .to_frame(),
    ]
    .concat();
    let started = Instant::now();
    let cpu_before = relay.cpu_seconds();
    let mut tasks = tokio::task::JoinSet::new();
    let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(64));
    for id in &identities {
        let mut config = tls::client_config_as(&shared, id, relay.id).unwrap();
        config.transport_config(transport.clone());
        let (endpoint, opening, addr) = (endpoint.clone(), opening.clone(), relay.addr);
        let permit = limit.clone().acquire_owned().await.unwrap();
        tasks.spawn(async move {
            let conn = endpoint
                .connect_with(config, addr, tls::SERVER_NAME)
                .unwrap()
                .await
                .unwrap();
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            send.write_all(&opening).await.unwrap();
            // The relay's hello and reply arrive; then nothing, until the bench ends.
            let mut buf = [0u8; 4096];
            let mut got = 0;
            while got < 8 {
                match recv.read(&mut buf).await {
                    Ok(Some(k)) => got += k,
                    _ => break,
                }
            }
            drop(permit);
            std::future::pending::<()>().await;
            drop((conn, send, recv));
        });
    }
    // Every device has its session open once the last permit is back.
    let _all = limit.acquire_many(64).await.unwrap();
    let connecting = started.elapsed();
    let connect_cpu = relay.cpu_seconds() - cpu_before;
    let (cpu, rss) = idle_for_10_s(&relay).await;
    let peak = relay.rss_mb().1;
    println!(
        "crowd   devices {n:>6}  connected in {:.1} s (relay CPU {connect_cpu:.1} s)  then idle for 10 s: relay CPU {cpu:>5.2} s ({:.1} %)  relay RSS {rss:>6.0} MB (peak {peak:.0}, {rss_before:.0} before they connected)  (target: <= 1 GB, CPU near zero)",
        connecting.as_secs_f64(),
        cpu * 10.0
    );
    tasks.abort_all();
    relay.stop();
}
