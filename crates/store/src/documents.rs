//! Documents as wholes: creating (empty, or with a peer's content), listing, describing and
//! deleting them.

use automerge::{ActorId, Automerge, ReadDoc};
use ferry_crdt::Digest;

use std::sync::MutexGuard;

use automerge::ChangeHash;

use crate::loading::{guarded, read_space, version_of};
use crate::records::{self, DocMeta};
use crate::store::{Commit, Entry, Loaded, State, Store, Writes, encode_record, wrong_kind};
use crate::{CrdtState, DocId, DocInfo, DocKind, Origin, SpaceId, StoreError, heads_digest};

impl Store {
    // ---- documents -------------------------------------------------------------------------

    /// Creates an empty document of `kind` with a fresh id, in the default space.
    pub fn create(&self, kind: DocKind) -> Result<DocId, StoreError> {
        self.create_in(SpaceId::DEFAULT, kind)
    }

    /// Creates an empty document of `kind` with a fresh id, in `space`. A document stays in
    /// the space it was created in.
    pub fn create_in(&self, space: SpaceId, kind: DocKind) -> Result<DocId, StoreError> {
        let doc = DocId::random();
        self.create_with_id(doc, space, kind, Origin::Local)?;
        Ok(doc)
    }

    /// Creates an empty document with a given id in `space`, as sync does for a document a
    /// peer shares. Returns `false` if it already exists with that kind (in whatever space it
    /// was created in); fails if it exists with another kind.
    pub fn create_with_id(
        &self,
        doc: DocId,
        space: SpaceId,
        kind: DocKind,
        origin: Origin,
    ) -> Result<bool, StoreError> {
        let empty = match CrdtState::empty(kind) {
            None => Loaded::Automerge(Box::new(self.new_automerge())),
            Some(crdt) => Loaded::Crdt(crdt),
        };
        Ok(self
            .create_entry((doc, space), kind, origin, empty)?
            .is_none())
    }

