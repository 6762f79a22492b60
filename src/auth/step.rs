//! The sign-in step, first in every cycle: keeps the access tokens fresh, exercises the
//! refresh token at least every `refresh_at_least`, and when the identity platform asks
//! for a person, marks the sign-in required, tells the notification hooks, and (in the
//! daemon) runs a device flow in the background that keeps a fresh code available.
//!
//! The background flow talks to the step through a [`Hub`]: it posts each new code and
//! its outcome there and wakes the supervisor, which runs a cycle at once; the step then
//! records the code or stores the tokens. Only the step touches the database and the
//! token cache, so the supervisor's single connection is never shared across tasks.

use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::cache::{PendingCode, SignInRecord, SignInState};
use super::{AuthError, Resource, SLOT, Session, Settings, TokenResponse, device};
use crate::audit::{AuditEvent, Operation};
use crate::error::{Classify as _, Kind};
use crate::notify::{Event, Notifier};
use crate::step::{CycleStep, StepContext, StepError, StepFuture, StepReport};
use crate::store::Store;

/// The step's name in cycles and `status`.
pub const STEP_NAME: &str = "sign_in";

/// How a background device flow ended.
#[derive(Debug)]
pub enum FlowOutcome {
    Granted(Box<TokenResponse>),
    /// The person declined, or the provider refused the flow outright.
    Failed(String),
}

#[derive(Debug, Default)]
struct HubState {
    pending: Option<PendingCode>,
    outcome: Option<FlowOutcome>,
    record: Option<SignInRecord>,
    /// Why the daemon's last device flow ended without a sign-in, until a new code.
    failed: Option<String>,
    /// The flow whose posts count; posts of a flow stopped since are ignored.
    flow_id: u64,
}

/// Where the background device flow, the step and the supervisor meet.
#[derive(Debug, Default)]
pub struct Hub {
    state: Mutex<HubState>,
    /// Woken when the flow has news; the supervisor runs a cycle.
    pub wake: tokio::sync::Notify,
}

/// What the daemon tells `login` and `status` about its sign-in.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct HubView {
    pub record: Option<SignInRecord>,
    pub pending: Option<PendingCode>,
    /// The daemon's device flow ended without a sign-in (declined, refused).
    #[serde(default)]
    pub failed: Option<String>,
}

