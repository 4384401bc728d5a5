//! Request bodies to events: JSON (object, array, NDJSON), MessagePack (map or
//! array of maps) and HTML forms carrying `json=` or `msgpack=`.
//!
//! JSON records are kept as slices of the body (validated, not parsed) unless
//! they hold the time field; the time field is found with a byte search first,
//! so a record without it is never parsed here.

use bytes::Bytes;
use memchr::memmem;
use serde_json::value::RawValue;
use serde_json::Value as Json;
use ulog_engine::{Event, EventTime, Record};

/// How a body is encoded, from its Content-Type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyKind {
    /// A JSON object, an array of objects, or one object per line.
    Json,
    /// One JSON object per line.
    Ndjson,
    /// A MessagePack map or array of maps.
    Msgpack,
    /// `application/x-www-form-urlencoded` with a `json` or `msgpack` field.
    Form,
}

impl BodyKind {
    /// The kind for a Content-Type header value (parameters ignored); JSON
    /// when there is none or it is unknown, as fluentd does.
    pub fn from_content_type(value: Option<&str>) -> Self {
        let essence = value
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().to_ascii_lowercase())
            .unwrap_or_default();
        match essence.as_str() {
            "application/msgpack" | "application/x-msgpack" | "application/vnd.msgpack" => {
                BodyKind::Msgpack
            }
            "application/x-ndjson"
            | "application/jsonlines"
            | "application/x-jsonlines"
            | "application/jsonl" => BodyKind::Ndjson,
            "application/x-www-form-urlencoded" => BodyKind::Form,
            _ => BodyKind::Json,
        }
    }
}

/// Why a body could not be decoded: answered with 400 and this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Nothing but whitespace.
    #[error("the body is empty")]
    Empty,
    /// Not valid JSON, or not objects.
    #[error("invalid JSON: {0}")]
    Json(String),
    /// One NDJSON line is bad.
    #[error("line {line}: {message}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
    /// An element of an array body is not an object.
    #[error("element {0} of the array is not an object")]
    NotObject(usize),
    /// Not valid MessagePack, or not maps.
    #[error("invalid msgpack: {0}")]
    Msgpack(String),
    /// A form without a `json` or `msgpack` field.
    #[error("a form body needs a `json` or `msgpack` field")]
    NoFormField,
}

/// Decodes bodies; one per input, shared by its connections.
#[derive(Clone, Debug)]
pub struct Decoder {
    time_key: String,
    time_pattern: memmem::Finder<'static>,
    keep_time_key: bool,
}

impl Decoder {
    /// A decoder that takes event times from the top-level `time_key` field
    /// (removed from the record unless `keep_time_key`).
    pub fn new(time_key: &str, keep_time_key: bool) -> Self {
        let quoted = serde_json::to_vec(time_key).unwrap_or_default();
        Self {
            time_key: time_key.to_string(),
            time_pattern: memmem::Finder::new(&quoted).into_owned(),
            keep_time_key,
        }
    }

