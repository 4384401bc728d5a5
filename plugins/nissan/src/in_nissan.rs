//! `input nissan`: polls the battery state of Nissan EVs.
//!
//! ```text
//! input nissan { api = "carwings"  username = "${NISSAN_USER}"  password_file = "secrets/nissan"  interval = 15m }
//! input nissan { api = "kamereon"  vins = ["SJNFAAZE1U0000000"]  client_id = "..."  client_secret = "..."
//!                refresh_token_file = "secrets/nissan-refresh"  state_file = "state/nissan.json" }
//! ```
//!
//! Every `interval` it asks each car's last reading and emits it, unless it
//! is the reading already emitted (same car timestamp): the last timestamp
//! per VIN is kept in memory and, with `state_file`, on disk after each
//! accepted emit, so a restart does not emit it again either. Errors back
//! off (doubling from 30 s up to `interval`), honouring `Retry-After` on 429.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value as Json};
use tracing::{error, info, warn};
use ulog_engine::{
    async_trait, Batch, BuildContext, BuildError, Event, EventTime, Input, InputContext, ParamKind,
    ParamSpec, Params, PluginError, PluginKind, PluginSpec, Record, Registry, Tag, Value,
};

use crate::battery::{CheckResult, Reading};
use crate::carwings::{Carwings, CarwingsError};
use crate::client::Http;
use crate::kamereon::Kamereon;

/// Carwings' production endpoint (Europe).
pub const CARWINGS_URL: &str = "https://gdcportalgw.its-mo.com/api_v230317_NE/gdc/";
/// Kamereon's car adapter (Europe).
pub const KAMEREON_URL: &str =
    "https://alliance-platform-caradapter-prod.apps.eu2.kamereon.io/car-adapter";
/// Nissan's OAuth token endpoint (Europe).
pub const KAMEREON_TOKEN_URL: &str =
    "https://prod.eu2.auth.kamereon.org/kauth/oauth2/a-ncb-prod/access_token";

/// The `nissan` input's declaration.
pub fn spec() -> PluginSpec {
    PluginSpec::new(
        PluginKind::Input,
        "nissan",
        "Polls the battery state (charge, range, plug and charging, time to full) of Nissan EVs from the Carwings or NissanConnect (Kamereon) service; a reading already emitted is not emitted again.",
    )
    .param(ParamSpec::with_default("api", ParamKind::OneOf(&["carwings", "kamereon"]), "carwings", "`carwings` (legacy NissanConnect EV) or `kamereon` (current NissanConnect)."))
    .param(ParamSpec::optional("base_url", ParamKind::Str, "The service's address (default: the production endpoint of the chosen api, Europe)."))
    .param(ParamSpec::with_default("interval", ParamKind::Duration, Duration::from_secs(15 * 60), "How often each car is asked."))
    .param(ParamSpec::with_default("tag", ParamKind::Str, "nissan.battery", "The tag of the readings."))
    .param(ParamSpec::optional("state_file", ParamKind::Str, "File keeping the last emitted reading time per car, so a restart does not emit it again (relative to the routes file)."))
    .param(ParamSpec::with_default("timeout", ParamKind::Duration, Duration::from_secs(60), "How long one request may take."))
    .param(ParamSpec::optional("tls_ca_file", ParamKind::Str, "CA certificates (PEM) to verify the service with; the system's CAs when unset."))
    .param(ParamSpec::with_default("region", ParamKind::Str, "NE", "Carwings region code: NE (Europe), NNA (North America), NCI (Canada), NMA (Australia), NML (Japan)."))
    .param(ParamSpec::optional("username", ParamKind::Str, "Carwings account (e-mail)."))
    .param(ParamSpec::optional("password", ParamKind::Str, "Carwings password (prefer `password_file` or `${ENV}`)."))
    .param(ParamSpec::optional("password_file", ParamKind::Str, "File holding the Carwings password."))
    .param(ParamSpec::with_default("fresh_reading", ParamKind::Bool, false, "Carwings: ask the car for a new reading each time (BatteryStatusCheckRequest) and poll for it, instead of reading the last one the service holds. Wakes the car's telematics unit: keep the interval long."))
    .param(ParamSpec::with_default("fresh_poll", ParamKind::Duration, Duration::from_secs(20), "Carwings: wait between polls for a fresh reading."))
    .param(ParamSpec::with_default("fresh_attempts", ParamKind::Int, 9, "Carwings: polls for a fresh reading before falling back to the last one."))
    .param(ParamSpec::with_default("vins", ParamKind::List(Box::new(ParamKind::Str)), Value::List(Vec::new()), "Kamereon: the cars to ask (VINs)."))
    .param(ParamSpec::with_default("token_url", ParamKind::Str, KAMEREON_TOKEN_URL, "Kamereon: the OAuth token endpoint."))
    .param(ParamSpec::optional("client_id", ParamKind::Str, "Kamereon: OAuth client id."))
    .param(ParamSpec::optional("client_secret", ParamKind::Str, "Kamereon: OAuth client secret."))
    .param(ParamSpec::optional("refresh_token_file", ParamKind::Str, "Kamereon: file holding the OAuth refresh token; a rotated token is written back."))
}

