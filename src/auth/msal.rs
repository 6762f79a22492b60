//! Import of an MSAL token cache: the unified JSON that MSAL Python's
//! `SerializableTokenCache` writes (`AccessToken`, `RefreshToken`, `IdToken`, `Account`,
//! `AppMetadata`), so a move from a Python MSAL prototype keeps its sign-in.
//!
//! The account's refresh token becomes ours, with any access tokens still valid for
//! Graph or Exchange Online; the id token labels the account.
//!
//! # Whose cache it is
//!
//! A refresh token goes back only to the provider that issued it: a cache issued
//! elsewhere is refused, naming both sides. MSAL records where each entry came from as
//! `environment`, the authority's host, and `realm`, the first path segment of the
//! token endpoint it used (a tenant id, or `organizations`, `common`, `consumers`). The
//! configured authority's [`Origin`] is worked out the same way from its discovery
//! document, and an entry is taken when:
//! - its environment is the configured authority's host or its token endpoint's host
//!   (without the port, as MSAL records it), or an alias of the same Microsoft cloud
//!   (`login.microsoftonline.com`, `login.windows.net`, `login.microsoft.com` and
//!   `sts.windows.net` are one; so are the China and US Government clouds' names);
//! - and the account's realm suits the configured one: any realm when the configured one
//!   is `organizations`, `common` or `consumers` (or the token endpoint has no path); else
//!   a realm equal to it, or a multi-tenant realm (`organizations`, `common`) whose account
//!   belongs to it (the id token's `tid`, else the tenant half of the home account id
//!   `uid.utid`). A tenant-specific cache never goes to another tenant, and a cache that
//!   records no realm for the account is refused by a tenant-specific authority.
//!
//! `--account` picks an account by any name imm-daemon shows for it: MSAL's `username`,
//! the id token's `preferred_username`, `upn`, `name` or `sub`, or the home account id.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::Value;
use zeroize::Zeroizing;

use super::cache::{Account, CACHE_VERSION, CachedAccess, TokenCache};
use super::protocol::IdClaims;
use super::{AuthError, Resource, Settings, protocol};

/// Host names of one Microsoft cloud's sign-in service, which MSAL treats as one
/// environment (its instance discovery aliases).
const CLOUD_ALIASES: &[&[&str]] = &[
    &[
        "login.microsoftonline.com",
        "login.windows.net",
        "login.microsoft.com",
        "sts.windows.net",
    ],
    &["login.partner.microsoftonline.cn", "login.chinacloudapi.cn"],
    &["login.microsoftonline.us", "login.usgovcloudapi.net"],
];

/// Realms that name no tenant: tokens for any account of the cloud.
const MULTI_TENANT: &[&str] = &["organizations", "common", "consumers"];

/// The configured authority as MSAL would record it in a cache: its hosts (the
/// authority's and its token endpoint's) and its realm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    hosts: Vec<String>,
    realm: Option<String>,
}

fn host_of(url: &str) -> Option<String> {
    url::Url::parse(url)
        .ok()?
        .host_str()
        .map(|h| h.trim_matches(['[', ']']).to_ascii_lowercase())
}

impl Origin {
    /// From the configured discovery document's URL and the token endpoint it names.
    pub fn new(discovery_url: &str, token_endpoint: &str) -> Origin {
        let mut hosts: Vec<String> = [discovery_url, token_endpoint]
            .into_iter()
            .filter_map(host_of)
            .collect();
        hosts.dedup();
        let realm = url::Url::parse(token_endpoint).ok().and_then(|u| {
            u.path_segments()?
                .next()
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        });
        Origin { hosts, realm }
    }

    /// Whether MSAL's `environment` names this authority.
    fn has_environment(&self, environment: &str) -> bool {
        let e = environment.trim().to_ascii_lowercase();
        self.hosts.iter().any(|h| {
            *h == e
                || CLOUD_ALIASES
                    .iter()
                    .any(|c| c.contains(&h.as_str()) && c.contains(&e.as_str()))
        })
    }

    /// Whether an account with these realms (and this tenant, when known) belongs here.
    fn admits(&self, realms: &[&str], tenant: Option<&str>) -> bool {
        let Some(want) = self.realm.as_deref() else {
            return true;
        };
        let multi = |r: &str| MULTI_TENANT.iter().any(|m| m.eq_ignore_ascii_case(r));
        multi(want)
            || realms.iter().any(|r| {
                r.eq_ignore_ascii_case(want)
                    || (multi(r) && tenant.is_some_and(|t| t.eq_ignore_ascii_case(want)))
            })
    }

