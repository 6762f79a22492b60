//! Pure mapping of Exchange Online mailbox fields to the inventory: holds, age, size,
//! cost, company and recovery eligibility.
//!
//! Both the offline import of PowerShell exports and the live sync feed raw field values
//! (JSON values; CSV cells arrive as JSON strings) through [`ExoMailbox::from_fields`] and
//! [`InactiveMailbox::build`]; nothing here does I/O or reads the clock.

use std::borrow::Cow;

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::InventoryConfig;

/// Get-Mailbox / Get-MailboxStatistics properties the inventory reads, in the order of
/// [`ExoMailbox::from_fields`]'s lookups. Configured attributes come on top.
pub const FIELDS: &[&str] = &[
    "ExchangeGuid",
    "DisplayName",
    "PrimarySmtpAddress",
    "UserPrincipalName",
    "WhenSoftDeleted",
    "IsInactiveMailbox",
    "LitigationHoldEnabled",
    "InPlaceHolds",
    "ComplianceTagHoldApplied",
    "DelayHoldApplied",
    "DelayReleaseHoldApplied",
    "AutoExpandingArchiveEnabled",
    "ArchiveStatus",
    "ExternalDirectoryObjectId",
    "WhenChangedUTC",
    "MailboxPlan",
    "PersistedCapabilities",
    "SKUAssigned",
    "TotalItemSize",
    "ItemCount",
];

/// The fields of [`FIELDS`] that come from Get-MailboxStatistics, not Get-Mailbox.
pub const STATISTICS_FIELDS: &[&str] = &["TotalItemSize", "ItemCount"];

/// A field that could not be read, named for the error message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("field {field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

fn field_err(field: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.to_string(),
        message: message.into(),
    }
}

/// A hold on an inactive mailbox, by stable name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldType {
    /// LitigationHoldEnabled.
    Litigation,
    /// InPlaceHolds `UniH…`: an eDiscovery case hold.
    Ediscovery,
    /// InPlaceHolds `mbx…`: a Microsoft 365 retention policy applied to the mailbox.
    RetentionPolicy,
    /// InPlaceHolds `skp…`: a retention policy for Skype for Business conversations.
    SkypeRetention,
    /// InPlaceHolds `grp…`: a retention policy for Microsoft 365 groups.
    GroupRetention,
    /// InPlaceHolds bare GUID: a legacy In-Place Hold.
    LegacyInPlace,
    /// ComplianceTagHoldApplied: a retention label.
    RetentionLabel,
    /// DelayHoldApplied.
    Delay,
    /// DelayReleaseHoldApplied.
    DelayRelease,
    /// An InPlaceHolds entry of a form not documented above.
    Other,
}

impl HoldType {
    pub const ALL: [HoldType; 10] = [
        HoldType::Litigation,
        HoldType::Ediscovery,
        HoldType::RetentionPolicy,
        HoldType::SkypeRetention,
        HoldType::GroupRetention,
        HoldType::LegacyInPlace,
        HoldType::RetentionLabel,
        HoldType::Delay,
        HoldType::DelayRelease,
        HoldType::Other,
    ];

    /// The stable name stored in `hold_types` and accepted by `--hold`.
    pub fn as_str(self) -> &'static str {
        match self {
            HoldType::Litigation => "litigation",
            HoldType::Ediscovery => "ediscovery",
            HoldType::RetentionPolicy => "retention_policy",
            HoldType::SkypeRetention => "skype_retention",
            HoldType::GroupRetention => "group_retention",
            HoldType::LegacyInPlace => "legacy_in_place",
            HoldType::RetentionLabel => "retention_label",
            HoldType::Delay => "delay",
            HoldType::DelayRelease => "delay_release",
            HoldType::Other => "other",
        }
    }

    pub fn parse(s: &str) -> Option<HoldType> {
        HoldType::ALL
            .into_iter()
            .find(|h| h.as_str().eq_ignore_ascii_case(s.trim()))
    }
}

/// Classifies one InPlaceHolds entry following Microsoft's "identify the type of hold"
/// guidance; `None` for `-mbx…`, an exclusion from an org-wide policy, which is no hold.
pub fn classify_in_place_hold(entry: &str) -> Option<HoldType> {
    let e = entry.trim();
    let starts = |p: &str| {
        e.as_bytes()
            .get(..p.len())
            .is_some_and(|b| b.eq_ignore_ascii_case(p.as_bytes()))
    };
    if e.is_empty() || starts("-mbx") {
        None
    } else if starts("UniH") {
        Some(HoldType::Ediscovery)
    } else if starts("mbx") {
        Some(HoldType::RetentionPolicy)
    } else if starts("skp") {
        Some(HoldType::SkypeRetention)
    } else if starts("grp") {
        Some(HoldType::GroupRetention)
    } else if is_bare_guid(e) {
        Some(HoldType::LegacyInPlace)
    } else {
        Some(HoldType::Other)
    }
}

fn is_bare_guid(s: &str) -> bool {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    hex.len() == 32
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
        && (s.len() == 32 || s.len() == 36)
}

/// The hold types that apply, deduplicated and in a stable order.
pub fn hold_types(
    litigation: bool,
    in_place_holds: &[String],
    compliance_tag: bool,
    delay: bool,
    delay_release: bool,
) -> Vec<HoldType> {
    let mut v: Vec<HoldType> = in_place_holds
        .iter()
        .filter_map(|e| classify_in_place_hold(e))
        .collect();
    for (on, h) in [
        (litigation, HoldType::Litigation),
        (compliance_tag, HoldType::RetentionLabel),
        (delay, HoldType::Delay),
        (delay_release, HoldType::DelayRelease),
    ] {
        if on {
            v.push(h);
        }
    }
    v.sort();
    v.dedup();
    v
}

/// Whole days from `deleted` to `now` (UTC); 0 when `deleted` lies in the future.
pub fn age_days(deleted: DateTime<Utc>, now: DateTime<Utc>) -> i64 {
    (now - deleted).num_days().max(0)
}

/// Parses the date forms PowerShell exports carry:
/// `/Date(1690000000000)/` (Windows PowerShell 5.1, optionally with a `+0100` offset,
/// which does not change the instant), ISO 8601 (PowerShell 7; no offset means UTC), and
/// the `M/d/yyyy h:mm:ss tt` / `MM/dd/yyyy HH:mm:ss` / `yyyy-MM-dd HH:mm:ss` text of CSV
/// exports (taken as UTC), or a bare `yyyy-MM-dd`. An empty value is `None`.
pub fn parse_ps_date(s: &str) -> Result<Option<DateTime<Utc>>, String> {
    match parse_ps_date_any_year(s)? {
        Some(d) if !(0..=9999).contains(&chrono::Datelike::year(&d)) => Err(format!(
            "date `{}` is outside the years 0 to 9999",
            s.trim()
        )),
        other => Ok(other),
    }
}

