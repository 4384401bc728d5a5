//! `format = "syslog"`, `"syslog_rfc5424"`, `"syslog_rfc3164"`: syslog
//! messages as sent over the network or written to files.
//!
//! - RFC 5424: `<PRI>1 TIMESTAMP HOST APP-NAME PROCID MSGID [SD] MSG`.
//! - RFC 3164 (BSD): `<PRI>Mmm dd hh:mm:ss HOST TAG[PID]: MSG`; also with an
//!   RFC 3339 timestamp instead (rsyslog's file format), without HOST (what
//!   local programs send to /dev/log), and without TAG.
//! - `syslog` tells them apart: `<PRI>1 ` (or `1 ` without PRI) is 5424.
//!
//! PRI is optional in all three, as lines read from a file have none.
//! Fields: `pri`, `facility` and `severity` (names), `host`, `ident`
//! (APP-NAME / TAG), `pid` (PROCID / PID, text), `msgid`,
//! `structured_data` (`{"id": {"param": "value"}}`) and `message`; a `-`
//! (NILVALUE) leaves its field out. The grammar is read with nom.

use bytes::Bytes;
use nom::bytes::complete::{tag, take_while1, take_while_m_n};
use nom::character::complete::char;
use nom::combinator::map_res;
use nom::multi::fold_many0;
use nom::sequence::{delimited, preceded, separated_pair};
use nom::IResult;
use serde_json::{Map, Value};

use crate::common::Common;
use crate::time::{
    digits, event_time, fraction, infer_year, month_from_abbr, parse_iso8601, Civil,
};
use crate::{ParseError, Parsed, Parser};

/// Which syslog grammar to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flavor {
    /// 5424 when the version `1` follows PRI, else 3164.
    Auto,
    /// RFC 5424 only.
    Rfc5424,
    /// RFC 3164 only.
    Rfc3164,
}

/// Parses syslog messages.
pub(crate) struct SyslogParser {
    flavor: Flavor,
    common: Common,
}

/// Facility names by number (RFC 5424 table 1, with the names syslog.h and
/// fluentd use for 12–15).
pub(crate) const FACILITIES: [&str; 24] = [
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv",
    "ftp", "ntp", "audit", "alert", "clock", "local0", "local1", "local2", "local3", "local4",
    "local5", "local6", "local7",
];

/// Severity names by number (RFC 5424 table 2, syslog.h spelling).
pub(crate) const SEVERITIES: [&str; 8] = [
    "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
];

type Res<'a, O> = IResult<&'a [u8], O>;

fn is_print(c: u8) -> bool {
    (33..=126).contains(&c)
}

fn pri(i: &[u8]) -> Res<'_, u8> {
    map_res(
        delimited(
            char('<'),
            take_while_m_n(1, 3, |c: u8| c.is_ascii_digit()),
            char('>'),
        ),
        |d: &[u8]| {
            let v = d.iter().fold(0u32, |v, c| v * 10 + u32::from(c - b'0'));
            u8::try_from(v).ok().filter(|v| *v <= 191).ok_or(())
        },
    )(i)
}

fn header_field(i: &[u8]) -> Res<'_, &[u8]> {
    take_while1(is_print)(i)
}

fn sd_name(i: &[u8]) -> Res<'_, &[u8]> {
    take_while1(|c| is_print(c) && c != b'=' && c != b']' && c != b'"')(i)
}

/// A PARAM-VALUE: `"..."` where `\"`, `\\` and `\]` are escapes and any other
/// backslash is kept (RFC 5424 section 6.3.3).
fn sd_value(i: &[u8]) -> Res<'_, String> {
    let (i, _) = char('"')(i)?;
    // Most values have no escapes: one copy of the slice.
    if let Some(end) = memchr::memchr2(b'"', b'\\', i) {
        if i[end] == b'"' {
            let v = String::from_utf8_lossy(&i[..end]).into_owned();
            return Ok((&i[end + 1..], v));
        }
    }
    let mut out = Vec::new();
    let mut k = 0;
    while k < i.len() {
        match i[k] {
            b'"' => return Ok((&i[k + 1..], String::from_utf8_lossy(&out).into_owned())),
            b'\\' if matches!(i.get(k + 1), Some(b'"' | b'\\' | b']')) => {
                out.push(i[k + 1]);
                k += 2;
            }
            c => {
                out.push(c);
                k += 1;
            }
        }
    }
    Err(nom::Err::Error(nom::error::Error::new(
        &i[i.len()..],
        nom::error::ErrorKind::Char,
    )))
}

