//! Access limits what flows: 2 to 4 replicas, each granting each other replica read-write,
//! read-only or no access to everything, make documents, edit them and sync at random (sessions
//! cut and duplicated too). After enough complete rounds, each replica holds exactly what a
//! model says: everything written by a replica that reaches it along hops a → b where b lets a
//! write and a lets b read. Nothing a replica may not see reaches it, and nothing a read-only
//! peer wrote is stored, not even relayed.
//!
//! `FERRY_PROTO_CASES` sets the number of cases (default 64, which CI runs).

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};

use automerge::transaction::Transactable;
use automerge::{ROOT, ReadDoc};
use ferry_crdt::Timestamp;
use ferry_store::{Access, CrdtState, DocId, DocKind, Origin};
use proptest::prelude::*;
use support::{Faults, Replica, sync_with, trust};

#[derive(Clone, Debug)]
enum Op {
    Create {
        at: usize,
        kind: usize,
    },
    Edit {
        at: usize,
        doc: usize,
        n: u8,
    },
    Sync {
        a: usize,
        b: usize,
        cut: Option<usize>,
        duplicate: Option<usize>,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (any::<usize>(), 0..5usize).prop_map(|(at, kind)| Op::Create { at, kind }),
        5 => (any::<usize>(), any::<usize>(), 1..20u8).prop_map(|(at, doc, n)| Op::Edit { at, doc, n }),
        3 => (any::<usize>(), any::<usize>(), proptest::option::of(0..12usize), proptest::option::of(1..4usize))
            .prop_map(|(a, b, cut, duplicate)| Op::Sync { a, b, cut, duplicate }),
    ]
}

fn access() -> impl Strategy<Value = Access> {
    prop_oneof![
        3 => Just(Access::ReadWrite),
        1 => Just(Access::Read),
        1 => Just(Access::None),
    ]
}

