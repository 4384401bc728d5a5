//! Turning a batch into `_bulk` request bodies.
//!
//! A body is NDJSON: for each document an action line
//! (`{"create":{"_index":"mk-2016.05.04","_id":"0190…"}}`) and the document
//! itself, the record with the event time (and optionally the tag) spliced
//! into its JSON text. A raw record is never parsed for that; it is parsed
//! only when the index name or the `_id` reads one of its fields.
//!
//! Index names mix the engine's [`Template`] placeholders (`{tag}`,
//! `{tag_parts[N]}`, `{field}`) with strftime directives of the event time
//! in UTC (`mk-%Y.%m.%d`), so one output spreads a stream over daily indices.

use std::fmt::Write as _;

use chrono::format::Item;
use serde_json::{Map, Value};
use ulog_engine::template::Template;
use ulog_engine::{Batch, BuildError, Event, EventTime, Record};
use ulog_plugins_basic::encode::{compile_strftime, strftime_uses_subsec, to_datetime};

/// Characters Elasticsearch and OpenSearch refuse in an index name.
const FORBIDDEN_IN_INDEX: &[char] = &['\\', '/', '*', '?', '"', '<', '>', '|', ' ', ',', '#', ':'];

#[derive(Debug, Clone)]
enum Piece {
    Literal(String),
    Date(Vec<Item<'static>>),
    Placeholder(Template),
}

/// A compiled index (or data stream) name: literals, strftime parts and
/// placeholders, rendered once per event.
#[derive(Debug, Clone)]
pub struct IndexName {
    pieces: Vec<Piece>,
    reads_fields: bool,
    subsec: bool,
}

impl IndexName {
    /// Compiles `text`; `param` names the option in errors.
    ///
    /// # Errors
    /// A bad placeholder or strftime directive, or a literal part that no
    /// cluster would take as an index name (upper case, `/`, `*`, spaces…),
    /// so `ulog check` reports it instead of every document failing.
    pub fn parse(param: &str, text: &str) -> Result<Self, BuildError> {
        if text.is_empty() {
            return Err(BuildError::param(param, "must not be empty"));
        }
        let mut pieces = Vec::new();
        let mut rest = text;
        let literal = |pieces: &mut Vec<Piece>, s: &str| -> Result<(), BuildError> {
            if s.is_empty() {
                return Ok(());
            }
            // Plain text before the first directive stays a literal, so the
            // template pattern keeps it (`mk-%Y.%m.%d` → `mk-*`).
            let (head, dated) = s.split_at(s.find('%').unwrap_or(s.len()));
            if !head.is_empty() {
                pieces.push(Piece::Literal(head.to_string()));
            }
            if !dated.is_empty() {
                pieces.push(Piece::Date(compile_strftime(param, dated)?));
            }
            let plain: String = {
                // The text outside strftime directives, for the name checks.
                let mut out = String::new();
                let mut chars = s.chars();
                while let Some(c) = chars.next() {
                    if c == '%' {
                        chars.next();
                    } else {
                        out.push(c);
                    }
                }
                out
            };
            if let Some(c) = plain
                .chars()
                .find(|c| c.is_uppercase() || FORBIDDEN_IN_INDEX.contains(c))
            {
                return Err(BuildError::param(
                    param,
                    format!("{text:?}: index names must be lower case and cannot contain {c:?}"),
                ));
            }
            Ok(())
        };
        while let Some(open) = rest.find('{') {
            literal(&mut pieces, &rest[..open])?;
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| BuildError::param(param, format!("unclosed `{{` in {text:?}")))?
                + open;
            let t =
                Template::parse(&rest[open..=close]).map_err(|e| BuildError::param(param, e))?;
            pieces.push(Piece::Placeholder(t));
            rest = &rest[close + 1..];
        }
        literal(&mut pieces, rest)?;
        if text.starts_with(['-', '_', '+', '.']) {
            return Err(BuildError::param(
                param,
                format!("{text:?}: an index name cannot start with `-`, `_`, `+` or `.`"),
            ));
        }
        let reads_fields = pieces
            .iter()
            .any(|p| matches!(p, Piece::Placeholder(t) if t.reads_fields()));
        let subsec = pieces
            .iter()
            .any(|p| matches!(p, Piece::Date(items) if strftime_uses_subsec(items)));
        Ok(Self {
            pieces,
            reads_fields,
            subsec,
        })
    }

