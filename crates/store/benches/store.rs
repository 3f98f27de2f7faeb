//! ferry-store against its anchors, measured side by side in one run:
//!
//! 1. durable commit latency (p50, p99) of a small Automerge change, against a raw sled insert
//!    plus flush of the same bytes;
//! 2. commit throughput with 1, 4 and 16 writers, batched (1 ms and 5 ms) and immediate;
//! 3. load time of the automerge-paper document from the store, against `Automerge::load` of
//!    the same bytes from memory;
//! 4. bytes stored for that document after compaction, against `save()`.
//!
//! Run: `cargo bench -p ferry-store --bench store`. Stores live under cargo's target
//! directory, on the same disk the build uses (not a tmpfs), so flushes reach a real disk.

// A benchmark fails loudly; that is what it wants.
#![allow(clippy::unwrap_used)]

#[path = "../tests/support/trace.rs"]
mod trace;

use std::path::Path;
use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use automerge::transaction::Transactable;
use automerge::{Automerge, ROOT, ReadDoc};
use ferry_store::{DocKind, Durability, Store, StoreConfig};

fn scratch() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Durable commit latency. Store and raw sled take turns in blocks, so that drift in the disk's
/// speed falls on both.
fn commit_latency() {
    const BLOCKS: usize = 10;
    const PER_BLOCK: usize = 200;
    let store_dir = scratch();
    let store = Store::open(store_dir.path()).unwrap();
    let doc = store.create(DocKind::Automerge).unwrap();
    let sled_dir = scratch();
    let raw = sled::open(sled_dir.path()).unwrap();

    // The bytes the raw side writes: one such change, as the store stores it.
    let mut sample = Automerge::new();
    sample.transact(|tx| tx.put(ROOT, "n", 1_i64)).unwrap();
    let change_bytes = sample.get_changes(&[])[0].raw_bytes().to_vec();

    // The same change in memory, with no store: what automerge alone costs per commit.
    let mut memory = Automerge::new();

    let mut ferry = Vec::new();
    let mut sled_times = Vec::new();
    let mut automerge_times = Vec::new();
    let mut n: i64 = 0;
    for block in 0..=BLOCKS {
        for _ in 0..PER_BLOCK {
            n += 1;
            let start = Instant::now();
            store.change(doc, |tx| tx.put(ROOT, "n", n)).unwrap();
            let took = start.elapsed();
            if block > 0 {
                ferry.push(took); // block 0 warms up
            }
        }
        for _ in 0..PER_BLOCK {
            n += 1;
            let start = Instant::now();
            raw.insert(n.to_be_bytes(), change_bytes.as_slice())
                .unwrap();
            raw.flush().unwrap();
            let took = start.elapsed();
            if block > 0 {
                sled_times.push(took);
            }
        }
        for _ in 0..PER_BLOCK {
            n += 1;
            let start = Instant::now();
            let before = memory.get_heads();
            memory.transact(|tx| tx.put(ROOT, "n", n)).unwrap();
            std::hint::black_box(memory.save_after(&before));
            let took = start.elapsed();
            if block > 0 {
                automerge_times.push(took);
            }
        }
    }
    automerge_times.sort();
    let (a50, a99) = (
        percentile(&automerge_times, 0.5),
        percentile(&automerge_times, 0.99),
    );
    ferry.sort();
    sled_times.sort();
    let (f50, f99) = (percentile(&ferry, 0.5), percentile(&ferry, 0.99));
    let (s50, s99) = (percentile(&sled_times, 0.5), percentile(&sled_times, 0.99));
    println!(
        "## Durable commit latency ({} commits each, Durability::Immediate)",
        ferry.len()
    );
    println!(
        "ferry-store commit        p50 {:8.1} µs   p99 {:8.1} µs",
        micros(f50),
        micros(f99)
    );
    println!(
        "sled insert + flush       p50 {:8.1} µs   p99 {:8.1} µs   ({} bytes each)",
        micros(s50),
        micros(s99),
        change_bytes.len()
    );
    println!(
        "ratio (target <= 1.2)     p50 {:8.2}×     p99 {:8.2}×",
        f50.as_secs_f64() / s50.as_secs_f64(),
        f99.as_secs_f64() / s99.as_secs_f64()
    );
    println!(
        "automerge alone (memory)  p50 {:8.1} µs   p99 {:8.1} µs   (transact + save_after)",
        micros(a50),
        micros(a99)
    );
    println!(
        "remainder                 p50 {:8.1} µs   (ferry - sled - automerge, by difference)",
        micros(f50) - micros(s50) - micros(a50)
    );
}

