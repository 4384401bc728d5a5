//! `format = "logfmt"`: `key=value` pairs separated by spaces, as Heroku,
//! Go's logfmt and many CLIs write: `level=info msg="user logged in"
//! user=42 admin`. Quoted values take the usual backslash escapes; a bare
//! key (no `=`) is `true`; values are strings (`types` converts them).

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::common::{non_empty_text, Common};
use crate::scan::Cursor;
use crate::{ParseError, Parsed, Parser};

/// Reads `key=value` pairs.
pub(crate) struct LogfmtParser {
    common: Common,
}

impl LogfmtParser {
    pub(crate) fn new(common: Common) -> Self {
        Self { common }
    }
}

fn is_space(c: u8) -> bool {
    c == b' ' || c == b'\t'
}

impl Parser for LogfmtParser {
    fn parse(&self, input: Bytes) -> Result<Parsed, ParseError> {
        let line = non_empty_text(&input)?;
        let b = line.as_bytes();
        let mut c = Cursor::new(line, "logfmt");
        let mut map = Map::new();
        loop {
            while c.peek().is_some_and(is_space) {
                c.advance_to(c.pos() + 1);
            }
            if c.at_end() {
                break;
            }
            let start = c.pos();
            let mut end = start;
            while let Some(&ch) = b.get(end) {
                if ch == b'=' || is_space(ch) {
                    break;
                }
                if ch == b'"' || ch < 0x20 || ch == 0x7f {
                    c.advance_to(end);
                    return Err(c.error(if ch == b'"' {
                        "unexpected `\"` in a key"
                    } else {
                        "control character in a key"
                    }));
                }
                end += 1;
            }
            if end == start {
                return Err(c.error("expected a key before `=`"));
            }
            let key = &line[start..end];
            c.advance_to(end);
            if !c.eat(b'=') {
                map.insert(key.to_string(), Value::Bool(true));
                continue;
            }
            let value = if c.peek() == Some(b'"') {
                let v = quoted(&mut c)?;
                if c.peek().is_some_and(|ch| !is_space(ch)) {
                    return Err(c.error("expected a space after the closing quote"));
                }
                v
            } else {
                let vstart = c.pos();
                let mut vend = vstart;
                while b.get(vend).is_some_and(|&ch| !is_space(ch)) {
                    vend += 1;
                }
                c.advance_to(vend);
                line[vstart..vend].to_string()
            };
            map.insert(key.to_string(), Value::String(value));
        }
        self.common.finish(map)
    }
}

/// A double-quoted value with JSON-style escapes (`\"`, `\\`, `\n`, `\t`,
/// `\r`, `\uXXXX`); an unknown escape is kept as written.
fn quoted(c: &mut Cursor<'_>) -> Result<String, ParseError> {
    let open = c.pos();
    c.expect(b'"', "`\"`")?;
    let rest = c.rest();
    let mut out = String::new();
    let mut chars = rest.char_indices();
    while let Some((i, ch)) = chars.next() {
        match ch {
            '"' => {
                c.advance_to(c.pos() + i + 1);
                return Ok(out);
            }
            '\\' => match chars.next() {
                Some((_, 'n')) => out.push('\n'),
                Some((_, 't')) => out.push('\t'),
                Some((_, 'r')) => out.push('\r'),
                Some((_, 'u')) => {
                    let hex: String = chars.by_ref().take(4).map(|(_, h)| h).collect();
                    match u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                        Some(u) if hex.len() == 4 => out.push(u),
                        _ => {
                            out.push_str("\\u");
                            out.push_str(&hex);
                        }
                    }
                }
                Some((_, e @ ('"' | '\\' | '/'))) => out.push(e),
                Some((_, other)) => {
                    out.push('\\');
                    out.push(other);
                }
                None => break,
            },
            other => out.push(other),
        }
    }
    Err(ParseError::new(format!(
        "logfmt: unterminated quoted value starting at byte {open}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(line: &str) -> Result<Value, ParseError> {
        LogfmtParser::new(Common::default())
            .parse(Bytes::copy_from_slice(line.as_bytes()))
            .map(|p| Value::Object(p.record.to_map().into_owned()))
    }

    #[test]
    fn real_lines() {
        // Heroku router.
        assert_eq!(
            parse(r#"at=info method=GET path="/" host=myapp.herokuapp.com request_id=8601b555 fwd="204.204.204.204" dyno=web.1 connect=1ms service=18ms status=200 bytes=13 protocol=https"#).unwrap(),
            json!({"at":"info","method":"GET","path":"/","host":"myapp.herokuapp.com",
                   "request_id":"8601b555","fwd":"204.204.204.204","dyno":"web.1",
                   "connect":"1ms","service":"18ms","status":"200","bytes":"13","protocol":"https"})
        );
        // Grafana / Go kit with escapes, a bare key and an empty value.
        assert_eq!(
            parse("t=2024-03-01T10:00:00+0000 lvl=eror msg=\"Request error\" error=\"open \\\"x\\\": no such file\\n\" cached empty=").unwrap(),
            json!({"t":"2024-03-01T10:00:00+0000","lvl":"eror","msg":"Request error",
                   "error":"open \"x\": no such file\n","cached":true,"empty":""})
        );
        assert_eq!(
            parse("k=\"caf\\u00e9 ☕\"").unwrap(),
            json!({"k": "café ☕"})
        );
    }

    #[test]
    fn malformed() {
        assert!(parse("a=\"open").unwrap_err().0.contains("unterminated"));
        assert!(parse("=x").unwrap_err().0.contains("expected a key"));
        assert!(parse("a=\"x\"y")
            .unwrap_err()
            .0
            .contains("after the closing quote"));
        assert!(parse("a\"b=1").unwrap_err().0.contains("in a key"));
        assert!(parse("a\u{1}=1").is_err());
        assert!(parse("   ").is_err());
    }
}
