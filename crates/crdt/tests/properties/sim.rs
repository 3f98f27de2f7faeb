//! Random replica histories: local writes, full-state merges and delta deliveries (duplicated,
//! late, out of order), with a causal-history model to check the results against.

use std::collections::BTreeSet;
use std::fmt::Debug;

use ferry_crdt::{Clock, Crdt, GCounter, LwwRegister, MvRegister, PNCounter, ReplicaId};
use proptest::prelude::*;

/// A CRDT type under test, with a strategy for its local operations.
pub(crate) trait Subject: Crdt + Debug + Default {
    /// One local operation's arguments.
    type Param: Clone + Debug;

    fn param() -> BoxedStrategy<Self::Param>;

    /// Applies a local operation; returns its delta, or `None` if the type refused it.
    fn write(
        &mut self,
        me: ReplicaId,
        clock: &mut Clock,
        wall: u64,
        p: &Self::Param,
    ) -> Option<Self>;
}

fn amount() -> impl Strategy<Value = u64> {
    // Mostly small, sometimes near the top so overflow refusal is exercised.
    prop_oneof![9 => 0..1_000u64, 1 => (u64::MAX - 3)..=u64::MAX]
}

impl Subject for GCounter {
    type Param = u64;

    fn param() -> BoxedStrategy<u64> {
        amount().boxed()
    }

    fn write(&mut self, me: ReplicaId, _: &mut Clock, _: u64, n: &u64) -> Option<Self> {
        self.increment(me, *n).ok()
    }
}

impl Subject for PNCounter {
    type Param = (bool, u64);

    fn param() -> BoxedStrategy<(bool, u64)> {
        (any::<bool>(), amount()).boxed()
    }

    fn write(&mut self, me: ReplicaId, _: &mut Clock, _: u64, p: &(bool, u64)) -> Option<Self> {
        match p {
            (true, n) => self.increment(me, *n).ok(),
            (false, n) => self.decrement(me, *n).ok(),
        }
    }
}

impl Subject for LwwRegister<String> {
    type Param = u8;

    fn param() -> BoxedStrategy<u8> {
        // Few distinct values, so equal values under different stamps happen too.
        (0..4u8).boxed()
    }

    fn write(&mut self, _: ReplicaId, clock: &mut Clock, wall: u64, v: &u8) -> Option<Self> {
        Some(self.set(format!("v{v}"), clock, wall))
    }
}

impl Subject for MvRegister<String> {
    type Param = u8;

    fn param() -> BoxedStrategy<u8> {
        (0..4u8).boxed()
    }

    fn write(&mut self, me: ReplicaId, _: &mut Clock, _: u64, v: &u8) -> Option<Self> {
        self.set(me, format!("v{v}")).ok()
    }
}

/// One step of a history. Indices are taken modulo the number of replicas or deltas.
#[derive(Clone, Debug)]
pub(crate) enum Step<P> {
    /// A local write at a replica, with its wall clock (a small range: ties and jumps back).
    Write { at: usize, wall: u64, param: P },
    /// A replica merges another's whole state.
    Full { from: usize, to: usize },
    /// A replica merges a delta made earlier, perhaps again, perhaps out of order.
    Delta { pick: usize, to: usize },
}

pub(crate) fn steps<P: Clone + Debug + 'static>(
    param: BoxedStrategy<P>,
) -> impl Strategy<Value = Vec<Step<P>>> {
    let step = prop_oneof![
        4 => (0..6usize, 0..20u64, param).prop_map(|(at, wall, param)| Step::Write { at, wall, param }),
        2 => (0..6usize, 0..6usize).prop_map(|(from, to)| Step::Full { from, to }),
        3 => (any::<usize>(), 0..6usize).prop_map(|(pick, to)| Step::Delta { pick, to }),
    ];
    prop::collection::vec(step, 0..48)
}

/// A write that happened, for the models.
#[derive(Clone, Debug)]
pub(crate) struct Write<T: Subject> {
    pub(crate) param: T::Param,
    pub(crate) delta: T,
    /// Every earlier write its replica had seen when it wrote: the writes it overwrote.
    pub(crate) seen: BTreeSet<usize>,
}

