//! SQL of the `audit_log` and `audit_anchor` tables.

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, Row, Transaction, params};

use super::{Store, StoreError, Tx};
use crate::audit::{self, Anchor, AuditEvent, AuditRow, GENESIS, Verifier};
use crate::time::stamp_micros;

const COLUMNS: &str =
    "id, timestamp, operation, identity, user, details, result, error_message, prev_hash, hash";

fn row_to_audit(r: &Row<'_>) -> rusqlite::Result<AuditRow> {
    Ok(AuditRow {
        id: r.get(0)?,
        timestamp: r.get(1)?,
        operation: r.get(2)?,
        identity: r.get(3)?,
        user: r.get(4)?,
        details: r.get(5)?,
        result: r.get(6)?,
        error_message: r.get(7)?,
        prev_hash: r.get(8)?,
        hash: r.get(9)?,
    })
}

/// The hash the next row chains to: the newest row's, else the prune anchor's, else
/// the genesis value.
fn head_hash(tx: &Transaction<'_>) -> rusqlite::Result<String> {
    let newest: Option<Option<String>> = tx
        .query_row(
            "SELECT hash FROM audit_log ORDER BY id DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(h) = newest {
        return Ok(h.unwrap_or_default());
    }
    Ok(anchor_in(tx)?.map_or_else(|| GENESIS.to_string(), |a| a.last_hash))
}

fn anchor_in(conn: &rusqlite::Connection) -> rusqlite::Result<Option<Anchor>> {
    conn.query_row(
        "SELECT last_id, last_hash FROM audit_anchor WHERE id = 1",
        [],
        |r| {
            Ok(Anchor {
                last_id: r.get(0)?,
                last_hash: r.get(1)?,
            })
        },
    )
    .optional()
}

/// Chains rows written before the hash chain existed (a database of the original tool),
/// in id order, during migration.
pub(super) fn seal_unhashed(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    let rows: Vec<AuditRow> = {
        let mut st = tx.prepare(&format!(
            "SELECT {COLUMNS} FROM audit_log WHERE hash IS NULL ORDER BY id"
        ))?;
        st.query_map([], row_to_audit)?
            .collect::<rusqlite::Result<_>>()?
    };
    let mut prev: String = tx
        .query_row(
            "SELECT hash FROM audit_log WHERE hash IS NOT NULL ORDER BY id DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or_else(|| GENESIS.to_string());
    let mut st = tx.prepare("UPDATE audit_log SET prev_hash = ?1, hash = ?2 WHERE id = ?3")?;
    for row in rows {
        let hash = row.expected_hash(&prev);
        st.execute(params![prev, hash, row.id])?;
        prev = hash;
    }
    Ok(())
}

/// Walks every row from the anchor, in id order, and checks the anchor at the end.
fn verify_in(conn: &rusqlite::Connection) -> Result<Verifier, StoreError> {
    let anchor = anchor_in(conn)?;
    let mut v = Verifier::new(anchor.as_ref());
    let mut st = conn.prepare(&format!("SELECT {COLUMNS} FROM audit_log ORDER BY id"))?;
    let mut rows = st.query([])?;
    while let Some(r) = rows.next()? {
        if !v.check(&row_to_audit(r)?) {
            break;
        }
    }
    v.finish(anchor.as_ref());
    Ok(v)
}

/// Filters of `audit list` and `audit export`.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub operation: Option<audit::Operation>,
    pub identity: Option<String>,
    pub limit: Option<usize>,
}

/// What a prune did.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PruneOutcome {
    pub pruned_rows: u64,
    pub anchor: Option<Anchor>,
}

