//! The one HTTP client every call to Microsoft (and to a webhook) goes through, and the
//! parsing of the answers every caller needs: `Retry-After`, status classes.
//!
//! TLS is rustls with the ring provider (the aws-lc provider is the slowest crate to
//! build and buys nothing here) and the platform verifier (the system's roots). Extra
//! roots come from `SSL_CERT_FILE` for corporate proxies and private CAs; `HTTPS_PROXY`
//! and `NO_PROXY` are read by reqwest itself. Redirects are never followed: a token
//! request re-posted to another host would carry a refresh token with it.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::config::HttpConfig;

/// The User-Agent every request carries.
pub const USER_AGENT: &str = concat!("imm-daemon/", env!("CARGO_PKG_VERSION"));

/// Errors building the client.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot read SSL_CERT_FILE {path}")]
    CertFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("SSL_CERT_FILE {path} holds no usable PEM certificate")]
    CertParse { path: String },
    #[error("cannot set up the HTTP client")]
    Client(#[source] reqwest::Error),
}

/// How long a connection is kept for reuse once idle. Requests to one service follow
/// each other within milliseconds during a cycle (pages of a listing, a batch of sends),
/// and the next cycle is minutes away, when Microsoft's front ends will have closed the
/// connection anyway. reqwest's default (90 s) kept each connection, with its TLS state
/// and a read buffer grown by the largest answer, in the idle daemon for a minute and a
/// half after every cycle (0.5 MB after a drain of 10,000 mails, measured).
pub const POOL_IDLE: Duration = Duration::from_secs(1);

