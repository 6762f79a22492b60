//! Whole-process figures of the live sync (Linux): `imm-daemon sync` against the emulated
//! identity provider and Exchange admin endpoint on loopback, served from this process so
//! that the measured process is the daemon's binary alone.
//!
//! `cargo run --release --example sync_footprint [BINARY [SIZE...]]` (default
//! target/release/imm-daemon, sizes 10000 and 100000). For each tenant size it signs in with a device code (approved
//! here), then times, with `/usr/bin/time`, a first sync with every statistic fetched
//! (`statistics_per_cycle` large), an unchanged resync, and, for the largest tenant, the
//! peak memory of a first sync with the default statistics batch; last it measures the
//! running daemon's resident memory (all, anonymous, file-backed) idle, then 1 s and 5 s
//! after a first sync of that tenant asked of it, after an unchanged resync, and after it
//! drained 10,000 queued mails to the emulated Graph (one cycle, the send bucket raised to
//! let them all go), with the peak of each. The daemon gives memory back at a cycle's end
//! and again 3 s later, once the cycle's connections are closed; the 5 s figures (and the
//! idle one, 5 s after start) come after both. `IMM_BENCH_DAEMON_ONLY=1` measures the
//! daemon alone; `IMM_BENCH_SMAPS=1` lists the resident memory by mapping;
//! `IMM_BENCH_DAEMON_LOG=FILE` keeps the daemon's log.

#[path = "common/login.rs"]
mod login;
#[path = "common/procfs.rs"]
mod procfs;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use imm_emulators::exchange::{ExchangeOptions, ExchangeServer, synthetic_tenant};
use imm_emulators::graph::{GraphOptions, GraphServer};
use imm_emulators::identity::{IdentityOptions, IdentityProvider, TEST_CLIENT_ID};

struct Tenant {
    idp: IdentityProvider,
    exo: ExchangeServer,
    graph: GraphServer,
}

fn tenant(n: usize) -> Tenant {
    let idp = IdentityProvider::start_in_background(IdentityOptions {
        interval: Some(1),
        ..IdentityOptions::default()
    })
    .expect("the identity emulator starts");
    let exo = ExchangeServer::start_in_background(
        ExchangeOptions {
            token_checker: Some(idp.token_checker()),
            ..ExchangeOptions::default()
        },
        synthetic_tenant(n, 42),
    )
    .expect("the Exchange emulator starts");
    let graph = GraphServer::start_in_background(GraphOptions {
        token_checker: Some(idp.token_checker()),
        ..GraphOptions::default()
    })
    .expect("the Graph emulator starts");
    Tenant { idp, exo, graph }
}

fn home(t: &Tenant, bin: &str, sync: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("config")).unwrap();
    std::fs::write(
        dir.path().join("config/config.toml"),
        format!(
            "client_id = \"{TEST_CLIENT_ID}\"\nauthority = \"{}\"\nexchange_url = \"{}\"\ngraph_url = \"{}\"\n\
             [heartbeat]\ninterval = \"1h\"\n[auth]\ntoken_store = \"file\"\n\
             [sync]\nsource = \"exchange\"\nschedule = \"never\"\n{sync}",
            t.idp.authority(),
            t.exo.base_url(),
            t.graph.base_url()
        ),
    )
    .unwrap();
    login::login(bin, dir.path(), &t.idp);
    dir
}

/// Runs `imm-daemon ARGS` under /usr/bin/time: (seconds, peak RSS in KiB), and prints
/// the CPU time it used when IMM_BENCH_CPU is set.
fn timed(bin: &str, home: &Path, args: &[&str]) -> (f64, u64) {
    let out = Command::new("/usr/bin/time")
        .args(["-f", "%e %M %U %S"])
        .arg(bin)
        .args(args)
        .env("IMM_HOME", home)
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or_default().to_string();
    let mut f = last.split_whitespace();
    let figures = (
        f.next().unwrap().parse().unwrap(),
        f.next().unwrap().parse().unwrap(),
    );
    if std::env::var_os("IMM_BENCH_CPU").is_some() {
        eprintln!(
            "  {args:?}: user {} s, system {} s",
            f.next().unwrap_or("?"),
            f.next().unwrap_or("?")
        );
    }
    figures
}

