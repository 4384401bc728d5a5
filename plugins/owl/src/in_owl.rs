//! `input owl`: OWL Intuition readings from multicast or UDP push.
//!
//! ```text
//! input owl { }                                        # multicast 224.192.32.19:22600
//! input owl { mode = "unicast"  listen = "0.0.0.0:22600"  tag = "home.{device_id}.owl.{packet}" }
//! ```
//!
//! Each datagram is one packet. What is already waiting on the socket is
//! taken in one go and emitted as one batch per tag. A datagram that is not a
//! valid packet is never dropped quietly: it goes to the `errors` label with
//! the reason and its text (`raw`), and is counted; the first few are logged
//! one by one, then every hundredth.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use serde_json::{Map, Value};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::net::UdpSocket;
use tracing::{error, info, warn};
use ulog_engine::{
    async_trait, Batch, BuildContext, BuildError, Event, EventTime, Input, InputContext, ParamKind,
    ParamSpec, Params, PluginError, PluginKind, PluginSpec, Record, Registry, Rejected, Tag,
};

use crate::packet::{self, MAX_PACKET};

/// OWL's multicast group and port.
pub const DEFAULT_GROUP: &str = "224.192.32.19:22600";
/// The default tag template.
pub const DEFAULT_TAG: &str = "owl.{packet}";
/// Most datagrams taken into one emit.
const MAX_BURST: usize = 1024;
/// Bad packets logged one by one before only every hundredth is.
const LOG_FIRST: u64 = 5;

/// The `owl` input's declaration.
pub fn spec() -> PluginSpec {
    PluginSpec::new(
        PluginKind::Input,
        "owl",
        "Receives OWL Intuition (Network OWL) energy readings: XML packets by multicast or UDP push, parsed into typed records (electricity, solar, hot_water, heating, weather).",
    )
    .param(ParamSpec::with_default(
        "mode",
        ParamKind::OneOf(&["multicast", "unicast"]),
        "multicast",
        "`multicast` joins `group` as the gateway's default sends; `unicast` receives the gateway's UDP push on `listen`.",
    ))
    .param(ParamSpec::with_default(
        "group",
        ParamKind::Str,
        DEFAULT_GROUP,
        "Multicast group and port to join (mode multicast).",
    ))
    .param(ParamSpec::with_default(
        "interface",
        ParamKind::Str,
        "0.0.0.0",
        "Address of the local interface to join the group on (mode multicast); 0.0.0.0 lets the system choose.",
    ))
    .param(ParamSpec::with_default(
        "listen",
        ParamKind::Str,
        "0.0.0.0:22600",
        "Address and port to receive UDP push on (mode unicast).",
    ))
    .param(ParamSpec::with_default(
        "tag",
        ParamKind::Str,
        DEFAULT_TAG,
        "Tag template: `{packet}` (electricity, solar, hot_water, heating, weather) and `{device_id}` are replaced per packet.",
    ))
    .param(ParamSpec::optional(
        "source_address_key",
        ParamKind::Str,
        "Field to store the sender's IP address in (not added when unset).",
    ))
}

/// Registers `input owl`.
pub fn register(registry: &mut Registry) {
    registry.add_input(spec(), |params, ctx| {
        Ok(Box::new(OwlInput::from_params(params, ctx)?) as Box<dyn Input>)
    });
}

/// Where the input receives.
#[derive(Debug, Clone)]
enum Mode {
    Multicast {
        group: SocketAddrV4,
        interface: Ipv4Addr,
    },
    Unicast {
        listen: String,
    },
}

/// A built `owl` input; binds its socket when it starts.
pub struct OwlInput {
    mode: Mode,
    tag: TagTemplate,
    source_key: Option<String>,
}

