//! Attachments (blobs): photos, PDFs and other bytes that do not belong inside a document, kept
//! as files beside the store, not in sled, and named by the blake3 hash of their bytes. A
//! document refers to a blob by its hash.
//!
//! A blob is written to a temporary file while it is hashed, fsynced, renamed to its name, and
//! its directory fsynced: when [`Store::add_blob`] returns the hash, a crash loses nothing of it.
//! The same bytes added twice are one file. Reading checks the bytes against the name, so a file
//! damaged on disk is an error, never wrong bytes.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::Store;

/// The directory, in the store's, that holds blobs.
pub(crate) const BLOBS: &str = "blobs";
/// Where blobs are written before they are whole.
const TMP: &str = "tmp";
/// Where blobs arriving from peers are kept until whole, across cuts and restarts.
pub(crate) const PARTIAL: &str = "partial";
/// How long a partial blob nobody resumes is kept.
const PARTIAL_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// A blob's name: the blake3 hash of its bytes. Shown and parsed as 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobHash([u8; 32]);

impl BlobHash {
    /// The hash of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(*blake3::hash(bytes).as_bytes())
    }

    /// A hash from its 32 bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Its 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobHash({self})")
    }
}

/// A blob hash that is not 64 hex digits.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
#[error("a blob hash is 64 hex digits")]
pub struct BadBlobHash;

impl FromStr for BlobHash {
    type Err = BadBlobHash;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.as_bytes();
        if s.len() != 64 {
            return Err(BadBlobHash);
        }
        let mut bytes = [0u8; 32];
        for (i, pair) in s.chunks(2).enumerate() {
            let pair = std::str::from_utf8(pair).map_err(|_| BadBlobHash)?;
            bytes[i] = u8::from_str_radix(pair, 16).map_err(|_| BadBlobHash)?;
        }
        Ok(Self(bytes))
    }
}

/// What went wrong with a blob.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// No blob has this hash here.
    #[error("no blob {0}")]
    NotFound(BlobHash),
    /// The file of this blob no longer holds the bytes its name says: damaged on disk.
    #[error("blob {0} is damaged on disk")]
    Damaged(BlobHash),
    /// Bytes a peer sent for this blob do not match its hash: they were not kept.
    #[error("bytes received for blob {0} do not match its hash")]
    Unverified(BlobHash),
    /// This blob is being received already.
    #[error("blob {0} is being received already")]
    InFlight(BlobHash),
    /// Reading or writing failed.
    #[error("blob storage failed")]
    Io(#[from] io::Error),
}

impl Store {
    pub(crate) fn blob_dir(&self) -> PathBuf {
        self.shared.dir.join(BLOBS)
    }

    /// Where the blob with `hash` lives (whether or not it is here): `blobs/<2 hex>/<64 hex>`.
    pub(crate) fn blob_file(&self, hash: BlobHash) -> PathBuf {
        let name = hash.to_string();
        self.blob_dir().join(&name[..2]).join(name)
    }

    /// A fresh name in the directory of files not yet whole.
    pub(crate) fn blob_tmp(&self) -> Result<PathBuf, io::Error> {
        let tmp_dir = self.blob_dir().join(TMP);
        fs::create_dir_all(&tmp_dir)?;
        Ok(tmp_dir.join(format!("{:032x}", rand::random::<u128>())))
    }

