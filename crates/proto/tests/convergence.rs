//! Convergence: 2 to 5 replicas make random documents of every kind and random operations,
//! and run random pairwise sessions, some cut after a random number of frames and some with
//! duplicated frames. After a final round of complete sessions every replica holds the same
//! documents (heads and digests), every operation made anywhere is in them, and every replica's
//! sync status shows nothing pending for any peer. Registers match a model: the
//! last-writer-wins value is the write with the greatest stamp, the multi-value set exactly the
//! writes no later write replaced.
//!
//! Every other document is made in a second space, which every replica grants every other too
//! (which replica may see what is the access property's concern, `access_flow.rs`).
//!
//! A second property adds deletes (every replica must end with the tombstone, whatever was
//! edited meanwhile), concurrent writes to one Automerge key, edits pushed through an open
//! session (`doc_changed`), stores reopened mid-run, and a replica that commits in batches.
//!
//! `FERRY_PROTO_CASES` sets the number of cases (default 128, which CI runs). `FERRY_TRACE=1`
//! prints every operation and every frame to stderr; with `PROPTEST_MAX_SHRINK_ITERS=0` the
//! trace ends with the failing case as it was first found. Replicas have fixed identities
//! (`tests/keys/`) and documents take their ids from the case, so a saved case replays with the
//! same actor, peer and document ids (register stamps still come from the wall clock).

#![allow(clippy::unwrap_used)]

/// A second space every replica grants every other, beside the default one.
const TEAM: ferry_store::SpaceId = ferry_store::SpaceId::from_bytes([1; 16]);

mod support;

use std::collections::BTreeMap;

use automerge::transaction::Transactable;
use automerge::{ROOT, ReadDoc};
use ferry_proto::{Role, Session, SessionConfig};
use ferry_store::{Access, CrdtState, DocId, DocKind};
use proptest::prelude::*;
use support::{Faults, Replica, pump, sync_with, trust};

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
    /// Delete a document where it is held: every replica must end with its tombstone.
    Delete {
        at: usize,
        doc: usize,
    },
    /// Write the one key that every replica writes, on an Automerge document.
    EditShared {
        at: usize,
        doc: usize,
    },
    /// Close replica `at`'s store and open it again.
    Reopen {
        at: usize,
    },
    /// Edit on `a` while a session with `b` is open: the edit goes out through `doc_changed`.
    /// With `forget`, both sessions first forget what they keep of each other in memory, as
    /// after a while idle.
    Live {
        a: usize,
        b: usize,
        doc: usize,
        n: u8,
        forget: bool,
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

/// [`op`], with deletes and concurrent writes to one Automerge key: a strategy of its own, so
/// the saved cases of the first property still replay as they were found.
fn op_with_deletes() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => op(),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(at, doc)| Op::Delete { at, doc }),
        2 => (any::<usize>(), any::<usize>()).prop_map(|(at, doc)| Op::EditShared { at, doc }),
        2 => (any::<usize>(), any::<usize>(), any::<usize>(), 1..20u8, any::<bool>())
            .prop_map(|(a, b, doc, n, forget)| Op::Live { a, b, doc, n, forget }),
        1 => any::<usize>().prop_map(|at| Op::Reopen { at }),
    ]
}

/// What every replica must end up with, per document.
#[derive(Default)]
struct Expected {
    keys: BTreeMap<String, i64>,
    added: i128,
    registers: Vec<Vec<u8>>,
    /// Each last-writer-wins write with its stamp: the greatest stamp wins.
    stamped: Vec<(ferry_crdt::Timestamp, Vec<u8>)>,
    /// Multi-value writes that a later write replaced: one made where they were visible.
    replaced: std::collections::BTreeSet<Vec<u8>>,
    /// The values written to the shared key: the one that stays is one of them.
    shared: Vec<i64>,
    deleted: bool,
}

fn cases() -> u32 {
    std::env::var("FERRY_PROTO_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn replicas_converge_through_cut_and_duplicated_sessions(
        n in 2..=5usize,
        // Small leaves make even a few documents go through fingerprints and splits.
        leaf in prop_oneof![Just(1usize), Just(2), Just(16)],
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        // A case that never creates a document checks nothing: it does not count.
        prop_assume!(ops.iter().any(|op| matches!(op, Op::Create { .. })));
        converge(n, leaf, ops, false)?;
    }

    #[test]
    fn deletes_live_edits_reopens_and_concurrent_writes_to_one_key_converge(
        n in 2..=4usize,
        leaf in prop_oneof![Just(1usize), Just(16)],
        ops in proptest::collection::vec(op_with_deletes(), 1..40),
    ) {
        prop_assume!(ops.iter().any(|op| matches!(op, Op::Create { .. })));
        converge(n, leaf, ops, true)?;
    }
}

