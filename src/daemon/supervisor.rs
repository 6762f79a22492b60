//! The supervisor: one event loop that owns the daemon's state and runs the cycles.
//!
//! Everything that can happen is an [`Event`]: a heartbeat tick, a scheduled job falling
//! due, news from the sign-in's background work, a [`Signal`], a control request, the
//! running cycle finishing, the shutdown grace running out. One handler,
//! `Supervisor::handle`, decides what each means, knowing whether a cycle runs: a
//! request for a cycle while one runs is owed to the next, a reload waits for the cycle
//! to end, a stop lets the step in hand finish its unit of work within the grace period,
//! and a second stop ends the loop at once.
//!
//! The loop takes its event sources (a stream of signals, the control requests' channel)
//! as arguments, as mini-redis's `run(listener, shutdown)` does: the daemon's `serve`
//! installs the real signal handlers and the socket outside it, and the tests below drive it
//! in-process with tokio's paused time. Stops arrive as signals in that stream rather
//! than as a one-shot shutdown future, because a second stop means something else (exit
//! at once) than the first.
//!
//! The running cycle is a future that owns what it uses (the steps, handed back when it
//! ends, and shared handles on the configuration and the database), so the handler keeps
//! `&mut self` while it runs and answers `status` from the same state.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;
use futures_util::{Stream, StreamExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{DaemonError, heartbeat_timer};
use crate::audit::{AuditEvent, Operation};
use crate::auth::step::Hub;
use crate::config::{Config, ConfigError};
use crate::control::state::{DaemonState, Phase, STATE_VERSION};
use crate::control::{self, Command, Response};
use crate::exchange::sync::ProgressSlot;
use crate::heartbeat::backoff::Backoff;
use crate::heartbeat::{CycleStep, CycleSummary, StepContext, Steps, Trigger};
use crate::paths::Paths;
use crate::schedule::{Job, Jobs};
use crate::store::Store;
use crate::time::stamp;

/// Where a control request's answer goes.
type Reply = tokio::sync::oneshot::Sender<Response>;

/// A running cycle: it hands the steps back with its summary.
type CycleFuture = Pin<Box<dyn Future<Output = (Steps, CycleSummary)>>>;

/// A signal, as the supervisor understands it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM or SIGINT (the number, for the log).
    Stop(i32),
    /// SIGHUP: reread the configuration.
    Reload,
    /// SIGUSR1: run a cycle now.
    CycleNow,
}

impl Signal {
    /// The meaning of a raw signal number: SIGHUP reloads, SIGUSR1 runs a cycle, any
    /// other (the daemon listens for SIGTERM and SIGINT) stops.
    pub fn from_raw(sig: i32) -> Signal {
        match sig {
            signal_hook::consts::SIGHUP => Signal::Reload,
            signal_hook::consts::SIGUSR1 => Signal::CycleNow,
            other => Signal::Stop(other),
        }
    }
}

/// The event sources, installed outside the loop.
pub struct Sources<S> {
    /// Signals, in the order they arrived.
    pub signals: S,
    /// Control requests from the socket's connections.
    pub requests: tokio::sync::mpsc::Receiver<control::Incoming>,
}

/// Everything the supervisor reacts to.
pub enum Event {
    /// The heartbeat ticked, at this instant.
    Tick(Instant),
    /// A scheduled job's time came (by the wall clock).
    JobDue,
    /// The sign-in step's background work has news (a code issued, a person signed in).
    SignInNews,
    Signal(Signal),
    Request(control::Incoming),
    /// The control socket stopped handing over requests.
    RequestsClosed,
    /// The signal stream ended.
    SignalsClosed,
    /// The running cycle finished.
    CycleDone(Steps, CycleSummary),
    /// The shutdown grace ran out with the cycle still running.
    GraceOver,
    /// A give-back is due ([`GiveBack`]): the memory taken since the last one goes back.
    GiveBack,
}

/// How long after the last request answered between cycles the daemon gives back the
/// memory the answers took (the code they ran, chiefly: `status` maps back about a
/// megabyte of it): requests that follow each other closely (a sync's progress bar asks
/// every 120 ms) do not each map the code back, and the idle daemon is back to its idle
/// figure soon after the last.
const QUIET_AFTER_REQUESTS: Duration = Duration::from_secs(2);

/// How long requests can put the give-back off, from the first answered since the last
/// one: a client that asks more often than [`QUIET_AFTER_REQUESTS`] (a monitor polling
/// `status` every second) gets the code its requests run mapped back every ten seconds,
/// and the daemon never holds it longer.
const MOST_PUT_OFF_BY_REQUESTS: Duration = Duration::from_secs(10);

/// How long after a cycle's end the daemon gives back memory a second time. The first,
/// at the end, comes before the cycle's connections close: the HTTP pool lets an idle
/// connection go within twice [`crate::http::POOL_IDLE`], and the runtime's helper
/// threads (name lookups, keychain calls) end a second after their last job
/// ([`crate::daemon`]'s runtime). Closing a connection runs the TLS and HTTP/2 code
/// that takes it down and frees its buffers, which after a sync of 100,000 mailboxes
/// left 1.4 MB of code and 0.5 MB of heap in the idle daemon.
const SETTLE_AFTER_CYCLE: Duration = Duration::from_secs(2 * crate::http::POOL_IDLE.as_secs() + 1);

/// When the idle daemon gives memory back next, besides at every cycle's end.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct GiveBack {
    /// [`SETTLE_AFTER_CYCLE`] after the last cycle's end, until then.
    settle: Option<Instant>,
    /// [`QUIET_AFTER_REQUESTS`] after the last request answered since the last give-back,
    /// but no later than [`MOST_PUT_OFF_BY_REQUESTS`] after the first.
    quiet: Option<Instant>,
    /// The first request answered since the last give-back.
    first_request: Option<Instant>,
}

