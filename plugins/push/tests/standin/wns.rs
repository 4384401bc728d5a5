//! A WNS stand-in: the OAuth client-credentials token endpoint and channel
//! URIs (`/w/<channel>`), on one TLS server. Checks the grant's form fields,
//! the bearer token, `X-WNS-Type` against `Content-Type` and, for XML
//! types, that the body parses as the matching root element; answers with
//! WNS's status codes (404/410 for dead channels, 406 throttled, 401 for an
//! expired token).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use super::{Handler, Pki, Req, Resp, Server, Transport};

pub const CLIENT_ID: &str = "ms-app://s-1-15-2-test";
pub const SECRET: &str = "wns-test-secret";

#[derive(Default)]
pub struct State {
    pub live: Vec<String>,
    pub gone: Vec<String>,
    pub received: Vec<Req>,
    pub violations: Vec<String>,
    pub issued: HashMap<String, Instant>,
    pub grants: u64,
    pub lifetime: Duration,
    pub forced: VecDeque<u16>,
}

pub struct Wns {
    pub server: Arc<Server>,
    pub state: Arc<Mutex<State>>,
}

impl Wns {
    pub async fn start(pki: &Pki) -> Self {
        let state = Arc::new(Mutex::new(State {
            lifetime: Duration::from_secs(86400),
            ..State::default()
        }));
        let s = state.clone();
        let handler: Handler = Arc::new(move |req| handle(&s, req));
        Self {
            server: Server::start(pki, Transport::TlsAny, handler).await,
            state,
        }
    }
    pub fn channel(&self, name: &str) -> String {
        format!("{}/w/{name}", self.server.base_url())
    }
}

fn handle(state: &Mutex<State>, req: Req) -> Resp {
    let mut st = state.lock().unwrap();
    if req.path == "/accesstoken.srf" {
        let form: HashMap<String, String> =
            form_urlencoded::parse(&req.body).into_owned().collect();
        let ok = form.get("grant_type").map(String::as_str) == Some("client_credentials")
            && form.get("client_id").map(String::as_str) == Some(CLIENT_ID)
            && form.get("client_secret").map(String::as_str) == Some(SECRET)
            && form.get("scope").map(String::as_str) == Some("notify.windows.com");
        if !ok {
            st.violations.push(format!("token form {form:?}"));
            return Resp::json(400, json!({"error": "invalid_client"}));
        }
        st.grants += 1;
        let t = format!("wns-token-{}", st.grants);
        let lifetime = st.lifetime;
        st.issued.insert(t.clone(), Instant::now() + lifetime);
        return Resp::json(
            200,
            json!({"access_token": t, "token_type": "bearer", "expires_in": lifetime.as_secs()}),
        );
    }
    let Some(channel) = req.path.strip_prefix("/w/").map(str::to_string) else {
        st.violations.push(format!("path {}", req.path));
        return Resp::empty(404);
    };
    let token = req
        .header("authorization")
        .and_then(|a| a.strip_prefix("Bearer "))
        .unwrap_or("");
    match st.issued.get(token) {
        Some(t) if Instant::now() < *t => {}
        Some(_) => {
            return Resp::empty(401).with_header(
                "WWW-Authenticate",
                "Bearer error=\"invalid_request\",error_description=\"Token expired\"",
            )
        }
        None => {
            st.violations.push("unknown bearer token".into());
            return Resp::empty(401);
        }
    }
    let kind = req.header("x-wns-type").unwrap_or("").to_string();
    let ctype = req.header("content-type").unwrap_or("").to_string();
    let body = String::from_utf8_lossy(&req.body).to_string();
    let ok = match kind.as_str() {
        "wns/toast" => ctype == "text/xml" && body.trim_start().starts_with("<toast"),
        "wns/tile" => ctype == "text/xml" && body.trim_start().starts_with("<tile"),
        "wns/badge" => ctype == "text/xml" && body.trim_start().starts_with("<badge"),
        "wns/raw" => ctype == "application/octet-stream",
        _ => false,
    };
    if !ok {
        st.violations
            .push(format!("{kind} with {ctype}: {body:.60}"));
        return Resp::empty(400)
            .with_header("X-WNS-Error-Description", "Invalid X-WNS-Type or payload");
    }
    if req.body.len() > 5000 {
        return Resp::empty(413);
    }
    if let Some(s) = st.forced.pop_front() {
        return Resp::empty(s).with_header("X-WNS-Error-Description", "forced");
    }
    if st.gone.contains(&channel) {
        return Resp::empty(410).with_header("X-WNS-Error-Description", "Channel expired");
    }
    if !st.live.contains(&channel) {
        return Resp::empty(404);
    }
    st.received.push(req);
    Resp::empty(200).with_header("X-WNS-Status", "received")
}
