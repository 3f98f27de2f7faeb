//! Parsing Automerge chunks from a peer before anything of them is stored.

use std::collections::HashSet;

use automerge::{Automerge, Change, ChangeHash, LoadOptions, OnPartialLoad};

use ferry_store::Limits;

use super::SessionError;

/// Automerge's chunk types (the byte after 4 magic and 4 checksum bytes).
const DOCUMENT_CHUNK: u8 = 0;
const CHANGE_CHUNK: u8 = 1;
const COMPRESSED_CHANGE_CHUNK: u8 = 2;
/// Bytes before a chunk's data length: magic, checksum and type.
const CHUNK_HEADER: usize = 9;

/// Runs automerge on bytes from a peer; a panic in it (on input it did not expect) is an
/// answer like any refusal, not the end of the process.
pub(super) fn guarded<T>(parse: impl FnOnce() -> Option<T>) -> Option<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(parse))
        .ok()
        .flatten()
}

/// Changes in a sync message must parse whole: automerge's own loading would quietly keep a
/// good prefix of damaged bytes. An entry is a run of chunks (version 2 messages put every
/// change in one entry). Change chunks are parsed one by one, so dependencies outside the
/// message are fine (and loading them into an empty document would log an error for each); a
/// document chunk must load whole. Compressed chunks and document chunks must stay within the
/// store's `limits` once inflated and loaded (checked before either is).
pub(super) fn validate_changes(mut bytes: &[u8], limits: Limits) -> Result<(), SessionError> {
    let bad = || SessionError::Protocol("changes that do not parse");
    if let Err(e) = ferry_store::within_limits(bytes, limits) {
        return Err(match e {
            ferry_store::Exceeds::Malformed => bad(),
            _ => SessionError::Protocol("changes that inflate past this replica's limits"),
        });
    }
    while !bytes.is_empty() {
        // A chunk: magic (4), checksum (4), type (1), data length (uLEB128), data.
        let mut rest = bytes.get(CHUNK_HEADER..).ok_or_else(bad)?;
        let data = leb128::read::unsigned(&mut rest).map_err(|_| bad())?;
        let header = bytes.len() - rest.len();
        let end = usize::try_from(data)
            .ok()
            .and_then(|data| header.checked_add(data))
            .filter(|end| *end <= bytes.len())
            .ok_or_else(bad)?;
        let (chunk, next) = bytes.split_at(end);
        match chunk[CHUNK_HEADER - 1] {
            CHANGE_CHUNK | COMPRESSED_CHANGE_CHUNK => {
                guarded(|| Change::try_from(chunk).ok()).ok_or_else(bad)?;
            }
            DOCUMENT_CHUNK => {
                guarded(|| {
                    Automerge::load_with_options(
                        chunk,
                        LoadOptions::new().on_partial_load(OnPartialLoad::Error),
                    )
                    .ok()
                })
                .ok_or_else(bad)?;
            }
            _ => return Err(bad()),
        }
        bytes = next;
    }
    Ok(())
}

/// Parses the changes of a `Changes` message: each must be one whole, uncompressed change
/// chunk (a compressed one could inflate far beyond the frame that carried it).
pub(super) fn parse_changes(raw: &[Vec<u8>]) -> Result<Vec<Change>, SessionError> {
    raw.iter()
        .map(|bytes| {
            if bytes.get(8) != Some(&CHANGE_CHUNK) {
                return Err(SessionError::Protocol(
                    "a change that is not a change chunk",
                ));
            }
            guarded(|| Change::try_from(bytes.as_slice()).ok())
                .ok_or(SessionError::Protocol("a change that does not parse"))
        })
        .collect()
}

/// The changes no other change among them depends on, sorted: the heads they imply.
pub(super) fn frontier(changes: &[Change]) -> Vec<ChangeHash> {
    let deps: HashSet<ChangeHash> = changes
        .iter()
        .flat_map(|c| c.deps().iter().copied())
        .collect();
    let mut heads: Vec<ChangeHash> = changes
        .iter()
        .map(Change::hash)
        .filter(|h| !deps.contains(h))
        .collect();
    heads.sort_unstable();
    heads.dedup();
    heads
}
