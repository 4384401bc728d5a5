//! `input udp`: events from UDP datagrams — one record per datagram, or per
//! line when a datagram holds several newline-separated lines.
//!
//! UDP has no connection and no flow control: what the kernel's socket
//! buffer cannot hold is lost before ulog sees it. The input therefore
//! drains the socket quickly: after one `recv` it takes every datagram that
//! is already waiting (up to [`MAX_BURST`]) without waiting again and emits
//! them as one batch.
//!
//! ```text
//! input udp { listen = "0.0.0.0:5160"  tag = "metrics"  format = "json" }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::net::UdpSocket;
use tracing::{error, info, warn};
use ulog_engine::{
    async_trait, Batch, BuildContext, BuildError, CancellationToken, EventTime, Input,
    InputContext, ParamKind, ParamSpec, Params, PluginError, PluginKind, PluginSpec, Registry, Tag,
    Value as PValue,
};

use crate::counters::ConnCounts;
use crate::decode::{add_source, with_format_params, LineDecoder, ReadOut};
use crate::in_tcp::max_size;

/// The default `listen` address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:5160";
/// The default `max_message_size`: 64 KiB (any UDP payload fits).
pub const DEFAULT_MAX_MESSAGE: u64 = 64 * 1024;
/// Most datagrams taken into one batch.
pub const MAX_BURST: usize = 1024;
/// Receive buffer allocated at a time; datagrams are sliced out of it.
const RECV_BUF: usize = 1 << 20;

/// The `udp` input's declaration.
pub fn spec() -> PluginSpec {
    let spec = PluginSpec::new(
        PluginKind::Input,
        "udp",
        "Receives UDP datagrams; each is one record (or one per line when it holds several lines), parsed with `format`. What is waiting on the socket is taken in one go and emitted as one batch.",
    )
    .param(ParamSpec::with_default(
        "listen",
        ParamKind::Str,
        DEFAULT_LISTEN,
        "Address and port to receive on; `0.0.0.0:5160` for every interface.",
    ))
    .param(ParamSpec::required(
        "tag",
        ParamKind::Str,
        "The tag of every event this input emits.",
    ))
    .param(ParamSpec::with_default(
        "max_message_size",
        ParamKind::Size,
        PValue::Size(DEFAULT_MAX_MESSAGE),
        "Largest datagram accepted; a larger one is skipped with a warning and counted.",
    ));
    with_format_params(spec, "json")
}

/// Registers `input udp`.
pub fn register(registry: &mut Registry) {
    registry.add_input(spec(), |params, ctx| {
        Ok(Box::new(UdpInput::from_params(params, ctx)?) as Box<dyn Input>)
    });
}

/// A built `udp` input; binds its socket when it starts.
pub struct UdpInput {
    listen: String,
    tag: Tag,
    max_message: usize,
    decoder: Arc<LineDecoder>,
    source_key: Option<String>,
}

impl UdpInput {
    /// Builds the input from validated parameters (no I/O).
    pub fn from_params(params: &Params, ctx: &BuildContext) -> Result<Self, BuildError> {
        let tag =
            Tag::parse(params.str("tag")?).map_err(|e| BuildError::param("tag", e.to_string()))?;
        let max_message = max_size(params, "max_message_size")?;
        Ok(Self {
            listen: params.str("listen")?.to_string(),
            tag,
            max_message,
            decoder: Arc::new(LineDecoder::from_params(&ctx.id, params, max_message)?),
            source_key: params.opt_str("source_address_key")?.map(str::to_string),
        })
    }

    /// Slices the datagram `dgram` into lines and decodes each.
    fn datagram(
        &self,
        dgram: &Bytes,
        peer: &SocketAddr,
        now: EventTime,
        out: &mut ReadOut,
        counts: &mut ConnCounts,
    ) {
        let first = out.events.len();
        let mut start = 0;
        while start < dgram.len() {
            let nl = memchr::memchr(b'\n', &dgram[start..]).map_or(dgram.len(), |i| start + i);
            let mut end = nl;
            while end > start && matches!(dgram[end - 1], b'\r' | b'\0') {
                end -= 1;
            }
            if dgram[start..end].iter().any(|b| !b.is_ascii_whitespace()) {
                self.decoder.line(dgram, start, end, now, peer, out, counts);
            }
            start = nl + 1;
        }
        if let Some(key) = &self.source_key {
            add_source(&mut out.events[first..], key, &peer.ip().to_string());
        }
    }
}

