//! SQL of the `inactive_mailboxes` table.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, Row, params};
use serde::Serialize;

use super::{Store, StoreError, Tx};
use crate::inventory::{HoldType, InactiveMailbox, parse_ps_date};

/// The text form of stored mailbox dates: fixed width, so text order is time order.
pub fn format_date(t: DateTime<Utc>) -> String {
    let mut s = String::with_capacity(24);
    push_date(&mut s, t);
    s
}

/// Appends `t` as `YYYY-MM-DDTHH:MM:SS.mmmZ`; written out by hand because chrono's
/// `format` re-parses its pattern on every call, which showed in the upsert profile.
fn push_date(s: &mut String, t: DateTime<Utc>) {
    use chrono::{Datelike, Timelike};
    use std::fmt::Write;
    let _ = write!(
        s,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        t.month(),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.timestamp_subsec_millis().min(999)
    );
}

fn parse_date(s: Option<String>) -> Option<DateTime<Utc>> {
    s.and_then(|s| parse_ps_date(&s).ok().flatten())
}

/// Writes the case-folded text `search` matches against into `out`.
fn search_key(out: &mut String, display_name: Option<&str>, smtp: Option<&str>) {
    out.clear();
    out.extend(
        display_name
            .unwrap_or_default()
            .chars()
            .flat_map(char::to_lowercase),
    );
    out.push('\n');
    out.extend(
        smtp.unwrap_or_default()
            .chars()
            .flat_map(char::to_lowercase),
    );
}

const UPSERT: &str = "
INSERT INTO inactive_mailboxes (
    identity, display_name, primary_smtp, when_soft_deleted, age_days, size_mb, item_count,
    license_type, monthly_cost, hold_types, recovery_eligible, recovery_blockers,
    operating_company, department, last_updated, user_principal_name, size_bytes,
    in_place_holds, is_inactive, auto_expanding_archive, archive_status,
    external_directory_object_id, search_key)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19,
        ?20, ?21, ?22, ?23)
ON CONFLICT(identity) DO UPDATE SET
    display_name = excluded.display_name, primary_smtp = excluded.primary_smtp,
    when_soft_deleted = excluded.when_soft_deleted, age_days = excluded.age_days,
    size_mb = excluded.size_mb, item_count = excluded.item_count,
    license_type = excluded.license_type, monthly_cost = excluded.monthly_cost,
    hold_types = excluded.hold_types, recovery_eligible = excluded.recovery_eligible,
    recovery_blockers = excluded.recovery_blockers,
    operating_company = excluded.operating_company, department = excluded.department,
    last_updated = excluded.last_updated, user_principal_name = excluded.user_principal_name,
    size_bytes = excluded.size_bytes, in_place_holds = excluded.in_place_holds,
    is_inactive = excluded.is_inactive, auto_expanding_archive = excluded.auto_expanding_archive,
    archive_status = excluded.archive_status,
    external_directory_object_id = excluded.external_directory_object_id,
    search_key = excluded.search_key";

const SELECT: &str = "SELECT identity, display_name, primary_smtp, user_principal_name,
    when_soft_deleted, size_bytes, size_mb, item_count, license_type, hold_types,
    in_place_holds, operating_company, department, is_inactive, auto_expanding_archive,
    archive_status, external_directory_object_id, last_updated
    FROM inactive_mailboxes";

fn json_list(v: Option<String>) -> Vec<String> {
    v.and_then(|s| serde_json::from_str::<Vec<String>>(&s).ok())
        .unwrap_or_default()
}

