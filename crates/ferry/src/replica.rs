//! The replica an app opens: its store, its documents, its peers and its presence on the
//! network.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferry_crdt::ReplicaId;
use ferry_net::{BackoffConfig, ConnectionState, NetConfig, NetEvent, Node, SyncReport};
use ferry_store::{
    Access, BlobHash, DocId, DocInfo, DocKind, Durability, PeerId, PeerInfo, SpaceId, SpaceInfo,
    Store, StoreConfig, StoreEvent,
};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::doc::{Counter, Doc, MultiRegister, Register, blocking, kind_of};
use crate::status::{DocStatus, PeerStatus, SyncStatus};
use crate::{Error, Event, Events, Space};
use ferry_store::time_of;

/// How [`ReplicaBuilder::open`] sets a replica up.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use ferry::{BackoffConfig, Durability, Replica};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let replica = Replica::builder(dir.path())
///     .durability(Durability::Batched { interval: Duration::from_millis(2) })
///     .backoff(BackoffConfig { min: Duration::from_millis(200), max: Duration::from_secs(30) })
///     .listen("127.0.0.1:0".parse()?) // serve from the start
///     .open()
///     .await?;
/// assert!(replica.local_addr().await.is_some());
/// replica.shutdown().await;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct ReplicaBuilder {
    dir: PathBuf,
    store: StoreConfig,
    net: NetConfig,
    listen: Option<SocketAddr>,
    blob_grace: Duration,
}

/// How long a blob no document refers to is kept by default (see
/// [`ReplicaBuilder::blob_grace`]).
pub const DEFAULT_BLOB_GRACE: Duration = Duration::from_secs(24 * 3600);

impl ReplicaBuilder {
    /// How long a blob that no document refers to is kept before it is removed: long enough
    /// for an app to add a photo and then the document that refers to it. Collection runs in
    /// the background, a few times per grace period (at most hourly). A blob a document
    /// refers to is never removed. Default: [`DEFAULT_BLOB_GRACE`] (a day).
    pub fn blob_grace(mut self, grace: Duration) -> Self {
        self.blob_grace = grace;
        self
    }

    /// When writes are durable. Default: [`Durability::Immediate`] (an fsync per write).
    pub fn durability(mut self, durability: Durability) -> Self {
        self.store.durability = durability;
        self
    }

    /// Serve on `addr` as soon as the replica opens (see [`Replica::serve`]). By default a
    /// replica opens offline.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = Some(addr);
        self
    }

    /// Reconnect timing. Default: from 0.5 s doubling to 60 s, with full jitter.
    pub fn backoff(mut self, backoff: BackoffConfig) -> Self {
        self.net.backoff = backoff;
        self
    }

    /// Every network setting at once (the listen address in it is replaced by the one given to
    /// [`Replica::serve`] or [`ReplicaBuilder::listen`]).
    pub fn network(mut self, net: NetConfig) -> Self {
        self.net = net;
        self
    }

    /// Every store setting at once.
    pub fn store(mut self, store: StoreConfig) -> Self {
        self.store = store;
        self
    }

    /// Opens the replica (creating it, and its key pair, on first use). Call it inside a tokio
    /// runtime.
    pub async fn open(self) -> Result<Replica, Error> {
        let (dir, config) = (self.dir.clone(), self.store.clone());
        let store = blocking(move || Ok(Store::open_with(dir, config)?)).await?;
        let (events, _) = broadcast::channel(1024);
        let replica = Replica {
            inner: Arc::new(Inner {
                store_forwarder: tokio::spawn(forward_store(store.subscribe(), events.clone())),
                blob_collector: tokio::spawn(collect_blobs(store.clone(), self.blob_grace)),
                store,
                net: self.net,
                node: tokio::sync::Mutex::new(None),
                events,
            }),
        };
        if let Some(addr) = self.listen {
            replica.serve(addr).await?;
        }
        Ok(replica)
    }
}

