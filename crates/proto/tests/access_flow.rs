//! Access limits what flows: 2 to 4 replicas, each granting each other replica read-write,
//! read-only or no access to each of two spaces, make documents in either space, edit them and
//! sync at random (sessions cut and duplicated too). Some runs also change grants between
//! sessions.
//!
//! - In every session, a replica takes in a document it lacked only if the other side lets it
//!   read that document's space at that moment.
//! - After enough complete rounds, each replica holds at least what the final grants let reach
//!   it: everything written in a space by a replica that reaches it along hops a → b where b
//!   lets a write that space and a lets b read it.
//!   Each of those writes is in what it holds (keys, increments, the latest register stamp).
//! - Two replicas whose final grants let each write to the other and read from it converge on
//!   that space's documents (the same heads and digests); where only one way is open, the
//!   receiving end holds every document of the space that the other holds.
//! - With grants that never changed, it holds exactly that: nothing a replica may not see
//!   reaches it, and nothing a read-only peer wrote is stored, not even relayed.
//!
//! `FERRY_PROTO_CASES` sets the number of cases (default 64, which CI runs).

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};

use automerge::transaction::Transactable;
use automerge::{ROOT, ReadDoc};
use ferry_crdt::Timestamp;
use ferry_store::{Access, CrdtState, DocId, DocKind, Origin, SpaceId};
use proptest::prelude::*;
use support::{Faults, Replica, sync_with, trust};

