//! What the command line asks of a replica and what it answers, as serde types. The same types
//! run a command on a replica opened here and travel over the control socket of a running
//! `ferry serve`, one JSON line each way.

use std::net::SocketAddr;

use ferry::{
    Access, BlobHash, ConnectionState, DocId, DocKind, Event, Origin, PeerId, SpaceId, millis_of,
};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

/// A command with one reply.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Command {
    Id,
    PeerAdd {
        peer: PeerId,
        addr: Option<SocketAddr>,
        access: Access,
        name: Option<String>,
    },
    PeerList,
    PeerRemove {
        peer: PeerId,
    },
    SpaceNew {
        name: String,
    },
    SpaceList,
    SpaceGrant {
        space: SpaceId,
        peer: PeerId,
        access: Access,
    },
    DocNew {
        kind: DocKind,
        space: SpaceId,
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
    BlobAdd {
        path: std::path::PathBuf,
    },
    BlobList,
    BlobLocate {
        #[serde(with = "text")]
        hash: BlobHash,
    },
    BlobGc {
        grace_secs: u64,
    },
    SpaceBlobs {
        space: SpaceId,
        on_demand: bool,
    },
}

/// What a client asks of `ferry serve`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Request {
    /// One command, one reply.
    Run(Command),
    /// Sync with a peer: progress lines, then the reply.
    SyncOnce { peer: PeerId },
    /// Fetch a blob from the peers unless it is here: progress lines, then the reply.
    FetchBlob {
        #[serde(with = "text")]
        hash: BlobHash,
    },
    /// Event lines until the client hangs up.
    Watch,
}

/// One line from `ferry serve`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Line {
    /// How far a `sync --once` has come; the reply follows.
    Progress(Progress),
    /// How much of a blob being fetched is here; the reply follows.
    Fetching(Fetching),
    /// An event, for `watch`.
    Event(WatchEvent),
    /// The command's reply.
    Ok(Reply),
    /// The command failed: the error and its causes, on one line.
    Error(String),
}

/// How far a `sync --once` has come: of the documents with changes the peer lacked when it
/// began, how many it now holds whole; and how many documents the peer's changes updated here.
#[derive(Clone, Copy, Debug, Default, Deserialize, Eq, PartialEq, Serialize)]
pub(crate) struct Progress {
    pub(crate) to_send: u64,
    pub(crate) sent: u64,
    pub(crate) received: u64,
}

/// How much of a blob being fetched is here, verified.
#[derive(Clone, Copy, Debug, Default, Deserialize, Eq, PartialEq, Serialize)]
pub(crate) struct Fetching {
    pub(crate) received: u64,
    pub(crate) len: u64,
}

/// A command's reply. `--json` prints the variant's content alone.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Reply {
    Id(PeerRef),
    PeerAdded(PeerAdded),
    Peers(Vec<PeerEntry>),
    PeerRemoved(PeerRef),
    SpaceCreated(SpaceRef),
    Spaces(Vec<SpaceEntry>),
    Granted(Grant),
    DocCreated(DocCreated),
    Docs(Vec<DocEntry>),
    Doc(DocValue),
    Status(Status),
    Synced(Synced),
    Blob(BlobEntry),
    Blobs(Vec<BlobEntry>),
    BlobAt(BlobAt),
    BlobsRemoved(Vec<BlobEntry>),
    BlobPolicy(BlobPolicyEntry),
}

/// A space's blob fetch policy here.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub(crate) struct BlobPolicyEntry {
    #[serde(with = "text")]
    pub(crate) space: SpaceId,
    /// `eager` or `on-demand`.
    pub(crate) policy: String,
}

/// A blob: its hash and length.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub(crate) struct BlobEntry {
    #[serde(with = "text")]
    pub(crate) hash: BlobHash,
    pub(crate) len: u64,
}

/// Where a blob's file is, for `blob get` to copy it from.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub(crate) struct BlobAt {
    #[serde(with = "text")]
    pub(crate) hash: BlobHash,
    pub(crate) path: std::path::PathBuf,
}

