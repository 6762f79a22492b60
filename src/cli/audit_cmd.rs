//! `imm-daemon audit list | export | verify | prune`.

use std::io::Write;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use serde_json::json;

use super::output::{self, Column, Format, opt};
use super::{Context, SilentExit, exit, parse_duration, parse_when};
use crate::audit::{AuditEvent, Operation};
use crate::store::AuditFilter;

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// List audit rows, oldest first.
    List {
        #[command(flatten)]
        range: RangeArgs,
        /// Only this operation (CONNECT, LIST_MAILBOXES, EXPORT_DATA, ...).
        #[arg(long, value_parser = parse_operation)]
        operation: Option<Operation>,
        /// Only rows about this identity (ExchangeGuid).
        #[arg(long)]
        identity: Option<String>,
        /// At most this many rows.
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long, value_enum)]
        format: Option<Format>,
    },
    /// Write audit rows to a JSON file and print how many.
    Export {
        #[command(flatten)]
        range: RangeArgs,
        /// The file to write (replaced atomically, owner-only).
        #[arg(long, value_name = "FILE")]
        output: PathBuf,
    },
    /// Walk the hash chain and name the first row that does not match.
    Verify {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Clear a recorded truncation or replacement of the log once you have looked
        /// into it (audited); the chain is then verified as usual.
        #[arg(long)]
        acknowledge: bool,
    },
    /// Delete rows older than a duration, keeping the rest verifiable.
    Prune {
        /// For example 365d.
        #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
        older_than: std::time::Duration,
    },
}

#[derive(Debug, Clone, Args)]
pub struct RangeArgs {
    /// From this time: RFC 3339, a date (2025-01-31) or a duration ago (7d).
    #[arg(long, value_parser = parse_when)]
    since: Option<DateTime<Utc>>,
    /// Up to this time, in the same forms.
    #[arg(long, value_parser = parse_when)]
    until: Option<DateTime<Utc>>,
}

fn parse_operation(s: &str) -> Result<Operation, String> {
    Operation::parse(s).ok_or_else(|| {
        let names: Vec<_> = Operation::ALL.iter().map(|o| o.as_str()).collect();
        format!(
            "unknown operation `{s}`; expected one of {}",
            names.join(", ")
        )
    })
}

/// An audit row as JSON, with `details` as an object rather than text.
fn row_json(r: &crate::audit::AuditRow) -> serde_json::Value {
    let mut v = serde_json::to_value(r).expect("audit rows serialize");
    if let Some(Ok(parsed)) = r
        .details
        .as_deref()
        .map(serde_json::from_str::<serde_json::Value>)
    {
        v["details"] = parsed;
    }
    v
}

