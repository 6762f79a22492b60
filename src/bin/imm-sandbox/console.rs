//! The sandbox's console: one server-rendered HTML page (no JavaScript) where a person
//! approves the sign-in, sees the delivered mails, the tenant's mailboxes, the
//! notification hook's events and what the daemon did, and triggers scenarios; the same
//! scenarios as JSON for `imm-sandbox <scenario>` in another terminal; and the webhook
//! the daemon's `[notify]` posts its events to.
//!
//! Every route is under a random key (`http://127.0.0.1:PORT/KEY/`), kept in the home's
//! `sandbox.json` (0600): another local user, or a web page in the person's browser,
//! cannot approve a sign-in or trigger a scenario without it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context as _, bail};
use axum::Router;
use axum::extract::{Form, Json, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use imm_emulators::escape_html as esc;
use imm_emulators::{
    Endpoint, ExchangeFailure, ExchangeServer, GraphFailure, GraphServer, IdentityProvider,
    TenantMailbox, synthetic_tenant,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::daemon::DaemonCli;

/// The file in the home that says where the running sandbox is.
pub const INFO_FILE: &str = "sandbox.json";

/// Lines of activity kept for the page.
const ACTIVITY_KEPT: usize = 200;
/// Mailboxes listed on the page (the whole tenant is in `imm-daemon mailboxes list`).
const MAILBOXES_LISTED: usize = 100;

/// Something a person can make happen in the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "scenario", rename_all = "kebab-case")]
pub enum Action {
    /// Approve every sign-in code that waits for a person.
    Approve,
    ThrottleGraph {
        requests: u32,
        retry_after: u32,
    },
    ThrottleExchange {
        requests: u32,
        retry_after: u32,
    },
    /// Graph delivers the next mail, then answers 504.
    LoseAnswer,
    /// Every grant so far is revoked.
    Revoke,
    ReleaseHolds {
        #[serde(default)]
        mailbox: Option<String>,
    },
    AddMailboxes {
        count: u32,
    },
    RemoveMailboxes {
        count: u32,
    },
    QueueMails {
        count: u32,
    },
    Sync,
}

impl Action {
    /// The limits the subcommands' arguments have, for actions that arrive as JSON.
    fn check(&self) -> Result<(), String> {
        let within = |what: &str, n: u32, lo: u32, hi: u32| {
            if (lo..=hi).contains(&n) {
                Ok(())
            } else {
                Err(format!("{what} must be {lo} to {hi}; got {n}"))
            }
        };
        match self {
            Action::ThrottleGraph {
                requests,
                retry_after,
            }
            | Action::ThrottleExchange {
                requests,
                retry_after,
            } => {
                within("requests", *requests, 1, 100)?;
                within("retry_after", *retry_after, 0, 3600)
            }
            Action::AddMailboxes { count } | Action::RemoveMailboxes { count } => {
                within("count", *count, 1, 100_000)
            }
            Action::QueueMails { count } => within("count", *count, 1, 1000),
            _ => Ok(()),
        }
    }

    /// The scenario a button of the page names, with the page's settings.
    fn from_button(name: &str) -> Option<Action> {
        Some(match name {
            "approve" => Action::Approve,
            "throttle-graph" => Action::ThrottleGraph {
                requests: 3,
                retry_after: 5,
            },
            "throttle-exchange" => Action::ThrottleExchange {
                requests: 3,
                retry_after: 5,
            },
            "lose-answer" => Action::LoseAnswer,
            "revoke" => Action::Revoke,
            "release-holds" => Action::ReleaseHolds { mailbox: None },
            "add-mailboxes" => Action::AddMailboxes { count: 10 },
            "remove-mailboxes" => Action::RemoveMailboxes { count: 5 },
            "queue-mails" => Action::QueueMails { count: 3 },
            "sync" => Action::Sync,
            _ => return None,
        })
    }
}

/// The page's scenario buttons: the name a form posts, the label, what it does.
const BUTTONS: &[(&str, &str, &str)] = &[
    (
        "throttle-graph",
        "Throttle Graph",
        "The next 3 Graph requests answer 429 with Retry-After: 5; a mail is queued to meet them.",
    ),
    (
        "throttle-exchange",
        "Throttle Exchange",
        "The next 3 Exchange requests answer 429 with Retry-After: 5; a sync is asked for.",
    ),
    (
        "lose-answer",
        "Lose Graph's answer",
        "Graph delivers the next mail, then answers 504 (the duplicate trap); a mail is queued.",
    ),
    (
        "revoke",
        "Revoke the sign-in",
        "Refresh and access tokens stop working; the daemon asks for a person and the hook fires.",
    ),
    (
        "release-holds",
        "Release a mailbox's holds",
        "Every hold of one inactive mailbox is removed; the sync reports holds_released.",
    ),
    (
        "add-mailboxes",
        "Add 10 mailboxes",
        "Ten new inactive mailboxes appear; a sync is asked for.",
    ),
    (
        "remove-mailboxes",
        "Remove 5 mailboxes",
        "Five inactive mailboxes leave the tenant; a sync is asked for.",
    ),
    (
        "queue-mails",
        "Queue 3 mails",
        "imm-daemon send queues three mails; the daemon sends them as its bucket allows.",
    ),
    (
        "sync",
        "Sync now",
        "imm-daemon sync: the daemon refreshes the inventory now.",
    ),
];

/// One event the daemon's webhook delivered.
#[derive(Debug, Clone, Serialize)]
pub struct HookEvent {
    pub received_at: String,
    pub event: Value,
}

/// What the page and `/api/state` show besides the emulators' own state.
#[derive(Debug, Default)]
struct View {
    /// The daemon's last `status --json` and its exit code.
    status: Option<(i32, Value)>,
    events: Vec<HookEvent>,
    activity: Vec<String>,
}

/// The emulated tenant, the daemon's commands, and what happened.
pub struct Sandbox {
    pub identity: IdentityProvider,
    pub graph: GraphServer,
    pub exchange: ExchangeServer,
    pub daemon: DaemonCli,
    pub started: Instant,
    /// Print the activity to the terminal too.
    pub echo: bool,
    view: Mutex<View>,
    mails_queued: Mutex<u32>,
}

impl Sandbox {
    pub fn new(
        identity: IdentityProvider,
        graph: GraphServer,
        exchange: ExchangeServer,
        daemon: DaemonCli,
        started: Instant,
    ) -> Sandbox {
        Sandbox {
            identity,
            graph,
            exchange,
            daemon,
            started,
            echo: true,
            view: Mutex::new(View::default()),
            mails_queued: Mutex::new(0),
        }
    }

    fn view(&self) -> std::sync::MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tells the person: a line on the terminal and on the page, with the time since the
    /// start.
    pub fn say(&self, what: impl AsRef<str>) {
        let line = format!(
            "[{:>6.1}s] {}",
            self.started.elapsed().as_secs_f64(),
            what.as_ref()
        );
        if self.echo {
            crate::run::out(&line);
        }
        let mut v = self.view();
        v.activity.push(line);
        let over = v.activity.len().saturating_sub(ACTIVITY_KEPT);
        v.activity.drain(..over);
    }

    pub fn set_status(&self, status: Option<(i32, Value)>) {
        self.view().status = status;
    }

    /// Queues `count` mails through `imm-daemon send --batch -`.
    pub async fn queue_mails(&self, count: u32) -> Result<String, String> {
        let first = {
            let mut n = self.mails_queued.lock().unwrap_or_else(|p| p.into_inner());
            let first = *n + 1;
            *n += count;
            first
        };
        let mut batch = String::new();
        for i in first..first + count {
            let mail = json!({
                "to": format!("sandbox.recipient{}@contoso.example", i % 4 + 1),
                "subject": format!("Sandbox mail {i}"),
                "body": format!("Mail {i} of the imm-daemon sandbox, sent through the emulated Microsoft Graph."),
                "key": format!("sandbox-{}-{i}", std::process::id()),
            });
            let _ = writeln!(batch, "{mail}");
        }
        self.daemon
            .summary(&["send", "--batch", "-"], Some(batch.as_bytes()))
            .await
            .map(|_| format!("queued {count} mail(s) with imm-daemon send"))
    }

    /// Runs `imm-daemon ARGS` in the background and tells its outcome when it ends.
    fn in_background(self: &Arc<Self>, args: &'static [&'static str]) {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let shown = args.join(" ");
            match me.daemon.summary(args, None).await {
                Ok(line) => me.say(format!("imm-daemon {shown}: {line}")),
                Err(line) => me.say(format!("imm-daemon {shown} failed: {line}")),
            }
        });
    }

    /// Carries out an action; the message says what was done.
    pub async fn perform(self: &Arc<Self>, action: &Action) -> Result<String, String> {
        action.check()?;
        let done = match action {
            Action::Approve => {
                let codes = self.identity.pending_user_codes();
                if codes.is_empty() {
                    return Err("no sign-in code is waiting for a person".into());
                }
                let approved: Vec<String> = codes
                    .into_iter()
                    .filter(|c| self.identity.approve(c))
                    .collect();
                if approved.is_empty() {
                    return Err("the waiting code expired or was decided meanwhile".into());
                }
                format!(
                    "approved sign-in code {}; the daemon signs in at its next poll",
                    approved.join(", ")
                )
            }
            Action::ThrottleGraph {
                requests,
                retry_after,
            } => {
                self.graph.fail_next(
                    *requests as usize,
                    GraphFailure::Throttled {
                        retry_after: Some(retry_after.to_string()),
                    },
                );
                let queued = self.queue_mails(1).await?;
                self.in_background(&["cycle"]);
                format!(
                    "Graph answers the next {requests} request(s) with 429 (Retry-After: \
                     {retry_after}); {queued} and asked for a cycle"
                )
            }
            Action::ThrottleExchange {
                requests,
                retry_after,
            } => {
                self.exchange.fail_next(
                    *requests as usize,
                    ExchangeFailure::Throttled {
                        retry_after: Some(retry_after.to_string()),
                    },
                );
                self.in_background(&["sync"]);
                format!(
                    "Exchange answers the next {requests} request(s) with 429 (Retry-After: \
                     {retry_after}); asked the daemon for a sync"
                )
            }
            Action::LoseAnswer => {
                self.graph.fail_next_on(
                    Endpoint::SendDraft,
                    1,
                    GraphFailure::GatewayTimeoutAfterProcessing,
                );
                let queued = self.queue_mails(1).await?;
                self.in_background(&["cycle"]);
                format!(
                    "Graph delivers the next mail but answers 504; {queued} and asked for a cycle"
                )
            }
            Action::Revoke => {
                self.identity.revoke_grants();
                // Left alone, the daemon notices at its next call to Microsoft (a mail, a
                // sync, a token refresh); a sync makes that call now.
                self.in_background(&["sync"]);
                "revoked the sign-in (refresh and access tokens); asked the daemon for a sync, \
                 which meets the refusal (left alone, the daemon notices at its next call to \
                 Microsoft)"
                    .to_string()
            }
            Action::ReleaseHolds { mailbox } => {
                let m = self.pick_held(mailbox.as_deref())?;
                self.exchange.release_holds(&m.exchange_guid);
                self.in_background(&["sync"]);
                format!(
                    "released every hold of {} <{}> ({}); asked the daemon for a sync",
                    m.display_name, m.primary_smtp, m.exchange_guid
                )
            }
            Action::AddMailboxes { count } => {
                let now = Utc::now();
                for mut m in synthetic_tenant(*count as usize, fastrand::u64(..)) {
                    m.when_soft_deleted = Some(now);
                    m.when_changed = now;
                    self.exchange.add(m);
                }
                self.in_background(&["sync"]);
                format!("added {count} inactive mailbox(es); asked the daemon for a sync")
            }
            Action::RemoveMailboxes { count } => {
                let mut all = self.exchange.inactive();
                fastrand::shuffle(&mut all);
                let gone: Vec<TenantMailbox> = all.into_iter().take(*count as usize).collect();
                for m in &gone {
                    self.exchange.remove(&m.exchange_guid);
                }
                self.in_background(&["sync"]);
                format!(
                    "removed {} inactive mailbox(es); asked the daemon for a sync",
                    gone.len()
                )
            }
            Action::QueueMails { count } => {
                let queued = self.queue_mails(*count).await?;
                format!("{queued}; the daemon sends them as its bucket allows")
            }
            Action::Sync => {
                self.in_background(&["sync"]);
                "asked the daemon for a sync".to_string()
            }
        };
        self.say(&done);
        Ok(done)
    }

    /// The inactive mailbox a scenario names (by ExchangeGuid, address, UPN or display
    /// name), or one with a hold picked at random.
    fn pick_held(&self, which: Option<&str>) -> Result<TenantMailbox, String> {
        let all = self.exchange.inactive();
        match which {
            Some(w) => {
                let w = w.trim();
                all.into_iter()
                    .find(|m| {
                        m.exchange_guid.eq_ignore_ascii_case(w)
                            || m.primary_smtp.eq_ignore_ascii_case(w)
                            || m.user_principal_name.eq_ignore_ascii_case(w)
                            || m.display_name.eq_ignore_ascii_case(w)
                    })
                    .ok_or_else(|| format!("no inactive mailbox is named {w:?}"))
            }
            None => {
                let held: Vec<TenantMailbox> = all.into_iter().filter(|m| m.has_hold()).collect();
                if held.is_empty() {
                    return Err("no inactive mailbox has a hold left".into());
                }
                Ok(held[fastrand::usize(..held.len())].clone())
            }
        }
    }

    /// A webhook event from the daemon.
    fn hook(&self, event: Value) {
        let name = event["event"].as_str().unwrap_or("?").to_string();
        let detail = match name.as_str() {
            "login_required" => format!(
                " (code {} at {})",
                event["user_code"].as_str().unwrap_or("?"),
                event["verification_uri"].as_str().unwrap_or("?")
            ),
            "login_succeeded" => format!(" ({})", event["account"].as_str().unwrap_or("?")),
            "holds_released" => format!(
                " ({} mailbox(es): {})",
                event["count"].as_str().unwrap_or("?"),
                event["mailboxes"].as_str().unwrap_or("")
            ),
            "token_refresh_failed" => format!(
                " ({}: {})",
                event["resource"].as_str().unwrap_or("?"),
                event["error"].as_str().unwrap_or("?")
            ),
            _ => String::new(),
        };
        self.say(format!("notification hook: {name}{detail}"));
        let mut v = self.view();
        v.events.push(HookEvent {
            received_at: imm_daemon::time::stamp_secs(Utc::now()),
            event,
        });
        let over = v.events.len().saturating_sub(ACTIVITY_KEPT);
        v.events.drain(..over);
    }

    /// Everything the page shows, as JSON.
    fn state(&self) -> Value {
        let v = self.view();
        let sent = self.graph.sent();
        let deliveries = self.graph.deliveries();
        let inactive = self.exchange.inactive();
        json!({
            "status": v.status.as_ref().map(|(_, s)| s),
            "status_exit_code": v.status.as_ref().map(|(c, _)| c),
            "pending_user_codes": self.identity.pending_user_codes(),
            "verification_uri": self.identity.verification_uri(),
            "deliveries": deliveries,
            "duplicates": deliveries.duplicates(),
            "sent": sent.iter().map(|m| json!({
                "from": m.mailbox,
                "to": m.to,
                "subject": m.subject,
                "internet_message_id": m.internet_message_id,
            })).collect::<Vec<_>>(),
            "tenant": {
                "inactive": inactive.len(),
                "with_hold": inactive.iter().filter(|m| m.has_hold()).count(),
            },
            "events": v.events,
            "activity": v.activity,
        })
    }
}

