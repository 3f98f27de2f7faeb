//! Blobs between peers. Each transfer has its own bidirectional QUIC stream beside the
//! session's, so a photo never holds up the documents' changes:
//!
//! - the fetcher writes a request: [`REQUEST`], the blob's 32-byte hash, and the byte to
//!   start from (`u64`, little endian), 41 bytes in all;
//! - the server answers one status byte: [`HERE`], then the blob's length (`u64`, little
//!   endian) and the bytes from that point on with the hashes that prove them (bao's
//!   encoding, see [`Store::encode_blob`]), then finishes the stream; or [`UNAVAILABLE`],
//!   whether the blob is not here or the peer may not fetch it (a peer learns nothing of
//!   blobs it may not read).
//!
//! A peer may fetch a blob when it may read a document here that refers to it
//! ([`Store::may_fetch_blob`]). The fetcher checks every 16 KiB against the hash before it
//! keeps it, and a cut transfer resumes from what it kept.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufReader, BufWriter};
use std::sync::Arc;
use std::time::Duration;

use ferry_store::{Access, BlobError, BlobHash, PeerId, Store, StoreEvent};
use quinn::{Connection, RecvStream, SendStream};
use tokio::sync::broadcast;
use tokio::task::JoinSet;
use tokio_util::io::SyncIoBridge;

use crate::node::Inner;
use crate::progress::Progress;
use crate::{ConnectionState, NetError, NetEvent};

/// The first byte of a blob request.
pub(crate) const REQUEST: u8 = 0xB1;
/// The answer when the blob follows.
pub(crate) const HERE: u8 = 0;
/// The answer when it does not.
pub(crate) const UNAVAILABLE: u8 = 1;
const REQUEST_LEN: usize = 41;
/// How long a peer has to send its whole request: a peer that trickles it is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Buffers between a stream and the blocking thread that encodes or decodes a blob.
const BUFFER: usize = 256 * 1024;
/// Progress events go out at most once per this many bytes.
const PROGRESS_STEP: u64 = 1 << 20;
/// Blobs fetched at once by the eager fetcher.
const FETCHES_AT_ONCE: usize = 2;

/// Serves `peer`'s blob requests on `conn` until it closes. Called once the session's stream
/// is open, so every stream accepted here is a blob request.
pub(crate) async fn serve(store: Store, peer: PeerId, conn: Connection) {
    let mut streams = JoinSet::new();
    while let Ok((send, recv)) = conn.accept_bi().await {
        while streams.try_join_next().is_some() {}
        streams.spawn(serve_one(store.clone(), peer, send, recv));
    }
}

async fn serve_one(store: Store, peer: PeerId, mut send: SendStream, mut recv: RecvStream) {
    let mut request = [0u8; REQUEST_LEN];
    let read = tokio::time::timeout(REQUEST_TIMEOUT, recv.read_exact(&mut request)).await;
    if !matches!(read, Ok(Ok(_))) || request[0] != REQUEST {
        tracing::debug!(%peer, "a malformed blob request");
        let _ = send.reset(crate::CloseCode::Protocol.into());
        return;
    }
    let hash = BlobHash::from_bytes(request[1..33].try_into().unwrap_or_default());
    let from = u64::from_le_bytes(request[33..41].try_into().unwrap_or_default());
    let allowed = store.may_fetch_blob(peer, hash).unwrap_or(false);
    let len = if allowed {
        store.blob_len(hash).ok()
    } else {
        None
    };
    let Some(len) = len else {
        let _ = send.write_all(&[UNAVAILABLE]).await;
        let _ = send.finish();
        return;
    };
    let mut header = [0u8; 9];
    header[0] = HERE;
    header[1..].copy_from_slice(&len.to_le_bytes());
    if send.write_all(&header).await.is_err() {
        return;
    }
    tracing::debug!(%peer, %hash, from, len, "sending a blob");
    let out = SyncIoBridge::new(send);
    let sent = tokio::task::spawn_blocking(move || {
        let mut out = BufWriter::with_capacity(BUFFER, out);
        store.encode_blob(hash, from, &mut out)?;
        let mut out = out
            .into_inner()
            .map_err(|e| BlobError::Io(e.into_error()))?;
        out.shutdown().map_err(BlobError::Io)
    })
    .await;
    if let Ok(Err(e)) = sent {
        tracing::debug!(%peer, %hash, error = %e, "a blob was not sent whole");
    }
}

