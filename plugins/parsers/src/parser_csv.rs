//! `format = "csv"` and `format = "tsv"`: delimited columns named by
//! `keys`. Fields may be quoted as RFC 4180 says (`"a ""quoted"" word"`,
//! delimiters and quotes inside quotes); the number of fields must equal the
//! number of keys, which catches a wrong `delimiter` early.

use std::borrow::Cow;

use bytes::Bytes;
use serde_json::{Map, Value};
use ulog_engine::{BuildError, Params};

use crate::common::{non_empty_text, Common};
use crate::parser_ltsv::one_byte;
use crate::{ParseError, Parsed, Parser};

/// Splits each line into `keys.len()` fields.
pub(crate) struct CsvParser {
    keys: Vec<String>,
    delimiter: u8,
    common: Common,
}

impl CsvParser {
    pub(crate) fn from_params(
        params: &Params,
        default_delimiter: u8,
        common: Common,
    ) -> Result<Self, BuildError> {
        let keys = params.str_list("keys")?;
        if keys.is_empty() {
            return Err(BuildError::param(
                "keys",
                format!(
                    "format {:?} needs `keys`, the column names: keys = [\"host\", \"code\"]",
                    params.str("format").unwrap_or("csv")
                ),
            ));
        }
        Ok(Self::new(
            keys,
            one_byte(params, "delimiter", default_delimiter)?,
            common,
        ))
    }

    pub(crate) fn new(keys: Vec<String>, delimiter: u8, common: Common) -> Self {
        Self {
            keys,
            delimiter,
            common,
        }
    }

    /// Reads one field starting at `at`; returns it and where the next one
    /// starts (`None` at the end of the line).
    fn field<'a>(
        &self,
        line: &'a str,
        at: usize,
    ) -> Result<(Cow<'a, str>, Option<usize>), ParseError> {
        let b = line.as_bytes();
        if b.get(at) != Some(&b'"') {
            return Ok(match memchr::memchr(self.delimiter, &b[at..]) {
                Some(i) => (Cow::Borrowed(&line[at..at + i]), Some(at + i + 1)),
                None => (Cow::Borrowed(&line[at..]), None),
            });
        }
        let start = at + 1;
        let mut i = start;
        let mut owned: Option<String> = None;
        loop {
            let Some(q) = memchr::memchr(b'"', &b[i..]) else {
                return Err(ParseError::new(format!(
                    "unterminated quoted field starting at byte {at}"
                )));
            };
            let q = i + q;
            if b.get(q + 1) == Some(&b'"') {
                // "" is one quote.
                owned.get_or_insert_with(String::new).push_str(&line[i..=q]);
                i = q + 2;
                continue;
            }
            let value = match owned {
                Some(mut s) => {
                    s.push_str(&line[i..q]);
                    Cow::Owned(s)
                }
                None => Cow::Borrowed(&line[start..q]),
            };
            return match b.get(q + 1) {
                None => Ok((value, None)),
                Some(&c) if c == self.delimiter => Ok((value, Some(q + 2))),
                Some(_) => Err(ParseError::new(format!(
                    "text after the closing quote of the field at byte {at} (expected `{}`)",
                    self.delimiter as char
                ))),
            };
        }
    }
}

impl Parser for CsvParser {
    fn parse(&self, input: Bytes) -> Result<Parsed, ParseError> {
        let line = non_empty_text(&input)?;
        let mut map = Map::with_capacity(self.keys.len());
        let mut at = Some(0);
        let mut n = 0;
        while let Some(pos) = at {
            let (value, next) = self.field(line, pos)?;
            let Some(key) = self.keys.get(n) else {
                return Err(ParseError::new(format!(
                    "more fields than the {} keys (is `delimiter` right?)",
                    self.keys.len()
                )));
            };
            map.insert(key.clone(), Value::String(value.into_owned()));
            n += 1;
            at = next;
        }
        if n != self.keys.len() {
            return Err(ParseError::new(format!(
                "{n} field{} where {} keys are declared (is `delimiter` right?)",
                if n == 1 { "" } else { "s" },
                self.keys.len()
            )));
        }
        self.common.finish(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keys(k: &[&str]) -> Vec<String> {
        k.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn rfc4180_quoting() {
        let p = CsvParser::new(
            keys(&["time", "user", "action", "detail"]),
            b',',
            Common::default(),
        );
        let r = p
            .parse(Bytes::from_static(
                br#"2024-03-01T10:00:00Z,alice,login,"from 10.0.0.1, ""trusted"" network""#,
            ))
            .unwrap();
        assert_eq!(
            Value::Object(r.record.to_map().into_owned()),
            json!({"time": "2024-03-01T10:00:00Z", "user": "alice", "action": "login",
                   "detail": "from 10.0.0.1, \"trusted\" network"})
        );
        let r = p.parse(Bytes::from_static(b"a,,\"\",d")).unwrap();
        assert_eq!(
            r.record.to_json_string(),
            r#"{"time":"a","user":"","action":"","detail":"d"}"#
        );
    }

    #[test]
    fn tsv_and_wrong_delimiters() {
        let p = CsvParser::new(keys(&["host", "code", "path"]), b'\t', Common::default());
        let r = p
            .parse(Bytes::from_static(b"10.1.2.3\t404\t/missing"))
            .unwrap();
        assert_eq!(
            r.record.to_json_string(),
            r#"{"host":"10.1.2.3","code":"404","path":"/missing"}"#
        );
        let e = p
            .parse(Bytes::from_static(b"10.1.2.3,404,/missing"))
            .unwrap_err();
        assert!(e.0.contains("1 field where 3 keys"), "{e}");
        let e = p.parse(Bytes::from_static(b"a\tb\tc\td")).unwrap_err();
        assert!(e.0.contains("more fields"), "{e}");
        let e = p.parse(Bytes::from_static(b"\"a\tb\tc")).unwrap_err();
        assert!(e.0.contains("unterminated"), "{e}");
        let e = p.parse(Bytes::from_static(b"\"a\"x\tb\tc")).unwrap_err();
        assert!(e.0.contains("after the closing quote"), "{e}");
    }
}
