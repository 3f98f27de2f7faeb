//! Verified blob streaming. A blob goes to a peer as its bytes interleaved with the hashes
//! that prove them (bao's encoding, through `bao-tree`): the receiver checks each group of
//! 16 KiB against the blob's blake3 hash before it keeps it, so a peer can send wrong bytes
//! but never have them kept. What arrived stays across a cut (in `blobs/partial/`), and the
//! next transfer asks only for the rest.
//!
//! The sender keeps a blob's hash tree beside it (`<hash>.obao`, 64 bytes per 16 KiB, made
//! the first time the blob is sent); the receiver builds the same tree as the blob arrives.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::PathBuf;

use bao_tree::io::outboard::PostOrderOutboard;
use bao_tree::io::sync::{WriteAt, decode_ranges, encode_ranges_validated, outboard_post_order};
use bao_tree::io::{DecodeError, EncodeError};
use bao_tree::{BaoTree, BlockSize, ChunkNum, ChunkRanges};

use crate::blobs::{BLOBS, PARTIAL};
use crate::{BlobError, BlobHash, Store};

/// Blobs are verified in groups of 16 chunks of 1 KiB.
const BLOCK: BlockSize = BlockSize::from_chunk_log(4);
/// The bytes of one verified group: transfers resume at a multiple of it.
pub const BLOB_GROUP_BYTES: u64 = 16 * 1024;
/// How much arrives between two checkpoints of a partial blob (its files fsynced and its
/// progress written, on a thread of their own so that the transfer goes on meanwhile): about
/// what a crash can cost a transfer at most.
const CHECKPOINT_BYTES: u64 = 32 << 20;

impl Store {
    /// A blob's length in bytes.
    pub fn blob_len(&self, hash: BlobHash) -> Result<u64, BlobError> {
        Ok(self.open_blob(hash)?.metadata()?.len())
    }

    /// Where the blob's hash tree is kept.
    pub(crate) fn outboard_file(&self, hash: BlobHash) -> PathBuf {
        self.blob_file(hash).with_extension("obao")
    }

