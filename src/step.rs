//! The interface every heartbeat step implements, below the capabilities that implement
//! it (the sign-in, the mail queue, the mailbox sync) and the daemon that runs them: a
//! [`CycleStep`] has a stable name and an async `run` that returns a [`StepReport`] or a
//! [`StepError`]. The daemon reads what a step did from the report's typed fields, never
//! from its name. Nothing here imports the daemon.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::error::{Classify, Kind};
use crate::paths::Paths;
use crate::store::Store;

/// What a step may use while it runs.
pub struct StepContext<'a> {
    pub config: &'a Config,
    pub paths: &'a Paths,
    /// The database; borrow it only between awaits.
    pub store: &'a RefCell<Store>,
    /// Fired when the daemon is stopping: finish the unit of work in hand (a mail, a
    /// transaction) and return.
    pub cancel: &'a CancellationToken,
    /// The mailbox sync is due in this cycle (its schedule fired, or someone asked).
    pub sync_due: bool,
    /// Whoever asked for this sync said its removals are real, however many
    /// (`sync --allow-removals`): the removal guard stands aside once.
    pub allow_removals: bool,
    /// In the daemon: wakes the supervisor for a cycle soon (a step's background work
    /// has news). `None` in a one-off cycle of the CLI, where nothing runs afterwards.
    pub wake: Option<&'a tokio::sync::Notify>,
}

/// A step's account of a successful run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    /// One line for people.
    pub summary: String,
    /// Named figures (mails sent, pages copied, …).
    #[serde(default)]
    pub counts: BTreeMap<String, u64>,
    /// The step had nothing to do (its work was not due).
    #[serde(default)]
    pub idle: bool,
    /// The mailbox sync that was due ran to the end: the cache holds the source's
    /// snapshot. The daemon clears the sync it owes.
    #[serde(skip)]
    pub synced: bool,
}

impl StepReport {
    /// A step with nothing to do this cycle.
    pub fn idle(why: impl Into<String>) -> StepReport {
        StepReport {
            summary: why.into(),
            idle: true,
            ..StepReport::default()
        }
    }
}

/// A step's failure: what happened, for people, and what it means.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct StepError {
    pub message: String,
    /// When it needs a person ([`Kind::needs_person`]: a sign-in, a refusal, our side),
    /// `status` exits 1 until it clears.
    pub kind: Kind,
}

impl StepError {
    pub fn new(kind: Kind, message: impl Into<String>) -> StepError {
        StepError {
            message: message.into(),
            kind,
        }
    }

    /// A failure that retrying may cure.
    pub fn transient(message: impl Into<String>) -> StepError {
        StepError::new(Kind::Transient, message)
    }

    /// A domain error, with its causes, meaning what it says it means.
    pub fn of<E: Classify>(e: &E) -> StepError {
        StepError::new(e.kind(), crate::error::chain(e))
    }

    /// A person must act before it clears.
    pub fn needs_attention(&self) -> bool {
        self.kind.needs_person()
    }
}

/// The future a step returns.
pub type StepFuture<'a> = Pin<Box<dyn Future<Output = Result<StepReport, StepError>> + 'a>>;

/// One step of every cycle.
pub trait CycleStep {
    /// A stable name, used in logs, `status` and the cycle history.
    fn name(&self) -> &'static str;
    /// Runs the step once.
    fn run<'a>(&'a mut self, ctx: &'a StepContext<'a>) -> StepFuture<'a>;
}
