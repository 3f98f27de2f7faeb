//! Whole documents: a snapshot for a peer that lacks a document, and taking one in.

use ferry_store::{Access, CheckedSnapshot, DocId, DocInfo, DocKind, Origin, SpaceId};

use super::crdt_sync::validate_state;
use super::incoming::Prechecked;
use super::{Event, Session, SessionError};
use crate::message::{ErrorCode, Message};

impl Session {
    pub(super) fn send_snapshot(&mut self, info: &DocInfo) -> Result<(), SessionError> {
        let (doc, kind, space) = (info.id, info.kind, info.space);
        let bytes = match kind {
            DocKind::Automerge => {
                // As stored, when that is compact: no load and save again.
                let (bytes, heads) = match self.store.saved_form(doc)? {
                    Some(saved) => saved,
                    None => self.store.read(doc, |am| (am.save(), am.get_heads()))?,
                };
                // Once the peer has loaded it, it holds these heads (automerge's sync state
                // learns them when it is next used; a snapshot needs no read of it).
                let known = self.peer_doc(doc);
                match &mut known.sync {
                    Some(state) => state.shared_heads = heads.clone(),
                    None => known.shared_on_load = Some(heads.clone()),
                }
                known.sent_heads = Some(heads);
                bytes
            }
            _ => self.store.crdt(doc)?.encode(),
        };
        self.send(&Message::Snapshot {
            doc,
            kind,
            space,
            bytes,
        });

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
                let theirs = match checked {
                    Prechecked::Loads(theirs) => theirs,
                    Prechecked::DoesNotLoad => return Err(does_not_load),
                    Prechecked::No => {
                        CheckedSnapshot::check(bytes.to_vec()).ok_or(does_not_load)?
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
                validate_state(kind, bytes, self.config.max_frame)?;
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
