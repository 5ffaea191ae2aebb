//! The time zone a `cron` schedule is read in: `UTC`, a fixed offset
//! (`+02:00`) or an IANA name (`Europe/Berlin`), daylight saving included.
//!
//! [`Zone`] wraps a [`jiff::tz::TimeZone`] and implements
//! [`chrono::TimeZone`], so croner walks wall-clock time in it and applies
//! its own DST policy (croner 3, `find_occurrence`): a fixed-time job whose
//! time falls into a spring-forward gap runs at the first valid time after
//! the gap, the same day; in a fall-back fold every wall-clock time is used
//! once, at its first (earlier) instance.
//!
//! IANA names are read from the system's zoneinfo (`TZDIR`, else
//! `/usr/share/zoneinfo`) first, so tzdata updates apply, then from the copy
//! of the database embedded in the binary, for a machine without tzdata or
//! with one that predates the zone. jiff's own global database would fall
//! back to its embedded copy only when the system has no database at all,
//! and walks the whole zoneinfo folder first; one file read is cheaper.

use std::fmt;
use std::path::PathBuf;

use chrono::{FixedOffset, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, Timelike};
use jiff::tz::{AmbiguousOffset, TimeZone as JiffZone, TimeZoneDatabase};

/// A resolved time zone: UTC, a fixed offset or an IANA zone with its rules.
#[derive(Clone, PartialEq, Eq)]
pub struct Zone {
    tz: JiffZone,
    /// As the recipe named it (`Europe/Berlin`, `+02:00`), for messages.
    name: String,
}

/// Why a `timezone` value names no zone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ZoneError {
    /// An offset past ±14:00 or not `±HH:MM`.
    #[error("time zone `{0}` is not a valid offset: use `+HH:MM` up to `+14:00`")]
    BadOffset(String),
    /// Not a zone in the system's database nor in the embedded one.
    #[error("unknown time zone `{name}`: use an IANA name like `Europe/Berlin`, `UTC`, or an offset like `+02:00`")]
    Unknown {
        /// The name as written.
        name: String,
        /// A close known name, when there is one.
        suggestion: Option<String>,
    },
}

impl Zone {
    /// Coordinated Universal Time, the default zone of `cron`.
    pub fn utc() -> Zone {
        Zone {
            tz: JiffZone::UTC,
            name: "UTC".into(),
        }
    }

    /// `UTC`, `Z`, `+02:00`, `-0530`, `UTC+01:00` or an IANA name.
    pub fn parse(s: &str) -> Result<Zone, ZoneError> {
        if matches!(s, "UTC" | "Etc/UTC" | "Z" | "GMT") {
            return Ok(Zone {
                name: s.into(),
                ..Zone::utc()
            });
        }
        // Starts like an offset: an offset or nothing (never a zone name).
        if s.starts_with(['+', '-']) || s.starts_with("UTC+") || s.starts_with("UTC-") {
            let secs = parse_utc_offset(s).ok_or_else(|| ZoneError::BadOffset(s.into()))?;
            return Zone::fixed(secs).ok_or_else(|| ZoneError::BadOffset(s.into()));
        }
        lookup(s).map(|tz| Zone { tz, name: s.into() })
    }

    /// A fixed offset, in seconds east of UTC (`None` past ±14:00).
    pub fn fixed(seconds: i32) -> Option<Zone> {
        if seconds.abs() > 14 * 3600 {
            return None;
        }
        let offset = jiff::tz::Offset::from_seconds(seconds).ok()?;
        Some(Zone {
            tz: JiffZone::fixed(offset),
            name: format_offset(seconds),
        })
    }

    /// The name as the recipe wrote it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The offset from UTC in force at `utc`.
    fn offset_at(&self, utc: &NaiveDateTime) -> FixedOffset {
        let ts = jiff::Timestamp::from_second(utc.and_utc().timestamp()).unwrap_or(
            if utc.and_utc().timestamp() < 0 {
                jiff::Timestamp::MIN
            } else {
                jiff::Timestamp::MAX
            },
        );
        fixed(self.tz.to_offset(ts))
    }

