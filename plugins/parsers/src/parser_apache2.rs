//! `format = "apache2"`: Apache's combined log format (and the common
//! format, which stops after the size):
//!
//! `%h %l %u %t "%r" %>s %b "%{Referer}i" "%{User-agent}i"`
//!
//! Fields: `host`, `user`, `method`, `path`, `protocol`, `code` (integer),
//! `size` (integer), `referer`, `agent`; a `-` is null. The time comes from
//! `%t`. The line is scanned by hand: this is the hottest format there is.
//! nginx's default format is the same grammar (see `parser_nginx`).

use std::borrow::Cow;

use bytes::Bytes;
use serde_json::{Map, Value};
use ulog_engine::EventTime;

use crate::common::{non_empty_text, Common};
use crate::scan::Cursor;
use crate::time::{digits, event_time, month_from_abbr, parse_offset, Civil};
use crate::{ParseError, Parsed, Parser};

/// Reads access-log lines in the combined / common grammar.
pub(crate) struct AccessLogParser {
    /// The format name, for error messages.
    name: &'static str,
    /// The field that receives the client address.
    host_key: &'static str,
    /// Whether one more quoted field may follow the agent (nginx's
    /// `"$http_x_forwarded_for"`, a very common addition).
    forwarded_for: bool,
    common: Common,
}

impl AccessLogParser {
    pub(crate) fn apache2(common: Common) -> Self {
        Self {
            name: "apache2",
            host_key: "host",
            forwarded_for: false,
            common,
        }
    }

    pub(crate) fn nginx(common: Common) -> Self {
        Self {
            name: "nginx",
            host_key: "remote",
            forwarded_for: true,
            common,
        }
    }
}

/// `10/Oct/2000:13:55:36 -0700`.
pub(crate) fn apache_time(b: &[u8]) -> Option<EventTime> {
    let day = digits(b, 0, 2)?;
    if b.get(2) != Some(&b'/') || b.get(6) != Some(&b'/') || b.get(11) != Some(&b':') {
        return None;
    }
    let month = month_from_abbr(b.get(3..6)?)?;
    let year = digits(b, 7, 4)?;
    let hour = digits(b, 12, 2)?;
    let minute = digits(b, 15, 2)?;
    let second = digits(b, 18, 2)?;
    if b.get(14) != Some(&b':') || b.get(17) != Some(&b':') || b.get(20) != Some(&b' ') {
        return None;
    }
    let (offset, used) = parse_offset(b.get(21..)?)?;
    if 21 + used != b.len() {
        return None;
    }
    let civil = Civil {
        year: i64::from(year),
        month,
        day,
        hour,
        minute,
        second,
    };
    event_time(civil.secs()? - i64::from(offset), 0)
}

/// A value that is null when written as `-`.
fn dash_null(s: &str) -> Value {
    if s == "-" {
        Value::Null
    } else {
        Value::String(s.to_string())
    }
}

fn dash_null_cow(s: Cow<'_, str>) -> Value {
    if s == "-" {
        Value::Null
    } else {
        Value::String(s.into_owned())
    }
}

impl Parser for AccessLogParser {
    fn parse(&self, input: Bytes) -> Result<Parsed, ParseError> {
        let line = non_empty_text(&input)?;
        let mut c = Cursor::new(line, self.name);
        let mut map = Map::with_capacity(10);
        let host = c.token("the client address")?;
        map.insert(self.host_key.to_string(), dash_null(host));
        c.expect(b' ', "a space after the client address")?;
        c.token("the identity (%l)")?;
        c.expect(b' ', "a space after the identity")?;
        let user = c.token("the user")?;
        c.expect(b' ', "a space after the user")?;
        c.expect(b'[', "`[` opening the time")?;
        let time_text = c.until(b']');
        let time = apache_time(time_text.as_bytes()).ok_or_else(|| {
            c.error(&format!(
                "invalid time {time_text:?} (expected 10/Oct/2000:13:55:36 -0700)"
            ))
        })?;
        c.expect(b']', "`]` closing the time")?;
        if let Some(key) = self.common.natural_time_key() {
            map.insert(key.to_string(), Value::String(time_text.to_string()));
        }
        map.insert("user".into(), dash_null(user));
        c.expect(b' ', "a space after the time")?;
        let request = c.quoted("the request")?;
        let (method, path, protocol) = split_request(&request);
        map.insert("method".into(), method);
        map.insert("path".into(), path);
        map.insert("protocol".into(), protocol);
        c.expect(b' ', "a space after the request")?;
        let code = c.token("the status code")?;
        let code: u16 = code
            .parse()
            .map_err(|_| c.error(&format!("status code {code:?} is not a number")))?;
        map.insert("code".into(), Value::from(code));
        c.expect(b' ', "a space after the status code")?;
        let size = c.token("the size")?;
        let size = if size == "-" {
            Value::Null
        } else {
            Value::from(
                size.parse::<u64>()
                    .map_err(|_| c.error(&format!("size {size:?} is not a number")))?,
            )
        };
        map.insert("size".into(), size);
        if c.spaces() > 0 && !c.at_end() {
            // Combined: referer and agent.
            let referer = c.quoted("the referer")?;
            map.insert("referer".into(), dash_null_cow(referer));
            c.expect(b' ', "a space after the referer")?;
            let agent = c.quoted("the user agent")?;
            map.insert("agent".into(), dash_null_cow(agent));
            if self.forwarded_for && c.spaces() > 0 && c.peek() == Some(b'"') {
                let xff = c.quoted("the forwarded-for address")?;
                map.insert("http_x_forwarded_for".into(), dash_null_cow(xff));
            }
            c.spaces();
        }
        if !c.at_end() {
            return Err(c.error(
                "unexpected text after the last field (use format regex for custom log formats)",
            ));
        }
        self.common.finish_natural(map, Some(time))
    }
}

