//! The accept loop's guard against a flood of handshakes from peers it does not know.
//!
//! A handshake costs the listener its share of the key exchange and a signature before the
//! dialer's certificate can be checked, so 100 unknown replicas redialing every few tens of
//! milliseconds kept a relay busy enough to slow its trusted devices. Each IP address's failed
//! handshakes are counted (a certificate the node does not trust, or none; not a handshake
//! that timed out, which a bad network causes); past [`NetConfig::max_failed_handshakes`](crate::NetConfig::max_failed_handshakes)
//! within [`NetConfig::failure_window`](crate::NetConfig::failure_window), its new connection
//! attempts are refused before any cryptography until the window has passed. Handshakes that
//! succeed are never limited, so a crowd of trusted devices behind one address (a NAT, or this
//! machine's loopback in the benches) connects at full speed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Addresses remembered at most; past this, the oldest window is forgotten first.
const REMEMBERED: usize = 4096;

#[derive(Debug)]
pub(crate) struct Gate {
    limit: u32,
    window: Duration,
    addresses: Mutex<HashMap<IpAddr, Failures>>,
}

#[derive(Clone, Copy, Debug)]
struct Failures {
    count: u32,
    since: Instant,
}

impl Gate {
    pub(crate) fn new(limit: u32, window: Duration) -> Self {
        Self {
            limit,
            window,
            addresses: Mutex::new(HashMap::new()),
        }
    }

    fn addresses(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Failures>> {
        self.addresses
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether a connection attempt from `ip` may start its handshake.
    pub(crate) fn admits(&self, ip: IpAddr) -> bool {
        let mut addresses = self.addresses();
        match addresses.get(&ip) {
            Some(f) if f.since.elapsed() >= self.window => {
                addresses.remove(&ip);
                true
            }
            Some(f) => f.count < self.limit,
            None => true,
        }
    }

    /// A handshake from `ip` failed.
    pub(crate) fn failed(&self, ip: IpAddr) {
        let mut addresses = self.addresses();
        let now = Instant::now();
        if addresses.len() >= REMEMBERED && !addresses.contains_key(&ip) {
            let window = self.window;
            addresses.retain(|_, f| now.duration_since(f.since) < window);
            if addresses.len() >= REMEMBERED
                && let Some(oldest) = addresses
                    .iter()
                    .min_by_key(|(_, f)| f.since)
                    .map(|(ip, _)| *ip)
            {
                addresses.remove(&oldest);
            }
        }
        let entry = addresses.entry(ip).or_insert(Failures {
            count: 0,
            since: now,
        });
        if now.duration_since(entry.since) >= self.window {
            *entry = Failures {
                count: 0,
                since: now,
            };
        }
        entry.count = entry.count.saturating_add(1);
    }
}

/// Whether a handshake failed in TLS (a certificate refused, or no certificate): a TLS
/// alert, which QUIC carries as a transport error in the crypto range (0x100 to 0x1ff).
pub(crate) fn refused_in_tls(error: &quinn::ConnectionError) -> bool {
    match error {
        quinn::ConnectionError::TransportError(e) => u64::from(e.code) & !0xff == 0x100,
        quinn::ConnectionError::ConnectionClosed(close) => {
            u64::from(close.error_code) & !0xff == 0x100
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_refused_after_its_failures_until_the_window_passes() {
        let gate = Gate::new(3, Duration::from_millis(200));
        let (bad, good) = (IpAddr::from([127, 0, 0, 2]), IpAddr::from([127, 0, 0, 1]));
        for _ in 0..3 {
            assert!(gate.admits(bad));
            gate.failed(bad);
        }
        assert!(!gate.admits(bad));
        assert!(gate.admits(good), "another address is not held to it");
        std::thread::sleep(Duration::from_millis(250));
        assert!(gate.admits(bad), "the window passed");
        gate.failed(bad);
        assert!(gate.admits(bad), "counting starts again");
    }

    #[test]
    fn the_addresses_remembered_are_bounded() {
        let gate = Gate::new(1, Duration::from_secs(60));
        for i in 0..(REMEMBERED as u32 + 100) {
            gate.failed(IpAddr::from(i.to_be_bytes()));
        }
        assert!(gate.addresses().len() <= REMEMBERED);
        // The newest are still held to their limit.
        let newest = IpAddr::from((REMEMBERED as u32 + 99).to_be_bytes());
        assert!(!gate.admits(newest));
    }
}
