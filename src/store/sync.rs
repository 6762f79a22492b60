//! SQL of the live sync: the staging table a listing is written to page by page, the
//! snapshot that replaces the cache with a complete listing in one transaction and
//! records what changed, the statistics due and fetched, and each sync's record.
//!
//! The staging table is a `TEMP` table of the connection: it lives in SQLite's temporary
//! file, not in the database, so a listing of any size costs the process a page of
//! mailboxes at a time, and a listing cut short (a failure, a kill) leaves nothing behind.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};
use serde::Serialize;
use serde_json::{Value, json};

use super::mailboxes::{RowText, UPSERT_COLUMN_NAMES, UPSERT_COLUMNS};
use super::raw::{Param, RawStatement};
use super::{Store, StoreError, Tx};
use crate::audit::{AuditEvent, Operation};
use crate::inventory::{HoldType, InactiveMailbox};
use crate::time::{push_stamp_millis, stamp_millis};

/// What changed about a mailbox between two syncs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// Newly listed as inactive.
    Added,
    /// No longer listed: recovered, restored, or purged after its last hold went.
    Removed,
    HoldsAdded,
    HoldsRemoved,
    EligibilityChanged,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Added => "added",
            ChangeKind::Removed => "removed",
            ChangeKind::HoldsAdded => "holds_added",
            ChangeKind::HoldsRemoved => "holds_removed",
            ChangeKind::EligibilityChanged => "eligibility_changed",
        }
    }

    fn parse(s: &str) -> Option<ChangeKind> {
        [
            ChangeKind::Added,
            ChangeKind::Removed,
            ChangeKind::HoldsAdded,
            ChangeKind::HoldsRemoved,
            ChangeKind::EligibilityChanged,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// One row of the change history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MailboxChange {
    pub id: i64,
    pub sync_id: i64,
    pub at: String,
    pub identity: String,
    pub change: ChangeKind,
    pub display_name: Option<String>,
    pub primary_smtp: Option<String>,
    pub details: Value,
}

/// A mailbox listed by a sync, with when Exchange last changed it.
pub struct Staged<'a> {
    pub mailbox: &'a InactiveMailbox,
    pub when_changed: Option<DateTime<Utc>>,
}

/// What a snapshot did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Snapshot {
    /// The sync's id in the `syncs` table (its change rows carry it).
    pub sync_id: i64,
    /// Mailboxes in the listing.
    pub listed: u64,
    pub added: u64,
    pub removed: u64,
    /// Mailboxes whose holds or recovery eligibility changed.
    pub changed: u64,
    /// Mailboxes whose last hold went in this sync (Exchange purges them after the
    /// retention period): identity, display name, address.
    pub holds_released: Vec<(String, Option<String>, Option<String>)>,
}

/// Statistics fetched for one mailbox.
#[derive(Debug, Clone, PartialEq)]
pub struct StatisticsResult {
    pub identity: String,
    pub size_bytes: Option<u64>,
    pub item_count: Option<u64>,
}

/// How many mailboxes need statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StatisticsDue {
    /// Never fetched: size and item count are unknown.
    pub unknown: u64,
    /// Fetched, but the mailbox changed since or the figures are older than the limit.
    pub stale: u64,
    /// Mailboxes whose size is unknown: never fetched, or set aside after a failed or
    /// empty statistics call.
    pub size_unknown: u64,
}

impl StatisticsDue {
    pub fn total(&self) -> u64 {
        self.unknown + self.stale
    }
}

/// A sync's record as written.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncRun<'a> {
    pub source: &'a str,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub ok: bool,
    pub figures: &'a Value,
    pub error: Option<&'a str>,
}

/// A sync's record as read back.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SyncRunRow {
    pub id: i64,
    pub source: String,
    pub started_at: String,
    pub finished_at: String,
    pub ok: bool,
    pub figures: Value,
    pub error: Option<String>,
}

/// A change found by a snapshot: kind, identity, display name, address, details.
type Change = (ChangeKind, String, Option<String>, Option<String>, Value);

/// Mailboxes whose changes a snapshot reads and writes at a time.
const CHANGE_CHUNK: usize = 2_000;

/// One chunk of changes, and the identity to continue after.
#[derive(Default)]
struct Chunk {
    changes: Vec<Change>,
    last_identity: Option<String>,
}

