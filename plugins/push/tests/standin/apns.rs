//! An APNs provider API stand-in: HTTP/2 over TLS, token-based auth.
//!
//! Checks, as Apple documents them: `POST /3/device/<hex token>`; a
//! `bearer` ES256 JWT whose header has `kid` = the key id and whose claims
//! have `iss` = the team id and an `iat` under `token_max_age` old (one hour
//! at Apple), verified against the key's public half; `apns-topic` = the
//! bundle id; `apns-push-type`, `apns-priority`, `apns-expiration`,
//! `apns-id` (a UUID), `apns-collapse-id` (≤ 64 bytes); a JSON payload with
//! an `aps` dictionary, at most 4096 bytes. Answers 200 with `apns-id`, or
//! the status and `{"reason": ...}` body Apple uses.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value as Json};

use super::{now, split_jwt, Handler, Pki, Req, Resp, Server, Transport};

pub const TEAM_ID: &str = "TEAM123456";
pub const KEY_ID: &str = "KEY1234567";
pub const TOPIC: &str = "org.example.trial";

#[derive(Debug, Clone, PartialEq)]
pub enum TokenState {
    Live,
    Unregistered,
}

/// One notification the stand-in accepted.
#[derive(Debug, Clone)]
pub struct Received {
    pub token: String,
    pub apns_id: Option<String>,
    pub collapse_id: Option<String>,
    pub push_type: String,
    pub priority: Option<String>,
    pub expiration: Option<String>,
    pub payload: Json,
    pub jwt: String,
}

