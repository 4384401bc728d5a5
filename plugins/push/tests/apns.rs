//! `output apns` against the APNs stand-in: success, each error class,
//! provider-token reuse and refresh, gateway down and back, concurrency.

mod standin;

use std::time::Duration;

use serde_json::{json, Value as Json};
use standin::apns::{Apns, TokenState, KEY_ID, TEAM_ID, TOPIC};
use standin::{batch, ctx, params, write_registry, Pki};
use ulog_engine::{Delivery, Output, Value};
use ulog_plugins_push::out_apns::{spec, ApnsOutput};

fn tok(n: u8) -> String {
    format!("{:064x}", u128::from(n) * 0x1111_1111_1111_1111_1111_1111)
}

async fn setup(devices: Json) -> (Pki, Apns, std::path::PathBuf) {
    let pki = Pki::new();
    let apns = Apns::start(&pki).await;
    let reg = write_registry(pki.dir.path(), devices);
    (pki, apns, reg)
}

fn output(pki: &Pki, apns: &Apns, reg: &std::path::Path, extra: Vec<(&str, Value)>) -> ApnsOutput {
    let mut p: Vec<(&str, Value)> = vec![
        ("registry", reg.display().to_string().into()),
        ("key_file", apns.key_file.display().to_string().into()),
        ("key_id", KEY_ID.into()),
        ("team_id", TEAM_ID.into()),
        ("topic", TOPIC.into()),
        ("base_url", apns.server.base_url().into()),
        ("ca_file", pki.ca_file.display().to_string().into()),
        ("registry_reload", Value::Duration(Duration::ZERO)),
    ];
    p.extend(extra);
    ApnsOutput::from_params(&params(&spec(), p), &ctx()).unwrap()
}

#[tokio::test]
async fn success_with_every_header_and_the_payload_template() {
    let t1 = tok(1);
    let (pki, apns, reg) =
        setup(json!([{"household": "hh-0001", "platform": "apns", "token": t1, "name": "iphone"}]))
            .await;
    apns.add_token(&t1, TokenState::Live);
    let mut out = output(
        &pki,
        &apns,
        &reg,
        vec![
            ("title", "{title}".into()),
            ("body", "{message}".into()),
            ("badge_key", "badge".into()),
            ("sound", "default".into()),
            ("data_fields", Value::List(vec!["kind".into()])),
            ("collapse_id", "{household}-{kind}".into()),
            ("expiration", Value::Duration(Duration::from_secs(3600))),
        ],
    );
    let b = batch(
        "notify.door",
        vec![
            json!({"household": "hh-0001", "title": "Front door", "message": "Opened", "badge": 3, "kind": "door", "secret": "x"}),
        ],
    );
    assert!(matches!(out.write(&b).await, Delivery::Delivered));
    let got = apns.received();
    assert_eq!(got.len(), 1);
    let r = &got[0];
    assert_eq!(r.token, t1);
    assert_eq!(
        r.payload,
        json!({"aps": {"alert": {"title": "Front door", "body": "Opened"}, "badge": 3, "sound": "default"}, "kind": "door"})
    );
    assert_eq!(
        r.apns_id.as_deref(),
        Some(b.events[0].id.to_string().as_str())
    );
    assert_eq!(r.collapse_id.as_deref(), Some("hh-0001-door"));
    assert_eq!(r.push_type, "alert");
    assert_eq!(r.priority.as_deref(), Some("10"));
    let exp: u64 = r.expiration.as_deref().unwrap().parse().unwrap();
    assert!(exp > standin::now() + 3500);
    assert!(apns.violations().is_empty(), "{:?}", apns.violations());
}

#[tokio::test]
async fn background_pushes_have_no_alert_and_priority_5() {
    let t1 = tok(1);
    let (pki, apns, reg) =
        setup(json!([{"household": "hh-0001", "platform": "apns", "token": t1}])).await;
    apns.add_token(&t1, TokenState::Live);
    let mut out = output(&pki, &apns, &reg, vec![("push_type", "background".into())]);
    let b = batch(
        "notify",
        vec![json!({"household": "hh-0001", "message": "x"})],
    );
    assert!(matches!(out.write(&b).await, Delivery::Delivered));
    let r = &apns.received()[0];
    assert_eq!(r.payload, json!({"aps": {"content-available": 1}}));
    assert_eq!(r.priority.as_deref(), Some("5"));
    assert!(apns.violations().is_empty(), "{:?}", apns.violations());
}