    /// Whether rendering needs the record's fields (so a raw record is
    /// parsed).
    pub fn reads_fields(&self) -> bool {
        self.reads_fields
    }

    /// Whether the name is the same for every event (no date, tag or field).
    pub fn is_fixed(&self) -> bool {
        self.pieces.iter().all(|p| matches!(p, Piece::Literal(_)))
    }

    /// The index pattern an index template needs to cover every name this
    /// renders: each date or placeholder part becomes `*` (`mk-%Y.%m.%d` →
    /// `mk-*`). `None` when the pattern would start with `*`, which would
    /// also match other applications' and system indices.
    pub fn pattern(&self) -> Option<String> {
        let mut out = String::new();
        for p in &self.pieces {
            match p {
                Piece::Literal(s) => out.push_str(s),
                Piece::Date(_) | Piece::Placeholder(_) => {
                    if !out.ends_with('*') {
                        out.push('*');
                    }
                }
            }
        }
        (!out.starts_with('*')).then_some(out)
    }

    /// Appends the name for one event to `out`.
    ///
    /// # Errors
    /// A placeholder naming a field the event lacks (or a tag part it does
    /// not have).
    pub fn render(
        &self,
        tag: &str,
        record: &Map<String, Value>,
        time: EventTime,
        out: &mut String,
    ) -> Result<(), String> {
        for p in &self.pieces {
            match p {
                Piece::Literal(s) => out.push_str(s),
                Piece::Date(items) => {
                    let _ = write!(out, "{}", to_datetime(time).format_with_items(items.iter()));
                }
                Piece::Placeholder(t) => out.push_str(&t.render(tag, record, "index name")?),
            }
        }
        Ok(())
    }
}

/// How the event time is written into documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimePrecision {
    /// `2016-05-04T18:02:11.123Z`: what a `date` field keeps.
    Millis,
    /// `2016-05-04T18:02:11.123456Z`.
    Micros,
    /// `2016-05-04T18:02:11.123456789Z`: for `date_nanos` fields.
    Nanos,
}

/// Which bulk action each document is sent with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpType {
    /// `create`: refuses a second document with the same `_id` (409), which
    /// is what makes a replay idempotent; data streams accept only this.
    Create,
    /// `index`: replaces a document with the same `_id` (last write wins).
    Index,
}

impl OpType {
    fn action(self) -> &'static [u8] {
        match self {
            OpType::Create => b"{\"create\":{\"_index\":",
            OpType::Index => b"{\"index\":{\"_index\":",
        }
    }
}

/// Everything that decides what a document and its action line look like.
#[derive(Debug, Clone)]
pub struct Encoder {
    /// The index or data stream name.
    pub index: IndexName,
    /// The bulk action.
    pub op_type: OpType,
    /// The record field whose value is the `_id`; the event id when unset.
    pub id_key: Option<String>,
    /// The field the event time goes into.
    pub time_key: String,
    /// How finely the time is written.
    pub precision: TimePrecision,
    /// The field the tag goes into, if any.
    pub tag_key: Option<String>,
    /// Most documents in one body (0: no limit).
    pub max_events: usize,
    /// Most bytes in one body before compression (0: no limit).
    pub max_bytes: usize,
}

/// One `_bulk` request body and which events of the batch it carries, in
/// body order (the answer's items come back in the same order).
#[derive(Debug)]
pub struct Body {
    /// Batch indices of the documents, in order.
    pub events: Vec<usize>,
    /// The NDJSON text.
    pub bytes: Vec<u8>,
}

