//! Exchange Online's admin REST endpoint, `POST {exchange_url}/adminapi/beta/{tenant}/
//! InvokeCommand`: the one module that knows its wire, and the live sync of inactive
//! mailboxes built on it ([`sync`]).
//!
//! This is the endpoint the ExchangeOnlineManagement PowerShell module runs cmdlets
//! through. It is not a published contract, so everything about it is kept here: the
//! headers (the same `X-AnchorMailbox` and the listing's cookies on every page), paging by
//! POSTing the same body to `@odata.nextLink`, and the classification of every answer
//! (see `shared/reference/exchange-online-admin.md`): 401 renews the token once; a 403's
//! body is never read (it is NUL bytes, sometimes labelled gzip) and its reason comes
//! from `x-ms-diagnostics`; 400 and 404 carry their text in `details[0].message`; 429,
//! 5xx, the per-tenant concurrency message (whatever its status), transient server
//! exceptions, a dropped connection and a cut-off or non-JSON body are waited out
//! (`Retry-After` in any form, else exponential backoff with jitter), bounded per request
//! (`[sync] request_attempts`) and per sync (`[sync] max_wait`).

pub mod sync;

use std::cell::{Cell, RefCell};
use std::time::Duration;

use chrono::Utc;
use reqwest::StatusCode;
use reqwest::header::{self, HeaderMap};
use secrecy::ExposeSecret;
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use crate::auth::{AuthError, Resource, Session};
use crate::error::{Classify, Kind};

/// Server exceptions Exchange raises for passing conditions, by name.
const TRANSIENT_EXCEPTIONS: &[&str] = &[
    "DCOverloadedException",
    "SuitabilityDirectoryException",
    "ServerInMMException",
    "ADServerSettingsChangedException",
    "StorageTransientException",
];

/// The text of the per-tenant concurrency limit; its status code varies.
const CONCURRENCY_TEXT: &str = "maximum number of concurrent requests per tenant";

/// The text of a continuation Exchange no longer honours.
const PAGINATION_TEXT: &str = "Expired or Invalid pagination request";

/// The warning of a listing cut short by ResultSize.
const MORE_RESULTS_TEXT: &str = "There are more results available";

/// Restarts of a listing from its first page after an expired link, per sync.
pub const MAX_RESTARTS: u32 = 2;

/// The largest answer read: a page of 1,000 full Get-Mailbox records is about 5 MiB.
pub const MAX_ANSWER_BYTES: usize = 64 << 20;

/// Pages one listing may take: 1,000,000 mailboxes in pages of 10.
pub const MAX_PAGES: u32 = 100_000;

/// Words in an `@adminapi.warnings` entry that say results were left out; such a warning
/// makes the listing incomplete (it would otherwise remove the mailboxes left out).
const INCOMPLETE_WORDS: &[&str] = &[
    "more results",
    "not all",
    "incomplete",
    "partial",
    "truncat",
    "unavailable",
    "could not be",
    "couldn't be",
];

/// The Exchange role the sync needs, named in 403 errors.
const ROLE_HINT: &str = "the signed-in admin needs an Exchange role that may run Get-Mailbox and Get-MailboxStatistics, such as View-Only Recipients (in the View-Only Organization Management role group) or Mail Recipients";

