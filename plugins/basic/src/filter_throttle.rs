//! `filter throttle`: a rate limit per key.
//!
//! Each key (by default the tag; usually a field such as the household) has
//! a token bucket holding up to `rate` events that refills at `rate` per
//! `interval`: a key may send a burst of `rate` events at once, then
//! `rate` per `interval` on average. Events over the limit are dropped or
//! sent to the `errors` label, as `excess` says, and counted in a warning at
//! most once per `interval`.
//!
//! The clock is the time events arrive, not their event time: a device that
//! sends old or future timestamps cannot slip past the limit.
//!
//! Memory is bounded: at most `max_keys` buckets are kept. When a new key
//! arrives at the cap, buckets that have refilled completely (which behave
//! exactly like a new one) are forgotten first; if every bucket is still in
//! use, new keys share one overflow bucket, so they are still limited, and a
//! warning says so.

use std::collections::HashMap;
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
        "throttle",
        "Limits each key (the tag, or an expression such as `$.household`) to `rate` events \
         per `interval`, with bursts up to `rate`; the excess is dropped or rejected to the \
         errors label.",
    )
    .param(ParamSpec::optional(
        "key",
        ParamKind::Str,
        "An expression giving each event's key, e.g. `$.household`. Default: the tag.",
    ))
    .param(ParamSpec::required(
        "rate",
        ParamKind::Int,
        "Events allowed per `interval` for each key, and the largest burst.",
    ))
    .param(ParamSpec::with_default(
        "interval",
        ParamKind::Duration,
        Value::Duration(Duration::from_secs(1)),
        "The period `rate` is counted over.",
    ))
    .param(ParamSpec::with_default(
        "excess",
        ParamKind::Str,
        Value::Str("drop".into()),
        "What happens to events over the limit: `drop` (counted in a warning) or `reject` \
         (to the errors label, with the reason).",
    ))
    .param(ParamSpec::with_default(
        "max_keys",
        ParamKind::Int,
        Value::Int(100_000),
        "The most keys tracked at once; past it, new keys share one bucket.",
    ))
}

/// Registers `filter throttle`.
pub fn register(registry: &mut Registry) {
    registry.add_filter(spec(), |params: &Params, _: &BuildContext| {
        Ok(Arc::new(ThrottleFilter::from_params(params)?) as Arc<dyn Filter>)
    });
}

/// One key's allowance.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

#[derive(Debug, Default)]
struct State {
    buckets: HashMap<String, Bucket>,
    /// Shared by new keys while `buckets` is at the cap.
    overflow: Option<Bucket>,
    /// Events refused since the last warning, and when that was.
    refused: u64,
    warned: Option<Instant>,
    overflowed: bool,
}

/// What to do with events over the limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Excess {
    Drop,
    Reject,
}

/// The configured limit and the buckets.
#[derive(Debug)]
pub struct ThrottleFilter {
    key: Option<Expr>,
    rate: f64,
    interval: Duration,
    excess: Excess,
    max_keys: usize,
    state: Mutex<State>,
}

impl ThrottleFilter {
    /// Builds the filter from its validated parameters.
    ///
    /// # Errors
    /// A key expression that does not compile, a rate or `max_keys` below 1,
    /// a zero interval or an unknown `excess`.
    pub fn from_params(params: &Params) -> Result<Self, BuildError> {
        let key = params
            .opt_str("key")?
            .map(|src| expression::compile("key", &[], src, false))
            .transpose()?;
        let rate = params.int("rate")?;
        if rate < 1 {
            return Err(BuildError::param("rate", "must be at least 1"));
        }
        let interval = params.duration("interval")?;
        if interval.is_zero() {
            return Err(BuildError::param("interval", "must be longer than zero"));
        }
        let excess = match params.str("excess")? {
            "drop" => Excess::Drop,
            "reject" => Excess::Reject,
            other => {
                return Err(BuildError::param(
                    "excess",
                    format!("expected `drop` or `reject`, found `{other}`"),
                ))
            }
        };
        let max_keys = params.int("max_keys")?;
        if max_keys < 1 {
            return Err(BuildError::param("max_keys", "must be at least 1"));
        }
        Ok(Self {
            key,
            rate: rate as f64,
            interval,
            excess,
            max_keys: usize::try_from(max_keys).unwrap_or(usize::MAX),
            state: Mutex::new(State::default()),
        })
    }

