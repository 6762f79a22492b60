//! `imm-daemon status`: is the daemon running, and is it healthy.
//!
//! Running means a live process holds the single-instance lock (the lock, unlike a pid
//! file, cannot outlive its holder). What the daemon last did comes from its state file,
//! written after every cycle, so the answer is the same whether the daemon is up or not;
//! cache figures come from the database. `status` only reads: it creates no file and
//! writes no audit row, so monitoring may call it as often as it likes.
//!
//! Exit codes, which monitoring relies on: 0 running and healthy; 1 running but needs
//! attention (the last cycle failed, a step asks for a person, or the daemon does not
//! answer on its control socket within 5 s: frozen or hung); 3 not running; 4 the
//! status cannot be told (the state file is damaged or unreadable while the lock is
//! held, or the lock file cannot be read).

use std::io::Write;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::Context;
use crate::control::lock::{InstanceLock, read_holder};
use crate::control::state::{DaemonState, Phase};
use crate::heartbeat::CycleSummary;
use crate::schedule::{Job, JobRun, JobView, Jobs};
use crate::store::{Store, StoreStats};
use crate::time::parse as parse_time;

/// Exit codes of `status`.
pub mod code {
    pub const HEALTHY: i32 = 0;
    pub const ATTENTION: i32 = 1;
    pub const NOT_RUNNING: i32 = 3;
    pub const UNKNOWN: i32 = 4;
}

/// Options of `imm-daemon status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Print the status as one JSON object (documented in the README).
    #[arg(long)]
    pub json: bool,
}

/// The status, as `--json` prints it. Fields are only ever added.
#[derive(Debug, Serialize)]
pub struct Status {
    pub status_version: u32,
    /// `healthy`, `attention`, `not_answering` (running, but its control socket did not
    /// answer in time: stopped with SIGSTOP or hung; exit 1), `not_running` or `unknown`.
    pub health: &'static str,
    pub exit_code: i32,
    pub running: bool,
    pub pid: Option<u32>,
    pub version: Option<String>,
    pub started_at: Option<String>,
    pub uptime_secs: Option<i64>,
    /// The daemon stopped cleanly (false after a crash, or while running).
    pub stopped_cleanly: Option<bool>,
    pub heartbeat_secs: Option<u64>,
    pub cycles: Option<u64>,
    pub last_cycle: Option<CycleSummary>,
    pub next_cycle_at: Option<String>,
    /// Why the state file could not be used, if it could not.
    pub state_error: Option<String>,
    /// Whether a cycle is running now (asked of the daemon).
    pub cycle_running: Option<bool>,
    /// Why the daemon did not answer on its control socket, if it did not (the figures
    /// then come from its state file).
    pub control_error: Option<String>,
    /// The audit log was found cut off or replaced (until `audit verify --acknowledge`).
    pub audit_incident: Option<String>,
    /// When the daemon was last heard from (its state file's last write), when it does
    /// not answer.
    pub last_heard_at: Option<String>,
    pub signin: SignIn,
    /// The scheduled jobs, with their next and last runs (from the daemon when it
    /// answers, else planned from the configuration and the database).
    pub jobs: Vec<JobView>,
    /// Why the jobs could not be listed, if they could not.
    pub jobs_error: Option<String>,
    pub cache: Option<Cache>,
    /// Why the cache figures could not be read, if they could not.
    pub cache_error: Option<String>,
    /// The mailbox sync: its source, a sync in progress, the last one, statistics due.
    pub sync: Option<SyncView>,
    /// The outgoing mail queue and its send bucket (none before the database exists).
    pub queue: Option<QueueView>,
    /// Why the queue figures could not be read, if they could not.
    pub queue_error: Option<String>,
    pub paths: Paths,
}

