//! `output elasticsearch`: batches written with the `_bulk` API to
//! Elasticsearch 7/8/9 or OpenSearch 1/2.
//!
//! ```text
//! match "home.**" elasticsearch {
//!   hosts = ["https://es1:9200", "https://es2:9200"]
//!   index = "mk-%Y.%m.%d"
//!   template = "trial"
//!   user = "ulog"  password = "${ES_PASSWORD}"
//! }
//! ```
//!
//! One batch becomes one or more bodies (`bulk_max_events`,
//! `bulk_max_bytes`), sent `workers` at a time, each to the next host in
//! turn. Every document carries an `_id` (the event's stable id, or the
//! `id_key` field) and goes with `create`, so a batch sent again after a
//! lost answer stores nothing twice: the copies already there answer 409,
//! which counts as delivered. The answer is read item by item: only
//! documents refused for a passing reason (429, 5xx) are retried; documents
//! refused for their content go to `errors` with the server's reason.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use elasticsearch::auth::Credentials;
use elasticsearch::http::{Method, StatusCode, Url};
use tokio::sync::Semaphore;
use tracing::{debug, info};
use ulog_engine::{
    async_trait, Batch, BuildContext, BuildError, Delivery, ItemFailure, Output, ParamKind,
    ParamSpec, Params, PluginError, PluginKind, PluginSpec, Registry, Value,
};

use crate::client::{gzip, ClientConfig, EsClient, Sent};
use crate::encode::{Body, Encoder, IndexName, OpType, TimePrecision};
use crate::index_template::{TemplateApi, TemplateSource, TemplateSpec};
use crate::response::{self, describe_error_body, retryable_status, FILTER_PATH};

/// The index used when neither `index` nor `data_stream` is set.
pub const DEFAULT_INDEX: &str = "ulog-%Y.%m.%d";

/// Bodies at least this large are gzipped on a blocking thread, so the
/// runtime's workers keep serving other tasks.
const GZIP_OFF_THREAD: usize = 64 << 10;

