//! FCM stand-ins: Google's OAuth token endpoint (JWT-bearer grant) and the
//! HTTP v1 send endpoint, on one TLS server.
//!
//! Token endpoint (`POST /token`): form body with `grant_type` =
//! `urn:ietf:params:oauth:grant-type:jwt-bearer` and `assertion` = an RS256
//! JWT verified against the service account's public key, with `iss` = the
//! client email, `scope` including firebase.messaging, `aud` = the token
//! URI, `iat` recent and `exp` at most an hour after it. Answers
//! `{access_token, expires_in, token_type}` or `{error, error_description}`.
//!
//! Send endpoint (`POST /v1/projects/<project>/messages:send`): a valid,
//! unexpired bearer token; a JSON `{"message": {...}}` with exactly one
//! target, `data` values all strings, at most 4096 bytes; answers
//! `{"name": ...}` or Google's error body with `status` and an
//! `FcmError.errorCode` detail.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value as Json};

use super::{now, split_jwt, Handler, Pki, Req, Resp, Server, Transport};

pub const PROJECT: &str = "trial-project";
pub const CLIENT_EMAIL: &str = "ulog-push@trial-project.iam.gserviceaccount.com";

#[derive(Debug, Clone, PartialEq)]
pub enum TokenState {
    Live,
    Unregistered,
}

#[derive(Debug, Clone)]
pub struct Received {
    pub token: String,
    pub message: Json,
    pub access_token: String,
}

#[derive(Default)]
pub struct State {
    pub tokens: HashMap<String, TokenState>,
    pub received: Vec<Received>,
    pub violations: Vec<String>,
    /// Access tokens issued, with when they expire.
    pub issued: HashMap<String, Instant>,
    pub grants: u64,
    pub lifetime: Duration,
    /// Forced answers for the next sends: (status, code, retry-after).
    pub forced: VecDeque<(u16, &'static str, Option<u64>)>,
    pub errors: HashMap<String, u64>,
    pub token_uri: String,
}

pub struct Fcm {
    pub server: Arc<Server>,
    pub state: Arc<Mutex<State>>,
    pub key_file: PathBuf,
}

/// The committed test-only RSA key (generated for these tests, used nowhere
/// else).
fn test_key_pem() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/standin/keys/fcm-test-key.pem"
    ))
    .unwrap()
}

impl Fcm {
    pub async fn start(pki: &Pki) -> Self {
        let pem = test_key_pem();
        let der = rustls_pemfile::private_key(&mut pem.as_bytes())
            .unwrap()
            .unwrap();
        let pair = ring::signature::RsaKeyPair::from_pkcs8(der.secret_der()).unwrap();
        use ring::signature::KeyPair as _;
        let public = pair.public_key().as_ref().to_vec();
        let state = Arc::new(Mutex::new(State {
            lifetime: Duration::from_secs(3600),
            ..State::default()
        }));
        let s = state.clone();
        let handler: Handler = Arc::new(move |req| handle(&s, &public, req));
        let server = Server::start(pki, Transport::TlsAny, handler).await;
        let token_uri = format!("{}/token", server.base_url());
        state.lock().unwrap().token_uri = token_uri.clone();
        let key_file = pki.dir.path().join("service-account.json");
        std::fs::write(
            &key_file,
            serde_json::to_vec_pretty(&json!({
                "type": "service_account",
                "project_id": PROJECT,
                "private_key_id": "0123456789abcdef",
                "private_key": pem,
                "client_email": CLIENT_EMAIL,
                "client_id": "1234567890",
                "token_uri": token_uri,
            }))
            .unwrap(),
        )
        .unwrap();
        Self {
            server,
            state,
            key_file,
        }
    }

