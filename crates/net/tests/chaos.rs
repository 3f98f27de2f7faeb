//! Chaos over real QUIC: four replicas, one of them a relay every device trusts, each pair
//! connected through a fault-injecting link (`ferry_faults::Link`) with loss, duplication,
//! reordering and delay. Random writes of every kind land on every replica, while pairs are
//! partitioned (both ways or one way) and healed, and devices restart with their store reopened
//! from disk. Last, one device is cut off from all the others while both sides write. Then
//! every link heals, and the test checks that:
//!
//! - every replica holds every document, with the same digest (they converged);
//! - every write whose call returned is there on every replica: each Automerge key with its
//!   value, each counter at exactly the sum of the increments made, each register at a value
//!   that was written;
//! - nothing panicked, in the test or in any of the nodes' tasks;
//! - all of that within [`RESYNC_BOUND`] of the heal: no session stays stuck.
//!
//! Everything random follows from one seed, printed first: `FERRY_CHAOS_SEED=N` replays its
//! schedule of writes, faults, partitions and restarts (not the threads' timing).
//! `FERRY_CHAOS_STEPS` sets the number of steps (default 120, about 10 s, for CI); the soak is
//! the same test with more, for example `FERRY_CHAOS_STEPS=20000` in a release build (30 to 45
//! minutes; 600 steps took 53 to 79 s), run in a loop over fresh seeds.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use automerge::transaction::Transactable;
use automerge::{ROOT, ReadDoc};
use ferry_faults::{Faults, Link, Way};
use ferry_net::Node;
use ferry_store::{Access, CrdtState, DocId, DocKind, PeerInfo, SpaceId, Store};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How long after the heal every replica must hold everything.
const RESYNC_BOUND: Duration = Duration::from_secs(20);

/// Replicas: 0 is the relay, the others devices.
const REPLICAS: usize = 4;

/// The faults every link has throughout.
fn weather(rng: &mut StdRng) -> Faults {
    Faults {
        loss: rng.random_range(0.0..0.05),
        duplicate: rng.random_range(0.0..0.02),
        reorder: rng.random_range(0.0..0.05),
        reorder_by: Duration::from_millis(rng.random_range(2..15)),
        delay: Duration::from_millis(rng.random_range(0..5)),
        jitter: Duration::from_millis(rng.random_range(0..5)),
        ..Faults::NONE
    }
}

struct Replica {
    dir: PathBuf,
    listen: SocketAddr,
    store: Option<Store>,
    node: Option<Node>,
}

/// What the writes whose calls returned promise.
#[derive(Default)]
struct Promised {
    kinds: BTreeMap<DocId, DocKind>,
    keys: Vec<(DocId, String, i64)>,
    counts: BTreeMap<DocId, i128>,
    written: BTreeMap<DocId, BTreeSet<Vec<u8>>>,
}

