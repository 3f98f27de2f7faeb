//! One-off syncs: sync with a peer now and report what moved, whether the node keeps
//! connections (serving) or exists only for this sync.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_proto::Role;
use ferry_store::{DocId, PeerId, Store};
use tokio::sync::{Notify, oneshot};

use crate::driver::{self, Until};
use crate::progress::{Observed, Progress};
use crate::{CloseCode, NetError, Node};

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
    /// The report is taken from the session itself, not from the node's event stream, so it
    /// is whole however many documents move.
    ///
    /// Fails with [`NetError::NoAddress`] if the peer has no address to dial; with the dial's
    /// error ([`NetError::Dial`], [`NetError::Timeout`], [`NetError::Connection`]) if it does not
    /// answer or refuses; with [`NetError::NotReconciled`] if the session stalled before it
    /// finished comparing documents; and with [`NetError::Session`] or
    /// [`NetError::SessionFailed`] if the session broke.
    pub async fn sync_once(&self, peer: PeerId, quiet: Duration) -> Result<SyncReport, NetError> {
        let store = self.inner.store.clone();
        let before = pending_for(&store, peer).await?;
        let observed = self.run_sync_once(peer, quiet).await?;
        let pending = pending_for(&store, peer).await?;
        let received = lock(&observed).updated.clone();
        Ok(SyncReport {
            sent: before.difference(&pending).copied().collect(),
            received,
            pending,
        })
    }

    /// Runs the sync, and returns what the session did meanwhile.
    async fn run_sync_once(
        &self,
        peer: PeerId,
        quiet: Duration,
    ) -> Result<Arc<Mutex<Observed>>, NetError> {
        let inner = &self.inner;
        let patience = inner.config.connect_timeout * 2 + Duration::from_secs(5);
        // A live session: observed from now. If it ends before it has caught up, the peer is
        // dialed afresh.
        if let Some((_, progress)) = inner.live_session(peer) {
            let observed = progress.observe();
            if self
                .settle(peer, &progress, &observed, quiet, patience)
                .await?
                == Settled::Done
            {
                return Ok(observed);
            }
        }
        let addresses = inner
            .store
            .peer(peer)?
            .map(|p| p.addresses)
            .filter(|a| !a.is_empty())
            .ok_or(NetError::NoAddress(peer))?;
        let conn = inner.dial_addresses(peer, &addresses).await?;
        let progress = Progress::new();
        let observed = progress.observe();
        if inner.one_off {
            // The session runs here, and ends gracefully once settled.
            let stop = Arc::new(Notify::new());
            let ctx = inner.session_context();
            let until = Until::Stopped(stop.clone());
            let drive = driver::drive(ctx, peer, conn.clone(), Role::Initiator, until, &progress);
            tokio::pin!(drive);
            let result = tokio::select! {
                result = &mut drive => result,
                settled = self.settle(peer, &progress, &observed, quiet, patience) => match settled {
                    Ok(_) => {
                        stop.notify_one();
                        drive.await
                    }
                    Err(e) => Err(e),
                },
            };
            conn.close(CloseCode::Shutdown.into(), b"done");
            return result.map(|()| observed);
        }
        // A serving node keeps the connection: it runs as the peer's live connection.
        let (ended_tx, ended) = oneshot::channel();
        let run = inner.clone().run_connection(
            peer,
            (conn, progress.clone()),
            Role::Initiator,
            Some(ended_tx),
        );
        inner.spawn(run);
        if self
            .settle(peer, &progress, &observed, quiet, patience)
            .await?
            == Settled::Done
        {
            return Ok(observed);
        }
        // It ended before catching up: refused (a TLS 1.3 client learns that only after its
        // handshake), lost, or not kept because another connection to the peer runs its
        // session, which is then the one to wait on.
        let not_reconciled = NetError::NotReconciled {
            peer,
            waited: Duration::ZERO,
        };
        match ended.await {
            Ok(Err(e)) => Err(e),
            Ok(Ok(())) => match inner.live_session(peer) {
                Some((_, live)) => {
                    let observed = live.observe();
                    match self.settle(peer, &live, &observed, quiet, patience).await? {
                        Settled::Done => Ok(observed),
                        Settled::EndedEarly => Err(not_reconciled),
                    }
                }
                None => Err(not_reconciled),
            },
            Err(_) => Err(NetError::Shutdown),
        }
    }

    /// Waits until the session has settled: reconciliation has finished, nothing has happened
    /// in it for `quiet`, and the peer has acknowledged every change it lacked (or refused
    /// it). Acknowledgements are waited for up to [`ACK_PATIENCE`] past the quiet; what is
    /// still unacknowledged then is reported as pending, not as an error. A session that does
    /// nothing for `patience` before it has reconciled has stalled.
    async fn settle(
        &self,
        peer: PeerId,
        progress: &Progress,
        observed: &Mutex<Observed>,
        quiet: Duration,
        patience: Duration,
    ) -> Result<Settled, NetError> {
        let mut activity = progress.activity();
        let mut acks_until = None;
        loop {
            match progress.ended() {
                Some(Some(reason)) => return Err(NetError::SessionFailed { peer, reason }),
                Some(None) if !progress.is_reconciled() => return Ok(Settled::EndedEarly),
                Some(None) => return Ok(Settled::Done),
                None => {}
            }
            // Caught up: reconciled, and every whole document asked for or announced is here.
            let reconciled = progress.is_caught_up();
            let wait = if reconciled { quiet } else { patience };
            match tokio::time::timeout(wait, activity.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Ok(Settled::Done), // the session is gone
                // Reconciled, but what was awaited stopped coming (the peer lost access to it
                // meanwhile, say): done, with what is still pending reported.
                Err(_) if !reconciled && progress.is_reconciled() => return Ok(Settled::Done),
                Err(_) if !reconciled => {
                    return Err(NetError::NotReconciled {
                        peer,
                        waited: patience,
                    });
                }
                Err(_) => {
                    // Quiet: done once the peer holds what it lacked.
                    let pending = pending_for(&self.inner.store, peer).await?;
                    if pending.is_subset(&lock(observed).refused) {
                        return Ok(Settled::Done);
                    }
                    let now = tokio::time::Instant::now();
                    if now >= *acks_until.get_or_insert(now + ACK_PATIENCE) {
                        return Ok(Settled::Done);
                    }
                }
            }
        }
    }
}

/// How a session a one-off sync waited on came to rest.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
enum Settled {
    /// It reconciled and went quiet (or ended after reconciling).
    Done,
    /// It ended before it had reconciled.
    EndedEarly,
}

/// How long a one-off sync waits, once quiet, for the peer to acknowledge what it was sent.
const ACK_PATIENCE: Duration = Duration::from_secs(10);

fn lock(observed: &Mutex<Observed>) -> std::sync::MutexGuard<'_, Observed> {
    observed.lock().unwrap_or_else(|p| p.into_inner())
}

/// The documents `peer` may read that hold changes it has not acknowledged: told from the
/// sync records' heads and digests, without loading a document.
async fn pending_for(store: &Store, peer: PeerId) -> Result<BTreeSet<DocId>, NetError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || {
        let mut pending = BTreeSet::new();
        for doc in store.docs_readable_by(peer)? {
            match store.is_in_sync(peer, doc) {
                Ok(false) => {
                    pending.insert(doc);
                }
                Ok(true) => {}
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
