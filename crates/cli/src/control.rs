//! The control socket: while `ferry serve` runs on a replica, it owns the store (sled allows one
//! process), so the other commands send it their request over a Unix socket in the replica's
//! directory, `ferry.sock`, as one JSON line (a [`Request`]); it answers with [`Line`]s, one JSON
//! line each: the reply (`ok` or `error`); for `sync --once`, `progress` lines before it; for
//! `watch`, an `event` line per event until the client hangs up.
//!
//! Only the user running `ferry serve` can reach the socket (mode 0600, next to the replica's
//! private key). Where there are no Unix sockets, commands always open
//! the replica themselves, and fail clearly while `ferry serve` holds it.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use ferry::Replica;

use crate::ops;
use crate::protocol::{Command, Fetching, Line, Progress, Reply, Request, WatchEvent};

/// The largest request or reply line accepted.
#[cfg(unix)]
const LINE_LIMIT: u64 = 16 * 1024 * 1024;

fn socket_path(dir: &Path) -> PathBuf {
    dir.join("ferry.sock")
}

/// The control socket of a running `ferry serve`; stops accepting when dropped or stopped.
pub(crate) struct Control {
    #[cfg(unix)]
    task: tokio::task::JoinHandle<()>,
    path: PathBuf,
}

impl Control {
    pub(crate) fn stop(&self) {
        #[cfg(unix)]
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(unix)]
pub(crate) type Server = tokio::net::UnixStream;
#[cfg(not(unix))]
pub(crate) type Server = std::convert::Infallible;

/// Connects to the `ferry serve` running on `dir`, if one is.
pub(crate) async fn connect(dir: &Path) -> Option<Server> {
    #[cfg(unix)]
    {
        tokio::net::UnixStream::connect(socket_path(dir)).await.ok()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        None
    }
}

/// Starts answering requests on `dir`'s control socket. A socket file left by a `ferry serve`
/// that was killed is replaced (the caller has made sure nothing answers on it).
pub(crate) fn listen(dir: &Path, replica: Replica) -> anyhow::Result<Control> {
    let path = socket_path(dir);
    #[cfg(unix)]
    {
        let listener = bind_private(dir, &path)
            .with_context(|| format!("cannot listen on {}", path.display()))?;
        let task = tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        tokio::spawn(answer(stream, replica.clone()));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "control socket");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Ok(Control { task, path })
    }
    #[cfg(not(unix))]
    {
        let _ = replica;
        Ok(Control { path })
    }
}

/// Binds the socket at `path` so that it is never reachable by others: it is made in a fresh
/// directory only the owner may enter, restricted to the owner (0600), and only then moved into
/// place (replacing a file left by a `ferry serve` that was killed).
#[cfg(unix)]
fn bind_private(dir: &Path, path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};

    let private = dir.join(format!(".ferry.sock.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new().mode(0o700).create(&private)?;
    let staged = private.join("sock");
    let bound = tokio::net::UnixListener::bind(&staged).and_then(|listener| {
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&staged, path)?;
        Ok(listener)
    });
    let _ = std::fs::remove_dir_all(&private);
    bound
}

#[cfg(unix)]
async fn answer(stream: tokio::net::UnixStream, replica: Replica) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

    let (read, mut write) = stream.into_split();
    let mut send = async |line: Line| {
        let mut text = serde_json::to_string(&line).expect("a line of plain data always encodes");
        text.push('\n');
        write.write_all(text.as_bytes()).await.is_ok()
    };
    let mut text = String::new();
    let mut reader = BufReader::new(read.take(LINE_LIMIT));
    if reader.read_line(&mut text).await.is_err() {
        return;
    }
    let request: Request = match serde_json::from_str(&text) {
        Ok(request) => request,
        Err(e) => {
            send(Line::Error(format!("malformed request: {e}"))).await;
            return;
        }
    };
    let result = match request {
        Request::Watch => {
            let mut events = replica.subscribe();
            while let Some(event) = events.next().await {
                if !send(Line::Event(WatchEvent::from(&event))).await {
                    return; // the client hung up
                }
            }
            return;
        }
        Request::SyncOnce { peer } => {
            // Progress lines go out as the sync goes; the answer follows them.
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let sync = ops::sync_once(&replica, peer, move |p| {
                let _ = tx.send(p);
            });
            tokio::pin!(sync);
            let mut listening = true;
            loop {
                tokio::select! {
                    result = &mut sync => break result.map(Reply::Synced),
                    Some(progress) = rx.recv(), if listening => {
                        // A client that hung up still gets its sync done.
                        listening = send(Line::Progress(progress)).await;
                    }
                }
            }
        }
        Request::FetchBlob { hash } => {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let fetch = ops::fetch_blob(&replica, hash, move |p| {
                let _ = tx.send(p);
            });
            tokio::pin!(fetch);
            let mut listening = true;
            loop {
                tokio::select! {
                    result = &mut fetch => break result.map(Reply::Blob),
                    Some(fetching) = rx.recv(), if listening => {
                        listening = send(Line::Fetching(fetching)).await;
                    }
                }
            }
        }
        Request::Run(command) => ops::execute(&replica, &command).await,
    };
    send(match result {
        Ok(reply) => Line::Ok(reply),
        Err(e) => Line::Error(format!("{e:#}")),
    })
    .await;
}

