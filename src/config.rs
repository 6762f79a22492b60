//! The TOML configuration file, parsed straight into validated types.
//!
//! Every value is checked while it is deserialized (tenant, client id, URLs, prices,
//! attribute names), so a bad value is reported by `toml` with the file's line and column
//! and what was expected; unknown keys are rejected. Nothing here does I/O after loading.
//!
//! This file holds the sections, the file's loading and its errors; the value types the
//! sections are made of are in `config/values.rs`, re-exported here.

mod values;
pub mod zone;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use values::{
    AbsolutePath, AttributeName, Bounded, BoundedDuration, Cloud, Command, Domain, EndpointUrl,
    Guid, MAX_NAME_CHARS, Mailbox, Price, Scope, SyncSource, Tenant, TokenStore, When, Zone,
    check_address, check_domain, check_sender,
};
use values::{name_keys, name_map, name_values, opt_name};

/// The validated configuration.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The Microsoft 365 tenant: a GUID or a verified domain.
    pub tenant: Option<Tenant>,
    /// The application (client) id registered in Entra ID.
    pub client_id: Option<Guid>,
    /// Which Microsoft cloud the tenant lives in.
    #[serde(default)]
    pub cloud: Cloud,
    /// Sign-in authority, overriding the cloud's default (`https://login…/{tenant}`).
    pub authority: Option<EndpointUrl>,
    /// A generic OpenID provider's issuer URL, used instead of `authority`.
    pub oidc_authority: Option<EndpointUrl>,
    /// Microsoft Graph base URL, overriding the cloud's default.
    pub graph_url: Option<EndpointUrl>,
    /// Exchange Online base URL, overriding the cloud's default.
    pub exchange_url: Option<EndpointUrl>,
    #[serde(default)]
    pub inventory: InventoryConfig,
    #[serde(default)]
    pub heartbeat: HeartbeatConfig,
    #[serde(default)]
    pub daemon: DaemonConfig,
    #[serde(default)]
    pub database: DatabaseConfig,
    #[serde(default)]
    pub schedule: ScheduleConfig,
    #[serde(default)]
    pub sync: SyncConfig,
    #[serde(default)]
    pub audit: AuditConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub notify: NotifyConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub mail: MailConfig,
}

/// The `[heartbeat]` section: how often the daemon runs a cycle.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
#[serde(default)]
pub struct HeartbeatConfig {
    /// Time between the starts of two cycles: at least 10 s, at most a day.
    pub interval: BoundedDuration<10, 86_400>,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        HeartbeatConfig {
            interval: BoundedDuration(std::time::Duration::from_secs(300)),
        }
    }
}

/// The `[daemon]` section: how the running daemon behaves.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
#[serde(default)]
pub struct DaemonConfig {
    /// How long a stop waits for the step in progress to reach a safe point.
    pub shutdown_grace: BoundedDuration<1, 300>,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            shutdown_grace: BoundedDuration(std::time::Duration::from_secs(10)),
        }
    }
}

/// The default wait of commands (`[database] busy_timeout`): four imports of 50,000
/// mailboxes queued behind each other hold the write lock for tens of seconds, and a
/// command should wait that out rather than fail.
pub const CLI_BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// The `[database]` section: how commands share the database with other processes.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
#[serde(default)]
pub struct DatabaseConfig {
    /// How long a command waits for another process's write (an import of a large
    /// snapshot holds the write lock for seconds) before it gives up.
    pub busy_timeout: BoundedDuration<1, 3_600>,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            busy_timeout: BoundedDuration(CLI_BUSY_TIMEOUT),
        }
    }
}

/// The `[schedule]` section: what every scheduled job's cron expression is read in.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// An IANA time zone name, or `local` (the default) for the system's.
    #[serde(default)]
    pub timezone: Zone,
}

/// The `[sync]` section: refreshing the inactive-mailbox cache.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
#[serde(default)]
pub struct SyncConfig {
    /// When the cache is refreshed (cron), or `never`.
    pub schedule: When,
    /// `exchange` or `export`; when not set, `export` if `export` names a file, else
    /// `exchange` (see [`SyncConfig::source`]).
    pub source: Option<SyncSource>,
    /// A PowerShell export of the tenant's inactive mailboxes, refreshed by a scheduled
    /// task; each sync loads it as a snapshot.
    pub export: Option<AbsolutePath>,
    /// `status` calls the cache stale when its last sync is older than this.
    pub stale_after: BoundedDuration<60, 31_536_000>,
    /// How long reading the export may take before the sync counts as failed.
    pub timeout: BoundedDuration<1, 3_600>,
    /// Mailboxes per page of an Exchange listing (`Prefer: odata.maxpagesize`).
    pub page_size: Bounded<10, 1_000>,
    /// Statistics (size, item count) older than this are fetched again.
    pub statistics_max_age: BoundedDuration<3_600, 31_536_000>,
    /// A snapshot (import or sync) that would remove more than this percent of the
    /// cached mailboxes is refused (100: never).
    pub max_removed_share: Bounded<0, 100>,
    /// Statistics calls per cycle at most, so a large tenant's first sync spreads over
    /// several cycles; 0 never fetches statistics.
    pub statistics_per_cycle: Bounded<0, 1_000_000>,
    /// Exchange calls in flight at once (halved while throttled).
    pub concurrency: Bounded<1, 8>,
    /// Tries per Exchange request before the sync fails (throttling, 5xx, the network).
    pub request_attempts: Bounded<1, 20>,
    /// Time one sync may spend waiting on throttling and retries in all; a longer wait
    /// fails the sync, which is tried again with the step's backoff.
    pub max_wait: BoundedDuration<1, 86_400>,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            schedule: When::parse("0 */6 * * *").expect("the default schedule parses"),
            source: None,
            export: None,
            stale_after: BoundedDuration(std::time::Duration::from_secs(86_400)),
            timeout: BoundedDuration(std::time::Duration::from_secs(120)),
            page_size: Bounded(1_000),
            statistics_max_age: BoundedDuration(std::time::Duration::from_secs(7 * 86_400)),
            statistics_per_cycle: Bounded(500),
            max_removed_share: Bounded(20),
            concurrency: Bounded(3),
            request_attempts: Bounded(6),
            max_wait: BoundedDuration(std::time::Duration::from_secs(900)),
        }
    }
}

