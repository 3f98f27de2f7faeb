//! Change notifications, so an app re-reads the store instead of asking the network.

use tokio::sync::broadcast;

use crate::{DocId, PeerId, Version};

/// Where a change came from.
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub enum Origin {
    /// This replica's own app.
    Local,
    /// A peer, through sync.
    Remote(PeerId),
}

/// Something changed in the store. Events arrive in commit order, and only once the change is
/// durable.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum StoreEvent {
    /// A document was created or changed.
    Changed {
        /// The document.
        doc: DocId,
        /// Who changed it.
        origin: Origin,
        /// Its version now.
        version: Version,
    },
    /// A document was deleted on this replica.
    Deleted {
        /// The document.
        doc: DocId,
    },
}

impl StoreEvent {
    /// The document the event is about.
    pub fn doc(&self) -> DocId {
        match self {
            StoreEvent::Changed { doc, .. } | StoreEvent::Deleted { doc } => *doc,
        }
    }
}

/// A stream of [`StoreEvent`]s, for one document or all of them.
///
/// A subscriber that falls behind never slows a writer: the oldest events it has not read are
/// dropped, and its next read returns [`RecvError::Lagged`], after which it should re-read
/// whatever it shows from the store.
///
/// # Examples
///
/// ```
/// use ferry_store::{DocKind, Store, StoreEvent};
///
/// let dir = tempfile::tempdir().unwrap();
/// let store = Store::open(dir.path()).unwrap();
/// let mut events = store.subscribe();
/// let doc = store.create(DocKind::GCounter).unwrap();
/// store.increment(doc, 2).unwrap();
/// assert!(matches!(events.try_recv(), Ok(Some(StoreEvent::Changed { .. })))); // created
/// assert!(matches!(events.try_recv(), Ok(Some(StoreEvent::Changed { .. })))); // incremented
/// assert!(matches!(events.try_recv(), Ok(None)));
/// ```
#[derive(Debug)]
pub struct Subscription {
    receiver: broadcast::Receiver<StoreEvent>,
    doc: Option<DocId>,
}

impl Subscription {
    pub(crate) fn new(receiver: broadcast::Receiver<StoreEvent>, doc: Option<DocId>) -> Self {
        Self { receiver, doc }
    }

    /// Waits for the next event.
    pub async fn recv(&mut self) -> Result<StoreEvent, RecvError> {
        loop {
            let event = self.receiver.recv().await.map_err(RecvError::from)?;
            if self.wants(&event) {
                return Ok(event);
            }
        }
    }

    /// Blocks the thread until the next event. Not for use inside an async task.
    pub fn blocking_recv(&mut self) -> Result<StoreEvent, RecvError> {
        loop {
            let event = self.receiver.blocking_recv().map_err(RecvError::from)?;
            if self.wants(&event) {
                return Ok(event);
            }
        }
    }

    /// The next event if one is waiting, `None` if not.
    pub fn try_recv(&mut self) -> Result<Option<StoreEvent>, RecvError> {
        loop {
            match self.receiver.try_recv() {
                Ok(event) if self.wants(&event) => return Ok(Some(event)),
                Ok(_) => continue,
                Err(broadcast::error::TryRecvError::Empty) => return Ok(None),
                Err(broadcast::error::TryRecvError::Lagged(missed)) => {
                    return Err(RecvError::Lagged { missed });
                }
                Err(broadcast::error::TryRecvError::Closed) => return Err(RecvError::Closed),
            }
        }
    }

    fn wants(&self, event: &StoreEvent) -> bool {
        self.doc.is_none_or(|doc| doc == event.doc())
    }
}

/// Why a [`Subscription`] returned no event.
#[derive(Clone, Copy, Debug, Eq, PartialEq, thiserror::Error)]
pub enum RecvError {
    /// The subscriber fell behind and `missed` events were dropped: re-read the store.
    #[error("subscriber lagged and missed {missed} events")]
    Lagged {
        /// How many events were dropped (across all documents).
        missed: u64,
    },
    /// The store was closed.
    #[error("store closed")]
    Closed,
}

impl From<broadcast::error::RecvError> for RecvError {
    fn from(e: broadcast::error::RecvError) -> Self {
        match e {
            broadcast::error::RecvError::Lagged(missed) => RecvError::Lagged { missed },
            broadcast::error::RecvError::Closed => RecvError::Closed,
        }
    }
}
