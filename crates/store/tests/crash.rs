//! SIGKILL at random moments loses no commit that returned.
//!
//! This binary is its own child. Run as a test, it starts itself again with `FERRY_CRASH_DIR`
//! set. The child opens the store, commits changes in a loop (from one writer, or from several
//! writers sharing group commits), compacts now and then, and prints each change's key once
//! its commit has returned. The parent SIGKILLs it at a random moment, then reopens the store
//! and checks that every printed key is there with its value. Some rounds kill right as the
//! child announces a compaction, so kills land inside compactions too.
//!
//! Beside the writers, a maker thread takes in whole documents as sync does (`adopt`) and
//! increments a counter, printing each document's id and each count once its call returned:
//! every one must be there after the kill, and every document in the store must load. It also
//! adds a blob per document and prints its hash once `add_blob` returned: each must read back
//! whole. Now and then it makes a change too large for a sled record to a document it made
//! (kept in a file beside the store) and compacts that document: each such change must be
//! there whole.
//!
//! `FERRY_CRASH_ROUNDS` sets the number of kills (default 24).

// Helpers fail loudly; that is what a test wants.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::num::NonZeroUsize;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use automerge::transaction::Transactable;
use automerge::{ROOT, ReadDoc};
use ferry_store::{
    CrdtState, DocId, DocKind, Durability, Origin, PeerId, SpaceId, Store, StoreConfig,
};
use rand::Rng;

const DIR_VAR: &str = "FERRY_CRASH_DIR";
const WRITERS_VAR: &str = "FERRY_CRASH_WRITERS";

fn main() {
    match std::env::var_os(DIR_VAR) {
        Some(dir) => child(Path::new(&dir)),
        None => parent(),
    }
}

/// The value stored under `key`: long enough that compactions have work to do, and checkable.
fn value_of(key: &str) -> String {
    let hash = blake3::hash(key.as_bytes()).to_hex();
    format!("{key}={hash}{hash}")
}

fn config(writers: usize) -> StoreConfig {
    StoreConfig {
        durability: if writers == 1 {
            Durability::Immediate
        } else {
            Durability::Batched {
                interval: Duration::from_millis(2),
            }
        },
        cache_docs: NonZeroUsize::new(4).unwrap(),
        compact_min_bytes: 16 * 1024,
        ..StoreConfig::default()
    }
}

/// The one document the writers write to, made on first use.
fn the_doc(store: &Store) -> DocId {
    let doc = DocId::from_bytes([1; 16]);
    store
        .create_with_id(doc, SpaceId::DEFAULT, DocKind::Automerge, Origin::Local)
        .unwrap();
    doc
}

/// The counter the maker increments, made on first use.
fn the_counter(store: &Store) -> DocId {
    let doc = DocId::from_bytes([2; 16]);
    store
        .create_with_id(doc, SpaceId::DEFAULT, DocKind::GCounter, Origin::Local)
        .unwrap();
    doc
}

fn count(store: &Store, counter: DocId) -> u128 {
    match store.crdt(counter).unwrap() {
        CrdtState::GCounter(c) => c.value(),
        other => panic!("not a counter: {other:?}"),
    }
}

/// Takes in whole documents from a made-up peer and increments the counter, printing each
/// document made and each count reached once the call has returned.
fn maker(store: &Store) {
    let counter = the_counter(store);
    let peer = Origin::Remote(PeerId::from_bytes([9; 16]));
    loop {
        let doc = DocId::random();
        let mut theirs = automerge::Automerge::new();
        theirs
            .transact(|tx| tx.put(ROOT, "made", doc.to_string()))
            .unwrap();
        store.adopt((doc, SpaceId::DEFAULT), peer, theirs).unwrap();
        println!("made {doc}");
        store.increment(counter, 1).unwrap();
        println!("counted {}", count(store, counter));
        // Now and then a change too large for a sled record (kept in a file of its own),
        // printed once it returned, and every other time the document is compacted after
        // it (its snapshot then a file of its own too).
        if doc.as_bytes()[1].is_multiple_of(4) {
            store
                .change(doc, |tx| {
                    tx.put(
                        ROOT,
                        "scan",
                        automerge::ScalarValue::Bytes(large_bytes(&doc)),
                    )
                })
                .unwrap();
            println!("large {doc}");
            if doc.as_bytes()[2].is_multiple_of(2) {
                store.compact(doc).unwrap();
            }
        }
        // An attachment: its hash is printed once `add_blob` returned.
        let photo = blob_bytes(&doc);
        let hash = store.add_blob(&photo).unwrap();
        println!("blob {doc} {hash}");
    }
}

