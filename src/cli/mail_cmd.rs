//! `imm-daemon send` and `imm-daemon queue list | show | retry | cancel | purge`: handing
//! mail to the queue and looking after it. The database is the hand-off, so these work
//! whether the daemon runs or not; a running daemon is told to run a cycle soon.

use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::Utc;
use clap::{Args, Subcommand};
use serde_json::json;

use super::output::{self, Column, Format, opt};
use super::{Context, SilentExit, exit, parse_duration};
use crate::control::lock::InstanceLock;
use crate::control::{self, Command};
use crate::mail::queue::{self as mail_queue, CancelOutcome, PurgeOutcome, RetryOutcome};
use crate::mail::{Draft, MailError, MailState, NewMail, Protected};
use crate::store::QueuedMail;

/// Options of `imm-daemon send`.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// A recipient (repeat for more).
    #[arg(long, value_name = "ADDR")]
    pub to: Vec<String>,
    /// A recipient in copy (repeat for more).
    #[arg(long, value_name = "ADDR")]
    pub cc: Vec<String>,
    /// A hidden recipient (repeat for more).
    #[arg(long, value_name = "ADDR")]
    pub bcc: Vec<String>,
    /// The subject (255 characters at most).
    #[arg(long, value_name = "TEXT")]
    pub subject: Option<String>,
    /// The body as text.
    #[arg(long, value_name = "TEXT", conflicts_with = "body_file")]
    pub body: Option<String>,
    /// The body from a file (UTF-8, or UTF-16 with a byte order mark).
    #[arg(long, value_name = "FILE")]
    pub body_file: Option<PathBuf>,
    /// The body is HTML.
    #[arg(long)]
    pub html: bool,
    /// A file to attach (repeat for more; 3 MB in all, and the whole mail within Graph's
    /// 4 MB request once base64-encoded).
    #[arg(long, value_name = "FILE")]
    pub attach: Vec<PathBuf>,
    /// The mailbox to send from (default: `[mail] from`, else the signed-in account).
    #[arg(long, value_name = "MAILBOX")]
    pub from: Option<String>,
    /// An idempotency key: a mail with a key already queued is not queued again.
    #[arg(long, value_name = "KEY")]
    pub key: Option<String>,
    /// Queue every mail of a JSON Lines file (one mail object per line, `-` for stdin;
    /// UTF-8, or UTF-16 with a byte order mark), all or none; a key may appear once.
    #[arg(
        long,
        value_name = "FILE.jsonl",
        conflicts_with_all = ["to", "cc", "bcc", "subject", "body", "body_file", "html", "attach", "from", "key"]
    )]
    pub batch: Option<PathBuf>,
    /// Print the queue ids as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum QueueCmd {
    /// List queued mails, oldest first.
    List {
        /// Only mails in this state.
        #[arg(long, value_enum)]
        state: Option<MailState>,
        /// At most this many mails.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[arg(long, value_enum)]
        format: Option<Format>,
    },
    /// Show one mail: its state, attempts, Graph's error, ids and attachments.
    Show {
        id: i64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Queue a failed or cancelled mail again, due now, its attempts counted afresh.
    Retry { id: i64 },
    /// Cancel a queued or failed mail.
    Cancel { id: i64 },
    /// Delete sent mails older than a duration.
    Purge {
        /// For example 30d.
        #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
        sent_older_than: std::time::Duration,
    },
}

/// Why `send` refused its input: bad content (65) or an unreadable file (66).
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Mail(#[from] MailError),
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl SendError {
    pub fn exit_code(&self) -> i32 {
        match self {
            SendError::Read { .. } => exit::NO_INPUT,
            SendError::Mail(e) if e.is_unreadable() => exit::NO_INPUT,
            SendError::Mail(_) => exit::DATA,
        }
    }
}

/// The files no mail may carry: the sign-in's secrets where this configuration keeps them.
fn protected(ctx: &Context) -> anyhow::Result<Protected> {
    let config = ctx.config()?;
    let opts = crate::secrets::SecretsOptions::from_config(&config.auth, &ctx.paths, String::new());
    let env = crate::secrets::KeyEnv::from_process();
    Ok(Protected::new(crate::secrets::owned_files(
        &opts,
        env.credentials_directory.as_deref(),
    )))
}

fn read_mails(args: SendArgs, protected: &Protected) -> Result<Vec<NewMail>, SendError> {
    match args.batch {
        Some(path) => {
            let read = |source| SendError::Read {
                path: path.clone(),
                source,
            };
            let (bytes, base) = if path == Path::new("-") {
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut bytes)
                    .map_err(read)?;
                (bytes, None)
            } else {
                let bytes = std::fs::read(&path).map_err(read)?;
                (bytes, path.parent().map(Path::to_path_buf))
            };
            let (text, _) = crate::text::decode(&bytes).map_err(|detail| {
                read(std::io::Error::new(std::io::ErrorKind::InvalidData, detail))
            })?;
            Ok(crate::mail::read_batch(&text, base.as_deref(), protected)?)
        }
        None => {
            let draft = Draft {
                to: args.to,
                cc: args.cc,
                bcc: args.bcc,
                subject: args.subject.unwrap_or_default(),
                body: args.body,
                body_file: args.body_file,
                html: args.html,
                attach: args.attach,
                from: args.from,
                key: args.key,
            };
            Ok(vec![draft.check(None, protected)?])
        }
    }
}

