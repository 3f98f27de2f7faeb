//! State-based CRDTs for ferry: counters and registers that converge however their states
//! travel.
//!
//! Every type here is a join-semilattice (see [`Crdt`] for the laws): replicas may merge each
//! other's states in any order, any number of times, and still end up equal. Every mutator
//! returns a small *delta* state that can be shipped instead of the whole state. Every state has
//! one canonical binary encoding ([`encode`], bincode 2), a bounded decoder for untrusted bytes
//! ([`decode`]) and a blake3 [`Digest`], which the sync protocol compares to find what differs.
//!
//! | type | what it holds | merge |
//! |---|---|---|
//! | [`GCounter`] | a count that only grows | per-replica maximum |
//! | [`PNCounter`] | a count that grows and shrinks | two [`GCounter`]s |
//! | [`LwwRegister`] | one value, last write wins | greatest [`Timestamp`] |
//! | [`MvRegister`] | every concurrent value | causal-context join |
//!
//! This crate does no I/O and reads no clock: a [`Clock`] is told the wall time by its caller.
//!
//! # Examples
//!
//! Two replicas count message reads while offline, then exchange deltas as encoded bytes:
//!
//! ```
//! use ferry_crdt::{Crdt, GCounter, ReplicaId};
//!
//! let (phone, laptop) = (ReplicaId::random(), ReplicaId::random());
//! let mut reads_on_phone = GCounter::new();
//! let mut reads_on_laptop = GCounter::new();
//!
//! let from_phone = reads_on_phone.increment(phone, 2)?;
//! let from_laptop = reads_on_laptop.increment(laptop, 1)?;
//!
//! // On the wire: bytes, decoded under a size limit.
//! let bytes = from_phone.encode()?;
//! reads_on_laptop.merge(&GCounter::decode(&bytes, 64 * 1024)?);
//! reads_on_phone.merge(&from_laptop);
//!
//! assert_eq!(reads_on_phone.value(), 3);
//! assert_eq!(reads_on_phone.digest()?, reads_on_laptop.digest()?);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod clock;
mod codec;
mod gcounter;
mod lww_register;
mod mv_register;
mod pncounter;
mod replica_id;
mod traits;
mod version_vector;

pub use clock::{Clock, Timestamp};
pub use codec::{DecodeError, Digest, EncodeError, decode, encode};
pub use gcounter::{CounterOverflow, GCounter};
pub use lww_register::LwwRegister;
pub use mv_register::{Dot, MvRegister};
pub use pncounter::PNCounter;
pub use replica_id::{ParseReplicaIdError, ReplicaId};
pub use traits::Crdt;
