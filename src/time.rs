//! The text forms of times the program writes and reads back: every stored, compared or
//! shown timestamp is made here, so each format is written once.
//!
//! All are RFC 3339 in UTC with a `Z`; they differ only in the fraction of a second, and
//! stored strings are compared as text, so the forms are kept apart on purpose:
//!
//! - [`stamp`]: whole seconds, with `.mmm` only when there are milliseconds. The common
//!   form: command output, JSON, the daemon's state file, sync and job records.
//! - [`stamp_millis`]: always `.mmm`, fixed width, so text order is time order: the mail
//!   queue's due times, the mailbox cache's dates, the sync's change history.
//! - [`stamp_micros`]: always `.mmmmmm`: audit rows, whose order and pruning cutoff are
//!   compared as text.
//! - [`stamp_secs`]: whole seconds, the fraction dropped: notification hooks.
//!
//! [`parse`] reads any of them back.

use chrono::{DateTime, SecondsFormat, Utc};

/// A UTC time as RFC 3339 (`2023-07-22T04:26:40Z`, with `.mmm` when there are
/// milliseconds). Times outside the years 0 to 9999 are clamped to them.
///
/// The common form: command output and JSON, the daemon's state and cycle records, the
/// sync's and the scheduled jobs' records, sign-in and audit-head records.
pub fn stamp(t: DateTime<Utc>) -> String {
    let mut s = String::with_capacity(24);
    push(&mut s, t, false);
    s
}

/// A UTC time as RFC 3339 always with milliseconds (`2026-11-21T10:00:05.000Z`), so that
/// text order is time order (`…:05Z` would sort after `…:05.123Z`). Times outside the
/// years 0 to 9999 are clamped to them.
///
/// Differs from [`stamp`] because these strings are compared as text in SQL: the mail
/// queue's times (due, sent, purge cutoffs), the mailbox cache's dates (soft deletion,
/// last update, WhenChangedUTC) and the sync's change history and its cutoffs.
pub fn stamp_millis(t: DateTime<Utc>) -> String {
    let mut s = String::with_capacity(24);
    push_stamp_millis(&mut s, t);
    s
}

/// Appends `t` as [`stamp_millis`] writes it, for bulk writes that reuse one buffer.
pub fn push_stamp_millis(s: &mut String, t: DateTime<Utc>) {
    push(s, t, true);
}

