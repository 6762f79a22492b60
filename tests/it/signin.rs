//! Microsoft sign-in end to end: the real binary against the emulated identity provider
//! on loopback (device code flow, refresh, rotation, revocation, the notification hook,
//! the encrypted token file, MSAL import), plus the device flow's protocol cases driven
//! in-process.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use imm_daemon::auth::{self, AuthError};
use imm_emulators::identity::{
    Failure, Flavour, IdentityOptions, IdentityProvider, TEST_CLIENT_ID,
};
use serde_json::Value;

use crate::daemon::{Daemon, config, operations, running, wait_for_state};
use crate::support::{Env, wait_until};

pub(crate) fn provider(opts: IdentityOptions) -> IdentityProvider {
    IdentityProvider::start_in_background(opts).expect("the emulated provider starts")
}

pub(crate) fn fast() -> IdentityOptions {
    IdentityOptions {
        interval: Some(1),
        ..IdentityOptions::default()
    }
}

/// Access tokens with less life than the 5-minute refresh buffer: every use refreshes,
/// yet every token in hand is still valid.
pub(crate) fn short_lived() -> IdentityOptions {
    IdentityOptions {
        access_token_lifetime: Duration::from_secs(200),
        ..fast()
    }
}

/// A home configured for `p` (with `extra` configuration) and signed in through the CLI.
fn signed_in(p: &IdentityProvider, extra: &str) -> Env {
    let env = Env::new();
    config(&env, &sign_in_config(p, extra));
    login(&env, p);
    env
}

/// A configuration signing in against `p`, with tokens in the encrypted file.
pub(crate) fn sign_in_config(p: &IdentityProvider, extra: &str) -> String {
    format!(
        "client_id = \"{TEST_CLIENT_ID}\"\nauthority = \"{}\"\n[heartbeat]\ninterval = \"1h\"\n\
         [sync]\nschedule = \"never\"\n[auth]\ntoken_store = \"file\"\n{extra}",
        p.authority()
    )
}

