//! The store: documents, peers and sync state in one sled database.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use automerge::transaction::Transaction;
use automerge::{ActorId, Automerge, AutomergeError, Change, ChangeHash, ReadDoc};
use ferry_crdt::{
    Clock, Crdt, Digest, GCounter, LwwRegister, MvRegister, PNCounter, ReplicaId, decode, encode,
};
use lru::LruCache;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::durability::GroupCommit;
use crate::records::{self, DocMeta, FORMAT, Incremental, RECORD_LIMIT};
use crate::{
    DocId, Durability, Identity, Origin, PeerId, StoreError, StoreEvent, Subscription, SyncRecord,
    Version,
};

/// The kinds of document a store holds.
#[derive(Clone, Copy, Debug, Deserialize, Eq, Hash, Ord, PartialEq, PartialOrd, Serialize)]
pub enum DocKind {
    /// An Automerge document: JSON-like data and text.
    Automerge,
    /// A grow-only counter ([`GCounter`]).
    GCounter,
    /// A counter that goes up and down ([`PNCounter`]).
    PNCounter,
    /// A last-writer-wins register of bytes ([`LwwRegister`]).
    LwwRegister,
    /// A multi-value register of bytes ([`MvRegister`]).
    MvRegister,
}

impl DocKind {
    /// Every kind, in a fixed order.
    pub const ALL: [DocKind; 5] = [
        DocKind::Automerge,
        DocKind::GCounter,
        DocKind::PNCounter,
        DocKind::LwwRegister,
        DocKind::MvRegister,
    ];
}

impl fmt::Display for DocKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DocKind::Automerge => "automerge",
            DocKind::GCounter => "gcounter",
            DocKind::PNCounter => "pncounter",
            DocKind::LwwRegister => "lww",
            DocKind::MvRegister => "mv",
        })
    }
}

/// The state of a document of one of the ferry-crdt kinds. Register values are bytes; the
/// app chooses their encoding.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum CrdtState {
    /// A grow-only counter.
    GCounter(GCounter),
    /// An up/down counter.
    PNCounter(PNCounter),
    /// A last-writer-wins register.
    LwwRegister(LwwRegister<Vec<u8>>),
    /// A multi-value register.
    MvRegister(MvRegister<Vec<u8>>),
}

impl CrdtState {
    fn empty(kind: DocKind) -> Option<Self> {
        Some(match kind {
            DocKind::Automerge => return None,
            DocKind::GCounter => CrdtState::GCounter(GCounter::new()),
            DocKind::PNCounter => CrdtState::PNCounter(PNCounter::new()),
            DocKind::LwwRegister => CrdtState::LwwRegister(LwwRegister::new()),
            DocKind::MvRegister => CrdtState::MvRegister(MvRegister::new()),
        })
    }

    fn decode(kind: DocKind, bytes: &[u8]) -> Result<Self, ferry_crdt::DecodeError> {
        Ok(match kind {
            DocKind::GCounter => CrdtState::GCounter(decode(bytes, RECORD_LIMIT)?),
            DocKind::PNCounter => CrdtState::PNCounter(decode(bytes, RECORD_LIMIT)?),
            DocKind::LwwRegister => CrdtState::LwwRegister(decode(bytes, RECORD_LIMIT)?),
            DocKind::MvRegister | DocKind::Automerge => {
                CrdtState::MvRegister(decode(bytes, RECORD_LIMIT)?)
            }
        })
    }

    /// The kind of document this state belongs to.
    pub fn kind(&self) -> DocKind {
        match self {
            CrdtState::GCounter(_) => DocKind::GCounter,
            CrdtState::PNCounter(_) => DocKind::PNCounter,
            CrdtState::LwwRegister(_) => DocKind::LwwRegister,
            CrdtState::MvRegister(_) => DocKind::MvRegister,
        }
    }

    /// The canonical encoding, the form in which peers exchange it.
    pub fn encode(&self) -> Vec<u8> {
        let encoded = match self {
            CrdtState::GCounter(s) => encode(s),
            CrdtState::PNCounter(s) => encode(s),
            CrdtState::LwwRegister(s) => encode(s),
            CrdtState::MvRegister(s) => encode(s),
        };
        // Byte values and ferry's own types always encode.
        encoded.unwrap_or_default()
    }

    /// Merges `other` (of the same kind) in; returns whether anything changed.
    fn merge_owned(&mut self, other: CrdtState) -> bool {
        match (self, other) {
            (CrdtState::GCounter(a), CrdtState::GCounter(b)) => a.merge_owned(b),
            (CrdtState::PNCounter(a), CrdtState::PNCounter(b)) => a.merge_owned(b),
            (CrdtState::LwwRegister(a), CrdtState::LwwRegister(b)) => a.merge_owned(b),
            (CrdtState::MvRegister(a), CrdtState::MvRegister(b)) => a.merge_owned(b),
            _ => false,
        }
    }
}

/// What a peer may do with a document.
#[derive(
    Clone, Copy, Debug, Default, Deserialize, Eq, Hash, Ord, PartialEq, PartialOrd, Serialize,
)]
pub enum Access {
    /// Nothing: the peer never learns the document exists.
    #[default]
    None,
    /// The peer may receive the document but its changes are refused.
    Read,
    /// The peer may receive the document and send changes to it.
    ReadWrite,
}

/// A peer this replica knows.
///
/// # Examples
///
/// ```
/// use ferry_store::{Access, DocId, PeerId, PeerInfo};
///
/// let mut laptop = PeerInfo::new(PeerId::from_bytes([7; 16]), "laptop");
/// laptop.addresses.push("127.0.0.1:4433".parse().unwrap());
/// let shared = DocId::random();
/// laptop.docs.insert(shared, Access::ReadWrite);
/// assert_eq!(laptop.access(shared), Access::ReadWrite);
/// assert_eq!(laptop.access(DocId::random()), Access::None); // the default
/// ```
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub struct PeerInfo {
    /// Its peer id, pinned in the TLS handshake.
    pub id: PeerId,
    /// A name for people.
    pub name: String,
    /// Where to dial it.
    pub addresses: Vec<SocketAddr>,
    /// Its access to documents not listed in `docs`.
    pub default_access: Access,
    /// Its access per document.
    pub docs: BTreeMap<DocId, Access>,
}

