//! A chat that keeps working when the network does not: ferry's end-to-end demo.
//!
//! Three replicas run on this machine, each with its own durable store in a temporary
//! directory, and talk over real QUIC on loopback: Alice's phone, Bob's laptop, and an
//! always-on relay both of them know (they never dial each other). The chat is one Automerge
//! document: a list of messages, and read receipts.
//!
//! 1. Online, Alice and Bob exchange a message each. Each message goes from **pending** (saved
//!    on the author's device only) to **sent** (the relay acknowledged holding it) to **seen**
//!    (the recipient's device wrote a read receipt for it).
//! 2. Bob's laptop goes offline (its endpoint is closed). Both keep typing: Alice's messages
//!    reach the relay and show as sent; Bob's stay pending on his laptop.
//! 3. Bob comes back online. Nobody presses retry: his laptop dials the relay, the pending
//!    messages flush both ways, and every message ends up seen.
//!
//! At the end all three replicas hold the same history, in the same order. The transcript shows
//! when each status changed. The example exits 0 only if the replicas converged.
//!
//! Run it with `cargo run --release --example offline_chat`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use ferry::automerge::transaction::Transactable;
use ferry::automerge::{ChangeHash, ObjType, ROOT, ReadDoc, Value};
use ferry::{Access, BackoffConfig, Doc, Event, PeerId, Replica};
use tokio::sync::Mutex;

/// A message as it shows in the chat.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Message {
    id: String,
    author: String,
    text: String,
}

/// Where one of this device's own messages is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Status {
    Pending,
    Sent,
    Seen,
}

struct Outgoing {
    id: String,
    text: String,
    change: ChangeHash,
    status: Status,
}

/// One person's device: a replica, the chat on it, and what it sent.
struct Device {
    name: &'static str,
    other: &'static str,
    replica: Replica,
    chat: Doc,
    relay: PeerId,
    outbox: Mutex<Vec<Outgoing>>,
    start: Instant,
}

impl Device {
    fn say(&self, what: &str) {
        println!(
            "{:>7.1} ms  {:<5}  {what}",
            self.start.elapsed().as_secs_f64() * 1000.0,
            self.name
        );
    }

    /// Types a message: saved durably on this device before it returns, whatever the network.
    async fn send(&self, text: &str) -> anyhow::Result<()> {
        let mut outbox = self.outbox.lock().await;
        let id = format!("{}-{}", self.name, outbox.len() + 1);
        let (author, body, key) = (self.name.to_owned(), text.to_owned(), id.clone());
        self.chat
            .change(move |tx| {
                let Some((Value::Object(ObjType::List), messages)) = tx.get(ROOT, "messages")?
                else {
                    return Err(ferry::automerge::AutomergeError::InvalidObjId(
                        "messages".into(),
                    ));
                };
                let at = tx.length(&messages);
                let message = tx.insert_object(&messages, at, ObjType::Map)?;
                tx.put(&message, "id", key)?;
                tx.put(&message, "author", author)?;
                tx.put(&message, "text", body)?;
                Ok(())
            })
            .await?;
        let change = self
            .chat
            .read(|d| d.get_last_local_change().map(|c| c.hash()))?
            .context("the change just made")?;
        outbox.push(Outgoing {
            id,
            text: text.to_owned(),
            change,
            status: Status::Pending,
        });
        drop(outbox);
        self.say(&format!("types {text:?}: pending"));
        self.refresh().await
    }

    /// What the UI does whenever the chat changed or a peer acknowledged something: writes a
    /// read receipt for every message from the other person it now shows, and updates the
    /// status of its own messages.
    async fn refresh(&self) -> anyhow::Result<()> {
        let unseen: Vec<Message> = read_messages(&self.chat)?
            .into_iter()
            .filter(|m| m.author == self.other)
            .filter(|m| !receipt(&self.chat, self.name, &m.id).unwrap_or(true))
            .collect();
        if !unseen.is_empty() {
            let reader = self.name.to_owned();
            let ids: Vec<String> = unseen.iter().map(|m| m.id.clone()).collect();
            self.chat
                .change(move |tx| {
                    let Some((Value::Object(ObjType::Map), seen)) = tx.get(ROOT, "seen")? else {
                        return Err(ferry::automerge::AutomergeError::InvalidObjId(
                            "seen".into(),
                        ));
                    };
                    for id in ids {
                        tx.put(&seen, format!("{reader}/{id}"), true)?;
                    }
                    Ok(())
                })
                .await?;
            for m in unseen {
                self.say(&format!("reads {:?} from {}", m.text, m.author));
            }
        }
        let mut outbox = self.outbox.lock().await;
        for out in outbox.iter_mut() {
            let status = if receipt(&self.chat, self.other, &out.id)? {
                Status::Seen
            } else if self.chat.acknowledged_by(self.relay, out.change)? {
                Status::Sent
            } else {
                Status::Pending
            };
            if status > out.status {
                out.status = status;
                let how = match status {
                    Status::Sent => "sent (the relay holds it)",
                    Status::Seen => "seen (read receipt from the recipient)",
                    Status::Pending => "pending",
                };
                self.say(&format!("{:?}: {how}", out.text));
            }
        }
        Ok(())
    }

