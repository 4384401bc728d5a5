//! `output elasticsearch` against a real OpenSearch 2.19 node
//! (`scripts/test-servers`): what is written is read back with the
//! server's own `_count`, `_search` and `_mapping` APIs.

mod common;

use std::time::{Duration, Instant};

use common::{batch, call, count, documents, output, unique, url, write, PrivateServer};
use serde_json::{json, Value as Json};
use ulog_engine::{Delivery, Value};

/// 2016-05-04T18:02:11Z.
const T0: i64 = 1_462_384_931;
const DAY: i64 = 86_400;

fn beacon(household: &str, lat: f64, lon: f64, event: &str) -> Json {
    json!({
        "household": household, "device": "iphone-7",
        "beacon": {"uuid": "f7826da6-4fa2-4e98-8024-bc5b71e0893e", "major": 1, "minor": 7},
        "event": event, "lat": lat, "lon": lon, "accuracy_m": 12.5,
        "time": "2016-05-04T18:02:11Z",
        "location": {"lat": lat, "lon": lon}
    })
}

/// The trial's mixed stream: phone beacons (two inside the Milton Keynes
/// box, two outside), an OWL solar reading whose figures happen to be whole
/// numbers, an OWL electricity reading and a Nissan battery reading.
fn trial_records() -> Vec<(i64, Json)> {
    vec![
        (T0, beacon("hh-0042", 52.0406, -0.7594, "exit")),
        (T0 + 1, beacon("hh-0007", 52.0512, -0.7521, "enter")),
        (T0 + 2, beacon("hh-0042", 51.5072, -0.1276, "enter")),
        (T0 + 3, beacon("hh-0009", 52.2053, 0.1218, "exit")),
        (
            T0 + 4,
            json!({"packet": "solar", "device_id": "443719123456", "household": "hh-0042",
                   "generating_w": 2876, "exporting_w": 333, "generated_today_wh": 21715.15,
                   "exported_today_wh": 10388.81, "battery_mv": 2730, "rssi_dbm": -71}),
        ),
        (
            T0 + 5,
            json!({"packet": "electricity", "device_id": "443719123456", "household": "hh-0042",
                   "channels": [{"index": 0, "power_w": 483, "energy_today_wh": 10244.99}],
                   "total_power_w": 1110.0, "battery_pct": 100}),
        ),
        (
            T0 + 6,
            json!({"vin": "SJNFAAZE0U6000001", "api": "carwings", "household": "hh-0042",
                   "soc_pct": 91, "battery_remaining": 220, "plugged": true, "charging": false,
                   "range_ac_on_km": 39.2, "reading_time": "2016-05-04T18:00:00Z"}),
        ),
    ]
}

