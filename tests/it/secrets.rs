//! The keychain for real: `SecretStore` against gnome-keyring in a private D-Bus session,
//! against a Secret Service that never answers, and against a bus that never answers.
//!
//! zbus takes the bus address from the process environment, so each case re-runs this
//! test binary as a child (the ignored `secrets::child` test, told what to do by
//! `IMM_SECRETS_SCENARIO`) inside `dbus-run-session`, with HOME and the XDG folders in a
//! temporary folder so no real keyring is touched.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use imm_daemon::config::TokenStore;
use imm_daemon::secrets::{BackendKind, SecretError, SecretStore, SecretsOptions};

use crate::support;

const SCENARIO: &str = "IMM_SECRETS_SCENARIO";
const DIR: &str = "IMM_SECRETS_DIR";
const ENTRY: &str = "tokens/contoso.onmicrosoft.com/11111111-1111-4111-8111-111111111111";
const SECRET: &[u8] = br#"{"RefreshToken":{"k":{"secret":"0.AXoA-keychain-secret"}}}"#;
const SECRET2: &[u8] = br#"{"RefreshToken":{"k":{"secret":"0.AXoA-rotated-secret"}}}"#;

#[test]
fn keychain_round_trip_in_auto_mode_through_gnome_keyring() {
    if !tools(
        "keychain_round_trip_in_auto_mode_through_gnome_keyring",
        &["dbus-run-session", "dbus-send", "gnome-keyring-daemon"],
    ) {
        return;
    }
    // gnome-keyring-daemon forks before it owns its bus name; wait until it does, or a
    // first call would start a second one through D-Bus activation.
    let script = r#"
echo imm-test-password | gnome-keyring-daemon --unlock --components=secrets >/dev/null 2>&1 || exit 90
i=0
until dbus-send --session --print-reply --dest=org.freedesktop.DBus /org/freedesktop/DBus \
        org.freedesktop.DBus.NameHasOwner string:org.freedesktop.secrets 2>/dev/null | grep -q true; do
    i=$((i + 1))
    if [ "$i" -ge 400 ]; then echo "gnome-keyring-daemon never took its bus name" >&2; exit 91; fi
    sleep 0.05
done
exec "$@"
"#;
    let run = Child::new("roundtrip").in_session(script);
    run.assert_passed();
}

#[test]
fn an_unanswering_secret_service_falls_back_to_the_file_in_time() {
    if !tools(
        "an_unanswering_secret_service_falls_back_to_the_file_in_time",
        &["dbus-run-session"],
    ) {
        return;
    }
    // The stub (this binary again) owns org.freedesktop.secrets and never replies, as a
    // keyring waiting on an unlock prompt nobody sees.
    let script = r#"
IMM_SECRETS_SCENARIO=stub "$@" &
stub=$!
i=0
until [ -e "$IMM_SECRETS_DIR/stub-ready" ]; do
    i=$((i + 1))
    if [ "$i" -ge 400 ] || ! kill -0 "$stub" 2>/dev/null; then
        echo "the stub never took org.freedesktop.secrets" >&2; exit 91
    fi
    sleep 0.05
done
"$@"
status=$?
kill "$stub"
exit "$status"
"#;
    let run = Child::new("no-answer").in_session(script);
    run.assert_passed();
    assert!(run.elapsed < Duration::from_secs(20), "{:?}", run.elapsed);
}

#[test]
fn a_session_bus_that_never_answers_falls_back_to_the_file_in_time() {
    let child = Child::new("no-answer");
    // Connections queue in the backlog and nobody ever speaks: zbus waits in its
    // handshake for good.
    let socket = child.dir.path().join("silent-bus");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let mut cmd = child.command();
    cmd.env(
        "DBUS_SESSION_BUS_ADDRESS",
        format!("unix:path={}", socket.display()),
    );
    let run = child.run(cmd);
    run.assert_passed();
    assert!(run.elapsed < Duration::from_secs(20), "{:?}", run.elapsed);
}

/// Whether every tool `test` needs is on PATH. A missing one is a printed skip, or a
/// failure in CI, which installs them.
fn tools(test: &str, names: &[&str]) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|name| !std::env::split_paths(&path).any(|dir| dir.join(name).is_file()))
        .collect();
    if missing.is_empty() {
        return true;
    }
    support::skip_unless_ci(
        test,
        &format!(
            "{} missing (Debian packages dbus and gnome-keyring)",
            missing.join(", ")
        ),
    );
    false
}

/// One run of the `child` test in a fresh home.
struct Child {
    scenario: &'static str,
    dir: tempfile::TempDir,
}

