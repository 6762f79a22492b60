//! Scheduled jobs: the mailbox sync and audit retention pruning (the daily send-quota
//! reset joins them with the email queue), each on a cron expression from the
//! configuration, in one configurable time zone.
//!
//! Cron expressions are parsed and evaluated by `croner`, the engine tokio-cron-scheduler
//! itself uses, so the syntax is the same (five fields, or six with seconds first;
//! `@daily` and the like; `L`, `W` and `#`). tokio-cron-scheduler's own scheduler is not
//! used: its loop wakes every 500 ms whether a job is due or not (measured: 43 voluntary
//! context switches in 10 idle seconds with one daily job, against none for this daemon),
//! which breaks the daemon's promise of no wakeups between its timers, and its jobs run
//! as `Send` tasks beside the supervisor while ours must take turns with the cycle for the
//! one database connection. So the supervisor sleeps until the earliest due job, on the
//! same `select!` as the heartbeat, and runs it between cycles.
//!
//! A schedule ([`When`]) and its time zone ([`Zone`](crate::config::Zone)) are
//! configuration values, parsed and evaluated with the rest of the configuration
//! ([`crate::config`]); this module plans the jobs.
//!
//! When a job is due:
//! - after a successful run, at the schedule's next time after that run; a daemon that
//!   was down when a run was due runs it once when it starts (never a burst);
//! - after a failed run, at the schedule's next time (the mailbox sync, a cycle step,
//!   is also retried by the heartbeat with the step's backoff until it succeeds), or at
//!   once when the daemon restarts or reloads, since plans start from the last success;
//! - never having run: the mailbox sync at once (an empty cache is worth filling), audit
//!   pruning at its next time.
//!
//! Times are wall-clock. The supervisor's sleep runs on the monotonic clock, which stops
//! while a machine sleeps, so the due times are re-read against the wall clock after
//! every heartbeat too: a job due during sleep runs at most one heartbeat after waking.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::{Config, When};
use crate::time::parse as parse_time;

/// A scheduled job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Job {
    /// Refresh the inactive-mailbox cache from its source (a cycle step, run when due).
    MailboxSync,
    /// Delete audit rows older than `[audit] retention`.
    AuditPrune,
    /// Start the send bucket's new day at local midnight (its count of the day's sends
    /// back to zero). Loading the bucket checks the date too, so a daemon that was down
    /// at midnight starts the new day all the same.
    SendDayReset,
}

/// Every day at midnight.
static MIDNIGHT: std::sync::LazyLock<When> =
    std::sync::LazyLock::new(|| When::parse("0 0 * * *").expect("a valid expression"));

impl Job {
    pub const ALL: [Job; 3] = [Job::MailboxSync, Job::AuditPrune, Job::SendDayReset];

    /// The job's stable name, as stored and shown.
    pub fn name(self) -> &'static str {
        match self {
            Job::MailboxSync => "mailbox_sync",
            Job::AuditPrune => "audit_prune",
            Job::SendDayReset => "send_day_reset",
        }
    }

    pub fn from_name(name: &str) -> Option<Job> {
        Job::ALL.into_iter().find(|j| j.name() == name)
    }

    /// The job's schedule; `Never` also when the job has nothing to work on.
    pub fn when(self, config: &Config) -> &When {
        match self {
            Job::MailboxSync if config.sync_unavailable().is_some() => &When::Never,
            Job::MailboxSync => &config.sync.schedule,
            Job::AuditPrune => &config.audit.prune_schedule,
            Job::SendDayReset => &MIDNIGHT,
        }
    }

    /// Why the job is off, when its schedule is `never`.
    pub fn off_reason(self, config: &Config) -> Option<&'static str> {
        match self {
            Job::MailboxSync if config.sync_unavailable().is_some() => {
                Some(match config.sync.source() {
                    crate::config::SyncSource::Export => {
                        "no mailbox source configured: set [sync] export"
                    }
                    crate::config::SyncSource::Exchange => {
                        "sign-in is not configured: set tenant and client_id"
                    }
                })
            }
            Job::MailboxSync if config.sync.schedule == When::Never => {
                Some("[sync] schedule is \"never\"")
            }
            Job::AuditPrune if config.audit.prune_schedule == When::Never => {
                Some("[audit] prune_schedule is \"never\"")
            }
            _ => None,
        }
    }

    /// When the job is next due, given its last successful run; `baseline` stands for
    /// "now" when the daemon started or reloaded. `None`: the job is off.
    pub fn due_at(
        self,
        config: &Config,
        last_ok: Option<DateTime<Utc>>,
        baseline: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let when = self.when(config);
        let zone = &config.schedule.timezone;
        match (last_ok, self) {
            (Some(t), _) => when.next_after(zone, t),
            (None, Job::MailboxSync) => when.next_after(zone, baseline).map(|_| baseline),
            (None, Job::AuditPrune | Job::SendDayReset) => when.next_after(zone, baseline),
        }
    }
}

