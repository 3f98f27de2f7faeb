//! Handles to documents: Automerge documents, counters and registers.

use automerge::transaction::Transaction;
use automerge::{Automerge, AutomergeError, ChangeHash};
use ferry_crdt::ReplicaId;
use ferry_store::{CrdtState, DocId, DocKind, PeerId, Store};

use crate::Error;

/// Runs a durable write on a blocking thread: it returns once the write is on disk.
async fn write<R: Send + 'static>(
    store: &Store,
    f: impl FnOnce(&Store) -> Result<R, ferry_store::StoreError> + Send + 'static,
) -> Result<R, Error> {
    let store = store.clone();
    blocking(move || f(&store).map_err(Error::from_store)).await
}

/// Runs `f` on a blocking thread, off the async workers: the store's calls wait on disk (a
/// durable write waits for its fsync).
pub(crate) async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> Result<R, Error> + Send + 'static,
) -> Result<R, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| Error::Background)?
}

pub(crate) fn kind_of(store: &Store, doc: DocId) -> Result<DocKind, Error> {
    store.info(doc).map(|i| i.kind).map_err(Error::from_store)
}

/// An Automerge document: JSON-like data and text. Cheap to clone.
///
/// # Examples
///
/// ```
/// use automerge::{ROOT, ReadDoc, transaction::Transactable};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let replica = ferry::Replica::open(dir.path()).await?;
/// let note = replica.create_doc().await?;
/// note.change(|tx| tx.put(ROOT, "title", "Groceries")).await?; // durable when it returns
/// let title = note.read(|d| d.get(ROOT, "title").ok().flatten().map(|(v, _)| v.to_string()))?;
/// assert_eq!(title.as_deref(), Some("\"Groceries\""));
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Doc {
    id: DocId,
    store: Store,
}

impl Doc {
    pub(crate) fn new(store: Store, id: DocId) -> Self {
        Self { id, store }
    }

    /// The document's id, the same on every replica.
    pub fn id(&self) -> DocId {
        self.id
    }

    /// Makes a change in one transaction, durable before it returns, and pushed to connected
    /// peers once it is. If `f` fails, the document is unchanged.
    pub async fn change<R, F>(&self, f: F) -> Result<R, Error>
    where
        R: Send + 'static,
        F: FnOnce(&mut Transaction<'_>) -> Result<R, AutomergeError> + Send + 'static,
    {
        let doc = self.id;
        write(&self.store, move |store| store.change(doc, f)).await
    }

    /// Reads the document as this replica holds it now. (The first read after a restart loads
    /// it from disk.)
    pub fn read<R>(&self, f: impl FnOnce(&Automerge) -> R) -> Result<R, Error> {
        self.store.read(self.id, f).map_err(Error::from_store)
    }

    /// The document's heads: the hashes of its latest changes. After a [`Doc::change`], the
    /// change's own hash is among them.
    pub fn heads(&self) -> Result<Vec<ChangeHash>, Error> {
        self.read(|d| d.get_heads())
    }

    /// Whether `peer` has acknowledged holding `change` (it is durable on the peer).
    pub fn acknowledged_by(&self, peer: PeerId, change: ChangeHash) -> Result<bool, Error> {
        self.store
            .acknowledged(peer, self.id, change)
            .map_err(Error::from_store)
    }
}

/// A counter: a grow-only `GCounter`, or a `PNCounter` that also goes down. Every replica adds
/// on its own behalf and merging never double-counts. Cheap to clone.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let replica = ferry::Replica::open(dir.path()).await?;
/// let likes = replica.create_pn_counter().await?;
/// likes.increment(3).await?;
/// likes.decrement(1).await?;
/// assert_eq!(likes.value()?, 2);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Counter {
    id: DocId,
    store: Store,
}

impl Counter {
    pub(crate) fn new(store: Store, id: DocId) -> Self {
        Self { id, store }
    }

    /// The counter's id.
    pub fn id(&self) -> DocId {
        self.id
    }

    /// Adds `n`, durably.
    pub async fn increment(&self, n: u64) -> Result<(), Error> {
        let doc = self.id;
        write(&self.store, move |store| store.increment(doc, n).map(drop)).await
    }

    /// Subtracts `n`, durably; only a `PNCounter` goes down (a `GCounter` gives
    /// [`Error::Store`] with a wrong-kind reason, and is unchanged).
    pub async fn decrement(&self, n: u64) -> Result<(), Error> {
        let doc = self.id;
        write(&self.store, move |store| store.decrement(doc, n).map(drop)).await
    }