fn parse_ps_date_any_year(s: &str) -> Result<Option<DateTime<Utc>>, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    if let Some(inner) = s.strip_prefix("/Date(").and_then(|r| r.strip_suffix(")/")) {
        let digits_end = inner
            .char_indices()
            .skip(1)
            .find(|(_, c)| *c == '+' || *c == '-')
            .map_or(inner.len(), |(i, _)| i);
        let (ms, offset) = inner.split_at(digits_end);
        let valid_offset = offset.is_empty()
            || (offset.len() == 5 && offset[1..].bytes().all(|b| b.is_ascii_digit()));
        if let (Ok(ms), true) = (ms.parse::<i64>(), valid_offset)
            && let Some(d) = Utc.timestamp_millis_opt(ms).single()
        {
            return Ok(Some(d));
        }
        return Err(format!("unparseable date `{s}`"));
    }
    if let Ok(d) = DateTime::parse_from_rfc3339(s) {
        return Ok(Some(d.with_timezone(&Utc)));
    }
    const NAIVE: &[&str] = &[
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%m/%d/%Y %I:%M:%S %p",
        "%m/%d/%Y %H:%M:%S",
    ];
    for f in NAIVE {
        if let Ok(n) = NaiveDateTime::parse_from_str(s, f) {
            return Ok(Some(n.and_utc()));
        }
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(Some(
            d.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc(),
        ));
    }
    Err(format!(
        "unparseable date `{s}` (expected /Date(ms)/, ISO 8601, or M/d/yyyy h:mm:ss AM)"
    ))
}

/// The largest count or byte figure the cache keeps: SQLite's integers are signed 64-bit,
/// so a larger one would be stored wrapped round (18446744073709551615 as -1).
pub const MAX_FIGURE: u64 = i64::MAX as u64;

fn beyond(what: &str) -> String {
    format!("{what} is beyond what the cache stores (at most {MAX_FIGURE})")
}

/// Digits of a count or byte figure, read as the cache can keep them.
enum Figure {
    Fits(u64),
    Beyond,
    NotDigits,
}

fn figure(digits: &str) -> Figure {
    match digits.parse::<u64>() {
        Ok(n) if n <= MAX_FIGURE => Figure::Fits(n),
        Ok(_) => Figure::Beyond,
        Err(e) if *e.kind() == std::num::IntErrorKind::PosOverflow => Figure::Beyond,
        Err(_) => Figure::NotDigits,
    }
}

/// Reads a byte count from TotalItemSize: `"3.233 GB (3,471,471,173 bytes)"`, a plain
/// number of bytes, or an object whose `Value` holds either. A count beyond
/// [`MAX_FIGURE`] is an error, not a wrapped or saturated figure.
pub fn parse_item_size(v: &Value) -> Result<Option<u64>, String> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => {
            if let Some(b) = n.as_u64() {
                return if b <= MAX_FIGURE {
                    Ok(Some(b))
                } else {
                    Err(beyond(&format!("the size {n}")))
                };
            }
            // 2^63 as a float: `as u64` would saturate silently above it.
            const LIMIT: f64 = 9_223_372_036_854_775_808.0;
            match n.as_f64() {
                Some(f) if f >= 0.0 && f.fract() == 0.0 && f < LIMIT => Ok(Some(f as u64)),
                Some(f) if f >= LIMIT => Err(beyond(&format!("the size {n}"))),
                _ => Err(format!("expected a whole number of bytes, found {n}")),
            }
        }
        Value::String(s) => parse_size_text(s),
        Value::Object(o) => match o
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("Value"))
            .map(|(_, v)| v)
        {
            Some(inner) => parse_item_size(inner),
            None => Err("expected a size such as \"3.233 GB (3,471,471,173 bytes)\"".into()),
        },
        other => Err(format!("expected a size, found {other}")),
    }
}

fn parse_size_text(s: &str) -> Result<Option<u64>, String> {
    let t = s.trim();
    if t.is_empty() {
        return Ok(None);
    }
    let too_big = || beyond(&format!("the size `{t}`"));
    if let Some(open) = t.rfind('(') {
        let inner = t[open + 1..].trim_end_matches(')').trim();
        if let Some(num) = inner.strip_suffix("bytes").or(inner.strip_suffix("byte")) {
            let digits: String = num
                .chars()
                .filter(|c| !matches!(c, ',' | '.' | ' ' | '\u{a0}' | '\''))
                .collect();
            match figure(&digits) {
                Figure::Fits(b) => return Ok(Some(b)),
                Figure::Beyond => return Err(too_big()),
                Figure::NotDigits => {}
            }
        }
    }
    match figure(&t.replace(',', "")) {
        Figure::Fits(b) => Ok(Some(b)),
        Figure::Beyond => Err(too_big()),
        Figure::NotDigits => Err(format!(
            "unreadable size `{s}` (expected such as \"3.233 GB (3,471,471,173 bytes)\")"
        )),
    }
}

/// Reads ItemCount: a number, or text with optional thousands separators. A count beyond
/// [`MAX_FIGURE`] is an error.
pub fn parse_item_count(v: &Value) -> Result<Option<u64>, String> {
    let expected = |found: &dyn std::fmt::Display| format!("expected a count, found {found}");
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => match n.as_u64() {
            Some(c) if c <= MAX_FIGURE => Ok(Some(c)),
            Some(_) => Err(beyond(&format!("the count {n}"))),
            None => Err(expected(n)),
        },
        Value::String(s) if s.trim().is_empty() => Ok(None),
        Value::String(s) => match figure(&s.trim().replace(',', "")) {
            Figure::Fits(c) => Ok(Some(c)),
            Figure::Beyond => Err(beyond(&format!("the count `{}`", s.trim()))),
            Figure::NotDigits => Err(expected(&format_args!("`{s}`"))),
        },
        other => Err(expected(other)),
    }
}

/// Mebibytes (Exchange's "MB"), rounded to three decimals; the byte count is kept too.
pub fn bytes_to_mb(bytes: u64) -> f64 {
    (bytes as f64 / (1024.0 * 1024.0) * 1000.0).round() / 1000.0
}

fn as_text(v: &Value) -> Option<Cow<'_, str>> {
    match v {
        Value::Null => None,
        Value::String(s) => {
            let t = s.trim();
            (!t.is_empty()).then_some(Cow::Borrowed(t))
        }
        Value::Bool(b) => Some(Cow::Owned(b.to_string())),
        Value::Number(n) => Some(Cow::Owned(n.to_string())),
        // A text field that arrives as an object or a list is kept as its JSON text.
        Value::Object(_) | Value::Array(_) => Some(Cow::Owned(v.to_string())),
    }
}

