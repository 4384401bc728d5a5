//! `filter dedupe`: drop an event whose key was already seen within a window.
//!
//! A source that repeats itself (a car reporting the same reading on every
//! poll, a phone retrying a post, two hubs relaying one message) sends the
//! same event twice; the key says what "the same" means — by default the
//! whole record, usually an expression such as
//! `` `format("{}:{}", $.vin, $.car_time)` ``.
//!
//! A key is remembered for `window` after it is first seen (the clock is
//! when events pass the filter). At most `max_keys` are remembered: past it
//! the oldest is forgotten early, counted in a warning, so memory stays
//! bounded and a rare late duplicate may pass — a new event is never
//! dropped for lack of room.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ulog_engine::{
    async_trait, Batch, BuildContext, BuildError, Filter, ParamKind, ParamSpec, Params,
    PluginError, PluginKind, PluginSpec, Registry, Rejected, Value,
};
use ulog_expr::{Context, Expr};

use crate::expression;

/// The plugin's documentation and parameters.
pub fn spec() -> PluginSpec {
    PluginSpec::new(
        PluginKind::Filter,
        "dedupe",
        "Drops (or rejects) an event whose key was already seen within `window`; the key is \
         an expression, by default the whole record.",
    )
    .param(ParamSpec::optional(
        "key",
        ParamKind::Str,
        "An expression giving what makes two events the same, e.g. \
         `format(\"{}:{}\", $.vin, $.car_time)`. Default: the record's JSON text.",
    ))
    .param(ParamSpec::with_default(
        "window",
        ParamKind::Duration,
        Value::Duration(Duration::from_secs(600)),
        "How long a key is remembered after it is first seen.",
    ))
    .param(ParamSpec::with_default(
        "max_keys",
        ParamKind::Int,
        Value::Int(100_000),
        "The most keys remembered; past it the oldest is forgotten early.",
    ))
    .param(ParamSpec::with_default(
        "duplicates",
        ParamKind::Str,
        Value::Str("drop".into()),
        "What happens to a duplicate: `drop` or `reject` (to the errors label, with the key).",
    ))
}

/// Registers `filter dedupe`.
pub fn register(registry: &mut Registry) {
    registry.add_filter(spec(), |params: &Params, _: &BuildContext| {
        Ok(Arc::new(DedupeFilter::from_params(params)?) as Arc<dyn Filter>)
    });
}

#[derive(Debug, Default)]
struct Seen {
    /// Key → when it was first seen.
    keys: HashMap<Arc<str>, Instant>,
    /// The same keys in the order they were first seen, for expiry.
    order: VecDeque<(Instant, Arc<str>)>,
    evicted_early: u64,
}

/// The configured key and the keys seen.
#[derive(Debug)]
pub struct DedupeFilter {
    key: Option<Expr>,
    window: Duration,
    max_keys: usize,
    reject: bool,
    seen: Mutex<Seen>,
}

impl DedupeFilter {
    /// Builds the filter from its validated parameters.
    ///
    /// # Errors
    /// A key expression that does not compile, a zero window, `max_keys`
    /// below 1 or an unknown `duplicates`.
    pub fn from_params(params: &Params) -> Result<Self, BuildError> {
        let key = params
            .opt_str("key")?
            .map(|src| expression::compile("key", &[], src, false))
            .transpose()?;
        let window = params.duration("window")?;
        if window.is_zero() {
            return Err(BuildError::param("window", "must be longer than zero"));
        }
        let max_keys = params.int("max_keys")?;
        if max_keys < 1 {
            return Err(BuildError::param("max_keys", "must be at least 1"));
        }
        let reject = match params.str("duplicates")? {
            "drop" => false,
            "reject" => true,
            other => {
                return Err(BuildError::param(
                    "duplicates",
                    format!("expected `drop` or `reject`, found `{other}`"),
                ))
            }
        };
        Ok(Self {
            key,
            window,
            max_keys: usize::try_from(max_keys).unwrap_or(usize::MAX),
            reject,
            seen: Mutex::new(Seen::default()),
        })
    }

    /// True when `key` is new at `now` (and remembers it).
    fn first_sighting(&self, seen: &mut Seen, key: &str, now: Instant) -> bool {
        while let Some((at, _)) = seen.order.front() {
            if now.saturating_duration_since(*at) < self.window {
                break;
            }
            let (_, old) = seen.order.pop_front().expect("front");
            seen.keys.remove(&old);
        }
        if seen.keys.contains_key(key) {
            return false;
        }
        if seen.keys.len() >= self.max_keys {
            if let Some((_, old)) = seen.order.pop_front() {
                seen.keys.remove(&old);
                seen.evicted_early += 1;
                if seen.evicted_early.is_power_of_two() {
                    tracing::warn!(
                        max_keys = self.max_keys,
                        evicted = seen.evicted_early,
                        "dedupe: more keys than max_keys within the window; the oldest are forgotten early"
                    );
                }
            }
        }
        let key: Arc<str> = key.into();
        seen.keys.insert(key.clone(), now);
        seen.order.push_back((now, key));
        true
    }

