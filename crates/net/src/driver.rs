//! Moves one session's frames over one QUIC stream, and the store's changes into the session.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use ferry_proto::{Role, Session, SessionConfig, SessionError};
use ferry_store::{DocId, PeerId, Store, wall_millis};
use quinn::{Connection, SendStream};
use tokio::sync::{Notify, broadcast};
use tokio::time::Instant;

use crate::progress::Progress;
use crate::{CloseCode, NetError, NetEvent};

/// What a driver needs from its node: the store, how sessions behave, and where to report.
#[derive(Clone, Debug)]
pub(crate) struct SessionContext {
    pub(crate) store: Store,
    pub(crate) config: SessionConfig,
    pub(crate) events: broadcast::Sender<NetEvent>,
    /// How long a session stays idle before it forgets its peer state
    /// ([`Session::forget_idle`]).
    pub(crate) forget_after: Duration,
    /// How long the peer may take to open the session and send its hello, or to finish a
    /// frame it began ([`NetConfig::frame_timeout`](crate::NetConfig::frame_timeout)).
    pub(crate) frame_timeout: Duration,
}

/// Most stream segments taken in one read: everything that has arrived, up to this many, goes
/// to the session in one step, so what they carry shares one flush and one blocking-thread
/// hand-off. Under load, segments pile up while a step runs, and the next read takes them all.
const READ_SEGMENTS: usize = 64;

/// Changed documents pushed per session step, so that one step's frames stay bounded in memory
/// and the peer's frames are read in between.
const PUSH_BATCH: usize = 256;

/// How often a session waiting on a document's check looks whether it is done.
const LOAD_POLL: Duration = Duration::from_millis(5);

/// How long an error frame gets to reach the peer before the connection is closed.
const ERROR_GRACE: Duration = Duration::from_millis(500);

/// Since when a session has waited on its peer (see [`Session::awaits_peer`]): from the moment
/// it first did, or from the last whole frame it read while it goes on waiting, so a peer that
/// keeps sending whole frames is never cut off, and one that dribbles one frame is.
#[derive(Default)]
struct Awaited {
    since: Option<Instant>,
    frames_in: u64,
}

