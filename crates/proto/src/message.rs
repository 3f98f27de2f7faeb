//! The wire format: frames and the messages they carry. `docs/protocol.md` is the spec.
//!
//! A frame is a 4-byte little-endian length `n`, then `n` bytes: a type byte and the message's
//! payload, the message's fields in ferry's canonical encoding (bincode 2, standard
//! configuration: variable-length integers, length-prefixed sequences).

use bytes::{Bytes, BytesMut};
use ferry_crdt::{DecodeError, decode, encode};
use ferry_store::{DocId, DocKind, SpaceId};

use crate::reconcile::{Range, ShortDigest};
use serde::{Deserialize, Serialize};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 2;

/// Hello capability bit: the sender takes whole documents in parts ([`Message::SnapshotPart`]),
/// so a document of any size reaches it.
pub const CAP_SNAPSHOT_PARTS: u64 = 1;

/// The capabilities this build announces in its hello.
pub const CAPABILITIES: u64 = CAP_SNAPSHOT_PARTS;

/// The largest frame a session accepts unless configured otherwise: 16 MiB.
pub const DEFAULT_MAX_FRAME: u32 = 16 << 20;

/// Bytes before a frame's body: the length prefix.
pub const LENGTH_PREFIX: usize = 4;

/// Why a session ended, or why a document's changes were refused.
#[derive(Clone, Copy, Debug, Eq, PartialEq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The peer speaks a protocol version this build does not.
    UnsupportedVersion,
    /// A frame did not decode, was too large, or had an unknown type.
    Malformed,
    /// A frame came when the protocol does not allow it.
    OutOfOrder,
    /// A frame named a document the sender may not see.
    NoAccess,
    /// Changes from a peer without write access; nothing of them was stored.
    ReadOnly,
    /// The receiver could not store what it was sent.
    Internal,
    /// A last-writer-wins register's stamp lies further ahead of the receiver's clock than it
    /// allows ([`SessionConfig::max_clock_skew_millis`](crate::SessionConfig)); nothing of it
    /// was stored.
    FutureStamp,
    /// A document larger than the receiver takes in (its store's `max_doc_bytes`); nothing
    /// of it was stored.
    TooLarge,
}

