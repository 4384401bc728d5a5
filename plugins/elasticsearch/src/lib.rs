//! Elasticsearch and OpenSearch for ulog: `output elasticsearch`.
//!
//! The output writes batches with the `_bulk` API, reads the answer item by
//! item and maps it onto the engine's [`Delivery`](ulog_engine::Delivery):
//! only the documents the cluster refused for a passing reason (429, 5xx)
//! are retried, and the ones it refused for their content (a mapping error)
//! go to the `errors` label with the server's reason.
//!
//! The plugin is split by concern, as a reader would look for things:
//!
//! - [`out_elasticsearch`]: the options, and the `Output` that ties the rest
//!   together (batch → bodies → requests in flight → delivery).
//! - [`encode`]: index names (placeholders and dates) and the NDJSON bodies.
//! - [`response`]: what a `_bulk` answer means for each document.
//! - [`client`]: hosts in turn and dead-host back-off over the official
//!   `elasticsearch` crate (one client per host: TLS, auth, timeouts),
//!   and the gzip of bodies.
//! - [`index_template`]: the index template installed before the first write,
//!   including the built-in one for the trial's data.
#![deny(missing_docs)]

pub mod client;
pub mod encode;
pub mod index_template;
pub mod out_elasticsearch;
pub mod response;

use ulog_engine::Registry;

/// Registers `output elasticsearch`, so `ulog-plugins` can list it with the
/// other built-in plugins and embedders can add it alone.
pub fn register(registry: &mut Registry) {
    out_elasticsearch::register(registry);
}
