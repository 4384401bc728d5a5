//! What every push output does the same way: find the event's household,
//! look its devices up in the registry, send one notification per device
//! (many in flight at once), and turn the gateways' answers into a
//! [`Delivery`].
//!
//! Per event and device the answer is one of four ([`Sent`](Outcome::Sent),
//! [`Retire`](Outcome::Retire), [`Retry`](Outcome::Retry),
//! [`Reject`](Outcome::Reject)). An event is delivered when every device got
//! it or had its token retired; it is retried when any device answered
//! "later"; otherwise a refusal sends it to `errors` with the gateway's
//! reason. Retrying an event does not send it again to the devices that
//! already have it: the output remembers (event id, token) pairs that reached
//! a final answer, for the last [`DONE_MEMORY`] such pairs.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};
use serde_json::{Map, Value as Json};
use tracing::{debug, warn};
use ulog_engine::{
    async_trait, Batch, BuildContext, BuildError, Delivery, Event, EventId, ItemFailure, Output,
    ParamKind, ParamSpec, Params, PluginError, PluginSpec,
};

use crate::registry::{redact, DeviceRegistry, HouseholdId, Lookup, Platform, Target};

/// How many (event, device) outcomes an output remembers to avoid resending.
pub const DONE_MEMORY: usize = 1 << 16;

/// Longest a `Retry-After` from a gateway holds the output back.
const MAX_HOLD: Duration = Duration::from_secs(300);

/// A gateway's answer for one notification to one device.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Accepted.
    Sent,
    /// The token is dead: retire it in the registry; the event counts as
    /// delivered for this device.
    Retire(String),
    /// Not now: try again later, no sooner than `after` when given.
    Retry {
        /// Why.
        reason: String,
        /// The gateway's `Retry-After`.
        after: Option<Duration>,
    },
    /// Refused for good (payload too large, bad request): to `errors`.
    Reject(String),
}

/// One push service, as the shared fan-out drives it.
pub trait Gateway: Send + Sync + Sized + 'static {
    /// The parameters parsed at build time (no I/O).
    type Config: Send + Sync + 'static;
    /// One event's notification, ready to send to any device.
    type Message: Send + Sync + 'static;
    /// The platform whose registry entries this gateway serves.
    const PLATFORM: Platform;

    /// Reads the gateway's parameters.
    ///
    /// # Errors
    /// A parameter that is wrong on its own (a bad template).
    fn config(params: &Params, ctx: &BuildContext) -> Result<Self::Config, BuildError>;

    /// Reads keys and makes clients; runs on the first batch, not at build
    /// time, so `ulog check` touches no files.
    ///
    /// # Errors
    /// A key that cannot be read: the batch is retried.
    fn start(config: &Self::Config, common: &Common) -> Result<Self, String>;

    /// Builds one event's notification.
    ///
    /// # Errors
    /// A field the payload needs is missing: the event goes to `errors`.
    fn message(
        &self,
        tag: &str,
        event: &Event,
        record: &Map<String, Json>,
    ) -> Result<Self::Message, String>;

    /// Sends `message` to the device `token`.
    fn send(
        &self,
        token: &str,
        event: EventId,
        message: &Self::Message,
    ) -> impl Future<Output = Outcome> + Send;
}

/// The parameters every push output has, declared once.
pub fn common_params(spec: PluginSpec, in_flight: i64) -> PluginSpec {
    spec.param(ParamSpec::required(
        "registry",
        ParamKind::Str,
        "The device registry file (.json or .csv, relative to the routes file): which devices belong to which household. Tokens the gateway reports dead are marked retired in it.",
    ))
    .param(ParamSpec::with_default(
        "household_key",
        ParamKind::Str,
        "household",
        "The record field naming the event's household (dotted for nested fields). It must be a string equal to a registry household; an event without it, or for an unknown household, goes to `errors`.",
    ))
    .param(ParamSpec::with_default(
        "registry_reload",
        ParamKind::Duration,
        Duration::from_secs(30),
        "How often to check the registry file for changes (re-read when its time or size changed).",
    ))
    .param(ParamSpec::with_default(
        "max_in_flight",
        ParamKind::Int,
        in_flight,
        "Most notifications sent at once (concurrent HTTP/2 streams or requests).",
    ))
    .param(ParamSpec::with_default(
        "timeout",
        ParamKind::Duration,
        Duration::from_secs(10),
        "How long one request may take, connecting included; then it is retried.",
    ))
    .param(ParamSpec::optional(
        "ca_file",
        ParamKind::Str,
        "PEM file of CAs to trust instead of the system's (private gateways, tests).",
    ))
}