/// The `elasticsearch` output's declaration: every option once, for
/// validation, `ulog check` and the docs.
pub fn spec() -> PluginSpec {
    PluginSpec::new(
        PluginKind::Output,
        "elasticsearch",
        "Writes events to Elasticsearch (7, 8, 9) or OpenSearch (1, 2) with the _bulk API: \
         idempotent (`_id` from the event id, `create`), per-document retries (429/5xx) and \
         mapping failures to `errors`, several hosts with failover, dated indices or a data \
         stream, an index template installed on the first write.",
    )
    .param(ParamSpec::with_default(
        "hosts",
        ParamKind::List(Box::new(ParamKind::Str)),
        Value::List(vec![Value::from("http://127.0.0.1:9200")]),
        "Base URLs of the cluster's nodes (http:// or https://, optionally with a path prefix \
         behind a proxy). Requests go to each in turn; a node that fails is left out for \
         `host_backoff` (doubling up to `host_backoff_max`).",
    ))
    .param(ParamSpec::optional(
        "index",
        ParamKind::Str,
        "Index name: text with {tag}, {tag_parts[N]} or {field} placeholders and strftime \
         directives of the event time in UTC, e.g. \"mk-%Y.%m.%d\". Default \"ulog-%Y.%m.%d\".",
    ))
    .param(ParamSpec::optional(
        "data_stream",
        ParamKind::Str,
        "Write to this data stream instead of an index (placeholders allowed): documents go \
         with `create` and the time under @timestamp. The cluster needs a matching template \
         with data streams on (`template` / `template_file` install one).",
    ))
    .param(ParamSpec::with_default(
        "op_type",
        ParamKind::OneOf(&["create", "index"]),
        "create",
        "`create`: a document whose _id exists is not written again (a replay's 409 counts \
         as delivered). `index`: it is replaced.",
    ))
    .param(ParamSpec::optional(
        "id_key",
        ParamKind::Str,
        "Record field (string or number) to use as the document _id instead of the event's \
         stable id. An event without it goes to `errors`.",
    ))
    .param(ParamSpec::with_default(
        "time_key",
        ParamKind::Str,
        "@timestamp",
        "Field the event time is written to (RFC 3339, UTC); replaces a field of that name.",
    ))
    .param(ParamSpec::with_default(
        "time_precision",
        ParamKind::OneOf(&["millis", "micros", "nanos"]),
        "millis",
        "Digits of the time's fraction: millis for `date` fields, nanos for `date_nanos`.",
    ))
    .param(ParamSpec::optional(
        "tag_key",
        ParamKind::Str,
        "Field to write the event's tag to.",
    ))
    .param(ParamSpec::optional(
        "pipeline",
        ParamKind::Str,
        "Ingest pipeline to run the documents through.",
    ))
    .param(ParamSpec::with_default(
        "bulk_max_events",
        ParamKind::Int,
        1000i64,
        "Most documents in one _bulk request; larger batches are split. 0: no limit.",
    ))
    .param(ParamSpec::with_default(
        "bulk_max_bytes",
        ParamKind::Size,
        Value::Size(5 << 20),
        "Most bytes (before gzip) in one _bulk request. A single larger document is sent \
         alone. 0: no limit.",
    ))
    .param(ParamSpec::with_default(
        "workers",
        ParamKind::Int,
        2i64,
        "_bulk requests of one batch in flight at once.",
    ))
    .param(ParamSpec::with_default(
        "compress",
        ParamKind::Bool,
        false,
        "Gzip request bodies (Content-Encoding: gzip).",
    ))
    .param(ParamSpec::optional(
        "user",
        ParamKind::Str,
        "User for HTTP basic auth.",
    ))
    .param(ParamSpec::optional(
        "password",
        ParamKind::Str,
        "Password for basic auth (prefer ${ENV} or `password_file`).",
    ))
    .param(ParamSpec::optional(
        "password_file",
        ParamKind::Str,
        "File holding the basic-auth password (read when ulog starts; one trailing newline \
         is dropped).",
    ))
    .param(ParamSpec::optional(
        "api_key",
        ParamKind::Str,
        "Elasticsearch API key, the base64 `encoded` form the create-API-key call returns; \
         sent as `Authorization: ApiKey …`. Not with `user`.",
    ))
    .param(ParamSpec::optional(
        "tls_ca_file",
        ParamKind::Str,
        "CA certificates (PEM) to verify https hosts with; the system's bundle when unset. \
         The client's built-in Mozilla roots are trusted as well.",
    ))
    .param(ParamSpec::with_default(
        "tls_verify",
        ParamKind::Bool,
        true,
        "Verify https hosts' certificates and names. Turn off only for tests.",
    ))
    .param(ParamSpec::with_default(
        "timeout",
        ParamKind::Duration,
        Duration::from_secs(60),
        "How long one request may take, connecting and reading the answer included, before \
         it is retried (on the next host).",
    ))
    .param(ParamSpec::with_default(
        "host_backoff",
        ParamKind::Duration,
        Duration::from_secs(1),
        "How long a host that failed is left out at first; doubles on each further failure.",
    ))
    .param(ParamSpec::with_default(
        "host_backoff_max",
        ParamKind::Duration,
        Duration::from_secs(60),
        "The longest a failed host is left out.",
    ))
    .param(ParamSpec::optional(
        "template",
        ParamKind::OneOf(&["trial"]),
        "Install the built-in index template for the trial's data (geo_point location, \
         dates, double/long figures, keyword ids) before the first write.",
    ))
    .param(ParamSpec::optional(
        "template_file",
        ParamKind::Str,
        "Install this JSON file as the index template before the first write (its own \
         index_patterns and priority win over the derived ones).",
    ))
    .param(ParamSpec::with_default(
        "template_name",
        ParamKind::Str,
        "ulog",
        "Name of the installed index template.",
    ))
    .param(ParamSpec::optional(
        "template_pattern",
        ParamKind::Str,
        "Index pattern of the template; derived from `index` when unset (\"mk-%Y.%m.%d\" → \
         \"mk-*\").",
    ))
    .param(ParamSpec::with_default(
        "template_priority",
        ParamKind::Int,
        200i64,
        "Priority (composable) or order (legacy) of the template.",
    ))
    .param(ParamSpec::with_default(
        "template_api",
        ParamKind::OneOf(&["composable", "legacy"]),
        "composable",
        "`composable`: PUT _index_template (Elasticsearch 7.8+, OpenSearch). `legacy`: PUT \
         _template, for older clusters.",
    ))
}