    /// The blob's hash tree, made now if it is not kept yet. A blob whose bytes no longer
    /// hash to its name is [`BlobError::Damaged`].
    fn outboard(&self, hash: BlobHash, len: u64) -> Result<PostOrderOutboard<File>, BlobError> {
        let tree = BaoTree::new(len, BLOCK);
        let root = bao_tree::blake3::Hash::from_bytes(*hash.as_bytes());
        let path = self.outboard_file(hash);
        if let Ok(file) = File::open(&path)
            && file.metadata()?.len() == tree.outboard_size()
        {
            return Ok(PostOrderOutboard {
                root,
                tree,
                data: file,
            });
        }
        let tmp = self.blob_tmp()?;
        let made = (|| {
            let mut out = BufWriter::new(File::create(&tmp)?);
            let reader = BufReader::with_capacity(1 << 20, self.open_blob(hash)?);
            let computed = outboard_post_order(reader, tree, &mut out)?;
            if computed.as_bytes() != hash.as_bytes() {
                return Err(BlobError::Damaged(hash));
            }
            out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            // Derived from the blob: lost in a crash, it is made again.
            fs::rename(&tmp, &path)?;
            Ok(())
        })();
        if let Err(e) = made {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        Ok(PostOrderOutboard {
            root,
            tree,
            data: File::open(&path)?,
        })
    }

    /// Writes the blob from byte `from` (rounded down to a group of [`BLOB_GROUP_BYTES`]) to
    /// its end to `out`, with the hashes that prove it: what [`IncomingBlob::take`] reads.
    /// The bytes are checked as they are read, so a blob damaged on disk is
    /// [`BlobError::Damaged`] and is not sent on.
    pub fn encode_blob(&self, hash: BlobHash, from: u64, out: impl Write) -> Result<(), BlobError> {
        let data = self.open_blob(hash)?;
        let len = data.metadata()?.len();
        let outboard = self.outboard(hash, len)?;
        encode_ranges_validated(&data, outboard, &ranges_from(from), out).map_err(|e| match e {
            EncodeError::Io(e) => BlobError::Io(e),
            EncodeError::ParentWrite(_) | EncodeError::LeafWrite(_) => {
                BlobError::Io(io::ErrorKind::ConnectionReset.into())
            }
            _ => BlobError::Damaged(hash),
        })
    }

    /// Starts (or resumes) taking in the blob `hash`, `len` bytes long, from a peer: see
    /// [`IncomingBlob`]. One transfer per blob at a time: another already under way is
    /// [`BlobError::InFlight`].
    pub fn receive_blob(&self, hash: BlobHash, len: u64) -> Result<IncomingBlob, BlobError> {
        if !self.receiving().insert(hash) {
            return Err(BlobError::InFlight(hash));
        }
        let claim = Claim {
            store: self.clone(),
            hash,
        };
        let dir = self.blob_dir().join(PARTIAL);
        fs::create_dir_all(&dir)?;
        let name = hash.to_string();
        let paths = PartialPaths {
            data: dir.join(format!("{name}.data")),
            outboard: dir.join(format!("{name}.obao")),
            progress: dir.join(format!("{name}.have")),
        };
        // What a cut transfer of the same blob kept: used if it is whole and of this length.
        let kept = fs::read(&paths.progress)
            .ok()
            .and_then(|b| <[u8; 16]>::try_from(b.as_slice()).ok())
            .map(|b| {
                let [l, v] = [&b[..8], &b[8..]]
                    .map(|x| u64::from_le_bytes(<[u8; 8]>::try_from(x).unwrap_or_default()));
                (l, v)
            })
            .filter(|(l, v)| *l == len && v <= l && paths.data.exists() && paths.outboard.exists())
            .map(|(_, v)| v);
        let open = |path: &PathBuf| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(kept.is_none())
                .open(path)
        };
        let data = open(&paths.data)?;
        let tree = BaoTree::new(len, BLOCK);
        let outboard_file = open(&paths.outboard)?;
        let outboard_sync = outboard_file.try_clone()?;
        let outboard = PostOrderOutboard {
            root: bao_tree::blake3::Hash::from_bytes(*hash.as_bytes()),
            tree,
            data: outboard_file,
        };
        Ok(IncomingBlob {
            hash,
            len,
            verified: kept.unwrap_or(0),
            checkpointed: kept.unwrap_or(0),
            background: None,
            data,
            outboard,
            outboard_sync,
            paths,
            _claim: claim,
        })
    }

    /// What an earlier, cut transfer of `hash` kept here: the blob's length and the bytes
    /// verified, from which the next transfer starts.
    pub fn partial_blob(&self, hash: BlobHash) -> Option<(u64, u64)> {
        let paths = self.partial_paths(hash);
        read_progress(&paths.progress).filter(|_| paths.data.exists() && paths.outboard.exists())
    }

    /// Drops what an earlier transfer of `hash` kept (unless one is under way).
    pub fn discard_partial_blob(&self, hash: BlobHash) -> Result<(), BlobError> {
        if self.receiving().contains(&hash) {
            return Err(BlobError::InFlight(hash));
        }
        let paths = self.partial_paths(hash);
        for path in [paths.progress, paths.data, paths.outboard] {
            match fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
        }
        Ok(())
    }

    fn partial_paths(&self, hash: BlobHash) -> PartialPaths {
        let dir = self.blob_dir().join(PARTIAL);
        let name = hash.to_string();
        PartialPaths {
            data: dir.join(format!("{name}.data")),
            outboard: dir.join(format!("{name}.obao")),
            progress: dir.join(format!("{name}.have")),
        }
    }

