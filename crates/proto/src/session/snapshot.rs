//! Whole documents: a snapshot for a peer that lacks a document, and taking one in; in parts
//! when it is larger than `SessionConfig::part_bytes` and the peer takes parts.

use ferry_store::{Access, Assembly, DocId, DocInfo, DocKind, Origin, PartError, SpaceId};

use automerge::ChangeHash;

use super::crdt_sync::validate_state;
use super::incoming::{Prechecked, prechecked};
use super::{Event, Session, SessionError};
use crate::message::{CAP_SNAPSHOT_PARTS, ErrorCode, Message};

/// Room in a frame for a `SnapshotPart`'s fields besides its bytes.
const PART_OVERHEAD: usize = 128;

/// A whole document going to the peer in parts.
pub(super) struct Sending {
    doc: DocId,
    kind: DocKind,
    space: SpaceId,
    digest: [u8; 32],
    bytes: Vec<u8>,
    /// Bytes sent so far.
    offset: usize,
}

impl std::fmt::Debug for Sending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sending")
            .field("doc", &self.doc)
            .field("offset", &self.offset)
            .field("total", &self.bytes.len())
            .finish_non_exhaustive()
    }
}

/// A document's bytes ready to send, and the heads the peer holds once it has loaded them.
type Prepared = (Vec<u8>, Vec<ChangeHash>);

/// A large document's bytes being read, as stored, on a thread of its own, to send in parts,
/// so the session goes on meanwhile.
pub(super) struct Preparing {
    doc: DocId,
    space: SpaceId,
    ready: std::thread::JoinHandle<Result<Prepared, SessionError>>,
}

impl std::fmt::Debug for Preparing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Preparing")
            .field("doc", &self.doc)
            .finish_non_exhaustive()
    }
}

/// A document assembled from parts, being checked on a thread of its own.
pub(super) struct Loading {
    doc: DocId,
    space: SpaceId,
    check: std::thread::JoinHandle<Result<Prechecked, SessionError>>,
}

impl std::fmt::Debug for Loading {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loading")
            .field("doc", &self.doc)
            .finish_non_exhaustive()
    }
}

/// What a `SnapshotPart` says of the whole it belongs to.
#[derive(Clone, Copy, Debug)]
pub(super) struct Whole {
    pub(super) total: u64,
    pub(super) digest: [u8; 32],
}

/// A whole document coming from the peer in parts.
#[derive(Debug)]
pub(super) enum Receiving {
    /// Assembled in a file beside the store.
    Assembling {
        /// (Boxed: it holds a hasher's state, some 2 KiB.)
        assembly: Box<Assembly>,
        kind: DocKind,
        space: SpaceId,
    },
    /// Refused at its first part: its other parts are passed over.
    Skipping { doc: DocId, digest: [u8; 32] },
}

impl Session {
    pub(super) fn send_snapshot(&mut self, info: &DocInfo) -> Result<(), SessionError> {
        let (doc, kind, space) = (info.id, info.kind, info.space);
        let in_parts = self.peer_caps & CAP_SNAPSHOT_PARTS != 0;
        if kind == DocKind::Automerge && in_parts && info.stored_bytes > self.part_size() as u64 {
            // Reading a large document takes long: on a thread of its own, and sent in parts
            // once ready (`send_parts`). It goes as stored, never loaded and saved again: a
            // store compacts a document whose change records outgrow its snapshot, so the
            // stored form is at most about twice the compact one, and a load and save of a
            // large document would cost seconds and several times its size in memory.
            let store = self.store.clone();
            let ready = std::thread::Builder::new()
                .name("ferry-read".into())
                .spawn(move || {
                    let stored = store.stored_form(doc)?;
                    Ok((stored.bytes, stored.heads))
                })
                .map_err(|e| SessionError::Assembly(PartError::Io(e)))?;
            self.preparing = Some(Preparing { doc, space, ready });
            return Ok(());
        }
        let bytes = match kind {
            DocKind::Automerge => {
                // As stored, when that is compact: no load and save again.
                let (bytes, heads) = match self.store.saved_form(doc)? {
                    Some(saved) => saved,
                    None => self.store.read(doc, |am| (am.save(), am.get_heads()))?,
                };
                self.will_hold(doc, heads);
                bytes
            }
            _ => self.store.crdt(doc)?.encode(),
        };
        if bytes.len() > self.part_size() && in_parts {
            self.start_parts(doc, kind, space, bytes);
            return Ok(());
        }
        self.send(&Message::Snapshot {
            doc,
            kind,
            space,
            bytes,
        });

        Ok(())
    }

