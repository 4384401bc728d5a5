//! `input dummy`: generates events.
//!
//! For the quickstart, for trying routes without a real source, and for
//! benchmarks (`rate = 0` produces as fast as the pipeline takes events). The
//! record templates are serialised once at build time and every event shares
//! or splices that text, so generating costs almost nothing per event.

use std::time::Duration;

use bytes::Bytes;
use serde_json::Value as Json;
use tokio::time::{Instant, MissedTickBehavior};
use ulog_engine::{
    async_trait, Batch, BuildContext, BuildError, Event, EventTime, Input, InputContext, ParamKind,
    ParamSpec, Params, PluginError, PluginKind, PluginSpec, Record, Registry, Tag, Value,
};

/// The plugin's documentation and parameters.
pub fn spec() -> PluginSpec {
    PluginSpec::new(
        PluginKind::Input,
        "dummy",
        "Generates events from a fixed record at a given rate, like fluentd's in_dummy. \
         Useful for the quickstart, for testing routes and for benchmarks.",
    )
    .param(ParamSpec::with_default(
        "tag",
        ParamKind::Str,
        "dummy",
        "The tag of the generated events.",
    ))
    .param(ParamSpec::with_default(
        "rate",
        ParamKind::Int,
        1,
        "Events per second; 0 generates as fast as the pipeline accepts them.",
    ))
    .param(ParamSpec::with_default(
        "size",
        ParamKind::Int,
        1,
        "Events per batch (with rate 10 and size 5: two batches of five each second).",
    ))
    .param(ParamSpec::with_default(
        "record",
        ParamKind::Any,
        Value::Map(vec![("message".into(), Value::Str("dummy".into()))]),
        "The record to generate (a map), or a list of maps used in turn.",
    ))
    .param(ParamSpec::with_default(
        "max_events",
        ParamKind::Int,
        0,
        "Stop after this many events (the input then ends); 0 never stops.",
    ))
    .param(ParamSpec::optional(
        "auto_increment_key",
        ParamKind::Str,
        "When set, each record gets this field holding a counter that starts at 0.",
    ))
}

/// Registers `input dummy`.
pub fn register(registry: &mut Registry) {
    registry.add_input(spec(), |params: &Params, _: &BuildContext| {
        Ok(Box::new(DummyInput::from_params(params)?) as Box<dyn Input>)
    });
}

/// The generator, configured.
#[derive(Debug)]
pub struct DummyInput {
    tag: Tag,
    rate: u64,
    size: usize,
    templates: Vec<Bytes>,
    max_events: u64,
    auto_increment_key: Option<String>,
}

