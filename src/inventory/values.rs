//! PowerShell's values as exports and Exchange's REST answers carry them: dates in their
//! several forms, sizes and counts (bounded by what the cache stores), booleans, text and
//! multi-valued lists; each refused value is reported with its field's name.

use std::borrow::Cow;

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use serde_json::Value;

/// A field that could not be read, named for the error message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("field {field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

pub(super) fn field_err(field: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.to_string(),
        message: message.into(),
    }
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

pub(super) fn as_text(v: &Value) -> Option<Cow<'_, str>> {
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

pub(super) fn parse_bool(field: &str, v: &Value) -> Result<bool, FieldError> {
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
pub(super) fn parse_string_list(field: &str, v: &Value) -> Result<Vec<String>, FieldError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::tests::dt;
    use serde_json::json;

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
    }
}
