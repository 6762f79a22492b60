//! The configuration's value types: each checks its value while it is deserialized, so a
//! bad one is reported with its place in the file. Bounded numbers and durations, prices,
//! names and identifiers (GUIDs, tenants, domains, attribute names, OAuth scopes),
//! endpoint URLs and clouds, file paths, command lines, mailboxes and the address checks
//! behind them, schedules (cron expressions) and their time zone, and the small enums
//! the sections choose from. The sections that hold them are in [`crate::config`], which
//! re-exports every one; the scheduler plans its jobs with [`When`] and [`Zone`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use chrono::{DateTime, TimeZone, Timelike, Utc};
use serde::{Deserialize, Deserializer, Serialize};

use super::zone::NamedZone;

/// Where the mailbox sync reads the tenant's inactive mailboxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncSource {
    /// Exchange Online's admin REST endpoint, with the sign-in's Exchange token.
    Exchange,
    /// A PowerShell export that a scheduled task keeps current (`[sync] export`).
    Export,
}

impl SyncSource {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncSource::Exchange => "exchange",
            SyncSource::Export => "export",
        }
    }
}

/// Where tokens are kept.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TokenStore {
    /// The OS keychain when it answers, else the encrypted file.
    #[default]
    Auto,
    /// The OS keychain only.
    Keychain,
    /// The AES-256-GCM encrypted file only.
    File,
}

impl TokenStore {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenStore::Auto => "auto",
            TokenStore::Keychain => "keychain",
            TokenStore::File => "file",
        }
    }
}

/// A command line as an argv list: a program and its arguments, never run through a shell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<String>", into = "Vec<String>")]
pub struct Command(Vec<String>);

impl Command {
    pub fn program(&self) -> &str {
        &self.0[0]
    }
    pub fn args(&self) -> &[String] {
        &self.0[1..]
    }
}

impl TryFrom<Vec<String>> for Command {
    type Error = String;
    fn try_from(v: Vec<String>) -> Result<Self, String> {
        match v.first() {
            None => Err("expected a program and its arguments, such as [\"/usr/local/bin/page\", \"--urgent\"]; found an empty list".into()),
            Some(p) if p.trim().is_empty() => Err("the program name is empty".into()),
            Some(_) => Ok(Command(v)),
        }
    }
}

impl From<Command> for Vec<String> {
    fn from(c: Command) -> Vec<String> {
        c.0
    }
}

/// An OAuth scope: printable ASCII without spaces or quotes (RFC 6749 section 3.3).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Scope(pub(super) String);

impl Scope {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Scope {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.bytes()
                .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b));
        if ok {
            Ok(Scope(s))
        } else {
            Err(format!(
                "`{s}` is not an OAuth scope (printable characters, no spaces, quotes or backslashes)"
            ))
        }
    }
}

impl From<Scope> for String {
    fn from(s: Scope) -> String {
        s.0
    }
}

/// An absolute file path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbsolutePath(PathBuf);

impl AbsolutePath {
    pub fn as_path(&self) -> &Path {
        &self.0
    }
}

impl Serialize for AbsolutePath {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0.display())
    }
}

impl<'de> Deserialize<'de> for AbsolutePath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text =
            String::deserialize(d).map_err(|_| serde::de::Error::custom("expected a file path"))?;
        let p = PathBuf::from(&text);
        if !p.is_absolute() {
            return Err(serde::de::Error::custom(format!(
                "`{text}` is not an absolute path; the daemon does not run in your working folder, so write the whole path"
            )));
        }
        Ok(AbsolutePath(p))
    }
}

/// A mailbox to send from: an address or an object id (GUID).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Mailbox(String);

impl Mailbox {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Mailbox {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        check_sender(&text)
            .map(Mailbox)
            .map_err(serde::de::Error::custom)
    }
}

