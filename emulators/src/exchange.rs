//! The Exchange Online admin REST endpoint that the ExchangeOnlineManagement module (v3)
//! runs its cmdlets through: `POST {base}/adminapi/beta/{tenant}/InvokeCommand` with a
//! `{"CmdletInput": {"CmdletName": ..., "Parameters": {...}}}` body and an optional
//! `?$select=` of properties. It answers `Get-Mailbox` and `Get-MailboxStatistics` from
//! an in-memory tenant ([`synthetic_tenant`], [`synthetic_others`]) with Exchange's
//! envelope (`@odata.context`, `@adminapi.warnings`, `value`, `@odata.nextLink`), record
//! shape (sidecar keys such as `ExchangeGuid@data.type`, dates with seven fractional
//! digits, sizes as `"5.7 MB (5,976,557 bytes)"`, `""` for an unset
//! `ExternalDirectoryObjectId`), error bodies (the useful text in `details[0].message`,
//! shaped `Ex6F9304|ExceptionType|text`) and headers (`request-id`, `Rate-Limit-*`,
//! `X-ConcurrencyCount`).
//!
//! Paging is as strict as clients report the real service to be. A listing is a snapshot
//! of the matching mailboxes taken when its first page is served; the next page is fetched
//! by POSTing the same body to `@odata.nextLink` with the same `X-AnchorMailbox` as the
//! first page, within [`ExchangeOptions::link_lifetime`], else the answer is 400 "Expired
//! or Invalid pagination request". Without `"ResultSize": "Unlimited"` a listing stops
//! after 1000 objects (or the number given) and says so only in a warning.
//!
//! Test controls act as a struggling service ([`fail_next`], [`fail_next_on`],
//! [`fail_page`]: throttling, 503, 504, the per-tenant concurrency limit, transient server
//! exceptions, a claims challenge, a 403 whose body is NUL bytes falsely labelled gzip, a
//! body cut off half-way, HTML instead of JSON, a dropped connection), a slow one
//! ([`set_latency`]), a crowded one ([`set_concurrency_cap`]) or one whose links lapse
//! ([`expire_links`]); the tenant changes under a client through [`add`], [`remove`],
//! [`update`], [`release_holds`] and [`set_statistics`]; [`requests`] tells what clients
//! asked (anchors, cookies, `$select`, `Prefer`, statistics calls per mailbox).
//!
//! With a [`TokenChecker`] (such as [`IdentityProvider::token_checker`]) only unexpired,
//! unrevoked access tokens for `https://outlook.office365.com` that the identity emulator
//! issued are accepted (a Graph token is refused); without one, any non-empty bearer
//! token is.
//!
//! Deliberate simplifications: only the two cmdlets exist, and only the parameters
//! `InactiveMailboxOnly`, `ResultSize`, `Identity` and `IncludeSoftDeletedRecipients` mean
//! anything (`IncludeInactiveMailbox` and `SoftDeletedMailbox` are accepted and ignored).
//! Without `InactiveMailboxOnly` a listing returns every mailbox of the tenant, active,
//! soft-deleted and inactive alike (at Microsoft plain `Get-Mailbox` lists active ones and
//! the switches select the others): a client that forgets the switch sees the wrong
//! mailboxes at once. There is no `$batch`, `$filter` or CLIXML, roles are not checked,
//! and `@odata.nextLink` serves pages of the size the first page was asked for.
//! Production code never depends on this module: it only ever sees a base URL.
//!
//! [`fail_next`]: ExchangeServer::fail_next
//! [`fail_next_on`]: ExchangeServer::fail_next_on
//! [`fail_page`]: ExchangeServer::fail_page
//! [`set_latency`]: ExchangeServer::set_latency
//! [`set_concurrency_cap`]: ExchangeServer::set_concurrency_cap
//! [`expire_links`]: ExchangeServer::expire_links
//! [`add`]: ExchangeServer::add
//! [`remove`]: ExchangeServer::remove
//! [`update`]: ExchangeServer::update
//! [`release_holds`]: ExchangeServer::release_holds
//! [`set_statistics`]: ExchangeServer::set_statistics
//! [`requests`]: ExchangeServer::requests
//! [`IdentityProvider::token_checker`]: super::IdentityProvider::token_checker

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, TimeDelta, Utc};
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::{Server, TestUser, TokenChecker};

/// The audience an access token must carry.
const EXCHANGE_RESOURCE: &str = "https://outlook.office365.com";
/// Objects per page when the client states no `odata.maxpagesize`.
const DEFAULT_PAGE_SIZE: usize = 1000;
/// Objects per listing when the client sends no `ResultSize`.
const DEFAULT_RESULT_SIZE: usize = 1000;
/// The server error texts name.
const SERVER_FQDN: &str = "EURP123A001.PROD.OUTLOOK.COM";
/// The tenant's initial domain, in directory paths and secondary addresses.
const ORGANIZATION: &str = "contoso.onmicrosoft.com";
const RATE_LIMIT: u64 = 30_000;
const JSON_TYPE: &str = "application/json; odata.metadata=minimal; charset=utf-8";
const MORE_RESULTS: &str = "There are more results available than are currently displayed. \
                            To view them, increase the value for the ResultSize parameter.";
const PAGINATION_REFUSED: &str = "|Microsoft.Exchange.Management.RestApiClient.RestClientException|\
                                  Expired or Invalid pagination request. Default Expiry time is 00:30:00";
const CONCURRENCY_TEXT: &str = "You have reached the maximum number of concurrent requests per \
                                tenant. Please wait and try again";
const NOT_FOUND_TYPE: &str =
    "Ex6F9304|Microsoft.Exchange.Management.Tasks.ManagementObjectNotFoundException";
const PARAMETER_BINDING: &str = "|System.Management.Automation.ParameterBindingException";
/// `WWW-Authenticate` of a 401, before its `error` parameter.
const CHALLENGE: &str = "Bearer client_id=\"00000002-0000-0ff1-ce00-000000000000\", \
                         trusted_issuers=\"00000001-0000-0000-c000-000000000000@*\", \
                         token_types=\"app_asserting_user\", \
                         authorization_uri=\"https://login.microsoftonline.com/common/oauth2/authorize\"";

/// Where a mailbox is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MailboxKind {
    /// Soft-deleted while on hold: kept, and listed by `Get-Mailbox -InactiveMailboxOnly`.
    Inactive,
    /// Soft-deleted without a hold: purged after 30 days, not inactive.
    SoftDeleted,
    /// An ordinary mailbox in use.
    Active,
}

/// One mailbox of the emulated tenant: what the emulator renders its `Get-Mailbox` and
/// `Get-MailboxStatistics` records from. Properties not kept here (`Guid`, `WhenCreated`,
/// `ArchiveGuid`, the litigation hold's date and duration, ...) are derived from the
/// `exchange_guid`, so they are stable across listings.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantMailbox {
    pub kind: MailboxKind,
    /// The stable key, a lower-case hyphenated GUID.
    pub exchange_guid: String,
    pub display_name: String,
    pub primary_smtp: String,
    pub user_principal_name: String,
    /// `None` for an active mailbox.
    pub when_soft_deleted: Option<DateTime<Utc>>,
    pub when_changed: DateTime<Utc>,
    pub litigation_hold: bool,
    /// `InPlaceHolds`: `UniH<guid>`, `mbx<hex>:n`, `grp<hex>:n`, `skp<hex>:n`, a bare GUID,
    /// or a `-mbx<hex>` exclusion (not a hold).
    pub in_place_holds: Vec<String>,
    pub compliance_tag_hold: bool,
    pub delay_hold: bool,
    pub delay_release_hold: bool,
    pub auto_expanding_archive: bool,
    /// `ArchiveStatus`: "None" or "Active".
    pub archive_status: String,
    /// Rendered as `""` when `None`, as Exchange does.
    pub external_directory_object_id: Option<String>,
    /// `CustomAttribute1` to `CustomAttribute15`, `""` when unset.
    pub custom_attributes: [String; 15],
    pub sku_assigned: Option<bool>,
    pub mailbox_plan: Option<String>,
    pub persisted_capabilities: Vec<String>,
    /// `TotalItemSize` of its statistics, in bytes.
    pub total_item_size_bytes: u64,
    pub item_count: u64,
}

impl TenantMailbox {
    /// Whether anything keeps it: a litigation hold, an in-place hold (exclusions do not
    /// count), a compliance tag or a delay hold.
    pub fn has_hold(&self) -> bool {
        self.litigation_hold
            || self.in_place_holds.iter().any(|h| !h.starts_with('-'))
            || self.compliance_tag_hold
            || self.delay_hold
            || self.delay_release_hold
    }
}

/// How the emulated endpoint is set up.
#[derive(Clone)]
pub struct ExchangeOptions {
    /// The tenant GUID the path must name (case-insensitive); any other is 404. Default:
    /// the identity emulator's test user's `tid`.
    pub tenant_id: String,
    /// Checks bearer tokens; `None`: any non-empty bearer token is accepted.
    pub token_checker: Option<TokenChecker>,
    /// The largest page served, whatever `Prefer: odata.maxpagesize` asks. Default 1000.
    pub max_page_size: usize,
    /// How long an `@odata.nextLink` stays usable after it was issued. Default 10 minutes.
    pub link_lifetime: Duration,
    /// The most requests in flight at once before the extra ones are refused with the
    /// per-tenant concurrency limit (429, no `Retry-After`), at once and before their
    /// token is checked (also [`ExchangeServer::set_concurrency_cap`]). Default: no limit.
    pub concurrency_cap: Option<usize>,
    /// Refuse a continuation that does not send back the listing's `exchangecookie`, as
    /// an expired link. Default false: the cookie is only counted.
    pub require_cookie: bool,
    /// How long every request takes before it is answered (also
    /// [`ExchangeServer::set_latency`]).
    pub latency: Duration,
}

impl Default for ExchangeOptions {
    fn default() -> Self {
        ExchangeOptions {
            tenant_id: TestUser::default().tid,
            token_checker: None,
            max_page_size: DEFAULT_PAGE_SIZE,
            link_lifetime: Duration::from_secs(600),
            concurrency_cap: None,
            require_cookie: false,
            latency: Duration::ZERO,
        }
    }
}

impl std::fmt::Debug for ExchangeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExchangeOptions")
            .field("tenant_id", &self.tenant_id)
            .field("token_checker", &self.token_checker.is_some())
            .field("max_page_size", &self.max_page_size)
            .field("link_lifetime", &self.link_lifetime)
            .field("concurrency_cap", &self.concurrency_cap)
            .field("require_cookie", &self.require_cookie)
            .field("latency", &self.latency)
            .finish()
    }
}

/// The emulated cmdlets, for [`ExchangeServer::fail_next_on`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Cmdlet {
    GetMailbox,
    GetMailboxStatistics,
}

impl Cmdlet {
    /// The cmdlet a `CmdletName` names, case-insensitive as in PowerShell.
    fn parse(name: &str) -> Option<Cmdlet> {
        if name.eq_ignore_ascii_case("Get-Mailbox") {
            Some(Cmdlet::GetMailbox)
        } else if name.eq_ignore_ascii_case("Get-MailboxStatistics") {
            Some(Cmdlet::GetMailboxStatistics)
        } else {
            None
        }
    }
}

/// How a queued request fails. Each is taken by one request, after its token was checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExchangeFailure {
    /// 429 `TooManyRequests`, with this `Retry-After` verbatim ("2", "0.5", an HTTP date);
    /// none when `None` or not a header value.
    Throttled { retry_after: Option<String> },
    /// 503 `ServiceUnavailable`, with an optional `Retry-After` as for `Throttled`.
    ServiceUnavailable { retry_after: Option<String> },
    /// 504 from the front door, with a short HTML body.
    GatewayTimeout,
    /// This status with "You have reached the maximum number of concurrent requests per
    /// tenant. Please wait and try again" as `message` and `details[0].message`.
    ConcurrencyLimit { status: u16 },
    /// 500 with `details[0].message` `Ex1A2B3C|<type>|<text>`; a bare name such as
    /// "DCOverloadedException" is placed in `Microsoft.Exchange.Data.Directory` (names
    /// starting with "Storage" in `Microsoft.Exchange.Data.Storage`), a dotted name is
    /// used as it is.
    ServerException(String),
    /// 401 with an empty body; with claims, the challenge carries
    /// `error="insufficient_claims"` and `claims="<base64 of the claims>"`.
    Unauthorized { claims: Option<String> },
    /// 403 whose body is 512 NUL bytes labelled `Content-Encoding: gzip` (a lie), the
    /// reason in `x-ms-diagnostics`: a missing role.
    Forbidden,
    /// 400 "Expired or Invalid pagination request", as for a lapsed `@odata.nextLink`.
    PaginationExpired,
    /// 404 `ManagementObjectNotFoundException`.
    NotFound,
    /// 200 whose `Content-Length` is that of a whole JSON answer, of which only the first
    /// half is sent before the connection closes.
    CutOffBody,
    /// 200 with an HTML "Service Unavailable" page as `text/html`.
    NotJson,
    /// The connection closes without an answer.
    DropConnection,
}

/// What clients did, counted since the start.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ExchangeStats {
    /// Every `POST` to an `InvokeCommand` path, failed or not.
    pub total: usize,
    /// `Get-Mailbox` requests: pages served or refused.
    pub get_mailbox: usize,
    /// First pages served, each a new snapshot.
    pub listings_started: usize,
    /// `Get-Mailbox` pages answered 200 with records (first pages included).
    pub pages_served: usize,
    /// `Get-MailboxStatistics` requests, answered or not.
    pub statistics_calls: usize,
    /// `Get-MailboxStatistics` requests per `Identity` (lowercased).
    pub statistics_per_mailbox: BTreeMap<String, usize>,
    /// Requests answered 401 (missing, unknown, expired or foreign token, or injected).
    pub unauthorized: usize,
    /// Requests answered by [`ExchangeFailure`] injection.
    pub injected_failures: usize,
    /// Continuations refused as expired or invalid (not counting injected ones).
    pub pagination_refusals: usize,
    /// The most requests in flight at once, counted when each arrives (refused ones
    /// included).
    pub max_in_flight: usize,
    /// Requests refused for being over the concurrency cap.
    pub concurrency_refusals: usize,
    /// Continuations of a known listing that sent back its `exchangecookie`.
    pub continuations_with_cookie: usize,
    /// Continuations of a known listing that did not.
    pub continuations_without_cookie: usize,
    /// `X-AnchorMailbox` of every `Get-Mailbox` request, in order.
    pub anchors: Vec<Option<String>>,
    /// The last `$select` any request carried, split at commas.
    pub last_select: Option<Vec<String>>,
    /// `Parameters` of the last first page of a `Get-Mailbox` listing.
    pub last_parameters: Option<Value>,
    /// The `client-request-id` of every request that carried one, in order.
    pub client_request_ids: Vec<String>,
    /// The `Prefer` header of every request that carried one, in order.
    pub prefer_headers: Vec<String>,
}

/// A running emulated Exchange Online admin endpoint on 127.0.0.1. Dropping it stops the
/// server.
pub struct ExchangeServer {
    shared: Arc<Shared>,
    _server: Server,
}

impl std::fmt::Debug for ExchangeServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExchangeServer")
            .field("base_url", &self.shared.base)
            .finish_non_exhaustive()
    }
}

impl ExchangeServer {
    /// Starts the emulator with this tenant on an ephemeral loopback port, served by the
    /// current runtime.
    pub async fn start(
        opts: ExchangeOptions,
        mailboxes: Vec<TenantMailbox>,
    ) -> std::io::Result<ExchangeServer> {
        let (server, shared) = Server::start(|base| routes(opts, mailboxes, base)).await?;
        Ok(ExchangeServer {
            shared,
            _server: server,
        })
    }

    /// Starts the emulator on a thread of its own with its own runtime, for sync tests
    /// that drive the real binary.
    pub fn start_in_background(
        opts: ExchangeOptions,
        mailboxes: Vec<TenantMailbox>,
    ) -> std::io::Result<ExchangeServer> {
        let (server, shared) =
            Server::start_in_background("sandbox-exchange", |base| routes(opts, mailboxes, base))?;
        Ok(ExchangeServer {
            shared,
            _server: server,
        })
    }

