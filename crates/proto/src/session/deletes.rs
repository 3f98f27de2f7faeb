//! Deleted documents: tombstones go to peers that may read the document, and a peer's
//! tombstone deletes the copy here if it may write it. A delete wins over concurrent edits, and
//! nothing deleted or forgotten is fetched again.

use ferry_store::{DocId, DocKind, Origin, SpaceId};

use super::{Event, Session, SessionError};
use crate::message::{ErrorCode, Message};

impl Session {
    /// Tells the peer `doc` was deleted here, if it was (not only forgotten) and the peer may
    /// read it. Returns whether `doc` is gone here at all.
    pub(super) fn send_tombstone(&mut self, doc: DocId) -> Result<bool, SessionError> {
        let Some(gone) = self.store.gone(doc)? else {
            return Ok(false);
        };
        if gone.is_deleted() && self.may_read(doc)? {
            let space = self.store.space_of(doc)?.unwrap_or_default();
            self.send(&Message::Deleted {
                doc,
                kind: gone.kind,
                space,
            });
        }
        Ok(true)
    }

    /// The peer deleted `doc`, a document of `kind` in `space`: delete it here too and keep
    /// the tombstone, if the peer may write it.
    pub(super) fn on_deleted(
        &mut self,
        (doc, space): (DocId, SpaceId),
        kind: DocKind,
    ) -> Result<(), SessionError> {
        self.awaiting.remove(&doc);
        // (A hidden document is one the peer may not write either: refused, as if not held.)
        if !self.may_write_in(doc, space)? {
            self.send(&Message::Refused {
                doc,
                code: ErrorCode::ReadOnly,
            });
            return Ok(());
        }
        if self
            .store
            .apply_tombstone((doc, space), kind, Origin::Remote(self.peer))?
        {
            self.events.push_back(Event::DocUpdated { doc });
        }
        Ok(())
    }
}
