//! The store itself: opening it, the cache of loaded documents, and the commit path.

use std::collections::HashSet;
use std::fmt;
use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use automerge::{ActorId, Automerge, AutomergeError};
use ferry_crdt::{Clock, ReplicaId, encode};
use lru::LruCache;
use serde::Serialize;
use tokio::sync::broadcast;

use crate::cache::Cache;
use crate::directory::Directory;
use crate::durability::GroupCommit;
use crate::events::Feeds;
use crate::loading::{check_format, entry_in, read_meta};
use crate::records::DocMeta;
use crate::unacked::Unacked;
use crate::{
    ChangeFeed, CrdtState, DocId, DocKind, Durability, Identity, Origin, PeerId, SpaceId,
    StoreError, StoreEvent, Subscription, Version,
};

/// How a store is opened.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// When commits return. Default: [`Durability::Immediate`].
    pub durability: Durability,
    /// How many loaded documents to keep in memory; older ones are dropped and reloaded from
    /// disk when needed. Default: 256.
    pub cache_docs: NonZeroUsize,
    /// How many more documents' metadata (version, space, size) to keep in memory, so that
    /// sync can answer for documents that are not loaded without reading sled. Each takes
    /// about 200 bytes. Default: 65,536.
    pub cache_metas: NonZeroUsize,
    /// Incrementals are compacted into a new snapshot once they outgrow both the snapshot and
    /// this many bytes. Default: 64 KiB.
    pub compact_min_bytes: u64,
    /// Events a subscriber may fall behind by before it is told it lagged. Default: 1024.
    pub event_capacity: usize,
    /// The largest document taken in whole from a peer, in bytes as sent (an Automerge
    /// document's saved form, a counter's or register's state); a larger one is refused with
    /// an error before a byte of it is kept. Default: 1 GiB.
    pub max_doc_bytes: u64,
    /// The most operations an Automerge document taken in from a peer may hold (each costs
    /// memory when loaded, and a few bytes can claim billions); a larger one is refused before
    /// it is loaded. Default: 10,000,000.
    pub max_doc_ops: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            durability: Durability::Immediate,
            cache_docs: NonZeroUsize::new(256).unwrap_or(NonZeroUsize::MIN),
            cache_metas: NonZeroUsize::new(65_536).unwrap_or(NonZeroUsize::MIN),
            compact_min_bytes: 64 * 1024,
            event_capacity: 1024,
            max_doc_bytes: 1 << 30,
            max_doc_ops: 10_000_000,
        }
    }
}
/// A replica's durable local store: the source of truth the app reads and subscribes to, and
/// that sync writes into.
///
/// Cloning a `Store` gives another handle to the same store; it closes when the last handle is
/// dropped. Every write is durable before it returns (see [`Durability`]), and subscribers hear
/// of it only once it is durable. Reads on other threads may see a change a moment earlier,
/// while its flush runs; sync sessions call [`Store::wait_durable`] before their frames go out,
/// so peers only ever receive durable changes.
///
/// # Examples
///
/// ```
/// use automerge::{ReadDoc, ROOT, transaction::Transactable};
/// use ferry_store::{DocKind, Store};
///
/// let dir = tempfile::tempdir().unwrap();
/// let doc = {
///     let store = Store::open(dir.path()).unwrap();
///     let doc = store.create(DocKind::Automerge).unwrap();
///     store.change(doc, |tx| tx.put(ROOT, "title", "Groceries")).unwrap();
///     doc
/// };
/// // Reopened: the change is there, under the same identity.
/// let store = Store::open(dir.path()).unwrap();
/// let title = store.read(doc, |d| d.get(ROOT, "title").unwrap().unwrap().0.to_string()).unwrap();
/// assert_eq!(title, "\"Groceries\"");
/// ```
#[derive(Clone)]
pub struct Store {
    pub(crate) shared: Arc<Shared>,
    /// This handle's commits return once applied, before their flush (see
    /// [`Store::deferring`]).
    defer: bool,
}

pub(crate) struct Shared {
    pub(crate) db: sled::Db,
    /// The store's directory.
    pub(crate) dir: std::path::PathBuf,
    pub(crate) identity: Identity,
    pub(crate) config: StoreConfig,
    pub(crate) state: Mutex<State>,
    pub(crate) events: broadcast::Sender<StoreEvent>,
    /// Each watched peer's coalescing set of changes to push.
    pub(crate) feeds: Feeds,
    /// Peers and grants, in memory beside their records.
    pub(crate) directory: RwLock<Directory>,
    pub(crate) group: GroupCommit,
    /// Peers removed since the store opened (and not added again). A sync step that was
    /// already running when its peer was removed must not write a record for it afterwards;
    /// the lock also makes removing a peer and writing one of its records exclusive.
    pub(crate) removed_peers: Mutex<HashSet<PeerId>>,
    /// Per peer asked about, the documents that may wait for its acknowledgement.
    pub(crate) unacked: Unacked,
    /// Blobs being received from peers (one transfer per blob at a time).
    pub(crate) receiving: Mutex<HashSet<crate::BlobHash>>,
}

