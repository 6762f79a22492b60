//! `imm-daemon cycle`, `imm-daemon sync` and `imm-daemon stop`: asking the running
//! daemon over its control socket (a cycle runs in this process when no daemon runs).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use chrono::Utc;

use super::{Context, SilentExit};
use crate::control::lock::{InstanceLock, LockError};
use crate::control::{self, Command};
use crate::heartbeat::backoff::Backoff;
use crate::heartbeat::{CycleSummary, StepContext, Steps, Trigger};

/// How long `cycle` waits for the daemon to finish the cycle it asked for.
const CYCLE_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// How long a plain question to the daemon may take.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// While `cycle` or `sync` waits for the daemon, it checks this often that the daemon
/// still answers, so a frozen daemon is given up on within this plus [`ANSWER_TIMEOUT`].
pub const LIVENESS_EVERY: Duration = Duration::from_secs(5);

/// Options of `imm-daemon cycle`.
#[derive(Debug, clap::Args)]
pub struct CycleArgs {
    /// Print the cycle's summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Options of `imm-daemon sync`.
#[derive(Debug, clap::Args)]
pub struct SyncArgs {
    #[command(flatten)]
    pub cycle: CycleArgs,
    /// The mailboxes the source no longer lists are really gone, however many: the
    /// removal guard ([sync] max_removed_share) stands aside for this sync.
    #[arg(long)]
    pub allow_removals: bool,
}

/// Runs one cycle now: in the daemon when it runs, else in this process (holding the
/// daemon's lock meanwhile, so that a daemon starting now waits its turn). The mailbox
/// sync runs in it when its schedule says it is due.
pub fn cycle(ctx: &Context, args: CycleArgs) -> anyhow::Result<()> {
    run_cycle(ctx, args, false, false)
}

/// Runs one cycle now with the mailbox sync due, wherever `cycle` would run it.
pub fn sync(ctx: &Context, args: SyncArgs) -> anyhow::Result<()> {
    if let Some(why) = ctx.config()?.sync_unavailable() {
        anyhow::bail!("cannot sync: {why} in {}", ctx.paths.config_file.display());
    }
    run_cycle(ctx, args.cycle, true, args.allow_removals)
}

fn run_cycle(
    ctx: &Context,
    args: CycleArgs,
    sync: bool,
    allow_removals: bool,
) -> anyhow::Result<()> {
    let command = match (sync, allow_removals) {
        (true, true) => Command::SyncNowAllowRemovals,
        (true, false) => Command::SyncNow,
        (false, _) => Command::CycleNow,
    };
    let show = sync && !args.json && std::io::stderr().is_terminal();
    let summary = loop {
        if InstanceLock::is_held(&ctx.paths.lock_file) {
            let socket = ctx.paths.socket.clone();
            let bar = show.then(|| {
                ProgressBar::start(move || {
                    control::request(&socket, Command::Status, ANSWER_TIMEOUT)
                        .ok()
                        .and_then(|v| serde_json::from_value(v.get("sync")?.clone()).ok())
                })
            });
            // A sync may wait out throttling for up to [sync] max_wait on top of its work.
            let timeout = if sync {
                CYCLE_TIMEOUT + ctx.config()?.sync.max_wait.get()
            } else {
                CYCLE_TIMEOUT
            };
            let data = control::request_watched(
                &ctx.paths.socket,
                command,
                timeout,
                LIVENESS_EVERY,
                ANSWER_TIMEOUT,
            );
            drop(bar);
            break serde_json::from_value::<CycleSummary>(data?)?;
        }
        match InstanceLock::acquire(&ctx.paths.lock_file) {
            Ok(lock) => {
                let progress = crate::exchange::sync::ProgressSlot::default();
                let bar = show.then(|| {
                    let progress = progress.clone();
                    ProgressBar::start(move || progress.lock().ok()?.clone())
                });
                let summary = cycle_here(ctx, sync, allow_removals, progress);
                drop(bar);
                drop(lock);
                break summary?;
            }
            // A daemon started in between: ask it.
            Err(LockError::Held { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        super::output::write_json_pretty(&mut out, &summary)?;
    } else {
        write_summary(&mut out, &summary)?;
    }
    out.flush()?;
    if !summary.ok {
        return Err(SilentExit {
            code: super::exit::FAILURE,
        }
        .into());
    }
    if sync && let Some(why) = sync_not_run(&summary) {
        anyhow::bail!("the sync did not run: {why}");
    }
    Ok(())
}

/// Why the cycle `sync` asked for did not sync, if it did not.
fn sync_not_run(summary: &CycleSummary) -> Option<String> {
    use crate::heartbeat::StepStatus;
    let Some(step) = summary
        .steps
        .iter()
        .find(|s| s.step == crate::sync::step::STEP_NAME)
    else {
        return Some("the cycle had no mailbox sync step".into());
    };
    let detail = step
        .summary
        .as_deref()
        .or(step.error.as_deref())
        .map(|d| format!(" ({d})"))
        .unwrap_or_default();
    match step.status {
        StepStatus::Ok | StepStatus::Failed => None,
        StepStatus::Skipped => Some(format!("the daemon was stopping{detail}")),
        StepStatus::BackingOff => Some(format!("it is backing off after failures{detail}")),
        StepStatus::Idle => Some(
            step.summary
                .clone()
                .unwrap_or_else(|| "the step did nothing".into()),
        ),
    }
}

/// A sync's progress on the terminal (stderr), redrawn from `read` until dropped.
struct ProgressBar {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ProgressBar {
    fn start(
        read: impl Fn() -> Option<crate::exchange::sync::Progress> + Send + 'static,
    ) -> ProgressBar {
        use crate::exchange::sync::Phase;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_msg}")
                    .expect("the template parses"),
            );
            let started = Instant::now();
            while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(p) = read() {
                    let waits = match p.throttled_waits {
                        0 => String::new(),
                        n => format!(", {n} throttled wait(s)"),
                    };
                    bar.set_message(match p.phase {
                        Phase::Listing => format!(
                            "listing: {} page(s), {} mailbox(es) seen{}{waits}",
                            p.pages,
                            p.mailboxes_seen,
                            match p.restarts {
                                0 => String::new(),
                                n => format!(", restarted {n}x"),
                            }
                        ),
                        Phase::Applying => {
                            format!("applying {} mailbox(es) to the cache", p.mailboxes_seen)
                        }
                        Phase::Statistics => format!(
                            "statistics: {} of {} due fetched{waits}",
                            p.statistics_done, p.statistics_target
                        ),
                    });
                } else if started.elapsed() > Duration::from_millis(300) {
                    bar.set_message("waiting for the sync to start");
                }
                bar.tick();
                std::thread::sleep(Duration::from_millis(120));
            }
            bar.finish_and_clear();
        });
        ProgressBar {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for ProgressBar {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn cycle_here(
    ctx: &Context,
    sync: bool,
    allow_removals: bool,
    progress: crate::exchange::sync::ProgressSlot,
) -> anyhow::Result<CycleSummary> {
    let config = ctx.config()?;
    let store = ctx.store()?;
    let now = Utc::now();
    let sync_due = sync
        || crate::schedule::Jobs::plan(&config, &store.job_runs()?, now)
            .next_run(crate::schedule::Job::MailboxSync)
            .is_some_and(|t| t <= now);
    let store = std::cell::RefCell::new(store);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let cancel = tokio_util::sync::CancellationToken::new();
    let mut steps = Steps::new(
        crate::heartbeat::default_steps(crate::auth::step::Hub::new(), progress.clone()),
        Backoff::for_heartbeat(config.heartbeat.interval.get()),
    );
    let summary = runtime.block_on(async {
        let step_ctx = StepContext {
            config: &config,
            paths: &ctx.paths,
            store: &store,
            cancel: &cancel,
            sync_due,
            allow_removals,
            wake: None,
        };
        steps.run_cycle(&step_ctx, Trigger::Request).await
    });
    // A read stuck in the blocking pool (it timed out) must not hold up the exit.
    runtime.shutdown_background();
    summary.record(&mut store.borrow_mut())?;
    Ok(summary)
}

fn write_summary(out: &mut impl Write, s: &CycleSummary) -> std::io::Result<()> {
    writeln!(
        out,
        "cycle {} ({} ms): {}",
        s.finished_at,
        s.duration_ms,
        if s.ok { "ok" } else { "FAILED" }
    )?;
    for step in &s.steps {
        writeln!(out, "  {}: {}", step.step, step.describe())?;
    }
    Ok(())
}

/// Stops the running daemon and waits until it has exited.
pub fn stop(ctx: &Context) -> anyhow::Result<()> {
    if !InstanceLock::is_held(&ctx.paths.lock_file) {
        println!("imm-daemon is not running");
        return Err(SilentExit {
            code: super::status::code::NOT_RUNNING,
        }
        .into());
    }
    control::request(&ctx.paths.socket, Command::Stop, ANSWER_TIMEOUT)?;
    let grace = ctx
        .config()
        .map(|c| c.daemon.shutdown_grace.get())
        .unwrap_or(Duration::from_secs(10));
    let deadline = Instant::now() + grace + Duration::from_secs(5);
    while InstanceLock::is_held(&ctx.paths.lock_file) {
        if Instant::now() > deadline {
            anyhow::bail!(
                "imm-daemon did not stop within {}",
                humantime::format_duration(grace + Duration::from_secs(5))
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("imm-daemon stopped at {}", crate::time::stamp(Utc::now()));
    Ok(())
}