/// Checks an e-mail address: a local part and a domain, nothing else (no display name).
/// The address comes back trimmed, its domain lower-cased.
pub fn check_address(text: &str) -> Result<String, String> {
    let a = text.trim();
    let bad = || format!("`{text}` is not an e-mail address");
    let (local, domain) = a.rsplit_once('@').ok_or_else(bad)?;
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local.bytes().all(|b| {
            b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~.".contains(&b) || b >= 0x80
        });
    if !local_ok || a.len() > 254 {
        return Err(bad());
    }
    let domain = check_domain(domain).map_err(|_| bad())?;
    Ok(format!("{local}@{domain}"))
}

/// Checks a sending mailbox: an address (user principal name) or an object id (GUID),
/// as Graph's `/users/{id}` takes them.
pub fn check_sender(text: &str) -> Result<String, String> {
    check_address(text).or_else(|_| {
        uuid::Uuid::try_parse(text.trim())
            .map(|u| u.hyphenated().to_string())
            .map_err(|_| {
                format!("`{text}` is not a sender: give a mailbox address or an object id (GUID)")
            })
    })
}

/// A whole number between `MIN` and `MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounded<const MIN: u32, const MAX: u32>(pub(super) u32);

impl<const MIN: u32, const MAX: u32> Bounded<MIN, MAX> {
    pub fn get(self) -> u32 {
        self.0
    }

    /// Checks `n` against the bounds.
    pub fn new(n: u32) -> Result<Self, String> {
        if !(MIN..=MAX).contains(&n) {
            return Err(format!(
                "{n} is out of range: it must be between {MIN} and {MAX}"
            ));
        }
        Ok(Bounded(n))
    }
}

impl<const MIN: u32, const MAX: u32> Serialize for Bounded<MIN, MAX> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.0)
    }
}

impl<'de, const MIN: u32, const MAX: u32> Deserialize<'de> for Bounded<MIN, MAX> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n =
            i64::deserialize(d).map_err(|_| serde::de::Error::custom("expected a whole number"))?;
        u32::try_from(n)
            .map_err(|_| format!("{n} is out of range: it must be between {MIN} and {MAX}"))
            .and_then(Self::new)
            .map_err(serde::de::Error::custom)
    }
}

/// A duration between `MIN` and `MAX` seconds, written as text such as `"5m"` or `"90s"`
/// (humantime's syntax) or as a number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoundedDuration<const MIN: u64, const MAX: u64>(pub(super) std::time::Duration);

impl<const MIN: u64, const MAX: u64> BoundedDuration<MIN, MAX> {
    /// The duration.
    pub fn get(self) -> std::time::Duration {
        self.0
    }

    /// Checks `d` against the bounds.
    pub fn new(d: std::time::Duration) -> Result<Self, String> {
        let (min, max) = (
            std::time::Duration::from_secs(MIN),
            std::time::Duration::from_secs(MAX),
        );
        if d < min || d > max {
            return Err(format!(
                "{} is out of range: it must be between {} and {}",
                humantime::format_duration(d),
                humantime::format_duration(min),
                humantime::format_duration(max)
            ));
        }
        Ok(BoundedDuration(d))
    }
}

impl<const MIN: u64, const MAX: u64> fmt::Display for BoundedDuration<MIN, MAX> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl<const MIN: u64, const MAX: u64> Serialize for BoundedDuration<MIN, MAX> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de, const MIN: u64, const MAX: u64> Deserialize<'de> for BoundedDuration<MIN, MAX> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Seconds(u64),
            Text(String),
        }
        let d = match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom("expected a duration such as \"5m\" or a number of seconds")
        })? {
            Raw::Seconds(s) => std::time::Duration::from_secs(s),
            Raw::Text(t) => humantime::parse_duration(t.trim()).map_err(|e| {
                serde::de::Error::custom(format!(
                    "`{t}` is not a duration ({e}); write it like \"5m\", \"90s\" or \"1h 30m\""
                ))
            })?,
        };
        Self::new(d).map_err(serde::de::Error::custom)
    }
}

/// The longest licence or company name taken: one is stored with every mailbox.
pub const MAX_NAME_CHARS: usize = 256;

