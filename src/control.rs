//! What the daemon and its clients (the CLI, the sandbox, scripts) share: the control
//! socket's protocol, the state file ([`state`]) and the single-instance lock
//! ([`lock`]). The CLI reaches a running daemon only through these, never through the
//! daemon module.
//!
//! The control socket is a Unix domain socket in the runtime folder (0600 in a 0700
//! folder) speaking newline-delimited JSON, one request and one response per line.
//!
//! A request is `{"v": 1, "cmd": "status"}`; `cmd` is one of `status`, `cycle-now`,
//! `sync-now`, `sync-now-allow-removals`, `reload`, `stop`, `sign-in`, `mail-queued` and
//! `signed-in`. A response is `{"v": 1, "ok": true, "data": …}` or
//! `{"v": 1, "ok": false, "error": "…"}`. A request of another protocol version is
//! answered with an error naming both versions, and a client refuses a response of
//! another version the same way, so a mismatched CLI and daemon say so instead of
//! misreading each other.
//!
//! The server side accepts connections on the daemon's runtime and hands each request to
//! the supervisor over a channel; the client side is synchronous (the CLI needs no
//! runtime to ask a question).

pub mod lock;
pub mod state;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader as AsyncBufReader};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// The longest request line the server reads.
const MAX_LINE: usize = 64 * 1024;

/// What a client asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Command {
    /// The daemon's live state.
    Status,
    /// Run a cycle now; answered with its summary when it has run.
    CycleNow,
    /// Run a cycle now with the mailbox sync due; answered with its summary.
    SyncNow,
    /// As `sync-now`, with the removal guard standing aside for this sync (the person
    /// said the removals are real).
    SyncNowAllowRemovals,
    /// Reread the configuration (as SIGHUP does); answered with the outcome.
    Reload,
    /// Stop (as SIGTERM does); answered before the daemon stops.
    Stop,
    /// The sign-in as the daemon sees it, with the device code waiting for a person.
    SignIn,
    /// Mail was queued: run a cycle soon (after the one running, if any). Answered at
    /// once, without waiting for the cycle.
    MailQueued,
    /// `login` stored a new sign-in: run a cycle soon, as for `MailQueued`, so the daemon
    /// takes it now rather than at its next heartbeat.
    SignedIn,
}

#[derive(Debug, Serialize, Deserialize)]
struct Request {
    v: u32,
    cmd: Command,
}

/// A response line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub v: u32,
    /// The daemon's version.
    #[serde(default)]
    pub daemon: String,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    pub fn ok(data: Value) -> Response {
        Response {
            v: PROTOCOL_VERSION,
            daemon: env!("CARGO_PKG_VERSION").into(),
            ok: true,
            data: Some(data),
            error: None,
        }
    }

    pub fn error(message: impl Into<String>) -> Response {
        Response {
            v: PROTOCOL_VERSION,
            daemon: env!("CARGO_PKG_VERSION").into(),
            ok: false,
            data: None,
            error: Some(message.into()),
        }
    }
}

/// A request handed to the supervisor, with where its answer goes.
pub struct Incoming {
    pub command: Command,
    pub reply: oneshot::Sender<Response>,
}

/// Errors of the control socket.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot listen on the control socket {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the daemon is not answering on {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the daemon's answer on {path} could not be read: {message}")]
    BadAnswer { path: PathBuf, message: String },
    #[error(
        "the daemon speaks control protocol version {theirs} and this imm-daemon speaks {PROTOCOL_VERSION}: run the `imm-daemon` of the daemon's version ({daemon_version})"
    )]
    Version { theirs: u32, daemon_version: String },
    #[error("the daemon refused: {0}")]
    Refused(String),
    #[error(
        "the daemon is not answering: it holds its lock but did not answer a status request on {path} within {}s (stopped with SIGSTOP, or hung); what was asked may still run when it resumes",
        timeout.as_secs()
    )]
    NotAnswering { path: PathBuf, timeout: Duration },
    #[error(transparent)]
    Paths(#[from] crate::paths::PathsError),
}

/// Binds the socket at `path`, owner-only. A file left there by an earlier daemon is
/// removed first: the caller holds the single-instance lock, so no live daemon owns it.
pub fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    let bind_err = |source| ControlError::Bind {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        crate::paths::ensure_private_dir(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(bind_err(e)),
    }
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    }
    Ok(listener)
}

/// Accepts connections until the task is aborted, handing requests to `to_supervisor`;
/// connections run on `tracker`, so that a stopping daemon can let the answers already
/// given reach their clients.
pub async fn serve(
    listener: UnixListener,
    to_supervisor: mpsc::Sender<Incoming>,
    tracker: tokio_util::task::TaskTracker,
) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tracker.spawn(connection(stream, to_supervisor.clone()));
            }
            Err(e) => {
                tracing::warn!("control socket: cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn connection(stream: tokio::net::UnixStream, to_supervisor: mpsc::Sender<Incoming>) {
    let (read, mut write) = stream.into_split();
    let mut lines = AsyncBufReader::new(read.take(MAX_LINE as u64 * 16)).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let response = match parse_request(&line) {
            Ok(command) => {
                let (reply, answer) = oneshot::channel();
                if to_supervisor
                    .send(Incoming { command, reply })
                    .await
                    .is_err()
                {
                    Response::error("the daemon is stopping")
                } else {
                    answer
                        .await
                        .unwrap_or_else(|_| Response::error("the daemon is stopping"))
                }
            }
            Err(r) => r,
        };
        let mut text = serde_json::to_vec(&response).expect("responses serialize");
        text.push(b'\n');
        if write.write_all(&text).await.is_err() {
            return;
        }
    }
}

