//! Which documents refer to which blobs, and what follows from it: who may fetch a blob, which
//! blobs this replica should fetch, and which it may collect.
//!
//! An Automerge document refers to a blob by holding its reference, the text
//! `ferry-blob:<64 hex digits>` ([`BlobHash::reference`]), as a string value anywhere. The
//! store finds references in the bytes of every change it commits (and of every snapshot it
//! takes in, inflated as they are checked) and indexes them: `h` hash doc, and `j` doc hash.
//! A reference counts for as long as the document exists, even once a later change has
//! overwritten it: the document's history, which its readers can read, still holds it.

use std::collections::BTreeSet;
use std::fs;
use std::time::Duration;

use memchr::memmem;

use crate::records;
use crate::{Access, BlobError, BlobHash, DocId, PeerId, SpaceId, Store, StoreError};

/// What a reference to a blob starts with; 64 hex digits of its hash follow.
pub const BLOB_REFERENCE_PREFIX: &str = "ferry-blob:";
/// A reference's length.
const REFERENCE_LEN: usize = BLOB_REFERENCE_PREFIX.len() + 64;

const REF_PREFIX: u8 = b'h';
const DOC_REFS_PREFIX: u8 = b'j';
const POLICY_PREFIX: u8 = b'e';

impl BlobHash {
    /// The text a document holds to refer to this blob: `ferry-blob:` and the hash's 64 hex
    /// digits.
    ///
    /// # Examples
    ///
    /// ```
    /// use ferry_store::BlobHash;
    ///
    /// let photo = BlobHash::of(b"jpeg bytes");
    /// let reference = photo.reference();
    /// assert!(reference.starts_with("ferry-blob:"));
    /// assert_eq!(BlobHash::from_reference(&reference), Some(photo));
    /// ```
    pub fn reference(&self) -> String {
        format!("{BLOB_REFERENCE_PREFIX}{self}")
    }

    /// The blob a reference names, if `text` is one.
    pub fn from_reference(text: &str) -> Option<Self> {
        text.strip_prefix(BLOB_REFERENCE_PREFIX)?.parse().ok()
    }
}

/// Whether this replica fetches the blobs its documents refer to as soon as it learns of
/// them, per space.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub enum BlobPolicy {
    /// Fetch every blob a document of the space refers to as soon as the document arrives:
    /// a device has its photos before it goes offline, and a relay holds them for devices
    /// that come online after the one that added them went away. The default.
    #[default]
    Eager,
    /// Fetch a blob only when the app asks for it.
    OnDemand,
}

/// The blob references in `bytes`, read as they are (compressed parts are not inflated).
///
/// # Examples
///
/// ```
/// use ferry_store::{BlobHash, blob_refs_in};
///
/// let photo = BlobHash::of(b"jpeg bytes");
/// let text = format!("{{\"photo\": \"{}\"}}", photo.reference());
/// assert_eq!(blob_refs_in(text.as_bytes()).into_iter().collect::<Vec<_>>(), [photo]);
/// ```
pub fn blob_refs_in(bytes: &[u8]) -> BTreeSet<BlobHash> {
    let mut scan = RefScan::default();
    scan.feed(bytes);
    scan.found
}

/// Finds references in bytes that arrive in pieces: a reference cut between two pieces is
/// found too.
#[derive(Default)]
pub(crate) struct RefScan {
    /// The end of the last piece, as long as a reference less one byte.
    carry: Vec<u8>,
    pub(crate) found: BTreeSet<BlobHash>,
}

impl RefScan {
    pub(crate) fn feed(&mut self, bytes: &[u8]) {
        if !self.carry.is_empty() {
            let head = &bytes[..bytes.len().min(REFERENCE_LEN - 1)];
            let mut joined = std::mem::take(&mut self.carry);
            joined.extend_from_slice(head);
            find(&joined, &mut self.found);
            self.carry = joined;
            let keep = self.carry.len().saturating_sub(REFERENCE_LEN - 1);
            self.carry.drain(..keep);
            if bytes.len() < REFERENCE_LEN - 1 {
                return;
            }
        }
        find(bytes, &mut self.found);
        let tail = bytes.len().saturating_sub(REFERENCE_LEN - 1);
        self.carry = bytes[tail..].to_vec();
    }
}