fn holds_of(text: Option<&str>) -> BTreeSet<String> {
    text.and_then(|t| serde_json::from_str::<Vec<String>>(t).ok())
        .unwrap_or_default()
        .into_iter()
        .map(|h| {
            HoldType::parse(&h)
                .map(|h| h.as_str().to_string())
                .unwrap_or(h)
        })
        .collect()
}

/// The InPlaceHolds entries that are holds (not `-mbx` exclusions), from stored JSON.
fn hold_entries(text: Option<&str>) -> BTreeSet<String> {
    text.and_then(|t| serde_json::from_str::<Vec<String>>(t).ok())
        .unwrap_or_default()
        .into_iter()
        .filter(|e| crate::inventory::classify_in_place_hold(e).is_some())
        .collect()
}

impl Store {
    /// Sets the connection up for a sync: temporary tables in a file (the listing is
    /// staged there, not in memory), an 8 MiB page cache and no memory-mapped reads, so
    /// the process holds a page of mailboxes and the cache, not the tenant. Changing
    /// `temp_store` drops temporary tables, so this comes before the staging table.
    pub fn begin_bulk(&mut self) -> Result<(), StoreError> {
        self.conn.execute_batch(
            "PRAGMA temp_store = FILE;
             PRAGMA cache_size = -8192;
             PRAGMA mmap_size = 0;",
        )?;
        Ok(())
    }

    /// Ends [`Store::begin_bulk`]: drops the staging table, restores the settings queries
    /// run with and hands SQLite's cached pages back.
    pub fn end_bulk(&mut self) -> Result<(), StoreError> {
        self.conn.execute_batch(&format!(
            "DROP TABLE IF EXISTS temp.sync_stage;
             {}
             PRAGMA shrink_memory;",
            self.settings
        ))?;
        Ok(())
    }

    /// Starts a listing: creates the staging table, or empties one left by a listing that
    /// was restarted.
    pub fn stage_reset(&mut self) -> Result<(), StoreError> {
        let cols: Vec<String> = UPSERT_COLUMN_NAMES
            .iter()
            .map(|c| {
                if *c == "identity" {
                    "identity TEXT PRIMARY KEY".to_string()
                } else {
                    c.to_string()
                }
            })
            .collect();
        self.conn.execute_batch(&format!(
            "CREATE TEMP TABLE IF NOT EXISTS sync_stage ({}, when_changed TEXT);
             DELETE FROM temp.sync_stage;",
            cols.join(", ")
        ))?;
        Ok(())
    }

