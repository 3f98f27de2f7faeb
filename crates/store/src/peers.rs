//! The peers a replica knows and their access.

use ferry_crdt::decode;

use crate::records::{self, RECORD_LIMIT};
use crate::store::{Store, encode_record};
use crate::{Access, DocId, PeerId, PeerInfo, StoreError};

impl Store {
    /// Adds a peer or replaces what the store knows of it; durable when it returns.
    pub fn put_peer(&self, peer: &PeerInfo) -> Result<(), StoreError> {
        let mut removed = self.removed_peers();
        removed.remove(&peer.id);
        self.shared
            .db
            .insert(records::peer_key(peer.id), encode_record(peer))?;
        self.shared.db.flush()?;
        Ok(())
    }

    /// What the store knows of `peer`.
    pub fn peer(&self, peer: PeerId) -> Result<Option<PeerInfo>, StoreError> {
        match self.shared.db.get(records::peer_key(peer))? {
            None => Ok(None),
            Some(bytes) => decode_peer(&bytes).map(Some),
        }
    }

    /// Every known peer, in id order.
    pub fn peers(&self) -> Result<Vec<PeerInfo>, StoreError> {
        let mut peers = Vec::new();
        for item in self.shared.db.scan_prefix(records::PEER_PREFIX).values() {
            peers.push(decode_peer(&item?)?);
        }
        Ok(peers)
    }

    /// Forgets `peer` and its sync records. Returns whether it was known.
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
        self.shared.db.apply_batch(batch)?;
        self.shared.db.flush()?;
        Ok(known)
    }

    /// `peer`'s access to `doc`; an unknown peer has none.
    pub fn access(&self, peer: PeerId, doc: DocId) -> Result<Access, StoreError> {
        Ok(self
            .peer(peer)?
            .map_or(Access::None, |info| info.access(doc)))
    }
}
pub(crate) fn decode_peer(bytes: &[u8]) -> Result<PeerInfo, StoreError> {
    decode(bytes, RECORD_LIMIT).map_err(|_| StoreError::DamagedRecord { what: "peer" })
}