fn seed() -> u64 {
    std::env::var("FERRY_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random)
}

async fn start_node(store: &Store, listen: SocketAddr) -> Node {
    // The port is the replica's for the whole run; a restart binds it again.
    let mut last = None;
    for _ in 0..50 {
        match Node::start(store.clone(), support::config(listen)).await {
            Ok(node) => return node,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("restarting a node on {listen}: {last:?}");
}

/// Opens a store whose previous handle is going away (its last tasks may still hold it).
async fn reopen(dir: &PathBuf) -> Store {
    let started = Instant::now();
    loop {
        match Store::open(dir) {
            Ok(store) => return store,
            Err(_) if started.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("reopening {}: {e}", dir.display()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_converge_through_loss_partitions_and_restarts() {
    let seed = seed();
    println!("chaos seed {seed} (replay: FERRY_CHAOS_SEED={seed})");
    let steps: usize = std::env::var("FERRY_CHAOS_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let panics = Arc::new(AtomicUsize::new(0));
    {
        let panics = panics.clone();
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            panics.fetch_add(1, Ordering::SeqCst);
            default(info);
        }));
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let base = tempfile::tempdir().unwrap();

    // Each replica's store and its own port.
    let mut replicas = Vec::new();
    for i in 0..REPLICAS {
        let dir = base.path().join(format!("r{i}"));
        let store = Store::open(&dir).unwrap();
        let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let listen = probe.local_addr().unwrap();
        drop(probe);
        replicas.push(Replica {
            dir,
            listen,
            store: Some(store),
            node: None,
        });
    }
    let ids: Vec<_> = replicas
        .iter()
        .map(|r| r.store.as_ref().unwrap().peer_id())
        .collect();
    // A link for each ordered pair: i reaches j at links[(i, j)].
    let mut links = BTreeMap::new();
    for i in 0..REPLICAS {
        for (j, to) in replicas.iter().enumerate() {
            if i != j {
                let link = Link::start(to.listen, rng.random()).await.unwrap();
                link.set(Way::Both, weather(&mut rng));
                links.insert((i, j), link);
            }
        }
    }
    // Every device trusts the relay and the relay every device; devices 1 and 2 also reach
    // each other directly.
    let pairs: Vec<(usize, usize)> = (1..REPLICAS).map(|d| (0, d)).chain([(1, 2)]).collect();
    for &(a, b) in &pairs {
        for (i, j) in [(a, b), (b, a)] {
            let store = replicas[i].store.as_ref().unwrap();
            let mut info = PeerInfo::new(ids[j], format!("r{j}"));
            info.addresses = vec![links[&(i, j)].addr()];
            store.put_peer(&info).unwrap();
            store
                .grant(ids[j], SpaceId::DEFAULT, Access::ReadWrite)
                .unwrap();
        }
    }
    for r in &mut replicas {
        r.node = Some(start_node(r.store.as_ref().unwrap(), r.listen).await);
    }

    // One document of every kind to begin with, on the relay.
    let mut promised = Promised::default();
    for kind in DocKind::ALL {
        let doc = replicas[0].store.as_ref().unwrap().create(kind).unwrap();
        promised.kinds.insert(doc, kind);
    }
    let mut cut: BTreeSet<(usize, usize)> = BTreeSet::new();
    let mut restarts = 0;
    let mut partitions = 0;
    let started = Instant::now();
    for step in 0..steps {
        match rng.random_range(0..100) {
            // A partition of one pair, both ways or one way.
            0..6 => {
                let &(a, b) = &pairs[rng.random_range(0..pairs.len())];
                let way = [Way::Both, Way::Forth, Way::Back][rng.random_range(0..3)];
                links[&(a, b)].partition(way);
                let back = match way {
                    Way::Forth => Way::Back,
                    Way::Back => Way::Forth,
                    Way::Both => Way::Both,
                };
                links[&(b, a)].partition(back);
                cut.insert((a, b));
                partitions += 1;
            }
            // A heal.
            6..12 => {
                if let Some(&(a, b)) = cut.iter().nth(rng.random_range(0..cut.len().max(1))) {
                    links[&(a, b)].heal();
                    links[&(b, a)].heal();
                    cut.remove(&(a, b));
                }
            }
            // A device restarts, its store reopened from disk.
            12..16 => {
                let r = &mut replicas[rng.random_range(1..REPLICAS)];
                let node = r.node.take().unwrap();
                node.shutdown().await;
                drop(node);
                drop(r.store.take());
                let store = reopen(&r.dir).await;
                r.node = Some(start_node(&store, r.listen).await);
                r.store = Some(store);
                restarts += 1;
            }
            // A write, on any replica.
            _ => {
                let i = rng.random_range(0..REPLICAS);
                let store = replicas[i].store.clone().unwrap();
                write(&store, i, step, &mut rng, &mut promised);
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(10..120))).await;
    }
    println!(
        "{steps} steps in {:.1?}: {} documents, {} keys, {partitions} partitions, {restarts} restarts",
        started.elapsed(),
        promised.kinds.len(),
        promised.keys.len(),
    );

    // Last, device 1 is cut off from everyone, both ways, while writes go on on both sides
    // of the cut; then everything heals (the weather stays).
    for (&(i, j), link) in &links {
        if i == 1 || j == 1 {
            link.partition(Way::Both);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for k in 0..20 {
        let i = if k % 2 == 0 {
            1
        } else {
            rng.random_range(0..REPLICAS)
        };
        let store = replicas[i].store.clone().unwrap();
        write(&store, i, steps + k, &mut rng, &mut promised);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for link in links.values() {
        link.heal();
    }
    let healed = Instant::now();
    let stores: Vec<Store> = replicas.iter().map(|r| r.store.clone().unwrap()).collect();
    loop {
        let missing = missing(&stores, &promised);
        if missing.is_empty() {
            break;
        }
        assert!(
            healed.elapsed() < RESYNC_BOUND,
            "seed {seed}: {:.1?} after the heal, still {} differences, e.g. {:?}",
            healed.elapsed(),
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "converged {:.1?} after the heal; datagrams through the links: {} dropped, {} duplicated",
        healed.elapsed(),
        links
            .values()
            .map(|l| l.counts(Way::Both).dropped)
            .sum::<u64>(),
        links
            .values()
            .map(|l| l.counts(Way::Both).duplicated)
            .sum::<u64>(),
    );
    for r in &mut replicas {
        r.node.take().unwrap().shutdown().await;
    }
    assert_eq!(
        panics.load(Ordering::SeqCst),
        0,
        "seed {seed}: something panicked"
    );
}

/// One random write on replica `i`, recorded in `promised` once its call returned.
fn write(store: &Store, i: usize, step: usize, rng: &mut StdRng, promised: &mut Promised) {
    let held: Vec<(DocId, DocKind)> = promised
        .kinds
        .iter()
        .filter(|(doc, _)| store.info(**doc).is_ok())
        .map(|(d, k)| (*d, *k))
        .collect();
    if held.is_empty() || rng.random_range(0..8) == 0 {
        let kind = DocKind::ALL[rng.random_range(0..DocKind::ALL.len())];
        let doc = store.create(kind).unwrap();
        promised.kinds.insert(doc, kind);
        return;
    }
    let (doc, kind) = held[rng.random_range(0..held.len())];
    match kind {
        DocKind::Automerge => {
            let key = format!("r{i}-{step}");
            let value = rng.random_range(0..1_000_000i64);
            store.change(doc, |tx| tx.put(ROOT, &key, value)).unwrap();
            promised.keys.push((doc, key, value));
        }
        DocKind::GCounter => {
            let n = rng.random_range(1..10u64);
            store.increment(doc, n).unwrap();
            *promised.counts.entry(doc).or_default() += i128::from(n);
        }
        DocKind::PNCounter => {
            let n = rng.random_range(1..10u64);
            if rng.random_bool(0.5) {
                store.increment(doc, n).unwrap();
                *promised.counts.entry(doc).or_default() += i128::from(n);
            } else {
                store.decrement(doc, n).unwrap();
                *promised.counts.entry(doc).or_default() -= i128::from(n);
            }
        }
        DocKind::LwwRegister | DocKind::MvRegister => {
            let value = format!("r{i}-{step}").into_bytes();
            store.set_register(doc, value.clone()).unwrap();
            promised.written.entry(doc).or_default().insert(value);
        }
    }
}

/// What is not yet as promised on every replica, for people.
fn missing(stores: &[Store], promised: &Promised) -> Vec<String> {
    let mut missing = Vec::new();
    for (doc, kind) in &promised.kinds {
        let digests: Vec<_> = stores
            .iter()
            .map(|s| s.info(*doc).map(|i| i.digest))
            .collect();
        if digests.iter().any(Result::is_err) {
            missing.push(format!("{doc} not everywhere"));
            continue;
        }
        let first = digests[0].as_ref().unwrap();
        if digests.iter().any(|d| d.as_ref().unwrap() != first) {
            missing.push(format!("{doc} differs"));
            continue;
        }
        for (r, store) in stores.iter().enumerate() {
            if *kind == DocKind::Automerge {
                continue;
            }
            let state = store.crdt(*doc).unwrap();
            let ok = match &state {
                CrdtState::GCounter(c) => {
                    i128::try_from(c.value()).ok()
                        == Some(promised.counts.get(doc).copied().unwrap_or(0))
                }
                CrdtState::PNCounter(c) => {
                    c.value() == promised.counts.get(doc).copied().unwrap_or(0)
                }
                CrdtState::LwwRegister(reg) => {
                    let written = promised.written.get(doc);
                    match reg.get() {
                        None => written.is_none(),
                        Some(v) => written.is_some_and(|w| w.contains(v)),
                    }
                }
                CrdtState::MvRegister(reg) => {
                    let values = reg.values();
                    match promised.written.get(doc) {
                        None => values.is_empty(),
                        Some(w) => !values.is_empty() && values.iter().all(|v| w.contains(*v)),
                    }
                }
            };
            if !ok {
                missing.push(format!("{doc} on r{r}: {state:?}"));
            }
        }
    }
    for (doc, key, value) in &promised.keys {
        for (r, store) in stores.iter().enumerate() {
            let found = store
                .read(*doc, |d| {
                    d.get(ROOT, key.as_str())
                        .ok()
                        .flatten()
                        .and_then(|(v, _)| match v {
                            automerge::Value::Scalar(s) => match s.as_ref() {
                                automerge::ScalarValue::Int(n) => Some(*n),
                                _ => None,
                            },
                            _ => None,
                        })
                })
                .ok()
                .flatten();
            if found != Some(*value) {
                missing.push(format!("{doc} on r{r}: {key} is {found:?}, not {value}"));
            }
        }
    }
    missing
}
