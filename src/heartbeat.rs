//! One heartbeat cycle, as the daemon runs it every heartbeat and `imm-daemon cycle` runs
//! it once: the steps in their order ([`default_steps`], the one place they are wired),
//! each reporting its outcome (the interface of [`crate::step`]). A failing step is
//! logged and recorded, never stops the other steps or the daemon, and backs off (see
//! [`backoff`]) until it succeeds again.

pub mod backoff;

use std::collections::BTreeMap;
use std::time::Instant;

use chrono::Utc;
use serde::{Deserialize, Serialize};

use crate::store::Store;
use backoff::{Backoff, StepHealth};

pub use crate::step::{CycleStep, StepContext, StepError, StepFuture, StepReport};

/// The steps every cycle runs, in order: the sign-in (fresh tokens first), the mail
/// queue (through the sign-in's session), the mailbox sync when due, then the
/// database's upkeep.
pub fn default_steps(
    hub: std::sync::Arc<crate::auth::step::Hub>,
    progress: crate::exchange::sync::ProgressSlot,
) -> Vec<Box<dyn CycleStep>> {
    let session = crate::auth::step::SessionSlot::default();
    vec![
        Box::new(crate::auth::step::SignInStep::new(hub, session.clone())),
        Box::new(crate::mail::step::MailStep::new(session.clone())),
        Box::new(crate::sync::step::MailboxSync::new(session, progress)),
        Box::new(StoreMaintenance),
    ]
}

/// What started a cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// The heartbeat timer.
    Heartbeat,
    /// SIGUSR1.
    Signal,
    /// A request on the control socket or `imm-daemon cycle`.
    Request,
    /// A scheduled job (the mailbox sync) fell due.
    Schedule,
    /// The sign-in changed: a device code was issued, or a person signed in.
    SignIn,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Heartbeat => "heartbeat",
            Trigger::Signal => "signal",
            Trigger::Request => "request",
            Trigger::Schedule => "schedule",
            Trigger::SignIn => "sign_in",
        }
    }
}

/// How a step fared in one cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Ok,
    /// Ran, with nothing to do: its work was not due.
    Idle,
    Failed,
    /// Not run: the step is backing off after failures.
    BackingOff,
    /// Not run: the daemon was stopping.
    Skipped,
}

/// One step's outcome within a cycle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepOutcome {
    pub step: String,
    pub status: StepStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A person must act: the failure's kind needs one ([`crate::error::Kind::needs_person`]).
    #[serde(default)]
    pub needs_attention: bool,
    /// What the failure means, in the product's one vocabulary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<crate::error::Kind>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub counts: BTreeMap<String, u64>,
    pub duration_ms: u64,
    /// Consecutive failures, this one included.
    #[serde(default)]
    pub failures: u32,
    /// The step's report said the due mailbox sync ran ([`StepReport::synced`]).
    #[serde(skip)]
    pub synced: bool,
}

impl StepOutcome {
    /// The outcome for people: `ok: …`, `FAILED (2 in a row): …`, and so on.
    pub fn describe(&self) -> String {
        match self.status {
            StepStatus::Ok => format!("ok: {}", self.summary.as_deref().unwrap_or("")),
            StepStatus::Idle => format!("idle: {}", self.summary.as_deref().unwrap_or("")),
            StepStatus::Failed => format!(
                "FAILED ({} in a row): {}",
                self.failures,
                self.error.as_deref().unwrap_or("")
            ),
            StepStatus::BackingOff => format!(
                "backing off after {} failures: {}",
                self.failures,
                self.error.as_deref().unwrap_or("")
            ),
            StepStatus::Skipped => "skipped (stopping)".to_string(),
        }
    }
}

/// A completed cycle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CycleSummary {
    pub trigger: Trigger,
    pub started_at: String,
    pub finished_at: String,
    pub duration_ms: u64,
    /// No step failed.
    pub ok: bool,
    pub steps: Vec<StepOutcome>,
}

