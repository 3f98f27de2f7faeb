//! What can go wrong in the store.

use ferry_crdt::CounterOverflow;

use crate::{DocId, DocKind, IdentityError, PeerId};

/// An operation on the [`Store`](crate::Store) failed. Nothing of a failed write is kept.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled could not read, write or flush.
    #[error("storage failed")]
    Storage(#[from] sled::Error),
    /// Another process has the store open; a store has one process at a time.
    #[error("the store at {} is open in another process", path.display())]
    InUse {
        /// The database directory.
        path: std::path::PathBuf,
    },
    /// The store directory was written by a format this version does not know.
    #[error("store format {found} is not supported (this build reads format {supported})")]
    UnknownFormat {
        /// The format the directory records.
        found: u32,
        /// The format this build reads and writes.
        supported: u32,
    },
    /// The replica's key pair could not be read or made.
    #[error("identity unavailable")]
    Identity(#[from] IdentityError),
    /// No document has this id.
    #[error("no document {0}")]
    NoSuchDocument(DocId),
    /// No peer has this id: add it before granting it access.
    #[error("no peer {0}")]
    NoSuchPeer(PeerId),
    /// The document was deleted or forgotten here, and cannot be made again.
    #[error("document {0} was deleted or forgotten here")]
    Gone(DocId),
    /// The document exists, but is of another kind than the operation needs.
    #[error(
        "document {doc} is a {found} document, not {}",
        DocKind::list(expected)
    )]
    WrongKind {
        /// The document.
        doc: DocId,
        /// The kinds the operation works on.
        expected: &'static [DocKind],
        /// The document's kind.
        found: DocKind,
    },
    /// A stored record of this document is damaged; the other documents are unaffected.
    #[error("document {doc} is damaged: {what}")]
    Damaged {
        /// The document.
        doc: DocId,
        /// Which record, and how.
        what: &'static str,
    },
    /// A record that belongs to no one document (the format marker, a peer) is damaged.
    #[error("store record damaged: {what}")]
    DamagedRecord {
        /// Which record.
        what: &'static str,
    },
    /// Automerge refused a change or a set of changes; the document is as it was.
    #[error("automerge refused a change to document {doc}")]
    Automerge {
        /// The document.
        doc: DocId,
        /// Automerge's reason.
        #[source]
        source: Box<automerge::AutomergeError>,
    },
    /// automerge panicked on a change to the document (changes that parse but do not fit
    /// together); the document is as it was, reloaded from its records.
    #[error("automerge failed on a change to document {doc}; nothing of it was stored")]
    AutomergePanicked {
        /// The document.
        doc: DocId,
    },
    /// Changes from a peer depend on changes neither the document nor the same batch holds;
    /// nothing was applied. Ask the peer for the missing ones (automerge's sync does).
    #[error("changes to document {doc} depend on {} change(s) it does not have", missing.len())]
    MissingDependencies {
        /// The document.
        doc: DocId,
        /// The changes that are missing.
        missing: Vec<automerge::ChangeHash>,
    },
    /// A CRDT state from a peer could not be decoded; the document is as it was.
    #[error("a state for document {doc} could not be decoded")]
    BadState {
        /// The document.
        doc: DocId,
        /// The decoder's reason.
        #[source]
        source: ferry_crdt::DecodeError,
    },
    /// A counter would overflow; it is unchanged.
    #[error("counter overflow")]
    Overflow(#[from] CounterOverflow),
    /// A flush to disk failed. What was written since the last good flush may be lost, so the
    /// store promises nothing more: every later write fails too. Reopen it.
    #[error("flushing the store to disk failed; reopen it")]
    FlushFailed,
}
