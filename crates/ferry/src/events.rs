//! What a UI listens to: changes to re-read, and how sync is going.

use ferry_net::ConnectionState;
use ferry_store::{BlobHash, DocId, Origin, PeerId};
use tokio::sync::broadcast;

/// Something happened to this replica's data or its peers. A UI re-reads the local replica
/// when a document changes; it never has to ask the network.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum Event {
    /// A document was created or changed, by this app or by a peer; the change is durable.
    Changed {
        /// The document.
        doc: DocId,
        /// Who changed it.
        origin: Origin,
    },
    /// A document is gone from this replica: deleted here or by a peer's tombstone, or
    /// forgotten here.
    Deleted {
        /// The document.
        doc: DocId,
    },
    /// A peer's connection changed.
    Connection {
        /// The peer.
        peer: PeerId,
        /// Its new state.
        state: ConnectionState,
    },
    /// A peer now holds everything this replica has of a document: nothing of it is pending
    /// for that peer.
    Synced {
        /// The peer.
        peer: PeerId,
        /// The document.
        doc: DocId,
    },
    /// A peer refused this replica's changes to a document (it gave this replica read access
    /// only); they stay here and are not sent again to it in this session.
    Refused {
        /// The peer.
        peer: PeerId,
        /// The document.
        doc: DocId,
    },
    /// More of a blob arrived from a peer, verified (at most once per MiB; the end is
    /// [`Event::BlobFetched`]).
    BlobProgress {
        /// The peer sending it.
        peer: PeerId,
        /// The blob.
        hash: BlobHash,
        /// Bytes here so far, counting what an earlier, cut transfer kept.
        received: u64,
        /// Its length.
        len: u64,
    },
    /// A blob arrived whole from a peer and is durable here.
    BlobFetched {
        /// The peer that sent it.
        peer: PeerId,
        /// The blob.
        hash: BlobHash,
        /// Its length.
        len: u64,
    },
    /// This subscriber fell behind and `missed` events were dropped: re-read what it shows.
    Lagged {
        /// How many.
        missed: u64,
    },
}

/// A stream of [`Event`]s from [`Replica::subscribe`](crate::Replica::subscribe). A slow
/// subscriber never slows the replica; it gets [`Event::Lagged`] instead.
///
/// # Examples
///
/// ```
/// use ferry::Event;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let replica = ferry::Replica::open(dir.path()).await?;
/// let mut events = replica.subscribe();
/// let reads = replica.create_counter().await?;
/// reads.increment(1).await?;
/// // Created, then incremented: re-read the counter on each.
/// for _ in 0..2 {
///     assert!(matches!(events.next().await, Some(Event::Changed { doc, .. }) if doc == reads.id()));
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Events {
    receiver: broadcast::Receiver<Event>,
}

impl Events {
    pub(crate) fn new(receiver: broadcast::Receiver<Event>) -> Self {
        Self { receiver }
    }

    /// The next event; `None` once the replica is gone.
    pub async fn next(&mut self) -> Option<Event> {
        match self.receiver.recv().await {
            Ok(event) => Some(event),
            Err(broadcast::error::RecvError::Lagged(missed)) => Some(Event::Lagged { missed }),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }

    /// The next event if one is waiting.
    pub fn try_next(&mut self) -> Option<Event> {
        match self.receiver.try_recv() {
            Ok(event) => Some(event),
            Err(broadcast::error::TryRecvError::Lagged(missed)) => Some(Event::Lagged { missed }),
            Err(_) => None,
        }
    }
}
