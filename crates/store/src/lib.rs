//! ferry's durable local replica: the source of truth an app reads and subscribes to, and that
//! sync writes into.
//!
//! A [`Store`] lives in one directory: a sled database and the replica's key pair. It holds
//! - **documents** of every [`DocKind`]: Automerge documents, persisted as a snapshot plus
//!   incremental change records and compacted atomically, and the ferry-crdt counters and
//!   registers, persisted as their canonical state;
//! - **sync state** per (peer, document), for the sync protocol;
//! - **spaces**: every document belongs to one [`SpaceId`], chosen when it is created, and
//!   peers are granted [`Access`] per space (with per-document overrides);
//! - **peers**, with their addresses.
//!
//! Every write is durable before it returns ([`Durability`]), then announced to subscribers as a
//! [`StoreEvent`]. A damaged record gives an error naming its document; the others still load.
//!
//! # Examples
//!
//! ```
//! use automerge::{ROOT, ReadDoc, transaction::Transactable};
//! use ferry_store::{CrdtState, DocKind, Store};
//!
//! let dir = tempfile::tempdir()?;
//! let store = Store::open(dir.path())?;
//! println!("this replica is {}", store.peer_id());
//!
//! let note = store.create(DocKind::Automerge)?;
//! store.change(note, |tx| tx.put(ROOT, "text", "milk, eggs"))?;
//!
//! let reads = store.create(DocKind::GCounter)?;
//! store.increment(reads, 3)?;
//! let CrdtState::GCounter(counter) = store.crdt(reads)? else { unreachable!() };
//! assert_eq!(counter.value(), 3);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod automerge_docs;
mod blob_refs;
mod blob_transfer;
mod blobs;
mod bounds;
mod cache;
mod crdt_docs;
mod deletes;
mod directory;
mod documents;
mod durability;
mod error;
mod events;
mod identity;
mod ids;
mod loading;
mod migrate;
mod partials;
mod peers;
mod record_files;
mod records;
mod spaces;
mod store;
mod sync_records;
mod time;
mod unacked;
mod values;
mod version;

pub use automerge_docs::StoredForm;
pub use blob_refs::{BLOB_REFERENCE_PREFIX, BlobPolicy, blob_refs_in};
pub use blob_transfer::{BLOB_GROUP_BYTES, IncomingBlob};
pub use blobs::{BadBlobHash, BlobError, BlobHash};
pub use bounds::{Exceeds, Limits, within_limits};
pub use documents::{CheckedSnapshot, Unloadable};
pub use durability::Durability;
pub use error::StoreError;
pub use events::{ChangeFeed, FeedChanges, Origin, RecvError, StoreEvent, Subscription};
pub use identity::{Identity, IdentityError};
pub use ids::{DocId, PeerId, SpaceId};
pub use partials::{Assembly, PartError};
pub use records::{Gone, GoneHow, SyncRecord};
pub use store::{Store, StoreConfig};
pub use sync_records::SyncUpdate;
pub use time::{millis_of, time_of, wall_millis};
pub use values::{
    Access, CrdtState, DocInfo, DocKind, DocSyncStatus, PeerInfo, SpaceInfo, UnknownName,
};
pub use version::{Version, heads_digest};