/// A replica: the durable local copy of an app's data, the source of truth its UI reads and
/// subscribes to, which syncs with peers over QUIC whenever it is serving and they are
/// reachable. Cheap to clone; the replica closes when the last clone is dropped.
///
/// Writes return once they are durable (by default an fsync per write) and never wait for the
/// network. Reads see this replica's data now. [`Replica::subscribe`] tells the UI when to read
/// again; [`Replica::sync_status`] says what each peer still lacks.
///
/// # Examples
///
/// ```
/// use automerge::{ROOT, transaction::Transactable};
/// use ferry::{Access, Replica};
///
/// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let (phone_dir, laptop_dir) = (tempfile::tempdir()?, tempfile::tempdir()?);
/// let phone = Replica::open(phone_dir.path()).await?;
/// let laptop = Replica::open(laptop_dir.path()).await?;
/// let laptop_addr = laptop.serve("127.0.0.1:0".parse()?).await?;
/// laptop.allow_peer(phone.peer_id(), Access::ReadWrite).await?;
/// phone.add_peer(laptop.peer_id(), laptop_addr, Access::ReadWrite).await?;
///
/// let note = phone.create_doc().await?; // offline: saved locally
/// note.change(|tx| tx.put(ROOT, "text", "buy milk")).await?;
/// phone.serve("127.0.0.1:0".parse()?).await?; // online: dials the laptop and syncs
/// let copy = laptop.doc_when_available(note.id(), std::time::Duration::from_secs(10)).await?;
/// assert_eq!(copy.heads()?, note.heads()?);
/// phone.shutdown().await;
/// laptop.shutdown().await;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Replica {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    net: NetConfig,
    node: tokio::sync::Mutex<Option<Serving>>,
    events: broadcast::Sender<Event>,
    /// Forwards the store's events to subscribers for the replica's lifetime.
    store_forwarder: JoinHandle<()>,
    /// Removes blobs no document refers to, for the replica's lifetime.
    blob_collector: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.store_forwarder.abort();
        self.blob_collector.abort();
    }
}

/// The node of a serving replica, and the task forwarding its events; the task ends with it.
#[derive(Debug)]
struct Serving {
    node: Arc<Node>,
    forwarder: JoinHandle<()>,
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.forwarder.abort();
    }
}

impl Replica {
    /// Opens the replica in `dir` with the default settings: durable writes, offline until
    /// [`Replica::serve`].
    pub async fn open(dir: impl AsRef<Path>) -> Result<Self, Error> {
        Self::builder(dir).open().await
    }

    /// A builder for a replica in `dir`.
    pub fn builder(dir: impl AsRef<Path>) -> ReplicaBuilder {
        ReplicaBuilder {
            dir: dir.as_ref().to_path_buf(),
            store: StoreConfig::default(),
            net: NetConfig::default(),
            listen: None,
            blob_grace: DEFAULT_BLOB_GRACE,
        }
    }

    /// This replica's peer id: give it to peers that should trust this replica.
    pub fn peer_id(&self) -> PeerId {
        self.inner.store.peer_id()
    }

    /// The replica id its counters and registers are written under (the same 16 bytes as the
    /// peer id).
    pub fn replica_id(&self) -> ReplicaId {
        self.inner.store.replica_id()
    }

    /// The store underneath, for what the handles do not cover.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    // ---- documents -------------------------------------------------------------------------

    /// Creates an Automerge document in the default space.
    pub async fn create_doc(&self) -> Result<Doc, Error> {
        self.default_space().create_doc().await
    }

    /// Creates a grow-only counter in the default space.
    pub async fn create_counter(&self) -> Result<Counter, Error> {
        self.default_space().create_counter().await
    }

    /// Creates a counter that also goes down, in the default space.
    pub async fn create_pn_counter(&self) -> Result<Counter, Error> {
        self.default_space().create_pn_counter().await
    }

    /// Creates a last-writer-wins register in the default space.
    pub async fn create_register(&self) -> Result<Register, Error> {
        self.default_space().create_register().await
    }

    /// Creates a multi-value register in the default space.
    pub async fn create_multi_register(&self) -> Result<MultiRegister, Error> {
        self.default_space().create_multi_register().await
    }

    // ---- spaces ------------------------------------------------------------------------------

    /// The default space ([`SpaceId::DEFAULT`], the same on every replica): where documents
    /// go when the app names no space, and what [`Replica::add_peer`] and
    /// [`Replica::allow_peer`] grant.
    pub fn default_space(&self) -> Space {
        self.space(SpaceId::DEFAULT)
    }

    /// The space `id`: one created here, or elsewhere (a peer's), or the default one.
    pub fn space(&self, id: SpaceId) -> Space {
        Space::new(self.inner.store.clone(), id)
    }

    /// Creates a space named `name`, for people (names need not be unique), with a fresh id.
    pub async fn create_space(&self, name: impl Into<String>) -> Result<Space, Error> {
        let (store, name) = (self.inner.store.clone(), name.into());
        let id = blocking(move || Ok(store.create_space(&name)?)).await?;
        Ok(self.space(id))
    }

