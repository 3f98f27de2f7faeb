//! What the commands do to a replica, the same whether run here or by `ferry serve`.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use anyhow::{Context, bail};
use ferry::automerge::transaction::{Transactable, Transaction};
use ferry::automerge::{AutoSerde, ObjId, ObjType, ROOT, ReadDoc, ScalarValue, Value};
use ferry::{ConnectionState, DocId, DocKind, Event, PeerId, Replica, SpaceId};
use serde_json::{Value as Json, json};

use crate::protocol::{
    BlobAt, BlobEntry, BlobPolicyEntry, Command, DocCreated, DocEntry, DocStatus, DocValue,
    Fetching, Grant, PeerAdded, PeerEntry, PeerGrant, PeerRef, PeerStatus, Progress, Reply,
    SpaceEntry, SpaceGrant, SpaceRef, Status, Synced,
};

/// The name of a blob fetch policy, as `ferry space blobs` takes it.
pub(crate) fn policy_name(policy: ferry::BlobPolicy) -> &'static str {
    match policy {
        ferry::BlobPolicy::Eager => "eager",
        ferry::BlobPolicy::OnDemand => "on-demand",
    }
}

/// How long `fetch_blob` waits for a first connection when the replica was offline.
const FIRST_CONNECTION: std::time::Duration = std::time::Duration::from_secs(10);

/// Fetches the blob `hash` from the peers unless it is here, telling `progress` how much has
/// arrived. An offline replica goes online for it (dialing its peers, waiting up to 10 s for
/// one to answer); the caller shuts it down after.
pub(crate) async fn fetch_blob(
    replica: &Replica,
    hash: ferry::BlobHash,
    mut progress: impl FnMut(Fetching),
) -> anyhow::Result<BlobEntry> {
    if let Ok(len) = replica.store().blob_len(hash) {
        return Ok(BlobEntry { hash, len });
    }
    let mut events = replica.subscribe();
    if replica.local_addr().await.is_none() {
        let dials = replica.peers()?.iter().any(|p| !p.addresses.is_empty());
        replica.serve(([0, 0, 0, 0], 0).into()).await?;
        if dials {
            let connected = async {
                while let Some(event) = events.next().await {
                    if let Event::Connection {
                        state: ConnectionState::Connected { .. },
                        ..
                    } = event
                    {
                        return;
                    }
                }
            };
            let _ = tokio::time::timeout(FIRST_CONNECTION, connected).await;
        }
    }
    let fetch = replica.fetch_blob(hash);
    tokio::pin!(fetch);
    let len = loop {
        tokio::select! {
            result = &mut fetch => break result?,
            Some(event) = events.next() => {
                if let Event::BlobProgress { hash: h, received, len, .. } = event
                    && h == hash
                {
                    progress(Fetching { received, len });
                }
            }
        }
    };
    Ok(BlobEntry { hash, len })
}

