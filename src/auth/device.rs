//! The device authorization grant (RFC 8628) as Microsoft implements it: ask for a code,
//! then poll the token endpoint at the provider's pace until the person approves,
//! declines, or the code runs out.
//!
//! Polling follows MSAL: only `authorization_pending` and `slow_down` continue (the
//! latter adding 5 s to the interval, for good); every other answer ends the flow. A
//! network failure or a 5xx during polling is waited out at the current interval. After
//! a grant the loop ends at once: some providers revoke the whole grant when a used
//! device code is presented again.
//!
//! [`sign_in`] is the whole attempt, shared by `imm-daemon login` and the daemon's
//! background flow: each shows the code its own way and does its own bookkeeping with
//! the tokens.

use std::time::Duration;

use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

use super::protocol::{self, DeviceCode, Endpoints, PollAnswer, TokenResponse};
use super::{AuthError, Resource, Settings, post_form};
use crate::error::Classify as _;

/// The grant type of a device code poll.
pub const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// How much slower to poll after `slow_down` (RFC 8628 section 3.5).
const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);

/// How a device sign-in attempt ended without tokens.
#[derive(Debug)]
pub enum Attempt {
    /// No code was issued: the discovery or the code request failed.
    NoCode(AuthError),
    /// A code was shown, at `issued`; the polling ended without a grant.
    Polled {
        error: AuthError,
        issued: tokio::time::Instant,
    },
}

impl Attempt {
    pub fn into_error(self) -> AuthError {
        match self {
            Attempt::NoCode(e) | Attempt::Polled { error: e, .. } => e,
        }
    }
}

/// One device sign-in: discovers the provider's endpoints, asks for a code for Graph's
/// scopes, hands it to `show` with the time it stays usable (at most
/// `device_code_timeout`), then polls until the person finishes, that time passes, or
/// `cancel` fires. The tokens returned are not yet stored: the caller completes the
/// sign-in ([`super::Session::complete_sign_in`]) and records it its own way.
pub async fn sign_in(
    http: &reqwest::Client,
    settings: &Settings,
    cancel: &CancellationToken,
    show: impl FnOnce(&DeviceCode, Duration),
) -> Result<TokenResponse, Attempt> {
    let scope = settings.scope(Resource::Graph);
    let ask = async {
        let endpoints = super::discover(http, &settings.discovery_url).await?;
        let code = request_code(http, &endpoints, &settings.client_id, &scope).await?;
        Ok::<_, AuthError>((endpoints, code))
    };
    let (endpoints, code) = tokio::select! {
        _ = cancel.cancelled() => return Err(Attempt::NoCode(AuthError::Cancelled)),
        r = ask => r.map_err(Attempt::NoCode)?,
    };
    let issued = tokio::time::Instant::now();
    show(&code, settings.device_code_timeout.min(code.expires_in));
    poll_for_tokens(
        http,
        &endpoints,
        &settings.client_id,
        &code,
        settings.device_code_timeout,
        cancel,
    )
    .await
    .map_err(|error| Attempt::Polled { error, issued })
}

/// Asks the provider for a device code.
pub async fn request_code(
    http: &reqwest::Client,
    endpoints: &Endpoints,
    client_id: &str,
    scope: &str,
) -> Result<DeviceCode, AuthError> {
    let (status, _, body) = post_form(
        http,
        "the device code request",
        &endpoints.device_authorization_endpoint,
        &[("client_id", client_id), ("scope", scope)],
    )
    .await?;
    protocol::parse_device_authorization(status, &body)
}

/// Polls until the person finishes, `limit` passes (capped by the code's own
/// lifetime), or `cancel` fires. Each wait comes before its poll, as the RFC asks.
pub async fn poll_for_tokens(
    http: &reqwest::Client,
    endpoints: &Endpoints,
    client_id: &str,
    code: &DeviceCode,
    limit: Duration,
    cancel: &CancellationToken,
) -> Result<TokenResponse, AuthError> {
    let window = limit.min(code.expires_in);
    let deadline = tokio::time::Instant::now() + window;
    let mut interval = code.interval;
    // The wait before the next poll: the interval, or longer once after a Retry-After.
    let mut next_wait = interval;
    loop {
        let wake = tokio::time::Instant::now() + next_wait;
        next_wait = interval;
        if wake > deadline {
            // The next poll would fall after the deadline: the code is as good as gone.
            tokio::select! {
                _ = cancel.cancelled() => return Err(AuthError::Cancelled),
                _ = tokio::time::sleep_until(deadline) => return Err(AuthError::Deadline { after: window }),
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return Err(AuthError::Cancelled),
            _ = tokio::time::sleep_until(wake) => {}
        }
        let answer = post_form(
            http,
            "a device code poll",
            &endpoints.token_endpoint,
            &[
                ("grant_type", DEVICE_GRANT),
                ("client_id", client_id),
                ("device_code", code.device_code.expose_secret()),
                ("client_info", "1"),
            ],
        )
        .await
        .and_then(|(status, retry_after, body)| {
            protocol::parse_token_answer("the sign-in", status, &body, retry_after)
        });
        match protocol::classify_poll(answer) {
            Ok(PollAnswer::Granted(tokens)) => return Ok(*tokens),
            Ok(PollAnswer::Pending) => {}
            Ok(PollAnswer::SlowDown) => {
                interval += SLOW_DOWN_STEP;
                next_wait = interval;
                tracing::debug!(interval = ?interval, "the provider asked to poll more slowly");
            }
            Err(e) if e.kind().retry_may_cure() => {
                tracing::warn!(error = %e, "a device code poll failed; polling on");
                if let Some(wait) = e.kind().wait() {
                    next_wait = interval.max(wait);
                }
            }
            Err(e) => return Err(e),
        }
    }
}