/// Receives datagrams in bursts, slicing each out of one large buffer.
pub(crate) struct Burst {
    buf: BytesMut,
    /// Free space needed before each receive: one byte more than the
    /// maximum, so a larger datagram shows up as larger instead of being cut
    /// silently by the kernel.
    window: usize,
}

impl Burst {
    /// A receiver for datagrams of up to `max_message` bytes.
    pub(crate) fn new(max_message: usize) -> Self {
        let window = max_message.saturating_add(1);
        Self {
            buf: BytesMut::with_capacity(RECV_BUF.max(window)),
            window,
        }
    }

    fn make_room(&mut self) {
        if self.buf.capacity() - self.buf.len() < self.window {
            self.buf.reserve(RECV_BUF.max(self.window));
        }
    }

    /// Waits for a datagram, then takes those already waiting (up to
    /// [`MAX_BURST`] in all) into `out`, and returns the receive time; `None`
    /// once `shutdown` is cancelled. A datagram longer than the maximum comes
    /// out longer than it, for the caller to refuse.
    pub(crate) async fn recv(
        &mut self,
        socket: &UdpSocket,
        shutdown: &CancellationToken,
        out: &mut Vec<std::io::Result<(Bytes, SocketAddr)>>,
    ) -> Option<EventTime> {
        self.make_room();
        let first = tokio::select! {
            _ = shutdown.cancelled() => return None,
            r = socket.recv_buf_from(&mut self.buf) => r,
        };
        let now = EventTime::now();
        let mut next = Some(first);
        while let Some(r) = next.take() {
            out.push(r.map(|(n, peer)| (self.buf.split_to(n).freeze(), peer)));
            if out.len() >= MAX_BURST {
                break;
            }
            self.make_room();
            match socket.try_recv_buf_from(&mut self.buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                r => next = Some(r),
            }
        }
        Some(now)
    }
}

#[async_trait]
impl Input for UdpInput {
    async fn run(self: Box<Self>, mut ctx: InputContext) -> Result<(), PluginError> {
        let socket = UdpSocket::bind(&self.listen)
            .await
            .map_err(|e| PluginError::with_source(format!("binding UDP {}", self.listen), e))?;
        info!(
            input = %ctx.id,
            listen = %socket.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            "udp input listening"
        );
        let mut burst = Burst::new(self.max_message);
        let mut received = Vec::new();
        let mut counts = ConnCounts::default();
        let mut cap_hint = 16;
        while let Some(now) = burst.recv(&socket, &ctx.shutdown, &mut received).await {
            let mut out = ReadOut::with_capacity(cap_hint);
            for r in received.drain(..) {
                match r {
                    Ok((dgram, peer)) if dgram.len() > self.max_message => {
                        self.decoder.oversized(dgram.len(), &peer, &mut counts)
                    }
                    Ok((dgram, peer)) => self.datagram(&dgram, &peer, now, &mut out, &mut counts),
                    Err(e) => warn!(input = %ctx.id, error = %e, "receiving a datagram failed"),
                }
            }
            cap_hint = out.events.len().max(16);
            let ReadOut { events, rejects } = out;
            let n = events.len();
            if n > 0 {
                if let Err(e) = ctx.emitter.emit(Batch::new(self.tag.clone(), events)).await {
                    error!(input = %ctx.id, events = n, error = %e, "received datagrams were not accepted");
                    break;
                }
                counts.events += n as u64;
            }
            if !rejects.is_empty() {
                if let Err(e) = ctx.emitter.reject(self.tag.clone(), &ctx.id, rejects).await {
                    error!(input = %ctx.id, error = %e, "refused datagrams could not be sent to the errors label");
                    break;
                }
            }
        }
        self.decoder.counters.report(&ctx.id);
        Ok(())
    }
}
