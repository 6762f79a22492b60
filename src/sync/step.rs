//! The `mailbox_sync` cycle step: loads the configured source (Exchange Online, or a
//! PowerShell export read off the runtime) into the cache when the sync is due, and
//! fetches a batch of the mailbox statistics still due every cycle.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Utc};

use super::{LoadError, RemovalGuard, store_export};
use crate::config::InventoryConfig;
use crate::error::{Classify as _, Kind};
use crate::import::{ImportError, Summary};
use crate::schedule::Job;
use crate::step::{CycleStep, StepContext, StepError, StepFuture, StepReport};
use crate::store::Store;

/// A read that timed out and whose thread is still blocked.
struct StuckRead {
    handle: tokio::task::JoinHandle<Result<Summary, Option<ImportError>>>,
    since: String,
}

/// Reads the export off the async runtime and stages it batch by batch as the reading
/// thread hands the batches on, so that a file on a hung network share neither freezes
/// the daemon nor outlives `timeout` (which covers reading and staging), and the daemon
/// holds a few batches, not the file.
/// Staging writes only the connection's temporary database: the cache is not locked
/// while the file is read. A read that timed out keeps its thread (nothing can unblock
/// it); while it stays blocked no new read is started, so a share that stays hung costs
/// one thread, not one per retry. `None`: the daemon is stopping and the read was
/// abandoned (nothing was written, the staging is ended).
async fn stage_off_runtime(
    store: &RefCell<Store>,
    file: &Path,
    cfg: &InventoryConfig,
    now: DateTime<Utc>,
    timeout: std::time::Duration,
    cancel: &tokio_util::sync::CancellationToken,
    stuck: &mut Option<StuckRead>,
) -> Option<Result<Summary, LoadError>> {
    if let Some(s) = stuck.as_ref()
        && !s.handle.is_finished()
    {
        return Some(Err(LoadError::StillStuck {
            path: file.to_path_buf(),
            since: s.since.clone(),
        }));
    }
    *stuck = None;
    if let Err(e) = store.borrow_mut().import_begin() {
        return Some(Err(e.into()));
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let (tx, mut rx) = tokio::sync::mpsc::channel(2);
    let (path, inventory) = (file.to_path_buf(), cfg.clone());
    let mut read = tokio::task::spawn_blocking(move || {
        super::read_staging(&path, &inventory, now, |m| tx.blocking_send(m).is_ok())
    });
    let mut timed_out = |handle| {
        *stuck = Some(StuckRead {
            handle,
            since: crate::time::stamp(Utc::now()),
        });
        Some(Err(LoadError::TimedOut {
            path: file.to_path_buf(),
            after: humantime::format_duration(timeout).to_string(),
        }))
    };
    let cancelled = || {
        let _ = store.borrow_mut().import_end();
        None
    };
    // Until the reader is done (it drops its sender), stage what it hands on; a failure
    // to stage drops the receiver, which stops the reader at its next batch.
    loop {
        tokio::select! {
            m = rx.recv() => match m {
                Some(batch) => {
                    if let Err(e) = store.borrow_mut().import_stage(&batch) {
                        return Some(Err(e.into()));
                    }
                }
                None => break,
            },
            _ = tokio::time::sleep_until(deadline) => return timed_out(read),
            _ = cancel.cancelled() => return cancelled(),
        }
    }
    tokio::select! {
        r = &mut read => Some(match r {
            Ok(Ok(summary)) => Ok(summary),
            Ok(Err(Some(e))) => Err(LoadError::Read(e)),
            Ok(Err(None)) => Err(LoadError::Panicked("the reader stopped without a reason".into())),
            Err(e) => Err(LoadError::Panicked(e.to_string())),
        }),
        _ = tokio::time::sleep_until(deadline) => timed_out(read),
        _ = cancel.cancelled() => cancelled(),
    }
}

/// Records the sync's run for the scheduler, which plans the next from its last success;
/// a failure to record is logged (the sync is then planned as if it had not run).
fn record_run(ctx: &StepContext<'_>, started: chrono::DateTime<Utc>, ok: bool, text: &str) {
    let recorded =
        ctx.store
            .borrow_mut()
            .record_job_finished(Job::MailboxSync, started, Utc::now(), ok, text);
    if let Err(e) = recorded {
        tracing::error!(
            "cannot record the mailbox sync's run: {}",
            crate::error::chain(&e)
        );
    }
}

/// The `mailbox_sync` cycle step: when the sync is due (its schedule fired, or someone
/// asked), loads the configured source into the cache and records the run for the
/// scheduler. With Exchange as the source it also fetches, every cycle, a batch of the
/// mailbox statistics still due. A failure keeps the sync due, so the heartbeat retries
/// it with the step's backoff.
pub struct MailboxSync {
    stuck: Option<StuckRead>,
    session: crate::auth::step::SessionSlot,
    progress: crate::exchange::sync::ProgressSlot,
}

impl MailboxSync {
    /// The step, calling Exchange through the sign-in step's `session` and publishing a
    /// running sync's progress in `progress`.
    pub fn new(
        session: crate::auth::step::SessionSlot,
        progress: crate::exchange::sync::ProgressSlot,
    ) -> MailboxSync {
        MailboxSync {
            stuck: None,
            session,
            progress,
        }
    }

    async fn run_exchange(&mut self, ctx: &StepContext<'_>) -> Result<StepReport, StepError> {
        let cfg = &ctx.config.sync;
        if let Some(why) = ctx.config.sync_unavailable() {
            return if ctx.sync_due {
                Err(StepError::new(Kind::Fatal, why))
            } else {
                Ok(StepReport::idle("not due"))
            };
        }
        let started = Utc::now();
        let statistics_due = cfg.statistics_per_cycle.get() > 0 && {
            let cutoff = started
                - chrono::Duration::from_std(cfg.statistics_max_age.get()).unwrap_or_default();
            ctx.store
                .borrow()
                .statistics_due_count(cutoff)
                .map(|d| d.total() > 0)
                .unwrap_or(false)
        };
        if !ctx.sync_due && !statistics_due {
            return Ok(StepReport::idle("not due"));
        }
        let Some(session) = self.session.get() else {
            return Ok(StepReport::idle(
                "the sync waits for a sign-in session (see the sign_in step)",
            ));
        };
        let run = crate::exchange::sync::Run {
            config: ctx.config,
            session: &session,
            store: ctx.store,
            cancel: ctx.cancel,
            progress: &self.progress,
            allow_removals: ctx.allow_removals,
        };
        let result = crate::exchange::sync::run(&run, ctx.sync_due).await;
        if session.take_refused_drop()
            && let Some(w) = ctx.wake
        {
            // The sign-in step tells and asks for a person: at once, not at the next
            // heartbeat.
            w.notify_one();
        }
        if ctx.sync_due && !matches!(result, Err(crate::exchange::ExchangeError::Cancelled)) {
            let (ok, text) = match &result {
                Ok(o) => (true, o.summary()),
                Err(e) => (false, crate::error::chain(e)),
            };
            record_run(ctx, started, ok, &text);
        }
        match result {
            // The listing was applied; the statistics need a person (a role, a sign-in).
            Ok(o) if o.statistics_kind.is_some_and(Kind::needs_person) => Err(StepError {
                message: format!(
                    "{}; statistics: {}",
                    o.summary(),
                    o.statistics_error.as_deref().unwrap_or("failed")
                ),
                kind: o.statistics_kind.unwrap_or(Kind::Refused),
            }),
            Ok(o) => {
                let mut counts = BTreeMap::new();
                if let Some(s) = &o.snapshot {
                    counts.insert("mailboxes".to_string(), s.listed);
                    counts.insert("added".to_string(), s.added);
                    counts.insert("removed".to_string(), s.removed);
                    counts.insert("changed".to_string(), s.changed);
                    counts.insert("pages".to_string(), u64::from(o.pages));
                }
                counts.insert("statistics".to_string(), o.statistics_fetched);
                counts.insert("statistics_due".to_string(), o.statistics_due);
                counts.insert("throttled_waits".to_string(), o.throttled_waits);
                Ok(StepReport {
                    summary: o.summary(),
                    counts,
                    idle: false,
                    // A listing ran (the sync was due); otherwise only statistics.
                    synced: ctx.sync_due,
                })
            }
            Err(crate::exchange::ExchangeError::Cancelled) => Ok(StepReport::idle(
                "stopped before the sync finished; nothing it listed was applied, statistics fetched are kept",
            )),
            Err(crate::exchange::ExchangeError::Auth(e))
                if e.kind() == Kind::SignIn || matches!(e, crate::auth::AuthError::NotSignedIn) =>
            {
                Ok(StepReport::idle(format!(
                    "the sync waits for a sign-in: {}",
                    crate::error::chain(&e)
                )))
            }
            Err(e) => Err(StepError::of(&e)),
        }
    }
}

/// The step's name, as cycle summaries show it.
pub const STEP_NAME: &str = "mailbox_sync";

impl CycleStep for MailboxSync {
    fn name(&self) -> &'static str {
        STEP_NAME
    }

    fn run<'a>(&'a mut self, ctx: &'a StepContext<'a>) -> StepFuture<'a> {
        Box::pin(async move {
            if ctx.config.sync.source() == crate::config::SyncSource::Exchange {
                return self.run_exchange(ctx).await;
            }
            if !ctx.sync_due {
                return Ok(StepReport::idle("not due"));
            }
            let Some(export) = &ctx.config.sync.export else {
                return Err(StepError::new(
                    Kind::Fatal,
                    "no mailbox source is configured: set [sync] export",
                ));
            };
            let started = Utc::now();
            let Some(read) = stage_off_runtime(
                ctx.store,
                export.as_path(),
                &ctx.config.inventory,
                started,
                ctx.config.sync.timeout.get(),
                ctx.cancel,
                &mut self.stuck,
            )
            .await
            else {
                return Ok(StepReport::idle(
                    "stopped before the export was read; the sync stays due",
                ));
            };
            // The write runs on the runtime without yielding, so a database another
            // process keeps locked holds the daemon up to its busy timeout from here.
            match &read {
                Ok(s) => tracing::debug!(
                    "read {} mailbox record(s) from {}; writing them to the cache",
                    s.records,
                    export.as_path().display()
                ),
                Err(_) => tracing::debug!("the export could not be read; recording that"),
            }
            let result = store_export(
                &mut ctx.store.borrow_mut(),
                &ctx.config.inventory,
                export.as_path(),
                read,
                false,
                RemovalGuard::from_config(ctx.config, ctx.allow_removals),
                Utc::now(),
            );
            let text = match &result {
                Ok(l) => format!(
                    "loaded {} mailbox(es) from {}; removed {} no longer in it",
                    l.imported,
                    export.as_path().display(),
                    l.removed
                ),
                Err(e) => crate::error::chain(e),
            };
            record_run(ctx, started, result.is_ok(), &text);
            match result {
                Ok(l) => Ok(StepReport {
                    summary: text,
                    counts: BTreeMap::from([
                        ("mailboxes".to_string(), l.imported as u64),
                        ("removed".to_string(), l.removed as u64),
                    ]),
                    idle: false,
                    synced: true,
                }),
                // A person must say whether the removals are real.
                Err(LoadError::TooManyRemovals(_)) => Err(StepError::new(Kind::Refused, text)),
                Err(_) => Err(StepError::transient(text)),
            }
        })
    }
}
