//! The mailbox sync: loading the tenant's inactive mailboxes into the cache, from the
//! CLI (`mailboxes import`) and from the daemon's `mailbox_sync` cycle step.
//!
//! The source is Exchange Online itself (`[sync] source = "exchange"`, the live sync of
//! [`crate::exchange::sync`], through the sign-in step's session), or a PowerShell export
//! that a scheduled task keeps current (`[sync] export`). Either is loaded as a snapshot,
//! so mailboxes that were recovered or purged leave the cache. Every load is one
//! transaction with its audit rows: it lands whole or not at all, and a failure is
//! audited apart after the rollback.

use std::path::Path;

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::audit::{AuditEvent, Operation};
use crate::config::InventoryConfig;
use crate::import::{Encoding, Export, ExportShape, ImportError};
use crate::inventory::InactiveMailbox;
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

pub mod step;

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
