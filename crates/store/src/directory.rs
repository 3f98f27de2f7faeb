//! Who may read and write what: the peer table and the space grants, kept in memory beside
//! their records so that an access check or "which peers may read this document" never reads
//! the disk or scans every peer.

use std::collections::{BTreeMap, HashMap};

use ferry_crdt::decode;

use crate::peers::decode_peer;
use crate::records::{self, GrantRecord, RECORD_LIMIT};
use crate::{Access, DocId, PeerId, PeerInfo, SpaceId, StoreError};

/// The peer table and grants, indexed both ways. Its owner keeps it equal to the records:
/// every change is written to sled first, then applied here.
#[derive(Debug, Default)]
pub(crate) struct Directory {
    peers: HashMap<PeerId, PeerInfo>,
    by_peer: HashMap<PeerId, BTreeMap<SpaceId, Access>>,
    by_space: HashMap<SpaceId, BTreeMap<PeerId, Access>>,
    /// Per-document overrides, by document.
    overrides: HashMap<DocId, BTreeMap<PeerId, Access>>,
}

impl Directory {
    /// Reads the peer and grant records.
    pub(crate) fn load(db: &sled::Db) -> Result<Self, StoreError> {
        let mut directory = Self::default();
        for item in db.scan_prefix(records::PEER_PREFIX).values() {
            directory.put_peer(decode_peer(&item?)?);
        }
        for item in db.scan_prefix(records::GRANT_PREFIX) {
            let (key, value) = item?;
            let damaged = || StoreError::DamagedRecord { what: "grant" };
            let peer = records::id_at(&key, 1).ok_or_else(damaged)?;
            let space = records::id_at(&key, 17).ok_or_else(damaged)?;
            let grant: GrantRecord = decode(&value, RECORD_LIMIT).map_err(|_| damaged())?;
            directory.grant(
                PeerId::from_bytes(peer),
                SpaceId::from_bytes(space),
                grant.access,
            );
        }
        Ok(directory)
    }

    pub(crate) fn peer(&self, peer: PeerId) -> Option<&PeerInfo> {
        self.peers.get(&peer)
    }

    pub(crate) fn peers(&self) -> impl Iterator<Item = &PeerInfo> {
        self.peers.values()
    }

    /// Adds or replaces a peer; returns whether it may now read something it could not.
    pub(crate) fn put_peer(&mut self, info: PeerInfo) -> bool {
        let old = self.peers.remove(&info.id);
        let mut widened = false;
        if let Some(old) = &old {
            for doc in old.docs.keys() {
                self.drop_override(*doc, old.id);
            }
        }
        for (&doc, &access) in &info.docs {
            let before = old.as_ref().and_then(|o| o.doc_override(doc));
            widened |= access >= Access::Read && before.is_none_or(|b| b < Access::Read);
            self.overrides
                .entry(doc)
                .or_default()
                .insert(info.id, access);
        }
        self.peers.insert(info.id, info);
        widened
    }

    /// Removes a peer and its grants.
    pub(crate) fn remove_peer(&mut self, peer: PeerId) {
        if let Some(old) = self.peers.remove(&peer) {
            for doc in old.docs.keys() {
                self.drop_override(*doc, peer);
            }
        }
        for space in self.by_peer.remove(&peer).unwrap_or_default().into_keys() {
            if let Some(peers) = self.by_space.get_mut(&space) {
                peers.remove(&peer);
                if peers.is_empty() {
                    self.by_space.remove(&space);
                }
            }
        }
    }

    fn drop_override(&mut self, doc: DocId, peer: PeerId) {
        if let Some(peers) = self.overrides.get_mut(&doc) {
            peers.remove(&peer);
            if peers.is_empty() {
                self.overrides.remove(&doc);
            }
        }
    }

    /// Sets `peer`'s access to `space` ([`Access::None`] removes the grant); returns the
    /// access it had.
    pub(crate) fn grant(&mut self, peer: PeerId, space: SpaceId, access: Access) -> Access {
        let before = if access == Access::None {
            let before = self
                .by_peer
                .get_mut(&peer)
                .and_then(|spaces| spaces.remove(&space));
            if self.by_peer.get(&peer).is_some_and(BTreeMap::is_empty) {
                self.by_peer.remove(&peer);
            }
            if let Some(peers) = self.by_space.get_mut(&space) {
                peers.remove(&peer);
                if peers.is_empty() {
                    self.by_space.remove(&space);
                }
            }
            before
        } else {
            self.by_space.entry(space).or_default().insert(peer, access);
            self.by_peer.entry(peer).or_default().insert(space, access)
        };
        before.unwrap_or(Access::None)
    }