/// Asks a running daemon to run a cycle soon; whether one was told.
fn wake_daemon(ctx: &Context) -> bool {
    InstanceLock::is_held(&ctx.paths.lock_file)
        && control::request(
            &ctx.paths.socket,
            Command::MailQueued,
            std::time::Duration::from_secs(2),
        )
        .is_ok()
}

/// `imm-daemon send`.
pub fn send(ctx: &Context, args: SendArgs) -> anyhow::Result<()> {
    let json = args.json;
    let batch = args.batch.is_some();
    let mails = read_mails(args, &protected(ctx)?)?;
    let mut store = ctx.store()?;
    let results = mail_queue::enqueue(&mut store, &mails, batch, Utc::now())?;
    let added = results.iter().filter(|r| !r.duplicate).count();
    let woke = added > 0 && wake_daemon(ctx);
    let mut out = std::io::stdout().lock();
    if json {
        output::write_json_pretty(
            &mut out,
            &json!({
                "ids": results.iter().map(|r| r.id).collect::<Vec<_>>(),
                "added": added,
                "duplicates": results.len() - added,
                "daemon_notified": woke,
            }),
        )?;
    } else {
        match results.as_slice() {
            [one] if one.duplicate => writeln!(
                out,
                "already queued as mail {} (same idempotency key); nothing added",
                one.id
            )?,
            [one] => writeln!(out, "queued mail {}", one.id)?,
            _ => writeln!(
                out,
                "queued {added} mail(s){}",
                match results.len() - added {
                    0 => String::new(),
                    d => format!("; {d} already queued (same idempotency key)"),
                }
            )?,
        }
        if added > 0 && !woke {
            writeln!(
                out,
                "the daemon is not running: the mail goes out at its next cycle (or run `imm-daemon cycle`)"
            )?;
        }
    }
    out.flush()?;
    Ok(())
}

/// `imm-daemon queue …`.
pub fn queue(ctx: &Context, cmd: QueueCmd) -> anyhow::Result<()> {
    let mut store = ctx.store()?;
    let now = Utc::now();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    match cmd {
        QueueCmd::List {
            state,
            limit,
            format,
        } => {
            let mails = store.mails(state, limit)?;
            match Format::resolve(format) {
                // Bodies stay out of listings (`queue show --json` has one mail's).
                Format::Json => {
                    let rows: Vec<serde_json::Value> = mails
                        .iter()
                        .map(|m| {
                            let mut v = serde_json::to_value(m).expect("mails serialize");
                            if let Some(o) = v.as_object_mut() {
                                o.remove("body");
                            }
                            v
                        })
                        .collect();
                    output::write_json(&mut out, &rows)?
                }
                Format::Csv => output::write_csv(
                    &mut out,
                    &[
                        "id",
                        "created_at",
                        "state",
                        "attempts",
                        "next_attempt_at",
                        "sent_at",
                        "sender",
                        "to",
                        "subject",
                        "last_error",
                    ],
                    mails.iter().map(|m| {
                        vec![
                            m.id.to_string(),
                            m.created_at.clone(),
                            m.state.to_string(),
                            m.attempts.to_string(),
                            m.next_attempt_at.clone(),
                            opt(&m.sent_at),
                            opt(&m.sender),
                            m.to.join(";"),
                            m.subject.clone(),
                            problem(m),
                        ]
                    }),
                )?,
                Format::Table => {
                    let t = output::table(
                        &[
                            Column::new("Id", true, 9),
                            Column::new("State", false, 8),
                            Column::new("Tries", true, 5),
                            Column::new("Due / sent (UTC)", false, 6),
                            Column::new("To", false, 7),
                            Column::new("Subject", false, 4),
                            Column::new("Last error", false, 3),
                        ],
                        mails.iter().map(|m| {
                            vec![
                                m.id.to_string(),
                                m.state.to_string(),
                                m.attempts.to_string(),
                                m.sent_at.clone().unwrap_or_else(|| {
                                    if m.state == MailState::Queued {
                                        m.next_attempt_at.clone()
                                    } else {
                                        String::new()
                                    }
                                }),
                                recipients(m),
                                m.subject.clone(),
                                problem(m),
                            ]
                        }),
                    );
                    writeln!(out, "{t}")?;
                }
            }
        }
        QueueCmd::Show { id, json } => {
            let mail = store.mail(id)?.ok_or_else(|| no_such_mail(id))?;
            if json {
                output::write_json_pretty(&mut out, &mail)?;
            } else {
                write_mail(&mut out, &mail)?;
            }
        }
        QueueCmd::Retry { id } => {
            let confirm_within = ctx.config()?.mail.confirm_within.get();
            match mail_queue::retry(&mut store, id, now, confirm_within)? {
                RetryOutcome::NotFound => return Err(no_such_mail(id)),
                RetryOutcome::Refused(why) => return Err(why.into()),
                RetryOutcome::Requeued { .. } => {
                    let woke = wake_daemon(ctx);
                    writeln!(
                        out,
                        "mail {id} is queued again, due now (it is looked up in Sent Items before anything is sent){}",
                        if woke {
                            ""
                        } else {
                            "; the daemon is not running"
                        }
                    )?;
                }
                RetryOutcome::AlreadyQueued => writeln!(out, "mail {id} is already queued")?,
            }
        }
        QueueCmd::Cancel { id } => match mail_queue::cancel(&mut store, id, now)? {
            CancelOutcome::NotFound => return Err(no_such_mail(id)),
            CancelOutcome::Refused(why) => return Err(why.into()),
            CancelOutcome::Cancelled {
                send_requested_at, ..
            } => {
                writeln!(out, "mail {id} is cancelled")?;
                if let Some(r) = send_requested_at {
                    writeln!(
                        out,
                        "note: it was sent at {r} without an answer, so it may still arrive"
                    )?;
                }
            }
            CancelOutcome::AlreadyCancelled => writeln!(out, "mail {id} was already cancelled")?,
        },
        QueueCmd::Purge { sent_older_than } => {
            let zone = ctx.config()?.schedule.timezone;
            match mail_queue::purge(&mut store, sent_older_than, &zone, now)? {
                PurgeOutcome::Refused(why) => return Err(why.into()),
                PurgeOutcome::Purged {
                    purged,
                    sent_before,
                } => writeln!(
                    out,
                    "purged {purged} sent mail(s) sent before {sent_before}"
                )?,
            }
        }
    }
    out.flush()?;
    Ok(())
}