impl DummyInput {
    /// Builds the generator from its validated parameters.
    ///
    /// # Errors
    /// A negative rate or count, a zero size, a record that is not a map (or
    /// list of maps), or an invalid tag.
    pub fn from_params(params: &Params) -> Result<Self, BuildError> {
        let tag_text = params.str("tag")?;
        let tag = Tag::parse(tag_text).map_err(|e| BuildError::param("tag", e.to_string()))?;
        let rate = u64::try_from(params.int("rate")?)
            .map_err(|_| BuildError::param("rate", "must not be negative"))?;
        let size = params.usize("size")?;
        if size == 0 {
            return Err(BuildError::param("size", "must be at least 1"));
        }
        let max_events = u64::try_from(params.int("max_events")?)
            .map_err(|_| BuildError::param("max_events", "must not be negative"))?;
        let records = match params.get("record") {
            Some(Value::List(items)) => items.iter().collect::<Vec<_>>(),
            Some(other) => vec![other],
            None => Vec::new(),
        };
        if records.is_empty() {
            return Err(BuildError::param("record", "needs at least one record"));
        }
        let templates = records
            .into_iter()
            .enumerate()
            .map(|(i, v)| match v.to_json() {
                Json::Object(map) => Ok(Bytes::from(serde_json::to_vec(&map).unwrap_or_default())),
                other => Err(BuildError::param(
                    "record",
                    format!(
                        "record {} must be a map {{ key = value }}, found {}",
                        i + 1,
                        json_type(&other)
                    ),
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            tag,
            rate,
            size,
            templates,
            max_events,
            auto_increment_key: params.opt_str("auto_increment_key")?.map(str::to_string),
        })
    }

    /// Builds one batch of `n` events, the `first`-th event of the run first.
    fn make_batch(&self, first: u64, n: usize) -> Batch {
        let time = EventTime::now();
        let count = self.templates.len() as u64;
        let template = |i: u64| &self.templates[((first + i) % count) as usize];
        let events = match &self.auto_increment_key {
            None => (0..n as u64)
                .map(|i| Event::new(time, Record::Raw(template(i).clone())))
                .collect(),
            Some(key) => {
                // All records of the batch in one buffer, each a slice of it.
                let mut buf = Vec::with_capacity(n * (template(0).len() + key.len() + 16));
                let mut ends = Vec::with_capacity(n);
                for i in 0..n as u64 {
                    let counter = Json::from(first + i);
                    Record::Raw(template(i).clone()).write_json_with(&mut buf, &[(key, &counter)]);
                    ends.push(buf.len());
                }
                let buf = Bytes::from(buf);
                let mut start = 0;
                ends.into_iter()
                    .map(|end| {
                        let record = Record::Raw(buf.slice(start..end));
                        start = end;
                        Event::new(time, record)
                    })
                    .collect()
            }
        };
        Batch::new(self.tag.clone(), events)
    }

    /// The size of the next batch when `sent` events went out, or `None` when
    /// `max_events` is reached.
    fn next_size(&self, sent: u64) -> Option<usize> {
        if self.max_events == 0 {
            return Some(self.size);
        }
        let left = self.max_events.saturating_sub(sent);
        (left > 0).then(|| left.min(self.size as u64) as usize)
    }
}

fn json_type(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "a list",
        Json::Object(_) => "a map",
    }
}

#[async_trait]
impl Input for DummyInput {
    async fn run(self: Box<Self>, ctx: InputContext) -> Result<(), PluginError> {
        let mut emitter = ctx.emitter;
        let mut sent: u64 = 0;
        if self.rate == 0 {
            while !ctx.shutdown.is_cancelled() {
                let Some(n) = self.next_size(sent) else { break };
                if emitter.emit(self.make_batch(sent, n)).await.is_err() {
                    break;
                }
                sent += n as u64;
                tokio::task::yield_now().await;
            }
            tracing::debug!(input = %ctx.id, events = sent, "dummy input stopped");
            return Ok(());
        }

        // Batch k is due at k * size / rate seconds. The timer wakes at most
        // every millisecond and sends whatever is due, so high rates are met
        // on average whatever the timer's resolution.
        let period = self.size as f64 / self.rate as f64;
        let per_second = (1.0 / period).ceil().max(1.0) as u64;
        let mut ticker =
            tokio::time::interval(Duration::from_secs_f64(period).max(Duration::from_millis(1)));
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let start = Instant::now();
        let mut batches: u64 = 0;
        'run: loop {
            tokio::select! {
                biased;
                _ = ctx.shutdown.cancelled() => break,
                _ = ticker.tick() => {}
            }
            let due = (start.elapsed().as_secs_f64() / period) as u64 + 1;
            // After a long stall (backpressure) catch up at most one second's
            // worth instead of bursting everything that was missed.
            if due > batches + per_second {
                batches = due - per_second;
            }
            while batches < due {
                let Some(n) = self.next_size(sent) else {
                    break 'run;
                };
                if emitter.emit(self.make_batch(sent, n)).await.is_err() {
                    break 'run;
                }
                sent += n as u64;
                batches += 1;
                if ctx.shutdown.is_cancelled() {
                    break 'run;
                }
            }
        }
        tracing::debug!(input = %ctx.id, events = sent, "dummy input stopped");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(given: &[(&str, Value)]) -> Result<DummyInput, BuildError> {
        let params = spec()
            .validate(
                &given
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect::<Vec<_>>(),
            )
            .map_err(|e| BuildError::new(format!("{e:?}")))?;
        DummyInput::from_params(&params)
    }

    #[test]
    fn batches_cycle_templates_and_count() {
        let d = build(&[
            (
                "record",
                Value::List(vec![
                    Value::Map(vec![("n".into(), Value::Int(1))]),
                    Value::Map(vec![("n".into(), Value::Int(2))]),
                ]),
            ),
            ("auto_increment_key", "seq".into()),
        ])
        .unwrap();
        let b = d.make_batch(5, 3);
        let texts: Vec<String> = b.events.iter().map(|e| e.record.to_json_string()).collect();
        assert_eq!(
            texts,
            [
                r#"{"n":2,"seq":5}"#,
                r#"{"n":1,"seq":6}"#,
                r#"{"n":2,"seq":7}"#
            ]
        );
    }

    #[test]
    fn max_events_cuts_the_last_batch() {
        let d = build(&[("size", Value::Int(4)), ("max_events", Value::Int(10))]).unwrap();
        assert_eq!(d.next_size(0), Some(4));
        assert_eq!(d.next_size(8), Some(2));
        assert_eq!(d.next_size(10), None);
    }

    #[test]
    fn bad_values_are_build_errors() {
        assert_eq!(
            build(&[("size", Value::Int(0))])
                .unwrap_err()
                .param
                .as_deref(),
            Some("size")
        );
        assert_eq!(
            build(&[("rate", Value::Int(-1))])
                .unwrap_err()
                .param
                .as_deref(),
            Some("rate")
        );
        assert_eq!(
            build(&[("record", "text".into())])
                .unwrap_err()
                .param
                .as_deref(),
            Some("record")
        );
        assert_eq!(
            build(&[("tag", "a/b".into())])
                .unwrap_err()
                .param
                .as_deref(),
            Some("tag")
        );
    }
}
