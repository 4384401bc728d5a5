//! The event model: a tag, a nanosecond timestamp and a record, moved in batches.
//!
//! Records arriving as JSON text are kept as their validated bytes
//! ([`Record::Raw`]) and only parsed into a map when a filter or an output asks
//! for a field. A pipeline that only moves events (tcp → file, say) never builds
//! a tree per event, and writes the exact bytes it received.

use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::tag::Tag;

/// A point in time as nanoseconds since the Unix epoch.
///
/// One `i64` covers the years 1677 to 2262, is cheap to copy, and keeps the
/// sub-second precision that fluentd's EventTime and syslog's RFC 5424 carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EventTime(i64);

impl EventTime {
    /// The current wall-clock time.
    pub fn now() -> Self {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Self(d.as_secs() as i64 * 1_000_000_000 + i64::from(d.subsec_nanos()))
    }

    /// Builds a time from whole seconds and a nanosecond remainder.
    pub fn from_secs_nanos(secs: i64, nanos: u32) -> Self {
        Self(
            secs.saturating_mul(1_000_000_000)
                .saturating_add(i64::from(nanos)),
        )
    }

    /// Builds a time from nanoseconds since the epoch.
    pub const fn from_unix_nanos(nanos: i64) -> Self {
        Self(nanos)
    }

    /// Builds a time from fractional seconds, as JSON timestamps often carry.
    pub fn from_secs_f64(secs: f64) -> Self {
        Self((secs * 1e9).round() as i64)
    }

    /// Nanoseconds since the epoch.
    pub const fn unix_nanos(self) -> i64 {
        self.0
    }

    /// Whole seconds since the epoch (rounded towards minus infinity).
    pub const fn secs(self) -> i64 {
        self.0.div_euclid(1_000_000_000)
    }

    /// The nanoseconds past [`EventTime::secs`].
    pub const fn subsec_nanos(self) -> u32 {
        self.0.rem_euclid(1_000_000_000) as u32
    }

    /// Seconds as a float, the form fluentd's JSON outputs use.
    pub fn as_secs_f64(self) -> f64 {
        // Whole seconds and the fraction apart: dividing the i64 of
        // nanoseconds loses the last digits (…0.25 became …0.2499998).
        self.secs() as f64 + f64::from(self.subsec_nanos()) / 1e9
    }
}

/// Why some bytes could not become a record.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum RecordError {
    /// The text was not valid JSON.
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    /// Valid JSON, but not an object (a record must be a map).
    #[error("a record must be a JSON object, got {0}")]
    NotAnObject(&'static str),
}

/// The fields of an event.
///
/// Either the validated JSON text it arrived as, or a parsed map. Reading a
/// field of a raw record parses it once and keeps the map.
#[derive(Clone)]
pub enum Record {
    /// A JSON object's text, validated but not parsed.
    Raw(Bytes),
    /// A parsed JSON object.
    Map(Map<String, Value>),
}

impl Record {
    /// Wraps JSON text after checking that it is one valid JSON object.
    ///
    /// The bytes are kept as they are (a trailing `\r` or spaces included), so
    /// outputs can write them without re-encoding.
    pub fn from_json_bytes(bytes: Bytes) -> Result<Self, RecordError> {
        validate_json_object(&bytes)?;
        Ok(Record::Raw(bytes))
    }

    /// An empty record.
    pub fn new() -> Self {
        Record::Map(Map::new())
    }

    /// The record as a map, parsing raw text on first use.
    pub fn map_mut(&mut self) -> &mut Map<String, Value> {
        if let Record::Raw(bytes) = self {
            // Raw records were validated on the way in, so this parse cannot
            // fail; an empty map is the safe answer if it ever did.
            let map = serde_json::from_slice::<Map<String, Value>>(bytes).unwrap_or_else(|e| {
                tracing::error!(error = %e, "a validated record failed to parse; its fields are lost (please report this)");
                Map::new()
            });
            *self = Record::Map(map);
        }
        match self {
            Record::Map(map) => map,
            Record::Raw(_) => unreachable!("raw record replaced above"),
        }
    }

