//! From a line (or datagram) to an event, shared by the `tcp` and `udp`
//! inputs: parse with the configured format, and decide what happens to
//! what cannot be parsed.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;
use tracing::warn;
use ulog_engine::{BuildError, Event, EventTime, ParamKind, ParamSpec, Params, Record, Rejected};
use ulog_parsers::Parser;

use crate::counters::{preview, ConnCounts, Counters, Problem};
use crate::framing::Line;

/// What to do with a line the parser refuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OnError {
    /// Log it (the first few one by one, then counted) and skip it.
    Log,
    /// Keep it as `{<message_key>: "<the line>"}`.
    Keep,
    /// Send `{<message_key>: "<the line>"}` to the `errors` label with the
    /// parser's reason.
    Errors,
}

/// What one read produced: events for the pipeline, and events refused
/// with `on_error = "errors"` for the `errors` label.
#[derive(Default)]
pub(crate) struct ReadOut {
    /// Events to emit.
    pub events: Vec<Event>,
    /// Events for the `errors` label.
    pub rejects: Vec<Rejected>,
}

impl ReadOut {
    /// An empty result with room for `n` events.
    pub(crate) fn with_capacity(n: usize) -> Self {
        Self {
            events: Vec::with_capacity(n),
            rejects: Vec::new(),
        }
    }
}

/// The `on_error` parameter of the line-reading inputs.
pub(crate) fn on_error_param() -> ParamSpec {
    ParamSpec::with_default(
        "on_error",
        ParamKind::OneOf(&["errors", "keep", "log"]),
        "errors",
        "What to do with a line the format cannot parse (always warned about: the first 10, then counted and reported when the connection closes): `errors` sends `{message = \"<the line>\"}` (the field named by `message_key`) to the `errors` label with the parser's reason in `_error`; `keep` emits that record as an ordinary event; `log` skips it.",
    )
}

/// The `source_address_key` parameter.
pub(crate) fn source_address_param() -> ParamSpec {
    ParamSpec::optional(
        "source_address_key",
        ParamKind::Str,
        "When set, every record gets this field with the IP address of the client that sent it.",
    )
}

/// Adds `format_params("json")` to `spec` and the options this crate adds,
/// skipping any the parsers crate already declares.
pub(crate) fn with_format_params(
    mut spec: ulog_engine::PluginSpec,
    default_format: &'static str,
) -> ulog_engine::PluginSpec {
    for p in ulog_parsers::format_params(default_format) {
        spec = spec.param(p);
    }
    for p in [on_error_param(), source_address_param()] {
        if spec.get(p.name).is_none() {
            spec = spec.param(p);
        }
    }
    spec
}

/// Turns lines into events for one input; shared by its connections.
pub(crate) struct LineDecoder {
    /// The input's node id, for logs.
    pub id: Arc<str>,
    parser: Arc<dyn Parser>,
    format: String,
    on_error: OnError,
    message_key: String,
    max_size: usize,
    /// Problem counts of the whole input.
    pub counters: Counters,
}

impl LineDecoder {
    /// Reads the format, `on_error` and `message_key` parameters; `max_size`
    /// is only used in messages about oversized input.
    pub(crate) fn from_params(
        id: &str,
        params: &Params,
        max_size: usize,
    ) -> Result<Self, BuildError> {
        let parser = ulog_parsers::build_parser(params)?;
        let on_error = match params.str("on_error")? {
            "keep" => OnError::Keep,
            "errors" => OnError::Errors,
            _ => OnError::Log,
        };
        Ok(Self {
            id: Arc::from(id),
            parser,
            format: params.str("format")?.to_string(),
            on_error,
            message_key: params
                .opt_str("message_key")?
                .unwrap_or("message")
                .to_string(),
            max_size,
            counters: Counters::default(),
        })
    }

    /// Handles one unit from a [`crate::framing::LineBuffer`].
    pub(crate) fn take(
        &self,
        line: Line<'_>,
        now: EventTime,
        peer: &SocketAddr,
        out: &mut ReadOut,
        counts: &mut ConnCounts,
    ) {
        match line {
            Line::Text { chunk, start, end } => {
                self.line(chunk, start, end, now, peer, out, counts)
            }
            Line::Oversized(n) => self.oversized(n, peer, counts),
        }
    }