    /// Takes one token from `bucket` at `now` if it has one.
    fn take(&self, bucket: &mut Bucket, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        let refill = elapsed * self.rate / self.interval.as_secs_f64();
        bucket.tokens = (bucket.tokens + refill).min(self.rate);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn full(&self, bucket: &Bucket, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens + elapsed * self.rate / self.interval.as_secs_f64() >= self.rate
    }

    /// Whether an event of `key` arriving at `now` is within the limit.
    fn admit(&self, state: &mut State, key: &str, now: Instant) -> bool {
        let fresh = Bucket {
            tokens: self.rate,
            updated: now,
        };
        if let Some(bucket) = state.buckets.get_mut(key) {
            return self.take(bucket, now);
        }
        if state.buckets.len() >= self.max_keys {
            state.buckets.retain(|_, b| !self.full(b, now));
        }
        if state.buckets.len() < self.max_keys {
            let mut b = fresh;
            let ok = self.take(&mut b, now);
            state.buckets.insert(key.to_string(), b);
            return ok;
        }
        if !state.overflowed {
            state.overflowed = true;
            tracing::warn!(
                max_keys = self.max_keys,
                "throttle: every tracked key is in use; new keys share one bucket"
            );
        }
        let mut b = state.overflow.unwrap_or(fresh);
        let ok = self.take(&mut b, now);
        state.overflow = Some(b);
        ok
    }

    fn key_of(&self, cx: &Context<'_>) -> Result<String, String> {
        let Some(expr) = &self.key else {
            return Ok(cx.tag.as_str().to_string());
        };
        expression::key_text(expr, cx, "throttle key")
    }

    /// Filters `batch` as if it arrived at `now`.
    fn apply(&self, batch: &mut Batch, rejects: &mut Vec<Rejected>, now: Instant) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let tag = &batch.tag;
        let mut kept = Vec::with_capacity(batch.events.len());
        for event in batch.events.drain(..) {
            let cx = Context {
                record: &event.record,
                tag,
                time: event.time,
            };
            match self.key_of(&cx) {
                Ok(key) => {
                    if self.admit(&mut state, &key, now) {
                        kept.push(event);
                    } else {
                        state.refused += 1;
                        if self.excess == Excess::Reject {
                            rejects.push(Rejected {
                                event,
                                reason: format!(
                                    "throttled: key `{key}` is over {} events per {:?}",
                                    self.rate, self.interval
                                ),
                            });
                        }
                    }
                }
                // An event whose key cannot be computed is not limited
                // silently: it goes to errors with the reason.
                Err(reason) => rejects.push(Rejected { event, reason }),
            }
        }
        batch.events = kept;
        if state.refused > 0
            && state
                .warned
                .is_none_or(|w| now.duration_since(w) >= self.interval)
        {
            tracing::warn!(
                refused = state.refused,
                "throttle: events over the limit {}",
                if self.excess == Excess::Drop {
                    "dropped"
                } else {
                    "rejected"
                }
            );
            state.refused = 0;
            state.warned = Some(now);
        }
    }
}

#[async_trait]
impl Filter for ThrottleFilter {
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

    fn build(given: Vec<(&str, Value)>) -> Result<ThrottleFilter, BuildError> {
        let given: Vec<(String, Value)> = given.into_iter().map(|(k, v)| (k.into(), v)).collect();
        ThrottleFilter::from_params(&spec().validate(&given).expect("valid params"))
    }