/// The bytes of the blob added beside `doc`: some tens of kilobytes, derived from its id.
fn blob_bytes(doc: &DocId) -> Vec<u8> {
    let mut bytes = vec![0u8; 20_000 + usize::from(doc.as_bytes()[0]) * 100];
    blake3::Hasher::new()
        .update(doc.as_bytes())
        .finalize_xof()
        .fill(&mut bytes);
    bytes
}

/// The bytes of the large change made to `doc`: 300 kB, over the size kept in sled.
fn large_bytes(doc: &DocId) -> Vec<u8> {
    let mut bytes = vec![0u8; 300_000];
    blake3::Hasher::new()
        .update(b"large")
        .update(doc.as_bytes())
        .finalize_xof()
        .fill(&mut bytes);
    bytes
}

fn child(dir: &Path) {
    let writers: usize = std::env::var(WRITERS_VAR).unwrap().parse().unwrap();
    let store = Store::open_with(dir, config(writers)).unwrap();
    let doc = the_doc(&store);
    let keys: Vec<String> = store.read(doc, |d| d.keys(ROOT).collect()).unwrap();
    println!("ready");
    std::thread::scope(|scope| {
        scope.spawn(|| maker(&store));
        for writer in 0..writers {
            let store = &store;
            // Continue numbering after whatever this writer committed before.
            let prefix = format!("w{writer}/");
            let mut n = keys
                .iter()
                .filter_map(|k| k.strip_prefix(&prefix)?.parse::<u64>().ok())
                .max()
                .map_or(0, |n| n + 1);
            scope.spawn(move || {
                loop {
                    let key = format!("{prefix}{n}");
                    let value = value_of(&key);
                    store
                        .change(doc, |tx| tx.put(ROOT, &key, value.as_str()))
                        .unwrap();
                    println!("{key}");
                    if writer == 0 && n % 40 == 39 {
                        println!("compact-start");
                        store.compact(doc).unwrap();
                        println!("compact-end");
                    }
                    n += 1;
                }
            });
        }
    });
}

struct Round {
    committed: Vec<String>,
    made: Vec<DocId>,
    /// Documents given a large change, once it returned.
    large: Vec<DocId>,
    counted: u128,
    /// Blobs added, by the document whose id their bytes derive from.
    blobs: Vec<(DocId, ferry_store::BlobHash)>,
    killed_in_compaction: bool,
}

