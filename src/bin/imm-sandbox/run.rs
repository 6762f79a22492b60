//! `imm-sandbox run`: the emulated tenant, the console and the daemon, until Ctrl-C.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use futures_util::StreamExt as _;
use imm_emulators::{
    ExchangeOptions, ExchangeServer, GraphOptions, GraphServer, IdentityOptions, IdentityProvider,
    TEST_CLIENT_ID, synthetic_tenant,
};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use imm_daemon::paths;

use crate::RunArgs;
use crate::console::{self, INFO_FILE, Info, Sandbox};
use crate::daemon::{self, DaemonCli};

/// How often the daemon's status is read.
const POLL: Duration = Duration::from_millis(500);
/// How long `imm-daemon stop` may take before the daemon is killed.
const STOP_WITHIN: Duration = Duration::from_secs(30);

/// The sandbox's home: a temporary folder removed on exit, or one the person keeps.
enum Home {
    Temporary(tempfile::TempDir),
    Kept(PathBuf),
}

impl Home {
    fn path(&self) -> &Path {
        match self {
            Home::Temporary(t) => t.path(),
            Home::Kept(p) => p,
        }
    }

    fn prepare(args: &RunArgs) -> anyhow::Result<Home> {
        let Some(dir) = &args.home else {
            let t = tempfile::Builder::new()
                .prefix("imm-sandbox-")
                .tempdir()
                .context("cannot create a temporary home")?;
            return Ok(Home::Temporary(t));
        };
        let dir = std::path::absolute(dir)
            .with_context(|| format!("--home {}: not a usable path", dir.display()))?;
        if dir.exists() {
            // Only a new or empty folder, or one a sandbox made: never a person's real
            // home, whose queue a running daemon would send through Microsoft.
            let empty = std::fs::read_dir(&dir)
                .with_context(|| format!("--home {}: cannot be read", dir.display()))?
                .next()
                .is_none();
            if !empty && !dir.join(MARKER).is_file() {
                bail!(
                    "--home {}: the folder is not empty and imm-sandbox did not make it \
                     (it leaves {MARKER} in the homes it makes); give a new or empty folder",
                    dir.display()
                );
            }
        } else {
            paths::ensure_private_dir(&dir)?;
        }
        Ok(Home::Kept(dir))
    }
}

/// The file that marks a folder as a sandbox's home.
const MARKER: &str = ".imm-sandbox";

