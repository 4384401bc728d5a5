//! `input nissan` against a local stand-in of both Nissan services that
//! checks what the real ones check: the login flow (the Blowfish-encrypted
//! password decrypts to the account's password), the session id, DCM id and
//! VIN on every car request, the OAuth refresh grant and bearer token. It
//! answers with the real sample responses, and can expire sessions, rate
//! limit (429 + Retry-After) and change the reading.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use blowfish::Blowfish;
use bytes::Bytes;
use ecb::cipher::{block_padding::Pkcs7, BlockDecryptMut, KeyInit};
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use serde_json::{json, Value};
use ulog_engine::{Registry, Running};
use ulog_lang::Options;

const KEY: &str = "uyI5Dj9g8VCOFDnBRUbr3g";
const USER: &str = "driver@example.org";
const PASSWORD: &str = "correct horse";
const SESSION: &str = "Abc123SessionXyz";

fn sample(name: &str) -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/testdata/nissan")
        .join(name);
    serde_json::from_str(
        &std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
    )
    .unwrap()
}

#[derive(Default)]
struct State {
    /// Request paths seen, in order.
    calls: Vec<String>,
    /// Problems with requests: a test fails when this is not empty.
    wrong: Vec<String>,
    sessions: Vec<String>,
    logins: u32,
    /// Sample file the records endpoint answers with.
    records: String,
    /// Answer the next N car requests with 429.
    throttle: u32,
    /// Fresh-reading polls answered "pending" before "ready".
    pending_polls: u32,
    tokens_issued: u32,
    refresh_token: String,
    access_tokens: Vec<String>,
}

type Shared = Arc<Mutex<State>>;

