//! The values the store hands out and takes in: document kinds and CRDT states, access,
//! peers, and what is known of a document.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use ferry_crdt::{Crdt, Digest, GCounter, LwwRegister, MvRegister, PNCounter, decode, encode};
use serde::{Deserialize, Serialize};

use crate::records::RECORD_LIMIT;
use crate::{DocId, PeerId, SpaceId, Version};

/// The kinds of document a store holds.
#[derive(Clone, Copy, Debug, Deserialize, Eq, Hash, Ord, PartialEq, PartialOrd, Serialize)]
pub enum DocKind {
    /// An Automerge document: JSON-like data and text.
    Automerge,
    /// A grow-only counter ([`GCounter`]).
    GCounter,
    /// A counter that goes up and down ([`PNCounter`]).
    PNCounter,
    /// A last-writer-wins register of bytes ([`LwwRegister`]).
    LwwRegister,
    /// A multi-value register of bytes ([`MvRegister`]).
    MvRegister,
}

impl DocKind {
    /// Every kind, in a fixed order.
    pub const ALL: [DocKind; 5] = [
        DocKind::Automerge,
        DocKind::GCounter,
        DocKind::PNCounter,
        DocKind::LwwRegister,
        DocKind::MvRegister,
    ];
}

impl DocKind {
    /// The ferry-crdt kinds: every kind but Automerge.
    pub const CRDTS: [DocKind; 4] = [
        DocKind::GCounter,
        DocKind::PNCounter,
        DocKind::LwwRegister,
        DocKind::MvRegister,
    ];

    /// This kind alone, as a list.
    pub fn alone(self) -> &'static [DocKind] {
        match self {
            DocKind::Automerge => &[DocKind::Automerge],
            DocKind::GCounter => &[DocKind::GCounter],
            DocKind::PNCounter => &[DocKind::PNCounter],
            DocKind::LwwRegister => &[DocKind::LwwRegister],
            DocKind::MvRegister => &[DocKind::MvRegister],
        }
    }

    /// The kind's name, as people and the command line write it: `automerge`, `gcounter`,
    /// `pncounter`, `lww` or `mv`.
    pub fn name(self) -> &'static str {
        match self {
            DocKind::Automerge => "automerge",
            DocKind::GCounter => "gcounter",
            DocKind::PNCounter => "pncounter",
            DocKind::LwwRegister => "lww",
            DocKind::MvRegister => "mv",
        }
    }

    /// Kinds as people read them: "gcounter or pncounter".
    pub fn list(kinds: &[DocKind]) -> String {
        let names: Vec<String> = kinds.iter().map(DocKind::to_string).collect();
        names.join(" or ")
    }
}

impl fmt::Display for DocKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is no [`DocKind`]'s or [`Access`]'s.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
#[error("unknown {what} {given:?} (one of: {known})")]
pub struct UnknownName {
    what: &'static str,
    given: String,
    known: String,
}

impl std::str::FromStr for DocKind {
    type Err = UnknownName;

    /// Parses a kind's [name](DocKind::name).
    ///
    /// ```
    /// use ferry_store::DocKind;
    ///
    /// assert_eq!("lww".parse::<DocKind>(), Ok(DocKind::LwwRegister));
    /// assert!("list".parse::<DocKind>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DocKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| UnknownName {
                what: "document kind",
                given: s.to_owned(),
                known: DocKind::ALL.map(DocKind::name).join(", "),
            })
    }
}

/// The state of a document of one of the ferry-crdt kinds. Register values are bytes; the
/// app chooses their encoding.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum CrdtState {
    /// A grow-only counter.
    GCounter(GCounter),
    /// An up/down counter.
    PNCounter(PNCounter),
    /// A last-writer-wins register.
    LwwRegister(LwwRegister<Vec<u8>>),
    /// A multi-value register.
    MvRegister(MvRegister<Vec<u8>>),
}

