//! Building a pipeline from its spec and running it.
//!
//! Inputs run as tasks and push batches through an [`Emitter`], which applies
//! the matching filters inline and hands the batch to the first matching
//! block's outputs. Each output is a task behind a bounded queue: a slow
//! output fills its queue and then makes `emit` wait, so memory stays bounded
//! and the slowness reaches the inputs (backpressure).
//!
//! Stopping: inputs are told to stop and finish what they read; then outputs
//! are closed in dependency order (an output that feeds a label, such as
//! `relabel`, closes before the outputs of that label), each draining its queue
//! and flushing before it exits.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::buffer::{BufferConfig, FileQueue};
use crate::event::{Batch, SharedBatch};
use crate::metrics::{Metrics, MetricsSnapshot, NodeMetrics};
use crate::params::{PluginKind, Value};
use crate::pattern::PatternSet;
use crate::plugin::{Delivery, Filter, Input, InputContext, Output, Rejected};
use crate::registry::{AnyFactory, BuildContext, DeliverySettings, Registry};
use crate::router::{first_time, MatchTable, RouteCache};
use crate::spec::{Focus, NodeSpec, PipelineSpec, Severity, Site, SpecError, ERRORS_LABEL};
use crate::tag::Tag;

/// How many times a filter may change a batch's tag before the batch is
/// rejected (guards against rewrite loops).
const MAX_REROUTES: usize = 8;
/// Tags each emitter remembers decisions for.
const ROUTE_CACHE_TAGS: usize = 4096;

/// Why a batch was not accepted. The caller still owns the events: it
/// must not acknowledge them (an HTTP input answers 503, a forward input
/// withholds its ack, a tail input does not commit its position).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EmitError {
    /// The pipeline is stopping and no longer accepts events.
    #[error("the pipeline is shutting down; events were not accepted")]
    ShuttingDown,
    /// An output's buffer is full and its `overflow` is `reject`.
    #[error("the buffer of output `{output}` is full ({detail}); events were not accepted, try again later")]
    BufferFull {
        /// The output.
        output: Arc<str>,
        /// What is full.
        detail: String,
    },
    /// An output's buffer cannot store events (its disk fails).
    #[error(
        "the buffer of output `{output}` cannot store events ({detail}); events were not accepted"
    )]
    BufferFailed {
        /// The output.
        output: Arc<str>,
        /// What failed.
        detail: String,
    },
}

impl EmitError {
    /// Whether ulog is stopping (as opposed to being full for now).
    pub fn is_shutting_down(&self) -> bool {
        matches!(self, EmitError::ShuttingDown)
    }

    /// How long a client should wait before sending again, when waiting may
    /// help (HTTP `Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            EmitError::ShuttingDown => None,
            EmitError::BufferFull { .. } | EmitError::BufferFailed { .. } => {
                Some(Duration::from_secs(1))
            }
        }
    }
}

struct FilterNode {
    id: Arc<str>,
    filter: Arc<dyn Filter>,
    metrics: Arc<NodeMetrics>,
}

struct Flow {
    name: Option<String>,
    filters: Vec<FilterNode>,
    filter_table: MatchTable,
    matches: MatchTable,
    match_outputs: Vec<Arc<[usize]>>,
}

enum OutMsg {
    Batch(SharedBatch),
    Close,
}

struct OutputSlot {
    id: Arc<str>,
    tx: mpsc::Sender<OutMsg>,
    /// Set for a file-buffered output: batches go here, not to `tx`.
    file: Option<Arc<FileQueue>>,
    /// A memory queue that refuses instead of waiting when full.
    reject_when_full: bool,
    metrics: Arc<NodeMetrics>,
}

impl OutputSlot {
    /// Hands one batch to this output's buffer: returns once the buffer
    /// holds it (for a file buffer: once it is durable as configured).
    async fn push(&self, batch: &SharedBatch) -> Result<(), EmitError> {
        let n = batch.len();
        NodeMetrics::add(&self.metrics.queued, n);
        let result = match &self.file {
            Some(q) => q.push(batch).await.map(|_| ()),
            None if self.reject_when_full => match self.tx.try_send(OutMsg::Batch(batch.clone())) {
                Ok(()) => Ok(()),
                Err(mpsc::error::TrySendError::Full(_)) => Err(EmitError::BufferFull {
                    output: self.id.clone(),
                    detail: "its memory queue holds `queue_batches` batches".into(),
                }),
                Err(mpsc::error::TrySendError::Closed(_)) => Err(EmitError::ShuttingDown),
            },
            None => self
                .tx
                .send(OutMsg::Batch(batch.clone()))
                .await
                .map_err(|_| EmitError::ShuttingDown),
        };
        if result.is_err() {
            NodeMetrics::sub(&self.metrics.queued, n);
        }
        result
    }
}

struct Shared {
    flows: Vec<Flow>,
    outputs: Vec<OutputSlot>,
    errors_flow: Option<usize>,
    metrics: Metrics,
    unmatched_seen: Mutex<HashSet<Tag>>,
}

#[derive(Clone)]
struct Decision {
    filters: Arc<[usize]>,
    outputs: Option<Arc<[usize]>>,
}

/// Sends batches into a pipeline. Cheap to clone; each clone keeps its own
/// routing cache, so give one to each connection or task.
pub struct Emitter {
    shared: Arc<Shared>,
    flow: usize,
    caches: HashMap<usize, RouteCache<Decision>>,
    source: Option<Arc<NodeMetrics>>,
    /// The input's `id_key`: events carrying this field take their id from
    /// it, so a sender's resend keeps the id.
    id_key: Option<Arc<str>>,
}

impl Clone for Emitter {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            flow: self.flow,
            caches: HashMap::new(),
            source: self.source.clone(),
            id_key: self.id_key.clone(),
        }
    }
}

impl Emitter {
    /// Routes `batch` through the filters and hands it to its outputs'
    /// buffers. Returns once every output's buffer holds it — for a file
    /// buffer, once it is on disk as its `sync` promises: that is when an
    /// input may acknowledge the events to its sender. Waits while a buffer
    /// is full and its `overflow` is `block` (backpressure).
    ///
    /// # Errors
    /// [`EmitError`] when the pipeline is shutting down, or a buffer is full
    /// (`overflow = "reject"`) or failing; the caller still owns the
    /// responsibility for the events. Outputs that took the batch before one
    /// refused it keep it, so a sender that retries may deliver some events
    /// twice (with the same ids when the source gives them).
    pub async fn emit(&mut self, mut batch: Batch) -> Result<(), EmitError> {
        if batch.is_empty() {
            return Ok(());
        }
        if let Some(key) = &self.id_key {
            ids_from_field(&mut batch, key);
        }
        assign_ids(&mut batch);
        if let Some(m) = &self.source {
            NodeMetrics::add(&m.events_in, batch.len());
        }
        let n = batch.len();
        let rejects = self.route(self.flow, batch).await?;
        if let Some(m) = &self.source {
            NodeMetrics::add(&m.events_out, n);
        }
        if !rejects.is_empty() {
            self.send_to_errors(rejects, self.flow).await?;
        }
        // Let the outputs just woken run now, or be stolen by another worker:
        // an input with data always ready would otherwise fill every queue
        // before the scheduler's budget makes it yield, holding up to
        // `queue_batches` batches in memory and leaving the other core idle.
        tokio::task::yield_now().await;
        Ok(())
    }