    /// Every space this replica knows: the default one, those created or named here, those a
    /// peer has a grant on, and those holding documents here; with their grants.
    pub async fn spaces(&self) -> Result<Vec<SpaceInfo>, Error> {
        let store = self.inner.store.clone();
        blocking(move || Ok(store.spaces()?)).await
    }

    fn expect(&self, doc: DocId, expected: &'static str, ok: &[DocKind]) -> Result<(), Error> {
        let found = kind_of(&self.inner.store, doc)?;
        if ok.contains(&found) {
            Ok(())
        } else {
            Err(Error::WrongKind {
                doc,
                expected,
                found,
            })
        }
    }

    /// The Automerge document `doc`.
    pub fn doc(&self, doc: DocId) -> Result<Doc, Error> {
        self.expect(doc, "automerge", &[DocKind::Automerge])?;
        Ok(Doc::new(self.inner.store.clone(), doc))
    }

    /// The counter `doc` (either kind).
    pub fn counter(&self, doc: DocId) -> Result<Counter, Error> {
        self.expect(doc, "counter", &[DocKind::GCounter, DocKind::PNCounter])?;
        Ok(Counter::new(self.inner.store.clone(), doc))
    }

    /// The last-writer-wins register `doc`.
    pub fn register(&self, doc: DocId) -> Result<Register, Error> {
        self.expect(doc, "last-writer-wins register", &[DocKind::LwwRegister])?;
        Ok(Register::new(self.inner.store.clone(), doc))
    }

    /// The multi-value register `doc`.
    pub fn multi_register(&self, doc: DocId) -> Result<MultiRegister, Error> {
        self.expect(doc, "multi-value register", &[DocKind::MvRegister])?;
        Ok(MultiRegister::new(self.inner.store.clone(), doc))
    }