fn check_name<E: serde::de::Error>(name: &str) -> Result<(), E> {
    let length = name.chars().count();
    if length > MAX_NAME_CHARS {
        return Err(E::custom(format!(
            "{} is {length} characters long; a licence or company name has at most {MAX_NAME_CHARS}",
            crate::text::quote(name)
        )));
    }
    Ok(())
}

pub(super) fn opt_name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let name = Option::<String>::deserialize(d)?;
    name.as_deref().map(check_name).transpose()?;
    Ok(name)
}

pub(super) fn name_map<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    let map = BTreeMap::<String, String>::deserialize(d)?;
    for (k, v) in &map {
        check_name(k)?;
        check_name(v)?;
    }
    Ok(map)
}

pub(super) fn name_keys<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, Price>, D::Error> {
    let map = BTreeMap::<String, Price>::deserialize(d)?;
    map.keys().try_for_each(|k| check_name(k))?;
    Ok(map)
}

pub(super) fn name_values<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<Domain, String>, D::Error> {
    let map = BTreeMap::<Domain, String>::deserialize(d)?;
    map.values().try_for_each(|v| check_name(v))?;
    Ok(map)
}

/// The Microsoft cloud a tenant belongs to.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Cloud {
    #[default]
    Global,
    Usgov,
    China,
}

impl Cloud {
    pub fn login_host(self) -> &'static str {
        match self {
            Cloud::Global => "https://login.microsoftonline.com",
            Cloud::Usgov => "https://login.microsoftonline.us",
            Cloud::China => "https://login.chinacloudapi.cn",
        }
    }
    pub fn graph_host(self) -> &'static str {
        match self {
            Cloud::Global => "https://graph.microsoft.com",
            Cloud::Usgov => "https://graph.microsoft.us",
            Cloud::China => "https://microsoftgraph.chinacloudapi.cn",
        }
    }
    pub fn exchange_host(self) -> &'static str {
        match self {
            Cloud::Global => "https://outlook.office365.com",
            Cloud::Usgov => "https://outlook.office365.us",
            Cloud::China => "https://partner.outlook.cn",
        }
    }
}

macro_rules! string_newtype {
    ($(#[$m:meta])* $name:ident, $check:path) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(pub(super) String);

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                $check(&s).map($name)
            }
        }
        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }
        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

string_newtype!(
    /// A GUID in its canonical 8-4-4-4-12 form, lower-cased.
    Guid,
    check_guid
);
string_newtype!(
    /// A tenant: a GUID or a DNS domain such as `contoso.onmicrosoft.com`.
    Tenant,
    check_tenant
);
string_newtype!(
    /// A DNS domain name, lower-cased.
    Domain,
    check_domain
);
string_newtype!(
    /// A mailbox attribute name such as `CustomAttribute1`.
    AttributeName,
    check_attribute
);

fn check_guid(s: &str) -> Result<String, String> {
    let hyphenated = s.len() == 36 && s.as_bytes().iter().filter(|b| **b == b'-').count() == 4;
    match uuid::Uuid::try_parse(s) {
        Ok(u) if hyphenated => Ok(u.hyphenated().to_string()),
        _ => Err(format!(
            "expected a GUID such as 00000000-0000-0000-0000-000000000000, found `{s}`"
        )),
    }
}

fn check_tenant(s: &str) -> Result<String, String> {
    check_guid(s).or_else(|_| {
        check_domain(s).map_err(|_| {
            format!(
                "expected a tenant GUID or a domain such as contoso.onmicrosoft.com, found `{s}`"
            )
        })
    })
}

/// Checks a DNS name: two or more labels of letters, digits and inner hyphens.
pub fn check_domain(s: &str) -> Result<String, String> {
    let lower = s.trim().to_ascii_lowercase();
    let labels: Vec<&str> = lower.split('.').collect();
    let ok = lower.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(lower)
    } else {
        Err(format!(
            "expected a domain such as contoso.com, found `{s}`"
        ))
    }
}

fn check_attribute(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "expected a mailbox attribute name such as CustomAttribute1, found `{s}`"
        ))
    }
}

/// An endpoint URL: https, or http to a loopback address (for the emulated endpoints).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EndpointUrl(pub(super) url::Url);