    /// Takes in a whole Automerge document a peer sent (a clone): if `doc` is not here, it is
    /// created in `space` with that content in one durable write, so no reader ever sees it
    /// empty; otherwise the content is merged into the copy here (which keeps its own space).
    /// Returns whether anything changed.
    ///
    /// # Examples
    ///
    /// ```
    /// use automerge::{Automerge, ROOT, transaction::Transactable};
    /// use ferry_store::{DocId, Origin, PeerId, SpaceId, Store};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path())?;
    /// let mut theirs = Automerge::new();
    /// theirs.transact(|tx| tx.put(ROOT, "title", "minutes"))
    ///     .map_err(|f| f.error)?;
    /// let doc = DocId::random();
    /// let from = Origin::Remote(PeerId::from_bytes([7; 16]));
    /// let space = SpaceId::random();
    /// assert!(store.adopt((doc, space), from, theirs.clone())?);
    /// assert_eq!(store.read(doc, |d| d.get_heads())?, theirs.get_heads());
    /// assert_eq!(store.info(doc)?.space, space);
    /// assert!(!store.adopt((doc, space), from, theirs)?); // nothing new the second time
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn adopt(
        &self,
        (doc, space): (DocId, SpaceId),
        origin: Origin,
        am: Automerge,
    ) -> Result<bool, StoreError> {
        let actor = ActorId::from(*self.replica_id().as_bytes());
        let loaded = Loaded::Automerge(Box::new(am.with_actor(actor)));
        let Some(Loaded::Automerge(mut theirs)) =
            self.create_entry((doc, space), DocKind::Automerge, origin, loaded)?
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

    /// [`Store::adopt`] of an Automerge document's saved bytes, checked beforehand (on any
    /// thread) by [`CheckedSnapshot::check`]. A new document is created from those very bytes
    /// and the heads the check found, without loading it again; one held here has them merged
    /// in. Returns whether anything changed.
    ///
    /// # Examples
    ///
    /// ```
    /// use automerge::{Automerge, ROOT, transaction::Transactable};
    /// use ferry_store::{CheckedSnapshot, DocId, Origin, PeerId, SpaceId, Store};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path())?;
    /// let mut theirs = Automerge::new();
    /// theirs.transact(|tx| tx.put(ROOT, "title", "minutes"))
    ///     .map_err(|f| f.error)?;
    /// let checked = CheckedSnapshot::check(theirs.save()).expect("it loads");
    /// assert_eq!(checked.heads(), theirs.get_heads());
    /// let doc = DocId::random();
    /// let from = Origin::Remote(PeerId::from_bytes([7; 16]));
    /// assert!(store.adopt_snapshot((doc, SpaceId::DEFAULT), from, checked)?);
    /// assert_eq!(store.read(doc, |d| d.get_heads())?, theirs.get_heads());
    ///
    /// assert!(CheckedSnapshot::check(b"not a document".to_vec()).is_none());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn adopt_snapshot(
        &self,
        (doc, space): (DocId, SpaceId),
        origin: Origin,
        mut snapshot: CheckedSnapshot,
    ) -> Result<bool, StoreError> {
        // A large snapshot goes to a file first, outside the store's lock (unless it was
        // staged already); used only if the document turns out to be new here.
        let staged = snapshot.staged.take().filter(|staged| staged.doc == doc);
        let file = match staged {
            Some(staged) => Some(staged.keep()),
            None if snapshot.bytes.len() >= crate::record_files::FILE_MIN => Some(
                crate::record_files::write(&self.shared.dir, doc, &snapshot.bytes)
                    .map_err(sled::Error::Io)?,
            ),
            None => None,
        };
        let unused = |file: &Option<Vec<u8>>| {
            if let Some(path) = file
                .as_deref()
                .and_then(|f| crate::record_files::file_of(&self.shared.dir, f))
            {
                let _ = std::fs::remove_file(path);
            }
        };
        let state = self.lock();
        // A document with no space here was never here: neither gone nor held (one read).
        let never_here = state.cache.peek_meta(&doc).is_none()
            && matches!(
                read_space(&self.shared.db, doc),
                Err(StoreError::NoSuchDocument(_))
            );
        let held = if never_here {
            None
        } else if self.gone(doc)?.is_some() {
            unused(&file);
            return Err(StoreError::Gone(doc));
        } else {
            self.held_meta(&state, doc)?
        };
        if held.is_some() {
            drop(state);
            unused(&file);
            let theirs =
                guarded(|| Automerge::load(&snapshot.bytes).ok()).ok_or(StoreError::Damaged {
                    doc,
                    what: "a checked snapshot that no longer loads",
                })?;
            return self.adopt((doc, space), origin, theirs);
        }
        let meta = DocMeta {
            kind: DocKind::Automerge,
            heads: snapshot.heads.iter().map(|h| h.0).collect(),
            digest: *heads_digest(&snapshot.heads).as_bytes(),
            changes: snapshot.changes,
            snapshot_bytes: snapshot.bytes.len() as u64,
            incremental_bytes: 0,
            next_incremental: 0,
        };
        let written = (|| {
            self.note_refs(doc, &snapshot.refs)?;
            let content = match file.clone() {
                Some(pointer) => Some(pointer),
                None => (!snapshot.heads.is_empty()).then_some(snapshot.bytes),
            };
            self.write_new(state, (doc, space), origin, meta, content, None)
        })();
        if written.is_err() {
            unused(&file);
        }
        written.map(|()| true)
    }

    /// Writes the file a large snapshot of `doc` is kept in (see [`Store::adopt_snapshot`]) now,
    /// durably, so that taking it in later costs no more than a small write. A session calls
    /// this on the thread that checked the snapshot, so that the write of a 100 MB file holds
    /// up none of its other work. A small snapshot has no file and is left as it is; a staged
    /// snapshot that is dropped, or taken in as another document, removes its file.
    pub fn stage_snapshot(
        &self,
        doc: DocId,
        snapshot: &mut CheckedSnapshot,
    ) -> Result<(), StoreError> {
        if snapshot.bytes.len() < crate::record_files::FILE_MIN
            || snapshot.staged.as_ref().is_some_and(|s| s.doc == doc)
        {
            return Ok(());
        }
        let pointer = crate::record_files::write(&self.shared.dir, doc, &snapshot.bytes)
            .map_err(sled::Error::Io)?;
        let path = crate::record_files::file_of(&self.shared.dir, &pointer);
        snapshot.staged = Some(Staged { doc, pointer, path });
        Ok(())
    }

