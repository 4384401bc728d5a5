//! `output fcm` against the OAuth and FCM v1 stand-ins: success with the
//! message schema, each error class, the access token reused and refreshed
//! across expiry, gateway down and back, concurrency.

mod standin;

use std::time::Duration;

use serde_json::{json, Value as Json};
use standin::fcm::{Fcm, TokenState};
use standin::{batch, ctx, params, write_registry, Pki};
use ulog_engine::{Delivery, Output, Value};
use ulog_plugins_push::out_fcm::{spec, FcmOutput};

async fn setup(devices: Json) -> (Pki, Fcm, std::path::PathBuf) {
    let pki = Pki::new();
    let fcm = Fcm::start(&pki).await;
    let reg = write_registry(pki.dir.path(), devices);
    (pki, fcm, reg)
}

fn output(pki: &Pki, fcm: &Fcm, reg: &std::path::Path, extra: Vec<(&str, Value)>) -> FcmOutput {
    let mut p: Vec<(&str, Value)> = vec![
        ("registry", reg.display().to_string().into()),
        (
            "service_account_file",
            fcm.key_file.display().to_string().into(),
        ),
        ("base_url", fcm.server.base_url().into()),
        ("ca_file", pki.ca_file.display().to_string().into()),
        ("registry_reload", Value::Duration(Duration::ZERO)),
    ];
    p.extend(extra);
    FcmOutput::from_params(&params(&spec(), p), &ctx()).unwrap()
}

fn one(household: &str, token: &str) -> Json {
    json!([{"household": household, "platform": "fcm", "token": token}])
}

#[tokio::test]
async fn success_with_notification_data_and_overrides() {
    let (pki, fcm, reg) = setup(one("hh-0001", "fcm-tok-1")).await;
    fcm.add_token("fcm-tok-1", TokenState::Live);
    let mut out = output(
        &pki,
        &fcm,
        &reg,
        vec![
            ("title", "{title}".into()),
            (
                "data_fields",
                Value::List(vec!["kind".into(), "count".into()]),
            ),
            (
                "android",
                Value::Map(vec![
                    ("priority".into(), "high".into()),
                    (
                        "notification".into(),
                        Value::Map(vec![("channel_id".into(), "{kind}".into())]),
                    ),
                ]),
            ),
        ],
    );
    let b = batch(
        "notify",
        vec![
            json!({"household": "hh-0001", "title": "Car", "message": "Left the drive", "kind": "car", "count": 2}),
        ],
    );
    assert!(matches!(out.write(&b).await, Delivery::Delivered));
    let got = fcm.received();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].message,
        json!({
            "notification": {"title": "Car", "body": "Left the drive"},
            "data": {"kind": "car", "count": "2"},
            "android": {"priority": "high", "notification": {"channel_id": "car"}},
            "token": "fcm-tok-1",
        })
    );
    assert!(fcm.violations().is_empty(), "{:?}", fcm.violations());
}

#[tokio::test]
async fn unregistered_and_invalid_tokens_are_retired_other_invalid_arguments_rejected() {
    let (pki, fcm, reg) = setup(json!([
        {"household": "hh-0001", "platform": "fcm", "token": "live"},
        {"household": "hh-0001", "platform": "fcm", "token": "gone"},
        {"household": "hh-0001", "platform": "fcm", "token": "never-valid"},
    ]))
    .await;
    fcm.add_token("live", TokenState::Live);
    fcm.add_token("gone", TokenState::Unregistered);
    let mut out = output(&pki, &fcm, &reg, vec![]);
    let b = batch(
        "notify",
        vec![json!({"household": "hh-0001", "message": "m"})],
    );
    assert!(matches!(out.write(&b).await, Delivery::Delivered));
    let text = std::fs::read_to_string(&reg).unwrap();
    assert!(
        text.contains("UNREGISTERED at") && text.contains("INVALID_ARGUMENT at"),
        "{text}"
    );
    let b = batch(
        "notify",
        vec![json!({"household": "hh-0001", "message": "m2"})],
    );
    assert!(matches!(out.write(&b).await, Delivery::Delivered));
    assert_eq!(fcm.received().len(), 2);
    assert_eq!(
        fcm.state.lock().unwrap().errors.values().sum::<u64>(),
        2,
        "retired tokens are not tried again"
    );
    let big = "x".repeat(5000);
    let b = batch(
        "notify",
        vec![json!({"household": "hh-0001", "message": big})],
    );
    let Delivery::Partial(f) = out.write(&b).await else {
        panic!()
    };
    assert!(
        !f[0].retryable && f[0].error.to_string().contains("INVALID_ARGUMENT"),
        "{}",
        f[0].error
    );
    fcm.force(403, "SENDER_ID_MISMATCH", None, 1);
    let Delivery::Partial(f) = out
        .write(&batch(
            "n",
            vec![json!({"household": "hh-0001", "message": "m"})],
        ))
        .await
    else {
        panic!()
    };
    assert!(!f[0].retryable && f[0].error.to_string().contains("SENDER_ID_MISMATCH"));
}

