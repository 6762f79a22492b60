//! Import of an MSAL token cache: the unified JSON that MSAL Python's
//! `SerializableTokenCache` writes (`AccessToken`, `RefreshToken`, `IdToken`, `Account`,
//! `AppMetadata`), so a move from a Python MSAL prototype keeps its sign-in.
//!
//! The account's refresh token becomes ours, with any access tokens still valid for
//! Graph or Exchange Online; the id token labels the account.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::Value;
use zeroize::Zeroizing;

use super::cache::{Account, CACHE_VERSION, CachedAccess, TokenCache};
use super::{AuthError, Resource, Settings, protocol};

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct MsalCache {
    #[serde(default)]
    access_token: BTreeMap<String, Value>,
    #[serde(default)]
    refresh_token: BTreeMap<String, Value>,
    #[serde(default)]
    id_token: BTreeMap<String, Value>,
    #[serde(default)]
    account: BTreeMap<String, Value>,
}

fn text<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// Epoch seconds, as MSAL writes them (strings) or as numbers.
fn epoch(v: &Value, key: &str) -> Option<DateTime<Utc>> {
    let secs = match v.get(key)? {
        Value::String(s) => s.trim().parse::<i64>().ok()?,
        Value::Number(n) => n.as_i64()?,
        _ => return None,
    };
    Utc.timestamp_opt(secs, 0).single()
}

fn bad(detail: impl Into<String>) -> AuthError {
    AuthError::Cache(format!(
        "the MSAL token cache cannot be imported: {}",
        detail.into()
    ))
}

/// Which resource an access token's scopes (`target`) belong to.
fn resource_of(target: &str, settings: &Settings) -> Option<Resource> {
    let host_of = |scopes: &[String]| -> Vec<String> {
        scopes
            .iter()
            .filter_map(|s| s.rsplit_once('/').map(|(h, _)| h.to_ascii_lowercase()))
            .collect()
    };
    let target = target.to_ascii_lowercase();
    for (resource, scopes) in [
        (Resource::Graph, &settings.graph_scopes),
        (Resource::Exchange, &settings.exchange_scopes),
    ] {
        if host_of(scopes).iter().any(|h| target.contains(h.as_str())) {
            return Some(resource);
        }
    }
    None
}

/// Reads an MSAL cache and builds our token cache for the configured client; `account`
/// picks one account by username when the cache holds several.
pub fn import(
    bytes: &[u8],
    settings: &Settings,
    account: Option<&str>,
    now: DateTime<Utc>,
) -> Result<TokenCache, AuthError> {
    // The document holds secrets: parsed from a buffer that is zeroed afterwards.
    // serde_json's messages can quote the value at fault (a secret): only the place.
    let cache: MsalCache = serde_json::from_slice(bytes).map_err(|e| {
        bad(format!(
            "it is not MSAL's JSON token cache ({:?} error at line {} column {})",
            e.classify(),
            e.line(),
            e.column()
        ))
    })?;
    let client_id = settings.client_id.to_ascii_lowercase();
    let refresh: Vec<&Value> = cache
        .refresh_token
        .values()
        .filter(|v| text(v, "secret").is_some())
        .collect();
    if refresh.is_empty() {
        return Err(bad("it holds no refresh token"));
    }
    let ours: Vec<&Value> = refresh
        .iter()
        .copied()
        .filter(|v| text(v, "client_id").is_some_and(|c| c.eq_ignore_ascii_case(&client_id)))
        .collect();
    if ours.is_empty() {
        let mut others: Vec<&str> = refresh
            .iter()
            .filter_map(|v| text(v, "client_id"))
            .collect();
        others.dedup();
        return Err(bad(format!(
            "its refresh tokens belong to client id {}, not to the configured client_id {}",
            others.join(", "),
            settings.client_id
        )));
    }
    let username_of = |home: &str| -> Option<String> {
        cache
            .account
            .values()
            .find(|a| text(a, "home_account_id") == Some(home))
            .and_then(|a| text(a, "username"))
            .map(str::to_string)
    };
    let chosen: Vec<&Value> = match account {
        Some(want) => ours
            .iter()
            .copied()
            .filter(|v| {
                text(v, "home_account_id")
                    .and_then(username_of)
                    .is_some_and(|u| u.eq_ignore_ascii_case(want))
            })
            .collect(),
        None => ours.clone(),
    };
    let mut homes: Vec<&str> = chosen
        .iter()
        .filter_map(|v| text(v, "home_account_id"))
        .collect();
    homes.sort_unstable();
    homes.dedup();
    let rt = match (chosen.as_slice(), homes.len()) {
        ([], _) => {
            return Err(bad(format!(
                "no account named {} holds a refresh token for this client",
                account.unwrap_or("")
            )));
        }
        (_, n) if n > 1 => {
            let names: Vec<String> = homes
                .iter()
                .map(|h| username_of(h).unwrap_or_else(|| h.to_string()))
                .collect();
            return Err(bad(format!(
                "it holds several accounts ({}); pick one with --account",
                names.join(", ")
            )));
        }
        (list, _) => list
            .iter()
            .copied()
            .max_by_key(|v| epoch(v, "last_modification_time"))
            .expect("not empty"),
    };
    let home = text(rt, "home_account_id").map(str::to_string);
    let id_claims = cache
        .id_token
        .values()
        .filter(|v| text(v, "home_account_id") == home.as_deref())
        .filter(|v| text(v, "client_id").is_none_or(|c| c.eq_ignore_ascii_case(&client_id)))
        .find_map(|v| text(v, "secret").and_then(protocol::decode_id_token))
        .unwrap_or_default();
    let account_entry = cache
        .account
        .values()
        .find(|a| text(a, "home_account_id") == home.as_deref());
    let mut access = BTreeMap::new();
    for at in cache.access_token.values() {
        if text(at, "home_account_id") != home.as_deref()
            || !text(at, "client_id").is_some_and(|c| c.eq_ignore_ascii_case(&client_id))
        {
            continue;
        }
        let (Some(secret), Some(expires_at)) = (text(at, "secret"), epoch(at, "expires_on")) else {
            continue;
        };
        if expires_at <= now {
            continue;
        }
        let target = text(at, "target").unwrap_or("");
        let Some(resource) = resource_of(target, settings) else {
            continue;
        };
        access.insert(
            resource.as_str().to_string(),
            CachedAccess {
                token: SecretString::from(secret),
                expires_at,
                ext_expires_at: epoch(at, "extended_expires_on"),
                scope: target.to_string(),
                obtained_at: epoch(at, "cached_at").unwrap_or(now),
            },
        );
    }
    let secret = Zeroizing::new(text(rt, "secret").expect("filtered on secret").to_string());
    Ok(TokenCache {
        version: CACHE_VERSION,
        client_id: settings.client_id.clone(),
        authority: settings.discovery_url.clone(),
        account: Account {
            home_account_id: home,
            username: account_entry
                .and_then(|a| text(a, "username"))
                .map(str::to_string)
                .or_else(|| id_claims.username().map(str::to_string)),
            name: id_claims.name.clone(),
            oid: id_claims.oid.clone().or_else(|| {
                account_entry
                    .and_then(|a| text(a, "local_account_id"))
                    .map(str::to_string)
            }),
            tenant_id: id_claims.tid.clone().or_else(|| {
                account_entry
                    .and_then(|a| text(a, "realm"))
                    .map(str::to_string)
            }),
        },
        refresh_token: SecretString::from(secret.as_str()),
        refresh_obtained_at: epoch(rt, "last_modification_time").unwrap_or(now),
        signed_in_at: now,
        method: "msal_import".into(),
        access,
    })
}