fn parse_bool(field: &str, v: &Value) -> Result<bool, FieldError> {
    match v {
        Value::Null => Ok(false),
        Value::Bool(b) => Ok(*b),
        Value::Number(n) => Ok(n.as_f64().is_some_and(|f| f != 0.0)),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "" | "false" | "0" | "no" => Ok(false),
            "true" | "1" | "yes" => Ok(true),
            _ => Err(field_err(
                field,
                format!("expected True or False, found `{s}`"),
            )),
        },
        other => Err(field_err(
            field,
            format!("expected True or False, found {other}"),
        )),
    }
}

/// InPlaceHolds: a JSON array, or in CSV the multi-valued text PowerShell writes
/// (entries separated by spaces) or a `-join`ed list (`;` or `,`).
fn parse_string_list(field: &str, v: &Value) -> Result<Vec<String>, FieldError> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items
            .iter()
            .filter(|i| !i.is_null())
            .map(|i| match i {
                Value::String(s) => Ok(s.trim().to_string()),
                other => Err(field_err(
                    field,
                    format!("expected text entries, found {other}"),
                )),
            })
            .filter(|r| r.as_ref().map_or(true, |s| !s.is_empty()))
            .collect(),
        Value::String(s) => {
            let t = s.trim();
            if t.starts_with("System.") || t.starts_with("Deserialized.") {
                return Err(field_err(
                    field,
                    format!(
                        "holds the type name `{t}` instead of values; export it with @{{n='{field}';e={{$_.{field} -join ';'}}}}"
                    ),
                ));
            }
            Ok(t.split(|c: char| c == ';' || c == ',' || c.is_whitespace())
                .filter(|p| !p.is_empty())
                .map(str::to_string)
                .collect())
        }
        other => Err(field_err(field, format!("expected a list, found {other}"))),
    }
}

/// The raw Exchange facts about one mailbox, before inventory rules apply.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExoMailbox {
    pub exchange_guid: String,
    pub display_name: Option<String>,
    pub primary_smtp: Option<String>,
    pub user_principal_name: Option<String>,
    pub when_soft_deleted: Option<DateTime<Utc>>,
    pub is_inactive: Option<bool>,
    pub litigation_hold: bool,
    pub in_place_holds: Vec<String>,
    pub compliance_tag_hold: bool,
    pub delay_hold: bool,
    pub delay_release_hold: bool,
    pub auto_expanding_archive: bool,
    pub archive_status: Option<String>,
    pub external_directory_object_id: Option<String>,
    pub total_item_size_bytes: Option<u64>,
    pub item_count: Option<u64>,
    /// WhenChangedUTC: the live sync fetches statistics again when it moves.
    pub when_changed: Option<DateTime<Utc>>,
    pub company: Option<String>,
    pub department: Option<String>,
    pub license: Option<String>,
}

/// The licence of a mailbox whose licence attribute is empty, from Exchange's own
/// fields through `[inventory] license_map` (names compared without regard to case):
/// the `MailboxPlan` (its `-GUID` suffix dropped), else the first mapped
/// `PersistedCapabilities` entry, else `SKUAssigned` when a licence is assigned.
pub fn mapped_license(
    cfg: &InventoryConfig,
    mailbox_plan: Option<&str>,
    capabilities: &[String],
    sku_assigned: bool,
) -> Option<String> {
    let lookup = |key: &str| {
        cfg.license_map
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.clone())
    };
    let plan = mailbox_plan.map(plan_name);
    plan.and_then(lookup)
        .or_else(|| capabilities.iter().find_map(|c| lookup(c)))
        .or_else(|| sku_assigned.then(|| lookup("SKUAssigned")).flatten())
}

/// A MailboxPlan without the `-GUID` Exchange appends (`ExchangeOnlineEnterprise-bd4b…`).
fn plan_name(plan: &str) -> &str {
    let plan = plan.trim();
    match plan.len().checked_sub(37) {
        Some(cut)
            if plan.as_bytes()[cut] == b'-' && uuid::Uuid::try_parse(&plan[cut + 1..]).is_ok() =>
        {
            &plan[..cut]
        }
        _ => plan,
    }
}

impl ExoMailbox {
    /// Builds the raw facts from a field lookup (names as in [`FIELDS`] and the
    /// configured attributes; lookups are by exact name, the caller folds case).
    pub fn from_fields<'v>(
        cfg: &InventoryConfig,
        get: impl Fn(&str) -> Option<&'v Value>,
    ) -> Result<ExoMailbox, FieldError> {
        let null = &Value::Null;
        let f = |name: &str| get(name).unwrap_or(null);
        let text = |name: &str| as_text(f(name)).map(Cow::into_owned);

        let guid_raw = text("ExchangeGuid").ok_or_else(|| {
            field_err(
                "ExchangeGuid",
                "missing; every record needs its ExchangeGuid",
            )
        })?;
        let exchange_guid = uuid::Uuid::try_parse(&guid_raw)
            .map(|u| u.hyphenated().to_string())
            .map_err(|_| {
                field_err(
                    "ExchangeGuid",
                    format!("expected a GUID, found `{guid_raw}`"),
                )
            })?;
        if exchange_guid == uuid::Uuid::nil().hyphenated().to_string() {
            return Err(field_err("ExchangeGuid", "is the empty GUID"));
        }

        let when_soft_deleted = match f("WhenSoftDeleted") {
            Value::Null => None,
            Value::String(s) => parse_ps_date(s).map_err(|m| field_err("WhenSoftDeleted", m))?,
            other => {
                return Err(field_err(
                    "WhenSoftDeleted",
                    format!("expected a date, found {other}"),
                ));
            }
        };
        let is_inactive = match f("IsInactiveMailbox") {
            Value::Null => None,
            v => Some(parse_bool("IsInactiveMailbox", v)?),
        };
        let attr =
            |a: &Option<crate::config::AttributeName>| a.as_ref().and_then(|a| text(a.as_str()));
        let when_changed = match f("WhenChangedUTC") {
            Value::String(s) => parse_ps_date(s).map_err(|m| field_err("WhenChangedUTC", m))?,
            _ => None,
        };
        let license = text(cfg.license_attribute.as_str()).or_else(|| {
            let plan = text("MailboxPlan");
            let capabilities =
                parse_string_list("PersistedCapabilities", f("PersistedCapabilities"))
                    .unwrap_or_default();
            let sku = parse_bool("SKUAssigned", f("SKUAssigned")).unwrap_or(false);
            mapped_license(cfg, plan.as_deref(), &capabilities, sku)
        });
        Ok(ExoMailbox {
            exchange_guid,
            display_name: text("DisplayName"),
            primary_smtp: text("PrimarySmtpAddress").map(|s| s.to_lowercase()),
            user_principal_name: text("UserPrincipalName"),
            when_soft_deleted,
            is_inactive,
            litigation_hold: parse_bool("LitigationHoldEnabled", f("LitigationHoldEnabled"))?,
            in_place_holds: parse_string_list("InPlaceHolds", f("InPlaceHolds"))?,
            compliance_tag_hold: parse_bool(
                "ComplianceTagHoldApplied",
                f("ComplianceTagHoldApplied"),
            )?,
            delay_hold: parse_bool("DelayHoldApplied", f("DelayHoldApplied"))?,
            delay_release_hold: parse_bool(
                "DelayReleaseHoldApplied",
                f("DelayReleaseHoldApplied"),
            )?,
            auto_expanding_archive: parse_bool(
                "AutoExpandingArchiveEnabled",
                f("AutoExpandingArchiveEnabled"),
            )?,
            archive_status: text("ArchiveStatus"),
            external_directory_object_id: text("ExternalDirectoryObjectId"),
            total_item_size_bytes: parse_item_size(f("TotalItemSize"))
                .map_err(|m| field_err("TotalItemSize", m))?,
            item_count: parse_item_count(f("ItemCount")).map_err(|m| field_err("ItemCount", m))?,
            when_changed,
            company: attr(&cfg.company_attribute),
            department: attr(&cfg.department_attribute),
            license,
        })
    }
}

