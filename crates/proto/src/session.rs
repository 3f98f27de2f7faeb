//! A sync session with one peer, as a state machine: frames in, frames and events out.

use std::collections::{HashMap, HashSet, VecDeque};

use automerge::sync::{self, SyncDoc};
use automerge::{Automerge, AutomergeError, ChangeHash, LoadOptions, OnPartialLoad};
use ferry_crdt::{Digest, GCounter, LwwRegister, MvRegister, PNCounter, decode};
use ferry_store::{Access, DocId, DocKind, Origin, PeerId, Store, StoreError, SyncRecord};

use crate::message::{
    DEFAULT_MAX_FRAME, ErrorCode, FrameError, Item, Message, PROTOCOL_VERSION, Prefix, Range,
    ShortDigest, short,
};

/// Which side of the connection this session is.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Role {
    /// The side that connected: it starts reconciliation.
    Initiator,
    /// The side that accepted.
    Responder,
}

/// How a session behaves.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// The largest frame accepted, after the length prefix. Default 16 MiB.
    pub max_frame: u32,
    /// A prefix holding at most this many documents is listed rather than split. Default 16.
    pub leaf: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            max_frame: DEFAULT_MAX_FRAME,
            leaf: 16,
        }
    }
}

/// What a session reports to its driver.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum Event {
    /// The peer's hello arrived: the session is open.
    Connected {
        /// The peer's protocol version.
        version: u32,
    },
    /// Data from the peer was stored in `doc`.
    DocUpdated {
        /// The document.
        doc: DocId,
    },
    /// The peer refused our changes to `doc`; the session goes on without them.
    Refused {
        /// The document.
        doc: DocId,
        /// Why.
        code: ErrorCode,
    },
    /// Reconciliation has finished: every document that differed has been found.
    Reconciled,
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// A frame could not be read.
    #[error("malformed frame")]
    Frame(#[from] FrameError),
    /// A frame broke the protocol: wrong order, bad content.
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    /// The peer speaks another version.
    #[error("the peer speaks protocol version {0}, this build speaks {PROTOCOL_VERSION}")]
    UnsupportedVersion(u32),
    /// The peer named a document it may not see.
    #[error("the peer named document {0}, which it may not see")]
    NoAccess(DocId),
    /// The store failed.
    #[error("store")]
    Store(#[from] StoreError),
    /// The peer ended the session with an error.
    #[error("the peer closed the session: {code:?}: {detail}")]
    Peer {
        /// Its code.
        code: ErrorCode,
        /// Its words.
        detail: String,
    },
    /// The session has ended; nothing more is accepted.
    #[error("the session is closed")]
    Closed,
}

#[derive(Clone, Copy, Debug, Eq, PartialEq)]
enum Phase {
    AwaitHello,
    Open,
    Closed,
}

/// One document as this side lists it for reconciliation.
#[derive(Clone, Debug)]
struct Entry {
    doc: DocId,
    kind: DocKind,
    digest: ShortDigest,
}

/// A sync session over a [`Store`] with one peer. It does no I/O, starts no threads, and
/// never reads a clock: the driver moves its frames and tells it the time.
///
/// # Call order
///
/// 1. [`Session::new`]; it queues this side's hello (and, for the initiator, the first
///    reconciliation frame).
/// 2. Repeatedly: send every frame [`Session::poll_transmit`] returns, in order; hand every frame
///    that arrives to [`Session::handle_frame`] (or stream bytes to [`Session::handle_bytes`]);
///    drain [`Session::poll_event`]. After each call that changes anything, poll again.
/// 3. When the store reports a change to a document (a local one, or one from another peer,
///    which is how changes relay), call [`Session::doc_changed`]; it queues what the peer needs.
/// 4. An error from `handle_frame` ends the session: send what `poll_transmit` still returns
///    (the error frame) and close the connection. Start a new session to resume; every message
///    is idempotent, so a session cut at any frame loses nothing.
pub struct Session {
    store: Store,
    peer: PeerId,
    config: SessionConfig,
    phase: Phase,
    out: VecDeque<Vec<u8>>,
    events: VecDeque<Event>,
    reader: crate::message::FrameReader,
    /// This side's documents the peer may read, sorted by id, as of the session's start.
    listed: Vec<Entry>,
    /// Automerge sync states of this session, by document.
    syncs: HashMap<DocId, sync::State>,
    heads_sent: HashSet<DocId>,
    refused: HashSet<DocId>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("peer", &self.peer)
            .field("phase", &self.phase)
            .finish_non_exhaustive()
    }
}