/// Fetches `hash` from `peer` over `conn`, resuming what an earlier transfer kept, and returns
/// its length. Progress goes out as [`NetEvent::BlobProgress`].
pub(crate) async fn fetch(
    store: &Store,
    events: &broadcast::Sender<NetEvent>,
    peer: PeerId,
    (conn, progress): (Connection, Arc<Progress>),
    hash: BlobHash,
) -> Result<u64, NetError> {
    let blob_error = |source| NetError::Blob { hash, source };
    if let Ok(len) = store.blob_len(hash) {
        return Ok(len);
    }
    if !progress.wait_stream_open(REQUEST_TIMEOUT).await {
        return Err(NetError::BlobUnavailable(hash));
    }
    let stream_error = |e: &dyn std::fmt::Display| NetError::Stream {
        peer,
        what: e.to_string(),
    };
    let from = store.partial_blob(hash).map_or(0, |(_, verified)| verified);
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|source| NetError::Connection { peer, source })?;
    let mut request = [0u8; REQUEST_LEN];
    request[0] = REQUEST;
    request[1..33].copy_from_slice(hash.as_bytes());
    request[33..].copy_from_slice(&from.to_le_bytes());
    send.write_all(&request)
        .await
        .map_err(|e| stream_error(&e))?;
    let _ = send.finish();
    let mut status = [0u8; 1];
    recv.read_exact(&mut status)
        .await
        .map_err(|e| stream_error(&e))?;
    if status[0] != HERE {
        return Err(NetError::BlobUnavailable(hash));
    }
    let mut len = [0u8; 8];
    recv.read_exact(&mut len)
        .await
        .map_err(|e| stream_error(&e))?;
    let len = u64::from_le_bytes(len);
    let mut incoming = store.receive_blob(hash, len).map_err(blob_error)?;
    if incoming.resume_at() != from {
        // What was kept is for another length: the stream starts where this one does not.
        drop(incoming);
        store.discard_partial_blob(hash).map_err(blob_error)?;
        let _ = recv.stop(0u32.into());
        return Err(NetError::Stream {
            peer,
            what: "a partial blob of another length was discarded; fetch again".into(),
        });
    }
    let input = SyncIoBridge::new(recv);
    let events = events.clone();
    tracing::debug!(%peer, %hash, from, len, "fetching a blob");
    let taken = tokio::task::spawn_blocking(move || {
        let mut reported = from;
        let report = |received: u64| {
            if received >= reported + PROGRESS_STEP {
                reported = received;
                let _ = events.send(NetEvent::BlobProgress {
                    peer,
                    hash,
                    received,
                    len,
                });
            }
        };
        incoming.take(BufReader::with_capacity(BUFFER, input), report)?;
        incoming.finish()
    })
    .await
    .map_err(|_| NetError::Panicked { peer })?;
    taken.map_err(blob_error)
}

