//! `ferry`: run an offline-first replica on this device, as a peer or an always-on relay, and
//! inspect and change its documents.
//!
//! Every command works on the replica in `--dir` (or `$FERRY_DIR`, or `~/.ferry`). While
//! `ferry serve` runs there, the other commands go through it (over a Unix socket in the
//! directory), so a write made with `ferry doc set` is sent to peers at once; otherwise they open
//! the replica themselves. See `docs/guide.md` for a walk-through.

mod control;
mod ops;
mod protocol;
mod render;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::{Parser, Subcommand};
use ferry::{Access, DocKind, Event, PeerId, Replica};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::protocol::{Command as Run, Request};

/// Offline-first replicated documents: a durable local replica that syncs with its peers over
/// QUIC.
#[derive(Debug, Parser)]
#[command(name = "ferry", version, about)]
struct Cli {
    /// The replica's directory.
    #[arg(long, global = true, env = "FERRY_DIR", value_name = "DIR")]
    dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a replica (its key pair and store) in the directory.
    Init,
    /// Print this replica's peer id.
    Id,
    /// Go online: listen for peers, dial the known ones, and sync live until Ctrl-C.
    Serve {
        /// The UDP address to listen on.
        #[arg(long, default_value = "0.0.0.0:4433", value_name = "ADDR")]
        listen: SocketAddr,
    },
    /// Manage the peers this replica trusts.
    #[command(subcommand)]
    Peer(PeerCommand),
    /// Create and list spaces, and grant peers access to them.
    #[command(subcommand)]
    Space(SpaceCommand),
    /// Create, list, read and change documents.
    #[command(subcommand)]
    Doc(DocCommand),
    /// Change a counter.
    #[command(subcommand)]
    Counter(CounterCommand),
    /// Change a register.
    #[command(subcommand)]
    Register(RegisterCommand),
    /// Add, list and copy out attachments (blobs): files kept beside the store, named by the
    /// blake3 hash of their bytes.
    #[command(subcommand)]
    Blob(BlobCommand),
    /// Connection states, and pending changes and last sync time per document and peer.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Sync with one peer now and return when both sides are quiet.
    Sync {
        /// Sync once and return (the only mode; `ferry serve` syncs continuously).
        #[arg(long, required = true)]
        once: bool,
        /// The peer's id.
        peer: String,
    },
    /// Print change and connection events as they happen (needs `ferry serve` running).
    Watch {
        /// Print JSON lines instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum BlobCommand {
    /// Add a file as a blob; prints its hash once it is durable.
    Add {
        /// The file.
        path: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List the blobs here, with their sizes.
    #[command(alias = "ls")]
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Copy a blob out to a file, checking its bytes against its hash. A blob not here is
    /// fetched first from the peers (going online for it if `ferry serve` is not running),
    /// with a progress bar; a fetch cut before the end resumes from what arrived.
    Get {
        /// The blob's hash (64 hex digits).
        hash: String,
        /// Where to write it.
        out: PathBuf,
    },
    /// Remove the blobs no document refers to that are older than the grace period (the
    /// replica does this by itself, with a day's grace, while it is open).
    Gc {
        /// Keep blobs added less than this many seconds ago.
        #[arg(long, default_value_t = 86_400)]
        grace: u64,
    },
}

#[derive(Debug, Subcommand)]
enum PeerCommand {
    /// Trust a peer, and dial it at ADDR whenever this replica serves (without ADDR, the peer
    /// dials in: a relay trusting a phone).
    Add {
        /// The peer's id (`ferry id` on the peer prints it).
        id: String,
        /// Where the peer listens, as IP:PORT.
        addr: Option<String>,
        /// What the peer may do with the documents of the default space (other spaces:
        /// `ferry space grant`).
        #[arg(long, value_parser = access_parser(), default_value = "write")]
        access: Access,
        /// A name for people.
        #[arg(long)]
        name: Option<String>,
    },
    /// List the trusted peers.
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Forget a peer.
    Remove {
        /// The peer's id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum SpaceCommand {
    /// Create a space and print its id.
    New {
        /// A name for people.
        name: String,
    },
    /// List the spaces this replica knows, with their documents and grants.
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Give a peer access to a space's documents.
    Grant {
        /// The space's id, or `default`.
        space: String,
        /// The peer's id (it must be added first: `ferry peer add`).
        peer: String,
        /// What the peer may do with the space's documents.
        #[arg(long, value_parser = access_parser(), default_value = "write")]
        access: Access,
    },
    /// Take a peer's access to a space away, at once (in open sessions too).
    Revoke {
        /// The space's id, or `default`.
        space: String,
        /// The peer's id.
        peer: String,
    },
    /// Say when this replica fetches the blobs the space's documents refer to: as soon as it
    /// learns of them (`eager`, the default), or only when asked (`on-demand`, `ferry blob
    /// get`).
    Blobs {
        /// The space's id, or `default`.
        space: String,
        /// `eager` or `on-demand`.
        #[arg(value_parser = ["eager", "on-demand"])]
        policy: String,
    },
}

#[derive(Debug, Subcommand)]
enum DocCommand {
    /// Create a document and print its id.
    New {
        /// What kind of document.
        #[arg(long, value_parser = kind_parser(), default_value = "automerge")]
        kind: DocKind,
        /// The space it belongs to: an id, or `default`.
        #[arg(long, default_value = "default", value_name = "SPACE")]
        space: String,
    },
    /// List the documents.
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print a document's content.
    Get {
        /// The document's id.
        doc: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Set PATH (keys separated by dots, e.g. `address.city`) in an Automerge document to
    /// VALUE, read as JSON if it parses (`3`, `true`, `{"a": 1}`) and as a string otherwise.
    Set {
        /// The document's id.
        doc: String,
        /// The path of keys.
        path: String,
        /// The value.
        value: String,
    },
}

#[derive(Debug, Subcommand)]
enum CounterCommand {
    /// Add N (default 1) to a gcounter or pncounter.
    Inc {
        /// The document's id.
        doc: String,
        /// How much.
        #[arg(default_value_t = 1)]
        n: u64,
    },
    /// Subtract N (default 1) from a pncounter.
    Dec {
        /// The document's id.
        doc: String,
        /// How much.
        #[arg(default_value_t = 1)]
        n: u64,
    },
}

#[derive(Debug, Subcommand)]
enum RegisterCommand {
    /// Set an lww or mv register to VALUE (a string).
    Set {
        /// The document's id.
        doc: String,
        /// The value.
        value: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `serve` reports what it does; the other commands only what goes wrong.
    let level = match cli.command {
        Command::Serve { .. } => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("ferry: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes.
            eprintln!("ferry: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let dir = match cli.dir {
        Some(dir) => dir,
        None => default_dir(),
    };
    let (command, json) = match cli.command {
        Command::Init => return init(&dir).await,
        Command::Serve { listen } => return serve(&dir, listen).await,
        Command::Watch { json } => return watch(&dir, json).await,
        Command::Sync { peer, .. } => return sync_once(&dir, &peer).await,
        Command::Id => (Run::Id, false),
        Command::Peer(PeerCommand::Add {
            id,
            addr,
            access,
            name,
        }) => (
            Run::PeerAdd {
                peer: ops::parse_peer(&id)?,
                addr: addr.as_deref().map(ops::parse_addr).transpose()?,
                access,
                name,
            },
            false,
        ),
        Command::Peer(PeerCommand::List { json }) => (Run::PeerList, json),
        Command::Peer(PeerCommand::Remove { id }) => (
            Run::PeerRemove {
                peer: ops::parse_peer(&id)?,
            },
            false,
        ),
        Command::Space(SpaceCommand::New { name }) => (Run::SpaceNew { name }, false),
        Command::Space(SpaceCommand::List { json }) => (Run::SpaceList, json),
        Command::Space(SpaceCommand::Grant {
            space,
            peer,
            access,
        }) => (
            Run::SpaceGrant {
                space: ops::parse_space(&space)?,
                peer: ops::parse_peer(&peer)?,
                access,
            },
            false,
        ),
        Command::Space(SpaceCommand::Blobs { space, policy }) => (
            Run::SpaceBlobs {
                space: ops::parse_space(&space)?,
                on_demand: policy == "on-demand",
            },
            false,
        ),
        Command::Blob(BlobCommand::Gc { grace }) => (Run::BlobGc { grace_secs: grace }, false),
        Command::Space(SpaceCommand::Revoke { space, peer }) => (
            Run::SpaceGrant {
                space: ops::parse_space(&space)?,
                peer: ops::parse_peer(&peer)?,
                access: Access::None,
            },
            false,
        ),
        Command::Doc(DocCommand::New { kind, space }) => (
            Run::DocNew {
                kind,
                space: ops::parse_space(&space)?,
            },
            false,
        ),
        Command::Doc(DocCommand::List { json }) => (Run::DocList, json),
        Command::Doc(DocCommand::Get { doc, json }) => (
            Run::DocGet {
                doc: ops::parse_doc(&doc)?,
            },
            json,
        ),
        Command::Doc(DocCommand::Set { doc, path, value }) => (
            Run::DocSet {
                doc: ops::parse_doc(&doc)?,
                path: ops::parse_path(&path)?,
                value: ops::parse_value(&value),
            },
            false,
        ),
        Command::Counter(CounterCommand::Inc { doc, n }) => (
            Run::CounterAdd {
                doc: ops::parse_doc(&doc)?,
                n,
                down: false,
            },
            false,
        ),
        Command::Counter(CounterCommand::Dec { doc, n }) => (
            Run::CounterAdd {
                doc: ops::parse_doc(&doc)?,
                n,
                down: true,
            },
            false,
        ),
        Command::Register(RegisterCommand::Set { doc, value }) => (
            Run::RegisterSet {
                doc: ops::parse_doc(&doc)?,
                value,
            },
            false,
        ),
        Command::Status { json } => (Run::Status, json),
        Command::Blob(BlobCommand::Add { path, json }) => (
            Run::BlobAdd {
                // Absolute: a serving replica reads it from its own working directory.
                path: std::path::absolute(&path)?,
            },
            json,
        ),
        Command::Blob(BlobCommand::List { json }) => (Run::BlobList, json),
        Command::Blob(BlobCommand::Get { hash, out }) => {
            let hash: ferry::BlobHash = hash.parse()?;
            fetch_blob(&dir, hash).await?;
            let reply = call(&dir, Run::BlobLocate { hash }).await?;
            let protocol::Reply::BlobAt(at) = reply else {
                anyhow::bail!("unexpected reply to a blob lookup");
            };
            let len = ops::copy_blob(&at.path, hash, &out)?;
            println!("{len} bytes to {}", out.display());
            return Ok(());
        }
    };
    let reply = call(&dir, command).await?;
    print!("{}", render::render(&reply, json));
    Ok(())
}

/// The access a peer can be given, by the names the store defines.
fn access_parser() -> impl TypedValueParser<Value = Access> {
    PossibleValuesParser::new([
        PossibleValue::new(Access::None.name()).help("Nothing: the documents stay hidden"),
        PossibleValue::new(Access::Read.name()).help("Receive documents; its changes are refused"),
        PossibleValue::new(Access::ReadWrite.name()).help("Receive documents and change them"),
    ])
    .map(|name| name.parse().expect("every listed name is an access level"))
}

/// The kinds of document, by the names the store defines.
fn kind_parser() -> impl TypedValueParser<Value = DocKind> {
    PossibleValuesParser::new(DocKind::ALL.map(|kind| {
        PossibleValue::new(kind.name()).help(match kind {
            DocKind::Automerge => "JSON-like data and text (an Automerge document)",
            DocKind::GCounter => "A grow-only counter",
            DocKind::PNCounter => "A counter that goes up and down",
            DocKind::LwwRegister => "A last-writer-wins register",
            DocKind::MvRegister => "A multi-value register: concurrent writes are all kept",
        })
    }))
    .map(|name| name.parse().expect("every listed name is a kind"))
}

/// `~/.ferry`, or `.ferry` here if there is no home directory.
fn default_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(|home| PathBuf::from(home).join(".ferry"))
        .unwrap_or_else(|| PathBuf::from(".ferry"))
}

/// Runs `command` through the `ferry serve` running on `dir`, or on the replica opened here.
async fn call(dir: &Path, command: Run) -> anyhow::Result<protocol::Reply> {
    if let Some(server) = control::connect(dir).await {
        return control::call(server, command).await;
    }
    let replica = open(dir).await?;
    let result = ops::execute(&replica, &command).await;
    replica.shutdown().await;
    result
}

/// Opens the replica in `dir`, which `ferry init` must have created.
async fn open(dir: &Path) -> anyhow::Result<Replica> {
    if !is_replica(dir) {
        bail!(
            "no replica in {} (create one with `ferry init --dir {}`)",
            dir.display(),
            dir.display()
        );
    }
    Replica::open(dir)
        .await
        .with_context(|| format!("cannot open the replica in {}", dir.display()))
}

fn is_replica(dir: &Path) -> bool {
    dir.join("identity.key").is_file()
}

async fn init(dir: &Path) -> anyhow::Result<()> {
    if is_replica(dir) {
        let replica = open(dir).await?;
        eprintln!("ferry: {} already holds a replica", dir.display());
        println!("{}", replica.peer_id());
        return Ok(());
    }
    let replica = Replica::open(dir)
        .await
        .with_context(|| format!("cannot create a replica in {}", dir.display()))?;
    eprintln!("ferry: created a replica in {}", dir.display());
    println!("{}", replica.peer_id());
    Ok(())
}

async fn serve(dir: &Path, listen: SocketAddr) -> anyhow::Result<()> {
    if control::connect(dir).await.is_some() {
        bail!("`ferry serve` is already running on {}", dir.display());
    }
    let replica = open(dir).await?;
    let control = control::listen(dir, replica.clone())?;
    let addr = match replica.serve(listen).await {
        Ok(addr) => addr,
        Err(e) => {
            control.stop();
            return Err(e).with_context(|| format!("cannot serve on {listen}"));
        }
    };
    // Both on stdout, for people and for scripts that start peers.
    println!("peer id {}", replica.peer_id());
    println!("listening on {addr}");
    tracing::info!(peer = %replica.peer_id(), %addr, dir = %dir.display(), "serving");
    let mut events = replica.subscribe();
    let logger = tokio::spawn(async move {
        while let Some(event) = events.next().await {
            log_event(&event);
        }
    });
    shutdown_signal().await;
    tracing::info!("shutting down");
    logger.abort();
    control.stop();
    replica.shutdown().await;
    Ok(())
}

fn log_event(event: &Event) {
    match event {
        Event::Connection { peer, state } => {
            tracing::info!(%peer, state = %render::connection(state), "connection")
        }
        Event::Changed { doc, origin } => {
            tracing::debug!(%doc, origin = %protocol::origin_text(origin), "changed")
        }
        Event::Refused { peer, doc } => {
            tracing::warn!(%peer, %doc, "the peer refused this replica's changes (read-only)")
        }
        Event::Lagged { missed } => tracing::warn!(missed, "events missed"),
        _ => {}
    }
}

/// Ctrl-C, or SIGTERM where there is one.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

async fn watch(dir: &Path, json: bool) -> anyhow::Result<()> {
    let Some(server) = control::connect(dir).await else {
        if !is_replica(dir) {
            open(dir).await?; // the "no replica" error
        }
        bail!(
            "`ferry watch` needs `ferry serve` running on {}: start it first",
            dir.display()
        );
    };
    control::watch(server, |event| {
        println!("{}", render::event(event, json));
    })
    .await
}

/// Fetches the blob `hash` unless it is here, through `ferry serve` if it runs, with a bar
/// of the bytes (on a terminal, for fetches past half a second).
async fn fetch_blob(dir: &Path, hash: ferry::BlobHash) -> anyhow::Result<()> {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {elapsed} fetching {prefix} [{bar:24}] {bytes}/{total_bytes} {bytes_per_sec}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
        .progress_chars("=> "),
    );
    bar.set_prefix(hash.to_string()[..12].to_owned());
    let ticker = {
        let bar = bar.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            bar.set_draw_target(ProgressDrawTarget::stderr());
            bar.enable_steady_tick(Duration::from_millis(100));
        })
    };
    let on_progress = |f: protocol::Fetching| {
        bar.set_length(f.len);
        bar.set_position(f.received);
    };
    let result = match control::connect(dir).await {
        Some(server) => {
            let request = Request::FetchBlob { hash };
            control::call_with_lines(server, request, |_| {}, on_progress)
                .await
                .map(drop)
        }
        None => {
            let replica = open(dir).await?;
            let result = ops::fetch_blob(&replica, hash, on_progress).await.map(drop);
            replica.shutdown().await;
            result
        }
    };
    ticker.abort();
    bar.finish_and_clear();
    result
}

async fn sync_once(dir: &Path, peer: &str) -> anyhow::Result<()> {
    let peer = ops::parse_peer(peer)?;
    let request = Request::SyncOnce { peer };
    // Only long syncs show the bar (and only on a terminal): it is drawn after half a second.
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
    let ticker = {
        let bar = bar.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            bar.set_draw_target(ProgressDrawTarget::stderr());
            bar.enable_steady_tick(Duration::from_millis(100));
        })
    };
    let on_progress = |p: protocol::Progress| show_progress(&bar, peer, p);
    let started = std::time::Instant::now();
    let result = match control::connect(dir).await {
        Some(server) => control::call_with_progress(server, request, on_progress)
            .await
            .and_then(|reply| match reply {
                protocol::Reply::Synced(synced) => Ok(synced),
                _ => bail!("`ferry serve` answered a sync with something else"),
            }),
        None => {
            let replica = open(dir).await?;
            let result = ops::sync_once(&replica, peer, on_progress).await;
            replica.shutdown().await;
            result
        }
    };
    ticker.abort();
    bar.finish_and_clear();
    let synced = result?;
    let plural = |n: usize| if n == 1 { "document" } else { "documents" };
    let (sent, received, pending) = (synced.sent, synced.received, synced.pending);
    print!(
        "synced with {peer} in {:.1} s: {sent} {} sent, {received} received",
        started.elapsed().as_secs_f64(),
        plural(sent),
    );
    if pending > 0 {
        print!(", {pending} still pending");
    }
    println!();
    Ok(())
}

/// A bar over the documents the peer lacked changes to, with how many came the other way.
fn show_progress(bar: &ProgressBar, peer: PeerId, p: protocol::Progress) {
    if bar.length() != Some(p.to_send) {
        bar.set_length(p.to_send);
        let template = if p.to_send == 0 {
            "{spinner} {elapsed} syncing with {prefix}: {msg}"
        } else {
            "{spinner} {elapsed} syncing with {prefix} [{bar:24}] {pos}/{len} documents sent, {msg}"
        };
        bar.set_style(
            ProgressStyle::with_template(template)
                .unwrap_or_else(|_| ProgressStyle::default_spinner())
                .progress_chars("=> "),
        );
        bar.set_prefix(peer.to_string());
    }
    bar.set_position(p.sent);
    bar.set_message(format!("{} received", p.received));
}
