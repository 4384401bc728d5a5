//! The fluentd Forward protocol (v1) for ulog: `input forward` receives
//! events from fluentd, Fluent Bit, fluent-logger libraries, Docker's fluentd
//! log driver or another ulog; `output forward` sends events to any of them.
//!
//! - [`codec`]: frames ↔ events (all four carrier modes, EventTime, acks),
//!   incremental and size-limited; public for benchmarks, fuzzing and tools.
//! - [`handshake`]: the shared-key / user authentication handshake.
//! - `in_forward` / `out_forward`: the plugins, registered by [`register`].
#![deny(missing_docs)]

use tokio::io::{AsyncRead, AsyncWrite};
use ulog_engine::Registry;

pub mod codec;
pub mod handshake;
mod in_forward;
/// The msgpack scanner and reader the codec is built on (shared with the
/// tcp input, so they live in `ulog-parsers`).
pub use ulog_parsers::msgpack_stream as msgpack;
mod out_forward;
mod transcode;

pub use codec::{decode_frames, DecodeError, Encoder, Frame, FrameDecoder, Limits};
pub use transcode::json_to_msgpack;

/// Registers `input forward` and `output forward`.
pub fn register(registry: &mut Registry) {
    registry.add_input(in_forward::spec(), in_forward::build);
    registry.add_output(out_forward::spec(), out_forward::build);
}

/// A byte stream either side talks over: TCP, TLS over TCP, or a Unix
/// socket, boxed so one code path serves them all.
pub(crate) trait Stream: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Stream for T {}

/// This machine's host name, the default `self_hostname` of the handshake.
///
/// Read when a plugin starts (not when it is built, which does no I/O).
pub(crate) fn system_hostname() -> String {
    for path in ["/proc/sys/kernel/hostname", "/etc/hostname"] {
        if let Ok(s) = std::fs::read_to_string(path) {
            let s = s.trim();
            if !s.is_empty() {
                return s.to_string();
            }
        }
    }
    std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".to_string())
}

/// Checks that `addr` looks like `host:port` (or `[v6]:port`) without
/// resolving it, so a routes file can be checked offline.
pub(crate) fn check_host_port(addr: &str) -> Result<(), String> {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!("{addr:?} needs a port, like \"127.0.0.1:24224\""));
    };
    if host.is_empty() {
        return Err(format!(
            "{addr:?} needs a host before the port, like \"0.0.0.0:24224\""
        ));
    }
    port.parse::<u16>()
        .map(|_| ())
        .map_err(|_| format!("{addr:?}: {port:?} is not a port number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_checks() {
        assert!(check_host_port("127.0.0.1:24224").is_ok());
        assert!(check_host_port("[::1]:0").is_ok());
        assert!(check_host_port("localhost").is_err());
        assert!(check_host_port(":80").is_err());
        assert!(check_host_port("a:99999").is_err());
        assert!(!system_hostname().is_empty());
    }
}
