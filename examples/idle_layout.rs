//! Writes `link/idle-code.ld`, the linker script that gathers the code the daemon runs
//! while it starts and idles at the front of the binary's text (Linux).
//!
//! ```sh
//! IMM_NO_CODE_LAYOUT=1 cargo build --release --bins
//! cp target/release/imm-daemon /tmp/imm-daemon-unordered
//! cargo run --release --example idle_layout /tmp/imm-daemon-unordered
//! cargo build --release --bins       # the layout takes effect
//! ```
//!
//! `idle_layout [BINARY [OUTPUT]]` (default target/release/imm-daemon and
//! link/idle-code.ld). Needs valgrind, nm and readelf. The binary it traces must be built
//! without the layout: valgrind attributes only code in a section named `.text` to the
//! binary, so the functions already gathered would go unseen (it refuses such a binary).
//!
//! Why: the kernel maps a program's code in 64 KiB windows around each page it runs
//! (fault-around), from the file's pages in the page cache. The few thousand functions
//! the idle daemon runs are spread over the whole 8.6 MB of text, so nearly every window
//! was mapped and counted in its resident memory, though 85 % of the code in them never
//! ran. Gathered in one place they take about as much resident memory as they are big.
//!
//! How: the release binary runs under callgrind through the daemon's own scenarios, each
//! in a throwaway `IMM_HOME` and stopped with SIGTERM once its work is done: a first start
//! (the database created), a start on that database (sign-in not configured), a start
//! signed in against the emulated identity provider (tokens refreshed, 100 mailboxes
//! synced from the emulated Exchange endpoint), two syncs of a 10,000-mailbox tenant (no statistics asked)
//! asked of a running daemon (large enough for the search index's merges, the cache's
//! spills and a checkpoint, which a small tenant never reaches), and mail sent through one
//! to the emulated Graph (a batch of 200, drained several at a time, and three single
//! mails). The configured scenarios set the heartbeat, as installed daemons do. Every
//! function callgrind saw run in the binary goes into the script, the scenarios in that
//! order, each function once, so that a daemon that never signs in maps only the first
//! part. Within a scenario functions keep the order the compiler gave them.
//!
//! The script names input sections by pattern: `.text.NAME` for each function, as rustc
//! and the C compiler emit them, and `.text.unlikely.NAME` for the ones they judged cold.
//! Names are the v0 mangling (`.cargo/config.toml` sets `-C symbol-mangling-version=v0`),
//! whose instances spell out their generic arguments; the crates' disambiguators (`Cs…_`),
//! which change with the compiler, the dependencies and the features, are wildcards, so
//! the script keeps working across rebuilds, the `sandbox` feature on or off and
//! dependency updates. A function added or renamed since the script was written is simply
//! not gathered: the layout never changes what the program does, only where its code
//! sits. Run this again after larger changes to what the daemon does at start or idle.

#[path = "common/login.rs"]
mod login;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use imm_emulators::exchange::{ExchangeOptions, ExchangeServer, synthetic_tenant};
use imm_emulators::graph::{GraphOptions, GraphServer};
use imm_emulators::identity::{IdentityOptions, IdentityProvider, TEST_CLIENT_ID};

/// A daemon running under callgrind.
struct Traced {
    child: Child,
    out: PathBuf,
    home: PathBuf,
}

fn start_traced(bin: &str, home: &Path, out: &Path) -> Traced {
    let sock_path = home.with_extension("notify.sock");
    let _ = std::fs::remove_file(&sock_path);
    let sock = UnixDatagram::bind(&sock_path).expect("notification socket");
    sock.set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let child = Command::new("valgrind")
        .args([
            "--tool=callgrind",
            "--dump-instr=no",
            "--demangle=no",
            "--trace-children=no",
        ])
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(bin)
        .arg("run")
        .env("IMM_HOME", home)
        // Set as the daemon would set it by starting itself again, which valgrind
        // (`--trace-children=no`) would not follow.
        .env("GLIBC_TUNABLES", imm_daemon::memory::NO_THREAD_CACHE)
        .env("NOTIFY_SOCKET", &sock_path)
        .env_remove("WATCHDOG_USEC")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("valgrind starts (is it installed?)");
    let mut buf = [0u8; 4096];
    loop {
        let n = sock.recv(&mut buf).expect("READY=1 within 120 s");
        if String::from_utf8_lossy(&buf[..n]).contains("READY=1") {
            break;
        }
    }
    let traced = Traced {
        child,
        out: out.to_path_buf(),
        home: home.to_path_buf(),
    };
    wait_cycles(&traced, 1);
    traced
}

