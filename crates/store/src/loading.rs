//! Reading documents back from their records, and compacting them.

use automerge::{ActorId, Automerge, ChangeHash};
use ferry_crdt::{Digest, ReplicaId, decode};

use crate::cache::Cache;
use crate::records::{self, DocMeta, FORMAT, Incremental, RECORD_LIMIT};
use crate::store::{Entry, Loaded, encode_record};
use crate::{CrdtState, DocId, DocKind, SpaceId, StoreError, Version};

/// The batch that compacts `doc`: its new snapshot replaces the old one and every incremental,
/// and the base metadata is rewritten, so a crash leaves the old records or the new ones.
/// Updates `meta` to match.
pub(crate) fn compaction(
    (db, dir): (&sled::Db, &std::path::Path),
    doc: DocId,
    am: &Automerge,
    meta: &mut DocMeta,
) -> Result<sled::Batch, StoreError> {
    let saved = am.save();
    let snapshot_bytes = saved.len() as u64;
    // A large snapshot in a file of its own (see `record_files`).
    let snapshot = crate::record_files::kept(dir, doc, saved)?;
    let mut batch = sled::Batch::default();
    for key in db.scan_prefix(records::incremental_prefix(doc)).keys() {
        batch.remove(key?);
    }
    meta.snapshot_bytes = snapshot_bytes;
    meta.incremental_bytes = 0;
    batch.insert(&records::snapshot_key(doc), snapshot);
    batch.insert(&records::meta_key(doc), encode_record(meta));
    Ok(batch)
}

/// A CRDT document's deltas are folded into a new snapshot once they outgrow both the
/// snapshot and this many bytes: a few dozen updates of a small register, hundreds of a
/// counter's.
pub(crate) const CRDT_COMPACT_MIN: u64 = 4096;

/// The batch that makes `state` (a CRDT document's encoded state) its snapshot and removes
/// its deltas; updates `meta` to match.
pub(crate) fn crdt_compaction(
    db: &sled::Db,
    doc: DocId,
    state: Vec<u8>,
    meta: &mut DocMeta,
) -> Result<sled::Batch, StoreError> {
    let mut batch = sled::Batch::default();
    for key in db.scan_prefix(records::incremental_prefix(doc)).keys() {
        batch.remove(key?);
    }
    meta.snapshot_bytes = state.len() as u64;
    meta.incremental_bytes = 0;
    batch.insert(&records::snapshot_key(doc), state);
    batch.insert(&records::meta_key(doc), encode_record(meta));
    Ok(batch)
}

/// Finds `doc` in the cache or loads it from sled.
pub(crate) fn entry_in<'a>(
    cache: &'a mut Cache,
    (db, dir): (&sled::Db, &std::path::Path),
    replica: ReplicaId,
    doc: DocId,
) -> Result<&'a mut Entry, StoreError> {
    if !cache.contains(&doc) {
        let loaded = load((db, dir), replica, doc)?;
        cache.put(doc, loaded);
    }
    cache.get_mut(&doc).ok_or(StoreError::NoSuchDocument(doc))
}

/// Loads a document from its records: snapshot, then incrementals in order. The heads it ends
/// with must be the ones its metadata recorded, or a record is missing or damaged.
pub(crate) fn load(
    (db, dir): (&sled::Db, &std::path::Path),
    replica: ReplicaId,
    doc: DocId,
) -> Result<Entry, StoreError> {
    let meta = read_meta(db, doc)?.ok_or(StoreError::NoSuchDocument(doc))?;
    let snapshot = crate::record_files::read(db, dir, doc)?;
    let damaged = |what| StoreError::Damaged { doc, what };
    let base = read_base_meta(db, doc)?.ok_or(StoreError::NoSuchDocument(doc))?;
    let incrementals = db.scan_prefix(records::incremental_prefix(doc));
    let loaded = match meta.kind {
        DocKind::Automerge => {
            let mut am = match &snapshot {
                Some(bytes) => {
                    guarded(|| Automerge::load(bytes).ok()).ok_or(damaged("snapshot"))?
                }
                None => Automerge::new(),
            };
            for (seq, item) in (base.next_incremental..).zip(incrementals) {
                let (key, value) = item?;
                if key.get(17..) != Some(&seq.to_be_bytes()[..]) {
                    return Err(damaged("incremental records are not contiguous"));
                }
                let record = decode_incremental(doc, &value)?;
                let changes = crate::record_files::resolve(
                    dir,
                    doc,
                    &record.changes,
                    "incremental change file",
                )?;
                guarded(|| am.load_incremental(&changes).ok())
                    .ok_or(damaged("incremental change record"))?;
            }
            let heads: Vec<[u8; 32]> = am.get_heads().iter().map(|h| h.0).collect();
            if heads != meta.heads {
                return Err(damaged("records do not reach the recorded heads"));
            }
            am.set_actor(ActorId::from(*replica.as_bytes()));
            Loaded::Automerge(Box::new(am))
        }
        kind => {
            let mut crdt = match &snapshot {
                Some(bytes) => CrdtState::decode(kind, bytes).map_err(|_| damaged("state"))?,
                None => CrdtState::empty(kind).ok_or(damaged("kind"))?,
            };
            for (seq, item) in (base.next_incremental..).zip(incrementals) {
                let (key, value) = item?;
                if key.get(17..) != Some(&seq.to_be_bytes()[..]) {
                    return Err(damaged("incremental records are not contiguous"));
                }
                let record = decode_incremental(doc, &value)?;
                let changes =
                    crate::record_files::resolve(dir, doc, &record.changes, "incremental file")?;
                let delta = CrdtState::decode(kind, &changes)
                    .map_err(|_| damaged("incremental state record"))?;
                crdt.merge_owned(delta);
            }
            if Digest::of_bytes(&crdt.encode()).as_bytes() != &meta.digest {
                return Err(damaged("state does not match its digest"));
            }
            Loaded::Crdt(crdt)
        }
    };
    let space = read_space(db, doc)?;
    Ok(Entry {
        meta,
        space,
        doc: loaded,
    })
}