/// The outgoing mail queue and the send bucket.
#[derive(Debug, Serialize)]
pub struct QueueView {
    pub queued: u64,
    /// Queued mails due now.
    pub due: u64,
    pub sending: u64,
    /// Mails sent since midnight in `[schedule] timezone`.
    pub sent_today: u64,
    /// Mails given up on; `queue retry` or `queue cancel` them (they make the health
    /// `attention`).
    pub failed: u64,
    pub cancelled: u64,
    /// Tokens in the send bucket now (each attempt takes one).
    pub tokens: f64,
    pub capacity: u32,
    /// Sends left today under `[mail] daily_cap`.
    pub daily_remaining: u32,
    pub daily_cap: u32,
    /// Sends a drain has reserved and not yet settled: one in progress, or one that was
    /// interrupted (the next drain recounts the day from the queue).
    pub reserved: Option<u32>,
    /// When the next token arrives, if the bucket lacks a whole one.
    pub next_token_at: Option<String>,
    /// When the next queued mail falls due.
    pub next_due_at: Option<String>,
    /// The bucket file was unreadable: the figures are the conservative ones the daemon
    /// will start from.
    pub bucket_warning: Option<String>,
}

fn queue(
    config: Option<&crate::config::Config>,
    paths: &crate::paths::Paths,
    db: Option<&Result<Store, crate::store::StoreError>>,
    now: DateTime<Utc>,
) -> (Option<QueueView>, Option<String>) {
    let store = match db {
        Some(Ok(store)) => store,
        Some(Err(e)) => return (None, Some(crate::error::chain(e))),
        None => return (None, None),
    };
    let default;
    let config = match config {
        Some(c) => c,
        None => {
            default = crate::config::Config::default();
            &default
        }
    };
    let settings = crate::mail::outbox::Settings::from_config(config, paths);
    let zone = &settings.zone;
    let since = crate::time::stamp_millis(zone.start_of_day(zone.date_of(now)));
    let read = || -> Result<_, crate::store::StoreError> {
        Ok((
            store.queue_counts(&crate::time::stamp_millis(now))?,
            store.sent_since(&since)?,
            store.next_mail_due()?,
        ))
    };
    let (counts, sent_today, next_due_at) = match read() {
        Ok(v) => v,
        Err(e) => return (None, Some(crate::error::chain(&e))),
    };
    let loaded = settings.peek_bucket(Some(store), now);
    let p = &settings.params;
    (
        Some(QueueView {
            queued: counts.queued,
            due: counts.due,
            sending: counts.sending,
            sent_today: u64::from(sent_today),
            failed: counts.failed,
            cancelled: counts.cancelled,
            tokens: (loaded.state.tokens * 100.0).floor() / 100.0,
            capacity: p.capacity,
            daily_remaining: loaded.state.daily_remaining(p),
            daily_cap: p.daily_cap,
            reserved: loaded.state.reserved,
            next_token_at: loaded.state.next_token_at(p).map(crate::time::stamp),
            next_due_at: next_due_at.filter(|_| counts.queued > 0),
            bucket_warning: loaded.rebuilt.map(|e| crate::error::chain(&e)),
        }),
        None,
    )
}

/// What is known about Microsoft sign-in (never token material).
#[derive(Debug, Default, Serialize)]
pub struct SignIn {
    pub tenant: Option<String>,
    pub client_id_configured: bool,
    /// `signed_out`, `signed_in` or `sign_in_required`.
    pub state: String,
    pub account: Option<String>,
    /// The tenant the account belongs to (from its id token).
    pub account_tenant: Option<String>,
    /// How the sign-in happened: `device_code` or `msal_import`.
    pub method: Option<String>,
    /// The token store in use (`keychain` or `file`), why, and any warning about it.
    pub backend: Option<String>,
    pub backend_why: Option<String>,
    pub backend_warning: Option<String>,
    /// Each resource's access token: when it expires and in how many seconds.
    pub access: std::collections::BTreeMap<String, AccessView>,
    /// Seconds since the refresh token in hand was issued.
    pub refresh_token_age_secs: Option<i64>,
    pub required_reason: Option<String>,
    pub required_since: Option<String>,
    pub last_error: Option<String>,
    /// The device code waiting for a person.
    pub pending: Option<crate::auth::PendingCode>,
    /// Why the sign-in record could not be read, if it could not.
    pub error: Option<String>,
}

/// One access token's expiry.
#[derive(Debug, Serialize)]
pub struct AccessView {
    pub expires_at: String,
    pub expires_in_secs: i64,
}

