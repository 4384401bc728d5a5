//! `output mongodb`: unordered `insert_many` batches, idempotent by `_id`.
//!
//! ```text
//! match "home.**" mongodb {
//!   uri        = "mongodb://ulog:${MONGO_PASSWORD}@db1,db2/?replicaSet=rs0&tls=true"
//!   database   = "household"
//!   collection = "{tag_parts[2]}_%Y%m"
//! }
//! ```
//!
//! Each document's `_id` is the event's id (a UUIDv7 given when ulog
//! accepted the event, kept through retries and buffers), so writing a
//! batch again — after a timeout, a lost connection, a restart that replays
//! a buffer — stores nothing twice: the server answers "duplicate key"
//! (code 11000) for what it already has, and that counts as delivered.
//!
//! A batch is grouped by collection name and cut into `batch_size`
//! sub-batches, `workers` of which are in flight at once; each is an
//! unordered `insert_many`, so one refused document does not stop the
//! others. The answers map onto [`Delivery`]: a document the server refused
//! fails alone (to `errors`, with the server's reason); a server that is
//! away or not primary makes the batch retried.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::time::Duration;

use bson::RawDocument;
use futures_util::stream::{self, StreamExt};
use mongodb::options::{
    Acknowledgment, ClientOptions, ConnectionString, HostInfo, InsertManyOptions, WriteConcern,
};
use mongodb::{Client, Database};
use tracing::{debug, info, warn};
use ulog_engine::{
    async_trait, Batch, BuildContext, BuildError, Delivery, ItemFailure, Output, ParamKind,
    ParamSpec, Params, PluginError, PluginKind, PluginSpec, Registry, Value,
};

use crate::collection::{check_database, CollectionTemplate};
use crate::encode::{encode_event, EncodeOptions, IdSource};
use crate::errors::{classify_insert, InsertOutcome};
use crate::setup::{self, Layout, Setup};

/// MongoDB's (and FerretDB's) largest document, in bytes.
pub const MAX_DOCUMENT: usize = 16 * 1024 * 1024;

