//! What sync has learned per (peer, document): acknowledged versions, sync times, status.

use crate::loading::read_doc_record;
use automerge::{Automerge, ChangeHash, ReadDoc};

use crate::records;
use crate::store::{Store, encode_record};
use crate::{DocId, DocSyncStatus, PeerId, StoreError, SyncRecord, Version};

/// What one step of sync learned about a (peer, document) pair; see [`Store::record_sync`].
#[derive(Clone, Debug, Default, Eq, PartialEq)]
pub struct SyncUpdate {
    /// The automerge sync state to keep for the peer.
    pub automerge_state: Option<Vec<u8>>,
    /// A version the peer said it holds.
    pub acked: Option<Version>,
    /// The time, when the peer now holds everything this replica has of the document.
    pub synced_at: Option<u64>,
}

/// Those of `heads` that `am` holds.
pub(crate) fn known_heads(am: &Automerge, heads: &[ChangeHash]) -> Vec<ChangeHash> {
    let missing = am.get_missing_deps(heads);
    heads
        .iter()
        .filter(|h| !missing.contains(h))
        .copied()
        .collect()
}

/// Whether two lists of heads name the same set of changes.
fn same_heads(a: &[ChangeHash], b: &[ChangeHash]) -> bool {
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    a.sort_unstable();
    b.sort_unstable();
    a == b
}

impl Store {
    /// How far sync with `peer` has come on `doc`, if it ever started.
    pub fn sync_record(&self, peer: PeerId, doc: DocId) -> Result<Option<SyncRecord>, StoreError> {
        read_doc_record(
            &self.shared.db,
            &records::sync_key(peer, doc),
            doc,
            "sync record",
        )
    }

    /// Saves how far sync with `peer` has come on `doc`. Not flushed on its own: losing it in
    /// a crash costs a longer next sync, never data. Nothing is written for a peer removed
    /// since the store opened (a sync step still running when it was removed), unless it was
    /// added again.
    pub fn put_sync_record(
        &self,
        peer: PeerId,
        doc: DocId,
        record: &SyncRecord,
    ) -> Result<(), StoreError> {
        let removed = self.removed_peers();
        if removed.contains(&peer) {
            return Ok(());
        }
        self.shared
            .db
            .insert(records::sync_key(peer, doc), encode_record(record))?;
        // What the peer acknowledged changed: checked at the next question.
        self.shared.unacked.changed(doc, &[peer]);
        Ok(())
    }

    /// Records what sync with `peer` learned about `doc`, in one write. Not flushed on its own:
    /// losing it in a crash costs a longer next sync and a stale status, never data.
    ///
    /// An acknowledged [`Version::Heads`] may name changes this replica does not hold yet (the
    /// peer's own); the pending count covers the history of those it does hold.
    pub fn record_sync(
        &self,
        peer: PeerId,
        doc: DocId,
        update: SyncUpdate,
    ) -> Result<(), StoreError> {
        // An update that sets every field needs nothing of the record it replaces.
        let whole = update.automerge_state.is_some()
            && matches!(&update.acked, Some(Version::Heads(h)) if !h.is_empty())
            && update.synced_at.is_some();
        let mut record = if whole {
            SyncRecord::default()
        } else {
            self.sync_record(peer, doc)?.unwrap_or_default()
        };
        if let Some(state) = update.automerge_state {
            record.automerge_state = state;
        }
        match update.acked {
            None => {}
            // No heads is no acknowledgement: an empty document has nothing to hold.
            Some(Version::Heads(heads)) if heads.is_empty() => record.acked = None,
            Some(Version::Heads(heads)) => {
                let info = self.info(doc)?;
                record.acked_changes = if info.version == Version::Heads(heads.clone()) {
                    info.changes // the usual case, known without loading the document
                } else {
                    self.read(doc, |am| {
                        let known = known_heads(am, &heads);
                        let total = am.stats().num_changes;
                        total.saturating_sub(am.get_changes_meta(&known).len() as u64)
                    })?
                };
                record.acked = Some(Version::Heads(heads));
            }
            Some(Version::Digest(digest)) => {
                let info = self.info(doc)?;
                if info.digest == digest {
                    record.acked_changes = info.changes;
                }
                record.acked = Some(Version::Digest(digest));
            }
        }
        if update.synced_at.is_some() {
            record.last_sync_millis = update.synced_at;
        }
        self.put_sync_record(peer, doc, &record)
    }

