//! The real `imm-daemon` binary, run in the sandbox's home: the daemon itself and the
//! commands a person would type (`status`, `send`, `sync`, `stop`).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

/// Variables of the sandbox's own environment that must not reach the daemon: another
/// configuration or token key, a service manager's sockets, proxies and certificate
/// bundles (the emulators are plain HTTP on loopback), and log settings.
const WITHHELD: &[&str] = &[
    "IMM_CONFIG",
    "IMM_TOKEN_PASSPHRASE",
    "CREDENTIALS_DIRECTORY",
    "NOTIFY_SOCKET",
    "JOURNAL_STREAM",
    "LISTEN_FDS",
    "LISTEN_PID",
    "RUST_LOG",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
];

/// Finds the daemon: as given, else beside this executable (where `cargo install` puts
/// both), else on PATH.
pub fn find(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        if p.is_file() {
            return Ok(p.to_path_buf());
        }
        bail!("--daemon {}: no such file", p.display());
    }
    let name = format!("imm-daemon{}", std::env::consts::EXE_SUFFIX);
    if let Ok(me) = std::env::current_exe()
        && let Some(dir) = me.parent()
    {
        let beside = dir.join(&name);
        if beside.is_file() {
            return Ok(beside);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(&name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    bail!(
        "imm-daemon was found neither beside imm-sandbox nor on PATH; install both with \
         `cargo install --locked --path .` in a clone, or name it with --daemon"
    )
}

/// `imm-daemon` confined to one home.
#[derive(Debug, Clone)]
pub struct DaemonCli {
    pub bin: PathBuf,
    pub home: PathBuf,
}

impl DaemonCli {
    /// The binary with `args`, confined to the home, in a process group of its own so
    /// that a Ctrl-C in the sandbox's terminal reaches only the sandbox, which stops the
    /// daemon once and in order.
    pub fn command<I, S>(&self, args: I) -> tokio::process::Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = tokio::process::Command::new(&self.bin);
        c.args(args)
            .env("IMM_HOME", &self.home)
            .env("NO_COLOR", "1")
            .env("COLUMNS", "100")
            .stdin(Stdio::null());
        for var in WITHHELD {
            c.env_remove(var);
        }
        #[cfg(unix)]
        c.process_group(0);
        c.kill_on_drop(true);
        c
    }

    /// Runs a command to its end, feeding `stdin` when given.
    pub async fn output(&self, args: &[&str], stdin: Option<&[u8]>) -> anyhow::Result<Output> {
        let mut c = self.command(args);
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        if stdin.is_some() {
            c.stdin(Stdio::piped());
        }
        let mut child = c
            .spawn()
            .with_context(|| format!("cannot run {}", self.bin.display()))?;
        if let Some(bytes) = stdin
            && let Some(mut pipe) = child.stdin.take()
        {
            pipe.write_all(bytes).await?;
            drop(pipe);
        }
        Ok(child.wait_with_output().await?)
    }

    /// A command's outcome in one line: its first line of output, else of its error.
    pub async fn summary(&self, args: &[&str], stdin: Option<&[u8]>) -> Result<String, String> {
        match self.output(args, stdin).await {
            Ok(out) => {
                let first = |b: &[u8]| {
                    String::from_utf8_lossy(b)
                        .lines()
                        .map(str::trim)
                        .find(|l| !l.is_empty())
                        .map(str::to_string)
                };
                if out.status.success() {
                    let line = first(&out.stdout).or_else(|| first(&out.stderr));
                    Ok(line.unwrap_or_else(|| "done".to_string()))
                } else {
                    let line = first(&out.stderr).or_else(|| first(&out.stdout));
                    let line = line.unwrap_or_else(|| out.status.to_string());
                    Err(line.strip_prefix("error: ").unwrap_or(&line).to_string())
                }
            }
            Err(e) => Err(format!("{e:#}")),
        }
    }

    /// `imm-daemon status --json`: its exit code and report. `None` when it could not be
    /// run or printed no report.
    pub async fn status(&self) -> Option<(i32, Value)> {
        let run = self.output(&["status", "--json"], None);
        let out = tokio::time::timeout(Duration::from_secs(15), run)
            .await
            .ok()?
            .ok()?;
        let report = serde_json::from_slice(&out.stdout).ok()?;
        Some((out.status.code().unwrap_or(-1), report))
    }

    /// Starts `imm-daemon run`, its output piped. On Linux the daemon is also told to
    /// stop (SIGTERM) if the sandbox dies without stopping it (`kill -9`).
    #[allow(unsafe_code)]
    pub fn spawn_run(&self) -> anyhow::Result<tokio::process::Child> {
        let mut c = self.command(["run"]);
        c.env("IMM_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        #[cfg(target_os = "linux")]
        {
            let parent = std::process::id();
            // SAFETY: prctl and getppid are async-signal-safe and touch no memory of the
            // parent; they run in the forked child before exec.
            unsafe {
                c.pre_exec(move || {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                        return Err(std::io::Error::last_os_error());
                    }
                    // The sandbox died between the fork and prctl: no signal will come.
                    if libc::getppid() as u32 != parent {
                        return Err(std::io::Error::other("the sandbox exited"));
                    }
                    Ok(())
                });
            }
        }
        c.spawn()
            .with_context(|| format!("cannot start {} run", self.bin.display()))
    }
}

/// Sends SIGTERM: the daemon's own orderly stop, without its control socket.
#[allow(unsafe_code)]
pub fn terminate(pid: u32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill has no memory effects; the pid is our child's, not yet reaped.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
}