/// The `mongodb` output's declaration: every option, once.
pub fn spec() -> PluginSpec {
    PluginSpec::new(
        PluginKind::Output,
        "mongodb",
        "Inserts events into MongoDB (or FerretDB) collections named per event, in unordered insert_many batches; the event id is the _id, so a replayed batch stores nothing twice.",
    )
    .param(ParamSpec::with_default(
        "uri",
        ParamKind::Str,
        "mongodb://127.0.0.1:27017/",
        "Connection string (`mongodb://` or `mongodb+srv://`): hosts, credentials, TLS (`tls=true`, `tlsCAFile=...`), replica set and timeouts all go here.",
    ))
    .param(ParamSpec::optional(
        "database",
        ParamKind::Str,
        "Database to write to; defaults to the one named in the URI's path.",
    ))
    .param(ParamSpec::with_default(
        "collection",
        ParamKind::Str,
        "{tag}",
        "Collection name template: {tag}, {tag_path}, {tag_parts[N]}, {field} / {a.b} (a record field), and strftime of the event time (UTC) in the text between them (`events_%Y%m`). An event whose name cannot be built goes to `errors`.",
    ))
    .param(ParamSpec::with_default(
        "id_format",
        ParamKind::OneOf(&["uuid", "string"]),
        "uuid",
        "How the event id is stored as `_id`: `uuid` (BSON binary subtype 4, 16 bytes) or `string` (its 36-character text).",
    ))
    .param(ParamSpec::optional(
        "id_key",
        ParamKind::Str,
        "Take `_id` from this top-level record field instead of the event id (the field is kept too); an event without it goes to `errors`.",
    ))
    .param(ParamSpec::with_default(
        "time_key",
        ParamKind::Str,
        "time",
        "Field for the event time as a BSON date (millisecond precision); a record field of that name is replaced. Empty to leave the time out.",
    ))
    .param(ParamSpec::optional(
        "tag_key",
        ParamKind::Str,
        "Field for the event's tag; a record field of that name is replaced.",
    ))
    .param(ParamSpec::with_default(
        "batch_size",
        ParamKind::Int,
        10_000i64,
        "Documents per insert_many: a larger ulog batch is cut into sub-batches of this size (servers take large commands best: FerretDB stores 10,000 at a time about 1.4 times as fast as 1,000).",
    ))
    .param(ParamSpec::with_default(
        "workers",
        ParamKind::Int,
        2i64,
        "Sub-batches of one ulog batch in flight at once (each on its own connection).",
    ))
    .param(ParamSpec::optional(
        "write_concern",
        ParamKind::Any,
        "Write concern `w`: \"majority\", a number of nodes (1, 2, ... or \"1\"), or a custom tag-set name. Unset: the server's default. 0 is refused: an unacknowledged write cannot be confirmed.",
    ))
    .param(ParamSpec::optional(
        "journal",
        ParamKind::Bool,
        "Write concern `j`: wait until the write is in the on-disk journal.",
    ))
    .param(ParamSpec::optional(
        "write_timeout",
        ParamKind::Duration,
        "Write concern `wtimeout`: how long the server waits for the concern before answering with an error (the batch is then retried).",
    ))
    .param(ParamSpec::optional(
        "server_selection_timeout",
        ParamKind::Duration,
        "How long to wait for a usable server before the batch is retried later; overrides the URI's serverSelectionTimeoutMS (driver default 30s).",
    ))
    .param(ParamSpec::with_default(
        "timeout",
        ParamKind::Duration,
        Duration::from_secs(60),
        "Longest time for one batch (every sub-batch); past it the batch is retried (what was written is not stored twice).",
    ))
    .param(ParamSpec::optional(
        "timeseries",
        ParamKind::Map,
        "Create each new collection as a time-series collection: { time_field (must be time_key), meta_field, granularity = \"seconds\"|\"minutes\"|\"hours\", expire_after }. MongoDB 5.0+; note that time-series collections have no unique _id, so replays are not deduplicated there.",
    ))
    .param(ParamSpec::optional(
        "capped_size",
        ParamKind::Size,
        "Create each new collection as a capped collection of this many bytes.",
    ))
    .param(ParamSpec::optional(
        "capped_max",
        ParamKind::Int,
        "With capped_size: also cap the number of documents.",
    ))
    .param(ParamSpec::optional(
        "indexes",
        ParamKind::List(Box::new(ParamKind::Map)),
        "Indexes to create on each new collection: [{ keys = { household = 1, time = -1 }, unique = false, sparse = false, name = \"...\", expire_after = 30d }]; key values 1, -1, \"text\", \"hashed\", \"2dsphere\", \"2d\".",
    ))
}

/// Registers `output mongodb`.
pub fn register(registry: &mut Registry) {
    registry.add_output(spec(), |params, ctx| {
        Ok(Box::new(MongoOutput::from_params(params, ctx)?) as Box<dyn Output>)
    });
}

/// A built `mongodb` output; connects on its first batch.
pub struct MongoOutput {
    uri: String,
    /// The hosts, for logs and errors (the URI may hold a password).
    target: String,
    database: String,
    collection: CollectionTemplate,
    encode: EncodeOptions,
    batch_size: usize,
    workers: usize,
    write_concern: Option<WriteConcern>,
    server_selection_timeout: Option<Duration>,
    timeout: Duration,
    setup: Setup,
    client: Option<Client>,
    db: Option<Database>,
    /// Collections whose setup is done (only tracked when there is one).
    prepared: HashSet<String>,
}

