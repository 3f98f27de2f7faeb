//! A replica on the network: one QUIC endpoint that listens and dials, one connection per
//! peer, a sync session on each, and reconnection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use ferry_proto::Role;
use ferry_store::{PeerId, Store};
use quinn::Connection;
use tokio::sync::{Notify, broadcast, oneshot, watch};
use tokio::task::JoinSet;

use crate::backoff::Backoff;
use crate::connection::{
    closed_as_duplicate, closed_with, error_chain, peer_of, refused_in_handshake, transport,
};
use crate::driver::{self, SessionContext, Until};
use crate::progress::Progress;
use crate::tls::{self, Credentials, SERVER_NAME};
use crate::{CloseCode, ConnectionState, NetConfig, NetError, NetEvent};

/// How long a connection the peer closed as a duplicate waits for the one it kept.
const REPLACEMENT_GRACE: Duration = Duration::from_secs(1);

/// Two connections between the same pair of peers established this close together, in
/// opposite directions, were dialed at once: one of them is closed by a rule both sides apply.
const SIMULTANEOUS: Duration = Duration::from_secs(2);

/// A replica on the network: one QUIC endpoint that both listens and dials, at most one
/// connection per peer, a [`ferry_proto::Session`] on each, and a dial loop per known peer
/// with an address that reconnects with backoff.
///
/// Create it inside a tokio runtime. Dropping it closes the endpoint at once; call
/// [`Node::shutdown`] to close connections gracefully first.
///
/// # Examples
///
/// ```
/// use ferry_net::{NetConfig, Node};
/// use ferry_store::Store;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let store = Store::open(dir.path())?;
/// let config = NetConfig { listen: "127.0.0.1:0".parse()?, ..NetConfig::default() };
/// let node = Node::start(store, config).await?;
/// println!("{} listening on {}", node.peer_id(), node.local_addr());
/// node.shutdown().await;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Node {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) store: Store,
    pub(crate) config: NetConfig,
    credentials: Credentials,
    endpoint: quinn::Endpoint,
    local_addr: SocketAddr,
    peers: Mutex<HashMap<PeerId, Slot>>,
    events: broadcast::Sender<NetEvent>,
    network_changed: Notify,
    shutdown: watch::Sender<bool>,
    /// Dials nobody unless asked: a node for one-off syncs.
    pub(crate) one_off: bool,
    /// Every task the node runs (accepting, dial loops, connections); finished ones are reaped
    /// as new ones start, and the rest are aborted at shutdown.
    tasks: Mutex<JoinSet<()>>,
    /// Refuses addresses whose handshakes keep failing.
    gate: crate::gate::Gate,
    /// Connection attempts refused by the gate.
    refused: std::sync::atomic::AtomicU64,
}

/// What the node knows of one peer's connection.
#[derive(Debug)]
struct Slot {
    state: ConnectionState,
    live: Option<Live>,
    /// A dial loop runs for the peer.
    dialing: bool,
    /// One of its dials is in its handshake.
    handshaking: bool,
    /// The peer refused this replica in the handshake of the last connection (it does not
    /// know or no longer trusts it): the next dial waits a backoff delay.
    refused: bool,
    /// The peer closed our connection as a duplicate: the one it kept is on its way, and
    /// nothing changes for the app unless it has not arrived by then.
    replacing_until: Option<Instant>,
    /// Woken when the connection is replaced or ends, or the peer's addresses change.
    wake: Arc<Notify>,
    /// Woken when a dial's handshake ends, either way.
    handshake_done: Arc<Notify>,
}

impl Default for Slot {
    fn default() -> Self {
        Self {
            state: ConnectionState::Disconnected { next_retry: None },
            live: None,
            dialing: false,
            handshaking: false,
            refused: false,
            replacing_until: None,
            wake: Arc::new(Notify::new()),
            handshake_done: Arc::new(Notify::new()),
        }
    }
}

