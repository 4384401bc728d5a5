//! Notifications per second through `output apns`, `output fcm` and
//! `output webhook` against their stand-ins on loopback, with the number of
//! provider JWTs / OAuth tokens minted, and the stand-in's own ceiling
//! (a bare HTTP/2 client, no ulog code) to show it is not the bottleneck.
//!
//! `cargo bench -p ulog-plugins-push --bench push_throughput`
//! (`PUSH_BENCH_N` notifications per output, default 50000).

#[path = "../tests/standin/mod.rs"]
mod standin;

use std::time::{Duration, Instant};

use serde_json::{json, Value as Json};
use standin::{batch, ctx, params, write_registry, Pki};
use ulog_engine::{Delivery, Output, Value};
use ulog_plugins_push::{out_apns, out_fcm, out_webhook};

const HOUSEHOLDS: usize = 1000;
const BATCH: usize = 1000;

fn tok(i: usize) -> String {
    format!("{:064x}", 0x5eed_0000_u64 + i as u64)
}

fn records(n: usize) -> Vec<Vec<Json>> {
    (0..n)
        .collect::<Vec<_>>()
        .chunks(BATCH)
        .map(|c| c.iter().map(|i| json!({"household": format!("hh-{:04}", i % HOUSEHOLDS), "title": "Car", "message": format!("event {i}"), "event": "exit"})).collect())
        .collect()
}

async fn drive(out: &mut dyn Output, batches: &[Vec<Json>]) -> Duration {
    let start = Instant::now();
    for b in batches {
        match out.write(&batch("phone.beacon", b.clone())).await {
            Delivery::Delivered => {}
            other => panic!("{other:?}"),
        }
    }
    start.elapsed()
}

fn report(name: &str, n: usize, took: Duration, extra: &str) {
    println!(
        "{name:<34} {n:>7} notifications in {:>7.3} s = {:>8.0}/s  {extra}",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64()
    );
}

async fn bare_h2_ceiling(pki: &Pki, apns: &standin::apns::Apns, n: usize) -> Duration {
    // One HTTP/2 connection, 500 streams in flight, the same requests the
    // output sends, with one JWT signed up front: the stand-in's ceiling.
    use http_body_util::{BodyExt, Full};
    let tls = ulog_tls::client_config(Some(&pki.ca_file), ulog_tls::Verify::Full).unwrap();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config((*tls).clone())
        .https_only()
        .enable_http2()
        .build();
    let client: hyper_util::client::legacy::Client<_, Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build(connector);
    let pem = std::fs::read(&apns.key_file).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(standin::apns::KEY_ID.into());
    let jwt = jsonwebtoken::encode(
        &header,
        &json!({"iss": standin::apns::TEAM_ID, "iat": standin::now()}),
        &jsonwebtoken::EncodingKey::from_ec_pem(&pem).unwrap(),
    )
    .unwrap();
    let base = apns.server.base_url();
    let start = Instant::now();
    use futures_util::StreamExt;
    futures_util::stream::iter(0..n)
        .map(|i| {
            let req = hyper::Request::post(format!("{base}/3/device/{}", tok(i % HOUSEHOLDS)))
                .header("authorization", format!("bearer {jwt}"))
                .header("apns-topic", standin::apns::TOPIC)
                .header("apns-push-type", "alert")
                .body(Full::new(bytes::Bytes::from(format!(
                    r#"{{"aps":{{"alert":{{"title":"Car","body":"event {i}"}}}}}}"#
                ))))
                .unwrap();
            let client = client.clone();
            async move {
                let r = client.request(req).await.unwrap();
                assert_eq!(r.status(), 200);
                let _ = r.into_body().collect().await;
            }
        })
        .buffer_unordered(500)
        .collect::<Vec<_>>()
        .await;
    start.elapsed()
}

