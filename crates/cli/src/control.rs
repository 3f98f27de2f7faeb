//! The control socket: while `ferry serve` runs on a replica, it owns the store (sled allows one
//! process), so the other commands send it their request over a Unix socket in the replica's
//! directory, `ferry.sock`, as one JSON line; it answers with one JSON line (`{"ok": ...}` or
//! `{"error": "..."}`), or for `watch`, with one JSON line per event until the client hangs up.
//! For `sync --once`, `{"progress": ...}` lines come before the answer.
//!
//! Only the user running `ferry serve` can reach the socket (mode 0600, next to the replica's
//! private key). Where there are no Unix sockets, commands always open
//! the replica themselves, and fail clearly while `ferry serve` holds it.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use ferry::Replica;
use serde_json::{Value as Json, json};

use crate::ops::{self, Progress, Request};

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
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path)
            .with_context(|| format!("cannot listen on {}", path.display()))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("cannot restrict {}", path.display()))?;
        }
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

#[cfg(unix)]
async fn answer(stream: tokio::net::UnixStream, replica: Replica) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(LINE_LIMIT));
    if reader.read_line(&mut line).await.is_err() {
        return;
    }
    let request: Request = match serde_json::from_str(&line) {
        Ok(request) => request,
        Err(e) => {
            let reply = json!({ "error": format!("malformed request: {e}") });
            let _ = write.write_all(format!("{reply}\n").as_bytes()).await;
            return;
        }
    };
    if let Request::Watch = request {
        let mut events = replica.subscribe();
        while let Some(event) = events.next().await {
            let line = format!("{}\n", crate::render::event_json(&event));
            if write.write_all(line.as_bytes()).await.is_err() {
                return; // the client hung up
            }
        }
        return;
    }
    let result = if let Request::SyncOnce { peer } = request {
        // Progress lines go out as the sync goes; the answer follows them.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let sync = ops::sync_once(&replica, peer, move |p| {
            let _ = tx.send(p);
        });
        tokio::pin!(sync);
        let mut listening = true;
        loop {
            tokio::select! {
                result = &mut sync => break result,
                Some(progress) = rx.recv(), if listening => {
                    let line = format!("{}\n", json!({ "progress": progress }));
                    // A client that hung up still gets its sync done.
                    listening = write.write_all(line.as_bytes()).await.is_ok();
                }
            }
        }
    } else {
        ops::execute(&replica, &request).await
    };
    let reply = match result {
        Ok(value) => json!({ "ok": value }),
        Err(e) => json!({ "error": format!("{e:#}") }),
    };
    let _ = write.write_all(format!("{reply}\n").as_bytes()).await;
}

/// Sends `request` to the server and returns its answer.
pub(crate) async fn call(server: Server, request: &Request) -> anyhow::Result<Json> {
    call_with_progress(server, request, |_| {}).await
}

/// [`call`], handing `progress` each progress line that comes before the answer.
pub(crate) async fn call_with_progress(
    server: Server,
    request: &Request,
    mut progress: impl FnMut(Progress),
) -> anyhow::Result<Json> {
    #[cfg(unix)]
    {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

        let (read, mut write) = server.into_split();
        write
            .write_all(format!("{}\n", serde_json::to_string(request)?).as_bytes())
            .await
            .context("`ferry serve` stopped answering")?;
        let mut reader = BufReader::new(read);
        let mut reply = loop {
            let mut line = String::new();
            (&mut reader)
                .take(LINE_LIMIT)
                .read_line(&mut line)
                .await
                .context("`ferry serve` stopped answering")?;
            if line.is_empty() {
                bail!("`ferry serve` closed the connection without answering");
            }
            let mut reply: serde_json::Map<String, Json> = serde_json::from_str(&line)
                .context("`ferry serve` answered something malformed")?;
            match reply.remove("progress") {
                Some(p) => progress(
                    serde_json::from_value(p)
                        .context("`ferry serve` answered something malformed")?,
                ),
                None => break reply,
            }
        };
        if let Some(Json::String(error)) = reply.remove("error") {
            bail!("{error}");
        }
        reply
            .remove("ok")
            .context("`ferry serve` answered something malformed")
    }
    #[cfg(not(unix))]
    {
        let _ = (request, &mut progress);
        match server {}
    }
}

/// Streams the server's events to `each` until it stops.
pub(crate) async fn watch(server: Server, mut each: impl FnMut(&Json)) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

        let (read, mut write) = server.into_split();
        write
            .write_all(format!("{}\n", serde_json::to_string(&Request::Watch)?).as_bytes())
            .await?;
        let mut lines = BufReader::new(read).lines();
        while let Some(line) = lines.next_line().await? {
            let event: Json =
                serde_json::from_str(&line).context("`ferry serve` sent a malformed event")?;
            each(&event);
        }
        bail!("`ferry serve` stopped")
    }
    #[cfg(not(unix))]
    {
        let _ = &mut each;
        match server {}
    }
}
