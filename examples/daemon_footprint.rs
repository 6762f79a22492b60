//! Whole-process figures of the daemon (Linux): time from start to systemd's READY=1,
//! resident memory once idle, and how often the idle daemon wakes up.
//!
//! `cargo run --release --example daemon_footprint [BINARY]` (default
//! target/release/imm-daemon). Each start gets a fresh IMM_HOME in a temporary folder and
//! a notification socket of its own; the idle daemon runs with the default heartbeat
//! (5 min), so any wakeup in the measured window is one the heartbeat did not ask for.

use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn start(bin: &str, home: &std::path::Path) -> (Child, Duration) {
    let sock_path = home.join("notify.sock");
    let _ = std::fs::remove_file(&sock_path);
    let sock = UnixDatagram::bind(&sock_path).expect("notification socket");
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let t = Instant::now();
    let child = Command::new(bin)
        .arg("run")
        .env("IMM_HOME", home.join("home"))
        .env("NOTIFY_SOCKET", &sock_path)
        .env_remove("WATCHDOG_USEC")
        .stderr(Stdio::null())
        .spawn()
        .expect("the daemon starts");
    let mut child = child;
    let mut buf = [0u8; 4096];
    loop {
        match sock.recv(&mut buf) {
            Ok(n) if String::from_utf8_lossy(&buf[..n]).contains("READY=1") => {
                return (child, t.elapsed());
            }
            Ok(_) => {}
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("no READY=1 within 10 s: {e}");
            }
        }
    }
}

fn stop(mut child: Child) {
    Command::new("sh")
        .args(["-c", &format!("kill -TERM {}", child.id())])
        .status()
        .unwrap();
    child.wait().unwrap();
}

fn proc_field(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc (Linux)");
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{key} in /proc/{pid}/status"))
}

/// Context switches of every thread of the process (each thread's own count is in its
/// `/proc/PID/task/TID/status`; the process's `status` has only the main thread's).
fn switches(pid: u32) -> (u64, usize) {
    let mut total = 0;
    let mut threads = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc (Linux)") {
        let path = task.unwrap().path().join("status");
        let Ok(status) = std::fs::read_to_string(&path) else {
            continue; // the thread ended meanwhile
        };
        threads += 1;
        for key in ["voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:"] {
            total += status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    (total, threads)
}

/// Signs the daemon's home in against an emulated identity provider (the real `login`
/// command, the code approved as a person would), so the idle figures below are those of
/// a daemon that holds tokens, an HTTP client and TLS roots.
fn sign_in(bin: &str, home: &std::path::Path, p: &imm_emulators::IdentityProvider) {
    std::fs::create_dir_all(home.join("home/config")).unwrap();
    std::fs::write(
        home.join("home/config/config.toml"),
        format!(
            "client_id = \"{}\"\nauthority = \"{}\"\n[auth]\ntoken_store = \"file\"\n",
            imm_emulators::TEST_CLIENT_ID,
            p.authority()
        ),
    )
    .unwrap();
    let child = Command::new(bin)
        .arg("login")
        .env("IMM_HOME", home.join("home"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let code = p
        .wait_for_user_code(Duration::from_secs(10))
        .expect("a device code");
    p.approve(&code);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "login failed");
}

fn idle(bin: &str, home: &std::path::Path, what: &str) {
    let (child, _) = start(bin, home);
    let pid = child.id();
    // tokio's blocking-pool threads (name lookups, file reads) end 10 s after their last
    // task; counting starts once they are gone, so every thread counted lives throughout.
    std::thread::sleep(Duration::from_secs(12));
    let (before, _) = switches(pid);
    std::thread::sleep(Duration::from_secs(10));
    let (after, threads) = switches(pid);
    println!(
        "idle, {what}: VmRSS {} kB ({} kB anonymous, {} kB file-backed), VmHWM {} kB, {} context switches in 10 s over its {threads} threads",
        proc_field(pid, "VmRSS:"),
        proc_field(pid, "RssAnon:"),
        proc_field(pid, "RssFile:"),
        proc_field(pid, "VmHWM:"),
        after.saturating_sub(before)
    );
    stop(child);
}

fn main() {
    let bin = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "target/release/imm-daemon".into());
    let dir = tempfile::tempdir().unwrap();
    let mut ready = Vec::new();
    for i in 0..20 {
        // The first start creates the database; the others find it.
        let (child, t) = start(&bin, dir.path());
        if i > 0 {
            ready.push(t);
        }
        stop(child);
    }
    ready.sort();
    println!(
        "start to READY=1 (existing home, 19 starts): median {:.1} ms, min {:.1} ms, max {:.1} ms",
        ready[ready.len() / 2].as_secs_f64() * 1e3,
        ready[0].as_secs_f64() * 1e3,
        ready[ready.len() - 1].as_secs_f64() * 1e3
    );
    idle(&bin, dir.path(), "sign-in not configured");
    let provider =
        imm_emulators::IdentityProvider::start_in_background(imm_emulators::IdentityOptions {
            interval: Some(1),
            ..Default::default()
        })
        .expect("the emulated provider starts");
    let signed_in = tempfile::tempdir().unwrap();
    sign_in(&bin, signed_in.path(), &provider);
    idle(
        &bin,
        signed_in.path(),
        "signed in, tokens refreshed at start",
    );
}
