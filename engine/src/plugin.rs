//! The three plugin traits and what the engine hands them.
//!
//! - An [`Input`] runs as its own task and pushes batches into the pipeline
//!   through an [`Emitter`]; `emit` returns once the pipeline has accepted the
//!   batch, which is when an input may acknowledge its sender.
//! - A [`Filter`] runs inline on the emitting task, so it costs no channel hop;
//!   it may change events, drop them, or reject them to the `errors` label.
//! - An [`Output`] runs as its own task behind a bounded queue and answers each
//!   batch with a [`Delivery`]: the engine retries, reroutes or counts.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::event::{Batch, Event};
use crate::runtime::Emitter;

/// A failure inside a plugin, with enough context to act on it.
#[derive(Debug)]
pub struct PluginError {
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl PluginError {
    /// An error with a message.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            source: None,
        }
    }

    /// An error caused by `source`, described by `context`
    /// (for example "connecting to 127.0.0.1:24224").
    pub fn with_source(
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            message: context.into(),
            source: Some(Box::new(source)),
        }
    }
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(src) = &self.source {
            write!(f, ": {src}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PluginError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<std::io::Error> for PluginError {
    fn from(e: std::io::Error) -> Self {
        Self::with_source("I/O error", e)
    }
}

/// What an input gets to do its work.
pub struct InputContext {
    /// The node id (`phones`, `http#1`), for logs.
    pub id: Arc<str>,
    /// Sends batches into the pipeline; clone it for each connection.
    pub emitter: Emitter,
    /// Cancelled when ulog stops: stop accepting, emit what was read, return.
    pub shutdown: CancellationToken,
}

/// A source of events.
#[async_trait]
pub trait Input: Send + 'static {
    /// Reads events and emits them until `ctx.shutdown` is cancelled or the
    /// source ends (stdin reaching EOF). Returning `Err` stops only this
    /// input; the error is logged with the node id.
    async fn run(self: Box<Self>, ctx: InputContext) -> Result<(), PluginError>;
}

/// An event a filter or output refused, and why: it goes to the `errors`
/// label when there is one.
#[derive(Debug, Clone)]
pub struct Rejected {
    /// The event as it was.
    pub event: Event,
    /// Why it was refused.
    pub reason: String,
}

/// A step that transforms events on their way to outputs.
#[async_trait]
pub trait Filter: Send + Sync + 'static {
    /// Transforms `batch` in place. Events may be changed or removed; events
    /// that cannot be processed go to `rejects`. Changing `batch.tag` routes
    /// the batch again from the top of its flow.
    ///
    /// # Errors
    /// An `Err` rejects the whole batch with the error as the reason.
    async fn filter(
        &self,
        batch: &mut Batch,
        rejects: &mut Vec<Rejected>,
    ) -> Result<(), PluginError>;

    /// Like [`Filter::filter`], for filters that move some events to other
    /// tags (`rewrite_tag`): the batches returned carry new tags and are
    /// routed again from the top of the flow, each counted against the
    /// reroute limit like a changed `batch.tag`. A returned batch whose tag
    /// is the batch's own goes back into it. The default runs
    /// [`Filter::filter`] and splits nothing off.
    ///
    /// # Errors
    /// As [`Filter::filter`]; the batches split off before the error are
    /// lost with it, so return them only once nothing can fail.
    async fn filter_split(
        &self,
        batch: &mut Batch,
        rejects: &mut Vec<Rejected>,
    ) -> Result<Vec<Batch>, PluginError> {
        self.filter(batch, rejects).await?;
        Ok(Vec::new())
    }

    /// Whether each event's result depends only on that event (no state
    /// carried from one event to the next). When true for every filter a
    /// large batch passes through, the engine cuts it into chunks and filters
    /// them on several cores at once. Stateful filters (counters, sessions,
    /// per-household rules) keep the default, `false`, and see events in order.
    fn order_independent(&self) -> bool {
        false
    }
}

/// How an output fared with one batch.
#[derive(Debug)]
pub enum Delivery {
    /// Every event is written.
    Delivered,
    /// Nothing is written, but trying again later may work (timeout, 5xx,
    /// connection refused).
    Retry(PluginError),
    /// Nothing is written and retrying will not help (the destination refused
    /// the data itself): the batch goes to the `errors` label.
    Rejected(PluginError),
    /// Some events failed: each listed by index in the batch. The others are
    /// written.
    Partial(Vec<ItemFailure>),
}

/// One event of a batch that an output could not write.
#[derive(Debug)]
pub struct ItemFailure {
    /// Index of the event in the batch.
    pub index: usize,
    /// Why.
    pub error: PluginError,
    /// Whether retrying this event may work.
    pub retryable: bool,
}

/// A destination for events.
#[async_trait]
pub trait Output: Send + 'static {
    /// Writes one batch. Called with one batch at a time, in order.
    async fn write(&mut self, batch: &Batch) -> Delivery;

    /// Pushes buffered data out. Called every [`Output::flush_interval`] and
    /// before shutdown.
    async fn flush(&mut self) -> Result<(), PluginError> {
        Ok(())
    }

    /// How often [`Output::flush`] should run; `None` when writes are
    /// unbuffered.
    fn flush_interval(&self) -> Option<Duration> {
        None
    }

    /// Releases resources after the last flush.
    async fn shutdown(&mut self) -> Result<(), PluginError> {
        Ok(())
    }
}
