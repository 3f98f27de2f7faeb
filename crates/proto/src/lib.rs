//! ferry's sync protocol, with no network inside: wire messages, framing, and a [`Session`]
//! state machine over a [`ferry_store::Store`]. `ferry-net` moves its frames over QUIC; tests
//! move them in memory. `docs/protocol.md` specifies the wire format.
//!
//! A session runs in phases: **hello** (versions), **reconcile** (a walk down a 16-way trie
//! over document ids, comparing fingerprints, until the documents that differ are found),
//! **per document** (the changes that came since the version the peer last acknowledged, in one
//! message; automerge's own sync messages, seeded with the heads both sides share, when that
//! version is unknown; a snapshot for a replica that has nothing; states for the ferry-crdt
//! kinds), and **live** (changes pushed as the store reports them, each acknowledged, which
//! feeds [`ferry_store::Store::sync_status`]).
//!
//! # Examples
//!
//! Two replicas, one session, frames moved by hand:
//!
//! ```
//! use automerge::{ROOT, ReadDoc, transaction::Transactable};
//! use ferry_proto::{Role, Session, SessionConfig};
//! use ferry_store::{Access, DocKind, PeerInfo, SpaceId, Store};
//!
//! let (a_dir, b_dir) = (tempfile::tempdir()?, tempfile::tempdir()?);
//! let (a, b) = (Store::open(a_dir.path())?, Store::open(b_dir.path())?);
//! // Each trusts the other with everything.
//! for (store, other) in [(&a, &b), (&b, &a)] {
//!     store.put_peer(&PeerInfo::new(other.peer_id(), "friend"))?;
//!     store.grant(other.peer_id(), SpaceId::DEFAULT, Access::ReadWrite)?;
//! }
//! let doc = a.create(DocKind::Automerge)?;
//! a.change(doc, |tx| tx.put(ROOT, "hello", "world"))?;
//!
//! let mut sa = Session::new(a.clone(), b.peer_id(), Role::Initiator, SessionConfig::default())?;
//! let mut sb = Session::new(b.clone(), a.peer_id(), Role::Responder, SessionConfig::default())?;
//! loop {
//!     let mut moved = false;
//!     while let Some(frame) = sa.poll_transmit() { sb.handle_frame(&frame, 0)?; moved = true; }
//!     while let Some(frame) = sb.poll_transmit() { sa.handle_frame(&frame, 0)?; moved = true; }
//!     if !moved { break; }
//! }
//! let value = b.read(doc, |d| d.get(ROOT, "hello").unwrap().unwrap().0.to_string())?;
//! assert_eq!(value, "\"world\"");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod message;
mod reconcile;
mod session;

pub use message::{
    CAP_SNAPSHOT_PARTS, CAPABILITIES, DEFAULT_MAX_FRAME, ErrorCode, FrameError, FrameReader,
    LENGTH_PREFIX, Message, PROTOCOL_VERSION,
};
pub use reconcile::{Item, Prefix, Range, ShortDigest, short};
pub use session::{Event, Role, Session, SessionConfig, SessionError};