/// An event that could not become a document (its index name or `_id`
/// needs a field it lacks): it goes to `errors` without being sent.
#[derive(Debug)]
pub struct EncodeFailure {
    /// Index in the batch.
    pub index: usize,
    /// Why.
    pub reason: String,
}

/// Reused per batch so a steady stream allocates little: the last rendered
/// index name per second of event time, and the RFC 3339 seconds text.
#[derive(Debug, Default)]
struct Scratch {
    index_secs: Option<i64>,
    index: String,
    time_secs: Option<i64>,
    time_prefix: String,
    pair: Vec<u8>,
}

impl Encoder {
    /// Splits `batch` into bodies within the count and size limits.
    pub fn bodies(&self, batch: &Batch) -> (Vec<Body>, Vec<EncodeFailure>) {
        let tag = batch.tag.as_str();
        let tag_json = self.tag_key.as_ref().map(|_| json_string(tag));
        let mut scratch = Scratch::default();
        let mut bodies = Vec::new();
        let mut failures = Vec::new();
        let per_body = if self.max_events == 0 {
            batch.len()
        } else {
            self.max_events.min(batch.len())
        };
        let mut current = Body {
            events: Vec::with_capacity(per_body),
            bytes: Vec::new(),
        };
        let empty = Map::new();
        for (i, event) in batch.events.iter().enumerate() {
            scratch.pair.clear();
            let mut pair = std::mem::take(&mut scratch.pair);
            let written = self.write_pair(
                tag,
                tag_json.as_deref(),
                event,
                &empty,
                &mut scratch,
                &mut pair,
            );
            if let Err(reason) = written {
                failures.push(EncodeFailure { index: i, reason });
                scratch.pair = pair;
                continue;
            }
            let count = current.events.len();
            let full_by_count = self.max_events > 0 && count >= self.max_events;
            let full_by_size = self.max_bytes > 0
                && count > 0
                && current.bytes.len() + pair.len() > self.max_bytes;
            if full_by_count || full_by_size {
                let capacity = current.bytes.len();
                bodies.push(std::mem::replace(
                    &mut current,
                    Body {
                        events: Vec::with_capacity(per_body),
                        bytes: Vec::with_capacity(capacity),
                    },
                ));
            }
            if current.bytes.capacity() == 0 {
                let wanted = pair.len() * per_body;
                current.bytes.reserve(if self.max_bytes > 0 {
                    wanted.min(self.max_bytes + pair.len())
                } else {
                    wanted
                });
            }
            current.bytes.extend_from_slice(&pair);
            current.events.push(i);
            scratch.pair = pair;
        }
        if !current.events.is_empty() {
            bodies.push(current);
        }
        (bodies, failures)
    }

    /// Writes the action line and the document of one event.
    fn write_pair(
        &self,
        tag: &str,
        tag_json: Option<&str>,
        event: &Event,
        empty: &Map<String, Value>,
        scratch: &mut Scratch,
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        let needs_map = self.index.reads_fields() || self.id_key.is_some();
        let map = if needs_map {
            event.record.to_map()
        } else {
            std::borrow::Cow::Borrowed(empty)
        };
        // The index name: reused while the second (and so the date) is the
        // same and nothing per-record goes into it.
        let cacheable = !self.index.reads_fields() && !self.index.subsec;
        if !cacheable || scratch.index_secs != Some(event.time.secs()) {
            scratch.index.clear();
            self.index
                .render(tag, &map, event.time, &mut scratch.index)?;
            scratch.index_secs = cacheable.then_some(event.time.secs());
        }
        out.extend_from_slice(self.op_type.action());
        write_json_str(out, &scratch.index);
        match &self.id_key {
            Some(key) => {
                let id = match map.get(key) {
                    Some(Value::String(s)) if !s.is_empty() => s.clone(),
                    Some(Value::Number(n)) => n.to_string(),
                    Some(_) => {
                        return Err(format!(
                            "field {key:?} (the `id_key`) is not a string or a number"
                        ))
                    }
                    None => {
                        return Err(format!(
                            "the event has no field {key:?} for the `_id` (`id_key`)"
                        ))
                    }
                };
                out.extend_from_slice(b",\"_id\":");
                write_json_str(out, &id);
            }
            None if event.id.is_some() => {
                out.extend_from_slice(b",\"_id\":\"");
                write_uuid(out, event.id.as_u128());
                out.push(b'"');
            }
            None => {}
        }
        out.extend_from_slice(b"}}\n");
        self.write_document(tag_json, event, scratch, out);
        out.push(b'\n');
        Ok(())
    }