/// Syncs with `peer` once, telling `progress` whenever a document is sent or received. Replies
/// with the counts: documents sent (the peer lacked changes to them and now holds them),
/// documents received, and documents still pending for the peer.
pub(crate) async fn sync_once(
    replica: &Replica,
    peer: PeerId,
    mut progress: impl FnMut(Progress),
) -> anyhow::Result<Synced> {
    let pending_for = |status: &ferry::SyncStatus| -> BTreeSet<DocId> {
        status
            .peer(peer)
            .map(|p| {
                p.docs
                    .iter()
                    .filter(|d| d.pending > 0)
                    .map(|d| d.doc)
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut tally = Tally {
        peer,
        to_send: pending_for(&replica.sync_status().await?),
        sent: BTreeSet::new(),
        received: BTreeSet::new(),
    };
    let mut events = replica.subscribe();
    progress(tally.progress());
    let sync = replica.sync_once(peer);
    tokio::pin!(sync);
    let result = loop {
        tokio::select! {
            result = &mut sync => break result,
            Some(event) = events.next() => {
                if tally.note(event) {
                    progress(tally.progress());
                }
            }
        }
    };
    // The bar followed the events; the counts come from the sync's own report.
    let report = result?;
    Ok(Synced {
        peer,
        sent: report.sent.len(),
        received: report.received.len(),
        pending: report.pending.len(),
    })
}

/// What a sync with `peer` has done so far, from the replica's events.
struct Tally {
    peer: PeerId,
    /// Documents with changes the peer lacked when the sync began.
    to_send: BTreeSet<DocId>,
    /// Those of them it now holds whole.
    sent: BTreeSet<DocId>,
    /// Documents the peer's changes updated here.
    received: BTreeSet<DocId>,
}

impl Tally {
    /// Notes what `event` says of the sync; true if it counted something new.
    fn note(&mut self, event: ferry::Event) -> bool {
        match event {
            ferry::Event::Synced { peer, doc }
                if peer == self.peer && self.to_send.contains(&doc) =>
            {
                self.sent.insert(doc)
            }
            ferry::Event::Changed {
                doc,
                origin: ferry::Origin::Remote(peer),
            } if peer == self.peer => self.received.insert(doc),
            _ => false,
        }
    }

    fn progress(&self) -> Progress {
        Progress {
            to_send: self.to_send.len() as u64,
            sent: self.sent.len() as u64,
            received: self.received.len() as u64,
        }
    }
}

pub(crate) fn parse_peer(text: &str) -> anyhow::Result<PeerId> {
    text.trim()
        .parse()
        .with_context(|| format!("malformed peer id {text:?}"))
}

pub(crate) fn parse_doc(text: &str) -> anyhow::Result<DocId> {
    text.trim()
        .parse()
        .with_context(|| format!("malformed document id {text:?}"))
}

pub(crate) fn parse_space(text: &str) -> anyhow::Result<SpaceId> {
    text.trim()
        .parse()
        .with_context(|| format!("malformed space id {text:?} (an id, or `default`)"))
}

pub(crate) fn parse_addr(text: &str) -> anyhow::Result<SocketAddr> {
    text.trim()
        .parse()
        .with_context(|| format!("malformed address {text:?} (expected IP:PORT)"))
}

/// `a.b.c` as keys; no key may be empty.
pub(crate) fn parse_path(text: &str) -> anyhow::Result<Vec<String>> {
    let keys: Vec<String> = text.split('.').map(str::to_owned).collect();
    if keys.iter().any(String::is_empty) {
        bail!("malformed path {text:?} (keys separated by dots, none empty)");
    }
    Ok(keys)
}

/// JSON if it parses, else the text as a string.
pub(crate) fn parse_value(text: &str) -> Json {
    serde_json::from_str(text).unwrap_or_else(|_| Json::String(text.to_owned()))
}

/// Runs one command on `replica`.
pub(crate) async fn execute(replica: &Replica, command: &Command) -> anyhow::Result<Reply> {
    Ok(match command {
        Command::Id => Reply::Id(PeerRef {
            peer: replica.peer_id(),
        }),
        Command::PeerAdd {
            peer,
            addr,
            access,
            name,
        } => {
            if *peer == replica.peer_id() {
                bail!("{peer} is this replica's own id");
            }
            match addr {
                Some(addr) => replica.add_peer(*peer, *addr, *access).await?,
                None => replica.allow_peer(*peer, *access).await?,
            }
            if let Some(name) = name {
                replica.name_peer(*peer, name.clone()).await?;
            }
            Reply::PeerAdded(PeerAdded {
                peer: *peer,
                addr: *addr,
                access: *access,
            })
        }
        Command::PeerList => {
            let status = replica.sync_status().await?;
            let mut peers = Vec::new();
            for p in replica.peers()? {
                let spaces = replica.store().grants(p.id)?;
                peers.push(PeerEntry {
                    connection: status.peer(p.id).map(|s| (&s.connection).into()),
                    peer: p.id,
                    name: p.name,
                    addresses: p.addresses,
                    spaces: spaces
                        .into_iter()
                        .map(|(space, access)| SpaceGrant { space, access })
                        .collect(),
                });
            }
            Reply::Peers(peers)
        }
        Command::PeerRemove { peer } => {
            if !replica.remove_peer(*peer).await? {
                bail!("no peer {peer}");
            }
            Reply::PeerRemoved(PeerRef { peer: *peer })
        }
        Command::SpaceNew { name } => {
            let space = replica.create_space(name.clone()).await?;
            Reply::SpaceCreated(SpaceRef {
                space: space.id(),
                name: Some(name.clone()),
            })
        }
        Command::SpaceList => Reply::Spaces(
            replica
                .spaces()
                .await?
                .into_iter()
                .map(|s| SpaceEntry {
                    space: s.id,
                    name: s.name,
                    docs: s.docs,
                    grants: s
                        .grants
                        .into_iter()
                        .map(|(peer, access)| PeerGrant { peer, access })
                        .collect(),
                })
                .collect(),
        ),
        Command::SpaceGrant {
            space,
            peer,
            access,
        } => {
            replica.space(*space).grant(*peer, *access).await?;
            Reply::Granted(Grant {
                space: *space,
                peer: *peer,
                access: *access,
            })
        }
        Command::DocNew { kind, space } => {
            let in_space = replica.space(*space);
            let doc = match kind {
                DocKind::Automerge => in_space.create_doc().await?.id(),
                DocKind::GCounter => in_space.create_counter().await?.id(),
                DocKind::PNCounter => in_space.create_pn_counter().await?.id(),
                DocKind::LwwRegister => in_space.create_register().await?.id(),
                DocKind::MvRegister => in_space.create_multi_register().await?.id(),
            };
            Reply::DocCreated(DocCreated {
                doc,
                kind: *kind,
                space: *space,
            })
        }
        Command::DocList => Reply::Docs(
            replica
                .documents()?
                .into_iter()
                .map(|d| DocEntry {
                    doc: d.id,
                    kind: d.kind,
                    space: d.space,
                    changes: d.changes,
                })
                .collect(),
        ),
        Command::DocGet { doc } => Reply::Doc(doc_value(replica, *doc)?),
        Command::DocSet { doc, path, value } => {
            if path.is_empty() || path.iter().any(String::is_empty) {
                bail!("malformed path (keys separated by dots, none empty)");
            }
            let handle = replica.doc(*doc)?;
            let (path, value) = (path.clone(), value.clone());
            handle.change(move |tx| set_path(tx, &path, &value)).await?;
            Reply::Doc(doc_value(replica, *doc)?)
        }
        Command::CounterAdd { doc, n, down } => {
            let counter = replica.counter(*doc)?;
            if *down {
                counter.decrement(*n).await?;
            } else {
                counter.increment(*n).await?;
            }
            Reply::Doc(doc_value(replica, *doc)?)
        }
        Command::RegisterSet { doc, value } => {
            match replica.doc_info(*doc)?.kind {
                DocKind::MvRegister => replica.multi_register(*doc)?.set(value.clone()).await?,
                _ => replica.register(*doc)?.set(value.clone()).await?,
            }
            Reply::Doc(doc_value(replica, *doc)?)
        }
        Command::Status => Reply::Status(status(replica).await?),
        Command::BlobAdd { path } => {
            let (hash, len) = replica.add_blob_file(path.clone()).await?;
            Reply::Blob(BlobEntry { hash, len })
        }
        Command::BlobList => Reply::Blobs(
            replica
                .blobs()?
                .into_iter()
                .map(|(hash, len)| BlobEntry { hash, len })
                .collect(),
        ),
        Command::BlobGc { grace_secs } => {
            let lens: std::collections::HashMap<_, _> = replica.blobs()?.into_iter().collect();
            let removed = replica
                .collect_blobs(std::time::Duration::from_secs(*grace_secs))
                .await?;
            Reply::BlobsRemoved(
                removed
                    .into_iter()
                    .map(|hash| BlobEntry {
                        hash,
                        len: lens.get(&hash).copied().unwrap_or_default(),
                    })
                    .collect(),
            )
        }
        Command::SpaceBlobs { space, on_demand } => {
            let policy = match on_demand {
                true => ferry::BlobPolicy::OnDemand,
                false => ferry::BlobPolicy::Eager,
            };
            replica.space(*space).set_blob_policy(policy).await?;
            Reply::BlobPolicy(BlobPolicyEntry {
                space: *space,
                policy: policy_name(policy).to_owned(),
            })
        }
        Command::BlobLocate { hash } => Reply::BlobAt(BlobAt {
            hash: *hash,
            path: replica.blob_location(*hash)?,
        }),
    })
}

async fn status(replica: &Replica) -> anyhow::Result<Status> {
    let status = replica.sync_status().await?;
    let peers = status
        .peers
        .iter()
        .map(|p| PeerStatus {
            peer: p.peer,
            name: p.name.clone(),
            connection: (&p.connection).into(),
            last_sync_millis: p.last_sync.map(ferry::millis_of),
            docs: p
                .docs
                .iter()
                .map(|d| DocStatus {
                    doc: d.doc,
                    pending: d.pending,
                    last_sync_millis: d.last_sync.map(ferry::millis_of),
                })
                .collect(),
        })
        .collect();
    Ok(Status {
        peer: replica.peer_id(),
        serving: replica.local_addr().await,
        peers,
    })
}

/// A register's bytes: the string if they are UTF-8, else `{"hex": ...}`.
fn bytes_json(bytes: &[u8]) -> Json {
    match std::str::from_utf8(bytes) {
        Ok(text) => Json::String(text.to_owned()),
        Err(_) => json!({ "hex": bytes.iter().map(|b| format!("{b:02x}")).collect::<String>() }),
    }
}

fn doc_value(replica: &Replica, doc: DocId) -> anyhow::Result<DocValue> {
    let kind = replica.doc_info(doc)?.kind;
    let value = match kind {
        DocKind::Automerge => replica
            .doc(doc)?
            .read(|am| serde_json::to_value(AutoSerde::from(am)))??,
        DocKind::GCounter | DocKind::PNCounter => {
            let value = replica.counter(doc)?.value()?;
            i64::try_from(value).map_or_else(|_| Json::String(value.to_string()), Json::from)
        }
        DocKind::LwwRegister => replica
            .register(doc)?
            .get()?
            .map_or(Json::Null, |v| bytes_json(&v)),
        DocKind::MvRegister => Json::Array(
            replica
                .multi_register(doc)?
                .values()?
                .iter()
                .map(|v| bytes_json(v))
                .collect(),
        ),
    };
    Ok(DocValue { doc, kind, value })
}

/// Puts `value` at `path`, making maps on the way where there are none.
fn set_path(
    tx: &mut Transaction<'_>,
    path: &[String],
    value: &Json,
) -> Result<(), ferry::automerge::AutomergeError> {
    let Some((last, parents)) = path.split_last() else {
        return Ok(()); // refused before the transaction
    };
    let mut obj = ROOT;
    for key in parents {
        obj = match tx.get(&obj, key.as_str())? {
            Some((Value::Object(ObjType::Map), id)) => id,
            _ => tx.put_object(&obj, key.as_str(), ObjType::Map)?,
        };
    }
    put_json(tx, &obj, last, value)
}

fn put_json(
    tx: &mut Transaction<'_>,
    obj: &ObjId,
    key: &str,
    value: &Json,
) -> Result<(), ferry::automerge::AutomergeError> {
    match obj_type(value) {
        Some(kind) => {
            let child = tx.put_object(obj, key, kind)?;
            fill(tx, &child, value)
        }
        None => tx.put(obj, key, scalar_of(value)),
    }
}

fn insert_json(
    tx: &mut Transaction<'_>,
    list: &ObjId,
    at: usize,
    value: &Json,
) -> Result<(), ferry::automerge::AutomergeError> {
    match obj_type(value) {
        Some(kind) => {
            let child = tx.insert_object(list, at, kind)?;
            fill(tx, &child, value)
        }
        None => tx.insert(list, at, scalar_of(value)),
    }
}

/// The Automerge object a JSON value becomes, if it is not a scalar.
fn obj_type(value: &Json) -> Option<ObjType> {
    match value {
        Json::Object(_) => Some(ObjType::Map),
        Json::Array(_) => Some(ObjType::List),
        _ => None,
    }
}

/// Puts the entries of a JSON object or array into the new object `obj`.
fn fill(
    tx: &mut Transaction<'_>,
    obj: &ObjId,
    value: &Json,
) -> Result<(), ferry::automerge::AutomergeError> {
    match value {
        Json::Object(map) => map.iter().try_for_each(|(k, v)| put_json(tx, obj, k, v)),
        Json::Array(items) => {
            (items.iter().enumerate()).try_for_each(|(i, item)| insert_json(tx, obj, i, item))
        }
        _ => Ok(()),
    }
}

fn scalar_of(value: &Json) -> ScalarValue {
    match value {
        Json::Bool(b) => ScalarValue::Boolean(*b),
        Json::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => ScalarValue::Int(i),
            (None, Some(u), _) => ScalarValue::Uint(u),
            (_, _, f) => ScalarValue::F64(f.unwrap_or(0.0)),
        },
        Json::String(s) => ScalarValue::Str(s.as_str().into()),
        _ => ScalarValue::Null,
    }
}

/// Copies the blob file at `from` to `out`, hashing it as it goes: the copy is kept only if its
/// bytes are those `hash` names. Returns the length.
pub(crate) fn copy_blob(
    from: &std::path::Path,
    hash: ferry::BlobHash,
    out: &std::path::Path,
) -> anyhow::Result<u64> {
    use std::io::{Read, Write};

    let mut source = std::fs::File::open(from)?;
    let mut dest = std::fs::File::create(out)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut len = 0u64;
    loop {
        let n = source.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        dest.write_all(&buf[..n])?;
        len += n as u64;
    }
    dest.sync_all()?;
    if hasher.finalize().as_bytes() != hash.as_bytes() {
        drop(dest);
        let _ = std::fs::remove_file(out);
        anyhow::bail!("blob {hash} is damaged on disk: nothing written");
    }
    Ok(len)
}
