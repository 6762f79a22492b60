//! Outbound mail end to end: `send` and `queue` on the real binary, the daemon draining
//! the queue to the emulated Graph (signed in against the emulated identity provider),
//! concurrent senders during a drain, and kill -9 at random moments.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use imm_emulators::identity::{IdentityProvider, TEST_CLIENT_ID};
use imm_emulators::{Endpoint, GraphFailure, GraphOptions, GraphServer};
use serde_json::Value;

use crate::daemon::{Daemon, config, operations, wait_for_state};
use crate::signin::{assert_no_secret_on_disk, fast, login, provider, status, take_both_tokens};
use crate::support::{Env, wait_until};

pub(crate) fn graph(p: &IdentityProvider) -> GraphServer {
    GraphServer::start_in_background(GraphOptions {
        token_checker: Some(p.token_checker()),
        ..GraphOptions::default()
    })
    .expect("the emulated Graph starts")
}

/// A home signed in against `p`, sending through `g`, with `mail` in `[mail]`.
pub(crate) fn signed_in(p: &IdentityProvider, g: &GraphServer, mail: &str) -> Env {
    let env = Env::new();
    config(
        &env,
        &format!(
            "client_id = \"{TEST_CLIENT_ID}\"\nauthority = \"{}\"\ngraph_url = \"{}\"\n\
             [heartbeat]\ninterval = \"1h\"\n[sync]\nschedule = \"never\"\n[auth]\ntoken_store = \"file\"\n[mail]\n{mail}",
            p.authority(),
            g.base_url()
        ),
    );
    login(&env, p);
    env
}

fn queue(env: &Env, state: Option<&str>) -> Vec<Value> {
    let mut args = vec!["queue", "list", "--limit", "100000"];
    if let Some(s) = state {
        args.extend(["--state", s]);
    }
    env.json(&args).as_array().unwrap().clone()
}

fn send_json(env: &Env, args: &[&str]) -> Value {
    let mut a = vec!["send"];
    a.extend(args);
    a.push("--json");
    serde_json::from_str(&env.ok(&a)).unwrap()
}

/// A JSON Lines batch of `n` mails to distinct recipients.
fn batch(env: &Env, name: &str, n: usize) -> String {
    let lines: Vec<String> = (0..n)
        .map(|i| {
            serde_json::json!({
                "to": format!("user{i}@contoso.com"),
                "subject": format!("Mailbox report {i}"),
                "body": "The inactive mailbox report is attached.",
            })
            .to_string()
        })
        .collect();
    env.write(name, lines.join("\n") + "\n")
        .display()
        .to_string()
}

