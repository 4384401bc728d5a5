//! Events to BSON documents, written straight from the record's JSON text.
//!
//! A record that arrived as JSON text ([`Record::Raw`]) is read once by
//! serde_json's streaming parser and each value is appended to the BSON
//! output as it is read: no `serde_json::Value` tree and no `bson::Document`
//! tree is built per event, and the driver copies the finished bytes as they
//! are. A parsed record ([`Record::Map`]) is walked the same way.
//!
//! The type mapping (also in `docs/plugins/mongodb.md`):
//!
//! | JSON | BSON |
//! |---|---|
//! | string | string |
//! | integer in i64 range | Int64 (never Int32: one field keeps one type whatever its size) |
//! | integer above `i64::MAX` | Double (rounded to 53 bits; see below) |
//! | other number | Double |
//! | `true` / `false` | Boolean |
//! | `null` | Null |
//! | object | embedded document, keys in their written order |
//! | array | array |
//!
//! Integers above `i64::MAX` (rare: unsigned 64-bit counters) become
//! doubles, which round them, rather than exact Decimal128: FerretDB 1.x
//! does not know Decimal128 and drops the connection on it, which would
//! turn one such event into a batch retried forever.
//!
//! The event time becomes a BSON date (milliseconds; finer digits are cut)
//! and the event id a UUID (binary subtype 4) or its text.

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value as Json};
use std::fmt;
use ulog_engine::{Event, Record};

const DOUBLE: u8 = 0x01;
const STRING: u8 = 0x02;
const DOCUMENT: u8 = 0x03;
const ARRAY: u8 = 0x04;
const BINARY: u8 = 0x05;
const BOOLEAN: u8 = 0x08;
const DATETIME: u8 = 0x09;
const NULL: u8 = 0x0A;
const INT64: u8 = 0x12;
/// Binary subtype 4: a UUID in RFC 9562 byte order.
const SUBTYPE_UUID: u8 = 0x04;

/// Where a document's `_id` comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum IdSource {
    /// The event id as a BSON UUID (binary subtype 4, 16 bytes).
    Uuid,
    /// The event id as its canonical UUID text (36 characters).
    Text,
    /// A top-level record field's value (the field is kept as well).
    Field(String),
}

/// What [`encode_event`] adds to each record.
#[derive(Debug, Clone)]
pub(crate) struct EncodeOptions {
    /// Where `_id` comes from.
    pub id: IdSource,
    /// The field for the event time as a BSON date, if any.
    pub time_key: Option<String>,
    /// The field for the tag, if any.
    pub tag_key: Option<String>,
}

impl EncodeOptions {
    /// Top-level record fields that the output writes itself, so the record's
    /// own are left out (a document must not hold one key twice).
    fn replaced(&self, key: &[u8]) -> bool {
        (key == b"_id" && !matches!(&self.id, IdSource::Field(f) if f == "_id"))
            || self
                .time_key
                .as_deref()
                .is_some_and(|k| k.as_bytes() == key)
            || self.tag_key.as_deref().is_some_and(|k| k.as_bytes() == key)
    }

    fn id_field(&self) -> Option<&str> {
        match &self.id {
            IdSource::Field(f) => Some(f),
            _ => None,
        }
    }
}

/// Appends `event` as one BSON document to `out` (which should be empty).
///
/// `tag` is the batch's tag, for `tag_key`. `out` holds garbage after an
/// error; clear it before reuse.
///
/// # Errors
/// A field name holding a NUL character (BSON keys are C strings), or an
/// `id_key` field the record lacks.
pub(crate) fn encode_event(
    out: &mut Vec<u8>,
    event: &Event,
    tag: &str,
    opts: &EncodeOptions,
) -> Result<(), String> {
    let start = begin_document(out);
    match &opts.id {
        // An event without an id (a batch built by hand, not accepted by an
        // emitter) gets the driver's ObjectId: stored, but not idempotent.
        IdSource::Uuid if event.id.is_some() => {
            out.push(BINARY);
            out.extend_from_slice(b"_id\0");
            out.extend_from_slice(&16i32.to_le_bytes());
            out.push(SUBTYPE_UUID);
            out.extend_from_slice(&event.id.as_u128().to_be_bytes());
        }
        IdSource::Text if event.id.is_some() => {
            out.push(STRING);
            out.extend_from_slice(b"_id\0");
            write_string(out, &event.id.to_string());
        }
        _ => {}
    }
    if let Some(key) = &opts.time_key {
        out.push(DATETIME);
        write_cstring(out, key)?;
        let millis = event.time.unix_nanos().div_euclid(1_000_000);
        out.extend_from_slice(&millis.to_le_bytes());
    }
    if let Some(key) = &opts.tag_key {
        out.push(STRING);
        write_cstring(out, key)?;
        write_string(out, tag);
    }
    let id_found = match &event.record {
        Record::Raw(bytes) => {
            let mut de = serde_json::Deserializer::from_slice(bytes);
            de.deserialize_map(TopLevel { out, opts })
                .map_err(|e| e.to_string())?
        }
        Record::Map(map) => encode_map(out, map, opts)?,
    };
    if let (Some(field), false) = (opts.id_field(), id_found) {
        return Err(format!("the event has no field {field:?} for the _id"));
    }
    end_document(out, start)
}

