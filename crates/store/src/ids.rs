//! Names for documents, spaces and peers.

use std::fmt;
use std::str::FromStr;

use ferry_crdt::{ParseReplicaIdError, ReplicaId};
use serde::{Deserialize, Serialize};

// Ids of 16 random bytes: documents and spaces.
macro_rules! random_id {
    ($name:ident) => {
        impl $name {
            /// A fresh random id.
            pub fn random() -> Self {
                Self(rand::random())
            }

            /// Makes an id from its bytes.
            pub const fn from_bytes(bytes: [u8; 16]) -> Self {
                Self(bytes)
            }

            /// The id's bytes.
            pub const fn as_bytes(&self) -> &[u8; 16] {
                &self.0
            }
        }
    };
}

/// A document's identity: 16 random bytes, chosen when the document is created.
///
/// Its text form is the same 26-character base32 as every other id in ferry.
///
/// # Examples
///
/// ```
/// use ferry_store::DocId;
///
/// let id = DocId::random();
/// assert_eq!(id.to_string().parse::<DocId>().unwrap(), id);
/// ```
#[derive(Clone, Copy, Deserialize, Eq, Hash, Ord, PartialEq, PartialOrd, Serialize)]
pub struct DocId([u8; 16]);

random_id!(DocId);

/// A space: a set of documents shared as one, chosen when each document is created. Access
/// is granted per peer per space, so a relay gives each user's devices their spaces without a
/// grant per document.
///
/// Every replica has the [default space](SpaceId::DEFAULT), the same id everywhere, for apps
/// that do not care; other spaces have random ids. The text form is the 26-character base32 of
/// every other id in ferry, and `default` also names the default space.
///
/// # Examples
///
/// ```
/// use ferry_store::SpaceId;
///
/// let team = SpaceId::random();
/// assert_eq!(team.to_string().parse::<SpaceId>().unwrap(), team);
/// assert_eq!("default".parse::<SpaceId>().unwrap(), SpaceId::DEFAULT);
/// ```
#[derive(Clone, Copy, Deserialize, Eq, Hash, Ord, PartialEq, PartialOrd, Serialize)]
pub struct SpaceId([u8; 16]);

random_id!(SpaceId);

impl SpaceId {
    /// The default space: where documents go when the app names none, and where the documents
    /// of a store older than spaces are.
    pub const DEFAULT: SpaceId = SpaceId([0; 16]);

    /// Whether this is the default space.
    pub fn is_default(&self) -> bool {
        *self == Self::DEFAULT
    }
}

impl Default for SpaceId {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A replica's identity on the network: derived from its public key with blake3, and the same
/// 16 bytes as the [`ReplicaId`] it writes counters, registers and Automerge changes under.
///
/// # Examples
///
/// ```
/// use ferry_store::PeerId;
///
/// let id: PeerId = "aebagbafaydqqcikbmga2dqpca".parse().unwrap();
/// assert_eq!(id.to_string(), "aebagbafaydqqcikbmga2dqpca");
/// assert!("not-a-peer".parse::<PeerId>().is_err());
/// ```
#[derive(Clone, Copy, Deserialize, Eq, Hash, Ord, PartialEq, PartialOrd, Serialize)]
pub struct PeerId([u8; 16]);

impl PeerId {
    /// The peer id of a public key: the first 16 bytes of its blake3 hash.
    pub fn from_public_key(public_key: &[u8]) -> Self {
        let hash = blake3::hash(public_key);
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&hash.as_bytes()[..16]);
        Self(bytes)
    }

    /// Makes an id from its bytes.
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// The id's bytes.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// The replica id this peer writes under.
    pub const fn replica_id(&self) -> ReplicaId {
        ReplicaId::from_bytes(self.0)
    }
}

// Both ids share ReplicaId's text form, so one parser and one alphabet serve all of ferry.
macro_rules! text_form {
    ($name:ident) => {
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&ReplicaId::from_bytes(self.0), f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self)
            }
        }

        impl FromStr for $name {
            type Err = ParseReplicaIdError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                s.parse::<ReplicaId>().map(|id| Self(*id.as_bytes()))
            }
        }
    };
}

text_form!(DocId);
text_form!(PeerId);

impl fmt::Display for SpaceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&ReplicaId::from_bytes(self.0), f)
    }
}

impl fmt::Debug for SpaceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpaceId({self})")
    }
}

impl FromStr for SpaceId {
    type Err = ParseReplicaIdError;

    /// Parses an id's text form, or `default` for [`SpaceId::DEFAULT`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "default" {
            return Ok(Self::DEFAULT);
        }
        s.parse::<ReplicaId>().map(|id| Self(*id.as_bytes()))
    }
}
