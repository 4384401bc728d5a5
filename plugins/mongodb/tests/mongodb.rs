//! `output mongodb` against a real MongoDB-wire server (FerretDB from
//! `scripts/test-servers`), read back with the driver's own `find`.
//!
//! `ULOG_TEST_MONGODB_URI` names the server; unset, the tests start the
//! shared one themselves. Each test writes to a database of its own, so they
//! run in parallel; the fault test starts a private server it may stop.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bson::{doc, spec::BinarySubtype, Bson, Document};
use bytes::Bytes;
use futures_util::TryStreamExt;
use ulog_engine::{
    Batch, BuildContext, Delivery, Event, EventId, EventTime, Output, Record, Tag, Value,
};
use ulog_plugins_mongodb::out_mongodb::{spec, MongoOutput};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `scripts/test-servers ARGS` and returns the MongoDB URI it exports.
fn test_servers(run_dir: Option<&Path>, args: &[&str]) -> Option<String> {
    let mut cmd = Command::new(root().join("scripts/test-servers"));
    cmd.args(args);
    if let Some(dir) = run_dir {
        cmd.env("ULOG_SERVERS_RUN", dir);
    }
    let out = cmd.output().expect("running scripts/test-servers");
    assert!(
        out.status.success(),
        "scripts/test-servers {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        l.strip_prefix("export ULOG_TEST_MONGODB_URI=")
            .map(|v| v.trim_matches(['"', '\'']).to_string())
    })
}

/// The shared server, started once per test binary when not given.
fn uri() -> &'static str {
    static URI: OnceLock<String> = OnceLock::new();
    URI.get_or_init(|| match std::env::var("ULOG_TEST_MONGODB_URI") {
        Ok(u) if !u.is_empty() => u,
        _ => test_servers(None, &["start", "ferretdb"]).expect("no ULOG_TEST_MONGODB_URI export"),
    })
}

/// A database name no other test (or earlier run) uses.
fn unique_db(test: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "t_{test}_{}_{nanos}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn output(uri: &str, db: &str, extra: &[(&str, Value)]) -> MongoOutput {
    let mut given: Vec<(String, Value)> = vec![
        ("uri".into(), uri.into()),
        ("database".into(), db.into()),
        (
            "server_selection_timeout".into(),
            Value::Duration(Duration::from_secs(3)),
        ),
    ];
    given.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    let params = spec().validate(&given).expect("valid parameters");
    let ctx = BuildContext {
        id: "mongodb#test".into(),
        base_dir: PathBuf::from("."),
    };
    MongoOutput::from_params(&params, &ctx).expect("the output builds")
}

async fn client(uri: &str) -> mongodb::Client {
    let mut o = mongodb::options::ClientOptions::parse(uri).await.unwrap();
    o.server_selection_timeout = Some(Duration::from_secs(5));
    mongodb::Client::with_options(o).unwrap()
}

async fn find_all(c: &mongodb::Client, db: &str, coll: &str) -> Vec<Document> {
    c.database(db)
        .collection::<Document>(coll)
        .find(doc! {})
        .sort(doc! {"seq": 1})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap()
}

fn event(secs: i64, json: &str) -> Event {
    let mut e = Event::new(
        EventTime::from_secs_nanos(secs, 250_000_000),
        Record::from_json_bytes(Bytes::copy_from_slice(json.as_bytes())).unwrap(),
    );
    e.id = EventId::fresh(1).next().unwrap();
    e
}

fn batch(tag: &str, events: Vec<Event>) -> Batch {
    Batch::new(Tag::parse(tag).unwrap(), events)
}

fn readings(n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| {
            event(
                1_796_292_000 + i as i64,
                &format!(
                    r#"{{"seq":{i},"household":"hh-{:04}","watts":{},"kwh":{}.5}}"#,
                    i % 7,
                    i * 3,
                    i
                ),
            )
        })
        .collect()
}