/// Defines the messages once: each with its frame type byte and its fields in wire order. From
/// the one list come the [`Message`] enum, its type bytes, and a borrowing (for encoding) and an
/// owning (for decoding) payload struct per message, whose fields carry the serde attributes.
/// The payload is the fields in order, in ferry's canonical encoding.
macro_rules! messages {
    ($(
        $(#[doc = $doc:expr])*
        $type:literal => $name:ident {
            $(
                $(#[doc = $field_doc:expr])*
                $(#[serde($serde:meta)])*
                $field:ident : $ty:ty
            ),* $(,)?
        }
    ),* $(,)?) => {
        /// Everything that travels in a frame.
        #[derive(Clone, Debug, Eq, PartialEq)]
        pub enum Message {
            $(
                $(#[doc = $doc])*
                $name {
                    $( $(#[doc = $field_doc])* $field: $ty, )*
                },
            )*
        }

        /// Payloads borrowed from a [`Message`], to encode.
        mod outgoing {
            use super::*;
            $(
                #[derive(Serialize)]
                pub(super) struct $name<'a> {
                    $( $(#[serde($serde)])* pub(super) $field: &'a $ty, )*
                }
            )*
        }

        /// Payloads as they decode, to become a [`Message`].
        mod incoming {
            use super::*;
            $(
                #[derive(Deserialize)]
                pub(super) struct $name {
                    $( $(#[serde($serde)])* pub(super) $field: $ty, )*
                }
            )*
        }

        impl Message {
            fn type_byte(&self) -> u8 {
                match self {
                    $( Message::$name { .. } => $type, )*
                }
            }

            fn encode_payload(&self) -> Result<Vec<u8>, ferry_crdt::EncodeError> {
                match self {
                    $( Message::$name { $($field),* } => encode(&outgoing::$name { $($field),* }), )*
                }
            }

            fn decode_payload(
                type_byte: u8,
                payload: &[u8],
                limit: usize,
            ) -> Result<Message, FrameError> {
                match type_byte {
                    $(
                        $type => {
                            let body: incoming::$name =
                                decode(payload, limit).map_err(FrameError::Payload)?;
                            Ok(Message::$name { $($field: body.$field),* })
                        }
                    )*
                    other => Err(FrameError::UnknownType(other)),
                }
            }
        }
    };
}

messages! {
    /// First frame of each side: its version and capabilities.
    1 => Hello {
        /// The protocol version.
        version: u32,
        /// Capability bits: [`CAP_SNAPSHOT_PARTS`] (1).
        capabilities: u64,
    },
    /// A fatal error: the sender closes the session after it.
    2 => Error {
        /// What went wrong.
        code: ErrorCode,
        /// For people.
        detail: String,
    },
    /// Reconciliation: fingerprints or item lists for prefixes. Every non-empty one is
    /// answered by exactly one `Reconcile`, possibly empty.
    3 => Reconcile {
        /// Which turn of reconciliation this is: the initiator's first is 0, and each reply
        /// is one more than what it answers. A receiver ignores any other (a replay).
        round: u32,
        /// The ranges.
        ranges: Vec<Range>,
    },
    /// I have nothing of this document: send me a snapshot.
    4 => Want {
        /// The document.
        doc: DocId,
    },
    /// A whole document: `Automerge::save()`, or a CRDT's canonical state.
    5 => Snapshot {
        /// The document.
        doc: DocId,
        /// Its kind.
        kind: DocKind,
        /// Its space.
        space: SpaceId,
        /// The bytes.
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// An Automerge document's heads and some of their ancestors, sent before automerge's sync
    /// so both sides can seed the hashes they share.
    6 => Heads {
        /// The document.
        doc: DocId,
        /// The sender's heads.
        heads: Vec<[u8; 32]>,
        /// Ancestors of the first head at depths 1, 2, 4, 8, ...
        ancestors: Vec<[u8; 32]>,
    },
    /// An automerge sync message (`sync::Message::encode`) for one document.
    7 => Sync {
        /// The document.
        doc: DocId,
        /// The encoded message.
        #[serde(with = "serde_bytes")]
        message: Vec<u8>,
    },
    /// A ferry-crdt document's whole state, to merge.
    8 => State {
        /// The document.
        doc: DocId,
        /// The canonical encoding.
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// A document's changes were refused; the session goes on without it.
    9 => Refused {
        /// The document.
        doc: DocId,
        /// Why.
        code: ErrorCode,
    },
    /// An Automerge document's heads, with the changes the sender believes the receiver
    /// lacks (none: "send me what I lack"). Each change is its raw, uncompressed bytes.
    10 => Changes {
        /// The document.
        doc: DocId,
        /// The sender's heads, with these changes applied; empty when they are exactly the
        /// changes in this message that no other change in it depends on (the usual case).
        heads: Vec<[u8; 32]>,
        /// The changes, each one whole change chunk, dependencies first.
        #[serde(with = "byte_strings")]
        changes: Vec<Vec<u8>>,
    },
    /// The sender now holds the version with this digest (shortened): heads digest or state
    /// digest.
    11 => Ack {
        /// The document.
        doc: DocId,
        /// The digest.
        digest: ShortDigest,
    },
    /// The sender deleted this document: the receiver deletes its copy and keeps the
    /// tombstone, so no peer brings it back.
    12 => Deleted {
        /// The document.
        doc: DocId,
        /// Its kind.
        kind: DocKind,
        /// Its space.
        space: SpaceId,
    },
    /// The sender found, in reconciliation, that the receiver lacks these documents, and will
    /// send each whole, unasked, as it has room: the receiver knows what is still to come.
    13 => Pushing {
        /// The documents, in id order.
        docs: Vec<DocId>,
    },
    /// Part of a counter's state: what a replica holding the version the sender last saw
    /// there needs to reach the sender's. The receiver merges it like a `State`; `result` is
    /// the sender's digest after it, which the receiver's now equals if the two are in sync.
    14 => Delta {
        /// The document.
        doc: DocId,
        /// The delta, in the canonical encoding of the document's kind.
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
        /// The sender's digest (shortened), which the delta leads to.
        result: ShortDigest,
    },
    /// Part of a whole document too large to send in one `Snapshot` frame, sent only to a
    /// peer whose hello has [`CAP_SNAPSHOT_PARTS`]. A document's parts go in order, one
    /// document at a time (other documents' frames may come between them); the receiver
    /// takes the document in once the last part completes `total` bytes whose blake3 hash is
    /// `digest`, exactly as if one `Snapshot` had carried them.
    15 => SnapshotPart {
        /// The document.
        doc: DocId,
        /// Its kind.
        kind: DocKind,
        /// Its space.
        space: SpaceId,
        /// The whole snapshot's length in bytes.
        total: u64,
        /// The blake3 hash of the whole snapshot.
        digest: [u8; 32],
        /// Where these bytes start in the whole.
        offset: u64,
        /// The bytes.
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// The receiver of a `SnapshotPart` at offset 0 already holds the first `offset` bytes of
    /// the whole with this `digest` (from a transfer that was cut): the sender may go on from
    /// there. Sent only to a peer that sends parts ([`CAP_SNAPSHOT_PARTS`]).
    16 => Resume {
        /// The document.
        doc: DocId,
        /// The blake3 hash of the whole snapshot.
        digest: [u8; 32],
        /// How many of its bytes the receiver holds.
        offset: u64,
    },
}

/// A list of byte strings, each encoded as bytes (a length, then the bytes) rather than as a
/// sequence of numbers.
mod byte_strings {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        strings: &&Vec<Vec<u8>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(strings.iter().map(|b| serde_bytes::Bytes::new(b)))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        let strings = Vec::<serde_bytes::ByteBuf>::deserialize(d)?;
        Ok(strings
            .into_iter()
            .map(serde_bytes::ByteBuf::into_vec)
            .collect())
    }
}

/// A frame that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// Fewer bytes than the length prefix promises.
    #[error("truncated frame")]
    Truncated,
    /// Longer than the session's limit.
    #[error("frame of {len} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// The announced length.
        len: u64,
        /// The limit.
        limit: u32,
    },
    /// Bytes after the frame's end.
    #[error("bytes after the end of the frame")]
    Trailing,
    /// An empty frame, or one of a type this version does not know.
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    /// The payload does not decode as its type's message.
    #[error("bad payload")]
    Payload(#[source] DecodeError),
}

impl Message {
    /// The message as one frame: length prefix, type byte, payload.
    pub fn to_frame(&self) -> Vec<u8> {
        let payload = self
            .encode_payload()
            .expect("a message of ids, digests and byte strings always encodes");
        let len = u32::try_from(payload.len() + 1).unwrap_or(u32::MAX);
        let mut frame = Vec::with_capacity(LENGTH_PREFIX + 1 + payload.len());
        frame.extend_from_slice(&len.to_le_bytes());
        frame.push(self.type_byte());
        frame.extend_from_slice(&payload);
        frame
    }

    /// Reads exactly one frame, refusing anything over `limit` bytes (after the prefix).
    pub fn from_frame(frame: &[u8], limit: u32) -> Result<Message, FrameError> {
        let (len, body) = split_prefix(frame)?;
        if len > u64::from(limit) {
            return Err(FrameError::TooLarge { len, limit });
        }
        if (body.len() as u64) < len {
            return Err(FrameError::Truncated);
        }
        if (body.len() as u64) > len {
            return Err(FrameError::Trailing);
        }
        let (&type_byte, payload) = body.split_first().ok_or(FrameError::UnknownType(0))?;
        Message::decode_payload(type_byte, payload, limit as usize)
    }
}

fn split_prefix(bytes: &[u8]) -> Result<(u64, &[u8]), FrameError> {
    let (prefix, rest) = bytes
        .split_first_chunk::<LENGTH_PREFIX>()
        .ok_or(FrameError::Truncated)?;
    Ok((u64::from(u32::from_le_bytes(*prefix)), rest))
}

/// Splits a byte stream into frames, for transports that deliver a stream. Holds at most one
/// frame's bytes beyond what has been pushed; a frame over the limit is refused from its length
/// prefix alone. Taking a frame out moves no other bytes.
#[derive(Debug)]
pub struct FrameReader {
    buffer: BytesMut,
    limit: u32,
}

impl FrameReader {
    /// A reader refusing frames longer than `limit`.
    pub fn new(limit: u32) -> Self {
        Self {
            buffer: BytesMut::new(),
            limit,
        }
    }

    /// Whether no byte of a frame waits for the rest of it.
    pub fn is_empty(&self) -> bool {
        self.buffer.is_empty()
    }

    /// Frees the buffer's memory if no byte waits in it: after a large frame, the room it
    /// needed is not kept for an idle peer.
    pub fn release(&mut self) {
        if self.buffer.is_empty() {
            self.buffer = BytesMut::new();
        }
    }

    /// Appends bytes from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next whole frame, if one has arrived: length prefix, type byte and payload.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        let Ok((len, _)) = split_prefix(&self.buffer) else {
            return Ok(None);
        };
        if len > u64::from(self.limit) {
            return Err(FrameError::TooLarge {
                len,
                limit: self.limit,
            });
        }
        let end = LENGTH_PREFIX + len as usize;
        if self.buffer.len() < end {
            self.buffer.reserve(end - self.buffer.len());
            return Ok(None);
        }
        Ok(Some(self.buffer.split_to(end).freeze()))
    }
}
