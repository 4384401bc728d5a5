//! `filter parse`: parses one field of each event with any format, like
//! fluentd's `filter_parser`. Use it when the text to parse arrives inside a
//! record: a docker `log` field, a syslog `message` holding JSON or logfmt,
//! an HTTP body field.
//!
//! Events whose field does not parse follow `on_error`: sent to the `errors`
//! label with the parser's reason (the default), kept, or dropped with a
//! counted warning.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use tracing::warn;
use ulog_engine::{
    async_trait, Batch, BuildContext, BuildError, Event, Filter, ParamKind, ParamSpec, Params,
    PluginError, PluginKind, PluginSpec, Record, Registry, Rejected,
};

use crate::{build_parser, format_params, Parser};

/// What to do with an event whose field does not parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnError {
    /// Reject it: the engine sends it to the `errors` label with the reason.
    Errors,
    /// Keep it as it was (only the field, without `reserve_data`).
    Keep,
    /// Drop it, counting and logging a warning.
    Drop,
}

/// The spec of the `parse` filter: its own options plus [`format_params`].
pub fn spec() -> PluginSpec {
    let mut spec = PluginSpec::new(
        PluginKind::Filter,
        "parse",
        "Parses one field of each event (a JSON, logfmt, syslog or access-log line carried in a \
         record) into fields, with any `format`; the parsed time becomes the event time.",
    )
    .param(ParamSpec::with_default(
        "key_name",
        ParamKind::Str,
        "message",
        "The field holding the text to parse.",
    ))
    .param(ParamSpec::with_default(
        "reserve_data",
        ParamKind::Bool,
        false,
        "Keep the event's other fields next to the parsed ones (parsed fields win on a clash); \
         false: the record is only the parsed fields.",
    ))
    .param(ParamSpec::with_default(
        "remove_key_name_field",
        ParamKind::Bool,
        false,
        "With `reserve_data`, drop the `key_name` field once it parsed.",
    ))
    .param(ParamSpec::with_default(
        "reserve_time",
        ParamKind::Bool,
        false,
        "Keep the event's time even when the parsed text carries one.",
    ))
    .param(ParamSpec::optional(
        "inject_key_prefix",
        ParamKind::Str,
        "Prefix every parsed field name with this (\"app_\" turns `level` into `app_level`).",
    ))
    .param(ParamSpec::optional(
        "hash_value_field",
        ParamKind::Str,
        "Put the parsed fields under this one field, as a map, instead of at the top level.",
    ))
    .param(ParamSpec::with_default(
        "on_error",
        ParamKind::OneOf(&["errors", "keep", "drop"]),
        "errors",
        "When the field is missing or does not parse: \"errors\" sends the event unchanged to \
         the `errors` label with the reason, \"keep\" passes it on unchanged (only the field \
         without `reserve_data`), \"drop\" drops it with a counted warning.",
    ));
    for p in format_params("json") {
        spec = spec.param(p);
    }
    spec
}

/// Registers the `parse` filter.
pub fn register(registry: &mut Registry) {
    registry.add_filter(spec(), |params: &Params, _ctx: &BuildContext| {
        Ok(Arc::new(ParseFilter::from_params(params)?) as Arc<dyn Filter>)
    });
}

/// The `parse` filter.
pub struct ParseFilter {
    key: String,
    parser: Arc<dyn Parser>,
    reserve_data: bool,
    remove_key: bool,
    reserve_time: bool,
    prefix: Option<String>,
    hash_value_field: Option<String>,
    on_error: OnError,
    dropped: AtomicU64,
}