impl CrdtState {
    pub(crate) fn empty(kind: DocKind) -> Option<Self> {
        Some(match kind {
            DocKind::Automerge => return None,
            DocKind::GCounter => CrdtState::GCounter(GCounter::new()),
            DocKind::PNCounter => CrdtState::PNCounter(PNCounter::new()),
            DocKind::LwwRegister => CrdtState::LwwRegister(LwwRegister::new()),
            DocKind::MvRegister => CrdtState::MvRegister(MvRegister::new()),
        })
    }

    pub(crate) fn decode(kind: DocKind, bytes: &[u8]) -> Result<Self, ferry_crdt::DecodeError> {
        Ok(match kind {
            DocKind::GCounter => CrdtState::GCounter(decode(bytes, RECORD_LIMIT)?),
            DocKind::PNCounter => CrdtState::PNCounter(decode(bytes, RECORD_LIMIT)?),
            DocKind::LwwRegister => CrdtState::LwwRegister(decode(bytes, RECORD_LIMIT)?),
            DocKind::MvRegister | DocKind::Automerge => {
                CrdtState::MvRegister(decode(bytes, RECORD_LIMIT)?)
            }
        })
    }

    /// The kind of document this state belongs to.
    pub fn kind(&self) -> DocKind {
        match self {
            CrdtState::GCounter(_) => DocKind::GCounter,
            CrdtState::PNCounter(_) => DocKind::PNCounter,
            CrdtState::LwwRegister(_) => DocKind::LwwRegister,
            CrdtState::MvRegister(_) => DocKind::MvRegister,
        }
    }

    /// The canonical encoding, the form in which peers exchange it.
    pub fn encode(&self) -> Vec<u8> {
        let encoded = match self {
            CrdtState::GCounter(s) => encode(s),
            CrdtState::PNCounter(s) => encode(s),
            CrdtState::LwwRegister(s) => encode(s),
            CrdtState::MvRegister(s) => encode(s),
        };
        encoded.expect("a CRDT state of byte values always encodes")
    }

    /// What a peer holding `before` needs to reach this state, for the counters: the entries
    /// that differ (merging it into `before` gives this state). `None` for the registers,
    /// whose state is as small as any delta of it.
    pub(crate) fn delta_from(&self, before: &CrdtState) -> Option<CrdtState> {
        fn diff(after: &GCounter, before: &GCounter) -> GCounter {
            let mut delta = GCounter::new();
            for (replica, count) in after.counts() {
                if before.count(replica) != count {
                    // From zero, an increment to `count` cannot overflow.
                    let _ = delta.increment(replica, count);
                }
            }
            delta
        }
        match (self, before) {
            (CrdtState::GCounter(after), CrdtState::GCounter(before)) => {
                Some(CrdtState::GCounter(diff(after, before)))
            }
            (CrdtState::PNCounter(after), CrdtState::PNCounter(before)) => {
                let mut delta = PNCounter::new();
                let up = diff(after.increments(), before.increments());
                let down = diff(after.decrements(), before.decrements());
                for (replica, count) in up.counts() {
                    let _ = delta.increment(replica, count);
                }
                for (replica, count) in down.counts() {
                    let _ = delta.decrement(replica, count);
                }
                Some(CrdtState::PNCounter(delta))
            }
            _ => None,
        }
    }

    /// Merges `other` (of the same kind) in; returns whether anything changed.
    pub(crate) fn merge_owned(&mut self, other: CrdtState) -> bool {
        match (self, other) {
            (CrdtState::GCounter(a), CrdtState::GCounter(b)) => a.merge_owned(b),
            (CrdtState::PNCounter(a), CrdtState::PNCounter(b)) => a.merge_owned(b),
            (CrdtState::LwwRegister(a), CrdtState::LwwRegister(b)) => a.merge_owned(b),
            (CrdtState::MvRegister(a), CrdtState::MvRegister(b)) => a.merge_owned(b),
            _ => false,
        }
    }
}

/// What a peer may do with a document.
#[derive(
    Clone, Copy, Debug, Default, Deserialize, Eq, Hash, Ord, PartialEq, PartialOrd, Serialize,
)]
pub enum Access {
    /// Nothing: the peer never learns the document exists.
    #[default]
    None,
    /// The peer may receive the document but its changes are refused.
    Read,
    /// The peer may receive the document and send changes to it.
    ReadWrite,
}