/// Registers `output elasticsearch`.
pub fn register(registry: &mut Registry) {
    registry.add_output(spec(), |params: &Params, ctx: &BuildContext| {
        Ok(Box::new(ElasticsearchOutput::from_params(params, ctx)?) as Box<dyn Output>)
    });
}

/// Credentials, resolved when the output is built.
#[derive(Debug, Clone)]
enum Auth {
    None,
    Basic {
        user: String,
        password: Option<String>,
        password_file: Option<std::path::PathBuf>,
    },
    ApiKey(String),
}

/// The configured output; talks to the cluster from its first write on.
pub struct ElasticsearchOutput {
    id: String,
    encoder: Arc<Encoder>,
    client_config: ClientConfig,
    auth: Auth,
    bulk_path: String,
    gzip: bool,
    workers: usize,
    template: Option<TemplateSpec>,
    /// Built on the first write: a client needs a Tokio runtime, and
    /// factories also run in `ulog check`.
    client: Option<EsClient>,
    template_installed: bool,
}

impl ElasticsearchOutput {
    /// Builds the output from validated parameters. Reads no file and
    /// connects nowhere.
    ///
    /// # Errors
    /// A host that is not an http(s) URL, an index name no cluster would
    /// accept, conflicting options (user and api_key, data_stream with
    /// `index` op type or another time field, a template without a safe
    /// pattern).
    pub fn from_params(params: &Params, ctx: &BuildContext) -> Result<Self, BuildError> {
        let mut hosts = Vec::new();
        for h in params.str_list("hosts")? {
            let h = h.trim_end_matches('/').to_string();
            // Parsed as the `elasticsearch` crate will parse it, so a host
            // accepted here is one the client can be built for.
            let url = Url::parse(&h)
                .map_err(|e| BuildError::param("hosts", format!("{h:?} is not a URL: {e}")))?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty)
            {
                return Err(BuildError::param(
                    "hosts",
                    format!("{h:?} must be http://host:port or https://host:port"),
                ));
            }
            if url.query().is_some() || url.fragment().is_some() {
                return Err(BuildError::param(
                    "hosts",
                    format!("{h:?}: a host URL cannot have a query or a fragment"),
                ));
            }
            if !url.username().is_empty() || url.password().is_some() {
                return Err(BuildError::param(
                    "hosts",
                    format!(
                        "{:?}: put credentials in `user` and `password`, not in the URL",
                        url.host_str().unwrap_or_default()
                    ),
                ));
            }
            hosts.push(h);
        }
        if hosts.is_empty() {
            return Err(BuildError::param("hosts", "needs at least one host"));
        }
        let data_stream = params.opt_str("data_stream")?;
        let index_text = params.opt_str("index")?;
        let op_type = match params.str("op_type")? {
            "index" => OpType::Index,
            _ => OpType::Create,
        };
        let time_key = params.str("time_key")?.to_string();
        if time_key.is_empty() {
            return Err(BuildError::param("time_key", "must not be empty"));
        }
        let index = match (data_stream, index_text) {
            (Some(_), Some(_)) => {
                return Err(BuildError::param(
                    "data_stream",
                    "set either `index` or `data_stream`, not both",
                ))
            }
            (Some(ds), None) => {
                if op_type != OpType::Create {
                    return Err(BuildError::param(
                        "op_type",
                        "a data stream takes only `create`",
                    ));
                }
                if time_key != "@timestamp" {
                    return Err(BuildError::param(
                        "time_key",
                        "a data stream needs the time in @timestamp",
                    ));
                }
                IndexName::parse("data_stream", ds)?
            }
            (None, text) => IndexName::parse("index", text.unwrap_or(DEFAULT_INDEX))?,
        };
        let param_name = if data_stream.is_some() {
            "data_stream"
        } else {
            "index"
        };
        let user = params.opt_str("user")?;
        let password = params.opt_str("password")?;
        let password_file = params.opt_str("password_file")?;
        let api_key = params.opt_str("api_key")?;
        let auth = match (user, api_key) {
            (Some(_), Some(_)) => {
                return Err(BuildError::param(
                    "api_key",
                    "set either `user`/`password` or `api_key`, not both",
                ))
            }
            (Some(user), None) => {
                if password.is_some() && password_file.is_some() {
                    return Err(BuildError::param(
                        "password_file",
                        "set either `password` or `password_file`, not both",
                    ));
                }
                Auth::Basic {
                    user: user.to_string(),
                    password: password.map(str::to_string),
                    password_file: password_file.map(|p| ctx.resolve(p)),
                }
            }
            (None, Some(key)) => {
                if key.is_empty() {
                    return Err(BuildError::param("api_key", "is empty"));
                }
                // It goes into a header as it is (the crate would panic on
                // a value no header can carry).
                if !key.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(BuildError::param(
                        "api_key",
                        "must be the base64 `encoded` form: letters, digits, + / = only",
                    ));
                }
                Auth::ApiKey(key.to_string())
            }
            (None, None) => {
                if password.is_some() || password_file.is_some() {
                    return Err(BuildError::param("user", "a password needs a `user`"));
                }
                Auth::None
            }
        };
        let precision = match params.str("time_precision")? {
            "micros" => TimePrecision::Micros,
            "nanos" => TimePrecision::Nanos,
            _ => TimePrecision::Millis,
        };
        let tag_key = params.opt_str("tag_key")?.map(str::to_string);
        let workers = params.usize("workers")?;
        if workers == 0 {
            return Err(BuildError::param("workers", "must be at least 1"));
        }
        let timeout = params.duration("timeout")?;
        if timeout.is_zero() {
            return Err(BuildError::param("timeout", "must be more than 0"));
        }
        let template_source = match (
            params.opt_str("template")?,
            params.opt_str("template_file")?,
        ) {
            (Some(_), Some(_)) => {
                return Err(BuildError::param(
                    "template_file",
                    "set either `template` or `template_file`, not both",
                ))
            }
            (Some(_), None) => Some(TemplateSource::Trial),
            (None, Some(f)) => Some(TemplateSource::File(ctx.resolve(f))),
            (None, None) => None,
        };
        let api = match params.str("template_api")? {
            "legacy" => TemplateApi::Legacy,
            _ => TemplateApi::Composable,
        };
        let template = match template_source {
            None => None,
            Some(source) => {
                if data_stream.is_some() && api == TemplateApi::Legacy {
                    return Err(BuildError::param(
                        "template_api",
                        "data streams need the composable template API",
                    ));
                }
                let pattern = match params.opt_str("template_pattern")? {
                    Some(p) => p.to_string(),
                    None => index.pattern().ok_or_else(|| {
                        BuildError::param(
                            param_name,
                            "starts with a placeholder or date, so no safe template pattern can \
                             be derived from it: set `template_pattern`",
                        )
                    })?,
                };
                let name = params.str("template_name")?;
                if name.is_empty() || name.contains(['/', '?', '#', ' ']) {
                    return Err(BuildError::param(
                        "template_name",
                        format!("{name:?} is not a valid template name"),
                    ));
                }
                Some(TemplateSpec {
                    name: name.to_string(),
                    source,
                    api,
                    patterns: vec![pattern],
                    priority: params.int("template_priority")?,
                    data_stream: data_stream.is_some(),
                    time_key: time_key.clone(),
                    time_nanos: precision == TimePrecision::Nanos,
                    tag_key: tag_key.clone(),
                })
            }
        };
        let mut bulk_path = format!("/_bulk?{FILTER_PATH}");
        if let Some(p) = params.opt_str("pipeline")? {
            if p.is_empty()
                || !p
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(BuildError::param(
                    "pipeline",
                    format!("{p:?} is not a pipeline name (letters, digits, - _ .)"),
                ));
            }
            bulk_path.push_str("&pipeline=");
            bulk_path.push_str(p);
        }
        let backoff = params.duration("host_backoff")?;
        let backoff_max = params.duration("host_backoff_max")?.max(backoff);
        Ok(Self {
            id: ctx.id.clone(),
            encoder: Arc::new(Encoder {
                index,
                op_type,
                id_key: params.opt_str("id_key")?.map(str::to_string),
                time_key,
                precision,
                tag_key,
                max_events: params.usize("bulk_max_events")?,
                max_bytes: usize::try_from(params.size("bulk_max_bytes")?).unwrap_or(usize::MAX),
            }),
            client_config: ClientConfig {
                hosts,
                credentials: None,
                ca_file: params.opt_str("tls_ca_file")?.map(|p| ctx.resolve(p)),
                tls_verify: params.bool("tls_verify")?,
                timeout,
                backoff,
                backoff_max,
            },
            auth,
            bulk_path,
            gzip: params.bool("compress")?,
            workers,
            template,
            client: None,
            template_installed: false,
        })
    }

    /// The client, built on first use (reading the password file and the
    /// CA file then).
    fn client(&mut self) -> Result<EsClient, String> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let mut config = self.client_config.clone();
        config.credentials = credentials(&self.auth)?;
        let client = EsClient::new(&config)?;
        self.client = Some(client.clone());
        Ok(client)
    }

    /// Installs the index template, once per process.
    async fn install_template(&mut self, client: &EsClient) -> Result<(), Delivery> {
        let Some(t) = &self.template else {
            return Ok(());
        };
        let body = t.body().map_err(|e| Delivery::Retry(PluginError::new(e)))?;
        let what = format!("installing index template {:?}", t.name);
        match client
            .send(
                Method::Put,
                &t.path(),
                "application/json",
                false,
                Bytes::from(body),
            )
            .await
        {
            Sent::Answer { status, .. } if status.is_success() => {
                info!(output = %self.id, template = %t.name, patterns = ?t.patterns, "index template installed");
                self.template_installed = true;
                Ok(())
            }
            Sent::Answer { status, body, host } => {
                let message = format!(
                    "{what} on {}: {status}: {}",
                    client.host(host),
                    describe_error_body(&body)
                );
                Err(if retryable_status(status.as_u16()) {
                    Delivery::Retry(PluginError::new(message))
                } else {
                    Delivery::Rejected(PluginError::new(message))
                })
            }
            Sent::Unreachable(e) => Err(Delivery::Retry(PluginError::new(format!("{what}: {e}")))),
        }
    }
}

