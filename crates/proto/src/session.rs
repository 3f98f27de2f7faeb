//! A sync session with one peer, as a state machine: frames in, frames and events out.
//!
//! A [`Session`] opens no sockets, starts no threads and reads no clock: the driver hands it
//! frames and the time, and sends what it queues. It does read and write the [`Store`]: it
//! lists documents, applies what the peer sends and records what the peer holds, so each call
//! may block on disk (a durable commit waits for its fsync). Drivers run it on a blocking
//! thread.
//!
//! The parts, each in its own module:
//! - reconciliation, the pure trie walk, is [`crate::reconcile`];
//! - `access`: what the peer may see and write;
//! - `acks`: the transitions that record what the peer holds;
//! - `automerge_sync`: Automerge documents (changes since a version, or automerge's sync);
//! - `crdt_sync`: documents of the ferry-crdt kinds (whole states, merged on arrival);
//! - `snapshot`: whole documents for a peer that lacks them;
//! - `deletes`: tombstones of deleted documents, both ways;
//! - `chunks`: parsing Automerge chunks from the peer;
//! - `incoming`: a step's frames decoded ahead of their turn, snapshots checked in parallel;
//! - `peer_doc`: what the session knows of the peer's copy of one document.

mod access;
mod acks;
mod automerge_sync;
mod chunks;
mod crdt_sync;
mod deletes;
mod incoming;
mod peer_doc;
mod snapshot;

use std::collections::{BTreeSet, HashMap, VecDeque};

use ferry_store::{DocId, DocKind, PeerId, Store, StoreError};

use self::incoming::{Decoded, Prechecked};
use self::peer_doc::PeerDoc;
use crate::message::{
    CAPABILITIES, DEFAULT_MAX_FRAME, ErrorCode, FrameError, FrameReader, Message, PROTOCOL_VERSION,
};
use crate::reconcile::{Finding, ReconcileError, Reconciler, TOMBSTONE};

