//! JSON text straight to msgpack, without building a `serde_json::Value`.
//!
//! Records that arrived as JSON lines stay as their text ([`Record::Raw`]);
//! forwarding them as msgpack would otherwise parse each into a map (one
//! allocation per key and value) only to serialise it again. This walks the
//! text once with serde_json's streaming parser and writes msgpack as it goes.
//!
//! [`Record::Raw`]: ulog_engine::Record::Raw

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// Appends the msgpack form of the JSON text `json` to `out`.
///
/// # Errors
/// Invalid JSON (then `out` holds a partial value the caller must discard).
pub fn json_to_msgpack(json: &[u8], out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(json);
    Emit(out).deserialize(&mut de)?;
    de.end()
}

struct Emit<'o>(&'o mut Vec<u8>);

impl<'de> DeserializeSeed<'de> for Emit<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

/// Rewrites a 32-bit container header written at `start` into the smallest
/// form for `n` items (`fix` is the fixarray/fixmap base, `mid` the 16-bit
/// marker).
fn finish_header(out: &mut Vec<u8>, start: usize, n: u32, fix: u8, mid: u8) {
    if n < 16 {
        out[start] = fix | n as u8;
        out.drain(start + 1..start + 5);
    } else if let Ok(n16) = u16::try_from(n) {
        out[start] = mid;
        out[start + 1..start + 3].copy_from_slice(&n16.to_be_bytes());
        out.drain(start + 3..start + 5);
    } else {
        out[start + 1..start + 5].copy_from_slice(&n.to_be_bytes());
    }
}

impl<'de> Visitor<'de> for Emit<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    // Writing into a Vec cannot fail, so rmp's results are ignored below.
    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        let _ = rmp::encode::write_bool(self.0, v);
        Ok(())
    }
    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        let _ = rmp::encode::write_sint(self.0, v);
        Ok(())
    }
    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        let _ = rmp::encode::write_uint(self.0, v);
        Ok(())
    }
    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        let _ = rmp::encode::write_f64(self.0, v);
        Ok(())
    }
    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        let _ = rmp::encode::write_str(self.0, v);
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        let _ = rmp::encode::write_nil(self.0);
        Ok(())
    }
    fn visit_none<E>(self) -> Result<(), E> {
        let _ = rmp::encode::write_nil(self.0);
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let out = self.0;
        let start = out.len();
        out.extend_from_slice(&[0xdd, 0, 0, 0, 0]);
        let mut n: u32 = 0;
        while seq.next_element_seed(Emit(&mut *out))?.is_some() {
            n = n.saturating_add(1);
        }
        finish_header(out, start, n, 0x90, 0xdc);
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let out = self.0;
        let start = out.len();
        out.extend_from_slice(&[0xdf, 0, 0, 0, 0]);
        let mut n: u32 = 0;
        while map.next_key_seed(Emit(&mut *out))?.is_some() {
            map.next_value_seed(Emit(&mut *out))?;
            n = n.saturating_add(1);
        }
        finish_header(out, start, n, 0x80, 0xde);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn via_map(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        ulog_parsers::msgpack::write_json(&mut out, v);
        out
    }

    #[test]
    fn same_bytes_as_encoding_the_parsed_value() {
        let many: serde_json::Map<String, Value> =
            (0..40).map(|i| (format!("k{i}"), json!(i))).collect();
        let long_list: Vec<Value> = (0..70_000).map(|i| json!(i % 3)).collect();
        for v in [
            json!({}),
            json!({"a": 1, "b": [true, null, "x\"y\u{e9}", -5, 1.5, 18446744073709551615u64]}),
            json!({"nested": {"deep": [[], {}, [{"z": -9223372036854775808i64}]]}}),
            Value::Object(many),
            json!({"list": long_list}),
        ] {
            let text = serde_json::to_vec(&v).unwrap();
            let mut out = Vec::new();
            json_to_msgpack(&text, &mut out).unwrap();
            assert_eq!(
                out,
                via_map(&v),
                "for {}",
                &v.to_string()[..v.to_string().len().min(80)]
            );
        }
    }

    #[test]
    fn invalid_json_is_an_error() {
        let mut out = Vec::new();
        assert!(json_to_msgpack(b"{\"a\":", &mut out).is_err());
        assert!(json_to_msgpack(b"{} {}", &mut Vec::new()).is_err());
        assert!(json_to_msgpack(b" {\"a\" : 1 }\r\n", &mut Vec::new()).is_ok());
    }
}
