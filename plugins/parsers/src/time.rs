//! Reading times: the `time_format` words and strftime patterns, time zones,
//! and the fixed timestamp grammars of syslog and access logs.
//!
//! Hot-path formats (RFC 3339, BSD syslog, apache's `%d/%b/%Y:%H:%M:%S %z`)
//! are scanned by hand into a civil date and turned into seconds with plain
//! integer arithmetic; chrono is used for user-given strftime patterns and
//! for the local time zone.

use chrono::format::{Item, StrftimeItems};
use chrono::{Datelike, NaiveDateTime, TimeZone as _};
use serde_json::Value;
use ulog_engine::EventTime;

use crate::ParseError;

/// Seconds per day.
const DAY: i64 = 86_400;
/// Seconds that fit in an [`EventTime`] (its nanoseconds fit an `i64`).
const MAX_SECS: i64 = i64::MAX / 1_000_000_000 - 1;

/// Where times written without an offset are.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Zone {
    /// A fixed offset east of UTC, in seconds.
    Fixed(i32),
    /// The machine's local zone, with its daylight-saving rules.
    Local,
}

impl Zone {
    /// Reads `time_zone`: "UTC", "local" or an offset like "+09:00".
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        match t {
            "UTC" | "utc" | "Z" | "z" | "GMT" | "Etc/UTC" => return Ok(Zone::Fixed(0)),
            "local" | "Local" | "localtime" => return Ok(Zone::Local),
            _ => {}
        }
        parse_offset(t.as_bytes())
            .filter(|(_, used)| *used == t.len())
            .map(|(off, _)| Zone::Fixed(off))
            .ok_or_else(|| {
                format!(
                    "unknown time zone {text:?}; use \"UTC\", \"local\" or a fixed offset like \
                     \"+09:00\" (named zones are not supported)"
                )
            })
    }

    /// Seconds since the epoch of a civil time in this zone; `None` when the
    /// date is invalid or the local time does not exist (a DST gap).
    pub(crate) fn civil_to_secs(&self, c: Civil) -> Option<i64> {
        let local = c.secs()?;
        match self {
            Zone::Fixed(off) => Some(local - i64::from(*off)),
            Zone::Local => {
                let naive = chrono::DateTime::from_timestamp(local, 0)?.naive_utc();
                chrono::Local
                    .from_local_datetime(&naive)
                    .earliest()
                    .map(|dt| dt.timestamp())
            }
        }
    }

    fn naive_to_secs(&self, naive: NaiveDateTime) -> Option<i64> {
        match self {
            Zone::Fixed(off) => Some(naive.and_utc().timestamp() - i64::from(*off)),
            Zone::Local => chrono::Local
                .from_local_datetime(&naive)
                .earliest()
                .map(|dt| dt.timestamp()),
        }
    }

    /// The calendar year at `secs` in this zone.
    fn year_at(&self, secs: i64) -> i64 {
        let year = match self {
            Zone::Fixed(off) => {
                chrono::DateTime::from_timestamp(secs + i64::from(*off), 0).map(|d| d.year())
            }
            Zone::Local => chrono::DateTime::from_timestamp(secs, 0)
                .map(|d| d.with_timezone(&chrono::Local).year()),
        };
        i64::from(year.unwrap_or(1970))
    }
}

/// A date and time of day as written, before a zone is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Civil {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
}