    /// The current total.
    pub fn value(&self) -> Result<i128, Error> {
        match self.store.crdt(self.id).map_err(Error::from_store)? {
            CrdtState::GCounter(c) => Ok(i128::try_from(c.value()).unwrap_or(i128::MAX)),
            CrdtState::PNCounter(c) => Ok(c.value()),
            other => Err(Error::WrongKind {
                doc: self.id,
                expected: "counter",
                found: other.kind(),
            }),
        }
    }
}

/// A last-writer-wins register of bytes (the app picks the encoding). Concurrent writes are
/// settled by timestamp: one wins everywhere, the others are dropped. [`Register::writer`] says
/// whose write holds, so an app can tell the user that theirs was overridden. Cheap to clone.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let replica = ferry::Replica::open(dir.path()).await?;
/// let title = replica.create_register().await?;
/// title.set("Field notes").await?;
/// assert_eq!(title.get()?.as_deref(), Some(&b"Field notes"[..]));
/// assert_eq!(title.writer()?, Some(replica.replica_id()));
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Register {
    id: DocId,
    store: Store,
}

impl Register {
    pub(crate) fn new(store: Store, id: DocId) -> Self {
        Self { id, store }
    }

    /// The register's id.
    pub fn id(&self) -> DocId {
        self.id
    }

    /// Writes `value`, durably.
    pub async fn set(&self, value: impl Into<Vec<u8>>) -> Result<(), Error> {
        let (doc, value) = (self.id, value.into());
        write(&self.store, move |store| {
            store.set_register(doc, value).map(drop)
        })
        .await
    }

    /// The value that holds, if it was ever written.
    pub fn get(&self) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.state()?.get().cloned())
    }

    /// The replica whose write holds, if any.
    pub fn writer(&self) -> Result<Option<ReplicaId>, Error> {
        Ok(self.state()?.stamp().map(|stamp| stamp.replica))
    }

    fn state(&self) -> Result<ferry_crdt::LwwRegister<Vec<u8>>, Error> {
        match self.store.crdt(self.id).map_err(Error::from_store)? {
            CrdtState::LwwRegister(r) => Ok(r),
            other => Err(Error::WrongKind {
                doc: self.id,
                expected: "last-writer-wins register",
                found: other.kind(),
            }),
        }
    }
}

/// A multi-value register of bytes: a write replaces every value its writer had seen, and
/// concurrent writes are all kept, so no typed answer is lost; the app shows them and the
/// user's next write settles them. Cheap to clone.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let replica = ferry::Replica::open(dir.path()).await?;
/// let floors = replica.create_multi_register().await?;
/// floors.set("4").await?;
/// assert_eq!(floors.values()?, vec![b"4".to_vec()]);
/// assert!(!floors.is_conflicted()?);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct MultiRegister {
    id: DocId,
    store: Store,
}

impl MultiRegister {
    pub(crate) fn new(store: Store, id: DocId) -> Self {
        Self { id, store }
    }

    /// The register's id.
    pub fn id(&self) -> DocId {
        self.id
    }

    /// Writes `value`, replacing every value this replica has seen, durably.
    pub async fn set(&self, value: impl Into<Vec<u8>>) -> Result<(), Error> {
        let (doc, value) = (self.id, value.into());
        write(&self.store, move |store| {
            store.set_register(doc, value).map(drop)
        })
        .await
    }

    /// Every value that holds: one, or several written concurrently.
    pub fn values(&self) -> Result<Vec<Vec<u8>>, Error> {
        Ok(self.state()?.values().into_iter().cloned().collect())
    }

    /// The values with their writers.
    pub fn entries(&self) -> Result<Vec<(ReplicaId, Vec<u8>)>, Error> {
        Ok(self
            .state()?
            .entries()
            .map(|(dot, value)| (dot.replica, value.clone()))
            .collect())
    }

    /// Whether concurrent writes are waiting for someone to settle them.
    pub fn is_conflicted(&self) -> Result<bool, Error> {
        Ok(self.state()?.is_conflicted())
    }

    fn state(&self) -> Result<ferry_crdt::MvRegister<Vec<u8>>, Error> {
        match self.store.crdt(self.id).map_err(Error::from_store)? {
            CrdtState::MvRegister(r) => Ok(r),
            other => Err(Error::WrongKind {
                doc: self.id,
                expected: "multi-value register",
                found: other.kind(),
            }),
        }
    }
}