/// The top level of a parsed record: as [`TopLevel`] does for raw text.
fn encode_map(
    out: &mut Vec<u8>,
    map: &Map<String, Json>,
    opts: &EncodeOptions,
) -> Result<bool, String> {
    let mut id_found = false;
    for (key, value) in map {
        if opts.replaced(key.as_bytes()) {
            continue;
        }
        let type_at = out.len();
        out.push(0);
        write_cstring(out, key)?;
        let value_at = out.len();
        out[type_at] = BsonValue(out)
            .deserialize(value)
            .map_err(|e| e.to_string())?;
        if opts.id_field() == Some(key.as_str()) {
            id_found = true;
            if key != "_id" {
                copy_as_id(out, type_at, value_at);
            }
        }
    }
    Ok(id_found)
}

/// After an `id_key` field was written, appends its value again as `_id`.
fn copy_as_id(out: &mut Vec<u8>, type_at: usize, value_at: usize) {
    let end = out.len();
    out.push(out[type_at]);
    out.extend_from_slice(b"_id\0");
    out.extend_from_within(value_at..end);
}

/// Reserves a document's length prefix; returns where it starts.
fn begin_document(out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    start
}

/// Closes the document begun at `start` and fills in its length.
fn end_document(out: &mut Vec<u8>, start: usize) -> Result<(), String> {
    out.push(0);
    let len = i32::try_from(out.len() - start)
        .map_err(|_| "the document is larger than BSON can hold (2 GiB)".to_string())?;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    Ok(())
}

fn write_cstring(out: &mut Vec<u8>, key: &str) -> Result<(), String> {
    if key.as_bytes().contains(&0) {
        return Err(format!("field name {key:?} contains a NUL character"));
    }
    out.extend_from_slice(key.as_bytes());
    out.push(0);
    Ok(())
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    // A JSON string is at most as long as its record, which is far below
    // 2 GiB; the document length check catches anything larger.
    let len = (s.len() + 1) as i32;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

/// An array index as its decimal key ("0", "1", ...), without allocating.
fn write_index_key(out: &mut Vec<u8>, mut i: usize) {
    let mut digits = [0u8; 20];
    let mut n = digits.len();
    loop {
        n -= 1;
        digits[n] = b'0' + (i % 10) as u8;
        i /= 10;
        if i == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[n..]);
    out.push(0);
}

/// The record's top-level object: like [`BsonValue`]'s map, but leaving
/// out the fields the output writes itself and copying `id_key` to `_id`.
/// Yields whether the `id_key` field was seen.
struct TopLevel<'o, 'a> {
    out: &'o mut Vec<u8>,
    opts: &'a EncodeOptions,
}

impl<'de> Visitor<'de> for TopLevel<'_, '_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let out = self.out;
        let id_key = self.opts.id_field().map(str::as_bytes);
        let mut id_found = false;
        loop {
            let type_at = out.len();
            out.push(0);
            if map.next_key_seed(BsonKey(out))?.is_none() {
                out.truncate(type_at);
                return Ok(id_found);
            }
            let key = &out[type_at + 1..out.len() - 1];
            if self.opts.replaced(key) {
                out.truncate(type_at);
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            let is_id = id_key == Some(key);
            let is_own_id = key == b"_id";
            let value_at = out.len();
            out[type_at] = map.next_value_seed(BsonValue(out))?;
            if is_id {
                id_found = true;
                if !is_own_id {
                    copy_as_id(out, type_at, value_at);
                }
            }
        }
    }
}

/// Writes a map key as a BSON C string.
struct BsonKey<'o>(&'o mut Vec<u8>);

impl<'de> DeserializeSeed<'de> for BsonKey<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for BsonKey<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        write_cstring(self.0, v).map_err(E::custom)
    }
}

