//! A UDP proxy on loopback that injects faults into the traffic between two ferry replicas,
//! for tests: loss, duplication, reordering, delay with jitter, a bandwidth cap, and one-way or
//! two-way partitions that heal.
//!
//! This machine's kernel has no netem, and QUIC's own packet protection makes bytes flipped in
//! flight plain loss, so faults are injected here, between real QUIC endpoints: a [`Link`]
//! listens on a loopback port and forwards every datagram it receives to its target, and the
//! answers back, each way through its own [`Faults`]. A replica that should reach another
//! through the link is given the link's address for that peer instead of the peer's own.
//!
//! Every decision (drop, duplicate, how long to hold) is drawn from a random generator seeded
//! with the link's seed, so a run's faults follow from its seed. The timing of real sockets
//! and threads is not seeded: a seed replays the same fault pattern, not the same interleaving.
//!
//! ```
//! use ferry_faults::{Faults, Link, Way};
//! use std::time::Duration;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let echo = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
//! let link = Link::start(echo.local_addr()?, 7).await?;
//! link.set(Way::Both, Faults { loss: 0.1, delay: Duration::from_millis(20), ..Faults::NONE });
//! link.set(Way::Forth, Faults::CUT); // a one-way partition
//! link.heal();
//! # Ok(())
//! # }
//! ```

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// What happens to the datagrams going one way through a [`Link`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Faults {
    /// The share of datagrams dropped, from 0 to 1.
    pub loss: f64,
    /// The share of datagrams sent twice.
    pub duplicate: f64,
    /// The share of datagrams held back by [`Faults::reorder_by`] more, so that later ones
    /// overtake them.
    pub reorder: f64,
    /// How much longer a reordered datagram is held.
    pub reorder_by: Duration,
    /// How long every datagram is held.
    pub delay: Duration,
    /// Up to this much more, drawn for each datagram (so jitter reorders too).
    pub jitter: Duration,
    /// The bandwidth, in bytes a second; `None`, unbounded. A datagram that would wait longer
    /// than [`Faults::queue`] for its turn is dropped, as a router's full buffer drops it.
    pub rate: Option<u64>,
    /// How much traffic, in time at `rate`, may wait.
    pub queue: Duration,
    /// Nothing gets through: a partition.
    pub cut: bool,
}

impl Faults {
    /// No fault: every datagram goes on at once.
    pub const NONE: Self = Self {
        loss: 0.0,
        duplicate: 0.0,
        reorder: 0.0,
        reorder_by: Duration::from_millis(10),
        delay: Duration::ZERO,
        jitter: Duration::ZERO,
        rate: None,
        queue: Duration::from_millis(100),
        cut: false,
    };

    /// Nothing gets through.
    pub const CUT: Self = Self {
        cut: true,
        ..Self::NONE
    };
}

impl Default for Faults {
    fn default() -> Self {
        Self::NONE
    }
}

/// Which way through a [`Link`].
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Way {
    /// From whoever sends to the link's address, toward its target.
    Forth,
    /// From the target back.
    Back,
    /// Both.
    Both,
}

impl Way {
    fn indices(self) -> &'static [usize] {
        match self {
            Way::Forth => &[0],
            Way::Back => &[1],
            Way::Both => &[0, 1],
        }
    }
}

/// Datagrams counted one way through a [`Link`].
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub struct Counts {
    /// Datagrams that came in.
    pub received: u64,
    /// Datagrams sent on (a duplicate counts twice).
    pub sent: u64,
    /// Datagrams dropped: lost, cut off, or over the queue.
    pub dropped: u64,
    /// Datagrams sent twice.
    pub duplicated: u64,
}

#[derive(Default)]
struct Counters {
    received: AtomicU64,
    sent: AtomicU64,
    dropped: AtomicU64,
    duplicated: AtomicU64,
}

impl Counters {
    fn counts(&self) -> Counts {
        Counts {
            received: self.received.load(Ordering::Relaxed),
            sent: self.sent.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            duplicated: self.duplicated.load(Ordering::Relaxed),
        }
    }
}