impl ParseFilter {
    /// Builds the filter from validated parameters.
    ///
    /// # Errors
    /// A [`BuildError`] naming the parameter that is wrong.
    pub fn from_params(params: &Params) -> Result<Self, BuildError> {
        let on_error = match params.str("on_error")? {
            "errors" => OnError::Errors,
            "keep" => OnError::Keep,
            "drop" => OnError::Drop,
            other => {
                return Err(BuildError::param(
                    "on_error",
                    format!("expected errors, keep or drop, got {other:?}"),
                ))
            }
        };
        let key = params.str("key_name")?.to_string();
        if key.is_empty() {
            return Err(BuildError::param("key_name", "must not be empty"));
        }
        Ok(Self {
            key,
            parser: build_parser(params)?,
            reserve_data: params.bool("reserve_data")?,
            remove_key: params.bool("remove_key_name_field")?,
            reserve_time: params.bool("reserve_time")?,
            prefix: params.opt_str("inject_key_prefix")?.map(str::to_string),
            hash_value_field: params.opt_str("hash_value_field")?.map(str::to_string),
            on_error,
            dropped: AtomicU64::new(0),
        })
    }

    /// Events dropped so far with `on_error = "drop"`.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Parses the field of one event in place. On error the event is left
    /// as it was and the reason returned.
    fn apply(&self, event: &mut Event) -> Result<(), String> {
        if self.reserve_data && !self.remove_key && self.hash_value_field.is_none() {
            if let Record::Raw(bytes) = &event.record {
                let bytes = bytes.clone();
                match self.apply_raw(&bytes, event)? {
                    RawOutcome::Done => return Ok(()),
                    RawOutcome::NotRaw => {}
                    RawOutcome::Clash(fields) => {
                        // The key field still holds its text, so adding the
                        // parsed fields to the map is what the map path does.
                        event.record.map_mut().extend(fields);
                        return Ok(());
                    }
                }
            }
        }
        self.apply_map(event)
    }

