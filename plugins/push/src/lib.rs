//! Push back to households: outputs for the mobile push gateways (APNs,
//! FCM, WNS) and for households without the vendor apps (webhook, ntfy),
//! all addressed through one device registry.
//!
//! An event names its household in one field; each output looks up that
//! household's devices on its own platform in the [`registry`] and sends one
//! notification per device, many in flight at once. The registry, not the
//! event, decides where a notification goes, which is what keeps one
//! household's events away from another's phones (see [`registry`] for the
//! argument). `docs/plugins/push.md` is the user reference.
#![deny(missing_docs)]

use ulog_engine::Registry;

mod client;
pub mod fanout;
mod oauth;
pub mod out_apns;
pub mod out_fcm;
pub mod out_ntfy;
pub mod out_webhook;
pub mod out_wns;
pub mod registry;

/// Registers `output apns`, `output fcm`, `output wns`, `output webhook`
/// and `output ntfy`.
pub fn register(registry: &mut Registry) {
    out_apns::register(registry);
    out_fcm::register(registry);
    out_wns::register(registry);
    out_webhook::register(registry);
    out_ntfy::register(registry);
}
