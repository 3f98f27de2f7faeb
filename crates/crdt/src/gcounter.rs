//! A grow-only counter.

use serde::{Deserialize, Serialize};

use crate::version_vector::VersionVector;
use crate::{Crdt, ReplicaId};

/// A grow-only counter: one count per replica, whose sum is the value.
///
/// Each replica only ever raises its own slot, so merging takes the per-replica maximum and an
/// increment made anywhere is counted exactly once, however often states are exchanged.
///
/// Each slot is a `u64`; an increment that would overflow it is refused with
/// [`CounterOverflow`] rather than wrapping. The value is a `u128`, which no sum of `u64` slots
/// held in memory can overflow.
///
/// # Examples
///
/// ```
/// use ferry_crdt::{Crdt, GCounter, ReplicaId};
///
/// let (phone, laptop) = (ReplicaId::from_bytes([1; 16]), ReplicaId::from_bytes([2; 16]));
/// let mut on_phone = GCounter::new();
/// let mut on_laptop = GCounter::new();
/// on_phone.increment(phone, 3).unwrap();
/// let delta = on_laptop.increment(laptop, 2).unwrap();
///
/// on_phone.merge(&delta);
/// assert_eq!(on_phone.value(), 5);
/// assert_eq!(on_phone.count(laptop), 2);
/// assert!(on_phone.increment(phone, u64::MAX).is_err());
/// ```
#[derive(Clone, Debug, Default, Deserialize, Eq, Hash, PartialEq, Serialize)]
pub struct GCounter {
    counts: VersionVector,
}

impl GCounter {
    /// A counter at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `n` to `replica`'s slot and returns the delta: a counter holding just that slot.
    ///
    /// Only the replica itself may call this for its own id. Adding zero changes nothing and
    /// returns an empty delta.
    pub fn increment(&mut self, replica: ReplicaId, n: u64) -> Result<GCounter, CounterOverflow> {
        let delta = self.increment_delta(replica, n)?;
        self.merge(&delta);
        Ok(delta)
    }

    /// The delta that [`GCounter::increment`] would apply, without applying it.
    ///
    /// Making the delta and merging it are separate so a caller can first store the delta
    /// durably and only then apply it.
    pub fn increment_delta(&self, replica: ReplicaId, n: u64) -> Result<GCounter, CounterOverflow> {
        let mut delta = GCounter::new();
        if n > 0 {
            let current = self.counts.get(&replica);
            let count = current.checked_add(n).ok_or(CounterOverflow {
                replica,
                current,
                n,
            })?;
            delta.counts.raise(replica, count);
        }
        Ok(delta)
    }

    /// The counter's value: the sum of every replica's slot.
    pub fn value(&self) -> u128 {
        self.counts
            .iter()
            .map(|(_, count)| u128::from(*count))
            .sum()
    }

    /// `replica`'s slot: everything it has added.
    pub fn count(&self, replica: ReplicaId) -> u64 {
        self.counts.get(&replica)
    }

    /// Every replica with a nonzero slot, and its slot, in replica order.
    pub fn counts(&self) -> impl Iterator<Item = (ReplicaId, u64)> + '_ {
        self.counts
            .iter()
            .map(|(replica, count)| (*replica, *count))
    }

    /// Whether no replica has added anything.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }
}

impl Crdt for GCounter {
    fn merge(&mut self, other: &Self) -> bool {
        self.counts.merge(&other.counts)
    }
}

/// An increment would take a replica's slot past `u64::MAX`; nothing was changed.
///
/// # Examples
///
/// ```
/// use ferry_crdt::{GCounter, ReplicaId};
///
/// let a = ReplicaId::from_bytes([1; 16]);
/// let mut counter = GCounter::new();
/// counter.increment(a, u64::MAX).unwrap();
/// let err = counter.increment(a, 1).unwrap_err();
/// assert_eq!((err.current, err.n), (u64::MAX, 1));
/// assert_eq!(counter.count(a), u64::MAX); // unchanged
/// ```
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
#[error("incrementing replica {replica}'s count {current} by {n} overflows")]
pub struct CounterOverflow {
    /// The replica whose slot would overflow.
    pub replica: ReplicaId,
    /// Its slot now.
    pub current: u64,
    /// The increment that was refused.
    pub n: u64,
}