/// Runs `ops` on `n` replicas, then a final round of complete sessions, and checks that they
/// converged on what the operations made.
///
/// With `batched`, replica 1 commits in groups (`Durability::Batched`), as an app may choose.
fn converge(n: usize, leaf: usize, ops: Vec<Op>, batched: bool) -> Result<(), TestCaseError> {
    let config = SessionConfig {
        leaf,
        ..support::config()
    };
    let sync = |a: &Replica, b: &Replica, faults| sync_with(a, b, faults, &config);
    let mut replicas: Vec<Replica> = (0..n)
        .map(|i| {
            let mut store = ferry_store::StoreConfig::default();
            if batched && i == 1 {
                store.durability = ferry_store::Durability::Batched {
                    interval: std::time::Duration::from_millis(1),
                };
            }
            Replica::seeded_with(i, store)
        })
        .collect();
    for a in &replicas {
        for b in &replicas {
            if a.store.peer_id() != b.store.peer_id() {
                trust(a, b, Access::ReadWrite);
                a.store
                    .grant(b.store.peer_id(), TEAM, Access::ReadWrite)
                    .unwrap();
            }
        }
    }
    let mut docs: Vec<(DocId, DocKind)> = Vec::new();
    let mut expected: BTreeMap<DocId, Expected> = BTreeMap::new();
    let mut counter = 0i64;
    let tracing = std::env::var_os("FERRY_TRACE").is_some();
    for op in ops {
        if tracing {
            eprintln!("TRACE op {op:?}");
        }
        match op {
            Op::Create { at, kind } => {
                let kind = DocKind::ALL[kind];
                // Ids from the case itself, so a saved case replays with the same ones.
                let doc = DocId::from_bytes(
                    *blake3::hash(&(docs.len() as u64).to_le_bytes())
                        .as_bytes()
                        .first_chunk()
                        .unwrap(),
                );
                // Every other document in a space of its own, which every replica shares too.
                let space = if docs.len().is_multiple_of(2) {
                    ferry_store::SpaceId::DEFAULT
                } else {
                    TEAM
                };
                replicas[at % n]
                    .store
                    .create_with_id(doc, space, kind, ferry_store::Origin::Local)
                    .unwrap();
                if tracing {
                    eprintln!("TRACE created {doc} {kind:?} at {}", at % n);
                }
                docs.push((doc, kind));
                expected.insert(doc, Expected::default());
            }
            Op::Edit { at, doc, n: amount } => {
                let store = &replicas[at % n].store;
                let Some((doc, kind)) = held(&docs, doc, store) else {
                    continue; // not here yet
                };
                counter += 1;
                if tracing {
                    eprintln!("TRACE edit {doc} at {}", at % n);
                }
                edit(
                    store,
                    doc,
                    kind,
                    amount,
                    counter,
                    expected.get_mut(&doc).unwrap(),
                );
            }
            Op::Reopen { at } => {
                if tracing {
                    eprintln!("TRACE reopen {}", at % n);
                }
                replicas[at % n].reopen();
            }
            Op::Live {
                a,
                b,
                doc,
                n: amount,
                forget,
            } => {
                let (a, b) = (a % n, b % n);
                let store = &replicas[a].store;
                let Some((doc, kind)) = held(&docs, doc, store).filter(|_| a != b) else {
                    continue;
                };
                if tracing {
                    eprintln!("TRACE live edit {doc} at {a} with {b} connected");
                }
                // Caught up first, then the edit goes out through the open session.
                let open = |store: &ferry_store::Store, peer, role| {
                    Session::new(store.clone(), peer, role, config.clone()).unwrap()
                };
                let sessions = [
                    open(store, replicas[b].store.peer_id(), Role::Initiator),
                    open(&replicas[b].store, store.peer_id(), Role::Responder),
                ];
                let (run, mut sessions) = pump(sessions, Faults::default());
                prop_assert!(run.error.is_none(), "session error: {:?}", run.error);
                if store.info(doc).is_err() {
                    continue; // the catch-up brought the peer's tombstone
                }
                if forget {
                    for session in &mut sessions {
                        prop_assert!(session.forget_idle(), "a caught-up session is busy");
                    }
                }
                counter += 1;
                edit(
                    store,
                    doc,
                    kind,
                    amount,
                    counter,
                    expected.get_mut(&doc).unwrap(),
                );
                let pushed = sessions[0].doc_changed(doc);
                prop_assert!(pushed.is_ok(), "doc_changed: {:?}", pushed);
                let (run, _) = pump(sessions, Faults::default());
                prop_assert!(run.error.is_none(), "live session error: {:?}", run.error);
            }
            Op::Delete { at, doc } => {
                let store = &replicas[at % n].store;
                let Some((doc, _)) = held(&docs, doc, store) else {
                    continue; // not here, or gone already
                };
                if tracing {
                    eprintln!("TRACE delete {doc} at {}", at % n);
                }
                store.delete(doc).unwrap();
                expected.get_mut(&doc).unwrap().deleted = true;
            }
            Op::EditShared { at, doc } => {
                let store = &replicas[at % n].store;
                let Some((doc, kind)) = held(&docs, doc, store) else {
                    continue;
                };
                if kind != DocKind::Automerge {
                    continue;
                }
                counter += 1;
                if tracing {
                    eprintln!("TRACE shared edit {doc} at {}", at % n);
                }
                store
                    .change(doc, |tx| tx.put(ROOT, "shared", counter))
                    .unwrap();
                expected.get_mut(&doc).unwrap().shared.push(counter);
            }
            Op::Sync {
                a,
                b,
                cut,
                duplicate,
            } => {
                let (a, b) = (a % n, b % n);
                if a == b {
                    continue;
                }
                if tracing {
                    eprintln!("TRACE sync {a} -> {b}");
                }
                let run = sync(
                    &replicas[a],
                    &replicas[b],
                    Faults {
                        cut_after: cut,
                        duplicate_every: duplicate,
                    },
                );
                prop_assert!(run.error.is_none(), "session error: {:?}", run.error);
            }
        }
    }
    // A final round of complete sessions, twice over every pair.
    for _ in 0..2 {
        for a in 0..n {
            for b in a + 1..n {
                if tracing {
                    eprintln!("TRACE final sync {a} -> {b}");
                }
                let run = sync(&replicas[a], &replicas[b], Faults::default());
                prop_assert!(run.error.is_none(), "final session error: {:?}", run.error);
            }
        }
    }
    // And every replica knows it: nothing is pending for any peer.
    for (i, a) in replicas.iter().enumerate() {
        for (j, b) in replicas.iter().enumerate() {
            if i == j {
                continue;
            }
            for (doc, kind) in &docs {
                if expected[doc].deleted {
                    continue;
                }
                let status = a.store.sync_status(b.store.peer_id(), *doc).unwrap();
                prop_assert_eq!(
                    status.pending,
                    0,
                    "{:?} {} pending at {} for {} after the final round",
                    kind,
                    doc,
                    i,
                    j
                );
                prop_assert!(
                    status.last_sync_millis.is_some(),
                    "{:?} {} never synced at {} for {}",
                    kind,
                    doc,
                    i,
                    j
                );
            }
        }
    }
    for (doc, kind) in &docs {
        if expected[doc].deleted {
            // Deleted somewhere: deleted everywhere, whatever was edited meanwhile.
            for (i, r) in replicas.iter().enumerate() {
                prop_assert!(r.store.info(*doc).is_err(), "{} came back at {}", doc, i);
                let gone = r.store.gone(*doc).unwrap();
                prop_assert!(
                    gone.is_some_and(|g| g.is_deleted()),
                    "{} has no tombstone at {}",
                    doc,
                    i
                );
            }
            continue;
        }
        let first = replicas[0].store.info(*doc).unwrap();
        for r in &replicas[1..] {
            let info = r.store.info(*doc).unwrap();
            prop_assert_eq!(&info.version, &first.version);
            prop_assert_eq!(info.digest, first.digest);
        }
        let e = &expected[doc];
        for r in &replicas {
            match kind {
                DocKind::Automerge => {
                    let shared = r
                        .store
                        .read(*doc, |d| {
                            d.get(ROOT, "shared").unwrap().and_then(|(v, _)| v.as_i64())
                        })
                        .unwrap();
                    // Concurrent writes to one key: one of them stays, the same everywhere (the
                    // heads are equal, checked above).
                    prop_assert_eq!(shared.is_some(), !e.shared.is_empty());
                    if let Some(v) = shared {
                        prop_assert!(e.shared.contains(&v), "{} was never written", v);
                    }
                    let keys: BTreeMap<String, i64> = r
                        .store
                        .read(*doc, |d| {
                            d.keys(ROOT)
                                .filter(|k| k != "shared")
                                .map(|k| {
                                    let v = d.get(ROOT, &k).unwrap().unwrap().0.as_i64().unwrap();
                                    (k, v)
                                })
                                .collect()
                        })
                        .unwrap();
                    prop_assert_eq!(&keys, &e.keys);
                }
                _ => match r.store.crdt(*doc).unwrap() {
                    CrdtState::GCounter(c) => prop_assert_eq!(c.value() as i128, e.added),
                    CrdtState::PNCounter(c) => prop_assert_eq!(c.value(), e.added),
                    CrdtState::LwwRegister(reg) => {
                        // The winner is one of the writes: the one with the greatest stamp.
                        prop_assert_eq!(reg.get().is_some(), !e.registers.is_empty());
                        if let Some(v) = reg.get() {
                            prop_assert!(e.registers.contains(v));
                        }
                        let winner = e.stamped.iter().max_by_key(|(stamp, _)| *stamp);
                        prop_assert_eq!(reg.get(), winner.map(|(_, value)| value));
                    }
                    CrdtState::MvRegister(reg) => {
                        prop_assert_eq!(reg.values().is_empty(), e.registers.is_empty());
                        for v in reg.values() {
                            prop_assert!(e.registers.contains(v));
                        }
                        // Exactly the writes no later write replaced.
                        let kept: std::collections::BTreeSet<&Vec<u8>> =
                            reg.values().into_iter().collect();
                        let model: std::collections::BTreeSet<&Vec<u8>> = e
                            .registers
                            .iter()
                            .filter(|v| !e.replaced.contains(*v))
                            .collect();
                        prop_assert_eq!(kept, model);
                    }
                },
            }
        }
    }
    Ok(())
}