    /// `http://127.0.0.1:PORT`: what a client is configured with, as it would be with
    /// `https://outlook.office365.com`. The endpoint is
    /// `{base}/adminapi/beta/{tenant_id}/InvokeCommand`.
    pub fn base_url(&self) -> String {
        self.shared.base.clone()
    }

    /// The tenant GUID the endpoint answers for.
    pub fn tenant_id(&self) -> String {
        self.shared.opts.tenant_id.clone()
    }

    /// Every mailbox of the tenant now, in listing order.
    pub fn mailboxes(&self) -> Vec<TenantMailbox> {
        self.shared.lock().mailboxes.clone()
    }

    /// The inactive mailboxes of the tenant now, in listing order.
    pub fn inactive(&self) -> Vec<TenantMailbox> {
        let st = self.shared.lock();
        let inactive = st
            .mailboxes
            .iter()
            .filter(|m| m.kind == MailboxKind::Inactive);
        inactive.cloned().collect()
    }

    /// Adds a mailbox at the end of the listing order; the caller keeps `exchange_guid`s
    /// unique. Listings already under way do not see it.
    pub fn add(&self, mailbox: TenantMailbox) {
        let mut st = self.shared.lock();
        st.mailboxes.push(mailbox);
        st.index = None;
    }

    /// Removes the mailbox (purged, or recovered into another GUID); false if unknown.
    pub fn remove(&self, exchange_guid: &str) -> bool {
        let mut st = self.shared.lock();
        let before = st.mailboxes.len();
        st.mailboxes
            .retain(|m| !m.exchange_guid.eq_ignore_ascii_case(exchange_guid));
        st.index = None;
        st.mailboxes.len() != before
    }

    /// Applies `f` to the mailbox and sets its `when_changed` to now; false if unknown.
    pub fn update(&self, exchange_guid: &str, f: impl FnOnce(&mut TenantMailbox)) -> bool {
        let mut st = self.shared.lock();
        let Some(m) = st.mailbox_mut(exchange_guid) else {
            return false;
        };
        f(m);
        m.when_changed = Utc::now();
        true
    }

    /// Clears every hold of the mailbox (litigation, in-place, compliance tag, delay;
    /// `-mbx` exclusions stay) and sets its `when_changed` to now; its kind is left for
    /// the caller to decide. False if unknown.
    pub fn release_holds(&self, exchange_guid: &str) -> bool {
        self.update(exchange_guid, |m| {
            m.litigation_hold = false;
            m.in_place_holds.retain(|h| h.starts_with('-'));
            m.compliance_tag_hold = false;
            m.delay_hold = false;
            m.delay_release_hold = false;
        })
    }

    /// Sets what `Get-MailboxStatistics` reports for the mailbox, without changing its
    /// `when_changed` (as at Microsoft); false if unknown.
    pub fn set_statistics(&self, exchange_guid: &str, size_bytes: u64, item_count: u64) -> bool {
        let mut st = self.shared.lock();
        let Some(m) = st.mailbox_mut(exchange_guid) else {
            return false;
        };
        m.total_item_size_bytes = size_bytes;
        m.item_count = item_count;
        true
    }

    /// The next `n` requests (any cmdlet, or none) fail this way, after any already queued.
    pub fn fail_next(&self, n: usize, failure: ExchangeFailure) {
        let mut st = self.shared.lock();
        st.failures.extend(std::iter::repeat_n((None, failure), n));
    }

    /// The next `n` requests for this cmdlet fail this way; others answer as usual.
    pub fn fail_next_on(&self, cmdlet: Cmdlet, n: usize, failure: ExchangeFailure) {
        let mut st = self.shared.lock();
        st.failures
            .extend(std::iter::repeat_n((Some(cmdlet), failure), n));
    }

    /// The next valid request for page `page` (1: the first) of a `Get-Mailbox` listing
    /// fails this way, once; its link stays usable, so a client can retry it. A failed
    /// first page starts no listing.
    pub fn fail_page(&self, page: usize, failure: ExchangeFailure) {
        self.shared.lock().page_failures.push_back((page, failure));
    }

    /// Every `@odata.nextLink` issued so far lapses: continuing with one is refused.
    pub fn expire_links(&self) {
        let mut st = self.shared.lock();
        st.links.clear();
        st.listings.clear();
    }

    /// How long every later request takes before it is answered.
    pub fn set_latency(&self, latency: Duration) {
        self.shared.lock().latency = latency;
    }

    /// The most requests in flight at once before extra ones are refused (`None`: no cap).
    pub fn set_concurrency_cap(&self, cap: Option<usize>) {
        self.shared.lock().concurrency_cap = cap;
    }

    /// A snapshot of the request counters.
    pub fn requests(&self) -> ExchangeStats {
        self.shared.lock().stats.clone()
    }
}

/// `inactive` inactive mailboxes with a realistic mix, the same for the same `seed` (dates
/// are relative to the start of the current UTC day): people of three companies (and some
/// of none) in `CustomAttribute1`, departments in `CustomAttribute2`, licences in
/// `MailboxPlan`, `PersistedCapabilities` and often `CustomAttribute7`, soft-deleted 5 days
/// to 8 years ago, sizes from a few KB to about 50 GB. Every one has a hold (about 45% a
/// litigation hold, 35% in-place holds drawn from a few tenant-wide policies and cases,
/// some compliance tag and delay holds; one drawn without any gets a retention policy);
/// about 2% share their UPN and address with another (the same person deleted twice).
pub fn synthetic_tenant(inactive: usize, seed: u64) -> Vec<TenantMailbox> {
    let mut generator = Generator::new(seed);
    let mut mailboxes: Vec<TenantMailbox> = (0..inactive)
        .map(|_| generator.person(MailboxKind::Inactive))
        .collect();
    let pairs = if inactive >= 2 {
        (inactive / 50).max(1)
    } else {
        0
    };
    let mut order: Vec<usize> = (0..inactive).collect();
    generator.rng.shuffle(&mut order);
    for pair in order.chunks_exact(2).take(pairs) {
        let first = mailboxes[pair[0]].clone();
        let again = &mut mailboxes[pair[1]];
        again.display_name = first.display_name;
        again.primary_smtp = first.primary_smtp;
        again.user_principal_name = first.user_principal_name;
        again.custom_attributes[0] = first.custom_attributes[0].clone();
        again.custom_attributes[1] = first.custom_attributes[1].clone();
    }
    mailboxes
}

/// `n` mailboxes that are not inactive, for a client that forgets `InactiveMailboxOnly`:
/// about 60% active (licensed, mostly without holds) and 40% soft-deleted within the last
/// 30 days without a hold. Deterministic per `seed` like [`synthetic_tenant`], and drawn
/// apart from it.
pub fn synthetic_others(n: usize, seed: u64) -> Vec<TenantMailbox> {
    let mut generator = Generator::new(seed ^ 0x0a7e_5eed_0f07_4e25);
    (0..n)
        .map(|_| {
            let kind = if generator.rng.f64() < 0.6 {
                MailboxKind::Active
            } else {
                MailboxKind::SoftDeleted
            };
            generator.person(kind)
        })
        .collect()
}

const FIRST_NAMES: &[&str] = &[
    "Adele",
    "Alex",
    "Allan",
    "Anna",
    "Ben",
    "Christie",
    "Debra",
    "Diego",
    "Emily",
    "Grady",
    "Henrietta",
    "Isaiah",
    "Johanna",
    "Jürgen",
    "Joni",
    "Karin",
    "Lee",
    "Lidia",
    "Lynne",
    "Megan",
    "Miriam",
    "Nestor",
    "Patti",
    "Pradeep",
    "Raul",
    "Sofia",
    "Stefan",
    "Zoë",
    "Tobias",
    "Wei",
    "Yuki",
    "Amelie",
    "Björn",
    "Chloé",
    "Dmitri",
    "Fatima",
    "Hannah",
    "Lukas",
    "Mateo",
    "Priya",
];
const LAST_NAMES: &[&str] = &[
    "Vance",
    "Wilber",
    "Deyoung",
    "Schmidt",
    "Walker",
    "Cline",
    "Berger",
    "Siciliani",
    "Braun",
    "Archie",
    "Mueller",
    "Müller",
    "Lambert",
    "Gonzalez",
    "Sherman",
    "Wagner",
    "Kowalski",
    "Fischer",
    "Bowen",
    "Bowers",
    "Wilkins",
    "Fernandes",
    "Gupta",
    "Nakamura",
    "Zhang",
    "Dupont",
    "Rossi",
    "Andersson",
    "Novak",
    "Okafor",
    "Hoffmann",
    "Weiß",
    "O'Brien",
    "Lefèvre",
    "Larsen",
    "Jansen",
    "Costa",
    "Ivanova",
    "Khan",
    "Moreau",
];
/// Companies (`CustomAttribute1`), their mail domain and weight.
const COMPANIES: &[(&str, &str, f64)] = &[
    ("Contoso Ltd", "contoso.com", 0.35),
    ("Fabrikam GmbH", "fabrikam.de", 0.25),
    ("Northwind Traders", "northwind.example", 0.25),
    ("", "contoso.com", 0.15),
];
const DEPARTMENTS: &[&str] = &[
    "Sales",
    "Finance",
    "Legal",
    "Human Resources",
    "Engineering",
    "Operations",
    "Marketing",
    "Customer Service",
    "",
];
const PLAN_ENTERPRISE: &str = "ExchangeOnlineEnterprise-bd4b2f6b-2e37-4a45-8e63-c4e7ea2a9c8f";
const PLAN_STANDARD: &str = "ExchangeOnline-3a1f6e0c-8c2b-4f47-9d4e-71b5c0a2e913";
const PLAN_DESKLESS: &str = "ExchangeOnlineDeskless-6d0e7a45-1b9c-4f3e-8a2d-c5f4b7e19a60";

/// Draws mailboxes from one seeded generator.
struct Generator {
    rng: fastrand::Rng,
    /// "Now" for the dates: the start of the current UTC day, so that a seed gives the
    /// same tenant all day.
    anchor: DateTime<Utc>,
    aliases: HashSet<String>,
    /// eDiscovery case holds (`UniH<guid>`).
    cases: Vec<String>,
    /// Retention policies for mailboxes, groups and Skype (`mbx`, `grp`, `skp` + hex).
    policies: [Vec<String>; 3],
    /// Legacy In-Place Holds (bare GUIDs).
    legacy: Vec<String>,
    /// The org-wide retention policy some mailboxes are excluded from (hex).
    org_wide: String,
}

impl Generator {
    fn new(seed: u64) -> Generator {
        let mut rng = fastrand::Rng::with_seed(seed);
        let cases = (0..3)
            .map(|_| format!("UniH{}", seeded_guid(&mut rng)))
            .collect();
        let mut policy = |prefix: &str, action: u8, n: usize| -> Vec<String> {
            (0..n)
                .map(|_| {
                    format!(
                        "{prefix}{}:{action}",
                        seeded_guid(&mut rng).replace('-', "")
                    )
                })
                .collect()
        };
        let policies = [
            policy("mbx", 1, 3),
            policy("grp", 2, 2),
            policy("skp", 3, 1),
        ];
        let legacy = (0..2).map(|_| seeded_guid(&mut rng)).collect();
        let org_wide = seeded_guid(&mut rng).replace('-', "");
        let anchor = Utc::now()
            .date_naive()
            .and_hms_opt(0, 0, 0)
            .map_or_else(Utc::now, |t| t.and_utc());
        Generator {
            rng,
            anchor,
            aliases: HashSet::new(),
            cases,
            policies,
            legacy,
            org_wide,
        }
    }

    fn chance(&mut self, p: f64) -> bool {
        self.rng.f64() < p
    }

    fn pick<'a>(&mut self, items: &'a [&'a str]) -> &'a str {
        items[self.rng.usize(..items.len())]
    }

    /// A time this many seconds (drawn from the range) before the anchor.
    fn ago(&mut self, seconds: std::ops::RangeInclusive<i64>) -> DateTime<Utc> {
        self.anchor - TimeDelta::seconds(self.rng.i64(seconds))
    }

    fn unique_alias(&mut self, first: &str, last: &str) -> String {
        let base = format!("{}.{}", ascii_alias(first), ascii_alias(last));
        let mut alias = base.clone();
        let mut n = 2;
        while !self.aliases.insert(alias.clone()) {
            alias = format!("{base}{n}");
            n += 1;
        }
        alias
    }

    fn in_place_hold(&mut self) -> String {
        let r = self.rng.f64();
        let from = |list: &[String], rng: &mut fastrand::Rng| list[rng.usize(..list.len())].clone();
        if r < 0.30 {
            from(&self.cases, &mut self.rng)
        } else if r < 0.65 {
            from(&self.policies[0], &mut self.rng)
        } else if r < 0.75 {
            from(&self.policies[1], &mut self.rng)
        } else if r < 0.80 {
            from(&self.policies[2], &mut self.rng)
        } else {
            from(&self.legacy, &mut self.rng)
        }
    }

    fn person(&mut self, kind: MailboxKind) -> TenantMailbox {
        let r = self.rng.f64();
        let mut weight = 0.0;
        let &(company, domain, _) = COMPANIES
            .iter()
            .find(|(_, _, w)| {
                weight += w;
                r < weight
            })
            .unwrap_or(&COMPANIES[0]);
        let first = self.pick(FIRST_NAMES);
        let last = self.pick(LAST_NAMES);
        let alias = self.unique_alias(first, last);
        let address = format!("{alias}@{domain}");
        let exchange_guid = seeded_guid(&mut self.rng);

        const DAY: i64 = 86_400;
        let (when_soft_deleted, when_changed) = match kind {
            MailboxKind::Inactive => {
                let deleted = self.ago(5 * DAY..=8 * 365 * DAY);
                let since = (self.anchor - deleted).num_seconds().min(60 * DAY);
                let changed = deleted + TimeDelta::seconds(self.rng.i64(0..=since));
                (Some(deleted), changed)
            }
            MailboxKind::SoftDeleted => {
                let deleted = self.ago(DAY..=29 * DAY);
                (
                    Some(deleted),
                    deleted + TimeDelta::seconds(self.rng.i64(0..=600)),
                )
            }
            MailboxKind::Active => (None, self.ago(DAY..=365 * DAY)),
        };

        let mut litigation_hold = false;
        let mut in_place_holds = Vec::new();
        let mut compliance_tag_hold = false;
        let mut delay_hold = false;
        let mut delay_release_hold = false;
        match kind {
            MailboxKind::Inactive => {
                litigation_hold = self.chance(0.45);
                if self.chance(0.35) {
                    in_place_holds.push(self.in_place_hold());
                    if self.chance(0.3) {
                        let second = self.in_place_hold();
                        if !in_place_holds.contains(&second) {
                            in_place_holds.push(second);
                        }
                    }
                    if self.chance(0.1) {
                        in_place_holds.push(format!("-mbx{}", self.org_wide));
                    }
                }
                compliance_tag_hold = self.chance(0.08);
                delay_hold = self.chance(0.05);
                delay_release_hold = self.chance(0.02);
                let held = litigation_hold
                    || !in_place_holds.is_empty()
                    || compliance_tag_hold
                    || delay_hold
                    || delay_release_hold;
                if !held {
                    // Inactive means held: one drawn without a hold is kept by a policy.
                    in_place_holds.push(self.policies[0][self.rng.usize(..3)].clone());
                }
            }
            MailboxKind::Active => {
                litigation_hold = self.chance(0.1);
                if self.chance(0.1) {
                    in_place_holds.push(self.in_place_hold());
                }
            }
            MailboxKind::SoftDeleted => {}
        }

        let auto_expanding_archive = self.chance(0.10);
        let archive_status = if auto_expanding_archive || self.chance(0.25) {
            "Active"
        } else {
            "None"
        };
        let external_directory_object_id = match kind {
            MailboxKind::Active => self.chance(0.8),
            _ => self.chance(0.15),
        }
        .then(|| seeded_guid(&mut self.rng));

        let mut custom_attributes: [String; 15] = Default::default();
        custom_attributes[0] = company.to_string();
        if !company.is_empty() || self.chance(0.3) {
            custom_attributes[1] = self.pick(DEPARTMENTS).to_string();
        }
        let r = self.rng.f64();
        let (plan, mut capabilities, licence) = if r < 0.5 {
            let licence = if self.chance(0.65) { "E3" } else { "E5" };
            (Some(PLAN_ENTERPRISE), vec!["BPOS_S_Enterprise"], licence)
        } else if r < 0.75 {
            (Some(PLAN_STANDARD), vec!["BPOS_S_Standard"], "")
        } else if r < 0.87 {
            (Some(PLAN_DESKLESS), vec!["BPOS_S_Deskless"], "F3")
        } else {
            (None, Vec::new(), "")
        };
        if plan.is_some() && archive_status == "Active" && self.chance(0.4) {
            capabilities.push("BPOS_S_ArchiveAddOn");
        }
        if self.chance(0.75) {
            custom_attributes[6] = licence.to_string();
        }
        if self.chance(0.2) {
            custom_attributes[2] = format!("CC-{:04}", self.rng.u32(1000..10_000));
        }
        let sku_assigned = match kind {
            MailboxKind::Active => Some(true),
            _ => {
                let r = self.rng.f64();
                if r < 0.6 {
                    Some(false)
                } else if r < 0.95 {
                    None
                } else {
                    Some(true)
                }
            }
        };

        let (lo, hi) = ((4.0f64 * 1024.0).ln(), (50.0f64 * 1024f64.powi(3)).ln());
        let total_item_size_bytes = (lo + self.rng.f64() * (hi - lo)).exp() as u64;
        let average_item = 30_000.0 + self.rng.f64() * 120_000.0;
        let item_count = (total_item_size_bytes as f64 / average_item).round() as u64;

        TenantMailbox {
            kind,
            exchange_guid,
            display_name: format!("{first} {last}"),
            primary_smtp: address.clone(),
            user_principal_name: address,
            when_soft_deleted,
            when_changed,
            litigation_hold,
            in_place_holds,
            compliance_tag_hold,
            delay_hold,
            delay_release_hold,
            auto_expanding_archive,
            archive_status: archive_status.to_string(),
            external_directory_object_id,
            custom_attributes,
            sku_assigned,
            mailbox_plan: plan.map(str::to_string),
            persisted_capabilities: capabilities.into_iter().map(str::to_string).collect(),
            total_item_size_bytes,
            item_count,
        }
    }
}

/// A name as a mail alias: lower-case ASCII letters, umlauts spelt out.
fn ascii_alias(name: &str) -> String {
    let mut out = String::new();
    for c in name.to_lowercase().chars() {
        match c {
            'ä' => out.push_str("ae"),
            'ö' => out.push_str("oe"),
            'ü' => out.push_str("ue"),
            'ß' => out.push_str("ss"),
            'é' | 'è' | 'ë' => out.push('e'),
            c if c.is_ascii_alphanumeric() => out.push(c),
            _ => {}
        }
    }
    out
}

fn seeded_guid(rng: &mut fastrand::Rng) -> String {
    let bytes: [u8; 16] = std::array::from_fn(|_| rng.u8(..));
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}

fn random_guid() -> String {
    seeded_guid(&mut fastrand::Rng::new())
}

fn random_hex(len: usize) -> String {
    const HEX: &[u8] = b"0123456789abcdef";
    (0..len)
        .map(|_| char::from(HEX[fastrand::usize(..HEX.len())]))
        .collect()
}

fn routes(
    opts: ExchangeOptions,
    mailboxes: Vec<TenantMailbox>,
    base: String,
) -> (Router, Arc<Shared>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(Ledger {
            mailboxes,
            latency: opts.latency,
            concurrency_cap: opts.concurrency_cap,
            ..Ledger::default()
        }),
        opts,
        base,
    });
    let app = Router::new()
        .route(
            "/adminapi/beta/{tenant}/InvokeCommand",
            post(invoke).fallback(method_not_allowed),
        )
        .route("/adminapi/v1.0/{*rest}", any(method_not_allowed))
        .fallback(unknown_path)
        .with_state(Arc::clone(&shared));
    (app, shared)
}