    /// Appends the events of `body` to `out`; `default_time` is used for
    /// records without a time field.
    ///
    /// # Errors
    /// A [`DecodeError`] for the first problem; `out` is then left with
    /// whatever was decoded before it and should be discarded.
    pub fn decode(
        &self,
        kind: BodyKind,
        body: Bytes,
        default_time: EventTime,
        out: &mut Vec<Event>,
    ) -> Result<(), DecodeError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(DecodeError::Empty);
        }
        match kind {
            BodyKind::Json => self.json(body, default_time, out),
            BodyKind::Ndjson => self.ndjson(body, default_time, out),
            BodyKind::Msgpack => self.msgpack(&body, default_time, out),
            BodyKind::Form => {
                let mut json = None;
                let mut msgpack = None;
                for (key, value) in form_pairs(&body) {
                    match key.as_slice() {
                        b"json" => json = Some(value),
                        b"msgpack" => msgpack = Some(value),
                        _ => {}
                    }
                }
                match (json, msgpack) {
                    (Some(j), _) => self.decode(BodyKind::Json, Bytes::from(j), default_time, out),
                    (None, Some(m)) => {
                        if m.is_empty() {
                            return Err(DecodeError::Empty);
                        }
                        self.msgpack(&m, default_time, out)
                    }
                    // `curl -d '{...}'` sends JSON labelled as a form.
                    (None, None)
                        if matches!(body.trim_ascii_start().first(), Some(b'{' | b'[')) =>
                    {
                        self.json(body, default_time, out)
                    }
                    (None, None) => Err(DecodeError::NoFormField),
                }
            }
        }
    }

    fn json(&self, body: Bytes, time: EventTime, out: &mut Vec<Event>) -> Result<(), DecodeError> {
        match body.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'[') => {
                let items: Vec<&RawValue> =
                    serde_json::from_slice(&body).map_err(|e| DecodeError::Json(e.to_string()))?;
                out.reserve(items.len());
                let base = body.as_ptr() as usize;
                for (i, item) in items.iter().enumerate() {
                    let text = item.get();
                    if !text.starts_with('{') {
                        return Err(DecodeError::NotObject(i + 1));
                    }
                    let start = text.as_ptr() as usize - base;
                    let record = Record::Raw(body.slice(start..start + text.len()));
                    out.push(self.event(record, time));
                }
                Ok(())
            }
            _ => match Record::from_json_bytes(trim(&body)) {
                Ok(record) => {
                    out.push(self.event(record, time));
                    Ok(())
                }
                // Several objects, one per line, sent as plain JSON.
                Err(_) if memchr::memchr(b'\n', body.trim_ascii()).is_some() => {
                    self.ndjson(body, time, out)
                }
                Err(e) => Err(DecodeError::Json(e.to_string())),
            },
        }
    }

    fn ndjson(
        &self,
        body: Bytes,
        time: EventTime,
        out: &mut Vec<Event>,
    ) -> Result<(), DecodeError> {
        let mut start = 0;
        let mut line_no = 0;
        while start < body.len() {
            let end = memchr::memchr(b'\n', &body[start..]).map_or(body.len(), |i| start + i);
            line_no += 1;
            let line = body.slice(start..end);
            start = end + 1;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let record = Record::from_json_bytes(trim(&line)).map_err(|e| DecodeError::Line {
                line: line_no,
                message: e.to_string(),
            })?;
            out.push(self.event(record, time));
        }
        Ok(())
    }

    fn msgpack(
        &self,
        body: &[u8],
        time: EventTime,
        out: &mut Vec<Event>,
    ) -> Result<(), DecodeError> {
        let mut cursor = body;
        let value = rmpv::decode::read_value(&mut cursor)
            .map_err(|e| DecodeError::Msgpack(e.to_string()))?;
        if !cursor.is_empty() {
            return Err(DecodeError::Msgpack(format!(
                "{} bytes left after the first value",
                cursor.len()
            )));
        }
        let maps = match value {
            rmpv::Value::Map(entries) => vec![entries],
            rmpv::Value::Array(items) => items
                .into_iter()
                .enumerate()
                .map(|(i, v)| match v {
                    rmpv::Value::Map(entries) => Ok(entries),
                    _ => Err(DecodeError::NotObject(i + 1)),
                })
                .collect::<Result<_, _>>()?,
            other => {
                return Err(DecodeError::Msgpack(format!(
                    "expected a map or an array of maps, found {}",
                    msgpack_type(&other)
                )))
            }
        };
        out.reserve(maps.len());
        for entries in maps {
            let record = Record::Map(ulog_parsers::msgpack::to_map(entries));
            out.push(self.event(record, time));
        }
        Ok(())
    }

    /// The event for `record`, its time taken from the time field if it has
    /// a numeric one.
    fn event(&self, mut record: Record, default: EventTime) -> Event {
        if let Record::Raw(bytes) = &record {
            if self.time_pattern.find(bytes).is_none() {
                return Event::new(default, record);
            }
        }
        let map = record.map_mut();
        let time = map.get(&self.time_key).and_then(time_of);
        if time.is_some() && !self.keep_time_key {
            map.shift_remove(&self.time_key);
        }
        Event::new(time.unwrap_or(default), record)
    }
}