#[derive(Default)]
pub struct State {
    pub tokens: HashMap<String, TokenState>,
    pub received: Vec<Received>,
    pub violations: Vec<String>,
    /// Every distinct provider JWT seen: the client's mint count.
    pub jwts: HashSet<String>,
    /// Forced answers for the next requests: (status, reason).
    pub forced: VecDeque<(u16, &'static str)>,
    /// Requests answered with a forced or error status, by reason.
    pub errors: HashMap<String, u64>,
    pub token_max_age: u64,
    pub requests: u64,
    /// Record every accepted notification (off in the bench).
    pub keep: bool,
}

pub struct Apns {
    pub server: Arc<Server>,
    pub state: Arc<Mutex<State>>,
    pub key_file: std::path::PathBuf,
}

impl Apns {
    pub async fn start(pki: &Pki) -> Self {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let key_file = pki.dir.path().join(format!("AuthKey_{KEY_ID}.p8"));
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        let public = key.public_key_raw().to_vec();
        let state = Arc::new(Mutex::new(State {
            token_max_age: 3600,
            keep: true,
            ..State::default()
        }));
        let s = state.clone();
        let handler: Handler = Arc::new(move |req| handle(&s, &public, req));
        let server = Server::start(pki, Transport::TlsH2, handler).await;
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

    pub fn force(&self, status: u16, reason: &'static str, times: usize) {
        let mut s = self.state.lock().unwrap();
        for _ in 0..times {
            s.forced.push_back((status, reason));
        }
    }

    pub fn jwt_count(&self) -> usize {
        self.state.lock().unwrap().jwts.len()
    }
}

fn reason(status: u16, reason: &str) -> Resp {
    if status == 410 {
        return Resp::json(
            status,
            json!({ "reason": reason, "timestamp": now() * 1000 }),
        );
    }
    Resp::json(status, json!({ "reason": reason }))
}

fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

fn handle(state: &Mutex<State>, public: &[u8], req: Req) -> Resp {
    let mut st = state.lock().unwrap();
    st.requests += 1;
    let answer = check(&mut st, public, &req);
    if let Err((status, why)) = &answer {
        *st.errors.entry(why.to_string()).or_default() += 1;
        return reason(*status, why);
    }
    let apns_id = req
        .header("apns-id")
        .map(str::to_string)
        .unwrap_or_else(|| "00000000-0000-4000-8000-000000000000".into());
    Resp::empty(200).with_header("apns-id", &apns_id)
}

fn check(st: &mut State, public: &[u8], req: &Req) -> Result<(), (u16, &'static str)> {
    if req.version != "HTTP/2.0" {
        st.violations
            .push(format!("APNs needs HTTP/2, got {}", req.version));
        return Err((400, "BadMethod"));
    }
    if req.method != "POST" {
        return Err((405, "MethodNotAllowed"));
    }
    let Some(token) = req.path.strip_prefix("/3/device/") else {
        st.violations.push(format!("bad path {}", req.path));
        return Err((404, "BadPath"));
    };
    let token = token.to_string();
    // Provider token.
    let Some(auth) = req.header("authorization") else {
        return Err((403, "MissingProviderToken"));
    };
    let Some(jwt) = auth.strip_prefix("bearer ") else {
        st.violations
            .push(format!("authorization is not `bearer <jwt>`: {auth:.20}"));
        return Err((403, "InvalidProviderToken"));
    };
    let jwt = jwt.to_string();
    // A token verified once is remembered (as Apple caches its checks), so
    // the stand-in's ceiling is not one ECDSA verification per request.
    let seen = st.jwts.contains(&jwt);
    let (header, claims, input, sig) = split_jwt(&jwt).map_err(|e| {
        st.violations.push(e);
        (403, "InvalidProviderToken")
    })?;
    if header["alg"] != "ES256" || header["kid"] != KEY_ID {
        st.violations.push(format!("JWT header {header}"));
        return Err((403, "InvalidProviderToken"));
    }
    let key =
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, public);
    if !seen && key.verify(input.as_bytes(), &sig).is_err() {
        st.violations.push("JWT signature does not verify".into());
        return Err((403, "InvalidProviderToken"));
    }
    if claims["iss"] != TEAM_ID {
        st.violations.push(format!("JWT claims {claims}"));
        return Err((403, "InvalidProviderToken"));
    }
    let Some(iat) = claims["iat"].as_u64() else {
        st.violations
            .push(format!("JWT without a numeric iat: {claims}"));
        return Err((403, "InvalidProviderToken"));
    };
    if iat > now() + 5 {
        st.violations.push("JWT iat in the future".into());
        return Err((403, "InvalidProviderToken"));
    }
    st.jwts.insert(jwt.clone());
    if now().saturating_sub(iat) >= st.token_max_age {
        return Err((403, "ExpiredProviderToken"));
    }
    // Headers.
    if req.header("apns-topic") != Some(TOPIC) {
        return Err((
            400,
            if req.header("apns-topic").is_none() {
                "MissingTopic"
            } else {
                "DeviceTokenNotForTopic"
            },
        ));
    }
    let push_type = req.header("apns-push-type").unwrap_or("").to_string();
    if ![
        "alert",
        "background",
        "location",
        "voip",
        "complication",
        "fileprovider",
        "mdm",
        "liveactivity",
        "pushtotalk",
    ]
    .contains(&push_type.as_str())
    {
        st.violations.push(format!("apns-push-type {push_type:?}"));
        return Err((400, "InvalidPushType"));
    }
    let priority = req.header("apns-priority").map(str::to_string);
    if let Some(p) = &priority {
        if !["10", "5", "1"].contains(&p.as_str()) || (push_type == "background" && p == "10") {
            return Err((400, "BadPriority"));
        }
    }
    let expiration = req.header("apns-expiration").map(str::to_string);
    if expiration
        .as_deref()
        .is_some_and(|e| e.parse::<u64>().is_err())
    {
        return Err((400, "BadExpirationDate"));
    }
    let apns_id = req.header("apns-id").map(str::to_string);
    if apns_id.as_deref().is_some_and(|i| !is_uuid(i)) {
        return Err((400, "BadMessageId"));
    }
    let collapse_id = req.header("apns-collapse-id").map(str::to_string);
    if collapse_id.as_deref().is_some_and(|c| c.len() > 64) {
        return Err((400, "BadCollapseId"));
    }
    // Forced answers come after authentication, as Apple's would.
    if let Some((status, why)) = st.forced.pop_front() {
        return Err((status, why));
    }
    // Payload.
    if req.body.is_empty() {
        return Err((400, "PayloadEmpty"));
    }
    if req.body.len() > 4096 {
        return Err((413, "PayloadTooLarge"));
    }
    let payload: Json = match serde_json::from_slice(&req.body) {
        Ok(Json::Object(o)) if o.get("aps").is_some_and(Json::is_object) => Json::Object(o),
        other => {
            st.violations
                .push(format!("payload is not an object with `aps`: {other:?}"));
            return Err((400, "PayloadEmpty"));
        }
    };
    if push_type == "background" && payload["aps"].get("alert").is_some() {
        st.violations.push("a background push with an alert".into());
    }
    // Device.
    if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err((400, "BadDeviceToken"));
    }
    match st.tokens.get(&token) {
        None => return Err((400, "BadDeviceToken")),
        Some(TokenState::Unregistered) => return Err((410, "Unregistered")),
        Some(TokenState::Live) => {}
    }
    if st.keep {
        st.received.push(Received {
            token,
            apns_id,
            collapse_id,
            push_type,
            priority,
            expiration,
            payload,
            jwt,
        });
    }
    Ok(())
}
