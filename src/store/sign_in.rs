//! SQL of the `sign_in` table: the public side of a sign-in (account, expiries, the
//! pending device code), kept for `status` and for the CLI and daemon to see each
//! other's changes. Token material never reaches this table; its JSON `record` is
//! written by the auth module.

use super::{Store, StoreError, Tx};

/// A stored sign-in record and its generation, which every write raises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignInRow {
    pub generation: i64,
    pub updated_at: String,
    pub record: String,
}

impl Tx<'_> {
    /// Replaces the record of `slot`, raising its generation; returns the new generation.
    pub fn put_sign_in(
        &mut self,
        slot: &str,
        updated_at: &str,
        record: &str,
    ) -> Result<i64, StoreError> {
        Ok(self
            .tx
            .prepare_cached(
                "INSERT INTO sign_in (slot, generation, updated_at, record) VALUES (?1, 1, ?2, ?3)
             ON CONFLICT(slot) DO UPDATE SET generation = sign_in.generation + 1,
                 updated_at = excluded.updated_at, record = excluded.record
             RETURNING generation",
            )?
            .query_row(rusqlite::params![slot, updated_at, record], |r| r.get(0))?)
    }
}

impl Tx<'_> {
    /// Like [`Tx::put_sign_in`], but only if the record is still at generation
    /// `expected` (0: none yet); `None` when another writer got there first.
    pub fn put_sign_in_if(
        &mut self,
        slot: &str,
        expected: i64,
        updated_at: &str,
        record: &str,
    ) -> Result<Option<i64>, StoreError> {
        let current: i64 = self
            .tx
            .prepare_cached("SELECT coalesce(max(generation), 0) FROM sign_in WHERE slot = ?1")?
            .query_row([slot], |r| r.get(0))?;
        if current != expected {
            return Ok(None);
        }
        self.put_sign_in(slot, updated_at, record).map(Some)
    }
}

impl Store {
    /// Writes `events` to the audit log and `record` as `slot`'s record, in one
    /// transaction; with `expected`, only over that generation (else `None`, and the
    /// audit rows are written alone: what they tell happened all the same).
    pub fn save_sign_in(
        &mut self,
        slot: &str,
        record: &str,
        events: &[crate::audit::AuditEvent],
        expected: Option<i64>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<i64>, StoreError> {
        let at = crate::time::stamp(now);
        self.write(|tx| {
            for e in events {
                tx.audit(e, now)?;
            }
            match expected {
                Some(g) => tx.put_sign_in_if(slot, g, &at, record),
                None => tx.put_sign_in(slot, &at, record).map(Some),
            }
        })
    }

    /// The record of `slot`, if one was written. A database from before sign-in has none.
    pub fn sign_in(&self, slot: &str) -> Result<Option<SignInRow>, StoreError> {
        let exists: bool = self.conn.query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'sign_in'",
            [],
            |r| r.get(0),
        )?;
        if !exists {
            return Ok(None);
        }
        let mut st = self
            .conn
            .prepare_cached("SELECT generation, updated_at, record FROM sign_in WHERE slot = ?1")?;
        let mut rows = st.query([slot])?;
        match rows.next()? {
            Some(r) => Ok(Some(SignInRow {
                generation: r.get(0)?,
                updated_at: r.get(1)?,
                record: r.get(2)?,
            })),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_write_raises_the_generation() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db")).unwrap();
        assert_eq!(store.sign_in("a").unwrap(), None);
        let g1 = store
            .write(|tx| tx.put_sign_in("a", "t1", "{\"x\":1}"))
            .unwrap();
        let g2 = store
            .write(|tx| tx.put_sign_in("a", "t2", "{\"x\":2}"))
            .unwrap();
        assert_eq!((g1, g2), (1, 2));
        let row = store.sign_in("a").unwrap().unwrap();
        assert_eq!(row.generation, 2);
        assert_eq!(row.record, "{\"x\":2}");
        assert_eq!(store.sign_in("b").unwrap(), None);
        // A writer that read generation 1 loses to the one that wrote 2.
        let stale = store
            .write(|tx| tx.put_sign_in_if("a", 1, "t3", "{}"))
            .unwrap();
        assert_eq!(stale, None);
        assert_eq!(store.sign_in("a").unwrap().unwrap().record, "{\"x\":2}");
        let fresh = store
            .write(|tx| tx.put_sign_in_if("a", 2, "t3", "{}"))
            .unwrap();
        assert_eq!(fresh, Some(3));
        assert_eq!(
            store
                .write(|tx| tx.put_sign_in_if("new", 0, "t", "{}"))
                .unwrap(),
            Some(1)
        );
    }
}