impl SyncConfig {
    /// The source in effect: as configured, else `export` when an export file is named
    /// (configurations from before the live sync), else `exchange`.
    pub fn source(&self) -> SyncSource {
        match (self.source, &self.export) {
            (Some(s), _) => s,
            (None, Some(_)) => SyncSource::Export,
            (None, None) => SyncSource::Exchange,
        }
    }
}

/// The `[audit]` section: how long audit rows are kept.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
#[serde(default)]
pub struct AuditConfig {
    /// Rows older than this are pruned by the scheduled job (at least a day).
    pub retention: BoundedDuration<86_400, 3_155_760_000>,
    /// When the pruning job runs (cron), or `never` to keep every row.
    pub prune_schedule: When,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            retention: BoundedDuration(std::time::Duration::from_secs(365 * 86_400)),
            prune_schedule: When::parse("30 3 * * *").expect("the default schedule parses"),
        }
    }
}

/// The `[auth]` section: Microsoft sign-in and where its tokens live.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
#[serde(default)]
pub struct AuthConfig {
    /// `auto`, `keychain` or `file`.
    pub token_store: TokenStore,
    /// A file holding the 32-byte key of the encrypted token file (raw, hex or base64).
    pub key_file: Option<AbsolutePath>,
    /// How long a keychain call may take before it counts as unavailable.
    pub keychain_timeout: BoundedDuration<1, 120>,
    /// Scopes asked for Microsoft Graph; the default follows `cloud`.
    pub graph_scopes: Option<Vec<Scope>>,
    /// Scopes asked for Exchange Online; the default follows `cloud`.
    pub exchange_scopes: Option<Vec<Scope>>,
    /// An access token with less than this left is refreshed before use.
    pub refresh_buffer: BoundedDuration<0, 3_600>,
    /// The daemon refreshes at least this often, so a refresh token never goes unused
    /// long enough to expire.
    pub refresh_at_least: BoundedDuration<300, 7_776_000>,
    /// Longest a device-code sign-in waits for the person (also capped by the code's own
    /// lifetime).
    pub device_code_timeout: BoundedDuration<10, 3_600>,
    /// How long a process waits for another one's token refresh to finish.
    pub lock_timeout: BoundedDuration<1, 600>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            token_store: TokenStore::Auto,
            key_file: None,
            keychain_timeout: BoundedDuration(std::time::Duration::from_secs(5)),
            graph_scopes: None,
            exchange_scopes: None,
            refresh_buffer: BoundedDuration(std::time::Duration::from_secs(300)),
            refresh_at_least: BoundedDuration(std::time::Duration::from_secs(86_400)),
            device_code_timeout: BoundedDuration(std::time::Duration::from_secs(900)),
            lock_timeout: BoundedDuration(std::time::Duration::from_secs(30)),
        }
    }
}

/// The `[notify]` section: who is told when a person must sign in.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
#[serde(default)]
pub struct NotifyConfig {
    /// A program and its arguments, run with the event in its environment.
    pub command: Option<Command>,
    /// A desktop notification (osascript on macOS, notify-send on Linux).
    pub desktop: bool,
    /// An https URL (or loopback http) that receives each event as a JSON POST.
    pub webhook: Option<EndpointUrl>,
    /// How long a hook may take before it is abandoned.
    pub timeout: BoundedDuration<1, 300>,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            command: None,
            desktop: false,
            webhook: None,
            timeout: BoundedDuration(std::time::Duration::from_secs(10)),
        }
    }
}

/// The `[http]` section: the one HTTP client every Microsoft call goes through.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
#[serde(default)]
pub struct HttpConfig {
    /// Longest wait for a connection (TCP and TLS).
    pub connect_timeout: BoundedDuration<1, 300>,
    /// Longest wait for a whole request and its answer.
    pub timeout: BoundedDuration<1, 600>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            connect_timeout: BoundedDuration(std::time::Duration::from_secs(10)),
            timeout: BoundedDuration(std::time::Duration::from_secs(30)),
        }
    }
}

/// The `[mail]` section: the outgoing queue's pace and patience.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
#[serde(default)]
pub struct MailConfig {
    /// The mailbox mails are sent from when they name none (default: the signed-in
    /// account).
    pub from: Option<Mailbox>,
    /// Tokens the send bucket holds: the most mails one cycle sends.
    pub capacity: Bounded<1, 10_000>,
    /// Time to earn one token.
    pub refill_every: BoundedDuration<1, 86_400>,
    /// Mails sent per calendar day (in `[schedule] timezone`) at most.
    pub daily_cap: Bounded<1, 1_000_000>,
    /// Attempts per mail within one cycle before it returns to the queue.
    pub attempts_per_cycle: Bounded<1, 10>,
    /// Attempts in all before a mail is marked failed (`queue retry` revives it).
    pub max_attempts_total: Bounded<1, 1_000>,
    /// A Retry-After longer than this is not slept through: the mail returns to the
    /// queue and the cycle stops sending.
    pub max_retry_wait: BoundedDuration<1, 3_600>,
    /// Requests in flight at once per mailbox (Outlook allows 4).
    pub max_in_flight: Bounded<1, 4>,
    /// A send whose answer was lost (a 504, a timeout, a crash) must show in Sent Items
    /// within this; until then the mail waits, and then it is failed for a person to
    /// check, never sent blind a second time.
    pub confirm_within: BoundedDuration<1, 86_400>,
}

impl Default for MailConfig {
    fn default() -> Self {
        MailConfig {
            from: None,
            capacity: Bounded(20),
            refill_every: BoundedDuration(std::time::Duration::from_secs(5)),
            daily_cap: Bounded(100),
            attempts_per_cycle: Bounded(3),
            max_attempts_total: Bounded(10),
            max_retry_wait: BoundedDuration(std::time::Duration::from_secs(60)),
            max_in_flight: Bounded(4),
            confirm_within: BoundedDuration(std::time::Duration::from_secs(600)),
        }
    }
}

