//! The running daemon: `imm-daemon run`.
//!
//! One foreground process, no forking, on a single-threaded tokio runtime (the work is a
//! few steps every few minutes; one thread keeps the idle footprint small and the steps'
//! access to the database simple). The supervisor holds the single-instance lock, writes
//! CONNECT and DISCONNECT audit rows, runs a cycle of [`cycle::CycleStep`]s on every
//! heartbeat, and answers signals, following the shape of mini-redis's server: a
//! `select!` over the heartbeat, the signal stream and the shutdown token.
//!
//! - Heartbeat: a tokio interval whose missed ticks are skipped, so a machine waking from
//!   sleep runs one cycle, not a burst.
//! - SIGTERM, SIGINT: stop. The cycle in progress sees its cancellation token and
//!   finishes the unit of work in hand; the daemon waits for it up to `shutdown_grace`,
//!   writes its state file and the DISCONNECT row, and exits 0. A second signal exits at
//!   once (exit code 1). A supervisor that cannot act on the stop because a database
//!   call blocks it (SQLite waits up to 10 s for another process's write lock) is exited
//!   by a separate thread one second after the grace period (exit code 1); SQLite rolls
//!   back the unfinished transaction, so nothing is half-written either way.
//! - SIGHUP: reread the configuration; an invalid file is logged and audited, and the
//!   old configuration stays in effect.
//! - SIGUSR1: run a cycle now.
//! - systemd: READY=1 once up, STATUS= after every cycle, WATCHDOG=1 every cycle when
//!   the watchdog is armed, STOPPING=1 on shutdown (`sd-notify`, only when NOTIFY_SOCKET
//!   is set).

pub mod backoff;
pub mod control;
pub mod cycle;
pub mod lock;
pub mod state;

use std::cell::RefCell;
use std::time::Duration;

use chrono::Utc;
use futures_util::StreamExt;
use signal_hook::consts::signal::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::audit::{AuditEvent, Operation};
use crate::config::{Config, ConfigError};
use crate::paths::Paths;
use crate::schedule::{Job, Jobs};
use crate::store::{Store, StoreError};
use crate::time::stamp;
use backoff::Backoff;
use cycle::{CycleSummary, StepContext, Steps, Trigger};
use lock::{InstanceLock, LockError};
use state::{DaemonState, Phase, STATE_VERSION};

/// Where a control request's answer goes.
type Reply = tokio::sync::oneshot::Sender<control::Response>;

/// The answer to `status`: the state as the state file would hold it now, and whether a
/// cycle is running.
fn status_response(
    state: &DaemonState,
    cycle_running: bool,
    jobs: &[crate::schedule::JobView],
    sync: &crate::exchange::sync::ProgressSlot,
) -> control::Response {
    let sync = sync.lock().expect("not poisoned").clone();
    control::Response::ok(serde_json::json!({
        "state": state,
        "cycle_running": cycle_running,
        "jobs": jobs,
        "sync": sync,
    }))
}

/// Why `sync-now` cannot be done, if it cannot.
/// The daemon's sign-in as its step last saw it, and the device code waiting, if any.
fn sign_in_response(hub: &crate::auth::step::Hub) -> control::Response {
    control::Response::ok(serde_json::to_value(hub.view()).expect("views serialize"))
}

fn sync_refusal(config: &Config) -> Option<control::Response> {
    config.sync_unavailable().map(|why| {
        control::Response::error(format!(
            "cannot sync: {why} in the configuration and reload"
        ))
    })
}

fn reload_response(outcome: &Result<bool, String>, state: &DaemonState) -> control::Response {
    match outcome {
        Ok(_) => control::Response::ok(serde_json::json!({
            "reloaded": true,
            "heartbeat_secs": state.heartbeat_secs,
        })),
        Err(why) => control::Response::error(format!(
            "the configuration was not reloaded, the one in effect stays: {why}"
        )),
    }
}

