//! Hostile surroundings: folders another local user can write, another user's daemon, a
//! frozen daemon, a daemon that stops before the sync it was asked for.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::daemon::{Daemon, running, wait_for_state};
use crate::mail::{graph, signed_in};
use crate::signin::{fast, provider, status};
use crate::support::{Env, is_root, skip};

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A listener standing in for another user's server: counts connections made to it.
struct Trap {
    addr: std::net::SocketAddr,
    hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Trap {
    fn start() -> Trap {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counting = hits.clone();
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                counting.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut c = c;
                let mut buf = [0u8; 4096];
                let _ = c.set_read_timeout(Some(Duration::from_millis(200)));
                let _ = c.read(&mut buf);
            }
        });
        Trap { addr, hits }
    }

    fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[test]
fn a_folder_others_can_write_is_refused_before_the_config_is_read() {
    let p = provider(fast());
    let g = graph(&p);
    let env = signed_in(&p, &g, "");
    env.ok(&[
        "send",
        "--to",
        "a@contoso.com",
        "--subject",
        "s",
        "--body",
        "b",
    ]);
    // Another user, able to write IMM_HOME, swaps the configuration for one that sends
    // the Graph token to their own listener.
    let trap = Trap::start();
    chmod(env.home.path(), 0o777);
    let config = std::fs::read_to_string(env.config_file()).unwrap();
    let hostile = config.replace(&g.base_url(), &format!("http://{}", trap.addr));
    assert_ne!(hostile, config);
    std::fs::write(env.config_file(), hostile).unwrap();
    for args in [
        &["cycle"][..],
        &["run"],
        &["queue", "list"],
        &["mailboxes", "list"],
        &["token", "--resource", "graph", "--show"],
        &["config", "check"],
    ] {
        let err = env.fails(args, 77);
        let home = std::fs::canonicalize(env.home.path()).unwrap();
        assert!(
            err.contains(&home.display().to_string()) && err.contains("mode 0777"),
            "{args:?}: {err}"
        );
        assert!(err.contains("chmod go-w"), "{args:?}: {err}");
    }
    // Monitoring reads "unknown", not "not running".
    let out = env.cmd().args(["status"]).output().unwrap();
    assert_eq!(out.status.code(), Some(4));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(trap.hits(), 0, "the hostile listener was reached");

    // Put right, the same home works again (with the genuine configuration).
    chmod(env.home.path(), 0o700);
    std::fs::write(env.config_file(), config).unwrap();
    env.ok(&["cycle"]);
    assert_eq!(g.deliveries().total, 1);
}

#[test]
fn a_config_file_or_a_folder_inside_others_can_write_is_refused() {
    let env = Env::new();
    env.ok(&["config", "init"]);
    let file = env.config_file();
    chmod(&file, 0o666);
    let err = env.fails(&["config", "check"], 77);
    assert!(
        err.contains("config.toml") && err.contains("mode 0666"),
        "{err}"
    );
    chmod(&file, 0o600);
    env.ok(&["config", "check"]);

    // A world-writable file inside a folder of the program's (the database, here).
    env.ok(&["mailboxes", "list"]);
    chmod(&env.db(), 0o666);
    let err = env.fails(&["mailboxes", "list"], 77);
    assert!(err.contains("imm-daemon.db"), "{err}");
    chmod(&env.db(), 0o600);

    // A group-writable folder whose group is shared (not the user's private group).
    if !is_root() {
        skip(
            "a_config_file_or_a_folder_inside_others_can_write_is_refused (group part)",
            "giving a folder another group needs root",
        );
        return;
    }
    let data = env.home.path().join("data");
    std::os::unix::fs::chown(&data, None, Some(100)).unwrap();
    chmod(&data, 0o770);
    let err = env.fails(&["mailboxes", "list"], 77);
    assert!(err.contains("written by other users"), "{err}");
    chmod(&data, 0o700);
    env.ok(&["mailboxes", "list"]);
}

#[test]
fn a_folder_of_another_users_is_refused_naming_chown() {
    if !is_root() {
        skip(
            "a_folder_of_another_users_is_refused_naming_chown",
            "giving a folder to another user needs root",
        );
        return;
    }
    let env = Env::new();
    env.ok(&["mailboxes", "list"]);
    let data = env.home.path().join("data");
    std::os::unix::fs::chown(&data, Some(65534), None).unwrap();
    let err = env.fails(&["mailboxes", "list"], 77);
    assert!(err.contains("belongs to another user"), "{err}");
    assert!(err.contains("chown root"), "{err}");
}

