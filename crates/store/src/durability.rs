//! When a commit returns: after its own flush, or after a shared group flush.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::broadcast;

use crate::{StoreError, StoreEvent};

/// How the store makes a commit durable before the call returns.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use ferry_store::{Durability, StoreConfig};
///
/// let safe = StoreConfig::default(); // Durability::Immediate
/// assert_eq!(safe.durability, Durability::Immediate);
/// let fast = StoreConfig {
///     durability: Durability::Batched { interval: Duration::from_millis(5) },
///     ..StoreConfig::default()
/// };
/// ```
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub enum Durability {
    /// Every commit is flushed to disk (fsync) before it returns. The default.
    #[default]
    Immediate,
    /// Group commit: a background thread flushes every `interval`, and each commit returns once
    /// the flush that covers it is done. Concurrent writers share one flush, so throughput rises
    /// and each commit waits up to `interval` longer. Events wait for that flush too; reads
    /// may see a change a moment before it is durable, so the sync layer calls
    /// [`Store::flush`](crate::Store::flush) before it sends anything to a peer.
    Batched {
        /// How often the background thread flushes.
        interval: Duration,
    },
}

/// The group-commit machinery of a batched store: commits are numbered as they are applied,
/// and the flusher thread flushes and then releases everything up to the latest number.
#[derive(Debug)]
pub(crate) struct GroupCommit {
    state: Mutex<GroupState>,
    flushed: Condvar,
    wake: Condvar,
}

#[derive(Debug, Default)]
struct GroupState {
    applied: u64,
    flushed: u64,
    /// Events of applied commits, in commit order, sent once their flush is done.
    pending: Vec<StoreEvent>,
    failed: bool,
    stop: bool,
}

impl GroupCommit {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(GroupState::default()),
            flushed: Condvar::new(),
            wake: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, GroupState> {
        // A panic while holding this lock leaves only counters behind, which stay consistent.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records an applied commit and its events (called in commit order); returns its ticket.
    pub(crate) fn applied(&self, events: Vec<StoreEvent>) -> u64 {
        let mut state = self.lock();
        state.applied += 1;
        state.pending.extend(events);
        state.applied
    }

    /// Waits until the commit with this ticket is flushed.
    pub(crate) fn wait(&self, ticket: u64) -> Result<(), StoreError> {
        let mut state = self.lock();
        while state.flushed < ticket && !state.failed {
            state = self
                .flushed
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        if state.flushed >= ticket {
            Ok(())
        } else {
            Err(StoreError::FlusherFailed)
        }
    }

    /// Starts the flusher thread.
    pub(crate) fn start(
        self: &Arc<Self>,
        db: sled::Db,
        events: broadcast::Sender<StoreEvent>,
        interval: Duration,
    ) -> std::io::Result<JoinHandle<()>> {
        let group = Arc::clone(self);
        std::thread::Builder::new()
            .name("ferry-store-flush".into())
            .spawn(move || group.run(&db, &events, interval))
    }

    fn run(&self, db: &sled::Db, events: &broadcast::Sender<StoreEvent>, interval: Duration) {
        loop {
            let (target, pending, stop) = {
                let mut state = self.lock();
                if !state.stop {
                    state = self
                        .wake
                        .wait_timeout(state, interval)
                        .map(|(guard, _)| guard)
                        .unwrap_or_else(|poisoned| poisoned.into_inner().0);
                }
                (
                    state.applied,
                    std::mem::take(&mut state.pending),
                    state.stop,
                )
            };
            let ok = target == 0 || db.flush().is_ok();
            {
                let mut state = self.lock();
                if ok {
                    state.flushed = state.flushed.max(target);
                } else {
                    state.failed = true;
                }
            }
            self.flushed.notify_all();
            if ok {
                for event in pending {
                    // No subscribers is fine.
                    let _ = events.send(event);
                }
            }
            if stop || !ok {
                return;
            }
        }
    }

    /// Asks the flusher to flush once more and stop.
    pub(crate) fn stop(&self) {
        self.lock().stop = true;
        self.wake.notify_all();
    }
}
