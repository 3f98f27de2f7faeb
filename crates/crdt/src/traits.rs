//! The one trait every state-based CRDT here implements, and the laws it must keep.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::{self, DecodeError, Digest, EncodeError};

/// A state-based CRDT (a join-semilattice): replicas that exchange states in any order, any
/// number of times, end in the same state.
///
/// # Laws
///
/// For all states `a`, `b` and `c` of a type, with `a ⊔ b` written for `a.merge(&b)`:
///
/// - **commutative**: `a ⊔ b == b ⊔ a`;
/// - **associative**: `(a ⊔ b) ⊔ c == a ⊔ (b ⊔ c)`;
/// - **idempotent**: `a ⊔ a == a`.
///
/// So the order in which replicas hear of each other's changes does not matter, and neither do
/// duplicated or replayed messages. The proptests in `tests/laws.rs` check these for every type.
///
/// # Deltas
///
/// Every mutator returns its *delta*: the smallest state that carries the change. If a mutator
/// takes `s` to `s'` with delta `d`, then `s ⊔ d == s'`, and so for any `x`,
/// `(x ⊔ s) ⊔ d == x ⊔ s'`: merging the delta anywhere that has seen `s` is the same as merging
/// the full new state. (ferry's sync protocol exchanges whole states today; the delta is what a
/// caller can store or send when the change alone is wanted.)
///
/// # Encoding
///
/// [`Crdt::encode`] is canonical: equal states encode to equal bytes, so equal states have equal
/// [`Crdt::digest`]s. [`Crdt::decode`] accepts untrusted bytes and refuses states that break the
/// type's invariants.
///
/// # Examples
///
/// ```
/// use ferry_crdt::{Crdt, GCounter, ReplicaId};
///
/// let (a, b) = (ReplicaId::from_bytes([1; 16]), ReplicaId::from_bytes([2; 16]));
/// let mut x = GCounter::new();
/// let mut y = GCounter::new();
/// let delta = x.increment(a, 2).unwrap();
/// y.increment(b, 5).unwrap();
///
/// assert!(y.merge(&delta));   // y learns of a's increment...
/// assert!(!y.merge(&delta));  // ...once, however often it hears of it
/// x.merge(&y);
/// assert_eq!(x, y);
/// assert_eq!(x.value(), 7);
/// assert_eq!(x.digest().unwrap(), y.digest().unwrap());
/// ```
pub trait Crdt: Clone + Eq + Serialize + DeserializeOwned {
    /// Merges `other` into `self`, keeping the laws above. Returns whether `self` changed.
    fn merge(&mut self, other: &Self) -> bool;

    /// Merges a state this replica owns, such as one just decoded from the network; the same
    /// as [`Crdt::merge`], but values that win can be moved instead of cloned.
    fn merge_owned(&mut self, other: Self) -> bool {
        self.merge(&other)
    }

    /// The canonical encoding of this state.
    fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        codec::encode(self)
    }

    /// Decodes a state from untrusted bytes; see [`codec::decode`](crate::decode) for `limit`.
    fn decode(bytes: &[u8], limit: usize) -> Result<Self, DecodeError> {
        codec::decode(bytes, limit)
    }

    /// The blake3 digest of the canonical encoding.
    fn digest(&self) -> Result<Digest, EncodeError> {
        Digest::of(self)
    }
}