/// The console's routes, all under `/{key}/`.
pub fn routes(sandbox: Arc<Sandbox>, key: &str) -> Router {
    let base = format!("/{key}/");
    let to_base = base.clone();
    Router::new()
        .route(
            &format!("/{key}"),
            get(move || async move { Redirect::permanent(&to_base) }),
        )
        .route(&base, get(page))
        .route(&format!("{base}action"), post(form_action))
        .route(&format!("{base}api/action"), post(json_action))
        .route(&format!("{base}api/state"), get(api_state))
        .route(&format!("{base}hook"), post(hook))
        .with_state(sandbox)
}

async fn page(State(s): State<Arc<Sandbox>>) -> Response {
    let html = render(&s);
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_SECURITY_POLICY, "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"),
        ],
        Html(html),
    )
        .into_response()
}

#[derive(Deserialize)]
struct Button {
    scenario: String,
}

async fn form_action(State(s): State<Arc<Sandbox>>, Form(button): Form<Button>) -> Response {
    match Action::from_button(&button.scenario) {
        Some(action) => {
            if let Err(e) = s.perform(&action).await {
                s.say(format!("{}: {e}", button.scenario));
            }
            Redirect::to("./#activity").into_response()
        }
        None => (StatusCode::BAD_REQUEST, "unknown scenario").into_response(),
    }
}

