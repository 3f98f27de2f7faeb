//! Automerge documents: changes since a version the peer holds (`Changes`), and, when what the
//! peer holds is unclear, automerge's own sync protocol seeded with shared heads (`Heads`,
//! `Sync`).

use automerge::sync::{self, SyncDoc};
use automerge::{Automerge, ChangeHash, ReadDoc};
use ferry_store::{DocId, DocKind, Origin, StoreError, Version, heads_digest};

use super::chunks::{frontier, guarded, parse_changes, validate_changes};
use super::peer_doc::PeerDoc;
use super::{Event, Session, SessionError};
use crate::message::{ErrorCode, Message};
use crate::reconcile::{Entry, ShortDigest, short};

/// At most this many ancestors go into a `Heads` message (depths 1, 2, 4, ... 1024).
const ANCESTOR_DEPTHS: u32 = 11;

/// At most this many heads in a `Heads` or `Changes` message.
const MAX_HEADS: usize = 1024;

/// Changes since the last acknowledged version are pushed on a guess (both sides changed since)
/// only up to this many bytes; beyond it automerge's sync finds what the peer lacks.
const GUESS_BYTES: usize = 8 * 1024;

/// What [`Session::send_changes_since`] could do.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub(super) enum Pushed {
    /// Changes went out.
    Sent,
    /// The peer already holds everything.
    Nothing,
    /// What the peer lacks is unknown (some heads it holds are not here), or a guess at it
    /// was too large.
    Unknown,
}

/// A document new to the peer is pushed whole when it stores at most this many bytes.
const NEW_DOC_WHOLE_BYTES: u64 = 64 * 1024;

impl Session {
    /// Starts syncing an Automerge document both sides hold with different digests.
    pub(super) fn start_automerge_sync(
        &mut self,
        mine: &Entry,
        theirs: ShortDigest,
    ) -> Result<(), SessionError> {
        let doc = mine.doc;
        if let Some(acked) = self.acked_heads(doc)? {
            // The peer's digest is the version it last acknowledged: it holds exactly those
            // heads, so what came since is what it lacks.
            let exact = short(heads_digest(&acked).as_bytes()) == theirs;
            // Otherwise it holds those heads and more: what came here since is a guess, which
            // may repeat changes it got elsewhere, so only a small guess is worth sending.
            let limit = if exact { None } else { Some(GUESS_BYTES) };
            if self.send_changes_since(doc, &acked, limit)? == Pushed::Sent {
                self.peer_doc(doc).peer_heads = Some(acked);
                return Ok(());
            }
        }
        if mine.acked {
            // This side has nothing new since the peer acknowledged it: saying which version
            // it holds lets the peer send what came since.
            self.send(&Message::Ack {
                doc,
                digest: mine.digest,
            });
            return Ok(());
        }
        self.send_heads(doc)
    }

    /// Pushes a local change: changes since what the peer holds if that is known, else
    /// automerge's sync.
    pub(super) fn push_changes(&mut self, doc: DocId) -> Result<(), SessionError> {
        // (Read without making an entry: an entry is what says the session has dealt with
        // the document, below.)
        if let Some(base) = self.docs.get(&doc).and_then(PeerDoc::peer_has) {
            match self.send_changes_since(doc, &base, None)? {
                Pushed::Sent | Pushed::Nothing => return Ok(()),
                Pushed::Unknown => {}
            }
        } else if !self.docs.contains_key(&doc)
            && let Some(acked) = self.acked_heads(doc)?
        {
            // Not dealt with in this session (or forgotten since, see `forget_idle`), but
            // acknowledged before: the peer holds at least those heads, and maybe more from
            // elsewhere, so a small push of what came since is a good guess.
            match self.send_changes_since(doc, &acked, Some(GUESS_BYTES))? {
                Pushed::Sent => {
                    self.peer_doc(doc).peer_heads = Some(acked);
                    return Ok(());
                }
                Pushed::Nothing => return Ok(()),
                Pushed::Unknown => {}
            }
        }
        if self.is_new_to_peer(doc)? {
            // Most likely a document the peer has never seen (made here, or just arrived from
            // another peer): sent whole, as in a clone, rather than after a round of heads and
            // a `Want`. Should the peer hold it after all, it merges it.
            self.backlog.insert(doc);
            self.send(&Message::Pushing { docs: vec![doc] });
            return Ok(());
        }
        self.push_automerge(doc)
    }