/// Why an Exchange call failed. Retry logic reads [`ExchangeError::is_retryable`],
/// never the text.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("{what}: {detail}")]
    Transport { what: &'static str, detail: String },
    #[error("{what}: Exchange is throttling (HTTP {status}){}", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Throttled {
        what: &'static str,
        status: u16,
        message: Option<String>,
        retry_after: Option<Duration>,
    },
    #[error("{what}: Exchange failed (HTTP {status}){}", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Server {
        what: &'static str,
        status: u16,
        message: Option<String>,
        retry_after: Option<Duration>,
    },
    #[error("{what}: the answer is not what Exchange sends: {detail}")]
    Malformed { what: &'static str, detail: String },
    /// The answer was larger than [`MAX_ANSWER_BYTES`]: not retried.
    #[error("{what}: the answer is larger than {} MiB; no page of Exchange's is", MAX_ANSWER_BYTES >> 20)]
    TooLarge { what: &'static str },
    /// The sync cannot be set up (no tenant known, a bad URL): a person must act.
    #[error("{0}")]
    Setup(String),
    #[error("{what}: Exchange refused the access token (HTTP 401){}", if *claims { "; it asks for a claims challenge (a conditional access or MFA policy): sign in again with `imm-daemon login`; answering claims challenges silently is not supported yet" } else { "" })]
    Unauthorized { what: &'static str, claims: bool },
    #[error("{what}: Exchange denied it (HTTP 403): {reason}; {ROLE_HINT}")]
    Forbidden { what: &'static str, reason: String },
    #[error("{what}: Exchange refused it (HTTP {status}): {message}")]
    Refused {
        what: &'static str,
        status: u16,
        message: String,
    },
    #[error("{what}: not found: {message}")]
    NotFound { what: &'static str, message: String },
    #[error("{what}: {message}")]
    PaginationExpired { what: &'static str, message: String },
    #[error(
        "the listing's links expired {restarts} times; it was restarted {MAX_RESTARTS} times and given up for this sync"
    )]
    TooManyRestarts { restarts: u32 },
    #[error("{what}: Exchange's next-page link points away from {expected}: {link}")]
    ForeignLink {
        what: &'static str,
        expected: String,
        link: String,
    },
    #[error("{what}: Exchange said the listing is incomplete: {warning}")]
    Incomplete { what: &'static str, warning: String },
    #[error(
        "{what}: the listing did not end after {pages} pages (a next-page link repeated, or more pages than any tenant has)"
    )]
    Endless { what: &'static str, pages: u32 },
    #[error("{what}: gave up after {attempts} attempt(s)")]
    GaveUp {
        what: &'static str,
        attempts: u32,
        #[source]
        last: Box<ExchangeError>,
    },
    #[error("{what}: waiting {} more would pass the sync's limit of {} ([sync] max_wait)", humantime::format_duration(*wait), humantime::format_duration(*budget))]
    OutOfTime {
        what: &'static str,
        wait: Duration,
        budget: Duration,
        #[source]
        last: Box<ExchangeError>,
    },
    #[error("mailbox record {record} of page {page}")]
    Record {
        page: u32,
        record: usize,
        #[source]
        source: crate::inventory::FieldError,
    },
    #[error("the sync was stopped")]
    Cancelled,
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The listing would remove more of the cache than `[sync] max_removed_share`.
    #[error(transparent)]
    TooManyRemovals(#[from] crate::inventory::TooManyRemovals),
}

impl ExchangeError {
    /// Waiting and repeating the same request may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ExchangeError::Transport { .. }
                | ExchangeError::Throttled { .. }
                | ExchangeError::Server { .. }
                | ExchangeError::Malformed { .. }
        )
    }

    /// The wait the service asked for, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ExchangeError::Throttled { retry_after, .. }
            | ExchangeError::Server { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

impl crate::error::Classify for ExchangeError {
    /// Throttling is rate limited; a refused access token needs a sign-in; a missing
    /// role or a removal past the guard's limit is refused until a person acts; a sync
    /// that cannot be set up is our side's; a request given up means what its last
    /// failure meant; the rest (the network, a 5xx, an odd answer, an expired listing)
    /// may clear at the next sync. A sign-in failure keeps its kind when it asks for a
    /// new sign-in or a wait; any other (a client the provider refuses, a broken token
    /// store) is the sign-in step's to report, and here counts as transient, so that
    /// the sync keeps what it applied and tries again.
    fn kind(&self) -> Kind {
        match self {
            ExchangeError::Auth(e) => match e.kind() {
                k @ (Kind::SignIn | Kind::Transient | Kind::RateLimited { .. }) => k,
                Kind::Refused | Kind::Fatal => Kind::Transient,
            },
            ExchangeError::Throttled { retry_after, .. } => {
                Kind::RateLimited { wait: *retry_after }
            }
            ExchangeError::Unauthorized { .. } => Kind::SignIn,
            ExchangeError::Forbidden { .. } | ExchangeError::TooManyRemovals(_) => Kind::Refused,
            ExchangeError::Setup(_) => Kind::Fatal,
            ExchangeError::GaveUp { last, .. } | ExchangeError::OutOfTime { last, .. } => {
                last.kind()
            }
            _ => Kind::Transient,
        }
    }
}

/// How patient requests are: tries per request, waits in all, the first backoff.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub attempts: u32,
    pub max_wait: Duration,
    /// The first wait when the service names none; doubled each time, up to a minute.
    pub first_backoff: Duration,
}

impl Policy {
    pub fn from_config(cfg: &crate::config::SyncConfig) -> Policy {
        Policy {
            attempts: cfg.request_attempts.get(),
            max_wait: cfg.max_wait.get(),
            first_backoff: Duration::from_secs(2),
        }
    }

    /// The wait before try `attempt + 1`: Retry-After when given, else 2 s doubling
    /// (as the PowerShell module does) up to a minute, with jitter (half to all of it)
    /// so that clients throttled together do not return together.
    fn wait(&self, attempt: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
        if let Some(d) = retry_after {
            return d;
        }
        let full = self
            .first_backoff
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(10))
            .min(Duration::from_secs(60));
        full.mul_f64(0.5 + jitter.clamp(0.0, 1.0) / 2.0)
    }
}

/// What the client did, for the sync's record and progress.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub requests: u64,
    /// Waits for throttling or a passing failure.
    pub waits: u64,
    pub waited: Duration,
    pub renewals: u64,
}

/// Cookies Exchange set during one listing, sent back on its later pages.
#[derive(Debug, Default)]
struct Cookies(Vec<(String, String)>);

impl Cookies {
    fn absorb(&mut self, headers: &HeaderMap) {
        for v in headers.get_all(header::SET_COOKIE) {
            let Ok(v) = v.to_str() else { continue };
            let pair = v.split(';').next().unwrap_or_default();
            if let Some((name, value)) = pair.split_once('=') {
                let (name, value) = (name.trim(), value.trim());
                if name.is_empty() {
                    continue;
                }
                match self.0.iter_mut().find(|(n, _)| n == name) {
                    Some(slot) => slot.1 = value.to_string(),
                    None => self.0.push((name.to_string(), value.to_string())),
                }
            }
        }
    }

    fn header(&self) -> Option<String> {
        (!self.0.is_empty()).then(|| {
            self.0
                .iter()
                .map(|(n, v)| format!("{n}={v}"))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }
}

/// One page of a listing as it arrives.
pub enum PageEvent {
    /// The listing starts again from its first page: forget the pages seen.
    Restart,
    /// A page's records, sidecar keys and all.
    Page {
        number: u32,
        records: Vec<Map<String, Value>>,
    },
}

/// What a listing took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Listing {
    pub pages: u32,
    pub restarts: u32,
    pub records: u64,
}

/// A client of one tenant's admin endpoint for one sync, signed in through `session`.
pub struct Exchange<'a> {
    http: reqwest::Client,
    /// `{exchange_url}/adminapi/beta/{tenant}`.
    base: String,
    origin: url::Origin,
    session: &'a Session,
    anchor: String,
    connection_id: String,
    page_size: u32,
    policy: Policy,
    cancel: &'a CancellationToken,
    counters: Cell<Counters>,
    /// Calls in flight allowed now: halved on throttling, grown back on success.
    limit: Cell<usize>,
    max_limit: usize,
    /// Successes since the limit last changed.
    calm: Cell<u32>,
    /// Told of each wait (for progress displays).
    on_wait: RefCell<Option<WaitHook<'a>>>,
}

/// Told of each wait, with the counters then.
type WaitHook<'a> = Box<dyn FnMut(Counters) + 'a>;

/// A random GUID, as `client-request-id` and `connection-id` carry.
fn new_guid() -> String {
    uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes())
        .into_uuid()
        .hyphenated()
        .to_string()
}

