//! How long to wait before dialing a peer again.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// Reconnect timing: exponential backoff from `min` doubling to `max`, with full jitter.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use ferry_net::BackoffConfig;
///
/// let quick = BackoffConfig { min: Duration::from_millis(100), max: Duration::from_secs(5) };
/// assert!(quick.min < quick.max);
/// ```
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct BackoffConfig {
    /// The first delay's upper bound. Default 0.5 s.
    pub min: Duration,
    /// The cap on every delay. Default 60 s.
    pub max: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            min: Duration::from_millis(500),
            max: Duration::from_secs(60),
        }
    }
}

/// The delays between one peer's failed dials: the n-th is drawn uniformly from
/// `[0, min(max, min · 2^n)]` ("full jitter"), so many replicas that lost the same relay do
/// not all come back at the same instant. [`Backoff::reset`] starts over after a success.
#[derive(Debug)]
pub(crate) struct Backoff {
    config: BackoffConfig,
    schedule: backon::ExponentialBackoff,
}

impl Backoff {
    pub(crate) fn new(config: BackoffConfig) -> Self {
        Self {
            config,
            schedule: Self::schedule(config),
        }
    }

    /// The un-jittered schedule: backon's exponential growth and cap. (backon's own jitter adds
    /// to the delay instead of spreading it over `[0, delay]`, so it is applied here.)
    fn schedule(config: BackoffConfig) -> backon::ExponentialBackoff {
        ExponentialBuilder::default()
            .with_min_delay(config.min)
            .with_max_delay(config.max.max(config.min))
            .with_factor(2.0)
            .without_max_times()
            .build()
    }

    /// The next delay.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let ceiling = self.schedule.next().unwrap_or(self.config.max);
        ceiling.mul_f64(rand::random::<f64>())
    }

    /// Starts the schedule over.
    pub(crate) fn reset(&mut self) {
        self.schedule = Self::schedule(self.config);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_with_full_jitter_and_reset() {
        let config = BackoffConfig {
            min: Duration::from_millis(500),
            max: Duration::from_secs(60),
        };
        // Over many schedules, the n-th delay stays under its ceiling and spreads across it.
        let ceilings: Vec<Duration> = (0..10)
            .map(|n| (config.min * 2u32.pow(n)).min(config.max))
            .collect();
        let mut lowest = [Duration::MAX; 10];
        let mut highest = [Duration::ZERO; 10];
        for _ in 0..400 {
            let mut backoff = Backoff::new(config);
            for n in 0..10 {
                let d = backoff.next_delay();
                assert!(d <= ceilings[n], "delay {n}: {d:?} over {:?}", ceilings[n]);
                lowest[n] = lowest[n].min(d);
                highest[n] = highest[n].max(d);
            }
        }
        for n in 0..10 {
            assert!(lowest[n] < ceilings[n] / 10, "delay {n} never near 0");
            assert!(
                highest[n] > ceilings[n] * 9 / 10,
                "delay {n} never near its ceiling"
            );
        }
        // After a reset the first delay is small again.
        let mut backoff = Backoff::new(config);
        for _ in 0..12 {
            backoff.next_delay();
        }
        backoff.reset();
        assert!(backoff.next_delay() <= config.min);
    }
}
