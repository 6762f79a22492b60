//! The daemon end to end: the real binary started with `run` in a temporary IMM_HOME,
//! driven with signals.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{Env, days_ago_ms, record};

/// A running `imm-daemon run`, killed if a test fails before stopping it.
pub(crate) struct Daemon {
    child: Option<Child>,
    /// Where its stderr goes (a file, so that a chatty daemon never blocks on a pipe).
    pub(crate) log: std::path::PathBuf,
}

impl Daemon {
    pub(crate) fn start(env: &Env) -> Daemon {
        let log = env
            .home
            .path()
            .join(format!("daemon-{}.log", unique_suffix()));
        let child = env
            .std_cmd()
            .arg("run")
            .env("IMM_HOME", env.home.path())
            .env_remove("IMM_CONFIG")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("IMM_TOKEN_PASSPHRASE")
            .env_remove("CREDENTIALS_DIRECTORY")
            .env("IMM_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("the daemon starts");
        Daemon {
            child: Some(child),
            log,
        }
    }

    /// Its log so far.
    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many times `text` is in its log so far.
    pub(crate) fn logged(&self, text: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .matches(text)
            .count()
    }

    /// Waits until `text` is in its log more than `before` times (20 s at most).
    pub(crate) fn wait_for_log(&self, text: &str, before: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.logged(text) <= before {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {text:?} in the log: {}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub(crate) fn signal(&self, name: &str) {
        send_signal(self.pid(), name);
    }

    /// Waits for the process to exit; returns its exit code and stderr.
    pub(crate) fn wait(&mut self, within: Duration) -> (Option<i32>, String) {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return (status.code(), std::fs::read_to_string(&self.log).unwrap());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the daemon did not exit within {within:?}: {}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Sends signal `name` (`TERM`, `USR1`, …) with the shell's `kill`, which every POSIX
/// shell has built in.
fn send_signal(pid: u32, name: &str) {
    let ok = Command::new("sh")
        .args(["-c", &format!("kill -{name} {pid}")])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{name} {pid}");
}

/// A name part no two daemons of one test process share.
fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}

/// Seconds from now until the RFC 3339 time in `v`.
fn secs_until(v: &Value) -> i64 {
    let t = chrono::DateTime::parse_from_rfc3339(v.as_str().expect("a time")).unwrap();
    (t.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_seconds()
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn state(env: &Env) -> Option<Value> {
    let text = std::fs::read_to_string(env.home.path().join("state/daemon-state.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// Polls the state file until `pred` holds.
pub(crate) fn wait_for_state(env: &Env, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(s) = state(env)
            && pred(&s)
        {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {:?}",
            state(env)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub(crate) fn operations(env: &Env) -> Vec<(String, String)> {
    env.json(&["audit", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["operation"].as_str().unwrap().to_string(),
                r["result"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

pub(crate) fn config(env: &Env, text: &str) {
    let p = env.config_file();
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

pub(crate) fn running(s: &Value) -> bool {
    s["phase"] == "running"
}

/// The daemon starts itself again, in the same process, with glibc's per-thread cache
/// off (`memory::exec_without_thread_cache`): its environment then says so, a tunable
/// the user set is kept beside it, and a `tcache_count` the user chose stands. It does
/// not start again under a preloaded library (a profiler's), nor a second time: a
/// process started again whose tunables glibc dropped (as it does for set-user-id
/// programs) runs on.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn the_daemon_runs_with_glibcs_thread_cache_off_and_keeps_the_users_tunables() {
    let off = "glibc.malloc.tcache_count=0";
    struct Case {
        tunables: Option<&'static str>,
        extra: Vec<(&'static str, &'static str)>,
        holds: Vec<&'static str>,
        lacks: Vec<&'static str>,
    }
    for case in [
        Case {
            tunables: None,
            extra: vec![],
            holds: vec![off, "IMM_DAEMON_RESTARTED=-"],
            lacks: vec![],
        },
        Case {
            tunables: Some("glibc.malloc.trim_threshold=131072"),
            extra: vec![],
            holds: vec![
                "glibc.malloc.trim_threshold=131072",
                off,
                "IMM_DAEMON_RESTARTED==glibc.malloc.trim_threshold=131072",
            ],
            lacks: vec![],
        },
        Case {
            tunables: Some("glibc.malloc.tcache_count=2"),
            extra: vec![],
            holds: vec!["glibc.malloc.tcache_count=2"],
            lacks: vec![off, "IMM_DAEMON_RESTARTED"],
        },
        // A profiler's library preloaded (here the C library itself, which changes
        // nothing else).
        Case {
            tunables: None,
            extra: vec![("LD_PRELOAD", "libc.so.6")],
            holds: vec![],
            lacks: vec![off, "IMM_DAEMON_RESTARTED"],
        },
        // Started again already, the tunables gone: no third start, no loop.
        Case {
            tunables: None,
            extra: vec![("IMM_DAEMON_RESTARTED", "-")],
            holds: vec![],
            lacks: vec![off],
        },
    ] {
        let given = (case.tunables, &case.extra);
        let env = Env::new();
        config(&env, "[heartbeat]\ninterval = \"1h\"\n");
        let mut cmd = env.std_cmd();
        cmd.arg("run")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("GLIBC_TUNABLES")
            .env_remove("LD_PRELOAD")
            .env_remove("IMM_DAEMON_RESTARTED")
            .envs(case.extra.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(g) = case.tunables {
            cmd.env("GLIBC_TUNABLES", g);
        }
        let mut child = cmd.spawn().expect("the daemon starts");
        let s = wait_for_state(&env, "the first cycle", |s| running(s) && s["cycles"] == 1);
        // The same process, started again: the pid the daemon reports is the child's,
        // and it keeps its name.
        assert_eq!(s["pid"], child.id());
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", child.id())).unwrap();
        assert_eq!(comm.trim_end(), "imm-daemon");
        // The environment the process was started with (`/proc/PID/environ` shows it as
        // it was at the start again; the tunables put back afterwards are in the C
        // library's copy, which the sign-in hook test sees). glibc may cut the tunables
        // apart in place as it reads them (2.36 writes a NUL over each `:`), so each
        // tunable is looked for on its own.
        let environ = std::fs::read(format!("/proc/{}/environ", child.id())).unwrap();
        let environ = String::from_utf8_lossy(&environ);
        for t in &case.holds {
            assert!(environ.contains(t), "given {given:?}: {t} missing");
        }
        for t in &case.lacks {
            assert!(!environ.contains(t), "given {given:?}: {t} set");
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[test]
fn runs_cycles_on_signals_reloads_safely_and_stops_cleanly() {
    let env = Env::new();
    config(&env, "[heartbeat]\ninterval = \"1h\"\n");
    let mut daemon = Daemon::start(&env);
    // The first cycle runs at start.
    let s = wait_for_state(&env, "the first cycle", |s| running(s) && s["cycles"] == 1);
    assert_eq!(s["pid"], daemon.pid());
    assert_eq!(s["heartbeat_secs"], 3600);
    assert_eq!(s["last_cycle"]["trigger"], "heartbeat");
    assert_eq!(s["last_cycle"]["ok"], true);
    // Sign-in is not configured, no mail is queued and there is no mailbox source:
    // those steps are idle.
    assert_eq!(s["last_cycle"]["steps"][0]["step"], "sign_in");
    assert_eq!(s["last_cycle"]["steps"][0]["status"], "idle");
    assert_eq!(s["last_cycle"]["steps"][1]["step"], "mail");
    assert_eq!(s["last_cycle"]["steps"][1]["status"], "idle");
    assert_eq!(s["last_cycle"]["steps"][2]["step"], "mailbox_sync");
    assert_eq!(s["last_cycle"]["steps"][2]["status"], "idle");
    assert_eq!(s["last_cycle"]["steps"][3]["step"], "store_maintenance");
    assert_eq!(s["last_cycle"]["steps"][3]["status"], "ok");

    // status: running and healthy.
    let out = env.cmd().args(["status", "--json"]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["health"], "healthy");
    assert_eq!(st["running"], true);
    assert_eq!(st["pid"], daemon.pid());
    assert_eq!(st["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(st["heartbeat_secs"], 3600);
    assert_eq!(st["last_cycle"]["ok"], true);
    assert!(st["next_cycle_at"].is_string());
    assert_eq!(st["cache"]["mailboxes"], 0);
    let text = env.ok(&["status"]);
    assert!(text.contains("running (healthy), pid"), "{text}");
    assert!(text.contains("store_maintenance: ok"), "{text}");

    // A second instance is refused while the first holds the lock.
    let err = env.fails(&["run"], 75);
    assert!(
        err.contains("already running") && err.contains(&daemon.pid().to_string()),
        "{err}"
    );

    // SIGUSR1 runs a cycle now; the heartbeat restarts from it.
    daemon.signal("USR1");
    let s = wait_for_state(&env, "the signalled cycle", |s| s["cycles"] == 2);
    assert_eq!(s["last_cycle"]["trigger"], "signal");
    let next = secs_until(&s["next_cycle_at"]);
    assert!((3590..=3600).contains(&next), "next cycle in {next} s");

    // SIGHUP with a broken configuration keeps the old one; the daemon keeps working.
    config(&env, "[heartbeat]\ninterval = \"1s\"\n");
    daemon.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !operations(&env).contains(&("RELOAD_CONFIG".into(), "failure".into())) {
        assert!(
            Instant::now() < deadline,
            "no failed reload: {:?}",
            operations(&env)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    daemon.signal("USR1");
    let s = wait_for_state(&env, "a cycle after the failed reload", |s| {
        s["cycles"] == 3
    });
    assert_eq!(s["heartbeat_secs"], 3600, "the old configuration stays");
    // A valid one is taken.
    config(&env, "[heartbeat]\ninterval = \"2h\"\n");
    daemon.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !operations(&env).contains(&("RELOAD_CONFIG".into(), "success".into())) {
        assert!(
            Instant::now() < deadline,
            "no reload: {:?}",
            operations(&env)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The new interval is in effect: the next heartbeat is two hours away.
    let s = wait_for_state(&env, "the new schedule", |s| s["heartbeat_secs"] == 7200);
    let next = secs_until(&s["next_cycle_at"]);
    assert!((7190..=7200).contains(&next), "next cycle in {next} s");
    daemon.signal("USR1");
    wait_for_state(&env, "a cycle after the reload", |s| {
        s["cycles"] == 4 && s["heartbeat_secs"] == 7200
    });

    // SIGTERM: exit 0, a stopped state file, CONNECT and DISCONNECT in the audit log.
    daemon.signal("TERM");
    let (code, stderr) = daemon.wait(Duration::from_secs(15));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("imm-daemon stopped"), "{stderr}");
    let s = state(&env).unwrap();
    assert_eq!(s["phase"], "stopped");
    assert_eq!(s["cycles"], 4);
    let ops = operations(&env);
    assert_eq!(ops.first().unwrap().0, "CONNECT", "{ops:?}");
    assert_eq!(ops.last().unwrap().0, "DISCONNECT", "{ops:?}");
    // The cycles are in the history.
    let conn = rusqlite::Connection::open(env.db()).unwrap();
    let n: i64 = conn
        .query_row("SELECT count(*) FROM cycles WHERE ok = 1", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 4);
    env.ok(&["audit", "verify"]);
    // status: not running, stopped cleanly, last cycle still reported.
    let out = env.cmd().args(["status", "--json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    let st: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["health"], "not_running");
    assert_eq!(st["stopped_cleanly"], true);
    assert_eq!(st["cycles"], 4);
    assert_eq!(st["last_cycle"]["trigger"], "signal");
    let text = String::from_utf8(env.cmd().arg("status").output().unwrap().stdout).unwrap();
    assert!(text.contains("not running (stopped cleanly)"), "{text}");
}

#[test]
fn status_of_a_daemon_that_never_ran_writes_nothing() {
    let env = Env::new();
    let out = env.cmd().arg("status").output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("imm-daemon   not running"), "{text}");
    assert!(text.contains("no database yet"), "{text}");
    assert!(!env.db().exists());
    assert!(!env.home.path().join("state").exists());
}

#[test]
fn a_killed_daemon_leaves_a_lock_the_next_start_recovers() {
    let env = Env::new();
    let mut daemon = Daemon::start(&env);
    let first = wait_for_state(&env, "start", |s| running(s) && s["cycles"] == 1);
    daemon.signal("KILL");
    let (code, _) = daemon.wait(Duration::from_secs(10));
    assert_eq!(code, None, "killed by a signal");
    assert!(Path::new(&env.home.path().join("run/imm-daemon.lock")).exists());
    // The state file still says running: status will tell a crash from a stop by the lock.
    assert!(running(&state(&env).unwrap()));

    let out = env.cmd().arg("status").output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("did not stop cleanly"), "{text}");

    let mut again = Daemon::start(&env);
    wait_for_state(&env, "restart", |s| {
        running(s) && s["pid"] != first["pid"] && s["cycles"] == 1
    });
    // The daemon answers status itself, so a damaged state file does not matter…
    let state_file = env.home.path().join("state/daemon-state.json");
    std::fs::write(&state_file, "{\"version\": 1").unwrap();
    let st: Value = serde_json::from_str(&env.ok(&["status", "--json"])).unwrap();
    assert_eq!(st["health"], "healthy");
    assert_eq!(st["cycle_running"], false);
    // …but when it does not answer either, the health cannot be told.
    let socket = env.home.path().join("run/imm-daemon.sock");
    std::fs::rename(&socket, env.home.path().join("moved.sock")).unwrap();
    let out = env.cmd().args(["status", "--json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(4));
    let st: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["health"], "unknown");
    assert!(
        st["state_error"].as_str().unwrap().contains("damaged"),
        "{st}"
    );
    assert!(
        st["control_error"]
            .as_str()
            .unwrap()
            .contains("not answering"),
        "{st}"
    );
    std::fs::rename(env.home.path().join("moved.sock"), &socket).unwrap();
    // The next cycle rewrites the state file.
    again.signal("USR1");
    wait_for_state(&env, "a rewritten state file", |s| s["cycles"] == 2);
    env.ok(&["status"]);
    again.signal("INT");
    let (code, stderr) = again.wait(Duration::from_secs(15));
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn an_invalid_configuration_at_start_is_fatal() {
    let env = Env::new();
    config(&env, "[heartbeat]\ninterval = \"1s\"\n");
    let err = env.fails(&["run"], 78);
    assert!(err.contains("between 10s and 1day"), "{err}");
    assert!(state(&env).is_none());
}

#[test]
fn logs_can_be_json() {
    let env = Env::new();
    let mut child = env
        .std_cmd()
        .args(["run", "--log-format", "json"])
        .env("IMM_HOME", env.home.path())
        .env_remove("IMM_LOG")
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    wait_for_state(&env, "start", |s| running(s) && s["cycles"] == 1);
    send_signal(pid, "TERM");
    let out = {
        let deadline = Instant::now() + Duration::from_secs(15);
        while child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().unwrap()
    };
    assert!(out.status.success());
    let text = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "imm-daemon running" && l["level"] == "INFO"),
        "{text}"
    );
}

/// Runs the daemon through one cycle with stderr written to a file of the test's, with
/// `extra` in its environment (`JOURNAL_STREAM`: `Some(true)` naming that file,
/// `Some(false)` naming another), and returns what it logged.
fn logs_to_a_file(journal: Option<bool>, extra: &[(&str, &str)]) -> String {
    use std::os::unix::fs::MetadataExt;
    let env = Env::new();
    let path = env.home.path().join("stderr.log");
    let file = std::fs::File::create(&path).unwrap();
    let meta = file.metadata().unwrap();
    let mut cmd = env.std_cmd();
    cmd.args(["run"])
        .env("IMM_HOME", env.home.path())
        .env("IMM_LOG", "info")
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM")
        .env_remove("NO_COLOR")
        .stderr(Stdio::from(file));
    match journal {
        Some(true) => cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino())),
        Some(false) => cmd.env(
            "JOURNAL_STREAM",
            format!("{}:{}", meta.dev(), meta.ino() + 1),
        ),
        None => &mut cmd,
    };
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    wait_for_state(&env, "start", |s| running(s) && s["cycles"] == 1);
    send_signal(child.id(), "TERM");
    assert!(child.wait().unwrap().success());
    std::fs::read_to_string(&path).unwrap()
}

/// Under systemd, journald reads each line's priority from its `<N>` prefix and keeps
/// its own time; anywhere but a terminal, lines carry no colour codes.
#[test]
fn logs_fit_the_journal_and_plain_files() {
    let journal = logs_to_a_file(Some(true), &[]);
    let lines: Vec<&str> = journal.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("<6>imm-daemon running pid=")),
        "{journal}"
    );
    let dated = |l: &str| {
        let b = l.as_bytes();
        b.len() > 10 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-' && b[10] == b'T'
    };
    assert!(
        lines.iter().all(|l| {
            let rest = l.strip_prefix("<6>").or_else(|| l.strip_prefix("<4>"));
            rest.is_some_and(|r| !dated(r))
        }),
        "every line has a priority and no timestamp: {journal}"
    );
    assert!(!journal.contains('\u{1b}'), "{journal}");

    // A file that is not the journal stream (stderr redirected inside a unit), and a
    // file with no journal at all: timestamped plain lines, no colour.
    for (journal, extra) in [
        (Some(false), &[][..]),
        (None, &[][..]),
        (None, &[("NO_COLOR", "1")][..]),
    ] {
        let text = logs_to_a_file(journal, extra);
        assert!(!text.contains('\u{1b}'), "{text}");
        assert!(!text.starts_with('<'), "{text}");
        assert!(text.lines().all(dated), "every line is timestamped: {text}");
        assert!(
            text.lines()
                .any(|l| l.contains(" INFO ") && l.contains("imm-daemon running")),
            "{text}"
        );
    }
}

#[test]
fn tells_systemd_ready_status_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let env = Env::new();
    let sock_path = env.home.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut child = env
        .std_cmd()
        .arg("run")
        .env("IMM_HOME", env.home.path())
        .env("NOTIFY_SOCKET", &sock_path)
        // An armed watchdog (systemd sets this from WatchdogSec=): pinged every cycle.
        .env("WATCHDOG_USEC", "3600000000")
        .env_remove("WATCHDOG_PID")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut messages = Vec::new();
    let mut recv = |until: &str| {
        let mut buf = [0u8; 4096];
        loop {
            let n = sock.recv(&mut buf).expect("a notification in time");
            let m = String::from_utf8_lossy(&buf[..n]).to_string();
            messages.push(m.clone());
            if m.contains(until) {
                return m;
            }
        }
    };
    recv("READY=1");
    let status = recv("STATUS=");
    assert!(
        status.contains("STATUS=last cycle") && status.contains("ok"),
        "{status}"
    );
    send_signal(child.id(), "TERM");
    recv("STOPPING=1");
    assert!(child.wait().unwrap().success());
    assert!(
        messages.iter().any(|m| m.contains("WATCHDOG=1")),
        "the watchdog is pinged: {messages:?}"
    );
}

#[test]
fn the_control_socket_runs_cycles_reloads_and_stops() {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixStream;
    let env = Env::new();
    config(&env, "[heartbeat]\ninterval = \"1h\"\n");
    let mut daemon = Daemon::start(&env);
    wait_for_state(&env, "start", |s| running(s) && s["cycles"] == 1);
    let socket = env.home.path().join("run/imm-daemon.sock");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&socket), 0o600);
        assert_eq!(mode(socket.parent().unwrap()), 0o700);
    }

    // `cycle` goes through the daemon and prints its summary.
    let summary: Value = serde_json::from_str(&env.ok(&["cycle", "--json"])).unwrap();
    assert_eq!(summary["trigger"], "request");
    assert_eq!(summary["ok"], true);
    assert_eq!(state(&env).unwrap()["cycles"], 2);
    let text = env.ok(&["cycle"]);
    assert!(
        text.contains(": ok") && text.contains("store_maintenance: ok: checkpoint"),
        "{text}"
    );

    // The protocol: a client of another version is told so; nonsense is answered too.
    let ask = |line: &str| -> Value {
        let mut s = UnixStream::connect(&socket).unwrap();
        s.write_all(line.as_bytes()).unwrap();
        let mut answer = String::new();
        BufReader::new(&s).read_line(&mut answer).unwrap();
        serde_json::from_str(&answer).unwrap()
    };
    let a = ask("{\"v\": 2, \"cmd\": \"status\"}\n");
    assert_eq!(a["ok"], false);
    assert!(
        a["error"]
            .as_str()
            .unwrap()
            .contains("version 2 is not supported"),
        "{a}"
    );
    let a = ask("hello\n");
    assert!(a["error"].as_str().unwrap().contains("not JSON"), "{a}");
    let a = ask("{\"v\": 1, \"cmd\": \"status\"}\n");
    assert_eq!(a["ok"], true);
    assert_eq!(a["v"], 1);
    assert_eq!(a["data"]["state"]["pid"], daemon.pid());

    // reload through the socket: refused with the reason, then taken.
    config(&env, "[heartbeat]\ninterval = 3\n");
    let a = ask("{\"v\": 1, \"cmd\": \"reload\"}\n");
    assert_eq!(a["ok"], false);
    assert!(
        a["error"]
            .as_str()
            .unwrap()
            .contains("between 10s and 1day"),
        "{a}"
    );
    config(&env, "[heartbeat]\ninterval = 60\n");
    let a = ask("{\"v\": 1, \"cmd\": \"reload\"}\n");
    assert_eq!(a["data"]["heartbeat_secs"], 60, "{a}");

    // `stop` waits for the daemon to exit.
    let text = env.ok(&["stop"]);
    assert!(text.contains("imm-daemon stopped"), "{text}");
    let (code, stderr) = daemon.wait(Duration::from_secs(5));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!socket.exists(), "the socket is removed on exit");
    assert_eq!(state(&env).unwrap()["phase"], "stopped");
    // Without a daemon: stop says so (exit 3) and cycle runs here.
    let out = env.cmd().arg("stop").output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stdout).contains("not running"));
    let summary: Value = serde_json::from_str(&env.ok(&["cycle", "--json"])).unwrap();
    assert_eq!(summary["trigger"], "request");
    let conn = rusqlite::Connection::open(env.db()).unwrap();
    let n: i64 = conn
        .query_row(
            "SELECT count(*) FROM cycles WHERE trigger = 'request'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 3);
}

/// The export a scheduled task would keep current, with the mailboxes named by `n`.
fn write_export(env: &Env, names: &[u32]) -> std::path::PathBuf {
    let records: Vec<Value> = names
        .iter()
        .map(|n| {
            record(
                &format!("{n:08}-0000-4000-8000-000000000000"),
                &format!("User {n}"),
                &format!("user{n}@contoso.com"),
                days_ago_ms(40),
            )
        })
        .collect();
    env.write("inactive.json", serde_json::to_vec(&records).unwrap())
}

fn status_json(env: &Env) -> (Option<i32>, Value) {
    let out = env.cmd().args(["status", "--json"]).output().unwrap();
    (
        out.status.code(),
        serde_json::from_slice(&out.stdout).unwrap(),
    )
}

fn job<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["name"] == name)
        .unwrap_or_else(|| panic!("no job {name} in {status}"))
}

#[test]
fn syncs_the_cache_at_start_and_on_request_and_a_failing_sync_shows_without_stopping_the_loop() {
    let env = Env::new();
    let export = write_export(&env, &[1, 2, 3]);
    config(
        &env,
        &format!(
            "[heartbeat]\ninterval = \"1h\"\n[schedule]\ntimezone = \"UTC\"\n\
             [sync]\nschedule = \"0 0 1 1 *\"\nexport = {:?}\n",
            export.display().to_string()
        ),
    );
    // Down, never synced: status plans the sync for the daemon's start.
    let (code, st) = status_json(&env);
    assert_eq!(code, Some(3));
    assert_eq!(job(&st, "mailbox_sync")["enabled"], true);
    assert!(
        secs_until(&job(&st, "mailbox_sync")["next_run_at"]) <= 0,
        "{st}"
    );

    let mut daemon = Daemon::start(&env);
    // A sync that never ran is due at once: the first cycle fills the cache.
    let s = wait_for_state(&env, "the first cycle", |s| running(s) && s["cycles"] == 1);
    let sync = &s["last_cycle"]["steps"][2];
    assert_eq!(sync["step"], "mailbox_sync");
    assert_eq!(sync["status"], "ok", "{s}");
    assert_eq!(sync["counts"]["mailboxes"], 3);
    assert_eq!(env.count("SELECT count(*) FROM inactive_mailboxes"), 3);
    let (code, st) = status_json(&env);
    assert_eq!(code, Some(0), "{st}");
    assert_eq!(st["cache"]["mailboxes"], 3);
    assert_eq!(st["cache"]["stale"], false);
    assert!(st["cache"]["last_sync_at"].is_string(), "{st}");
    let j = job(&st, "mailbox_sync");
    assert_eq!(j["schedule"], "0 0 1 1 *");
    assert_eq!(j["timezone"], "UTC");
    assert_eq!(j["last_run"]["ok"], true);
    assert!(
        secs_until(&j["next_run_at"]) > 86_400,
        "next run next January: {j}"
    );
    assert_eq!(job(&st, "audit_prune")["schedule"], "30 3 * * *");

    // A heartbeat (here: a requested cycle) with the sync not due leaves the cache alone.
    write_export(&env, &[1, 2]);
    let out = env.ok(&["cycle", "--json"]);
    let c: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(c["steps"][2]["status"], "idle", "{c}");
    assert_eq!(env.count("SELECT count(*) FROM inactive_mailboxes"), 3);

    // `sync` asks the daemon: the snapshot drops the mailbox no longer exported.
    let out = env.ok(&["sync"]);
    assert!(
        out.contains("mailbox_sync: ok: loaded 2 mailbox(es)"),
        "{out}"
    );
    assert!(out.contains("removed 1 no longer in it"), "{out}");
    assert_eq!(env.count("SELECT count(*) FROM inactive_mailboxes"), 2);
    assert_eq!(
        env.count("SELECT count(*) FROM audit_log WHERE operation = 'MAILBOX_REMOVED'"),
        1
    );

    // A damaged export: the sync fails, the cache keeps what it had, the daemon goes on
    // and status asks for attention.
    std::fs::write(&export, b"[{\"ExchangeGuid\": ").unwrap();
    let out = env.cmd().args(["sync"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("mailbox_sync: FAILED (1 in a row)"), "{text}");
    assert!(
        text.contains("inactive.json"),
        "the error names the file: {text}"
    );
    assert!(
        text.contains("store_maintenance: ok"),
        "the other steps ran: {text}"
    );
    assert_eq!(env.count("SELECT count(*) FROM inactive_mailboxes"), 2);
    let (code, st) = status_json(&env);
    assert_eq!(code, Some(1), "{st}");
    assert_eq!(st["health"], "attention");
    assert_eq!(st["last_cycle"]["steps"][2]["status"], "failed");
    let j = job(&st, "mailbox_sync");
    assert_eq!(j["last_run"]["ok"], false);
    assert_eq!(j["last_run"]["failures"], 1);
    assert!(j["last_run"]["last_ok_at"].is_string());
    let human = env.cmd().arg("status").output().unwrap();
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(
        human.contains("mailbox_sync: \"0 0 1 1 *\" (UTC), next ")
            && human.contains("FAILED (1 in a row)"),
        "{human}"
    );
    assert!(
        operations(&env).contains(&("IMPORT_MAILBOXES".into(), "failure".into())),
        "the failed load is audited"
    );

    // Fixed: the sync stays due after its failure, so the next cycle retries it, even a
    // plain one, and health returns.
    write_export(&env, &[1, 2, 4]);
    let out = env.ok(&["cycle"]);
    assert!(out.contains("mailbox_sync: ok: loaded 3"), "{out}");
    let (code, st) = status_json(&env);
    assert_eq!(code, Some(0), "{st}");
    assert_eq!(job(&st, "mailbox_sync")["last_run"]["failures"], 0);

    daemon.signal("TERM");
    let (code, log) = daemon.wait(Duration::from_secs(15));
    assert_eq!(code, Some(0), "{log}");
}

#[test]
fn scheduled_jobs_fire_on_their_cron_expressions() {
    let env = Env::new();
    let export = write_export(&env, &[7]);
    // Every second for pruning, every two for the sync; a day's retention prunes nothing
    // younger, so the chain stays whole.
    config(
        &env,
        &format!(
            "[heartbeat]\ninterval = \"1h\"\n[sync]\nschedule = \"*/2 * * * * *\"\n\
             export = {:?}\n[audit]\nretention = \"1d\"\nprune_schedule = \"* * * * * *\"\n",
            export.display().to_string()
        ),
    );
    let mut daemon = Daemon::start(&env);
    let s = wait_for_state(&env, "a scheduled cycle", |s| {
        s["last_cycle"]["trigger"] == "schedule" && s["cycles"].as_u64() >= Some(2)
    });
    assert_eq!(s["last_cycle"]["steps"][2]["status"], "ok", "{s}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let st = loop {
        let (_, st) = status_json(&env);
        if job(&st, "audit_prune")["last_run"]["ok"] == true {
            break st;
        }
        assert!(Instant::now() < deadline, "pruning never ran: {st}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(st["health"], "healthy", "{st}");
    let prune = job(&st, "audit_prune");
    assert!(
        prune["last_run"]["summary"]
            .as_str()
            .unwrap()
            .starts_with("pruned 0 audit row(s) older than 1day"),
        "{prune}"
    );
    assert!(secs_until(&prune["next_run_at"]) <= 1, "{prune}");
    daemon.signal("TERM");
    let (code, log) = daemon.wait(Duration::from_secs(15));
    assert_eq!(code, Some(0), "{log}");
    assert!(
        operations(&env).contains(&("AUDIT_PRUNE".into(), "success".into())),
        "pruning is audited"
    );
    env.ok(&["audit", "verify"]);
}

/// Polls `status --json` until `pred` holds.
fn wait_for_status(env: &Env, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, st) = status_json(env);
        if pred(&st) {
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {st}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_sync_stuck_on_its_source_times_out_and_never_holds_up_status_or_a_stop() {
    let env = Env::new();
    // A pipe no one writes to stands for an export on a hung network share: opening it
    // blocks for good.
    let fifo = env.home.path().join("stuck.json");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let write_config = |timeout: &str| {
        config(
            &env,
            &format!(
                "[heartbeat]\ninterval = \"1h\"\n[daemon]\nshutdown_grace = \"5s\"\n\
                 [sync]\nschedule = \"0 0 1 1 *\"\nexport = {:?}\ntimeout = \"{timeout}\"\n",
                fifo.display().to_string()
            ),
        )
    };
    write_config("1s");
    let mut daemon = Daemon::start(&env);
    // The first cycle's sync gives up after its timeout; the cycle ends, the daemon runs on.
    let s = wait_for_state(&env, "the first cycle", |s| s["cycles"] == 1);
    let sync = &s["last_cycle"]["steps"][2];
    assert_eq!(sync["status"], "failed", "{s}");
    assert!(
        sync["error"]
            .as_str()
            .unwrap()
            .contains("could not be read within 1s"),
        "{sync}"
    );
    assert_eq!(s["last_cycle"]["steps"][3]["status"], "ok");
    let (code, _) = status_json(&env);
    assert_eq!(code, Some(1), "a failing sync needs attention");
    // The timed-out read's thread is still blocked: a retry says so at once instead of
    // blocking a second thread.
    let out = env.cmd().arg("sync").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("is still not readable"), "{text}");
    // The share comes back (a writer opens the pipe and closes it): the blocked read ends.
    drop(std::fs::OpenOptions::new().write(true).open(&fifo).unwrap());

    // With a long timeout, a requested cycle hangs in the read, and status still answers
    // from the live daemon while it does.
    write_config("1h");
    daemon.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !operations(&env).contains(&("RELOAD_CONFIG".into(), "success".into())) {
        assert!(Instant::now() < deadline, "the reload never happened");
        std::thread::sleep(Duration::from_millis(50));
    }
    daemon.signal("USR1");
    let st = wait_for_status(&env, "the stuck cycle", |st| st["cycle_running"] == true);
    assert_eq!(st["running"], true);
    assert!(st["control_error"].is_null(), "{st}");

    // A stop abandons the read (nothing was written) and exits cleanly, well within the
    // grace period.
    let asked = Instant::now();
    daemon.signal("TERM");
    let (code, log) = daemon.wait(Duration::from_secs(15));
    assert_eq!(code, Some(0), "{log}");
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
    let s = state(&env).unwrap();
    assert_eq!(s["phase"], "stopped");
    assert_eq!(operations(&env).last().unwrap().0, "DISCONNECT");
    let (code, st) = status_json(&env);
    assert_eq!(code, Some(3));
    // Still due: the next start tries again.
    assert!(
        secs_until(&job(&st, "mailbox_sync")["next_run_at"]) <= 0,
        "{st}"
    );
}

#[test]
fn a_stop_blocked_in_the_database_still_ends_and_a_second_signal_ends_it_at_once() {
    let env = Env::new();
    let export = write_export(&env, &[1, 2]);
    let write_config = |grace: &str| {
        config(
            &env,
            &format!(
                "[heartbeat]\ninterval = \"1h\"\n[daemon]\nshutdown_grace = \"{grace}\"\n\
                 [sync]\nschedule = \"0 0 1 1 *\"\nexport = {:?}\n",
                export.display().to_string()
            ),
        )
    };
    // Starts a daemon, takes the database's write lock and asks for a sync: the sync
    // reads its export, then waits for the lock inside SQLite (up to 10 s), and the
    // supervisor with it. Returns the daemon, the lock and the waiting client once the
    // daemon has logged that it writes the export (no await comes between that line
    // and the write).
    let writing = "writing them to the cache";
    let blocked_daemon = || {
        let daemon = Daemon::start(&env);
        wait_for_state(&env, "the first cycle", |s| {
            running(s) && s["cycles"] == 1 && s["pid"] == daemon.pid()
        });
        let conn = env.open_db();
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        // The first cycle's sync wrote one already.
        let writes_before = daemon.logged(writing);
        let client = env
            .std_cmd()
            .arg("sync")
            .env("IMM_HOME", env.home.path())
            .env_remove("IMM_CONFIG")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        daemon.wait_for_log(writing, writes_before);
        (daemon, conn, client)
    };

    // One signal: the grace period (1 s) passes with the supervisor blocked, and the stop
    // deadline ends the process a second later, long before SQLite would give up.
    write_config("1s");
    let (mut daemon, conn, mut client) = blocked_daemon();
    let asked = Instant::now();
    daemon.signal("TERM");
    let (code, log) = daemon.wait(Duration::from_secs(15));
    let took = asked.elapsed();
    assert_eq!(code, Some(1), "{log}");
    assert!(took < Duration::from_secs(7), "{took:?}");
    assert!(
        log.contains("did not stop within its shutdown grace period"),
        "{log}"
    );
    let _ = client.wait();
    drop(conn);
    // Nothing half-written: the sync's transaction never committed, the chain is whole,
    // and status knows the stop was not clean.
    assert_eq!(env.count("SELECT count(*) FROM inactive_mailboxes"), 2);
    env.ok(&["audit", "verify"]);
    let out = env.cmd().arg("status").output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stdout).contains("did not stop cleanly"));

    // Two signals: the second ends it at once, without waiting out a long grace period.
    write_config("30s");
    let (mut daemon, conn, mut client) = blocked_daemon();
    daemon.signal("TERM");
    // Not two signals pending at once (the kernel would merge them): the second goes
    // once the stop deadline's thread has seen the first, after its handler ran.
    daemon.wait_for_log("stop signal received", 0);
    let asked = Instant::now();
    daemon.signal("TERM");
    let (code, log) = daemon.wait(Duration::from_secs(15));
    assert_eq!(code, Some(1), "{log}");
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
    let _ = client.wait();
    drop(conn);
    // The lock the killed daemon held does not block the next start.
    let mut daemon = Daemon::start(&env);
    wait_for_state(&env, "a fresh start", |s| {
        running(s) && s["pid"] == daemon.pid() && s["cycles"] == 1
    });
    daemon.signal("TERM");
    let (code, log) = daemon.wait(Duration::from_secs(15));
    assert_eq!(code, Some(0), "{log}");
}

/// `stats` answers from the tallies an earlier `stats` kept, beside a daemon of this
/// build too; beside a daemon whose state file does not name this build's schema (one of
/// an older build, which writes without starting a new generation of the table) it counts
/// every time and keeps nothing, and trusts the kept tallies again once it has stopped.
#[test]
fn stats_trust_kept_tallies_only_beside_a_daemon_of_this_schema() {
    let env = Env::new();
    env.import(&[
        record(
            "11111111-1111-4111-8111-111111111111",
            "Ada",
            "ada@contoso.com",
            days_ago_ms(40),
        ),
        record(
            "22222222-2222-4222-8222-222222222222",
            "Grace",
            "grace@contoso.com",
            days_ago_ms(400),
        ),
    ]);
    let tallies = |env: &Env| {
        let v = env.json(&["mailboxes", "stats"]);
        assert_eq!(v["count"], 2, "{v}");
        v["cache"]["tallies"].as_str().unwrap().to_string()
    };
    // The import counted and kept them.
    assert_eq!(tallies(&env), "kept");
    let mut daemon = Daemon::start(&env);
    let s = wait_for_state(&env, "start", |s| running(s) && s["cycles"] == 1);
    assert!(s["schema_version"].as_i64().is_some(), "{s}");
    assert_eq!(tallies(&env), "kept");
    // The state file of an older build's daemon: no schema version.
    let state_file = env.home.path().join("state/daemon-state.json");
    let mut older = s.clone();
    older.as_object_mut().unwrap().remove("schema_version");
    std::fs::write(&state_file, older.to_string()).unwrap();
    assert_eq!(tallies(&env), "counted");
    assert_eq!(tallies(&env), "counted", "nothing kept beside it");
    daemon.signal("TERM");
    let (code, _) = daemon.wait(Duration::from_secs(10));
    assert_eq!(code, Some(0));
    assert_eq!(tallies(&env), "kept");
}