    fn offset(&self, fix: FixedOffset) -> ZoneOffset {
        ZoneOffset {
            zone: self.clone(),
            fix,
        }
    }
}

impl fmt::Debug for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Zone({})", self.name)
    }
}

impl fmt::Display for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// Where systems keep their zoneinfo (jiff's list), after `TZDIR`.
const ZONEINFO_DIRS: [&str; 3] = [
    "/usr/share/zoneinfo",
    "/usr/share/lib/zoneinfo",
    "/etc/zoneinfo",
];

/// The system's zoneinfo first, then the embedded copy.
fn lookup(name: &str) -> Result<JiffZone, ZoneError> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("TZDIR")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    dirs.extend(ZONEINFO_DIRS.iter().map(PathBuf::from));
    lookup_in(&dirs, name)
}

/// [`lookup`] in the given zoneinfo folders (tests pass none).
///
/// One file is read, not jiff's zoneinfo database: that one walks the whole
/// folder (~1,800 entries) at first use, ~1.3 ms of every `validate` of a
/// recipe with a zone name (docs/performance.md).
fn lookup_in(dirs: &[PathBuf], name: &str) -> Result<JiffZone, ZoneError> {
    // A name is never a path: keep `../x` from reading files off the tree.
    let plain = !name.is_empty()
        && name.split('/').all(|part| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'+'))
        });
    if plain {
        // The first folder that has the file decides (like jiff's TZDIR).
        if let Some(data) = dirs.iter().find_map(|d| std::fs::read(d.join(name)).ok()) {
            if let Ok(tz) = JiffZone::tzif(name, &data) {
                return Ok(tz);
            }
        }
        // Case-insensitive, like jiff's databases (`europe/berlin`).
        if let Ok(tz) = TimeZoneDatabase::bundled().get(name) {
            return Ok(tz);
        }
    }
    // The embedded list has every name without touching the disk.
    let bundled = TimeZoneDatabase::bundled();
    let names: Vec<String> = bundled
        .available()
        .map(|n| n.as_str().to_string())
        .collect();
    let suggestion =
        crate::diagnostic::closest(name, names.iter().map(String::as_str)).map(str::to_string);
    Err(ZoneError::Unknown {
        name: name.into(),
        suggestion,
    })
}

/// `UTC+01:00`, `+02:00`, `-0530` -> seconds east of UTC.
fn parse_utc_offset(s: &str) -> Option<i32> {
    let (sign, rest) = match s.strip_prefix("UTC").unwrap_or(s).split_at_checked(1)? {
        ("+", r) => (1, r),
        ("-", r) => (-1, r),
        _ => return None,
    };
    let digits: String = rest.chars().filter(|c| *c != ':').collect();
    if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let h: i32 = digits[..2].parse().ok()?;
    let m: i32 = digits[2..].parse().ok()?;
    (h <= 14 && m < 60).then_some(sign * (h * 3600 + m * 60))
}

fn format_offset(seconds: i32) -> String {
    let sign = if seconds < 0 { '-' } else { '+' };
    let s = seconds.unsigned_abs();
    format!("{sign}{:02}:{:02}", s / 3600, s % 3600 / 60)
}

/// jiff's offsets reach ±25:59:59, chrono's stay under ±24:00; real zones
/// are within ±15:00, so the fallback never shows.
fn fixed(o: jiff::tz::Offset) -> FixedOffset {
    FixedOffset::east_opt(o.seconds()).unwrap_or(FixedOffset::east_opt(0).expect("zero offset"))
}

/// A chrono date in jiff's civil terms (`None` outside jiff's ±9999 years).
fn civil(local: &NaiveDateTime) -> Option<jiff::civil::DateTime> {
    use chrono::Datelike;
    jiff::civil::DateTime::new(
        i16::try_from(local.year()).ok()?,
        local.month() as i8,
        local.day() as i8,
        local.hour() as i8,
        local.minute() as i8,
        // chrono encodes a leap second as second 59 + 1e9 ns.
        local.second() as i8,
        (local.nanosecond() % 1_000_000_000) as i32,
    )
    .ok()
}

