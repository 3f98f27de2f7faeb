//! Per peer, the documents that may hold changes it has not acknowledged, so that "what is
//! waiting for this peer?" costs what changed, not every document it may read.
//!
//! The index is kept in memory, for a peer only once someone asks about it: the first question
//! lists every document the peer may read; from then on, every change to a document adds it
//! for each asking peer that may read it, and every sync record written for the peer adds the
//! document for that peer. The set is of candidates: a question checks each against the sync
//! records and drops those found acknowledged, so it answers in time proportional to what
//! changed since the last question. A change to peers or grants drops the index, and the next
//! question lists again.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use crate::{DocId, DocSyncStatus, PeerId, Store, StoreError};

/// The candidates of each peer asked about, each with the stamp of its last addition.
#[derive(Debug, Default)]
pub(crate) struct Unacked {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    peers: HashMap<PeerId, BTreeMap<DocId, u64>>,
    /// Stamps additions, so a check does not drop a candidate added again meanwhile.
    stamp: u64,
}

impl Unacked {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Sets of ids: at worst a stale candidate, which the next check drops.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// `doc` changed, and `readers` may read it: a candidate for those asked about.
    pub(crate) fn changed(&self, doc: DocId, readers: &[PeerId]) {
        let mut inner = self.lock();
        if inner.peers.is_empty() {
            return;
        }
        inner.stamp += 1;
        let stamp = inner.stamp;
        for peer in readers {
            if let Some(docs) = inner.peers.get_mut(peer) {
                docs.insert(doc, stamp);
            }
        }
    }

    /// Forgets every peer's candidates: who may read what has changed.
    pub(crate) fn clear(&self) {
        self.lock().peers.clear();
    }

    /// Starts tracking `peer` if it is not yet: returns whether it was new (its readable
    /// documents must then be added).
    fn track(&self, peer: PeerId) -> bool {
        let mut inner = self.lock();
        if inner.peers.contains_key(&peer) {
            return false;
        }
        inner.peers.insert(peer, BTreeMap::new());
        true
    }

    /// Adds `docs` for `peer`; false if `peer` is no longer tracked.
    fn add(&self, peer: PeerId, docs: &[DocId]) -> bool {
        let mut inner = self.lock();
        inner.stamp += 1;
        let stamp = inner.stamp;
        let Some(set) = inner.peers.get_mut(&peer) else {
            return false;
        };
        set.extend(docs.iter().map(|doc| (*doc, stamp)));
        true
    }

    fn candidates(&self, peer: PeerId) -> Option<Vec<(DocId, u64)>> {
        let inner = self.lock();
        let set = inner.peers.get(&peer)?;
        Some(set.iter().map(|(doc, stamp)| (*doc, *stamp)).collect())
    }

    /// Drops the candidates checked and found acknowledged, unless added again since.
    fn drop_checked(&self, peer: PeerId, checked: &[(DocId, u64)]) {
        let mut inner = self.lock();
        if let Some(set) = inner.peers.get_mut(&peer) {
            for (doc, stamp) in checked {
                if set.get(doc) == Some(stamp) {
                    set.remove(doc);
                }
            }
        }
    }
}

impl Store {
    /// The documents `peer` may read that hold changes it has not acknowledged, in id order,
    /// each with its [`DocSyncStatus`]: [`Store::sync_status`] of every such document, and of
    /// none that is in sync.
    ///
    /// The first call for a peer reads the sync record of every document it may read; later
    /// calls check only the documents that changed, or whose sync with the peer did, since
    /// the previous call (a change to peers or grants starts over). No document is loaded
    /// unless the peer acknowledged heads other than this replica's.
    ///
    /// # Examples
    ///
    /// ```
    /// use ferry_store::{Access, DocKind, PeerId, PeerInfo, SpaceId, Store};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path())?;
    /// let peer = PeerId::from_bytes([1; 16]);
    /// store.put_peer(&PeerInfo::new(peer, "laptop"))?;
    /// store.grant(peer, SpaceId::DEFAULT, Access::ReadWrite)?;
    /// let reads = store.create(DocKind::GCounter)?;
    /// store.increment(reads, 2)?;
    /// let waiting = store.unacked(peer)?;
    /// assert_eq!(waiting.len(), 1);
    /// assert_eq!(waiting[0].0, reads);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn unacked(&self, peer: PeerId) -> Result<Vec<(DocId, DocSyncStatus)>, StoreError> {
        let index = &self.shared.unacked;
        loop {
            if index.track(peer) {
                let readable = self.docs_readable_by(peer)?;
                if !index.add(peer, &readable) {
                    continue; // peers or grants changed meanwhile: list again
                }
            }
            let Some(candidates) = index.candidates(peer) else {
                continue;
            };
            let mut waiting = Vec::new();
            let mut settled = Vec::new();
            for (doc, stamp) in candidates {
                // A sync record may be written for a document the peer may not read (an
                // acknowledgement that raced a revocation): such a candidate is dropped.
                let status = self.sync_status(peer, doc).and_then(|status| {
                    let readable = self.access(peer, doc)? >= crate::Access::Read;
                    Ok(DocSyncStatus {
                        pending: if readable { status.pending } else { 0 },
                        ..status
                    })
                });
                match status {
                    Ok(status) if status.pending > 0 => waiting.push((doc, status)),
                    Ok(_) => settled.push((doc, stamp)),
                    // Deleted or forgotten here: nothing to send. Damaged: not synced, so not
                    // this question's to count.
                    Err(StoreError::NoSuchDocument(_) | StoreError::Damaged { .. }) => {
                        settled.push((doc, stamp));
                    }
                    Err(e) => return Err(e),
                }
            }
            index.drop_checked(peer, &settled);
            return Ok(waiting);
        }
    }
}
