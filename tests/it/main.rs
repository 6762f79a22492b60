//! End-to-end and integration tests: the real binary and real SQLite files in temporary
//! folders, one test binary (see the `support` module for the shared helpers).

mod audit;
mod config;
mod contention;
mod daemon;
mod exchange;
mod hardening;
mod import;
#[cfg(target_os = "linux")]
mod layout;
mod mail;
mod mailboxes;
mod refusals;
mod sandbox;
mod secrets;
mod service;
mod signin;
mod store;
mod support;
