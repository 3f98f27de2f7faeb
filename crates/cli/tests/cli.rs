//! The `ferry` binary end to end: real processes, real QUIC on loopback, temporary directories.

#![allow(clippy::unwrap_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{ferry, ok};
use tempfile::TempDir;

/// Runs a command that must fail; returns its stderr, which must be one line.
fn fails(dir: &Path, args: &[&str]) -> String {
    let out = ferry(dir, args);
    assert!(!out.status.success(), "ferry {args:?} succeeded");
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "ferry {args:?} printed {stderr:?}");
    assert!(lines[0].starts_with("ferry: "), "{stderr:?}");
    lines[0].to_owned()
}

fn json(dir: &Path, args: &[&str]) -> Value {
    serde_json::from_str(&ok(dir, args)).unwrap()
}

/// A loopback UDP port nothing listens on right now.
fn free_port() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A `ferry serve` process, killed when dropped.
struct Serving {
    child: Child,
    /// Where it listens: a port the system picked, so no other test can take it first.
    addr: SocketAddr,
}

impl Serving {
    fn start(dir: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .arg("--dir")
            .arg(dir)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // It prints its id and address once it listens (and its control socket is up).
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let id = lines.next().unwrap().unwrap();
        assert!(id.starts_with("peer id "), "{id}");
        let line = lines.next().unwrap().unwrap();
        let addr = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("{line}"))
            .parse()
            .unwrap();
        Self { child, addr }
    }

    /// Stops it as Ctrl-C would, and waits for it to exit.
    fn stop(mut self) {
        Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "serve exited with {status}");
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Two initialized replicas that trust each other; their addresses come once they serve.
fn pair() -> (TempDir, TempDir) {
    let (a, b) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let id_a = ok(a.path(), &["init"]);
    let id_b = ok(b.path(), &["init"]);
    assert_eq!(ok(a.path(), &["id"]), id_a);
    ok(a.path(), &["peer", "add", &id_b]);
    ok(b.path(), &["peer", "add", &id_a, "--name", "a"]);
    (a, b)
}

/// `dir` dials the replica in `peer_dir` at the address it serves on.
fn dials(dir: &Path, peer_dir: &Path, serving: &Serving) {
    let id = ok(peer_dir, &["id"]);
    ok(dir, &["peer", "add", &id, &serving.addr.to_string()]);
}

#[test]
fn two_serving_peers_see_each_others_writes() {
    let (a, b) = pair();
    let serving_a = Serving::start(a.path());
    let serving_b = Serving::start(b.path());
    dials(a.path(), b.path(), &serving_b);
    dials(b.path(), a.path(), &serving_a);

    // An Automerge document written through a, read back through b.
    let doc = ok(a.path(), &["doc", "new"]);
    ok(a.path(), &["doc", "set", &doc, "title", "Minutes"]);
    ok(a.path(), &["doc", "set", &doc, "attendees", "3"]);
    ok(a.path(), &["doc", "set", &doc, "place.city", "Lyon"]);
    eventually("the document on b", || {
        let out = ferry(b.path(), &["doc", "get", &doc, "--json"]);
        out.status.success()
            && serde_json::from_slice::<Value>(&out.stdout).unwrap()["value"]
                == serde_json::json!({"title": "Minutes", "attendees": 3, "place": {"city": "Lyon"}})
    });

    // A counter and a register written through b, read back through a.
    let counter = ok(b.path(), &["doc", "new", "--kind", "pncounter"]);
    ok(b.path(), &["counter", "inc", &counter, "5"]);
    ok(b.path(), &["counter", "dec", &counter]);
    let register = ok(b.path(), &["doc", "new", "--kind", "lww"]);
    ok(b.path(), &["register", "set", &register, "blue"]);
    eventually("the counter and register on a", || {
        ferry(a.path(), &["doc", "get", &counter]).stdout == b"4\n"
            && ferry(a.path(), &["doc", "get", &register]).stdout == b"blue\n"
    });

    // Both sides see the other connected and nothing pending.
    eventually("nothing pending on a", || {
        let status = json(a.path(), &["status", "--json"]);
        let peer = &status["peers"][0];
        peer["connection"]["state"] == "connected"
            && peer["docs"].as_array().unwrap().is_empty()
            && peer["last_sync_millis"].is_u64()
    });
    // A one-off sync through the running server (its progress comes over the socket) finds
    // nothing left to do.
    let id_b = ok(b.path(), &["id"]);
    let out = ok(a.path(), &["sync", "--once", &id_b]);
    assert!(out.ends_with(": 0 documents sent, 0 received"), "{out}");
    let peers = json(b.path(), &["peer", "list", "--json"]);
    assert_eq!(peers[0]["name"], "a");
    assert_eq!(
        peers[0]["spaces"],
        serde_json::json!([{"space": DEFAULT_SPACE, "access": "write"}])
    );

    serving_a.stop();
    serving_b.stop();
    // Stopped cleanly: the replicas open again, with everything in them.
    assert_eq!(ok(a.path(), &["doc", "get", &counter]), "4");
    assert_eq!(ok(b.path(), &["doc", "list"]).lines().count(), 3);
}