/// The `[inventory]` section: how mailboxes are priced and attributed.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
#[serde(default)]
pub struct InventoryConfig {
    /// Mailbox attribute holding the operating company (for example `CustomAttribute1`).
    pub company_attribute: Option<AttributeName>,
    /// Mailbox attribute holding the department.
    pub department_attribute: Option<AttributeName>,
    /// Mailbox attribute holding the license type.
    pub license_attribute: AttributeName,
    /// License type assumed when a mailbox carries none.
    #[serde(default, deserialize_with = "opt_name")]
    pub default_license: Option<String>,
    /// Licence by Exchange plan, for mailboxes whose licence attribute is empty: keys
    /// are a `MailboxPlan` name (without its `-GUID` suffix), a `PersistedCapabilities`
    /// entry, or `SKUAssigned` (any licence assigned); values are licence names as in
    /// `prices`. Replaces the default table when given.
    #[serde(deserialize_with = "name_map")]
    pub license_map: BTreeMap<String, String>,
    /// Monthly cost per license type.
    #[serde(default, deserialize_with = "name_keys")]
    pub prices: BTreeMap<String, Price>,
    /// Operating company by e-mail domain, used when the company attribute is empty.
    #[serde(default, deserialize_with = "name_values")]
    pub company_domains: BTreeMap<Domain, String>,
}

impl Default for InventoryConfig {
    fn default() -> Self {
        InventoryConfig {
            company_attribute: None,
            department_attribute: None,
            license_attribute: AttributeName("LicenseType".into()),
            default_license: None,
            // Exchange's plans and capabilities by the suite that usually carries them.
            // Exchange cannot tell E3 from E5 (both carry Exchange Online Plan 2): a
            // tenant that prices them apart sets `license_attribute` or its own map.
            license_map: [
                ("ExchangeOnlineEnterprise", "E3"),
                ("BPOS_S_Enterprise", "E3"),
                ("ExchangeOnline", "E1"),
                ("BPOS_S_Standard", "E1"),
                ("ExchangeOnlineDeskless", "F3"),
                ("BPOS_S_Deskless", "F3"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            prices: BTreeMap::new(),
            company_domains: BTreeMap::new(),
        }
    }
}

/// The licence attribute of PowerShell exports that Get-Mailbox does not have: the live
/// sync never asks Exchange for it.
pub const EXPORT_ONLY_LICENSE_ATTRIBUTE: &str = "LicenseType";

/// Errors loading the configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {path} does not exist (create one with `imm-daemon config init`)")]
    NotFound { path: PathBuf },
    #[error("cannot read configuration file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// toml's own report is not used: it prints the whole line at fault and a caret
    /// under every character of the value, so a 1.6 MB value made 4.8 MB of error.
    #[error("{}{}", self.brief(), excerpt.as_deref().map(|e| format!("\n{e}")).unwrap_or_default())]
    Invalid {
        path: PathBuf,
        /// Line and column (1-based) of the error, when known.
        at: Option<(usize, usize)>,
        /// The dotted key at fault (`mail.from`), when toml knows it.
        key: Option<String>,
        /// What is wrong, its quoted values shortened ([`crate::text::shorten_quoted`]).
        message: String,
        /// The line at fault, at most 80 characters of it around the place,
        /// with carets under the value.
        excerpt: Option<String>,
    },
    /// Another local user could change the file, the key file or a folder above them.
    #[cfg(unix)]
    #[error(transparent)]
    Unsafe(Box<crate::paths::strict::StrictError>),
}

/// How much of the line at fault an error shows.
const EXCERPT_CHARS: usize = 80;

impl ConfigError {
    /// The error on one line, without the excerpt of the file: for logs and audit rows.
    pub fn brief(&self) -> String {
        match self {
            ConfigError::Invalid {
                path,
                at,
                key,
                message,
                ..
            } => {
                let mut place = String::new();
                if let Some((line, col)) = at {
                    place.push_str(&format!(", line {line} column {col}"));
                }
                if let Some(k) = key {
                    place.push_str(&format!(", in {}", crate::text::quote(k)));
                }
                format!(
                    "invalid configuration file {}{place}: {message}",
                    path.display()
                )
            }
            ConfigError::Read { path, source } => {
                format!(
                    "cannot read configuration file {}: {source}",
                    path.display()
                )
            }
            other => other.to_string(),
        }
    }
}

/// The dotted key toml names in its report when it has no input to quote.
fn toml_key(e: &toml::de::Error) -> Option<String> {
    let mut bare = e.clone();
    bare.set_input(None);
    let report = bare.to_string();
    let key = report
        .lines()
        .last()?
        .strip_prefix("in `")?
        .strip_suffix('`')?;
    Some(key.to_string())
}

/// The line holding `span`, at most [`EXCERPT_CHARS`] characters of it, with carets
/// under the span's part. Far along a long line, the line's start (its key) is kept before
/// a `…` and the place itself.
fn excerpt(text: &str, span: std::ops::Range<usize>) -> String {
    const HEAD: usize = EXCERPT_CHARS / 2;
    const BEFORE: usize = EXCERPT_CHARS / 4;
    let start = span.start.min(text.len());
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let line = text[line_start..line_end].trim_end_matches('\r');
    let number = text[..line_start].matches('\n').count() + 1;
    let col = text[line_start..start].chars().count();
    let span_chars = text[start..span.end.clamp(start, line_end)]
        .chars()
        .count()
        .max(1);
    let (mut shown, from) = if col < EXCERPT_CHARS - BEFORE {
        (String::new(), 0)
    } else {
        let head: String = line.chars().take(HEAD).collect();
        (format!("{head}…"), col - BEFORE)
    };
    let width = EXCERPT_CHARS - shown.chars().count();
    let pad = shown.chars().count() + col - from;
    shown.extend(line.chars().skip(from).take(width));
    if line.chars().count() > from + width {
        shown.push('…');
    }
    let carets = span_chars.min(width - (col - from)).max(1);
    let gutter = " ".repeat(number.to_string().len());
    format!(
        "{gutter} |\n{number} | {shown}\n{gutter} | {}{}",
        " ".repeat(pad),
        "^".repeat(carets)
    )
}

impl Config {
    /// Parses configuration text; `path` only labels errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let at = e.span().map(|span| {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let col = before.chars().count()
                    - before
                        .rfind('\n')
                        .map_or(0, |i| before[..=i].chars().count())
                    + 1;
                (line, col)
            });
            ConfigError::Invalid {
                path: path.to_path_buf(),
                at,
                key: toml_key(&e),
                message: crate::text::shorten_quoted(e.message().trim()),
                excerpt: e.span().map(|span| excerpt(text, span)),
            }
        })
    }

    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ConfigError::NotFound {
                path: path.to_path_buf(),
            }),
            Err(source) => Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Like [`Config::load`], but a missing file yields the defaults.
    pub fn load_or_default(path: &Path) -> Result<Config, ConfigError> {
        match Self::load(path) {
            Err(ConfigError::NotFound { .. }) => Ok(Config::default()),
            other => other,
        }
    }

    /// The sign-in authority in effect, if a tenant or an override is known.
    pub fn authority_url(&self) -> Option<String> {
        if let Some(a) = &self.authority {
            return Some(a.0.to_string().trim_end_matches('/').to_string());
        }
        let tenant = self.tenant.as_ref()?;
        Some(format!("{}/{}", self.cloud.login_host(), tenant.0))
    }

    /// Microsoft Graph's base URL in effect.
    pub fn graph_url(&self) -> String {
        match &self.graph_url {
            Some(u) => u.0.to_string().trim_end_matches('/').to_string(),
            None => self.cloud.graph_host().to_string(),
        }
    }

    /// Exchange Online's base URL in effect.
    pub fn exchange_url(&self) -> String {
        match &self.exchange_url {
            Some(u) => u.0.to_string().trim_end_matches('/').to_string(),
            None => self.cloud.exchange_host().to_string(),
        }
    }

    /// Where the OpenID Connect discovery document is read: `{oidc_authority}/.well-known/
    /// openid-configuration` for a generic provider, else the Microsoft v2.0 document under
    /// the authority. `None` when neither a tenant nor an authority is known.
    pub fn discovery_url(&self) -> Option<String> {
        if let Some(a) = &self.oidc_authority {
            let base = a.0.as_str().trim_end_matches('/');
            return Some(format!("{base}/.well-known/openid-configuration"));
        }
        Some(format!(
            "{}/v2.0/.well-known/openid-configuration",
            self.authority_url()?
        ))
    }

    /// The scopes asked for Microsoft Graph.
    pub fn graph_scopes(&self) -> Vec<String> {
        match &self.auth.graph_scopes {
            Some(s) => s.iter().map(|s| s.0.clone()).collect(),
            None => ["Mail.Send", "Mail.ReadWrite", "User.Read"]
                .iter()
                .map(|p| format!("{}/{p}", self.cloud.graph_host()))
                .collect(),
        }
    }

    /// The scopes asked for Exchange Online.
    pub fn exchange_scopes(&self) -> Vec<String> {
        match &self.auth.exchange_scopes {
            Some(s) => s.iter().map(|s| s.0.clone()).collect(),
            None => vec![format!("{}/.default", self.cloud.exchange_host())],
        }
    }

    /// Why the mailbox sync cannot run with this configuration, if it cannot.
    pub fn sync_unavailable(&self) -> Option<String> {
        match self.sync.source() {
            SyncSource::Export if self.sync.export.is_none() => Some(
                "[sync] source = \"export\" needs [sync] export, the export file's path".into(),
            ),
            SyncSource::Exchange if self.client_id.is_none() || self.discovery_url().is_none() => {
                Some(
                    "the sync reads Exchange Online with the daemon's sign-in, which is not configured: set `tenant` and `client_id` (or [sync] export for a PowerShell export)"
                        .into(),
                )
            }
            _ => None,
        }
    }

    /// Notes about settings that are valid but incomplete for later capabilities.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.tenant.is_none() && self.authority.is_none() && self.oidc_authority.is_none() {
            w.push("`tenant` is not set: Microsoft sign-in will not be possible".to_string());
        }
        if self.client_id.is_none() {
            w.push("`client_id` is not set: Microsoft sign-in will not be possible".to_string());
        }
        if self.authority.is_some() && self.oidc_authority.is_some() {
            w.push("both `authority` and `oidc_authority` are set: `oidc_authority` wins".into());
        }
        if self.sync.source == Some(SyncSource::Exchange) && self.sync.export.is_some() {
            w.push("[sync] source is \"exchange\": [sync] export is not read".into());
        }
        w
    }
}

