//! SQL of the import of an export (`mailboxes import`, the export sync): the staging
//! table an export is streamed into, and the snapshot that makes it the cache.
//!
//! The staging table is a `TEMP` table of the connection, in SQLite's temporary file as
//! the live sync's is ([`Store::begin_bulk`]): the export costs the process a batch of
//! mailboxes at a time, not the file, and staging locks nothing (the cache is only
//! written by the one transaction that applies the export). The rows are staged
//! rendered as the cache stores them, without an index, in file order; applying them
//! is one `INSERT … SELECT … ORDER BY identity`, whose sort SQLite does in bounded
//! memory, spilling to its temporary file. The secondary indexes are dropped and
//! rebuilt around a load that is large next to the cache, as
//! [`Tx::upsert_mailboxes`] does.
//!
//! Which cached mailboxes a snapshot lacks is found by walking the cache's identities in
//! order beside the export's sorted GUIDs ([`crate::import::Summary::identities`]), so
//! neither side is held as a set of strings.

use chrono::{DateTime, Utc};

use super::mailboxes::{BULK_ROWS, UPSERT_COLUMN_NAMES, UPSERT_COLUMNS, guid_key, write_rows};
use super::{Store, StoreError, Tx};
use crate::audit::{AuditEvent, Operation};
use crate::inventory::InactiveMailbox;

/// Rows per staging statement.
const STAGE_CHUNK: usize = 64;

/// Cached identities read and removed at a time.
const REMOVE_CHUNK: usize = 2_000;

impl Store {
    /// Starts an import: the bounded-memory settings of [`Store::begin_bulk`] and an
    /// empty staging table.
    pub fn import_begin(&mut self) -> Result<(), StoreError> {
        self.begin_bulk()?;
        self.import_reset()
    }

    /// Empties the staging table (creating it when missing).
    fn import_reset(&mut self) -> Result<(), StoreError> {
        self.conn.execute_batch(&format!(
            "CREATE TEMP TABLE IF NOT EXISTS import_stage ({});
             DELETE FROM temp.import_stage;",
            UPSERT_COLUMN_NAMES.join(", ")
        ))?;
        Ok(())
    }

    /// Adds mailboxes to the staging table, in one transaction of the temporary database
    /// (the cache is not locked).
    pub fn import_stage(&mut self, batch: &[InactiveMailbox]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        {
            let insert = |rows: usize| {
                let row = format!("({})", vec!["?"; UPSERT_COLUMNS].join(","));
                format!(
                    "INSERT INTO temp.import_stage ({}) VALUES {}",
                    UPSERT_COLUMN_NAMES.join(", "),
                    vec![row.as_str(); rows].join(",")
                )
            };
            let chunked = insert(STAGE_CHUNK);
            write_rows(&tx, Some((&chunked, STAGE_CHUNK)), &insert(1), batch)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Ends an import, applied or not: drops the staging table and ends
    /// [`Store::begin_bulk`].
    pub fn import_end(&mut self) -> Result<(), StoreError> {
        self.conn
            .execute_batch("DROP TABLE IF EXISTS temp.import_stage")?;
        self.end_bulk()
    }
}

/// Walks cached identities in order beside a snapshot's sorted GUIDs.
struct Beside<'s> {
    snapshot: &'s [u128],
    at: usize,
}

impl Beside<'_> {
    /// Whether the snapshot lacks `identity`; identities come in increasing order. Only
    /// canonical GUIDs (what an import stores) can be in it; they order as their values.
    fn absent(&mut self, identity: &str) -> bool {
        let Some(key) = guid_key(identity) else {
            return true;
        };
        while self.snapshot.get(self.at).is_some_and(|s| *s < key) {
            self.at += 1;
        }
        self.snapshot.get(self.at) != Some(&key)
    }
}