#[test]
fn an_offline_replica_syncs_once_with_a_serving_one() {
    let (a, b) = pair();
    // Written while nothing serves: the command opens the replica itself.
    let doc = ok(a.path(), &["doc", "new", "--kind", "gcounter"]);
    ok(a.path(), &["counter", "inc", &doc, "2"]);
    let notes = ok(b.path(), &["doc", "new"]);
    ok(
        b.path(),
        &["doc", "set", &notes, "todo", r#"["milk", "eggs"]"#],
    );
    let pending = json(a.path(), &["status", "--json"]);
    assert_eq!(pending["peers"][0]["docs"][0]["pending"], 1);

    let serving_b = Serving::start(b.path());
    dials(a.path(), b.path(), &serving_b);
    let id_b = ok(b.path(), &["id"]);
    let out = ok(a.path(), &["sync", "--once", &id_b]);
    assert!(out.starts_with(&format!("synced with {id_b} in ")), "{out}");
    // Both ways, in one sync: a's counter out, b's notes in.
    assert!(out.ends_with(": 1 document sent, 1 received"), "{out}");
    assert_eq!(ok(b.path(), &["doc", "get", &doc]), "2");
    let got = json(a.path(), &["doc", "get", &notes, "--json"]);
    assert_eq!(got["value"], serde_json::json!({"todo": ["milk", "eggs"]}));
    let status = json(a.path(), &["status", "--json"]);
    assert_eq!(
        status["peers"][0]["docs"],
        serde_json::json!([]),
        "{status}"
    );
    serving_b.stop();
}

#[test]
fn bad_input_gets_one_line_and_changes_nothing() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    // No replica yet.
    assert!(fails(d, &["doc", "list"]).contains("no replica in"));
    ok(d, &["init"]);
    let doc = ok(d, &["doc", "new"]);
    ok(d, &["doc", "set", &doc, "title", "kept"]);
    let before = ok(d, &["doc", "get", &doc, "--json"]);

    // An unknown document.
    let unknown = "aaaaaaaaaaaaaaaaaaaaaaaaaa";
    assert!(fails(d, &["doc", "get", unknown]).contains("no document"));
    assert!(fails(d, &["doc", "set", unknown, "x", "1"]).contains("no document"));
    assert!(fails(d, &["counter", "inc", unknown]).contains("no document"));
    assert!(fails(d, &["doc", "get", "not-an-id"]).contains("malformed document id"));
    // The wrong kind, or a malformed path.
    assert!(fails(d, &["counter", "inc", &doc]).contains("not"));
    assert!(fails(d, &["doc", "set", &doc, "a..b", "1"]).contains("malformed path"));
    assert_eq!(ok(d, &["doc", "get", &doc, "--json"]), before);
    assert_eq!(ok(d, &["doc", "list"]).lines().count(), 1);

    // A malformed peer id or address: the peer table is untouched.
    assert!(fails(d, &["peer", "add", "bob", "127.0.0.1:4433"]).contains("malformed peer id"));
    assert!(fails(d, &["peer", "add", unknown, "nowhere"]).contains("malformed address"));
    assert_eq!(json(d, &["peer", "list", "--json"]), serde_json::json!([]));
    assert!(fails(d, &["sync", "--once", unknown]).contains("no address"));

    // An unreachable address.
    let nobody = free_port();
    ok(d, &["peer", "add", unknown, &nobody.to_string()]);
    let error = fails(d, &["sync", "--once", unknown]);
    assert!(error.contains("no answer"), "{error}");
    assert_eq!(ok(d, &["doc", "get", &doc, "--json"]), before);

    // `watch` needs a server.
    assert!(fails(d, &["watch"]).contains("ferry serve"));

    // A peer trusted without an address dials in (a relay trusting a phone).
    let phone_dir = TempDir::new().unwrap();
    let phone = ok(phone_dir.path(), &["init"]);
    assert!(ok(d, &["peer", "add", &phone, "--access", "read"]).contains("dials in"));
    let peers = json(d, &["peer", "list", "--json"]);
    let listed = peers
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["peer"] == phone.as_str())
        .unwrap();
    assert_eq!(
        listed["spaces"],
        serde_json::json!([{"space": DEFAULT_SPACE, "access": "read"}])
    );
    assert_eq!(listed["addresses"], serde_json::json!([]));
}

