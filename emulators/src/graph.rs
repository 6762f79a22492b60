//! Microsoft Graph v1.0 mail as a sender sees it, under `{base}/v1.0`: create a draft
//! (`POST /users/{sender}/messages`), send it (`POST /users/{sender}/messages/{id}/send`),
//! send in one call (`POST /users/{sender}/sendMail`), and find a message again by its
//! `internetMessageId` in Sent Items or Drafts
//! (`GET /users/{sender}/mailFolders/{sentitems|drafts}/messages?$filter=...`), with
//! Graph's error bodies, `request-id` and `client-request-id` headers and bearer tokens.
//!
//! Test controls act as a struggling service ([`fail_next`], [`fail_next_on`]: throttling
//! with `Retry-After` in any form, 503, 504, a 504 after the request was in fact carried
//! out, an expired token), a slow one ([`set_latency`]) or one slow to file sent mail
//! ([`set_submission_delay`]: sent messages wait in the Outbox, in neither Drafts nor
//! Sent Items); [`deliveries`] counts what was
//! sent per `internetMessageId`, and [`requests`] what clients asked, including the most
//! requests in flight at once per mailbox (Outlook allows 4).
//!
//! With a [`TokenChecker`] (such as [`IdentityProvider::token_checker`]) only unexpired,
//! unrevoked access tokens for `https://graph.microsoft.com` that the identity emulator
//! issued are accepted; without one, any non-empty bearer token is.
//!
//! Deliberate simplifications: nothing is delivered to an inbox, recipients are only
//! checked for an `@` and against [`GraphOptions::bad_domains`], permissions (scopes,
//! Send As) are not checked, and `$filter` understands only `internetMessageId eq '...'`.
//! As at Microsoft, a message gets a new `id` when it moves to Sent Items, so a client
//! cannot find a sent draft again by its draft id. Production code never depends on this
//! module: it only ever sees a base URL.
//!
//! [`fail_next`]: GraphServer::fail_next
//! [`fail_next_on`]: GraphServer::fail_next_on
//! [`set_latency`]: GraphServer::set_latency
//! [`set_submission_delay`]: GraphServer::set_submission_delay
//! [`deliveries`]: GraphServer::deliveries
//! [`requests`]: GraphServer::requests
//! [`IdentityProvider::token_checker`]: super::IdentityProvider::token_checker

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chrono::{SecondsFormat, Utc};
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::{AccessTokenInfo, Server, TestUser};

/// The audience an access token must carry.
const GRAPH_RESOURCE: &str = "https://graph.microsoft.com";
/// Larger than any request Graph accepts (4 MB), so the client meets Graph's limits, not
/// this server's.
const BODY_LIMIT: usize = 16 * 1024 * 1024;

/// What an identity emulator knows of an access token; `None`: it never issued it.
pub type TokenChecker = Arc<dyn Fn(&str) -> Option<AccessTokenInfo> + Send + Sync>;

/// How the emulated Graph is set up.
#[derive(Clone)]
pub struct GraphOptions {
    /// Mailboxes (user principal names, case-insensitive) that exist; any other answers
    /// 404 `ErrorInvalidUser`. Empty: every mailbox exists. Default: the identity
    /// emulator's test user.
    pub mailboxes: Vec<String>,
    /// Recipient domains Exchange refuses: 400 `ErrorInvalidRecipients`, as for an address
    /// without `@`. Default: `invalid.example`.
    pub bad_domains: Vec<String>,
    /// Checks bearer tokens; `None`: any non-empty bearer token is accepted.
    pub token_checker: Option<TokenChecker>,
    /// How long every request takes before it is answered (also [`GraphServer::set_latency`]).
    pub latency: Duration,
}

impl Default for GraphOptions {
    fn default() -> Self {
        GraphOptions {
            mailboxes: vec![TestUser::default().username],
            bad_domains: vec!["invalid.example".to_string()],
            token_checker: None,
            latency: Duration::ZERO,
        }
    }
}

impl std::fmt::Debug for GraphOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphOptions")
            .field("mailboxes", &self.mailboxes)
            .field("bad_domains", &self.bad_domains)
            .field("token_checker", &self.token_checker.is_some())
            .field("latency", &self.latency)
            .finish()
    }
}

/// The emulated endpoints, for [`GraphServer::fail_next_on`] and the request counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Endpoint {
    /// `POST /users/{sender}/messages`.
    CreateDraft,
    /// `POST /users/{sender}/messages/{id}/send`.
    SendDraft,
    /// `POST /users/{sender}/sendMail`.
    SendMail,
    /// `GET /users/{sender}/mailFolders/{folder}/messages`.
    Lookup,
}

/// How a queued request fails. Each is taken by one request, after its token was checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GraphFailure {
    /// 429 `TooManyRequests`, with this `Retry-After` verbatim (whole seconds such as "2",
    /// fractional such as "2.128", or an HTTP date); none when `None` or not a header value.
    Throttled { retry_after: Option<String> },
    /// 503 `ServiceNotAvailable`, with an optional `Retry-After` as for `Throttled`.
    ServiceUnavailable { retry_after: Option<String> },
    /// 504 from the gateway; the request is not carried out.
    GatewayTimeout,
    /// The request is carried out (a send delivers the mail), then the gateway answers 504.
    GatewayTimeoutAfterProcessing,
    /// 401 `InvalidAuthenticationToken`, as for a token that just expired.
    ExpiredToken,
    /// 403 `ErrorAccessDenied`, as for a mailbox the account may not send as.
    AccessDenied,
    /// 404 `ErrorItemNotFound`, as for a draft that has just left Drafts.
    ItemNotFound,
}

/// A message in a mailbox folder.
#[derive(Debug, Clone, Serialize)]
pub struct StoredMessage {
    /// Its Graph `id` (a new one once sent, as at Microsoft).
    pub id: String,
    /// The mailbox, as the client named it in the path.
    pub mailbox: String,
    pub internet_message_id: String,
    pub subject: String,
    /// Recipient addresses.
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub bcc: Vec<String>,
    /// Attachment names, in order.
    pub attachments: Vec<String>,
    /// The message as Graph returns it (attachments not included).
    pub json: Value,
}

