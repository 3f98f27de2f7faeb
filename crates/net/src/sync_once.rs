//! One-off syncs: sync with a peer now and report what moved, whether the node keeps
//! connections (serving) or exists only for this sync.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use ferry_proto::{Event, Role};
use ferry_store::{DocId, PeerId, Store};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{Notify, broadcast, oneshot};

use crate::driver::{self, Until};
use crate::{CloseCode, NetError, NetEvent, Node};

/// What a [`Node::sync_once`] did.
///
/// # Examples
///
/// ```
/// let report = ferry_net::SyncReport::default();
/// assert!(report.sent.is_empty() && report.received.is_empty() && report.pending.is_empty());
/// ```
#[derive(Clone, Debug, Default, Eq, PartialEq)]
pub struct SyncReport {
    /// Documents with changes the peer lacked when the sync began that it now holds.
    pub sent: BTreeSet<DocId>,
    /// Documents the peer's changes updated here.
    pub received: BTreeSet<DocId>,
    /// Documents with changes the peer has still not acknowledged.
    pub pending: BTreeSet<DocId>,
}

impl Node {
    /// Syncs with `peer` now and returns once the two sides have compared everything they
    /// share and nothing has arrived for `quiet`, with a report of what moved.
    ///
    /// A node made with [`Node::start_without_dialing`] dials the peer once (no retries), runs
    /// one session and closes the connection. A serving node ([`Node::start`]) uses the live
    /// connection, or dials the peer through its dial loop, and leaves the connection open.
    ///
    /// Fails with [`NetError::NoAddress`] if the peer has no address to dial; with the dial's
    /// error ([`NetError::Dial`], [`NetError::Timeout`], [`NetError::Connection`]) if it does not
    /// answer or refuses; with [`NetError::NotReconciled`] if the session did not finish
    /// comparing documents in time; and with [`NetError::Session`] or
    /// [`NetError::SessionFailed`] if the session broke.
    pub async fn sync_once(&self, peer: PeerId, quiet: Duration) -> Result<SyncReport, NetError> {
        let store = self.inner.store.clone();
        let before = pending_for(&store, peer).await?;
        let mut events = self.subscribe();
        let mut received = BTreeSet::new();
        let run = self.run_sync_once(peer, quiet);
        tokio::pin!(run);
        let result = loop {
            tokio::select! {
                result = &mut run => break result,
                event = events.recv() => note(&mut received, peer, event),
            }
        };
        while let Ok(event) = events.try_recv() {
            note(&mut received, peer, Ok(event));
        }
        result?;
        let pending = pending_for(&store, peer).await?;
        Ok(SyncReport {
            sent: before.difference(&pending).copied().collect(),
            received,
            pending,
        })
    }

    async fn run_sync_once(&self, peer: PeerId, quiet: Duration) -> Result<(), NetError> {
        let inner = &self.inner;
        let mut events = self.subscribe();
        let patience = inner.config.connect_timeout * 2 + Duration::from_secs(5);
        // (Subscribed before looking: a session that reconciles meanwhile is heard.)
        let live = match inner.live_session(peer) {
            Some((_, true)) => true,
            // Connected, but its session has not finished catching up (or the peer is about to
            // refuse it: a TLS 1.3 client learns that only after its handshake): wait for the
            // one or the other.
            Some((conn, false)) => {
                let caught_up = async {
                    tokio::select! {
                        result = reconciled(&mut events, peer) => Some(result),
                        _ = conn.closed() => None,
                    }
                };
                match tokio::time::timeout(patience, caught_up).await {
                    Ok(Some(result)) => result.map(|()| true)?,
                    Ok(None) => false, // it ended: dial afresh below
                    Err(_) => {
                        return Err(NetError::NotReconciled {
                            peer,
                            waited: patience,
                        });
                    }
                }
            }
            None => false,
        };
        if !live {
            let addresses = inner
                .store
                .peer(peer)?
                .map(|p| p.addresses)
                .filter(|a| !a.is_empty())
                .ok_or(NetError::NoAddress(peer))?;
            let conn = inner.dial_addresses(peer, &addresses).await?;
            if inner.one_off {
                // The session runs here, and ends gracefully once settled.
                let stop = Arc::new(Notify::new());
                let ctx = inner.session_context();
                let until = Until::Stopped(stop.clone());
                let reconciled = AtomicBool::new(false);
                let drive =
                    driver::drive(ctx, peer, conn.clone(), Role::Initiator, until, &reconciled);
                tokio::pin!(drive);
                let result = tokio::select! {
                    result = &mut drive => result,
                    settled = self.settle(peer, quiet, &mut events, false, patience) => match settled {
                        Ok(()) => {
                            stop.notify_one();
                            drive.await
                        }
                        Err(e) => Err(e),
                    },
                };
                conn.close(CloseCode::Shutdown.into(), b"done");
                return result;
            }
            // A serving node keeps the connection: it runs as the peer's live connection, and
            // its session's catch-up ends with a reconciliation.
            let (ended_tx, ended) = oneshot::channel();
            let run = inner
                .clone()
                .run_connection(peer, conn, Role::Initiator, Some(ended_tx));
            inner.spawn(run);
            let caught_up = async {
                tokio::select! {
                    result = reconciled(&mut events, peer) => result,
                    ended = ended => match ended {
                        // Not kept: another connection to the peer runs its session.
                        Ok(Ok(())) if inner.live(peer).is_some() => Ok(()),
                        Ok(Ok(())) => Err(NetError::NotReconciled { peer, waited: Duration::ZERO }),
                        Ok(Err(e)) => Err(e),
                        Err(_) => Err(NetError::Shutdown),
                    },
                }
            };
            tokio::time::timeout(patience, caught_up)
                .await
                .map_err(|_| NetError::NotReconciled {
                    peer,
                    waited: patience,
                })??;
        }
        self.settle(peer, quiet, &mut events, true, patience).await
    }