impl Tx<'_> {
    /// How many cached mailboxes the snapshot (sorted GUIDs) lacks, and how many are
    /// cached.
    pub fn import_absent_count(&mut self, snapshot: &[u128]) -> Result<(u64, u64), StoreError> {
        let mut st = self
            .tx
            .prepare("SELECT identity FROM inactive_mailboxes ORDER BY identity")?;
        let mut rows = st.query([])?;
        let mut beside = Beside { snapshot, at: 0 };
        let (mut absent, mut cached) = (0u64, 0u64);
        while let Some(r) = rows.next()? {
            cached += 1;
            let id = r.get_ref(0)?.as_str().map_err(rusqlite::Error::from)?;
            if beside.absent(id) {
                absent += 1;
            }
        }
        Ok((absent, cached))
    }

    /// Removes every cached mailbox the snapshot (sorted GUIDs) lacks, each with a
    /// MAILBOX_REMOVED audit row carrying `details`, in the order of their identities;
    /// returns how many.
    pub fn import_remove_absent(
        &mut self,
        snapshot: &[u128],
        details: &serde_json::Value,
        now: DateTime<Utc>,
    ) -> Result<usize, StoreError> {
        let mut beside = Beside { snapshot, at: 0 };
        let mut after = String::new();
        let mut removed = 0;
        loop {
            let mut gone = Vec::new();
            let mut last = None;
            {
                let mut st = self.tx.prepare_cached(
                    "SELECT identity FROM inactive_mailboxes WHERE identity > ?1
                     ORDER BY identity LIMIT ?2",
                )?;
                let mut rows = st.query(rusqlite::params![after, REMOVE_CHUNK as i64])?;
                while let Some(r) = rows.next()? {
                    let id: String = r.get(0)?;
                    if beside.absent(&id) {
                        gone.push(id.clone());
                    }
                    last = Some(id);
                }
            }
            let Some(last) = last else {
                break;
            };
            for id in gone {
                self.delete_mailbox(&id)?;
                self.audit(
                    &AuditEvent::new(Operation::MailboxRemoved)
                        .identity(id)
                        .details(details.clone()),
                    now,
                )?;
                removed += 1;
            }
            after = last;
        }
        Ok(removed)
    }

    /// Writes the staged mailboxes (`staged` of them) into the cache, replacing the
    /// cached rows of the same identities; returns how many. A load that is large next
    /// to the cache drops the secondary indexes and rebuilds them after (a sort instead
    /// of a seek per row), as [`Tx::upsert_mailboxes`] does; rows go in in identity
    /// order either way, so the primary key index is appended to.
    pub fn import_apply(&mut self, staged: usize) -> Result<usize, StoreError> {
        self.import_apply_with(staged, BULK_ROWS)
    }

    pub(super) fn import_apply_with(
        &mut self,
        staged: usize,
        bulk_rows: usize,
    ) -> Result<usize, StoreError> {
        let bulk = staged >= bulk_rows && {
            let cached: i64 =
                self.tx
                    .query_row("SELECT count(*) FROM inactive_mailboxes", [], |r| r.get(0))?;
            staged as i64 >= cached / 2
        };
        if bulk {
            super::drop_mailbox_derived(&self.tx)?;
        }
        let updates: Vec<String> = UPSERT_COLUMN_NAMES
            .iter()
            .filter(|c| **c != "identity")
            .map(|c| format!("{c} = excluded.{c}"))
            .collect();
        let written = self.tx.execute(
            &format!(
                "INSERT INTO inactive_mailboxes ({cols})
                 SELECT {cols} FROM temp.import_stage WHERE true ORDER BY identity
                 ON CONFLICT(identity) DO UPDATE SET {updates}",
                cols = UPSERT_COLUMN_NAMES.join(", "),
                updates = updates.join(", ")
            ),
            [],
        )?;
        debug_assert_eq!(written, staged);
        if bulk {
            super::build_mailbox_derived(&self.tx)?;
        }
        Ok(staged)
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde_json::json;

    use super::*;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap()
    }

    fn mailbox(i: u32, name: &str) -> InactiveMailbox {
        let rec = json!({
            "ExchangeGuid": format!("{i:08x}-0000-4000-8000-000000000000"),
            "DisplayName": name,
            "PrimarySmtpAddress": format!("user{i}@contoso.com"),
            "WhenSoftDeleted": "2024-01-01T00:00:00Z",
            "InPlaceHolds": ["UniH1", format!("mbx{i}:1")],
            "LitigationHoldEnabled": i.is_multiple_of(2),
        });
        let cfg = crate::config::InventoryConfig::default();
        let raw = crate::inventory::ExoMailbox::from_fields(&cfg, |k| rec.get(k)).unwrap();
        InactiveMailbox::build(raw, &cfg, now())
    }

    fn key(m: &InactiveMailbox) -> u128 {
        guid_key(&m.identity).unwrap()
    }

    /// Every row of the cache as text, and the audit log's operations and identities.
    fn contents(store: &Store) -> (Vec<String>, Vec<(String, Option<String>)>) {
        let rows = store
            .conn
            .prepare("SELECT * FROM inactive_mailboxes ORDER BY identity")
            .unwrap()
            .query_map([], |r| {
                let n = r.as_ref().column_count();
                let cells: Vec<String> = (0..n)
                    .map(|i| format!("{:?}", r.get_ref(i).unwrap()))
                    .collect();
                Ok(cells.join("|"))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let audit = store
            .conn
            .prepare("SELECT operation, identity FROM audit_log ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        (rows, audit)
    }

    /// A snapshot the way imports wrote it before they were staged, and the staged way;
    /// both databases must end the same.
    fn both_ways(cached: &[InactiveMailbox], snapshot: &[InactiveMailbox], bulk_rows: usize) {
        let dir = tempfile::tempdir().unwrap();
        let mut old = Store::open(&dir.path().join("old.db")).unwrap();
        let mut new = Store::open(&dir.path().join("new.db")).unwrap();
        let details = json!({"reason": "test"});
        for store in [&mut old, &mut new] {
            store.write(|tx| tx.upsert_mailboxes(cached)).unwrap();
            // A row no import writes: never a canonical GUID, always absent.
            store
                .conn
                .execute(
                    "INSERT INTO inactive_mailboxes (identity) VALUES ('LEGACY-identity')",
                    [],
                )
                .unwrap();
        }
        old.write(|tx| {
            tx.remove_absent_mailboxes(snapshot, &details, now())?;
            tx.upsert_mailboxes(snapshot)
        })
        .unwrap();
        new.import_begin().unwrap();
        for batch in snapshot.chunks(150) {
            new.import_stage(batch).unwrap();
        }
        let mut ids: Vec<u128> = snapshot.iter().map(key).collect();
        ids.sort_unstable();
        let n = new
            .write(|tx| {
                let (absent, total) = tx.import_absent_count(&ids)?;
                let removed = tx.import_remove_absent(&ids, &details, now())?;
                assert_eq!((absent, total), (removed as u64, cached.len() as u64 + 1));
                tx.import_apply_with(snapshot.len(), bulk_rows)
            })
            .unwrap();
        new.import_end().unwrap();
        assert_eq!(n, snapshot.len());
        assert_eq!(contents(&new), contents(&old));
        let temp: i64 = new
            .conn
            .query_row(
                "SELECT count(*) FROM temp.sqlite_master WHERE name = 'import_stage'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(temp, 0, "the staging table is dropped");
        // Every index and search trigger is back, and the search index agrees with the
        // rows (rank 1: compared with them) and finds what the old way's does.
        let derived = |store: &Store| -> Vec<String> {
            store
                .conn
                .prepare(
                    "SELECT type || ' ' || name FROM sqlite_master
                     WHERE tbl_name = 'inactive_mailboxes' AND sql IS NOT NULL
                       AND type IN ('index', 'trigger') ORDER BY 1",
                )
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .map(Result::unwrap)
                .collect()
        };
        assert_eq!(derived(&new), derived(&old));
        assert_eq!(derived(&new).len(), 12, "{:?}", derived(&new));
        new.conn
            .execute(
                "INSERT INTO mailbox_search (mailbox_search, rank) VALUES ('integrity-check', 1)",
                [],
            )
            .unwrap();
        let search = |store: &Store| {
            let filter = crate::store::MailboxFilter {
                text: Some("listed".into()),
                ..Default::default()
            };
            let mut ids: Vec<String> = store
                .mailboxes(&filter)
                .unwrap()
                .into_iter()
                .map(|m| m.identity)
                .collect();
            ids.sort();
            ids
        };
        assert_eq!(search(&new), search(&old));
        assert_eq!(search(&new).len(), snapshot.len());
    }

    #[test]
    fn a_staged_snapshot_ends_as_an_upserted_one() {
        let cached: Vec<_> = (0..300).map(|i| mailbox(i * 2, "cached")).collect();
        // Half the cached mailboxes again (renamed), half gone, and new ones between.
        let snapshot: Vec<_> = (150..700).rev().map(|i| mailbox(i, "listed")).collect();
        for bulk_rows in [10, 1_000_000] {
            both_ways(&cached, &snapshot, bulk_rows);
        }
        both_ways(&[], &snapshot, 10);
        both_ways(&cached, &snapshot[..1], 10);
    }

    #[test]
    fn identities_walk_beside_the_snapshot() {
        let snapshot = [1u128, 5, 0xa];
        let mut beside = Beside {
            snapshot: &snapshot,
            at: 0,
        };
        let id = |v: u128| uuid::Uuid::from_u128(v).hyphenated().to_string();
        let got: Vec<bool> = [
            id(0),
            id(1),
            "00000000-0000-0000-0000-00000000000X".into(),
            id(5),
            id(6),
            id(0xa).to_uppercase(),
            id(0xa),
            id(0xb),
        ]
        .iter()
        .map(|s| beside.absent(s))
        .collect();
        assert_eq!(got, [true, false, true, false, true, true, false, true]);
    }
}