/// Mails sent, counted per `internetMessageId`: more than 1 for one id is a duplicate.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Deliveries {
    pub total: usize,
    pub per_message: BTreeMap<String, usize>,
}

impl Deliveries {
    /// How many times the mail with this `internetMessageId` was sent.
    pub fn of(&self, internet_message_id: &str) -> usize {
        self.per_message
            .get(internet_message_id)
            .copied()
            .unwrap_or(0)
    }

    /// `internetMessageId`s sent more than once.
    pub fn duplicates(&self) -> Vec<String> {
        let many = self.per_message.iter().filter(|(_, n)| **n > 1);
        many.map(|(id, _)| id.clone()).collect()
    }
}

/// What clients did, counted since the start.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GraphStats {
    /// Every request that reached a mail endpoint, failed or not.
    pub total: usize,
    pub create_draft: usize,
    pub send_draft: usize,
    pub send_mail: usize,
    pub lookup: usize,
    /// Requests answered 401 (missing, unknown or expired token, or injected).
    pub unauthorized: usize,
    /// Requests answered by [`GraphFailure`] injection.
    pub injected_failures: usize,
    /// The most requests in flight at once, per mailbox (lowercased).
    pub max_in_flight: BTreeMap<String, usize>,
    /// The `client-request-id` of every request that carried one, in order.
    pub client_request_ids: Vec<String>,
}

impl GraphStats {
    /// The most requests in flight at once for any one mailbox.
    pub fn max_in_flight_per_mailbox(&self) -> usize {
        self.max_in_flight.values().copied().max().unwrap_or(0)
    }
}

/// A running emulated Microsoft Graph on 127.0.0.1. Dropping it stops the server.
pub struct GraphServer {
    shared: Arc<Shared>,
    _server: Server,
}

impl std::fmt::Debug for GraphServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphServer")
            .field("base_url", &self.shared.base)
            .finish_non_exhaustive()
    }
}

impl GraphServer {
    /// Starts the emulator on an ephemeral loopback port, served by the current runtime.
    pub async fn start(opts: GraphOptions) -> std::io::Result<GraphServer> {
        let (server, shared) = Server::start(|base| routes(opts, base)).await?;
        Ok(GraphServer {
            shared,
            _server: server,
        })
    }

    /// Starts the emulator on a thread of its own with its own runtime, for sync tests
    /// that drive the real binary.
    pub fn start_in_background(opts: GraphOptions) -> std::io::Result<GraphServer> {
        let (server, shared) =
            Server::start_in_background("sandbox-graph", |base| routes(opts, base))?;
        Ok(GraphServer {
            shared,
            _server: server,
        })
    }

    /// `http://127.0.0.1:PORT`: what a client is configured with, as it would be with
    /// `https://graph.microsoft.com`. The endpoints are under `{base}/v1.0`.
    pub fn base_url(&self) -> String {
        self.shared.base.clone()
    }

    /// Mails sent so far, per `internetMessageId`.
    pub fn deliveries(&self) -> Deliveries {
        self.shared.lock().deliveries.clone()
    }

    /// Messages in Drafts (every mailbox), oldest first.
    pub fn drafts(&self) -> Vec<StoredMessage> {
        self.shared.lock().folder(Folder::Drafts)
    }

    /// Messages in Sent Items (every mailbox), oldest first.
    pub fn sent(&self) -> Vec<StoredMessage> {
        let mut st = self.shared.lock();
        st.settle();
        st.folder(Folder::SentItems)
    }

    /// Sent messages spend this long in the Outbox, in neither Drafts nor Sent Items, as
    /// at Microsoft while Exchange submits them (usually seconds, minutes under load): a
    /// lookup right after a send whose answer was lost finds the mail nowhere.
    pub fn set_submission_delay(&self, delay: Duration) {
        self.shared.lock().submission_delay = delay;
    }

    /// The next `n` requests to any endpoint fail this way, after any already queued.
    pub fn fail_next(&self, n: usize, failure: GraphFailure) {
        let mut st = self.shared.lock();
        st.failures.extend(std::iter::repeat_n((None, failure), n));
    }

    /// The next `n` requests to this endpoint fail this way; other endpoints answer as
    /// usual (a draft is created, then its send fails).
    pub fn fail_next_on(&self, endpoint: Endpoint, n: usize, failure: GraphFailure) {
        let mut st = self.shared.lock();
        st.failures
            .extend(std::iter::repeat_n((Some(endpoint), failure), n));
    }

    /// How long every later request takes before it is answered.
    pub fn set_latency(&self, latency: Duration) {
        self.shared.lock().latency = latency;
    }

    /// A snapshot of the request counters.
    pub fn requests(&self) -> GraphStats {
        self.shared.lock().stats.clone()
    }
}

fn routes(opts: GraphOptions, base: String) -> (Router, Arc<Shared>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(Ledger {
            latency: opts.latency,
            ..Ledger::default()
        }),
        opts,
        base,
    });
    let app = Router::new()
        .route("/v1.0/users/{user}/messages", post(create_draft))
        .route("/v1.0/users/{user}/messages/{id}/send", post(send_draft))
        .route("/v1.0/users/{user}/sendMail", post(send_mail))
        .route(
            "/v1.0/users/{user}/mailFolders/{folder}/messages",
            get(lookup),
        )
        .fallback(unknown_segment)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(Arc::clone(&shared));
    (app, shared)
}

struct Shared {
    opts: GraphOptions,
    base: String,
    state: Mutex<Ledger>,
}

