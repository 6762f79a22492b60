//! Named time zones (`[schedule] timezone = "Europe/Berlin"`) read from the system's time
//! zone database, as a [`chrono::TimeZone`] for the schedules and the send bucket's day.
//!
//! Why not chrono-tz, the usual crate: it compiles the whole IANA database into the
//! program as static tables holding 35,000 pointers to zone abbreviations. In a
//! position-independent executable each of those pointers is relocated when the program
//! starts, so its 1 MB of tables were copied into every process, page by page: about 250
//! page faults and 1.3 ms before `main` of every command (measured with a program that
//! only prints an offset: 1.5 ms without chrono-tz, 2.8 ms with it), and 1 MB of the idle
//! daemon's resident memory, whatever zone was configured, if any.
//!
//! Instead a named zone is read, when the configuration is, from the compiled zone file
//! the system keeps (`$TZDIR`, else `/usr/share/zoneinfo` and the other folders jiff
//! looks in), so it also follows the system's tzdata updates. jiff parses the file (TZif,
//! with the POSIX rule for times past its last transition) and resolves local times (gaps
//! and folds); this module only adapts it to chrono's trait. jiff's own database lookup
//! is not used: on first use it lists the whole zoneinfo folder (900 files on Debian 12),
//! where one zone needs one file.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{FixedOffset, MappedLocalTime, NaiveDate, NaiveDateTime, NaiveTime, Timelike};

/// Where jiff looks for compiled zone files, after `$TZDIR` (glibc: the first).
const ZONEINFO_DIRECTORIES: &[&str] = &[
    "/usr/share/zoneinfo",
    "/usr/lib/zoneinfo",
    "/usr/share/lib/zoneinfo",
    "/etc/zoneinfo",
];

/// Zone files are a few kilobytes; anything past this is not one.
const MAX_ZONE_FILE: u64 = 1 << 20;

/// A named IANA time zone, read from the system's database.
#[derive(Clone)]
pub struct NamedZone(Arc<Inner>);

struct Inner {
    name: String,
    tz: jiff::tz::TimeZone,
}

impl NamedZone {
    /// Reads the zone `name` (an IANA name such as `Europe/Berlin`, exactly as the
    /// database spells it) from the system's time zone database.
    pub fn load(name: &str) -> Result<NamedZone, String> {
        let valid = !name.is_empty()
            && name.len() <= 255
            && name.split('/').all(|part| {
                !part.is_empty()
                    && part != "."
                    && part != ".."
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_-+".contains(&b))
            });
        // `right/` zones count leap seconds, which the program's clock does not.
        if !valid || name.starts_with("right/") {
            return Err(not_a_zone(name));
        }
        let dirs = zoneinfo_dirs();
        let Some(dir) = dirs.iter().find(|d| d.is_dir()) else {
            let looked: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
            return Err(format!(
                "time zone `{name}`: this system has no time zone database (looked in {}); \
                 install its tzdata package, set TZDIR, or use \"local\" for the system's zone",
                looked.join(", ")
            ));
        };
        let path = dir.join(name);
        let data = read_zone_file(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                format!(
                    "{}; {} has no such zone (an old name such as \"US/Eastern\" may need \
                     the tzdata-legacy package)",
                    not_a_zone(name),
                    dir.display()
                )
            } else {
                not_a_zone(name)
            }
        })?;
        let tz = jiff::tz::TimeZone::tzif(name, &data).map_err(|_| not_a_zone(name))?;
        Ok(NamedZone(Arc::new(Inner {
            name: name.to_string(),
            tz,
        })))
    }

    /// The zone's IANA name.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    fn offset(&self, o: jiff::tz::Offset) -> ZoneOffset {
        // jiff allows offsets up to 26 hours (POSIX rules can say so); chrono up to 24.
        let fix = FixedOffset::east_opt(o.seconds().clamp(-86_399, 86_399))
            .expect("an offset within a day");
        ZoneOffset {
            zone: self.clone(),
            fix,
        }
    }
}

fn not_a_zone(name: &str) -> String {
    format!(
        "`{name}` is not a time zone; write an IANA name such as \"Europe/Berlin\" or \
         \"America/New_York\", or \"local\" for the system's"
    )
}

fn zoneinfo_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::with_capacity(ZONEINFO_DIRECTORIES.len() + 1);
    if let Some(d) = std::env::var_os("TZDIR").filter(|d| !d.is_empty()) {
        dirs.push(PathBuf::from(d));
    }
    dirs.extend(ZONEINFO_DIRECTORIES.iter().map(PathBuf::from));
    dirs
}