/// The common parameters, parsed.
#[derive(Debug, Clone)]
pub struct Common {
    /// The registry file, absolute.
    pub registry: PathBuf,
    /// The household field's path.
    pub household_key: Vec<String>,
    /// Registry change check interval.
    pub registry_reload: Duration,
    /// Concurrency bound.
    pub max_in_flight: usize,
    /// Per-request timeout.
    pub timeout: Duration,
    /// CAs to trust.
    pub ca_file: Option<PathBuf>,
}

impl Common {
    /// Reads the common parameters.
    ///
    /// # Errors
    /// A bad value, naming the parameter.
    pub fn from_params(params: &Params, ctx: &BuildContext) -> Result<Self, BuildError> {
        let key = params.str("household_key")?;
        if key.is_empty() || key.split('.').any(str::is_empty) {
            return Err(BuildError::param("household_key", "must be a field name"));
        }
        let max_in_flight = params.usize("max_in_flight")?;
        if max_in_flight == 0 {
            return Err(BuildError::param("max_in_flight", "must be at least 1"));
        }
        Ok(Self {
            registry: ctx.resolve(params.str("registry")?),
            household_key: key.split('.').map(str::to_string).collect(),
            registry_reload: params.duration("registry_reload")?,
            max_in_flight,
            timeout: params.duration("timeout")?,
            ca_file: params.opt_str("ca_file")?.map(|p| ctx.resolve(p)),
        })
    }
}

/// The household an event is addressed to: the configured field, which must
/// be a string naming exactly one household.
pub fn household_of(record: &Map<String, Json>, key: &[String]) -> Result<HouseholdId, String> {
    let mut v = record.get(&key[0]);
    for k in &key[1..] {
        v = v.and_then(|v| v.get(k));
    }
    match v {
        Some(Json::String(s)) => HouseholdId::parse(s),
        Some(other) => Err(format!(
            "field {:?} must be a string naming one household, found {other}",
            key.join(".")
        )),
        None => Err(format!(
            "the event has no field {:?} naming its household",
            key.join(".")
        )),
    }
}

struct Running<G> {
    gateway: Arc<G>,
    registry: Arc<DeviceRegistry>,
}

/// A push output: the shared fan-out around one [`Gateway`].
pub struct PushOutput<G: Gateway> {
    id: String,
    config: G::Config,
    common: Common,
    running: Option<Running<G>>,
    done: HashMap<(EventId, Arc<str>), Option<Arc<str>>>,
    done_order: VecDeque<(EventId, Arc<str>)>,
    hold_until: Option<Instant>,
}

impl<G: Gateway> PushOutput<G> {
    /// Builds the output from validated parameters (no I/O).
    ///
    /// # Errors
    /// A bad parameter, naming it.
    pub fn from_params(params: &Params, ctx: &BuildContext) -> Result<Self, BuildError> {
        Ok(Self {
            id: ctx.id.clone(),
            config: G::config(params, ctx)?,
            common: Common::from_params(params, ctx)?,
            running: None,
            done: HashMap::new(),
            done_order: VecDeque::new(),
            hold_until: None,
        })
    }

    fn start(&mut self) -> Result<&Running<G>, String> {
        if self.running.is_none() {
            let registry = DeviceRegistry::open(&self.common.registry, self.common.registry_reload)
                .map_err(|e| e.to_string())?;
            let gateway = G::start(&self.config, &self.common)?;
            self.running = Some(Running {
                gateway: Arc::new(gateway),
                registry,
            });
        }
        Ok(self.running.as_ref().expect("started above"))
    }