/// Keeps this replica holding the blobs its documents refer to, in spaces whose policy is
/// eager: at start, whenever a document changes, and whenever a peer connects (one may have
/// what the others had not).
pub(crate) async fn fetch_eagerly(inner: Arc<Inner>) {
    let store = inner.store.clone();
    let mut changes = store.subscribe();
    let mut net = inner.subscribe();
    let mut shutdown = inner.shutdown_signal();
    // Wanted blobs, each with a document that refers to it; and those tried since the last
    // change that could help.
    let mut wanted: BTreeMap<BlobHash, ()> = BTreeMap::new();
    let mut tried: HashSet<BlobHash> = HashSet::new();
    let mut fetching: JoinSet<(BlobHash, bool)> = JoinSet::new();
    let mut in_flight: HashSet<BlobHash> = HashSet::new();
    let rescan = |wanted: &mut BTreeMap<BlobHash, ()>| {
        if let Ok(missing) = store.missing_blobs() {
            wanted.extend(missing.into_iter().map(|(hash, _)| (hash, ())));
        }
    };
    rescan(&mut wanted);
    loop {
        // Start fetches, up to the limit, of blobs not tried since something changed.
        let candidates: Vec<BlobHash> = wanted
            .keys()
            .filter(|h| !in_flight.contains(h) && !tried.contains(h))
            .copied()
            .collect();
        for hash in candidates {
            if in_flight.len() >= FETCHES_AT_ONCE {
                break;
            }
            if store.has_blob(hash) {
                wanted.remove(&hash);
                continue;
            }
            tried.insert(hash);
            in_flight.insert(hash);
            let inner = inner.clone();
            fetching.spawn(async move {
                let fetched = inner.fetch_blob_from_any(hash, false).await.is_ok();
                (hash, fetched)
            });
        }
        tokio::select! {
            done = fetching.join_next(), if !fetching.is_empty() => {
                if let Some(Ok((hash, fetched))) = done {
                    in_flight.remove(&hash);
                    if fetched {
                        wanted.remove(&hash);
                        tried.remove(&hash);
                    }
                }
            }
            event = changes.recv() => match event {
                Ok(StoreEvent::Changed { doc, .. }) => {
                    for hash in store.missing_blobs_of(doc).unwrap_or_default() {
                        wanted.insert(hash, ());
                        // A new reference: its sender likely has the blob now.
                        tried.remove(&hash);
                    }
                }
                Ok(_) => {}
                Err(ferry_store::RecvError::Lagged { .. }) => rescan(&mut wanted),
                Err(ferry_store::RecvError::Closed) => return,
            },
            event = net.recv() => match event {
                Ok(NetEvent::Connection { state: ConnectionState::Connected { .. }, .. })
                | Err(broadcast::error::RecvError::Lagged(_)) => tried.clear(),
                Ok(_) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = shutdown.changed() => return,
        }
    }
}

impl Inner {
    /// Fetches `hash` from the connected peers that may read a document here that refers to
    /// it (and, if `anyone`, then from every other connected peer), one after another, until
    /// one has it. A transfer of the same blob already under way is waited for.
    pub(crate) async fn fetch_blob_from_any(
        &self,
        hash: BlobHash,
        anyone: bool,
    ) -> Result<u64, NetError> {
        loop {
            if let Ok(len) = self.store.blob_len(hash) {
                return Ok(len);
            }
            let docs = self.store.docs_referring_to(hash)?;
            let mut readers = Vec::new();
            let mut others = Vec::new();
            for (peer, _) in self.connected() {
                let reads = docs.iter().any(|doc| {
                    self.store
                        .access(peer, *doc)
                        .is_ok_and(|a| a >= Access::Read)
                });
                if reads {
                    readers.push(peer);
                } else if anyone {
                    others.push(peer);
                }
            }
            let mut busy = false;
            let mut last = NetError::BlobUnavailable(hash);
            for peer in readers.into_iter().chain(others) {
                let Some(live) = self.live_session(peer) else {
                    continue;
                };
                match fetch(&self.store, &self.events_sender(), peer, live, hash).await {
                    Ok(len) => {
                        self.emit(NetEvent::BlobFetched { peer, hash, len });
                        return Ok(len);
                    }
                    Err(NetError::Blob {
                        source: BlobError::InFlight(_),
                        ..
                    }) => {
                        busy = true;
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(%peer, %hash, error = %e, "a blob fetch failed");
                        if !matches!(e, NetError::BlobUnavailable(_)) {
                            self.emit(NetEvent::BlobFailed {
                                peer,
                                hash,
                                error: crate::connection::error_chain(&e),
                            });
                        }
                        last = e;
                    }
                }
            }
            if !busy {
                return Err(last);
            }
            // Another transfer of it is under way here: wait for it to end.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