    /// Whether events handed to [`Emitter::reject`] reach an `errors` label
    /// (rather than being logged and counted as dropped): an input that can
    /// refuse data to its sender instead (withhold an ack) does so when this
    /// is false.
    pub fn has_errors_label(&self) -> bool {
        self.shared.errors_flow.is_some_and(|f| f != self.flow)
    }

    /// Hands events an input could not make sense of (a line that does not
    /// parse, say) to the `errors` label, each with its reason; without an
    /// `errors` label they are logged and counted as dropped. `node` names the
    /// input in the `_error_node` field.
    ///
    /// # Errors
    /// [`EmitError`] when the pipeline is shutting down.
    pub async fn reject(
        &mut self,
        tag: Tag,
        node: &str,
        rejected: Vec<Rejected>,
    ) -> Result<(), EmitError> {
        if rejected.is_empty() {
            return Ok(());
        }
        let node: Arc<str> = node.into();
        let items = rejected
            .into_iter()
            .map(|r| (tag.clone(), r, node.clone()))
            .collect();
        self.send_to_errors(items, self.flow).await
    }

    /// Sends events that a plugin refused to the `errors` label (or logs and
    /// counts them when there is none). `from_flow` is where they were refused;
    /// events refused inside the `errors` label itself are never sent back to
    /// it.
    async fn send_to_errors(
        &mut self,
        rejects: Vec<(Tag, Rejected, Arc<str>)>,
        from_flow: usize,
    ) -> Result<(), EmitError> {
        let shared = self.shared.clone();
        NodeMetrics::add(&shared.metrics.rejected, rejects.len());
        let target = shared.errors_flow.filter(|&f| f != from_flow);
        let Some(errors_flow) = target else {
            NodeMetrics::add(&shared.metrics.dropped, rejects.len());
            for (tag, r, node) in rejects.iter().take(3) {
                warn!(tag = %tag, node = %node, reason = %r.reason, "event rejected and no `errors` label to send it to");
            }
            if rejects.len() > 3 {
                warn!(count = rejects.len() - 3, "more events rejected");
            }
            return Ok(());
        };
        // Group by tag so each becomes one batch.
        let mut by_tag: Vec<(Tag, Vec<crate::event::Event>)> = Vec::new();
        for (tag, r, node) in rejects {
            let mut event = r.event;
            event
                .record
                .insert("_error", serde_json::Value::String(r.reason));
            event
                .record
                .insert("_error_node", serde_json::Value::String(node.to_string()));
            match by_tag.iter_mut().find(|(t, _)| *t == tag) {
                Some((_, events)) => events.push(event),
                None => by_tag.push((tag, vec![event])),
            }
        }
        for (tag, events) in by_tag {
            let again = self.route(errors_flow, Batch::new(tag, events)).await?;
            if !again.is_empty() {
                NodeMetrics::add(&shared.metrics.dropped, again.len());
                for (tag, r, node) in again.iter().take(3) {
                    error!(tag = %tag, node = %node, reason = %r.reason, "event rejected inside the `errors` label; dropped");
                }
            }
        }
        Ok(())
    }

    fn decide(&mut self, flow: usize, tag: &Tag) -> Decision {
        let shared = &self.shared;
        self.caches
            .entry(flow)
            .or_insert_with(|| RouteCache::new(ROUTE_CACHE_TAGS))
            .get_or_insert_with(tag, || {
                let f = &shared.flows[flow];
                Decision {
                    filters: f.filter_table.all_matches(tag).collect(),
                    outputs: f
                        .matches
                        .first_match(tag)
                        .map(|i| f.match_outputs[i].clone()),
                }
            })
    }

    /// Runs filters and enqueues; returns the events that were rejected.
    ///
    /// A large batch whose filters are all order-independent is cut into one
    /// chunk per core and filtered in parallel (one connection's regex parsing
    /// then uses every core); the chunks are enqueued in their original order.
    async fn route(&mut self, flow: usize, batch: Batch) -> Result<Rejects, EmitError> {
        let shared = self.shared.clone();
        let mut rejects = Vec::new();
        let mut pending = std::collections::VecDeque::from([(batch, 0usize)]);
        while let Some((batch, reroutes)) = pending.pop_front() {
            let decision = self.decide(flow, &batch.tag);
            let tag = batch.tag.clone();
            let results = if decision.filters.is_empty() {
                vec![batch]
            } else if batch.len() >= PARALLEL_FILTER_MIN
                && parallelism() > 1
                && decision
                    .filters
                    .iter()
                    .all(|&fi| shared.flows[flow].filters[fi].filter.order_independent())
            {
                filter_in_parallel(&shared, flow, &decision.filters, batch, &mut rejects).await
            } else {
                let (b, r) =
                    run_filters(shared.clone(), flow, decision.filters.clone(), batch).await;
                rejects.extend(r);
                b
            };
            for mut b in results {
                if b.is_empty() {
                    continue;
                }
                if b.tag != tag {
                    if reroutes + 1 > MAX_REROUTES {
                        let reason = format!(
                            "tag rewritten more than {MAX_REROUTES} times (a rewrite loop?)"
                        );
                        let node: Arc<str> = "router".into();
                        let t = b.tag.clone();
                        rejects.extend(b.events.drain(..).map(|event| {
                            (
                                t.clone(),
                                Rejected {
                                    event,
                                    reason: reason.clone(),
                                },
                                node.clone(),
                            )
                        }));
                    } else {
                        pending.push_back((b, reroutes + 1));
                    }
                    continue;
                }
                self.enqueue(flow, &decision, b).await?;
            }
        }
        Ok(rejects)
    }

    /// Hands a filtered batch to the outputs of its block (or counts it as
    /// unmatched).
    async fn enqueue(
        &self,
        flow: usize,
        decision: &Decision,
        batch: Batch,
    ) -> Result<(), EmitError> {
        let shared = &self.shared;
        match &decision.outputs {
            None => {
                NodeMetrics::add(&shared.metrics.unmatched, batch.len());
                if first_time(&shared.unmatched_seen, batch.tag.clone()) {
                    let flow_name = shared.flows[flow].name.as_deref().unwrap_or("top level");
                    warn!(tag = %batch.tag, flow = flow_name, "no match block takes this tag; its events are counted as unmatched");
                }
            }
            Some(outputs) => {
                let shared_batch = Arc::new(batch);
                for &o in outputs.iter() {
                    shared.outputs[o].push(&shared_batch).await?;
                }
            }
        }
        Ok(())
    }
}

/// Events refused on the way, with the tag they had and the node that
/// refused them.
type Rejects = Vec<(Tag, Rejected, Arc<str>)>;

/// Batches smaller than this are filtered on the emitting task: splitting
/// costs more than it saves.
const PARALLEL_FILTER_MIN: usize = 512;

