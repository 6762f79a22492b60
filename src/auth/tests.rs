//! The refresh path against loopback servers: a real session (the encrypted token file)
//! and the emulated identity provider.

use std::path::Path;
use std::time::Duration;

use chrono::Utc;
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::*;
use imm_emulators::identity::{IdentityOptions, IdentityProvider, TEST_CLIENT_ID};

/// A token endpoint that redirects the refresh elsewhere (here: to the identity provider
/// that issued the refresh token, which would take it) gets no second request: the
/// refresh fails with the redirect's status and the refresh token went to the token
/// endpoint alone.
#[tokio::test(flavor = "current_thread")]
async fn a_redirected_token_refresh_is_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let idp = IdentityProvider::start(IdentityOptions {
        interval: Some(1),
        ..IdentityOptions::default()
    })
    .await
    .unwrap();
    // The provider this session is configured with: its discovery document names its own
    // token endpoint, which answers with redirects.
    let front = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/.well-known/openid-configuration"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "issuer": front.uri(),
            "device_authorization_endpoint": idp.device_authorization_endpoint(),
            "token_endpoint": format!("{}/token", front.uri()),
        })))
        .mount(&front)
        .await;
    let text = format!(
        "client_id = \"{TEST_CLIENT_ID}\"\noidc_authority = \"{}\"\n[auth]\ntoken_store = \"file\"\n",
        front.uri()
    );
    let config = Config::parse(&text, Path::new("test.toml")).unwrap();
    let paths = Paths::resolve_with(Some(dir.path().to_path_buf()), None, None).unwrap();
    let http = crate::http::client(&config.http).unwrap();
    let settings = Settings::from_config(&config).unwrap();
    let session = Session::open(settings.clone(), &config, &paths, http.clone())
        .await
        .unwrap();

    // A real sign-in at the provider, so the refresh token is one it would honour.
    let at_idp = Endpoints {
        issuer: None,
        device_authorization_endpoint: idp.device_authorization_endpoint(),
        token_endpoint: idp.token_endpoint(),
    };
    let code = device::request_code(
        &http,
        &at_idp,
        TEST_CLIENT_ID,
        &settings.scope(Resource::Graph),
    )
    .await
    .unwrap();
    assert!(idp.approve(&code.user_code));
    let tokens = device::poll_for_tokens(
        &http,
        &at_idp,
        TEST_CLIENT_ID,
        &code,
        Duration::from_secs(30),
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    let refresh_token = tokens.refresh_token.clone().unwrap();
    session.complete_sign_in(tokens, Utc::now()).await.unwrap();
    let before = idp.stats().token_requests;

    for status in [307, 308, 302] {
        let _redirect = Mock::given(method("POST"))
            .and(path("/token"))
            .respond_with(
                ResponseTemplate::new(status).insert_header("Location", idp.token_endpoint()),
            )
            .expect(1)
            .mount_as_scoped(&front)
            .await;
        // No Exchange token is held yet, so this needs a refresh.
        let e = session
            .access_token(Resource::Exchange, Utc::now())
            .await
            .unwrap_err();
        assert!(
            matches!(&e, AuthError::Http { detail, transient: false, .. }
                if *detail == format!("HTTP {status}")),
            "{status}: {e:?}"
        );
        assert_eq!(
            idp.stats().token_requests,
            before,
            "{status}: the redirect was followed to the provider"
        );
    }
    // What the token endpoint heard: each refresh once, carrying the refresh token.
    let posts: Vec<String> = front
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.method.as_str() == "POST")
        .map(|r| String::from_utf8(r.body).unwrap())
        .collect();
    assert_eq!(posts.len(), 3);
    for body in &posts {
        let form: HashMap<String, String> = url::form_urlencoded::parse(body.as_bytes())
            .into_owned()
            .collect();
        assert_eq!(form["grant_type"], "refresh_token");
        assert_eq!(form["refresh_token"], refresh_token.expose_secret());
    }

    // The control: a client that follows redirects hands the same refresh token to the
    // provider, which takes it. The test above would see that.
    let following = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::limited(3))
        .build()
        .unwrap();
    let _redirect = Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(ResponseTemplate::new(307).insert_header("Location", idp.token_endpoint()))
        .mount_as_scoped(&front)
        .await;
    let (status, _, _) = post_form(
        &following,
        "the control refresh",
        &format!("{}/token", front.uri()),
        &[
            ("grant_type", "refresh_token"),
            ("client_id", TEST_CLIENT_ID),
            ("refresh_token", refresh_token.expose_secret()),
            ("scope", &settings.scope(Resource::Exchange)),
        ],
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    assert_eq!(idp.stats().refresh_grants, 1);
}
