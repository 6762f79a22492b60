//! Event hooks: tells a person that a sign-in is needed (with the device code), that one
//! succeeded, or that a token refresh failed, through the `[notify]` command, desktop
//! notification and webhook. Events carry only what may be shown to people, never tokens.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

use crate::config::{Command as CommandLine, EndpointUrl, NotifyConfig};
use crate::time::stamp_secs;

/// The name desktop notifications are shown under.
const APP_NAME: &str = "imm-daemon";

/// How much of a hook's stderr (and stdout, for the debug log) is kept.
const EXCERPT_BYTES: usize = 500;

/// How long a finished hook's pipes may stay open: a program that left something running
/// in the background must not make the hook look hung.
const PIPE_GRACE: Duration = Duration::from_millis(200);

/// Every variable an event can set. Inherited ones are removed first, so a hook never
/// sees a stale value for a field the event does not have.
const EVENT_VARS: [&str; 12] = [
    "IMM_EVENT",
    "IMM_USER_CODE",
    "IMM_VERIFICATION_URI",
    "IMM_VERIFICATION_URI_COMPLETE",
    "IMM_MESSAGE",
    "IMM_EXPIRES_AT",
    "IMM_ACCOUNT",
    "IMM_REASON",
    "IMM_RESOURCE",
    "IMM_ERROR",
    "IMM_MAILBOXES",
    "IMM_COUNT",
];

/// Inherited variables a hook command never receives: the token file's passphrase.
const WITHHELD_VARS: [&str; 2] = ["IMM_TOKEN_PASSPHRASE", "CREDENTIALS_DIRECTORY"];

/// Something a person may need to know about. Nothing here is secret: a user code is
/// meant to be shown to people; device codes and tokens never appear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A sign-in is needed and a device code is ready.
    LoginRequired {
        user_code: String,
        verification_uri: String,
        /// The verification URI with the code filled in, when the provider sends one.
        verification_uri_complete: Option<String>,
        /// The provider's instructions, which include the code.
        message: String,
        expires_at: DateTime<Utc>,
        account: Option<String>,
        /// Why a sign-in is needed (no token yet, refresh token expired, …).
        reason: String,
    },
    /// A sign-in finished.
    LoginSucceeded { account: String },
    /// A token could not be refreshed.
    TokenRefreshFailed {
        resource: String,
        error: String,
        account: Option<String>,
    },
    /// Inactive mailboxes lost their last hold in a sync: Exchange purges them after the
    /// retention period. Each entry names one (`Name <address> (ExchangeGuid)`).
    HoldsReleased { mailboxes: Vec<String> },
}

/// Mailboxes a `holds_released` event names at most; the count says how many there were.
const RELEASED_LISTED: usize = 50;

impl Event {
    /// `login_required`, `login_succeeded` or `token_refresh_failed`.
    pub fn name(&self) -> &'static str {
        match self {
            Event::LoginRequired { .. } => "login_required",
            Event::LoginSucceeded { .. } => "login_succeeded",
            Event::TokenRefreshFailed { .. } => "token_refresh_failed",
            Event::HoldsReleased { .. } => "holds_released",
        }
    }

    /// The event's fields by name, an absent optional one as `None`, times in RFC 3339 UTC.
    pub fn fields(&self) -> Vec<(&'static str, Option<String>)> {
        match self {
            Event::LoginRequired {
                user_code,
                verification_uri,
                verification_uri_complete,
                message,
                expires_at,
                account,
                reason,
            } => vec![
                ("user_code", Some(user_code.clone())),
                ("verification_uri", Some(verification_uri.clone())),
                (
                    "verification_uri_complete",
                    verification_uri_complete.clone(),
                ),
                ("message", Some(message.clone())),
                ("expires_at", Some(stamp_secs(*expires_at))),
                ("account", account.clone()),
                ("reason", Some(reason.clone())),
            ],
            Event::LoginSucceeded { account } => vec![("account", Some(account.clone()))],
            Event::TokenRefreshFailed {
                resource,
                error,
                account,
            } => vec![
                ("resource", Some(resource.clone())),
                ("error", Some(error.clone())),
                ("account", account.clone()),
            ],
            Event::HoldsReleased { mailboxes } => {
                let mut listed = mailboxes
                    .iter()
                    .take(RELEASED_LISTED)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; ");
                if mailboxes.len() > RELEASED_LISTED {
                    listed.push_str(&format!("; and {} more", mailboxes.len() - RELEASED_LISTED));
                }
                vec![
                    ("count", Some(mailboxes.len().to_string())),
                    ("mailboxes", Some(listed)),
                ]
            }
        }
    }

    /// The webhook's body: `event`, `at` (when it was sent) and every field, absent
    /// ones as `null`.
    pub fn to_json(&self, at: DateTime<Utc>) -> serde_json::Value {
        let mut map = serde_json::Map::new();
        map.insert("event".into(), self.name().into());
        map.insert("at".into(), stamp_secs(at).into());
        for (name, value) in self.fields() {
            map.insert(name.into(), value.into());
        }
        serde_json::Value::Object(map)
    }

    /// The command's environment: `IMM_EVENT` and `IMM_<FIELD>` for each present field.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut vars = vec![("IMM_EVENT".to_string(), self.name().to_string())];
        for (name, value) in self.fields() {
            if let Some(value) = value {
                vars.push((format!("IMM_{}", name.to_ascii_uppercase()), value));
            }
        }
        vars
    }

    /// A desktop notification's title and body.
    pub fn desktop_text(&self) -> (String, String) {
        match self {
            Event::LoginRequired {
                user_code,
                verification_uri,
                message,
                account,
                ..
            } => {
                let title = match account {
                    Some(a) => format!("Microsoft sign-in needed for {a}"),
                    None => "Microsoft sign-in needed".to_string(),
                };
                let body = if message.contains(user_code.as_str()) {
                    message.clone()
                } else {
                    format!("{message} (open {verification_uri} and enter the code {user_code})")
                        .trim_start()
                        .to_string()
                };
                (title, body)
            }
            Event::LoginSucceeded { account } => {
                ("Signed in".to_string(), format!("Signed in as {account}"))
            }
            Event::TokenRefreshFailed {
                resource,
                error,
                account,
            } => {
                let whose = account
                    .as_ref()
                    .map(|a| format!(" of {a}"))
                    .unwrap_or_default();
                (
                    "Token refresh failed".to_string(),
                    format!("The sign-in{whose} for {resource} could not be refreshed: {error}"),
                )
            }
            Event::HoldsReleased { mailboxes } => (
                format!(
                    "{} inactive mailbox(es) lost their last hold",
                    mailboxes.len()
                ),
                format!(
                    "Exchange will purge them after the retention period: {}",
                    mailboxes
                        .iter()
                        .take(5)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            ),
        }
    }
}

