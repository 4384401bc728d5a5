//! `format = "json"`: one JSON object per line or message.
//!
//! Without `time_key` or `types` the line is only validated and kept as its
//! bytes ([`Record::Raw`]): outputs write it back untouched and no tree is
//! built. With `time_key` and `keep_time_key` the time field is found by a
//! streaming pass that skips every other value, so the record stays raw too.
//! Only removing the time field or converting types needs the map.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::{Map, Value};
use ulog_engine::Record;

use crate::common::Common;
use crate::{ParseError, Parsed, Parser};

/// One JSON object per input, kept as its validated text (parsed lazily).
pub struct JsonParser;

impl Parser for JsonParser {
    fn parse(&self, input: Bytes) -> Result<Parsed, ParseError> {
        Record::from_json_bytes(input)
            .map(|record| Parsed { time: None, record })
            .map_err(|e| ParseError(e.to_string()))
    }
}

/// The json parser for the given options.
pub(crate) fn build(common: Common) -> Arc<dyn Parser> {
    if !common.needs_map() {
        Arc::new(JsonParser)
    } else if common.types.is_empty() && common.keep_time_key {
        Arc::new(JsonKeepTime { common })
    } else {
        Arc::new(JsonMap { common })
    }
}

/// Parses into a map to take the time field out or convert types.
struct JsonMap {
    common: Common,
}

impl Parser for JsonMap {
    fn parse(&self, input: Bytes) -> Result<Parsed, ParseError> {
        let map: Map<String, Value> = serde_json::from_slice(&input).map_err(|e| {
            ParseError::new(match e.classify() {
                serde_json::error::Category::Data => {
                    format!("a record must be a JSON object: {e}")
                }
                _ => format!("invalid JSON: {e}"),
            })
        })?;
        self.common.finish(map)
    }
}

/// Keeps the raw text and reads only the time field.
struct JsonKeepTime {
    common: Common,
}

impl Parser for JsonKeepTime {
    fn parse(&self, input: Bytes) -> Result<Parsed, ParseError> {
        let key = self.common.time_key.as_deref().unwrap_or("time");
        let mut de = serde_json::Deserializer::from_slice(&input);
        let found = FindField(key)
            .deserialize(&mut de)
            .and_then(|v| de.end().map(|()| v))
            .map_err(|e| {
                ParseError::new(match e.classify() {
                    serde_json::error::Category::Data => {
                        format!("a record must be a JSON object: {e}")
                    }
                    _ => format!("invalid JSON: {e}"),
                })
            })?;
        let time = match found {
            None => None,
            Some(v) => Some(
                self.common
                    .time_format
                    .parse_value(&v, &self.common.zone)
                    .map_err(|e| ParseError::new(format!("field `{key}`: {e}")))?,
            ),
        };
        Ok(Parsed {
            time,
            record: Record::Raw(input),
        })
    }
}

/// Walks a JSON object and returns the value of one top-level field,
/// skipping the others without building them.
struct FindField<'k>(&'k str);

impl<'de> DeserializeSeed<'de> for FindField<'_> {
    type Value = Option<Value>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for FindField<'_> {
    type Value = Option<Value>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(is_it) = map.next_key_seed(KeyIs(self.0))? {
            if is_it {
                found = Some(map.next_value::<Value>()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

/// A map key, compared with a wanted name without allocating.
struct KeyIs<'k>(&'k str);

impl<'de> DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyIs<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<bool, E> {
        Ok(v == self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn common(time_key: &str, keep: bool) -> Common {
        Common {
            time_key: Some(time_key.into()),
            keep_time_key: keep,
            ..Common::default()
        }
    }

    #[test]
    fn plain_json_stays_raw() {
        let p = build(Common::default());
        let line = Bytes::from_static(br#"{"level":"info","msg":"started","port":8080}"#);
        let parsed = p.parse(line.clone()).unwrap();
        assert_eq!(parsed.time, None);
        assert!(matches!(&parsed.record, Record::Raw(b) if *b == line));
    }

    #[test]
    fn time_key_is_extracted_and_removed() {
        let p = build(common("time", false));
        let parsed = p
            .parse(Bytes::from_static(
                br#"{"time":"2024-03-01T12:00:00.5Z","level":"warn","msg":"disk 91% full"}"#,
            ))
            .unwrap();
        let t = parsed.time.unwrap();
        assert_eq!((t.secs(), t.subsec_nanos()), (1_709_294_400, 500_000_000));
        assert_eq!(
            parsed.record.to_map().into_owned(),
            json!({"level":"warn","msg":"disk 91% full"})
                .as_object()
                .unwrap()
                .clone()
        );
    }

    #[test]
    fn keep_time_key_keeps_the_raw_bytes() {
        let p = build(common("ts", true));
        let line =
            Bytes::from_static(br#"{"nested":{"ts":1},"ts":1700000000.25,"x":[1,{"ts":2}]}"#);
        let parsed = p.parse(line.clone()).unwrap();
        assert_eq!(parsed.time.unwrap().subsec_nanos(), 250_000_000);
        assert_eq!(parsed.time.unwrap().secs(), 1_700_000_000);
        assert!(matches!(&parsed.record, Record::Raw(b) if *b == line));
        // Missing time field: no time, still fine.
        let parsed = p.parse(Bytes::from_static(br#"{"a":1}"#)).unwrap();
        assert_eq!(parsed.time, None);
        // Escaped key still matches.
        let parsed = p.parse(Bytes::from_static(br#"{"t\u0073":5}"#)).unwrap();
        assert_eq!(parsed.time.unwrap().secs(), 5);
    }

    #[test]
    fn bad_json_is_an_error_in_every_mode() {
        for p in [
            build(Common::default()),
            build(common("t", false)),
            build(common("t", true)),
        ] {
            for bad in [
                &b"{\"a\":"[..],
                b"[1,2]",
                b"",
                b"{} {}",
                b"\xff\xfe",
                b"\"str\"",
                b"{\"t\":\"x\"}",
            ] {
                let e = p.parse(Bytes::copy_from_slice(bad));
                // A present but unreadable time is an error too ({"t":"x"});
                // the plain parser takes it as a record.
                if bad == b"{\"t\":\"x\"}" {
                    continue;
                }
                assert!(e.is_err(), "{:?} parsed", String::from_utf8_lossy(bad));
            }
        }
        let e = build(common("t", true))
            .parse(Bytes::from_static(br#"{"t":"x"}"#))
            .unwrap_err();
        assert!(e.0.contains("field `t`"), "{e}");
    }
}