    /// The fast path for a raw JSON record with `reserve_data` (and neither
    /// `remove_key_name_field` nor `hash_value_field`): finds the key field
    /// without building a map and appends the parsed fields to the text.
    ///
    /// Returns [`RawOutcome::NotRaw`] before parsing anything when the
    /// record repeats a key, [`RawOutcome::Clash`] (time already applied)
    /// when a parsed field name is already in the record.
    fn apply_raw(&self, bytes: &Bytes, event: &mut Event) -> Result<RawOutcome, String> {
        let Ok(TopLevel(entries)) = serde_json::from_slice::<TopLevel<'_>>(bytes) else {
            // Cannot happen for validated records; the map path decides.
            return Ok(RawOutcome::NotRaw);
        };
        let mut keys: Vec<&str> = entries.iter().map(|(k, _)| k.as_ref()).collect();
        keys.sort_unstable();
        if keys.windows(2).any(|w| w[0] == w[1]) {
            // The map keeps the last of repeated keys; let it decide.
            return Ok(RawOutcome::NotRaw);
        }
        let value = match entries.iter().find(|(k, _)| k == self.key.as_str()) {
            None => return Err(format!("field `{}` is missing", self.key)),
            Some((_, v)) => v.get().trim_matches(|c: char| c.is_ascii_whitespace()),
        };
        let input = if value.starts_with('"') {
            if value.contains('\\') {
                match serde_json::from_str::<String>(value) {
                    Ok(s) => Bytes::from(s),
                    Err(_) => return Ok(RawOutcome::NotRaw),
                }
            } else {
                // No escapes: the text between the quotes, without a copy.
                bytes.slice_ref(&value.as_bytes()[1..value.len() - 1])
            }
        } else {
            return Err(format!(
                "field `{}` is {}, not a string",
                self.key,
                raw_type_name(value)
            ));
        };
        let parsed = self
            .parser
            .parse(input)
            .map_err(|e| format!("field `{}`: {e}", self.key))?;
        if let Some(t) = parsed.time {
            if !self.reserve_time {
                event.time = t;
            }
        }
        let fields = match parsed.record {
            Record::Map(m) => m,
            raw @ Record::Raw(_) => raw.to_map().into_owned(),
        };
        let name = |k: &str| -> String {
            match &self.prefix {
                None => k.to_string(),
                Some(p) => format!("{p}{k}"),
            }
        };
        let clash = fields.keys().any(|k| match &self.prefix {
            None => keys.binary_search(&k.as_str()).is_ok(),
            Some(p) => keys
                .binary_search_by(|probe| {
                    let probe = probe.as_bytes();
                    let (head, tail) = probe.split_at(probe.len().min(p.len()));
                    head.cmp(p.as_bytes()).then_with(|| tail.cmp(k.as_bytes()))
                })
                .is_ok(),
        });
        if clash {
            let fields = fields.into_iter().map(|(k, v)| (name(&k), v)).collect();
            return Ok(RawOutcome::Clash(fields));
        }
        let body = trim_ascii_end(bytes);
        let mut out = Vec::with_capacity(bytes.len() + 32 * fields.len() + 16);
        // A validated object ends in '}' once trailing whitespace is gone.
        out.extend_from_slice(&body[..body.len() - 1]);
        let mut first = entries.is_empty();
        for (k, v) in &fields {
            if !first {
                out.push(b',');
            }
            first = false;
            // Writing strings and JSON values into a Vec cannot fail.
            match &self.prefix {
                None => {
                    let _ = serde_json::to_writer(&mut out, k);
                }
                Some(p) => {
                    let _ = serde_json::to_writer(&mut out, &format!("{p}{k}"));
                }
            }
            out.push(b':');
            let _ = serde_json::to_writer(&mut out, v);
        }
        out.push(b'}');
        event.record = Record::Raw(Bytes::from(out));
        Ok(RawOutcome::Done)
    }

    /// The general path: parses the record into a map.
    fn apply_map(&self, event: &mut Event) -> Result<(), String> {
        let map = event.record.map_mut();
        let text = match map.get_mut(self.key.as_str()) {
            None => return Err(format!("field `{}` is missing", self.key)),
            Some(Value::String(s)) => std::mem::take(s),
            Some(other) => {
                return Err(format!(
                    "field `{}` is {}, not a string",
                    self.key,
                    type_name(other)
                ))
            }
        };
        // The parser may keep the bytes (json keeps the line as the record);
        // `keep` gives the text back without a copy when it did not.
        let input = Bytes::from(text);
        let keep = input.clone();
        let parsed = match self.parser.parse(input) {
            Ok(p) => p,
            Err(e) => {
                map.insert(self.key.clone(), Value::String(bytes_to_string(keep)));
                return Err(format!("field `{}`: {e}", self.key));
            }
        };
        if let Some(t) = parsed.time {
            if !self.reserve_time {
                event.time = t;
            }
        }
        let simple = !self.reserve_data && self.prefix.is_none() && self.hash_value_field.is_none();
        if simple {
            // The parsed record as it is: a json line stays raw.
            event.record = parsed.record;
            return Ok(());
        }
        let fields = match parsed.record {
            Record::Map(m) => m,
            raw @ Record::Raw(_) => raw.to_map().into_owned(),
        };
        let fields: Map<String, Value> = match &self.prefix {
            None => fields,
            Some(p) => fields
                .into_iter()
                .map(|(k, v)| (format!("{p}{k}"), v))
                .collect(),
        };
        let map = event.record.map_mut();
        if !self.reserve_data {
            map.clear();
        } else if self.remove_key {
            map.shift_remove(self.key.as_str());
        } else {
            map.insert(self.key.clone(), Value::String(bytes_to_string(keep)));
        }
        match &self.hash_value_field {
            Some(field) => {
                map.insert(field.clone(), Value::Object(fields));
            }
            None => map.extend(fields),
        }
        Ok(())
    }
}

/// What the raw fast path did.
enum RawOutcome {
    /// The record was rewritten.
    Done,
    /// Nothing done: the map path should handle the event.
    NotRaw,
    /// The parsed fields (prefixed) clash with record fields: merge them
    /// into the map. The event time is already set.
    Clash(Map<String, Value>),
}