/// Replicas of one type living through a history.
#[derive(Debug)]
pub(crate) struct Sim<T: Subject> {
    pub(crate) ids: Vec<ReplicaId>,
    pub(crate) replicas: Vec<T>,
    pub(crate) clocks: Vec<Clock>,
    pub(crate) writes: Vec<Write<T>>,
    /// Per replica: the writes it has seen, by index into `writes`.
    pub(crate) seen: Vec<BTreeSet<usize>>,
}

pub(crate) fn replica_id(i: usize) -> ReplicaId {
    // Ids do not sort in replica order, so tie-breaks are not a function of the index.
    let mut bytes = [0u8; 16];
    bytes[0] = (i as u8).wrapping_mul(97) ^ 0x5a;
    bytes[15] = i as u8;
    ReplicaId::from_bytes(bytes)
}

impl<T: Subject> Sim<T> {
    pub(crate) fn new(n: usize) -> Self {
        let ids: Vec<_> = (0..n).map(replica_id).collect();
        Self {
            clocks: ids.iter().map(|id| Clock::new(*id)).collect(),
            replicas: (0..n).map(|_| T::default()).collect(),
            seen: vec![BTreeSet::new(); n],
            writes: Vec::new(),
            ids,
        }
    }

    /// Runs the steps, checking the delta law at every write: the state before, merged with
    /// the delta, is the state after; and so is any other replica's state joined with both.
    pub(crate) fn run(&mut self, steps: &[Step<T::Param>]) -> Result<(), TestCaseError> {
        let n = self.replicas.len();
        for step in steps {
            match step {
                Step::Write { at, wall, param } => {
                    let at = at % n;
                    let before = self.replicas[at].clone();
                    let Some(delta) =
                        self.replicas[at].write(self.ids[at], &mut self.clocks[at], *wall, param)
                    else {
                        prop_assert_eq!(
                            &self.replicas[at],
                            &before,
                            "a refused write changed state"
                        );
                        continue;
                    };
                    let after = &self.replicas[at];
                    let mut via_delta = before.clone();
                    via_delta.merge(&delta);
                    prop_assert_eq!(&via_delta, after, "before ⊔ delta != after");

                    let other = &self.replicas[(at + 1) % n];
                    let mut x_full = other.clone();
                    x_full.merge(&before);
                    let mut x_delta = x_full.clone();
                    x_full.merge(after);
                    x_delta.merge(&delta);
                    prop_assert_eq!(x_delta, x_full, "(x ⊔ before) ⊔ delta != x ⊔ after");

                    let seen = self.seen[at].clone();
                    self.seen[at].insert(self.writes.len());
                    self.writes.push(Write {
                        param: param.clone(),
                        delta,
                        seen,
                    });
                }
                Step::Full { from, to } => {
                    let (from, to) = (from % n, to % n);
                    let state = self.replicas[from].clone();
                    self.replicas[to].merge(&state);
                    let seen = self.seen[from].clone();
                    self.seen[to].extend(seen);
                }
                Step::Delta { pick, to } => {
                    if self.writes.is_empty() {
                        continue;
                    }
                    let w = pick % self.writes.len();
                    let to = to % n;
                    let write = &self.writes[w];
                    self.replicas[to].merge(&write.delta);
                    let learned: Vec<_> = write.seen.iter().copied().chain([w]).collect();
                    self.seen[to].extend(learned);
                }
            }
        }
        Ok(())
    }

    /// Merges every replica into one state, in the given order, and hands that to everyone.
    pub(crate) fn settle(&mut self, order: &[usize]) -> T {
        let n = self.replicas.len();
        let mut all = T::default();
        for i in order {
            all.merge(&self.replicas[i % n]);
        }
        for replica in &mut self.replicas {
            replica.merge(&all);
        }
        all
    }

    /// Writes no other write overwrote: what a multi-value register must end up holding.
    pub(crate) fn maximal_writes(&self) -> Vec<usize> {
        let overwritten: BTreeSet<usize> = self
            .writes
            .iter()
            .flat_map(|w| w.seen.iter().copied())
            .collect();
        (0..self.writes.len())
            .filter(|w| !overwritten.contains(w))
            .collect()
    }
}
