//! The wire format: frames and the messages they carry. `docs/protocol.md` is the spec.
//!
//! A frame is a 4-byte little-endian length `n`, then `n` bytes: a type byte and the message's
//! payload, the message's fields in ferry's canonical encoding (bincode 2, standard
//! configuration: variable-length integers, length-prefixed sequences).

use ferry_crdt::{DecodeError, decode, encode};
use ferry_store::{DocId, DocKind};

use crate::reconcile::{Range, ShortDigest};
use serde::{Deserialize, Serialize};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

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
}

/// Everything that travels in a frame.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum Message {
    /// First frame of each side: its version and capabilities.
    Hello {
        /// The protocol version.
        version: u32,
        /// Capability bits; none are defined in version 1.
        capabilities: u64,
    },
    /// A fatal error: the sender closes the session after it.
    Error {
        /// What went wrong.
        code: ErrorCode,
        /// For people.
        detail: String,
    },
    /// Reconciliation: fingerprints or item lists for prefixes. Every non-empty one is
    /// answered by exactly one `Reconcile`, possibly empty.
    Reconcile {
        /// Which turn of reconciliation this is: the initiator's first is 0, and each reply
        /// is one more than what it answers. A receiver ignores any other (a replay).
        round: u32,
        /// The ranges.
        ranges: Vec<Range>,
    },
    /// I have nothing of this document: send me a snapshot.
    Want {
        /// The document.
        doc: DocId,
    },
    /// A whole document: `Automerge::save()`, or a CRDT's canonical state.
    Snapshot {
        /// The document.
        doc: DocId,
        /// Its kind.
        kind: DocKind,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// An Automerge document's heads and some of their ancestors, sent before automerge's sync
    /// so both sides can seed the hashes they share.
    Heads {
        /// The document.
        doc: DocId,
        /// The sender's heads.
        heads: Vec<[u8; 32]>,
        /// Ancestors of the first head at depths 1, 2, 4, 8, ...
        ancestors: Vec<[u8; 32]>,
    },
    /// An automerge sync message (`sync::Message::encode`) for one document.
    Sync {
        /// The document.
        doc: DocId,
        /// The encoded message.
        message: Vec<u8>,
    },
    /// A ferry-crdt document's whole state, to merge.
    State {
        /// The document.
        doc: DocId,
        /// The canonical encoding.
        bytes: Vec<u8>,
    },
    /// An Automerge document's heads, with the changes the sender believes the receiver
    /// lacks (none: "send me what I lack"). Each change is its raw, uncompressed bytes.
    Changes {
        /// The document.
        doc: DocId,
        /// The sender's heads, with these changes applied; empty when they are exactly the
        /// changes in this message that no other change in it depends on (the usual case).
        heads: Vec<[u8; 32]>,
        /// The changes, each one whole change chunk, dependencies first.
        changes: Vec<Vec<u8>>,
    },
    /// The sender now holds the version with this digest (shortened): heads digest or state
    /// digest.
    Ack {
        /// The document.
        doc: DocId,
        /// The digest.
        digest: ShortDigest,
    },
    /// A document's changes were refused; the session goes on without it.
    Refused {
        /// The document.
        doc: DocId,
        /// Why.
        code: ErrorCode,
    },
}

#[derive(Serialize, Deserialize)]
struct HelloBody {
    version: u32,
    capabilities: u64,
}
#[derive(Serialize, Deserialize)]
struct ErrorBody {
    code: ErrorCode,
    detail: String,
}
#[derive(Serialize, Deserialize)]
struct ReconcileBody {
    round: u32,
    ranges: Vec<Range>,
}
#[derive(Serialize, Deserialize)]
struct DocBody {
    doc: DocId,
}
#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    doc: DocId,
    kind: DocKind,
    #[serde(with = "serde_bytes")]
    bytes: Vec<u8>,
}
#[derive(Serialize, Deserialize)]
struct HeadsBody {
    doc: DocId,
    heads: Vec<[u8; 32]>,
    ancestors: Vec<[u8; 32]>,
}
#[derive(Serialize, Deserialize)]
struct BytesBody {
    doc: DocId,
    #[serde(with = "serde_bytes")]
    bytes: Vec<u8>,
}
#[derive(Serialize, Deserialize)]
struct ChangesBody {
    doc: DocId,
    heads: Vec<[u8; 32]>,
    changes: Vec<serde_bytes::ByteBuf>,
}
#[derive(Serialize, Deserialize)]
struct AckBody {
    doc: DocId,
    digest: ShortDigest,
}
#[derive(Serialize, Deserialize)]
struct RefusedBody {
    doc: DocId,
    code: ErrorCode,
}

/// Frame type bytes.
mod kind {
    pub(super) const HELLO: u8 = 1;
    pub(super) const ERROR: u8 = 2;
    pub(super) const RECONCILE: u8 = 3;
    pub(super) const WANT: u8 = 4;
    pub(super) const SNAPSHOT: u8 = 5;
    pub(super) const HEADS: u8 = 6;
    pub(super) const SYNC: u8 = 7;
    pub(super) const STATE: u8 = 8;
    pub(super) const REFUSED: u8 = 9;
    pub(super) const CHANGES: u8 = 10;
    pub(super) const ACK: u8 = 11;
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
    fn type_byte(&self) -> u8 {
        match self {
            Message::Hello { .. } => kind::HELLO,
            Message::Error { .. } => kind::ERROR,
            Message::Reconcile { .. } => kind::RECONCILE,
            Message::Want { .. } => kind::WANT,
            Message::Snapshot { .. } => kind::SNAPSHOT,
            Message::Heads { .. } => kind::HEADS,
            Message::Sync { .. } => kind::SYNC,
            Message::State { .. } => kind::STATE,
            Message::Refused { .. } => kind::REFUSED,
            Message::Changes { .. } => kind::CHANGES,
            Message::Ack { .. } => kind::ACK,
        }
    }