/// A job's last run, as the database keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRun {
    pub started_at: String,
    pub finished_at: String,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The last run that succeeded, this one or an earlier one.
    pub last_ok_at: Option<String>,
    /// Failed runs in a row, this one included.
    pub failures: u32,
}

/// A job as `status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobView {
    pub name: String,
    /// The cron expression, or `never`.
    pub schedule: String,
    pub timezone: String,
    pub enabled: bool,
    /// Why the job is off, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub off_reason: Option<String>,
    /// When it runs next (RFC 3339, UTC); a past time means "as soon as the daemon can".
    pub next_run_at: Option<String>,
    pub last_run: Option<JobRun>,
}

/// The scheduled jobs and when each is next due.
#[derive(Debug, Clone)]
pub struct Jobs {
    due: Vec<(Job, Option<DateTime<Utc>>)>,
}

impl Jobs {
    /// Plans every job from its last runs (`runs`, by job) as of `now`.
    pub fn plan(config: &Config, runs: &[(Job, JobRun)], now: DateTime<Utc>) -> Jobs {
        let due = Job::ALL
            .into_iter()
            .map(|job| {
                let last_ok = runs
                    .iter()
                    .find(|(j, _)| *j == job)
                    .and_then(|(_, r)| r.last_ok_at.as_deref())
                    .and_then(parse_time);
                (job, job.due_at(config, last_ok, now))
            })
            .collect();
        Jobs { due }
    }

    /// When the job is next due.
    pub fn next_run(&self, job: Job) -> Option<DateTime<Utc>> {
        self.due
            .iter()
            .find(|(j, _)| *j == job)
            .and_then(|(_, t)| *t)
    }

    /// The earliest due time of any job.
    pub fn next_due(&self) -> Option<DateTime<Utc>> {
        self.due.iter().filter_map(|(_, t)| *t).min()
    }

    /// The jobs due at `now`, each moved on to its schedule's next time after `now`.
    pub fn take_due(&mut self, config: &Config, now: DateTime<Utc>) -> Vec<Job> {
        let mut fired = Vec::new();
        for (job, due) in &mut self.due {
            if due.is_some_and(|t| t <= now) {
                fired.push(*job);
                *due = job.when(config).next_after(&config.schedule.timezone, now);
            }
        }
        fired
    }