impl EndpointUrl {
    pub fn as_url(&self) -> &url::Url {
        &self.0
    }
}

impl TryFrom<String> for EndpointUrl {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let url = url::Url::parse(&s).map_err(|e| format!("expected a URL, found `{s}`: {e}"))?;
        match url.scheme() {
            "https" => {}
            "http" if is_loopback(&url) => {}
            "http" => {
                return Err(format!(
                    "`{s}` uses http; only https is allowed, except for loopback addresses (127.0.0.0/8, ::1)"
                ));
            }
            other => return Err(format!("`{s}` has scheme `{other}`; expected https")),
        }
        if url.host().is_none() {
            return Err(format!("`{s}` has no host"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(format!("`{s}` must not carry a query or fragment"));
        }
        Ok(EndpointUrl(url))
    }
}

impl From<EndpointUrl> for String {
    fn from(v: EndpointUrl) -> String {
        v.0.into()
    }
}

fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        _ => false,
    }
}

/// A monthly price: finite and not negative.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct Price(f64);

impl Price {
    pub fn value(self) -> f64 {
        self.0
    }
}

impl TryFrom<f64> for Price {
    type Error = String;
    fn try_from(v: f64) -> Result<Self, String> {
        if v.is_finite() && v >= 0.0 {
            Ok(Price(v))
        } else {
            Err(format!("expected a price of 0 or more, found {v}"))
        }
    }
}

impl From<Price> for f64 {
    fn from(p: Price) -> f64 {
        p.0
    }
}

/// A schedule: a cron expression, or `never`.
#[derive(Clone)]
pub enum When {
    Never,
    Cron {
        text: String,
        cron: Box<croner::Cron>,
    },
}

impl When {
    /// Parses a cron expression (five fields, or six with seconds first) or `never`.
    pub fn parse(text: &str) -> Result<When, String> {
        let t = text.trim();
        if t.eq_ignore_ascii_case("never") {
            return Ok(When::Never);
        }
        let cron = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Optional)
            .year(croner::parser::Year::Disallowed)
            .build()
            .parse(t)
            .map_err(|e| {
                format!(
                    "`{t}` is not a cron expression ({e}); write five fields (minute hour \
                     day month weekday) such as \"30 3 * * *\", or \"never\""
                )
            })?;
        // A pattern that matches no date (30 February) would leave its job never due.
        if cron.find_next_occurrence(&Utc::now(), false).is_err() {
            return Err(format!("the cron expression `{t}` matches no date"));
        }
        Ok(When::Cron {
            text: t.to_string(),
            cron: Box::new(cron),
        })
    }

    pub fn as_str(&self) -> &str {
        match self {
            When::Never => "never",
            When::Cron { text, .. } => text,
        }
    }

    /// The first time strictly after `t` that the schedule names, in `zone`.
    ///
    /// In the hour a fall-back repeats, croner reads local times with the earlier
    /// offset, so from the hour's second pass it can answer with a time already gone; the
    /// search then moves on from that answer until it passes `t` (at most an hour of
    /// matches), so no time at or before `t` is ever returned.
    pub fn next_after(&self, zone: &Zone, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let When::Cron { cron, .. } = self else {
            return None;
        };
        fn next<Tz: TimeZone>(cron: &croner::Cron, t: DateTime<Tz>) -> Option<DateTime<Utc>> {
            cron.find_next_occurrence(&t, false)
                .ok()
                .map(|n| n.with_timezone(&Utc))
        }
        // Schedules name whole seconds.
        let t = t.with_nanosecond(0).unwrap_or(t);
        let mut from = t;
        for _ in 0..=3_600 {
            let n = match zone {
                Zone::Local => next(cron, from.with_timezone(&chrono::Local)),
                Zone::Named(tz) => next(cron, from.with_timezone(tz)),
            }?;
            if n > t {
                return Some(n);
            }
            from = from.max(n) + chrono::Duration::seconds(1);
        }
        None
    }
}