impl Civil {
    /// Seconds since the epoch as if this were UTC; `None` for impossible
    /// dates (Feb 30, hour 25) and years an [`EventTime`] cannot hold.
    pub(crate) fn secs(self) -> Option<i64> {
        if !(1..=12).contains(&self.month)
            || self.day == 0
            || self.day > days_in_month(self.year, self.month)
            || self.hour > 23
            || self.minute > 59
            || self.second > 60
            || !(1..=9999).contains(&self.year)
        {
            return None;
        }
        let days = days_from_civil(self.year, self.month, self.day);
        Some(
            days * DAY
                + i64::from(self.hour) * 3600
                + i64::from(self.minute) * 60
                + i64::from(self.second),
        )
    }
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(y) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Days from 1970-01-01 to the given proleptic Gregorian date (the
/// well-known era-based computation: 400-year eras of 146097 days).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Builds an [`EventTime`], or `None` when out of its range.
pub(crate) fn event_time(secs: i64, nanos: u32) -> Option<EventTime> {
    (-MAX_SECS..=MAX_SECS)
        .contains(&secs)
        .then(|| EventTime::from_secs_nanos(secs, nanos))
}

/// The month of a three-letter English abbreviation ("Jan" → 1), any case.
pub(crate) fn month_from_abbr(b: &[u8]) -> Option<u32> {
    const MONTHS: [&[u8; 3]; 12] = [
        b"jan", b"feb", b"mar", b"apr", b"may", b"jun", b"jul", b"aug", b"sep", b"oct", b"nov",
        b"dec",
    ];
    if b.len() != 3 {
        return None;
    }
    let lower = [
        b[0].to_ascii_lowercase(),
        b[1].to_ascii_lowercase(),
        b[2].to_ascii_lowercase(),
    ];
    MONTHS
        .iter()
        .position(|m| **m == lower)
        .map(|i| i as u32 + 1)
}

/// Reads exactly `n` ASCII digits at `at`.
pub(crate) fn digits(b: &[u8], at: usize, n: usize) -> Option<u32> {
    let part = b.get(at..at + n)?;
    let mut v = 0u32;
    for &c in part {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u32::from(c - b'0');
    }
    Some(v)
}

/// Reads a fraction of a second (the digits after the dot) at `at`: its
/// nanoseconds (digits past the ninth are ignored) and the bytes used.
pub(crate) fn fraction(b: &[u8], at: usize) -> (u32, usize) {
    let mut nanos = 0u32;
    let mut used = 0;
    while let Some(c) = b.get(at + used).filter(|c| c.is_ascii_digit()) {
        if used < 9 {
            nanos = nanos * 10 + u32::from(c - b'0');
        }
        used += 1;
    }
    for _ in used..9 {
        nanos *= 10;
    }
    (nanos, used)
}

/// Reads a UTC offset: `Z`, `+hh:mm`, `+hhmm` or `+hh`. Returns seconds east
/// of UTC and the bytes used.
pub(crate) fn parse_offset(b: &[u8]) -> Option<(i32, usize)> {
    match b.first()? {
        b'Z' | b'z' => return Some((0, 1)),
        b'+' | b'-' => {}
        _ => return None,
    }
    let sign = if b[0] == b'-' { -1 } else { 1 };
    let hours = digits(b, 1, 2)?;
    let (minutes, used) = if b.get(3) == Some(&b':') {
        (digits(b, 4, 2)?, 6)
    } else if let Some(m) = digits(b, 3, 2) {
        (m, 5)
    } else {
        (0, 3)
    };
    if hours > 23 || minutes > 59 {
        return None;
    }
    Some((sign * (hours as i32 * 3600 + minutes as i32 * 60), used))
}

/// Parses an ISO 8601 / RFC 3339 date-time that fills all of `b`:
/// `YYYY-MM-DD[T ]hh:mm[:ss[.frac]][Z|±hh:mm]`; without an offset the time is
/// in `zone`.
pub(crate) fn parse_iso8601(b: &[u8], zone: &Zone) -> Option<EventTime> {
    let year = digits(b, 0, 4)?;
    if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') {
        return None;
    }
    let month = digits(b, 5, 2)?;
    let day = digits(b, 8, 2)?;
    if !matches!(b.get(10), Some(b'T' | b't' | b' ')) {
        return None;
    }
    let hour = digits(b, 11, 2)?;
    if b.get(13) != Some(&b':') {
        return None;
    }
    let minute = digits(b, 14, 2)?;
    let mut at = 16;
    let mut second = 0;
    let mut nanos = 0;
    if b.get(at) == Some(&b':') {
        second = digits(b, at + 1, 2)?;
        at += 3;
        if matches!(b.get(at), Some(b'.' | b',')) {
            let (n, used) = fraction(b, at + 1);
            if used == 0 {
                return None;
            }
            nanos = n;
            at += 1 + used;
        }
    }
    let civil = Civil {
        year: i64::from(year),
        month,
        day,
        hour,
        minute,
        second,
    };
    let secs = if at == b.len() {
        zone.civil_to_secs(civil)?
    } else {
        let (off, used) = parse_offset(&b[at..])?;
        if at + used != b.len() {
            return None;
        }
        civil.secs()? - i64::from(off)
    };
    event_time(secs, nanos)
}

/// The year of a date written without one (RFC 3164 syslog): this year, or
/// last year when the date would be more than a day in the future (a December
/// line read in January). Returns seconds since the epoch.
pub(crate) fn infer_year(zone: &Zone, civil: Civil) -> Option<i64> {
    infer_year_at(zone, civil, EventTime::now().secs())
}

/// [`infer_year`] as seen at `now` (seconds since the epoch).
fn infer_year_at(zone: &Zone, mut civil: Civil, now: i64) -> Option<i64> {
    let year = zone.year_at(now);
    civil.year = year;
    if let Some(secs) = zone.civil_to_secs(civil) {
        if secs <= now + DAY {
            return Some(secs);
        }
    }
    civil.year = year - 1;
    zone.civil_to_secs(civil)
}

/// How a `time_key` field is written.
#[derive(Clone, Debug)]
pub(crate) enum TimeFormat {
    /// Numbers are unix seconds, strings RFC 3339 (or a number in text).
    Auto,
    /// A number of seconds scaled by 10^-n: 9 for seconds, 6 for
    /// milliseconds, 3 for microseconds, 0 for nanoseconds (the value is the
    /// number of nanoseconds per unit's digits).
    Unix { frac_digits: u32 },
    /// ISO 8601 / RFC 3339.
    Iso8601,
    /// A strftime pattern, compiled once.
    Strftime {
        text: String,
        items: Vec<Item<'static>>,
    },
}

impl TimeFormat {
    /// Reads `time_format`.
    pub(crate) fn parse(text: Option<&str>) -> Result<Self, String> {
        Ok(match text {
            None | Some("auto") => TimeFormat::Auto,
            Some("unix" | "epoch" | "unix_s") => TimeFormat::Unix { frac_digits: 9 },
            Some("unix_ms") => TimeFormat::Unix { frac_digits: 6 },
            Some("unix_us") => TimeFormat::Unix { frac_digits: 3 },
            Some("unix_ns") => TimeFormat::Unix { frac_digits: 0 },
            Some("iso8601" | "rfc3339") => TimeFormat::Iso8601,
            Some(pattern) => {
                if !pattern.contains('%') {
                    return Err(format!(
                        "{pattern:?} is neither a strftime pattern (with % fields) nor one of \
                         unix, unix_ms, unix_us, unix_ns, iso8601, rfc3339"
                    ));
                }
                let items = StrftimeItems::new(pattern)
                    .parse_to_owned()
                    .map_err(|_| format!("{pattern:?} is not a valid strftime pattern"))?;
                TimeFormat::Strftime {
                    text: pattern.to_string(),
                    items,
                }
            }
        })
    }

