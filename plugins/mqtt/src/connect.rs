//! Connection settings both plugins share: broker address, client id,
//! credentials, TLS, keep-alive and QoS, declared once.

use std::path::PathBuf;
use std::time::Duration;

use rumqttc::{MqttOptions, QoS, TlsConfiguration, Transport};
use ulog_engine::{BuildContext, BuildError, ParamKind, ParamSpec, Params, PluginSpec, Value};

/// The largest packet MQTT 3.1.1 can encode (256 MiB).
pub const MQTT_MAX_PACKET: usize = 268_435_455;

/// Adds the connection parameters to a plugin's declaration.
pub fn with_connection_params(spec: PluginSpec, default_client_id: &'static str) -> PluginSpec {
    spec.param(ParamSpec::with_default(
        "broker",
        ParamKind::Str,
        "127.0.0.1:1883",
        "The broker as `host:port`, `mqtt://host:port` or `mqtts://host:port` (TLS; default port 8883).",
    ))
    .param(ParamSpec::with_default(
        "client_id",
        ParamKind::Str,
        default_client_id,
        "The MQTT client id. Keep it fixed and unique per ulog: a persistent session is found by it.",
    ))
    .param(ParamSpec::with_default(
        "qos",
        ParamKind::Int,
        1,
        "Quality of service: 0 (at most once), 1 (at least once), 2 (exactly once between client and broker).",
    ))
    .param(ParamSpec::with_default(
        "keep_alive",
        ParamKind::Duration,
        Duration::from_secs(30),
        "Interval of MQTT pings when idle.",
    ))
    .param(ParamSpec::optional(
        "username",
        ParamKind::Str,
        "User name for the broker.",
    ))
    .param(ParamSpec::optional(
        "password",
        ParamKind::Str,
        "Password for the broker (prefer `password_file`, or `${ENV}`).",
    ))
    .param(ParamSpec::optional(
        "password_file",
        ParamKind::Str,
        "File holding the password (trailing newline ignored), relative to the routes file.",
    ))
    .param(ParamSpec::optional(
        "tls_ca_file",
        ParamKind::Str,
        "CA certificates (PEM) to verify the broker with (mqtts:// only); the system's CAs when unset.",
    ))
    .param(ParamSpec::with_default(
        "tls_verify",
        ParamKind::Bool,
        true,
        "Verify the broker's certificate and name (mqtts:// only). `false` encrypts without authenticating the broker: tests only.",
    ))
    .param(ParamSpec::with_default(
        "max_message_size",
        ParamKind::Size,
        Value::Size(1 << 20),
        "Largest MQTT packet accepted or sent.",
    ))
}

/// Validated connection settings; no I/O happens until [`Connection::options`].
#[derive(Debug, Clone)]
pub struct Connection {
    host: String,
    port: u16,
    tls: bool,
    /// The client id.
    pub client_id: String,
    /// The QoS of subscriptions or publishes.
    pub qos: QoS,
    keep_alive: Duration,
    username: Option<String>,
    password: Option<String>,
    password_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    verify: bool,
    /// Largest packet.
    pub max_message: usize,
}

impl Connection {
    /// Reads and checks the connection parameters.
    pub fn from_params(params: &Params, ctx: &BuildContext) -> Result<Self, BuildError> {
        let broker = params.str("broker")?;
        let (tls, rest) = if let Some(r) = broker.strip_prefix("mqtts://") {
            (true, r)
        } else if let Some(r) = broker.strip_prefix("mqtt://") {
            (false, r)
        } else if broker.contains("://") {
            return Err(BuildError::param(
                "broker",
                format!("{broker:?}: only mqtt:// and mqtts:// are supported"),
            ));
        } else {
            (false, broker)
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (
                h.trim_matches(['[', ']']).to_string(),
                p.parse::<u16>().map_err(|_| {
                    BuildError::param("broker", format!("{broker:?}: {p:?} is not a port"))
                })?,
            ),
            None => (rest.to_string(), if tls { 8883 } else { 1883 }),
        };
        if host.is_empty() {
            return Err(BuildError::param(
                "broker",
                format!("{broker:?} has no host"),
            ));
        }
        let qos = match params.int("qos")? {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            2 => QoS::ExactlyOnce,
            n => return Err(BuildError::param("qos", format!("{n} is not 0, 1 or 2"))),
        };
        let client_id = params.str("client_id")?.to_string();
        if client_id.is_empty() || client_id.len() > 65535 {
            return Err(BuildError::param("client_id", "must be 1 to 65535 bytes"));
        }
        let password = params.opt_str("password")?.map(str::to_string);
        let password_file = params
            .opt_str("password_file")?
            .map(|p| ctx.base_dir.join(p));
        if password.is_some() && password_file.is_some() {
            return Err(BuildError::param(
                "password_file",
                "give either `password` or `password_file`, not both",
            ));
        }
        let username = params.opt_str("username")?.map(str::to_string);
        if username.is_none() && (password.is_some() || password_file.is_some()) {
            return Err(BuildError::param(
                "username",
                "a password needs a `username`",
            ));
        }
        let ca_file = params.opt_str("tls_ca_file")?.map(|p| ctx.base_dir.join(p));
        if !tls && ca_file.is_some() {
            return Err(BuildError::param(
                "tls_ca_file",
                "TLS settings need an mqtts:// broker address",
            ));
        }
        let max = params.size("max_message_size")?;
        Ok(Self {
            host,
            port,
            tls,
            client_id,
            qos,
            keep_alive: params.duration("keep_alive")?,
            username,
            password,
            password_file,
            ca_file,
            verify: params.bool("tls_verify")?,
            max_message: usize::try_from(max).unwrap_or(usize::MAX).max(64),
        })
    }

    /// `host:port`, for logs.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Client options (reads the password and CA files).
    ///
    /// # Errors
    /// An unreadable password or CA file, with the path.
    pub fn options(&self, clean_session: bool) -> Result<MqttOptions, String> {
        let mut o = MqttOptions::new(self.client_id.clone(), self.host.clone(), self.port);
        o.set_keep_alive(self.keep_alive.max(Duration::from_secs(1)));
        o.set_clean_session(clean_session);
        // Incoming: MQTT's own maximum, so that no message can break the
        // connection (the broker would resend it after every reconnect and
        // wedge the input); `max_message_size` is enforced by the plugins,
        // which send what is larger to `errors`.
        o.set_max_packet_size(MQTT_MAX_PACKET, self.max_message + 1024);
        if let Some(user) = &self.username {
            let password = match (&self.password, &self.password_file) {
                (Some(p), _) => p.clone(),
                (None, Some(path)) => std::fs::read_to_string(path)
                    .map_err(|e| format!("reading the password file {}: {e}", path.display()))?
                    .trim_end_matches(['\n', '\r'])
                    .to_string(),
                (None, None) => String::new(),
            };
            o.set_credentials(user.clone(), password);
        }
        if self.tls {
            let verify = if self.verify {
                ulog_tls::Verify::Full
            } else {
                ulog_tls::Verify::Insecure
            };
            let config = ulog_tls::client_config(self.ca_file.as_deref(), verify)
                .map_err(|e| format!("TLS setup: {e}"))?;
            o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(config)));
        }
        Ok(o)
    }
}
