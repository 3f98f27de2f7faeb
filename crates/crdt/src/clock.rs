//! A hybrid logical clock: wall time where it is sane, a counter where it is not.

use serde::{Deserialize, Serialize};

use crate::ReplicaId;

/// A point in hybrid logical time, totally ordered by `(millis, counter, replica)`.
///
/// Two timestamps from different replicas never compare equal, so a last-writer-wins choice
/// between them is the same on every replica.
///
/// # Examples
///
/// ```
/// use ferry_crdt::{ReplicaId, Timestamp};
///
/// let a = Timestamp { millis: 5, counter: 0, replica: ReplicaId::from_bytes([1; 16]) };
/// let b = Timestamp { millis: 5, counter: 0, replica: ReplicaId::from_bytes([2; 16]) };
/// assert!(a < b); // same instant: the replica id breaks the tie
/// ```
#[derive(Clone, Copy, Debug, Deserialize, Eq, Hash, Ord, PartialEq, PartialOrd, Serialize)]
pub struct Timestamp {
    /// Milliseconds since the Unix epoch, as far as the clock could tell.
    pub millis: u64,
    /// Orders events within one millisecond, and keeps time moving when the wall clock does not.
    pub counter: u32,
    /// The replica that made this timestamp.
    pub replica: ReplicaId,
}

/// A hybrid logical clock (Kulkarni et al., 2014) for one replica.
///
/// It never reads the system time itself: every call takes the wall time in milliseconds, so
/// tests control time and the sync layer can stay free of clock reads.
///
/// Guarantees:
/// - every timestamp from [`Clock::now`] is greater than every earlier one from this clock, even
///   when the wall clock jumps backwards;
/// - after [`Clock::observe`] of a timestamp from a peer, every later timestamp is greater than it;
/// - while the wall clock runs forwards and no peer is ahead of it, `millis` is the wall time.
///
/// # Examples
///
/// ```
/// use ferry_crdt::{Clock, ReplicaId};
///
/// let mut clock = Clock::new(ReplicaId::from_bytes([1; 16]));
/// let t1 = clock.now(1_000);
/// let t2 = clock.now(900); // the wall clock went backwards
/// assert!(t2 > t1);
///
/// let mut peer = Clock::new(ReplicaId::from_bytes([2; 16]));
/// let remote = peer.now(5_000); // a peer whose clock is ahead
/// clock.observe(remote, 1_001);
/// assert!(clock.now(1_002) > remote);
/// ```
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Clock {
    replica: ReplicaId,
    millis: u64,
    counter: u32,
}

impl Clock {
    /// A clock for `replica` that has not ticked yet.
    pub const fn new(replica: ReplicaId) -> Self {
        Self {
            replica,
            millis: 0,
            counter: 0,
        }
    }

    /// The replica this clock stamps for.
    pub const fn replica(&self) -> ReplicaId {
        self.replica
    }

    /// The latest timestamp this clock has issued or observed (with this clock's replica).
    pub const fn last(&self) -> Timestamp {
        Timestamp {
            millis: self.millis,
            counter: self.counter,
            replica: self.replica,
        }
    }

    /// A new timestamp for a local event, given the wall time in milliseconds.
    pub fn now(&mut self, wall_millis: u64) -> Timestamp {
        if wall_millis > self.millis {
            self.millis = wall_millis;
            self.counter = 0;
        } else {
            self.bump();
        }
        self.last()
    }

    /// Moves the clock past a timestamp received from a peer, given the local wall time.
    ///
    /// This accepts any timestamp, however far ahead: a peer whose clock runs fast drags this
    /// one forwards (that is how hybrid clocks keep causality). Bounding how far ahead a peer
    /// may be is the caller's decision, made before it calls this: ferry's sync sessions refuse
    /// register states stamped more than a configured skew (10 minutes by default) ahead.
    pub fn observe(&mut self, remote: Timestamp, wall_millis: u64) {
        let local = (self.millis, self.counter);
        let seen = (remote.millis, remote.counter);
        if wall_millis > self.millis && wall_millis > remote.millis {
            self.millis = wall_millis;
            self.counter = 0;
        } else if seen > local {
            self.millis = remote.millis;
            self.counter = remote.counter;
            self.bump();
        } else {
            self.bump();
        }
    }

    /// Advances by one logical tick. At the counter's end the tick carries into the
    /// milliseconds; only at the very end of time (both at their maximum) does it stand still.
    fn bump(&mut self) {
        match self.counter.checked_add(1) {
            Some(counter) => self.counter = counter,
            None => {
                if let Some(millis) = self.millis.checked_add(1) {
                    self.millis = millis;
                    self.counter = 0;
                }
            }
        }
    }
}
