//! Whole-process figures of the daemon (Linux): time from start to systemd's READY=1,
//! resident memory once idle, and how often the idle daemon wakes up.
//!
//! `cargo run --release --example daemon_footprint [BINARY]` (default
//! target/release/imm-daemon). Each start gets a fresh IMM_HOME in a temporary folder and
//! a notification socket of its own; the idle daemon runs with the default heartbeat
//! (5 min), so any wakeup in the measured window is one the heartbeat did not ask for.
//!
//! Each idle figure is followed by where the resident memory is, from
//! `/proc/PID/smaps`: the binary's code (and how much of it lies in the section that
//! `link/idle-code.ld` gathers, from `/proc/PID/pagemap`; code resident outside it is
//! code the layout misses), its read-only data, its relocated read-only data (written by
//! the loader, so anonymous), the heap and other anonymous memory, stacks and the shared
//! libraries (file-backed and shared with every process that uses them).

#[path = "common/login.rs"]
mod login;
#[path = "common/procfs.rs"]
mod procfs;

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
/// a daemon that holds tokens, an HTTP client and TLS roots. Its mailbox sync goes to the
/// emulated Exchange endpoint `exo`, so that its first cycle ends (against an unreachable
/// Exchange the sync would still be waiting to retry when the memory is read).
fn sign_in(
    bin: &str,
    home: &std::path::Path,
    p: &imm_emulators::IdentityProvider,
    exo: &imm_emulators::ExchangeServer,
) {
    std::fs::create_dir_all(home.join("home/config")).unwrap();
    std::fs::write(
        home.join("home/config/config.toml"),
        format!(
            "client_id = \"{}\"\nauthority = \"{}\"\nexchange_url = \"{}\"\n[auth]\ntoken_store = \"file\"\n",
            imm_emulators::TEST_CLIENT_ID,
            p.authority(),
            exo.base_url()
        ),
    )
    .unwrap();
    login::login(bin, &home.join("home"), p);
}

fn idle(bin: &str, home: &std::path::Path, what: &str) {
    let (child, _) = start(bin, home);
    let pid = child.id();
    // The daemon's blocking-pool threads (name lookups, file reads) end 1 s after their
    // last task, and it gives memory back again 3 s after a cycle; counting starts well
    // after both, so every thread counted lives throughout.
    std::thread::sleep(Duration::from_secs(12));
    let (before, _) = switches(pid);
    std::thread::sleep(Duration::from_secs(10));
    let (after, threads) = switches(pid);
    println!(
        "idle, {what}: VmRSS {} kB ({} kB anonymous, {} kB file-backed), VmHWM {} kB, {} context switches in 10 s over its {threads} threads",
        procfs::status_kib(pid, "VmRSS:"),
        procfs::status_kib(pid, "RssAnon:"),
        procfs::status_kib(pid, "RssFile:"),
        procfs::status_kib(pid, "VmHWM:"),
        after.saturating_sub(before)
    );
    println!("  {}", breakdown(pid));
    stop(child);
}

/// The `.text.idle` section's address range in the binary (ELF64, little-endian).
fn idle_section(exe: &std::path::Path) -> Option<(u64, u64)> {
    let f = std::fs::read(exe).ok()?;
    let u16_at = |o: usize| -> Option<u64> {
        Some(u16::from_le_bytes(f.get(o..o + 2)?.try_into().ok()?).into())
    };
    let u32_at = |o: usize| -> Option<u64> {
        Some(u32::from_le_bytes(f.get(o..o + 4)?.try_into().ok()?).into())
    };
    let u64_at =
        |o: usize| -> Option<u64> { Some(u64::from_le_bytes(f.get(o..o + 8)?.try_into().ok()?)) };
    if f.get(..5)? != b"\x7fELF\x02" {
        return None;
    }
    let shoff = u64_at(0x28)? as usize;
    let (shentsize, shnum, shstrndx) = (u16_at(0x3a)?, u16_at(0x3c)?, u16_at(0x3e)?);
    let header = |i: u64| shoff + (i * shentsize) as usize;
    let strtab = u64_at(header(shstrndx) + 0x18)? as usize;
    (0..shnum).find_map(|i| {
        let h = header(i);
        let start = strtab + u32_at(h)? as usize;
        let end = start + f.get(start..)?.iter().position(|&b| b == 0)?;
        if f.get(start..end)? != b".text.idle" {
            return None;
        }
        Some((u64_at(h + 0x10)?, u64_at(h + 0x20)?))
    })
}