/// Runs `command` on the server and returns its reply.
pub(crate) async fn call(server: Server, command: Command) -> anyhow::Result<Reply> {
    call_with_progress(server, Request::Run(command), |_| {}).await
}

/// Sends `request` and returns the reply, handing `progress` each progress line before it.
pub(crate) async fn call_with_progress(
    server: Server,
    request: Request,
    progress: impl FnMut(Progress),
) -> anyhow::Result<Reply> {
    call_with_lines(server, request, progress, |_| {}).await
}

/// Sends `request` and returns the reply, handing sync progress lines to `progress` and blob
/// progress lines to `fetching`.
pub(crate) async fn call_with_lines(
    server: Server,
    request: Request,
    mut progress: impl FnMut(Progress),
    mut fetching: impl FnMut(Fetching),
) -> anyhow::Result<Reply> {
    let mut lines = open(server, &request).await?;
    loop {
        match lines.next().await? {
            None => bail!("`ferry serve` closed the connection without answering"),
            Some(Line::Progress(p)) => progress(p),
            Some(Line::Fetching(f)) => fetching(f),
            Some(Line::Ok(reply)) => return Ok(reply),
            Some(Line::Error(error)) => bail!("{error}"),
            Some(Line::Event(_)) => bail!("`ferry serve` answered with an event"),
        }
    }
}

/// Streams the server's events to `each` until it stops.
pub(crate) async fn watch(server: Server, mut each: impl FnMut(&WatchEvent)) -> anyhow::Result<()> {
    let mut lines = open(server, &Request::Watch).await?;
    loop {
        match lines.next().await? {
            None => bail!("`ferry serve` stopped"),
            Some(Line::Event(event)) => each(&event),
            Some(Line::Error(error)) => bail!("{error}"),
            Some(_) => bail!("`ferry serve` sent something other than an event"),
        }
    }
}

/// The lines a server sends after a request.
struct Lines {
    #[cfg(unix)]
    reader: tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>,
    // Kept open until the answer is read: closing it would tell the server the client left.
    #[cfg(unix)]
    _write: tokio::net::unix::OwnedWriteHalf,
}

async fn open(server: Server, request: &Request) -> anyhow::Result<Lines> {
    #[cfg(unix)]
    {
        use tokio::io::{AsyncWriteExt, BufReader};

        let (read, mut write) = server.into_split();
        let mut text = serde_json::to_string(request)?;
        text.push('\n');
        write
            .write_all(text.as_bytes())
            .await
            .context("`ferry serve` stopped answering")?;
        Ok(Lines {
            reader: BufReader::new(read),
            _write: write,
        })
    }
    #[cfg(not(unix))]
    {
        let _ = request;
        match server {}
    }
}

impl Lines {
    /// The next line, `None` once the server closed the connection.
    async fn next(&mut self) -> anyhow::Result<Option<Line>> {
        #[cfg(unix)]
        {
            use tokio::io::{AsyncBufReadExt, AsyncReadExt};

            let mut text = String::new();
            (&mut self.reader)
                .take(LINE_LIMIT)
                .read_line(&mut text)
                .await
                .context("`ferry serve` stopped answering")?;
            if text.is_empty() {
                return Ok(None);
            }
            let line = serde_json::from_str(&text)
                .context("`ferry serve` answered something malformed")?;
            Ok(Some(line))
        }
        #[cfg(not(unix))]
        {
            Ok(None)
        }
    }
}