fn no_such_mail(id: i64) -> anyhow::Error {
    eprintln!("error: there is no mail {id} in the queue");
    SilentExit {
        code: exit::FAILURE,
    }
    .into()
}

fn recipients(m: &QueuedMail) -> String {
    let mut all: Vec<&str> = m.to.iter().map(String::as_str).collect();
    all.extend(m.cc.iter().map(String::as_str));
    all.extend(m.bcc.iter().map(String::as_str));
    all.join(", ")
}

fn write_mail(out: &mut impl Write, m: &QueuedMail) -> std::io::Result<()> {
    let line = |out: &mut dyn Write, k: &str, v: &str| writeln!(out, "{k:<18} {v}");
    line(out, "id", &m.id.to_string())?;
    line(out, "state", m.state.as_str())?;
    line(out, "created", &m.created_at)?;
    line(
        out,
        "from",
        m.sender.as_deref().unwrap_or("(the signed-in account)"),
    )?;
    line(out, "to", &m.to.join(", "))?;
    if !m.cc.is_empty() {
        line(out, "cc", &m.cc.join(", "))?;
    }
    if !m.bcc.is_empty() {
        line(out, "bcc", &m.bcc.join(", "))?;
    }
    line(out, "subject", &m.subject)?;
    line(
        out,
        "body",
        &format!(
            "{} characters of {}",
            m.body.chars().count(),
            match m.body_type {
                crate::mail::BodyType::Text => "text",
                crate::mail::BodyType::Html => "HTML",
            }
        ),
    )?;
    for (i, a) in m.attachments.iter().enumerate() {
        line(
            out,
            if i == 0 { "attachments" } else { "" },
            &format!("{} ({}, {} bytes)", a.name, a.content_type, a.size),
        )?;
    }
    if let Some(k) = &m.idempotency_key {
        line(out, "idempotency key", k)?;
    }
    line(out, "attempts", &m.attempts.to_string())?;
    match m.state {
        MailState::Queued => line(out, "next attempt", &m.next_attempt_at)?,
        MailState::Sent => line(out, "sent", m.sent_at.as_deref().unwrap_or(""))?,
        _ => {}
    }
    if let Some(e) = &m.last_error {
        line(out, "last error", e)?;
    }
    if let Some(d) = &m.damage {
        line(out, "DAMAGED", d)?;
    }
    if let Some(i) = &m.internet_message_id {
        line(out, "internetMessageId", i)?;
    }
    if let Some(g) = &m.graph_message_id {
        line(out, "Graph message id", g)?;
    }
    Ok(())
}

/// The error a listing shows for a mail: the damage of its stored row, else its last
/// error.
fn problem(m: &crate::store::QueuedMail) -> String {
    m.damage
        .as_deref()
        .or(m.last_error.as_deref())
        .unwrap_or_default()
        .to_string()
}