impl OwlInput {
    /// Builds the input from validated parameters (no I/O).
    pub fn from_params(params: &Params, _ctx: &BuildContext) -> Result<Self, BuildError> {
        let mode = match params.str("mode")? {
            "unicast" => Mode::Unicast {
                listen: params.str("listen")?.to_string(),
            },
            _ => {
                let group: SocketAddrV4 = params.str("group")?.parse().map_err(|_| {
                    BuildError::param(
                        "group",
                        "must be an IPv4 address and port, such as 224.192.32.19:22600",
                    )
                })?;
                if !group.ip().is_multicast() {
                    return Err(BuildError::param(
                        "group",
                        format!("{} is not a multicast address (224.0.0.0/4)", group.ip()),
                    ));
                }
                let interface = params.str("interface")?.parse().map_err(|_| {
                    BuildError::param("interface", "must be an IPv4 address, such as 192.168.1.10")
                })?;
                Mode::Multicast { group, interface }
            }
        };
        Ok(Self {
            mode,
            tag: TagTemplate::parse(params.str("tag")?).map_err(|m| BuildError::param("tag", m))?,
            source_key: params.opt_str("source_address_key")?.map(str::to_string),
        })
    }

    fn bind(&self) -> Result<UdpSocket, PluginError> {
        let socket = match &self.mode {
            Mode::Unicast { listen } => {
                let addr: SocketAddr = listen.parse().map_err(|_| {
                    PluginError::new(format!("listen {listen:?} is not an address and port"))
                })?;
                std::net::UdpSocket::bind(addr)
                    .map_err(|e| PluginError::with_source(format!("binding UDP {addr}"), e))?
            }
            Mode::Multicast { group, interface } => {
                let ctx = |what: &str| format!("{what} (multicast group {group})");
                let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
                    .map_err(|e| PluginError::with_source(ctx("creating a UDP socket"), e))?;
                // Other listeners (the gateway's own app, a second ulog) may share the group.
                s.set_reuse_address(true)
                    .map_err(|e| PluginError::with_source(ctx("SO_REUSEADDR"), e))?;
                #[cfg(unix)]
                s.set_reuse_port(true)
                    .map_err(|e| PluginError::with_source(ctx("SO_REUSEPORT"), e))?;
                let any = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, group.port());
                s.bind(&SockAddr::from(any))
                    .map_err(|e| PluginError::with_source(ctx("binding the port"), e))?;
                s.join_multicast_v4(group.ip(), interface).map_err(|e| {
                    PluginError::with_source(ctx(&format!("joining on interface {interface}")), e)
                })?;
                s.into()
            }
        };
        socket
            .set_nonblocking(true)
            .map_err(|e| PluginError::with_source("making the socket non-blocking", e))?;
        UdpSocket::from_std(socket)
            .map_err(|e| PluginError::with_source("registering the socket", e))
    }
}

#[async_trait]
impl Input for OwlInput {
    async fn run(self: Box<Self>, mut ctx: InputContext) -> Result<(), PluginError> {
        let socket = self.bind()?;
        info!(
            input = %ctx.id,
            local = %socket.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            mode = ?self.mode,
            "owl input receiving"
        );
        let mut buf = vec![0u8; MAX_PACKET + 1];
        let mut bad: u64 = 0;
        let error_tag = Tag::parse("owl.error").expect("a valid constant tag");
        loop {
            let first = tokio::select! {
                _ = ctx.shutdown.cancelled() => break,
                r = socket.recv_from(&mut buf) => r,
            };
            let now = EventTime::now();
            let mut batches: Vec<(Tag, Vec<Event>)> = Vec::new();
            let mut rejects = Vec::new();
            let mut next = Some(first);
            let mut taken = 0;
            while let Some(r) = next.take() {
                taken += 1;
                match r {
                    Ok((n, peer)) => match self.packet(&buf[..n], peer, now) {
                        Ok((tag, event)) => match batches.iter_mut().find(|(t, _)| *t == tag) {
                            Some((_, events)) => events.push(event),
                            None => batches.push((tag, vec![event])),
                        },
                        Err(reason) => {
                            bad += 1;
                            if bad <= LOG_FIRST || bad.is_multiple_of(100) {
                                warn!(input = %ctx.id, from = %peer, bad_packets = bad, %reason, "bad OWL packet; sent to the errors label");
                            }
                            rejects.push(rejected(&buf[..n], peer, now, reason));
                        }
                    },
                    Err(e) => warn!(input = %ctx.id, error = %e, "receiving a datagram failed"),
                }
                if taken >= MAX_BURST {
                    break;
                }
                match socket.try_recv_from(&mut buf) {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    r => next = Some(r),
                }
            }
            for (tag, events) in batches {
                let n = events.len();
                if let Err(e) = ctx.emitter.emit(Batch::new(tag, events)).await {
                    error!(input = %ctx.id, events = n, error = %e, "OWL readings were not accepted");
                    return Ok(());
                }
            }
            if !rejects.is_empty() {
                if let Err(e) = ctx
                    .emitter
                    .reject(error_tag.clone(), &ctx.id, rejects)
                    .await
                {
                    error!(input = %ctx.id, error = %e, "bad OWL packets could not be sent to the errors label");
                    return Ok(());
                }
            }
        }
        if bad > 0 {
            info!(input = %ctx.id, bad_packets = bad, "owl input stopped");
        }
        Ok(())
    }
}

