//! The OAuth 2.0 and OpenID Connect messages, as data: discovery, the device
//! authorization answer (RFC 8628 section 3.2), token answers and Microsoft's error body.
//!
//! Parsing is separate from transport, so every answer a provider can give is a tested
//! value: a poll is [`PollAnswer::Pending`], [`PollAnswer::SlowDown`],
//! [`PollAnswer::Granted`] or an [`AuthError`] that says what ended the flow.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::SecretString;
use serde::{Deserialize, Deserializer, Serialize};

use super::AuthError;

/// The endpoints a sign-in needs, from the discovery document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub issuer: Option<String>,
    pub device_authorization_endpoint: String,
    pub token_endpoint: String,
}

#[derive(Deserialize)]
struct DiscoveryDoc {
    issuer: Option<String>,
    device_authorization_endpoint: Option<String>,
    token_endpoint: Option<String>,
}

/// Reads a discovery document; `url` only labels errors. Endpoints must be https (or
/// http on a loopback address), like every URL the program calls.
pub fn parse_discovery(url: &str, body: &[u8]) -> Result<Endpoints, AuthError> {
    let bad = |detail: String| AuthError::Discovery {
        url: url.to_string(),
        detail,
        transient: false,
    };
    let doc: DiscoveryDoc = serde_json::from_slice(body).map_err(|e| {
        bad(format!(
            "the answer is not an OpenID discovery document: {e}"
        ))
    })?;
    let device = doc.device_authorization_endpoint.ok_or_else(|| {
        bad("the provider lists no device_authorization_endpoint: it does not offer the device code grant".into())
    })?;
    let token = doc
        .token_endpoint
        .ok_or_else(|| bad("the provider lists no token_endpoint".into()))?;
    for (name, u) in [
        ("device_authorization_endpoint", &device),
        ("token_endpoint", &token),
    ] {
        crate::config::EndpointUrl::try_from(u.clone()).map_err(|e| bad(format!("{name}: {e}")))?;
    }
    Ok(Endpoints {
        issuer: doc.issuer,
        device_authorization_endpoint: device,
        token_endpoint: token,
    })
}

/// A device code, as the provider issued it. The `device_code` is a secret: whoever
/// holds it can collect the tokens once the person approves.
#[derive(Debug, Clone)]
pub struct DeviceCode {
    pub device_code: SecretString,
    pub user_code: String,
    pub verification_uri: String,
    pub verification_uri_complete: Option<String>,
    pub expires_in: Duration,
    pub interval: Duration,
    /// The provider's own sentence for the person (Microsoft sends one, localised).
    pub message: Option<String>,
}

impl DeviceCode {
    /// What to tell the person: the provider's message, else a sentence of ours.
    pub fn instructions(&self) -> String {
        if let Some(m) = self.message.as_deref().filter(|m| !m.trim().is_empty()) {
            return m.trim().to_string();
        }
        match &self.verification_uri_complete {
            Some(complete) => format!(
                "To sign in, open {complete} in a web browser, or open {} and enter the code {}.",
                self.verification_uri, self.user_code
            ),
            None => format!(
                "To sign in, open {} in a web browser and enter the code {}.",
                self.verification_uri, self.user_code
            ),
        }
    }
}

/// A number that some providers send as a string ("some IdP returns string", says MSAL).
fn lenient_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum N {
        Num(u64),
        Float(f64),
        Text(String),
    }
    Ok(match Option::<N>::deserialize(d)? {
        None => None,
        Some(N::Num(n)) => Some(n),
        Some(N::Float(f)) if f.is_finite() && f >= 0.0 => Some(f as u64),
        Some(N::Float(_)) => None,
        Some(N::Text(t)) => t.trim().parse().ok(),
    })
}

