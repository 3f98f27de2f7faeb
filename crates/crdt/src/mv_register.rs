//! A multi-value register: concurrent writes are all kept.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::version_vector::VersionVector;
use crate::{CounterOverflow, Crdt, ReplicaId};

/// The identity of one write: the replica that made it and that replica's count of writes.
///
/// # Examples
///
/// ```
/// use ferry_crdt::{Dot, MvRegister, ReplicaId};
///
/// let a = ReplicaId::from_bytes([1; 16]);
/// let mut register = MvRegister::new();
/// register.set(a, 10).unwrap();
/// register.set(a, 11).unwrap();
/// let dots: Vec<Dot> = register.entries().map(|(dot, _)| dot).collect();
/// assert_eq!(dots, [Dot { replica: a, counter: 2 }]); // a's second write replaced its first
/// ```
#[derive(Clone, Copy, Debug, Deserialize, Eq, Hash, Ord, PartialEq, PartialOrd, Serialize)]
pub struct Dot {
    /// The writer.
    pub replica: ReplicaId,
    /// The writer's write count at this write, from 1.
    pub counter: u64,
}

/// A multi-value register: a write replaces every value its writer had seen, and writes made
/// concurrently are all kept until a later write that has seen them.
///
/// This is what an app uses for a field where a silent choice would lose work: when two
/// devices change it offline, [`MvRegister::values`] returns both, the app shows them, and the
/// user's merged answer, written with [`MvRegister::set`], replaces both everywhere.
///
/// The state is the set of surviving writes, each named by its [`Dot`], plus a version vector of
/// every write seen. Merge keeps a write if both sides hold it, or if the other side has not seen
/// it; that is the causal-context join of Almeida et al.'s delta-state CRDTs.
///
/// # Examples
///
/// ```
/// use ferry_crdt::{Crdt, MvRegister, ReplicaId};
///
/// let (a, b) = (ReplicaId::from_bytes([1; 16]), ReplicaId::from_bytes([2; 16]));
/// let mut on_a = MvRegister::new();
/// let mut on_b = MvRegister::new();
///
/// // Offline, both devices answer the same question.
/// on_a.set(a, "3 floors".to_string()).unwrap();
/// let delta = on_b.set(b, "4 floors".to_string()).unwrap();
/// on_a.merge(&delta);
/// assert_eq!(on_a.values(), ["3 floors", "4 floors"]);
///
/// // The user settles it on A; once B hears of that, B agrees.
/// let settled = on_a.set(a, "4 floors (checked)".to_string()).unwrap();
/// on_b.merge(&settled);
/// assert_eq!(on_b.values(), ["4 floors (checked)"]);
/// ```
#[derive(Clone, Debug, Deserialize, Eq, Hash, PartialEq, Serialize)]
#[serde(try_from = "Unchecked<T>", bound(deserialize = "T: Deserialize<'de>"))]
pub struct MvRegister<T> {
    entries: BTreeMap<Dot, T>,
    context: VersionVector,
}

/// The wire shape of a register, before its invariants are checked.
#[derive(Deserialize)]
struct Unchecked<T> {
    entries: BTreeMap<Dot, T>,
    context: VersionVector,
}

impl<T> TryFrom<Unchecked<T>> for MvRegister<T> {
    type Error = &'static str;

    fn try_from(raw: Unchecked<T>) -> Result<Self, Self::Error> {
        let mut writers = Vec::with_capacity(raw.entries.len());
        for dot in raw.entries.keys() {
            if dot.counter == 0 || dot.counter > raw.context.get(&dot.replica) {
                return Err("a write is not covered by the register's version vector");
            }
            writers.push(dot.replica);
        }
        // Dots are sorted by replica first, so two writes of one replica are neighbours.
        if writers.windows(2).any(|w| w[0] == w[1]) {
            return Err("two surviving writes from one replica");
        }
        Ok(Self {
            entries: raw.entries,
            context: raw.context,
        })
    }
}