impl PeerInfo {
    /// A peer with no addresses and no access to anything.
    pub fn new(id: PeerId, name: impl Into<String>) -> Self {
        Self {
            id,
            name: name.into(),
            addresses: Vec::new(),
            default_access: Access::None,
            docs: BTreeMap::new(),
        }
    }

    /// The peer's access to `doc`.
    pub fn access(&self, doc: DocId) -> Access {
        self.docs.get(&doc).copied().unwrap_or(self.default_access)
    }
}

/// What the store knows of a document without loading it.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct DocInfo {
    /// The document.
    pub id: DocId,
    /// Its kind.
    pub kind: DocKind,
    /// Its version: heads, or a state digest.
    pub version: Version,
    /// Its digest, as the sync protocol compares it: blake3 of the sorted heads, or of the
    /// canonical state.
    pub digest: Digest,
    /// Automerge changes it holds, or CRDT operations and merges that changed it.
    pub changes: u64,
    /// Bytes stored for it: snapshot plus incremental records.
    pub stored_bytes: u64,
}

/// How far a peer is behind on one document; see [`Store::sync_status`].
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub struct DocSyncStatus {
    /// Changes held here that the peer has not acknowledged: Automerge changes outside the
    /// history of the heads it acknowledged; for the ferry-crdt kinds, operations and merges
    /// since it acknowledged the state (at least 1 whenever its state differs). 0 when the peer
    /// holds everything this replica has of the document.
    pub pending: u64,
    /// When the peer was last seen to hold all of the document, in milliseconds since the Unix
    /// epoch; `None` if never.
    pub last_sync_millis: Option<u64>,
}

/// What one step of sync learned about a (peer, document) pair; see [`Store::record_sync`].
#[derive(Clone, Debug, Default, Eq, PartialEq)]
pub struct SyncUpdate {
    /// The automerge sync state to keep for the peer.
    pub automerge_state: Option<Vec<u8>>,
    /// A version the peer said it holds.
    pub acked: Option<Version>,
    /// The time, when the peer now holds everything this replica has of the document.
    pub synced_at: Option<u64>,
}

/// How a store is opened.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// When commits return. Default: [`Durability::Immediate`].
    pub durability: Durability,
    /// How many loaded documents to keep in memory; older ones are dropped and reloaded from
    /// disk when needed. Default: 256.
    pub cache_docs: NonZeroUsize,
    /// Incrementals are compacted into a new snapshot once they outgrow both the snapshot and
    /// this many bytes. Default: 64 KiB.
    pub compact_min_bytes: u64,
    /// Events a subscriber may fall behind by before it is told it lagged. Default: 1024.
    pub event_capacity: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            durability: Durability::Immediate,
            cache_docs: NonZeroUsize::new(256).unwrap_or(NonZeroUsize::MIN),
            compact_min_bytes: 64 * 1024,
            event_capacity: 1024,
        }
    }
}

/// The blake3 digest of a document's sorted heads, as the sync protocol compares them.
pub fn heads_digest(heads: &[ChangeHash]) -> Digest {
    let mut sorted: Vec<&ChangeHash> = heads.iter().collect();
    sorted.sort_unstable();
    let mut hasher = blake3::Hasher::new();
    for head in sorted {
        hasher.update(&head.0);
    }
    Digest::from_bytes(*hasher.finalize().as_bytes())
}

/// Those of `heads` that `am` holds.
/// Whether `heads` and `acked` name the same set of changes.
fn same_hashes(heads: &[ChangeHash], acked: &[[u8; 32]]) -> bool {
    let mut a: Vec<[u8; 32]> = heads.iter().map(|h| h.0).collect();
    let mut b = acked.to_vec();
    a.sort_unstable();
    b.sort_unstable();
    a == b
}

fn known_heads(am: &Automerge, heads: &[ChangeHash]) -> Vec<ChangeHash> {
    let missing = am.get_missing_deps(heads);
    heads
        .iter()
        .filter(|h| !missing.contains(h))
        .copied()
        .collect()
}

/// A replica's durable local store: the source of truth the app reads and subscribes to, and
/// that sync writes into.
///
/// Cloning a `Store` gives another handle to the same store; it closes when the last handle is
/// dropped. Every write is durable before it returns (see [`Durability`]), and subscribers hear
/// of it only once it is durable. Reads on other threads may see a change a moment earlier,
/// while its flush runs; the sync layer calls [`Store::flush`] before it sends anything to a
/// peer, so peers only ever receive durable changes.
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
    shared: Arc<Shared>,
}

struct Shared {
    db: sled::Db,
    identity: Identity,
    config: StoreConfig,
    state: Mutex<State>,
    events: broadcast::Sender<StoreEvent>,
    group: GroupCommit,
}

struct State {
    cache: LruCache<DocId, Entry>,
    clock: Clock,
}

/// A loaded document and its metadata, kept together so they never disagree.
struct Entry {
    meta: DocMeta,
    doc: Loaded,
}

enum Loaded {
    Automerge(Box<Automerge>),
    Crdt(CrdtState),
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
struct Commit {
    writes: Writes,
    events: Vec<StoreEvent>,
}

impl Commit {
    /// A commit that changes `doc`, announced with `origin` and the new `version`.
    fn changed(writes: Writes, doc: DocId, origin: Origin, version: Version) -> Self {
        Self {
            writes,
            events: vec![StoreEvent::Changed {
                doc,
                origin,
                version,
            }],
        }
    }
}

/// A commit's records: one insert where one record says it all, a batch otherwise.
enum Writes {
    One(Vec<u8>, Vec<u8>),
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

