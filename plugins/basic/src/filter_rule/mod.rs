//! `filter rule`: stateful rules per key (a household, a car), emitting
//! high-level events such as "the battery went below 50%" or "charging
//! stopped".
//!
//! One block is one rule of one `kind`:
//!
//! - `threshold`: a number crossing a level, with hysteresis: the rule fires
//!   once when `value` crosses `below` (or `above`) and re-arms only after
//!   the value has recovered past `rearm`, so noise around the level cannot
//!   make it flap.
//! - `change`: the value of an expression changed (plugged → unplugged,
//!   `enter` → `exit`, charging started/stopped).
//! - `window`: count/sum/avg/min/max/last of `value` over tumbling or
//!   sliding windows of event time, emitted when a window closes, with
//!   `allowed_lateness` for events that arrive out of order.
//! - `join`: the latest value of two streams of the same key (battery level
//!   × solar export of one household), emitted while both are fresh and,
//!   with `when`, only when the pair starts satisfying a condition.
//!
//! # Why event time
//!
//! Windows, key expiry and join freshness all use event time (the highest
//! event time this filter has seen is its clock), never the wall clock: the
//! result depends only on the events, so a replay, a test and a restart give
//! the same events as the original run.
//!
//! # Why snapshots
//!
//! The state (which thresholds are disarmed, each key's last value, open
//! windows, the latest side of each join) is written to `state_path` every
//! `snapshot_interval` and when the filter is dropped, atomically (a temp
//! file, fsync, rename) and with a CRC-32, and read back when the filter is
//! built. A restart therefore neither fires a threshold again nor forgets a
//! window; a corrupt or foreign snapshot is reported and ignored.
//!
//! # Ordering
//!
//! The filter keeps `order_independent() == false`, so the engine never
//! splits its batches across cores: one instance sees each emitter's batches
//! in order, and events of different inputs in the order they arrive.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};
use ulog_engine::{
    async_trait, template::Template, Batch, BuildContext, BuildError, Event, EventTime, Filter,
    ParamKind, ParamSpec, Params, PluginError, PluginKind, PluginSpec, Record, Registry, Rejected,
    Tag, Value,
};
use ulog_expr::{Context, Expr};

use crate::expression;

mod snapshot;
#[cfg(test)]
mod tests;

use snapshot::{decode, encode, write_atomically, Snapshot};

const KINDS: &[&str] = &["threshold", "change", "window", "join"];
const AGGREGATES: &[&str] = &["count", "sum", "avg", "min", "max", "last"];

/// The optional parameters only some kinds take: giving one to another kind
/// is a configuration error rather than a silently ignored line.
const ONLY_FOR: &[(&str, &str)] = &[
    ("value", "threshold change window"),
    ("above", "threshold"),
    ("below", "threshold"),
    ("rearm", "threshold"),
    ("aggregate", "window"),
    ("window", "window"),
    ("slide", "window"),
    ("left_if", "join"),
    ("left_value", "join"),
    ("right_if", "join"),
    ("right_value", "join"),
    ("when", "join"),
];