fn read_zone_file(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    // Checked before opening: a FIFO or device under the folder would block or stream.
    if !std::fs::metadata(path)?.is_file() {
        return Err(std::io::ErrorKind::InvalidInput.into());
    }
    let file = std::fs::File::open(path)?;
    let mut data = Vec::new();
    file.take(MAX_ZONE_FILE + 1).read_to_end(&mut data)?;
    if data.len() as u64 > MAX_ZONE_FILE {
        return Err(std::io::ErrorKind::InvalidData.into());
    }
    Ok(data)
}

impl PartialEq for NamedZone {
    fn eq(&self, other: &NamedZone) -> bool {
        self.0.name == other.0.name
    }
}

impl fmt::Debug for NamedZone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("NamedZone").field(&self.0.name).finish()
    }
}

/// A [`NamedZone`]'s offset at some time: chrono keeps the zone in it.
#[derive(Clone)]
pub struct ZoneOffset {
    zone: NamedZone,
    fix: FixedOffset,
}

impl fmt::Debug for ZoneOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.fix, self.zone.name())
    }
}

impl fmt::Display for ZoneOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.fix, f)
    }
}

impl chrono::Offset for ZoneOffset {
    fn fix(&self) -> FixedOffset {
        self.fix
    }
}

/// A chrono time as jiff's civil time; `None` past jiff's years (-9999 to 9999).
fn civil(t: &NaiveDateTime) -> Option<jiff::civil::DateTime> {
    use chrono::Datelike;
    jiff::civil::DateTime::new(
        i16::try_from(t.year()).ok()?,
        t.month() as i8,
        t.day() as i8,
        t.hour() as i8,
        t.minute() as i8,
        // A leap second's 60th second is the 59th here.
        t.second().min(59) as i8,
        t.nanosecond().min(999_999_999) as i32,
    )
    .ok()
}

impl chrono::TimeZone for NamedZone {
    type Offset = ZoneOffset;

    fn from_offset(offset: &ZoneOffset) -> NamedZone {
        offset.zone.clone()
    }

    fn offset_from_local_date(&self, local: &NaiveDate) -> MappedLocalTime<ZoneOffset> {
        self.offset_from_local_datetime(&local.and_time(NaiveTime::MIN))
    }

    fn offset_from_local_datetime(&self, local: &NaiveDateTime) -> MappedLocalTime<ZoneOffset> {
        use jiff::tz::AmbiguousOffset;
        let Some(dt) = civil(local) else {
            return MappedLocalTime::None;
        };
        match self.0.tz.to_ambiguous_timestamp(dt).offset() {
            AmbiguousOffset::Unambiguous { offset } => MappedLocalTime::Single(self.offset(offset)),
            // Skipped by a move forward (daylight saving starts): no such local time.
            AmbiguousOffset::Gap { .. } => MappedLocalTime::None,
            // Passed twice (daylight saving ends): the earlier instant has the offset from
            // before the change.
            AmbiguousOffset::Fold { before, after } => {
                MappedLocalTime::Ambiguous(self.offset(before), self.offset(after))
            }
        }
    }

    fn offset_from_utc_date(&self, utc: &NaiveDate) -> ZoneOffset {
        self.offset_from_utc_datetime(&utc.and_time(NaiveTime::MIN))
    }