#[derive(Deserialize)]
struct DeviceAuthorizationDoc {
    device_code: Option<String>,
    user_code: Option<String>,
    #[serde(alias = "verification_url")]
    verification_uri: Option<String>,
    verification_uri_complete: Option<String>,
    #[serde(default, deserialize_with = "lenient_u64")]
    expires_in: Option<u64>,
    #[serde(default, deserialize_with = "lenient_u64")]
    interval: Option<u64>,
    message: Option<String>,
}

/// The polling interval when the provider names none (RFC 8628 section 3.2).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// A device code's lifetime when the provider names none (as MSAL assumes).
pub const DEFAULT_EXPIRES_IN: Duration = Duration::from_secs(1800);

/// Reads the answer of the device authorization endpoint.
pub fn parse_device_authorization(status: u16, body: &[u8]) -> Result<DeviceCode, AuthError> {
    if !(200..300).contains(&status) {
        return Err(error_answer("the device code request", status, body, None));
    }
    let bad = |detail: &str| AuthError::Protocol {
        what: "the device code request",
        detail: detail.to_string(),
    };
    let doc: DeviceAuthorizationDoc = serde_json::from_slice(body)
        .map_err(|_| bad("the answer is not JSON of the expected shape"))?;
    let device_code = doc
        .device_code
        .filter(|s| !s.is_empty())
        .ok_or_else(|| bad("the answer has no device_code"))?;
    let user_code = doc
        .user_code
        .filter(|s| !s.is_empty())
        .ok_or_else(|| bad("the answer has no user_code"))?;
    let verification_uri = doc
        .verification_uri
        .filter(|s| !s.is_empty())
        .ok_or_else(|| bad("the answer has no verification_uri"))?;
    Ok(DeviceCode {
        device_code: SecretString::from(device_code),
        user_code,
        verification_uri,
        verification_uri_complete: doc.verification_uri_complete.filter(|s| !s.is_empty()),
        // Clamped: a provider's numbers must not overflow our clocks.
        expires_in: doc
            .expires_in
            .filter(|s| *s > 0)
            .map_or(DEFAULT_EXPIRES_IN, |s| Duration::from_secs(s.min(86_400))),
        interval: doc
            .interval
            .filter(|s| *s > 0)
            .map_or(DEFAULT_INTERVAL, |s| Duration::from_secs(s.min(600))),
        message: doc.message,
    })
}

const MAX_TOKEN_LIFE: u64 = 30 * 86_400;

/// A successful token answer. Secrets redact on Debug and are zeroed on drop.
#[derive(Debug, Clone)]
pub struct TokenResponse {
    pub access_token: SecretString,
    pub refresh_token: Option<SecretString>,
    pub id_token: Option<SecretString>,
    pub expires_in: Duration,
    pub ext_expires_in: Option<Duration>,
    pub scope: Option<String>,
    pub client_info: Option<String>,
}

#[derive(Deserialize)]
struct TokenDoc {
    access_token: Option<String>,
    refresh_token: Option<String>,
    id_token: Option<String>,
    #[serde(default, deserialize_with = "lenient_u64")]
    expires_in: Option<u64>,
    #[serde(default, deserialize_with = "lenient_u64")]
    ext_expires_in: Option<u64>,
    scope: Option<String>,
    client_info: Option<String>,
}

/// An OAuth error body, with Microsoft's additions when present.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OAuthError {
    pub error: String,
    #[serde(default)]
    pub error_description: Option<String>,
    #[serde(default)]
    pub error_codes: Vec<i64>,
    #[serde(default)]
    pub suberror: Option<String>,
    #[serde(default)]
    pub trace_id: Option<String>,
    #[serde(default)]
    pub correlation_id: Option<String>,
}

impl OAuthError {
    /// The description's first sentence, without Microsoft's trailing trace, correlation
    /// id and timestamp lines.
    pub fn summary(&self) -> String {
        let mut text = self.error.clone();
        if let Some(d) = &self.error_description {
            let first = d
                .split(['\r', '\n'])
                .next()
                .unwrap_or("")
                .split(" Trace ID:")
                .next()
                .unwrap_or("")
                .trim();
            if !first.is_empty() {
                text.push_str(": ");
                text.push_str(first);
            }
        }
        if let Some(s) = self.suberror.as_deref().filter(|s| !s.is_empty()) {
            text.push_str(&format!(" (suberror {s})"));
        }
        text
    }
}