fn sign_in(
    config: Option<&crate::config::Config>,
    db: Option<&Result<Store, crate::store::StoreError>>,
    now: DateTime<Utc>,
) -> SignIn {
    let mut s = SignIn {
        tenant: config.and_then(|c| c.tenant.as_ref().map(|t| t.to_string())),
        client_id_configured: config.is_some_and(|c| c.client_id.is_some()),
        state: crate::auth::SignInState::SignedOut.as_str().to_string(),
        ..SignIn::default()
    };
    let record = match db {
        Some(Ok(store)) => match store.sign_in(crate::auth::SLOT) {
            Ok(Some(row)) => match serde_json::from_str::<crate::auth::SignInRecord>(&row.record) {
                Ok(r) => r,
                Err(e) => {
                    s.error = Some(format!("the sign-in record is not readable: {e}"));
                    return s;
                }
            },
            Ok(None) => return s,
            Err(e) => {
                s.error = Some(crate::error::chain(&e));
                return s;
            }
        },
        _ => return s,
    };
    s.state = record.state.as_str().to_string();
    s.account = record.account.as_ref().map(|a| a.label());
    s.account_tenant = record.account.as_ref().and_then(|a| a.tenant_id.clone());
    s.method = record.method;
    s.backend = record.backend;
    s.backend_why = record.backend_why;
    s.backend_warning = record.backend_warning;
    s.access = record
        .access
        .iter()
        .map(|(k, a)| {
            (
                k.clone(),
                AccessView {
                    expires_at: crate::time::stamp(a.expires_at),
                    expires_in_secs: (a.expires_at - now).num_seconds(),
                },
            )
        })
        .collect();
    s.refresh_token_age_secs = record
        .refresh_obtained_at
        .map(|t| (now - t).num_seconds().max(0));
    s.required_reason = record.required_reason;
    s.required_since = record.required_since.map(crate::time::stamp);
    s.last_error = record.last_error;
    s.pending = record.pending.filter(|p| p.expires_at > now);
    s
}

/// The mailbox sync.
#[derive(Debug, Serialize)]
pub struct SyncView {
    /// `exchange` or `export`.
    pub source: &'static str,
    /// Why the sync cannot run, if it cannot.
    pub unavailable: Option<String>,
    /// A sync running now in the daemon.
    pub in_progress: Option<crate::exchange::sync::Progress>,
    /// The last listing (when, source, counts, duration, result).
    pub last: Option<crate::store::SyncRunRow>,
    /// When a listing last succeeded.
    pub last_ok_at: Option<String>,
    /// Mailboxes whose statistics are still due (never fetched, changed, or old).
    pub statistics_due: Option<u64>,
    /// Mailboxes whose size is unknown (statistics never fetched, or set aside).
    pub statistics_unknown: Option<u64>,
    /// When the sync runs next, by its schedule.
    pub next_run_at: Option<String>,
    /// The sync has failed for longer than `[sync] stale_after` (or never succeeded).
    pub failing: bool,
}

/// The inventory cache.
#[derive(Debug, Serialize)]
pub struct Cache {
    pub mailboxes: u64,
    pub oldest_update: Option<String>,
    pub newest_update: Option<String>,
    /// Seconds since the newest update.
    pub stale_secs: Option<i64>,
    pub file_size_bytes: u64,
    /// The last successful mailbox sync.
    pub last_sync_at: Option<String>,
    /// The last sync (or, before any, the newest update) is older than `[sync]
    /// stale_after`, or a configured sync never succeeded.
    pub stale: bool,
    pub stale_after_secs: u64,
}

#[derive(Debug, Serialize)]
pub struct Paths {
    pub config_file: String,
    pub database: String,
    pub state_file: String,
    pub lock_file: String,
    pub socket: String,
}

