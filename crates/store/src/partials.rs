//! Whole documents arriving in parts from a peer, assembled in a file beside the store until
//! the last part comes, so a document of any size costs the receiver disk, not memory, while it
//! travels. Nothing here is a document yet: a finished assembly is checked against the digest
//! the sender announced, then taken in as any snapshot is, in one durable write.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use crate::{DocId, PeerId, Store};

/// Why a part was not taken.
#[derive(Debug, thiserror::Error)]
pub enum PartError {
    /// The document is larger than the store takes in ([`StoreConfig::max_doc_bytes`]).
    ///
    /// [`StoreConfig::max_doc_bytes`]: crate::StoreConfig::max_doc_bytes
    #[error("a document of {total} bytes is larger than this replica takes in ({limit} bytes)")]
    TooLarge {
        /// The document's announced size.
        total: u64,
        /// The store's limit.
        limit: u64,
    },
    /// A part does not continue the assembly where it stands, or runs past the announced end.
    #[error(
        "a part at offset {offset} of {len} bytes does not continue the {have} of {total} bytes"
    )]
    OutOfPlace {
        /// Where the part starts.
        offset: u64,
        /// Its length.
        len: u64,
        /// Bytes assembled so far.
        have: u64,
        /// The announced total.
        total: u64,
    },
    /// The assembled bytes are not those the sender announced.
    #[error("the assembled document does not match the digest its sender announced")]
    Digest,
    /// The file could not be written or read.
    #[error("assembling a document failed")]
    Io(#[from] std::io::Error),
}

/// One document being assembled from parts, in a file of its own. Dropped unfinished, it
/// keeps its file, so the next assembly of the same bytes from the same peer goes on from
/// there; finished, or found not to match its digest, it removes it.
#[derive(Debug)]
pub struct Assembly {
    doc: DocId,
    digest: [u8; 32],
    total: u64,
    have: u64,
    hasher: blake3::Hasher,
    file: Option<File>,
    path: PathBuf,
    /// Whether the file stays when this is dropped.
    keep: bool,
}

impl Store {
    /// Starts assembling `doc` from `peer`: `total` bytes whose blake3 hash is `digest`. An
    /// assembly of the same bytes that was cut (its session ended, or the process) is taken
    /// up where it stopped: [`Assembly::len`] says how much is already there, and the sender
    /// can be asked to go on from there. Any other leftover from `peer` is discarded. A
    /// document larger than [`StoreConfig::max_doc_bytes`](crate::StoreConfig::max_doc_bytes)
    /// is refused here, before a byte is kept.
    ///
    /// # Examples
    ///
    /// ```
    /// use ferry_store::{DocId, PeerId, Store};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path())?;
    /// let bytes = b"a document too large for one frame".to_vec();
    /// let digest = *blake3::hash(&bytes).as_bytes();
    /// let (peer, doc) = (PeerId::from_bytes([1; 16]), DocId::from_bytes([2; 16]));
    /// let total = bytes.len() as u64;
    /// let mut assembly = store.assemble(peer, doc, total, digest)?;
    /// assembly.append(0, &bytes[..10])?;
    /// drop(assembly); // cut
    /// let mut assembly = store.assemble(peer, doc, total, digest)?;
    /// assert_eq!(assembly.len(), 10); // taken up where it stopped
    /// assembly.append(10, &bytes[10..])?;
    /// assert!(assembly.is_complete());
    /// assert_eq!(assembly.finish()?, bytes);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn assemble(
        &self,
        peer: PeerId,
        doc: DocId,
        total: u64,
        digest: [u8; 32],
    ) -> Result<Assembly, PartError> {
        let limit = self.shared.config.max_doc_bytes;
        if total > limit {
            return Err(PartError::TooLarge { total, limit });
        }
        let dir = self.shared.dir.join(INCOMING).join(peer.to_string());
        fs::create_dir_all(&dir)?;
        let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
        let mut path = dir.join(format!("{doc}-{hex}"));
        let mut in_use = lock(&IN_USE);
        // Two sessions with one peer (a reconnection overlapping the old connection) may each
        // assemble the same document: the second gets a file of its own, not resumable.
        if in_use.contains(&path) {
            let n = ASSEMBLIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            path = dir.join(format!("{doc}-{hex}-{n}"));
        }
        // One leftover per peer is kept for resuming: any other is dropped now.
        for entry in fs::read_dir(&dir)?.flatten() {
            if entry.path() != path && !in_use.contains(&entry.path()) {
                let _ = fs::remove_file(entry.path());
            }
        }
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .read(true)
            .open(&path)?;
        let mut hasher = blake3::Hasher::new();
        let mut have = file.metadata()?.len();
        if have > total {
            file.set_len(0)?;
            have = 0;
        }
        if have > 0 {
            // The hash goes on from what is there (read once, not kept in memory whole).
            std::io::copy(&mut (&mut file).take(have), &mut hasher)?;
        }
        file.seek(SeekFrom::Start(have))?;
        in_use.insert(path.clone());
        Ok(Assembly {
            doc,
            digest,
            total,
            have,
            hasher,
            file: Some(file),
            path,
            keep: true,
        })
    }
}

