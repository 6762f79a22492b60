//! SQL of the `job_runs` table: each scheduled job's last run.

use chrono::{DateTime, Utc};

use super::{Store, StoreError, Tx};
use crate::schedule::{Job, JobRun};

impl Tx<'_> {
    /// Records a run of `job`: its outcome (`ok`, and `text`, the summary or the error)
    /// replaces the previous one; the last success and the count of failures in a row
    /// carry over.
    pub fn record_job_run(
        &mut self,
        job: Job,
        started_at: &str,
        finished_at: &str,
        ok: bool,
        text: &str,
    ) -> Result<(), StoreError> {
        let (summary, error) = if ok {
            (Some(text), None)
        } else {
            (None, Some(text))
        };
        self.tx
            .prepare_cached(
                "INSERT INTO job_runs (job, started_at, finished_at, ok, summary, error,
                                       last_ok_at, failures)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, CASE WHEN ?4 THEN ?2 END, CASE WHEN ?4 THEN 0 ELSE 1 END)
                 ON CONFLICT(job) DO UPDATE SET
                     started_at = excluded.started_at,
                     finished_at = excluded.finished_at,
                     ok = excluded.ok,
                     summary = excluded.summary,
                     error = excluded.error,
                     last_ok_at = coalesce(excluded.last_ok_at, job_runs.last_ok_at),
                     failures = CASE WHEN excluded.ok THEN 0 ELSE job_runs.failures + 1 END",
            )?
            .execute(rusqlite::params![
                job.name(),
                started_at,
                finished_at,
                ok,
                summary,
                error
            ])?;
        Ok(())
    }
}

impl Store {
    /// Records a run of `job` that started at `started` and finished at `finished`, in
    /// a transaction of its own (see [`Tx::record_job_run`]).
    pub fn record_job_finished(
        &mut self,
        job: Job,
        started: DateTime<Utc>,
        finished: DateTime<Utc>,
        ok: bool,
        text: &str,
    ) -> Result<(), StoreError> {
        let (started, finished) = (crate::time::stamp(started), crate::time::stamp(finished));
        self.write(|tx| tx.record_job_run(job, &started, &finished, ok, text))
    }

    /// Every job's last run. A database from before scheduled jobs has none.
    pub fn job_runs(&self) -> Result<Vec<(Job, JobRun)>, StoreError> {
        let exists: bool = self.conn.query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'job_runs'",
            [],
            |r| r.get(0),
        )?;
        if !exists {
            return Ok(Vec::new());
        }
        let mut st = self.conn.prepare_cached(
            "SELECT job, started_at, finished_at, ok, summary, error, last_ok_at, failures
             FROM job_runs ORDER BY job",
        )?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                JobRun {
                    started_at: r.get(1)?,
                    finished_at: r.get(2)?,
                    ok: r.get(3)?,
                    summary: r.get(4)?,
                    error: r.get(5)?,
                    last_ok_at: r.get(6)?,
                    failures: r.get(7)?,
                },
            ))
        })?;
        let mut runs = Vec::new();
        for row in rows {
            let (name, run) = row?;
            // A job this build does not know (a newer one recorded it) is left out.
            if let Some(job) = Job::from_name(&name) {
                runs.push((job, run));
            }
        }
        Ok(runs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_replaces_the_last_and_keeps_the_last_success() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("imm.db")).unwrap();
        assert!(store.job_runs().unwrap().is_empty());
        let record = |store: &mut Store, at: &str, outcome: Result<&str, &str>| {
            let (ok, text) = match outcome {
                Ok(t) => (true, t),
                Err(t) => (false, t),
            };
            store
                .write(|tx| tx.record_job_run(Job::MailboxSync, at, at, ok, text))
                .unwrap()
        };
        record(&mut store, "2026-11-21T00:00:00Z", Err("export missing"));
        let (job, run) = store.job_runs().unwrap().remove(0);
        assert_eq!(job, Job::MailboxSync);
        assert!(!run.ok && run.last_ok_at.is_none() && run.failures == 1);
        record(&mut store, "2026-11-21T06:00:00Z", Ok("loaded 3"));
        record(&mut store, "2026-11-21T12:00:00Z", Err("export damaged"));
        record(&mut store, "2026-11-21T18:00:00Z", Err("export damaged"));
        let (_, run) = store.job_runs().unwrap().remove(0);
        assert_eq!(run.started_at, "2026-11-21T18:00:00Z");
        assert_eq!(run.error.as_deref(), Some("export damaged"));
        assert_eq!(run.summary, None);
        assert_eq!(run.last_ok_at.as_deref(), Some("2026-11-21T06:00:00Z"));
        assert_eq!(run.failures, 2);
        record(&mut store, "2026-11-22T00:00:00Z", Ok("loaded 4"));
        let (_, run) = store.job_runs().unwrap().remove(0);
        assert!(run.ok && run.failures == 0);
        assert_eq!(run.last_ok_at.as_deref(), Some("2026-11-22T00:00:00Z"));
    }
}
