//! (in progress)
use ulog_engine::Registry;

/// Registers this crate's plugins.
pub fn register(_registry: &mut Registry) {}
