//! MQTT for ulog: `input mqtt` and `output mqtt`, on the rumqttc client.
//!
//! Household hubs and sensors publish over MQTT; ulog subscribes with manual
//! acknowledgements so that a message is acknowledged to the broker only
//! after the pipeline accepted it, and publishes with QoS 1/2 counting a
//! batch delivered only once the broker confirmed it. `docs/plugins/mqtt.md`
//! is the user reference.
#![deny(missing_docs)]

use ulog_engine::Registry;

pub mod connect;
pub mod in_mqtt;
pub mod out_mqtt;

/// Registers `input mqtt` and `output mqtt`.
pub fn register(registry: &mut Registry) {
    in_mqtt::register(registry);
    out_mqtt::register(registry);
}