    /// Whether nothing suggests the peer holds `doc`: this session has not dealt with it, the
    /// store records nothing of the peer and it, and it is small enough that sending it whole
    /// costs little if that guess is wrong.
    fn is_new_to_peer(&self, doc: DocId) -> Result<bool, SessionError> {
        if self.docs.contains_key(&doc) || self.store.sync_record(self.peer, doc)?.is_some() {
            return Ok(false);
        }
        Ok(self.store.info(doc)?.stored_bytes <= NEW_DOC_WHOLE_BYTES)
    }

    /// Sends the changes a peer holding `base` lacks, with this side's heads, if every head in
    /// `base` is held here and the changes come to at most `limit` bytes.
    pub(super) fn send_changes_since(
        &mut self,
        doc: DocId,
        base: &[ChangeHash],
        limit: Option<usize>,
    ) -> Result<Pushed, SessionError> {
        let found = self.store.read(doc, |am| {
            if !am.get_missing_deps(base).is_empty() {
                return None;
            }
            let changes = am.get_changes(base);
            let heads = am.get_heads();
            let implied = frontier(&changes) == heads;
            let raw: Vec<Vec<u8>> = changes.iter().map(|c| c.raw_bytes().to_vec()).collect();
            Some((heads, implied, raw))
        })?;
        let Some((heads, implied, changes)) = found else {
            return Ok(Pushed::Unknown);
        };
        if changes.is_empty() {
            return Ok(Pushed::Nothing);
        }
        if limit.is_some_and(|limit| changes.iter().map(Vec::len).sum::<usize>() > limit) {
            return Ok(Pushed::Unknown);
        }
        self.send(&Message::Changes {
            doc,
            heads: if implied {
                Vec::new()
            } else {
                heads.iter().map(|h| h.0).collect()
            },
            changes,
        });
        self.peer_doc(doc).sent_heads = Some(heads);
        Ok(Pushed::Sent)
    }

    pub(super) fn on_changes(
        &mut self,
        doc: DocId,
        heads: &[[u8; 32]],
        changes: &[Vec<u8>],
    ) -> Result<(), SessionError> {
        if heads.len() > MAX_HEADS {
            return Err(SessionError::Protocol("too many heads"));
        }
        match self.visible_kind(doc)? {
            None => return self.offered(doc, None),
            Some(DocKind::Automerge) => {}
            Some(_) => return Err(SessionError::Protocol("changes for a crdt document")),
        }
        let mut theirs: Vec<ChangeHash> = heads.iter().map(|h| ChangeHash(*h)).collect();
        if !changes.is_empty() {
            let parsed = parse_changes(changes)?;
            if theirs.is_empty() {
                theirs = frontier(&parsed);
            }
            if !self.may_write(doc)? {
                self.send(&Message::Refused {
                    doc,
                    code: ErrorCode::ReadOnly,
                });
                // The peer may still read: automerge's sync, with this side's state marked
                // read-only, gives it what it lacks without asking for its changes.
                return self.push_automerge(doc);
            }
            let before = self.store.info(doc)?.version;
            match self
                .store
                .apply_changes(doc, Origin::Remote(self.peer), parsed)
            {
                Ok(_) => {}
                // The peer misjudged what this side holds: automerge's sync works it out.
                Err(StoreError::MissingDependencies { .. }) => return self.fallback(doc),
                Err(StoreError::Automerge { .. } | StoreError::AutomergePanicked { .. }) => {
                    return Err(SessionError::Protocol("changes automerge refuses"));
                }
                Err(e) => return Err(e.into()),
            }
            if self.store.info(doc)?.version != before {
                self.events.push_back(Event::DocUpdated { doc });
            }
        }
        self.answer_heads(doc, theirs)
    }

