//! `imm-sandbox` end to end: the real sandbox binary starts the emulators and the real
//! daemon; the tests drive it as a person would (its scenario subcommands, `imm-daemon`
//! pointed at its home, SIGINT) and read the effects in `status`, the audit log, the
//! notification hook's events and the emulators' own record of what they served.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::skip_unless_ci;

/// A running `imm-sandbox` and what it printed so far.
pub(crate) struct Sandbox {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    pub(crate) home: PathBuf,
    /// The console's base URL (key included), from `sandbox.json`.
    pub(crate) console: String,
    pub(crate) identity: String,
}

/// Variables of the test's environment that must not reach the sandbox or the daemon.
const CLEARED: &[&str] = &[
    "IMM_HOME",
    "IMM_CONFIG",
    "IMM_LOG",
    "IMM_TOKEN_PASSPHRASE",
    "CREDENTIALS_DIRECTORY",
    "IMM_SANDBOX_DAEMON",
    "RUST_LOG",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "http_proxy",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
];

fn sandbox_cmd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_imm-sandbox"));
    for var in CLEARED {
        c.env_remove(var);
    }
    c
}

impl Sandbox {
    pub(crate) fn start(args: &[&str]) -> Sandbox {
        let mut child = sandbox_cmd()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("imm-sandbox starts");
        let lines = Arc::new(Mutex::new(Vec::new()));
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let lines = Arc::clone(&lines);
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
            });
        }
        let mut s = Sandbox {
            child,
            lines,
            home: PathBuf::new(),
            console: String::new(),
            identity: String::new(),
        };
        let export = s.wait_line("the export line", Duration::from_secs(60), |l| {
            l.trim_start().starts_with("export IMM_HOME=")
        });
        s.home = PathBuf::from(export.trim_start().trim_start_matches("export IMM_HOME="));
        let info: Value =
            serde_json::from_str(&std::fs::read_to_string(s.home.join("sandbox.json")).unwrap())
                .unwrap();
        s.console = info["console"].as_str().unwrap().to_string();
        s.identity = info["identity"].as_str().unwrap().to_string();
        s
    }

    /// Waits up to `within` for `f`; a timeout shows what the sandbox printed.
    pub(crate) fn wait_for(&self, what: &str, within: Duration, f: impl Fn() -> bool) {
        let deadline = Instant::now() + within;
        while !f() {
            if Instant::now() >= deadline {
                panic!(
                    "timed out waiting for {what}; the sandbox printed:\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub(crate) fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Waits for a printed line that satisfies `f`; returns it.
    pub(crate) fn wait_line(
        &self,
        what: &str,
        within: Duration,
        f: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(l) = self.lines.lock().unwrap().iter().find(|l| f(l)) {
                return l.clone();
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out waiting for {what}; the sandbox printed:\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub(crate) fn wait_healthy(&self) -> String {
        self.wait_line(
            "the sandbox to report healthy",
            Duration::from_secs(120),
            |l| l.contains("healthy after"),
        )
    }

    /// `imm-daemon ARGS` pointed at the sandbox, as after the printed export line.
    pub(crate) fn daemon(&self, args: &[&str]) -> Output {
        let mut c = Command::new(env!("CARGO_BIN_EXE_imm-daemon"));
        for var in CLEARED {
            c.env_remove(var);
        }
        c.env("IMM_HOME", &self.home).args(args).output().unwrap()
    }

    pub(crate) fn daemon_json(&self, args: &[&str]) -> Value {
        let out = self.daemon(args);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{args:?}: {e}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    pub(crate) fn status(&self) -> (Option<i32>, Value) {
        let out = self.daemon(&["status", "--json"]);
        (
            out.status.code(),
            serde_json::from_slice(&out.stdout).unwrap_or(Value::Null),
        )
    }

    /// `imm-sandbox ARGS` in another terminal: IMM_HOME set from the export line.
    pub(crate) fn scenario(&self, args: &[&str]) -> Output {
        sandbox_cmd()
            .env("IMM_HOME", &self.home)
            .args(args)
            .output()
            .unwrap()
    }

    pub(crate) fn scenario_ok(&self, args: &[&str]) -> String {
        let out = self.scenario(args);
        assert!(
            out.status.success(),
            "imm-sandbox {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The console's JSON view of the emulators and the hook's events.
    pub(crate) fn state(&self) -> Value {
        let (status, body) = http("GET", &format!("{}/api/state", self.console), None);
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    pub(crate) fn hook_events(&self, name: &str) -> Vec<Value> {
        let state = self.state();
        state["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["event"]["event"] == name)
            .map(|e| e["event"].clone())
            .collect()
    }

    pub(crate) fn audit(&self, operation: &str) -> Vec<Value> {
        let rows = self.daemon_json(&[
            "audit",
            "list",
            "--operation",
            operation,
            "--format",
            "json",
        ]);
        rows.as_array().unwrap().clone()
    }

    /// Ctrl-C: SIGINT to the sandbox; its exit status (30 s at most).
    pub(crate) fn interrupt(&mut self) -> ExitStatus {
        signal(self.child.id(), "INT");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the sandbox did not stop after SIGINT:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            signal(self.child.id(), "INT");
            std::thread::sleep(Duration::from_secs(2));
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status();
}

fn alive(pid: u32) -> bool {
    Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Processes whose environment points at `home` (Linux: /proc; elsewhere none are seen).
fn processes_in(home: &Path) -> Vec<u32> {
    let needle = format!("IMM_HOME={}", home.display());
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(env) = std::fs::read(e.path().join("environ"))
            && env.split(|b| *b == 0).any(|v| v == needle.as_bytes())
        {
            found.push(pid);
        }
    }
    found
}

/// One HTTP/1.1 request on loopback (`Connection: close`); the status and the body.
pub(crate) fn http(method: &str, url: &str, body: Option<&str>) -> (u16, String) {
    let (status, _, body) = request(method, url, body);
    (status, body)
}

/// [`http`], with the answer's status line and headers (lower-cased) too.
fn request(method: &str, url: &str, body: Option<&str>) -> (u16, String, String) {
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let mut stream = TcpStream::connect(host).unwrap_or_else(|e| panic!("{url}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    // Read the head, then exactly the body it announces: ChromeDriver keeps the
    // connection open whatever `Connection: close` says.
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        head.push_str(&line);
    }
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let mut payload = Vec::new();
    if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        payload.resize(len, 0);
        reader.read_exact(&mut payload).unwrap();
    } else if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).unwrap();
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            let mut chunk = vec![0; n + 2];
            reader.read_exact(&mut chunk).unwrap();
            if n == 0 {
                break;
            }
            payload.extend_from_slice(&chunk[..n]);
        }
    } else {
        reader.read_to_end(&mut payload).unwrap();
    }
    (
        status,
        head.to_ascii_lowercase(),
        String::from_utf8_lossy(&payload).into_owned(),
    )
}

/// The emulators and their web server live in the sandbox's binary only: the daemon's
/// binary holds none of their code (its symbols would name the crate).
#[test]
fn the_daemon_binary_holds_no_emulator_code() {
    // The standard library's substring search (built optimised) over a lossy copy.
    let contains = |bin: &str, needle: &str| {
        String::from_utf8_lossy(&std::fs::read(bin).unwrap()).contains(needle)
    };
    assert!(contains(env!("CARGO_BIN_EXE_imm-sandbox"), "imm_emulators"));
    assert!(!contains(env!("CARGO_BIN_EXE_imm-daemon"), "imm_emulators"));
    assert!(!contains(env!("CARGO_BIN_EXE_imm-daemon"), "axum"));
}

#[test]
fn the_sandbox_shows_the_whole_heartbeat_and_stops_cleanly_on_ctrl_c() {
    let mut s = Sandbox::start(&["--approve"]);
    let home = s.home.clone();
    let healthy = s.wait_healthy();
    assert!(healthy.contains("signed in, inventory synced"), "{healthy}");

    let (code, st) = s.status();
    assert_eq!(code, Some(0), "{st}");
    assert_eq!(st["health"], "healthy");
    assert_eq!(st["signin"]["state"], "signed_in");
    assert_eq!(
        st["signin"]["account"],
        "adele.vance@contoso.onmicrosoft.com"
    );
    assert_eq!(st["cache"]["mailboxes"], 2000, "the default tenant");
    // Tokens in the encrypted file under the sandbox's own key, not the keychain.
    assert_eq!(st["signin"]["backend"], "file", "{}", st["signin"]);
    let list = s.daemon_json(&["mailboxes", "list", "--format", "json"]);
    assert_eq!(list.as_array().unwrap().len(), 2000);
    let stats = s.daemon(&["mailboxes", "stats"]);
    assert!(stats.status.success());

    // The six queued mails go out as the bucket allows, each exactly once.
    s.wait_for("six deliveries", Duration::from_secs(90), || {
        s.state()["deliveries"]["total"] == 6
    });
    let state = s.state();
    let per: Vec<u64> = state["deliveries"]["per_message"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(per, vec![1; 6], "{state}");
    s.wait_for(
        "the queue to record every mail sent",
        Duration::from_secs(30),
        || {
            let q = s.daemon_json(&["queue", "list", "--format", "json"]);
            q.as_array()
                .unwrap()
                .iter()
                .filter(|m| m["state"] == "sent")
                .count()
                == 6
        },
    );
    // The bucket paced them: no single cycle sent more than its capacity (3).
    let sends = s.audit("SEND_EMAIL");
    assert_eq!(sends.len(), 6);
    let mut per_second = std::collections::BTreeMap::<String, usize>::new();
    for row in &sends {
        let t = row["timestamp"].as_str().unwrap();
        *per_second.entry(t[..19].to_string()).or_default() += 1;
    }
    assert!(
        per_second.len() >= 2 && per_second.values().all(|n| *n <= 3),
        "{per_second:?}"
    );

    let verify = s.daemon(&["audit", "verify"]);
    assert_eq!(verify.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&verify.stdout).contains("intact"));

    let daemon_pid = st["pid"].as_u64().unwrap() as u32;
    assert!(alive(daemon_pid));
    let status = s.interrupt();
    assert_eq!(status.code(), Some(0), "{}", s.output());
    assert!(!alive(daemon_pid), "the daemon outlived the sandbox");
    assert_eq!(
        processes_in(&home),
        Vec::<u32>::new(),
        "processes left behind"
    );
    assert!(!home.exists(), "the temporary home was not removed");
    let out = s.output();
    assert!(out.contains("the daemon stopped"), "{out}");
}

#[test]
fn each_scenario_shows_its_effect_in_status_the_hook_and_the_audit_log() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("sandbox");
    let home_arg = home.to_str().unwrap();
    let mut s = Sandbox::start(&[
        "--approve",
        "--mailboxes",
        "300",
        "--mails",
        "0",
        "--home",
        home_arg,
    ]);
    assert_eq!(s.home, home);
    s.wait_healthy();
    let cached = || s.status().1["cache"]["mailboxes"].as_u64().unwrap_or(0);
    assert_eq!(cached(), 300);

    // Throttled Graph: the daemon waits out Retry-After and sends the mail once.
    let said = s.scenario_ok(&["throttle", "graph", "--requests", "2", "--retry-after", "1"]);
    assert!(said.contains("429"), "{said}");
    s.wait_for("the throttled mail", Duration::from_secs(60), || {
        s.state()["deliveries"]["total"] == 1
    });
    let limited = s.audit("RATE_LIMITED");
    assert!(!limited.is_empty(), "no RATE_LIMITED row");
    assert!(
        limited[0]["details"].to_string().contains("429"),
        "{}",
        limited[0]
    );

    // The duplicate trap: Graph delivers, the answer is lost; the daemon finds the mail
    // in Sent Items instead of sending it again.
    s.scenario_ok(&["lose-answer"]);
    s.wait_for("the second delivery", Duration::from_secs(60), || {
        s.state()["deliveries"]["total"] == 2
    });
    s.wait_for(
        "the lost answer to be settled",
        Duration::from_secs(60),
        || {
            s.audit("SEND_EMAIL")
                .iter()
                .any(|r| r["details"]["found_sent"] == true)
        },
    );
    assert_eq!(s.state()["duplicates"], serde_json::json!([]));

    // A mailbox loses its last hold: the sync reports it and the hook fires.
    let said = s.scenario_ok(&["release-holds"]);
    let guid = said
        .split('(')
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap()
        .to_string();
    s.wait_for("the holds_released hook", Duration::from_secs(60), || {
        !s.hook_events("holds_released").is_empty()
    });
    let event = &s.hook_events("holds_released")[0];
    assert!(
        event["mailboxes"].as_str().unwrap().contains(&guid),
        "{event}"
    );
    let changes = s.daemon_json(&["mailboxes", "changes", "--since", "1h", "--format", "json"]);
    assert!(
        changes
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["identity"] == guid.as_str() && c["change"] == "holds_removed"),
        "{changes}"
    );

    // Mailboxes come and go.
    s.scenario_ok(&["add-mailboxes", "7"]);
    s.wait_for("7 more mailboxes", Duration::from_secs(60), || {
        cached() == 307
    });
    s.scenario_ok(&["remove-mailboxes", "3"]);
    s.wait_for("3 fewer mailboxes", Duration::from_secs(60), || {
        cached() == 304
    });
    assert_eq!(s.audit("MAILBOX_REMOVED").len(), 3);

    // Throttled Exchange: the sync waits and says so.
    let syncs_before = s.audit("SYNC_MAILBOXES").len();
    s.scenario_ok(&[
        "throttle",
        "exchange",
        "--requests",
        "2",
        "--retry-after",
        "1",
    ]);
    s.wait_for("a throttled sync", Duration::from_secs(60), || {
        s.audit("SYNC_MAILBOXES")
            .iter()
            .skip(syncs_before)
            .any(|r| r["details"]["throttled_waits"].as_u64().unwrap_or(0) >= 1)
    });

    // A revoked sign-in: the daemon asks for a person and the hook fires with the code;
    // --approve approves it and the daemon signs in again.
    s.scenario_ok(&["revoke"]);
    s.wait_for("the login_required hook", Duration::from_secs(60), || {
        !s.hook_events("login_required").is_empty()
    });
    let asked = &s.hook_events("login_required")[0];
    assert!(asked["user_code"].as_str().is_some_and(|c| !c.is_empty()));
    assert!(
        asked["reason"].as_str().unwrap().contains("invalid_grant"),
        "{asked}"
    );
    assert!(!s.audit("LOGIN_REQUIRED").is_empty());
    s.wait_for("the new sign-in", Duration::from_secs(60), || {
        s.status().1["signin"]["state"] == "signed_in"
            && !s.hook_events("login_succeeded").is_empty()
    });

    // Mails queued from the other terminal are sent.
    s.scenario_ok(&["queue-mails", "2"]);
    s.wait_for("the queued mails", Duration::from_secs(60), || {
        s.state()["deliveries"]["total"] == 4
    });
    assert_eq!(s.state()["duplicates"], serde_json::json!([]));

    // What cannot be done is said.
    let out = s.scenario(&["release-holds", "nobody@nowhere.example"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no inactive mailbox is named"),
        "{out:?}"
    );
    let out = s.scenario(&["approve"]);
    assert_eq!(out.status.code(), Some(1));

    // A second sandbox on the same home is refused while this one runs.
    let second = sandbox_cmd()
        .args(["--home", home_arg, "--approve"])
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("already runs there"),
        "{second:?}"
    );

    let verify = s.daemon(&["audit", "verify"]);
    assert_eq!(verify.status.code(), Some(0), "{verify:?}");
    assert_eq!(s.interrupt().code(), Some(0));
    // A home given with --home is kept.
    assert!(home.join("data/imm-daemon.db").exists());
}

#[test]
fn scenarios_need_a_running_sandbox_and_a_home_it_did_not_write_is_refused() {
    let out = sandbox_cmd().arg("revoke").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("IMM_HOME is not set"),
        "{out:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let out = sandbox_cmd()
        .args(["sync", "--home", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("start one with `imm-sandbox`"),
        "{out:?}"
    );
    // A person's real home (a configuration the sandbox did not write) is never taken.
    std::fs::create_dir_all(dir.path().join("config")).unwrap();
    std::fs::write(
        dir.path().join("config/config.toml"),
        "tenant = \"contoso.onmicrosoft.com\"\n",
    )
    .unwrap();
    let out = sandbox_cmd()
        .args(["--home", dir.path().to_str().unwrap(), "--approve"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("imm-sandbox did not make it"),
        "{out:?}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("config/config.toml")).unwrap(),
        "tenant = \"contoso.onmicrosoft.com\"\n"
    );
    // Nor one whose configuration lives elsewhere (IMM_CONFIG): any folder that is not
    // empty and that no sandbox made.
    let real = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(real.path().join("data")).unwrap();
    std::fs::write(real.path().join("data/imm-daemon.db"), b"").unwrap();
    let out = sandbox_cmd()
        .args(["--home", real.path().to_str().unwrap(), "--approve"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not empty"),
        "{out:?}"
    );
    assert!(!real.path().join("config").exists());
}

/// The console answers only under its key, the emulated provider offers no unkeyed
/// controls, and nothing the console serves holds a token. SIGTERM stops the sandbox in
/// order; `kill -9` of the sandbox takes its daemon along (Linux: the parent-death
/// signal), so no daemon is left running against emulators that are gone.
#[test]
fn the_console_needs_its_key_and_the_daemon_never_outlives_the_sandbox() {
    let mut s = Sandbox::start(&["--approve", "--mailboxes", "10", "--mails", "0"]);
    s.wait_healthy();
    let port_base = s.console.rsplit_once('/').unwrap().0.to_string();
    for (method, path) in [
        ("GET", "/"),
        ("GET", "/0123456789abcdef0123456789abcdef/"),
        ("GET", "/0123456789abcdef0123456789abcdef/api/state"),
        ("POST", "/0123456789abcdef0123456789abcdef/api/action"),
    ] {
        let (status, _) = http(
            method,
            &format!("{port_base}{path}"),
            Some(r#"{"scenario":"revoke"}"#),
        );
        assert_eq!(status, 404, "{method} {path}");
    }
    for path in ["/_sandbox/pending", "/_sandbox/stats"] {
        let (status, _) = http("GET", &format!("{}{path}", s.identity), None);
        assert_eq!(status, 404, "{path}");
    }
    let (status, _) = http(
        "POST",
        &format!("{}/api/action", s.console),
        Some(r#"{"scenario":"add-mailboxes","count":4000000000}"#),
    );
    assert_eq!(status, 409, "counts are checked as on the command line");
    let (_, state) = http("GET", &format!("{}/api/state", s.console), None);
    let (_, page) = http("GET", &format!("{}/", s.console), None);
    for text in [&state, &page] {
        assert!(
            !text.contains("issued_secrets") && !text.contains("access_token"),
            "{text}"
        );
    }
    assert_eq!(s.status().1["signin"]["state"], "signed_in");

    // SIGTERM: an orderly stop.
    let daemon_pid = s.status().1["pid"].as_u64().unwrap() as u32;
    signal(s.child.id(), "TERM");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "{}", s.output());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0), "{}", s.output());
    assert!(!alive(daemon_pid));

    if cfg!(target_os = "linux") {
        let mut s = Sandbox::start(&["--approve", "--mailboxes", "10", "--mails", "0"]);
        s.wait_healthy();
        let daemon_pid = s.status().1["pid"].as_u64().unwrap() as u32;
        signal(s.child.id(), "KILL");
        let _ = s.child.wait();
        s.wait_for(
            "the orphaned daemon to stop",
            Duration::from_secs(30),
            || !alive(daemon_pid),
        );
    }
}

/// The console page in a real headless Chromium with JavaScript switched off, driven
/// through ChromeDriver (WebDriver over HTTP): every step is plain HTML, links and form
/// posts. The page also holds no script, and its Content-Security-Policy forbids any.
#[test]
fn the_console_page_works_in_a_real_browser_without_javascript() {
    let test = "the_console_page_works_in_a_real_browser_without_javascript";
    let (Some(chromium), Some(driver)) = (
        find_program(&["chromium", "chromium-browser", "google-chrome"]),
        find_program(&["chromedriver"]),
    ) else {
        skip_unless_ci(
            test,
            "no Chromium and ChromeDriver here (Debian: chromium, chromium-driver)",
        );
        return;
    };
    let s = Sandbox::start(&["--mailboxes", "50", "--mails", "1"]);
    let browser = match Browser::start(&chromium, &driver) {
        Ok(b) => b,
        Err(e) => {
            skip_unless_ci(test, &format!("Chromium cannot run here: {e}"));
            return;
        }
    };
    let page = format!("{}/", s.console);

    // The code the daemon waits on, shown on the page; no script anywhere.
    s.wait_for("a code on the page", Duration::from_secs(60), || {
        browser.go(&page);
        browser.find("#user-code").is_some()
    });
    assert_eq!(browser.title(), "imm-daemon sandbox");
    let source = browser.source();
    assert!(
        !source.contains("<script"),
        "the page must work without JavaScript"
    );
    let (_, head, _) = request("GET", &page, None);
    assert!(head.contains("default-src 'none'"), "{head}");
    let shown = browser.text(&browser.find("#user-code").unwrap());
    let pending = s.state()["pending_user_codes"].clone();
    assert_eq!(pending[0], shown.as_str(), "{pending}");

    // Approve: a plain form post; the daemon signs in, syncs and sends. (A click returns
    // before the navigation it starts may have finished: each step waits for the page
    // it leads to before going on.)
    browser.click(&browser.find("#approve").unwrap());
    s.wait_for("the approval on the page", Duration::from_secs(30), || {
        browser
            .text_of("#activity")
            .contains("approved sign-in code")
    });
    assert!(browser.url().starts_with(&page), "{}", browser.url());
    s.wait_healthy();
    s.wait_for("the mail on the page", Duration::from_secs(60), || {
        browser.go(&page);
        browser.text_of("#mails").contains("Sandbox mail 1")
    });
    assert!(browser.text_of("#health").contains("healthy"));
    assert_eq!(browser.text_of("#tenant-count"), "50");
    assert!(browser.find("#no-code").is_some());

    // A scenario button.
    browser.click(&browser.find("#add-mailboxes").unwrap());
    s.wait_for("the scenario on the page", Duration::from_secs(30), || {
        browser
            .text_of("#activity")
            .contains("added 10 inactive mailbox(es)")
    });
    assert_eq!(browser.text_of("#tenant-count"), "60");
    s.wait_for(
        "the daemon's copy to follow",
        Duration::from_secs(60),
        || s.status().1["cache"]["mailboxes"] == 60,
    );

    // Revoke, then sign in again on the emulated sign-in page the console links to,
    // as a person would: the code is filled in, the person presses Sign in.
    browser.click(&browser.find("#revoke").unwrap());
    s.wait_for(
        "the revocation on the page",
        Duration::from_secs(30),
        || browser.text_of("#activity").contains("revoked the sign-in"),
    );
    s.wait_for("a new code on the page", Duration::from_secs(60), || {
        browser.go(&page);
        browser.find("#user-code").is_some()
    });
    assert!(!s.hook_events("login_required").is_empty());
    browser.click(&browser.find("#sign-in-page").unwrap());
    s.wait_for("the sign-in page", Duration::from_secs(30), || {
        browser.url().starts_with(&s.identity) && browser.find("button[value=approve]").is_some()
    });
    browser.click(&browser.find("button[value=approve]").unwrap());
    s.wait_for("the provider to confirm", Duration::from_secs(30), || {
        browser.source().contains("You have signed in")
    });
    s.wait_for(
        "the daemon to sign in again",
        Duration::from_secs(60),
        || s.status().1["signin"]["state"] == "signed_in",
    );
}

fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    names.iter().find_map(|n| {
        std::env::split_paths(&path)
            .map(|d| d.join(n))
            .find(|p| p.is_file())
    })
}

/// A headless Chromium session through ChromeDriver.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    _profile: tempfile::TempDir,
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    fn start(chromium: &Path, driver: &Path) -> Result<Browser, String> {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let driver = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("chromedriver: {e}"))?;
        let base = format!("http://127.0.0.1:{port}");
        let profile = tempfile::tempdir().unwrap();
        let mut b = Browser {
            driver,
            base,
            session: String::new(),
            _profile: profile,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err("chromedriver did not listen".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let caps = serde_json::json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    format!("--user-data-dir={}", b._profile.path().display()),
                ],
                // JavaScript off: everything must work with plain HTML.
                "prefs": {"profile.managed_default_content_settings.javascript": 2},
            },
        }}});
        let (status, body) = http(
            "POST",
            &format!("{}/session", b.base),
            Some(&caps.to_string()),
        );
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        match v["value"]["sessionId"].as_str() {
            Some(id) if status == 200 => {
                b.session = id.to_string();
                Ok(b)
            }
            _ => Err(format!("no session ({status}): {body}")),
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let body = body.map(|b| b.to_string());
        let (_, answer) = http(method, &url, body.as_deref());
        serde_json::from_str::<Value>(&answer).unwrap_or(Value::Null)["value"].clone()
    }

    fn go(&self, url: &str) {
        self.call("POST", "/url", Some(serde_json::json!({ "url": url })));
    }

    fn find(&self, css: &str) -> Option<String> {
        let v = self.call(
            "POST",
            "/element",
            Some(serde_json::json!({"using": "css selector", "value": css})),
        );
        v[ELEMENT].as_str().map(str::to_string)
    }

    fn click(&self, element: &str) {
        self.call(
            "POST",
            &format!("/element/{element}/click"),
            Some(serde_json::json!({})),
        );
    }

    fn text(&self, element: &str) -> String {
        self.call("GET", &format!("/element/{element}/text"), None)
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// The text of the element `css` selects, or "" when there is none.
    fn text_of(&self, css: &str) -> String {
        self.find(css).map(|e| self.text(&e)).unwrap_or_default()
    }

    fn title(&self) -> String {
        self.call("GET", "/title", None)
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    fn url(&self) -> String {
        self.call("GET", "/url", None)
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    fn source(&self) -> String {
        self.call("GET", "/source", None)
            .as_str()
            .unwrap_or("")
            .to_string()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = http(
                "DELETE",
                &format!("{}/session/{}", self.base, self.session),
                None,
            );
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
