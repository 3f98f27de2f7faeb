//! ferry on the network: QUIC (quinn) with mutual TLS 1.3 pinned to peer ids, one connection
//! per pair of peers, a [`ferry_proto::Session`] on each, and reconnection with backoff.
//!
//! A [`Node`] is one replica's endpoint. It listens, dials every peer in its store's peer table
//! that has an address, and keeps one connection per peer, settling duplicates when both sides
//! dial at once. Each connection carries one sync session on one bidirectional stream; the
//! driver feeds it the stream's bytes and the store's change events, so local changes are pushed
//! as soon as they are durable. A lost connection is dialed again after a backoff delay
//! (exponential with full jitter, reset after a success), or at once after
//! [`Node::network_changed`].
//!
//! Identity: each replica presents a self-signed certificate for its ed25519 key; the peer id
//! is derived from the key, so pinning ids in the peer table pins keys. An unknown peer is
//! refused in the handshake. ALPN is [`ALPN`] (`ferry/2`). Connections closed by ferry carry a
//! [`CloseCode`].
//!
//! # Examples
//!
//! Two replicas on loopback, each trusting the other:
//!
//! ```
//! use std::time::Duration;
//! use ferry_net::{NetConfig, Node};
//! use ferry_store::{Access, DocKind, PeerInfo, SpaceId, Store};
//!
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (a_dir, b_dir) = (tempfile::tempdir()?, tempfile::tempdir()?);
//! let (a, b) = (Store::open(a_dir.path())?, Store::open(b_dir.path())?);
//! let local = NetConfig { listen: "127.0.0.1:0".parse()?, ..NetConfig::default() };
//! let node_b = Node::start(b.clone(), local.clone()).await?;
//!
//! let mut b_on_a = PeerInfo::new(b.peer_id(), "b");
//! b_on_a.addresses.push(node_b.local_addr());
//! a.put_peer(&b_on_a)?;
//! a.grant(b.peer_id(), SpaceId::DEFAULT, Access::ReadWrite)?;
//! b.put_peer(&PeerInfo::new(a.peer_id(), "a"))?;
//! b.grant(a.peer_id(), SpaceId::DEFAULT, Access::ReadWrite)?;
//!
//! let counter = a.create(DocKind::GCounter)?;
//! a.increment(counter, 5)?;
//! let node_a = Node::start(a.clone(), local).await?; // dials b
//! let mut waited = Duration::ZERO;
//! while b.info(counter).ok().map(|i| i.digest) != a.info(counter).ok().map(|i| i.digest) {
//!     assert!(waited < Duration::from_secs(10), "no sync");
//!     tokio::time::sleep(Duration::from_millis(10)).await;
//!     waited += Duration::from_millis(10);
//! }
//! node_a.shutdown().await;
//! node_b.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod backoff;
mod blobs;
mod config;
mod connection;
mod driver;
mod error;
mod events;
mod gate;
mod node;
mod progress;
mod sync_once;
pub mod tls;

pub use backoff::BackoffConfig;
pub use config::NetConfig;
pub use error::NetError;
pub use events::{ConnectionState, NetEvent};
pub use node::Node;
pub use sync_once::SyncReport;
pub use tls::ALPN;

/// Application codes ferry closes QUIC connections with.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
#[repr(u32)]
pub enum CloseCode {
    /// A normal close: shutdown, a one-off sync done, or the peer disconnected.
    Shutdown = 0,
    /// The peer broke the sync protocol (a malformed, oversized or out-of-order frame, a
    /// document it may not see); the reason names it.
    Protocol = 1,
    /// Another connection between the same two peers was kept instead.
    Duplicate = 2,
    /// This side missed store events; the next connection reconciles again.
    Resync = 3,
    /// This side's store failed.
    Internal = 4,
}

impl From<CloseCode> for quinn::VarInt {
    fn from(code: CloseCode) -> Self {
        quinn::VarInt::from_u32(code as u32)
    }
}

impl CloseCode {
    /// The code a connection was closed with, if it is one of ferry's.
    pub fn of(code: quinn::VarInt) -> Option<Self> {
        [
            Self::Shutdown,
            Self::Protocol,
            Self::Duplicate,
            Self::Resync,
            Self::Internal,
        ]
        .into_iter()
        .find(|c| quinn::VarInt::from(*c) == code)
    }
}