#[test]
fn another_user_asking_about_this_daemon_gets_unknown_not_not_running() {
    let setpriv = Path::new("/usr/bin/setpriv");
    if !is_root() || !setpriv.exists() {
        skip(
            "another_user_asking_about_this_daemon_gets_unknown_not_not_running",
            "needs root and setpriv(1) to run as another user",
        );
        return;
    }
    let env = Env::new();
    crate::daemon::config(
        &env,
        "[heartbeat]\ninterval = \"1h\"\n[sync]\nschedule = \"never\"\n",
    );
    let _daemon = Daemon::start(&env);
    wait_for_state(&env, "running", running);
    // The binary must be reachable by the other user.
    let bin = Path::new(env!("CARGO_BIN_EXE_imm-daemon"));
    let out = std::process::Command::new(setpriv)
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(bin)
        .args(["status", "--json"])
        .env("IMM_HOME", env.home.path())
        .env("HOME", "/nonexistent")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("Permission denied") && out.status.code() == Some(126) {
        skip(
            "another_user_asking_about_this_daemon_gets_unknown_not_not_running",
            "the test binary is not readable by another user here",
        );
        return;
    }
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("cannot inspect"), "{stderr}");
    // And the owner still sees it running.
    assert_eq!(status(&env)["health"], "healthy");
}