    fn receiving(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<BlobHash>> {
        self.shared
            .receiving
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The chunks from byte `from`, rounded down to a group, to the end.
fn ranges_from(from: u64) -> ChunkRanges {
    let group_chunks = BLOB_GROUP_BYTES / 1024;
    ChunkRanges::from(ChunkNum(from / BLOB_GROUP_BYTES * group_chunks)..)
}

struct PartialPaths {
    data: PathBuf,
    outboard: PathBuf,
    progress: PathBuf,
}

/// Marks a blob as being received, until dropped.
struct Claim {
    store: Store,
    hash: BlobHash,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.store.receiving().remove(&self.hash);
    }
}

/// A blob arriving from a peer, kept in `blobs/partial/` until whole. Every group of bytes
/// is checked against the blob's hash before it is written; what was verified stays across
/// a cut (and, up to the last checkpoint, a crash), so the next transfer asks only for the
/// rest ([`IncomingBlob::resume_at`]). Dropped unfinished, it keeps what it verified.
pub struct IncomingBlob {
    hash: BlobHash,
    len: u64,
    /// Bytes from the start that are verified and written.
    verified: u64,
    /// Of those, how many are durable, with the progress file saying so (or will be, once
    /// the checkpoint under way is done).
    checkpointed: u64,
    /// The checkpoint under way, if any.
    background: Option<std::thread::JoinHandle<()>>,
    data: File,
    outboard: PostOrderOutboard<File>,
    /// The outboard's file again, to fsync it while the decoder writes it.
    outboard_sync: File,
    paths: PartialPaths,
    _claim: Claim,
}

impl std::fmt::Debug for IncomingBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IncomingBlob")
            .field("hash", &self.hash)
            .field("len", &self.len)
            .field("verified", &self.verified)
            .finish_non_exhaustive()
    }
}

impl IncomingBlob {
    /// The blob's hash.
    pub fn hash(&self) -> BlobHash {
        self.hash
    }

    /// Its length.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Where the next transfer starts: the bytes already verified here.
    pub fn resume_at(&self) -> u64 {
        self.verified
    }

    /// Reads what [`Store::encode_blob`] wrote from [`IncomingBlob::resume_at`], checking
    /// each group before it is written, and reports the bytes verified so far to `progress`
    /// as they grow. Returns once the blob is all here (then call [`IncomingBlob::finish`]).
    /// Bytes that do not match the hash are [`BlobError::Unverified`]; a stream that ends
    /// early is [`BlobError::Io`]. Either way what was verified before is kept.
    pub fn take(&mut self, encoded: impl Read, progress: impl FnMut(u64)) -> Result<(), BlobError> {
        if self.len == 0 {
            // Nothing to send: the hash alone says whether the blob is empty.
            return match self.hash == BlobHash::of(&[]) {
                true => Ok(()),
                false => Err(BlobError::Unverified(self.hash)),
            };
        }
        if self.verified >= self.len {
            return Ok(());
        }
        let ranges = ranges_from(self.verified);
        let target = Verifying {
            file: &self.data,
            outboard: &self.outboard_sync,
            progress_file: &self.paths.progress,
            len: self.len,
            verified: &mut self.verified,
            checkpointed: &mut self.checkpointed,
            background: &mut self.background,
            progress,
        };
        let decoded = decode_ranges(encoded, &ranges, target, &mut self.outboard);
        match decoded {
            Ok(()) if self.verified >= self.len => Ok(()),
            // (An empty blob has one empty group, checked against the hash of nothing.)
            Ok(()) => Err(BlobError::Io(io::ErrorKind::UnexpectedEof.into())),
            Err(DecodeError::Io(e)) => Err(BlobError::Io(e)),
            Err(DecodeError::ParentNotFound(_) | DecodeError::LeafNotFound(_)) => {
                Err(BlobError::Io(io::ErrorKind::UnexpectedEof.into()))
            }
            Err(DecodeError::ParentHashMismatch(_) | DecodeError::LeafHashMismatch(_)) => {
                Err(BlobError::Unverified(self.hash))
            }
        }
    }