/// The commented sample written by `imm-daemon config init`.
pub const SAMPLE: &str = r#"# imm-daemon configuration.
# Unknown keys are rejected, so a typo is reported instead of silently ignored.

# The Microsoft 365 tenant: its GUID or a verified domain.
# tenant = "contoso.onmicrosoft.com"

# The application (client) id of the app registration used for sign-in.
# client_id = "00000000-0000-0000-0000-000000000000"

# Which Microsoft cloud: "global", "usgov" or "china".
cloud = "global"

# Per-endpoint overrides; the defaults follow `cloud`. https only (http is allowed for
# loopback addresses, for testing against emulated endpoints).
# authority = "https://login.microsoftonline.com/contoso.onmicrosoft.com"
# oidc_authority = "https://id.example.com"   # a generic OpenID provider instead
# graph_url = "https://graph.microsoft.com"
# exchange_url = "https://outlook.office365.com"

[inventory]
# Where a mailbox's operating company and department come from: a mailbox attribute
# (CustomAttribute1..15 or any field present in your export).
# company_attribute = "CustomAttribute1"
# department_attribute = "CustomAttribute2"

# The attribute holding the license type, and the license assumed when it is empty.
# Get-Mailbox has no LicenseType property: with the live sync, name an attribute your
# tenant fills (such as "CustomAttribute7"), or leave LicenseType and the licence is
# taken from Exchange's plan through license_map below.
license_attribute = "LicenseType"
# default_license = "E3"

# Licence by Exchange plan, for mailboxes whose licence attribute is empty: a
# MailboxPlan name (without its -GUID suffix), a PersistedCapabilities entry, or
# "SKUAssigned" (any licence assigned). Exchange cannot tell E3 from E5. Giving the
# table replaces this default.
[inventory.license_map]
ExchangeOnlineEnterprise = "E3"
BPOS_S_Enterprise = "E3"
ExchangeOnline = "E1"
BPOS_S_Standard = "E1"
ExchangeOnlineDeskless = "F3"
BPOS_S_Deskless = "F3"

# Monthly cost per license type; a license missing here is priced 0 and listed as
# unpriced by `imm-daemon mailboxes stats`.
[inventory.prices]
# E3 = 36.00
# E5 = 57.00