pub(crate) struct State {
    pub(crate) cache: Cache,
    pub(crate) clock: Clock,
    /// The last few changes to recently changed counters, as deltas (see
    /// [`Store::crdt_delta`]).
    pub(crate) deltas: LruCache<DocId, std::collections::VecDeque<Delta>>,
}

/// One change to a counter: its digest before and after, and what takes one to the other.
pub(crate) struct Delta {
    pub(crate) before: ferry_crdt::Digest,
    pub(crate) after: ferry_crdt::Digest,
    pub(crate) delta: CrdtState,
}

/// Counters whose recent deltas are kept, and deltas kept per counter.
pub(crate) const DELTA_DOCS: usize = 1024;
pub(crate) const DELTAS_PER_DOC: usize = 16;

/// A loaded document and its metadata, kept together so they never disagree.
pub(crate) struct Entry {
    pub(crate) meta: DocMeta,
    pub(crate) space: SpaceId,
    pub(crate) doc: Loaded,
}

pub(crate) enum Loaded {
    Automerge(Box<Automerge>),
    Crdt(CrdtState),
}

impl Shared {
    /// Tells subscribers of a durable change, and the feeds of the peers that may read it.
    fn announce(&self, event: StoreEvent) {
        let (doc, space) = (event.doc(), event.space());
        let from = match &event {
            StoreEvent::Changed {
                origin: Origin::Remote(peer),
                ..
            } => Some(*peer),
            _ => None,
        };
        let readers = self
            .directory
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .readers(doc, space);
        // The change's own author is a candidate too: it holds the change only once its
        // acknowledgement is recorded.
        self.unacked.changed(doc, &readers);
        for peer in readers.into_iter().filter(|p| Some(*p) != from) {
            self.feeds.tell(peer, |changes| {
                changes.docs.insert(doc);
            });
        }
        let _ = self.events.send(event); // no subscriber is fine
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("peer_id", &self.shared.identity.peer_id())
            .field("durability", &self.shared.config.durability)
            .finish_non_exhaustive()
    }
}

/// What a write hands to [`Store::commit`].
pub(crate) struct Commit {
    pub(crate) writes: Writes,
    pub(crate) events: Vec<StoreEvent>,
}

impl Commit {
    /// A commit that changes `doc`, of `space`, announced with `origin` and the new `version`.
    pub(crate) fn changed(
        writes: Writes,
        (doc, space): (DocId, SpaceId),
        origin: Origin,
        version: Version,
    ) -> Self {
        Self {
            writes,
            events: vec![StoreEvent::Changed {
                doc,
                space,
                origin,
                version,
            }],
        }
    }
}

/// A commit's records: one insert where one record says it all; inserts in order where the
/// last one makes the commit (a crash between them leaves records that nothing reads yet); a
/// batch where records must change together. sled makes each batch two synchronous log writes
/// of its own, so batches are kept off the paths that run per document or per change.
pub(crate) enum Writes {
    One(Vec<u8>, Vec<u8>),
    InOrder(Vec<(Vec<u8>, Vec<u8>)>),
    Batch(sled::Batch),
}

