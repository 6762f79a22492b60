//! The Microsoft identity platform v2.0 as a device sees it: OpenID discovery, the device
//! authorization grant (RFC 8628) with Microsoft's answers and error bodies, refresh-token
//! rotation, one resource per token request, and the page where a person types the code.
//! [`Flavour::Generic`] answers the same protocol as a certified generic OpenID provider
//! (such as node's `oidc-provider`): its own paths, RFC 8628 user codes, no `message`, no
//! `client_info`, and the whole grant revoked when a used code or token comes back.
//!
//! Test controls act as the person or the tenant's administrator would ([`approve`],
//! [`revoke_grants`], [`require_interaction`]) or as a struggling service
//! ([`fail_token_requests`]), or order requests ([`hold_next_poll`]); [`stats`] counts
//! what the client did.
//!
//! Deliberate differences from Microsoft: tokens are unsigned (`alg` `none`; an id token
//! that comes straight from the token endpoint over TLS needs no signature check, OpenID
//! Connect Core 3.1.3.7), a rotated refresh token stops working at once (Entra keeps old
//! ones valid, so a client that passes here is stricter than it needs to be), and the
//! AADSTS numbers for a declined sign-in, a redeemed code, a used refresh token and
//! `slow_down` are this emulator's choice (clients must branch on `error`, never on them).
//!
//! [`approve`]: IdentityProvider::approve
//! [`revoke_grants`]: IdentityProvider::revoke_grants
//! [`require_interaction`]: IdentityProvider::require_interaction
//! [`fail_token_requests`]: IdentityProvider::fail_token_requests
//! [`hold_next_poll`]: IdentityProvider::hold_next_poll
//! [`stats`]: IdentityProvider::stats

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Json, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};

use super::{Server, escape_html};

/// The client id the emulator knows by default (an application registered in the tenant).
pub const TEST_CLIENT_ID: &str = "5e1c7a0b-3d2f-4e6a-9b8c-7d6e5f4a3b2c";

const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
const GRAPH: &str = "https://graph.microsoft.com";
const OIDC_SCOPES: [&str; 4] = ["openid", "profile", "email", "offline_access"];
/// RFC 8628's default polling interval, and Microsoft's.
const DEFAULT_INTERVAL: u64 = 5;
/// What `slow_down` adds to a code's interval (RFC 8628 section 3.5).
const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);
/// A poll this much early still counts as on time: clients that time the interval from
/// one request's start to the next would otherwise meet `slow_down` by a millisecond.
const POLL_GRACE: Duration = Duration::from_millis(250);
/// RFC 8628 section 6.1: consonants only, so no code spells a word.
const RFC_USER_CODE_CHARS: &[u8] = b"BCDFGHJKLMNPQRSTVWXZ";
const MS_USER_CODE_CHARS: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
const BASE64URL_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Which kind of identity provider the emulator behaves as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Flavour {
    /// login.microsoftonline.com: tenant paths, AADSTS error bodies, `client_info`.
    #[default]
    Microsoft,
    /// A certified generic OpenID provider (such as node `oidc-provider`) at `{base}/oidc`.
    Generic,
}

/// The one person who signs in.
#[derive(Debug, Clone)]
pub struct TestUser {
    /// Sign-in name: `preferred_username` in id tokens, `upn` in access tokens.
    pub username: String,
    /// Display name (`name`).
    pub name: String,
    /// Object id in the tenant (`oid`).
    pub oid: String,
    /// Tenant id (`tid`), a GUID; the Microsoft flavour also answers at this path.
    pub tid: String,
    /// Subject (`sub`): pairwise at Microsoft, the stable user id at a generic provider.
    pub sub: String,
    /// `uid` of `client_info` (Microsoft sets it to the object id in the home tenant).
    pub uid: String,
}

impl Default for TestUser {
    fn default() -> Self {
        let oid = "a1d2c3b4-7e6f-4a5b-8c9d-0e1f2a3b4c5d".to_string();
        TestUser {
            username: "adele.vance@contoso.onmicrosoft.com".to_string(),
            name: "Adele Vance".to_string(),
            uid: oid.clone(),
            oid,
            tid: "3b7c2f9a-5d41-4e8b-9c06-1f2a7d4e8b53".to_string(),
            sub: "pL3vA9xQ2mZ7tR5yK8wB1nC4dF6gH0jSa2Lq9Xe4Ty0".to_string(),
        }
    }
}

/// How the emulated provider is set up.
#[derive(Debug, Clone)]
pub struct IdentityOptions {
    /// The tenant as the client names it: a verified domain or a GUID. The Microsoft
    /// flavour answers at this path and at the user's `tid`; any other is unknown.
    pub tenant: String,
    /// Microsoft, or a generic OpenID provider.
    pub flavour: Flavour,
    /// The device-code polling interval sent, in seconds. `None`: Microsoft sends 5, the
    /// generic provider sends nothing (and expects the RFC's 5).
    pub interval: Option<u64>,
    /// `expires_in` of device codes.
    pub device_code_lifetime: Duration,
    /// `expires_in` of access tokens.
    pub access_token_lifetime: Duration,
    /// The person who signs in.
    pub user: TestUser,
    /// Client ids registered in the tenant; any other is refused. Empty: every client id
    /// is accepted (a sandbox for a person's own app registration).
    pub clients: Vec<String>,
    /// The application's name on the sign-in page.
    pub app_name: String,
    /// Serve the test controls under `/_sandbox/` (approve, decline, pending codes, and
    /// the stats with every secret issued). Off where another local user could reach the
    /// port and no test needs them (the `imm-sandbox` command). Default on.
    pub control_routes: bool,
}

impl Default for IdentityOptions {
    fn default() -> Self {
        IdentityOptions {
            tenant: "contoso.onmicrosoft.com".to_string(),
            flavour: Flavour::Microsoft,
            interval: None,
            device_code_lifetime: Duration::from_secs(900),
            access_token_lifetime: Duration::from_secs(3600),
            user: TestUser::default(),
            clients: vec![TEST_CLIENT_ID.to_string()],
            app_name: "imm-daemon".to_string(),
            control_routes: true,
        }
    }
}

/// How the next token-endpoint requests fail (whatever their grant).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// 503 with an error body.
    ServiceUnavailable,
    /// 429 whose `Retry-After` is this value verbatim (omitted if it cannot be a header).
    Throttled { retry_after: String },
    /// Nothing for this long, then 504 from "the gateway". The request is not processed.
    Timeout(Duration),
    /// Not a failure: nothing for this long, then the request is processed and answered
    /// as usual (a slow token endpoint; room for a test to act mid-request).
    Slow(Duration),
}

/// What clients did, counted since the start.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    /// GETs of the discovery document (known tenant or not).
    pub discovery_requests: usize,
    /// POSTs to the device authorization endpoint.
    pub device_code_requests: usize,
    /// Every token-endpoint request, failed by injection or not.
    pub token_requests: usize,
    /// Token requests with the device-code grant type (polls), injected failures included.
    pub token_polls: usize,
    /// Device codes exchanged for tokens.
    pub device_grants: usize,
    /// Token requests with the refresh-token grant type, injected failures included.
    pub refresh_requests: usize,
    /// Refresh tokens exchanged for tokens.
    pub refresh_grants: usize,
    /// Presentations of a refresh token that had already been exchanged.
    pub refresh_reuse: usize,
    /// `slow_down` answers.
    pub slow_downs: usize,
    /// Token requests answered by [`Failure`] injection.
    pub injected_failures: usize,
    /// The `scope` of every device authorization request, in order.
    pub device_code_scopes: Vec<String>,
    /// The `scope` of every refresh request that got that far, in order (empty string
    /// when the request had none).
    pub refresh_scopes: Vec<String>,
    /// Every access, refresh and id token and device code issued, for tests that check
    /// no secret reaches a file or a log.
    pub issued_secrets: Vec<String>,
}

/// What the emulator knows about an access token it issued, for emulated resource servers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccessTokenInfo {
    pub client_id: String,
    /// The audience: one resource such as `https://graph.microsoft.com`.
    pub resource: String,
    /// The scopes granted, as in the token response.
    pub scopes: Vec<String>,
    pub expires_at: DateTime<Utc>,
    /// Past `expires_at` on the emulator's clock.
    pub expired: bool,
    /// Its grant was revoked ([`IdentityProvider::revoke_grants`], or a reuse).
    pub revoked: bool,
}

/// A device-code poll held before it is answered ([`IdentityProvider::hold_next_poll`]).
/// Dropping it releases the poll.
#[derive(Debug)]
pub struct HeldPoll {
    hold: Arc<Hold>,
}

#[derive(Debug, Default)]
struct Hold {
    arrived: std::sync::atomic::AtomicBool,
    release: tokio::sync::Notify,
}

impl HeldPoll {
    /// Whether the held poll has arrived (and waits).
    pub fn arrived(&self) -> bool {
        self.hold.arrived.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Blocks until the held poll has arrived; false if it has not within `timeout`.
    pub fn wait_until_arrived(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.arrived() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    /// Lets the held poll be answered.
    pub fn release(self) {}
}

impl Drop for HeldPoll {
    fn drop(&mut self) {
        // A permit is stored if the poll has not arrived yet: it then passes at once.
        self.hold.release.notify_one();
    }
}

/// A running emulated identity provider on 127.0.0.1. Dropping it stops the server.
pub struct IdentityProvider {
    shared: Arc<Shared>,
    _server: Server,
}

impl std::fmt::Debug for IdentityProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityProvider")
            .field("base_url", &self.shared.base)
            .field("flavour", &self.shared.opts.flavour)
            .finish_non_exhaustive()
    }
}

impl IdentityProvider {
    /// Starts the provider on an ephemeral loopback port, served by the current runtime.
    pub async fn start(opts: IdentityOptions) -> std::io::Result<IdentityProvider> {
        let (server, shared) = Server::start(|base| routes(opts, base)).await?;
        Ok(IdentityProvider {
            shared,
            _server: server,
        })
    }