impl MongoOutput {
    /// Builds the output from validated parameters (no I/O: the URI is
    /// checked, DNS and the server are left for the first batch).
    pub fn from_params(params: &Params, _ctx: &BuildContext) -> Result<Self, BuildError> {
        let uri = params.str("uri")?.to_string();
        let parsed = ConnectionString::parse(&uri).map_err(|e| {
            BuildError::param("uri", format!("not a MongoDB connection string: {e}"))
        })?;
        let target = match &parsed.host_info {
            HostInfo::HostIdentifiers(hosts) => hosts
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
            HostInfo::DnsRecord(name) => format!("mongodb+srv://{name}"),
            _ => "MongoDB".to_string(),
        };
        let database = match params.opt_str("database")? {
            Some(d) => d.to_string(),
            None => parsed.default_database.clone().ok_or_else(|| {
                BuildError::param(
                    "database",
                    "name the database here or in the uri's path (mongodb://host/DATABASE)",
                )
            })?,
        };
        check_database(&database).map_err(|m| BuildError::param("database", m))?;
        let collection = CollectionTemplate::parse(params.str("collection")?)
            .map_err(|m| BuildError::param("collection", m))?;
        let non_empty = |name: &str| -> Result<Option<String>, BuildError> {
            Ok(params
                .opt_str(name)?
                .filter(|s| !s.is_empty())
                .map(str::to_string))
        };
        let time_key = non_empty("time_key")?;
        let id = match (non_empty("id_key")?, params.str("id_format")?) {
            (Some(field), _) => IdSource::Field(field),
            (None, "string") => IdSource::Text,
            (None, _) => IdSource::Uuid,
        };
        let encode = EncodeOptions {
            id,
            time_key: time_key.clone(),
            tag_key: non_empty("tag_key")?,
        };
        let positive = |name: &str, max: usize| -> Result<usize, BuildError> {
            let n = params.usize(name)?;
            if n == 0 || n > max {
                return Err(BuildError::param(
                    name,
                    format!("must be 1 to {max}, got {n}"),
                ));
            }
            Ok(n)
        };
        let layout = match (params.get("timeseries"), params.get("capped_size")) {
            (Some(_), Some(_)) => {
                return Err(BuildError::param(
                    "capped_size",
                    "a collection cannot be both time-series and capped",
                ))
            }
            (Some(_), None) => setup::timeseries(params.map("timeseries")?, time_key.as_deref())?,
            (None, Some(_)) => Layout::Capped {
                size: params.size("capped_size")?,
                max: match params.opt_int("capped_max")? {
                    Some(m) if m > 0 => Some(m as u64),
                    Some(m) => {
                        return Err(BuildError::param(
                            "capped_max",
                            format!("must be positive, got {m}"),
                        ))
                    }
                    None => None,
                },
            },
            (None, None) => {
                if params.get("capped_max").is_some() {
                    return Err(BuildError::param("capped_max", "needs capped_size"));
                }
                Layout::Plain
            }
        };
        Ok(Self {
            uri,
            target,
            database,
            collection,
            encode,
            batch_size: positive("batch_size", 100_000)?,
            workers: positive("workers", 64)?,
            write_concern: write_concern(params)?,
            server_selection_timeout: params.opt_duration("server_selection_timeout")?,
            timeout: params.duration("timeout")?,
            setup: Setup {
                layout,
                indexes: setup::indexes(params.list("indexes")?)?,
            },
            client: None,
            db: None,
            prepared: HashSet::new(),
        })
    }

    /// The database handle, creating the client on first use. The driver
    /// connects lazily and reconnects by itself; this only fails on a URI
    /// that needs DNS (`mongodb+srv://`) when DNS fails.
    async fn database(&mut self) -> Result<Database, PluginError> {
        if let Some(db) = &self.db {
            return Ok(db.clone());
        }
        let mut options = ClientOptions::parse(self.uri.as_str()).await.map_err(|e| {
            PluginError::with_source(format!("resolving MongoDB at {}", self.target), e)
        })?;
        if let Some(t) = self.server_selection_timeout {
            options.server_selection_timeout = Some(t);
        }
        options.app_name.get_or_insert_with(|| "ulog".to_string());
        options.max_pool_size = Some(options.max_pool_size.unwrap_or(10).max(self.workers as u32));
        let client = Client::with_options(options).map_err(|e| {
            PluginError::with_source(format!("connecting to MongoDB at {}", self.target), e)
        })?;
        let db = client.database(&self.database);
        info!(target_hosts = %self.target, database = %self.database, "mongodb output ready");
        self.client = Some(client);
        self.db = Some(db.clone());
        Ok(db)
    }