/// A JSON object's top-level entries, borrowed from its text: names
/// unescaped (borrowed when they hold no escape), values as raw JSON.
struct TopLevel<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for TopLevel<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> Visitor<'de> for Entries {
            type Value = TopLevel<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some((Name(k), v)) = map.next_entry::<Name<'de>, &'de RawValue>()? {
                    entries.push((k, v));
                }
                Ok(TopLevel(entries))
            }
        }
        d.deserialize_map(Entries)
    }
}

/// A field name, borrowed from the text when it needs no unescaping.
struct Name<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Name<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Str;
        impl<'de> Visitor<'de> for Str {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Name(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Name(Cow::Owned(v.to_string())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Name(Cow::Owned(v)))
            }
        }
        d.deserialize_str(Str)
    }
}

/// What kind of JSON value raw (non-string) text holds, for error messages.
fn raw_type_name(raw: &str) -> &'static str {
    match raw.as_bytes().first() {
        Some(b'n') => "null",
        Some(b't' | b'f') => "a boolean",
        Some(b'[') => "an array",
        Some(b'{') => "an object",
        Some(b'"') => "a string",
        _ => "a number",
    }
}

fn trim_ascii_end(bytes: &[u8]) -> &[u8] {
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    &bytes[..end]
}

fn bytes_to_string(b: Bytes) -> String {
    // The bytes came from a String, so they are UTF-8; unique bytes convert
    // without a copy.
    match String::from_utf8(Vec::from(b)) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[async_trait]
impl Filter for ParseFilter {
    /// Each event is parsed on its own, so large batches may be split across
    /// cores.
    fn order_independent(&self) -> bool {
        true
    }

    async fn filter(
        &self,
        batch: &mut Batch,
        rejects: &mut Vec<Rejected>,
    ) -> Result<(), PluginError> {
        let mut dropped = 0u64;
        let mut first_reason = None;
        let on_error = self.on_error;
        let events = std::mem::take(&mut batch.events);
        batch.events.reserve(events.len());
        for mut event in events {
            match self.apply(&mut event) {
                Ok(()) => batch.events.push(event),
                Err(reason) => match on_error {
                    OnError::Errors => rejects.push(Rejected { event, reason }),
                    OnError::Keep => {
                        if !self.reserve_data {
                            let map = event.record.map_mut();
                            map.retain(|k, _| *k == self.key);
                        }
                        batch.events.push(event);
                    }
                    OnError::Drop => {
                        dropped += 1;
                        first_reason.get_or_insert(reason);
                    }
                },
            }
        }
        if dropped > 0 {
            let before = self.dropped.fetch_add(dropped, Ordering::Relaxed);
            let total = before + dropped;
            // Every batch for the first ten, then once per thousand events, so
            // a stream of bad lines cannot flood the log.
            if before < 10 || before / 1000 != total / 1000 {
                warn!(
                    tag = %batch.tag,
                    dropped,
                    total,
                    reason = first_reason.as_deref().unwrap_or(""),
                    "parse: dropped events whose field did not parse (on_error = \"drop\")"
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use ulog_engine::{EventTime, Tag, Value as P};

    fn filter(given: &[(&str, P)]) -> ParseFilter {
        let given: Vec<(String, P)> = given
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        ParseFilter::from_params(&spec().validate(&given).unwrap()).unwrap()
    }

    fn batch(messages: &[&str]) -> Batch {
        let events = messages
            .iter()
            .map(|m| {
                Event::new(
                    EventTime::from_secs_nanos(1, 0),
                    json!({ "message": m }).as_object().unwrap().clone(),
                )
            })
            .collect();
        Batch::new(Tag::parse("t").unwrap(), events)
    }

    #[tokio::test]
    async fn drop_counts_what_it_drops() {
        let f = filter(&[("format", "ltsv".into()), ("on_error", "drop".into())]);
        let mut b = batch(&["a:1", "junk", "b:2", "more junk"]);
        let mut rejects = Vec::new();
        f.filter(&mut b, &mut rejects).await.unwrap();
        assert_eq!(b.len(), 2);
        assert!(rejects.is_empty());
        assert_eq!(f.dropped(), 2);
        let mut b = batch(&["junk"]);
        f.filter(&mut b, &mut rejects).await.unwrap();
        assert_eq!(f.dropped(), 3);
    }

    #[tokio::test]
    async fn errors_keep_the_original_event_and_the_reason() {
        let f = filter(&[("format", "ltsv".into())]);
        let mut b = batch(&["a:1", "junk"]);
        let mut rejects = Vec::new();
        f.filter(&mut b, &mut rejects).await.unwrap();
        assert_eq!(b.len(), 1);
        assert_eq!(rejects.len(), 1);
        assert_eq!(
            rejects[0].event.record.to_json_string(),
            r#"{"message":"junk"}"#
        );
        assert!(
            rejects[0].reason.starts_with("field `message`: ltsv:"),
            "{}",
            rejects[0].reason
        );
    }

    /// Runs `f` on one event holding `record` as raw text and as a map;
    /// returns both outcomes: (record as a value, time, kept/rejected).
    fn both(f: &ParseFilter, record: &str) -> [(Option<serde_json::Value>, i64, u32, bool); 2] {
        ulog_engine::event::validate_json_object(record.as_bytes()).unwrap();
        let map: Map<String, Value> = serde_json::from_str(record).unwrap();
        let records = [
            Record::Raw(Bytes::copy_from_slice(record.as_bytes())),
            Record::Map(map),
        ];
        records.map(|r| {
            let mut b = Batch::new(
                Tag::parse("t").unwrap(),
                vec![Event::new(EventTime::from_secs_nanos(1, 0), r)],
            );
            let mut rejects = Vec::new();
            block_on(f.filter(&mut b, &mut rejects)).unwrap();
            let (ev, rejected) = match (b.events.pop(), rejects.pop()) {
                (Some(e), None) => (Some(e), false),
                (None, Some(r)) => (Some(r.event), true),
                (None, None) => (None, false),
                other => panic!("both kept and rejected: {other:?}"),
            };
            match ev {
                None => (None, 0, 0, false),
                Some(ev) => {
                    if let Record::Raw(bytes) = &ev.record {
                        ulog_engine::event::validate_json_object(bytes).unwrap();
                    }
                    (
                        Some(serde_json::Value::Object(ev.record.to_map().into_owned())),
                        ev.time.secs(),
                        ev.time.subsec_nanos(),
                        rejected,
                    )
                }
            }
        })
    }

    /// Polls a future that never waits (the filter does not).
    fn block_on<F: std::future::Future>(fut: F) -> F::Output {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(fut)
    }

    /// The result of the raw path for `record`, checked equal to the map path.
    fn same(f: &ParseFilter, record: &str) -> Option<serde_json::Value> {
        let [raw, map] = both(f, record);
        assert_eq!(raw, map, "raw and map paths differ for {record}");
        raw.0
    }

    /// Whether the raw fast path keeps the record raw.
    fn stays_raw(f: &ParseFilter, record: &str) -> bool {
        let mut ev = Event::new(
            EventTime::from_secs_nanos(1, 0),
            Record::Raw(Bytes::copy_from_slice(record.as_bytes())),
        );
        f.apply(&mut ev).unwrap();
        matches!(ev.record, Record::Raw(_))
    }

    fn reserve(extra: &[(&str, P)]) -> ParseFilter {
        let mut given = vec![
            ("format", P::from("ltsv")),
            ("key_name", "msg".into()),
            ("reserve_data", true.into()),
        ];
        given.extend(extra.iter().cloned());
        filter(&given)
    }

    #[test]
    fn raw_records_get_the_parsed_fields_appended() {
        let f = reserve(&[]);
        let cases = [
            (
                r#"{"msg":"a:1\tb:2","x":1}"#,
                json!({"msg":"a:1\tb:2","x":1,"a":"1","b":"2"}),
            ),
            (r#"{"msg":"a:1"}"#, json!({"msg":"a:1","a":"1"})),
            (
                " { \"msg\" : \"a:1\" , \"n\" : [1, {\"z\": null}] } \r\n",
                json!({"msg":"a:1","n":[1,{"z":null}],"a":"1"}),
            ),
            (
                r#"{"x":"ü","msg":"a:caf\u00e9 \"q\"\\\tb:日本\n","y":1.5e3}"#,
                json!({"x":"ü","msg":"a:café \"q\"\\\tb:日本\n","y":1500.0,"a":"café \"q\"\\","b":"日本\n"}),
            ),
            (
                r#"{"m\u0073g":"a:1","\u00e9":2}"#,
                json!({"msg":"a:1","é":2,"a":"1"}),
            ),
        ];
        for (record, want) in cases {
            assert!(stays_raw(&f, record), "{record}");
            assert_eq!(same(&f, record), Some(want), "{record}");
        }
    }

    #[test]
    fn raw_record_order_is_the_map_order() {
        let f = reserve(&[]);
        let mut ev = Event::new(
            EventTime::from_secs_nanos(1, 0),
            Record::Raw(Bytes::from_static(br#"{"z":0,"msg":"b:1\ta:2","c":3}"#)),
        );
        f.apply(&mut ev).unwrap();
        assert_eq!(
            ev.record.to_json_string(),
            r#"{"z":0,"msg":"b:1\ta:2","c":3,"b":"1","a":"2"}"#
        );
    }

    #[test]
    fn clashes_and_repeated_keys_take_the_map_path() {
        let f = reserve(&[]);
        for (record, want) in [
            (
                r#"{"a":"old","msg":"a:1\tb:2"}"#,
                json!({"a":"1","msg":"a:1\tb:2","b":"2"}),
            ),
            (r#"{"msg":"msg:1"}"#, json!({"msg":"1"})),
            (
                r#"{"\u0061":"old","msg":"a:1"}"#,
                json!({"a":"1","msg":"a:1"}),
            ),
            (r#"{"msg":"x:1","msg":"a:2"}"#, json!({"msg":"a:2","a":"2"})),
        ] {
            assert!(!stays_raw(&f, record), "{record}");
            assert_eq!(same(&f, record), Some(want), "{record}");
        }
    }

    #[test]
    fn prefixes_remove_key_and_hash_field_match_the_map_path() {
        let p = reserve(&[("inject_key_prefix", "p_".into())]);
        assert!(stays_raw(
            &p,
            r#"{"msg":"a:1","p":0,"p_":0,"p_aa":0,"a":0}"#
        ));
        assert_eq!(
            same(&p, r#"{"msg":"a:1","p":0,"p_":0,"p_aa":0,"a":0}"#),
            Some(json!({"msg":"a:1","p":0,"p_":0,"p_aa":0,"a":0,"p_a":"1"}))
        );
        assert!(!stays_raw(&p, r#"{"p_a":0,"msg":"a:1\tb:2"}"#));
        assert_eq!(
            same(&p, r#"{"p_a":0,"msg":"a:1\tb:2"}"#),
            Some(json!({"p_a":"1","msg":"a:1\tb:2","p_b":"2"}))
        );
        let r = reserve(&[("remove_key_name_field", true.into())]);
        assert_eq!(
            same(&r, r#"{"x":1,"msg":"a:1"}"#),
            Some(json!({"x":1,"a":"1"}))
        );
        let h = reserve(&[("hash_value_field", "h".into())]);
        assert_eq!(
            same(&h, r#"{"x":1,"msg":"a:1"}"#),
            Some(json!({"x":1,"msg":"a:1","h":{"a":"1"}}))
        );
    }

    #[test]
    fn raw_json_fields_and_time_match_the_map_path() {
        let f = filter(&[
            ("format", "json".into()),
            ("key_name", "msg".into()),
            ("reserve_data", true.into()),
            ("time_key", "ts".into()),
            ("time_format", "unix_ms".into()),
        ]);
        let record = r#"{"msg":"{\"ts\":1700000000500,\"u\":{\"n\":[1,\"é\"]},\"v\":null}"}"#;
        assert!(stays_raw(&f, record));
        let [raw, map] = both(&f, record);
        assert_eq!(raw, map);
        assert_eq!((raw.1, raw.2), (1_700_000_000, 500_000_000));
        let kept = filter(&[
            ("format", "json".into()),
            ("key_name", "msg".into()),
            ("reserve_data", true.into()),
            ("time_key", "ts".into()),
            ("time_format", "unix_ms".into()),
            ("reserve_time", true.into()),
        ]);
        let [raw, map] = both(&kept, record);
        assert_eq!(raw, map);
        assert_eq!((raw.1, raw.2), (1, 0));
        // A clash after the time was applied: the time is applied once.
        let clash = r#"{"u":0,"msg":"{\"ts\":1700000000500,\"u\":1}"}"#;
        let [raw, map] = both(&f, clash);
        assert_eq!(raw, map);
        assert_eq!(
            raw.0,
            Some(json!({"u":1,"msg":"{\"ts\":1700000000500,\"u\":1}"}))
        );
        assert_eq!((raw.1, raw.2), (1_700_000_000, 500_000_000));
    }

    #[test]
    fn raw_errors_match_the_map_path() {
        let records = [
            r#"{"x":1}"#,
            r#"{}"#,
            r#"{"msg":5}"#,
            r#"{"msg":null,"x":[]}"#,
            r#"{"msg":{"a":1}}"#,
            r#"{"msg":"junk","x":"é"}"#,
        ];
        for on_error in ["errors", "keep", "drop"] {
            let f = reserve(&[("on_error", on_error.into())]);
            for record in records {
                let [raw, map] = both(&f, record);
                assert_eq!(raw, map, "{on_error} {record}");
                match on_error {
                    "drop" => assert_eq!(raw.0, None),
                    _ => {
                        let want: serde_json::Value = serde_json::from_str(record).unwrap();
                        assert_eq!(raw.0, Some(want));
                        assert_eq!(raw.3, on_error == "errors");
                    }
                }
            }
        }
        // The reasons are the map path's.
        let f = reserve(&[]);
        for (record, reason) in [
            (r#"{"x":1}"#, "field `msg` is missing"),
            (r#"{"msg":5}"#, "field `msg` is a number, not a string"),
            (r#"{"msg":true}"#, "field `msg` is a boolean, not a string"),
            (r#"{"msg":null}"#, "field `msg` is null, not a string"),
            (r#"{"msg":[1]}"#, "field `msg` is an array, not a string"),
            (r#"{"msg":{}}"#, "field `msg` is an object, not a string"),
        ] {
            for r in [
                Record::Raw(Bytes::copy_from_slice(record.as_bytes())),
                Record::Map(serde_json::from_str(record).unwrap()),
            ] {
                let mut ev = Event::new(EventTime::from_secs_nanos(1, 0), r);
                assert_eq!(f.apply(&mut ev).unwrap_err(), reason);
            }
        }
        let mut raw = Event::new(
            EventTime::from_secs_nanos(1, 0),
            Record::Raw(Bytes::from_static(br#"{"msg":"junk"}"#)),
        );
        let mut map = Event::new(
            EventTime::from_secs_nanos(1, 0),
            Record::Map(serde_json::from_str(r#"{"msg":"junk"}"#).unwrap()),
        );
        assert_eq!(
            f.apply(&mut raw).unwrap_err(),
            f.apply(&mut map).unwrap_err()
        );
    }
}