    /// Makes the whole blob durable under its name (with its hash tree, so it can be sent on
    /// at once) and returns its length.
    pub fn finish(mut self) -> Result<u64, BlobError> {
        if self.verified < self.len {
            return Err(BlobError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        self.wait_checkpoint();
        self.data.sync_all()?;
        self.outboard.data.sync_all()?;
        let store = self._claim.store.clone();
        let dest = store.blob_file(self.hash);
        let shard = dest.parent().map(PathBuf::from).unwrap_or_default();
        fs::create_dir_all(&shard)?;
        fs::rename(&self.paths.outboard, store.outboard_file(self.hash))?;
        fs::rename(&self.paths.data, &dest)?;
        File::open(&shard)?.sync_all()?;
        File::open(store.blob_dir())?.sync_all()?;
        let _ = fs::remove_file(&self.paths.progress);
        // Nothing left to checkpoint.
        self.checkpointed = self.len;
        Ok(self.len)
    }

    /// Waits for the checkpoint under way, if any.
    fn wait_checkpoint(&mut self) {
        if let Some(background) = self.background.take() {
            let _ = background.join();
        }
    }

    /// Makes what was verified durable and says so in the progress file.
    fn checkpoint(&mut self) -> io::Result<()> {
        checkpoint(
            &self.data,
            &self.outboard.data,
            &self.paths.progress,
            self.len,
            self.verified,
        )?;
        self.checkpointed = self.verified;
        Ok(())
    }
}

impl Drop for IncomingBlob {
    fn drop(&mut self) {
        self.wait_checkpoint();
        if self.verified > self.checkpointed && self.paths.data.exists() {
            let _ = self.checkpoint();
        }
    }
}

/// A partial blob's progress file: its length and the bytes verified.
fn read_progress(path: &PathBuf) -> Option<(u64, u64)> {
    let bytes = fs::read(path).ok()?;
    let len = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let verified = u64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?);
    Some((len, verified))
}

fn checkpoint(
    data: &File,
    outboard: &File,
    progress: &PathBuf,
    len: u64,
    verified: u64,
) -> io::Result<()> {
    data.sync_data()?;
    outboard.sync_data()?;
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&len.to_le_bytes());
    bytes[8..].copy_from_slice(&verified.to_le_bytes());
    let tmp = progress.with_extension("have-tmp");
    let mut file = File::create(&tmp)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, progress)
}

/// Where verified groups go: the partial file, with the verified prefix counted and
/// checkpointed every [`CHECKPOINT_BYTES`].
struct Verifying<'a, P> {
    file: &'a File,
    outboard: &'a File,
    progress_file: &'a PathBuf,
    len: u64,
    verified: &'a mut u64,
    checkpointed: &'a mut u64,
    background: &'a mut Option<std::thread::JoinHandle<()>>,
    progress: P,
}

impl<P: FnMut(u64)> WriteAt for Verifying<'_, P> {
    fn write_at(&mut self, pos: u64, buf: &[u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        self.file.write_all_at(buf, pos)?;
        // Groups arrive in order, each verified before it is handed here.
        let end = pos + buf.len() as u64;
        if end > *self.verified {
            *self.verified = end;
            (self.progress)(end);
        }
        // A checkpoint runs beside the transfer; the next waits until it is done.
        let idle = self.background.as_ref().is_none_or(|b| b.is_finished());
        if *self.verified - *self.checkpointed >= CHECKPOINT_BYTES && idle {
            if let Some(done) = self.background.take() {
                let _ = done.join();
            }
            let (data, outboard) = (self.file.try_clone()?, self.outboard.try_clone()?);
            let (progress, len, verified) = (self.progress_file.clone(), self.len, *self.verified);
            *self.background = Some(std::thread::spawn(move || {
                // A checkpoint that fails only costs a resume more bytes.
                let _ = checkpoint(&data, &outboard, &progress, len, verified);
            }));
            *self.checkpointed = *self.verified;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Removes partial blobs untouched for longer than `max_age`: called as the store opens.
pub(crate) fn clear_stale_partials(dir: &std::path::Path, max_age: std::time::Duration) {
    let Ok(entries) = fs::read_dir(dir.join(BLOBS).join(PARTIAL)) else {
        return;
    };
    for entry in entries.flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > max_age);
        if old {
            let _ = fs::remove_file(entry.path());
        }
    }
}
