//! What the output prepares in a collection before its first write:
//! a time-series or capped collection, and indexes.
//!
//! Collections are named per event, so this runs once per collection name
//! the output meets (not once per process). A server that refuses a step
//! because it does not support it (FerretDB has no time-series or capped
//! collections, for one) gets a warning and the events go to a plain
//! collection: losing the layout is better than losing the events. A step
//! that fails for connection reasons is tried again with the batch.

use std::time::Duration;

use bson::{Bson, Document};
use mongodb::options::{IndexOptions, TimeseriesGranularity, TimeseriesOptions};
use mongodb::{Database, IndexModel};
use tracing::{info, warn};
use ulog_engine::{BuildError, PluginError, Value};

use crate::errors::{command_code, setup_retryable, NAMESPACE_EXISTS};

/// How the collection is created.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Layout {
    /// Created implicitly by the first insert.
    Plain,
    /// A time-series collection (MongoDB 5.0+).
    Timeseries {
        time_field: String,
        meta_field: Option<String>,
        granularity: Option<String>,
        expire_after: Option<Duration>,
    },
    /// A capped collection of at most `size` bytes (and `max` documents).
    Capped { size: u64, max: Option<u64> },
}

/// Everything to prepare in each new collection.
#[derive(Debug, Clone)]
pub(crate) struct Setup {
    pub layout: Layout,
    pub indexes: Vec<IndexModel>,
}

impl Setup {
    /// Whether there is anything to do at all.
    pub(crate) fn is_empty(&self) -> bool {
        self.layout == Layout::Plain && self.indexes.is_empty()
    }
}

/// Reads `timeseries = { time_field, meta_field, granularity, expire_after }`.
pub(crate) fn timeseries(
    entries: &[(String, Value)],
    time_key: Option<&str>,
) -> Result<Layout, BuildError> {
    let err = |m: String| BuildError::param("timeseries", m);
    let Some(time_key) = time_key else {
        return Err(err(
            "a time-series collection needs the event time: set `time_key`".into(),
        ));
    };
    let mut time_field = time_key.to_string();
    let mut meta_field = None;
    let mut granularity = None;
    let mut expire_after = None;
    for (key, value) in entries {
        match (key.as_str(), value) {
            ("time_field", Value::Str(s)) => time_field = s.clone(),
            ("meta_field", Value::Str(s)) => meta_field = Some(s.clone()),
            ("granularity", Value::Str(s))
                if ["seconds", "minutes", "hours"].contains(&s.as_str()) =>
            {
                granularity = Some(s.clone())
            }
            ("granularity", v) => {
                return Err(err(format!(
                    "`granularity` must be \"seconds\", \"minutes\" or \"hours\", found {v}"
                )))
            }
            ("expire_after", Value::Duration(d)) => expire_after = Some(*d),
            ("expire_after", Value::Int(s)) if *s > 0 => {
                expire_after = Some(Duration::from_secs(*s as u64))
            }
            ("time_field" | "meta_field", v) => {
                return Err(err(format!("`{key}` must be a string, found {v}")))
            }
            ("expire_after", v) => {
                return Err(err(format!("`expire_after` must be a duration, found {v}")))
            }
            _ => {
                return Err(err(format!(
                    "unknown key `{key}` (known: time_field, meta_field, granularity, expire_after)"
                )))
            }
        }
    }
    if time_field != time_key {
        return Err(err(format!(
            "`time_field` must be the field the event time is written to (`time_key` = {time_key:?}), found {time_field:?}"
        )));
    }
    Ok(Layout::Timeseries {
        time_field,
        meta_field,
        granularity,
        expire_after,
    })
}

/// Reads `indexes = [ { keys = { household = 1, time = -1 }, unique = true } ]`.
pub(crate) fn indexes(items: &[Value]) -> Result<Vec<IndexModel>, BuildError> {
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            index(item).map_err(|m| BuildError::param("indexes", format!("index {}: {m}", i + 1)))
        })
        .collect()
}

fn index(item: &Value) -> Result<IndexModel, String> {
    let Value::Map(entries) = item else {
        return Err(format!(
            "expected a map like {{ keys = {{ field = 1 }} }}, found {item}"
        ));
    };
    let mut keys = None;
    let mut options = IndexOptions::default();
    for (key, value) in entries {
        match (key.as_str(), value) {
            ("keys", Value::Map(fields)) => keys = Some(index_keys(fields)?),
            ("unique", Value::Bool(b)) => options.unique = Some(*b),
            ("sparse", Value::Bool(b)) => options.sparse = Some(*b),
            ("name", Value::Str(s)) => options.name = Some(s.clone()),
            ("expire_after", Value::Duration(d)) => options.expire_after = Some(*d),
            ("expire_after", Value::Int(s)) if *s >= 0 => {
                options.expire_after = Some(Duration::from_secs(*s as u64))
            }
            ("keys" | "unique" | "sparse" | "name" | "expire_after", v) => {
                return Err(format!("`{key}` has the wrong type ({})", v.type_name()))
            }
            _ => {
                return Err(format!(
                    "unknown key `{key}` (known: keys, unique, sparse, name, expire_after)"
                ))
            }
        }
    }
    let keys = keys.ok_or("`keys` is missing")?;
    Ok(IndexModel::builder().keys(keys).options(options).build())
}

