//! The identity of one replica.

use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;

use data_encoding::{Encoding, Specification};
use serde::{Deserialize, Serialize};

/// Lowercase RFC 4648 base32 without padding, accepting uppercase on input: short, case-proof,
/// and free of characters that break a double-click selection or a shell.
static TEXT: LazyLock<Encoding> = LazyLock::new(|| {
    let mut spec = Specification::new();
    spec.symbols.push_str("abcdefghijklmnopqrstuvwxyz234567");
    spec.translate.from.push_str("ABCDEFGHIJKLMNOPQRSTUVWXYZ");
    spec.translate.to.push_str("abcdefghijklmnopqrstuvwxyz");
    match spec.encoding() {
        Ok(encoding) => encoding,
        // The specification above is a constant; data-encoding's own tests cover this alphabet.
        Err(_) => data_encoding::BASE32_NOPAD,
    }
});

/// The identity of one replica: 16 bytes.
///
/// Every counter slot, register timestamp and multi-value dot is keyed by it, so two replicas
/// must never share one. A store derives it from its public key; tests and simulations can make
/// one from bytes or at random.
///
/// Its text form is 26 characters of lowercase base32, and parses back to the same id.
///
/// # Examples
///
/// ```
/// use ferry_crdt::ReplicaId;
///
/// let id = ReplicaId::from_bytes([7; 16]);
/// let text = id.to_string();
/// assert_eq!(text.len(), 26);
/// assert_eq!(text.parse::<ReplicaId>().unwrap(), id);
/// assert_ne!(ReplicaId::random(), ReplicaId::random());
/// ```
#[derive(Clone, Copy, Deserialize, Eq, Hash, Ord, PartialEq, PartialOrd, Serialize)]
pub struct ReplicaId([u8; 16]);

impl ReplicaId {
    /// The number of bytes in an id.
    pub const LEN: usize = 16;

    /// Makes an id from its bytes.
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// Makes a fresh random id from the operating system's generator.
    pub fn random() -> Self {
        Self(rand::random())
    }

    /// The id's bytes.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&TEXT.encode(&self.0))
    }
}

impl fmt::Debug for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReplicaId({self})")
    }
}

impl FromStr for ReplicaId {
    type Err = ParseReplicaIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = TEXT
            .decode(s.trim().as_bytes())
            .map_err(|_| ParseReplicaIdError::NotBase32)?;
        let bytes: [u8; 16] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| ParseReplicaIdError::WrongLength { len: b.len() })?;
        Ok(Self(bytes))
    }
}

/// Why a string is not a [`ReplicaId`].
///
/// # Examples
///
/// ```
/// use ferry_crdt::{ParseReplicaIdError, ReplicaId};
///
/// assert_eq!("not an id!".parse::<ReplicaId>(), Err(ParseReplicaIdError::NotBase32));
/// assert_eq!("aaaa".parse::<ReplicaId>(), Err(ParseReplicaIdError::WrongLength { len: 2 }));
/// ```
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
pub enum ParseReplicaIdError {
    /// The string has characters outside lowercase base32, or a length no base32 text has.
    #[error("replica id is not base32 text")]
    NotBase32,
    /// The string decodes, but not to 16 bytes.
    #[error("replica id decodes to {len} bytes, expected 16")]
    WrongLength {
        /// How many bytes it decoded to.
        len: usize,
    },
}
