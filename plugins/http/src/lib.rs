//! HTTP for ulog: the fluentd-compatible `http` input and the `http` output.
//!
//! - [`in_http`]: `POST /<tag>` with JSON, NDJSON, MessagePack or form bodies;
//!   the answer comes only after the pipeline accepted the events.
//! - [`out_http`]: batches sent as NDJSON or a JSON array, gzip optional,
//!   with retries left to the engine.
//!
//! Both use hyper 1 (HTTP/1.1 with keep-alive).
#![deny(missing_docs)]

pub mod in_http;
pub mod out_http;

use ulog_engine::Registry;

/// Registers this crate's plugins.
pub fn register(registry: &mut Registry) {
    in_http::register(registry);
    out_http::register(registry);
}