        let (events, _) = broadcast::channel(config.event_capacity.max(1));
        let group = GroupCommit::new(config.durability);
        let clock = Clock::new(identity.replica_id());
        Ok(Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    cache: LruCache::new(config.cache_docs),
                    clock,
                }),
                db,
                identity,
                config,
                events,
                group,
            }),
        })
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

    /// Flushes everything written so far to disk. A batched store's sync layer calls this
    /// before sending changes, so that only durable changes reach peers.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.shared.db.flush()?;
        Ok(())
    }

    // ---- documents -------------------------------------------------------------------------

    /// Creates an empty document of `kind` with a fresh id.
    pub fn create(&self, kind: DocKind) -> Result<DocId, StoreError> {
        let doc = DocId::random();
        self.create_with_id(doc, kind, Origin::Local)?;
        Ok(doc)
    }

    /// Creates an empty document with a given id, as sync does for a document a peer shares.
    /// Returns `false` if it already exists with that kind; fails if it exists with another.
    pub fn create_with_id(
        &self,
        doc: DocId,
        kind: DocKind,
        origin: Origin,
    ) -> Result<bool, StoreError> {
        let empty = match CrdtState::empty(kind) {
            None => Loaded::Automerge(Box::new(self.new_automerge())),
            Some(crdt) => Loaded::Crdt(crdt),
        };
        Ok(self.create_entry(doc, kind, origin, empty)?.is_none())
    }

    /// Takes in a whole Automerge document a peer sent (a clone): if `doc` is not here, it is
    /// created with that content in one durable write, so no reader ever sees it empty;
    /// otherwise the content is merged into the copy here. Returns whether anything changed.
    ///
    /// # Examples
    ///
    /// ```
    /// use automerge::{Automerge, ROOT, transaction::Transactable};
    /// use ferry_store::{DocId, Origin, PeerId, Store};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path())?;
    /// let mut theirs = Automerge::new();
    /// theirs.transact(|tx| tx.put(ROOT, "title", "minutes"))
    ///     .map_err(|f| f.error)?;
    /// let doc = DocId::random();
    /// let from = Origin::Remote(PeerId::from_bytes([7; 16]));
    /// assert!(store.adopt(doc, from, theirs.clone())?);
    /// assert_eq!(store.read(doc, |d| d.get_heads())?, theirs.get_heads());
    /// assert!(!store.adopt(doc, from, theirs)?); // nothing new the second time
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn adopt(&self, doc: DocId, origin: Origin, am: Automerge) -> Result<bool, StoreError> {
        let actor = ActorId::from(*self.replica_id().as_bytes());
        let loaded = Loaded::Automerge(Box::new(am.with_actor(actor)));
        let Some(Loaded::Automerge(mut theirs)) =
            self.create_entry(doc, DocKind::Automerge, origin, loaded)?
        else {
            return Ok(true);
        };
        self.update(doc, origin, |am| {
            // (`merge` lists every change it was given, held here or not.)
            let before = am.get_heads();
            am.merge(&mut theirs)?;
            Ok(am.get_heads() != before)
        })
    }

    /// Takes in the whole state of a CRDT document a peer sent: if `doc` is not here, it is
    /// created with that state in one durable write; otherwise the state is merged into the
    /// copy here. Returns whether anything changed.
    pub fn adopt_state(
        &self,
        doc: DocId,
        kind: DocKind,
        origin: Origin,
        bytes: &[u8],
    ) -> Result<bool, StoreError> {
        if kind == DocKind::Automerge {
            return Err(wrong_kind(doc, DocKind::GCounter, kind));
        }
        let incoming = CrdtState::decode(kind, bytes)
            .map_err(|source| StoreError::BadState { doc, source })?;
        if self
            .create_entry(doc, kind, origin, Loaded::Crdt(incoming))?
            .is_none()
        {
            return Ok(true);
        }
        let before = self.info(doc)?.digest;
        Ok(self.merge_state(doc, origin, bytes)? != before)
    }

    /// Creates `doc` with `content` in one commit, unless it exists: then the content is
    /// handed back (or the kinds differ, an error).
    fn create_entry(
        &self,
        doc: DocId,
        kind: DocKind,
        origin: Origin,
        content: Loaded,
    ) -> Result<Option<Loaded>, StoreError> {
        let mut state = self.lock();
        if let Some(meta) = self.read_meta(doc)? {
            return if meta.kind == kind {
                Ok(Some(content))
            } else {
                Err(StoreError::WrongKind {
                    doc,
                    expected: kind,
                    found: meta.kind,
                })
            };
        }
        let mut meta = DocMeta {
            kind,
            heads: Vec::new(),
            digest: *heads_digest(&[]).as_bytes(),
            changes: 0,
            snapshot_bytes: 0,
            incremental_bytes: 0,
            next_incremental: 0,
        };
        let writes = match &content {
            Loaded::Automerge(am) => {
                let heads = am.get_heads();
                meta.heads = heads.iter().map(|h| h.0).collect();
                meta.digest = *heads_digest(&heads).as_bytes();
                meta.changes = am.stats().num_changes;
                if heads.is_empty() {
                    Writes::One(records::meta_key(doc).to_vec(), encode_record(&meta))
                } else {
                    Writes::Batch(compaction(&self.shared.db, doc, am, &mut meta)?)
                }
            }
            Loaded::Crdt(crdt) => {
                let bytes = crdt.encode();
                meta.digest = *Digest::of_bytes(&bytes).as_bytes();
                if CrdtState::empty(kind).as_ref() == Some(crdt) {
                    Writes::One(records::meta_key(doc).to_vec(), encode_record(&meta))
                } else {
                    meta.changes = 1;
                    meta.snapshot_bytes = bytes.len() as u64;
                    let mut batch = sled::Batch::default();
                    batch.insert(&records::snapshot_key(doc), bytes);
                    batch.insert(&records::meta_key(doc), encode_record(&meta));
                    Writes::Batch(batch)
                }
            }
        };
        let version = version_of(&meta);
        state.cache.put(doc, Entry { meta, doc: content });
        let commit = Commit::changed(writes, doc, origin, version);
        self.commit(state, doc, commit)?;
        Ok(None)
    }

    /// Every document's id, in id order. Never fails on a damaged document: its id is listed
    /// and [`Store::info`] on it returns the error.
    pub fn list(&self) -> Result<Vec<DocId>, StoreError> {
        let mut docs = Vec::new();
        for item in self.shared.db.scan_prefix(records::META_PREFIX).keys() {
            let key = item?;
            if let Ok(bytes) = <[u8; 16]>::try_from(&key[1..]) {
                docs.push(DocId::from_bytes(bytes));
            }
        }
        Ok(docs)
    }

    /// What the store knows of `doc`, without loading it.
    pub fn info(&self, doc: DocId) -> Result<DocInfo, StoreError> {
        let meta = self
            .read_meta(doc)?
            .ok_or(StoreError::NoSuchDocument(doc))?;
        Ok(DocInfo {
            id: doc,
            kind: meta.kind,
            version: version_of(&meta),
            digest: Digest::from_bytes(meta.digest),
            changes: meta.changes,
            stored_bytes: meta.snapshot_bytes + meta.incremental_bytes,
        })
    }

    /// Deletes `doc` on this replica, with its sync records. Peers keep their copies.
    pub fn delete(&self, doc: DocId) -> Result<(), StoreError> {
        let mut state = self.lock();
        if self.read_meta(doc)?.is_none() {
            return Err(StoreError::NoSuchDocument(doc));
        }
        let mut batch = sled::Batch::default();
        batch.remove(&records::meta_key(doc));
        batch.remove(&records::snapshot_key(doc));
        for key in self
            .shared
            .db
            .scan_prefix(records::incremental_prefix(doc))
            .keys()
        {
            batch.remove(key?);
        }
        for key in self.shared.db.scan_prefix(records::SYNC_PREFIX).keys() {
            let key = key?;
            if key.ends_with(doc.as_bytes()) {
                batch.remove(key);
            }
        }
        state.cache.pop(&doc);
        let commit = Commit {
            writes: Writes::Batch(batch),
            events: vec![StoreEvent::Deleted { doc }],
        };
        self.commit(state, doc, commit)
    }

    // ---- Automerge documents -----------------------------------------------------------------

    /// Makes a local change to an Automerge document in one transaction; durable when it
    /// returns. A closure that fails leaves the document unchanged.
    pub fn change<R>(
        &self,
        doc: DocId,
        f: impl FnOnce(&mut Transaction<'_>) -> Result<R, AutomergeError>,
    ) -> Result<R, StoreError> {
        self.update(doc, Origin::Local, |am| {
            am.transact(f)
                .map(|success| success.result)
                .map_err(|failure| failure.error)
        })
    }

    /// Applies changes from a peer and returns the new heads. Parse each change's bytes with
    /// [`Change::from_bytes`], which refuses anything damaged or left over. Changes already
    /// held are skipped, so applying the same changes again changes nothing.
    ///
    /// Every change must be applicable: a dependency that is neither in the document nor
    /// among `changes` is refused with [`StoreError::MissingDependencies`], and nothing is
    /// applied. (automerge would otherwise hold such changes in memory only, where a restart
    /// loses them without a word.)
    pub fn apply_changes(
        &self,
        doc: DocId,
        origin: Origin,
        changes: Vec<Change>,
    ) -> Result<Vec<ChangeHash>, StoreError> {
        let incoming: HashSet<ChangeHash> = changes.iter().map(Change::hash).collect();
        let mut outside: Vec<ChangeHash> = changes
            .iter()
            .flat_map(|c| c.deps().iter().copied())
            .filter(|dep| !incoming.contains(dep))
            .collect();
        outside.sort_unstable();
        outside.dedup();
        self.update_with(doc, origin, |am| {
            let missing = am.get_missing_deps(&outside);
            if !missing.is_empty() {
                return Err(StoreError::MissingDependencies { doc, missing });
            }
            am.apply_changes(changes)
                .map_err(|source| automerge_error(doc, source))?;
            Ok(am.get_heads())
        })
    }

    /// Runs `f` on an Automerge document and persists whatever changes it made, as one
    /// durable commit, announced with `origin`. This is how sync applies automerge's own sync
    /// messages. If `f` fails, the document is reloaded from disk, as it was.
    pub fn update<R>(
        &self,
        doc: DocId,
        origin: Origin,
        f: impl FnOnce(&mut Automerge) -> Result<R, AutomergeError>,
    ) -> Result<R, StoreError> {
        self.update_with(doc, origin, |am| {
            f(am).map_err(|source| automerge_error(doc, source))
        })
    }

    /// [`Store::update`] for closures that may refuse with any store error. A refusal other
    /// than [`StoreError::Automerge`] must leave the document untouched; after an automerge
    /// error the document is reloaded from disk.
    fn update_with<R>(
        &self,
        doc: DocId,
        origin: Origin,
        f: impl FnOnce(&mut Automerge) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let mut state = self.lock();
        let compact_min = self.shared.config.compact_min_bytes;
        let entry = self.entry(&mut state, doc)?;
        let Loaded::Automerge(am) = &mut entry.doc else {
            return Err(wrong_kind(doc, DocKind::Automerge, entry.meta.kind));
        };
        let old_heads: Vec<ChangeHash> = entry.meta.heads.iter().map(|h| ChangeHash(*h)).collect();
        let result = match f(am) {
            Ok(result) => result,
            Err(e) => {
                if matches!(e, StoreError::Automerge { .. }) {
                    state.cache.pop(&doc);
                }
                return Err(e);
            }
        };
        let heads = am.get_heads();
        if heads == old_heads {
            return Ok(result);
        }

        let mut meta = entry.meta.clone();
        let was_empty = meta.changes == 0;
        meta.heads = heads.iter().map(|h| h.0).collect();
        meta.digest = *heads_digest(&heads).as_bytes();
        meta.changes = am.stats().num_changes;

        // The commit's changes as `save_after` writes them; but a whole history arriving at
        // once (a document cloned from a peer) goes straight into a snapshot, without first
        // listing every change.
        let whole_history = was_empty && meta.changes > WHOLE_HISTORY;
        let chunk = if whole_history {
            Vec::new()
        } else {
            am.save_after(&old_heads)
        };
        let outgrown = whole_history
            || meta.incremental_bytes + chunk.len() as u64 > meta.snapshot_bytes.max(compact_min);
        let writes = if outgrown {
            Writes::Batch(compaction(&self.shared.db, doc, am, &mut meta)?)
        } else {
            // One record, carrying the metadata after this commit.
            let key = records::incremental_key(doc, meta.next_incremental);
            meta.next_incremental += 1;
            meta.incremental_bytes += chunk.len() as u64;
            let record = Incremental {
                meta: meta.clone(),
                changes: chunk,
            };
            Writes::One(key.to_vec(), encode_record(&record))
        };
        let version = Version::Heads(heads);
        entry.meta = meta;
        let commit = Commit::changed(writes, doc, origin, version);
        self.commit(state, doc, commit)?;
        Ok(result)
    }

    /// Writes a new snapshot of an Automerge document and removes its incrementals, in one
    /// atomic batch: a crash leaves the old records or the new ones, never less.
    pub fn compact(&self, doc: DocId) -> Result<(), StoreError> {
        let mut state = self.lock();
        let entry = self.entry(&mut state, doc)?;
        let Loaded::Automerge(am) = &entry.doc else {
            return Ok(()); // CRDT documents are always one snapshot.
        };
        if entry.meta.incremental_bytes == 0 {
            return Ok(());
        }
        let mut meta = entry.meta.clone();
        let batch = compaction(&self.shared.db, doc, am, &mut meta)?;
        entry.meta = meta;
        self.commit(
            state,
            doc,
            Commit {
                writes: Writes::Batch(batch),
                events: Vec::new(),
            },
        )
    }

    /// Reads an Automerge document.
    pub fn read<R>(&self, doc: DocId, f: impl FnOnce(&Automerge) -> R) -> Result<R, StoreError> {
        let mut state = self.lock();
        let entry = self.entry(&mut state, doc)?;
        match &entry.doc {
            Loaded::Automerge(am) => Ok(f(am)),
            Loaded::Crdt(_) => Err(wrong_kind(doc, DocKind::Automerge, entry.meta.kind)),
        }
    }

    // ---- ferry-crdt documents ----------------------------------------------------------------

    /// Adds `n` to a [`GCounter`] or [`PNCounter`] document on this replica's behalf.
    pub fn increment(&self, doc: DocId, n: u64) -> Result<Digest, StoreError> {
        self.update_crdt(doc, |state, replica, _| match state {
            CrdtState::GCounter(c) => Ok(c.increment(replica, n)? != GCounter::new()),
            CrdtState::PNCounter(c) => Ok(c.increment(replica, n)? != PNCounter::new()),
            other => Err(KindOr::Kind(other.kind())),
        })
        .map_err(|e| e.expecting(DocKind::GCounter))
    }

    /// Subtracts `n` from a [`PNCounter`] document on this replica's behalf.
    pub fn decrement(&self, doc: DocId, n: u64) -> Result<Digest, StoreError> {
        self.update_crdt(doc, |state, replica, _| match state {
            CrdtState::PNCounter(c) => Ok(c.decrement(replica, n)? != PNCounter::new()),
            other => Err(KindOr::Kind(other.kind())),
        })
        .map_err(|e| e.expecting(DocKind::PNCounter))
    }

    /// Writes a register document ([`LwwRegister`] or [`MvRegister`]).
    pub fn set_register(&self, doc: DocId, value: Vec<u8>) -> Result<Digest, StoreError> {
        self.update_crdt(doc, |state, replica, clock| match state {
            CrdtState::LwwRegister(r) => {
                r.set(value, clock, wall_millis());
                Ok(true)
            }
            CrdtState::MvRegister(r) => {
                r.set(replica, value)?;
                Ok(true)
            }
            other => Err(KindOr::Kind(other.kind())),
        })
        .map_err(|e| e.expecting(DocKind::LwwRegister))
    }

    /// Merges a state or delta from a peer (its canonical encoding) into a CRDT document.
    /// Returns the new digest. Bytes that do not decode change nothing.
    pub fn merge_state(
        &self,
        doc: DocId,
        origin: Origin,
        bytes: &[u8],
    ) -> Result<Digest, StoreError> {
        let kind = self.info(doc)?.kind;
        if kind == DocKind::Automerge {
            return Err(wrong_kind(doc, DocKind::GCounter, kind));
        }
        let incoming = CrdtState::decode(kind, bytes)
            .map_err(|source| StoreError::BadState { doc, source })?;
        self.update_crdt_from(doc, origin, |state, _, _| Ok(state.merge_owned(incoming)))
            .map_err(|e| e.expecting(kind))
    }

    /// A copy of a CRDT document's state.
    pub fn crdt(&self, doc: DocId) -> Result<CrdtState, StoreError> {
        let mut state = self.lock();
        let entry = self.entry(&mut state, doc)?;
        match &entry.doc {
            Loaded::Crdt(crdt) => Ok(crdt.clone()),
            Loaded::Automerge(_) => Err(wrong_kind(doc, DocKind::GCounter, DocKind::Automerge)),
        }
    }

    fn update_crdt(
        &self,
        doc: DocId,
        f: impl FnOnce(&mut CrdtState, ReplicaId, &mut Clock) -> Result<bool, KindOr>,
    ) -> Result<Digest, CrdtUpdateError> {
        self.update_crdt_from(doc, Origin::Local, f)
    }

    fn update_crdt_from(
        &self,
        doc: DocId,
        origin: Origin,
        f: impl FnOnce(&mut CrdtState, ReplicaId, &mut Clock) -> Result<bool, KindOr>,
    ) -> Result<Digest, CrdtUpdateError> {
        let replica = self.replica_id();
        let mut state = self.lock();
        let State { cache, clock } = &mut *state;
        let entry = entry_in(cache, &self.shared.db, replica, doc)?;
        let Loaded::Crdt(crdt) = &mut entry.doc else {
            return Err(CrdtUpdateError::Kind(doc, DocKind::Automerge));
        };
        let mut updated = crdt.clone();
        let changed = match f(&mut updated, replica, clock) {
            Ok(changed) => changed,
            Err(KindOr::Kind(found)) => return Err(CrdtUpdateError::Kind(doc, found)),
            Err(KindOr::Overflow(e)) => return Err(CrdtUpdateError::Store(e.into())),
        };
        if !changed {
            return Ok(Digest::from_bytes(entry.meta.digest));
        }
        let bytes = updated.encode();
        let digest = Digest::of_bytes(&bytes);
        let mut meta = entry.meta.clone();
        meta.digest = *digest.as_bytes();
        meta.changes += 1;
        meta.snapshot_bytes = bytes.len() as u64;
        let mut batch = sled::Batch::default();
        batch.insert(&records::snapshot_key(doc), bytes);
        batch.insert(&records::meta_key(doc), encode_record(&meta));
        *crdt = updated;
        entry.meta = meta;
        let commit = Commit::changed(Writes::Batch(batch), doc, origin, Version::Digest(digest));
        self.commit(state, doc, commit)?;
        Ok(digest)
    }

    // ---- sync state and peers ----------------------------------------------------------------

    /// How far sync with `peer` has come on `doc`, if it ever started.
    pub fn sync_record(&self, peer: PeerId, doc: DocId) -> Result<Option<SyncRecord>, StoreError> {
        match self.shared.db.get(records::sync_key(peer, doc))? {
            None => Ok(None),
            Some(bytes) => {
                decode(&bytes, RECORD_LIMIT)
                    .map(Some)
                    .map_err(|_| StoreError::Damaged {
                        doc,
                        what: "sync record",
                    })
            }
        }
    }

    /// Saves how far sync with `peer` has come on `doc`. Not flushed on its own: losing it in
    /// a crash costs a longer next sync, never data.
    pub fn put_sync_record(
        &self,
        peer: PeerId,
        doc: DocId,
        record: &SyncRecord,
    ) -> Result<(), StoreError> {
        self.shared
            .db
            .insert(records::sync_key(peer, doc), encode_record(record))?;
        Ok(())
    }

    /// Records what sync with `peer` learned about `doc`, in one write. Not flushed on its own:
    /// losing it in a crash costs a longer next sync and a stale status, never data.
    ///
    /// An acknowledged [`Version::Heads`] may name changes this replica does not hold yet (the
    /// peer's own); the pending count covers the history of those it does hold.
    pub fn record_sync(
        &self,
        peer: PeerId,
        doc: DocId,
        update: SyncUpdate,
    ) -> Result<(), StoreError> {
        let mut record = self.sync_record(peer, doc)?.unwrap_or_default();
        if let Some(state) = update.automerge_state {
            record.automerge_state = state;
        }
        match update.acked {
            None => {}
            Some(Version::Heads(heads)) => {
                let info = self.info(doc)?;
                record.acked_changes = if info.version == Version::Heads(heads.clone()) {
                    info.changes // the usual case, known without loading the document
                } else {
                    self.read(doc, |am| {
                        let known = known_heads(am, &heads);
                        let total = am.stats().num_changes;
                        total.saturating_sub(am.get_changes_meta(&known).len() as u64)
                    })?
                };
                record.acked = heads.iter().map(|h| h.0).collect();
            }
            Some(Version::Digest(digest)) => {
                let info = self.info(doc)?;
                if info.digest == digest {
                    record.acked_changes = info.changes;
                }
                record.acked = vec![*digest.as_bytes()];
            }
        }
        if update.synced_at.is_some() {
            record.last_sync_millis = update.synced_at;
        }
        self.put_sync_record(peer, doc, &record)
    }

    /// How far `peer` is behind on `doc`: the changes it has not acknowledged, and when it was
    /// last seen to hold all of the document.
    ///
    /// # Examples
    ///
    /// ```
    /// use ferry_store::{DocKind, PeerId, Store};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path())?;
    /// let doc = store.create(DocKind::GCounter)?;
    /// store.increment(doc, 1)?;
    /// let peer = PeerId::from_bytes([1; 16]);
    /// let status = store.sync_status(peer, doc)?;
    /// assert_eq!(status.pending, 1); // never synced: everything is pending
    /// assert_eq!(status.last_sync_millis, None);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn sync_status(&self, peer: PeerId, doc: DocId) -> Result<DocSyncStatus, StoreError> {
        let info = self.info(doc)?;
        let record = self.sync_record(peer, doc)?.unwrap_or_default();
        let pending = match info.kind {
            DocKind::Automerge => match &info.version {
                _ if record.acked.is_empty() => info.changes,
                Version::Heads(heads) if same_hashes(heads, &record.acked) => 0,
                // The peer acknowledged other heads: count, in the document, the changes
                // outside the history of the acknowledged heads held here. (The count kept
                // with the acknowledgement is stale once changes it lacked arrive from
                // elsewhere.)
                _ => {
                    let acked: Vec<ChangeHash> =
                        record.acked.iter().map(|h| ChangeHash(*h)).collect();
                    self.read(doc, |am| {
                        am.get_changes_meta(&known_heads(am, &acked)).len() as u64
                    })?
                }
            },
            _ if record.acked == [*info.digest.as_bytes()] => 0,
            // A state never acknowledged, or since changed: at least one change is pending.
            _ => info.changes.saturating_sub(record.acked_changes).max(1),
        };
        // A document the peer held at the last completed reconciliation was in sync then.
        let reconciled = self.reconciled(peer)?;
        let last_sync_millis = match (pending, record.last_sync_millis, reconciled) {
            (0, Some(at), Some(r)) => Some(at.max(r)),
            (_, at, _) => at,
        };
        Ok(DocSyncStatus {
            pending,
            last_sync_millis,
        })
    }

    /// Whether `peer` has acknowledged holding `change` of an Automerge document: whether the
    /// change is in the history of the heads the peer last acknowledged. A change this replica
    /// does not hold is not acknowledged.
    ///
    /// # Examples
    ///
    /// ```
    /// use automerge::{ROOT, transaction::Transactable};
    /// use ferry_store::{DocKind, PeerId, Store};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path())?;
    /// let chat = store.create(DocKind::Automerge)?;
    /// store.change(chat, |tx| tx.put(ROOT, "hi", "there"))?;
    /// let sent = store.read(chat, |d| d.get_heads())?[0];
    /// let peer = PeerId::from_bytes([2; 16]);
    /// assert!(!store.acknowledged(peer, chat, sent)?); // still pending for that peer
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn acknowledged(
        &self,
        peer: PeerId,
        doc: DocId,
        change: ChangeHash,
    ) -> Result<bool, StoreError> {
        let acked: Vec<ChangeHash> = self
            .sync_record(peer, doc)?
            .map(|r| r.acked.iter().map(|h| ChangeHash(*h)).collect())
            .unwrap_or_default();
        if acked.is_empty() {
            return Ok(false);
        }
        self.read(doc, |am| {
            if !am.get_missing_deps(&[change]).is_empty() {
                return false;
            }
            let known = known_heads(am, &acked);
            !am.get_changes_meta(&known).iter().any(|c| c.hash == change)
        })
    }

    /// Records that a sync session with `peer` finished reconciling at `now_millis`: every
    /// document the peer may read was compared.
    pub fn set_reconciled(&self, peer: PeerId, now_millis: u64) -> Result<(), StoreError> {
        self.shared
            .db
            .insert(records::reconciled_key(peer), &now_millis.to_le_bytes())?;
        Ok(())
    }

    /// When a sync session with `peer` last finished reconciling, if ever.
    pub fn reconciled(&self, peer: PeerId) -> Result<Option<u64>, StoreError> {
        match self.shared.db.get(records::reconciled_key(peer))? {
            None => Ok(None),
            Some(bytes) => <[u8; 8]>::try_from(bytes.as_ref())
                .map(|b| Some(u64::from_le_bytes(b)))
                .map_err(|_| StoreError::DamagedRecord {
                    what: "reconciliation time",
                }),
        }
    }

    /// Adds a peer or replaces what the store knows of it; durable when it returns.
    pub fn put_peer(&self, peer: &PeerInfo) -> Result<(), StoreError> {
        self.shared
            .db
            .insert(records::peer_key(peer.id), encode_record(peer))?;
        self.shared.db.flush()?;
        Ok(())
    }

    /// What the store knows of `peer`.
    pub fn peer(&self, peer: PeerId) -> Result<Option<PeerInfo>, StoreError> {
        match self.shared.db.get(records::peer_key(peer))? {
            None => Ok(None),
            Some(bytes) => decode_peer(&bytes).map(Some),
        }
    }

    /// Every known peer, in id order.
    pub fn peers(&self) -> Result<Vec<PeerInfo>, StoreError> {
        let mut peers = Vec::new();
        for item in self.shared.db.scan_prefix(records::PEER_PREFIX).values() {
            peers.push(decode_peer(&item?)?);
        }
        Ok(peers)
    }

    /// Forgets `peer` and its sync records. Returns whether it was known.
    pub fn remove_peer(&self, peer: PeerId) -> Result<bool, StoreError> {
        let mut batch = sled::Batch::default();
        let known = self.shared.db.contains_key(records::peer_key(peer))?;
        batch.remove(&records::peer_key(peer));
        batch.remove(&records::reconciled_key(peer));
        let mut prefix = records::SYNC_PREFIX.to_vec();
        prefix.extend_from_slice(peer.as_bytes());
        for key in self.shared.db.scan_prefix(prefix).keys() {
            batch.remove(key?);
        }
        self.shared.db.apply_batch(batch)?;
        self.shared.db.flush()?;
        Ok(known)
    }

    /// `peer`'s access to `doc`; an unknown peer has none.
    pub fn access(&self, peer: PeerId, doc: DocId) -> Result<Access, StoreError> {
        Ok(self
            .peer(peer)?
            .map_or(Access::None, |info| info.access(doc)))
    }

    // ---- internals ---------------------------------------------------------------------------

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is a cache over sled: after a panic elsewhere, a stale entry is the worst
        // case, and every write re-validates against sled's records on the next load.
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn new_automerge(&self) -> Automerge {
        Automerge::new().with_actor(ActorId::from(*self.replica_id().as_bytes()))
    }

    fn read_meta(&self, doc: DocId) -> Result<Option<DocMeta>, StoreError> {
        read_meta(&self.shared.db, doc)
    }

    fn entry<'a>(&self, state: &'a mut State, doc: DocId) -> Result<&'a mut Entry, StoreError> {
        entry_in(&mut state.cache, &self.shared.db, self.replica_id(), doc)
    }

    /// Applies a commit's records and returns once they are durable; its events are sent, in
    /// commit order, by the flush that covers it. The state lock is released before the flush,
    /// so reads and other writers go on meanwhile. A failed commit drops the document from the
    /// cache, so the next read reloads what sled holds.
    fn commit(
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
            Writes::Batch(batch) => db.apply_batch(batch),
        };
        if let Err(e) = applied {
            drop(state);
            return Err(evict(e.into()));
        }
        let group = &self.shared.group;
        let ticket = group.applied(commit.events);
        drop(state);
        group
            .wait_durable(db, &self.shared.events, ticket)
            .map_err(evict)
    }
}

