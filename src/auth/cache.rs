//! The token cache (what the secret store keeps) and the sign-in record (its public
//! side, which `status` shows), with the refresh decision as a pure function of `now`.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::AuthError;

/// The token cache's format version.
pub const CACHE_VERSION: u32 = 1;

/// Who signed in, as the id token and client_info describe them. Not secret.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// MSAL's home account id (`uid.utid`), else the id token's `sub`.
    pub home_account_id: Option<String>,
    pub username: Option<String>,
    pub name: Option<String>,
    pub oid: Option<String>,
    pub tenant_id: Option<String>,
}

impl Account {
    /// The name to show: the sign-in name, else the display name, else the id.
    pub fn label(&self) -> String {
        self.username
            .clone()
            .or_else(|| self.name.clone())
            .or_else(|| self.home_account_id.clone())
            .unwrap_or_else(|| "unknown account".into())
    }
}

mod secret_text {
    use secrecy::{ExposeSecret, SecretString};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(s: &SecretString, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(s.expose_secret())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
        let text = zeroize::Zeroizing::new(String::deserialize(d)?);
        Ok(SecretString::from(text.as_str()))
    }
}

/// An access token for one resource.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CachedAccess {
    #[serde(with = "secret_text")]
    pub token: SecretString,
    pub expires_at: DateTime<Utc>,
    #[serde(default)]
    pub ext_expires_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub scope: String,
    pub obtained_at: DateTime<Utc>,
}

/// Everything secret about one sign-in. Lives only in memory and in the secret store.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenCache {
    pub version: u32,
    pub client_id: String,
    /// The discovery URL the tokens came from.
    pub authority: String,
    pub account: Account,
    #[serde(with = "secret_text")]
    pub refresh_token: SecretString,
    /// When the refresh token in hand was issued (it rotates on every use).
    pub refresh_obtained_at: DateTime<Utc>,
    pub signed_in_at: DateTime<Utc>,
    /// How the sign-in happened: `device_code` or `msal_import`.
    pub method: String,
    /// Access tokens by resource name (`graph`, `exchange`).
    #[serde(default)]
    pub access: BTreeMap<String, CachedAccess>,
}

impl TokenCache {
    /// The cache as bytes for the secret store; the buffer is zeroed when dropped.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut buf = Zeroizing::new(Vec::with_capacity(16 * 1024));
        serde_json::to_writer(&mut *buf, self).expect("a token cache serializes");
        buf
    }

    /// Reads the secret store's bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<TokenCache, AuthError> {
        #[derive(Deserialize)]
        struct Version {
            version: u32,
        }
        // serde_json's messages can quote the value at fault (a token): only the kind of
        // error and its place are reported.
        let unreadable = |e: serde_json::Error| {
            AuthError::Cache(format!(
                "the stored token cache is not readable ({:?} error at line {} column {})",
                e.classify(),
                e.line(),
                e.column()
            ))
        };
        let v: Version = serde_json::from_slice(bytes).map_err(unreadable)?;
        if v.version != CACHE_VERSION {
            return Err(AuthError::Cache(format!(
                "the stored token cache has version {}; this build reads version {CACHE_VERSION}",
                v.version
            )));
        }
        serde_json::from_slice(bytes).map_err(unreadable)
    }

    /// Every secret string the cache holds (for tests that look for leaks).
    pub fn secrets(&self) -> Vec<&str> {
        let mut v = vec![self.refresh_token.expose_secret()];
        v.extend(self.access.values().map(|a| a.token.expose_secret()));
        v
    }
}

/// Whether the access token in hand must be refreshed before use: it is missing, or
/// has no more than `buffer` left.
pub fn needs_refresh(access: Option<&CachedAccess>, now: DateTime<Utc>, buffer: Duration) -> bool {
    match access {
        None => true,
        Some(a) => {
            let left = (a.expires_at - now).to_std().unwrap_or(Duration::ZERO);
            left <= buffer
        }
    }
}

/// Whether the refresh token should be exercised to keep the sign-in alive: it has not
/// been used for `at_least` (Entra ends a refresh token unused for 90 days).
pub fn keep_alive_due(
    refresh_obtained_at: DateTime<Utc>,
    now: DateTime<Utc>,
    at_least: Duration,
) -> bool {
    (now - refresh_obtained_at)
        .to_std()
        .is_ok_and(|age| age >= at_least)
}

/// Where a sign-in stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignInState {
    /// No tokens: nobody signed in yet, or `logout`.
    #[default]
    SignedOut,
    SignedIn,
    /// The identity platform wants a person (revoked, expired, new MFA or Conditional
    /// Access policy), or the stored tokens could not be read.
    SignInRequired,
}

impl SignInState {
    pub fn as_str(self) -> &'static str {
        match self {
            SignInState::SignedOut => "signed_out",
            SignInState::SignedIn => "signed_in",
            SignInState::SignInRequired => "sign_in_required",
        }
    }
}

/// A device code waiting for the person, as shown to them. The device code itself is
/// never part of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingCode {
    pub user_code: String,
    pub verification_uri: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification_uri_complete: Option<String>,
    pub message: String,
    pub expires_at: DateTime<Utc>,
}

/// One resource's access token, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessInfo {
    pub expires_at: DateTime<Utc>,
    pub obtained_at: DateTime<Utc>,
}