/// Fatal errors: the daemon cannot start (or must stop), and exits non-zero so that the
/// service manager restarts it.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot set up the daemon's runtime")]
    Runtime(#[source] std::io::Error),
    #[error("cannot install signal handlers")]
    Signals(#[source] std::io::Error),
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error(transparent)]
    Control(#[from] control::ControlError),
}

/// The wall-clock time of a runtime instant.
fn wall_time(at: tokio::time::Instant) -> String {
    let ahead = at.saturating_duration_since(tokio::time::Instant::now());
    stamp(Utc::now() + chrono::Duration::from_std(ahead).unwrap_or_default())
}

/// The steps every cycle runs, in order: the sign-in (fresh tokens first), the mail
/// queue (through the sign-in's session), the mailbox sync when due, then the
/// database's upkeep.
pub fn default_steps(
    hub: std::sync::Arc<crate::auth::step::Hub>,
    progress: crate::exchange::sync::ProgressSlot,
) -> Vec<Box<dyn cycle::CycleStep>> {
    let session = crate::auth::step::SessionSlot::default();
    vec![
        Box::new(crate::auth::step::SignInStep::new(hub, session.clone())),
        Box::new(crate::mail::outbox::MailStep::new(session.clone())),
        Box::new(crate::sync::MailboxSync::new(session, progress)),
        Box::new(cycle::StoreMaintenance),
    ]
}

/// How long until the wall-clock time `at` (zero when it has passed).
fn until(at: chrono::DateTime<Utc>) -> Duration {
    (at - Utc::now()).to_std().unwrap_or_default()
}

/// Runs the daemon until it is stopped. `load_config` reads the configuration (at start
/// and on SIGHUP).
pub fn run(
    paths: &Paths,
    load_config: &dyn Fn() -> Result<Config, ConfigError>,
) -> Result<(), DaemonError> {
    let config = load_config()?;
    let lock = InstanceLock::acquire(&paths.lock_file)?;
    let store = Store::open_audited(
        &paths.database,
        &paths.audit_head,
        crate::store::BUSY_TIMEOUT,
    )?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(DaemonError::Runtime)?;
    let result = runtime.block_on(Supervisor::new(paths, config, store).run(load_config));
    // Everything is saved; a read still stuck in the blocking pool (an export on a hung
    // share) must not hold up the exit.
    runtime.shutdown_background();
    drop(lock);
    result
}

/// The heartbeat: the first tick is immediate, later ones every `period`; ticks missed
/// (the machine slept, a cycle overran) are skipped, not made up in a burst.
pub fn heartbeat_timer(period: Duration) -> tokio::time::Interval {
    let mut i = tokio::time::interval(period);
    i.set_missed_tick_behavior(MissedTickBehavior::Skip);
    i
}

/// Plans the scheduled jobs from their last runs in the database (none when they
/// cannot be read: each job is then planned as if it never ran).
fn plan_jobs(config: &Config, store: &Store) -> Jobs {
    let runs = store.job_runs().unwrap_or_else(|e| {
        tracing::warn!(
            "cannot read the jobs' last runs: {}",
            crate::error::chain(&e)
        );
        Vec::new()
    });
    Jobs::plan(config, &runs, Utc::now())
}

/// How long after the grace period the stop deadline exits a blocked daemon.
const STOP_DEADLINE_MARGIN: Duration = Duration::from_secs(1);

/// How much longer the deadline waits when the supervisor is already writing its final
/// records (the state file, the DISCONNECT row).
const CLEANUP_ALLOWANCE: Duration = Duration::from_secs(5);

/// Starts the thread that exits the process when a stop signal has not ended it within
/// the grace period (read at the signal, since a reload may change it) and a margin, or
/// a little later when the supervisor is already cleaning up. It blocks on
/// signal-hook's pipe until then: no wakeups.
fn spawn_stop_deadline(
    grace_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
    cleaning_up: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::io::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
    std::thread::Builder::new()
        .name("stop-deadline".into())
        .spawn(move || {
            if signals.forever().next().is_some() {
                let grace = Duration::from_millis(grace_ms.load(std::sync::atomic::Ordering::Relaxed));
                // Logged once the signal's handler has run: another stop signal now
                // exits at once.
                tracing::debug!(
                    deadline = %humantime::format_duration(grace + STOP_DEADLINE_MARGIN),
                    "stop signal received; the stop deadline runs"
                );
                std::thread::sleep(grace + STOP_DEADLINE_MARGIN);
                if cleaning_up.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(CLEANUP_ALLOWANCE);
                }
                tracing::error!(
                    grace = %humantime::format_duration(grace),
                    "the daemon did not stop within its shutdown grace period (a database call blocked it); exiting without a clean stop"
                );
                std::process::exit(1);
            }
        })?;
    Ok(())
}

