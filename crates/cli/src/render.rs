//! How replies and events look on a terminal, and as JSON.

use std::fmt::Write as _;
use std::time::Duration;

use ferry::{ConnectionState, wall_millis};
use serde_json::Value as Json;

use crate::protocol::{Connection, Reply, Status, WatchEvent};

/// The text (or JSON) a command prints for its reply, ending in a newline.
pub(crate) fn render(reply: &Reply, json: bool) -> String {
    if json {
        return format!("{:#}\n", reply.to_json());
    }
    match reply {
        Reply::Id(r) => format!("{}\n", r.peer),
        Reply::Blob(b) => format!("{}\n", b.hash),
        Reply::Blobs(blobs) => blobs
            .iter()
            .map(|b| format!("{}  {:>12} bytes\n", b.hash, b.len))
            .collect(),
        Reply::BlobAt(b) => format!("{}\n", b.path.display()),
        Reply::BlobsRemoved(blobs) if blobs.is_empty() => "no blob to remove\n".to_owned(),
        Reply::BlobsRemoved(blobs) => blobs
            .iter()
            .map(|b| format!("removed {}  {:>12} bytes\n", b.hash, b.len))
            .collect(),
        Reply::BlobPolicy(p) => format!("space {}: blobs fetched {}\n", p.space, p.policy),
        Reply::PeerAdded(r) => match r.addr {
            Some(addr) => format!("trusting {} at {addr} ({} access)\n", r.peer, r.access),
            None => format!("trusting {} ({} access); it dials in\n", r.peer, r.access),
        },
        Reply::PeerRemoved(r) => format!("forgot {}\n", r.peer),
        Reply::SpaceCreated(r) => format!("{}\n", r.space),
        Reply::Spaces(spaces) => {
            let mut out = String::new();
            for s in spaces {
                let grants: Vec<String> = s
                    .grants
                    .iter()
                    .map(|g| format!("{}:{}", g.peer, g.access))
                    .collect();
                let name = match (&s.name, s.space.is_default()) {
                    (Some(name), _) => name.as_str(),
                    (None, true) => "(default)",
                    (None, false) => "",
                };
                let _ = writeln!(
                    out,
                    "{}  {:<12} {:>6} docs  {}",
                    s.space,
                    or_dash(name),
                    s.docs,
                    or_dash(&grants.join(",")),
                );
            }
            out
        }
        Reply::Granted(r) => match r.access {
            ferry::Access::None => format!("{} may no longer see space {}\n", r.peer, r.space),
            access => format!("{} has {access} access to space {}\n", r.peer, r.space),
        },
        Reply::Peers(peers) => {
            let mut out = String::new();
            for p in peers {
                let addresses: Vec<String> = p.addresses.iter().map(ToString::to_string).collect();
                let peer = p.peer.to_string();
                let name = if p.name == peer { "" } else { &p.name };
                let connection = p
                    .connection
                    .as_ref()
                    .map_or("-".to_owned(), connection_text);
                let spaces: Vec<String> = p
                    .spaces
                    .iter()
                    .map(|g| match g.space.is_default() {
                        true => format!("default:{}", g.access),
                        false => format!("{}:{}", g.space, g.access),
                    })
                    .collect();
                let _ = writeln!(
                    out,
                    "{peer}  {:<12} {:<24} {connection}  spaces {}",
                    or_dash(name),
                    or_dash(&addresses.join(",")),
                    or_dash(&spaces.join(",")),
                );
            }
            if out.is_empty() {
                out.push_str("no peers (add one with `ferry peer add ID ADDR`)\n");
            }
            out
        }
        Reply::DocCreated(r) => format!("{}\n", r.doc),
        Reply::Docs(docs) => {
            let mut out = String::new();
            for d in docs {
                let _ = writeln!(out, "{}  {:<9} {} changes", d.doc, d.kind, d.changes);
            }
            if out.is_empty() {
                out.push_str("no documents (create one with `ferry doc new`)\n");
            }
            out
        }
        Reply::Doc(r) => value_text(&r.value),
        Reply::Status(status) => status_text(status),
        Reply::Synced(r) => format!(
            "synced with {}: {} sent, {} received, {} pending\n",
            r.peer, r.sent, r.received, r.pending
        ),
    }
}

