//! Whole documents arriving in parts from a peer, assembled in a file beside the store until
//! the last part comes, so a document of any size costs the receiver disk, not memory, while it
//! travels. Nothing here is a document yet: a finished assembly is checked against the digest
//! the sender announced, then taken in as any snapshot is, in one durable write.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::PathBuf;

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
/// removes its file.
#[derive(Debug)]
pub struct Assembly {
    doc: DocId,
    digest: [u8; 32],
    total: u64,
    have: u64,
    hasher: blake3::Hasher,
    file: Option<File>,
    path: PathBuf,
}

impl Store {
    /// Starts assembling `doc` from `peer`: `total` bytes whose blake3 hash is `digest`. Any
    /// earlier assembly of the document from that peer is discarded. A document larger than
    /// [`StoreConfig::max_doc_bytes`](crate::StoreConfig::max_doc_bytes) is refused here, before
    /// a byte is kept.
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
    /// let mut assembly = store.assemble(peer, doc, bytes.len() as u64, digest)?;
    /// assembly.append(0, &bytes[..10])?;
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
        // Two sessions with one peer (a reconnection overlapping the old connection) may each
        // assemble the same document: each has a file of its own.
        let n = ASSEMBLIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(format!("{doc}-{n}"));
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .read(true)
            .open(&path)?;
        Ok(Assembly {
            doc,
            digest,
            total,
            have: 0,
            hasher: blake3::Hasher::new(),
            file: Some(file),
            path,
        })
    }
}

/// The directory, in the store's, where documents are assembled.
pub(crate) const INCOMING: &str = "incoming";

/// Numbers assembly files apart.
static ASSEMBLIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Removes what assemblies left behind in `dir` when the process ended mid-document: called
/// as the store opens, when no session runs.
pub(crate) fn clear_leftovers(dir: &std::path::Path) -> Result<(), std::io::Error> {
    match fs::remove_dir_all(dir.join(INCOMING)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
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

    /// Adds `bytes`, which must start at `offset`, where the assembly stands, and end at or
    /// before the announced total.
    pub fn append(&mut self, offset: u64, bytes: &[u8]) -> Result<(), PartError> {
        let len = bytes.len() as u64;
        if offset != self.have || self.total - self.have < len {
            return Err(PartError::OutOfPlace {
                offset,
                len,
                have: self.have,
                total: self.total,
            });
        }
        let file = self.file.as_mut().ok_or(PartError::Digest)?;
        file.write_all(bytes)?;
        self.hasher.update(bytes);
        self.have += len;
        Ok(())
    }

    /// The whole document's bytes, once complete and matching the announced digest. The file
    /// is removed either way.
    pub fn finish(mut self) -> Result<Vec<u8>, PartError> {
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
        let _ = fs::remove_file(&self.path);
    }
}