async fn json_action(State(s): State<Arc<Sandbox>>, Json(action): Json<Action>) -> Response {
    match s.perform(&action).await {
        Ok(message) => Json(json!({ "ok": true, "message": message })).into_response(),
        Err(message) => (
            StatusCode::CONFLICT,
            Json(json!({ "ok": false, "message": message })),
        )
            .into_response(),
    }
}

async fn api_state(State(s): State<Arc<Sandbox>>) -> Response {
    Json(s.state()).into_response()
}

async fn hook(State(s): State<Arc<Sandbox>>, Json(event): Json<Value>) -> StatusCode {
    s.hook(event);
    StatusCode::NO_CONTENT
}

/// The page, from the emulators' state and the daemon's last status.
fn render(s: &Sandbox) -> String {
    let state = s.state();
    let mut h = String::with_capacity(64 * 1024);
    h.push_str(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width\">\n\
         <title>imm-daemon sandbox</title>\n<style>\
         body{font-family:system-ui,sans-serif;margin:1.5rem auto;max-width:70rem;padding:0 1rem;color:#222}\
         table{border-collapse:collapse;width:100%;font-size:.9rem}\
         th,td{border-bottom:1px solid #ddd;padding:.25rem .4rem;text-align:left;vertical-align:top}\
         form.scenario{display:flex;gap:.8rem;align-items:baseline;margin:.3rem 0}\
         form.scenario button{min-width:13rem}\
         code,.code{font-family:ui-monospace,monospace}\
         .code{font-size:1.6rem;letter-spacing:.15rem}\
         ol{font-family:ui-monospace,monospace;font-size:.85rem}\
         </style>\n</head>\n<body>\n<h1>imm-daemon sandbox</h1>\n\
         <p>An emulated Microsoft 365 tenant on this machine: nothing here reaches Microsoft. \
         <a href=\"./\">Refresh</a> to see what changed.</p>\n",
    );

    // The daemon.
    h.push_str("<section id=\"daemon\">\n<h2>Daemon</h2>\n");
    match (&state["status"], state["status_exit_code"].as_i64()) {
        (Value::Object(_), Some(code)) => {
            let st = &state["status"];
            let _ = write!(
                h,
                "<p id=\"health\">Health: <strong>{}</strong> (<code>imm-daemon status</code> exits {code})</p>\n<ul>\n",
                esc(st["health"].as_str().unwrap_or("unknown"))
            );
            let signin = &st["signin"];
            let _ = writeln!(
                h,
                "<li>Sign-in: {}{}</li>",
                esc(signin["state"].as_str().unwrap_or("unknown")),
                signin["account"]
                    .as_str()
                    .map(|a| format!(" as {}", esc(a)))
                    .unwrap_or_default()
            );
            if let Some(n) = st["cache"]["mailboxes"].as_u64() {
                let _ = writeln!(
                    h,
                    "<li>Inventory: {n} inactive mailbox(es) cached{}</li>",
                    st["sync"]["last_ok_at"]
                        .as_str()
                        .map(|t| format!(", last synced {}", esc(t)))
                        .unwrap_or_default()
                );
            }
            let q = &st["queue"];
            if q.is_object() {
                let _ = writeln!(
                    h,
                    "<li>Mail queue: {} queued, {} sent today, {} failed; bucket {:.1} of {} tokens</li>",
                    q["queued"],
                    q["sent_today"],
                    q["failed"],
                    q["tokens"].as_f64().unwrap_or(0.0),
                    q["capacity"]
                );
            }
            h.push_str("</ul>\n");
        }
        _ => h.push_str("<p id=\"health\">Health: not known yet.</p>\n"),
    }
    h.push_str("</section>\n");

    // Sign-in.
    h.push_str("<section id=\"sign-in\">\n<h2>Sign-in</h2>\n");
    let codes: Vec<&str> = state["pending_user_codes"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let uri = state["verification_uri"].as_str().unwrap_or("");
    if let Some(code) = codes.last() {
        let _ = write!(
            h,
            "<p>The daemon waits for a person to sign in with the code</p>\n\
             <p class=\"code\" id=\"user-code\">{code}</p>\n\
             <p>Enter it on the <a id=\"sign-in-page\" href=\"{uri}?user_code={code}\">emulated \
             sign-in page</a>, as you would at Microsoft, or approve it here:</p>\n\
             <form method=\"post\" action=\"action\">\
             <input type=\"hidden\" name=\"scenario\" value=\"approve\">\
             <button type=\"submit\" id=\"approve\">Approve the sign-in</button></form>\n",
            code = esc(code),
            uri = esc(uri),
        );
    } else {
        h.push_str("<p id=\"no-code\">No sign-in is waiting for a person.</p>\n");
    }
    h.push_str("</section>\n");

    // Scenarios.
    h.push_str("<section id=\"scenarios\">\n<h2>Scenarios</h2>\n");
    for (name, label, what) in BUTTONS {
        let _ = writeln!(
            h,
            "<form class=\"scenario\" method=\"post\" action=\"action\">\
             <input type=\"hidden\" name=\"scenario\" value=\"{name}\">\
             <button type=\"submit\" id=\"{name}\">{label}</button>\
             <span>{}</span></form>",
            esc(what)
        );
    }
    h.push_str(
        "<p>The same from a terminal: <code>imm-sandbox throttle graph</code>, \
         <code>imm-sandbox lose-answer</code>, <code>imm-sandbox revoke</code>, \
         <code>imm-sandbox release-holds</code>, <code>imm-sandbox add-mailboxes</code>, \
         <code>imm-sandbox remove-mailboxes</code>, <code>imm-sandbox queue-mails</code>, \
         <code>imm-sandbox sync</code>; see <code>imm-sandbox --help</code>.</p>\n</section>\n",
    );

    // Activity.
    h.push_str("<section id=\"activity\">\n<h2>Activity</h2>\n<ol reversed>\n");
    if let Some(lines) = state["activity"].as_array() {
        for line in lines.iter().rev().filter_map(Value::as_str) {
            let _ = writeln!(h, "<li>{}</li>", esc(line));
        }
    }
    h.push_str("</ol>\n</section>\n");

    // Hook events.
    h.push_str(
        "<section id=\"events\">\n<h2>Notification hook</h2>\n\
         <table>\n<thead><tr><th>Received</th><th>Event</th><th>Details</th></tr></thead>\n<tbody>\n",
    );
    if let Some(events) = state["events"].as_array() {
        for e in events.iter().rev() {
            let ev = &e["event"];
            let mut details = ev.clone();
            if let Some(map) = details.as_object_mut() {
                map.remove("event");
                map.remove("at");
            }
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
                esc(e["received_at"].as_str().unwrap_or("")),
                esc(ev["event"].as_str().unwrap_or("?")),
                esc(&details.to_string())
            );
        }
    }
    h.push_str("</tbody>\n</table>\n</section>\n");

    // Delivered mails.
    let deliveries = &state["deliveries"];
    let _ = write!(
        h,
        "<section id=\"mails\">\n<h2>Delivered mails</h2>\n<p>{} delivered; {} delivered more than once.</p>\n\
         <table>\n<thead><tr><th>Subject</th><th>From</th><th>To</th><th>internetMessageId</th><th>Times delivered</th></tr></thead>\n<tbody>\n",
        deliveries["total"],
        state["duplicates"].as_array().map_or(0, Vec::len)
    );
    if let Some(sent) = state["sent"].as_array() {
        for m in sent.iter().rev() {
            let id = m["internet_message_id"].as_str().unwrap_or("");
            let to: Vec<&str> = m["to"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td></tr>",
                esc(m["subject"].as_str().unwrap_or("")),
                esc(m["from"].as_str().unwrap_or("")),
                esc(&to.join(", ")),
                esc(id),
                deliveries["per_message"][id].as_u64().unwrap_or(0)
            );
        }
    }
    h.push_str("</tbody>\n</table>\n</section>\n");

    // The tenant's mailboxes.
    let mut inactive = s.exchange.inactive();
    inactive.sort_by(|a, b| a.display_name.cmp(&b.display_name));
    let _ = write!(
        h,
        "<section id=\"mailboxes\">\n<h2>Inactive mailboxes in the tenant</h2>\n\
         <p><span id=\"tenant-count\">{}</span> inactive mailbox(es), {} with a hold; the first {} by name. \
         The daemon's copy: <code>imm-daemon mailboxes list</code>.</p>\n\
         <table>\n<thead><tr><th>Name</th><th>Address</th><th>Soft-deleted</th><th>Holds</th><th>Size</th><th>ExchangeGuid</th></tr></thead>\n<tbody>\n",
        inactive.len(),
        state["tenant"]["with_hold"],
        MAILBOXES_LISTED.min(inactive.len())
    );
    for m in inactive.iter().take(MAILBOXES_LISTED) {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
            esc(&m.display_name),
            esc(&m.primary_smtp),
            m.when_soft_deleted
                .map(|t| t.format("%Y-%m-%d").to_string())
                .unwrap_or_default(),
            esc(&holds(m)),
            size(m.total_item_size_bytes),
            esc(&m.exchange_guid)
        );
    }
    h.push_str("</tbody>\n</table>\n</section>\n</body>\n</html>\n");
    h
}

