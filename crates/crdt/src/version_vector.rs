//! Per-replica event counts, shared by the grow-only counter and the multi-value register.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use serde::{Deserialize, Serialize};

use crate::ReplicaId;

/// A map from replica to a positive count; a replica missing from it counts zero.
///
/// Zero counts are never stored, so every state has one representation and one encoding.
#[derive(Clone, Debug, Default, Eq, Hash, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "BTreeMap<ReplicaId, u64>")]
pub(crate) struct VersionVector(BTreeMap<ReplicaId, u64>);

impl VersionVector {
    pub(crate) fn get(&self, replica: &ReplicaId) -> u64 {
        self.0.get(replica).copied().unwrap_or(0)
    }

    /// Raises `replica`'s count to `count` if it is lower. Returns whether it changed.
    pub(crate) fn raise(&mut self, replica: ReplicaId, count: u64) -> bool {
        if count == 0 {
            return false;
        }
        match self.0.entry(replica) {
            Entry::Vacant(slot) => {
                slot.insert(count);
                true
            }
            Entry::Occupied(mut slot) if *slot.get() < count => {
                slot.insert(count);
                true
            }
            Entry::Occupied(_) => false,
        }
    }

    /// Takes the per-replica maximum. Returns whether `self` changed.
    pub(crate) fn merge(&mut self, other: &Self) -> bool {
        let mut changed = false;
        for (replica, count) in &other.0 {
            changed |= self.raise(*replica, *count);
        }
        changed
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&ReplicaId, &u64)> {
        self.0.iter()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl TryFrom<BTreeMap<ReplicaId, u64>> for VersionVector {
    type Error = &'static str;

    fn try_from(map: BTreeMap<ReplicaId, u64>) -> Result<Self, Self::Error> {
        if map.values().any(|count| *count == 0) {
            return Err("a stored count is zero");
        }
        Ok(Self(map))
    }
}