# Operating company by e-mail domain, used when the company attribute is empty.
[inventory.company_domains]
# "contoso.com" = "Contoso Ltd"

[heartbeat]
# Time between the daemon's cycles (at least 10s). A cycle missed while the machine
# slept is skipped, not made up.
interval = "5m"

[daemon]
# How long a stop (SIGTERM, SIGINT, `imm-daemon stop`) waits for the step in progress to
# reach a safe point before the daemon exits anyway.
shutdown_grace = "10s"

[database]
# How long a command waits for another process's write to the database (a large import
# holds it for seconds) before it fails. The daemon waits at most 10s and tries again in
# its next cycle.
busy_timeout = "2m"

[schedule]
# The time zone the cron expressions below are read in: an IANA name such as
# "Europe/Berlin" (read from the system's time zone database), or "local" for the
# system's zone.
timezone = "local"

[sync]
# When the inactive-mailbox cache is refreshed: a cron expression (minute hour day month
# weekday, optionally with seconds first), or "never". A daemon that was down at a
# scheduled time syncs once when it starts.
schedule = "0 */6 * * *"
# Where the inactive mailboxes come from: "exchange" (Exchange Online's admin endpoint,
# with the daemon's sign-in) or "export" (a PowerShell export, below). When not set:
# "export" if `export` names a file, else "exchange".
# source = "exchange"
# A PowerShell export of the inactive mailboxes that a scheduled task keeps current
# (Get-Mailbox -InactiveMailboxOnly ... | ConvertTo-Json, or Export-Csv). Each sync loads
# it as a snapshot: mailboxes no longer in it leave the cache.
# export = "/srv/exports/inactive-mailboxes.json"
# `status` calls the cache stale when its last sync is older than this, and needs
# attention when the sync has failed for longer.
stale_after = "1d"
# How long reading the export may take (a hung network share) before the sync fails.
timeout = "2m"
# The live sync: mailboxes per page of a listing (at most 1000).
page_size = 1000
# Size and item count take one call per mailbox: fetched for new and changed mailboxes
# and when older than statistics_max_age, at most statistics_per_cycle each cycle (so a
# large tenant's first sync spreads over several cycles; 0 turns statistics off).
statistics_max_age = "7d"
statistics_per_cycle = 500
# Exchange calls in flight at once (at most 8), halved while Exchange throttles.
concurrency = 3
# Tries per request when Exchange throttles or fails for a moment, and the most time one
# sync waits in all before it gives up until the next cycle.
request_attempts = 6
max_wait = "15m"
# A snapshot (a sync, or `mailboxes import`) that would remove more than this percent of
# the cached mailboxes (and more than 5) is refused as probably incomplete, and the
# daemon asks for a person; `--allow-removals` lets one through, 100 turns the guard off.
max_removed_share = 20

[audit]
# Audit rows older than this are pruned; the chain stays verifiable from its new start.
retention = "365d"
# When pruning runs (cron), or "never" to keep every row.
prune_schedule = "30 3 * * *"

[auth]
# Where tokens live: "keychain" (macOS Keychain, Linux Secret Service), "file" (an
# AES-256-GCM encrypted file) or "auto" (the keychain when it answers, else the file).
token_store = "auto"
# The encrypted file's key, first found: $CREDENTIALS_DIRECTORY/imm-token-key (systemd's
# LoadCredentialEncrypted=), this file, a passphrase in IMM_TOKEN_PASSPHRASE, else a
# random key generated beside this configuration file.
# key_file = "/etc/imm-daemon/token.key"
# How long a keychain call may take (a locked keyring can wait forever for a prompt).
keychain_timeout = "5s"
# Scopes asked for each resource; the defaults follow `cloud`.
# graph_scopes = ["https://graph.microsoft.com/Mail.Send", "https://graph.microsoft.com/Mail.ReadWrite", "https://graph.microsoft.com/User.Read"]
# exchange_scopes = ["https://outlook.office365.com/.default"]
# An access token with less than this left is refreshed before use.
refresh_buffer = "5m"
# Refresh at least this often, so the sign-in never lapses from disuse (90 days).
refresh_at_least = "24h"
# Longest a device-code sign-in waits for the person.
device_code_timeout = "15m"
# How long the CLI and the daemon wait for each other's token refresh.
lock_timeout = "30s"

[notify]
# Told when a person must sign in (with the device code), after a sign-in, and when a
# refresh fails. Any of:
# command = ["/usr/local/bin/page-admin", "--urgent"]   # event in IMM_* variables
# desktop = true
# webhook = "https://hooks.example.com/imm-daemon"     # JSON POST
timeout = "10s"

[http]
# Every call to Microsoft goes through one client; HTTPS_PROXY, NO_PROXY and
# SSL_CERT_FILE are honoured.
connect_timeout = "10s"
timeout = "30s"