/// A mailbox's holds in words.
fn holds(m: &TenantMailbox) -> String {
    let mut out = Vec::new();
    if m.litigation_hold {
        out.push("litigation".to_string());
    }
    let in_place = m.in_place_holds.iter().filter(|h| !h.starts_with('-'));
    let n = in_place.count();
    if n > 0 {
        out.push(format!("{n} in-place"));
    }
    if m.compliance_tag_hold {
        out.push("compliance tag".to_string());
    }
    if m.delay_hold || m.delay_release_hold {
        out.push("delay".to_string());
    }
    if out.is_empty() {
        "none".to_string()
    } else {
        out.join(", ")
    }
}

fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// What `sandbox.json` holds.
#[derive(Debug, Serialize, Deserialize)]
pub struct Info {
    /// The console's base URL, key included.
    pub console: String,
    pub pid: u32,
    pub identity: String,
    pub graph: String,
    pub exchange: String,
    pub started_at: DateTime<Utc>,
}

/// The home a scenario goes to: as given, else `IMM_HOME`.
fn home_of(home: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match home.or_else(|| {
        std::env::var_os("IMM_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    }) {
        Some(h) => Ok(h),
        None => bail!(
            "which sandbox? IMM_HOME is not set: run the `export IMM_HOME=...` line that \
             imm-sandbox printed, or pass --home"
        ),
    }
}

fn read_info(home: &Path) -> anyhow::Result<Info> {
    let path = home.join(INFO_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no sandbox runs in {} ({} cannot be read); start one with `imm-sandbox`",
            home.display(),
            path.display()
        )
    })?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a sandbox's", path.display()))
}