/// What one hook did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookResult {
    /// `command`, `desktop` or `webhook`.
    pub hook: &'static str,
    /// Why it failed, lowercase and without a trailing period.
    pub outcome: Result<(), String>,
}

impl Serialize for HookResult {
    /// As `{"hook": "webhook", "ok": false, "error": "…"}`.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("HookResult", 3)?;
        st.serialize_field("hook", self.hook)?;
        st.serialize_field("ok", &self.outcome.is_ok())?;
        st.serialize_field("error", &self.outcome.as_ref().err())?;
        st.end()
    }
}

/// The configured hooks, ready to fire. Cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    command: Option<CommandLine>,
    desktop: bool,
    webhook: Option<EndpointUrl>,
    timeout: Duration,
    http: reqwest::Client,
    /// Where programs are looked up, and the `PATH` every hook process gets.
    search_path: Option<OsString>,
}

impl fmt::Debug for Notifier {
    // The webhook's URL may carry a secret in its path, so only what is configured shows.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notifier")
            .field("command", &self.command.as_ref().map(|c| c.program()))
            .field("desktop", &self.desktop)
            .field("webhook", &self.webhook.is_some())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Notifier {
    /// The hooks of `cfg`; webhooks are sent through `http` (the shared client).
    pub fn new(cfg: &NotifyConfig, http: reqwest::Client) -> Notifier {
        Notifier::with_search_path(cfg, http, std::env::var_os("PATH"))
    }

    /// As [`Notifier::new`], looking programs up in `search_path` instead of `PATH`.
    fn with_search_path(
        cfg: &NotifyConfig,
        http: reqwest::Client,
        search_path: Option<OsString>,
    ) -> Notifier {
        Notifier {
            command: cfg.command.clone(),
            desktop: cfg.desktop,
            webhook: cfg.webhook.clone(),
            timeout: cfg.timeout.get(),
            http,
            search_path,
        }
    }

    /// Whether any hook is configured.
    pub fn is_configured(&self) -> bool {
        self.command.is_some() || self.desktop || self.webhook.is_some()
    }

    /// Runs every configured hook at once, each bounded by the timeout, and reports
    /// what each did (in the order command, desktop, webhook). A failure is logged as a
    /// warning and returned, never raised.
    pub async fn fire(&self, event: &Event) -> Vec<HookResult> {
        let (command, desktop, webhook) = tokio::join!(
            async {
                match &self.command {
                    Some(line) => Some(self.run_command(line, event).await),
                    None => None,
                }
            },
            async {
                if self.desktop {
                    Some(self.show_desktop(event).await)
                } else {
                    None
                }
            },
            async {
                match &self.webhook {
                    Some(url) => Some(self.post_webhook(url, event).await),
                    None => None,
                }
            },
        );
        let results: Vec<HookResult> = [
            ("command", command),
            ("desktop", desktop),
            ("webhook", webhook),
        ]
        .into_iter()
        .filter_map(|(hook, outcome)| outcome.map(|outcome| HookResult { hook, outcome }))
        .collect();
        for r in &results {
            match &r.outcome {
                Ok(()) => tracing::debug!(hook = r.hook, event = event.name(), "notified"),
                Err(why) => tracing::warn!(
                    hook = r.hook,
                    event = event.name(),
                    error = %why,
                    "notification hook failed"
                ),
            }
        }
        results
    }

    /// A process with the settings every hook shares: no stdin, output captured, killed
    /// when dropped, `PATH` set to the search path.
    fn process(&self, program: &OsStr, args: &[String]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // The token file's key sources are never a hook's business.
        for var in WITHHELD_VARS {
            cmd.env_remove(var);
        }
        if let Some(path) = &self.search_path {
            cmd.env("PATH", path);
        }
        cmd
    }

    /// The configured command, with the event in its environment.
    fn command_for(&self, line: &CommandLine, event: &Event) -> tokio::process::Command {
        let mut cmd = self.process(OsStr::new(line.program()), line.args());
        for var in EVENT_VARS {
            cmd.env_remove(var);
        }
        cmd.envs(event.env());
        cmd
    }

    async fn run_command(&self, line: &CommandLine, event: &Event) -> Result<(), String> {
        run(self.command_for(line, event), line.program(), self.timeout).await
    }

    async fn show_desktop(&self, event: &Event) -> Result<(), String> {
        let (title, body) = event.desktop_text();
        let (program, args) = desktop_invocation(
            cfg!(target_os = "macos"),
            &title,
            &body,
            self.search_path.as_deref(),
        )?;
        let shown = program.display().to_string();
        run(
            self.process(program.as_os_str(), &args),
            &shown,
            self.timeout,
        )
        .await
    }

    async fn post_webhook(&self, url: &EndpointUrl, event: &Event) -> Result<(), String> {
        let url = url.as_url();
        // Host and port only: a webhook's path often holds its secret.
        let host = &url[url::Position::BeforeHost..url::Position::AfterPort];
        let timed_out = || {
            format!(
                "webhook {host} timed out after {}",
                humantime::format_duration(self.timeout)
            )
        };
        let send = self
            .http
            .post(url.clone())
            .timeout(self.timeout)
            .json(&event.to_json(Utc::now()))
            .send();
        let response = match tokio::time::timeout(self.timeout, send).await {
            Err(_) => return Err(timed_out()),
            Ok(Err(e)) if e.is_timeout() => return Err(timed_out()),
            Ok(Err(e)) => {
                return Err(format!(
                    "webhook {host}: {}",
                    crate::http::describe(&e.without_url())
                ));
            }
            Ok(Ok(r)) => r,
        };
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("webhook {host} answered {status}"))
        }
    }
}