async fn mapping_of(base: &str, index: &str, field: &str) -> Json {
    let (status, answer) = call(
        base,
        "GET",
        &format!("/{index}/_mapping/field/{field}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let leaf = field.rsplit('.').next().unwrap();
    answer[index]["mappings"][field]["mapping"][leaf].clone()
}

#[tokio::test]
async fn a_batch_is_stored_with_the_trial_mappings_and_found_by_a_geo_query() {
    let base = url();
    let name = unique("mk");
    let mut out = output(
        base,
        &[
            ("index", Value::from(format!("{name}-%Y.%m.%d"))),
            ("template", Value::from("trial")),
            ("template_name", Value::from(name.clone())),
            ("tag_key", Value::from("tag")),
        ],
    );
    let b = batch("home.hh-0042.mixed", &trial_records());
    assert!(matches!(write(&mut out, &b).await, Delivery::Delivered));

    let index = format!("{name}-2016.05.04");
    assert_eq!(count(base, &index, None).await, 7);
    let docs = documents(base, &index).await;
    let ids: Vec<String> = b.events.iter().map(|e| e.id.to_string()).collect();
    for (id, source) in &docs {
        let i = ids
            .iter()
            .position(|x| x == id)
            .expect("_id is the event id");
        let mut expected = trial_records()[i].1.clone();
        expected["@timestamp"] = json!(format!("2016-05-04T18:02:{}.123Z", 11 + i));
        expected["tag"] = json!("home.hh-0042.mixed");
        assert_eq!(source, &expected);
    }

    // The template's types, not dynamic mapping's guesses.
    let ty = |m: Json| m["type"].as_str().unwrap_or("").to_string();
    assert_eq!(ty(mapping_of(base, &index, "@timestamp").await), "date");
    assert_eq!(ty(mapping_of(base, &index, "location").await), "geo_point");
    assert_eq!(ty(mapping_of(base, &index, "time").await), "date");
    assert_eq!(ty(mapping_of(base, &index, "reading_time").await), "date");
    // 2876 is a whole number, and still a double: a later 2876.5 keeps its half.
    assert_eq!(ty(mapping_of(base, &index, "generating_w").await), "double");
    assert_eq!(
        ty(mapping_of(base, &index, "channels.power_w").await),
        "double"
    );
    assert_eq!(ty(mapping_of(base, &index, "soc_pct").await), "double");
    assert_eq!(ty(mapping_of(base, &index, "battery_mv").await), "long");
    assert_eq!(ty(mapping_of(base, &index, "household").await), "keyword");
    assert_eq!(ty(mapping_of(base, &index, "device_id").await), "keyword");
    assert_eq!(ty(mapping_of(base, &index, "tag").await), "keyword");
    // A string the template does not name is a keyword too, not text.
    assert_eq!(ty(mapping_of(base, &index, "beacon.uuid").await), "keyword");

    // Exactly the two beacon events inside the box around Milton Keynes.
    let inside = count(
        base,
        &index,
        Some(json!({"geo_bounding_box": {"location": {
            "top_left": {"lat": 52.10, "lon": -0.85},
            "bottom_right": {"lat": 52.00, "lon": -0.70}
        }}})),
    )
    .await;
    assert_eq!(inside, 2);
    let (status, answer) = call(
        base,
        "POST",
        &format!("/{index}/_search"),
        Some(
            &json!({"query": {"geo_bounding_box": {"location": {
                "top_left": {"lat": 52.10, "lon": -0.85},
                "bottom_right": {"lat": 52.00, "lon": -0.70}
            }}}, "sort": ["@timestamp"]})
            .to_string(),
        ),
    )
    .await;
    assert_eq!(status, 200);
    let found: Vec<&str> = answer["hits"]["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["_id"].as_str().unwrap())
        .collect();
    assert_eq!(found, [ids[0].as_str(), ids[1].as_str()]);
    // Numbers the way they were sent: a range over a double field.
    let solar = count(
        base,
        &index,
        Some(json!({"range": {"generating_w": {"gte": 2875.5, "lte": 2876.5}}})),
    )
    .await;
    assert_eq!(solar, 1);
}

#[tokio::test]
async fn the_same_batch_written_twice_is_stored_once() {
    let base = url();
    let index = unique("replay");
    let mut out = output(base, &[("index", Value::from(index.clone()))]);
    let records: Vec<(i64, Json)> = (0..50)
        .map(|i| (T0 + i, json!({"household": "hh-0042", "n": i})))
        .collect();
    let b = batch("home.replay", &records);
    assert!(matches!(write(&mut out, &b).await, Delivery::Delivered));
    // A replay (as after a lost answer or a restart from the buffer).
    assert!(matches!(write(&mut out, &b).await, Delivery::Delivered));
    // A new output (a restarted ulog) replaying it again.
    let mut again = output(base, &[("index", Value::from(index.clone()))]);
    assert!(matches!(write(&mut again, &b).await, Delivery::Delivered));
    assert_eq!(count(base, &index, None).await, 50);
    let mut stored: Vec<String> = documents(base, &index)
        .await
        .into_iter()
        .map(|d| d.0)
        .collect();
    stored.sort();
    let mut sent: Vec<String> = b.events.iter().map(|e| e.id.to_string()).collect();
    sent.sort();
    assert_eq!(stored, sent);

    // With `id_key` the record's own id decides, across different events.
    let index = unique("replay-key");
    let mut out = output(
        base,
        &[
            ("index", Value::from(index.clone())),
            ("id_key", Value::from("reading")),
        ],
    );
    let first = batch("cars", &[(T0, json!({"reading": "r-1", "soc_pct": 91}))]);
    let second = batch(
        "cars",
        &[
            (T0, json!({"reading": "r-1", "soc_pct": 91})),
            (T0, json!({"reading": "r-2", "soc_pct": 90})),
        ],
    );
    assert!(matches!(write(&mut out, &first).await, Delivery::Delivered));
    assert!(matches!(
        write(&mut out, &second).await,
        Delivery::Delivered
    ));
    let mut ids: Vec<String> = documents(base, &index)
        .await
        .into_iter()
        .map(|d| d.0)
        .collect();
    ids.sort();
    assert_eq!(ids, ["r-1", "r-2"]);
}

#[tokio::test]
async fn invalid_documents_fail_alone_with_the_servers_reason() {
    let base = url();
    let name = unique("bad");
    let mut out = output(
        base,
        &[
            ("index", Value::from(name.clone())),
            ("template", Value::from("trial")),
            ("template_name", Value::from(name.clone())),
        ],
    );
    let records = vec![
        (T0, json!({"device_id": "g1", "battery_mv": 2730})),
        (T0, json!({"device_id": "g1", "battery_mv": "low"})),
        (T0, json!({"device_id": "g1", "battery_mv": 2710})),
        (
            T0,
            json!({"device_id": "g1", "location": {"lat": 95.2, "lon": -0.75}}),
        ),
        (T0, json!({"device_id": "g1", "generating_w": 12.5})),
    ];
    let b = batch("home.owl", &records);
    let Delivery::Partial(failures) = write(&mut out, &b).await else {
        panic!("expected Partial")
    };
    let summary: Vec<(usize, bool)> = failures.iter().map(|f| (f.index, f.retryable)).collect();
    assert_eq!(summary, [(1, false), (3, false)]);
    let reason = failures[0].error.to_string();
    assert!(
        reason.starts_with(
            "400 mapper_parsing_exception: failed to parse field [battery_mv] of type [long]"
        ),
        "{reason}"
    );
    let reason = failures[1].error.to_string();
    assert!(
        reason.contains("400 mapper_parsing_exception") && reason.contains("[location]"),
        "{reason}"
    );
    assert_eq!(count(base, &name, None).await, 3);

    // Sending the refused ones again (as a replay would) refuses them again
    // and leaves the good ones alone.
    let Delivery::Partial(again) = write(&mut out, &b).await else {
        panic!("expected Partial")
    };
    assert_eq!(again.len(), 2);
    assert_eq!(count(base, &name, None).await, 3);
}

#[tokio::test]
async fn dates_in_the_index_name_route_events_to_daily_indices() {
    let base = url();
    let name = unique("daily");
    let mut out = output(
        base,
        &[
            (
                "index",
                Value::from(format!("{name}-{{tag_parts[1]}}-%Y.%m.%d")),
            ),
            ("template", Value::from("trial")),
            ("template_name", Value::from(name.clone())),
        ],
    );
    let records: Vec<(i64, Json)> = (0..9)
        .map(|i| {
            (
                T0 + (i % 3) * DAY,
                json!({"household": "hh-0042", "total_power_w": i}),
            )
        })
        .collect();
    let b = batch("home.hh-0042.owl", &records);
    assert!(matches!(write(&mut out, &b).await, Delivery::Delivered));
    for day in ["2016.05.04", "2016.05.05", "2016.05.06"] {
        let index = format!("{name}-hh-0042-{day}");
        assert_eq!(count(base, &index, None).await, 3, "{index}");
        // Every day's index got the template.
        let m = mapping_of(base, &index, "total_power_w").await;
        assert_eq!(m["type"], "double", "{index}");
    }
    assert_eq!(count(base, &format!("{name}-*"), None).await, 9);
}

#[tokio::test]
async fn a_data_stream_gets_creates_and_at_timestamp() {
    let base = url();
    let name = format!("logs-{}", unique("ds"));
    let mut out = output(
        base,
        &[
            ("data_stream", Value::from(name.clone())),
            ("template", Value::from("trial")),
            ("template_name", Value::from(name.clone())),
        ],
    );
    let records: Vec<(i64, Json)> = (0..20).map(|i| (T0 + i, json!({"n": i}))).collect();
    let b = batch("app.x", &records);
    assert!(matches!(write(&mut out, &b).await, Delivery::Delivered));
    assert!(matches!(write(&mut out, &b).await, Delivery::Delivered));
    let (status, answer) = call(base, "GET", &format!("/_data_stream/{name}"), None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["data_streams"][0]["name"], name.as_str());
    assert_eq!(count(base, &name, None).await, 20);
}

#[tokio::test]
async fn the_legacy_template_api_works_too() {
    let base = url();
    let name = unique("legacy");
    let mut out = output(
        base,
        &[
            ("index", Value::from(format!("{name}-%Y"))),
            ("template", Value::from("trial")),
            ("template_name", Value::from(name.clone())),
            ("template_api", Value::from("legacy")),
        ],
    );
    let b = batch(
        "t",
        &[(T0, json!({"location": {"lat": 52.0, "lon": -0.7}}))],
    );
    assert!(matches!(write(&mut out, &b).await, Delivery::Delivered));
    let (status, _) = call(base, "GET", &format!("/_template/{name}"), None).await;
    assert_eq!(status, 200);
    let m = mapping_of(base, &format!("{name}-2016"), "location").await;
    assert_eq!(m["type"], "geo_point");
}

#[tokio::test]
async fn a_large_batch_goes_as_several_gzipped_bodies_in_flight() {
    let base = url();
    let index = unique("big");
    let mut out = output(
        base,
        &[
            ("index", Value::from(index.clone())),
            ("compress", Value::Bool(true)),
            ("bulk_max_events", Value::Int(500)),
            ("workers", Value::Int(3)),
        ],
    );
    let records: Vec<(i64, Json)> = (0..5000)
        .map(|i| {
            (
                T0 + i,
                json!({"msg": format!("line {i} of a large batch"), "i": i}),
            )
        })
        .collect();
    let b = batch("big", &records);
    assert!(matches!(write(&mut out, &b).await, Delivery::Delivered));
    assert_eq!(count(base, &index, None).await, 5000);
    let last = count(base, &index, Some(json!({"term": {"i": 4999}}))).await;
    assert_eq!(last, 1);
}

#[tokio::test]
async fn a_refused_request_is_rejected_and_an_unknown_host_retried() {
    let base = url();
    // A path no handler serves: the whole request is answered 400.
    let mut out = output(&format!("{base}/no/such/prefix"), &[]);
    let b = batch("t", &[(T0, json!({"a": 1}))]);
    match write(&mut out, &b).await {
        Delivery::Rejected(e) => assert!(e.to_string().contains("400"), "{e}"),
        other => panic!("expected Rejected, got {other:?}"),
    }
    // Nothing listens on port 9: retried, quickly.
    let mut out = output("http://127.0.0.1:9", &[]);
    let begun = Instant::now();
    match write(&mut out, &b).await {
        Delivery::Retry(e) => assert!(e.to_string().contains("127.0.0.1:9"), "{e}"),
        other => panic!("expected Retry, got {other:?}"),
    }
    assert!(begun.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_second_host_takes_over_when_the_first_is_down() {
    let base = url();
    let index = unique("failover");
    let mut out = common::output_hosts(
        &["http://127.0.0.1:9", base],
        &[("index", Value::from(index.clone()))],
    );
    for i in 0..4 {
        let b = batch("t", &[(T0 + i, json!({"i": i}))]);
        assert!(matches!(write(&mut out, &b).await, Delivery::Delivered));
    }
    assert_eq!(count(base, &index, None).await, 4);
}

#[tokio::test]
async fn a_server_that_goes_away_is_retried_and_nothing_is_stored_twice() {
    let server = PrivateServer::start();
    let base = server.url.clone();
    let index = unique("fault");
    let mut out = output(
        &base,
        &[
            ("index", Value::from(index.clone())),
            ("template", Value::from("trial")),
            ("template_name", Value::from(index.clone())),
            ("timeout", Value::Duration(Duration::from_secs(5))),
        ],
    );
    let first: Vec<(i64, Json)> = (0..100).map(|i| (T0 + i, json!({"n": i}))).collect();
    let second: Vec<(i64, Json)> = (100..300).map(|i| (T0 + i, json!({"n": i}))).collect();
    let first = batch("t", &first);
    let second = batch("t", &second);
    assert!(matches!(write(&mut out, &first).await, Delivery::Delivered));

    server.stop_one();
    let begun = Instant::now();
    match write(&mut out, &second).await {
        Delivery::Retry(e) => eprintln!("retry as expected: {e}"),
        other => panic!("expected Retry while the server is down, got {other:?}"),
    }
    assert!(
        begun.elapsed() < Duration::from_secs(15),
        "{:?}",
        begun.elapsed()
    );

    server.start_one();
    // The engine would retry the batch; so does this test, until it lands.
    let begun = Instant::now();
    loop {
        match write(&mut out, &second).await {
            Delivery::Delivered => break,
            Delivery::Retry(e) => {
                assert!(
                    begun.elapsed() < Duration::from_secs(60),
                    "still failing: {e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => panic!("{other:?}"),
        }
    }
    // The first batch replayed too (as from a buffer after a crash).
    assert!(matches!(write(&mut out, &first).await, Delivery::Delivered));
    assert_eq!(count(&base, &index, None).await, 300);
    let distinct = count(
        &base,
        &index,
        Some(json!({"range": {"n": {"gte": 0, "lt": 300}}})),
    )
    .await;
    assert_eq!(distinct, 300);
}

/// A TLS front for the real server: terminates TLS with a certificate of
/// its own (for `localhost`) and passes the bytes on to OpenSearch.
async fn tls_front(dir: &std::path::Path, backend: &str) -> (u16, std::path::PathBuf) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = dir.join("front-cert.pem");
    let key = dir.join("front-key.pem");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(ulog_tls::server_config(&cert, &key).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let backend = backend.trim_start_matches("http://").to_string();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, backend) = (acceptor.clone(), backend.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut upstream) = tokio::net::TcpStream::connect(&backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
            });
        }
    });
    (port, cert)
}

#[tokio::test]
async fn https_hosts_are_verified_by_default() {
    let base = url();
    let dir = tempfile::tempdir().unwrap();
    let (port, ca) = tls_front(dir.path(), base).await;
    let host = format!("https://localhost:{port}");
    let index = unique("tls");
    let b = batch("t", &[(T0, json!({"a": 1}))]);

    // The front's certificate is in no system store: refused by default.
    let mut out = output(&host, &[("index", Value::from(index.clone()))]);
    match write(&mut out, &b).await {
        Delivery::Retry(e) => {
            eprintln!("refused as expected: {e}");
            assert!(e.to_string().contains("certificate"), "{e}")
        }
        other => panic!("an unknown certificate must not be trusted: {other:?}"),
    }
    // Trusted through `tls_ca_file`.
    let mut out = output(
        &host,
        &[
            ("index", Value::from(index.clone())),
            ("tls_ca_file", Value::from(ca.to_str().unwrap())),
        ],
    );
    assert!(matches!(write(&mut out, &b).await, Delivery::Delivered));
    // The right CA, but the wrong name: refused.
    let mut out = output(
        &format!("https://127.0.0.1:{port}"),
        &[
            ("index", Value::from(index.clone())),
            ("tls_ca_file", Value::from(ca.to_str().unwrap())),
        ],
    );
    match write(&mut out, &b).await {
        Delivery::Retry(e) => {
            eprintln!("refused as expected: {e}");
            assert!(e.to_string().contains("certificate"), "{e}")
        }
        other => panic!("a certificate for another name must not be trusted: {other:?}"),
    }
    // Verification off: encrypted, not authenticated.
    let mut out = output(
        &format!("https://127.0.0.1:{port}"),
        &[
            ("index", Value::from(index.clone())),
            ("tls_verify", Value::Bool(false)),
        ],
    );
    assert!(matches!(write(&mut out, &b).await, Delivery::Delivered));
    assert_eq!(count(base, &index, None).await, 1);
}
