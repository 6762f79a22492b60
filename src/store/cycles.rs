//! SQL of the `cycles` table: the daemon's cycle history, newest kept.

use super::{Store, StoreError, Tx};

/// How many cycles the history keeps (about five weeks at the default heartbeat).
const KEEP: i64 = 10_000;

/// One recorded cycle; `steps` is the JSON array of step outcomes.
#[derive(Debug, Clone, PartialEq)]
pub struct CycleRow {
    pub id: i64,
    pub started_at: String,
    pub finished_at: String,
    pub trigger: String,
    pub ok: bool,
    pub steps: String,
}

impl Tx<'_> {
    /// Records a cycle and drops the oldest beyond the kept history; returns its id.
    pub fn record_cycle(
        &mut self,
        started_at: &str,
        finished_at: &str,
        trigger: &str,
        ok: bool,
        steps: &str,
    ) -> Result<i64, StoreError> {
        self.tx
            .prepare_cached(
                "INSERT INTO cycles (started_at, finished_at, trigger, ok, steps)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(rusqlite::params![
                started_at,
                finished_at,
                trigger,
                ok,
                steps
            ])?;
        let id = self.tx.last_insert_rowid();
        self.tx
            .prepare_cached("DELETE FROM cycles WHERE id <= ?1")?
            .execute([id - KEEP])?;
        Ok(id)
    }
}

impl Store {
    /// The most recent cycles, newest first.
    pub fn recent_cycles(&self, limit: usize) -> Result<Vec<CycleRow>, StoreError> {
        let rows = self
            .conn
            .prepare_cached(
                "SELECT id, started_at, finished_at, trigger, ok, steps
                 FROM cycles ORDER BY id DESC LIMIT ?1",
            )?
            .query_map([limit as i64], |r| {
                Ok(CycleRow {
                    id: r.get(0)?,
                    started_at: r.get(1)?,
                    finished_at: r.get(2)?,
                    trigger: r.get(3)?,
                    ok: r.get(4)?,
                    steps: r.get(5)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use crate::store::Store;

    #[test]
    fn records_newest_first_and_keeps_a_bounded_history() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("db")).unwrap();
        assert!(store.recent_cycles(5).unwrap().is_empty());
        for i in 0..3 {
            let id = store
                .write(|tx| tx.record_cycle("a", "b", "heartbeat", i != 1, "[]"))
                .unwrap();
            assert_eq!(id, i + 1);
        }
        let rows = store.recent_cycles(2).unwrap();
        assert_eq!(rows.iter().map(|r| r.id).collect::<Vec<_>>(), [3, 2]);
        assert!(!rows[1].ok && rows[0].ok);
        store
            .write(|tx| {
                tx.tx.execute(
                    "UPDATE sqlite_sequence SET seq = ?1 WHERE name = 'cycles'",
                    [super::KEEP + 10],
                )?;
                tx.record_cycle("a", "b", "signal", true, "[]")
            })
            .unwrap();
        let rows = store.recent_cycles(10).unwrap();
        assert_eq!(rows.len(), 1, "cycles more than KEEP ids old are dropped");
        assert_eq!(rows[0].trigger, "signal");
    }
}