impl PartialEq for When {
    fn eq(&self, other: &When) -> bool {
        self.as_str() == other.as_str()
    }
}

impl fmt::Debug for When {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "When({:?})", self.as_str())
    }
}

impl fmt::Display for When {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for When {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for When {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d).map_err(|_| {
            serde::de::Error::custom("expected a cron expression such as \"30 3 * * *\"")
        })?;
        When::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// The time zone schedules follow: the system's, or a named IANA zone.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Zone {
    #[default]
    Local,
    /// Read from the system's time zone database (see [`super::zone`]).
    Named(NamedZone),
}

impl Zone {
    /// The calendar date at `t` in this zone.
    pub fn date_of(&self, t: DateTime<Utc>) -> chrono::NaiveDate {
        match self {
            Zone::Local => t.with_timezone(&chrono::Local).date_naive(),
            Zone::Named(tz) => t.with_timezone(tz).date_naive(),
        }
    }

    /// The first instant of `date` in this zone: its midnight, or the first local time
    /// after a daylight-saving gap that swallowed midnight.
    pub fn start_of_day(&self, date: chrono::NaiveDate) -> DateTime<Utc> {
        fn first<Tz: TimeZone>(tz: &Tz, midnight: chrono::NaiveDateTime) -> DateTime<Utc> {
            (0..=16)
                .map(|q| midnight + chrono::Duration::minutes(15 * q))
                .find_map(|local| tz.from_local_datetime(&local).earliest())
                .map_or_else(|| midnight.and_utc(), |t| t.with_timezone(&Utc))
        }
        let midnight = date.and_hms_opt(0, 0, 0).expect("midnight exists");
        match self {
            Zone::Local => first(&chrono::Local, midnight),
            Zone::Named(tz) => first(tz, midnight),
        }
    }

    pub fn parse(text: &str) -> Result<Zone, String> {
        let t = text.trim();
        if t.eq_ignore_ascii_case("local") {
            return Ok(Zone::Local);
        }
        NamedZone::load(t).map(Zone::Named)
    }
}

impl fmt::Display for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Zone::Local => f.write_str("local"),
            Zone::Named(tz) => f.write_str(tz.name()),
        }
    }
}

impl Serialize for Zone {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Zone {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)
            .map_err(|_| serde::de::Error::custom("expected a time zone name"))?;
        Zone::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        crate::time::parse(s).unwrap()
    }

    #[test]
    fn cron_expressions_with_and_without_seconds_and_never() {
        let utc = Zone::parse("UTC").expect("the system's time zone database has UTC");
        let w = When::parse("30 3 * * *").unwrap();
        assert_eq!(
            w.next_after(&utc, t("2026-11-21T03:29:59Z")),
            Some(t("2026-11-21T03:30:00Z"))
        );
        // Strictly after: a job that just ran at its time is not due again.
        assert_eq!(
            w.next_after(&utc, t("2026-11-21T03:30:00Z")),
            Some(t("2026-11-22T03:30:00Z"))
        );
        let secs = When::parse("*/15 * * * * *").unwrap();
        assert_eq!(
            secs.next_after(&utc, t("2026-11-21T10:00:01Z")),
            Some(t("2026-11-21T10:00:15Z"))
        );
        assert_eq!(
            secs.next_after(&utc, t("2026-11-21T10:00:14.998Z")),
            Some(t("2026-11-21T10:00:15Z")),
            "whole seconds, from a time that has a fraction"
        );
        assert_eq!(
            When::parse("@daily")
                .unwrap()
                .next_after(&utc, t("2026-11-21T10:00:00Z")),
            Some(t("2026-11-22T00:00:00Z"))
        );
        assert_eq!(When::parse(" Never ").unwrap(), When::Never);
        assert_eq!(
            When::Never.next_after(&utc, t("2026-11-21T10:00:00Z")),
            None
        );
        let e = When::parse("every day").unwrap_err();
        assert!(e.contains("`every day` is not a cron expression"), "{e}");
        let e = When::parse("0 0 30 2 *").unwrap_err();
        assert!(e.contains("matches no date"), "{e}");
    }
}