/// A JSON value as people read it: strings without quotes.
fn plain(value: &Json) -> String {
    match value {
        Json::String(s) => s.clone(),
        Json::Null => String::new(),
        other => other.to_string(),
    }
}

fn or_dash(text: &str) -> &str {
    if text.is_empty() { "-" } else { text }
}

/// A document's value: scalars plain, structures as indented JSON.
fn value_text(value: &Json) -> String {
    match value {
        Json::Object(_) | Json::Array(_) => format!("{value:#}\n"),
        Json::Null => "(not set)\n".to_owned(),
        other => format!("{}\n", plain(other)),
    }
}

fn status_text(status: &Status) -> String {
    let mut out = format!("replica {}", status.peer);
    match status.serving {
        Some(addr) => {
            let _ = writeln!(out, ", serving on {addr}");
        }
        None => out.push_str(", offline (not serving)\n"),
    }
    if status.peers.is_empty() {
        out.push_str("no peers\n");
    }
    for p in &status.peers {
        let peer = p.peer.to_string();
        let _ = writeln!(
            out,
            "peer {peer}{}: {}",
            if p.name.is_empty() || p.name == peer {
                String::new()
            } else {
                format!(" ({})", p.name)
            },
            connection_text(&p.connection)
        );
        let last = match p.last_sync_millis {
            Some(at) => format!("last synced {}", ago(at)),
            None => "never synced".to_owned(),
        };
        if p.docs.is_empty() {
            let _ = writeln!(out, "  in sync, {last}");
        } else {
            let _ = writeln!(out, "  {} documents waiting, {last}", p.docs.len());
        }
        for d in &p.docs {
            let last = match d.last_sync_millis {
                Some(at) => format!("last synced {}", ago(at)),
                None => "never synced".to_owned(),
            };
            let _ = writeln!(out, "  {}  {:>6} pending  {last}", d.doc, d.pending);
        }
    }
    out
}

fn connection_text(connection: &Connection) -> String {
    match connection {
        Connection::Connected { since_millis } => format!("connected since {}", ago(*since_millis)),
        Connection::Connecting => "connecting".to_owned(),
        Connection::Disconnected {
            next_retry_millis: Some(at),
        } => format!("disconnected, retrying {}", from_now(*at)),
        Connection::Disconnected {
            next_retry_millis: None,
        } => "disconnected".to_owned(),
    }
}

fn ago(at: u64) -> String {
    format!(
        "{} ago",
        human(Duration::from_millis(wall_millis().saturating_sub(at)))
    )
}

fn from_now(at: u64) -> String {
    let wait = at.saturating_sub(wall_millis());
    if wait == 0 {
        "now".to_owned()
    } else {
        format!("in {}", human(Duration::from_millis(wait)))
    }
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{} ms", d.as_millis()),
        1..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86400 => format!("{} h", s / 3600),
        _ => format!("{} days", s / 86400),
    }
}

/// A connection state as the server's log shows it.
pub(crate) fn connection(state: &ConnectionState) -> String {
    connection_text(&state.into())
}

/// An event as `watch` prints it: a line of text, or one JSON object.
pub(crate) fn event(event: &WatchEvent, json: bool) -> String {
    if json {
        // Through a JSON value, so keys come out sorted as before.
        return serde_json::to_value(event)
            .expect("an event of ids and numbers always serializes")
            .to_string();
    }
    match event {
        WatchEvent::Changed { doc, origin } => format!("changed  {doc}  by {origin}"),
        WatchEvent::Deleted { doc } => format!("deleted  {doc}"),
        WatchEvent::Connection { peer, connection } => {
            format!("peer     {peer}  {}", connection_text(connection))
        }
        WatchEvent::Synced { peer, doc } => format!("synced   {doc}  with {peer}"),
        WatchEvent::Refused { peer, doc } => format!("refused  {doc}  by {peer} (read-only)"),
        WatchEvent::Blob {
            peer,
            hash,
            received,
            len,
        } if received == len => format!("blob     {hash}  {len} bytes here, from {peer}"),
        WatchEvent::Blob {
            peer,
            hash,
            received,
            len,
        } => format!("blob     {hash}  {received}/{len} bytes from {peer}"),
        WatchEvent::Lagged { missed } => format!("lagged   {missed} events missed: re-read"),
    }
}
