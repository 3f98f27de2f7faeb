//! Bringing a store written by an older format up to this build's, in one atomic batch.

use ferry_crdt::{Digest, decode};
use serde::{Deserialize, Serialize};

use crate::records::{self, DocMeta, FORMAT, RECORD_LIMIT};
use crate::store::encode_record;
use crate::{DocId, DocKind, StoreError, SyncRecord, Version};

/// Format 2's sync record: the acknowledged version as bare hashes whose meaning depended on
/// the document's kind (heads, or one state digest), empty when never acknowledged.
#[derive(Deserialize, Serialize)]
struct SyncRecordV2 {
    #[serde(with = "serde_bytes")]
    automerge_state: Vec<u8>,
    acked: Vec<[u8; 32]>,
    acked_changes: u64,
    last_sync_millis: Option<u64>,
}

/// Brings a store of format `found` (2 or 3) up to this build's, in one batch, flushed.
///
/// - 2 to 3: each sync record's acknowledged hashes become a [`Version`] of its document's
///   kind. A record that does not decode, or whose document is gone, is dropped: sync records
///   are soft state, and losing one costs a longer next sync.
/// - 3 to 4: tombstones (`x` records) were added; a format 3 store has none, so only the
///   marker changes.
pub(crate) fn upgrade(db: &sled::Db, found: u32) -> Result<(), StoreError> {
    let mut batch = sled::Batch::default();
    if found == 2 {
        sync_records_from_v2(db, &mut batch)?;
    }
    batch.insert(records::FORMAT_KEY, &FORMAT.to_le_bytes());
    db.apply_batch(batch)?;
    db.flush()?;
    Ok(())
}

fn sync_records_from_v2(db: &sled::Db, batch: &mut sled::Batch) -> Result<(), StoreError> {
    for item in db.scan_prefix(records::SYNC_PREFIX) {
        let (key, value) = item?;
        let migrated = key
            .get(17..33)
            .and_then(|doc| <[u8; 16]>::try_from(doc).ok())
            .map(DocId::from_bytes)
            .and_then(|doc| kind_of(db, doc))
            .zip(decode::<SyncRecordV2>(&value, RECORD_LIMIT).ok())
            .map(|(kind, old)| SyncRecord {
                automerge_state: old.automerge_state,
                acked: acked_version(kind, &old.acked),
                acked_changes: old.acked_changes,
                last_sync_millis: old.last_sync_millis,
            });
        match migrated {
            Some(record) => batch.insert(key, encode_record(&record)),
            None => batch.remove(key),
        }
    }
    Ok(())
}

fn kind_of(db: &sled::Db, doc: DocId) -> Option<DocKind> {
    let bytes = db.get(records::meta_key(doc)).ok()??;
    decode::<DocMeta>(&bytes, RECORD_LIMIT).ok().map(|m| m.kind)
}

fn acked_version(kind: DocKind, acked: &[[u8; 32]]) -> Option<Version> {
    match (kind, acked) {
        (_, []) => None,
        (DocKind::Automerge, heads) => Some(Version::Heads(
            heads.iter().map(|h| automerge::ChangeHash(*h)).collect(),
        )),
        (_, [digest, ..]) => Some(Version::Digest(Digest::from_bytes(*digest))),
    }
}

#[cfg(test)]
mod tests {
    use automerge::ROOT;
    use automerge::transaction::Transactable;
    use ferry_crdt::encode;

    use super::SyncRecordV2;
    use crate::{DocKind, PeerId, Store, Version};

    #[test]
    fn a_format_2_store_opens_with_its_sync_records_as_versions() {
        let dir = tempfile::tempdir().unwrap();
        let peer = PeerId::from_bytes([9; 16]);
        let (note, count, heads, digest) = {
            let store = Store::open(dir.path()).unwrap();
            let note = store.create(DocKind::Automerge).unwrap();
            store.change(note, |tx| tx.put(ROOT, "k", 1)).unwrap();
            let count = store.create(DocKind::GCounter).unwrap();
            let digest = store.increment(count, 2).unwrap();
            let heads = store.read(note, |am| am.get_heads()).unwrap();
            // Written as format 2 wrote them.
            let db = &store.shared.db;
            let v2 = |acked: Vec<[u8; 32]>| {
                encode(&SyncRecordV2 {
                    automerge_state: vec![1, 2],
                    acked,
                    acked_changes: 1,
                    last_sync_millis: Some(5),
                })
                .unwrap()
            };
            let gone = crate::DocId::random();
            db.insert(super::records::sync_key(peer, note), v2(vec![heads[0].0]))
                .unwrap();
            db.insert(
                super::records::sync_key(peer, count),
                v2(vec![*digest.as_bytes()]),
            )
            .unwrap();
            db.insert(super::records::sync_key(peer, gone), v2(vec![[3; 32]]))
                .unwrap();
            db.insert(super::records::FORMAT_KEY, &2u32.to_le_bytes())
                .unwrap();
            store.flush().unwrap();
            (note, count, heads, digest)
        };
        let store = Store::open(dir.path()).unwrap();
        let record = store.sync_record(peer, note).unwrap().unwrap();
        assert_eq!(record.acked, Some(Version::Heads(heads)));
        assert_eq!(record.automerge_state, vec![1, 2]);
        assert_eq!(record.last_sync_millis, Some(5));
        let record = store.sync_record(peer, count).unwrap().unwrap();
        assert_eq!(record.acked, Some(Version::Digest(digest)));
        assert_eq!(store.sync_status(peer, count).unwrap().pending, 0);
        assert_eq!(store.sync_status(peer, note).unwrap().pending, 0);
        drop(store);
        // Migrated once: the marker says format 3 now.
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store
                .shared
                .db
                .get(super::records::FORMAT_KEY)
                .unwrap()
                .as_deref(),
            Some(&super::FORMAT.to_le_bytes()[..])
        );
    }
}