/// `imm-sandbox info`.
pub fn info(home: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let home = home_of(home)?;
    let info = read_info(&home)?;
    println!("home      {}", home.display());
    println!("console   {}/", info.console);
    println!("identity  {}", info.identity);
    println!("graph     {}", info.graph);
    println!("exchange  {}", info.exchange);
    println!("pid       {}", info.pid);
    Ok(ExitCode::SUCCESS)
}

/// A scenario subcommand: posts the action to the running sandbox's console.
pub fn request(home: Option<PathBuf>, action: &Action) -> anyhow::Result<ExitCode> {
    let home = home_of(home)?;
    let info = read_info(&home)?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let answer: anyhow::Result<(bool, String)> = runtime.block_on(async {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(std::time::Duration::from_secs(60))
            .build()?;
        let resp = client
            .post(format!("{}/api/action", info.console))
            .json(action)
            .send()
            .await
            .with_context(|| {
                format!(
                    "the sandbox in {} does not answer (has it stopped?)",
                    home.display()
                )
            })?;
        let body: Value = resp
            .json()
            .await
            .context("the sandbox's answer is not JSON")?;
        Ok((
            body["ok"].as_bool().unwrap_or(false),
            body["message"].as_str().unwrap_or("").to_string(),
        ))
    });
    let (ok, message) = answer?;
    if ok {
        println!("{message}");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("imm-sandbox: {message}");
        Ok(ExitCode::FAILURE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_button_is_an_action_and_actions_read_as_the_cli_sends_them() {
        for (name, _, _) in BUTTONS {
            assert!(Action::from_button(name).is_some(), "{name}");
        }
        assert_eq!(Action::from_button("approve"), Some(Action::Approve));
        assert_eq!(Action::from_button("nonsense"), None);
        let a: Action = serde_json::from_value(
            json!({"scenario": "throttle-graph", "requests": 2, "retry_after": 7}),
        )
        .unwrap();
        assert_eq!(
            a,
            Action::ThrottleGraph {
                requests: 2,
                retry_after: 7
            }
        );
        let a: Action = serde_json::from_value(json!({"scenario": "release-holds"})).unwrap();
        assert_eq!(a, Action::ReleaseHolds { mailbox: None });
        assert!(serde_json::from_value::<Action>(json!({"scenario": "format-disk"})).is_err());
    }

    /// Names, addresses and events come from the tenant and the daemon: markup in them
    /// is shown, never run.
    #[tokio::test]
    async fn the_page_escapes_what_it_shows() {
        let identity = IdentityProvider::start(imm_emulators::IdentityOptions {
            control_routes: false,
            ..Default::default()
        })
        .await
        .unwrap();
        let graph = GraphServer::start(imm_emulators::GraphOptions::default())
            .await
            .unwrap();
        let mut tenant = synthetic_tenant(1, 7);
        tenant[0].display_name = "<script>alert(1)</script> & Co".to_string();
        let exchange = ExchangeServer::start(imm_emulators::ExchangeOptions::default(), tenant)
            .await
            .unwrap();
        let s = Sandbox::new(
            identity,
            graph,
            exchange,
            DaemonCli {
                bin: PathBuf::from("imm-daemon"),
                home: PathBuf::from("/nonexistent"),
            },
            Instant::now(),
        );
        let s = Sandbox { echo: false, ..s };
        s.hook(json!({"event": "holds_released", "count": "1", "mailboxes": "<img src=x onerror=alert(2)>"}));
        let html = render(&s);
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; Co"),
            "{html}"
        );
        assert!(html.contains("&lt;img src=x onerror=alert(2)&gt;"));
        assert!(!html.contains("<script") && !html.contains("<img"));
    }

    #[test]
    fn sizes_read_as_a_person_would() {
        assert_eq!(size(512), "512 B");
        assert_eq!(size(1536), "1.5 KB");
        assert_eq!(size(5 * 1024 * 1024 * 1024), "5.0 GB");
    }
}
