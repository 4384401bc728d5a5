//! What `input pubnub` and `output pubnub` share: the keys, the identity,
//! the origin, encryption and timeouts, declared once and turned into a
//! PubNub SDK client over ulog's transport.

use std::path::PathBuf;
use std::time::Duration;

use pubnub::providers::crypto::CryptoModule;
use pubnub::providers::deserialization_serde::DeserializerSerde;
use pubnub::{Keyset, PubNubClientBuilder, PubNubGenericClient};
use ulog_engine::{BuildContext, BuildError, ParamKind, ParamSpec, Params, PluginSpec};

use crate::transport::HyperTransport;

/// PubNub's public origin.
pub const DEFAULT_ORIGIN: &str = "https://ps.pndsn.com";

/// The SDK client ulog uses.
pub type Client = PubNubGenericClient<HyperTransport, DeserializerSerde>;

/// Adds the shared parameters to a plugin's declaration.
pub fn with_client_params(spec: PluginSpec, default_uuid: &'static str) -> PluginSpec {
    spec.param(ParamSpec::required(
        "subscribe_key",
        ParamKind::Str,
        "The keyset's subscribe key (`sub-c-…`).",
    ))
    .param(ParamSpec::optional(
        "publish_key",
        ParamKind::Str,
        "The keyset's publish key (`pub-c-…`); the output needs it.",
    ))
    .param(ParamSpec::optional(
        "auth_key",
        ParamKind::Str,
        "An Access Manager auth key or token sent with every request.",
    ))
    .param(ParamSpec::with_default(
        "uuid",
        ParamKind::Str,
        default_uuid,
        "The client's User ID (`uuid`): keep it stable per process, PubNub bills and shows presence per User ID.",
    ))
    .param(ParamSpec::with_default(
        "origin",
        ParamKind::Str,
        DEFAULT_ORIGIN,
        "The PubNub origin: `https://ps.pndsn.com`, a custom origin such as `https://mk-smart.pubnubapi.com`, or `http://127.0.0.1:PORT` for a stand-in.",
    ))
    .param(ParamSpec::optional(
        "cipher_key",
        ParamKind::Str,
        "Message encryption key (AES-256-CBC, as the PubNub SDKs do it): the output encrypts what it publishes, the input decrypts; a message that does not decrypt goes to `errors`.",
    ))
    .param(ParamSpec::with_default(
        "cipher",
        ParamKind::OneOf(&["aes-cbc", "legacy"]),
        "aes-cbc",
        "`aes-cbc`: the current SDK format (a header names the cryptor, random IV). `legacy`: the older format without a header. Either way both formats are read.",
    ))
    .param(ParamSpec::with_default(
        "request_timeout",
        ParamKind::Duration,
        Duration::from_secs(10),
        "Longest wait for an answer to a publish or history request.",
    ))
    .param(ParamSpec::with_default(
        "subscribe_timeout",
        ParamKind::Duration,
        Duration::from_secs(310),
        "Longest wait for a subscribe long-poll (PubNub answers within 280 s when nothing is published); a stalled connection is dropped and polled again after it.",
    ))
    .param(ParamSpec::optional(
        "tls_ca_file",
        ParamKind::Str,
        "CA certificates (PEM) to verify the origin with; the system's CAs when unset.",
    ))
}

/// The shared parameters, validated.
#[derive(Debug, Clone)]
pub struct ClientParams {
    /// `https://…` or `http://…`, no trailing slash.
    pub origin: String,
    /// The subscribe key.
    pub subscribe_key: String,
    /// The publish key, if given.
    pub publish_key: Option<String>,
    /// The auth key, if any.
    pub auth_key: Option<String>,
    /// The User ID.
    pub uuid: String,
    cipher_key: Option<String>,
    legacy_cipher: bool,
    request_timeout: Duration,
    subscribe_timeout: Duration,
    ca_file: Option<PathBuf>,
}

