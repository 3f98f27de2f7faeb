//! What one session has done so far, kept for whoever waits on it (a one-off sync). Unlike the
//! node's event stream, nothing here is lost when a reader falls behind: a sync of 100,000
//! documents sees every one.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use ferry_proto::Event;
use ferry_store::DocId;
use tokio::sync::watch;

/// One session's progress: whether it has reconciled, whether it ended (and why), and, for
/// each observer, the documents it updated and those the peer refused.
#[derive(Debug)]
pub(crate) struct Progress {
    state: Mutex<State>,
    /// Bumped on everything the session does; waiters tell quiet from it.
    activity: watch::Sender<u64>,
    /// Changed documents the store's feed has brought the session.
    fed: AtomicU64,
    /// Documents the session keeps peer state for (`Session::remembered`).
    remembered: AtomicU64,
    /// The most it has kept at once.
    remembered_most: AtomicU64,
    /// Whether the session's stream is open: blob streams are opened only after it, so the
    /// session's is the first stream the connection carries.
    stream_open: watch::Sender<bool>,
}

#[derive(Debug, Default)]
struct State {
    reconciled: bool,
    /// Documents the session waits to receive whole (see `Session::awaiting`).
    awaiting: usize,
    /// `Some` once the session ended: `Some(reason)` if it failed.
    ended: Option<Option<String>>,
    observers: Vec<Weak<Mutex<Observed>>>,
}

/// What a session did while one observer watched it.
#[derive(Clone, Debug, Default)]
pub(crate) struct Observed {
    /// Documents the peer's data updated here.
    pub(crate) updated: BTreeSet<DocId>,
    /// Documents whose changes the peer refused.
    pub(crate) refused: BTreeSet<DocId>,
}

impl Progress {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State::default()),
            activity: watch::Sender::new(0),
            fed: AtomicU64::new(0),
            remembered: AtomicU64::new(0),
            remembered_most: AtomicU64::new(0),
            stream_open: watch::Sender::new(false),
        })
    }

    /// The session's stream is open.
    pub(crate) fn stream_opened(&self) {
        self.stream_open.send_replace(true);
    }

    /// Waits until the session's stream is open; `false` if that did not happen in `within`.
    pub(crate) async fn wait_stream_open(&self, within: std::time::Duration) -> bool {
        let mut open = self.stream_open.subscribe();
        matches!(
            tokio::time::timeout(within, open.wait_for(|open| *open)).await,
            Ok(Ok(_))
        )
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Flags and sets of ids: consistent whatever a panicking holder did.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records one of the session's events.
    pub(crate) fn note(&self, event: &Event) {
        let mut state = self.lock();
        match event {
            Event::Reconciled => state.reconciled = true,
            Event::DocUpdated { doc } => observe(&mut state, |o| {
                o.updated.insert(*doc);
            }),
            Event::Refused { doc, .. } => observe(&mut state, |o| {
                o.refused.insert(*doc);
            }),
            Event::Connected { .. } | Event::Acked { .. } => {}
        }
        drop(state);
        self.activity.send_modify(|n| *n += 1);
    }

    /// Records that the session ended, with the reason if it failed.
    pub(crate) fn end(&self, failure: Option<String>) {
        self.lock().ended.get_or_insert(failure);
        self.activity.send_modify(|n| *n += 1);
    }

    pub(crate) fn is_reconciled(&self) -> bool {
        self.lock().reconciled
    }

    /// Records how many documents the session waits to receive whole.
    pub(crate) fn set_awaiting(&self, awaiting: usize) {
        let mut state = self.lock();
        if state.awaiting != awaiting {
            state.awaiting = awaiting;
            drop(state);
            self.activity.send_modify(|n| *n += 1);
        }
    }

    /// Whether the session has reconciled and has received every whole document it asked
    /// for or the peer announced.
    pub(crate) fn is_caught_up(&self) -> bool {
        let state = self.lock();
        state.reconciled && state.awaiting == 0
    }

    /// `Some` once the session ended: `Some(reason)` if it failed.
    pub(crate) fn ended(&self) -> Option<Option<String>> {
        self.lock().ended.clone()
    }

    /// Starts observing: from now on, what the session updates and what the peer refuses is
    /// gathered in the returned record, until it is dropped.
    pub(crate) fn observe(&self) -> Arc<Mutex<Observed>> {
        let observed = Arc::new(Mutex::new(Observed::default()));
        let mut state = self.lock();
        state.observers.retain(|o| o.strong_count() > 0);
        state.observers.push(Arc::downgrade(&observed));
        observed
    }

    /// Records that the store's feed brought the session `docs` changed documents.
    pub(crate) fn fed(&self, docs: usize) {
        self.fed.fetch_add(docs as u64, Ordering::Relaxed);
    }

    /// How many changed documents the store's feed has brought the session: each one woke it.
    #[cfg(test)]
    pub(crate) fn fed_so_far(&self) -> u64 {
        self.fed.load(Ordering::Relaxed)
    }

    /// Records how many documents the session keeps peer state for.
    pub(crate) fn set_remembered(&self, docs: usize) {
        self.remembered.store(docs as u64, Ordering::Relaxed);
        self.remembered_most
            .fetch_max(docs as u64, Ordering::Relaxed);
    }

    /// How many documents the session keeps peer state for, as of its last step.
    #[cfg(test)]
    pub(crate) fn remembered(&self) -> u64 {
        self.remembered.load(Ordering::Relaxed)
    }

    /// The most documents the session has kept peer state for at once.
    #[cfg(test)]
    pub(crate) fn remembered_most(&self) -> u64 {
        self.remembered_most.load(Ordering::Relaxed)
    }

    /// A receiver that wakes whenever the session does something.
    pub(crate) fn activity(&self) -> watch::Receiver<u64> {
        self.activity.subscribe()
    }
}

fn observe(state: &mut State, f: impl Fn(&mut Observed)) {
    state.observers.retain(|weak| match weak.upgrade() {
        Some(observed) => {
            f(&mut observed.lock().unwrap_or_else(|p| p.into_inner()));
            true
        }
        None => false,
    });
}