/// The program and arguments that show a desktop notification: osascript on macOS,
/// else notify-send or, when it is missing, gdbus calling the notification service.
fn desktop_invocation(
    macos: bool,
    title: &str,
    body: &str,
    search_path: Option<&OsStr>,
) -> Result<(PathBuf, Vec<String>), String> {
    if macos {
        let program = find_program("osascript", search_path)
            .ok_or("no desktop notifier (osascript) found")?;
        let script = format!(
            "display notification {} with title {} subtitle {}",
            applescript_string(body),
            applescript_string(APP_NAME),
            applescript_string(title)
        );
        return Ok((program, vec!["-e".into(), script]));
    }
    // Notification servers may read the body as markup; the title is plain text.
    let body = crate::text::escape_markup(body);
    if let Some(program) = find_program("notify-send", search_path) {
        let args = vec![
            format!("--app-name={APP_NAME}"),
            "--".into(),
            title.into(),
            body,
        ];
        return Ok((program, args));
    }
    if let Some(program) = find_program("gdbus", search_path) {
        let mut args: Vec<String> = [
            "call",
            "--session",
            "--dest",
            "org.freedesktop.Notifications",
            "--object-path",
            "/org/freedesktop/Notifications",
            "--method",
            "org.freedesktop.Notifications.Notify",
        ]
        .map(String::from)
        .to_vec();
        // Notify(app_name, replaces_id, app_icon, summary, body, actions, hints, timeout),
        // each in GVariant text form with its type spelled out, so gdbus needs no
        // introspection to read them.
        args.extend([
            gvariant_string(APP_NAME),
            "uint32 0".into(),
            gvariant_string(""),
            gvariant_string(title),
            gvariant_string(&body),
            "@as []".into(),
            "@a{sv} {}".into(),
            "int32 -1".into(),
        ]);
        return Ok((program, args));
    }
    Err("no desktop notifier (notify-send or gdbus) found".into())
}

/// The first executable `name` in the absolute folders of `search_path`.
fn find_program(name: &str, search_path: Option<&OsStr>) -> Option<PathBuf> {
    std::env::split_paths(search_path?)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    let Ok(meta) = p.metadata() else {
        return false;
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        meta.is_file() && meta.permissions().mode() & 0o111 != 0
    }
    #[cfg(not(unix))]
    {
        meta.is_file()
    }
}