    /// Groups the batch by collection and encodes each event; events that
    /// cannot be written at all go to `failures`.
    fn encode(&self, batch: &Batch, failures: &mut Vec<ItemFailure>) -> Vec<Group> {
        let tag = batch.tag.as_str();
        let mut groups: Vec<Group> = Vec::new();
        let mut by_name: HashMap<String, usize> = HashMap::new();
        let empty = serde_json::Map::new();
        // A template of the tag alone names the whole batch's collection;
        // one of the time, each second's. Only fields need every event.
        let mut last: Option<(i64, usize)> = None;
        let granularity = self.collection.time_granularity();
        let fail = |failures: &mut Vec<ItemFailure>, index, reason: String| {
            failures.push(ItemFailure {
                index,
                error: PluginError::new(reason),
                retryable: false,
            })
        };
        for (index, event) in batch.events.iter().enumerate() {
            let slot = event.time.unix_nanos().div_euclid(granularity);
            let cached = match last {
                Some((s, g))
                    if !self.collection.reads_fields()
                        && (!self.collection.reads_time() || s == slot) =>
                {
                    Some(g)
                }
                _ => None,
            };
            let group = match cached {
                Some(g) => g,
                None => {
                    let record = if self.collection.reads_fields() {
                        event.record.to_map()
                    } else {
                        std::borrow::Cow::Borrowed(&empty)
                    };
                    let name =
                        match self
                            .collection
                            .render(&self.database, tag, &record, event.time)
                        {
                            Ok(n) => n,
                            Err(reason) => {
                                fail(failures, index, reason);
                                continue;
                            }
                        };
                    *by_name.entry(name).or_insert_with_key(|name| {
                        groups.push(Group {
                            name: name.clone(),
                            // Most batches have one collection: size its buffer
                            // for the rest of the batch; others grow as needed.
                            bytes: if groups.is_empty() {
                                Vec::with_capacity((batch.len() - index) * (raw_len(event) + 64))
                            } else {
                                Vec::new()
                            },
                            docs: Vec::new(),
                            indices: Vec::new(),
                        });
                        groups.len() - 1
                    })
                }
            };
            last = Some((slot, group));
            // Every document of a group goes into one buffer: one allocation
            // per collection and batch, not one per event.
            let g = &mut groups[group];
            let start = g.bytes.len();
            if let Err(reason) = encode_event(&mut g.bytes, event, tag, &self.encode) {
                g.bytes.truncate(start);
                fail(failures, index, reason);
                continue;
            }
            let len = g.bytes.len() - start;
            if len > MAX_DOCUMENT {
                g.bytes.truncate(start);
                fail(
                    failures,
                    index,
                    format!(
                        "the document is {len} bytes, more than MongoDB's limit of {MAX_DOCUMENT} (16 MiB)"
                    ),
                );
                continue;
            }
            g.docs.push(start..start + len);
            g.indices.push(index);
        }
        groups
    }

