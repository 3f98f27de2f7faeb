//! What the peer may see and write. A document it may not read is indistinguishable, to it,
//! from one this replica does not hold.

use ferry_store::{Access, DocId, DocInfo, DocKind, PeerId, SpaceId, Store, StoreError};

use super::{Session, SessionError};
use crate::message::Message;
use crate::reconcile::{Entry, TOMBSTONE, short};

impl Session {
    fn access(&self, doc: DocId) -> Result<Access, SessionError> {
        Ok(self.store.access(self.peer, doc)?)
    }

    pub(super) fn may_read(&self, doc: DocId) -> Result<bool, SessionError> {
        Ok(self.access(doc)? >= Access::Read)
    }

    pub(super) fn may_write(&self, doc: DocId) -> Result<bool, SessionError> {
        Ok(self.access(doc)? == Access::ReadWrite)
    }

    /// Whether the peer may write `doc` here as a document of `space`: for a document held
    /// here its own space counts, for one not held the space the peer names.
    pub(super) fn may_write_in(&self, doc: DocId, space: SpaceId) -> Result<bool, SessionError> {
        Ok(self.store.access_in(self.peer, doc, space)? == Access::ReadWrite)
    }

    /// The kind of `doc`, if this replica holds it at all.
    pub(super) fn holds(&self, doc: DocId) -> Result<Option<DocKind>, SessionError> {
        match self.store.info(doc) {
            Ok(info) => Ok(Some(info.kind)),
            Err(StoreError::NoSuchDocument(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// What the store knows of `doc`, as the peer may know it: `None` if this replica does not
    /// hold it, or holds it hidden from the peer. A document the peer may not see is answered
    /// exactly as one this replica does not hold, so nothing the peer sends tells it which it
    /// is. One read of the document's metadata; access comes from memory.
    pub(super) fn visible(&self, doc: DocId) -> Result<Option<DocInfo>, SessionError> {
        match self.store.info(doc) {
            Ok(info) if self.store.access_to(self.peer, &info) >= Access::Read => Ok(Some(info)),
            Ok(_) | Err(StoreError::NoSuchDocument(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The kind of `doc` as the peer may know it (see [`Session::visible`]).
    pub(super) fn visible_kind(&self, doc: DocId) -> Result<Option<DocKind>, SessionError> {
        Ok(self.visible(doc)?.map(|info| info.kind))
    }

    /// The peer has a document this side does not list: ask for it whole if the peer may
    /// write it here; say nothing of one held but hidden. `space` is the space the peer
    /// listed it in; a document pushed live comes without one, and is asked for if the peer
    /// may write in some space here (the snapshot names the space, and is checked then).
    pub(super) fn offered(
        &mut self,
        doc: DocId,
        space: Option<SpaceId>,
    ) -> Result<(), SessionError> {
        // Deleted or forgotten here: not fetched again (a tombstone also goes to the peer).
        if self.holds(doc)?.is_some() || self.send_tombstone(doc)? {
            return Ok(());
        }
        // Already on its way whole (asked for, announced, or arriving in parts): what it
        // lacks then is sent once it is here and its heads are answered.
        if self.awaiting.contains(&doc) {
            return Ok(());
        }
        let wanted = match space {
            Some(space) => self.may_write_in(doc, space)?,
            None => self.store.may_write_somewhere(self.peer, doc),
        };
        if wanted {
            self.send(&Message::Want { doc });
            if self.awaiting.len() < super::MAX_AWAITED {
                self.awaiting.insert(doc);
            }
        }
        Ok(())
    }
}

/// This side's documents that `peer` may read, sorted by id, each marked with whether the
/// store records the peer as holding its current version. Only the spaces the peer may read
/// and its per-document overrides are read: the cost follows what the peer may see, not the
/// size of the store.
pub(super) fn listed_docs(store: &Store, peer: PeerId) -> Result<Vec<Entry>, SessionError> {
    let mut listed = Vec::new();
    for doc in store.docs_readable_by(peer)? {
        match store.info(doc) {
            Ok(i) => {
                let digest = short(i.digest.as_bytes());
                // The peer is recorded as holding this very version, and as having been seen
                // in sync. (Heads a peer named can become this side's heads later, when its
                // changes arrive by another peer: that alone is not a completed sync.)
                let acked = matches!(
                    store.sync_record(peer, doc),
                    Ok(Some(r)) if r.acked.as_ref().map(|v| short(v.digest().as_bytes())) == Some(digest)
                        && r.last_sync_millis.is_some()
                );
                listed.push(Entry {
                    doc,
                    kind: i.kind,
                    space: i.space,
                    digest,
                    acked,
                });
            }
            // Deleted: the tombstone is listed, so peers delete their copies; nothing needs
            // acknowledging. Forgotten, or never here (an override): not listed.
            Err(StoreError::NoSuchDocument(_)) => {
                if let Some(gone) = store.gone(doc)?
                    && gone.is_deleted()
                {
                    listed.push(Entry {
                        doc,
                        kind: gone.kind,
                        space: store.space_of(doc)?.unwrap_or_default(),
                        digest: TOMBSTONE,
                        acked: true,
                    });
                }
            }
            // A damaged document is left out, not fatal to the session.
            Err(StoreError::Damaged { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(listed)
}