impl ClientParams {
    /// Reads and checks the shared parameters (no I/O).
    ///
    /// # Errors
    /// A bad origin, or an empty key.
    pub fn from_params(params: &Params, ctx: &BuildContext) -> Result<Self, BuildError> {
        let origin = params.str("origin")?.trim_end_matches('/').to_string();
        if !(origin.starts_with("https://") || origin.starts_with("http://")) {
            return Err(BuildError::param(
                "origin",
                format!("{origin:?} must start with https:// (or http:// for a local stand-in)"),
            ));
        }
        let subscribe_key = params.str("subscribe_key")?.to_string();
        if subscribe_key.is_empty() {
            return Err(BuildError::param("subscribe_key", "is empty"));
        }
        let uuid = params.str("uuid")?.to_string();
        if uuid.is_empty() {
            return Err(BuildError::param("uuid", "is empty"));
        }
        let cipher_key = params.opt_str("cipher_key")?.map(str::to_string);
        if cipher_key.as_deref() == Some("") {
            return Err(BuildError::param("cipher_key", "is empty"));
        }
        Ok(Self {
            origin,
            subscribe_key,
            publish_key: params
                .opt_str("publish_key")?
                .filter(|k| !k.is_empty())
                .map(str::to_string),
            auth_key: params
                .opt_str("auth_key")?
                .filter(|k| !k.is_empty())
                .map(str::to_string),
            uuid,
            cipher_key,
            legacy_cipher: params.str("cipher")? == "legacy",
            request_timeout: params.duration("request_timeout")?,
            subscribe_timeout: params.duration("subscribe_timeout")?,
            ca_file: params.opt_str("tls_ca_file")?.map(|p| ctx.base_dir.join(p)),
        })
    }

    /// The transport to the origin.
    ///
    /// # Errors
    /// The CA file cannot be read.
    pub fn transport(&self) -> Result<HyperTransport, String> {
        let tls = if self.origin.starts_with("https://") {
            ulog_tls::client_config(self.ca_file.as_deref(), ulog_tls::Verify::Full)
        } else {
            ulog_tls::client_config(None, ulog_tls::Verify::Insecure)
        }
        .map_err(|e| format!("TLS setup: {e}"))?;
        Ok(HyperTransport::new(
            &self.origin,
            tls,
            self.request_timeout,
            self.subscribe_timeout,
        ))
    }

    /// The encryption module, when a cipher key is set.
    ///
    /// # Errors
    /// The SDK refused the key.
    pub fn crypto(&self) -> Result<Option<CryptoModule>, String> {
        let Some(key) = &self.cipher_key else {
            return Ok(None);
        };
        let module = if self.legacy_cipher {
            CryptoModule::new_legacy_module(key.as_bytes().to_vec(), true)
        } else {
            CryptoModule::new_aes_cbc_module(key.as_bytes().to_vec(), true)
        };
        module.map(Some).map_err(|e| format!("cipher_key: {e}"))
    }

    /// An SDK client over `transport`; with `encrypt`, it encrypts what it
    /// publishes.
    ///
    /// # Errors
    /// The SDK refused the configuration.
    pub fn client(&self, transport: HyperTransport, encrypt: bool) -> Result<Client, String> {
        let mut builder = PubNubClientBuilder::with_transport(transport)
            .with_keyset(Keyset {
                subscribe_key: self.subscribe_key.clone(),
                publish_key: self.publish_key.clone(),
                secret_key: None,
            })
            .with_user_id(self.uuid.clone())
            // ulog retries by itself, with its own backoff.
            .with_retry_configuration(pubnub::RequestRetryConfiguration::None);
        if let Some(a) = &self.auth_key {
            builder = builder.with_auth_key(a.clone());
        }
        if encrypt {
            if let Some(c) = self.crypto()? {
                builder = builder.with_cryptor(c);
            }
        }
        builder.build().map_err(|e| e.to_string())
    }
}