    fn offset_from_utc_datetime(&self, utc: &NaiveDateTime) -> ZoneOffset {
        let (min, max) = (
            jiff::Timestamp::MIN.as_second(),
            jiff::Timestamp::MAX.as_second(),
        );
        let secs = utc.and_utc().timestamp().clamp(min, max);
        let at = jiff::Timestamp::from_second(secs).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        self.offset(self.0.tz.to_offset(at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Offset, TimeZone, Utc};

    fn berlin() -> Option<NamedZone> {
        match NamedZone::load("Europe/Berlin") {
            Ok(z) => Some(z),
            Err(e) => {
                // CI installs tzdata; elsewhere a machine without it skips, saying so.
                let ci = std::env::var("CI")
                    .is_ok_and(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"));
                assert!(!ci, "{e}");
                crate::skip_test("named time zones", &e);
                None
            }
        }
    }

    fn utc(s: &str) -> chrono::DateTime<Utc> {
        crate::time::parse(s).unwrap()
    }

    fn local(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").unwrap()
    }

    #[test]
    fn offsets_follow_daylight_saving() {
        let Some(z) = berlin() else { return };
        let at = |s: &str| utc(s).with_timezone(&z).offset().fix().local_minus_utc();
        assert_eq!(at("2026-01-15T12:00:00Z"), 3600, "winter: CET");
        assert_eq!(at("2026-07-15T12:00:00Z"), 7200, "summer: CEST");
        // Past the file's last transition, the POSIX rule goes on.
        assert_eq!(at("2400-07-15T12:00:00Z"), 7200);
        // The change in spring 2026: 29 March, 01:00 UTC.
        assert_eq!(at("2026-03-29T00:59:59Z"), 3600);
        assert_eq!(at("2026-03-29T01:00:00Z"), 7200);
        assert_eq!(
            utc("2026-07-15T12:00:00Z")
                .with_timezone(&z)
                .naive_local()
                .to_string(),
            "2026-07-15 14:00:00"
        );
    }

    #[test]
    fn local_times_in_gaps_and_folds() {
        let Some(z) = berlin() else { return };
        let plain = z.from_local_datetime(&local("2026-06-01 00:00:00"));
        assert_eq!(
            plain.single().map(|t| t.with_timezone(&Utc)),
            Some(utc("2026-05-31T22:00:00Z"))
        );
        // 02:30 on 29 March 2026 never happens.
        assert!(matches!(
            z.from_local_datetime(&local("2026-03-29 02:30:00")),
            MappedLocalTime::None
        ));
        // 02:30 on 25 October 2026 happens twice: first in summer time.
        let MappedLocalTime::Ambiguous(first, second) =
            z.from_local_datetime(&local("2026-10-25 02:30:00"))
        else {
            panic!("a fold is ambiguous");
        };
        assert_eq!(first.with_timezone(&Utc), utc("2026-10-25T00:30:00Z"));
        assert_eq!(second.with_timezone(&Utc), utc("2026-10-25T01:30:00Z"));
    }

    #[test]
    fn names_that_are_not_zones_are_refused() {
        for bad in [
            "",
            "Europe/Berln",
            "../../etc/passwd",
            "Europe/../Europe/Berlin",
            "/Europe/Berlin",
            "Europe//Berlin",
            "Europe/Berlin ",
            "zone.tab",
            "right/Europe/Berlin",
        ] {
            let e = NamedZone::load(bad)
                .map(|z| z.name().to_string())
                .unwrap_err();
            assert!(e.contains("is not a time zone"), "{bad:?}: {e}");
        }
        if let Some(z) = berlin() {
            assert_eq!(z.name(), "Europe/Berlin");
            assert_eq!(z, NamedZone::load("Europe/Berlin").unwrap());
        }
    }

    #[test]
    fn tzdir_names_the_database() {
        // TZDIR is read at every load; this test is the only one here that sets it,
        // through a child process so the others never see it.
        if std::env::var_os("IMM_ZONE_TEST_CHILD").is_some() {
            let e = NamedZone::load("Europe/Berlin").unwrap_err();
            assert!(e.contains("is not a time zone"), "{e}");
            let z = NamedZone::load("Test/Fixed").unwrap();
            let t = utc("2026-07-15T12:00:00Z").with_timezone(&z);
            assert_eq!(t.offset().fix().local_minus_utc(), 5 * 3600 + 30 * 60);
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("Test")).unwrap();
        std::fs::write(
            dir.path().join("Test/Fixed"),
            tzif_fixed(5 * 3600 + 30 * 60),
        )
        .unwrap();
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "config::zone::tests::tzdir_names_the_database",
                "--nocapture",
            ])
            .env("IMM_ZONE_TEST_CHILD", "1")
            .env("TZDIR", dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("1 passed"),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A version 2 TZif file of one fixed offset and no transitions.
    fn tzif_fixed(offset: i32) -> Vec<u8> {
        fn header(out: &mut Vec<u8>, version: u8) {
            out.extend_from_slice(b"TZif");
            out.push(version);
            out.extend_from_slice(&[0; 15]);
            // isutcnt, isstdcnt, leapcnt, timecnt, typecnt, charcnt
            for n in [0u32, 0, 0, 0, 1, 4] {
                out.extend_from_slice(&n.to_be_bytes());
            }
        }
        fn body(out: &mut Vec<u8>, offset: i32) {
            out.extend_from_slice(&offset.to_be_bytes());
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(b"TST\0");
        }
        let mut out = Vec::new();
        header(&mut out, b'2');
        body(&mut out, offset);
        header(&mut out, b'2');
        body(&mut out, offset);
        let hours = -offset / 3600;
        let minutes = (offset.abs() % 3600) / 60;
        out.extend_from_slice(format!("\nTST{hours}:{minutes:02}\n").as_bytes());
        out
    }
}
