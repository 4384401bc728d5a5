//! The plugin registry: type names → documented factories.
//!
//! Built-in plugins, out-of-tree plugin crates and embedders all register the
//! same way, with one call per plugin.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::params::{BuildError, ParamKind, ParamSpec, Params, PluginKind, PluginSpec, Value};
use crate::plugin::{Filter, Input, Output};

/// What a factory knows besides its parameters.
#[derive(Clone, Debug)]
pub struct BuildContext {
    /// The node id being built.
    pub id: String,
    /// The directory of the routes file, to resolve relative paths against.
    pub base_dir: PathBuf,
}

impl BuildContext {
    /// `path` made absolute against the routes file's directory.
    pub fn resolve(&self, path: &str) -> PathBuf {
        let p = PathBuf::from(path);
        if p.is_absolute() {
            p
        } else {
            self.base_dir.join(p)
        }
    }
}

type Factory<T> = Arc<dyn Fn(&Params, &BuildContext) -> Result<T, BuildError> + Send + Sync>;

/// Builds an input from its parameters.
pub type InputFactory = Factory<Box<dyn Input>>;
/// Builds a filter from its parameters.
pub type FilterFactory = Factory<Arc<dyn Filter>>;
/// Builds an output from its parameters.
pub type OutputFactory = Factory<Box<dyn Output>>;

#[derive(Clone)]
pub(crate) enum AnyFactory {
    Input(InputFactory),
    Filter(FilterFactory),
    Output(OutputFactory),
    /// Built by the engine itself (`relabel`).
    Builtin,
}

#[derive(Clone)]
pub(crate) struct Entry {
    pub spec: Arc<PluginSpec>,
    pub factory: AnyFactory,
}