fn find(bytes: &[u8], found: &mut BTreeSet<BlobHash>) {
    for at in memmem::find_iter(bytes, BLOB_REFERENCE_PREFIX.as_bytes()) {
        let Some(hex) = bytes.get(at + BLOB_REFERENCE_PREFIX.len()..at + REFERENCE_LEN) else {
            continue;
        };
        if let Some(hash) = std::str::from_utf8(hex).ok().and_then(|h| h.parse().ok()) {
            found.insert(hash);
        }
    }
}

fn ref_key(hash: BlobHash, doc: DocId) -> Vec<u8> {
    let mut key = Vec::with_capacity(49);
    key.push(REF_PREFIX);
    key.extend_from_slice(hash.as_bytes());
    key.extend_from_slice(doc.as_bytes());
    key
}

fn doc_ref_key(doc: DocId, hash: BlobHash) -> Vec<u8> {
    let mut key = Vec::with_capacity(49);
    key.push(DOC_REFS_PREFIX);
    key.extend_from_slice(doc.as_bytes());
    key.extend_from_slice(hash.as_bytes());
    key
}

fn policy_key(space: SpaceId) -> Vec<u8> {
    let mut key = vec![POLICY_PREFIX];
    key.extend_from_slice(space.as_bytes());
    key
}

impl Store {
    /// Indexes `doc`'s references to `refs`: written before the commit that holds them, and
    /// durable with it. (A crash between the two leaves a reference whose change is lost:
    /// the blob is kept longer, and readers of `doc` may fetch a blob its author meant it to
    /// refer to.)
    pub(crate) fn note_refs(
        &self,
        doc: DocId,
        refs: &BTreeSet<BlobHash>,
    ) -> Result<(), StoreError> {
        let db = &self.shared.db;
        for hash in refs {
            let key = doc_ref_key(doc, *hash);
            if !db.contains_key(&key)? {
                db.insert(ref_key(*hash, doc), &[])?;
                db.insert(key, &[])?;
            }
        }
        Ok(())
    }

    /// The blobs `doc` refers to (anywhere in its history), in hash order.
    pub fn blobs_referenced_by(&self, doc: DocId) -> Result<Vec<BlobHash>, StoreError> {
        let mut prefix = vec![DOC_REFS_PREFIX];
        prefix.extend_from_slice(doc.as_bytes());
        let mut hashes = Vec::new();
        for item in self.shared.db.scan_prefix(&prefix) {
            let (key, _) = item?;
            if let Some(hash) = key.get(17..49).and_then(|b| <[u8; 32]>::try_from(b).ok()) {
                hashes.push(BlobHash::from_bytes(hash));
            }
        }
        Ok(hashes)
    }

    /// The documents here that refer to `hash` and are not deleted, in id order.
    pub fn docs_referring_to(&self, hash: BlobHash) -> Result<Vec<DocId>, StoreError> {
        let mut prefix = vec![REF_PREFIX];
        prefix.extend_from_slice(hash.as_bytes());
        let mut docs = Vec::new();
        for item in self.shared.db.scan_prefix(&prefix) {
            let (key, _) = item?;
            let Some(doc) = records::id_at(&key, 33).map(DocId::from_bytes) else {
                continue;
            };
            if self.gone(doc)?.is_none() {
                docs.push(doc);
            }
        }
        Ok(docs)
    }