/// One way's state: its faults, its random generator and its counters.
struct Direction {
    faults: Mutex<Faults>,
    rng: Mutex<StdRng>,
    /// When the link is free again, at its rate.
    free_at: Mutex<Instant>,
    counters: Counters,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Direction {
    fn new(seed: u64) -> Self {
        Self {
            faults: Mutex::new(Faults::NONE),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            free_at: Mutex::new(Instant::now()),
            counters: Counters::default(),
        }
    }

    /// When each copy of a datagram of `len` bytes arriving now is to go out; none if it is
    /// dropped.
    fn schedule(&self, len: usize) -> Vec<Instant> {
        let faults = *lock(&self.faults);
        self.counters.received.fetch_add(1, Ordering::Relaxed);
        let mut rng = lock(&self.rng);
        // Every draw is made whatever the faults, so that changing one fault does not shift
        // the others' draws.
        let (lost, twice, late, jitter) = (
            rng.random_bool(faults.loss.clamp(0.0, 1.0)),
            rng.random_bool(faults.duplicate.clamp(0.0, 1.0)),
            rng.random_bool(faults.reorder.clamp(0.0, 1.0)),
            rng.random_range(0.0..=1.0f64),
        );
        drop(rng);
        if faults.cut || lost {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return Vec::new();
        }
        let now = Instant::now();
        let mut due = now + faults.delay + faults.jitter.mul_f64(jitter);
        if late {
            due += faults.reorder_by;
        }
        let copies = if twice { 2 } else { 1 };
        if let Some(rate) = faults.rate.filter(|r| *r > 0) {
            let mut free_at = lock(&self.free_at);
            let start = (*free_at).max(now);
            if start.duration_since(now) > faults.queue {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                return Vec::new();
            }
            let takes = Duration::from_secs_f64((len * copies) as f64 / rate as f64);
            *free_at = start + takes;
            due = due.max(start + takes);
        }
        if twice {
            self.counters.duplicated.fetch_add(1, Ordering::Relaxed);
        }
        vec![due; copies]
    }
}

/// Where a datagram goes once due.
#[derive(Clone)]
enum Target {
    /// On the upstream socket of a client, to the link's target.
    Upstream(Arc<UdpSocket>),
    /// From the link's own address, back to a client.
    Client(SocketAddr),
}

struct Held {
    due: Instant,
    seq: u64,
    bytes: Vec<u8>,
    to: Target,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Held {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

/// Holds datagrams until they are due, then sends them.
async fn deliver(
    front: Arc<UdpSocket>,
    direction: Arc<Direction>,
    mut incoming: mpsc::UnboundedReceiver<(Vec<u8>, Target)>,
) {
    let mut held: BinaryHeap<Reverse<Held>> = BinaryHeap::new();
    let mut seq = 0u64;
    loop {
        let next = held.peek().map(|Reverse(h)| h.due);
        tokio::select! {
            arrived = incoming.recv() => {
                let Some((bytes, to)) = arrived else { return };
                for due in direction.schedule(bytes.len()) {
                    seq += 1;
                    held.push(Reverse(Held { due, seq, bytes: bytes.clone(), to: to.clone() }));
                }
            }
            () = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                let now = Instant::now();
                while held.peek().is_some_and(|Reverse(h)| h.due <= now) {
                    let Some(Reverse(h)) = held.pop() else { break };
                    let sent = match &h.to {
                        Target::Upstream(socket) => socket.send(&h.bytes).await,
                        Target::Client(addr) => front.send_to(&h.bytes, addr).await,
                    };
                    if sent.is_ok() {
                        direction.counters.sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }
}

/// A proxy on a loopback port that forwards to one target through faults, each way its own.
/// Each address that sends to it gets its own upstream socket, so the target sees one
/// client per sender. Dropping the link stops it.
pub struct Link {
    addr: SocketAddr,
    target: SocketAddr,
    ways: [Arc<Direction>; 2],
    tasks: JoinSet<()>,
}

impl Link {
    /// Starts a link to `target`, with no faults yet, its decisions drawn from `seed`.
    pub async fn start(target: SocketAddr, seed: u64) -> io::Result<Self> {
        let local = match target {
            SocketAddr::V4(_) => SocketAddr::from(([127, 0, 0, 1], 0)),
            SocketAddr::V6(_) => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0)),
        };
        let front = Arc::new(bind(local)?);
        let addr = front.local_addr()?;
        let ways = [
            Arc::new(Direction::new(seed)),
            Arc::new(Direction::new(seed ^ 0x9e37_79b9_7f4a_7c15)),
        ];
        let mut tasks = JoinSet::new();
        let (forth_tx, forth_rx) = mpsc::unbounded_channel();
        let (back_tx, back_rx) = mpsc::unbounded_channel();
        tasks.spawn(deliver(front.clone(), ways[0].clone(), forth_rx));
        tasks.spawn(deliver(front.clone(), ways[1].clone(), back_rx));
        tasks.spawn(forward(front, target, local, forth_tx, back_tx));
        Ok(Self {
            addr,
            target,
            ways,
            tasks,
        })
    }

    /// The address to send to, in place of the target's.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The target's address.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Sets the faults of `way`, from now on (datagrams already held keep their time).
    pub fn set(&self, way: Way, faults: Faults) {
        for &i in way.indices() {
            *lock(&self.ways[i].faults) = faults;
        }
    }

    /// The faults of `way` ([`Way::Forth`] for [`Way::Both`]).
    pub fn faults(&self, way: Way) -> Faults {
        *lock(&self.ways[way.indices()[0]].faults)
    }

    /// Cuts `way` off: a partition, one-way or both.
    pub fn partition(&self, way: Way) {
        for &i in way.indices() {
            lock(&self.ways[i].faults).cut = true;
        }
    }

    /// Ends any partition, both ways, leaving the other faults as they are.
    pub fn heal(&self) {
        for way in &self.ways {
            lock(&way.faults).cut = false;
        }
    }

    /// What went through `way` so far ([`Way::Both`] adds both ways up).
    pub fn counts(&self, way: Way) -> Counts {
        way.indices()
            .iter()
            .map(|&i| self.ways[i].counters.counts())
            .fold(Counts::default(), |a, b| Counts {
                received: a.received + b.received,
                sent: a.sent + b.sent,
                dropped: a.dropped + b.dropped,
                duplicated: a.duplicated + b.duplicated,
            })
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("addr", &self.addr)
            .field("target", &self.target)
            .field("forth", &self.faults(Way::Forth))
            .field("back", &self.faults(Way::Back))
            .finish()
    }
}

/// What the link's sockets ask of the system for their buffers: room for a burst, so that what
/// drops a datagram is the link's faults and not a full socket buffer.
const SOCKET_BUFFER: usize = 4 << 20;

/// A UDP socket bound to `addr`, with large buffers.
fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Granted up to the system's limit; less is no error.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// The largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;

/// Reads what senders send to the link and hands it to the forth way, making an upstream
/// socket (and a task reading the target's answers into the back way) for each new sender.
async fn forward(
    front: Arc<UdpSocket>,
    target: SocketAddr,
    local: SocketAddr,
    forth: mpsc::UnboundedSender<(Vec<u8>, Target)>,
    back: mpsc::UnboundedSender<(Vec<u8>, Target)>,
) {
    let mut upstreams: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut readers = JoinSet::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let Ok((len, from)) = front.recv_from(&mut buf).await else {
            // (An ICMP error from an earlier send; the socket goes on.)
            continue;
        };
        let upstream = match upstreams.get(&from) {
            Some(upstream) => upstream.clone(),
            None => {
                let Ok(socket) = bind(local) else {
                    continue;
                };
                if socket.connect(target).await.is_err() {
                    continue;
                }
                let socket = Arc::new(socket);
                readers.spawn(answers(socket.clone(), from, back.clone()));
                upstreams.insert(from, socket.clone());
                socket
            }
        };
        if forth
            .send((buf[..len].to_vec(), Target::Upstream(upstream)))
            .is_err()
        {
            return;
        }
    }
}

/// Reads the target's answers to one sender into the back way.
async fn answers(
    upstream: Arc<UdpSocket>,
    client: SocketAddr,
    back: mpsc::UnboundedSender<(Vec<u8>, Target)>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        match upstream.recv(&mut buf).await {
            Ok(len) => {
                if back
                    .send((buf[..len].to_vec(), Target::Client(client)))
                    .is_err()
                {
                    return;
                }
            }
            // The target was not listening (ICMP port unreachable): it may be restarting.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}