fn parallelism() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Cuts `batch` into one chunk per core, filters the chunks concurrently, and
/// returns the results in the original order.
async fn filter_in_parallel(
    shared: &Arc<Shared>,
    flow: usize,
    filters: &Arc<[usize]>,
    mut batch: Batch,
    rejects: &mut Rejects,
) -> Vec<Batch> {
    let chunks = parallelism()
        .min(batch.len() / (PARALLEL_FILTER_MIN / 2))
        .max(1);
    let size = batch.len().div_ceil(chunks);
    let mut tails = Vec::new();
    while batch.len() > size {
        let rest = batch.events.split_off(size);
        tails.push(Batch::new(
            batch.tag.clone(),
            std::mem::replace(&mut batch.events, rest),
        ));
    }
    tails.push(batch);
    // tails[0] is the first chunk; run all but the first on other workers.
    let mut chunks = tails.into_iter();
    let first = chunks.next().expect("at least one chunk");
    // On the blocking pool, not `tokio::spawn`: a task spawned from a worker
    // lands in that worker's non-stealable next-task slot and would only run
    // after this one, on the same core.
    let runtime = tokio::runtime::Handle::current();
    let handles: Vec<_> = chunks
        .map(|chunk| {
            let (runtime, shared, filters) = (runtime.clone(), shared.clone(), filters.clone());
            tokio::task::spawn_blocking(move || {
                runtime.block_on(run_filters(shared, flow, filters, chunk))
            })
        })
        .collect();
    let (b, r) = run_filters(shared.clone(), flow, filters.clone(), first).await;
    rejects.extend(r);
    let mut out = b;
    for h in handles {
        match h.await {
            Ok((b, r)) => {
                rejects.extend(r);
                out.extend(b);
            }
            Err(e) => {
                // A filter panicked: its chunk is gone. Say so loudly.
                error!(error = %e, "a filter task failed; its chunk of events is lost");
                NodeMetrics::add(&shared.metrics.dropped, 1);
            }
        }
    }
    out
}

/// Runs the filters `filters` of `flow` over `batch` in order, stopping
/// early when one changes the tag (the batch is then routed again). The
/// batch comes first in the result, then any a filter split off under other
/// tags (routed again too).
async fn run_filters(
    shared: Arc<Shared>,
    flow: usize,
    filters: Arc<[usize]>,
    mut batch: Batch,
) -> (Vec<Batch>, Rejects) {
    let mut rejects = Vec::new();
    let mut split_off = Vec::new();
    for &fi in filters.iter() {
        let node = &shared.flows[flow].filters[fi];
        let tag_before = batch.tag.clone();
        let mut refused = Vec::new();
        NodeMetrics::add(&node.metrics.events_in, batch.len());
        let result = node.filter.filter_split(&mut batch, &mut refused).await;
        NodeMetrics::add(&node.metrics.events_failed, refused.len());
        rejects.extend(
            refused
                .into_iter()
                .map(|r| (tag_before.clone(), r, node.id.clone())),
        );
        match result {
            Ok(extra) => {
                for b in extra {
                    NodeMetrics::add(&node.metrics.events_out, b.len());
                    if b.tag == batch.tag {
                        batch.events.extend(b.events);
                    } else if !b.is_empty() {
                        split_off.push(b);
                    }
                }
            }
            Err(e) => {
                let reason = format!("filter failed: {e}");
                NodeMetrics::add(&node.metrics.events_failed, batch.len());
                rejects.extend(batch.events.drain(..).map(|event| {
                    (
                        tag_before.clone(),
                        Rejected {
                            event,
                            reason: reason.clone(),
                        },
                        node.id.clone(),
                    )
                }));
            }
        }
        NodeMetrics::add(&node.metrics.events_out, batch.len());
        if batch.is_empty() || batch.tag != tag_before {
            break;
        }
    }
    let mut out = Vec::with_capacity(1 + split_off.len());
    out.push(batch);
    out.extend(split_off);
    (out, rejects)
}

enum OutputKind {
    Plugin(Box<dyn Output>),
    Relabel(usize),
}

/// Where an output task takes its batches from.
enum Source {
    Memory(mpsc::Receiver<OutMsg>),
    File(Arc<FileQueue>),
}

struct BuiltOutput {
    id: Arc<str>,
    kind: OutputKind,
    settings: DeliverySettings,
    source: Source,
    flow: usize,
    /// The `secondary` output's id, resolved once every output is built.
    secondary: Option<String>,
    /// Where it is in the routes file.
    site: Site,
    secondary_index: Option<usize>,
}

/// Resolves every output's `secondary` id to its index, refusing unknown
/// ids and chains that lead back to where they started.
fn resolve_secondaries(outputs: &[BuiltOutput]) -> Result<Vec<Option<usize>>, Vec<SpecError>> {
    let mut errors = Vec::new();
    let mut resolved = vec![None; outputs.len()];
    for (i, o) in outputs.iter().enumerate() {
        let Some(name) = &o.secondary else { continue };
        match outputs.iter().position(|t| &*t.id == name.as_str()) {
            Some(j) if j == i => errors.push(
                SpecError::error(
                    o.site,
                    Focus::Param("secondary".into()),
                    "an output cannot be its own secondary",
                )
                .code("E-secondary"),
            ),
            Some(j) => resolved[i] = Some(j),
            None => {
                let hint = crate::suggest::closest(name, outputs.iter().map(|t| &*t.id));
                errors.push(
                    SpecError::error(
                        o.site,
                        Focus::Param("secondary".into()),
                        format!(
                            "no output with id `{name}`{}",
                            hint.map(|h| format!("; did you mean `{h}`?"))
                                .unwrap_or_default()
                        ),
                    )
                    .code("E-secondary"),
                );
            }
        }
    }
    for start in 0..outputs.len() {
        let mut seen = vec![start];
        let mut cur = start;
        while let Some(next) = resolved[cur] {
            if next == start {
                let names: Vec<&str> = seen.iter().map(|&k| &*outputs[k].id).collect();
                errors.push(
                    SpecError::error(
                        outputs[start].site,
                        Focus::Param("secondary".into()),
                        format!(
                            "secondary outputs form a loop: {} → {}",
                            names.join(" → "),
                            names[0]
                        ),
                    )
                    .code("E-secondary"),
                );
                break;
            }
            if seen.contains(&next) {
                break;
            }
            seen.push(next);
            cur = next;
        }
    }
    if errors.is_empty() {
        Ok(resolved)
    } else {
        Err(errors)
    }
}

struct BuiltInput {
    id: Arc<str>,
    input: Box<dyn Input>,
    flow: usize,
    id_key: Option<Arc<str>>,
}

/// Options for building a pipeline.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// Relative paths in parameters resolve against this directory.
    pub base_dir: PathBuf,
    /// How long stopping may take before queued events are given up (and
    /// reported as lost).
    pub shutdown_timeout: Duration,
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self {
            base_dir: PathBuf::from("."),
            shutdown_timeout: Duration::from_secs(30),
        }
    }
}

/// A pipeline built from its spec, ready to start.
pub struct Pipeline {
    shared: Arc<Shared>,
    inputs: Vec<BuiltInput>,
    outputs: Vec<BuiltOutput>,
    close_order: Vec<usize>,
    warnings: Vec<SpecError>,
    options: BuildOptions,
}

/// The resolved ids of every node, in spec order, for tools like `ulog graph`.
#[derive(Clone, Debug, Default)]
pub struct NodeIds {
    /// Id of each site.
    pub ids: HashMap<Site, String>,
}

struct Builder<'a> {
    registry: &'a Registry,
    options: &'a BuildOptions,
    errors: Vec<SpecError>,
    ids: HashMap<Site, String>,
    seen_ids: HashMap<String, Site>,
    /// Default ids count per type name across kinds, so an input and an
    /// output of the same type (`tcp`) get distinct ids.
    per_type: HashMap<String, usize>,
}