    /// Once the peer has loaded what is sent of `doc`, it holds `heads` (automerge's sync
    /// state learns them when it is next used; a snapshot needs no read of it).
    fn will_hold(&mut self, doc: DocId, heads: Vec<ChangeHash>) {
        let known = self.peer_doc(doc);
        match &mut known.sync {
            Some(state) => state.shared_heads = heads.clone(),
            None => known.shared_on_load = Some(heads.clone()),
        }
        known.sent_heads = Some(heads);
    }

    /// Starts sending `bytes` in parts, as steps have room (`send_parts`).
    fn start_parts(&mut self, doc: DocId, kind: DocKind, space: SpaceId, bytes: Vec<u8>) {
        self.sending = Some(Sending {
            doc,
            kind,
            space,
            digest: *blake3::hash(&bytes).as_bytes(),
            bytes,
            offset: 0,
        });
    }

    /// Whether the large document being read to send is ready; if so, starts sending it.
    pub(super) fn take_prepared(&mut self) -> Result<bool, SessionError> {
        if !self
            .preparing
            .as_ref()
            .is_some_and(|p| p.ready.is_finished())
        {
            return Ok(false);
        }
        let Some(Preparing { doc, space, ready }) = self.preparing.take() else {
            return Ok(false);
        };
        // (A panic there is this side's failure, not the peer's.)
        let (bytes, heads) = ready.join().map_err(|_| {
            SessionError::Assembly(PartError::Io(std::io::Error::other(
                "reading a document to send panicked",
            )))
        })??;
        self.will_hold(doc, heads);
        self.start_parts(doc, DocKind::Automerge, space, bytes);
        Ok(true)
    }

    /// The most bytes of a document one `SnapshotPart` carries, and the size above which a
    /// document goes in parts: `part_bytes`, or less where frames are smaller.
    fn part_size(&self) -> usize {
        let frame_room = (self.config.max_frame as usize).saturating_sub(PART_OVERHEAD);
        self.config.part_bytes.clamp(1, frame_room.max(1))
    }

    /// Sends parts of the document under way until this step's frames reach `step_bytes`.
    /// Access is checked again first: a peer that lost it since gets nothing more (and the
    /// tombstone, if the document was deleted and it may still read it).
    pub(super) fn send_parts(&mut self) -> Result<(), SessionError> {
        let Some(mut sending) = self.sending.take() else {
            return Ok(());
        };
        if self.visible(sending.doc)?.is_none() {
            self.send_tombstone(sending.doc)?;
            return Ok(());
        }
        let part = self.part_size();
        let total = sending.bytes.len();
        while self.out_bytes < self.config.step_bytes && sending.offset < total {
            let end = (sending.offset + part).min(total);
            self.send(&Message::SnapshotPart {
                doc: sending.doc,
                kind: sending.kind,
                space: sending.space,
                total: total as u64,
                digest: sending.digest,
                offset: sending.offset as u64,
                bytes: sending.bytes[sending.offset..end].to_vec(),
            });
            sending.offset = end;
        }
        if sending.offset < total {
            self.sending = Some(sending);
        }
        Ok(())
    }

