//! Replicas in temporary directories, and a pump that moves frames between two sessions.

#![allow(dead_code, unreachable_pub)]

use ferry_proto::{Event, Message, Role, Session, SessionConfig, SessionError};
use ferry_store::{Access, PeerInfo, SpaceId, Store};

pub struct Replica {
    pub store: Store,
    config: ferry_store::StoreConfig,
    _dir: tempfile::TempDir,
}

impl Replica {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self {
            store: Store::open(dir.path()).unwrap(),
            config: ferry_store::StoreConfig::default(),
            _dir: dir,
        }
    }

    /// The store's directory.
    pub fn store_dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// A replica whose store is opened with `config`.
    pub fn with_config(config: ferry_store::StoreConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self {
            store: Store::open_with(dir.path(), config.clone()).unwrap(),
            config,
            _dir: dir,
        }
    }

    /// A replica with the fixed identity `tests/keys/replica-{i}.key` (`i` below 5), so its
    /// peer id and actor id are the same in every run.
    pub fn seeded(i: usize) -> Self {
        Self::seeded_with(i, ferry_store::StoreConfig::default())
    }

    /// [`Replica::seeded`], its store opened with `config`.
    pub fn seeded_with(i: usize, config: ferry_store::StoreConfig) -> Self {
        use std::os::unix::fs::PermissionsExt;

        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("identity.key");
        let fixed = format!("{}/tests/keys/replica-{i}.key", env!("CARGO_MANIFEST_DIR"));
        std::fs::copy(fixed, &key).unwrap();
        // A checkout does not keep the file private; the store insists on it.
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        Self {
            store: Store::open_with(dir.path(), config.clone()).unwrap(),
            config,
            _dir: dir,
        }
    }

    /// Closes the store and opens it again, as after a restart. Nothing else may hold it.
    pub fn reopen(&mut self) {
        // The store closes when its last handle goes; a scratch store stands in meanwhile.
        let scratch = tempfile::tempdir().unwrap();
        let old = std::mem::replace(&mut self.store, Store::open(scratch.path()).unwrap());
        drop(old);
        self.store = Store::open_with(self._dir.path(), self.config.clone()).unwrap();
    }
}

/// `a` lets `b` have `access` to every document.
pub fn trust(a: &Replica, b: &Replica, access: Access) {
    let info = a
        .store
        .peer(b.store.peer_id())
        .unwrap()
        .unwrap_or_else(|| PeerInfo::new(b.store.peer_id(), "peer"));
    a.store.put_peer(&info).unwrap();
    a.store
        .grant(b.store.peer_id(), SpaceId::DEFAULT, access)
        .unwrap();
}

/// How a pump run went.
#[derive(Debug, Default)]
pub struct Run {
    /// Bytes sent by the initiator, and by the responder.
    pub bytes: [usize; 2],
    /// Frames delivered.
    pub frames: usize,
    /// Turns in which some frame moved: in a turn the initiator's frames go out and then the
    /// responder's, so a turn is a round trip.
    pub turns: usize,
    /// Events of each side.
    pub events: [Vec<Event>; 2],
    /// Every frame, per sender.
    pub sent: [Vec<Vec<u8>>; 2],
    /// The first error, if the session ended with one.
    pub error: Option<String>,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    /// Stop after this many frames.
    pub cut_after: Option<usize>,
    /// Deliver every n-th frame twice.
    pub duplicate_every: Option<usize>,
}

/// The time the pump tells sessions: 1,000 ms after the epoch, so tests can name the time a
/// sync is recorded at.
pub const PUMP_NOW: u64 = 1_000;

/// The sessions' configuration in these tests: the defaults, except that register stamps are
/// not bounded against the pump's clock, which reads [`PUMP_NOW`] while the stores stamp
/// registers with the real time. (The bound has its own test.)
pub fn config() -> SessionConfig {
    SessionConfig {
        max_clock_skew_millis: u64::MAX,
        ..SessionConfig::default()
    }
}

/// Runs a session between `a` (initiator) and `b` until no frame moves, or a fault cuts it.
pub fn sync(a: &Replica, b: &Replica, faults: Faults) -> Run {
    sync_with(a, b, faults, &config())
}

/// A setup sync that must succeed: it panics, naming the error, where it happens.
pub fn synced(a: &Replica, b: &Replica) -> Run {
    let run = sync(a, b, Faults::default());
    assert!(run.error.is_none(), "setup sync failed: {:?}", run.error);
    run
}