    /// Waits until the Automerge document `doc` has arrived from a peer (or returns it at once
    /// if it is here), for up to `timeout`.
    pub async fn doc_when_available(&self, doc: DocId, timeout: Duration) -> Result<Doc, Error> {
        let mut events = self.subscribe();
        let wait = async {
            loop {
                match self.doc(doc) {
                    Err(Error::NoSuchDocument(_)) => {}
                    other => return other,
                }
                if events.next().await.is_none() {
                    return Err(Error::NoSuchDocument(doc));
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .unwrap_or(Err(Error::NoSuchDocument(doc)))
    }

    /// Every document on this replica.
    pub fn documents(&self) -> Result<Vec<DocInfo>, Error> {
        let store = &self.inner.store;
        store
            .list()?
            .into_iter()
            .map(|doc| store.info(doc).map_err(Error::from_store))
            .collect()
    }

    /// What the replica knows of `doc` (kind, version, size) without loading it.
    pub fn doc_info(&self, doc: DocId) -> Result<DocInfo, Error> {
        self.inner.store.info(doc).map_err(Error::from_store)
    }

    /// Adds `bytes` as an attachment (a blob): kept as a file beside the store, named by its
    /// blake3 hash. Returns the hash once the blob is durable. A document refers to the blob
    /// by holding [`BlobHash::reference`] as a string anywhere; peers that may read the
    /// document may then fetch the blob, and fetch it at once where their policy for its
    /// space is [`BlobPolicy::Eager`](crate::BlobPolicy) (the default). A blob no document
    /// refers to is removed after a grace period ([`ReplicaBuilder::blob_grace`]).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), ferry::Error> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let replica = ferry::Replica::open(dir.path()).await?;
    /// let photo = replica.add_blob(b"jpeg bytes".to_vec()).await?;
    /// let survey = replica.create_doc().await?;
    /// survey
    ///     .change(move |tx| {
    ///         use ferry::automerge::transaction::Transactable;
    ///         tx.put(ferry::automerge::ROOT, "photo", photo.reference())
    ///     })
    ///     .await?;
    /// assert_eq!(replica.blob(photo).await?, b"jpeg bytes");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn add_blob(&self, bytes: Vec<u8>) -> Result<BlobHash, Error> {
        let store = self.inner.store.clone();
        blocking(move || Ok(store.add_blob(&bytes)?)).await
    }

    /// Adds the file at `path` as a blob, copied as it is read (not into memory): its hash
    /// and length, once it is durable.
    pub async fn add_blob_file(&self, path: impl Into<PathBuf>) -> Result<(BlobHash, u64), Error> {
        let (store, path) = (self.inner.store.clone(), path.into());
        blocking(move || Ok(store.add_blob_file(path)?)).await
    }

    /// A blob's bytes, checked against its hash.
    pub async fn blob(&self, hash: BlobHash) -> Result<Vec<u8>, Error> {
        let store = self.inner.store.clone();
        blocking(move || Ok(store.read_blob(hash)?)).await
    }

    /// Where a blob's file is, to stream it (hash what is read to check it).
    pub fn blob_location(&self, hash: BlobHash) -> Result<PathBuf, Error> {
        Ok(self.inner.store.blob_location(hash)?)
    }

    /// Fetches a blob this replica has not got from the connected peers, whatever the fetch
    /// policy of its space, and returns its length once it is durable here (at once if it is
    /// here already). Peers that may read a document here that refers to it are asked first;
    /// each gives it only if this replica may read a document of theirs that refers to it.
    /// Progress arrives as [`Event::BlobProgress`](crate::Event::BlobProgress); a transfer
    /// cut before the end resumes from what arrived. Offline, or when no connected peer has
    /// it, it fails with [`NetError::BlobUnavailable`](crate::NetError::BlobUnavailable).
    pub async fn fetch_blob(&self, hash: BlobHash) -> Result<u64, Error> {
        if let Ok(len) = self.inner.store.blob_len(hash) {
            return Ok(len);
        }
        let node = match self.inner.node.lock().await.as_ref() {
            Some(serving) => serving.node.clone(),
            None => return Err(ferry_net::NetError::BlobUnavailable(hash).into()),
        };
        Ok(node.fetch_blob(hash).await?)
    }

    /// Removes now the blobs no document refers to that were added (or arrived) longer than
    /// `grace` ago, and returns them (the replica also does this in the background).
    pub async fn collect_blobs(&self, grace: Duration) -> Result<Vec<BlobHash>, Error> {
        let store = self.inner.store.clone();
        blocking(move || Ok(store.collect_blobs(grace)?)).await
    }

    /// Every blob on this replica, with its length, in hash order.
    pub fn blobs(&self) -> Result<Vec<(BlobHash, u64)>, Error> {
        Ok(self.inner.store.blobs()?)
    }

    /// Deletes `doc`: its content goes, and a tombstone that syncs to every peer that may
    /// write it there, so they delete their copies too. A delete wins over concurrent edits,
    /// and a deleted document never comes back. Durable when it returns.
    pub async fn delete(&self, doc: DocId) -> Result<(), Error> {
        let store = self.inner.store.clone();
        blocking(move || store.delete(doc).map_err(Error::from_store)).await
    }

    /// Forgets `doc` on this replica only: peers keep their copies, and this replica does not
    /// fetch it again. Durable when it returns.
    pub async fn forget(&self, doc: DocId) -> Result<(), Error> {
        let store = self.inner.store.clone();
        blocking(move || store.forget(doc).map_err(Error::from_store)).await
    }

    // ---- peers ------------------------------------------------------------------------------

    async fn update_peer(
        &self,
        peer: PeerId,
        f: impl FnOnce(&mut PeerInfo) + Send + 'static,
    ) -> Result<(), Error> {
        let store = self.inner.store.clone();
        blocking(move || {
            let mut info = store
                .peer(peer)?
                .unwrap_or_else(|| PeerInfo::new(peer, peer.to_string()));
            f(&mut info);
            Ok(store.put_peer(&info)?)
        })
        .await?;
        if let Some(Serving { node, .. }) = self.inner.node.lock().await.as_ref()
            && self
                .inner
                .store
                .peer(peer)?
                .is_some_and(|p| !p.addresses.is_empty())
        {
            node.dial(peer);
        }
        Ok(())
    }

    /// Trusts `peer` with `access` to the default space (unless set per document) and dials
    /// it at `addr` whenever this replica serves. Replaces what was known of the peer's
    /// addresses and its grant on the default space; its grants on other spaces stay. Give it
    /// other spaces with [`Space::grant`].
    pub async fn add_peer(
        &self,
        peer: PeerId,
        addr: SocketAddr,
        access: Access,
    ) -> Result<(), Error> {
        self.update_peer(peer, move |info| info.addresses = vec![addr])
            .await?;
        self.default_space().grant(peer, access).await
    }

    /// Trusts `peer` with `access` to the default space without dialing it: it connects to
    /// this replica (a phone connecting to an always-on relay, say). [`Access::None`] makes
    /// the peer known with no access to anything yet, ready for [`Space::grant`].
    pub async fn allow_peer(&self, peer: PeerId, access: Access) -> Result<(), Error> {
        self.update_peer(peer, |_| {}).await?;
        self.default_space().grant(peer, access).await
    }

    /// Gives `peer` `access` to one document, overriding its grant on the document's space.
    pub async fn set_access(&self, peer: PeerId, doc: DocId, access: Access) -> Result<(), Error> {
        self.update_peer(peer, move |info| {
            info.docs.insert(doc, access);
        })
        .await
    }

    /// Forgets `peer`: its connection is closed, it is refused from now on, and its sync
    /// records are dropped. Returns whether it was known.
    pub async fn remove_peer(&self, peer: PeerId) -> Result<bool, Error> {
        let store = self.inner.store.clone();
        let known = blocking(move || Ok(store.remove_peer(peer)?)).await?;
        if let Some(serving) = self.inner.node.lock().await.as_ref() {
            serving.node.disconnect(peer);
        }
        Ok(known)
    }

    /// Gives `peer` a name for people, shown by `ferry peer list`; a peer is named by its id
    /// until then. Fails if the peer is unknown.
    pub async fn name_peer(&self, peer: PeerId, name: impl Into<String>) -> Result<(), Error> {
        let (store, name) = (self.inner.store.clone(), name.into());
        blocking(move || {
            let mut info = store.peer(peer)?.ok_or(Error::NoSuchPeer(peer))?;
            info.name = name;
            Ok(store.put_peer(&info)?)
        })
        .await
    }

    /// Every known peer.
    pub fn peers(&self) -> Result<Vec<PeerInfo>, Error> {
        Ok(self.inner.store.peers()?)
    }

    // ---- network ------------------------------------------------------------------------------

    /// Goes online: listens on `addr` (UDP; port 0 picks one) and dials every peer with an
    /// address, keeping a connection to each and syncing live. Returns the address bound.
    pub async fn serve(&self, addr: SocketAddr) -> Result<SocketAddr, Error> {
        let mut serving = self.inner.node.lock().await;
        if let Some(serving) = serving.as_ref() {
            return Err(Error::AlreadyServing(serving.node.local_addr()));
        }
        let config = NetConfig {
            listen: addr,
            ..self.inner.net.clone()
        };
        // A port this replica served on a moment ago is released once the old endpoint's
        // connections have drained (a few round trips): serving again there waits for that.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        let started = loop {
            match Node::start(self.inner.store.clone(), config.clone()).await {
                Err(ferry_net::NetError::Bind { source, .. })
                    if source.kind() == std::io::ErrorKind::AddrInUse
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => break other?,
            }
        };
        let local = started.local_addr();
        let forwarder = tokio::spawn(forward_net(started.subscribe(), self.inner.events.clone()));
        *serving = Some(Serving {
            node: Arc::new(started),
            forwarder,
        });
        Ok(local)
    }

    /// The address this replica serves on, if it is serving.
    pub async fn local_addr(&self) -> Option<SocketAddr> {
        self.inner
            .node
            .lock()
            .await
            .as_ref()
            .map(|serving| serving.node.local_addr())
    }

    /// Goes offline: closes every connection gracefully and stops listening. The replica stays
    /// usable; changes made now are sent when it serves again.
    pub async fn shutdown(&self) {
        if let Some(serving) = self.inner.node.lock().await.take() {
            serving.node.shutdown().await;
        }
    }

    /// The network changed (back from a tunnel, a new Wi-Fi): peers waiting to be retried are
    /// dialed now.
    pub async fn network_changed(&self) {
        if let Some(serving) = self.inner.node.lock().await.as_ref() {
            serving.node.network_changed();
        }
    }

    /// Syncs with `peer` now and returns once the two sides have compared everything they
    /// share, nothing has arrived for a moment, and the peer has acknowledged the changes it
    /// lacked (waiting up to 10 s for slow acknowledgements). Offline, it dials the
    /// peer once, syncs, and disconnects. Serving, it uses the live connection (dialing now
    /// if there is none) and leaves it open. The report says which documents the peer now
    /// holds, which it updated here, and which it still lacks. Fails clearly if the peer is
    /// unknown, has no address, does not answer, or the session breaks.
    pub async fn sync_once(&self, peer: PeerId) -> Result<SyncReport, Error> {
        const QUIET: Duration = Duration::from_millis(300);
        let serving = self
            .inner
            .node
            .lock()
            .await
            .as_ref()
            .map(|serving| serving.node.clone());
        if let Some(node) = serving {
            return Ok(node.sync_once(peer, QUIET).await?);
        }
        let config = NetConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            ..self.inner.net.clone()
        };
        let node = Node::start_without_dialing(self.inner.store.clone(), config).await?;
        // Subscribers see what this sync does (a peer now holding a document), as they do
        // while serving.
        let forward = tokio::spawn(forward_net(node.subscribe(), self.inner.events.clone()));
        let result = node.sync_once(peer, QUIET).await;
        node.shutdown().await;
        forward.abort();
        Ok(result?)
    }

