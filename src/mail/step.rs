//! The mail queue's cycle step: after the sign-in step has refreshed the tokens, it
//! drains the mails that are due ([`super::outbox::drain`]) through the session the two
//! steps share, and reports what was sent, requeued or failed.

use chrono::Utc;

use super::outbox::{OutboxError, Settings, drain};
use crate::auth::AuthError;
use crate::error::{Classify as _, Kind};
use crate::step::{CycleStep, StepContext, StepError, StepFuture, StepReport};
use crate::time::stamp_millis as queue_time;

/// The cycle step's name.
pub const STEP_NAME: &str = "mail";

/// The mail queue's cycle step: drains what is due after the sign-in step refreshed the
/// tokens, through the session it shares.
pub struct MailStep {
    session: crate::auth::step::SessionSlot,
}

impl MailStep {
    pub fn new(session: crate::auth::step::SessionSlot) -> MailStep {
        MailStep { session }
    }

    async fn run_step(&mut self, ctx: &StepContext<'_>) -> Result<StepReport, StepError> {
        let now = Utc::now();
        let counts = ctx
            .store
            .borrow()
            .queue_counts(&queue_time(now))
            .map_err(|e| StepError::transient(crate::error::chain(&e)))?;
        let due = counts.due + counts.sending;
        if due == 0 {
            return Ok(StepReport::idle(match counts.queued {
                0 => "no mail queued".to_string(),
                n => format!("{n} mail(s) queued, none due yet"),
            }));
        }
        let Some(session) = self.session.get() else {
            return Ok(StepReport::idle(format!(
                "{due} mail(s) due wait: no sign-in session (sign-in is not configured, or its token store could not be opened: see the sign_in step)"
            )));
        };
        let settings = Settings::from_config(ctx.config, ctx.paths);
        let drained = drain(&settings, &session, ctx.store, ctx.cancel).await;
        if session.take_refused_drop()
            && let Some(w) = ctx.wake
        {
            // The sign-in step tells and asks for a person: at once, not at the next
            // heartbeat.
            w.notify_one();
        }
        match drained {
            Ok(r) => {
                let mut report = StepReport {
                    summary: r.summary(&settings.params),
                    ..StepReport::default()
                };
                for (k, v) in [
                    ("sent", u64::from(r.sent)),
                    ("found_sent", u64::from(r.found_sent)),
                    ("requeued", u64::from(r.requeued)),
                    ("failed", u64::from(r.failed)),
                    ("waiting", r.waiting),
                ] {
                    report.counts.insert(k.into(), v);
                }
                Ok(report)
            }
            // The sign-in step reports these (and asks for a person when needed).
            Err(OutboxError::Auth(e))
                if e.kind() == Kind::SignIn || matches!(e, AuthError::NotSignedIn) =>
            {
                Ok(StepReport::idle(format!(
                    "{due} mail(s) due wait for a sign-in"
                )))
            }
            Err(e) => Err(StepError::transient(crate::error::chain(&e))),
        }
    }
}

impl CycleStep for MailStep {
    fn name(&self) -> &'static str {
        STEP_NAME
    }

    fn run<'a>(&'a mut self, ctx: &'a StepContext<'a>) -> StepFuture<'a> {
        Box::pin(self.run_step(ctx))
    }
}
