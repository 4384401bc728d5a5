//! The trial scenario end to end: two households, each with an iPhone
//! (APNs) and an Android phone (FCM) in one registry; events addressed by
//! their `household` field reach exactly that household's phones with the
//! expected payloads; an unknown household goes to `errors`; a retired
//! token is not used again; and no tag or field lets an event reach another
//! household's device.

mod standin;

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{json, Value as Json};
use standin::{apns, batch, ctx, fcm, params, write_registry, Pki};
use ulog_engine::{Batch, Delivery, Output, Value};
use ulog_plugins_push::out_apns::{self, ApnsOutput};
use ulog_plugins_push::out_fcm::{self, FcmOutput};

const IPHONE_1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const IPHONE_2: &str = "2222222222222222222222222222222222222222222222222222222222222222";
const ANDROID_1: &str = "android-hh1:APA91b-one";
const ANDROID_2: &str = "android-hh2:APA91b-two";

struct Trial {
    _pki: Pki,
    apns: apns::Apns,
    fcm: fcm::Fcm,
    reg: std::path::PathBuf,
    to_apns: ApnsOutput,
    to_fcm: FcmOutput,
}

async fn trial() -> Trial {
    let pki = Pki::new();
    let apns = apns::Apns::start(&pki).await;
    let fcm = fcm::Fcm::start(&pki).await;
    let reg = write_registry(
        pki.dir.path(),
        json!([
            {"household": "hh-0001", "platform": "apns", "token": IPHONE_1, "name": "hh-0001 iPhone"},
            {"household": "hh-0001", "platform": "fcm", "token": ANDROID_1, "name": "hh-0001 Android"},
            {"household": "hh-0002", "platform": "apns", "token": IPHONE_2, "name": "hh-0002 iPhone"},
            {"household": "hh-0002", "platform": "fcm", "token": ANDROID_2, "name": "hh-0002 Android"},
        ]),
    );
    for t in [IPHONE_1, IPHONE_2] {
        apns.add_token(t, apns::TokenState::Live);
    }
    for t in [ANDROID_1, ANDROID_2] {
        fcm.add_token(t, fcm::TokenState::Live);
    }
    let common = |p: &mut Vec<(&'static str, Value)>| {
        p.push(("registry", reg.display().to_string().into()));
        p.push(("ca_file", pki.ca_file.display().to_string().into()));
        p.push(("registry_reload", Value::Duration(Duration::ZERO)));
        p.push(("title", "{title}".into()));
        p.push(("body", "{message}".into()));
        p.push((
            "data_fields",
            Value::List(vec!["event".into(), "device".into()]),
        ));
    };
    let mut pa: Vec<(&str, Value)> = vec![
        ("key_file", apns.key_file.display().to_string().into()),
        ("key_id", apns::KEY_ID.into()),
        ("team_id", apns::TEAM_ID.into()),
        ("topic", apns::TOPIC.into()),
        ("base_url", apns.server.base_url().into()),
    ];
    common(&mut pa);
    let mut pf: Vec<(&str, Value)> = vec![
        (
            "service_account_file",
            fcm.key_file.display().to_string().into(),
        ),
        ("base_url", fcm.server.base_url().into()),
    ];
    common(&mut pf);
    let to_apns = ApnsOutput::from_params(&params(&out_apns::spec(), pa), &ctx()).unwrap();
    let to_fcm = FcmOutput::from_params(&params(&out_fcm::spec(), pf), &ctx()).unwrap();
    Trial {
        _pki: pki,
        apns,
        fcm,
        reg,
        to_apns,
        to_fcm,
    }
}

impl Trial {
    /// Sends `b` through both outputs, as a route copying to both would.
    async fn send(&mut self, b: &Batch) -> (Delivery, Delivery) {
        (self.to_apns.write(b).await, self.to_fcm.write(b).await)
    }

    /// (token, title, body) of everything each gateway received.
    fn got(&self) -> Vec<(String, String, String)> {
        let mut v: Vec<_> = self
            .apns
            .received()
            .into_iter()
            .map(|r| {
                let a = &r.payload["aps"]["alert"];
                (
                    r.token,
                    a["title"].as_str().unwrap_or("").into(),
                    a["body"].as_str().unwrap_or("").into(),
                )
            })
            .chain(self.fcm.received().into_iter().map(|r| {
                let n = &r.message["notification"];
                (
                    r.token,
                    n["title"].as_str().unwrap_or("").into(),
                    n["body"].as_str().unwrap_or("").into(),
                )
            }))
            .collect();
        v.sort();
        v
    }
}

fn beacon(household: &str, event: &str) -> Json {
    json!({
        "household": household, "device": "iphone-7", "event": event,
        "title": "Car", "message": format!("{household}: phone {event}ed the car"),
    })
}

