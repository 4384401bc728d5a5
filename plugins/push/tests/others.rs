//! `output webhook`, `output ntfy` and `output wns` against their
//! stand-ins: success, signatures, retire, retry, reject, token refresh.

mod standin;

use std::time::Duration;

use serde_json::{json, Value as Json};
use standin::simple::Simple;
use standin::wns::{Wns, CLIENT_ID, SECRET};
use standin::{batch, ctx, params, write_registry, Pki};
use ulog_engine::{Delivery, Output, Value};
use ulog_plugins_push::{out_ntfy, out_webhook, out_wns};

fn base(reg: &std::path::Path, pki: &Pki) -> Vec<(&'static str, Value)> {
    vec![
        ("registry", reg.display().to_string().into()),
        ("ca_file", pki.ca_file.display().to_string().into()),
        ("registry_reload", Value::Duration(Duration::ZERO)),
    ]
}

#[tokio::test]
async fn webhook_posts_signed_json_to_the_households_url_only() {
    let pki = Pki::new();
    let hook = Simple::start(&pki, false, Some("s3cret")).await;
    let url = |p: &str| format!("{}{p}", hook.server.base_url());
    let reg = write_registry(
        pki.dir.path(),
        json!([
            {"household": "hh-0001", "platform": "webhook", "token": url("/hh1")},
            {"household": "hh-0001", "platform": "webhook", "token": url("/hh1-old")},
            {"household": "hh-0002", "platform": "webhook", "token": url("/hh2")},
        ]),
    );
    hook.state.lock().unwrap().gone.push("/hh1-old".into());
    let mut p = base(&reg, &pki);
    p.push(("hmac_secret", "s3cret".into()));
    p.push((
        "body",
        Value::Map(vec![
            ("text".into(), "{message}".into()),
            ("tag".into(), "{tag}".into()),
        ]),
    ));
    let mut out =
        out_webhook::WebhookOutput::from_params(&params(&out_webhook::spec(), p), &ctx()).unwrap();
    let b = batch(
        "notify",
        vec![json!({"household": "hh-0001", "message": "hello"})],
    );
    assert!(matches!(out.write(&b).await, Delivery::Delivered));
    let got = hook.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].path, "/hh1");
    assert_eq!(
        serde_json::from_slice::<Json>(&got[0].body).unwrap(),
        json!({"text": "hello", "tag": "notify"})
    );
    assert_eq!(
        got[0].header("x-ulog-event-id"),
        Some(b.events[0].id.to_string().as_str())
    );
    assert!(
        std::fs::read_to_string(&reg)
            .unwrap()
            .contains("HTTP 410 at"),
        "a removed webhook is retired"
    );
    assert!(
        matches!(out.write(&b).await, Delivery::Delivered),
        "already delivered: not sent again"
    );
    assert_eq!(hook.received().len(), 1);
    hook.state.lock().unwrap().forced.push_back(503);
    let b1 = batch(
        "notify",
        vec![json!({"household": "hh-0001", "message": "later"})],
    );
    assert!(matches!(out.write(&b1).await, Delivery::Retry(_)));
    assert!(matches!(out.write(&b1).await, Delivery::Delivered));
    hook.state.lock().unwrap().forced.push_back(400);
    let b2 = batch(
        "notify",
        vec![json!({"household": "hh-0001", "message": "again"})],
    );
    assert!(matches!(out.write(&b2).await, Delivery::Partial(f) if !f[0].retryable));
    assert!(hook.violations().is_empty(), "{:?}", hook.violations());
}

#[tokio::test]
async fn a_wrong_webhook_secret_is_caught_by_the_receiver() {
    let pki = Pki::new();
    let hook = Simple::start(&pki, false, Some("right")).await;
    let reg = write_registry(
        pki.dir.path(),
        json!([{"household": "hh-0001", "platform": "webhook", "token": format!("{}/x", hook.server.base_url())}]),
    );
    let mut p = base(&reg, &pki);
    p.push(("hmac_secret", "wrong".into()));
    let mut out =
        out_webhook::WebhookOutput::from_params(&params(&out_webhook::spec(), p), &ctx()).unwrap();
    let d = out
        .write(&batch(
            "n",
            vec![json!({"household": "hh-0001", "message": "m"})],
        ))
        .await;
    assert!(
        matches!(d, Delivery::Partial(f) if !f[0].retryable && f[0].error.to_string().contains("401"))
    );
    assert_eq!(hook.violations().len(), 1);
}

