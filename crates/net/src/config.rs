//! How a node behaves.

use std::net::SocketAddr;
use std::time::Duration;

use ferry_proto::SessionConfig;

use crate::BackoffConfig;

/// How a [`Node`](crate::Node) behaves.
///
/// # Examples
///
/// ```
/// use ferry_net::NetConfig;
///
/// let config = NetConfig {
///     listen: "127.0.0.1:0".parse().unwrap(),
///     ..NetConfig::default()
/// };
/// assert_eq!(config.backoff.max.as_secs(), 60);
/// ```
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// Where to listen (UDP). Default `0.0.0.0:0`: every interface, a port the system picks.
    pub listen: SocketAddr,
    /// The sync sessions' configuration (frame limit).
    pub session: SessionConfig,
    /// How often an idle connection is pinged, so middleboxes keep it: by the side that dialed
    /// it only (a device, not its relay). Default 15 s: under the 30 s after which many NATs
    /// forget a UDP mapping, and rare enough that a relay's 10,000 idle devices cost it little
    /// (their pings are most of its idle work) and a phone's radio sleeps between them.
    pub keep_alive: Duration,
    /// A connection silent this long is dropped: a peer that vanished is noticed this late.
    /// Default 45 s, three keep-alives.
    pub idle_timeout: Duration,
    /// How long a dial waits for the handshake. Default 5 s.
    pub connect_timeout: Duration,
    /// Reconnect timing.
    pub backoff: BackoffConfig,
    /// A session idle this long (nothing read, written or pushed) forgets what it keeps in
    /// memory of the peer's copies of documents; the store's sync records keep what matters,
    /// and the next change is pushed from them. Default 30 s. So a relay's idle devices cost
    /// it little memory, however many documents they synced.
    pub forget_after: Duration,
    /// The UDP socket's receive and send buffer sizes asked of the system, in bytes. Default
    /// 4 MiB. A relay that many devices reach at once needs room for their packets between two
    /// reads: packets that find the buffer full are dropped, and QUIC then recovers them only
    /// after its loss timers, seconds later for a handshake. The system caps what it grants
    /// (Linux at `net.core.rmem_max` and `wmem_max`); a node granted less says so in its log.
    pub udp_buffer: usize,
    /// Failed handshakes (a certificate this node does not trust, or none) from one IP
    /// address within [`NetConfig::failure_window`] after which its connection attempts are
    /// refused before any cryptography, until the window has passed. Default 20. Successful
    /// handshakes are never limited, so many devices behind one address connect freely; a
    /// misbehaving one among them holds the others back for at most the window.
    pub max_failed_handshakes: u32,
    /// See [`NetConfig::max_failed_handshakes`]. Default 30 s.
    pub failure_window: Duration,
    /// How long a peer may take to open its session and send its hello, or to finish a frame
    /// it began, before the connection is closed with a protocol error: a peer sending a byte
    /// at a time (slowloris) holds nothing for long. Default 60 s, which a 1 MiB frame (a
    /// document part) meets at 17 KB/s.
    pub frame_timeout: Duration,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            session: SessionConfig::default(),
            keep_alive: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(45),
            connect_timeout: Duration::from_secs(5),
            backoff: BackoffConfig::default(),
            forget_after: Duration::from_secs(30),
            udp_buffer: 4 << 20,
            max_failed_handshakes: 20,
            failure_window: Duration::from_secs(30),
            frame_timeout: Duration::from_secs(60),
        }
    }
}
