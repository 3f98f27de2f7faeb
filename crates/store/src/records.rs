//! The store's on-disk layout: one sled tree, records under prefixed keys, each record encoded
//! with ferry's canonical bincode encoding.
//!
//! | key | value |
//! |---|---|
//! | `f` | format version, `u32` little endian |
//! | `d` doc | [`DocMeta`] as of the document's creation, last compaction or CRDT update |
//! | `s` doc | snapshot: `Automerge::save()`, or the encoded CRDT state; or, for a snapshot of 256 KiB or more, `ferry-record-file:` and the name of the file in `records/` that holds it |
//! | `i` doc seq(u64 BE) | [`Incremental`]: one commit's Automerge changes, or one CRDT update's delta (its canonical encoding), and the metadata after it; changes of 256 KiB or more are a pointer to a file, as for `s` |
//!
//! A commit to a document writes one record, its incremental, which carries the document's
//! new metadata: one sled insert, never a batch. For an Automerge document it holds the
//! commit's changes; for a CRDT document, the update's delta (a register's whole state), and
//! the state is the snapshot joined with every delta. The document's current metadata is its
//! last incremental's, or `d` if it has none. Compaction replaces the snapshot, removes the
//! incrementals and rewrites `d`, in one batch.
//! Creating a document writes `k`, `n`, `s` and then `d`, as plain inserts in that order: `d`
//! makes the document exist, and sled recovers a prefix of its log, so a crash leaves the
//! document whole or absent (sled makes each batch two synchronous log writes, too slow for
//! a clone of thousands of documents).
//! | `y` peer doc | [`SyncRecord`] |
//! | `p` peer | [`PeerInfo`](crate::PeerInfo) |
//! | `r` peer | when a sync session with the peer last finished reconciling: `u64` millis, little endian |
//! | `x` doc | [`Gone`]: the document was deleted (a tombstone, synced) or forgotten here |
//! | `k` doc | the document's space: a [`SpaceId`]'s 16 bytes, written when it is created, kept when it goes |
//! | `n` space doc | empty: the index of a space's documents (live, deleted or forgotten) |
//! | `a` peer space | the peer's [`Access`] to the space, encoded |
//! | `c` space | [`SpaceRecord`]: a space this replica created or named |
//! | `h` hash doc | empty: the document refers to the blob (see `blob_refs`) |
//! | `j` doc hash | empty: the same, by document |
//! | `e` space | the space's blob fetch policy when not eager: `[1]`, on demand |

use serde::{Deserialize, Serialize};

use crate::{Access, DocId, DocKind, PeerId, SpaceId, Version};

/// The format this build writes; bump it with any change to the layout or a record.
pub(crate) const FORMAT: u32 = 7;

/// Records are small; anything larger than this in a record slot is damage.
pub(crate) const RECORD_LIMIT: usize = 16 << 20;

pub(crate) const FORMAT_KEY: &[u8] = b"f";

pub(crate) fn meta_key(doc: DocId) -> [u8; 17] {
    prefixed(b'd', doc.as_bytes())
}

pub(crate) fn snapshot_key(doc: DocId) -> [u8; 17] {
    prefixed(b's', doc.as_bytes())
}

pub(crate) fn incremental_prefix(doc: DocId) -> [u8; 17] {
    prefixed(b'i', doc.as_bytes())
}

pub(crate) fn incremental_key(doc: DocId, seq: u64) -> [u8; 25] {
    let mut key = [0u8; 25];
    key[..17].copy_from_slice(&incremental_prefix(doc));
    key[17..].copy_from_slice(&seq.to_be_bytes());
    key
}

pub(crate) fn sync_key(peer: PeerId, doc: DocId) -> [u8; 33] {
    pair(b'y', peer.as_bytes(), doc.as_bytes())
}

pub(crate) const SYNC_PREFIX: &[u8] = b"y";

pub(crate) fn peer_key(peer: PeerId) -> [u8; 17] {
    prefixed(b'p', peer.as_bytes())
}

pub(crate) const PEER_PREFIX: &[u8] = b"p";

pub(crate) fn reconciled_key(peer: PeerId) -> [u8; 17] {
    prefixed(b'r', peer.as_bytes())
}
pub(crate) const META_PREFIX: &[u8] = b"d";

pub(crate) fn gone_key(doc: DocId) -> [u8; 17] {
    prefixed(b'x', doc.as_bytes())
}

pub(crate) const GONE_PREFIX: &[u8] = b"x";

pub(crate) fn space_of_key(doc: DocId) -> [u8; 17] {
    prefixed(b'k', doc.as_bytes())
}

pub(crate) fn space_doc_key(space: SpaceId, doc: DocId) -> [u8; 33] {
    pair(b'n', space.as_bytes(), doc.as_bytes())
}

pub(crate) fn space_docs_prefix(space: SpaceId) -> [u8; 17] {
    prefixed(b'n', space.as_bytes())
}