impl CycleSummary {
    /// Stores the cycle in the database's history; returns its id.
    pub fn record(&self, store: &mut Store) -> Result<i64, crate::store::StoreError> {
        let steps = serde_json::to_string(&self.steps).expect("outcomes serialize");
        store.write(|tx| {
            tx.record_cycle(
                &self.started_at,
                &self.finished_at,
                self.trigger.as_str(),
                self.ok,
                &steps,
            )
        })
    }

    /// Whether a step reported that a person must act.
    pub fn needs_attention(&self) -> bool {
        self.steps.iter().any(|s| s.needs_attention)
    }

    /// A one-line account, for logs and systemd's STATUS=.
    pub fn one_line(&self) -> String {
        let failed: Vec<&str> = self
            .steps
            .iter()
            .filter(|s| matches!(s.status, StepStatus::Failed | StepStatus::BackingOff))
            .map(|s| s.step.as_str())
            .collect();
        if failed.is_empty() {
            format!(
                "last cycle {} ok ({} ms)",
                self.finished_at, self.duration_ms
            )
        } else {
            format!(
                "last cycle {} failed: {} ({} ms)",
                self.finished_at,
                failed.join(", "),
                self.duration_ms
            )
        }
    }
}

/// The steps of a cycle and what is remembered about each between cycles.
pub struct Steps {
    steps: Vec<(Box<dyn CycleStep>, StepHealth)>,
    backoff: Backoff,
}

impl Steps {
    pub fn new(steps: Vec<Box<dyn CycleStep>>, backoff: Backoff) -> Steps {
        Steps {
            steps: steps
                .into_iter()
                .map(|s| (s, StepHealth::default()))
                .collect(),
            backoff,
        }
    }

    pub fn set_backoff(&mut self, backoff: Backoff) {
        self.backoff = backoff;
    }

    /// The steps' names, in order.
    pub fn names(&self) -> Vec<&'static str> {
        self.steps.iter().map(|(s, _)| s.name()).collect()
    }

    /// Runs every due step in order and returns the cycle's summary. A step that fails
    /// does not stop the others; once `ctx.cancel` fires, the steps not yet started are
    /// skipped. A heartbeat (or a schedule) leaves out steps that are backing off (they
    /// stay failed in the summary, with their last error); a cycle someone asked for runs
    /// them all, since a person who fixed something wants to see it retried.
    pub async fn run_cycle(&mut self, ctx: &StepContext<'_>, trigger: Trigger) -> CycleSummary {
        let started = Instant::now();
        let started_at = Utc::now();
        let mut outcomes = Vec::with_capacity(self.steps.len());
        for (step, health) in &mut self.steps {
            let name = step.name();
            let mut outcome = StepOutcome {
                step: name.to_string(),
                status: StepStatus::Skipped,
                summary: None,
                error: None,
                needs_attention: false,
                kind: None,
                counts: BTreeMap::new(),
                duration_ms: 0,
                failures: health.failures,
                synced: false,
            };
            let now = tokio::time::Instant::now();
            if ctx.cancel.is_cancelled() {
                outcomes.push(outcome);
                continue;
            }
            if matches!(trigger, Trigger::Heartbeat | Trigger::Schedule) && !health.due(now) {
                outcome.status = StepStatus::BackingOff;
                outcome.error = health.last_error.clone();
                outcome.kind = health.last_kind;
                outcome.needs_attention = health.last_kind.is_some_and(|k| k.needs_person());
                tracing::debug!(step = name, failures = health.failures, "step backing off");
                outcomes.push(outcome);
                continue;
            }
            let t = Instant::now();
            let result = step.run(ctx).await;
            outcome.duration_ms = t.elapsed().as_millis() as u64;
            match result {
                Ok(report) => {
                    if report.idle {
                        tracing::debug!(step = name, "{}", report.summary);
                    } else {
                        tracing::info!(step = name, ms = outcome.duration_ms, "{}", report.summary);
                    }
                    outcome.status = if report.idle {
                        StepStatus::Idle
                    } else {
                        StepStatus::Ok
                    };
                    outcome.summary = Some(report.summary);
                    outcome.counts = report.counts;
                    outcome.synced = report.synced;
                    health.record(true, now, &self.backoff, 0.0);
                }
                Err(e) => {
                    health.record(false, now, &self.backoff, fastrand::f64());
                    health.last_error = Some(e.message.clone());
                    health.last_kind = Some(e.kind);
                    let wait = health
                        .retry_at
                        .map(|t| t.saturating_duration_since(now))
                        .unwrap_or_default();
                    tracing::warn!(
                        step = name,
                        failures = health.failures,
                        retry_in = %humantime::format_duration(round_secs(wait)),
                        "step failed: {}",
                        e.message
                    );
                    outcome.status = StepStatus::Failed;
                    outcome.needs_attention = e.needs_attention();
                    outcome.kind = Some(e.kind);
                    outcome.error = Some(e.message);
                }
            }
            outcome.failures = health.failures;
            outcomes.push(outcome);
        }
        let finished_at = Utc::now();
        CycleSummary {
            trigger,
            started_at: crate::time::stamp(started_at),
            finished_at: crate::time::stamp(finished_at),
            duration_ms: started.elapsed().as_millis() as u64,
            ok: outcomes
                .iter()
                .all(|o| !matches!(o.status, StepStatus::Failed | StepStatus::BackingOff)),
            steps: outcomes,
        }
    }
}

