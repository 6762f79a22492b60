//! Microsoft sign-in: OpenID discovery, the device code flow, silent refresh, and the
//! token cache; the only module that holds tokens.
//!
//! A [`Session`] is one account's sign-in in one process. It reads the token cache from
//! the [`crate::secrets`] store, hands out access tokens per [`Resource`], and refreshes
//! them under the refresh lock ([`lock`]): the new refresh token is stored before the new
//! access token is used, and the cache is reread under the lock first, so a token that
//! another process (the CLI, the daemon) rotated is never presented again. The sign-in's
//! public side, a [`SignInRecord`], goes to the database (by the caller: this module
//! never touches SQL) for `status`.
//!
//! The daemon's cycle step that keeps the sign-in alive, and starts a device flow itself
//! when a person is needed, is [`step`].

pub mod cache;
pub mod device;
pub mod lock;
pub mod msal;
pub mod protocol;
pub mod step;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};

pub use cache::{Account, PendingCode, SignInRecord, SignInState, TokenCache};
pub use protocol::{DeviceCode, Endpoints, OAuthError, TokenResponse};

use crate::config::Config;
use crate::error::{Classify, Kind};
use crate::paths::Paths;
use crate::secrets::{BackendInfo, SecretError, SecretStore, SecretsOptions};

/// The database slot of the (single) account's sign-in record.
pub const SLOT: &str = "default";

/// Scopes every sign-in asks for: an id token, the profile claims, a refresh token.
pub const BASE_SCOPES: &str = "openid profile offline_access";

/// A resource that access tokens are asked for. One refresh token serves both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    Graph,
    Exchange,
}

impl Resource {
    pub const ALL: [Resource; 2] = [Resource::Graph, Resource::Exchange];

    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Graph => "graph",
            Resource::Exchange => "exchange",
        }
    }

    pub fn parse(s: &str) -> Option<Resource> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl std::fmt::Display for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Errors of sign-in and refresh. Callers branch on
/// the error's [`Kind`], never on the text.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("sign-in is not configured: {0}")]
    NotConfigured(String),
    #[error("OpenID discovery at {url} failed: {detail}")]
    Discovery {
        url: String,
        detail: String,
        transient: bool,
    },
    #[error("{what} failed: {detail}")]
    Http {
        what: &'static str,
        detail: String,
        transient: bool,
        retry_after: Option<Duration>,
    },
    #[error("{what} was refused (HTTP {status}): {}", error.summary())]
    Provider {
        what: &'static str,
        status: u16,
        error: Box<OAuthError>,
    },
    #[error("{what} was refused: {}", error.summary())]
    Refused {
        what: &'static str,
        error: Box<OAuthError>,
    },
    #[error("{what}: the provider's answer is not understood: {detail}")]
    Protocol { what: &'static str, detail: String },
    #[error("the sign-in was declined at the verification page")]
    Declined,
    #[error("the device code expired before the sign-in was completed")]
    CodeExpired,
    #[error("the provider did not recognise the device code")]
    BadCode,
    #[error("nobody completed the sign-in within {}", humantime::format_duration(*after))]
    Deadline { after: Duration },
    #[error("the sign-in was cancelled")]
    Cancelled,
    #[error("not signed in: run `imm-daemon login`")]
    NotSignedIn,
    #[error("{0}")]
    Cache(String),
    #[error(transparent)]
    Secrets(#[from] SecretError),
    #[error("cannot use the refresh lock {path}: {detail}")]
    Lock { path: PathBuf, detail: String },
    #[error(
        "another imm-daemon process held the token refresh lock {} for over {}; try again",
        path.display(),
        humantime::format_duration(*waited)
    )]
    LockTimeout { path: PathBuf, waited: Duration },
}