    /// Whether `peer` may fetch the blob `hash` from this replica: it may read a document
    /// here that refers to it. (Whether the blob is here is another question.)
    pub fn may_fetch_blob(&self, peer: PeerId, hash: BlobHash) -> Result<bool, StoreError> {
        for doc in self.docs_referring_to(hash)? {
            if self.access(peer, doc)? >= Access::Read {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Sets whether this replica fetches the blobs of `space`'s documents eagerly or only
    /// when asked. Durable when it returns.
    pub fn set_blob_policy(&self, space: SpaceId, policy: BlobPolicy) -> Result<(), StoreError> {
        let db = &self.shared.db;
        match policy {
            BlobPolicy::Eager => db.remove(policy_key(space))?,
            BlobPolicy::OnDemand => db.insert(policy_key(space), &[1])?,
        };
        db.flush()?;
        Ok(())
    }

    /// Whether this replica fetches the blobs of `space`'s documents eagerly.
    pub fn blob_policy(&self, space: SpaceId) -> Result<BlobPolicy, StoreError> {
        Ok(match self.shared.db.get(policy_key(space))? {
            Some(_) => BlobPolicy::OnDemand,
            None => BlobPolicy::Eager,
        })
    }

    /// The blobs `doc` refers to that are not here, if its space's policy is to fetch them
    /// eagerly (none otherwise, and none for a deleted document).
    pub fn missing_blobs_of(&self, doc: DocId) -> Result<Vec<BlobHash>, StoreError> {
        let refs = self.blobs_referenced_by(doc)?;
        if refs.is_empty() || self.gone(doc)?.is_some() {
            return Ok(Vec::new());
        }
        let Some(space) = self.space_of(doc)? else {
            return Ok(Vec::new());
        };
        if self.blob_policy(space)? != BlobPolicy::Eager {
            return Ok(Vec::new());
        }
        Ok(refs.into_iter().filter(|h| !self.has_blob(*h)).collect())
    }

    /// Every blob to fetch eagerly that is not here, with a document that refers to it.
    pub fn missing_blobs(&self) -> Result<Vec<(BlobHash, DocId)>, StoreError> {
        let mut missing = std::collections::BTreeMap::new();
        let mut last = None;
        for item in self.shared.db.scan_prefix([DOC_REFS_PREFIX]) {
            let (key, _) = item?;
            let Some(doc) = records::id_at(&key, 1).map(DocId::from_bytes) else {
                continue;
            };
            if last == Some(doc) {
                continue;
            }
            last = Some(doc);
            for hash in self.missing_blobs_of(doc)? {
                missing.entry(hash).or_insert(doc);
            }
        }
        Ok(missing.into_iter().collect())
    }

    /// Removes the blobs no document here refers to that were added (or arrived) longer than
    /// `grace` ago, and returns them. A blob a live document refers to is never removed; the
    /// grace period covers a blob added just before the document that refers to it.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use automerge::{ROOT, transaction::Transactable};
    /// use ferry_store::{DocKind, Store};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path())?;
    /// let kept = store.add_blob(b"a photo in a survey")?;
    /// let stray = store.add_blob(b"a photo nobody kept")?;
    /// let survey = store.create(DocKind::Automerge)?;
    /// store.change(survey, |tx| tx.put(ROOT, "photo", kept.reference()))?;
    ///
    /// assert!(store.collect_blobs(Duration::from_secs(3600))?.is_empty()); // within grace
    /// assert_eq!(store.collect_blobs(Duration::ZERO)?, vec![stray]);
    /// assert!(store.has_blob(kept) && !store.has_blob(stray));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn collect_blobs(&self, grace: Duration) -> Result<Vec<BlobHash>, BlobError> {
        let mut removed = Vec::new();
        for (hash, _) in self.blobs()? {
            let referred = !self
                .docs_referring_to(hash)
                .map_err(|e| BlobError::Io(std::io::Error::other(e)))?
                .is_empty();
            if referred {
                continue;
            }
            let path = self.blob_file(hash);
            let age = fs::metadata(&path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .unwrap_or_default();
            if age < grace {
                continue;
            }
            fs::remove_file(&path)?;
            let _ = fs::remove_file(self.outboard_file(hash));
            removed.push(hash);
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_reference_cut_between_pieces_is_found() {
        let hash = BlobHash::of(b"photo");
        let text = format!("xx{}yy{}", hash.reference(), BlobHash::of(b"b").reference());
        let bytes = text.as_bytes();
        for cut in 0..bytes.len() {
            for second in [cut, (cut + 7).min(bytes.len())] {
                let mut scan = RefScan::default();
                scan.feed(&bytes[..cut]);
                scan.feed(&bytes[cut..second]);
                scan.feed(&bytes[second..]);
                assert_eq!(scan.found, blob_refs_in(bytes), "cut at {cut}, {second}");
            }
        }
        assert_eq!(blob_refs_in(bytes).len(), 2);
        // Not a reference: too short, or not hex.
        let short = format!("{BLOB_REFERENCE_PREFIX}{}", &hash.to_string()[..63]);
        assert!(blob_refs_in(short.as_bytes()).is_empty());
        let bad = format!("{BLOB_REFERENCE_PREFIX}{}", "g".repeat(64));
        assert!(blob_refs_in(bad.as_bytes()).is_empty());
    }
}
