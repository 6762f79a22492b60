//! imm-daemon: a background daemon and command-line tool for Microsoft 365 / Exchange
//! Online administrators.
//!
//! # Architecture
//!
//! - [`config`] turns the TOML file into a validated [`config::Config`]; [`paths`] knows
//!   where every file lives and writes files atomically and owner-only.
//! - [`text`] decodes the encodings PowerShell writes, for imports and mail batches.
//! - [`import`] reads PowerShell exports into raw Exchange facts; [`inventory`] applies
//!   the inventory rules to them (holds, age, size, cost, company, recovery eligibility)
//!   as pure functions, which the live sync reuses.
//! - [`exchange`] is the client of Exchange Online's admin REST endpoint and the live
//!   sync built on it: listings staged page by page, applied as one snapshot with a
//!   change history, statistics fetched a bounded batch per cycle; [`sync`] is the cycle
//!   step that runs it (or loads an export).
//! - [`store`] owns the SQLite database and every SQL statement; [`audit`] defines audit
//!   events and the hash chain that makes the log tamper-evident. The store's upsert binds
//!   parameters through SQLite's C API without copying them; that module and the call to
//!   glibc's `malloc_trim` after a sync ([`exchange::sync`]) are the crate's only unsafe
//!   code.
//! - [`secrets`] keeps the sign-in's one secret (the token cache) in the OS keychain or an
//!   AES-256-GCM encrypted file.
//! - [`auth`] signs in to Microsoft (device code flow, silent refresh) and hands out
//!   access tokens; [`http`] is the one HTTP client every Microsoft call goes through.
//! - [`mail`] checks outgoing mail and reads batches; [`mail::graph`] makes the Graph
//!   mail calls; [`mail::outbox`] drains the queue each cycle without losing or doubling
//!   a mail, paced by the token bucket in [`ratelimit`].
//! - [`daemon`] runs the supervisor and its cycle steps (sign-in, mail, mailbox sync,
//!   store upkeep); [`schedule`] plans the cron jobs; [`notify`] runs the hooks.
//! - [`cli`] parses the command line, calls the above and formats the results.
//! - The emulations of Microsoft's endpoints on loopback live in their own crate,
//!   `imm-emulators` (`emulators/`), which the tests use and the daemon never depends on.
//!
//! Data flow of an import: file bytes → [`import::parse_export`] →
//! [`inventory::ExoMailbox`] → [`inventory::InactiveMailbox::build`] →
//! [`store::Store::write`] (upserts, removals and their audit rows in one transaction).
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
pub mod daemon;
pub mod exchange;
pub mod http;
pub mod import;
pub mod inventory;
pub mod mail;
pub mod notify;
pub mod paths;
pub mod ratelimit;
pub mod schedule;
pub mod secrets;
pub mod service;
pub mod store;
pub mod sync;
pub mod text;

/// Says on the real stderr (which the test harness does not capture) that a unit test, or
/// a part of one, was skipped and why, so a skip never passes unseen as "ok". The
/// integration tests have the same in their `support` module.
#[cfg(test)]
pub(crate) fn skip_test(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}