fn main() {
    let n: usize = std::env::var("PUSH_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let pki = Pki::new();
        let batches = records(n);
        println!("push_throughput: {n} notifications per run, {HOUSEHOLDS} households, batches of {BATCH}, loopback, 2 worker threads");

        // APNs: one HTTP/2 connection, max_in_flight streams.
        let apns = standin::apns::Apns::start(&pki).await;
        apns.state.lock().unwrap().keep = false;
        let devices: Vec<Json> = (0..HOUSEHOLDS).map(|i| json!({"household": format!("hh-{i:04}"), "platform": "apns", "token": tok(i)})).collect();
        for i in 0..HOUSEHOLDS {
            apns.add_token(&tok(i), standin::apns::TokenState::Live);
        }
        let dir = tempfile::tempdir().unwrap();
        let reg = write_registry(dir.path(), Json::Array(devices));
        let ceiling = bare_h2_ceiling(&pki, &apns, n).await;
        report("stand-in ceiling (bare h2 client)", n, ceiling, "");
        apns.state.lock().unwrap().jwts.clear();
        let before = apns.state.lock().unwrap().requests;
        let conns_before = *apns.server.connections.lock().unwrap();
        let p: Vec<(&str, Value)> = vec![
            ("registry", reg.display().to_string().into()),
            ("key_file", apns.key_file.display().to_string().into()),
            ("key_id", standin::apns::KEY_ID.into()),
            ("team_id", standin::apns::TEAM_ID.into()),
            ("topic", standin::apns::TOPIC.into()),
            ("base_url", apns.server.base_url().into()),
            ("ca_file", pki.ca_file.display().to_string().into()),
            ("title", "{title}".into()),
            ("body", "{message}".into()),
        ];
        let mut out = out_apns::ApnsOutput::from_params(&params(&out_apns::spec(), p), &ctx()).unwrap();
        let took = drive(&mut out, &batches).await;
        let (requests, jwts, violations) = {
            let st = apns.state.lock().unwrap();
            (st.requests, st.jwts.len(), st.violations.clone())
        };
        assert_eq!(requests - before, n as u64);
        assert!(violations.is_empty(), "{violations:?}");
        let conns = *apns.server.connections.lock().unwrap() - conns_before;
        report("output apns (HTTP/2, 500 streams)", n, took, &format!("JWTs minted: {jwts}, connections: {conns}"));

        // FCM: OAuth token once, HTTP/2 by ALPN.
        let fcm = standin::fcm::Fcm::start(&pki).await;
        let devices: Vec<Json> = (0..HOUSEHOLDS).map(|i| json!({"household": format!("hh-{i:04}"), "platform": "fcm", "token": format!("fcm-{i}")})).collect();
        for i in 0..HOUSEHOLDS {
            fcm.add_token(&format!("fcm-{i}"), standin::fcm::TokenState::Live);
        }
        let dir2 = tempfile::tempdir().unwrap();
        let reg2 = write_registry(dir2.path(), Json::Array(devices));
        let p: Vec<(&str, Value)> = vec![
            ("registry", reg2.display().to_string().into()),
            ("service_account_file", fcm.key_file.display().to_string().into()),
            ("base_url", fcm.server.base_url().into()),
            ("ca_file", pki.ca_file.display().to_string().into()),
            ("max_in_flight", Value::Int(500)),
        ];
        let mut out = out_fcm::FcmOutput::from_params(&params(&out_fcm::spec(), p), &ctx()).unwrap();
        let took = drive(&mut out, &batches).await;
        assert_eq!(fcm.received().len(), n);
        report("output fcm (HTTP/2, 500 in flight)", n, took, &format!("OAuth tokens fetched: {}", fcm.grants()));

        // Webhook: plain HTTP/1.1 keep-alive pool, signed.
        let hook = standin::simple::Simple::start(&pki, false, Some("k")).await;
        let devices: Vec<Json> = (0..HOUSEHOLDS).map(|i| json!({"household": format!("hh-{i:04}"), "platform": "webhook", "token": format!("{}/h/{i}", hook.server.base_url())})).collect();
        let dir3 = tempfile::tempdir().unwrap();
        let reg3 = write_registry(dir3.path(), Json::Array(devices));
        let p: Vec<(&str, Value)> = vec![
            ("registry", reg3.display().to_string().into()),
            ("hmac_secret", "k".into()),
            ("max_in_flight", Value::Int(64)),
        ];
        let mut out = out_webhook::WebhookOutput::from_params(&params(&out_webhook::spec(), p), &ctx()).unwrap();
        let took = drive(&mut out, &batches).await;
        assert_eq!(hook.received().len(), n);
        report("output webhook (HTTP/1.1, 64 conns)", n, took, "");
    });
}