#[tokio::test]
async fn unregistered_and_bad_tokens_are_retired_and_not_used_again() {
    let (live, gone, bad) = (tok(1), tok(2), tok(3));
    let (pki, apns, reg) = setup(json!([
        {"household": "hh-0001", "platform": "apns", "token": live},
        {"household": "hh-0001", "platform": "apns", "token": gone},
        {"household": "hh-0001", "platform": "apns", "token": bad},
    ]))
    .await;
    apns.add_token(&live, TokenState::Live);
    apns.add_token(&gone, TokenState::Unregistered);
    let mut out = output(&pki, &apns, &reg, vec![]);
    let b = batch(
        "notify",
        vec![json!({"household": "hh-0001", "message": "one"})],
    );
    assert!(
        matches!(out.write(&b).await, Delivery::Delivered),
        "a retired token is not a failure of the event"
    );
    let text = std::fs::read_to_string(&reg).unwrap();
    assert!(text.contains("Unregistered at"), "{text}");
    assert!(text.contains("BadDeviceToken at"), "{text}");
    let before = apns.state.lock().unwrap().requests;
    let b = batch(
        "notify",
        vec![json!({"household": "hh-0001", "message": "two"})],
    );
    assert!(matches!(out.write(&b).await, Delivery::Delivered));
    let after = apns.state.lock().unwrap().requests;
    assert_eq!(after - before, 1, "only the live token is tried again");
    assert_eq!(
        apns.received().iter().filter(|r| r.token == live).count(),
        2
    );
}

#[tokio::test]
async fn payload_too_large_and_other_4xx_go_to_errors_with_the_reason() {
    let t1 = tok(1);
    let (pki, apns, reg) =
        setup(json!([{"household": "hh-0001", "platform": "apns", "token": t1}])).await;
    apns.add_token(&t1, TokenState::Live);
    let mut out = output(&pki, &apns, &reg, vec![]);
    let big = "x".repeat(5000);
    let b = batch(
        "notify",
        vec![
            json!({"household": "hh-0001", "message": big}),
            json!({"household": "hh-0001", "message": "fine"}),
            json!({"household": "hh-9999", "message": "nobody"}),
            json!({"message": "no household"}),
            json!({"household": "hh-0001"}),
        ],
    );
    let Delivery::Partial(f) = out.write(&b).await else {
        panic!("expected Partial")
    };
    let by: Vec<(usize, bool, String)> = f
        .iter()
        .map(|f| (f.index, f.retryable, f.error.to_string()))
        .collect();
    assert_eq!(by.len(), 4, "{by:?}");
    assert!(by.iter().all(|(_, r, _)| !r), "{by:?}");
    assert!(
        by[0].0 == 0 && by[0].2.contains("413 PayloadTooLarge"),
        "{by:?}"
    );
    assert!(
        by[1].0 == 2 && by[1].2.contains("not in the device registry"),
        "{by:?}"
    );
    assert!(
        by[2].0 == 3 && by[2].2.contains("no field \"household\""),
        "{by:?}"
    );
    assert!(
        by[3].0 == 4 && by[3].2.contains("no field \"message\""),
        "{by:?}"
    );
    apns.force(400, "BadTopic", 1);
    let b = batch(
        "notify",
        vec![json!({"household": "hh-0001", "message": "m"})],
    );
    let Delivery::Partial(f) = out.write(&b).await else {
        panic!()
    };
    assert!(!f[0].retryable && f[0].error.to_string().contains("400 BadTopic"));
    assert_eq!(apns.received().len(), 1);
}