impl Builder<'_> {
    fn err(&mut self, code: &'static str, site: Site, focus: Focus, message: impl Into<String>) {
        self.errors
            .push(SpecError::error(site, focus, message).code(code));
    }

    /// Validates a node's params and resolves its id; returns the params.
    fn prepare(
        &mut self,
        site: Site,
        kind: PluginKind,
        node: &NodeSpec,
    ) -> Option<(crate::registry::Entry, crate::params::Params, String)> {
        let Some(entry) = self.registry.entry(kind, &node.plugin).cloned() else {
            let known = self.registry.names(kind);
            let hint = crate::suggest::closest(&node.plugin, known.iter().copied());
            let mut e = SpecError::error(
                site,
                Focus::Block,
                format!(
                    "unknown {kind} type `{}`{}",
                    node.plugin,
                    hint.map(|h| format!("; did you mean `{h}`?"))
                        .unwrap_or_default()
                ),
            );
            e.notes
                .push(format!("known {kind} types: {}", known.join(", ")));
            self.errors.push(e.code("E-unknown-plugin"));
            return None;
        };
        let params = match entry.spec.validate(&node.params) {
            Ok(p) => p,
            Err(errs) => {
                for pe in errs {
                    let focus = match &pe {
                        crate::params::ParamError::Missing { .. } => Focus::Block,
                        other => Focus::Param(other.param().to_string()),
                    };
                    let code = match &pe {
                        crate::params::ParamError::Unknown { .. } => "E-unknown-param",
                        crate::params::ParamError::Duplicate { .. } => "E-duplicate-param",
                        crate::params::ParamError::WrongType { .. } => "E-param-type",
                        crate::params::ParamError::Missing { .. } => "E-missing-param",
                    };
                    let mut e = SpecError::error(site, focus, pe.to_string()).code(code);
                    if let crate::params::ParamError::Unknown { known, .. } = &pe {
                        e.notes
                            .push(format!("`{}` takes: {}", node.plugin, known.join(", ")));
                    }
                    self.errors.push(e);
                }
                return None;
            }
        };
        let id = match params.opt_str("id") {
            Ok(Some(id)) => id.to_string(),
            _ => {
                let n = self.per_type.entry(node.plugin.clone()).or_insert(0);
                *n += 1;
                format!("{}#{}", node.plugin, n)
            }
        };
        if let Some(prev) = self.seen_ids.get(&id) {
            let mut e = SpecError::error(
                site,
                Focus::Param("id".into()),
                format!("node id `{id}` is used twice"),
            );
            e.notes.push(format!("first used at {prev:?}"));
            self.errors.push(e.code("E-duplicate-id"));
            return None;
        }
        self.seen_ids.insert(id.clone(), site);
        self.ids.insert(site, id.clone());
        Some((entry, params, id))
    }

    fn ctx(&self, id: &str) -> BuildContext {
        BuildContext {
            id: id.to_string(),
            base_dir: self.options.base_dir.clone(),
        }
    }

    fn patterns(&mut self, site: Site, texts: &[String]) -> PatternSet {
        match PatternSet::parse(texts) {
            Ok(set) => set,
            Err((index, e)) => {
                self.err(
                    "E-pattern",
                    site,
                    Focus::Pattern {
                        index,
                        offset: e.offset,
                    },
                    format!("invalid tag pattern {:?}: {}", texts[index], e.message),
                );
                PatternSet::default()
            }
        }
    }
}

impl Pipeline {
    /// Checks and builds every node of `spec`. Building does no I/O (no port
    /// is bound, no file opened), so this is also what `ulog check` runs.
    ///
    /// # Errors
    /// Every problem found, not just the first, each with its [`Site`].
    pub fn build(
        spec: &PipelineSpec,
        registry: &Registry,
        options: BuildOptions,
    ) -> Result<Pipeline, Vec<SpecError>> {
        Self::build_with_ids(spec, registry, options).map(|(p, _)| p)
    }

