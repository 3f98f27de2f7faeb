//! A step's frames decoded ahead of their turn, with every Automerge snapshot among them
//! checked (loaded whole, see [`CheckedSnapshot`]) on several threads at once. Loading a
//! snapshot is most of the work of taking a document in and needs nothing of the session, so
//! a clone's thousands of snapshots are checked in parallel and then taken in, in order, by
//! the session. Nothing here touches the store or the session: a frame's turn comes as before.

use bytes::Bytes;
use ferry_store::{CheckedSnapshot, DocKind, Limits, Unloadable};

use crate::message::{FrameError, Message};

/// Frames below which a step decodes on its own thread: starting threads would cost more.
const PARALLEL_MIN_FRAMES: usize = 16;
/// Bytes below which a step decodes on its own thread.
const PARALLEL_MIN_BYTES: usize = 16 * 1024;
/// Most threads a step decodes on.
const MAX_THREADS: usize = 4;

/// An Automerge snapshot's bytes, as checked ahead of their turn.
#[derive(Debug)]
pub(super) enum Prechecked {
    /// Not a snapshot, or not checked yet: the session checks it in turn.
    No,
    /// They load; the message's own bytes were moved into this.
    Loads(CheckedSnapshot),
    /// They do not load.
    DoesNotLoad,
    /// They would cost more than the store's limits once loaded: not loaded.
    TooLarge,
}

/// One frame, decoded.
pub(super) struct Decoded {
    pub(super) message: Result<Message, FrameError>,
    pub(super) snapshot: Prechecked,
}

/// Decodes one frame, checking an Automerge snapshot's bytes (within `limits`).
pub(super) fn decode(frame: &[u8], limit: u32, limits: Limits) -> Decoded {
    match Message::from_frame(frame, limit) {
        Ok(Message::Snapshot {
            doc,
            kind: DocKind::Automerge,
            space,
            bytes,
        }) => {
            let snapshot = prechecked(bytes, limits);
            Decoded {
                message: Ok(Message::Snapshot {
                    doc,
                    kind: DocKind::Automerge,
                    space,
                    bytes: Vec::new(),
                }),
                snapshot,
            }
        }
        message => Decoded {
            message,
            snapshot: Prechecked::No,
        },
    }
}

/// Checks a peer's Automerge bytes within `limits`.
pub(super) fn prechecked(bytes: Vec<u8>, limits: Limits) -> Prechecked {
    match CheckedSnapshot::check_within(bytes, limits) {
        Ok(checked) => Prechecked::Loads(checked),
        Err(Unloadable::DoesNotLoad) => Prechecked::DoesNotLoad,
        Err(Unloadable::Exceeds(_)) => Prechecked::TooLarge,
    }
}

/// Decodes `frames` in order, on up to [`MAX_THREADS`] threads when there are enough of them.
pub(super) fn decode_all(frames: &[Bytes], limit: u32, limits: Limits) -> Vec<Decoded> {
    let bytes: usize = frames.iter().map(Bytes::len).sum();
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(MAX_THREADS);
    if threads < 2 || frames.len() < PARALLEL_MIN_FRAMES || bytes < PARALLEL_MIN_BYTES {
        return frames.iter().map(|f| decode(f, limit, limits)).collect();
    }
    let per_thread = frames.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let mut parts = frames.chunks(per_thread);
        let first = parts.next().unwrap_or_default();
        let others: Vec<_> = parts
            .map(|part| {
                scope.spawn(move || part.iter().map(|f| decode(f, limit, limits)).collect())
            })
            .collect();
        let mut decoded: Vec<Decoded> = first.iter().map(|f| decode(f, limit, limits)).collect();
        for other in others {
            match other.join() {
                Ok(part) => decoded.extend::<Vec<Decoded>>(part),
                // Decoding guards automerge against panics; anything else is a bug, raised
                // here as it would have been on this thread.
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        decoded
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use automerge::transaction::Transactable;
    use automerge::{Automerge, ROOT};
    use ferry_store::{DocId, SpaceId};

    fn snapshot_frame(i: i64, damaged: bool) -> Bytes {
        let mut am = Automerge::new();
        am.transact(|tx| tx.put(ROOT, "i", i))
            .map_err(|f| f.error)
            .unwrap();
        let mut bytes = am.save();
        if damaged {
            bytes.truncate(bytes.len() / 2);
        }
        Message::Snapshot {
            doc: DocId::random(),
            kind: DocKind::Automerge,
            space: SpaceId::DEFAULT,
            bytes,
        }
        .to_frame()
        .into()
    }

    #[test]
    fn many_frames_decode_in_order_with_each_snapshot_checked() {
        let mut frames: Vec<Bytes> = (0..200).map(|i| snapshot_frame(i, i % 7 == 3)).collect();
        frames.insert(50, vec![0, 1, 2].into()); // not a frame
        let limits = Limits {
            bytes: 1 << 30,
            ops: 1 << 30,
        };
        let sequential: Vec<Decoded> = frames.iter().map(|f| decode(f, 1 << 20, limits)).collect();
        let parallel = decode_all(&frames, 1 << 20, limits);
        assert_eq!(parallel.len(), frames.len());
        for (i, (a, b)) in sequential.iter().zip(&parallel).enumerate() {
            assert_eq!(
                format!("{:?}", a.message),
                format!("{:?}", b.message),
                "frame {i}"
            );
            match (&a.snapshot, &b.snapshot) {
                (Prechecked::Loads(x), Prechecked::Loads(y)) => {
                    assert_eq!(x.heads(), y.heads());
                    assert_eq!(x.bytes(), y.bytes());
                }
                (Prechecked::DoesNotLoad, Prechecked::DoesNotLoad)
                | (Prechecked::TooLarge, Prechecked::TooLarge)
                | (Prechecked::No, Prechecked::No) => {}
                (x, y) => panic!("frame {i}: {x:?} and {y:?}"),
            }
        }
        let loads = parallel
            .iter()
            .filter(|d| matches!(d.snapshot, Prechecked::Loads(_)))
            .count();
        let damaged = parallel
            .iter()
            .filter(|d| matches!(d.snapshot, Prechecked::DoesNotLoad))
            .count();
        assert_eq!((loads, damaged), (171, 29));
        assert!(parallel[50].message.is_err());
    }
}