struct Shared {
    opts: ExchangeOptions,
    base: String,
    state: Mutex<Ledger>,
}

#[derive(Default)]
struct Ledger {
    /// The tenant, in listing order.
    mailboxes: Vec<TenantMailbox>,
    /// Positions in `mailboxes` by lower-cased ExchangeGuid, rebuilt after an add or a
    /// remove: statistics of a 100,000-mailbox tenant are one lookup each, not a scan.
    index: Option<HashMap<String, usize>>,
    latency: Duration,
    concurrency_cap: Option<usize>,
    in_flight: usize,
    failures: VecDeque<(Option<Cmdlet>, ExchangeFailure)>,
    /// Page numbers of `Get-Mailbox` listings that fail once.
    page_failures: VecDeque<(usize, ExchangeFailure)>,
    listings: HashMap<u64, Listing>,
    /// `$skiptoken`s issued, to the page they continue with.
    links: HashMap<String, Link>,
    next_listing: u64,
    /// Requests in the current rate-limit window, and when it ends.
    rate_used: u64,
    rate_resets_at: Option<DateTime<Utc>>,
    stats: ExchangeStats,
}

/// One `Get-Mailbox` listing: the snapshot its first page took and what its
/// continuations must repeat.
struct Listing {
    snapshot: Vec<TenantMailbox>,
    /// `ResultSize` was a number (or absent), not "Unlimited".
    limited: bool,
    /// More mailboxes matched than `ResultSize` allowed.
    truncated: bool,
    /// The first page's body, parsed.
    body: Value,
    anchor: Option<String>,
    cookie: String,
    page_size: usize,
}

#[derive(Clone)]
struct Link {
    listing: u64,
    offset: usize,
    /// The page number it leads to (2 for the first page's link).
    page: usize,
    issued: Instant,
}

/// One page to render, taken from a listing under the lock.
struct PagePlan {
    mailboxes: Vec<TenantMailbox>,
    next: Option<String>,
    warning: bool,
    set_cookie: Option<String>,
    page_size: usize,
}

impl Ledger {
    fn position(&mut self, exchange_guid: &str) -> Option<usize> {
        let mailboxes = &self.mailboxes;
        let index = self.index.get_or_insert_with(|| {
            mailboxes
                .iter()
                .enumerate()
                .map(|(i, m)| (m.exchange_guid.to_ascii_lowercase(), i))
                .collect()
        });
        index
            .get(&exchange_guid.trim().to_ascii_lowercase())
            .copied()
    }

    fn mailbox_mut(&mut self, exchange_guid: &str) -> Option<&mut TenantMailbox> {
        let i = self.position(exchange_guid)?;
        self.mailboxes.get_mut(i)
    }

    fn take_page_failure(&mut self, page: usize) -> Option<ExchangeFailure> {
        let at = self.page_failures.iter().position(|(p, _)| *p == page)?;
        self.stats.injected_failures += 1;
        self.page_failures.remove(at).map(|(_, failure)| failure)
    }

    /// Takes the page of the listing at `offset`, issuing a link to the next one.
    fn serve_page(&mut self, id: u64, offset: usize, page: usize) -> Option<PagePlan> {
        let listing = self.listings.get(&id)?;
        let len = listing.snapshot.len();
        let end = (offset + listing.page_size).min(len);
        let mailboxes = listing.snapshot[offset.min(end)..end].to_vec();
        let more = end < len;
        let warning = if more {
            listing.limited
        } else {
            listing.truncated
        };
        let set_cookie = (page == 1).then(|| listing.cookie.clone());
        let page_size = listing.page_size;
        let next = more.then(|| {
            let token = format!("{}{}", random_hex(32), random_hex(32));
            let link = Link {
                listing: id,
                offset: end,
                page: page + 1,
                issued: Instant::now(),
            };
            self.links.insert(token.clone(), link);
            token
        });
        self.stats.pages_served += 1;
        Some(PagePlan {
            mailboxes,
            next,
            warning,
            set_cookie,
            page_size,
        })
    }

    /// Forgets lapsed links and the listings no link leads to any more.
    fn prune(&mut self, lifetime: Duration) {
        self.links.retain(|_, l| l.issued.elapsed() <= lifetime);
        let live: HashSet<u64> = self.links.values().map(|l| l.listing).collect();
        self.listings.retain(|id, _| live.contains(id));
    }

    /// Counts one answer against the rate-limit window: what remains and when it resets.
    fn rate_tick(&mut self) -> (u64, DateTime<Utc>) {
        let now = Utc::now();
        let resets_at = match self.rate_resets_at {
            Some(at) if at > now => at,
            _ => {
                self.rate_used = 0;
                let at = now + TimeDelta::hours(1);
                self.rate_resets_at = Some(at);
                at
            }
        };
        self.rate_used += 1;
        (RATE_LIMIT.saturating_sub(self.rate_used), resets_at)
    }
}

/// What one `InvokeCommand` request asks, read once.
struct Call {
    tenant: String,
    select: Option<Vec<String>>,
    skiptoken: Option<String>,
    /// The body, when it is JSON.
    body: Option<Value>,
    /// `CmdletName` and `Parameters`, or why the body does not have them.
    input: Result<(String, Map<String, Value>), ExchangeError>,
    cmdlet: Option<Cmdlet>,
    anchor: Option<String>,
    /// `name=value` pairs of every `Cookie` header.
    cookies: Vec<(String, String)>,
    /// `odata.maxpagesize` of `Prefer`.
    max_page_size: Option<usize>,
    prefer: Option<String>,
}

impl Call {
    fn parse(tenant: String, query: Option<&str>, headers: &HeaderMap, body: &[u8]) -> Call {
        let mut select = None;
        let mut skiptoken = None;
        for (key, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            if key.eq_ignore_ascii_case("$select") {
                let names = value.split(',').map(str::trim).filter(|s| !s.is_empty());
                select = Some(names.map(str::to_string).collect::<Vec<_>>());
            } else if key.eq_ignore_ascii_case("$skiptoken") {
                skiptoken = Some(value.into_owned());
            }
        }
        let body: Option<Value> = serde_json::from_slice(body).ok();
        let input = cmdlet_input(body.as_ref());
        let cmdlet = input
            .as_ref()
            .ok()
            .and_then(|(name, _)| Cmdlet::parse(name));
        let text = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let cookies = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let prefers: Vec<&str> = headers
            .get_all("prefer")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let max_page_size = prefers
            .iter()
            .flat_map(|v| v.split(','))
            .filter_map(|p| p.trim().split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("odata.maxpagesize"))
            .and_then(|(_, v)| v.trim().parse().ok());
        Call {
            tenant,
            select: select.filter(|s| !s.is_empty()),
            skiptoken,
            body,
            input,
            cmdlet,
            anchor: text("x-anchormailbox"),
            cookies,
            max_page_size,
            prefer: (!prefers.is_empty()).then(|| prefers.join(", ")),
        }
    }

    fn parameters(&self) -> Option<&Map<String, Value>> {
        self.input.as_ref().ok().map(|(_, p)| p)
    }

    /// `Identity` among the parameters, if it is text.
    fn identity(&self) -> Option<&str> {
        param(self.parameters()?, "Identity").and_then(Value::as_str)
    }
}

/// `CmdletName` and `Parameters` of the body (key names case-insensitive, as .NET reads
/// them).
fn cmdlet_input(body: Option<&Value>) -> Result<(String, Map<String, Value>), ExchangeError> {
    let Some(Value::Object(body)) = body else {
        return Err(ExchangeError::bad_request(
            "|Microsoft.Exchange.Admin.OData.Core.ODataServiceException|\
             The request body is not valid JSON."
                .to_string(),
        ));
    };
    let input = param(body, "CmdletInput").and_then(Value::as_object);
    let name = input
        .and_then(|i| param(i, "CmdletName"))
        .and_then(Value::as_str)
        .filter(|n| !n.trim().is_empty());
    let Some(name) = name else {
        return Err(ExchangeError::bad_request(
            "|Microsoft.Exchange.Admin.OData.Core.ODataServiceException|\
             CmdletInput.CmdletName is required."
                .to_string(),
        ));
    };
    let parameters = match input.and_then(|i| param(i, "Parameters")) {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(p)) => p.clone(),
        Some(_) => {
            return Err(ExchangeError::bad_request(
                "|Microsoft.Exchange.Admin.OData.Core.ODataServiceException|\
                 CmdletInput.Parameters must be an object."
                    .to_string(),
            ));
        }
    };
    Ok((name.trim().to_string(), parameters))
}

/// A parameter or key by name, case-insensitive as in PowerShell.
fn param<'a>(map: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    map.get(name).or_else(|| {
        map.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

/// A switch parameter: absent is off; `true`, `false` or their text.
fn switch(params: &Map<String, Value>, name: &str) -> Result<bool, ExchangeError> {
    match param(params, name) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(true),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(false),
        Some(other) => Err(ExchangeError::bad_request(format!(
            "{PARAMETER_BINDING}|Cannot convert '{other}' to the type \
             'System.Management.Automation.SwitchParameter' required by parameter '{name}'."
        ))),
    }
}

/// `ResultSize`: `None` for "Unlimited", 1000 when absent.
fn result_size(params: &Map<String, Value>) -> Result<Option<usize>, ExchangeError> {
    let refuse = |v: &Value| {
        ExchangeError::bad_request(format!(
            "{PARAMETER_BINDING}|Cannot process argument transformation on parameter \
             'ResultSize'. Cannot convert value \"{v}\" to type \
             \"Microsoft.Exchange.Data.Unlimited`1[System.UInt32]\"."
        ))
    };
    match param(params, "ResultSize") {
        None | Some(Value::Null) => Ok(Some(DEFAULT_RESULT_SIZE)),
        Some(Value::String(s)) if s.trim().eq_ignore_ascii_case("Unlimited") => Ok(None),
        Some(v @ Value::String(s)) => s.trim().parse().map(Some).map_err(|_| refuse(v)),
        Some(v @ Value::Number(n)) => n
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| refuse(v)),
        Some(v) => Err(refuse(v)),
    }
}

/// The ids a response carries.
struct Ids {
    request_id: String,
    client_request_id: Option<String>,
}

impl Ids {
    fn of(headers: &HeaderMap) -> Ids {
        Ids {
            request_id: random_guid(),
            client_request_id: headers
                .get("client-request-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        }
    }
}

/// A refusal with Exchange's JSON error body.
#[derive(Debug)]
struct ExchangeError {
    status: StatusCode,
    code: &'static str,
    /// `details[0].message`: `Ex<hex>|ExceptionType|text`, `|ExceptionType|text` or text.
    detail: String,
    /// `Retry-After`, verbatim.
    retry_after: Option<String>,
}

impl ExchangeError {
    fn new(status: StatusCode, code: &'static str, detail: String) -> ExchangeError {
        ExchangeError {
            status,
            code,
            detail,
            retry_after: None,
        }
    }

    fn bad_request(detail: String) -> ExchangeError {
        ExchangeError::new(StatusCode::BAD_REQUEST, "BadRequest", detail)
    }

    fn not_found(object: &str) -> ExchangeError {
        ExchangeError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!(
                "{NOT_FOUND_TYPE}|The operation couldn't be performed because object \
                 '{object}' couldn't be found on '{SERVER_FQDN}'."
            ),
        )
    }

    fn pagination() -> ExchangeError {
        ExchangeError::bad_request(PAGINATION_REFUSED.to_string())
    }

    fn concurrency(status: u16) -> ExchangeError {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::TOO_MANY_REQUESTS);
        let code = match status.as_u16() {
            400 => "BadRequest",
            429 => "TooManyRequests",
            500 => "InternalServerError",
            503 => "ServiceUnavailable",
            _ => "Error",
        };
        ExchangeError::new(status, code, CONCURRENCY_TEXT.to_string())
    }

    fn command_not_found(name: &str) -> ExchangeError {
        ExchangeError::bad_request(format!(
            "|System.Management.Automation.CommandNotFoundException|The term '{name}' is not \
             recognized as a name of a cmdlet, function, script file, or executable program. \
             Check the spelling of the name, or if a path was included, verify that the path \
             is correct and try again."
        ))
    }