    /// Events from now on: changes to re-read, connections, and documents a peer now holds.
    pub fn subscribe(&self) -> Events {
        Events::new(self.inner.events.subscribe())
    }

    /// Sync with every known peer: its connection, when a sync last compared everything, and
    /// the documents with changes it has not acknowledged, with their counts.
    ///
    /// Its cost follows what changed: the first call reads, per peer, the sync record of each
    /// document the peer may read; later calls check only the documents that changed, or whose
    /// sync with the peer did, since (see [`Store::unacked`](ferry_store::Store::unacked)).
    pub async fn sync_status(&self) -> Result<SyncStatus, Error> {
        let states = match self.inner.node.lock().await.as_ref() {
            Some(serving) => serving.node.states(),
            None => Default::default(),
        };
        let store = self.inner.store.clone();
        blocking(move || status(&store, &states)).await
    }
}

fn status(
    store: &Store,
    states: &std::collections::HashMap<PeerId, ConnectionState>,
) -> Result<SyncStatus, Error> {
    let mut peers = Vec::new();
    for info in store.peers()? {
        let docs = store
            .unacked(info.id)
            .map_err(Error::from_store)?
            .into_iter()
            .map(|(doc, status)| DocStatus {
                doc,
                pending: status.pending,
                last_sync: status.last_sync_millis.map(time_of),
            })
            .collect();
        peers.push(PeerStatus {
            peer: info.id,
            name: info.name,
            connection: states
                .get(&info.id)
                .copied()
                .unwrap_or(ConnectionState::Disconnected { next_retry: None }),
            last_sync: store
                .reconciled(info.id)
                .map_err(Error::from_store)?
                .map(time_of),
            docs,
        });
    }
    Ok(SyncStatus { peers })
}