fn sd_element(i: &[u8]) -> Res<'_, (String, Map<String, Value>)> {
    let (i, _) = char('[')(i)?;
    let (i, id) = sd_name(i)?;
    let (i, params) = fold_many0(
        preceded(char(' '), separated_pair(sd_name, char('='), sd_value)),
        Map::new,
        |mut m, (k, v)| {
            m.insert(String::from_utf8_lossy(k).into_owned(), Value::String(v));
            m
        },
    )(i)?;
    let (i, _) = char(']')(i)?;
    Ok((i, (String::from_utf8_lossy(id).into_owned(), params)))
}

/// Structured data: `-` or one or more elements.
fn structured_data(i: &[u8]) -> Res<'_, Option<Map<String, Value>>> {
    if let Ok((rest, _)) = tag::<_, _, nom::error::Error<&[u8]>>("-")(i) {
        return Ok((rest, None));
    }
    let (mut i, (id, params)) = sd_element(i)?;
    let mut map = Map::new();
    map.insert(id, Value::Object(params));
    while let Ok((rest, (id, params))) = sd_element(i) {
        map.insert(id, Value::Object(params));
        i = rest;
    }
    Ok((i, Some(map)))
}

/// A field as text, absent when it is the NILVALUE `-`.
fn text_field(b: &[u8]) -> Option<Value> {
    (b != b"-").then(|| Value::String(String::from_utf8_lossy(b).into_owned()))
}

/// The message: a UTF-8 BOM is dropped, invalid bytes become U+FFFD.
fn message(b: &[u8]) -> Value {
    let b = b.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(b);
    Value::String(String::from_utf8_lossy(b).into_owned())
}

impl SyslogParser {
    pub(crate) fn new(flavor: Flavor, common: Common) -> Self {
        Self { flavor, common }
    }

    fn error(&self, full: &[u8], at: &[u8], what: &str) -> ParseError {
        let pos = full.len() - at.len();
        ParseError::new(format!(
            "syslog: {what} at byte {pos} (near {})",
            crate::snippet(&at[..at.len().min(20)])
        ))
    }

    fn rfc5424(
        &self,
        full: &[u8],
        i: &[u8],
        map: &mut Map<String, Value>,
    ) -> Result<Option<ulog_engine::EventTime>, ParseError> {
        let fail = |at: &[u8], what: &str| self.error(full, at, what);
        let Ok((i, _)) = tag::<_, _, nom::error::Error<&[u8]>>("1 ")(i) else {
            return Err(fail(i, "expected version `1 ` (RFC 5424)"));
        };
        let mut fields = [&b""[..]; 5];
        let mut i = i;
        for (n, what) in ["timestamp", "hostname", "app-name", "procid", "msgid"]
            .iter()
            .enumerate()
        {
            let (rest, f) = header_field(i).map_err(|_| fail(i, &format!("expected {what}")))?;
            fields[n] = f;
            i = rest;
            if n < 4 {
                i = i
                    .strip_prefix(b" ")
                    .ok_or_else(|| fail(i, &format!("expected a space after {what}")))?;
            }
        }
        let [ts, host, app, procid, msgid] = fields;
        let time = if ts == b"-" {
            None
        } else {
            Some(
                parse_iso8601(ts, &self.common.zone)
                    .ok_or_else(|| fail(ts, "invalid RFC 3339 timestamp"))?,
            )
        };
        if let (Some(key), Some(_)) = (self.common.natural_time_key(), time) {
            map.insert(
                key.to_string(),
                Value::String(String::from_utf8_lossy(ts).into_owned()),
            );
        }
        for (key, value) in [
            ("host", host),
            ("ident", app),
            ("pid", procid),
            ("msgid", msgid),
        ] {
            if let Some(v) = text_field(value) {
                map.insert(key.to_string(), v);
            }
        }
        let Some(i) = i.strip_prefix(b" ") else {
            if i.is_empty() {
                return Ok(time);
            }
            return Err(fail(i, "expected a space before structured data"));
        };
        let (i, sd) = structured_data(i).map_err(|e| match e {
            nom::Err::Error(e) | nom::Err::Failure(e) => fail(e.input, "invalid structured data"),
            nom::Err::Incomplete(_) => fail(i, "truncated structured data"),
        })?;
        if let Some(sd) = sd {
            map.insert("structured_data".into(), Value::Object(sd));
        }
        match i.first() {
            None => {}
            Some(b' ') => {
                map.insert("message".into(), message(&i[1..]));
            }
            Some(_) => return Err(fail(i, "expected a space after structured data")),
        }
        Ok(time)
    }