    /// Adds one page of a listing to the staging table; a mailbox listed twice keeps its
    /// last listing. Only the temporary database is written: the cache is not locked.
    pub fn stage_page(&mut self, page: &[Staged<'_>]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        {
            let sql = format!(
                "INSERT OR REPLACE INTO temp.sync_stage ({}, when_changed) VALUES ({}?)",
                UPSERT_COLUMN_NAMES.join(", "),
                "?,".repeat(UPSERT_COLUMNS)
            );
            let mut st = RawStatement::prepare(&tx, &sql)?;
            let mut text = RowText::default();
            let mut changed = String::with_capacity(24);
            for s in page {
                text.fill(s.mailbox);
                changed.clear();
                if let Some(t) = s.when_changed {
                    push_stamp_millis(&mut changed, t);
                }
                let mut params: Vec<Param<'_>> = text.params(s.mailbox).to_vec();
                params.push(if s.when_changed.is_some() {
                    Param::Text(&changed)
                } else {
                    Param::Null
                });
                st.execute(&params)?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Mailboxes in the staging table.
    pub fn stage_count(&self) -> Result<u64, StoreError> {
        let n: i64 = self
            .conn
            .query_row("SELECT count(*) FROM temp.sync_stage", [], |r| r.get(0))?;
        Ok(n as u64)
    }

    /// Drops the staging table and gives its pages back.
    pub fn stage_drop(&mut self) -> Result<(), StoreError> {
        self.conn
            .execute_batch("DROP TABLE IF EXISTS temp.sync_stage")?;
        Ok(())
    }

    /// How many mailboxes need statistics: never fetched, changed since, or fetched
    /// before `cutoff`.
    pub fn statistics_due_count(&self, cutoff: DateTime<Utc>) -> Result<StatisticsDue, StoreError> {
        // Four counts that each read an index range (status runs this), where one pass of
        // sums would read the whole table.
        let count = |sql: &str, cutoff: Option<&str>| -> Result<u64, StoreError> {
            let n: i64 = self
                .conn
                .prepare_cached(sql)?
                .query_row(rusqlite::params_from_iter(cutoff), |r| r.get(0))?;
            Ok(n as u64)
        };
        let cutoff = stamp_millis(cutoff);
        let unknown = count(
            "SELECT count(*) FROM inactive_mailboxes WHERE stats_at IS NULL",
            None,
        )?;
        let stale = count(
            "SELECT count(*) FROM inactive_mailboxes WHERE stats_at < ?1",
            Some(&cutoff),
        )? + count(
            "SELECT count(*) FROM inactive_mailboxes WHERE stats_stale = 1 AND stats_at >= ?1",
            Some(&cutoff),
        )?;
        let size_unknown = count(
            "SELECT count(*) FROM inactive_mailboxes WHERE size_bytes IS NULL",
            None,
        )?;
        Ok(StatisticsDue {
            unknown,
            stale,
            size_unknown,
        })
    }

    /// Up to `limit` mailboxes needing statistics: never fetched first, then changed,
    /// then the oldest.
    pub fn statistics_due(
        &self,
        cutoff: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT identity FROM inactive_mailboxes
             WHERE stats_at IS NULL OR stats_stale = 1 OR stats_at < ?1
             ORDER BY stats_at IS NOT NULL, stats_stale DESC, stats_at, identity
             LIMIT ?2",
        )?;
        let ids = st
            .query_map(params![stamp_millis(cutoff), limit as i64], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        Ok(ids)
    }

    /// The change history since `since` (all when `None`), oldest first, at most
    /// `limit` rows (the newest ones).
    pub fn mailbox_changes(
        &self,
        since: Option<DateTime<Utc>>,
        limit: usize,
    ) -> Result<Vec<MailboxChange>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT id, sync_id, at, identity, change, display_name, primary_smtp, details
             FROM (SELECT * FROM mailbox_changes WHERE ?1 IS NULL OR at >= ?1
                   ORDER BY id DESC LIMIT ?2)
             ORDER BY id",
        )?;
        let rows = st
            .query_map(params![since.map(stamp_millis), limit as i64], |r| {
                let change: String = r.get(4)?;
                let details: String = r.get(7)?;
                Ok(MailboxChange {
                    id: r.get(0)?,
                    sync_id: r.get(1)?,
                    at: r.get(2)?,
                    identity: r.get(3)?,
                    change: ChangeKind::parse(&change).unwrap_or(ChangeKind::EligibilityChanged),
                    display_name: r.get(5)?,
                    primary_smtp: r.get(6)?,
                    details: serde_json::from_str(&details).unwrap_or(Value::Null),
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// The newest sync's record, and the newest successful one's.
    pub fn last_syncs(&self) -> Result<(Option<SyncRunRow>, Option<SyncRunRow>), StoreError> {
        let read = |sql: &str| -> Result<Option<SyncRunRow>, StoreError> {
            Ok(self
                .conn
                .query_row(sql, [], |r| {
                    let figures: String = r.get(5)?;
                    Ok(SyncRunRow {
                        id: r.get(0)?,
                        source: r.get(1)?,
                        started_at: r.get(2)?,
                        finished_at: r.get(3)?,
                        ok: r.get(4)?,
                        figures: serde_json::from_str(&figures).unwrap_or(Value::Null),
                        error: r.get(6)?,
                    })
                })
                .optional()?)
        };
        const COLS: &str =
            "SELECT id, source, started_at, finished_at, ok, figures, error FROM syncs";
        Ok((
            read(&format!("{COLS} ORDER BY id DESC LIMIT 1"))?,
            read(&format!("{COLS} WHERE ok = 1 ORDER BY id DESC LIMIT 1"))?,
        ))
    }
}

impl Tx<'_> {
    /// Records a sync; returns its id.
    pub fn record_sync(&mut self, run: &SyncRun<'_>) -> Result<i64, StoreError> {
        self.tx.execute(
            "INSERT INTO syncs (source, started_at, finished_at, ok, figures, error)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                run.source,
                stamp_millis(run.started_at),
                stamp_millis(run.finished_at),
                run.ok,
                run.figures.to_string(),
                run.error
            ],
        )?;
        Ok(self.tx.last_insert_rowid())
    }

    /// Updates a sync's record (its statistics phase finished).
    pub fn update_sync(&mut self, id: i64, run: &SyncRun<'_>) -> Result<(), StoreError> {
        self.tx.execute(
            "UPDATE syncs SET finished_at = ?2, ok = ?3, figures = ?4, error = ?5 WHERE id = ?1",
            params![
                id,
                stamp_millis(run.finished_at),
                run.ok,
                run.figures.to_string(),
                run.error
            ],
        )?;
        Ok(())
    }

    /// Makes the cache the staged listing: mailboxes it lacks are removed, new ones added,
    /// the rest updated except for their statistics (a changed `when_changed` marks them
    /// due); every change goes to the change history and the audit log, tagged with
    /// `sync_id` (a row of [`Tx::record_sync`] in this transaction). Changes are found and
    /// written `CHANGE_CHUNK` mailboxes at a time, so a first sync of a large tenant
    /// never holds all its changes in memory.
    /// How many cached mailboxes the staged listing lacks, and how many are cached: what
    /// [`Tx::apply_snapshot`] would remove, for the removal guard.
    pub fn stage_absent_count(&mut self) -> Result<(u64, u64), StoreError> {
        let (absent, cached): (i64, i64) = self.tx.query_row(
            "SELECT count(*) FILTER (WHERE NOT EXISTS
                        (SELECT 1 FROM temp.sync_stage s WHERE s.identity = m.identity)),
                    count(*)
             FROM inactive_mailboxes m",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok((absent.max(0) as u64, cached.max(0) as u64))
    }

    pub fn apply_snapshot(
        &mut self,
        sync_id: i64,
        now: DateTime<Utc>,
    ) -> Result<Snapshot, StoreError> {
        let at = stamp_millis(now);
        let mut out = Snapshot {
            sync_id,
            listed: self
                .tx
                .query_row("SELECT count(*) FROM temp.sync_stage", [], |r| {
                    r.get::<_, i64>(0)
                })? as u64,
            ..Snapshot::default()
        };
        let mut after = String::new();
        loop {
            let chunk = self.chunk(
                "SELECT s.identity, s.display_name, s.primary_smtp, s.hold_types,
                        s.recovery_eligible
                 FROM temp.sync_stage s
                 WHERE s.identity > ?1
                   AND NOT EXISTS (SELECT 1 FROM inactive_mailboxes m WHERE m.identity = s.identity)
                 ORDER BY s.identity LIMIT ?2",
                &after,
                |r, changes| {
                    let holds = holds_of(r.get::<_, Option<String>>(3)?.as_deref());
                    let eligible: Option<bool> = r.get(4)?;
                    changes.push((
                        ChangeKind::Added,
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        json!({"holds": holds, "recovery_eligible": eligible}),
                    ));
                    Ok(())
                },
            )?;
            let Some(last) = chunk.last_identity else {
                break;
            };
            out.added += chunk.changes.len() as u64;
            self.record_changes(&chunk.changes, sync_id, &at, now)?;
            after = last;
        }
        after.clear();
        loop {
            let chunk = self.chunk(
                "SELECT m.identity, m.display_name, m.primary_smtp, m.hold_types
                 FROM inactive_mailboxes m
                 WHERE m.identity > ?1
                   AND NOT EXISTS (SELECT 1 FROM temp.sync_stage s WHERE s.identity = m.identity)
                 ORDER BY m.identity LIMIT ?2",
                &after,
                |r, changes| {
                    let holds = holds_of(r.get::<_, Option<String>>(3)?.as_deref());
                    changes.push((
                        ChangeKind::Removed,
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        json!({
                            "holds": holds,
                            "reason": "no longer listed as inactive: recovered, restored, or purged",
                        }),
                    ));
                    Ok(())
                },
            )?;
            let Some(last) = chunk.last_identity else {
                break;
            };
            out.removed += chunk.changes.len() as u64;
            self.record_changes(&chunk.changes, sync_id, &at, now)?;
            after = last;
        }
        after.clear();
        loop {
            let mut changed = 0u64;
            let mut released = Vec::new();
            let chunk = self.chunk(
                "SELECT s.identity, s.display_name, s.primary_smtp, m.hold_types, s.hold_types,
                        m.recovery_eligible, s.recovery_eligible, s.recovery_blockers,
                        m.in_place_holds, s.in_place_holds
                 FROM temp.sync_stage s JOIN inactive_mailboxes m ON m.identity = s.identity
                 WHERE s.identity > ?1
                   AND (m.hold_types IS NOT s.hold_types
                        OR m.in_place_holds IS NOT s.in_place_holds
                        OR m.recovery_eligible IS NOT s.recovery_eligible)
                 ORDER BY s.identity LIMIT ?2",
                &after,
                |r, changes| {
                    let identity: String = r.get(0)?;
                    let name: Option<String> = r.get(1)?;
                    let smtp: Option<String> = r.get(2)?;
                    let before = holds_of(r.get::<_, Option<String>>(3)?.as_deref());
                    let now_held = holds_of(r.get::<_, Option<String>>(4)?.as_deref());
                    let (was, is): (Option<bool>, Option<bool>) = (r.get(5)?, r.get(6)?);
                    let n = changes.len();
                    let added: Vec<&String> = now_held.difference(&before).collect();
                    let removed: Vec<&String> = before.difference(&now_held).collect();
                    // Holds of a kind the mailbox already had (a second eDiscovery case,
                    // one retention policy for another) change the entries, not the kinds.
                    let entries_before = hold_entries(r.get::<_, Option<String>>(8)?.as_deref());
                    let entries_after = hold_entries(r.get::<_, Option<String>>(9)?.as_deref());
                    let added_entries: Vec<&String> =
                        entries_after.difference(&entries_before).collect();
                    let removed_entries: Vec<&String> =
                        entries_before.difference(&entries_after).collect();
                    if !added.is_empty() || !added_entries.is_empty() {
                        changes.push((
                            ChangeKind::HoldsAdded,
                            identity.clone(),
                            name.clone(),
                            smtp.clone(),
                            json!({"added": added, "added_holds": added_entries, "holds": now_held}),
                        ));
                    }
                    if !removed.is_empty() || !removed_entries.is_empty() {
                        let last = now_held.is_empty();
                        if last {
                            released.push((identity.clone(), name.clone(), smtp.clone()));
                        }
                        changes.push((
                            ChangeKind::HoldsRemoved,
                            identity.clone(),
                            name.clone(),
                            smtp.clone(),
                            json!({
                                "removed": removed,
                                "removed_holds": removed_entries,
                                "holds": now_held,
                                "last_hold_released": last,
                            }),
                        ));
                    }
                    if was != is {
                        let blockers: Value = r
                            .get::<_, Option<String>>(7)?
                            .as_deref()
                            .and_then(|t| serde_json::from_str(t).ok())
                            .unwrap_or(Value::Null);
                        changes.push((
                            ChangeKind::EligibilityChanged,
                            identity.clone(),
                            name.clone(),
                            smtp.clone(),
                            json!({"from": was, "to": is, "blockers": blockers}),
                        ));
                    }
                    if changes.len() > n {
                        changed += 1;
                    }
                    Ok(())
                },
            )?;
            let Some(last) = chunk.last_identity else {
                break;
            };
            out.changed += changed;
            out.holds_released.extend(released);
            self.record_changes(&chunk.changes, sync_id, &at, now)?;
            after = last;
        }
        // Kept `stats` tallies follow a few changes row by row; for a quarter of the table
        // or more (a first sync), counting again at the next `stats` costs less.
        let cached_before = (out.listed + out.removed).saturating_sub(out.added);
        if (out.added + out.removed + out.changed) * 4 > cached_before {
            super::set_kept_tallies_aside(&self.tx)?;
        }
        if out.removed > 0 {
            self.tx.execute(
                "DELETE FROM inactive_mailboxes WHERE NOT EXISTS
                 (SELECT 1 FROM temp.sync_stage s WHERE s.identity = inactive_mailboxes.identity)",
                [],
            )?;
        }
        // Statistics are the statistics phase's; the clock's figures (age, last update)
        // alone do not make a row changed, so an unchanged listing rewrites nothing.
        let keep = ["size_mb", "size_bytes", "item_count"];
        let clock = ["age_days", "last_updated", "search_key"];
        let updates: Vec<String> = UPSERT_COLUMN_NAMES
            .iter()
            .filter(|c| **c != "identity" && !keep.contains(c))
            .map(|c| format!("{c} = excluded.{c}"))
            .collect();
        let differs: Vec<String> = UPSERT_COLUMN_NAMES
            .iter()
            .chain(["when_changed"].iter())
            .filter(|c| **c != "identity" && !keep.contains(c) && !clock.contains(c))
            .map(|c| format!("inactive_mailboxes.{c} IS NOT excluded.{c}"))
            .collect();
        self.tx.execute(
            &format!(
                "INSERT INTO inactive_mailboxes ({cols}, when_changed)
                 SELECT {cols}, when_changed FROM temp.sync_stage WHERE true
                 ON CONFLICT(identity) DO UPDATE SET {updates},
                     stats_stale = inactive_mailboxes.stats_stale
                         OR (inactive_mailboxes.stats_at IS NOT NULL
                             AND inactive_mailboxes.when_changed IS NOT excluded.when_changed),
                     when_changed = excluded.when_changed
                 WHERE {differs}",
                cols = UPSERT_COLUMN_NAMES.join(", "),
                updates = updates.join(", "),
                differs = differs.join(" OR ")
            ),
            [],
        )?;
        Ok(out)
    }

    /// Up to [`CHANGE_CHUNK`] rows of `sql` (which takes the identity to continue after
    /// and a limit), each read into changes by `read`; the last identity read, if any.
    fn chunk(
        &mut self,
        sql: &str,
        after: &str,
        mut read: impl FnMut(&rusqlite::Row<'_>, &mut Vec<Change>) -> rusqlite::Result<()>,
    ) -> Result<Chunk, StoreError> {
        let mut st = self.tx.prepare_cached(sql)?;
        let mut rows = st.query(params![after, CHANGE_CHUNK as i64])?;
        let mut chunk = Chunk::default();
        while let Some(r) = rows.next()? {
            read(r, &mut chunk.changes)?;
            chunk.last_identity = Some(r.get(0)?);
        }
        Ok(chunk)
    }

    /// Writes changes to the history and the audit log.
    fn record_changes(
        &mut self,
        changes: &[Change],
        sync_id: i64,
        at: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        {
            let mut insert = self.tx.prepare_cached(
                "INSERT INTO mailbox_changes
                 (sync_id, at, identity, change, display_name, primary_smtp, details)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for (kind, identity, name, smtp, details) in changes {
                insert.execute(params![
                    sync_id,
                    at,
                    identity,
                    kind.as_str(),
                    name,
                    smtp,
                    details.to_string()
                ])?;
            }
        }
        for (kind, identity, name, smtp, details) in changes {
            let operation = match kind {
                ChangeKind::Added => Operation::MailboxAdded,
                ChangeKind::Removed => Operation::MailboxRemoved,
                _ => Operation::MailboxChanged,
            };
            let mut d = json!({"sync_id": sync_id, "change": kind.as_str()});
            if let (Value::Object(map), Value::Object(extra)) = (&mut d, details) {
                map.extend(extra.clone());
                map.insert("display_name".into(), name.clone().into());
                map.insert("primary_smtp".into(), smtp.clone().into());
            }
            self.audit(
                &AuditEvent::new(operation)
                    .identity(identity.clone())
                    .details(d),
                now,
            )?;
        }
        Ok(())
    }

    /// Stores fetched statistics; they are current as of `now`.
    pub fn store_statistics(
        &mut self,
        results: &[StatisticsResult],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let at = stamp_millis(now);
        let mut st = self.tx.prepare_cached(
            "UPDATE inactive_mailboxes
             SET size_bytes = ?2, size_mb = ?3, item_count = ?4, stats_at = ?5, stats_stale = 0
             WHERE identity = ?1",
        )?;
        for r in results {
            st.execute(params![
                r.identity,
                r.size_bytes.map(|b| b as i64),
                r.size_bytes.map(crate::inventory::bytes_to_mb),
                r.item_count.map(|c| c as i64),
                at
            ])?;
        }
        Ok(())
    }

    /// Sets a mailbox's statistics aside until they are due again by age (Exchange no
    /// longer knows the mailbox, or its call failed for it alone), keeping any figures it
    /// had.
    pub fn mark_statistics_missing(
        &mut self,
        identity: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.tx.execute(
            "UPDATE inactive_mailboxes SET stats_at = ?2, stats_stale = 0 WHERE identity = ?1",
            params![identity, stamp_millis(now)],
        )?;
        Ok(())
    }
}
