//! Every built-in ulog plugin, registered in one ordered list.
//!
//! Each plugin family lives in its own crate under `plugins/` (named after
//! what it talks to) so heavy dependencies stay optional: disable a cargo
//! feature to leave a family out. Out-of-tree plugin crates register the
//! same way, with their own `register` function.
#![deny(missing_docs)]

use ulog_engine::Registry;

/// Registers every built-in plugin enabled at compile time.
pub fn register_all(registry: &mut Registry) {
    ulog_plugins_basic::register(registry);
    ulog_parsers::register(registry);
    #[cfg(feature = "http")]
    ulog_plugins_http::register(registry);
    #[cfg(feature = "forward")]
    ulog_plugins_forward::register(registry);
    #[cfg(feature = "tail")]
    ulog_plugins_tail::register(registry);
    #[cfg(feature = "net")]
    ulog_plugins_net::register(registry);
    #[cfg(feature = "owl")]
    ulog_plugins_owl::register(registry);
    #[cfg(feature = "mqtt")]
    ulog_plugins_mqtt::register(registry);
    #[cfg(feature = "nissan")]
    ulog_plugins_nissan::register(registry);
    #[cfg(feature = "pubnub")]
    ulog_plugins_pubnub::register(registry);
    #[cfg(feature = "elasticsearch")]
    ulog_plugins_elasticsearch::register(registry);
    #[cfg(feature = "mongodb")]
    ulog_plugins_mongodb::register(registry);
    #[cfg(feature = "push")]
    ulog_plugins_push::register(registry);
}

/// A registry with every built-in plugin.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    register_all(&mut r);
    r
}