/// Turns a non-success answer into an error: an OAuth error body when there is one,
/// else the status. 5xx, 408 and 429 are transient.
pub fn error_answer(
    what: &'static str,
    status: u16,
    body: &[u8],
    retry_after: Option<Duration>,
) -> AuthError {
    match serde_json::from_slice::<OAuthError>(body) {
        Ok(e) if !(e.error.is_empty() || status >= 500 || status == 429) => AuthError::Provider {
            what,
            status,
            error: Box::new(e),
        },
        parsed => {
            let transient = status >= 500 || status == 429 || status == 408;
            let detail = match parsed {
                Ok(e) if !e.error.is_empty() => e.summary(),
                _ => format!("HTTP {status}"),
            };
            AuthError::Http {
                what,
                detail: if detail.starts_with("HTTP") {
                    detail
                } else {
                    format!("HTTP {status}: {detail}")
                },
                transient,
                retry_after,
            }
        }
    }
}

/// Reads a token endpoint's answer.
pub fn parse_token_answer(
    what: &'static str,
    status: u16,
    body: &[u8],
    retry_after: Option<Duration>,
) -> Result<TokenResponse, AuthError> {
    if !(200..300).contains(&status) {
        return Err(error_answer(what, status, body, retry_after));
    }
    let doc: TokenDoc = serde_json::from_slice(body).map_err(|_| AuthError::Protocol {
        what,
        detail: "the answer is not JSON of the expected shape".into(),
    })?;
    let access_token = doc
        .access_token
        .filter(|s| !s.is_empty())
        .ok_or(AuthError::Protocol {
            what,
            detail: "the answer has no access_token".into(),
        })?;
    Ok(TokenResponse {
        access_token: SecretString::from(access_token),
        refresh_token: doc
            .refresh_token
            .filter(|s| !s.is_empty())
            .map(SecretString::from),
        id_token: doc
            .id_token
            .filter(|s| !s.is_empty())
            .map(SecretString::from),
        // Clamped to 30 days: no access token lives that long, and chrono's arithmetic
        // must not overflow on a provider's nonsense.
        expires_in: Duration::from_secs(doc.expires_in.unwrap_or(3600).min(MAX_TOKEN_LIFE)),
        ext_expires_in: doc
            .ext_expires_in
            .map(|s| Duration::from_secs(s.min(MAX_TOKEN_LIFE))),
        scope: doc.scope,
        client_info: doc.client_info,
    })
}

/// One poll of the token endpoint during a device flow, read.
#[derive(Debug)]
pub enum PollAnswer {
    /// The person has not finished yet.
    Pending,
    /// Polling too fast: add 5 s to the interval, for good.
    SlowDown,
    Granted(Box<TokenResponse>),
}

/// Classifies a token answer during a device flow. Errors that end the flow come back
/// as the matching [`AuthError`]; a transient failure (network, 5xx) as a transient one.
pub fn classify_poll(answer: Result<TokenResponse, AuthError>) -> Result<PollAnswer, AuthError> {
    match answer {
        Ok(t) => Ok(PollAnswer::Granted(Box::new(t))),
        Err(AuthError::Provider { error, .. }) => match error.error.as_str() {
            "authorization_pending" => Ok(PollAnswer::Pending),
            "slow_down" => Ok(PollAnswer::SlowDown),
            "authorization_declined" | "access_denied" => Err(AuthError::Declined),
            "expired_token" => Err(AuthError::CodeExpired),
            "bad_verification_code" => Err(AuthError::BadCode),
            _ => Err(AuthError::Refused {
                what: "the sign-in",
                error,
            }),
        },
        Err(other) => Err(other),
    }
}