/// The offset of a date in a [`Zone`]: it carries the zone, as chrono-tz's
/// offsets do, so `DateTime<Zone>` keeps its rules through arithmetic.
#[derive(Clone)]
pub struct ZoneOffset {
    zone: Zone,
    fix: FixedOffset,
}

impl fmt::Debug for ZoneOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.fix)
    }
}

impl fmt::Display for ZoneOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.fix)
    }
}

impl chrono::Offset for ZoneOffset {
    fn fix(&self) -> FixedOffset {
        self.fix
    }
}

impl chrono::TimeZone for Zone {
    type Offset = ZoneOffset;

    fn from_offset(offset: &ZoneOffset) -> Zone {
        offset.zone.clone()
    }

    fn offset_from_local_date(&self, local: &NaiveDate) -> LocalResult<ZoneOffset> {
        self.offset_from_local_datetime(&local.and_time(NaiveTime::MIN))
    }

    /// Unambiguous -> `Single`, a gap (spring forward) -> `None`, a fold
    /// (fall back) -> `Ambiguous(earlier, later)`, as chrono wants; croner
    /// decides from these what a schedule does at a transition.
    fn offset_from_local_datetime(&self, local: &NaiveDateTime) -> LocalResult<ZoneOffset> {
        let Some(dt) = civil(local) else {
            return LocalResult::None;
        };
        match self.tz.to_ambiguous_timestamp(dt).offset() {
            AmbiguousOffset::Unambiguous { offset } => {
                LocalResult::Single(self.offset(fixed(offset)))
            }
            AmbiguousOffset::Gap { .. } => LocalResult::None,
            // `before` is the offset in force before the transition (summer
            // time), so it gives the earlier instant of the repeated time.
            AmbiguousOffset::Fold { before, after } => {
                LocalResult::Ambiguous(self.offset(fixed(before)), self.offset(fixed(after)))
            }
        }
    }

    fn offset_from_utc_date(&self, utc: &NaiveDate) -> ZoneOffset {
        self.offset_from_utc_datetime(&utc.and_time(NaiveTime::MIN))
    }

    fn offset_from_utc_datetime(&self, utc: &NaiveDateTime) -> ZoneOffset {
        self.offset(self.offset_at(utc))
    }
}

#[cfg(test)]
mod tests {
    use chrono::{NaiveDate, TimeZone as _};

    use super::*;

    fn local(y: i32, m: u32, d: u32, h: u32, min: u32) -> NaiveDateTime {
        NaiveDate::from_ymd_opt(y, m, d)
            .unwrap()
            .and_hms_opt(h, min, 0)
            .unwrap()
    }

    fn hours(h: i32) -> FixedOffset {
        FixedOffset::east_opt(h * 3600).unwrap()
    }

    #[test]
    fn names_offsets_and_utc_parse() {
        for ok in [
            "UTC",
            "Etc/UTC",
            "Z",
            "+02:00",
            "-0530",
            "UTC+01:00",
            "Europe/Berlin",
            "America/New_York",
            "Asia/Kolkata",
            "Etc/GMT+5",
        ] {
            assert!(Zone::parse(ok).is_ok(), "{ok}");
        }
        assert_eq!(Zone::parse("+02:00").unwrap().name(), "+02:00");
        assert_eq!(
            Zone::parse("+25:00"),
            Err(ZoneError::BadOffset("+25:00".into()))
        );
        assert!(matches!(
            Zone::parse("+14:30"),
            Err(ZoneError::BadOffset(_))
        ));
    }