    fn batch(households: &[&str]) -> Batch {
        let events = households
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let line = format!(r#"{{"n":{i},"household":"{h}"}}"#);
                Event::new(
                    EventTime::from_secs_nanos(1, 0),
                    Record::from_json_bytes(Bytes::from(line)).unwrap(),
                )
            })
            .collect();
        Batch::new(Tag::parse("home.owl").unwrap(), events)
    }

    fn ns(batch: &Batch) -> Vec<i64> {
        batch
            .events
            .iter()
            .map(|e| e.record.to_map()["n"].as_i64().unwrap())
            .collect()
    }

    #[test]
    fn each_key_gets_its_burst_then_its_rate() {
        let f = build(vec![
            ("key", Value::Str("$.household".into())),
            ("rate", Value::Int(2)),
            ("interval", Value::Duration(Duration::from_secs(10))),
        ])
        .unwrap();
        let t0 = Instant::now();
        let mut b = batch(&["h1", "h1", "h1", "h2", "h2", "h2", "h1"]);
        let mut rejects = Vec::new();
        f.apply(&mut b, &mut rejects, t0);
        assert_eq!(ns(&b), vec![0, 1, 3, 4]);
        assert!(rejects.is_empty(), "excess = drop");
        // Half an interval later one token is back for each key.
        let mut b = batch(&["h1", "h1", "h2"]);
        f.apply(&mut b, &mut rejects, t0 + Duration::from_secs(5));
        assert_eq!(ns(&b), vec![0, 2]);
        // Long after, a full burst again, never more.
        let mut b = batch(&["h1", "h1", "h1"]);
        f.apply(&mut b, &mut rejects, t0 + Duration::from_secs(3600));
        assert_eq!(ns(&b), vec![0, 1]);
    }

    #[test]
    fn reject_sends_the_excess_to_errors_with_the_reason() {
        let f = build(vec![
            ("rate", Value::Int(1)),
            ("excess", Value::Str("reject".into())),
        ])
        .unwrap();
        let mut b = batch(&["h1", "h2", "h3"]);
        let mut rejects = Vec::new();
        f.apply(&mut b, &mut rejects, Instant::now());
        // Without `key`, the tag is the key: one event per second in all.
        assert_eq!(ns(&b), vec![0]);
        assert_eq!(rejects.len(), 2);
        assert!(
            rejects[0]
                .reason
                .contains("key `home.owl` is over 1 events"),
            "{}",
            rejects[0].reason
        );
    }

    #[test]
    fn keys_are_bounded_and_new_keys_share_an_overflow_bucket_at_the_cap() {
        let f = build(vec![
            ("key", Value::Str("$.household".into())),
            ("rate", Value::Int(1)),
            ("interval", Value::Duration(Duration::from_secs(60))),
            ("max_keys", Value::Int(2)),
        ])
        .unwrap();
        let t0 = Instant::now();
        let mut b = batch(&["a", "b", "c", "d"]);
        f.apply(&mut b, &mut Vec::new(), t0);
        // a and b have buckets; c takes the overflow bucket's one token, d
        // finds it empty.
        assert_eq!(ns(&b), vec![0, 1, 2]);
        assert_eq!(f.state.lock().unwrap().buckets.len(), 2);
        // Once a and b have refilled, they are forgotten to make room.
        let mut b = batch(&["e", "f"]);
        f.apply(&mut b, &mut Vec::new(), t0 + Duration::from_secs(61));
        assert_eq!(ns(&b), vec![0, 1]);
        let state = f.state.lock().unwrap();
        assert!(state.buckets.contains_key("e") && state.buckets.contains_key("f"));
        assert_eq!(state.buckets.len(), 2);
    }

    #[test]
    fn an_event_whose_key_fails_is_rejected_not_let_through() {
        let f = build(vec![
            ("key", Value::Str("upper($.household)".into())),
            ("rate", Value::Int(5)),
        ])
        .unwrap();
        let mut b = batch(&["h1"]);
        b.events.push(Event::new(
            EventTime::from_secs_nanos(1, 0),
            Record::from_json_bytes(Bytes::from_static(br#"{"n":9,"household":7}"#)).unwrap(),
        ));
        let mut rejects = Vec::new();
        f.apply(&mut b, &mut rejects, Instant::now());
        assert_eq!(ns(&b), vec![0]);
        assert_eq!(rejects.len(), 1);
        assert!(
            rejects[0].reason.starts_with("throttle key: "),
            "{}",
            rejects[0].reason
        );
    }

    #[test]
    fn bad_parameters_are_build_errors() {
        let e = build(vec![("rate", Value::Int(0))]).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("rate"));
        let e = build(vec![
            ("rate", Value::Int(1)),
            ("excess", Value::Str("queue".into())),
        ])
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("excess"));
        let e = build(vec![
            ("rate", Value::Int(1)),
            ("key", Value::Str("$.a +".into())),
        ])
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("key"));
        let e = build(vec![
            ("rate", Value::Int(1)),
            ("interval", Value::Duration(Duration::ZERO)),
        ])
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("interval"));
    }
}