    /// The record as a map, parsed if needed; borrows when already parsed.
    pub fn to_map(&self) -> std::borrow::Cow<'_, Map<String, Value>> {
        match self {
            Record::Map(map) => std::borrow::Cow::Borrowed(map),
            Record::Raw(bytes) => {
                std::borrow::Cow::Owned(serde_json::from_slice(bytes).unwrap_or_default())
            }
        }
    }

    /// One field's value, parsing the record if it is raw.
    pub fn get(&mut self, key: &str) -> Option<&Value> {
        self.map_mut().get(key)
    }

    /// Sets a field, parsing the record if it is raw.
    pub fn insert(&mut self, key: impl Into<String>, value: Value) {
        self.map_mut().insert(key.into(), value);
    }

    /// Appends the record as compact JSON text: raw bytes untouched (trailing
    /// whitespace trimmed), maps serialised.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            Record::Raw(bytes) => out.extend_from_slice(trim_ascii_end(bytes)),
            Record::Map(map) => {
                // Serialising a map of JSON values into a Vec cannot fail.
                let _ = serde_json::to_writer(&mut *out, map);
            }
        }
    }

    /// Appends the record as JSON with extra fields added at the end, without
    /// parsing a raw record: its closing brace is replaced.
    pub fn write_json_with(&self, out: &mut Vec<u8>, extra: &[(&str, &Value)]) {
        if extra.is_empty() {
            return self.write_json(out);
        }
        let start = out.len();
        self.write_json(out);
        // Both forms end in '}' once trailing whitespace is trimmed.
        if out.last() != Some(&b'}') {
            return;
        }
        out.pop();
        let empty = out[start..]
            .iter()
            .rev()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| *b == b'{');
        for (i, (key, value)) in extra.iter().enumerate() {
            if i > 0 || !empty {
                out.push(b',');
            }
            let _ = serde_json::to_writer(&mut *out, key);
            out.push(b':');
            let _ = serde_json::to_writer(&mut *out, value);
        }
        out.push(b'}');
    }

    /// The record serialised to a JSON string.
    pub fn to_json_string(&self) -> String {
        let mut out = Vec::new();
        self.write_json(&mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Record {
    fn default() -> Self {
        Self::new()
    }
}

impl From<Map<String, Value>> for Record {
    fn from(map: Map<String, Value>) -> Self {
        Record::Map(map)
    }
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_json_string())
    }
}

impl PartialEq for Record {
    fn eq(&self, other: &Self) -> bool {
        self.to_map() == other.to_map()
    }
}

fn trim_ascii_end(bytes: &[u8]) -> &[u8] {
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    &bytes[..end]
}

/// Checks that `bytes` hold exactly one JSON object, without building it.
pub fn validate_json_object(bytes: &[u8]) -> Result<(), RecordError> {
    match crate::json::validate_object(bytes) {
        Ok(()) => Ok(()),
        Err(e) => {
            let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
            // Say "not an object" when the input is some other valid JSON.
            if first != Some(&b'{') {
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) {
                    return Err(RecordError::NotAnObject(match v {
                        serde_json::Value::Array(_) => "an array",
                        serde_json::Value::String(_) => "a string",
                        _ => "a scalar",
                    }));
                }
                if first.is_none() {
                    return Err(RecordError::InvalidJson("empty input".into()));
                }
            }
            Err(RecordError::InvalidJson(format!(
                "{} at byte {}",
                e.message, e.offset
            )))
        }
    }
}

/// An event's identity, given once when ulog accepts it and kept through
/// filters, retries and (with file buffers) restarts, so a destination that
/// can write idempotently (MongoDB `_id`, Elasticsearch `_id`) stores a
/// replayed event once. Two identical readings are two events with two
/// ids: the id is never derived from the content alone.
///
/// The layout is a UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, then a
/// per-process counter and random bits, so ids sort roughly by acceptance
/// time (index-friendly) and differ across processes. `EventId::NONE` means
/// "not assigned yet".
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EventId(u128);

