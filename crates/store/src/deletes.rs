//! Deleting and forgetting documents. A deleted document leaves a tombstone that sync carries
//! to peers and that wins over concurrent edits; a forgotten one leaves a marker that keeps
//! this replica from fetching it again. Either way nothing can create the document again.

use ferry_crdt::decode;

use crate::loading::{read_doc_record, read_space};
use crate::records::{self, Gone, GoneHow, RECORD_LIMIT};
use crate::store::{Commit, Store, Writes, encode_record};
use crate::{DocId, DocKind, Origin, SpaceId, StoreError, StoreEvent, wall_millis};

impl Store {
    /// Deletes `doc`: its content and sync records go, and a tombstone stays, which sync
    /// carries to every peer that may write the document there. A deleted document stays
    /// deleted: a peer's concurrent edits do not bring it back. Durable when it returns.
    pub fn delete(&self, doc: DocId) -> Result<(), StoreError> {
        self.remove(doc, GoneHow::Deleted, None)
    }

    /// Forgets `doc` on this replica only: its content and sync records go, peers keep their
    /// copies, and this replica does not fetch it again. Durable when it returns.
    pub fn forget(&self, doc: DocId) -> Result<(), StoreError> {
        self.remove(doc, GoneHow::Forgotten, None)
    }

    /// Takes in a peer's tombstone for `doc` (a document of `kind` in `space`): the copy here,
    /// if any, is deleted, and the tombstone is kept. Returns whether anything changed.
    pub fn apply_tombstone(
        &self,
        (doc, space): (DocId, SpaceId),
        kind: DocKind,
        origin: Origin,
    ) -> Result<bool, StoreError> {
        match self.gone(doc)? {
            Some(gone) if gone.is_deleted() => Ok(false),
            _ => self
                .remove(doc, GoneHow::Deleted, Some((kind, space, origin)))
                .map(|()| true),
        }
    }

    /// Whether `doc` was deleted or forgotten here, and how.
    pub fn gone(&self, doc: DocId) -> Result<Option<Gone>, StoreError> {
        read_doc_record(&self.shared.db, &records::gone_key(doc), doc, "tombstone")
    }

    /// Every document deleted or forgotten here, in id order.
    pub fn gone_docs(&self) -> Result<Vec<(DocId, Gone)>, StoreError> {
        let mut gone = Vec::new();
        for item in self.shared.db.scan_prefix(records::GONE_PREFIX) {
            let (key, value) = item?;
            let Some(doc) = key
                .get(1..)
                .and_then(|id| <[u8; 16]>::try_from(id).ok())
                .map(DocId::from_bytes)
            else {
                continue;
            };
            let record = decode(&value, RECORD_LIMIT).map_err(|_| StoreError::Damaged {
                doc,
                what: "tombstone",
            })?;
            gone.push((doc, record));
        }
        Ok(gone)
    }

    /// Removes `doc`'s records and leaves a [`Gone`] record, in one commit. `remote` is the
    /// kind, space and origin of a peer's tombstone for a document that may not be here. The
    /// document's space record and its place in the space's index stay, so the tombstone is
    /// listed with the space.
    fn remove(
        &self,
        doc: DocId,
        how: GoneHow,
        remote: Option<(DocKind, SpaceId, Origin)>,
    ) -> Result<(), StoreError> {
        let mut state = self.lock();
        let db = &self.shared.db;
        let (kind, space) = match (self.read_meta(doc)?, remote) {
            (Some(meta), _) => (meta.kind, read_space(db, doc)?),
            (None, Some((kind, space, _))) => match read_space(db, doc) {
                Ok(held) => (kind, held),
                Err(StoreError::NoSuchDocument(_)) => (kind, space),
                Err(e) => return Err(e),
            },
            (None, None) => return Err(StoreError::NoSuchDocument(doc)),
        };
        let mut batch = sled::Batch::default();
        batch.insert(&records::space_of_key(doc), space.as_bytes());
        batch.insert(&records::space_doc_key(space, doc)[..], &[]);
        batch.remove(&records::meta_key(doc));
        batch.remove(&records::snapshot_key(doc));
        let replaced = crate::record_files::current(db, &self.shared.dir, doc);
        for key in self
            .shared
            .db
            .scan_prefix(records::incremental_prefix(doc))
            .keys()
        {
            batch.remove(key?);
        }
        // Sync records are kept per known peer; a removed peer's went with it.
        for peer in self.directory().peers() {
            batch.remove(&records::sync_key(peer.id, doc)[..]);
        }
        let gone = Gone {
            kind,
            how,
            at_millis: wall_millis(),
        };
        batch.insert(&records::gone_key(doc), encode_record(&gone));
        state.cache.pop(&doc);
        let commit = Commit {
            writes: Writes::Batch(batch),
            events: vec![StoreEvent::Deleted { doc, space }],
        };
        self.commit(state, doc, commit)?;
        crate::record_files::remove(replaced);
        Ok(())
    }
}