/// The crate's credentials for `auth` (it writes the `Authorization`
/// header from them); reads a password file.
fn credentials(auth: &Auth) -> Result<Option<Credentials>, String> {
    Ok(match auth {
        Auth::None => None,
        Auth::ApiKey(k) => Some(Credentials::EncodedApiKey(k.clone())),
        Auth::Basic {
            user,
            password,
            password_file,
        } => {
            let password = match (password, password_file) {
                (Some(p), _) => p.clone(),
                (None, Some(path)) => {
                    let text = std::fs::read_to_string(path).map_err(|e| {
                        format!("reading the password file {}: {e}", path.display())
                    })?;
                    let t = text.strip_suffix('\n').unwrap_or(&text);
                    t.strip_suffix('\r').unwrap_or(t).to_string()
                }
                (None, None) => String::new(),
            };
            Some(Credentials::Basic(user.clone(), password))
        }
    })
}

/// How one body fared.
enum BodyOutcome {
    /// Per-document failures (positions in the body); empty when all are in.
    Items(Vec<response::ItemError>),
    /// The whole request failed: retry it, or it was refused.
    Whole { retryable: bool, reason: String },
}

/// Sends one body and reads the answer.
async fn send_body(
    client: EsClient,
    path: Arc<str>,
    bytes: Vec<u8>,
    sent: usize,
    compress: bool,
    create: bool,
) -> BodyOutcome {
    let raw_len = bytes.len();
    let payload = if !compress {
        Bytes::from(bytes)
    } else if raw_len >= GZIP_OFF_THREAD {
        match tokio::task::spawn_blocking(move || gzip(&bytes)).await {
            Ok(Ok(b)) => Bytes::from(b),
            Ok(Err(e)) => return whole_retry(format!("compressing the body: {e}")),
            Err(e) => return whole_retry(format!("compressing the body: {e}")),
        }
    } else {
        match gzip(&bytes) {
            Ok(b) => Bytes::from(b),
            Err(e) => return whole_retry(format!("compressing the body: {e}")),
        }
    };
    match client
        .send(
            Method::Post,
            &path,
            "application/x-ndjson",
            compress,
            payload,
        )
        .await
    {
        Sent::Unreachable(e) => whole_retry(e),
        Sent::Answer { status, body, host } if status == StatusCode::OK => {
            debug!(host = %client.host(host), documents = sent, bytes = raw_len, "bulk request answered");
            match response::parse(&body, sent, create) {
                Ok(items) => BodyOutcome::Items(items),
                Err(e) => whole_retry(format!("{}: {e}", client.host(host))),
            }
        }
        Sent::Answer { status, body, host } => BodyOutcome::Whole {
            retryable: retryable_status(status.as_u16()),
            reason: format!(
                "{} answered {status} to _bulk: {}",
                client.host(host),
                describe_error_body(&body)
            ),
        },
    }
}