/// Gathers the status at `now`.
pub fn gather(ctx: &Context, now: DateTime<Utc>) -> Status {
    let p = &ctx.paths;
    let (running, lock_error) = match InstanceLock::probe(&p.lock_file) {
        Ok(held) => (held, None),
        Err(e) => (
            false,
            Some(format!(
                "cannot probe the lock file {}: {e}",
                p.lock_file.display()
            )),
        ),
    };
    let holder = running.then(|| read_holder(&p.lock_file)).flatten();
    // The running daemon answers for itself; its state file is the fallback.
    let mut cycle_running = None;
    let mut control_error = None;
    let mut not_answering = false;
    let mut live = None;
    let mut live_jobs = None;
    let mut live_sync = None;
    if running {
        match crate::control::request(
            &p.socket,
            crate::control::Command::Status,
            super::daemon_cmd::ANSWER_TIMEOUT,
        ) {
            Ok(data) => {
                cycle_running = data["cycle_running"].as_bool();
                live_jobs = serde_json::from_value::<Vec<JobView>>(data["jobs"].clone()).ok();
                live_sync = serde_json::from_value::<Option<crate::exchange::sync::Progress>>(
                    data["sync"].clone(),
                )
                .ok()
                .flatten();
                match serde_json::from_value::<DaemonState>(data["state"].clone()) {
                    Ok(s) => live = Some(s),
                    Err(e) => control_error = Some(format!("unreadable answer: {e}")),
                }
            }
            Err(e) => {
                not_answering = e.is_timeout();
                control_error = Some(crate::error::chain(&e));
            }
        }
    }
    let (state, mut state_error) = match live {
        Some(s) => (Some(s), None),
        None => match DaemonState::load(&p.state_file) {
            Ok(s) => (s, None),
            Err(e) => (None, Some(crate::error::chain(&e))),
        },
    };
    // A state file from an earlier run says nothing about the live one's pid.
    let live_state = state.as_ref().filter(|s| {
        !running
            || holder
                .as_ref()
                .is_none_or(|(pid, _)| *pid == s.pid.to_string())
    });
    let last_cycle = live_state.and_then(|s| s.last_cycle.clone());
    let config = ctx.config();
    let db = p
        .database
        .exists()
        .then(|| Store::open_read_only(&p.database));
    // Every figure below from one snapshot, and one read lock instead of one a query.
    let _snapshot = match &db {
        Some(Ok(store)) => store.read_snapshot().ok(),
        _ => None,
    };
    let runs: Result<Vec<(Job, JobRun)>, String> = match &db {
        Some(Ok(store)) => store.job_runs().map_err(|e| crate::error::chain(&e)),
        Some(Err(e)) => Err(crate::error::chain(e)),
        None => Ok(Vec::new()),
    };
    let (jobs, jobs_error) = match (live_jobs, &config, &runs) {
        (Some(j), _, _) => (j, None),
        (None, Ok(c), Ok(r)) => (Jobs::plan(c, r, now).views(c, r), None),
        (None, Err(e), _) => (Vec::new(), Some(e.brief())),
        (None, _, Err(e)) => (Vec::new(), Some(e.clone())),
    };
    let stale_after = config
        .as_ref()
        .map(|c| c.sync.stale_after)
        .unwrap_or_else(|_| crate::config::SyncConfig::default().stale_after)
        .get();
    // A failing sync needs a person once it has failed for longer than `stale_after`
    // (or when it never succeeded); other jobs as soon as they fail.
    let sync_failing = |r: &JobRun| {
        !r.ok
            && r.last_ok_at
                .as_deref()
                .and_then(parse_time)
                .is_none_or(|t| (now - t).num_seconds().max(0) as u64 > stale_after.as_secs())
    };
    let job_failed = jobs.iter().any(|j| {
        j.enabled
            && j.last_run.as_ref().is_some_and(|r| {
                if j.name == Job::MailboxSync.name() {
                    sync_failing(r)
                } else {
                    !r.ok
                }
            })
    });
    let config_ref = config.as_ref().ok();
    let mut signin = sign_in(config_ref, db.as_ref(), now);
    if !running {
        // Only a running daemon polls for its code.
        signin.pending = None;
    }
    let (queue, queue_error) = queue(config_ref, p, db.as_ref(), now);
    // The audit log found cut off or replaced, until a person acknowledges it; a head
    // file that cannot be read is reported the same way.
    let audit_incident = match crate::store::audit_head::read(&p.audit_head) {
        Ok(h) => h.and_then(|h| h.incident).map(|i| i.describe()),
        Err(e) => Some(e.to_string()),
    };
    let attention = job_failed
        || audit_incident.is_some()
        || queue.as_ref().is_some_and(|q| q.failed > 0)
        || signin.state == crate::auth::SignInState::SignInRequired.as_str()
        || last_cycle
            .as_ref()
            .is_some_and(|c| !c.ok || c.needs_attention());
    let (health, exit_code) = if let Some(e) = &lock_error {
        // Whether it runs cannot be told.
        control_error.get_or_insert_with(|| e.clone());
        ("unknown", code::UNKNOWN)
    } else if !running {
        ("not_running", code::NOT_RUNNING)
    } else if not_answering {
        ("not_answering", code::ATTENTION)
    } else if state_error.is_some() || live_state.is_none() {
        // Running, but what it last did cannot be read (or the file is another run's).
        if state_error.is_none() {
            state_error = Some(match (&holder, &state) {
                (Some((pid, _)), Some(s)) => format!(
                    "the state file is from pid {}, the lock is held by pid {pid} (starting?)",
                    s.pid
                ),
                (Some((pid, _)), None) => {
                    format!("pid {pid} holds the lock but has not written its state yet")
                }
                _ => "the state file belongs to another run".to_string(),
            });
        }
        ("unknown", code::UNKNOWN)
    } else if attention {
        ("attention", code::ATTENTION)
    } else {
        ("healthy", code::HEALTHY)
    };
    let started_at = live_state.map(|s| s.started_at.clone());
    let config = config.ok();
    let last_sync = runs
        .as_ref()
        .ok()
        .and_then(|r| r.iter().find(|(j, _)| *j == Job::MailboxSync))
        .and_then(|(_, r)| r.last_ok_at.clone());
    let sync_on = config
        .as_ref()
        .is_some_and(|c| c.sync_unavailable().is_none());
    let (cache, cache_error) = match &db {
        Some(Ok(store)) => match store.mailbox_stats() {
            Ok(s) => (Some(cache(s, last_sync, sync_on, stale_after, now)), None),
            Err(e) => (None, Some(crate::error::chain(&e))),
        },
        Some(Err(e)) => (None, Some(crate::error::chain(e))),
        None => (None, None),
    };
    let sync = config.as_ref().map(|c| {
        let store = db.as_ref().and_then(|d| d.as_ref().ok());
        let (last, last_ok) = store
            .and_then(|s| s.last_syncs().ok())
            .unwrap_or((None, None));
        let cutoff =
            now - chrono::Duration::from_std(c.sync.statistics_max_age.get()).unwrap_or_default();
        let due = store.and_then(|s| s.statistics_due_count(cutoff).ok());
        let job = jobs.iter().find(|j| j.name == Job::MailboxSync.name());
        let exchange = c.sync.source() == crate::config::SyncSource::Exchange;
        SyncView {
            source: c.sync.source().as_str(),
            unavailable: c.sync_unavailable(),
            in_progress: live_sync.clone(),
            last_ok_at: last_ok
                .map(|r| r.finished_at)
                .or_else(|| job.and_then(|j| j.last_run.as_ref()?.last_ok_at.clone())),
            last,
            statistics_due: due.filter(|_| exchange).map(|d| d.total()),
            statistics_unknown: due.map(|d| d.size_unknown),
            next_run_at: job
                .filter(|j| j.enabled)
                .and_then(|j| j.next_run_at.clone()),
            failing: job
                .and_then(|j| j.last_run.as_ref())
                .is_some_and(sync_failing),
        }
    });
    Status {
        status_version: 1,
        health,
        exit_code,
        running,
        pid: holder
            .as_ref()
            .and_then(|(pid, _)| pid.parse().ok())
            .or(live_state.filter(|_| running).map(|s| s.pid)),
        version: holder.as_ref().map(|(_, v)| v.clone()),
        uptime_secs: if running {
            started_at
                .as_deref()
                .and_then(parse_time)
                .map(|t| (now - t).num_seconds().max(0))
        } else {
            None
        },
        started_at,
        stopped_cleanly: live_state
            .filter(|_| !running)
            .map(|s| s.phase == Phase::Stopped),
        heartbeat_secs: live_state.map(|s| s.heartbeat_secs),
        cycles: live_state.map(|s| s.cycles),
        next_cycle_at: live_state
            .filter(|_| running)
            .and_then(|s| s.next_cycle_at.clone()),
        last_cycle,
        state_error,
        cycle_running,
        control_error,
        audit_incident,
        last_heard_at: not_answering
            .then(|| state.as_ref().map(|s| s.updated_at.clone()))
            .flatten(),
        signin,
        jobs,
        jobs_error,
        cache,
        cache_error,
        sync,
        queue,
        queue_error,
        paths: Paths {
            socket: p.socket.display().to_string(),
            config_file: p.config_file.display().to_string(),
            database: p.database.display().to_string(),
            state_file: p.state_file.display().to_string(),
            lock_file: p.lock_file.display().to_string(),
        },
    }
}

