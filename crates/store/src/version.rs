//! A document's version: Automerge heads or a CRDT state digest. It is what a change leads to,
//! what a peer acknowledges holding, and what the sync record keeps.

use automerge::ChangeHash;
use ferry_crdt::Digest;
use serde::{Deserialize, Serialize};

/// A document's version.
///
/// # Examples
///
/// ```
/// use ferry_store::{Version, heads_digest};
///
/// let empty = Version::Heads(Vec::new());
/// assert_eq!(empty.digest(), heads_digest(&[]));
/// ```
#[derive(Clone, Debug, Deserialize, Eq, Hash, PartialEq, Serialize)]
#[serde(from = "StoredVersion", into = "StoredVersion")]
pub enum Version {
    /// An Automerge document's heads, sorted.
    Heads(Vec<ChangeHash>),
    /// A CRDT document's state digest.
    Digest(Digest),
}

impl Version {
    /// The digest the sync protocol compares: blake3 of the sorted heads, or the state digest.
    pub fn digest(&self) -> Digest {
        match self {
            Version::Heads(heads) => heads_digest(heads),
            Version::Digest(digest) => *digest,
        }
    }

    /// The heads, for an Automerge document's version.
    pub fn heads(&self) -> Option<&[ChangeHash]> {
        match self {
            Version::Heads(heads) => Some(heads),
            Version::Digest(_) => None,
        }
    }
}

/// The blake3 digest of a document's sorted heads, as the sync protocol compares them.
pub fn heads_digest(heads: &[ChangeHash]) -> Digest {
    let mut sorted: Vec<&ChangeHash> = heads.iter().collect();
    sorted.sort_unstable();
    let mut hasher = blake3::Hasher::new();
    for head in sorted {
        hasher.update(&head.0);
    }
    Digest::from_bytes(*hasher.finalize().as_bytes())
}

/// A [`Version`] as records keep it: plain bytes, independent of automerge's own serde.
#[derive(Clone, Deserialize, Serialize)]
enum StoredVersion {
    Heads(Vec<[u8; 32]>),
    Digest([u8; 32]),
}

impl From<StoredVersion> for Version {
    fn from(stored: StoredVersion) -> Self {
        match stored {
            StoredVersion::Heads(heads) => {
                Version::Heads(heads.into_iter().map(ChangeHash).collect())
            }
            StoredVersion::Digest(digest) => Version::Digest(Digest::from_bytes(digest)),
        }
    }
}

impl From<Version> for StoredVersion {
    fn from(version: Version) -> Self {
        match version {
            Version::Heads(heads) => StoredVersion::Heads(heads.into_iter().map(|h| h.0).collect()),
            Version::Digest(digest) => StoredVersion::Digest(*digest.as_bytes()),
        }
    }
}
