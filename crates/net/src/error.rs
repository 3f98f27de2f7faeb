//! What can go wrong on the network.

use std::net::SocketAddr;

use ferry_proto::SessionError;
use ferry_store::{BlobError, BlobHash, PeerId, StoreError};

/// A network operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// No connected peer had the blob, or would let this replica fetch it (a peer that may
    /// not read a document referring to it answers as if it had not got it).
    #[error("blob {0} is not here, and no connected peer has it to give")]
    BlobUnavailable(BlobHash),
    /// A blob could not be taken in: bytes that did not match its hash, or storage.
    #[error("blob {hash} could not be taken in")]
    Blob {
        /// The blob.
        hash: BlobHash,
        /// Why.
        #[source]
        source: BlobError,
    },
    /// No certificate could be made from the replica's key.
    #[error("cannot make a certificate from the replica's key")]
    Certificate,
    /// A certificate is not a ferry certificate (an ed25519 key in an X.509 certificate).
    #[error("not a ferry certificate")]
    BadCertificate,
    /// TLS could not be configured.
    #[error("tls configuration failed")]
    Tls(#[source] rustls::Error),
    /// The UDP socket could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// The store failed.
    #[error("store failed")]
    Store(#[from] StoreError),
    /// The peer is not in the peer table, or has no address to dial.
    #[error("no address is known for peer {0}")]
    NoAddress(PeerId),
    /// A dial could not start (an address QUIC cannot use).
    #[error("cannot dial {peer} at {addr}")]
    Dial {
        /// The peer.
        peer: PeerId,
        /// The address.
        addr: SocketAddr,
        /// quinn's reason.
        #[source]
        source: quinn::ConnectError,
    },
    /// The handshake did not complete in time: nothing answered at the address.
    #[error("no answer from {peer} at {addr} within the connect timeout")]
    Timeout {
        /// The peer.
        peer: PeerId,
        /// The address.
        addr: SocketAddr,
    },
    /// The connection failed or was closed: refused in the handshake (an unknown or unexpected
    /// peer), lost, or closed by the peer.
    #[error("connection with {peer} failed")]
    Connection {
        /// The peer.
        peer: PeerId,
        /// quinn's reason.
        #[source]
        source: quinn::ConnectionError,
    },
    /// Writing to or reading from the peer's stream failed.
    #[error("stream with {peer} failed: {what}")]
    Stream {
        /// The peer.
        peer: PeerId,
        /// What failed.
        what: String,
    },
    /// The sync session with the peer ended with an error; the connection was closed with
    /// [`CloseCode::Protocol`](crate::CloseCode::Protocol).
    #[error("sync with {peer} failed")]
    Session {
        /// The peer.
        peer: PeerId,
        /// The session's reason.
        #[source]
        source: SessionError,
    },
    /// A blocking task of the session panicked; the connection was closed.
    #[error("the session with {peer} stopped unexpectedly")]
    Panicked {
        /// The peer.
        peer: PeerId,
    },
    /// The node has shut down.
    #[error("the node has shut down")]
    Shutdown,
    /// The live session with the peer failed; the reason is the session's error, as reported
    /// by the task that ran it.
    #[error("the session with {peer} failed: {reason}")]
    SessionFailed {
        /// The peer.
        peer: PeerId,
        /// The session's error, for people.
        reason: String,
    },
    /// The peer refused this replica in the TLS handshake: it does not know or no longer
    /// trusts this replica's peer id.
    #[error("{peer} refused this replica (it does not trust this peer id)")]
    Refused {
        /// The peer.
        peer: PeerId,
    },
    /// Connected, but the session did not finish comparing documents in time.
    #[error("{peer} did not finish comparing documents within {waited:?}")]
    NotReconciled {
        /// The peer.
        peer: PeerId,
        /// How long this side waited.
        waited: std::time::Duration,
    },
}