/// Waits until the daemon has completed `n` cycles (its state file says so).
fn wait_cycles(t: &Traced, n: u64) {
    let state = t.home.join("state/daemon-state.json");
    let t0 = Instant::now();
    loop {
        let cycles = std::fs::read(&state)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["cycles"].as_u64())
            .unwrap_or(0);
        if cycles >= n {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "no cycle {n} within 5 minutes"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Stops the daemon with SIGTERM and returns callgrind's output file.
fn stop(mut t: Traced) -> PathBuf {
    Command::new("kill")
        .args(["-TERM", &t.child.id().to_string()])
        .status()
        .unwrap();
    assert!(
        t.child.wait().unwrap().success(),
        "the daemon stopped badly"
    );
    t.out
}

/// Runs a command against the traced daemon. Under callgrind the daemon can take longer
/// than the command's 5 s to answer while it finishes large work (the search index's
/// merges, a checkpoint), so an unanswered request is asked again, for up to 5 minutes.
fn cli(bin: &str, home: &Path, args: &[&str]) {
    let t0 = Instant::now();
    let out = loop {
        let out = Command::new(bin)
            .args(args)
            .env("IMM_HOME", home)
            .stdout(Stdio::null())
            .output()
            .unwrap();
        if out.status.success()
            || !String::from_utf8_lossy(&out.stderr).contains("not answering")
            || t0.elapsed() > Duration::from_secs(300)
        {
            break out;
        }
        std::thread::sleep(Duration::from_secs(2));
    };
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes the configuration, with the heartbeat installed daemons have, and signs in
/// with a device code approved here. `extra` holds top-level keys and further tables.
fn sign_in(bin: &str, home: &Path, idp: &IdentityProvider, extra: &str) {
    std::fs::create_dir_all(home.join("config")).unwrap();
    std::fs::write(
        home.join("config/config.toml"),
        format!(
            "client_id = \"{TEST_CLIENT_ID}\"\nauthority = \"{}\"\n{extra}\
             [heartbeat]\ninterval = \"1h\"\n[auth]\ntoken_store = \"file\"\n",
            idp.authority()
        ),
    )
    .unwrap();
    login::login(bin, home, idp);
}

/// The functions of `bin` that a callgrind output file saw run.
fn executed(file: &Path, bin: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(file).expect("callgrind's output");
    let bin_name = Path::new(bin)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let mut objects: HashMap<String, String> = HashMap::new();
    let mut functions: HashMap<String, String> = HashMap::new();
    let mut in_bin = false;
    let mut out = BTreeSet::new();
    // Names are compressed: `ob=(3) /path` defines id 3, a later `ob=(3)` refers to it;
    // `cob=` and `cfn=` (the callee's object and function) define ids the same way.
    let define = |map: &mut HashMap<String, String>, rest: &str| -> String {
        let rest = rest.trim();
        match rest.strip_prefix('(').and_then(|r| r.split_once(')')) {
            Some((id, name)) if !name.trim().is_empty() => {
                map.insert(id.to_string(), name.trim().to_string());
                name.trim().to_string()
            }
            Some((id, _)) => map.get(id).cloned().unwrap_or_default(),
            None => rest.to_string(),
        }
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("ob=") {
            let name = define(&mut objects, rest);
            in_bin = Path::new(&name)
                .file_name()
                .is_some_and(|n| n.to_string_lossy() == bin_name);
        } else if let Some(rest) = line.strip_prefix("cob=") {
            define(&mut objects, rest);
        } else if let Some(rest) = line.strip_prefix("fn=") {
            let name = define(&mut functions, rest);
            if in_bin {
                // Recursion levels are marked `name'2`.
                let name = name.split('\'').next().unwrap_or_default();
                out.insert(name.to_string());
            }
        } else if let Some(rest) = line.strip_prefix("cfn=") {
            define(&mut functions, rest);
        }
    }
    out
}

/// The binary's function symbols: name to address, and address to every name it has
/// (merged functions share an address; the section carries one of the names).
fn symbols(bin: &str) -> (HashMap<String, u64>, BTreeMap<u64, Vec<String>>) {
    let out = Command::new("nm")
        .args(["--defined-only", bin])
        .output()
        .expect("nm runs (binutils)");
    assert!(out.status.success(), "nm {bin} failed");
    let mut by_name = HashMap::new();
    let mut by_addr: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut f = line.split_whitespace();
        let (Some(addr), Some(kind), Some(name)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if !matches!(kind, "t" | "T" | "w" | "W") {
            continue;
        }
        let Ok(addr) = u64::from_str_radix(addr, 16) else {
            continue;
        };
        by_name.insert(name.to_string(), addr);
        by_addr.entry(addr).or_default().push(name.to_string());
    }
    (by_name, by_addr)
}

/// A section name's pattern: the crates' disambiguators of a v0 name, a legacy name's
/// hash and LLVM's numbering of promoted local functions are wildcards.
fn pattern(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let v0 = name.starts_with("_R");
    let b = name.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let rest = &name[i..];
        // v0: a crate root with its disambiguator, `Cs<base62>_`.
        if v0
            && rest.starts_with("Cs")
            && let Some(end) = rest[2..].find('_')
            && end > 0
            && rest[2..2 + end].bytes().all(|c| c.is_ascii_alphanumeric())
        {
            out.push_str("Cs*_");
            i += 2 + end + 1;
            continue;
        }
        // Legacy: `17h<16 hex digits>E`.
        if !v0
            && rest.starts_with("17h")
            && rest.len() >= 20
            && rest[3..19].bytes().all(|c| c.is_ascii_hexdigit())
            && rest.as_bytes()[19] == b'E'
        {
            out.push_str("17h*E");
            i += 20;
            continue;
        }
        // `.llvm.<digits>`
        if let Some(digits) = rest.strip_prefix(".llvm.")
            && digits.bytes().next().is_some_and(|c| c.is_ascii_digit())
        {
            out.push_str(".llvm.*");
            i += 6 + digits.bytes().take_while(|c| c.is_ascii_digit()).count();
            continue;
        }
        let c = rest.chars().next().unwrap();
        out.push(c);
        i += c.len_utf8();
    }
    out
}

/// The input sections that hold a function, as patterns.
fn sections(name: &str) -> String {
    // GCC's cold part of `f` is the symbol `f.cold` in the section `.text.unlikely.f`.
    if let Some(base) = name
        .strip_suffix(".cold")
        .or_else(|| name.rsplit_once(".cold.").map(|(b, _)| b))
    {
        return format!(".text.unlikely.{}", pattern(base));
    }
    let p = pattern(name);
    format!(".text.{p} .text.unlikely.{p}")
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut args = std::env::args().skip(1);
    let bin = args
        .next()
        .unwrap_or_else(|| root.join("target/release/imm-daemon").display().to_string());
    let output = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("link/idle-code.ld"));
    let bin = std::fs::canonicalize(&bin)
        .unwrap_or_else(|e| panic!("{bin}: {e}"))
        .display()
        .to_string();
    let headers = Command::new("readelf")
        .args(["-SW", &bin])
        .output()
        .expect("readelf runs (binutils)");
    assert!(
        !String::from_utf8_lossy(&headers.stdout).contains(".text.idle"),
        "{bin} already has its idle code gathered, where valgrind cannot see it: build it \
         with IMM_NO_CODE_LAYOUT=1 (see this example's documentation)"
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut scenarios: Vec<(&str, Vec<PathBuf>)> = Vec::new();

    eprintln!("== start and idle, sign-in not configured");
    let home = d.join("unconfigured");
    let first = stop(start_traced(&bin, &home, &d.join("first.cg")));
    let again = stop(start_traced(&bin, &home, &d.join("again.cg")));
    scenarios.push(("start and idle, sign-in not configured", vec![first, again]));

    let idp = IdentityProvider::start_in_background(IdentityOptions {
        interval: Some(1),
        ..IdentityOptions::default()
    })
    .expect("the identity emulator starts");

    eprintln!("== start and idle, signed in");
    // An emulated Exchange tenant of `n` mailboxes that accepts the identity emulator's
    // tokens.
    let exchange = |n: usize| {
        ExchangeServer::start_in_background(
            ExchangeOptions {
                token_checker: Some(idp.token_checker()),
                ..ExchangeOptions::default()
            },
            synthetic_tenant(n, 42),
        )
        .expect("the Exchange emulator starts")
    };
    let small = exchange(100);
    let home = d.join("signed-in");
    sign_in(
        &bin,
        &home,
        &idp,
        &format!("exchange_url = \"{}\"\n", small.base_url()),
    );
    let signed = stop(start_traced(&bin, &home, &d.join("signed-in.cg")));
    scenarios.push(("start and idle, signed in", vec![signed]));

    eprintln!("== a sync of an emulated tenant");
    let exo = exchange(10_000);
    let home = d.join("sync");
    sign_in(
        &bin,
        &home,
        &idp,
        &format!(
            "exchange_url = \"{}\"\n\
             [sync]\nsource = \"exchange\"\nschedule = \"never\"\nstatistics_per_cycle = 0\n",
            exo.base_url()
        ),
    );
    let t = start_traced(&bin, &home, &d.join("sync.cg"));
    cli(&bin, &home, &["sync"]);
    cli(&bin, &home, &["sync"]);
    scenarios.push(("sync", vec![stop(t)]));

    eprintln!("== mail through the emulated Graph");
    let graph = GraphServer::start_in_background(GraphOptions {
        token_checker: Some(idp.token_checker()),
        ..GraphOptions::default()
    })
    .expect("the Graph emulator starts");
    let home = d.join("mail");
    sign_in(
        &bin,
        &home,
        &idp,
        &format!(
            "graph_url = \"{}\"\nexchange_url = \"{}\"\n\
             [mail]\ncapacity = 1000\nrefill_every = \"1s\"\ndaily_cap = 100000\n",
            graph.base_url(),
            small.base_url()
        ),
    );
    let t = start_traced(&bin, &home, &d.join("mail.cg"));
    let batch = d.join("mail.jsonl");
    let mut lines = String::new();
    for i in 0..200 {
        lines.push_str(&format!(
            "{{\"to\": [\"owner.{i}@contoso.com\"], \"subject\": \"layout batch {i}\", \
             \"body\": \"A mail of a batch drained while the layout was traced.\"}}\n"
        ));
    }
    std::fs::write(&batch, lines).unwrap();
    cli(&bin, &home, &["send", "--batch", batch.to_str().unwrap()]);
    for i in 0..3 {
        cli(
            &bin,
            &home,
            &[
                "send",
                "--to",
                "someone@contoso.com",
                "--subject",
                &format!("layout {i}"),
                "--body",
                "A mail sent while the layout was traced.",
            ],
        );
    }
    cli(&bin, &home, &["cycle"]);
    scenarios.push(("mail", vec![stop(t)]));

    let (by_name, by_addr) = symbols(&bin);
    let mut seen = BTreeSet::new();
    let mut script = String::new();
    script.push_str(
        "/* The code the daemon runs as it starts and idles, first in the text: see
   examples/idle_layout.rs, which wrote this file and says how to write it again. */
SECTIONS
{
  .text.idle : {
",
    );
    for (what, files) in &scenarios {
        let mut names = BTreeSet::new();
        for f in files {
            names.extend(executed(f, &bin));
        }
        // In address order, each address once, with every name it has.
        let mut addrs: BTreeSet<u64> = BTreeSet::new();
        for n in &names {
            if let Some(a) = by_name.get(n) {
                addrs.insert(*a);
            }
        }
        let mut lines = Vec::new();
        for a in addrs {
            for n in &by_addr[&a] {
                let s = sections(n);
                if seen.insert(s.clone()) {
                    lines.push(s);
                }
            }
        }
        eprintln!("{what}: {} functions run, {} new", names.len(), lines.len());
        script.push_str(&format!("    /* {what} */\n"));
        for s in lines {
            script.push_str(&format!("    *({s})\n"));
        }
    }
    script.push_str("  }\n}\nINSERT BEFORE .text;\n");
    std::fs::create_dir_all(output.parent().unwrap()).unwrap();
    std::fs::write(&output, script).unwrap();
    eprintln!("wrote {}", output.display());
}