impl Reply {
    /// The reply as `--json` prints it: the content, without the variant's name.
    pub(crate) fn to_json(&self) -> Json {
        let value = match self {
            Reply::Id(r) | Reply::PeerRemoved(r) => serde_json::to_value(r),
            Reply::PeerAdded(r) => serde_json::to_value(r),
            Reply::Peers(r) => serde_json::to_value(r),
            Reply::SpaceCreated(r) => serde_json::to_value(r),
            Reply::Spaces(r) => serde_json::to_value(r),
            Reply::Granted(r) => serde_json::to_value(r),
            Reply::DocCreated(r) => serde_json::to_value(r),
            Reply::Docs(r) => serde_json::to_value(r),
            Reply::Doc(r) => serde_json::to_value(r),
            Reply::Status(r) => serde_json::to_value(r),
            Reply::Synced(r) => serde_json::to_value(r),
            Reply::Blob(r) => serde_json::to_value(r),
            Reply::Blobs(r) => serde_json::to_value(r),
            Reply::BlobAt(r) => serde_json::to_value(r),
            Reply::BlobsRemoved(r) => serde_json::to_value(r),
            Reply::BlobPolicy(r) => serde_json::to_value(r),
        };
        value.expect("replies of ids, numbers and JSON values always serialize")
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub(crate) struct PeerRef {
    #[serde(with = "text")]
    pub(crate) peer: PeerId,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub(crate) struct PeerAdded {
    #[serde(with = "text")]
    pub(crate) peer: PeerId,
    pub(crate) addr: Option<SocketAddr>,
    #[serde(with = "text")]
    pub(crate) access: Access,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub(crate) struct PeerEntry {
    #[serde(with = "text")]
    pub(crate) peer: PeerId,
    pub(crate) name: String,
    pub(crate) addresses: Vec<SocketAddr>,
    /// Its grants, by space.
    pub(crate) spaces: Vec<SpaceGrant>,
    pub(crate) connection: Option<Connection>,
}

/// One grant of a peer's, as a peer listing shows it.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub(crate) struct SpaceGrant {
    #[serde(with = "text")]
    pub(crate) space: SpaceId,
    #[serde(with = "text")]
    pub(crate) access: Access,
}

/// One grant of a space's, as a space listing shows it.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub(crate) struct PeerGrant {
    #[serde(with = "text")]
    pub(crate) peer: PeerId,
    #[serde(with = "text")]
    pub(crate) access: Access,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub(crate) struct SpaceRef {
    #[serde(with = "text")]
    pub(crate) space: SpaceId,
    pub(crate) name: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub(crate) struct SpaceEntry {
    #[serde(with = "text")]
    pub(crate) space: SpaceId,
    pub(crate) name: Option<String>,
    pub(crate) docs: u64,
    pub(crate) grants: Vec<PeerGrant>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub(crate) struct Grant {
    #[serde(with = "text")]
    pub(crate) space: SpaceId,
    #[serde(with = "text")]
    pub(crate) peer: PeerId,
    #[serde(with = "text")]
    pub(crate) access: Access,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub(crate) struct DocCreated {
    #[serde(with = "text")]
    pub(crate) doc: DocId,
    #[serde(with = "text")]
    pub(crate) kind: DocKind,
    #[serde(with = "text")]
    pub(crate) space: SpaceId,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub(crate) struct DocEntry {
    #[serde(with = "text")]
    pub(crate) doc: DocId,
    #[serde(with = "text")]
    pub(crate) kind: DocKind,
    #[serde(with = "text")]
    pub(crate) space: SpaceId,
    pub(crate) changes: u64,
}

/// A document's value: Automerge as JSON, a counter's number, a register's value (a string,
/// or `{"hex": ...}` for bytes that are not UTF-8), a multi-value register's values.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub(crate) struct DocValue {
    #[serde(with = "text")]
    pub(crate) doc: DocId,
    #[serde(with = "text")]
    pub(crate) kind: DocKind,
    pub(crate) value: Json,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub(crate) struct Status {
    #[serde(with = "text")]
    pub(crate) peer: PeerId,
    pub(crate) serving: Option<SocketAddr>,
    pub(crate) peers: Vec<PeerStatus>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub(crate) struct PeerStatus {
    #[serde(with = "text")]
    pub(crate) peer: PeerId,
    pub(crate) name: String,
    pub(crate) connection: Connection,
    /// When a sync last compared every document the peer may read.
    pub(crate) last_sync_millis: Option<u64>,
    /// The documents with changes the peer has not acknowledged.
    pub(crate) docs: Vec<DocStatus>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub(crate) struct DocStatus {
    #[serde(with = "text")]
    pub(crate) doc: DocId,
    pub(crate) pending: u64,
    pub(crate) last_sync_millis: Option<u64>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub(crate) struct Synced {
    #[serde(with = "text")]
    pub(crate) peer: PeerId,
    pub(crate) sent: usize,
    pub(crate) received: usize,
    pub(crate) pending: usize,
}

/// A peer's connection, with times in milliseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, Deserialize, Eq, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub(crate) enum Connection {
    Connecting,
    Connected { since_millis: u64 },
    Disconnected { next_retry_millis: Option<u64> },
}

impl From<&ConnectionState> for Connection {
    fn from(state: &ConnectionState) -> Self {
        match state {
            ConnectionState::Connecting => Connection::Connecting,
            ConnectionState::Connected { since } => Connection::Connected {
                since_millis: millis_of(*since),
            },
            ConnectionState::Disconnected { next_retry } => Connection::Disconnected {
                next_retry_millis: next_retry.map(millis_of),
            },
        }
    }
}

/// An event, as `watch` streams it.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub(crate) enum WatchEvent {
    Changed {
        #[serde(with = "text")]
        doc: DocId,
        origin: String,
    },
    Deleted {
        #[serde(with = "text")]
        doc: DocId,
    },
    Connection {
        #[serde(with = "text")]
        peer: PeerId,
        connection: Connection,
    },
    Synced {
        #[serde(with = "text")]
        peer: PeerId,
        #[serde(with = "text")]
        doc: DocId,
    },
    Refused {
        #[serde(with = "text")]
        peer: PeerId,
        #[serde(with = "text")]
        doc: DocId,
    },
    Blob {
        #[serde(with = "text")]
        peer: PeerId,
        #[serde(with = "text")]
        hash: BlobHash,
        received: u64,
        len: u64,
    },
    Lagged {
        missed: u64,
    },
}

impl From<&Event> for WatchEvent {
    fn from(event: &Event) -> Self {
        match event {
            Event::Changed { doc, origin } => WatchEvent::Changed {
                doc: *doc,
                origin: origin_text(origin),
            },
            Event::Deleted { doc } => WatchEvent::Deleted { doc: *doc },
            Event::Connection { peer, state } => WatchEvent::Connection {
                peer: *peer,
                connection: state.into(),
            },
            Event::Synced { peer, doc } => WatchEvent::Synced {
                peer: *peer,
                doc: *doc,
            },
            Event::Refused { peer, doc } => WatchEvent::Refused {
                peer: *peer,
                doc: *doc,
            },
            Event::BlobProgress {
                peer,
                hash,
                received,
                len,
            } => WatchEvent::Blob {
                peer: *peer,
                hash: *hash,
                received: *received,
                len: *len,
            },
            Event::BlobFetched { peer, hash, len } => WatchEvent::Blob {
                peer: *peer,
                hash: *hash,
                received: *len,
                len: *len,
            },
            Event::Lagged { missed } => WatchEvent::Lagged { missed: *missed },
        }
    }
}

/// Where a change came from, as people read it.
pub(crate) fn origin_text(origin: &Origin) -> String {
    match origin {
        Origin::Local => "local".to_owned(),
        Origin::Remote(peer) => format!("peer {peer}"),
    }
}

/// Ids, kinds and access levels by their text forms, as people and scripts read them.
mod text {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<T: Display, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(value)
    }

    pub(crate) fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_survives_the_socket() {
        let peer = PeerId::from_bytes([3; 16]);
        let doc = DocId::from_bytes([4; 16]);
        let lines = vec![
            Line::Progress(Progress {
                to_send: 3,
                sent: 1,
                received: 2,
            }),
            Line::Event(WatchEvent::Connection {
                peer,
                connection: Connection::Disconnected {
                    next_retry_millis: Some(9),
                },
            }),
            Line::Ok(Reply::PeerAdded(PeerAdded {
                peer,
                addr: Some("127.0.0.1:4433".parse().unwrap()),
                access: Access::Read,
            })),
            Line::Ok(Reply::Doc(DocValue {
                doc,
                kind: DocKind::MvRegister,
                value: serde_json::json!(["a", {"hex": "ff"}]),
            })),
            Line::Error("no document".to_owned()),
        ];
        for line in lines {
            let text = serde_json::to_string(&line).unwrap();
            let back: Line = serde_json::from_str(&text).unwrap();
            assert_eq!(serde_json::to_string(&back).unwrap(), text);
        }
    }

    #[test]
    fn json_replies_name_ids_kinds_and_access_by_their_text() {
        let reply = Reply::PeerAdded(PeerAdded {
            peer: PeerId::from_bytes([3; 16]),
            addr: None,
            access: Access::ReadWrite,
        });
        let json = reply.to_json();
        assert_eq!(json["access"], "write");
        assert_eq!(json["peer"], PeerId::from_bytes([3; 16]).to_string());
        assert_eq!(json["addr"], Json::Null);
    }
}