#[test]
fn send_checks_everything_before_storing_and_a_batch_is_all_or_nothing() {
    let env = Env::new();
    let e = env.fails(&["send", "--to", "not-an-address", "--subject", "s"], 65);
    assert!(
        e.contains("`not-an-address` is not an e-mail address"),
        "{e}"
    );
    let e = env.fails(&["send", "--subject", "s", "--body", "b"], 65);
    assert!(e.contains("no recipient"), "{e}");
    let e = env.fails(&["send", "--to", "ada@contoso.com"], 65);
    assert!(e.contains("neither a subject nor a body"), "{e}");
    let missing = env.home.path().join("missing.pdf");
    let e = env.fails(
        &[
            "send",
            "--to",
            "ada@contoso.com",
            "--subject",
            "s",
            "--attach",
            missing.to_str().unwrap(),
        ],
        66,
    );
    assert!(e.contains("missing.pdf"), "{e}");
    let big = env.write("big.bin", vec![0u8; 3 * 1024 * 1024 + 1]);
    let e = env.fails(
        &[
            "send",
            "--to",
            "ada@contoso.com",
            "--subject",
            "s",
            "--attach",
            big.to_str().unwrap(),
        ],
        65,
    );
    assert!(e.contains("3145728 bytes of attachments"), "{e}");
    let body = env.write("body.html", "<p>Holds attached.</p>");
    env.fails(
        &[
            "send",
            "--to",
            "ada@contoso.com",
            "--body",
            "b",
            "--body-file",
            body.to_str().unwrap(),
        ],
        2,
    );
    // A batch with a bad third line: named, and nothing of it queued.
    let bad = env.write(
        "bad.jsonl",
        "{\"to\": \"a@contoso.com\", \"subject\": \"one\"}\n\n{\"to\": \"b@contoso.com\", \"subject\": \"two\"}\n{\"to\": \"c@\", \"subject\": \"three\"}\n",
    );
    let e = env.fails(&["send", "--batch", bad.to_str().unwrap()], 65);
    assert!(e.contains("line 4") && e.contains("`c@`"), "{e}");
    let e = env.fails(&["send", "--batch", missing.to_str().unwrap()], 66);
    assert!(e.contains("missing.pdf"), "{e}");
    assert!(queue(&env, None).is_empty(), "nothing was queued");

    // A good mail, with its key: queued once, whatever is sent twice.
    let csv = env.write("holds.csv", "mailbox,hold\nada,LitigationHold\n");
    let args = [
        "--to",
        "ada@contoso.com",
        "--cc",
        "ben@contoso.com",
        "--bcc",
        "audit@contoso.com",
        "--subject",
        "Holds",
        "--body-file",
        body.to_str().unwrap(),
        "--html",
        "--attach",
        csv.to_str().unwrap(),
        "--from",
        "it-ops@contoso.com",
        "--key",
        "holds-2026-11-21",
    ];
    let first = send_json(&env, &args);
    assert_eq!(
        (first["added"].as_u64(), first["duplicates"].as_u64()),
        (Some(1), Some(0))
    );
    assert_eq!(first["daemon_notified"], false);
    let again = send_json(&env, &args);
    assert_eq!(
        (again["added"].as_u64(), again["duplicates"].as_u64()),
        (Some(0), Some(1))
    );
    assert_eq!(again["ids"], first["ids"]);
    let id = first["ids"][0].as_i64().unwrap().to_string();
    let shown: Value = serde_json::from_str(&env.ok(&["queue", "show", &id, "--json"])).unwrap();
    assert_eq!(shown["state"], "queued");
    assert_eq!(shown["sender"], "it-ops@contoso.com");
    assert_eq!(shown["body_type"], "html");
    assert_eq!(shown["bcc"], serde_json::json!(["audit@contoso.com"]));
    assert_eq!(shown["attachments"][0]["name"], "holds.csv");
    assert_eq!(shown["attachments"][0]["content_type"], "text/csv");
    assert_eq!(shown["attachments"][0]["size"], 32);
    let text = env.ok(&["queue", "show", &id]);
    assert!(
        text.contains("holds-2026-11-21") && text.contains("(text/csv, 32 bytes)"),
        "{text}"
    );
    // Without a daemon the mail waits, and the sender is told so.
    let out = env.ok(&["send", "--to", "ada@contoso.com", "--subject", "second"]);
    assert!(out.contains("the daemon is not running"), "{out}");
    // A batch, from a file or stdin.
    let file = batch(&env, "ok.jsonl", 3);
    assert_eq!(send_json(&env, &["--batch", &file])["added"], 3);
    let out = env
        .cmd()
        .args(["send", "--batch", "-"])
        .write_stdin("{\"to\": [\"a@contoso.com\", \"b@contoso.com\"], \"subject\": \"stdin\"}\n")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(queue(&env, Some("queued")).len(), 6);
    let added: Vec<_> = operations(&env)
        .into_iter()
        .filter(|(op, _)| op == "QUEUE_ADD")
        .collect();
    assert_eq!(added.len(), 5);
}

#[test]
fn queue_cancel_retry_and_purge_follow_the_states_with_audit_rows() {
    let env = Env::new();
    for s in ["one", "two"] {
        env.ok(&["send", "--to", "ada@contoso.com", "--subject", s]);
    }
    assert!(
        env.ok(&["queue", "cancel", "1"])
            .contains("mail 1 is cancelled")
    );
    assert!(
        env.ok(&["queue", "cancel", "1"])
            .contains("already cancelled")
    );
    assert_eq!(queue(&env, Some("cancelled")).len(), 1);
    assert!(env.ok(&["queue", "retry", "1"]).contains("queued again"));
    assert!(env.ok(&["queue", "retry", "1"]).contains("already queued"));
    let e = env.fails(&["queue", "cancel", "99"], 1);
    assert!(e.contains("no mail 99"), "{e}");
    env.fails(&["queue", "show", "99"], 1);
    assert!(
        env.ok(&["queue", "purge", "--sent-older-than", "30d"])
            .contains("purged 0")
    );
    let table = env
        .cmd()
        .args(["queue", "list", "--format", "table"])
        .env("COLUMNS", "200")
        .output()
        .unwrap();
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(
        table.contains("queued") && table.contains("ada@contoso.com"),
        "{table}"
    );
    let ops: Vec<String> = operations(&env).into_iter().map(|(o, _)| o).collect();
    for op in ["QUEUE_CANCEL", "QUEUE_RETRY", "QUEUE_PURGE"] {
        assert_eq!(
            ops.iter().filter(|o| *o == op).count(),
            1,
            "{op} in {ops:?}"
        );
    }
}

