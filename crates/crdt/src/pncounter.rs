//! A counter that goes up and down.

use serde::{Deserialize, Serialize};

use crate::{CounterOverflow, Crdt, GCounter, ReplicaId};

/// A counter with increments and decrements, built from two grow-only halves.
///
/// The value is increments minus decrements, an `i128`. Each half refuses to overflow a
/// replica's `u64` slot, as [`GCounter`] does.
///
/// # Examples
///
/// ```
/// use ferry_crdt::{Crdt, PNCounter, ReplicaId};
///
/// let (a, b) = (ReplicaId::from_bytes([1; 16]), ReplicaId::from_bytes([2; 16]));
/// let mut x = PNCounter::new();
/// let mut y = PNCounter::new();
/// x.increment(a, 10).unwrap();
/// let delta = y.decrement(b, 4).unwrap();
/// x.merge(&delta);
/// assert_eq!(x.value(), 6);
/// ```
#[derive(Clone, Debug, Default, Deserialize, Eq, Hash, PartialEq, Serialize)]
pub struct PNCounter {
    increments: GCounter,
    decrements: GCounter,
}

impl PNCounter {
    /// A counter at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `n` on behalf of `replica`; returns the delta.
    pub fn increment(&mut self, replica: ReplicaId, n: u64) -> Result<PNCounter, CounterOverflow> {
        let delta = self.increment_delta(replica, n)?;
        self.merge(&delta);
        Ok(delta)
    }

    /// Subtracts `n` on behalf of `replica`; returns the delta.
    pub fn decrement(&mut self, replica: ReplicaId, n: u64) -> Result<PNCounter, CounterOverflow> {
        let delta = self.decrement_delta(replica, n)?;
        self.merge(&delta);
        Ok(delta)
    }

    /// The delta [`PNCounter::increment`] would apply, without applying it.
    pub fn increment_delta(
        &self,
        replica: ReplicaId,
        n: u64,
    ) -> Result<PNCounter, CounterOverflow> {
        Ok(PNCounter {
            increments: self.increments.increment_delta(replica, n)?,
            decrements: GCounter::new(),
        })
    }

    /// The delta [`PNCounter::decrement`] would apply, without applying it.
    pub fn decrement_delta(
        &self,
        replica: ReplicaId,
        n: u64,
    ) -> Result<PNCounter, CounterOverflow> {
        Ok(PNCounter {
            increments: GCounter::new(),
            decrements: self.decrements.increment_delta(replica, n)?,
        })
    }

    /// Increments minus decrements.
    pub fn value(&self) -> i128 {
        // Each half is a sum of u64 slots, far below 2^127 for any map that fits in memory.
        let up = i128::try_from(self.increments.value()).unwrap_or(i128::MAX);
        let down = i128::try_from(self.decrements.value()).unwrap_or(i128::MAX);
        up - down
    }

    /// The grow-only half holding the increments.
    pub fn increments(&self) -> &GCounter {
        &self.increments
    }

    /// The grow-only half holding the decrements.
    pub fn decrements(&self) -> &GCounter {
        &self.decrements
    }
}

impl Crdt for PNCounter {
    fn merge(&mut self, other: &Self) -> bool {
        let up = self.increments.merge(&other.increments);
        let down = self.decrements.merge(&other.decrements);
        up || down
    }
}
