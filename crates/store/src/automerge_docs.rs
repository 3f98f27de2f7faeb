//! Automerge documents: local changes, changes and sync messages from peers, reads and
//! compaction.

use std::collections::HashSet;

use automerge::transaction::Transaction;
use automerge::{Automerge, AutomergeError, Change, ChangeHash, ReadDoc};

use crate::loading::{WHOLE_HISTORY, compaction, crdt_compaction, decode_incremental};
use crate::record_files::Found;
use crate::records::{self, Incremental};
use crate::store::{Commit, Loaded, Store, Writes, automerge_error, encode_record, wrong_kind};
use crate::{DocId, DocKind, Origin, StoreError, Version, heads_digest};

/// Change records a document may hold beyond an eighth of its snapshot and still be sent as
/// stored (see [`Store::saved_form`]).
const SAVED_FORM_SLACK: u64 = 4096;

impl Store {
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
    pub(crate) fn update_with<R>(
        &self,
        doc: DocId,
        origin: Origin,
        f: impl FnOnce(&mut Automerge) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let mut state = self.lock();
        let compact_min = self.shared.config.compact_min_bytes;
        let entry = self.entry(&mut state, doc)?;
        let Loaded::Automerge(am) = &mut entry.doc else {
            return Err(wrong_kind(doc, DocKind::Automerge.alone(), entry.meta.kind));
        };
        let old_heads: Vec<ChangeHash> = entry.meta.heads.iter().map(|h| ChangeHash(*h)).collect();
        // automerge can panic on changes that parse but do not fit together; that must not take
        // the process down. The document may be half-changed then: it is dropped from the cache
        // and reloaded from its records, as they were.
        let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(am)))
            .unwrap_or(Err(StoreError::AutomergePanicked { doc }));
        let result = match applied {
            Ok(result) => result,
            Err(e) => {
                if matches!(
                    e,
                    StoreError::Automerge { .. } | StoreError::AutomergePanicked { .. }
                ) {
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
        // The blobs the new changes refer to, indexed before the commit that holds them.
        let refs = if whole_history {
            let mut scan = crate::blob_refs::RefScan::default();
            am.get_changes(&[])
                .iter()
                .for_each(|c| scan.feed(c.raw_bytes()));
            scan.found
        } else {
            crate::blob_refs_in(&chunk)
        };
        if !refs.is_empty() {
            self.note_refs(doc, &refs)?;
        }
        let outgrown = whole_history
            || meta.incremental_bytes + chunk.len() as u64 > meta.snapshot_bytes.max(compact_min);
        // Files of records the compaction replaces go once the compaction is durable.
        let mut replaced = Vec::new();
        let written = if outgrown {
            replaced = crate::record_files::current(&self.shared.db, &self.shared.dir, doc);
            compaction((&self.shared.db, &self.shared.dir), doc, am, &mut meta).map(Writes::Batch)
        } else {
            // One record, carrying the metadata after this commit; large changes (a photo
            // put in as bytes) in a file of their own, outside sled.
            let key = records::incremental_key(doc, meta.next_incremental);
            meta.next_incremental += 1;
            meta.incremental_bytes += chunk.len() as u64;
            crate::record_files::kept(&self.shared.dir, doc, chunk).map(|changes| {
                let record = Incremental {
                    meta: meta.clone(),
                    changes,
                };
                Writes::One(key.to_vec(), encode_record(&record))
            })
        };
        let writes = match written {
            Ok(writes) => writes,
            Err(e) => {
                // Changed in memory but not stored: read back from the records next time.
                state.cache.pop(&doc);
                return Err(e);
            }
        };
        let version = Version::Heads(heads);
        entry.meta = meta;
        let commit = Commit::changed(writes, (doc, entry.space), origin, version);
        self.commit(state, doc, commit)?;
        crate::record_files::remove(replaced);
        Ok(result)
    }

    /// Writes a new snapshot of a document and removes its incrementals (an Automerge
    /// document's change records, a CRDT document's deltas), in one atomic batch: a crash
    /// leaves the old records or the new ones, never less.
    pub fn compact(&self, doc: DocId) -> Result<(), StoreError> {
        let mut state = self.lock();
        let entry = self.entry(&mut state, doc)?;
        if entry.meta.incremental_bytes == 0 {
            return Ok(());
        }
        let mut meta = entry.meta.clone();
        let replaced = crate::record_files::current(&self.shared.db, &self.shared.dir, doc);
        let batch = match &entry.doc {
            Loaded::Automerge(am) => {
                compaction((&self.shared.db, &self.shared.dir), doc, am, &mut meta)?
            }
            Loaded::Crdt(crdt) => crdt_compaction(&self.shared.db, doc, crdt.encode(), &mut meta)?,
        };
        entry.meta = meta;
        let committed = self.commit(
            state,
            doc,
            Commit {
                writes: Writes::Batch(batch),
                events: Vec::new(),
            },
        );
        if committed.is_ok() {
            crate::record_files::remove(replaced);
        }
        committed
    }

    /// An Automerge document as it is stored, without loading it: its snapshot followed by
    /// the change chunks committed since, bytes that [`Automerge::load`] reads back whole, and
    /// the heads they reach. `None` when the change records outweigh the snapshot, so that a
    /// compacted `save()` is worth its cost. Sync sends this to a peer that lacks the
    /// document, rather than loading it only to save it again.
    #[allow(clippy::type_complexity)]
    pub fn saved_form(&self, doc: DocId) -> Result<Option<(Vec<u8>, Vec<ChangeHash>)>, StoreError> {
        let stored = self.stored_form(doc)?;
        Ok(stored.compact.then_some((stored.bytes, stored.heads)))
    }

    /// An Automerge document as it is stored, whatever the weight of its change records (see
    /// [`Store::saved_form`]): read under the store's lock, but neither loaded nor saved under
    /// it, so a caller can compact a large document with `load` and `save` on a thread of its
    /// own while the store serves others.
    pub fn stored_form(&self, doc: DocId) -> Result<StoredForm, StoreError> {
        // Under the lock: a compaction rewrites the snapshot and removes the change records
        // in one batch, and this must read the one state or the other.
        let mut state = self.lock();
        let db = &self.shared.db;
        let meta = match state.cache.meta(&doc) {
            Some((meta, _)) => meta,
            None => self
                .read_meta(doc)?
                .ok_or(StoreError::NoSuchDocument(doc))?,
        };
        if meta.kind != DocKind::Automerge {
            return Err(wrong_kind(doc, DocKind::Automerge.alone(), meta.kind));
        }
        let compact = meta.incremental_bytes <= meta.snapshot_bytes / 8 + SAVED_FORM_SLACK;
        let dir = &self.shared.dir;
        // Under the lock, the records, and the files they point to opened (a compaction may
        // remove them afterwards; what is open stays readable); read after.
        let mut found = Vec::new();
        if let Some(record) = db.get(records::snapshot_key(doc))? {
            found.push(Found::of(dir, doc, &record, "snapshot file")?);
        }
        for item in db.scan_prefix(records::incremental_prefix(doc)).values() {
            let record = decode_incremental(doc, &item?)?;
            found.push(Found::of(
                dir,
                doc,
                &record.changes,
                "incremental change file",
            )?);
        }
        drop(state);
        let mut bytes = Vec::new();
        for piece in found {
            piece.read_into(&mut bytes, doc, "record file")?;
        }
        let heads = meta.heads.iter().map(|h| ChangeHash(*h)).collect();
        Ok(StoredForm {
            bytes,
            heads,
            compact,
        })
    }

    /// Reads an Automerge document.
    pub fn read<R>(&self, doc: DocId, f: impl FnOnce(&Automerge) -> R) -> Result<R, StoreError> {
        let mut state = self.lock();
        let entry = self.entry(&mut state, doc)?;
        match &entry.doc {
            Loaded::Automerge(am) => Ok(f(am)),
            Loaded::Crdt(_) => Err(wrong_kind(doc, DocKind::Automerge.alone(), entry.meta.kind)),
        }
    }
}

/// An Automerge document's records as they are stored; see [`Store::stored_form`].
#[derive(Clone, Debug)]
pub struct StoredForm {
    /// Its snapshot followed by the change chunks committed since.
    pub bytes: Vec<u8>,
    /// The heads they reach.
    pub heads: Vec<ChangeHash>,
    /// Whether the change records are small beside the snapshot: if not, `load` and `save`
    /// make a more compact form.
    pub compact: bool,
}