    fn server_exception(name: &str) -> ExchangeError {
        let short = name.rsplit('.').next().unwrap_or(name);
        let full = if name.contains('.') {
            name.to_string()
        } else if name.starts_with("Storage") {
            format!("Microsoft.Exchange.Data.Storage.{name}")
        } else {
            format!("Microsoft.Exchange.Data.Directory.{name}")
        };
        let text = match short {
            "DCOverloadedException" => {
                "Active Directory operation failed on a domain controller that is overloaded. \
                 Please try again later."
            }
            "StorageTransientException" => {
                "Cannot open mailbox because of a transient storage error. Please try again."
            }
            "ServerInMMException" => "The server is in maintenance mode. Please try again later.",
            "SuitabilityDirectoryException" => {
                "No suitable domain controller is available. Please try again later."
            }
            "ADServerSettingsChangedException" => {
                "The directory server settings changed during the operation. Please try again."
            }
            _ => "An internal server error occurred. The operation failed.",
        };
        ExchangeError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerError",
            format!("Ex1A2B3C|{full}|{text}"),
        )
    }

    fn with_retry_after(mut self, retry_after: Option<String>) -> ExchangeError {
        self.retry_after = retry_after;
        self
    }

    fn response(&self) -> Response {
        let mut parts = self.detail.splitn(3, '|');
        let (text, exception) = match (parts.next(), parts.next(), parts.next()) {
            (Some(_), Some(exception), Some(text)) => (text, exception),
            _ => (
                self.detail.as_str(),
                "Microsoft.Exchange.Admin.OData.Core.ODataServiceException",
            ),
        };
        let body = json!({
            "error": {
                "code": self.code,
                "message": text,
                "details": [{ "code": "Context", "target": "", "message": self.detail }],
                "innererror": {
                    "message": text,
                    "type": exception,
                    "stacktrace": "",
                    "internalexception": null,
                },
            }
        });
        let mut response = json_response(self.status, &body);
        if let Some(value) = self
            .retry_after
            .as_deref()
            .and_then(|v| HeaderValue::from_str(v).ok())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

/// Why a request gets no records.
enum Refusal {
    Error(ExchangeError),
    Injected(ExchangeFailure),
}

impl From<ExchangeError> for Refusal {
    fn from(error: ExchangeError) -> Refusal {
        Refusal::Error(error)
    }
}

/// Decrements the in-flight count when the request is answered or dropped.
struct InFlight(Arc<Shared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.in_flight = st.in_flight.saturating_sub(1);
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Ledger> {
        // A test that panicked while holding the lock leaves the state usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn token_ok(&self, headers: &HeaderMap) -> bool {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .unwrap_or("");
        if token.is_empty() {
            return false;
        }
        let Some(checker) = &self.opts.token_checker else {
            return true;
        };
        checker(token).is_some_and(|info| {
            !info.expired && !info.revoked && info.resource.eq_ignore_ascii_case(EXCHANGE_RESOURCE)
        })
    }

    /// Takes the first queued failure for this cmdlet (or for any request).
    fn take_failure(&self, cmdlet: Option<Cmdlet>) -> Option<ExchangeFailure> {
        let mut st = self.lock();
        let at = st
            .failures
            .iter()
            .position(|(only, _)| only.is_none_or(|c| Some(c) == cmdlet))?;
        st.stats.injected_failures += 1;
        st.failures.remove(at).map(|(_, failure)| failure)
    }

    /// Everything around the cmdlet: counting, the concurrency cap, latency, and the
    /// headers every answer carries.
    async fn serve(self: &Arc<Self>, call: Call, headers: &HeaderMap) -> Response {
        let ids = Ids::of(headers);
        let (latency, refused) = {
            let mut st = self.lock();
            let stats = &mut st.stats;
            stats.total += 1;
            if let Some(id) = &ids.client_request_id {
                stats.client_request_ids.push(id.clone());
            }
            if let Some(prefer) = &call.prefer {
                stats.prefer_headers.push(prefer.clone());
            }
            if let Some(select) = &call.select {
                stats.last_select = Some(select.clone());
            }
            match call.cmdlet {
                Some(Cmdlet::GetMailbox) => {
                    stats.get_mailbox += 1;
                    stats.anchors.push(call.anchor.clone());
                }
                Some(Cmdlet::GetMailboxStatistics) => {
                    stats.statistics_calls += 1;
                    if let Some(identity) = call.identity() {
                        *stats
                            .statistics_per_mailbox
                            .entry(identity.to_ascii_lowercase())
                            .or_default() += 1;
                    }
                }
                None => {}
            }
            st.in_flight += 1;
            st.stats.max_in_flight = st.stats.max_in_flight.max(st.in_flight);
            let refused = st.concurrency_cap.is_some_and(|cap| st.in_flight > cap);
            if refused {
                st.stats.concurrency_refusals += 1;
            }
            (st.latency, refused)
        };
        let _in_flight = InFlight(Arc::clone(self));
        let response = if refused {
            ExchangeError::concurrency(429).response()
        } else {
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            self.answer(&call, headers)
        };
        self.finish(response, &ids)
    }

    fn answer(&self, call: &Call, headers: &HeaderMap) -> Response {
        if !self.token_ok(headers) {
            self.lock().stats.unauthorized += 1;
            return unauthorized(None);
        }
        if let Some(failure) = self.take_failure(call.cmdlet) {
            return self.failure_response(&failure, call);
        }
        match self.process(call) {
            Ok(response) => response,
            Err(Refusal::Error(error)) => error.response(),
            Err(Refusal::Injected(failure)) => self.failure_response(&failure, call),
        }
    }

    fn process(&self, call: &Call) -> Result<Response, Refusal> {
        if !call.tenant.eq_ignore_ascii_case(&self.opts.tenant_id) {
            return Err(ExchangeError::not_found(&call.tenant).into());
        }
        let (name, params) = call
            .input
            .as_ref()
            .map_err(|e| Refusal::Error(ExchangeError::bad_request(e.detail.clone())))?;
        match call.cmdlet {
            Some(Cmdlet::GetMailbox) => self.get_mailbox(call, params),
            Some(Cmdlet::GetMailboxStatistics) => self.statistics(call, params),
            None => Err(ExchangeError::command_not_found(name).into()),
        }
    }

    fn get_mailbox(&self, call: &Call, params: &Map<String, Value>) -> Result<Response, Refusal> {
        let plan = match &call.skiptoken {
            None => self.first_page(call, params)?,
            Some(token) => self.next_page(call, token)?,
        };
        Ok(self.render_page(call, plan))
    }

    fn first_page(&self, call: &Call, params: &Map<String, Value>) -> Result<PagePlan, Refusal> {
        self.lock().stats.last_parameters = Some(Value::Object(params.clone()));
        let only_inactive = switch(params, "InactiveMailboxOnly")?;
        switch(params, "IncludeInactiveMailbox")?;
        switch(params, "SoftDeletedMailbox")?;
        let limit = result_size(params)?;
        let page_size = call
            .max_page_size
            .filter(|n| *n > 0)
            .unwrap_or(DEFAULT_PAGE_SIZE)
            .min(self.opts.max_page_size)
            .max(1);
        let mut st = self.lock();
        if let Some(failure) = st.take_page_failure(1) {
            return Err(Refusal::Injected(failure));
        }
        let mut snapshot: Vec<TenantMailbox> = st
            .mailboxes
            .iter()
            .filter(|m| !only_inactive || m.kind == MailboxKind::Inactive)
            .cloned()
            .collect();
        let truncated = limit.is_some_and(|n| snapshot.len() > n);
        if let Some(n) = limit {
            snapshot.truncate(n);
        }
        st.prune(self.opts.link_lifetime);
        let id = st.next_listing;
        st.next_listing += 1;
        st.stats.listings_started += 1;
        let listing = Listing {
            snapshot,
            limited: limit.is_some(),
            truncated,
            body: call.body.clone().unwrap_or(Value::Null),
            anchor: call.anchor.clone(),
            cookie: random_hex(40),
            page_size,
        };
        st.listings.insert(id, listing);
        Ok(st
            .serve_page(id, 0, 1)
            .expect("the listing was just stored"))
    }

    fn next_page(&self, call: &Call, token: &str) -> Result<PagePlan, Refusal> {
        let mut st = self.lock();
        let refuse = |st: &mut Ledger| {
            st.stats.pagination_refusals += 1;
            Err(Refusal::Error(ExchangeError::pagination()))
        };
        let Some(link) = st.links.get(token).cloned() else {
            return refuse(&mut st);
        };
        let Some(listing) = st.listings.get(&link.listing) else {
            return refuse(&mut st);
        };
        let has_cookie = call
            .cookies
            .iter()
            .any(|(k, v)| k == "exchangecookie" && *v == listing.cookie);
        let valid = link.issued.elapsed() <= self.opts.link_lifetime
            && call.body.as_ref() == Some(&listing.body)
            && call.anchor == listing.anchor
            && (has_cookie || !self.opts.require_cookie);
        if has_cookie {
            st.stats.continuations_with_cookie += 1;
        } else {
            st.stats.continuations_without_cookie += 1;
        }
        if !valid {
            return refuse(&mut st);
        }
        if let Some(failure) = st.take_page_failure(link.page) {
            return Err(Refusal::Injected(failure));
        }
        match st.serve_page(link.listing, link.offset, link.page) {
            Some(plan) => Ok(plan),
            None => refuse(&mut st),
        }
    }

    fn context(&self, entity: &str) -> String {
        format!(
            "{}/adminapi/beta/{}/$metadata#{entity}",
            self.base, self.opts.tenant_id
        )
    }

    /// The envelope of `Get-Mailbox` records, rendered outside the lock.
    fn envelope(
        &self,
        call: &Call,
        mailboxes: &[TenantMailbox],
        warning: bool,
    ) -> Map<String, Value> {
        let value: Vec<Value> = mailboxes
            .iter()
            .map(|m| Value::Object(selected(mailbox_record(m), call.select.as_deref())))
            .collect();
        let warnings: Vec<&str> = if warning { vec![MORE_RESULTS] } else { vec![] };
        let mut out = Map::new();
        out.insert("@odata.context".into(), json!(self.context("Mailbox")));
        out.insert("@adminapi.warnings".into(), json!(warnings));
        out.insert("value".into(), Value::Array(value));
        out
    }

    fn render_page(&self, call: &Call, plan: PagePlan) -> Response {
        let mut body = self.envelope(call, &plan.mailboxes, plan.warning);
        if let Some(token) = &plan.next {
            let mut link = format!(
                "{}/adminapi/beta/{}/InvokeCommand?$skiptoken={token}",
                self.base, self.opts.tenant_id
            );
            if let Some(select) = &call.select {
                let names: Vec<String> = select
                    .iter()
                    .map(|s| url::form_urlencoded::byte_serialize(s.as_bytes()).collect())
                    .collect();
                link.push_str("&$select=");
                link.push_str(&names.join(","));
            }
            body.insert("@odata.nextLink".into(), json!(link));
        }
        let mut response = json_response(StatusCode::OK, &Value::Object(body));
        let out = response.headers_mut();
        if let Some(cookie) = plan.set_cookie
            && let Ok(v) = HeaderValue::from_str(&format!(
                "exchangecookie={cookie}; path=/; secure; HttpOnly"
            ))
        {
            out.insert(header::SET_COOKIE, v);
        }
        if call.max_page_size.is_some()
            && let Ok(v) = HeaderValue::from_str(&format!("odata.maxpagesize={}", plan.page_size))
        {
            out.insert("preference-applied", v);
        }
        response
    }

    fn statistics(&self, call: &Call, params: &Map<String, Value>) -> Result<Response, Refusal> {
        let Some(identity) = call.identity() else {
            return Err(ExchangeError::bad_request(format!(
                "{PARAMETER_BINDING}|Cannot process command because of one or more missing \
                 mandatory parameters: Identity."
            ))
            .into());
        };
        let include_deleted = switch(params, "IncludeSoftDeletedRecipients")?;
        let found = {
            let mut st = self.lock();
            st.position(identity)
                .and_then(|i| st.mailboxes.get(i).cloned())
        };
        let mailbox = match found {
            Some(m) if m.kind == MailboxKind::Active || include_deleted => m,
            _ => return Err(ExchangeError::not_found(identity).into()),
        };
        let record = selected(
            statistics_record(&mailbox, &self.opts.tenant_id),
            call.select.as_deref(),
        );
        let body = json!({
            "@odata.context": self.context("MailboxStatistics"),
            "@adminapi.warnings": [],
            "value": [record],
        });
        Ok(json_response(StatusCode::OK, &body))
    }

    fn failure_response(&self, failure: &ExchangeFailure, call: &Call) -> Response {
        match failure {
            ExchangeFailure::Throttled { retry_after } => ExchangeError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequests",
                "|Microsoft.Exchange.Admin.OData.Core.ThrottlingException|Too many requests. \
                 Please retry after some time."
                    .to_string(),
            )
            .with_retry_after(retry_after.clone())
            .response(),
            ExchangeFailure::ServiceUnavailable { retry_after } => ExchangeError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "|Microsoft.Exchange.Management.RestApiClient.RestClientException|The service \
                 is temporarily unavailable. Please try again later."
                    .to_string(),
            )
            .with_retry_after(retry_after.clone())
            .response(),
            ExchangeFailure::GatewayTimeout => html(
                StatusCode::GATEWAY_TIMEOUT,
                "<html><head><title>504 Gateway Time-out</title></head><body>\
                 <h1>Gateway Time-out</h1><p>The server didn't respond in time.</p></body></html>",
            ),
            ExchangeFailure::ConcurrencyLimit { status } => {
                ExchangeError::concurrency(*status).response()
            }
            ExchangeFailure::ServerException(name) => {
                ExchangeError::server_exception(name).response()
            }
            ExchangeFailure::Unauthorized { claims } => {
                self.lock().stats.unauthorized += 1;
                unauthorized(claims.as_deref())
            }
            ExchangeFailure::Forbidden => {
                let cmdlet = call.input.as_ref().map_or("Get-Mailbox", |(n, _)| n);
                forbidden(cmdlet)
            }
            ExchangeFailure::PaginationExpired => ExchangeError::pagination().response(),
            ExchangeFailure::NotFound => {
                ExchangeError::not_found(call.identity().unwrap_or(&call.tenant)).response()
            }
            ExchangeFailure::CutOffBody => {
                let sample: Vec<TenantMailbox> =
                    self.lock().mailboxes.iter().take(3).cloned().collect();
                let body = Value::Object(self.envelope(call, &sample, false));
                cut_off(serde_json::to_vec(&body).unwrap_or_default())
            }
            ExchangeFailure::NotJson => html(
                StatusCode::OK,
                "<html><head><title>Service Unavailable</title></head><body>\
                 <h2>Service Unavailable</h2><hr><p>HTTP Error 503. The service is \
                 unavailable.</p></body></html>",
            ),
            ExchangeFailure::DropConnection => dropped(),
        }
    }

    /// Adds what every answer carries: the ids, the content type, the rate-limit and
    /// concurrency headers.
    fn finish(&self, mut response: Response, ids: &Ids) -> Response {
        let ((remaining, resets_at), in_flight) = {
            let mut st = self.lock();
            (st.rate_tick(), st.in_flight)
        };
        let out = response.headers_mut();
        let mut put = |name: &'static str, value: String| {
            if let Ok(v) = HeaderValue::from_str(&value) {
                out.insert(name, v);
            }
        };
        put("request-id", ids.request_id.clone());
        if let Some(id) = &ids.client_request_id {
            put("client-request-id", id.clone());
        }
        put("rate-limit-limit", RATE_LIMIT.to_string());
        put("rate-limit-remaining", remaining.to_string());
        put(
            "rate-limit-reset",
            resets_at.format("%a, %d %b %Y %H:%M:%S GMT").to_string(),
        );
        put("x-concurrencycount", in_flight.to_string());
        if !out.contains_key(header::CONTENT_TYPE) {
            out.insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON_TYPE));
        }
        response
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut response = (status, bytes).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON_TYPE));
    response
}

fn html(status: StatusCode, page: &'static str) -> Response {
    let mut response = (status, page).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

/// 401 with an empty body and Exchange's challenge, a claims challenge when `claims` is
/// given.
fn unauthorized(claims: Option<&str>) -> Response {
    let challenge = match claims {
        None => format!("{CHALLENGE}, error=\"invalid_token\""),
        Some(claims) => format!(
            "{CHALLENGE}, error=\"insufficient_claims\", claims=\"{}\"",
            STANDARD.encode(claims)
        ),
    };
    let mut response = StatusCode::UNAUTHORIZED.into_response();
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    response
}

/// 403 as Exchange sends it: NUL bytes falsely labelled gzip, the reason in a header.
fn forbidden(cmdlet: &str) -> Response {
    let mut response = (StatusCode::FORBIDDEN, vec![0u8; 512]).into_response();
    let out = response.headers_mut();
    out.insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON_TYPE));
    out.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    let diagnostics = format!(
        "2000008;reason=\"The user does not have the required role 'View-Only Recipients' or \
         'Mail Recipients' to run {cmdlet}.\";error_category=\"insufficient_auth_permissions\""
    );
    if let Ok(v) = HeaderValue::from_str(&diagnostics) {
        out.insert("x-ms-diagnostics", v);
    }
    response
}