fn cases() -> u32 {
    std::env::var("FERRY_PROTO_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

/// One write, by the replica that made it.
#[derive(Clone, Debug)]
struct Write {
    author: usize,
    doc: DocId,
    effect: Effect,
}

#[derive(Clone, Debug)]
enum Effect {
    Created,
    Key(String, i64),
    Add(i128),
    Lww(Timestamp, Vec<u8>),
    /// A multi-value write, and the values it replaced (those visible where it was made).
    Mv(Vec<u8>, BTreeSet<Vec<u8>>),
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn each_replica_holds_what_access_lets_reach_it(
        n in 2..=4usize,
        grants in proptest::collection::vec(access(), 16),
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        prop_assume!(ops.iter().any(|op| matches!(op, Op::Create { .. })));
        // grant(x, y): what replica x lets replica y do with its documents.
        let grant = |x: usize, y: usize| grants[x * 4 + y];
        let config = support::config();
        let sync = |a: &Replica, b: &Replica, faults| sync_with(a, b, faults, &config);
        let replicas: Vec<Replica> = (0..n).map(Replica::seeded).collect();
        for x in 0..n {
            for y in 0..n {
                if x != y {
                    trust(&replicas[x], &replicas[y], grant(x, y));
                }
            }
        }
        let mut docs: Vec<(DocId, DocKind)> = Vec::new();
        let mut writes: Vec<Write> = Vec::new();
        let mut counter = 0i64;
        for op in ops {
            match op {
                Op::Create { at, kind } => {
                    let kind = DocKind::ALL[kind];
                    let doc = DocId::from_bytes(*blake3::hash(&(docs.len() as u64).to_le_bytes()).as_bytes().first_chunk().unwrap());
                    replicas[at % n].store.create_with_id(doc, kind, Origin::Local).unwrap();
                    docs.push((doc, kind));
                    writes.push(Write { author: at % n, doc, effect: Effect::Created });
                }
                Op::Edit { at, doc, n: amount } => {
                    if docs.is_empty() { continue; }
                    let (doc, kind) = docs[doc % docs.len()];
                    let store = &replicas[at % n].store;
                    if store.info(doc).is_err() { continue; }
                    counter += 1;
                    let effect = match kind {
                        DocKind::Automerge => {
                            let key = format!("e{counter}");
                            store.change(doc, |tx| tx.put(ROOT, &key, counter)).unwrap();
                            Effect::Key(key, counter)
                        }
                        DocKind::GCounter => {
                            store.increment(doc, u64::from(amount)).unwrap();
                            Effect::Add(i128::from(amount))
                        }
                        DocKind::PNCounter => {
                            store.decrement(doc, u64::from(amount)).unwrap();
                            Effect::Add(-i128::from(amount))
                        }
                        DocKind::LwwRegister => {
                            let value = counter.to_le_bytes().to_vec();
                            store.set_register(doc, value.clone()).unwrap();
                            let CrdtState::LwwRegister(reg) = store.crdt(doc).unwrap() else {
                                unreachable!("an lww document")
                            };
                            Effect::Lww(reg.stamp().unwrap(), value)
                        }
                        DocKind::MvRegister => {
                            let CrdtState::MvRegister(before) = store.crdt(doc).unwrap() else {
                                unreachable!("an mv document")
                            };
                            let replaced = before.values().into_iter().cloned().collect();
                            let value = counter.to_le_bytes().to_vec();
                            store.set_register(doc, value.clone()).unwrap();
                            Effect::Mv(value, replaced)
                        }
                    };
                    writes.push(Write { author: at % n, doc, effect });
                }
                Op::Sync { a, b, cut, duplicate } => {
                    let (a, b) = (a % n, b % n);
                    if a == b { continue; }
                    let run = sync(&replicas[a], &replicas[b], Faults { cut_after: cut, duplicate_every: duplicate });
                    prop_assert!(run.error.is_none(), "session error: {:?}", run.error);
                }
            }
        }
        // Enough complete rounds for anything to travel the longest path.
        for _ in 0..n {
            for a in 0..n {
                for b in 0..n {
                    if a != b {
                        let run = sync(&replicas[a], &replicas[b], Faults::default());
                        prop_assert!(run.error.is_none(), "final session error: {:?}", run.error);
                    }
                }
            }
        }

        // The model: a's writes flow to b when b lets a write and a lets b read.
        let flows = |a: usize, b: usize| grant(b, a) == Access::ReadWrite && grant(a, b) >= Access::Read;
        let mut reaches = vec![vec![false; n]; n];
        for (a, row) in reaches.iter_mut().enumerate() {
            row[a] = true;
        }
        for _ in 0..n {
            for row in reaches.iter_mut() {
                for b in 0..n {
                    for c in 0..n {
                        if row[b] && b != c && flows(b, c) {
                            row[c] = true;
                        }
                    }
                }
            }
        }
        for (x, r) in replicas.iter().enumerate() {
            for (doc, kind) in &docs {
                let held: Vec<&Write> = writes
                    .iter()
                    .filter(|w| w.doc == *doc && reaches[w.author][x])
                    .collect();
                let created = held.iter().any(|w| matches!(w.effect, Effect::Created));
                prop_assert_eq!(r.store.info(*doc).is_ok(), created, "{} at replica {}", doc, x);
                if !created { continue; }
                match kind {
                    DocKind::Automerge => {
                        let keys: BTreeMap<String, i64> = r.store.read(*doc, |d| {
                            d.keys(ROOT)
                                .map(|k| {
                                    let v = d.get(ROOT, &k).unwrap().unwrap().0.as_i64().unwrap();
                                    (k, v)
                                })
                                .collect()
                        }).unwrap();
                        let model: BTreeMap<String, i64> = held
                            .iter()
                            .filter_map(|w| match &w.effect {
                                Effect::Key(k, v) => Some((k.clone(), *v)),
                                _ => None,
                            })
                            .collect();
                        prop_assert_eq!(keys, model, "{} at replica {}", doc, x);
                    }
                    _ => {
                        let sum: i128 = held.iter().map(|w| match w.effect { Effect::Add(a) => a, _ => 0 }).sum();
                        match r.store.crdt(*doc).unwrap() {
                            CrdtState::GCounter(c) => prop_assert_eq!(c.value() as i128, sum),
                            CrdtState::PNCounter(c) => prop_assert_eq!(c.value(), sum),
                            CrdtState::LwwRegister(reg) => {
                                let winner = held
                                    .iter()
                                    .filter_map(|w| match &w.effect {
                                        Effect::Lww(stamp, value) => Some((*stamp, value)),
                                        _ => None,
                                    })
                                    .max_by_key(|(stamp, _)| *stamp);
                                prop_assert_eq!(reg.get(), winner.map(|(_, v)| v));
                            }
                            CrdtState::MvRegister(reg) => {
                                let replaced: BTreeSet<&Vec<u8>> = held
                                    .iter()
                                    .flat_map(|w| match &w.effect {
                                        Effect::Mv(_, replaced) => replaced.iter().collect(),
                                        _ => Vec::new(),
                                    })
                                    .collect();
                                let model: BTreeSet<&Vec<u8>> = held
                                    .iter()
                                    .filter_map(|w| match &w.effect {
                                        Effect::Mv(v, _) if !replaced.contains(v) => Some(v),
                                        _ => None,
                                    })
                                    .collect();
                                let kept: BTreeSet<&Vec<u8>> = reg.values().into_iter().collect();
                                prop_assert_eq!(kept, model);
                            }
                        }
                    }
                }
            }
        }
    }
}