    /// Takes in the whole state of a CRDT document a peer sent: if `doc` is not here, it is
    /// created in `space` with that state in one durable write; otherwise the state is merged
    /// into the copy here. Returns whether anything changed.
    pub fn adopt_state(
        &self,
        (doc, space): (DocId, SpaceId),
        kind: DocKind,
        origin: Origin,
        bytes: &[u8],
    ) -> Result<bool, StoreError> {
        if kind == DocKind::Automerge {
            return Err(wrong_kind(doc, &DocKind::CRDTS, kind));
        }
        let incoming = CrdtState::decode(kind, bytes)
            .map_err(|source| StoreError::BadState { doc, source })?;
        if self
            .create_entry((doc, space), kind, origin, Loaded::Crdt(incoming))?
            .is_none()
        {
            return Ok(true);
        }
        let before = self.info(doc)?.digest;
        Ok(self.merge_state(doc, origin, bytes)? != before)
    }

    /// Creates `doc` in `space` with `content` in one commit, unless it exists: then the
    /// content is handed back (or the kinds differ, an error).
    pub(crate) fn create_entry(
        &self,
        (doc, space): (DocId, SpaceId),
        kind: DocKind,
        origin: Origin,
        content: Loaded,
    ) -> Result<Option<Loaded>, StoreError> {
        let state = self.lock();
        if self.gone(doc)?.is_some() {
            return Err(StoreError::Gone(doc));
        }
        if let Some(meta) = self.held_meta(&state, doc)? {
            return if meta.kind == kind {
                Ok(Some(content))
            } else {
                Err(wrong_kind(doc, kind.alone(), meta.kind))
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
        let snapshot = match &content {
            Loaded::Automerge(am) => {
                let heads = am.get_heads();
                meta.heads = heads.iter().map(|h| h.0).collect();
                meta.digest = *heads_digest(&heads).as_bytes();
                meta.changes = am.stats().num_changes;
                (!heads.is_empty()).then(|| am.save())
            }
            Loaded::Crdt(crdt) => {
                let bytes = crdt.encode();
                meta.digest = *Digest::of_bytes(&bytes).as_bytes();
                if CrdtState::empty(kind).as_ref() != Some(crdt) {
                    meta.changes = 1;
                    Some(bytes)
                } else {
                    None
                }
            }
        };
        self.write_new(state, (doc, space), origin, meta, snapshot, Some(content))?;
        Ok(None)
    }

    /// `doc`'s metadata if it is here, from memory when it is at hand.
    fn held_meta(
        &self,
        state: &MutexGuard<'_, State>,
        doc: DocId,
    ) -> Result<Option<DocMeta>, StoreError> {
        match state.cache.peek_meta(&doc) {
            Some(meta) => Ok(Some(meta.clone())),
            None => self.read_meta(doc),
        }
    }

    /// Writes a new document's records, `meta` (completed with the snapshot's size) last, and
    /// keeps it loaded (`content`) or only its metadata.
    fn write_new(
        &self,
        mut state: MutexGuard<'_, State>,
        (doc, space): (DocId, SpaceId),
        origin: Origin,
        mut meta: DocMeta,
        snapshot: Option<Vec<u8>>,
        content: Option<Loaded>,
    ) -> Result<(), StoreError> {
        // Written in this order, each a plain insert (a sled batch costs two synchronous log
        // writes of its own): the space, its index entry and the content, then the metadata
        // that makes the document exist. sled recovers a prefix of its log, so a crash leaves
        // the document whole or absent, with at most an unused space, index entry or snapshot
        // behind, which a later creation of that id overwrites.
        let mut writes = vec![
            (
                records::space_of_key(doc).to_vec(),
                space.as_bytes().to_vec(),
            ),
            (records::space_doc_key(space, doc).to_vec(), Vec::new()),
        ];
        if let Some(snapshot) = snapshot {
            // (A pointer to a snapshot file is shorter than the size already set.)
            meta.snapshot_bytes = meta.snapshot_bytes.max(snapshot.len() as u64);
            writes.push((records::snapshot_key(doc).to_vec(), snapshot));
        }
        writes.push((records::meta_key(doc).to_vec(), encode_record(&meta)));
        let version = version_of(&meta);
        match content {
            Some(doc_content) => state.cache.put(
                doc,
                Entry {
                    meta,
                    space,
                    doc: doc_content,
                },
            ),
            None => state.cache.remember(doc, &meta, space),
        }
        let commit = Commit::changed(Writes::InOrder(writes), (doc, space), origin, version);
        self.commit(state, doc, commit)
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
        let (meta, space) = self.meta_and_space(doc)?;
        Ok(DocInfo {
            id: doc,
            kind: meta.kind,
            space,
            version: version_of(&meta),
            digest: Digest::from_bytes(meta.digest),
            changes: meta.changes,
            stored_bytes: meta.snapshot_bytes + meta.incremental_bytes,
        })
    }

    /// `doc`'s metadata and space: from memory when it is loaded or its metadata is kept,
    /// else from sled (and then kept).
    pub(crate) fn meta_and_space(&self, doc: DocId) -> Result<(DocMeta, SpaceId), StoreError> {
        // Under the lock: a document's metadata is its base record or its last incremental,
        // two reads that a compaction committing between them would make go back in time.
        let mut state = self.lock();
        if let Some(held) = state.cache.meta(&doc) {
            return Ok(held);
        }
        let meta = self
            .read_meta(doc)?
            .ok_or(StoreError::NoSuchDocument(doc))?;
        let space = read_space(&self.shared.db, doc)?;
        state.cache.remember(doc, &meta, space);
        Ok((meta, space))
    }
}

/// Why a peer's Automerge bytes were not taken in.
#[derive(Clone, Copy, Debug, Eq, PartialEq, thiserror::Error)]
pub enum Unloadable {
    /// They would cost more than the store's limits once loaded.
    #[error(transparent)]
    Exceeds(crate::Exceeds),
    /// They do not load whole.
    #[error("the document does not load")]
    DoesNotLoad,
}

/// An Automerge document's saved bytes that load whole, with the heads and change count
/// loading them found: what [`Store::adopt_snapshot`] takes in. The check is the costly part
/// of taking in a peer's document and needs nothing of the store, so a sync session runs it
/// for many documents at once, on several threads.
#[derive(Debug)]
pub struct CheckedSnapshot {
    bytes: Vec<u8>,
    heads: Vec<ChangeHash>,
    changes: u64,
    /// The blobs it refers to.
    pub(crate) refs: std::collections::BTreeSet<crate::BlobHash>,
    /// Its file, written ahead by [`Store::stage_snapshot`].
    staged: Option<Staged>,
}

impl Clone for CheckedSnapshot {
    /// A clone has no staged file: one file is pointed to by one document record at most.
    fn clone(&self) -> Self {
        Self {
            bytes: self.bytes.clone(),
            heads: self.heads.clone(),
            changes: self.changes,
            refs: self.refs.clone(),
            staged: None,
        }
    }
}

/// A large snapshot's file, written before it is taken in; removed if it never is.
#[derive(Debug)]
struct Staged {
    doc: DocId,
    pointer: Vec<u8>,
    path: Option<std::path::PathBuf>,
}

impl Staged {
    /// The pointer to the file, which from now on is the caller's to keep or remove.
    fn keep(mut self) -> Vec<u8> {
        self.path = None;
        std::mem::take(&mut self.pointer)
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl CheckedSnapshot {
    /// Loads `bytes` as a whole Automerge document (a panic in automerge is a failure like
    /// any other) and keeps what the store needs of it; `None` if they do not load.
    pub fn check(bytes: Vec<u8>) -> Option<Self> {
        let roomy = crate::Limits {
            bytes: u64::MAX,
            ops: u64::MAX,
        };
        let refs = crate::bounds::scan(&bytes, roomy).unwrap_or_default();
        Self::load(bytes, refs)
    }

    fn load(bytes: Vec<u8>, refs: std::collections::BTreeSet<crate::BlobHash>) -> Option<Self> {
        let (heads, changes) = guarded(|| {
            Automerge::load(&bytes)
                .ok()
                .map(|am| (am.get_heads(), am.stats().num_changes))
        })?;
        Some(Self {
            bytes,
            heads,
            changes,
            refs,
            staged: None,
        })
    }

    /// [`CheckedSnapshot::check`] for bytes from a peer: refused with
    /// [`Unloadable::Exceeds`] before anything is loaded if they would cost more than
    /// `limits` (see [`within_limits`](crate::within_limits)).
    pub fn check_within(bytes: Vec<u8>, limits: crate::Limits) -> Result<Self, Unloadable> {
        let refs = crate::bounds::scan(&bytes, limits).map_err(|e| match e {
            crate::Exceeds::Malformed => Unloadable::DoesNotLoad,
            e => Unloadable::Exceeds(e),
        })?;
        Self::load(bytes, refs).ok_or(Unloadable::DoesNotLoad)
    }

    /// The heads the document reaches.
    pub fn heads(&self) -> &[ChangeHash] {
        &self.heads
    }

    /// The saved bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}
