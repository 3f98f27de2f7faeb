//! Documents of the ferry-crdt kinds: counters and registers, and merging a peer's state.

use ferry_crdt::{Clock, Digest, GCounter, PNCounter, ReplicaId};

use crate::loading::entry_in;
use crate::loading::{CRDT_COMPACT_MIN, crdt_compaction};
use crate::records::{self, Incremental};
use crate::store::{
    Commit, DELTAS_PER_DOC, Delta, Loaded, State, Store, Writes, encode_record, wrong_kind,
};
use crate::{CrdtState, DocId, DocKind, Origin, StoreError, Version, wall_millis};

impl Store {
    // ---- ferry-crdt documents ----------------------------------------------------------------

    /// Adds `n` to a [`GCounter`] or [`PNCounter`] document on this replica's behalf.
    pub fn increment(&self, doc: DocId, n: u64) -> Result<Digest, StoreError> {
        self.update_crdt(doc, |state, replica, _| match state {
            CrdtState::GCounter(c) => Ok(c.increment(replica, n)? != GCounter::new()),
            CrdtState::PNCounter(c) => Ok(c.increment(replica, n)? != PNCounter::new()),
            other => Err(KindOr::Kind(other.kind())),
        })
        .map_err(|e| e.expecting(&[DocKind::GCounter, DocKind::PNCounter]))
    }

    /// Subtracts `n` from a [`PNCounter`] document on this replica's behalf.
    pub fn decrement(&self, doc: DocId, n: u64) -> Result<Digest, StoreError> {
        self.update_crdt(doc, |state, replica, _| match state {
            CrdtState::PNCounter(c) => Ok(c.decrement(replica, n)? != PNCounter::new()),
            other => Err(KindOr::Kind(other.kind())),
        })
        .map_err(|e| e.expecting(DocKind::PNCounter.alone()))
    }

    /// Writes a register document ([`LwwRegister`](ferry_crdt::LwwRegister) or [`MvRegister`](ferry_crdt::MvRegister)).
    pub fn set_register(&self, doc: DocId, value: Vec<u8>) -> Result<Digest, StoreError> {
        self.update_crdt(doc, |state, replica, clock| match state {
            CrdtState::LwwRegister(r) => {
                r.set(value, clock, wall_millis());
                Ok(true)
            }
            CrdtState::MvRegister(r) => {
                r.set(replica, value)?;
                Ok(true)
            }
            other => Err(KindOr::Kind(other.kind())),
        })
        .map_err(|e| e.expecting(&[DocKind::LwwRegister, DocKind::MvRegister]))
    }

    /// Merges a state or delta from a peer (its canonical encoding) into a CRDT document.
    /// Returns the new digest. Bytes that do not decode change nothing.
    pub fn merge_state(
        &self,
        doc: DocId,
        origin: Origin,
        bytes: &[u8],
    ) -> Result<Digest, StoreError> {
        let kind = self.info(doc)?.kind;
        if kind == DocKind::Automerge {
            return Err(wrong_kind(doc, &DocKind::CRDTS, kind));
        }
        let incoming = CrdtState::decode(kind, bytes)
            .map_err(|source| StoreError::BadState { doc, source })?;
        self.update_crdt_from(doc, origin, |state, _, _| Ok(state.merge_owned(incoming)))
            .map_err(|e| e.expecting(kind.alone()))
    }

    /// What a peer that holds the version `since` of a counter needs to reach the version
    /// here, smaller than the whole state: the join of the deltas of the changes made since
    /// (here, or merged from peers), with the digest it leads to. `None` when those changes are
    /// not all among the last few kept, or `doc` is not a counter: then send the whole state.
    ///
    /// # Examples
    ///
    /// ```
    /// use ferry_store::{CrdtState, DocKind, Store};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path())?;
    /// let reads = store.create(DocKind::GCounter)?;
    /// let seen = store.increment(reads, 5)?;
    /// let now = store.increment(reads, 1)?;
    /// let (delta, leads_to) = store.crdt_delta(reads, seen)?.unwrap();
    /// assert_eq!(leads_to, now);
    /// let CrdtState::GCounter(delta) = delta else { unreachable!() };
    /// assert_eq!(delta.value(), 6); // this replica's entry alone
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn crdt_delta(
        &self,
        doc: DocId,
        since: Digest,
    ) -> Result<Option<(CrdtState, Digest)>, StoreError> {
        let mut state = self.lock();
        let current = Digest::from_bytes(self.entry(&mut state, doc)?.meta.digest);
        let Some(log) = state.deltas.get(&doc) else {
            return Ok(None);
        };
        let Some(start) = log.iter().position(|d| d.before == since) else {
            return Ok(None);
        };
        let mut joined: Option<CrdtState> = None;
        let mut at = since;
        for step in log.iter().skip(start) {
            if step.before != at {
                return Ok(None); // a change not logged lies between
            }
            match &mut joined {
                None => joined = Some(step.delta.clone()),
                Some(j) => {
                    j.merge_owned(step.delta.clone());
                }
            }
            at = step.after;
        }
        Ok(joined.filter(|_| at == current).map(|d| (d, at)))
    }