/// The document an op's `pick` names among `docs`, if `store` holds it.
fn held(
    docs: &[(DocId, DocKind)],
    pick: usize,
    store: &ferry_store::Store,
) -> Option<(DocId, DocKind)> {
    let (doc, kind) = *docs.get(pick % docs.len().max(1))?;
    store.info(doc).is_ok().then_some((doc, kind))
}

/// Makes one edit on `store` to `doc` and records what it must lead to in `e`.
fn edit(
    store: &ferry_store::Store,
    doc: DocId,
    kind: DocKind,
    amount: u8,
    counter: i64,
    e: &mut Expected,
) {
    match kind {
        DocKind::Automerge => {
            let key = format!("e{counter}");
            store.change(doc, |tx| tx.put(ROOT, &key, counter)).unwrap();
            e.keys.insert(key, counter);
        }
        DocKind::GCounter => {
            store.increment(doc, u64::from(amount)).unwrap();
            e.added += i128::from(amount);
        }
        DocKind::PNCounter => {
            if amount.is_multiple_of(2) {
                store.increment(doc, u64::from(amount)).unwrap();
                e.added += i128::from(amount);
            } else {
                store.decrement(doc, u64::from(amount)).unwrap();
                e.added -= i128::from(amount);
            }
        }
        DocKind::LwwRegister => {
            let value = counter.to_le_bytes().to_vec();
            store.set_register(doc, value.clone()).unwrap();
            let CrdtState::LwwRegister(reg) = store.crdt(doc).unwrap() else {
                unreachable!("an lww document")
            };
            e.stamped.push((reg.stamp().unwrap(), value.clone()));
            e.registers.push(value);
        }
        DocKind::MvRegister => {
            // The values visible here now are what this write replaces (and they, in turn,
            // replaced everything else this replica has seen).
            let CrdtState::MvRegister(before) = store.crdt(doc).unwrap() else {
                unreachable!("an mv document")
            };
            e.replaced.extend(before.values().into_iter().cloned());
            let value = counter.to_le_bytes().to_vec();
            store.set_register(doc, value.clone()).unwrap();
            e.registers.push(value);
        }
    }
}