/// Most documents a session keeps track of as awaited ([`Session::awaiting`]).
const MAX_AWAITED: usize = 1 << 18;

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
    /// Whole documents (snapshots) queued for the peer are sent in steps of about this many
    /// bytes: a step sends snapshots until its frames reach this size, and the rest wait for
    /// the next step ([`Session::work`]). A clone of 100,000 documents so goes out in bounded
    /// pieces, and the driver reads the peer's acknowledgements in between. Default 1 MiB.
    pub step_bytes: usize,
    /// A whole document whose bytes exceed this goes to a peer that takes parts
    /// ([`CAP_SNAPSHOT_PARTS`](crate::CAP_SNAPSHOT_PARTS)) in `SnapshotPart` frames of this
    /// many bytes, sent as steps have room, so it needs no frame of its size and other
    /// documents' frames go between its parts. Default 1 MiB; at most `max_frame` less 128.
    pub part_bytes: usize,
    /// How far ahead of this side's wall time (the `now` the driver passes) a register's
    /// stamp from the peer may be. A state stamped later is refused with
    /// [`ErrorCode::FutureStamp`]: otherwise one peer with a clock set years ahead would win
    /// every later write, and drag every hybrid clock it reaches along. Default 10 minutes.
    pub max_clock_skew_millis: u64,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            max_frame: DEFAULT_MAX_FRAME,
            leaf: 16,
            step_bytes: 1 << 20,
            part_bytes: 1 << 20,
            max_clock_skew_millis: 10 * 60 * 1000,
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
    /// A document arriving in parts could not be written or read back beside the store.
    #[error("assembling a document")]
    Assembly(#[source] ferry_store::PartError),
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

/// A sync session over a [`Store`] with one peer: frames in, frames and events out. It reads
/// and writes the store (see the module docs), and never touches a socket or a clock.
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
    /// Bytes in `out`.
    out_bytes: usize,
    /// Documents to send whole, in id order, as steps have room (see `step_bytes`).
    backlog: BTreeSet<DocId>,
    /// Documents this side waits to receive whole: asked for, or announced by the peer.
    awaiting: BTreeSet<DocId>,
    events: VecDeque<Event>,
    reader: FrameReader,
    /// The walk over this side's documents the peer may read, as of the session's start.
    reconciler: Reconciler,
    /// What the session knows of the peer's copy of each document it has dealt with.
    docs: HashMap<DocId, PeerDoc>,
    /// Documents that changed before the peer's hello, to push once it arrives.
    changed_early: BTreeSet<DocId>,
    /// The capabilities the peer's hello announced.
    peer_caps: u64,
    /// Whole frames read from the peer so far.
    frames_in: u64,
    /// A whole document going to the peer in parts, if any: one at a time.
    sending: Option<snapshot::Sending>,
    /// A large document being made ready to go in parts, if any.
    preparing: Option<snapshot::Preparing>,
    /// A whole document coming from the peer in parts, if any.
    receiving: Option<snapshot::Receiving>,
    /// Documents assembled from parts, being checked (loaded) on threads of their own, so the
    /// session goes on meanwhile; taken in at the first step after each is done.
    loading: Vec<snapshot::Loading>,
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

impl Session {
    /// Starts a session with `peer` over `store`.
    pub fn new(
        store: Store,
        peer: PeerId,
        role: Role,
        config: SessionConfig,
    ) -> Result<Self, SessionError> {
        let listed = access::listed_docs(&store, peer)?;
        let mut session = Self {
            reader: FrameReader::new(config.max_frame),
            frames_in: 0,
            reconciler: Reconciler::new(listed, config.leaf),
            // What the peer sends is written without waiting for each flush; each step ends
            // with one wait (see `release`), so many documents share a flush, and nothing is
            // acknowledged before it is durable.
            store: store.deferring(),
            peer,
            config,
            phase: Phase::AwaitHello,
            out: VecDeque::new(),
            out_bytes: 0,
            backlog: BTreeSet::new(),
            awaiting: BTreeSet::new(),
            events: VecDeque::new(),
            docs: HashMap::new(),
            changed_early: BTreeSet::new(),
            peer_caps: 0,
            sending: None,
            preparing: None,
            receiving: None,
            loading: Vec::new(),
            now: 0,
        };
        session.send(&Message::Hello {
            version: PROTOCOL_VERSION,
            capabilities: CAPABILITIES,
        });
        if role == Role::Initiator {
            let (round, ranges) = session.reconciler.start();
            session.send(&Message::Reconcile { round, ranges });
        }
        // The listing names versions read from the store: durable before it goes out.
        session.store.wait_durable()?;
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
        self.reconciler.is_finished()
    }

    /// Frees what the session keeps in memory between exchanges, if none is under way (the
    /// session is open and reconciled, with nothing queued, awaited or half-read): what it
    /// knows of the peer's copy of each document, the listing reconciliation walked, and its
    /// buffers. Returns whether it did.
    ///
    /// What outlasts a session is in the store's sync records, and a later change is pushed
    /// from them as a new session would push it: the changes since the version the peer last
    /// acknowledged. The peer's refusals are kept, so refused changes are not offered again.
    /// A driver calls this once a session has been idle for a while, so that an idle peer
    /// costs little memory.
    pub fn forget_idle(&mut self) -> bool {
        let busy = self.phase != Phase::Open
            || !self.reconciler.is_finished()
            || !self.backlog.is_empty()
            || self.sending.is_some()
            || self.receiving.is_some()
            || self.preparing.is_some()
            || !self.loading.is_empty()
            || !self.awaiting.is_empty()
            || !self.out.is_empty()
            || !self.reader.is_empty();
        if busy {
            return false;
        }
        self.docs.retain(|_, d| d.refused);
        for known in self.docs.values_mut() {
            *known = PeerDoc {
                refused: true,
                ..PeerDoc::default()
            };
        }
        self.docs.shrink_to_fit();
        self.reconciler.release();
        self.reader.release();
        self.out.shrink_to_fit();
        self.events.shrink_to_fit();
        true
    }

    /// How many documents the session keeps state for: what it knows of the peer's copy of
    /// each, until [`Session::forget_idle`].
    pub fn remembered(&self) -> usize {
        self.docs.len()
    }

    /// The next frame to send, if any.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        let frame = self.out.pop_front()?;
        self.out_bytes -= frame.len();
        Some(frame)
    }

    /// Whether the session waits on the peer to finish something it must finish: its hello
    /// has not come yet, or only part of a frame has. A driver gives this a deadline (counted
    /// from when [`Session::frames_in`] last moved), so that a peer sending a byte at a time
    /// cannot hold a session open.
    pub fn awaits_peer(&self) -> bool {
        self.phase == Phase::AwaitHello || (self.phase == Phase::Open && !self.reader.is_empty())
    }

    /// How many whole frames the session has read from the peer.
    pub fn frames_in(&self) -> u64 {
        self.frames_in
    }

    /// Whether whole documents are queued for the peer: call [`Session::work`] when the
    /// frames sent so far have left.
    pub fn has_backlog(&self) -> bool {
        let waiting =
            self.sending.is_some() || (!self.backlog.is_empty() && self.preparing.is_none());
        waiting && self.phase == Phase::Open
    }

    /// Whether a document that arrived in parts is being checked on a thread of its own, or a
    /// large one made ready to send on one: the
    /// driver calls [`Session::work`] every few milliseconds meanwhile, and the first call
    /// after the check is done takes the document in.
    pub fn is_loading(&self) -> bool {
        (!self.loading.is_empty() || self.preparing.is_some()) && self.phase == Phase::Open
    }

    /// Sends the next part of the backlog (about [`SessionConfig::step_bytes`]); its frames
    /// are released as every step's are.
    pub fn work(&mut self) -> Result<(), SessionError> {
        self.release(Ok(()))
    }

    /// The next event, if any.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Handles bytes from a stream transport: every whole frame among them is handled in turn,
    /// and what they wrote is made durable once, before any frame they queued is released.
    pub fn handle_bytes(&mut self, bytes: &[u8], now_millis: u64) -> Result<(), SessionError> {
        self.reader.push(bytes);
        let mut frames = Vec::new();
        let broken = loop {
            match self.reader.next_frame() {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break None,
                Err(e) => break Some(e),
            }
        };
        self.frames_in += frames.len() as u64;
        let mut handled = Ok(());
        let limits = self.store.limits();
        for decoded in incoming::decode_all(&frames, self.config.max_frame, limits) {
            handled = self.handle_decoded(decoded, now_millis);
            if handled.is_err() {
                break;
            }
        }
        if let (Ok(()), Some(e)) = (&handled, broken) {
            handled = self.fail(ErrorCode::Malformed, e.into());
        }
        self.release(handled)
    }

    /// Handles one whole frame from the peer. `now_millis` is the wall time, recorded as the
    /// time of a completed sync. Frames it queues are released once what they carry is
    /// durable here (see [`Store::wait_durable`]).
    pub fn handle_frame(&mut self, frame: &[u8], now_millis: u64) -> Result<(), SessionError> {
        self.frames_in += 1;
        let handled = self.handle(frame, now_millis);
        self.release(handled)
    }

    fn handle(&mut self, frame: &[u8], now_millis: u64) -> Result<(), SessionError> {
        let decoded = incoming::decode(frame, self.config.max_frame, self.store.limits());
        self.handle_decoded(decoded, now_millis)
    }

    fn handle_decoded(&mut self, decoded: Decoded, now_millis: u64) -> Result<(), SessionError> {
        if self.phase == Phase::Closed {
            return Err(SessionError::Closed);
        }
        self.now = now_millis;
        let message = match decoded.message {
            Ok(message) => message,
            Err(e) => return self.fail(ErrorCode::Malformed, e.into()),
        };
        if let Message::Error { code, detail } = message {
            self.phase = Phase::Closed;
            return Err(SessionError::Peer { code, detail });
        }
        if self.phase == Phase::AwaitHello {
            return match message {
                Message::Hello {
                    version,
                    capabilities,
                } if version == PROTOCOL_VERSION => {
                    self.phase = Phase::Open;
                    self.peer_caps = capabilities;
                    self.events.push_back(Event::Connected { version });
                    // Changed since this side listed its documents: pushed now, as they would
                    // have been had the hello come first.
                    for doc in std::mem::take(&mut self.changed_early) {
                        self.push(doc)?;
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
        match self.dispatch(message, decoded.snapshot) {
            Ok(()) => Ok(()),
            Err(e) => {
                let code = match &e {
                    SessionError::NoAccess(_) => ErrorCode::NoAccess,
                    SessionError::Store(_) | SessionError::Assembly(_) => ErrorCode::Internal,
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
        let pushed = self.push(doc);
        self.release(pushed)
    }

    /// [`Session::doc_changed`] for several documents at once: what they need is queued, and
    /// released once (after one wait for durability).
    pub fn docs_changed(
        &mut self,
        docs: impl IntoIterator<Item = DocId>,
    ) -> Result<(), SessionError> {
        let pushed = docs.into_iter().try_for_each(|doc| self.push(doc));
        self.release(pushed)
    }

    fn push(&mut self, doc: DocId) -> Result<(), SessionError> {
        if self.phase == Phase::AwaitHello {
            self.changed_early.insert(doc);
            return Ok(());
        }
        let refused = self.docs.get(&doc).is_some_and(|d| d.refused);
        if self.phase != Phase::Open || refused {
            return Ok(());
        }
        let Some(info) = self.visible(doc)? else {
            // Gone: its tombstone, if it was deleted and the peer may read it (looked up only
            // then, off the usual path). Hidden: nothing.
            return self.send_tombstone(doc).map(drop);
        };
        match info.kind {
            DocKind::Automerge => self.push_changes(doc),
            _ if self.docs.get(&doc).and_then(|d| d.peer_state) == Some(info.digest) => Ok(()),
            _ => self.push_state(doc),
        }
    }

    /// Ends a step: what it wrote (without waiting, see `Session::new`) is made durable, and
    /// the frames it queued, which may carry what this side read from the store (a change
    /// whose flush is still running, or an acknowledgement of what the step wrote), go out
    /// only then. If the flush fails, they are dropped and the session ends.
    fn release(&mut self, step: Result<(), SessionError>) -> Result<(), SessionError> {
        let step = step
            .and_then(|()| self.take_in_loaded())
            .and_then(|()| self.send_backlog());
        if let Err(e) = self.store.wait_durable() {
            self.out.clear();
            self.out_bytes = 0;
            let error = SessionError::Store(e);
            return match self.phase {
                // The step's own error frame went with the rest; say why now.
                Phase::Closed => {
                    self.send(&Message::Error {
                        code: ErrorCode::Internal,
                        detail: error.to_string(),
                    });
                    Err(error)
                }
                _ => self.fail(ErrorCode::Internal, error),
            };
        }
        step
    }

    fn send(&mut self, message: &Message) {
        let frame = message.to_frame();
        self.out_bytes += frame.len();
        self.out.push_back(frame);
    }

    /// Sends queued whole documents until this step's frames reach `step_bytes`. Access is
    /// checked again: the peer may have lost it since the document was queued.
    fn send_backlog(&mut self) -> Result<(), SessionError> {
        while self.phase == Phase::Open && self.out_bytes < self.config.step_bytes {
            if self.sending.is_some() {
                self.send_parts()?;
                continue;
            }
            // One large document at a time: the rest wait until it is ready and sent.
            if self.preparing.is_some() {
                if self.take_prepared()? {
                    continue;
                }
                break;
            }
            let Some(doc) = self.backlog.pop_first() else {
                break;
            };
            match self.visible(doc)? {
                Some(info) => self.send_snapshot(&info)?,
                None => {
                    self.send_tombstone(doc)?;
                }
            }
        }
        Ok(())
    }

    /// How many documents this side waits to receive whole: those it asked for and those the
    /// peer said it would push, that have not arrived. Reconciled with none awaited, this side
    /// has caught up with the peer.
    pub fn awaiting(&self) -> usize {
        self.awaiting.len()
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

    /// What the session knows of the peer's copy of `doc`.
    fn peer_doc(&mut self, doc: DocId) -> &mut PeerDoc {
        self.docs.entry(doc).or_default()
    }

    fn dispatch(&mut self, message: Message, checked: Prechecked) -> Result<(), SessionError> {
        match message {
            // A replayed hello is harmless; another version mid-session is not.
            Message::Hello { version, .. } if version == PROTOCOL_VERSION => Ok(()),
            Message::Hello { .. } => Err(SessionError::OutOfOrder("a second hello")),
            Message::Error { .. } => Ok(()), // handled before
            Message::Reconcile { round, ranges } => self.on_reconcile(round, ranges),
            Message::Want { doc } => self.on_want(doc),
            Message::Snapshot {
                doc,
                kind,
                space,
                bytes,
            } => self.on_snapshot((doc, space), kind, &bytes, checked),
            Message::SnapshotPart {
                doc,
                kind,
                space,
                total,
                digest,
                offset,
                bytes,
            } => self.on_snapshot_part(
                (doc, space),
                kind,
                snapshot::Whole { total, digest },
                offset,
                &bytes,
            ),
            Message::Heads {
                doc,
                heads,
                ancestors,
            } => self.on_heads(doc, &heads, &ancestors),
            Message::Sync { doc, message } => self.on_sync(doc, &message),
            Message::State { doc, bytes } => self.on_state(doc, &bytes, None),
            Message::Delta { doc, bytes, result } => self.on_state(doc, &bytes, Some(result)),
            Message::Changes {
                doc,
                heads,
                changes,
            } => self.on_changes(doc, &heads, &changes),
            Message::Ack { doc, digest } => self.on_ack(doc, digest),
            Message::Deleted { doc, kind, space } => self.on_deleted((doc, space), kind),
            Message::Resume {
                doc,
                digest,
                offset,
            } => {
                self.on_resume(doc, digest, offset);
                Ok(())
            }
            Message::Pushing { docs } => {
                // Only what this side lacks, and only so many: the set bounds what a peer can
                // make this side keep.
                for doc in docs {
                    if self.awaiting.len() >= MAX_AWAITED {
                        break;
                    }
                    if self.holds(doc)?.is_none() {
                        self.awaiting.insert(doc);
                    }
                }
                Ok(())
            }
            Message::Refused { doc, code } => {
                self.peer_doc(doc).refused = true;
                self.events.push_back(Event::Refused { doc, code });
                Ok(())
            }
        }
    }

    /// Handles the peer's turn of reconciliation: acts on what it showed, then replies.
    fn on_reconcile(
        &mut self,
        round: u32,
        ranges: Vec<crate::reconcile::Range>,
    ) -> Result<(), SessionError> {
        let turn = self.reconciler.handle(round, ranges).map_err(|e| match e {
            ReconcileError::OutOfOrder => {
                SessionError::OutOfOrder("a reconciliation turn out of order")
            }
            ReconcileError::BadItems => {
                SessionError::Protocol("items out of order or outside their prefix")
            }
        })?;
        let mut pushing = Vec::new();
        for finding in turn.findings {
            match finding {
                Finding::Matched(doc) => self.listed_in_sync(doc)?,
                Finding::Same { mine, theirs_acked } => {
                    // Either side not knowing it is in sync: record it here too, so the time
                    // of the last sync is this one.
                    if !mine.acked || !theirs_acked {
                        self.listed_in_sync(mine.doc)?;
                    }
                    if !theirs_acked {
                        self.send(&Message::Ack {
                            doc: mine.doc,
                            digest: mine.digest,
                        });
                    }
                }
                Finding::Differs { mine, .. } if mine.digest == TOMBSTONE => {
                    self.send_tombstone(mine.doc)?;
                }
                Finding::Differs { mine, theirs } if theirs == TOMBSTONE => {
                    self.on_deleted((mine.doc, mine.space), mine.kind)?;
                }
                Finding::Differs { mine, theirs } => {
                    if mine.kind == DocKind::Automerge {
                        self.start_automerge_sync(&mine, theirs)?;
                    } else {
                        self.send_state(mine.doc)?;
                    }
                }
                Finding::OnlyMine(doc) => {
                    if !self.send_tombstone(doc)? {
                        self.backlog.insert(doc);
                        pushing.push(doc);
                    }
                }
                Finding::OnlyTheirs {
                    doc,
                    kind,
                    space,
                    digest,
                } if digest == TOMBSTONE => {
                    self.on_deleted((doc, space), kind)?;
                }
                Finding::OnlyTheirs { doc, space, .. } => self.offered(doc, Some(space))?,
            }
        }
        if !pushing.is_empty() {
            self.send(&Message::Pushing { docs: pushing });
        }
        if let Some((round, ranges)) = turn.reply {
            self.send(&Message::Reconcile { round, ranges });
        }
        if turn.finished {
            self.store.set_reconciled(self.peer, self.now)?;
            self.events.push_back(Event::Reconciled);
        }
        Ok(())
    }
}