/// Why a mailbox cannot be recovered now: a stable code and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blocker {
    pub code: String,
    pub message: String,
}

/// Recovery eligibility of an inactive mailbox (`New-Mailbox -InactiveMailbox`).
///
/// Rules, from Microsoft's Purview documentation ("Recover an inactive mailbox", "Restore
/// an inactive mailbox", "Learn about inactive mailboxes"); each is a blocker:
/// - `not_inactive`: IsInactiveMailbox is false; the mailbox is no longer inactive
///   (its holds were removed) and is on its way to being purged.
/// - `auto_expanding_archive`: "You can't recover or restore an inactive mailbox that's
///   configured with an auto-expanding archive."
/// - `soft_deleted_under_30_days`: "If an inactive mailbox was soft-deleted less than 30
///   days ago, you can't use the New-Mailbox -InactiveMailbox command to recover it":
///   restore the user account in Entra ID instead.
/// - `directory_user_present`: ExternalDirectoryObjectId is set, which the same page gives
///   as the sign that the soft-deleted retention period has not expired.
/// - `soft_delete_date_unknown`: without WhenSoftDeleted the 30-day rule cannot be checked.
pub fn recovery_blockers(
    is_inactive: Option<bool>,
    auto_expanding_archive: bool,
    external_directory_object_id: Option<&str>,
    when_soft_deleted: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Vec<Blocker> {
    let mut b = Vec::new();
    let mut push = |code: &str, message: String| {
        b.push(Blocker {
            code: code.to_string(),
            message,
        })
    };
    if is_inactive == Some(false) {
        push(
            "not_inactive",
            "the mailbox is no longer inactive: its holds were removed and it will be purged"
                .into(),
        );
    }
    if auto_expanding_archive {
        push(
            "auto_expanding_archive",
            "an inactive mailbox with an auto-expanding archive can't be recovered or restored; export its content with a Content search instead".into(),
        );
    }
    match when_soft_deleted {
        Some(d) if age_days(d, now) < 30 => push(
            "soft_deleted_under_30_days",
            format!(
                "soft-deleted {} days ago: within 30 days, restore the user account in Entra ID instead of recovering the mailbox",
                age_days(d, now)
            ),
        ),
        Some(_) => {}
        None => push(
            "soft_delete_date_unknown",
            "WhenSoftDeleted is unknown, so the 30-day rule cannot be checked".into(),
        ),
    }
    if external_directory_object_id.is_some_and(|s| !s.trim().is_empty()) {
        push(
            "directory_user_present",
            "ExternalDirectoryObjectId is still set: the soft-deleted retention period has not expired, restore the user account instead".into(),
        );
    }
    b
}

fn ser_date<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::time::stamp(*t))
}

fn ser_opt_date<S: serde::Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => ser_date(t, s),
        None => s.serialize_none(),
    }
}

/// One row of the inventory, as stored and shown.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InactiveMailbox {
    pub identity: String,
    pub display_name: Option<String>,
    pub primary_smtp: Option<String>,
    pub user_principal_name: Option<String>,
    #[serde(serialize_with = "ser_opt_date")]
    pub when_soft_deleted: Option<DateTime<Utc>>,
    pub age_days: Option<i64>,
    pub size_mb: Option<f64>,
    pub size_bytes: Option<u64>,
    pub item_count: Option<u64>,
    pub license_type: Option<String>,
    pub monthly_cost: f64,
    pub hold_types: Vec<HoldType>,
    pub in_place_holds: Vec<String>,
    pub recovery_eligible: bool,
    pub recovery_blockers: Vec<Blocker>,
    pub operating_company: Option<String>,
    pub department: Option<String>,
    pub is_inactive: Option<bool>,
    pub auto_expanding_archive: bool,
    pub archive_status: Option<String>,
    pub external_directory_object_id: Option<String>,
    #[serde(serialize_with = "ser_date")]
    pub last_updated: DateTime<Utc>,
}

/// The price of a license from the table (names compared without regard to case);
/// `None` when the license is not in the table.
pub fn price_of(cfg: &InventoryConfig, license: &str) -> Option<f64> {
    cfg.prices
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(license))
        .map(|(_, p)| p.value())
}

/// The company for a mailbox: its attribute when set, else the domain map (a parent
/// domain matches its subdomains).
pub fn company_for(
    cfg: &InventoryConfig,
    attribute: Option<&str>,
    smtp: Option<&str>,
) -> Option<String> {
    if let Some(a) = attribute.filter(|a| !a.trim().is_empty()) {
        return Some(a.trim().to_string());
    }
    let domain = smtp?.rsplit_once('@')?.1.to_ascii_lowercase();
    let mut d: &str = &domain;
    loop {
        if let Some((_, c)) = cfg.company_domains.iter().find(|(k, _)| k.as_str() == d) {
            return Some(c.clone());
        }
        d = d.split_once('.')?.1;
    }
}

