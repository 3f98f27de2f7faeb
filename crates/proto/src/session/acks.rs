//! Acknowledgements: what the peer holds, as the session learns it. Every change to the store's
//! sync record, and to the session's own idea of the peer's version, goes through the three
//! transitions here:
//!
//! - [`Session::peer_in_sync`]: the peer holds exactly this side's version;
//! - [`Session::peer_holds`]: the peer holds some other Automerge heads;
//! - [`Session::listed_in_sync`]: reconciliation showed the peer holds the version listed at
//!   the session's start, which is in sync unless it has changed here since.

use automerge::{ChangeHash, sync};
use ferry_store::{DocId, DocKind, StoreError, SyncUpdate, Version, heads_digest};

use super::{Event, Session, SessionError};
use crate::reconcile::{ShortDigest, short};

impl Session {
    /// The peer holds exactly this side's `version` of `doc`: records the sync with its time
    /// (and, for Automerge, seeds automerge's sync with the heads), and tells the driver the
    /// first time.
    pub(super) fn peer_in_sync(
        &mut self,
        doc: DocId,
        version: Version,
    ) -> Result<(), SessionError> {
        // Automerge's sync state keeps only the shared heads when saved: the record is known
        // without reading the old one, and a state not loaded yet loads it from there.
        let automerge_state = match &version {
            Version::Heads(heads) => {
                let known = self.peer_doc(doc);
                known.shared_on_load = None;
                if let Some(state) = &mut known.sync {
                    state.shared_heads = heads.clone();
                }
                let mut saved = sync::State::new();
                saved.shared_heads = heads.clone();
                Some(saved.encode())
            }
            Version::Digest(_) => None,
        };
        self.store.record_sync(
            self.peer,
            doc,
            SyncUpdate {
                automerge_state,
                acked: Some(version.clone()),
                synced_at: Some(self.now),
            },
        )?;
        let known = self.peer_doc(doc);
        let fresh = match version {
            Version::Heads(heads) => known.peer_heads.replace(heads.clone()) != Some(heads),
            Version::Digest(digest) => known.peer_state.replace(digest) != Some(digest),
        };
        self.reconciler.mark_acked(doc);
        if fresh {
            self.events.push_back(Event::Acked { doc });
        }
        Ok(())
    }

    /// The peer holds `heads` of an Automerge document, which are not (all) this side's:
    /// records them, with automerge's sync state when given, in one write.
    pub(super) fn peer_holds(
        &mut self,
        doc: DocId,
        heads: Vec<ChangeHash>,
        automerge_state: Option<Vec<u8>>,
    ) -> Result<(), SessionError> {
        self.store.record_sync(
            self.peer,
            doc,
            SyncUpdate {
                automerge_state,
                acked: Some(Version::Heads(heads.clone())),
                synced_at: None,
            },
        )?;
        self.peer_doc(doc).peer_heads = Some(heads);
        Ok(())
    }

    /// Reconciliation showed the peer holds `doc` as listed at the session's start: in sync,
    /// unless it has changed here since (then the live push takes it from here).
    pub(super) fn listed_in_sync(&mut self, doc: DocId) -> Result<(), SessionError> {
        let Some(listed) = self.reconciler.entry(doc).map(|e| e.digest) else {
            return Ok(());
        };
        let info = match self.store.info(doc) {
            Ok(info) => info,
            Err(StoreError::NoSuchDocument(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        if short(info.digest.as_bytes()) != listed {
            return Ok(());
        }
        self.peer_in_sync(doc, info.version)
    }

    /// The heads the store records the peer as holding, if any.
    pub(super) fn acked_heads(&self, doc: DocId) -> Result<Option<Vec<ChangeHash>>, SessionError> {
        let record = match self.store.sync_record(self.peer, doc) {
            Ok(record) => record,
            // A damaged record costs a longer sync, nothing more.
            Err(StoreError::Damaged { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        Ok(record.and_then(|r| match r.acked {
            Some(Version::Heads(heads)) => Some(heads),
            _ => None,
        }))
    }

    /// The peer says it holds the version with `digest`.
    pub(super) fn on_ack(&mut self, doc: DocId, digest: ShortDigest) -> Result<(), SessionError> {
        if self.visible_kind(doc)?.is_none() {
            return Ok(()); // as for a document this side does not hold
        }
        let info = match self.store.info(doc) {
            Ok(info) => info,
            Err(StoreError::NoSuchDocument(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        if short(info.digest.as_bytes()) == digest {
            return self.peer_in_sync(doc, info.version);
        }
        let known = self.peer_doc(doc);
        let sent = known.sent_heads.clone();
        let settled = sent.is_none() && !known.refused;
        // An acknowledgement of what was sent before a newer local change.
        if let Some(sent) = sent
            && short(heads_digest(&sent).as_bytes()) == digest
        {
            return self.peer_holds(doc, sent, None);
        }
        if info.kind != DocKind::Automerge || !settled {
            // Overtaken by what is in flight, or the peer refused this side's changes.
            return Ok(());
        }
        // The peer holds an older version, one it acknowledged before: with nothing in flight,
        // send it what came since.
        if let Some(acked) = self.acked_heads(doc)?
            && short(heads_digest(&acked).as_bytes()) == digest
        {
            self.peer_doc(doc).peer_heads = Some(acked.clone());
            return self.send_changes_since(doc, &acked, None).map(drop);
        }
        // A version this side cannot name, with nothing in flight that a later acknowledgement
        // would settle: the peer acknowledged it in a session cut before the acknowledgement
        // got here (or it is an old one, replayed). Either way, automerge's sync works out
        // what each side lacks.
        self.fallback(doc)
    }
}
