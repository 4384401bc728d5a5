//! `format = "none"`: the whole line as one string field, for text that has
//! no structure worth parsing (or that a later `parse` filter handles).

use bytes::Bytes;
use ulog_engine::Record;

use crate::{ParseError, Parsed, Parser};

/// The whole input as one string field.
pub struct NoneParser {
    key: String,
}

impl NoneParser {
    /// A parser that puts each line under `key` (`message_key`).
    pub fn new(key: impl Into<String>) -> Self {
        Self { key: key.into() }
    }
}

impl Parser for NoneParser {
    fn parse(&self, input: Bytes) -> Result<Parsed, ParseError> {
        // Binary or mis-encoded lines are kept (invalid bytes become U+FFFD)
        // rather than lost: `none` is the format of last resort.
        let text = match String::from_utf8(Vec::from(input)) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        };
        let mut map = serde_json::Map::with_capacity(1);
        map.insert(self.key.clone(), serde_json::Value::String(text));
        Ok(Parsed {
            time: None,
            record: Record::Map(map),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_line_and_invalid_bytes() {
        let p = NoneParser::new("log");
        let r = p.parse(Bytes::from_static(b"kernel: a\xffb")).unwrap();
        assert_eq!(
            r.record.to_json_string(),
            "{\"log\":\"kernel: a\u{fffd}b\"}"
        );
    }
}