impl Tx<'_> {
    /// Appends an audit row chained to the previous one; returns its id.
    pub fn audit(&mut self, event: &AuditEvent, now: DateTime<Utc>) -> Result<i64, StoreError> {
        let tx = &self.tx;
        // Within one transaction the write lock is held: after its first row, the next
        // row chains to the one this transaction wrote last (a removal of thousands of
        // mailboxes writes thousands of rows, and looked the head up for each).
        let (id, prev) = match self.last_audit.take() {
            Some((last, hash)) => (last + 1, hash),
            None => {
                let prev = head_hash(tx)?;
                // AUTOINCREMENT never reuses an id, so the next one is the sequence plus
                // one; the id is part of the hash, so it is chosen before the insert.
                let seq: i64 = tx
                    .query_row(
                        "SELECT seq FROM sqlite_sequence WHERE name = 'audit_log'",
                        [],
                        |r| r.get(0),
                    )
                    .optional()?
                    .unwrap_or(0);
                let max_id: i64 =
                    tx.query_row("SELECT coalesce(max(id), 0) FROM audit_log", [], |r| {
                        r.get(0)
                    })?;
                (seq.max(max_id) + 1, prev)
            }
        };
        let timestamp = stamp_micros(now);
        let details = event.details.to_string();
        let hash = audit::chain_hash(
            &prev,
            id,
            &timestamp,
            event.operation.as_str(),
            event.identity.as_deref(),
            Some(self.user),
            Some(&details),
            Some(event.outcome.as_str()),
            event.error_message.as_deref(),
        );
        tx.prepare_cached(
            "INSERT INTO audit_log (id, timestamp, operation, identity, user, details, result,
                                    error_message, prev_hash, hash)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?
        .execute(params![
            id,
            timestamp,
            event.operation.as_str(),
            event.identity,
            self.user,
            details,
            event.outcome.as_str(),
            event.error_message,
            prev,
            hash
        ])?;
        self.last_audit = Some((id, hash));
        Ok(id)
    }

    /// Deletes the oldest rows, those before `cutoff`, as one prefix of the chain (a row
    /// older than the cutoff that follows a newer one stays, so the rest still chains),
    /// and records the last deleted row as the anchor verification starts from.
    pub fn prune_audit(
        &mut self,
        cutoff: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<PruneOutcome, StoreError> {
        let tx = &self.tx;
        let cut = stamp_micros(cutoff);
        let first_kept: Option<i64> = tx.query_row(
            "SELECT min(id) FROM audit_log WHERE timestamp >= ?1",
            [&cut],
            |r| r.get(0),
        )?;
        let last_pruned: Option<(i64, Option<String>)> = tx
            .query_row(
                "SELECT id, hash FROM audit_log WHERE id < coalesce(?1, 9223372036854775807)
                 ORDER BY id DESC LIMIT 1",
                [first_kept],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((last_id, last_hash)) = last_pruned else {
            return Ok(PruneOutcome {
                pruned_rows: 0,
                anchor: anchor_in(tx)?,
            });
        };
        // Pruning must not launder tampering: the chain is verified before rows go.
        let v = verify_in(tx)?;
        if let Some(b) = v.first_break {
            return Err(StoreError::AuditBroken {
                id: b.id,
                reason: b.reason,
            });
        }
        let pruned = tx.execute("DELETE FROM audit_log WHERE id <= ?1", [last_id])? as u64;
        let anchor = Anchor {
            last_id,
            last_hash: last_hash.unwrap_or_default(),
        };
        tx.execute(
            "INSERT INTO audit_anchor (id, last_id, last_hash, pruned_rows, pruned_at)
             VALUES (1, ?1, ?2, ?3, ?4)
             ON CONFLICT(id) DO UPDATE SET last_id = excluded.last_id,
                 last_hash = excluded.last_hash,
                 pruned_rows = audit_anchor.pruned_rows + excluded.pruned_rows,
                 pruned_at = excluded.pruned_at",
            params![
                anchor.last_id,
                anchor.last_hash,
                pruned as i64,
                stamp_micros(now)
            ],
        )?;
        Ok(PruneOutcome {
            pruned_rows: pruned,
            anchor: Some(anchor),
        })
    }
}

impl Store {
    /// Prunes the rows before `cutoff` (see [`Tx::prune_audit`]) and records it with an
    /// AUDIT_PRUNE row, in one transaction; a failure is recorded with a failed
    /// AUDIT_PRUNE row after the rollback.
    pub fn prune_audit_logged(
        &mut self,
        cutoff: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<PruneOutcome, StoreError> {
        let details = serde_json::json!({"cutoff": stamp_micros(cutoff)});
        let result = self.write(|tx| {
            let outcome = tx.prune_audit(cutoff, now)?;
            let mut details = details.clone();
            details["pruned_rows"] = outcome.pruned_rows.into();
            details["anchor"] = serde_json::to_value(&outcome.anchor).expect("anchors serialize");
            tx.audit(
                &AuditEvent::new(audit::Operation::AuditPrune).details(details),
                now,
            )?;
            Ok::<_, StoreError>(outcome)
        });
        if let Err(e) = &result {
            self.audit(
                &AuditEvent::new(audit::Operation::AuditPrune)
                    .details(details)
                    .failed(e.to_string()),
                now,
            )?;
        }
        result
    }

    /// Audit rows matching `filter`, oldest first.
    pub fn audit_rows(&self, filter: &AuditFilter) -> Result<Vec<AuditRow>, StoreError> {
        let mut st = self.conn.prepare(&format!(
            "SELECT {COLUMNS} FROM audit_log
             WHERE (?1 IS NULL OR timestamp >= ?1)
               AND (?2 IS NULL OR timestamp <= ?2)
               AND (?3 IS NULL OR operation = ?3)
               AND (?4 IS NULL OR identity = ?4 COLLATE NOCASE)
             ORDER BY id
             LIMIT ?5"
        ))?;
        let rows = st
            .query_map(
                params![
                    filter.since.map(stamp_micros),
                    filter.until.map(stamp_micros),
                    filter.operation.map(|o| o.as_str()),
                    filter.identity,
                    filter.limit.map_or(-1, |l| l as i64),
                ],
                row_to_audit,
            )?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Verifies the whole chain from one consistent snapshot (a prune running meanwhile
    /// cannot make it look broken).
    pub fn verify_audit(&self) -> Result<Verifier, StoreError> {
        let tx = self.conn.unchecked_transaction()?;
        let v = verify_in(&tx)?;
        tx.commit()?;
        Ok(v)
    }
}

#[cfg(test)]
mod tests;