#[tokio::test]
async fn each_household_gets_exactly_its_own_notifications() {
    let mut t = trial().await;
    let b = batch(
        "phone.beacon",
        vec![
            beacon("hh-0001", "exit"),
            beacon("hh-0002", "enter"),
            beacon("hh-0003", "exit"),
        ],
    );
    let (a, f) = t.send(&b).await;
    for d in [a, f] {
        let Delivery::Partial(fails) = d else {
            panic!("{d:?}")
        };
        assert_eq!(fails.len(), 1);
        assert_eq!(fails[0].index, 2);
        assert!(!fails[0].retryable);
        assert!(
            fails[0]
                .error
                .to_string()
                .contains("household \"hh-0003\" is not in the device registry"),
            "{}",
            fails[0].error
        );
    }
    let mut want = vec![
        (
            ANDROID_1.to_string(),
            "Car".to_string(),
            "hh-0001: phone exited the car".to_string(),
        ),
        (
            ANDROID_2.to_string(),
            "Car".to_string(),
            "hh-0002: phone entered the car".to_string(),
        ),
        (
            IPHONE_1.to_string(),
            "Car".to_string(),
            "hh-0001: phone exited the car".to_string(),
        ),
        (
            IPHONE_2.to_string(),
            "Car".to_string(),
            "hh-0002: phone entered the car".to_string(),
        ),
    ];
    want.sort();
    assert_eq!(t.got(), want);
    // The whole payloads, as the phones get them.
    let ios = t
        .apns
        .received()
        .into_iter()
        .find(|r| r.token == IPHONE_1)
        .unwrap();
    assert_eq!(
        ios.payload,
        json!({"aps": {"alert": {"title": "Car", "body": "hh-0001: phone exited the car"}}, "event": "exit", "device": "iphone-7"})
    );
    let android = t
        .fcm
        .received()
        .into_iter()
        .find(|r| r.token == ANDROID_2)
        .unwrap();
    assert_eq!(
        android.message,
        json!({
            "notification": {"title": "Car", "body": "hh-0002: phone entered the car"},
            "data": {"event": "enter", "device": "iphone-7"},
            "token": ANDROID_2,
        })
    );
    assert!(t.apns.violations().is_empty() && t.fcm.violations().is_empty());
}

#[tokio::test]
async fn a_retired_token_is_not_used_again_by_either_output() {
    let mut t = trial().await;
    t.apns.add_token(IPHONE_1, apns::TokenState::Unregistered);
    let (a, f) = t
        .send(&batch("phone.beacon", vec![beacon("hh-0001", "exit")]))
        .await;
    assert!(matches!(a, Delivery::Delivered) && matches!(f, Delivery::Delivered));
    assert!(std::fs::read_to_string(&t.reg)
        .unwrap()
        .contains("Unregistered at"));
    let before = t.apns.state.lock().unwrap().requests;
    let (a, _) = t
        .send(&batch("phone.beacon", vec![beacon("hh-0001", "enter")]))
        .await;
    assert!(matches!(a, Delivery::Delivered));
    assert_eq!(
        t.apns.state.lock().unwrap().requests,
        before,
        "the retired iPhone is not tried again"
    );
    assert_eq!(
        t.fcm.received().len(),
        2,
        "the Android phone still gets both"
    );
}

