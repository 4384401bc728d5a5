//! `format = "ltsv"`: Labeled Tab-separated Values
//! (`time:...<TAB>host:...<TAB>req:...`), a common access-log format in
//! Japan. Each field is `label:value`; the value may hold further `:`.

use bytes::Bytes;
use serde_json::{Map, Value};
use ulog_engine::{BuildError, Params};

use crate::common::{non_empty_text, Common};
use crate::{ParseError, Parsed, Parser, Snip};

/// Splits on `delimiter`, then each field on its first `label_delimiter`.
pub(crate) struct LtsvParser {
    delimiter: u8,
    label_delimiter: u8,
    common: Common,
}

/// Reads a one-character delimiter parameter.
pub(crate) fn one_byte(params: &Params, name: &str, default: u8) -> Result<u8, BuildError> {
    let value = match params.get(name) {
        None => return Ok(default),
        Some(_) => params.opt_str(name)?,
    };
    match value.map(str::as_bytes) {
        None => Ok(default),
        Some([b]) if b.is_ascii() && *b != b'"' => Ok(*b),
        Some(_) => Err(BuildError::param(
            name,
            format!("must be one ASCII character other than `\"`, got {value:?}"),
        )),
    }
}

impl LtsvParser {
    pub(crate) fn from_params(params: &Params, common: Common) -> Result<Self, BuildError> {
        Ok(Self {
            delimiter: one_byte(params, "delimiter", b'\t')?,
            label_delimiter: one_byte(params, "label_delimiter", b':')?,
            common,
        })
    }
}

impl Parser for LtsvParser {
    fn parse(&self, input: Bytes) -> Result<Parsed, ParseError> {
        let line = non_empty_text(&input)?;
        let mut map = Map::new();
        for (n, field) in line.split(self.delimiter as char).enumerate() {
            if field.is_empty() {
                continue;
            }
            let Some(at) = memchr::memchr(self.label_delimiter, field.as_bytes()) else {
                return Err(ParseError::new(format!(
                    "ltsv: field {} ({:?}) has no label (no `{}`)",
                    n + 1,
                    Snip(field),
                    self.label_delimiter as char
                )));
            };
            if at == 0 {
                return Err(ParseError::new(format!(
                    "ltsv: field {} ({:?}) has an empty label",
                    n + 1,
                    Snip(field)
                )));
            }
            map.insert(
                field[..at].to_string(),
                Value::String(field[at + 1..].to_string()),
            );
        }
        self.common.finish(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parser() -> LtsvParser {
        LtsvParser {
            delimiter: b'\t',
            label_delimiter: b':',
            common: Common::default(),
        }
    }

    #[test]
    fn reads_a_real_access_line() {
        let line = "time:[28/Feb/2013:12:00:00 +0900]\thost:192.168.0.1\treq:GET /list HTTP/1.1\tstatus:200\tsize:5316\treferer:-\tua:Mozilla/5.0\treqtime:0.030\tapptime:0.020\tvhost:example.com";
        let r = parser().parse(Bytes::from(line)).unwrap();
        assert_eq!(
            Value::Object(r.record.to_map().into_owned()),
            json!({"time": "[28/Feb/2013:12:00:00 +0900]", "host": "192.168.0.1",
                   "req": "GET /list HTTP/1.1", "status": "200", "size": "5316",
                   "referer": "-", "ua": "Mozilla/5.0", "reqtime": "0.030",
                   "apptime": "0.020", "vhost": "example.com"})
        );
    }

    #[test]
    fn fields_without_labels_fail() {
        let e = parser()
            .parse(Bytes::from_static(b"a:1\tbroken\tc:3"))
            .unwrap_err();
        assert!(e.0.contains("field 2") && e.0.contains("broken"), "{e}");
        assert!(parser().parse(Bytes::from_static(b":x")).is_err());
        assert!(parser().parse(Bytes::from_static(b"")).is_err());
        // Trailing tab and CRLF are fine.
        let r = parser().parse(Bytes::from_static(b"a:1\t\r")).unwrap();
        assert_eq!(r.record.to_json_string(), r#"{"a":"1"}"#);
    }
}