impl EventId {
    /// No id assigned.
    pub const NONE: EventId = EventId(0);

    /// The raw 128 bits.
    pub const fn as_u128(self) -> u128 {
        self.0
    }

    /// An id from its raw bits (a buffer reading back what it stored).
    pub const fn from_u128(bits: u128) -> Self {
        Self(bits)
    }

    /// Whether an id was assigned.
    pub const fn is_some(self) -> bool {
        self.0 != 0
    }

    /// `n` fresh ids, consecutive in this process: one clock read and one
    /// atomic add per batch.
    pub fn fresh(n: usize) -> impl Iterator<Item = EventId> {
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::sync::OnceLock;
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        static PROCESS: OnceLock<u64> = OnceLock::new();
        let process = *PROCESS.get_or_init(|| {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos(),
            );
            h.write_u32(std::process::id());
            h.finish() & 0x3fff_ffff
        });
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64
            & 0xffff_ffff_ffff;
        let first = COUNTER.fetch_add(n as u64, Ordering::Relaxed);
        (first..first + n as u64).map(move |seq| {
            let hi =
                (u128::from(ms) << 80) | (0x7u128 << 76) | (u128::from((seq >> 32) & 0xfff) << 64);
            let lo = (0b10u128 << 62) | (u128::from(process) << 32) | u128::from(seq & 0xffff_ffff);
            EventId(hi | lo)
        })
    }
}

impl fmt::Display for EventId {
    /// The canonical UUID text: `0190f5c4-8a3b-7000-8000-1234abcd0001`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            (b >> 96) as u32,
            (b >> 80) as u16,
            (b >> 64) as u16,
            (b >> 48) as u16,
            (b & 0xffff_ffff_ffff) as u64
        )
    }
}

/// One event: when it happened, what it says, and its identity. Its tag is
/// its batch's.
#[derive(Clone, Debug)]
pub struct Event {
    /// When the event happened (or was received, when the source had no time).
    pub time: EventTime,
    /// The event's fields.
    pub record: Record,
    /// Given by the engine when the event is accepted (`Emitter::emit`),
    /// unless the input set one derived from its source position.
    pub id: EventId,
}

impl PartialEq for Event {
    /// Equal content: the same time and record. The id is identity, not
    /// content, and is left out (a test's expected event has none).
    fn eq(&self, other: &Self) -> bool {
        self.time == other.time && self.record == other.record
    }
}

impl Event {
    /// An event at `time` with `record`; its id is given when it is accepted.
    pub fn new(time: EventTime, record: impl Into<Record>) -> Self {
        Self {
            time,
            record: record.into(),
            id: EventId::NONE,
        }
    }
}

/// Events that share one tag: the unit the engine routes and outputs write.
///
/// Routing is decided once per batch, as Fluent Bit does per chunk; inputs
/// should gather what they read in one go into one batch per tag.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// The tag every event in this batch carries.
    pub tag: Tag,
    /// The events, in arrival order.
    pub events: Vec<Event>,
}

impl Batch {
    /// A batch of `events` under `tag`.
    pub fn new(tag: Tag, events: Vec<Event>) -> Self {
        Self { tag, events }
    }