    /// How far `peer` is behind on `doc`: the changes it has not acknowledged, and when it was
    /// last seen to hold all of the document.
    ///
    /// # Examples
    ///
    /// ```
    /// use ferry_store::{DocKind, PeerId, Store};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path())?;
    /// let doc = store.create(DocKind::GCounter)?;
    /// store.increment(doc, 1)?;
    /// let peer = PeerId::from_bytes([1; 16]);
    /// let status = store.sync_status(peer, doc)?;
    /// assert_eq!(status.pending, 1); // never synced: everything is pending
    /// assert_eq!(status.last_sync_millis, None);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn sync_status(&self, peer: PeerId, doc: DocId) -> Result<DocSyncStatus, StoreError> {
        let (pending, record) = self.pending_with_record(peer, doc)?;
        // A document the peer held at the last completed reconciliation was in sync then.
        let reconciled = self.reconciled(peer)?;
        let last_sync_millis = match (pending, record.last_sync_millis, reconciled) {
            (0, Some(at), Some(r)) => Some(at.max(r)),
            (_, at, _) => at,
        };
        Ok(DocSyncStatus {
            pending,
            last_sync_millis,
        })
    }

    /// Whether `peer` has acknowledged holding exactly this replica's version of `doc`:
    /// [`Store::sync_status`]'s `pending == 0`, answered from the stored heads or digest
    /// alone, without loading the document or counting changes.
    ///
    /// # Examples
    ///
    /// ```
    /// use ferry_store::{DocKind, PeerId, Store};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path())?;
    /// let doc = store.create(DocKind::GCounter)?;
    /// assert!(!store.is_in_sync(PeerId::from_bytes([1; 16]), doc)?); // never synced
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_in_sync(&self, peer: PeerId, doc: DocId) -> Result<bool, StoreError> {
        let info = self.info(doc)?;
        let record = self.sync_record(peer, doc)?.unwrap_or_default();
        Ok(match (&info.version, &record.acked) {
            (Version::Heads(heads), Some(Version::Heads(acked))) => same_heads(heads, acked),
            (Version::Digest(digest), Some(Version::Digest(acked))) => digest == acked,
            _ => false,
        })
    }

    fn pending_with_record(
        &self,
        peer: PeerId,
        doc: DocId,
    ) -> Result<(u64, SyncRecord), StoreError> {
        let info = self.info(doc)?;
        let record = self.sync_record(peer, doc)?.unwrap_or_default();
        let pending = match (&info.version, &record.acked) {
            (Version::Heads(_), None) => info.changes,
            (Version::Heads(heads), Some(Version::Heads(acked))) => {
                if same_heads(heads, acked) {
                    0
                } else {
                    // The peer acknowledged other heads: count, in the document, the changes
                    // outside the history of the acknowledged heads held here. (The count kept
                    // with the acknowledgement is stale once changes it lacked arrive from
                    // elsewhere.)
                    self.read(doc, |am| {
                        am.get_changes_meta(&known_heads(am, acked)).len() as u64
                    })?
                }
            }
            (Version::Digest(digest), Some(Version::Digest(acked))) if digest == acked => 0,
            // A state never acknowledged, or since changed: at least one change is pending.
            _ => info.changes.saturating_sub(record.acked_changes).max(1),
        };
        Ok((pending, record))
    }

    /// Whether `peer` has acknowledged holding `change` of an Automerge document: whether the
    /// change is in the history of the heads the peer last acknowledged. A change this replica
    /// does not hold is not acknowledged.
    ///
    /// # Examples
    ///
    /// ```
    /// use automerge::{ROOT, transaction::Transactable};
    /// use ferry_store::{DocKind, PeerId, Store};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path())?;
    /// let chat = store.create(DocKind::Automerge)?;
    /// store.change(chat, |tx| tx.put(ROOT, "hi", "there"))?;
    /// let sent = store.read(chat, |d| d.get_heads())?[0];
    /// let peer = PeerId::from_bytes([2; 16]);
    /// assert!(!store.acknowledged(peer, chat, sent)?); // still pending for that peer
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn acknowledged(
        &self,
        peer: PeerId,
        doc: DocId,
        change: ChangeHash,
    ) -> Result<bool, StoreError> {
        let Some(Version::Heads(acked)) = self.sync_record(peer, doc)?.and_then(|r| r.acked) else {
            return Ok(false);
        };
        self.read(doc, |am| {
            if !am.get_missing_deps(&[change]).is_empty() {
                return false;
            }
            let known = known_heads(am, &acked);
            !am.get_changes_meta(&known).iter().any(|c| c.hash == change)
        })
    }

    /// Records that a sync session with `peer` finished reconciling at `now_millis`: every
    /// document the peer may read was compared.
    pub fn set_reconciled(&self, peer: PeerId, now_millis: u64) -> Result<(), StoreError> {
        let removed = self.removed_peers();
        if removed.contains(&peer) {
            return Ok(());
        }
        self.shared
            .db
            .insert(records::reconciled_key(peer), &now_millis.to_le_bytes())?;
        Ok(())
    }

    /// When a sync session with `peer` last finished reconciling, if ever.
    pub fn reconciled(&self, peer: PeerId) -> Result<Option<u64>, StoreError> {
        match self.shared.db.get(records::reconciled_key(peer))? {
            None => Ok(None),
            Some(bytes) => <[u8; 8]>::try_from(bytes.as_ref())
                .map(|b| Some(u64::from_le_bytes(b)))
                .map_err(|_| StoreError::DamagedRecord {
                    what: "reconciliation time",
                }),
        }
    }
}