/// `bytes` without leading and trailing ASCII whitespace (a slice, no copy),
/// so records are written out without it.
fn trim(bytes: &Bytes) -> Bytes {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    bytes.slice(start..end)
}

/// Seconds since the epoch (integer or fractional) as an event time.
pub fn time_of(v: &Json) -> Option<EventTime> {
    if let Some(i) = v.as_i64() {
        return Some(EventTime::from_secs_nanos(i, 0));
    }
    secs_to_time(v.as_f64()?)
}

/// Fractional seconds as an event time, `None` when not finite or out of range.
pub fn secs_to_time(secs: f64) -> Option<EventTime> {
    if !secs.is_finite() || secs.abs() > 9.2e9 {
        return None;
    }
    let whole = secs.floor();
    let nanos = ((secs - whole) * 1e9).round().min(999_999_999.0) as u32;
    Some(EventTime::from_secs_nanos(whole as i64, nanos))
}

fn msgpack_type(v: &rmpv::Value) -> &'static str {
    match v {
        rmpv::Value::Nil => "nil",
        rmpv::Value::Boolean(_) => "a boolean",
        rmpv::Value::Integer(_) | rmpv::Value::F32(_) | rmpv::Value::F64(_) => "a number",
        rmpv::Value::String(_) => "a string",
        rmpv::Value::Binary(_) => "binary data",
        rmpv::Value::Array(_) => "an array",
        rmpv::Value::Map(_) => "a map",
        rmpv::Value::Ext(..) => "an extension value",
    }
}

/// The `key=value` pairs of a form body or query string, with `+` and
/// `%XX` decoded to bytes (MessagePack fields are binary, so no UTF-8 is
/// assumed).
pub fn form_pairs(input: &[u8]) -> impl Iterator<Item = (Vec<u8>, Vec<u8>)> + '_ {
    input
        .split(|&b| b == b'&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = match pair.iter().position(|&b| b == b'=') {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => (pair, &[][..]),
            };
            (percent_decode(k), percent_decode(v))
        })
}

