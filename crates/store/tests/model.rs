//! The store against a plain in-memory model.
//!
//! Random sequences of create, local change, remote changes, compact, delete, and close and
//! reopen run against a store and against in-memory documents that receive the same operations
//! and never touch a disk. After every reopen, and at the end, every document must have the
//! same contents, heads and change count as its model. After every operation, what
//! [`Store::info`] says of each document (kept in memory or read from disk) must match its
//! model, and a deleted document must be gone.
//!
//! `PROPTEST_CASES` sets the number of cases (default 48, which CI runs).

// Helpers outside #[test] functions fail loudly too; that is what a test wants.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::time::Duration;

use automerge::transaction::Transactable;
use automerge::{ActorId, Automerge, ROOT, ReadDoc, ScalarValue, Value};
use ferry_crdt::{Crdt, GCounter, ReplicaId};
use ferry_store::{
    CrdtState, DocId, DocKind, Durability, Origin, PeerId, Store, StoreConfig, Version,
};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Create {
        counter: bool,
    },
    Local {
        doc: usize,
        key: u8,
        value: i64,
    },
    Remote {
        doc: usize,
        key: u8,
        value: i64,
        pull: bool,
    },
    Compact {
        doc: usize,
    },
    Delete {
        doc: usize,
    },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => any::<bool>().prop_map(|counter| Op::Create { counter }),
        6 => (any::<usize>(), 0..4u8, any::<i64>())
            .prop_map(|(doc, key, value)| Op::Local { doc, key, value }),
        4 => (any::<usize>(), 0..4u8, any::<i64>(), any::<bool>())
            .prop_map(|(doc, key, value, pull)| Op::Remote { doc, key, value, pull }),
        1 => any::<usize>().prop_map(|doc| Op::Compact { doc }),
        1 => any::<usize>().prop_map(|doc| Op::Delete { doc }),
        2 => Just(Op::Reopen),
    ]
}

/// What a document should be, kept in memory only.
#[allow(clippy::large_enum_variant)] // a handful of them, in a test
enum Model {
    /// The document as the store's replica sees it, and a peer's copy that makes remote
    /// changes and now and then catches up with it.
    Automerge { local: Automerge, peer: Automerge },
    /// The counter, and a peer's counter merged in now and then.
    Counter { local: GCounter, peer: GCounter },
}

struct Run {
    dir: tempfile::TempDir,
    config: StoreConfig,
    store: Option<Store>,
    docs: BTreeMap<DocId, Model>,
    deleted: Vec<DocId>,
    replica: ReplicaId,
    peer: PeerId,
}

impl Run {
    fn new(config: StoreConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with(dir.path(), config.clone()).unwrap();
        let replica = store.replica_id();
        Self {
            dir,
            config,
            store: Some(store),
            docs: BTreeMap::new(),
            deleted: Vec::new(),
            replica,
            peer: PeerId::from_bytes([0xee; 16]),
        }
    }

    fn store(&self) -> &Store {
        self.store.as_ref().unwrap()
    }

    fn pick(&self, index: usize) -> Option<DocId> {
        let n = self.docs.len();
        (n > 0).then(|| *self.docs.keys().nth(index % n).unwrap())
    }

    fn apply(&mut self, op: Op) -> Result<(), TestCaseError> {
        match op {
            Op::Create { counter } => {
                let kind = if counter {
                    DocKind::GCounter
                } else {
                    DocKind::Automerge
                };
                let doc = self.store().create(kind).unwrap();
                let model = if counter {
                    Model::Counter {
                        local: GCounter::new(),
                        peer: GCounter::new(),
                    }
                } else {
                    let actor = ActorId::from(*self.replica.as_bytes());
                    Model::Automerge {
                        local: Automerge::new().with_actor(actor),
                        peer: Automerge::new().with_actor(ActorId::from([0xee; 16])),
                    }
                };
                self.docs.insert(doc, model);
            }
            Op::Local { doc, key, value } => {
                let Some(doc) = self.pick(doc) else {
                    return Ok(());
                };
                let replica = self.replica;
                let store = self.store.as_ref().unwrap();
                match self.docs.get_mut(&doc).unwrap() {
                    Model::Automerge { local, .. } => {
                        let key = format!("k{key}");
                        store.change(doc, |tx| tx.put(ROOT, &key, value)).unwrap();
                        local.transact(|tx| tx.put(ROOT, &key, value)).unwrap();
                    }
                    Model::Counter { local, .. } => {
                        let n = value.unsigned_abs() % 1000;
                        store.increment(doc, n).unwrap();
                        local.increment(replica, n).unwrap();
                    }
                }
            }
            Op::Remote {
                doc,
                key,
                value,
                pull,
            } => {
                let Some(doc) = self.pick(doc) else {
                    return Ok(());
                };
                let origin = Origin::Remote(self.peer);
                let store = self.store.as_ref().unwrap();
                match self.docs.get_mut(&doc).unwrap() {
                    Model::Automerge { local, peer } => {
                        if pull {
                            peer.merge(&mut local.clone()).unwrap();
                        }
                        let key = format!("k{key}");
                        peer.transact(|tx| tx.put(ROOT, &key, value)).unwrap();
                        // Everything the peer has, as sync might resend it: what the store
                        // already holds is skipped.
                        let changes = peer.get_changes(&[]);
                        let heads = store.apply_changes(doc, origin, changes.clone()).unwrap();
                        local.apply_changes(changes).unwrap();
                        prop_assert_eq!(heads, local.get_heads());
                    }
                    Model::Counter { local, peer } => {
                        if pull {
                            peer.merge(local);
                        }
                        let them = ReplicaId::from_bytes([0xee; 16]);
                        peer.increment(them, value.unsigned_abs() % 1000).unwrap();
                        let bytes = ferry_crdt::encode(peer).unwrap();
                        let digest = store.merge_state(doc, origin, &bytes).unwrap();
                        local.merge(peer);
                        prop_assert_eq!(digest, local.digest().unwrap());
                    }
                }
            }
            Op::Compact { doc } => {
                let Some(doc) = self.pick(doc) else {
                    return Ok(());
                };
                let before = self.store().info(doc).unwrap();
                self.store().compact(doc).unwrap();
                let after = self.store().info(doc).unwrap();
                prop_assert_eq!(before.version, after.version);
                prop_assert!(after.stored_bytes > 0 || before.stored_bytes == 0);
            }
            Op::Delete { doc } => {
                let Some(doc) = self.pick(doc) else {
                    return Ok(());
                };
                self.store().delete(doc).unwrap();
                self.docs.remove(&doc);
                self.deleted.push(doc);
            }
            Op::Reopen => {
                self.store = None;
                let store = Store::open_with(self.dir.path(), self.config.clone()).unwrap();
                prop_assert_eq!(store.replica_id(), self.replica);
                self.store = Some(store);
                self.check()?;
            }
        }
        Ok(())
    }

