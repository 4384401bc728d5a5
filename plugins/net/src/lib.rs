//! Sockets for ulog: the `tcp`, `udp` and `syslog` inputs and the `tcp`
//! output.
//!
//! These are the plugins that talk plain sockets, as opposed to a protocol
//! with its own acknowledgements (`forward`, `http`). They are on the
//! throughput-critical path, so they follow the engine's rules for speed:
//!
//! - **One batch per read.** A connection task reads into a large buffer
//!   (256 KiB), splits it at newlines with `memchr`, and emits everything one
//!   read gave as one batch (one per tag for syslog), with one timestamp.
//! - **No copy of JSON lines.** Each line is a slice of the read buffer
//!   ([`bytes::Bytes::slice`]) kept as a [`ulog_engine::Record::Raw`], so an
//!   output writes the bytes that arrived.
//! - **A task per connection**, so decoding runs on as many cores as there
//!   are clients.
//!
//! Bad input never panics and is never dropped silently: oversized lines and
//! unparsable lines are logged (the first few one by one, then counted) and
//! the counts are logged again when a connection closes and when the input
//! stops.
//!
//! Register the plugins with [`register`]; `docs/plugins/net.md` is the user
//! reference.
#![deny(missing_docs)]

use ulog_engine::Registry;

mod counters;
mod decode;
mod framing;
pub mod in_syslog;
pub mod in_tcp;
pub mod in_udp;
mod listener;
pub mod out_tcp;
mod syslog;

/// Registers `input tcp`, `input udp`, `input syslog` and `output tcp`.
///
/// Called once by `ulog-plugins`' `register_all`; embedders that want only
/// the socket plugins call it on their own registry.
pub fn register(registry: &mut Registry) {
    in_tcp::register(registry);
    in_udp::register(registry);
    in_syslog::register(registry);
    out_tcp::register(registry);
}