#[derive(Default)]
struct Ledger {
    latency: Duration,
    /// Every message in every mailbox, oldest first.
    messages: Vec<(Folder, StoredMessage)>,
    deliveries: Deliveries,
    failures: VecDeque<(Option<Endpoint>, GraphFailure)>,
    /// Requests in flight now, per mailbox (lowercased).
    in_flight: HashMap<String, usize>,
    stats: GraphStats,
    /// How long a sent message spends in the Outbox, in neither Drafts nor Sent Items.
    submission_delay: Duration,
    /// Sent messages on their way to Sent Items, with when they arrive there.
    outbox: Vec<(std::time::Instant, StoredMessage)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Folder {
    Drafts,
    SentItems,
}

impl Folder {
    /// Graph's well-known folder names, case-insensitive.
    fn parse(name: &str) -> Option<Folder> {
        match name.to_ascii_lowercase().as_str() {
            "drafts" => Some(Folder::Drafts),
            "sentitems" => Some(Folder::SentItems),
            _ => None,
        }
    }
}

impl Ledger {
    /// Moves the sent messages whose submission is over from the Outbox to Sent Items.
    fn settle(&mut self) {
        let now = std::time::Instant::now();
        let (arrived, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.outbox)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        self.outbox = waiting;
        self.messages
            .extend(arrived.into_iter().map(|(_, m)| (Folder::SentItems, m)));
    }

    /// A sent message goes to Sent Items, through the Outbox for the submission delay.
    fn file_sent(&mut self, message: StoredMessage) {
        if self.submission_delay.is_zero() {
            self.messages.push((Folder::SentItems, message));
        } else {
            let at = std::time::Instant::now() + self.submission_delay;
            self.outbox.push((at, message));
        }
    }

    fn folder(&self, folder: Folder) -> Vec<StoredMessage> {
        let found = self.messages.iter().filter(|(f, _)| *f == folder);
        found.map(|(_, m)| m.clone()).collect()
    }

    fn deliver(&mut self, internet_message_id: &str) {
        self.deliveries.total += 1;
        *self
            .deliveries
            .per_message
            .entry(internet_message_id.to_string())
            .or_default() += 1;
    }
}

/// The ids a response carries and an error body repeats.
struct Ids {
    request_id: String,
    client_request_id: String,
}

/// Why a request is refused, as Graph says it.
struct GraphError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// `Retry-After`, verbatim.
    retry_after: Option<String>,
}

impl GraphError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> GraphError {
        GraphError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    fn bad_request(code: &'static str, message: impl Into<String>) -> GraphError {
        GraphError::new(StatusCode::BAD_REQUEST, code, message)
    }

    fn unauthorized(message: &str) -> GraphError {
        GraphError::new(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            message,
        )
    }

    fn response(&self, ids: &Ids) -> Response {
        let body = json!({
            "error": {
                "code": self.code,
                "message": self.message,
                "innerError": {
                    "date": Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true),
                    "request-id": ids.request_id,
                    "client-request-id": ids.client_request_id,
                }
            }
        });
        let mut response = (self.status, Json(body)).into_response();
        if let Some(value) = self
            .retry_after
            .as_deref()
            .and_then(|v| HeaderValue::from_str(v).ok())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(
                    "Bearer realm=\"\", authorization_uri=\"https://login.microsoftonline.com/common/oauth2/authorize\", client_id=\"00000003-0000-0000-c000-000000000000\"",
                ),
            );
        }
        response
    }
}

/// Decrements the mailbox's in-flight count when the request is answered or dropped.
struct InFlight {
    shared: Arc<Shared>,
    mailbox: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        if let Some(n) = st.in_flight.get_mut(&self.mailbox) {
            *n = n.saturating_sub(1);
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Ledger> {
        // A test that panicked while holding the lock leaves the state usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn knows_mailbox(&self, mailbox: &str) -> bool {
        let known = &self.opts.mailboxes;
        known.is_empty() || known.iter().any(|m| m.eq_ignore_ascii_case(mailbox))
    }

    fn check_token(&self, headers: &HeaderMap) -> Result<(), GraphError> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .unwrap_or("");
        if token.is_empty() {
            return Err(GraphError::unauthorized("Access token is empty."));
        }
        let Some(checker) = &self.opts.token_checker else {
            return Ok(());
        };
        match checker(token) {
            None => Err(GraphError::unauthorized(
                "IDX14100: JWT is not well formed, there are no dots (.).",
            )),
            Some(info) if info.expired => Err(GraphError::unauthorized(
                "Lifetime validation failed, the token is expired.",
            )),
            Some(info) if info.revoked => {
                Err(GraphError::unauthorized("The token has been revoked."))
            }
            Some(info) if !info.resource.eq_ignore_ascii_case(GRAPH_RESOURCE) => {
                Err(GraphError::unauthorized("Invalid audience."))
            }
            Some(_) => Ok(()),
        }
    }

    /// Takes the first queued failure for this endpoint.
    fn take_failure(&self, endpoint: Endpoint) -> Option<GraphFailure> {
        let mut st = self.lock();
        let at = st
            .failures
            .iter()
            .position(|(only, _)| only.is_none_or(|e| e == endpoint))?;
        st.stats.injected_failures += 1;
        st.failures.remove(at).map(|(_, failure)| failure)
    }