impl crate::error::Classify for AuthError {
    /// The network, a 5xx, throttling and a busy lock may clear by themselves (a wait the
    /// provider named makes it rate limited); a refused, expired or revoked sign-in needs
    /// a person to sign in again; a missing configuration or an unusable lock is our
    /// side's; any other refusal (a client the provider does not know, a declined or
    /// expired device code) is the provider's.
    fn kind(&self) -> Kind {
        match self {
            AuthError::Discovery {
                transient: true, ..
            } => Kind::Transient,
            AuthError::Http {
                transient: true,
                retry_after,
                ..
            } => match retry_after {
                Some(wait) => Kind::RateLimited { wait: Some(*wait) },
                None => Kind::Transient,
            },
            AuthError::LockTimeout { .. } => Kind::Transient,
            AuthError::Provider { error, .. } | AuthError::Refused { error, .. }
                if matches!(
                    error.error.as_str(),
                    "invalid_grant"
                        | "interaction_required"
                        | "login_required"
                        | "consent_required"
                ) =>
            {
                Kind::SignIn
            }
            AuthError::NotSignedIn | AuthError::Cache(_) => Kind::SignIn,
            AuthError::Secrets(e) => e.kind(),
            AuthError::NotConfigured(_) | AuthError::Lock { .. } => Kind::Fatal,
            _ => Kind::Refused,
        }
    }
}

impl AuthError {
    /// The refresh token itself was refused (`invalid_grant`: revoked, expired, reused),
    /// whichever resource it was presented for, or there is none to present: the whole
    /// sign-in is gone, not one resource's consent.
    pub fn refresh_token_rejected(&self) -> bool {
        match self {
            AuthError::Provider { error, .. } | AuthError::Refused { error, .. } => {
                error.error == "invalid_grant"
            }
            AuthError::NotSignedIn | AuthError::Cache(_) => true,
            AuthError::Secrets(e) => e.kind() == Kind::SignIn,
            _ => false,
        }
    }
}

/// Posts a form and returns the status, the Retry-After and the body. A transport
/// failure is a transient [`AuthError::Http`].
pub(crate) async fn post_form(
    http: &reqwest::Client,
    what: &'static str,
    url: &str,
    form: &[(&str, &str)],
) -> Result<(u16, Option<Duration>, Vec<u8>), AuthError> {
    let transport = |e: reqwest::Error| AuthError::Http {
        what,
        detail: crate::http::describe(&e),
        transient: true,
        retry_after: None,
    };
    let resp = http
        .post(url)
        .header(reqwest::header::ACCEPT, "application/json")
        .form(form)
        .send()
        .await
        .map_err(transport)?;
    let status = resp.status().as_u16();
    let retry_after = crate::http::retry_after(resp.headers(), Utc::now());
    let body = resp.bytes().await.map_err(transport)?;
    Ok((status, retry_after, body.to_vec()))
}

fn discovery_cache() -> &'static Mutex<HashMap<String, Endpoints>> {
    static CACHE: OnceLock<Mutex<HashMap<String, Endpoints>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Reads the discovery document at `url`, once per process.
pub async fn discover(http: &reqwest::Client, url: &str) -> Result<Endpoints, AuthError> {
    if let Some(e) = discovery_cache().lock().expect("not poisoned").get(url) {
        return Ok(e.clone());
    }
    let fail = |detail: String, transient: bool| AuthError::Discovery {
        url: url.to_string(),
        detail,
        transient,
    };
    let resp = http
        .get(url)
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| fail(crate::http::describe(&e), true))?;
    let status = resp.status();
    let body = resp
        .bytes()
        .await
        .map_err(|e| fail(crate::http::describe(&e), true))?;
    if !status.is_success() {
        let detail = match serde_json::from_slice::<OAuthError>(&body) {
            Ok(e) if !e.error.is_empty() => format!("HTTP {}: {}", status.as_u16(), e.summary()),
            _ => format!("HTTP {}", status.as_u16()),
        };
        return Err(fail(detail, crate::http::is_transient_status(status)));
    }
    let endpoints = protocol::parse_discovery(url, &body)?;
    discovery_cache()
        .lock()
        .expect("not poisoned")
        .insert(url.to_string(), endpoints.clone());
    Ok(endpoints)
}

/// What a sign-in needs from the configuration, checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub client_id: String,
    pub discovery_url: String,
    pub graph_scopes: Vec<String>,
    pub exchange_scopes: Vec<String>,
    pub refresh_buffer: Duration,
    pub refresh_at_least: Duration,
    pub device_code_timeout: Duration,
    pub lock_timeout: Duration,
}