/// Commits per second with `writers` threads, each changing its own document, for `time`.
fn throughput(durability: Durability, writers: usize, time: Duration) -> f64 {
    let dir = scratch();
    let config = StoreConfig {
        durability,
        ..StoreConfig::default()
    };
    let store = Store::open_with(dir.path(), config).unwrap();
    let docs: Vec<_> = (0..writers)
        .map(|_| store.create(DocKind::Automerge).unwrap())
        .collect();
    let stop = AtomicBool::new(false);
    let commits = AtomicU64::new(0);
    let barrier = Barrier::new(writers + 1);
    let elapsed = std::thread::scope(|scope| {
        for doc in &docs {
            let (store, stop, commits, barrier) = (&store, &stop, &commits, &barrier);
            scope.spawn(move || {
                barrier.wait();
                let mut n: i64 = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    store.change(*doc, |tx| tx.put(ROOT, "n", n)).unwrap();
                    commits.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        barrier.wait();
        let start = Instant::now();
        std::thread::sleep(time);
        stop.store(true, Ordering::Relaxed);
        start.elapsed()
    });
    commits.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64()
}

/// Batched-mode throughput.
fn batched_throughput() {
    let time = Duration::from_secs(2);
    let batched = |ms| Durability::Batched {
        interval: Duration::from_millis(ms),
    };
    println!();
    println!(
        "## Commit throughput (commits/s), each writer on its own document, {time:?} per figure"
    );
    println!("writers   immediate   batched 1 ms   batched 5 ms   best batched / immediate");
    for writers in [1, 4, 16] {
        let immediate = throughput(Durability::Immediate, writers, time);
        let one = throughput(batched(1), writers, time);
        let five = throughput(batched(5), writers, time);
        println!(
            "{writers:7}   {immediate:9.0}   {one:12.0}   {five:12.0}   {:23.2}×",
            one.max(five) / immediate
        );
    }
}

/// The paper-trace document: load time and bytes stored.
fn paper_document() {
    const EDITS_PER_COMMIT: usize = 250;
    let trace = trace::load();
    let dir = scratch();
    let (doc, saved) = {
        let store = Store::open(dir.path()).unwrap();
        let doc = trace::build(&store, &trace, EDITS_PER_COMMIT);
        store.compact(doc).unwrap();
        let (saved, text) = store
            .read(doc, |d| {
                let (_, text) = d.get(ROOT, "text").unwrap().unwrap();
                (d.save(), d.text(&text).unwrap())
            })
            .unwrap();
        assert!(
            text == trace.end_content,
            "the stored text is not the trace's end"
        );
        (doc, saved)
    };

    const RUNS: usize = 15;
    let mut from_store = Vec::new();
    let mut from_memory = Vec::new();
    for run in 0..=RUNS {
        // A fresh handle, so the document is not cached; the open itself is not timed.
        let store = Store::open(dir.path()).unwrap();
        let start = Instant::now();
        let heads = store.read(doc, |d| d.get_heads()).unwrap();
        let took = start.elapsed();
        drop(store);

        let start = Instant::now();
        let loaded = Automerge::load(&saved).unwrap();
        let anchor = start.elapsed();
        assert_eq!(loaded.get_heads(), heads);
        if run > 0 {
            from_store.push(took);
            from_memory.push(anchor);
        }
    }
    from_store.sort();
    from_memory.sort();
    let (store_ms, memory_ms) = (
        percentile(&from_store, 0.5).as_secs_f64() * 1e3,
        percentile(&from_memory, 0.5).as_secs_f64() * 1e3,
    );
    println!();
    println!(
        "## The automerge-paper document ({} edits in {} commits), median of {RUNS} loads",
        trace.edits.len(),
        trace.edits.len().div_ceil(EDITS_PER_COMMIT) + 1
    );
    println!("load from ferry-store      {store_ms:8.1} ms");
    println!("Automerge::load (memory)   {memory_ms:8.1} ms");
    println!("ratio (target <= 1.1)      {:8.2}×", store_ms / memory_ms);

    let store = Store::open(dir.path()).unwrap();
    let stored = store.info(doc).unwrap().stored_bytes;
    drop(store);
    println!();
    println!("## Bytes for that document after compaction");
    println!("stored records (snapshot + incrementals)   {stored:10} B");
    println!(
        "Automerge::save()                          {:10} B",
        saved.len()
    );
    println!(
        "ratio                                      {:10.2}×",
        stored as f64 / saved.len() as f64
    );
    println!(
        "whole store directory on disk              {:10} B (sled's log, preallocated segments)",
        dir_size(dir.path())
    );
}

fn dir_size(path: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(path).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() {
            dir_size(&entry.path())
        } else {
            std::os::unix::fs::MetadataExt::blocks(&meta) * 512
        };
    }
    total
}

fn main() {
    // `cargo test --benches` runs this with no arguments too; `cargo bench` passes --bench.
    if !std::env::args().any(|a| a == "--bench") {
        println!("store bench: run with `cargo bench -p ferry-store --bench store`");
        return;
    }
    commit_latency();
    batched_throughput();
    paper_document();
}