    /// A batch of one event.
    pub fn single(tag: Tag, event: Event) -> Self {
        Self {
            tag,
            events: vec![event],
        }
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// True when there are no events.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

/// A batch shared between outputs (one `copy` fan-out does not clone events).
pub type SharedBatch = Arc<Batch>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_ids_are_distinct_uuid_v7_and_ordered_within_a_batch() {
        let ids: Vec<EventId> = EventId::fresh(1000).chain(EventId::fresh(5)).collect();
        let set: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(set.len(), ids.len());
        assert!(ids.windows(2).take(999).all(|w| w[0] < w[1]));
        let text = ids[0].to_string();
        assert_eq!(text.len(), 36);
        assert_eq!(&text[14..15], "7", "version 7: {text}");
        assert!(
            matches!(&text[19..20], "8" | "9" | "a" | "b"),
            "variant: {text}"
        );
        assert!(ids.iter().all(|i| i.is_some()));
        assert!(!EventId::NONE.is_some());
        let ms = (ids[0].as_u128() >> 80) as u64;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(now - ms < 60_000);
        let mut a = Event::new(EventTime::from_unix_nanos(1), Record::new());
        let b = a.clone();
        a.id = ids[0];
        assert_eq!(a, b, "equality is content");
    }
    use serde_json::json;

    #[test]
    fn time_parts_round_trip() {
        let t = EventTime::from_secs_nanos(1_700_000_000, 123_456_789);
        assert_eq!(t.secs(), 1_700_000_000);
        assert_eq!(t.subsec_nanos(), 123_456_789);
        let neg = EventTime::from_unix_nanos(-1);
        assert_eq!(neg.secs(), -1);
        assert_eq!(neg.subsec_nanos(), 999_999_999);
    }

    #[test]
    fn float_seconds_keep_their_fraction() {
        let t = EventTime::from_secs_nanos(1_700_000_000, 250_000_000);
        assert_eq!(t.as_secs_f64(), 1_700_000_000.25);
    }

    #[test]
    fn raw_records_pass_through_untouched() {
        let text = Bytes::from_static(b"{\"b\":1,  \"a\" : [1,2]}\r\n");
        let rec = Record::from_json_bytes(text).unwrap();
        let mut out = Vec::new();
        rec.write_json(&mut out);
        assert_eq!(out, b"{\"b\":1,  \"a\" : [1,2]}");
    }

    #[test]
    fn invalid_json_and_non_objects_are_refused() {
        assert!(matches!(
            Record::from_json_bytes(Bytes::from_static(b"{\"a\":")),
            Err(RecordError::InvalidJson(_))
        ));
        assert_eq!(
            Record::from_json_bytes(Bytes::from_static(b"[1]")),
            Err(RecordError::NotAnObject("an array"))
        );
        assert_eq!(
            Record::from_json_bytes(Bytes::from_static(b" 42")),
            Err(RecordError::NotAnObject("a scalar"))
        );
        assert!(Record::from_json_bytes(Bytes::from_static(b"{} {}")).is_err());
        assert!(Record::from_json_bytes(Bytes::from_static(b"")).is_err());
    }

    #[test]
    fn fields_parse_lazily() {
        let mut rec = Record::from_json_bytes(Bytes::from_static(b"{\"a\":1}")).unwrap();
        assert!(matches!(rec, Record::Raw(_)));
        assert_eq!(rec.get("a"), Some(&json!(1)));
        assert!(matches!(rec, Record::Map(_)));
        rec.insert("b", json!("x"));
        assert_eq!(rec.to_json_string(), r#"{"a":1,"b":"x"}"#);
    }

    #[test]
    fn extra_fields_are_spliced_into_raw_text() {
        let rec = Record::from_json_bytes(Bytes::from_static(b"{\"a\":1} ")).unwrap();
        let mut out = Vec::new();
        rec.write_json_with(&mut out, &[("tag", &json!("x.y")), ("n", &json!(2))]);
        assert_eq!(
            serde_json::from_slice::<Value>(&out).unwrap(),
            json!({"a":1,"tag":"x.y","n":2})
        );
        let empty = Record::from_json_bytes(Bytes::from_static(b"{ }")).unwrap();
        let mut out = Vec::new();
        empty.write_json_with(&mut out, &[("tag", &json!("t"))]);
        assert_eq!(
            serde_json::from_slice::<Value>(&out).unwrap(),
            json!({"tag":"t"})
        );
    }
}
