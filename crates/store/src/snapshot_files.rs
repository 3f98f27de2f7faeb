//! Large snapshots taken in from peers, kept as files beside the store rather than inside
//! sled: writing one costs no time under the store's lock, where a sled insert of a 100 MB
//! value held every other writer for half a second.
//!
//! The snapshot record (`s` doc) then holds a pointer, [`POINTER`] and the file's name, in
//! `snapshots/`. The file is written and fsynced before the pointer, so a crash leaves at most
//! a file nothing points to, removed when the store opens; a compaction or a delete that
//! replaces the pointer removes the file once its commit is durable.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::records;
use crate::{DocId, StoreError};

/// The directory, in the store's, of snapshot files.
const SNAPSHOTS: &str = "snapshots";
/// What a snapshot record that points to a file starts with (Automerge's bytes start with its
/// magic number, a CRDT state with its encoding's tag: neither is this).
const POINTER: &[u8] = b"ferry-snapshot-file:";
/// Snapshots from peers at least this large are kept as files.
pub(crate) const FILE_MIN: usize = 4 << 20;

/// Writes `bytes` as `doc`'s snapshot file, durably, and returns the record that points to it.
pub(crate) fn write(dir: &Path, doc: DocId, bytes: &[u8]) -> io::Result<Vec<u8>> {
    let files = dir.join(SNAPSHOTS);
    fs::create_dir_all(&files)?;
    let name = format!("{doc}-{:032x}", rand::random::<u128>());
    let path = files.join(&name);
    let written = (|| {
        let mut file = File::create(&path)?;
        file.write_all(bytes)?;
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

/// The file a snapshot record points to, if it points to one.
pub(crate) fn file_of(dir: &Path, record: &[u8]) -> Option<PathBuf> {
    let name = std::str::from_utf8(record.strip_prefix(POINTER)?).ok()?;
    // A name, never a path.
    if name.contains('/') || name.contains("..") || name.is_empty() {
        return None;
    }
    Some(dir.join(SNAPSHOTS).join(name))
}

/// `doc`'s snapshot bytes, from its record or the file the record points to.
pub(crate) fn read(db: &sled::Db, dir: &Path, doc: DocId) -> Result<Option<Vec<u8>>, StoreError> {
    let Some(record) = db.get(records::snapshot_key(doc))? else {
        return Ok(None);
    };
    if !record.starts_with(POINTER) {
        return Ok(Some(record.to_vec()));
    }
    let damaged = StoreError::Damaged {
        doc,
        what: "snapshot file",
    };
    let path = file_of(dir, &record).ok_or(damaged)?;
    fs::read(path).map(Some).map_err(|_| StoreError::Damaged {
        doc,
        what: "snapshot file",
    })
}

/// The file `doc`'s snapshot record points to now, if any: to remove once a commit that
/// replaces the record is durable.
pub(crate) fn current(db: &sled::Db, dir: &Path, doc: DocId) -> Option<PathBuf> {
    let record = db.get(records::snapshot_key(doc)).ok()??;
    file_of(dir, &record)
}

/// Removes snapshot files no record points to (left by a crash between a file and its
/// pointer, or before a replaced file was removed): called as the store opens.
pub(crate) fn clear_orphans(db: &sled::Db, dir: &Path) {
    let Ok(entries) = fs::read_dir(dir.join(SNAPSHOTS)) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let doc = name.split('-').next().and_then(|d| d.parse::<DocId>().ok());
        let pointed = doc.and_then(|doc| current(db, dir, doc)) == Some(entry.path());
        if !pointed {
            let _ = fs::remove_file(entry.path());
        }
    }
}