/// The text worth showing from an error body: `details[0].message` (`Ex…|Type|text`
/// becomes `text (Type)`), else `error.message`, else the start of the body.
fn error_text(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let error = v.get("error")?;
    let raw = error
        .pointer("/details/0/message")
        .and_then(Value::as_str)
        .or_else(|| error.get("message").and_then(Value::as_str))?;
    let parts: Vec<&str> = raw.splitn(3, '|').collect();
    Some(match parts.as_slice() {
        [_, kind, text] if !kind.is_empty() => {
            let kind = kind.rsplit('.').next().unwrap_or(kind);
            format!("{} ({kind})", text.trim())
        }
        _ => raw.trim().to_string(),
    })
}

/// The reason in `x-ms-diagnostics: 2000008;reason="...";error_category="..."`.
fn diagnostics_reason(headers: &HeaderMap) -> String {
    let Some(v) = headers
        .get("x-ms-diagnostics")
        .and_then(|v| v.to_str().ok())
    else {
        return "Exchange gave no reason (no x-ms-diagnostics header)".into();
    };
    match v.split_once("reason=\"") {
        Some((_, rest)) => rest.split('"').next().unwrap_or(rest).to_string(),
        None => v.trim().to_string(),
    }
}

/// Whether a 401's `WWW-Authenticate` carries a claims challenge.
fn has_claims_challenge(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("claims=") || v.contains("insufficient_claims"))
}