impl<T> Default for MvRegister<T> {
    fn default() -> Self {
        Self {
            entries: BTreeMap::new(),
            context: VersionVector::default(),
        }
    }
}

impl<T> MvRegister<T> {
    /// A register that has never been written.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every concurrent value, in the order of their writers' ids; empty if never written.
    pub fn values(&self) -> Vec<&T> {
        self.entries.values().collect()
    }

    /// Every concurrent value with the [`Dot`] naming its write.
    pub fn entries(&self) -> impl Iterator<Item = (Dot, &T)> {
        self.entries.iter().map(|(dot, value)| (*dot, value))
    }

    /// Whether concurrent writes are waiting for someone to settle them.
    pub fn is_conflicted(&self) -> bool {
        self.entries.len() > 1
    }

    /// How many writes this replica has seen, in all.
    pub fn writes_seen(&self) -> u64 {
        self.context.iter().map(|(_, count)| *count).sum()
    }
}

impl<T> MvRegister<T>
where
    T: Clone + Eq + Serialize + DeserializeOwned,
{
    /// Writes `value` on behalf of `replica`, replacing every value now held; returns the delta.
    ///
    /// The delta holds the new write and a version vector naming just the writes it replaces,
    /// so it stays small however many replicas the register has seen.
    ///
    /// Fails only if `replica` has made `u64::MAX` writes to this register.
    pub fn set(&mut self, replica: ReplicaId, value: T) -> Result<MvRegister<T>, CounterOverflow> {
        let delta = self.set_delta(replica, value)?;
        self.merge(&delta);
        Ok(delta)
    }

    /// The delta [`MvRegister::set`] would apply, without applying it.
    pub fn set_delta(
        &self,
        replica: ReplicaId,
        value: T,
    ) -> Result<MvRegister<T>, CounterOverflow> {
        let current = self.context.get(&replica);
        let counter = current.checked_add(1).ok_or(CounterOverflow {
            replica,
            current,
            n: 1,
        })?;
        // A replica's writes follow one another, so naming the latest replaced write of each
        // replica also names every earlier one: a version vector is enough.
        let mut context = VersionVector::default();
        for dot in self.entries.keys() {
            context.raise(dot.replica, dot.counter);
        }
        context.raise(replica, counter);
        let dot = Dot { replica, counter };
        Ok(MvRegister {
            entries: BTreeMap::from([(dot, value)]),
            context,
        })
    }
}

impl<T> Crdt for MvRegister<T>
where
    T: Clone + Eq + Serialize + DeserializeOwned,
{
    fn merge(&mut self, other: &Self) -> bool {
        let mut changed = self.drop_overwritten(other);
        for (dot, value) in &other.entries {
            if !self.entries.contains_key(dot) && !covers(&self.context, dot) {
                self.entries.insert(*dot, value.clone());
                changed = true;
            }
        }
        changed |= self.context.merge(&other.context);
        changed
    }

    fn merge_owned(&mut self, other: Self) -> bool {
        let mut changed = self.drop_overwritten(&other);
        for (dot, value) in other.entries {
            if !self.entries.contains_key(&dot) && !covers(&self.context, &dot) {
                self.entries.insert(dot, value);
                changed = true;
            }
        }
        changed |= self.context.merge(&other.context);
        changed
    }
}

impl<T> MvRegister<T> {
    /// The first half of a merge: drops the writes `other` has seen and replaced. Returns
    /// whether any was dropped.
    fn drop_overwritten(&mut self, other: &Self) -> bool {
        let before = self.entries.len();
        self.entries
            .retain(|dot, _| other.entries.contains_key(dot) || !covers(&other.context, dot));
        self.entries.len() != before
    }
}

fn covers(context: &VersionVector, dot: &Dot) -> bool {
    dot.counter <= context.get(&dot.replica)
}