    async fn statuses(&self) -> Vec<Status> {
        self.outbox.lock().await.iter().map(|o| o.status).collect()
    }
}

/// Whether `reader` has a receipt for message `id`.
fn receipt(chat: &Doc, reader: &str, id: &str) -> anyhow::Result<bool> {
    Ok(chat.read(|d| match d.get(ROOT, "seen") {
        Ok(Some((Value::Object(ObjType::Map), seen))) => {
            matches!(d.get(&seen, format!("{reader}/{id}")), Ok(Some(_)))
        }
        _ => false,
    })?)
}

fn read_messages(chat: &Doc) -> anyhow::Result<Vec<Message>> {
    Ok(chat.read(|d| {
        let Ok(Some((Value::Object(ObjType::List), list))) = d.get(ROOT, "messages") else {
            return Vec::new();
        };
        let field = |obj: &ferry::automerge::ObjId, key: &str| match d.get(obj, key) {
            Ok(Some((Value::Scalar(s), _))) => s.as_str().unwrap_or_default().to_owned(),
            _ => String::new(),
        };
        (0..d.length(&list))
            .filter_map(|i| match d.get(&list, i) {
                Ok(Some((Value::Object(ObjType::Map), m))) => Some(Message {
                    id: field(&m, "id"),
                    author: field(&m, "author"),
                    text: field(&m, "text"),
                }),
                _ => None,
            })
            .collect()
    })?)
}

/// Runs a device's UI loop: every event makes it refresh, as a UI re-renders.
fn run_ui(device: Arc<Device>) -> tokio::task::JoinHandle<()> {
    let mut events = device.replica.subscribe();
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            match event {
                Event::Connection { peer, state } if peer == device.relay => {
                    device.say(&format!("relay connection: {}", describe(&state)));
                }
                _ => {}
            }
            if let Err(e) = device.refresh().await {
                device.say(&format!("refresh failed: {e:#}"));
            }
        }
    })
}

fn describe(state: &ferry::ConnectionState) -> &'static str {
    match state {
        ferry::ConnectionState::Connecting => "connecting",
        ferry::ConnectionState::Connected { .. } => "connected",
        ferry::ConnectionState::Disconnected { .. } => "disconnected",
    }
}