/// An excerpt of text for an error message, cut at a character boundary.
fn excerpt(s: &str) -> String {
    let s = s.trim();
    match s.char_indices().nth(120) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

impl<'a> Exchange<'a> {
    /// A client for the tenant `tenant_id` at `exchange_url`, anchored on `anchor`
    /// (`UPN:{admin}`).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        http: reqwest::Client,
        exchange_url: &str,
        tenant_id: &str,
        anchor: String,
        session: &'a Session,
        page_size: u32,
        concurrency: usize,
        policy: Policy,
        cancel: &'a CancellationToken,
    ) -> Result<Exchange<'a>, ExchangeError> {
        let base = format!(
            "{}/adminapi/beta/{tenant_id}",
            exchange_url.trim_end_matches('/')
        );
        let origin = url::Url::parse(&base)
            .map_err(|e| {
                ExchangeError::Setup(format!("the Exchange URL {base} is not a URL: {e}"))
            })?
            .origin();
        Ok(Exchange {
            http,
            base,
            origin,
            session,
            anchor,
            connection_id: new_guid(),
            page_size,
            policy,
            cancel,
            counters: Cell::new(Counters::default()),
            limit: Cell::new(concurrency.max(1)),
            max_limit: concurrency.max(1),
            calm: Cell::new(0),
            on_wait: RefCell::new(None),
        })
    }

    /// Calls `f` after each wait, with the counters then.
    pub fn on_wait(&self, f: impl FnMut(Counters) + 'a) {
        *self.on_wait.borrow_mut() = Some(Box::new(f));
    }

    pub fn counters(&self) -> Counters {
        self.counters.get()
    }

    /// Calls allowed in flight now.
    pub fn limit(&self) -> usize {
        self.limit.get()
    }

    fn count(&self, f: impl FnOnce(&mut Counters)) {
        let mut c = self.counters.get();
        f(&mut c);
        self.counters.set(c);
    }

    /// One POST, its answer classified. `Ok`: a JSON object.
    async fn once(
        &self,
        url: &str,
        body: &Value,
        token: &secrecy::SecretString,
        cookies: Option<&RefCell<Cookies>>,
        what: &'static str,
    ) -> Result<Map<String, Value>, ExchangeError> {
        self.count(|c| c.requests += 1);
        let mut req = self
            .http
            .post(url)
            .bearer_auth(token.expose_secret())
            .header("X-AnchorMailbox", &self.anchor)
            .header("Prefer", format!("odata.maxpagesize={}", self.page_size))
            .header("client-request-id", new_guid())
            .header("connection-id", &self.connection_id)
            .header(header::ACCEPT, "application/json")
            .json(body);
        if let Some(c) = cookies.and_then(|c| c.borrow().header()) {
            req = req.header(header::COOKIE, c);
        }
        let transport = |e: reqwest::Error| ExchangeError::Transport {
            what,
            detail: crate::http::describe(&e),
        };
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        let headers = resp.headers().clone();
        if let Some(c) = cookies {
            c.borrow_mut().absorb(&headers);
        }
        let retry_after = crate::http::retry_after(&headers, Utc::now());
        if status == StatusCode::UNAUTHORIZED {
            return Err(ExchangeError::Unauthorized {
                what,
                claims: has_claims_challenge(&headers),
            });
        }
        if status == StatusCode::FORBIDDEN {
            // The body is NUL bytes, sometimes labelled gzip: never read it.
            let reason = diagnostics_reason(&headers);
            if reason.contains(CONCURRENCY_TEXT) {
                return Err(ExchangeError::Throttled {
                    what,
                    status: 403,
                    message: Some(reason),
                    retry_after,
                });
            }
            return Err(ExchangeError::Forbidden { what, reason });
        }
        let mut resp = resp;
        let mut bytes: Vec<u8> = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    if bytes.len() + chunk.len() > MAX_ANSWER_BYTES {
                        return Err(ExchangeError::TooLarge { what });
                    }
                    bytes.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(ExchangeError::Transport {
                        what,
                        detail: format!("the answer was cut off: {}", crate::http::describe(&e)),
                    });
                }
            }
        }
        let message = error_text(&bytes);
        let said = |text: &str| {
            message.as_deref().is_some_and(|m| m.contains(text))
                || (!status.is_success()
                    && bytes.len() < 64 * 1024
                    && String::from_utf8_lossy(&bytes).contains(text))
        };
        if said(CONCURRENCY_TEXT) {
            return Err(ExchangeError::Throttled {
                what,
                status: status.as_u16(),
                message,
                retry_after,
            });
        }
        if status.is_success() {
            return match serde_json::from_slice::<Value>(&bytes) {
                Ok(Value::Object(map)) => Ok(map),
                Ok(_) => Err(ExchangeError::Malformed {
                    what,
                    detail: "a JSON answer that is not an object".into(),
                }),
                Err(e) => Err(ExchangeError::Malformed {
                    what,
                    detail: format!(
                        "not JSON ({e}), starting `{}`",
                        excerpt(&String::from_utf8_lossy(&bytes[..bytes.len().min(200)]))
                    ),
                }),
            };
        }
        let code = status.as_u16();
        if code == 429 {
            return Err(ExchangeError::Throttled {
                what,
                status: code,
                message,
                retry_after,
            });
        }
        if said(PAGINATION_TEXT) {
            return Err(ExchangeError::PaginationExpired {
                what,
                message: message.unwrap_or_else(|| PAGINATION_TEXT.into()),
            });
        }
        if status.is_server_error() || TRANSIENT_EXCEPTIONS.iter().any(|n| said(n)) {
            return Err(ExchangeError::Server {
                what,
                status: code,
                message,
                retry_after,
            });
        }
        let message = message.unwrap_or_else(|| {
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).to_string();
            if text.trim().is_empty() {
                "no details given".into()
            } else {
                excerpt(&text)
            }
        });
        if code == 404 {
            return Err(ExchangeError::NotFound { what, message });
        }
        Err(ExchangeError::Refused {
            what,
            status: code,
            message,
        })
    }

    /// One request with the sync's patience: a 401 renews the token once; passing
    /// failures are waited out within the policy's bounds.
    async fn invoke(
        &self,
        url: &str,
        body: &Value,
        cookies: Option<&RefCell<Cookies>>,
        what: &'static str,
    ) -> Result<Map<String, Value>, ExchangeError> {
        let mut attempt = 0u32;
        let mut renewed = false;
        loop {
            if self.cancel.is_cancelled() {
                return Err(ExchangeError::Cancelled);
            }
            attempt += 1;
            let access = self
                .session
                .access_token(Resource::Exchange, Utc::now())
                .await?;
            let result = tokio::select! {
                r = self.once(url, body, &access.token, cookies, what) => r,
                _ = self.cancel.cancelled() => return Err(ExchangeError::Cancelled),
            };
            let e = match result {
                Ok(v) => {
                    self.calmer();
                    return Ok(v);
                }
                Err(e) => e,
            };
            match e {
                ExchangeError::Unauthorized { claims: false, .. } if !renewed => {
                    renewed = true;
                    attempt -= 1;
                    self.count(|c| c.renewals += 1);
                    tracing::info!("{what}: Exchange refused the access token; renewing it once");
                    self.session
                        .renew(Resource::Exchange, &access.token, Utc::now())
                        .await?;
                }
                e if e.is_retryable() => {
                    if matches!(e.kind(), Kind::RateLimited { .. }) {
                        self.throttled();
                    }
                    if attempt >= self.policy.attempts {
                        return Err(ExchangeError::GaveUp {
                            what,
                            attempts: attempt,
                            last: Box::new(e),
                        });
                    }
                    let wait = self.policy.wait(attempt, e.retry_after(), fastrand::f64());
                    let spent = self.counters.get().waited;
                    if spent + wait > self.policy.max_wait {
                        return Err(ExchangeError::OutOfTime {
                            what,
                            wait,
                            budget: self.policy.max_wait,
                            last: Box::new(e),
                        });
                    }
                    tracing::warn!(
                        attempt,
                        wait = %humantime::format_duration(Duration::from_millis(wait.as_millis() as u64)),
                        "{}; waiting before trying again",
                        crate::error::chain(&e)
                    );
                    self.count(|c| {
                        c.waits += 1;
                        c.waited += wait;
                    });
                    if let Some(f) = self.on_wait.borrow_mut().as_mut() {
                        f(self.counters.get());
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.cancel.cancelled() => return Err(ExchangeError::Cancelled),
                    }
                }
                e => return Err(e),
            }
        }
    }

    fn throttled(&self) {
        let now = self.limit.get();
        let halved = (now / 2).max(1);
        if halved < now {
            tracing::info!(
                from = now,
                to = halved,
                "Exchange is throttling: fewer calls in flight"
            );
        }
        self.limit.set(halved);
        self.calm.set(0);
    }

    fn calmer(&self) {
        let calm = self.calm.get() + 1;
        if calm >= 20 && self.limit.get() < self.max_limit {
            self.limit.set(self.limit.get() + 1);
            self.calm.set(0);
        } else {
            self.calm.set(calm);
        }
    }

    /// Lists the inactive mailboxes (`Get-Mailbox -InactiveMailboxOnly -ResultSize
    /// Unlimited`, only the properties in `select`), handing each page to `on_page` as it
    /// arrives. An expired link restarts the listing from its first page (at most
    /// [`MAX_RESTARTS`] times), after `on_page` was told to forget what it has: two
    /// listings are never spliced.
    pub async fn list_inactive_mailboxes(
        &self,
        select: &[String],
        mut on_page: impl FnMut(PageEvent) -> Result<(), ExchangeError>,
    ) -> Result<Listing, ExchangeError> {
        const WHAT: &str = "listing the inactive mailboxes";
        let body = json!({"CmdletInput": {"CmdletName": "Get-Mailbox", "Parameters": {
            "InactiveMailboxOnly": true,
            "ResultSize": "Unlimited",
        }}});
        let first = format!("{}/InvokeCommand?$select={}", self.base, select.join(","));
        let mut listing = Listing::default();
        'listing: loop {
            let cookies = RefCell::new(Cookies::default());
            let mut url = first.clone();
            let mut page = 0u32;
            let mut links = std::collections::HashSet::new();
            loop {
                page += 1;
                let answer = match self.invoke(&url, &body, Some(&cookies), WHAT).await {
                    Err(ExchangeError::PaginationExpired { message, .. }) if page > 1 => {
                        if listing.restarts >= MAX_RESTARTS {
                            return Err(ExchangeError::TooManyRestarts {
                                restarts: listing.restarts + 1,
                            });
                        }
                        listing.restarts += 1;
                        tracing::warn!(
                            page,
                            "{WHAT}: {message}; starting the listing again from its first page"
                        );
                        listing.records = 0;
                        on_page(PageEvent::Restart)?;
                        continue 'listing;
                    }
                    other => other?,
                };
                listing.pages += 1;
                let next = match answer.get("@odata.nextLink") {
                    None | Some(Value::Null) => None,
                    Some(Value::String(s)) => Some(s.clone()),
                    Some(other) => {
                        return Err(ExchangeError::Malformed {
                            what: WHAT,
                            detail: format!(
                                "a next-page link that is not text: {}",
                                excerpt(&other.to_string())
                            ),
                        });
                    }
                };
                let warnings: Vec<String> = answer
                    .get("@adminapi.warnings")
                    .and_then(Value::as_array)
                    .map(|w| {
                        w.iter()
                            .filter_map(|v| v.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                for w in &warnings {
                    // "More results available" is expected on a page that has a next one.
                    let expected = next.is_some() && w.contains(MORE_RESULTS_TEXT);
                    let lower = w.to_lowercase();
                    if !expected && INCOMPLETE_WORDS.iter().any(|x| lower.contains(x)) {
                        return Err(ExchangeError::Incomplete {
                            what: WHAT,
                            warning: excerpt(w),
                        });
                    }
                    if !expected {
                        tracing::warn!(page, "{WHAT}: Exchange warns: {}", excerpt(w));
                    }
                }
                let records: Vec<Map<String, Value>> = match answer.get("value") {
                    Some(Value::Array(items)) => items
                        .iter()
                        .map(|v| match v {
                            Value::Object(m) => Ok(m.clone()),
                            other => Err(ExchangeError::Malformed {
                                what: WHAT,
                                detail: format!(
                                    "a record that is not an object: {}",
                                    excerpt(&other.to_string())
                                ),
                            }),
                        })
                        .collect::<Result<_, _>>()?,
                    _ => {
                        return Err(ExchangeError::Malformed {
                            what: WHAT,
                            detail: "the answer has no `value` list".into(),
                        });
                    }
                };
                drop(answer);
                listing.records += records.len() as u64;
                on_page(PageEvent::Page {
                    number: page,
                    records,
                })?;
                match next {
                    None => return Ok(listing),
                    Some(link) => {
                        if page >= MAX_PAGES || !links.insert(link.clone()) {
                            return Err(ExchangeError::Endless {
                                what: WHAT,
                                pages: page,
                            });
                        }
                        let same = url::Url::parse(&link)
                            .map(|u| u.origin() == self.origin)
                            .unwrap_or(false);
                        if !same {
                            return Err(ExchangeError::ForeignLink {
                                what: WHAT,
                                expected: self.origin.ascii_serialization(),
                                link: excerpt(&link),
                            });
                        }
                        url = link;
                    }
                }
            }
        }
    }

    /// One mailbox's size and item count (`Get-MailboxStatistics -Identity <guid>
    /// -IncludeSoftDeletedRecipients`). `Ok(None)`: Exchange no longer knows it.
    pub async fn mailbox_statistics(
        &self,
        exchange_guid: &str,
    ) -> Result<Option<(Option<u64>, Option<u64>)>, ExchangeError> {
        const WHAT: &str = "reading mailbox statistics";
        let body = json!({"CmdletInput": {"CmdletName": "Get-MailboxStatistics", "Parameters": {
            "Identity": exchange_guid,
            "IncludeSoftDeletedRecipients": true,
        }}});
        let url = format!("{}/InvokeCommand", self.base);
        let answer = match self.invoke(&url, &body, None, WHAT).await {
            Ok(a) => a,
            // Only Exchange's own "no such object" means the mailbox is gone; any other
            // 404 (a proxy's page, a wrong path) is an error.
            Err(ExchangeError::NotFound { message, .. })
                if message.contains("ManagementObjectNotFoundException") =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let Some(record) = answer
            .get("value")
            .and_then(Value::as_array)
            .and_then(|v| v.first())
            .and_then(Value::as_object)
        else {
            return Err(ExchangeError::Malformed {
                what: WHAT,
                detail: "no statistics record in the answer".into(),
            });
        };
        let get = |name: &str| {
            record
                .iter()
                .find(|(k, _)| !k.contains('@') && k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v)
        };
        let size = match get("TotalItemSize") {
            Some(v) => {
                crate::inventory::parse_item_size(v).map_err(|m| ExchangeError::Malformed {
                    what: WHAT,
                    detail: format!("TotalItemSize: {m}"),
                })?
            }
            None => None,
        };
        let items = match get("ItemCount") {
            Some(v) => {
                crate::inventory::parse_item_count(v).map_err(|m| ExchangeError::Malformed {
                    what: WHAT,
                    detail: format!("ItemCount: {m}"),
                })?
            }
            None => None,
        };
        if size.is_none() && items.is_none() {
            return Err(ExchangeError::Malformed {
                what: WHAT,
                detail: "the record has neither TotalItemSize nor ItemCount".into(),
            });
        }
        Ok(Some((size, items)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_texts_come_from_details_first() {
        let body = br#"{"error":{"code":"NotFound","message":"outer","details":[{"message":"Ex6F9304|Microsoft.Exchange.Management.Tasks.ManagementObjectNotFoundException|The operation couldn't be performed because object 'x' couldn't be found."}]}}"#;
        assert_eq!(
            error_text(body).unwrap(),
            "The operation couldn't be performed because object 'x' couldn't be found. (ManagementObjectNotFoundException)"
        );
        let body = br#"{"error":{"code":"BadRequest","message":"outer","details":[{"message":"|Microsoft.Exchange.Management.RestApiClient.RestClientException|Expired or Invalid pagination request. Default Expiry time is 00:30:00"}]}}"#;
        assert!(error_text(body).unwrap().starts_with(PAGINATION_TEXT));
        let body = br#"{"error":{"code":"X","message":"plain words"}}"#;
        assert_eq!(error_text(body).unwrap(), "plain words");
        assert_eq!(error_text(b"\0\0\0"), None);
        assert_eq!(error_text(b"<html>oops</html>"), None);
    }

    #[test]
    fn diagnostics_and_claims_are_read_from_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-ms-diagnostics",
            "2000008;reason=\"The user does not have the required role.\";error_category=\"insufficient_auth_permissions\""
                .parse()
                .unwrap(),
        );
        assert_eq!(
            diagnostics_reason(&h),
            "The user does not have the required role."
        );
        assert!(diagnostics_reason(&HeaderMap::new()).contains("no x-ms-diagnostics"));
        let mut h = HeaderMap::new();
        h.insert(
            header::WWW_AUTHENTICATE,
            "Bearer error=\"insufficient_claims\", claims=\"eyJ4Ijp7fX0=\""
                .parse()
                .unwrap(),
        );
        assert!(has_claims_challenge(&h));
        let mut h = HeaderMap::new();
        h.insert(
            header::WWW_AUTHENTICATE,
            "Bearer error=\"invalid_token\"".parse().unwrap(),
        );
        assert!(!has_claims_challenge(&h));
    }

    #[test]
    fn cookies_are_kept_by_name_and_sent_back() {
        let mut c = Cookies::default();
        assert_eq!(c.header(), None);
        let mut h = HeaderMap::new();
        h.append(
            header::SET_COOKIE,
            "exchangecookie=abc; path=/; secure; HttpOnly"
                .parse()
                .unwrap(),
        );
        h.append(header::SET_COOKIE, "other=1".parse().unwrap());
        c.absorb(&h);
        let mut h = HeaderMap::new();
        h.append(
            header::SET_COOKIE,
            "exchangecookie=def; path=/".parse().unwrap(),
        );
        c.absorb(&h);
        assert_eq!(c.header().unwrap(), "exchangecookie=def; other=1");
    }

    #[test]
    fn waits_follow_retry_after_else_double_with_jitter() {
        let p = Policy {
            attempts: 6,
            max_wait: Duration::from_secs(900),
            first_backoff: Duration::from_secs(2),
        };
        let s = Duration::from_secs;
        assert_eq!(
            p.wait(1, Some(Duration::from_millis(1500)), 0.3),
            Duration::from_millis(1500)
        );
        assert_eq!(p.wait(1, None, 1.0), s(2));
        assert_eq!(p.wait(1, None, 0.0), s(1));
        assert_eq!(p.wait(3, None, 1.0), s(8));
        assert_eq!(p.wait(30, None, 1.0), s(60));
        for attempt in 1..8 {
            let w = p.wait(attempt, None, fastrand::f64());
            assert!(w >= s(1) && w <= s(60), "{w:?}");
        }
    }

    #[test]
    fn guids_are_random_and_well_formed() {
        let (a, b) = (new_guid(), new_guid());
        assert_ne!(a, b);
        assert!(uuid::Uuid::try_parse(&a).is_ok() && a.len() == 36);
    }
}
