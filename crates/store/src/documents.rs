//! Documents as wholes: creating (empty, or with a peer's content), listing, describing and
//! deleting them.

use automerge::{ActorId, Automerge, ReadDoc};
use ferry_crdt::Digest;

use crate::loading::{read_space, version_of};
use crate::records::{self, DocMeta};
use crate::store::{Commit, Entry, Loaded, Store, Writes, encode_record, wrong_kind};
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
        self.adopt_saved((doc, space), origin, am, None)
    }

    /// [`Store::adopt`] of a document `am` that was loaded from `saved`: a new document keeps
    /// `saved` as its snapshot rather than saving `am` again. `saved` must be exactly the bytes
    /// `am` was loaded from (a load that did not reach the same heads would make the document
    /// read as damaged).
    pub fn adopt_saved(
        &self,
        (doc, space): (DocId, SpaceId),
        origin: Origin,
        am: Automerge,
        saved: Option<Vec<u8>>,
    ) -> Result<bool, StoreError> {
        let actor = ActorId::from(*self.replica_id().as_bytes());
        let loaded = Loaded::Automerge(Box::new(am.with_actor(actor)));
        let Some(Loaded::Automerge(mut theirs)) =
            self.create_entry_saved((doc, space), DocKind::Automerge, origin, loaded, saved)?
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
        id: (DocId, SpaceId),
        kind: DocKind,
        origin: Origin,
        content: Loaded,
    ) -> Result<Option<Loaded>, StoreError> {
        self.create_entry_saved(id, kind, origin, content, None)
    }

    /// [`Store::create_entry`], keeping `saved` (the bytes an Automerge `content` was loaded
    /// from) as the snapshot instead of saving the document again.
    fn create_entry_saved(
        &self,
        (doc, space): (DocId, SpaceId),
        kind: DocKind,
        origin: Origin,
        content: Loaded,
        saved: Option<Vec<u8>>,
    ) -> Result<Option<Loaded>, StoreError> {
        let mut state = self.lock();
        if self.gone(doc)?.is_some() {
            return Err(StoreError::Gone(doc));
        }
        if let Some(meta) = self.read_meta(doc)? {
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
        match &content {
            Loaded::Automerge(am) => {
                let heads = am.get_heads();
                meta.heads = heads.iter().map(|h| h.0).collect();
                meta.digest = *heads_digest(&heads).as_bytes();
                meta.changes = am.stats().num_changes;
                if !heads.is_empty() {
                    // Loaded from `saved`: those bytes are its snapshot as they are.
                    let snapshot = saved.unwrap_or_else(|| am.save());
                    meta.snapshot_bytes = snapshot.len() as u64;
                    writes.push((records::snapshot_key(doc).to_vec(), snapshot));
                }
            }
            Loaded::Crdt(crdt) => {
                let bytes = crdt.encode();
                meta.digest = *Digest::of_bytes(&bytes).as_bytes();
                if CrdtState::empty(kind).as_ref() != Some(crdt) {
                    meta.changes = 1;
                    meta.snapshot_bytes = bytes.len() as u64;
                    writes.push((records::snapshot_key(doc).to_vec(), bytes));
                }
            }
        }
        writes.push((records::meta_key(doc).to_vec(), encode_record(&meta)));
        let version = version_of(&meta);
        state.cache.put(
            doc,
            Entry {
                meta,
                space,
                doc: content,
            },
        );
        let commit = Commit::changed(Writes::InOrder(writes), (doc, space), origin, version);
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
        // Under the lock: a document's metadata is its base record or its last incremental,
        // two reads that a compaction committing between them would make go back in time.
        // A loaded document's metadata is at hand.
        let mut state = self.lock();
        let (meta, space) = match state.cache.get(&doc) {
            Some(entry) => (entry.meta.clone(), entry.space),
            None => {
                let meta = self
                    .read_meta(doc)?
                    .ok_or(StoreError::NoSuchDocument(doc))?;
                (meta, read_space(&self.shared.db, doc)?)
            }
        };
        drop(state);
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
}