    /// Like [`Pipeline::build`], also returning the id given to each node.
    ///
    /// # Errors
    /// As [`Pipeline::build`].
    pub fn build_with_ids(
        spec: &PipelineSpec,
        registry: &Registry,
        options: BuildOptions,
    ) -> Result<(Pipeline, NodeIds), Vec<SpecError>> {
        let mut b = Builder {
            registry,
            options: &options,
            errors: Vec::new(),
            ids: HashMap::new(),
            seen_ids: HashMap::new(),
            per_type: HashMap::new(),
        };
        let mut warnings = Vec::new();
        let mut metrics = Metrics::default();

        // Flow 0 is the top level; flow i+1 is labels[i].
        let mut label_index: HashMap<&str, usize> = HashMap::new();
        for (i, l) in spec.labels.iter().enumerate() {
            if label_index.insert(l.name.as_str(), i + 1).is_some() {
                b.err(
                    "E-label",
                    Site::Label(i),
                    Focus::Block,
                    format!("label `{}` is defined twice", l.name),
                );
            }
        }
        let errors_flow = label_index.get(ERRORS_LABEL).copied();
        let flow_of_label = |b: &mut Builder, site: Site, name: &str| -> Option<usize> {
            match label_index.get(name) {
                Some(&f) => Some(f),
                None => {
                    let names: Vec<&str> = label_index.keys().copied().collect();
                    let hint = crate::suggest::closest(name, names.iter().copied());
                    let mut e = SpecError::error(
                        site,
                        Focus::Param("label".into()),
                        format!(
                            "no label named `{name}`{}",
                            hint.map(|h| format!("; did you mean `{h}`?"))
                                .unwrap_or_default()
                        ),
                    );
                    if !names.is_empty() {
                        e.notes
                            .push(format!("labels defined: {}", names.join(", ")));
                    }
                    b.errors.push(e.code("E-label"));
                    None
                }
            }
        };

        let mut inputs = Vec::new();
        for (i, node) in spec.inputs.iter().enumerate() {
            let site = Site::Input(i);
            let Some((entry, params, id)) = b.prepare(site, PluginKind::Input, node) else {
                continue;
            };
            let flow = match params.opt_str("label") {
                Ok(Some(l)) => match flow_of_label(&mut b, site, l) {
                    Some(f) => f,
                    None => continue,
                },
                _ => 0,
            };
            let AnyFactory::Input(factory) = &entry.factory else {
                continue;
            };
            match factory(&params, &b.ctx(&id)) {
                Ok(input) => {
                    let id: Arc<str> = id.into();
                    metrics.node(&id, PluginKind::Input);
                    let id_key = params.opt_str("id_key").ok().flatten().map(Arc::from);
                    inputs.push(BuiltInput {
                        id,
                        input,
                        flow,
                        id_key,
                    });
                }
                Err(e) => b.errors.push(SpecError::error(site, e.focus(), e.message)),
            }
        }

        let mut flows = Vec::new();
        let mut outputs: Vec<BuiltOutput> = Vec::new();
        let mut senders: Vec<OutputSlot> = Vec::new();
        // Edges between outputs for the close order: from → to.
        let mut feeds: Vec<(usize, usize)> = Vec::new();
        let mut relabel_targets: Vec<(usize, usize)> = Vec::new();
        let flow_specs = std::iter::once((None, &spec.root)).chain(
            spec.labels
                .iter()
                .enumerate()
                .map(|(i, l)| (Some(i), &l.flow)),
        );
        for (flow_idx, (label, fs)) in flow_specs.enumerate() {
            let mut filters = Vec::new();
            let mut filter_sets = Vec::new();
            for (index, f) in fs.filters.iter().enumerate() {
                let site = Site::Filter { label, index };
                let set = b.patterns(site, &f.patterns);
                let Some((entry, params, id)) = b.prepare(site, PluginKind::Filter, &f.node) else {
                    continue;
                };
                let AnyFactory::Filter(factory) = &entry.factory else {
                    continue;
                };
                match factory(&params, &b.ctx(&id)) {
                    Ok(filter) => {
                        let id: Arc<str> = id.into();
                        let metrics = metrics.node(&id, PluginKind::Filter);
                        filters.push(FilterNode {
                            id,
                            filter,
                            metrics,
                        });
                        filter_sets.push(set);
                    }
                    Err(e) => b.errors.push(SpecError::error(site, e.focus(), e.message)),
                }
            }
            let mut match_sets = Vec::new();
            let mut match_outputs = Vec::new();
            for (index, m) in fs.matches.iter().enumerate() {
                let site = Site::Match { label, index };
                let set = b.patterns(site, &m.patterns);
                if m.outputs.is_empty() {
                    b.err(
                        "E-copy",
                        site,
                        Focus::Block,
                        "a match block needs at least one output",
                    );
                }
                let mut outs = Vec::new();
                for (output, node) in m.outputs.iter().enumerate() {
                    let site = Site::Output {
                        label,
                        index,
                        output,
                    };
                    let Some((entry, params, id)) = b.prepare(site, PluginKind::Output, node)
                    else {
                        continue;
                    };
                    let settings = match DeliverySettings::from_params(&params) {
                        Ok(s) => s,
                        Err(e) => {
                            b.errors.push(SpecError::error(site, e.focus(), e.message));
                            continue;
                        }
                    };
                    let kind = match &entry.factory {
                        AnyFactory::Output(factory) => match factory(&params, &b.ctx(&id)) {
                            Ok(o) => OutputKind::Plugin(o),
                            Err(e) => {
                                b.errors.push(SpecError::error(site, e.focus(), e.message));
                                continue;
                            }
                        },
                        AnyFactory::Builtin => {
                            let name = params
                                .opt_str("label")
                                .ok()
                                .flatten()
                                .unwrap_or_default()
                                .to_string();
                            let Some(target) = flow_of_label(&mut b, site, &name) else {
                                continue;
                            };
                            OutputKind::Relabel(target)
                        }
                        _ => continue,
                    };
                    let idx = outputs.len();
                    if let OutputKind::Relabel(target) = kind {
                        relabel_targets.push((idx, target));
                    }
                    let id: Arc<str> = id.into();
                    let buffer = match BufferConfig::from_params(&params, &b.ctx(&id)) {
                        Ok(c) => c,
                        Err(e) => {
                            b.errors.push(SpecError::error(site, e.focus(), e.message));
                            continue;
                        }
                    };
                    let secondary = params
                        .opt_str("secondary")
                        .ok()
                        .flatten()
                        .map(str::to_string);
                    let node_metrics = metrics.node(&id, PluginKind::Output);
                    let (tx, rx) = mpsc::channel(settings.queue_batches);
                    let (file, reject_when_full) = match buffer {
                        BufferConfig::Memory { overflow } => {
                            (None, overflow == crate::buffer::Overflow::Reject)
                        }
                        BufferConfig::File(config) => {
                            let q = Arc::new(FileQueue::new(id.clone(), config));
                            let probe = q.clone();
                            let _ = node_metrics.buffer.set(Arc::new(move || probe.snapshot()));
                            (Some(q), false)
                        }
                    };
                    let source = match &file {
                        Some(q) => Source::File(q.clone()),
                        None => Source::Memory(rx),
                    };
                    senders.push(OutputSlot {
                        id: id.clone(),
                        tx,
                        file,
                        reject_when_full,
                        metrics: node_metrics,
                    });
                    outputs.push(BuiltOutput {
                        id,
                        kind,
                        settings,
                        source,
                        flow: flow_idx,
                        secondary,
                        site,
                        secondary_index: None,
                    });
                    outs.push(idx);
                }
                match_sets.push(set);
                match_outputs.push(Arc::from(outs));
            }
            let matches = MatchTable::new(match_sets);
            for (shadowed, by) in matches.shadowed() {
                warnings.push(SpecError {
                    severity: Severity::Warning,
                    code: "W-shadowed",
                    site: Site::Match { label, index: shadowed },
                    focus: Focus::Block,
                    message: format!(
                        "this match block never receives events: the earlier block with {} catches every tag it would",
                        matches.sets()[by]
                    ),
                    notes: vec!["match blocks are tried in file order and the first that matches wins".into()],
                });
            }
            flows.push(Flow {
                name: label.map(|i| spec.labels[i].name.clone()),
                filters,
                filter_table: MatchTable::new(filter_sets),
                matches,
                match_outputs,
            });
        }

        // `secondary` names another output by id.
        let secondaries = resolve_secondaries(&outputs);
        let secondaries = match secondaries {
            Ok(s) => s,
            Err(mut e) => {
                b.errors.append(&mut e);
                Vec::new()
            }
        };
        // Two file buffers in one directory would fight over its lock.
        let mut dirs: HashMap<&std::path::Path, &str> = HashMap::new();
        for slot in &senders {
            if let Some(q) = &slot.file {
                if let Some(other) = dirs.insert(&q.config.dir, &slot.id) {
                    b.errors.push(
                        SpecError::error(
                            Site::Pipeline,
                            Focus::Block,
                            format!(
                                "outputs `{other}` and `{}` both keep their file buffer in {}; give each its own `path`",
                                slot.id,
                                q.config.dir.display()
                            ),
                        )
                        .code("E-buffer"),
                    );
                }
            }
        }

        if !b.errors.is_empty() {
            return Err(b.errors);
        }

        // Which outputs can feed which: relabel → that label's outputs; any
        // output outside `errors` → the outputs of `errors`.
        for &(from, target) in &relabel_targets {
            for (to, o) in outputs.iter().enumerate() {
                if o.flow == target {
                    feeds.push((from, to));
                }
            }
        }
        if let Some(ef) = errors_flow {
            for (from, o) in outputs.iter().enumerate() {
                if o.flow != ef {
                    for (to, t) in outputs.iter().enumerate() {
                        if t.flow == ef {
                            feeds.push((from, to));
                        }
                    }
                }
            }
        }
        for (from, to) in secondaries.iter().enumerate() {
            if let Some(to) = *to {
                feeds.push((from, to));
            }
        }
        let close_order = match topo_order(outputs.len(), &feeds) {
            Ok(order) => order,
            Err(cycle) => {
                let names: Vec<&str> = cycle.iter().map(|&i| &*outputs[i].id).collect();
                return Err(vec![SpecError::error(
                    Site::Pipeline,
                    Focus::Block,
                    format!(
                        "events could loop forever: {} → {}",
                        names.join(" → "),
                        names[0]
                    ),
                )
                .code("E-cycle")]);
            }
        };

        for (o, sec) in outputs.iter_mut().zip(&secondaries) {
            o.secondary_index = *sec;
        }
        let shared = Arc::new(Shared {
            flows,
            outputs: senders,
            errors_flow,
            metrics,
            unmatched_seen: Mutex::new(HashSet::new()),
        });
        let ids = NodeIds { ids: b.ids };
        Ok((
            Pipeline {
                shared,
                inputs,
                outputs,
                close_order,
                warnings,
                options,
            },
            ids,
        ))
    }