    /// Prepares new collections, then sends every sub-batch.
    async fn send(&mut self, groups: &[Group]) -> Result<Vec<SubBatch>, PluginError> {
        let db = self.database().await?;
        if !self.setup.is_empty() {
            for g in groups {
                if !self.prepared.contains(&g.name) {
                    setup::prepare(&db, &g.name, &self.setup).await?;
                    self.prepared.insert(g.name.clone());
                }
            }
        }
        let options = InsertManyOptions::builder()
            .ordered(false)
            .write_concern(self.write_concern.clone())
            .build();
        // The futures are made up front (they do nothing until polled) so
        // the stream's type holds no closures over borrowed slices.
        let mut inserts = Vec::new();
        for g in groups {
            let coll = db.collection::<&RawDocument>(&g.name);
            let docs = g.documents();
            for (docs, indices) in docs
                .chunks(self.batch_size)
                .zip(g.indices.chunks(self.batch_size))
            {
                inserts.push(insert(
                    coll.clone(),
                    docs.to_vec(),
                    indices,
                    options.clone(),
                ));
            }
        }
        Ok(stream::iter(inserts)
            .buffer_unordered(self.workers)
            .collect()
            .await)
    }
}

/// One unordered `insert_many`.
async fn insert(
    coll: mongodb::Collection<&RawDocument>,
    docs: Vec<&RawDocument>,
    indices: &[usize],
    options: InsertManyOptions,
) -> SubBatch {
    let result = coll.insert_many(docs).with_options(options).await;
    SubBatch {
        collection: coll.name().to_string(),
        indices: indices.to_vec(),
        error: result.err(),
    }
}

/// The events of one batch bound for one collection.
struct Group {
    name: String,
    /// The encoded documents, one after the other.
    bytes: Vec<u8>,
    /// Where each document is in `bytes`.
    docs: Vec<Range<usize>>,
    /// Each document's index in the batch.
    indices: Vec<usize>,
}

impl Group {
    /// The documents as the driver takes them.
    fn documents(&self) -> Vec<&RawDocument> {
        self.docs
            .iter()
            // Written by `encode_event` with its length and final NUL, so
            // the check (header and terminator only) cannot fail.
            .filter_map(|r| RawDocument::from_bytes(&self.bytes[r.clone()]).ok())
            .collect()
    }
}

/// One `insert_many` and how it went.
struct SubBatch {
    collection: String,
    indices: Vec<usize>,
    error: Option<mongodb::error::Error>,
}

fn raw_len(event: &ulog_engine::Event) -> usize {
    match &event.record {
        ulog_engine::Record::Raw(b) => b.len(),
        ulog_engine::Record::Map(m) => m.len() * 16,
    }
}

/// Reads `write_concern`, `journal` and `write_timeout`.
fn write_concern(params: &Params) -> Result<Option<WriteConcern>, BuildError> {
    let err = |m: String| BuildError::param("write_concern", m);
    let w = match params.get("write_concern") {
        None => None,
        Some(Value::Str(s)) if s == "majority" => Some(Acknowledgment::Majority),
        Some(Value::Str(s)) if s.parse::<u32>().is_ok() => {
            Some(Acknowledgment::Nodes(s.parse().unwrap_or(1)))
        }
        Some(Value::Str(s)) if !s.is_empty() => Some(Acknowledgment::Custom(s.clone())),
        Some(Value::Int(n)) if *n >= 0 && *n <= i64::from(u32::MAX) => {
            Some(Acknowledgment::Nodes(*n as u32))
        }
        Some(v) => {
            return Err(err(format!(
                "expected \"majority\", a number of nodes or a tag-set name, found {v}"
            )))
        }
    };
    if w == Some(Acknowledgment::Nodes(0)) {
        return Err(err(
            "0 (unacknowledged) cannot confirm a write: use 1 or more, or \"majority\"".into(),
        ));
    }
    let journal = match params.get("journal") {
        Some(_) => Some(params.bool("journal")?),
        None => None,
    };
    let w_timeout = params.opt_duration("write_timeout")?;
    if w.is_none() && journal.is_none() && w_timeout.is_none() {
        return Ok(None);
    }
    let mut wc = WriteConcern::default();
    wc.w = w;
    wc.journal = journal;
    wc.w_timeout = w_timeout;
    Ok(Some(wc))
}

