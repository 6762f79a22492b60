//! The live sync end to end: `sync`, `status`, `mailboxes changes`, `list` and `stats` on
//! the real binary against the emulated identity provider and Exchange admin endpoint,
//! and a daemon killed (-9) in the middle of a sync.

use std::collections::BTreeSet;
use std::time::Duration;

use imm_emulators::exchange::{ExchangeOptions, ExchangeServer, synthetic_tenant};
use imm_emulators::identity::{IdentityProvider, TEST_CLIENT_ID};
use serde_json::Value;

use crate::daemon::{Daemon, config};
use crate::signin::{assert_no_secret_on_disk, fast, login, provider, status, take_both_tokens};
use crate::support::Env;

pub(crate) fn exchange(p: &IdentityProvider, n: usize, latency: Duration) -> ExchangeServer {
    ExchangeServer::start_in_background(
        ExchangeOptions {
            token_checker: Some(p.token_checker()),
            latency,
            ..ExchangeOptions::default()
        },
        synthetic_tenant(n, 17),
    )
    .expect("the emulated Exchange starts")
}

/// A home signed in against `p`, syncing from `x`, with `sync` in `[sync]`.
pub(crate) fn signed_in(p: &IdentityProvider, x: &ExchangeServer, sync: &str, extra: &str) -> Env {
    let env = Env::new();
    config(
        &env,
        &format!(
            "client_id = \"{TEST_CLIENT_ID}\"\nauthority = \"{}\"\nexchange_url = \"{}\"\n\
             [heartbeat]\ninterval = \"1h\"\n[auth]\ntoken_store = \"file\"\n{extra}\n\
             [sync]\n{sync}",
            p.authority(),
            x.base_url()
        ),
    );
    login(&env, p);
    env
}