/// The plugin's documentation and parameters.
pub fn spec() -> PluginSpec {
    PluginSpec::new(
        PluginKind::Filter,
        "rule",
        "A stateful rule per key (threshold with hysteresis, state change, windowed \
         aggregate or join of two streams) that emits new events under its own tag; the \
         state survives restarts through a checksummed snapshot file.",
    )
    .param(ParamSpec::required(
        "kind",
        ParamKind::OneOf(KINDS),
        "The rule: `threshold`, `change`, `window` or `join`.",
    ))
    .param(ParamSpec::required(
        "tag",
        ParamKind::Str,
        "The emitted events' tag, a template over the emitted record ({key}, {tag}, ...).",
    ))
    .param(ParamSpec::optional(
        "key",
        ParamKind::Str,
        "An expression giving each event's key, e.g. `$.household`. Default: the tag.",
    ))
    .param(ParamSpec::optional(
        "if",
        ParamKind::Str,
        "A condition: only events for which it is true feed the rule; others pass untouched.",
    ))
    .param(ParamSpec::optional(
        "value",
        ParamKind::Str,
        "The expression the rule watches (threshold, change, window).",
    ))
    .param(ParamSpec::optional(
        "below",
        ParamKind::Float,
        "threshold: fire when the value goes below this level.",
    ))
    .param(ParamSpec::optional(
        "above",
        ParamKind::Float,
        "threshold: fire when the value goes above this level.",
    ))
    .param(ParamSpec::optional(
        "rearm",
        ParamKind::Float,
        "threshold: the level the value must recover past before the rule can fire again.",
    ))
    .param(ParamSpec::with_default(
        "names",
        ParamKind::Map,
        Value::Map(Vec::new()),
        "change: a name per new value (`true = \"started\"`), put in the `change` field.",
    ))
    .param(ParamSpec::optional(
        "aggregate",
        ParamKind::OneOf(AGGREGATES),
        "window: count, sum, avg, min, max or last. Default: count.",
    ))
    .param(ParamSpec::optional(
        "window",
        ParamKind::Duration,
        "window: the length of each window.",
    ))
    .param(ParamSpec::optional(
        "slide",
        ParamKind::Duration,
        "window: how far apart windows start (sliding windows). Default: `window` (tumbling).",
    ))
    .param(ParamSpec::with_default(
        "allowed_lateness",
        ParamKind::Duration,
        Value::Duration(Duration::ZERO),
        "window: how long after a window's end (in event time) late events still count.",
    ))
    .param(ParamSpec::optional(
        "left_if",
        ParamKind::Str,
        "join: the condition that makes an event part of the left stream.",
    ))
    .param(ParamSpec::optional(
        "left_value",
        ParamKind::Str,
        "join: the left stream's value.",
    ))
    .param(ParamSpec::optional(
        "right_if",
        ParamKind::Str,
        "join: the condition that makes an event part of the right stream.",
    ))
    .param(ParamSpec::optional(
        "right_value",
        ParamKind::Str,
        "join: the right stream's value.",
    ))
    .param(ParamSpec::with_default(
        "freshness",
        ParamKind::Duration,
        Value::Duration(Duration::from_secs(300)),
        "join: the most the two latest values' event times may differ.",
    ))
    .param(ParamSpec::optional(
        "when",
        ParamKind::Str,
        "join: a condition on `$.left` and `$.right`; emit when it becomes true. Unset: every \
         fresh update.",
    ))
    .param(ParamSpec::with_default(
        "fields",
        ParamKind::Map,
        Value::Map(Vec::new()),
        "Fields added to every emitted event, as given.",
    ))
    .param(ParamSpec::with_default(
        "drop_input",
        ParamKind::Bool,
        false,
        "Drop the events that fed the rule instead of passing them on.",
    ))
    .param(ParamSpec::with_default(
        "on_error",
        ParamKind::OneOf(&["reject", "skip"]),
        "reject",
        "An event on which an expression fails: `reject` (to errors) or `skip` (passes on, \
         the rule ignores it).",
    ))
    .param(ParamSpec::with_default(
        "key_idle",
        ParamKind::Duration,
        Value::Duration(Duration::from_secs(86_400)),
        "A key not seen for this long (event time) is forgotten; its open windows are \
         emitted first.",
    ))
    .param(ParamSpec::with_default(
        "max_keys",
        ParamKind::Int,
        Value::Int(100_000),
        "The most keys tracked; events of further keys pass on untracked and are counted.",
    ))
    .param(ParamSpec::optional(
        "state_path",
        ParamKind::Str,
        "A file the state is snapshotted to and restored from. Unset: state lives in memory.",
    ))
    .param(ParamSpec::with_default(
        "snapshot_interval",
        ParamKind::Duration,
        Value::Duration(Duration::from_secs(10)),
        "How often the state is written to `state_path` (and when the filter stops).",
    ))
}

/// Registers `filter rule`.
pub fn register(registry: &mut Registry) {
    registry.add_filter(spec(), |params: &Params, ctx: &BuildContext| {
        Ok(Arc::new(RuleFilter::build(params, |p| ctx.resolve(p))?) as Arc<dyn Filter>)
    });
}

/// How a window combines its values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Aggregate {
    Count,
    Sum,
    Avg,
    Min,
    Max,
    Last,
}

/// The compiled rule.
// One per filter, built once and never moved: boxing the large variant
// would only add an indirection per event.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Rule {
    Threshold {
        value: Expr,
        level: f64,
        rearm: f64,
        below: bool,
    },
    Change {
        value: Expr,
        names: HashMap<String, Json>,
    },
    Window {
        value: Option<Expr>,
        aggregate: Aggregate,
        size: i64,
        slide: i64,
        lateness: i64,
    },
    Join {
        left_if: Expr,
        left_value: Expr,
        right_if: Expr,
        right_value: Expr,
        freshness: i64,
        when: Option<Expr>,
    },
}

impl Rule {
    fn name(&self) -> &'static str {
        match self {
            Rule::Threshold { .. } => "threshold",
            Rule::Change { .. } => "change",
            Rule::Window { .. } => "window",
            Rule::Join { .. } => "join",
        }
    }
}

/// One window's running aggregate.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Acc {
    count: u64,
    sum: f64,
    min: Option<f64>,
    max: Option<f64>,
    last: Json,
    last_time: i64,
    /// The JSON text of the latest event in the window (by event time).
    cause: String,
}

/// The latest value of one side of a join.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Side {
    value: Json,
    time: i64,
    cause: String,
}