#[derive(Debug)]
struct Live {
    conn: Connection,
    /// This side dialed it.
    ours: bool,
    established: Instant,
    /// What its session has done.
    progress: Arc<Progress>,
}

impl Node {
    /// Binds the endpoint and starts listening, and dialing every peer in the store's peer
    /// table that has an address.
    pub async fn start(store: Store, config: NetConfig) -> Result<Self, NetError> {
        let node = Self::bind(store, config, false).await?;
        for peer in node.inner.store.peers()? {
            if !peer.addresses.is_empty() {
                node.inner.ensure_dialing(peer.id);
            }
        }
        Ok(node)
    }

    /// Binds the endpoint and accepts peers, but dials nobody until asked: for one-off syncs
    /// with [`Node::sync_once`], which a dial loop to the same peer would duplicate.
    pub async fn start_without_dialing(store: Store, config: NetConfig) -> Result<Self, NetError> {
        Self::bind(store, config, true).await
    }

    async fn bind(store: Store, config: NetConfig, one_off: bool) -> Result<Self, NetError> {
        let gate = crate::gate::Gate::new(config.max_failed_handshakes, config.failure_window);
        let credentials = Credentials::of(&store)?;
        let mut server = tls::server_config(&store, &credentials)?;
        server.transport_config(Arc::new(transport(&config, false)));
        let socket =
            udp_socket(config.listen, config.udp_buffer).map_err(|source| NetError::Bind {
                addr: config.listen,
                source,
            })?;
        let runtime = quinn::default_runtime().ok_or_else(|| NetError::Bind {
            addr: config.listen,
            source: std::io::Error::other("no async runtime"),
        })?;
        let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(tls::ResetKey::of(&store)));
        endpoint_config.cid_generator(|| Box::new(tls::RandomIds));
        let endpoint = quinn::Endpoint::new(endpoint_config, Some(server), socket, runtime)
            .map_err(|source| NetError::Bind {
                addr: config.listen,
                source,
            })?;
        let local_addr = endpoint.local_addr().map_err(|source| NetError::Bind {
            addr: config.listen,
            source,
        })?;
        let (events, _) = broadcast::channel(1024);
        let inner = Arc::new(Inner {
            store: store.clone(),
            config,
            credentials,
            endpoint,
            local_addr,
            peers: Mutex::new(HashMap::new()),
            events,
            network_changed: Notify::new(),
            shutdown: watch::Sender::new(false),
            one_off,
            tasks: Mutex::new(JoinSet::new()),
            gate,
            refused: std::sync::atomic::AtomicU64::new(0),
        });
        inner.spawn(accept_loop(inner.clone()));
        if !one_off {
            inner.spawn(crate::blobs::fetch_eagerly(inner.clone()));
        }
        tracing::info!(peer = %store.peer_id(), addr = %local_addr, "listening");
        Ok(Self { inner })
    }

    /// This replica's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.inner.store.peer_id()
    }

    /// The address the endpoint is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// The store this node syncs.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Keeps a connection to `peer` at the addresses in the peer table: starts its dial loop if
    /// none runs, and wakes it if it is waiting (for example after its addresses changed).
    pub fn dial(&self, peer: PeerId) {
        self.inner.ensure_dialing(peer);
        self.inner.wake(peer);
    }

    /// The network changed (a new Wi-Fi, a VPN up): every dial loop waiting to retry dials
    /// now, with its backoff started over.
    pub fn network_changed(&self) {
        self.inner.network_changed.notify_waiters();
    }

    /// Closes the connection to `peer`, if any (its dial loop stops if the peer was removed
    /// from the peer table).
    pub fn disconnect(&self, peer: PeerId) {
        if let Some(live) = self.inner.live(peer) {
            live.close(CloseCode::Shutdown.into(), b"disconnected");
        }
        self.inner.wake(peer);
    }

    /// Every peer the node has dealt with, and its connection state.
    pub fn states(&self) -> HashMap<PeerId, ConnectionState> {
        self.inner
            .peers()
            .iter()
            .map(|(peer, slot)| (*peer, slot.state))
            .collect()
    }

    /// Counters of the open connection to `peer` (UDP bytes and packets each way, round-trip
    /// time), if there is one.
    pub fn connection_stats(&self, peer: PeerId) -> Option<quinn::ConnectionStats> {
        self.inner.live(peer).map(|conn| conn.stats())
    }

    /// How many connection attempts this node refused before their handshake, from addresses
    /// whose handshakes kept failing (see [`NetConfig::max_failed_handshakes`]).
    pub fn refused_handshakes(&self) -> u64 {
        self.inner
            .refused
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many tasks the node runs now: its accept loop, its blob fetcher (unless it is for
    /// one-off syncs), a dial loop per peer it keeps a connection to, and one per open
    /// connection. Tasks that have ended are not counted.
    pub fn running_tasks(&self) -> usize {
        let mut tasks = self.inner.tasks();
        while tasks.try_join_next().is_some() {}
        tasks.len()
    }

    /// Events from now on: connection changes and session events.
    pub fn subscribe(&self) -> broadcast::Receiver<NetEvent> {
        self.inner.events.subscribe()
    }

    /// Fetches a blob this replica has not got from the connected peers, whatever the fetch
    /// policy of the spaces whose documents refer to it, and returns its length once it is
    /// durable here (at once if it is here already). Peers that may read a document here
    /// that refers to it are asked first, then the others. Each checks that this replica may
    /// read a document of theirs that refers to it. Progress goes out as
    /// [`NetEvent::BlobProgress`]; a transfer cut before the end resumes from what arrived.
    pub async fn fetch_blob(&self, hash: ferry_store::BlobHash) -> Result<u64, NetError> {
        self.inner.fetch_blob_from_any(hash, true).await
    }

    /// Closes every connection with [`CloseCode::Shutdown`] and waits (up to a second) until
    /// the peers have been told; stops dialing and accepting.
    pub async fn shutdown(&self) {
        self.inner.begin_shutdown();
        // The close frames go out at once; waiting longer would only let connections already
        // closed finish draining.
        let _ = tokio::time::timeout(Duration::from_secs(1), self.inner.endpoint.wait_idle()).await;
        self.inner.tasks().abort_all();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.inner.begin_shutdown();
        self.inner.tasks().abort_all();
    }
}

impl Inner {
    fn peers(&self) -> MutexGuard<'_, HashMap<PeerId, Slot>> {
        // The map holds plain state that is valid after any panic.
        self.peers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn tasks(&self) -> MutexGuard<'_, JoinSet<()>> {
        self.tasks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `task` on the node's task set, reaping the tasks that have finished.
    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let mut tasks = self.tasks();
        while tasks.try_join_next().is_some() {}
        tasks.spawn(task);
    }

    /// What a session driver needs from this node.
    pub(crate) fn session_context(&self) -> SessionContext {
        SessionContext {
            store: self.store.clone(),
            config: self.config.session.clone(),
            events: self.events.clone(),
            forget_after: self.config.forget_after,
            frame_timeout: self.config.frame_timeout,
        }
    }

    pub(crate) fn emit(&self, event: NetEvent) {
        let _ = self.events.send(event); // no subscriber is fine
    }

    pub(crate) fn events_sender(&self) -> broadcast::Sender<NetEvent> {
        self.events.clone()
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<NetEvent> {
        self.events.subscribe()
    }

    /// Changes to `true` when the node shuts down.
    pub(crate) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// The peers with an open connection, each with it.
    pub(crate) fn connected(&self) -> Vec<(PeerId, Connection)> {
        self.peers()
            .iter()
            .filter_map(|(peer, slot)| {
                let live = slot.live.as_ref()?;
                live.conn
                    .close_reason()
                    .is_none()
                    .then(|| (*peer, live.conn.clone()))
            })
            .collect()
    }

    fn shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
        self.endpoint.close(CloseCode::Shutdown.into(), b"shutdown");
        let mut peers = self.peers();
        for (peer, slot) in peers.iter_mut() {
            slot.live = None;
            slot.wake.notify_waiters();
            let state = ConnectionState::Disconnected { next_retry: None };
            if slot.state != state {
                slot.state = state;
                self.emit(NetEvent::Connection { peer: *peer, state });
            }
        }
    }

    fn set_state(&self, peer: PeerId, state: ConnectionState) {
        let mut peers = self.peers();
        let slot = peers.entry(peer).or_default();
        if slot.state != state {
            slot.state = state;
            drop(peers);
            self.emit(NetEvent::Connection { peer, state });
        }
    }

    fn set_handshaking(&self, peer: PeerId, handshaking: bool) {
        let mut peers = self.peers();
        let slot = peers.entry(peer).or_default();
        slot.handshaking = handshaking;
        if !handshaking {
            slot.handshake_done.notify_waiters();
        }
    }

    /// A connection `peer` dialed arrived while this side's own dial to it is in its
    /// handshake. When this side's id is the smaller, both sides will keep this side's
    /// connection if that dial succeeds; but it may never (a stale address), so the incoming
    /// one waits for the dial to end, and [`Inner::register`] then decides.
    async fn await_own_dial(&self, peer: PeerId, conn: &Connection) {
        let patience = self.config.connect_timeout + Duration::from_secs(1);
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let done = {
                let peers = self.peers();
                match peers.get(&peer) {
                    Some(slot) if slot.handshaking && self.store.peer_id() < peer => {
                        slot.handshake_done.clone()
                    }
                    _ => return,
                }
            };
            let ended = done.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            // Checked again with the waiter registered, so no wake-up is missed.
            if !self.peers().get(&peer).is_some_and(|slot| slot.handshaking) {
                return;
            }
            tokio::select! {
                () = &mut ended => {}
                _ = conn.closed() => return,
                () = tokio::time::sleep_until(deadline) => return,
            }
        }
    }

    fn wake(&self, peer: PeerId) {
        if let Some(slot) = self.peers().get(&peer) {
            slot.wake.notify_waiters();
        }
    }

    /// The open connection to `peer`, if any, and what its session has done.
    pub(crate) fn live_session(&self, peer: PeerId) -> Option<(Connection, Arc<Progress>)> {
        self.peers()
            .get(&peer)
            .and_then(|slot| slot.live.as_ref())
            .filter(|live| live.conn.close_reason().is_none())
            .map(|live| (live.conn.clone(), live.progress.clone()))
    }

    /// The open connection to `peer`, if any.
    pub(crate) fn live(&self, peer: PeerId) -> Option<Connection> {
        self.peers()
            .get(&peer)
            .and_then(|slot| slot.live.as_ref())
            .filter(|live| live.conn.close_reason().is_none())
            .map(|live| live.conn.clone())
    }

    /// Makes `conn` the connection to `peer`, unless it duplicates a better one; returns
    /// whether it was kept. Both sides apply the same rule, so they keep the same connection:
    /// of two dialed at once in opposite directions, the one the smaller peer id dialed;
    /// otherwise the newer, since the peer dialed again because it lost the older one.
    fn register(
        &self,
        peer: PeerId,
        conn: &Connection,
        ours: bool,
        progress: &Arc<Progress>,
    ) -> bool {
        let me = self.store.peer_id();
        let mut peers = self.peers();
        let slot = peers.entry(peer).or_default();
        let now = Instant::now();
        if let Some(old) = &slot.live
            && old.conn.close_reason().is_none()
        {
            let simultaneous =
                old.ours != ours && now.duration_since(old.established) < SIMULTANEOUS;
            let dialer = if ours { me } else { peer };
            let keep_new = !simultaneous || dialer == me.min(peer);
            if !keep_new {
                conn.close(CloseCode::Duplicate.into(), b"duplicate connection");
                return false;
            }
            old.conn
                .close(CloseCode::Duplicate.into(), b"duplicate connection");
        }
        slot.live = Some(Live {
            conn: conn.clone(),
            ours,
            established: now,
            progress: progress.clone(),
        });
        slot.replacing_until = None;
        slot.wake.notify_waiters();
        true
    }

    /// Forgets `conn` as the connection to `peer`, if it still is.
    fn unregister(&self, peer: PeerId, conn: &Connection) {
        let mut peers = self.peers();
        let Some(slot) = peers.get_mut(&peer) else {
            return;
        };
        if slot
            .live
            .as_ref()
            .is_some_and(|live| live.conn.stable_id() == conn.stable_id())
        {
            slot.live = None;
            slot.refused = refused_in_handshake(conn);
            slot.wake.notify_waiters();
            if closed_as_duplicate(conn) {
                slot.replacing_until = Some(Instant::now() + REPLACEMENT_GRACE);
                return;
            }
            drop(peers);
            self.set_state(peer, ConnectionState::Disconnected { next_retry: None });
        }
    }

    /// Runs a session on a connection just established, for as long as it lasts, recording
    /// what it does in `progress`. When `ended` is given, it hears how the session ended: `Ok`
    /// also when the connection was not kept because another one to the peer was.
    pub(crate) async fn run_connection(
        self: Arc<Self>,
        peer: PeerId,
        (conn, progress): (Connection, Arc<Progress>),
        role: Role,
        ended: Option<oneshot::Sender<Result<(), NetError>>>,
    ) {
        if role == Role::Responder {
            self.await_own_dial(peer, &conn).await;
        }
        if !self.register(peer, &conn, role == Role::Initiator, &progress) {
            progress.end(None);
            if let Some(ended) = ended {
                let _ = ended.send(Ok(()));
            }
            return;
        }
        self.set_state(
            peer,
            ConnectionState::Connected {
                since: SystemTime::now(),
            },
        );
        tracing::debug!(%peer, ?role, addr = %conn.remote_address(), "connected");
        let ctx = self.session_context();
        let result = driver::drive(ctx, peer, conn.clone(), role, Until::Closed, &progress).await;
        progress.end(match &result {
            Err(e @ (NetError::Session { .. } | NetError::Panicked { .. })) => Some(error_chain(e)),
            _ => None,
        });
        match &result {
            Ok(()) => tracing::debug!(%peer, "session ended"),
            Err(_) if closed_as_duplicate(&conn) => {
                tracing::debug!(%peer, "duplicate connection closed");
            }
            Err(_)
                if matches!(
                    conn.close_reason(),
                    Some(quinn::ConnectionError::LocallyClosed)
                ) =>
            {
                tracing::debug!(%peer, "connection closed here");
            }
            Err(_) if closed_with(&conn, CloseCode::Shutdown) => {
                tracing::info!(%peer, "the peer went offline");
            }
            Err(e) => {
                tracing::warn!(%peer, error = %error_chain(e), "session ended with an error");
                if matches!(e, NetError::Session { .. } | NetError::Panicked { .. }) {
                    self.emit(NetEvent::SessionFailed {
                        peer,
                        error: error_chain(e),
                    });
                }
            }
        }
        self.unregister(peer, &conn);
        if let Some(ended) = ended {
            let _ = ended.send(result);
        }
    }

    fn ensure_dialing(self: &Arc<Self>, peer: PeerId) {
        if self.shutting_down() {
            return;
        }
        {
            let mut peers = self.peers();
            let slot = peers.entry(peer).or_default();
            if slot.dialing {
                return;
            }
            slot.dialing = true;
        }
        self.spawn(self.clone().dial_loop(peer));
    }

    /// Keeps a connection to `peer`: dials when there is none (in either direction), and after
    /// a failure waits a backoff delay, or less if woken.
    async fn dial_loop(self: Arc<Self>, peer: PeerId) {
        let mut backoff = Backoff::new(self.config.backoff);
        let mut shutdown = self.shutdown.subscribe();
        loop {
            if self.shutting_down() {
                break;
            }
            let wake = self.peers().entry(peer).or_default().wake.clone();
            let woken = wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let current = self
                .peers()
                .get(&peer)
                .and_then(|slot| slot.live.as_ref().map(|live| live.conn.clone()));
            if let Some(conn) = current {
                if conn.close_reason().is_none() {
                    tokio::select! {
                        _ = conn.closed() => {}
                        () = &mut woken => {}
                        _ = shutdown.changed() => break,
                    }
                    if !refused_in_handshake(&conn) {
                        backoff.reset();
                    }
                    continue;
                }
                if closed_as_duplicate(&conn) {
                    // Closed, not yet forgotten: the peer kept another connection.
                    let mut peers = self.peers();
                    let slot = peers.entry(peer).or_default();
                    slot.replacing_until
                        .get_or_insert(Instant::now() + REPLACEMENT_GRACE);
                }
            }
            let replacing = self
                .peers()
                .get(&peer)
                .and_then(|slot| slot.replacing_until);
            if let Some(until) = replacing {
                if Instant::now() < until {
                    tokio::select! {
                        () = tokio::time::sleep_until(until.into()) => {}
                        () = &mut woken => {}
                        _ = shutdown.changed() => break,
                    }
                    continue;
                }
                if let Some(slot) = self.peers().get_mut(&peer) {
                    slot.replacing_until = None;
                }
                self.set_state(peer, ConnectionState::Disconnected { next_retry: None });
            }
            let addresses = match self.store.peer(peer) {
                Ok(Some(info)) if !info.addresses.is_empty() => info.addresses,
                _ => break, // forgotten, or nowhere to dial: the peer may still dial in
            };
            let refused = self
                .peers()
                .get_mut(&peer)
                .is_some_and(|slot| std::mem::take(&mut slot.refused));
            let dialed = if refused {
                // A peer that refused this replica is not dialed again at once: a TLS 1.3
                // client learns of the refusal only after its handshake seemed to succeed.
                Err(NetError::Refused { peer })
            } else {
                self.set_state(peer, ConnectionState::Connecting);
                self.set_handshaking(peer, true);
                let dialed = self.dial_addresses(peer, &addresses).await;
                self.set_handshaking(peer, false);
                dialed
            };
            match dialed {
                Ok(conn) => {
                    backoff.reset();
                    self.spawn(self.clone().run_connection(
                        peer,
                        (conn, Progress::new()),
                        Role::Initiator,
                        None,
                    ));
                    // Give the new connection a moment to register before looking again.
                    tokio::select! {
                        () = &mut woken => {}
                        () = tokio::time::sleep(Duration::from_millis(50)) => {}
                    }
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::debug!(%peer, error = %e, ?delay, "dial failed");
                    // Listening for the network-changed nudge before the state says when the
                    // next try is: an app that sees that state and nudges at once is heard.
                    let changed = self.network_changed.notified();
                    tokio::pin!(changed);
                    changed.as_mut().enable();
                    self.set_state(
                        peer,
                        ConnectionState::Disconnected {
                            next_retry: Some(SystemTime::now() + delay),
                        },
                    );
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = &mut changed => backoff.reset(),
                        () = &mut woken => {}
                        _ = shutdown.changed() => break,
                    }
                }
            }
        }
        if let Some(slot) = self.peers().get_mut(&peer) {
            slot.dialing = false;
        }
        if self.live(peer).is_none() {
            self.set_state(peer, ConnectionState::Disconnected { next_retry: None });
        }
    }

    /// Dials `peer` at each address in turn until one answers.
    pub(crate) async fn dial_addresses(
        &self,
        peer: PeerId,
        addresses: &[SocketAddr],
    ) -> Result<Connection, NetError> {
        let mut client = tls::client_config_with(&self.store, &self.credentials, peer)?;
        client.transport_config(Arc::new(transport(&self.config, true)));
        let mut last = NetError::NoAddress(peer);
        for &addr in addresses {
            let connecting = match self
                .endpoint
                .connect_with(client.clone(), addr, SERVER_NAME)
            {
                Ok(connecting) => connecting,
                Err(source) => {
                    last = NetError::Dial { peer, addr, source };
                    continue;
                }
            };
            match tokio::time::timeout(self.config.connect_timeout, connecting).await {
                Ok(Ok(conn)) => return Ok(conn),
                Ok(Err(source)) => last = NetError::Connection { peer, source },
                Err(_) => last = NetError::Timeout { peer, addr },
            }
        }
        Err(last)
    }
}