fn identities(env: &Env) -> BTreeSet<String> {
    env.json(&["mailboxes", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["identity"].as_str().unwrap().to_string())
        .collect()
}

fn tenant(x: &ExchangeServer) -> BTreeSet<String> {
    x.inactive().into_iter().map(|m| m.exchange_guid).collect()
}

#[test]
fn sync_lists_the_tenant_and_reports_changes_status_and_unknown_sizes() {
    let p = provider(fast());
    let x = exchange(&p, 300, Duration::ZERO);
    let env = signed_in(
        &p,
        &x,
        "schedule = \"never\"\nstatistics_per_cycle = 100\n",
        "",
    );
    let summary: Value = serde_json::from_str(&env.ok(&["sync", "--json"])).unwrap();
    let step = summary["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "mailbox_sync")
        .unwrap()
        .clone();
    assert_eq!(step["status"], "ok", "{step}");
    assert_eq!(step["counts"]["mailboxes"], 300);
    assert_eq!(step["counts"]["statistics"], 100);
    assert_eq!(step["counts"]["statistics_due"], 200);
    assert_eq!(identities(&env), tenant(&x));

    // Sizes not fetched yet are unknown, not 0, everywhere.
    let list = env.json(&["mailboxes", "list"]);
    let unknown = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["size_mb"].is_null() && m["item_count"].is_null())
        .count();
    assert_eq!(unknown, 200);
    let table = env.ok(&["mailboxes", "list", "--format", "table"]);
    assert!(table.contains("unknown"), "{table}");
    let stats = env.json(&["mailboxes", "stats"]);
    assert_eq!(stats["size_unknown"], 200);
    // The sync counted and kept the tallies in its own write.
    assert_eq!(stats["cache"]["tallies"], "kept", "{stats}");
    let text = env.ok(&["mailboxes", "stats", "--format", "table"]);
    assert!(
        text.contains("200 mailbox(es) have no statistics yet"),
        "{text}"
    );

    let s = status(&env);
    assert_eq!(s["sync"]["source"], "exchange");
    assert_eq!(s["sync"]["statistics_due"], 200);
    assert_eq!(s["sync"]["last"]["ok"], true);
    assert_eq!(s["sync"]["last"]["figures"]["mailboxes"], 300);
    assert_eq!(s["sync"]["last"]["figures"]["added"], 300);
    // Not running (exit 3), but the sync's figures come from the database.
    let out = env.cmd().arg("status").output().unwrap();
    let human = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(human.contains("from exchange"), "{human}");
    assert!(human.contains("statistics: 200 mailbox(es) due"), "{human}");

    // The tenant changes; the next sync records it.
    let gone = x.inactive()[0].exchange_guid.clone();
    assert!(x.remove(&gone));
    let released = x.inactive()[0].exchange_guid.clone();
    assert!(x.release_holds(&released));
    env.ok(&["sync"]);
    let changes = env.json(&["mailboxes", "changes", "--since", "1h"]);
    let kinds: Vec<(String, String)> = changes
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["identity"].as_str().unwrap().to_string(),
                c["change"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        kinds.contains(&(gone.clone(), "removed".into())),
        "{kinds:?}"
    );
    assert!(kinds.contains(&(released.clone(), "holds_removed".into())));
    assert_eq!(kinds.iter().filter(|(_, k)| k == "added").count(), 300);
    let table = env.ok(&["mailboxes", "changes", "--format", "table"]);
    assert!(table.contains("no hold left"), "{table}");
    let csv = env.ok(&["mailboxes", "changes", "--format", "csv"]);
    assert!(csv.starts_with("at,sync_id,change,identity"), "{csv}");
    assert!(!identities(&env).contains(&gone));
    assert_no_secret_on_disk(&env, &p);
}

#[test]
fn a_daemon_killed_mid_sync_leaves_a_consistent_cache_and_the_next_sync_keeps_its_statistics() {
    let p = provider(fast());
    let x = exchange(&p, 400, Duration::from_millis(15));
    let env = signed_in(
        &p,
        &x,
        "schedule = \"0 0 1 1 *\"\npage_size = 50\nstatistics_per_cycle = 1000\nconcurrency = 2\n",
        "",
    );
    take_both_tokens(&env);
    let db = env.db();
    let mut rng = fastrand::Rng::with_seed(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    );
    for round in 0..3 {
        let daemon = Daemon::start(&env);
        // The listing takes about 8 pages x 15 ms, the statistics about 3 s: a kill lands
        // in either.
        let wait = Duration::from_millis(rng.u64(50..2_500));
        std::thread::sleep(wait);
        let _ = std::process::Command::new("kill")
            .args(["-9", &daemon.pid().to_string()])
            .status();
        drop(daemon);
        // Whatever was committed is whole: the cache is empty or the whole listing.
        let conn = rusqlite::Connection::open(&db).unwrap();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM inactive_mailboxes", [], |r| r.get(0))
            .unwrap_or(0);
        assert!(
            n == 0 || n == 400,
            "round {round}: {n} mailboxes half-written"
        );
        drop(conn);
    }
    let fetched_before: BTreeSet<String> = {
        let conn = rusqlite::Connection::open(&db).unwrap();
        let mut st = conn
            .prepare("SELECT identity FROM inactive_mailboxes WHERE stats_at IS NOT NULL")
            .unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let calls_before = x.requests().statistics_per_mailbox;
    env.ok(&["sync"]);
    assert_eq!(identities(&env), tenant(&x));
    let calls_after = x.requests().statistics_per_mailbox;
    for id in &fetched_before {
        assert_eq!(
            calls_after.get(id),
            calls_before.get(id),
            "statistics already stored for {id} were fetched again"
        );
    }
    let list = env.json(&["mailboxes", "list"]);
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|m| !m["size_mb"].is_null())
    );
    let verify = env.ok(&["audit", "verify"]);
    assert!(verify.contains("intact"), "{verify}");
    assert_no_secret_on_disk(&env, &p);
}