/// Makes ring the process's rustls provider; later calls do nothing.
pub fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Fails only when another thread installed one first, which is the goal anyway.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// Builds the shared client. Clone it freely: clones share one connection pool.
pub fn client(cfg: &HttpConfig) -> Result<reqwest::Client, BuildError> {
    install_crypto_provider();
    let mut builder = reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .connect_timeout(cfg.connect_timeout.get())
        .timeout(cfg.timeout.get())
        .pool_idle_timeout(POOL_IDLE)
        .redirect(reqwest::redirect::Policy::none());
    if let Some(path) = std::env::var_os("SSL_CERT_FILE").filter(|p| !p.is_empty()) {
        let shown = path.to_string_lossy().into_owned();
        let pem = std::fs::read(&path).map_err(|source| BuildError::CertFile {
            path: shown.clone(),
            source,
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .ok()
            .filter(|c| !c.is_empty())
            .ok_or(BuildError::CertParse { path: shown })?;
        builder = builder.tls_certs_merge(certs);
    }
    builder.build().map_err(BuildError::Client)
}

/// Reads a `Retry-After` value: whole seconds, fractional seconds (Graph sends values
/// such as `2.128`) or an HTTP date. A date in the past means no wait. `None` when the
/// value is none of these.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0)
            .then(|| Duration::from_secs_f64(secs.min(u32::MAX as f64)));
    }
    let at = DateTime::parse_from_rfc2822(v).ok()?.with_timezone(&Utc);
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

/// The `Retry-After` of a response, if it carries a readable one.
pub fn retry_after(headers: &reqwest::header::HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    let v = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    parse_retry_after(v, now)
}

/// Whether a status says "try again later" rather than "this request is wrong".
pub fn is_transient_status(status: reqwest::StatusCode) -> bool {
    status == reqwest::StatusCode::TOO_MANY_REQUESTS
        || status == reqwest::StatusCode::REQUEST_TIMEOUT
        || status.is_server_error()
}

/// A short description of a transport error for logs and audit rows: what failed, never
/// the URL's query (which carries nothing secret here, but the rule is simple to keep).
pub fn describe(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_decode() || e.is_body() {
        "answer could not be read"
    } else if e.is_request() {
        "request failed"
    } else {
        "failed"
    };
    let mut s = match e.url() {
        Some(u) => format!(
            "{} {}{}: {what}",
            u.scheme(),
            u.host_str().unwrap_or(""),
            u.path()
        ),
        None => what.to_string(),
    };
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    /// A loopback HTTP/1.1 server that keeps connections open and counts them.
    fn counting_server() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::io::{BufRead, BufReader, Write};
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let accepted = std::sync::Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                count.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut out = stream;
                    loop {
                        // Read one request's head (these requests have no body).
                        let mut line = String::new();
                        loop {
                            line.clear();
                            match reader.read_line(&mut line) {
                                Ok(0) | Err(_) => return,
                                Ok(_) if line == "\r\n" => break,
                                Ok(_) => {}
                            }
                        }
                        let answer = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if out.write_all(answer.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (url, accepted)
    }

    #[tokio::test]
    async fn idle_connections_are_let_go_soon_after_the_work() {
        use std::sync::atomic::Ordering;
        let (url, accepted) = counting_server();
        let client = client(&HttpConfig::default()).unwrap();
        let get = || async { client.get(&url).send().await.unwrap().text().await.unwrap() };
        // Back to back, as within a cycle: one connection serves both.
        assert_eq!(get().await, "ok");
        assert_eq!(get().await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        // Idle for longer than the pool keeps a connection (at most two of its checks):
        // the next request needs a new one. reqwest's default would have reused it.
        tokio::time::sleep(POOL_IDLE * 2 + Duration::from_millis(500)).await;
        assert_eq!(get().await, "ok");
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "the idle connection was kept"
        );
    }

    #[test]
    fn retry_after_takes_seconds_fractions_and_dates() {
        let now = Utc.with_ymd_and_hms(2026, 11, 21, 10, 0, 0).unwrap();
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after(" 2.128 ", now),
            Some(Duration::from_millis(2128))
        );
        assert_eq!(
            parse_retry_after("Sat, 21 Nov 2026 10:00:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sat, 21 Nov 2026 09:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("-1", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("NaN", now), None);
    }

    /// A token endpoint that answers with a redirect must not make the client carry the
    /// form (with its refresh token) to wherever the redirect points: every redirect
    /// status comes back to the caller, and the other host hears nothing.
    #[tokio::test(flavor = "current_thread")]
    async fn redirects_are_never_followed() {
        use wiremock::matchers::{any, method, path};
        use wiremock::{Mock, MockServer, ResponseTemplate};
        let elsewhere = MockServer::start().await;
        Mock::given(any())
            .respond_with(ResponseTemplate::new(200).set_body_string("followed"))
            .mount(&elsewhere)
            .await;
        let origin = MockServer::start().await;
        let http = client(&HttpConfig::default()).unwrap();
        for status in [301, 302, 303, 307, 308] {
            let to = format!("{}/stolen/{status}", elsewhere.uri());
            let _post = Mock::given(method("POST"))
                .and(path("/token"))
                .respond_with(ResponseTemplate::new(status).insert_header("Location", &to))
                .expect(1)
                .mount_as_scoped(&origin)
                .await;
            let _get = Mock::given(method("GET"))
                .and(path("/discovery"))
                .respond_with(ResponseTemplate::new(status).insert_header("Location", &to))
                .expect(1)
                .mount_as_scoped(&origin)
                .await;
            let resp = http
                .post(format!("{}/token", origin.uri()))
                .form(&[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", "0.refresh-token-that-stays-home"),
                ])
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status().as_u16(), status);
            assert_eq!(resp.headers()[reqwest::header::LOCATION], to.as_str());
            let resp = http
                .get(format!("{}/discovery", origin.uri()))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status().as_u16(), status);
        }
        let heard = elsewhere.received_requests().await.unwrap();
        assert!(heard.is_empty(), "a redirect was followed: {heard:?}");
    }

    #[test]
    fn the_client_builds_with_the_defaults() {
        let cfg = HttpConfig::default();
        assert!(client(&cfg).is_ok());
        assert!(USER_AGENT.starts_with("imm-daemon/"));
    }
}