    /// Parses `chunk[start..end]` and pushes the event, or handles the
    /// failure per `on_error`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn line(
        &self,
        chunk: &Bytes,
        start: usize,
        end: usize,
        now: EventTime,
        peer: &SocketAddr,
        out: &mut ReadOut,
        counts: &mut ConnCounts,
    ) {
        match self.parser.parse(chunk.slice(start..end)) {
            Ok(parsed) => out
                .events
                .push(Event::new(parsed.time.unwrap_or(now), parsed.record)),
            Err(e) => {
                let reason = format!("format {}: {e}", self.format);
                self.refuse(&chunk[start..end], &reason, now, peer, out, counts);
            }
        }
    }

    /// Handles input that could not become a record, per `on_error`: counts
    /// and logs it, and keeps it as `{<message_key>: text}` or sends that to
    /// the `errors` label.
    pub(crate) fn refuse(
        &self,
        text: &[u8],
        reason: &str,
        now: EventTime,
        peer: &SocketAddr,
        out: &mut ReadOut,
        counts: &mut ConnCounts,
    ) {
        counts.unparsable += 1;
        let log = self.counters.note(&self.id, Problem::Unparsable);
        let what = match self.on_error {
            OnError::Log => "skipped",
            OnError::Keep => "kept as its text",
            OnError::Errors => "sent to the errors label",
        };
        if log {
            warn!(input = %self.id, %peer, error = %reason, line = %preview(text, 200), "input could not be parsed; {what}");
        }
        match self.on_error {
            OnError::Log => {}
            OnError::Keep => out.events.push(self.kept(text, now)),
            OnError::Errors => out.rejects.push(Rejected {
                event: self.kept(text, now),
                reason: reason.to_string(),
            }),
        }
    }

    /// The event `{<message_key>: text}`.
    fn kept(&self, text: &[u8], now: EventTime) -> Event {
        let mut record = Record::new();
        record.insert(
            self.message_key.clone(),
            Value::String(String::from_utf8_lossy(text).into_owned()),
        );
        Event::new(now, record)
    }

    /// Counts and logs an oversized unit of `n` bytes (at least).
    pub(crate) fn oversized(&self, n: usize, peer: &SocketAddr, counts: &mut ConnCounts) {
        counts.oversized += 1;
        if self.counters.note(&self.id, Problem::Oversized) {
            warn!(input = %self.id, %peer, bytes = n, max = self.max_size, "input longer than the maximum size; skipped up to the next newline");
        }
    }
}

/// Adds `key: ip` to every record, without parsing raw records: each is
/// re-written with the field appended into one buffer per batch and sliced
/// from it.
pub(crate) fn add_source(events: &mut [Event], key: &str, ip: &str) {
    if events.is_empty() {
        return;
    }
    let value = Value::String(ip.to_string());
    let raw_len: usize = events
        .iter()
        .map(|e| match &e.record {
            Record::Raw(b) => b.len() + key.len() + ip.len() + 8,
            Record::Map(_) => 0,
        })
        .sum();
    let mut buf = Vec::with_capacity(raw_len);
    let mut ranges = Vec::with_capacity(events.len());
    for e in events.iter() {
        match &e.record {
            Record::Raw(_) => {
                let s = buf.len();
                e.record.write_json_with(&mut buf, &[(key, &value)]);
                ranges.push(Some((s, buf.len())));
            }
            Record::Map(_) => ranges.push(None),
        }
    }
    let bytes = Bytes::from(buf);
    for (e, r) in events.iter_mut().zip(ranges) {
        match r {
            Some((s, end)) => e.record = Record::Raw(bytes.slice(s..end)),
            None => e.record.insert(key, value.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn source_address_is_spliced_into_raw_and_map_records() {
        let raw = Record::from_json_bytes(Bytes::from_static(b"{\"a\":1}")).unwrap();
        let empty = Record::from_json_bytes(Bytes::from_static(b"{}")).unwrap();
        let mut map = Record::new();
        map.insert("b", json!(2));
        let t = EventTime::from_unix_nanos(1);
        let mut events = vec![Event::new(t, raw), Event::new(t, empty), Event::new(t, map)];
        add_source(&mut events, "src", "10.0.0.1");
        assert!(matches!(events[0].record, Record::Raw(_)));
        assert_eq!(
            events[0].record.to_json_string(),
            r#"{"a":1,"src":"10.0.0.1"}"#
        );
        assert_eq!(events[1].record.to_json_string(), r#"{"src":"10.0.0.1"}"#);
        assert_eq!(
            events[2].record.to_json_string(),
            r#"{"b":2,"src":"10.0.0.1"}"#
        );
    }
}