    /// The message as one frame: length prefix, type byte, payload.
    pub fn to_frame(&self) -> Vec<u8> {
        let payload = match self.clone() {
            Message::Hello {
                version,
                capabilities,
            } => encode(&HelloBody {
                version,
                capabilities,
            }),
            Message::Error { code, detail } => encode(&ErrorBody { code, detail }),
            Message::Reconcile { round, ranges } => encode(&ReconcileBody { round, ranges }),
            Message::Want { doc } => encode(&DocBody { doc }),
            Message::Snapshot { doc, kind, bytes } => encode(&SnapshotBody { doc, kind, bytes }),
            Message::Heads {
                doc,
                heads,
                ancestors,
            } => encode(&HeadsBody {
                doc,
                heads,
                ancestors,
            }),
            Message::Sync { doc, message } => encode(&BytesBody {
                doc,
                bytes: message,
            }),
            Message::State { doc, bytes } => encode(&BytesBody { doc, bytes }),
            Message::Refused { doc, code } => encode(&RefusedBody { doc, code }),
            Message::Changes {
                doc,
                heads,
                changes,
            } => encode(&ChangesBody {
                doc,
                heads,
                changes: changes
                    .into_iter()
                    .map(serde_bytes::ByteBuf::from)
                    .collect(),
            }),
            Message::Ack { doc, digest } => encode(&AckBody { doc, digest }),
        }
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
        let limit = limit as usize;
        let bad = FrameError::Payload;
        Ok(match type_byte {
            kind::HELLO => {
                let b: HelloBody = decode(payload, limit).map_err(bad)?;
                Message::Hello {
                    version: b.version,
                    capabilities: b.capabilities,
                }
            }
            kind::ERROR => {
                let b: ErrorBody = decode(payload, limit).map_err(bad)?;
                Message::Error {
                    code: b.code,
                    detail: b.detail,
                }
            }
            kind::RECONCILE => {
                let b: ReconcileBody = decode(payload, limit).map_err(bad)?;
                Message::Reconcile {
                    round: b.round,
                    ranges: b.ranges,
                }
            }
            kind::WANT => {
                let b: DocBody = decode(payload, limit).map_err(bad)?;
                Message::Want { doc: b.doc }
            }
            kind::SNAPSHOT => {
                let b: SnapshotBody = decode(payload, limit).map_err(bad)?;
                Message::Snapshot {
                    doc: b.doc,
                    kind: b.kind,
                    bytes: b.bytes,
                }
            }
            kind::HEADS => {
                let b: HeadsBody = decode(payload, limit).map_err(bad)?;
                Message::Heads {
                    doc: b.doc,
                    heads: b.heads,
                    ancestors: b.ancestors,
                }
            }
            kind::SYNC => {
                let b: BytesBody = decode(payload, limit).map_err(bad)?;
                Message::Sync {
                    doc: b.doc,
                    message: b.bytes,
                }
            }
            kind::STATE => {
                let b: BytesBody = decode(payload, limit).map_err(bad)?;
                Message::State {
                    doc: b.doc,
                    bytes: b.bytes,
                }
            }
            kind::REFUSED => {
                let b: RefusedBody = decode(payload, limit).map_err(bad)?;
                Message::Refused {
                    doc: b.doc,
                    code: b.code,
                }
            }
            kind::CHANGES => {
                let b: ChangesBody = decode(payload, limit).map_err(bad)?;
                Message::Changes {
                    doc: b.doc,
                    heads: b.heads,
                    changes: b.changes.into_iter().map(|c| c.into_vec()).collect(),
                }
            }
            kind::ACK => {
                let b: AckBody = decode(payload, limit).map_err(bad)?;
                Message::Ack {
                    doc: b.doc,
                    digest: b.digest,
                }
            }
            other => return Err(FrameError::UnknownType(other)),
        })
    }
}

fn split_prefix(bytes: &[u8]) -> Result<(u64, &[u8]), FrameError> {
    let (prefix, rest) = bytes
        .split_first_chunk::<LENGTH_PREFIX>()
        .ok_or(FrameError::Truncated)?;
    Ok((u64::from(u32::from_le_bytes(*prefix)), rest))
}

/// Splits a byte stream into frames, for transports that deliver a stream. Holds at most one
/// frame's bytes; a frame over the limit is refused from its length prefix alone.
#[derive(Debug)]
pub struct FrameReader {
    buffer: Vec<u8>,
    limit: u32,
}

impl FrameReader {
    /// A reader refusing frames longer than `limit`.
    pub fn new(limit: u32) -> Self {
        Self {
            buffer: Vec::new(),
            limit,
        }
    }

    /// Appends bytes from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next whole frame, if one has arrived.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
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
            return Ok(None);
        }
        let rest = self.buffer.split_off(end);
        Ok(Some(std::mem::replace(&mut self.buffer, rest)))
    }
}