/// What one key remembers, by kind.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum KindState {
    Threshold {
        armed: bool,
    },
    Change {
        last: Option<Json>,
    },
    Window {
        max_time: i64,
        open: BTreeMap<i64, Acc>,
    },
    Join {
        left: Option<Side>,
        right: Option<Side>,
        active: bool,
    },
}

/// One key's state and the last event time it was seen at (for expiry).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct KeyState {
    seen: i64,
    state: KindState,
}

#[derive(Debug)]
struct Inner {
    keys: HashMap<String, KeyState>,
    /// The highest event time seen: the rule's clock.
    clock: i64,
    last_sweep: i64,
    /// Events of keys over `max_keys`, passed on untracked.
    refused: u64,
    /// Window events later than `allowed_lateness`, not counted.
    late: u64,
    dirty: bool,
    last_snapshot: Instant,
}

/// What one event contributes to the rule, computed before state is touched
/// so a failing expression leaves the state as it was.
enum Observation {
    Number(f64),
    Value(Json),
    Side { left: bool, value: Json },
    Ignored,
}

/// One emitted event before its tag is rendered.
struct Emitted {
    time: i64,
    record: Map<String, Json>,
}

/// The compiled rule, its options and the state of every key.
#[derive(Debug)]
pub struct RuleFilter {
    rule: Rule,
    key: Option<Expr>,
    /// `[key, value]` as one expression: one pass over a raw record.
    key_and_value: Option<Expr>,
    condition: Option<Expr>,
    tag: Template,
    fields: Vec<(String, Json)>,
    drop_input: bool,
    skip_errors: bool,
    key_idle: i64,
    max_keys: usize,
    state_path: Option<PathBuf>,
    snapshot_interval: Duration,
    fingerprint: String,
    inner: Mutex<Inner>,
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

fn compile_opt(params: &Params, name: &str, condition: bool) -> Result<Option<Expr>, BuildError> {
    params
        .opt_str(name)?
        .map(|src| expression::compile(name, &[], src, condition))
        .transpose()
}

fn need(params: &Params, name: &str, kind: &str, condition: bool) -> Result<Expr, BuildError> {
    compile_opt(params, name, condition)?
        .ok_or_else(|| BuildError::param(name, format!("a `{kind}` rule needs `{name}`")))
}

fn opt_float(params: &Params, name: &str) -> Result<Option<f64>, BuildError> {
    params.get(name).map(|_| params.float(name)).transpose()
}

/// A value as the text templates and `names` use: strings as they are,
/// anything else as JSON.
fn text_of(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn number(v: f64) -> Json {
    serde_json::Number::from_f64(v).map_or(Json::Null, Json::Number)
}

fn cause_json(text: &str) -> Json {
    serde_json::from_str(text).unwrap_or(Json::Null)
}

impl RuleFilter {
    /// Builds the filter from its validated parameters and restores the
    /// snapshot at `state_path`, when there is one.
    ///
    /// # Errors
    /// An expression that does not compile (located inside the string), a
    /// parameter missing for the kind or given to another kind, contradictory
    /// levels (`rearm` on the wrong side), a bad template or zero durations.
    pub fn from_params(params: &Params) -> Result<Self, BuildError> {
        Self::build(params, |p| PathBuf::from(p))
    }

    /// Like [`RuleFilter::from_params`], with `state_path` made absolute by
    /// `resolve` (the engine resolves it against the routes file's folder).
    ///
    /// # Errors
    /// As [`RuleFilter::from_params`].
    pub fn build(params: &Params, resolve: impl Fn(&str) -> PathBuf) -> Result<Self, BuildError> {
        let kind = params.str("kind")?;
        for (name, kinds) in ONLY_FOR {
            if params.get(name).is_some() && !kinds.split(' ').any(|k| k == kind) {
                return Err(BuildError::param(
                    name,
                    format!("`{name}` is for {kinds} rules, not `{kind}`"),
                ));
            }
        }
        let rule = match kind {
            "threshold" => {
                let value = need(params, "value", kind, false)?;
                let (level, below) =
                    match (opt_float(params, "below")?, opt_float(params, "above")?) {
                        (Some(l), None) => (l, true),
                        (None, Some(l)) => (l, false),
                        _ => {
                            return Err(BuildError::param(
                                "below",
                                "a threshold needs exactly one of `below` and `above`",
                            ))
                        }
                    };
                let rearm = opt_float(params, "rearm")?
                    .ok_or_else(|| BuildError::param("rearm", "a threshold needs `rearm`"))?;
                if (below && rearm < level) || (!below && rearm > level) {
                    return Err(BuildError::param(
                        "rearm",
                        format!(
                            "must be on the recovered side of the level ({} {level})",
                            if below { ">=" } else { "<=" }
                        ),
                    ));
                }
                Rule::Threshold {
                    value,
                    level,
                    rearm,
                    below,
                }
            }
            "change" => Rule::Change {
                value: need(params, "value", kind, false)?,
                names: params
                    .map("names")?
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_json()))
                    .collect(),
            },
            "window" => {
                let aggregate = match params.opt_str("aggregate")?.unwrap_or("count") {
                    "count" => Aggregate::Count,
                    "sum" => Aggregate::Sum,
                    "avg" => Aggregate::Avg,
                    "min" => Aggregate::Min,
                    "max" => Aggregate::Max,
                    _ => Aggregate::Last,
                };
                let value = compile_opt(params, "value", false)?;
                if value.is_none() && aggregate != Aggregate::Count {
                    return Err(BuildError::param(
                        "value",
                        "a window aggregate other than count needs `value`",
                    ));
                }
                let size = params
                    .opt_duration("window")?
                    .ok_or_else(|| BuildError::param("window", "a window rule needs `window`"))?;
                let slide = params.opt_duration("slide")?.unwrap_or(size);
                if size.is_zero() || slide.is_zero() {
                    return Err(BuildError::param("window", "must be longer than zero"));
                }
                if slide > size || size.as_nanos() / slide.as_nanos() > 1000 {
                    return Err(BuildError::param(
                        "slide",
                        "must be at most `window`, and at least a thousandth of it",
                    ));
                }
                Rule::Window {
                    value,
                    aggregate,
                    size: nanos(size),
                    slide: nanos(slide),
                    lateness: nanos(params.duration("allowed_lateness")?),
                }
            }
            _ => Rule::Join {
                left_if: need(params, "left_if", kind, true)?,
                left_value: need(params, "left_value", kind, false)?,
                right_if: need(params, "right_if", kind, true)?,
                right_value: need(params, "right_value", kind, false)?,
                freshness: nanos(params.duration("freshness")?),
                when: compile_opt(params, "when", true)?,
            },
        };
        let tag = Template::parse(params.str("tag")?).map_err(|e| BuildError::param("tag", e))?;
        let key_idle = params.duration("key_idle")?;
        if key_idle.is_zero() {
            return Err(BuildError::param("key_idle", "must be longer than zero"));
        }
        let max_keys = params.int("max_keys")?;
        if max_keys < 1 {
            return Err(BuildError::param("max_keys", "must be at least 1"));
        }
        // Everything that gives state its meaning; the outputs of the rule
        // (tag, fields) may change without invalidating it.
        let fingerprint = spec()
            .params
            .iter()
            .filter(|p| {
                !matches!(
                    p.name,
                    "tag"
                        | "fields"
                        | "drop_input"
                        | "on_error"
                        | "key_idle"
                        | "max_keys"
                        | "state_path"
                        | "snapshot_interval"
                )
            })
            .filter_map(|p| params.get(p.name).map(|v| format!("{}={v}", p.name)))
            .collect::<Vec<_>>()
            .join(";");
        let key = compile_opt(params, "key", false)?;
        let value = match &rule {
            Rule::Threshold { value, .. }
            | Rule::Change { value, .. }
            | Rule::Window {
                value: Some(value), ..
            } => Some(value),
            _ => None,
        };
        let key_and_value = match (&key, value) {
            (Some(k), Some(v)) => Expr::compile(&format!("[{}, {}]", k.source(), v.source())).ok(),
            _ => None,
        };
        let filter = Self {
            rule,
            key,
            key_and_value,
            condition: compile_opt(params, "if", true)?,
            tag,
            fields: params
                .map("fields")?
                .iter()
                .map(|(k, v)| (k.clone(), v.to_json()))
                .collect(),
            drop_input: params.bool("drop_input")?,
            skip_errors: params.str("on_error")? == "skip",
            key_idle: nanos(key_idle),
            max_keys: usize::try_from(max_keys).unwrap_or(usize::MAX),
            state_path: params.opt_str("state_path")?.map(resolve),
            snapshot_interval: params.duration("snapshot_interval")?,
            fingerprint,
            inner: Mutex::new(Inner {
                keys: HashMap::new(),
                clock: i64::MIN,
                last_sweep: i64::MIN,
                refused: 0,
                late: 0,
                dirty: false,
                last_snapshot: Instant::now(),
            }),
        };
        filter.restore();
        Ok(filter)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the snapshot at `state_path`, if any. A missing file is a first
    /// start; an unreadable, corrupt or foreign one is logged and ignored, so
    /// a damaged file costs the state, never the pipeline.
    fn restore(&self) {
        let Some(path) = &self.state_path else { return };
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "rule: cannot read the snapshot; starting with empty state");
                return;
            }
        };
        match decode(&bytes) {
            Ok(snap) if snap.fingerprint == self.fingerprint => {
                let mut inner = self.lock();
                tracing::info!(path = %path.display(), keys = snap.keys.len(), "rule: state restored");
                inner.keys = snap.keys;
                inner.clock = snap.clock;
                inner.last_sweep = snap.last_sweep;
            }
            Ok(_) => tracing::warn!(
                path = %path.display(),
                "rule: the snapshot is of a differently defined rule; starting with empty state"
            ),
            Err(e) => tracing::warn!(
                path = %path.display(),
                error = %e,
                "rule: the snapshot is corrupt; starting with empty state"
            ),
        }
    }

    /// Writes the state to `state_path` now (a no-op without one).
    ///
    /// # Errors
    /// The I/O error; the previous snapshot is then left intact.
    pub fn snapshot(&self) -> std::io::Result<()> {
        let mut inner = self.lock();
        self.write_snapshot(&mut inner)
    }

    fn write_snapshot(&self, inner: &mut Inner) -> std::io::Result<()> {
        let Some(path) = &self.state_path else {
            return Ok(());
        };
        let snap = Snapshot {
            fingerprint: self.fingerprint.clone(),
            clock: inner.clock,
            last_sweep: inner.last_sweep,
            keys: std::mem::take(&mut inner.keys),
        };
        let encoded = encode(&snap);
        inner.keys = snap.keys;
        write_atomically(path, &encoded?)?;
        inner.dirty = false;
        inner.last_snapshot = Instant::now();
        Ok(())
    }

    /// What `event` contributes, or why it cannot be computed.
    fn observe(&self, cx: &Context<'_>) -> Result<Observation, String> {
        let eval = |e: &Expr, what: &str| {
            e.eval(cx)
                .map(|v| v.into_json())
                .map_err(|err| format!("rule `{what}`: {}", err.message))
        };
        Ok(match &self.rule {
            Rule::Threshold { value, .. }
            | Rule::Change { value, .. }
            | Rule::Window {
                value: Some(value), ..
            } => return self.classify(eval(value, "value")?),
            Rule::Window { value: None, .. } => Observation::Value(Json::Null),
            Rule::Join {
                left_if,
                left_value,
                right_if,
                right_value,
                ..
            } => {
                let cond = |e: &Expr, what: &str| {
                    e.eval_bool(cx)
                        .map_err(|err| format!("rule `{what}`: {}", err.message))
                };
                if cond(left_if, "left_if")? {
                    Observation::Side {
                        left: true,
                        value: eval(left_value, "left_value")?,
                    }
                } else if cond(right_if, "right_if")? {
                    Observation::Side {
                        left: false,
                        value: eval(right_value, "right_value")?,
                    }
                } else {
                    Observation::Ignored
                }
            }
        })
    }

    /// What the `value` of a threshold, change or window rule contributes.
    fn classify(&self, value: Json) -> Result<Observation, String> {
        Ok(match (&self.rule, value) {
            (Rule::Threshold { .. }, Json::Number(n)) => {
                Observation::Number(n.as_f64().unwrap_or(0.0))
            }
            (Rule::Threshold { .. }, other) => {
                return Err(format!(
                    "rule `value`: a threshold needs a number, got {other}"
                ))
            }
            (
                Rule::Window {
                    aggregate: Aggregate::Last | Aggregate::Count,
                    ..
                }
                | Rule::Change { .. },
                v,
            ) => Observation::Value(v),
            (Rule::Window { .. }, Json::Number(n)) => {
                Observation::Number(n.as_f64().unwrap_or(0.0))
            }
            (Rule::Window { .. }, other) => {
                return Err(format!(
                    "rule `value`: this aggregate needs a number, got {other}"
                ))
            }
            (Rule::Join { .. }, _) => Observation::Ignored,
        })
    }

    /// The key and what the event contributes. With both a key and a value
    /// expression, one combined expression reads the record once (the
    /// fast path); when it fails, each is evaluated on its own so the error
    /// names the one at fault.
    fn key_and_observation(
        &self,
        cx: &Context<'_>,
        tag: &Tag,
    ) -> Result<(String, Observation), String> {
        if let Some(pair) = &self.key_and_value {
            if let Ok(ulog_expr::Value::Array(mut both)) = pair.eval(cx) {
                if let (Some(value), Some(key), true) = (both.pop(), both.pop(), both.is_empty()) {
                    let key = match key {
                        Json::String(s) => s,
                        other => other.to_string(),
                    };
                    return Ok((key, self.classify(value)?));
                }
            }
        }
        let key = match &self.key {
            None => tag.as_str().to_string(),
            Some(e) => expression::key_text(e, cx, "rule key")?,
        };
        Ok((key, self.observe(cx)?))
    }

    fn fresh_state(&self) -> KindState {
        match &self.rule {
            Rule::Threshold { .. } => KindState::Threshold { armed: true },
            Rule::Change { .. } => KindState::Change { last: None },
            Rule::Window { .. } => KindState::Window {
                max_time: i64::MIN,
                open: BTreeMap::new(),
            },
            Rule::Join { .. } => KindState::Join {
                left: None,
                right: None,
                active: false,
            },
        }
    }

    /// Handles one event that passed `if`; emitted events go to `out`.
    fn step(
        &self,
        inner: &mut Inner,
        tag: &Tag,
        event: &Event,
        out: &mut Vec<Emitted>,
    ) -> Result<(), String> {
        let cx = Context {
            record: &event.record,
            tag,
            time: event.time,
        };
        let (key, obs) = self.key_and_observation(&cx, tag)?;
        if matches!(obs, Observation::Ignored) {
            return Ok(());
        }
        let t = event.time.unix_nanos();
        inner.clock = inner.clock.max(t);
        inner.dirty = true;
        if !inner.keys.contains_key(&key) && inner.keys.len() >= self.max_keys {
            self.expire(inner, out, true);
            if inner.keys.len() >= self.max_keys {
                inner.refused += 1;
                if inner.refused == 1 {
                    tracing::warn!(
                        max_keys = self.max_keys,
                        "rule: max_keys reached; events of further keys pass on untracked (counted)"
                    );
                }
                return Ok(());
            }
        }
        if !inner.keys.contains_key(&key) {
            let state = self.fresh_state();
            inner.keys.insert(key.clone(), KeyState { seen: t, state });
        }
        let entry = inner.keys.get_mut(&key).expect("inserted above");
        entry.seen = entry.seen.max(t);
        // Serialised only when the event takes part in what is emitted.
        let cause = || event.record.to_json_string();
        let mut fired: Vec<(i64, Map<String, Json>, Vec<Json>)> = Vec::new();
        let mut late = false;
        match (&self.rule, &mut entry.state, obs) {
            (
                Rule::Threshold {
                    level,
                    rearm,
                    below,
                    ..
                },
                KindState::Threshold { armed },
                Observation::Number(v),
            ) => {
                let crossed = if *below { v < *level } else { v > *level };
                let recovered = if *below { v >= *rearm } else { v <= *rearm };
                if *armed && crossed {
                    *armed = false;
                    let mut m = Map::new();
                    m.insert("value".into(), number(v));
                    m.insert("level".into(), number(*level));
                    m.insert(
                        "direction".into(),
                        Json::from(if *below { "below" } else { "above" }),
                    );
                    fired.push((t, m, vec![cause_json(&cause())]));
                } else if !*armed && recovered {
                    *armed = true;
                }
            }
            (Rule::Change { names, .. }, KindState::Change { last }, Observation::Value(v)) => {
                if let Some(prev) = last.as_ref().filter(|p| **p != v) {
                    let mut m = Map::new();
                    m.insert("from".into(), prev.clone());
                    m.insert("to".into(), v.clone());
                    let name = text_of(&v);
                    m.insert(
                        "change".into(),
                        names.get(&name).cloned().unwrap_or(Json::String(name)),
                    );
                    fired.push((t, m, vec![cause_json(&cause())]));
                }
                *last = Some(v);
            }
            (
                Rule::Window {
                    aggregate,
                    size,
                    slide,
                    lateness,
                    ..
                },
                KindState::Window { max_time, open },
                obs,
            ) => {
                let before = max_time.saturating_sub(*lateness);
                let mut start = t.div_euclid(*slide) * slide;
                let mut counted = false;
                let mut text = None;
                while start.saturating_add(*size) > t {
                    if start.saturating_add(*size) > before {
                        let acc = open.entry(start).or_default();
                        let (num, json) = match &obs {
                            Observation::Number(n) => (*n, number(*n)),
                            Observation::Value(v) => (0.0, v.clone()),
                            _ => (0.0, Json::Null),
                        };
                        acc.count += 1;
                        acc.sum += num;
                        acc.min = Some(acc.min.map_or(num, |m| m.min(num)));
                        acc.max = Some(acc.max.map_or(num, |m| m.max(num)));
                        if acc.count == 1 || t >= acc.last_time {
                            acc.last = json;
                            acc.last_time = t;
                            acc.cause = text.get_or_insert_with(cause).clone();
                        }
                        counted = true;
                    }
                    start -= slide;
                }
                late = !counted;
                *max_time = (*max_time).max(t);
                let watermark = max_time.saturating_sub(*lateness);
                while let Some(entry) = open.first_entry() {
                    if entry.key().saturating_add(*size) > watermark {
                        break;
                    }
                    let (start, acc) = entry.remove_entry();
                    fired.push(window_result(*aggregate, start, *size, acc));
                }
            }
            (
                Rule::Join {
                    freshness, when, ..
                },
                KindState::Join {
                    left,
                    right,
                    active,
                },
                Observation::Side {
                    left: is_left,
                    value,
                },
            ) => {
                let side = if is_left { &mut *left } else { &mut *right };
                // An older reading than the one held is not the latest.
                if side.as_ref().is_none_or(|s| s.time <= t) {
                    *side = Some(Side {
                        value,
                        time: t,
                        cause: cause(),
                    });
                    if let (Some(l), Some(r)) = (left.as_ref(), right.as_ref()) {
                        if l.time.abs_diff(r.time) > freshness.unsigned_abs() {
                            *active = false;
                        } else {
                            let mut m = Map::new();
                            m.insert("left".into(), l.value.clone());
                            m.insert("right".into(), r.value.clone());
                            let now = match when {
                                None => true,
                                Some(cond) => {
                                    let rec = Record::Map(m.clone());
                                    cond.eval_bool(&Context {
                                        record: &rec,
                                        tag,
                                        time: event.time,
                                    })
                                    .map_err(|e| format!("rule `when`: {}", e.message))?
                                }
                            };
                            if now && (when.is_none() || !*active) {
                                fired.push((
                                    t,
                                    m,
                                    vec![cause_json(&l.cause), cause_json(&r.cause)],
                                ));
                            }
                            *active = now;
                        }
                    }
                }
            }
            _ => {}
        }
        if late {
            inner.late += 1;
            if inner.late.is_power_of_two() {
                tracing::warn!(
                    late = inner.late,
                    "rule: events later than allowed_lateness were not counted in their window"
                );
            }
        }
        for (time, m, causes) in fired {
            out.push(self.emitted(&key, time, m, causes));
        }
        Ok(())
    }

    /// The emitted record: the key, what the rule computed, the configured
    /// fields, then `_cause`, the input records that made it fire.
    fn emitted(
        &self,
        key: &str,
        time: i64,
        computed: Map<String, Json>,
        causes: Vec<Json>,
    ) -> Emitted {
        let mut record = Map::new();
        record.insert("key".into(), Json::String(key.to_string()));
        record.insert("rule".into(), Json::from(self.rule.name()));
        record.extend(computed);
        for (k, v) in &self.fields {
            record.insert(k.clone(), v.clone());
        }
        record.insert("_cause".into(), Json::Array(causes));
        Emitted { time, record }
    }

    /// Forgets keys idle for longer than `key_idle` (event time), emitting
    /// their open windows first. Runs every quarter of `key_idle` of event
    /// time, or now with `force` (a new key at the cap).
    fn expire(&self, inner: &mut Inner, out: &mut Vec<Emitted>, force: bool) {
        if !force && inner.clock.saturating_sub(inner.last_sweep) < self.key_idle / 4 {
            return;
        }
        inner.last_sweep = inner.clock;
        let horizon = inner.clock.saturating_sub(self.key_idle);
        let idle: Vec<String> = inner
            .keys
            .iter()
            .filter(|(_, s)| s.seen < horizon)
            .map(|(k, _)| k.clone())
            .collect();
        if idle.is_empty() {
            return;
        }
        inner.dirty = true;
        let mut idle = idle;
        // Emitted in a fixed order, whatever the map's.
        idle.sort();
        for key in idle {
            let Some(state) = inner.keys.remove(&key) else {
                continue;
            };
            if let (
                Rule::Window {
                    aggregate, size, ..
                },
                KindState::Window { open, .. },
            ) = (&self.rule, state.state)
            {
                for (start, acc) in open {
                    let (time, m, causes) = window_result(*aggregate, start, *size, acc);
                    out.push(self.emitted(&key, time, m, causes));
                }
            }
        }
    }

    /// Runs the rule over `batch`; returns the emitted events, one batch per
    /// tag in the order they were first emitted.
    fn apply(&self, batch: &mut Batch, rejects: &mut Vec<Rejected>) -> Vec<Batch> {
        let mut inner = self.lock();
        let tag = batch.tag.clone();
        let mut out = Vec::new();
        let mut kept = Vec::with_capacity(batch.events.len());
        for event in batch.events.drain(..) {
            let selected = match &self.condition {
                None => Ok(true),
                Some(c) => c
                    .eval_bool(&Context {
                        record: &event.record,
                        tag: &tag,
                        time: event.time,
                    })
                    .map_err(|e| format!("rule `if`: {}", e.message)),
            };
            let result = selected.and_then(|yes| {
                if yes {
                    self.step(&mut inner, &tag, &event, &mut out).map(|()| yes)
                } else {
                    Ok(yes)
                }
            });
            match result {
                Ok(true) if self.drop_input => {}
                Ok(_) => kept.push(event),
                Err(_) if self.skip_errors => kept.push(event),
                Err(reason) => rejects.push(Rejected { event, reason }),
            }
        }
        batch.events = kept;
        self.expire(&mut inner, &mut out, false);
        if inner.dirty
            && self.state_path.is_some()
            && inner.last_snapshot.elapsed() >= self.snapshot_interval
        {
            if let Err(e) = self.write_snapshot(&mut inner) {
                // Retried at the next interval; the old snapshot stays valid.
                inner.last_snapshot = Instant::now();
                tracing::warn!(error = %e, "rule: cannot write the snapshot");
            }
        }
        drop(inner);
        self.route(&tag, out)
    }

    fn route(&self, tag: &Tag, out: Vec<Emitted>) -> Vec<Batch> {
        let mut batches: Vec<Batch> = Vec::new();
        let mut index: HashMap<Tag, usize> = HashMap::new();
        for e in out {
            let new = self
                .tag
                .render(tag.as_str(), &e.record, "tag")
                .and_then(|t| Tag::parse(&t).map_err(|err| format!("tag `{t}`: {err}")));
            let new = match new {
                Ok(t) => t,
                Err(reason) => {
                    tracing::warn!(%reason, "rule: an emitted event has no valid tag; dropped");
                    continue;
                }
            };
            let event = Event::new(EventTime::from_unix_nanos(e.time), Record::Map(e.record));
            match index.get(&new) {
                Some(&i) => batches[i].events.push(event),
                None => {
                    index.insert(new.clone(), batches.len());
                    batches.push(Batch::new(new, vec![event]));
                }
            }
        }
        batches
    }

    /// Events of keys over `max_keys` that passed untracked.
    pub fn keys_refused(&self) -> u64 {
        self.lock().refused
    }

    /// Window events later than `allowed_lateness`, left out of windows.
    pub fn late_events(&self) -> u64 {
        self.lock().late
    }
}

