//! The running daemon: `imm-daemon run`.
//!
//! One foreground process, no forking, on a single-threaded tokio runtime (the work is a
//! few steps every few minutes; one thread keeps the idle footprint small and the steps'
//! access to the database simple). [`run`] takes the single-instance lock, opens the
//! database, installs the signal handlers and the control socket, and hands them to the
//! [`supervisor`]'s event loop, which writes CONNECT and DISCONNECT audit rows, runs a
//! cycle of [`crate::step::CycleStep`]s on every heartbeat, and answers signals and requests.
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

pub mod supervisor;

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use signal_hook::consts::signal::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use tokio::time::MissedTickBehavior;

use crate::config::{Config, ConfigError};
use crate::control::lock::{InstanceLock, LockError};
use crate::control::{self, state};
use crate::heartbeat::default_steps;
use crate::paths::Paths;
use crate::store::{Store, StoreError};
use supervisor::{Exit, Signal, Sources, StopShared, Supervisor};

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

/// Runs the daemon until it is stopped. `load_config` reads the configuration (at start
/// and on SIGHUP).
pub fn run(
    paths: &Paths,
    load_config: &dyn Fn() -> Result<Config, ConfigError>,
) -> Result<(), DaemonError> {
    let config = load_config()?;
    let lock = InstanceLock::acquire(&paths.lock_file)?;
    let mut store = Store::open_audited(
        &paths.database,
        &paths.audit_head,
        crate::store::BUSY_TIMEOUT,
    )?;
    store.for_long_running()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        // Helper threads (name lookups, keychain calls, file reads) end a second after
        // their last job rather than ten, so they are gone before the daemon gives back
        // memory after a cycle (`supervisor::SETTLE_AFTER_CYCLE`); a new one costs tens
        // of microseconds.
        .thread_keep_alive(Duration::from_secs(1))
        .build()
        .map_err(DaemonError::Runtime)?;
    let result = runtime.block_on(async {
        let supervisor = Supervisor::new(paths, config, store, default_steps);
        serve(paths, supervisor, load_config).await
    });
    // Everything is saved; a read still stuck in the blocking pool (an export on a hung
    // share) must not hold up the exit.
    runtime.shutdown_background();
    drop(lock);
    match result? {
        Exit::Stopped => Ok(()),
        Exit::AtOnce => std::process::exit(1),
    }
}

/// Installs the signal handlers and the control socket, runs the supervisor's loop over
/// them, then closes the socket.
async fn serve(
    paths: &Paths,
    supervisor: Supervisor,
    load_config: &dyn Fn() -> Result<Config, ConfigError>,
) -> Result<Exit, DaemonError> {
    // A second SIGTERM or SIGINT exits at once, even while a step blocks the runtime:
    // the first sets the flag, and a signal arriving with the flag set exits (1).
    let stop_requested = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [SIGTERM, SIGINT] {
        signal_hook::flag::register_conditional_shutdown(sig, 1, stop_requested.clone())
            .map_err(DaemonError::Signals)?;
        signal_hook::flag::register(sig, stop_requested.clone()).map_err(DaemonError::Signals)?;
    }
    let signals = signal_hook_tokio::Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1])
        .map_err(DaemonError::Signals)?;
    spawn_stop_deadline(supervisor.stop_shared()).map_err(DaemonError::Signals)?;
    let listener = control::bind(&paths.socket)?;
    let (to_supervisor, requests) = tokio::sync::mpsc::channel(16);
    let connections = tokio_util::task::TaskTracker::new();
    let server = tokio::spawn(control::serve(listener, to_supervisor, connections.clone()));
    let sources = Sources {
        signals: signals.map(Signal::from_raw),
        requests,
    };
    let result = supervisor.run(sources, load_config).await;
    server.abort();
    let _ = std::fs::remove_file(&paths.socket);
    // Answers already given get a moment to reach their clients.
    connections.close();
    let _ = tokio::time::timeout(Duration::from_millis(500), connections.wait()).await;
    result
}

/// The heartbeat: the first tick is immediate, later ones every `period`; ticks missed
/// (the machine slept, a cycle overran) are skipped, not made up in a burst.
pub fn heartbeat_timer(period: Duration) -> tokio::time::Interval {
    let mut i = tokio::time::interval(period);
    i.set_missed_tick_behavior(MissedTickBehavior::Skip);
    i
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
fn spawn_stop_deadline(shared: StopShared) -> std::io::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
    std::thread::Builder::new()
        .name("stop-deadline".into())
        .spawn(move || {
            if signals.forever().next().is_some() {
                let grace = Duration::from_millis(shared.grace_ms.load(Ordering::Relaxed));
                // Logged once the signal's handler has run: another stop signal now
                // exits at once.
                tracing::debug!(
                    deadline = %humantime::format_duration(grace + STOP_DEADLINE_MARGIN),
                    "stop signal received; the stop deadline runs"
                );
                std::thread::sleep(grace + STOP_DEADLINE_MARGIN);
                if shared.cleaning_up.load(Ordering::Relaxed) {
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