/// Reads a request line; a bad one is answered with an error naming what is wrong.
fn parse_request(line: &str) -> Result<Command, Response> {
    if line.len() > MAX_LINE {
        return Err(Response::error(format!(
            "request longer than {MAX_LINE} bytes"
        )));
    }
    let value: Value = serde_json::from_str(line)
        .map_err(|e| Response::error(format!("the request is not JSON: {e}")))?;
    match value.get("v").and_then(Value::as_u64) {
        Some(v) if v == u64::from(PROTOCOL_VERSION) => {}
        Some(v) => {
            return Err(Response::error(format!(
                "control protocol version {v} is not supported: this daemon (version {}) speaks {PROTOCOL_VERSION}",
                env!("CARGO_PKG_VERSION")
            )));
        }
        None => {
            return Err(Response::error("the request has no protocol version `v`"));
        }
    }
    serde_json::from_value::<Request>(value)
        .map(|r| r.cmd)
        .map_err(|e| {
            Response::error(format!(
                "bad request: {e} (commands: status, cycle-now, sync-now, sync-now-allow-removals, reload, stop, sign-in, mail-queued)"
            ))
        })
}

/// Sends one request to the daemon at `path` and waits up to `timeout` for the answer.
pub fn request(path: &Path, command: Command, timeout: Duration) -> Result<Value, ControlError> {
    let stream = send(path, command, timeout, timeout)?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .map_err(|source| ControlError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
    parse_response(path, &answer)
}

/// How long a client waits for the socket of a daemon that holds its lock but has not
/// bound its socket yet (it takes the lock first, then opens the database and binds).
const STARTUP_GRACE: Duration = Duration::from_secs(3);

/// Connects to the socket; callers have seen the daemon's lock held, so a socket that is
/// missing or refuses for a moment belongs to a daemon still starting (a command run
/// right after `imm-daemon run`, as scripts and the sandbox do).
fn connect_soon(path: &Path, grace: Duration) -> std::io::Result<StdUnixStream> {
    let deadline = std::time::Instant::now() + grace;
    loop {
        match StdUnixStream::connect(path) {
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(25));
            }
            other => return other,
        }
    }
}

/// Connects to the daemon at `path` and writes `command`; the stream reads with `read`
/// as its timeout.
fn send(
    path: &Path,
    command: Command,
    read: Duration,
    write: Duration,
) -> Result<StdUnixStream, ControlError> {
    let connect = |source| ControlError::Connect {
        path: path.to_path_buf(),
        source,
    };
    let mut stream = connect_soon(path, read.min(STARTUP_GRACE)).map_err(connect)?;
    stream.set_read_timeout(Some(read)).map_err(connect)?;
    stream.set_write_timeout(Some(write)).map_err(connect)?;
    let mut line = serde_json::to_vec(&Request {
        v: PROTOCOL_VERSION,
        cmd: command,
    })
    .expect("requests serialize");
    line.push(b'\n');
    stream.write_all(&line).map_err(connect)?;
    Ok(stream)
}