fn write_sync(
    out: &mut dyn Write,
    y: &SyncView,
    line: fn(&mut dyn Write, &str, &str) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut v = format!("from {}", y.source);
    if let Some(why) = &y.unavailable {
        v.push_str(&format!(", off: {why}"));
    } else if let Some(t) = &y.next_run_at {
        v.push_str(&format!(", next {t}"));
    }
    if y.failing {
        v.push_str("; FAILING for longer than [sync] stale_after");
    }
    line(out, "sync", &v)?;
    if let Some(p) = &y.in_progress {
        let what = match p.phase {
            crate::exchange::sync::Phase::Listing => format!(
                "listing: {} page(s), {} mailbox(es) seen",
                p.pages, p.mailboxes_seen
            ),
            crate::exchange::sync::Phase::Applying => {
                format!("applying {} mailbox(es)", p.mailboxes_seen)
            }
            crate::exchange::sync::Phase::Statistics => format!(
                "statistics: {} of {} fetched",
                p.statistics_done, p.statistics_target
            ),
        };
        line(
            out,
            "",
            &format!(
                "in progress since {}: {what}, {} throttled wait(s)",
                p.started_at, p.throttled_waits
            ),
        )?;
    }
    if let Some(l) = &y.last {
        let f = &l.figures;
        let n = |k: &str| f.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
        let result = match (&l.ok, &l.error) {
            (true, None) => "ok".to_string(),
            (true, Some(e)) => format!("ok, statistics stopped: {e}"),
            (false, e) => format!("FAILED: {}", e.as_deref().unwrap_or("unknown error")),
        };
        line(
            out,
            "",
            &format!(
                "last {} ({}): {} mailboxes, {} added, {} removed, {} changed, {} page(s), {} statistics call(s), {} throttled wait(s), {} ms: {result}",
                l.finished_at,
                l.source,
                n("mailboxes"),
                n("added"),
                n("removed"),
                n("changed"),
                n("pages"),
                n("statistics_fetched") + n("statistics_missing"),
                n("throttled_waits"),
                n("duration_ms"),
            ),
        )?;
    }
    if let Some(d) = y.statistics_due {
        let unknown = y.statistics_unknown.unwrap_or(0);
        line(
            out,
            "",
            &format!("statistics: {d} mailbox(es) due, {unknown} with size unknown"),
        )?;
    }
    Ok(())
}

