//! ulog's PubNub input and output, over the PubNub SDK (`pubnub` crate)
//! with ulog's own hyper + rustls transport.
//!
//! The SDK is under PubNub's own licence (not OSI-approved); `ulog-plugins`
//! keeps this crate behind its `pubnub` feature, on in the default build.

pub mod client;
pub mod envelope;
pub mod history;
pub mod in_pubnub;
pub mod out_pubnub;
pub mod transport;

/// Registers `input pubnub` and `output pubnub`.
pub fn register(registry: &mut ulog_engine::Registry) {
    in_pubnub::register(registry);
    out_pubnub::register(registry);
}
