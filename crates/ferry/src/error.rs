//! What can go wrong when an app uses a replica.

use ferry_net::NetError;
use ferry_store::{DocId, DocKind, PeerId, StoreError};

/// An operation on a [`Replica`](crate::Replica) failed. A failed write changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The local store failed, or refused the operation (see its reason).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The network layer failed.
    #[error(transparent)]
    Net(#[from] NetError),
    /// No document has this id on this replica.
    #[error("no document {0}")]
    NoSuchDocument(DocId),
    /// No peer has this id in this replica's peer table.
    #[error("no peer {0}")]
    NoSuchPeer(PeerId),
    /// The document is of another kind than the handle asked for.
    #[error("document {doc} is a {found} document, not {expected}")]
    WrongKind {
        /// The document.
        doc: DocId,
        /// The kind asked for.
        expected: &'static str,
        /// Its kind.
        found: DocKind,
    },
    /// The replica is already serving; call [`Replica::shutdown`](crate::Replica::shutdown)
    /// first to serve elsewhere.
    #[error("the replica is already serving on {0}")]
    AlreadyServing(std::net::SocketAddr),
    /// A blob could not be stored or read (see its reason).
    #[error(transparent)]
    Blob(#[from] ferry_store::BlobError),
    /// A blocking task (a durable write) stopped unexpectedly; nothing was acknowledged.
    #[error("a background write stopped unexpectedly")]
    Background,
}

impl Error {
    /// Maps the store's "no such document" to [`Error::NoSuchDocument`].
    pub(crate) fn from_store(e: StoreError) -> Self {
        match e {
            StoreError::NoSuchDocument(doc) => Error::NoSuchDocument(doc),
            StoreError::NoSuchPeer(peer) => Error::NoSuchPeer(peer),
            e => Error::Store(e),
        }
    }
}