/// Reads a row; figures that depend on the clock or the price table (age, cost,
/// eligibility) are left for [`InactiveMailbox::refresh`].
fn row_to_mailbox(r: &Row<'_>) -> rusqlite::Result<InactiveMailbox> {
    let size_bytes: Option<i64> = r.get(5)?;
    let item_count: Option<i64> = r.get(7)?;
    let mut holds: Vec<HoldType> = json_list(r.get(9)?)
        .iter()
        .map(|h| HoldType::parse(h).unwrap_or(HoldType::Other))
        .collect();
    holds.sort();
    holds.dedup();
    Ok(InactiveMailbox {
        identity: r.get(0)?,
        display_name: r.get(1)?,
        primary_smtp: r.get(2)?,
        user_principal_name: r.get(3)?,
        when_soft_deleted: parse_date(r.get(4)?),
        age_days: None,
        size_bytes: size_bytes.map(|b| b.max(0) as u64),
        size_mb: r.get(6)?,
        item_count: item_count.map(|c| c.max(0) as u64),
        license_type: r.get(8)?,
        monthly_cost: 0.0,
        hold_types: holds,
        in_place_holds: json_list(r.get(10)?),
        recovery_eligible: false,
        recovery_blockers: Vec::new(),
        operating_company: r.get(11)?,
        department: r.get(12)?,
        is_inactive: r.get(13)?,
        auto_expanding_archive: r.get::<_, Option<bool>>(14)?.unwrap_or(false),
        archive_status: r.get(15)?,
        external_directory_object_id: r.get(16)?,
        last_updated: parse_date(r.get(17)?).unwrap_or_default(),
    })
}

/// Which cached mailboxes a listing returns; every field narrows it.
#[derive(Debug, Clone, Default)]
pub struct MailboxFilter {
    /// Case-insensitive substring of the display name or primary SMTP address.
    pub text: Option<String>,
    /// Operating company, compared without regard to ASCII case.
    pub company: Option<String>,
    /// Carries this hold.
    pub hold: Option<HoldType>,
    /// Soft-deleted at or before this instant.
    pub deleted_before: Option<DateTime<Utc>>,
}

/// Figures about the cache itself.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoreStats {
    pub count: u64,
    pub oldest_update: Option<String>,
    pub newest_update: Option<String>,
    pub file_size_bytes: u64,
}

impl Tx<'_> {
    /// Inserts or replaces one mailbox.
    pub fn upsert_mailbox(&mut self, m: &InactiveMailbox) -> Result<(), StoreError> {
        self.upsert_mailboxes(std::slice::from_ref(m)).map(|_| ())
    }

    /// Inserts or replaces many mailboxes with one prepared statement; returns the count.
    pub fn upsert_mailboxes(&mut self, ms: &[InactiveMailbox]) -> Result<usize, StoreError> {
        let mut st = self.tx.prepare_cached(UPSERT)?;
        // Buffers reused across rows: this loop is the hot path of an import.
        let (mut holds, mut key, mut deleted, mut updated) =
            (String::new(), String::new(), String::new(), String::new());
        let (mut blockers, mut in_place) = (Vec::new(), Vec::new());
        for m in ms {
            holds.clear();
            holds.push('[');
            for (i, h) in m.hold_types.iter().enumerate() {
                if i > 0 {
                    holds.push(',');
                }
                holds.push('"');
                holds.push_str(h.as_str());
                holds.push('"');
            }
            holds.push(']');
            blockers.clear();
            serde_json::to_writer(&mut blockers, &m.recovery_blockers)
                .expect("blockers serialize to JSON");
            in_place.clear();
            serde_json::to_writer(&mut in_place, &m.in_place_holds)
                .expect("strings serialize to JSON");
            deleted.clear();
            if let Some(d) = m.when_soft_deleted {
                push_date(&mut deleted, d);
            }
            updated.clear();
            push_date(&mut updated, m.last_updated);
            search_key(
                &mut key,
                m.display_name.as_deref(),
                m.primary_smtp.as_deref(),
            );
            st.execute(params![
                m.identity,
                m.display_name,
                m.primary_smtp,
                m.when_soft_deleted.map(|_| deleted.as_str()),
                m.age_days,
                m.size_mb,
                m.item_count.map(|c| c as i64),
                m.license_type,
                m.monthly_cost,
                holds,
                m.recovery_eligible,
                std::str::from_utf8(&blockers).expect("JSON is UTF-8"),
                m.operating_company,
                m.department,
                updated,
                m.user_principal_name,
                m.size_bytes.map(|b| b as i64),
                std::str::from_utf8(&in_place).expect("JSON is UTF-8"),
                m.is_inactive,
                m.auto_expanding_archive,
                m.archive_status,
                m.external_directory_object_id,
                key,
            ])?;
        }
        Ok(ms.len())
    }

    /// The identities of every cached mailbox.
    pub fn mailbox_identities(&mut self) -> Result<HashSet<String>, StoreError> {
        let mut st = self
            .tx
            .prepare_cached("SELECT identity FROM inactive_mailboxes")?;
        let ids = st
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<HashSet<String>>>()?;
        Ok(ids)
    }

    /// Removes one mailbox; returns whether it was cached.
    pub fn delete_mailbox(&mut self, identity: &str) -> Result<bool, StoreError> {
        let n = self
            .tx
            .prepare_cached("DELETE FROM inactive_mailboxes WHERE identity = ?1")?
            .execute([identity])?;
        Ok(n > 0)
    }

    /// Empties the cache; returns how many mailboxes it held.
    pub fn clear_mailboxes(&mut self) -> Result<usize, StoreError> {
        Ok(self.tx.execute("DELETE FROM inactive_mailboxes", [])?)
    }
}