    /// Reads the time held by a record field.
    pub(crate) fn parse_value(&self, v: &Value, zone: &Zone) -> Result<EventTime, ParseError> {
        match v {
            Value::String(s) => self.parse_str(s, zone),
            Value::Number(n) => {
                let per_unit = match self {
                    TimeFormat::Auto => 1_000_000_000,
                    TimeFormat::Unix { frac_digits } => 10i64.pow(*frac_digits),
                    _ => return self.parse_str(&n.to_string(), zone),
                };
                let nanos = if let Some(i) = n.as_i64() {
                    i.checked_mul(per_unit)
                } else {
                    n.as_f64().and_then(|f| float_units(f, per_unit))
                };
                nanos
                    .map(EventTime::from_unix_nanos)
                    .ok_or_else(|| ParseError::new(format!("time {n} is out of range")))
            }
            other => Err(ParseError::new(format!(
                "time value {other} is not a string or a number"
            ))),
        }
    }

    /// Reads a time written as text.
    pub(crate) fn parse_str(&self, s: &str, zone: &Zone) -> Result<EventTime, ParseError> {
        let fail = |why: &str| ParseError::new(format!("time {:?} {why}", crate::Snip(s)));
        match self {
            TimeFormat::Auto => {
                let t = s.trim();
                if t.bytes().next().is_some_and(|c| c.is_ascii_digit())
                    && t.bytes().all(|c| c.is_ascii_digit() || c == b'.')
                {
                    scaled(t, 9).ok_or_else(|| fail("is not a number of seconds"))
                } else {
                    parse_iso8601(t.as_bytes(), zone)
                        .ok_or_else(|| fail("is not RFC 3339 (set time_format)"))
                }
            }
            TimeFormat::Unix { frac_digits } => scaled(s.trim(), *frac_digits)
                .or_else(|| {
                    // 1.7e9 and the like.
                    let f: f64 = s.trim().parse().ok()?;
                    float_units(f, 10i64.pow(*frac_digits)).map(EventTime::from_unix_nanos)
                })
                .ok_or_else(|| fail("is not a unix time")),
            TimeFormat::Iso8601 => parse_iso8601(s.trim().as_bytes(), zone)
                .ok_or_else(|| fail("is not ISO 8601 / RFC 3339")),
            TimeFormat::Strftime { text, items } => {
                strftime(s, items, zone).map_err(|e| fail(&format!("does not match {text:?}: {e}")))
            }
        }
    }
}

/// Nanoseconds of `f` units of `per_unit` nanoseconds each; the whole and
/// fractional parts are scaled apart so 1700000000.25 s stays exact.
fn float_units(f: f64, per_unit: i64) -> Option<i64> {
    if !f.is_finite() || f.abs() * per_unit as f64 >= 9.2e18 {
        return None;
    }
    let whole = f.trunc();
    let frac = ((f - whole) * per_unit as f64).round() as i64;
    (whole as i64).checked_mul(per_unit)?.checked_add(frac)
}

/// A decimal number of units, where one unit is 10^frac_digits nanoseconds:
/// exact, without going through a float.
fn scaled(s: &str, frac_digits: u32) -> Option<EventTime> {
    let (neg, body) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    if int.is_empty() || !int.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let per_unit = 10i64.pow(frac_digits);
    let mut nanos = int.parse::<i64>().ok()?.checked_mul(per_unit)?;
    let mut scale = per_unit / 10;
    for c in frac.bytes() {
        if scale == 0 {
            break;
        }
        nanos += i64::from(c - b'0') * scale;
        scale /= 10;
    }
    Some(EventTime::from_unix_nanos(if neg { -nanos } else { nanos }))
}

fn strftime(s: &str, items: &[Item<'static>], zone: &Zone) -> Result<EventTime, String> {
    let mut p = chrono::format::Parsed::new();
    chrono::format::parse(&mut p, s, items.iter()).map_err(|e| e.to_string())?;
    let no_year = p.year().is_none()
        && p.year_mod_100().is_none()
        && p.isoyear().is_none()
        && p.timestamp().is_none();
    if no_year {
        // Like RFC 3164: this year, or last year if that is in the future.
        let now = EventTime::now().secs();
        let year = zone.year_at(now);
        let mut candidate = p.clone();
        candidate.set_year(year).map_err(|e| e.to_string())?;
        let this_year = candidate
            .to_naive_datetime_with_offset(0)
            .ok()
            .and_then(|n| zone.naive_to_secs(n));
        p = match this_year {
            Some(secs) if secs <= now + DAY => candidate,
            _ => {
                let mut last = p.clone();
                last.set_year(year - 1).map_err(|e| e.to_string())?;
                last
            }
        };
    }
    let (secs, nanos) = if p.offset().is_some() {
        let dt = p.to_datetime().map_err(|e| e.to_string())?;
        (dt.timestamp(), dt.timestamp_subsec_nanos())
    } else {
        let naive = p
            .to_naive_datetime_with_offset(0)
            .map_err(|e| e.to_string())?;
        let secs = if p.timestamp().is_some() {
            naive.and_utc().timestamp()
        } else {
            zone.naive_to_secs(naive)
                .ok_or("does not exist in the local time zone")?
        };
        (secs, naive.and_utc().timestamp_subsec_nanos())
    };
    event_time(secs, nanos).ok_or_else(|| "out of range".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const UTC: Zone = Zone::Fixed(0);

    #[test]
    fn civil_dates_match_chrono() {
        for (y, m, d) in [(1970, 1, 1), (2000, 2, 29), (2024, 12, 31), (1600, 3, 1)] {
            let ours = days_from_civil(y, m, d) * DAY;
            let theirs = chrono::NaiveDate::from_ymd_opt(y as i32, m, d)
                .unwrap()
                .and_hms_opt(0, 0, 0)
                .unwrap()
                .and_utc()
                .timestamp();
            assert_eq!(ours, theirs, "{y}-{m}-{d}");
        }
        let feb29 = Civil {
            year: 2023,
            month: 2,
            day: 29,
            hour: 0,
            minute: 0,
            second: 0,
        };
        assert_eq!(feb29.secs(), None);
    }

    #[test]
    fn iso8601_with_and_without_offsets() {
        let t = parse_iso8601(b"2003-10-11T22:14:15.003Z", &UTC).unwrap();
        assert_eq!((t.secs(), t.subsec_nanos()), (1_065_910_455, 3_000_000));
        let t = parse_iso8601(b"2003-08-24T05:14:15.000003-07:00", &UTC).unwrap();
        let c = chrono::DateTime::parse_from_rfc3339("2003-08-24T05:14:15.000003-07:00").unwrap();
        assert_eq!((t.secs(), t.subsec_nanos()), (c.timestamp(), 3_000));
        let plus9 = Zone::parse("+09:00").unwrap();
        let t = parse_iso8601(b"2024-01-01 09:00:00", &plus9).unwrap();
        assert_eq!(t.secs(), 1_704_067_200);
        assert!(parse_iso8601(b"2024-01-01T09:00:00+25:00", &UTC).is_none());
        assert!(parse_iso8601(b"2024-13-01T09:00:00Z", &UTC).is_none());
        assert!(parse_iso8601(b"2024-01-01T09:00:00Zjunk", &UTC).is_none());
    }

    #[test]
    fn time_format_words() {
        let unix = TimeFormat::parse(Some("unix")).unwrap();
        let t = unix.parse_str("1700000000.25", &UTC).unwrap();
        assert_eq!((t.secs(), t.subsec_nanos()), (1_700_000_000, 250_000_000));
        let t = unix.parse_value(&json!(1700000000), &UTC).unwrap();
        assert_eq!(t.secs(), 1_700_000_000);
        let ms = TimeFormat::parse(Some("unix_ms")).unwrap();
        let t = ms.parse_value(&json!(1700000000123i64), &UTC).unwrap();
        assert_eq!((t.secs(), t.subsec_nanos()), (1_700_000_000, 123_000_000));
        let t = ms.parse_str("1700000000123.5", &UTC).unwrap();
        assert_eq!(t.subsec_nanos(), 123_500_000);
        let auto = TimeFormat::parse(None).unwrap();
        assert_eq!(
            auto.parse_str("2023-11-14T22:13:20Z", &UTC).unwrap().secs(),
            1_700_000_000
        );
        assert!(TimeFormat::parse(Some("yesterday")).is_err());
        let err = auto.parse_value(&json!("soon"), &UTC).unwrap_err();
        assert!(err.0.contains("\"soon\""), "{err}");
    }

    #[test]
    fn strftime_patterns() {
        let f = TimeFormat::parse(Some("%d/%b/%Y:%H:%M:%S %z")).unwrap();
        let t = f.parse_str("10/Oct/2000:13:55:36 -0700", &UTC).unwrap();
        assert_eq!(t.secs(), 971_211_336);
        let f = TimeFormat::parse(Some("%Y-%m-%d %H:%M:%S%.f")).unwrap();
        let t = f
            .parse_str("2000-10-10 20:55:36.5", &Zone::parse("-07:00").unwrap())
            .unwrap();
        assert_eq!((t.secs(), t.subsec_nanos()), (971_236_536, 500_000_000));
        let err = f.parse_str("10/Oct/2000", &UTC).unwrap_err();
        assert!(err.0.contains("10/Oct/2000"), "{err}");
        // No year: this year or the last.
        let f = TimeFormat::parse(Some("%b %d %H:%M:%S")).unwrap();
        let t = f.parse_str("Jan 01 00:00:00", &UTC).unwrap();
        assert!(t.secs() <= EventTime::now().secs() + DAY);
        assert!(TimeFormat::parse(Some("%Q")).is_err());
    }

    #[test]
    fn zones() {
        assert_eq!(Zone::parse("UTC").unwrap(), Zone::Fixed(0));
        assert_eq!(Zone::parse("-0530").unwrap(), Zone::Fixed(-19_800));
        assert_eq!(Zone::parse("local").unwrap(), Zone::Local);
        assert!(Zone::parse("Asia/Tokyo")
            .unwrap_err()
            .contains("named zones"));
    }

    #[test]
    fn year_inference_at_a_fixed_now() {
        let at = |y, mo, d, h| {
            Civil {
                year: y,
                month: mo,
                day: d,
                hour: h,
                minute: 0,
                second: 0,
            }
            .secs()
            .unwrap()
        };
        let c = |mo, d, h| Civil {
            year: 0,
            month: mo,
            day: d,
            hour: h,
            minute: 0,
            second: 0,
        };
        let now = at(2025, 1, 1, 0);
        // A December line read just after new year: last year.
        assert_eq!(
            infer_year_at(&UTC, c(12, 31, 23), now),
            Some(at(2024, 12, 31, 23))
        );
        // Less than a day ahead (clock skew): this year.
        assert_eq!(
            infer_year_at(&UTC, c(1, 1, 20), now),
            Some(at(2025, 1, 1, 20))
        );
        // More than a day ahead: last year.
        assert_eq!(
            infer_year_at(&UTC, c(1, 2, 1), now),
            Some(at(2024, 1, 2, 1))
        );
        // Feb 29 only exists last year.
        let now = at(2025, 3, 10, 0);
        assert_eq!(
            infer_year_at(&UTC, c(2, 29, 12), now),
            Some(at(2024, 2, 29, 12))
        );
        // In another zone the year flips at its own midnight.
        let plus9 = Zone::Fixed(9 * 3600);
        let now = at(2024, 12, 31, 16); // 2025-01-01 01:00 at +09:00
        assert_eq!(
            infer_year_at(&plus9, c(1, 1, 0), now),
            Some(at(2025, 1, 1, 0) - 9 * 3600)
        );
    }

    #[test]
    fn year_inference_never_lands_far_in_the_future() {
        let now = EventTime::now().secs();
        for month in 1..=12 {
            let c = Civil {
                year: 0,
                month,
                day: 28,
                hour: 23,
                minute: 59,
                second: 59,
            };
            let secs = infer_year(&UTC, c).unwrap();
            assert!(secs <= now + DAY, "month {month}");
            assert!(secs > now - 367 * DAY, "month {month}");
        }
    }
}