    /// A part of a whole document: assembled beside the store, and taken in as a `Snapshot`
    /// once complete. Its first part is checked as a `Snapshot` would be (may the peer write
    /// the document's space here, is it within the store's size limit) before a byte is kept.
    pub(super) fn on_snapshot_part(
        &mut self,
        (doc, space): (DocId, SpaceId),
        kind: DocKind,
        whole: Whole,
        offset: u64,
        bytes: &[u8],
    ) -> Result<(), SessionError> {
        if offset == 0 {
            // A new document: whatever was under way is dropped (its file is kept, to be
            // taken up if the same bytes come again).
            self.receiving = None;
            let here = self.store.space_of(doc)?;
            let refused = if self.store.access_as(self.peer, doc, here.unwrap_or(space))
                != Access::ReadWrite
            {
                Some(ErrorCode::ReadOnly)
            } else {
                match self
                    .store
                    .assemble(self.peer, doc, whole.total, whole.digest)
                {
                    Ok(assembly) => {
                        if !assembly.is_empty() {
                            // Cut before, and taken up here: the sender may skip what is here.
                            self.send(&Message::Resume {
                                doc,
                                digest: whole.digest,
                                offset: assembly.len(),
                            });
                        }
                        self.receiving = Some(Receiving::Assembling {
                            assembly: Box::new(assembly),
                            kind,
                            space,
                        });
                        None
                    }
                    Err(PartError::TooLarge { .. }) => Some(ErrorCode::TooLarge),
                    Err(e) => return Err(SessionError::Assembly(e)),
                }
            };
            if let Some(code) = refused {
                self.awaiting.remove(&doc);
                self.send(&Message::Refused { doc, code });
                self.receiving = Some(Receiving::Skipping {
                    doc,
                    digest: whole.digest,
                });
                return Ok(());
            }
        }
        let complete = match &mut self.receiving {
            Some(Receiving::Skipping { doc: d, digest })
                if *d == doc && *digest == whole.digest =>
            {
                return Ok(());
            }
            Some(Receiving::Assembling {
                assembly,
                kind: k,
                space: s,
            }) if assembly.doc() == doc
                && assembly.digest() == whole.digest
                && *k == kind
                && *s == space =>
            {
                assembly
                    .append(offset, bytes)
                    .map_err(|e| part_error(e, "a snapshot part out of place"))?;
                assembly.is_complete()
            }
            _ => {
                return Err(SessionError::OutOfOrder(
                    "a snapshot part of no document under way",
                ));
            }
        };
        if !complete {
            return Ok(());
        }
        let Some(Receiving::Assembling { assembly, .. }) = self.receiving.take() else {
            return Ok(());
        };
        let finished = |assembly: Box<ferry_store::Assembly>| {
            assembly
                .finish()
                .map_err(|e| part_error(e, "a document whose parts do not match its digest"))
        };
        if kind == DocKind::Automerge {
            // Reading the assembly back, loading it (seconds for a large document) and
            // writing the file it is kept in: on a thread of its own, so the peer's other
            // frames are handled meanwhile (see `take_in_loaded`).
            let limits = self.store.limits();
            let store = self.store.clone();
            let check = std::thread::Builder::new()
                .name("ferry-load".into())
                .spawn(move || {
                    let mut checked = prechecked(finished(assembly)?, limits);
                    if let Prechecked::Loads(snapshot) = &mut checked {
                        // Written when taken in, if this fails.
                        let _ = store.stage_snapshot(doc, snapshot);
                    }
                    Ok(checked)
                })
                .map_err(|e| SessionError::Assembly(PartError::Io(e)))?;
            self.loading.push(Loading { doc, space, check });
            Ok(())
        } else {
            let bytes = finished(assembly)?;
            self.on_snapshot((doc, space), kind, &bytes, Prechecked::No)
        }
    }

    /// The peer holds the first `offset` bytes of the document going to it in parts: what is
    /// still to send starts there. (A resume for anything else, or behind what went, changes
    /// nothing.)
    pub(super) fn on_resume(&mut self, doc: DocId, digest: [u8; 32], offset: u64) {
        if let Some(sending) = &mut self.sending
            && sending.doc == doc
            && sending.digest == digest
            && let Ok(offset) = usize::try_from(offset)
            && offset > sending.offset
            && offset <= sending.bytes.len()
        {
            sending.offset = offset;
        }
    }

    /// Takes in the documents whose check on a thread of their own is done, in the order they
    /// arrived, as a `Snapshot` carrying them would have been.
    pub(super) fn take_in_loaded(&mut self) -> Result<(), SessionError> {
        while self.phase == super::Phase::Open
            && self.loading.first().is_some_and(|l| l.check.is_finished())
        {
            let Loading { doc, space, check } = self.loading.remove(0);
            // A panic there is a document that does not load, like any other.
            let checked = check.join().unwrap_or(Ok(Prechecked::DoesNotLoad))?;
            self.on_snapshot((doc, space), DocKind::Automerge, &[], checked)?;
        }
        Ok(())
    }