/// Every way an event for hh-0001 might try to reach hh-0002: look-alike
/// household values, lists, patterns, other types, destination-looking
/// fields, tags naming the other household. The rule checked: an event
/// reaches exactly the devices the registry lists for its `household`
/// string, and nothing when that string is not a registry household.
#[tokio::test]
async fn no_tag_or_field_reaches_another_households_device() {
    let mut t = trial().await;
    let households: Vec<Json> = vec![
        json!("hh-0001"),
        json!("hh-0002 "),
        json!(" hh-0002"),
        json!("HH-0002"),
        json!("hh-0002\n"),
        json!("hh-000*"),
        json!("*"),
        json!("**"),
        json!(""),
        json!("hh-0001,hh-0002"),
        json!("hh-0001 hh-0002"),
        json!(["hh-0002"]),
        json!({"id": "hh-0002"}),
        json!(null),
        json!(2),
        json!(true),
        json!("hh-0002\u{0}"),
        json!("hh-0001/../hh-0002"),
        json!("hh-0002".repeat(30)),
    ];
    let tags = [
        "phone.beacon",
        "hh-0002",
        "notify.hh-0002",
        "hh-0002.apns",
        "phone.beacon.hh-0002",
    ];
    let extras: Vec<(&str, Json)> = vec![
        ("token", json!(IPHONE_2)),
        ("device_token", json!(ANDROID_2)),
        ("to", json!(ANDROID_2)),
        ("registration_ids", json!([ANDROID_2, IPHONE_2])),
        ("topic", json!("hh-0002")),
        ("households", json!(["hh-0002"])),
        ("record", json!({"household": "hh-0002"})),
    ];
    let mut sent = 0;
    for tag in tags {
        let mut records = Vec::new();
        for h in &households {
            for (k, v) in &extras {
                let mut r = json!({"title": "T", "message": "M", "event": "exit", "device": "d"});
                r["household"] = h.clone();
                r[*k] = v.clone();
                records.push(r);
            }
            let mut r = json!({"title": "T", "message": "M", "event": "exit", "device": "d"});
            r["household"] = h.clone();
            records.push(r);
        }
        let b = batch(tag, records);
        let (a, f) = t.send(&b).await;
        for d in [a, f] {
            let failed: HashSet<usize> = match d {
                Delivery::Partial(fs) => fs
                    .iter()
                    .map(|f| {
                        assert!(!f.retryable);
                        f.index
                    })
                    .collect(),
                Delivery::Delivered => HashSet::new(),
                other => panic!("{other:?}"),
            };
            for (i, e) in b.events.iter().enumerate() {
                let exact = e.record.to_map().get("household") == Some(&json!("hh-0001"));
                assert_eq!(
                    !exact,
                    failed.contains(&i),
                    "event {i} ({}) is refused unless its household is exactly hh-0001",
                    e.record.to_json_string()
                );
            }
        }
        sent += b
            .events
            .iter()
            .filter(|e| e.record.to_map().get("household") == Some(&json!("hh-0001")))
            .count();
    }
    let got = t.got();
    assert!(
        got.iter()
            .all(|(tok, _, _)| tok == IPHONE_1 || tok == ANDROID_1),
        "only hh-0001's phones: {got:?}"
    );
    assert_eq!(
        got.len(),
        sent * 2,
        "each exact hh-0001 event reached both of its phones"
    );
    assert!(t.apns.violations().is_empty() && t.fcm.violations().is_empty());
}

#[tokio::test]
async fn a_household_key_pointing_elsewhere_still_only_names_one_household() {
    // Even with the household read from a nested field, the destination is
    // the registry's: a top-level `household` naming hh-0002 changes nothing.
    let mut t = trial().await;
    let mut p: Vec<(&str, Value)> = vec![
        ("key_file", t.apns.key_file.display().to_string().into()),
        ("key_id", apns::KEY_ID.into()),
        ("team_id", apns::TEAM_ID.into()),
        ("topic", apns::TOPIC.into()),
        ("base_url", t.apns.server.base_url().into()),
        ("registry", t.reg.display().to_string().into()),
        ("ca_file", t._pki.ca_file.display().to_string().into()),
        ("household_key", "home.id".into()),
    ];
    p.push(("collapse_id", "{household}".into()));
    let mut out = ApnsOutput::from_params(&params(&out_apns::spec(), p), &ctx()).unwrap();
    let b = batch(
        "phone.beacon",
        vec![json!({"home": {"id": "hh-0001"}, "household": "hh-0002", "message": "m"})],
    );
    assert!(matches!(out.write(&b).await, Delivery::Delivered));
    let got = t.apns.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].token, IPHONE_1);
    assert_eq!(
        got[0].collapse_id.as_deref(),
        Some("hh-0002"),
        "templates fill text, never the destination"
    );
    let _ = t.send(&batch("x", vec![])).await;
}

/// Test-only plugins for the routes-file test: `feed` emits its records as
/// one batch, `collect` keeps what reaches it (here: the `errors` label).
mod harness {
    use std::sync::{Mutex, OnceLock};

    use serde_json::Value as Json;
    use ulog_engine::{
        async_trait, Batch, Delivery, Input, InputContext, Output, ParamKind, ParamSpec,
        PluginError, PluginKind, PluginSpec, Registry,
    };