/// Registers `input nissan`.
pub fn register(registry: &mut Registry) {
    registry.add_input(spec(), |params, ctx| {
        Ok(Box::new(NissanInput::from_params(params, ctx)?) as Box<dyn Input>)
    });
}

#[derive(Debug, Clone)]
enum Api {
    Carwings {
        user: String,
        password: Option<String>,
        password_file: Option<PathBuf>,
        region: String,
        fresh: bool,
        fresh_poll: Duration,
        fresh_attempts: u32,
    },
    Kamereon {
        vins: Vec<String>,
        token_url: String,
        client_id: String,
        client_secret: String,
        refresh_file: PathBuf,
    },
}

/// A built `nissan` input.
pub struct NissanInput {
    api: Api,
    base: String,
    interval: Duration,
    tag: Tag,
    state_file: Option<PathBuf>,
    timeout: Duration,
    ca_file: Option<PathBuf>,
}

impl NissanInput {
    /// Builds the input from validated parameters (no I/O).
    pub fn from_params(params: &Params, ctx: &BuildContext) -> Result<Self, BuildError> {
        let need = |name: &'static str, why: &str| -> Result<String, BuildError> {
            params
                .opt_str(name)?
                .map(str::to_string)
                .ok_or_else(|| BuildError::param(name, format!("needed with {why}")))
        };
        let path = |name: &str| -> Result<Option<PathBuf>, BuildError> {
            Ok(params.opt_str(name)?.map(|p| ctx.base_dir.join(p)))
        };
        let (api, default_url) = match params.str("api")? {
            "kamereon" => {
                let mut vins = Vec::new();
                for v in params.list("vins")? {
                    let Value::Str(v) = v else {
                        return Err(BuildError::param("vins", "VINs are strings"));
                    };
                    if v.len() != 17 || !v.chars().all(|c| c.is_ascii_alphanumeric()) {
                        return Err(BuildError::param(
                            "vins",
                            format!("{v:?} is not a VIN (17 letters and digits)"),
                        ));
                    }
                    vins.push(v.clone());
                }
                if vins.is_empty() {
                    return Err(BuildError::param(
                        "vins",
                        "api kamereon needs the cars' VINs",
                    ));
                }
                let refresh_file = path("refresh_token_file")?.ok_or_else(|| {
                    BuildError::param("refresh_token_file", "needed with api kamereon")
                })?;
                (
                    Api::Kamereon {
                        vins,
                        token_url: params.str("token_url")?.to_string(),
                        client_id: need("client_id", "api kamereon")?,
                        client_secret: need("client_secret", "api kamereon")?,
                        refresh_file,
                    },
                    KAMEREON_URL,
                )
            }
            _ => {
                let password = params.opt_str("password")?.map(str::to_string);
                let password_file = path("password_file")?;
                if password.is_some() == password_file.is_some() {
                    return Err(BuildError::param(
                        "password",
                        "api carwings needs exactly one of `password` and `password_file`",
                    ));
                }
                let attempts = u32::try_from(params.int("fresh_attempts")?)
                    .map_err(|_| BuildError::param("fresh_attempts", "must not be negative"))?;
                (
                    Api::Carwings {
                        user: need("username", "api carwings")?,
                        password,
                        password_file,
                        region: params.str("region")?.to_string(),
                        fresh: params.bool("fresh_reading")?,
                        fresh_poll: params.duration("fresh_poll")?,
                        fresh_attempts: attempts,
                    },
                    CARWINGS_URL,
                )
            }
        };
        let base = params
            .opt_str("base_url")?
            .unwrap_or(default_url)
            .to_string();
        if !(base.starts_with("https://") || base.starts_with("http://")) {
            return Err(BuildError::param(
                "base_url",
                format!("{base:?} is not an http(s) URL"),
            ));
        }
        let interval = params.duration("interval")?;
        if interval.is_zero() {
            return Err(BuildError::param("interval", "must be more than 0"));
        }
        Ok(Self {
            api,
            base,
            interval,
            tag: Tag::parse(params.str("tag")?)
                .map_err(|e| BuildError::param("tag", e.to_string()))?,
            state_file: path("state_file")?,
            timeout: params.duration("timeout")?,
            ca_file: path("tls_ca_file")?,
        })
    }
}

