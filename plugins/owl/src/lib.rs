//! OWL Intuition for ulog: the `owl` input.
//!
//! Network OWL gateways (OWL Intuition-e, -pv, -c) send each reading as one
//! XML datagram to the multicast group 224.192.32.19:22600, or by "UDP push"
//! to a configured host. [`packet`] turns every packet type and firmware
//! variant into one typed schema; [`in_owl`] receives the datagrams and emits
//! the records. `docs/plugins/owl.md` is the user reference.
#![deny(missing_docs)]

use ulog_engine::Registry;

pub mod in_owl;
pub mod packet;

/// Registers `input owl`.
pub fn register(registry: &mut Registry) {
    in_owl::register(registry);
}
