//! When a commit returns: after its own flush, or after a shared group flush.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

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
    /// Every commit is flushed to disk (fsync) before it returns. The default. Commits from
    /// concurrent writers that are ready at the same moment share a flush.
    #[default]
    Immediate,
    /// Group commit with a gathering delay: a flush waits `interval` before it starts, so
    /// that the commits of other writers made meanwhile join it, and each commit returns once
    /// the flush that covers it is done. Fewer, larger flushes; each commit waits up to about
    /// `interval` longer.
    Batched {
        /// How long a flush waits for more commits to join it.
        interval: Duration,
    },
}

/// Group commit, for both modes: commits are numbered as they are applied to sled (in commit
/// order, under the store's lock), and a committer waits until a flush covers its number.
/// Whoever finds no flush running leads the next one, which covers every commit applied by then;
/// the others wait for it. Concurrent writers so share flushes in either mode; a batched store's
/// leader first waits its interval, to let more commits join.
///
/// Events of a commit are sent by the leader of the flush that covers it, under this lock, so
/// subscribers see them in commit order and only once they are durable.
#[derive(Debug)]
pub(crate) struct GroupCommit {
    state: Mutex<GroupState>,
    changed: Condvar,
    gather: Duration,
    /// Tests make the next flush fail.
    #[cfg(test)]
    pub(crate) fail_next_flush: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Default)]
struct GroupState {
    applied: u64,
    flushed: u64,
    flushing: bool,
    /// Events of applied commits, in commit order, sent once their flush is done.
    pending: Vec<StoreEvent>,
    /// A flush failed: what was written since may not be on disk, and nothing more is
    /// promised until the store is reopened.
    failed: bool,
}

impl GroupCommit {
    pub(crate) fn new(durability: Durability) -> Self {
        Self {
            state: Mutex::new(GroupState::default()),
            changed: Condvar::new(),
            #[cfg(test)]
            fail_next_flush: std::sync::atomic::AtomicBool::new(false),
            gather: match durability {
                Durability::Immediate => Duration::ZERO,
                Durability::Batched { interval } => interval,
            },
        }
    }

    fn lock(&self) -> MutexGuard<'_, GroupState> {
        // A panic while holding this lock leaves only counters behind, which stay consistent.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records a commit just applied to sled, and its events (called in commit order); returns
    /// its ticket.
    pub(crate) fn applied(&self, events: Vec<StoreEvent>) -> u64 {
        let mut state = self.lock();
        state.applied += 1;
        state.pending.extend(events);
        state.applied
    }

    fn flush(&self, db: &sled::Db) -> sled::Result<usize> {
        #[cfg(test)]
        if self
            .fail_next_flush
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            return Err(sled::Error::Io(std::io::Error::other(
                "injected flush failure",
            )));
        }
        db.flush()
    }

    /// The ticket of the last commit applied.
    pub(crate) fn last_applied(&self) -> u64 {
        self.lock().applied
    }

    /// Returns once a flush has covered the commit with this ticket, leading one if none is
    /// running.
    pub(crate) fn wait_durable(
        &self,
        db: &sled::Db,
        announce: &dyn Fn(StoreEvent),
        ticket: u64,
    ) -> Result<(), StoreError> {
        let mut state = self.lock();
        loop {
            if state.flushed >= ticket {
                return Ok(());
            }
            if state.failed {
                return Err(StoreError::FlushFailed);
            }
            if !state.flushing {
                break;
            }
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        state.flushing = true;
        drop(state);

        if !self.gather.is_zero() {
            std::thread::sleep(self.gather);
        }
        let (target, pending) = {
            let mut state = self.lock();
            (state.applied, std::mem::take(&mut state.pending))
        };
        let flushed = self.flush(db);

        let mut state = self.lock();
        state.flushing = false;
        match &flushed {
            Ok(_) => {
                state.flushed = target;
                for event in pending {
                    announce(event);
                }
            }
            Err(_) => state.failed = true,
        }
        drop(state);
        self.changed.notify_all();
        flushed.map(|_| ()).map_err(StoreError::from)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use automerge::transaction::Transactable;
    use automerge::{ROOT, ReadDoc};

    use crate::{DocKind, Store, StoreError};

    #[test]
    fn a_failed_flush_fails_every_later_commit_and_the_store_reopens_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (doc, counter) = {
            let store = Store::open(dir.path()).unwrap();
            let doc = store.create(DocKind::Automerge).unwrap();
            store.change(doc, |tx| tx.put(ROOT, "saved", 1)).unwrap();
            let counter = store.create(DocKind::GCounter).unwrap();
            store.increment(counter, 2).unwrap();

            store
                .shared
                .group
                .fail_next_flush
                .store(true, Ordering::SeqCst);
            let failed = store.change(doc, |tx| tx.put(ROOT, "lost", 1));
            assert!(matches!(failed, Err(StoreError::Storage(_))), "{failed:?}");
            // Every later write is refused, clearly, of every kind.
            for later in [
                store.change(doc, |tx| tx.put(ROOT, "later", 1)).map(drop),
                store.increment(counter, 1).map(drop),
                store.create(DocKind::PNCounter).map(drop),
                store.wait_durable(),
            ] {
                assert!(matches!(later, Err(StoreError::FlushFailed)), "{later:?}");
            }
            (doc, counter)
        };
        // Reopened, it works again, with every write that was acknowledged.
        let store = Store::open(dir.path()).unwrap();
        let saved = store
            .read(doc, |d| d.get(ROOT, "saved").unwrap().is_some())
            .unwrap();
        assert!(saved);
        let crate::CrdtState::GCounter(c) = store.crdt(counter).unwrap() else {
            panic!("a gcounter");
        };
        assert!(c.value() >= 2);
        store.change(doc, |tx| tx.put(ROOT, "after", 1)).unwrap();
    }
}