    fn rfc3164(
        &self,
        full: &[u8],
        i: &[u8],
        map: &mut Map<String, Value>,
    ) -> Result<Option<ulog_engine::EventTime>, ParseError> {
        let fail = |at: &[u8], what: &str| self.error(full, at, what);
        let (time, ts_len) = if i.first().is_some_and(u8::is_ascii_digit) {
            // rsyslog's RFC 3339 file timestamps.
            let len = memchr::memchr(b' ', i).unwrap_or(i.len());
            let t = parse_iso8601(&i[..len], &self.common.zone)
                .ok_or_else(|| fail(i, "invalid RFC 3339 timestamp"))?;
            (t, len)
        } else {
            self.bsd_timestamp(i)
                .ok_or_else(|| fail(i, "expected a timestamp like `Feb  5 17:32:18`"))?
        };
        if let Some(key) = self.common.natural_time_key() {
            map.insert(
                key.to_string(),
                Value::String(String::from_utf8_lossy(&i[..ts_len]).into_owned()),
            );
        }
        let mut i = &i[ts_len..];
        if !i.is_empty() && i[0] != b' ' {
            return Err(fail(i, "expected a space after the timestamp"));
        }
        while i.first() == Some(&b' ') {
            i = &i[1..];
        }
        // HOST, unless the first word is already the tag (`sshd[42]:`).
        let word = |b: &[u8]| b.iter().position(|&c| c == b' ').unwrap_or(b.len());
        let first = &i[..word(i)];
        let is_tag = |w: &[u8]| w.ends_with(b":") || (w.contains(&b'[') && w.ends_with(b"]"));
        if !first.is_empty() && !is_tag(first) && i.len() > first.len() {
            map.insert(
                "host".into(),
                Value::String(String::from_utf8_lossy(first).into_owned()),
            );
            i = &i[first.len() + 1..];
        }
        let w = &i[..word(i)];
        if is_tag(w) && w.len() > 1 {
            let tag = w.strip_suffix(b":").unwrap_or(w);
            let (ident, pid) = match memchr::memchr(b'[', tag) {
                Some(open) if tag.ends_with(b"]") => {
                    (&tag[..open], Some(&tag[open + 1..tag.len() - 1]))
                }
                _ => (tag, None),
            };
            if !ident.is_empty() {
                map.insert(
                    "ident".into(),
                    Value::String(String::from_utf8_lossy(ident).into_owned()),
                );
            }
            if let Some(pid) = pid.filter(|p| !p.is_empty()) {
                map.insert(
                    "pid".into(),
                    Value::String(String::from_utf8_lossy(pid).into_owned()),
                );
            }
            i = &i[w.len()..];
            if i.first() == Some(&b' ') {
                i = &i[1..];
            }
        }
        map.insert("message".into(), message(i));
        Ok(Some(time))
    }

