//! A large document over QUIC on loopback, measured next to its anchor in one run:
//!
//! - **clone**: `sync_once` of a document of `FERRY_LARGE_MB` one-megabyte photos (default
//!   100, as Automerge bytes values) to an empty replica, against `save()` + `load()` of the
//!   same document in memory;
//! - **live**: while another empty replica takes the document in over a live connection, the
//!   holder changes a small document both hold every 10 ms; the time from its durable commit
//!   until the other replica has it durable (p50, p99).
//!
//! - **apart**: the clone again, first of all, with the holder in a process of its own (this
//!   binary again), so each side's peak RSS is its own; the holder measures the anchor there;
//! - **bomb**: a document chunk of about 2 MB whose one column inflates to 2 GiB, checked as a
//!   receiver checks a peer's snapshot before loading it (`CheckedSnapshot::check_within` with
//!   the store's default limits): refused, and the peak RSS before and after.
//!
//! Peak RSS is the whole process's (both replicas live in it), read from `/proc/self/status`
//! after resetting the peak (`/proc/self/clear_refs`) before each scenario.
//!
//! Run: `cargo bench -p ferry-net --bench large` (`FERRY_LARGE_MB=20` for a quicker run).

#![allow(clippy::unwrap_used)]

#[path = "support/memory.rs"]
mod memory;
#[path = "support/peers.rs"]
mod peers;

use memory::{reset_peak, rss_mb};
use peers::{loopback, trust};

use std::time::{Duration, Instant};

use automerge::transaction::Transactable;
use automerge::{Automerge, ROOT, ScalarValue};
use ferry_net::{NetConfig, Node};
use ferry_store::{DocKind, SpaceId, Store, StoreEvent};

fn net() -> NetConfig {
    NetConfig {
        listen: loopback(),
        ..NetConfig::default()
    }
}

/// Where stores live: under `target/`, on the build disk, so every flush is a real fsync.
fn base() -> tempfile::TempDir {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/bench-large");
    std::fs::create_dir_all(dir).unwrap();
    tempfile::tempdir_in(dir).unwrap()
}

/// A document of `mb` one-megabyte photos in `store`.
fn survey_of(store: &Store, mb: u64) -> ferry_store::DocId {
    let survey = store.create(DocKind::Automerge).unwrap();
    for i in 0..mb {
        let mut photo = vec![0u8; 1 << 20];
        blake3::Hasher::new()
            .update(&i.to_le_bytes())
            .finalize_xof()
            .fill(&mut photo);
        store
            .change(survey, |tx| {
                tx.put(ROOT, format!("photo{i}"), ScalarValue::Bytes(photo))
            })
            .unwrap();
    }
    survey
}