#[tokio::test]
async fn unavailable_internal_and_quota_retry_honouring_retry_after() {
    let (pki, fcm, reg) = setup(one("hh-0001", "t1")).await;
    fcm.add_token("t1", TokenState::Live);
    let mut out = output(&pki, &fcm, &reg, vec![]);
    let b = batch(
        "notify",
        vec![json!({"household": "hh-0001", "message": "m"})],
    );
    for (status, code) in [
        (503, "UNAVAILABLE"),
        (500, "INTERNAL"),
        (429, "QUOTA_EXCEEDED"),
    ] {
        fcm.force(status, code, Some(1), 1);
        match out.write(&b).await {
            Delivery::Retry(e) => assert!(e.to_string().contains(code), "{e}"),
            other => panic!("{other:?}"),
        }
    }
    let start = std::time::Instant::now();
    assert!(matches!(out.write(&b).await, Delivery::Delivered));
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "Retry-After: 1 was honoured"
    );
    assert_eq!(fcm.received().len(), 1);
}

#[tokio::test]
async fn the_access_token_is_reused_then_refreshed_across_expiry() {
    let (pki, fcm, reg) = setup(one("hh-0001", "t1")).await;
    fcm.add_token("t1", TokenState::Live);
    fcm.state.lock().unwrap().lifetime = Duration::from_secs(2);
    let mut out = output(&pki, &fcm, &reg, vec![]);
    let records: Vec<Json> = (0..100)
        .map(|i| json!({"household": "hh-0001", "message": format!("m{i}")}))
        .collect();
    assert!(matches!(
        out.write(&batch("n", records.clone())).await,
        Delivery::Delivered
    ));
    assert_eq!(fcm.grants(), 1, "one token for 100 sends");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(matches!(
        out.write(&batch("n", records)).await,
        Delivery::Delivered
    ));
    assert_eq!(fcm.grants(), 2);
    assert_eq!(fcm.received().len(), 200);
    assert!(fcm.violations().is_empty(), "{:?}", fcm.violations());
}

#[tokio::test]
async fn a_token_the_gateway_expired_early_is_replaced() {
    let (pki, fcm, reg) = setup(one("hh-0001", "t1")).await;
    fcm.add_token("t1", TokenState::Live);
    let mut out = output(&pki, &fcm, &reg, vec![]);
    assert!(matches!(
        out.write(&batch(
            "n",
            vec![json!({"household": "hh-0001", "message": "a"})]
        ))
        .await,
        Delivery::Delivered
    ));
    // The gateway revokes it early: expire every issued token now.
    for v in fcm.state.lock().unwrap().issued.values_mut() {
        *v = std::time::Instant::now();
    }
    assert!(matches!(
        out.write(&batch(
            "n",
            vec![json!({"household": "hh-0001", "message": "b"})]
        ))
        .await,
        Delivery::Delivered
    ));
    assert_eq!(fcm.grants(), 2);
    assert_eq!(fcm.received().len(), 2);
}

#[tokio::test]
async fn gateway_down_then_back() {
    let (pki, fcm, reg) = setup(one("hh-0001", "t1")).await;
    fcm.add_token("t1", TokenState::Live);
    let mut out = output(
        &pki,
        &fcm,
        &reg,
        vec![("timeout", Value::Duration(Duration::from_secs(2)))],
    );
    assert!(matches!(
        out.write(&batch(
            "n",
            vec![json!({"household": "hh-0001", "message": "a"})]
        ))
        .await,
        Delivery::Delivered
    ));
    fcm.server.down();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let b = batch(
        "n",
        (0..10)
            .map(|i| json!({"household": "hh-0001", "message": format!("d{i}")}))
            .collect(),
    );
    assert!(matches!(out.write(&b).await, Delivery::Retry(_)));
    fcm.server.up().await;
    assert!(matches!(out.write(&b).await, Delivery::Delivered));
    let bodies: Vec<String> = fcm
        .received()
        .iter()
        .map(|r| {
            r.message["notification"]["body"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(bodies.len(), 11);
    let unique: std::collections::HashSet<_> = bodies.iter().collect();
    assert_eq!(unique.len(), 11, "nothing sent twice");
}

#[tokio::test]
async fn concurrent_sends_share_one_token_fetch() {
    let devices: Vec<Json> = (0..20)
        .map(|i| json!({"household": "hh-0001", "platform": "fcm", "token": format!("t{i}")}))
        .collect();
    let (pki, fcm, reg) = setup(Json::Array(devices)).await;
    for i in 0..20 {
        fcm.add_token(&format!("t{i}"), TokenState::Live);
    }
    let mut out = output(&pki, &fcm, &reg, vec![("max_in_flight", Value::Int(64))]);
    let records: Vec<Json> = (0..50)
        .map(|i| json!({"household": "hh-0001", "message": format!("m{i}")}))
        .collect();
    assert!(matches!(
        out.write(&batch("n", records)).await,
        Delivery::Delivered
    ));
    assert_eq!(fcm.received().len(), 1000);
    assert_eq!(fcm.grants(), 1);
    assert!(fcm.violations().is_empty(), "{:?}", fcm.violations());
}
