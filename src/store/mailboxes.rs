//! SQL of the `inactive_mailboxes` table.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use rusqlite::types::ValueRef;
use rusqlite::{Row, params};
use serde::Serialize;

use super::raw::{Param, RawStatement};
use super::{Store, StoreError, Tx};
use crate::config::InventoryConfig;
use crate::config::Price;
use crate::inventory::{
    AGE_BANDS, HoldType, InactiveMailbox, RECOVERY_MIN_AGE_DAYS, Summary, Tally, age_days,
    parse_ps_date, recovery_eligible, summarize,
};
use crate::time::{push_stamp_millis, stamp_millis};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

fn parse_date(s: Option<String>) -> Option<DateTime<Utc>> {
    s.and_then(|s| parse_ps_date(&s).ok().flatten())
}

/// Writes the case-folded display name `search` matches against into `out` (the primary
/// SMTP address is stored lower-case already and searched as it is).
fn search_key(out: &mut String, display_name: Option<&str>) {
    out.clear();
    let name = display_name.unwrap_or_default();
    if name.is_ascii() {
        out.push_str(name);
        out.make_ascii_lowercase();
    } else {
        // The same folding the search text gets (`str::to_lowercase`).
        out.push_str(&name.to_lowercase());
    }
}

/// Batches at least this large, and at least half the table's size, are bulk loads.
pub(super) const BULK_ROWS: usize = 50_000;

/// Columns written by an upsert, in parameter order.
pub(super) const UPSERT_COLUMN_NAMES: [&str; UPSERT_COLUMNS] = [
    "identity",
    "display_name",
    "primary_smtp",
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
    "user_principal_name",
    "size_bytes",
    "in_place_holds",
    "is_inactive",
    "auto_expanding_archive",
    "archive_status",
    "external_directory_object_id",
    "search_key",
];

/// How many columns an upsert writes.
pub(super) const UPSERT_COLUMNS: usize = 23;

/// Rows per statement on the bulk path.
const BULK_CHUNK: usize = 64;

/// The upsert of one row.
static UPSERT: LazyLock<String> = LazyLock::new(|| upsert_sql(1));

/// The upsert of [`BULK_CHUNK`] rows. One statement for many rows saves SQLite's
/// per-statement work (opening cursors, halting, resetting): 16% fewer instructions and
/// about 10% less time for a million-row bulk load. A statement that may need undoing
/// copies every page it changes to a statement journal first; since the table has the
/// search index's triggers, every upsert is such a statement, one row or many, so fewer
/// statements copy fewer pages: 10,000 upserts into a fresh database took 91 ms in
/// statements of 64 rows against 224 ms row by row, and 77 against 136 ms over the same
/// rows (criterion). Rows of one statement are applied in order, so a mailbox listed twice
/// ends as its last listing.
static UPSERT_CHUNK: LazyLock<String> = LazyLock::new(|| upsert_sql(BULK_CHUNK));

/// The upsert of `rows` rows.
fn upsert_sql(rows: usize) -> String {
    let row = format!("({})", vec!["?"; UPSERT_COLUMNS].join(","));
    let values = vec![row.as_str(); rows].join(",");
    format!(
        "INSERT INTO inactive_mailboxes (
    identity, display_name, primary_smtp, when_soft_deleted, age_days, size_mb, item_count,
    license_type, monthly_cost, hold_types, recovery_eligible, recovery_blockers,
    operating_company, department, last_updated, user_principal_name, size_bytes,
    in_place_holds, is_inactive, auto_expanding_archive, archive_status,
    external_directory_object_id, search_key)
VALUES {values}
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
    search_key = excluded.search_key"
    )
}

/// The text columns of one row, rendered before binding; the buffers are reused from row
/// to row because this is the hot path of an import.
#[derive(Default)]
pub(super) struct RowText {
    holds: String,
    blockers: String,
    in_place: String,
    deleted: String,
    /// `last_updated` as text, and the time it was rendered from: a batch usually shares
    /// one update time.
    updated: String,
    updated_at: Option<DateTime<Utc>>,
    key: String,
}

/// Appends `v` to `out` as a JSON string.
fn push_json_str(out: &mut String, v: &str) {
    if v.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push('"');
        out.push_str(v);
        out.push('"');
    } else {
        out.push_str(&serde_json::to_string(v).expect("strings serialize to JSON"));
    }
}

/// Appends the strings as a JSON array.
fn push_json_list<'a>(out: &mut String, items: impl IntoIterator<Item = &'a str>) {
    out.clear();
    out.push('[');
    for (i, v) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_str(out, v);
    }
    out.push(']');
}

impl RowText {
    pub(super) fn fill(&mut self, m: &InactiveMailbox) {
        push_json_list(&mut self.holds, m.hold_types.iter().map(|h| h.as_str()));
        // Only the codes are stored: the sentences follow from them, and the row stays
        // narrow, which is what bulk upserts pay for.
        push_json_list(
            &mut self.blockers,
            m.recovery_blockers.iter().map(|b| b.code.as_str()),
        );
        push_json_list(
            &mut self.in_place,
            m.in_place_holds.iter().map(String::as_str),
        );
        self.deleted.clear();
        if let Some(d) = m.when_soft_deleted {
            push_stamp_millis(&mut self.deleted, d);
        }
        if self.updated_at != Some(m.last_updated) {
            self.updated.clear();
            push_stamp_millis(&mut self.updated, m.last_updated);
            self.updated_at = Some(m.last_updated);
        }
        search_key(&mut self.key, m.display_name.as_deref());
    }

    /// One row's parameters, in the order of [`UPSERT`].
    pub(super) fn params<'a>(&'a self, m: &'a InactiveMailbox) -> [Param<'a>; UPSERT_COLUMNS] {
        [
            Param::Text(&m.identity),
            (&m.display_name).into(),
            (&m.primary_smtp).into(),
            match m.when_soft_deleted {
                Some(_) => Param::Text(&self.deleted),
                None => Param::Null,
            },
            m.age_days.into(),
            m.size_mb.into(),
            m.item_count.map(|c| c as i64).into(),
            (&m.license_type).into(),
            Param::Real(m.monthly_cost),
            Param::Text(&self.holds),
            Param::Int(m.recovery_eligible.into()),
            Param::Text(&self.blockers),
            (&m.operating_company).into(),
            (&m.department).into(),
            Param::Text(&self.updated),
            (&m.user_principal_name).into(),
            m.size_bytes.map(|b| b as i64).into(),
            Param::Text(&self.in_place),
            m.is_inactive.into(),
            Param::Int(m.auto_expanding_archive.into()),
            (&m.archive_status).into(),
            (&m.external_directory_object_id).into(),
            Param::Text(&self.key),
        ]
    }
}

/// Writes `rows` with `one`, a statement of one row's [`RowText::params`], or, given
/// `chunked` (a statement of `n` rows and `n`), `n` rows a statement as far as whole
/// statements go and the rest with `one`.
pub(super) fn write_rows<M: std::borrow::Borrow<InactiveMailbox>>(
    conn: &rusqlite::Connection,
    chunked: Option<(&str, usize)>,
    one: &str,
    rows: &[M],
) -> Result<(), StoreError> {
    let mut rest = rows;
    if let Some((sql, n)) = chunked {
        let mut st = RawStatement::prepare(conn, sql)?;
        let mut texts: Vec<RowText> = std::iter::repeat_with(RowText::default).take(n).collect();
        let mut chunks = rows.chunks_exact(n);
        for chunk in &mut chunks {
            for (text, m) in texts.iter_mut().zip(chunk) {
                text.fill(m.borrow());
            }
            let params: Vec<Param<'_>> = texts
                .iter()
                .zip(chunk)
                .flat_map(|(text, m)| text.params(m.borrow()))
                .collect();
            st.execute(&params)?;
        }
        rest = chunks.remainder();
    }
    if !rest.is_empty() {
        let mut st = RawStatement::prepare(conn, one)?;
        let mut text = RowText::default();
        for m in rest {
            text.fill(m.borrow());
            st.execute(&text.params(m.borrow()))?;
        }
    }
    Ok(())
}

/// `ms` in the order of their identities, a mailbox listed twice in the order of its
/// listings. Canonical GUIDs (what an import stores) sort as
/// the 128-bit numbers they spell, which orders them as their text does and is several
/// times faster than comparing strings; anything else falls back to comparing text.
fn identity_order(ms: &[InactiveMailbox]) -> Vec<&InactiveMailbox> {
    let keys: Option<Vec<(u128, u32)>> = ms
        .iter()
        .enumerate()
        .map(|(i, m)| Some((guid_key(&m.identity)?, u32::try_from(i).ok()?)))
        .collect();
    match keys {
        Some(mut keys) => {
            keys.sort_unstable();
            keys.into_iter().map(|(_, i)| &ms[i as usize]).collect()
        }
        None => {
            // Stable, so that a mailbox listed twice keeps its listings' order.
            let mut rows: Vec<&InactiveMailbox> = ms.iter().collect();
            rows.sort_by(|a, b| a.identity.cmp(&b.identity));
            rows
        }
    }
}

/// The value of a GUID in canonical form (lower-case hex, hyphenated); `None` otherwise.
pub(super) fn guid_key(s: &str) -> Option<u128> {
    let b = s.as_bytes();
    if b.len() != 36 {
        return None;
    }
    let mut v: u128 = 0;
    for (i, &c) in b.iter().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            if c != b'-' {
                return None;
            }
            continue;
        }
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        v = (v << 4) | u128::from(d);
    }
    Some(v)
}

const SELECT: &str = "SELECT identity, display_name, primary_smtp, user_principal_name,
    when_soft_deleted, size_bytes, size_mb, item_count, license_type, hold_types,
    in_place_holds, operating_company, department, is_inactive, auto_expanding_archive,
    archive_status, external_directory_object_id, last_updated
    FROM inactive_mailboxes";

fn json_list(v: Option<&str>) -> Vec<String> {
    match v {
        None | Some("[]") | Some("") => Vec::new(),
        Some(s) => serde_json::from_str::<Vec<String>>(s).unwrap_or_default(),
    }
}

/// Parses stored hold names; names that are not ours (a database of the original tool)
/// count as `other`.
fn hold_list(v: Option<&str>) -> Vec<HoldType> {
    let mut holds: Vec<HoldType> = json_list(v)
        .iter()
        .map(|h| HoldType::parse(h).unwrap_or(HoldType::Other))
        .collect();
    holds.sort();
    holds.dedup();
    holds
}

/// Reads a row; figures that depend on the clock or the price table (age, cost,
/// eligibility) are left for [`InactiveMailbox::refresh`].
fn row_to_mailbox(r: &Row<'_>) -> rusqlite::Result<InactiveMailbox> {
    let size_bytes: Option<i64> = r.get(5)?;
    let item_count: Option<i64> = r.get(7)?;
    let holds = hold_list(r.get_ref(9)?.as_str_or_null()?);
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
        in_place_holds: json_list(r.get_ref(10)?.as_str_or_null()?),
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

/// Age bands and the recovery age of stored soft-delete times, as of one instant.
///
/// The program stores times as [`stamp_millis`] writes them, fixed width, so "at least
/// N days old" is a text comparison with the stamp of `now` less N days (age in whole
/// days, as [`crate::inventory::age_days`] counts it: at least N days old exactly when
/// deleted at or before that instant, and times are stored to the millisecond). Text in
/// another form (a database of the original tool) is parsed and aged as the mailbox
/// listing does.
struct Ages {
    now: DateTime<Utc>,
    /// The stamp of `now` less each band's first day, for the bands after the first.
    band_cuts: Vec<String>,
    recovery_cut: String,
}

impl Ages {
    fn new(now: DateTime<Utc>) -> Ages {
        let cut = |days: i64| stamp_millis(now - chrono::Duration::days(days));
        Ages {
            now,
            band_cuts: AGE_BANDS[1..].iter().map(|(_, lo, _)| cut(*lo)).collect(),
            recovery_cut: cut(RECOVERY_MIN_AGE_DAYS),
        }
    }

    /// The band number (`AGE_BANDS.len()` for unknown) and whether recovery's age is
    /// reached.
    fn of(&self, stored: Option<&str>) -> (u8, bool) {
        let unknown = AGE_BANDS.len() as u8;
        let Some(text) = stored else {
            return (unknown, false);
        };
        if is_stamp_millis(text) {
            let band = self
                .band_cuts
                .iter()
                .take_while(|cut| text <= cut.as_str())
                .count();
            return (band as u8, text <= self.recovery_cut.as_str());
        }
        match parse_date(Some(text.to_string())) {
            None => (unknown, false),
            Some(d) => {
                let days = age_days(d, self.now);
                let band = AGE_BANDS
                    .iter()
                    .position(|(_, lo, hi)| (*lo..=*hi).contains(&days))
                    .unwrap_or(AGE_BANDS.len());
                (band as u8, days >= RECOVERY_MIN_AGE_DAYS)
            }
        }
    }

    /// Every instant where a mailbox's band or recovery age changes, as a stored stamp.
    fn cuts(&self) -> impl Iterator<Item = &str> {
        self.band_cuts
            .iter()
            .chain(std::iter::once(&self.recovery_cut))
            .map(String::as_str)
    }
}

fn label(band: u8) -> &'static str {
    AGE_BANDS
        .get(band as usize)
        .map_or("unknown", |(l, _, _)| l)
}