fn index_keys(fields: &[(String, Value)]) -> Result<Document, String> {
    if fields.is_empty() {
        return Err("`keys` is empty".into());
    }
    let mut doc = Document::new();
    for (field, value) in fields {
        let v = match value {
            Value::Int(d @ (1 | -1)) => Bson::Int32(*d as i32),
            Value::Str(s) if ["text", "hashed", "2dsphere", "2d"].contains(&s.as_str()) => Bson::String(s.clone()),
            v => {
                return Err(format!(
                    "key `{field}`: expected 1, -1, \"text\", \"hashed\", \"2dsphere\" or \"2d\", found {v}"
                ))
            }
        };
        doc.insert(field.clone(), v);
    }
    Ok(doc)
}

/// Prepares collection `name` of `db`.
///
/// # Errors
/// Only when the server could not be reached or was not ready: the caller
/// retries the batch. Refusals are logged and passed over.
pub(crate) async fn prepare(db: &Database, name: &str, setup: &Setup) -> Result<(), PluginError> {
    let context = |what: &str| format!("{what} {}.{name}", db.name());
    let created = match &setup.layout {
        Layout::Plain => None,
        Layout::Timeseries {
            time_field,
            meta_field,
            granularity,
            expire_after,
        } => {
            let mut ts = TimeseriesOptions::builder()
                .time_field(time_field.clone())
                .build();
            ts.meta_field = meta_field.clone();
            ts.granularity = granularity.as_deref().map(|g| match g {
                "minutes" => TimeseriesGranularity::Minutes,
                "hours" => TimeseriesGranularity::Hours,
                _ => TimeseriesGranularity::Seconds,
            });
            let mut create = db.create_collection(name).timeseries(ts);
            if let Some(d) = expire_after {
                create = create.expire_after_seconds(*d);
            }
            Some(("time-series", create.await))
        }
        Layout::Capped { size, max } => {
            let mut create = db.create_collection(name).capped(true).size(*size);
            if let Some(m) = max {
                create = create.max(*m);
            }
            Some(("capped", create.await))
        }
    };
    match created {
        None => {}
        Some((kind, Ok(()))) => {
            info!(collection = %name, database = %db.name(), "created a {kind} collection")
        }
        Some((_, Err(e))) if command_code(&e) == Some(NAMESPACE_EXISTS) => {}
        Some((_, Err(e))) if setup_retryable(&e) => {
            return Err(PluginError::with_source(context("creating"), e));
        }
        Some((kind, Err(e))) => warn!(
            collection = %name,
            database = %db.name(),
            error = %e,
            "the server refused to create a {kind} collection; events go to a plain collection instead"
        ),
    }
    // One at a time: a server that refuses one kind (FerretDB and TTL or
    // text indexes) still gets the others.
    let coll = db.collection::<Document>(name);
    for model in &setup.indexes {
        match coll.create_index(model.clone()).await {
            Ok(_) => {}
            Err(e) if setup_retryable(&e) => {
                return Err(PluginError::with_source(context("creating indexes on"), e));
            }
            Err(e) => warn!(
                collection = %name,
                database = %db.name(),
                keys = %model.keys,
                error = %e,
                "the server refused an index; events are written without it"
            ),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(entries: &[(&str, Value)]) -> Vec<(String, Value)> {
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn index_syntax() {
        let items = vec![
            Value::Map(map(&[
                (
                    "keys",
                    Value::Map(map(&[
                        ("household", Value::Int(1)),
                        ("time", Value::Int(-1)),
                    ])),
                ),
                ("unique", Value::Bool(true)),
                ("name", "by_household".into()),
            ])),
            Value::Map(map(&[
                ("keys", Value::Map(map(&[("time", Value::Int(1))]))),
                ("expire_after", Value::Duration(Duration::from_secs(86400))),
            ])),
        ];
        let models = indexes(&items).unwrap();
        assert_eq!(models[0].keys, bson::doc! {"household": 1, "time": -1});
        let o = models[0].options.as_ref().unwrap();
        assert_eq!(
            (o.unique, o.name.as_deref()),
            (Some(true), Some("by_household"))
        );
        let ttl = models[1].options.as_ref().unwrap().expire_after;
        assert_eq!(ttl, Some(Duration::from_secs(86400)));

        let bad = |v: Value| indexes(&[v]).unwrap_err().to_string();
        assert!(
            bad(Value::Map(map(&[("unique", Value::Bool(true))]))).contains("`keys` is missing")
        );
        assert!(bad(Value::Map(map(&[(
            "keys",
            Value::Map(map(&[("a", Value::Int(2))]))
        )])))
        .contains("expected 1, -1"));
        assert!(
            bad(Value::Map(map(&[("kees", Value::Map(vec![]))]))).contains("unknown key `kees`")
        );
        assert!(bad("x".into()).contains("index 1"));
    }

    #[test]
    fn timeseries_syntax() {
        let ts = timeseries(
            &map(&[
                ("meta_field", "household".into()),
                ("granularity", "minutes".into()),
            ]),
            Some("time"),
        )
        .unwrap();
        assert_eq!(
            ts,
            Layout::Timeseries {
                time_field: "time".into(),
                meta_field: Some("household".into()),
                granularity: Some("minutes".into()),
                expire_after: None
            }
        );
        assert!(timeseries(&[], None).is_err());
        assert!(timeseries(&map(&[("time_field", "ts".into())]), Some("time")).is_err());
        assert!(timeseries(&map(&[("granularity", "days".into())]), Some("time")).is_err());
    }
}