/// A read or write that ran out of time (a socket's timeout reports either kind).
fn timed_out(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// Like [`request`] for a command whose answer may take long (a cycle, a sync): waits up
/// to `timeout` for it, but gives up with [`ControlError::NotAnswering`] as soon as the
/// daemon stops answering status requests on a second connection (asked every
/// `check_every`, each allowed `answer_timeout`), so a frozen daemon costs a bounded
/// wait, not the whole timeout. A closed connection is an error, never success.
pub fn request_watched(
    path: &Path,
    command: Command,
    timeout: Duration,
    check_every: Duration,
    answer_timeout: Duration,
) -> Result<Value, ControlError> {
    // A timed-out exchange with the daemon means it is not answering.
    let frozen = |e: ControlError| match e {
        ControlError::Connect { path, source } if timed_out(&source) => {
            ControlError::NotAnswering {
                path,
                timeout: answer_timeout,
            }
        }
        other => other,
    };
    let started = std::time::Instant::now();
    let step = check_every.min(timeout).max(Duration::from_millis(10));
    let stream = send(path, command, step, answer_timeout).map_err(frozen)?;
    let mut reader = BufReader::new(&stream);
    let mut answer = Vec::new();
    loop {
        match reader.read_until(b'\n', &mut answer) {
            Ok(_) => break,
            Err(e) if timed_out(&e) => {
                if started.elapsed() >= timeout {
                    return Err(ControlError::Connect {
                        path: path.to_path_buf(),
                        source: e,
                    });
                }
                // Still working, or frozen? A live daemon answers status during a cycle.
                request(path, Command::Status, answer_timeout).map_err(frozen)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(ControlError::Connect {
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
    }
    parse_response(path, &String::from_utf8_lossy(&answer))
}

impl ControlError {
    /// Whether the daemon was reached but did not answer in time (frozen or hung), as
    /// opposed to absent or refusing.
    pub fn is_timeout(&self) -> bool {
        match self {
            ControlError::NotAnswering { .. } => true,
            ControlError::Connect { source, .. } => timed_out(source),
            _ => false,
        }
    }
}

fn parse_response(path: &Path, answer: &str) -> Result<Value, ControlError> {
    let bad = |message: String| ControlError::BadAnswer {
        path: path.to_path_buf(),
        message,
    };
    if answer.is_empty() {
        return Err(bad("the connection closed without an answer".into()));
    }
    let value: Value = serde_json::from_str(answer).map_err(|e| bad(e.to_string()))?;
    let theirs = value
        .get("v")
        .and_then(Value::as_u64)
        .ok_or_else(|| bad("no protocol version `v`".into()))?;
    let response: Response = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
    if theirs != u64::from(PROTOCOL_VERSION) {
        return Err(ControlError::Version {
            theirs: theirs as u32,
            daemon_version: if response.daemon.is_empty() {
                "unknown".into()
            } else {
                response.daemon
            },
        });
    }
    if response.ok {
        Ok(response.data.unwrap_or(Value::Null))
    } else {
        Err(ControlError::Refused(
            response.error.unwrap_or_else(|| "no reason given".into()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A command run right after `imm-daemon run` sees the lock held before the socket
    /// is bound; it waits a moment instead of calling the daemon "not answering".
    #[test]
    fn a_client_waits_for_the_socket_of_a_daemon_still_starting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("imm-daemon.sock");
        let bind_at = path.clone();
        let daemon = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(400));
            let listener = std::os::unix::net::UnixListener::bind(&bind_at).unwrap();
            let (stream, _) = listener.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&stream).read_line(&mut line).unwrap();
            let mut w = &stream;
            let answer = format!(
                "{{\"v\":{PROTOCOL_VERSION},\"daemon\":\"test\",\"ok\":true,\"data\":{{\"asked\":{}}}}}\n",
                line.trim()
            );
            w.write_all(answer.as_bytes()).unwrap();
        });
        let data = request(&path, Command::Status, Duration::from_secs(5)).unwrap();
        assert_eq!(data["asked"]["cmd"], "status");
        daemon.join().unwrap();
        // A socket that never appears is still an error, after the grace (no longer than
        // the caller's timeout).
        let started = std::time::Instant::now();
        let missing = dir.path().join("never.sock");
        assert!(request(&missing, Command::Status, Duration::from_secs(1)).is_err());
        assert!(started.elapsed() >= Duration::from_secs(1));
    }

    #[test]
    fn requests_are_checked_and_errors_say_why() {
        assert_eq!(
            parse_request(r#"{"v": 1, "cmd": "cycle-now"}"#).unwrap(),
            Command::CycleNow
        );
        let err = |line: &str| parse_request(line).unwrap_err().error.unwrap();
        assert!(err("status").contains("not JSON"));
        assert!(err(r#"{"cmd": "status"}"#).contains("no protocol version"));
        let e = err(r#"{"v": 2, "cmd": "status"}"#);
        assert!(
            e.contains("version 2 is not supported") && e.contains("speaks 1"),
            "{e}"
        );
        let e = err(r#"{"v": 1, "cmd": "explode"}"#);
        assert!(
            e.contains("explode") && e.contains("commands: status"),
            "{e}"
        );
        assert!(err(&format!("\"{}\"", "x".repeat(MAX_LINE + 1))).contains("longer than"));
    }

    #[test]
    fn responses_of_another_version_are_refused() {
        let p = Path::new("/run/x.sock");
        assert_eq!(
            parse_response(p, "{\"v\":1,\"ok\":true,\"data\":{\"a\":1}}\n").unwrap(),
            serde_json::json!({"a": 1})
        );
        let e = parse_response(
            p,
            "{\"v\":2,\"daemon\":\"0.9.0\",\"ok\":false,\"error\":\"x\"}\n",
        )
        .unwrap_err();
        assert!(matches!(e, ControlError::Version { theirs: 2, .. }), "{e}");
        assert!(
            e.to_string().contains("version 2") && e.to_string().contains("(0.9.0)"),
            "{e}"
        );
        let e = parse_response(p, "{\"v\":1,\"ok\":false,\"error\":\"busy\"}").unwrap_err();
        assert_eq!(e.to_string(), "the daemon refused: busy");
        let e = parse_response(p, "").unwrap_err();
        assert!(e.to_string().contains("closed without an answer"), "{e}");
        let e = parse_response(p, "{\"ok\":true}").unwrap_err();
        assert!(e.to_string().contains("no protocol version"), "{e}");
    }
}