/// An AppleScript string literal.
fn applescript_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A GVariant text-format string literal.
fn gvariant_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The first bytes a process wrote; the rest is read and dropped.
#[derive(Default)]
struct Excerpt {
    bytes: Vec<u8>,
    cut: bool,
}

impl Excerpt {
    fn push(&mut self, chunk: &[u8]) {
        let room = EXCERPT_BYTES.saturating_sub(self.bytes.len());
        self.bytes
            .extend_from_slice(&chunk[..chunk.len().min(room)]);
        self.cut |= chunk.len() > room;
    }

    /// On one line, lines joined with `; `.
    fn text(&self) -> String {
        let text = String::from_utf8_lossy(&self.bytes);
        let mut line = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        if self.cut {
            line.push('…');
        }
        line
    }
}

/// Reads from `pipe`, or waits forever once it is closed.
async fn read_some<R: AsyncRead + Unpin>(pipe: &mut Option<R>, buf: &mut [u8]) -> usize {
    match pipe {
        // A read error ends the capture as end of file does.
        Some(p) => p.read(buf).await.unwrap_or(0),
        None => std::future::pending().await,
    }
}

/// Runs `cmd` to its end or to `limit`, whichever is first; on the limit it is killed
/// and reaped (only it: what it started itself lives on, so a hook script should `exec`
/// its last program). `shown` names it in failures.
async fn run(mut cmd: tokio::process::Command, shown: &str, limit: Duration) -> Result<(), String> {
    let mut child = cmd.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!("program `{shown}` not found"),
        _ => format!("cannot run `{shown}`: {e}"),
    })?;
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let (mut out, mut err) = (Excerpt::default(), Excerpt::default());
    let (mut out_buf, mut err_buf) = ([0u8; 1024], [0u8; 1024]);
    let mut status = None;
    let mut until = Instant::now() + limit;
    while status.is_none() || stdout.is_some() || stderr.is_some() {
        tokio::select! {
            s = child.wait(), if status.is_none() => {
                status = Some(s);
                until = until.min(Instant::now() + PIPE_GRACE);
            }
            n = read_some(&mut stdout, &mut out_buf) => match n {
                0 => stdout = None,
                n => out.push(&out_buf[..n]),
            },
            n = read_some(&mut stderr, &mut err_buf) => match n {
                0 => stderr = None,
                n => err.push(&err_buf[..n]),
            },
            () = tokio::time::sleep_until(until) => break,
        }
    }
    let Some(status) = status else {
        // kill() sends SIGKILL and waits, so no zombie is left behind.
        let killed = match child.kill().await {
            Ok(()) => String::new(),
            Err(e) => format!(" (and could not be killed: {e})"),
        };
        return Err(format!(
            "`{shown}` timed out after {}{killed}",
            humantime::format_duration(limit)
        ));
    };
    let status = status.map_err(|e| format!("cannot wait for `{shown}`: {e}"))?;
    if status.success() {
        tracing::debug!(program = shown, stdout = %out.text(), "hook program finished");
        return Ok(());
    }
    let stderr = err.text();
    if stderr.is_empty() {
        Err(format!("`{shown}` failed ({status})"))
    } else {
        Err(format!("`{shown}` failed ({status}): {stderr}"))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::TimeZone;

    use super::*;
    use crate::config::BoundedDuration;

    /// Writes an executable script. The bytes are written by `cp`, not this process, so
    /// no process forked meanwhile by a parallel test holds it open for writing (which
    /// would make running it fail with "text file busy").
    fn script(dir: &Path, name: &str, text: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let source = dir.join(format!("{name}.txt"));
        std::fs::write(&source, text).unwrap();
        let target = dir.join(name);
        let status = std::process::Command::new("cp")
            .arg(&source)
            .arg(&target)
            .status()
            .unwrap();
        assert!(status.success());
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755)).unwrap();
        target
    }

    fn config(command: Option<Vec<String>>, webhook: Option<String>, secs: u64) -> NotifyConfig {
        NotifyConfig {
            command: command.map(|c| CommandLine::try_from(c).unwrap()),
            desktop: false,
            webhook: webhook.map(|u| EndpointUrl::try_from(u).unwrap()),
            timeout: BoundedDuration::new(Duration::from_secs(secs)).unwrap(),
        }
    }

    fn http() -> reqwest::Client {
        crate::http::client(&crate::config::HttpConfig::default()).unwrap()
    }

    fn login_required() -> Event {
        Event::LoginRequired {
            user_code: "ABCD-EFGH".into(),
            verification_uri: "https://microsoft.com/devicelogin".into(),
            verification_uri_complete: Some(
                "https://microsoft.com/devicelogin?otc=ABCD-EFGH".into(),
            ),
            message: "To sign in, open https://microsoft.com/devicelogin and enter the code \
                      ABCD-EFGH; \"quotes\", $HOME and `ticks` stay as they are"
                .into(),
            expires_at: Utc.with_ymd_and_hms(2026, 11, 21, 10, 15, 0).unwrap(),
            account: Some("admin@contoso.com".into()),
            reason: "refresh token expired".into(),
        }
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn read_env_dump(path: &Path) -> BTreeMap<String, String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn is_running(pid: &str) -> bool {
        std::process::Command::new("sh")
            .args(["-c", &format!("kill -0 {pid} 2>/dev/null")])
            .status()
            .unwrap()
            .success()
    }

    #[tokio::test]
    async fn the_command_receives_every_variable_and_no_shell() {
        let dir = tempfile::tempdir().unwrap();
        let hook = script(
            dir.path(),
            "hook",
            "#!/bin/sh\nenv | grep '^IMM_' > \"$1\"\n",
        );
        let dump = dir.path().join("env");
        let cfg = config(
            Some(vec![hook.display().to_string(), dump.display().to_string()]),
            None,
            5,
        );
        let notifier = Notifier::new(&cfg, http());
        assert!(notifier.is_configured());

        let results = notifier.fire(&login_required()).await;
        assert_eq!(
            results,
            vec![HookResult {
                hook: "command",
                outcome: Ok(())
            }]
        );
        let env = read_env_dump(&dump);
        let expected = BTreeMap::from(
            [
                ("IMM_EVENT", "login_required"),
                ("IMM_USER_CODE", "ABCD-EFGH"),
                ("IMM_VERIFICATION_URI", "https://microsoft.com/devicelogin"),
                (
                    "IMM_VERIFICATION_URI_COMPLETE",
                    "https://microsoft.com/devicelogin?otc=ABCD-EFGH",
                ),
                (
                    "IMM_MESSAGE",
                    "To sign in, open https://microsoft.com/devicelogin and enter the code \
                     ABCD-EFGH; \"quotes\", $HOME and `ticks` stay as they are",
                ),
                ("IMM_EXPIRES_AT", "2026-11-21T10:15:00Z"),
                ("IMM_ACCOUNT", "admin@contoso.com"),
                ("IMM_REASON", "refresh token expired"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        // Only the event's variables: any IMM_* the test runner itself has (IMM_HOME,
        // say) are not event variables and are left out of the comparison.
        let event_env: BTreeMap<_, _> = env
            .into_iter()
            .filter(|(k, _)| EVENT_VARS.contains(&k.as_str()))
            .collect();
        assert_eq!(event_env, expected);

        let refresh = Event::TokenRefreshFailed {
            resource: "graph".into(),
            error: "invalid_grant: AADSTS70043".into(),
            account: None,
        };
        notifier.fire(&refresh).await[0].outcome.clone().unwrap();
        let env = read_env_dump(&dump);
        assert_eq!(env["IMM_EVENT"], "token_refresh_failed");
        assert_eq!(env["IMM_RESOURCE"], "graph");
        assert_eq!(env["IMM_ERROR"], "invalid_grant: AADSTS70043");
        for absent in ["IMM_ACCOUNT", "IMM_USER_CODE", "IMM_MESSAGE"] {
            assert!(!env.contains_key(absent), "{absent} in {env:?}");
        }
    }

    #[test]
    fn inherited_event_variables_and_the_token_passphrase_are_removed() {
        let cfg = config(Some(s(&["/bin/true"])), None, 5);
        let notifier = Notifier::new(&cfg, http());
        let event = Event::LoginSucceeded {
            account: "admin@contoso.com".into(),
        };
        let cmd = notifier.command_for(cfg.command.as_ref().unwrap(), &event);
        let envs: BTreeMap<_, _> = cmd
            .as_std()
            .get_envs()
            .map(|(k, v)| (k.to_str().unwrap().to_string(), v.map(|v| v.to_owned())))
            .collect();
        assert_eq!(envs["IMM_TOKEN_PASSPHRASE"], None);
        assert_eq!(envs["IMM_USER_CODE"], None);
        assert_eq!(
            envs["IMM_EVENT"].as_deref(),
            Some(OsStr::new("login_succeeded"))
        );
        assert_eq!(
            envs["IMM_ACCOUNT"].as_deref(),
            Some(OsStr::new("admin@contoso.com"))
        );
    }

    #[tokio::test]
    async fn a_failing_command_is_reported_with_its_status_and_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let long = "x".repeat(2000);
        let hook = script(
            dir.path(),
            "hook",
            &format!(
                "#!/bin/sh\necho 'pager: no route to on-call'\necho 'pager: no route to on-call' >&2\necho '{long}' >&2\nexit 3\n"
            ),
        );
        let notifier = Notifier::new(
            &config(Some(vec![hook.display().to_string()]), None, 5),
            http(),
        );
        let results = notifier.fire(&login_required()).await;
        let why = results[0].outcome.clone().unwrap_err();
        assert!(why.contains("exit status: 3"), "{why}");
        assert!(why.contains(&hook.display().to_string()), "{why}");
        assert!(why.contains("pager: no route to on-call; xxx"), "{why}");
        assert!(why.len() < 800, "{} bytes: the excerpt is cut", why.len());
        assert!(why.ends_with('…'), "{why}");
    }

    #[tokio::test]
    async fn a_hung_command_is_killed_at_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let hook = script(
            dir.path(),
            "hook",
            "#!/bin/sh\necho $$ > \"$1\"\nexec sleep 30\n",
        );
        let pid_file = dir.path().join("pid");
        let notifier = Notifier::new(
            &config(
                Some(vec![
                    hook.display().to_string(),
                    pid_file.display().to_string(),
                ]),
                None,
                1,
            ),
            http(),
        );
        let started = std::time::Instant::now();
        let results = notifier.fire(&login_required()).await;
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(1) && took < Duration::from_millis(1800),
            "{took:?}"
        );
        let why = results[0].outcome.clone().unwrap_err();
        assert!(why.ends_with("timed out after 1s"), "{why}");
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        assert!(!is_running(pid.trim()), "process {pid} is still there");
    }

    #[tokio::test]
    async fn a_finished_command_is_not_held_up_by_what_it_left_running() {
        let dir = tempfile::tempdir().unwrap();
        let hook = script(
            dir.path(),
            "hook",
            "#!/bin/sh\nsleep 3 &\necho $! > \"$1\"\nexit 0\n",
        );
        let pid_file = dir.path().join("pid");
        let notifier = Notifier::new(
            &config(
                Some(vec![
                    hook.display().to_string(),
                    pid_file.display().to_string(),
                ]),
                None,
                2,
            ),
            http(),
        );
        let started = std::time::Instant::now();
        let results = notifier.fire(&login_required()).await;
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(results[0].outcome, Ok(()));
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        let _ = std::process::Command::new("sh")
            .args(["-c", &format!("kill {}", pid.trim())])
            .status();
    }

    #[tokio::test]
    async fn a_missing_program_is_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let absent = dir.path().join("no-such-hook").display().to_string();
        let notifier = Notifier::new(&config(Some(vec![absent.clone()]), None, 5), http());
        let why = notifier.fire(&login_required()).await[0]
            .outcome
            .clone()
            .unwrap_err();
        assert_eq!(why, format!("program `{absent}` not found"));

        // A bare name is looked up in the search path.
        let notifier = Notifier::with_search_path(
            &config(Some(s(&["imm-no-such-hook"])), None, 5),
            http(),
            Some(dir.path().as_os_str().to_owned()),
        );
        let why = notifier.fire(&login_required()).await[0]
            .outcome
            .clone()
            .unwrap_err();
        assert_eq!(why, "program `imm-no-such-hook` not found");
    }

    /// A request the loopback webhook receiver got.
    struct Received {
        at: Instant,
        content_type: Option<String>,
        user_agent: Option<String>,
        body: serde_json::Value,
    }

    /// A webhook receiver on 127.0.0.1 answering every POST to `/hooks/imm` with `status`.
    async fn receiver(status: u16) -> (String, tokio::sync::mpsc::UnboundedReceiver<Received>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let header = |h: &axum::http::HeaderMap, name: &str| {
            h.get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let app = axum::Router::new().route(
            "/hooks/imm",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(Received {
                        at: Instant::now(),
                        content_type: header(&headers, "content-type"),
                        user_agent: header(&headers, "user-agent"),
                        body: serde_json::from_str(&body).unwrap_or_default(),
                    });
                    axum::http::StatusCode::from_u16(status).unwrap()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}/hooks/imm"), rx)
    }

    #[tokio::test]
    async fn the_webhook_receives_the_event_as_json() {
        let (url, mut rx) = receiver(204).await;
        let notifier = Notifier::new(&config(None, Some(url), 5), http());
        let before = Utc::now() - chrono::Duration::seconds(1);
        let results = notifier.fire(&login_required()).await;
        assert_eq!(
            results,
            vec![HookResult {
                hook: "webhook",
                outcome: Ok(())
            }]
        );
        let got = rx.recv().await.unwrap();
        assert_eq!(got.content_type.as_deref(), Some("application/json"));
        assert_eq!(got.user_agent.as_deref(), Some(crate::http::USER_AGENT));
        let at = DateTime::parse_from_rfc3339(got.body["at"].as_str().unwrap()).unwrap();
        assert!(at >= before && at <= Utc::now(), "{at}");
        let mut body = got.body;
        body.as_object_mut().unwrap().remove("at");
        assert_eq!(
            body,
            serde_json::json!({
                "event": "login_required",
                "user_code": "ABCD-EFGH",
                "verification_uri": "https://microsoft.com/devicelogin",
                "verification_uri_complete": "https://microsoft.com/devicelogin?otc=ABCD-EFGH",
                "message": "To sign in, open https://microsoft.com/devicelogin and enter the code ABCD-EFGH; \"quotes\", $HOME and `ticks` stay as they are",
                "expires_at": "2026-11-21T10:15:00Z",
                "account": "admin@contoso.com",
                "reason": "refresh token expired",
            })
        );

        notifier
            .fire(&Event::TokenRefreshFailed {
                resource: "exchange".into(),
                error: "invalid_grant".into(),
                account: None,
            })
            .await;
        let mut body = rx.recv().await.unwrap().body;
        body.as_object_mut().unwrap().remove("at");
        assert_eq!(
            body,
            serde_json::json!({
                "event": "token_refresh_failed",
                "resource": "exchange",
                "error": "invalid_grant",
                "account": null,
            })
        );
    }

    #[tokio::test]
    async fn a_webhook_error_status_is_a_failure() {
        let (url, _rx) = receiver(500).await;
        let notifier = Notifier::new(&config(None, Some(url), 5), http());
        let results = notifier
            .fire(&Event::LoginSucceeded {
                account: "admin@contoso.com".into(),
            })
            .await;
        let why = results[0].outcome.clone().unwrap_err();
        assert!(why.contains("answered 500 Internal Server Error"), "{why}");
        assert!(!why.contains("/hooks/imm"), "the path stays out: {why}");

        // Nothing listening.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let notifier = Notifier::new(
            &config(None, Some(format!("http://{addr}/hooks/imm")), 5),
            http(),
        );
        let why = notifier
            .fire(&Event::LoginSucceeded {
                account: "admin@contoso.com".into(),
            })
            .await[0]
            .outcome
            .clone()
            .unwrap_err();
        assert!(why.contains("could not connect"), "{why}");
        assert!(!why.contains("/hooks/imm"), "the path stays out: {why}");
    }

    #[tokio::test]
    async fn hooks_run_concurrently() {
        let dir = tempfile::tempdir().unwrap();
        let hook = script(dir.path(), "hook", "#!/bin/sh\nexec sleep 30\n");
        let (url, mut rx) = receiver(200).await;
        let notifier = Notifier::new(
            &config(Some(vec![hook.display().to_string()]), Some(url), 1),
            http(),
        );
        let started = Instant::now();
        let results = notifier.fire(&login_required()).await;
        assert!(started.elapsed() < Duration::from_millis(1800));
        assert_eq!(results.len(), 2);
        assert_eq!(results[0].hook, "command");
        assert!(
            results[0]
                .outcome
                .as_ref()
                .unwrap_err()
                .contains("timed out after 1s")
        );
        assert_eq!(results[1].hook, "webhook");
        assert_eq!(results[1].outcome, Ok(()));
        let got = rx.recv().await.unwrap();
        assert!(
            got.at - started < Duration::from_millis(500),
            "the webhook waited {:?} for the command",
            got.at - started
        );
    }

    #[tokio::test]
    async fn desktop_notifications_use_the_platform_program() {
        let dir = tempfile::tempdir().unwrap();
        let args_file = dir.path().join("args");
        let recorder = format!(
            "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done > '{}'\n",
            args_file.display()
        );
        script(dir.path(), "notify-send", &recorder);
        script(dir.path(), "osascript", &recorder);
        let mut cfg = config(None, None, 5);
        cfg.desktop = true;
        let notifier =
            Notifier::with_search_path(&cfg, http(), Some(dir.path().as_os_str().to_owned()));
        assert!(notifier.is_configured());
        let results = notifier.fire(&login_required()).await;
        assert_eq!(
            results,
            vec![HookResult {
                hook: "desktop",
                outcome: Ok(())
            }]
        );
        let args = std::fs::read_to_string(&args_file).unwrap();
        let args: Vec<&str> = args.lines().collect();
        let message = "To sign in, open https://microsoft.com/devicelogin and enter the code \
                       ABCD-EFGH; \"quotes\", $HOME and `ticks` stay as they are";
        if cfg!(target_os = "macos") {
            assert_eq!(args[0], "-e");
            assert!(args[1].contains("with title \"imm-daemon\""), "{args:?}");
        } else {
            assert_eq!(
                args,
                [
                    "--app-name=imm-daemon",
                    "--",
                    "Microsoft sign-in needed for admin@contoso.com",
                    message
                ]
            );
        }
    }

    #[tokio::test]
    async fn without_a_desktop_notifier_the_desktop_hook_fails() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(None, None, 5);
        cfg.desktop = true;
        let notifier =
            Notifier::with_search_path(&cfg, http(), Some(dir.path().as_os_str().to_owned()));
        let why = notifier.fire(&login_required()).await[0]
            .outcome
            .clone()
            .unwrap_err();
        if cfg!(target_os = "macos") {
            assert_eq!(why, "no desktop notifier (osascript) found");
        } else {
            assert_eq!(why, "no desktop notifier (notify-send or gdbus) found");
        }
    }

    #[test]
    fn desktop_invocations_escape_what_each_program_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().as_os_str();
        let title = "Token refresh failed";
        let body = "a \"quoted\" \\ back<slash> & more\nsecond line";

        let osascript = script(dir.path(), "osascript", "#!/bin/sh\n");
        let (program, args) = desktop_invocation(true, title, body, Some(path)).unwrap();
        assert_eq!(program, osascript);
        assert_eq!(
            args,
            [
                "-e",
                "display notification \"a \\\"quoted\\\" \\\\ back<slash> & more\nsecond line\" \
                 with title \"imm-daemon\" subtitle \"Token refresh failed\""
            ]
        );

        let gdbus = script(dir.path(), "gdbus", "#!/bin/sh\n");
        let (program, args) = desktop_invocation(false, title, body, Some(path)).unwrap();
        assert_eq!(program, gdbus);
        assert_eq!(args[7], "org.freedesktop.Notifications.Notify");
        assert_eq!(
            args[8..],
            [
                "\"imm-daemon\"",
                "uint32 0",
                "\"\"",
                "\"Token refresh failed\"",
                "\"a \\\"quoted\\\" \\\\ back&lt;slash&gt; &amp; more\\nsecond line\"",
                "@as []",
                "@a{sv} {}",
                "int32 -1",
            ]
        );

        let notify_send = script(dir.path(), "notify-send", "#!/bin/sh\n");
        let (program, args) = desktop_invocation(false, title, body, Some(path)).unwrap();
        assert_eq!(program, notify_send);
        assert_eq!(
            args,
            [
                "--app-name=imm-daemon",
                "--",
                title,
                "a \"quoted\" \\ back&lt;slash&gt; &amp; more\nsecond line"
            ]
        );

        // Not executable, or in a relative folder: not found.
        let empty = tempfile::tempdir().unwrap();
        std::fs::write(empty.path().join("notify-send"), "#!/bin/sh\n").unwrap();
        assert_eq!(
            desktop_invocation(false, title, body, Some(empty.path().as_os_str())),
            Err("no desktop notifier (notify-send or gdbus) found".into())
        );
        assert_eq!(find_program("sh", Some(OsStr::new("bin"))), None);
        assert_eq!(find_program("sh", None), None);
    }

    #[test]
    fn events_name_themselves_and_describe_themselves() {
        assert_eq!(login_required().name(), "login_required");
        let ok = Event::LoginSucceeded {
            account: "admin@contoso.com".into(),
        };
        assert_eq!(ok.name(), "login_succeeded");
        assert_eq!(
            ok.desktop_text(),
            (
                "Signed in".to_string(),
                "Signed in as admin@contoso.com".to_string()
            )
        );
        let failed = Event::TokenRefreshFailed {
            resource: "graph".into(),
            error: "invalid_grant".into(),
            account: Some("admin@contoso.com".into()),
        };
        assert_eq!(failed.name(), "token_refresh_failed");
        assert_eq!(
            failed.desktop_text().1,
            "The sign-in of admin@contoso.com for graph could not be refreshed: invalid_grant"
        );

        // A provider whose message leaves out the code: the body adds it.
        let terse = Event::LoginRequired {
            user_code: "XY12".into(),
            verification_uri: "https://id.example.com/device".into(),
            verification_uri_complete: None,
            message: "Sign in to continue.".into(),
            expires_at: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
            account: None,
            reason: "no token".into(),
        };
        assert_eq!(
            terse.desktop_text(),
            (
                "Microsoft sign-in needed".to_string(),
                "Sign in to continue. (open https://id.example.com/device and enter the code XY12)"
                    .to_string()
            )
        );
        assert!(
            !terse
                .env()
                .iter()
                .any(|(k, _)| k == "IMM_VERIFICATION_URI_COMPLETE")
        );
        assert!(!terse.env().iter().any(|(k, _)| k == "IMM_ACCOUNT"));
    }

    #[tokio::test]
    async fn nothing_configured_fires_nothing() {
        let notifier = Notifier::new(&NotifyConfig::default(), http());
        assert!(!notifier.is_configured());
        assert!(notifier.fire(&login_required()).await.is_empty());
    }

    #[test]
    fn hook_results_serialize_plainly() {
        let ok = HookResult {
            hook: "command",
            outcome: Ok(()),
        };
        let failed = HookResult {
            hook: "webhook",
            outcome: Err("webhook 127.0.0.1:9 answered 500 Internal Server Error".into()),
        };
        assert_eq!(
            serde_json::to_value([ok, failed]).unwrap(),
            serde_json::json!([
                {"hook": "command", "ok": true, "error": null},
                {"hook": "webhook", "ok": false, "error": "webhook 127.0.0.1:9 answered 500 Internal Server Error"},
            ])
        );
    }
}
