//! Change notifications, so an app re-reads the store instead of asking the network.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::{Notify, broadcast};

use crate::{DocId, PeerId, SpaceId, Version};

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
        /// Its space.
        space: SpaceId,
        /// Who changed it.
        origin: Origin,
        /// Its version now.
        version: Version,
    },
    /// A document was deleted on this replica.
    Deleted {
        /// The document.
        doc: DocId,
        /// Its space.
        space: SpaceId,
    },
}

impl StoreEvent {
    /// The document the event is about.
    pub fn doc(&self) -> DocId {
        match self {
            StoreEvent::Changed { doc, .. } | StoreEvent::Deleted { doc, .. } => *doc,
        }
    }

    /// The space of the document the event is about.
    pub fn space(&self) -> SpaceId {
        match self {
            StoreEvent::Changed { space, .. } | StoreEvent::Deleted { space, .. } => *space,
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

/// What a [`ChangeFeed`] has gathered since it was last read.
#[derive(Clone, Debug, Default, Eq, PartialEq)]
pub struct FeedChanges {
    /// Documents the peer may read that changed (or were deleted), each once however often
    /// it changed, in id order. Changes that came from the peer itself are left out.
    pub docs: BTreeSet<DocId>,
    /// The peer was given access to something it could not read before: a session that
    /// listed its documents earlier should list them again.
    pub access_widened: bool,
}

impl FeedChanges {
    fn is_empty(&self) -> bool {
        self.docs.is_empty() && !self.access_widened
    }
}

/// The changes one peer's sync session must push, gathered as a set: however far the session
/// falls behind, the feed holds each changed document once and never drops one, so a slow
/// session only pushes later, never loses a change or needs to start over. Only changes to
/// documents the peer may read reach it (see [`Store::watch`](crate::Store::watch)), so a change
/// costs the sessions of its readers, not every session.
///
/// # Examples
///
/// ```
/// use ferry_store::{Access, DocKind, PeerId, PeerInfo, SpaceId, Store};
///
/// let dir = tempfile::tempdir()?;
/// let store = Store::open(dir.path())?;
/// let (reader, stranger) = (PeerId::from_bytes([1; 16]), PeerId::from_bytes([2; 16]));
/// for peer in [reader, stranger] {
///     store.put_peer(&PeerInfo::new(peer, "a peer"))?;
/// }
/// let team = store.create_space("team")?;
/// store.grant(reader, team, Access::Read)?;
/// let (to_reader, to_stranger) = (store.watch(reader), store.watch(stranger));
///
/// let doc = store.create_in(team, DocKind::GCounter)?;
/// for _ in 0..1000 {
///     store.increment(doc, 1)?;
/// }
/// assert_eq!(to_reader.try_next().map(|c| c.docs.len()), Some(1)); // once, not 1001 times
/// assert_eq!(to_stranger.try_next(), None);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct ChangeFeed {
    peer: PeerId,
    inner: Arc<FeedInner>,
}

#[derive(Debug, Default)]
struct FeedInner {
    pending: Mutex<FeedChanges>,
    notify: Notify,
}

impl FeedInner {
    fn pending(&self) -> std::sync::MutexGuard<'_, FeedChanges> {
        // A set of ids: consistent whatever a panicking holder did.
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl ChangeFeed {
    /// The peer whose changes this feed gathers.
    pub fn peer(&self) -> PeerId {
        self.peer
    }

    /// Waits until something is gathered, and takes it all.
    pub async fn next(&self) -> FeedChanges {
        loop {
            if let Some(changes) = self.try_next() {
                return changes;
            }
            self.inner.notify.notified().await;
        }
    }

    /// Takes everything gathered so far, if anything.
    pub fn try_next(&self) -> Option<FeedChanges> {
        let mut pending = self.inner.pending();
        if pending.is_empty() {
            return None;
        }
        Some(std::mem::take(&mut *pending))
    }
}

/// The live feeds, by peer. Feeds are held weakly: dropping a [`ChangeFeed`] unregisters it.
#[derive(Debug, Default)]
pub(crate) struct Feeds {
    by_peer: Mutex<HashMap<PeerId, Vec<Weak<FeedInner>>>>,
}

impl Feeds {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PeerId, Vec<Weak<FeedInner>>>> {
        self.by_peer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn watch(&self, peer: PeerId) -> ChangeFeed {
        let inner = Arc::new(FeedInner::default());
        let mut feeds = self.lock();
        let list = feeds.entry(peer).or_default();
        list.retain(|f| f.strong_count() > 0);
        list.push(Arc::downgrade(&inner));
        ChangeFeed { peer, inner }
    }

    /// Tells each of `peer`'s feeds, through `add`, what changed.
    pub(crate) fn tell(&self, peer: PeerId, add: impl Fn(&mut FeedChanges)) {
        let mut feeds = self.lock();
        let Some(list) = feeds.get_mut(&peer) else {
            return;
        };
        list.retain(|weak| match weak.upgrade() {
            Some(feed) => {
                add(&mut feed.pending());
                feed.notify.notify_one();
                true
            }
            None => false,
        });
        if list.is_empty() {
            feeds.remove(&peer);
        }
    }
}