/// The jobs as `status` shows them. Also answered during a cycle: steps hold the store
/// only between awaits, so it is free whenever a request is read.
fn job_views(
    store: &RefCell<Store>,
    jobs: &Jobs,
    config: &Config,
) -> Vec<crate::schedule::JobView> {
    let runs = store.borrow().job_runs().unwrap_or_else(|e| {
        tracing::warn!(
            "cannot read the jobs' last runs: {}",
            crate::error::chain(&e)
        );
        Vec::new()
    });
    jobs.views(config, &runs)
}

/// Sleeps until the wall-clock time `at`; forever when there is none.
async fn sleep_until_due(at: Option<chrono::DateTime<Utc>>) {
    match at {
        Some(t) => tokio::time::sleep(until(t)).await,
        None => std::future::pending().await,
    }
}

struct Supervisor<'a> {
    paths: &'a Paths,
    config: Config,
    store: RefCell<Store>,
    steps: Steps,
    state: DaemonState,
    notify: bool,
    /// The scheduled jobs and when each is next due.
    jobs: Jobs,
    /// The mailbox sync is due: its schedule fired or someone asked, and it has not yet
    /// succeeded since.
    sync_pending: bool,
    /// The pending sync was asked for with `--allow-removals`.
    allow_removals: bool,
    /// Where the sign-in step's background device flow posts its news.
    hub: std::sync::Arc<crate::auth::step::Hub>,
    /// A running mailbox sync's progress.
    sync_progress: crate::exchange::sync::ProgressSlot,
}

