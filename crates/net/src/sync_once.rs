//! One-off syncs: sync with a peer now and report what moved, whether the node keeps
//! connections (serving) or exists only for this sync.

use std::collections::BTreeSet;
use std::time::Duration;

use ferry_proto::{Event, Role};
use ferry_store::{Access, DocId, PeerId, Store};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, oneshot};

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
        if inner.live(peer).is_none() {
            let addresses = inner
                .store
                .peer(peer)?
                .map(|p| p.addresses)
                .filter(|a| !a.is_empty())
                .ok_or(NetError::NoAddress(peer))?;
            let conn = inner.dial_addresses(peer, &addresses).await?;
            if inner.one_off {
                let ctx = inner.session_context();
                let until = Until::Quiet(quiet);
                let result = driver::drive(ctx, peer, conn.clone(), Role::Initiator, until).await;
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
            let patience = inner.config.connect_timeout * 2 + Duration::from_secs(5);
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
        // Then wait until the session with the peer has been quiet for a moment.
        loop {
            match tokio::time::timeout(quiet, events.recv()).await {
                Err(_) => return Ok(()),
                Ok(Err(RecvError::Closed)) => return Err(NetError::Shutdown),
                Ok(Ok(NetEvent::SessionFailed { peer: p, error })) if p == peer => {
                    return Err(NetError::SessionFailed {
                        peer,
                        reason: error,
                    });
                }
                Ok(_) => {}
            }
        }
    }
}

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
        let Some(info) = store.peer(peer)? else {
            return Ok(BTreeSet::new());
        };
        let mut pending = BTreeSet::new();
        for doc in store.list()? {
            if info.access(doc) < Access::Read {
                continue;
            }
            match store.sync_status(peer, doc) {
                Ok(status) if status.pending > 0 => {
                    pending.insert(doc);
                }
                Ok(_) => {}
                // A damaged document is not synced; it is not this report's to count.
                Err(ferry_store::StoreError::Damaged { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(pending)
    })
    .await
    .map_err(|_| NetError::Panicked { peer })?
}