impl Hub {
    pub fn new() -> Arc<Hub> {
        Arc::new(Hub::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The sign-in as the step last recorded it, and the code a person may enter now.
    pub fn view(&self) -> HubView {
        let s = self.lock();
        HubView {
            record: s.record.clone(),
            pending: s.pending.clone(),
            failed: s.failed.clone(),
        }
    }

    /// Posts a new code (and wakes the supervisor), or withdraws a spent one quietly.
    fn post_code(&self, flow: u64, code: Option<PendingCode>) {
        let mut s = self.lock();
        if s.flow_id != flow {
            return;
        }
        let news = code.is_some();
        if news {
            s.failed = None;
        }
        s.pending = code;
        drop(s);
        if news {
            self.wake.notify_one();
        }
    }

    fn post_outcome(&self, flow: u64, outcome: FlowOutcome) {
        let mut s = self.lock();
        if s.flow_id != flow {
            return;
        }
        s.pending = None;
        s.outcome = Some(outcome);
        drop(s);
        self.wake.notify_one();
    }

    /// Starts counting a new flow's posts; every older flow's are ignored from now on.
    fn next_flow(&self) -> u64 {
        let mut s = self.lock();
        s.flow_id += 1;
        s.pending = None;
        s.outcome = None;
        s.flow_id
    }
}

/// The pause after a failed code request: it doubles from 30 s up to 15 min, so a
/// provider that is down is not hammered.
fn code_retry_wait(failures: u32) -> Duration {
    Duration::from_secs(30u64.saturating_mul(1 << failures.min(5)).min(900))
}

/// The longest a provider's Retry-After may park the flow.
const MAX_CODE_WAIT: Duration = Duration::from_secs(900);

/// A code that lived at least this long before expiring unused is replaced at once;
/// shorter-lived ones (a provider that answers `bad_verification_code`, a tiny
/// `device_code_timeout`) are replaced only after [`code_retry_wait`].
const QUICK_REPLACE_AFTER: Duration = Duration::from_secs(60);

/// The background device flow: asks for a code, posts it, polls; a code that expires
/// unused is replaced by a new one. Ends with a grant, a refusal, or `cancel`.
async fn run_flow(
    hub: Arc<Hub>,
    id: u64,
    http: reqwest::Client,
    settings: Settings,
    cancel: CancellationToken,
) {
    let mut failures = 0u32;
    let mut short_lived = 0u32;
    loop {
        let show = |code: &super::protocol::DeviceCode, window: Duration| {
            hub.post_code(
                id,
                Some(PendingCode {
                    user_code: code.user_code.clone(),
                    verification_uri: code.verification_uri.clone(),
                    verification_uri_complete: code.verification_uri_complete.clone(),
                    message: code.instructions(),
                    expires_at: Utc::now() + chrono::Duration::from_std(window).unwrap_or_default(),
                }),
            );
            tracing::warn!(user_code = %code.user_code, uri = %code.verification_uri, "sign-in required: a device code is waiting for a person");
        };
        match device::sign_in(&http, &settings, &cancel, show).await {
            Ok(tokens) => {
                hub.post_outcome(id, FlowOutcome::Granted(Box::new(tokens)));
                return;
            }
            Err(device::Attempt::NoCode(AuthError::Cancelled))
            | Err(device::Attempt::Polled {
                error: AuthError::Cancelled,
                ..
            }) => return,
            Err(device::Attempt::NoCode(e)) if e.kind().retry_may_cure() => {
                let wait = code_retry_wait(failures)
                    .max(e.kind().wait().unwrap_or_default())
                    .min(MAX_CODE_WAIT);
                failures += 1;
                tracing::warn!(error = %e, retry_in = %humantime::format_duration(wait), "cannot get a device code");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(wait) => continue,
                }
            }
            Err(device::Attempt::Polled { error: e, issued })
                if e.kind().retry_may_cure()
                    || matches!(
                        e,
                        AuthError::CodeExpired | AuthError::Deadline { .. } | AuthError::BadCode
                    ) =>
            {
                failures = 0;
                hub.post_code(id, None);
                let wait = if issued.elapsed() >= QUICK_REPLACE_AFTER || short_lived == 0 {
                    Duration::ZERO
                } else {
                    code_retry_wait(short_lived - 1)
                };
                if issued.elapsed() < QUICK_REPLACE_AFTER {
                    short_lived += 1;
                } else {
                    short_lived = 0;
                }
                tracing::info!(error = %e, wait = %humantime::format_duration(wait), "the device code was not used; a new one follows");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            Err(attempt) => {
                hub.post_outcome(id, FlowOutcome::Failed(attempt.into_error().to_string()));
                return;
            }
        }
    }
}

/// The sign-in step's session, shared with the steps after it that call Microsoft (the
/// mail queue): one token cache and one refresh lock per process. `None` while sign-in
/// is not configured.
#[derive(Clone, Default)]
pub struct SessionSlot(Rc<std::cell::RefCell<Option<Rc<Session>>>>);

impl SessionSlot {
    /// The session in use, if one is open.
    pub fn get(&self) -> Option<Rc<Session>> {
        self.0.borrow().clone()
    }

    fn set(&self, session: Option<Rc<Session>>) {
        *self.0.borrow_mut() = session;
    }
}

/// The sign-in cycle step.
pub struct SignInStep {
    hub: Arc<Hub>,
    shared: SessionSlot,
    session: Option<(Rc<Session>, String)>,
    /// The generation of the database record last read or written.
    generation: i64,
    loaded: bool,
    flow: Option<(CancellationToken, tokio::task::JoinHandle<()>)>,
    notified_code: Option<String>,
    /// A refresh failure was already announced (once per streak).
    failure_announced: bool,
}

impl SignInStep {
    /// The step, sharing its session through `shared`.
    pub fn new(hub: Arc<Hub>, shared: SessionSlot) -> SignInStep {
        SignInStep {
            hub,
            shared,
            session: None,
            generation: 0,
            loaded: false,
            flow: None,
            notified_code: None,
            failure_announced: false,
        }
    }

    fn stop_flow(&mut self) {
        if let Some((cancel, _)) = self.flow.take() {
            cancel.cancel();
        }
        // Whatever the stopped flow still posts is ignored.
        self.hub.next_flow();
    }

    fn flow_running(&mut self) -> bool {
        match &self.flow {
            Some((_, handle)) if !handle.is_finished() => true,
            Some(_) => {
                self.flow = None;
                false
            }
            None => false,
        }
    }

    async fn session(
        &mut self,
        ctx: &StepContext<'_>,
        settings: Settings,
    ) -> Result<Rc<Session>, StepError> {
        let key = format!(
            "{}|{}|{:?}|{:?}|{:?}|{:?}",
            settings.discovery_url,
            settings.client_id,
            ctx.config.auth,
            ctx.config.http,
            settings.graph_scopes,
            settings.exchange_scopes
        );
        if let Some((s, k)) = &self.session
            && *k == key
        {
            return Ok(s.clone());
        }
        // A new configuration: the old session and any flow of it are dropped.
        self.stop_flow();
        self.session = None;
        self.shared.set(None);
        self.loaded = false;
        let http = crate::http::client(&ctx.config.http)
            .map_err(|e| StepError::new(Kind::Fatal, crate::error::chain(&e)))?;
        let session = Session::open(settings, ctx.config, ctx.paths, http)
            .await
            .map_err(|e| StepError::of(&e))?;
        let backend = session.backend();
        tracing::info!(backend = %backend.kind, why = %backend.why, "token store chosen");
        if let Some(w) = &backend.warning {
            tracing::warn!("{w}");
        }
        let s = Rc::new(session);
        self.session = Some((s.clone(), key));
        self.shared.set(Some(s.clone()));
        Ok(s)
    }

    fn read_record(store: &Store) -> Result<(i64, SignInRecord), StepError> {
        let row = store
            .sign_in(SLOT)
            .map_err(|e| StepError::transient(crate::error::chain(&e)))?;
        Ok(match row {
            None => (0, SignInRecord::default()),
            Some(r) => (
                r.generation,
                serde_json::from_str(&r.record).unwrap_or_default(),
            ),
        })
    }

    fn write_record(
        &mut self,
        store: &mut Store,
        record: &SignInRecord,
        events: Vec<AuditEvent>,
    ) -> Result<(), StepError> {
        let text = serde_json::to_string(record).expect("records serialize");
        let written = store
            .save_sign_in(SLOT, &text, &events, Some(self.generation), Utc::now())
            .map_err(|e| StepError::transient(crate::error::chain(&e)))?;
        match written {
            Some(generation) => {
                self.generation = generation;
                self.hub.lock().record = Some(record.clone());
            }
            // The CLI changed the sign-in meanwhile (login, logout, import): its record
            // stands, and the next cycle starts from it.
            None => self.loaded = false,
        }
        Ok(())
    }

    fn notify(&self, ctx: &StepContext<'_>, event: Event) {
        let Some((session, _)) = &self.session else {
            return;
        };
        let notifier = Notifier::new(&ctx.config.notify, session.http().clone());
        if !notifier.is_configured() {
            return;
        }
        tokio::spawn(async move {
            notifier.fire(&event).await;
        });
    }

    async fn run_step(&mut self, ctx: &StepContext<'_>) -> Result<StepReport, StepError> {
        let settings = match Settings::from_config(ctx.config) {
            Ok(s) => s,
            Err(e) => {
                self.stop_flow();
                self.session = None;
                self.shared.set(None);
                return Ok(StepReport::idle(e.to_string()));
            }
        };
        let session = self.session(ctx, settings.clone()).await?;
        let now = Utc::now();
        let (generation, stored) = Self::read_record(&ctx.store.borrow())?;
        let mut record = stored.clone();
        let mut events = Vec::new();
        if !self.loaded || generation != self.generation {
            // First run, or the CLI changed the sign-in (login, logout, import).
            self.generation = generation;
            self.loaded = true;
            // A sign-in already known to need a person stays so until a new sign-in.
            let required = record.state == SignInState::SignInRequired;
            match session.reload().await {
                Ok(Some(fresh)) if !required => {
                    self.stop_flow();
                    record = fresh;
                }
                Ok(None) if !required => {
                    let ours = session.backend().kind.to_string();
                    if record.state == SignInState::SignedIn
                        && record.backend.as_deref().is_some_and(|b| b != ours)
                    {
                        // `auto` chose differently in another process (a shell without
                        // the session bus, say): its tokens are where this one cannot see.
                        self.loaded = false;
                        return Err(StepError {
                            message: format!(
                                "the sign-in was stored in the {} token store, but this daemon uses the {ours} store ({}); set [auth] token_store so both agree, then sign in again",
                                record.backend.as_deref().unwrap_or(""),
                                session.backend().why
                            ),
                            kind: Kind::Fatal,
                        });
                    }
                    self.stop_flow();
                    record = SignInRecord::default();
                }
                Ok(_) => {}
                Err(e) if e.kind() == Kind::SignIn => {
                    let reason = crate::error::chain(&e);
                    tracing::error!(error = %reason, "the stored tokens cannot be used");
                    require(&mut record, &reason, now);
                    events.push(
                        AuditEvent::new(Operation::LoginRequired)
                            .details(serde_json::json!({"reason": reason}))
                            .failed(reason.clone()),
                    );
                    self.notify(
                        ctx,
                        Event::TokenRefreshFailed {
                            resource: "all".into(),
                            error: reason.clone(),
                            account: None,
                        },
                    );
                }
                Err(e) => {
                    self.loaded = false;
                    return Err(StepError::transient(crate::error::chain(&e)));
                }
            }
        }
        // News from the background flow.
        let (outcome, pending) = {
            let mut s = self.hub.lock();
            (s.outcome.take(), s.pending.clone())
        };
        match outcome {
            Some(FlowOutcome::Granted(tokens)) => {
                match session.complete_sign_in(*tokens, now).await {
                    Ok(fresh) => {
                        let account = fresh.account_label();
                        events.push(fresh.login_event("device_code", "daemon"));
                        tracing::info!(%account, "signed in");
                        self.notify(ctx, Event::LoginSucceeded { account });
                        record = fresh;
                        self.notified_code = None;
                        self.failure_announced = false;
                    }
                    Err(e) => {
                        let reason = crate::error::chain(&e);
                        match session.record().await.filter(|_| session.has_unsaved()) {
                            Some(fresh) => {
                                // Signed in, but the tokens are only in memory: the next
                                // refresh stores them before anything else.
                                tracing::error!(error = %reason, "the new tokens could not be stored yet");
                                let mut event = fresh.login_event("device_code", "daemon");
                                event.details["stored"] = false.into();
                                events.push(event);
                                record = SignInRecord {
                                    last_error: Some(reason),
                                    ..fresh
                                };
                            }
                            None => {
                                events.push(
                                    AuditEvent::new(Operation::LoginFailed).failed(reason.clone()),
                                );
                                record.last_error = Some(reason);
                            }
                        }
                    }
                }
            }
            Some(FlowOutcome::Failed(reason)) => {
                self.hub.lock().failed = Some(reason.clone());
                events.push(AuditEvent::new(Operation::LoginFailed).failed(reason.clone()));
                record.last_error = Some(reason);
            }
            None => {}
        }
        if record.state == SignInState::SignInRequired {
            record.pending = pending.clone();
            if let Some(p) = &pending
                && self.notified_code.as_deref() != Some(p.user_code.as_str())
            {
                self.notified_code = Some(p.user_code.clone());
                self.notify(
                    ctx,
                    Event::LoginRequired {
                        user_code: p.user_code.clone(),
                        verification_uri: p.verification_uri.clone(),
                        verification_uri_complete: p.verification_uri_complete.clone(),
                        message: p.message.clone(),
                        expires_at: p.expires_at,
                        account: record.account.as_ref().map(|a| a.label()),
                        reason: record.required_reason.clone().unwrap_or_default(),
                    },
                );
            }
        }
        let result = match record.state {
            SignInState::SignedOut => Ok(StepReport::idle("not signed in: run `imm-daemon login`")),
            SignInState::SignInRequired => {
                let declined = events.iter().any(|e| e.operation == Operation::LoginFailed);
                if ctx.wake.is_some() && !declined && !self.flow_running() {
                    let cancel = ctx.cancel.child_token();
                    let id = self.hub.next_flow();
                    let handle = tokio::spawn(run_flow(
                        self.hub.clone(),
                        id,
                        session.http().clone(),
                        settings.clone(),
                        cancel.clone(),
                    ));
                    self.flow = Some((cancel, handle));
                }
                let reason = record
                    .required_reason
                    .clone()
                    .unwrap_or_else(|| "sign-in required".into());
                let message = match &record.pending {
                    Some(p) => format!("sign-in required ({reason}): {}", p.message),
                    None if ctx.wake.is_some() && !declined => {
                        format!("sign-in required ({reason}): a device code is being requested")
                    }
                    None => format!("sign-in required ({reason}): run `imm-daemon login`"),
                };
                Err(StepError::new(Kind::SignIn, message))
            }
            SignInState::SignedIn => {
                self.refresh_all(ctx, &session, &mut record, &mut events, now)
                    .await
            }
        };
        let record = record.with_backend(session.backend());
        if record != stored || !events.is_empty() {
            self.write_record(&mut ctx.store.borrow_mut(), &record, events)?;
        } else {
            self.hub.lock().record = Some(record);
        }
        result
    }

    async fn refresh_all(
        &mut self,
        ctx: &StepContext<'_>,
        session: &Session,
        record: &mut SignInRecord,
        events: &mut Vec<AuditEvent>,
        now: DateTime<Utc>,
    ) -> Result<StepReport, StepError> {
        let account = record.account_label();
        let mut refreshed = 0u64;
        let mut kept = 0u64;
        for resource in Resource::ALL {
            let forced = resource == Resource::Graph && session.keep_alive_due(now).await;
            let got = if forced {
                session.refresh(resource, now).await
            } else {
                session.access_token(resource, now).await
            };
            match got {
                Ok(access) if access.refreshed => {
                    refreshed += 1;
                    events.push(
                        AuditEvent::new(Operation::TokenRefresh)
                            .identity(account.clone())
                            .details(serde_json::json!({
                                "resource": resource.as_str(),
                                "result": "ok",
                                "expires_at": crate::time::stamp(access.expires_at),
                                "keep_alive": forced,
                            })),
                    );
                }
                Ok(access) if access.deferred.is_none() => kept += 1,
                Ok(access) => {
                    let reason = access.deferred.unwrap_or_default();
                    events.push(
                        AuditEvent::new(Operation::TokenRefresh)
                            .identity(account.clone())
                            .details(serde_json::json!({"resource": resource.as_str(), "result": "deferred"}))
                            .failed(reason.clone()),
                    );
                    record.last_error = Some(reason.clone());
                    return Err(StepError::transient(format!(
                        "{resource} token refresh failed; its access token stays in use until {}: {reason}",
                        crate::time::stamp(access.expires_at)
                    )));
                }
                Err(AuthError::NotSignedIn) => {
                    // Another process signed out (`logout`) since this cycle began.
                    self.stop_flow();
                    *record = SignInRecord::default();
                    return Ok(StepReport::idle("signed out"));
                }
                Err(e) => {
                    let reason = crate::error::chain(&e);
                    events.push(
                        AuditEvent::new(Operation::TokenRefresh)
                            .identity(account.clone())
                            .details(serde_json::json!({"resource": resource.as_str(), "result": "failed"}))
                            .failed(reason.clone()),
                    );
                    if let Some(fresh) = session.record().await {
                        *record = SignInRecord {
                            last_error: record.last_error.clone(),
                            ..fresh
                        };
                    }
                    record.last_error = Some(reason.clone());
                    if !self.failure_announced || e.kind() == Kind::SignIn {
                        self.failure_announced = true;
                        self.notify(
                            ctx,
                            Event::TokenRefreshFailed {
                                resource: resource.as_str().into(),
                                error: reason.clone(),
                                account: Some(account.clone()),
                            },
                        );
                    }
                    // Only this resource may refuse the sign-in (consent or a Conditional
                    // Access policy for it alone, which a new device sign-in for Graph
                    // would not mend), or the refresh token itself is gone (revoked,
                    // expired: `invalid_grant`, whatever resource asked).
                    let whole_sign_in = e.kind() == Kind::SignIn
                        && (resource == Resource::Graph || e.refresh_token_rejected());
                    if e.kind() == Kind::SignIn && !whole_sign_in {
                        return Err(StepError::new(
                            Kind::Refused,
                            format!(
                                "{resource} refused the sign-in ({reason}); grant consent for its scopes or check Conditional Access for it"
                            ),
                        ));
                    }
                    if e.kind() == Kind::SignIn {
                        require(record, &reason, now);
                        events.push(
                            AuditEvent::new(Operation::LoginRequired)
                                .identity(account.clone())
                                .details(serde_json::json!({"resource": resource.as_str(), "reason": reason}))
                                .failed(reason.clone()),
                        );
                        tracing::error!(%account, error = %reason, "sign-in required");
                        // Next cycle starts the device flow; wake it now.
                        if let Some(w) = ctx.wake {
                            w.notify_one();
                        }
                        return Err(StepError::new(
                            Kind::SignIn,
                            format!("sign-in required: {reason}"),
                        ));
                    }
                    return Err(StepError::new(e.kind(), reason));
                }
            }
        }
        self.failure_announced = false;
        if let Some(fresh) = session.record().await {
            *record = fresh;
        }
        let mut report = StepReport {
            summary: format!(
                "signed in as {account}: {refreshed} token(s) refreshed, {kept} still fresh"
            ),
            ..StepReport::default()
        };
        report.counts.insert("refreshed".into(), refreshed);
        Ok(report)
    }
}

fn require(record: &mut SignInRecord, reason: &str, now: DateTime<Utc>) {
    if record.state != SignInState::SignInRequired {
        record.required_since = Some(now);
    }
    record.state = SignInState::SignInRequired;
    record.required_reason = Some(reason.to_string());
}

impl CycleStep for SignInStep {
    fn name(&self) -> &'static str {
        STEP_NAME
    }

    fn run<'a>(&'a mut self, ctx: &'a StepContext<'a>) -> StepFuture<'a> {
        Box::pin(self.run_step(ctx))
    }
}

impl Drop for SignInStep {
    fn drop(&mut self) {
        self.stop_flow();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_requests_back_off_to_a_quarter_hour() {
        assert_eq!(code_retry_wait(0), Duration::from_secs(30));
        assert_eq!(code_retry_wait(1), Duration::from_secs(60));
        assert_eq!(code_retry_wait(4), Duration::from_secs(480));
        assert_eq!(code_retry_wait(5), Duration::from_secs(900));
        assert_eq!(code_retry_wait(40), Duration::from_secs(900));
    }
}