/// At most this many ancestors go into a `Heads` message (depths 1, 2, 4, ... 1024).
const ANCESTOR_DEPTHS: u32 = 11;

impl Session {
    /// Starts a session with `peer` over `store`.
    pub fn new(
        store: Store,
        peer: PeerId,
        role: Role,
        config: SessionConfig,
    ) -> Result<Self, SessionError> {
        let listed = listed_docs(&store, peer)?;
        let mut session = Self {
            reader: crate::message::FrameReader::new(config.max_frame),
            store,
            peer,
            config,
            phase: Phase::AwaitHello,
            out: VecDeque::new(),
            events: VecDeque::new(),
            listed,
            syncs: HashMap::new(),
            heads_sent: HashSet::new(),
            refused: HashSet::new(),
        };
        session.send(&Message::Hello {
            version: PROTOCOL_VERSION,
            capabilities: 0,
        });
        if role == Role::Initiator {
            let root = session.describe(&Prefix::ROOT);
            session.send(&Message::Reconcile { ranges: vec![root] });
        }
        Ok(session)
    }

    /// The peer this session syncs with.
    pub fn peer(&self) -> PeerId {
        self.peer
    }

    /// Whether the session has ended.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// The next frame to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.out.pop_front()
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Handles bytes from a stream transport: every whole frame among them is handled in turn.
    pub fn handle_bytes(&mut self, bytes: &[u8], now_millis: u64) -> Result<(), SessionError> {
        self.reader.push(bytes);
        loop {
            let frame = match self.reader.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(()),
                Err(e) => return self.fail(ErrorCode::Malformed, e.into()),
            };
            self.handle_frame(&frame, now_millis)?;
        }
    }

    /// Handles one whole frame from the peer. `now_millis` is the wall time, recorded as the
    /// time of the last successful sync.
    pub fn handle_frame(&mut self, frame: &[u8], now_millis: u64) -> Result<(), SessionError> {
        if self.phase == Phase::Closed {
            return Err(SessionError::Closed);
        }
        let message = match Message::from_frame(frame, self.config.max_frame) {
            Ok(message) => message,
            Err(e) => return self.fail(ErrorCode::Malformed, e.into()),
        };
        if let Message::Error { code, detail } = message {
            self.phase = Phase::Closed;
            return Err(SessionError::Peer { code, detail });
        }
        if self.phase == Phase::AwaitHello {
            return match message {
                Message::Hello { version, .. } if version == PROTOCOL_VERSION => {
                    self.phase = Phase::Open;
                    self.events.push_back(Event::Connected { version });
                    Ok(())
                }
                Message::Hello { version, .. } => self.fail(
                    ErrorCode::UnsupportedVersion,
                    SessionError::UnsupportedVersion(version),
                ),
                _ => self.fail(
                    ErrorCode::OutOfOrder,
                    SessionError::Protocol("a frame before hello"),
                ),
            };
        }
        let result = self.dispatch(message, now_millis);
        match result {
            Ok(()) => Ok(()),
            Err(e) => {
                let code = match &e {
                    SessionError::NoAccess(_) => ErrorCode::NoAccess,
                    SessionError::Store(_) => ErrorCode::Internal,
                    SessionError::Protocol("hello twice") => ErrorCode::OutOfOrder,
                    _ => ErrorCode::Malformed,
                };
                self.fail(code, e)
            }
        }
    }

    /// Tells the session that `doc` changed in the store (locally, or from another peer), so
    /// that it pushes the change if the peer may read the document.
    pub fn doc_changed(&mut self, doc: DocId) -> Result<(), SessionError> {
        if self.phase != Phase::Open || self.refused.contains(&doc) || !self.may_read(doc)? {
            return Ok(());
        }
        let info = match self.store.info(doc) {
            Ok(info) => info,
            Err(StoreError::NoSuchDocument(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        match info.kind {
            DocKind::Automerge => self.push_automerge(doc),
            _ => self.send_state(doc),
        }
    }

    // ---- internals -----------------------------------------------------------------------

    fn send(&mut self, message: &Message) {
        self.out.push_back(message.to_frame());
    }

    fn fail<T>(&mut self, code: ErrorCode, error: SessionError) -> Result<T, SessionError> {
        if self.phase != Phase::Closed {
            self.send(&Message::Error {
                code,
                detail: error.to_string(),
            });
            self.phase = Phase::Closed;
        }
        Err(error)
    }

    fn access(&self, doc: DocId) -> Result<Access, SessionError> {
        Ok(self.store.access(self.peer, doc)?)
    }

    fn may_read(&self, doc: DocId) -> Result<bool, SessionError> {
        Ok(self.access(doc)? >= Access::Read)
    }

    fn may_write(&self, doc: DocId) -> Result<bool, SessionError> {
        Ok(self.access(doc)? == Access::ReadWrite)
    }

    /// Whether this replica holds `doc` at all.
    fn holds(&self, doc: DocId) -> Result<Option<DocKind>, SessionError> {
        match self.store.info(doc) {
            Ok(info) => Ok(Some(info.kind)),
            Err(StoreError::NoSuchDocument(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// A document the peer names must be one it may read, if this replica holds it: naming a
    /// hidden one is refused without telling it whether the document exists.
    fn check_visible(&self, doc: DocId) -> Result<(), SessionError> {
        if self.holds(doc)?.is_some() && !self.may_read(doc)? {
            return Err(SessionError::NoAccess(doc));
        }
        Ok(())
    }

    fn dispatch(&mut self, message: Message, now: u64) -> Result<(), SessionError> {
        match message {
            // A replayed hello is harmless; another version mid-session is not.
            Message::Hello { version, .. } if version == PROTOCOL_VERSION => Ok(()),
            Message::Hello { .. } => Err(SessionError::Protocol("hello twice")),
            Message::Error { .. } => Ok(()), // handled before
            Message::Reconcile { ranges } => self.on_reconcile(ranges),
            Message::Want { doc } => self.on_want(doc),
            Message::Snapshot { doc, kind, bytes } => self.on_snapshot(doc, kind, &bytes),
            Message::Heads {
                doc,
                heads,
                ancestors,
            } => self.on_heads(doc, &heads, &ancestors),
            Message::Sync { doc, message } => self.on_sync(doc, &message, now),
            Message::State { doc, bytes } => self.on_state(doc, &bytes),
            Message::Refused { doc, code } => {
                self.refused.insert(doc);
                self.events.push_back(Event::Refused { doc, code });
                Ok(())
            }
        }
    }

    // ---- reconciliation ------------------------------------------------------------------

    fn under(&self, prefix: &Prefix) -> &[Entry] {
        let start = self
            .listed
            .partition_point(|e| e.doc.as_bytes() < &prefix.first_id());
        let len = self.listed[start..]
            .iter()
            .take_while(|e| prefix.contains(&e.doc))
            .count();
        &self.listed[start..start + len]
    }

    /// This side's account of a prefix: its items if few, else their fingerprint.
    fn describe(&self, prefix: &Prefix) -> Range {
        let entries = self.under(prefix);
        if entries.len() <= self.config.leaf {
            Range::Items {
                prefix: prefix.clone(),
                items: entries.iter().map(Entry::item).collect(),
            }
        } else {
            Range::Fingerprint {
                prefix: prefix.clone(),
                fingerprint: fingerprint(entries),
            }
        }
    }

    fn on_reconcile(&mut self, ranges: Vec<Range>) -> Result<(), SessionError> {
        if ranges.is_empty() {
            self.events.push_back(Event::Reconciled);
            return Ok(());
        }
        let mut reply = Vec::new();
        for range in ranges {
            match range {
                Range::Fingerprint {
                    prefix,
                    fingerprint: theirs,
                } => {
                    let mine = self.under(&prefix);
                    if fingerprint(mine) == theirs {
                        continue;
                    }
                    if mine.len() <= self.config.leaf || prefix.len() >= 32 {
                        reply.push(Range::Items {
                            items: mine.iter().map(Entry::item).collect(),
                            prefix,
                        });
                    } else {
                        for child in prefix.children() {
                            reply.push(self.describe_child(&child));
                        }
                    }
                }
                Range::Items { prefix, items } => {
                    validate_items(&prefix, &items)?;
                    self.compare(&prefix, &items)?;
                }
            }
        }
        if reply.is_empty() {
            self.events.push_back(Event::Reconciled);
        }
        self.send(&Message::Reconcile { ranges: reply });
        Ok(())
    }

    /// A child in a split: empty children are listed (nearly free), others fingerprinted.
    fn describe_child(&self, child: &Prefix) -> Range {
        let entries = self.under(child);
        if entries.is_empty() {
            Range::Items {
                prefix: child.clone(),
                items: Vec::new(),
            }
        } else {
            Range::Fingerprint {
                prefix: child.clone(),
                fingerprint: fingerprint(entries),
            }
        }
    }

    /// The peer listed everything it has under `prefix`: act on each difference.
    fn compare(&mut self, prefix: &Prefix, theirs: &[Item]) -> Result<(), SessionError> {
        let mine: Vec<Entry> = self.under(prefix).to_vec();
        let mut t = theirs.iter().peekable();
        let mut m = mine.iter().peekable();
        loop {
            match (m.peek(), t.peek()) {
                (None, None) => return Ok(()),
                (Some(a), Some(b)) if a.doc == b.doc => {
                    if a.kind == b.kind && a.digest != b.digest {
                        self.start_doc_sync(a.doc, a.kind)?;
                    } else if a.kind == DocKind::Automerge && a.digest == b.digest {
                        self.seed_equal(a.doc)?;
                    }
                    m.next();
                    t.next();
                }
                (Some(a), b) if b.is_none_or(|b| a.doc < b.doc) => {
                    let doc = a.doc;
                    m.next();
                    self.send_snapshot(doc)?;
                }
                (_, Some(b)) => {
                    let (doc, kind) = (b.doc, b.kind);
                    t.next();
                    self.offered(doc, kind)?;
                }
                (Some(_), None) => unreachable!("handled by the arm above"),
            }
        }
    }

    /// The peer has a document this side does not list.
    fn offered(&mut self, doc: DocId, _kind: DocKind) -> Result<(), SessionError> {
        if self.holds(doc)?.is_some() {
            // Held but hidden from this peer: say nothing.
            return Ok(());
        }
        if self.may_write(doc)? {
            self.send(&Message::Want { doc });
        }
        Ok(())
    }

    fn start_doc_sync(&mut self, doc: DocId, kind: DocKind) -> Result<(), SessionError> {
        match kind {
            DocKind::Automerge => {
                self.send_heads(doc)?;
                Ok(())
            }
            _ => self.send_state(doc),
        }
    }

    // ---- whole documents -------------------------------------------------------------------

    fn send_snapshot(&mut self, doc: DocId) -> Result<(), SessionError> {
        let kind = self.store.info(doc)?.kind;
        let bytes = match kind {
            DocKind::Automerge => {
                let (bytes, heads) = self.store.read(doc, |am| (am.save(), am.get_heads()))?;
                // Once the peer has loaded it, it holds these heads.
                let state = self.sync_state(doc)?;
                state.shared_heads = heads;
                bytes
            }
            _ => self.store.crdt(doc)?.encode(),
        };
        self.send(&Message::Snapshot { doc, kind, bytes });
        Ok(())
    }

    fn on_want(&mut self, doc: DocId) -> Result<(), SessionError> {
        if self.holds(doc)?.is_none() || !self.may_read(doc)? {
            return Err(SessionError::NoAccess(doc));
        }
        self.send_snapshot(doc)
    }

    fn on_snapshot(&mut self, doc: DocId, kind: DocKind, bytes: &[u8]) -> Result<(), SessionError> {
        self.check_visible(doc)?;
        if !self.may_write(doc)? {
            self.send(&Message::Refused {
                doc,
                code: ErrorCode::ReadOnly,
            });
            return Ok(());
        }
        if let Some(held) = self.holds(doc)?
            && held != kind
        {
            return Err(SessionError::Protocol("a snapshot of another kind"));
        }
        let origin = Origin::Remote(self.peer);
        match kind {
            DocKind::Automerge => {
                // Strict: a damaged or truncated document is refused whole.
                let mut theirs = Automerge::load(bytes)
                    .map_err(|_| SessionError::Protocol("a snapshot that does not load"))?;
                let their_heads = theirs.get_heads();
                self.store.create_with_id(doc, kind, origin)?;
                let before = self.store.info(doc)?.version;
                let heads = self.store.update(doc, origin, |am| {
                    am.merge(&mut theirs)?;
                    Ok(am.get_heads())
                })?;
                if self.store.info(doc)?.version != before {
                    self.events.push_back(Event::DocUpdated { doc });
                }
                let state = self.sync_state(doc)?;
                state.shared_heads = their_heads.clone();
                if heads != their_heads {
                    // This side had more: the peer needs it.
                    self.push_automerge(doc)?;
                } else {
                    self.persist(doc, None, None)?;
                }
                Ok(())
            }
            _ => {
                validate_state(kind, bytes, self.config.max_frame)?;
                self.store.create_with_id(doc, kind, origin)?;
                self.merge_state(doc, bytes)
            }
        }
    }

    // ---- ferry-crdt documents ------------------------------------------------------------

    fn send_state(&mut self, doc: DocId) -> Result<(), SessionError> {
        let bytes = self.store.crdt(doc)?.encode();
        self.send(&Message::State { doc, bytes });
        Ok(())
    }

    fn on_state(&mut self, doc: DocId, bytes: &[u8]) -> Result<(), SessionError> {
        self.check_visible(doc)?;
        let Some(kind) = self.holds(doc)? else {
            // Not here yet: ask for it whole, if the peer may write it.
            return self.offered(doc, DocKind::GCounter);
        };
        if kind == DocKind::Automerge {
            return Err(SessionError::Protocol("a state for an automerge document"));
        }
        validate_state(kind, bytes, self.config.max_frame)?;
        if !self.may_write(doc)? {
            self.send(&Message::Refused {
                doc,
                code: ErrorCode::ReadOnly,
            });
            return Ok(());
        }
        self.merge_state(doc, bytes)
    }

    /// Merges a validated state; answers with this side's state if it holds more.
    fn merge_state(&mut self, doc: DocId, bytes: &[u8]) -> Result<(), SessionError> {
        let before = self.store.info(doc)?.digest;
        let after = self
            .store
            .merge_state(doc, Origin::Remote(self.peer), bytes)?;
        if after != before {
            self.events.push_back(Event::DocUpdated { doc });
        }
        if after != Digest::of_bytes(bytes) {
            self.send_state(doc)?;
        }
        Ok(())
    }

    // ---- Automerge documents -------------------------------------------------------------

    /// The session's sync state for `doc`, loaded from the store on first use.
    fn sync_state(&mut self, doc: DocId) -> Result<&mut sync::State, SessionError> {
        if !self.syncs.contains_key(&doc) {
            let record = self.store.sync_record(self.peer, doc)?;
            let mut state = record
                .and_then(|r| sync::State::decode(&r.automerge_state).ok())
                .unwrap_or_default();
            // Changes from a peer that may not write are neither wanted nor stored: automerge
            // tells the peer so, and it sends none.
            state.set_read_only(!self.may_write(doc)?);
            self.syncs.insert(doc, state);
        }
        self.syncs
            .get_mut(&doc)
            .ok_or(SessionError::Protocol("sync state"))
    }

    fn send_heads(&mut self, doc: DocId) -> Result<(), SessionError> {
        let (heads, ancestors) = self.store.read(doc, |am| {
            let heads = am.get_heads();
            let ancestors = heads.first().map(|h| ancestors(am, *h)).unwrap_or_default();
            (heads, ancestors)
        })?;
        self.heads_sent.insert(doc);
        self.send(&Message::Heads {
            doc,
            heads: heads.iter().map(|h| h.0).collect(),
            ancestors: ancestors.iter().map(|h| h.0).collect(),
        });
        Ok(())
    }

    fn on_heads(
        &mut self,
        doc: DocId,
        heads: &[[u8; 32]],
        ancestors: &[[u8; 32]],
    ) -> Result<(), SessionError> {
        if heads.len() > 1024 || ancestors.len() > ANCESTOR_DEPTHS as usize {
            return Err(SessionError::Protocol("too many heads"));
        }
        self.check_visible(doc)?;
        match self.holds(doc)? {
            None => return self.offered(doc, DocKind::Automerge),
            Some(DocKind::Automerge) => {}
            Some(_) => return Err(SessionError::Protocol("heads for a crdt document")),
        }
        let candidates: Vec<ChangeHash> = heads
            .iter()
            .chain(ancestors)
            .map(|h| ChangeHash(*h))
            .collect();
        let shared: Vec<ChangeHash> = self.store.read(doc, |am| {
            candidates
                .into_iter()
                .filter(|h| am.get_change_meta_by_hash(h).is_some())
                .collect()
        })?;
        let state = self.sync_state(doc)?;
        let mut seeded = state.shared_heads.clone();
        seeded.extend(shared);
        seeded.sort_unstable();
        seeded.dedup();
        state.shared_heads = seeded;
        if !self.heads_sent.contains(&doc) {
            self.send_heads(doc)?;
        }
        self.generate(doc)
    }

    fn seed_equal(&mut self, doc: DocId) -> Result<(), SessionError> {
        let heads = self.store.read(doc, |am| am.get_heads())?;
        let state = self.sync_state(doc)?;
        if state.shared_heads != heads {
            state.shared_heads = heads.clone();
            self.persist(doc, Some(heads), None)?;
        }
        Ok(())
    }

    fn push_automerge(&mut self, doc: DocId) -> Result<(), SessionError> {
        let seeded = !self.sync_state(doc)?.shared_heads.is_empty();
        if !seeded && !self.heads_sent.contains(&doc) {
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
        self.syncs.insert(doc, state);
        if let Some(message) = message {
            self.send(&Message::Sync {
                doc,
                message: message.encode(),
            });
        }
        Ok(())
    }

    fn on_sync(&mut self, doc: DocId, bytes: &[u8], now: u64) -> Result<(), SessionError> {
        self.check_visible(doc)?;
        match self.holds(doc)? {
            None => return self.offered(doc, DocKind::Automerge),
            Some(DocKind::Automerge) => {}
            Some(_) => return Err(SessionError::Protocol("a sync message for a crdt document")),
        }
        let message = sync::Message::decode(bytes)
            .map_err(|_| SessionError::Protocol("a sync message that does not decode"))?;
        if !message.changes.is_empty() {
            if !self.may_write(doc)? {
                self.send(&Message::Refused {
                    doc,
                    code: ErrorCode::ReadOnly,
                });
                return Ok(());
            }
            for chunk in message.changes.iter() {
                validate_changes(chunk)?;
            }
        }
        let their_heads = message.heads.clone();
        let mut state = std::mem::take(self.sync_state(doc)?);
        let before = self.store.info(doc)?.version;
        let received = self.store.update(doc, Origin::Remote(self.peer), |am| {
            am.receive_sync_message(&mut state, message)?;
            Ok(am.get_heads())
        });
        let heads = match received {
            Ok(heads) => heads,
            Err(e) => {
                self.syncs.remove(&doc);
                return Err(e.into());
            }
        };
        self.syncs.insert(doc, state);
        if self.store.info(doc)?.version != before {
            self.events.push_back(Event::DocUpdated { doc });
        }
        // The peer's heads are what it acknowledges holding.
        let synced_at = (heads == their_heads).then_some(now);
        self.persist(doc, Some(their_heads), synced_at)?;
        self.generate(doc)
    }

    /// Saves the session's sync state for `doc`, with the heads the peer acknowledged and,
    /// when both sides now hold the same heads, the time of this successful sync.
    fn persist(
        &mut self,
        doc: DocId,
        acked: Option<Vec<ChangeHash>>,
        synced_at: Option<u64>,
    ) -> Result<(), SessionError> {
        let encoded = self.sync_state(doc)?.encode();
        let mut record: SyncRecord = self.store.sync_record(self.peer, doc)?.unwrap_or_default();
        record.automerge_state = encoded;
        if let Some(acked) = acked {
            record.acked = acked.iter().map(|h| h.0).collect();
        }
        if synced_at.is_some() {
            record.last_sync_millis = synced_at;
        }
        self.store.put_sync_record(self.peer, doc, &record)?;
        Ok(())
    }
}

impl Entry {
    fn item(&self) -> Item {
        Item {
            doc: self.doc,
            kind: self.kind,
            digest: self.digest,
        }
    }
}

/// This side's documents that `peer` may read, sorted by id.
fn listed_docs(store: &Store, peer: PeerId) -> Result<Vec<Entry>, SessionError> {
    let info = store.peer(peer)?;
    let mut listed = Vec::new();
    let Some(info) = info else {
        return Ok(listed); // an unknown peer may read nothing
    };
    for doc in store.list()? {
        if info.access(doc) < Access::Read {
            continue;
        }
        match store.info(doc) {
            Ok(i) => listed.push(Entry {
                doc,
                kind: i.kind,
                digest: short(i.digest.as_bytes()),
            }),
            // A damaged document is left out, not fatal to the session.
            Err(StoreError::Damaged { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(listed)
}

/// blake3 over the (id, digest) pairs, shortened.
fn fingerprint(entries: &[Entry]) -> ShortDigest {
    let mut hasher = blake3::Hasher::new();
    for e in entries {
        hasher.update(e.doc.as_bytes());
        hasher.update(&e.digest);
    }
    short(hasher.finalize().as_bytes())
}

fn validate_items(prefix: &Prefix, items: &[Item]) -> Result<(), SessionError> {
    let sorted = items.windows(2).all(|w| w[0].doc < w[1].doc);
    if !sorted || !items.iter().all(|i| prefix.contains(&i.doc)) {
        return Err(SessionError::Protocol(
            "items out of order or outside their prefix",
        ));
    }
    Ok(())
}

/// A state from the peer must decode as its document's kind before anything is stored.
fn validate_state(kind: DocKind, bytes: &[u8], limit: u32) -> Result<(), SessionError> {
    let limit = limit as usize;
    let ok = match kind {
        DocKind::GCounter => decode::<GCounter>(bytes, limit).is_ok(),
        DocKind::PNCounter => decode::<PNCounter>(bytes, limit).is_ok(),
        DocKind::LwwRegister => decode::<LwwRegister<Vec<u8>>>(bytes, limit).is_ok(),
        DocKind::MvRegister => decode::<MvRegister<Vec<u8>>>(bytes, limit).is_ok(),
        DocKind::Automerge => false,
    };
    if ok {
        Ok(())
    } else {
        Err(SessionError::Protocol("a state that does not decode"))
    }
}

/// Changes in a sync message must parse whole: automerge's own loading would quietly keep a
/// good prefix of damaged bytes. Dependencies outside the message are fine here.
fn validate_changes(bytes: &[u8]) -> Result<(), SessionError> {
    match Automerge::load_with_options(
        bytes,
        LoadOptions::new().on_partial_load(OnPartialLoad::Error),
    ) {
        Ok(_) | Err(AutomergeError::MissingDeps) => Ok(()),
        Err(_) => Err(SessionError::Protocol("changes that do not parse")),
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