impl GiveBack {
    /// The earliest give-back due, if any.
    fn next(&self) -> Option<Instant> {
        match (self.settle, self.quiet) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A request was answered (or a reload made) at `now`.
    fn answered(&mut self, now: Instant) {
        let first = *self.first_request.get_or_insert(now);
        self.quiet = Some((now + QUIET_AFTER_REQUESTS).min(first + MOST_PUT_OFF_BY_REQUESTS));
    }

    /// A cycle ended at `now` (and memory was given back then).
    fn cycle_ended(&mut self, now: Instant) {
        self.settle = Some(now + SETTLE_AFTER_CYCLE);
    }

    /// Memory was given back at `now`: what requests took is back, and so is what a
    /// cycle left, if its settling time has come. A cycle's settling still to come stays
    /// due: its connections close after this.
    fn given(&mut self, now: Instant) {
        self.quiet = None;
        self.first_request = None;
        if self.settle.is_some_and(|t| t <= now) {
            self.settle = None;
        }
    }
}

/// How the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Stopped cleanly: the state file says so and the DISCONNECT row is written.
    Stopped,
    /// A second stop arrived while the first waited for the cycle: the process exits
    /// (code 1) without the state file's final record or the DISCONNECT row, as soon as
    /// the socket is closed. (Two stop signals never get this far: signal-hook's handler
    /// exits on the second; a `stop` request followed by a signal does.)
    AtOnce,
}

/// What the handler tells the loop.
enum Flow {
    Continue,
    Stop,
    ExitNow,
}

/// Shared with the stop-deadline thread: the grace period in effect (a reload may change
/// it) and whether the supervisor is writing its final records.
#[derive(Clone, Default)]
pub struct StopShared {
    pub grace_ms: Arc<AtomicU64>,
    pub cleaning_up: Arc<AtomicBool>,
}

/// The cycle in progress.
struct Running {
    future: CycleFuture,
    /// Who waits for its summary.
    waiting: Vec<Reply>,
    /// Set once a stop arrived: the cycle is abandoned at this instant.
    deadline: Option<Instant>,
}

/// What was asked for while a cycle ran, owed to the next one.
#[derive(Default)]
struct Owed {
    cycle: Option<Trigger>,
    /// Who waits for the next cycle's summary.
    waiting: Vec<Reply>,
    /// A `sync-now` arrived: the next cycle syncs, even if this one did (the source may
    /// have changed since).
    sync: bool,
    allow_removals: bool,
    /// A reload, and who waits for its outcome.
    reload: Option<Vec<Reply>>,
}

pub struct Supervisor {
    paths: Rc<Paths>,
    config: Rc<Config>,
    store: Rc<RefCell<Store>>,
    /// The steps, except while a cycle has them.
    steps: Option<Steps>,
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
    hub: Arc<Hub>,
    /// A running mailbox sync's progress.
    sync_progress: ProgressSlot,
    shutdown: CancellationToken,
    heartbeat: tokio::time::Interval,
    last_tick: Instant,
    running: Option<Running>,
    owed: Owed,
    /// When memory is next given back between cycles, if it is due.
    give_back: GiveBack,
    requests_open: bool,
    signals_open: bool,
    stop_shared: StopShared,
}

/// The answer to `reload`.
fn reload_response(outcome: &Result<bool, String>, state: &DaemonState) -> Response {
    match outcome {
        Ok(_) => Response::ok(serde_json::json!({
            "reloaded": true,
            "heartbeat_secs": state.heartbeat_secs,
        })),
        Err(why) => Response::error(format!(
            "the configuration was not reloaded, the one in effect stays: {why}"
        )),
    }
}

/// The wall-clock time of a runtime instant.
fn wall_time(at: Instant) -> String {
    let ahead = at.saturating_duration_since(Instant::now());
    stamp(Utc::now() + chrono::Duration::from_std(ahead).unwrap_or_default())
}

/// How long until the wall-clock time `at` (zero when it has passed).
fn until(at: chrono::DateTime<Utc>) -> Duration {
    (at - Utc::now()).to_std().unwrap_or_default()
}

/// Sleeps until the wall-clock time `at`; forever when there is none.
async fn sleep_until_due(at: Option<chrono::DateTime<Utc>>) {
    match at {
        Some(t) => tokio::time::sleep(until(t)).await,
        None => std::future::pending().await,
    }
}

/// The jobs' last runs in the database; none when they cannot be read (each job is then
/// planned and shown as if it never ran).
fn job_runs(store: &Store) -> Vec<(Job, crate::schedule::JobRun)> {
    store.job_runs().unwrap_or_else(|e| {
        tracing::warn!(
            "cannot read the jobs' last runs: {}",
            crate::error::chain(&e)
        );
        Vec::new()
    })
}

/// Plans the scheduled jobs from their last runs.
fn plan_jobs(config: &Config, store: &Store) -> Jobs {
    Jobs::plan(config, &job_runs(store), Utc::now())
}