/// The batch that compacts `doc`: its new snapshot replaces the old one and every incremental,
/// and the base metadata is rewritten, so a crash leaves the old records or the new ones.
/// Updates `meta` to match.
fn compaction(
    db: &sled::Db,
    doc: DocId,
    am: &Automerge,
    meta: &mut DocMeta,
) -> Result<sled::Batch, StoreError> {
    let snapshot = am.save();
    let mut batch = sled::Batch::default();
    for key in db.scan_prefix(records::incremental_prefix(doc)).keys() {
        batch.remove(key?);
    }
    meta.snapshot_bytes = snapshot.len() as u64;
    meta.incremental_bytes = 0;
    batch.insert(&records::snapshot_key(doc), snapshot);
    batch.insert(&records::meta_key(doc), encode_record(meta));
    Ok(batch)
}

/// Finds `doc` in the cache or loads it from sled.
fn entry_in<'a>(
    cache: &'a mut LruCache<DocId, Entry>,
    db: &sled::Db,
    replica: ReplicaId,
    doc: DocId,
) -> Result<&'a mut Entry, StoreError> {
    if !cache.contains(&doc) {
        let loaded = load(db, replica, doc)?;
        cache.put(doc, loaded);
    }
    cache.get_mut(&doc).ok_or(StoreError::NoSuchDocument(doc))
}

