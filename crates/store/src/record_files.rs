//! Large record contents kept as files beside the store rather than inside sled.
//!
//! sled keeps values inside its tree's leaves, up to 16 entries to a leaf, and rewrites a
//! whole leaf every few changes to it. A leaf holding a 100 MB snapshot was so written again,
//! whole, by a small insert that happened to land in it (a sync record, another document's
//! change): that insert took a quarter of a second, the flush after it as long, and every
//! other writer waited. So no large value goes into sled:
//!
//! - a document's snapshot (`s` doc) of at least [`FILE_MIN`] bytes, compacted here or taken
//!   in from a peer;
//! - the changes of one commit (the `changes` of an `i` record) of at least [`FILE_MIN`] bytes,
//!   such as a photo put into a document as bytes.
//!
//! Either is then a pointer: [`POINTER`] and the name of a file in `records/` (the document's
//! id, a dash and 32 random hex digits). Automerge's bytes start with its magic number and a
//! CRDT state or delta with its encoding's tag, so neither is ever taken for a pointer.
//!
//! A file is written and fsynced, with its directory, before the record that points to it, so
//! a crash leaves at most a file nothing points to; such files are removed when the store
//! opens. A compaction or a delete that replaces a document's records removes their files once
//! its commit is durable.

use std::borrow::Cow;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::loading::decode_incremental;
use crate::records;
use crate::{DocId, StoreError};

/// The directory, in the store's, of record files.
const RECORDS: &str = "records";
/// What a record's content that lives in a file starts with.
const POINTER: &[u8] = b"ferry-record-file:";
/// Contents at least this large are kept as files. Below it, a leaf of sled's (16 entries)
/// costs at most a few MiB to rewrite.
pub(crate) const FILE_MIN: usize = 256 << 10;
/// How much of a file is written between two fsyncs: one fsync of a whole 100 MB file would
/// hold up every other fsync on the file system (the store's own commits) until all of it is
/// on disk.
const SYNC_EVERY: usize = 4 << 20;

/// Writes `bytes` as a file of `doc`'s, durably, and returns the pointer to it.
pub(crate) fn write(dir: &Path, doc: DocId, bytes: &[u8]) -> io::Result<Vec<u8>> {
    let files = dir.join(RECORDS);
    fs::create_dir_all(&files)?;
    let name = format!("{doc}-{:032x}", rand::random::<u128>());
    let path = files.join(&name);
    let written = (|| {
        let mut file = File::create(&path)?;
        for piece in bytes.chunks(SYNC_EVERY) {
            file.write_all(piece)?;
            file.sync_data()?;
        }
        file.sync_all()?;
        File::open(&files)?.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&path);
        return Err(e);
    }
    let mut pointer = POINTER.to_vec();
    pointer.extend_from_slice(name.as_bytes());
    Ok(pointer)
}

/// `bytes` as a record holds them: themselves when small, else a pointer to the file they
/// are written to (durably, before this returns).
pub(crate) fn kept(dir: &Path, doc: DocId, bytes: Vec<u8>) -> Result<Vec<u8>, StoreError> {
    if bytes.len() < FILE_MIN {
        return Ok(bytes);
    }
    write(dir, doc, &bytes).map_err(|e| StoreError::Storage(sled::Error::Io(e)))
}

/// The file a record's content points to, if it points to one.
pub(crate) fn file_of(dir: &Path, content: &[u8]) -> Option<PathBuf> {
    let name = std::str::from_utf8(content.strip_prefix(POINTER)?).ok()?;
    // A name, never a path.
    if name.contains('/') || name.contains("..") || name.is_empty() {
        return None;
    }
    Some(dir.join(RECORDS).join(name))
}