    /// Everything every endpoint does around its own work: counting, latency, the token,
    /// injected failures, the mailbox, and the id headers.
    async fn serve(
        self: &Arc<Self>,
        endpoint: Endpoint,
        mailbox: &str,
        headers: &HeaderMap,
        work: impl FnOnce(&Shared, &str) -> Result<Response, GraphError>,
    ) -> Response {
        let ids = Ids {
            request_id: random_guid(),
            client_request_id: headers
                .get("client-request-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
                .unwrap_or_else(random_guid),
        };
        let key = mailbox.to_ascii_lowercase();
        let latency = {
            let mut st = self.lock();
            st.stats.total += 1;
            match endpoint {
                Endpoint::CreateDraft => st.stats.create_draft += 1,
                Endpoint::SendDraft => st.stats.send_draft += 1,
                Endpoint::SendMail => st.stats.send_mail += 1,
                Endpoint::Lookup => st.stats.lookup += 1,
            }
            if headers.contains_key("client-request-id") {
                st.stats
                    .client_request_ids
                    .push(ids.client_request_id.clone());
            }
            let now = {
                let n = st.in_flight.entry(key.clone()).or_default();
                *n += 1;
                *n
            };
            let max = st.stats.max_in_flight.entry(key.clone()).or_default();
            *max = (*max).max(now);
            st.latency
        };
        let _in_flight = InFlight {
            shared: Arc::clone(self),
            mailbox: key,
        };
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }

        let mut response = match self.answer(endpoint, mailbox, headers, work) {
            Ok(response) => response,
            Err(error) => {
                if error.status == StatusCode::UNAUTHORIZED {
                    self.lock().stats.unauthorized += 1;
                }
                error.response(&ids)
            }
        };
        let out = response.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&ids.request_id) {
            out.insert("request-id", v);
        }
        if let Ok(v) = HeaderValue::from_str(&ids.client_request_id) {
            out.insert("client-request-id", v);
        }
        response
    }

    fn answer(
        &self,
        endpoint: Endpoint,
        mailbox: &str,
        headers: &HeaderMap,
        work: impl FnOnce(&Shared, &str) -> Result<Response, GraphError>,
    ) -> Result<Response, GraphError> {
        self.check_token(headers)?;
        let failure = self.take_failure(endpoint);
        let process = |s: &Shared| {
            if !s.knows_mailbox(mailbox) {
                return Err(GraphError::new(
                    StatusCode::NOT_FOUND,
                    "ErrorInvalidUser",
                    format!("The requested user '{mailbox}' is invalid."),
                ));
            }
            work(s, mailbox)
        };
        match failure {
            None => process(self),
            Some(GraphFailure::Throttled { retry_after }) => Err(GraphError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequests",
                "Application is over its MailboxConcurrency limit.",
            )
            .with_retry_after(retry_after)),
            Some(GraphFailure::ServiceUnavailable { retry_after }) => Err(GraphError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceNotAvailable",
                "The service is temporarily unavailable. Please retry later.",
            )
            .with_retry_after(retry_after)),
            Some(GraphFailure::GatewayTimeout) => Err(gateway_timeout()),
            Some(GraphFailure::GatewayTimeoutAfterProcessing) => {
                let _ = process(self);
                Err(gateway_timeout())
            }
            Some(GraphFailure::ExpiredToken) => Err(GraphError::unauthorized(
                "Lifetime validation failed, the token is expired.",
            )),
            Some(GraphFailure::ItemNotFound) => Err(GraphError::new(
                StatusCode::NOT_FOUND,
                "ErrorItemNotFound",
                "The specified object was not found in the store.",
            )),
            Some(GraphFailure::AccessDenied) => Err(GraphError::new(
                StatusCode::FORBIDDEN,
                "ErrorAccessDenied",
                "Access is denied. Check credentials and try again.",
            )),
        }
    }

    fn create_draft(&self, mailbox: &str, body: &[u8]) -> Result<Response, GraphError> {
        let message = parse_object(body)?;
        let stored = self.new_message(mailbox, message, true)?;
        let json = stored.json.clone();
        self.lock().messages.push((Folder::Drafts, stored));
        Ok((StatusCode::CREATED, Json(json)).into_response())
    }

    fn send_draft(&self, mailbox: &str, id: &str) -> Result<Response, GraphError> {
        let mut st = self.lock();
        let at = st
            .messages
            .iter()
            .position(|(f, m)| {
                *f == Folder::Drafts && m.id == id && m.mailbox.eq_ignore_ascii_case(mailbox)
            })
            .ok_or_else(|| {
                GraphError::new(
                    StatusCode::NOT_FOUND,
                    "ErrorItemNotFound",
                    "The specified object was not found in the store.",
                )
            })?;
        let (_, mut message) = st.messages.remove(at);
        // Moving to Sent Items gives the message a new id, as at Microsoft.
        message.id = new_message_id();
        if let Some(obj) = message.json.as_object_mut() {
            obj.insert("id".into(), json!(message.id));
            obj.insert("isDraft".into(), json!(false));
            let now = now_text();
            obj.insert("sentDateTime".into(), json!(now));
            obj.insert("lastModifiedDateTime".into(), json!(now));
        }
        st.deliver(&message.internet_message_id);
        st.file_sent(message);
        Ok(StatusCode::ACCEPTED.into_response())
    }

    fn send_mail(&self, mailbox: &str, body: &[u8]) -> Result<Response, GraphError> {
        let mut request = parse_object(body)?;
        let Some(Value::Object(message)) = request.remove("message") else {
            return Err(GraphError::bad_request(
                "ErrorInvalidRequest",
                "Empty Payload. JSON content expected.",
            ));
        };
        let save = !matches!(request.get("saveToSentItems"), Some(Value::Bool(false)));
        let mut stored = self.new_message(mailbox, message, false)?;
        let mut st = self.lock();
        st.deliver(&stored.internet_message_id);
        if save {
            if let Some(obj) = stored.json.as_object_mut() {
                obj.insert("sentDateTime".into(), json!(now_text()));
            }
            st.file_sent(stored);
        }
        Ok(StatusCode::ACCEPTED.into_response())
    }

    fn lookup(
        &self,
        mailbox: &str,
        folder: &str,
        query: &HashMap<String, String>,
    ) -> Result<Response, GraphError> {
        let folder = Folder::parse(folder).ok_or_else(|| {
            GraphError::new(
                StatusCode::NOT_FOUND,
                "ErrorItemNotFound",
                "The specified object was not found in the store.",
            )
        })?;
        let wanted = match query.get("$filter") {
            None => None,
            Some(filter) => Some(parse_filter(filter).ok_or_else(|| {
                GraphError::bad_request("BadRequest", format!("Invalid filter clause: {filter}"))
            })?),
        };
        let select: Option<Vec<&str>> = query.get("$select").map(|s| {
            s.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect()
        });
        let mut st = self.lock();
        st.settle();
        let found = st.messages.iter().filter(|(f, m)| {
            *f == folder
                && m.mailbox.eq_ignore_ascii_case(mailbox)
                && wanted.as_deref().is_none_or(|w| w == m.internet_message_id)
        });
        let value: Vec<Value> = found
            .map(|(_, m)| match &select {
                None => m.json.clone(),
                Some(fields) => {
                    let mut out = Map::new();
                    out.insert("id".into(), json!(m.id));
                    for field in fields {
                        if let Some(v) = m.json.get(*field) {
                            out.insert((*field).to_string(), v.clone());
                        }
                    }
                    Value::Object(out)
                }
            })
            .collect();
        let context = format!(
            "{}/v1.0/$metadata#users('{}')/mailFolders('{}')/messages",
            self.base,
            mailbox,
            match folder {
                Folder::Drafts => "drafts",
                Folder::SentItems => "sentitems",
            }
        );
        Ok(Json(json!({ "@odata.context": context, "value": value })).into_response())
    }

    /// Validates a message and gives it what Graph adds: an id, an `internetMessageId`
    /// when it has none, the sender and times.
    fn new_message(
        &self,
        mailbox: &str,
        mut message: Map<String, Value>,
        draft: bool,
    ) -> Result<StoredMessage, GraphError> {
        let to = self.recipients(&message, "toRecipients")?;
        let cc = self.recipients(&message, "ccRecipients")?;
        let bcc = self.recipients(&message, "bccRecipients")?;
        if !draft && to.is_empty() && cc.is_empty() && bcc.is_empty() {
            return Err(GraphError::bad_request(
                "ErrorInvalidRecipients",
                "At least one recipient isn't valid., Recipient is missing.",
            ));
        }
        let attachments = attachment_names(message.remove("attachments"))?;
        let internet_message_id = match message.get("internetMessageId") {
            Some(Value::String(id)) if !id.is_empty() => id.clone(),
            Some(Value::String(_)) | None | Some(Value::Null) => {
                format!("<{}@emulated.prod.outlook.com>", random_token(24))
            }
            Some(_) => {
                return Err(GraphError::bad_request(
                    "RequestBodyRead",
                    "Cannot convert the literal to the expected type 'Edm.String'.",
                ));
            }
        };
        let subject = message
            .get("subject")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let id = new_message_id();
        let now = now_text();
        let address = json!({ "emailAddress": { "name": mailbox, "address": mailbox } });
        message.insert("id".into(), json!(id));
        message.insert("internetMessageId".into(), json!(internet_message_id));
        message.insert("subject".into(), json!(subject));
        message.insert("createdDateTime".into(), json!(now));
        message.insert("lastModifiedDateTime".into(), json!(now));
        message.insert("isDraft".into(), json!(draft));
        message.insert("hasAttachments".into(), json!(!attachments.is_empty()));
        message.insert("from".into(), address.clone());
        message.insert("sender".into(), address);
        for list in ["toRecipients", "ccRecipients", "bccRecipients"] {
            message.entry(list).or_insert_with(|| json!([]));
        }
        Ok(StoredMessage {
            id,
            mailbox: mailbox.to_string(),
            internet_message_id,
            subject,
            to,
            cc,
            bcc,
            attachments,
            json: Value::Object(message),
        })
    }

    /// The addresses of one recipient list; an invalid one refuses the whole message.
    fn recipients(
        &self,
        message: &Map<String, Value>,
        list: &str,
    ) -> Result<Vec<String>, GraphError> {
        let invalid = || {
            GraphError::bad_request(
                "ErrorInvalidRecipients",
                "At least one recipient isn't valid., A message can't be sent because it \
                 contains no recipients.",
            )
        };
        let entries = match message.get(list) {
            None | Some(Value::Null) => return Ok(Vec::new()),
            Some(Value::Array(entries)) => entries,
            Some(_) => return Err(invalid()),
        };
        let mut out = Vec::new();
        for entry in entries {
            let address = entry
                .pointer("/emailAddress/address")
                .and_then(Value::as_str)
                .unwrap_or("");
            let Some((local, domain)) = address.rsplit_once('@') else {
                return Err(invalid());
            };
            let refused = self
                .opts
                .bad_domains
                .iter()
                .any(|d| d.eq_ignore_ascii_case(domain));
            if local.is_empty() || domain.is_empty() || refused {
                return Err(invalid());
            }
            out.push(address.to_string());
        }
        Ok(out)
    }
}

