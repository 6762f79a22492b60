//! Pure mapping of Exchange Online mailbox fields to the inventory: holds, age, size,
//! cost, company and recovery eligibility.
//!
//! Both the offline import of PowerShell exports and the live sync feed raw field values
//! (JSON values; CSV cells arrive as JSON strings) through [`ExoMailbox::from_fields`] and
//! [`InactiveMailbox::build`]; nothing here does I/O or reads the clock.
//!
//! This file holds the mailbox records and the rules that join them (licence, price,
//! company, age) and the guard against a snapshot that would empty the cache; by owner:
//! `values` reads PowerShell's values (dates, sizes, counts, booleans, lists), `holds`
//! classifies holds, `recovery` decides recovery eligibility, and `summary` totals the
//! inventory. Their items are re-exported here.

mod holds;
mod recovery;
mod summary;
mod values;

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::config::InventoryConfig;
pub use holds::{HoldType, classify_in_place_hold, hold_types};
pub use recovery::{Blocker, RECOVERY_MIN_AGE_DAYS, recovery_blockers, recovery_eligible};
pub use summary::{AGE_BANDS, Group, Summary, Tally, age_band, summarize};
pub use values::{
    FieldError, MAX_FIGURE, bytes_to_mb, parse_item_count, parse_item_size, parse_ps_date,
};
use values::{as_text, field_err, parse_bool, parse_string_list};

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

/// Whole days from `deleted` to `now` (UTC); 0 when `deleted` lies in the future.
pub fn age_days(deleted: DateTime<Utc>, now: DateTime<Utc>) -> i64 {
    (now - deleted).num_days().max(0)
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
    use serde_json::json;

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

    pub(super) fn dt(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
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
    fn a_figure_beyond_the_cache_names_its_field() {
        let rec =
            json!({"ExchangeGuid": "4a3b2c1d-5e6f-47a8-b9c0-d1e2f3a4b5c6", "ItemCount": u64::MAX});
        let e = ExoMailbox::from_fields(&cfg(), |k| rec.get(k)).unwrap_err();
        assert_eq!(e.field, "ItemCount");
    }

    pub(super) fn cfg() -> InventoryConfig {
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