/// VmRSS, RssAnon and RssFile of a process, in KiB.
fn rss_kib(pid: u32) -> [u64; 3] {
    ["VmRSS:", "RssAnon:", "RssFile:"].map(|key| procfs::status_kib(pid, key))
}

/// The process's peak resident memory (VmHWM) in KiB since its start or the last
/// [`reset_peak`].
fn peak_kib(pid: u32) -> u64 {
    procfs::status_kib(pid, "VmHWM:")
}

/// Starts the process's peak resident memory again from its current figure.
fn reset_peak(pid: u32) {
    // Linux: writing 5 to clear_refs resets VmHWM (the process is ours). A peak that
    // could not be reset would be reported as the step's, so this must not fail quietly.
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("VmHWM reset");
}

/// With `IMM_BENCH_SMAPS` set: the process's resident KiB by mapping (file and
/// permissions, or `[anon]`), largest first, for comparing the idle daemon with itself
/// after a step.
fn print_mappings(pid: u32, when: &str) {
    if std::env::var_os("IMM_BENCH_SMAPS").is_none() {
        return;
    }
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut by: std::collections::BTreeMap<String, u64> = Default::default();
    let mut current = String::new();
    for line in smaps.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.first()
            .is_some_and(|r| r.contains('-') && !r.ends_with(':'))
        {
            current = format!("{} {}", f.get(5).copied().unwrap_or("[anon]"), f[1]);
        } else if f.first() == Some(&"Rss:") {
            *by.entry(current.clone()).or_default() += f[1].parse::<u64>().unwrap();
        }
    }
    let mut rows: Vec<_> = by.into_iter().filter(|(_, kib)| *kib > 0).collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.1));
    println!("  mappings {when}:");
    for (m, kib) in rows {
        println!("    {kib:>6} KiB {m}");
    }
}

/// The process's threads now.
fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn mb([all, anon, file]: [u64; 3]) -> String {
    format!(
        "{:.1} MB ({:.1} MB anonymous, {:.1} MB file-backed)",
        all as f64 / 1024.0,
        anon as f64 / 1024.0,
        file as f64 / 1024.0
    )
}

/// `n` mails as `send --batch` reads them (as benches/whole-process.sh writes them).
fn mail_batch(n: usize) -> String {
    let domains = [
        "contoso.com",
        "fabrikam.com",
        "northwindtraders.com",
        "woodgrovebank.com",
    ];
    let body = "Hello,\\n\\nthe inactive mailbox named in the subject is still on litigation hold. \
                Please review whether the hold is still needed.\\n\\nRegards,\\nIT Operations\\n";
    (0..n)
        .map(|i| {
            let d = domains[i % 4];
            format!(
                "{{\"to\": [\"owner.{}@{d}\"], \"subject\": \"Inactive mailbox user.{i}@{d}: hold review due\", \"body\": \"{body}\"}}\n",
                i % 997
            )
        })
        .collect()
}