/// Resident pages of `[start, end)` in the process's address space.
fn resident_pages(pid: u32, start: u64, end: u64) -> u64 {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(format!("/proc/{pid}/pagemap")).unwrap();
    let pages = ((end - start) / 4096) as usize;
    let mut buf = vec![0u8; pages * 8];
    f.seek(SeekFrom::Start(start / 4096 * 8)).unwrap();
    f.read_exact(&mut buf).unwrap();
    buf.chunks(8)
        .filter(|e| u64::from_le_bytes((*e).try_into().unwrap()) >> 63 == 1)
        .count() as u64
}

/// Where the resident memory is (kB).
fn breakdown(pid: u32) -> String {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    #[derive(Default)]
    struct Kb {
        code: u64,
        rodata: u64,
        relro: u64,
        data: u64,
        anon: u64,
        stack: u64,
        libs: u64,
        other: u64,
    }
    let mut kb = Kb::default();
    let mut base = None;
    let mut text = None;
    let mut current: Option<(String, String, u64, u64)> = None;
    let mut rss = 0;
    let mut flush = |m: &Option<(String, String, u64, u64)>, rss: u64, anon: u64| {
        let Some((path, perms, _, _)) = m else { return };
        let slot = if path == exe.to_str().unwrap() {
            match perms.as_str() {
                "r-xp" => &mut kb.code,
                "rw-p" => &mut kb.data,
                _ if anon > 0 => &mut kb.relro,
                _ => &mut kb.rodata,
            }
        } else if path.is_empty() || path == "[heap]" {
            &mut kb.anon
        } else if path.starts_with("[stack") {
            &mut kb.stack
        } else if path.contains(".so") {
            &mut kb.libs
        } else {
            &mut kb.other
        };
        *slot += rss;
    };
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        let first = f.next().unwrap_or_default();
        if let Some((a, b)) = first.split_once('-')
            && let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16))
        {
            let perms = f.next().unwrap_or_default().to_string();
            let offset = u64::from_str_radix(f.next().unwrap_or("0"), 16).unwrap_or(0);
            let path = f.nth(2).unwrap_or_default().to_string();
            if path == exe.to_str().unwrap() {
                if offset == 0 && base.is_none() {
                    base = Some(a);
                }
                if perms == "r-xp" {
                    text = Some((a, b));
                }
            }
            current = Some((path, perms, a, b));
        } else if first == "Rss:" {
            rss = f.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        } else if first == "Anonymous:" {
            let anon = f.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            flush(&current, rss, anon);
        }
    }
    let idle = match (idle_section(&exe), base, text) {
        (Some((addr, size)), Some(base), Some((t0, t1))) => {
            let start = (base + addr) / 4096 * 4096;
            let end = (base + addr + size).div_ceil(4096) * 4096;
            let in_idle = resident_pages(pid, start.max(t0), end.min(t1)) * 4;
            format!(
                " ({in_idle} kB of it in .text.idle, {} kB elsewhere)",
                kb.code - in_idle
            )
        }
        _ => " (no .text.idle section)".to_string(),
    };
    format!(
        "binary: code {} kB{idle}, read-only data {} kB, relocated read-only data {} kB, data {} kB; heap and anonymous {} kB; stacks {} kB; shared libraries {} kB; other {} kB",
        kb.code, kb.rodata, kb.relro, kb.data, kb.anon, kb.stack, kb.libs, kb.other
    )
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
    let exchange = imm_emulators::ExchangeServer::start_in_background(
        imm_emulators::ExchangeOptions {
            token_checker: Some(provider.token_checker()),
            ..Default::default()
        },
        imm_emulators::synthetic_tenant(100, 42),
    )
    .expect("the emulated Exchange starts");
    let signed_in = tempfile::tempdir().unwrap();
    sign_in(&bin, signed_in.path(), &provider, &exchange);
    idle(
        &bin,
        signed_in.path(),
        "signed in, tokens refreshed and 100 mailboxes synced at start",
    );
}