#[tokio::test]
async fn ntfy_publishes_json_to_the_households_topic() {
    let pki = Pki::new();
    let ntfy = Simple::start(&pki, true, None).await;
    let reg = write_registry(
        pki.dir.path(),
        json!([
            {"household": "hh-0001", "platform": "ntfy", "token": "hh1-alerts"},
            {"household": "hh-0001", "platform": "ntfy", "token": "bad/../topic"},
            {"household": "hh-0002", "platform": "ntfy", "token": "hh2-alerts"},
        ]),
    );
    let mut p = base(&reg, &pki);
    p.push(("base_url", ntfy.server.base_url().into()));
    p.push(("title", "{title}".into()));
    p.push(("priority", Value::Int(4)));
    p.push(("tags", Value::List(vec!["car".into()])));
    let mut out = out_ntfy::NtfyOutput::from_params(&params(&out_ntfy::spec(), p), &ctx()).unwrap();
    let b = batch(
        "notify",
        vec![json!({"household": "hh-0001", "title": "Car", "message": "left"})],
    );
    let Delivery::Partial(f) = out.write(&b).await else {
        panic!()
    };
    assert!(f[0].error.to_string().contains("not a plain topic name"));
    let got = ntfy.received();
    assert_eq!(got.len(), 1);
    assert_eq!(
        serde_json::from_slice::<Json>(&got[0].body).unwrap(),
        json!({"message": "left", "title": "Car", "priority": 4, "tags": ["car"], "topic": "hh1-alerts"})
    );
    assert!(ntfy.violations().is_empty(), "{:?}", ntfy.violations());
}

#[tokio::test]
async fn wns_toasts_with_a_cached_token_retire_410_and_back_off_on_406() {
    let pki = Pki::new();
    let wns = Wns::start(&pki).await;
    {
        let mut s = wns.state.lock().unwrap();
        s.live.push("ch1".into());
        s.gone.push("ch-old".into());
        s.lifetime = Duration::from_secs(2);
    }
    let reg = write_registry(
        pki.dir.path(),
        json!([
            {"household": "hh-0001", "platform": "wns", "token": wns.channel("ch1")},
            {"household": "hh-0001", "platform": "wns", "token": wns.channel("ch-old")},
            {"household": "hh-0001", "platform": "wns", "token": "https://evil.example.com/w/ch1"},
        ]),
    );
    let mut p = base(&reg, &pki);
    p.push(("client_id", CLIENT_ID.into()));
    p.push(("client_secret", SECRET.into()));
    p.push((
        "token_url",
        format!("{}/accesstoken.srf", wns.server.base_url()).into(),
    ));
    p.push(("channel_host_suffix", "127.0.0.1".into()));
    p.push(("payload", "<toast><visual><binding template=\"ToastGeneric\"><text>{message}</text></binding></visual></toast>".into()));
    let mut out = out_wns::WnsOutput::from_params(&params(&out_wns::spec(), p), &ctx()).unwrap();
    let b = batch(
        "notify",
        vec![json!({"household": "hh-0001", "message": "Tom & Jerry <3"})],
    );
    let Delivery::Partial(f) = out.write(&b).await else {
        panic!()
    };
    assert_eq!(f.len(), 1);
    assert!(
        f[0].error.to_string().contains("not https on"),
        "{}",
        f[0].error
    );
    let got = wns.state.lock().unwrap().received.clone();
    assert_eq!(got.len(), 1);
    assert!(String::from_utf8_lossy(&got[0].body).contains("Tom &amp; Jerry &lt;3"));
    assert!(std::fs::read_to_string(&reg).unwrap().contains("HTTP 410"));
    wns.state.lock().unwrap().forced.push_back(406);
    let b = batch(
        "notify",
        vec![json!({"household": "hh-0001", "message": "x"})],
    );
    assert!(matches!(out.write(&b).await, Delivery::Retry(e) if e.to_string().contains("406")));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let b = batch(
        "notify",
        vec![json!({"household": "hh-0001", "message": "y"})],
    );
    assert!(matches!(out.write(&b).await, Delivery::Partial(f) if f.len() == 1 && !f[0].retryable));
    assert_eq!(
        wns.state.lock().unwrap().grants,
        2,
        "token reused, then refreshed after expiry"
    );
    assert!(
        wns.state.lock().unwrap().violations.is_empty(),
        "{:?}",
        wns.state.lock().unwrap().violations
    );
}