#[test]
fn status_shows_a_sync_in_progress_and_sync_draws_its_progress_on_a_terminal() {
    let p = provider(fast());
    let x = exchange(&p, 200, Duration::from_millis(25));
    let env = signed_in(
        &p,
        &x,
        "schedule = \"0 0 1 1 *\"\npage_size = 20\nstatistics_per_cycle = 1000\nconcurrency = 1\n",
        "",
    );
    // The daemon syncs at its start (the sync never ran): 10 pages and 200 statistics
    // calls at 25 ms each keep it busy for seconds.
    let mut daemon = Daemon::start(&env);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let seen = loop {
        let s = status(&env);
        if let Some(p) = s["sync"]["in_progress"].as_object()
            && p["phase"] == "statistics"
            && p["statistics_done"].as_u64().unwrap_or(0) > 0
        {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no sync in progress seen: {s}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let progress = &seen["sync"]["in_progress"];
    assert_eq!(progress["pages"], 10, "{progress}");
    assert_eq!(progress["mailboxes_seen"], 200);
    assert_eq!(progress["statistics_target"], 200);
    let out = env.cmd().arg("status").output().unwrap();
    let human = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(human.contains("in progress since"), "{human}");
    daemon.signal("TERM");
    let (code, _) = daemon.wait(Duration::from_secs(20));
    assert_eq!(code, Some(0));

    // `sync` on a terminal (a pseudo-terminal from script(1)) draws its progress on
    // stderr; piped, it draws nothing.
    x.remove(&x.inactive()[0].exchange_guid.clone());
    let bin = env!("CARGO_BIN_EXE_imm-daemon");
    let out = std::process::Command::new("script")
        .args(["-qec", &format!("{bin} sync"), "/dev/null"])
        .env("IMM_HOME", env.home.path())
        .env_remove("IMM_CONFIG")
        .output()
        .expect("script(1) runs");
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{screen}");
    assert!(
        screen.contains("listing:") && screen.contains("mailbox(es) seen"),
        "{screen}"
    );
    let piped = env.cmd().arg("sync").output().unwrap();
    assert!(piped.status.success());
    assert!(
        !String::from_utf8_lossy(&piped.stderr).contains("listing:"),
        "no progress when not on a terminal"
    );
}

#[test]
fn a_failing_sync_needs_attention_only_once_it_has_failed_for_longer_than_stale_after() {
    use imm_emulators::exchange::ExchangeFailure;
    let p = provider(fast());
    let x = exchange(&p, 20, Duration::ZERO);
    let env = signed_in(&p, &x, "schedule = \"never\"\nstale_after = \"1h\"\n", "");
    env.ok(&["sync"]);
    assert_eq!(status(&env)["sync"]["failing"], false);
    // Exchange refuses (a role was taken away): the sync fails, the cache stays, and a
    // sync that worked an hour ago is not yet a person's problem.
    for _ in 0..10 {
        x.fail_page(1, ExchangeFailure::Forbidden);
    }
    let out = env.cmd().arg("sync").output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "a failed step fails the command"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("HTTP 403") && text.contains("View-Only Recipients"),
        "{text}"
    );
    let s = status(&env);
    assert_eq!(s["sync"]["failing"], false);
    assert_eq!(s["sync"]["last"]["ok"], false);
    assert_eq!(identities(&env), tenant(&x));
    // The last success is now two hours old: past stale_after, the failure needs a person.
    env.open_db()
        .execute(
            "UPDATE job_runs SET last_ok_at = ?1 WHERE job = 'mailbox_sync'",
            [imm_daemon::time::stamp(
                chrono::Utc::now() - chrono::Duration::hours(2),
            )],
        )
        .unwrap();
    let s = status(&env);
    assert_eq!(s["sync"]["failing"], true, "{}", s["sync"]);
    let out = env.cmd().arg("status").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAILING"));
}

/// A grant revoked while the daemon's access tokens are still fresh: the first step that
/// meets the refusal (here the sync: 401, then `invalid_grant` on renewal) must not leave
/// the daemon "healthy" until the tokens expire an hour later. The sign-in step looks at
/// once, asks for a person and fires the hook; a new sign-in mends it.
#[test]
fn a_grant_revoked_under_fresh_tokens_asks_for_a_person_at_once() {
    let p = provider(fast());
    let x = exchange(&p, 20, Duration::ZERO);
    let env = Env::new();
    let events = env.home.path().join("events.log");
    let hook = env.write(
        "hook.sh",
        format!(
            "#!/bin/sh\necho \"$IMM_EVENT $IMM_USER_CODE\" >> '{}'\n",
            events.display()
        ),
    );
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    config(
        &env,
        &format!(
            "client_id = \"{TEST_CLIENT_ID}\"\nauthority = \"{}\"\nexchange_url = \"{}\"\n\
             [heartbeat]\ninterval = \"1h\"\n[auth]\ntoken_store = \"file\"\n\
             [notify]\ncommand = [\"{}\"]\n[sync]\nschedule = \"never\"\n",
            p.authority(),
            x.base_url(),
            hook.display()
        ),
    );
    crate::signin::login(&env, &p);
    take_both_tokens(&env);
    let _daemon = Daemon::start(&env);
    env.ok(&["sync"]);
    assert_eq!(status(&env)["signin"]["state"], "signed_in");

    p.revoke_grants();
    let out = env.cmd().arg("sync").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "the sync cannot have run");
    // Within seconds, not at the next heartbeat an hour away.
    let code = p
        .wait_for_user_code(Duration::from_secs(15))
        .expect("the daemon asked for a device code at once");
    crate::support::wait_until("status to say the sign-in is required", || {
        let s = status(&env);
        s["signin"]["state"] == "sign_in_required"
            && s["signin"]["pending"]["user_code"] == code.as_str()
    });
    let s = status(&env);
    assert!(
        s["signin"]["required_reason"]
            .as_str()
            .unwrap()
            .contains("invalid_grant"),
        "{s}"
    );
    assert_eq!(s["health"], "attention");
    crate::support::wait_until("the hook to fire with the code", || {
        std::fs::read_to_string(&events)
            .unwrap_or_default()
            .contains(&format!("login_required {code}"))
    });
    // The revoked exchange token was dropped, never presented again as if fresh.
    assert!(p.approve(&code));
    crate::support::wait_until("the new sign-in", || {
        status(&env)["signin"]["state"] == "signed_in"
    });
    env.ok(&["sync"]);
    assert_no_secret_on_disk(&env, &p);
}

