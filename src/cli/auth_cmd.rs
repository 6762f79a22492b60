//! `imm-daemon login`, `logout` and `token`: signing in with a device code (in the
//! terminal, or by showing the code the running daemon holds), importing an MSAL cache,
//! signing out of every token store, and printing an access token for scripts.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::{Context, SilentExit, exit};
use crate::audit::{AuditEvent, Operation};
use crate::auth::step::HubView;
use crate::auth::{self, AuthError, Resource, SLOT, Session, Settings, SignInRecord, SignInState};
use crate::control::lock::InstanceLock;
use crate::control::{self, Command};
use crate::error::Classify as _;
use crate::store::Store;

/// Options of `imm-daemon login`.
#[derive(Debug, clap::Args)]
pub struct LoginArgs {
    /// Show the code the running daemon holds and return without waiting.
    #[arg(long)]
    pub no_wait: bool,
    /// Import the sign-in from an MSAL token cache (the JSON MSAL Python writes).
    #[arg(long, value_name = "FILE")]
    pub import_msal_cache: Option<PathBuf>,
    /// With --import-msal-cache: the account to take when the cache holds several, by
    /// any name imm-daemon shows for it (sign-in name, display name, subject or home
    /// account id).
    #[arg(long, value_name = "NAME", requires = "import_msal_cache")]
    pub account: Option<String>,
}

/// Options of `imm-daemon token`.
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    /// Which resource the token is for.
    #[arg(long, value_enum)]
    pub resource: ResourceArg,
    /// Print the token (required: a token on a terminal is a secret on a screen).
    #[arg(long)]
    pub show: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ResourceArg {
    Graph,
    Exchange,
}

impl From<ResourceArg> for Resource {
    fn from(r: ResourceArg) -> Resource {
        match r {
            ResourceArg::Graph => Resource::Graph,
            ResourceArg::Exchange => Resource::Exchange,
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Writes the sign-in record and its audit rows in one transaction.
fn save_record(
    store: &mut Store,
    record: &SignInRecord,
    events: &[AuditEvent],
) -> anyhow::Result<()> {
    let text = serde_json::to_string(record).expect("records serialize");
    store.save_sign_in(SLOT, &text, events, None, Utc::now())?;
    Ok(())
}

fn current_record(store: &Store) -> SignInRecord {
    store
        .sign_in(SLOT)
        .ok()
        .flatten()
        .and_then(|r| serde_json::from_str(&r.record).ok())
        .unwrap_or_default()
}

/// A Ctrl-C (or SIGTERM) cancels `cancel`.
fn cancel_on_signal(cancel: CancellationToken) -> anyhow::Result<()> {
    use futures_util::StreamExt;
    let mut signals = signal_hook_tokio::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])?;
    tokio::spawn(async move {
        if signals.next().await.is_some() {
            cancel.cancel();
        }
    });
    Ok(())
}

fn daemon_view(ctx: &Context) -> Option<HubView> {
    if !InstanceLock::is_held(&ctx.paths.lock_file) {
        return None;
    }
    let data = control::request(
        &ctx.paths.socket,
        Command::SignIn,
        super::daemon_cmd::ANSWER_TIMEOUT,
    )
    .ok()?;
    serde_json::from_value(data).ok()
}

/// `imm-daemon login`.
pub fn login(ctx: &Context, args: LoginArgs) -> anyhow::Result<()> {
    let config = ctx.config()?;
    let settings = Settings::from_config(&config)?;
    if let Some(file) = &args.import_msal_cache {
        return import_msal(ctx, &config, settings, file, args.account.as_deref());
    }
    if let Some(view) = daemon_view(ctx)
        && let Some(pending) = &view.pending
    {
        println!("{}", pending.message);
        println!(
            "(the running daemon holds this code; it expires at {})",
            crate::time::stamp(pending.expires_at)
        );
        if args.no_wait {
            return Ok(());
        }
        return wait_for_daemon(ctx, pending.user_code.clone());
    }
    if args.no_wait {
        anyhow::bail!(
            "no running daemon holds a device code to show; run `imm-daemon login` without --no-wait to sign in here"
        );
    }
    let mut store = ctx.store()?;
    let rt = runtime()?;
    let result = rt.block_on(async {
        let cancel = CancellationToken::new();
        cancel_on_signal(cancel.clone())?;
        let http = crate::http::client(&config.http)?;
        let session = Session::open(settings.clone(), &config, &ctx.paths, http.clone()).await?;
        let mut countdown = None;
        let show = |code: &auth::DeviceCode, window: Duration| {
            println!("{}", code.instructions());
            std::io::stdout().flush().ok();
            countdown = std::io::stderr().is_terminal().then(|| {
                let stop = cancel.child_token();
                let ends = tokio::time::Instant::now() + window;
                let s = stop.clone();
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_secs(1));
                    loop {
                        tokio::select! {
                            _ = s.cancelled() => break,
                            _ = tick.tick() => {
                                let left = ends.saturating_duration_since(tokio::time::Instant::now()).as_secs();
                                eprint!("\rwaiting for the sign-in; the code expires in {:02}:{:02} ", left / 60, left % 60);
                            }
                        }
                    }
                    eprint!("\r\x1b[K");
                });
                stop
            });
        };
        let polled = auth::device::sign_in(&http, &settings, &cancel, show).await;
        if let Some(stop) = countdown {
            stop.cancel();
            tokio::task::yield_now().await;
        }
        let tokens = polled.map_err(auth::device::Attempt::into_error)?;
        let record = session.complete_sign_in(tokens, Utc::now()).await?;
        Ok::<_, anyhow::Error>(record.with_backend(session.backend()))
    });
    rt.shutdown_background();
    match result {
        Ok(record) => {
            save_record(
                &mut store,
                &record,
                &[record.login_event("device_code", "cli")],
            )?;
            print_signed_in(&record);
            tell_daemon(ctx);
            Ok(())
        }
        Err(e) => {
            let reason = format!("{e:#}");
            let _ = store.audit(
                &AuditEvent::new(Operation::LoginFailed)
                    .details(serde_json::json!({"method": "device_code", "by": "cli"}))
                    .failed(reason),
                Utc::now(),
            );
            Err(e)
        }
    }
}

