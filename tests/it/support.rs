//! Shared helpers: a temporary IMM_HOME, the real binary, export fixtures.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use serde_json::{Value, json};

/// The columns of `inactive_mailboxes` in the original design, which the cache and the
/// JSON output keep.
pub const ORIGINAL_COLUMNS: [&str; 15] = [
    "identity",
    "display_name",
    "primary_smtp",
    "when_soft_deleted",
    "age_days",
    "size_mb",
    "item_count",
    "license_type",
    "monthly_cost",
    "hold_types",
    "recovery_eligible",
    "recovery_blockers",
    "operating_company",
    "department",
    "last_updated",
];

/// Says on the real stderr (which the test harness does not capture) that a test was
/// skipped and why, so a skip never passes unseen as "ok".
pub fn skip(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

/// Polls `f` until it holds (20 s at most).
pub fn wait_until(what: &str, f: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Whether the tests run in CI: `CI` is set (as .ci/run and most CI services set it) and
/// not `0` or `false`. CI installs every tool the tests use, so there a missing one is a
/// failure, not a skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
}

/// A test that cannot run here because of `why`, a tool or service CI installs: a failure
/// in CI ([`in_ci`]), a printed skip elsewhere.
pub fn skip_unless_ci(test: &str, why: &str) {
    assert!(
        !in_ci(),
        "{test}: {why}; CI must install what the tests need (CI is set)"
    );
    skip(test, why);
}

/// Whether this process runs as root (tests of another local user need it).
#[allow(unsafe_code)]
pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A temporary home for one test; every file the program touches lives below it.
pub struct Env {
    pub home: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Env {
        Env {
            home: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// The real binary, confined to this home.
    pub fn cmd(&self) -> Command {
        Command::from_std(self.std_cmd())
    }

    /// [`Env::cmd`] as a standard command, for a test that spawns it and goes on.
    pub fn std_cmd(&self) -> std::process::Command {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_imm-daemon"));
        c.env("IMM_HOME", self.home.path())
            .env_remove("IMM_CONFIG")
            .env_remove("IMM_LOG")
            .env_remove("IMM_TOKEN_PASSPHRASE")
            .env_remove("CREDENTIALS_DIRECTORY")
            .env_remove("RUST_LOG")
            .env_remove("COLUMNS");
        // The machine's proxy and certificate settings must not reach the loopback
        // emulators (a proxy would see the tokens; a bundle could fail every call).
        for var in [
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
        ] {
            c.env_remove(var);
        }
        c
    }

    pub fn db(&self) -> PathBuf {
        self.home.path().join("data/imm-daemon.db")
    }

    pub fn config_file(&self) -> PathBuf {
        self.home.path().join("config/config.toml")
    }

    pub fn write(&self, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
        let p = self.home.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    /// Runs a command expected to succeed and returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs a command expected to fail with `code`; returns stderr.
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.cmd().args(args).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(code),
            "{args:?}: stdout {} stderr {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stderr).unwrap()
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["--format", "json"]);
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    /// Imports a JSON export built from `records`.
    pub fn import(&self, records: &[Value]) {
        let p = self.write("import.json", serde_json::to_vec(records).unwrap());
        self.ok(&["mailboxes", "import", p.to_str().unwrap()]);
    }

    pub fn open_db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.db()).unwrap()
    }

    pub fn count(&self, sql: &str) -> i64 {
        self.open_db().query_row(sql, [], |r| r.get(0)).unwrap()
    }
}

pub const G1: &str = "11111111-1111-4111-8111-111111111111";
pub const G2: &str = "22222222-2222-4222-8222-222222222222";
pub const G3: &str = "33333333-3333-4333-8333-333333333333";

/// A Get-Mailbox record as Windows PowerShell 5.1's ConvertTo-Json writes it.
pub fn record(guid: &str, name: &str, smtp: &str, deleted_ms: i64) -> Value {
    json!({
        "ExchangeGuid": guid,
        "DisplayName": name,
        "PrimarySmtpAddress": smtp,
        "UserPrincipalName": smtp,
        "RecipientTypeDetails": "UserMailbox",
        "IsInactiveMailbox": true,
        "WhenSoftDeleted": format!("/Date({deleted_ms})/"),
        "LitigationHoldEnabled": false,
        "InPlaceHolds": [],
        "EmailAddresses": [format!("SMTP:{smtp}")],
        "ProhibitSendQuota": "99 GB (106,300,440,576 bytes)",
    })
}

/// Milliseconds since the epoch, `days` ago.
pub fn days_ago_ms(days: i64) -> i64 {
    (chrono::Utc::now() - chrono::Duration::days(days)).timestamp_millis()
}

pub fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}