    #[test]
    fn an_unknown_name_is_rejected_with_the_closest_known_one() {
        let err = Zone::parse("Europe/Berln").unwrap_err();
        assert_eq!(
            err,
            ZoneError::Unknown {
                name: "Europe/Berln".into(),
                suggestion: Some("Europe/Berlin".into()),
            }
        );
        assert_eq!(
            err.to_string(),
            "unknown time zone `Europe/Berln`: use an IANA name like `Europe/Berlin`, `UTC`, or an offset like `+02:00`"
        );
        for bad in [
            "Mars/Olympus_Mons",
            "",
            "../../etc/passwd",
            "Europe//Berlin",
            "/etc/localtime",
        ] {
            assert!(
                matches!(Zone::parse(bad), Err(ZoneError::Unknown { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_system_without_the_zone_falls_back_to_the_embedded_database() {
        // No folder stands for a machine without tzdata; an empty one for
        // a tzdata that predates the zone.
        let empty = std::env::temp_dir().join(format!("patchbay-zone-{}", std::process::id()));
        std::fs::create_dir_all(&empty).unwrap();
        assert!(lookup_in(&[], "Europe/Berlin").is_ok());
        let tz = lookup_in(std::slice::from_ref(&empty), "Europe/Berlin").unwrap();
        let _ = std::fs::remove_dir(&empty);
        let zone = Zone {
            tz,
            name: "Europe/Berlin".into(),
        };
        let summer = zone.offset_from_utc_datetime(&local(2026, 7, 1, 12, 0));
        let winter = zone.offset_from_utc_datetime(&local(2026, 1, 1, 12, 0));
        assert_eq!(chrono::Offset::fix(&summer), hours(2));
        assert_eq!(chrono::Offset::fix(&winter), hours(1));
    }

    #[test]
    fn the_system_zoneinfo_comes_first() {
        // A folder whose `Europe/Berlin` holds New York's rules: the file
        // read is the system's, not the embedded one.
        let Ok(ny) = std::fs::read("/usr/share/zoneinfo/America/New_York") else {
            return; // no tzdata on this machine
        };
        let dir = std::env::temp_dir().join(format!("patchbay-zoneinfo-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("Europe")).unwrap();
        std::fs::write(dir.join("Europe/Berlin"), ny).unwrap();
        let tz = lookup_in(std::slice::from_ref(&dir), "Europe/Berlin").unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let zone = Zone {
            tz,
            name: "Europe/Berlin".into(),
        };
        let winter = zone.offset_from_utc_datetime(&local(2026, 1, 1, 12, 0));
        assert_eq!(chrono::Offset::fix(&winter), hours(-5));
    }

    #[test]
    fn berlin_local_times_are_single_in_a_gap_none_in_a_fold_ambiguous() {
        let berlin = Zone::parse("Europe/Berlin").unwrap();
        let fix = |r: LocalResult<ZoneOffset>| r.map(|o| chrono::Offset::fix(&o));
        // Winter, summer.
        assert_eq!(
            fix(berlin.offset_from_local_datetime(&local(2026, 1, 15, 9, 0))),
            LocalResult::Single(hours(1))
        );
        assert_eq!(
            fix(berlin.offset_from_local_datetime(&local(2026, 7, 15, 9, 0))),
            LocalResult::Single(hours(2))
        );
        // 2026-03-29 02:00 CET -> 03:00 CEST: 02:30 does not exist.
        assert_eq!(
            fix(berlin.offset_from_local_datetime(&local(2026, 3, 29, 2, 30))),
            LocalResult::None
        );
        // 2026-10-25 03:00 CEST -> 02:00 CET: 02:30 happens twice,
        // earlier (summer time) first.
        assert_eq!(
            fix(berlin.offset_from_local_datetime(&local(2026, 10, 25, 2, 30))),
            LocalResult::Ambiguous(hours(2), hours(1))
        );
        let t = berlin
            .from_local_datetime(&local(2026, 10, 25, 2, 30))
            .earliest()
            .unwrap();
        assert_eq!(t.to_rfc3339(), "2026-10-25T02:30:00+02:00");
        assert_eq!(
            t.with_timezone(&chrono::Utc).to_rfc3339(),
            "2026-10-25T00:30:00+00:00"
        );
    }

    #[test]
    fn a_date_keeps_its_zone_through_arithmetic() {
        let berlin = Zone::parse("Europe/Berlin").unwrap();
        let winter = berlin
            .from_local_datetime(&local(2026, 3, 28, 12, 0))
            .single()
            .unwrap();
        // One day later, across the transition: the offset follows the zone.
        let next = winter + chrono::Duration::days(1);
        assert_eq!(next.to_rfc3339(), "2026-03-29T13:00:00+02:00");
        assert_eq!(next.timezone().name(), "Europe/Berlin");
    }
}