impl GraphError {
    fn with_retry_after(mut self, retry_after: Option<String>) -> GraphError {
        self.retry_after = retry_after;
        self
    }
}

fn gateway_timeout() -> GraphError {
    GraphError::new(
        StatusCode::GATEWAY_TIMEOUT,
        "UnknownError",
        "The operation has timed out.",
    )
}

fn parse_object(body: &[u8]) -> Result<Map<String, Value>, GraphError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(GraphError::bad_request(
            "ErrorInvalidRequest",
            "Empty Payload. JSON content expected.",
        ));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(GraphError::bad_request(
            "RequestBodyRead",
            "Invalid JSON. A token was not recognized in the JSON content.",
        )),
    }
}

/// Names of inline file attachments, whose content must be base64.
fn attachment_names(attachments: Option<Value>) -> Result<Vec<String>, GraphError> {
    let entries = match attachments {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(entries)) => entries,
        Some(_) => {
            return Err(GraphError::bad_request(
                "RequestBodyRead",
                "Cannot read the attachments.",
            ));
        }
    };
    let mut names = Vec::new();
    for entry in entries {
        let kind = entry.get("@odata.type").and_then(Value::as_str);
        let name = entry.get("name").and_then(Value::as_str);
        let content = entry.get("contentBytes").and_then(Value::as_str);
        match (kind, name, content) {
            (Some("#microsoft.graph.fileAttachment"), Some(name), Some(content)) => {
                if STANDARD.decode(content).is_err() {
                    return Err(GraphError::bad_request(
                        "ErrorMimeContentInvalidBase64String",
                        "Invalid base64 string for MIME content.",
                    ));
                }
                names.push(name.to_string());
            }
            _ => {
                return Err(GraphError::bad_request(
                    "RequestBodyRead",
                    "A file attachment needs @odata.type, name and contentBytes.",
                ));
            }
        }
    }
    Ok(names)
}

/// `internetMessageId eq '<...>'`, OData quoting (`''` is one quote); `None` otherwise.
fn parse_filter(filter: &str) -> Option<String> {
    let (property, value) = filter.trim().split_once(" eq ")?;
    if !property.trim().eq_ignore_ascii_case("internetMessageId") {
        return None;
    }
    let inner = value.trim().strip_prefix('\'')?.strip_suffix('\'')?;
    // A lone quote inside would end the literal early.
    (!inner.replace("''", "").contains('\'')).then(|| inner.replace("''", "'"))
}