fn cache(
    s: StoreStats,
    last_sync_at: Option<String>,
    sync_on: bool,
    stale_after: std::time::Duration,
    now: DateTime<Utc>,
) -> Cache {
    let age = |t: &Option<String>| {
        t.as_deref()
            .and_then(parse_time)
            .map(|t| (now - t).num_seconds().max(0))
    };
    let fresh_as_of = age(&last_sync_at).or(age(&s.newest_update));
    Cache {
        mailboxes: s.count,
        stale_secs: age(&s.newest_update),
        // An empty cache with no source is not stale, only unused.
        stale: (sync_on && last_sync_at.is_none())
            || ((sync_on || s.count > 0)
                && fresh_as_of.is_none_or(|a| a as u64 > stale_after.as_secs())),
        stale_after_secs: stale_after.as_secs(),
        last_sync_at,
        oldest_update: s.oldest_update,
        newest_update: s.newest_update,
        file_size_bytes: s.file_size_bytes,
    }
}

fn ago(secs: i64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(secs.max(0) as u64)).to_string()
}

/// Writes the human form.
pub fn render(out: &mut impl Write, s: &Status) -> std::io::Result<()> {
    let line = |out: &mut dyn Write, k: &str, v: &str| writeln!(out, "{k:<12} {v}");
    let head = match (s.health, s.running) {
        (_, false) => match s.stopped_cleanly {
            Some(true) => "not running (stopped cleanly)".to_string(),
            Some(false) => "not running (it did not stop cleanly: crashed or killed)".to_string(),
            None => "not running".to_string(),
        },
        (h, true) => format!(
            "running ({}), pid {}, version {}{}",
            h.replace('_', " "),
            s.pid.map_or("?".into(), |p| p.to_string()),
            s.version.as_deref().unwrap_or("?"),
            s.uptime_secs
                .map(|u| format!(", up {}", ago(u)))
                .unwrap_or_default()
        ),
    };
    line(out, "imm-daemon", &head)?;
    if let Some(e) = &s.state_error {
        line(out, "state", &format!("unreadable: {e}"))?;
    }
    if let Some(e) = &s.control_error {
        line(
            out,
            "control",
            &format!("no answer ({e}); figures from the state file"),
        )?;
    }
    if let Some(i) = &s.audit_incident {
        line(out, "audit", &format!("NEEDS ATTENTION: {i}"))?;
    }
    if let Some(t) = &s.last_heard_at {
        line(
            out,
            "last heard",
            &format!("{t} (its state file's last write)"),
        )?;
    }
    if s.cycle_running == Some(true) {
        line(out, "now", "a cycle is running")?;
    }
    if let Some(hb) = s.heartbeat_secs {
        let mut v = format!("every {}", ago(hb as i64));
        if let Some(n) = &s.next_cycle_at {
            v.push_str(&format!(", next cycle {n}"));
        }
        if let Some(c) = s.cycles {
            v.push_str(&format!(", {c} cycles this run"));
        }
        line(out, "heartbeat", &v)?;
    }
    match &s.last_cycle {
        Some(c) => {
            line(
                out,
                "last cycle",
                &format!(
                    "{} ({}, {}, {} ms)",
                    c.finished_at,
                    if c.ok { "ok" } else { "FAILED" },
                    c.trigger.as_str(),
                    c.duration_ms
                ),
            )?;
            for st in &c.steps {
                line(out, "", &format!("{}: {}", st.step, st.describe()))?;
            }
        }
        None => line(out, "last cycle", "none")?,
    }
    write_sign_in(out, &s.signin, line)?;
    match &s.cache {
        Some(c) => {
            let mut v = format!("{} mailboxes", c.mailboxes);
            match &c.last_sync_at {
                Some(t) => v.push_str(&format!(", last synced {t}")),
                None => v.push_str(", never synced"),
            }
            if let (Some(t), Some(st)) = (&c.newest_update, c.stale_secs) {
                v.push_str(&format!(", newest update {t} ({} ago)", ago(st)));
            }
            if c.stale {
                v.push_str(&format!(
                    "; STALE (older than {})",
                    ago(c.stale_after_secs as i64)
                ));
            }
            line(out, "cache", &v)?;
        }
        None => match &s.cache_error {
            Some(e) => line(out, "cache", &format!("unreadable: {e}"))?,
            None => line(out, "cache", "no database yet")?,
        },
    }
    if let Some(y) = &s.sync {
        write_sync(out, y, line)?;
    }
    match &s.queue {
        Some(q) => {
            let mut v = format!(
                "{} queued ({} due), {} sending, {} sent today, {} failed",
                q.queued, q.due, q.sending, q.sent_today, q.failed
            );
            if q.failed > 0 {
                v.push_str(" (see `imm-daemon queue list --state failed`)");
            }
            line(out, "mail", &v)?;
            let mut b = format!(
                "{:.1} of {} tokens, {} of {} sends left today",
                q.tokens, q.capacity, q.daily_remaining, q.daily_cap
            );
            if let Some(t) = &q.next_token_at {
                b.push_str(&format!(", next token {t}"));
            }
            if let Some(r) = q.reserved {
                b.push_str(&format!(
                    " ({r} reserved by a drain in progress, or an interrupted one that the next drain recounts)"
                ));
            }
            line(out, "send bucket", &b)?;
            if let Some(w) = &q.bucket_warning {
                line(out, "", &format!("WARNING: {w}"))?;
            }
        }
        None => {
            if let Some(e) = &s.queue_error {
                line(out, "mail", &format!("unreadable: {e}"))?;
            }
        }
    }
    if let Some(e) = &s.jobs_error {
        line(out, "jobs", &format!("unknown: {e}"))?;
    }
    for (i, j) in s.jobs.iter().enumerate() {
        let label = if i == 0 { "jobs" } else { "" };
        line(out, label, &describe_job(j))?;
    }
    line(out, "config", &s.paths.config_file)?;
    line(out, "database", &s.paths.database)?;
    line(out, "state file", &s.paths.state_file)?;
    Ok(())
}