    /// Things that work but are probably not meant (shadowed match blocks).
    pub fn warnings(&self) -> &[SpecError] {
        &self.warnings
    }

    /// Opens every file buffer now, so that `ulog run` can refuse to start
    /// with a clear error (a directory it cannot write, a buffer another ulog
    /// holds) instead of refusing events later. Returns, per file-buffered
    /// output, its id and the chunks and bytes left from the last run that it
    /// will deliver first. [`Pipeline::start`] opens any not opened yet.
    ///
    /// # Errors
    /// One message per buffer that cannot be opened.
    pub fn open_buffers(&self) -> Result<Vec<(String, usize, u64)>, Vec<String>> {
        let mut opened = Vec::new();
        let mut errors = Vec::new();
        for slot in &self.shared.outputs {
            if let Some(q) = &slot.file {
                match q.open() {
                    Ok((chunks, bytes)) => opened.push((slot.id.to_string(), chunks, bytes)),
                    Err(e) => errors.push(format!("output `{}`: {e}", slot.id)),
                }
            }
        }
        if errors.is_empty() {
            Ok(opened)
        } else {
            Err(errors)
        }
    }

    /// Starts every node on the current Tokio runtime.
    pub fn start(self) -> Running {
        let shutdown = CancellationToken::new();
        let shared = self.shared.clone();
        let emitter_for = |flow: usize, source: Option<Arc<NodeMetrics>>| Emitter {
            shared: shared.clone(),
            flow,
            caches: HashMap::new(),
            source,
            id_key: None,
        };

        for slot in &shared.outputs {
            if let Some(q) = &slot.file {
                if let Err(e) = q.open() {
                    error!(output = %slot.id, error = %e, "the output's buffer cannot be opened: events for it are refused");
                    slot.metrics.set_failure(e);
                }
            }
        }
        let mut output_tasks = Vec::new();
        for (idx, o) in self.outputs.into_iter().enumerate() {
            let errors = ErrorsRoute {
                emitter: emitter_for(o.flow, None),
                from_flow: o.flow,
                secondary: o.secondary_index,
            };
            let metrics = shared.outputs[idx].metrics.clone();
            let output: Box<dyn Output> = match o.kind {
                OutputKind::Plugin(output) => output,
                OutputKind::Relabel(flow) => Box::new(RelabelOutput {
                    emitter: emitter_for(flow, None),
                }),
            };
            let task = tokio::spawn(run_output(
                o.id.clone(),
                output,
                o.source,
                o.settings,
                errors,
                metrics,
            ));
            output_tasks.push(Some(task));
        }

        let mut input_tasks = Vec::new();
        for i in self.inputs {
            let source = shared
                .metrics
                .nodes
                .iter()
                .find(|(id, kind, _)| *id == i.id && *kind == PluginKind::Input)
                .map(|(_, _, m)| m.clone());
            let mut emitter = emitter_for(i.flow, source);
            emitter.id_key = i.id_key.clone();
            let ctx = InputContext {
                id: i.id.clone(),
                emitter,
                shutdown: shutdown.child_token(),
            };
            let id = i.id.clone();
            let health = ctx.emitter.source.clone();
            input_tasks.push(tokio::spawn(async move {
                debug!(input = %id, "input started");
                match i.input.run(ctx).await {
                    Ok(()) => debug!(input = %id, "input stopped"),
                    Err(e) => {
                        error!(input = %id, error = %e, "input failed");
                        if let Some(m) = health {
                            m.set_failure(format!("input failed: {e}"));
                        }
                    }
                }
            }));
        }

        let root = emitter_for(0, None);
        let supervisor = tokio::spawn(supervise(
            shared.clone(),
            shutdown.clone(),
            input_tasks,
            output_tasks,
            self.close_order,
            self.options.shutdown_timeout,
        ));
        Running {
            shared,
            shutdown,
            supervisor,
            root,
        }
    }
}

/// Orders outputs so that every output comes after all that feed it.
fn topo_order(n: usize, edges: &[(usize, usize)]) -> Result<Vec<usize>, Vec<usize>> {
    let mut indegree = vec![0usize; n];
    let mut next: Vec<Vec<usize>> = vec![Vec::new(); n];
    for &(a, b) in edges {
        indegree[b] += 1;
        next[a].push(b);
    }
    let mut ready: Vec<usize> = (0..n).filter(|&i| indegree[i] == 0).rev().collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop() {
        order.push(i);
        for &j in &next[i] {
            indegree[j] -= 1;
            if indegree[j] == 0 {
                ready.push(j);
            }
        }
    }
    if order.len() == n {
        return Ok(order);
    }
    // Walk from any node left over to name one cycle.
    let start = (0..n).find(|&i| indegree[i] > 0).unwrap_or(0);
    let mut path = vec![start];
    let mut cur = start;
    loop {
        let Some(&nxt) = next[cur].iter().find(|&&j| indegree[j] > 0) else {
            return Err(path);
        };
        if let Some(pos) = path.iter().position(|&p| p == nxt) {
            return Err(path[pos..].to_vec());
        }
        path.push(nxt);
        cur = nxt;
    }
}

/// What happened during a run, returned when it ends.
#[derive(Clone, Debug, Default)]
pub struct RunReport {
    /// Counters at the end.
    pub metrics: MetricsSnapshot,
    /// Events still queued in memory when the shutdown timeout ran out.
    pub lost: u64,
    /// Events left in file buffers, delivered after the next start.
    pub left_buffered: u64,
}

/// A started pipeline.
pub struct Running {
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    supervisor: JoinHandle<RunReport>,
    root: Emitter,
}

impl Running {
    /// An emitter into the top-level flow, for embedders that produce events
    /// themselves.
    pub fn emitter(&self) -> Emitter {
        self.root.clone()
    }

    /// Current counters.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.shared.metrics.snapshot()
    }

    /// A function that reads the current counters, for servers (the `--api`
    /// endpoint) that outlive this handle's borrow.
    pub fn metrics_source(&self) -> Arc<dyn Fn() -> MetricsSnapshot + Send + Sync> {
        let shared = self.shared.clone();
        Arc::new(move || shared.metrics.snapshot())
    }

    /// Begins a clean stop: inputs stop, queues drain, outputs flush.
    pub fn stop(&self) {
        self.shutdown.cancel();
    }

    /// A token that stops the pipeline when cancelled (wire it to signals).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits for the pipeline to end: after [`Running::stop`], or when every
    /// input has finished by itself (stdin at EOF).
    pub async fn wait(self) -> RunReport {
        drop(self.root);
        match self.supervisor.await {
            Ok(report) => report,
            Err(e) => {
                error!(error = %e, "pipeline supervisor failed");
                RunReport::default()
            }
        }
    }
}