    pub fn add_token(&self, token: &str, st: TokenState) {
        self.state.lock().unwrap().tokens.insert(token.into(), st);
    }
    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }
    pub fn violations(&self) -> Vec<String> {
        self.state.lock().unwrap().violations.clone()
    }
    pub fn grants(&self) -> u64 {
        self.state.lock().unwrap().grants
    }
    pub fn force(&self, status: u16, code: &'static str, retry_after: Option<u64>, times: usize) {
        let mut s = self.state.lock().unwrap();
        for _ in 0..times {
            s.forced.push_back((status, code, retry_after));
        }
    }
}

fn google_error(status: u16, code: &str, message: &str, token_field: bool) -> Resp {
    let canonical = match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        500 => "INTERNAL",
        503 => "UNAVAILABLE",
        _ => "UNKNOWN",
    };
    let mut details = vec![json!({
        "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
        "errorCode": code,
    })];
    if token_field {
        details.push(json!({
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": [{ "field": "message.token", "description": "Invalid registration token" }],
        }));
    }
    Resp::json(
        status,
        json!({ "error": { "code": status, "message": message, "status": canonical, "details": details } }),
    )
}

fn handle(state: &Mutex<State>, public: &[u8], req: Req) -> Resp {
    let mut st = state.lock().unwrap();
    if req.path == "/token" {
        return token(&mut st, public, &req);
    }
    let r = send(&mut st, &req);
    if r.status != 200 {
        let key = String::from_utf8_lossy(&r.body).to_string();
        let code = serde_json::from_str::<Json>(&key)
            .ok()
            .and_then(|j| {
                j["error"]["details"][0]["errorCode"]
                    .as_str()
                    .map(str::to_string)
            })
            .unwrap_or_default();
        *st.errors.entry(code).or_default() += 1;
    }
    r
}

fn token(st: &mut State, public: &[u8], req: &Req) -> Resp {
    let bad = |st: &mut State, why: String| {
        st.violations.push(format!("token request: {why}"));
        Resp::json(
            400,
            json!({ "error": "invalid_grant", "error_description": why }),
        )
    };
    if req.method != "POST"
        || req.header("content-type") != Some("application/x-www-form-urlencoded")
    {
        return bad(st, "not a form POST".into());
    }
    let form: HashMap<String, String> = form_urlencoded::parse(&req.body).into_owned().collect();
    if form.get("grant_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    {
        return bad(st, format!("grant_type {:?}", form.get("grant_type")));
    }
    let Some(assertion) = form.get("assertion") else {
        return bad(st, "no assertion".into());
    };
    let (header, claims, input, sig) = match split_jwt(assertion) {
        Ok(p) => p,
        Err(e) => return bad(st, e),
    };
    if header["alg"] != "RS256" {
        return bad(st, format!("alg {}", header["alg"]));
    }
    let key = ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        public,
    );
    if key.verify(input.as_bytes(), &sig).is_err() {
        return bad(st, "assertion signature does not verify".into());
    }
    let token_uri = st.token_uri.clone();
    if claims["iss"] != CLIENT_EMAIL || claims["aud"] != token_uri.as_str() {
        return bad(st, format!("claims {claims}"));
    }
    if !claims["scope"]
        .as_str()
        .unwrap_or("")
        .split(' ')
        .any(|s| s == "https://www.googleapis.com/auth/firebase.messaging")
    {
        return bad(st, format!("scope {}", claims["scope"]));
    }
    let (Some(iat), Some(exp)) = (claims["iat"].as_u64(), claims["exp"].as_u64()) else {
        return bad(st, "iat/exp missing".into());
    };
    if iat > now() + 5 || now().saturating_sub(iat) > 300 || exp <= iat || exp - iat > 3600 {
        return bad(st, format!("iat {iat} exp {exp} now {}", now()));
    }
    st.grants += 1;
    let access = format!("ya29.standin-{}", st.grants);
    let lifetime = st.lifetime;
    st.issued.insert(access.clone(), Instant::now() + lifetime);
    Resp::json(
        200,
        json!({ "access_token": access, "expires_in": lifetime.as_secs_f64(), "token_type": "Bearer" }),
    )
}