impl Awaited {
    fn update(&mut self, session: &Session) {
        let moved = session.frames_in() != self.frames_in;
        self.frames_in = session.frames_in();
        self.since = match (session.awaits_peer(), self.since) {
            (false, _) => None,
            (true, Some(since)) if !moved => Some(since),
            (true, _) => Some(Instant::now()),
        };
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// When a session ends on its own: never (a live session), or when told to.
#[derive(Clone, Debug)]
pub(crate) enum Until {
    /// Until the connection closes.
    Closed,
    /// Until this is notified; then the stream is finished gracefully.
    Stopped(Arc<Notify>),
}

/// Runs a session with `peer` on `conn` until the connection ends, the session fails, or
/// `until` says it is done. A session error closes the connection with
/// [`CloseCode::Protocol`] after its error frame.
///
/// Reading and writing go on at once: what the session queues is written while the peer's
/// frames are still read, so two sides each sending the other a lot (documents one way,
/// acknowledgements the other) never wait on each other. New work (changed documents to push,
/// whole documents queued for the peer) is taken on only while less than [`OUT_LOW`] bytes
/// wait to be written, and the peer's frames are read only while less than [`OUT_HIGH`] do,
/// so what waits stays bounded per peer.
pub(crate) async fn drive(
    ctx: SessionContext,
    peer: PeerId,
    conn: Connection,
    role: Role,
    until: Until,
    progress: &Progress,
) -> Result<(), NetError> {
    let stream = match role {
        Role::Initiator => conn.open_bi().await,
        Role::Responder => {
            // A peer that connects but never opens its session holds the connection no longer
            // than it may take to finish a frame.
            match tokio::time::timeout(ctx.frame_timeout, conn.accept_bi()).await {
                Ok(stream) => stream,
                Err(_) => {
                    conn.close(CloseCode::Protocol.into(), b"no session opened in time");
                    return Err(NetError::Stream {
                        peer,
                        what: "the peer opened no session in time".into(),
                    });
                }
            }
        }
    };
    let (mut send, mut recv) = stream.map_err(|source| NetError::Connection { peer, source })?;
    // Every stream after the session's carries a blob: served for as long as the session runs.
    progress.stream_opened();
    let serving = tokio::spawn(crate::blobs::serve(ctx.store.clone(), peer, conn.clone()));
    let _serving = AbortOnDrop(serving);
    // Watched before the session lists documents, so no change falls between the two. The
    // feed is a set of changed documents: however far behind this session falls, nothing is
    // dropped and nothing needs to start over.
    let feed = ctx.store.watch(peer);
    let mut changed: BTreeSet<DocId> = BTreeSet::new();
    let (store, config) = (ctx.store.clone(), ctx.config.clone());
    let mut session = tokio::task::spawn_blocking(move || Session::new(store, peer, role, config))
        .await
        .map_err(|_| NetError::Panicked { peer })?
        .map_err(|source| NetError::Session { peer, source })?;
    tracing::debug!(%peer, ?role, "session open");
    let mut out = Outbound::default();
    out.take(&ctx.events, progress, peer, &mut session);

    let stop = match &until {
        Until::Closed => None,
        Until::Stopped(stop) => Some(stop.clone()),
    };
    let mut segments = vec![bytes::Bytes::new(); READ_SEGMENTS];
    // Idle for `forget_after`, the session forgets its peer state. The timer is reset only
    // when it fires early, not at every step; once it has fired on an idle session (whether
    // or not there was anything to forget), it stays off until the session's next step.
    let mut last_step = Instant::now();
    let mut rested = false;
    let idle = tokio::time::sleep(ctx.forget_after);
    tokio::pin!(idle);
    // Since when the session has waited on the peer to finish its hello or a frame, if it
    // does: the peer gets `frame_timeout` from there.
    let mut awaited = Awaited::default();
    awaited.update(&session);
    loop {
        let backlog = session.has_backlog();
        let (room, reading) = (out.len() < OUT_LOW, out.len() < OUT_HIGH);
        // What a step did: its result, and whether it ended the session.
        let stepped: Option<Result<(), SessionError>> = tokio::select! {
            read = recv.read_chunks(&mut segments), if reading => {
                let bytes = match read {
                    Ok(Some(n)) => segments[..n].concat(),
                    Ok(None) => {
                        // The peer ended the session: what is queued still goes.
                        out.write_all(peer, &mut send).await?;
                        return Ok(());
                    }
                    Err(quinn::ReadError::ConnectionLost(source)) => {
                        return Err(NetError::Connection { peer, source });
                    }
                    Err(e) => return Err(NetError::Stream { peer, what: e.to_string() }),
                };
                let result;
                (session, result) = step(peer, session, move |s| s.handle_bytes(&bytes, wall_millis())).await?;
                Some(result)
            }
            written = out.write_some(peer, &mut send), if !out.is_empty() => {
                written?;
                None
            }
            news = feed.next() => {
                if news.access_widened {
                    // The peer may read more than the session listed: list again.
                    out.write_all(peer, &mut send).await?;
                    conn.close(CloseCode::Resync.into(), b"access widened");
                    return Ok(());
                }
                progress.fed(news.docs.len());
                changed.extend(news.docs);
                None
            }
            () = std::future::ready(()), if room && !changed.is_empty() => {
                let batch: Vec<DocId> = std::iter::from_fn(|| changed.pop_first())
                    .take(PUSH_BATCH)
                    .collect();
                let result;
                (session, result) = step(peer, session, move |s| s.docs_changed(batch)).await?;
                Some(result)
            }
            // A document checked on a thread of its own: looked at every few milliseconds,
            // and taken in by the first step after it is done.
            () = tokio::time::sleep(LOAD_POLL), if session.is_loading() => {
                let result;
                (session, result) = step(peer, session, Session::work).await?;
                Some(result)
            }
            () = std::future::ready(()), if room && backlog => {
                let result;
                (session, result) = step(peer, session, Session::work).await?;
                Some(result)
            }
            () = &mut idle, if !rested => {
                let due = last_step + ctx.forget_after;
                if Instant::now() < due || !out.is_empty() || !changed.is_empty() {
                    idle.as_mut().reset(due.max(Instant::now() + ctx.forget_after / 4));
                    continue;
                }
                let forgot;
                (session, forgot) = step(peer, session, Session::forget_idle).await?;
                progress.set_remembered(session.remembered());
                if forgot {
                    tracing::trace!(%peer, "idle session forgot its peer state");
                }
                rested = true;
                None
            }
            () = tokio::time::sleep_until(awaited.since.unwrap_or_else(Instant::now) + ctx.frame_timeout), if awaited.since.is_some() => {
                Some(Err(SessionError::Protocol("the peer did not finish its hello or a frame in time")))
            }
            () = stopped(stop.as_deref()) => {
                out.write_all(peer, &mut send).await?;
                let _ = send.finish();
                let _ = tokio::time::timeout(ERROR_GRACE, send.stopped()).await;
                return Ok(());
            }
        };
        if let Some(result) = stepped {
            awaited.update(&session);
            progress.set_remembered(session.remembered());
            last_step = Instant::now();
            rested = false;
            out.take(&ctx.events, progress, peer, &mut session);
            if let Err(error) = result {
                // The error frame is the last one queued.
                let _ = tokio::time::timeout(ERROR_GRACE, out.write_all(peer, &mut send)).await;
                return fail(peer, &conn, &mut send, error).await;
            }
        }
    }
}

/// Bytes waiting to be written below which the driver takes on new work.
const OUT_LOW: usize = 1 << 20;

/// Bytes waiting to be written at which the driver stops reading the peer's frames.
const OUT_HIGH: usize = 8 << 20;

/// Frames the session queued, waiting to be written to the stream.
#[derive(Debug, Default)]
struct Outbound {
    frames: std::collections::VecDeque<bytes::Bytes>,
    len: usize,
}

impl Outbound {
    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Takes every frame the session has queued, and reports its events.
    fn take(
        &mut self,
        events: &broadcast::Sender<NetEvent>,
        progress: &Progress,
        peer: PeerId,
        session: &mut Session,
    ) {
        // A step's frames go out as one piece, written as far as the stream takes it at
        // each turn: one frame per turn would let a step's thousands of small frames
        // (acknowledgements, say) wait behind the steps that follow.
        let mut piece = Vec::new();
        while let Some(frame) = session.poll_transmit() {
            if piece.is_empty() {
                piece = frame;
            } else {
                piece.extend_from_slice(&frame);
            }
        }
        if !piece.is_empty() {
            self.len += piece.len();
            self.frames.push_back(piece.into());
        }
        while let Some(event) = session.poll_event() {
            progress.note(&event);
            let _ = events.send(NetEvent::Session { peer, event }); // no subscriber is fine
        }
        progress.set_awaiting(session.awaiting());
    }

    /// Writes what the stream takes now (at least a byte). Cancel-safe: nothing is lost if
    /// another branch wins meanwhile.
    async fn write_some(&mut self, peer: PeerId, send: &mut SendStream) -> Result<(), NetError> {
        let Some(front) = self.frames.front_mut() else {
            return Ok(());
        };
        let n = send.write(front).await.map_err(|e| write_error(peer, e))?;
        self.len -= n;
        if n == front.len() {
            self.frames.pop_front();
        } else {
            let _ = front.split_to(n);
        }
        Ok(())
    }

    /// Writes everything queued.
    async fn write_all(&mut self, peer: PeerId, send: &mut SendStream) -> Result<(), NetError> {
        while !self.is_empty() {
            self.write_some(peer, send).await?;
        }
        Ok(())
    }
}

fn write_error(peer: PeerId, e: quinn::WriteError) -> NetError {
    match e {
        quinn::WriteError::ConnectionLost(source) => NetError::Connection { peer, source },
        e => NetError::Stream {
            peer,
            what: e.to_string(),
        },
    }
}

async fn stopped(stop: Option<&Notify>) {
    match stop {
        Some(stop) => stop.notified().await,
        None => std::future::pending().await,
    }
}

/// Sends the error frame the session queued, then closes the connection with
/// [`CloseCode::Protocol`].
async fn fail(
    peer: PeerId,
    conn: &Connection,
    send: &mut SendStream,
    error: SessionError,
) -> Result<(), NetError> {
    let _ = send.finish();
    let _ = tokio::time::timeout(ERROR_GRACE, send.stopped()).await;
    let code = match &error {
        SessionError::Store(_) => CloseCode::Internal,
        SessionError::Peer { .. } => CloseCode::Shutdown,
        _ => CloseCode::Protocol,
    };
    let reason = error.to_string();
    conn.close(code.into(), reason.as_bytes());
    Err(NetError::Session {
        peer,
        source: error,
    })
}

/// Runs `f` on the session on a blocking thread: sessions read and write the store, and a
/// write waits for its fsync.
async fn step<R: Send + 'static>(
    peer: PeerId,
    mut session: Session,
    f: impl FnOnce(&mut Session) -> R + Send + 'static,
) -> Result<(Session, R), NetError> {
    tokio::task::spawn_blocking(move || {
        let result = f(&mut session);
        (session, result)
    })
    .await
    .map_err(|_| NetError::Panicked { peer })
}
