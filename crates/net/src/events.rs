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
}