/// Tells a running daemon about the new sign-in, so that it takes it at once (it would
/// at its next heartbeat otherwise).
fn tell_daemon(ctx: &Context) {
    if InstanceLock::is_held(&ctx.paths.lock_file)
        && let Err(e) =
            control::request(&ctx.paths.socket, Command::SignedIn, Duration::from_secs(2))
    {
        tracing::warn!(error = %e, "the running daemon was not told of the sign-in; it takes it at its next heartbeat");
    }
}

fn print_signed_in(record: &SignInRecord) {
    let account = record.account.as_ref();
    println!(
        "Signed in as {}{}.",
        account.map(|a| a.label()).unwrap_or_default(),
        account
            .and_then(|a| a.tenant_id.as_deref())
            .map(|t| format!(" (tenant {t})"))
            .unwrap_or_default()
    );
    if let (Some(b), Some(why)) = (&record.backend, &record.backend_why) {
        println!("Tokens are kept in the {b} store: {why}.");
    }
    if let Some(w) = &record.backend_warning {
        println!("warning: {w}");
    }
}

/// Shows the daemon's progress until its sign-in completes (or the person gives up).
fn wait_for_daemon(ctx: &Context, mut code: String) -> anyhow::Result<()> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    eprintln!(
        "waiting for the daemon to finish the sign-in (Ctrl-C stops waiting; the daemon goes on)"
    );
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(500));
        let Some(view) = daemon_view(ctx) else {
            anyhow::bail!("the daemon stopped before the sign-in completed");
        };
        if let Some(p) = &view.pending {
            if p.user_code != code {
                code = p.user_code.clone();
                println!("The previous code expired. {}", p.message);
            }
            continue;
        }
        if let Some(reason) = view.failed {
            anyhow::bail!("the daemon's sign-in did not complete: {reason}");
        }
        if let Some(r) = view.record.filter(|r| r.state == SignInState::SignedIn) {
            print_signed_in(&r);
            return Ok(());
        }
    }
    Err(SilentExit { code: 130 }.into())
}

fn import_msal(
    ctx: &Context,
    config: &crate::config::Config,
    settings: Settings,
    file: &std::path::Path,
    account: Option<&str>,
) -> anyhow::Result<()> {
    let bytes = zeroize::Zeroizing::new(
        std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?,
    );
    let mut store = ctx.store()?;
    let now = Utc::now();
    let rt = runtime()?;
    let http = crate::http::client(&config.http)?;
    // The cache is checked against the configured authority as MSAL records it, which
    // takes its discovery document (a public one: nothing of the cache is sent).
    let imported = rt
        .block_on(auth::discover(&http, &settings.discovery_url))
        .context(
            "reading the configured authority's discovery document, to check the cache against it",
        )
        .and_then(|endpoints| {
            let origin =
                auth::msal::Origin::new(&settings.discovery_url, &endpoints.token_endpoint);
            Ok(auth::msal::import(
                &bytes, &settings, &origin, account, now,
            )?)
        })
        .with_context(|| format!("importing {}", file.display()));
    let cache = match imported {
        Ok(c) => c,
        Err(e) => {
            rt.shutdown_background();
            let _ = store.audit(
                &AuditEvent::new(Operation::LoginFailed)
                    .details(serde_json::json!({"method": "msal_import", "file": file.display().to_string()}))
                    .failed(format!("{e:#}")),
                now,
            );
            return Err(e);
        }
    };
    let record = rt.block_on(async {
        let session = Session::open(settings, config, &ctx.paths, http).await?;
        let record = session.install(cache).await?;
        Ok::<_, anyhow::Error>(record.with_backend(session.backend()))
    });
    rt.shutdown_background();
    let record = record?;
    let mut event = record.login_event("msal_import", "cli");
    event.details["file"] = file.display().to_string().into();
    event.details["access_tokens"] = serde_json::json!(record.access.keys().collect::<Vec<_>>());
    save_record(&mut store, &record, &[event])?;
    print_signed_in(&record);
    println!(
        "Imported from {}; the daemon refreshes these tokens from now on.",
        file.display()
    );
    tell_daemon(ctx);
    Ok(())
}