/// The default space's id in text.
const DEFAULT_SPACE: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaa";

#[test]
fn spaces_are_created_granted_listed_and_revoked() {
    let relay = TempDir::new().unwrap();
    let d = relay.path();
    ok(d, &["init"]);
    let phone_dir = TempDir::new().unwrap();
    let phone = ok(phone_dir.path(), &["init"]);

    let alice = ok(d, &["space", "new", "alice"]);
    assert_eq!(alice.len(), 26, "{alice}");
    // A peer is known before it is granted anything; `none` makes it known with no access.
    assert!(fails(d, &["space", "grant", &alice, &phone]).contains("no peer"));
    ok(d, &["peer", "add", &phone, "--access", "none"]);
    assert!(ok(d, &["space", "grant", &alice, &phone, "--access", "read"]).contains("read access"));
    let doc = ok(d, &["doc", "new", "--space", &alice, "--kind", "gcounter"]);
    ok(d, &["doc", "new"]); // the default space

    let spaces = json(d, &["space", "list", "--json"]);
    let by_id = |id: &str| {
        spaces
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["space"] == id)
            .cloned()
            .unwrap()
    };
    assert_eq!(by_id(&alice)["name"], "alice");
    assert_eq!(by_id(&alice)["docs"], 1);
    assert_eq!(
        by_id(&alice)["grants"],
        serde_json::json!([{"peer": phone, "access": "read"}])
    );
    assert_eq!(by_id(DEFAULT_SPACE)["docs"], 1);
    let docs = json(d, &["doc", "list", "--json"]);
    let listed = docs
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["doc"] == doc.as_str())
        .cloned()
        .unwrap();
    assert_eq!(listed["space"], alice.as_str());

    assert!(ok(d, &["space", "revoke", &alice, &phone]).contains("no longer"));
    let spaces = json(d, &["space", "list", "--json"]);
    let alice_now = spaces
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["space"] == alice.as_str())
        .cloned()
        .unwrap();
    assert_eq!(alice_now["grants"], serde_json::json!([]));
    assert!(fails(d, &["space", "grant", "not-a-space", &phone]).contains("malformed space id"));
}