fn whole_retry(reason: String) -> BodyOutcome {
    BodyOutcome::Whole {
        retryable: true,
        reason,
    }
}

#[async_trait]
impl Output for ElasticsearchOutput {
    async fn write(&mut self, batch: &Batch) -> Delivery {
        if batch.is_empty() {
            return Delivery::Delivered;
        }
        let client = match self.client() {
            Ok(c) => c,
            Err(e) => return Delivery::Retry(PluginError::new(e)),
        };
        if !self.template_installed {
            if let Err(d) = self.install_template(&client).await {
                return d;
            }
        }
        let (bodies, encode_failures) = self.encoder.bodies(batch);
        let mut failures: Vec<ItemFailure> = encode_failures
            .into_iter()
            .map(|f| ItemFailure {
                index: f.index,
                error: PluginError::new(f.reason),
                retryable: false,
            })
            .collect();
        let create = self.encoder.op_type == OpType::Create;
        let path: Arc<str> = Arc::from(self.bulk_path.as_str());
        let outcomes: Vec<(Vec<usize>, BodyOutcome)> = if bodies.len() == 1 {
            let Body { events, bytes } =
                bodies.into_iter().next().unwrap_or_else(|| unreachable!());
            let n = events.len();
            let outcome = send_body(client, path, bytes, n, self.gzip, create).await;
            vec![(events, outcome)]
        } else {
            // Several bodies: each its own task (so gzip and answer parsing
            // use every core), at most `workers` in flight.
            let permits = Arc::new(Semaphore::new(self.workers));
            let mut tasks = tokio::task::JoinSet::new();
            let mut events_of = Vec::with_capacity(bodies.len());
            for (k, Body { events, bytes }) in bodies.into_iter().enumerate() {
                let n = events.len();
                events_of.push(Some(events));
                let (client, path, permits, gzip) =
                    (client.clone(), path.clone(), permits.clone(), self.gzip);
                tasks.spawn(async move {
                    let _permit = permits.acquire_owned().await;
                    (k, send_body(client, path, bytes, n, gzip, create).await)
                });
            }
            let mut out = Vec::with_capacity(events_of.len());
            while let Some(joined) = tasks.join_next().await {
                match joined {
                    Ok((k, outcome)) => {
                        if let Some(events) = events_of[k].take() {
                            out.push((events, outcome));
                        }
                    }
                    Err(e) => {
                        // A panicked task: its body's fate is unknown, so
                        // it is sent again (ids make that safe).
                        debug!(output = %self.id, error = %e, "a bulk task failed");
                    }
                }
            }
            for events in events_of.into_iter().flatten() {
                out.push((
                    events,
                    whole_retry("the bulk request's task stopped".to_string()),
                ));
            }
            out
        };
        let encode_failed = failures.len();
        let bodies_total = outcomes.len();
        let mut whole: Vec<(bool, String)> = Vec::new();
        for (events, outcome) in outcomes {
            match outcome {
                BodyOutcome::Items(items) => {
                    failures.extend(items.into_iter().map(|it| ItemFailure {
                        index: events[it.position],
                        error: PluginError::new(it.reason),
                        retryable: it.retryable,
                    }))
                }
                BodyOutcome::Whole { retryable, reason } => {
                    failures.extend(events.iter().map(|&index| ItemFailure {
                        index,
                        error: PluginError::new(reason.clone()),
                        retryable,
                    }));
                    whole.push((retryable, reason));
                }
            }
        }
        if failures.is_empty() {
            return Delivery::Delivered;
        }
        // Every request failed as a whole: one answer for the batch, so the
        // engine logs one reason (and retries the batch as it was).
        if encode_failed == 0 && whole.len() == bodies_total {
            if whole.iter().all(|w| w.0) {
                return Delivery::Retry(PluginError::new(whole.swap_remove(0).1));
            }
            if bodies_total == 1 {
                return Delivery::Rejected(PluginError::new(whole.swap_remove(0).1));
            }
        }
        failures.sort_by_key(|f| f.index);
        Delivery::Partial(failures)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(given: &[(&str, Value)]) -> Result<ElasticsearchOutput, BuildError> {
        let all: Vec<(String, Value)> = given
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        let params = spec()
            .validate(&all)
            .map_err(|e| BuildError::new(format!("{e:?}")))?;
        ElasticsearchOutput::from_params(
            &params,
            &BuildContext {
                id: "es".into(),
                base_dir: "/etc/ulog".into(),
            },
        )
    }

    fn param_of(given: &[(&str, Value)]) -> Option<String> {
        build(given).err().and_then(|e| e.param)
    }

    #[test]
    fn defaults_build() {
        let o = build(&[]).unwrap();
        assert_eq!(o.client_config.hosts, ["http://127.0.0.1:9200"]);
        assert_eq!(
            o.bulk_path,
            "/_bulk?filter_path=errors,items.*.status,items.*.error"
        );
        assert_eq!(o.encoder.op_type, OpType::Create);
        assert_eq!(o.encoder.max_events, 1000);
        assert!(o.template.is_none());
    }

    #[test]
    fn conflicting_or_bad_settings_are_build_errors() {
        let s = |v: &str| Value::from(v);
        assert_eq!(
            param_of(&[("hosts", Value::List(vec![s("ftp://x")]))]).as_deref(),
            Some("hosts")
        );
        assert_eq!(
            param_of(&[("hosts", Value::List(vec![]))]).as_deref(),
            Some("hosts")
        );
        assert_eq!(param_of(&[("index", s("Logs"))]).as_deref(), Some("index"));
        assert_eq!(
            param_of(&[("index", s("a")), ("data_stream", s("b"))]).as_deref(),
            Some("data_stream")
        );
        assert_eq!(
            param_of(&[("data_stream", s("logs-x")), ("op_type", s("index"))]).as_deref(),
            Some("op_type")
        );
        assert_eq!(
            param_of(&[("data_stream", s("logs-x")), ("time_key", s("t"))]).as_deref(),
            Some("time_key")
        );
        assert_eq!(
            param_of(&[("user", s("u")), ("api_key", s("k"))]).as_deref(),
            Some("api_key")
        );
        assert_eq!(param_of(&[("password", s("p"))]).as_deref(), Some("user"));
        assert_eq!(
            param_of(&[("index", s("{tag}-%Y")), ("template", s("trial"))]).as_deref(),
            Some("index")
        );
        assert!(build(&[
            ("index", s("{tag}-%Y")),
            ("template", s("trial")),
            ("template_pattern", s("home.*"))
        ])
        .is_ok());
        assert_eq!(
            param_of(&[("workers", Value::Int(0))]).as_deref(),
            Some("workers")
        );
        assert_eq!(
            param_of(&[("pipeline", s("a b"))]).as_deref(),
            Some("pipeline")
        );
        assert_eq!(
            param_of(&[
                ("data_stream", s("logs-x")),
                ("template", s("trial")),
                ("template_api", s("legacy"))
            ])
            .as_deref(),
            Some("template_api")
        );
    }

    #[test]
    fn templates_get_the_derived_pattern_and_relative_files_resolve() {
        let o = build(&[
            ("index", Value::from("mk-%Y.%m.%d")),
            ("template_file", Value::from("mk-template.json")),
            ("pipeline", Value::from("geo-1")),
        ])
        .unwrap();
        let t = o.template.unwrap();
        assert_eq!(t.patterns, ["mk-*"]);
        assert_eq!(
            t.source,
            TemplateSource::File("/etc/ulog/mk-template.json".into())
        );
        assert!(o.bulk_path.ends_with("&pipeline=geo-1"));
    }

    #[test]
    fn https_hosts_read_the_ca_file_on_first_use_and_name_it() {
        let mut o = build(&[
            ("hosts", Value::List(vec![Value::from("https://es1:9200")])),
            ("tls_ca_file", Value::from("certs/missing-ca.pem")),
        ])
        .unwrap();
        let e = o.client().err().unwrap();
        assert!(e.contains("/etc/ulog/certs/missing-ca.pem"), "{e}");
        // Verification off reads no CA file; plain http reads none either.
        let mut o = build(&[
            ("hosts", Value::List(vec![Value::from("https://es1:9200")])),
            ("tls_ca_file", Value::from("certs/missing-ca.pem")),
            ("tls_verify", Value::Bool(false)),
        ])
        .unwrap();
        assert!(o.client().is_ok());
        let mut o = build(&[("tls_ca_file", Value::from("certs/missing-ca.pem"))]).unwrap();
        assert!(o.client().is_ok());
    }

    #[test]
    fn basic_and_api_key_credentials() {
        // The header the crate writes from these is checked in client.rs.
        let shown = |c: Option<Credentials>| {
            c.map(|c| match c {
                Credentials::Basic(u, p) => format!("basic {u}:{p}"),
                Credentials::EncodedApiKey(k) => format!("api key {k}"),
                _ => "other".to_string(),
            })
        };
        let auth = |given: &[(&str, Value)]| credentials(&build(given).unwrap().auth).map(shown);
        assert_eq!(
            auth(&[("user", "elastic".into()), ("password", "changeme".into())]).unwrap(),
            Some("basic elastic:changeme".to_string())
        );
        assert_eq!(
            auth(&[(
                "api_key",
                "VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw==".into()
            )])
            .unwrap(),
            Some(
                "api key VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw==".to_string()
            )
        );
        assert_eq!(auth(&[]).unwrap(), None);
        assert_eq!(
            param_of(&[("api_key", "two\nlines".into())]).as_deref(),
            Some("api_key")
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        let from_file = auth(&[
            ("user", "u".into()),
            ("password_file", file.to_str().unwrap().into()),
        ]);
        assert_eq!(from_file.unwrap(), Some("basic u:s3cret".to_string()));
        let missing = auth(&[
            ("user", "u".into()),
            ("password_file", "/nonexistent/pw".into()),
        ]);
        assert!(missing.unwrap_err().contains("/nonexistent/pw"));
    }

    #[test]
    fn host_urls_are_checked_as_the_client_parses_them() {
        let hosts = |h: &str| param_of(&[("hosts", Value::List(vec![Value::from(h)]))]);
        assert_eq!(hosts("http://es1:9200?x=1").as_deref(), Some("hosts"));
        assert_eq!(hosts("http://u:p@es1:9200").as_deref(), Some("hosts"));
        assert_eq!(hosts("es1:9200").as_deref(), Some("hosts"));
        let o = build(&[(
            "hosts",
            Value::List(vec![Value::from("https://proxy.example.org/es/")]),
        )])
        .unwrap();
        assert_eq!(o.client_config.hosts, ["https://proxy.example.org/es"]);
    }
}