struct Run {
    scenario: &'static str,
    status: ExitStatus,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

impl Run {
    fn assert_passed(&self) {
        assert!(
            self.status.success() && self.stdout.contains(&passed(self.scenario)),
            "scenario {} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
            self.scenario,
            self.status,
            self.stdout,
            self.stderr
        );
    }
}

fn passed(scenario: &str) -> String {
    format!("scenario {scenario} passed")
}

impl Child {
    fn new(scenario: &'static str) -> Child {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["home", "data", "config", "cache", "run"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            dir.path().join("run"),
            std::fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        Child { scenario, dir }
    }

    /// The test binary running only the `child` test, in an environment of its own.
    fn command(&self) -> Command {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        self.prepare(&mut cmd);
        cmd.args(child_args());
        cmd
    }

    fn prepare(&self, cmd: &mut Command) {
        let d = self.dir.path();
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", d.join("home"))
            .env("XDG_DATA_HOME", d.join("data"))
            .env("XDG_CONFIG_HOME", d.join("config"))
            .env("XDG_CACHE_HOME", d.join("cache"))
            .env("XDG_RUNTIME_DIR", d.join("run"))
            .env("RUST_BACKTRACE", "1")
            .env(SCENARIO, self.scenario)
            .env(DIR, d);
    }

    /// Runs the child inside `dbus-run-session`, through `script` (which gets the child's
    /// command line as its arguments).
    fn in_session(&self, script: &str) -> Run {
        let mut cmd = Command::new("dbus-run-session");
        self.prepare(&mut cmd);
        cmd.args(["--", "sh", "-c", script, "sh"])
            .arg(std::env::current_exe().unwrap())
            .args(child_args());
        self.run(cmd)
    }

    /// Runs `cmd` in a process group of its own, killed as a whole at the end so nothing it
    /// started (a keyring daemon, a stub) outlives the test.
    fn run(&self, mut cmd: Command) -> Run {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = cmd.spawn().unwrap();
        let group = child.id();
        let reader = |mut r: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut s = String::new();
                let _ = r.read_to_string(&mut s);
                s
            })
        };
        let out = reader(Box::new(child.stdout.take().unwrap()));
        let err = reader(Box::new(child.stderr.take().unwrap()));
        let deadline = Duration::from_secs(90);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if started.elapsed() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let elapsed = started.elapsed();
        let _ = Command::new("sh")
            .args(["-c", &format!("kill -9 -{group}")])
            .stderr(Stdio::null())
            .status();
        let status = status.unwrap_or_else(|| {
            let _ = child.wait();
            panic!(
                "scenario {} did not finish within {deadline:?}",
                self.scenario
            )
        });
        Run {
            scenario: self.scenario,
            status,
            stdout: out.join().unwrap(),
            stderr: err.join().unwrap(),
            elapsed,
        }
    }
}

fn child_args() -> [&'static str; 5] {
    [
        "secrets::child",
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ]
}

/// The child side of the tests above; does nothing unless `IMM_SECRETS_SCENARIO` is set.
#[test]
#[ignore = "run by the other secrets tests in a D-Bus session of their own"]
fn child() {
    let Ok(scenario) = std::env::var(SCENARIO) else {
        support::skip(
            "secrets::child",
            "not a test of its own: the other secrets tests run it, telling it what to do",
        );
        return;
    };
    let dir = PathBuf::from(std::env::var_os(DIR).expect("IMM_SECRETS_DIR"));
    match scenario.as_str() {
        "roundtrip" => roundtrip(&dir),
        "no-answer" => no_answer(&dir),
        "stub" => stub(&dir),
        other => panic!("unknown scenario {other}"),
    }
    println!("{}", passed(&scenario));
}

fn options(dir: &Path, choice: TokenStore, timeout: Duration) -> SecretsOptions {
    SecretsOptions {
        choice,
        service: "imm-daemon".into(),
        entry: ENTRY.into(),
        file: dir.join("work/data/tokens.enc"),
        key_dir: dir.join("work/config"),
        key_file: None,
        keychain_timeout: timeout,
    }
}

