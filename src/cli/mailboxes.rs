//! `imm-daemon mailboxes import | list | search | show | stats | export | clear`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::bail;
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;

use super::output::{self, Column, Format, fixed2, opt};
use super::{Context, SilentExit, exit};
use crate::audit::{AuditEvent, Operation};
use crate::config::Config;
use crate::inventory::{HoldType, InactiveMailbox, Summary};
use crate::store::{MailboxFilter, Store};

#[derive(Debug, Subcommand)]
pub enum MailboxesCmd {
    /// Import a Get-Mailbox -InactiveMailboxOnly export (ConvertTo-Json or Export-Csv).
    ///
    /// The file is a snapshot of the tenant: cached mailboxes absent from it are removed
    /// (each with an audit row) unless --merge is given. Nothing is written when any
    /// record is invalid, or when more than [sync] max_removed_share percent of the cache
    /// would be removed (the file may be cut off) without --allow-removals.
    Import {
        /// The export file (UTF-8, or UTF-16 with a byte order mark).
        file: PathBuf,
        /// Add and update only; keep cached mailboxes the file does not list.
        #[arg(long)]
        merge: bool,
        /// The mailboxes the file no longer lists are really gone, however many.
        #[arg(long, conflicts_with = "merge")]
        allow_removals: bool,
    },
    /// List cached inactive mailboxes.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        #[arg(long, value_enum)]
        format: Option<Format>,
    },
    /// Find mailboxes whose display name or primary SMTP address contains QUERY.
    Search {
        query: String,
        #[command(flatten)]
        filter: FilterArgs,
        #[arg(long, value_enum)]
        format: Option<Format>,
    },
    /// Show one mailbox by ExchangeGuid, primary SMTP address or UPN.
    Show {
        id: String,
        #[arg(long, value_enum)]
        format: Option<Format>,
    },
    /// Counts and monthly cost by company, hold type and age band.
    Stats {
        #[arg(long, value_enum)]
        format: Option<Format>,
    },
    /// Write mailboxes to a CSV or JSON file.
    Export {
        #[arg(long, value_enum)]
        format: ExportFormat,
        /// The file to write (replaced atomically, owner-only).
        #[arg(long, value_name = "FILE")]
        output: PathBuf,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// What the live sync found changed, oldest first: mailboxes added, removed
    /// (recovered, restored or purged), holds added or removed, recovery eligibility.
    Changes {
        /// From this time: RFC 3339, a date (2025-01-31) or a duration ago (7d).
        #[arg(long, value_parser = super::parse_when)]
        since: Option<DateTime<Utc>>,
        /// At most this many of the newest changes.
        #[arg(long, default_value_t = 10_000)]
        limit: usize,
        #[arg(long, value_enum)]
        format: Option<Format>,
    },
    /// Remove every mailbox from the cache.
    Clear {
        /// Confirm.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    Csv,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SortKey {
    Name,
    Smtp,
    Deleted,
    Age,
    Size,
    Items,
    Cost,
    Company,
}

#[derive(Debug, Clone, Args)]
pub struct FilterArgs {
    /// Sort by this column.
    #[arg(long, value_enum, default_value = "name")]
    sort: SortKey,
    /// Sort in descending order.
    #[arg(long)]
    desc: bool,
    /// At most this many mailboxes.
    #[arg(long)]
    limit: Option<usize>,
    /// Only this operating company (case-insensitive).
    #[arg(long)]
    company: Option<String>,
    /// Only mailboxes with this hold type (litigation, ediscovery, retention_policy,
    /// skype_retention, group_retention, legacy_in_place, retention_label, delay,
    /// delay_release, other).
    #[arg(long, value_parser = parse_hold)]
    hold: Option<HoldType>,
    /// Only mailboxes soft-deleted at least this many days ago.
    #[arg(long, value_name = "DAYS")]
    older_than: Option<u32>,
    /// Only mailboxes that can be recovered now.
    #[arg(long)]
    eligible: bool,
}

fn parse_hold(s: &str) -> Result<HoldType, String> {
    HoldType::parse(s).ok_or_else(|| {
        let names: Vec<_> = HoldType::ALL.iter().map(|h| h.as_str()).collect();
        format!(
            "unknown hold type `{s}`; expected one of {}",
            names.join(", ")
        )
    })
}

impl FilterArgs {
    fn describe(&self, text: Option<&str>) -> serde_json::Value {
        json!({
            "query": text,
            "company": self.company,
            "hold": self.hold.map(HoldType::as_str),
            "older_than_days": self.older_than,
            "eligible": self.eligible,
            "limit": self.limit,
        })
    }
}

/// Reads matching mailboxes, refreshes their derived figures, filters, sorts and limits.
fn query(
    store: &Store,
    cfg: &Config,
    args: &FilterArgs,
    text: Option<&str>,
    now: DateTime<Utc>,
) -> anyhow::Result<Vec<InactiveMailbox>> {
    let filter = MailboxFilter {
        text: text.map(str::to_string),
        company: args.company.clone(),
        hold: args.hold,
        deleted_before: args.older_than.map(|d| {
            now.checked_sub_signed(chrono::Duration::days(i64::from(d)))
                .unwrap_or(DateTime::<Utc>::MIN_UTC)
        }),
    };
    let mut ms = store.mailboxes(&filter)?;
    for m in &mut ms {
        m.refresh(&cfg.inventory, now);
    }
    if args.eligible {
        ms.retain(|m| m.recovery_eligible);
    }
    sort(&mut ms, args.sort);
    if args.desc {
        ms.reverse();
    }
    if let Some(l) = args.limit {
        ms.truncate(l);
    }
    Ok(ms)
}

fn sort(ms: &mut [InactiveMailbox], key: SortKey) {
    fn text(s: &Option<String>) -> String {
        s.as_deref().unwrap_or_default().to_lowercase()
    }
    match key {
        SortKey::Name => ms.sort_by_cached_key(|m| (text(&m.display_name), m.identity.clone())),
        SortKey::Smtp => ms.sort_by_cached_key(|m| (text(&m.primary_smtp), m.identity.clone())),
        SortKey::Company => {
            ms.sort_by_cached_key(|m| (text(&m.operating_company), text(&m.display_name)))
        }
        SortKey::Deleted => ms.sort_by_key(|m| m.when_soft_deleted),
        SortKey::Age => ms.sort_by_key(|m| m.age_days),
        SortKey::Items => ms.sort_by_key(|m| m.item_count),
        SortKey::Size => ms.sort_by_key(|m| m.size_bytes),
        SortKey::Cost => ms.sort_by(|a, b| a.monthly_cost.total_cmp(&b.monthly_cost)),
    }
}

/// Leaves a large result for the operating system to reclaim when the process exits:
/// freeing tens of thousands of small strings one by one was a tenth of a listing's time.
fn release_at_exit(ms: Vec<InactiveMailbox>) {
    std::mem::forget(ms);
}

const CSV_HEADER: &[&str] = &[
    "identity",
    "display_name",
    "primary_smtp",
    "user_principal_name",
    "when_soft_deleted",
    "age_days",
    "size_mb",
    "item_count",
    "license_type",
    "monthly_cost",
    "hold_types",
    "recovery_eligible",
    "recovery_blockers",
    "operating_company",
    "department",
    "last_updated",
];

fn csv_row(m: &InactiveMailbox) -> Vec<String> {
    vec![
        m.identity.clone(),
        opt(&m.display_name),
        opt(&m.primary_smtp),
        opt(&m.user_principal_name),
        m.when_soft_deleted
            .map(crate::time::stamp)
            .unwrap_or_default(),
        opt(&m.age_days),
        opt(&m.size_mb),
        opt(&m.item_count),
        opt(&m.license_type),
        fixed2(m.monthly_cost),
        holds_text(m, ";"),
        m.recovery_eligible.to_string(),
        m.recovery_blockers
            .iter()
            .map(|b| b.code.as_str())
            .collect::<Vec<_>>()
            .join(";"),
        opt(&m.operating_company),
        opt(&m.department),
        crate::time::stamp(m.last_updated),
    ]
}

fn holds_text(m: &InactiveMailbox, sep: &str) -> String {
    m.hold_types
        .iter()
        .map(|h| h.as_str())
        .collect::<Vec<_>>()
        .join(sep)
}

fn write_list(out: &mut impl Write, ms: &[InactiveMailbox], format: Format) -> anyhow::Result<()> {
    match format {
        Format::Json => output::write_json(out, ms),
        Format::Csv => output::write_csv(out, CSV_HEADER, ms.iter().map(csv_row)),
        Format::Table => {
            let t = output::table(
                &[
                    Column::new("Name", false, 10),
                    Column::new("SMTP", false, 9),
                    Column::new("Deleted", false, 3),
                    Column::new("Age (d)", true, 8),
                    Column::new("Size (MB)", true, 5),
                    Column::new("Items", true, 2),
                    Column::new("License", false, 3),
                    Column::new("Cost/mo", true, 6),
                    Column::new("Holds", false, 7),
                    Column::new("Recoverable", false, 7),
                    Column::new("Company", false, 4),
                ],
                ms.iter().map(|m| {
                    vec![
                        opt(&m.display_name),
                        opt(&m.primary_smtp),
                        m.when_soft_deleted
                            .map(|d| d.format("%Y-%m-%d").to_string())
                            .unwrap_or_default(),
                        opt(&m.age_days),
                        m.size_mb.map_or_else(|| "unknown".into(), fixed2),
                        m.item_count
                            .map_or_else(|| "unknown".into(), |c| c.to_string()),
                        opt(&m.license_type),
                        fixed2(m.monthly_cost),
                        holds_text(m, ","),
                        if m.recovery_eligible { "yes" } else { "no" }.to_string(),
                        opt(&m.operating_company),
                    ]
                }),
            );
            writeln!(out, "{t}")?;
            writeln!(out, "{} mailbox(es)", ms.len())?;
            Ok(())
        }
    }
}

pub fn run(ctx: &Context, cmd: MailboxesCmd) -> anyhow::Result<()> {
    let cfg = ctx.config()?;
    let mut store = ctx.store()?;
    let now = Utc::now();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    match cmd {
        MailboxesCmd::Import {
            file,
            merge,
            allow_removals,
        } => {
            let guard = crate::sync::RemovalGuard::from_config(&cfg, allow_removals);
            import(&mut store, &cfg, &file, merge, guard, now, &mut out)?
        }
        MailboxesCmd::List { filter, format } => {
            let ms = query(&store, &cfg, &filter, None, now)?;
            store.audit(
                &AuditEvent::new(Operation::ListMailboxes)
                    .details(json!({"filter": filter.describe(None), "count": ms.len()})),
                now,
            )?;
            write_list(&mut out, &ms, Format::resolve(format))?;
            release_at_exit(ms);
        }
        MailboxesCmd::Search {
            query: q,
            filter,
            format,
        } => {
            let ms = query(&store, &cfg, &filter, Some(&q), now)?;
            store.audit(
                &AuditEvent::new(Operation::ListMailboxes)
                    .details(json!({"filter": filter.describe(Some(&q)), "count": ms.len()})),
                now,
            )?;
            write_list(&mut out, &ms, Format::resolve(format))?;
            release_at_exit(ms);
        }
        MailboxesCmd::Show { id, format } => show(&mut store, &cfg, &id, format, now, &mut out)?,
        MailboxesCmd::Stats { format } => {
            let crate::store::CachedSummary {
                summary,
                keep,
                from_cache,
                cache,
                ..
            } = store.cached_mailbox_summary(
                now,
                kept_tallies_trusted(&ctx.paths),
                &cfg.inventory,
            )?;
            store.write(|tx| {
                // Kept in the audit row's transaction: no commit of its own.
                if let Some(keep) = &keep {
                    tx.keep_mailbox_tallies(keep)?;
                }
                tx.audit(
                    &AuditEvent::new(Operation::ListMailboxes)
                        .details(json!({"stats": true, "count": summary.count})),
                    now,
                )
            })?;
            write_stats(
                &mut out,
                &summary,
                &cache,
                from_cache,
                Format::resolve(format),
            )?;
        }
        MailboxesCmd::Export {
            format,
            output: path,
            filter,
        } => {
            let ms = query(&store, &cfg, &filter, None, now)?;
            let mut buf = Vec::with_capacity(ms.len() * 512);
            match format {
                ExportFormat::Json => output::write_json_pretty(&mut buf, &ms)?,
                ExportFormat::Csv => {
                    output::write_csv(&mut buf, CSV_HEADER, ms.iter().map(csv_row))?
                }
            }
            let event = AuditEvent::new(Operation::ExportData).details(json!({
                "what": "inactive_mailboxes",
                "output": path.display().to_string(),
                "format": format!("{format:?}").to_lowercase(),
                "filter": filter.describe(None),
                "count": ms.len(),
            }));
            super::audited_write(&mut store, &event, now, &path, &buf)?;
            writeln!(
                out,
                "exported {} mailbox(es) to {}",
                ms.len(),
                path.display()
            )?;
        }
        MailboxesCmd::Changes {
            since,
            limit,
            format,
        } => {
            let changes = store.mailbox_changes(since, limit)?;
            store.audit(
                &AuditEvent::new(Operation::ListMailboxes).details(json!({
                    "changes": true,
                    "since": since.map(crate::time::stamp),
                    "count": changes.len(),
                })),
                now,
            )?;
            write_changes(&mut out, &changes, Format::resolve(format))?;
        }
        MailboxesCmd::Clear { yes } => {
            if !yes {
                bail!("this removes every cached mailbox; run again with --yes to confirm");
            }
            let n = store.write(|tx| {
                let n = tx.clear_mailboxes()?;
                tx.audit(
                    &AuditEvent::new(Operation::ClearCache).details(json!({"removed": n})),
                    now,
                )?;
                Ok::<_, crate::store::StoreError>(n)
            })?;
            writeln!(out, "removed {n} mailbox(es) from the cache")?;
        }
    }
    out.flush()?;
    Ok(())
}

fn import(
    store: &mut Store,
    cfg: &Config,
    file: &std::path::Path,
    merge: bool,
    guard: crate::sync::RemovalGuard,
    now: DateTime<Utc>,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let file_label = file.display().to_string();
    let crate::sync::Loaded {
        imported, removed, ..
    } = crate::sync::load_export(store, &cfg.inventory, file, merge, guard, now).map_err(
        // The exit code follows the underlying error (a bad file, a database failure).
        |e| match e {
            crate::sync::LoadError::Read(e) => anyhow::Error::from(e),
            crate::sync::LoadError::Store(e) => anyhow::Error::from(e),
            e => anyhow::Error::from(e),
        },
    )?;
    write!(out, "imported {imported} mailbox(es) from {file_label}")?;
    if !merge {
        write!(out, "; removed {removed} no longer in the export")?;
    }
    writeln!(out)?;
    Ok(())
}

fn show(
    store: &mut Store,
    cfg: &Config,
    id: &str,
    format: Option<Format>,
    now: DateTime<Utc>,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let mut found = store.find_mailboxes(id)?;
    if found.len() != 1 {
        let msg = if found.is_empty() {
            format!(
                "no cached inactive mailbox matches `{id}` (give an ExchangeGuid, SMTP address or UPN)"
            )
        } else {
            let ids: Vec<&str> = found.iter().map(|m| m.identity.as_str()).collect();
            format!(
                "`{id}` matches {} inactive mailboxes ({}); give an ExchangeGuid",
                found.len(),
                ids.join(", ")
            )
        };
        store.audit(
            &AuditEvent::new(Operation::GetMailboxDetails)
                .details(json!({"query": id, "matches": found.len()}))
                .failed(msg.clone()),
            now,
        )?;
        eprintln!("error: {msg}");
        return Err(SilentExit {
            code: exit::FAILURE,
        }
        .into());
    }
    let mut m = found.remove(0);
    m.refresh(&cfg.inventory, now);
    store.audit(
        &AuditEvent::new(Operation::GetMailboxDetails)
            .identity(m.identity.clone())
            .details(json!({"query": id})),
        now,
    )?;
    match Format::resolve(format) {
        Format::Json => output::write_json(out, &m)?,
        Format::Csv => output::write_csv(out, CSV_HEADER, [csv_row(&m)])?,
        Format::Table => {
            let yes_no = |b: bool| if b { "yes" } else { "no" }.to_string();
            let lines: Vec<(&str, String)> = vec![
                ("Identity", m.identity.clone()),
                ("Display name", opt(&m.display_name)),
                ("Primary SMTP", opt(&m.primary_smtp)),
                ("UPN", opt(&m.user_principal_name)),
                (
                    "Soft-deleted",
                    m.when_soft_deleted
                        .map(crate::time::stamp)
                        .unwrap_or_default(),
                ),
                ("Age (days)", opt(&m.age_days)),
                (
                    "Size",
                    match (m.size_mb, m.size_bytes) {
                        (Some(mb), Some(b)) => format!("{mb:.2} MB ({b} bytes)"),
                        (Some(mb), None) => format!("{mb:.2} MB"),
                        _ => "unknown (statistics not fetched yet)".into(),
                    },
                ),
                (
                    "Items",
                    m.item_count
                        .map_or_else(|| "unknown".into(), |c| c.to_string()),
                ),
                ("License", opt(&m.license_type)),
                ("Monthly cost", fixed2(m.monthly_cost)),
                ("Holds", holds_text(&m, ", ")),
                ("InPlaceHolds", m.in_place_holds.join(", ")),
                ("Company", opt(&m.operating_company)),
                ("Department", opt(&m.department)),
                ("Archive", opt(&m.archive_status)),
                ("Auto-expanding", yes_no(m.auto_expanding_archive)),
                ("Recoverable", yes_no(m.recovery_eligible)),
                ("Last updated", crate::time::stamp(m.last_updated)),
            ];
            for (k, v) in lines {
                writeln!(out, "{k:<16}{v}")?;
            }
            for b in &m.recovery_blockers {
                writeln!(out, "  blocker: {} — {}", b.code, b.message)?;
            }
        }
    }
    Ok(())
}

/// What a change's details say, in a few words.
fn change_text(c: &crate::store::MailboxChange) -> String {
    let list = |key: &str| {
        c.details
            .get(key)
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default()
    };
    use crate::store::ChangeKind;
    match c.change {
        ChangeKind::Added | ChangeKind::Removed => format!("holds: {}", list("holds")),
        ChangeKind::HoldsAdded => {
            let what = [list("added"), list("added_holds")]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            format!("+{what} (now {})", list("holds"))
        }
        ChangeKind::HoldsRemoved => {
            let what = [list("removed"), list("removed_holds")]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            let now = list("holds");
            if now.is_empty() {
                format!("-{what} (no hold left: Exchange will purge it)")
            } else {
                format!("-{what} (now {now})")
            }
        }
        ChangeKind::EligibilityChanged => {
            let to = c.details.get("to").and_then(|v| v.as_bool());
            match to {
                Some(true) => "now recoverable".into(),
                _ => format!("no longer recoverable: {}", list("blockers")),
            }
        }
    }
}

fn write_changes(
    out: &mut impl Write,
    changes: &[crate::store::MailboxChange],
    format: Format,
) -> anyhow::Result<()> {
    match format {
        Format::Json => output::write_json(out, changes),
        Format::Csv => output::write_csv(
            out,
            &[
                "at",
                "sync_id",
                "change",
                "identity",
                "display_name",
                "primary_smtp",
                "details",
            ],
            changes.iter().map(|c| {
                vec![
                    c.at.clone(),
                    c.sync_id.to_string(),
                    c.change.as_str().to_string(),
                    c.identity.clone(),
                    opt(&c.display_name),
                    opt(&c.primary_smtp),
                    c.details.to_string(),
                ]
            }),
        ),
        Format::Table => {
            let t = output::table(
                &[
                    Column::new("When", false, 10),
                    Column::new("Change", false, 8),
                    Column::new("Name", false, 10),
                    Column::new("SMTP", false, 9),
                    Column::new("What", false, 10),
                ],
                changes.iter().map(|c| {
                    vec![
                        c.at.get(..19).unwrap_or(&c.at).replace('T', " "),
                        c.change.as_str().to_string(),
                        opt(&c.display_name),
                        opt(&c.primary_smtp),
                        change_text(c),
                    ]
                }),
            );
            writeln!(out, "{t}")?;
            writeln!(out, "{} change(s)", changes.len())?;
            Ok(())
        }
    }
}

/// Whether `stats` may answer from the tallies an earlier run kept: not while a daemon
/// runs that writes the table by older rules (one of an older build, started before this
/// one migrated the database), nor when that cannot be told.
fn kept_tallies_trusted(paths: &crate::paths::Paths) -> bool {
    match crate::control::lock::InstanceLock::probe(&paths.lock_file) {
        Ok(false) => true,
        Ok(true) => matches!(
            crate::control::state::DaemonState::load(&paths.state_file),
            Ok(Some(s)) if s.schema_version == Some(crate::store::SCHEMA_VERSION)
        ),
        Err(_) => false,
    }
}

fn write_stats(
    out: &mut impl Write,
    s: &Summary,
    cache: &crate::store::StoreStats,
    from_kept: bool,
    format: Format,
) -> anyhow::Result<()> {
    let sections = [
        ("company", &s.by_company),
        ("hold_type", &s.by_hold_type),
        ("age_band", &s.by_age_band),
        ("unpriced_license", &s.unpriced_licenses),
    ];
    match format {
        Format::Json => {
            let mut v = serde_json::to_value(s)?;
            v["cache"] = serde_json::to_value(cache)?;
            // Whether the tallies were kept by an earlier `stats` and moved forward, or
            // counted in one pass over the table.
            v["cache"]["tallies"] = if from_kept { "kept" } else { "counted" }.into();
            output::write_json(out, &v)
        }
        Format::Csv => {
            let total = vec![
                "total".to_string(),
                "all".to_string(),
                s.count.to_string(),
                fixed2(s.monthly_cost),
                fixed2(s.size_mb),
            ];
            let rows = std::iter::once(total).chain(sections.iter().flat_map(|(name, groups)| {
                groups.iter().map(move |g| {
                    vec![
                        name.to_string(),
                        g.key.clone(),
                        g.count.to_string(),
                        fixed2(g.monthly_cost),
                        fixed2(g.size_mb),
                    ]
                })
            }));
            output::write_csv(
                out,
                &["group", "key", "count", "monthly_cost", "size_mb"],
                rows,
            )
        }
        Format::Table => {
            writeln!(
                out,
                "{} inactive mailbox(es), {} recoverable now, {:.2} MB, monthly cost {:.2}",
                s.count, s.recovery_eligible, s.size_mb, s.monthly_cost
            )?;
            for (name, groups) in sections {
                if groups.is_empty() {
                    continue;
                }
                let header: &'static str = match name {
                    "company" => "Company",
                    "hold_type" => "Hold type",
                    "age_band" => "Age",
                    _ => "Unpriced license",
                };
                let t = output::table(
                    &[
                        Column::new(header, false, 10),
                        Column::new("Mailboxes", true, 9),
                        Column::new("Cost/mo", true, 6),
                        Column::new("Size (MB)", true, 5),
                    ],
                    groups.iter().map(|g| {
                        vec![
                            g.key.clone(),
                            g.count.to_string(),
                            fixed2(g.monthly_cost),
                            fixed2(g.size_mb),
                        ]
                    }),
                );
                writeln!(out, "\n{t}")?;
            }
            if s.size_unknown > 0 {
                writeln!(
                    out,
                    "\n{} mailbox(es) have no statistics yet: their size is unknown and counted as 0 above",
                    s.size_unknown
                )?;
            }
            if s.without_license > 0 {
                writeln!(
                    out,
                    "\n{} mailbox(es) have no license type",
                    s.without_license
                )?;
            }
            writeln!(
                out,
                "\ncache: {} row(s), updated {} .. {}, {} bytes",
                cache.count,
                cache.oldest_update.as_deref().unwrap_or("-"),
                cache.newest_update.as_deref().unwrap_or("-"),
                cache.file_size_bytes
            )?;
            Ok(())
        }
    }
}
