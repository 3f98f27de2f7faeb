//! The peers a replica knows, and their access to documents.

use ferry_crdt::decode;

use crate::loading::read_space;
use crate::records::{self, RECORD_LIMIT};
use crate::store::{Store, encode_record};
use crate::{Access, DocId, DocInfo, PeerId, PeerInfo, SpaceId, StoreError};

impl Store {
    /// Adds a peer or replaces what the store knows of it (its grants on spaces stay);
    /// durable when it returns. A peer must be known before it is granted access.
    pub fn put_peer(&self, peer: &PeerInfo) -> Result<(), StoreError> {
        let mut removed = self.removed_peers();
        removed.remove(&peer.id);
        self.shared
            .db
            .insert(records::peer_key(peer.id), encode_record(peer))?;
        self.shared.db.flush()?;
        let widened = self.directory_mut().put_peer(peer.clone());
        if widened {
            self.shared
                .feeds
                .tell(peer.id, |changes| changes.access_widened = true);
        }
        Ok(())
    }

    /// What the store knows of `peer`.
    pub fn peer(&self, peer: PeerId) -> Result<Option<PeerInfo>, StoreError> {
        Ok(self.directory().peer(peer).cloned())
    }

    /// Every known peer, in id order.
    pub fn peers(&self) -> Result<Vec<PeerInfo>, StoreError> {
        let mut peers: Vec<PeerInfo> = self.directory().peers().cloned().collect();
        peers.sort_by_key(|p| p.id);
        Ok(peers)
    }

    /// Forgets `peer`, its grants and its sync records. Returns whether it was known.
    pub fn remove_peer(&self, peer: PeerId) -> Result<bool, StoreError> {
        let mut removed = self.removed_peers();
        removed.insert(peer);
        let mut batch = sled::Batch::default();
        let known = self.shared.db.contains_key(records::peer_key(peer))?;
        batch.remove(&records::peer_key(peer));
        batch.remove(&records::reconciled_key(peer));
        let mut prefix = records::SYNC_PREFIX.to_vec();
        prefix.extend_from_slice(peer.as_bytes());
        for key in self.shared.db.scan_prefix(prefix).keys() {
            batch.remove(key?);
        }
        for key in self
            .shared
            .db
            .scan_prefix(records::grant_prefix(peer))
            .keys()
        {
            batch.remove(key?);
        }
        self.shared.db.apply_batch(batch)?;
        self.shared.db.flush()?;
        self.directory_mut().remove_peer(peer);
        Ok(known)
    }

    /// `peer`'s access to `doc`: its override for the document, else its grant on the
    /// document's space. An unknown peer has none; so does a peer with no override for a
    /// document not held here.
    pub fn access(&self, peer: PeerId, doc: DocId) -> Result<Access, StoreError> {
        let space = self.space_of(doc)?;
        Ok(self.directory().access(peer, doc, space))
    }

    /// `peer`'s access to the document `info` describes, from what is in memory: no read of
    /// the store, for a caller that has just read `info`.
    pub fn access_to(&self, peer: PeerId, info: &DocInfo) -> Access {
        self.directory().access(peer, info.id, Some(info.space))
    }

    /// `peer`'s access to `doc` as a document of `space`: as [`Store::access`] for a document
    /// held here (whose own space counts, whatever `space` says), and for one not held, what
    /// the peer's override or its grant on `space` gives it. This is how sync decides whether
    /// to take in a document a peer offers.
    pub fn access_in(
        &self,
        peer: PeerId,
        doc: DocId,
        space: SpaceId,
    ) -> Result<Access, StoreError> {
        let space = self.space_of(doc)?.unwrap_or(space);
        Ok(self.access_as(peer, doc, space))
    }

    /// `peer`'s access to `doc` as a document of `space`, from what is in memory: its override
    /// for the document, else its grant on `space`. For a caller that knows the document's
    /// space (or that it has none here: see [`Store::space_of`]).
    pub fn access_as(&self, peer: PeerId, doc: DocId, space: SpaceId) -> Access {
        self.directory().access(peer, doc, Some(space))
    }

    /// Whether `peer` may write `doc` in some space here: through an override for the
    /// document, or a read-write grant on any space. Sync asks this of a document a peer
    /// pushes without naming its space, before the document itself (which names it) arrives.
    pub fn may_write_somewhere(&self, peer: PeerId, doc: DocId) -> bool {
        let directory = self.directory();
        match directory.peer(peer).and_then(|p| p.doc_override(doc)) {
            Some(access) => access == Access::ReadWrite,
            None => directory
                .grants_of(peer)
                .iter()
                .any(|(_, access)| *access == Access::ReadWrite),
        }
    }

    /// The space `doc` belongs to, if it is here (or was, and was deleted or forgotten). `None`
    /// means the document has never been here: neither held nor gone.
    pub fn space_of(&self, doc: DocId) -> Result<Option<SpaceId>, StoreError> {
        if let Some((_, space)) = self.lock().cache.meta(&doc) {
            return Ok(Some(space));
        }
        match read_space(&self.shared.db, doc) {
            Ok(space) => Ok(Some(space)),
            Err(StoreError::NoSuchDocument(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
pub(crate) fn decode_peer(bytes: &[u8]) -> Result<PeerInfo, StoreError> {
    decode(bytes, RECORD_LIMIT).map_err(|_| StoreError::DamagedRecord { what: "peer" })
}