/// The claims of an id token shown to people. The token is decoded, not verified: it
/// came straight from the token endpoint over TLS and only labels the account.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdClaims {
    #[serde(default)]
    pub preferred_username: Option<String>,
    #[serde(default)]
    pub upn: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub oid: Option<String>,
    #[serde(default)]
    pub tid: Option<String>,
    #[serde(default)]
    pub sub: Option<String>,
}

impl IdClaims {
    /// The sign-in name: preferred_username, else upn.
    pub fn username(&self) -> Option<&str> {
        self.preferred_username
            .as_deref()
            .or(self.upn.as_deref())
            .filter(|s| !s.is_empty())
    }
}

/// Decodes an id token's claims; `None` when it is not a JWT.
pub fn decode_id_token(token: &str) -> Option<IdClaims> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Microsoft's `client_info`: base64url JSON `{"uid": …, "utid": …}`. Returns the home
/// account id `uid.utid`.
pub fn decode_client_info(info: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct ClientInfo {
        uid: String,
        utid: String,
    }
    let bytes = URL_SAFE_NO_PAD.decode(info.trim_end_matches('=')).ok()?;
    let ci: ClientInfo = serde_json::from_slice(&bytes).ok()?;
    Some(format!("{}.{}", ci.uid, ci.utid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn discovery_needs_both_endpoints_over_https() {
        let ok = br#"{"issuer":"https://login.microsoftonline.com/t/v2.0",
            "device_authorization_endpoint":"https://login.microsoftonline.com/t/oauth2/v2.0/devicecode",
            "token_endpoint":"https://login.microsoftonline.com/t/oauth2/v2.0/token"}"#;
        let e = parse_discovery("u", ok).unwrap();
        assert!(e.token_endpoint.ends_with("/token"));
        let none = br#"{"token_endpoint":"https://x.example/token"}"#;
        let err = parse_discovery("u", none).unwrap_err().to_string();
        assert!(err.contains("device code grant"), "{err}");
        let plain = br#"{"device_authorization_endpoint":"http://id.example.com/d","token_endpoint":"https://id.example.com/t"}"#;
        let err = parse_discovery("u", plain).unwrap_err().to_string();
        assert!(err.contains("only https is allowed"), "{err}");
        let local = br#"{"device_authorization_endpoint":"http://127.0.0.1:9/d","token_endpoint":"http://[::1]:9/t"}"#;
        assert!(parse_discovery("u", local).is_ok());
    }

    #[test]
    fn device_answers_from_microsoft_and_from_other_providers() {
        let ms = br#"{"device_code":"DC","user_code":"FQK7","verification_uri":"https://microsoft.com/devicelogin",
            "expires_in":900,"interval":5,"message":"To sign in, use a web browser to open the page https://microsoft.com/devicelogin and enter the code FQK7 to authenticate."}"#;
        let c = parse_device_authorization(200, ms).unwrap();
        assert_eq!(c.device_code.expose_secret(), "DC");
        assert_eq!(c.expires_in, Duration::from_secs(900));
        assert!(
            c.instructions()
                .starts_with("To sign in, use a web browser")
        );
        assert!(!format!("{c:?}").contains("\"DC\""));
        // A generic provider: strings for numbers, no interval, no message, a complete URI.
        let generic = br#"{"device_code":"DC","user_code":"WDJB-MJHT","verification_uri":"https://id.example/device",
            "verification_uri_complete":"https://id.example/device?user_code=WDJB-MJHT","expires_in":"600"}"#;
        let c = parse_device_authorization(200, generic).unwrap();
        assert_eq!(c.interval, DEFAULT_INTERVAL);
        assert_eq!(c.expires_in, Duration::from_secs(600));
        let text = c.instructions();
        assert!(
            text.contains("https://id.example/device?user_code=WDJB-MJHT")
                && text.contains("WDJB-MJHT"),
            "{text}"
        );
        let e = parse_device_authorization(200, br#"{"user_code":"x"}"#).unwrap_err();
        assert!(e.to_string().contains("no device_code"), "{e}");
        let e = parse_device_authorization(
            400,
            br#"{"error":"invalid_scope","error_description":"AADSTS70011: The provided value for scope is not valid.\r\nTrace ID: abc"}"#,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "the device code request was refused (HTTP 400): invalid_scope: AADSTS70011: The provided value for scope is not valid."
        );
    }

    fn poll(status: u16, body: &str) -> Result<PollAnswer, AuthError> {
        classify_poll(parse_token_answer("a poll", status, body.as_bytes(), None))
    }

    #[test]
    fn polls_are_classified_on_the_error_field() {
        let err = |e: &str| {
            format!(r#"{{"error":"{e}","error_description":"AADSTS1: x","error_codes":[1]}}"#)
        };
        assert!(matches!(
            poll(400, &err("authorization_pending")),
            Ok(PollAnswer::Pending)
        ));
        assert!(matches!(
            poll(400, &err("slow_down")),
            Ok(PollAnswer::SlowDown)
        ));
        assert!(matches!(
            poll(400, &err("authorization_declined")),
            Err(AuthError::Declined)
        ));
        assert!(matches!(
            poll(400, &err("access_denied")),
            Err(AuthError::Declined)
        ));
        assert!(matches!(
            poll(400, &err("expired_token")),
            Err(AuthError::CodeExpired)
        ));
        assert!(matches!(
            poll(400, &err("bad_verification_code")),
            Err(AuthError::BadCode)
        ));
        let e = poll(400, &err("invalid_grant")).unwrap_err();
        assert!(matches!(e, AuthError::Refused { .. }), "{e:?}");
        assert_eq!(crate::error::Classify::kind(&e), crate::error::Kind::SignIn);
        let e = poll(503, "<html>busy</html>").unwrap_err();
        assert!(crate::error::Classify::kind(&e).retry_may_cure(), "{e:?}");
        let granted = poll(
            200,
            r#"{"token_type":"Bearer","access_token":"AT","refresh_token":"RT","expires_in":"3599","ext_expires_in":3599,"scope":"openid"}"#,
        )
        .unwrap();
        match granted {
            PollAnswer::Granted(t) => {
                assert_eq!(t.access_token.expose_secret(), "AT");
                assert_eq!(t.expires_in, Duration::from_secs(3599));
                assert!(!format!("{t:?}").contains("\"AT\""));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn microsoft_descriptions_lose_their_trace_lines() {
        let e = OAuthError {
            error: "invalid_grant".into(),
            error_description: Some(
                "AADSTS700082: The refresh token has expired due to inactivity.\r\nTrace ID: t\r\nCorrelation ID: c".into(),
            ),
            suberror: Some("bad_token".into()),
            ..OAuthError::default()
        };
        assert_eq!(
            e.summary(),
            "invalid_grant: AADSTS700082: The refresh token has expired due to inactivity. (suberror bad_token)"
        );
    }

    #[test]
    fn id_tokens_and_client_info_decode() {
        let claims = URL_SAFE_NO_PAD.encode(
            br#"{"preferred_username":"admin@contoso.com","name":"Ada","oid":"o","tid":"t","sub":"s"}"#,
        );
        let token = format!("eyJhbGciOiJub25lIn0.{claims}.");
        let c = decode_id_token(&token).unwrap();
        assert_eq!(c.username(), Some("admin@contoso.com"));
        assert_eq!(decode_id_token("not-a-jwt"), None);
        let info = URL_SAFE_NO_PAD.encode(br#"{"uid":"u1","utid":"t1"}"#);
        assert_eq!(decode_client_info(&info).as_deref(), Some("u1.t1"));
        assert_eq!(decode_client_info("!!"), None);
    }
}