    /// `Mmm dd hh:mm:ss[.frac]` (day space-padded or not); the year is
    /// inferred. Returns the time and the bytes used.
    fn bsd_timestamp(&self, b: &[u8]) -> Option<(ulog_engine::EventTime, usize)> {
        let month = month_from_abbr(b.get(..3)?)?;
        if b.get(3) != Some(&b' ') {
            return None;
        }
        let mut at = 4;
        if b.get(at) == Some(&b' ') {
            at += 1;
        }
        let (day, used) = match digits(b, at, 2) {
            Some(d) => (d, 2),
            None => (digits(b, at, 1)?, 1),
        };
        at += used;
        if b.get(at) != Some(&b' ') || b.get(at + 3) != Some(&b':') || b.get(at + 6) != Some(&b':')
        {
            return None;
        }
        let hour = digits(b, at + 1, 2)?;
        let minute = digits(b, at + 4, 2)?;
        let second = digits(b, at + 7, 2)?;
        at += 9;
        let mut nanos = 0;
        if b.get(at) == Some(&b'.') {
            let (n, used) = fraction(b, at + 1);
            if used > 0 {
                nanos = n;
                at += 1 + used;
            }
        }
        let civil = Civil {
            year: 0,
            month,
            day,
            hour,
            minute,
            second,
        };
        let secs = infer_year(&self.common.zone, civil)?;
        Some((event_time(secs, nanos)?, at))
    }
}