    /// The record with `time_key` (and `tag_key`) added. A record that has
    /// a field of that name already gets it replaced, never duplicated:
    /// both servers refuse a document with a key twice.
    fn write_document(
        &self,
        tag_json: Option<&str>,
        event: &Event,
        scratch: &mut Scratch,
        out: &mut Vec<u8>,
    ) {
        let start = out.len();
        let clash = |key: &str| match &event.record {
            Record::Raw(bytes) => has_quoted(bytes, key),
            Record::Map(m) => m.contains_key(key),
        };
        let tag_key = self.tag_key.as_deref().filter(|_| tag_json.is_some());
        if clash(&self.time_key) || tag_key.is_some_and(clash) {
            let mut map = event.record.to_map().into_owned();
            map.remove(&self.time_key);
            if let Some(k) = tag_key {
                map.remove(k);
            }
            let _ = serde_json::to_writer(&mut *out, &map);
        } else {
            event.record.write_json(out);
        }
        if out.last() != Some(&b'}') {
            // Cannot happen for a validated record; keep the body valid.
            out.truncate(start);
            out.extend_from_slice(b"{}");
        }
        out.pop();
        let empty = out[start..]
            .iter()
            .rev()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| *b == b'{');
        if !empty {
            out.push(b',');
        }
        write_json_str(out, &self.time_key);
        out.extend_from_slice(b":\"");
        self.write_time(event.time, scratch, out);
        out.push(b'"');
        if let (Some(k), Some(v)) = (tag_key, tag_json) {
            out.push(b',');
            write_json_str(out, k);
            out.push(b':');
            out.extend_from_slice(v.as_bytes());
        }
        out.push(b'}');
    }

    /// RFC 3339 in UTC, `Z` suffix, the fraction to the chosen precision.
    fn write_time(&self, time: EventTime, scratch: &mut Scratch, out: &mut Vec<u8>) {
        let secs = time.secs();
        if scratch.time_secs != Some(secs) {
            scratch.time_prefix.clear();
            let _ = write!(
                scratch.time_prefix,
                "{}",
                to_datetime(time).format("%Y-%m-%dT%H:%M:%S")
            );
            scratch.time_secs = Some(secs);
        }
        out.extend_from_slice(scratch.time_prefix.as_bytes());
        let nanos = time.subsec_nanos();
        let (value, digits) = match self.precision {
            TimePrecision::Millis => (nanos / 1_000_000, 3),
            TimePrecision::Micros => (nanos / 1_000, 6),
            TimePrecision::Nanos => (nanos, 9),
        };
        out.push(b'.');
        let mut buf = [b'0'; 9];
        let mut v = value;
        for slot in buf[..digits].iter_mut().rev() {
            *slot = b'0' + (v % 10) as u8;
            v /= 10;
        }
        out.extend_from_slice(&buf[..digits]);
        out.push(b'Z');
    }
}

/// Whether `"key"` appears in `text` (a key, or possibly a string value:
/// a false positive only costs parsing that record).
fn has_quoted(text: &[u8], key: &str) -> bool {
    let key = key.as_bytes();
    memchr::memmem::find_iter(text, key)
        .any(|at| at > 0 && text[at - 1] == b'"' && text.get(at + key.len()) == Some(&b'"'))
}