/// Loads a document from its records: snapshot, then incrementals in order. The heads it ends
/// with must be the ones its metadata recorded, or a record is missing or damaged.
fn load(db: &sled::Db, replica: ReplicaId, doc: DocId) -> Result<Entry, StoreError> {
    let meta = read_meta(db, doc)?.ok_or(StoreError::NoSuchDocument(doc))?;
    let snapshot = db.get(records::snapshot_key(doc))?;
    let damaged = |what| StoreError::Damaged { doc, what };
    let loaded = match meta.kind {
        DocKind::Automerge => {
            let mut am = match &snapshot {
                Some(bytes) => Automerge::load(bytes).map_err(|_| damaged("snapshot"))?,
                None => Automerge::new(),
            };
            let base = read_base_meta(db, doc)?.ok_or(StoreError::NoSuchDocument(doc))?;
            let records = db.scan_prefix(records::incremental_prefix(doc));
            for (seq, item) in (base.next_incremental..).zip(records) {
                let (key, value) = item?;
                if key.get(17..) != Some(&seq.to_be_bytes()[..]) {
                    return Err(damaged("incremental records are not contiguous"));
                }
                let record = decode_incremental(doc, &value)?;
                am.load_incremental(&record.changes)
                    .map_err(|_| damaged("incremental change record"))?;
            }
            let heads: Vec<[u8; 32]> = am.get_heads().iter().map(|h| h.0).collect();
            if heads != meta.heads {
                return Err(damaged("records do not reach the recorded heads"));
            }
            am.set_actor(ActorId::from(*replica.as_bytes()));
            Loaded::Automerge(Box::new(am))
        }
        kind => {
            let crdt = match &snapshot {
                Some(bytes) => CrdtState::decode(kind, bytes).map_err(|_| damaged("state"))?,
                None => CrdtState::empty(kind).ok_or(damaged("kind"))?,
            };
            if Digest::of_bytes(&crdt.encode()).as_bytes() != &meta.digest {
                return Err(damaged("state does not match its digest"));
            }
            Loaded::Crdt(crdt)
        }
    };
    Ok(Entry { meta, doc: loaded })
}

