//! Bringing a store written by an older format up to this build's, in one atomic batch.

use ferry_crdt::{Digest, decode};
use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::records::{self, DocMeta, FORMAT, GrantRecord, RECORD_LIMIT};
use crate::store::encode_record;
use crate::{Access, DocId, DocKind, PeerId, PeerInfo, SpaceId, StoreError, SyncRecord, Version};

/// Format 4's peer record: access to every document not listed came with the peer.
#[derive(Deserialize, Serialize)]
struct PeerInfoV4 {
    id: PeerId,
    name: String,
    addresses: Vec<SocketAddr>,
    default_access: Access,
    docs: BTreeMap<DocId, Access>,
}

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

/// Brings a store of format `found` (2 to 6) up to this build's, in one batch, flushed.
///
/// - 2 to 3: each sync record's acknowledged hashes become a [`Version`] of its document's
///   kind. A record that does not decode, or whose document is gone, is dropped: sync records
///   are soft state, and losing one costs a longer next sync.
/// - 3 to 4: tombstones (`x` records) were added; a format 3 store has none, so only the
///   marker changes.
/// - 4 to 5: spaces. Every document (and tombstone) goes in the default space, and a peer's
///   access to every document not listed becomes its grant on the default space, so each peer
///   may read and write exactly what it could before.
/// - 5 to 6: a CRDT document's updates became delta records (`i`); a format 5 store has none,
///   so only the marker changes.
/// - 6 to 7: blob references (`h`, `j`), blob fetch policies (`e`), and snapshots and changes
///   kept in files that records point to; a format 6 store has none, so only the marker
///   changes (its large records stay in sled until the document is next compacted).
pub(crate) fn upgrade(db: &sled::Db, found: u32) -> Result<(), StoreError> {
    let mut batch = sled::Batch::default();
    if found == 2 {
        sync_records_from_v2(db, &mut batch)?;
    }
    if found <= 4 {
        spaces_from_v4(db, &mut batch)?;
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

fn spaces_from_v4(db: &sled::Db, batch: &mut sled::Batch) -> Result<(), StoreError> {
    let space = SpaceId::DEFAULT;
    for prefix in [records::META_PREFIX, records::GONE_PREFIX] {
        for key in db.scan_prefix(prefix).keys() {
            let Some(doc) = records::id_at(&key?, 1).map(DocId::from_bytes) else {
                continue;
            };
            batch.insert(&records::space_of_key(doc), space.as_bytes());
            batch.insert(&records::space_doc_key(space, doc)[..], &[]);
        }
    }
    for item in db.scan_prefix(records::PEER_PREFIX) {
        let (key, value) = item?;
        let old: PeerInfoV4 =
            decode(&value, RECORD_LIMIT).map_err(|_| StoreError::DamagedRecord { what: "peer" })?;
        if old.default_access != Access::None {
            let grant = GrantRecord {
                access: old.default_access,
            };
            batch.insert(
                &records::grant_key(old.id, space)[..],
                encode_record(&grant),
            );
        }
        let peer = PeerInfo {
            id: old.id,
            name: old.name,
            addresses: old.addresses,
            docs: old.docs,
        };
        batch.insert(key, encode_record(&peer));
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
        // Migrated once: the marker says this build's format now.
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

#[cfg(test)]
mod v4_tests {
    use std::collections::BTreeMap;

    use automerge::ROOT;
    use automerge::transaction::Transactable;
    use ferry_crdt::encode;

    use super::PeerInfoV4;
    use crate::records;
    use crate::{Access, DocKind, PeerId, SpaceId, Store};

    #[test]
    fn a_format_4_store_opens_with_its_documents_and_peer_access_in_the_default_space() {
        let dir = tempfile::tempdir().unwrap();
        let (everyone, reader, stranger) = (
            PeerId::from_bytes([1; 16]),
            PeerId::from_bytes([2; 16]),
            PeerId::from_bytes([3; 16]),
        );
        let (note, gone, private) = {
            let store = Store::open(dir.path()).unwrap();
            let note = store.create(DocKind::Automerge).unwrap();
            store.change(note, |tx| tx.put(ROOT, "k", 1)).unwrap();
            let gone = store.create(DocKind::GCounter).unwrap();
            store.delete(gone).unwrap();
            let private = store.create(DocKind::Automerge).unwrap();
            // Written as format 4 wrote them: no space records, access on the peer.
            let db = &store.shared.db;
            for key in db
                .scan_prefix(b"k")
                .keys()
                .chain(db.scan_prefix(b"n").keys())
            {
                db.remove(key.unwrap()).unwrap();
            }
            for (id, default_access, docs) in [
                (
                    everyone,
                    Access::ReadWrite,
                    BTreeMap::from([(private, Access::None)]),
                ),
                (reader, Access::Read, BTreeMap::new()),
                (
                    stranger,
                    Access::None,
                    BTreeMap::from([(private, Access::Read)]),
                ),
            ] {
                let old = PeerInfoV4 {
                    id,
                    name: "old".into(),
                    addresses: vec!["127.0.0.1:4433".parse().unwrap()],
                    default_access,
                    docs,
                };
                db.insert(records::peer_key(id), encode(&old).unwrap())
                    .unwrap();
            }
            db.insert(records::FORMAT_KEY, &4u32.to_le_bytes()).unwrap();
            store.flush().unwrap();
            (note, gone, private)
        };
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.info(note).unwrap().space, SpaceId::DEFAULT);
        let mut in_default = store.docs_in(SpaceId::DEFAULT).unwrap();
        in_default.sort();
        let mut expected = vec![note, gone, private];
        expected.sort();
        assert_eq!(in_default, expected);
        assert_eq!(store.access(everyone, note).unwrap(), Access::ReadWrite);
        assert_eq!(store.access(everyone, private).unwrap(), Access::None);
        assert_eq!(store.access(reader, note).unwrap(), Access::Read);
        assert_eq!(store.access(stranger, note).unwrap(), Access::None);
        assert_eq!(store.access(stranger, private).unwrap(), Access::Read);
        let peer = store.peer(everyone).unwrap().unwrap();
        assert_eq!(peer.addresses.len(), 1);
        assert_eq!(
            store.grants(reader).unwrap(),
            vec![(SpaceId::DEFAULT, Access::Read)]
        );
        assert!(store.grants(stranger).unwrap().is_empty());
    }
}