    fn remember(&mut self, key: (EventId, Arc<str>), rejected: Option<Arc<str>>) {
        if !key.0.is_some() {
            return;
        }
        if self.done.insert(key.clone(), rejected).is_none() {
            self.done_order.push_back(key);
            if self.done_order.len() > DONE_MEMORY {
                if let Some(old) = self.done_order.pop_front() {
                    self.done.remove(&old);
                }
            }
        }
    }
}

/// What became of one event across its devices.
#[derive(Default)]
struct EventResult {
    retry: Option<String>,
    reject: Option<String>,
}

#[async_trait]
impl<G: Gateway> Output for PushOutput<G> {
    async fn write(&mut self, batch: &Batch) -> Delivery {
        if let Some(until) = self.hold_until.take() {
            let now = Instant::now();
            if until > now {
                tokio::time::sleep((until - now).min(MAX_HOLD)).await;
            }
        }
        let (gateway, registry) = match self.start() {
            Ok(r) => (r.gateway.clone(), r.registry.clone()),
            Err(e) => {
                return Delivery::Retry(PluginError::new(format!(
                    "{}: cannot start: {e}",
                    G::PLATFORM
                )))
            }
        };
        registry.maybe_reload();
        let tag = batch.tag.as_str();
        let mut results: Vec<EventResult> =
            (0..batch.len()).map(|_| EventResult::default()).collect();
        let mut jobs: Vec<(usize, Target, Arc<G::Message>)> = Vec::new();
        for (i, event) in batch.events.iter().enumerate() {
            let record = event.record.to_map();
            let household = match household_of(&record, &self.common.household_key) {
                Ok(h) => h,
                Err(e) => {
                    results[i].reject = Some(e);
                    continue;
                }
            };
            let devices = match registry.lookup(&household, G::PLATFORM) {
                Lookup::UnknownHousehold => {
                    results[i].reject = Some(format!(
                        "household {:?} is not in the device registry {}",
                        household.as_str(),
                        registry.path().display()
                    ));
                    continue;
                }
                Lookup::Devices(d) => d,
            };
            if devices.is_empty() {
                debug!(%household, platform = %G::PLATFORM, "no live device for the household on this platform");
                continue;
            }
            let message = match gateway.message(tag, event, &record) {
                Ok(m) => Arc::new(m),
                Err(e) => {
                    results[i].reject = Some(e);
                    continue;
                }
            };
            for target in devices {
                match self.done.get(&(event.id, target.token.clone())) {
                    Some(None) => continue,
                    Some(Some(reason)) => {
                        results[i].reject = Some(reason.to_string());
                        continue;
                    }
                    None => jobs.push((i, target, message.clone())),
                }
            }
        }
        let sent: Vec<(usize, Target, Outcome)> = stream::iter(jobs)
            .map(|(i, target, message)| {
                let gateway = gateway.clone();
                let id = batch.events[i].id;
                async move {
                    let outcome = gateway.send(&target.token, id, &message).await;
                    (i, target, outcome)
                }
            })
            .buffer_unordered(self.common.max_in_flight)
            .collect()
            .await;
        let mut retired: HashSet<Arc<str>> = HashSet::new();
        let mut hold: Option<Duration> = None;
        for (i, target, outcome) in sent {
            let key = (batch.events[i].id, target.token.clone());
            match outcome {
                Outcome::Sent => self.remember(key, None),
                Outcome::Retire(reason) => {
                    if retired.insert(target.token.clone()) {
                        if let Err(e) = registry.retire(G::PLATFORM, &target.token, &reason) {
                            warn!(node = %self.id, error = %e, "retired token not written back");
                        }
                    }
                    self.remember(key, None);
                }
                Outcome::Retry { reason, after } => {
                    if let Some(a) = after {
                        hold = Some(hold.map_or(a, |h| h.max(a)));
                    }
                    debug!(node = %self.id, token = %redact(&target.token), %reason, "notification to retry");
                    results[i].retry.get_or_insert(reason);
                }
                Outcome::Reject(reason) => {
                    let reason = format!(
                        "{} refused the notification to device {}: {reason}",
                        G::PLATFORM,
                        target
                            .name
                            .as_deref()
                            .map(str::to_string)
                            .unwrap_or_else(|| redact(&target.token))
                    );
                    self.remember(key, Some(reason.as_str().into()));
                    results[i].reject.get_or_insert(reason);
                }
            }
        }
        if let Some(h) = hold {
            self.hold_until = Some(Instant::now() + h.min(MAX_HOLD));
        }
        let mut failures = Vec::new();
        for (index, r) in results.into_iter().enumerate() {
            if let Some(reason) = r.retry {
                failures.push(ItemFailure {
                    index,
                    error: PluginError::new(reason),
                    retryable: true,
                });
            } else if let Some(reason) = r.reject {
                failures.push(ItemFailure {
                    index,
                    error: PluginError::new(reason),
                    retryable: false,
                });
            }
        }
        if failures.is_empty() {
            Delivery::Delivered
        } else if failures.len() == batch.len() && failures.iter().all(|f| f.retryable) {
            let first = failures.swap_remove(0);
            Delivery::Retry(PluginError::new(format!(
                "{} of {} notifications to retry; first: {}",
                batch.len(),
                batch.len(),
                first.error
            )))
        } else {
            Delivery::Partial(failures)
        }
    }
}