/// Waits until `done` holds, checking every few milliseconds, for at most `limit`.
async fn until<F, Fut>(limit: Duration, what: &str, mut done: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + limit;
    while !done().await? {
        ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

async fn open(dir: &std::path::Path) -> anyhow::Result<Replica> {
    // Retry quickly: on a phone the OS would also say when the network is back
    // (`Replica::network_changed`); here nobody does.
    let backoff = BackoffConfig {
        min: Duration::from_millis(100),
        max: Duration::from_secs(1),
    };
    Ok(Replica::builder(dir).backoff(backoff).open().await?)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    // `RUST_LOG=ferry_net=debug` shows connections and sessions.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let start = Instant::now();
    let dirs = [
        tempfile::tempdir()?,
        tempfile::tempdir()?,
        tempfile::tempdir()?,
    ];
    let relay = open(dirs[0].path()).await?;
    let phone = open(dirs[1].path()).await?;
    let laptop = open(dirs[2].path()).await?;

    // The relay is always on and trusts both; each device knows where the relay is.
    let relay_addr = relay.serve(loopback()).await?;
    for device in [&phone, &laptop] {
        relay
            .allow_peer(device.peer_id(), Access::ReadWrite)
            .await?;
        device
            .add_peer(relay.peer_id(), relay_addr, Access::ReadWrite)
            .await?;
    }
    println!("relay {} on {relay_addr}", relay.peer_id());
    println!("alice's phone {}", phone.peer_id());
    println!("bob's laptop  {}\n", laptop.peer_id());

    // Alice starts the chat, with its list of messages and its read receipts: made once, by
    // one replica (two replicas each making a "messages" list would make two lists, and
    // Automerge would show one of them).
    let chat = phone.create_doc().await?;
    chat.change(|tx| {
        tx.put_object(ROOT, "messages", ObjType::List)?;
        tx.put_object(ROOT, "seen", ObjType::Map)?;
        Ok(())
    })
    .await?;
    let laptop_addr = laptop.serve(loopback()).await?;
    phone.serve(loopback()).await?;
    let on_laptop = laptop
        .doc_when_available(chat.id(), Duration::from_secs(20))
        .await?;
    until(Duration::from_secs(20), "the chat's message list", || {
        let chat = on_laptop.clone();
        async move { Ok(chat.read(|d| d.get(ROOT, "seen").ok().flatten().is_some())?) }
    })
    .await?;

    let alice = Arc::new(Device {
        name: "alice",
        other: "bob",
        replica: phone.clone(),
        chat: chat.clone(),
        relay: relay.peer_id(),
        outbox: Mutex::new(Vec::new()),
        start,
    });
    let bob = Arc::new(Device {
        name: "bob",
        other: "alice",
        replica: laptop.clone(),
        chat: on_laptop,
        relay: relay.peer_id(),
        outbox: Mutex::new(Vec::new()),
        start,
    });
    let uis = [run_ui(alice.clone()), run_ui(bob.clone())];
    let all_seen = |device: Arc<Device>| async move {
        Ok::<bool, anyhow::Error>(device.statuses().await.iter().all(|s| *s == Status::Seen))
    };

    println!("-- online --");
    alice.send("Hi Bob, boarding now").await?;
    bob.send("Have a good flight!").await?;
    until(Duration::from_secs(20), "both messages seen", || {
        let (a, b) = (alice.clone(), bob.clone());
        async move { Ok(all_seen(a).await? && all_seen(b).await?) }
    })
    .await?;

    println!("\n-- bob's laptop goes offline --");
    let offline_at = Instant::now();
    laptop.shutdown().await;
    alice.send("Landed in Lisbon").await?;
    alice.send("Taxi to the hotel, call you later").await?;
    bob.send("Did you land?").await?;
    bob.send("Ping me when you can").await?;
    // Alice's reach the relay; Bob's stay on his laptop.
    until(
        Duration::from_secs(20),
        "alice's messages at the relay",
        || {
            let a = alice.clone();
            async move { Ok(a.statuses().await[1..].iter().all(|s| *s == Status::Sent)) }
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let bobs = bob.statuses().await;
    ensure!(
        bobs[1..].iter().all(|s| *s == Status::Pending),
        "bob's messages left an offline laptop: {bobs:?}"
    );
    let pending = laptop.sync_status().await?.pending(chat.id());
    bob.say(&format!("offline: {pending} changes pending for the relay"));

    println!("\n-- bob's laptop is back --");
    laptop.serve(laptop_addr).await?;
    let back_at = Instant::now();
    until(Duration::from_secs(30), "every message seen", || {
        let (a, b) = (alice.clone(), bob.clone());
        async move { Ok(all_seen(a).await? && all_seen(b).await?) }
    })
    .await?;
    let flushed = back_at.elapsed();
    // And the relay holds everything both devices hold.
    until(Duration::from_secs(20), "the same heads everywhere", || {
        let (a, b) = (chat.clone(), bob.chat.clone());
        let r = relay.doc(chat.id());
        async move {
            let Ok(r) = r else { return Ok(false) };
            let heads = a.heads()?;
            Ok(heads == b.heads()? && heads == r.heads()?)
        }
    })
    .await?;
    for ui in uis {
        ui.abort();
    }

    let on_phone = read_messages(&chat)?;
    let on_laptop = read_messages(&bob.chat)?;
    let on_relay = read_messages(&relay.doc(chat.id())?)?;
    println!("\n-- the chat, as each replica shows it --");
    for m in &on_phone {
        println!("  {:<5}  {}", m.author, m.text);
    }
    let mut by_author = BTreeMap::new();
    for m in &on_phone {
        *by_author.entry(m.author.as_str()).or_insert(0) += 1;
    }
    println!(
        "\noffline for {:.0} ms; after reconnecting, everything flushed and was seen in {:.0} ms",
        (back_at - offline_at).as_secs_f64() * 1000.0,
        flushed.as_secs_f64() * 1000.0
    );
    let converged = on_phone == on_laptop
        && on_phone == on_relay
        && on_phone.len() == 6
        && by_author.get("alice") == Some(&3)
        && by_author.get("bob") == Some(&3);
    println!(
        "phone, laptop and relay hold the same {} messages in the same order: {}",
        on_phone.len(),
        if converged { "yes" } else { "NO" }
    );

    for replica in [&phone, &laptop, &relay] {
        replica.shutdown().await;
    }
    ensure!(converged, "the replicas did not converge");
    Ok(())
}