fn main() {
    let bin = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "target/release/imm-daemon".into());
    let runs = 3;
    let mut sizes: Vec<usize> = std::env::args()
        .skip(2)
        .map(|a| a.parse().expect("a tenant size"))
        .collect();
    if sizes.is_empty() {
        sizes = vec![10_000, 100_000];
    }
    for n in sizes {
        let t = tenant(n);
        if std::env::var_os("IMM_BENCH_DAEMON_ONLY").is_none() {
            let full = home(&t, &bin, "statistics_per_cycle = 1000000\n");
            let (secs, kib) = timed(&bin, full.path(), &["sync"]);
            println!(
                "{n} mailboxes: first sync with every statistic: {secs:.2} s, peak RSS {:.1} MB",
                kib as f64 / 1024.0
            );
            let mut times = Vec::new();
            for _ in 0..runs {
                times.push(timed(&bin, full.path(), &["sync"]));
            }
            times.sort_by(|a, b| a.0.total_cmp(&b.0));
            let (secs, kib) = times[runs / 2];
            println!(
                "{n} mailboxes: unchanged resync (median of {runs}): {secs:.2} s, peak RSS {:.1} MB",
                kib as f64 / 1024.0
            );
            let default = home(&t, &bin, "");
            let (secs, kib) = timed(&bin, default.path(), &["sync"]);
            println!(
                "{n} mailboxes: first sync, default statistics batch (500): {secs:.2} s, peak RSS {:.1} MB",
                kib as f64 / 1024.0
            );
        }
        if n == 100_000 {
            let home = home(
                &t,
                &bin,
                "statistics_per_cycle = 0\n\
                 [mail]\ncapacity = 10000\nrefill_every = \"1s\"\ndaily_cap = 1000000\n",
            );
            // IMM_BENCH_DAEMON_LOG=FILE keeps the daemon's log (IMM_LOG sets its filter).
            let log = match std::env::var_os("IMM_BENCH_DAEMON_LOG") {
                Some(f) => Stdio::from(std::fs::File::create(f).unwrap()),
                None => Stdio::null(),
            };
            let mut daemon = Command::new(&bin)
                .arg("run")
                .env("IMM_HOME", home.path())
                .env_remove("NOTIFY_SOCKET")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_secs(5));
            let idle = rss_kib(daemon.id());
            println!("daemon: idle {}", mb(idle));
            print_mappings(daemon.id(), "idle");
            for what in ["first sync", "unchanged resync"] {
                reset_peak(daemon.id());
                let t0 = Instant::now();
                let ok = Command::new(&bin)
                    .arg("sync")
                    .env("IMM_HOME", home.path())
                    .stdout(Stdio::null())
                    .status()
                    .unwrap();
                assert!(ok.success());
                let synced = t0.elapsed();
                std::thread::sleep(Duration::from_secs(1));
                println!(
                    "daemon: 1 s after a {what} of {n} ({:.1} s, peak {:.1} MB): {}, {} threads",
                    synced.as_secs_f64(),
                    peak_kib(daemon.id()) as f64 / 1024.0,
                    mb(rss_kib(daemon.id())),
                    threads(daemon.id())
                );
                std::thread::sleep(Duration::from_secs(4));
                println!(
                    "daemon: 5 s after: {}, {} threads",
                    mb(rss_kib(daemon.id())),
                    threads(daemon.id())
                );
                print_mappings(daemon.id(), &format!("5 s after a {what}"));
            }
            let batch = home.path().join("batch.jsonl");
            std::fs::write(&batch, mail_batch(10_000)).unwrap();
            reset_peak(daemon.id());
            let t0 = Instant::now();
            for args in [&["send", "--batch"][..], &["cycle"][..]] {
                let mut cmd = Command::new(&bin);
                cmd.args(args)
                    .env("IMM_HOME", home.path())
                    .stdout(Stdio::null());
                if args[0] == "send" {
                    cmd.arg(&batch);
                }
                assert!(cmd.status().unwrap().success(), "{args:?}");
            }
            let drained = t0.elapsed();
            std::thread::sleep(Duration::from_secs(1));
            println!(
                "daemon: 1 s after draining 10000 mails ({:.1} s, peak {:.1} MB): {}",
                drained.as_secs_f64(),
                peak_kib(daemon.id()) as f64 / 1024.0,
                mb(rss_kib(daemon.id()))
            );
            std::thread::sleep(Duration::from_secs(4));
            println!("daemon: 5 s after: {}", mb(rss_kib(daemon.id())));
            print_mappings(daemon.id(), "5 s after the drain");
            let _ = Command::new("kill").arg(daemon.id().to_string()).status();
            let _ = daemon.wait();
        }
    }
}
