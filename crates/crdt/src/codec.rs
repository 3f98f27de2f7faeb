//! The canonical binary encoding of every CRDT state, bounded decoding, and digests.

use std::fmt;

use bincode::de::read::{Reader, SliceReader};
use bincode::de::{Decode, Decoder, DecoderImpl};
use bincode::serde::Compat;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize as SerializeDerive};

/// The bincode configuration every ferry encoding uses: little endian, variable-length integers.
///
/// Its limit is the largest there is; [`decode`] spends all of it but the caller's limit before
/// it starts, which gives a limit chosen at run time (bincode's is a type parameter).
fn config() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<{ usize::MAX }>,
> {
    bincode::config::standard().with_limit::<{ usize::MAX }>()
}

/// Encodes `value` in ferry's canonical binary form (bincode 2, standard configuration).
///
/// Equal states of the types in this crate always encode to equal bytes, because their
/// collections are ordered maps and their invariants leave one representation per state.
///
/// # Examples
///
/// ```
/// use ferry_crdt::{GCounter, ReplicaId, decode, encode};
///
/// let mut counter = GCounter::new();
/// counter.increment(ReplicaId::from_bytes([1; 16]), 3).unwrap();
/// let bytes = encode(&counter).unwrap();
/// let back: GCounter = decode(&bytes, 1024).unwrap();
/// assert_eq!(back, counter);
/// ```
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, EncodeError> {
    bincode::serde::encode_to_vec(value, config()).map_err(EncodeError)
}

/// Decodes a value from untrusted bytes under a size limit.
///
/// `limit` bounds both the input's length and the decoded data: bincode counts every integer
/// at its in-memory width and every string or byte string at its length before reading it, and
/// stops with [`DecodeError::LimitExceeded`] once the count passes `limit`. So a forged length
/// prefix cannot make it allocate memory, and a varint-packed input may need a limit several
/// times its length (a `u64` of one encoded byte counts eight).
///
/// Memory: for the types in this crate with string values, the heap used while decoding stays
/// under twice `limit` (the decoded data plus ordered-map nodes; `tests/decode_memory.rs`
/// measures it). A value type that holds a sequence (`Vec<T>`) can also make serde reserve up
/// to 1 MiB ahead of the elements it reads.
///
/// The whole input must be one value: trailing bytes are an error. Nothing here panics,
/// whatever the bytes.
///
/// # Examples
///
/// ```
/// use ferry_crdt::{DecodeError, GCounter, decode};
///
/// let err = decode::<GCounter>(&[0xff; 64], 16).unwrap_err();
/// assert!(matches!(err, DecodeError::TooLong { len: 64, limit: 16 }));
/// assert!(decode::<GCounter>(&[0xfb, 0xff, 0xff], 1024).is_err());
/// ```
pub fn decode<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, DecodeError> {
    if bytes.len() > limit {
        return Err(DecodeError::TooLong {
            len: bytes.len(),
            limit,
        });
    }
    let mut decoder = DecoderImpl::new(SliceReader::new(bytes), config(), ());
    decoder
        .claim_bytes_read(usize::MAX - limit)
        .map_err(DecodeError::Malformed)?;
    let value = match Compat::<T>::decode(&mut decoder) {
        Ok(Compat(value)) => value,
        Err(bincode::error::DecodeError::LimitExceeded) => {
            return Err(DecodeError::LimitExceeded { limit });
        }
        Err(e) => return Err(DecodeError::Malformed(e)),
    };
    let reader = decoder.reader();
    let mut trailing = 0;
    while reader.peek_read(trailing + 1).is_some() {
        trailing += 1;
    }
    if trailing > 0 {
        return Err(DecodeError::TrailingBytes { count: trailing });
    }
    Ok(value)
}

/// The blake3 hash of a value's canonical encoding: equal states have equal digests.
///
/// The sync protocol compares digests to find the documents two replicas hold differently.
///
/// # Examples
///
/// ```
/// use ferry_crdt::{Digest, GCounter, ReplicaId};
///
/// let a = ReplicaId::from_bytes([1; 16]);
/// let mut x = GCounter::new();
/// let mut y = GCounter::new();
/// x.increment(a, 2).unwrap();
/// y.increment(a, 1).unwrap();
/// assert_ne!(Digest::of(&x).unwrap(), Digest::of(&y).unwrap());
/// y.increment(a, 1).unwrap();
/// assert_eq!(Digest::of(&x).unwrap(), Digest::of(&y).unwrap());
/// ```
#[derive(Clone, Copy, Deserialize, Eq, Hash, Ord, PartialEq, PartialOrd, SerializeDerive)]
pub struct Digest([u8; 32]);

impl Digest {
    /// The digest of `value`'s canonical encoding.
    pub fn of<T: Serialize + ?Sized>(value: &T) -> Result<Self, EncodeError> {
        Ok(Self::of_bytes(&encode(value)?))
    }

    /// The blake3 hash of `bytes`.
    pub fn of_bytes(bytes: &[u8]) -> Self {
        Self(*blake3::hash(bytes).as_bytes())
    }

    /// Wraps 32 bytes that are already a digest.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The digest's bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&data_encoding::HEXLOWER.encode(&self.0))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

/// A value could not be encoded.
///
/// The types in this crate always encode; this comes from a register's value type whose
/// `Serialize` implementation failed (for example a sequence of unknown length).
///
/// # Examples
///
/// ```
/// use ferry_crdt::encode;
/// use serde::ser::{Error, Serialize, Serializer};
///
/// struct Secret;
/// impl Serialize for Secret {
///     fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
///         Err(S::Error::custom("secrets stay home"))
///     }
/// }
/// assert!(encode(&Secret).is_err());
/// ```
#[derive(Debug, thiserror::Error)]
#[error("cannot encode value")]
pub struct EncodeError(#[source] bincode::error::EncodeError);

/// Bytes could not be decoded into a state.
///
/// # Examples
///
/// ```
/// use ferry_crdt::{DecodeError, GCounter, decode};
///
/// // An empty counter is one byte (a map of length 0); a second byte is left over.
/// let err = decode::<GCounter>(&[0, 0], 1024).unwrap_err();
/// assert!(matches!(err, DecodeError::TrailingBytes { count: 1 }));
/// ```
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The input is longer than the limit; nothing of it was read.
    #[error("input of {len} bytes is over the limit of {limit}")]
    TooLong {
        /// The input's length.
        len: usize,
        /// The limit it was decoded under.
        limit: usize,
    },
    /// A length prefix asks for more than the limit.
    #[error("a length prefix claims more than the limit of {limit} bytes")]
    LimitExceeded {
        /// The limit it was decoded under.
        limit: usize,
    },
    /// Bytes are left after the value.
    #[error("{count} bytes follow the value")]
    TrailingBytes {
        /// How many.
        count: usize,
    },
    /// The bytes are not an encoding of the type, or encode a state that breaks its invariants.
    #[error("malformed state")]
    Malformed(#[source] bincode::error::DecodeError),
}