/// Consent withdrawn for Exchange alone: the sign-in stands (Graph refreshes), so the
/// daemon asks for consent, not for a new device sign-in that would not mend it.
#[test]
fn consent_withdrawn_for_exchange_alone_is_not_a_lost_sign_in() {
    let p = provider(crate::signin::short_lived());
    let x = exchange(&p, 5, Duration::ZERO);
    let env = signed_in(&p, &x, "schedule = \"never\"\n", "");
    take_both_tokens(&env);
    p.withdraw_consent("https://outlook.office365.com");
    let out = env.cmd().arg("cycle").output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("grant consent"), "{text}");
    assert!(text.contains("consent_required"), "{text}");
    let s = status(&env);
    assert_eq!(s["signin"]["state"], "signed_in", "{s}");
    assert!(
        p.pending_user_codes().is_empty(),
        "no device flow for a consent problem"
    );
}

/// The idle daemon's resident code (KiB) and the size of its code mappings (KiB), and
/// whether it has `db` mapped, from `/proc/PID/smaps`.
#[cfg(target_os = "linux")]
fn daemon_mappings(pid: u32, db: &std::path::Path) -> (u64, u64, bool) {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let (mut resident, mut size, mut db_mapped, mut in_code) = (0, 0, false, false);
    for line in smaps.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.first()
            .is_some_and(|r| r.contains('-') && !r.ends_with(':'))
        {
            let path = f.get(5).copied().unwrap_or("");
            db_mapped |= std::path::Path::new(path) == db;
            in_code = f[1] == "r-xp" && path.ends_with("/imm-daemon");
            if in_code {
                let (a, b) = f[0].split_once('-').unwrap();
                size += (u64::from_str_radix(b, 16).unwrap() - u64::from_str_radix(a, 16).unwrap())
                    / 1024;
            }
        } else if in_code && f.first() == Some(&"Rss:") {
            resident += f[1].parse::<u64>().unwrap();
        }
    }
    (resident, size, db_mapped)
}