/// 200 announcing `full`'s length, of which only the first half is sent before the
/// connection closes.
fn cut_off(full: Vec<u8>) -> Response {
    let length = full.len();
    let half = Bytes::from(full[..length / 2].to_vec());
    let then_fail = futures_util::stream::once(async {
        // Long enough for the first half to be flushed to the client.
        tokio::time::sleep(Duration::from_millis(50)).await;
        Err(std::io::Error::other("the emulator cut the body off"))
    });
    let stream = futures_util::stream::iter([Ok(half)]).chain(then_fail);
    let mut response = Response::new(Body::from_stream(stream));
    let out = response.headers_mut();
    out.insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON_TYPE));
    out.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    response
}

/// No answer: the body fails before the status line is flushed, so the server closes the
/// connection with nothing written.
fn dropped() -> Response {
    let failing = futures_util::stream::iter([Err::<Bytes, _>(std::io::Error::other(
        "the emulator dropped the connection",
    ))]);
    Response::new(Body::from_stream(failing))
}

/// Sidecar keys: the property they annotate, the key and its value.
const SIDECARS: &[(&str, &str, &str)] = &[
    ("ExchangeGuid", "ExchangeGuid@data.type", "Guid"),
    ("Guid", "Guid@data.type", "Guid"),
    ("ArchiveGuid", "ArchiveGuid@data.type", "Guid"),
    ("ExchangeObjectId", "ExchangeObjectId@data.type", "Guid"),
    ("MailboxGuid", "MailboxGuid@data.type", "Guid"),
    (
        "InPlaceHolds",
        "InPlaceHolds@odata.type",
        "#Collection(String)",
    ),
    (
        "EmailAddresses",
        "EmailAddresses@odata.type",
        "#Collection(String)",
    ),
    (
        "PersistedCapabilities",
        "PersistedCapabilities@odata.type",
        "#Collection(String)",
    ),
    ("WhenSoftDeleted", "WhenSoftDeleted@data.type", "DateTime"),
    ("WhenChanged", "WhenChanged@data.type", "DateTime"),
    ("WhenCreated", "WhenCreated@data.type", "DateTime"),
    (
        "LitigationHoldDate",
        "LitigationHoldDate@data.type",
        "DateTime",
    ),
];

/// The record with only the `select`ed properties that exist (names case-insensitive),
/// or all of them, plus the sidecar keys of those present and not null.
fn selected(record: Map<String, Value>, select: Option<&[String]>) -> Map<String, Value> {
    let mut out = match select {
        None => record,
        Some(names) => {
            let mut out = Map::new();
            for name in names {
                if let Some((key, value)) =
                    record.iter().find(|(k, _)| k.eq_ignore_ascii_case(name))
                {
                    out.insert(key.clone(), value.clone());
                }
            }
            out
        }
    };
    for (property, key, value) in SIDECARS {
        if out.get(*property).is_some_and(|v| !v.is_null()) {
            out.insert((*key).to_string(), json!(value));
        }
    }
    out
}

/// Properties the emulator does not keep, derived from the `ExchangeGuid` so that they
/// are the same in every listing.
struct Derived {
    guid: String,
    archive_guid: String,
    created: DateTime<Utc>,
    hold_date: DateTime<Utc>,
    hold_duration: &'static str,
    shared: bool,
    by_disable: bool,
    legacy_dn_hex: String,
    /// Of the size and items, the share in Recoverable Items.
    deleted_share: f64,
}