fn percent_decode(s: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < s.len() => match (hex(s[i + 1]), hex(s[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn decode(kind: BodyKind, body: &[u8]) -> Result<Vec<Event>, DecodeError> {
        let mut out = Vec::new();
        Decoder::new("time", false)
            .decode(
                kind,
                Bytes::copy_from_slice(body),
                EventTime::from_unix_nanos(1),
                &mut out,
            )
            .map(|()| out)
    }

    fn texts(events: &[Event]) -> Vec<String> {
        events.iter().map(|e| e.record.to_json_string()).collect()
    }

    #[test]
    fn json_object_array_and_lines() {
        let one = decode(BodyKind::Json, br#" {"a": 1} "#).unwrap();
        assert_eq!(texts(&one), [r#"{"a": 1}"#]);
        assert!(matches!(one[0].record, Record::Raw(_)));
        let many = decode(BodyKind::Json, br#"[ {"a":1} , {"b" : 2}]"#).unwrap();
        assert_eq!(texts(&many), [r#"{"a":1}"#, r#"{"b" : 2}"#]);
        assert!(many.iter().all(|e| matches!(e.record, Record::Raw(_))));
        let lines = decode(BodyKind::Json, b"{\"a\":1}\n\n{\"b\":2}\r\n").unwrap();
        assert_eq!(texts(&lines), [r#"{"a":1}"#, r#"{"b":2}"#]);
        assert!(decode(BodyKind::Json, b"[]").unwrap().is_empty());
    }

    #[test]
    fn malformed_bodies_say_why() {
        assert_eq!(
            decode(BodyKind::Json, b"  ").unwrap_err(),
            DecodeError::Empty
        );
        assert!(matches!(
            decode(BodyKind::Json, br#"{"a":"#),
            Err(DecodeError::Json(_))
        ));
        assert_eq!(
            decode(BodyKind::Json, br#"[{"a":1}, 2]"#).unwrap_err(),
            DecodeError::NotObject(2)
        );
        assert!(matches!(
            decode(BodyKind::Ndjson, b"{\"a\":1}\n{oops\n"),
            Err(DecodeError::Line { line: 2, .. })
        ));
        assert!(matches!(
            decode(BodyKind::Msgpack, &[0x93, 0x01]),
            Err(DecodeError::Msgpack(_))
        ));
        assert!(matches!(
            decode(BodyKind::Msgpack, &[0x01]),
            Err(DecodeError::Msgpack(_))
        ));
        assert_eq!(
            decode(BodyKind::Form, b"other=1").unwrap_err(),
            DecodeError::NoFormField
        );
        // JSON sent with a form Content-Type (curl -d) is read as JSON.
        let events = decode(BodyKind::Form, br#" {"a":"x&y=z"}"#).unwrap();
        assert_eq!(texts(&events), [r#"{"a":"x&y=z"}"#]);
        assert!(matches!(
            decode(BodyKind::Form, br#"{"a":"#),
            Err(DecodeError::Json(_))
        ));
    }

    #[test]
    fn time_field_becomes_the_event_time() {
        let events = decode(
            BodyKind::Json,
            br#"[{"time": 1700000000.5, "a": 1}, {"time": "soon"}, {"x": {"time": 3}}, {"a": 2}]"#,
        )
        .unwrap();
        assert_eq!(
            events[0].time,
            EventTime::from_secs_nanos(1_700_000_000, 500_000_000)
        );
        assert_eq!(events[0].record.to_json_string(), r#"{"a":1}"#);
        // Not a number: kept as a field, default time.
        assert_eq!(events[1].time, EventTime::from_unix_nanos(1));
        assert_eq!(events[1].record.to_json_string(), r#"{"time":"soon"}"#);
        // Only the top level counts.
        assert_eq!(events[2].time, EventTime::from_unix_nanos(1));
        assert!(matches!(events[3].record, Record::Raw(_)));
    }

    #[test]
    fn msgpack_map_and_array() {
        let mut body = Vec::new();
        ulog_parsers::msgpack::write_json(&mut body, &json!([{"a": 1, "time": 42}, {"b": "x"}]));
        let events = decode(BodyKind::Msgpack, &body).unwrap();
        assert_eq!(texts(&events), [r#"{"a":1}"#, r#"{"b":"x"}"#]);
        assert_eq!(events[0].time, EventTime::from_secs_nanos(42, 0));
    }

    #[test]
    fn forms_decode_percent_and_plus() {
        let events = decode(BodyKind::Form, b"json=%7B%22msg%22%3A%22a+b%25%22%7D&x=1").unwrap();
        assert_eq!(texts(&events), [r#"{"msg":"a b%"}"#]);
        let mut mp = Vec::new();
        ulog_parsers::msgpack::write_json(&mut mp, &json!({"k": "v"}));
        let encoded: String = mp.iter().map(|b| format!("%{b:02X}")).collect();
        let events = decode(BodyKind::Form, format!("msgpack={encoded}").as_bytes()).unwrap();
        assert_eq!(texts(&events), [r#"{"k":"v"}"#]);
        let pairs: Vec<_> = form_pairs(b"a=%zz&b=%4&c").collect();
        assert_eq!(pairs[0].1, b"%zz");
        assert_eq!(pairs[1].1, b"%4");
        assert_eq!(pairs[2], (b"c".to_vec(), vec![]));
    }

    #[test]
    fn content_types_map_to_kinds() {
        assert_eq!(BodyKind::from_content_type(None), BodyKind::Json);
        assert_eq!(
            BodyKind::from_content_type(Some("application/json; charset=utf-8")),
            BodyKind::Json
        );
        assert_eq!(
            BodyKind::from_content_type(Some("Application/X-Msgpack")),
            BodyKind::Msgpack
        );
        assert_eq!(
            BodyKind::from_content_type(Some("application/x-ndjson")),
            BodyKind::Ndjson
        );
        assert_eq!(
            BodyKind::from_content_type(Some("application/x-www-form-urlencoded")),
            BodyKind::Form
        );
    }
}