/// Polls `pid`'s mappings until `done` holds of them or 10 s pass; returns the last.
#[cfg(target_os = "linux")]
fn mappings_until(
    pid: u32,
    db: &std::path::Path,
    done: impl Fn((u64, u64, bool)) -> bool,
) -> (u64, u64, bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = daemon_mappings(pid, db);
        if done(m) || std::time::Instant::now() > deadline {
            return m;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// After a cycle that synced, the idle daemon keeps neither the database mapped (its
/// connection reads without SQLite's memory map, `Store::for_long_running`) nor most of
/// the code the sync ran (`memory::release_code`): both would stay in its resident
/// memory for as long as it idles. Memory is given back again once the cycle's
/// connections are closed; requests answered between cycles (`status`) map code back,
/// which goes again once no request came for a while.
#[cfg(target_os = "linux")]
#[test]
fn after_a_sync_the_idle_daemon_keeps_neither_the_database_nor_the_syncs_code_mapped() {
    let p = provider(fast());
    let x = exchange(&p, 300, Duration::ZERO);
    let env = signed_in(
        &p,
        &x,
        "schedule = \"0 0 1 1 *\"\npage_size = 100\nstatistics_per_cycle = 1000\nconcurrency = 2\n",
        "",
    );
    let db = env.db();
    let daemon = Daemon::start(&env);
    crate::daemon::wait_for_state(&env, "a cycle that synced", |s| {
        crate::daemon::running(s)
            && s["cycles"] == 1
            && s["last_cycle"]["steps"][2]["status"] == "ok"
    });
    assert_eq!(identities(&env), tenant(&x));
    // Memory is given back at the cycle's end and again once its connections are gone
    // (`SETTLE_AFTER_CYCLE`, 3 s later), with no request asked of the daemon meanwhile.
    daemon.wait_for_log("memory given back", 1);
    let given: Vec<chrono::DateTime<chrono::FixedOffset>> = daemon
        .log_text()
        .lines()
        .filter(|l| l.contains("memory given back"))
        .map(|l| chrono::DateTime::parse_from_rfc3339(l.split(' ').next().unwrap()).unwrap())
        .collect();
    let apart = (given[1] - given[0]).to_std().unwrap();
    assert!(
        apart >= Duration::from_millis(2900) && apart < Duration::from_secs(6),
        "the second give-back came {apart:?} after the first"
    );
    let (code, size, db_mapped) =
        mappings_until(daemon.pid(), &db, |(code, size, db)| !db && code * 2 < size);
    println!("after the sync: code resident {code} of {size} KiB, database mapped: {db_mapped}");
    assert!(!db_mapped, "the idle daemon keeps the database mapped");
    assert!(
        code * 2 < size,
        "the idle daemon keeps {code} of its {size} KiB of code mapped"
    );
    for _ in 0..3 {
        status(&env);
    }
    let (answered, _, _) = daemon_mappings(daemon.pid(), &db);
    let (quiet, _, _) = mappings_until(daemon.pid(), &db, |(code, _, _)| code * 4 < answered * 3);
    println!("code resident after three status requests {answered} KiB, then {quiet} KiB");
    assert!(
        quiet * 4 < answered * 3,
        "the code status ran stays mapped: {answered} KiB, then {quiet} KiB"
    );
}