/// The columns a tally reads, in the order `tally_pass`, `catch_up` and `row_counts`
/// take them.
const TALLY_COLUMNS: &str = "operating_company, license_type, hold_types, when_soft_deleted,
     size_mb, is_inactive, auto_expanding_archive, external_directory_object_id";

/// How far cached tallies are moved forward; older ones are counted again. A week moves
/// about 3 % of the mailboxes (dates spread over three years) through the index.
const CATCH_UP_LIMIT: chrono::Duration = chrono::Duration::days(7);

/// What one group of mailboxes shares: company, licence, hold types (one bit per
/// [`HoldType::ALL`] entry) and age band (`AGE_BANDS.len()` for unknown).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct GroupKey {
    company: Option<String>,
    license: Option<String>,
    holds: u16,
    band: u8,
}

/// What a group adds up.
#[derive(Debug, Clone, Default, PartialEq)]
struct Counts {
    count: i64,
    recovery_eligible: i64,
    size_mb: f64,
    size_unknown: i64,
}

impl Counts {
    /// Adds (`sign` 1) or takes away (-1) `other`.
    fn add(&mut self, other: &Counts, sign: i8) {
        let n = i64::from(sign);
        self.count += n * other.count;
        self.recovery_eligible += n * other.recovery_eligible;
        self.size_mb += f64::from(sign) * other.size_mb;
        self.size_unknown += n * other.size_unknown;
    }
}

/// One mailbox's share of its group, from a row of [`TALLY_COLUMNS`].
fn row_counts(r: &Row<'_>, old_enough: bool) -> rusqlite::Result<Counts> {
    let size: Option<f64> = r.get(4)?;
    let eligible = recovery_eligible(
        r.get(5)?,
        r.get::<_, Option<bool>>(6)?.unwrap_or(false),
        text(r, 7)?,
        old_enough,
    );
    Ok(Counts {
        count: 1,
        recovery_eligible: i64::from(eligible),
        size_mb: size.unwrap_or(0.0),
        size_unknown: i64::from(size.is_none()),
    })
}

/// The stored hold list as one bit per hold type.
fn hold_bits(stored: Option<&str>) -> u16 {
    hold_list(stored).into_iter().fold(0, |bits, h| {
        bits | HoldType::ALL
            .iter()
            .position(|a| *a == h)
            .map_or(0, |i| 1 << i)
    })
}

/// The tallies of the cache by group.
#[derive(Debug, Clone, Default)]
pub struct Groups(foldhash::HashMap<GroupKey, Counts>);

impl Groups {
    fn to_tallies(&self) -> Vec<Tally> {
        self.0.iter().map(|(k, c)| tally(k.clone(), c)).collect()
    }

    fn into_tallies(self) -> Vec<Tally> {
        self.0.into_iter().map(|(k, c)| tally(k, &c)).collect()
    }
}

fn tally(k: GroupKey, c: &Counts) -> Tally {
    Tally {
        company: k.company,
        license: k.license,
        holds: HoldType::ALL
            .iter()
            .enumerate()
            .filter(|(i, _)| k.holds & (1 << i) != 0)
            .map(|(_, h)| *h)
            .collect(),
        age_band: label(k.band),
        count: c.count.max(0) as u64,
        recovery_eligible: c.recovery_eligible.max(0) as u64,
        size_mb: c.size_mb,
        size_unknown: c.size_unknown.max(0) as u64,
    }
}

/// The answer of [`Store::cached_mailbox_summary`].
#[derive(Debug)]
pub struct CachedSummary {
    pub summary: Summary,
    /// Whether it came from kept tallies (moved forward) rather than a count.
    pub from_cache: bool,
    /// Whether the summary itself was kept: no kept tally had moved since, and the price
    /// table is the one it was priced with.
    pub from_kept_summary: bool,
    /// What to keep for the next run, if it differs from what is kept.
    pub keep: Option<TallyCache>,
    /// The cache's figures, from the same snapshot; the count is the summary's own.
    pub cache: StoreStats,
}

/// What to keep for the next `stats`, from [`Store::cached_mailbox_summary`].
#[derive(Debug, Clone)]
pub struct TallyCache {
    /// The generation of the table they were counted from.
    generation: i64,
    /// The instant they are for, as stored.
    as_of: String,
    /// New groups, or `None` when the kept ones stand and only the summary is new.
    groups: Option<Groups>,
    /// The summary of the groups, as JSON, unless it cannot be kept.
    summary: Option<String>,
    /// What it was summed from and priced with ([`summary_key`]).
    key: String,
    /// Whether the groups were counted from the table (rather than kept ones moved).
    counted: bool,
}

/// The form of the kept summary: raise it whenever `summarize` or [`Summary`] changes, so
/// that a summary kept by an earlier build is summed again instead of read.
const SUMMARY_FORM: u32 = 1;

/// The kept summary's key: its form, the kept tallies it sums (their generation and
/// instant, so that a keep of new groups by any build, even one that knows nothing of
/// summaries, sets it aside) and the price table, the only part of the configuration a
/// summary depends on beyond the tallies (a map with ordered keys, so the same table is
/// the same text).
fn summary_key(generation: i64, as_of: &str, cfg: &InventoryConfig) -> String {
    let prices = serde_json::to_string(&cfg.prices).expect("prices serialize");
    format!("{SUMMARY_FORM} {generation} {as_of} {prices}")
}

/// The summary as kept, if it reads back as it is (totals too large for a float, which
/// JSON writes as `null`, would not).
fn keepable(summary: &Summary) -> Option<String> {
    let text = serde_json::to_string(summary).ok()?;
    serde_json::from_str::<Summary>(&text).ok().map(|_| text)
}

/// What a `stats` has to keep for the next one.
#[derive(Clone, Copy)]
enum Keep {
    /// Groups counted or moved forward to now, with their summary.
    Groups,
    /// Only a summary of the kept groups, which stand.
    Summary,
}

/// One mailbox that changed group between two instants (band or recovery age).
struct Move {
    /// Its group before (with the band it had).
    from: GroupKey,
    /// The band it has now.
    band: u8,
    was: Counts,
    is: Counts,
}

/// Adds a group to the kept tallies; its parameters are [`group_params`].
const INSERT_GROUP: &str = "INSERT INTO mailbox_tally_cache (company, license, holds, band,
         count, recovery_eligible, size_mb, size_unknown)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";

/// A group's key and counts as the parameters ?1 to ?8 of [`INSERT_GROUP`] and of the
/// update in [`fold_pending`].
fn group_params<'a>(k: &'a GroupKey, c: &'a Counts) -> [&'a dyn rusqlite::ToSql; 8] {
    [
        &k.company,
        &k.license,
        &k.holds,
        &k.band,
        &c.count,
        &c.recovery_eligible,
        &c.size_mb,
        &c.size_unknown,
    ]
}

/// Replaces the kept groups with `groups`, counted from the table as of `as_of` (so
/// they include every change queued so far, and the queue is emptied), and records them
/// as kept for `generation`, with `summary` under `key`.
fn replace_kept_groups(
    conn: &rusqlite::Connection,
    groups: &Groups,
    generation: i64,
    as_of: &str,
    summary: Option<&str>,
    key: Option<&str>,
) -> rusqlite::Result<()> {
    conn.execute_batch(
        "DELETE FROM mailbox_tally_cache;
         DELETE FROM mailbox_tally_pending;",
    )?;
    let mut insert = conn.prepare_cached(INSERT_GROUP)?;
    for (k, c) in &groups.0 {
        insert.execute(group_params(k, c))?;
    }
    conn.execute(
        "UPDATE mailbox_tally_state SET cached_generation = ?1, as_of = ?2, summary = ?3,
             summary_prices = ?4",
        params![generation, as_of, summary, key],
    )?;
    Ok(())
}

/// What [`carry_kept_tallies`] made of a write's changes.
enum Carry {
    /// The kept groups do not follow: none are kept for the generation written, or a
    /// change cannot be placed in its group by the kept instant.
    No,
    /// They follow, unchanged (the changes cancelled out): so does their summary.
    Unchanged,
    /// They follow, changed.
    Changed,
}