/// Maps plugin type names to their specs and factories.
#[derive(Clone)]
pub struct Registry {
    entries: BTreeMap<(PluginKind, &'static str), Entry>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

/// Defaults of the delivery parameters every output has.
pub mod output_defaults {
    use std::time::Duration;
    /// First wait before retrying a failed batch.
    pub const RETRY_WAIT: Duration = Duration::from_secs(1);
    /// Longest wait between retries.
    pub const RETRY_MAX_WAIT: Duration = Duration::from_secs(30);
    /// Batches queued in front of an output before inputs are slowed down.
    pub const QUEUE_BATCHES: i64 = 16;
}

impl Registry {
    /// A registry holding only the engine's own `relabel` output.
    pub fn new() -> Self {
        let mut r = Self {
            entries: BTreeMap::new(),
        };
        let relabel = PluginSpec::new(
            PluginKind::Output,
            "relabel",
            "Sends events on into a named label's flow, like fluentd's relabel.",
        )
        .param(ParamSpec::required(
            "label",
            ParamKind::Str,
            "The label whose filters and matches receive the events.",
        ));
        r.insert(relabel, AnyFactory::Builtin);
        r
    }

    fn insert(&mut self, mut spec: PluginSpec, factory: AnyFactory) {
        spec.params.insert(
            0,
            ParamSpec::optional(
                "id",
                ParamKind::Str,
                "A name for this node in logs, metrics and `ulog graph` (default `<type>#<n>`).",
            ),
        );
        match spec.kind {
            PluginKind::Input => {
                spec.params.push(ParamSpec::optional(
                    "label",
                    ParamKind::Str,
                    "Send this input's events to the named label instead of the top-level flow.",
                ));
                spec.params.push(ParamSpec::optional(
                    "id_key",
                    ParamKind::Str,
                    "Take each event's stable id from this record field (a UUID as it is, any other value hashed), so a sender's resend keeps its id and idempotent outputs (mongodb, elasticsearch) store it once; events without the field get a fresh id.",
                ));
            }
            PluginKind::Output => {
                spec.params.push(ParamSpec::with_default(
                    "retry_wait",
                    ParamKind::Duration,
                    output_defaults::RETRY_WAIT,
                    "First wait before retrying a batch the destination could not take; doubles each time.",
                ));
                spec.params.push(ParamSpec::with_default(
                    "retry_max_wait",
                    ParamKind::Duration,
                    output_defaults::RETRY_MAX_WAIT,
                    "Longest wait between two retries.",
                ));
                spec.params.push(ParamSpec::with_default(
                    "retry_max_attempts",
                    ParamKind::Int,
                    0,
                    "Attempts before a batch goes to the `errors` label; 0 retries until ulog stops.",
                ));
                spec.params.push(ParamSpec::optional(
                    "retry_timeout",
                    ParamKind::Duration,
                    "Longest time to keep retrying a batch; then it goes to `secondary` or the `errors` label (unset: no limit).",
                ));
                spec.params.push(ParamSpec::optional(
                    "secondary",
                    ParamKind::Str,
                    "Id of another output that takes the events this one gave up on (after `retry_max_attempts` or `retry_timeout`); without it they go to the `errors` label.",
                ));
                spec.params.push(ParamSpec::with_default(
                    "buffer",
                    ParamKind::Map,
                    Value::Map(Vec::new()),
                    "Where events wait for this output: `{ type = \"memory\" }` (default) or `{ type = \"file\", path = \"...\" }`, which survives a crash; keys in docs/buffer.md.",
                ));
                spec.params.push(ParamSpec::with_default(
                    "queue_batches",
                    ParamKind::Int,
                    output_defaults::QUEUE_BATCHES,
                    "Batches queued in front of this output; when full, inputs wait (backpressure).",
                ));
            }
            PluginKind::Filter => {}
        }
        self.entries.insert(
            (spec.kind, spec.name),
            Entry {
                spec: Arc::new(spec),
                factory,
            },
        );
    }

    /// Registers an input type. `spec.kind` must be [`PluginKind::Input`].
    pub fn add_input(
        &mut self,
        spec: PluginSpec,
        factory: impl Fn(&Params, &BuildContext) -> Result<Box<dyn Input>, BuildError>
            + Send
            + Sync
            + 'static,
    ) {
        assert_eq!(
            spec.kind,
            PluginKind::Input,
            "{} is not an input spec",
            spec.name
        );
        self.insert(spec, AnyFactory::Input(Arc::new(factory)));
    }

    /// Registers a filter type. `spec.kind` must be [`PluginKind::Filter`].
    pub fn add_filter(
        &mut self,
        spec: PluginSpec,
        factory: impl Fn(&Params, &BuildContext) -> Result<Arc<dyn Filter>, BuildError>
            + Send
            + Sync
            + 'static,
    ) {
        assert_eq!(
            spec.kind,
            PluginKind::Filter,
            "{} is not a filter spec",
            spec.name
        );
        self.insert(spec, AnyFactory::Filter(Arc::new(factory)));
    }

    /// Registers an output type. `spec.kind` must be [`PluginKind::Output`].
    pub fn add_output(
        &mut self,
        spec: PluginSpec,
        factory: impl Fn(&Params, &BuildContext) -> Result<Box<dyn Output>, BuildError>
            + Send
            + Sync
            + 'static,
    ) {
        assert_eq!(
            spec.kind,
            PluginKind::Output,
            "{} is not an output spec",
            spec.name
        );
        self.insert(spec, AnyFactory::Output(Arc::new(factory)));
    }

    /// The spec of a plugin type, with the engine's common parameters.
    pub fn spec(&self, kind: PluginKind, name: &str) -> Option<&PluginSpec> {
        self.entry(kind, name).map(|e| &*e.spec)
    }

    pub(crate) fn entry(&self, kind: PluginKind, name: &str) -> Option<&Entry> {
        self.entries
            .iter()
            .find(|((k, n), _)| *k == kind && *n == name)
            .map(|(_, e)| e)
    }

    /// Every registered type name of a kind, sorted.
    pub fn names(&self, kind: PluginKind) -> Vec<&'static str> {
        self.entries
            .keys()
            .filter(|(k, _)| *k == kind)
            .map(|(_, n)| *n)
            .collect()
    }

    /// Every spec, sorted by kind then name (drives the reference docs).
    pub fn specs(&self) -> impl Iterator<Item = &PluginSpec> {
        self.entries.values().map(|e| &*e.spec)
    }
}

/// The retry and queue settings the engine reads from every output's params.
#[derive(Clone, Debug)]
pub(crate) struct DeliverySettings {
    pub retry_wait: Duration,
    pub retry_max_wait: Duration,
    pub retry_max_attempts: u64,
    pub retry_timeout: Option<Duration>,
    pub queue_batches: usize,
}

impl DeliverySettings {
    pub fn from_params(p: &Params) -> Result<Self, BuildError> {
        let attempts = p.int("retry_max_attempts")?;
        let queue = p.int("queue_batches")?;
        if queue < 1 {
            return Err(BuildError::param("queue_batches", "must be at least 1"));
        }
        Ok(Self {
            retry_wait: p.duration("retry_wait")?,
            retry_max_wait: p.duration("retry_max_wait")?,
            retry_max_attempts: u64::try_from(attempts)
                .map_err(|_| BuildError::param("retry_max_attempts", "must not be negative"))?,
            retry_timeout: p.opt_duration("retry_timeout")?.filter(|d| !d.is_zero()),
            queue_batches: queue as usize,
        })
    }
}