impl InactiveMailbox {
    /// Applies the inventory rules to raw Exchange facts.
    pub fn build(raw: ExoMailbox, cfg: &InventoryConfig, now: DateTime<Utc>) -> InactiveMailbox {
        let hold_types = hold_types(
            raw.litigation_hold,
            &raw.in_place_holds,
            raw.compliance_tag_hold,
            raw.delay_hold,
            raw.delay_release_hold,
        );
        let license_type = raw.license.or_else(|| cfg.default_license.clone());
        let operating_company =
            company_for(cfg, raw.company.as_deref(), raw.primary_smtp.as_deref());
        let mut m = InactiveMailbox {
            identity: raw.exchange_guid,
            display_name: raw.display_name,
            primary_smtp: raw.primary_smtp,
            user_principal_name: raw.user_principal_name,
            when_soft_deleted: raw.when_soft_deleted,
            age_days: None,
            size_mb: raw.total_item_size_bytes.map(bytes_to_mb),
            size_bytes: raw.total_item_size_bytes,
            item_count: raw.item_count,
            license_type,
            monthly_cost: 0.0,
            hold_types,
            in_place_holds: raw.in_place_holds,
            recovery_eligible: false,
            recovery_blockers: Vec::new(),
            operating_company,
            department: raw.department,
            is_inactive: raw.is_inactive,
            auto_expanding_archive: raw.auto_expanding_archive,
            archive_status: raw.archive_status,
            external_directory_object_id: raw.external_directory_object_id,
            last_updated: now,
        };
        m.refresh(cfg, now);
        m
    }

    /// Recomputes what depends on the clock or the price table (age, cost, eligibility),
    /// so what a user reads is never a stale stored figure.
    pub fn refresh(&mut self, cfg: &InventoryConfig, now: DateTime<Utc>) {
        self.age_days = self.when_soft_deleted.map(|d| age_days(d, now));
        self.monthly_cost = self
            .license_type
            .as_deref()
            .and_then(|l| price_of(cfg, l))
            .unwrap_or(0.0);
        self.recovery_blockers = recovery_blockers(
            self.is_inactive,
            self.auto_expanding_archive,
            self.external_directory_object_id.as_deref(),
            self.when_soft_deleted,
            now,
        );
        self.recovery_eligible = self.recovery_blockers.is_empty();
    }
}

/// Counts and costs of one group in a [`Summary`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Group {
    pub key: String,
    pub count: u64,
    pub monthly_cost: f64,
    pub size_mb: f64,
}

/// Totals of the inventory by company, hold type and age band.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub count: u64,
    pub recovery_eligible: u64,
    pub monthly_cost: f64,
    pub size_mb: f64,
    pub by_company: Vec<Group>,
    /// A mailbox counts once under each of its hold types (`none` when it has none).
    pub by_hold_type: Vec<Group>,
    pub by_age_band: Vec<Group>,
    /// License types missing from the price table, priced 0.
    pub unpriced_licenses: Vec<Group>,
    pub without_license: u64,
    /// Mailboxes whose size is not known yet (the live sync has not fetched their
    /// statistics): they count as 0 MB in the sizes above.
    pub size_unknown: u64,
}

/// Age bands of `mailboxes stats`, as (label, first day, last day).
pub const AGE_BANDS: &[(&str, i64, i64)] = &[
    ("0-29 days", 0, 29),
    ("30-89 days", 30, 89),
    ("90-179 days", 90, 179),
    ("180-364 days", 180, 364),
    ("1-2 years", 365, 729),
    ("2+ years", 730, i64::MAX),
];

/// The age band label of an age in days.
pub fn age_band(days: Option<i64>) -> &'static str {
    days.and_then(|d| {
        AGE_BANDS
            .iter()
            .find(|(_, lo, hi)| (*lo..=*hi).contains(&d))
    })
    .map_or("unknown", |(label, _, _)| label)
}

/// Sums mailboxes (already refreshed) into a [`Summary`].
pub fn summarize(ms: &[InactiveMailbox], cfg: &InventoryConfig) -> Summary {
    use std::collections::BTreeMap;
    fn add(map: &mut BTreeMap<String, Group>, key: &str, m: &InactiveMailbox) {
        let g = map.entry(key.to_string()).or_insert_with(|| Group {
            key: key.to_string(),
            count: 0,
            monthly_cost: 0.0,
            size_mb: 0.0,
        });
        g.count += 1;
        g.monthly_cost += m.monthly_cost;
        g.size_mb += m.size_mb.unwrap_or(0.0);
    }
    let (mut company, mut hold, mut band, mut unpriced) = Default::default();
    let mut s = Summary {
        count: 0,
        recovery_eligible: 0,
        monthly_cost: 0.0,
        size_mb: 0.0,
        by_company: Vec::new(),
        by_hold_type: Vec::new(),
        by_age_band: Vec::new(),
        unpriced_licenses: Vec::new(),
        without_license: 0,
        size_unknown: 0,
    };
    for m in ms {
        s.count += 1;
        s.recovery_eligible += u64::from(m.recovery_eligible);
        s.monthly_cost += m.monthly_cost;
        s.size_mb += m.size_mb.unwrap_or(0.0);
        s.size_unknown += u64::from(m.size_mb.is_none());
        add(
            &mut company,
            m.operating_company.as_deref().unwrap_or("(none)"),
            m,
        );
        if m.hold_types.is_empty() {
            add(&mut hold, "none", m);
        }
        for h in &m.hold_types {
            add(&mut hold, h.as_str(), m);
        }
        add(&mut band, age_band(m.age_days), m);
        match m.license_type.as_deref() {
            None => s.without_license += 1,
            Some(l) if price_of(cfg, l).is_none() => add(&mut unpriced, l, m),
            Some(_) => {}
        }
    }
    let by_cost = |map: BTreeMap<String, Group>| {
        let mut v: Vec<Group> = map.into_values().collect();
        v.sort_by(|a, b| {
            b.monthly_cost
                .total_cmp(&a.monthly_cost)
                .then(b.count.cmp(&a.count))
        });
        v
    };
    s.by_company = by_cost(company);
    s.by_hold_type = by_cost(hold);
    s.unpriced_licenses = by_cost(unpriced);
    let mut band: BTreeMap<String, Group> = band;
    s.by_age_band = AGE_BANDS
        .iter()
        .map(|(l, _, _)| *l)
        .chain(["unknown"])
        .filter_map(|l| band.remove(l))
        .collect();
    s
}

/// The guard against a snapshot that would empty much of the cache: an export cut off at
/// a row boundary, or a listing short by every sign but its length, reads as a tenant
/// whose mailboxes were purged. More than `max_share` percent of the cached mailboxes
/// (and more than [`RemovalGuard::ALWAYS_ALLOWED`]) is refused unless `allow`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemovalGuard {
    /// Percent of the cache, 0 to 100 (100: no guard), from `[sync] max_removed_share`.
    pub max_share: u8,
    /// The person said the removals are real (`--allow-removals`).
    pub allow: bool,
}

impl RemovalGuard {
    /// Removals this few are never refused: in a small tenant a few purges are a large
    /// share.
    pub const ALWAYS_ALLOWED: u64 = 5;