    /// The peer holds `theirs`. If this side holds the same, acknowledge; if it holds more and
    /// knows every head of theirs, send what the peer lacks; else let automerge's sync work it
    /// out.
    pub(super) fn answer_heads(
        &mut self,
        doc: DocId,
        mut theirs: Vec<ChangeHash>,
    ) -> Result<(), SessionError> {
        theirs.sort_unstable();
        theirs.dedup();
        // The usual answer, known from the stored metadata without loading the document: the
        // same heads.
        if let Version::Heads(mut mine) = self.store.info(doc)?.version {
            mine.sort_unstable();
            if mine == theirs {
                self.send(&Message::Ack {
                    doc,
                    digest: short(heads_digest(&mine).as_bytes()),
                });
                return self.peer_in_sync(doc, Version::Heads(mine));
            }
        }
        let (mine, all_known) = self.store.read(doc, |am| {
            (am.get_heads(), am.get_missing_deps(&theirs).is_empty())
        })?;
        if !all_known {
            return self.fallback(doc);
        }
        if mine == theirs {
            self.send(&Message::Ack {
                doc,
                digest: short(heads_digest(&mine).as_bytes()),
            });
            return self.peer_in_sync(doc, Version::Heads(mine));
        }
        self.peer_holds(doc, theirs.clone(), None)?;
        if self.peer_doc(doc).refused {
            return Ok(()); // the peer takes nothing more of this document from this side
        }
        self.send_changes_since(doc, &theirs, None).map(drop)
    }

    /// What the peer holds is unclear: forget the guesses and run automerge's sync.
    pub(super) fn fallback(&mut self, doc: DocId) -> Result<(), SessionError> {
        self.sync_state(doc)?;
        let known = self.peer_doc(doc);
        known.forget_guesses();
        if known.heads_sent {
            self.generate(doc)
        } else {
            self.send_heads(doc)
        }
    }

    /// The session's automerge sync state for `doc`, loaded from the store on first use.
    pub(super) fn sync_state(&mut self, doc: DocId) -> Result<&mut sync::State, SessionError> {
        if self.peer_doc(doc).sync.is_none() {
            let record = match self.store.sync_record(self.peer, doc) {
                Ok(record) => record,
                Err(StoreError::Damaged { .. }) => None,
                Err(e) => return Err(e.into()),
            };
            let mut state = record
                .and_then(|r| sync::State::decode(&r.automerge_state).ok())
                .unwrap_or_default();
            if let Some(heads) = self.peer_doc(doc).shared_on_load.take() {
                state.shared_heads = heads;
            }
            // Changes from a peer that may not write are neither wanted nor stored: automerge
            // tells the peer so, and it sends none.
            state.set_read_only(!self.may_write(doc)?);
            self.peer_doc(doc).sync = Some(state);
        }
        Ok(self.peer_doc(doc).sync.get_or_insert_default())
    }

    fn send_heads(&mut self, doc: DocId) -> Result<(), SessionError> {
        let (heads, ancestors) = self.store.read(doc, |am| {
            let heads = am.get_heads();
            let ancestors = heads.first().map(|h| ancestors(am, *h)).unwrap_or_default();
            (heads, ancestors)
        })?;
        self.peer_doc(doc).heads_sent = true;
        self.send(&Message::Heads {
            doc,
            heads: heads.iter().map(|h| h.0).collect(),
            ancestors: ancestors.iter().map(|h| h.0).collect(),
        });
        Ok(())
    }

    pub(super) fn on_heads(
        &mut self,
        doc: DocId,
        heads: &[[u8; 32]],
        ancestors: &[[u8; 32]],
    ) -> Result<(), SessionError> {
        if heads.len() > MAX_HEADS || ancestors.len() > ANCESTOR_DEPTHS as usize {
            return Err(SessionError::Protocol("too many heads"));
        }
        match self.visible_kind(doc)? {
            None => return self.offered(doc, None),
            Some(DocKind::Automerge) => {}
            Some(_) => return Err(SessionError::Protocol("heads for a crdt document")),
        }
        let candidates: Vec<ChangeHash> = heads
            .iter()
            .chain(ancestors)
            .map(|h| ChangeHash(*h))
            .collect();
        let shared: Vec<ChangeHash> = self.store.read(doc, |am| {
            let missing = am.get_missing_deps(&candidates);
            candidates
                .into_iter()
                .filter(|h| !missing.contains(h))
                .collect()
        })?;
        let state = self.sync_state(doc)?;
        let mut seeded = state.shared_heads.clone();
        seeded.extend(shared);
        seeded.sort_unstable();
        seeded.dedup();
        state.shared_heads = seeded;
        if !self.peer_doc(doc).heads_sent {
            self.send_heads(doc)?;
        }
        self.generate(doc)
    }