/// The directory, in the store's, where documents are assembled.
pub(crate) const INCOMING: &str = "incoming";

/// Numbers apart the files of assemblies that cannot share one.
static ASSEMBLIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Assembly files open in this process.
static IN_USE: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

fn lock(set: &Mutex<BTreeSet<PathBuf>>) -> std::sync::MutexGuard<'_, BTreeSet<PathBuf>> {
    // A set of paths: consistent whatever a panicking holder did.
    set.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How long a cut assembly is kept for resuming after the store closes.
const KEEP_LEFTOVERS: Duration = Duration::from_secs(24 * 60 * 60);

/// Removes assemblies left behind over a day ago, when the process ended mid-document: called
/// as the store opens. Newer ones stay, to be taken up where they stopped.
pub(crate) fn clear_leftovers(dir: &std::path::Path) -> Result<(), std::io::Error> {
    let incoming = dir.join(INCOMING);
    let Ok(peers) = fs::read_dir(&incoming) else {
        return Ok(());
    };
    for peer in peers.flatten() {
        for entry in fs::read_dir(peer.path())?.flatten() {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .map(|at| at.elapsed().unwrap_or_default() > KEEP_LEFTOVERS)
                .unwrap_or(true);
            if old {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
    Ok(())
}

impl Assembly {
    /// The document being assembled.
    pub fn doc(&self) -> DocId {
        self.doc
    }

    /// The digest its sender announced.
    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }

    /// Bytes assembled so far.
    pub fn len(&self) -> u64 {
        self.have
    }

    /// Whether no byte has come yet.
    pub fn is_empty(&self) -> bool {
        self.have == 0
    }

    /// Whether every byte has come.
    pub fn is_complete(&self) -> bool {
        self.have == self.total
    }

    /// Adds `bytes`, which start at `offset` and end at or before the announced total. Bytes
    /// already there (a part sent again after a resume) are passed over; a part that starts
    /// past where the assembly stands is out of place.
    pub fn append(&mut self, offset: u64, bytes: &[u8]) -> Result<(), PartError> {
        let len = bytes.len() as u64;
        let end = offset.checked_add(len);
        if offset > self.have || end.is_none_or(|end| end > self.total) {
            return Err(PartError::OutOfPlace {
                offset,
                len,
                have: self.have,
                total: self.total,
            });
        }
        let known = usize::try_from(self.have - offset).unwrap_or(usize::MAX);
        let Some(new) = bytes.get(known..).filter(|new| !new.is_empty()) else {
            return Ok(());
        };
        let file = self.file.as_mut().ok_or(PartError::Digest)?;
        file.write_all(new)?;
        self.hasher.update(new);
        self.have += new.len() as u64;
        Ok(())
    }

    /// The whole document's bytes, once complete and matching the announced digest. The file
    /// is removed either way.
    pub fn finish(mut self) -> Result<Vec<u8>, PartError> {
        self.keep = false;
        if !self.is_complete() || *self.hasher.finalize().as_bytes() != self.digest {
            return Err(PartError::Digest);
        }
        let mut file = self.file.take().ok_or(PartError::Digest)?;
        file.flush()?;
        drop(file);
        let mut bytes = Vec::with_capacity(usize::try_from(self.total).unwrap_or(0));
        File::open(&self.path)?.read_to_end(&mut bytes)?;
        // Read back from disk: what is taken in is what was checked.
        if *blake3::hash(&bytes).as_bytes() != self.digest {
            return Err(PartError::Digest);
        }
        Ok(bytes)
    }
}

impl Drop for Assembly {
    fn drop(&mut self) {
        self.file = None;
        if !self.keep {
            let _ = fs::remove_file(&self.path);
        }
        lock(&IN_USE).remove(&self.path);
    }
}