    /// Filters `batch` as if it arrived at `now`.
    fn apply(&self, batch: &mut Batch, rejects: &mut Vec<Rejected>, now: Instant) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let tag = &batch.tag;
        let mut kept = Vec::with_capacity(batch.events.len());
        for event in batch.events.drain(..) {
            let key = match &self.key {
                None => Ok(event.record.to_json_string()),
                Some(expr) => {
                    let cx = Context {
                        record: &event.record,
                        tag,
                        time: event.time,
                    };
                    expression::key_text(expr, &cx, "dedupe key")
                }
            };
            match key {
                Ok(key) if self.first_sighting(&mut seen, &key, now) => kept.push(event),
                Ok(key) => {
                    if self.reject {
                        rejects.push(Rejected {
                            event,
                            reason: format!("duplicate: key `{key}` already seen"),
                        });
                    }
                }
                Err(reason) => rejects.push(Rejected { event, reason }),
            }
        }
        batch.events = kept;
    }
}

#[async_trait]
impl Filter for DedupeFilter {
    async fn filter(
        &self,
        batch: &mut Batch,
        rejects: &mut Vec<Rejected>,
    ) -> Result<(), PluginError> {
        self.apply(batch, rejects, Instant::now());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use ulog_engine::{Event, EventTime, Record, Tag};

    fn build(given: Vec<(&str, Value)>) -> Result<DedupeFilter, BuildError> {
        let given: Vec<(String, Value)> = given.into_iter().map(|(k, v)| (k.into(), v)).collect();
        DedupeFilter::from_params(&spec().validate(&given).expect("valid params"))
    }

    fn batch(lines: &[&str]) -> Batch {
        let events = lines
            .iter()
            .map(|l| {
                Event::new(
                    EventTime::from_secs_nanos(1, 0),
                    Record::from_json_bytes(Bytes::from(l.to_string())).unwrap(),
                )
            })
            .collect();
        Batch::new(Tag::parse("nissan.battery").unwrap(), events)
    }

    fn ns(batch: &Batch) -> Vec<i64> {
        batch
            .events
            .iter()
            .map(|e| e.record.to_map()["n"].as_i64().unwrap())
            .collect()
    }

    #[test]
    fn a_key_seen_within_the_window_is_dropped_and_after_it_passes_again() {
        let f = build(vec![
            ("key", Value::Str(r#"format("{}:{}", $.vin, $.at)"#.into())),
            ("window", Value::Duration(Duration::from_secs(60))),
        ])
        .unwrap();
        let t0 = Instant::now();
        let mut b = batch(&[
            r#"{"n":1,"vin":"A","at":10}"#,
            r#"{"n":2,"vin":"A","at":10}"#,
            r#"{"n":3,"vin":"B","at":10}"#,
            r#"{"n":4,"vin":"A","at":11}"#,
        ]);
        let mut rejects = Vec::new();
        f.apply(&mut b, &mut rejects, t0);
        assert_eq!(ns(&b), vec![1, 3, 4]);
        assert!(rejects.is_empty());
        let mut b = batch(&[r#"{"n":5,"vin":"A","at":10}"#]);
        f.apply(&mut b, &mut rejects, t0 + Duration::from_secs(59));
        assert!(b.events.is_empty(), "still within the window");
        let mut b = batch(&[r#"{"n":6,"vin":"A","at":10}"#]);
        f.apply(&mut b, &mut rejects, t0 + Duration::from_secs(61));
        assert_eq!(
            ns(&b),
            vec![6],
            "remembered from first sight, not refreshed"
        );
    }

    #[test]
    fn without_a_key_the_whole_record_is_compared_and_reject_gives_the_key() {
        let f = build(vec![("duplicates", Value::Str("reject".into()))]).unwrap();
        let mut b = batch(&[r#"{"n":1}"#, r#"{"n":2}"#, r#"{"n":1}"#]);
        let mut rejects = Vec::new();
        f.apply(&mut b, &mut rejects, Instant::now());
        assert_eq!(ns(&b), vec![1, 2]);
        assert_eq!(rejects.len(), 1);
        assert_eq!(
            rejects[0].reason,
            r#"duplicate: key `{"n":1}` already seen"#
        );
    }

    #[test]
    fn memory_is_bounded_by_forgetting_the_oldest_key_early() {
        let f = build(vec![
            ("key", Value::Str("$.n".into())),
            ("max_keys", Value::Int(2)),
        ])
        .unwrap();
        let t0 = Instant::now();
        let mut b = batch(&[r#"{"n":1}"#, r#"{"n":2}"#, r#"{"n":3}"#, r#"{"n":1}"#]);
        f.apply(&mut b, &mut Vec::new(), t0);
        // 3 pushed 1 out, so the late 1 passes: never a new event dropped.
        assert_eq!(ns(&b), vec![1, 2, 3, 1]);
        let seen = f.seen.lock().unwrap();
        assert_eq!(seen.keys.len(), 2);
        assert_eq!(seen.order.len(), 2);
        assert_eq!(seen.evicted_early, 2);
    }

    #[test]
    fn a_failing_key_rejects_the_event_and_bad_parameters_are_errors() {
        let f = build(vec![("key", Value::Str("$.n + 1".into()))]).unwrap();
        let mut b = batch(&[r#"{"n":"x"}"#]);
        let mut rejects = Vec::new();
        f.apply(&mut b, &mut rejects, Instant::now());
        assert!(b.events.is_empty());
        assert!(
            rejects[0].reason.starts_with("dedupe key: "),
            "{}",
            rejects[0].reason
        );

        let e = build(vec![("window", Value::Duration(Duration::ZERO))]).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("window"));
        let e = build(vec![("duplicates", Value::Str("keep".into()))]).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("duplicates"));
        let e = build(vec![("key", Value::Str("$.a ==".into()))]).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("key"));
    }
}