#[test]
fn the_daemon_sends_at_once_fails_a_bad_recipient_and_status_shows_the_queue() {
    let p = provider(fast());
    let g = graph(&p);
    let env = signed_in(&p, &g, "");
    let mut daemon = Daemon::start(&env);
    wait_for_state(&env, "the first cycle", |s| s["cycles"].as_u64() >= Some(1));
    // Sent within moments: `send` asks the running daemon for a cycle.
    let out = env.ok(&[
        "send",
        "--to",
        "ben@contoso.com",
        "--subject",
        "Hold review",
        "--body",
        "secret body",
    ]);
    assert!(!out.contains("not running"), "{out}");
    wait_until("the delivery", || g.deliveries().total == 1);
    wait_until("the mail marked sent", || {
        queue(&env, Some("sent")).len() == 1
    });
    let sent = &g.sent()[0];
    assert_eq!(
        sent.mailbox.to_lowercase(),
        "adele.vance@contoso.onmicrosoft.com"
    );
    assert_eq!(sent.to, vec!["ben@contoso.com"]);
    // A refused recipient: failed at once, with Graph's code, and status needs attention.
    env.ok(&[
        "send",
        "--to",
        "nobody@invalid.example",
        "--subject",
        "Hold review",
    ]);
    wait_until("the failure", || queue(&env, Some("failed")).len() == 1);
    let failed = &queue(&env, Some("failed"))[0];
    assert!(
        failed["last_error"]
            .as_str()
            .unwrap()
            .contains("ErrorInvalidRecipients"),
        "{failed}"
    );
    let id = failed["id"].as_i64().unwrap().to_string();
    assert!(
        env.ok(&["queue", "show", &id])
            .contains("HTTP 400 ErrorInvalidRecipients")
    );
    let s = status(&env);
    assert_eq!(s["health"], "attention", "{s}");
    let q = &s["queue"];
    assert_eq!(
        (
            q["sent_today"].as_u64(),
            q["failed"].as_u64(),
            q["queued"].as_u64()
        ),
        (Some(1), Some(1), Some(0)),
        "{q}"
    );
    assert_eq!(
        (q["capacity"].as_u64(), q["daily_cap"].as_u64()),
        (Some(20), Some(100))
    );
    // One send counted today: the refused one never went.
    assert_eq!(q["daily_remaining"], 99, "{q}");
    assert!(q["tokens"].as_f64().unwrap() <= 19.0, "{q}");
    let human = env.cmd().arg("status").output().unwrap();
    let human = String::from_utf8(human.stdout).unwrap();
    assert!(
        human.contains("1 failed (see `imm-daemon queue list --state failed`)"),
        "{human}"
    );
    assert!(human.contains("of 100 sends left today"), "{human}");
    // Mails sent today stay whatever `purge` is told (the day's count is rebuilt from
    // them if the bucket file is lost).
    assert!(
        env.ok(&["queue", "purge", "--sent-older-than", "0s"])
            .contains("purged 0")
    );
    // Cancelling the failed mail clears the attention.
    env.ok(&["queue", "cancel", &id]);
    assert_eq!(status(&env)["health"], "healthy");
    let ops: Vec<String> = operations(&env).into_iter().map(|(o, _)| o).collect();
    for op in ["SEND_EMAIL", "SEND_FAILED", "QUEUE_CANCEL"] {
        assert!(ops.iter().any(|o| o == op), "{op} in {ops:?}");
    }
    daemon.signal("TERM");
    assert_eq!(daemon.wait(Duration::from_secs(10)).0, Some(0));
    // The body went to Graph, never into the audit log or the daemon's log.
    let rows = env.ok(&[
        "audit",
        "list",
        "--operation",
        "SEND_EMAIL",
        "--format",
        "json",
    ]);
    assert!(
        rows.contains("Hold review") && !rows.contains("secret body"),
        "{rows}"
    );
    assert!(
        !std::fs::read_to_string(&daemon.log)
            .unwrap()
            .contains("secret body")
    );
    assert_no_secret_on_disk(&env, &p);
}