/// A closed window's emitted fields: the aggregate, its bounds (float
/// seconds) and the latest event in it as the cause. Its time is the end.
fn window_result(
    aggregate: Aggregate,
    start: i64,
    size: i64,
    acc: Acc,
) -> (i64, Map<String, Json>, Vec<Json>) {
    let value = match aggregate {
        Aggregate::Count => Json::from(acc.count),
        Aggregate::Sum => number(acc.sum),
        Aggregate::Avg => number(acc.sum / acc.count.max(1) as f64),
        Aggregate::Min => acc.min.map_or(Json::Null, number),
        Aggregate::Max => acc.max.map_or(Json::Null, number),
        Aggregate::Last => acc.last,
    };
    let end = start.saturating_add(size);
    let mut m = Map::new();
    m.insert(
        "aggregate".into(),
        Json::from(match aggregate {
            Aggregate::Count => "count",
            Aggregate::Sum => "sum",
            Aggregate::Avg => "avg",
            Aggregate::Min => "min",
            Aggregate::Max => "max",
            Aggregate::Last => "last",
        }),
    );
    m.insert("value".into(), value);
    m.insert("count".into(), Json::from(acc.count));
    m.insert(
        "window_start".into(),
        number(EventTime::from_unix_nanos(start).as_secs_f64()),
    );
    m.insert(
        "window_end".into(),
        number(EventTime::from_unix_nanos(end).as_secs_f64()),
    );
    (end, m, vec![cause_json(&acc.cause)])
}