impl Parser for SyslogParser {
    fn parse(&self, input: Bytes) -> Result<Parsed, ParseError> {
        let mut full: &[u8] = &input;
        while let Some(rest) = full
            .strip_suffix(b"\n")
            .or_else(|| full.strip_suffix(b"\r"))
        {
            full = rest;
        }
        if full.is_empty() {
            return Err(ParseError::new("syslog: empty message"));
        }
        let mut map = Map::with_capacity(10);
        let i = if full[0] == b'<' {
            let (rest, pri) = pri(full)
                .map_err(|_| self.error(full, full, "invalid PRI (expected `<0>` to `<191>`)"))?;
            map.insert("pri".into(), Value::from(pri));
            map.insert(
                "facility".into(),
                Value::from(FACILITIES[usize::from(pri >> 3)]),
            );
            map.insert(
                "severity".into(),
                Value::from(SEVERITIES[usize::from(pri & 7)]),
            );
            rest
        } else {
            full
        };
        let is_5424 = match self.flavor {
            Flavor::Rfc5424 => true,
            Flavor::Rfc3164 => false,
            Flavor::Auto => i.starts_with(b"1 "),
        };
        let time = if is_5424 {
            self.rfc5424(full, i, &mut map)?
        } else {
            self.rfc3164(full, i, &mut map)?
        };
        self.common.finish_natural(map, time)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(
        flavor: Flavor,
        line: &[u8],
    ) -> Result<(Option<ulog_engine::EventTime>, Value), ParseError> {
        SyslogParser::new(flavor, Common::default())
            .parse(Bytes::copy_from_slice(line))
            .map(|p| (p.time, Value::Object(p.record.to_map().into_owned())))
    }

    #[test]
    fn rfc5424_examples_from_the_rfc() {
        let (t, r) = parse(
            Flavor::Auto,
            b"<34>1 2003-10-11T22:14:15.003Z mymachine.example.com su - ID47 - \xEF\xBB\xBF'su root' failed for lonvick on /dev/pts/8",
        )
        .unwrap();
        let t = t.unwrap();
        assert_eq!((t.secs(), t.subsec_nanos()), (1_065_910_455, 3_000_000));
        assert_eq!(
            r,
            json!({"pri": 34, "facility": "auth", "severity": "crit", "host": "mymachine.example.com",
                   "ident": "su", "msgid": "ID47", "message": "'su root' failed for lonvick on /dev/pts/8"})
        );
        let (_, r) = parse(
            Flavor::Rfc5424,
            br#"<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 iut="3" eventSource="Application" eventID="1011"][examplePriority@32473 class="high"] An application event log entry..."#,
        )
        .unwrap();
        assert_eq!(
            r,
            json!({"pri": 165, "facility": "local4", "severity": "notice", "host": "mymachine.example.com",
                   "ident": "evntslog", "msgid": "ID47",
                   "structured_data": {"exampleSDID@32473": {"iut": "3", "eventSource": "Application", "eventID": "1011"},
                                       "examplePriority@32473": {"class": "high"}},
                   "message": "An application event log entry..."})
        );
        // No message, escaped SD values, no PRI (as read from a file).
        let (t, r) = parse(
            Flavor::Auto,
            br#"1 - host app 123 - [a@1 v="q\"b\]c\\d\x"]"#,
        )
        .unwrap();
        assert_eq!(t, None);
        assert_eq!(
            r,
            json!({"host": "host", "ident": "app", "pid": "123",
                   "structured_data": {"a@1": {"v": "q\"b]c\\d\\x"}}})
        );
    }

    #[test]
    fn rfc3164_variants() {
        let (t, r) = parse(
            Flavor::Auto,
            b"<34>Oct 11 22:14:15 mymachine su: 'su root' failed for lonvick on /dev/pts/8",
        )
        .unwrap();
        assert!(t.is_some());
        assert_eq!(
            r,
            json!({"pri": 34, "facility": "auth", "severity": "crit", "host": "mymachine",
                   "ident": "su", "message": "'su root' failed for lonvick on /dev/pts/8"})
        );
        // A /var/log/syslog line: no PRI, space-padded day, pid.
        let (_, r) = parse(
            Flavor::Rfc3164,
            b"Feb  5 17:32:18 web-1 sshd[1234]: Accepted publickey for deploy from 10.0.0.5 port 52144 ssh2",
        )
        .unwrap();
        assert_eq!(
            r,
            json!({"host": "web-1", "ident": "sshd", "pid": "1234",
                   "message": "Accepted publickey for deploy from 10.0.0.5 port 52144 ssh2"})
        );
        // rsyslog's high-precision file format.
        let (t, r) = parse(
            Flavor::Auto,
            b"2024-03-01T10:00:00.123456+01:00 db-2 postgres[99]: checkpoint complete",
        )
        .unwrap();
        let t = t.unwrap();
        assert_eq!((t.secs(), t.subsec_nanos()), (1_709_283_600, 123_456_000));
        assert_eq!(r["ident"], "postgres");
        // Sent to /dev/log: no host.
        let (_, r) = parse(Flavor::Auto, b"<13>Mar  1 10:00:00 myprog[7]: hello").unwrap();
        assert_eq!(
            r,
            json!({"pri": 13, "facility": "user", "severity": "notice",
                             "ident": "myprog", "pid": "7", "message": "hello"})
        );
    }

    #[test]
    fn year_is_inferred_for_3164() {
        let now = ulog_engine::EventTime::now();
        let (t, _) = parse(Flavor::Rfc3164, b"Jan  1 00:00:00 h x: y").unwrap();
        let t = t.unwrap();
        assert!(t.secs() <= now.secs() + 86_400 && t.secs() > now.secs() - 366 * 86_400);
    }

    #[test]
    fn malformed() {
        for (line, what) in [
            (&b"<192>1 - - - - -"[..], "PRI"),
            (b"<12", "PRI"),
            (b"<34>1 2003-13-11T22:14:15Z h a p m -", "timestamp"),
            (b"<34>1 2003-10-11T22:14:15Z h a", "space after"),
            (b"<34>1 - h a p m [id x=\"1\"", "structured data"),
            (b"<34>1 - h a p m [id x=1]", "structured data"),
            (b"<34>1 - h a p m -x", "space after structured data"),
            (b"<34>Foo 11 22:14:15 h su: x", "timestamp"),
            (b"<34>Oct 11 22:14", "timestamp"),
            (b"", "empty"),
        ] {
            let e = parse(Flavor::Auto, line).unwrap_err();
            assert!(
                e.0.contains(what),
                "{:?}: {e}",
                String::from_utf8_lossy(line)
            );
        }
        assert!(parse(Flavor::Rfc5424, b"<34>Oct 11 22:14:15 h su: x")
            .unwrap_err()
            .0
            .contains("version"));
    }
}