    pub fn collected() -> &'static Mutex<Vec<Json>> {
        static GOT: OnceLock<Mutex<Vec<Json>>> = OnceLock::new();
        GOT.get_or_init(Default::default)
    }

    struct Feed {
        tag: String,
        records: Vec<Json>,
    }

    #[async_trait]
    impl Input for Feed {
        async fn run(self: Box<Self>, mut ctx: InputContext) -> Result<(), PluginError> {
            let b = crate::standin::batch(&self.tag, self.records.clone());
            ctx.emitter
                .emit(b)
                .await
                .map_err(|e| PluginError::new(e.to_string()))?;
            ctx.shutdown.cancelled().await;
            Ok(())
        }
    }

    struct Collect;

    #[async_trait]
    impl Output for Collect {
        async fn write(&mut self, batch: &Batch) -> Delivery {
            let mut got = collected().lock().unwrap();
            for e in &batch.events {
                got.push(Json::Object(e.record.to_map().into_owned()));
            }
            Delivery::Delivered
        }
    }

    pub fn register(r: &mut Registry) {
        r.add_input(
            PluginSpec::new(PluginKind::Input, "feed", "test input")
                .param(ParamSpec::required("tag", ParamKind::Str, "tag"))
                .param(ParamSpec::required("records", ParamKind::Any, "records")),
            |p, _| {
                let records = match p.get("records").map(|v| v.to_json()) {
                    Some(Json::Array(a)) => a,
                    _ => Vec::new(),
                };
                Ok(Box::new(Feed {
                    tag: p.str("tag")?.to_string(),
                    records,
                }) as Box<dyn Input>)
            },
        );
        r.add_output(
            PluginSpec::new(PluginKind::Output, "collect", "test output"),
            |_, _| Ok(Box::new(Collect) as Box<dyn Output>),
        );
    }
}

/// The same scenario through a routes file: events enter the pipeline,
/// `copy` hands them to both outputs, the unknown household lands in the
/// `errors` label with the reason.
#[tokio::test]
async fn through_a_routes_file_with_copy_and_an_errors_label() {
    let t = trial().await;
    let dir = tempfile::tempdir().unwrap();
    let routes = format!(
        r#"
input feed {{
  tag = "phone.beacon"
  records = [
    {{ household = "hh-0001"  title = "Car"  message = "hh-0001 left"  event = "exit"  device = "iphone-7" }},
    {{ household = "hh-0002"  title = "Car"  message = "hh-0002 arrived"  event = "enter"  device = "pixel" }},
    {{ household = "hh-0404"  title = "Car"  message = "nobody"  event = "exit"  device = "x" }}
  ]
}}
match "phone.**" copy {{
  apns {{
    registry = "{reg}"  ca_file = "{ca}"  base_url = "{apns_url}"
    key_file = "{p8}"  key_id = "{kid}"  team_id = "{team}"  topic = "{topic}"
    title = "{{title}}"  body = "{{message}}"
  }}
  fcm {{
    registry = "{reg}"  ca_file = "{ca}"  base_url = "{fcm_url}"
    service_account_file = "{sa}"  title = "{{title}}"  body = "{{message}}"
  }}
}}
label errors {{
  match "**" collect {{ }}
}}
"#,
        reg = t.reg.display(),
        ca = t._pki.ca_file.display(),
        apns_url = t.apns.server.base_url(),
        fcm_url = t.fcm.server.base_url(),
        p8 = t.apns.key_file.display(),
        kid = apns::KEY_ID,
        team = apns::TEAM_ID,
        topic = apns::TOPIC,
        sa = t.fcm.key_file.display(),
    );
    let mut registry = ulog_engine::Registry::new();
    harness::register(&mut registry);
    ulog_plugins_push::register(&mut registry);
    let options = ulog_lang::Options {
        shutdown_timeout: Duration::from_secs(2),
        ..ulog_lang::Options::default()
    };
    let compiled = ulog_lang::compile_str("routes.conf", &routes, dir.path(), &registry, &options)
        .unwrap_or_else(|d| {
            panic!(
                "{}",
                d.iter().map(|d| d.render()).collect::<Vec<_>>().join("\n")
            )
        });
    let running = compiled.pipeline.start();
    let begun = std::time::Instant::now();
    while t.got().len() < 4 || harness::collected().lock().unwrap().len() < 2 {
        assert!(
            begun.elapsed() < Duration::from_secs(10),
            "got {:?}",
            t.got()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.stop();
    let _ = tokio::time::timeout(Duration::from_secs(5), running.wait()).await;
    let mut want = vec![
        (
            IPHONE_1.to_string(),
            "Car".to_string(),
            "hh-0001 left".to_string(),
        ),
        (
            ANDROID_1.to_string(),
            "Car".to_string(),
            "hh-0001 left".to_string(),
        ),
        (
            IPHONE_2.to_string(),
            "Car".to_string(),
            "hh-0002 arrived".to_string(),
        ),
        (
            ANDROID_2.to_string(),
            "Car".to_string(),
            "hh-0002 arrived".to_string(),
        ),
    ];
    want.sort();
    assert_eq!(t.got(), want);
    let errors = harness::collected().lock().unwrap().clone();
    assert_eq!(errors.len(), 2, "one per output: {errors:?}");
    for e in &errors {
        assert_eq!(e["household"], "hh-0404");
        assert!(
            e.to_string()
                .contains("household \\\"hh-0404\\\" is not in the device registry"),
            "{e}"
        );
    }
}