#[tokio::test]
async fn too_many_requests_and_5xx_are_retried_without_resending_to_devices_that_have_it() {
    let (a, b2) = (tok(1), tok(2));
    let (pki, apns, reg) = setup(json!([
        {"household": "hh-0001", "platform": "apns", "token": a},
        {"household": "hh-0001", "platform": "apns", "token": b2},
    ]))
    .await;
    apns.add_token(&a, TokenState::Live);
    apns.add_token(&b2, TokenState::Live);
    let mut out = output(&pki, &apns, &reg, vec![("max_in_flight", Value::Int(1))]);
    let b = batch(
        "notify",
        vec![json!({"household": "hh-0001", "message": "m"})],
    );
    for (status, reason) in [
        (429, "TooManyRequests"),
        (503, "ServiceUnavailable"),
        (500, "InternalServerError"),
    ] {
        apns.force(status, reason, 1);
        match out.write(&b).await {
            Delivery::Retry(e) => assert!(e.to_string().contains(reason), "{e}"),
            other => panic!("{other:?}"),
        }
    }
    assert!(matches!(out.write(&b).await, Delivery::Delivered));
    let got = apns.received();
    assert_eq!(
        got.iter().filter(|r| r.token == a).count(),
        1,
        "sent once to each device"
    );
    assert_eq!(got.iter().filter(|r| r.token == b2).count(), 1);
    assert!(got
        .iter()
        .all(|r| r.apns_id.as_deref() == Some(b.events[0].id.to_string().as_str())));
}

#[tokio::test]
async fn the_provider_token_is_reused_then_refreshed() {
    let t1 = tok(1);
    let (pki, apns, reg) =
        setup(json!([{"household": "hh-0001", "platform": "apns", "token": t1}])).await;
    apns.add_token(&t1, TokenState::Live);
    let mut out = output(
        &pki,
        &apns,
        &reg,
        vec![("token_refresh", Value::Duration(Duration::from_secs(3)))],
    );
    let records: Vec<Json> = (0..200)
        .map(|i| json!({"household": "hh-0001", "message": format!("m{i}")}))
        .collect();
    assert!(matches!(
        out.write(&batch("n", records.clone())).await,
        Delivery::Delivered
    ));
    assert_eq!(apns.jwt_count(), 1, "one JWT for 200 notifications");
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert!(matches!(
        out.write(&batch("n", records)).await,
        Delivery::Delivered
    ));
    assert_eq!(apns.jwt_count(), 2, "refreshed after token_refresh");
    assert!(apns.violations().is_empty(), "{:?}", apns.violations());
}

#[tokio::test]
async fn an_expired_provider_token_is_replaced_and_the_notification_sent() {
    let t1 = tok(1);
    let (pki, apns, reg) =
        setup(json!([{"household": "hh-0001", "platform": "apns", "token": t1}])).await;
    apns.add_token(&t1, TokenState::Live);
    apns.state.lock().unwrap().token_max_age = 2;
    let mut out = output(&pki, &apns, &reg, vec![]);
    assert!(matches!(
        out.write(&batch(
            "n",
            vec![json!({"household": "hh-0001", "message": "a"})]
        ))
        .await,
        Delivery::Delivered
    ));
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert!(matches!(
        out.write(&batch(
            "n",
            vec![json!({"household": "hh-0001", "message": "b"})]
        ))
        .await,
        Delivery::Delivered
    ));
    assert_eq!(apns.received().len(), 2);
    assert_eq!(apns.jwt_count(), 2);
    assert_eq!(
        apns.state
            .lock()
            .unwrap()
            .errors
            .get("ExpiredProviderToken"),
        Some(&1)
    );
}

#[tokio::test]
async fn gateway_down_then_back_loses_nothing_and_sends_nothing_twice() {
    let t1 = tok(1);
    let (pki, apns, reg) =
        setup(json!([{"household": "hh-0001", "platform": "apns", "token": t1}])).await;
    apns.add_token(&t1, TokenState::Live);
    let mut out = output(
        &pki,
        &apns,
        &reg,
        vec![("timeout", Value::Duration(Duration::from_secs(2)))],
    );
    assert!(matches!(
        out.write(&batch(
            "n",
            vec![json!({"household": "hh-0001", "message": "before"})]
        ))
        .await,
        Delivery::Delivered
    ));
    apns.server.down();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let b = batch(
        "n",
        (0..20)
            .map(|i| json!({"household": "hh-0001", "message": format!("during {i}")}))
            .collect(),
    );
    assert!(matches!(out.write(&b).await, Delivery::Retry(_)));
    apns.server.up().await;
    assert!(matches!(out.write(&b).await, Delivery::Delivered));
    let got = apns.received();
    assert_eq!(got.len(), 21);
    let ids: std::collections::HashSet<_> = got.iter().map(|r| r.apns_id.clone()).collect();
    assert_eq!(ids.len(), 21, "no apns-id twice");
}