/// Ends a write that changed cached mailboxes (from [`Store::write`], before it commits):
/// starts a new generation of the table and, when tallies are kept for the generation
/// written, folds the changes the triggers of schema version 12 queued into them, so
/// they stand for the new generation. Each queued row's group is its group at the kept
/// instant, so the groups remain the table as of that instant and `stats` moves them to
/// its own as it does for groups kept by a count. A change whose deletion date is not in
/// the program's form, or a group that would count below zero (tallies that were not the
/// table's), sets the kept tallies aside instead: the next `stats` counts again.
pub(super) fn carry_kept_tallies(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    let (generation, cached, as_of, key): (i64, Option<i64>, Option<String>, Option<String>) = conn
        .query_row(
            "SELECT generation, cached_generation, as_of, summary_prices
             FROM mailbox_tally_state",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )?;
    let kept_at = as_of.as_deref().and_then(crate::time::parse);
    let carry = match kept_at {
        Some(at) if cached == Some(generation) => fold_pending(conn, at)?,
        _ => Carry::No,
    };
    conn.execute("DELETE FROM mailbox_tally_pending", [])?;
    let next = generation + 1;
    if matches!(carry, Carry::No) {
        conn.execute(
            "UPDATE mailbox_tally_state SET generation = ?1",
            params![next],
        )?;
        return Ok(());
    }
    // The kept summary's price table, when the summary is of the groups carried.
    let as_of = as_of.unwrap_or_default();
    let priced = key
        .as_deref()
        .and_then(key_parts)
        .filter(|(g, at, _)| *g == generation && *at == as_of)
        .map(|(_, _, prices)| InventoryConfig {
            prices,
            ..InventoryConfig::default()
        });
    let summary = match (&carry, priced) {
        // The same groups have the same summary; its key names the new generation.
        (Carry::Unchanged, Some(cfg)) => Some((None, summary_key(next, &as_of, &cfg))),
        // New groups are summed again with the kept summary's prices (the only part of
        // the configuration a summary depends on), so that the next `stats` with the
        // same price table reads the summary instead of the groups.
        (Carry::Changed, Some(cfg)) => {
            let summary = summarize(read_kept_groups(conn)?.into_tallies(), &cfg);
            keepable(&summary).map(|text| (Some(text), summary_key(next, &as_of, &cfg)))
        }
        _ => None,
    };
    match summary {
        Some((text, key)) => conn.execute(
            "UPDATE mailbox_tally_state
             SET generation = ?1, cached_generation = ?1, summary_prices = ?2,
                 summary = coalesce(?3, summary)",
            params![next, key, text],
        )?,
        None => conn.execute(
            "UPDATE mailbox_tally_state
             SET generation = ?1, cached_generation = ?1, summary = NULL,
                 summary_prices = NULL",
            params![next],
        )?,
    };
    Ok(())
}

/// The pass over the whole table, and how many rows have a deletion date not in the
/// program's form.
fn count_tallies(
    conn: &rusqlite::Connection,
    now: DateTime<Utc>,
) -> Result<(Groups, u64), StoreError> {
    let ages = Ages::new(now);
    // Groups by the bytes of their key (company, licence, holds as stored, and the
    // band), so that a row costs one hash of a reused buffer, not owned strings.
    let mut by_bytes: foldhash::HashMap<Vec<u8>, (GroupKey, Counts)> = foldhash::HashMap::default();
    let mut key: Vec<u8> = Vec::with_capacity(256);
    let mut odd_dates = 0;
    let mut st = conn.prepare_cached(&format!("SELECT {TALLY_COLUMNS} FROM inactive_mailboxes"))?;
    let mut rows = st.query([])?;
    while let Some(r) = rows.next()? {
        let deleted = text(r, 3)?;
        odd_dates += u64::from(deleted.is_some_and(|d| !is_stamp_millis(d)));
        let (band, old_enough) = ages.of(deleted);
        key.clear();
        for i in 0..3 {
            match r.get_ref(i)? {
                ValueRef::Null => key.push(0),
                v => {
                    let b = v.as_bytes().map_err(rusqlite::Error::from)?;
                    key.push(1);
                    key.extend_from_slice(&(b.len() as u64).to_le_bytes());
                    key.extend_from_slice(b);
                }
            }
        }
        key.push(band);
        let c = match by_bytes.get_mut(key.as_slice()) {
            Some((_, c)) => c,
            None => {
                let k = GroupKey {
                    company: r.get(0)?,
                    license: r.get(1)?,
                    holds: hold_bits(text(r, 2)?),
                    band,
                };
                &mut by_bytes
                    .entry(key.clone())
                    .or_insert((k, Counts::default()))
                    .1
            }
        };
        c.add(&row_counts(r, old_enough)?, 1);
    }
    // Hold lists stored in different forms or orders are one group.
    let mut groups = Groups::default();
    for (k, c) in by_bytes.into_values() {
        groups.0.entry(k).or_default().add(&c, 1);
    }
    Ok((groups, odd_dates))
}

/// The groups kept by the last run that kept any.
fn read_kept_groups(conn: &rusqlite::Connection) -> rusqlite::Result<Groups> {
    let mut st = conn.prepare_cached(
        "SELECT company, license, holds, band, count, recovery_eligible, size_mb,
                size_unknown
         FROM mailbox_tally_cache",
    )?;
    // Room for as many groups as are kept, and no more: the map is touched page by
    // page as it fills, and room for 4,096 groups (720 KB) cost about 0.3 ms of page
    // faults for the 1,272 of a 10,000-mailbox cache.
    let kept: i64 = conn.query_row("SELECT count(*) FROM mailbox_tally_cache", [], |r| r.get(0))?;
    let mut rows = st.query([])?;
    let mut groups = Groups::default();
    groups.0.reserve(usize::try_from(kept).unwrap_or(0));
    while let Some(r) = rows.next()? {
        let key = GroupKey {
            company: r.get(0)?,
            license: r.get(1)?,
            holds: r.get(2)?,
            band: r.get(3)?,
        };
        let counts = Counts {
            count: r.get(4)?,
            recovery_eligible: r.get(5)?,
            size_mb: r.get(6)?,
            size_unknown: r.get(7)?,
        };
        groups.0.insert(key, counts);
    }
    Ok(groups)
}

/// Folds the queued changes into the kept groups, each in its group as of `at`.
fn fold_pending(conn: &rusqlite::Connection, at: DateTime<Utc>) -> rusqlite::Result<Carry> {
    let ages = Ages::new(at);
    let mut changes: foldhash::HashMap<GroupKey, Counts> = foldhash::HashMap::default();
    let mut st = conn.prepare_cached(&format!(
        "SELECT {TALLY_COLUMNS}, sign FROM mailbox_tally_pending"
    ))?;
    let mut rows = st.query([])?;
    while let Some(r) = rows.next()? {
        let deleted = text(r, 3)?;
        if deleted.is_some_and(|d| !is_stamp_millis(d)) {
            return Ok(Carry::No);
        }
        let (band, old_enough) = ages.of(deleted);
        let key = GroupKey {
            company: r.get(0)?,
            license: r.get(1)?,
            holds: hold_bits(text(r, 2)?),
            band,
        };
        let sign: i64 = r.get(8)?;
        changes
            .entry(key)
            .or_default()
            .add(&row_counts(r, old_enough)?, if sign < 0 { -1 } else { 1 });
    }
    drop(rows);
    changes.retain(|_, c| *c != Counts::default());
    if changes.is_empty() {
        return Ok(Carry::Unchanged);
    }
    let mut update = conn.prepare_cached(
        "UPDATE mailbox_tally_cache
         SET count = count + ?5, recovery_eligible = recovery_eligible + ?6,
             -- A group with no known size left sums to 0, not to what the additions and
             -- subtractions of sizes in floating point leave.
             size_mb = CASE WHEN count + ?5 = size_unknown + ?8 THEN 0.0
                            ELSE size_mb + ?7 END,
             size_unknown = size_unknown + ?8
         WHERE company IS ?1 AND license IS ?2 AND holds = ?3 AND band = ?4",
    )?;
    let mut insert = conn.prepare_cached(INSERT_GROUP)?;
    for (k, c) in &changes {
        if update.execute(group_params(k, c))? == 0 {
            insert.execute(group_params(k, c))?;
        }
    }
    let impossible: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM mailbox_tally_cache
                        WHERE count < 0 OR recovery_eligible < 0 OR size_unknown < 0
                           OR recovery_eligible > count OR size_unknown > count)",
        [],
        |r| r.get(0),
    )?;
    if impossible {
        return Ok(Carry::No);
    }
    conn.execute("DELETE FROM mailbox_tally_cache WHERE count = 0", [])?;
    Ok(Carry::Changed)
}

/// The generation, instant and price table a kept summary's key ([`summary_key`]) names,
/// when it is of this build's form.
fn key_parts(key: &str) -> Option<(i64, &str, BTreeMap<String, Price>)> {
    let mut parts = key.splitn(4, ' ');
    if parts.next()?.parse::<u32>().ok()? != SUMMARY_FORM {
        return None;
    }
    let generation = parts.next()?.parse().ok()?;
    let as_of = parts.next()?;
    let prices = serde_json::from_str(parts.next()?).ok()?;
    Some((generation, as_of, prices))
}

/// The search index query for rows holding every three-character run of `text` (already
/// folded), or `None` when `text` is shorter than that. Each run is quoted, so the
/// search text's own quotes and operators are just characters.
fn trigram_query(text: &str) -> Option<String> {
    let chars: Vec<char> = text.chars().collect();
    if chars.len() < 3 {
        return None;
    }
    let mut q = String::with_capacity(text.len() * 8);
    for (i, run) in chars.windows(3).enumerate() {
        if i > 0 {
            q.push_str(" AND ");
        }
        q.push('"');
        for &c in run {
            if c == '"' {
                q.push('"');
            }
            q.push(c);
        }
        q.push('"');
    }
    Some(q)
}

/// A text column, borrowed from the row.
fn text<'r>(r: &'r Row<'_>, i: usize) -> rusqlite::Result<Option<&'r str>> {
    Ok(r.get_ref(i)?.as_str_or_null()?)
}