impl Supervisor {
    /// A supervisor for the daemon's steps; `make_steps` builds them around the sign-in's
    /// hub and the sync's progress slot (the daemon's are [`crate::heartbeat::default_steps`]).
    /// Called within the runtime that will run it (the heartbeat's timer needs it).
    pub fn new(
        paths: &Paths,
        config: Config,
        store: Store,
        make_steps: impl FnOnce(Arc<Hub>, ProgressSlot) -> Vec<Box<dyn CycleStep>>,
    ) -> Supervisor {
        let interval = config.heartbeat.interval.get();
        let jobs = plan_jobs(&config, &store);
        let now = stamp(Utc::now());
        let hub = Hub::new();
        let sync_progress = ProgressSlot::default();
        let steps = Steps::new(
            make_steps(hub.clone(), sync_progress.clone()),
            Backoff::for_heartbeat(interval),
        );
        let stop_shared = StopShared::default();
        stop_shared.grace_ms.store(
            config.daemon.shutdown_grace.get().as_millis() as u64,
            Ordering::Relaxed,
        );
        Supervisor {
            jobs,
            hub,
            sync_pending: false,
            allow_removals: false,
            paths: Rc::new(paths.clone()),
            steps: Some(steps),
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
                schema_version: Some(crate::store::SCHEMA_VERSION),
            },
            heartbeat: heartbeat_timer(interval),
            last_tick: Instant::now(),
            config: Rc::new(config),
            store: Rc::new(RefCell::new(store)),
            notify: std::env::var_os("NOTIFY_SOCKET").is_some(),
            shutdown: CancellationToken::new(),
            running: None,
            owed: Owed::default(),
            give_back: GiveBack::default(),
            requests_open: true,
            signals_open: true,
            stop_shared,
        }
    }

    /// What the stop-deadline thread reads.
    pub fn stop_shared(&self) -> StopShared {
        self.stop_shared.clone()
    }

    /// Runs until stopped: writes CONNECT, then handles events until a stop, then writes
    /// the final state and DISCONNECT (unless a second stop asked to exit at once).
    pub async fn run<S>(
        mut self,
        mut sources: Sources<S>,
        load_config: &dyn Fn() -> Result<Config, ConfigError>,
    ) -> Result<Exit, DaemonError>
    where
        S: Stream<Item = Signal> + Unpin,
    {
        self.store.borrow_mut().audit(
            &AuditEvent::new(Operation::Connect).details(serde_json::json!({
                "pid": self.state.pid,
                "version": self.state.daemon_version,
                "heartbeat_secs": self.state.heartbeat_secs,
                "steps": self.steps.as_ref().map(Steps::names),
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
        loop {
            let event = self.next_event(&mut sources).await;
            match self.handle(event, load_config).await? {
                Flow::Continue => {}
                Flow::Stop => break,
                Flow::ExitNow => return Ok(Exit::AtOnce),
            }
        }
        self.stop_shared.cleaning_up.store(true, Ordering::Relaxed);
        // Requests still queued are answered "stopping" as their channel closes.
        drop(sources);
        self.stop()?;
        Ok(Exit::Stopped)
    }

    /// Waits for the next event. Timers and the sign-in's news count only between
    /// cycles (a tick missed during a cycle is skipped, a job due fires after it);
    /// signals and requests are answered always.
    async fn next_event<S>(&mut self, sources: &mut Sources<S>) -> Event
    where
        S: Stream<Item = Signal> + Unpin,
    {
        let idle = self.running.is_none();
        let deadline = self.running.as_ref().and_then(|r| r.deadline);
        let running = &mut self.running;
        let cycle = async move {
            match running {
                Some(r) => r.future.as_mut().await,
                None => std::future::pending().await,
            }
        };
        let grace_over = async move {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        let heartbeat = &mut self.heartbeat;
        let give_back_at = self.give_back.next();
        let give_back = async move {
            match give_back_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        // In this order when several are ready: the cycle's end is recorded first, a stop
        // or a request is seen before a timer starts another cycle, and the heartbeat's
        // tick takes a job due at the same moment into its cycle rather than the job
        // starting one of its own.
        tokio::select! {
            biased;
            (steps, summary) = cycle => Event::CycleDone(steps, summary),
            _ = grace_over => Event::GraceOver,
            sig = sources.signals.next(), if self.signals_open => match sig {
                Some(s) => Event::Signal(s),
                None => Event::SignalsClosed,
            },
            req = sources.requests.recv(), if self.requests_open => match req {
                Some(r) => Event::Request(r),
                None => Event::RequestsClosed,
            },
            t = heartbeat.tick(), if idle => Event::Tick(t),
            _ = sleep_until_due(self.jobs.next_due()), if idle => Event::JobDue,
            _ = self.hub.wake.notified(), if idle => Event::SignInNews,
            _ = give_back, if idle => Event::GiveBack,
        }
    }

    /// The one handler.
    async fn handle(
        &mut self,
        event: Event,
        load_config: &dyn Fn() -> Result<Config, ConfigError>,
    ) -> Result<Flow, DaemonError> {
        let idle = self.running.is_none();
        match event {
            Event::Tick(t) => {
                self.last_tick = t;
                // Jobs due by the wall clock (after a sleep the monotonic timer may lag)
                // join this cycle.
                self.fire_due_jobs();
                self.start_cycle(Trigger::Heartbeat, Vec::new());
            }
            Event::JobDue => {
                if self.fire_due_jobs() {
                    self.start_cycle(Trigger::Schedule, Vec::new());
                }
            }
            Event::SignInNews => self.start_cycle(Trigger::SignIn, Vec::new()),
            Event::Signal(Signal::CycleNow) => {
                if idle {
                    self.start_cycle(Trigger::Signal, Vec::new());
                } else {
                    self.owed.cycle.get_or_insert(Trigger::Signal);
                }
            }
            Event::Signal(Signal::Reload) => {
                if idle {
                    // A reload runs code the idle daemon does not; give it back after.
                    self.give_back.answered(Instant::now());
                    self.reload(load_config, Vec::new()).await?;
                } else {
                    self.owed.reload.get_or_insert_with(Vec::new);
                }
            }
            Event::Signal(Signal::Stop(sig)) => {
                if idle {
                    tracing::info!(signal = sig, "stopping");
                    self.shutdown.cancel();
                    return Ok(Flow::Stop);
                }
                if self.shutdown.is_cancelled() {
                    tracing::warn!(signal = sig, "second stop signal: exiting at once");
                    return Ok(Flow::ExitNow);
                }
                tracing::info!(signal = sig, "stopping after the step in progress");
                self.begin_stop();
            }
            Event::Request(control::Incoming { command, reply }) => {
                self.give_back.answered(Instant::now());
                return self.request(command, reply, load_config).await;
            }
            Event::GiveBack => self.give_back_memory(),
            Event::RequestsClosed => {
                // The socket server is gone; the daemon goes on without it.
                tracing::error!("the control socket stopped accepting requests");
                self.requests_open = false;
            }
            Event::SignalsClosed => {
                tracing::error!("the signal stream ended; stop the daemon with `imm-daemon stop`");
                self.signals_open = false;
            }
            Event::CycleDone(steps, summary) => {
                let running = self.running.take().expect("a cycle was running");
                self.steps = Some(steps);
                self.cycle_done(summary, running.waiting);
                if self.shutdown.is_cancelled() {
                    return Ok(Flow::Stop);
                }
                if let Some(waiting) = self.owed.reload.take() {
                    self.reload(load_config, waiting).await?;
                }
                if let Some(trigger) = self.owed.cycle.take() {
                    let waiting = std::mem::take(&mut self.owed.waiting);
                    self.start_cycle(trigger, waiting);
                }
            }
            Event::GraceOver => {
                tracing::warn!("the cycle did not finish within the shutdown grace period");
                self.running = None;
                return Ok(Flow::Stop);
            }
        }
        Ok(Flow::Continue)
    }

    /// A control request.
    async fn request(
        &mut self,
        command: Command,
        reply: Reply,
        load_config: &dyn Fn() -> Result<Config, ConfigError>,
    ) -> Result<Flow, DaemonError> {
        let idle = self.running.is_none();
        match command {
            Command::Status => {
                let _ = reply.send(self.status_response());
            }
            Command::SignIn => {
                let _ = reply.send(Response::ok(
                    serde_json::to_value(self.hub.view()).expect("views serialize"),
                ));
            }
            Command::CycleNow => {
                if idle {
                    self.start_cycle(Trigger::Request, vec![reply]);
                } else {
                    self.owed.cycle = Some(Trigger::Request);
                    self.owed.waiting.push(reply);
                }
            }
            Command::MailQueued | Command::SignedIn => {
                let when = if idle { "now" } else { "next" };
                let _ = reply.send(Response::ok(serde_json::json!({ "cycle": when })));
                if idle {
                    self.start_cycle(Trigger::Request, Vec::new());
                } else {
                    self.owed.cycle.get_or_insert(Trigger::Request);
                }
            }
            Command::SyncNow | Command::SyncNowAllowRemovals => {
                if let Some(why) = self.config.sync_unavailable() {
                    let _ = reply.send(Response::error(format!(
                        "cannot sync: {why} in the configuration and reload"
                    )));
                    return Ok(Flow::Continue);
                }
                let allow = command == Command::SyncNowAllowRemovals;
                if idle {
                    self.sync_pending = true;
                    self.allow_removals |= allow;
                    self.start_cycle(Trigger::Request, vec![reply]);
                } else {
                    self.owed.sync = true;
                    self.owed.allow_removals |= allow;
                    self.owed.cycle = Some(Trigger::Request);
                    self.owed.waiting.push(reply);
                }
            }
            Command::Reload => {
                if idle {
                    self.reload(load_config, vec![reply]).await?;
                } else {
                    self.owed.reload.get_or_insert_with(Vec::new).push(reply);
                }
            }
            Command::Stop => {
                let _ = reply.send(Response::ok(serde_json::json!({"stopping": true})));
                if idle {
                    tracing::info!("stopping on request");
                    self.shutdown.cancel();
                    return Ok(Flow::Stop);
                }
                tracing::info!("stopping on request after the step in progress");
                if !self.shutdown.is_cancelled() {
                    self.begin_stop();
                }
            }
        }
        Ok(Flow::Continue)
    }

    /// Starts a cycle; `waiting` get its summary.
    fn start_cycle(&mut self, trigger: Trigger, waiting: Vec<Reply>) {
        let mut steps = self.steps.take().expect("no cycle is running");
        let (config, paths, store) = (self.config.clone(), self.paths.clone(), self.store.clone());
        let (cancel, hub) = (self.shutdown.clone(), self.hub.clone());
        let sync_due = self.sync_pending;
        let allow_removals = self.sync_pending && self.allow_removals;
        let future = Box::pin(async move {
            let ctx = StepContext {
                config: &config,
                paths: &paths,
                store: &store,
                cancel: &cancel,
                sync_due,
                allow_removals,
                wake: Some(&hub.wake),
            };
            let summary = steps.run_cycle(&ctx, trigger).await;
            (steps, summary)
        });
        self.running = Some(Running {
            future,
            waiting,
            deadline: None,
        });
    }

    /// The first stop while a cycle runs: the steps see their cancellation, and the cycle
    /// is abandoned if it has not finished within the grace period.
    fn begin_stop(&mut self) {
        self.shutdown.cancel();
        let grace = self.config.daemon.shutdown_grace.get();
        if let Some(r) = &mut self.running {
            r.deadline = Some(Instant::now() + grace);
        }
    }

    /// After a cycle: the sync owed, the allowance, the records, the answers.
    fn cycle_done(&mut self, summary: CycleSummary, waiting: Vec<Reply>) {
        let synced = summary.steps.iter().any(|s| s.synced);
        if synced || self.config.sync_unavailable().is_some() {
            self.sync_pending = false;
        }
        if std::mem::take(&mut self.owed.sync) {
            self.sync_pending = true;
        }
        // An allowance covers the one sync it was asked for.
        self.allow_removals = std::mem::take(&mut self.owed.allow_removals);
        let response = Response::ok(serde_json::to_value(&summary).expect("summaries serialize"));
        // A heartbeat's cycle keeps the schedule (ticks it overran are skipped); any other
        // restarts it, since a cycle has just run.
        let period = self.heartbeat.period();
        let next = if summary.trigger == Trigger::Heartbeat {
            let now = Instant::now();
            let mut next = self.last_tick + period;
            while next <= now {
                next += period;
            }
            next
        } else {
            self.heartbeat.reset();
            Instant::now() + period
        };
        self.finish_cycle(summary, next);
        for r in waiting {
            let _ = r.send(response.clone());
        }
    }

    /// The answer to `status`: the state as the state file would hold it now, and whether
    /// a cycle is running. Also answered during a cycle: steps hold the store only between
    /// awaits, so it is free whenever a request is read.
    fn status_response(&self) -> Response {
        let runs = job_runs(&self.store.borrow());
        let jobs = self.jobs.views(&self.config, &runs);
        let sync = self.sync_progress.lock().expect("not poisoned").clone();
        Response::ok(serde_json::json!({
            "state": self.state,
            "cycle_running": self.running.is_some(),
            "jobs": jobs,
            "sync": sync,
        }))
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
        if let Err(e) =
            store.record_job_finished(Job::AuditPrune, started, Utc::now(), result.is_ok(), &text)
        {
            tracing::error!(
                "cannot record the audit pruning's run: {}",
                crate::error::chain(&e)
            );
        }
        drop(store);
        self.give_back_memory();
    }

    /// The scheduled start of the send bucket's day at local midnight: the bucket file
    /// is brought up to date, which zeroes the day's count.
    fn start_send_day(&mut self) {
        let started = Utc::now();
        let settings = crate::mail::outbox::Settings::from_config(&self.config, &self.paths);
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
        if let Err(e) = self.store.borrow_mut().record_job_finished(
            Job::SendDayReset,
            started,
            Utc::now(),
            result.is_ok(),
            &text,
        ) {
            tracing::error!(
                "cannot record the send day's start: {}",
                crate::error::chain(&e)
            );
        }
    }

    /// Rereads the configuration and answers whoever asked. A file that does not load is
    /// logged and audited, and the configuration in effect stays.
    async fn reload(
        &mut self,
        load_config: &dyn Fn() -> Result<Config, ConfigError>,
        waiting: Vec<Reply>,
    ) -> Result<(), DaemonError> {
        let event = AuditEvent::new(Operation::ReloadConfig);
        let outcome = match load_config() {
            Ok(new) => {
                let changed = new.heartbeat != self.config.heartbeat;
                self.config = Rc::new(new);
                let interval = self.config.heartbeat.interval.get();
                if let Some(steps) = &mut self.steps {
                    steps.set_backoff(Backoff::for_heartbeat(interval));
                }
                self.state.heartbeat_secs = interval.as_secs();
                self.jobs = plan_jobs(&self.config, &self.store.borrow());
                tracing::info!(heartbeat = %self.config.heartbeat.interval, "configuration reloaded");
                self.store.borrow_mut().audit(
                    &event.details(serde_json::json!({"heartbeat_secs": interval.as_secs()})),
                    Utc::now(),
                )?;
                Ok(changed)
            }
            Err(e) => {
                let message = e.brief();
                tracing::error!("configuration not reloaded, keeping the one in effect: {message}");
                self.store
                    .borrow_mut()
                    .audit(&event.failed(message.clone()), Utc::now())?;
                Err(message)
            }
        };
        self.stop_shared.grace_ms.store(
            self.config.daemon.shutdown_grace.get().as_millis() as u64,
            Ordering::Relaxed,
        );
        if outcome == Ok(true) {
            self.heartbeat = heartbeat_timer(self.config.heartbeat.interval.get());
            // The first tick of a new interval is immediate: the next cycle is one new
            // interval away.
            self.heartbeat.tick().await;
            self.state.next_cycle_at = Some(wall_time(Instant::now() + self.heartbeat.period()));
            self.save_state();
        }
        for r in waiting {
            let _ = r.send(reload_response(&outcome, &self.state));
        }
        Ok(())
    }

    /// Writes the state file; a failure is logged, not fatal (the database has the
    /// cycle, and the next save may succeed).
    fn save_state(&self) {
        if let Err(e) = self.state.save(&self.paths.state_file) {
            tracing::error!("cannot write the state file: {}", crate::error::chain(&e));
        }
    }

    fn finish_cycle(&mut self, summary: CycleSummary, next: Instant) {
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
        self.give_back_memory();
        // And again once the cycle's connections and helper threads are gone.
        self.give_back.cycle_ended(Instant::now());
    }

    /// Before idling: SQLite's cached pages and the allocator's free pages go back to the
    /// system, and the program's code pages are unmapped, so the idle daemon holds what
    /// it uses, not the peak of the work just done (a sync, a drain, an export). The next
    /// cycle reads its few pages again from the system's file cache.
    fn give_back_memory(&mut self) {
        self.give_back.given(Instant::now());
        if let Err(e) = self.store.borrow().release_memory() {
            tracing::debug!("cannot release SQLite's cache: {}", crate::error::chain(&e));
        }
        // Code first: what it allocates to read the process's maps is then trimmed too.
        let code = crate::memory::release_code();
        crate::memory::trim();
        tracing::debug!(code_unmapped_kib = code / 1024, "memory given back");
    }

    fn stop(mut self) -> Result<(), DaemonError> {
        // The abandoned cycle (if the grace ran out) lets go of the database first.
        self.running = None;
        self.notify(&[sd_notify::NotifyState::Stopping]);
        let now = Utc::now();
        self.state.phase = Phase::Stopped;
        self.state.updated_at = stamp(now);
        self.state.next_cycle_at = None;
        // Both records are attempted whatever becomes of the other.
        let saved = self.state.save(&self.paths.state_file);
        let audited = self.store.borrow_mut().audit(
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

/// The loop driven in-process: a real database and state file in a temporary home, the
/// events sent through the same channels the signal handlers and the socket use, and
/// tokio's paused time, so a 30-second step takes no time and every instant is exact.
/// The steps are a fixture of the step interface (the supervisor is generic over its
/// steps; the real ones are tested with the emulators, end to end).
#[cfg(test)]
mod tests {
    use super::*;
    use crate::step::{StepError, StepFuture, StepReport};
    use std::path::Path;
    use tokio::sync::{mpsc, oneshot};

    /// When memory is given back between cycles: a request right after a cycle's end does
    /// not cancel the cycle's own later give-back, requests close together put theirs
    /// off, but never more than ten seconds past the first.
    #[test]
    fn give_backs_come_after_the_cycle_settles_and_after_requests_within_a_bound() {
        let t0 = Instant::now();
        let s = |secs: f64| t0 + Duration::from_secs_f64(secs);
        let mut g = GiveBack::default();
        assert_eq!(g.next(), None);
        // A cycle ends at 0 and a progress request comes at 0.1.
        g.given(s(0.0));
        g.cycle_ended(s(0.0));
        g.answered(s(0.1));
        assert_eq!(g.next(), Some(s(2.1)));
        g.given(s(2.1));
        // The cycle's own give-back, once its connections are closed, is still due.
        assert_eq!(g.next(), Some(s(3.0)));
        g.given(s(3.0));
        assert_eq!(g.next(), None);
        // A monitor polling every second from 10 s on: the give-back comes at 20 s, not
        // 2 s after a last request that never comes.
        for i in 0..15 {
            g.answered(s(10.0 + f64::from(i)));
            assert!(g.next().unwrap() <= s(20.0));
        }
        assert_eq!(g.next(), Some(s(20.0)));
        g.given(s(20.0));
        assert_eq!(g.next(), None);
        // The polling goes on: the next bound counts from the first request after it.
        g.answered(s(21.0));
        assert_eq!(g.next(), Some(s(23.0)));
    }

    /// What the fixture step saw on one run.
    #[derive(Debug, Clone, PartialEq)]
    struct Seen {
        /// When it began and ended, from the test's start.
        began: Duration,
        ended: Duration,
        sync_due: bool,
        allow_removals: bool,
        /// The stop reached it while it worked.
        cancelled: bool,
    }

    /// A step whose unit of work takes `work`; it stops early at a stop when
    /// `heeds_stop`, and reports the due sync as done.
    struct Slow {
        work: Duration,
        heeds_stop: bool,
        origin: Instant,
        seen: Rc<RefCell<Vec<Seen>>>,
    }

    impl CycleStep for Slow {
        fn name(&self) -> &'static str {
            "slow"
        }

        fn run<'a>(&'a mut self, ctx: &'a StepContext<'a>) -> StepFuture<'a> {
            Box::pin(async move {
                let began = self.origin.elapsed();
                let cancelled = if self.heeds_stop {
                    tokio::select! {
                        _ = tokio::time::sleep(self.work) => false,
                        _ = ctx.cancel.cancelled() => true,
                    }
                } else {
                    tokio::time::sleep(self.work).await;
                    ctx.cancel.is_cancelled()
                };
                if ctx.sync_due {
                    // As the real sync does: the schedule plans from its last run.
                    let at = stamp(Utc::now());
                    ctx.store
                        .borrow_mut()
                        .write(|tx| tx.record_job_run(Job::MailboxSync, &at, &at, true, "synced"))
                        .unwrap();
                }
                self.seen.borrow_mut().push(Seen {
                    began,
                    ended: self.origin.elapsed(),
                    sync_due: ctx.sync_due,
                    allow_removals: ctx.allow_removals,
                    cancelled,
                });
                Ok::<_, StepError>(StepReport {
                    summary: "worked".into(),
                    synced: ctx.sync_due,
                    ..StepReport::default()
                })
            })
        }
    }

    /// The sync's schedule is a leap day's midnight: only the first cycle (the schedule
    /// never ran) and the tests' requests sync. The audit pruning is off, so that the
    /// audit rows are the loop's own.
    fn config_text(heartbeat_secs: u64) -> String {
        format!(
            "[heartbeat]\ninterval = \"{heartbeat_secs}s\"\n\n[daemon]\nshutdown_grace = \"5s\"\n\n\
             [audit]\nprune_schedule = \"never\"\n\n[sync]\nschedule = \"0 0 29 2 *\"\nsource = \"export\"\nexport = \"/nonexistent/inactive-mailboxes.json\"\n"
        )
    }

    /// A temporary home, the configuration file's text (changed by the tests before a
    /// reload), and the channels that feed the loop.
    struct Harness {
        _dir: tempfile::TempDir,
        paths: Paths,
        config: RefCell<String>,
        origin: Instant,
        seen: Rc<RefCell<Vec<Seen>>>,
        /// Taken (dropped) to close the source.
        signals: RefCell<Option<mpsc::UnboundedSender<Signal>>>,
        requests: RefCell<Option<mpsc::Sender<control::Incoming>>>,
    }

    type SignalStream = Pin<Box<dyn Stream<Item = Signal>>>;

    impl Harness {
        fn new() -> (Harness, Sources<SignalStream>) {
            let dir = tempfile::tempdir().unwrap();
            let paths = Paths::resolve_with(Some(dir.path().into()), None, None).unwrap();
            let (signals, mut signal_rx) = mpsc::unbounded_channel();
            let (requests, request_rx) = mpsc::channel(16);
            let stream: SignalStream = Box::pin(futures_util::stream::poll_fn(move |cx| {
                signal_rx.poll_recv(cx)
            }));
            let harness = Harness {
                _dir: dir,
                paths,
                config: RefCell::new(config_text(60)),
                origin: Instant::now(),
                seen: Rc::default(),
                signals: RefCell::new(Some(signals)),
                requests: RefCell::new(Some(requests)),
            };
            let sources = Sources {
                signals: stream,
                requests: request_rx,
            };
            (harness, sources)
        }

        fn load(&self) -> Result<Config, ConfigError> {
            Config::parse(&self.config.borrow(), Path::new("config.toml"))
        }

        /// A supervisor whose one step works for `work`.
        fn supervisor(&self, work: Duration, heeds_stop: bool) -> Supervisor {
            let store = Store::open(&self.paths.database).unwrap();
            let (origin, seen) = (self.origin, self.seen.clone());
            Supervisor::new(&self.paths, self.load().unwrap(), store, move |_, _| {
                vec![Box::new(Slow {
                    work,
                    heeds_stop,
                    origin,
                    seen,
                }) as Box<dyn CycleStep>]
            })
        }

        async fn ask(&self, command: Command) -> oneshot::Receiver<Response> {
            let (reply, answer) = oneshot::channel();
            let requests = self.requests.borrow().clone().expect("requests open");
            requests
                .send(control::Incoming { command, reply })
                .await
                .unwrap();
            answer
        }

        fn signal(&self, s: Signal) {
            let signals = self.signals.borrow().clone().expect("signals open");
            signals.send(s).unwrap();
        }

        /// Sleeps until `secs` after the test's start.
        async fn at(&self, secs: u64) {
            tokio::time::sleep_until(self.origin + Duration::from_secs(secs)).await;
        }

        fn now(&self) -> Duration {
            self.origin.elapsed()
        }

        fn seen(&self) -> Vec<Seen> {
            self.seen.borrow().clone()
        }

        /// The audit log's operations, oldest first.
        fn operations(&self) -> Vec<String> {
            let store = Store::open(&self.paths.database).unwrap();
            let mut rows = store
                .audit_rows(&crate::store::AuditFilter::default())
                .unwrap();
            rows.sort_by_key(|r| r.id);
            rows.into_iter().map(|r| r.operation).collect()
        }

        fn state(&self) -> DaemonState {
            DaemonState::load(&self.paths.state_file).unwrap().unwrap()
        }
    }

    fn data(r: Result<Response, oneshot::error::RecvError>) -> serde_json::Value {
        let r = r.expect("answered");
        assert!(r.ok, "{r:?}");
        r.data.expect("data")
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[tokio::test(start_paused = true)]
    async fn a_reload_asked_mid_cycle_waits_for_the_cycle_then_takes_effect() {
        let (h, sources) = Harness::new();
        let sup = h.supervisor(secs(30), true);
        let load = || h.load();
        let script = async {
            h.at(10).await;
            let status = data(h.ask(Command::Status).await.await);
            assert_eq!(status["cycle_running"], true);
            assert_eq!(status["state"]["heartbeat_secs"], 60);
            // A file that does not load is refused after the cycle, and the old one stays.
            *h.config.borrow_mut() = "[heartbeat]\ninterval = \"1s\"\n".into();
            let mut refused = h.ask(Command::Reload).await;
            h.at(20).await;
            assert!(
                refused.try_recv().is_err(),
                "no answer while the cycle runs"
            );
            let refused = refused.await.unwrap();
            assert_eq!(h.now(), secs(30), "answered as the cycle ended");
            assert!(!refused.ok);
            assert!(
                refused
                    .error
                    .as_deref()
                    .unwrap()
                    .contains("the one in effect stays"),
                "{refused:?}"
            );
            // Mid-cycle again (the next heartbeat's), a good file: the reload waits for
            // the cycle, then the new heartbeat counts from it.
            *h.config.borrow_mut() = config_text(120);
            h.at(70).await;
            let mut reload = h.ask(Command::Reload).await;
            h.signal(Signal::Reload);
            h.at(80).await;
            assert!(reload.try_recv().is_err());
            let reloaded = data(reload.await);
            assert_eq!(h.now(), secs(90));
            assert_eq!(reloaded["heartbeat_secs"], 120);
            let state = h.state();
            assert_eq!(state.cycles, 2, "the cycle was recorded before the reload");
            assert_eq!(state.heartbeat_secs, 120);
            h.at(300).await;
            let began: Vec<Duration> = h.seen().iter().map(|s| s.began).collect();
            assert_eq!(began, [secs(0), secs(60), secs(210)]);
            h.signal(Signal::Stop(15));
        };
        let (exit, ()) = tokio::join!(sup.run(sources, &load), script);
        assert_eq!(exit.unwrap(), Exit::Stopped);
        let ops = h.operations();
        let reloads: Vec<&String> = ops.iter().filter(|o| o.contains("RELOAD")).collect();
        assert_eq!(
            reloads.len(),
            2,
            "one refused; the request and the signal of one cycle make one reload: {ops:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_sync_asked_mid_cycle_is_owed_to_the_next_cycle_which_runs_at_once() {
        let (h, sources) = Harness::new();
        let sup = h.supervisor(secs(30), true);
        let load = || h.load();
        let script = async {
            h.at(10).await;
            // The first cycle syncs already (the schedule never ran); this one is owed
            // all the same, with its allowance.
            let sync = h.ask(Command::SyncNowAllowRemovals).await;
            let cycle = h.ask(Command::CycleNow).await;
            let queued = data(h.ask(Command::MailQueued).await.await);
            assert_eq!(queued["cycle"], "next");
            h.signal(Signal::CycleNow);
            let summary = data(sync.await);
            assert_eq!(
                h.now(),
                secs(60),
                "the owed cycle ran right after the first"
            );
            assert_eq!(summary["trigger"], "request");
            assert_eq!(data(cycle.await), summary, "both waited for the same cycle");
            // Between cycles a request runs one now.
            h.at(65).await;
            let queued = data(h.ask(Command::MailQueued).await.await);
            assert_eq!(queued["cycle"], "now");
            h.at(100).await;
            h.signal(Signal::Stop(2));
        };
        let (exit, ()) = tokio::join!(sup.run(sources, &load), script);
        assert_eq!(exit.unwrap(), Exit::Stopped);
        let seen = h.seen();
        let runs: Vec<(Duration, bool, bool)> = seen
            .iter()
            .map(|s| (s.began, s.sync_due, s.allow_removals))
            .collect();
        assert_eq!(
            runs,
            [
                (secs(0), true, false),
                (secs(30), true, true),
                (secs(65), false, false),
            ],
            "one cycle owed for all the asks, the allowance for its one sync"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_mid_cycle_is_answered_at_once_and_the_step_finishes_its_unit() {
        let (h, sources) = Harness::new();
        let sup = h.supervisor(secs(30), true);
        let load = || h.load();
        let script = async {
            h.at(10).await;
            let answer = data(h.ask(Command::Stop).await.await);
            assert_eq!(answer["stopping"], true);
            assert_eq!(h.now(), secs(10));
        };
        let (exit, ()) = tokio::join!(sup.run(sources, &load), script);
        assert_eq!(exit.unwrap(), Exit::Stopped);
        assert_eq!(h.now(), secs(10), "the step stopped at the stop");
        let seen = h.seen();
        assert_eq!(seen.len(), 1);
        assert!(seen[0].cancelled);
        let state = h.state();
        assert_eq!(state.phase, Phase::Stopped);
        assert_eq!(state.cycles, 1, "the cycle the stop cut short is recorded");
        let ops = h.operations();
        assert_eq!(ops.first().map(String::as_str), Some("CONNECT"));
        assert_eq!(ops.last().map(String::as_str), Some("DISCONNECT"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_step_that_ignores_the_stop_is_abandoned_after_the_grace_period() {
        let (h, sources) = Harness::new();
        let sup = h.supervisor(secs(3600), false);
        let load = || h.load();
        let script = async {
            h.at(10).await;
            h.signal(Signal::Stop(15));
        };
        let (exit, ()) = tokio::join!(sup.run(sources, &load), script);
        assert_eq!(exit.unwrap(), Exit::Stopped);
        assert_eq!(h.now(), secs(15), "the grace is 5 s");
        assert!(h.seen().is_empty(), "the step never finished");
        let state = h.state();
        assert_eq!(state.phase, Phase::Stopped);
        assert_eq!(state.cycles, 0);
        assert_eq!(
            h.operations().last().map(String::as_str),
            Some("DISCONNECT")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_stop_while_the_first_waits_ends_the_loop_at_once() {
        let (h, sources) = Harness::new();
        let sup = h.supervisor(secs(3600), false);
        let load = || h.load();
        let script = async {
            // The first stop by request (two stop signals never reach the loop: the
            // signal handler exits on the second), then one by signal.
            h.at(10).await;
            let answer = data(h.ask(Command::Stop).await.await);
            assert_eq!(answer["stopping"], true);
            h.at(11).await;
            // Another stop request while stopping is answered and changes nothing.
            let answer = data(h.ask(Command::Stop).await.await);
            assert_eq!(answer["stopping"], true);
            h.at(12).await;
            h.signal(Signal::Stop(2));
        };
        let (exit, ()) = tokio::join!(sup.run(sources, &load), script);
        assert_eq!(exit.unwrap(), Exit::AtOnce);
        assert_eq!(h.now(), secs(12));
        assert_eq!(h.state().phase, Phase::Running, "no final records");
        assert_eq!(h.operations().last().map(String::as_str), Some("CONNECT"));
    }

    #[tokio::test(start_paused = true)]
    async fn with_its_requests_closed_the_loop_goes_on_and_a_signal_stops_it() {
        let (h, sources) = Harness::new();
        let sup = h.supervisor(secs(1), true);
        let load = || h.load();
        let script = async {
            h.at(5).await;
            let status = data(h.ask(Command::Status).await.await);
            assert_eq!(status["cycle_running"], false);
            assert_eq!(status["state"]["cycles"], 1);
            drop(h.requests.borrow_mut().take());
            h.at(70).await;
            assert_eq!(h.seen().len(), 2, "the heartbeat ran its cycle at 60 s");
            h.signal(Signal::Stop(15));
        };
        let (exit, ()) = tokio::join!(sup.run(sources, &load), script);
        assert_eq!(exit.unwrap(), Exit::Stopped);
        assert_eq!(h.now(), secs(70));
        assert_eq!(h.state().phase, Phase::Stopped);
    }

    #[tokio::test(start_paused = true)]
    async fn with_its_signals_closed_the_loop_goes_on_and_a_request_stops_it() {
        let (h, sources) = Harness::new();
        let sup = h.supervisor(secs(1), true);
        let load = || h.load();
        let script = async {
            h.at(5).await;
            drop(h.signals.borrow_mut().take());
            h.at(70).await;
            assert_eq!(h.seen().len(), 2, "the heartbeat ran its cycle at 60 s");
            let answer = data(h.ask(Command::Stop).await.await);
            assert_eq!(answer["stopping"], true);
        };
        let (exit, ()) = tokio::join!(sup.run(sources, &load), script);
        assert_eq!(exit.unwrap(), Exit::Stopped);
        assert_eq!(h.now(), secs(70));
        assert_eq!(h.state().phase, Phase::Stopped);
    }
}