/// Holds `sandbox.lock` in the home for the whole run: one sandbox per home.
fn lock_home(home: &Path) -> anyhow::Result<std::fs::File> {
    let path = home.join("sandbox.lock");
    let file = paths::open_private(&path)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "--home {}: a sandbox already runs there; stop it first",
            home.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

/// Prints a line; a terminal that went away (SIGHUP, a closed pipe) is not an error.
pub fn out(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

/// 32 bytes from the system's random source, as hex.
fn random_hex() -> anyhow::Result<String> {
    use std::io::Read as _;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("cannot read /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// The configuration: what a real one holds, with the emulators' URLs and shorter
/// intervals so that a minute shows every duty.
fn config_text(s: &Sandbox, key_file: &Path, webhook: &str) -> String {
    format!(
        "# Written by imm-sandbox: imm-daemon against an emulated Microsoft 365 tenant on\n\
         # 127.0.0.1. Every setting is one a real configuration can have; only the URLs\n\
         # point at the emulators, and a few intervals are short so that a minute shows\n\
         # the whole heartbeat.\n\
         client_id = \"{TEST_CLIENT_ID}\"\n\
         authority = {authority}\n\
         graph_url = {graph}\n\
         exchange_url = {exchange}\n\
         \n\
         [heartbeat]\n\
         # A cycle every 10 s (default 5 minutes).\n\
         interval = \"10s\"\n\
         \n\
         [auth]\n\
         # The AES-256-GCM token file under a key made for this sandbox: your keychain is\n\
         # not used.\n\
         token_store = \"file\"\n\
         key_file = {key_file}\n\
         \n\
         [mail]\n\
         # A small bucket, so the pacing shows: 3 mails at most per cycle, a token every 5 s.\n\
         capacity = 3\n\
         refill_every = \"5s\"\n\
         \n\
         [sync]\n\
         source = \"exchange\"\n\
         schedule = \"*/5 * * * *\"\n\
         # Every mailbox's size in the first sync (the default spreads them over cycles).\n\
         statistics_per_cycle = 100000\n\
         \n\
         [notify]\n\
         # The sandbox's console receives every event (login_required with the code,\n\
         # login_succeeded, holds_released, ...).\n\
         webhook = {webhook}\n",
        authority = toml_str(&s.identity.authority()),
        graph = toml_str(&s.graph.base_url()),
        exchange = toml_str(&s.exchange.base_url()),
        key_file = toml_str(&key_file.to_string_lossy()),
        webhook = toml_str(webhook),
    )
}

/// A path as a shell word.
fn shell_word(p: &Path) -> String {
    let s = p.to_string_lossy();
    let plain = s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+:,@%".contains(c));
    if plain {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let bin = daemon::find(args.daemon.as_deref())?;
    let home = Home::prepare(&args)?;
    let _lock = lock_home(home.path())?;
    paths::write_atomic(&home.path().join(MARKER), b"imm-sandbox\n")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let result = runtime.block_on(run_in(&args, bin, home.path()));
    drop(runtime);
    match home {
        Home::Temporary(t) if args.keep => {
            let kept = t.keep();
            out(&format!("kept {}", kept.display()));
        }
        Home::Temporary(t) => {
            let path = t.path().to_path_buf();
            if let Err(e) = t.close() {
                eprintln!("imm-sandbox: could not remove {}: {e}", path.display());
            }
        }
        Home::Kept(_) => {}
    }
    result
}

async fn run_in(args: &RunArgs, bin: PathBuf, home: &Path) -> anyhow::Result<ExitCode> {
    let started = std::time::Instant::now();
    let mut signals = signal_hook_tokio::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ])
    .context("cannot watch signals")?;

    let identity = IdentityProvider::start(IdentityOptions {
        app_name: "imm-daemon (sandbox)".to_string(),
        // The console (under its key) approves codes; no unkeyed controls on the port.
        control_routes: false,
        ..IdentityOptions::default()
    })
    .await
    .context("cannot start the emulated identity platform")?;
    let graph = GraphServer::start(GraphOptions {
        token_checker: Some(identity.token_checker()),
        ..GraphOptions::default()
    })
    .await
    .context("cannot start the emulated Graph")?;
    let exchange = ExchangeServer::start(
        ExchangeOptions {
            token_checker: Some(identity.token_checker()),
            ..ExchangeOptions::default()
        },
        synthetic_tenant(args.mailboxes as usize, args.seed),
    )
    .await
    .context("cannot start the emulated Exchange admin endpoint")?;

    let cli = DaemonCli {
        bin,
        home: home.to_path_buf(),
    };
    let sandbox = Arc::new(Sandbox::new(
        identity,
        graph,
        exchange,
        cli.clone(),
        started,
    ));

    // The console, under a key.
    let key = random_hex()?[..32].to_string();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port))
        .await
        .with_context(|| format!("cannot listen on 127.0.0.1:{}", args.port))?;
    let console_base = format!("http://{}/{key}", listener.local_addr()?);
    let app = console::routes(Arc::clone(&sandbox), &key);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    // The home: configuration, token key, where the sandbox is.
    let config_dir = home.join("config");
    paths::ensure_private_dir(&config_dir)?;
    let key_file = config_dir.join("token.key");
    if !key_file.exists() {
        paths::write_atomic(&key_file, random_hex()?.as_bytes())?;
    }
    let config = config_text(&sandbox, &key_file, &format!("{console_base}/hook"));
    paths::write_atomic(&config_dir.join("config.toml"), config.as_bytes())?;
    let info = Info {
        console: console_base.clone(),
        pid: std::process::id(),
        identity: sandbox.identity.base_url(),
        graph: sandbox.graph.base_url(),
        exchange: sandbox.exchange.base_url(),
        started_at: chrono::Utc::now(),
    };
    paths::write_atomic(&home.join(INFO_FILE), &serde_json::to_vec_pretty(&info)?)?;

    out(&format!(
        "imm-sandbox: imm-daemon against an emulated Microsoft 365 tenant on 127.0.0.1\n\
         \x20 identity   {}\n\
         \x20 graph      {}\n\
         \x20 exchange   {}  ({} inactive mailboxes)\n\
         \x20 console    {console_base}/\n\
         \x20 home       {}  (your own configuration, database and keychain are not touched)\n\
         \n\
         In another terminal, point every imm-daemon command at the sandbox:\n\
         \n\
         \x20 export IMM_HOME={}\n\
         \n\
         then try imm-daemon status, mailboxes list/stats/changes, send, queue list,\n\
         audit verify; and scenarios such as imm-sandbox throttle graph. Ctrl-C stops.\n",
        info.identity,
        info.graph,
        info.exchange,
        args.mailboxes,
        home.display(),
        shell_word(home),
    ));

    if let Err(problem) = cli.summary(&["config", "check"], None).await {
        bail!("the daemon refuses the sandbox's configuration: {problem}");
    }
    if args.mails > 0 {
        match sandbox.queue_mails(args.mails).await {
            Ok(done) => sandbox.say(done),
            Err(e) => bail!("imm-daemon send failed: {e}"),
        }
    }

    let mut child = cli.spawn_run()?;
    let pid = child.id().unwrap_or(0);
    let log_path = home.join("daemon.log");
    copy_log(&mut child, &log_path, args.verbose)?;
    sandbox.say(format!(
        "started imm-daemon run (pid {pid}); its log: {}",
        log_path.display()
    ));

    // The first sign-in, as a person makes it: `imm-daemon login` shows a device code
    // and waits; the daemon takes the tokens from the shared token store.
    sign_in(&sandbox);

    let mut narrator = Narrator::new(args.approve, args.mails);
    let mut poll = tokio::time::interval(POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let code = loop {
        tokio::select! {
            signal = signals.next() => {
                let name = match signal {
                    Some(signal_hook::consts::SIGINT) => "Ctrl-C",
                    Some(signal_hook::consts::SIGHUP) => "SIGHUP",
                    _ => "SIGTERM",
                };
                sandbox.say(format!("{name}: stopping the daemon (Ctrl-C again kills it)"));
                break stop(&sandbox, &mut child, &mut signals).await;
            }
            exited = child.wait() => {
                let how = match exited {
                    Ok(s) => s.to_string(),
                    Err(e) => e.to_string(),
                };
                sandbox.say(format!("the daemon exited on its own ({how}); see {}", log_path.display()));
                print_log_tail(&log_path);
                break ExitCode::FAILURE;
            }
            _ = poll.tick() => {
                let status = cli.status().await;
                narrator.observe(&sandbox, status.as_ref());
                sandbox.set_status(status);
            }
        }
    };
    let _ = std::fs::remove_file(home.join(INFO_FILE));
    Ok(code)
}

/// Runs `imm-daemon login` in the background, as a person would; it tells the running
/// daemon, which takes the sign-in at once.
fn sign_in(sandbox: &Arc<Sandbox>) {
    let s = Arc::clone(sandbox);
    tokio::spawn(async move {
        s.say("imm-daemon login: asking the identity platform for a device code");
        match s.daemon.output(&["login"], None).await {
            Ok(out) if out.status.success() => {
                let text = String::from_utf8_lossy(&out.stdout);
                let line = text
                    .lines()
                    .find(|l| l.starts_with("Signed in"))
                    .unwrap_or("signed in");
                s.say(format!("imm-daemon login: {line}"));
            }
            Ok(out) => {
                let text = String::from_utf8_lossy(&out.stderr);
                s.say(format!(
                    "imm-daemon login failed: {}; run `imm-daemon login` in another terminal \
                     (after the export line) to try again",
                    text.trim()
                ));
            }
            Err(e) => s.say(format!("cannot run imm-daemon login: {e:#}")),
        }
    });
}

/// Copies the daemon's output to `daemon.log` (and the terminal when verbose).
fn copy_log(child: &mut tokio::process::Child, path: &Path, verbose: bool) -> anyhow::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let file = opts
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    let file = Arc::new(tokio::sync::Mutex::new(tokio::fs::File::from_std(file)));
    let stdout = child
        .stdout
        .take()
        .map(|o| Box::new(o) as Box<dyn tokio::io::AsyncRead + Unpin + Send>);
    let stderr = child
        .stderr
        .take()
        .map(|e| Box::new(e) as Box<dyn tokio::io::AsyncRead + Unpin + Send>);
    for pipe in [stdout, stderr].into_iter().flatten() {
        let file = Arc::clone(&file);
        tokio::spawn(async move {
            let mut lines = BufReader::new(pipe).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if verbose {
                    out(&format!("  daemon | {line}"));
                }
                let mut f = file.lock().await;
                let _ = f.write_all(line.as_bytes()).await;
                let _ = f.write_all(b"\n").await;
                let _ = f.flush().await;
            }
        });
    }
    Ok(())
}