impl Settings {
    /// The sign-in settings, or why sign-in is not possible with this configuration.
    pub fn from_config(config: &Config) -> Result<Settings, AuthError> {
        let client_id = config
            .client_id
            .as_ref()
            .ok_or_else(|| AuthError::NotConfigured("set `client_id` in the configuration".into()))?
            .to_string();
        let discovery_url = config.discovery_url().ok_or_else(|| {
            AuthError::NotConfigured(
                "set `tenant` (or `authority` or `oidc_authority`) in the configuration".into(),
            )
        })?;
        Ok(Settings {
            client_id,
            discovery_url,
            graph_scopes: config.graph_scopes(),
            exchange_scopes: config.exchange_scopes(),
            refresh_buffer: config.auth.refresh_buffer.get(),
            refresh_at_least: config.auth.refresh_at_least.get(),
            device_code_timeout: config.auth.device_code_timeout.get(),
            lock_timeout: config.auth.lock_timeout.get(),
        })
    }

    /// The scope of a request for `resource`'s tokens.
    pub fn scope(&self, resource: Resource) -> String {
        let scopes = match resource {
            Resource::Graph => &self.graph_scopes,
            Resource::Exchange => &self.exchange_scopes,
        };
        let mut s = BASE_SCOPES.to_string();
        for sc in scopes {
            s.push(' ');
            s.push_str(sc);
        }
        s
    }

    /// The secret store's options for this sign-in.
    pub fn secrets_options(&self, config: &Config, paths: &Paths) -> SecretsOptions {
        SecretsOptions {
            choice: config.auth.token_store,
            service: "imm-daemon".into(),
            entry: format!("tokens/{}/{}", self.discovery_url, self.client_id),
            file: paths.data_dir.join("tokens.enc"),
            key_dir: paths.config_dir.clone(),
            key_file: config
                .auth
                .key_file
                .as_ref()
                .map(|p| p.as_path().to_path_buf()),
            keychain_timeout: config.auth.keychain_timeout.get(),
        }
    }
}

/// A fresh access token handed out, and whether it took a refresh to get it.
#[derive(Debug, Clone)]
pub struct Access {
    pub token: SecretString,
    pub expires_at: DateTime<Utc>,
    pub refreshed: bool,
    /// The refresh this token needed failed for a passing reason (network, 5xx, 429):
    /// the token is still valid and is used meanwhile; the refresh is retried later.
    pub deferred: Option<String>,
}

impl Access {
    /// The token in hand, used without a refresh.
    fn held(a: &cache::CachedAccess, deferred: Option<String>) -> Access {
        Access {
            token: a.token.clone(),
            expires_at: a.expires_at,
            refreshed: false,
            deferred,
        }
    }
}

/// When a refresh may be skipped because the access token in hand will do.
#[derive(Clone, Copy)]
enum Renew<'a> {
    /// Only when the token in hand is within the refresh buffer of its expiry.
    IfNeeded,
    /// Also to keep the refresh token in use, unless it was rotated recently.
    KeepAlive,
    /// Unless the token in hand is fresh and not this one, which the service refused.
    Refused(&'a SecretString),
}

/// One account's sign-in in this process. Refreshes are serialised inside the process
/// by its mutex and across processes by the refresh lock.
pub struct Session {
    settings: Settings,
    http: reqwest::Client,
    secrets: SecretStore,
    lock_path: PathBuf,
    cache: tokio::sync::Mutex<Option<TokenCache>>,
    /// The cache in memory is newer than the store (a save failed after the provider
    /// rotated the refresh token): the next refresh saves it before anything else, and
    /// never rereads the store over it.
    unsaved: std::sync::atomic::AtomicBool,
    /// A refused access token was dropped ([`Session::take_refused_drop`]).
    refused_dropped: std::sync::atomic::AtomicBool,
}

