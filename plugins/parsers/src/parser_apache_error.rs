//! `format = "apache_error"`: Apache's error log, 2.2 and 2.4 style:
//!
//! `[Fri Sep 09 10:42:29.902022 2011] [core:error] [pid 35708:tid 4328636416] [client 72.15.99.187] File does not exist: ...`
//!
//! Fields: `level`, `module` (2.4), `pid`, `tid`, `client`, `message`.
//! The time has no offset: it is read in `time_zone`.

use bytes::Bytes;
use serde_json::{Map, Value};
use ulog_engine::EventTime;

use crate::common::{non_empty_text, Common};
use crate::scan::Cursor;
use crate::time::{digits, event_time, fraction, month_from_abbr, Civil, Zone};
use crate::{ParseError, Parsed, Parser};

/// Reads Apache error-log lines.
pub(crate) struct ApacheErrorParser {
    common: Common,
}

impl ApacheErrorParser {
    pub(crate) fn new(common: Common) -> Self {
        Self { common }
    }
}

/// `Fri Sep 09 10:42:29.902022 2011` (fraction optional).
fn error_log_time(b: &[u8], zone: &Zone) -> Option<EventTime> {
    if b.get(3) != Some(&b' ') || b.get(7) != Some(&b' ') {
        return None;
    }
    let month = month_from_abbr(b.get(4..7)?)?;
    let day =
        digits(b, 8, 2).or_else(|| (b.get(8) == Some(&b' ')).then(|| digits(b, 9, 1)).flatten())?;
    if b.get(10) != Some(&b' ') || b.get(13) != Some(&b':') || b.get(16) != Some(&b':') {
        return None;
    }
    let hour = digits(b, 11, 2)?;
    let minute = digits(b, 14, 2)?;
    let second = digits(b, 17, 2)?;
    let mut at = 19;
    let mut nanos = 0;
    if b.get(at) == Some(&b'.') {
        let (n, used) = fraction(b, at + 1);
        nanos = n;
        at += 1 + used;
    }
    if b.get(at) != Some(&b' ') || b.len() != at + 5 {
        return None;
    }
    let year = digits(b, at + 1, 4)?;
    let civil = Civil {
        year: i64::from(year),
        month,
        day,
        hour,
        minute,
        second,
    };
    event_time(zone.civil_to_secs(civil)?, nanos)
}

impl Parser for ApacheErrorParser {
    fn parse(&self, input: Bytes) -> Result<Parsed, ParseError> {
        let line = non_empty_text(&input)?;
        let mut c = Cursor::new(line, "apache_error");
        let mut map = Map::new();
        c.expect(b'[', "`[` opening the time")?;
        let time_text = c.until(b']');
        let time = error_log_time(time_text.as_bytes(), &self.common.zone).ok_or_else(|| {
            c.error(&format!(
                "invalid time {time_text:?} (expected Fri Sep 09 10:42:29.902022 2011)"
            ))
        })?;
        c.expect(b']', "`]` closing the time")?;
        if let Some(key) = self.common.natural_time_key() {
            map.insert(key.to_string(), Value::String(time_text.to_string()));
        }
        c.expect(b' ', "a space after the time")?;
        c.expect(b'[', "`[` opening the level")?;
        let level = c.until(b']');
        c.expect(b']', "`]` closing the level")?;
        match level.split_once(':') {
            Some((module, level)) => {
                map.insert("module".into(), Value::String(module.to_string()));
                map.insert("level".into(), Value::String(level.to_string()));
            }
            None => {
                map.insert("level".into(), Value::String(level.to_string()));
            }
        }
        loop {
            let rest = c.rest();
            if let Some(pid) = rest.strip_prefix(" [pid ") {
                let end = pid
                    .find(']')
                    .ok_or_else(|| c.error("unterminated [pid ...]"))?;
                let (pid, tid) = match pid[..end].split_once(":tid ") {
                    Some((p, t)) => (p, Some(t)),
                    None => (&pid[..end], None),
                };
                map.insert("pid".into(), Value::String(pid.to_string()));
                if let Some(tid) = tid {
                    map.insert("tid".into(), Value::String(tid.to_string()));
                }
                c.advance_to(c.pos() + " [pid ".len() + end + 1);
            } else if let Some(client) = rest.strip_prefix(" [client ") {
                let end = client
                    .find(']')
                    .ok_or_else(|| c.error("unterminated [client ...]"))?;
                map.insert("client".into(), Value::String(client[..end].to_string()));
                c.advance_to(c.pos() + " [client ".len() + end + 1);
            } else {
                break;
            }
        }
        c.spaces();
        map.insert("message".into(), Value::String(c.rest().to_string()));
        self.common.finish_natural(map, Some(time))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(line: &str) -> Result<(EventTime, Value), ParseError> {
        ApacheErrorParser::new(Common::default())
            .parse(Bytes::copy_from_slice(line.as_bytes()))
            .map(|p| {
                (
                    p.time.unwrap(),
                    Value::Object(p.record.to_map().into_owned()),
                )
            })
    }

    #[test]
    fn apache_22_and_24_lines() {
        let (t, r) = parse("[Wed Oct 11 14:32:52 2000] [error] [client 127.0.0.1] client denied by server configuration: /export/home/live/ap/htdocs/test").unwrap();
        assert_eq!(t.secs(), 971_274_772);
        assert_eq!(
            r,
            json!({"level": "error", "client": "127.0.0.1",
                   "message": "client denied by server configuration: /export/home/live/ap/htdocs/test"})
        );
        let (t, r) = parse("[Fri Sep 09 10:42:29.902022 2011] [core:error] [pid 35708:tid 4328636416] [client 72.15.99.187] File does not exist: /usr/local/apache2/htdocs/favicon.ico").unwrap();
        assert_eq!(t.subsec_nanos(), 902_022_000);
        assert_eq!(
            r,
            json!({"module": "core", "level": "error", "pid": "35708", "tid": "4328636416",
                   "client": "72.15.99.187", "message": "File does not exist: /usr/local/apache2/htdocs/favicon.ico"})
        );
        let (_, r) = parse("[Sun Mar 03 10:00:00.123456 2024] [mpm_event:notice] [pid 1:tid 140000] AH00489: Apache/2.4.58 (Unix) configured -- resuming normal operations").unwrap();
        assert_eq!(
            r["message"],
            "AH00489: Apache/2.4.58 (Unix) configured -- resuming normal operations"
        );
    }

    #[test]
    fn malformed() {
        assert!(parse("Wed Oct 11 14:32:52 2000 error")
            .unwrap_err()
            .0
            .contains("opening the time"));
        assert!(parse("[Wed Oct 11 14:32 2000] [error] x")
            .unwrap_err()
            .0
            .contains("invalid time"));
        assert!(parse("[Wed Oct 11 14:32:52 2000]")
            .unwrap_err()
            .0
            .contains("space after the time"));
        assert!(parse("[Wed Oct 11 14:32:52 2000] [error")
            .unwrap_err()
            .0
            .contains("closing the level"));
    }
}
