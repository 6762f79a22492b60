//! imm-daemon: a background daemon and command-line tool for Microsoft 365 / Exchange
//! Online administrators.
//!
//! # Architecture
//!
//! - [`config`] turns the TOML file into a validated [`config::Config`]; [`paths`] knows
//!   where every file lives and writes files atomically and owner-only.
//! - [`text`] decodes the encodings PowerShell writes, for imports and mail batches.
//! - [`time`] writes every stored and shown timestamp (RFC 3339, UTC, in the few
//!   precisions stored text comparisons need) and reads them back.
//! - [`import`] reads PowerShell exports into raw Exchange facts; [`inventory`] applies
//!   the inventory rules to them (holds, age, size, cost, company, recovery eligibility)
//!   as pure functions, which the live sync reuses.
//! - [`exchange`] is the client of Exchange Online's admin REST endpoint and the live
//!   sync built on it: listings staged page by page, applied as one snapshot with a
//!   change history, statistics fetched a bounded batch per cycle; [`sync`] loads the
//!   cache from it or from an export, for `mailboxes import` and for its cycle step.
//! - [`store`] owns the SQLite database and every SQL statement; [`audit`] defines audit
//!   events and the hash chain that makes the log tamper-evident. The store's upsert binds
//!   parameters through SQLite's C API without copying them. Unsafe code is denied
//!   (`[lints]` in Cargo.toml) except where allowed by name: that module; in [`memory`],
//!   the calls to glibc's `malloc_trim` and `getauxval` and to `madvise`, and the
//!   environment put back in the daemon started again (before any thread, which
//!   `src/main.rs` promises at its one call); and the process's ids and passwd/group
//!   lookups of [`paths::strict`].
//! - [`secrets`] keeps the sign-in's one secret (the token cache) in the OS keychain or an
//!   AES-256-GCM encrypted file.
//! - [`auth`] signs in to Microsoft (device code flow, silent refresh) and hands out
//!   access tokens; [`http`] is the one HTTP client every Microsoft call goes through.
//! - [`mail`] checks outgoing mail and reads batches; [`mail::graph`] makes the Graph
//!   mail calls; [`mail::outbox`] drains the queue each cycle without losing or doubling
//!   a mail, paced by the token bucket in [`ratelimit`].
//! - [`step`] is the interface every heartbeat step implements, below the capabilities
//!   that implement it; each capability's step is its `step` module ([`auth::step`],
//!   [`mail::step`], [`sync::step`]), and [`heartbeat::default_steps`] wires them; [`error`] holds the one vocabulary
//!   every domain error maps to ([`error::Kind`]: transient, rate limited, sign-in,
//!   refused, fatal), which retries, steps and `status` read.
//! - [`heartbeat`] wires the steps in their order and runs one cycle of them, with each
//!   step's backoff; [`schedule`] plans the cron jobs; [`notify`] runs the hooks.
//! - [`control`] is what the daemon shares with its clients: the control socket's
//!   protocol, the state file and the single-instance lock.
//! - [`daemon`] is the top floor: the supervisor's event loop runs cycles on the
//!   heartbeat, the schedule, signals and control requests. Nothing imports it but the
//!   command line's dispatcher.
//! - [`cli`] parses the command line, calls the above and formats the results;
//!   [`logging`] shapes the log lines for where stderr leads (the journal, a terminal,
//!   a file).
//! - The emulations of Microsoft's endpoints on loopback live in their own crate,
//!   `imm-emulators` (`emulators/`), which the tests use and the daemon never depends on.
//!
//! Data flow of an import: the file, decoded and parsed as a stream
//! ([`import::read_export`], on a thread of its own) → [`inventory::ExoMailbox`] →
//! [`inventory::InactiveMailbox::build`] → staged batch by batch in a temporary table
//! ([`store::Store::import_stage`]) → [`store::Store::write`] (removals, upserts and
//! their audit rows in one transaction, [`store::Tx::import_apply`]).
//! A live sync: Exchange pages → [`exchange::Exchange::list_inactive_mailboxes`] → the
//! same [`inventory::ExoMailbox`] → staged in a temporary table →
//! [`store::Tx::apply_snapshot`] (cache, change history and audit rows in one
//! transaction) → statistics per mailbox, committed in batches.
//! Reads refresh clock- and price-dependent figures with
//! [`inventory::InactiveMailbox::refresh`] before anything is shown.

pub mod audit;
pub mod auth;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod error;
pub mod exchange;
pub mod heartbeat;
pub mod http;
pub mod import;
pub mod inventory;
pub mod logging;
pub mod mail;
pub mod memory;
pub mod notify;
pub mod paths;
pub mod ratelimit;
pub mod schedule;
pub mod secrets;
pub mod service;
pub mod step;
pub mod store;
pub mod sync;
pub mod text;
pub mod time;