/// `imm-daemon logout`.
pub fn logout(ctx: &Context) -> anyhow::Result<()> {
    let config = ctx.config()?;
    let mut store = ctx.store()?;
    let rt = runtime()?;
    let removed = rt.block_on(auth::logout(&config, &ctx.paths));
    rt.shutdown_background();
    let previous = current_record(&store);
    let account = previous.account.as_ref().map(|a| a.label());
    match removed {
        Ok(removed) => {
            let mut event = AuditEvent::new(Operation::Logout)
                .details(serde_json::json!({"removed": removed, "account": account}));
            if let Some(a) = &account {
                event = event.identity(a.clone());
            }
            save_record(&mut store, &SignInRecord::default(), &[event])?;
            if removed.is_empty() {
                println!("No tokens were stored.");
            } else {
                println!(
                    "Signed out; removed the tokens from: {}.",
                    removed.join(", ")
                );
            }
            Ok(())
        }
        Err(e) => {
            let _ = store.audit(
                &AuditEvent::new(Operation::Logout).failed(crate::error::chain(&e)),
                Utc::now(),
            );
            Err(e.into())
        }
    }
}

/// `imm-daemon token`.
pub fn token(ctx: &Context, args: TokenArgs) -> anyhow::Result<()> {
    if !args.show {
        eprintln!(
            "error: refusing to print an access token without --show (it is a secret; scripts pass --show)"
        );
        return Err(SilentExit { code: exit::USAGE }.into());
    }
    let config = ctx.config()?;
    let settings = Settings::from_config(&config)?;
    let resource = Resource::from(args.resource);
    let rt = runtime()?;
    let outcome = rt.block_on(async {
        let http = crate::http::client(&config.http)?;
        let session = Session::open(settings, &config, &ctx.paths, http).await?;
        let got = session.access_token(resource, Utc::now()).await;
        let record = session
            .record()
            .await
            .map(|r| r.with_backend(session.backend()));
        Ok::<_, anyhow::Error>((got, record))
    });
    rt.shutdown_background();
    let (got, record) = outcome?;
    let mut store = ctx.store()?;
    let previous = current_record(&store);
    let account = previous.account_label();
    match got {
        Ok(access) => {
            if access.refreshed
                && let Some(record) = record
            {
                save_record(
                    &mut store,
                    &record,
                    &[AuditEvent::new(Operation::TokenRefresh)
                        .identity(account)
                        .details(serde_json::json!({"resource": resource.as_str(), "result": "ok", "by": "cli"}))],
                )?;
            }
            use secrecy::ExposeSecret;
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", access.token.expose_secret())?;
            Ok(())
        }
        Err(e) => {
            let reason = crate::error::chain(&e);
            let mut events = vec![AuditEvent::new(Operation::TokenRefresh)
                .identity(account.clone())
                .details(serde_json::json!({"resource": resource.as_str(), "result": "failed", "by": "cli"}))
                .failed(reason.clone())];
            if e.kind() == crate::error::Kind::SignIn && !matches!(e, AuthError::NotSignedIn) {
                let mut r = previous.clone();
                if r.state != SignInState::SignInRequired {
                    r.required_since = Some(Utc::now());
                }
                r.state = SignInState::SignInRequired;
                r.required_reason = Some(reason.clone());
                events.push(
                    AuditEvent::new(Operation::LoginRequired)
                        .identity(account)
                        .details(
                            serde_json::json!({"resource": resource.as_str(), "reason": reason}),
                        )
                        .failed(reason.clone()),
                );
                save_record(&mut store, &r, &events)?;
                anyhow::bail!("sign-in required: {reason}; run `imm-daemon login`");
            }
            for ev in &events {
                let _ = store.audit(ev, Utc::now());
            }
            Err(e.into())
        }
    }
}
