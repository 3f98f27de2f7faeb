//! Wall-clock time as ferry records it: milliseconds since the Unix epoch. The one place that
//! reads the system clock for it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The wall time now, in milliseconds since the Unix epoch (0 for a clock before 1970).
pub fn wall_millis() -> u64 {
    millis_of(SystemTime::now())
}

/// `time` in milliseconds since the Unix epoch (0 before it, `u64::MAX` past what fits).
///
/// # Examples
///
/// ```
/// use ferry_store::{millis_of, time_of};
///
/// let at = time_of(1_700_000_000_123);
/// assert_eq!(millis_of(at), 1_700_000_000_123);
/// ```
pub fn millis_of(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The time `millis` milliseconds after the Unix epoch.
pub fn time_of(millis: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(millis)
}