/// Whether `s` has the form of [`stamp_millis`]: `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn is_stamp_millis(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 24
        && b.iter().enumerate().all(|(i, &c)| match i {
            4 | 7 => c == b'-',
            10 => c == b'T',
            13 | 16 => c == b':',
            19 => c == b'.',
            23 => c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

impl Tx<'_> {
    /// Inserts or replaces one mailbox.
    pub fn upsert_mailbox(&mut self, m: &InactiveMailbox) -> Result<(), StoreError> {
        self.upsert_mailboxes(std::slice::from_ref(m)).map(|_| ())
    }

    /// Inserts or replaces many mailboxes with one prepared statement; returns the count.
    pub fn upsert_mailboxes(&mut self, ms: &[InactiveMailbox]) -> Result<usize, StoreError> {
        self.upsert_mailboxes_with(ms, BULK_ROWS)
    }

    fn upsert_mailboxes_with(
        &mut self,
        ms: &[InactiveMailbox],
        bulk_rows: usize,
    ) -> Result<usize, StoreError> {
        // A batch that is large next to the table is a bulk load: the secondary indexes are
        // dropped and rebuilt (a sort) instead of updated row by row (a random seek each),
        // and rows go in in primary-key order, so the primary key index only appends. For
        // a million rows this is several times faster; it is all one transaction, so
        // readers never see the table without its indexes.
        let bulk = ms.len() >= bulk_rows && {
            let cached: i64 =
                self.tx
                    .query_row("SELECT count(*) FROM inactive_mailboxes", [], |r| r.get(0))?;
            ms.len() as i64 >= cached / 2
        };
        let rows: Vec<&InactiveMailbox> = if bulk {
            super::drop_mailbox_derived(&self.tx)?;
            identity_order(ms)
        } else {
            ms.iter().collect()
        };
        // In statements of many rows either way (see UPSERT_CHUNK).
        let chunked = Some((UPSERT_CHUNK.as_str(), BULK_CHUNK));
        write_rows(&self.tx, chunked, &UPSERT, &rows)?;
        if bulk {
            super::build_mailbox_derived(&self.tx)?;
        }
        Ok(ms.len())
    }

    /// Makes the cache a snapshot: removes every cached mailbox `snapshot` does not hold,
    /// each with a MAILBOX_REMOVED audit row carrying `details`; returns how many. The
    /// way imports did it before they were staged, kept for the test that holds the
    /// staged way to it (`store::import`).
    #[cfg(test)]
    pub fn remove_absent_mailboxes(
        &mut self,
        snapshot: &[InactiveMailbox],
        details: &serde_json::Value,
        now: DateTime<Utc>,
    ) -> Result<usize, StoreError> {
        let mut gone = self.mailbox_identities()?;
        for m in snapshot {
            gone.remove(&m.identity);
        }
        let mut gone: Vec<String> = gone.into_iter().collect();
        gone.sort();
        for id in &gone {
            self.delete_mailbox(id)?;
            self.audit(
                &crate::audit::AuditEvent::new(crate::audit::Operation::MailboxRemoved)
                    .identity(id.clone())
                    .details(details.clone()),
                now,
            )?;
        }
        Ok(gone.len())
    }

    /// The identities of every cached mailbox.
    #[cfg(test)]
    pub fn mailbox_identities(&mut self) -> Result<std::collections::HashSet<String>, StoreError> {
        let mut st = self
            .tx
            .prepare_cached("SELECT identity FROM inactive_mailboxes")?;
        let ids = st
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<std::collections::HashSet<String>>>()?;
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
        // The table's triggers keep SQLite from emptying it in one step, so the update
        // hook sees every row go and `Store::write` starts a new generation.
        Ok(self.tx.execute("DELETE FROM inactive_mailboxes", [])?)
    }

    /// After a bulk load (an import, a sync), counts the tallies in this transaction and
    /// keeps them as of `now`, with their summary priced by `cfg`, when none are kept for
    /// the table (a bulk load set them aside, or none were ever counted), so that the next
    /// `stats` reads a kept summary instead of counting: one pass over the table, in the
    /// write that had to read or write all of it anyway. Nothing is kept while a deletion
    /// date is not in the program's form (see [`Store::cached_mailbox_summary`]). Returns
    /// whether it counted.
    pub fn keep_tallies_counted_now(
        &mut self,
        now: DateTime<Utc>,
        cfg: &InventoryConfig,
    ) -> Result<bool, StoreError> {
        let (generation, current): (i64, bool) = self.tx.query_row(
            "SELECT generation, cached_generation IS generation FROM mailbox_tally_state",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        if current {
            return Ok(false);
        }
        let (groups, odd_dates) = count_tallies(&self.tx, now)?;
        if odd_dates > 0 {
            return Ok(false);
        }
        // The end of the write carries the groups and the summary to the generation it
        // starts; a `stats` with another price table sums the groups and keeps its own.
        let as_of = stamp_millis(now);
        let summary = keepable(&summarize(groups.to_tallies(), cfg));
        let key = summary
            .as_ref()
            .map(|_| summary_key(generation, &as_of, cfg));
        replace_kept_groups(
            &self.tx,
            &groups,
            generation,
            &as_of,
            summary.as_deref(),
            key.as_deref(),
        )?;
        Ok(true)
    }

    /// Keeps the tallies and summary of [`Store::cached_mailbox_summary`] for the next
    /// run, unless the table changed since they were counted (another process wrote
    /// meanwhile), or, for a summary of tallies already kept, those were replaced since.
    /// Returns whether they were kept.
    pub fn keep_mailbox_tallies(&mut self, cache: &TallyCache) -> Result<bool, StoreError> {
        // Mailboxes changed earlier in this transaction are not in what was counted, and
        // its end would carry the tallies over them as if they were.
        if self.mailboxes_changed.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let (generation, queued): (i64, bool) = self.tx.query_row(
            "SELECT generation, EXISTS (SELECT 1 FROM mailbox_tally_pending)
             FROM mailbox_tally_state",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        if generation != cache.generation {
            return Ok(false);
        }
        // Changes queued since (written without a new generation, outside
        // `Store::write`) are in groups counted from the table, but not in kept groups
        // moved forward, nor in their summary: those are not kept.
        if queued && !cache.counted {
            return Ok(false);
        }
        let Some(groups) = &cache.groups else {
            let n = self.tx.execute(
                "UPDATE mailbox_tally_state SET summary = ?1, summary_prices = ?2
                 WHERE cached_generation = ?3 AND as_of = ?4",
                params![cache.summary, cache.key, cache.generation, cache.as_of],
            )?;
            return Ok(n == 1);
        };
        replace_kept_groups(
            &self.tx,
            groups,
            generation,
            &cache.as_of,
            cache.summary.as_deref(),
            Some(&cache.key),
        )?;
        Ok(true)
    }
}

impl Store {
    /// Every cached mailbox.
    pub fn all_mailboxes(&self) -> Result<Vec<InactiveMailbox>, StoreError> {
        self.mailboxes(&MailboxFilter::default())
    }

    /// The cached mailboxes matching `filter`, in no particular order.
    pub fn mailboxes(&self, filter: &MailboxFilter) -> Result<Vec<InactiveMailbox>, StoreError> {
        let text = filter.text.as_deref().map(str::to_lowercase);
        // Three characters or more: the search index finds the candidates.
        let candidates = text.as_deref().and_then(trigram_query);
        let mut st = self.conn.prepare_cached(&format!(
            "{SELECT}
             WHERE (?1 IS NULL OR instr(search_key, ?1) > 0 OR instr(primary_smtp, ?1) > 0)
               AND (?2 IS NULL OR operating_company = ?2 COLLATE NOCASE)
               AND (?3 IS NULL OR (json_valid(hold_types)
                    AND EXISTS (SELECT 1 FROM json_each(hold_types) WHERE value = ?3)))
               AND (?4 IS NULL OR when_soft_deleted <= ?4)
               {}",
            if candidates.is_some() {
                "AND rowid IN (SELECT rowid FROM mailbox_search WHERE mailbox_search MATCH ?5)"
            } else {
                // Keeps ?5 bound in both forms of the statement.
                "AND ?5 IS NULL"
            }
        ))?;
        let rows = st
            .query_map(
                params![
                    text,
                    filter.company,
                    filter.hold.map(HoldType::as_str),
                    filter.deleted_before.map(stamp_millis),
                    candidates,
                ],
                row_to_mailbox,
            )?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// The mailboxes a key names: an ExchangeGuid, else a primary SMTP address, else a
    /// user principal name. Several inactive mailboxes can share an address (a user
    /// deleted and re-created more than once), so this is a list.
    pub fn find_mailboxes(&self, key: &str) -> Result<Vec<InactiveMailbox>, StoreError> {
        let key = key.trim();
        let query = |sql: &str, value: &str| -> Result<Vec<InactiveMailbox>, StoreError> {
            let rows = self
                .conn
                .prepare_cached(&format!("{SELECT} WHERE {sql} ORDER BY identity"))?
                .query_map([value], row_to_mailbox)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        };
        if let Ok(guid) = uuid::Uuid::try_parse(key) {
            let found = query("identity = ?1", &guid.hyphenated().to_string())?;
            if !found.is_empty() {
                return Ok(found);
            }
        }
        let lower = key.to_lowercase();
        let by_smtp = query("primary_smtp = ?1", &lower)?;
        if !by_smtp.is_empty() {
            return Ok(by_smtp);
        }
        query("user_principal_name = ?1 COLLATE NOCASE", key)
    }

    /// The cached mailboxes tallied by everything `mailboxes stats` groups them by, ages
    /// and eligibility as of `now`: one pass over the table that reads eight columns and
    /// never builds a mailbox, instead of loading and refreshing every row.
    pub fn mailbox_tallies(&self, now: DateTime<Utc>) -> Result<Vec<Tally>, StoreError> {
        Ok(self.tally_pass(now)?.0.into_tallies())
    }

    /// The summary of `mailboxes stats` as of `now`, priced by `cfg`: summed from the
    /// tallies an earlier run kept (which every write since carried forward, see
    /// [`carry_kept_tallies`]) when they stand for the table's generation, moved forward to
    /// `now` by re-banding only the mailboxes whose age crossed a band's first day or the
    /// recovery age in between (found through the index of deletion dates), so the cost
    /// is the number of groups, not of mailboxes. When none crossed and the price table is
    /// the same, the summary kept with the tallies is the answer, and the groups are not
    /// read at all. Otherwise, or when the kept tallies are more than [`CATCH_UP_LIMIT`]
    /// old, it is one pass over the table. The answer comes with what to keep for the
    /// next run, when it differs from what is kept: give it to
    /// [`Tx::keep_mailbox_tallies`].
    ///
    /// `trust_kept` false (another program writes the table by older rules, which start no
    /// new generation: a daemon of an older build still running after this one migrated
    /// the database) counts in one pass and keeps nothing.
    pub fn cached_mailbox_summary(
        &self,
        now: DateTime<Utc>,
        trust_kept: bool,
        cfg: &InventoryConfig,
    ) -> Result<CachedSummary, StoreError> {
        // One read transaction: the state row, the kept groups and summary, and the table
        // they are checked against are one snapshot.
        let snapshot = self.read_snapshot()?;
        // Rows this connection changed outside `Store::write` (a migration) have not
        // started a new generation yet.
        let unseen_changes = self.mailboxes_changed.load(Ordering::Relaxed);
        type State = (
            i64,
            Option<i64>,
            Option<String>,
            Option<String>,
            Option<String>,
            bool,
        );
        // Changes queued and not folded (written outside `Store::write`, without a new
        // generation) are not in the kept tallies.
        let (generation, cached, as_of, kept_summary, kept_key, queued): State =
            self.conn.query_row(
                "SELECT generation, cached_generation, as_of, summary, summary_prices,
                        EXISTS (SELECT 1 FROM mailbox_tally_pending)
                 FROM mailbox_tally_state",
                [],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ))
                },
            )?;
        let since = as_of
            .as_deref()
            .and_then(crate::time::parse)
            .filter(|t0| *t0 <= now && now - *t0 <= CATCH_UP_LIMIT);
        let from_cache = trust_kept
            && since.is_some()
            && !unseen_changes
            && !queued
            && cached == Some(generation);
        let (groups, keep) = match since {
            Some(t0) if from_cache => {
                let moves = self.catch_up(t0, now)?;
                let key = summary_key(generation, as_of.as_deref().unwrap_or_default(), cfg);
                if moves.is_empty() && kept_key.as_deref() == Some(key.as_str()) {
                    // A kept summary this build cannot read is summed again and replaced.
                    let kept = kept_summary.as_deref().map(serde_json::from_str::<Summary>);
                    if let Some(Ok(summary)) = kept {
                        let cache = self.mailbox_stats_of(summary.count)?;
                        return Ok(CachedSummary {
                            summary,
                            from_cache: true,
                            from_kept_summary: true,
                            keep: None,
                            cache,
                        });
                    }
                }
                let mut groups = self.kept_groups()?;
                let moved = !moves.is_empty();
                for m in moves {
                    if let Some(c) = groups.0.get_mut(&m.from) {
                        c.add(&m.was, -1);
                        if c.count <= 0 {
                            groups.0.remove(&m.from);
                        }
                    }
                    let to = GroupKey {
                        band: m.band,
                        ..m.from
                    };
                    groups.0.entry(to).or_default().add(&m.is, 1);
                }
                (
                    groups,
                    Some(if moved { Keep::Groups } else { Keep::Summary }),
                )
            }
            _ => {
                let (groups, odd_dates) = self.tally_pass(now)?;
                // Dates not in the program's own form (a database of the original tool)
                // cannot be found by the index range that moves a cache forward.
                let keep = trust_kept && odd_dates == 0 && !unseen_changes;
                (groups, keep.then_some(Keep::Groups))
            }
        };
        let summary = summarize(groups.to_tallies(), cfg);
        let cache = self.mailbox_stats_of(summary.count)?;
        drop(snapshot);
        let keep = keep.and_then(|keep| {
            let summary = keepable(&summary);
            let (as_of, groups) = match keep {
                Keep::Groups => (stamp_millis(now), Some(groups)),
                // Kept groups that stand need nothing kept but a summary.
                Keep::Summary if summary.is_some() => (as_of.unwrap_or_default(), None),
                Keep::Summary => return None,
            };
            Some(TallyCache {
                generation,
                key: summary_key(generation, &as_of, cfg),
                as_of,
                groups,
                summary,
                counted: !from_cache,
            })
        });
        Ok(CachedSummary {
            summary,
            from_cache,
            from_kept_summary: false,
            keep,
            cache,
        })
    }

    /// The pass over the whole table, and how many rows have a deletion date not in the
    /// program's form.
    fn tally_pass(&self, now: DateTime<Utc>) -> Result<(Groups, u64), StoreError> {
        count_tallies(&self.conn, now)
    }

    /// The groups kept by the last run that kept any.
    fn kept_groups(&self) -> Result<Groups, StoreError> {
        Ok(read_kept_groups(&self.conn)?)
    }

    /// The mailboxes that change group between `then` and `now`: those whose deletion
    /// date lies between a band's first day (or the recovery age) as counted from `then`
    /// and as counted from `now`.
    fn catch_up(&self, then: DateTime<Utc>, now: DateTime<Utc>) -> Result<Vec<Move>, StoreError> {
        let (before, after) = (Ages::new(then), Ages::new(now));
        let cuts = before
            .cuts()
            .zip(after.cuts())
            .filter(|(a, b)| a != b)
            .collect::<Vec<_>>();
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {TALLY_COLUMNS}, rowid FROM inactive_mailboxes
             WHERE when_soft_deleted > ?1 AND when_soft_deleted <= ?2"
        ))?;
        let mut seen = std::collections::HashSet::new();
        let mut moves = Vec::new();
        for (from, to) in cuts {
            let mut rows = st.query([from, to])?;
            while let Some(r) = rows.next()? {
                if !seen.insert(r.get::<_, i64>(8)?) {
                    continue;
                }
                let deleted = text(r, 3)?;
                let (was, was_old) = before.of(deleted);
                let (is, is_old) = after.of(deleted);
                if (was, was_old) == (is, is_old) {
                    continue;
                }
                moves.push(Move {
                    from: GroupKey {
                        company: r.get(0)?,
                        license: r.get(1)?,
                        holds: hold_bits(text(r, 2)?),
                        band: was,
                    },
                    band: is,
                    was: row_counts(r, was_old)?,
                    is: row_counts(r, is_old)?,
                });
            }
        }
        Ok(moves)
    }

    /// Count, oldest and newest update, and the file's size.
    pub fn mailbox_stats(&self) -> Result<StoreStats, StoreError> {
        let count: i64 =
            self.conn
                .query_row("SELECT count(*) FROM inactive_mailboxes", [], |r| r.get(0))?;
        self.mailbox_stats_of(count as u64)
    }

    /// [`Store::mailbox_stats`] for a count already known (`stats` sums its tallies).
    fn mailbox_stats_of(&self, count: u64) -> Result<StoreStats, StoreError> {
        // Apart, so that the oldest and newest are each one step down the index of update
        // times; together they would walk all of it.
        let oldest: Option<String> = self.conn.query_row(
            "SELECT min(last_updated) FROM inactive_mailboxes",
            [],
            |r| r.get(0),
        )?;
        let newest: Option<String> = self.conn.query_row(
            "SELECT max(last_updated) FROM inactive_mailboxes",
            [],
            |r| r.get(0),
        )?;
        Ok(StoreStats {
            count,
            oldest_update: oldest,
            newest_update: newest,
            file_size_bytes: self.file_size()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use chrono::TimeZone;

    fn mailbox(i: u32) -> InactiveMailbox {
        let rec = serde_json::json!({
            "ExchangeGuid": format!("{i:08x}-0000-4000-8000-000000000000"),
            "DisplayName": format!("User {i}"),
            "PrimarySmtpAddress": format!("user{i}@contoso.com"),
            "WhenSoftDeleted": "2024-01-01T00:00:00Z",
        });
        let cfg = crate::config::InventoryConfig::default();
        let raw = crate::inventory::ExoMailbox::from_fields(&cfg, |k| rec.get(k)).unwrap();
        InactiveMailbox::build(
            raw,
            &cfg,
            Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap(),
        )
    }

    #[test]
    fn bulk_upserts_rebuild_the_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("db")).unwrap();
        // Three statements of BULK_CHUNK rows and a remainder row by row.
        let first: Vec<_> = (0..200).rev().map(mailbox).collect();
        assert_eq!(
            store
                .write(|tx| tx.upsert_mailboxes_with(&first, 10))
                .unwrap(),
            200
        );
        // A second bulk load over some of the same rows updates them rather than adding
        // any; a mailbox listed twice ends as its last listing, within one statement too.
        let mut again: Vec<_> = (100..400).map(mailbox).collect();
        again[0].display_name = Some("Renamed".into());
        let mut twice = mailbox(150);
        twice.display_name = Some("Last".into());
        again.insert(60, twice);
        store
            .write(|tx| tx.upsert_mailboxes_with(&again, 10))
            .unwrap();
        // A batch small next to the table keeps the indexes; its 100 rows go in one
        // statement of 64 and 36 of one row, a mailbox listed twice in the first.
        let mut small: Vec<_> = (900..999).map(mailbox).collect();
        let mut again_small = mailbox(920);
        again_small.display_name = Some("Later".into());
        small.insert(40, again_small);
        store
            .write(|tx| tx.upsert_mailboxes_with(&small, 1000))
            .unwrap();
        // One row alone.
        store
            .write(|tx| tx.upsert_mailboxes_with(&[mailbox(999)], 10))
            .unwrap();
        assert_eq!(store.all_mailboxes().unwrap().len(), 500);
        assert_eq!(
            store.find_mailboxes("user920@contoso.com").unwrap()[0]
                .display_name
                .as_deref(),
            Some("Later")
        );
        let name = |addr: &str| store.find_mailboxes(addr).unwrap()[0].display_name.clone();
        assert_eq!(name("user100@contoso.com").as_deref(), Some("Renamed"));
        assert_eq!(name("user150@contoso.com").as_deref(), Some("Last"));
        assert_eq!(name("user5@contoso.com").as_deref(), Some("User 5"));
        assert_eq!(name("user999@contoso.com").as_deref(), Some("User 999"));
        let indexes: Vec<String> = store
            .conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'inactive_mailboxes' AND sql IS NOT NULL ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            indexes,
            [
                "idx_mailboxes_deleted",
                "idx_mailboxes_size_unknown",
                "idx_mailboxes_smtp",
                "idx_mailboxes_stats_at",
                "idx_mailboxes_stats_stale",
                "idx_mailboxes_updated"
            ]
        );
        let plan: String = store
            .conn
            .query_row(
                "EXPLAIN QUERY PLAN SELECT * FROM inactive_mailboxes WHERE primary_smtp = 'x'",
                [],
                |r| r.get(3),
            )
            .unwrap();
        assert!(plan.contains("idx_mailboxes_smtp"), "{plan}");
    }

    #[test]
    fn checkpoints_stay_off_the_write_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let mut store = Store::open(&path).unwrap();
        let ms: Vec<_> = (0..20_000).map(mailbox).collect();
        store.write(|tx| tx.upsert_mailboxes(&ms)).unwrap();
        let wal_path = dir.path().join("db-wal");
        let wal_len = std::fs::metadata(&wal_path).unwrap().len();
        // More than SQLite's default threshold with 4 KiB pages (4 MiB) went to the WAL,
        // and the database file was not written.
        assert!(wal_len > 4 << 20, "{wal_len}");
        assert!(store.file_size().unwrap() < 256 << 10);
        let (log, copied) = store.checkpoint().unwrap();
        assert!(log > 100 && copied == log, "{log} {copied}");
        assert!(store.file_size().unwrap() > 4 << 20);
        // Closing the last connection checkpoints and removes the WAL.
        drop(store);
        assert!(!wal_path.exists());
        assert_eq!(
            Store::open(&path).unwrap().all_mailboxes().unwrap().len(),
            20_000
        );
    }

    #[test]
    fn guid_keys_order_as_the_text_does() {
        let mut ids: Vec<String> = (0..500u64)
            .map(|i| {
                let r = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
                format!(
                    "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
                    (r >> 32) as u32,
                    (r >> 16) as u16,
                    r as u16,
                    (r >> 48) as u16,
                    r & 0xffff_ffff_ffff
                )
            })
            .collect();
        ids.extend([
            "00000000-0000-0000-0000-000000000000".into(),
            "ffffffff-ffff-ffff-ffff-ffffffffffff".into(),
        ]);
        let mut by_text = ids.clone();
        by_text.sort();
        let mut by_key = ids.clone();
        by_key.sort_by_key(|s| guid_key(s).unwrap());
        assert_eq!(by_text, by_key);
        for bad in [
            "4A3B2C1D-5E6F-47A8-B9C0-D1E2F3A4B5C6",
            "4a3b2c1d5e6f47a8b9c0d1e2f3a4b5c6",
            "4a3b2c1d-5e6f-47a8-b9c0-d1e2f3a4b5cg",
            "4a3b2c1d-5e6f-47a8-b9c0+d1e2f3a4b5c6",
            "",
        ] {
            assert_eq!(guid_key(bad), None, "{bad}");
        }
        // A batch with an identity that is not a canonical GUID is still ordered.
        let mut ms: Vec<InactiveMailbox> = (0..5).rev().map(mailbox).collect();
        let order = |ms: &[InactiveMailbox]| -> Vec<String> {
            identity_order(ms)
                .iter()
                .map(|m| m.identity.clone())
                .collect()
        };
        let mut want: Vec<String> = ms.iter().map(|m| m.identity.clone()).collect();
        want.sort();
        assert_eq!(order(&ms), want);
        ms[2].identity = "legacy-identity".into();
        let mut want: Vec<String> = ms.iter().map(|m| m.identity.clone()).collect();
        want.sort();
        assert_eq!(order(&ms), want);
        // A mailbox listed twice keeps the order of its listings, on both paths.
        for legacy in [false, true] {
            let mut ms: Vec<InactiveMailbox> = (0..40).map(mailbox).collect();
            if legacy {
                ms[7].identity = "legacy-identity".into();
            }
            for (i, name) in [(3, "first"), (30, "second"), (12, "third")] {
                let mut m = mailbox(20);
                m.display_name = Some(name.into());
                ms.insert(i, m);
            }
            let names: Vec<_> = identity_order(&ms)
                .iter()
                .filter(|m| m.identity == ms[3].identity)
                .map(|m| m.display_name.clone().unwrap())
                .collect();
            assert_eq!(names, ["first", "third", "User 20", "second"], "{legacy}");
        }
    }

    #[test]
    fn stored_json_lists_escape_what_needs_it() {
        let mut out = String::new();
        push_json_list(&mut out, ["UniH1", "odd \"quoted\" \\ name\n", "ünï"]);
        assert_eq!(
            serde_json::from_str::<Vec<String>>(&out).unwrap(),
            ["UniH1", "odd \"quoted\" \\ name\n", "ünï"]
        );
        push_json_list(&mut out, []);
        assert_eq!(out, "[]");
    }

    #[test]
    fn each_row_keeps_its_own_dates() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("db")).unwrap();
        let t = |d| Utc.with_ymd_and_hms(2025, 1, d, 0, 0, 0).unwrap();
        let mut ms: Vec<_> = (0..4).map(mailbox).collect();
        for (m, d) in ms.iter_mut().zip([1, 1, 2, 1]) {
            m.last_updated = t(d);
            m.when_soft_deleted = Some(t(d + 10));
        }
        ms[3].when_soft_deleted = None;
        store.write(|tx| tx.upsert_mailboxes(&ms)).unwrap();
        let mut got = store.all_mailboxes().unwrap();
        got.sort_by(|a, b| a.identity.cmp(&b.identity));
        let dates: Vec<_> = got
            .iter()
            .map(|m| (m.last_updated, m.when_soft_deleted))
            .collect();
        assert_eq!(
            dates,
            [
                (t(1), Some(t(11))),
                (t(1), Some(t(11))),
                (t(2), Some(t(12))),
                (t(1), None)
            ]
        );
    }

    /// Not a whole millisecond, as the clock is.
    fn test_now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 6, 1, 9, 30, 15).unwrap()
            + chrono::Duration::nanoseconds(123_456_789)
    }

    /// 3,000 mailboxes varied in every field the tallies group or count by, deleted at
    /// the instants around `now` where a band or the recovery age begins.
    fn varied_mailboxes(now: DateTime<Utc>) -> Vec<InactiveMailbox> {
        let ms_before = |days: i64, ms: i64| {
            let t = now - chrono::Duration::days(days) + chrono::Duration::milliseconds(ms);
            // Stored to the millisecond.
            crate::time::parse(&stamp_millis(t)).unwrap()
        };
        let mut dates = vec![None, Some(now + chrono::Duration::days(3))];
        for days in [0, 29, 30, 31, 89, 90, 179, 180, 364, 365, 729, 730, 2000] {
            for ms in [-1, 0, 1] {
                dates.push(Some(ms_before(days, ms)));
            }
        }
        let companies = [None, Some("Contoso"), Some("contoso"), Some("(none)")];
        let licenses = [
            None,
            Some("E3"),
            Some("e5"),
            Some("F3"),
            Some("Kiosk"),
            Some("kiosk"),
        ];
        let hold_sets: [&[HoldType]; 4] = [
            &[],
            &[HoldType::Litigation],
            &[HoldType::Litigation, HoldType::Ediscovery],
            &[HoldType::Delay],
        ];
        let ids = [None, Some(""), Some(" \t"), Some("0e1f")];
        let mut ms = Vec::new();
        let mut rng = 0x5eed_u64;
        let mut pick = |n: usize| {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (rng >> 33) as usize % n
        };
        for i in 0..3000u32 {
            let mut m = mailbox(i);
            m.operating_company = companies[pick(companies.len())].map(String::from);
            m.license_type = licenses[pick(licenses.len())].map(String::from);
            m.hold_types = hold_sets[pick(hold_sets.len())].to_vec();
            m.when_soft_deleted = dates[pick(dates.len())];
            m.size_mb = [None, Some(1.5), Some(1024.125)][pick(3)];
            m.is_inactive = [None, Some(true), Some(false)][pick(3)];
            m.auto_expanding_archive = pick(5) == 0;
            m.external_directory_object_id = ids[pick(ids.len())].map(String::from);
            ms.push(m);
        }
        ms
    }

    /// Two summaries are the same, sizes (added in another order) to within rounding.
    fn assert_same_summary(got: &crate::inventory::Summary, want: &crate::inventory::Summary) {
        use crate::inventory::Summary;
        // Sizes are added in another order.
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * a.abs().max(1.0);
        let sizes = |s: &Summary| {
            let groups = [
                &s.by_company,
                &s.by_hold_type,
                &s.by_age_band,
                &s.unpriced_licenses,
            ];
            std::iter::once(s.size_mb)
                .chain(groups.into_iter().flatten().map(|g| g.size_mb))
                .collect::<Vec<_>>()
        };
        for (a, b) in sizes(got).into_iter().zip(sizes(want)) {
            assert!(close(a, b), "{a} {b}");
        }
        let rounded = |s: &Summary| {
            let mut s = s.clone();
            s.size_mb = 0.0;
            for g in s
                .by_company
                .iter_mut()
                .chain(&mut s.by_hold_type)
                .chain(&mut s.by_age_band)
                .chain(&mut s.unpriced_licenses)
            {
                g.size_mb = 0.0;
            }
            s
        };
        assert_eq!(rounded(got), rounded(want));
    }

    /// The cache's one pass gives the same summary as refreshing every mailbox and
    /// tallying each by the per-mailbox rules, across every field it groups or counts by
    /// and the instants where a band or the recovery age begins.
    #[test]
    fn tallies_agree_with_the_mailbox_rules() {
        use crate::inventory::summarize;
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("db")).unwrap();
        let cfg: crate::config::InventoryConfig = toml::from_str(
            r#"
default_license = "E3"
prices = { e3 = 36.0, E5 = 57.0, F3 = 8.25 }
"#,
        )
        .unwrap();
        let now = test_now();
        let ms = varied_mailboxes(now);
        store.write(|tx| tx.upsert_mailboxes(&ms)).unwrap();
        // Dates not in the program's form (a database of the original tool), and one
        // that does not parse.
        store
            .conn
            .execute_batch(
                "UPDATE inactive_mailboxes SET when_soft_deleted = '1/1/2024 12:00:00 AM'
                  WHERE rowid % 7 = 0;
                 UPDATE inactive_mailboxes SET when_soft_deleted = '3/1/2025 9:00:00 PM'
                  WHERE rowid % 11 = 0;
                 UPDATE inactive_mailboxes SET when_soft_deleted = 'yesterday'
                  WHERE rowid % 13 = 0;
                 UPDATE inactive_mailboxes SET hold_types = '[\"Litigation Hold\"]'
                  WHERE rowid % 17 = 0;",
            )
            .unwrap();
        let mut cached = store.all_mailboxes().unwrap();
        for m in &mut cached {
            m.refresh(&cfg, now);
        }
        let want = summarize(cached.iter().map(Tally::of), &cfg);
        let got = summarize(store.mailbox_tallies(now).unwrap(), &cfg);
        assert_same_summary(&got, &want);
        // Every band, eligibility both ways and each kind of group were exercised.
        assert_eq!(want.by_age_band.len(), AGE_BANDS.len() + 1);
        assert!(want.recovery_eligible > 0 && want.recovery_eligible < want.count);
        assert!(want.without_license > 0 && want.size_unknown > 0);
        assert_eq!(want.unpriced_licenses.len(), 2);
        assert_eq!(
            summarize(store.mailbox_tallies(now).unwrap(), &cfg).count,
            3000
        );
    }

    /// The summary kept with the tallies answers the next `stats` only for the price table
    /// it was priced with; another table sums the kept groups again and keeps its own
    /// summary beside them; a kept summary that does not read is summed again and
    /// replaced; and a summary of groups another process has replaced since is not kept.
    #[test]
    fn kept_summary_answers_only_for_its_prices() {
        use crate::inventory::summarize;
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("db")).unwrap();
        let priced = |prices: &str| -> crate::config::InventoryConfig {
            toml::from_str(&format!(
                "default_license = \"E3\"\nprices = {{ {prices} }}"
            ))
            .unwrap()
        };
        let (a, b) = (priced("E3 = 36.0, E5 = 57.0"), priced("E3 = 20.0"));
        let now = test_now();
        store
            .write(|tx| tx.upsert_mailboxes(&varied_mailboxes(now)))
            .unwrap();
        // Runs `stats` priced by `cfg`: checks its answer against a pass, keeps what it
        // offers, and says whether the kept summary answered and whether it kept anything.
        let stats = |store: &mut Store, cfg: &crate::config::InventoryConfig| {
            let got = store.cached_mailbox_summary(now, true, cfg).unwrap();
            assert_same_summary(
                &got.summary,
                &summarize(store.mailbox_tallies(now).unwrap(), cfg),
            );
            if let Some(keep) = &got.keep {
                assert!(store.write(|tx| tx.keep_mailbox_tallies(keep)).unwrap());
            }
            (got.from_kept_summary, got.keep.map(|k| k.groups.is_some()))
        };
        let counted = store.cached_mailbox_summary(now, true, &a).unwrap();
        assert!(!counted.from_kept_summary);
        let keep = counted.keep.expect("counted and kept");
        assert!(store.write(|tx| tx.keep_mailbox_tallies(&keep)).unwrap());
        // Read back, the kept summary is the one made, to the last bit of every sum.
        let kept = store.cached_mailbox_summary(now, true, &a).unwrap();
        assert!(kept.from_kept_summary && kept.keep.is_none());
        assert_eq!(kept.summary, counted.summary);
        assert_eq!(kept.cache, store.mailbox_stats().unwrap());
        assert_eq!(stats(&mut store, &a), (true, None), "kept summary");
        assert_eq!(stats(&mut store, &b), (false, Some(false)), "other prices");
        assert_eq!(stats(&mut store, &b), (true, None));
        assert_eq!(stats(&mut store, &a), (false, Some(false)), "back again");
        // A kept summary that does not read.
        store
            .conn
            .execute("UPDATE mailbox_tally_state SET summary = '{\"count\":'", [])
            .unwrap();
        assert_eq!(stats(&mut store, &a), (false, Some(false)), "damaged");
        assert_eq!(stats(&mut store, &a), (true, None));
        // An older build keeps new groups without a summary (here: the same instant,
        // written in another form): the summary kept before no longer answers.
        store
            .conn
            .execute(
                "UPDATE mailbox_tally_state SET as_of = ?1",
                [now.to_rfc3339_opts(chrono::SecondsFormat::Millis, false)],
            )
            .unwrap();
        assert_eq!(stats(&mut store, &a), (false, Some(false)), "older keep");
        assert_eq!(stats(&mut store, &a), (true, None));
        // Totals too large for a float are not kept (JSON would write them as null).
        let huge = priced("E3 = 1e308, E5 = 1e308");
        assert_eq!(stats(&mut store, &huge), (false, None), "not keepable");
        assert_eq!(stats(&mut store, &huge), (false, None));
        // Summed from the kept groups, but another process keeps new groups (counted
        // later, as of another instant) before this one keeps its summary: not kept.
        let offer = store
            .cached_mailbox_summary(now, true, &b)
            .unwrap()
            .keep
            .expect("a summary for other prices");
        let other = Store::open(store.path()).unwrap();
        let later = other
            .cached_mailbox_summary(now + chrono::Duration::days(3), true, &a)
            .unwrap()
            .keep
            .expect("moved");
        drop(other);
        assert!(store.write(|tx| tx.keep_mailbox_tallies(&later)).unwrap());
        assert!(!store.write(|tx| tx.keep_mailbox_tallies(&offer)).unwrap());
    }

    /// Tallies kept by one `stats` and moved forward by the next agree with a pass over
    /// the table at every instant, including the milliseconds where mailboxes change band
    /// or reach the recovery age; any write, a clock that went back, a cache too old to
    /// move and dates the index cannot range over all make it count again; and tallies
    /// counted before another process's write are not kept.
    #[test]
    fn kept_tallies_follow_the_clock_and_every_write() {
        use crate::inventory::summarize;
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("db")).unwrap();
        let cfg = crate::config::InventoryConfig::default();
        let start = test_now();
        let mut ms = varied_mailboxes(start);
        store.write(|tx| tx.upsert_mailboxes(&ms)).unwrap();
        // Runs `stats` at `now`: checks its answer against a pass, keeps what it offers,
        // and says whether it came from kept tallies.
        let stats = |store: &mut Store, now: DateTime<Utc>| {
            let got = store.cached_mailbox_summary(now, true, &cfg).unwrap();
            assert_eq!(got.cache, store.mailbox_stats().unwrap());
            assert_same_summary(
                &got.summary,
                &summarize(store.mailbox_tallies(now).unwrap(), &cfg),
            );
            // The kept summary is the answer exactly when nothing moved.
            assert_eq!(got.from_kept_summary, got.from_cache && got.keep.is_none());
            if let Some(keep) = &got.keep {
                assert!(store.write(|tx| tx.keep_mailbox_tallies(keep)).unwrap());
            }
            (got.from_cache, got.keep.is_some())
        };
        assert_eq!(
            stats(&mut store, start),
            (false, true),
            "first: counted, kept"
        );
        assert_eq!(
            stats(&mut store, start),
            (true, false),
            "same instant: nothing moved"
        );
        // Not trusted (an older build's daemon writes beside it): counted, not kept.
        let untrusted = store.cached_mailbox_summary(start, false, &cfg).unwrap();
        assert!(!untrusted.from_cache && untrusted.keep.is_none());
        // The rows sit on each edge and a millisecond either side of it: the first
        // millisecond moves those just after an edge into the next band, then nothing
        // moves until the next rows reach an edge, days later.
        let ms_ = chrono::Duration::milliseconds;
        let mut now = start;
        for (step, moves) in [
            (ms_(1), true),
            (ms_(1), false),
            (ms_(500), false),
            (ms_(3_600_000), false),
            (chrono::Duration::days(6), true),
        ] {
            now += step;
            assert_eq!(stats(&mut store, now), (true, moves), "{now}");
        }
        now += CATCH_UP_LIMIT + chrono::Duration::seconds(1);
        assert_eq!(
            stats(&mut store, now),
            (false, true),
            "too old: counted again"
        );
        assert_eq!(
            stats(&mut store, now - chrono::Duration::hours(1)),
            (false, true),
            "clock went back: counted again"
        );
        let now = now - chrono::Duration::hours(1);
        assert!(stats(&mut store, now).0);
        // Every kind of write carries the kept tallies to its new generation, and their
        // summary, summed again with the price table it was kept with: the next `stats`
        // with that table reads the summary, counting nothing and summing nothing.
        ms[5].operating_company = Some("Moved Ltd".into());
        store.write(|tx| tx.upsert_mailbox(&ms[5])).unwrap();
        assert_eq!(stats(&mut store, now), (true, false), "an upsert");
        let kept_summary = |store: &Store, cfg: &InventoryConfig| {
            store
                .cached_mailbox_summary(now, true, cfg)
                .unwrap()
                .from_kept_summary
        };
        assert!(kept_summary(&store, &cfg));
        // A write the tallies do not read.
        store.write(|tx| tx.upsert_mailbox(&ms[5])).unwrap();
        assert!(kept_summary(&store, &cfg), "an unchanged upsert");
        let id = ms[6].identity.clone();
        assert!(store.write(|tx| tx.delete_mailbox(&id)).unwrap());
        assert_eq!(stats(&mut store, now), (true, false), "a deletion");
        let bulk: Vec<_> = (5000..5400).map(mailbox).collect();
        store.write(|tx| tx.upsert_mailboxes(&bulk)).unwrap();
        assert_eq!(stats(&mut store, now), (true, false), "400 new rows");
        // Another price table: the groups are summed and the sum kept, with its prices,
        // which the next write sums with.
        let priced = InventoryConfig {
            prices: [
                ("E3".to_string(), Price::try_from(36.0).unwrap()),
                ("e5".to_string(), Price::try_from(57.5).unwrap()),
            ]
            .into(),
            ..InventoryConfig::default()
        };
        let got = store.cached_mailbox_summary(now, true, &priced).unwrap();
        assert!(got.from_cache && !got.from_kept_summary);
        assert_same_summary(
            &got.summary,
            &summarize(store.mailbox_tallies(now).unwrap(), &priced),
        );
        let summed = got.keep.expect("summed");
        assert!(store.write(|tx| tx.keep_mailbox_tallies(&summed)).unwrap());
        assert!(
            !kept_summary(&store, &cfg),
            "the kept summary is of the other prices"
        );
        ms[9].license_type = Some("E5".into());
        store.write(|tx| tx.upsert_mailbox(&ms[9])).unwrap();
        let got = store.cached_mailbox_summary(now, true, &priced).unwrap();
        assert!(
            got.from_kept_summary,
            "summed at the write with the kept prices"
        );
        assert_same_summary(
            &got.summary,
            &summarize(store.mailbox_tallies(now).unwrap(), &priced),
        );
        // Summed, then another process writes before the sum is kept: not kept.
        let summed = store
            .cached_mailbox_summary(now, true, &cfg)
            .unwrap()
            .keep
            .expect("summed");
        let mut other = Store::open(store.path()).unwrap();
        other
            .write(|tx| tx.delete_mailbox(&ms[7].identity))
            .unwrap();
        assert!(!store.write(|tx| tx.keep_mailbox_tallies(&summed)).unwrap());
        assert_eq!(stats(&mut store, now), (true, true), "the other's write");
        store.write(|tx| tx.clear_mailboxes()).unwrap();
        assert_eq!(stats(&mut store, now), (true, false), "a clear");
        // A bulk load sets them aside (an import of half the table or more).
        store.import_begin().unwrap();
        store.import_stage(&ms).unwrap();
        store.write(|tx| tx.import_apply_with(ms.len(), 1)).unwrap();
        store.import_end().unwrap();
        assert_eq!(stats(&mut store, now), (false, true), "a bulk load");
        // Dates in the original tool's form, written outside `Store::write`: counted
        // every time, never kept.
        store.write(|tx| tx.upsert_mailboxes(&ms)).unwrap();
        store
            .conn
            .execute_batch(
                "UPDATE inactive_mailboxes SET when_soft_deleted = '1/1/2024 12:00:00 AM'
                  WHERE rowid % 7 = 0",
            )
            .unwrap();
        assert_eq!(stats(&mut store, now), (false, false));
        store.write(|tx| tx.upsert_mailbox(&ms[1])).unwrap();
        assert_eq!(stats(&mut store, now), (false, false));
    }

    /// Runs `stats` at `now` and keeps what it offers; returns its answer.
    fn stats_kept(store: &mut Store, now: DateTime<Utc>, cfg: &InventoryConfig) -> CachedSummary {
        let got = store.cached_mailbox_summary(now, true, cfg).unwrap();
        if let Some(keep) = &got.keep {
            assert!(store.write(|tx| tx.keep_mailbox_tallies(keep)).unwrap());
        }
        got
    }

    /// The kept groups as a count of the table gives them at the kept instant (sizes to
    /// within rounding: added in another order).
    fn assert_kept_groups_are_a_count(store: &Store) {
        let (cached, generation, as_of): (Option<i64>, i64, String) = store
            .conn
            .query_row(
                "SELECT cached_generation, generation, as_of FROM mailbox_tally_state",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(cached, Some(generation), "kept for the current generation");
        let at = crate::time::parse(&as_of).unwrap();
        let kept = store.kept_groups().unwrap();
        let counted = store.tally_pass(at).unwrap().0;
        let mut kept_keys: Vec<_> = kept.0.keys().cloned().collect();
        let mut counted_keys: Vec<_> = counted.0.keys().cloned().collect();
        let order = |a: &GroupKey, b: &GroupKey| {
            (&a.company, &a.license, a.holds, a.band)
                .cmp(&(&b.company, &b.license, b.holds, b.band))
        };
        kept_keys.sort_by(order);
        counted_keys.sort_by(order);
        assert_eq!(kept_keys, counted_keys);
        for (k, want) in &counted.0 {
            let got = &kept.0[k];
            if got.count == got.size_unknown {
                assert_eq!(got.size_mb, 0.0, "{k:?}: no known size, no sum");
            }
            assert_eq!(
                (got.count, got.recovery_eligible, got.size_unknown),
                (want.count, want.recovery_eligible, want.size_unknown),
                "{k:?}"
            );
            assert!(
                (got.size_mb - want.size_mb).abs() <= 1e-9 * want.size_mb.abs().max(1.0),
                "{k:?}: {} {}",
                got.size_mb,
                want.size_mb
            );
        }
        let pending: i64 = store
            .conn
            .query_row("SELECT count(*) FROM mailbox_tally_pending", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(pending, 0, "no change is left queued");
    }

    /// Random writes of every kind the program makes (upserts changing any field the
    /// tallies read, new rows, deletions, sizes written by the statistics phase, writes the
    /// tallies do not read, removal of absent rows) with the clock moving between them:
    /// after each, the kept groups are what a count gives, and `stats` sums them without
    /// counting.
    #[test]
    fn kept_tallies_follow_random_writes_as_a_count_would() {
        use crate::inventory::summarize;
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("db")).unwrap();
        let cfg = crate::config::InventoryConfig::default();
        let mut now = test_now();
        let varied = varied_mailboxes(now);
        let mut ms: Vec<_> = varied[..600].to_vec();
        store.write(|tx| tx.upsert_mailboxes(&ms)).unwrap();
        assert!(!stats_kept(&mut store, now, &cfg).from_cache);
        let mut rng = 0x7a11_u64;
        let mut pick = |n: usize| {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (rng >> 33) as usize % n
        };
        let mut next_id = 20_000;
        for step in 0..300 {
            match pick(8) {
                // Fields of a few mailboxes take values of other varied mailboxes.
                0..=2 => {
                    let n = 1 + pick(20);
                    let mut changed = Vec::new();
                    for _ in 0..n {
                        let i = pick(ms.len());
                        let from = &varied[pick(varied.len())];
                        let m = &mut ms[i];
                        match pick(8) {
                            0 => m.operating_company = from.operating_company.clone(),
                            1 => m.license_type = from.license_type.clone(),
                            2 => m.hold_types = from.hold_types.clone(),
                            3 => m.when_soft_deleted = from.when_soft_deleted,
                            4 => m.size_mb = from.size_mb,
                            5 => m.is_inactive = from.is_inactive,
                            6 => m.auto_expanding_archive = from.auto_expanding_archive,
                            _ => {
                                m.external_directory_object_id =
                                    from.external_directory_object_id.clone()
                            }
                        }
                        changed.push(m.clone());
                    }
                    store.write(|tx| tx.upsert_mailboxes(&changed)).unwrap();
                }
                3 => {
                    let mut m = varied[pick(varied.len())].clone();
                    next_id += 1;
                    m.identity = mailbox(next_id).identity;
                    store.write(|tx| tx.upsert_mailbox(&m)).unwrap();
                    ms.push(m);
                }
                4 if ms.len() > 1 => {
                    let m = ms.swap_remove(pick(ms.len()));
                    assert!(store.write(|tx| tx.delete_mailbox(&m.identity)).unwrap());
                }
                // Sizes, as the statistics phase writes them.
                5 => {
                    let results: Vec<_> = (0..1 + pick(30))
                        .map(|_| {
                            let i = pick(ms.len());
                            let bytes =
                                [None, Some(0), Some(1_572_864), Some(3_000_000_007)][pick(4)];
                            ms[i].size_mb = bytes.map(crate::inventory::bytes_to_mb);
                            crate::store::StatisticsResult {
                                identity: ms[i].identity.clone(),
                                size_bytes: bytes,
                                item_count: Some(3),
                            }
                        })
                        .collect();
                    store
                        .write(|tx| tx.store_statistics(&results, now))
                        .unwrap();
                }
                // Nothing the tallies read.
                6 => {
                    let m = ms[pick(ms.len())].clone();
                    store.write(|tx| tx.upsert_mailbox(&m)).unwrap();
                }
                // The clock moves (up to two days), and `stats` keeps what it summed.
                _ => {
                    now += chrono::Duration::milliseconds(pick(172_800_000) as i64);
                    let as_of: String = store
                        .conn
                        .query_row("SELECT as_of FROM mailbox_tally_state", [], |r| r.get(0))
                        .unwrap();
                    let kept_at = crate::time::parse(&as_of).unwrap();
                    let got = stats_kept(&mut store, now, &cfg);
                    // Tallies older than the catch-up limit are counted again.
                    assert_eq!(
                        got.from_cache,
                        now - kept_at <= CATCH_UP_LIMIT,
                        "step {step}"
                    );
                    assert_same_summary(
                        &got.summary,
                        &summarize(store.mailbox_tallies(now).unwrap(), &cfg),
                    );
                }
            }
            assert_kept_groups_are_a_count(&store);
        }
        // Removing what a sync no longer lists.
        let listed: Vec<_> = ms.iter().step_by(3).cloned().collect();
        store
            .write(|tx| tx.remove_absent_mailboxes(&listed, &serde_json::json!({}), now))
            .unwrap();
        assert_kept_groups_are_a_count(&store);
        let got = store.cached_mailbox_summary(now, true, &cfg).unwrap();
        assert!(got.from_cache);
        assert_same_summary(
            &got.summary,
            &summarize(store.mailbox_tallies(now).unwrap(), &cfg),
        );
    }

    /// Tallies a write did not fold in are counted again: a write by a build that knows
    /// nothing of the queue (it starts a new generation and leaves its queued changes),
    /// a change whose date is not in the program's form, and kept tallies that were not
    /// the table's (a group would count below zero).
    #[test]
    fn kept_tallies_not_carried_are_counted_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("db")).unwrap();
        let cfg = crate::config::InventoryConfig::default();
        let now = test_now();
        let mut ms = varied_mailboxes(now);
        store.write(|tx| tx.upsert_mailboxes(&ms)).unwrap();
        let stats = |store: &mut Store| stats_kept(store, now, &cfg).from_cache;
        assert!(!stats(&mut store));
        assert!(stats(&mut store));
        // An older build's write, from another connection.
        let other = rusqlite::Connection::open(store.path()).unwrap();
        other
            .execute_batch(
                "BEGIN IMMEDIATE;
                 UPDATE inactive_mailboxes SET operating_company = 'Elsewhere' WHERE rowid <= 40;
                 UPDATE mailbox_tally_state SET generation = generation + 1;
                 COMMIT;",
            )
            .unwrap();
        assert!(!stats(&mut store), "an older build's write");
        assert_kept_groups_are_a_count(&store);
        ms[0].size_mb = Some(99.0);
        store.write(|tx| tx.upsert_mailbox(&ms[0])).unwrap();
        assert!(stats(&mut store), "carried again");
        assert_kept_groups_are_a_count(&store);
        // A date in the original tool's form, written in a transaction of the program.
        store
            .write(|tx| {
                tx.tx.execute(
                    "UPDATE inactive_mailboxes SET when_soft_deleted = '1/1/2024 12:00:00 AM'
                     WHERE rowid = 3",
                    [],
                )?;
                Ok::<_, StoreError>(())
            })
            .unwrap();
        assert!(!stats(&mut store), "a date not in the program's form");
        store.write(|tx| tx.upsert_mailboxes(&ms)).unwrap();
        assert!(!stats(&mut store), "counted again");
        assert!(stats(&mut store));
        // Kept tallies one short of the table: the deletion of the group's last mailboxes
        // would take it below zero.
        other
            .execute_batch(
                "UPDATE mailbox_tally_cache SET count = count - 1
                 WHERE rowid = (SELECT min(rowid) FROM mailbox_tally_cache)",
            )
            .unwrap();
        let (company, license): (Option<String>, Option<String>) = other
            .query_row(
                "SELECT company, license FROM mailbox_tally_cache
                 WHERE rowid = (SELECT min(rowid) FROM mailbox_tally_cache)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        store
            .write(|tx| {
                tx.tx.execute(
                    "DELETE FROM inactive_mailboxes
                     WHERE operating_company IS ?1 AND license_type IS ?2",
                    params![company, license],
                )?;
                Ok::<_, StoreError>(())
            })
            .unwrap();
        assert!(!stats(&mut store), "a group below zero");
        assert_kept_groups_are_a_count(&store);
        // A write that queues its changes without starting a new generation (outside
        // `Store::write`): `stats` counts, and its count empties the queue.
        other
            .execute_batch("UPDATE inactive_mailboxes SET license_type = 'Z1' WHERE rowid <= 5")
            .unwrap();
        assert!(!stats(&mut store), "changes queued, not folded");
        assert_kept_groups_are_a_count(&store);
        assert!(stats(&mut store));
        // Kept groups moved forward are not kept over changes queued meanwhile.
        let later = now + chrono::Duration::days(6);
        let moved = store
            .cached_mailbox_summary(later, true, &cfg)
            .unwrap()
            .keep
            .expect("moved groups to keep");
        other
            .execute_batch("UPDATE inactive_mailboxes SET license_type = 'Z2' WHERE rowid <= 5")
            .unwrap();
        assert!(!store.write(|tx| tx.keep_mailbox_tallies(&moved)).unwrap());
        // Nor are tallies counted before mailboxes changed in the same transaction.
        other
            .execute_batch("UPDATE mailbox_tally_state SET generation = generation + 1")
            .unwrap();
        let counted = store
            .cached_mailbox_summary(now, true, &cfg)
            .unwrap()
            .keep
            .expect("counted");
        ms[1].operating_company = Some("Later Ltd".into());
        let kept = store
            .write(|tx| {
                tx.upsert_mailbox(&ms[1])?;
                tx.keep_mailbox_tallies(&counted)
            })
            .unwrap();
        assert!(!kept, "counted before the change in its own transaction");
        assert!(!stats(&mut store));
        assert_kept_groups_are_a_count(&store);
    }

    /// Sizes added and taken away in floating point leave a remainder (0.1 + 0.2 - 0.1 -
    /// 0.2 is not 0): a kept group whose mailboxes have no known size left sums to 0, as a
    /// count gives.
    #[test]
    fn a_kept_group_left_with_no_known_size_sums_to_zero() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("db")).unwrap();
        let cfg = crate::config::InventoryConfig::default();
        let now = test_now();
        let ms: Vec<_> = [Some(0.1), Some(0.2), None]
            .into_iter()
            .enumerate()
            .map(|(i, size)| {
                let mut m = mailbox(i as u32);
                m.size_mb = size;
                m
            })
            .collect();
        store.write(|tx| tx.upsert_mailboxes(&ms)).unwrap();
        assert!(!stats_kept(&mut store, now, &cfg).from_cache);
        for m in &ms[..2] {
            assert!(store.write(|tx| tx.delete_mailbox(&m.identity)).unwrap());
        }
        let kept = store.kept_groups().unwrap();
        let sizes: Vec<_> = kept.0.values().map(|c| (c.count, c.size_mb)).collect();
        assert_eq!(sizes, [(1, 0.0)]);
        let got = store.cached_mailbox_summary(now, true, &cfg).unwrap();
        assert!(got.from_cache);
        assert_eq!(got.summary.size_mb, 0.0);
        assert_kept_groups_are_a_count(&store);
    }

    /// A sync that changes a few mailboxes carries the kept tallies; one that changes a
    /// quarter of the table or more (a first sync) sets them aside, and the next `stats`
    /// counts.
    #[test]
    fn syncs_carry_kept_tallies_unless_they_change_much_of_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("db")).unwrap();
        let cfg = crate::config::InventoryConfig::default();
        let now = test_now();
        let mut ms = varied_mailboxes(now);
        ms.truncate(400);
        let figures = serde_json::json!({});
        // A sync; with `count`, as the live sync does, counting the tallies afterwards
        // when none are kept. Returns whether it counted them.
        let sync = |store: &mut Store, ms: &[InactiveMailbox], count: bool| -> bool {
            store.stage_reset().unwrap();
            let staged: Vec<_> = ms
                .iter()
                .map(|m| crate::store::Staged {
                    mailbox: m,
                    when_changed: None,
                })
                .collect();
            store.stage_page(&staged).unwrap();
            let counted = store
                .write(|tx| {
                    let id = tx.record_sync(&crate::store::SyncRun {
                        source: "exchange",
                        started_at: now,
                        finished_at: now,
                        ok: true,
                        figures: &figures,
                        error: None,
                    })?;
                    tx.apply_snapshot(id, now)?;
                    if count {
                        tx.keep_tallies_counted_now(now, &cfg)
                    } else {
                        Ok(false)
                    }
                })
                .unwrap();
            store.stage_drop().unwrap();
            counted
        };
        let stats = |store: &mut Store| stats_kept(store, now, &cfg).from_cache;
        assert!(!stats(&mut store), "nothing kept yet");
        sync(&mut store, &ms, false);
        assert!(!stats(&mut store), "the first sync set them aside");
        assert!(stats(&mut store));
        // Ten of 400 leave, one holds changes, two move company: carried.
        ms.truncate(390);
        ms[0].hold_types = vec![HoldType::Litigation, HoldType::Delay];
        ms[1].operating_company = Some("Moved Ltd".into());
        ms[2].operating_company = None;
        sync(&mut store, &ms, false);
        assert_kept_groups_are_a_count(&store);
        assert!(stats(&mut store), "a few changes carried");
        // 200 new ones.
        ms.extend((9000..9200).map(mailbox));
        sync(&mut store, &ms, false);
        assert!(!stats(&mut store), "half the table new: counted");
        // As the live sync does it: counted in the sync's own write.
        ms.extend((9200..9600).map(mailbox));
        assert!(sync(&mut store, &ms, true), "none kept: counted");
        assert_kept_groups_are_a_count(&store);
        // With its summary, priced as `stats` prices it.
        let got = store.cached_mailbox_summary(now, true, &cfg).unwrap();
        assert!(got.from_kept_summary, "summed by the sync");
        assert_same_summary(
            &got.summary,
            &crate::inventory::summarize(store.mailbox_tallies(now).unwrap(), &cfg),
        );
        assert!(stats(&mut store), "counted by the sync");
        // Kept tallies that stand are not counted again.
        ms.truncate(ms.len() - 1);
        assert!(!sync(&mut store, &ms, true), "kept: not counted again");
        assert_kept_groups_are_a_count(&store);
        assert!(stats(&mut store), "carried");
        // Nor are they kept while a deletion date is not in the program's form: a merge
        // import leaves an unlisted row of the original tool's as it is.
        store
            .conn
            .execute_batch(
                "UPDATE inactive_mailboxes SET when_soft_deleted = 'yesterday' WHERE rowid = 2;
                 UPDATE mailbox_tally_state SET cached_generation = NULL;",
            )
            .unwrap();
        let listed = &ms[5..10];
        store.import_begin().unwrap();
        store.import_stage(listed).unwrap();
        let counted = store
            .write(|tx| {
                tx.import_apply(listed.len())?;
                tx.keep_tallies_counted_now(now, &cfg)
            })
            .unwrap();
        store.import_end().unwrap();
        assert!(!counted, "an odd date: nothing kept");
        assert!(!stats(&mut store));
    }

    /// Search through the index finds what a scan finds, for texts of every length and
    /// with the index's own syntax in them, after every kind of write: new rows, renames
    /// row by row, a bulk load, deletions and a clear.
    #[test]
    fn search_finds_what_a_scan_finds() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("db")).unwrap();
        let names = [
            "Ada Lovelace",
            "ÄRGER Ölmann",
            "Straße Groß",
            "say \"AND\" OR NOT (x*) ^y",
            "İstanbul İnci",
            "日本語の名前",
            "grace hopper",
            "Grace Hopper Jr",
            "aaaa",
            "",
        ];
        let build = |i: u32, name: &str| {
            let mut m = mailbox(i);
            m.display_name = (!name.is_empty()).then(|| name.to_string());
            m
        };
        let mut all: Vec<InactiveMailbox> = (0..300)
            .map(|i| build(i, names[i as usize % names.len()]))
            .collect();
        store
            .write(|tx| tx.upsert_mailboxes_with(&all, 1000))
            .unwrap();
        let queries = [
            "a",
            "ad",
            "ada",
            "ada lovelace",
            "LOVE",
            "ärger",
            "ÄRG",
            "straße",
            "groß",
            "\"and\"",
            "\" or",
            "(x*)",
            "^y",
            "i̇stanbul",
            "istanbul",
            "日本",
            "日本語",
            "grace hopper",
            "hopper jr",
            "final grace",
            "zwischen",
            "user 9000",
            "aaa",
            "aaaa",
            "aaaaa",
            "user1",
            "@contoso",
            "user12@contoso.com",
            "nothing here",
            "\"",
            "\"\"\"",
            "renamed person 1",
            "moved14@",
            "@fabrikam.com",
        ];
        let check = |store: &Store, all: &[InactiveMailbox], when: &str| {
            for q in queries {
                let folded = q.to_lowercase();
                let mut want: Vec<&str> = all
                    .iter()
                    .filter(|m| {
                        m.display_name
                            .as_deref()
                            .is_some_and(|n| n.to_lowercase().contains(&folded))
                            || m.primary_smtp
                                .as_deref()
                                .is_some_and(|s| s.contains(&folded))
                    })
                    .map(|m| m.identity.as_str())
                    .collect();
                want.sort();
                let filter = MailboxFilter {
                    text: Some(q.to_string()),
                    ..MailboxFilter::default()
                };
                let found = store.mailboxes(&filter).unwrap();
                let mut got: Vec<&str> = found.iter().map(|m| m.identity.as_str()).collect();
                got.sort();
                assert_eq!(got, want, "{when}: {q:?}");
            }
        };
        check(&store, &all, "inserted row by row");
        // Renames and address changes, row by row.
        for i in (0..300).step_by(7) {
            let m = &mut all[i];
            m.display_name = Some(format!("Renamed Person {i}"));
            m.primary_smtp = Some(format!("moved{i}@fabrikam.com"));
            store.write(|tx| tx.upsert_mailbox(m)).unwrap();
        }
        check(&store, &all, "renamed");
        // A bulk load over the table drops and rebuilds the index.
        for (i, m) in all.iter_mut().enumerate().skip(1).step_by(3) {
            m.display_name = Some(names[(i + 3) % names.len()].to_string());
        }
        store
            .write(|tx| tx.upsert_mailboxes_with(&all, 10))
            .unwrap();
        check(&store, &all, "bulk loaded");
        let gone: Vec<String> = all.drain(100..150).map(|m| m.identity).collect();
        store
            .write(|tx| {
                for id in &gone {
                    assert!(tx.delete_mailbox(id)?);
                }
                Ok::<_, StoreError>(())
            })
            .unwrap();
        check(&store, &all, "deleted");
        // Many changes to the same rows in one transaction, queued and applied in order
        // at its commit: a new row renamed twice, a row deleted and added again (the
        // newest rowid, which SQLite gives out again), a row added and deleted.
        let mut fresh = mailbox(90_001);
        let last = all.pop().unwrap();
        let brief = mailbox(90_002);
        store
            .write(|tx| {
                tx.upsert_mailbox(&fresh)?;
                fresh.display_name = Some("Zwischen Name".into());
                tx.upsert_mailbox(&fresh)?;
                fresh.display_name = Some("Final Grace".into());
                fresh.primary_smtp = Some("final.grace@contoso.com".into());
                tx.upsert_mailbox(&fresh)?;
                assert!(tx.delete_mailbox(&last.identity)?);
                tx.upsert_mailbox(&brief)?;
                assert!(tx.delete_mailbox(&brief.identity)?);
                Ok::<_, StoreError>(())
            })
            .unwrap();
        all.push(fresh);
        check(&store, &all, "churned in one transaction");
        store.write(|tx| tx.upsert_mailbox(&last)).unwrap();
        all.push(last);
        check(&store, &all, "added again");
        let queued: i64 = store
            .conn
            .query_row("SELECT count(*) FROM mailbox_search_pending", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(queued, 0, "nothing stays queued after a commit");
        // The index agrees with the rows it was built from (rank 1: compared with them).
        store
            .conn
            .execute(
                "INSERT INTO mailbox_search (mailbox_search, rank) VALUES ('integrity-check', 1)",
                [],
            )
            .unwrap();
        store.write(|tx| tx.clear_mailboxes()).unwrap();
        all.clear();
        check(&store, &all, "cleared");
        let plan: String = store
            .conn
            .query_row(
                "EXPLAIN QUERY PLAN SELECT rowid FROM mailbox_search WHERE mailbox_search MATCH 'x'",
                [],
                |r| r.get(3),
            )
            .unwrap();
        assert!(plan.contains("VIRTUAL TABLE INDEX"), "{plan}");
    }

    #[test]
    fn trigram_queries_quote_every_run() {
        assert_eq!(trigram_query("ab"), None);
        assert_eq!(trigram_query("ärg").as_deref(), Some("\"ärg\""));
        assert_eq!(
            trigram_query("a\"bc").as_deref(),
            Some("\"a\"\"b\" AND \"\"\"bc\"")
        );
    }

    /// What status counts agrees with one pass of sums over the table, and reads indexes
    /// only: no plan step reads the table's rows.
    #[test]
    fn status_counts_read_indexes_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("db")).unwrap();
        let ms: Vec<_> = (0..600).map(mailbox).collect();
        store.write(|tx| tx.upsert_mailboxes(&ms)).unwrap();
        store
            .conn
            .execute_batch(
                "UPDATE inactive_mailboxes SET stats_at = '2025-01-0' || (rowid % 9 + 1) || 'T00:00:00.000Z'
                  WHERE rowid % 4 != 0;
                 UPDATE inactive_mailboxes SET stats_stale = 1 WHERE rowid % 5 = 0;
                 UPDATE inactive_mailboxes SET size_bytes = NULL WHERE rowid % 6 = 0;",
            )
            .unwrap();
        for day in 1..=10 {
            let cutoff = Utc.with_ymd_and_hms(2025, 1, day, 0, 0, 0).unwrap();
            let due = store.statistics_due_count(cutoff).unwrap();
            let want: (i64, i64, i64) = store
                .conn
                .query_row(
                    "SELECT sum(stats_at IS NULL),
                            sum(stats_at IS NOT NULL AND (stats_stale = 1 OR stats_at < ?1)),
                            sum(size_bytes IS NULL)
                     FROM inactive_mailboxes",
                    [stamp_millis(cutoff)],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .unwrap();
            assert_eq!(
                (
                    due.unknown as i64,
                    due.stale as i64,
                    due.size_unknown as i64
                ),
                want,
                "{cutoff}"
            );
        }
        let stats = store.mailbox_stats().unwrap();
        assert_eq!(stats.count, 600);
        assert!(stats.oldest_update.is_some() && stats.newest_update.is_some());
        for sql in [
            "SELECT count(*) FROM inactive_mailboxes",
            "SELECT min(last_updated) FROM inactive_mailboxes",
            "SELECT max(last_updated) FROM inactive_mailboxes",
            "SELECT count(*) FROM inactive_mailboxes WHERE stats_at IS NULL",
            "SELECT count(*) FROM inactive_mailboxes WHERE stats_at < 'x'",
            "SELECT count(*) FROM inactive_mailboxes WHERE stats_stale = 1 AND stats_at >= 'x'",
            "SELECT count(*) FROM inactive_mailboxes WHERE size_bytes IS NULL",
        ] {
            let plan: Vec<String> = store
                .conn
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .unwrap()
                .query_map([], |r| r.get(3))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            assert!(
                plan.iter().all(|step| step.contains("INDEX")),
                "{sql}: {plan:?}"
            );
        }
    }

    #[test]
    fn millisecond_stamps_are_recognised() {
        assert!(is_stamp_millis("2025-01-02T03:04:05.678Z"));
        for other in [
            "2025-01-02T03:04:05Z",
            "2025-01-02 03:04:05.678Z",
            "2025-01-02T03:04:05.678+00:00",
            "1/1/2024 12:00:00 AM",
            "2025-01-02T03:04:05.6789",
            "",
        ] {
            assert!(!is_stamp_millis(other), "{other}");
        }
    }

    #[test]
    fn search_key_folds_case() {
        let mut k = String::new();
        search_key(&mut k, Some("Ann ARCHER"));
        assert_eq!(k, "ann archer");
        search_key(&mut k, Some("ÄRGER Ölmann"));
        assert_eq!(k, "ärger ölmann");
        search_key(&mut k, None);
        assert_eq!(k, "");
    }
}