/// Opens the sled database, waiting a little for a lock that a store just closed in this
/// process may still hold: sled releases its file lock from a background thread after the
/// last handle is dropped. Another process holding it is reported as [`StoreError::InUse`].
fn open_db(path: &Path) -> Result<sled::Db, StoreError> {
    let mut wait = Duration::from_millis(5);
    let mut waited = Duration::ZERO;
    loop {
        match sled::Config::new().path(path).open() {
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

/// An empty document that gains more changes than this in one commit is snapshotted at once.
const WHOLE_HISTORY: u64 = 64;

/// How long [`open_db`] waits for the lock of a store closed a moment ago.
const LOCK_PATIENCE: Duration = Duration::from_secs(3);

fn is_lock_error(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::Other && e.to_string().starts_with("could not acquire lock")
}

/// A document's current metadata: its last incremental record's, or else its base record.
fn read_meta(db: &sled::Db, doc: DocId) -> Result<Option<DocMeta>, StoreError> {
    let Some(base) = read_base_meta(db, doc)? else {
        return Ok(None);
    };
    if base.kind != DocKind::Automerge {
        return Ok(Some(base));
    }
    match db.scan_prefix(records::incremental_prefix(doc)).next_back() {
        None => Ok(Some(base)),
        Some(item) => {
            let (_, value) = item?;
            Ok(Some(decode_incremental(doc, &value)?.meta))
        }
    }
}

/// A document's metadata as of its creation, last compaction or CRDT update.
fn read_base_meta(db: &sled::Db, doc: DocId) -> Result<Option<DocMeta>, StoreError> {
    match db.get(records::meta_key(doc))? {
        None => Ok(None),
        Some(bytes) => decode(&bytes, RECORD_LIMIT)
            .map(Some)
            .map_err(|_| StoreError::Damaged {
                doc,
                what: "metadata",
            }),
    }
}

fn decode_incremental(doc: DocId, bytes: &[u8]) -> Result<Incremental, StoreError> {
    decode(bytes, RECORD_LIMIT).map_err(|_| StoreError::Damaged {
        doc,
        what: "incremental change record",
    })
}

fn decode_peer(bytes: &[u8]) -> Result<PeerInfo, StoreError> {
    decode(bytes, RECORD_LIMIT).map_err(|_| StoreError::DamagedRecord { what: "peer" })
}

/// Records are ferry's own types and always encode.
fn encode_record<T: Serialize>(record: &T) -> Vec<u8> {
    encode(record).unwrap_or_default()
}

fn version_of(meta: &DocMeta) -> Version {
    match meta.kind {
        DocKind::Automerge => Version::Heads(meta.heads.iter().map(|h| ChangeHash(*h)).collect()),
        _ => Version::Digest(Digest::from_bytes(meta.digest)),
    }
}

fn check_format(db: &sled::Db) -> Result<(), StoreError> {
    match db.get(records::FORMAT_KEY)? {
        Some(bytes) => {
            let found = <[u8; 4]>::try_from(bytes.as_ref())
                .map(u32::from_le_bytes)
                .map_err(|_| StoreError::DamagedRecord {
                    what: "format marker",
                })?;
            if found != FORMAT {
                return Err(StoreError::UnknownFormat {
                    found,
                    supported: FORMAT,
                });
            }
        }
        None if db.is_empty() => {
            db.insert(records::FORMAT_KEY, &FORMAT.to_le_bytes())?;
            db.flush()?;
        }
        None => {
            return Err(StoreError::UnknownFormat {
                found: 0,
                supported: FORMAT,
            });
        }
    }
    Ok(())
}

fn automerge_error(doc: DocId, source: AutomergeError) -> StoreError {
    StoreError::Automerge {
        doc,
        source: Box::new(source),
    }
}

fn wrong_kind(doc: DocId, expected: DocKind, found: DocKind) -> StoreError {
    StoreError::WrongKind {
        doc,
        expected,
        found,
    }
}

fn wall_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Why a CRDT operation's closure did not apply.
enum KindOr {
    Kind(DocKind),
    Overflow(ferry_crdt::CounterOverflow),
}

impl From<ferry_crdt::CounterOverflow> for KindOr {
    fn from(e: ferry_crdt::CounterOverflow) -> Self {
        KindOr::Overflow(e)
    }
}

enum CrdtUpdateError {
    Kind(DocId, DocKind),
    Store(StoreError),
}

impl From<StoreError> for CrdtUpdateError {
    fn from(e: StoreError) -> Self {
        CrdtUpdateError::Store(e)
    }
}

impl CrdtUpdateError {
    fn expecting(self, expected: DocKind) -> StoreError {
        match self {
            CrdtUpdateError::Kind(doc, found) => wrong_kind(doc, expected, found),
            CrdtUpdateError::Store(e) => e,
        }
    }
}