/// Binds the endpoint's UDP socket at `addr`, asking for `buffer` bytes of receive and send
/// buffer (the system may grant less, which is logged: the node works, but drops packets
/// sooner under load).
fn udp_socket(addr: SocketAddr, buffer: usize) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_recv_buffer_size(buffer)?;
    socket.set_send_buffer_size(buffer)?;
    socket.bind(&addr.into())?;
    let granted = socket.recv_buffer_size()?;
    if granted < buffer {
        tracing::info!(
            asked = buffer,
            granted,
            "the system granted a smaller UDP receive buffer than asked (on Linux, raise \
             net.core.rmem_max): under load, packets are dropped sooner"
        );
    }
    Ok(socket.into())
}

/// Accepts connections until the endpoint closes; each runs its session on its own task.
async fn accept_loop(inner: Arc<Inner>) {
    while let Some(incoming) = inner.endpoint.accept().await {
        let ip = incoming.remote_address().ip();
        if inner.shutting_down() {
            incoming.refuse();
            continue;
        }
        if !inner.gate.admits(ip) {
            // Before any cryptography: an address whose handshakes keep failing.
            inner
                .refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            incoming.refuse();
            continue;
        }
        let node = inner.clone();
        inner.spawn(async move {
            let conn = match incoming.await {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::debug!(error = %e, "incoming handshake failed");
                    // Only a refused certificate counts against the address: a handshake that
                    // timed out or was cut is a bad network, not a stranger.
                    if crate::gate::refused_in_tls(&e) {
                        node.gate.failed(ip);
                    }
                    return;
                }
            };
            match peer_of(&conn) {
                Ok(peer) => {
                    tracing::debug!(%peer, "incoming connection");
                    node.run_connection(peer, (conn, Progress::new()), Role::Responder, None)
                        .await
                }
                Err(_) => {
                    node.gate.failed(ip);
                    conn.close(CloseCode::Protocol.into(), b"no certificate");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use automerge::ROOT;
    use automerge::transaction::Transactable;
    use ferry_store::{Access, DocKind, PeerInfo, SpaceId, Store};

    use super::*;

    async fn start(store: &Store) -> Node {
        start_with(store, NetConfig::default()).await
    }

    async fn start_with(store: &Store, config: NetConfig) -> Node {
        let config = NetConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..config
        };
        Node::start(store.clone(), config).await.unwrap()
    }

    /// `on` knows `peer`, dials it at `addr` if given, and lets it read and write `space`.
    fn grant(on: &Store, peer: &Store, addr: Option<SocketAddr>, space: SpaceId) {
        let mut info = PeerInfo::new(peer.peer_id(), "peer");
        info.addresses = addr.into_iter().collect();
        on.put_peer(&info).unwrap();
        on.grant(peer.peer_id(), space, Access::ReadWrite).unwrap();
    }

    async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
        let started = Instant::now();
        while !done() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_change_wakes_only_the_sessions_of_peers_that_may_read_its_space() {
        let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
        let [relay, phone, laptop, other] =
            [0, 1, 2, 3].map(|i| Store::open(dirs[i].path()).unwrap());
        let node = start(&relay).await;
        let (ours, theirs) = (SpaceId::random(), SpaceId::random());
        for (device, space) in [(&phone, ours), (&laptop, ours), (&other, theirs)] {
            grant(&relay, device, None, space);
            grant(device, &relay, Some(node.local_addr()), space);
        }
        let devices = [
            start(&phone).await,
            start(&laptop).await,
            start(&other).await,
        ];
        let session = |device: &Store| node.inner.live_session(device.peer_id());
        eventually("every device's session caught up on the relay", || {
            [&phone, &laptop, &other]
                .iter()
                .all(|d| session(d).is_some_and(|(_, p)| p.is_caught_up()))
        })
        .await;
        let fed = |device: &Store| session(device).map(|(_, p)| p.fed_so_far()).unwrap();
        let before = [fed(&phone), fed(&laptop), fed(&other)];

        let docs: Vec<_> = (0..20)
            .map(|i| {
                let doc = phone.create_in(ours, DocKind::Automerge).unwrap();
                phone.change(doc, |tx| tx.put(ROOT, "n", i)).unwrap();
                doc
            })
            .collect();
        eventually("the phone's documents on the laptop", || {
            docs.iter().all(|doc| laptop.info(*doc).is_ok())
        })
        .await;
        // The laptop's session was woken for them; the other user's never was, nor was the
        // phone's, since the documents came from the phone.
        assert!(
            fed(&laptop) > before[1],
            "the laptop's session was never woken"
        );
        assert_eq!(
            fed(&other),
            before[2],
            "a session woken for a space its peer may not read"
        );
        assert_eq!(
            fed(&phone),
            before[0],
            "the writer's own session woken for its changes"
        );
        assert!(docs.iter().all(|doc| other.info(*doc).is_err()));

        for device in devices {
            device.shutdown().await;
        }
        node.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_idle_session_forgets_its_peer_state_and_changes_still_flow_both_ways() {
        let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
        let [relay, phone] = [0, 1].map(|i| Store::open(dirs[i].path()).unwrap());
        let forgetful = NetConfig {
            forget_after: Duration::from_millis(300),
            ..NetConfig::default()
        };
        let node = start_with(&relay, forgetful).await;
        let space = SpaceId::random();
        grant(&relay, &phone, None, space);
        grant(&phone, &relay, Some(node.local_addr()), space);
        let docs: Vec<_> = (0..20)
            .map(|i| {
                let doc = phone.create_in(space, DocKind::Automerge).unwrap();
                phone.change(doc, |tx| tx.put(ROOT, "n", i)).unwrap();
                doc
            })
            .collect();
        let device = start(&phone).await;
        eventually("the phone's documents on the relay", || {
            docs.iter().all(|doc| relay.info(*doc).is_ok())
        })
        .await;
        let session = || node.inner.live_session(phone.peer_id()).unwrap().1;
        // (However slow this machine, the state was there before it was forgotten.)
        eventually("the relay's idle session forgetting its peer state", || {
            session().remembered() == 0
        })
        .await;
        assert!(
            session().remembered_most() >= 20,
            "no peer state was kept to forget"
        );

        // Both ways, a change still arrives over the same connection.
        phone.change(docs[3], |tx| tx.put(ROOT, "n", 300)).unwrap();
        relay.change(docs[4], |tx| tx.put(ROOT, "n", 400)).unwrap();
        let n = |store: &Store, doc| {
            store
                .read(doc, |d| {
                    automerge::ReadDoc::get(d, ROOT, "n")
                        .unwrap()
                        .map(|(v, _)| v.as_i64().unwrap())
                })
                .unwrap()
        };
        eventually("the phone's change on the relay", || {
            n(&relay, docs[3]) == Some(300)
        })
        .await;
        eventually("the relay's change on the phone", || {
            n(&phone, docs[4]) == Some(400)
        })
        .await;

        device.shutdown().await;
        node.shutdown().await;
    }
}