/// One job on one line: its schedule, next run and last outcome.
fn describe_job(j: &JobView) -> String {
    let mut v = if j.enabled {
        format!(
            "{}: \"{}\" ({}), next {}",
            j.name,
            j.schedule,
            j.timezone,
            j.next_run_at.as_deref().unwrap_or("?")
        )
    } else {
        format!(
            "{}: off ({})",
            j.name,
            j.off_reason.as_deref().unwrap_or("never scheduled")
        )
    };
    match &j.last_run {
        Some(r) if r.ok => v.push_str(&format!(
            "; last {} ok: {}",
            r.finished_at,
            r.summary.as_deref().unwrap_or("")
        )),
        Some(r) => v.push_str(&format!(
            "; last {} FAILED ({} in a row): {}",
            r.finished_at,
            r.failures,
            r.error.as_deref().unwrap_or("")
        )),
        None if j.enabled => v.push_str("; never ran"),
        None => {}
    }
    v
}

/// Runs `status`; the exit code says the health.
pub fn run(ctx: &Context, args: StatusArgs) -> anyhow::Result<()> {
    let status = gather(ctx, Utc::now());
    // One write for the whole report (stdout alone writes each line on its own).
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if args.json {
        super::output::write_json_pretty(&mut out, &status)?;
    } else {
        render(&mut out, &status)?;
    }
    out.flush()?;
    if status.exit_code != 0 {
        return Err(super::SilentExit {
            code: status.exit_code,
        }
        .into());
    }
    Ok(())
}