    /// The jobs as `status` shows them.
    pub fn views(&self, config: &Config, runs: &[(Job, JobRun)]) -> Vec<JobView> {
        self.due
            .iter()
            .map(|(job, due)| JobView {
                name: job.name().to_string(),
                schedule: job.when(config).to_string(),
                timezone: config.schedule.timezone.to_string(),
                enabled: due.is_some(),
                off_reason: job.off_reason(config).map(str::to_string),
                next_run_at: due.map(crate::time::stamp),
                last_run: runs.iter().find(|(j, _)| j == job).map(|(_, r)| r.clone()),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Zone;
    use std::path::Path;

    fn t(s: &str) -> DateTime<Utc> {
        parse_time(s).unwrap()
    }

    fn config(extra: &str) -> Config {
        Config::parse(extra, Path::new("test.toml")).unwrap()
    }

    #[test]
    fn schedules_follow_the_time_zone_across_daylight_saving() {
        let berlin = Zone::parse("Europe/Berlin").unwrap();
        let w = When::parse("0 0 * * *").unwrap();
        // Local midnight in Berlin is 23:00 UTC in winter, 22:00 UTC in summer.
        assert_eq!(
            w.next_after(&berlin, t("2026-11-21T12:00:00Z")),
            Some(t("2026-11-21T23:00:00Z"))
        );
        assert_eq!(
            w.next_after(&berlin, t("2026-07-01T12:00:00Z")),
            Some(t("2026-07-01T22:00:00Z"))
        );
        // 02:30 does not exist on the night clocks go forward (29 March 2026): the run
        // still happens that night, not a day late.
        let n = When::parse("30 2 * * *")
            .unwrap()
            .next_after(&berlin, t("2026-03-28T12:00:00Z"))
            .unwrap();
        assert!(n < t("2026-03-29T12:00:00Z"), "{n}");
        // Clocks go back on 25 October 2026: 02:00-03:00 local happens twice (00:00-01:00
        // UTC in summer time, 01:00-02:00 UTC in winter time). From the second pass every
        // answer is in the future, and a job fires once, not in a loop.
        for expr in ["*/20 * * * *", "45 2 * * *", "* * * * * *"] {
            let w = When::parse(expr).unwrap();
            let t0 = t("2026-10-25T01:10:00Z");
            let n = w.next_after(&berlin, t0).unwrap();
            // (A daily 02:45 already ran in the first pass: next is tomorrow's.)
            assert!(
                n > t0 && n <= t0 + chrono::Duration::hours(25),
                "{expr}: {n}"
            );
        }
        let c = config(
            "[schedule]\ntimezone = \"Europe/Berlin\"\n[sync]\nexport = \"/srv/i.json\"\n\
             schedule = \"*/20 * * * *\"\n[audit]\nprune_schedule = \"45 2 * * *\"\n",
        );
        let now = t("2026-10-25T01:10:00Z");
        let mut jobs = Jobs::plan(&c, &[(Job::AuditPrune, run("2026-10-24T00:45:00Z"))], now);
        assert_eq!(
            jobs.take_due(&c, now).len(),
            2,
            "the sync never ran; pruning is overdue"
        );
        assert!(jobs.next_due().unwrap() > now);
        assert!(jobs.take_due(&c, now).is_empty(), "and not again");
        let e = Zone::parse("Europe/Berln").unwrap_err();
        assert!(e.contains("`Europe/Berln` is not a time zone"), "{e}");
        assert_eq!(Zone::parse("LOCAL").unwrap(), Zone::Local);
    }

    fn run(last_ok: &str) -> JobRun {
        JobRun {
            started_at: last_ok.into(),
            finished_at: last_ok.into(),
            ok: true,
            summary: None,
            error: None,
            last_ok_at: Some(last_ok.into()),
            failures: 0,
        }
    }

    #[test]
    fn due_times_catch_up_once_and_respect_off_jobs() {
        let c = config(
            "[schedule]\ntimezone = \"UTC\"\n[sync]\nexport = \"/srv/inactive.json\"\n\
             schedule = \"0 */6 * * *\"\n[audit]\nprune_schedule = \"30 3 * * *\"\n",
        );
        let now = t("2026-11-21T10:00:00Z");
        // Never ran: the sync at once, pruning at its time.
        let mut jobs = Jobs::plan(&c, &[], now);
        assert_eq!(jobs.next_run(Job::MailboxSync), Some(now));
        assert_eq!(
            jobs.next_run(Job::AuditPrune),
            Some(t("2026-11-22T03:30:00Z"))
        );
        assert_eq!(jobs.take_due(&c, now), vec![Job::MailboxSync]);
        assert_eq!(
            jobs.next_run(Job::MailboxSync),
            Some(t("2026-11-21T12:00:00Z"))
        );
        assert!(jobs.take_due(&c, now).is_empty(), "fired once, not again");
        // Down over two sync times and a prune time: each runs once on start.
        let runs = [
            (Job::MailboxSync, run("2026-11-20T18:00:05Z")),
            (Job::AuditPrune, run("2026-11-20T03:30:00Z")),
        ];
        let mut jobs = Jobs::plan(&c, &runs, now);
        assert_eq!(jobs.next_due(), Some(t("2026-11-21T00:00:00Z")));
        assert_eq!(
            jobs.take_due(&c, now),
            vec![Job::MailboxSync, Job::AuditPrune]
        );
        assert_eq!(jobs.next_due(), Some(t("2026-11-21T12:00:00Z")));
        // Up to date: nothing due.
        let runs = [(Job::MailboxSync, run("2026-11-21T06:00:01Z"))];
        let mut jobs = Jobs::plan(&c, &runs, now);
        assert_eq!(jobs.take_due(&c, now), Vec::<Job>::new());
        let views = jobs.views(&c, &runs);
        assert_eq!(
            views[0].next_run_at.as_deref(),
            Some("2026-11-21T12:00:00Z")
        );
        assert!(views[0].last_run.is_some() && views[1].last_run.is_none());

        // Without a source the sync is off, whatever its schedule says; the send day
        // starts at every midnight regardless.
        let off = config("[audit]\nprune_schedule = \"never\"\n");
        let mut jobs = Jobs::plan(&off, &runs, now);
        let midnight = jobs.next_run(Job::SendDayReset).unwrap();
        assert_eq!(
            off.schedule.timezone.date_of(midnight),
            now.date_naive().succ_opt().unwrap()
        );
        assert_eq!(jobs.next_due(), Some(midnight));
        assert_eq!(
            jobs.take_due(&off, t("2030-01-01T00:00:00Z")),
            vec![Job::SendDayReset]
        );
        let views = jobs.views(&off, &runs);
        assert!(
            views[..2]
                .iter()
                .all(|v| !v.enabled && v.off_reason.is_some())
        );
        assert_eq!(views[1].schedule, "never");
        assert!(views[2].enabled && views[2].schedule == "0 0 * * *");
    }
}