impl Derived {
    fn of(m: &TenantMailbox) -> Derived {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for b in m.exchange_guid.to_ascii_lowercase().bytes() {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        let mut rng = fastrand::Rng::with_seed(hash);
        let guid = seeded_guid(&mut rng);
        let archive_guid = seeded_guid(&mut rng);
        let reference = m.when_soft_deleted.unwrap_or(m.when_changed);
        let created = reference - TimeDelta::days(rng.i64(90..=3650));
        let held_for = (reference - created).num_seconds().max(1);
        let hold_date = created + TimeDelta::seconds(rng.i64(0..held_for));
        let hold_duration = if rng.f64() < 0.7 {
            "Unlimited"
        } else {
            "365.00:00:00"
        };
        Derived {
            guid,
            archive_guid: if m.archive_status == "None" {
                "00000000-0000-0000-0000-000000000000".to_string()
            } else {
                archive_guid
            },
            created,
            hold_date,
            hold_duration,
            shared: rng.f64() < 0.05,
            by_disable: rng.f64() < 0.05,
            legacy_dn_hex: seeded_guid(&mut rng).replace('-', ""),
            deleted_share: rng.f64() * 0.2,
        }
    }
}

/// A `Get-Mailbox` record as Exchange serialises it (without sidecar keys).
fn mailbox_record(m: &TenantMailbox) -> Map<String, Value> {
    let d = Derived::of(m);
    let deleted = m.kind != MailboxKind::Active;
    let alias = m.primary_smtp.split('@').next().unwrap_or("").to_string();
    let domain = m.primary_smtp.rsplit('@').next().unwrap_or("");
    let held = m.litigation_hold;
    let identity = if deleted {
        format!("Soft Deleted Objects\\{alias}")
    } else {
        alias.clone()
    };
    let ou = if deleted {
        "OU=Soft Deleted Objects,"
    } else {
        ""
    };
    let usage_location = match domain {
        "fabrikam.de" => "Germany",
        "northwind.example" => "United Kingdom",
        _ => "United States",
    };
    let mut r = Map::new();
    let mut put = |key: &str, value: Value| {
        r.insert(key.to_string(), value);
    };
    put("ExchangeGuid", json!(m.exchange_guid));
    put("Guid", json!(d.guid));
    put("ExchangeObjectId", json!(d.guid));
    put(
        "ExternalDirectoryObjectId",
        json!(m.external_directory_object_id.as_deref().unwrap_or("")),
    );
    put("DisplayName", json!(m.display_name));
    put("Name", json!(alias));
    put("Alias", json!(alias));
    put("Identity", json!(identity));
    put("Id", json!(identity));
    put("PrimarySmtpAddress", json!(m.primary_smtp));
    put("WindowsEmailAddress", json!(m.primary_smtp));
    put("UserPrincipalName", json!(m.user_principal_name));
    put("MicrosoftOnlineServicesID", json!(m.user_principal_name));
    put("WindowsLiveID", json!(m.user_principal_name));
    put(
        "RecipientTypeDetails",
        json!(if d.shared {
            "SharedMailbox"
        } else {
            "UserMailbox"
        }),
    );
    put("RecipientType", json!("UserMailbox"));
    put("IsShared", json!(d.shared));
    put("IsInactiveMailbox", json!(m.kind == MailboxKind::Inactive));
    put("IsSoftDeletedByRemove", json!(deleted && !d.by_disable));
    put("IsSoftDeletedByDisable", json!(deleted && d.by_disable));
    put(
        "IncludeInGarbageCollection",
        json!(m.kind == MailboxKind::SoftDeleted),
    );
    put(
        "WhenSoftDeleted",
        json!(m.when_soft_deleted.map(exchange_date)),
    );
    put("WhenChanged", json!(exchange_date(m.when_changed)));
    put("WhenChangedUTC", json!(exchange_utc(m.when_changed)));
    put("WhenCreated", json!(exchange_date(d.created)));
    put("WhenCreatedUTC", json!(exchange_utc(d.created)));
    put("LitigationHoldEnabled", json!(held));
    put(
        "LitigationHoldDate",
        json!(held.then(|| exchange_date(d.hold_date))),
    );
    put(
        "LitigationHoldDuration",
        json!(if held { d.hold_duration } else { "Unlimited" }),
    );
    put(
        "LitigationHoldOwner",
        json!(if held {
            format!("admin@{ORGANIZATION}")
        } else {
            String::new()
        }),
    );
    put("InPlaceHolds", json!(m.in_place_holds));
    put("ComplianceTagHoldApplied", json!(m.compliance_tag_hold));
    put("DelayHoldApplied", json!(m.delay_hold));
    put("DelayReleaseHoldApplied", json!(m.delay_release_hold));
    put("InactiveMailboxRetireTime", Value::Null);
    put("RetentionHoldEnabled", json!(false));
    put("StartDateForRetentionHold", Value::Null);
    put("EndDateForRetentionHold", Value::Null);
    put("RetentionComment", json!(""));
    put("RetentionUrl", json!(""));
    put("RetentionPolicy", json!("Default MRM Policy"));
    put("SingleItemRecoveryEnabled", json!(true));
    put("RetainDeletedItemsFor", json!("14.00:00:00"));
    put("RetainDeletedItemsUntilBackup", json!(false));
    put("ElcProcessingDisabled", json!(false));
    put("ArchiveStatus", json!(m.archive_status));
    put("ArchiveGuid", json!(d.archive_guid));
    put(
        "ArchiveName",
        json!(if m.archive_status == "None" {
            vec![]
        } else {
            vec![format!("In-Place Archive -{}", m.display_name)]
        }),
    );
    put(
        "ArchiveState",
        json!(if m.archive_status == "None" {
            "None"
        } else {
            "HostedProvisioned"
        }),
    );
    put("ArchiveQuota", json!("100 GB (107,374,182,400 bytes)"));
    put("ArchiveWarningQuota", json!("90 GB (96,636,764,160 bytes)"));
    put("ArchiveDatabase", Value::Null);
    put("ArchiveDomain", Value::Null);
    put("ArchiveRelease", json!(""));
    put(
        "AutoExpandingArchiveEnabled",
        json!(m.auto_expanding_archive),
    );
    put("DisabledArchiveDatabase", Value::Null);
    put("SKUAssigned", json!(m.sku_assigned));
    put("MailboxPlan", json!(m.mailbox_plan));
    put("PersistedCapabilities", json!(m.persisted_capabilities));
    for (i, value) in m.custom_attributes.iter().enumerate() {
        put(&format!("CustomAttribute{}", i + 1), json!(value));
    }
    for i in 1..=5 {
        put(&format!("ExtensionCustomAttribute{i}"), json!([]));
    }
    put(
        "EmailAddresses",
        json!([
            format!("SMTP:{}", m.primary_smtp),
            format!("smtp:{alias}@{ORGANIZATION}"),
        ]),
    );
    put("ProhibitSendQuota", json!("99 GB (106,300,440,576 bytes)"));
    put(
        "ProhibitSendReceiveQuota",
        json!("100 GB (107,374,182,400 bytes)"),
    );
    put("IssueWarningQuota", json!("98 GB (105,226,698,752 bytes)"));
    put(
        "RecoverableItemsQuota",
        json!("30 GB (32,212,254,720 bytes)"),
    );
    put(
        "RecoverableItemsWarningQuota",
        json!("20 GB (21,474,836,480 bytes)"),
    );
    put("CalendarLoggingQuota", json!("6 GB (6,442,450,944 bytes)"));
    put("RulesQuota", json!("256 KB (262,144 bytes)"));
    put("MaxSendSize", json!("35 MB (36,700,160 bytes)"));
    put("MaxReceiveSize", json!("36 MB (37,748,736 bytes)"));
    put("UseDatabaseQuotaDefaults", json!(false));
    put("UseDatabaseRetentionDefaults", json!(false));
    put("RecipientLimits", json!("500"));
    put("Database", json!("EURPR01DG123-db045"));
    put("ServerName", json!("eurp123mb4567"));
    put(
        "AdminDisplayVersion",
        json!("Version 15.20 (Build 7452.28)"),
    );
    put("ExchangeVersion", json!("0.20 (15.0.0.0)"));
    put(
        "DistinguishedName",
        json!(format!(
            "CN={alias},{ou}OU={ORGANIZATION},OU=Microsoft Exchange Hosted Organizations,\
             DC=EURPR01A001,DC=PROD,DC=OUTLOOK,DC=COM"
        )),
    );
    put(
        "OrganizationalUnit",
        json!(format!(
            "EURPR01A001.PROD.OUTLOOK.COM/Microsoft Exchange Hosted Organizations/{ORGANIZATION}"
        )),
    );
    put(
        "LegacyExchangeDN",
        json!(format!(
            "/o=ExchangeLabs/ou=Exchange Administrative Group (FYDIBOHF23SPDLT)/cn=Recipients/\
             cn={}-{alias}",
            d.legacy_dn_hex
        )),
    );
    put(
        "ObjectCategory",
        json!("EURPR01A001.PROD.OUTLOOK.COM/Configuration/Schema/Person"),
    );
    put(
        "ObjectClass",
        json!(["top", "person", "organizationalPerson", "user"]),
    );
    put(
        "OriginatingServer",
        json!("DB8PR01A01DC001.EURPR01A001.PROD.OUTLOOK.COM"),
    );
    put("IsValid", json!(true));
    put(
        "IsDirSynced",
        json!(m.external_directory_object_id.is_some()),
    );
    put("AccountDisabled", json!(deleted));
    put("IsMailboxEnabled", json!(true));
    put("IsResource", json!(false));
    put("IsLinked", json!(false));
    put("IsRootPublicFolderMailbox", json!(false));
    put("IsAuxMailbox", json!(false));
    put("IsHierarchyReady", json!(true));
    put("IsHierarchySyncEnabled", json!(true));
    put("HiddenFromAddressListsEnabled", json!(deleted));
    put("EmailAddressPolicyEnabled", json!(false));
    put("AddressBookPolicy", Value::Null);
    put("AddressListMembership", json!([]));
    put("AuditEnabled", json!(true));
    put("AuditLogAgeLimit", json!("90.00:00:00"));
    put("AntispamBypassEnabled", json!(false));
    put("CalendarRepairDisabled", json!(false));
    put("CalendarVersionStoreDisabled", json!(false));
    put("DataEncryptionPolicy", Value::Null);
    put("DefaultPublicFolderMailbox", Value::Null);
    put("DeliverToMailboxAndForward", json!(false));
    put("DowngradeHighPriorityMessagesEnabled", json!(false));
    put("ForwardingAddress", Value::Null);
    put("ForwardingSmtpAddress", Value::Null);
    put("GrantSendOnBehalfTo", json!([]));
    put("GeneratedOfflineAddressBooks", json!([]));
    put("Languages", json!(["en-US"]));
    put("MailTip", Value::Null);
    put("MailTipTranslations", json!([]));
    put("MessageCopyForSendOnBehalfEnabled", json!(false));
    put("MessageCopyForSentAsEnabled", json!(false));
    put("MessageRecallProcessingEnabled", json!(true));
    put("MessageTrackingReadStatusEnabled", json!(true));
    put("ModeratedBy", json!([]));
    put("ModerationEnabled", json!(false));
    put("SendModerationNotifications", json!("Always"));
    put("Office", json!(""));
    put("RejectMessagesFrom", json!([]));
    put("RequireSenderAuthenticationEnabled", json!(false));
    put("ResourceCapacity", Value::Null);
    put("ResourceType", Value::Null);
    put(
        "RoleAssignmentPolicy",
        json!("Default Role Assignment Policy"),
    );
    put("SharingPolicy", json!("Default Sharing Policy"));
    put("ThrottlingPolicy", Value::Null);
    put("SimpleDisplayName", json!(""));
    put("UMEnabled", json!(false));
    put("UsageLocation", json!(usage_location));
    put("MailboxMoveStatus", json!("None"));
    put("MailboxRegion", Value::Null);
    put("MailboxProvisioningConstraint", Value::Null);
    put("ExchangeUserAccountControl", json!("None"));
    put(
        "StsRefreshTokensValidFrom",
        json!(exchange_date(m.when_soft_deleted.unwrap_or(d.created))),
    );
    r
}

/// A `Get-MailboxStatistics` record (without sidecar keys).
fn statistics_record(m: &TenantMailbox, tenant_id: &str) -> Map<String, Value> {
    let d = Derived::of(m);
    let deleted_items = (m.item_count as f64 * d.deleted_share) as u64;
    let deleted_size = (m.total_item_size_bytes as f64 * d.deleted_share) as u64;
    let record = json!({
        "DisplayName": m.display_name,
        "MailboxGuid": m.exchange_guid,
        "Identity": m.exchange_guid,
        "ItemCount": m.item_count,
        "TotalItemSize": byte_size(m.total_item_size_bytes),
        "DeletedItemCount": deleted_items,
        "TotalDeletedItemSize": byte_size(deleted_size),
        "AssociatedItemCount": m.item_count.min(40) + 12,
        "LastLogonTime": null,
        "LastLogoffTime": null,
        "LastInteractionTime": null,
        "LastUserActionTime": null,
        "IsArchiveMailbox": false,
        "IsQuarantined": false,
        "IsValid": true,
        "MailboxType": "Private",
        "MailboxTypeDetail": if d.shared { "SharedMailbox" } else { "UserMailbox" },
        "DisconnectDate": null,
        "DisconnectReason": null,
        "DatabaseName": "EURPR01DG123-db045",
        "ServerName": "eurp123mb4567",
        "StorageLimitStatus": null,
        "SystemMessageCount": 180,
        "SystemMessageSize": byte_size(1_048_576),
        "OwnerADGuid": d.guid,
        "ExternalDirectoryOrganizationId": tenant_id,
    });
    match record {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// `2022-09-21T08:07:47.0000000+00:00`: seven fractional digits.
fn exchange_date(t: DateTime<Utc>) -> String {
    format!("{}{}+00:00", t.format("%Y-%m-%dT%H:%M:%S"), ticks(t))
}

/// `2022-09-21T08:07:47.0000000Z`, as in the `*UTC` properties.
fn exchange_utc(t: DateTime<Utc>) -> String {
    format!("{}{}Z", t.format("%Y-%m-%dT%H:%M:%S"), ticks(t))
}

/// The fraction of a second in .NET ticks (100 ns), with its dot.
fn ticks(t: DateTime<Utc>) -> String {
    format!(".{:07}", (t.timestamp_subsec_nanos() / 100).min(9_999_999))
}

/// A size as Exchange's ByteQuantifiedSize prints it: `"3.233 GB (3,471,471,173 bytes)"`.
fn byte_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut unit = 0;
    let mut scale = 1u64;
    while unit + 1 < UNITS.len() && bytes / scale >= 1024 {
        scale *= 1024;
        unit += 1;
    }
    let amount = if unit == 0 {
        bytes.to_string()
    } else {
        let text = format!("{:.3}", bytes as f64 / scale as f64);
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    };
    format!("{amount} {} ({} bytes)", UNITS[unit], thousands(bytes))
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

async fn invoke(
    State(s): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let call = Call::parse(tenant, query.as_deref(), &headers, &body);
    s.serve(call, &headers).await
}

async fn method_not_allowed(
    State(s): State<Arc<Shared>>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let mut response = ExchangeError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        format!(
            "|System.Web.Http.HttpResponseException|The requested resource does not support \
             http method '{method}'."
        ),
    )
    .response();
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("POST"));
    s.finish(response, &Ids::of(&headers))
}

async fn unknown_path(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let response = ExchangeError::new(
        StatusCode::NOT_FOUND,
        "NotFound",
        "|System.Web.Http.HttpResponseException|No HTTP resource was found that matches the \
         request URI (the emulator knows only InvokeCommand)."
            .to_string(),
    )
    .response();
    s.finish(response, &Ids::of(&headers))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{IdentityOptions, IdentityProvider, TEST_CLIENT_ID};

    const TOKEN: &str = "any-token";
    const ANCHOR: &str = "UPN:adele.vance@contoso.onmicrosoft.com";

    struct Answer {
        status: u16,
        headers: reqwest::header::HeaderMap,
        body: Value,
        text: String,
    }

    impl Answer {
        fn detail(&self) -> &str {
            self.body["error"]["details"][0]["message"]
                .as_str()
                .unwrap_or("")
        }

        fn header(&self, name: &str) -> &str {
            self.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
        }

        fn guids(&self) -> Vec<String> {
            let records = self.body["value"].as_array().unwrap();
            records
                .iter()
                .map(|r| r["ExchangeGuid"].as_str().unwrap().to_string())
                .collect()
        }

        fn next_link(&self) -> Option<String> {
            self.body["@odata.nextLink"].as_str().map(str::to_string)
        }

        /// `exchangecookie=...` of `Set-Cookie`, as a client sends it back.
        fn cookie(&self) -> String {
            let set = self.header("set-cookie");
            set.split(';').next().unwrap_or("").to_string()
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

    fn endpoint(x: &ExchangeServer) -> String {
        format!(
            "{}/adminapi/beta/{}/InvokeCommand",
            x.base_url(),
            x.tenant_id()
        )
    }

    fn cmdlet(name: &str, parameters: Value) -> Value {
        json!({ "CmdletInput": { "CmdletName": name, "Parameters": parameters } })
    }

    fn inactive_listing() -> Value {
        cmdlet(
            "Get-Mailbox",
            json!({ "InactiveMailboxOnly": true, "ResultSize": "Unlimited" }),
        )
    }

    /// A request as a careful client sends it: token, anchor and `Prefer`.
    fn request(
        c: &reqwest::Client,
        url: &str,
        body: &Value,
        page: usize,
    ) -> reqwest::RequestBuilder {
        c.post(url)
            .bearer_auth(TOKEN)
            .header("X-AnchorMailbox", ANCHOR)
            .header("Prefer", format!("odata.maxpagesize={page}"))
            .json(body)
    }

    async fn post(c: &reqwest::Client, url: &str, body: &Value) -> Answer {
        answer(request(c, url, body, 1000).send().await.unwrap()).await
    }

    /// Follows a listing to its end, sending back the anchor, the body and the cookie.
    async fn list_all(
        c: &reqwest::Client,
        x: &ExchangeServer,
        body: &Value,
        page: usize,
    ) -> Vec<Answer> {
        let first = answer(request(c, &endpoint(x), body, page).send().await.unwrap()).await;
        assert_eq!(first.status, 200, "{}", first.text);
        let cookie = first.cookie();
        let mut pages = vec![first];
        while let Some(link) = pages.last().unwrap().next_link() {
            let next = request(c, &link, body, page).header("Cookie", &cookie);
            let next = answer(next.send().await.unwrap()).await;
            assert_eq!(next.status, 200, "{}", next.text);
            pages.push(next);
        }
        pages
    }

    fn guids_of(pages: &[Answer]) -> Vec<String> {
        pages.iter().flat_map(Answer::guids).collect()
    }

    fn assert_error(a: &Answer, status: u16, code: &str, detail: &str) {
        assert_eq!(a.status, status, "{}", a.text);
        assert_eq!(a.body["error"]["code"], code, "{}", a.text);
        assert!(a.detail().contains(detail), "{}", a.text);
        assert!(a.body["error"]["message"].as_str().is_some(), "{}", a.text);
    }

    fn assert_pagination_refused(a: &Answer) {
        assert_error(a, 400, "BadRequest", PAGINATION_REFUSED);
        assert!(
            a.detail()
                .starts_with("|Microsoft.Exchange.Management.RestApiClient.")
        );
    }

    fn tenant(inactive: usize, others: usize) -> Vec<TenantMailbox> {
        let mut all = synthetic_tenant(inactive, 7);
        all.extend(synthetic_others(others, 7));
        // Interleave the others among the inactive mailboxes, as a real tenant would.
        fastrand::Rng::with_seed(3).shuffle(&mut all);
        all
    }

    async fn exchange(mailboxes: Vec<TenantMailbox>) -> ExchangeServer {
        ExchangeServer::start(ExchangeOptions::default(), mailboxes)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_listing_in_pages_returns_every_inactive_mailbox_exactly_once() {
        let x = exchange(tenant(2500, 400)).await;
        let c = client();
        let pages = list_all(&c, &x, &inactive_listing(), 1000).await;
        assert_eq!(pages.len(), 3);
        let sizes: Vec<usize> = pages.iter().map(|p| p.guids().len()).collect();
        assert_eq!(sizes, [1000, 1000, 500]);
        let listed = guids_of(&pages);
        let unique: HashSet<&String> = listed.iter().collect();
        assert_eq!(unique.len(), listed.len(), "no mailbox twice");
        let expected: HashSet<String> = x.inactive().into_iter().map(|m| m.exchange_guid).collect();
        assert_eq!(expected.len(), 2500);
        assert_eq!(
            unique,
            expected.iter().collect(),
            "every inactive one, no other"
        );
        for page in &pages {
            assert_eq!(page.body["@adminapi.warnings"], json!([]), "Unlimited");
            assert_eq!(
                page.body["@odata.context"],
                format!(
                    "{}/adminapi/beta/{}/$metadata#Mailbox",
                    x.base_url(),
                    x.tenant_id()
                )
            );
            assert_eq!(page.header("content-type"), JSON_TYPE);
            assert_eq!(page.header("rate-limit-limit"), "30000");
            assert_eq!(page.header("x-concurrencycount"), "1");
            assert_eq!(page.header("preference-applied"), "odata.maxpagesize=1000");
            assert!(!page.header("request-id").is_empty());
            assert!(page.header("rate-limit-reset").ends_with(" GMT"));
        }
        let remaining: Vec<u64> = pages
            .iter()
            .map(|p| p.header("rate-limit-remaining").parse().unwrap())
            .collect();
        assert!(remaining.windows(2).all(|w| w[0] > w[1]), "{remaining:?}");
        let link = pages[0].next_link().unwrap();
        assert!(
            link.starts_with(&format!("{}?$skiptoken=", endpoint(&x))),
            "{link}"
        );
        let set_cookie = pages[0].header("set-cookie");
        assert!(set_cookie.starts_with("exchangecookie="), "{set_cookie}");
        assert!(
            set_cookie.ends_with("; path=/; secure; HttpOnly"),
            "{set_cookie}"
        );
        assert!(pages[1].headers.get("set-cookie").is_none());

        let stats = x.requests();
        assert_eq!((stats.total, stats.get_mailbox), (3, 3));
        assert_eq!((stats.listings_started, stats.pages_served), (1, 3));
        assert_eq!(
            (
                stats.continuations_with_cookie,
                stats.continuations_without_cookie
            ),
            (2, 0)
        );
        assert_eq!(stats.anchors, vec![Some(ANCHOR.to_string()); 3]);
        assert_eq!(stats.prefer_headers, vec!["odata.maxpagesize=1000"; 3]);
        assert_eq!(
            stats.last_parameters,
            Some(json!({ "InactiveMailboxOnly": true, "ResultSize": "Unlimited" }))
        );
        assert_eq!(stats.pagination_refusals, 0);

        // Pages follow the client's size, up to the server's maximum.
        let small = list_all(&c, &x, &inactive_listing(), 700).await;
        assert_eq!(small.len(), 4);
        let capped = ExchangeServer::start(
            ExchangeOptions {
                max_page_size: 400,
                ..ExchangeOptions::default()
            },
            x.mailboxes(),
        )
        .await
        .unwrap();
        let pages = list_all(&c, &capped, &inactive_listing(), 1000).await;
        assert_eq!(pages.len(), 7);
        assert_eq!(guids_of(&pages).len(), 2500);
    }

    #[tokio::test]
    async fn without_inactive_mailbox_only_or_result_size_the_listing_is_wrong() {
        let x = exchange(tenant(1200, 60)).await;
        let c = client();
        let everything = cmdlet("Get-Mailbox", json!({ "ResultSize": "Unlimited" }));
        let pages = list_all(&c, &x, &everything, 1000).await;
        let listed: HashSet<String> = guids_of(&pages).into_iter().collect();
        assert_eq!(listed.len(), 1260, "the others appear too");
        let kinds: HashSet<MailboxKind> = x
            .mailboxes()
            .into_iter()
            .filter(|m| listed.contains(&m.exchange_guid))
            .map(|m| m.kind)
            .collect();
        assert_eq!(kinds.len(), 3, "{kinds:?}");
        let soft: Vec<&Value> = pages
            .iter()
            .flat_map(|p| p.body["value"].as_array().unwrap())
            .filter(|r| r["IsInactiveMailbox"] == false && !r["WhenSoftDeleted"].is_null())
            .collect();
        assert!(
            !soft.is_empty(),
            "soft-deleted, not inactive ones are listed"
        );

        // Without ResultSize: 1000 in all, and only a warning says so.
        let limited = cmdlet("Get-Mailbox", json!({ "InactiveMailboxOnly": true }));
        let pages = list_all(&c, &x, &limited, 400).await;
        assert_eq!(pages.len(), 3);
        assert_eq!(guids_of(&pages).len(), 1000);
        for page in &pages {
            assert_eq!(page.body["@adminapi.warnings"], json!([MORE_RESULTS]));
        }
        assert!(pages[2].next_link().is_none());
        let thirty = cmdlet(
            "Get-Mailbox",
            json!({ "InactiveMailboxOnly": true, "ResultSize": 30 }),
        );
        let pages = list_all(&c, &x, &thirty, 1000).await;
        assert_eq!((pages.len(), pages[0].guids().len()), (1, 30));
        assert_eq!(pages[0].body["@adminapi.warnings"][0], MORE_RESULTS);
        let enough = cmdlet(
            "Get-Mailbox",
            json!({ "InactiveMailboxOnly": true, "ResultSize": "5000" }),
        );
        let pages = list_all(&c, &x, &enough, 1000).await;
        assert_eq!(guids_of(&pages).len(), 1200);
        assert_eq!(pages[1].body["@adminapi.warnings"], json!([]), "complete");
        let bad = cmdlet("Get-Mailbox", json!({ "ResultSize": "all" }));
        assert_error(
            &post(&c, &endpoint(&x), &bad).await,
            400,
            "BadRequest",
            "ParameterBindingException",
        );
    }

    #[tokio::test]
    async fn select_trims_records_and_keeps_the_sidecars_of_selected_properties() {
        let x = exchange(synthetic_tenant(30, 11)).await;
        let c = client();
        let full = post(&c, &endpoint(&x), &inactive_listing()).await;
        let record = full.body["value"][0].as_object().unwrap();
        assert!(record.len() > 150, "{}", record.len());
        for (key, value) in [
            ("ExchangeGuid@data.type", "Guid"),
            ("Guid@data.type", "Guid"),
            ("InPlaceHolds@odata.type", "#Collection(String)"),
            ("EmailAddresses@odata.type", "#Collection(String)"),
            ("PersistedCapabilities@odata.type", "#Collection(String)"),
            ("WhenSoftDeleted@data.type", "DateTime"),
        ] {
            assert_eq!(record[key], value, "{key}");
        }
        let first = &x.inactive()[0];
        assert_eq!(record["ExchangeGuid"], first.exchange_guid.as_str());
        assert_eq!(record["IsInactiveMailbox"], true);
        assert_eq!(
            record["CustomAttribute1"],
            first.custom_attributes[0].as_str()
        );
        assert_eq!(record["CustomAttribute15"], "");
        assert_eq!(record["ProhibitSendQuota"], "99 GB (106,300,440,576 bytes)");
        assert_eq!(record["InactiveMailboxRetireTime"], Value::Null);
        assert_eq!(
            record["EmailAddresses"][0],
            format!("SMTP:{}", first.primary_smtp)
        );
        let changed = record["WhenChangedUTC"].as_str().unwrap();
        assert_eq!((changed.len(), &changed[19..20]), (28, "."), "{changed}");
        assert!(changed.ends_with('Z'), "{changed}");
        let deleted = record["WhenSoftDeleted"].as_str().unwrap();
        assert!(deleted.ends_with(".0000000+00:00"), "{deleted}");
        let external: Vec<&Value> = full.body["value"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| &r["ExternalDirectoryObjectId"])
            .collect();
        assert!(external.iter().all(|v| v.is_string()), "never null");
        assert!(external.contains(&&json!("")));

        let url = format!(
            "{}?$select=exchangeguid,DisplayName,InPlaceHolds,NoSuchProperty,WhenSoftDeleted",
            endpoint(&x)
        );
        let pages = {
            let first = answer(
                request(&c, &url, &inactive_listing(), 20)
                    .send()
                    .await
                    .unwrap(),
            )
            .await;
            let link = first.next_link().unwrap();
            assert!(
                link.ends_with(
                    "&$select=exchangeguid,DisplayName,InPlaceHolds,NoSuchProperty,WhenSoftDeleted"
                ),
                "{link}"
            );
            let second =
                request(&c, &link, &inactive_listing(), 20).header("Cookie", first.cookie());
            let second = answer(second.send().await.unwrap()).await;
            [first, second]
        };
        for record in pages
            .iter()
            .flat_map(|p| p.body["value"].as_array().unwrap())
        {
            let mut keys: Vec<&String> = record.as_object().unwrap().keys().collect();
            keys.sort();
            assert_eq!(
                keys,
                [
                    "DisplayName",
                    "ExchangeGuid",
                    "ExchangeGuid@data.type",
                    "InPlaceHolds",
                    "InPlaceHolds@odata.type",
                    "WhenSoftDeleted",
                    "WhenSoftDeleted@data.type",
                ]
            );
        }
        assert_eq!(guids_of(&pages).len(), 30);
        assert_eq!(
            x.requests().last_select.unwrap(),
            [
                "exchangeguid",
                "DisplayName",
                "InPlaceHolds",
                "NoSuchProperty",
                "WhenSoftDeleted"
            ]
        );

        // A null property carries no sidecar.
        let mut active = synthetic_others(1, 1)[0].clone();
        active.kind = MailboxKind::Active;
        active.when_soft_deleted = None;
        let record = selected(
            mailbox_record(&active),
            Some(&["WhenSoftDeleted".to_string()]),
        );
        assert_eq!(Value::Object(record), json!({ "WhenSoftDeleted": null }));
    }

    #[tokio::test]
    async fn continuations_must_repeat_the_body_and_anchor_within_the_links_lifetime() {
        let x = exchange(synthetic_tenant(30, 5)).await;
        let c = client();
        let body = inactive_listing();
        let first = answer(request(&c, &endpoint(&x), &body, 10).send().await.unwrap()).await;
        let link = first.next_link().unwrap();
        let cookie = first.cookie();
        let continue_with = |anchor: Option<&str>, body: &Value, url: &str| {
            let mut r = c
                .post(url)
                .bearer_auth(TOKEN)
                .header("Cookie", &cookie)
                .json(body);
            if let Some(anchor) = anchor {
                r = r.header("X-AnchorMailbox", anchor);
            }
            r
        };

        let other_anchor = continue_with(Some("UPN:someone.else@contoso.com"), &body, &link);
        assert_pagination_refused(&answer(other_anchor.send().await.unwrap()).await);
        let no_anchor = continue_with(None, &body, &link);
        assert_pagination_refused(&answer(no_anchor.send().await.unwrap()).await);
        let other_body = cmdlet(
            "Get-Mailbox",
            json!({ "InactiveMailboxOnly": true, "ResultSize": "Unlimited", "IncludeInactiveMailbox": true }),
        );
        let changed = continue_with(Some(ANCHOR), &other_body, &link);
        assert_pagination_refused(&answer(changed.send().await.unwrap()).await);
        let unknown = format!("{}?$skiptoken=AAAbogus", endpoint(&x));
        let unknown = continue_with(Some(ANCHOR), &body, &unknown);
        assert_pagination_refused(&answer(unknown.send().await.unwrap()).await);

        let right = continue_with(Some(ANCHOR), &body, &link);
        let second = answer(right.send().await.unwrap()).await;
        assert_eq!(second.status, 200, "{}", second.text);
        let again = continue_with(Some(ANCHOR), &body, &link);
        let again = answer(again.send().await.unwrap()).await;
        assert_eq!(again.guids(), second.guids(), "a link can be retried");

        x.expire_links();
        let lapsed = continue_with(Some(ANCHOR), &body, &second.next_link().unwrap());
        assert_pagination_refused(&answer(lapsed.send().await.unwrap()).await);
        let stats = x.requests();
        assert_eq!(stats.pagination_refusals, 5);
        assert_eq!(stats.listings_started, 1);

        // A listing without an anchor must go on without one.
        let bare = c
            .post(endpoint(&x))
            .bearer_auth(TOKEN)
            .json(&body)
            .header("Prefer", "odata.maxpagesize=10");
        let first = answer(bare.send().await.unwrap()).await;
        let with_anchor = continue_with(Some(ANCHOR), &body, &first.next_link().unwrap());
        assert_pagination_refused(&answer(with_anchor.send().await.unwrap()).await);
        let without = continue_with(None, &body, &first.next_link().unwrap());
        assert_eq!(answer(without.send().await.unwrap()).await.status, 200);

        // Links lapse with time, and the cookie can be required.
        let strict = ExchangeServer::start(
            ExchangeOptions {
                link_lifetime: Duration::from_millis(300),
                require_cookie: true,
                ..ExchangeOptions::default()
            },
            synthetic_tenant(30, 5),
        )
        .await
        .unwrap();
        let first = answer(
            request(&c, &endpoint(&strict), &body, 10)
                .send()
                .await
                .unwrap(),
        )
        .await;
        let link = first.next_link().unwrap();
        let no_cookie = request(&c, &link, &body, 10);
        assert_pagination_refused(&answer(no_cookie.send().await.unwrap()).await);
        let wrong_cookie = request(&c, &link, &body, 10).header("Cookie", "exchangecookie=0000");
        assert_pagination_refused(&answer(wrong_cookie.send().await.unwrap()).await);
        let cookie = format!("other=1; {}", first.cookie());
        let second = request(&c, &link, &body, 10).header("Cookie", &cookie);
        let second = answer(second.send().await.unwrap()).await;
        assert_eq!(second.status, 200, "{}", second.text);
        tokio::time::sleep(Duration::from_millis(400)).await;
        let late = request(&c, &second.next_link().unwrap(), &body, 10).header("Cookie", &cookie);
        assert_pagination_refused(&answer(late.send().await.unwrap()).await);
        let stats = strict.requests();
        assert_eq!(stats.continuations_with_cookie, 2);
        assert_eq!(stats.continuations_without_cookie, 2);
        assert_eq!(stats.pagination_refusals, 3);
    }

    #[tokio::test]
    async fn tenant_changes_during_a_listing_show_in_the_next_one() {
        let x = exchange(synthetic_tenant(25, 9)).await;
        let c = client();
        let body = inactive_listing();
        let first = answer(request(&c, &endpoint(&x), &body, 10).send().await.unwrap()).await;
        let cookie = first.cookie();
        let before = x.inactive();
        let removed = before[24].exchange_guid.clone();
        let updated = before[15].exchange_guid.clone();
        let mut added = synthetic_tenant(1, 99)[0].clone();
        added.exchange_guid = "0f0e0d0c-0b0a-4908-8706-050403020100".to_string();
        assert!(x.remove(&removed));
        assert!(!x.remove(&removed));
        x.add(added.clone());
        assert!(x.update(&updated, |m| m.display_name = "Renamed".to_string()));
        assert!(x.release_holds(&before[3].exchange_guid));
        assert!(!x.inactive()[3].has_hold());
        assert!(!x.update("nope", |_| {}));

        let mut pages = vec![first];
        while let Some(link) = pages.last().unwrap().next_link() {
            let next = request(&c, &link, &body, 10).header("Cookie", &cookie);
            pages.push(answer(next.send().await.unwrap()).await);
        }
        let listed = guids_of(&pages);
        assert_eq!(listed.len(), 25);
        assert!(listed.contains(&removed), "the snapshot keeps it");
        assert!(!listed.contains(&added.exchange_guid));
        let renamed = pages
            .iter()
            .flat_map(|p| p.body["value"].as_array().unwrap())
            .find(|r| r["ExchangeGuid"] == updated.as_str())
            .unwrap();
        assert_eq!(renamed["DisplayName"], before[15].display_name.as_str());

        let next = list_all(&c, &x, &body, 10).await;
        let listed = guids_of(&next);
        assert_eq!(listed.len(), 25);
        assert!(!listed.contains(&removed));
        assert!(listed.contains(&added.exchange_guid));
        let renamed = next
            .iter()
            .flat_map(|p| p.body["value"].as_array().unwrap())
            .find(|r| r["ExchangeGuid"] == updated.as_str())
            .unwrap();
        assert_eq!(renamed["DisplayName"], "Renamed");
        let changed =
            DateTime::parse_from_rfc3339(renamed["WhenChangedUTC"].as_str().unwrap()).unwrap();
        assert!(Utc::now() - changed.with_timezone(&Utc) < TimeDelta::minutes(1));
        assert_eq!(x.requests().listings_started, 2);
    }

    #[tokio::test]
    async fn statistics_come_per_exchange_guid_and_unknown_ones_are_404() {
        let mut mailboxes = synthetic_tenant(5, 3);
        mailboxes.extend(synthetic_others(10, 3));
        let x = exchange(mailboxes).await;
        let c = client();
        let guid = x.inactive()[0].exchange_guid.clone();
        assert!(x.set_statistics(&guid, 3_471_471_173, 1234));
        assert!(!x.set_statistics("nope", 1, 1));
        let stats_of = |identity: &str, include: bool| {
            let mut parameters = json!({ "Identity": identity });
            if include {
                parameters["IncludeSoftDeletedRecipients"] = json!(true);
            }
            cmdlet("Get-MailboxStatistics", parameters)
        };
        let a = post(&c, &endpoint(&x), &stats_of(&guid.to_uppercase(), true)).await;
        assert_eq!(a.status, 200, "{}", a.text);
        let record = &a.body["value"][0];
        assert_eq!(record["TotalItemSize"], "3.233 GB (3,471,471,173 bytes)");
        let size = record["TotalItemSize"].as_str().unwrap();
        let bytes: u64 = size[size.find('(').unwrap() + 1..size.find(" bytes").unwrap()]
            .replace(',', "")
            .parse()
            .unwrap();
        assert_eq!(bytes, 3_471_471_173);
        assert_eq!(record["ItemCount"], 1234);
        assert_eq!(record["MailboxGuid"], guid.as_str());
        assert_eq!(record["MailboxGuid@data.type"], "Guid");
        assert_eq!(record["LastLogonTime"], Value::Null);
        assert_eq!(record["IsArchiveMailbox"], false);
        assert!(
            record["TotalDeletedItemSize"]
                .as_str()
                .unwrap()
                .ends_with(" bytes)")
        );
        assert_eq!(a.body["@adminapi.warnings"], json!([]));

        let hidden = post(&c, &endpoint(&x), &stats_of(&guid, false)).await;
        assert_error(
            &hidden,
            404,
            "NotFound",
            "ManagementObjectNotFoundException",
        );
        assert!(hidden.detail().starts_with("Ex6F9304|"), "{}", hidden.text);
        assert!(hidden.detail().contains(&format!("object '{guid}'")));
        let active = x
            .mailboxes()
            .into_iter()
            .find(|m| m.kind == MailboxKind::Active)
            .unwrap();
        let a = post(&c, &endpoint(&x), &stats_of(&active.exchange_guid, false)).await;
        assert_eq!(a.status, 200, "an active mailbox needs no switch");
        let unknown = "11111111-2222-4333-8444-555555555555";
        let missing = post(&c, &endpoint(&x), &stats_of(unknown, true)).await;
        assert_error(
            &missing,
            404,
            "NotFound",
            "ManagementObjectNotFoundException",
        );
        let upn = x.inactive()[0].user_principal_name.clone();
        let by_upn = post(&c, &endpoint(&x), &stats_of(&upn, true)).await;
        assert_eq!(by_upn.status, 404, "only the ExchangeGuid identifies");

        let stats = x.requests();
        assert_eq!(stats.statistics_calls, 5);
        assert_eq!(stats.statistics_per_mailbox[&guid], 2);
        assert_eq!(stats.statistics_per_mailbox[unknown], 1);
        assert_eq!(stats.get_mailbox, 0);
    }

    #[tokio::test]
    async fn each_failure_answers_as_it_says() {
        let x = exchange(synthetic_tenant(20, 1)).await;
        let c = client();
        let url = endpoint(&x);
        let body = inactive_listing();
        let date = "Wed, 21 Oct 2015 07:28:00 GMT";
        for value in ["2", "0.5", date] {
            x.fail_next(
                1,
                ExchangeFailure::Throttled {
                    retry_after: Some(value.to_string()),
                },
            );
            let a = post(&c, &url, &body).await;
            assert_error(&a, 429, "TooManyRequests", "Too many requests");
            assert_eq!(a.header("retry-after"), value);
            assert!(!a.header("request-id").is_empty());
        }
        x.fail_next(1, ExchangeFailure::Throttled { retry_after: None });
        assert!(
            post(&c, &url, &body)
                .await
                .headers
                .get("retry-after")
                .is_none()
        );
        x.fail_next(
            1,
            ExchangeFailure::ServiceUnavailable {
                retry_after: Some("5".to_string()),
            },
        );
        let a = post(&c, &url, &body).await;
        assert_error(&a, 503, "ServiceUnavailable", "temporarily unavailable");
        assert_eq!(a.header("retry-after"), "5");

        x.fail_next(1, ExchangeFailure::GatewayTimeout);
        let a = post(&c, &url, &body).await;
        assert_eq!(a.status, 504);
        assert!(a.header("content-type").starts_with("text/html"));
        assert_eq!(a.body, Value::Null, "not JSON");

        for status in [429, 400, 503] {
            x.fail_next(1, ExchangeFailure::ConcurrencyLimit { status });
            let a = post(&c, &url, &body).await;
            assert_eq!(a.status, status);
            assert_eq!(a.body["error"]["message"], CONCURRENCY_TEXT);
            assert_eq!(a.detail(), CONCURRENCY_TEXT);
        }

        for name in ["DCOverloadedException", "StorageTransientException"] {
            x.fail_next(1, ExchangeFailure::ServerException(name.to_string()));
            let a = post(&c, &url, &body).await;
            assert_error(&a, 500, "InternalServerError", name);
            assert!(
                a.detail().starts_with("Ex1A2B3C|Microsoft.Exchange.Data."),
                "{}",
                a.text
            );
            assert!(a.detail().split('|').nth(1).unwrap().ends_with(name));
        }

        x.fail_next(1, ExchangeFailure::Unauthorized { claims: None });
        let a = post(&c, &url, &body).await;
        assert_eq!((a.status, a.text.as_str()), (401, ""));
        assert!(
            a.header("www-authenticate")
                .ends_with("error=\"invalid_token\"")
        );
        let claims = r#"{"access_token":{"nbf":{"essential":true,"value":"1700000000"}}}"#;
        x.fail_next(
            1,
            ExchangeFailure::Unauthorized {
                claims: Some(claims.to_string()),
            },
        );
        let a = post(&c, &url, &body).await;
        assert_eq!((a.status, a.text.as_str()), (401, ""));
        let challenge = a.header("www-authenticate");
        assert!(
            challenge.contains("error=\"insufficient_claims\""),
            "{challenge}"
        );
        assert!(challenge.contains(&format!("claims=\"{}\"", STANDARD.encode(claims))));

        x.fail_next(1, ExchangeFailure::Forbidden);
        let forbidden = request(&c, &url, &body, 1000).send().await.unwrap();
        assert_eq!(forbidden.status(), 403);
        assert_eq!(forbidden.headers()["content-encoding"], "gzip");
        let diagnostics = forbidden.headers()["x-ms-diagnostics"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            diagnostics.starts_with("2000008;reason=\"The user does not have the required role")
        );
        assert!(diagnostics.contains("to run Get-Mailbox."), "{diagnostics}");
        assert!(diagnostics.ends_with("error_category=\"insufficient_auth_permissions\""));
        assert_eq!(forbidden.bytes().await.unwrap().to_vec(), vec![0u8; 512]);

        x.fail_next(1, ExchangeFailure::PaginationExpired);
        assert_pagination_refused(&post(&c, &url, &body).await);
        x.fail_next(1, ExchangeFailure::NotFound);
        let a = post(&c, &url, &body).await;
        assert_error(&a, 404, "NotFound", "ManagementObjectNotFoundException");

        x.fail_next(1, ExchangeFailure::CutOffBody);
        let cut = request(&c, &url, &body, 1000).send().await.unwrap();
        assert_eq!(cut.status(), 200);
        let announced: usize = cut.headers()["content-length"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(announced > 1000, "{announced}");
        assert!(cut.bytes().await.is_err(), "a truncated body is an error");

        x.fail_next(1, ExchangeFailure::NotJson);
        let a = post(&c, &url, &body).await;
        assert_eq!(a.status, 200);
        assert!(a.header("content-type").starts_with("text/html"));
        assert!(a.text.contains("Service Unavailable"));
        assert!(serde_json::from_str::<Value>(&a.text).is_err());

        x.fail_next(1, ExchangeFailure::DropConnection);
        let dropped = request(&c, &url, &body, 1000).send().await;
        assert!(dropped.is_err(), "no status: {dropped:?}");

        let stats = x.requests();
        assert_eq!(stats.injected_failures, 19);
        assert_eq!(stats.unauthorized, 2);
        assert_eq!(
            stats.pagination_refusals, 0,
            "injected ones are not counted there"
        );
        assert_eq!(stats.pages_served, 0);
        let ok = post(&c, &url, &body).await;
        assert_eq!(ok.status, 200, "{}", ok.text);
    }

    #[tokio::test]
    async fn failures_pick_their_cmdlet_and_page() {
        let x = exchange(synthetic_tenant(30, 2)).await;
        let c = client();
        let guid = x.inactive()[0].exchange_guid.clone();
        let statistics = cmdlet(
            "Get-MailboxStatistics",
            json!({ "Identity": guid, "IncludeSoftDeletedRecipients": true }),
        );
        x.fail_next_on(
            Cmdlet::GetMailboxStatistics,
            2,
            ExchangeFailure::ServerException("DCOverloadedException".to_string()),
        );
        let body = inactive_listing();
        let first = answer(request(&c, &endpoint(&x), &body, 10).send().await.unwrap()).await;
        assert_eq!(first.status, 200, "other cmdlets answer");
        assert_eq!(post(&c, &endpoint(&x), &statistics).await.status, 500);
        assert_eq!(post(&c, &endpoint(&x), &statistics).await.status, 500);
        assert_eq!(post(&c, &endpoint(&x), &statistics).await.status, 200);

        x.fail_page(3, ExchangeFailure::ServiceUnavailable { retry_after: None });
        x.fail_page(2, ExchangeFailure::CutOffBody);
        let cookie = first.cookie();
        let link2 = first.next_link().unwrap();
        let cut = request(&c, &link2, &body, 10)
            .header("Cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert!(cut.bytes().await.is_err());
        let second = request(&c, &link2, &body, 10).header("Cookie", &cookie);
        let second = answer(second.send().await.unwrap()).await;
        assert_eq!(second.status, 200, "the same link again");
        let link3 = second.next_link().unwrap();
        let third = request(&c, &link3, &body, 10).header("Cookie", &cookie);
        assert_eq!(answer(third.send().await.unwrap()).await.status, 503);
        let third = request(&c, &link3, &body, 10).header("Cookie", &cookie);
        let third = answer(third.send().await.unwrap()).await;
        assert_eq!(third.status, 200);
        assert!(third.next_link().is_none());
        let mut listed = first.guids();
        listed.extend(second.guids());
        listed.extend(third.guids());
        assert_eq!(listed.len(), 30);

        x.fail_page(1, ExchangeFailure::GatewayTimeout);
        assert_eq!(post(&c, &endpoint(&x), &body).await.status, 504);
        let stats = x.requests();
        assert_eq!(stats.injected_failures, 5);
        assert_eq!(stats.listings_started, 1, "a failed first page starts none");
        assert_eq!(stats.pages_served, 3);
        assert_eq!(stats.statistics_calls, 3);
    }

    #[tokio::test]
    async fn the_wire_refuses_what_exchange_refuses() {
        let x = exchange(synthetic_tenant(3, 4)).await;
        let c = client();
        let body = inactive_listing();
        let elsewhere = format!(
            "{}/adminapi/beta/00000000-1111-2222-3333-444444444444/InvokeCommand",
            x.base_url()
        );
        assert_error(
            &post(&c, &elsewhere, &body).await,
            404,
            "NotFound",
            "ManagementObjectNotFoundException",
        );
        let upper = format!(
            "{}/adminapi/beta/{}/InvokeCommand",
            x.base_url(),
            x.tenant_id().to_uppercase()
        );
        assert_eq!(post(&c, &upper, &body).await.status, 200);

        let get = answer(c.get(endpoint(&x)).bearer_auth(TOKEN).send().await.unwrap()).await;
        assert_eq!(get.status, 405);
        assert!(!get.header("request-id").is_empty());
        let v1 = format!(
            "{}/adminapi/v1.0/{}/InvokeCommand",
            x.base_url(),
            x.tenant_id()
        );
        assert_eq!(post(&c, &v1, &body).await.status, 405);
        let other = format!("{}/adminapi/beta/{}/Mailbox", x.base_url(), x.tenant_id());
        assert_eq!(post(&c, &other, &body).await.status, 404);

        let garbage = c
            .post(endpoint(&x))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body("{not json");
        let a = answer(garbage.send().await.unwrap()).await;
        assert_error(&a, 400, "BadRequest", "not valid JSON");
        let nameless = json!({ "CmdletInput": { "Parameters": {} } });
        assert_error(
            &post(&c, &endpoint(&x), &nameless).await,
            400,
            "BadRequest",
            "CmdletName",
        );
        let unknown = cmdlet("Get-Recipient", json!({}));
        let a = post(&c, &endpoint(&x), &unknown).await;
        assert_error(
            &a,
            400,
            "BadRequest",
            "|System.Management.Automation.CommandNotFoundException|",
        );
        assert!(
            a.detail()
                .contains("The term 'Get-Recipient' is not recognized")
        );

        let id = "5b0c1e2d-0000-4000-8000-000000000001";
        let a = request(&c, &endpoint(&x), &body, 1000).header("client-request-id", id);
        let a = answer(a.send().await.unwrap()).await;
        assert_eq!(a.header("client-request-id"), id);
        assert_eq!(x.requests().client_request_ids, [id]);
        assert_eq!(x.requests().total, 6, "every InvokeCommand POST");
    }

    async fn sign_in(c: &reqwest::Client, idp: &IdentityProvider, scope: &str) -> String {
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
        tokens["access_token"].as_str().unwrap().to_string()
    }

    #[tokio::test]
    async fn tokens_are_checked_against_the_identity_emulator() {
        let idp = IdentityProvider::start(IdentityOptions {
            interval: Some(1),
            ..IdentityOptions::default()
        })
        .await
        .unwrap();
        let x = ExchangeServer::start(
            ExchangeOptions {
                token_checker: Some(idp.token_checker()),
                ..ExchangeOptions::default()
            },
            synthetic_tenant(3, 8),
        )
        .await
        .unwrap();
        let c = client();
        let exchange_token = sign_in(
            &c,
            &idp,
            "https://outlook.office365.com/.default offline_access",
        )
        .await;
        let graph_token = sign_in(
            &c,
            &idp,
            "https://graph.microsoft.com/.default offline_access",
        )
        .await;
        let body = inactive_listing();
        let with = |token: &str| c.post(endpoint(&x)).bearer_auth(token).json(&body);

        let ok = answer(with(&exchange_token).send().await.unwrap()).await;
        assert_eq!(ok.status, 200, "{}", ok.text);
        assert_eq!(ok.guids().len(), 3);
        for refused in [
            with(&graph_token),
            with("forged"),
            c.post(endpoint(&x)).json(&body),
        ] {
            let a = answer(refused.send().await.unwrap()).await;
            assert_eq!((a.status, a.text.as_str()), (401, ""));
            assert_eq!(
                a.header("www-authenticate"),
                "Bearer client_id=\"00000002-0000-0ff1-ce00-000000000000\", \
                 trusted_issuers=\"00000001-0000-0000-c000-000000000000@*\", \
                 token_types=\"app_asserting_user\", \
                 authorization_uri=\"https://login.microsoftonline.com/common/oauth2/authorize\", \
                 error=\"invalid_token\""
            );
        }
        idp.advance_clock(Duration::from_secs(3601));
        let late = answer(with(&exchange_token).send().await.unwrap()).await;
        assert_eq!(late.status, 401);
        assert_eq!(x.requests().unauthorized, 4);
    }

    #[tokio::test]
    async fn a_concurrency_cap_refuses_the_extra_requests() {
        let x = ExchangeServer::start(
            ExchangeOptions {
                concurrency_cap: Some(2),
                latency: Duration::from_millis(300),
                ..ExchangeOptions::default()
            },
            synthetic_tenant(5, 6),
        )
        .await
        .unwrap();
        let c = client();
        let body = inactive_listing();
        let four = (0..4).map(|_| {
            let (c, url, body) = (c.clone(), endpoint(&x), body.clone());
            async move { post(&c, &url, &body).await }
        });
        let answers = futures_util::future::join_all(four).await;
        let mut statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
        statuses.sort();
        assert_eq!(statuses, [200, 200, 429, 429]);
        for a in answers.iter().filter(|a| a.status == 429) {
            assert!(a.text.contains(CONCURRENCY_TEXT), "{}", a.text);
            assert!(a.headers.get("retry-after").is_none());
        }
        let counts: Vec<&str> = answers
            .iter()
            .map(|a| a.header("x-concurrencycount"))
            .collect();
        assert!(
            counts.iter().all(|n| ["1", "2", "3", "4"].contains(n)),
            "{counts:?}"
        );
        let stats = x.requests();
        // A refused request leaves at once, so the last may arrive after it has gone.
        assert!(
            (3..=4).contains(&stats.max_in_flight),
            "{}",
            stats.max_in_flight
        );
        assert_eq!(stats.concurrency_refusals, 2);

        x.set_concurrency_cap(None);
        x.set_latency(Duration::ZERO);
        let four = (0..4).map(|_| {
            let (c, url, body) = (c.clone(), endpoint(&x), body.clone());
            async move { post(&c, &url, &body).await.status }
        });
        let statuses = futures_util::future::join_all(four).await;
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    }

    #[test]
    fn the_synthetic_tenant_is_deterministic_and_realistic() {
        // Dates count from the start of the UTC day: a pair drawn across midnight differs,
        // and is drawn again (the next pair is on one day).
        let pair = || (synthetic_tenant(600, 42), synthetic_tenant(600, 42));
        let (a, b) = match pair() {
            (a, b) if a == b => (a, b),
            _ => pair(),
        };
        assert_eq!(a, b);
        assert_ne!(a, synthetic_tenant(600, 43));
        assert!(a.iter().all(|m| m.kind == MailboxKind::Inactive));
        assert!(a.iter().all(TenantMailbox::has_hold), "inactive means held");
        let guids: HashSet<&str> = a.iter().map(|m| m.exchange_guid.as_str()).collect();
        assert_eq!(guids.len(), 600);
        assert!(
            guids
                .iter()
                .all(|g| uuid::Uuid::parse_str(g).is_ok() && g.len() == 36)
        );
        assert!(guids.iter().all(|g| *g == g.to_lowercase()));
        let mut upns: HashMap<&str, usize> = HashMap::new();
        for m in &a {
            *upns.entry(m.user_principal_name.as_str()).or_default() += 1;
            assert_eq!(m.user_principal_name, m.primary_smtp);
        }
        let shared = upns.values().filter(|n| **n > 1).count();
        assert!((6..=12).contains(&shared), "{shared}");

        let share = |f: &dyn Fn(&TenantMailbox) -> bool| {
            a.iter().filter(|m| f(m)).count() as f64 / a.len() as f64
        };
        let around = |value: f64, target: f64, what: &str| {
            assert!((value - target).abs() < 0.07, "{what}: {value}");
        };
        around(share(&|m| m.litigation_hold), 0.45, "litigation");
        around(share(&|m| m.compliance_tag_hold), 0.08, "compliance tag");
        around(share(&|m| m.delay_hold), 0.05, "delay");
        around(share(&|m| m.auto_expanding_archive), 0.10, "auto-expanding");
        around(
            share(&|m| m.external_directory_object_id.is_some()),
            0.15,
            "dir-synced",
        );
        let holds: Vec<&String> = a.iter().flat_map(|m| &m.in_place_holds).collect();
        for prefix in ["UniH", "mbx", "grp", "skp", "-mbx"] {
            assert!(holds.iter().any(|h| h.starts_with(prefix)), "{prefix}");
        }
        assert!(
            holds.iter().any(|h| uuid::Uuid::parse_str(h).is_ok()),
            "legacy"
        );
        for m in &a {
            for h in m.in_place_holds.iter().filter(|h| h.starts_with('-')) {
                assert!(
                    m.in_place_holds.iter().any(|o| !o.starts_with('-')),
                    "{h} alone"
                );
            }
        }
        let companies: HashSet<&str> = a.iter().map(|m| m.custom_attributes[0].as_str()).collect();
        assert_eq!(companies.len(), 4, "{companies:?}");
        let licences: HashSet<&str> = a.iter().map(|m| m.custom_attributes[6].as_str()).collect();
        assert_eq!(licences, HashSet::from(["E3", "E5", "F3", ""]));
        assert!(a.iter().any(|m| m.mailbox_plan.is_none()));
        assert!(a.iter().any(|m| {
            m.persisted_capabilities
                .contains(&"BPOS_S_ArchiveAddOn".to_string())
        }));
        assert!(share(&|m| m.sku_assigned == Some(true)) < 0.15);
        let now = Utc::now();
        for m in &a {
            let deleted = m.when_soft_deleted.unwrap();
            assert!(
                now - deleted >= TimeDelta::days(5)
                    && now - deleted <= TimeDelta::days(8 * 365 + 2)
            );
            assert!(m.when_changed >= deleted && m.when_changed <= now);
        }
        let sizes: Vec<u64> = a.iter().map(|m| m.total_item_size_bytes).collect();
        assert!(sizes.iter().any(|s| *s < 1024 * 1024) && sizes.iter().any(|s| *s > 10 << 30));
        assert!(sizes.iter().all(|s| *s <= 50 << 30 && *s >= 4096));

        let others = synthetic_others(200, 42);
        assert_eq!(others, synthetic_others(200, 42));
        let kinds: HashSet<MailboxKind> = others.iter().map(|m| m.kind).collect();
        assert_eq!(
            kinds,
            HashSet::from([MailboxKind::Active, MailboxKind::SoftDeleted])
        );
        for m in &others {
            assert_eq!(m.kind == MailboxKind::Active, m.when_soft_deleted.is_none());
            // Soft-deleted (there are some, above) means without a hold.
            assert!(m.kind != MailboxKind::SoftDeleted || !m.has_hold(), "{m:?}");
            assert!(!guids.contains(m.exchange_guid.as_str()));
        }
        assert!(synthetic_tenant(0, 1).is_empty());
        let two = synthetic_tenant(2, 1);
        assert_eq!(two[0].user_principal_name, two[1].user_principal_name);
        assert_ne!(two[0].exchange_guid, two[1].exchange_guid);
    }

    #[test]
    fn sizes_and_dates_are_written_as_exchange_writes_them() {
        assert_eq!(byte_size(0), "0 B (0 bytes)");
        assert_eq!(byte_size(1023), "1023 B (1,023 bytes)");
        assert_eq!(byte_size(1024), "1 KB (1,024 bytes)");
        assert_eq!(byte_size(262_144), "256 KB (262,144 bytes)");
        assert_eq!(byte_size(5_976_557), "5.7 MB (5,976,557 bytes)");
        assert_eq!(byte_size(3_471_471_173), "3.233 GB (3,471,471,173 bytes)");
        assert_eq!(byte_size(106_300_440_576), "99 GB (106,300,440,576 bytes)");
        assert_eq!(byte_size(1 << 40), "1 TB (1,099,511,627,776 bytes)");
        let t = DateTime::parse_from_rfc3339("2022-09-21T08:07:47.1234567Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(exchange_date(t), "2022-09-21T08:07:47.1234567+00:00");
        assert_eq!(exchange_utc(t), "2022-09-21T08:07:47.1234567Z");
    }

    #[test]
    fn a_background_server_serves_sync_callers() {
        let x =
            ExchangeServer::start_in_background(ExchangeOptions::default(), synthetic_tenant(4, 1))
                .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let c = client();
        let a = rt.block_on(post(&c, &endpoint(&x), &inactive_listing()));
        assert_eq!(a.status, 200, "{}", a.text);
        assert_eq!(a.guids().len(), 4);
        assert_eq!(x.requests().pages_served, 1);
    }
}
