//! `format = "msgpack"`: one msgpack map per message (a UDP datagram, an
//! HTTP body, one value of a msgpack stream), as fluentd's clients send.
//!
//! With `time_key`, fluentd's EventTime extension (type 0) and the msgpack
//! timestamp extension (type -1) are read as times directly, besides the
//! numbers and strings every format accepts.

use bytes::Bytes;
use rmpv::Value as M;
use serde_json::Map;

use crate::common::Common;
use crate::msgpack::to_map;
use crate::time::event_time;
use crate::{ParseError, Parsed, Parser};

/// Deepest nesting accepted: about the 128 levels serde_json allows in JSON
/// records, so a record that came in as msgpack can always be read back
/// from its JSON form (rmpv counts two steps per container level, and one
/// more for a string or binary leaf).
const MAX_DEPTH: usize = 2 * 128 + 1;

/// Decodes one msgpack map into a record.
pub(crate) struct MsgpackParser {
    common: Common,
}

impl MsgpackParser {
    pub(crate) fn new(common: Common) -> Self {
        Self { common }
    }
}

/// The time held by a msgpack extension value, if it is a time extension.
pub(crate) fn ext_time(
    kind: i8,
    data: &[u8],
) -> Option<Result<ulog_engine::EventTime, ParseError>> {
    let bad = || {
        ParseError::new(format!(
            "time extension of {} bytes is malformed",
            data.len()
        ))
    };
    match (kind, data.len()) {
        // fluentd EventTime: seconds and nanoseconds, both u32 big-endian.
        (0, 8) => {
            let secs = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
            let nanos = u32::from_be_bytes([data[4], data[5], data[6], data[7]]);
            Some(event_time(i64::from(secs), nanos.min(999_999_999)).ok_or_else(bad))
        }
        // msgpack timestamp 32: u32 seconds.
        (-1, 4) => {
            let secs = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
            Some(event_time(i64::from(secs), 0).ok_or_else(bad))
        }
        // timestamp 64: 30-bit nanoseconds, 34-bit seconds.
        (-1, 8) => {
            let v = u64::from_be_bytes(data.try_into().ok()?);
            let nanos = (v >> 34) as u32;
            let secs = (v & 0x3_ffff_ffff) as i64;
            Some(
                event_time(secs, nanos)
                    .filter(|_| nanos < 1_000_000_000)
                    .ok_or_else(bad),
            )
        }
        // timestamp 96: u32 nanoseconds, i64 seconds.
        (-1, 12) => {
            let nanos = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
            let secs = i64::from_be_bytes(data[4..12].try_into().ok()?);
            Some(
                event_time(secs, nanos)
                    .filter(|_| nanos < 1_000_000_000)
                    .ok_or_else(bad),
            )
        }
        (0 | -1, _) => Some(Err(bad())),
        _ => None,
    }
}

impl Parser for MsgpackParser {
    fn parse(&self, input: Bytes) -> Result<Parsed, ParseError> {
        let mut rest: &[u8] = &input;
        let value = rmpv::decode::read_value_with_max_depth(&mut rest, MAX_DEPTH)
            .map_err(|e| ParseError::new(format!("invalid msgpack: {e}")))?;
        if !rest.is_empty() {
            return Err(ParseError::new(format!(
                "{} bytes of trailing data after the msgpack value",
                rest.len()
            )));
        }
        let M::Map(mut entries) = value else {
            return Err(ParseError::new(format!(
                "a record must be a msgpack map, got {}",
                kind_name(&value)
            )));
        };
        let mut time = None;
        if let Some(key) = &self.common.time_key {
            let pos = entries
                .iter()
                .position(|(k, _)| k.as_str() == Some(key.as_str()));
            if let Some(pos) = pos {
                if let M::Ext(kind, data) = &entries[pos].1 {
                    if let Some(t) = ext_time(*kind, data) {
                        time = Some(t.map_err(|e| ParseError::new(format!("field `{key}`: {e}")))?);
                        if !self.common.keep_time_key {
                            entries.remove(pos);
                        }
                    }
                }
            }
        }
        let map: Map<String, serde_json::Value> = to_map(entries);
        if time.is_some() {
            // The time came from an extension; the rest of the options still apply.
            return self.common.finish_natural(map, time);
        }
        self.common.finish(map)
    }
}

fn kind_name(v: &M) -> &'static str {
    match v {
        M::Nil => "nil",
        M::Boolean(_) => "a boolean",
        M::Integer(_) => "an integer",
        M::F32(_) | M::F64(_) => "a float",
        M::String(_) => "a string",
        M::Binary(_) => "binary",
        M::Array(_) => "an array",
        M::Map(_) => "a map",
        M::Ext(..) => "an extension value",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn encode(v: &serde_json::Value) -> Bytes {
        let mut out = Vec::new();
        crate::msgpack::write_json(&mut out, v);
        Bytes::from(out)
    }

    #[test]
    fn a_map_becomes_a_record() {
        let p = MsgpackParser::new(Common::default());
        let v = json!({"host": "web-1", "status": 200, "tags": ["a", "b"], "lat": 0.25});
        let parsed = p.parse(encode(&v)).unwrap();
        assert_eq!(
            serde_json::Value::Object(parsed.record.to_map().into_owned()),
            v
        );
    }

    #[test]
    fn eventtime_extension_as_time_key() {
        let p = MsgpackParser::new(Common {
            time_key: Some("time".into()),
            ..Common::default()
        });
        let mut buf = Vec::new();
        rmp::encode::write_map_len(&mut buf, 2).unwrap();
        rmp::encode::write_str(&mut buf, "time").unwrap();
        rmp::encode::write_ext_meta(&mut buf, 8, 0).unwrap();
        buf.extend_from_slice(&1_700_000_000u32.to_be_bytes());
        buf.extend_from_slice(&42u32.to_be_bytes());
        rmp::encode::write_str(&mut buf, "msg").unwrap();
        rmp::encode::write_str(&mut buf, "hi").unwrap();
        let parsed = p.parse(Bytes::from(buf)).unwrap();
        let t = parsed.time.unwrap();
        assert_eq!((t.secs(), t.subsec_nanos()), (1_700_000_000, 42));
        assert_eq!(parsed.record.to_json_string(), r#"{"msg":"hi"}"#);
        // A plain number works as well.
        let parsed = p
            .parse(encode(&json!({"time": 1700000001, "a": 1})))
            .unwrap();
        assert_eq!(parsed.time.unwrap().secs(), 1_700_000_001);
    }

    #[test]
    fn not_a_map_truncated_or_trailing() {
        let p = MsgpackParser::new(Common::default());
        assert!(p
            .parse(encode(&json!([1, 2])))
            .unwrap_err()
            .0
            .contains("an array"));
        let full = encode(&json!({"a": "bcdef"}));
        for cut in 0..full.len() {
            assert!(p.parse(full.slice(..cut)).is_err(), "cut at {cut}");
        }
        let mut two = full.to_vec();
        two.extend_from_slice(&full);
        assert!(p
            .parse(Bytes::from(two))
            .unwrap_err()
            .0
            .contains("trailing"));
        // A huge declared length with no data must fail, not allocate.
        assert!(p
            .parse(Bytes::from_static(&[0xdf, 0xff, 0xff, 0xff, 0xff]))
            .is_err());
        assert!(p
            .parse(Bytes::from_static(&[0xdb, 0xff, 0xff, 0xff, 0xff]))
            .is_err());
    }
}