/// Writes one JSON value's BSON bytes and yields its BSON type byte (which
/// the caller puts in front of the key it already wrote).
struct BsonValue<'o>(&'o mut Vec<u8>);

impl<'de> DeserializeSeed<'de> for BsonValue<'_> {
    type Value = u8;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<u8, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for BsonValue<'_> {
    type Value = u8;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<u8, E> {
        self.0.push(u8::from(v));
        Ok(BOOLEAN)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u8, E> {
        self.0.extend_from_slice(&v.to_le_bytes());
        Ok(INT64)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u8, E> {
        match i64::try_from(v) {
            Ok(i) => self.visit_i64(i),
            Err(_) => self.visit_f64(v as f64),
        }
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<u8, E> {
        self.0.extend_from_slice(&v.to_le_bytes());
        Ok(DOUBLE)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<u8, E> {
        write_string(self.0, v);
        Ok(STRING)
    }

    fn visit_unit<E: de::Error>(self) -> Result<u8, E> {
        Ok(NULL)
    }

    fn visit_none<E: de::Error>(self) -> Result<u8, E> {
        Ok(NULL)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u8, A::Error> {
        let out = self.0;
        let start = begin_document(out);
        for i in 0.. {
            let type_at = out.len();
            out.push(0);
            write_index_key(out, i);
            match seq.next_element_seed(BsonValue(out))? {
                Some(t) => out[type_at] = t,
                None => {
                    out.truncate(type_at);
                    break;
                }
            }
        }
        end_document(out, start).map_err(de::Error::custom)?;
        Ok(ARRAY)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<u8, A::Error> {
        let out = self.0;
        let start = begin_document(out);
        loop {
            let type_at = out.len();
            out.push(0);
            if map.next_key_seed(BsonKey(out))?.is_none() {
                out.truncate(type_at);
                break;
            }
            out[type_at] = map.next_value_seed(BsonValue(out))?;
        }
        end_document(out, start).map_err(de::Error::custom)?;
        Ok(DOCUMENT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{spec::BinarySubtype, Bson, Document, RawDocumentBuf};
    use bytes::Bytes;
    use ulog_engine::{EventId, EventTime};

    fn opts(id: IdSource) -> EncodeOptions {
        EncodeOptions {
            id,
            time_key: Some("time".into()),
            tag_key: None,
        }
    }

    fn raw_event(text: &str) -> Event {
        let mut e = Event::new(
            EventTime::from_secs_nanos(1_700_000_000, 123_456_789),
            Record::from_json_bytes(Bytes::copy_from_slice(text.as_bytes())).unwrap(),
        );
        e.id = EventId::from_u128(0x0190_f5c4_8a3b_7000_8000_1234_abcd_0001);
        e
    }

    fn encode(event: &Event, opts: &EncodeOptions) -> Result<Document, String> {
        let mut out = Vec::new();
        encode_event(&mut out, event, "home.h1.owl", opts)?;
        let raw = RawDocumentBuf::from_bytes(out).map_err(|e| e.to_string())?;
        Document::try_from(raw.as_ref()).map_err(|e| e.to_string())
    }

    const SAMPLE: &str = r#"{"watts": 512, "neg": -3, "kwh": 1.5, "whole": 2.0, "big": 18446744073709551615,
        "s": "h\u00e9\"llo\u0000x", "ok": true, "none": null,
        "nested": {"a": {"b": [1, "two", {"c": 3.25}]}, "empty": {}}, "list": [], "arr": [[1], [2, 3]]}"#;

    fn expected_body() -> Document {
        bson::doc! {
            "watts": 512i64, "neg": -3i64, "kwh": 1.5, "whole": 2.0,
            "big": 18446744073709551615.0f64,
            "s": "h\u{e9}\"llo\u{0}x", "ok": true, "none": Bson::Null,
            "nested": { "a": { "b": [1i64, "two", { "c": 3.25 }] }, "empty": {} },
            "list": [], "arr": [[1i64], [2i64, 3i64]],
        }
    }

    #[test]
    fn raw_json_keeps_its_types_and_structure() {
        let doc = encode(&raw_event(SAMPLE), &opts(IdSource::Uuid)).unwrap();
        let mut want = bson::doc! {
            "_id": Bson::Binary(bson::Binary {
                subtype: BinarySubtype::Uuid,
                bytes: 0x0190_f5c4_8a3b_7000_8000_1234_abcd_0001u128.to_be_bytes().to_vec(),
            }),
            "time": bson::DateTime::from_millis(1_700_000_000_123),
        };
        want.extend(expected_body());
        assert_eq!(doc, want);
        // Same order as written, _id first.
        let keys: Vec<&String> = doc.keys().collect();
        assert_eq!(keys[0], "_id");
        assert_eq!(keys[2], "watts");
        assert!(matches!(doc.get("watts"), Some(Bson::Int64(512))));
    }

    #[test]
    fn parsed_maps_encode_like_raw_text() {
        let raw = raw_event(SAMPLE);
        let mut parsed = raw.clone();
        parsed.record.map_mut();
        assert!(matches!(parsed.record, Record::Map(_)));
        let o = opts(IdSource::Text);
        assert_eq!(encode(&raw, &o).unwrap(), encode(&parsed, &o).unwrap());
        assert_eq!(
            encode(&raw, &o).unwrap().get_str("_id").unwrap(),
            "0190f5c4-8a3b-7000-8000-1234abcd0001"
        );
    }

    #[test]
    fn the_outputs_own_fields_replace_the_records() {
        let mut o = opts(IdSource::Uuid);
        o.tag_key = Some("tag".into());
        for mut e in [raw_event(
            r#"{"_id": 1, "time": "noon", "tag": "x", "v": 1}"#,
        )] {
            for _ in 0..2 {
                let doc = encode(&e, &o).unwrap();
                assert_eq!(doc.len(), 4, "{doc}");
                assert!(
                    matches!(doc.get("_id"), Some(Bson::Binary(b)) if b.subtype == BinarySubtype::Uuid)
                );
                assert!(doc.get_datetime("time").is_ok());
                assert_eq!(doc.get_str("tag").unwrap(), "home.h1.owl");
                assert_eq!(doc.get_i64("v").unwrap(), 1);
                e.record.map_mut();
            }
        }
    }

    #[test]
    fn id_key_copies_a_field_to_the_id() {
        let o = opts(IdSource::Field("reading".into()));
        let mut e = raw_event(r#"{"a": 1, "reading": {"hh": "h1", "n": 7}, "b": 2}"#);
        for _ in 0..2 {
            let doc = encode(&e, &o).unwrap();
            assert_eq!(
                doc.get_document("_id").unwrap(),
                &bson::doc! {"hh": "h1", "n": 7i64}
            );
            assert_eq!(
                doc.get_document("reading").unwrap(),
                &bson::doc! {"hh": "h1", "n": 7i64}
            );
            assert_eq!(doc.get_i64("b").unwrap(), 2);
            e.record.map_mut();
        }
        let own = opts(IdSource::Field("_id".into()));
        let doc = encode(&raw_event(r#"{"_id": "mine", "a": 1}"#), &own).unwrap();
        assert_eq!(doc.get_str("_id").unwrap(), "mine");
        assert_eq!(doc.len(), 3);
        let err = encode(&raw_event(r#"{"a": 1}"#), &o).unwrap_err();
        assert_eq!(err, "the event has no field \"reading\" for the _id");
    }

    #[test]
    fn nul_in_a_field_name_is_refused() {
        let e = raw_event(r#"{"ok": 1, "bad\u0000key": 2}"#);
        let err = encode(&e, &opts(IdSource::Uuid)).unwrap_err();
        assert!(err.contains("contains a NUL character"), "{err}");
        let nested = raw_event(r#"{"ok": {"bad\u0000key": 2}}"#);
        assert!(encode(&nested, &opts(IdSource::Uuid)).is_err());
    }

    #[test]
    fn events_without_an_id_leave_it_to_the_driver() {
        let mut e = raw_event(r#"{"a": 1}"#);
        e.id = EventId::NONE;
        let doc = encode(&e, &opts(IdSource::Uuid)).unwrap();
        assert!(doc.get("_id").is_none());
    }

    #[test]
    fn times_before_1970_round_down_to_the_millisecond() {
        let mut e = raw_event("{}");
        e.time = EventTime::from_unix_nanos(-1);
        let doc = encode(&e, &opts(IdSource::Uuid)).unwrap();
        assert_eq!(doc.get_datetime("time").unwrap().timestamp_millis(), -1);
    }

    #[test]
    fn array_keys_count_in_decimal() {
        let mut out = Vec::new();
        for i in [0, 9, 10, 12345] {
            write_index_key(&mut out, i);
        }
        assert_eq!(out, b"0\x009\x0010\x0012345\x00");
    }
}
