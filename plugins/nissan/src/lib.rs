//! Nissan EV telematics for ulog: the battery state of configured Leafs.
//!
//! [`battery`] reads the responses of both Nissan services into one record.
#![deny(missing_docs)]

pub mod battery;
pub mod carwings;
pub mod client;
pub mod in_nissan;
pub mod kamereon;

/// Registers `input nissan`.
pub fn register(registry: &mut ulog_engine::Registry) {
    in_nissan::register(registry);
}