pub(crate) fn grant_key(peer: PeerId, space: SpaceId) -> [u8; 33] {
    pair(b'a', peer.as_bytes(), space.as_bytes())
}

pub(crate) fn grant_prefix(peer: PeerId) -> [u8; 17] {
    prefixed(b'a', peer.as_bytes())
}

pub(crate) const GRANT_PREFIX: &[u8] = b"a";

pub(crate) fn space_key(space: SpaceId) -> [u8; 17] {
    prefixed(b'c', space.as_bytes())
}

pub(crate) const SPACE_PREFIX: &[u8] = b"c";

/// The id in the 16 bytes after a key's `skip` bytes.
pub(crate) fn id_at(key: &[u8], skip: usize) -> Option<[u8; 16]> {
    key.get(skip..skip + 16)
        .and_then(|id| <[u8; 16]>::try_from(id).ok())
}

fn pair(tag: u8, a: &[u8; 16], b: &[u8; 16]) -> [u8; 33] {
    let mut key = [0u8; 33];
    key[0] = tag;
    key[1..17].copy_from_slice(a);
    key[17..].copy_from_slice(b);
    key
}

fn prefixed(tag: u8, id: &[u8; 16]) -> [u8; 17] {
    let mut key = [0u8; 17];
    key[0] = tag;
    key[1..].copy_from_slice(id);
    key
}

/// What the store knows of a document without loading it.
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub(crate) struct DocMeta {
    pub(crate) kind: DocKind,
    /// Automerge heads, sorted; empty for the CRDT kinds.
    pub(crate) heads: Vec<[u8; 32]>,
    /// blake3 of the sorted heads, or of the canonical CRDT state.
    pub(crate) digest: [u8; 32],
    /// Automerge changes, or CRDT operations and merges that changed the state.
    pub(crate) changes: u64,
    pub(crate) snapshot_bytes: u64,
    pub(crate) incremental_bytes: u64,
    /// The sequence number the next incremental record gets.
    pub(crate) next_incremental: u64,
}

/// One Automerge commit: its changes, and the document's metadata once they are applied.
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub(crate) struct Incremental {
    pub(crate) meta: DocMeta,
    /// The raw bytes of the commit's changes, concatenated.
    #[serde(with = "serde_bytes")]
    pub(crate) changes: Vec<u8>,
}

/// Per (peer, document): how far sync with that peer has come.
///
/// # Examples
///
/// ```
/// use ferry_store::SyncRecord;
///
/// let record = SyncRecord::default();
/// assert!(record.automerge_state.is_empty() && record.last_sync_millis.is_none());
/// ```
#[derive(Clone, Debug, Default, Deserialize, Eq, PartialEq, Serialize)]
pub struct SyncRecord {
    /// Automerge's `sync::State::encode()` for this peer, empty before the first sync.
    #[serde(with = "serde_bytes")]
    pub automerge_state: Vec<u8>,
    /// The version the peer last said it holds, if it ever did.
    pub acked: Option<Version>,
    /// How many of this replica's changes to the document `acked` covers: for Automerge, the
    /// changes in the history of the acknowledged heads (those held here); for the ferry-crdt
    /// kinds, the document's change count when the peer acknowledged its state.
    pub acked_changes: u64,
    /// When the peer was last seen to hold this replica's whole document, in milliseconds
    /// since the Unix epoch.
    pub last_sync_millis: Option<u64>,
}

/// A document that is no longer here, and why; kept so that sync never brings it back.
///
/// # Examples
///
/// ```
/// use ferry_store::{DocKind, Gone, GoneHow};
///
/// let gone = Gone { kind: DocKind::Automerge, how: GoneHow::Deleted, at_millis: 5 };
/// assert!(gone.is_deleted());
/// ```
#[derive(Clone, Copy, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub struct Gone {
    /// The kind the document was.
    pub kind: DocKind,
    /// Deleted everywhere, or forgotten here only.
    pub how: GoneHow,
    /// When, in milliseconds since the Unix epoch.
    pub at_millis: u64,
}

impl Gone {
    /// Whether the document was deleted (a tombstone that syncs), not only forgotten here.
    pub fn is_deleted(&self) -> bool {
        self.how == GoneHow::Deleted
    }
}

/// How a document went.
#[derive(Clone, Copy, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub enum GoneHow {
    /// Deleted: a tombstone that peers keep too. A delete wins over concurrent edits.
    Deleted,
    /// Forgotten on this replica only: peers keep their copies, and this replica does not
    /// fetch it again.
    Forgotten,
}

/// A space this replica created or named, as the `c` record keeps it.
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub(crate) struct SpaceRecord {
    pub(crate) name: String,
    pub(crate) created_millis: u64,
}

/// A grant as the `a` record keeps it.
#[derive(Clone, Copy, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub(crate) struct GrantRecord {
    pub(crate) access: Access,
}