    pub(super) fn on_want(&mut self, doc: DocId) -> Result<(), SessionError> {
        // Deleted since the peer learned of it: it gets the tombstone.
        if self.holds(doc)?.is_none() && self.store.gone(doc)?.is_some() && self.may_read(doc)? {
            self.send_tombstone(doc)?;
            return Ok(());
        }
        if self.holds(doc)?.is_none() || !self.may_read(doc)? {
            return Err(SessionError::NoAccess(doc));
        }
        // Sent as the step has room (see `SessionConfig::step_bytes`).
        self.backlog.insert(doc);
        Ok(())
    }

    pub(super) fn on_snapshot(
        &mut self,
        (doc, space): (DocId, SpaceId),
        kind: DocKind,
        bytes: &[u8],
        checked: Prechecked,
    ) -> Result<(), SessionError> {
        self.awaiting.remove(&doc);
        // One read for the usual case, a document never here: it has no space here, so it is
        // neither held nor gone, and the space the peer names decides.
        let here = self.store.space_of(doc)?;
        // (A hidden document is one the peer may not write either: refused, as if not held.)
        if self.store.access_as(self.peer, doc, here.unwrap_or(space)) != Access::ReadWrite {
            self.send(&Message::Refused {
                doc,
                code: ErrorCode::ReadOnly,
            });
            return Ok(());
        }
        let held = match here {
            Some(_) => self.holds(doc)?,
            None => None,
        };
        if held.is_some_and(|held| held != kind) {
            return Err(SessionError::Protocol("a snapshot of another kind"));
        }
        // Deleted or forgotten here: not taken in again.
        if here.is_some() && self.send_tombstone(doc)? {
            return Ok(());
        }
        let origin = Origin::Remote(self.peer);
        match kind {
            DocKind::Automerge => {
                // Strict: a damaged or truncated document is refused whole. (Checked ahead,
                // with the rest of its step's snapshots, when it came in a batch.)
                let does_not_load = SessionError::Protocol("a snapshot that does not load");
                let checked = match checked {
                    Prechecked::No => prechecked(bytes.to_vec(), self.store.limits()),
                    checked => checked,
                };
                let theirs = match checked {
                    Prechecked::Loads(theirs) => theirs,
                    Prechecked::DoesNotLoad | Prechecked::No => return Err(does_not_load),
                    // A bomb, or merely more than this store takes: refused, nothing loaded
                    // or stored, and the session goes on.
                    Prechecked::TooLarge => {
                        self.send(&Message::Refused {
                            doc,
                            code: ErrorCode::TooLarge,
                        });
                        return Ok(());
                    }
                };
                let their_heads = theirs.heads().to_vec();
                // Created with its content in one write (these very bytes, not saved again), or
                // merged into the copy here.
                if self.store.adopt_snapshot((doc, space), origin, theirs)? {
                    self.events.push_back(Event::DocUpdated { doc });
                }
                self.answer_heads(doc, their_heads)
            }
            _ => {
                // (Parts may have carried a state larger than one frame.)
                let limit = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
                validate_state(kind, bytes, self.config.max_frame.max(limit))?;
                if self.refuse_future_stamp(doc, kind, bytes) {
                    return Ok(());
                }
                // Created with the state in one write; the merge below then acknowledges.
                if held.is_none() && self.store.adopt_state((doc, space), kind, origin, bytes)? {
                    self.events.push_back(Event::DocUpdated { doc });
                }
                self.merge_state(doc, bytes, None)
            }
        }
    }
}

/// An assembly's failure: this side's own (reading or writing its file), or the peer's parts
/// breaking the protocol (`what`).
fn part_error(e: PartError, what: &'static str) -> SessionError {
    match e {
        PartError::Io(_) => SessionError::Assembly(e),
        _ => SessionError::Protocol(what),
    }
}