/// `imm-daemon login` in the background; returns it with the first line it printed.
pub(crate) fn start_login(env: &Env, args: &[&str]) -> (Child, String) {
    let mut child = env
        .std_cmd()
        .arg("login")
        .args(args)
        .env("IMM_HOME", env.home.path())
        .env_remove("IMM_CONFIG")
        .env_remove("IMM_TOKEN_PASSPHRASE")
        .env_remove("CREDENTIALS_DIRECTORY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut first)
        .unwrap();
    (child, first)
}

pub(crate) fn finish(child: Child) -> (Option<i32>, String, String) {
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Signs in through the CLI, approving the code as the person would.
pub(crate) fn login(env: &Env, p: &IdentityProvider) {
    let (child, first) = start_login(env, &[]);
    let code = p
        .wait_for_user_code(Duration::from_secs(10))
        .expect("a device code was issued");
    assert!(first.contains(&code), "{first}");
    assert!(p.approve(&code));
    let (status, out, err) = finish(child);
    assert_eq!(status, Some(0), "{out}\n{err}");
    assert!(
        out.contains("Signed in as adele.vance@contoso.onmicrosoft.com"),
        "{out}"
    );
}

/// Takes the Exchange access token too, as the daemon's first sign-in step would, so
/// that a test which kills the daemon at random moments never kills it mid-refresh.
/// The emulated provider, stricter than Entra, refuses a rotated refresh token at once,
/// so a kill between its answer and the save would end the sign-in: a loss no client
/// can prevent, and not what those tests are about.
pub(crate) fn take_both_tokens(env: &Env) {
    env.ok(&["token", "--resource", "exchange", "--show"]);
}

pub(crate) fn status(env: &Env) -> Value {
    let out = env.cmd().args(["status", "--json"]).output().unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Every file below `dir`, recursively.
fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else if !p.is_symlink() && p.is_file() {
            out.push(p);
        }
    }
    out
}

/// No issued token appears in any file under IMM_HOME (database, logs, key, store).
pub(crate) fn assert_no_secret_on_disk(env: &Env, p: &IdentityProvider) {
    let secrets = p.stats().issued_secrets;
    assert!(!secrets.is_empty());
    for f in files(env.home.path()) {
        let bytes = std::fs::read(&f).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        for s in &secrets {
            assert!(
                !text.contains(s.as_str()),
                "a token is readable in {}",
                f.display()
            );
        }
    }
}

#[test]
fn login_in_the_terminal_then_tokens_for_both_resources_and_a_status() {
    let p = provider(fast());
    let env = Env::new();
    // Not configured: a clear error and the configuration exit code.
    let err = env.fails(&["login"], 78);
    assert!(err.contains("set `client_id`"), "{err}");
    config(&env, &sign_in_config(&p, ""));
    login(&env, &p);
    let s = status(&env);
    let si = &s["signin"];
    assert_eq!(si["state"], "signed_in", "{s}");
    assert_eq!(si["account"], "adele.vance@contoso.onmicrosoft.com");
    assert_eq!(si["method"], "device_code");
    assert_eq!(si["backend"], "file");
    assert!(
        si["access"]["graph"]["expires_in_secs"].as_i64().unwrap() > 3000,
        "{si}"
    );
    assert!(si["refresh_token_age_secs"].as_i64().unwrap() < 60);
    // The device code asked for the Graph scopes with the sign-in scopes.
    let scopes = &p.stats().device_code_scopes[0];
    for want in [
        "openid",
        "profile",
        "offline_access",
        "https://graph.microsoft.com/Mail.Send",
    ] {
        assert!(scopes.split(' ').any(|s| s == want), "{scopes}");
    }

    // The Graph token is fresh: handed out without a refresh. Exchange's takes one.
    let graph = env.ok(&["token", "--resource", "graph", "--show"]);
    assert!(p.stats().issued_secrets.contains(&graph.trim().to_string()));
    assert_eq!(p.stats().refresh_grants, 0);
    let exchange = env.ok(&["token", "--resource", "exchange", "--show"]);
    assert_ne!(exchange.trim(), graph.trim());
    let info = p.access_token_info(exchange.trim()).unwrap();
    assert_eq!(info.resource, "https://outlook.office365.com");
    assert_eq!(p.stats().refresh_grants, 1);
    let err = env.fails(&["token", "--resource", "graph"], 2);
    assert!(err.contains("--show"), "{err}");

    let ops = operations(&env);
    assert!(ops.contains(&("LOGIN".into(), "success".into())), "{ops:?}");
    assert!(
        ops.contains(&("TOKEN_REFRESH".into(), "success".into())),
        "{ops:?}"
    );
    assert_no_secret_on_disk(&env, &p);

    // Logout removes the tokens; the next token request says to sign in.
    let out = env.ok(&["logout"]);
    assert!(out.contains("file"), "{out}");
    assert!(!env.home.path().join("data/tokens.enc").exists());
    assert_eq!(status(&env)["signin"]["state"], "signed_out");
    let err = env.fails(&["token", "--resource", "graph", "--show"], 1);
    assert!(err.contains("imm-daemon login"), "{err}");
    assert!(operations(&env).contains(&("LOGOUT".into(), "success".into())));
}

#[test]
fn tokens_survive_three_daemon_restarts_without_a_new_sign_in() {
    // Access tokens shorter than the refresh buffer: every start must refresh.
    let p = provider(short_lived());
    let env = signed_in(&p, "");
    for round in 1..=3 {
        let mut daemon = Daemon::start(&env);
        let s = wait_for_state(&env, "the first cycle", |s| running(s) && s["cycles"] == 1);
        let step = &s["last_cycle"]["steps"][0];
        assert_eq!(step["step"], "sign_in");
        assert_eq!(step["status"], "ok", "round {round}: {s}");
        daemon.signal("TERM");
        let (code, log) = daemon.wait(Duration::from_secs(10));
        assert_eq!(code, Some(0), "{log}");
        for secret in p.stats().issued_secrets {
            assert!(!log.contains(&secret), "a token in the daemon's log");
        }
    }
    let st = p.stats();
    assert_eq!(st.device_code_requests, 1, "one sign-in only");
    // Graph and Exchange refreshed at each of the three starts; no token presented twice.
    assert_eq!(st.refresh_grants, 6);
    assert_eq!(st.refresh_reuse, 0);
    assert_no_secret_on_disk(&env, &p);
}

#[test]
fn concurrent_processes_never_present_a_rotated_refresh_token() {
    let p = provider(short_lived());
    let env = signed_in(&p, "");
    let children: Vec<Child> = (0..4)
        .map(|i| {
            let resource = if i % 2 == 0 { "graph" } else { "exchange" };
            env.std_cmd()
                .args(["token", "--resource", resource, "--show"])
                .env("IMM_HOME", env.home.path())
                .env_remove("IMM_CONFIG")
                .env_remove("IMM_TOKEN_PASSPHRASE")
                .env_remove("CREDENTIALS_DIRECTORY")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let (code, out, err) = finish(c);
        assert_eq!(code, Some(0), "{out}{err}");
    }
    let st = p.stats();
    assert_eq!(st.refresh_grants, 4);
    assert_eq!(
        st.refresh_reuse, 0,
        "a rotated refresh token was presented again"
    );
}

#[test]
fn a_revoked_grant_makes_sign_in_required_notifies_with_the_code_and_recovers() {
    let p = provider(short_lived());
    let env = Env::new();
    let events = env.home.path().join("events.log");
    let hook = env.write(
        "hook.sh",
        format!(
            "#!/bin/sh\n{{ echo \"event=$IMM_EVENT code=$IMM_USER_CODE uri=$IMM_VERIFICATION_URI expires=$IMM_EXPIRES_AT\"; echo \"tunables=${{GLIBC_TUNABLES-unset}} restarted=${{IMM_DAEMON_RESTARTED-unset}}\"; }} >> '{}'\n",
            events.display()
        ),
    );
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    config(
        &env,
        &sign_in_config(
            &p,
            &format!("[notify]\ncommand = [\"{}\"]\n", hook.display()),
        ),
    );
    login(&env, &p);
    p.revoke_grants();

    let mut daemon = Daemon::start(&env);
    // The refresh fails with invalid_grant; the daemon asks for a device code itself.
    let code = p
        .wait_for_user_code(Duration::from_secs(15))
        .expect("the daemon requested a device code");
    let deadline = Instant::now() + Duration::from_secs(15);
    let s = loop {
        let s = status(&env);
        if s["signin"]["pending"]["user_code"] == code.as_str() {
            break s;
        }
        assert!(Instant::now() < deadline, "no pending code in status: {s}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(s["signin"]["state"], "sign_in_required", "{s}");
    assert!(
        s["signin"]["required_reason"]
            .as_str()
            .unwrap()
            .contains("invalid_grant"),
        "{s}"
    );
    assert_eq!(s["health"], "attention");
    assert_eq!(
        env.cmd().arg("status").output().unwrap().status.code(),
        Some(1)
    );
    // The hook ran once for this code, with the code in its environment.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&events)
        .unwrap_or_default()
        .contains("login_required")
    {
        assert!(Instant::now() < deadline, "the hook did not run");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The hook has the environment the daemon was given, not the tunables the daemon
    // started itself again with (`memory::exec_without_thread_cache`).
    let given = std::env::var_os("GLIBC_TUNABLES")
        .map_or_else(|| "unset".into(), |v| v.to_string_lossy().into_owned());
    assert!(
        std::fs::read_to_string(&events)
            .unwrap()
            .contains(&format!("tunables={given} restarted=unset\n")),
        "{}",
        std::fs::read_to_string(&events).unwrap()
    );
    // `login --no-wait` shows the daemon's code instead of starting a flow of its own.
    let (child, first) = start_login(&env, &["--no-wait"]);
    let (code_status, _, _) = finish(child);
    assert_eq!(code_status, Some(0));
    assert!(first.contains(&code), "{first}");
    assert_eq!(
        p.stats().device_code_requests,
        2,
        "login --no-wait asked for no code"
    );

    // A person approves; the daemon stores the tokens and is healthy again.
    let (waiter, _) = start_login(&env, &[]);
    assert!(p.approve(&code));
    let (w, out, err) = finish(waiter);
    assert_eq!(w, Some(0), "{out}{err}");
    assert!(out.contains("Signed in as"), "{out}");
    let s = status(&env);
    assert_eq!(s["signin"]["state"], "signed_in", "{s}");
    let log = std::fs::read_to_string(&events).unwrap();
    let required: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("event=login_required"))
        .collect();
    assert_eq!(required.len(), 1, "{log}");
    assert!(required[0].contains(&format!("code={code}")), "{log}");
    assert!(log.contains("event=token_refresh_failed"), "{log}");
    assert!(log.contains("event=login_succeeded"), "{log}");
    let ops = operations(&env);
    for op in ["LOGIN_REQUIRED", "LOGIN"] {
        assert!(ops.iter().any(|(o, _)| o == op), "{op} missing: {ops:?}");
    }
    daemon.signal("TERM");
    daemon.wait(Duration::from_secs(10));
    assert_no_secret_on_disk(&env, &p);
}

#[test]
fn an_unreadable_token_file_is_moved_aside_and_the_daemon_asks_for_a_sign_in() {
    let p = provider(fast());
    let env = signed_in(&p, "");
    let store = env.home.path().join("data/tokens.enc");
    let mut bytes = std::fs::read(&store).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&store, &bytes).unwrap();

    let mut daemon = Daemon::start(&env);
    let s = wait_for_state(&env, "the first cycle", |s| {
        running(s) && s["cycles"].as_u64() >= Some(1)
    });
    let step = &s["last_cycle"]["steps"][0];
    assert_eq!(step["status"], "failed", "{s}");
    assert_eq!(step["needs_attention"], true);
    assert_eq!(step["kind"], "sign_in", "{s}");
    let st = status(&env);
    assert_eq!(st["signin"]["state"], "sign_in_required", "{st}");
    assert!(
        st["signin"]["required_reason"]
            .as_str()
            .unwrap()
            .contains("tokens.enc"),
        "{st}"
    );
    let aside: Vec<_> = files(&env.home.path().join("data"))
        .into_iter()
        .filter(|f| {
            f.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("tokens.enc.")
        })
        .collect();
    assert_eq!(aside.len(), 1, "the file was moved aside, not deleted");
    assert_eq!(std::fs::read(&aside[0]).unwrap(), bytes);
    assert!(p.wait_for_user_code(Duration::from_secs(10)).is_some());
    daemon.signal("TERM");
    let (code, _) = daemon.wait(Duration::from_secs(10));
    assert_eq!(code, Some(0));
}

#[test]
fn an_msal_token_cache_is_imported_and_its_refresh_token_used() {
    let p = provider(fast());
    // A refresh token the emulated provider knows, as a Python MSAL prototype holds it.
    let rt = runtime().block_on(async {
        let http = imm_daemon::http::client(&Default::default()).unwrap();
        let url = format!("{}/v2.0/.well-known/openid-configuration", p.authority());
        let ep = auth::discover(&http, &url).await.unwrap();
        let code = auth::device::request_code(
            &http,
            &ep,
            TEST_CLIENT_ID,
            "openid offline_access https://graph.microsoft.com/User.Read",
        )
        .await
        .unwrap();
        assert!(p.approve(&code.user_code));
        let t = auth::device::poll_for_tokens(
            &http,
            &ep,
            TEST_CLIENT_ID,
            &code,
            Duration::from_secs(30),
            &Default::default(),
        )
        .await
        .unwrap();
        use secrecy::ExposeSecret;
        t.refresh_token.unwrap().expose_secret().to_string()
    });
    let home = "uid1.utid1";
    // As MSAL records the emulated provider: its host, and its token endpoint's tenant.
    let tid = imm_emulators::identity::TestUser::default().tid;
    let cache = serde_json::json!({
        "AccessToken": {},
        "RefreshToken": {
            format!("{home}-127.0.0.1-refreshtoken-{TEST_CLIENT_ID}--openid offline_access"): {
                "credential_type": "RefreshToken", "secret": rt, "home_account_id": home,
                "environment": "127.0.0.1", "client_id": TEST_CLIENT_ID,
                "target": "openid offline_access https://graph.microsoft.com/User.Read",
                "last_modification_time": "1763700000"
            },
            "other-127.0.0.1-refreshtoken-00000000-0000-0000-0000-000000000001--": {
                "credential_type": "RefreshToken", "secret": "not-ours", "home_account_id": "other",
                "environment": "127.0.0.1", "client_id": "00000000-0000-0000-0000-000000000001"
            }
        },
        "IdToken": {},
        "Account": {
            format!("{home}-127.0.0.1-{tid}"): {
                "home_account_id": home, "environment": "127.0.0.1", "realm": tid,
                "local_account_id": "oid-1", "username": "adele.vance@contoso.onmicrosoft.com",
                "authority_type": "MSSTS"
            }
        },
        "AppMetadata": {
            format!("appmetadata-127.0.0.1-{TEST_CLIENT_ID}"): {"client_id": TEST_CLIENT_ID, "environment": "127.0.0.1"}
        }
    });
    let env = Env::new();
    config(&env, &sign_in_config(&p, ""));
    let file = env.write(
        "msal_cache.json",
        serde_json::to_vec_pretty(&cache).unwrap(),
    );
    let out = env.ok(&["login", "--import-msal-cache", file.to_str().unwrap()]);
    assert!(
        out.contains("Signed in as adele.vance@contoso.onmicrosoft.com"),
        "{out}"
    );
    let s = status(&env);
    assert_eq!(s["signin"]["method"], "msal_import", "{s}");
    // No access token came along: the first one is a refresh with the imported token.
    let token = env.ok(&["token", "--resource", "graph", "--show"]);
    assert!(p.access_token_info(token.trim()).is_some());
    assert_eq!(p.stats().refresh_reuse, 0);
    // A cache of another app is refused, naming both client ids.
    let foreign = env.write(
        "foreign.json",
        serde_json::to_vec(&serde_json::json!({"RefreshToken": {"k": {"secret": "x", "client_id": "00000000-0000-0000-0000-000000000001", "home_account_id": "h"}}})).unwrap(),
    );
    let err = env.fails(
        &["login", "--import-msal-cache", foreign.to_str().unwrap()],
        1,
    );
    assert!(
        err.contains("00000000-0000-0000-0000-000000000001") && err.contains(TEST_CLIENT_ID),
        "{err}"
    );
    assert!(!err.contains("\"x\""));
}

#[test]
fn a_generic_openid_provider_works_through_oidc_authority() {
    let p = provider(IdentityOptions {
        flavour: Flavour::Generic,
        interval: Some(1),
        ..IdentityOptions::default()
    });
    let env = Env::new();
    config(
        &env,
        &format!(
            "client_id = \"{TEST_CLIENT_ID}\"\noidc_authority = \"{}\"\n[sync]\nschedule = \"never\"\n[auth]\ntoken_store = \"file\"\n\
             graph_scopes = [\"mail.send\"]\nexchange_scopes = [\"mail.send\"]\n",
            p.authority()
        ),
    );
    let (child, first) = start_login(&env, &[]);
    let code = p.wait_for_user_code(Duration::from_secs(10)).unwrap();
    // No provider message: our sentence, with the complete URI.
    assert!(first.contains("user_code="), "{first}");
    assert!(p.approve(&code));
    let (status_code, out, err) = finish(child);
    assert_eq!(status_code, Some(0), "{out}{err}");
    let s = status(&env);
    assert_eq!(s["signin"]["state"], "signed_in");
    env.ok(&["token", "--resource", "exchange", "--show"]);
    assert_eq!(p.stats().refresh_reuse, 0);
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The device flow in-process against the emulated provider; `person` acts once the
/// code is issued, before the first poll.
async fn flow(
    p: &IdentityProvider,
    limit: Duration,
    cancel: &tokio_util::sync::CancellationToken,
    person: impl FnOnce(&IdentityProvider, &auth::DeviceCode),
) -> Result<auth::TokenResponse, AuthError> {
    let http = imm_daemon::http::client(&Default::default()).unwrap();
    let url = format!("{}/v2.0/.well-known/openid-configuration", p.authority());
    let ep = auth::discover(&http, &url).await.unwrap();
    let code = auth::device::request_code(
        &http,
        &ep,
        TEST_CLIENT_ID,
        "openid profile offline_access User.Read",
    )
    .await?;
    person(p, &code);
    auth::device::poll_for_tokens(&http, &ep, TEST_CLIENT_ID, &code, limit, cancel).await
}

#[test]
fn device_flow_refusals_deadline_and_cancellation() {
    let rt = runtime();
    let never = tokio_util::sync::CancellationToken::new();
    let long = Duration::from_secs(30);
    let p = provider(fast());
    let e = rt
        .block_on(flow(&p, long, &never, |p, c| {
            assert!(p.decline(&c.user_code))
        }))
        .unwrap_err();
    assert!(matches!(e, AuthError::Declined), "{e:?}");
    assert_eq!(
        e.to_string(),
        "the sign-in was declined at the verification page"
    );
    let e = rt
        .block_on(flow(&p, long, &never, |p, _| p.expire_codes()))
        .unwrap_err();
    assert!(matches!(e, AuthError::CodeExpired), "{e:?}");
    assert_eq!(
        e.to_string(),
        "the device code expired before the sign-in was completed"
    );
    // A device code the provider does not know.
    let e = rt
        .block_on(async {
            let http = imm_daemon::http::client(&Default::default()).unwrap();
            let url = format!("{}/v2.0/.well-known/openid-configuration", p.authority());
            let ep = auth::discover(&http, &url).await.unwrap();
            let mut code = auth::device::request_code(&http, &ep, TEST_CLIENT_ID, "openid")
                .await
                .unwrap();
            code.device_code = secrecy::SecretString::from("not-a-code");
            auth::device::poll_for_tokens(&http, &ep, TEST_CLIENT_ID, &code, long, &never).await
        })
        .unwrap_err();
    assert!(matches!(e, AuthError::BadCode), "{e:?}");
    // The local deadline ends a flow nobody completes.
    let started = Instant::now();
    let e = rt
        .block_on(flow(&p, Duration::from_millis(2500), &never, |_, _| {}))
        .unwrap_err();
    assert!(matches!(e, AuthError::Deadline { .. }), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // Cancellation ends it at once, before any further poll.
    let cancel = tokio_util::sync::CancellationToken::new();
    let c2 = cancel.clone();
    let polls_before = p.stats().token_polls;
    let e = rt
        .block_on(async {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                c2.cancel();
            });
            flow(&p, long, &cancel, |_, _| {}).await
        })
        .unwrap_err();
    assert!(matches!(e, AuthError::Cancelled), "{e:?}");
    assert_eq!(p.stats().token_polls, polls_before);
}

#[test]
fn pending_then_slow_down_then_granted_and_no_poll_after_the_grant() {
    let rt = runtime();
    let p = provider(fast());
    let never = tokio_util::sync::CancellationToken::new();
    let started = Instant::now();
    let person = &p;
    let tokens = std::thread::scope(|scope| {
        rt.block_on(flow(&p, Duration::from_secs(30), &never, |_, code| {
            let p = person;
            use secrecy::ExposeSecret;
            let device_code = code.device_code.expose_secret().to_string();
            let user_code = code.user_code.clone();
            let token_endpoint = p.token_endpoint();
            scope.spawn(move || {
                // The first poll is answered `authorization_pending`. The second waits at
                // the provider while another poll of the code goes first (a second
                // client, say), a whole interval after the first: that one is on time,
                // and the held one, answered right after it, too fast: slow_down.
                wait_until("the first poll", || p.stats().token_polls >= 1);
                let held = p.hold_next_poll();
                assert!(
                    held.wait_until_arrived(Duration::from_secs(20)),
                    "no second poll"
                );
                let rt = runtime();
                let other: Value = rt.block_on(async {
                    let http = imm_daemon::http::client(&Default::default()).unwrap();
                    http.post(&token_endpoint)
                        .form(&[
                            ("grant_type", auth::device::DEVICE_GRANT),
                            ("client_id", TEST_CLIENT_ID),
                            ("device_code", &device_code),
                        ])
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap()
                });
                assert_eq!(other["error"], "authorization_pending", "{other}");
                held.release();
                wait_until("the slow_down", || p.stats().slow_downs >= 1);
                assert!(p.approve(&user_code));
            });
        }))
    })
    .unwrap();
    use secrecy::ExposeSecret;
    assert!(
        p.stats()
            .issued_secrets
            .contains(&tokens.access_token.expose_secret().to_string())
    );
    let st = p.stats();
    // Another slow_down would mean the client polled again before its new interval.
    assert_eq!(st.slow_downs, 1, "{st:?}");
    assert_eq!(st.device_grants, 1);
    // The first poll after 1 s, the second 1 s later, and after slow_down the interval
    // grew by 5 s: the granting poll came 6 s after that.
    assert!(
        started.elapsed() >= Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    let polls = st.token_polls;
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(p.stats().token_polls, polls, "polled again after the grant");
}

#[test]
fn transient_failures_while_polling_are_waited_out() {
    let rt = runtime();
    let p = provider(fast());
    let never = tokio_util::sync::CancellationToken::new();
    p.fail_token_requests(
        1,
        Failure::Throttled {
            retry_after: "1".into(),
        },
    );
    let t = rt.block_on(async {
        let first = flow(&p, Duration::from_secs(30), &never, |p, c| {
            assert!(p.approve(&c.user_code));
        });
        first.await
    });
    assert!(t.is_ok(), "{t:?}");
    p.fail_token_requests(1, Failure::ServiceUnavailable);
    let t = rt.block_on(flow(&p, Duration::from_secs(30), &never, |p, c| {
        assert!(p.approve(&c.user_code));
    }));
    assert!(t.is_ok(), "{t:?}");
    let st = p.stats();
    assert_eq!(st.injected_failures, 2);
    assert_eq!(st.device_grants, 2);
}

#[test]
fn a_refresh_that_fails_for_a_passing_reason_keeps_the_valid_token_in_use() {
    // 200 s tokens with the 300 s buffer: each use wants a refresh, yet each is valid.
    let p = provider(short_lived());
    let env = signed_in(&p, "");
    let first = env.ok(&["token", "--resource", "graph", "--show"]);
    p.fail_token_requests(1, Failure::ServiceUnavailable);
    let second = env.ok(&["token", "--resource", "graph", "--show"]);
    assert_eq!(second, first, "the still-valid token is handed out");
    p.fail_token_requests(
        1,
        Failure::Throttled {
            retry_after: "2.5".into(),
        },
    );
    assert_eq!(env.ok(&["token", "--resource", "graph", "--show"]), first);
    // Once the provider answers again, the refresh goes through.
    let third = env.ok(&["token", "--resource", "graph", "--show"]);
    assert_ne!(third, first);
    let st = p.stats();
    assert_eq!(st.injected_failures, 2);
    assert_eq!(st.refresh_reuse, 0);
    // In the daemon the failed refresh is a failed (retried) step, not a sign-in.
    p.fail_token_requests(1, Failure::ServiceUnavailable);
    let out = env.cmd().args(["cycle", "--json"]).output().unwrap();
    let c: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(c["steps"][0]["status"], "failed", "{c}");
    assert_eq!(c["steps"][0]["needs_attention"], false, "{c}");
    let kind = c["steps"][0]["kind"].as_str().unwrap_or_default();
    assert!(matches!(kind, "transient" | "rate_limited"), "{c}");
    assert!(
        c["steps"][0]["error"]
            .as_str()
            .unwrap()
            .contains("stays in use"),
        "{c}"
    );
    assert_eq!(status(&env)["signin"]["state"], "signed_in");
}

/// A hook script that appends each event's name and code to `events`.
fn event_hook(env: &Env) -> (std::path::PathBuf, String) {
    let events = env.home.path().join("events.log");
    let hook = env.write(
        "hook.sh",
        format!(
            "#!/bin/sh\necho \"event=$IMM_EVENT code=$IMM_USER_CODE\" >> '{}'\n",
            events.display()
        ),
    );
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    (
        events,
        format!("[notify]\ncommand = [\"{}\"]\n", hook.display()),
    )
}

fn wait_for(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_daemon_replaces_an_unused_code_notifies_per_code_and_leaves_nothing_behind_at_stop() {
    let p = provider(fast());
    let env = Env::new();
    let (events, notify) = event_hook(&env);
    config(&env, &sign_in_config(&p, &notify));
    login(&env, &p);
    p.revoke_grants();
    // The daemon's own refresh fails at its first cycle (a forced refresh: 1 s buffer
    // is not enough for the 1 h tokens, so use `token` to meet invalid_grant first).
    env.fails(&["token", "--resource", "exchange", "--show"], 1);
    assert_eq!(status(&env)["signin"]["state"], "sign_in_required");
    let mut daemon = Daemon::start(&env);
    let first = p
        .wait_for_user_code(Duration::from_secs(15))
        .expect("a first code");
    let lines = |code: &str| {
        std::fs::read_to_string(&events)
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                l.starts_with("event=login_required") && l.ends_with(&format!("code={code}"))
            })
            .count()
    };
    wait_for(
        "the first code's notification",
        Duration::from_secs(10),
        || lines(&first) == 1,
    );
    // The code expires unused: a new one follows at once, and is announced once.
    p.expire_codes();
    let mut second = String::new();
    wait_for("a second code", Duration::from_secs(15), || {
        match p.pending_user_codes().into_iter().find(|c| *c != first) {
            Some(c) => {
                second = c;
                true
            }
            None => false,
        }
    });
    wait_for(
        "the second code's notification",
        Duration::from_secs(10),
        || lines(&second) == 1,
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(lines(&first), 1, "one notification per code");
    assert_eq!(lines(&second), 1, "one notification per code");
    assert_eq!(
        status(&env)["signin"]["pending"]["user_code"],
        second.as_str()
    );
    // A stop ends the flow with the daemon: exit 0 at once, and no poll afterwards.
    let started = Instant::now();
    daemon.signal("TERM");
    let (code, log) = daemon.wait(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{log}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let polls = p.stats().token_polls;
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        p.stats().token_polls,
        polls,
        "a poll after the daemon stopped"
    );
    assert!(
        status(&env)["signin"]["pending"].is_null(),
        "no code shown for a stopped daemon"
    );
}

#[test]
fn a_login_and_a_logout_in_the_cli_are_taken_up_by_the_running_daemon() {
    let p = provider(fast());
    let env = Env::new();
    config(&env, &sign_in_config(&p, ""));
    let mut daemon = Daemon::start(&env);
    wait_for_state(&env, "the first cycle", |s| running(s) && s["cycles"] == 1);
    let c: Value = serde_json::from_str(&env.ok(&["cycle", "--json"])).unwrap();
    assert_eq!(c["steps"][0]["status"], "idle", "{c}");
    assert!(
        c["steps"][0]["summary"]
            .as_str()
            .unwrap()
            .contains("not signed in"),
        "{c}"
    );
    assert_eq!(p.stats().device_code_requests, 0, "nobody asked to sign in");

    login(&env, &p);
    let c: Value = serde_json::from_str(&env.ok(&["cycle", "--json"])).unwrap();
    assert_eq!(c["steps"][0]["status"], "ok", "{c}");
    assert!(
        c["steps"][0]["summary"]
            .as_str()
            .unwrap()
            .contains("adele.vance"),
        "{c}"
    );
    // The daemon got Exchange's token with the refresh token the CLI stored.
    assert_eq!(p.stats().refresh_grants, 1);
    assert_eq!(p.stats().refresh_reuse, 0);

    env.ok(&["logout"]);
    let c: Value = serde_json::from_str(&env.ok(&["cycle", "--json"])).unwrap();
    assert_eq!(c["steps"][0]["status"], "idle", "{c}");
    let s = status(&env);
    assert_eq!(s["signin"]["state"], "signed_out", "{s}");
    assert_eq!(
        p.stats().device_code_requests,
        1,
        "a logout is not a reason to ask for a code"
    );
    let ops = operations(&env);
    assert!(!ops.iter().any(|(o, _)| o == "LOGIN_REQUIRED"), "{ops:?}");
    daemon.signal("TERM");
    assert_eq!(daemon.wait(Duration::from_secs(10)).0, Some(0));
}

#[test]
fn an_unreadable_certificate_bundle_is_named_in_a_clear_error() {
    let p = provider(fast());
    let env = Env::new();
    config(&env, &sign_in_config(&p, ""));
    let bad = env.write("not-a-bundle.pem", "no certificates here\n");
    let out = env
        .cmd()
        .args(["login", "--no-wait"])
        .env("SSL_CERT_FILE", &bad)
        .output()
        .unwrap();
    // --no-wait without a daemon is refused before any network use.
    assert_eq!(out.status.code(), Some(1));
    let out = env
        .cmd()
        .args(["token", "--resource", "graph", "--show"])
        .env("SSL_CERT_FILE", &bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("SSL_CERT_FILE") && err.contains("not-a-bundle.pem"),
        "{err}"
    );
    let out = env
        .cmd()
        .args(["token", "--resource", "graph", "--show"])
        .env("SSL_CERT_FILE", env.home.path().join("missing.pem"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot read SSL_CERT_FILE") && err.contains("missing.pem"),
        "{err}"
    );
}

#[test]
fn proxies_from_the_environment_are_used_and_no_proxy_is_honoured() {
    use std::io::{Read, Write};
    let p = provider(fast());
    let env = signed_in(&p, "");
    // A stand-in proxy that records the first request line and answers 502.
    let proxy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy_url = format!("http://{}", proxy.local_addr().unwrap());
    let seen = std::thread::spawn(move || {
        let (mut conn, _) = proxy.accept().unwrap();
        let mut buf = [0u8; 4096];
        let n = conn.read(&mut buf).unwrap();
        let _ = conn.write_all(
            b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        );
        String::from_utf8_lossy(&buf[..n])
            .lines()
            .next()
            .unwrap_or("")
            .to_string()
    });
    // The Exchange token needs a refresh, so the token endpoint is called.
    let out = env
        .cmd()
        .args(["token", "--resource", "exchange", "--show"])
        .env("HTTP_PROXY", &proxy_url)
        .env("http_proxy", &proxy_url)
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let line = seen.join().unwrap();
    assert!(
        line.starts_with("POST http://127.0.0.1:") || line.starts_with("GET http://127.0.0.1:"),
        "the request did not go through the proxy: {line}"
    );
    // NO_PROXY names the provider's host: straight there.
    let out = env
        .cmd()
        .args(["token", "--resource", "exchange", "--show"])
        .env("HTTP_PROXY", &proxy_url)
        .env("NO_PROXY", "127.0.0.1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `login` in a terminal while the daemon runs unsigned (the first sign-in of a fresh
/// install): the daemon takes the new sign-in at once, not at its next heartbeat.
#[test]
fn a_cli_login_reaches_the_running_daemon_at_once() {
    let p = provider(fast());
    let env = Env::new();
    config(&env, &sign_in_config(&p, ""));
    let daemon = Daemon::start(&env);
    daemon.wait_for_log("imm-daemon running", 0);
    wait_until("the daemon's first cycle", || {
        status(&env)["last_cycle"].is_object()
    });
    assert_ne!(status(&env)["signin"]["state"], "signed_in");
    login(&env, &p);
    // The heartbeat is an hour: only the login's word makes the daemon look now.
    wait_until("the daemon to take the sign-in", || {
        let s = status(&env);
        s["signin"]["state"] == "signed_in"
            && s["last_cycle"]["steps"][0]["summary"]
                .as_str()
                .is_some_and(|t| t.starts_with("signed in as"))
    });
}
