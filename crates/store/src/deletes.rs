//! Deleting and forgetting documents. A deleted document leaves a tombstone that sync carries
//! to peers and that wins over concurrent edits; a forgotten one leaves a marker that keeps
//! this replica from fetching it again. Either way nothing can create the document again.

use ferry_crdt::decode;

use crate::loading::read_doc_record;
use crate::records::{self, Gone, GoneHow, RECORD_LIMIT};
use crate::store::{Commit, Store, Writes, encode_record};
use crate::{DocId, DocKind, Origin, StoreError, StoreEvent, wall_millis};

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

    /// Takes in a peer's tombstone for `doc` (a document of `kind`): the copy here, if any, is
    /// deleted, and the tombstone is kept. Returns whether anything changed.
    pub fn apply_tombstone(
        &self,
        doc: DocId,
        kind: DocKind,
        origin: Origin,
    ) -> Result<bool, StoreError> {
        match self.gone(doc)? {
            Some(gone) if gone.is_deleted() => Ok(false),
            _ => self
                .remove(doc, GoneHow::Deleted, Some((kind, origin)))
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
    /// kind and origin of a peer's tombstone for a document that may not be here.
    fn remove(
        &self,
        doc: DocId,
        how: GoneHow,
        remote: Option<(DocKind, Origin)>,
    ) -> Result<(), StoreError> {
        let mut state = self.lock();
        let kind = match (self.read_meta(doc)?, remote) {
            (Some(meta), _) => meta.kind,
            (None, Some((kind, _))) => kind,
            (None, None) => return Err(StoreError::NoSuchDocument(doc)),
        };
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
        let gone = Gone {
            kind,
            how,
            at_millis: wall_millis(),
        };
        batch.insert(&records::gone_key(doc), encode_record(&gone));
        state.cache.pop(&doc);
        let commit = Commit {
            writes: Writes::Batch(batch),
            events: vec![StoreEvent::Deleted { doc }],
        };
        self.commit(state, doc, commit)
    }
}
