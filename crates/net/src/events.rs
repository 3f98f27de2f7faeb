//! What a node reports: connection states and session events.

use std::time::SystemTime;

use ferry_store::PeerId;

/// A peer's connection, as the app shows it.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum ConnectionState {
    /// Dialing.
    Connecting,
    /// Connected, with a sync session running.
    Connected {
        /// Since when.
        since: SystemTime,
    },
    /// Not connected.
    Disconnected {
        /// When this side dials again; `None` if it will not (no address for the peer, or the
        /// node is shutting down): the peer may still dial in.
        next_retry: Option<SystemTime>,
    },
}

/// Something that happened on the network.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum NetEvent {
    /// A peer's connection state changed.
    Connection {
        /// The peer.
        peer: PeerId,
        /// Its new state.
        state: ConnectionState,
    },
    /// The sync session with a peer reported an event.
    Session {
        /// The peer.
        peer: PeerId,
        /// The event.
        event: ferry_proto::Event,
    },
    /// The sync session with a peer failed, and its connection was closed.
    SessionFailed {
        /// The peer.
        peer: PeerId,
        /// Why, for people.
        error: String,
    },
    /// More of a blob arrived from a peer, verified: sent at most once per MiB (the end is
    /// [`NetEvent::BlobFetched`]).
    BlobProgress {
        /// The peer sending it.
        peer: PeerId,
        /// The blob.
        hash: ferry_store::BlobHash,
        /// Bytes verified and kept so far (from the start, counting what an earlier transfer
        /// kept).
        received: u64,
        /// Its length.
        len: u64,
    },
    /// A blob arrived whole from a peer and is durable here.
    BlobFetched {
        /// The peer that sent it.
        peer: PeerId,
        /// The blob.
        hash: ferry_store::BlobHash,
        /// Its length.
        len: u64,
    },
    /// Fetching a blob from a peer failed (it may be tried again, from what arrived).
    BlobFailed {
        /// The peer.
        peer: PeerId,
        /// The blob.
        hash: ferry_store::BlobHash,
        /// Why, for people.
        error: String,
    },
}