impl Access {
    /// Every level, from none up.
    pub const ALL: [Access; 3] = [Access::None, Access::Read, Access::ReadWrite];

    /// The level's name, as people and the command line write it: `none`, `read` or `write`.
    pub fn name(self) -> &'static str {
        match self {
            Access::None => "none",
            Access::Read => "read",
            Access::ReadWrite => "write",
        }
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Access {
    type Err = UnknownName;

    /// Parses a level's [name](Access::name).
    ///
    /// ```
    /// use ferry_store::Access;
    ///
    /// assert_eq!("write".parse::<Access>(), Ok(Access::ReadWrite));
    /// ```
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Access::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| UnknownName {
                what: "access",
                given: s.to_owned(),
                known: Access::ALL.map(Access::name).join(", "),
            })
    }
}

/// A peer this replica knows: where to reach it, and its per-document overrides of the
/// access its space grants give it (see [`Store::grant`](crate::Store::grant)).
///
/// # Examples
///
/// ```
/// use ferry_store::{Access, DocId, PeerId, PeerInfo};
///
/// let mut laptop = PeerInfo::new(PeerId::from_bytes([7; 16]), "laptop");
/// laptop.addresses.push("127.0.0.1:4433".parse().unwrap());
/// let shared = DocId::random();
/// laptop.docs.insert(shared, Access::ReadWrite);
/// assert_eq!(laptop.doc_override(shared), Some(Access::ReadWrite));
/// assert_eq!(laptop.doc_override(DocId::random()), None); // its space's grant decides
/// ```
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub struct PeerInfo {
    /// Its peer id, pinned in the TLS handshake.
    pub id: PeerId,
    /// A name for people.
    pub name: String,
    /// Where to dial it.
    pub addresses: Vec<SocketAddr>,
    /// Its access per document, overriding what its grant on the document's space gives it
    /// (up or down).
    pub docs: BTreeMap<DocId, Access>,
}

impl PeerInfo {
    /// A peer with no addresses and no overrides.
    pub fn new(id: PeerId, name: impl Into<String>) -> Self {
        Self {
            id,
            name: name.into(),
            addresses: Vec::new(),
            docs: BTreeMap::new(),
        }
    }

    /// The peer's access to `doc` if set for that document alone.
    pub fn doc_override(&self, doc: DocId) -> Option<Access> {
        self.docs.get(&doc).copied()
    }
}

/// A space this replica knows: one it created or named, one it granted a peer access to, or
/// one that holds documents here.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct SpaceInfo {
    /// The space.
    pub id: SpaceId,
    /// Its name for people, if this replica created or named it.
    pub name: Option<String>,
    /// Documents held here in it (deleted and forgotten ones not counted).
    pub docs: u64,
    /// The peers granted access to it, in id order.
    pub grants: Vec<(PeerId, Access)>,
}

/// What the store knows of a document without loading it.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct DocInfo {
    /// The document.
    pub id: DocId,
    /// Its kind.
    pub kind: DocKind,
    /// The space it belongs to, chosen when it was created.
    pub space: SpaceId,
    /// Its version: heads, or a state digest.
    pub version: Version,
    /// Its digest, as the sync protocol compares it: blake3 of the sorted heads, or of the
    /// canonical state.
    pub digest: Digest,
    /// Automerge changes it holds, or CRDT operations and merges that changed it.
    pub changes: u64,
    /// Bytes stored for it: snapshot plus incremental records.
    pub stored_bytes: u64,
}

/// How far a peer is behind on one document; see [`Store::sync_status`](crate::Store::sync_status).
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub struct DocSyncStatus {
    /// Changes held here that the peer has not acknowledged: Automerge changes outside the
    /// history of the heads it acknowledged; for the ferry-crdt kinds, operations and merges
    /// since it acknowledged the state (at least 1 whenever its state differs). 0 when the peer
    /// holds everything this replica has of the document.
    pub pending: u64,
    /// When the peer was last seen to hold all of the document, in milliseconds since the Unix
    /// epoch; `None` if never.
    pub last_sync_millis: Option<u64>,
}
