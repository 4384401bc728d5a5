//! MessagePack values to records.
//!
//! fluentd's wire formats (forward, in_http's msgpack bodies) carry records
//! as msgpack maps; the engine's records are JSON-like, so each value is
//! converted once on the way in.

use serde_json::{Map, Number, Value};

/// Converts a msgpack value to JSON: binary becomes a (lossy) UTF-8 string,
/// non-string map keys their text, extension values (such as fluentd's
/// EventTime) their raw bytes as an array, NaN and infinities null.
pub fn to_json(v: rmpv::Value) -> Value {
    use rmpv::Value as M;
    match v {
        M::Nil => Value::Null,
        M::Boolean(b) => Value::Bool(b),
        M::Integer(i) => i
            .as_i64()
            .map(Value::from)
            .or_else(|| i.as_u64().map(Value::from))
            .unwrap_or(Value::Null),
        M::F32(f) => Number::from_f64(f64::from(f)).map_or(Value::Null, Value::Number),
        M::F64(f) => Number::from_f64(f).map_or(Value::Null, Value::Number),
        M::String(s) => Value::String(utf8_lossy(s)),
        M::Binary(b) => Value::String(String::from_utf8_lossy(&b).into_owned()),
        M::Array(items) => Value::Array(items.into_iter().map(to_json).collect()),
        M::Map(entries) => Value::Object(to_map(entries)),
        M::Ext(_, bytes) => Value::Array(bytes.into_iter().map(Value::from).collect()),
    }
}

/// A msgpack string as text; invalid UTF-8 is kept as U+FFFD rather than
/// lost.
fn utf8_lossy(s: rmpv::Utf8String) -> String {
    if s.is_str() {
        s.into_str().unwrap_or_default()
    } else {
        String::from_utf8_lossy(&s.into_bytes()).into_owned()
    }
}

/// Converts msgpack map entries to a JSON object (keys as text).
pub fn to_map(entries: Vec<(rmpv::Value, rmpv::Value)>) -> Map<String, Value> {
    entries
        .into_iter()
        .map(|(k, v)| {
            let key = match k {
                rmpv::Value::String(s) => utf8_lossy(s),
                rmpv::Value::Binary(b) => String::from_utf8_lossy(&b).into_owned(),
                other => other.to_string(),
            };
            (key, to_json(v))
        })
        .collect()
}

/// Encodes a JSON value as msgpack, appending to `out`.
pub fn write_json(out: &mut Vec<u8>, v: &Value) {
    // Writing into a Vec cannot fail.
    match v {
        Value::Null => {
            let _ = rmp::encode::write_nil(out);
        }
        Value::Bool(b) => {
            let _ = rmp::encode::write_bool(out, *b);
        }
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                let _ = rmp::encode::write_sint(out, i);
            } else if let Some(u) = n.as_u64() {
                let _ = rmp::encode::write_uint(out, u);
            } else {
                let _ = rmp::encode::write_f64(out, n.as_f64().unwrap_or(0.0));
            }
        }
        Value::String(s) => {
            let _ = rmp::encode::write_str(out, s);
        }
        Value::Array(items) => {
            let _ = rmp::encode::write_array_len(out, items.len() as u32);
            for i in items {
                write_json(out, i);
            }
        }
        Value::Object(map) => write_map(out, map),
    }
}

/// Encodes a JSON object as a msgpack map, appending to `out`.
pub fn write_map(out: &mut Vec<u8>, map: &Map<String, Value>) {
    let _ = rmp::encode::write_map_len(out, map.len() as u32);
    for (k, v) in map {
        let _ = rmp::encode::write_str(out, k);
        write_json(out, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn invalid_utf8_strings_are_kept_lossily() {
        // fixstr of 3 bytes, the middle one invalid.
        let v = rmpv::decode::read_value(&mut &[0xa3, b'a', 0xff, b'b'][..]).unwrap();
        assert_eq!(to_json(v), json!("a\u{fffd}b"));
    }

    #[test]
    fn round_trips_json_values() {
        let v =
            json!({"a": 1, "b": [true, null, "x", -5, 1.5], "c": {"d": 18446744073709551615u64}});
        let mut buf = Vec::new();
        write_json(&mut buf, &v);
        let back = rmpv::decode::read_value(&mut &buf[..]).unwrap();
        assert_eq!(to_json(back), v);
    }
}