#[test]
fn a_frozen_daemon_is_not_answering_and_cycle_gives_up_within_a_bounded_wait() {
    let env = Env::new();
    crate::daemon::config(
        &env,
        "[heartbeat]\ninterval = \"1h\"\n[sync]\nschedule = \"never\"\n",
    );
    let daemon = Daemon::start(&env);
    wait_for_state(&env, "running", running);
    assert_eq!(status(&env)["health"], "healthy");
    daemon.signal("STOP");
    let out = env.cmd().args(["status", "--json"]).output().unwrap();
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1), "{s}");
    assert_eq!(s["health"], "not_answering", "{s}");
    assert!(s["last_heard_at"].is_string(), "{s}");
    let human = env.cmd().arg("status").output().unwrap();
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        text.contains("not answering") && text.contains("last heard"),
        "{text}"
    );

    // `cycle` notices within its documented bound (a liveness check every 5 s, 5 s for
    // the answer), not after its 15-minute cycle timeout.
    let started = Instant::now();
    let err = env.fails(&["cycle"], 1);
    assert!(err.contains("not answering"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    daemon.signal("CONT");
    let deadline = Instant::now() + Duration::from_secs(20);
    while status(&env)["health"] != "healthy" {
        assert!(
            Instant::now() < deadline,
            "the resumed daemon answers again"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sync_fails_when_the_daemon_stops_before_the_sync_it_asked_for_ran() {
    let p = provider(fast());
    // 2,000 mailboxes, 20 a page, 25 ms a page: a listing takes seconds.
    let x = crate::exchange::exchange(&p, 2_000, Duration::from_millis(25));
    let env = crate::exchange::signed_in(
        &p,
        &x,
        "schedule = \"0 0 1 1 *\"\npage_size = 20\nstatistics_per_cycle = 0\n",
        "",
    );
    // The first sync, here; the daemon then has nothing due.
    env.ok(&["sync"]);
    let mut daemon = Daemon::start(&env);
    wait_for_state(&env, "running", running);
    let sync = env
        .std_cmd()
        .arg("sync")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = status(&env);
        if s["sync"]["in_progress"].is_object() {
            break;
        }
        assert!(Instant::now() < deadline, "no sync in progress: {s}");
        std::thread::sleep(Duration::from_millis(20));
    }
    daemon.signal("TERM");
    let out = sync.wait_with_output().unwrap();
    let (code, _) = daemon.wait(Duration::from_secs(20));
    assert_eq!(code, Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("the sync did not run"), "{stderr}");
}

/// Sets the database header's schema version, as a damaged or tampered file would.
fn set_user_version(env: &Env, v: i64) {
    let conn = env.open_db();
    conn.execute_batch(&format!("PRAGMA user_version = {v}"))
        .unwrap();
}

#[test]
fn any_schema_version_in_the_header_gives_the_damaged_error_never_a_panic() {
    let env = Env::new();
    env.ok(&["mailboxes", "list"]);
    for v in [-1, i64::from(i32::MIN), i64::from(i32::MAX), 1_500] {
        set_user_version(&env, v);
        let err = env.fails(&["mailboxes", "list"], 69);
        assert!(
            err.contains("is damaged") && err.contains("restore a backup"),
            "{v}: {err}"
        );
        let err = env.fails(&["queue", "list"], 69);
        assert!(err.contains(&v.to_string()), "{v}: {err}");
    }
    // A version a little beyond this build's is a newer imm-daemon's, not damage.
    set_user_version(&env, imm_daemon::store::SCHEMA_VERSION + 1);
    let err = env.fails(&["mailboxes", "list"], 69);
    assert!(err.contains("newer imm-daemon"), "{err}");
}

#[test]
fn byte_changes_in_the_database_header_never_panic() {
    let env = Env::new();
    env.import(&[crate::support::record(
        crate::support::G1,
        "A",
        "a@contoso.com",
        crate::support::days_ago_ms(40),
    )]);
    let pristine = std::fs::read(env.db()).unwrap();
    assert!(!env.db().with_extension("db-wal").exists());
    let head = env.home.path().join("state/audit-head.json");
    let mut seen = std::collections::BTreeMap::new();
    for offset in 0..100 {
        for value in [0x00u8, 0x80, 0xff] {
            if pristine[offset] == value {
                continue;
            }
            let mut bytes = pristine.clone();
            bytes[offset] = value;
            std::fs::write(env.db(), &bytes).unwrap();
            for extra in ["db-wal", "db-shm"] {
                let _ = std::fs::remove_file(env.db().with_extension(extra));
            }
            let _ = std::fs::remove_file(&head);
            let out = env.cmd().args(["mailboxes", "list"]).output().unwrap();
            let code = out.status.code();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                matches!(code, Some(0) | Some(69)),
                "offset {offset} = {value:#x}: exit {code:?}: {stderr}"
            );
            assert!(!stderr.contains("panicked"), "{stderr}");
            *seen.entry(code).or_insert(0) += 1;
        }
    }
    // Most header bytes matter: the damaged error was seen, not only successes.
    assert!(seen.get(&Some(69)).copied().unwrap_or(0) > 10, "{seen:?}");
}

#[test]
fn a_database_replaced_by_an_empty_one_or_cut_off_is_never_reported_intact() {
    let env = Env::new();
    for _ in 0..5 {
        env.ok(&["mailboxes", "list"]);
    }
    env.ok(&["audit", "verify"]);
    // Cut off: the newest rows deleted (a chain's prefix still chains).
    let newest: i64 = env.count("SELECT max(id) FROM audit_log");
    env.open_db()
        .execute("DELETE FROM audit_log WHERE id > ?1", [newest - 3])
        .unwrap();
    env.fails(&["audit", "verify"], 5);
    let shown = env.cmd().args(["audit", "verify"]).output().unwrap();
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        text.contains("NOT intact") && text.contains("cut off"),
        "{text}"
    );
    let errors = env.count(
        "SELECT count(*) FROM audit_log WHERE operation = 'ERROR' AND details LIKE '%audit_head%'",
    );
    assert_eq!(errors, 1);
    let v: serde_json::Value = serde_json::from_slice(
        &env.cmd()
            .args(["audit", "verify", "--json"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(v["intact"], false);
    assert_eq!(v["incident"]["kind"], "truncated");

    // Acknowledged, it verifies again; the acknowledgement is audited.
    let ack = env.ok(&["audit", "verify", "--acknowledge"]);
    assert!(
        ack.contains("acknowledged") && ack.contains("intact"),
        "{ack}"
    );
    env.ok(&["audit", "verify"]);

    // A zero-byte database (what a crash of a careless copy leaves) is a new database:
    // the mail queue and the chain are gone, and that is said, not "intact".
    env.ok(&[
        "send",
        "--to",
        "a@contoso.com",
        "--subject",
        "s",
        "--body",
        "b",
    ]);
    std::fs::write(env.db(), b"").unwrap();
    for extra in ["db-wal", "db-shm"] {
        let _ = std::fs::remove_file(env.db().with_extension(extra));
    }
    let text =
        String::from_utf8_lossy(&env.cmd().args(["audit", "verify"]).output().unwrap().stdout)
            .to_string();
    assert!(text.contains("new, empty database"), "{text}");
    env.fails(&["audit", "verify"], 5);
    // The daemon needs attention for it.
    crate::daemon::config(
        &env,
        "[heartbeat]\ninterval = \"1h\"\n[sync]\nschedule = \"never\"\n",
    );
    let _daemon = Daemon::start(&env);
    wait_for_state(&env, "running", running);
    let out = env.cmd().args(["status"]).output().unwrap();
    let human = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{human}");
    assert!(
        human.contains("audit") && human.contains("new, empty database"),
        "{human}"
    );
}

#[test]
fn a_send_bucket_claiming_an_absurd_count_is_recounted_and_mail_goes_out() {
    let p = provider(fast());
    let g = graph(&p);
    let env = signed_in(&p, &g, "refill_every = \"1s\"");
    let today = chrono::Local::now().date_naive();
    std::fs::create_dir_all(env.home.path().join("data")).unwrap();
    std::fs::write(
        env.home.path().join("data/send-bucket.json"),
        format!(
            r#"{{"version":1,"tokens":20,"last_refill":"{}","day":"{today}","sent_today":4294967295}}"#,
            chrono::Utc::now().to_rfc3339()
        ),
    )
    .unwrap();
    env.ok(&[
        "send",
        "--to",
        "a@contoso.com",
        "--subject",
        "s",
        "--body",
        "b",
    ]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while g.deliveries().total == 0 {
        assert!(Instant::now() < deadline, "the mail never went out");
        let _ = env.cmd().arg("cycle").output().unwrap();
        std::thread::sleep(Duration::from_millis(300));
    }
    let rebuilt = env.count(
        "SELECT count(*) FROM audit_log WHERE operation = 'ERROR' AND details LIKE '%send_bucket_rebuilt%' AND error_message LIKE '%4294967295%'",
    );
    assert_eq!(rebuilt, 1);
}

#[test]
fn damaged_mail_rows_are_failed_with_their_reason_and_the_rest_of_the_queue_goes_on() {
    let p = provider(fast());
    let g = graph(&p);
    let env = signed_in(&p, &g, "");
    for i in 0..5 {
        env.ok(&[
            "send",
            "--to",
            "a@contoso.com",
            "--subject",
            &format!("mail {i}"),
            "--body",
            "b",
        ]);
    }
    let db = env.open_db();
    for sql in [
        "UPDATE mail_queue SET body = X'00FF10' WHERE subject = 'mail 0'",
        "UPDATE mail_queue SET to_addrs = 'garbage' WHERE subject = 'mail 1'",
        "UPDATE mail_queue SET next_attempt_at = 'not a time' WHERE subject = 'mail 2'",
        "UPDATE mail_queue SET to_addrs = '[]' WHERE subject = 'mail 3'",
    ] {
        db.execute(sql, []).unwrap();
    }
    drop(db);
    // Listing still works and says what is wrong.
    let list: serde_json::Value =
        serde_json::from_str(&env.ok(&["queue", "list", "--format", "json"])).unwrap();
    let damage = |subject: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|m| m["subject"] == subject)
            .unwrap()["damage"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    assert!(damage("mail 0").contains("body is binary"), "{list}");
    assert!(damage("mail 1").contains("To list is not a list"), "{list}");
    assert!(damage("mail 2").contains("due time `not a time`"), "{list}");
    assert!(damage("mail 3").contains("no recipients"), "{list}");
    assert_eq!(damage("mail 4"), "");
    env.ok(&["cycle"]);
    let d = g.deliveries();
    assert_eq!(d.total, 1, "only the intact mail goes out");
    let list: serde_json::Value =
        serde_json::from_str(&env.ok(&["queue", "list", "--format", "json"])).unwrap();
    for m in list.as_array().unwrap() {
        if m["subject"] == "mail 4" {
            assert_eq!(m["state"], "sent", "{m}");
        } else {
            assert_eq!(m["state"], "failed", "{m}");
            assert!(
                m["last_error"]
                    .as_str()
                    .unwrap()
                    .contains("the stored mail is damaged"),
                "{m}"
            );
        }
    }
    assert_eq!(
        env.count("SELECT count(*) FROM audit_log WHERE operation = 'SEND_FAILED'"),
        4
    );
}

#[test]
fn an_import_that_would_remove_a_quarter_of_the_cache_is_refused_unless_allowed() {
    let env = Env::new();
    let records: Vec<serde_json::Value> = (0..200)
        .map(|i| {
            crate::support::record(
                &format!("00000000-0000-4000-8000-{i:012x}"),
                &format!("User {i}"),
                &format!("user{i}@contoso.com"),
                crate::support::days_ago_ms(40),
            )
        })
        .collect();
    env.import(&records);
    // The export was cut at a row boundary: 150 of 200 left.
    let cut = env.write("cut.json", serde_json::to_vec(&records[..150]).unwrap());
    let err = env.fails(&["mailboxes", "import", cut.to_str().unwrap()], 65);
    assert!(
        err.contains("refusing to remove 50 of the 200") && err.contains("--allow-removals"),
        "{err}"
    );
    assert_eq!(env.count("SELECT count(*) FROM inactive_mailboxes"), 200);
    assert_eq!(
        env.count(
            "SELECT count(*) FROM audit_log WHERE operation = 'IMPORT_MAILBOXES' AND result = 'failure' AND error_message LIKE '%refusing to remove 50%'"
        ),
        1
    );
    // Within the share, or allowed, it goes ahead.
    let fewer = env.write("fewer.json", serde_json::to_vec(&records[..170]).unwrap());
    env.ok(&["mailboxes", "import", fewer.to_str().unwrap()]);
    assert_eq!(env.count("SELECT count(*) FROM inactive_mailboxes"), 170);
    env.ok(&[
        "mailboxes",
        "import",
        "--allow-removals",
        cut.to_str().unwrap(),
    ]);
    assert_eq!(env.count("SELECT count(*) FROM inactive_mailboxes"), 150);
    // Or the configuration lets every snapshot through.
    crate::daemon::config(
        &env,
        "[sync]\nmax_removed_share = 100\nschedule = \"never\"\n",
    );
    let ten = env.write("ten.json", serde_json::to_vec(&records[..10]).unwrap());
    env.ok(&["mailboxes", "import", ten.to_str().unwrap()]);
    assert_eq!(env.count("SELECT count(*) FROM inactive_mailboxes"), 10);
}

#[test]
fn a_listing_that_would_remove_a_third_of_the_cache_needs_a_person() {
    let p = provider(fast());
    let x = crate::exchange::exchange(&p, 60, Duration::ZERO);
    let env = crate::exchange::signed_in(&p, &x, "schedule = \"0 0 1 1 *\"\n", "");
    env.ok(&["sync"]);
    assert_eq!(env.count("SELECT count(*) FROM inactive_mailboxes"), 60);
    // Twenty mailboxes vanish from the listing (a short listing, or a mass purge).
    for m in x.inactive().into_iter().take(20) {
        x.remove(&m.exchange_guid);
    }
    let out = env.cmd().arg("sync").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("refusing to remove 20 of the 60"), "{text}");
    assert_eq!(env.count("SELECT count(*) FROM inactive_mailboxes"), 60);
    assert_eq!(
        env.count(
            "SELECT count(*) FROM audit_log WHERE operation = 'SYNC_MAILBOXES' AND result = 'failure' AND error_message LIKE '%refusing to remove%'"
        ),
        1
    );
    // In the daemon, the refusal needs a person; --allow-removals goes through it.
    let _daemon = Daemon::start(&env);
    wait_for_state(&env, "running", running);
    let out = env.cmd().arg("sync").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let s = status(&env);
    assert_eq!(s["health"], "attention", "{s}");
    env.ok(&["sync", "--allow-removals"]);
    assert_eq!(env.count("SELECT count(*) FROM inactive_mailboxes"), 40);
    // The allowance was for that sync only.
    for m in x.inactive().into_iter().take(20) {
        x.remove(&m.exchange_guid);
    }
    let out = env.cmd().arg("sync").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(env.count("SELECT count(*) FROM inactive_mailboxes"), 40);
}

#[test]
fn ctrl_c_while_login_waits_stores_nothing_and_redeems_nothing() {
    let p = provider(fast());
    let env = Env::new();
    crate::daemon::config(&env, &crate::signin::sign_in_config(&p, ""));
    let (child, first) = crate::signin::start_login(&env, &[]);
    let code = p
        .wait_for_user_code(Duration::from_secs(10))
        .expect("a device code was issued");
    assert!(first.contains(&code), "{first}");
    // Polling has begun; the person presses Ctrl-C.
    let deadline = Instant::now() + Duration::from_secs(10);
    while p.stats().token_polls == 0 {
        assert!(Instant::now() < deadline, "login never polled");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = child.id();
    assert!(
        std::process::Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let (code_exit, _, err) = crate::signin::finish(child);
    assert_ne!(code_exit, Some(0), "{err}");
    // The person approves afterwards: nobody is polling, nothing is redeemed or stored.
    assert!(p.approve(&code));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(p.stats().device_grants, 0);
    assert!(!env.home.path().join("data/tokens.enc").exists());
    let s = status(&env);
    assert_ne!(s["signin"]["state"], "signed_in", "{s}");
    assert!(s["signin"]["account"].is_null(), "{s}");
}

#[test]
fn an_export_is_never_in_place_before_its_audit_row_commits() {
    let env = Env::new();
    crate::daemon::config(
        &env,
        "[database]\nbusy_timeout = \"1s\"\n[sync]\nschedule = \"never\"\n",
    );
    env.import(&[crate::support::record(
        crate::support::G1,
        "A",
        "a@contoso.com",
        crate::support::days_ago_ms(40),
    )]);
    let out_dir = env.home.path().join("exports");
    std::fs::create_dir(&out_dir).unwrap();
    chmod(&out_dir, 0o700);
    let target = out_dir.join("mailboxes.csv");
    // Another process holds the write lock: the audit row cannot commit.
    let lock = env.open_db();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    for args in [
        vec!["mailboxes", "export", "--format", "csv", "--output"],
        vec!["audit", "export", "--output"],
    ] {
        let mut a = args.clone();
        a.push(target.to_str().unwrap());
        let out = env.cmd().args(&a).output().unwrap();
        assert!(!out.status.success(), "{a:?}");
        assert!(
            !target.exists(),
            "{a:?}: the export is in place without its audit row"
        );
        let left: Vec<_> = std::fs::read_dir(&out_dir).unwrap().collect();
        assert!(left.is_empty(), "{a:?}: {left:?} left behind");
    }
    lock.execute_batch("ROLLBACK").unwrap();
    drop(lock);
    env.ok(&[
        "mailboxes",
        "export",
        "--format",
        "csv",
        "--output",
        target.to_str().unwrap(),
    ]);
    assert!(target.exists());
    assert_eq!(
        env.count(
            "SELECT count(*) FROM audit_log WHERE operation = 'EXPORT_DATA' AND result = 'success'"
        ),
        1
    );
}

#[test]
fn a_rotated_refresh_token_whose_save_failed_is_kept_stored_first_and_never_reused() {
    use imm_emulators::identity::Failure;
    // Access tokens shorter-lived than the refresh buffer: every cycle refreshes.
    let p = provider(crate::signin::short_lived());
    let env = Env::new();
    crate::daemon::config(&env, &crate::signin::sign_in_config(&p, ""));
    crate::signin::login(&env, &p);
    let mut daemon = Daemon::start(&env);
    wait_for_state(&env, "a first cycle", |s| {
        s["cycles"].as_u64().unwrap_or(0) >= 1
    });
    let tokens = env.home.path().join("data/tokens.enc");
    assert!(tokens.is_file());
    // The next refresh is slow; while the provider rotates the refresh token, the token
    // file becomes impossible to replace (a folder in its place), so the save fails.
    let before = p.stats().refresh_requests;
    p.fail_token_requests(1, Failure::Slow(Duration::from_millis(1500)));
    let cycle = {
        let mut c = env.std_cmd();
        c.arg("cycle")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        c.spawn().unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while p.stats().refresh_requests == before {
        assert!(Instant::now() < deadline, "no refresh began");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::fs::remove_file(&tokens).unwrap();
    std::fs::create_dir(&tokens).unwrap();
    std::fs::write(tokens.join("in-the-way"), "x").unwrap();
    let mut cycle = cycle;
    let _ = cycle.wait().unwrap();
    // The next cycle stores what it holds first; that fails too, and nothing is spent.
    let _ = env.cmd().arg("cycle").output().unwrap();
    assert_eq!(p.stats().refresh_reuse, 0);
    // Once the file can be written again, the rotated token is stored before it is used.
    std::fs::remove_dir_all(&tokens).unwrap();
    env.ok(&["cycle"]);
    assert!(tokens.is_file());
    assert_eq!(status(&env)["signin"]["state"], "signed_in");
    daemon.signal("TERM");
    let (code, _) = daemon.wait(Duration::from_secs(20));
    assert_eq!(code, Some(0));
    // A new process starts from the file: it holds the newest refresh token.
    env.ok(&["token", "--resource", "graph", "--show"]);
    assert_eq!(
        p.stats().refresh_reuse,
        0,
        "a spent refresh token was presented"
    );
}
