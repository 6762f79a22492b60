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
use crate::import::{Encoding, ExportShape, ImportError, ReadError, Summary};
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
    let read = stage_export(store, cfg, file, now);
    store_export(store, cfg, file, read, merge, guard, now)
}

/// Reads the export at `file`, building each batch's rows as of `now` and handing them
/// to `send` (false: the stager is gone). Runs on a thread of its own, beside the one
/// that stages. `Err(None)`: stopped because the stager went away.
pub fn read_staging(
    file: &Path,
    cfg: &InventoryConfig,
    now: DateTime<Utc>,
    mut send: impl FnMut(Vec<InactiveMailbox>) -> bool,
) -> Result<Summary, Option<ImportError>> {
    crate::import::read_export(file, cfg, |batch| {
        let built = batch
            .into_iter()
            .map(|raw| InactiveMailbox::build(raw, cfg, now))
            .collect();
        if send(built) { Ok(()) } else { Err(()) }
    })
    .map_err(|e| match e {
        ReadError::Import(e) => Some(e),
        ReadError::Stopped(()) => None,
    })
}

/// Reads the export at `file` into the store's staging table: parsed on a thread of its
/// own, each batch staged here as it comes (a few batches are in flight at most).
fn stage_export(
    store: &mut Store,
    cfg: &InventoryConfig,
    file: &Path,
    now: DateTime<Utc>,
) -> Result<Summary, LoadError> {
    store.import_begin()?;
    let (tx, rx) = std::sync::mpsc::sync_channel(2);
    std::thread::scope(|scope| {
        let reader = scope.spawn(move || read_staging(file, cfg, now, |m| tx.send(m).is_ok()));
        let mut staged = Ok(());
        for batch in &rx {
            staged = store.import_stage(&batch);
            if staged.is_err() {
                break;
            }
        }
        // A stager that failed stops the reader at its next batch.
        drop(rx);
        let read = reader.join();
        staged?;
        match read {
            Ok(Ok(summary)) => Ok(summary),
            Ok(Err(Some(e))) => Err(LoadError::Read(e)),
            Ok(Err(None)) => Err(LoadError::Panicked(
                "the reader stopped without a reason".into(),
            )),
            Err(panic) => Err(LoadError::Panicked(
                panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "the reader panicked".into()),
            )),
        }
    })
}