fn main() {
    let mb: u64 = std::env::var("FERRY_LARGE_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if std::env::var("FERRY_LARGE_ROLE").as_deref() == Ok("holder") {
        runtime.block_on(holder_process(mb));
        return;
    }
    let dir = base();
    // First, while this process holds nothing else: each side's own peak RSS.
    runtime.block_on(clone_across_processes(&dir));
    let holder = Store::open(dir.path().join("holder")).unwrap();
    let note = holder.create(DocKind::Automerge).unwrap();
    holder.change(note, |tx| tx.put(ROOT, "n", 0)).unwrap();
    let survey = survey_of(&holder, mb);

    // The anchor: save and load the same document in memory.
    let started = Instant::now();
    let saved = holder.read(survey, Automerge::save).unwrap();
    let loaded = Automerge::load(&saved).unwrap();
    let anchor = started.elapsed();
    let size = saved.len();
    drop((saved, loaded));
    println!(
        "anchor  save() + load() of {:.1} MB: {:.2} s",
        size as f64 / 1e6,
        anchor.as_secs_f64()
    );

    bomb(&holder);

    runtime.block_on(async {
        let node = Node::start(holder.clone(), net()).await.unwrap();

        // Clone with sync_once.
        let empty = Store::open(dir.path().join("clone")).unwrap();
        trust(&holder, &empty, None);
        trust(&empty, &holder, Some(node.local_addr()));
        let taker = Node::start_without_dialing(empty.clone(), net())
            .await
            .unwrap();
        reset_peak();
        let (rss_before, _) = rss_mb();
        let started = Instant::now();
        let report = taker
            .sync_once(holder.peer_id(), Duration::from_millis(200))
            .await
            .unwrap();
        let took = started.elapsed();
        assert!(report.received.contains(&survey));
        assert_eq!(
            empty.info(survey).unwrap().digest,
            holder.info(survey).unwrap().digest
        );
        let (_, peak) = rss_mb();
        println!(
            "clone   {:.1} MB document with sync_once: {:.2} s = {:.2} x the anchor  peak RSS {:.0} MB ({:.0} before; both sides in this process)  (targets: <= 2 x; per side <= 3 x {:.0} + 100 MB)",
            size as f64 / 1e6,
            took.as_secs_f64(),
            took.as_secs_f64() / anchor.as_secs_f64(),
            peak,
            rss_before,
            size as f64 / 1e6,
        );
        taker.shutdown().await;
        drop(empty);

        // Live changes to a small document while the large one transfers.
        let other = Store::open(dir.path().join("live")).unwrap();
        trust(&holder, &other, None);
        trust(&other, &holder, Some(node.local_addr()));
        // The small document first, alone.
        other
            .adopt_snapshot(
                (note, SpaceId::DEFAULT),
                ferry_store::Origin::Local,
                ferry_store::CheckedSnapshot::check(holder.read(note, Automerge::save).unwrap())
                    .unwrap(),
            )
            .unwrap();
        let mut events = other.subscribe();
        let live = Node::start(other.clone(), net()).await.unwrap();
        let mut latencies = Vec::new();
        let started = Instant::now();
        let mut i = 0i64;
        while other.info(survey).is_err() && started.elapsed() < Duration::from_secs(600) {
            i += 1;
            let written = Instant::now();
            holder.change(note, |tx| tx.put(ROOT, "n", i)).unwrap();
            let target = holder.info(note).unwrap().version;
            loop {
                match tokio::time::timeout(Duration::from_secs(30), events.recv()).await {
                    Ok(Ok(StoreEvent::Changed { doc, version, .. }))
                        if doc == note && version == target =>
                    {
                        break;
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(ferry_store::RecvError::Lagged { .. })) => {}
                    Ok(Err(e)) => panic!("{e}"),
                    Err(_) => panic!("a live change took over 30 s"),
                }
            }
            latencies.push(written.elapsed());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let transfer = started.elapsed();
        latencies.sort();
        let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
        println!(
            "live    while the {:.1} MB document transfers ({:.2} s): {} changes, p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms  (target: p99 <= 50 ms)",
            size as f64 / 1e6,
            transfer.as_secs_f64(),
            latencies.len(),
            at(0.5).as_secs_f64() * 1e3,
            at(0.99).as_secs_f64() * 1e3,
            latencies.last().unwrap().as_secs_f64() * 1e3,
        );
        live.shutdown().await;
        node.shutdown().await;
    });
}

/// A document chunk whose raw-values column, deflated to about 2 MB, inflates to 2 GiB.
fn bomb(store: &Store) {
    let mut deflated = Vec::new();
    {
        let mut encoder =
            flate2::write::DeflateEncoder::new(&mut deflated, flate2::Compression::best());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..2048 {
            std::io::Write::write_all(&mut encoder, &zeros).unwrap();
        }
        encoder.finish().unwrap();
    }
    // Actors, heads, change columns: none; one operation column, raw values (5 << 4 | 7), with
    // its DEFLATE bit.
    let mut data = vec![0, 0, 0, 1, (5 << 4) | 7 | 8];
    leb128::write::unsigned(&mut data, deflated.len() as u64).unwrap();
    data.extend_from_slice(&deflated);
    drop(deflated);
    let mut chunk = vec![0x85, 0x6f, 0x4a, 0x83, 0, 0, 0, 0, 0];
    leb128::write::unsigned(&mut chunk, data.len() as u64).unwrap();
    chunk.extend_from_slice(&data);
    drop(data);
    let size = chunk.len();
    reset_peak();
    let (before, _) = rss_mb();
    let started = Instant::now();
    let checked = ferry_store::CheckedSnapshot::check_within(chunk, store.limits());
    let took = started.elapsed();
    let (_, peak) = rss_mb();
    assert!(
        matches!(checked, Err(ferry_store::Unloadable::Exceeds(_))),
        "the bomb was not refused"
    );
    println!(
        "bomb    {:.1} MB claiming 2,048 MB: refused in {:.2} s (limit {} MB); RSS {:.0} MB before, peak {:.0} MB  (target: refused, memory flat)",
        size as f64 / 1e6,
        took.as_secs_f64(),
        store.limits().bytes >> 20,
        before,
        peak,
    );
}

/// The holder in a process of its own: it makes the document, serves it, and answers lines on
/// stdin: `trust PEER` (lets it read and write the default space), `reset` (its peak RSS),
/// `peak` (its peak RSS in MB), `rss` (its RSS now, in MB).
async fn holder_process(mb: u64) {
    let dir = std::env::var("FERRY_LARGE_DIR").unwrap();
    let store = Store::open(&dir).unwrap();
    let survey = survey_of(&store, mb);
    let started = Instant::now();
    let saved = store.read(survey, Automerge::save).unwrap();
    drop(Automerge::load(&saved).unwrap());
    let anchor = started.elapsed().as_secs_f64();
    drop(saved);
    let node = Node::start(store.clone(), net()).await.unwrap();
    println!(
        "ready {} {} {survey} {anchor}",
        store.peer_id(),
        node.local_addr()
    );
    let answering = store.clone();
    // Lines are read on a thread of their own; the node serves meanwhile.
    tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["trust", peer] => {
                    let peer: ferry_store::PeerId = peer.parse().unwrap();
                    let info = ferry_store::PeerInfo::new(peer, "taker");
                    answering.put_peer(&info).unwrap();
                    answering
                        .grant(peer, SpaceId::DEFAULT, ferry_store::Access::ReadWrite)
                        .unwrap();
                    println!("ok");
                }
                ["reset"] => {
                    reset_peak();
                    println!("ok");
                }
                ["peak"] => println!("peak {:.0}", rss_mb().1),
                ["rss"] => println!("rss {:.0}", rss_mb().0),
                _ => println!("?"),
            }
        }
    })
    .await
    .unwrap();
    node.shutdown().await;
}

