//! `filter parse`: parses one field of each event with any format, like
//! fluentd's `filter_parser`. Use it when the text to parse arrives inside a
//! record: a docker `log` field, a syslog `message` holding JSON or logfmt,
//! an HTTP body field.
//!
//! Events whose field does not parse follow `on_error`: sent to the `errors`
//! label with the parser's reason (the default), kept, or dropped with a
//! counted warning.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
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
}