    /// The guard `[sync] max_removed_share` sets, with `allow` from the command line.
    pub fn from_config(config: &crate::config::Config, allow: bool) -> RemovalGuard {
        RemovalGuard {
            max_share: config.sync.max_removed_share.get() as u8,
            allow,
        }
    }

    /// Whether removing `removed` of `cached` mailboxes may go ahead.
    pub fn check(&self, removed: u64, cached: u64) -> Result<(), TooManyRemovals> {
        if self.allow
            || self.max_share >= 100
            || removed <= Self::ALWAYS_ALLOWED
            || removed.saturating_mul(100) <= cached.saturating_mul(u64::from(self.max_share))
        {
            return Ok(());
        }
        Err(TooManyRemovals {
            removed,
            cached,
            max_share: self.max_share,
        })
    }
}

/// A snapshot refused by the [`RemovalGuard`]; nothing was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "refusing to remove {removed} of the {cached} cached mailboxes ({}%, more than [sync] max_removed_share = {max_share}%): the snapshot may be incomplete (an export cut off, a listing short); if they are really gone, run again with --allow-removals (`imm-daemon mailboxes import --allow-removals`, `imm-daemon sync --allow-removals`) or raise max_removed_share",
    removed.saturating_mul(100) / (*cached).max(1)
)]
pub struct TooManyRemovals {
    pub removed: u64,
    pub cached: u64,
    pub max_share: u8,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn licences_come_from_the_attribute_else_exchange_s_plan() {
        let cfg = InventoryConfig::default();
        let caps = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let plan = "ExchangeOnlineEnterprise-bd4b2f6b-2e37-4a45-8e63-c4e7ea2a9c8f";
        assert_eq!(
            mapped_license(&cfg, Some(plan), &[], false).as_deref(),
            Some("E3")
        );
        assert_eq!(
            mapped_license(&cfg, Some("exchangeonline"), &[], false).as_deref(),
            Some("E1")
        );
        assert_eq!(
            mapped_license(
                &cfg,
                None,
                &caps(&["BPOS_S_ArchiveAddOn", "BPOS_S_Deskless"]),
                false
            )
            .as_deref(),
            Some("F3")
        );
        assert_eq!(mapped_license(&cfg, Some("Unknown-Plan"), &[], true), None);
        let mut custom = cfg.clone();
        custom.license_map = [("SKUAssigned".to_string(), "Licensed".to_string())].into();
        assert_eq!(
            mapped_license(&custom, None, &[], true).as_deref(),
            Some("Licensed")
        );
        assert_eq!(mapped_license(&custom, None, &[], false), None);
        assert_eq!(plan_name(plan), "ExchangeOnlineEnterprise");
        assert_eq!(plan_name("ExchangeOnline"), "ExchangeOnline");
        // The attribute wins over the plan when set; an empty one falls through.
        let rec = serde_json::json!({
            "ExchangeGuid": "4a3b2c1d-5e6f-47a8-b9c0-d1e2f3a4b5c6",
            "LicenseType": "E5",
            "MailboxPlan": plan,
        });
        let m = ExoMailbox::from_fields(&cfg, |k| rec.get(k)).unwrap();
        assert_eq!(m.license.as_deref(), Some("E5"));
        let rec = serde_json::json!({
            "ExchangeGuid": "4a3b2c1d-5e6f-47a8-b9c0-d1e2f3a4b5c6",
            "LicenseType": "",
            "PersistedCapabilities": ["BPOS_S_Standard"],
        });
        let m = ExoMailbox::from_fields(&cfg, |k| rec.get(k)).unwrap();
        assert_eq!(m.license.as_deref(), Some("E1"));
    }
    use serde_json::json;