fn reply(status: u16, body: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

async fn serve(
    state: Shared,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let ctype = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let method = req.method().clone();
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    let mut s = state.lock().unwrap();
    s.calls.push(path.clone());
    if path.starts_with("/gdc/") {
        if method != hyper::Method::POST || ctype != "application/x-www-form-urlencoded" {
            s.wrong.push(format!("{path}: {method} {ctype}"));
        }
        let expect = |s: &mut State, k: &str, v: &str| {
            if form.get(k).map(String::as_str) != Some(v) {
                s.wrong
                    .push(format!("{path}: {k} = {:?}, expected {v:?}", form.get(k)));
            }
        };
        expect(&mut s, "RegionCode", "NE");
        match path.as_str() {
            "/gdc/InitialApp_v2.php" => {
                expect(&mut s, "initial_app_str", "9s5rfKVuMrT03RtzajWNcA");
                return Ok(reply(
                    200,
                    json!({"status": 200, "message": "success", "baseprm": KEY}),
                ));
            }
            "/gdc/UserLoginRequest.php" => {
                expect(&mut s, "UserId", USER);
                expect(&mut s, "initial_app_str", "9s5rfKVuMrT03RtzajWNcA");
                let decrypted = form
                    .get("Password")
                    .and_then(|p| base64::engine::general_purpose::STANDARD.decode(p).ok())
                    .and_then(|raw| {
                        ecb::Decryptor::<Blowfish>::new_from_slice(KEY.as_bytes())
                            .unwrap()
                            .decrypt_padded_vec_mut::<Pkcs7>(&raw)
                            .ok()
                    })
                    .map(|p| String::from_utf8_lossy(&p).into_owned());
                if decrypted.as_deref() != Some(PASSWORD) {
                    return Ok(reply(
                        200,
                        json!({"status": 404, "message": "INVALID PARAMS"}),
                    ));
                }
                s.logins += 1;
                let id = format!("{SESSION}{}", s.logins);
                s.sessions.push(id.clone());
                let mut body = sample("carwings_UserLoginRequest_response.json");
                body["VehicleInfoList"]["vehicleInfo"][0]["custom_sessionid"] = json!(id);
                return Ok(reply(200, body));
            }
            _ => {}
        }
        // A car request: the session, DCM id and VIN of the login answer.
        let session_ok = form
            .get("custom_sessionid")
            .is_some_and(|id| s.sessions.contains(id));
        expect(&mut s, "DCMID", "201212345678");
        expect(&mut s, "VIN", "1ABCDEFG2HIJKLM3N");
        expect(&mut s, "tz", "America/New_York");
        if !session_ok {
            return Ok(reply(
                200,
                json!({"status": 401, "message": "INVALID PARAMS"}),
            ));
        }
        if s.throttle > 0 {
            s.throttle -= 1;
            let mut r = reply(429, json!({"status": 429}));
            r.headers_mut().insert("retry-after", "1".parse().unwrap());
            return Ok(r);
        }
        return Ok(match path.as_str() {
            "/gdc/BatteryStatusRecordsRequest.php" => {
                let name = s.records.clone();
                reply(200, sample(&name))
            }
            "/gdc/BatteryStatusCheckRequest.php" => {
                expect(&mut s, "UserId", USER);
                reply(
                    200,
                    sample("carwings_BatteryStatusCheckRequest_resultKey.json"),
                )
            }
            "/gdc/BatteryStatusCheckResultRequest.php" => {
                expect(
                    &mut s,
                    "resultKey",
                    "12345678901234567890123456789012345678901234567890",
                );
                if s.pending_polls > 0 {
                    s.pending_polls -= 1;
                    reply(
                        200,
                        sample("carwings_BatteryStatusCheckResultRequest_pending.json"),
                    )
                } else {
                    reply(
                        200,
                        sample("carwings_BatteryStatusCheckResultRequest_220V.json"),
                    )
                }
            }
            other => {
                s.wrong.push(format!("unknown endpoint {other}"));
                reply(404, json!({"status": 404}))
            }
        });
    }
    match path.as_str() {
        "/oauth2/access_token" => {
            let ok = form.get("grant_type").map(String::as_str) == Some("refresh_token")
                && form.get("client_id").map(String::as_str) == Some("ulog-client")
                && form.get("client_secret").map(String::as_str) == Some("shh");
            if !ok {
                s.wrong.push(format!("token request {form:?}"));
            }
            if form.get("refresh_token") != Some(&s.refresh_token) {
                return Ok(reply(
                    400,
                    json!({"error": "invalid_grant", "error_description": "refresh token unknown"}),
                ));
            }
            s.tokens_issued += 1;
            let access = format!("access-{}", s.tokens_issued);
            s.access_tokens.push(access.clone());
            // Rotate the refresh token: the old one stops working.
            s.refresh_token = format!("refresh-{}", s.tokens_issued);
            Ok(reply(
                200,
                json!({"access_token": access, "token_type": "Bearer", "expires_in": 3600, "refresh_token": s.refresh_token}),
            ))
        }
        p if p.starts_with("/car-adapter/v1/cars/") && p.ends_with("/battery-status") => {
            let valid = auth
                .as_deref()
                .and_then(|a| a.strip_prefix("Bearer "))
                .is_some_and(|t| s.access_tokens.last().map(String::as_str) == Some(t));
            if !valid {
                return Ok(reply(401, json!({"errors": [{"status": "401"}]})));
            }
            let vin = p
                .trim_start_matches("/car-adapter/v1/cars/")
                .trim_end_matches("/battery-status");
            let mut body = sample("kamereon_nissan_leaf_v1_battery-status.SYNTHETIC.json");
            body["data"]["id"] = json!(vin);
            Ok(reply(200, body))
        }
        other => {
            s.wrong.push(format!("unknown endpoint {other}"));
            Ok(reply(404, json!({})))
        }
    }
}

async fn standin(state: Shared) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let state = state.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| serve(state.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

fn registry() -> Registry {
    let mut r = Registry::new();
    ulog_plugins_basic::register(&mut r);
    ulog_plugins_nissan::register(&mut r);
    r
}

fn start(routes: &str, dir: &Path) -> Running {
    ulog_lang::compile_str("routes.conf", routes, dir, &registry(), &Options::default())
        .unwrap_or_else(|d| {
            panic!(
                "{}",
                d.iter().map(|d| d.render()).collect::<Vec<_>>().join("\n")
            )
        })
        .pipeline
        .start()
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let begun = Instant::now();
    while !done() {
        assert!(
            begun.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn carwings_routes(addr: SocketAddr, interval: &str, extra: &str) -> String {
    format!(
        r#"
input nissan {{ id = "leaf"  base_url = "http://{addr}/gdc/"  username = "{USER}"  password_file = "pw"  interval = {interval}  state_file = "state/nissan.json" {extra} }}
match "nissan.**" file {{ path = "out/battery.jsonl"  flush_interval = 20ms  time_key = "time" }}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carwings_login_readings_deduplicated_expiry_rate_limit_and_restart() {
    let state: Shared = Arc::new(Mutex::new(State {
        records: "carwings_BatteryStatusRecordsRequest_not_connected.json".into(),
        ..State::default()
    }));
    let addr = standin(state.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pw"), format!("{PASSWORD}\n")).unwrap();
    let out = dir.path().join("out/battery.jsonl");
    let running = start(&carwings_routes(addr, "100ms", ""), dir.path());

    wait_until("the first reading", || lines(&out).len() == 1).await;
    // Several more polls of the same reading emit nothing new.
    let polls = |s: &Shared| {
        s.lock()
            .unwrap()
            .calls
            .iter()
            .filter(|c| c.ends_with("BatteryStatusRecordsRequest.php"))
            .count()
    };
    let before = polls(&state);
    wait_until("more polls", || polls(&state) >= before + 3).await;
    assert_eq!(lines(&out).len(), 1, "the same reading emitted twice");
    let r = &lines(&out)[0];
    assert_eq!(r["vin"], "1ABCDEFG2HIJKLM3N");
    assert_eq!(r["soc_pct"], 25);
    assert_eq!(r["range_ac_on_km"], 39.2);
    assert_eq!(r["reading_time"], "2016-02-10T04:10:00Z");
    assert_eq!(
        r["time"].as_f64().unwrap() as i64,
        1455077400,
        "the car's time is the event time"
    );

    // The session expires: the input logs in again and carries on; the
    // service rate-limits: it waits and carries on.
    {
        let mut s = state.lock().unwrap();
        s.sessions.clear();
        s.throttle = 2;
        s.records = "carwings_BatteryStatusRecordsRequest_normal_charging.json".into();
    }
    wait_until("the new reading", || lines(&out).len() == 2).await;
    assert_eq!(lines(&out)[1]["charging"], true);
    assert_eq!(state.lock().unwrap().logins, 2);
    running.stop();
    running.wait().await;

    // A restart with the state file does not emit the same reading again.
    let running = start(&carwings_routes(addr, "100ms", ""), dir.path());
    let before = polls(&state);
    wait_until("polls after the restart", || polls(&state) >= before + 3).await;
    running.stop();
    running.wait().await;
    assert_eq!(lines(&out).len(), 2, "re-emitted after the restart");
    let s = state.lock().unwrap();
    assert!(s.wrong.is_empty(), "wrong requests: {:?}", s.wrong);
    assert!(
        s.calls
            .iter()
            .filter(|c| c.ends_with("UserLoginRequest.php"))
            .count()
            >= 3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carwings_fresh_reading_polls_until_the_car_answers() {
    let state: Shared = Arc::new(Mutex::new(State {
        records: "carwings_BatteryStatusRecordsRequest_empty.json".into(),
        pending_polls: 2,
        ..State::default()
    }));
    let addr = standin(state.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pw"), PASSWORD).unwrap();
    let out = dir.path().join("out/battery.jsonl");
    let running = start(
        &carwings_routes(addr, "1h", "fresh_reading = true  fresh_poll = 10ms"),
        dir.path(),
    );
    wait_until("the fresh reading", || lines(&out).len() == 1).await;
    running.stop();
    running.wait().await;
    let r = &lines(&out)[0];
    assert_eq!(r["charging_status"], "220V");
    assert_eq!(r["reading_time"], "2016-01-02T17:17:38Z");
    let s = state.lock().unwrap();
    assert_eq!(
        s.calls
            .iter()
            .filter(|c| c.ends_with("BatteryStatusCheckResultRequest.php"))
            .count(),
        3
    );
    assert!(s.wrong.is_empty(), "wrong requests: {:?}", s.wrong);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carwings_wrong_password_is_refused_without_a_crash() {
    let state: Shared = Arc::new(Mutex::new(State {
        records: "carwings_BatteryStatusRecordsRequest_normal_charging.json".into(),
        ..State::default()
    }));
    let addr = standin(state.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pw"), "wrong").unwrap();
    let out = dir.path().join("out/battery.jsonl");
    let running = start(&carwings_routes(addr, "100ms", ""), dir.path());
    let logins = |s: &Shared| {
        s.lock()
            .unwrap()
            .calls
            .iter()
            .filter(|c| c.ends_with("UserLoginRequest.php"))
            .count()
    };
    wait_until("login attempts", || logins(&state) >= 2).await;
    assert!(
        running.metrics().node("leaf").unwrap().failure.is_none(),
        "the input died"
    );
    running.stop();
    running.wait().await;
    assert!(lines(&out).is_empty());
    assert_eq!(state.lock().unwrap().logins, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kamereon_tokens_are_minted_once_rotated_and_renewed_on_401() {
    let state: Shared = Arc::new(Mutex::new(State {
        refresh_token: "refresh-0".into(),
        ..State::default()
    }));
    let addr = standin(state.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("refresh"), "refresh-0\n").unwrap();
    let routes = format!(
        r#"
input nissan {{ api = "kamereon"  base_url = "http://{addr}/car-adapter"  token_url = "http://{addr}/oauth2/access_token"
               vins = ["SJNFAAZE1U0000000", "SJNFAAZE1U0000001"]  client_id = "ulog-client"  client_secret = "shh"
               refresh_token_file = "refresh"  interval = 50ms }}
match "nissan.**" file {{ path = "out/battery.jsonl"  flush_interval = 20ms }}
"#
    );
    let out = dir.path().join("out/battery.jsonl");
    let running = start(&routes, dir.path());
    wait_until("both cars", || lines(&out).len() == 2).await;
    let polls = |s: &Shared| {
        s.lock()
            .unwrap()
            .calls
            .iter()
            .filter(|c| c.ends_with("battery-status"))
            .count()
    };
    let before = polls(&state);
    wait_until("more polls", || polls(&state) >= before + 6).await;
    assert_eq!(
        state.lock().unwrap().tokens_issued,
        1,
        "one access token for many requests"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("refresh")).unwrap(),
        "refresh-1",
        "rotated token saved"
    );
    // The server forgets the access token: a 401 makes ulog renew it once.
    state.lock().unwrap().access_tokens.clear();
    let before = polls(&state);
    wait_until("polls after the 401", || polls(&state) >= before + 4).await;
    running.stop();
    running.wait().await;
    let got = lines(&out);
    assert_eq!(got.len(), 2, "same readings are not emitted again: {got:?}");
    assert_eq!(got[0]["soc_pct"], 79);
    let vins: Vec<&str> = got.iter().map(|r| r["vin"].as_str().unwrap()).collect();
    assert_eq!(vins, ["SJNFAAZE1U0000000", "SJNFAAZE1U0000001"]);
    let s = state.lock().unwrap();
    assert_eq!(s.tokens_issued, 2);
    assert!(s.wrong.is_empty(), "wrong requests: {:?}", s.wrong);
}

#[test]
fn bad_settings_are_build_errors() {
    let dir = tempfile::tempdir().unwrap();
    for (routes, want) in [
        (
            "input nissan { username = \"a\" }",
            "exactly one of `password` and `password_file`",
        ),
        (
            "input nissan { password = \"p\" }",
            "needed with api carwings",
        ),
        (
            "input nissan { api = \"kamereon\"  vins = [\"short\"] }",
            "is not a VIN",
        ),
        (
            "input nissan { api = \"kamereon\"  vins = [] }",
            "needs the cars' VINs",
        ),
        (
            "input nissan { username = \"a\"  password = \"p\"  base_url = \"ftp://x\" }",
            "is not an http(s) URL",
        ),
    ] {
        let routes = format!("{routes}\nmatch \"**\" null {{}}\n");
        let err = match ulog_lang::compile_str(
            "r.conf",
            &routes,
            dir.path(),
            &registry(),
            &Options::default(),
        ) {
            Ok(_) => panic!("accepted: {routes}"),
            Err(d) => d.iter().map(|d| d.render()).collect::<Vec<_>>().join("\n"),
        };
        assert!(err.contains(want), "{routes}\n{err}");
    }
}
