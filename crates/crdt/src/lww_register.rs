//! A last-writer-wins register.

use std::cmp::Ordering;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{Clock, Crdt, Timestamp, codec};

/// A register holding one value, stamped with a hybrid-clock [`Timestamp`]; merge keeps the
/// value with the greater stamp.
///
/// Stamps are totally ordered by `(millis, counter, replica)`, so two replicas writing in the
/// same millisecond still agree on the winner. Only a forged state can carry two different
/// values under one stamp; even then every replica keeps the same one (the value whose canonical
/// encoding is greater), so replicas never disagree.
///
/// A concurrent write that loses is dropped: that is what last-writer-wins means. Use
/// [`MvRegister`](crate::MvRegister) where the user must see both values.
///
/// # Examples
///
/// ```
/// use ferry_crdt::{Clock, Crdt, LwwRegister, ReplicaId};
///
/// let mut phone = Clock::new(ReplicaId::from_bytes([1; 16]));
/// let mut laptop = Clock::new(ReplicaId::from_bytes([2; 16]));
/// let mut x = LwwRegister::new();
/// let mut y = LwwRegister::new();
///
/// x.set("draft".to_string(), &mut phone, 1_000);
/// let delta = y.set("final".to_string(), &mut laptop, 1_000); // same millisecond
/// x.merge(&delta);
/// y.merge(&x);
/// assert_eq!(x, y); // both keep the laptop's write: its replica id is greater
/// assert_eq!(x.get().map(String::as_str), Some("final"));
/// ```
#[derive(Clone, Debug, Deserialize, Eq, Hash, PartialEq, Serialize)]
pub struct LwwRegister<T> {
    entry: Option<Stamped<T>>,
}

#[derive(Clone, Debug, Deserialize, Eq, Hash, PartialEq, Serialize)]
struct Stamped<T> {
    stamp: Timestamp,
    value: T,
}

impl<T> Default for LwwRegister<T> {
    fn default() -> Self {
        Self { entry: None }
    }
}

impl<T> LwwRegister<T> {
    /// A register that has never been written.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current value, if any write has reached this replica.
    pub fn get(&self) -> Option<&T> {
        self.entry.as_ref().map(|e| &e.value)
    }

    /// The stamp of the current value.
    pub fn stamp(&self) -> Option<Timestamp> {
        self.entry.as_ref().map(|e| e.stamp)
    }
}

impl<T: Clone> LwwRegister<T> {
    /// Writes `value` with a stamp from `clock` at wall time `wall_millis`; returns the delta
    /// (for this type, the whole new state, which is one stamped value).
    ///
    /// The clock first observes the current stamp, so the new write wins over everything this
    /// replica has seen, even if its wall clock is behind the last writer's.
    pub fn set(&mut self, value: T, clock: &mut Clock, wall_millis: u64) -> LwwRegister<T> {
        if let Some(current) = self.stamp() {
            clock.observe(current, wall_millis);
        }
        let stamp = clock.now(wall_millis);
        self.entry = Some(Stamped { stamp, value });
        self.clone()
    }
}

impl<T> Crdt for LwwRegister<T>
where
    T: Clone + Eq + Serialize + DeserializeOwned,
{
    fn merge(&mut self, other: &Self) -> bool {
        let take = other
            .entry
            .as_ref()
            .is_some_and(|theirs| self.loses_to(theirs));
        if take {
            self.entry.clone_from(&other.entry);
        }
        take
    }

    fn merge_owned(&mut self, other: Self) -> bool {
        let take = other
            .entry
            .as_ref()
            .is_some_and(|theirs| self.loses_to(theirs));
        if take {
            self.entry = other.entry;
        }
        take
    }
}

impl<T: Eq + Serialize> LwwRegister<T> {
    /// Whether `theirs` replaces what this register holds.
    fn loses_to(&self, theirs: &Stamped<T>) -> bool {
        match &self.entry {
            None => true,
            Some(ours) => match theirs.stamp.cmp(&ours.stamp) {
                Ordering::Greater => true,
                Ordering::Less => false,
                Ordering::Equal => {
                    theirs.value != ours.value && wins_tie(&theirs.value, &ours.value)
                }
            },
        }
    }
}

/// Whether `a` beats `b` under one stamp: the greater canonical encoding wins. A value that
/// cannot be encoded never wins, so the register keeps what it has.
fn wins_tie<T: Serialize>(a: &T, b: &T) -> bool {
    match (codec::encode(a), codec::encode(b)) {
        (Ok(a), Ok(b)) => a > b,
        _ => false,
    }
}
