//! Times: conversions between the engine's [`EventTime`] and chrono, time
//! zones, and strftime formats compiled once.

use chrono::format::{Item, Parsed, StrftimeItems};
use chrono::{DateTime, Datelike, LocalResult, NaiveTime, SecondsFormat, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use ulog_engine::EventTime;

/// A strftime format parsed once, at compile time.
pub(crate) type Format = Box<[Item<'static>]>;

/// Parses a strftime format (`%Y-%m-%d %H:%M:%S`), or says what is wrong.
pub(crate) fn compile_format(fmt: &str) -> Result<Format, String> {
    StrftimeItems::new(fmt)
        .parse_to_owned()
        .map(Vec::into_boxed_slice)
        .map_err(|_| {
            format!("`{fmt}` is not a valid time format (see strftime: %Y-%m-%d %H:%M:%S)")
        })
}

/// A time zone by its IANA name (`Europe/London`, `UTC`).
pub(crate) fn zone(name: &str) -> Option<Tz> {
    name.parse::<Tz>().ok()
}

/// The IANA name nearest to a misspelt one.
pub(crate) fn nearest_zone(name: &str) -> Option<&'static str> {
    ulog_engine::suggest::closest(name, chrono_tz::TZ_VARIANTS.iter().map(|tz| tz.name()))
}

fn utc(t: EventTime) -> DateTime<Utc> {
    // Every i64 of nanoseconds (1677–2262) is inside chrono's range.
    DateTime::from_timestamp(t.secs(), t.subsec_nanos()).unwrap_or_default()
}

fn from_chrono<Z: TimeZone>(dt: &DateTime<Z>) -> Option<EventTime> {
    dt.timestamp_nanos_opt().map(EventTime::from_unix_nanos)
}

/// RFC 3339 in UTC with as many fraction digits as needed.
pub(crate) fn rfc3339(t: EventTime) -> String {
    utc(t).to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Parses RFC 3339 text (`2026-05-01T12:00:00+01:00`).
pub(crate) fn parse_rfc3339(s: &str) -> Result<EventTime, String> {
    let dt = DateTime::parse_from_rfc3339(s.trim())
        .map_err(|e| format!("cannot read {s:?} as an RFC 3339 time: {e}"))?;
    from_chrono(&dt).ok_or_else(|| format!("{s:?} is outside the years 1677–2262"))
}

/// Parses `s` with a compiled format. Text without an offset is a local
/// time in `tz`; a date without a time is midnight; `%s` is absolute.
pub(crate) fn parse(s: &str, fmt: &Format, tz: Tz) -> Result<EventTime, String> {
    let mut parsed = Parsed::new();
    chrono::format::parse(&mut parsed, s, fmt.iter())
        .map_err(|e| format!("cannot read {s:?} with this time format: {e}"))?;
    let range = || format!("{s:?} is outside the years 1677–2262");
    let unreadable =
        |e: chrono::format::ParseError| format!("cannot read {s:?} with this time format: {e}");
    if parsed.offset().is_some() {
        let dt = parsed.to_datetime().map_err(unreadable)?;
        return from_chrono(&dt).ok_or_else(range);
    }
    if parsed.timestamp().is_some() {
        let naive = parsed
            .to_naive_datetime_with_offset(0)
            .map_err(unreadable)?;
        return from_chrono(&naive.and_utc()).ok_or_else(range);
    }
    let naive = match parsed.to_naive_datetime_with_offset(0) {
        Ok(n) => n,
        Err(e) => match parsed.to_naive_date() {
            Ok(d) => d.and_time(NaiveTime::MIN),
            Err(_) => return Err(unreadable(e)),
        },
    };
    let local = match tz.from_local_datetime(&naive) {
        LocalResult::Single(dt) => dt,
        // A wall time seen twice (the hour clocks go back): the first.
        LocalResult::Ambiguous(first, _) => first,
        LocalResult::None => {
            return Err(format!(
                "{s:?} does not exist in {} (clocks skipped it)",
                tz.name()
            ))
        }
    };
    from_chrono(&local).ok_or_else(range)
}

/// Formats `t` in `tz`.
pub(crate) fn format(t: EventTime, fmt: &Format, tz: Tz) -> Result<String, String> {
    use std::fmt::Write;
    let mut out = String::new();
    write!(
        out,
        "{}",
        utc(t).with_timezone(&tz).format_with_items(fmt.iter())
    )
    .map_err(|_| "the time format cannot be applied to this time".to_string())?;
    Ok(out)
}

/// The hour (0–23) of `t` in `tz`.
pub(crate) fn hour(t: EventTime, tz: Tz) -> i64 {
    i64::from(utc(t).with_timezone(&tz).hour())
}

/// The ISO weekday (1 = Monday … 7 = Sunday) of `t` in `tz`.
pub(crate) fn weekday(t: EventTime, tz: Tz) -> i64 {
    i64::from(utc(t).with_timezone(&tz).weekday().number_from_monday())
}

/// `t` moved by `nanos`, if it stays in range.
pub(crate) fn add_nanos(t: EventTime, nanos: i64) -> Option<EventTime> {
    t.unix_nanos()
        .checked_add(nanos)
        .map(EventTime::from_unix_nanos)
}

/// Fractional seconds as nanoseconds, if they fit. Whole seconds and the
/// fraction are converted apart: `1777636800.25 * 1e9` as one float product
/// would lose the last digits.
pub(crate) fn secs_to_nanos_f(secs: f64) -> Option<i64> {
    if !secs.is_finite() || secs.abs() > 1e13 {
        return None;
    }
    let whole = secs.floor();
    let frac = ((secs - whole) * 1e9).round() as i64;
    (whole as i64).checked_mul(1_000_000_000)?.checked_add(frac)
}

/// Whole seconds as nanoseconds, if they fit.
pub(crate) fn secs_to_nanos(secs: i64) -> Option<i64> {
    secs.checked_mul(1_000_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_format_round_trip() {
        let f = compile_format("%Y-%m-%d %H:%M:%S").unwrap();
        let t = parse("2026-03-29 01:30:00", &f, Tz::UTC).unwrap();
        assert_eq!(rfc3339(t), "2026-03-29T01:30:00Z");
        assert_eq!(format(t, &f, Tz::UTC).unwrap(), "2026-03-29 01:30:00");
        let london = zone("Europe/London").unwrap();
        // 01:30 on the spring-forward day does not exist in London.
        assert!(parse("2026-03-29 01:30:00", &f, london).is_err());
        let t = parse("2026-07-01 12:00:00", &f, london).unwrap();
        assert_eq!(rfc3339(t), "2026-07-01T11:00:00Z");
        assert_eq!(hour(t, london), 12);
        assert_eq!(hour(t, Tz::UTC), 11);
        assert_eq!(weekday(t, Tz::UTC), 3); // a Wednesday
    }

    #[test]
    fn dates_offsets_and_timestamps() {
        let d = compile_format("%d/%m/%Y").unwrap();
        assert_eq!(
            rfc3339(parse("02/01/2026", &d, Tz::UTC).unwrap()),
            "2026-01-02T00:00:00Z"
        );
        let z = compile_format("%Y-%m-%dT%H:%M:%S%z").unwrap();
        let t = parse("2026-01-02T03:04:05+0100", &z, zone("Asia/Tokyo").unwrap()).unwrap();
        assert_eq!(rfc3339(t), "2026-01-02T02:04:05Z");
        let s = compile_format("%s").unwrap();
        assert_eq!(
            parse("1700000000", &s, zone("Europe/Paris").unwrap()).unwrap(),
            EventTime::from_secs_nanos(1_700_000_000, 0)
        );
        assert!(compile_format("%Q").is_err());
        assert!(parse("yesterday", &d, Tz::UTC).is_err());
    }

    #[test]
    fn zones_and_suggestions() {
        assert!(zone("Europe/Londn").is_none());
        assert_eq!(nearest_zone("Europe/Londn"), Some("Europe/London"));
        assert_eq!(
            parse_rfc3339("2026-01-01T00:00:00.25+00:00").unwrap(),
            EventTime::from_secs_nanos(1_767_225_600, 250_000_000)
        );
        assert!(parse_rfc3339("2500-01-01T00:00:00Z").is_err());
        assert_eq!(secs_to_nanos_f(1.5), Some(1_500_000_000));
        assert_eq!(secs_to_nanos_f(1e300), None);
        assert_eq!(secs_to_nanos(i64::MAX), None);
    }
}