fn print_log_tail(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    for line in &lines[lines.len().saturating_sub(15)..] {
        eprintln!("  daemon | {line}");
    }
}

/// Stops the daemon as a person would (`imm-daemon stop`), then kills it if it does not
/// go; a second signal kills it at once.
async fn stop(
    sandbox: &Sandbox,
    child: &mut tokio::process::Child,
    signals: &mut signal_hook_tokio::Signals,
) -> ExitCode {
    let stopping = async {
        let asked = sandbox.daemon.summary(&["stop"], None).await;
        if let Err(e) = &asked {
            sandbox.say(format!("imm-daemon stop failed ({e}); sending SIGTERM"));
            if let Some(pid) = child.id() {
                daemon::terminate(pid);
            }
        }
        child.wait().await
    };
    let outcome = tokio::select! {
        done = tokio::time::timeout(STOP_WITHIN, stopping) => done.ok().and_then(Result::ok),
        _ = signals.next() => None,
    };
    match outcome {
        Some(status) if status.success() => {
            sandbox.say("the daemon stopped; the emulators stop now");
            ExitCode::SUCCESS
        }
        Some(status) => {
            sandbox.say(format!("the daemon stopped with {status}"));
            ExitCode::FAILURE
        }
        None => {
            sandbox.say("killing the daemon");
            let _ = child.kill().await;
            ExitCode::FAILURE
        }
    }
}