#[async_trait]
impl Output for MongoOutput {
    async fn write(&mut self, batch: &Batch) -> Delivery {
        if batch.is_empty() {
            return Delivery::Delivered;
        }
        let mut failures = Vec::new();
        let groups = self.encode(batch, &mut failures);
        if groups.iter().all(|g| g.docs.is_empty()) {
            return Delivery::Partial(failures);
        }
        let sent = match tokio::time::timeout(self.timeout, self.send(&groups)).await {
            Ok(Ok(sent)) => sent,
            Ok(Err(e)) => {
                warn!(target_hosts = %self.target, error = %e, "mongodb batch to retry");
                return retry_all(e, failures, batch.len());
            }
            Err(_) => {
                let e = PluginError::new(format!(
                    "MongoDB at {} did not take the batch within {:?}",
                    self.target, self.timeout
                ));
                warn!(error = %e, "mongodb batch to retry");
                return retry_all(e, failures, batch.len());
            }
        };
        let refused_before = failures.len();
        let mut duplicates = 0;
        // The first error that failed a whole sub-batch, and whether every
        // failure so far came from such errors with one retryability.
        let mut whole: Option<(PluginError, bool)> = None;
        let mut only_whole = failures.is_empty();
        for sub in sent {
            let Some(error) = sub.error else { continue };
            let context = format!("inserting into {}.{}", self.database, sub.collection);
            match classify_insert(&error, sub.indices.len()) {
                InsertOutcome::Stored { duplicates: d } => duplicates += d,
                InsertOutcome::Some {
                    failures: docs,
                    duplicates: d,
                } => {
                    duplicates += d;
                    only_whole = false;
                    failures.extend(docs.into_iter().map(|f| ItemFailure {
                        index: sub.indices[f.position],
                        error: PluginError::new(format!("{context}: {}", f.reason)),
                        retryable: f.retryable,
                    }));
                }
                InsertOutcome::Whole { reason, retryable } => {
                    if whole.as_ref().is_some_and(|(_, r)| *r != retryable) {
                        only_whole = false;
                    }
                    failures.extend(sub.indices.iter().map(|&index| ItemFailure {
                        index,
                        error: PluginError::new(format!("{context}: {reason}")),
                        retryable,
                    }));
                    if whole.is_none() {
                        whole = Some((PluginError::with_source(context, error), retryable));
                    }
                }
            }
        }
        if duplicates > 0 {
            debug!(
                duplicates,
                "documents already stored (a replay) counted as delivered"
            );
        }
        if failures.is_empty() {
            return Delivery::Delivered;
        }
        let refused = failures.len() - refused_before;
        if refused > 0 {
            warn!(
                target_hosts = %self.target,
                failed = refused,
                of = batch.len(),
                first = %failures[refused_before].error,
                "mongodb refused documents"
            );
        }
        match whole {
            Some((e, retryable)) if only_whole && failures.len() == batch.len() => {
                if retryable {
                    Delivery::Retry(e)
                } else {
                    Delivery::Rejected(e)
                }
            }
            _ => {
                failures.sort_by_key(|f| f.index);
                Delivery::Partial(failures)
            }
        }
    }

    async fn shutdown(&mut self) -> Result<(), PluginError> {
        self.db = None;
        if let Some(client) = self.client.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), client.shutdown()).await;
            info!(target_hosts = %self.target, "mongodb output disconnected");
        }
        Ok(())
    }
}

/// Nothing was stored: every event is retried, except those refused before
/// sending (which stay refused).
fn retry_all(error: PluginError, mut refused: Vec<ItemFailure>, n: usize) -> Delivery {
    if refused.is_empty() {
        return Delivery::Retry(error);
    }
    let mut is_refused = vec![false; n];
    for f in &refused {
        is_refused[f.index] = true;
    }
    let reason = error.to_string();
    refused.extend((0..n).filter(|i| !is_refused[*i]).map(|index| ItemFailure {
        index,
        error: PluginError::new(reason.clone()),
        retryable: true,
    }));
    refused.sort_by_key(|f| f.index);
    Delivery::Partial(refused)
}