enum Client {
    Carwings(Box<Carwings>, bool, Duration, u32),
    Kamereon(Box<Kamereon>, Vec<String>),
}

/// The last emitted reading per VIN, kept on disk when configured.
struct Seen {
    file: Option<PathBuf>,
    last: HashMap<String, String>,
}

impl Seen {
    fn load(file: Option<PathBuf>) -> Self {
        let last = file
            .as_ref()
            .and_then(|f| match std::fs::read_to_string(f) {
                Ok(text) => match serde_json::from_str::<HashMap<String, String>>(&text) {
                    Ok(m) => Some(m),
                    Err(e) => {
                        warn!(file = %f.display(), error = %e, "state file unreadable; starting without it");
                        None
                    }
                },
                Err(_) => None,
            })
            .unwrap_or_default();
        Self { file, last }
    }

    fn save(&self) {
        let Some(f) = &self.file else { return };
        let tmp = f.with_extension("tmp");
        let text = serde_json::to_string(&self.last).unwrap_or_default();
        if let Some(dir) = f.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Err(e) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, f)) {
            error!(file = %f.display(), error = %e, "could not save the state file; a restart may emit the last reading again");
        }
    }
}

/// The identity of a reading: the car's own time, or all of it when the car gives none.
fn reading_key(r: &Reading) -> String {
    r.time.map_or_else(
        || Json::Object(r.fields.clone()).to_string(),
        |t| t.to_rfc3339(),
    )
}

impl NissanInput {
    fn client(&self) -> Result<Client, PluginError> {
        let verify = ulog_tls::Verify::Full;
        let tls = if self.base.starts_with("https://")
            || matches!(&self.api, Api::Kamereon { token_url, .. } if token_url.starts_with("https://"))
        {
            ulog_tls::client_config(self.ca_file.as_deref(), verify)
                .map_err(|e| PluginError::new(format!("TLS setup: {e}")))?
        } else {
            ulog_tls::client_config(None, ulog_tls::Verify::Insecure)
                .map_err(|e| PluginError::new(format!("TLS setup: {e}")))?
        };
        let http = Http::new(tls, self.timeout);
        Ok(match &self.api {
            Api::Carwings {
                user,
                password,
                password_file,
                region,
                fresh,
                fresh_poll,
                fresh_attempts,
            } => {
                let password = match (password, password_file) {
                    (Some(p), _) => p.clone(),
                    (None, Some(f)) => std::fs::read_to_string(f)
                        .map_err(|e| {
                            PluginError::new(format!(
                                "reading the password file {}: {e}",
                                f.display()
                            ))
                        })?
                        .trim_end_matches(['\n', '\r'])
                        .to_string(),
                    (None, None) => String::new(),
                };
                Client::Carwings(
                    Box::new(Carwings::new(http, &self.base, region, user, &password)),
                    *fresh,
                    *fresh_poll,
                    *fresh_attempts,
                )
            }
            Api::Kamereon {
                vins,
                token_url,
                client_id,
                client_secret,
                refresh_file,
            } => Client::Kamereon(
                Box::new(Kamereon::new(
                    http,
                    &self.base,
                    token_url,
                    client_id,
                    client_secret,
                    refresh_file.clone(),
                )),
                vins.clone(),
            ),
        })
    }
}