#[derive(Clone, Debug)]
enum Op {
    Create {
        at: usize,
        kind: usize,
        space: usize,
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
    /// Replica `x` changes what it lets `y` do with space `space`.
    Regrant {
        x: usize,
        y: usize,
        space: usize,
        access: Access,
    },
}

/// The two spaces documents are made in.
const SPACES: [SpaceId; 2] = [SpaceId::DEFAULT, SpaceId::from_bytes([1; 16])];

fn op(regrants: bool) -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (any::<usize>(), 0..5usize, 0..2usize).prop_map(|(at, kind, space)| Op::Create { at, kind, space }),
        5 => (any::<usize>(), any::<usize>(), 1..20u8).prop_map(|(at, doc, n)| Op::Edit { at, doc, n }),
        3 => (any::<usize>(), any::<usize>(), proptest::option::of(0..12usize), proptest::option::of(1..4usize))
            .prop_map(|(a, b, cut, duplicate)| Op::Sync { a, b, cut, duplicate }),
        u32::from(regrants) => (any::<usize>(), any::<usize>(), 0..2usize, access())
            .prop_map(|(x, y, space, access)| Op::Regrant { x, y, space, access }),
    ]
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    any::<bool>().prop_flat_map(|regrants| proptest::collection::vec(op(regrants), 1..40))
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
        grants in proptest::collection::vec(access(), 32),
        ops in ops(),
    ) {
        prop_assume!(ops.iter().any(|op| matches!(op, Op::Create { .. })));
        // grants[(x * 4 + y) * 2 + s]: what replica x lets replica y do with space s.
        let mut grants = grants;
        let at = |x: usize, y: usize, s: usize| (x * 4 + y) * 2 + s;
        let config = support::config();
        let sync = |a: &Replica, b: &Replica, faults| sync_with(a, b, faults, &config);
        let replicas: Vec<Replica> = (0..n).map(Replica::seeded).collect();
        for x in 0..n {
            for y in 0..n {
                if x != y {
                    trust(&replicas[x], &replicas[y], Access::None);
                    for (s, space) in SPACES.iter().enumerate() {
                        let peer = replicas[y].store.peer_id();
                        replicas[x].store.grant(peer, *space, grants[at(x, y, s)]).unwrap();
                    }
                }
            }
        }
        let mut regranted = false;
        let mut docs: Vec<(DocId, DocKind, usize)> = Vec::new();
        let mut writes: Vec<Write> = Vec::new();
        let mut counter = 0i64;
        for op in ops {
            match op {
                Op::Create { at, kind, space } => {
                    let kind = DocKind::ALL[kind];
                    let doc = DocId::from_bytes(*blake3::hash(&(docs.len() as u64).to_le_bytes()).as_bytes().first_chunk().unwrap());
                    replicas[at % n].store.create_with_id(doc, SPACES[space], kind, Origin::Local).unwrap();
                    docs.push((doc, kind, space));
                    writes.push(Write { author: at % n, doc, effect: Effect::Created });
                }
                Op::Edit { at, doc, n: amount } => {
                    if docs.is_empty() { continue; }
                    let (doc, kind, _) = docs[doc % docs.len()];
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
                    let held = |r: usize| -> BTreeSet<DocId> {
                        docs.iter().map(|d| d.0).filter(|d| replicas[r].store.info(*d).is_ok()).collect()
                    };
                    let before = [held(a), held(b)];
                    let run = sync(&replicas[a], &replicas[b], Faults { cut_after: cut, duplicate_every: duplicate });
                    prop_assert!(run.error.is_none(), "session error: {:?}", run.error);
                    // A document new on one side came from the other, which let it read the
                    // document's space just now.
                    for (side, (me, other)) in [(a, b), (b, a)].into_iter().enumerate() {
                        for doc in held(me).difference(&before[side]) {
                            let space = docs.iter().find(|d| d.0 == *doc).unwrap().2;
                            prop_assert!(
                                grants[at(other, me, space)] >= Access::Read,
                                "replica {} got {} of space {} from {}, which does not let it read that space",
                                me, doc, space, other
                            );
                        }
                    }
                }
                Op::Regrant { x, y, space, access } => {
                    let (x, y) = (x % n, y % n);
                    if x == y { continue; }
                    let peer = replicas[y].store.peer_id();
                    replicas[x].store.grant(peer, SPACES[space], access).unwrap();
                    grants[at(x, y, space)] = access;
                    regranted = true;
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

        // The model, per space: a's writes flow to b when b lets a write the space and a lets
        // b read it (under the final grants).
        let flows = |a: usize, b: usize, s: usize| {
            grants[at(b, a, s)] == Access::ReadWrite && grants[at(a, b, s)] >= Access::Read
        };
        let mut reaches = vec![vec![vec![false; n]; n]; 2];
        for (s, space) in reaches.iter_mut().enumerate() {
            for (a, row) in space.iter_mut().enumerate() {
                row[a] = true;
            }
            for _ in 0..n {
                for row in space.iter_mut() {
                    for b in 0..n {
                        for c in 0..n {
                            if row[b] && b != c && flows(b, c, s) {
                                row[c] = true;
                            }
                        }
                    }
                }
            }
        }
        // Along every edge the final grants open, everything held at one end is held at the
        // other; where they open it both ways, both ends converged on the same document.
        for (a, ra) in replicas.iter().enumerate() {
            for (b, rb) in replicas.iter().enumerate() {
                for (doc, _, space) in &docs {
                    if a == b || !flows(a, b, *space) {
                        continue;
                    }
                    let Ok(here) = ra.store.info(*doc) else { continue };
                    let there = rb.store.info(*doc);
                    prop_assert!(there.is_ok(), "{} held at {} but not at {}, which {} lets read it", doc, a, b, a);
                    let there = there.unwrap();
                    if flows(b, a, *space) {
                        prop_assert_eq!(&here.version, &there.version, "{} at {} and {}", doc, a, b);
                        prop_assert_eq!(here.digest, there.digest, "{} at {} and {}", doc, a, b);
                    }
                }
            }
        }
        for (x, r) in replicas.iter().enumerate() {
            for (doc, kind, space) in &docs {
                let reaches = &reaches[*space];
                let held: Vec<&Write> = writes
                    .iter()
                    .filter(|w| w.doc == *doc && reaches[w.author][x])
                    .collect();
                let created = held.iter().any(|w| matches!(w.effect, Effect::Created));
                if regranted {
                    // Earlier grants may have let more through; the final ones bring at least
                    // what they allow.
                    if created {
                        prop_assert!(r.store.info(*doc).is_ok(), "{} missing at replica {}", doc, x);
                        at_least(r, *doc, *kind, &held, x)?;
                    }
                    continue;
                }
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

/// Under grants that changed, `held` (the writes the final grants bring to replica `x`) is a
/// lower bound of what `x` holds of `doc`: every key written, counted increments, and a
/// last-writer-wins value at least as recent as the latest write. (Multi-value registers and
/// decrements may have been superseded by writes that came through earlier grants.)
fn at_least(
    r: &Replica,
    doc: DocId,
    kind: DocKind,
    held: &[&Write],
    x: usize,
) -> Result<(), TestCaseError> {
    if kind != DocKind::Automerge {
        return crdt_at_least(r, doc, held, x);
    }
    let keys: BTreeMap<String, i64> = r
        .store
        .read(doc, |d| {
            d.keys(ROOT)
                .map(|k| {
                    let v = d.get(ROOT, &k).unwrap().unwrap().0.as_i64().unwrap();
                    (k, v)
                })
                .collect()
        })
        .unwrap();
    for w in held {
        if let Effect::Key(k, v) = &w.effect {
            prop_assert_eq!(keys.get(k), Some(v), "{} at replica {}", doc, x);
        }
    }
    Ok(())
}

/// [`at_least`] for the CRDT kinds.
fn crdt_at_least(r: &Replica, doc: DocId, held: &[&Write], x: usize) -> Result<(), TestCaseError> {
    match r.store.crdt(doc).unwrap() {
        CrdtState::GCounter(c) => {
            let sum: i128 = held
                .iter()
                .map(|w| match w.effect {
                    Effect::Add(a) => a,
                    _ => 0,
                })
                .sum();
            prop_assert!(c.value() as i128 >= sum, "{} at replica {}", doc, x);
        }
        CrdtState::LwwRegister(reg) => {
            let latest = held
                .iter()
                .filter_map(|w| match &w.effect {
                    Effect::Lww(stamp, _) => Some(*stamp),
                    _ => None,
                })
                .max();
            prop_assert!(reg.stamp() >= latest, "{} at replica {}", doc, x);
        }
        _ => {}
    }
    Ok(())
}