pub fn run(ctx: &Context, cmd: AuditCmd) -> anyhow::Result<()> {
    let mut store = ctx.store()?;
    let now = Utc::now();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    match cmd {
        AuditCmd::List {
            range,
            operation,
            identity,
            limit,
            format,
        } => {
            let filter = AuditFilter {
                since: range.since,
                until: range.until,
                operation,
                identity,
                limit,
            };
            let rows = store.audit_rows(&filter)?;
            store.audit(
                &AuditEvent::new(Operation::AuditList).details(json!({
                    "since": filter.since, "until": filter.until,
                    "operation": filter.operation.map(|o| o.as_str()),
                    "identity": filter.identity, "count": rows.len(),
                })),
                now,
            )?;
            match Format::resolve(format) {
                Format::Json => {
                    let v: Vec<_> = rows.iter().map(row_json).collect();
                    output::write_json(&mut out, &v)?;
                }
                Format::Csv => output::write_csv(
                    &mut out,
                    &[
                        "id",
                        "timestamp",
                        "operation",
                        "identity",
                        "user",
                        "details",
                        "result",
                        "error_message",
                        "hash",
                    ],
                    rows.iter().map(|r| {
                        vec![
                            r.id.to_string(),
                            r.timestamp.clone(),
                            r.operation.clone(),
                            opt(&r.identity),
                            opt(&r.user),
                            opt(&r.details),
                            opt(&r.result),
                            opt(&r.error_message),
                            opt(&r.hash),
                        ]
                    }),
                )?,
                Format::Table => {
                    let t = output::table(
                        &[
                            Column::new("Id", true, 5),
                            Column::new("Time (UTC)", false, 8),
                            Column::new("Operation", false, 9),
                            Column::new("Identity", false, 6),
                            Column::new("User", false, 4),
                            Column::new("Result", false, 7),
                            Column::new("Details", false, 3),
                        ],
                        rows.iter().map(|r| {
                            vec![
                                r.id.to_string(),
                                r.timestamp.chars().take(19).collect(),
                                r.operation.clone(),
                                opt(&r.identity),
                                opt(&r.user),
                                match &r.error_message {
                                    Some(e) => format!("{}: {e}", opt(&r.result)),
                                    None => opt(&r.result),
                                },
                                opt(&r.details),
                            ]
                        }),
                    );
                    writeln!(out, "{t}")?;
                }
            }
        }
        AuditCmd::Export {
            range,
            output: path,
        } => {
            let filter = AuditFilter {
                since: range.since,
                until: range.until,
                ..Default::default()
            };
            let rows = store.audit_rows(&filter)?;
            let v: Vec<_> = rows.iter().map(row_json).collect();
            let mut buf = Vec::new();
            output::write_json_pretty(&mut buf, &v)?;
            let event = AuditEvent::new(Operation::ExportData).details(json!({
                "what": "audit_log", "output": path.display().to_string(),
                "since": filter.since, "until": filter.until, "count": rows.len(),
            }));
            super::audited_write(&mut store, &event, now, &path, &buf)?;
            writeln!(
                out,
                "exported {} audit row(s) to {}",
                rows.len(),
                path.display()
            )?;
        }
        AuditCmd::Verify { json, acknowledge } => {
            let acknowledged = if acknowledge {
                store.acknowledge_audit_incident(now)?
            } else {
                None
            };
            // The head kept outside the database: a log cut off or replaced is never
            // reported intact.
            let incident = store.audit_incident()?;
            let v = store.verify_audit()?;
            let head = v.head_hash().to_string();
            let event = AuditEvent::new(Operation::AuditVerify)
                .details(json!({"rows_checked": v.rows_checked, "head_hash": head}));
            let event = match (&v.first_break, &incident) {
                (Some(b), _) => event.failed(format!("chain broken at row {}: {}", b.id, b.reason)),
                (None, Some(i)) => event.failed(i.describe()),
                (None, None) => event,
            };
            store.audit(&event, now)?;
            let intact = v.first_break.is_none() && incident.is_none();
            if json {
                output::write_json(
                    &mut out,
                    &json!({
                        "intact": intact,
                        "rows_checked": v.rows_checked,
                        "first_break": v.first_break,
                        "incident": incident,
                        "acknowledged": acknowledged,
                        "head_hash": head,
                        "anchor": v.anchor,
                    }),
                )?;
            } else {
                if let Some(i) = &acknowledged {
                    writeln!(out, "acknowledged: {}", i.describe())?;
                }
                match (&v.first_break, &incident) {
                    (Some(b), _) => {
                        writeln!(out, "audit chain broken at row {}: {}", b.id, b.reason)?
                    }
                    (None, Some(i)) => writeln!(
                        out,
                        "audit log NOT intact: {}; the {} row(s) there chain correctly",
                        i.describe(),
                        v.rows_checked
                    )?,
                    (None, None) => writeln!(
                        out,
                        "audit chain intact: {} row(s) verified, head {head}",
                        v.rows_checked
                    )?,
                }
            }
            out.flush()?;
            if !intact {
                return Err(SilentExit {
                    code: exit::AUDIT_BROKEN,
                }
                .into());
            }
        }
        AuditCmd::Prune { older_than } => {
            let cutoff = chrono::Duration::from_std(older_than)
                .ok()
                .and_then(|d| now.checked_sub_signed(d))
                .ok_or_else(|| anyhow::anyhow!("--older-than reaches too far back"))?;
            let outcome = store.prune_audit_logged(cutoff, now)?;
            write!(
                out,
                "pruned {} audit row(s) older than {}",
                outcome.pruned_rows,
                cutoff.to_rfc3339()
            )?;
            if let Some(a) = &outcome.anchor {
                write!(
                    out,
                    "; the chain now starts after row {} ({})",
                    a.last_id, a.last_hash
                )?;
            }
            writeln!(out)?;
        }
    }
    out.flush()?;
    Ok(())
}