#[test]
fn twenty_one_queued_one_cycle_sends_twenty_and_the_next_cycle_the_last() {
    let p = provider(fast());
    let g = graph(&p);
    let env = signed_in(&p, &g, "refill_every = \"1s\"");
    let file = batch(&env, "21.jsonl", 21);
    assert_eq!(send_json(&env, &["--batch", &file])["added"], 21);
    // No daemon: `cycle` runs one in this process.
    let c: Value = serde_json::from_str(&env.ok(&["cycle", "--json"])).unwrap();
    let mail = &c["steps"][1];
    assert_eq!(mail["step"], "mail");
    assert_eq!(
        (
            mail["counts"]["sent"].as_u64(),
            mail["counts"]["waiting"].as_u64()
        ),
        (Some(20), Some(1)),
        "{c}"
    );
    assert_eq!(g.deliveries().total, 20);
    assert_eq!(queue(&env, Some("queued")).len(), 1);
    assert_eq!(status(&env)["queue"]["daily_remaining"], 80);
    std::thread::sleep(Duration::from_millis(1100));
    let c: Value = serde_json::from_str(&env.ok(&["cycle", "--json"])).unwrap();
    assert_eq!(c["steps"][1]["counts"]["sent"], 1, "{c}");
    assert_eq!(g.deliveries().total, 21);
    assert!(g.deliveries().duplicates().is_empty());
    assert_eq!(queue(&env, Some("sent")).len(), 21);
}

#[test]
fn four_concurrent_senders_during_a_drain_lose_nothing() {
    let p = provider(fast());
    let g = graph(&p);
    let env = signed_in(&p, &g, "capacity = 1000\ndaily_cap = 100000");
    g.set_latency(Duration::from_millis(25));
    let file = batch(&env, "40.jsonl", 40);
    send_json(&env, &["--batch", &file]);
    let _daemon = Daemon::start(&env);
    // Four processes queue 10 mails each, one `send` at a time, while the daemon drains
    // the first 40 (about half a second at 25 ms a request).
    wait_until("the drain to begin", || g.deliveries().total > 0);
    assert!(g.deliveries().total < 40);
    let overlapped = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        for w in 0..4 {
            let (env, g, overlapped) = (&env, &g, &overlapped);
            s.spawn(move || {
                for i in 0..10 {
                    if g.deliveries().total < 40 {
                        // This `send` runs while the first 40 are still going out.
                        overlapped.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    let key = format!("worker{w}-mail{i}");
                    env.ok(&[
                        "send",
                        "--to",
                        "ops@contoso.com",
                        "--subject",
                        &key,
                        "--key",
                        &key,
                    ]);
                }
            });
        }
    });
    assert!(
        overlapped.load(std::sync::atomic::Ordering::Relaxed),
        "no send ran during the drain"
    );
    wait_until("80 deliveries", || g.deliveries().total >= 80);
    wait_until("80 mails sent", || queue(&env, Some("sent")).len() == 80);
    assert_eq!(g.deliveries().total, 80);
    assert!(g.deliveries().duplicates().is_empty());
    let subjects: BTreeMap<String, usize> = g.sent().iter().fold(BTreeMap::new(), |mut m, s| {
        *m.entry(s.subject.clone()).or_default() += 1;
        m
    });
    for w in 0..4 {
        for i in 0..10 {
            assert_eq!(subjects.get(&format!("worker{w}-mail{i}")), Some(&1));
        }
    }
    assert!(g.requests().max_in_flight_per_mailbox() <= 4);
}

