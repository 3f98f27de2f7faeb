//! Real `ferry serve` processes SIGKILLed at random moments and restarted: a relay and two
//! devices serve while a writer changes documents and a counter through any of them (through
//! the running server, or on the replica directly while its server is down); a third device
//! joins late and is killed in the middle of its first clone, which holds a 2 MB document.
//! Every write whose command succeeded must then be on every replica, and the replicas must
//! agree, within 30 s of the last restart; no process may have panicked.
//!
//! `FERRY_KILL_ROUNDS` sets the number of kills (default 6); a soak is the same test with
//! more, for example `FERRY_KILL_ROUNDS=500 cargo test --release -p ferry-cli --test
//! kill_soak`. The seed is printed, and `FERRY_KILL_SEED` replays the schedule.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use support::{ferry, ok};
use tempfile::TempDir;

/// A replica and the port it serves on, the same across restarts.
struct Replica {
    dir: TempDir,
    addr: SocketAddr,
    child: Option<Child>,
    /// Where each run of its server writes its stderr.
    logs: Vec<PathBuf>,
}

impl Replica {
    fn new() -> Self {
        let dir = TempDir::new().unwrap();
        ok(dir.path(), &["init"]);
        let addr = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        Self {
            dir,
            addr,
            child: None,
            logs: Vec::new(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Starts its server, retrying while the replica is held (by a command running on it
    /// while the server was down) or the port not yet free.
    fn start(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let log = self
                .dir
                .path()
                .with_extension(format!("serve-{}.log", self.logs.len()));
            let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
                .arg("--dir")
                .arg(self.dir.path())
                .args(["serve", "--listen", &self.addr.to_string()])
                .env_remove("RUST_LOG")
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap();
            self.logs.push(log);
            let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
            if let Some(Ok(line)) = lines.next()
                && line.starts_with("peer id ")
            {
                // The rest of its output is not read; it prints nothing more.
                std::thread::spawn(move || lines.for_each(drop));
                self.child = Some(child);
                return;
            }
            let _ = child.kill();
            let _ = child.wait();
            assert!(
                Instant::now() < deadline,
                "{} never served again",
                self.path().display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What the writes whose command succeeded promise.
#[derive(Default)]
struct Promised {
    keys: BTreeMap<String, (String, i64)>,
    count: i64,
}

fn value_of(dir: &Path, doc: &str) -> Option<Value> {
    let out = ferry(dir, &["doc", "get", doc, "--json"]);
    out.status
        .success()
        .then(|| serde_json::from_slice::<Value>(&out.stdout).ok())
        .flatten()
        .map(|v| v["value"].clone())
}

#[test]
fn serving_replicas_killed_at_random_lose_nothing_and_converge() {
    let seed: u64 = std::env::var("FERRY_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let rounds: usize = std::env::var("FERRY_KILL_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    println!("kill soak seed {seed} (replay: FERRY_KILL_SEED={seed}), {rounds} kills");
    let mut rng = StdRng::seed_from_u64(seed);

    // A relay and two devices that dial it; a third device joins later.
    let mut replicas: Vec<Replica> = (0..4).map(|_| Replica::new()).collect();
    let ids: Vec<String> = replicas.iter().map(|r| ok(r.path(), &["id"])).collect();
    for d in 1..4 {
        ok(replicas[0].path(), &["peer", "add", &ids[d]]);
        let relay = replicas[0].addr.to_string();
        ok(replicas[d].path(), &["peer", "add", &ids[0], &relay]);
    }
    // On the relay before anyone serves: three documents, a counter, and a 2 MB document
    // (twenty values of 100 kB) that the late device's first clone brings in parts.
    let relay = replicas[0].path().to_owned();
    let docs: Vec<String> = (0..3).map(|_| ok(&relay, &["doc", "new"])).collect();
    let counter = ok(&relay, &["doc", "new", "--kind", "pncounter"]);
    let large = ok(&relay, &["doc", "new"]);
    for i in 0..20 {
        let text: String = (0..100_000)
            .map(|j| char::from(b'a' + ((i + j) % 26) as u8))
            .collect();
        ok(&relay, &["doc", "set", &large, &format!("scan{i}"), &text]);
    }
    for r in &mut replicas[..3] {
        r.start();
    }

    // The writer: through any of the first three replicas, whether its server is up or not.
    let promised = Arc::new(Mutex::new(Promised::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let dirs: Vec<PathBuf> = replicas[..3].iter().map(|r| r.path().to_owned()).collect();
    let writer = {
        let (promised, stop, docs, counter) = (
            promised.clone(),
            stop.clone(),
            docs.clone(),
            counter.clone(),
        );
        let mut rng = StdRng::seed_from_u64(seed ^ 1);
        std::thread::spawn(move || {
            let mut n = 0i64;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let dir = &dirs[rng.random_range(0..dirs.len())];
                if rng.random_range(0..5) == 0 {
                    let by = rng.random_range(1..5i64);
                    if ferry(dir, &["counter", "inc", &counter, &by.to_string()])
                        .status
                        .success()
                    {
                        promised.lock().unwrap().count += by;
                    }
                } else {
                    let doc = &docs[rng.random_range(0..docs.len())];
                    let key = format!("w{n}");
                    let out = ferry(dir, &["doc", "set", doc, &key, &n.to_string()]);
                    if out.status.success() {
                        promised.lock().unwrap().keys.insert(key, (doc.clone(), n));
                    }
                }
            }
        })
    };

    for round in 0..rounds {
        std::thread::sleep(Duration::from_millis(rng.random_range(200..1200)));
        if round == rounds / 2 {
            // The late device joins, and is killed in the middle of its first clone.
            replicas[3].start();
            std::thread::sleep(Duration::from_millis(rng.random_range(50..400)));
            replicas[3].kill();
            std::thread::sleep(Duration::from_millis(rng.random_range(0..300)));
            replicas[3].start();
            continue;
        }
        let victim = rng.random_range(0..3);
        replicas[victim].kill();
        std::thread::sleep(Duration::from_millis(rng.random_range(0..500)));
        replicas[victim].start();
    }
    if replicas[3].child.is_none() {
        replicas[3].start();
    }
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();

    // Every replica ends with every promised write, and they agree.
    let promised = promised.lock().unwrap();
    println!(
        "{} writes and {} counted promised",
        promised.keys.len(),
        promised.count
    );
    let settling = Instant::now();
    // Under the 45 s after which a peer would give up a connection to a process that died: a
    // restarted server answers its previous run's connections with a stateless reset, so a
    // peer learns of the death at its next packet (a keep-alive, 15 s, at the latest) and
    // dials again: 0.4 to 15 s in the runs so far, against 42 to 58 s before the resets.
    let deadline = settling + Duration::from_secs(30);
    loop {
        let mut missing = Vec::new();
        let values: Vec<Vec<Option<Value>>> = replicas
            .iter()
            .map(|r| {
                docs.iter()
                    .chain([&large])
                    .map(|d| value_of(r.path(), d))
                    .collect()
            })
            .collect();
        for (r, held) in values.iter().enumerate() {
            for (key, (doc, n)) in &promised.keys {
                let at = docs.iter().position(|d| d == doc).unwrap();
                if held[at].as_ref().map(|v| v[key].clone()) != Some(Value::from(*n)) {
                    missing.push(format!("r{r}: {key}"));
                }
            }
            let count = ferry(replicas[r].path(), &["doc", "get", &counter]);
            let count = String::from_utf8_lossy(&count.stdout)
                .trim()
                .parse::<i64>()
                .ok();
            if count != Some(promised.count) {
                missing.push(format!(
                    "r{r}: counter at {count:?}, not {}",
                    promised.count
                ));
            }
            if held != &values[0] {
                missing.push(format!("r{r} differs from the relay"));
            }
        }
        if missing.is_empty() {
            println!(
                "all four agree {:.1?} after the last restart",
                settling.elapsed()
            );
            break;
        }
        if Instant::now() >= deadline {
            // How each replica sees its peers, for the failure's message.
            for r in &replicas {
                let status = ferry(r.path(), &["status", "--json"]);
                eprintln!(
                    "{}: {}",
                    r.path().display(),
                    String::from_utf8_lossy(&status.stdout)
                );
            }
        }
        assert!(
            Instant::now() < deadline,
            "seed {seed}: {} differences 30 s after the last restart, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    for r in &replicas {
        for log in &r.logs {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            assert!(
                !text.contains("panicked"),
                "seed {seed}: {}: {text}",
                log.display()
            );
        }
    }
}