[mail]
# Outgoing mail (`imm-daemon send`) goes out through Microsoft Graph, from this mailbox
# when a mail names none (default: the signed-in account; sending as another mailbox
# needs Send As or a shared mailbox's permissions).
# from = "it-ops@contoso.com"
# The send bucket: it holds `capacity` tokens, earns one every `refill_every`, and each
# attempt takes one, so one cycle sends at most `capacity` mails.
capacity = 20
refill_every = "5s"
# Mails per day at most; the count starts again at midnight in [schedule] timezone.
daily_cap = 100
# Throttled or failed sends are tried this often per cycle (waiting Retry-After, else
# 1 s, 2 s, 4 s) before the mail returns to the queue ...
attempts_per_cycle = 3
# ... and this often in all before it is marked failed (`imm-daemon queue retry ID`).
max_attempts_total = 10
# A Retry-After longer than this is not waited out: the mail is rescheduled and the
# cycle stops sending.
max_retry_wait = "60s"
# Requests in flight at once per mailbox (Outlook's limit is 4).
max_in_flight = 4
# A send whose answer was lost (a 504, a timeout, a crash) must show in the sender's
# Sent Items within this; until then the mail waits, then it is marked failed for a
# person to check. It is never sent blind a second time.
confirm_within = "10m"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, String> {
        Config::parse(s, Path::new("test.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn sample_parses() {
        let c = parse(SAMPLE).unwrap();
        assert_eq!(c.cloud, Cloud::Global);
        assert_eq!(c.inventory.license_attribute.as_str(), "LicenseType");
        assert_eq!(c.heartbeat, HeartbeatConfig::default());
        assert_eq!(c.daemon, DaemonConfig::default());
        assert_eq!(c.sync, SyncConfig::default());
        assert_eq!(c.inventory, InventoryConfig::default());
    }

    #[test]
    fn the_sync_source_and_its_keys_are_checked_where_written() {
        // No source: an export file keeps the configurations from before the live sync
        // working; without one the sync reads Exchange.
        assert_eq!(parse("").unwrap().sync.source(), SyncSource::Exchange);
        let c = parse("[sync]\nexport = \"/srv/x.json\"").unwrap();
        assert_eq!(c.sync.source(), SyncSource::Export);
        let c = parse("[sync]\nsource = \"exchange\"\nexport = \"/srv/x.json\"").unwrap();
        assert_eq!(c.sync.source(), SyncSource::Exchange);
        assert!(c.warnings().iter().any(|w| w.contains("not read")));
        let c = parse("[sync]\nsource = \"export\"").unwrap();
        assert!(c.sync_unavailable().unwrap().contains("[sync] export"));
        let c = parse("").unwrap();
        assert!(c.sync_unavailable().unwrap().contains("client_id"));
        let c = parse(
            "tenant = \"contoso.onmicrosoft.com\"\nclient_id = \"00000000-0000-0000-0000-000000000001\"",
        )
        .unwrap();
        assert_eq!(c.sync_unavailable(), None);
        let c = parse(
            "[sync]\npage_size = 250\nstatistics_max_age = \"3d\"\nstatistics_per_cycle = 0\n\
             concurrency = 8\nrequest_attempts = 3\nmax_wait = \"2m\"\n\
             [inventory]\nlicense_attribute = \"CustomAttribute7\"\n\
             [inventory.license_map]\nExchangeOnlineEnterprise = \"E5\"\n",
        )
        .unwrap();
        assert_eq!(c.sync.page_size.get(), 250);
        assert_eq!(c.sync.statistics_per_cycle.get(), 0);
        assert_eq!(c.sync.concurrency.get(), 8);
        assert_eq!(
            c.inventory.license_map.len(),
            1,
            "a given table replaces the default"
        );
        assert_eq!(parse(&toml::to_string(&c).unwrap()).unwrap(), c);
        for (bad, why) in [
            ("[sync]\nsource = \"powershell\"", "unknown variant"),
            ("[sync]\nconcurrency = 9", "between 1 and 8"),
            ("[sync]\nconcurrency = 0", "between 1 and 8"),
            ("[sync]\npage_size = 5000", "between 10 and 1000"),
            ("[sync]\nstatistics_max_age = \"1m\"", "out of range"),
            ("[sync]\nrequest_attempts = 0", "between 1 and 20"),
            ("[sync]\nmax_wait = \"soon\"", "not a duration"),
            ("[sync]\nstatistics_per_cycles = 5", "unknown field"),
            ("[inventory.license_map]\nE3 = 36", "invalid type"),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn schedules_time_zones_and_the_export_path_are_checked_where_written() {
        let c = parse(
            "[schedule]\ntimezone = \"Europe/Berlin\"\n[sync]\nschedule = \"never\"\n\
             export = \"/srv/inactive.json\"\nstale_after = \"12h\"\n\
             [audit]\nretention = \"30d\"\nprune_schedule = \"@weekly\"\n",
        )
        .unwrap();
        assert_eq!(c.schedule.timezone.to_string(), "Europe/Berlin");
        assert_eq!(c.sync.schedule, When::Never);
        assert_eq!(
            c.sync.export.as_ref().map(|p| p.as_path()),
            Some(Path::new("/srv/inactive.json"))
        );
        assert_eq!(c.audit.prune_schedule.as_str(), "@weekly");
        // Printed back, the effective configuration parses to the same thing.
        assert_eq!(parse(&toml::to_string(&c).unwrap()).unwrap(), c);
        let defaults = parse("").unwrap();
        assert_eq!(defaults.sync.schedule.as_str(), "0 */6 * * *");
        assert_eq!(defaults.audit.prune_schedule.as_str(), "30 3 * * *");
        assert_eq!(defaults.schedule.timezone, Zone::Local);

        let e = parse("[sync]\nschedule = \"every hour\"").unwrap_err();
        assert!(
            e.contains("line 2") && e.contains("`every hour` is not a cron expression"),
            "{e}"
        );
        let e = parse("[schedule]\ntimezone = \"Mars/Olympus\"").unwrap_err();
        assert!(e.contains("line 2") && e.contains("not a time zone"), "{e}");
        let e = parse("[sync]\nexport = \"exports/inactive.json\"").unwrap_err();
        assert!(e.contains("not an absolute path"), "{e}");
        let e = parse("[audit]\nretention = \"1h\"").unwrap_err();
        assert!(e.contains("between 1day and"), "{e}");
    }

    #[test]
    fn the_mail_section_is_checked_where_written() {
        let c = parse(
            "[mail]\nfrom = \"IT-Ops@Contoso.com\"\ncapacity = 50\nrefill_every = \"2s\"\n\
             daily_cap = 5000\nmax_retry_wait = \"2m\"\nmax_in_flight = 2\n",
        )
        .unwrap();
        assert_eq!(
            c.mail.from.as_ref().map(Mailbox::as_str),
            Some("IT-Ops@contoso.com"),
            "the domain is lowercased"
        );
        assert_eq!((c.mail.capacity.get(), c.mail.daily_cap.get()), (50, 5000));
        assert_eq!(c.mail.refill_every.get().as_secs(), 2);
        assert_eq!(c.mail.max_in_flight.get(), 2);
        assert_eq!(parse(&toml::to_string(&c).unwrap()).unwrap(), c);
        let d = parse("").unwrap().mail;
        assert_eq!(d, MailConfig::default());
        assert_eq!(
            (
                d.capacity.get(),
                d.daily_cap.get(),
                d.attempts_per_cycle.get(),
                d.max_attempts_total.get()
            ),
            (20, 100, 3, 10)
        );
        let e = parse("[mail]\ncapacity = 0").unwrap_err();
        assert!(
            e.contains("line 2") && e.contains("between 1 and 10000"),
            "{e}"
        );
        let e = parse("[mail]\nmax_in_flight = 8").unwrap_err();
        assert!(e.contains("between 1 and 4"), "{e}");
        let e = parse("[mail]\ndaily_cap = -1").unwrap_err();
        assert!(e.contains("between 1 and 1000000"), "{e}");
        let e = parse("[mail]\nfrom = \"it ops\"").unwrap_err();
        assert!(e.contains("`it ops` is not a sender"), "{e}");
        let e = parse("[mail]\nrefill = \"5s\"").unwrap_err();
        assert!(e.contains("refill"), "{e}");
    }

    #[test]
    fn sign_in_notify_and_http_sections_are_checked_where_written() {
        let c = parse(
            "tenant = \"contoso.onmicrosoft.com\"\n[auth]\ntoken_store = \"file\"\n\
             refresh_buffer = \"2m\"\nexchange_scopes = [\"https://outlook.office365.com/.default\"]\n\
             [notify]\ncommand = [\"/usr/local/bin/page\", \"--urgent\"]\nwebhook = \"https://hooks.example.com/x\"\n\
             [http]\ntimeout = \"45s\"\n",
        )
        .unwrap();
        assert_eq!(c.auth.token_store, TokenStore::File);
        assert_eq!(c.auth.refresh_buffer.get().as_secs(), 120);
        let cmd = c.notify.command.as_ref().unwrap();
        assert_eq!(
            (cmd.program(), cmd.args()),
            ("/usr/local/bin/page", &["--urgent".to_string()][..])
        );
        assert_eq!(c.http.timeout.get().as_secs(), 45);
        assert_eq!(
            c.discovery_url().unwrap(),
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/v2.0/.well-known/openid-configuration"
        );
        assert_eq!(c.graph_scopes()[0], "https://graph.microsoft.com/Mail.Send");
        assert_eq!(parse(&toml::to_string(&c).unwrap()).unwrap(), c);
        let usgov =
            parse("cloud = \"usgov\"\noidc_authority = \"https://id.example.com/realm/\"").unwrap();
        assert_eq!(
            usgov.exchange_scopes(),
            vec!["https://outlook.office365.us/.default"]
        );
        assert_eq!(
            usgov.discovery_url().unwrap(),
            "https://id.example.com/realm/.well-known/openid-configuration"
        );
        for (text, want) in [
            ("[auth]\ntoken_store = \"vault\"", "unknown variant `vault`"),
            (
                "[auth]\ngraph_scopes = [\"Mail Send\"]",
                "is not an OAuth scope",
            ),
            ("[notify]\ncommand = []", "found an empty list"),
            (
                "[notify]\nwebhook = \"http://hooks.example.com/x\"",
                "only https is allowed",
            ),
            ("[auth]\nkey_file = \"token.key\"", "not an absolute path"),
            ("[auth]\nrefresh_at_least = \"1m\"", "between 5m and"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains("line 2") && e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn names_stored_with_every_mailbox_are_bounded() {
        let name = |n: usize| "N".repeat(n);
        for text in [
            format!("[inventory]\ndefault_license = \"{}\"", name(256)),
            format!("[inventory.license_map]\n{} = \"E3\"", name(256)),
            format!("[inventory.prices]\n{} = 1", name(256)),
        ] {
            assert!(parse(&text).is_ok(), "{text}");
        }
        for text in [
            format!("[inventory]\ndefault_license = \"{}\"", name(257)),
            format!("[inventory.license_map]\nE3 = \"{}\"", name(257)),
            format!("[inventory.license_map]\n{} = \"E3\"", name(257)),
            format!("[inventory.prices]\n{} = 1", name(257)),
            format!(
                "[inventory.company_domains]\n\"contoso.com\" = \"{}\"",
                name(257)
            ),
        ] {
            let e = parse(&text).unwrap_err();
            assert!(e.contains("257 characters long"), "{e}");
            assert!(e.len() < 1000, "{e}");
        }
    }

    #[test]
    fn the_brief_form_is_one_line_naming_the_place() {
        let text = "tenant = \"contoso.com\"\n[heartbeat]\ninterval = \"soon-ish\"\n";
        let e = Config::parse(text, Path::new("c.toml")).unwrap_err();
        let full = e.to_string();
        assert!(full.contains("soon-ish"), "{full}");
        assert_eq!(std::error::Error::source(&e).map(|s| s.to_string()), None);
        let brief = e.brief();
        assert!(
            brief.starts_with(
                "invalid configuration file c.toml, line 3 column 12, in `heartbeat.interval`: "
            ),
            "{brief}"
        );
        assert!(!brief.contains('\n'), "{brief}");
    }

    #[test]
    fn durations_are_text_or_seconds_and_bounded() {
        use std::time::Duration;
        let c = parse("[heartbeat]\ninterval = \"1h 30m\"\n[daemon]\nshutdown_grace = 30").unwrap();
        assert_eq!(c.heartbeat.interval.get(), Duration::from_secs(5400));
        assert_eq!(c.daemon.shutdown_grace.get(), Duration::from_secs(30));
        assert_eq!(
            parse("").unwrap().heartbeat.interval.get(),
            Duration::from_secs(300)
        );
        let e = parse("[heartbeat]\ninterval = \"5s\"").unwrap_err();
        assert!(
            e.contains("line 2") && e.contains("between 10s and 1day"),
            "{e}"
        );
        let e = parse("[heartbeat]\ninterval = \"soon\"").unwrap_err();
        assert!(e.contains("`soon` is not a duration"), "{e}");
        let e = parse("[heartbeat]\ninterval = true").unwrap_err();
        assert!(e.contains("expected a duration"), "{e}");
        let e = parse("[daemon]\nshutdown_grace = \"10m\"").unwrap_err();
        assert!(e.contains("between 1s and 5m"), "{e}");
        let e = parse("[heartbeat]\nintervall = \"5m\"").unwrap_err();
        assert!(e.contains("unknown field `intervall`"), "{e}");
        // The effective configuration prints durations as they can be written back.
        let text = toml::to_string(&c).unwrap();
        assert!(text.contains("interval = \"1h 30m\""), "{text}");
        assert_eq!(parse(&text).unwrap(), c);
    }

    #[test]
    fn full_config() {
        let c = parse(
            r#"
tenant = "Contoso.onmicrosoft.com"
client_id = "0D2A1F5E-1234-4ABC-9DEF-0123456789AB"
cloud = "usgov"
graph_url = "http://127.0.0.1:8080/"
[inventory]
company_attribute = "CustomAttribute1"
prices = { E3 = 36.0, "Exchange Online (Plan 2)" = 8 }
company_domains = { "Fabrikam.com" = "Fabrikam" }
"#,
        )
        .unwrap();
        assert_eq!(
            c.tenant.as_ref().unwrap().as_str(),
            "contoso.onmicrosoft.com"
        );
        assert_eq!(
            c.client_id.as_ref().unwrap().as_str(),
            "0d2a1f5e-1234-4abc-9def-0123456789ab"
        );
        assert_eq!(c.cloud, Cloud::Usgov);
        assert_eq!(c.exchange_url(), "https://outlook.office365.us");
        assert_eq!(c.inventory.prices["E3"].value(), 36.0);
        assert!(
            c.inventory
                .company_domains
                .keys()
                .any(|d| d.as_str() == "fabrikam.com")
        );
    }

    #[test]
    fn authority_follows_cloud_and_tenant() {
        let c = parse("tenant = \"contoso.com\"\ncloud = \"china\"").unwrap();
        assert_eq!(
            c.authority_url().unwrap(),
            "https://login.chinacloudapi.cn/contoso.com"
        );
        assert_eq!(c.graph_url(), "https://microsoftgraph.chinacloudapi.cn");
    }

    /// The tables of the configuration that are maps, where any key is an entry, each
    /// with an entry it takes. Every other table is a section and refuses unknown keys.
    fn map_tables() -> Vec<(&'static str, &'static str, toml::Value)> {
        vec![
            ("inventory.license_map", "SomePlan", "E3".into()),
            ("inventory.prices", "Some Licence", 12.5.into()),
            (
                "inventory.company_domains",
                "fabrikam.example",
                "Fabrikam".into(),
            ),
        ]
    }

    /// The path of every table in `t`, `t` itself first (as the empty path).
    fn table_paths(t: &toml::Table, at: &[String], out: &mut Vec<Vec<String>>) {
        out.push(at.to_vec());
        for (k, v) in t {
            if let toml::Value::Table(inner) = v {
                let mut below = at.to_vec();
                below.push(k.clone());
                table_paths(inner, &below, out);
            }
        }
    }

    /// `doc` with `key = value` added to the table at `at`, as text.
    fn with_key(doc: &toml::Table, at: &[String], key: &str, value: toml::Value) -> String {
        let mut doc = doc.clone();
        let mut table = &mut doc;
        for k in at {
            table = table[k.as_str()].as_table_mut().unwrap();
        }
        table.insert(key.to_string(), value);
        toml::to_string(&doc).unwrap()
    }

    /// The sections are read off the default configuration written out, so a section
    /// added later is checked without this test changing.
    #[test]
    fn every_section_refuses_an_unknown_key() {
        let doc = toml::Table::try_from(Config::default()).unwrap();
        assert_eq!(
            parse(&toml::to_string(&doc).unwrap()).unwrap(),
            Config::default()
        );
        let mut paths = Vec::new();
        table_paths(&doc, &[], &mut paths);
        let maps = map_tables();
        let mut sections = Vec::new();
        for at in &paths {
            let dotted = at.join(".");
            if maps.iter().any(|(m, _, _)| *m == dotted) {
                continue;
            }
            let key = "surely_not_a_setting";
            let text = with_key(&doc, at, key, true.into());
            let e = parse(&text).expect_err(&format!("[{dotted}] took an unknown key:\n{text}"));
            assert!(
                e.contains(&format!("unknown field `{key}`")),
                "[{dotted}]: {e}"
            );
            sections.push(dotted);
        }
        for name in [
            "",
            "inventory",
            "heartbeat",
            "daemon",
            "database",
            "schedule",
            "sync",
            "audit",
            "auth",
            "notify",
            "http",
            "mail",
        ] {
            assert!(sections.iter().any(|s| s == name), "[{name}] was not found");
        }
        // The maps are there, and are maps: they take a new entry.
        for (map, key, value) in maps {
            let at: Vec<String> = map.split('.').map(str::to_string).collect();
            assert!(paths.contains(&at), "[{map}] was not found");
            parse(&with_key(&doc, &at, key, value)).unwrap();
        }
    }

    #[test]
    fn unknown_key_is_rejected_with_position() {
        let e = parse("tenant = \"contoso.com\"\ntennant = \"x\"\n").unwrap_err();
        assert!(e.contains("line 2"), "{e}");
        assert!(e.contains("unknown field `tennant`"), "{e}");
        assert!(e.contains("test.toml"), "{e}");
    }

    #[test]
    fn bad_values_are_explained() {
        for (text, needle) in [
            ("tenant = 5", "expected a string"),
            (
                "tenant = \"not a tenant\"",
                "expected a tenant GUID or a domain",
            ),
            ("client_id = \"contoso.com\"", "expected a GUID"),
            ("cloud = \"mars\"", "unknown variant `mars`"),
            (
                "graph_url = \"http://graph.example.com\"",
                "only https is allowed",
            ),
            ("graph_url = \"http://10.0.0.1/\"", "only https is allowed"),
            ("exchange_url = \"ftp://x.example\"", "scheme `ftp`"),
            ("[inventory]\nprices = { E3 = -1.0 }", "price of 0 or more"),
            (
                "[inventory]\ncompany_attribute = \"Custom Attribute\"",
                "attribute name",
            ),
            (
                "[inventory.company_domains]\n\"not a domain\" = \"x\"",
                "expected a domain",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(needle), "{text}: {e}");
            assert!(e.contains("line"), "{text}: {e}");
        }
    }

    #[test]
    fn loopback_http_is_allowed() {
        parse("graph_url = \"http://127.0.0.1:9/\"\nexchange_url = \"http://[::1]:9\"").unwrap();
    }

    #[test]
    fn effective_config_round_trips() {
        let c = parse("tenant = \"contoso.com\"\n[inventory.prices]\nE3 = 36.5").unwrap();
        let text = toml::to_string(&c).unwrap();
        assert_eq!(parse(&text).unwrap(), c);
    }
}
