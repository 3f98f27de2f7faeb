//! What the commands do to a replica, the same whether run here or by `ferry serve`.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use anyhow::{Context, bail};
use clap::ValueEnum;
use ferry::automerge::transaction::{Transactable, Transaction};
use ferry::automerge::{AutoSerde, ObjId, ObjType, ROOT, ReadDoc, ScalarValue, Value};
use ferry::{Access, ConnectionState, DocId, DocKind, PeerId, Replica};
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};

/// What a peer may do with this replica's documents.
#[derive(Clone, Copy, Debug, Deserialize, Eq, PartialEq, Serialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(crate) enum AccessArg {
    /// Receive documents; its changes are refused.
    Read,
    /// Receive documents and change them.
    Write,
}

impl From<AccessArg> for Access {
    fn from(access: AccessArg) -> Self {
        match access {
            AccessArg::Read => Access::Read,
            AccessArg::Write => Access::ReadWrite,
        }
    }
}

/// The kinds of document, as the command line names them.
#[derive(Clone, Copy, Debug, Deserialize, Eq, PartialEq, Serialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(crate) enum KindArg {
    /// JSON-like data and text (an Automerge document).
    Automerge,
    /// A grow-only counter.
    Gcounter,
    /// A counter that goes up and down.
    Pncounter,
    /// A last-writer-wins register.
    Lww,
    /// A multi-value register: concurrent writes are all kept.
    Mv,
}

/// One command, as the client sends it to `ferry serve` (a JSON line) or runs it itself.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Request {
    Id,
    PeerAdd {
        peer: PeerId,
        addr: Option<SocketAddr>,
        access: AccessArg,
        name: Option<String>,
    },
    PeerList,
    PeerRemove {
        peer: PeerId,
    },
    DocNew {
        kind: KindArg,
    },
    DocList,
    DocGet {
        doc: DocId,
    },
    DocSet {
        doc: DocId,
        path: Vec<String>,
        value: Json,
    },
    CounterAdd {
        doc: DocId,
        n: u64,
        down: bool,
    },
    RegisterSet {
        doc: DocId,
        value: String,
    },
    Status,
    SyncOnce {
        peer: PeerId,
    },
    /// Streams events until the client hangs up (served only by `ferry serve`).
    Watch,
}

/// How far a `sync --once` has come: of the documents with changes the peer lacked when it
/// began, how many it now holds whole; and how many documents the peer's changes updated here.
#[derive(Clone, Copy, Debug, Default, Deserialize, Eq, PartialEq, Serialize)]
pub(crate) struct Progress {
    pub(crate) to_send: u64,
    pub(crate) sent: u64,
    pub(crate) received: u64,
}