/// Renders a routes-file map whose string leaves are templates into JSON,
/// for payload parts the user shapes (FCM overrides, webhook bodies).
#[derive(Debug, Clone)]
pub enum JsonTemplate {
    /// A string rendered per event.
    Text(ulog_engine::template::Template),
    /// A JSON value taken as it is.
    Literal(Json),
    /// An object of templates.
    Object(Vec<(String, JsonTemplate)>),
    /// An array of templates.
    Array(Vec<JsonTemplate>),
}

impl JsonTemplate {
    /// Compiles a configured value.
    ///
    /// # Errors
    /// A bad placeholder, with the path to it.
    pub fn parse(value: &ulog_engine::Value) -> Result<Self, String> {
        use ulog_engine::Value as V;
        Ok(match value {
            V::Str(s) => JsonTemplate::Text(ulog_engine::template::Template::parse(s)?),
            V::Map(entries) => JsonTemplate::Object(
                entries
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), Self::parse(v).map_err(|e| format!("{k}: {e}"))?)))
                    .collect::<Result<_, String>>()?,
            ),
            V::List(items) => {
                JsonTemplate::Array(items.iter().map(Self::parse).collect::<Result<_, _>>()?)
            }
            other => JsonTemplate::Literal(other.to_json()),
        })
    }

    /// The JSON for one event.
    ///
    /// # Errors
    /// A placeholder naming a missing field.
    pub fn render(&self, tag: &str, record: &Map<String, Json>) -> Result<Json, String> {
        Ok(match self {
            JsonTemplate::Text(t) => Json::String(t.render(tag, record, "payload")?),
            JsonTemplate::Literal(j) => j.clone(),
            JsonTemplate::Object(entries) => Json::Object(
                entries
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), v.render(tag, record)?)))
                    .collect::<Result<_, String>>()?,
            ),
            JsonTemplate::Array(items) => Json::Array(
                items
                    .iter()
                    .map(|v| v.render(tag, record))
                    .collect::<Result<_, _>>()?,
            ),
        })
    }
}

/// Copies the named fields of `record` into `out` (`data_fields`), as they
/// are or, when `as_strings`, as text (FCM's `data` takes strings only).
pub fn copy_fields(
    record: &Map<String, Json>,
    names: &[String],
    as_strings: bool,
    out: &mut Map<String, Json>,
) {
    for n in names {
        if let Some(v) = record.get(n) {
            let v = match (as_strings, v) {
                (true, Json::String(_)) | (false, _) => v.clone(),
                (true, other) => Json::String(other.to_string()),
            };
            out.insert(n.clone(), v);
        }
    }
}

/// Seconds since the epoch, for JWT claims and expiration headers.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}
