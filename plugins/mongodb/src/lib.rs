//! MongoDB for ulog: `output mongodb`, on the official driver.
//!
//! Household readings end up in MongoDB (or a server speaking its wire
//! protocol, such as FerretDB) for the apps to query. The output writes
//! idempotently — the event id is the document's `_id` — so the engine's
//! retries and buffer replays never store an event twice, and maps the
//! server's per-document answers onto the engine's delivery model.
//! `docs/plugins/mongodb.md` is the user reference.
#![deny(missing_docs)]

use ulog_engine::Registry;

mod collection;
mod encode;
mod errors;
pub mod out_mongodb;
mod setup;

/// Registers `output mongodb`.
pub fn register(registry: &mut Registry) {
    out_mongodb::register(registry);
}