/// Syncs with `peer` once, telling `progress` whenever a document is sent or received. Replies
/// with the counts: documents sent (the peer lacked changes to them and now holds them),
/// documents received, and documents still pending for the peer.
pub(crate) async fn sync_once(
    replica: &Replica,
    peer: PeerId,
    mut progress: impl FnMut(Progress),
) -> anyhow::Result<Json> {
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
    Ok(json!({
        "peer": peer.to_string(),
        "sent": report.sent.len(),
        "received": report.received.len(),
        "pending": report.pending.len(),
    }))
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

/// Runs one request (other than `Watch`) on `replica`; the reply is JSON for the renderer.
pub(crate) async fn execute(replica: &Replica, request: &Request) -> anyhow::Result<Json> {
    Ok(match request {
        Request::Id => json!({ "peer": replica.peer_id().to_string() }),
        Request::PeerAdd {
            peer,
            addr,
            access,
            name,
        } => {
            if *peer == replica.peer_id() {
                bail!("{peer} is this replica's own id");
            }
            match addr {
                Some(addr) => replica.add_peer(*peer, *addr, (*access).into()).await?,
                None => replica.allow_peer(*peer, (*access).into()).await?,
            }
            if let Some(name) = name {
                let mut info = replica.store().peer(*peer)?.context("the peer vanished")?;
                info.name = name.clone();
                replica.store().put_peer(&info)?;
            }
            json!({ "peer": peer.to_string(), "addr": addr.map(|a| a.to_string()), "access": access })
        }
        Request::PeerList => {
            let status = replica.sync_status().await?;
            let peers: Vec<Json> = replica
                .peers()?
                .into_iter()
                .map(|p| {
                    let connection = status.peer(p.id).map(|s| connection_json(&s.connection));
                    json!({
                        "peer": p.id.to_string(),
                        "name": p.name,
                        "addresses": p.addresses.iter().map(ToString::to_string).collect::<Vec<_>>(),
                        "access": access_name(p.default_access),
                        "connection": connection,
                    })
                })
                .collect();
            Json::Array(peers)
        }
        Request::PeerRemove { peer } => {
            if !replica.remove_peer(*peer).await? {
                bail!("no peer {peer}");
            }
            json!({ "peer": peer.to_string() })
        }
        Request::DocNew { kind } => {
            let doc = match kind {
                KindArg::Automerge => replica.create_doc().await?.id(),
                KindArg::Gcounter => replica.create_counter().await?.id(),
                KindArg::Pncounter => replica.create_pn_counter().await?.id(),
                KindArg::Lww => replica.create_register().await?.id(),
                KindArg::Mv => replica.create_multi_register().await?.id(),
            };
            json!({ "doc": doc.to_string(), "kind": kind })
        }
        Request::DocList => {
            let docs: Vec<Json> = replica
                .documents()?
                .into_iter()
                .map(|d| json!({ "doc": d.id.to_string(), "kind": d.kind.to_string(), "changes": d.changes }))
                .collect();
            Json::Array(docs)
        }
        Request::DocGet { doc } => doc_json(replica, *doc)?,
        Request::DocSet { doc, path, value } => {
            if path.is_empty() || path.iter().any(String::is_empty) {
                bail!("malformed path (keys separated by dots, none empty)");
            }
            let handle = replica.doc(*doc)?;
            let (path, value) = (path.clone(), value.clone());
            handle.change(move |tx| set_path(tx, &path, &value)).await?;
            doc_json(replica, *doc)?
        }
        Request::CounterAdd { doc, n, down } => {
            let counter = replica.counter(*doc)?;
            if *down {
                counter.decrement(*n).await?;
            } else {
                counter.increment(*n).await?;
            }
            doc_json(replica, *doc)?
        }
        Request::RegisterSet { doc, value } => {
            match replica.store().info(*doc)?.kind {
                DocKind::MvRegister => replica.multi_register(*doc)?.set(value.clone()).await?,
                _ => replica.register(*doc)?.set(value.clone()).await?,
            }
            doc_json(replica, *doc)?
        }
        Request::Status => status_json(replica).await?,
        Request::SyncOnce { peer } => sync_once(replica, *peer, |_| {}).await?,
        Request::Watch => bail!("`watch` streams events; it is not a single request"),
    })
}

fn access_name(access: Access) -> &'static str {
    match access {
        Access::None => "none",
        Access::Read => "read",
        Access::ReadWrite => "write",
    }
}

pub(crate) fn connection_json(state: &ConnectionState) -> Json {
    match state {
        ConnectionState::Connecting => json!({ "state": "connecting" }),
        ConnectionState::Connected { since } => {
            json!({ "state": "connected", "since_millis": ferry::millis_of(*since) })
        }
        ConnectionState::Disconnected { next_retry } => json!({
            "state": "disconnected",
            "next_retry_millis": next_retry.map(ferry::millis_of),
        }),
    }
}

async fn status_json(replica: &Replica) -> anyhow::Result<Json> {
    let status = replica.sync_status().await?;
    let addr = replica.local_addr().await;
    let peers: Vec<Json> = status
        .peers
        .iter()
        .map(|p| {
            let docs: Vec<Json> = p
                .docs
                .iter()
                .map(|d| {
                    json!({
                        "doc": d.doc.to_string(),
                        "pending": d.pending,
                        "last_sync_millis": d.last_sync.map(ferry::millis_of),
                    })
                })
                .collect();
            json!({
                "peer": p.peer.to_string(),
                "name": p.name,
                "connection": connection_json(&p.connection),
                "docs": docs,
            })
        })
        .collect();
    Ok(json!({
        "peer": replica.peer_id().to_string(),
        "serving": addr.map(|a| a.to_string()),
        "peers": peers,
    }))
}

/// A register's bytes: the string if they are UTF-8, else `{"hex": ...}`.
fn bytes_json(bytes: &[u8]) -> Json {
    match std::str::from_utf8(bytes) {
        Ok(text) => Json::String(text.to_owned()),
        Err(_) => json!({ "hex": bytes.iter().map(|b| format!("{b:02x}")).collect::<String>() }),
    }
}

fn doc_json(replica: &Replica, doc: DocId) -> anyhow::Result<Json> {
    let kind = replica.store().info(doc).map_err(ferry::Error::from)?.kind;
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
    Ok(json!({ "doc": doc.to_string(), "kind": kind.to_string(), "value": value }))
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
