//! Spaces: naming them, granting peers access to them, and listing their documents.

use std::collections::BTreeMap;

use crate::records::{self, GrantRecord, SpaceRecord};
use crate::store::{Store, encode_record};
use crate::{Access, DocId, PeerId, SpaceId, SpaceInfo, StoreError, wall_millis};

impl Store {
    /// Creates a space named `name` (for people; names need not be unique) and returns its
    /// fresh id. Durable when it returns.
    ///
    /// # Examples
    ///
    /// ```
    /// use ferry_store::{Access, DocKind, PeerId, PeerInfo, Store};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let relay = Store::open(dir.path())?;
    /// let alice = relay.create_space("alice")?;
    /// let phone = PeerId::from_bytes([1; 16]);
    /// relay.put_peer(&PeerInfo::new(phone, "alice's phone"))?;
    /// relay.grant(phone, alice, Access::ReadWrite)?;
    ///
    /// let note = relay.create_in(alice, DocKind::Automerge)?;
    /// assert_eq!(relay.access(phone, note)?, Access::ReadWrite);
    /// let elsewhere = relay.create(DocKind::Automerge)?; // the default space
    /// assert_eq!(relay.access(phone, elsewhere)?, Access::None);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn create_space(&self, name: &str) -> Result<SpaceId, StoreError> {
        let space = SpaceId::random();
        self.name_space(space, name)?;
        Ok(space)
    }

    /// Names `space` here (a space created elsewhere, or the default one). Durable when it
    /// returns.
    pub fn name_space(&self, space: SpaceId, name: &str) -> Result<(), StoreError> {
        let record = SpaceRecord {
            name: name.to_owned(),
            created_millis: wall_millis(),
        };
        self.shared
            .db
            .insert(records::space_key(space), encode_record(&record))?;
        self.shared.db.flush()?;
        Ok(())
    }

    /// Sets `peer`'s access to `space`: [`Access::Read`] to receive its documents,
    /// [`Access::ReadWrite`] to also send changes and new documents, [`Access::None`] to
    /// revoke. Per-document overrides ([`PeerInfo::docs`](crate::PeerInfo)) still win. Takes
    /// effect at once, in open sessions too: a revoked space's changes stop going to the
    /// peer, and a session that listed the peer's documents before a widened grant is told
    /// through its [`ChangeFeed`](crate::ChangeFeed). Durable when it returns.
    pub fn grant(&self, peer: PeerId, space: SpaceId, access: Access) -> Result<(), StoreError> {
        if self.directory().peer(peer).is_none() {
            return Err(StoreError::NoSuchPeer(peer));
        }
        let key = records::grant_key(peer, space);
        if access == Access::None {
            self.shared.db.remove(key)?;
        } else {
            self.shared
                .db
                .insert(key, encode_record(&GrantRecord { access }))?;
        }
        self.shared.db.flush()?;
        let before = self.directory_mut().grant(peer, space, access);
        if before < Access::Read && access >= Access::Read {
            self.shared
                .feeds
                .tell(peer, |changes| changes.access_widened = true);
        }
        Ok(())
    }

    /// Revokes `peer`'s access to `space`; the same as granting [`Access::None`].
    pub fn revoke(&self, peer: PeerId, space: SpaceId) -> Result<(), StoreError> {
        self.grant(peer, space, Access::None)
    }

    /// `peer`'s grants, by space.
    pub fn grants(&self, peer: PeerId) -> Result<Vec<(SpaceId, Access)>, StoreError> {
        Ok(self.directory().grants_of(peer))
    }

    /// `peer`'s grant on `space` (not counting per-document overrides).
    pub fn space_access(&self, peer: PeerId, space: SpaceId) -> Access {
        self.directory().space_access(peer, space)
    }

    /// The documents of `space`, in id order: those held here, and those deleted or
    /// forgotten here (see [`Store::gone`]). Costs the space's documents, not the store's.
    pub fn docs_in(&self, space: SpaceId) -> Result<Vec<DocId>, StoreError> {
        let mut docs = Vec::new();
        for key in self
            .shared
            .db
            .scan_prefix(records::space_docs_prefix(space))
            .keys()
        {
            if let Some(doc) = records::id_at(&key?, 17) {
                docs.push(DocId::from_bytes(doc));
            }
        }
        Ok(docs)
    }

    /// The documents `peer` may read, in id order: those of the spaces it may read and those
    /// its overrides show, less those its overrides hide. Deleted and forgotten documents are
    /// among them (see [`Store::gone`]), and so may be documents an override names that were
    /// never here. Costs what the peer may see, not the size of the store.
    pub fn docs_readable_by(&self, peer: PeerId) -> Result<Vec<DocId>, StoreError> {
        let Some(info) = self.peer(peer)? else {
            return Ok(Vec::new()); // an unknown peer may read nothing
        };
        let mut docs = std::collections::BTreeSet::new();
        for (space, access) in self.grants(peer)? {
            if access >= Access::Read {
                docs.extend(self.docs_in(space)?);
            }
        }
        for (doc, access) in &info.docs {
            match access {
                Access::None => docs.remove(doc),
                _ => docs.insert(*doc),
            };
        }
        Ok(docs.into_iter().collect())
    }

    /// Every space this replica knows: the default space, those created or named here, those
    /// a peer has a grant on, and those that hold documents here. Reads every document's index
    /// entry: for people and tools, not for a hot path.
    pub fn spaces(&self) -> Result<Vec<SpaceInfo>, StoreError> {
        let mut spaces: BTreeMap<SpaceId, SpaceInfo> = BTreeMap::new();
        fn known(spaces: &mut BTreeMap<SpaceId, SpaceInfo>, space: SpaceId) -> &mut SpaceInfo {
            spaces.entry(space).or_insert_with(|| SpaceInfo {
                id: space,
                name: None,
                docs: 0,
                grants: Vec::new(),
            })
        }
        known(&mut spaces, SpaceId::DEFAULT);
        let granted: Vec<SpaceId> = self.directory().granted_spaces().collect();
        for space in granted {
            known(&mut spaces, space);
        }
        for item in self.shared.db.scan_prefix(records::SPACE_PREFIX) {
            let (key, value) = item?;
            let Some(space) = records::id_at(&key, 1).map(SpaceId::from_bytes) else {
                continue;
            };
            let record: SpaceRecord = ferry_crdt::decode(&value, records::RECORD_LIMIT)
                .map_err(|_| StoreError::DamagedRecord { what: "space" })?;
            known(&mut spaces, space).name = Some(record.name);
        }
        for key in self.shared.db.scan_prefix(b"n").keys() {
            let key = key?;
            let (Some(space), Some(doc)) = (records::id_at(&key, 1), records::id_at(&key, 17))
            else {
                continue;
            };
            let space = SpaceId::from_bytes(space);
            let live = self
                .shared
                .db
                .contains_key(records::meta_key(DocId::from_bytes(doc)))?;
            known(&mut spaces, space).docs += u64::from(live);
        }
        let directory = self.directory();
        Ok(spaces
            .into_values()
            .map(|mut info| {
                info.grants = directory.grants_on(info.id);
                info
            })
            .collect())
    }
}