/// A record's content, read from its file if it points to one. A pointer to a file that is
/// not there, or cannot be read, is damage to `doc`, named `what`.
pub(crate) fn resolve<'a>(
    dir: &Path,
    doc: DocId,
    content: &'a [u8],
    what: &'static str,
) -> Result<Cow<'a, [u8]>, StoreError> {
    if !content.starts_with(POINTER) {
        return Ok(Cow::Borrowed(content));
    }
    let damaged = StoreError::Damaged { doc, what };
    let path = file_of(dir, content).ok_or(damaged)?;
    fs::read(path)
        .map(Cow::Owned)
        .map_err(|_| StoreError::Damaged { doc, what })
}

/// A record's content as found under the store's lock, to read once the lock is let go: the
/// bytes themselves, or its file, opened (a compaction may remove the file afterwards; what is
/// open stays readable).
pub(crate) enum Found {
    /// The content itself.
    Inline(Vec<u8>),
    /// The file that holds it.
    File(File),
}

impl Found {
    /// Finds `content`'s bytes or opens its file; see [`resolve`] for `what`.
    pub(crate) fn of(
        dir: &Path,
        doc: DocId,
        content: &[u8],
        what: &'static str,
    ) -> Result<Self, StoreError> {
        if !content.starts_with(POINTER) {
            return Ok(Self::Inline(content.to_vec()));
        }
        file_of(dir, content)
            .and_then(|path| File::open(path).ok())
            .map(Self::File)
            .ok_or(StoreError::Damaged { doc, what })
    }

    /// Appends the content to `out`.
    pub(crate) fn read_into(
        self,
        out: &mut Vec<u8>,
        doc: DocId,
        what: &'static str,
    ) -> Result<(), StoreError> {
        match self {
            Self::Inline(bytes) => out.extend_from_slice(&bytes),
            Self::File(mut file) => {
                file.read_to_end(out)
                    .map_err(|_| StoreError::Damaged { doc, what })?;
            }
        }
        Ok(())
    }
}

/// `doc`'s snapshot bytes, from its record or the file the record points to.
pub(crate) fn read(db: &sled::Db, dir: &Path, doc: DocId) -> Result<Option<Vec<u8>>, StoreError> {
    let Some(record) = db.get(records::snapshot_key(doc))? else {
        return Ok(None);
    };
    resolve(dir, doc, &record, "snapshot file").map(|bytes| Some(bytes.into_owned()))
}

/// The files `doc`'s records point to now: to remove once a commit that replaces those
/// records (a compaction, a delete) is durable.
pub(crate) fn current(db: &sled::Db, dir: &Path, doc: DocId) -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Ok(Some(record)) = db.get(records::snapshot_key(doc))
        && let Some(file) = file_of(dir, &record)
    {
        files.push(file);
    }
    for value in db
        .scan_prefix(records::incremental_prefix(doc))
        .values()
        .flatten()
    {
        if let Ok(record) = decode_incremental(doc, &value)
            && let Some(file) = file_of(dir, &record.changes)
        {
            files.push(file);
        }
    }
    files
}

/// Removes `files`, replaced by a commit that is now durable.
pub(crate) fn remove(files: Vec<PathBuf>) {
    for file in files {
        let _ = fs::remove_file(file);
    }
}

/// Removes record files no record points to (left by a crash between a file and its pointer,
/// or before a replaced file was removed): called as the store opens.
pub(crate) fn clear_orphans(db: &sled::Db, dir: &Path) {
    let Ok(entries) = fs::read_dir(dir.join(RECORDS)) else {
        return;
    };
    let mut pointed: std::collections::HashMap<DocId, Vec<PathBuf>> = Default::default();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let doc = name
            .to_str()
            .and_then(|name| name.split('-').next())
            .and_then(|d| d.parse::<DocId>().ok());
        let kept = doc.is_some_and(|doc| {
            pointed
                .entry(doc)
                .or_insert_with(|| current(db, dir, doc))
                .contains(&entry.path())
        });
        if !kept {
            let _ = fs::remove_file(entry.path());
        }
    }
}