    /// Starts the provider on a thread of its own with its own runtime, for sync tests
    /// that drive the real binary.
    pub fn start_in_background(opts: IdentityOptions) -> std::io::Result<IdentityProvider> {
        let (server, shared) =
            Server::start_in_background("sandbox-identity", |base| routes(opts, base))?;
        Ok(IdentityProvider {
            shared,
            _server: server,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        self.shared.base.clone()
    }

    /// What a client is configured with. Microsoft: `{base}/{tenant}`, to which the
    /// client appends `/v2.0/.well-known/openid-configuration`. Generic: the issuer
    /// `{base}/oidc`, to which it appends `/.well-known/openid-configuration`.
    pub fn authority(&self) -> String {
        match self.shared.opts.flavour {
            Flavour::Microsoft => format!("{}/{}", self.shared.base, self.shared.opts.tenant),
            Flavour::Generic => self.shared.issuer(),
        }
    }

    /// The `issuer` of the discovery document and of id tokens.
    pub fn issuer(&self) -> String {
        self.shared.issuer()
    }

    /// The discovery document's `device_authorization_endpoint`.
    pub fn device_authorization_endpoint(&self) -> String {
        self.shared.device_authorization_endpoint()
    }

    /// The discovery document's `token_endpoint`.
    pub fn token_endpoint(&self) -> String {
        self.shared.token_endpoint()
    }

    /// The page where a person enters the code.
    pub fn verification_uri(&self) -> String {
        self.shared.verification_uri()
    }

    /// Approves a pending user code as the person would on the page (case, spaces and
    /// dashes do not matter). False when the code is unknown, expired or already decided.
    pub fn approve(&self, user_code: &str) -> bool {
        self.shared.decide(user_code, true) == Decision::Done
    }

    /// Declines a pending user code as the person would. False as for [`Self::approve`].
    pub fn decline(&self, user_code: &str) -> bool {
        self.shared.decide(user_code, false) == Decision::Done
    }

    /// User codes that await a person, oldest first.
    pub fn pending_user_codes(&self) -> Vec<String> {
        self.shared.pending_user_codes()
    }

    /// Blocks until a user code is pending and returns the newest one. For tests that run
    /// the provider with [`Self::start_in_background`]: on the provider's own runtime
    /// this would stop the server it waits for (use [`Self::wait_for_user_code_async`]).
    pub fn wait_for_user_code(&self, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(code) = self.shared.pending_user_codes().pop() {
                return Some(code);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until a user code is pending and returns the newest one.
    pub async fn wait_for_user_code_async(&self, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(code) = self.shared.pending_user_codes().pop() {
                return Some(code);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Every outstanding device code (pending, or approved but not yet redeemed) expires
    /// now.
    pub fn expire_codes(&self) {
        let mut st = self.shared.lock();
        for code in &mut st.codes {
            if matches!(code.status, CodeStatus::Pending | CodeStatus::Approved) {
                code.forced_expired = true;
            }
        }
    }

    /// Revokes every grant issued so far, as an administrator or a password reset would:
    /// their refresh tokens answer `invalid_grant` (AADSTS50173). New sign-ins work.
    pub fn revoke_grants(&self) {
        let mut st = self.shared.lock();
        for grant in &mut st.grants {
            grant.revoked = Some(Revocation::Administrator);
        }
    }

    /// From now until the next completed device sign-in, refreshes answer
    /// `interaction_required` (AADSTS50076, multi-factor authentication), with this
    /// `suberror` when given (Microsoft sends values such as `basic_action`).
    pub fn require_interaction(&self, suberror: Option<&str>) {
        self.shared.lock().interaction = Some(suberror.map(str::to_string));
    }

    /// From now on, refreshes for `resource` (such as `https://outlook.office365.com`)
    /// answer `consent_required` (AADSTS65001): consent for it alone was withdrawn; other
    /// resources refresh as before.
    pub fn withdraw_consent(&self, resource: &str) {
        self.shared
            .lock()
            .consent_missing
            .push(resource.to_string());
    }

    /// The next `n` token-endpoint requests fail this way, after any already queued.
    pub fn fail_token_requests(&self, n: usize, failure: Failure) {
        let mut st = self.shared.lock();
        st.failures.extend(std::iter::repeat_n(failure, n));
    }

    /// The next device-code poll to arrive (counted in [`Stats::token_polls`]) waits,
    /// unanswered, until the returned handle is released or dropped: a test can see it
    /// arrive and put another request before it, whatever the timing.
    pub fn hold_next_poll(&self) -> HeldPoll {
        let hold = Arc::new(Hold::default());
        self.shared.lock().held_poll = Some(Arc::clone(&hold));
        HeldPoll { hold }
    }

    /// Moves the emulator's clock forward without waiting: codes expire, polling
    /// intervals pass, and tokens issued later carry later times.
    pub fn advance_clock(&self, by: Duration) {
        self.shared.lock().clock_offset += by;
    }

    /// What the emulator knows of an access token it issued; `None` for any other string.
    pub fn access_token_info(&self, access_token: &str) -> Option<AccessTokenInfo> {
        self.shared.access_token_info(access_token)
    }

    /// [`Self::access_token_info`] for an emulated resource server such as
    /// [`super::graph`]: it answers while the checker lives, even once this provider has
    /// stopped serving.
    pub fn token_checker(&self) -> super::graph::TokenChecker {
        let shared = Arc::clone(&self.shared);
        Arc::new(move |token: &str| shared.access_token_info(token))
    }

    /// A snapshot of the counters and of the secrets issued.
    pub fn stats(&self) -> Stats {
        self.shared.lock().stats.clone()
    }
}

fn routes(opts: IdentityOptions, base: String) -> (Router, Arc<Shared>) {
    let flavour = opts.flavour;
    let shared = Arc::new(Shared {
        opts,
        base,
        state: Mutex::new(Ledger::default()),
    });
    let routes = match flavour {
        Flavour::Microsoft => Router::new()
            .route(
                "/{tenant}/v2.0/.well-known/openid-configuration",
                get(microsoft_discovery),
            )
            .route("/{tenant}/discovery/v2.0/keys", get(keys))
            .route(
                "/{tenant}/oauth2/v2.0/devicecode",
                post(microsoft_device_code),
            )
            .route("/{tenant}/oauth2/v2.0/token", post(microsoft_token))
            .route("/{tenant}/oauth2/v2.0/authorize", get(authorize))
            .route("/devicelogin", get(code_page).post(code_submitted))
            .route("/error", get(error_page)),
        Flavour::Generic => Router::new()
            .route(
                "/oidc/.well-known/openid-configuration",
                get(generic_discovery),
            )
            .route("/oidc/jwks", get(keys))
            .route("/oidc/device/auth", post(generic_device_code))
            .route("/oidc/token", post(generic_token))
            .route("/oidc/auth", get(authorize))
            .route("/oidc/device", get(code_page).post(code_submitted)),
    };
    let routes = if shared.opts.control_routes {
        routes
            .route("/_sandbox/approve", post(control_approve))
            .route("/_sandbox/decline", post(control_decline))
            .route("/_sandbox/pending", get(control_pending))
            .route("/_sandbox/stats", get(control_stats))
    } else {
        routes
    };
    let app = routes.with_state(Arc::clone(&shared));
    (app, shared)
}

struct Shared {
    opts: IdentityOptions,
    base: String,
    state: Mutex<Ledger>,
}

/// Everything the provider remembers: codes, grants, tokens, test switches, counters.
#[derive(Default)]
struct Ledger {
    clock_offset: Duration,
    codes: Vec<DeviceCode>,
    /// Indexed by position: a grant is never removed, only revoked.
    grants: Vec<Grant>,
    refresh_tokens: HashMap<String, RefreshToken>,
    access_tokens: HashMap<String, AccessToken>,
    /// `Some(suberror)` while refreshes must answer `interaction_required`.
    interaction: Option<Option<String>>,
    /// Resources whose refreshes answer `consent_required` (consent withdrawn for them
    /// alone); the sign-in stands for the others.
    consent_missing: Vec<String>,
    failures: VecDeque<Failure>,
    /// Taken by the next device-code poll, which waits for its release.
    held_poll: Option<Arc<Hold>>,
    stats: Stats,
}

impl Ledger {
    fn now(&self) -> Instant {
        Instant::now() + self.clock_offset
    }

    fn wall_now(&self) -> DateTime<Utc> {
        Utc::now() + chrono::Duration::from_std(self.clock_offset).unwrap_or_default()
    }
}

struct DeviceCode {
    device_code: String,
    user_code: String,
    client_id: String,
    scopes: Vec<String>,
    expires: Instant,
    forced_expired: bool,
    /// Grows by [`SLOW_DOWN_STEP`] with every `slow_down`.
    interval: Duration,
    last_poll: Option<Instant>,
    status: CodeStatus,
    /// The grant its redemption created.
    grant: Option<usize>,
}

impl DeviceCode {
    fn expired(&self, now: Instant) -> bool {
        self.forced_expired || now >= self.expires
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CodeStatus {
    Pending,
    Approved,
    Declined,
    Redeemed,
}

/// One sign-in's authorization: every refresh token rotated from it belongs to it.
struct Grant {
    client_id: String,
    scopes: Vec<String>,
    revoked: Option<Revocation>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Revocation {
    Administrator,
    /// A used device code or refresh token came back (generic flavour).
    Reuse,
}

struct RefreshToken {
    grant: usize,
    used: bool,
}

struct AccessToken {
    grant: usize,
    client_id: String,
    resource: String,
    scopes: Vec<String>,
    expires_at: DateTime<Utc>,
}

/// What became of a person's attempt to approve or decline a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Done,
    Unknown,
    Expired,
    AlreadyDecided,
}

type Form = HashMap<String, String>;

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Ledger> {
        // A test that panicked while holding the lock leaves the state usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn access_token_info(&self, access_token: &str) -> Option<AccessTokenInfo> {
        let st = self.lock();
        let token = st.access_tokens.get(access_token)?;
        Some(AccessTokenInfo {
            client_id: token.client_id.clone(),
            resource: token.resource.clone(),
            scopes: token.scopes.clone(),
            expires_at: token.expires_at,
            expired: st.wall_now() >= token.expires_at,
            revoked: st.grants[token.grant].revoked.is_some(),
        })
    }

    fn generic(&self) -> bool {
        self.opts.flavour == Flavour::Generic
    }

    /// Microsoft publishes its endpoints under the tenant id, whatever the client called
    /// the tenant.
    fn tenant_base(&self) -> String {
        format!("{}/{}", self.base, self.opts.user.tid)
    }

    fn issuer(&self) -> String {
        match self.opts.flavour {
            Flavour::Microsoft => format!("{}/v2.0", self.tenant_base()),
            Flavour::Generic => format!("{}/oidc", self.base),
        }
    }

    fn device_authorization_endpoint(&self) -> String {
        match self.opts.flavour {
            Flavour::Microsoft => format!("{}/oauth2/v2.0/devicecode", self.tenant_base()),
            Flavour::Generic => format!("{}/device/auth", self.issuer()),
        }
    }

    fn token_endpoint(&self) -> String {
        match self.opts.flavour {
            Flavour::Microsoft => format!("{}/oauth2/v2.0/token", self.tenant_base()),
            Flavour::Generic => format!("{}/token", self.issuer()),
        }
    }

    fn verification_uri(&self) -> String {
        match self.opts.flavour {
            Flavour::Microsoft => format!("{}/devicelogin", self.base),
            Flavour::Generic => format!("{}/device", self.issuer()),
        }
    }

    fn knows_tenant(&self, tenant: &str) -> bool {
        tenant.eq_ignore_ascii_case(&self.opts.tenant)
            || tenant.eq_ignore_ascii_case(&self.opts.user.tid)
    }

    fn check_client(&self, client_id: &str) -> Result<(), Denial> {
        let clients = &self.opts.clients;
        if clients.is_empty() || clients.iter().any(|c| c.eq_ignore_ascii_case(client_id)) {
            Ok(())
        } else {
            Err(Denial::UnknownClient(client_id.to_string()))
        }
    }

    fn microsoft_discovery(&self) -> Value {
        let t = self.tenant_base();
        json!({
            "token_endpoint": self.token_endpoint(),
            "token_endpoint_auth_methods_supported":
                ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "jwks_uri": format!("{t}/discovery/v2.0/keys"),
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": self.issuer(),
            "request_uri_parameter_supported": false,
            "authorization_endpoint": format!("{t}/oauth2/v2.0/authorize"),
            "device_authorization_endpoint": self.device_authorization_endpoint(),
            "http_logout_supported": true,
            "frontchannel_logout_supported": true,
            "end_session_endpoint": format!("{t}/oauth2/v2.0/logout"),
            "claims_supported": [
                "sub", "iss", "cloud_instance_name", "cloud_instance_host_name",
                "cloud_graph_host_name", "msgraph_host", "aud", "exp", "iat", "auth_time",
                "acr", "nonce", "preferred_username", "name", "tid", "ver", "at_hash",
                "c_hash", "email"
            ],
            "kerberos_endpoint": format!("{t}/kerberos"),
            "tenant_region_scope": "EU",
            "cloud_instance_name": "microsoftonline.com",
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": "graph.microsoft.com",
            "rbac_url": "https://pas.windows.net"
        })
    }

    fn generic_discovery(&self) -> Value {
        let i = self.issuer();
        json!({
            "issuer": i,
            "authorization_endpoint": format!("{i}/auth"),
            "device_authorization_endpoint": self.device_authorization_endpoint(),
            "token_endpoint": self.token_endpoint(),
            "jwks_uri": format!("{i}/jwks"),
            "scopes_supported": ["openid", "offline_access", "profile", "email"],
            "response_types_supported": ["code"],
            "response_modes_supported": ["form_post", "fragment", "query"],
            "grant_types_supported":
                ["authorization_code", "refresh_token", DEVICE_CODE_GRANT],
            "token_endpoint_auth_methods_supported":
                ["client_secret_basic", "client_secret_jwt", "client_secret_post",
                 "private_key_jwt", "none"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "claims_supported":
                ["sub", "name", "preferred_username", "iss", "aud", "exp", "iat"],
            "code_challenge_methods_supported": ["S256"],
            "claims_parameter_supported": false,
            "request_parameter_supported": false,
            "request_uri_parameter_supported": false
        })
    }

    fn device_authorization(&self, form: &Form) -> Result<Value, Denial> {
        let mut st = self.lock();
        st.stats.device_code_requests += 1;
        let client_id = param(form, "client_id")?;
        self.check_client(client_id)?;
        let scope = param(form, "scope")?;
        st.stats.device_code_scopes.push(scope.to_string());
        let scopes: Vec<String> = scope.split_whitespace().map(str::to_string).collect();
        if self.generic() {
            if !scopes.iter().any(|s| s == "openid") {
                return Err(Denial::OpenIdRequired);
            }
        } else {
            let resource = microsoft_resource(&scopes)?;
            let signs_in = scopes
                .iter()
                .any(|s| ["openid", "profile", "email"].contains(&s.to_ascii_lowercase().as_str()));
            if resource.is_none() && !signs_in {
                return Err(Denial::InvalidScope(scope.to_string()));
            }
        }

        let user_code = loop {
            let candidate = self.new_user_code();
            if !st.codes.iter().any(|c| c.user_code == candidate) {
                break candidate;
            }
        };
        let device_code = self.new_device_code();
        let interval = self.opts.interval.unwrap_or(DEFAULT_INTERVAL);
        let now = st.now();
        st.codes.push(DeviceCode {
            device_code: device_code.clone(),
            user_code: user_code.clone(),
            client_id: client_id.to_string(),
            scopes,
            expires: now + self.opts.device_code_lifetime,
            forced_expired: false,
            interval: Duration::from_secs(interval),
            last_poll: None,
            status: CodeStatus::Pending,
            grant: None,
        });
        st.stats.issued_secrets.push(device_code.clone());

        let verification_uri = self.verification_uri();
        let expires_in = self.opts.device_code_lifetime.as_secs();
        Ok(match self.opts.flavour {
            Flavour::Microsoft => json!({
                "user_code": user_code,
                "device_code": device_code,
                "verification_uri": verification_uri,
                "expires_in": expires_in,
                "interval": interval,
                "message": format!(
                    "To sign in, use a web browser to open the page {verification_uri} and \
                     enter the code {user_code} to authenticate."
                ),
            }),
            Flavour::Generic => {
                let mut body = json!({
                    "device_code": device_code,
                    "user_code": user_code,
                    "verification_uri": verification_uri,
                    "verification_uri_complete":
                        format!("{verification_uri}?user_code={user_code}"),
                    "expires_in": expires_in,
                });
                if let Some(interval) = self.opts.interval {
                    body["interval"] = json!(interval);
                }
                body
            }
        })
    }

    fn device_code_grant(&self, st: &mut Ledger, form: &Form) -> Result<Value, Denial> {
        let client_id = param(form, "client_id")?;
        self.check_client(client_id)?;
        let presented = param(form, "device_code")?;
        let now = st.now();
        let Some(code) = st.codes.iter_mut().find(|c| c.device_code == presented) else {
            return Err(Denial::BadVerificationCode);
        };
        if !code.client_id.eq_ignore_ascii_case(client_id) {
            return Err(Denial::WrongClient);
        }
        match code.status {
            CodeStatus::Redeemed => {
                if self.generic()
                    && let Some(grant) = code.grant
                {
                    st.grants[grant].revoked.get_or_insert(Revocation::Reuse);
                }
                return Err(Denial::CodeRedeemed);
            }
            _ if code.expired(now) => return Err(Denial::Expired),
            CodeStatus::Declined => return Err(Denial::Declined),
            CodeStatus::Pending => {
                let too_soon = code
                    .last_poll
                    .is_some_and(|last| now.duration_since(last) + POLL_GRACE < code.interval);
                code.last_poll = Some(now);
                if too_soon {
                    code.interval += SLOW_DOWN_STEP;
                    st.stats.slow_downs += 1;
                    return Err(Denial::SlowDown(code.interval.as_secs()));
                }
                return Err(Denial::Pending);
            }
            CodeStatus::Approved => {}
        }
        code.status = CodeStatus::Redeemed;
        code.grant = Some(st.grants.len());
        let scopes = code.scopes.clone();
        let grant = st.grants.len();
        st.grants.push(Grant {
            client_id: code.client_id.clone(),
            scopes: scopes.clone(),
            revoked: None,
        });
        st.interaction = None;
        st.stats.device_grants += 1;
        let offline = scopes
            .iter()
            .any(|s| s.eq_ignore_ascii_case("offline_access"));
        Ok(self.issue_tokens(st, grant, &scopes, wants_client_info(form), offline))
    }

    fn refresh_token_grant(&self, st: &mut Ledger, form: &Form) -> Result<Value, Denial> {
        let client_id = param(form, "client_id")?;
        self.check_client(client_id)?;
        let presented = param(form, "refresh_token")?;
        let Some(token) = st.refresh_tokens.get(presented) else {
            return Err(Denial::UnknownRefreshToken);
        };
        let (g, used) = (token.grant, token.used);
        if !st.grants[g].client_id.eq_ignore_ascii_case(client_id) {
            return Err(Denial::WrongClient);
        }
        if used {
            st.stats.refresh_reuse += 1;
        }
        match st.grants[g].revoked {
            Some(Revocation::Administrator) => return Err(Denial::GrantRevoked),
            Some(Revocation::Reuse) => return Err(Denial::UsedRefreshToken),
            None => {}
        }
        if used {
            if self.generic() {
                st.grants[g].revoked = Some(Revocation::Reuse);
            }
            return Err(Denial::UsedRefreshToken);
        }

        let requested = form.get("scope").map(|s| s.trim()).unwrap_or("");
        st.stats.refresh_scopes.push(requested.to_string());
        let scopes: Vec<String> = if requested.is_empty() {
            st.grants[g].scopes.clone()
        } else {
            requested.split_whitespace().map(str::to_string).collect()
        };
        if self.generic() {
            if let Some(missing) = scopes.iter().find(|s| !st.grants[g].scopes.contains(s)) {
                return Err(Denial::ScopeNotGranted(missing.clone()));
            }
        } else {
            microsoft_resource(&scopes)?;
        }
        if let Some(suberror) = &st.interaction {
            return Err(Denial::InteractionRequired {
                suberror: suberror.clone(),
                resource: self.resource_of(&scopes),
            });
        }
        let resource = self.resource_of(&scopes);
        if st
            .consent_missing
            .iter()
            .any(|r| r.eq_ignore_ascii_case(&resource))
        {
            return Err(Denial::ConsentRequired { resource });
        }

        if let Some(token) = st.refresh_tokens.get_mut(presented) {
            token.used = true;
        }
        st.stats.refresh_grants += 1;
        Ok(self.issue_tokens(st, g, &scopes, wants_client_info(form), true))
    }

    /// A token response for `scopes` under `grant`, recording every secret in it.
    fn issue_tokens(
        &self,
        st: &mut Ledger,
        grant: usize,
        scopes: &[String],
        client_info: bool,
        with_refresh_token: bool,
    ) -> Value {
        let now = st.wall_now();
        let lifetime = self.opts.access_token_lifetime.as_secs();
        let client_id = st.grants[grant].client_id.clone();
        let resource = self.resource_of(scopes);
        let granted = self.granted_scopes(scopes);
        let access_token = match self.opts.flavour {
            Flavour::Microsoft => self.access_token_jwt(&resource, &granted, &client_id, now),
            Flavour::Generic => random_string(BASE64URL_CHARS, 43),
        };
        st.access_tokens.insert(
            access_token.clone(),
            AccessToken {
                grant,
                client_id: client_id.clone(),
                resource,
                scopes: granted.clone(),
                expires_at: now + chrono::Duration::seconds(lifetime as i64),
            },
        );
        st.stats.issued_secrets.push(access_token.clone());
        let mut body = json!({
            "token_type": "Bearer",
            "scope": granted.join(" "),
            "expires_in": lifetime,
            "access_token": access_token,
        });
        if !self.generic() {
            body["ext_expires_in"] = json!(lifetime);
        }
        if with_refresh_token {
            let refresh_token = self.new_refresh_token();
            st.refresh_tokens
                .insert(refresh_token.clone(), RefreshToken { grant, used: false });
            st.stats.issued_secrets.push(refresh_token.clone());
            body["refresh_token"] = json!(refresh_token);
        }
        if scopes.iter().any(|s| s == "openid") {
            let id_token = self.id_token(&client_id, now);
            st.stats.issued_secrets.push(id_token.clone());
            body["id_token"] = json!(id_token);
        }
        if client_info && !self.generic() {
            let info = json!({ "uid": self.opts.user.uid, "utid": self.opts.user.tid });
            body["client_info"] = json!(URL_SAFE_NO_PAD.encode(info.to_string()));
        }
        body
    }

    /// The one resource an access token for `scopes` is for: Graph when only OpenID
    /// scopes are asked (as Microsoft does); the issuer at a generic provider.
    fn resource_of(&self, scopes: &[String]) -> String {
        match microsoft_resource(scopes).ok().flatten() {
            Some(resource) => resource,
            None if self.generic() => self.issuer(),
            None => GRAPH.to_string(),
        }
    }

    /// The `scope` of a token response. Microsoft names Graph's bare permissions in full,
    /// leaves out `offline_access`, and grants Graph's `User.Read` to a sign-in that asked
    /// for no resource; a generic provider echoes what it granted.
    fn granted_scopes(&self, scopes: &[String]) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        if self.generic() {
            out.extend(scopes.iter().cloned());
        } else {
            let mut resource = false;
            for s in scopes {
                match split_microsoft_scope(s) {
                    Ok(None) if !s.eq_ignore_ascii_case("offline_access") => {
                        out.push(s.to_ascii_lowercase())
                    }
                    Ok(Some((res, perm))) => {
                        resource = true;
                        out.push(format!("{res}/{perm}"));
                    }
                    _ => {}
                }
            }
            if !resource {
                out.push(format!("{GRAPH}/User.Read"));
            }
        }
        let mut seen = Vec::new();
        out.retain(|s| {
            let new = !seen.contains(s);
            seen.push(s.clone());
            new
        });
        out
    }

    fn access_token_jwt(
        &self,
        resource: &str,
        granted: &[String],
        client_id: &str,
        now: DateTime<Utc>,
    ) -> String {
        let user = &self.opts.user;
        let iat = now.timestamp();
        let scp: Vec<String> = granted
            .iter()
            .filter_map(|s| split_microsoft_scope(s).ok().flatten().map(|(_, p)| p))
            .collect();
        jwt(&json!({
            "aud": resource,
            "iss": format!("{}/", self.tenant_base()),
            "iat": iat,
            "nbf": iat,
            "exp": iat + self.opts.access_token_lifetime.as_secs() as i64,
            "aio": random_string(BASE64URL_CHARS, 96),
            "app_displayname": self.opts.app_name,
            "appid": client_id,
            "name": user.name,
            "oid": user.oid,
            "scp": scp.join(" "),
            "sub": user.sub,
            "tid": user.tid,
            "unique_name": user.username,
            "upn": user.username,
            "uti": random_string(BASE64URL_CHARS, 22),
            "ver": "1.0",
        }))
    }

    fn id_token(&self, client_id: &str, now: DateTime<Utc>) -> String {
        let user = &self.opts.user;
        let iat = now.timestamp();
        let claims = match self.opts.flavour {
            Flavour::Microsoft => json!({
                "aud": client_id,
                "iss": self.issuer(),
                "iat": iat,
                "nbf": iat,
                "exp": iat + 3600,
                "name": user.name,
                "oid": user.oid,
                "preferred_username": user.username,
                "rh": format!("1.A{}", random_string(BASE64URL_CHARS, 60)),
                "sub": user.sub,
                "tid": user.tid,
                "uti": random_string(BASE64URL_CHARS, 22),
                "ver": "2.0",
            }),
            Flavour::Generic => json!({
                "aud": client_id,
                "iss": self.issuer(),
                "iat": iat,
                "exp": iat + 3600,
                "auth_time": iat,
                "sub": user.sub,
                "name": user.name,
                "preferred_username": user.username,
                "jti": random_string(BASE64URL_CHARS, 21),
            }),
        };
        jwt(&claims)
    }

    fn new_user_code(&self) -> String {
        match self.opts.flavour {
            Flavour::Microsoft => random_string(MS_USER_CODE_CHARS, 9),
            Flavour::Generic => format!(
                "{}-{}",
                random_string(RFC_USER_CODE_CHARS, 4),
                random_string(RFC_USER_CODE_CHARS, 4)
            ),
        }
    }

    fn new_device_code(&self) -> String {
        match self.opts.flavour {
            Flavour::Microsoft => format!("DAQABIQEAAAD{}", random_string(BASE64URL_CHARS, 180)),
            Flavour::Generic => random_string(BASE64URL_CHARS, 43),
        }
    }

    fn new_refresh_token(&self) -> String {
        match self.opts.flavour {
            Flavour::Microsoft => format!("1.A{}", random_string(BASE64URL_CHARS, 300)),
            Flavour::Generic => random_string(BASE64URL_CHARS, 43),
        }
    }

    fn decide(&self, user_code: &str, approve: bool) -> Decision {
        let wanted = normalise_user_code(user_code);
        if wanted.is_empty() {
            return Decision::Unknown;
        }
        let mut st = self.lock();
        let now = st.now();
        let Some(code) = st
            .codes
            .iter_mut()
            .rev()
            .find(|c| normalise_user_code(&c.user_code) == wanted)
        else {
            return Decision::Unknown;
        };
        if code.status != CodeStatus::Pending {
            return Decision::AlreadyDecided;
        }
        if code.expired(now) {
            return Decision::Expired;
        }
        code.status = if approve {
            CodeStatus::Approved
        } else {
            CodeStatus::Declined
        };
        Decision::Done
    }

    fn pending_user_codes(&self) -> Vec<String> {
        let st = self.lock();
        let now = st.now();
        st.codes
            .iter()
            .filter(|c| c.status == CodeStatus::Pending && !c.expired(now))
            .map(|c| c.user_code.clone())
            .collect()
    }

    /// An error answer in this flavour's shape, never cached.
    fn deny(&self, denial: Denial, headers: &HeaderMap) -> Response {
        let (status, body) = match self.opts.flavour {
            Flavour::Microsoft => {
                let (status, error, code, text) = denial.microsoft(&self.opts.tenant);
                let timestamp = Utc::now().format("%Y-%m-%d %H:%M:%SZ").to_string();
                let trace_id = random_guid();
                // Microsoft echoes the client's `client-request-id` (MSAL sends one).
                let correlation_id = headers
                    .get("client-request-id")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| uuid::Uuid::try_parse(v).ok())
                    .map(|u| u.to_string())
                    .unwrap_or_else(random_guid);
                let mut body = json!({
                    "error": error,
                    "error_description": format!(
                        "AADSTS{code}: {text}\r\nTrace ID: {trace_id}\r\nCorrelation ID: \
                         {correlation_id}\r\nTimestamp: {timestamp}"
                    ),
                    "error_codes": [code],
                    "timestamp": timestamp,
                    "trace_id": trace_id,
                    "correlation_id": correlation_id,
                    "error_uri": format!("{}/error?code={code}", self.base),
                });
                if let Some(suberror) = denial.suberror() {
                    body["suberror"] = json!(suberror);
                }
                (status, body)
            }
            Flavour::Generic => {
                let (status, error, description) = denial.generic();
                (
                    status,
                    json!({ "error": error, "error_description": description }),
                )
            }
        };
        no_store((status, Json(body)).into_response())
    }

    async fn injected(&self, failure: Failure, headers: &HeaderMap) -> Response {
        match failure {
            Failure::ServiceUnavailable => self.deny(Denial::Unavailable, headers),
            Failure::Throttled { retry_after } => {
                let mut response = self.deny(Denial::Throttled, headers);
                if let Ok(value) = HeaderValue::from_str(&retry_after) {
                    response.headers_mut().insert(header::RETRY_AFTER, value);
                }
                response
            }
            Failure::Timeout(wait) => {
                tokio::time::sleep(wait).await;
                (
                    StatusCode::GATEWAY_TIMEOUT,
                    "504 Gateway Time-out: the upstream server did not answer in time\n",
                )
                    .into_response()
            }
            Failure::Slow(_) => unreachable!("slow requests are answered as usual"),
        }
    }

    fn page(&self, title: &str, body: &str) -> String {
        format!(
            "<!doctype html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width\">\
             <title>{title}</title></head>\n<body>\n<h1>{title}</h1>\n{body}\n\
             <p><small>Emulated sign-in for tests: no real account is involved.</small></p>\n\
             </body>\n</html>\n",
            title = escape_html(title),
        )
    }

    fn code_form(&self, user_code: &str) -> String {
        let action = match self.opts.flavour {
            Flavour::Microsoft => "/devicelogin",
            Flavour::Generic => "/oidc/device",
        };
        format!(
            "<p>Enter the code displayed on your device to sign in to {app} as {user}.</p>\n\
             <form method=\"post\" action=\"{action}\">\n\
             <label for=\"user_code\">Code</label>\n\
             <input id=\"user_code\" name=\"user_code\" value=\"{code}\" autocomplete=\"off\" \
             autofocus required>\n\
             <button type=\"submit\" name=\"action\" value=\"approve\">Sign in</button>\n\
             <button type=\"submit\" name=\"action\" value=\"decline\">Decline</button>\n\
             </form>",
            app = escape_html(&self.opts.app_name),
            user = escape_html(&self.opts.user.username),
            code = escape_html(user_code),
        )
    }
}

/// Why a request is refused, with Microsoft's answer and a generic provider's for each.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Denial {
    UnknownTenant {
        tenant: String,
        discovery: bool,
    },
    MissingParameter(&'static str),
    UnknownClient(String),
    UnsupportedGrantType(String),
    InvalidScope(String),
    /// A generic provider's device flow needs `openid`.
    OpenIdRequired,
    MixedResources(String),
    /// A refresh asked for more than the grant holds (generic flavour).
    ScopeNotGranted(String),
    Pending,
    /// With the code's new interval in seconds.
    SlowDown(u64),
    Declined,
    Expired,
    BadVerificationCode,
    CodeRedeemed,
    WrongClient,
    UnknownRefreshToken,
    UsedRefreshToken,
    GrantRevoked,
    InteractionRequired {
        suberror: Option<String>,
        resource: String,
    },
    ConsentRequired {
        resource: String,
    },
    Unavailable,
    Throttled,
}

impl Denial {
    /// Status, `error`, AADSTS number and the description's text.
    fn microsoft(&self, tenant: &str) -> (StatusCode, &'static str, u32, String) {
        let bad = StatusCode::BAD_REQUEST;
        match self {
            Denial::UnknownTenant { tenant, discovery } => (
                bad,
                if *discovery {
                    "invalid_tenant"
                } else {
                    "invalid_request"
                },
                90002,
                format!(
                    "Tenant '{tenant}' not found. Check to make sure you have the correct \
                     tenant ID and are signing into the correct cloud. Check with your \
                     subscription administrator, this may happen if there are no active \
                     subscriptions for the tenant."
                ),
            ),
            Denial::MissingParameter(name) => (
                bad,
                "invalid_request",
                900144,
                format!("The request body must contain the following parameter: '{name}'."),
            ),
            Denial::UnknownClient(client_id) => (
                bad,
                "unauthorized_client",
                700016,
                format!(
                    "Application with identifier '{client_id}' was not found in the directory \
                     '{tenant}'. This can happen if the application has not been installed by \
                     the administrator of the tenant or consented to by any user in the \
                     tenant. You may have sent your authentication request to the wrong tenant."
                ),
            ),
            Denial::UnsupportedGrantType(grant_type) => (
                bad,
                "unsupported_grant_type",
                70003,
                format!("The app requested an unsupported grant type '{grant_type}'."),
            ),
            Denial::InvalidScope(scope) => (
                bad,
                "invalid_scope",
                70011,
                format!(
                    "The provided value for the input parameter 'scope' is not valid. The \
                     scope '{scope}' is not valid."
                ),
            ),
            Denial::OpenIdRequired => (
                bad,
                "invalid_scope",
                70011,
                "The provided value for the input parameter 'scope' is not valid.".to_string(),
            ),
            Denial::MixedResources(scope) => (
                bad,
                "invalid_scope",
                28000,
                format!(
                    "Provided value for the input parameter scope is not valid because it \
                     contains more than one resource. Scope {scope} is not valid."
                ),
            ),
            Denial::ScopeNotGranted(scope) => (
                bad,
                "invalid_grant",
                65001,
                format!(
                    "The user or administrator has not consented to use the application for \
                     the scope '{scope}'."
                ),
            ),
            Denial::Pending => (
                bad,
                "authorization_pending",
                70016,
                "OAuth 2.0 device flow error. Authorization is pending. Continue polling."
                    .to_string(),
            ),
            Denial::SlowDown(interval) => (
                bad,
                "slow_down",
                50196,
                format!(
                    "The server terminated an operation because it encountered a client \
                     request loop. Poll no more often than every {interval} seconds."
                ),
            ),
            Denial::Declined => (
                bad,
                "authorization_declined",
                70000,
                "The end user declined the sign-in request.".to_string(),
            ),
            Denial::Expired => (
                bad,
                "expired_token",
                70019,
                "Verification code expired.".to_string(),
            ),
            Denial::BadVerificationCode => (
                bad,
                "bad_verification_code",
                70018,
                "Invalid verification code: the device_code was not recognised.".to_string(),
            ),
            Denial::CodeRedeemed => (
                bad,
                "invalid_grant",
                70000,
                "The provided value for the input parameter 'device_code' is not valid: it \
                 has already been redeemed."
                    .to_string(),
            ),
            Denial::WrongClient => (
                bad,
                "invalid_grant",
                70000,
                "The provided grant was issued to a different client.".to_string(),
            ),
            Denial::UnknownRefreshToken => (
                bad,
                "invalid_grant",
                9002313,
                "Invalid request. Request is malformed or invalid.".to_string(),
            ),
            Denial::UsedRefreshToken => (
                bad,
                "invalid_grant",
                70000,
                "The provided refresh token has been revoked or used. Sign in again.".to_string(),
            ),
            Denial::GrantRevoked => (
                bad,
                "invalid_grant",
                50173,
                "The provided grant has expired due to it being revoked, a fresh auth token \
                 is needed. The user might have changed or reset their password."
                    .to_string(),
            ),
            Denial::InteractionRequired { resource, .. } => (
                bad,
                "interaction_required",
                50076,
                format!(
                    "Due to a configuration change made by your administrator, or because you \
                     moved to a new location, you must use multi-factor authentication to \
                     access '{resource}'."
                ),
            ),
            Denial::ConsentRequired { resource } => (
                bad,
                "consent_required",
                65001,
                format!(
                    "The user or administrator has not consented to use the application with \
                     ID '{TEST_CLIENT_ID}'. Send an interactive authorization request for this \
                     user and resource '{resource}'."
                ),
            ),
            Denial::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                90033,
                "A transient error has occurred. Please try again.".to_string(),
            ),
            Denial::Throttled => (
                StatusCode::TOO_MANY_REQUESTS,
                "temporarily_unavailable",
                90055,
                "There are too many incoming requests. Retry after the time given.".to_string(),
            ),
        }
    }

    /// Status, `error` and `error_description` as node `oidc-provider` words them.
    fn generic(&self) -> (StatusCode, &'static str, String) {
        let bad = StatusCode::BAD_REQUEST;
        let invalid_grant = (bad, "invalid_grant", "grant request is invalid".to_string());
        match self {
            Denial::UnknownTenant { .. } => (
                StatusCode::NOT_FOUND,
                "invalid_request",
                "unrecognized route".to_string(),
            ),
            Denial::MissingParameter(name) => (
                bad,
                "invalid_request",
                format!("missing required parameter '{name}'"),
            ),
            Denial::UnknownClient(_) => (
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client authentication failed".to_string(),
            ),
            Denial::UnsupportedGrantType(_) => (
                bad,
                "unsupported_grant_type",
                "unsupported grant_type requested".to_string(),
            ),
            Denial::InvalidScope(scope)
            | Denial::MixedResources(scope)
            | Denial::ScopeNotGranted(scope) => (
                bad,
                "invalid_scope",
                format!("requested scope is not allowed: {scope}"),
            ),
            Denial::OpenIdRequired => (
                bad,
                "invalid_scope",
                "openid scope must be requested for this flow".to_string(),
            ),
            Denial::Pending => (
                bad,
                "authorization_pending",
                "authorization request is still pending as the end-user hasn't yet completed \
                 the user interaction steps"
                    .to_string(),
            ),
            Denial::SlowDown(_) => (
                bad,
                "slow_down",
                "you are polling too quickly and should back off at a reasonable rate".to_string(),
            ),
            Denial::Declined => (
                bad,
                "access_denied",
                "End-User aborted interaction".to_string(),
            ),
            Denial::Expired => (bad, "expired_token", "device code has expired".to_string()),
            Denial::BadVerificationCode
            | Denial::CodeRedeemed
            | Denial::WrongClient
            | Denial::UnknownRefreshToken
            | Denial::UsedRefreshToken
            | Denial::GrantRevoked => invalid_grant,
            Denial::ConsentRequired { .. } => (
                bad,
                "consent_required",
                "end-user consent is required for this resource".to_string(),
            ),
            Denial::InteractionRequired { .. } => (
                bad,
                "interaction_required",
                "end-user interaction is required".to_string(),
            ),
            Denial::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "the server is temporarily unavailable".to_string(),
            ),
            Denial::Throttled => (
                StatusCode::TOO_MANY_REQUESTS,
                "temporarily_unavailable",
                "too many requests".to_string(),
            ),
        }
    }

    fn suberror(&self) -> Option<&str> {
        match self {
            Denial::InteractionRequired { suberror, .. } => suberror.as_deref(),
            _ => None,
        }
    }
}

async fn microsoft_discovery(
    State(s): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Response {
    s.lock().stats.discovery_requests += 1;
    if !s.knows_tenant(&tenant) {
        let denial = Denial::UnknownTenant {
            tenant,
            discovery: true,
        };
        return s.deny(denial, &headers);
    }
    Json(s.microsoft_discovery()).into_response()
}

async fn generic_discovery(State(s): State<Arc<Shared>>) -> Response {
    s.lock().stats.discovery_requests += 1;
    Json(s.generic_discovery()).into_response()
}

/// No signing keys: the emulator's tokens are unsigned.
async fn keys() -> Json<Value> {
    Json(json!({ "keys": [] }))
}

async fn authorize(State(s): State<Arc<Shared>>) -> Response {
    let body = format!(
        "<p>Interactive sign-in is not emulated. Use the device code flow and enter the code \
         at <a href=\"{uri}\">{uri}</a>.</p>",
        uri = escape_html(&s.verification_uri()),
    );
    let page = s.page("Not emulated", &body);
    (StatusCode::BAD_REQUEST, Html(page)).into_response()
}

async fn error_page(
    State(s): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
) -> Html<String> {
    let code = query.get("code").map(String::as_str).unwrap_or("");
    let body = format!(
        "<p>AADSTS{code} was answered by the loopback emulation of the Microsoft identity \
         platform. Branch on a response's <code>error</code>, never on this number.</p>",
        code = escape_html(code),
    );
    Html(s.page("Error code lookup", &body))
}

async fn microsoft_device_code(
    State(s): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !s.knows_tenant(&tenant) {
        let denial = Denial::UnknownTenant {
            tenant,
            discovery: false,
        };
        return s.deny(denial, &headers);
    }
    device_code(&s, &headers, &body)
}

async fn generic_device_code(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    device_code(&s, &headers, &body)
}

fn device_code(s: &Shared, headers: &HeaderMap, body: &[u8]) -> Response {
    match s.device_authorization(&parse_form(body)) {
        Ok(answer) => no_store(Json(answer).into_response()),
        Err(denial) => s.deny(denial, headers),
    }
}

async fn microsoft_token(
    State(s): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !s.knows_tenant(&tenant) {
        let denial = Denial::UnknownTenant {
            tenant,
            discovery: false,
        };
        return s.deny(denial, &headers);
    }
    token(&s, &headers, &body).await
}

async fn generic_token(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    token(&s, &headers, &body).await
}

async fn token(s: &Shared, headers: &HeaderMap, body: &[u8]) -> Response {
    let form = parse_form(body);
    let grant_type = form.get("grant_type").map(String::as_str);
    let (failure, held) = {
        let mut st = s.lock();
        st.stats.token_requests += 1;
        let mut held = None;
        match grant_type {
            Some(DEVICE_CODE_GRANT) => {
                st.stats.token_polls += 1;
                held = st.held_poll.take();
            }
            Some("refresh_token") => st.stats.refresh_requests += 1,
            _ => {}
        }
        let failure = st.failures.pop_front();
        if failure.is_some() {
            st.stats.injected_failures += 1;
        }
        (failure, held)
    };
    if let Some(hold) = held {
        hold.arrived
            .store(true, std::sync::atomic::Ordering::SeqCst);
        hold.release.notified().await;
    }
    match failure {
        Some(Failure::Slow(wait)) => tokio::time::sleep(wait).await,
        Some(failure) => return s.injected(failure, headers).await,
        None => {}
    }
    let answer = {
        let mut st = s.lock();
        match grant_type {
            Some(DEVICE_CODE_GRANT) => s.device_code_grant(&mut st, &form),
            Some("refresh_token") => s.refresh_token_grant(&mut st, &form),
            Some(other) if !other.trim().is_empty() => {
                Err(Denial::UnsupportedGrantType(other.to_string()))
            }
            _ => Err(Denial::MissingParameter("grant_type")),
        }
    };
    match answer {
        Ok(tokens) => no_store(Json(tokens).into_response()),
        Err(denial) => s.deny(denial, headers),
    }
}

async fn code_page(
    State(s): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
) -> Html<String> {
    let user_code = query.get("user_code").map(String::as_str).unwrap_or("");
    Html(s.page("Enter code", &s.code_form(user_code)))
}

async fn code_submitted(State(s): State<Arc<Shared>>, body: Bytes) -> Response {
    let form = parse_form(&body);
    let user_code = form.get("user_code").map(String::as_str).unwrap_or("");
    let approve = match form.get("action").map(String::as_str) {
        None | Some("approve") => true,
        Some("decline") => false,
        Some(_) => {
            let page = s.page("Enter code", &s.code_form(user_code));
            return (StatusCode::BAD_REQUEST, Html(page)).into_response();
        }
    };
    let app = escape_html(&s.opts.app_name);
    let (status, title, body) = match s.decide(user_code, approve) {
        Decision::Done if approve => (
            StatusCode::OK,
            "Signed in",
            format!(
                "<p>You have signed in to {app} on your device. You may now close this \
                 window.</p>"
            ),
        ),
        Decision::Done => (
            StatusCode::OK,
            "Sign-in declined",
            format!(
                "<p>You declined to sign in to {app} on your device. You may now close this \
                 window.</p>"
            ),
        ),
        Decision::Unknown => (
            StatusCode::BAD_REQUEST,
            "Enter code",
            format!(
                "<p>That code was not recognised: \u{201c}{}\u{201d}. Check the code shown on \
                 your device and try again.</p>\n{}",
                escape_html(user_code),
                s.code_form("")
            ),
        ),
        Decision::Expired => (
            StatusCode::BAD_REQUEST,
            "Code expired",
            "<p>That code has expired. Start the sign-in again on your device to get a new \
             code.</p>"
                .to_string(),
        ),
        Decision::AlreadyDecided => (
            StatusCode::BAD_REQUEST,
            "Code already used",
            "<p>That code has already been used. Start the sign-in again on your device if \
             you need to.</p>"
                .to_string(),
        ),
    };
    (status, Html(s.page(title, &body))).into_response()
}

async fn control_approve(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    control_decide(&s, &headers, &body, true)
}

async fn control_decline(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    control_decide(&s, &headers, &body, false)
}

/// Approves or declines the `user_code` of a form or JSON body. 200 when done; 404 for
/// an unknown code, 410 for an expired one, 409 for one already decided.
fn control_decide(s: &Shared, headers: &HeaderMap, body: &[u8], approve: bool) -> Response {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    let user_code = if is_json {
        serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v.get("user_code")?.as_str().map(str::to_string))
    } else {
        parse_form(body).remove("user_code")
    };
    let (status, result) = match s.decide(user_code.as_deref().unwrap_or(""), approve) {
        Decision::Done if approve => (StatusCode::OK, "approved"),
        Decision::Done => (StatusCode::OK, "declined"),
        Decision::Unknown => (StatusCode::NOT_FOUND, "unknown"),
        Decision::Expired => (StatusCode::GONE, "expired"),
        Decision::AlreadyDecided => (StatusCode::CONFLICT, "already_decided"),
    };
    let body = json!({ "user_code": user_code, "result": result });
    (status, Json(body)).into_response()
}

async fn control_pending(State(s): State<Arc<Shared>>) -> Json<Value> {
    Json(json!({ "user_codes": s.pending_user_codes() }))
}

async fn control_stats(State(s): State<Arc<Shared>>) -> Json<Stats> {
    Json(s.lock().stats.clone())
}

/// An `application/x-www-form-urlencoded` body; the first of repeated names wins.
fn parse_form(body: &[u8]) -> Form {
    let mut form = Form::new();
    for (name, value) in url::form_urlencoded::parse(body) {
        form.entry(name.into_owned())
            .or_insert_with(|| value.into_owned());
    }
    form
}

fn param<'a>(form: &'a Form, name: &'static str) -> Result<&'a str, Denial> {
    form.get(name)
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
        .ok_or(Denial::MissingParameter(name))
}

/// MSAL sends `client_info=1` to get the home account's `uid` and `utid`.
fn wants_client_info(form: &Form) -> bool {
    form.get("client_info").is_some_and(|v| v.trim() == "1")
}

/// The resource and permission of a Microsoft scope (`https://outlook.office365.com/
/// .default`, `api://app/Read`, or a bare `Mail.Send`, which is Graph's); `None` for the
/// OpenID scopes, `Err` for something that is no scope.
fn split_microsoft_scope(scope: &str) -> Result<Option<(String, String)>, ()> {
    if OIDC_SCOPES.iter().any(|s| s.eq_ignore_ascii_case(scope)) {
        return Ok(None);
    }
    if scope.is_empty() || !scope.chars().all(|c| c.is_ascii_graphic()) {
        return Err(());
    }
    if let Some((_, rest)) = scope.split_once("://")
        && !rest.contains('/')
    {
        return Err(());
    }
    match scope.rsplit_once('/') {
        Some((resource, permission)) if !resource.is_empty() && !permission.is_empty() => {
            Ok(Some((resource.to_string(), permission.to_string())))
        }
        Some(_) => Err(()),
        None => Ok(Some((GRAPH.to_string(), scope.to_string()))),
    }
}

/// The one resource `scopes` ask for (`None` when only OpenID scopes), refusing a scope
/// that is none (AADSTS70011) and more than one resource (AADSTS28000), as Microsoft does.
fn microsoft_resource(scopes: &[String]) -> Result<Option<String>, Denial> {
    let mut found: Option<String> = None;
    for scope in scopes {
        match split_microsoft_scope(scope) {
            Err(()) => return Err(Denial::InvalidScope(scope.clone())),
            Ok(None) => {}
            Ok(Some((resource, _))) => match &found {
                None => found = Some(resource),
                Some(first) if first.eq_ignore_ascii_case(&resource) => {}
                Some(_) => return Err(Denial::MixedResources(scopes.join(" "))),
            },
        }
    }
    Ok(found)
}

/// What a person may type for a code: case, spaces and dashes do not matter.
fn normalise_user_code(code: &str) -> String {
    code.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

fn no_store(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

/// An unsigned JWT: header `{"alg":"none","typ":"JWT"}`, the claims, an empty signature.
fn jwt(claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{header}.{claims}.")
}

fn random_string(chars: &[u8], len: usize) -> String {
    (0..len)
        .map(|_| char::from(chars[fastrand::usize(..chars.len())]))
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

    const OUTLOOK_SCOPES: &str =
        "openid profile offline_access https://outlook.office365.com/.default";

    struct Answer {
        status: u16,
        headers: reqwest::header::HeaderMap,
        body: Value,
        text: String,
    }

    impl Answer {
        fn str(&self, name: &str) -> &str {
            self.body[name].as_str().unwrap_or_else(|| {
                panic!("no string `{name}` in {}", self.text);
            })
        }
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

    fn options(flavour: Flavour) -> IdentityOptions {
        IdentityOptions {
            flavour,
            interval: Some(1),
            ..IdentityOptions::default()
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

    async fn get(c: &reqwest::Client, url: &str) -> Answer {
        answer(c.get(url).send().await.unwrap()).await
    }

    async fn post(c: &reqwest::Client, url: &str, form: &[(&str, &str)]) -> Answer {
        answer(c.post(url).form(form).send().await.unwrap()).await
    }

    async fn device_code(c: &reqwest::Client, idp: &IdentityProvider, scope: &str) -> Answer {
        let form = [("client_id", TEST_CLIENT_ID), ("scope", scope)];
        post(c, &idp.device_authorization_endpoint(), &form).await
    }

    async fn poll(c: &reqwest::Client, idp: &IdentityProvider, device_code: &str) -> Answer {
        let form = [
            ("grant_type", DEVICE_CODE_GRANT),
            ("client_id", TEST_CLIENT_ID),
            ("device_code", device_code),
            ("client_info", "1"),
        ];
        post(c, &idp.token_endpoint(), &form).await
    }

    async fn refresh(c: &reqwest::Client, idp: &IdentityProvider, rt: &str, scope: &str) -> Answer {
        let form = [
            ("grant_type", "refresh_token"),
            ("client_id", TEST_CLIENT_ID),
            ("refresh_token", rt),
            ("scope", scope),
            ("client_info", "1"),
        ];
        post(c, &idp.token_endpoint(), &form).await
    }

    /// A completed device sign-in's token response.
    async fn sign_in(c: &reqwest::Client, idp: &IdentityProvider, scope: &str) -> Answer {
        let code = device_code(c, idp, scope).await;
        assert_eq!(code.status, 200, "{}", code.text);
        assert!(idp.approve(code.str("user_code")));
        let tokens = poll(c, idp, code.str("device_code")).await;
        assert_eq!(tokens.status, 200, "{}", tokens.text);
        tokens
    }

    fn decode(segment: &str) -> Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(segment).unwrap()).unwrap()
    }

    fn jwt_parts(token: &str) -> (Value, Value) {
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3, "{token}");
        assert_eq!(parts[2], "", "unsigned");
        (decode(parts[0]), decode(parts[1]))
    }

    /// Microsoft's error shape, with the `error` and AADSTS number expected.
    fn assert_microsoft_error(a: &Answer, status: u16, error: &str, code: u64) {
        assert_eq!(a.status, status, "{}", a.text);
        assert_eq!(a.str("error"), error, "{}", a.text);
        assert_eq!(a.body["error_codes"], json!([code]), "{}", a.text);
        let description = a.str("error_description");
        assert!(
            description.starts_with(&format!("AADSTS{code}: ")),
            "{description}"
        );
        for part in ["\r\nTrace ID: ", "\r\nCorrelation ID: ", "\r\nTimestamp: "] {
            assert!(description.contains(part), "{description}");
        }
        assert!(description.contains(a.str("trace_id")));
        assert!(description.contains(a.str("correlation_id")));
        assert!(uuid::Uuid::try_parse(a.str("trace_id")).is_ok());
        assert!(uuid::Uuid::try_parse(a.str("correlation_id")).is_ok());
        assert!(a.str("timestamp").ends_with('Z'));
        assert!(a.str("error_uri").ends_with(&format!("/error?code={code}")));
        assert_eq!(a.headers[header::CACHE_CONTROL], "no-store");
    }

    /// A generic provider's error shape: `error` and `error_description`, nothing more.
    fn assert_generic_error(a: &Answer, status: u16, error: &str) {
        assert_eq!(a.status, status, "{}", a.text);
        assert_eq!(a.str("error"), error, "{}", a.text);
        assert!(!a.str("error_description").is_empty());
        assert_eq!(a.body.as_object().unwrap().len(), 2, "{}", a.text);
    }

    #[tokio::test]
    async fn microsoft_discovery_names_the_endpoints_under_the_tenant_id() {
        let idp = IdentityProvider::start(options(Flavour::Microsoft))
            .await
            .unwrap();
        let c = client();
        let base = idp.base_url();
        assert_eq!(idp.authority(), format!("{base}/contoso.onmicrosoft.com"));

        let url = format!("{}/v2.0/.well-known/openid-configuration", idp.authority());
        let doc = get(&c, &url).await;
        assert_eq!(doc.status, 200, "{}", doc.text);
        let tid = "3b7c2f9a-5d41-4e8b-9c06-1f2a7d4e8b53";
        assert_eq!(doc.str("issuer"), format!("{base}/{tid}/v2.0"));
        assert_eq!(doc.str("issuer"), idp.issuer());
        assert_eq!(
            doc.str("token_endpoint"),
            format!("{base}/{tid}/oauth2/v2.0/token")
        );
        assert_eq!(
            doc.str("device_authorization_endpoint"),
            format!("{base}/{tid}/oauth2/v2.0/devicecode")
        );
        assert_eq!(
            doc.str("authorization_endpoint"),
            format!("{base}/{tid}/oauth2/v2.0/authorize")
        );
        assert!(doc.body["response_types_supported"].is_array());
        assert!(
            doc.body["scopes_supported"]
                .as_array()
                .unwrap()
                .contains(&json!("offline_access"))
        );
        let keys = get(&c, doc.str("jwks_uri")).await;
        assert_eq!(keys.body, json!({ "keys": [] }));

        // The tenant id and a differently cased domain name the same tenant.
        let by_id = get(
            &c,
            &format!("{base}/{tid}/v2.0/.well-known/openid-configuration"),
        )
        .await;
        assert_eq!(by_id.body, doc.body);
        let cased = get(
            &c,
            &format!("{base}/Contoso.OnMicrosoft.com/v2.0/.well-known/openid-configuration"),
        )
        .await;
        assert_eq!(cased.status, 200);

        let unknown = get(
            &c,
            &format!("{base}/fabrikam.example/v2.0/.well-known/openid-configuration"),
        )
        .await;
        assert_microsoft_error(&unknown, 400, "invalid_tenant", 90002);
        assert!(
            unknown
                .str("error_description")
                .contains("Tenant 'fabrikam.example' not found")
        );
        assert_eq!(idp.stats().discovery_requests, 4);
    }

    #[tokio::test]
    async fn generic_discovery_is_at_the_issuer() {
        let idp = IdentityProvider::start(options(Flavour::Generic))
            .await
            .unwrap();
        let c = client();
        let base = idp.base_url();
        assert_eq!(idp.authority(), format!("{base}/oidc"));
        let doc = get(
            &c,
            &format!("{}/.well-known/openid-configuration", idp.authority()),
        )
        .await;
        assert_eq!(doc.status, 200, "{}", doc.text);
        assert_eq!(doc.str("issuer"), idp.authority());
        assert_eq!(
            doc.str("device_authorization_endpoint"),
            format!("{base}/oidc/device/auth")
        );
        assert_eq!(doc.str("token_endpoint"), format!("{base}/oidc/token"));
        assert!(
            doc.body["grant_types_supported"]
                .as_array()
                .unwrap()
                .contains(&json!(DEVICE_CODE_GRANT))
        );
        assert_eq!(idp.verification_uri(), format!("{base}/oidc/device"));
        // No Microsoft paths here.
        let ms = get(
            &c,
            &format!("{base}/contoso.onmicrosoft.com/v2.0/.well-known/openid-configuration"),
        )
        .await;
        assert_eq!(ms.status, 404);
        assert_eq!(idp.stats().discovery_requests, 1);
    }

    #[tokio::test]
    async fn a_held_poll_waits_and_another_goes_first() {
        let idp = IdentityProvider::start(options(Flavour::Microsoft))
            .await
            .unwrap();
        let c = client();
        let code = device_code(&c, &idp, OUTLOOK_SCOPES).await;
        let device_code = code.str("device_code").to_string();
        let held = idp.hold_next_poll();
        assert!(!held.arrived());
        let first = poll(&c, &idp, &device_code);
        let second = async {
            while !held.arrived() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let answer = poll(&c, &idp, &device_code).await;
            held.release();
            answer
        };
        let (first, second) = tokio::join!(first, second);
        // The second is answered first (the code's first poll), so the held one comes
        // too soon after it.
        assert_microsoft_error(&second, 400, "authorization_pending", 70016);
        assert_microsoft_error(&first, 400, "slow_down", 50196);
        assert_eq!(idp.stats().token_polls, 2);
        // Only one poll is held.
        idp.advance_clock(Duration::from_secs(10));
        let third = tokio::time::timeout(Duration::from_secs(10), poll(&c, &idp, &device_code))
            .await
            .expect("a later poll is not held");
        assert_microsoft_error(&third, 400, "authorization_pending", 70016);
    }

    #[tokio::test]
    async fn microsoft_device_flow_pending_slow_down_then_granted() {
        let idp = IdentityProvider::start(options(Flavour::Microsoft))
            .await
            .unwrap();
        let c = client();

        let code = device_code(&c, &idp, OUTLOOK_SCOPES).await;
        assert_eq!(code.status, 200, "{}", code.text);
        assert_eq!(code.headers[header::CACHE_CONTROL], "no-store");
        let user_code = code.str("user_code").to_string();
        let device_code = code.str("device_code").to_string();
        assert_eq!(user_code.len(), 9);
        assert!(
            user_code
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
        );
        assert!(device_code.len() > 100);
        let uri = format!("{}/devicelogin", idp.base_url());
        assert_eq!(code.str("verification_uri"), uri);
        assert_eq!(code.body["expires_in"], 900);
        assert_eq!(code.body["interval"], 1);
        assert_eq!(
            code.str("message"),
            format!(
                "To sign in, use a web browser to open the page {uri} and enter the code \
                 {user_code} to authenticate."
            )
        );
        assert!(code.body.get("verification_uri_complete").is_none());
        assert_eq!(idp.pending_user_codes(), vec![user_code.clone()]);

        // The first poll may come at once; the next one only after the interval.
        assert_microsoft_error(
            &poll(&c, &idp, &device_code).await,
            400,
            "authorization_pending",
            70016,
        );
        let fast = poll(&c, &idp, &device_code).await;
        assert_microsoft_error(&fast, 400, "slow_down", 50196);
        assert!(fast.str("error_description").contains("every 6 seconds"));
        // The interval is now 6 s: polling after 2 s is still too fast.
        idp.advance_clock(Duration::from_secs(2));
        assert_eq!(poll(&c, &idp, &device_code).await.str("error"), "slow_down");
        idp.advance_clock(Duration::from_secs(12));
        assert_eq!(
            poll(&c, &idp, &device_code).await.str("error"),
            "authorization_pending"
        );
        assert_eq!(idp.stats().slow_downs, 2);

        // As the person would type it.
        assert!(idp.approve(&format!(" {} ", user_code.to_lowercase())));
        assert!(!idp.approve(&user_code), "a code is decided once");
        assert!(idp.pending_user_codes().is_empty());

        let tokens = poll(&c, &idp, &device_code).await;
        assert_eq!(tokens.status, 200, "{}", tokens.text);
        assert_eq!(tokens.headers[header::CACHE_CONTROL], "no-store");
        assert_eq!(tokens.str("token_type"), "Bearer");
        assert_eq!(tokens.body["expires_in"], 3600);
        assert_eq!(tokens.body["ext_expires_in"], 3600);
        let scope = tokens.str("scope");
        assert!(
            scope.contains("https://outlook.office365.com/.default"),
            "{scope}"
        );
        assert!(
            scope.contains("openid") && !scope.contains("offline_access"),
            "{scope}"
        );

        let (header, claims) = jwt_parts(tokens.str("id_token"));
        assert_eq!(header, json!({ "alg": "none", "typ": "JWT" }));
        let user = TestUser::default();
        assert_eq!(claims["aud"], TEST_CLIENT_ID);
        assert_eq!(claims["iss"], idp.issuer());
        assert_eq!(claims["preferred_username"], user.username);
        assert_eq!(claims["name"], user.name);
        assert_eq!(claims["oid"], user.oid);
        assert_eq!(claims["tid"], user.tid);
        assert_eq!(claims["sub"], user.sub);
        assert_eq!(claims["ver"], "2.0");
        let iat = claims["iat"].as_i64().unwrap();
        assert_eq!(claims["nbf"].as_i64(), Some(iat));
        assert_eq!(claims["exp"].as_i64(), Some(iat + 3600));

        let client_info = decode(tokens.str("client_info"));
        assert_eq!(client_info, json!({ "uid": user.uid, "utid": user.tid }));

        let access_token = tokens.str("access_token");
        let (_, at_claims) = jwt_parts(access_token);
        assert_eq!(at_claims["aud"], "https://outlook.office365.com");
        assert_eq!(at_claims["upn"], user.username);
        let info = idp.access_token_info(access_token).unwrap();
        assert_eq!(info.resource, "https://outlook.office365.com");
        assert_eq!(info.client_id, TEST_CLIENT_ID);
        assert!(!info.expired && !info.revoked);
        let refresh_token = tokens.str("refresh_token");
        assert!(refresh_token.starts_with("1.A") && refresh_token.len() > 200);

        let stats = idp.stats();
        for secret in [
            &device_code,
            access_token,
            refresh_token,
            tokens.str("id_token"),
        ] {
            assert!(stats.issued_secrets.iter().any(|s| s == secret));
        }
        assert_eq!(stats.device_code_scopes, vec![OUTLOOK_SCOPES.to_string()]);
        assert_eq!((stats.token_polls, stats.device_grants), (5, 1));

        // A redeemed code is spent; at Microsoft that does not touch the grant.
        let again = poll(&c, &idp, &device_code).await;
        assert_microsoft_error(&again, 400, "invalid_grant", 70000);
        let refreshed = refresh(
            &c,
            &idp,
            refresh_token,
            "https://outlook.office365.com/.default",
        )
        .await;
        assert_eq!(refreshed.status, 200, "{}", refreshed.text);
    }

    #[tokio::test]
    async fn the_client_request_id_becomes_the_correlation_id() {
        let idp = IdentityProvider::start(options(Flavour::Microsoft))
            .await
            .unwrap();
        let id = "0b6f3f5e-4b1d-4c8e-9a55-2f5d0a9e7c11";
        let response = client()
            .post(idp.token_endpoint())
            .header("client-request-id", id)
            .form(&[
                ("grant_type", DEVICE_CODE_GRANT),
                ("client_id", TEST_CLIENT_ID),
                ("device_code", "nope"),
            ])
            .send()
            .await
            .unwrap();
        let a = answer(response).await;
        assert_microsoft_error(&a, 400, "bad_verification_code", 70018);
        assert_eq!(a.str("correlation_id"), id);
    }

    #[tokio::test]
    async fn a_declined_sign_in_is_final() {
        let idp = IdentityProvider::start(options(Flavour::Microsoft))
            .await
            .unwrap();
        let c = client();
        let code = device_code(&c, &idp, OUTLOOK_SCOPES).await;
        assert!(idp.decline(code.str("user_code")));
        assert!(!idp.approve(code.str("user_code")));
        let a = poll(&c, &idp, code.str("device_code")).await;
        assert_microsoft_error(&a, 400, "authorization_declined", 70000);
        assert_eq!(idp.stats().device_grants, 0);
    }

    #[tokio::test]
    async fn codes_expire_after_their_lifetime_or_on_demand() {
        let idp = IdentityProvider::start(options(Flavour::Microsoft))
            .await
            .unwrap();
        let c = client();

        let first = device_code(&c, &idp, OUTLOOK_SCOPES).await;
        idp.expire_codes();
        assert_microsoft_error(
            &poll(&c, &idp, first.str("device_code")).await,
            400,
            "expired_token",
            70019,
        );
        assert!(!idp.approve(first.str("user_code")));

        // Approved but not yet redeemed when its lifetime runs out.
        let second = device_code(&c, &idp, OUTLOOK_SCOPES).await;
        assert_eq!(
            idp.pending_user_codes(),
            vec![second.str("user_code").to_string()]
        );
        assert!(idp.approve(second.str("user_code")));
        idp.advance_clock(Duration::from_secs(900));
        assert_microsoft_error(
            &poll(&c, &idp, second.str("device_code")).await,
            400,
            "expired_token",
            70019,
        );

        let third = device_code(&c, &idp, OUTLOOK_SCOPES).await;
        idp.advance_clock(Duration::from_secs(901));
        assert!(idp.pending_user_codes().is_empty());
        assert!(!idp.approve(third.str("user_code")));
    }

    #[tokio::test]
    async fn malformed_and_unknown_requests_get_microsofts_errors() {
        let idp = IdentityProvider::start(options(Flavour::Microsoft))
            .await
            .unwrap();
        let c = client();
        let token = idp.token_endpoint();
        let devicecode = idp.device_authorization_endpoint();

        let bad = poll(&c, &idp, "DAQABIQEAAADnot-a-code").await;
        assert_microsoft_error(&bad, 400, "bad_verification_code", 70018);
        let missing = post(
            &c,
            &token,
            &[
                ("grant_type", DEVICE_CODE_GRANT),
                ("client_id", TEST_CLIENT_ID),
            ],
        )
        .await;
        assert_microsoft_error(&missing, 400, "invalid_request", 900144);
        assert!(missing.str("error_description").contains("'device_code'"));
        let no_grant = post(&c, &token, &[("client_id", TEST_CLIENT_ID)]).await;
        assert_microsoft_error(&no_grant, 400, "invalid_request", 900144);
        let password = post(
            &c,
            &token,
            &[("grant_type", "password"), ("client_id", TEST_CLIENT_ID)],
        )
        .await;
        assert_microsoft_error(&password, 400, "unsupported_grant_type", 70003);

        let stranger = "11111111-2222-3333-4444-555555555555";
        let unknown_client = post(
            &c,
            &devicecode,
            &[("client_id", stranger), ("scope", OUTLOOK_SCOPES)],
        )
        .await;
        assert_microsoft_error(&unknown_client, 400, "unauthorized_client", 700016);
        assert!(unknown_client.str("error_description").contains(stranger));
        let no_client = post(&c, &devicecode, &[("scope", OUTLOOK_SCOPES)]).await;
        assert_microsoft_error(&no_client, 400, "invalid_request", 900144);
        let no_scope = post(&c, &devicecode, &[("client_id", TEST_CLIENT_ID)]).await;
        assert_microsoft_error(&no_scope, 400, "invalid_request", 900144);
        let only_offline = device_code(&c, &idp, "offline_access").await;
        assert_microsoft_error(&only_offline, 400, "invalid_scope", 70011);
        let mixed = device_code(
            &c,
            &idp,
            "openid https://graph.microsoft.com/.default https://outlook.office365.com/.default",
        )
        .await;
        assert_microsoft_error(&mixed, 400, "invalid_scope", 28000);
        let host_only = device_code(&c, &idp, "openid https://graph.microsoft.com").await;
        assert_microsoft_error(&host_only, 400, "invalid_scope", 70011);

        let elsewhere = format!("{}/fabrikam.example/oauth2/v2.0/devicecode", idp.base_url());
        let wrong_tenant = post(
            &c,
            &elsewhere,
            &[("client_id", TEST_CLIENT_ID), ("scope", OUTLOOK_SCOPES)],
        )
        .await;
        assert_microsoft_error(&wrong_tenant, 400, "invalid_request", 90002);

        // Bare Graph permissions and OpenID scopes alone are fine.
        assert_eq!(device_code(&c, &idp, "openid profile").await.status, 200);
        assert_eq!(
            device_code(&c, &idp, "User.Read Mail.Send offline_access")
                .await
                .status,
            200
        );
        let stats = idp.stats();
        assert_eq!(stats.device_code_requests, 8);
        assert_eq!(
            stats.device_code_scopes.len(),
            5,
            "requests that named a known client"
        );
    }

    #[tokio::test]
    async fn refresh_tokens_rotate_and_a_used_one_is_refused() {
        let idp = IdentityProvider::start(options(Flavour::Microsoft))
            .await
            .unwrap();
        let c = client();
        let first = sign_in(&c, &idp, OUTLOOK_SCOPES).await;
        let rt1 = first.str("refresh_token");

        // One refresh token serves another resource.
        let graph = refresh(
            &c,
            &idp,
            rt1,
            "https://graph.microsoft.com/.default openid profile offline_access",
        )
        .await;
        assert_eq!(graph.status, 200, "{}", graph.text);
        let rt2 = graph.str("refresh_token");
        assert_ne!(rt1, rt2);
        assert_eq!(
            idp.access_token_info(graph.str("access_token"))
                .unwrap()
                .resource,
            GRAPH
        );
        assert!(graph.body.get("client_info").is_some() && graph.body.get("id_token").is_some());

        let reused = refresh(&c, &idp, rt1, "https://graph.microsoft.com/.default").await;
        assert_microsoft_error(&reused, 400, "invalid_grant", 70000);
        assert!(reused.str("error_description").contains("revoked or used"));
        assert_eq!(idp.stats().refresh_reuse, 1);

        // A refused request consumes nothing.
        let mixed = refresh(
            &c,
            &idp,
            rt2,
            "https://graph.microsoft.com/.default https://outlook.office365.com/.default",
        )
        .await;
        assert_microsoft_error(&mixed, 400, "invalid_scope", 28000);
        let outlook = refresh(&c, &idp, rt2, "https://outlook.office365.com/.default").await;
        assert_eq!(outlook.status, 200, "{}", outlook.text);
        assert!(outlook.body.get("id_token").is_none(), "no openid asked");

        let unknown = refresh(
            &c,
            &idp,
            "1.Anot-a-token",
            "https://graph.microsoft.com/.default",
        )
        .await;
        assert_microsoft_error(&unknown, 400, "invalid_grant", 9002313);

        let stats = idp.stats();
        assert_eq!(
            (
                stats.refresh_requests,
                stats.refresh_grants,
                stats.refresh_reuse
            ),
            (5, 2, 1)
        );
        assert_eq!(stats.refresh_scopes.len(), 3, "requests with a live token");
    }

    #[tokio::test]
    async fn no_refresh_token_without_offline_access() {
        let idp = IdentityProvider::start(options(Flavour::Microsoft))
            .await
            .unwrap();
        let tokens = sign_in(&client(), &idp, "openid profile").await;
        assert!(tokens.body.get("refresh_token").is_none());
        assert_eq!(
            tokens.str("scope"),
            "openid profile https://graph.microsoft.com/User.Read"
        );
    }

    #[tokio::test]
    async fn interaction_and_revocation_end_refreshes_until_a_new_sign_in() {
        let idp = IdentityProvider::start(options(Flavour::Microsoft))
            .await
            .unwrap();
        let c = client();
        let outlook = "https://outlook.office365.com/.default";
        let old = sign_in(&c, &idp, OUTLOOK_SCOPES).await;

        idp.require_interaction(Some("basic_action"));
        let mfa = refresh(&c, &idp, old.str("refresh_token"), outlook).await;
        assert_microsoft_error(&mfa, 400, "interaction_required", 50076);
        assert_eq!(mfa.str("suberror"), "basic_action");
        assert!(
            mfa.str("error_description")
                .contains("https://outlook.office365.com")
        );

        let new = sign_in(&c, &idp, OUTLOOK_SCOPES).await;
        let after = refresh(&c, &idp, new.str("refresh_token"), outlook).await;
        assert_eq!(after.status, 200, "{}", after.text);
        // The refused refresh did not spend the old token.
        assert_eq!(
            refresh(&c, &idp, old.str("refresh_token"), outlook)
                .await
                .status,
            200
        );

        idp.revoke_grants();
        let revoked = refresh(&c, &idp, after.str("refresh_token"), outlook).await;
        assert_microsoft_error(&revoked, 400, "invalid_grant", 50173);
        assert!(
            idp.access_token_info(after.str("access_token"))
                .unwrap()
                .revoked
        );

        let fresh = sign_in(&c, &idp, OUTLOOK_SCOPES).await;
        assert_eq!(
            refresh(&c, &idp, fresh.str("refresh_token"), outlook)
                .await
                .status,
            200
        );

        idp.require_interaction(None);
        let plain = refresh(&c, &idp, fresh.str("refresh_token"), outlook).await;
        assert_eq!(plain.status, 400);
        assert!(plain.body.get("suberror").is_none());
    }

    #[tokio::test]
    async fn generic_provider_answers_rfc_8628_and_revokes_the_whole_grant_on_reuse() {
        let mut opts = options(Flavour::Generic);
        opts.interval = None;
        let idp = IdentityProvider::start(opts).await.unwrap();
        let c = client();
        let scope = "openid profile offline_access";

        let code = device_code(&c, &idp, scope).await;
        assert_eq!(code.status, 200, "{}", code.text);
        let user_code = code.str("user_code").to_string();
        let rfc = |s: &str| s.len() == 4 && s.bytes().all(|b| RFC_USER_CODE_CHARS.contains(&b));
        let halves: Vec<&str> = user_code.split('-').collect();
        assert!(
            halves.len() == 2 && halves.iter().all(|h| rfc(h)),
            "{user_code}"
        );
        assert_eq!(code.str("verification_uri"), idp.verification_uri());
        assert_eq!(
            code.str("verification_uri_complete"),
            format!("{}?user_code={user_code}", idp.verification_uri())
        );
        for absent in ["message", "interval"] {
            assert!(code.body.get(absent).is_none(), "{}", code.text);
        }
        let device_code = code.str("device_code");

        // Without an interval the RFC's 5 seconds apply.
        assert_generic_error(
            &poll(&c, &idp, device_code).await,
            400,
            "authorization_pending",
        );
        assert_generic_error(&poll(&c, &idp, device_code).await, 400, "slow_down");
        assert!(idp.approve(&user_code.replace('-', "")));
        let tokens = poll(&c, &idp, device_code).await;
        assert_eq!(tokens.status, 200, "{}", tokens.text);
        for absent in ["client_info", "ext_expires_in"] {
            assert!(tokens.body.get(absent).is_none(), "{}", tokens.text);
        }
        assert_eq!(tokens.str("scope"), scope);
        let (_, claims) = jwt_parts(tokens.str("id_token"));
        assert_eq!(claims["iss"], idp.authority());
        assert_eq!(claims["aud"], TEST_CLIENT_ID);
        assert!(claims.get("tid").is_none());
        let rt = tokens.str("refresh_token");

        // The spent code comes back: the grant made with it is revoked.
        assert_generic_error(&poll(&c, &idp, device_code).await, 400, "invalid_grant");
        assert_generic_error(&refresh(&c, &idp, rt, scope).await, 400, "invalid_grant");
        assert!(
            idp.access_token_info(tokens.str("access_token"))
                .unwrap()
                .revoked
        );

        // A rotated refresh token comes back: its successor dies with the grant.
        let second = sign_in(&c, &idp, scope).await;
        let rt1 = second.str("refresh_token");
        let rotated = refresh(&c, &idp, rt1, scope).await;
        assert_eq!(rotated.status, 200, "{}", rotated.text);
        let rt2 = rotated.str("refresh_token");
        assert_generic_error(&refresh(&c, &idp, rt1, scope).await, 400, "invalid_grant");
        assert_generic_error(&refresh(&c, &idp, rt2, scope).await, 400, "invalid_grant");
        assert_eq!(idp.stats().refresh_reuse, 1);

        let third = sign_in(&c, &idp, scope).await;
        let wider = refresh(&c, &idp, third.str("refresh_token"), "openid email").await;
        assert_generic_error(&wider, 400, "invalid_scope");
        let narrower = refresh(&c, &idp, third.str("refresh_token"), "openid").await;
        assert_eq!(narrower.status, 200, "{}", narrower.text);
    }

    #[tokio::test]
    async fn generic_provider_errors() {
        let idp = IdentityProvider::start(options(Flavour::Generic))
            .await
            .unwrap();
        let c = client();
        let code = device_code(&c, &idp, "openid offline_access").await;
        assert_eq!(code.body["interval"], 1);
        assert_generic_error(&poll(&c, &idp, "not-a-code").await, 400, "invalid_grant");
        assert_generic_error(
            &device_code(&c, &idp, "profile offline_access").await,
            400,
            "invalid_scope",
        );
        let stranger = [("client_id", "someone-else"), ("scope", "openid")];
        let unknown = post(&c, &idp.device_authorization_endpoint(), &stranger).await;
        assert_generic_error(&unknown, 401, "invalid_client");
        assert!(idp.decline(code.str("user_code")));
        assert_generic_error(
            &poll(&c, &idp, code.str("device_code")).await,
            400,
            "access_denied",
        );
        let expiring = device_code(&c, &idp, "openid").await;
        idp.expire_codes();
        assert_generic_error(
            &poll(&c, &idp, expiring.str("device_code")).await,
            400,
            "expired_token",
        );
    }

    #[tokio::test]
    async fn injected_failures_answer_the_next_token_requests() {
        let idp = IdentityProvider::start(options(Flavour::Microsoft))
            .await
            .unwrap();
        let c = client();
        let code = device_code(&c, &idp, OUTLOOK_SCOPES).await;
        let device_code = code.str("device_code");

        idp.fail_token_requests(1, Failure::ServiceUnavailable);
        idp.fail_token_requests(
            2,
            Failure::Throttled {
                retry_after: "7".to_string(),
            },
        );
        let date = "Wed, 21 Oct 2015 07:28:00 GMT";
        idp.fail_token_requests(
            1,
            Failure::Throttled {
                retry_after: date.to_string(),
            },
        );
        idp.fail_token_requests(1, Failure::Timeout(Duration::from_millis(200)));

        let unavailable = poll(&c, &idp, device_code).await;
        assert_microsoft_error(&unavailable, 503, "temporarily_unavailable", 90033);
        for _ in 0..2 {
            let throttled = poll(&c, &idp, device_code).await;
            assert_microsoft_error(&throttled, 429, "temporarily_unavailable", 90055);
            assert_eq!(throttled.headers[header::RETRY_AFTER], "7");
        }
        assert_eq!(
            poll(&c, &idp, device_code).await.headers[header::RETRY_AFTER],
            date
        );
        let started = Instant::now();
        let timeout = poll(&c, &idp, device_code).await;
        assert_eq!(timeout.status, 504);
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert_microsoft_error(
            &poll(&c, &idp, device_code).await,
            400,
            "authorization_pending",
            70016,
        );

        // Refreshes too; a failed one spends nothing.
        assert!(idp.approve(code.str("user_code")));
        let tokens = poll(&c, &idp, device_code).await;
        idp.fail_token_requests(1, Failure::ServiceUnavailable);
        let rt = tokens.str("refresh_token");
        let outlook = "https://outlook.office365.com/.default";
        assert_eq!(refresh(&c, &idp, rt, outlook).await.status, 503);
        assert_eq!(refresh(&c, &idp, rt, outlook).await.status, 200);

        let stats = idp.stats();
        assert_eq!(stats.injected_failures, 6);
        assert_eq!(
            (
                stats.token_polls,
                stats.refresh_requests,
                stats.token_requests
            ),
            (7, 2, 9)
        );
    }

    #[tokio::test]
    async fn a_person_approves_and_declines_on_the_page() {
        let idp = IdentityProvider::start(options(Flavour::Microsoft))
            .await
            .unwrap();
        let c = client();
        let page_url = idp.verification_uri();

        let page = get(&c, &page_url).await;
        assert_eq!(page.status, 200);
        assert!(
            page.text
                .contains("<form method=\"post\" action=\"/devicelogin\">"),
            "{}",
            page.text
        );
        assert!(page.text.contains("name=\"user_code\""));

        let code = device_code(&c, &idp, OUTLOOK_SCOPES).await;
        let typed = format!(" {} ", code.str("user_code").to_lowercase());
        let signed_in = post(
            &c,
            &page_url,
            &[("user_code", &typed), ("action", "approve")],
        )
        .await;
        assert_eq!(signed_in.status, 200, "{}", signed_in.text);
        assert!(
            signed_in
                .text
                .contains("You have signed in to imm-daemon on your device")
        );
        assert_eq!(poll(&c, &idp, code.str("device_code")).await.status, 200);
        let again = post(
            &c,
            &page_url,
            &[("user_code", code.str("user_code")), ("action", "approve")],
        )
        .await;
        assert_eq!(again.status, 400);
        assert!(again.text.contains("already been used"));

        let hostile = "<script>alert('x')</script>";
        let unknown = post(
            &c,
            &page_url,
            &[("user_code", hostile), ("action", "approve")],
        )
        .await;
        assert_eq!(unknown.status, 400);
        assert!(unknown.text.contains("That code was not recognised"));
        assert!(
            unknown
                .text
                .contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;")
        );
        assert!(!unknown.text.contains("<script>"));

        let second = device_code(&c, &idp, OUTLOOK_SCOPES).await;
        let declined = post(
            &c,
            &page_url,
            &[
                ("user_code", second.str("user_code")),
                ("action", "decline"),
            ],
        )
        .await;
        assert_eq!(declined.status, 200);
        assert!(declined.text.contains("declined"));
        let a = poll(&c, &idp, second.str("device_code")).await;
        assert_microsoft_error(&a, 400, "authorization_declined", 70000);

        let third = device_code(&c, &idp, OUTLOOK_SCOPES).await;
        idp.expire_codes();
        let expired = post(&c, &page_url, &[("user_code", third.str("user_code"))]).await;
        assert_eq!(expired.status, 400);
        assert!(expired.text.contains("expired"));
    }

    #[tokio::test]
    async fn the_generic_page_is_prefilled_from_the_complete_uri() {
        let idp = IdentityProvider::start(options(Flavour::Generic))
            .await
            .unwrap();
        let c = client();
        let code = device_code(&c, &idp, "openid offline_access").await;
        let page = get(&c, code.str("verification_uri_complete")).await;
        assert!(
            page.text
                .contains(&format!("value=\"{}\"", code.str("user_code"))),
            "{}",
            page.text
        );
        assert!(page.text.contains("action=\"/oidc/device\""));
        let form = [("user_code", code.str("user_code")), ("action", "approve")];
        let done = post(&c, &idp.verification_uri(), &form).await;
        assert_eq!(done.status, 200, "{}", done.text);
        assert_eq!(poll(&c, &idp, code.str("device_code")).await.status, 200);
    }

    #[tokio::test]
    async fn without_control_routes_nobody_approves_or_reads_secrets_over_http() {
        let idp = IdentityProvider::start(IdentityOptions {
            control_routes: false,
            ..options(Flavour::Microsoft)
        })
        .await
        .unwrap();
        let c = client();
        let base = idp.base_url();
        for path in ["/_sandbox/pending", "/_sandbox/stats"] {
            assert_eq!(
                get(&c, &format!("{base}{path}")).await.status,
                404,
                "{path}"
            );
        }
        let code = device_code(&c, &idp, "openid offline_access").await;
        let form = [("user_code", code.str("user_code"))];
        let refused = post(&c, &format!("{base}/_sandbox/approve"), &form).await;
        assert_eq!(refused.status, 404, "{}", refused.text);
        // The person's page still works.
        assert_eq!(get(&c, &idp.verification_uri()).await.status, 200);
    }

    #[tokio::test]
    async fn the_sandbox_control_endpoints_drive_the_provider() {
        let idp = IdentityProvider::start(options(Flavour::Microsoft))
            .await
            .unwrap();
        let c = client();
        let base = idp.base_url();
        let first = device_code(&c, &idp, OUTLOOK_SCOPES).await;
        let second = device_code(&c, &idp, OUTLOOK_SCOPES).await;

        let pending = get(&c, &format!("{base}/_sandbox/pending")).await;
        assert_eq!(
            pending.body["user_codes"],
            json!([first.str("user_code"), second.str("user_code")])
        );
        let newest = idp.wait_for_user_code_async(Duration::from_secs(1)).await;
        assert_eq!(newest.as_deref(), Some(second.str("user_code")));

        let approve = c
            .post(format!("{base}/_sandbox/approve"))
            .json(&json!({ "user_code": first.str("user_code") }))
            .send()
            .await
            .unwrap();
        let approved = answer(approve).await;
        assert_eq!((approved.status, approved.str("result")), (200, "approved"));
        let declined = post(
            &c,
            &format!("{base}/_sandbox/decline"),
            &[("user_code", second.str("user_code"))],
        )
        .await;
        assert_eq!((declined.status, declined.str("result")), (200, "declined"));
        let twice = post(
            &c,
            &format!("{base}/_sandbox/decline"),
            &[("user_code", second.str("user_code"))],
        )
        .await;
        assert_eq!(
            (twice.status, twice.str("result")),
            (409, "already_decided")
        );
        let unknown = post(
            &c,
            &format!("{base}/_sandbox/approve"),
            &[("user_code", "NOPE")],
        )
        .await;
        assert_eq!((unknown.status, unknown.str("result")), (404, "unknown"));

        assert_eq!(poll(&c, &idp, first.str("device_code")).await.status, 200);
        let stats = get(&c, &format!("{base}/_sandbox/stats")).await;
        assert_eq!(stats.body["device_code_requests"], 2);
        assert_eq!(stats.body["device_grants"], 1);
        assert_eq!(
            stats.body["issued_secrets"].as_array().unwrap().len(),
            2 + 3
        );
    }

    #[test]
    fn a_background_provider_serves_sync_callers_and_stops_when_dropped() {
        let idp = IdentityProvider::start_in_background(options(Flavour::Microsoft)).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let c = client();
        let code = rt.block_on(device_code(&c, &idp, OUTLOOK_SCOPES));
        assert_eq!(code.status, 200, "{}", code.text);
        let user_code = idp.wait_for_user_code(Duration::from_secs(2));
        assert_eq!(user_code.as_deref(), Some(code.str("user_code")));
        assert!(idp.approve(code.str("user_code")));
        assert_eq!(
            rt.block_on(poll(&c, &idp, code.str("device_code"))).status,
            200
        );
        assert_eq!(idp.wait_for_user_code(Duration::from_millis(30)), None);

        let stats_url = format!("{}/_sandbox/stats", idp.base_url());
        drop(idp);
        let after = rt.block_on(async { c.get(&stats_url).send().await });
        assert!(after.is_err(), "the server is gone");
    }
}