    fn dt(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn every_hold_prefix() {
        let g = "4a3b2c1d5e6f47a8b9c0d1e2f3a4b5c6";
        let cases = [
            (format!("UniH{g}"), Some(HoldType::Ediscovery)),
            (format!("unih{g}"), Some(HoldType::Ediscovery)),
            (format!("mbx{g}:1"), Some(HoldType::RetentionPolicy)),
            ("größe".to_string(), Some(HoldType::Other)),
            ("m".to_string(), Some(HoldType::Other)),
            (format!("skp{g}:3"), Some(HoldType::SkypeRetention)),
            (format!("grp{g}:2"), Some(HoldType::GroupRetention)),
            (format!("-mbx{g}:1"), None),
            (g.to_string(), Some(HoldType::LegacyInPlace)),
            (
                "4a3b2c1d-5e6f-47a8-b9c0-d1e2f3a4b5c6".to_string(),
                Some(HoldType::LegacyInPlace),
            ),
            ("cld12345".to_string(), Some(HoldType::Other)),
            (String::new(), None),
        ];
        for (entry, want) in cases {
            assert_eq!(classify_in_place_hold(&entry), want, "{entry}");
        }
    }

    #[test]
    fn flags_become_holds_and_exclusions_do_not() {
        let holds = hold_types(
            true,
            &["-mbxabc:1".into(), "UniHx".into(), "UniHy".into()],
            true,
            true,
            true,
        );
        assert_eq!(
            holds,
            vec![
                HoldType::Litigation,
                HoldType::Ediscovery,
                HoldType::RetentionLabel,
                HoldType::Delay,
                HoldType::DelayRelease
            ]
        );
        assert!(hold_types(false, &["-mbxabc:1".into()], false, false, false).is_empty());
        for h in HoldType::ALL {
            assert_eq!(HoldType::parse(h.as_str()), Some(h));
            assert_eq!(serde_json::to_value(h).unwrap(), json!(h.as_str()));
        }
    }

    #[test]
    fn both_powershell_date_forms() {
        let want = dt("2023-07-22T04:26:40Z");
        assert_eq!(parse_ps_date("/Date(1690000000000)/").unwrap(), Some(want));
        assert_eq!(
            parse_ps_date("/Date(1690000000000+0100)/").unwrap(),
            Some(want)
        );
        assert_eq!(
            parse_ps_date("/Date(1690000000000-0500)/").unwrap(),
            Some(want)
        );
        assert_eq!(parse_ps_date("2023-07-22T04:26:40Z").unwrap(), Some(want));
        assert_eq!(
            parse_ps_date("2023-07-22T06:26:40.000+02:00").unwrap(),
            Some(want)
        );
        assert_eq!(
            parse_ps_date("2023-07-22T04:26:40.0000000").unwrap(),
            Some(want)
        );
        assert_eq!(parse_ps_date("7/22/2023 4:26:40 AM").unwrap(), Some(want));
        assert_eq!(parse_ps_date("07/22/2023 04:26:40").unwrap(), Some(want));
        assert_eq!(parse_ps_date("2023-07-22 04:26:40").unwrap(), Some(want));
        assert_eq!(parse_ps_date("  ").unwrap(), None);
        assert_eq!(
            parse_ps_date("/Date(-62135596800000)/").unwrap(),
            Some(dt("0001-01-01T00:00:00Z"))
        );
        for bad in [
            "yesterday",
            "/Date(abc)/",
            "/Date(1690000000000+01)/",
            "22.07.2023",
        ] {
            assert!(parse_ps_date(bad).unwrap_err().contains(bad), "{bad}");
        }
    }

    #[test]
    fn age_is_whole_days() {
        let d = dt("2024-01-01T12:00:00Z");
        assert_eq!(age_days(d, dt("2024-01-02T11:59:59Z")), 0);
        assert_eq!(age_days(d, dt("2024-01-02T12:00:00Z")), 1);
        assert_eq!(age_days(d, dt("2024-12-31T12:00:00Z")), 365);
        assert_eq!(age_days(d, dt("2023-01-01T00:00:00Z")), 0);
    }

    #[test]
    fn item_size_forms() {
        assert_eq!(
            parse_item_size(&json!("3.233 GB (3,471,471,173 bytes)")).unwrap(),
            Some(3_471_471_173)
        );
        assert_eq!(parse_item_size(&json!("0 B (0 bytes)")).unwrap(), Some(0));
        assert_eq!(
            parse_item_size(&json!("1.2 MB (1.258.291 bytes)")).unwrap(),
            Some(1_258_291)
        );
        assert_eq!(parse_item_size(&json!(1024)).unwrap(), Some(1024));
        assert_eq!(
            parse_item_size(&json!({"IsUnlimited": false, "Value": "1 KB (1,024 bytes)"})).unwrap(),
            Some(1024)
        );
        assert_eq!(parse_item_size(&json!(null)).unwrap(), None);
        assert!(parse_item_size(&json!("big")).is_err());
        assert!((bytes_to_mb(3_471_471_173) - 3310.65).abs() < 0.01);
    }

    #[test]
    fn figures_beyond_the_cache_are_refused() {
        let max = i64::MAX as u64;
        assert_eq!(parse_item_size(&json!(max)).unwrap(), Some(max));
        assert_eq!(
            parse_item_size(&json!(format!("8 EB ({max} bytes)"))).unwrap(),
            Some(max)
        );
        assert_eq!(parse_item_size(&json!(1024.0)).unwrap(), Some(1024));
        assert_eq!(parse_item_count(&json!(max)).unwrap(), Some(max));
        assert_eq!(parse_item_count(&json!("1,200")).unwrap(), Some(1200));
        for v in [
            json!(max + 1),
            json!(u64::MAX),
            json!(1e300),
            json!(f64::MAX),
            json!(9.3e18),
            json!("16 EB (18,446,744,073,709,551,615 bytes)"),
            json!("1 ZB (1,180,591,620,717,411,303,424 bytes)"),
            json!("18446744073709551615"),
        ] {
            let e = parse_item_size(&v).unwrap_err();
            assert!(e.contains("9223372036854775807"), "{v}: {e}");
        }
        for v in [json!(-1), json!(0.5), json!(-1024.0)] {
            assert!(parse_item_size(&v).is_err(), "{v}");
        }
        for v in [
            json!(max + 1),
            json!(u64::MAX),
            json!("18,446,744,073,709,551,615"),
            json!("99999999999999999999999"),
        ] {
            let e = parse_item_count(&v).unwrap_err();
            assert!(e.contains("9223372036854775807"), "{v}: {e}");
        }
        for v in [json!(-1), json!(1e300), json!("many"), json!(true)] {
            assert!(parse_item_count(&v).is_err(), "{v}");
        }
        let rec =
            json!({"ExchangeGuid": "4a3b2c1d-5e6f-47a8-b9c0-d1e2f3a4b5c6", "ItemCount": u64::MAX});
        let e = ExoMailbox::from_fields(&cfg(), |k| rec.get(k)).unwrap_err();
        assert_eq!(e.field, "ItemCount");
    }

    fn cfg() -> InventoryConfig {
        toml::from_str(
            r#"
company_attribute = "CustomAttribute1"
department_attribute = "Department"
default_license = "E3"
prices = { e3 = 36.0, E5 = 57.0 }
company_domains = { "contoso.com" = "Contoso", "fabrikam.com" = "Fabrikam" }
"#,
        )
        .unwrap()
    }

    #[test]
    fn build_applies_every_rule() {
        let now = dt("2025-01-31T00:00:00Z");
        let rec = json!({
            "ExchangeGuid": "4A3B2C1D-5E6F-47A8-B9C0-D1E2F3A4B5C6",
            "DisplayName": "Ada Lovelace",
            "PrimarySmtpAddress": "Ada@Sub.Contoso.com",
            "WhenSoftDeleted": "/Date(1704067200000)/",
            "IsInactiveMailbox": true,
            "LitigationHoldEnabled": "True",
            "InPlaceHolds": "UniHabc mbxdef:1",
            "TotalItemSize": "1 MB (1,048,576 bytes)",
            "ItemCount": "1,200",
            "Department": "R&D",
            "LicenseType": "E5"
        });
        let raw = ExoMailbox::from_fields(&cfg(), |k| rec.get(k)).unwrap();
        let m = InactiveMailbox::build(raw, &cfg(), now);
        assert_eq!(m.identity, "4a3b2c1d-5e6f-47a8-b9c0-d1e2f3a4b5c6");
        assert_eq!(m.primary_smtp.as_deref(), Some("ada@sub.contoso.com"));
        assert_eq!(m.age_days, Some(396));
        assert_eq!(m.size_mb, Some(1.0));
        assert_eq!(m.item_count, Some(1200));
        assert_eq!(m.monthly_cost, 57.0);
        assert_eq!(m.operating_company.as_deref(), Some("Contoso"));
        assert_eq!(m.department.as_deref(), Some("R&D"));
        assert_eq!(
            m.hold_types,
            vec![
                HoldType::Litigation,
                HoldType::Ediscovery,
                HoldType::RetentionPolicy
            ]
        );
        assert!(m.recovery_eligible, "{:?}", m.recovery_blockers);
    }

    #[test]
    fn defaults_and_unpriced() {
        let rec = json!({"ExchangeGuid": "4a3b2c1d-5e6f-47a8-b9c0-d1e2f3a4b5c6", "CustomAttribute1": "Northwind", "PrimarySmtpAddress": "x@contoso.com"});
        let raw = ExoMailbox::from_fields(&cfg(), |k| rec.get(k)).unwrap();
        let m = InactiveMailbox::build(raw, &cfg(), dt("2025-01-01T00:00:00Z"));
        assert_eq!(m.license_type.as_deref(), Some("E3"));
        assert_eq!(m.monthly_cost, 36.0, "price names compare without case");
        assert_eq!(m.operating_company.as_deref(), Some("Northwind"));
        let mut c = cfg();
        c.default_license = Some("F3".into());
        let raw = ExoMailbox::from_fields(&c, |k| rec.get(k)).unwrap();
        assert_eq!(
            InactiveMailbox::build(raw, &c, Utc::now()).monthly_cost,
            0.0
        );
    }

    #[test]
    fn eligibility_rules() {
        let now = dt("2025-03-01T00:00:00Z");
        let old = Some(dt("2024-01-01T00:00:00Z"));
        let codes = |b: Vec<Blocker>| b.into_iter().map(|b| b.code).collect::<Vec<_>>();
        assert!(recovery_blockers(Some(true), false, None, old, now).is_empty());
        assert!(recovery_blockers(None, false, Some(""), old, now).is_empty());
        assert_eq!(
            codes(recovery_blockers(Some(false), true, None, old, now)),
            ["not_inactive", "auto_expanding_archive"]
        );
        assert_eq!(
            codes(recovery_blockers(
                Some(true),
                false,
                None,
                Some(dt("2025-02-10T00:00:00Z")),
                now
            )),
            ["soft_deleted_under_30_days"]
        );
        assert_eq!(
            codes(recovery_blockers(Some(true), false, None, None, now)),
            ["soft_delete_date_unknown"]
        );
        assert_eq!(
            codes(recovery_blockers(Some(true), false, Some("0e1f"), old, now)),
            ["directory_user_present"]
        );
    }

    #[test]
    fn eligibility_changes_with_time() {
        let rec = json!({"ExchangeGuid": "4a3b2c1d-5e6f-47a8-b9c0-d1e2f3a4b5c6", "WhenSoftDeleted": "2025-01-01T00:00:00Z"});
        let raw = ExoMailbox::from_fields(&cfg(), |k| rec.get(k)).unwrap();
        let mut m = InactiveMailbox::build(raw, &cfg(), dt("2025-01-10T00:00:00Z"));
        assert!(!m.recovery_eligible);
        m.refresh(&cfg(), dt("2025-02-10T00:00:00Z"));
        assert!(m.recovery_eligible);
        assert_eq!(m.age_days, Some(40));
    }

    #[test]
    fn bad_fields_are_named() {
        let c = cfg();
        let check = |rec: Value, field: &str| {
            let e = ExoMailbox::from_fields(&c, |k| rec.get(k)).unwrap_err();
            assert_eq!(e.field, field, "{e}");
        };
        check(json!({"DisplayName": "x"}), "ExchangeGuid");
        check(json!({"ExchangeGuid": "nope"}), "ExchangeGuid");
        check(
            json!({"ExchangeGuid": "4a3b2c1d-5e6f-47a8-b9c0-d1e2f3a4b5c6", "WhenSoftDeleted": "soon"}),
            "WhenSoftDeleted",
        );
        check(
            json!({"ExchangeGuid": "4a3b2c1d-5e6f-47a8-b9c0-d1e2f3a4b5c6", "LitigationHoldEnabled": "maybe"}),
            "LitigationHoldEnabled",
        );
        check(
            json!({"ExchangeGuid": "4a3b2c1d-5e6f-47a8-b9c0-d1e2f3a4b5c6", "InPlaceHolds": "System.Object[]"}),
            "InPlaceHolds",
        );
    }

    #[test]
    fn summary_groups_and_unpriced() {
        let c = cfg();
        let now = dt("2025-06-01T00:00:00Z");
        let mk = |guid: &str, lic: &str, deleted: &str, holds: &str, company: &str| {
            let rec = json!({"ExchangeGuid": guid, "LicenseType": lic, "WhenSoftDeleted": deleted,
                             "InPlaceHolds": holds, "CustomAttribute1": company,
                             "TotalItemSize": "1 MB (1,048,576 bytes)"});
            InactiveMailbox::build(
                ExoMailbox::from_fields(&c, |k| rec.get(k)).unwrap(),
                &c,
                now,
            )
        };
        let ms = vec![
            mk(
                "11111111-1111-4111-8111-111111111111",
                "E5",
                "2025-05-20T00:00:00Z",
                "UniHa",
                "A",
            ),
            mk(
                "22222222-2222-4222-8222-222222222222",
                "E3",
                "2024-01-01T00:00:00Z",
                "UniHa mbxb",
                "A",
            ),
            mk(
                "33333333-3333-4333-8333-333333333333",
                "Kiosk",
                "2022-01-01T00:00:00Z",
                "",
                "B",
            ),
        ];
        let s = summarize(&ms, &c);
        assert_eq!(s.count, 3);
        assert_eq!(s.recovery_eligible, 2);
        assert_eq!(s.monthly_cost, 93.0);
        assert_eq!(s.size_mb, 3.0);
        assert_eq!(s.by_company[0].key, "A");
        assert_eq!(s.by_company[0].monthly_cost, 93.0);
        let hold = |k: &str| s.by_hold_type.iter().find(|g| g.key == k).unwrap().count;
        assert_eq!(
            (hold("ediscovery"), hold("retention_policy"), hold("none")),
            (2, 1, 1)
        );
        let bands: Vec<_> = s
            .by_age_band
            .iter()
            .map(|g| (g.key.as_str(), g.count))
            .collect();
        assert_eq!(bands, [("0-29 days", 1), ("1-2 years", 1), ("2+ years", 1)]);
        assert_eq!(s.unpriced_licenses.len(), 1);
        assert_eq!(s.unpriced_licenses[0].key, "Kiosk");
        assert_eq!(age_band(None), "unknown");
        assert_eq!(age_band(Some(30)), "30-89 days");
    }

    #[test]
    fn the_removal_guard_refuses_more_than_its_share_unless_allowed() {
        let guard = RemovalGuard {
            max_share: 20,
            allow: false,
        };
        // 150 of 200 rows left: 50 removed, 25 %.
        let e = guard.check(50, 200).unwrap_err();
        assert_eq!(e.removed, 50);
        assert!(e.to_string().contains("50 of the 200") && e.to_string().contains("25%"));
        assert!(e.to_string().contains("--allow-removals"));
        guard.check(40, 200).unwrap();
        // A few removals are always let through, whatever their share.
        guard.check(RemovalGuard::ALWAYS_ALLOWED, 6).unwrap();
        assert!(guard.check(RemovalGuard::ALWAYS_ALLOWED + 1, 6).is_err());
        // Allowed by the person, or by the configuration.
        RemovalGuard {
            allow: true,
            ..guard
        }
        .check(200, 200)
        .unwrap();
        RemovalGuard {
            max_share: 100,
            allow: false,
        }
        .check(200, 200)
        .unwrap();
        // Overflow-proof.
        assert!(guard.check(u64::MAX, u64::MAX).is_ok());
        assert!(guard.check(u64::MAX, 10).is_err());
    }
}
