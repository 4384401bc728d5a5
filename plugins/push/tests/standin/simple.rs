//! A plain HTTP/1.1 receiver standing in for a household's webhook endpoint
//! and for an ntfy server: records requests, checks the webhook signature
//! (when a secret is set) and ntfy's JSON publish schema, and answers with
//! a forced status when told to.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value as Json};

use super::{Handler, Pki, Req, Resp, Server, Transport};

#[derive(Default)]
pub struct State {
    pub received: Vec<Req>,
    pub violations: Vec<String>,
    pub forced: VecDeque<u16>,
    /// Paths answered 410 (a webhook that was removed).
    pub gone: Vec<String>,
    pub secret: Option<Vec<u8>>,
}

pub struct Simple {
    pub server: Arc<Server>,
    pub state: Arc<Mutex<State>>,
}

impl Simple {
    /// `ntfy`: check the JSON publish schema instead of a signature.
    pub async fn start(pki: &Pki, ntfy: bool, secret: Option<&str>) -> Self {
        let state = Arc::new(Mutex::new(State {
            secret: secret.map(|s| s.as_bytes().to_vec()),
            ..State::default()
        }));
        let s = state.clone();
        let handler: Handler = Arc::new(move |req| handle(&s, ntfy, req));
        Self {
            server: Server::start(pki, Transport::Plain, handler).await,
            state,
        }
    }
    pub fn received(&self) -> Vec<Req> {
        self.state.lock().unwrap().received.clone()
    }
    pub fn violations(&self) -> Vec<String> {
        self.state.lock().unwrap().violations.clone()
    }
}

fn handle(state: &Mutex<State>, ntfy: bool, req: Req) -> Resp {
    let mut st = state.lock().unwrap();
    if req.method != "POST" {
        st.violations.push(format!("method {}", req.method));
        return Resp::empty(405);
    }
    let body: Json = match serde_json::from_slice(&req.body) {
        Ok(b) => b,
        Err(e) => {
            st.violations.push(format!("body is not JSON: {e}"));
            return Resp::empty(400);
        }
    };
    if ntfy {
        let topic_ok = body["topic"].as_str().is_some_and(|t| !t.is_empty());
        if req.path != "/" || !topic_ok || !body["message"].is_string() {
            st.violations
                .push(format!("ntfy publish {} {body}", req.path));
            return Resp::json(
                400,
                json!({ "code": 40001, "http": 400, "error": "invalid request" }),
            );
        }
        if st.gone.iter().any(|g| body["topic"] == g.as_str()) {
            return Resp::json(410, json!({"http": 410, "error": "gone"}));
        }
    } else {
        if st.gone.contains(&req.path) {
            return Resp::empty(410);
        }
        if let Some(secret) = st.secret.clone() {
            let ts = req.header("x-ulog-timestamp").unwrap_or("").to_string();
            let mut ctx = ring::hmac::Context::with_key(&ring::hmac::Key::new(
                ring::hmac::HMAC_SHA256,
                &secret,
            ));
            ctx.update(ts.as_bytes());
            ctx.update(b".");
            ctx.update(&req.body);
            let want = format!("sha256={}", hex::encode(ctx.sign().as_ref()));
            if req.header("x-ulog-signature") != Some(want.as_str()) {
                st.violations.push(format!(
                    "bad signature {:?}",
                    req.header("x-ulog-signature")
                ));
                return Resp::empty(401);
            }
            if ts
                .parse::<u64>()
                .map_or(true, |t| super::now().abs_diff(t) > 300)
            {
                st.violations.push(format!("stale timestamp {ts:?}"));
                return Resp::empty(401);
            }
        }
    }
    if let Some(status) = st.forced.pop_front() {
        return Resp::empty(status).with_header("retry-after", "0");
    }
    st.received.push(req);
    Resp::json(200, json!({ "id": "ok" }))
}