fn send(st: &mut State, req: &Req) -> Resp {
    let expected = format!("/v1/projects/{PROJECT}/messages:send");
    if req.path != expected || req.method != "POST" {
        st.violations.push(format!("{} {}", req.method, req.path));
        return google_error(404, "UNSPECIFIED_ERROR", "not found", false);
    }
    let access = req
        .header("authorization")
        .and_then(|a| a.strip_prefix("Bearer "))
        .unwrap_or("")
        .to_string();
    match st.issued.get(&access) {
        Some(until) if Instant::now() < *until => {}
        Some(_) => {
            return google_error(
                401,
                "THIRD_PARTY_AUTH_ERROR",
                "Request had invalid authentication credentials. Expected OAuth 2 access token.",
                false,
            )
        }
        None => {
            st.violations
                .push(format!("unknown bearer token {access:?}"));
            return google_error(
                401,
                "THIRD_PARTY_AUTH_ERROR",
                "Request had invalid authentication credentials.",
                false,
            );
        }
    }
    if !req
        .header("content-type")
        .unwrap_or("")
        .starts_with("application/json")
    {
        st.violations.push("content-type is not JSON".into());
    }
    let Ok(body) = serde_json::from_slice::<Json>(&req.body) else {
        st.violations.push("body is not JSON".into());
        return google_error(
            400,
            "INVALID_ARGUMENT",
            "Invalid JSON payload received.",
            false,
        );
    };
    let Some(message) = body.get("message").and_then(Json::as_object) else {
        st.violations.push(format!("no message object: {body}"));
        return google_error(
            400,
            "INVALID_ARGUMENT",
            "Invalid JSON payload received. Unknown name",
            false,
        );
    };
    let targets = ["token", "topic", "condition"]
        .iter()
        .filter(|k| message.contains_key(**k))
        .count();
    if targets != 1 {
        st.violations.push(format!("{targets} targets in {body}"));
        return google_error(
            400,
            "INVALID_ARGUMENT",
            "Exactly one of token, topic or condition must be set",
            false,
        );
    }
    for k in message.keys() {
        if ![
            "token",
            "topic",
            "condition",
            "notification",
            "data",
            "android",
            "apns",
            "webpush",
            "fcm_options",
            "name",
        ]
        .contains(&k.as_str())
        {
            st.violations.push(format!("unknown message field {k}"));
            return google_error(
                400,
                "INVALID_ARGUMENT",
                "Invalid JSON payload received. Unknown name",
                false,
            );
        }
    }
    if let Some(data) = message.get("data") {
        if !data
            .as_object()
            .is_some_and(|d| d.values().all(Json::is_string))
        {
            st.violations
                .push(format!("data values must be strings: {data}"));
            return google_error(
                400,
                "INVALID_ARGUMENT",
                "Invalid value at 'message.data'",
                false,
            );
        }
    }
    if req.body.len() > 4096 {
        return google_error(
            400,
            "INVALID_ARGUMENT",
            "Message payload size limit exceeded",
            false,
        );
    }
    if let Some((status, code, after)) = st.forced.pop_front() {
        let r = google_error(status, code, "forced by the test", false);
        return match after {
            Some(a) => r.with_header("retry-after", &a.to_string()),
            None => r,
        };
    }
    let token = message
        .get("token")
        .and_then(Json::as_str)
        .unwrap_or("")
        .to_string();
    match st.tokens.get(&token) {
        None => {
            return google_error(
                400,
                "INVALID_ARGUMENT",
                "The registration token is not a valid FCM registration token",
                true,
            )
        }
        Some(TokenState::Unregistered) => {
            return google_error(
                404,
                "UNREGISTERED",
                "Requested entity was not found.",
                false,
            )
        }
        Some(TokenState::Live) => {}
    }
    let n = st.received.len();
    st.received.push(Received {
        token,
        message: Json::Object(message.clone()),
        access_token: access,
    });
    Resp::json(
        200,
        json!({ "name": format!("projects/{PROJECT}/messages/{n}") }),
    )
}