impl OwlInput {
    /// One datagram into its tag and event, or the reason it is refused.
    fn packet(
        &self,
        bytes: &[u8],
        peer: SocketAddr,
        now: EventTime,
    ) -> Result<(Tag, Event), String> {
        if bytes.len() > MAX_PACKET {
            return Err(packet::PacketError::TooLarge(bytes.len()).to_string());
        }
        let p = packet::parse(bytes).map_err(|e| e.to_string())?;
        let mut record = p.record;
        let tag = self.tag.render(&record)?;
        if let Some(key) = &self.source_key {
            record.insert(key.clone(), peer.ip().to_string().into());
        }
        let time = p
            .timestamp
            .filter(|&t| t > 0)
            .map_or(now, |t| EventTime::from_secs_nanos(t, 0));
        Ok((tag, Event::new(time, Record::Map(record))))
    }
}

fn rejected(bytes: &[u8], peer: SocketAddr, now: EventTime, reason: String) -> Rejected {
    let mut record = Map::new();
    // Bounded: a rejected record never carries more than the packet limit.
    let end = bytes.len().min(MAX_PACKET);
    record.insert("raw".into(), String::from_utf8_lossy(&bytes[..end]).into());
    record.insert("from".into(), peer.to_string().into());
    Rejected {
        event: Event::new(now, Record::Map(record)),
        reason,
    }
}

/// A tag with `{packet}` / `{device_id}` placeholders, checked at build time.
#[derive(Debug, Clone)]
struct TagTemplate {
    parts: Vec<Part>,
}

#[derive(Debug, Clone)]
enum Part {
    Text(String),
    Field(&'static str),
}

impl TagTemplate {
    fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("unclosed `{{` in tag template {text:?}"))?;
            let name = &rest[open + 1..open + close];
            parts.push(Part::Field(match name {
                "packet" => "packet",
                "device_id" => "device_id",
                other => {
                    return Err(format!(
                        "unknown placeholder `{{{other}}}` in tag template (known: {{packet}}, {{device_id}})"
                    ))
                }
            }));
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        let t = Self { parts };
        // Check the fixed parts with sample values.
        let mut sample = Map::new();
        sample.insert("packet".into(), "electricity".into());
        sample.insert("device_id".into(), "443719000677".into());
        t.render(&sample)?;
        Ok(t)
    }

    fn render(&self, record: &Map<String, Value>) -> Result<Tag, String> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Field(f) => match record.get(*f).and_then(Value::as_str) {
                    Some(v) => out.push_str(v),
                    None => return Err(format!("the packet has no `{f}` for the tag template")),
                },
            }
        }
        Tag::parse(&out).map_err(|e| format!("tag {out:?} is not valid: {e}"))
    }
}
