//! Blobs between stores: verified streaming with resume, references from documents, who may
//! fetch, what to fetch, and what to collect.

#![allow(clippy::unwrap_used)]

use std::io::{self, Read};

use automerge::{Automerge, ROOT, transaction::Transactable};
use ferry_store::{
    Access, BLOB_GROUP_BYTES, BlobError, BlobHash, BlobPolicy, CheckedSnapshot, DocKind, Origin,
    PeerId, PeerInfo, SpaceId, Store,
};

fn photo(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    (dir, store)
}

/// A reader that yields only its first `limit` bytes and then fails, as a cut stream does.
struct Cut<R> {
    inner: R,
    limit: usize,
}

impl<R: Read> Read for Cut<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.limit == 0 {
            return Err(io::ErrorKind::ConnectionReset.into());
        }
        let n = buf.len().min(self.limit);
        let n = self.inner.read(&mut buf[..n])?;
        self.limit -= n;
        Ok(n)
    }
}

#[test]
fn a_blob_streams_verified_and_a_cut_transfer_resumes_where_it_stopped() {
    let (_a, sender) = open();
    let (_b, receiver) = open();
    let bytes = photo(3_000_000, 1);
    let hash = sender.add_blob(&bytes).unwrap();
    let len = sender.blob_len(hash).unwrap();

    let mut encoded = Vec::new();
    sender.encode_blob(hash, 0, &mut encoded).unwrap();
    // The bytes, and 64 bytes of hashes per 16 KiB group (less one).
    assert!(encoded.len() as u64 > len && (encoded.len() as u64) < len + len / 200);

    // Cut after about a third.
    let mut incoming = receiver.receive_blob(hash, len).unwrap();
    let cut = Cut {
        inner: &encoded[..],
        limit: encoded.len() / 3,
    };
    assert!(matches!(incoming.take(cut, |_| {}), Err(BlobError::Io(_))));
    let kept = incoming.resume_at();
    assert!(kept > 900_000 && kept < 1_100_000 && kept % BLOB_GROUP_BYTES == 0);
    drop(incoming);
    assert!(!receiver.has_blob(hash));

    // The next transfer asks for the rest only, and the blob is whole.
    let mut incoming = receiver.receive_blob(hash, len).unwrap();
    assert_eq!(incoming.resume_at(), kept);
    let mut rest = Vec::new();
    sender.encode_blob(hash, kept, &mut rest).unwrap();
    assert!(rest.len() < encoded.len() - kept as usize + 4096);
    let mut seen = Vec::new();
    incoming.take(&rest[..], |n| seen.push(n)).unwrap();
    assert_eq!(seen.last(), Some(&len));
    assert!(seen.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(incoming.finish().unwrap(), len);
    assert_eq!(receiver.read_blob(hash).unwrap(), bytes);
    assert_eq!(receiver.blobs().unwrap(), vec![(hash, len)]);

    // The receiver can send it on at once, from its own hash tree.
    let mut again = Vec::new();
    receiver.encode_blob(hash, 0, &mut again).unwrap();
    assert_eq!(again, encoded);
}

#[test]
fn bytes_that_do_not_match_the_hash_are_never_kept() {
    let (_a, sender) = open();
    let (_b, receiver) = open();
    let bytes = photo(200_000, 2);
    let hash = sender.add_blob(&bytes).unwrap();
    let mut encoded = Vec::new();
    sender.encode_blob(hash, 0, &mut encoded).unwrap();

    // One byte changed in the fifth group's data: the groups before it are kept, not it.
    let mut forged = encoded.clone();
    let at = forged.len() / 2;
    forged[at] ^= 1;
    let mut incoming = receiver.receive_blob(hash, 200_000).unwrap();
    let result = incoming.take(&forged[..], |_| {});
    assert!(matches!(result, Err(BlobError::Unverified(h)) if h == hash));
    let kept = incoming.resume_at();
    assert!(kept < at as u64);
    drop(incoming);
    assert!(!receiver.has_blob(hash));

    // A peer claiming another blob's bytes under this hash fails at once.
    let other = sender.add_blob(&photo(200_000, 3)).unwrap();
    let mut wrong = Vec::new();
    sender.encode_blob(other, 0, &mut wrong).unwrap();
    let fresh = BlobHash::of(b"not the other one");
    let mut incoming = receiver.receive_blob(fresh, 200_000).unwrap();
    assert!(matches!(
        incoming.take(&wrong[..], |_| {}),
        Err(BlobError::Unverified(_))
    ));
    assert_eq!(incoming.resume_at(), 0);

    // And the honest bytes from where the forged ones stopped complete it.
    drop(incoming);
    let mut incoming = receiver.receive_blob(hash, 200_000).unwrap();
    assert_eq!(incoming.resume_at(), kept);
    let mut rest = Vec::new();
    sender.encode_blob(hash, kept, &mut rest).unwrap();
    incoming.take(&rest[..], |_| {}).unwrap();
    incoming.finish().unwrap();
    assert_eq!(receiver.read_blob(hash).unwrap(), bytes);
}

#[test]
fn one_transfer_per_blob_at_a_time_and_small_and_empty_blobs_work() {
    let (_a, sender) = open();
    let (_b, receiver) = open();
    for bytes in [
        Vec::new(),
        b"tiny".to_vec(),
        photo(16 * 1024, 4),
        photo(16 * 1024 + 1, 5),
    ] {
        let hash = sender.add_blob(&bytes).unwrap();
        let len = bytes.len() as u64;
        let mut encoded = Vec::new();
        sender.encode_blob(hash, 0, &mut encoded).unwrap();
        let mut incoming = receiver.receive_blob(hash, len).unwrap();
        assert!(matches!(
            receiver.receive_blob(hash, len),
            Err(BlobError::InFlight(h)) if h == hash
        ));
        incoming.take(&encoded[..], |_| {}).unwrap();
        incoming.finish().unwrap();
        assert_eq!(receiver.read_blob(hash).unwrap(), bytes, "{len} bytes");
    }
}

#[test]
fn a_blob_damaged_on_disk_is_not_sent() {
    let (dir, store) = open();
    let hash = store.add_blob(&photo(100_000, 6)).unwrap();
    let name = hash.to_string();
    let file = dir.path().join("blobs").join(&name[..2]).join(&name);
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[50_000] ^= 1;
    std::fs::write(&file, bytes).unwrap();
    let result = store.encode_blob(hash, 0, io::sink());
    assert!(matches!(result, Err(BlobError::Damaged(h)) if h == hash));
}

#[test]
fn documents_refer_to_blobs_and_readers_of_them_may_fetch_them() {
    let (_a, store) = open();
    let photo_hash = store.add_blob(b"a basement photo").unwrap();
    let elsewhere = BlobHash::of(b"a blob this replica has not got");

    let survey_space = store.create_space("surveys").unwrap();
    let survey = store.create_in(survey_space, DocKind::Automerge).unwrap();
    store
        .change(survey, |tx| {
            tx.put(ROOT, "photo", photo_hash.reference())?;
            tx.put(ROOT, "sketch", elsewhere.reference())
        })
        .unwrap();
    let mut refs = vec![photo_hash, elsewhere];
    refs.sort();
    assert_eq!(store.blobs_referenced_by(survey).unwrap(), refs);
    assert_eq!(store.docs_referring_to(photo_hash).unwrap(), vec![survey]);

    let reader = PeerId::from_bytes([1; 16]);
    let stranger = PeerId::from_bytes([2; 16]);
    for peer in [reader, stranger] {
        store.put_peer(&PeerInfo::new(peer, "peer")).unwrap();
    }
    store.grant(reader, survey_space, Access::Read).unwrap();
    assert!(store.may_fetch_blob(reader, photo_hash).unwrap());
    assert!(!store.may_fetch_blob(stranger, photo_hash).unwrap());
    let unreferenced = store.add_blob(b"added, never referred to").unwrap();
    assert!(!store.may_fetch_blob(reader, unreferenced).unwrap());

    // Overwritten, the reference still counts: the history holds it.
    store
        .change(survey, |tx| tx.put(ROOT, "photo", "removed"))
        .unwrap();
    assert!(store.may_fetch_blob(reader, photo_hash).unwrap());

    // Fetched eagerly by default; not once the space says on demand.
    assert_eq!(store.missing_blobs_of(survey).unwrap(), vec![elsewhere]);
    assert_eq!(store.missing_blobs().unwrap(), vec![(elsewhere, survey)]);
    store
        .set_blob_policy(survey_space, BlobPolicy::OnDemand)
        .unwrap();
    assert!(store.missing_blobs_of(survey).unwrap().is_empty());
    store
        .set_blob_policy(survey_space, BlobPolicy::Eager)
        .unwrap();

    // Deleted, the document refers to nothing any more.
    store.delete(survey).unwrap();
    assert!(!store.may_fetch_blob(reader, photo_hash).unwrap());
    assert!(store.missing_blobs_of(survey).unwrap().is_empty());
    let mut gone = store.collect_blobs(std::time::Duration::ZERO).unwrap();
    gone.sort();
    let mut expected = vec![photo_hash, unreferenced];
    expected.sort();
    assert_eq!(gone, expected);
}

#[test]
fn references_in_a_peer_snapshot_or_changes_are_indexed() {
    let (_a, store) = open();
    let hashes: Vec<BlobHash> = (0..40u32).map(|i| BlobHash::of(&i.to_le_bytes())).collect();
    let mut theirs = Automerge::new();
    theirs
        .transact(|tx| {
            for (i, hash) in hashes.iter().enumerate() {
                tx.put(ROOT, format!("photo {i}"), hash.reference())?;
            }
            Ok::<_, automerge::AutomergeError>(())
        })
        .unwrap();
    // Saved, the value column is compressed: the references are found once inflated.
    let saved = theirs.save();
    assert!(ferry_store::blob_refs_in(&saved).len() < hashes.len());
    let doc = ferry_store::DocId::random();
    let from = Origin::Remote(PeerId::from_bytes([7; 16]));
    let checked = CheckedSnapshot::check_within(saved, store.limits()).unwrap();
    store
        .adopt_snapshot((doc, SpaceId::DEFAULT), from, checked)
        .unwrap();
    let mut expected = hashes.clone();
    expected.sort();
    assert_eq!(store.blobs_referenced_by(doc).unwrap(), expected);

    // A change from a peer.
    let later = BlobHash::of(b"later");
    let mut fork = theirs.fork();
    fork.transact(|tx| tx.put(ROOT, "late", later.reference()))
        .unwrap();
    let change = fork.get_last_local_change().unwrap().clone();
    store.apply_changes(doc, from, vec![change]).unwrap();
    assert!(store.blobs_referenced_by(doc).unwrap().contains(&later));
}

#[test]
fn a_transfer_cut_at_random_points_resumes_each_time_until_whole() {
    let (_a, sender) = open();
    let bytes = photo(1_500_000, 9);
    let hash = sender.add_blob(&bytes).unwrap();
    let len = bytes.len() as u64;
    // A fixed seed, so a failure replays: each round cuts the next transfer somewhere in it.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for round in 0..8 {
        let (_b, receiver) = open();
        let mut cuts = 0;
        loop {
            let mut incoming = receiver.receive_blob(hash, len).unwrap();
            let from = incoming.resume_at();
            let mut encoded = Vec::new();
            sender.encode_blob(hash, from, &mut encoded).unwrap();
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let limit = if cuts < 4 {
                (seed % encoded.len() as u64) as usize
            } else {
                usize::MAX
            };
            let cut = Cut {
                inner: &encoded[..],
                limit,
            };
            match incoming.take(cut, |_| {}) {
                Ok(()) => {
                    incoming.finish().unwrap();
                    break;
                }
                Err(BlobError::Io(_)) => {
                    assert!(incoming.resume_at() >= from, "round {round}: went back");
                    cuts += 1;
                }
                Err(e) => panic!("round {round}: {e}"),
            }
        }
        assert_eq!(receiver.read_blob(hash).unwrap(), bytes, "round {round}");
    }
}

