//! ferry: offline-first replicated data for apps.
//!
//! An app opens a [`Replica`] in a directory. Every write lands in the replica's durable local
//! store before the call returns, and the app never waits for the network. When the replica
//! serves, it connects to its peers over QUIC (mutual TLS, peers pinned by id), exchanges what
//! each lacks, and keeps pushing changes live; when a peer is unreachable it retries with
//! backoff. Concurrent changes merge without a central server or conflict rules of your own,
//! because the documents are CRDTs:
//!
//! - [`Doc`]: an Automerge document (JSON-like data, text), changed in a closure;
//! - [`Counter`]: a grow-only or up/down counter;
//! - [`Register`]: a last-writer-wins value; [`MultiRegister`]: a value that keeps every
//!   concurrent write for the user to settle.
//!
//! Every document belongs to a [`Space`], chosen when it is created (the replica's
//! [default space](Replica::default_space) unless the app says otherwise), and peers are granted
//! access per space: a relay gives each user's devices their spaces.
//!
//! A UI reads the replica and re-reads when [`Replica::subscribe`] says something changed;
//! [`Replica::sync_status`] tells it, per peer and document, what is still pending.
//!
//! # Examples
//!
//! Two replicas on one machine; one writes while the other is offline, and they converge when
//! it comes online:
//!
//! ```
//! use std::time::Duration;
//! use automerge::{ROOT, ReadDoc, transaction::Transactable};
//! use ferry::{Access, Event, Replica};
//!
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (a_dir, b_dir) = (tempfile::tempdir()?, tempfile::tempdir()?);
//! let a = Replica::open(a_dir.path()).await?;
//! let b = Replica::open(b_dir.path()).await?;
//!
//! // b is always on; a knows where to find it. Each trusts the other with everything.
//! let b_addr = b.serve("127.0.0.1:0".parse()?).await?;
//! b.allow_peer(a.peer_id(), Access::ReadWrite).await?;
//! a.add_peer(b.peer_id(), b_addr, Access::ReadWrite).await?;
//!
//! // Offline, a writes. The write is durable; nothing waits for b.
//! let list = a.create_doc().await?;
//! list.change(|tx| tx.put(ROOT, "milk", 2)).await?;
//! let reads = a.create_counter().await?;
//! reads.increment(1).await?;
//! assert_eq!(a.sync_status().await?.pending(list.id()), 1);
//!
//! // Online: a dials b, and b's UI hears of each document as it arrives.
//! let mut on_b = b.subscribe();
//! a.serve("127.0.0.1:0".parse()?).await?;
//! let copy = b.doc_when_available(list.id(), Duration::from_secs(10)).await?;
//! assert_eq!(copy.read(|d| d.get(ROOT, "milk").ok().flatten().map(|(v, _)| v.as_i64()))?, Some(Some(2)));
//! assert!(matches!(on_b.next().await, Some(Event::Connection { .. } | Event::Changed { .. })));
//! # a.shutdown().await;
//! # b.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod doc;
mod error;
mod events;
mod replica;
mod space;
mod status;

pub use doc::{Counter, Doc, MultiRegister, Register};
pub use error::Error;
pub use events::{Event, Events};
pub use replica::{DEFAULT_BLOB_GRACE, Replica, ReplicaBuilder};
pub use space::Space;
pub use status::{DocStatus, PeerStatus, SyncStatus};

pub use automerge;

/// The README's examples, compiled as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;

/// The guide's examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/guide.md")]
pub struct GuideDoctests;

/// The architecture map's code blocks, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/architecture.md")]
pub struct ArchitectureDoctests;

/// The protocol spec's code blocks, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/protocol.md")]
pub struct ProtocolDoctests;

/// The benchmark notes' code blocks, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/benchmarks.md")]
pub struct BenchmarksDoctests;
pub use ferry_crdt::ReplicaId;
pub use ferry_net::{BackoffConfig, ConnectionState, NetConfig, NetError, SyncReport};
pub use ferry_store::{
    Access, BlobError, BlobHash, BlobPolicy, DocId, DocInfo, DocKind, Durability, Origin, PeerId,
    SpaceId, SpaceInfo, StoreConfig, millis_of, time_of, wall_millis,
};