fn assert_delivered(d: Delivery) {
    assert!(
        matches!(d, Delivery::Delivered),
        "expected Delivered, got {d:?}"
    );
}

#[tokio::test]
async fn a_batch_arrives_with_its_types() {
    let db = unique_db("types");
    let mut out = output(
        uri(),
        &db,
        &[("collection", "readings".into()), ("tag_key", "tag".into())],
    );
    let events = vec![
        event(
            1_796_292_000,
            r#"{"seq": 0, "watts": 512, "neg": -7, "kwh": 1.5, "whole": 2.0, "name": "h\u00e9 \"x\"",
                "ok": true, "none": null, "nested": {"a": {"b": [1, "two", {"c": 3.25}]}},
                "list": [1, 2.5, "s", {"in": true}], "time": "overwritten"}"#,
        ),
        event(
            1_796_292_001,
            r#"{"seq": 1, "watts": 9007199254740993, "big": 18446744073709551615}"#,
        ),
    ];
    let b = batch("home.hh-0042.owl", events.clone());
    assert_delivered(out.write(&b).await);

    let c = client(uri()).await;
    let docs = find_all(&c, &db, "readings").await;
    assert_eq!(docs.len(), 2);
    let d = &docs[0];
    match d.get("_id") {
        Some(Bson::Binary(bin)) => {
            assert_eq!(bin.subtype, BinarySubtype::Uuid);
            assert_eq!(bin.bytes, events[0].id.as_u128().to_be_bytes());
        }
        other => panic!("_id should be a UUID, got {other:?}"),
    }
    assert_eq!(
        d.get("time"),
        Some(&Bson::DateTime(bson::DateTime::from_millis(
            1_796_292_000_250
        ))),
        "the event time, as a date, replacing the record's field"
    );
    assert_eq!(d.get_str("tag").unwrap(), "home.hh-0042.owl");
    assert_eq!(d.get("watts"), Some(&Bson::Int64(512)));
    assert_eq!(d.get("neg"), Some(&Bson::Int64(-7)));
    assert_eq!(d.get("kwh"), Some(&Bson::Double(1.5)));
    assert_eq!(
        d.get("whole"),
        Some(&Bson::Double(2.0)),
        "2.0 stays a double"
    );
    assert_eq!(d.get_str("name").unwrap(), "h\u{e9} \"x\"");
    assert_eq!(d.get("ok"), Some(&Bson::Boolean(true)));
    assert_eq!(d.get("none"), Some(&Bson::Null));
    assert_eq!(
        d.get_document("nested").unwrap(),
        &doc! {"a": {"b": [1i64, "two", {"c": 3.25}]}}
    );
    assert_eq!(
        d.get_array("list").unwrap(),
        &vec![
            Bson::Int64(1),
            Bson::Double(2.5),
            Bson::String("s".into()),
            Bson::Document(doc! {"in": true})
        ]
    );
    // Beyond 2^53: still exact, as an Int64.
    assert_eq!(
        docs[1].get("watts"),
        Some(&Bson::Int64(9_007_199_254_740_993))
    );
    out.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_replayed_batch_is_stored_once() {
    let db = unique_db("replay");
    let mut out = output(
        uri(),
        &db,
        &[("collection", "r".into()), ("batch_size", Value::Int(64))],
    );
    let events = readings(300);
    let first_part = batch("home.x", events[..120].to_vec());
    let whole = batch("home.x", events.clone());
    assert_delivered(out.write(&first_part).await);
    // The whole batch again, as after a timeout: 120 are duplicates.
    assert_delivered(out.write(&whole).await);
    assert_delivered(out.write(&whole).await);
    let c = client(uri()).await;
    let docs = find_all(&c, &db, "r").await;
    assert_eq!(docs.len(), 300, "each event exactly once");
    let seqs: Vec<i64> = docs.iter().map(|d| d.get_i64("seq").unwrap()).collect();
    assert_eq!(seqs, (0..300).collect::<Vec<i64>>());

    // The same with the id as text, through a fresh output (a restart).
    let mut text = output(
        uri(),
        &db,
        &[("collection", "s".into()), ("id_format", "string".into())],
    );
    assert_delivered(text.write(&first_part).await);
    let mut again = output(
        uri(),
        &db,
        &[("collection", "s".into()), ("id_format", "string".into())],
    );
    assert_delivered(again.write(&whole).await);
    let docs = find_all(&c, &db, "s").await;
    assert_eq!(docs.len(), 300);
    assert_eq!(docs[5].get_str("_id").unwrap(), events[5].id.to_string());
}