/// Writes a staged export (or the failure to read it) into the cache, in one transaction
/// with its audit rows; a failure of either phase is audited after the rollback. Ends
/// the import ([`Store::import_end`]) either way.
pub fn store_export(
    store: &mut Store,
    cfg: &InventoryConfig,
    file: &Path,
    read: Result<Summary, LoadError>,
    merge: bool,
    guard: RemovalGuard,
    now: DateTime<Utc>,
) -> Result<Loaded, LoadError> {
    let file_label = file.display().to_string();
    let result =
        read.and_then(|summary| write(store, cfg, summary, &file_label, merge, guard, now));
    if let Err(e) = store.import_end() {
        tracing::warn!(
            "cannot restore the database connection's settings after the import: {}",
            crate::error::chain(&e)
        );
    }
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
    summary: Summary,
    file_label: &str,
    merge: bool,
    guard: RemovalGuard,
    now: DateTime<Utc>,
) -> Result<Loaded, LoadError> {
    let (imported, removed) = store.write(|tx| {
        let removed = if merge {
            0
        } else {
            let (absent, cached) = tx.import_absent_count(&summary.identities)?;
            guard.check(absent, cached)?;
            tx.import_remove_absent(
                &summary.identities,
                &json!({"reason": "absent from snapshot import", "file": file_label}),
                now,
            )?
        };
        let n = tx.import_apply(summary.records)?;
        // When no `stats` tallies are kept (a bulk load sets them aside), counted now.
        tx.keep_tallies_counted_now(now, cfg)?;
        tx.audit(
            &AuditEvent::new(Operation::ImportMailboxes).details(json!({
                "file": file_label,
                "shape": summary.shape,
                "encoding": summary.encoding,
                "records": n,
                "removed": removed,
                "merge": merge,
            })),
            now,
        )?;
        Ok::<_, LoadError>((n, removed))
    })?;
    Ok(Loaded {
        shape: summary.shape,
        encoding: summary.encoding,
        imported,
        removed,
    })
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 6, 1, 0, 0, 0).unwrap()
    }

    fn guid(i: usize) -> String {
        format!("{i:08x}-2222-4222-8222-222222222222")
    }

    fn record(i: usize, name: &str) -> serde_json::Value {
        json!({
            "ExchangeGuid": guid(i),
            "DisplayName": format!("{name} {i}"),
            "PrimarySmtpAddress": format!("user{i}@contoso.com"),
            "WhenSoftDeleted": "/Date(1690000000000)/",
            "LitigationHoldEnabled": i.is_multiple_of(3),
            "InPlaceHolds": [],
        })
    }

    /// Every row of the cache and of the audit log, as text, read from the file.
    fn dump(path: &Path) -> (Vec<String>, Vec<String>) {
        let conn = rusqlite::Connection::open(path).unwrap();
        let rows = |sql: &str| -> Vec<String> {
            conn.prepare(sql)
                .unwrap()
                .query_map([], |r| {
                    let n = r.as_ref().column_count();
                    Ok((0..n)
                        .map(|i| match r.get_ref(i).unwrap() {
                            rusqlite::types::ValueRef::Text(t) => {
                                String::from_utf8_lossy(t).into_owned()
                            }
                            other => format!("{other:?}"),
                        })
                        .collect::<Vec<_>>()
                        .join("|"))
                })
                .unwrap()
                .map(Result::unwrap)
                .collect()
        };
        (
            rows("SELECT * FROM inactive_mailboxes ORDER BY identity"),
            rows("SELECT operation, identity, details, result FROM audit_log ORDER BY id"),
        )
    }

    fn guard() -> RemovalGuard {
        RemovalGuard {
            max_share: 20,
            allow: false,
        }
    }

    #[test]
    fn a_failed_import_leaves_the_cache_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("imm.db");
        let cfg = InventoryConfig::default();
        let first: Vec<_> = (0..2500).map(|i| record(i, "First")).collect();
        let file = dir.path().join("first.json");
        std::fs::write(&file, serde_json::to_vec_pretty(&first).unwrap()).unwrap();
        let mut store = Store::open(&db).unwrap();
        let loaded = load_export(&mut store, &cfg, &file, false, guard(), now()).unwrap();
        assert_eq!((loaded.imported, loaded.removed), (2500, 0));
        drop(store);
        let (rows, mut audit) = dump(&db);
        assert_eq!(rows.len(), 2500);

        // The same mailboxes renamed, a few gone and more added: each export below
        // breaks in a batch after the first, after thousands of mailboxes were staged.
        let next = |bad: &dyn Fn(usize, &mut serde_json::Value)| -> Vec<u8> {
            let mut recs: Vec<_> = (100..3600).map(|i| record(i, "Second")).collect();
            for (i, r) in recs.iter_mut().enumerate() {
                bad(i + 1, r);
            }
            serde_json::to_vec_pretty(&recs).unwrap()
        };
        let duplicate = format!(
            "record 3400: field ExchangeGuid: {} also appears in record 10",
            guid(109)
        );
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "field.json",
                next(&|n, r| {
                    if n == 3200 {
                        r["WhenSoftDeleted"] = json!("last tuesday");
                    }
                }),
                "record 3200: field WhenSoftDeleted",
            ),
            (
                "duplicate.json",
                next(&|n, r| {
                    if n == 3400 {
                        r["ExchangeGuid"] = json!(guid(109).to_uppercase());
                    }
                }),
                &duplicate,
            ),
            (
                "cut.json",
                {
                    let mut b = next(&|_, _| {});
                    b.truncate(b.len() - 200);
                    b
                },
                "invalid JSON export: EOF while parsing",
            ),
            (
                "encoding.json",
                {
                    let mut b = next(&|_, _| {});
                    b.extend(b" \xff");
                    b
                },
                "not UTF-8 text",
            ),
            (
                "removes-too-many.json",
                serde_json::to_vec(&[record(1, "Only")]).unwrap(),
                "refusing to remove 2499 of the 2500 cached mailboxes",
            ),
        ];
        for (name, bytes, needle) in &cases {
            let file = dir.path().join(name);
            std::fs::write(&file, bytes).unwrap();
            let mut store = Store::open(&db).unwrap();
            let e = load_export(&mut store, &cfg, &file, false, guard(), now()).unwrap_err();
            let text = crate::error::chain(&e);
            assert!(text.contains(needle), "{name}: {text}");
            drop(store);
            let (after_rows, after_audit) = dump(&db);
            assert!(after_rows == rows, "{name}: the cache changed");
            // One audit row more: the failure.
            assert_eq!(after_audit[..audit.len()], audit[..], "{name}");
            assert_eq!(after_audit.len(), audit.len() + 1, "{name}");
            let last = after_audit.last().unwrap();
            assert!(
                last.starts_with("IMPORT_MAILBOXES|") && last.ends_with("|failure"),
                "{last}"
            );
            audit = after_audit;
        }
        let audit_before = audit;

        // The good export, in UTF-16 as Windows PowerShell's Out-File writes it, lands
        // whole: renamed, added, and the absent ones removed with a row each.
        let good = String::from_utf8(next(&|_, _| {})).unwrap();
        let mut utf16 = vec![0xFF, 0xFE];
        utf16.extend(good.encode_utf16().flat_map(u16::to_le_bytes));
        let file = dir.path().join("good.json");
        std::fs::write(&file, utf16).unwrap();
        let mut store = Store::open(&db).unwrap();
        let loaded = load_export(
            &mut store,
            &cfg,
            &file,
            false,
            RemovalGuard {
                max_share: 20,
                allow: true,
            },
            now(),
        )
        .unwrap();
        assert_eq!((loaded.imported, loaded.removed), (3500, 100));
        assert_eq!(loaded.encoding, Encoding::Utf16Le);
        drop(store);
        let (rows, audit) = dump(&db);
        assert_eq!(rows.len(), 3500);
        assert!(rows.iter().all(|r| r.contains("Second")));
        let new_rows = &audit[audit_before.len()..];
        assert_eq!(new_rows.len(), 101);
        let removed: Vec<&String> = new_rows[..100].iter().collect();
        for (i, r) in removed.iter().enumerate() {
            assert!(
                r.starts_with(&format!("MAILBOX_REMOVED|{}|", guid(i))),
                "{r}"
            );
        }
        assert!(
            new_rows[100].starts_with("IMPORT_MAILBOXES|")
                && new_rows[100].contains("\"records\":3500"),
            "{}",
            new_rows[100]
        );

        // A merge removes nothing.
        let file = dir.path().join("merge.json");
        std::fs::write(
            &file,
            serde_json::to_vec(&[record(9999, "Merged")]).unwrap(),
        )
        .unwrap();
        let mut store = Store::open(&db).unwrap();
        let loaded = load_export(&mut store, &cfg, &file, true, guard(), now()).unwrap();
        assert_eq!((loaded.imported, loaded.removed), (1, 0));
        assert_eq!(store.all_mailboxes().unwrap().len(), 3501);
    }
}