impl Session {
    /// Opens the secret store (choosing the backend) for `settings`.
    pub async fn open(
        settings: Settings,
        config: &Config,
        paths: &Paths,
        http: reqwest::Client,
    ) -> Result<Session, AuthError> {
        let secrets = SecretStore::open(settings.secrets_options(config, paths)).await?;
        Ok(Session {
            lock_path: lock::lock_path(&paths.data_dir),
            settings,
            http,
            secrets,
            cache: tokio::sync::Mutex::new(None),
            unsaved: std::sync::atomic::AtomicBool::new(false),
            refused_dropped: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The secret store in use, and why.
    pub fn backend(&self) -> &BackendInfo {
        self.secrets.backend()
    }

    /// The provider's endpoints.
    pub async fn endpoints(&self) -> Result<Endpoints, AuthError> {
        discover(&self.http, &self.settings.discovery_url).await
    }

    /// Rereads the token cache from the secret store. `Ok(None)`: nobody is signed in.
    pub async fn reload(&self) -> Result<Option<SignInRecord>, AuthError> {
        let mut slot = self.cache.lock().await;
        if self.unsaved.load(Ordering::Relaxed) {
            return Ok(slot.as_ref().map(SignInRecord::signed_in));
        }
        *slot = self.read_store().await?;
        Ok(slot.as_ref().map(SignInRecord::signed_in))
    }

    /// The public record of the cache in hand (after [`Session::reload`]).
    pub async fn record(&self) -> Option<SignInRecord> {
        self.cache
            .lock()
            .await
            .as_ref()
            .map(SignInRecord::signed_in)
    }

    async fn read_store(&self) -> Result<Option<TokenCache>, AuthError> {
        match self.secrets.load().await? {
            None => Ok(None),
            Some(bytes) => {
                let cache = TokenCache::from_bytes(&bytes)?;
                if cache.client_id != self.settings.client_id
                    || cache.authority != self.settings.discovery_url
                {
                    // Tokens of another app or authority are not ours to present.
                    return Ok(None);
                }
                Ok(Some(cache))
            }
        }
    }

    /// An access token for `resource` with more than the refresh buffer left,
    /// refreshing it first when needed.
    pub async fn access_token(
        &self,
        resource: Resource,
        now: DateTime<Utc>,
    ) -> Result<Access, AuthError> {
        let mut slot = self.cache.lock().await;
        if slot.is_none() {
            *slot = self.read_store().await?;
        }
        let cache = slot.as_ref().ok_or(AuthError::NotSignedIn)?;
        let held = cache.access.get(resource.as_str()).cloned();
        if let Some(a) = &held
            && !cache::needs_refresh(Some(a), now, self.settings.refresh_buffer)
        {
            return Ok(Access::held(a, None));
        }
        match self
            .refresh_locked(&mut slot, resource, Renew::IfNeeded, now)
            .await
        {
            Err(e) if e.kind().retry_may_cure() => match held.filter(|a| a.expires_at > now) {
                Some(a) => {
                    tracing::warn!(resource = %resource, error = %e, "refresh failed; the access token in hand is still valid and is used meanwhile");
                    Ok(Access::held(&a, Some(crate::error::chain(&e))))
                }
                None => Err(e),
            },
            other => other,
        }
    }

    /// Refreshes `resource`'s token even if the one in hand is fresh (to keep the
    /// refresh token in use), unless another process has just done so.
    pub async fn refresh(
        &self,
        resource: Resource,
        now: DateTime<Utc>,
    ) -> Result<Access, AuthError> {
        let mut slot = self.cache.lock().await;
        self.refresh_locked(&mut slot, resource, Renew::KeepAlive, now)
            .await
    }

    /// A new access token for `resource` after the service refused `refused` (401):
    /// refreshed now, unless the store already holds another fresh one (another request
    /// or process renewed it meanwhile).
    pub async fn renew(
        &self,
        resource: Resource,
        refused: &SecretString,
        now: DateTime<Utc>,
    ) -> Result<Access, AuthError> {
        let mut slot = self.cache.lock().await;
        let renewed = self
            .refresh_locked(&mut slot, resource, Renew::Refused(refused), now)
            .await;
        if let Err(e) = &renewed
            && e.kind() == crate::error::Kind::SignIn
        {
            // The service refused the token and the identity platform will not renew it
            // (a revoked grant, say). Keeping the token would let the sign-in step call
            // it fresh until it expires, an hour of "healthy" while every call fails; once
            // it is gone, the step's next refresh meets the refusal and asks for a person.
            if let Err(forget) = self.forget_access(&mut slot, resource, refused).await {
                tracing::warn!(resource = %resource, error = %forget, "could not drop the refused access token");
            }
        }
        renewed
    }

    /// Drops `resource`'s access token from the store and from memory when it is still
    /// `refused` (another process may have put a new one there meanwhile).
    async fn forget_access(
        &self,
        slot: &mut Option<TokenCache>,
        resource: Resource,
        refused: &SecretString,
    ) -> Result<(), AuthError> {
        let _lock = lock::RefreshLock::acquire(&self.lock_path, self.settings.lock_timeout).await?;
        if !self.unsaved.load(Ordering::Relaxed) {
            *slot = self.read_store().await?;
        }
        let Some(cache) = slot.as_mut() else {
            return Ok(());
        };
        let held = cache.access.get(resource.as_str());
        if held.is_some_and(|a| a.token.expose_secret() == refused.expose_secret()) {
            cache.access.remove(resource.as_str());
            self.secrets.save(&cache.to_bytes()).await?;
            self.unsaved.store(false, Ordering::Relaxed);
            self.refused_dropped.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Whether a refused access token was dropped since the last call (once per drop):
    /// the daemon then runs the sign-in step at once.
    pub fn take_refused_drop(&self) -> bool {
        self.refused_dropped.swap(false, Ordering::Relaxed)
    }

    /// Whether the refresh token has gone unused for `refresh_at_least`.
    pub async fn keep_alive_due(&self, now: DateTime<Utc>) -> bool {
        self.cache.lock().await.as_ref().is_some_and(|c| {
            cache::keep_alive_due(c.refresh_obtained_at, now, self.settings.refresh_at_least)
        })
    }

    async fn refresh_locked(
        &self,
        slot: &mut Option<TokenCache>,
        resource: Resource,
        renew: Renew<'_>,
        now: DateTime<Utc>,
    ) -> Result<Access, AuthError> {
        let _lock = lock::RefreshLock::acquire(&self.lock_path, self.settings.lock_timeout).await?;
        if self.unsaved.load(Ordering::Relaxed) {
            // The refresh token in memory is the only current one: store it first.
            if let Some(c) = slot.as_ref() {
                self.secrets.save(&c.to_bytes()).await?;
            }
            self.unsaved.store(false, Ordering::Relaxed);
        } else {
            // Another process may have rotated the refresh token since we read it.
            *slot = self.read_store().await?;
        }
        let mut cache = slot.clone().ok_or(AuthError::NotSignedIn)?;
        let held = cache.access.get(resource.as_str());
        let fresh = !cache::needs_refresh(held, now, self.settings.refresh_buffer);
        let recently_rotated = !cache::keep_alive_due(
            cache.refresh_obtained_at,
            now,
            self.settings.refresh_at_least,
        );
        if let Some(a) = held
            && fresh
            && match renew {
                Renew::IfNeeded => true,
                Renew::KeepAlive => recently_rotated,
                Renew::Refused(t) => a.token.expose_secret() != t.expose_secret(),
            }
        {
            return Ok(Access::held(a, None));
        }
        let endpoints = self.endpoints().await?;
        let scope = self.settings.scope(resource);
        let (status, retry_after, body) = post_form(
            &self.http,
            "the token refresh",
            &endpoints.token_endpoint,
            &[
                ("grant_type", "refresh_token"),
                ("client_id", &self.settings.client_id),
                ("refresh_token", cache.refresh_token.expose_secret()),
                ("scope", &scope),
                ("client_info", "1"),
            ],
        )
        .await?;
        let tokens = protocol::parse_token_answer("the token refresh", status, &body, retry_after)?;
        if let Some(rt) = tokens.refresh_token.clone() {
            cache.refresh_token = rt;
            cache.refresh_obtained_at = now;
        }
        let access = cache::CachedAccess {
            token: tokens.access_token.clone(),
            expires_at: now + chrono::Duration::from_std(tokens.expires_in).unwrap_or_default(),
            ext_expires_at: tokens
                .ext_expires_in
                .and_then(|d| chrono::Duration::from_std(d).ok())
                .map(|d| now + d),
            scope: tokens.scope.clone().unwrap_or(scope),
            obtained_at: now,
        };
        let expires_at = access.expires_at;
        cache.access.insert(resource.as_str().to_string(), access);
        // The rotated refresh token is stored before the access token is used. If that
        // fails, the new cache stays in memory, marked unsaved, and the caller gets the
        // error: the token the store still holds may already be spent.
        let saved = self.secrets.save(&cache.to_bytes()).await;
        *slot = Some(cache);
        if let Err(e) = saved {
            self.unsaved.store(true, Ordering::Relaxed);
            return Err(e.into());
        }
        Ok(Access {
            token: tokens.access_token,
            expires_at,
            refreshed: true,
            deferred: None,
        })
    }

    /// Stores the tokens of a completed device flow as the sign-in; returns its record.
    pub async fn complete_sign_in(
        &self,
        tokens: TokenResponse,
        now: DateTime<Utc>,
    ) -> Result<SignInRecord, AuthError> {
        let refresh_token = tokens.refresh_token.clone().ok_or(AuthError::Protocol {
            what: "the sign-in",
            detail: "the provider sent no refresh token (was offline_access granted?)".into(),
        })?;
        let claims = tokens
            .id_token
            .as_ref()
            .and_then(|t| protocol::decode_id_token(t.expose_secret()))
            .unwrap_or_default();
        let home = tokens
            .client_info
            .as_deref()
            .and_then(protocol::decode_client_info)
            .or_else(|| claims.sub.clone());
        let mut cache = TokenCache {
            version: cache::CACHE_VERSION,
            client_id: self.settings.client_id.clone(),
            authority: self.settings.discovery_url.clone(),
            account: Account {
                home_account_id: home,
                username: claims.username().map(str::to_string),
                name: claims.name.clone(),
                oid: claims.oid.clone(),
                tenant_id: claims.tid.clone(),
            },
            refresh_token,
            refresh_obtained_at: now,
            signed_in_at: now,
            method: "device_code".into(),
            access: Default::default(),
        };
        cache.access.insert(
            Resource::Graph.as_str().into(),
            cache::CachedAccess {
                token: tokens.access_token.clone(),
                expires_at: now + chrono::Duration::from_std(tokens.expires_in).unwrap_or_default(),
                ext_expires_at: tokens
                    .ext_expires_in
                    .and_then(|d| chrono::Duration::from_std(d).ok())
                    .map(|d| now + d),
                scope: tokens.scope.clone().unwrap_or_default(),
                obtained_at: now,
            },
        );
        self.install(cache).await
    }

    /// Stores `cache` as the sign-in (under the refresh lock); returns its record.
    pub async fn install(&self, cache: TokenCache) -> Result<SignInRecord, AuthError> {
        let mut slot = self.cache.lock().await;
        let _lock = lock::RefreshLock::acquire(&self.lock_path, self.settings.lock_timeout).await?;
        let saved = self.secrets.save(&cache.to_bytes()).await;
        let record = SignInRecord::signed_in(&cache);
        *slot = Some(cache);
        match saved {
            Ok(()) => {
                self.unsaved.store(false, Ordering::Relaxed);
                Ok(record)
            }
            Err(e) => {
                // Kept in memory: a daemon stores it at its next refresh.
                self.unsaved.store(true, Ordering::Relaxed);
                Err(e.into())
            }
        }
    }

    /// Forgets the tokens held in memory (after `logout` elsewhere).
    pub async fn forget(&self) {
        *self.cache.lock().await = None;
        self.unsaved.store(false, Ordering::Relaxed);
    }

    /// Whether tokens in memory still wait to be stored.
    pub fn has_unsaved(&self) -> bool {
        self.unsaved.load(Ordering::Relaxed)
    }
}

/// Removes the tokens from every backend (keychain and file); returns what was removed.
pub async fn logout(config: &Config, paths: &Paths) -> Result<Vec<String>, AuthError> {
    let settings = Settings::from_config(config)?;
    let opts = settings.secrets_options(config, paths);
    let _lock =
        lock::RefreshLock::acquire(&lock::lock_path(&paths.data_dir), settings.lock_timeout)
            .await?;
    Ok(SecretStore::remove_everywhere(&opts).await?)
}

#[cfg(test)]
mod tests;