#[test]
fn kill_9_at_random_moments_never_loses_or_doubles_a_mail() {
    let p = provider(fast());
    let g = graph(&p);
    let env = signed_in(
        &p,
        &g,
        "capacity = 1000\ndaily_cap = 100000\nconfirm_within = \"1s\"",
    );
    g.set_latency(Duration::from_millis(40));
    // Sent mail takes a moment to reach Sent Items, as at Microsoft.
    g.set_submission_delay(Duration::from_millis(300));
    // Some sends go through but answer 504, as Graph's gateway sometimes does.
    g.fail_next_on(
        Endpoint::SendDraft,
        3,
        GraphFailure::GatewayTimeoutAfterProcessing,
    );
    take_both_tokens(&env);
    let n = 60;
    let file = batch(&env, "mails.jsonl", n);
    send_json(&env, &["--batch", &file]);
    // The mails in `sending`, each with its attempt count (one more for every attempt
    // begun).
    let sending = || -> BTreeSet<(i64, i64)> {
        let db = env.open_db();
        let mut stmt = db
            .prepare("SELECT id, attempts FROM mail_queue WHERE state = 'sending'")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let mut rng = fastrand::Rng::with_seed(5);
    let mut caught_sending = 0;
    for _ in 0..14 {
        let daemon = Daemon::start(&env);
        std::thread::sleep(Duration::from_millis(rng.u64(20..300)));
        // Dropping it kills it with SIGKILL, wherever it is.
        drop(daemon);
        caught_sending += sending().len();
    }
    // The last kill lands in the middle of a send for certain: as soon as this daemon
    // has begun an attempt. The mail stays `sending` for at least one request to Graph
    // from then on, made slow here so that the kill comes well within it.
    let before = sending();
    g.set_latency(Duration::from_millis(250));
    let daemon = Daemon::start(&env);
    wait_until("the last daemon to begin sending a mail", || {
        !sending().is_subset(&before)
    });
    drop(daemon);
    g.set_latency(Duration::from_millis(40));
    let left_sending = sending();
    assert!(
        !left_sending.is_subset(&before),
        "the last kill did not land in the middle of a send: {before:?} then {left_sending:?}"
    );
    caught_sending += left_sending.len();
    let mid_way = g.deliveries().total;
    assert!(caught_sending > 0, "no kill landed in the middle of a send");
    assert!(mid_way < n, "the kills left nothing to do");
    let lookups_before = g.requests().lookup;
    let _daemon = Daemon::start(&env);
    // Mails waiting to be confirmed are looked at again in later cycles.
    let deadline = Instant::now() + Duration::from_secs(30);
    while queue(&env, Some("sent")).len() < n {
        let left: Vec<String> = queue(&env, None)
            .iter()
            .filter(|m| m["state"] != "sent")
            .map(|m| format!("{} {} {}", m["id"], m["state"], m["last_error"]))
            .collect();
        assert!(Instant::now() < deadline, "not all sent: {left:?}");
        std::thread::sleep(Duration::from_millis(300));
        env.ok(&["cycle"]);
    }
    let d = g.deliveries();
    assert!(d.duplicates().is_empty(), "doubled: {:?}", d.duplicates());
    assert_eq!(
        d.total, n,
        "delivered {} (by the kills: {mid_way})",
        d.total
    );
    for m in queue(&env, None) {
        let imid = m["internet_message_id"].as_str().unwrap();
        assert_eq!(d.of(imid), 1, "{m}");
    }
    // The last kill's leftovers were settled by looking them up, not by sending blind.
    assert!(
        g.requests().lookup > lookups_before,
        "{} mail(s) left sending were not looked up",
        left_sending.len()
    );
}

/// A grant revoked under a fresh Graph token, met by a send: Graph refuses the token,
/// the renewal meets `invalid_grant`, and the daemon asks for a person at once (before,
/// it stayed "healthy" until the token expired). The mail waits, unsent, and goes once
/// after the new sign-in.
#[test]
fn a_grant_revoked_under_a_fresh_graph_token_asks_for_a_person_when_a_mail_meets_it() {
    let p = provider(fast());
    let g = graph(&p);
    let env = signed_in(&p, &g, "");
    take_both_tokens(&env);
    let _daemon = Daemon::start(&env);
    // Its first cycle finds both tokens fresh; only then is the grant revoked.
    wait_until("the daemon's first cycle", || {
        status(&env)["last_cycle"]["steps"][0]["summary"]
            .as_str()
            .is_some_and(|t| t.contains("2 still fresh"))
    });
    p.revoke_grants();
    let queued = send_json(
        &env,
        &["--to", "ada@contoso.com", "--subject", "after revocation"],
    );
    let code = p
        .wait_for_user_code(Duration::from_secs(15))
        .expect("the daemon asked for a device code at once");
    wait_until("status to say the sign-in is required", || {
        status(&env)["signin"]["state"] == "sign_in_required"
    });
    assert_eq!(g.deliveries().total, 0);
    assert!(p.approve(&code));
    wait_until("the mail to go after the new sign-in", || {
        g.deliveries().total == 1
    });
    assert!(g.deliveries().duplicates().is_empty());
    assert_eq!(queue(&env, Some("sent")).len(), 1, "{queued}");
}