impl<'a> Supervisor<'a> {
    fn new(paths: &'a Paths, config: Config, store: Store) -> Supervisor<'a> {
        let interval = config.heartbeat.interval.get();
        let jobs = plan_jobs(&config, &store);
        let now = stamp(Utc::now());
        let hub = crate::auth::step::Hub::new();
        let sync_progress = crate::exchange::sync::ProgressSlot::default();
        Supervisor {
            jobs,
            hub: hub.clone(),
            sync_pending: false,
            allow_removals: false,
            paths,
            steps: Steps::new(
                default_steps(hub, sync_progress.clone()),
                Backoff::for_heartbeat(interval),
            ),
            sync_progress,
            state: DaemonState {
                version: STATE_VERSION,
                pid: std::process::id(),
                daemon_version: env!("CARGO_PKG_VERSION").to_string(),
                started_at: now.clone(),
                phase: Phase::Running,
                updated_at: now,
                heartbeat_secs: interval.as_secs(),
                next_cycle_at: None,
                cycles: 0,
                last_cycle: None,
            },
            config,
            store: RefCell::new(store),
            notify: std::env::var_os("NOTIFY_SOCKET").is_some(),
        }
    }

    async fn run(
        mut self,
        load_config: &dyn Fn() -> Result<Config, ConfigError>,
    ) -> Result<(), DaemonError> {
        // A second SIGTERM or SIGINT exits at once, even while a step blocks the runtime:
        // the first sets the flag, and a signal arriving with the flag set exits (1).
        let stop_requested = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        for sig in [SIGTERM, SIGINT] {
            signal_hook::flag::register_conditional_shutdown(sig, 1, stop_requested.clone())
                .map_err(DaemonError::Signals)?;
            signal_hook::flag::register(sig, stop_requested.clone())
                .map_err(DaemonError::Signals)?;
        }
        let mut signals = signal_hook_tokio::Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1])
            .map_err(DaemonError::Signals)?;
        let grace_ms = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(
            self.config.daemon.shutdown_grace.get().as_millis() as u64,
        ));
        let cleaning_up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        spawn_stop_deadline(grace_ms.clone(), cleaning_up.clone()).map_err(DaemonError::Signals)?;
        self.store.borrow_mut().audit(
            &AuditEvent::new(Operation::Connect).details(serde_json::json!({
                "pid": self.state.pid,
                "version": self.state.daemon_version,
                "heartbeat_secs": self.state.heartbeat_secs,
                "steps": self.steps.names(),
            })),
            Utc::now(),
        )?;
        if let Some(w) = sd_notify::watchdog_enabled()
            && w < 2 * self.config.heartbeat.interval.get()
        {
            tracing::warn!(
                watchdog = %humantime::format_duration(w),
                heartbeat = %self.config.heartbeat.interval,
                "the systemd watchdog is pinged once a cycle but is shorter than two heartbeats: a slow cycle will get the service restarted (raise WatchdogSec)"
            );
        }
        let listener = control::bind(&self.paths.socket)?;
        let (to_supervisor, mut requests) = tokio::sync::mpsc::channel(16);
        let connections = tokio_util::task::TaskTracker::new();
        let server = tokio::spawn(control::serve(listener, to_supervisor, connections.clone()));
        let mut heartbeat = self.heartbeat();
        self.state.next_cycle_at = Some(stamp(Utc::now()));
        self.state.save(&self.paths.state_file)?;
        self.notify(&[sd_notify::NotifyState::Ready]);
        tracing::info!(
            pid = self.state.pid,
            version = %self.state.daemon_version,
            heartbeat = %self.config.heartbeat.interval,
            socket = %self.paths.socket.display(),
            "imm-daemon running"
        );
        let shutdown = CancellationToken::new();
        // A cycle asked for while another ran, and who waits for its summary.
        let mut pending: Option<Trigger> = None;
        let mut last_tick = tokio::time::Instant::now();
        let mut requests_closed = false;
        let mut waiting_next: Vec<Reply> = Vec::new();
        // A reload asked for while a cycle ran (signal or request), and who waits.
        let mut reload_pending = false;
        let mut reload_waiting: Vec<Reply> = Vec::new();
        // `sync-now` received while a cycle ran.
        let mut sync_asked_mid_cycle = false;
        let mut removals_allowed_mid_cycle = false;
        loop {
            if reload_pending {
                reload_pending = false;
                let outcome = self.reload(load_config)?;
                grace_ms.store(
                    self.config.daemon.shutdown_grace.get().as_millis() as u64,
                    std::sync::atomic::Ordering::Relaxed,
                );
                if outcome == Ok(true) {
                    heartbeat = self.heartbeat();
                    // The first tick of a new interval is immediate: the next cycle is
                    // one new interval away.
                    heartbeat.tick().await;
                    self.state.next_cycle_at =
                        Some(wall_time(tokio::time::Instant::now() + heartbeat.period()));
                    self.save_state();
                }
                for r in reload_waiting.drain(..) {
                    let _ = r.send(reload_response(&outcome, &self.state));
                }
            }
            let mut waiting: Vec<Reply> = Vec::new();
            let trigger = match pending.take() {
                Some(t) => {
                    waiting = std::mem::take(&mut waiting_next);
                    t
                }
                None => tokio::select! {
                    t = heartbeat.tick() => {
                        last_tick = t;
                        // Jobs due by the wall clock (after a sleep the monotonic timer
                        // below may lag) join this cycle.
                        self.fire_due_jobs();
                        Trigger::Heartbeat
                    }
                    _ = self.hub.wake.notified() => Trigger::SignIn,
                    _ = sleep_until_due(self.jobs.next_due()) => {
                        if self.fire_due_jobs() {
                            Trigger::Schedule
                        } else {
                            continue;
                        }
                    }
                    sig = signals.next() => match sig {
                        Some(SIGUSR1) => Trigger::Signal,
                        Some(SIGHUP) => {
                            reload_pending = true;
                            continue;
                        }
                        Some(sig) => {
                            tracing::info!(signal = sig, "stopping");
                            shutdown.cancel();
                            break;
                        }
                        None => break,
                    },
                    req = requests.recv(), if !requests_closed => match req {
                        Some(control::Incoming { command, reply }) => match command {
                            control::Command::Status => {
                                let views = job_views(&self.store, &self.jobs, &self.config);
                                let _ = reply.send(status_response(&self.state, false, &views, &self.sync_progress));
                                continue;
                            }
                            control::Command::SignIn => {
                                let _ = reply.send(sign_in_response(&self.hub));
                                continue;
                            }
                            control::Command::CycleNow => {
                                waiting.push(reply);
                                Trigger::Request
                            }
                            control::Command::MailQueued | control::Command::SignedIn => {
                                let _ = reply.send(control::Response::ok(serde_json::json!({"cycle": "now"})));
                                Trigger::Request
                            }
                            control::Command::SyncNow | control::Command::SyncNowAllowRemovals => {
                                if let Some(refusal) = sync_refusal(&self.config) {
                                    let _ = reply.send(refusal);
                                    continue;
                                }
                                self.sync_pending = true;
                                self.allow_removals |= command == control::Command::SyncNowAllowRemovals;
                                waiting.push(reply);
                                Trigger::Request
                            }
                            control::Command::Reload => {
                                reload_pending = true;
                                reload_waiting.push(reply);
                                continue;
                            }
                            control::Command::Stop => {
                                tracing::info!("stopping on request");
                                let _ = reply.send(control::Response::ok(serde_json::json!({"stopping": true})));
                                shutdown.cancel();
                                break;
                            }
                        },
                        None => {
                            // The socket server is gone; the daemon goes on without it.
                            tracing::error!("the control socket stopped accepting requests");
                            requests_closed = true;
                            continue;
                        }
                    },
                },
            };
            // The cycle runs while signals and requests keep being answered: a stop lets
            // the step in progress finish its unit of work (within the grace period); a
            // second stop exits at once.
            let summary = {
                let ctx = StepContext {
                    config: &self.config,
                    paths: self.paths,
                    store: &self.store,
                    cancel: &shutdown,
                    sync_due: self.sync_pending,
                    allow_removals: self.sync_pending && self.allow_removals,
                    wake: Some(&self.hub.wake),
                };
                let cycle = self.steps.run_cycle(&ctx, trigger);
                tokio::pin!(cycle);
                let mut deadline: Option<tokio::time::Instant> = None;
                let grace = self.config.daemon.shutdown_grace.get();
                let state = &self.state;
                let config = &self.config;
                let (store, jobs, hub) = (&self.store, &self.jobs, &self.hub);
                let sync_progress = &self.sync_progress;
                let sync_asked = &mut sync_asked_mid_cycle;
                let removals_allowed = &mut removals_allowed_mid_cycle;
                let begin_stop = |deadline: &mut Option<tokio::time::Instant>| {
                    shutdown.cancel();
                    *deadline = Some(tokio::time::Instant::now() + grace);
                };
                loop {
                    let grace_over = async {
                        match deadline {
                            Some(d) => tokio::time::sleep_until(d).await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        summary = &mut cycle => break Some(summary),
                        _ = grace_over => {
                            tracing::warn!("the cycle did not finish within the shutdown grace period");
                            break None;
                        }
                        sig = signals.next() => match sig {
                            Some(SIGUSR1) => pending = Some(pending.unwrap_or(Trigger::Signal)),
                            Some(SIGHUP) => reload_pending = true,
                            Some(sig) if shutdown.is_cancelled() => {
                                tracing::warn!(signal = sig, "second stop signal: exiting at once");
                                std::process::exit(1);
                            }
                            Some(sig) => {
                                tracing::info!(signal = sig, "stopping after the step in progress");
                                begin_stop(&mut deadline);
                            }
                            None => {}
                        },
                        req = requests.recv(), if !requests_closed => if let Some(control::Incoming { command, reply }) = req {
                            match command {
                                control::Command::Status => {
                                    let views = job_views(store, jobs, config);
                                    let _ = reply.send(status_response(state, true, &views, sync_progress));
                                }
                                control::Command::SignIn => {
                                    let _ = reply.send(sign_in_response(hub));
                                }
                                control::Command::CycleNow => {
                                    pending = Some(Trigger::Request);
                                    waiting_next.push(reply);
                                }
                                control::Command::MailQueued | control::Command::SignedIn => {
                                    pending = Some(pending.unwrap_or(Trigger::Request));
                                    let _ = reply.send(control::Response::ok(serde_json::json!({"cycle": "next"})));
                                }
                                control::Command::SyncNow | control::Command::SyncNowAllowRemovals => {
                                    if let Some(refusal) = sync_refusal(config) {
                                        let _ = reply.send(refusal);
                                    } else {
                                        *sync_asked = true;
                                        *removals_allowed |= command == control::Command::SyncNowAllowRemovals;
                                        pending = Some(Trigger::Request);
                                        waiting_next.push(reply);
                                    }
                                }
                                control::Command::Reload => {
                                    reload_pending = true;
                                    reload_waiting.push(reply);
                                }
                                control::Command::Stop => {
                                    tracing::info!("stopping on request after the step in progress");
                                    let _ = reply.send(control::Response::ok(serde_json::json!({"stopping": true})));
                                    if !shutdown.is_cancelled() {
                                        begin_stop(&mut deadline);
                                    }
                                }
                            }
                        } else {
                            tracing::error!("the control socket stopped accepting requests");
                            requests_closed = true;
                        },
                    }
                }
            };
            if let Some(summary) = summary {
                let synced = summary.steps.iter().any(|s| s.synced);
                // A sync asked for while this cycle ran is still owed, even if this cycle
                // synced (the export may have changed since).
                if synced || self.config.sync_unavailable().is_some() {
                    self.sync_pending = false;
                }
                if std::mem::take(&mut sync_asked_mid_cycle) {
                    self.sync_pending = true;
                }
                // An allowance covers the one sync it was asked for.
                self.allow_removals = std::mem::take(&mut removals_allowed_mid_cycle);
                let response = control::Response::ok(
                    serde_json::to_value(&summary).expect("summaries serialize"),
                );
                // A heartbeat's cycle keeps the schedule (ticks it overran are skipped);
                // any other restarts it, since a cycle has just run.
                let period = heartbeat.period();
                let next = if summary.trigger == Trigger::Heartbeat {
                    let now = tokio::time::Instant::now();
                    let mut next = last_tick + period;
                    while next <= now {
                        next += period;
                    }
                    next
                } else {
                    heartbeat.reset();
                    tokio::time::Instant::now() + period
                };
                self.finish_cycle(summary, next);
                for r in waiting {
                    let _ = r.send(response.clone());
                }
            }
            if shutdown.is_cancelled() {
                break;
            }
        }
        cleaning_up.store(true, std::sync::atomic::Ordering::Relaxed);
        server.abort();
        let _ = std::fs::remove_file(&self.paths.socket);
        // Requests still queued are answered "stopping" as their channel closes; answers
        // already given get a moment to reach their clients.
        drop(requests);
        connections.close();
        let _ = tokio::time::timeout(Duration::from_millis(500), connections.wait()).await;
        self.stop()
    }

    /// Runs the jobs due now: audit pruning here and now; the mailbox sync by marking it
    /// due for the next cycle. Returns whether the sync became due.
    fn fire_due_jobs(&mut self) -> bool {
        let mut sync = false;
        for job in self.jobs.take_due(&self.config, Utc::now()) {
            match job {
                Job::MailboxSync => {
                    tracing::info!(
                        next = %self.jobs.next_run(job).map(stamp).unwrap_or_default(),
                        "the mailbox sync is due"
                    );
                    self.sync_pending = true;
                    sync = true;
                }
                Job::AuditPrune => self.prune_audit(),
                Job::SendDayReset => self.start_send_day(),
            }
        }
        sync
    }

    /// The scheduled audit pruning: rows older than `[audit] retention` go. Failures
    /// (a broken chain, a database locked past its busy timeout) are logged and recorded
    /// where possible; the job runs again at its next time.
    fn prune_audit(&mut self) {
        let started = Utc::now();
        let retention = self.config.audit.retention;
        let cutoff = chrono::Duration::from_std(retention.get())
            .ok()
            .and_then(|d| started.checked_sub_signed(d))
            .unwrap_or(chrono::DateTime::<Utc>::MIN_UTC);
        let mut store = self.store.borrow_mut();
        let result = store.prune_audit_logged(cutoff, started);
        let text = match &result {
            Ok(o) => format!(
                "pruned {} audit row(s) older than {retention}",
                o.pruned_rows
            ),
            Err(e) => crate::error::chain(e),
        };
        match &result {
            Ok(_) => tracing::info!(job = Job::AuditPrune.name(), "{text}"),
            Err(_) => tracing::error!(job = Job::AuditPrune.name(), "audit pruning failed: {text}"),
        }
        if let Err(e) = store.write(|tx| {
            tx.record_job_run(
                Job::AuditPrune,
                &stamp(started),
                &stamp(Utc::now()),
                result.is_ok(),
                &text,
            )
        }) {
            tracing::error!(
                "cannot record the audit pruning's run: {}",
                crate::error::chain(&e)
            );
        }
    }

    /// The scheduled start of the send bucket's day at local midnight: the bucket file
    /// is brought up to date, which zeroes the day's count.
    fn start_send_day(&mut self) {
        let started = Utc::now();
        let settings = crate::mail::outbox::Settings::from_config(&self.config, self.paths);
        let result = settings.roll(&self.store.borrow(), started);
        let text = match &result {
            Ok((s, rebuilt)) => {
                if let Some(w) = rebuilt {
                    tracing::warn!("{}; rebuilt conservatively", crate::error::chain(w));
                }
                format!(
                    "send day {}: {} sent, {} left",
                    s.day,
                    s.sent_today,
                    s.daily_remaining(&settings.params)
                )
            }
            Err(e) => crate::error::chain(e),
        };
        match &result {
            Ok(_) => tracing::info!(job = Job::SendDayReset.name(), "{text}"),
            Err(_) => tracing::error!(
                job = Job::SendDayReset.name(),
                "cannot start the send day: {text}"
            ),
        }
        if let Err(e) = self.store.borrow_mut().write(|tx| {
            tx.record_job_run(
                Job::SendDayReset,
                &stamp(started),
                &stamp(Utc::now()),
                result.is_ok(),
                &text,
            )
        }) {
            tracing::error!(
                "cannot record the send day's start: {}",
                crate::error::chain(&e)
            );
        }
    }

    fn heartbeat(&self) -> tokio::time::Interval {
        heartbeat_timer(self.config.heartbeat.interval.get())
    }

    /// Rereads the configuration: `Ok(changed)` says whether the heartbeat interval
    /// changed, `Err(why)` that the new file was refused and the old one stays.
    fn reload(
        &mut self,
        load_config: &dyn Fn() -> Result<Config, ConfigError>,
    ) -> Result<Result<bool, String>, DaemonError> {
        let event = AuditEvent::new(Operation::ReloadConfig);
        match load_config() {
            Ok(new) => {
                let changed = new.heartbeat != self.config.heartbeat;
                self.config = new;
                let interval = self.config.heartbeat.interval.get();
                self.steps.set_backoff(Backoff::for_heartbeat(interval));
                self.state.heartbeat_secs = interval.as_secs();
                self.jobs = plan_jobs(&self.config, &self.store.borrow());
                tracing::info!(heartbeat = %self.config.heartbeat.interval, "configuration reloaded");
                self.store.borrow_mut().audit(
                    &event.details(serde_json::json!({"heartbeat_secs": interval.as_secs()})),
                    Utc::now(),
                )?;
                Ok(Ok(changed))
            }
            Err(e) => {
                let message = e.brief();
                tracing::error!("configuration not reloaded, keeping the one in effect: {message}");
                self.store
                    .borrow_mut()
                    .audit(&event.failed(message.clone()), Utc::now())?;
                Ok(Err(message))
            }
        }
    }

    /// Writes the state file; a failure is logged, not fatal (the database has the
    /// cycle, and the next save may succeed).
    fn save_state(&self) {
        if let Err(e) = self.state.save(&self.paths.state_file) {
            tracing::error!("cannot write the state file: {}", crate::error::chain(&e));
        }
    }

    fn finish_cycle(&mut self, summary: CycleSummary, next: tokio::time::Instant) {
        if let Err(e) = summary.record(&mut self.store.borrow_mut()) {
            tracing::error!("cannot record the cycle: {}", crate::error::chain(&e));
        }
        let line = summary.one_line();
        if summary.ok {
            tracing::info!("{line}");
        } else {
            tracing::warn!("{line}");
        }
        let now = Utc::now();
        self.state.cycles += 1;
        self.state.updated_at = stamp(now);
        self.state.next_cycle_at = Some(wall_time(next));
        self.state.last_cycle = Some(summary);
        self.save_state();
        let mut msgs = vec![sd_notify::NotifyState::Status(&line)];
        if sd_notify::watchdog_enabled().is_some() {
            msgs.push(sd_notify::NotifyState::Watchdog);
        }
        self.notify(&msgs);
    }

    fn stop(mut self) -> Result<(), DaemonError> {
        self.notify(&[sd_notify::NotifyState::Stopping]);
        let now = Utc::now();
        self.state.phase = Phase::Stopped;
        self.state.updated_at = stamp(now);
        self.state.next_cycle_at = None;
        // Both records are attempted whatever becomes of the other.
        let saved = self.state.save(&self.paths.state_file);
        let audited = self.store.get_mut().audit(
            &AuditEvent::new(Operation::Disconnect).details(serde_json::json!({
                "pid": self.state.pid,
                "cycles": self.state.cycles,
            })),
            now,
        );
        audited?;
        saved?;
        tracing::info!(cycles = self.state.cycles, "imm-daemon stopped");
        Ok(())
    }

    fn notify(&self, states: &[sd_notify::NotifyState<'_>]) {
        if self.notify
            && let Err(e) = sd_notify::notify(states)
        {
            tracing::warn!("cannot notify systemd: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    #[tokio::test(start_paused = true)]
    async fn missed_heartbeats_are_skipped_not_replayed() {
        let period = Duration::from_secs(300);
        let mut hb = heartbeat_timer(period);
        let start = Instant::now();
        hb.tick().await;
        assert_eq!(
            start.elapsed(),
            Duration::ZERO,
            "the first tick is immediate"
        );
        hb.tick().await;
        assert_eq!(start.elapsed(), period);
        // Asleep for an hour and a bit: twelve ticks were missed.
        tokio::time::advance(Duration::from_secs(3607)).await;
        let woke = Instant::now();
        hb.tick().await;
        assert_eq!(woke.elapsed(), Duration::ZERO, "one cycle on waking");
        hb.tick().await;
        let waited = woke.elapsed();
        assert!(
            waited > Duration::ZERO && waited <= period,
            "the next tick keeps the schedule instead of bursting: {waited:?}"
        );
        assert_eq!(
            (Instant::now() - start).as_secs() % period.as_secs(),
            0,
            "ticks stay on the original schedule"
        );
    }
}
