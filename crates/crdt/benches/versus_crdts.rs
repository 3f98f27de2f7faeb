//! ferry-crdt side by side with the `crdts` crate (7.3.2) in one run: merge times and encoded
//! sizes, printed with ours/theirs ratios at the end.
//!
//! `cargo bench -p ferry-crdt --bench versus_crdts` (add `-- --quick` for a short run).

use std::hint::black_box;
use std::path::{Path, PathBuf};

use crdts::{CmRDT, CvRDT, Dot};
use criterion::{BatchSize, BenchmarkId, Criterion};
use ferry_crdt::{Clock, Crdt, GCounter, LwwRegister, ReplicaId, encode};

const REPLICAS: usize = 1_000;

fn id(i: usize) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&(i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
    bytes
}

type CrdtsCounter = crdts::GCounter<[u8; 16]>;

/// Two counters over the same 1,000 replicas; each is ahead on half of them.
fn gcounters() -> ((GCounter, GCounter), (CrdtsCounter, CrdtsCounter)) {
    let (mut a, mut b) = (GCounter::new(), GCounter::new());
    let (mut x, mut y) = (crdts::GCounter::new(), crdts::GCounter::new());
    for i in 0..REPLICAS {
        let (ahead, behind) = (1_000 + i as u64, 10 + i as u64);
        let (for_a, for_b) = if i % 2 == 0 {
            (ahead, behind)
        } else {
            (behind, ahead)
        };
        a.increment(ReplicaId::from_bytes(id(i)), for_a)
            .expect("no overflow");
        b.increment(ReplicaId::from_bytes(id(i)), for_b)
            .expect("no overflow");
        x.apply(Dot::new(id(i), for_a));
        y.apply(Dot::new(id(i), for_b));
    }
    ((a, b), (x, y))
}

type CrdtsLww = crdts::LWWReg<String, (u64, u32, [u8; 16])>;

/// Two registers with the same value lengths; the second is newer.
fn registers() -> (
    (LwwRegister<String>, LwwRegister<String>),
    (CrdtsLww, CrdtsLww),
) {
    let value = |s: &str| format!("{s}: the survey answer, about forty bytes long");
    let mut clock_a = Clock::new(ReplicaId::from_bytes(id(1)));
    let mut clock_b = Clock::new(ReplicaId::from_bytes(id(2)));
    let (mut a, mut b) = (LwwRegister::new(), LwwRegister::new());
    a.set(value("old"), &mut clock_a, 1_732_000_000_000);
    b.set(value("new"), &mut clock_b, 1_732_000_000_500);
    let marker = |r: &LwwRegister<String>| {
        let t = r.stamp().expect("written");
        (t.millis, t.counter, *t.replica.as_bytes())
    };
    let x = crdts::LWWReg {
        val: value("old"),
        marker: marker(&a),
    };
    let y = crdts::LWWReg {
        val: value("new"),
        marker: marker(&b),
    };
    ((a, b), (x, y))
}

fn bench_gcounter(c: &mut Criterion) {
    let ((a, b), (x, y)) = gcounters();
    let mut group = c.benchmark_group("gcounter_merge_1000");
    group.bench_function(BenchmarkId::new("ferry", REPLICAS), |bench| {
        bench.iter_batched_ref(
            || a.clone(),
            |a| black_box(a.merge(&b)),
            BatchSize::SmallInput,
        )
    });
    group.bench_function(BenchmarkId::new("crdts", REPLICAS), |bench| {
        bench.iter_batched_ref(
            || (x.clone(), y.clone()),
            |(x, y)| x.merge(std::mem::take(y)),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn bench_lww(c: &mut Criterion) {
    let ((a, b), (x, y)) = registers();
    let mut group = c.benchmark_group("lww_merge");
    group.bench_function("ferry", |bench| {
        bench.iter_batched_ref(
            || a.clone(),
            |a| black_box(a.merge(&b)),
            BatchSize::SmallInput,
        )
    });
    // crdts merges by value; so does `merge_owned`, as the sync layer does with decoded states.
    group.bench_function("ferry_owned", |bench| {
        bench.iter_batched_ref(
            || (a.clone(), b.clone()),
            |(a, b)| black_box(a.merge_owned(std::mem::take(b))),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("crdts", |bench| {
        bench.iter_batched_ref(
            || (x.clone(), y.clone()),
            |(x, y)| x.merge(std::mem::take(y)),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn sizes() -> Vec<(&'static str, usize, usize)> {
    let ((a, _), (x, _)) = gcounters();
    let ((r, _), (s, _)) = registers();
    let u64_marker = crdts::LWWReg {
        val: s.val.clone(),
        marker: s.marker.0,
    };
    let len = |v: Result<Vec<u8>, ferry_crdt::EncodeError>| v.map(|v| v.len()).unwrap_or(0);
    vec![
        ("gcounter, 1,000 replicas", len(a.encode()), len(encode(&x))),
        (
            "lww register, same marker (millis, counter, replica)",
            len(r.encode()),
            len(encode(&s)),
        ),
        (
            "lww register vs crdts u64 marker (ties diverge)",
            len(r.encode()),
            len(encode(&u64_marker)),
        ),
    ]
}

/// The time per iteration criterion reported for one benchmark, in nanoseconds: the slope of
/// its linear fit where it made one, else the mean (the middle figure criterion prints).
fn estimate_ns(dir: &Path, group: &str, function: &str) -> Option<f64> {
    let path = dir.join(group).join(function).join("new/estimates.json");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    json["slope"]["point_estimate"]
        .as_f64()
        .or_else(|| json["mean"]["point_estimate"].as_f64())
}

fn main() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("criterion");
    // Ratios are read back from this run's estimates only, never an earlier run's.
    let _ = std::fs::remove_dir_all(&dir);
    let mut c = Criterion::default()
        .output_directory(&dir)
        .configure_from_args();
    bench_gcounter(&mut c);
    bench_lww(&mut c);
    c.final_summary();

    println!("\n== ferry-crdt vs crdts 7.3.2, same run ==");
    println!(
        "{:<28} {:>12} {:>12} {:>8}",
        "merge (time per merge)", "ferry ns", "crdts ns", "ratio"
    );
    let merges = [
        ("gcounter_merge_1000", "ferry/1000", "crdts/1000"),
        ("lww_merge (by reference)", "ferry", "crdts"),
        ("lww_merge (owned)", "ferry_owned", "crdts"),
    ];
    for (label, ours, theirs) in merges {
        let group = label.split(' ').next().unwrap_or(label);
        match (
            estimate_ns(&dir, group, ours),
            estimate_ns(&dir, group, theirs),
        ) {
            (Some(o), Some(t)) => println!("{label:<28} {o:>12.1} {t:>12.1} {:>8.2}", o / t),
            _ => println!("{label:<28} (not run)"),
        }
    }
    println!(
        "\n{:<54} {:>7} {:>7} {:>8}",
        "encoded size (bincode 2)", "ferry B", "crdts B", "ratio"
    );
    for (what, ours, theirs) in sizes() {
        println!(
            "{what:<54} {ours:>7} {theirs:>7} {:>8.3}",
            ours as f64 / theirs as f64
        );
    }
}