#[tokio::test]
async fn many_notifications_in_flight_on_one_connection() {
    let tokens: Vec<String> = (0..50).map(|i| format!("{:064x}", 0xabc000 + i)).collect();
    let devices: Vec<Json> = tokens.iter().enumerate().map(|(i, t)| json!({"household": format!("hh-{:04}", i % 10), "platform": "apns", "token": t})).collect();
    let (pki, apns, reg) = setup(Json::Array(devices)).await;
    for t in &tokens {
        apns.add_token(t, TokenState::Live);
    }
    let mut out = output(&pki, &apns, &reg, vec![]);
    let records: Vec<Json> = (0..400)
        .map(|i| json!({"household": format!("hh-{:04}", i % 10), "message": format!("m{i}")}))
        .collect();
    assert!(matches!(
        out.write(&batch("n", records)).await,
        Delivery::Delivered
    ));
    assert_eq!(apns.received().len(), 400 * 5);
    assert_eq!(
        *apns.server.connections.lock().unwrap(),
        1,
        "one HTTP/2 connection"
    );
    assert_eq!(apns.jwt_count(), 1);
}

#[tokio::test]
async fn a_jwt_signed_with_another_key_is_refused_by_the_stand_in() {
    let t1 = tok(1);
    let (pki, apns, reg) =
        setup(json!([{"household": "hh-0001", "platform": "apns", "token": t1}])).await;
    apns.add_token(&t1, TokenState::Live);
    let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let other_file = pki.dir.path().join("other.p8");
    std::fs::write(&other_file, other.serialize_pem()).unwrap();
    let mut out = output(&pki, &apns, &reg, vec![]);
    out = {
        drop(out);
        let mut p: Vec<(&str, Value)> = vec![
            ("registry", reg.display().to_string().into()),
            ("key_file", other_file.display().to_string().into()),
            ("key_id", KEY_ID.into()),
            ("team_id", TEAM_ID.into()),
            ("topic", TOPIC.into()),
            ("base_url", apns.server.base_url().into()),
            ("ca_file", pki.ca_file.display().to_string().into()),
        ];
        p.push(("registry_reload", Value::Duration(Duration::ZERO)));
        ApnsOutput::from_params(&params(&spec(), p), &ctx()).unwrap()
    };
    match out
        .write(&batch(
            "n",
            vec![json!({"household": "hh-0001", "message": "a"})],
        ))
        .await
    {
        Delivery::Retry(e) => assert!(e.to_string().contains("InvalidProviderToken"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert!(apns.received().is_empty());
    assert_eq!(
        apns.violations(),
        vec!["JWT signature does not verify".to_string()]
    );
}

#[tokio::test]
async fn a_device_added_to_the_registry_file_is_used_after_reload() {
    let (t1, t2) = (tok(1), tok(2));
    let (pki, apns, reg) =
        setup(json!([{"household": "hh-0001", "platform": "apns", "token": t1}])).await;
    apns.add_token(&t1, TokenState::Live);
    apns.add_token(&t2, TokenState::Live);
    let mut out = output(&pki, &apns, &reg, vec![]);
    let b = || batch("n", vec![json!({"household": "hh-0001", "message": "m"})]);
    assert!(matches!(out.write(&b()).await, Delivery::Delivered));
    write_registry(
        pki.dir.path(),
        json!([
            {"household": "hh-0001", "platform": "apns", "token": t1},
            {"household": "hh-0001", "platform": "apns", "token": t2, "name": "new iPad"},
        ]),
    );
    assert!(matches!(out.write(&b()).await, Delivery::Delivered));
    let got = apns.received();
    assert_eq!(got.iter().filter(|r| r.token == t1).count(), 2);
    assert_eq!(got.iter().filter(|r| r.token == t2).count(), 1);
}