    /// Adds `bytes` as a blob and returns its hash once it is durable.
    ///
    /// # Examples
    ///
    /// ```
    /// use ferry_store::{BlobHash, Store};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path())?;
    /// let photo = store.add_blob(b"not really a photo")?;
    /// assert_eq!(photo, BlobHash::of(b"not really a photo"));
    /// assert_eq!(store.read_blob(photo)?, b"not really a photo");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn add_blob(&self, bytes: &[u8]) -> Result<BlobHash, BlobError> {
        self.add_blob_from(bytes).map(|(hash, _)| hash)
    }

    /// Adds the file at `path` as a blob, read as it is copied (not into memory): its hash and
    /// length, once it is durable.
    pub fn add_blob_file(&self, path: impl AsRef<Path>) -> Result<(BlobHash, u64), BlobError> {
        self.add_blob_from(File::open(path)?)
    }

    /// Adds everything `reader` yields as a blob, hashed as it is copied (not into memory):
    /// its hash and length, once it is durable.
    pub fn add_blob_from(&self, mut reader: impl Read) -> Result<(BlobHash, u64), BlobError> {
        let tmp = self.blob_tmp()?;
        let written = (|| {
            let mut file = File::create(&tmp)?;
            let mut hasher = blake3::Hasher::new();
            let mut buf = vec![0u8; 64 * 1024];
            let mut len = 0u64;
            loop {
                let n = match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                hasher.update(&buf[..n]);
                file.write_all(&buf[..n])?;
                len += n as u64;
            }
            file.sync_all()?;
            Ok((BlobHash(*hasher.finalize().as_bytes()), len))
        })();
        let (hash, len) = match written {
            Ok(done) => done,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e.into());
            }
        };
        let dest = self.blob_file(hash);
        let shard = dest.parent().map(Path::to_path_buf).unwrap_or_default();
        if dest.exists() {
            // The same bytes are here already (durable when they were added).
            fs::remove_file(&tmp)?;
            return Ok((hash, len));
        }
        fs::create_dir_all(&shard)?;
        fs::rename(&tmp, &dest)?;
        // The rename is durable once the directories that name it are.
        File::open(&shard)?.sync_all()?;
        File::open(self.blob_dir())?.sync_all()?;
        Ok((hash, len))
    }

    /// Whether the blob with `hash` is here.
    pub fn has_blob(&self, hash: BlobHash) -> bool {
        self.blob_file(hash).is_file()
    }

    /// The blob's bytes, checked against its hash.
    pub fn read_blob(&self, hash: BlobHash) -> Result<Vec<u8>, BlobError> {
        let mut bytes = Vec::new();
        self.open_blob(hash)?.read_to_end(&mut bytes)?;
        if BlobHash::of(&bytes) != hash {
            return Err(BlobError::Damaged(hash));
        }
        Ok(bytes)
    }

    /// The blob's file, opened for reading, to stream it without holding it in memory. (The
    /// caller that needs the bytes checked hashes them as it reads, or uses
    /// [`Store::read_blob`].)
    pub fn open_blob(&self, hash: BlobHash) -> Result<File, BlobError> {
        File::open(self.blob_file(hash)).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => BlobError::NotFound(hash),
            _ => BlobError::Io(e),
        })
    }

    /// Where the blob's file is, for a process on this machine to read it (the bytes are not
    /// checked: hash them as they are read).
    pub fn blob_location(&self, hash: BlobHash) -> Result<PathBuf, BlobError> {
        let path = self.blob_file(hash);
        if !path.is_file() {
            return Err(BlobError::NotFound(hash));
        }
        Ok(path)
    }

    /// Every blob here, with its length, in hash order.
    pub fn blobs(&self) -> Result<Vec<(BlobHash, u64)>, BlobError> {
        let mut blobs = Vec::new();
        let Ok(shards) = fs::read_dir(self.blob_dir()) else {
            return Ok(blobs);
        };
        for shard in shards.flatten() {
            if shard.file_name() == TMP || shard.file_name() == PARTIAL || !shard.path().is_dir() {
                continue;
            }
            for entry in fs::read_dir(shard.path())?.flatten() {
                let name = entry.file_name();
                if let Some(hash) = name.to_str().and_then(|n| n.parse().ok()) {
                    blobs.push((hash, entry.metadata()?.len()));
                }
            }
        }
        blobs.sort();
        Ok(blobs)
    }
}

/// Removes blobs left half-written when the process ended, and partial blobs from peers
/// that nobody resumed for a week: called as the store opens.
pub(crate) fn clear_leftovers(dir: &Path) -> Result<(), io::Error> {
    crate::blob_transfer::clear_stale_partials(dir, PARTIAL_MAX_AGE);
    match fs::remove_dir_all(dir.join(BLOBS).join(TMP)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_same_bytes_are_one_blob_and_each_way_of_adding_agrees() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let a = store.add_blob(&bytes).unwrap();
        let (b, len) = store.add_blob_from(&bytes[..]).unwrap();
        let path = dir.path().join("photo.jpg");
        fs::write(&path, &bytes).unwrap();
        let (c, _) = store.add_blob_file(&path).unwrap();
        assert_eq!((a, b, c), (BlobHash::of(&bytes), a, a));
        assert_eq!(len, 300_000);
        assert_eq!(store.blobs().unwrap(), vec![(a, 300_000)]);
        assert!(store.has_blob(a));
        assert_eq!(store.read_blob(a).unwrap(), bytes);
        assert_eq!(a.to_string().parse::<BlobHash>().unwrap(), a);
        // Nothing left in the temporary directory.
        assert_eq!(
            fs::read_dir(dir.path().join(BLOBS).join(TMP))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn a_blob_damaged_on_disk_reads_as_an_error_and_a_missing_one_as_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let hash = store.add_blob(b"a survey photo").unwrap();
        let file = store.blob_file(hash);
        let mut bytes = fs::read(&file).unwrap();
        bytes[3] ^= 1;
        fs::write(&file, bytes).unwrap();
        assert!(matches!(store.read_blob(hash), Err(BlobError::Damaged(h)) if h == hash));
        let absent = BlobHash::of(b"never added");
        assert!(matches!(store.read_blob(absent), Err(BlobError::NotFound(h)) if h == absent));
        assert!(!store.has_blob(absent));
    }

    #[test]
    fn half_written_blobs_are_gone_when_the_store_opens_again() {
        let dir = tempfile::tempdir().unwrap();
        let kept = {
            let store = Store::open(dir.path()).unwrap();
            fs::create_dir_all(dir.path().join(BLOBS).join(TMP)).unwrap();
            fs::write(dir.path().join(BLOBS).join(TMP).join("cut"), b"half").unwrap();
            store.add_blob(b"whole").unwrap()
        };
        let store = Store::open(dir.path()).unwrap();
        assert!(!dir.path().join(BLOBS).join(TMP).exists());
        assert_eq!(store.read_blob(kept).unwrap(), b"whole");
    }
}