impl Store {
    /// Opens the store in `dir` with the default configuration, creating it (and the replica's
    /// key pair) on first use.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(dir, StoreConfig::default())
    }

    /// Opens the store in `dir` with `config`.
    pub fn open_with(dir: impl AsRef<Path>, config: StoreConfig) -> Result<Self, StoreError> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(sled::Error::Io)?;
        let identity = Identity::load_or_create(dir)?;
        let db = open_db(&dir.join("db"))?;
        check_format(&db)?;
        crate::record_files::clear_orphans(&db, dir);
        // Documents half-arrived when the process last ended: they come again, whole.
        crate::partials::clear_leftovers(dir).map_err(sled::Error::Io)?;
        crate::blobs::clear_leftovers(dir).map_err(sled::Error::Io)?;
        let directory = Directory::load(&db)?;

        let (events, _) = broadcast::channel(config.event_capacity.max(1));
        let group = GroupCommit::new(config.durability);
        let clock = Clock::new(identity.replica_id());
        Ok(Self {
            defer: false,
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    cache: Cache::new(config.cache_docs, config.cache_metas),
                    clock,
                    deltas: LruCache::new(
                        NonZeroUsize::new(DELTA_DOCS).unwrap_or(NonZeroUsize::MIN),
                    ),
                }),
                db,
                dir: dir.to_path_buf(),
                identity,
                config,
                events,
                feeds: Feeds::default(),
                directory: RwLock::new(directory),
                group,
                removed_peers: Mutex::new(HashSet::new()),
                unacked: Unacked::default(),
                receiving: Mutex::default(),
            }),
        })
    }

    /// What a peer's document may cost this store once loaded
    /// ([`StoreConfig::max_doc_bytes`], [`StoreConfig::max_doc_ops`]).
    pub fn limits(&self) -> crate::Limits {
        crate::Limits {
            bytes: self.shared.config.max_doc_bytes,
            ops: self.shared.config.max_doc_ops,
        }
    }

    /// The replica's identity: key pair, peer id, replica id.
    pub fn identity(&self) -> &Identity {
        &self.shared.identity
    }

    /// This replica's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.shared.identity.peer_id()
    }

    /// The replica id this store writes under.
    pub fn replica_id(&self) -> ReplicaId {
        self.shared.identity.replica_id()
    }

    /// How many documents are loaded in memory now; never more than
    /// [`StoreConfig::cache_docs`].
    pub fn loaded_docs(&self) -> usize {
        self.lock().cache.len()
    }

    /// Events for every document.
    pub fn subscribe(&self) -> Subscription {
        Subscription::new(self.shared.events.subscribe(), None)
    }

    /// Events for one document.
    pub fn subscribe_doc(&self, doc: DocId) -> Subscription {
        Subscription::new(self.shared.events.subscribe(), Some(doc))
    }

    /// A feed of the changes `peer` may read, for its sync session: a coalescing set of
    /// changed documents that never overflows (see [`ChangeFeed`]). Changes that came from the
    /// peer are left out. Dropping the feed unregisters it.
    pub fn watch(&self, peer: PeerId) -> ChangeFeed {
        self.shared.feeds.watch(peer)
    }

    /// Another handle to this store whose writes return once applied, before their flush:
    /// for a writer that takes in many documents and then calls [`Store::wait_durable`] once
    /// before it tells anyone they are saved, so that they share one flush. Sync sessions do
    /// this with what a peer sends: each document is acknowledged only after the wait. Readers
    /// see such a write at once; subscribers and feeds hear of it only once it is durable, as
    /// with every write. Everything else about the handle is the store's.
    pub fn deferring(&self) -> Store {
        Store {
            shared: self.shared.clone(),
            defer: true,
        }
    }

    /// Returns once every commit applied so far is durable: at once if none is waiting for its
    /// flush, else when the flush that covers the last one is done (under
    /// [`Durability::Batched`], up to its interval). A reader that saw a change through
    /// [`Store::read`] or [`Store::info`] and calls this afterwards knows the change is on disk;
    /// sync sessions do so before their frames go out, so peers only receive durable changes.
    pub fn wait_durable(&self) -> Result<(), StoreError> {
        let group = &self.shared.group;
        let last = group.last_applied();
        group.wait_durable(&self.shared.db, &|e| self.shared.announce(e), last)
    }

    /// Flushes everything written so far to disk, sync records and peers included.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.shared.db.flush()?;
        Ok(())
    }

    // ---- internals ---------------------------------------------------------------------------

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // The state is a cache over sled: after a panic elsewhere, a stale entry is the worst
        // case, and every write re-validates against sled's records on the next load.
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn directory(&self) -> RwLockReadGuard<'_, Directory> {
        // Kept equal to the records by its writers, who write the records first.
        self.shared
            .directory
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The directory, to change: once the change is made (when the guard drops), the index of
    /// unacknowledged documents starts over, since who may read what may have changed.
    pub(crate) fn directory_mut(&self) -> DirectoryMut<'_> {
        DirectoryMut {
            guard: self
                .shared
                .directory
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
            unacked: &self.shared.unacked,
        }
    }

    pub(crate) fn new_automerge(&self) -> Automerge {
        Automerge::new().with_actor(ActorId::from(*self.replica_id().as_bytes()))
    }

    pub(crate) fn read_meta(&self, doc: DocId) -> Result<Option<DocMeta>, StoreError> {
        read_meta(&self.shared.db, doc)
    }

    /// The peers removed since the store opened; see [`Shared::removed_peers`].
    pub(crate) fn removed_peers(&self) -> MutexGuard<'_, HashSet<PeerId>> {
        self.shared
            .removed_peers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn entry<'a>(
        &self,
        state: &'a mut State,
        doc: DocId,
    ) -> Result<&'a mut Entry, StoreError> {
        let (db, dir) = (&self.shared.db, self.shared.dir.as_path());
        entry_in(&mut state.cache, (db, dir), self.replica_id(), doc)
    }

    /// Applies a commit's records and returns once they are durable; its events are sent, in
    /// commit order, by the flush that covers it. The state lock is released before the flush,
    /// so reads and other writers go on meanwhile. A failed commit drops the document from the
    /// cache, so the next read reloads what sled holds.
    pub(crate) fn commit(
        &self,
        state: MutexGuard<'_, State>,
        doc: DocId,
        commit: Commit,
    ) -> Result<(), StoreError> {
        let db = &self.shared.db;
        let evict = |e: StoreError| {
            self.lock().cache.pop(&doc);
            e
        };
        let applied = match commit.writes {
            Writes::One(key, value) => db.insert(key, value).map(drop),
            Writes::InOrder(writes) => writes
                .into_iter()
                .try_for_each(|(key, value)| db.insert(key, value).map(drop)),
            Writes::Batch(batch) => db.apply_batch(batch),
        };
        if let Err(e) = applied {
            drop(state);
            return Err(evict(e.into()));
        }
        let group = &self.shared.group;
        let ticket = group.applied(commit.events);
        drop(state);
        if self.defer {
            return Ok(()); // the writer waits later (see `deferring`)
        }
        group
            .wait_durable(db, &|e| self.shared.announce(e), ticket)
            .map_err(evict)
    }
}

