//! The ulog engine: events, tag routing, the plugin traits and the runtime
//! that connects inputs, filters and outputs.
//!
//! Start with [`event`] for the data model, [`plugin`] to write a plugin,
//! [`registry`] to make it known, and [`runtime`] to build and run a
//! [`spec::PipelineSpec`] (the `ulog-lang` crate compiles routes files into
//! one).
#![deny(missing_docs)]

pub mod buffer;
pub mod event;
pub mod graph;
pub mod json;
pub mod metrics;
pub mod params;
pub mod pattern;
pub mod plugin;
pub mod registry;
pub mod router;
pub mod runtime;
pub mod spec;
pub mod suggest;
pub mod tag;
pub mod template;

pub use async_trait::async_trait;
pub use event::{Batch, Event, EventId, EventTime, Record};
pub use params::{BuildError, ParamKind, ParamSpec, Params, PluginKind, PluginSpec, Value, Within};
pub use plugin::{
    Delivery, Filter, Input, InputContext, ItemFailure, Output, PluginError, Rejected,
};
pub use registry::{BuildContext, Registry};
pub use runtime::{BuildOptions, EmitError, Emitter, Pipeline, RunReport, Running};
pub use tag::Tag;
pub use tokio_util::sync::CancellationToken;