/// Runs one child and kills it; returns the keys it reported as committed.
fn round(dir: &Path, writers: usize, aim: Aim) -> Round {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(DIR_VAR, dir)
        .env(WRITERS_VAR, writers.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    let mut lines = Vec::new();
    let mut rng = rand::rng();
    let give_up = Instant::now() + Duration::from_secs(20);
    let wait_for = |lines: &mut Vec<String>, wanted: &str| {
        while Instant::now() < give_up {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(50)) {
                let found = line == wanted;
                lines.push(line);
                if found {
                    return;
                }
            }
        }
        panic!("the child never printed {wanted:?}");
    };
    match aim {
        Aim::Anywhere => {
            std::thread::sleep(Duration::from_millis(rng.random_range(0..120)));
        }
        Aim::WhileWriting => {
            wait_for(&mut lines, "ready");
            std::thread::sleep(Duration::from_millis(rng.random_range(5..250)));
        }
        Aim::Compaction => {
            wait_for(&mut lines, "ready");
            wait_for(&mut lines, "compact-start");
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    reader.join().unwrap();
    lines.extend(rx.try_iter());

    let markers: Vec<&String> = lines.iter().filter(|l| l.starts_with("compact-")).collect();
    let made = lines
        .iter()
        .filter_map(|l| l.strip_prefix("made ")?.parse().ok())
        .collect();
    let counted = lines
        .iter()
        .filter_map(|l| l.strip_prefix("counted ")?.parse().ok())
        .max()
        .unwrap_or(0);
    let large = lines
        .iter()
        .filter_map(|l| l.strip_prefix("large ")?.parse().ok())
        .collect();
    let blobs = lines
        .iter()
        .filter_map(|l| {
            let mut words = l.strip_prefix("blob ")?.split(' ');
            Some((words.next()?.parse().ok()?, words.next()?.parse().ok()?))
        })
        .collect();
    Round {
        made,
        large,
        counted,
        blobs,
        killed_in_compaction: markers.last().is_some_and(|m| *m == "compact-start"),
        committed: lines.into_iter().filter(|l| l.starts_with('w')).collect(),
    }
}

#[derive(Clone, Copy, Debug)]
enum Aim {
    Anywhere,
    WhileWriting,
    Compaction,
}

fn parent() {
    let rounds: usize = std::env::var("FERRY_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24);
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut promised = BTreeSet::new();
    let mut made = Vec::new();
    let mut large = Vec::new();
    let mut counted = 0;
    let mut in_compaction = 0;
    let mut blobs = Vec::new();
    for i in 0..rounds {
        let writers = if i % 2 == 0 { 1 } else { 4 };
        let aim = match i % 6 {
            0 => Aim::Anywhere,
            1 | 4 => Aim::Compaction,
            _ => Aim::WhileWriting,
        };
        let round = round(dir.path(), writers, aim);
        in_compaction += usize::from(round.killed_in_compaction);
        promised.extend(round.committed);
        made.extend(round.made);
        large.extend(round.large);
        counted = counted.max(round.counted);
        blobs.extend(round.blobs);

        // Every key a child printed is there, with its value, after the kill.
        let store = Store::open_with(dir.path(), config(1)).unwrap();
        let doc = the_doc(&store);
        let missing: Vec<&String> = store
            .read(doc, |d| {
                promised
                    .iter()
                    .filter(|key| {
                        let stored = d.get(ROOT, key.as_str()).unwrap();
                        stored.and_then(|(v, _)| v.into_string().ok()) != Some(value_of(key))
                    })
                    .collect()
            })
            .unwrap();
        assert!(
            missing.is_empty(),
            "round {i} ({writers} writer(s), {aim:?}): {} of {} committed keys lost, e.g. {:?}",
            missing.len(),
            promised.len(),
            &missing[..missing.len().min(5)]
        );
        // Every document taken in is there whole, the counter has every increment, and
        // nothing in the store reads as damaged.
        for doc in &made {
            let value = store
                .read(*doc, |d| {
                    d.get(ROOT, "made").unwrap().map(|(v, _)| v.to_string())
                })
                .unwrap_or_else(|e| panic!("round {i}: document {doc} taken in is lost: {e}"));
            assert_eq!(value, Some(format!("\"{doc}\"")), "round {i}");
        }
        // Every large change that returned is there whole.
        for doc in &large {
            let value = store
                .read(*doc, |d| match d.get(ROOT, "scan").unwrap() {
                    Some((automerge::Value::Scalar(s), _)) => match s.as_ref() {
                        automerge::ScalarValue::Bytes(b) => Some(b.clone()),
                        _ => None,
                    },
                    _ => None,
                })
                .unwrap_or_else(|e| panic!("round {i}: document {doc} is lost: {e}"));
            assert!(
                value == Some(large_bytes(doc)),
                "round {i}: the large change to {doc} is lost"
            );
        }
        // Every blob whose hash was printed reads back whole.
        for (doc, hash) in &blobs {
            let bytes = store
                .read_blob(*hash)
                .unwrap_or_else(|e| panic!("round {i}: blob {hash} added is lost: {e}"));
            assert_eq!(bytes, blob_bytes(doc), "round {i}: blob {hash}");
        }
        let reached = count(&store, the_counter(&store));
        assert!(
            reached >= counted,
            "round {i}: counted {counted}, reopened at {reached}"
        );
        for doc in store.list().unwrap() {
            store
                .info(doc)
                .and_then(|info| match info.kind {
                    DocKind::Automerge => store.read(doc, |_| ()),
                    _ => store.crdt(doc).map(drop),
                })
                .unwrap_or_else(|e| panic!("round {i}: {doc} does not load: {e}"));
        }
        let info = store.info(doc).unwrap();
        println!(
            "round {i:2}: {writers} writer(s), {aim:?}, killed in compaction: {}, keys so far: {}, \
             stored bytes: {}",
            round.killed_in_compaction,
            promised.len(),
            info.stored_bytes
        );
        std::io::stdout().flush().unwrap();
    }
    println!(
        "{rounds} kills, {in_compaction} during a compaction, {} keys, {} documents taken in, \
         {} large changes, {} blobs and {counted} increments checked, in {:.1?}",
        promised.len(),
        made.len(),
        large.len(),
        blobs.len(),
        started.elapsed()
    );
    assert!(
        promised.len() > rounds,
        "the children committed almost nothing"
    );
    if rounds >= 12 {
        assert!(in_compaction > 0, "no kill landed during a compaction");
    }
}