    /// Waits until the session with `peer` has settled: reconciliation has finished, nothing
    /// has arrived for `quiet`, and the peer has acknowledged every change it lacked (or
    /// refused it). Acknowledgements are waited for up to [`ACK_PATIENCE`] past the quiet;
    /// what is still unacknowledged then is reported as pending, not as an error.
    async fn settle(
        &self,
        peer: PeerId,
        quiet: Duration,
        events: &mut broadcast::Receiver<NetEvent>,
        mut reconciled: bool,
        patience: Duration,
    ) -> Result<(), NetError> {
        let started = tokio::time::Instant::now();
        let mut refused = BTreeSet::new();
        let mut acks_until = None;
        // Quiet means nothing from this peer's session: other peers' traffic does not count.
        let mut quiet_at = started + quiet;
        loop {
            match tokio::time::timeout_at(quiet_at, events.recv()).await {
                Ok(Ok(NetEvent::Session { peer: p, event })) if p == peer => {
                    quiet_at = tokio::time::Instant::now() + quiet;
                    match event {
                        Event::Reconciled => reconciled = true,
                        Event::Refused { doc, .. } => {
                            refused.insert(doc);
                        }
                        _ => {}
                    }
                }
                Ok(Ok(NetEvent::SessionFailed { peer: p, error })) if p == peer => {
                    return Err(NetError::SessionFailed {
                        peer,
                        reason: error,
                    });
                }
                Ok(Ok(_) | Err(RecvError::Lagged(_))) => {}
                Ok(Err(RecvError::Closed)) => return Err(NetError::Shutdown),
                Err(_) if !reconciled => {
                    quiet_at = tokio::time::Instant::now() + quiet;
                    if started.elapsed() > patience {
                        return Err(NetError::NotReconciled {
                            peer,
                            waited: patience,
                        });
                    }
                }
                Err(_) => {
                    // Quiet: done once the peer holds what it lacked.
                    let pending = pending_for(&self.inner.store, peer).await?;
                    if pending.is_subset(&refused) {
                        return Ok(());
                    }
                    let now = tokio::time::Instant::now();
                    if now >= *acks_until.get_or_insert(now + ACK_PATIENCE) {
                        return Ok(());
                    }
                    quiet_at = now + quiet;
                }
            }
        }
    }
}

/// How long a one-off sync waits, once quiet, for the peer to acknowledge what it was sent.
const ACK_PATIENCE: Duration = Duration::from_secs(10);

/// Waits for the live session with `peer` to finish reconciling.
async fn reconciled(
    events: &mut broadcast::Receiver<NetEvent>,
    peer: PeerId,
) -> Result<(), NetError> {
    loop {
        match events.recv().await {
            Ok(NetEvent::Session {
                peer: p,
                event: Event::Reconciled,
            }) if p == peer => return Ok(()),
            Ok(NetEvent::SessionFailed { peer: p, error }) if p == peer => {
                return Err(NetError::SessionFailed {
                    peer,
                    reason: error,
                });
            }
            Ok(_) | Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return Err(NetError::Shutdown),
        }
    }
}

/// Counts a document the peer's session updated here.
fn note(received: &mut BTreeSet<DocId>, peer: PeerId, event: Result<NetEvent, RecvError>) {
    if let Ok(NetEvent::Session {
        peer: p,
        event: Event::DocUpdated { doc },
    }) = event
        && p == peer
    {
        received.insert(doc);
    }
}

/// The documents `peer` may read that hold changes it has not acknowledged.
async fn pending_for(store: &Store, peer: PeerId) -> Result<BTreeSet<DocId>, NetError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || {
        let mut pending = BTreeSet::new();
        for doc in store.docs_readable_by(peer)? {
            match store.sync_status(peer, doc) {
                Ok(status) if status.pending > 0 => {
                    pending.insert(doc);
                }
                Ok(_) => {}
                // A damaged document is not synced; it is not this report's to count. Nor is
                // one deleted or forgotten here.
                Err(
                    ferry_store::StoreError::Damaged { .. }
                    | ferry_store::StoreError::NoSuchDocument(_),
                ) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(pending)
    })
    .await
    .map_err(|_| NetError::Panicked { peer })?
}