/// Says on the real stderr (which the test harness does not capture) that a unit test, or
/// a part of one, was skipped and why, so a skip never passes unseen as "ok". The
/// integration tests have the same in their `support` module.
#[cfg(test)]
pub(crate) fn skip_test(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

/// The layers, checked over the sources' `crate::` paths: the command line and the daemon
/// on top, the heartbeat's wiring ([`heartbeat`]) and what the daemon shares with its
/// clients ([`control`]) below them, the capabilities below those, and the step
/// interface ([`step`]), errors, store, configuration and paths at the bottom. Nothing
/// imports the command line but the binary; nothing imports the daemon but the command
/// line's dispatcher (`cli.rs`, which starts it and maps its errors to exit codes); and
/// no circle of imports between top-level modules runs through the daemon, the command
/// line, the heartbeat, the control module, the configuration, time, errors, paths or
/// text.
#[cfg(test)]
mod layers {
    use std::path::Path;

    /// Every source file below `src/`: its path from there (`/`-separated) and its text.
    fn sources() -> Vec<(String, String)> {
        fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
            for e in std::fs::read_dir(dir).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(root, &p, out);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    let rel = p.strip_prefix(root).unwrap().to_string_lossy();
                    out.push((rel.replace('\\', "/"), std::fs::read_to_string(&p).unwrap()));
                }
            }
        }
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut out = Vec::new();
        walk(&src, &src, &mut out);
        assert!(out.len() > 40, "the sources were not found");
        out
    }

    /// Whether `text` names the top-level module `module` through `crate::`, either as
    /// `crate::module` or inside a `use crate::{...}` group.
    fn names(text: &str, module: &str) -> bool {
        let direct = format!("crate::{module}");
        let mut rest = text;
        while let Some(i) = rest.find(&direct) {
            let after = rest[i + direct.len()..].chars().next();
            if !after.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                return true;
            }
            rest = &rest[i + direct.len()..];
        }
        text.split("use crate::{").skip(1).any(|group| {
            let group = &group[..group.find("};").unwrap_or(group.len())];
            group
                .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .any(|word| word == module || word.starts_with(&format!("{module}::")))
        })
    }

    /// Which top-level modules each top-level module's files name.
    fn graph() -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
        let files = sources();
        let modules: Vec<&str> = files
            .iter()
            .filter_map(|(rel, _)| rel.strip_suffix(".rs"))
            .filter(|m| !m.contains('/') && *m != "lib" && *m != "main")
            .collect();
        let mut g = std::collections::BTreeMap::<String, std::collections::BTreeSet<String>>::new();
        for (rel, text) in &files {
            if rel.starts_with("bin/") || rel == "lib.rs" || rel == "main.rs" {
                continue;
            }
            let owner = rel.split('/').next().unwrap().trim_end_matches(".rs");
            let deps = g.entry(owner.to_string()).or_default();
            for m in &modules {
                if *m != owner && names(text, m) {
                    deps.insert(m.to_string());
                }
            }
        }
        g
    }

    /// Whether `to` can be reached from `from`.
    fn reaches(
        g: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
        from: &str,
        to: &str,
    ) -> bool {
        let mut seen = std::collections::BTreeSet::new();
        let mut todo = vec![from.to_string()];
        while let Some(m) = todo.pop() {
            for d in g.get(&m).into_iter().flatten() {
                if d == to {
                    return true;
                }
                if seen.insert(d.clone()) {
                    todo.push(d.clone());
                }
            }
        }
        false
    }

    #[test]
    fn no_circle_runs_through_the_top_floors_or_the_foundations() {
        let g = graph();
        assert!(g.len() > 20, "the modules were not found: {g:?}");
        let kept = [
            "cli",
            "daemon",
            "heartbeat",
            "control",
            "config",
            "time",
            "error",
            "paths",
            "text",
        ];
        let circles =
            |g: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>| {
                let mut found = Vec::new();
                for m in kept {
                    assert!(g.contains_key(m), "no module {m}");
                    for d in &g[m] {
                        if reaches(g, d, m) {
                            found.push(format!("{m} -> {d} -> ... -> {m}"));
                        }
                    }
                }
                found
            };
        let found = circles(&g);
        assert!(found.is_empty(), "{found:#?}");
        // The check itself finds a planted circle through the configuration.
        let mut planted = g.clone();
        planted.get_mut("config").unwrap().insert("daemon".into());
        assert!(
            circles(&planted).contains(&"config -> daemon -> ... -> config".to_string()),
            "{:#?}",
            circles(&planted)
        );
    }

    #[test]
    fn nothing_below_the_daemon_imports_it_and_nothing_imports_the_command_line() {
        let mut wrong = Vec::new();
        for (rel, text) in &sources() {
            let in_cli = rel == "cli.rs" || rel.starts_with("cli/") || rel == "main.rs";
            let starts_daemon = rel == "cli.rs" || rel == "main.rs";
            let in_daemon = rel == "daemon.rs" || rel.starts_with("daemon/");
            if rel.starts_with("bin/") || rel == "lib.rs" {
                continue;
            }
            if !in_cli && names(text, "cli") {
                wrong.push(format!("{rel} imports the command line"));
            }
            if !starts_daemon && !in_daemon && names(text, "daemon") {
                wrong.push(format!("{rel} imports the daemon"));
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
        // The check itself sees both spellings.
        assert!(names("x = crate::daemon::run(p, l);", "daemon"));
        assert!(names("use crate::{config, daemon::cycle};", "daemon"));
        assert!(!names("use crate::{daemonic, config};", "daemon"));
        assert!(!names("crate::daemons", "daemon"));
    }

    /// The configuration is read by nearly every module, so it imports none of those that
    /// read it and would close a circle: not the scheduler (the schedule's value types,
    /// `When` and `Zone`, are configuration values), not the store (the commands' default
    /// busy timeout is the configuration's), not mail (the address checks are
    /// configuration values that mail reuses), and not the daemon.
    #[test]
    fn the_configuration_imports_none_of_its_readers() {
        let mut checked = 0;
        let mut wrong = Vec::new();
        for (rel, text) in &sources() {
            if rel != "config.rs" && !rel.starts_with("config/") {
                continue;
            }
            checked += 1;
            for module in ["schedule", "store", "mail", "daemon"] {
                if names(text, module) {
                    wrong.push(format!("{rel} imports crate::{module}"));
                }
            }
        }
        assert!(checked >= 2, "the configuration's sources were not found");
        assert!(wrong.is_empty(), "{wrong:#?}");
    }
}