    /// What the store says of each document without loading it is its model's version and
    /// change count; a deleted document is not there.
    fn check_info(&self) -> Result<(), TestCaseError> {
        let store = self.store();
        for (doc, model) in &self.docs {
            let info = store.info(*doc).unwrap();
            match model {
                Model::Automerge { local, .. } => {
                    prop_assert_eq!(&info.version, &Version::Heads(local.get_heads()));
                    prop_assert_eq!(info.changes as usize, local.get_changes(&[]).len());
                }
                Model::Counter { local, .. } => {
                    prop_assert_eq!(info.digest, local.digest().unwrap());
                }
            }
        }
        for doc in &self.deleted {
            prop_assert!(store.info(*doc).is_err(), "deleted {doc} still has info");
        }
        Ok(())
    }

    /// Every document in the store is its model: same contents, heads, change count.
    fn check(&self) -> Result<(), TestCaseError> {
        let store = self.store();
        let listed = store.list().unwrap();
        let expected: Vec<DocId> = self.docs.keys().copied().collect();
        prop_assert_eq!(listed, expected);
        for (doc, model) in &self.docs {
            let info = store.info(*doc).unwrap();
            match model {
                Model::Automerge { local, .. } => {
                    let (stored, heads) =
                        store.read(*doc, |d| (contents(d), d.get_heads())).unwrap();
                    prop_assert_eq!(stored, contents(local));
                    prop_assert_eq!(&heads, &local.get_heads());
                    prop_assert_eq!(info.changes as usize, local.get_changes(&[]).len());
                }
                Model::Counter { local, .. } => {
                    let CrdtState::GCounter(counter) = store.crdt(*doc).unwrap() else {
                        return Err(TestCaseError::fail("not a counter"));
                    };
                    prop_assert_eq!(&counter, local);
                    prop_assert_eq!(info.digest, local.digest().unwrap());
                }
            }
        }
        Ok(())
    }
}

fn contents(doc: &Automerge) -> BTreeMap<String, i64> {
    doc.keys(ROOT)
        .map(|key| {
            let value = match doc.get(ROOT, &key).unwrap() {
                Some((Value::Scalar(s), _)) => match s.as_ref() {
                    ScalarValue::Int(n) => *n,
                    other => panic!("unexpected {other:?}"),
                },
                other => panic!("unexpected {other:?}"),
            };
            (key, value)
        })
        .collect()
}

fn config() -> impl Strategy<Value = StoreConfig> {
    (
        1..4usize,
        1..4usize,
        prop_oneof![Just(0u64), Just(200), Just(64 * 1024)],
        any::<bool>(),
    )
        .prop_map(|(cache, metas, compact_min_bytes, batched)| StoreConfig {
            durability: if batched {
                Durability::Batched {
                    interval: Duration::from_millis(1),
                }
            } else {
                Durability::Immediate
            },
            cache_docs: NonZeroUsize::new(cache).unwrap(),
            cache_metas: NonZeroUsize::new(metas).unwrap(),
            compact_min_bytes,
            ..StoreConfig::default()
        })
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn the_store_matches_its_model_across_reopens(
        config in config(),
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        // A case that never creates a document checks nothing: it does not count.
        prop_assume!(ops.iter().any(|op| matches!(op, Op::Create { .. })));
        let mut run = Run::new(config);
        for op in ops {
            run.apply(op)?;
            run.check_info()?;
        }
        run.apply(Op::Reopen)?;
    }
}