impl Drop for RuleFilter {
    /// The shutdown snapshot. Only when something changed, so `ulog check`
    /// (which builds filters) never writes state files.
    fn drop(&mut self) {
        let mut inner = self.lock();
        if inner.refused > 0 {
            tracing::info!(
                refused = inner.refused,
                "rule: events of keys over max_keys passed untracked"
            );
        }
        if inner.dirty && self.state_path.is_some() {
            if let Err(e) = self.write_snapshot(&mut inner) {
                tracing::warn!(error = %e, "rule: cannot write the snapshot at shutdown");
            }
        }
    }
}

#[async_trait]
impl Filter for RuleFilter {
    async fn filter(
        &self,
        batch: &mut Batch,
        rejects: &mut Vec<Rejected>,
    ) -> Result<(), PluginError> {
        // Called directly (not through the engine): emitted events of the
        // batch's own tag join it; others cannot be routed from here.
        let extra = self.filter_split(batch, rejects).await?;
        for b in extra {
            if b.tag == batch.tag {
                batch.events.extend(b.events);
            } else {
                return Err(PluginError::new(
                    "rule emits under other tags; run it through the engine (filter_split)",
                ));
            }
        }
        Ok(())
    }

    async fn filter_split(
        &self,
        batch: &mut Batch,
        rejects: &mut Vec<Rejected>,
    ) -> Result<Vec<Batch>, PluginError> {
        Ok(self.apply(batch, rejects))
    }

    /// State carries from one event to the next: batches must come in order.
    fn order_independent(&self) -> bool {
        false
    }
}