/// The public side of a sign-in, kept in the database for `status` and for the CLI and
/// the daemon to see each other's changes. Holds no token material.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignInRecord {
    pub state: SignInState,
    #[serde(default)]
    pub account: Option<Account>,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub signed_in_at: Option<DateTime<Utc>>,
    /// When the refresh token in hand was issued.
    #[serde(default)]
    pub refresh_obtained_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub access: BTreeMap<String, AccessInfo>,
    /// Why a person is needed, and since when.
    #[serde(default)]
    pub required_reason: Option<String>,
    #[serde(default)]
    pub required_since: Option<DateTime<Utc>>,
    /// The last failed refresh, kept until one succeeds.
    #[serde(default)]
    pub last_error: Option<String>,
    #[serde(default)]
    pub pending: Option<PendingCode>,
    /// The token store the writer used (`keychain` or `file`), why, and any warning.
    #[serde(default)]
    pub backend: Option<String>,
    #[serde(default)]
    pub backend_why: Option<String>,
    #[serde(default)]
    pub backend_warning: Option<String>,
}

impl SignInRecord {
    /// The LOGIN audit row of this sign-in: the account, how (`device_code`,
    /// `msal_import`) and by whom (`cli`, `daemon`). Never token material.
    pub fn login_event(&self, method: &str, by: &str) -> crate::audit::AuditEvent {
        let account = self.account_label();
        crate::audit::AuditEvent::new(crate::audit::Operation::Login)
            .identity(account.clone())
            .details(serde_json::json!({"account": account, "method": method, "by": by}))
    }

    /// The account's name to show; empty when nobody is signed in.
    pub fn account_label(&self) -> String {
        self.account
            .as_ref()
            .map(Account::label)
            .unwrap_or_default()
    }

    /// Notes which token store holds the tokens.
    pub fn with_backend(mut self, b: &crate::secrets::BackendInfo) -> SignInRecord {
        self.backend = Some(b.kind.to_string());
        self.backend_why = Some(b.why.clone());
        self.backend_warning = b.warning.clone();
        self
    }

    /// The record of a cache in hand.
    pub fn signed_in(cache: &TokenCache) -> SignInRecord {
        SignInRecord {
            state: SignInState::SignedIn,
            account: Some(cache.account.clone()),
            method: Some(cache.method.clone()),
            signed_in_at: Some(cache.signed_in_at),
            refresh_obtained_at: Some(cache.refresh_obtained_at),
            access: cache
                .access
                .iter()
                .map(|(k, a)| {
                    (
                        k.clone(),
                        AccessInfo {
                            expires_at: a.expires_at,
                            obtained_at: a.obtained_at,
                        },
                    )
                })
                .collect(),
            ..SignInRecord::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn access(expires_at: DateTime<Utc>) -> CachedAccess {
        CachedAccess {
            token: SecretString::from("at"),
            expires_at,
            ext_expires_at: None,
            scope: String::new(),
            obtained_at: expires_at - chrono::Duration::hours(1),
        }
    }

    #[test]
    fn the_buffer_decides_between_reuse_and_refresh() {
        let now = Utc.with_ymd_and_hms(2026, 11, 21, 12, 0, 0).unwrap();
        let buffer = Duration::from_secs(300);
        assert!(needs_refresh(None, now, buffer));
        let later = |s: i64| access(now + chrono::Duration::seconds(s));
        assert!(!needs_refresh(Some(&later(301)), now, buffer));
        assert!(needs_refresh(Some(&later(300)), now, buffer));
        assert!(needs_refresh(Some(&later(299)), now, buffer));
        assert!(needs_refresh(Some(&later(-10)), now, buffer));
        assert!(!needs_refresh(Some(&later(1)), now, Duration::ZERO));
    }

    #[test]
    fn keep_alive_falls_due_after_the_interval() {
        let now = Utc.with_ymd_and_hms(2026, 11, 21, 12, 0, 0).unwrap();
        let day = Duration::from_secs(86_400);
        assert!(!keep_alive_due(now - chrono::Duration::hours(23), now, day));
        assert!(keep_alive_due(now - chrono::Duration::hours(24), now, day));
        // A clock set back makes the token look new, never overdue.
        assert!(!keep_alive_due(now + chrono::Duration::hours(5), now, day));
    }

    #[test]
    fn the_cache_round_trips_and_rejects_other_versions() {
        let now = Utc.with_ymd_and_hms(2026, 11, 21, 12, 0, 0).unwrap();
        let mut cache = TokenCache {
            version: CACHE_VERSION,
            client_id: "c".into(),
            authority: "https://login.example/t/v2.0/.well-known/openid-configuration".into(),
            account: Account {
                username: Some("a@contoso.com".into()),
                ..Account::default()
            },
            refresh_token: SecretString::from("RT-secret"),
            refresh_obtained_at: now,
            signed_in_at: now,
            method: "device_code".into(),
            access: BTreeMap::new(),
        };
        cache.access.insert("graph".into(), access(now));
        let bytes = cache.to_bytes();
        let back = TokenCache::from_bytes(&bytes).unwrap();
        assert_eq!(back.secrets(), vec!["RT-secret", "at"]);
        assert!(!format!("{back:?}").contains("RT-secret"));
        let record = SignInRecord::signed_in(&back);
        let shown = serde_json::to_string(&record).unwrap();
        assert!(!shown.contains("RT-secret") && shown.contains("a@contoso.com"));
        let other = String::from_utf8(bytes.to_vec())
            .unwrap()
            .replace("\"version\":1", "\"version\":9");
        let e = TokenCache::from_bytes(other.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("version 9"), "{e}");
        let e = TokenCache::from_bytes(b"{\"version\":1,").unwrap_err();
        assert!(!e.to_string().contains("RT-secret"));
    }
}