/// A runtime like the daemon's and the CLI's: one thread.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn roundtrip(dir: &Path) {
    let opts = options(dir, TokenStore::Auto, Duration::from_secs(10));

    // As the daemon runs: shut down in the background at the end.
    let rt = runtime();
    rt.block_on(async {
        let store = SecretStore::open(opts.clone()).await.unwrap();
        let info = store.backend();
        assert_eq!(info.kind, BackendKind::Keychain, "{info:?}");
        assert_eq!(info.why, "token_store = \"auto\" and the keychain answered");
        assert_eq!(
            info.location,
            format!("the Secret Service, service imm-daemon, account {ENTRY}")
        );
        assert_eq!(info.warning, None);
        assert_eq!(store.load().await.unwrap(), None);
        store.save(SECRET).await.unwrap();
        assert_eq!(store.load().await.unwrap().unwrap().as_slice(), SECRET);
        store.save(SECRET2).await.unwrap();
        assert_eq!(store.load().await.unwrap().unwrap().as_slice(), SECRET2);
    });
    rt.shutdown_background();
    assert!(
        !opts.file.exists(),
        "the keychain store never writes the file"
    );

    // What the keychain holds: the base64 of the blob, read without our code and off any
    // runtime, as keyring's blocking Secret Service calls must be.
    let stored = std::thread::spawn(|| {
        keyring::Entry::new("imm-daemon", ENTRY)
            .unwrap()
            .get_password()
            .unwrap()
    })
    .join()
    .unwrap();
    assert_eq!(
        stored,
        base64::engine::general_purpose::STANDARD.encode(SECRET2)
    );
    assert!(!stored.contains("rotated-secret"));

    // As a CLI runs: a fresh runtime, dropped normally.
    let rt = runtime();
    rt.block_on(async {
        let store = SecretStore::open(opts.clone()).await.unwrap();
        assert_eq!(store.load().await.unwrap().unwrap().as_slice(), SECRET2);

        let keychain_only = SecretsOptions {
            choice: TokenStore::Keychain,
            ..opts.clone()
        };
        let k = SecretStore::open(keychain_only).await.unwrap();
        assert_eq!(k.backend().why, "token_store = \"keychain\"");
        assert_eq!(k.load().await.unwrap().unwrap().as_slice(), SECRET2);

        // A stale file from an earlier `file` setup goes at sign-out too.
        let file_only = SecretsOptions {
            choice: TokenStore::File,
            ..opts.clone()
        };
        let f = SecretStore::open(file_only).await.unwrap();
        assert_eq!(f.backend().kind, BackendKind::File);
        f.save(SECRET).await.unwrap();

        let removed = SecretStore::remove_everywhere(&opts).await.unwrap();
        assert_eq!(
            removed,
            [
                "keychain".to_string(),
                format!("file {}", opts.file.display())
            ]
        );
        assert_eq!(store.load().await.unwrap(), None);
        assert_eq!(f.load().await.unwrap(), None);
        assert!(
            SecretStore::remove_everywhere(&opts)
                .await
                .unwrap()
                .is_empty()
        );
    });
    drop(rt);
}

fn no_answer(dir: &Path) {
    let timeout = Duration::from_secs(1);
    let opts = options(dir, TokenStore::Auto, timeout);
    let rt = runtime();

    let started = Instant::now();
    let store = rt.block_on(SecretStore::open(opts.clone())).unwrap();
    let took = started.elapsed();
    let info = store.backend().clone();
    assert_eq!(info.kind, BackendKind::File, "{info:?}");
    assert!(
        info.why.starts_with(
            "keychain did not answer within 1s; the key comes from the generated key file"
        ),
        "{}",
        info.why
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "open took {took:?}"
    );
    rt.block_on(async {
        store.save(SECRET).await.unwrap();
        assert_eq!(store.load().await.unwrap().unwrap().as_slice(), SECRET);
    });

    // The first call still hangs: asking for the keychain alone fails at once.
    let started = Instant::now();
    let keychain_only = SecretsOptions {
        choice: TokenStore::Keychain,
        ..opts.clone()
    };
    let e = rt.block_on(SecretStore::open(keychain_only)).unwrap_err();
    assert!(matches!(e, SecretError::KeychainBusy), "{e}");
    assert!(imm_daemon::error::Classify::kind(&e).retry_may_cure());
    assert!(started.elapsed() < Duration::from_millis(500));

    // Sign-out still removes the file, and says what it could not do.
    let e = rt
        .block_on(SecretStore::remove_everywhere(&opts))
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!(
            "removed file {}, but the keychain did not answer",
            opts.file.display()
        )),
        "{msg}"
    );
    assert!(!opts.file.exists());

    // A runtime dropped normally (as a CLI's) does not wait for the hung keychain thread,
    // and neither does the process's exit (the parent times it).
    let started = Instant::now();
    drop(rt);
    assert!(started.elapsed() < Duration::from_secs(1));
}

/// Owns org.freedesktop.secrets and never answers anything; killed by the session script.
fn stub(dir: &Path) {
    use zbus::fdo::{RequestNameFlags, RequestNameReply};
    let conn = zbus::blocking::Connection::session().unwrap();
    let reply = conn
        .request_name_with_flags(
            "org.freedesktop.secrets",
            RequestNameFlags::DoNotQueue.into(),
        )
        .unwrap();
    assert_eq!(reply, RequestNameReply::PrimaryOwner);
    std::fs::write(dir.join("stub-ready"), b"").unwrap();
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