impl Store {
    /// Every cached mailbox.
    pub fn all_mailboxes(&self) -> Result<Vec<InactiveMailbox>, StoreError> {
        self.mailboxes(&MailboxFilter::default())
    }

    /// The cached mailboxes matching `filter`, in no particular order.
    pub fn mailboxes(&self, filter: &MailboxFilter) -> Result<Vec<InactiveMailbox>, StoreError> {
        let mut st = self.conn.prepare_cached(&format!(
            "{SELECT}
             WHERE (?1 IS NULL OR instr(search_key, ?1) > 0)
               AND (?2 IS NULL OR operating_company = ?2 COLLATE NOCASE)
               AND (?3 IS NULL OR EXISTS (SELECT 1 FROM json_each(hold_types) WHERE value = ?3))
               AND (?4 IS NULL OR when_soft_deleted <= ?4)"
        ))?;
        let rows = st
            .query_map(
                params![
                    filter.text.as_deref().map(str::to_lowercase),
                    filter.company,
                    filter.hold.map(HoldType::as_str),
                    filter.deleted_before.map(format_date),
                ],
                row_to_mailbox,
            )?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// One mailbox by ExchangeGuid, primary SMTP address or user principal name.
    pub fn mailbox(&self, key: &str) -> Result<Option<InactiveMailbox>, StoreError> {
        let key = key.trim();
        if let Ok(guid) = uuid::Uuid::try_parse(key) {
            let found = self
                .conn
                .prepare_cached(&format!("{SELECT} WHERE identity = ?1"))?
                .query_row([guid.hyphenated().to_string()], row_to_mailbox)
                .optional()?;
            if found.is_some() {
                return Ok(found);
            }
        }
        let lower = key.to_lowercase();
        let by_smtp = self
            .conn
            .prepare_cached(&format!("{SELECT} WHERE primary_smtp = ?1"))?
            .query_row([&lower], row_to_mailbox)
            .optional()?;
        if by_smtp.is_some() {
            return Ok(by_smtp);
        }
        Ok(self
            .conn
            .prepare_cached(&format!(
                "{SELECT} WHERE user_principal_name = ?1 COLLATE NOCASE"
            ))?
            .query_row([&lower], row_to_mailbox)
            .optional()?)
    }

    /// Count, oldest and newest update, and the file's size.
    pub fn mailbox_stats(&self) -> Result<StoreStats, StoreError> {
        let (count, oldest, newest): (i64, Option<String>, Option<String>) = self.conn.query_row(
            "SELECT count(*), min(last_updated), max(last_updated) FROM inactive_mailboxes",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        Ok(StoreStats {
            count: count as u64,
            oldest_update: oldest,
            newest_update: newest,
            file_size_bytes: self.file_size()?,
        })
    }
}