async fn supervise(
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    inputs: Vec<JoinHandle<()>>,
    mut outputs: Vec<Option<JoinHandle<()>>>,
    close_order: Vec<usize>,
    timeout: Duration,
) -> RunReport {
    let mut inputs = inputs;
    if !inputs.is_empty() {
        // Run until told to stop or until every input has ended by itself.
        let all_done = async {
            for h in inputs.iter_mut() {
                let _ = h.await;
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = all_done => { debug!("every input has finished"); }
        }
    } else {
        shutdown.cancelled().await;
    }
    shutdown.cancel();
    info!("stopping: inputs finish, queues drain, outputs flush");
    let deadline = tokio::time::Instant::now() + timeout;
    for h in inputs.iter_mut() {
        if !h.is_finished() && tokio::time::timeout_at(deadline, &mut *h).await.is_err() {
            warn!("an input did not stop in time; aborting it");
            h.abort();
        }
    }
    let mut lost = 0;
    let mut left_buffered = 0;
    for idx in close_order {
        let slot = &shared.outputs[idx];
        let Some(mut task) = outputs[idx].take() else {
            continue;
        };
        let closed = match &slot.file {
            Some(q) => {
                q.close();
                true
            }
            None => tokio::time::timeout_at(deadline, slot.tx.send(OutMsg::Close))
                .await
                .is_ok(),
        };
        let finished = closed && tokio::time::timeout_at(deadline, &mut task).await.is_ok();
        if !finished {
            task.abort();
            let _ = task.await;
        }
        if let Some(q) = &slot.file {
            let (chunks, _) = q.queued();
            let events = slot
                .metrics
                .queued
                .load(std::sync::atomic::Ordering::Relaxed);
            if chunks > 0 {
                left_buffered += events;
                info!(output = %slot.id, chunks, events, dir = %q.config.dir.display(), "left in the file buffer for the next start");
            }
            if let Err(e) = q.release() {
                error!(output = %slot.id, error = %e, "final sync of the file buffer failed");
            }
        } else if !finished {
            let queued = slot
                .metrics
                .queued
                .load(std::sync::atomic::Ordering::Relaxed);
            lost += queued;
            error!(output = %slot.id, events = queued, "output did not finish before the shutdown timeout; its queued events are lost");
        }
    }
    let metrics = shared.metrics.snapshot();
    RunReport {
        metrics,
        lost,
        left_buffered,
    }
}

/// Where an output sends the events it could not deliver: its `secondary`
/// output if it has one (for events it gave up retrying), and the `errors`
/// label (unless the output is itself inside it).
struct ErrorsRoute {
    emitter: Emitter,
    from_flow: usize,
    secondary: Option<usize>,
}

struct RelabelOutput {
    emitter: Emitter,
}

#[async_trait::async_trait]
impl Output for RelabelOutput {
    async fn write(&mut self, batch: &Batch) -> Delivery {
        match self.emitter.emit(batch.clone()).await {
            Ok(()) => Delivery::Delivered,
            Err(e) => Delivery::Retry(crate::plugin::PluginError::with_source("relabel", e)),
        }
    }
}

/// One batch from an output's buffer, with the chunks to confirm once it is
/// dealt with (file buffers).
struct Work {
    batch: SharedBatch,
    chunks: Vec<ulog_buffer::ChunkId>,
    /// Events of it counted in the `queued` metric.
    counted: usize,
}

impl Source {
    /// The next batch; `None` when the output is to stop.
    async fn next(&mut self) -> Option<Work> {
        match self {
            Source::Memory(rx) => match rx.recv().await {
                None | Some(OutMsg::Close) => None,
                Some(OutMsg::Batch(batch)) => Some(Work {
                    counted: batch.len(),
                    batch,
                    chunks: Vec::new(),
                }),
            },
            Source::File(q) => q.next().await.map(|t| Work {
                batch: t.batch,
                chunks: t.chunks,
                counted: t.counted,
            }),
        }
    }
}

async fn run_output(
    id: Arc<str>,
    mut output: Box<dyn Output>,
    mut source: Source,
    settings: DeliverySettings,
    mut errors: ErrorsRoute,
    metrics: Arc<NodeMetrics>,
) {
    let queue = match &source {
        Source::File(q) => Some(q.clone()),
        Source::Memory(_) => None,
    };
    // An output that buffers internally (it has a flush interval) has its
    // chunks confirmed only after the flush that writes them out.
    let buffers_internally = output.flush_interval().is_some();
    let mut unflushed: Vec<ulog_buffer::ChunkId> = Vec::new();
    let mut unflushed_events = 0usize;
    let mut ticker = output.flush_interval().map(|d| {
        let mut t = tokio::time::interval(d.max(Duration::from_millis(1)));
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    loop {
        let work = match &mut ticker {
            Some(t) => tokio::select! {
                w = source.next() => w,
                _ = t.tick() => {
                    match output.flush().await {
                        Ok(()) => {
                            if let Some(q) = &queue {
                                q.confirm(&unflushed);
                            }
                            unflushed.clear();
                            NodeMetrics::sub(&metrics.queued, unflushed_events);
                            unflushed_events = 0;
                        }
                        Err(e) => warn!(output = %id, error = %e, "flush failed"),
                    }
                    continue;
                }
            },
            None => source.next().await,
        };
        let Some(work) = work else { break };
        NodeMetrics::add(&metrics.events_in, work.batch.len());
        let n = work.counted;
        let outcome = deliver(
            &id,
            &mut *output,
            work.batch,
            &settings,
            &mut errors,
            &metrics,
            queue.as_deref(),
        )
        .await;
        match outcome {
            Outcome::Done if buffers_internally && queue.is_some() => {
                unflushed.extend(work.chunks);
                unflushed_events += n;
            }
            Outcome::Done => {
                if let Some(q) = &queue {
                    q.confirm(&work.chunks);
                }
                NodeMetrics::sub(&metrics.queued, n);
            }
            // Stopping while the destination is failing: the chunks stay in
            // the file buffer and are delivered after the next start.
            Outcome::LeftInBuffer => break,
        }
    }
    match output.flush().await {
        Ok(()) => {
            if let Some(q) = &queue {
                q.confirm(&unflushed);
            }
            NodeMetrics::sub(&metrics.queued, unflushed_events);
        }
        Err(e) => error!(output = %id, error = %e, "final flush failed"),
    }
    if let Err(e) = output.shutdown().await {
        error!(output = %id, error = %e, "shutdown failed");
    }
    debug!(output = %id, "output stopped");
}

/// Events that failed for good: index in the batch and the reason.
type Failed = (usize, String);
/// Events to retry: their indices and the last reason.
type RetryItems = (Vec<usize>, String);

/// How [`deliver`] ended.
enum Outcome {
    /// Every event was written, or sent to `errors` or the secondary.
    Done,
    /// ulog is stopping and the destination still fails: the batch stays in
    /// the file buffer.
    LeftInBuffer,
}

async fn deliver(
    id: &Arc<str>,
    output: &mut dyn Output,
    batch: SharedBatch,
    settings: &DeliverySettings,
    errors: &mut ErrorsRoute,
    metrics: &NodeMetrics,
    file: Option<&FileQueue>,
) -> Outcome {
    let mut current = batch;
    let mut attempt: u64 = 0;
    let mut wait = settings.retry_wait;
    let started = tokio::time::Instant::now();
    loop {
        attempt += 1;
        let outcome = output.write(&current).await;
        let (failed, retry): (Vec<Failed>, Option<RetryItems>) = match outcome {
            Delivery::Delivered => {
                NodeMetrics::add(&metrics.events_out, current.len());
                return Outcome::Done;
            }
            Delivery::Rejected(e) => (
                (0..current.len()).map(|i| (i, e.to_string())).collect(),
                None,
            ),
            Delivery::Retry(e) => (
                Vec::new(),
                Some(((0..current.len()).collect(), e.to_string())),
            ),
            Delivery::Partial(items) => {
                let mut failed = Vec::new();
                let mut again = Vec::new();
                let mut reason = String::new();
                for it in items {
                    if it.index >= current.len() {
                        continue;
                    }
                    if it.retryable {
                        reason = it.error.to_string();
                        again.push(it.index);
                    } else {
                        failed.push((it.index, it.error.to_string()));
                    }
                }
                let done = current.len() - failed.len() - again.len();
                NodeMetrics::add(&metrics.events_out, done);
                (failed, (!again.is_empty()).then_some((again, reason)))
            }
        };
        let mut failed = failed;
        let mut gave_up = Vec::new();
        let mut next = None;
        if let Some((indices, reason)) = retry {
            let out_of_attempts =
                settings.retry_max_attempts > 0 && attempt >= settings.retry_max_attempts;
            let out_of_time = settings
                .retry_timeout
                .is_some_and(|t| started.elapsed() + wait > t);
            if out_of_attempts || out_of_time {
                let why = if out_of_attempts {
                    format!("gave up after {attempt} attempts: {reason}")
                } else {
                    format!(
                        "gave up after retrying for {:?} ({attempt} attempts): {reason}",
                        started.elapsed()
                    )
                };
                warn!(output = %id, attempts = attempt, error = %reason, events = indices.len(), secondary = errors.secondary.is_some(), "giving up on a batch after its last retry");
                gave_up = indices.into_iter().map(|i| (i, why.clone())).collect();
            } else if file.is_some_and(FileQueue::is_closed) {
                // Already written events of a partial batch may be written
                // again after the restart: at least once.
                warn!(output = %id, events = indices.len(), error = %reason, "stopping while the destination fails; the batch stays in the file buffer");
                return Outcome::LeftInBuffer;
            } else {
                warn!(output = %id, attempt, error = %reason, retry_in = ?wait, events = indices.len(), "write failed; will retry");
                NodeMetrics::add(&metrics.retries, 1);
                next = Some(indices);
            }
        }
        if !gave_up.is_empty() {
            match errors.secondary {
                Some(sec) => {
                    let events = gave_up
                        .iter()
                        .map(|&(i, _)| current.events[i].clone())
                        .collect();
                    let batch = Arc::new(Batch::new(current.tag.clone(), events));
                    let slot = &errors.emitter.shared.outputs[sec];
                    match slot.push(&batch).await {
                        Ok(()) => {
                            info!(output = %id, secondary = %slot.id, events = batch.len(), "handed to the secondary output")
                        }
                        Err(e) => {
                            warn!(output = %id, secondary = %slot.id, error = %e, "the secondary output refused the batch; sending it to errors");
                            failed.append(&mut gave_up);
                        }
                    }
                }
                None => failed.append(&mut gave_up),
            }
        }
        if !failed.is_empty() {
            NodeMetrics::add(&metrics.events_failed, failed.len());
            let rejects: Vec<(Tag, Rejected, Arc<str>)> = failed
                .into_iter()
                .map(|(i, reason)| {
                    (
                        current.tag.clone(),
                        Rejected {
                            event: current.events[i].clone(),
                            reason,
                        },
                        id.clone(),
                    )
                })
                .collect();
            if let Err(e) = errors
                .emitter
                .send_to_errors(rejects, errors.from_flow)
                .await
            {
                error!(output = %id, error = %e, "could not hand rejected events to the errors label");
                if file.is_some() {
                    return Outcome::LeftInBuffer;
                }
            }
        }
        let Some(indices) = next else {
            return Outcome::Done;
        };
        if indices.len() != current.len() {
            let events = indices.iter().map(|&i| current.events[i].clone()).collect();
            current = Arc::new(Batch::new(current.tag.clone(), events));
        }
        match file {
            // Wake early when ulog stops: the batch is safe on disk.
            Some(q) => {
                let sleep = tokio::time::sleep(wait);
                tokio::pin!(sleep);
                loop {
                    tokio::select! {
                        _ = &mut sleep => break,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {
                            if q.is_closed() { break; }
                        }
                    }
                }
            }
            None => tokio::time::sleep(wait).await,
        }
        wait = jittered((wait * 2).min(settings.retry_max_wait));
    }
}

/// `wait` give or take up to a fifth, so that outputs (or ulog hosts) that
/// failed together do not all retry in the same instant.
fn jittered(wait: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    // A factor in [0.8, 1.2).
    let factor = 0.8 + (h.finish() % 4000) as f64 / 10_000.0;
    wait.mul_f64(factor)
}

/// Sets the id of each event that carries the field `key`: a UUID in text
/// is taken as it is, any other value is hashed (128-bit FNV-1a of its JSON
/// text, with the UUIDv8 version bits) — the same value always gives the
/// same id, so a resend is recognised downstream.
fn ids_from_field(batch: &mut Batch, key: &str) {
    for e in batch.events.iter_mut().filter(|e| !e.id.is_some()) {
        let Some(v) = e.record.get(key) else { continue };
        e.id = match v {
            serde_json::Value::String(s) => parse_uuid(s)
                .unwrap_or_else(|| crate::event::EventId::from_u128(id_hash(s.as_bytes()))),
            serde_json::Value::Null => continue,
            other => crate::event::EventId::from_u128(id_hash(other.to_string().as_bytes())),
        };
    }
}

/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` as an id (not the nil UUID).
fn parse_uuid(s: &str) -> Option<crate::event::EventId> {
    let b = s.as_bytes();
    if b.len() != 36 || [8, 13, 18, 23].iter().any(|&i| b[i] != b'-') {
        return None;
    }
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    let bits = u128::from_str_radix(&hex, 16).ok()?;
    (bits != 0).then(|| crate::event::EventId::from_u128(bits))
}

/// 128-bit FNV-1a, stamped as a UUIDv8 (RFC 9562: version 8, variant 10).
fn id_hash(bytes: &[u8]) -> u128 {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013B;
    let mut h = OFFSET;
    for &b in bytes {
        h ^= u128::from(b);
        h = h.wrapping_mul(PRIME);
    }
    (h & !(0xf << 76) & !(0b11 << 62)) | (0x8 << 76) | (0b10 << 62)
}

/// Gives every event of an accepted batch that has none its stable id.
fn assign_ids(batch: &mut Batch) {
    let missing = batch.events.iter().filter(|e| !e.id.is_some()).count();
    if missing == 0 {
        return;
    }
    let mut ids = crate::event::EventId::fresh(missing);
    for e in batch.events.iter_mut().filter(|e| !e.id.is_some()) {
        e.id = ids.next().unwrap_or_default();
    }
}

/// Looks up a parameter value in a spec node (for tools that inspect specs).
pub fn spec_param<'a>(node: &'a NodeSpec, name: &str) -> Option<&'a Value> {
    node.params.iter().find(|(k, _)| k == name).map(|(_, v)| v)
}