/// `s` as a JSON string literal.
pub fn json_string(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len() + 2);
    write_json_str(&mut out, s);
    String::from_utf8(out).unwrap_or_default()
}

/// Appends `s` as a JSON string literal; copies it as is when nothing needs
/// escaping (the usual case for index names and ids).
fn write_json_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

/// The canonical UUID text of `bits`, as `EventId`'s `Display` writes it,
/// without going through the formatter.
fn write_uuid(out: &mut Vec<u8>, bits: u128) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in 0..32 {
        if matches!(i, 8 | 12 | 16 | 20) {
            out.push(b'-');
        }
        let nibble = (bits >> (124 - 4 * i)) & 0xf;
        out.push(HEX[nibble as usize]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use serde_json::json;
    use ulog_engine::{EventId, Tag};

    fn encoder(index: &str) -> Encoder {
        Encoder {
            index: IndexName::parse("index", index).unwrap(),
            op_type: OpType::Create,
            id_key: None,
            time_key: "@timestamp".into(),
            precision: TimePrecision::Millis,
            tag_key: None,
            max_events: 0,
            max_bytes: 0,
        }
    }

    fn event(json: &str, secs: i64, nanos: u32) -> Event {
        let mut e = Event::new(
            EventTime::from_secs_nanos(secs, nanos),
            Record::from_json_bytes(Bytes::from(json.to_string())).unwrap(),
        );
        e.id = EventId::fresh(1).next().unwrap();
        e
    }

    fn lines(body: &Body) -> Vec<serde_json::Value> {
        body.bytes
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect()
    }

    #[test]
    fn action_lines_carry_index_and_event_id() {
        let e = event(
            r#"{"household":"hh-0042","power_w":483.0}"#,
            1_462_384_931,
            123_456_789,
        );
        let id = e.id.to_string();
        let batch = Batch::new(Tag::parse("home.hh-0042.owl").unwrap(), vec![e]);
        let mut enc = encoder("mk-{tag_parts[1]}-%Y.%m.%d");
        enc.tag_key = Some("tag".into());
        let (bodies, failures) = enc.bodies(&batch);
        assert!(failures.is_empty());
        assert_eq!(bodies.len(), 1);
        let l = lines(&bodies[0]);
        assert_eq!(
            l[0],
            json!({"create": {"_index": "mk-hh-0042-2016.05.04", "_id": id}})
        );
        assert_eq!(
            l[1],
            json!({"household": "hh-0042", "power_w": 483.0,
                   "@timestamp": "2016-05-04T18:02:11.123Z", "tag": "home.hh-0042.owl"})
        );
        assert!(bodies[0].bytes.ends_with(b"\n"));
    }

    #[test]
    fn time_precision_and_fractions() {
        let batch = Batch::new(
            Tag::parse("t").unwrap(),
            vec![event("{}", 0, 5), event("{ }", 1, 999_999_999)],
        );
        let mut enc = encoder("x");
        enc.precision = TimePrecision::Nanos;
        let (bodies, _) = enc.bodies(&batch);
        let l = lines(&bodies[0]);
        assert_eq!(
            l[1],
            json!({"@timestamp": "1970-01-01T00:00:00.000000005Z"})
        );
        assert_eq!(
            l[3],
            json!({"@timestamp": "1970-01-01T00:00:01.999999999Z"})
        );
        enc.precision = TimePrecision::Millis;
        let (bodies, _) = enc.bodies(&batch);
        assert_eq!(
            lines(&bodies[0])[3],
            json!({"@timestamp": "1970-01-01T00:00:01.999Z"})
        );
    }

    #[test]
    fn an_existing_time_field_is_replaced_not_duplicated() {
        let batch = Batch::new(
            Tag::parse("t").unwrap(),
            vec![event(r#"{"@timestamp":"old","a":1}"#, 0, 0)],
        );
        let (bodies, _) = encoder("x").bodies(&batch);
        let text = String::from_utf8(bodies[0].bytes.clone()).unwrap();
        assert_eq!(text.matches("@timestamp").count(), 1, "{text}");
        assert_eq!(
            lines(&bodies[0])[1],
            json!({"a":1,"@timestamp":"1970-01-01T00:00:00.000Z"})
        );
        assert!(has_quoted(br#"{"@timestamp":1}"#, "@timestamp"));
        assert!(!has_quoted(
            br#"{"x":"@timestamp-ish","@timestampx":2}"#,
            "@timestamp"
        ));
    }

    #[test]
    fn splits_by_count_and_bytes() {
        let events = (0..7)
            .map(|i| event(&format!(r#"{{"i":{i}}}"#), 0, 0))
            .collect();
        let batch = Batch::new(Tag::parse("t").unwrap(), events);
        let mut enc = encoder("x");
        enc.max_events = 3;
        let (bodies, _) = enc.bodies(&batch);
        let split: Vec<_> = bodies.iter().map(|b| b.events.clone()).collect();
        assert_eq!(split, [vec![0, 1, 2], vec![3, 4, 5], vec![6]]);
        let pair = bodies[2].bytes.len();
        enc.max_events = 0;
        enc.max_bytes = pair * 2;
        let (bodies, _) = enc.bodies(&batch);
        let split: Vec<_> = bodies.iter().map(|b| b.events.clone()).collect();
        assert_eq!(split, [vec![0, 1], vec![2, 3], vec![4, 5], vec![6]]);
        assert!(bodies.iter().all(|b| b.bytes.len() <= pair * 2));
    }

    #[test]
    fn id_key_and_field_placeholders_read_the_record() {
        let batch = Batch::new(
            Tag::parse("t").unwrap(),
            vec![
                event(r#"{"vin":"SJNFAAZE0U6000001","reading":"r-1"}"#, 0, 0),
                event(r#"{"vin":"SJNFAAZE0U6000002"}"#, 0, 0),
                event(r#"{"reading":"r-3"}"#, 0, 0),
            ],
        );
        let mut enc = encoder("cars-{vin}");
        enc.id_key = Some("reading".into());
        let (bodies, failures) = enc.bodies(&batch);
        assert_eq!(bodies[0].events, [0]);
        assert_eq!(
            lines(&bodies[0])[0],
            json!({"create": {"_index": "cars-SJNFAAZE0U6000001", "_id": "r-1"}})
        );
        let reasons: Vec<_> = failures
            .iter()
            .map(|f| (f.index, f.reason.as_str()))
            .collect();
        assert_eq!(
            reasons,
            [
                (
                    1,
                    "the event has no field \"reading\" for the `_id` (`id_key`)"
                ),
                (2, "the event has no field \"vin\" for the index name"),
            ]
        );
    }

    #[test]
    fn index_names_are_checked_and_give_template_patterns() {
        let p = |t: &str| IndexName::parse("index", t).map(|i| i.pattern());
        assert_eq!(p("mk-%Y.%m.%d").unwrap().as_deref(), Some("mk-*"));
        assert_eq!(p("mk-{tag}-%Y").unwrap().as_deref(), Some("mk-*-*"));
        assert_eq!(p("logs").unwrap().as_deref(), Some("logs"));
        assert_eq!(p("{tag}").unwrap(), None);
        assert!(p("Mk-%Y").is_err());
        assert!(p("mk/x").is_err());
        assert!(p("_mk").is_err());
        assert!(p("mk-%Q").is_err());
        assert!(p("mk-{tag").is_err());
        assert!(IndexName::parse("index", "logs").unwrap().is_fixed());
    }

    #[test]
    fn uuids_match_the_engine_text() {
        for id in EventId::fresh(20) {
            let mut out = Vec::new();
            write_uuid(&mut out, id.as_u128());
            assert_eq!(String::from_utf8(out).unwrap(), id.to_string());
        }
    }
}