    /// A copy of a CRDT document's state.
    pub fn crdt(&self, doc: DocId) -> Result<CrdtState, StoreError> {
        let mut state = self.lock();
        let entry = self.entry(&mut state, doc)?;
        match &entry.doc {
            Loaded::Crdt(crdt) => Ok(crdt.clone()),
            Loaded::Automerge(_) => Err(wrong_kind(doc, &DocKind::CRDTS, DocKind::Automerge)),
        }
    }

    pub(crate) fn update_crdt(
        &self,
        doc: DocId,
        f: impl FnOnce(&mut CrdtState, ReplicaId, &mut Clock) -> Result<bool, KindOr>,
    ) -> Result<Digest, CrdtUpdateError> {
        self.update_crdt_from(doc, Origin::Local, f)
    }

    pub(crate) fn update_crdt_from(
        &self,
        doc: DocId,
        origin: Origin,
        f: impl FnOnce(&mut CrdtState, ReplicaId, &mut Clock) -> Result<bool, KindOr>,
    ) -> Result<Digest, CrdtUpdateError> {
        let replica = self.replica_id();
        let mut state = self.lock();
        let State {
            cache,
            clock,
            deltas,
        } = &mut *state;
        let entry = entry_in(cache, (&self.shared.db, &self.shared.dir), replica, doc)?;
        let Loaded::Crdt(crdt) = &mut entry.doc else {
            return Err(CrdtUpdateError::Kind(doc, DocKind::Automerge));
        };
        let mut updated = crdt.clone();
        let changed = match f(&mut updated, replica, clock) {
            Ok(changed) => changed,
            Err(KindOr::Kind(found)) => return Err(CrdtUpdateError::Kind(doc, found)),
            Err(KindOr::Overflow(e)) => return Err(CrdtUpdateError::Store(e.into())),
        };
        if !changed {
            return Ok(Digest::from_bytes(entry.meta.digest));
        }
        let bytes = updated.encode();
        let digest = Digest::of_bytes(&bytes);
        if let Some(delta) = updated.delta_from(crdt) {
            let log = deltas.get_or_insert_mut(doc, std::collections::VecDeque::new);
            if log.len() >= DELTAS_PER_DOC {
                log.pop_front();
            }
            log.push_back(Delta {
                before: Digest::from_bytes(entry.meta.digest),
                after: digest,
                delta,
            });
        }
        // One record per update: the delta (a register's whole state, which is small), with
        // the metadata after it. Loading merges the snapshot and every delta since, in any
        // order, since merging is a join; once the deltas outgrow the snapshot, they are
        // folded into a new one.
        let chunk = match updated.delta_from(crdt) {
            Some(delta) => delta.encode(),
            None => bytes.clone(),
        };
        let mut meta = entry.meta.clone();
        meta.digest = *digest.as_bytes();
        meta.changes += 1;
        let writes = if meta.incremental_bytes + chunk.len() as u64
            > meta.snapshot_bytes.max(CRDT_COMPACT_MIN)
        {
            Writes::Batch(crdt_compaction(&self.shared.db, doc, bytes, &mut meta)?)
        } else {
            let key = records::incremental_key(doc, meta.next_incremental);
            meta.next_incremental += 1;
            meta.incremental_bytes += chunk.len() as u64;
            let record = Incremental {
                meta: meta.clone(),
                changes: chunk,
            };
            Writes::One(key.to_vec(), encode_record(&record))
        };
        *crdt = updated;
        entry.meta = meta;
        let space = entry.space;
        let commit = Commit::changed(writes, (doc, space), origin, Version::Digest(digest));
        self.commit(state, doc, commit)?;
        Ok(digest)
    }
}
/// Why a CRDT operation's closure did not apply.
pub(crate) enum KindOr {
    Kind(DocKind),
    Overflow(ferry_crdt::CounterOverflow),
}

impl From<ferry_crdt::CounterOverflow> for KindOr {
    fn from(e: ferry_crdt::CounterOverflow) -> Self {
        KindOr::Overflow(e)
    }
}

pub(crate) enum CrdtUpdateError {
    Kind(DocId, DocKind),
    Store(StoreError),
}

impl From<StoreError> for CrdtUpdateError {
    fn from(e: StoreError) -> Self {
        CrdtUpdateError::Store(e)
    }
}

impl CrdtUpdateError {
    pub(crate) fn expecting(self, expected: &'static [DocKind]) -> StoreError {
        match self {
            CrdtUpdateError::Kind(doc, found) => wrong_kind(doc, expected, found),
            CrdtUpdateError::Store(e) => e,
        }
    }
}
