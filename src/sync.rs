//! The mailbox sync: loading the tenant's inactive mailboxes into the cache, from the
//! CLI (`mailboxes import`) and from the daemon's `mailbox_sync` cycle step.
//!
//! The source is Exchange Online itself (`[sync] source = "exchange"`, the live sync of
//! [`crate::exchange::sync`], through the sign-in step's session), or a PowerShell export
//! that a scheduled task keeps current (`[sync] export`). Either is loaded as a snapshot,
//! so mailboxes that were recovered or purged leave the cache. Every load is one
//! transaction with its audit rows: it lands whole or not at all, and a failure is
//! audited apart after the rollback.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::audit::{AuditEvent, Operation};
use crate::config::InventoryConfig;
use crate::error::{Classify as _, Kind};
use crate::import::{Encoding, Export, ExportShape, ImportError};
use crate::inventory::InactiveMailbox;
use crate::schedule::Job;
use crate::step::{CycleStep, StepContext, StepError, StepFuture, StepReport};
use crate::store::{Store, StoreError};

/// What a load did.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    pub shape: ExportShape,
    pub encoding: Encoding,
    /// Mailboxes written (new or updated).
    pub imported: usize,
    /// Mailboxes removed because the snapshot no longer had them.
    pub removed: usize,
}

pub use crate::inventory::{RemovalGuard, TooManyRemovals};

/// Why a load failed; nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Read(#[from] ImportError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Reading the export did not finish in time (a hung network share, a pipe no one
    /// writes to).
    #[error("{path} could not be read within {after} ([sync] timeout)")]
    TimedOut {
        path: std::path::PathBuf,
        after: String,
    },
    /// An earlier read of the export timed out and its thread is still blocked.
    #[error("{path} is still not readable: the read that timed out at {since} has not returned")]
    StillStuck {
        path: std::path::PathBuf,
        since: String,
    },
    #[error("reading the export failed unexpectedly: {0}")]
    Panicked(String),
    #[error(transparent)]
    TooManyRemovals(#[from] TooManyRemovals),
    /// The load failed, and so did the audit row recording the failure.
    #[error("{error}; writing its audit row failed too: {audit}")]
    Unaudited { error: String, audit: StoreError },
}

/// Loads the export at `file` into the cache: as a snapshot (mailboxes absent from it are
/// removed, each with a MAILBOX_REMOVED row) unless `merge`. Audited as IMPORT_MAILBOXES,
/// successful or not.
pub fn load_export(
    store: &mut Store,
    cfg: &InventoryConfig,
    file: &Path,
    merge: bool,
    guard: RemovalGuard,
    now: DateTime<Utc>,
) -> Result<Loaded, LoadError> {
    let read = crate::import::read_export(file, cfg).map_err(LoadError::from);
    store_export(store, cfg, file, read, merge, guard, now)
}

/// Writes an export that was read (or failed to be) into the cache, in one transaction
/// with its audit rows; a failure of either phase is audited after the rollback.
pub fn store_export(
    store: &mut Store,
    cfg: &InventoryConfig,
    file: &Path,
    read: Result<Export, LoadError>,
    merge: bool,
    guard: RemovalGuard,
    now: DateTime<Utc>,
) -> Result<Loaded, LoadError> {
    let file_label = file.display().to_string();
    let result = read.and_then(|export| write(store, cfg, export, &file_label, merge, guard, now));
    if let Err(e) = &result {
        let message = crate::error::chain(e);
        let event = AuditEvent::new(Operation::ImportMailboxes)
            .details(json!({"file": file_label, "merge": merge}))
            .failed(message.clone());
        if let Err(audit) = store.audit(&event, now) {
            return Err(LoadError::Unaudited {
                error: message,
                audit,
            });
        }
    }
    result
}