    fn describe(&self) -> String {
        let host = self.hosts.first().map_or("(unknown host)", String::as_str);
        match &self.realm {
            Some(r) => format!("{host} (tenant {r})"),
            None => host.to_string(),
        }
    }
}

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

/// The home account id of an entry; MSAL always records one, a cache written by hand may
/// not.
fn home_of(v: &Value) -> &str {
    text(v, "home_account_id").unwrap_or("")
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

/// One account of the cache that holds a refresh token for our client at our
/// environment: what it is called and where it was signed in.
struct Candidate<'a> {
    home: &'a str,
    /// Its newest refresh token.
    refresh: &'a Value,
    /// Its `Account` entry, when the cache has one here.
    entry: Option<&'a Value>,
    claims: IdClaims,
    realms: Vec<&'a str>,
}

impl Candidate<'_> {
    /// The name imm-daemon shows for it (as [`Account::label`] will).
    fn label(&self) -> String {
        self.username()
            .or(self.claims.name.as_deref())
            .or(Some(self.home).filter(|h| !h.is_empty()))
            .unwrap_or("an account without a name")
            .to_string()
    }

    fn username(&self) -> Option<&str> {
        self.entry
            .and_then(|a| text(a, "username"))
            .or_else(|| self.claims.username())
    }

    /// Every name it answers to for `--account`.
    fn is_named(&self, want: &str) -> bool {
        let c = &self.claims;
        [
            self.entry.and_then(|a| text(a, "username")),
            c.preferred_username.as_deref(),
            c.upn.as_deref(),
            c.name.as_deref(),
            c.sub.as_deref(),
            Some(self.home),
        ]
        .into_iter()
        .flatten()
        .any(|n| !n.is_empty() && n.eq_ignore_ascii_case(want.trim()))
    }

    /// The tenant it belongs to: the id token's, else the home account id's `utid`.
    fn tenant(&self) -> Option<&str> {
        self.claims
            .tid
            .as_deref()
            .or_else(|| self.home.split_once('.').map(|(_, utid)| utid))
    }
}

