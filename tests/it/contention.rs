//! Many processes on one database at once: importers of large snapshots, readers,
//! senders and the daemon. Every command waits for the others; none fails.

use std::process::Output;
use std::sync::{Arc, Mutex};
use std::thread;

use crate::daemon::{Daemon, config, running, wait_for_state};
use crate::support::{Env, days_ago_ms, record};

/// A snapshot of `n` mailboxes, none of them in another `seed`'s: each import replaces
/// the whole cache, the heaviest write there is (every mailbox removed, audited and
/// added).
fn snapshot(env: &Env, seed: usize, n: usize) -> String {
    let records: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            let guid = format!("{seed:08x}-0000-4000-8000-{i:012x}");
            record(
                &guid,
                &format!("User {seed}-{i}"),
                &format!("user{seed}.{i}@contoso.com"),
                days_ago_ms(40 + ((i + seed) % 300) as i64),
            )
        })
        .collect();
    env.write(
        &format!("snapshot-{seed}.json"),
        serde_json::to_vec(&records).unwrap(),
    )
    .display()
    .to_string()
}

#[test]
fn importers_readers_senders_and_the_daemon_at_once_never_fail() {
    let env = Arc::new(Env::new());
    config(
        &env,
        "[heartbeat]\ninterval = \"10s\"\n[sync]\nschedule = \"never\"\n",
    );
    let files: Vec<String> = (0..4).map(|s| snapshot(&env, s, 50_000)).collect();
    env.ok(&["mailboxes", "import", &files[0]]);
    let _daemon = Daemon::start(&env);
    wait_for_state(&env, "running", running);

    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let run = |env: &Env, args: &[String], failures: &Mutex<Vec<String>>| {
        let started = std::time::Instant::now();
        let out: Output = env.cmd().args(args).output().unwrap();
        if !out.status.success() {
            failures.lock().unwrap().push(format!(
                "{args:?} after {:?}: {}",
                started.elapsed(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    };
    let mut workers = Vec::new();
    // Four importers, each replacing the whole cache with its snapshot twice.
    for f in files.clone() {
        let (env, failures) = (env.clone(), failures.clone());
        workers.push(thread::spawn(move || {
            for _ in 0..2 {
                run(
                    &env,
                    &[
                        "mailboxes".into(),
                        "import".into(),
                        // Each snapshot replaces the whole cache, on purpose.
                        "--allow-removals".into(),
                        f.clone(),
                    ],
                    &failures,
                );
            }
        }));
    }
    // Three senders.
    for s in 0..3 {
        let (env, failures) = (env.clone(), failures.clone());
        workers.push(thread::spawn(move || {
            for i in 0..40 {
                let args: Vec<String> = [
                    "send",
                    "--to",
                    "a@contoso.com",
                    "--subject",
                    &format!("sender {s} mail {i}"),
                    "--body",
                    "b",
                ]
                .iter()
                .map(|a| a.to_string())
                .collect();
                run(&env, &args, &failures);
            }
        }));
    }
    // Readers, each of which also writes its audit row.
    for args in [
        vec!["mailboxes", "search", "user1"],
        vec!["mailboxes", "list", "--limit", "50"],
        vec!["mailboxes", "stats"],
        vec!["audit", "verify"],
        vec!["queue", "list", "--limit", "10"],
    ] {
        let (env, failures) = (env.clone(), failures.clone());
        workers.push(thread::spawn(move || {
            let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
            for _ in 0..12 {
                run(&env, &args, &failures);
            }
        }));
    }
    for w in workers {
        w.join().unwrap();
    }
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} command(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(
        env.count("SELECT count(*) FROM mail_queue"),
        120,
        "every send was queued once"
    );
    assert_eq!(env.count("SELECT count(*) FROM inactive_mailboxes"), 50_000);
    env.ok(&["audit", "verify"]);
}
