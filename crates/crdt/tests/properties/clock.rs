//! The hybrid logical clock stays monotonic whatever the wall clock and the peers do.

use ferry_crdt::{Clock, ReplicaId, Timestamp};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Event {
    /// A local event at this wall time.
    Tick(u64),
    /// A timestamp from a peer arrives at this wall time.
    Receive { remote: (u64, u32), wall: u64 },
}

fn wall() -> impl Strategy<Value = u64> {
    // Jumps forwards and back across a small window, plus the extremes.
    prop_oneof![8 => 1_000..1_050u64, 1 => Just(0u64), 1 => (u64::MAX - 2)..=u64::MAX]
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        3 => wall().prop_map(Event::Tick),
        1 => ((wall(), prop_oneof![any::<u32>(), Just(u32::MAX)]), wall())
            .prop_map(|(remote, wall)| Event::Receive { remote, wall }),
    ]
}

proptest! {
    #[test]
    fn timestamps_only_grow_and_pass_what_was_observed(events in prop::collection::vec(event(), 1..64)) {
        let me = ReplicaId::from_bytes([1; 16]);
        let peer = ReplicaId::from_bytes([2; 16]);
        let mut clock = Clock::new(me);
        let mut latest: Option<Timestamp> = None;
        let mut end_of_time = false;
        for event in events {
            match event {
                Event::Tick(wall) => {
                    let t = clock.now(wall);
                    prop_assert_eq!(t.replica, me);
                    if let Some(prev) = latest {
                        // Strictly later, unless both fields are at their maximum.
                        end_of_time |= (prev.millis, prev.counter) == (u64::MAX, u32::MAX);
                        if !end_of_time {
                            prop_assert!(t > prev, "{:?} after {:?}", t, prev);
                        }
                    }
                    // Never behind the wall clock it was told.
                    prop_assert!(t.millis >= wall, "{:?} at wall time {}", t, wall);
                    latest = Some(t);
                }
                Event::Receive { remote: (millis, counter), wall } => {
                    let remote = Timestamp { millis, counter, replica: peer };
                    clock.observe(remote, wall);
                    let next = clock.now(wall);
                    let at_end = (millis, counter) == (u64::MAX, u32::MAX)
                        || (next.millis, next.counter) == (u64::MAX, u32::MAX);
                    end_of_time |= at_end;
                    if !end_of_time {
                        prop_assert!((next.millis, next.counter) > (remote.millis, remote.counter));
                    }
                    if let Some(prev) = latest
                        && !end_of_time
                    {
                        prop_assert!(next > prev, "{:?} after {:?}", next, prev);
                    }
                    latest = Some(next);
                }
            }
        }
    }

    #[test]
    fn a_forward_wall_clock_is_the_timestamp(start in 0..1_000_000u64, steps in prop::collection::vec(1..1_000u64, 1..32)) {
        let mut clock = Clock::new(ReplicaId::from_bytes([3; 16]));
        let mut wall = start;
        for step in steps {
            wall += step;
            let t = clock.now(wall);
            prop_assert_eq!((t.millis, t.counter), (wall, 0));
        }
    }
}