/// Reads an MSAL cache and builds our token cache for the configured client, refusing a
/// cache that `origin` (the configured authority) did not issue; `account` picks one
/// account by any name it goes by when the cache holds several.
pub fn import(
    bytes: &[u8],
    settings: &Settings,
    origin: &Origin,
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
    let ours_client =
        |v: &Value| text(v, "client_id").is_some_and(|c| c.eq_ignore_ascii_case(&client_id));
    let here = |v: &Value| text(v, "environment").is_some_and(|e| origin.has_environment(e));
    let refresh: Vec<&Value> = cache
        .refresh_token
        .values()
        .filter(|v| text(v, "secret").is_some())
        .collect();
    if refresh.is_empty() {
        return Err(bad("it holds no refresh token"));
    }
    let ours: Vec<&Value> = refresh.iter().copied().filter(|v| ours_client(v)).collect();
    if ours.is_empty() {
        let mut others: Vec<&str> = refresh
            .iter()
            .filter_map(|v| text(v, "client_id"))
            .collect();
        others.sort_unstable();
        others.dedup();
        return Err(bad(format!(
            "its refresh tokens belong to client id {}, not to the configured client_id {}",
            others.join(", "),
            settings.client_id
        )));
    }
    let local: Vec<&Value> = ours.iter().copied().filter(|v| here(v)).collect();
    if local.is_empty() {
        let mut issuers: Vec<&str> = ours
            .iter()
            .map(|v| text(v, "environment").unwrap_or("(no environment)"))
            .collect();
        issuers.sort_unstable();
        issuers.dedup();
        return Err(bad(format!(
            "it was issued by {}, not by the configured authority {}; its refresh token is only ever sent to the provider that issued it",
            issuers.join(", "),
            origin.describe()
        )));
    }
    let mut homes: Vec<&str> = local.iter().map(|v| home_of(v)).collect();
    homes.sort_unstable();
    homes.dedup();
    let candidates: Vec<Candidate> = homes
        .iter()
        .map(|&home| {
            let mine = |v: &&Value| home_of(v) == home && here(v);
            let refresh = local
                .iter()
                .copied()
                .filter(|v| home_of(v) == home)
                .max_by_key(|v| epoch(v, "last_modification_time"))
                .expect("a home comes from a refresh token");
            let id_tokens = || {
                cache.id_token.values().filter(mine).filter(|v| {
                    text(v, "client_id").is_none_or(|c| c.eq_ignore_ascii_case(&client_id))
                })
            };
            let claims = id_tokens()
                .find_map(|v| text(v, "secret").and_then(protocol::decode_id_token))
                .unwrap_or_default();
            let accounts = || cache.account.values().filter(mine);
            let mut realms: Vec<&str> = accounts()
                .chain(id_tokens())
                .chain(
                    cache
                        .access_token
                        .values()
                        .filter(mine)
                        .filter(|v| ours_client(v)),
                )
                .filter_map(|v| text(v, "realm"))
                .collect();
            realms.sort_unstable();
            realms.dedup();
            Candidate {
                home,
                refresh,
                entry: accounts().next(),
                claims,
                realms,
            }
        })
        .collect();
    let labels = |list: &[&Candidate]| {
        list.iter()
            .map(|c| c.label())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let all: Vec<&Candidate> = candidates.iter().collect();
    let chosen: Vec<&Candidate> = match account {
        Some(want) => all.iter().copied().filter(|c| c.is_named(want)).collect(),
        None => all.clone(),
    };
    let c = match chosen.as_slice() {
        [] => {
            return Err(bad(format!(
                "no account named {} holds a refresh token for this client; it holds {}",
                account.unwrap_or(""),
                labels(&all)
            )));
        }
        [one] => *one,
        several => {
            return Err(bad(format!(
                "it holds several accounts ({}); pick one with --account",
                labels(several)
            )));
        }
    };
    if !origin.admits(&c.realms, c.tenant()) {
        let realms = match c.realms.as_slice() {
            [] => "no tenant".to_string(),
            r => format!("tenant {}", r.join(", ")),
        };
        return Err(bad(format!(
            "its account {} was signed in for {realms}, not for the configured authority {}; its refresh token is not sent to another tenant",
            c.label(),
            origin.describe()
        )));
    }
    let home = Some(c.home.to_string()).filter(|h| !h.is_empty());
    let id_claims = &c.claims;
    let account_entry = c.entry;
    let rt = c.refresh;
    let mut access = BTreeMap::new();
    for at in cache.access_token.values() {
        if home_of(at) != c.home || !ours_client(at) || !here(at) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    const CLIENT: &str = "8d1a6c3e-2f4b-4c5d-9e6f-7a8b9c0d1e2f";
    const TENANT: &str = "3b7c2f9a-5d41-4e8b-9c06-1f2a7d4e8b53";
    const OTHER: &str = "0c0ffee0-1111-4222-8333-444455556666";

    fn settings() -> Settings {
        Settings {
            client_id: CLIENT.into(),
            discovery_url: String::new(),
            graph_scopes: vec!["https://graph.microsoft.com/.default".into()],
            exchange_scopes: vec!["https://outlook.office365.com/.default".into()],
            refresh_buffer: Duration::from_secs(300),
            refresh_at_least: Duration::from_secs(3600),
            device_code_timeout: Duration::from_secs(900),
            lock_timeout: Duration::from_secs(10),
        }
    }

    /// Microsoft's origin for `tenant` as configured, its endpoints under `published`.
    fn microsoft(tenant: &str, published: &str) -> Origin {
        Origin::new(
            &format!(
                "https://login.microsoftonline.com/{tenant}/v2.0/.well-known/openid-configuration"
            ),
            &format!("https://login.microsoftonline.com/{published}/oauth2/v2.0/token"),
        )
    }

    /// A cache of one account, `home`, signed in at `environment` for `realm`.
    fn cache(home: &str, environment: &str, realm: Option<&str>) -> Vec<u8> {
        let mut c = json!({
            "RefreshToken": {"rt": {
                "secret": "rt-secret", "home_account_id": home, "environment": environment,
                "client_id": CLIENT, "last_modification_time": "1763700000"
            }},
            "Account": {}
        });
        if let Some(realm) = realm {
            c["Account"]["a"] = json!({
                "home_account_id": home, "environment": environment, "realm": realm,
                "username": "ada@contoso.com"
            });
        }
        serde_json::to_vec(&c).unwrap()
    }

    fn import_as(bytes: &[u8], origin: &Origin) -> Result<TokenCache, String> {
        import(bytes, &settings(), origin, None, Utc::now()).map_err(|e| e.to_string())
    }

    #[test]
    fn a_microsoft_cloud_s_aliases_are_one_environment_and_other_clouds_are_not() {
        let home = format!("uid.{TENANT}");
        let here = microsoft("contoso.onmicrosoft.com", TENANT);
        for environment in [
            "login.microsoftonline.com",
            "login.windows.net",
            "LOGIN.MICROSOFT.COM",
            "sts.windows.net",
        ] {
            let c = import_as(&cache(&home, environment, Some(TENANT)), &here).unwrap();
            assert_eq!(c.account.username.as_deref(), Some("ada@contoso.com"));
        }
        for environment in [
            "login.microsoftonline.us",
            "login.chinacloudapi.cn",
            "idp.example.com",
        ] {
            let e = import_as(&cache(&home, environment, Some(TENANT)), &here).unwrap_err();
            assert!(
                e.contains(environment) && e.contains("login.microsoftonline.com"),
                "{e}"
            );
            assert!(!e.contains("rt-secret"));
        }
        let china = Origin::new(
            "https://login.chinacloudapi.cn/contoso.partner.onmschina.cn/v2.0/.well-known/openid-configuration",
            &format!("https://login.chinacloudapi.cn/{TENANT}/oauth2/v2.0/token"),
        );
        assert!(
            import_as(
                &cache(&home, "login.partner.microsoftonline.cn", Some(TENANT)),
                &china
            )
            .is_ok()
        );
    }

    #[test]
    fn realms_match_tenant_for_tenant_and_any_for_a_multi_tenant_authority() {
        let home = format!("uid.{TENANT}");
        // A tenant-specific authority: the same tenant, by id, whatever it was called.
        let tenant = microsoft("contoso.onmicrosoft.com", TENANT);
        assert!(
            import_as(
                &cache(&home, "login.microsoftonline.com", Some(TENANT)),
                &tenant
            )
            .is_ok()
        );
        let e = import_as(
            &cache(&home, "login.microsoftonline.com", Some(OTHER)),
            &tenant,
        )
        .unwrap_err();
        assert!(e.contains(OTHER) && e.contains(TENANT), "{e}");
        // A multi-tenant cache, for an account of this tenant (its home id's utid) or not.
        assert!(
            import_as(
                &cache(&home, "login.microsoftonline.com", Some("organizations")),
                &tenant
            )
            .is_ok()
        );
        let stranger = format!("uid.{OTHER}");
        let e = import_as(
            &cache(&stranger, "login.microsoftonline.com", Some("common")),
            &tenant,
        )
        .unwrap_err();
        assert!(e.contains("common") && e.contains(TENANT), "{e}");
        // No realm recorded: a tenant-specific authority cannot tell, so it refuses.
        let e = import_as(&cache(&home, "login.microsoftonline.com", None), &tenant).unwrap_err();
        assert!(e.contains("no tenant"), "{e}");
        // A multi-tenant authority takes any tenant of its cloud.
        let organizations = microsoft("organizations", "organizations");
        for realm in [Some(OTHER), Some("common"), None] {
            assert!(
                import_as(
                    &cache(&stranger, "login.windows.net", realm),
                    &organizations
                )
                .is_ok(),
                "{realm:?}"
            );
        }
        // A generic provider: its host, and its token endpoint's first path segment.
        let generic = Origin::new(
            "https://idp.example.com/oidc/.well-known/openid-configuration",
            "https://idp.example.com/oidc/token",
        );
        assert!(import_as(&cache("sub-1", "idp.example.com", Some("oidc")), &generic).is_ok());
        assert!(import_as(&cache("sub-1", "idp.example.com", Some("other")), &generic).is_err());
        let root = Origin::new(
            "https://idp.example.com/.well-known/openid-configuration",
            "https://idp.example.com/token",
        );
        assert!(import_as(&cache("sub-1", "idp.example.com", Some("token")), &root).is_ok());
    }
}