/// Forwards the store's change events to the replica's subscribers.
async fn forward_store(mut store: ferry_store::Subscription, events: broadcast::Sender<Event>) {
    loop {
        let event = match store.recv().await {
            Ok(StoreEvent::Changed { doc, origin, .. }) => Event::Changed { doc, origin },
            Ok(StoreEvent::Deleted { doc, .. }) => Event::Deleted { doc },
            Err(ferry_store::RecvError::Lagged { missed }) => Event::Lagged { missed },
            Err(ferry_store::RecvError::Closed) => return,
        };
        let _ = events.send(event); // no subscriber is fine
    }
}

/// Forwards what the network reports that an app cares about.
/// Removes the blobs no document refers to that are older than `grace`, a few times per
/// grace period (at most hourly).
async fn collect_blobs(store: Store, grace: Duration) {
    let every = (grace / 4).clamp(Duration::from_millis(100), Duration::from_secs(3600));
    loop {
        tokio::time::sleep(every).await;
        let store = store.clone();
        match tokio::task::spawn_blocking(move || store.collect_blobs(grace)).await {
            Ok(Ok(removed)) if !removed.is_empty() => {
                tracing::info!(blobs = removed.len(), "removed blobs no document refers to");
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "collecting blobs failed"),
            _ => {}
        }
    }
}

async fn forward_net(mut net: broadcast::Receiver<NetEvent>, events: broadcast::Sender<Event>) {
    loop {
        let event = match net.recv().await {
            Ok(NetEvent::Connection { peer, state }) => Event::Connection { peer, state },
            Ok(NetEvent::Session {
                peer,
                event: ferry_proto::Event::Acked { doc },
            }) => Event::Synced { peer, doc },
            Ok(NetEvent::Session {
                peer,
                event: ferry_proto::Event::Refused { doc, .. },
            }) => Event::Refused { peer, doc },
            Ok(NetEvent::BlobProgress {
                peer,
                hash,
                received,
                len,
            }) => Event::BlobProgress {
                peer,
                hash,
                received,
                len,
            },
            Ok(NetEvent::BlobFetched { peer, hash, len }) => Event::BlobFetched { peer, hash, len },
            Ok(_) => continue,
            Err(broadcast::error::RecvError::Lagged(missed)) => Event::Lagged { missed },
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let _ = events.send(event);
    }
}