/// The space `doc` was created in: its `k` record, kept after it is deleted or forgotten.
pub(crate) fn read_space(db: &sled::Db, doc: DocId) -> Result<SpaceId, StoreError> {
    let bytes = db
        .get(records::space_of_key(doc))?
        .ok_or(StoreError::NoSuchDocument(doc))?;
    <[u8; 16]>::try_from(bytes.as_ref())
        .map(SpaceId::from_bytes)
        .map_err(|_| StoreError::Damaged {
            doc,
            what: "space record",
        })
}

/// An empty document that gains more changes than this in one commit is snapshotted at once.
pub(crate) const WHOLE_HISTORY: u64 = 64;

/// A document's current metadata: its last incremental record's, or else its base record.
pub(crate) fn read_meta(db: &sled::Db, doc: DocId) -> Result<Option<DocMeta>, StoreError> {
    let Some(base) = read_base_meta(db, doc)? else {
        return Ok(None);
    };
    match db.scan_prefix(records::incremental_prefix(doc)).next_back() {
        None => Ok(Some(base)),
        Some(item) => {
            let (_, value) = item?;
            Ok(Some(decode_incremental(doc, &value)?.meta))
        }
    }
}

/// A document's metadata as of its creation, last compaction or CRDT update.
pub(crate) fn read_base_meta(db: &sled::Db, doc: DocId) -> Result<Option<DocMeta>, StoreError> {
    read_doc_record(db, &records::meta_key(doc), doc, "metadata")
}

/// Reads and decodes one of `doc`'s records under `key`; a record that does not decode is
/// damage, named `what`.
pub(crate) fn read_doc_record<T: serde::de::DeserializeOwned>(
    db: &sled::Db,
    key: &[u8],
    doc: DocId,
    what: &'static str,
) -> Result<Option<T>, StoreError> {
    match db.get(key)? {
        None => Ok(None),
        Some(bytes) => decode(&bytes, RECORD_LIMIT)
            .map(Some)
            .map_err(|_| StoreError::Damaged { doc, what }),
    }
}

pub(crate) fn decode_incremental(doc: DocId, bytes: &[u8]) -> Result<Incremental, StoreError> {
    decode(bytes, RECORD_LIMIT).map_err(|_| StoreError::Damaged {
        doc,
        what: "incremental change record",
    })
}

pub(crate) fn version_of(meta: &DocMeta) -> Version {
    match meta.kind {
        DocKind::Automerge => Version::Heads(meta.heads.iter().map(|h| ChangeHash(*h)).collect()),
        _ => Version::Digest(Digest::from_bytes(meta.digest)),
    }
}

pub(crate) fn check_format(db: &sled::Db) -> Result<(), StoreError> {
    match db.get(records::FORMAT_KEY)? {
        Some(bytes) => {
            let found = <[u8; 4]>::try_from(bytes.as_ref())
                .map(u32::from_le_bytes)
                .map_err(|_| StoreError::DamagedRecord {
                    what: "format marker",
                })?;
            if (2..FORMAT).contains(&found) {
                return crate::migrate::upgrade(db, found);
            }
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

/// Runs automerge on stored bytes; a panic in it on damaged bytes is damage like any other,
/// not the end of the process.
pub(crate) fn guarded<T>(load: impl FnOnce() -> Option<T>) -> Option<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(load))
        .ok()
        .flatten()
}
