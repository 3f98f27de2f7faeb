//! Moves one session's frames over one QUIC stream, and the store's changes into the session.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ferry_proto::{Role, Session, SessionConfig, SessionError};
use ferry_store::{DocId, PeerId, Store, wall_millis};
use quinn::{Connection, SendStream};
use tokio::sync::{Notify, broadcast};

use crate::{CloseCode, NetError, NetEvent};

/// What a driver needs from its node: the store, how sessions behave, and where to report.
#[derive(Clone, Debug)]
pub(crate) struct SessionContext {
    pub(crate) store: Store,
    pub(crate) config: SessionConfig,
    pub(crate) events: broadcast::Sender<NetEvent>,
}

/// Largest chunk read from the stream at once.
const READ_CHUNK: usize = 256 * 1024;

/// Changed documents pushed per session step, so that one step's frames stay bounded in memory
/// and the peer's frames are read in between.
const PUSH_BATCH: usize = 256;

/// How long an error frame gets to reach the peer before the connection is closed.
const ERROR_GRACE: Duration = Duration::from_millis(500);

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
pub(crate) async fn drive(
    ctx: SessionContext,
    peer: PeerId,
    conn: Connection,
    role: Role,
    until: Until,
    reconciled: &AtomicBool,
) -> Result<(), NetError> {
    let stream = match role {
        Role::Initiator => conn.open_bi().await,
        Role::Responder => conn.accept_bi().await,
    };
    let (mut send, mut recv) = stream.map_err(|source| NetError::Connection { peer, source })?;
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
    flush(&ctx.events, reconciled, peer, &mut session, &mut send).await?;

    let stop = match &until {
        Until::Closed => None,
        Until::Stopped(stop) => Some(stop.clone()),
    };
    loop {
        tokio::select! {
            chunk = recv.read_chunk(READ_CHUNK, true) => {
                let chunk = match chunk {
                    Ok(Some(chunk)) => chunk,
                    Ok(None) => return Ok(()), // the peer ended the session
                    Err(quinn::ReadError::ConnectionLost(source)) => {
                        return Err(NetError::Connection { peer, source });
                    }
                    Err(e) => return Err(NetError::Stream { peer, what: e.to_string() }),
                };
                let result;
                (session, result) = step(peer, session, move |s| s.handle_bytes(&chunk.bytes, wall_millis())).await?;
                flush(&ctx.events, reconciled, peer, &mut session, &mut send).await?;
                if let Err(error) = result {
                    return fail(peer, &conn, &mut send, error).await;
                }
            }
            news = feed.next() => {
                if news.access_widened {
                    // The peer may read more than the session listed: list again.
                    conn.close(CloseCode::Resync.into(), b"access widened");
                    return Ok(());
                }
                changed.extend(news.docs);
            }
            () = std::future::ready(()), if !changed.is_empty() => {
                let batch: Vec<DocId> = std::iter::from_fn(|| changed.pop_first())
                    .take(PUSH_BATCH)
                    .collect();
                let result;
                (session, result) = step(peer, session, move |s| s.docs_changed(batch)).await?;
                flush(&ctx.events, reconciled, peer, &mut session, &mut send).await?;
                if let Err(error) = result {
                    return fail(peer, &conn, &mut send, error).await;
                }
            }
            () = stopped(stop.as_deref()) => {
                let _ = send.finish();
                let _ = tokio::time::timeout(ERROR_GRACE, send.stopped()).await;
                return Ok(());
            }
        }
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

/// Sends every frame the session has queued, in one write, and reports its events.
async fn flush(
    events: &broadcast::Sender<NetEvent>,
    reconciled: &AtomicBool,
    peer: PeerId,
    session: &mut Session,
    send: &mut SendStream,
) -> Result<(), NetError> {
    let mut out = Vec::new();
    while let Some(frame) = session.poll_transmit() {
        out.extend_from_slice(&frame);
    }
    if session.is_reconciled() {
        reconciled.store(true, Ordering::SeqCst);
    }
    while let Some(event) = session.poll_event() {
        let _ = events.send(NetEvent::Session { peer, event }); // no subscriber is fine
    }
    if out.is_empty() {
        return Ok(());
    }
    send.write_all(&out).await.map_err(|e| match e {
        quinn::WriteError::ConnectionLost(source) => NetError::Connection { peer, source },
        e => NetError::Stream {
            peer,
            what: e.to_string(),
        },
    })
}