fn round_secs(d: std::time::Duration) -> std::time::Duration {
    std::time::Duration::from_secs(d.as_secs())
}

/// Copies the database's write-ahead log into the database file once a cycle, so the WAL
/// stays small while the daemon holds the database open (see [`crate::store`]).
pub struct StoreMaintenance;

impl CycleStep for StoreMaintenance {
    fn name(&self) -> &'static str {
        "store_maintenance"
    }

    fn run<'a>(&'a mut self, ctx: &'a StepContext<'a>) -> StepFuture<'a> {
        Box::pin(async move {
            let (log, copied) = ctx
                .store
                .borrow()
                .checkpoint()
                .map_err(|e| StepError::transient(crate::error::chain(&e)))?;
            Ok(StepReport {
                summary: format!("checkpoint copied {copied} of {log} WAL pages"),
                counts: BTreeMap::from([
                    ("wal_pages".to_string(), log),
                    ("pages_copied".to_string(), copied),
                ]),
                ..StepReport::default()
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;

    use crate::config::Config;
    use crate::paths::Paths;

    /// A step that fails its first `fail_first` runs (asking for a person when
    /// `attention`), counting its runs: the runner's contract is generic over steps, and
    /// the real steps cannot be made to fail on cue.
    struct Flaky {
        name: &'static str,
        fail_first: u32,
        attention: bool,
        runs: u32,
    }

    impl CycleStep for Flaky {
        fn name(&self) -> &'static str {
            self.name
        }

        fn run<'a>(&'a mut self, _ctx: &'a StepContext<'a>) -> StepFuture<'a> {
            Box::pin(async move {
                self.runs += 1;
                if self.runs <= self.fail_first {
                    Err(StepError {
                        message: format!("failure {}", self.runs),
                        kind: if self.attention {
                            crate::error::Kind::SignIn
                        } else {
                            crate::error::Kind::Transient
                        },
                    })
                } else {
                    Ok(StepReport {
                        summary: format!("run {}", self.runs),
                        counts: BTreeMap::from([("runs".to_string(), u64::from(self.runs))]),
                        ..StepReport::default()
                    })
                }
            })
        }
    }

    fn flaky(name: &'static str, fail_first: u32, attention: bool) -> Box<dyn CycleStep> {
        Box::new(Flaky {
            name,
            fail_first,
            attention,
            runs: 0,
        })
    }

    fn statuses(s: &CycleSummary) -> Vec<StepStatus> {
        s.steps.iter().map(|o| o.status).collect()
    }

    /// What a step context borrows: a real database in a temporary IMM_HOME.
    struct Fixture {
        _dir: tempfile::TempDir,
        paths: Paths,
        store: RefCell<Store>,
        config: Config,
        cancel: CancellationToken,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let paths = Paths::resolve_with(Some(dir.path().into()), None, None).unwrap();
            let store = RefCell::new(Store::open(&paths.database).unwrap());
            Fixture {
                _dir: dir,
                paths,
                store,
                config: Config::default(),
                cancel: CancellationToken::new(),
            }
        }

        fn ctx(&self) -> StepContext<'_> {
            StepContext {
                config: &self.config,
                paths: &self.paths,
                store: &self.store,
                cancel: &self.cancel,
                sync_due: false,
                allow_removals: false,
                wake: None,
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_step_neither_stops_the_others_nor_looks_healthy_while_it_backs_off() {
        let fx = Fixture::new();
        let cancel = &fx.cancel;
        let ctx = fx.ctx();
        let minute = Duration::from_secs(60);
        let mut steps = Steps::new(
            vec![flaky("signin", 2, true), flaky("queue", 0, false)],
            Backoff {
                base: minute,
                cap: 10 * minute,
            },
        );
        // First cycle: the first step fails, the second still runs.
        let c = steps.run_cycle(&ctx, Trigger::Heartbeat).await;
        assert_eq!(statuses(&c), [StepStatus::Failed, StepStatus::Ok]);
        assert!(!c.ok && c.needs_attention());
        assert_eq!(c.steps[0].error.as_deref(), Some("failure 1"));
        assert_eq!(c.steps[0].failures, 1);
        assert_eq!(c.steps[1].counts["runs"], 1);
        assert!(c.one_line().contains("failed: signin"), "{}", c.one_line());
        // A heartbeat within the backoff leaves it out, still failed and still asking.
        tokio::time::advance(Duration::from_secs(10)).await;
        let c = steps.run_cycle(&ctx, Trigger::Heartbeat).await;
        assert_eq!(statuses(&c), [StepStatus::BackingOff, StepStatus::Ok]);
        assert!(!c.ok && c.needs_attention());
        assert_eq!(c.steps[0].error.as_deref(), Some("failure 1"));
        // A cycle someone asked for retries it at once: it fails a second time.
        let c = steps.run_cycle(&ctx, Trigger::Signal).await;
        assert_eq!(statuses(&c), [StepStatus::Failed, StepStatus::Ok]);
        assert_eq!(c.steps[0].failures, 2);
        // After the (longer) backoff it runs, succeeds, and is healthy again.
        tokio::time::advance(2 * minute).await;
        let c = steps.run_cycle(&ctx, Trigger::Heartbeat).await;
        assert_eq!(statuses(&c), [StepStatus::Ok, StepStatus::Ok]);
        assert!(c.ok && !c.needs_attention());
        assert_eq!(c.steps[0].failures, 0);
        assert_eq!(c.steps[0].summary.as_deref(), Some("run 3"));
        // Once stopping, steps not yet started are skipped.
        cancel.cancel();
        let c = steps.run_cycle(&ctx, Trigger::Heartbeat).await;
        assert_eq!(statuses(&c), [StepStatus::Skipped, StepStatus::Skipped]);
        assert_eq!(steps.names(), ["signin", "queue"]);
    }

    #[tokio::test]
    async fn store_maintenance_checkpoints_the_wal() {
        let fx = Fixture::new();
        fx.store
            .borrow_mut()
            .audit(
                &crate::audit::AuditEvent::new(crate::audit::Operation::Connect),
                chrono::Utc::now(),
            )
            .unwrap();
        let ctx = fx.ctx();
        let report = StoreMaintenance.run(&ctx).await.unwrap();
        assert!(report.counts["wal_pages"] > 0, "{report:?}");
        assert_eq!(report.counts["pages_copied"], report.counts["wal_pages"]);
    }
}