/// The clone again, with the holder in a process of its own, so each side's peak RSS is its
/// own.
async fn clone_across_processes(dir: &tempfile::TempDir) {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};

    let mut child = Command::new(std::env::current_exe().unwrap())
        .env("FERRY_LARGE_ROLE", "holder")
        .env("FERRY_LARGE_DIR", dir.path().join("holder-process"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let words: Vec<&str> = line.split_whitespace().collect();
    let ["ready", id, addr, survey, anchor] = words.as_slice() else {
        panic!("the holder said {line:?}");
    };
    let anchor = Duration::from_secs_f64(anchor.parse().unwrap());
    let (holder, addr): (ferry_store::PeerId, std::net::SocketAddr) =
        (id.parse().unwrap(), addr.parse().unwrap());
    let survey: ferry_store::DocId = survey.parse().unwrap();
    let mut ask = |line: &str| {
        writeln!(stdin, "{line}").unwrap();
        let mut answer = String::new();
        stdout.read_line(&mut answer).unwrap();
        answer.trim().to_owned()
    };

    let empty = Store::open(dir.path().join("clone-apart")).unwrap();
    let mut info = ferry_store::PeerInfo::new(holder, "holder");
    info.addresses = vec![addr];
    empty.put_peer(&info).unwrap();
    empty
        .grant(holder, SpaceId::DEFAULT, ferry_store::Access::ReadWrite)
        .unwrap();
    assert_eq!(ask(&format!("trust {}", empty.peer_id())), "ok");
    let taker = Node::start_without_dialing(empty.clone(), net())
        .await
        .unwrap();
    assert_eq!(ask("reset"), "ok");
    let theirs_before: f64 = ask("rss").strip_prefix("rss ").unwrap().parse().unwrap();
    reset_peak();
    let (mine_before, _) = rss_mb();
    let started = Instant::now();
    let report = taker
        .sync_once(holder, Duration::from_millis(200))
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(report.received.contains(&survey));
    let size = empty.stored_form(survey).unwrap().bytes.len();
    let (_, mine) = rss_mb();
    let theirs: f64 = ask("peak").strip_prefix("peak ").unwrap().parse().unwrap();
    println!(
        "apart   {:.1} MB document with sync_once, the holder in a process of its own: {:.2} s = {:.2} x its anchor ({:.2} s there)  peak RSS: holder {theirs:.0} MB ({theirs_before:.0} before: the document built and loaded), taker {mine:.0} MB ({mine_before:.0} before)  (targets: <= 2 x; per side <= 3 x {:.0} + 100 = {:.0} MB)",
        size as f64 / 1e6,
        took.as_secs_f64(),
        took.as_secs_f64() / anchor.as_secs_f64(),
        anchor.as_secs_f64(),
        size as f64 / 1e6,
        3.0 * size as f64 / 1e6 + 100.0,
    );
    taker.shutdown().await;
    drop(stdin);
    let _ = child.kill();
    let _ = child.wait();
}
