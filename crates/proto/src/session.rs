//! A sync session with one peer, as a state machine: frames in, frames and events out.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

use automerge::sync::{self, SyncDoc};
use automerge::{Automerge, Change, ChangeHash, LoadOptions, OnPartialLoad, ReadDoc};
use ferry_crdt::{Digest, GCounter, LwwRegister, MvRegister, PNCounter, decode};
use ferry_store::{
    Access, DocId, DocKind, Origin, PeerId, Store, StoreError, SyncUpdate, Version, heads_digest,
};

use crate::message::{
    DEFAULT_MAX_FRAME, ErrorCode, FrameError, FrameReader, Item, Message, PROTOCOL_VERSION, Prefix,
    Range, ShortDigest, short,
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
    /// The peer holds everything this replica has of `doc`: nothing of it is pending for this
    /// peer, and the store's sync record says so.
    Acked {
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
    /// A frame came when the protocol does not allow it.
    #[error("out of order: {0}")]
    OutOfOrder(&'static str),
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
    /// The store records that the peer holds this version.
    acked: bool,
}

/// What [`Session::send_changes_since`] could do.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
enum Pushed {
    /// Changes went out.
    Sent,
    /// The peer already holds everything.
    Nothing,
    /// What the peer lacks is unknown (some heads it holds are not here), or a guess at it
    /// was too large.
    Unknown,
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
    reader: FrameReader,
    /// This side's documents the peer may read, sorted by id, as of the session's start.
    listed: Vec<Entry>,
    /// Prefixes whose fingerprints this side sent last; those the reply passes over matched.
    outstanding: Vec<Prefix>,
    /// The reconciliation round this side expects next; reconciliation is strictly turn by
    /// turn, so any other is a replay.
    round: u32,
    reconciled: bool,
    /// Automerge sync states of this session, by document.
    syncs: HashMap<DocId, sync::State>,
    heads_sent: HashSet<DocId>,
    refused: HashSet<DocId>,
    /// Automerge heads the peer said it holds.
    peer_heads: HashMap<DocId, Vec<ChangeHash>>,
    /// This side's heads when it last sent changes: the peer will hold them.
    sent_heads: HashMap<DocId, Vec<ChangeHash>>,
    /// CRDT state digests the peer said it holds.
    peer_states: HashMap<DocId, Digest>,
    /// Documents that changed before the peer's hello, to push once it arrives.
    changed_early: BTreeSet<DocId>,
    /// The time the driver gave with the frame being handled.
    now: u64,
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

/// At most this many heads in a `Heads` or `Changes` message.
const MAX_HEADS: usize = 1024;

/// Changes since the last acknowledged version are pushed on a guess (both sides changed since)
/// only up to this many bytes; beyond it automerge's sync finds what the peer lacks.
const GUESS_BYTES: usize = 8 * 1024;

/// Automerge's chunk types (the byte after 4 magic and 4 checksum bytes).
const DOCUMENT_CHUNK: u8 = 0;
const CHANGE_CHUNK: u8 = 1;
const COMPRESSED_CHANGE_CHUNK: u8 = 2;
/// Bytes before a chunk's data length: magic, checksum and type.
const CHUNK_HEADER: usize = 9;

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
            reader: FrameReader::new(config.max_frame),
            store,
            peer,
            config,
            phase: Phase::AwaitHello,
            out: VecDeque::new(),
            events: VecDeque::new(),
            listed,
            outstanding: Vec::new(),
            round: 0,
            reconciled: false,
            syncs: HashMap::new(),
            heads_sent: HashSet::new(),
            refused: HashSet::new(),
            peer_heads: HashMap::new(),
            sent_heads: HashMap::new(),
            peer_states: HashMap::new(),
            changed_early: BTreeSet::new(),
            now: 0,
        };
        session.send(&Message::Hello {
            version: PROTOCOL_VERSION,
            capabilities: 0,
        });
        if role == Role::Initiator {
            let root = session.describe(&Prefix::ROOT);
            if let Range::Fingerprint { prefix, .. } = &root {
                session.outstanding.push(prefix.clone());
            }
            session.send(&Message::Reconcile {
                round: 0,
                ranges: vec![root],
            });
            session.round = 1;
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

    /// Whether reconciliation has finished.
    pub fn is_reconciled(&self) -> bool {
        self.reconciled
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
    /// time of a completed sync.
    pub fn handle_frame(&mut self, frame: &[u8], now_millis: u64) -> Result<(), SessionError> {
        if self.phase == Phase::Closed {
            return Err(SessionError::Closed);
        }
        self.now = now_millis;
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
                    // Changed since this side listed its documents: pushed now, as they would
                    // have been had the hello come first.
                    for doc in std::mem::take(&mut self.changed_early) {
                        self.doc_changed(doc)?;
                    }
                    Ok(())
                }
                Message::Hello { version, .. } => self.fail(
                    ErrorCode::UnsupportedVersion,
                    SessionError::UnsupportedVersion(version),
                ),
                _ => self.fail(
                    ErrorCode::OutOfOrder,
                    SessionError::OutOfOrder("a frame before hello"),
                ),
            };
        }
        match self.dispatch(message) {
            Ok(()) => Ok(()),
            Err(e) => {
                let code = match &e {
                    SessionError::NoAccess(_) => ErrorCode::NoAccess,
                    SessionError::Store(_) => ErrorCode::Internal,
                    SessionError::OutOfOrder(_) => ErrorCode::OutOfOrder,
                    _ => ErrorCode::Malformed,
                };
                self.fail(code, e)
            }
        }
    }

    /// Tells the session that `doc` changed in the store (locally, or from another peer), so
    /// that it pushes the change if the peer may read the document. Changes the peer already
    /// holds (because they came from it) are not sent back.
    pub fn doc_changed(&mut self, doc: DocId) -> Result<(), SessionError> {
        if self.phase == Phase::AwaitHello {
            self.changed_early.insert(doc);
            return Ok(());
        }
        if self.phase != Phase::Open || self.refused.contains(&doc) || !self.may_read(doc)? {
            return Ok(());
        }
        let info = match self.store.info(doc) {
            Ok(info) => info,
            Err(StoreError::NoSuchDocument(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        match info.kind {
            DocKind::Automerge => {
                if let Some(base) = self.peer_has(doc) {
                    match self.send_changes_since(doc, &base, None)? {
                        Pushed::Sent | Pushed::Nothing => return Ok(()),
                        Pushed::Unknown => {}
                    }
                }
                self.push_automerge(doc)
            }
            _ if self.peer_states.get(&doc) == Some(&info.digest) => Ok(()),
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

    fn dispatch(&mut self, message: Message) -> Result<(), SessionError> {
        match message {
            // A replayed hello is harmless; another version mid-session is not.
            Message::Hello { version, .. } if version == PROTOCOL_VERSION => Ok(()),
            Message::Hello { .. } => Err(SessionError::OutOfOrder("a second hello")),
            Message::Error { .. } => Ok(()), // handled before
            Message::Reconcile { round, ranges } => {
                if round < self.round {
                    return Ok(()); // a replay of a turn already taken
                }
                if round > self.round || self.reconciled {
                    return Err(SessionError::OutOfOrder(
                        "a reconciliation turn out of order",
                    ));
                }
                self.round = round.saturating_add(2);
                self.on_reconcile(round.saturating_add(1), ranges)
            }
            Message::Want { doc } => self.on_want(doc),
            Message::Snapshot { doc, kind, bytes } => self.on_snapshot(doc, kind, &bytes),
            Message::Heads {
                doc,
                heads,
                ancestors,
            } => self.on_heads(doc, &heads, &ancestors),
            Message::Sync { doc, message } => self.on_sync(doc, &message),
            Message::State { doc, bytes } => self.on_state(doc, &bytes),
            Message::Changes {
                doc,
                heads,
                changes,
            } => self.on_changes(doc, &heads, &changes),
            Message::Ack { doc, digest } => self.on_ack(doc, digest),
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

    /// Handles the peer's turn of reconciliation; this side's reply is turn `reply_round`.
    fn on_reconcile(&mut self, reply_round: u32, ranges: Vec<Range>) -> Result<(), SessionError> {
        // A fingerprint this side sent is answered by items or a split of its prefix, or by
        // nothing when it matched: then the peer holds every document under it as listed here.
        for prefix in std::mem::take(&mut self.outstanding) {
            if !ranges.iter().any(|r| *r.prefix() == prefix) {
                self.confirm_under(&prefix)?;
            }
        }
        if ranges.is_empty() {
            return self.finish_reconcile();
        }
        let mut reply = Vec::new();
        for range in ranges {
            match range {
                Range::Fingerprint {
                    prefix,
                    fingerprint: theirs,
                } => self.answer_fingerprint(prefix, theirs, &mut reply)?,
                Range::Split { prefix, children } => {
                    for (child, theirs) in prefix.children().into_iter().zip(children) {
                        if theirs == EMPTY {
                            self.compare(&child, &[])?;
                        } else {
                            self.answer_fingerprint(child, theirs, &mut reply)?;
                        }
                    }
                }
                Range::Items { prefix, items } => {
                    validate_items(&prefix, &items)?;
                    self.compare(&prefix, &items)?;
                }
            }
        }
        self.outstanding = reply
            .iter()
            .filter_map(|r| match r {
                Range::Split { prefix, children } => Some(
                    prefix
                        .children()
                        .into_iter()
                        .zip(children)
                        .filter(|(_, fp)| **fp != EMPTY)
                        .map(|(child, _)| child)
                        .collect::<Vec<_>>(),
                ),
                Range::Fingerprint { prefix, .. } => Some(vec![prefix.clone()]),
                Range::Items { .. } => None,
            })
            .flatten()
            .collect();
        let done = reply.is_empty();
        self.send(&Message::Reconcile {
            round: reply_round,
            ranges: reply,
        });
        if done {
            self.finish_reconcile()?;
        }
        Ok(())
    }

    /// The peer's fingerprint of `prefix`: nothing to do if it matches this side's, else this
    /// side's items if few, else a split.
    fn answer_fingerprint(
        &mut self,
        prefix: Prefix,
        theirs: ShortDigest,
        reply: &mut Vec<Range>,
    ) -> Result<(), SessionError> {
        let mine = self.under(&prefix);
        if fingerprint(mine) == theirs {
            self.confirm_under(&prefix)?;
        } else if mine.len() <= self.config.leaf || prefix.len() >= 32 {
            reply.push(Range::Items {
                items: mine.iter().map(Entry::item).collect(),
                prefix,
            });
        } else {
            let mut children = [EMPTY; 16];
            for (fp, child) in children.iter_mut().zip(prefix.children()) {
                *fp = fingerprint(self.under(&child));
            }
            reply.push(Range::Split { prefix, children });
        }
        Ok(())
    }

    fn finish_reconcile(&mut self) -> Result<(), SessionError> {
        if !self.reconciled {
            self.reconciled = true;
            self.store.set_reconciled(self.peer, self.now)?;
            self.events.push_back(Event::Reconciled);
        }
        Ok(())
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
                    if a.kind != b.kind {
                        // Ids are random: two kinds under one id is a broken peer's doing.
                    } else if a.digest == b.digest {
                        // Either side not knowing it is in sync: record it here too, so the time
                        // of the last sync is this one.
                        if !a.acked || !b.acked {
                            self.confirm(a.doc)?;
                        }
                        if !b.acked {
                            self.send(&Message::Ack {
                                doc: a.doc,
                                digest: a.digest,
                            });
                        }
                    } else {
                        self.start_doc_sync(a, b.digest)?;
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
                    let doc = b.doc;
                    t.next();
                    self.offered(doc)?;
                }
                (Some(_), None) => unreachable!("handled by the arm above"),
            }
        }
    }

    /// Records that the peer holds every document under `prefix` as listed here.
    fn confirm_under(&mut self, prefix: &Prefix) -> Result<(), SessionError> {
        let stale: Vec<DocId> = self
            .under(prefix)
            .iter()
            .filter(|e| !e.acked)
            .map(|e| e.doc)
            .collect();
        for doc in stale {
            self.confirm(doc)?;
        }
        Ok(())
    }

    /// Records that the peer holds `doc` as listed here, unless it has changed since.
    fn confirm(&mut self, doc: DocId) -> Result<(), SessionError> {
        let Some(listed) = self.listed_entry(doc).map(|e| e.digest) else {
            return Ok(());
        };
        let info = match self.store.info(doc) {
            Ok(info) => info,
            Err(StoreError::NoSuchDocument(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        if short(info.digest.as_bytes()) != listed {
            return Ok(()); // changed locally since: the live push takes it from here
        }
        match info.version {
            Version::Heads(heads) => self.settled(doc, heads),
            Version::Digest(digest) => self.settled_state(doc, digest),
        }
    }

    fn listed_entry(&mut self, doc: DocId) -> Option<&mut Entry> {
        let at = self.listed.binary_search_by(|e| e.doc.cmp(&doc)).ok()?;
        self.listed.get_mut(at)
    }

    /// The peer has a document this side does not list.
    fn offered(&mut self, doc: DocId) -> Result<(), SessionError> {
        if self.holds(doc)?.is_some() {
            // Held but hidden from this peer: say nothing.
            return Ok(());
        }
        if self.may_write(doc)? {
            self.send(&Message::Want { doc });
        }
        Ok(())
    }

    /// Starts syncing a document both sides hold with different digests.
    fn start_doc_sync(&mut self, mine: &Entry, theirs: ShortDigest) -> Result<(), SessionError> {
        let doc = mine.doc;
        if mine.kind != DocKind::Automerge {
            return self.send_state(doc);
        }
        let acked = self.acked_heads(doc)?;
        if let Some(acked) = acked {
            // The peer's digest is the version it last acknowledged: it holds exactly those
            // heads, so what came since is what it lacks.
            let exact = short(heads_digest(&acked).as_bytes()) == theirs;
            // Otherwise it holds those heads and more: what came here since is a guess, which
            // may repeat changes it got elsewhere, so only a small guess is worth sending.
            let limit = if exact { None } else { Some(GUESS_BYTES) };
            if self.send_changes_since(doc, &acked, limit)? == Pushed::Sent {
                self.peer_heads.insert(doc, acked);
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

    /// The heads the store records the peer as holding, if any.
    fn acked_heads(&self, doc: DocId) -> Result<Option<Vec<ChangeHash>>, SessionError> {
        let record = match self.store.sync_record(self.peer, doc) {
            Ok(record) => record,
            // A damaged record costs a longer sync, nothing more.
            Err(StoreError::Damaged { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        Ok(record.and_then(|r| match r.acked {
            Some(Version::Heads(heads)) => Some(heads),
            _ => None,
        }))
    }

    // ---- whole documents -------------------------------------------------------------------

    fn send_snapshot(&mut self, doc: DocId) -> Result<(), SessionError> {
        let kind = self.store.info(doc)?.kind;
        let bytes = match kind {
            DocKind::Automerge => {
                let (bytes, heads) = self.store.read(doc, |am| (am.save(), am.get_heads()))?;
                // Once the peer has loaded it, it holds these heads.
                self.sync_state(doc)?.shared_heads = heads.clone();
                self.sent_heads.insert(doc, heads);
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
                let theirs = Automerge::load(bytes)
                    .map_err(|_| SessionError::Protocol("a snapshot that does not load"))?;
                let their_heads = theirs.get_heads();
                // Created with its content in one write, or merged into the copy here.
                if self.store.adopt(doc, origin, theirs)? {
                    self.events.push_back(Event::DocUpdated { doc });
                }
                self.answer_heads(doc, their_heads)
            }
            _ => {
                validate_state(kind, bytes, self.config.max_frame)?;
                // Created with the state in one write; the merge below then acknowledges.
                if self.holds(doc)?.is_none() && self.store.adopt_state(doc, kind, origin, bytes)? {
                    self.events.push_back(Event::DocUpdated { doc });
                }
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
            return self.offered(doc);
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
            // The peer may still read: it gets this side's state, once.
            if self.store.info(doc)?.digest != Digest::of_bytes(bytes) {
                self.send_state(doc)?;
            }
            return Ok(());
        }
        self.merge_state(doc, bytes)
    }

    /// Merges a validated state; acknowledges it if the result is the state received, else
    /// answers with the merged state (unless the peer refused this side's changes).
    fn merge_state(&mut self, doc: DocId, bytes: &[u8]) -> Result<(), SessionError> {
        let before = self.store.info(doc)?.digest;
        let after = self
            .store
            .merge_state(doc, Origin::Remote(self.peer), bytes)?;
        if after != before {
            self.events.push_back(Event::DocUpdated { doc });
        }
        let received = Digest::of_bytes(bytes);
        if after == received {
            self.send(&Message::Ack {
                doc,
                digest: short(after.as_bytes()),
            });
            return self.settled_state(doc, after);
        }
        self.peer_states.insert(doc, received);
        if !self.refused.contains(&doc) {
            self.send_state(doc)?;
        }
        Ok(())
    }

    /// The peer holds this side's state of a CRDT document, with this digest.
    fn settled_state(&mut self, doc: DocId, digest: Digest) -> Result<(), SessionError> {
        self.store.record_sync(
            self.peer,
            doc,
            SyncUpdate {
                acked: Some(Version::Digest(digest)),
                synced_at: Some(self.now),
                ..SyncUpdate::default()
            },
        )?;
        let fresh = self.peer_states.insert(doc, digest) != Some(digest);
        self.mark_acked(doc, fresh);
        Ok(())
    }

    fn mark_acked(&mut self, doc: DocId, announce: bool) {
        if let Some(entry) = self.listed_entry(doc) {
            entry.acked = true;
        }
        if announce {
            self.events.push_back(Event::Acked { doc });
        }
    }

    // ---- Automerge documents -------------------------------------------------------------

    /// Every head the peer holds or will hold once what was sent arrives, if any is known.
    fn peer_has(&self, doc: DocId) -> Option<Vec<ChangeHash>> {
        let mut heads: Vec<ChangeHash> = self
            .peer_heads
            .get(&doc)
            .into_iter()
            .chain(self.sent_heads.get(&doc))
            .flatten()
            .copied()
            .collect();
        if heads.is_empty() {
            return None;
        }
        heads.sort_unstable();
        heads.dedup();
        Some(heads)
    }

    /// Sends the changes a peer holding `base` lacks, with this side's heads, if every head in
    /// `base` is held here and the changes come to at most `limit` bytes.
    fn send_changes_since(
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
        self.sent_heads.insert(doc, heads);
        Ok(Pushed::Sent)
    }

    fn on_changes(
        &mut self,
        doc: DocId,
        heads: &[[u8; 32]],
        changes: &[Vec<u8>],
    ) -> Result<(), SessionError> {
        if heads.len() > MAX_HEADS {
            return Err(SessionError::Protocol("too many heads"));
        }
        self.check_visible(doc)?;
        match self.holds(doc)? {
            None => return self.offered(doc),
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
                Err(StoreError::Automerge { .. }) => {
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
    fn answer_heads(
        &mut self,
        doc: DocId,
        mut theirs: Vec<ChangeHash>,
    ) -> Result<(), SessionError> {
        theirs.sort_unstable();
        theirs.dedup();
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
            return self.settled(doc, mine);
        }
        self.record_acked(doc, theirs.clone())?;
        if self.refused.contains(&doc) {
            return Ok(()); // the peer takes nothing more of this document from this side
        }
        self.send_changes_since(doc, &theirs, None).map(drop)
    }

    fn on_ack(&mut self, doc: DocId, digest: ShortDigest) -> Result<(), SessionError> {
        self.check_visible(doc)?;
        let info = match self.store.info(doc) {
            Ok(info) => info,
            Err(StoreError::NoSuchDocument(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        if short(info.digest.as_bytes()) == digest {
            return match info.version {
                Version::Heads(heads) => self.settled(doc, heads),
                Version::Digest(state) => self.settled_state(doc, state),
            };
        }
        // An acknowledgement of what was sent before a newer local change.
        if let Some(sent) = self.sent_heads.get(&doc).cloned()
            && short(heads_digest(&sent).as_bytes()) == digest
        {
            return self.record_acked(doc, sent);
        }
        // The peer holds an older version, one it acknowledged before: with nothing in flight,
        // send it what came since.
        if info.kind == DocKind::Automerge
            && !self.sent_heads.contains_key(&doc)
            && !self.refused.contains(&doc)
            && let Some(acked) = self.acked_heads(doc)?
            && short(heads_digest(&acked).as_bytes()) == digest
        {
            self.peer_heads.insert(doc, acked.clone());
            return self.send_changes_since(doc, &acked, None).map(drop);
        }
        // A version this side cannot name, with nothing in flight that a later acknowledgement
        // would settle: the peer acknowledged it in a session cut before the acknowledgement
        // got here (or it is an old one, replayed). Either way, automerge's sync works out
        // what each side lacks.
        if info.kind == DocKind::Automerge
            && !self.sent_heads.contains_key(&doc)
            && !self.refused.contains(&doc)
        {
            return self.fallback(doc);
        }
        Ok(()) // overtaken by what is in flight, or the peer refused this side's changes
    }

    /// The peer holds the same heads as this side: seed automerge's sync with them and record
    /// the peer as in sync.
    fn settled(&mut self, doc: DocId, heads: Vec<ChangeHash>) -> Result<(), SessionError> {
        let state = self.sync_state(doc)?;
        state.shared_heads = heads.clone();
        let encoded = state.encode();
        self.store.record_sync(
            self.peer,
            doc,
            SyncUpdate {
                automerge_state: Some(encoded),
                acked: Some(Version::Heads(heads.clone())),
                synced_at: Some(self.now),
            },
        )?;
        let fresh = self.peer_heads.get(&doc) != Some(&heads);
        self.peer_heads.insert(doc, heads);
        self.mark_acked(doc, fresh);
        Ok(())
    }

    /// The peer holds `heads`, which are not (all) this side's.
    fn record_acked(&mut self, doc: DocId, heads: Vec<ChangeHash>) -> Result<(), SessionError> {
        self.store.record_sync(
            self.peer,
            doc,
            SyncUpdate {
                acked: Some(Version::Heads(heads.clone())),
                ..SyncUpdate::default()
            },
        )?;
        self.peer_heads.insert(doc, heads);
        Ok(())
    }

    /// What the peer holds is unclear: forget the guesses and run automerge's sync.
    fn fallback(&mut self, doc: DocId) -> Result<(), SessionError> {
        self.peer_heads.remove(&doc);
        self.sent_heads.remove(&doc);
        // Automerge's own guesses go too: changes it believes sent may have gone another way
        // (a `Changes` push), and a message it believes in flight may have been answered by
        // one; either would keep it from saying anything more.
        let state = self.sync_state(doc)?;
        state.sent_hashes.clear();
        state.in_flight = false;
        if self.heads_sent.contains(&doc) {
            self.generate(doc)
        } else {
            self.send_heads(doc)
        }
    }

    /// The session's sync state for `doc`, loaded from the store on first use.
    fn sync_state(&mut self, doc: DocId) -> Result<&mut sync::State, SessionError> {
        if !self.syncs.contains_key(&doc) {
            let record = match self.store.sync_record(self.peer, doc) {
                Ok(record) => record,
                Err(StoreError::Damaged { .. }) => None,
                Err(e) => return Err(e.into()),
            };
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
        if heads.len() > MAX_HEADS || ancestors.len() > ANCESTOR_DEPTHS as usize {
            return Err(SessionError::Protocol("too many heads"));
        }
        self.check_visible(doc)?;
        match self.holds(doc)? {
            None => return self.offered(doc),
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
        if !self.heads_sent.contains(&doc) {
            self.send_heads(doc)?;
        }
        self.generate(doc)
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

    fn on_sync(&mut self, doc: DocId, bytes: &[u8]) -> Result<(), SessionError> {
        self.check_visible(doc)?;
        match self.holds(doc)? {
            None => return self.offered(doc),
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
                self.syncs.remove(&doc);
                return Err(e.into());
            }
        };
        self.syncs.insert(doc, state);
        if self.store.info(doc)?.version != before {
            self.events.push_back(Event::DocUpdated { doc });
        }
        // The peer's heads are what it acknowledges holding.
        if heads == their_heads {
            self.settled(doc, heads)?;
        } else {
            let encoded = self.sync_state(doc)?.encode();
            self.store.record_sync(
                self.peer,
                doc,
                SyncUpdate {
                    automerge_state: Some(encoded),
                    acked: Some(Version::Heads(their_heads.clone())),
                    synced_at: None,
                },
            )?;
            self.peer_heads.insert(doc, their_heads);
        }
        self.generate(doc)
    }
}

impl Entry {
    fn item(&self) -> Item {
        Item {
            doc: self.doc,
            kind: self.kind,
            digest: self.digest,
            acked: self.acked,
        }
    }
}

/// This side's documents that `peer` may read, sorted by id, each marked with whether the
/// store records the peer as holding its current version.
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
            Ok(i) => {
                let digest = short(i.digest.as_bytes());
                // The peer is recorded as holding this very version, and as having been seen
                // in sync. (Heads a peer named can become this side's heads later, when its
                // changes arrive by another peer: that alone is not a completed sync.)
                let acked = matches!(
                    store.sync_record(peer, doc),
                    Ok(Some(r)) if r.acked.as_ref().map(|v| short(v.digest().as_bytes())) == Some(digest)
                        && r.last_sync_millis.is_some()
                );
                listed.push(Entry {
                    doc,
                    kind: i.kind,
                    digest,
                    acked,
                });
            }
            // A damaged document is left out, not fatal to the session.
            Err(StoreError::Damaged { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(listed)
}

/// The fingerprint of no documents, which marks an empty child in a split.
const EMPTY: ShortDigest = [0; 8];

/// blake3 over the (id, digest) pairs, shortened; never [`EMPTY`] for documents.
fn fingerprint(entries: &[Entry]) -> ShortDigest {
    if entries.is_empty() {
        return EMPTY;
    }
    let mut hasher = blake3::Hasher::new();
    for e in entries {
        hasher.update(e.doc.as_bytes());
        hasher.update(&e.digest);
    }
    let mut fp = short(hasher.finalize().as_bytes());
    if fp == EMPTY {
        fp[7] = 1;
    }
    fp
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
/// good prefix of damaged bytes. An entry is a run of chunks (version 2 messages put every
/// change in one entry). Change chunks are parsed one by one, so dependencies outside the
/// message are fine (and loading them into an empty document would log an error for each); a
/// document chunk must load whole.
fn validate_changes(mut bytes: &[u8]) -> Result<(), SessionError> {
    let bad = || SessionError::Protocol("changes that do not parse");
    while !bytes.is_empty() {
        // A chunk: magic (4), checksum (4), type (1), data length (uLEB128), data.
        let mut rest = bytes.get(CHUNK_HEADER..).ok_or_else(bad)?;
        let data = leb128::read::unsigned(&mut rest).map_err(|_| bad())?;
        let header = bytes.len() - rest.len();
        let end = usize::try_from(data)
            .ok()
            .and_then(|data| header.checked_add(data))
            .filter(|end| *end <= bytes.len())
            .ok_or_else(bad)?;
        let (chunk, next) = bytes.split_at(end);
        match chunk[CHUNK_HEADER - 1] {
            CHANGE_CHUNK | COMPRESSED_CHANGE_CHUNK => {
                Change::try_from(chunk).map_err(|_| bad())?;
            }
            DOCUMENT_CHUNK => {
                Automerge::load_with_options(
                    chunk,
                    LoadOptions::new().on_partial_load(OnPartialLoad::Error),
                )
                .map_err(|_| bad())?;
            }
            _ => return Err(bad()),
        }
        bytes = next;
    }
    Ok(())
}

/// Parses the changes of a `Changes` message: each must be one whole, uncompressed change
/// chunk (a compressed one could inflate far beyond the frame that carried it).
fn parse_changes(raw: &[Vec<u8>]) -> Result<Vec<Change>, SessionError> {
    raw.iter()
        .map(|bytes| {
            if bytes.get(8) != Some(&CHANGE_CHUNK) {
                return Err(SessionError::Protocol(
                    "a change that is not a change chunk",
                ));
            }
            Change::try_from(bytes.as_slice())
                .map_err(|_| SessionError::Protocol("a change that does not parse"))
        })
        .collect()
}

/// The changes no other change among them depends on, sorted: the heads they imply.
fn frontier(changes: &[Change]) -> Vec<ChangeHash> {
    let deps: HashSet<ChangeHash> = changes
        .iter()
        .flat_map(|c| c.deps().iter().copied())
        .collect();
    let mut heads: Vec<ChangeHash> = changes
        .iter()
        .map(Change::hash)
        .filter(|h| !deps.contains(h))
        .collect();
    heads.sort_unstable();
    heads.dedup();
    heads
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