/// `GET /path HTTP/1.1` → method, path, protocol; `-` or an unreadable
/// request gives nulls (the path keeps whatever text there was).
fn split_request(r: &str) -> (Value, Value, Value) {
    if r == "-" || r.is_empty() {
        return (Value::Null, Value::Null, Value::Null);
    }
    let Some((method, rest)) = r.split_once(' ') else {
        // A request that is not `METHOD PATH ...` (garbage a scanner sent).
        return (Value::Null, Value::String(r.to_string()), Value::Null);
    };
    match rest.rsplit_once(' ') {
        Some((path, proto)) if proto.starts_with("HTTP/") => (
            Value::String(method.to_string()),
            Value::String(path.to_string()),
            Value::String(proto.to_string()),
        ),
        _ => (
            Value::String(method.to_string()),
            Value::String(rest.to_string()),
            Value::Null,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(line: &str) -> Result<(EventTime, Value), ParseError> {
        AccessLogParser::apache2(Common::default())
            .parse(Bytes::copy_from_slice(line.as_bytes()))
            .map(|p| {
                (
                    p.time.unwrap(),
                    Value::Object(p.record.to_map().into_owned()),
                )
            })
    }

    #[test]
    fn combined_and_common() {
        let (t, r) = parse(r#"127.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 200 2326 "http://www.example.com/start.html" "Mozilla/4.08 [en] (Win98; I ;Nav)""#).unwrap();
        assert_eq!(t.secs(), 971_211_336);
        assert_eq!(
            r,
            json!({"host": "127.0.0.1", "user": "frank", "method": "GET", "path": "/apache_pb.gif",
                   "protocol": "HTTP/1.0", "code": 200, "size": 2326,
                   "referer": "http://www.example.com/start.html",
                   "agent": "Mozilla/4.08 [en] (Win98; I ;Nav)"})
        );
        let (_, r) = parse(
            r#"192.168.1.20 - - [28/Jul/2006:10:27:10 -0300] "GET /cgi-bin/try/ HTTP/1.0" 304 -"#,
        )
        .unwrap();
        assert_eq!(
            r,
            json!({"host": "192.168.1.20", "user": null, "method": "GET", "path": "/cgi-bin/try/",
                   "protocol": "HTTP/1.0", "code": 304, "size": null})
        );
        // 408 with no request, escaped quotes in the agent.
        let (_, r) =
            parse(r#"10.0.0.9 - - [01/Mar/2024:00:00:01 +0000] "-" 408 - "-" "curl \"x\"""#)
                .unwrap();
        assert_eq!(r["method"], Value::Null);
        assert_eq!(r["referer"], Value::Null);
        assert_eq!(r["agent"], "curl \"x\"");
    }

    #[test]
    fn malformed() {
        for (line, what) in [
            (
                r#"127.0.0.1 - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.0" abc 1"#,
                "status code",
            ),
            (
                r#"127.0.0.1 - - [10/Oct/2000:13:55:36] "GET / HTTP/1.0" 200 1"#,
                "invalid time",
            ),
            (
                r#"127.0.0.1 - - [10/Foo/2000:13:55:36 -0700] "GET / HTTP/1.0" 200 1"#,
                "invalid time",
            ),
            (
                r#"127.0.0.1 - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.0 200 1"#,
                "unterminated",
            ),
            (
                r#"127.0.0.1 - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.0" 200"#,
                "space after the status",
            ),
            (
                r#"127.0.0.1 - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.0" 200 1 "r" "a" extra"#,
                "unexpected text",
            ),
            ("127.0.0.1", "space after the client"),
            ("", "empty"),
        ] {
            let e = parse(line).unwrap_err();
            assert!(e.0.contains(what), "{line}: {e}");
        }
    }
}