    pub(super) fn push_automerge(&mut self, doc: DocId) -> Result<(), SessionError> {
        let seeded = !self.sync_state(doc)?.shared_heads.is_empty();
        if !seeded && !self.peer_doc(doc).heads_sent {
            // Nothing known in common yet: let the peer seed first.
            return self.send_heads(doc);
        }
        self.generate(doc)
    }

    fn generate(&mut self, doc: DocId) -> Result<(), SessionError> {
        let mut state = std::mem::take(self.sync_state(doc)?);
        let message = self
            .store
            .read(doc, |am| am.generate_sync_message(&mut state))?;
        self.peer_doc(doc).sync = Some(state);
        if let Some(message) = message {
            self.send(&Message::Sync {
                doc,
                message: message.encode(),
            });
        }
        Ok(())
    }

    pub(super) fn on_sync(&mut self, doc: DocId, bytes: &[u8]) -> Result<(), SessionError> {
        match self.visible_kind(doc)? {
            None => return self.offered(doc, None),
            Some(DocKind::Automerge) => {}
            Some(_) => return Err(SessionError::Protocol("a sync message for a crdt document")),
        }
        let message = guarded(|| sync::Message::decode(bytes).ok()).ok_or(
            SessionError::Protocol("a sync message that does not decode"),
        )?;
        if !message.changes.is_empty() {
            if !self.may_write(doc)? {
                self.send(&Message::Refused {
                    doc,
                    code: ErrorCode::ReadOnly,
                });
                return Ok(());
            }
            for chunk in message.changes.iter() {
                validate_changes(chunk, self.store.limits())?;
            }
        }
        let mut their_heads = message.heads.clone();
        their_heads.sort_unstable();
        let mut state = std::mem::take(self.sync_state(doc)?);
        let before = self.store.info(doc)?.version;
        let received = self.store.update(doc, Origin::Remote(self.peer), |am| {
            am.receive_sync_message(&mut state, message)?;
            Ok(am.get_heads())
        });
        let heads = match received {
            Ok(heads) => heads,
            Err(e) => {
                // Reloaded from the sync record on next use.
                self.peer_doc(doc).sync = None;
                if matches!(e, StoreError::AutomergePanicked { .. }) {
                    return Err(SessionError::Protocol("a sync message automerge fails on"));
                }
                return Err(e.into());
            }
        };
        self.peer_doc(doc).sync = Some(state);
        if self.store.info(doc)?.version != before {
            self.events.push_back(Event::DocUpdated { doc });
        }
        // The peer's heads are what it acknowledges holding.
        if heads == their_heads {
            self.peer_in_sync(doc, Version::Heads(heads))?;
        } else {
            let encoded = self.sync_state(doc)?.encode();
            self.peer_holds(doc, their_heads, Some(encoded))?;
        }
        self.generate(doc)
    }
}

/// Ancestors of `head` along first dependencies, at depths 1, 2, 4, ... 1024.
fn ancestors(am: &Automerge, head: ChangeHash) -> Vec<ChangeHash> {
    let mut out = Vec::new();
    let mut current = head;
    let mut depth = 0u32;
    let mut next_mark = 1u32;
    while out.len() < ANCESTOR_DEPTHS as usize {
        let Some(meta) = am.get_change_meta_by_hash(&current) else {
            break;
        };
        let Some(parent) = meta.deps.first().copied() else {
            break;
        };
        current = parent;
        depth += 1;
        if depth == next_mark {
            out.push(current);
            next_mark *= 2;
        }
    }
    out
}
