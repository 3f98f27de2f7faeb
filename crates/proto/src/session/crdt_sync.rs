//! Documents of the ferry-crdt kinds: whole states are exchanged and merged on arrival.

use ferry_crdt::{Digest, GCounter, LwwRegister, MvRegister, PNCounter, decode};
use ferry_store::{DocId, DocKind, Origin, Version};

use super::{Event, Session, SessionError};
use crate::message::{ErrorCode, Message};
use crate::reconcile::{ShortDigest, short};

impl Session {
    pub(super) fn send_state(&mut self, doc: DocId) -> Result<(), SessionError> {
        let bytes = self.store.crdt(doc)?.encode();
        self.peer_doc(doc).state_sent = Some(Digest::of_bytes(&bytes));
        self.send(&Message::State { doc, bytes });
        Ok(())
    }

    /// Pushes a counter or register: a delta from the version the peer is known to hold, if
    /// one is at hand (counters), else the whole state.
    pub(super) fn push_state(&mut self, doc: DocId) -> Result<(), SessionError> {
        let known = match self.docs.get(&doc).and_then(|d| d.peer_state) {
            Some(digest) => Some(digest),
            None => match self
                .store
                .sync_record(self.peer, doc)?
                .and_then(|r| r.acked)
            {
                Some(Version::Digest(digest)) => Some(digest),
                _ => None,
            },
        };
        let delta = match known {
            Some(since) => self.store.crdt_delta(doc, since)?,
            None => None,
        };
        let Some((delta, result)) = delta else {
            return self.send_state(doc);
        };
        self.peer_doc(doc).state_sent = Some(result);
        self.send(&Message::Delta {
            doc,
            bytes: delta.encode(),
            result: short(result.as_bytes()),
        });
        Ok(())
    }

    /// A peer's `State`, or its `Delta` when `result` is the digest the delta leads to.
    pub(super) fn on_state(
        &mut self,
        doc: DocId,
        bytes: &[u8],
        result: Option<ShortDigest>,
    ) -> Result<(), SessionError> {
        let Some(kind) = self.visible_kind(doc)? else {
            // Not here yet: ask for it whole, if the peer may write it.
            return self.offered(doc, None);
        };
        if kind == DocKind::Automerge {
            return Err(SessionError::Protocol("a state for an automerge document"));
        }
        validate_state(kind, bytes, self.config.max_frame)?;
        if self.refuse_future_stamp(doc, kind, bytes) {
            return Ok(());
        }
        if !self.may_write(doc)? {
            self.send(&Message::Refused {
                doc,
                code: ErrorCode::ReadOnly,
            });
            // The peer may still read: it gets this side's state, once. (Two replicas read-only
            // to each other would otherwise answer each other's states forever.)
            let mine = self.store.info(doc)?.digest;
            let theirs = result.unwrap_or_else(|| short(Digest::of_bytes(bytes).as_bytes()));
            let known = self.peer_doc(doc);
            if short(mine.as_bytes()) != theirs && known.state_sent != Some(mine) && !known.refused
            {
                self.send_state(doc)?;
            }
            return Ok(());
        }
        self.merge_state(doc, bytes, result)
    }

    /// Refuses (with [`ErrorCode::FutureStamp`]) a register state stamped further ahead of
    /// this side's clock than the session allows; returns whether it did.
    pub(super) fn refuse_future_stamp(&mut self, doc: DocId, kind: DocKind, bytes: &[u8]) -> bool {
        if kind != DocKind::LwwRegister {
            return false;
        }
        let limit = self.now.saturating_add(self.config.max_clock_skew_millis);
        let stamp = decode::<LwwRegister<Vec<u8>>>(bytes, self.config.max_frame as usize)
            .ok()
            .and_then(|register| register.stamp());
        if stamp.is_none_or(|stamp| stamp.millis <= limit) {
            return false;
        }
        self.send(&Message::Refused {
            doc,
            code: ErrorCode::FutureStamp,
        });
        true
    }

    /// Merges a validated state (or delta); acknowledges it if the result is the state received
    /// (or the one the delta leads to, `result`), else answers with the merged state (unless
    /// the peer refused this side's changes).
    pub(super) fn merge_state(
        &mut self,
        doc: DocId,
        bytes: &[u8],
        result: Option<ShortDigest>,
    ) -> Result<(), SessionError> {
        let before = self.store.info(doc)?.digest;
        let after = self
            .store
            .merge_state(doc, Origin::Remote(self.peer), bytes)?;
        if after != before {
            self.events.push_back(Event::DocUpdated { doc });
        }
        let received = Digest::of_bytes(bytes);
        let theirs = result.unwrap_or_else(|| short(received.as_bytes()));
        if short(after.as_bytes()) == theirs {
            self.send(&Message::Ack {
                doc,
                digest: theirs,
            });
            return self.peer_in_sync(doc, Version::Digest(after));
        }
        let known = self.peer_doc(doc);
        // What the peer holds: the state it sent; after a delta, not known here.
        known.peer_state = result.is_none().then_some(received);
        if !known.refused {
            self.send_state(doc)?;
        }
        Ok(())
    }
}

/// A state from the peer must decode as its document's kind before anything is stored.
pub(super) fn validate_state(kind: DocKind, bytes: &[u8], limit: u32) -> Result<(), SessionError> {
    let limit = limit as usize;
    let ok = match kind {
        DocKind::GCounter => decode::<GCounter>(bytes, limit).is_ok(),
        DocKind::PNCounter => decode::<PNCounter>(bytes, limit).is_ok(),
        DocKind::LwwRegister => decode::<LwwRegister<Vec<u8>>>(bytes, limit).is_ok(),
        DocKind::MvRegister => decode::<MvRegister<Vec<u8>>>(bytes, limit).is_ok(),
        DocKind::Automerge => false,
    };
    if ok {
        Ok(())
    } else {
        Err(SessionError::Protocol("a state that does not decode"))
    }
}