    /// `peer`'s access to `doc`, a document of `space`: its override for the document if it
    /// has one, else its grant on the space. An unknown peer has none.
    pub(crate) fn access(&self, peer: PeerId, doc: DocId, space: Option<SpaceId>) -> Access {
        let Some(info) = self.peers.get(&peer) else {
            return Access::None;
        };
        if let Some(access) = info.doc_override(doc) {
            return access;
        }
        space.map_or(Access::None, |space| self.space_access(peer, space))
    }

    /// `peer`'s grant on `space`.
    pub(crate) fn space_access(&self, peer: PeerId, space: SpaceId) -> Access {
        self.by_peer
            .get(&peer)
            .and_then(|spaces| spaces.get(&space))
            .copied()
            .unwrap_or(Access::None)
    }

    /// Every space `peer` has a grant on, with the grant.
    pub(crate) fn grants_of(&self, peer: PeerId) -> Vec<(SpaceId, Access)> {
        self.by_peer
            .get(&peer)
            .map(|spaces| spaces.iter().map(|(s, a)| (*s, *a)).collect())
            .unwrap_or_default()
    }

    /// Every peer with a grant on `space`, with the grant.
    pub(crate) fn grants_on(&self, space: SpaceId) -> Vec<(PeerId, Access)> {
        self.by_space
            .get(&space)
            .map(|peers| peers.iter().map(|(p, a)| (*p, *a)).collect())
            .unwrap_or_default()
    }

    /// Every space some peer has a grant on.
    pub(crate) fn granted_spaces(&self) -> impl Iterator<Item = SpaceId> + '_ {
        self.by_space.keys().copied()
    }

    /// The peers that may read `doc`, a document of `space`: the space's readers, less those
    /// whose override for the document hides it, plus those whose override shows it. Costs
    /// the number of such peers, not the number of peers.
    pub(crate) fn readers(&self, doc: DocId, space: SpaceId) -> Vec<PeerId> {
        let overrides = self.overrides.get(&doc);
        let mut readers: Vec<PeerId> = self
            .by_space
            .get(&space)
            .into_iter()
            .flatten()
            .filter(|(peer, access)| {
                **access >= Access::Read && overrides.is_none_or(|o| !o.contains_key(peer))
            })
            .map(|(peer, _)| *peer)
            .collect();
        if let Some(overrides) = overrides {
            readers.extend(
                overrides
                    .iter()
                    .filter(|(_, access)| **access >= Access::Read)
                    .map(|(peer, _)| *peer),
            );
        }
        readers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u8) -> PeerId {
        PeerId::from_bytes([n; 16])
    }

    #[test]
    fn access_is_the_document_override_else_the_space_grant() {
        let mut d = Directory::default();
        let (team, other) = (SpaceId::random(), SpaceId::random());
        let (shown, hidden, plain) = (DocId::random(), DocId::random(), DocId::random());
        let mut info = PeerInfo::new(peer(1), "one");
        info.docs.insert(shown, Access::Read);
        info.docs.insert(hidden, Access::None);
        assert!(d.put_peer(info));
        d.grant(peer(1), team, Access::ReadWrite);

        assert_eq!(d.access(peer(1), plain, Some(team)), Access::ReadWrite);
        assert_eq!(d.access(peer(1), hidden, Some(team)), Access::None);
        assert_eq!(d.access(peer(1), shown, Some(other)), Access::Read);
        assert_eq!(d.access(peer(1), plain, Some(other)), Access::None);
        assert_eq!(d.access(peer(1), plain, None), Access::None);
        d.put_peer(PeerInfo::new(peer(2), "two"));
        d.grant(peer(2), team, Access::Read);
        assert_eq!(d.access(peer(2), plain, Some(team)), Access::Read);
        assert_eq!(d.access(peer(3), plain, Some(team)), Access::None); // unknown

        let mut readers = d.readers(plain, team);
        readers.sort();
        assert_eq!(readers, vec![peer(1), peer(2)]);
        assert_eq!(d.readers(hidden, team), vec![peer(2)]);
        assert_eq!(d.readers(shown, other), vec![peer(1)]);

        assert_eq!(d.grant(peer(1), team, Access::None), Access::ReadWrite);
        assert_eq!(d.readers(plain, team), vec![peer(2)]);
        d.remove_peer(peer(2));
        assert!(d.readers(plain, team).is_empty());
        assert!(d.grants_on(team).is_empty());
    }
}