#[test]
fn watch_streams_changes_from_a_peer() {
    let (a, b) = pair();
    let serving_a = Serving::start(a.path());
    let serving_b = Serving::start(b.path());
    dials(a.path(), b.path(), &serving_b);
    dials(b.path(), a.path(), &serving_a);
    let mut watch = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .arg("--dir")
        .arg(b.path())
        .args(["watch", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // The watcher is subscribed once it reports a change made here.
    let probe = ok(b.path(), &["doc", "new", "--kind", "gcounter"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen_probe = false;
    let mut doc = String::new();
    let mut found = false;
    while Instant::now() < deadline && !found {
        let Ok(line) = rx.recv_timeout(Duration::from_millis(300)) else {
            if !seen_probe {
                ok(b.path(), &["counter", "inc", &probe]); // not subscribed yet: again
            }
            continue;
        };
        let event: Value = serde_json::from_str(&line).unwrap();
        if !seen_probe && event["doc"] == probe.as_str() {
            seen_probe = true;
            doc = ok(a.path(), &["doc", "new"]);
            ok(a.path(), &["doc", "set", &doc, "hello", "world"]);
        } else if seen_probe
            && event["event"] == "changed"
            && event["doc"] == doc.as_str()
            && event["origin"].as_str().unwrap().starts_with("peer ")
        {
            found = true;
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(found, "no change event from the peer");
}

/// Sends `request` (bytes, a newline added) on `dir`'s control socket and returns the first
/// line of the answer.
#[cfg(unix)]
fn raw_request(dir: &Path, request: Vec<u8>) -> String {
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    let stream = UnixStream::connect(dir.join("ferry.sock")).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    // Written on its own thread: the server stops reading an oversized line at its limit.
    let sending = std::thread::spawn(move || {
        let _ = writer.write_all(&request);
        let _ = writer.write_all(b"\n");
    });
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line).unwrap();
    drop(stream);
    let _ = sending.join();
    line
}

#[cfg(unix)]
#[test]
fn the_control_socket_is_private_and_outlives_bad_clients() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};

    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let id = ok(d, &["init"]);
    let serving = Serving::start(d);
    let socket = std::fs::metadata(d.join("ferry.sock")).unwrap();
    assert!(socket.file_type().is_socket());
    assert_eq!(socket.permissions().mode() & 0o777, 0o600);

    // A second server on the same replica is refused in one line.
    assert!(fails(d, &["serve", "--listen", &free_port().to_string()]).contains("already running"));

    // Garbage, and a line over the 16 MiB limit: one error line each, and it keeps answering.
    for request in [b"not json".to_vec(), vec![b'x'; 17 << 20]] {
        let answer: Value = serde_json::from_str(&raw_request(d, request)).unwrap();
        assert!(
            answer["error"]
                .as_str()
                .unwrap()
                .starts_with("malformed request"),
            "{answer}"
        );
        assert_eq!(ok(d, &["id"]), id);
    }

    // A client that hangs up in the middle of `sync --once` (the peer never answers).
    let other = TempDir::new().unwrap();
    let peer = ok(other.path(), &["init"]);
    ok(d, &["peer", "add", &peer, &free_port().to_string()]);
    let mut client = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .arg("--dir")
        .arg(d)
        .args(["sync", "--once", &peer])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    client.kill().unwrap();
    client.wait().unwrap();
    assert_eq!(ok(d, &["id"]), id);
    assert_eq!(
        json(d, &["peer", "list", "--json"])[0]["peer"],
        peer.as_str()
    );

    // Killed, it leaves its socket file behind; the next `ferry serve` replaces it.
    drop(serving);
    assert!(d.join("ferry.sock").exists());
    let serving = Serving::start(d);
    assert_eq!(ok(d, &["id"]), id);
    serving.stop();
    assert!(!d.join("ferry.sock").exists());
}

#[test]
fn blobs_are_added_listed_and_copied_out_offline_and_through_a_serving_replica() {
    let (a, _b) = pair();
    let photo = a.path().join("photo.jpg");
    let bytes: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 256) as u8).collect();
    std::fs::write(&photo, &bytes).unwrap();
    let hash = ok(a.path(), &["blob", "add", photo.to_str().unwrap()]);
    assert_eq!(hash.len(), 64, "{hash}");
    let listed = json(a.path(), &["blob", "ls", "--json"]);
    assert_eq!(listed[0]["hash"], hash.as_str());
    assert_eq!(listed[0]["len"], 200_000);
    let out = a.path().join("copy.jpg");
    ok(a.path(), &["blob", "get", &hash, out.to_str().unwrap()]);
    assert_eq!(std::fs::read(&out).unwrap(), bytes);

    // The same through `ferry serve`, which holds the store.
    let serving = Serving::start(a.path());
    let other = a.path().join("notes.pdf");
    std::fs::write(&other, b"%PDF-1.7 not really").unwrap();
    let second = ok(a.path(), &["blob", "add", other.to_str().unwrap()]);
    let out = a.path().join("notes-copy.pdf");
    ok(a.path(), &["blob", "get", &second, out.to_str().unwrap()]);
    assert_eq!(std::fs::read(&out).unwrap(), b"%PDF-1.7 not really");
    assert_eq!(
        json(a.path(), &["blob", "ls", "--json"])
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // An unknown hash, and a hash that is not one, get one line each.
    let missing = fails(a.path(), &["blob", "get", &"0".repeat(64), "/tmp/nothing"]);
    assert!(missing.contains("is not here"), "{missing}");
    let bad = fails(a.path(), &["blob", "get", "cafe", "/tmp/nothing"]);
    assert!(bad.contains("64 hex digits"), "{bad}");
    serving.stop();
}

#[test]
fn a_photo_a_document_refers_to_is_fetched_on_demand_and_strays_are_collected() {
    let (a, b) = pair();
    ok(b.path(), &["space", "blobs", "default", "on-demand"]);
    let photo = a.path().join("photo.jpg");
    let bytes: Vec<u8> = (0..3_000_000u32).map(|i| (i * 13 % 251) as u8).collect();
    std::fs::write(&photo, &bytes).unwrap();
    let hash = ok(a.path(), &["blob", "add", photo.to_str().unwrap()]);
    let survey = ok(a.path(), &["doc", "new"]);
    let reference = format!("\"ferry-blob:{hash}\"");
    ok(a.path(), &["doc", "set", &survey, "photo", &reference]);

    let serving_b = Serving::start(b.path());
    dials(a.path(), b.path(), &serving_b);
    let serving_a = Serving::start(a.path());
    eventually("the survey on b", || {
        ferry(b.path(), &["doc", "get", &survey]).status.success()
    });
    // On demand: the survey came, the photo did not.
    assert_eq!(
        json(b.path(), &["blob", "ls", "--json"]),
        serde_json::json!([])
    );
    let out = b.path().join("photo-copy.jpg");
    ok(b.path(), &["blob", "get", &hash, out.to_str().unwrap()]);
    assert_eq!(std::fs::read(&out).unwrap(), bytes);
    assert_eq!(
        json(b.path(), &["blob", "ls", "--json"])[0]["hash"],
        hash.as_str()
    );

    // A blob no document refers to goes; the photo stays.
    let stray = a.path().join("stray.bin");
    std::fs::write(&stray, b"nobody refers to this").unwrap();
    let stray = ok(a.path(), &["blob", "add", stray.to_str().unwrap()]);
    let removed = ok(a.path(), &["blob", "gc", "--grace", "0"]);
    assert!(
        removed.starts_with(&format!("removed {stray}")),
        "{removed}"
    );
    assert_eq!(
        json(a.path(), &["blob", "ls", "--json"])[0]["hash"],
        hash.as_str()
    );
    serving_a.stop();
    serving_b.stop();
}