/// The names of the files in the store's `records/` directory.
fn record_files(dir: &std::path::Path) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(dir.join("records")).map_or_else(
        |_| Default::default(),
        |d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        },
    )
}

#[test]
fn large_snapshots_and_changes_are_kept_as_files_until_replaced() {
    use automerge::ReadDoc;
    let bytes_len = |store: &Store, doc, key: &str| {
        store
            .read(doc, |d| match d.get(ROOT, key).unwrap() {
                Some((automerge::Value::Scalar(s), _)) => match s.as_ref() {
                    automerge::ScalarValue::Bytes(b) => b.len(),
                    _ => 0,
                },
                _ => 0,
            })
            .unwrap()
    };
    let (dir, store) = open();
    let mut theirs = Automerge::new();
    theirs
        .transact(|tx| {
            tx.put(
                ROOT,
                "photo",
                automerge::ScalarValue::Bytes(photo(6 << 20, 10)),
            )
        })
        .unwrap();
    let saved = theirs.save();
    let from = Origin::Remote(PeerId::from_bytes([7; 16]));
    let survey = ferry_store::DocId::random();
    let checked = CheckedSnapshot::check_within(saved.clone(), store.limits()).unwrap();
    store
        .adopt_snapshot((survey, SpaceId::DEFAULT), from, checked)
        .unwrap();
    let taken_in = record_files(dir.path());
    assert_eq!(taken_in.len(), 1);
    assert_eq!(store.stored_form(survey).unwrap().bytes, saved);

    // A large change goes to a file of its own; a small one does not.
    store
        .change(survey, |tx| {
            tx.put(
                ROOT,
                "plan",
                automerge::ScalarValue::Bytes(photo(1 << 20, 11)),
            )
        })
        .unwrap();
    store.change(survey, |tx| tx.put(ROOT, "k", 1)).unwrap();
    assert_eq!(record_files(dir.path()).len(), 2);
    let heads = store.read(survey, |d| d.get_heads()).unwrap();
    let stored = store.stored_form(survey).unwrap();
    let reloaded = Automerge::load(&stored.bytes).unwrap();
    assert_eq!(reloaded.get_heads(), heads);

    // Read back after a restart, with a stray file (a crash before its pointer) gone.
    drop(store);
    let stray = format!("{survey}-{:032x}", 1);
    std::fs::write(dir.path().join("records").join(&stray), b"cut").unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(record_files(dir.path()).len(), 2);
    assert!(!record_files(dir.path()).contains(&stray));
    assert_eq!(store.read(survey, |d| d.get_heads()).unwrap(), heads);
    assert_eq!(bytes_len(&store, survey, "plan"), 1 << 20);

    // A compaction: one new file for the new snapshot; the files it replaced go.
    store.compact(survey).unwrap();
    let compacted = record_files(dir.path());
    assert_eq!(compacted.len(), 1);
    assert!(compacted.is_disjoint(&taken_in));
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(bytes_len(&store, survey, "photo"), 6 << 20);
    assert_eq!(bytes_len(&store, survey, "plan"), 1 << 20);

    // Another, deleted: its file goes with it.
    let other = ferry_store::DocId::random();
    let checked = CheckedSnapshot::check_within(saved.clone(), store.limits()).unwrap();
    store
        .adopt_snapshot((other, SpaceId::DEFAULT), from, checked)
        .unwrap();
    assert_eq!(record_files(dir.path()).len(), 2);
    store.delete(other).unwrap();
    assert_eq!(record_files(dir.path()), compacted);

    // Staged ahead of being taken in (as a session does, off its own path): taken in, it
    // is the document's file; dropped instead, or taken in as another document, it goes.
    let third = ferry_store::DocId::random();
    let mut checked = CheckedSnapshot::check_within(saved.clone(), store.limits()).unwrap();
    store.stage_snapshot(third, &mut checked).unwrap();
    assert_eq!(record_files(dir.path()).len(), 2);
    drop(checked);
    assert_eq!(record_files(dir.path()), compacted);
    let mut checked = CheckedSnapshot::check_within(saved, store.limits()).unwrap();
    store.stage_snapshot(third, &mut checked).unwrap();
    store
        .adopt_snapshot((third, SpaceId::DEFAULT), from, checked)
        .unwrap();
    assert_eq!(record_files(dir.path()).len(), 2);
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(bytes_len(&store, third, "photo"), 6 << 20);
    store.delete(survey).unwrap();
    store.delete(third).unwrap();
    assert!(record_files(dir.path()).is_empty());
}