/// Turns the daemon's status into the story told on the terminal and the page.
struct Narrator {
    approve: bool,
    mails: u32,
    running: bool,
    codes_seen: Vec<String>,
    signed_in: Option<String>,
    last_sync: Option<String>,
    delivered: usize,
    healthy_told: bool,
    health: Option<String>,
    signin_state: Option<String>,
}

impl Narrator {
    fn new(approve: bool, mails: u32) -> Narrator {
        Narrator {
            approve,
            mails,
            running: false,
            codes_seen: Vec::new(),
            signed_in: None,
            last_sync: None,
            delivered: 0,
            healthy_told: false,
            health: None,
            signin_state: None,
        }
    }

    fn observe(&mut self, s: &Sandbox, status: Option<&(i32, Value)>) {
        // Device codes the daemon waits on, from the provider (the daemon's own view of
        // them follows in its status and the hook).
        for code in s.identity.pending_user_codes() {
            if self.codes_seen.contains(&code) {
                continue;
            }
            self.codes_seen.push(code.clone());
            s.say(format!(
                "sign-in: a person opens {} and enters {code}",
                s.identity.verification_uri()
            ));
            if self.approve {
                if s.identity.approve(&code) {
                    s.say(format!("approved {code} (--approve)"));
                }
            } else {
                s.say("  (or press Approve on the console page, or run `imm-sandbox approve`)");
            }
        }

        let delivered = s.graph.deliveries().total;
        if delivered > self.delivered {
            let queued = status
                .and_then(|(_, st)| st["queue"]["queued"].as_u64())
                .map(|q| format!(", {q} still queued"))
                .unwrap_or_default();
            s.say(format!(
                "Graph delivered {} mail(s) ({delivered} in all{queued})",
                delivered - self.delivered
            ));
            self.delivered = delivered;
        }

        let Some((code, st)) = status else { return };
        if st["running"].as_bool() == Some(true) && !self.running {
            self.running = true;
            s.say("the daemon is running");
        }
        let state = st["signin"]["state"].as_str().map(str::to_string);
        if state != self.signin_state {
            match (state.as_deref(), st["signin"]["account"].as_str()) {
                (Some("signed_in"), Some(account)) => {
                    s.say(format!("signed in as {account}"));
                    self.signed_in = Some(account.to_string());
                }
                (Some(other), _) => {
                    let why = st["signin"]["required_reason"]
                        .as_str()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default();
                    let state = match other {
                        "signed_out" => "nobody is signed in yet",
                        "sign_in_required" => "a person must sign in again",
                        other => other,
                    };
                    s.say(format!("sign-in: {state}{why}"));
                }
                _ => {}
            }
            self.signin_state = state;
        }
        let last_sync = st["sync"]["last_ok_at"].as_str().map(str::to_string);
        let syncing = !st["sync"]["in_progress"].is_null();
        if !syncing && last_sync.is_some() && last_sync != self.last_sync {
            let f = &st["sync"]["last"]["figures"];
            s.say(format!(
                "inventory synced from Exchange: {} inactive mailboxes cached ({} added, {} changed, {} removed)",
                st["cache"]["mailboxes"],
                f["added"].as_u64().unwrap_or(0),
                f["changed"].as_u64().unwrap_or(0),
                f["removed"].as_u64().unwrap_or(0),
            ));
            self.last_sync = last_sync;
        }
        let health = st["health"].as_str().map(str::to_string);
        if !self.healthy_told && *code == 0 && self.signed_in.is_some() && self.last_sync.is_some()
        {
            self.healthy_told = true;
            s.say(format!(
                "healthy after {:.1} s: signed in, inventory synced, {} of {} mail(s) delivered; \
                 the rest follow as the bucket allows",
                s.started.elapsed().as_secs_f64(),
                self.delivered,
                self.mails
            ));
        } else if self.healthy_told && health != self.health {
            s.say(format!(
                "health: {} (imm-daemon status exits {code})",
                health.as_deref().unwrap_or("unknown")
            ));
        }
        self.health = health;
    }
}