fn write_sign_in(
    out: &mut dyn Write,
    s: &SignIn,
    line: impl Fn(&mut dyn Write, &str, &str) -> std::io::Result<()>,
) -> std::io::Result<()> {
    if !s.client_id_configured || (s.tenant.is_none() && s.state == "signed_out") {
        let v = match (&s.tenant, s.client_id_configured) {
            (Some(t), false) => format!("tenant {t}; no client_id configured"),
            _ => "not configured (set tenant and client_id)".to_string(),
        };
        return line(out, "sign-in", &v);
    }
    let who = s.account.as_deref().unwrap_or("no account");
    let head = match s.state.as_str() {
        "signed_in" => format!("signed in as {who}"),
        "sign_in_required" => format!(
            "SIGN-IN REQUIRED for {who}: {}",
            s.required_reason
                .as_deref()
                .unwrap_or("the identity platform asks for a person")
        ),
        _ => "signed out (run `imm-daemon login`)".to_string(),
    };
    let mut head = head;
    if let Some(t) = s.account_tenant.as_ref().or(s.tenant.as_ref()) {
        head.push_str(&format!(", tenant {t}"));
    }
    line(out, "sign-in", &head)?;
    if let Some(e) = &s.error {
        line(out, "", &format!("record unreadable: {e}"))?;
    }
    if let Some(p) = &s.pending {
        line(
            out,
            "",
            &format!(
                "{} (code {}, expires {})",
                p.message,
                p.user_code,
                crate::time::stamp(p.expires_at)
            ),
        )?;
    }
    if let Some(b) = &s.backend {
        line(
            out,
            "",
            &format!(
                "tokens in the {b} store ({})",
                s.backend_why.as_deref().unwrap_or("")
            ),
        )?;
    }
    if let Some(w) = &s.backend_warning {
        line(out, "", &format!("warning: {w}"))?;
    }
    for (resource, a) in &s.access {
        let when = if a.expires_in_secs > 0 {
            format!("expires {} (in {})", a.expires_at, ago(a.expires_in_secs))
        } else {
            format!("expired {} (refreshed at the next cycle)", a.expires_at)
        };
        line(out, "", &format!("{resource} access token {when}"))?;
    }
    if let Some(age) = s.refresh_token_age_secs {
        line(out, "", &format!("refresh token issued {} ago", ago(age)))?;
    }
    if let Some(e) = &s.last_error {
        line(out, "", &format!("last error: {e}"))?;
    }
    Ok(())
}
