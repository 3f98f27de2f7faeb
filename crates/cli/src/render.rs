//! How replies and events look on a terminal, and as JSON.

use std::fmt::Write as _;
use std::time::Duration;

use ferry::{ConnectionState, Event, Origin, wall_millis};
use serde_json::{Value as Json, json};

use crate::ops::{Request, connection_json};

/// The text (or JSON) a command prints for its reply, ending in a newline.
pub(crate) fn render(request: &Request, reply: &Json, json: bool) -> String {
    if json {
        return format!("{reply:#}\n");
    }
    let field = |name: &str| reply.get(name).map(plain).unwrap_or_default();
    match request {
        Request::Id => format!("{}\n", field("peer")),
        Request::PeerAdd { .. } => match reply.get("addr").and_then(Json::as_str) {
            Some(addr) => format!(
                "trusting {} at {addr} ({} access)\n",
                field("peer"),
                field("access")
            ),
            None => format!(
                "trusting {} ({} access); it dials in\n",
                field("peer"),
                field("access")
            ),
        },
        Request::PeerRemove { .. } => format!("forgot {}\n", field("peer")),
        Request::PeerList => {
            let mut out = String::new();
            for p in reply.as_array().into_iter().flatten() {
                let addresses: Vec<String> = p["addresses"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(plain)
                    .collect();
                let (peer, name) = (plain(&p["peer"]), plain(&p["name"]));
                let name = if name == peer { String::new() } else { name };
                let _ = writeln!(
                    out,
                    "{peer}  {:<12} {:<6} {:<24} {}",
                    or_dash(&name),
                    plain(&p["access"]),
                    or_dash(&addresses.join(",")),
                    connection_text(&p["connection"]),
                );
            }
            if out.is_empty() {
                out.push_str("no peers (add one with `ferry peer add ID ADDR`)\n");
            }
            out
        }
        Request::DocNew { .. } => format!("{}\n", field("doc")),
        Request::DocList => {
            let mut out = String::new();
            for d in reply.as_array().into_iter().flatten() {
                let _ = writeln!(
                    out,
                    "{}  {:<9} {} changes",
                    plain(&d["doc"]),
                    plain(&d["kind"]),
                    plain(&d["changes"])
                );
            }
            if out.is_empty() {
                out.push_str("no documents (create one with `ferry doc new`)\n");
            }
            out
        }
        Request::DocGet { .. }
        | Request::DocSet { .. }
        | Request::CounterAdd { .. }
        | Request::RegisterSet { .. } => value_text(&reply["value"]),
        Request::Status => status_text(reply),
        Request::SyncOnce { .. } => format!(
            "synced with {}: {} sent, {} received, {} pending\n",
            field("peer"),
            field("sent"),
            field("received"),
            field("pending")
        ),
        Request::Watch => String::new(),
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

fn status_text(reply: &Json) -> String {
    let mut out = format!("replica {}", plain(&reply["peer"]));
    match &reply["serving"] {
        Json::String(addr) => {
            let _ = writeln!(out, ", serving on {addr}");
        }
        _ => out.push_str(", offline (not serving)\n"),
    }
    let peers = reply["peers"].as_array().cloned().unwrap_or_default();
    if peers.is_empty() {
        out.push_str("no peers\n");
    }
    for p in peers {
        let (peer, name) = (plain(&p["peer"]), plain(&p["name"]));
        let _ = writeln!(
            out,
            "peer {peer}{}: {}",
            if name.is_empty() || name == peer {
                String::new()
            } else {
                format!(" ({name})")
            },
            connection_text(&p["connection"])
        );
        for d in p["docs"].as_array().into_iter().flatten() {
            let pending = d["pending"].as_u64().unwrap_or(0);
            let last = match d["last_sync_millis"].as_u64() {
                Some(at) => format!("last synced {}", ago(at)),
                None => "never synced".to_owned(),
            };
            let _ = writeln!(
                out,
                "  {}  {:>6} pending  {last}",
                plain(&d["doc"]),
                pending
            );
        }
    }
    out
}

fn connection_text(connection: &Json) -> String {
    match connection["state"].as_str() {
        Some("connected") => match connection["since_millis"].as_u64() {
            Some(at) => format!("connected since {}", ago(at)),
            None => "connected".to_owned(),
        },
        Some("connecting") => "connecting".to_owned(),
        Some("disconnected") => match connection["next_retry_millis"].as_u64() {
            Some(at) => format!("disconnected, retrying {}", from_now(at)),
            None => "disconnected".to_owned(),
        },
        _ => "-".to_owned(),
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

pub(crate) fn origin(origin: &Origin) -> String {
    match origin {
        Origin::Local => "local".to_owned(),
        Origin::Remote(peer) => format!("peer {peer}"),
    }
}

pub(crate) fn connection(state: &ConnectionState) -> String {
    connection_text(&connection_json(state))
}

/// An event as one JSON object.
pub(crate) fn event_json(event: &Event) -> Json {
    match event {
        Event::Changed { doc, origin: o } => {
            json!({ "event": "changed", "doc": doc.to_string(), "origin": origin(o) })
        }
        Event::Deleted { doc } => json!({ "event": "deleted", "doc": doc.to_string() }),
        Event::Connection { peer, state } => json!({
            "event": "connection",
            "peer": peer.to_string(),
            "connection": connection_json(state),
        }),
        Event::Synced { peer, doc } => {
            json!({ "event": "synced", "peer": peer.to_string(), "doc": doc.to_string() })
        }
        Event::Refused { peer, doc } => {
            json!({ "event": "refused", "peer": peer.to_string(), "doc": doc.to_string() })
        }
        Event::Lagged { missed } => json!({ "event": "lagged", "missed": missed }),
    }
}

/// An event as `watch` prints it.
pub(crate) fn event(event: &Json, json: bool) -> String {
    if json {
        return event.to_string();
    }
    let f = |name: &str| plain(&event[name]);
    match event["event"].as_str() {
        Some("changed") => format!("changed  {}  by {}", f("doc"), f("origin")),
        Some("deleted") => format!("deleted  {}", f("doc")),
        Some("connection") => format!(
            "peer     {}  {}",
            f("peer"),
            connection_text(&event["connection"])
        ),
        Some("synced") => format!("synced   {}  with {}", f("doc"), f("peer")),
        Some("refused") => format!("refused  {}  by {} (read-only)", f("doc"), f("peer")),
        Some("lagged") => format!("lagged   {} events missed: re-read", f("missed")),
        _ => event.to_string(),
    }
}