/// Opens the sled database, waiting a little for a lock that a store just closed in this
/// process may still hold: sled releases its file lock from a background thread after the
/// last handle is dropped. Another process holding it is reported as [`StoreError::InUse`].
pub(crate) fn open_db(path: &Path) -> Result<sled::Db, StoreError> {
    let mut wait = Duration::from_millis(5);
    let mut waited = Duration::ZERO;
    loop {
        // No background flusher: every write that must be durable flushes itself (see
        // `Durability`), and what is written without a flush (sync records) may wait for the
        // next one. sled's default flushes every 500 ms from a thread per database, which costs
        // a relay CPU when idle, and a process holding many stores a thread each.
        match sled::Config::new().path(path).flush_every_ms(None).open() {
            Err(sled::Error::Io(e)) if is_lock_error(&e) => {
                if waited >= LOCK_PATIENCE {
                    return Err(StoreError::InUse {
                        path: path.to_path_buf(),
                    });
                }
                std::thread::sleep(wait);
                waited += wait;
                wait = (wait * 2).min(Duration::from_millis(200));
            }
            other => return Ok(other?),
        }
    }
}

/// How long [`open_db`] waits for the lock of a store closed a moment ago.
pub(crate) const LOCK_PATIENCE: Duration = Duration::from_secs(3);

pub(crate) fn is_lock_error(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::Other && e.to_string().starts_with("could not acquire lock")
}
/// Encodes a record: ferry's own types of plain data, which always encode.
pub(crate) fn encode_record<T: Serialize>(record: &T) -> Vec<u8> {
    encode(record).expect("a record of plain data always encodes")
}

pub(crate) fn automerge_error(doc: DocId, source: AutomergeError) -> StoreError {
    StoreError::Automerge {
        doc,
        source: Box::new(source),
    }
}

pub(crate) fn wrong_kind(doc: DocId, expected: &'static [DocKind], found: DocKind) -> StoreError {
    StoreError::WrongKind {
        doc,
        expected,
        found,
    }
}

/// The directory, held to change; see [`Store::directory_mut`].
pub(crate) struct DirectoryMut<'a> {
    guard: RwLockWriteGuard<'a, Directory>,
    unacked: &'a Unacked,
}

impl std::ops::Deref for DirectoryMut<'_> {
    type Target = Directory;

    fn deref(&self) -> &Directory {
        &self.guard
    }
}

impl std::ops::DerefMut for DirectoryMut<'_> {
    fn deref_mut(&mut self) -> &mut Directory {
        &mut self.guard
    }
}

impl Drop for DirectoryMut<'_> {
    fn drop(&mut self) {
        // Still under the directory's lock, so no question lists the peer's documents
        // between the change and this.
        self.unacked.clear();
    }
}