async fn readings(
    client: &mut Client,
    shutdown: &ulog_engine::CancellationToken,
) -> Vec<Result<(String, Reading), (String, CarwingsError)>> {
    match client {
        Client::Carwings(cw, fresh, poll, attempts) => {
            if *fresh {
                match cw.request_update().await {
                    Ok(key) => {
                        for _ in 0..*attempts {
                            tokio::select! {
                                _ = shutdown.cancelled() => return Vec::new(),
                                _ = tokio::time::sleep(*poll) => {}
                            }
                            match cw.update_result(&key).await {
                                Ok(CheckResult::Ready(r)) => {
                                    let vin = cw
                                        .session
                                        .as_ref()
                                        .map(|s| s.vin.clone())
                                        .unwrap_or_default();
                                    return vec![Ok((vin, r))];
                                }
                                Ok(CheckResult::Pending) => {}
                                Err(e) => return vec![Err((String::new(), e))],
                            }
                        }
                        warn!("the car did not answer the fresh-reading request; reading the last one the service holds");
                    }
                    Err(e) => return vec![Err((String::new(), e))],
                }
            }
            match cw.latest().await {
                Ok(Some(r)) => vec![Ok(r)],
                Ok(None) => Vec::new(),
                Err(e) => vec![Err((String::new(), e))],
            }
        }
        Client::Kamereon(k, vins) => {
            let mut out = Vec::new();
            for vin in vins.iter() {
                out.push(
                    k.battery(vin)
                        .await
                        .map(|r| (vin.clone(), r))
                        .map_err(|e| (vin.clone(), e)),
                );
            }
            out
        }
    }
}

#[async_trait]
impl Input for NissanInput {
    async fn run(self: Box<Self>, mut ctx: InputContext) -> Result<(), PluginError> {
        let mut client = self.client()?;
        let mut seen = Seen::load(self.state_file.clone());
        let min_backoff = Duration::from_secs(30).min(self.interval);
        let mut backoff = min_backoff;
        info!(input = %ctx.id, base = %self.base, every = ?self.interval, "nissan input polling");
        loop {
            let mut wait = self.interval;
            let mut events = Vec::new();
            let mut keys = Vec::new();
            let mut failed = false;
            for result in readings(&mut client, &ctx.shutdown).await {
                match result {
                    Ok((vin, reading)) => {
                        let key = reading_key(&reading);
                        if seen.last.get(&vin) == Some(&key) {
                            continue;
                        }
                        let mut fields: Map<String, Json> = Map::new();
                        fields.insert("vin".into(), vin.clone().into());
                        fields.extend(reading.fields.clone());
                        let time = reading
                            .time
                            .and_then(|t| t.timestamp_nanos_opt())
                            .map_or_else(EventTime::now, EventTime::from_unix_nanos);
                        events.push(Event::new(time, Record::Map(fields)));
                        keys.push((vin, key));
                    }
                    Err((vin, e)) => {
                        failed = true;
                        if let CarwingsError::RateLimited {
                            retry_after: Some(after),
                            ..
                        } = &e
                        {
                            backoff = backoff.max(*after);
                        }
                        match &e {
                            CarwingsError::LoginRefused(_) => {
                                error!(input = %ctx.id, vin = %vin, error = %e, "Nissan login refused; check the credentials (retrying at the interval)")
                            }
                            _ => {
                                warn!(input = %ctx.id, vin = %vin, error = %e, retry_in = ?backoff, "Nissan request failed")
                            }
                        }
                        if matches!(e, CarwingsError::LoginRefused(_)) {
                            backoff = self.interval;
                        }
                    }
                }
            }
            if !events.is_empty() {
                if ctx
                    .emitter
                    .emit(Batch::new(self.tag.clone(), events))
                    .await
                    .is_err()
                {
                    break;
                }
                // Accepted: only now is the reading remembered as emitted.
                seen.last.extend(keys);
                seen.save();
            }
            if failed {
                wait = backoff.min(self.interval.max(backoff));
                backoff = (backoff * 2).min(self.interval.max(min_backoff));
            } else {
                backoff = min_backoff;
            }
            tokio::select! {
                _ = ctx.shutdown.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        Ok(())
    }
}