/// [`sync`] with both sessions configured by `config`.
pub fn sync_with(a: &Replica, b: &Replica, faults: Faults, config: &SessionConfig) -> Run {
    let sa = Session::new(
        a.store.clone(),
        b.store.peer_id(),
        Role::Initiator,
        config.clone(),
    )
    .unwrap();
    let sb = Session::new(
        b.store.clone(),
        a.store.peer_id(),
        Role::Responder,
        config.clone(),
    )
    .unwrap();
    pump([sa, sb], faults).0
}

/// More turns than any session needs: reconciliation takes a few per level of the trie, and
/// each document a few more.
const MAX_TURNS: usize = 1_000;

/// Moves frames between two sessions until quiet; returns the run and the sessions.
pub fn pump(mut sessions: [Session; 2], faults: Faults) -> (Run, [Session; 2]) {
    let mut run = Run::default();
    'outer: loop {
        let mut moved = false;
        for from in 0..2 {
            let to = 1 - from;
            // Whole documents queued beyond a step's size go out as the driver would send them:
            // once the frames before have left.
            if sessions[from].has_backlog()
                && let Err(e) = sessions[from].work()
            {
                run.error.get_or_insert(e.to_string());
            }
            let frames: Vec<Vec<u8>> =
                std::iter::from_fn(|| sessions[from].poll_transmit()).collect();
            for frame in frames {
                if faults.cut_after.is_some_and(|n| run.frames >= n) {
                    break 'outer;
                }
                moved = true;
                run.frames += 1;
                run.bytes[from] += frame.len();
                run.sent[from].push(frame.clone());
                if std::env::var_os("FERRY_TRACE").is_some() {
                    let m = ferry_proto::Message::from_frame(&frame, u32::MAX);
                    let t = format!("{from}->{to} {m:?}");
                    eprintln!("TRACE {}", &t[..t.len().min(300)]);
                }
                let times = if faults.duplicate_every.is_some_and(|n| run.frames % n == 0) {
                    2
                } else {
                    1
                };
                for _ in 0..times {
                    if let Err(e) = deliver(&mut sessions[to], &frame) {
                        run.error.get_or_insert(e.to_string());
                    }
                }
            }
            while let Some(e) = sessions[from].poll_event() {
                run.events[from].push(e);
            }
        }
        if !moved {
            // A document checked on a thread of its own: wait for it, then go on.
            if let Some(s) = sessions.iter_mut().find(|s| s.is_loading()) {
                std::thread::sleep(std::time::Duration::from_millis(1));
                if let Err(e) = s.work() {
                    run.error.get_or_insert(e.to_string());
                }
                continue;
            }
            break;
        }
        run.turns += 1;
        // Two sessions that never go quiet are a livelock: a failure, not a hang.
        if run.turns > MAX_TURNS {
            run.error
                .get_or_insert(format!("still exchanging frames after {MAX_TURNS} turns"));
            break;
        }
        if sessions.iter().all(Session::is_closed) {
            break;
        }
    }
    for (i, s) in sessions.iter_mut().enumerate() {
        while let Some(e) = s.poll_event() {
            run.events[i].push(e);
        }
    }
    (run, sessions)
}

/// Moves frames between two sessions until quiet, like [`pump`], except that once `cut` picks a
/// frame (given its sender, 0 or 1, and the message), that frame and everything its sender sends
/// after it are lost: a connection dying one way. Returns the messages delivered, per sender.
pub fn pump_cut(
    mut sessions: [Session; 2],
    mut cut: impl FnMut(usize, &Message) -> bool,
) -> [Vec<Message>; 2] {
    let mut delivered: [Vec<Message>; 2] = Default::default();
    let mut dead = [false; 2];
    loop {
        let mut moved = false;
        for from in 0..2 {
            if sessions[from].has_backlog() {
                sessions[from].work().unwrap();
            }
            let frames: Vec<Vec<u8>> =
                std::iter::from_fn(|| sessions[from].poll_transmit()).collect();
            for frame in frames {
                let message = Message::from_frame(&frame, u32::MAX).unwrap();
                dead[from] = dead[from] || cut(from, &message);
                if dead[from] {
                    continue;
                }
                deliver(&mut sessions[1 - from], &frame).unwrap();
                delivered[from].push(message);
                moved = true;
            }
        }
        if !moved {
            if let Some(s) = sessions.iter_mut().find(|s| s.is_loading()) {
                std::thread::sleep(std::time::Duration::from_millis(1));
                s.work().unwrap();
                continue;
            }
            return delivered;
        }
    }
}

fn deliver(session: &mut Session, frame: &[u8]) -> Result<(), SessionError> {
    if session.is_closed() {
        return Ok(());
    }
    session.handle_frame(frame, PUMP_NOW)
}