/// A UTC time as RFC 3339 always with microseconds (`2026-11-21T10:00:05.123456Z`),
/// written by chrono.
///
/// Differs from the others because audit rows keep their order and their pruning cutoff
/// as text in this form, and every audit row ever sealed into the hash chain carries it.
pub fn stamp_micros(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// A UTC time as RFC 3339 in whole seconds (`2026-11-21T10:15:00Z`), any fraction
/// dropped, written by chrono.
///
/// Differs from [`stamp`] (which keeps milliseconds) for the notification hooks' `at` and
/// `expires_at`, which the programs and services receiving them read (and the sandbox's
/// console, which shows those events).
pub fn stamp_secs(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Reads a time the program wrote (or any RFC 3339 time), as UTC.
pub fn parse(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The proleptic Gregorian (year, month, day) of a count of days since 1970-01-01
/// (Howard Hinnant's `civil_from_days`).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month as u32, day as u32)
}

/// Appends `t` as `YYYY-MM-DDTHH:MM:SS[.mmm]Z`, the milliseconds always when
/// `always_millis` (fixed width, so text order is time order) or else when not zero.
/// Times outside the years 0 to 9999 (which no parsed date has) are clamped to them.
/// The calendar date comes from Howard Hinnant's `civil_from_days` and the digits are
/// written into a fixed buffer: chrono's formatting and `write!` were a third of
/// `mailboxes list --format json` and a visible share of bulk upserts.
fn push(s: &mut String, t: DateTime<Utc>, always_millis: bool) {
    /// 0000-01-01T00:00:00Z and 9999-12-31T23:59:59Z.
    const FIRST: i64 = -62_167_219_200;
    const LAST: i64 = 253_402_300_799;
    /// Two digits of `v` (below 100).
    fn pair(b: &mut [u8], v: u32) {
        b[0] = b'0' + (v / 10) as u8;
        b[1] = b'0' + (v % 10) as u8;
    }
    let secs = t.timestamp().clamp(FIRST, LAST);
    let ms = t.timestamp_subsec_millis().min(999);
    let (days, time) = (secs.div_euclid(86_400), secs.rem_euclid(86_400) as u32);
    let (year, month, day) = civil_from_days(days);
    let mut b = *b"0000-00-00T00:00:00.000Z";
    let year = year as u32;
    pair(&mut b[0..2], year / 100);
    pair(&mut b[2..4], year % 100);
    pair(&mut b[5..7], month);
    pair(&mut b[8..10], day);
    pair(&mut b[11..13], time / 3600);
    pair(&mut b[14..16], time / 60 % 60);
    pair(&mut b[17..19], time % 60);
    let len = if always_millis || ms != 0 {
        b[20] = b'0' + (ms / 100) as u8;
        pair(&mut b[21..23], ms % 100);
        24
    } else {
        b[19] = b'Z';
        20
    };
    s.push_str(std::str::from_utf8(&b[..len]).expect("the buffer is ASCII"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dt(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn rfc3339_output() {
        assert_eq!(stamp(dt("2023-07-22T04:26:40Z")), "2023-07-22T04:26:40Z");
        assert_eq!(
            stamp(dt("2023-07-22T04:26:40.120Z")),
            "2023-07-22T04:26:40.120Z"
        );
        assert_eq!(
            serde_json::to_value(dt("0001-01-01T00:00:00Z").to_rfc3339()).unwrap(),
            json!("0001-01-01T00:00:00+00:00")
        );
        assert_eq!(stamp(dt("0001-01-01T00:00:00Z")), "0001-01-01T00:00:00Z");
    }

    #[test]
    fn rfc3339_agrees_with_chrono_over_the_years() {
        use chrono::TimeZone;
        // Every 45 days and a bit from year 0 to 9999: every month, leap days,
        // century years, both sides of the epoch.
        let first = -62_167_219_200_000_i64;
        let last = 253_402_300_799_999_i64;
        let mut ms = first;
        let mut checked = 0;
        while ms <= last {
            let t = Utc.timestamp_millis_opt(ms).unwrap();
            let mut s = String::new();
            push_stamp_millis(&mut s, t);
            assert_eq!(s, t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(), "{ms}");
            ms += 3_919_123_457;
            checked += 1;
        }
        assert!(checked > 70_000);
        for t in [
            "0000-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999Z",
            "2000-02-29T12:00:00Z",
        ] {
            assert_eq!(stamp(dt(t)), t);
        }
        // Outside the supported years the time is clamped.
        let past = Utc.with_ymd_and_hms(-5, 3, 1, 0, 0, 0).unwrap();
        assert_eq!(stamp(past), "0000-01-01T00:00:00Z");
        let future = Utc.with_ymd_and_hms(12_000, 1, 1, 0, 0, 0).unwrap();
        assert_eq!(stamp(future), "9999-12-31T23:59:59Z");
    }

    #[test]
    fn stored_dates_are_fixed_width_and_ordered() {
        use chrono::TimeZone;
        for (t, want) in [
            (
                Utc.timestamp_millis_opt(1_690_000_000_123).unwrap(),
                "2023-07-22T04:26:40.123Z",
            ),
            (
                Utc.with_ymd_and_hms(1, 1, 1, 0, 0, 0).unwrap(),
                "0001-01-01T00:00:00.000Z",
            ),
            (
                Utc.with_ymd_and_hms(2026, 12, 31, 23, 59, 59).unwrap(),
                "2026-12-31T23:59:59.000Z",
            ),
        ] {
            assert_eq!(stamp_millis(t), want);
            assert_eq!(
                stamp_millis(t),
                t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
            );
        }
    }

    #[test]
    fn each_form_keeps_its_fraction() {
        let t = dt("2026-11-21T10:00:05.123456789Z");
        assert_eq!(stamp(t), "2026-11-21T10:00:05.123Z");
        assert_eq!(stamp_millis(t), "2026-11-21T10:00:05.123Z");
        assert_eq!(stamp_micros(t), "2026-11-21T10:00:05.123456Z");
        assert_eq!(stamp_secs(t), "2026-11-21T10:00:05Z");
        let whole = dt("2026-11-21T10:00:05Z");
        assert_eq!(stamp(whole), "2026-11-21T10:00:05Z");
        assert_eq!(stamp_millis(whole), "2026-11-21T10:00:05.000Z");
        assert_eq!(stamp_micros(whole), "2026-11-21T10:00:05.000000Z");
        assert_eq!(stamp_secs(whole), "2026-11-21T10:00:05Z");
        for s in [stamp(t), stamp_millis(t), stamp_micros(t), stamp_secs(t)] {
            assert_eq!(parse(&s).unwrap().timestamp(), t.timestamp(), "{s}");
        }
    }
}