#[tokio::test]
async fn id_key_takes_the_id_from_a_field() {
    let db = unique_db("idkey");
    let mut out = output(
        uri(),
        &db,
        &[("collection", "r".into()), ("id_key", "reading".into())],
    );
    let mut events = vec![
        event(1_796_292_000, r#"{"seq": 0, "reading": "hh-1/0001"}"#),
        event(1_796_292_001, r#"{"seq": 1, "reading": "hh-1/0002"}"#),
        event(1_796_292_002, r#"{"seq": 2}"#),
    ];
    match out.write(&batch("a", events.clone())).await {
        Delivery::Partial(f) => {
            assert_eq!(f.len(), 1);
            assert_eq!(f[0].index, 2);
            assert!(!f[0].retryable);
            assert!(
                f[0].error.to_string().contains("no field \"reading\""),
                "{}",
                f[0].error
            );
        }
        d => panic!("expected Partial, got {d:?}"),
    }
    // The same readings under new event ids: the field decides, no copy.
    for e in &mut events {
        e.id = EventId::fresh(1).next().unwrap();
    }
    let d = out.write(&batch("a", events[..2].to_vec())).await;
    assert_delivered(d);
    let docs = find_all(&client(uri()).await, &db, "r").await;
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[0].get_str("_id").unwrap(), "hh-1/0001");
    assert_eq!(docs[0].get_str("reading").unwrap(), "hh-1/0001");
}

#[tokio::test]
async fn invalid_documents_fail_alone_with_the_servers_reason() {
    let db = unique_db("invalid");
    let mut out = output(uri(), &db, &[("collection", "r".into())]);
    let huge = format!(
        r#"{{"seq": 3, "blob": "{}"}}"#,
        "x".repeat(17 * 1024 * 1024)
    );
    let events = vec![
        event(1_796_292_000, r#"{"seq": 0}"#),
        event(1_796_292_001, r#"{"seq": 1, "$where": "bad"}"#),
        event(1_796_292_002, r#"{"seq": 2, "ok": {"deep": 1}}"#),
        event(1_796_292_003, &huge),
        event(1_796_292_004, r#"{"seq": 4, "nested": {"$bad": 1}}"#),
        event(1_796_292_005, r#"{"seq": 5}"#),
    ];
    let failures = match out.write(&batch("a", events.clone())).await {
        Delivery::Partial(f) => f,
        d => panic!("expected Partial, got {d:?}"),
    };
    let by_index: BTreeMap<usize, String> = failures
        .iter()
        .map(|f| {
            assert!(!f.retryable, "{f:?}");
            (f.index, f.error.to_string())
        })
        .collect();
    eprintln!("refused: {by_index:#?}");
    assert!(
        by_index.contains_key(&1),
        "a $-prefixed top-level field is refused: {by_index:?}"
    );
    assert!(
        by_index.contains_key(&3),
        "a document over 16 MiB is refused"
    );
    assert!(by_index[&3].contains("16 MiB"), "{}", by_index[&3]);
    // The server's own words, with its code.
    assert!(by_index[&1].contains("(code "), "{}", by_index[&1]);
    assert!(by_index[&1].contains("$where"), "{}", by_index[&1]);
    let stored: Vec<i64> = find_all(&client(uri()).await, &db, "r")
        .await
        .iter()
        .map(|d| d.get_i64("seq").unwrap())
        .collect();
    let mut want: Vec<i64> = vec![0, 2, 5];
    if !by_index.contains_key(&4) {
        want.insert(2, 4);
    }
    assert_eq!(stored, want, "every valid document is written");
    // Writing the batch again stores nothing new and refuses the same ones.
    match out.write(&batch("a", events)).await {
        Delivery::Partial(f) => assert_eq!(
            f.iter().map(|f| f.index).collect::<Vec<_>>(),
            by_index.keys().copied().collect::<Vec<_>>()
        ),
        d => panic!("expected Partial, got {d:?}"),
    }
    assert_eq!(
        find_all(&client(uri()).await, &db, "r").await.len(),
        want.len()
    );
}

#[tokio::test]
async fn collection_templates_route_to_several_collections() {
    let db = unique_db("route");
    let mut out = output(
        uri(),
        &db,
        &[("collection", "{tag_parts[1]}_{household}_%Y%m".into())],
    );
    // 2026-11-30T23:59:59Z and one second later, in December.
    let nov = 1_796_083_199;
    let events = vec![
        event(nov, r#"{"seq": 0, "household": "a"}"#),
        event(nov + 1, r#"{"seq": 1, "household": "a"}"#),
        event(nov + 2, r#"{"seq": 2, "household": "b"}"#),
        event(nov, r#"{"seq": 3, "household": "b"}"#),
        event(nov + 3, r#"{"seq": 4}"#),
        event(nov + 4, r#"{"seq": 5, "household": "a"}"#),
    ];
    let failures = match out.write(&batch("home.owl", events)).await {
        Delivery::Partial(f) => f,
        d => panic!("expected Partial, got {d:?}"),
    };
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].index, 4);
    assert!(failures[0]
        .error
        .to_string()
        .contains("no field \"household\""));
    let c = client(uri()).await;
    let mut names = c.database(&db).list_collection_names().await.unwrap();
    names.sort();
    assert_eq!(
        names,
        [
            "owl_a_202611",
            "owl_a_202612",
            "owl_b_202611",
            "owl_b_202612"
        ]
    );
    let seqs = |docs: Vec<Document>| {
        docs.iter()
            .map(|d| d.get_i64("seq").unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(seqs(find_all(&c, &db, "owl_a_202611").await), [0]);
    assert_eq!(seqs(find_all(&c, &db, "owl_a_202612").await), [1, 5]);
    assert_eq!(seqs(find_all(&c, &db, "owl_b_202611").await), [3]);
    assert_eq!(seqs(find_all(&c, &db, "owl_b_202612").await), [2]);
}

#[tokio::test]
async fn large_batches_are_cut_and_sent_by_several_workers() {
    let db = unique_db("workers");
    let mut out = output(
        uri(),
        &db,
        &[
            ("collection", "r".into()),
            ("batch_size", Value::Int(100)),
            ("workers", Value::Int(4)),
            ("write_concern", Value::Int(1)),
            ("journal", Value::Bool(true)),
        ],
    );
    assert_delivered(out.write(&batch("a", readings(2_500))).await);
    let n = client(uri())
        .await
        .database(&db)
        .collection::<Document>("r")
        .count_documents(doc! {})
        .await
        .unwrap();
    assert_eq!(n, 2_500);
}

#[tokio::test]
async fn indexes_are_created_and_a_unique_one_deduplicates() {
    let db = unique_db("indexes");
    let map = |e: &[(&str, Value)]| {
        Value::Map(e.iter().map(|(k, v)| (k.to_string(), v.clone())).collect())
    };
    let indexes = Value::List(vec![
        map(&[
            (
                "keys",
                map(&[("household", Value::Int(1)), ("seq", Value::Int(-1))]),
            ),
            ("unique", Value::Bool(true)),
            ("name", "by_household".into()),
        ]),
        // FerretDB 1.x refuses TTL indexes: the others must still be made.
        map(&[
            ("keys", map(&[("time", Value::Int(1))])),
            ("expire_after", Value::Duration(Duration::from_secs(86_400))),
        ]),
        map(&[("keys", map(&[("watts", Value::Int(1))]))]),
    ]);
    let mut out = output(
        uri(),
        &db,
        &[("collection", "r".into()), ("indexes", indexes)],
    );
    let events = readings(10);
    assert_delivered(out.write(&batch("a", events.clone())).await);
    let c = client(uri()).await;
    let mut names = c
        .database(&db)
        .collection::<Document>("r")
        .list_index_names()
        .await
        .unwrap();
    names.sort();
    // MongoDB also has the TTL index `time_1`; FerretDB 1.x refuses it.
    names.retain(|n| n != "time_1");
    assert_eq!(names, ["_id_", "by_household", "watts_1"]);
    // The same readings under new ids collide on the unique index: that is
    // "already stored" too, and counted delivered.
    let renamed: Vec<Event> = events
        .into_iter()
        .map(|mut e| {
            e.id = EventId::fresh(1).next().unwrap();
            e
        })
        .collect();
    assert_delivered(out.write(&batch("a", renamed)).await);
    assert_eq!(find_all(&c, &db, "r").await.len(), 10);
}

#[tokio::test]
async fn layouts_the_server_refuses_still_get_the_events() {
    let db = unique_db("layout");
    let c = client(uri()).await;
    let ts = Value::Map(vec![
        ("meta_field".into(), "household".into()),
        ("granularity".into(), "minutes".into()),
    ]);
    let mut out = output(
        uri(),
        &db,
        &[("collection", "ts".into()), ("timeseries", ts)],
    );
    assert_delivered(out.write(&batch("a", readings(5))).await);
    assert_eq!(find_all(&c, &db, "ts").await.len(), 5);

    let mut capped = output(
        uri(),
        &db,
        &[
            ("collection", "cap".into()),
            ("capped_size", Value::Size(1 << 20)),
        ],
    );
    assert_delivered(capped.write(&batch("a", readings(5))).await);
    assert_eq!(find_all(&c, &db, "cap").await.len(), 5);
    let specs: BTreeMap<String, Document> = c
        .database(&db)
        .list_collections()
        .await
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.name.clone(), bson::to_document(&s.options).unwrap()))
        .collect();
    // FerretDB makes capped collections...
    assert_eq!(
        specs["cap"].get("capped"),
        Some(&Bson::Boolean(true)),
        "{specs:?}"
    );
    // ...but not time-series ones: the events went to a plain collection.
    let ts_kind = specs["ts"].get("timeseries");
    eprintln!("time-series options as the server reports them: {ts_kind:?}");
}

#[test]
fn bad_parameters_are_refused_when_built() {
    let build = |extra: &[(&str, Value)]| {
        let mut given: Vec<(String, Value)> = extra
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        if !extra.iter().any(|(k, _)| *k == "database") {
            given.push(("database".into(), "x".into()));
        }
        let params = spec().validate(&given).unwrap();
        let ctx = BuildContext {
            id: "m".into(),
            base_dir: PathBuf::from("."),
        };
        MongoOutput::from_params(&params, &ctx)
            .err()
            .map(|e| e.to_string())
    };
    assert_eq!(build(&[]), None);
    assert!(build(&[("uri", "http://x".into())])
        .unwrap()
        .contains("parameter `uri`"));
    assert!(build(&[("collection", "a_%Q".into())])
        .unwrap()
        .contains("strftime"));
    assert!(build(&[("collection", "{tag".into())])
        .unwrap()
        .contains("unclosed"));
    assert!(build(&[("write_concern", Value::Int(0))])
        .unwrap()
        .contains("unacknowledged"));
    assert!(build(&[
        ("write_concern", "majority".into()),
        ("journal", Value::Bool(true))
    ])
    .is_none());
    assert!(build(&[("write_concern", "2".into())]).is_none());
    assert!(build(&[("workers", Value::Int(0))])
        .unwrap()
        .contains("workers"));
    assert!(build(&[("database", "a.b".into())]).is_some());
    let ts = Value::Map(vec![("granularity".into(), "seconds".into())]);
    assert!(build(&[
        ("timeseries", ts.clone()),
        ("capped_size", Value::Size(1 << 20))
    ])
    .unwrap()
    .contains("both"));
    assert!(build(&[("timeseries", ts), ("time_key", "".into())])
        .unwrap()
        .contains("time_key"));
    // The database can come from the URI.
    let params = spec()
        .validate(&[(
            "uri".into(),
            "mongodb://h1,h2:27018/logs?replicaSet=rs0".into(),
        )])
        .unwrap();
    let ctx = BuildContext {
        id: "m".into(),
        base_dir: PathBuf::from("."),
    };
    assert!(MongoOutput::from_params(&params, &ctx).is_ok());
    let params = spec().validate(&[]).unwrap();
    assert!(MongoOutput::from_params(&params, &ctx)
        .err()
        .unwrap()
        .to_string()
        .contains("database"));
}

/// A private FerretDB this test may stop; stopped and removed on drop.
struct PrivateServer {
    dir: tempfile::TempDir,
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        let _ = Command::new(root().join("scripts/test-servers"))
            .args(["stop", "ferretdb"])
            .env("ULOG_SERVERS_RUN", self.dir.path())
            .output();
    }
}

#[tokio::test]
async fn a_server_that_goes_away_makes_the_batch_retried_and_nothing_is_lost() {
    let server = PrivateServer {
        dir: tempfile::tempdir().unwrap(),
    };
    let run = server.dir.path().to_path_buf();
    let uri = test_servers(Some(&run), &["start", "ferretdb"]).expect("private server URI");
    assert_ne!(uri, self::uri(), "a server of its own");
    let db = unique_db("fault");
    let mut out = output(
        &uri,
        &db,
        &[("collection", "r".into()), ("batch_size", Value::Int(50))],
    );
    let events = readings(600);
    assert_delivered(out.write(&batch("a", events[..200].to_vec())).await);

    let r = run.clone();
    tokio::task::spawn_blocking(move || test_servers(Some(&r), &["stop-one", "ferretdb"]))
        .await
        .unwrap();
    let second = batch("a", events[200..400].to_vec());
    let t0 = Instant::now();
    match out.write(&second).await {
        Delivery::Retry(e) => eprintln!("retry as expected: {e}"),
        d => panic!("expected Retry with the server down, got {d:?}"),
    }
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "bounded by server_selection_timeout: {:?}",
        t0.elapsed()
    );

    let r = run.clone();
    tokio::task::spawn_blocking(move || test_servers(Some(&r), &["start-one", "ferretdb"]))
        .await
        .unwrap();
    // The engine retries the batch; then more events; then a replay of all.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match out.write(&second).await {
            Delivery::Delivered => break,
            Delivery::Retry(e) if Instant::now() < deadline => {
                eprintln!("still retrying: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            d => panic!("expected Delivered after the restart, got {d:?}"),
        }
    }
    assert_delivered(out.write(&batch("a", events[400..].to_vec())).await);
    assert_delivered(out.write(&batch("a", events.clone())).await);
    let docs = find_all(&client(&uri).await, &db, "r").await;
    let seqs: Vec<i64> = docs.iter().map(|d| d.get_i64("seq").unwrap()).collect();
    assert_eq!(
        seqs,
        (0..600).collect::<Vec<i64>>(),
        "everything, exactly once"
    );
    out.shutdown().await.unwrap();
    drop(server);
}