async fn create_draft(
    State(s): State<Arc<Shared>>,
    Path(user): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    s.serve(Endpoint::CreateDraft, &user, &headers, |s, m| {
        s.create_draft(m, &body)
    })
    .await
}

async fn send_draft(
    State(s): State<Arc<Shared>>,
    Path((user, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    s.serve(Endpoint::SendDraft, &user, &headers, |s, m| {
        s.send_draft(m, &id)
    })
    .await
}

async fn send_mail(
    State(s): State<Arc<Shared>>,
    Path(user): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    s.serve(Endpoint::SendMail, &user, &headers, |s, m| {
        s.send_mail(m, &body)
    })
    .await
}

async fn lookup(
    State(s): State<Arc<Shared>>,
    Path((user, folder)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    s.serve(Endpoint::Lookup, &user, &headers, |s, m| {
        s.lookup(m, &folder, &query)
    })
    .await
}

async fn unknown_segment(headers: HeaderMap) -> Response {
    let ids = Ids {
        request_id: random_guid(),
        client_request_id: headers
            .get("client-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .unwrap_or_else(random_guid),
    };
    GraphError::bad_request(
        "BadRequest",
        "Resource not found for the segment (the emulator knows only the mail endpoints).",
    )
    .response(&ids)
}

fn now_text() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// An opaque id in the style of Exchange's (`AAMkAG...`).
fn new_message_id() -> String {
    let bytes: Vec<u8> = (0..66).map(|_| fastrand::u8(..)).collect();
    format!("AAMkAG{}", URL_SAFE_NO_PAD.encode(bytes))
}

fn random_token(len: usize) -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    (0..len)
        .map(|_| char::from(CHARS[fastrand::usize(..CHARS.len())]))
        .collect()
}

fn random_guid() -> String {
    let bytes: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{IdentityOptions, IdentityProvider, TEST_CLIENT_ID};

    const SENDER: &str = "adele.vance@contoso.onmicrosoft.com";
    const TOKEN: &str = "any-token";

    struct Answer {
        status: u16,
        headers: reqwest::header::HeaderMap,
        body: Value,
        text: String,
    }

    fn client() -> reqwest::Client {
        {
            let _ = rustls::crypto::ring::default_provider().install_default();
            reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap()
        }
    }

    async fn answer(response: reqwest::Response) -> Answer {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            body,
            text,
        }
    }

    fn url(g: &GraphServer, path: &str) -> String {
        format!("{}/v1.0/users/{SENDER}{path}", g.base_url())
    }

    async fn post_json(c: &reqwest::Client, url: &str, token: &str, body: &Value) -> Answer {
        let request = c.post(url).bearer_auth(token).json(body);
        answer(request.send().await.unwrap()).await
    }

    async fn send(c: &reqwest::Client, g: &GraphServer, id: &str) -> Answer {
        let request = c
            .post(url(g, &format!("/messages/{id}/send")))
            .bearer_auth(TOKEN)
            .header(header::CONTENT_LENGTH, "0");
        answer(request.send().await.unwrap()).await
    }

    async fn lookup(c: &reqwest::Client, g: &GraphServer, folder: &str, imid: &str) -> Answer {
        let filter = format!("internetMessageId eq '{imid}'");
        let mut target =
            url::Url::parse(&url(g, &format!("/mailFolders/{folder}/messages"))).unwrap();
        target
            .query_pairs_mut()
            .append_pair("$filter", &filter)
            .append_pair("$select", "id,subject");
        let request = c.get(target).bearer_auth(TOKEN);
        answer(request.send().await.unwrap()).await
    }

    fn message(imid: &str, to: &str) -> Value {
        json!({
            "subject": "Quarterly report",
            "body": { "contentType": "Text", "content": "Attached." },
            "toRecipients": [{ "emailAddress": { "address": to } }],
            "internetMessageId": imid,
            "attachments": [{
                "@odata.type": "#microsoft.graph.fileAttachment",
                "name": "report.csv",
                "contentType": "text/csv",
                "contentBytes": STANDARD.encode("a,b\n1,2\n"),
            }],
        })
    }

    fn assert_graph_error(a: &Answer, status: u16, code: &str) {
        assert_eq!(a.status, status, "{}", a.text);
        assert_eq!(a.body["error"]["code"], code, "{}", a.text);
        assert!(a.body["error"]["message"].as_str().is_some(), "{}", a.text);
        let inner = &a.body["error"]["innerError"];
        assert_eq!(
            inner["request-id"],
            a.headers["request-id"].to_str().unwrap()
        );
        assert_eq!(
            inner["client-request-id"],
            a.headers["client-request-id"].to_str().unwrap()
        );
        assert!(inner["date"].as_str().unwrap().ends_with('Z'), "{}", a.text);
    }

    async fn graph() -> GraphServer {
        GraphServer::start(GraphOptions::default()).await.unwrap()
    }

    #[tokio::test]
    async fn a_draft_is_found_then_sent_once_and_moves_to_sent_items() {
        let g = graph().await;
        let c = client();
        let imid = "<q1.report@imm-daemon.test>";
        let created = post_json(
            &c,
            &url(&g, "/messages"),
            TOKEN,
            &message(imid, "megan@contoso.com"),
        )
        .await;
        assert_eq!(created.status, 201, "{}", created.text);
        let id = created.body["id"].as_str().unwrap().to_string();
        assert_eq!(created.body["internetMessageId"], imid);
        assert_eq!(created.body["isDraft"], true);
        assert_eq!(created.body["hasAttachments"], true);
        assert_eq!(g.drafts().len(), 1);
        assert_eq!(g.drafts()[0].attachments, ["report.csv"]);

        let in_drafts = lookup(&c, &g, "drafts", imid).await;
        assert_eq!(in_drafts.status, 200, "{}", in_drafts.text);
        assert_eq!(in_drafts.body["value"][0]["id"], id.as_str());
        assert_eq!(in_drafts.body["value"][0]["subject"], "Quarterly report");
        assert!(in_drafts.body["value"][0].get("body").is_none(), "$select");
        let not_sent = lookup(&c, &g, "sentitems", imid).await;
        assert_eq!(not_sent.body["value"], json!([]));
        assert_eq!(g.deliveries().of(imid), 0);

        let sent = send(&c, &g, &id).await;
        assert_eq!(sent.status, 202, "{}", sent.text);
        assert_eq!((g.deliveries().of(imid), g.deliveries().total), (1, 1));
        assert!(g.drafts().is_empty());
        assert_eq!(g.sent().len(), 1);
        assert_eq!(
            lookup(&c, &g, "drafts", imid).await.body["value"],
            json!([])
        );
        let in_sent = lookup(&c, &g, "SentItems", imid).await;
        let found = &in_sent.body["value"][0];
        assert!(found["id"].as_str().is_some_and(|new| new != id), "new id");

        // The draft id is gone: sending it again cannot deliver twice.
        assert_graph_error(&send(&c, &g, &id).await, 404, "ErrorItemNotFound");
        assert_eq!(g.deliveries().of(imid), 1);
        let stats = g.requests();
        assert_eq!(
            (stats.create_draft, stats.send_draft, stats.lookup),
            (1, 2, 4)
        );
    }

    #[tokio::test]
    async fn send_mail_counts_a_delivery_and_generates_an_internet_message_id() {
        let g = graph().await;
        let c = client();
        let body = json!({ "message": message("<one@imm-daemon.test>", "megan@contoso.com") });
        let a = post_json(&c, &url(&g, "/sendMail"), TOKEN, &body).await;
        assert_eq!(a.status, 202, "{}", a.text);
        assert_eq!(g.deliveries().of("<one@imm-daemon.test>"), 1);

        let mut plain = message("", "megan@contoso.com");
        plain.as_object_mut().unwrap().remove("internetMessageId");
        let body = json!({ "message": plain, "saveToSentItems": false });
        let a = post_json(&c, &url(&g, "/sendMail"), TOKEN, &body).await;
        assert_eq!(a.status, 202, "{}", a.text);
        let deliveries = g.deliveries();
        assert_eq!((deliveries.total, deliveries.per_message.len()), (2, 2));
        assert!(deliveries.duplicates().is_empty());
        assert_eq!(g.sent().len(), 1, "saveToSentItems false keeps no copy");
        assert_eq!(g.requests().send_mail, 2);
    }

    #[tokio::test]
    async fn retry_after_comes_back_verbatim_in_each_form() {
        let g = graph().await;
        let c = client();
        let date = "Wed, 21 Oct 2015 07:28:00 GMT";
        for value in ["2", "2.128", date] {
            g.fail_next(
                1,
                GraphFailure::Throttled {
                    retry_after: Some(value.to_string()),
                },
            );
        }
        g.fail_next(
            1,
            GraphFailure::ServiceUnavailable {
                retry_after: Some("5".to_string()),
            },
        );
        g.fail_next(1, GraphFailure::Throttled { retry_after: None });
        g.fail_next(1, GraphFailure::GatewayTimeout);
        let draft = message("<t@imm-daemon.test>", "megan@contoso.com");
        for value in ["2", "2.128", date] {
            let a = post_json(&c, &url(&g, "/messages"), TOKEN, &draft).await;
            assert_graph_error(&a, 429, "TooManyRequests");
            assert_eq!(a.headers[header::RETRY_AFTER], value);
        }
        let a = post_json(&c, &url(&g, "/messages"), TOKEN, &draft).await;
        assert_graph_error(&a, 503, "ServiceNotAvailable");
        assert_eq!(a.headers[header::RETRY_AFTER], "5");
        let a = post_json(&c, &url(&g, "/messages"), TOKEN, &draft).await;
        assert_graph_error(&a, 429, "TooManyRequests");
        assert!(a.headers.get(header::RETRY_AFTER).is_none());
        let a = post_json(&c, &url(&g, "/messages"), TOKEN, &draft).await;
        assert_graph_error(&a, 504, "UnknownError");
        assert!(g.drafts().is_empty(), "failed requests did nothing");
        let a = post_json(&c, &url(&g, "/messages"), TOKEN, &draft).await;
        assert_eq!(a.status, 201, "{}", a.text);
        let stats = g.requests();
        assert_eq!((stats.injected_failures, stats.create_draft), (6, 7));
    }

    #[tokio::test]
    async fn a_504_after_the_send_has_delivered_the_mail() {
        let g = graph().await;
        let c = client();
        let imid = "<ambiguous@imm-daemon.test>";
        g.fail_next_on(
            Endpoint::SendDraft,
            1,
            GraphFailure::GatewayTimeoutAfterProcessing,
        );
        let draft = message(imid, "megan@contoso.com");
        let created = post_json(&c, &url(&g, "/messages"), TOKEN, &draft).await;
        assert_eq!(created.status, 201, "only the send fails");
        let a = send(&c, &g, created.body["id"].as_str().unwrap()).await;
        assert_graph_error(&a, 504, "UnknownError");
        assert_eq!(g.deliveries().of(imid), 1, "delivered nonetheless");
        let found = lookup(&c, &g, "sentitems", imid).await;
        assert_eq!(found.body["value"].as_array().unwrap().len(), 1);

        g.fail_next_on(
            Endpoint::SendMail,
            1,
            GraphFailure::GatewayTimeoutAfterProcessing,
        );
        let body = json!({ "message": message("<direct@imm-daemon.test>", "a@b.example") });
        let a = post_json(&c, &url(&g, "/sendMail"), TOKEN, &body).await;
        assert_eq!(a.status, 504);
        assert_eq!(g.deliveries().of("<direct@imm-daemon.test>"), 1);
    }

    #[tokio::test]
    async fn invalid_recipients_and_unknown_mailboxes_are_refused() {
        let g = graph().await;
        let c = client();
        for to in ["not-an-address", "someone@invalid.example"] {
            let a = post_json(&c, &url(&g, "/messages"), TOKEN, &message("<x@y>", to)).await;
            assert_graph_error(&a, 400, "ErrorInvalidRecipients");
            assert_eq!(
                a.body["error"]
                    .as_object()
                    .unwrap()
                    .keys()
                    .collect::<Vec<_>>(),
                ["code", "innerError", "message"]
            );
        }
        let body = json!({ "message": message("<x@y>", "bad") });
        let a = post_json(&c, &url(&g, "/sendMail"), TOKEN, &body).await;
        assert_graph_error(&a, 400, "ErrorInvalidRecipients");

        let stranger = format!("{}/v1.0/users/nobody@contoso.com/messages", g.base_url());
        let a = c
            .post(stranger)
            .bearer_auth(TOKEN)
            .header("client-request-id", "5b0c1e2d-0000-4000-8000-000000000001")
            .json(&message("<x@y>", "megan@contoso.com"))
            .send()
            .await
            .unwrap();
        let a = answer(a).await;
        assert_graph_error(&a, 404, "ErrorInvalidUser");
        assert_eq!(
            a.headers["client-request-id"],
            "5b0c1e2d-0000-4000-8000-000000000001"
        );
        assert_eq!(
            g.requests().client_request_ids,
            ["5b0c1e2d-0000-4000-8000-000000000001"]
        );
        assert_eq!(g.deliveries().total, 0);
        assert!(g.drafts().is_empty());
    }

    #[tokio::test]
    async fn tokens_are_checked_against_the_identity_emulator() {
        let idp = IdentityProvider::start(IdentityOptions {
            interval: Some(1),
            ..IdentityOptions::default()
        })
        .await
        .unwrap();
        let g = GraphServer::start(GraphOptions {
            token_checker: Some(idp.token_checker()),
            ..GraphOptions::default()
        })
        .await
        .unwrap();
        let c = client();

        let scope = "offline_access https://graph.microsoft.com/Mail.Send";
        let form = [("client_id", TEST_CLIENT_ID), ("scope", scope)];
        let code: Value = c
            .post(idp.device_authorization_endpoint())
            .form(&form)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(idp.approve(code["user_code"].as_str().unwrap()));
        let poll = [
            ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
            ("client_id", TEST_CLIENT_ID),
            ("device_code", code["device_code"].as_str().unwrap()),
        ];
        let tokens: Value = c
            .post(idp.token_endpoint())
            .form(&poll)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let token = tokens["access_token"].as_str().unwrap();

        let body = json!({ "message": message("<auth@imm-daemon.test>", "megan@contoso.com") });
        let ok = post_json(&c, &url(&g, "/sendMail"), token, &body).await;
        assert_eq!(ok.status, 202, "{}", ok.text);
        let unknown = post_json(&c, &url(&g, "/sendMail"), "forged", &body).await;
        assert_graph_error(&unknown, 401, "InvalidAuthenticationToken");
        assert!(unknown.headers.contains_key(header::WWW_AUTHENTICATE));
        let none = answer(
            c.post(url(&g, "/sendMail"))
                .json(&body)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_graph_error(&none, 401, "InvalidAuthenticationToken");

        g.fail_next(1, GraphFailure::ExpiredToken);
        let expired = post_json(&c, &url(&g, "/sendMail"), token, &body).await;
        assert_graph_error(&expired, 401, "InvalidAuthenticationToken");
        idp.advance_clock(Duration::from_secs(3601));
        let late = post_json(&c, &url(&g, "/sendMail"), token, &body).await;
        assert_graph_error(&late, 401, "InvalidAuthenticationToken");
        assert!(late.text.contains("expired"), "{}", late.text);

        assert_eq!(g.deliveries().of("<auth@imm-daemon.test>"), 1);
        assert_eq!(g.requests().unauthorized, 4);
    }

    #[tokio::test]
    async fn the_most_requests_in_flight_per_mailbox_are_counted() {
        let g = graph().await;
        g.set_latency(Duration::from_millis(150));
        let c = client();
        let six = (0..6).map(|i| {
            let (c, g) = (c.clone(), &g);
            async move {
                let imid = format!("<c{i}@imm-daemon.test>");
                let body = json!({ "message": message(&imid, "megan@contoso.com") });
                post_json(&c, &url(g, "/sendMail"), TOKEN, &body)
                    .await
                    .status
            }
        });
        let statuses = futures_util::future::join_all(six).await;
        assert!(statuses.iter().all(|s| *s == 202), "{statuses:?}");
        let stats = g.requests();
        assert_eq!(stats.max_in_flight[SENDER], 6);
        assert_eq!(stats.max_in_flight_per_mailbox(), 6);

        // Every mailbox exists when none is configured; each is counted on its own.
        let open = GraphServer::start(GraphOptions {
            mailboxes: Vec::new(),
            ..GraphOptions::default()
        })
        .await
        .unwrap();
        let body = json!({ "message": message("<seq@imm-daemon.test>", "megan@contoso.com") });
        let other = format!("{}/v1.0/users/Other@contoso.com/sendMail", open.base_url());
        assert_eq!(post_json(&c, &other, TOKEN, &body).await.status, 202);
        assert_eq!(open.requests().max_in_flight["other@contoso.com"], 1);
    }

    #[test]
    fn filters_are_parsed_with_odata_quoting() {
        assert_eq!(
            parse_filter("internetMessageId eq '<a@b>'").as_deref(),
            Some("<a@b>")
        );
        assert_eq!(
            parse_filter(" InternetMessageId eq '<o''neil@b>' ").as_deref(),
            Some("<o'neil@b>")
        );
        assert_eq!(parse_filter("subject eq 'x'"), None);
        assert_eq!(parse_filter("internetMessageId eq '<a'b>'"), None);
        assert_eq!(parse_filter("internetMessageId eq <a@b>"), None);
    }

    #[test]
    fn a_background_server_serves_sync_callers() {
        let g = GraphServer::start_in_background(GraphOptions::default()).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let c = client();
        let body = json!({ "message": message("<bg@imm-daemon.test>", "megan@contoso.com") });
        let a = rt.block_on(post_json(&c, &url(&g, "/sendMail"), TOKEN, &body));
        assert_eq!(a.status, 202, "{}", a.text);
        assert_eq!(g.deliveries().total, 1);
    }
}