fn write(
    store: &mut Store,
    cfg: &InventoryConfig,
    export: Export,
    file_label: &str,
    merge: bool,
    guard: RemovalGuard,
    now: DateTime<Utc>,
) -> Result<Loaded, LoadError> {
    let mailboxes: Vec<InactiveMailbox> = export
        .mailboxes
        .into_iter()
        .map(|raw| InactiveMailbox::build(raw, cfg, now))
        .collect();
    let (imported, removed) = store.write(|tx| {
        let removed = if merge {
            0
        } else {
            let (absent, cached) = tx.count_absent_mailboxes(&mailboxes)?;
            guard.check(absent, cached)?;
            tx.remove_absent_mailboxes(
                &mailboxes,
                &json!({"reason": "absent from snapshot import", "file": file_label}),
                now,
            )?
        };
        let n = tx.upsert_mailboxes(&mailboxes)?;
        tx.audit(
            &AuditEvent::new(Operation::ImportMailboxes).details(json!({
                "file": file_label,
                "shape": export.shape,
                "encoding": export.encoding,
                "records": n,
                "removed": removed,
                "merge": merge,
            })),
            now,
        )?;
        Ok::<_, LoadError>((n, removed))
    })?;
    Ok(Loaded {
        shape: export.shape,
        encoding: export.encoding,
        imported,
        removed,
    })
}

/// A read that timed out and whose thread is still blocked.
struct StuckRead {
    handle: tokio::task::JoinHandle<Result<Export, ImportError>>,
    since: String,
}

/// Reads the export off the async runtime, so that a file on a hung network share
/// neither freezes the daemon nor outlives `timeout`. A read that timed out keeps its
/// thread (nothing can unblock it); while it stays blocked no new read is started, so a
/// share that stays hung costs one thread, not one per retry. `None`: the daemon is
/// stopping and the read was abandoned (nothing was written).
async fn read_off_runtime(
    file: &Path,
    cfg: &InventoryConfig,
    timeout: std::time::Duration,
    cancel: &tokio_util::sync::CancellationToken,
    stuck: &mut Option<StuckRead>,
) -> Option<Result<Export, LoadError>> {
    if let Some(s) = stuck.as_ref()
        && !s.handle.is_finished()
    {
        return Some(Err(LoadError::StillStuck {
            path: file.to_path_buf(),
            since: s.since.clone(),
        }));
    }
    *stuck = None;
    let (path, inventory) = (file.to_path_buf(), cfg.clone());
    let mut read =
        tokio::task::spawn_blocking(move || crate::import::read_export(&path, &inventory));
    tokio::select! {
        r = &mut read => Some(match r {
            Ok(r) => r.map_err(LoadError::from),
            Err(e) => Err(LoadError::Panicked(e.to_string())),
        }),
        _ = tokio::time::sleep(timeout) => {
            *stuck = Some(StuckRead { handle: read, since: crate::time::stamp(Utc::now()) });
            Some(Err(LoadError::TimedOut {
                path: file.to_path_buf(),
                after: humantime::format_duration(timeout).to_string(),
            }))
        }
        _ = cancel.cancelled() => None,
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
        if ctx.sync_due {
            let finished = crate::time::stamp(Utc::now());
            let (ok, text) = match &result {
                Ok(o) => (true, o.summary()),
                Err(e) => (false, crate::error::chain(e)),
            };
            if !matches!(result, Err(crate::exchange::ExchangeError::Cancelled)) {
                let recorded = ctx.store.borrow_mut().write(|tx| {
                    tx.record_job_run(
                        Job::MailboxSync,
                        &crate::time::stamp(started),
                        &finished,
                        ok,
                        &text,
                    )
                });
                if let Err(e) = recorded {
                    tracing::error!(
                        "cannot record the mailbox sync's run: {}",
                        crate::error::chain(&e)
                    );
                }
            }
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
            let Some(read) = read_off_runtime(
                export.as_path(),
                &ctx.config.inventory,
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
                Ok(e) => tracing::debug!(
                    "read {} mailbox record(s) from {}; writing them to the cache",
                    e.mailboxes.len(),
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
            let finished = crate::time::stamp(Utc::now());
            let text = match &result {
                Ok(l) => format!(
                    "loaded {} mailbox(es) from {}; removed {} no longer in it",
                    l.imported,
                    export.as_path().display(),
                    l.removed
                ),
                Err(e) => crate::error::chain(e),
            };
            let recorded = ctx.store.borrow_mut().write(|tx| {
                tx.record_job_run(
                    Job::MailboxSync,
                    &crate::time::stamp(started),
                    &finished,
                    result.is_ok(),
                    &text,
                )
            });
            if let Err(e) = recorded {
                tracing::error!(
                    "cannot record the mailbox sync's run: {}",
                    crate::error::chain(&e)
                );
            }
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
