//! A local stand-in for PubNub's REST API on 127.0.0.1, speaking the
//! documented wire format: subscribe v2 long-poll (`tt`/`tr`, envelope
//! `t`/`m` with `a`/`f`/`i`/`p`/`k`/`c`/`b`/`d`/`e`/`u`), publish v1 (GET
//! and POST, `store`/`norep`/`seqn`/`meta`), history v3 (`start`
//! exclusive, `end` inclusive, newest `max` of the range, chronological).
//!
//! Every request is checked (keys in the path, `uuid` and `pnsdk` in the
//! query, `tr` whenever `tt` is not 0, the auth key when one is required);
//! a wrong one is recorded and a test fails when `wrong` is not empty. It
//! can answer 5xx, cut the connection, stall, and serve canned bodies.

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use serde_json::{json, Value};
use tokio::sync::Notify;

/// The region the stand-in reports in cursors.
pub const REGION: u32 = 7;

/// One published message.
#[derive(Debug, Clone)]
pub struct Stored {
    pub timetoken: u64,
    pub channel: String,
    pub message: Value,
    pub uuid: String,
    pub meta: Option<Value>,
    pub signal: bool,
}

/// A subscribe request as received.
#[derive(Debug, Clone)]
pub struct Poll {
    pub channels: Vec<String>,
    pub groups: Vec<String>,
    pub tt: u64,
    pub tr: Option<u32>,
    pub uuid: String,
}

#[derive(Default)]
pub struct State {
    pub subscribe_key: String,
    pub publish_key: String,
    pub auth_key: Option<String>,
    /// Problems with requests: a test fails when this is not empty.
    pub wrong: Vec<String>,
    /// Published messages, by channel, in timetoken order.
    pub channels: HashMap<String, Vec<Stored>>,
    /// `fire` publishes (never delivered to subscribers).
    pub fired: Vec<Stored>,
    /// Channel groups and their channels.
    pub groups: HashMap<String, Vec<String>>,
    pub polls: Vec<Poll>,
    /// Publish requests: (method, channel, query).
    pub publishes: Vec<(String, String, HashMap<String, String>)>,
    pub history_calls: u32,
    /// Answer the next N requests (any endpoint) with HTTP 500.
    pub fail_next: u32,
    /// Close the connection without an answer on the next N subscribes.
    pub cut_next: u32,
    /// Never answer the next N subscribes.
    pub stall_next: u32,
    /// Publishes answered 403 (a revoked key).
    pub forbid_publish: bool,
    /// Bodies served to the next subscribes, as they are.
    pub canned: VecDeque<String>,
    /// Subscribe catch-up covers only the newest N messages of a channel
    /// (PubNub's catch-up is bounded; history is not).
    pub catch_up_limit: Option<usize>,
    /// How long an empty long-poll waits.
    pub long_poll: Duration,
    last_tt: u64,
}

/// A running stand-in.
#[derive(Clone)]
pub struct PubNub {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<State>>,
    published: Arc<Notify>,
}

impl PubNub {
    /// Starts on a free port with the given keys.
    pub async fn start(subscribe_key: &str, publish_key: &str) -> Self {
        let state = Arc::new(Mutex::new(State {
            subscribe_key: subscribe_key.into(),
            publish_key: publish_key.into(),
            long_poll: Duration::from_millis(500),
            ..State::default()
        }));
        let published = Arc::new(Notify::new());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let me = Self {
            addr,
            state,
            published,
        };
        let server = me.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let s = server.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let s = s.clone();
                        async move { s.serve(req).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        me
    }

    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.lock().unwrap())
    }

    /// Asserts every request so far was right.
    pub fn assert_right(&self) {
        let wrong = self.with(|s| s.wrong.clone());
        assert!(wrong.is_empty(), "wrong requests: {wrong:#?}");
    }

    /// Publishes as another client would.
    pub fn publish(&self, channel: &str, message: Value) -> u64 {
        let tt = self.with(|s| s.store(channel, message, "other-client", None, false));
        self.published.notify_waiters();
        tt
    }

    pub fn stored(&self, channel: &str) -> Vec<Stored> {
        self.with(|s| s.channels.get(channel).cloned().unwrap_or_default())
    }

    async fn serve(
        &self,
        req: Request<hyper::body::Incoming>,
    ) -> Result<Response<Full<Bytes>>, std::io::Error> {
        let method = req.method().to_string();
        let path = req.uri().path().to_string();
        let query: HashMap<String, String> = req
            .uri()
            .query()
            .map(form_urlencoded_parse)
            .unwrap_or_default();
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let segments: Vec<String> = path.split('/').map(percent_decode).collect();
        self.with(|s| s.check_common(&path, &query));
        if self.with(|s| {
            if s.fail_next > 0 {
                s.fail_next -= 1;
                true
            } else {
                false
            }
        }) {
            return Ok(reply(
                500,
                json!({"status": 500, "error": true, "message": "Internal Server Error"}),
            ));
        }
        let seg = |i: usize| segments.get(i).map(String::as_str).unwrap_or("");
        match (method.as_str(), seg(1), seg(2)) {
            ("GET", "v2", "subscribe") => self.subscribe(&segments, &query).await,
            (_, "publish", _) => Ok(self.publish_request(&method, &segments, &query, &body)),
            ("GET", "v3", "history") => Ok(self.history(&segments, &query)),
            _ => {
                self.with(|s| s.wrong.push(format!("unknown endpoint {method} {path}")));
                Ok(reply(404, json!({"error": true, "message": "Not Found"})))
            }
        }
    }

    async fn subscribe(
        &self,
        seg: &[String],
        query: &HashMap<String, String>,
    ) -> Result<Response<Full<Bytes>>, std::io::Error> {
        // /v2/subscribe/{sub}/{channels}/0
        let (poll, cut, stall, canned) = {
            let mut s = self.state.lock().unwrap();
            if seg.len() != 6 || seg[5] != "0" {
                s.wrong.push(format!("subscribe path {seg:?}"));
            }
            if seg.get(3).map(String::as_str) != Some(s.subscribe_key.as_str()) {
                s.wrong.push(format!("subscribe key {:?}", seg.get(3)));
            }
            let channels: Vec<String> = seg
                .get(4)
                .map(|c| {
                    c.split(',')
                        .filter(|c| !c.is_empty() && *c != ",")
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            let groups: Vec<String> = query
                .get("channel-group")
                .map(|g| g.split(',').map(str::to_string).collect())
                .unwrap_or_default();
            let tt = match query.get("tt").map(|t| t.parse::<u64>()) {
                Some(Ok(t)) => t,
                other => {
                    s.wrong.push(format!("subscribe tt {other:?}"));
                    0
                }
            };
            let tr = query.get("tr").and_then(|r| r.parse::<u32>().ok());
            if tt != 0 && tr.is_none() {
                s.wrong.push("subscribe with a timetoken but no tr".into());
            }
            if query
                .get("heartbeat")
                .and_then(|h| h.parse::<u64>().ok())
                .is_none()
            {
                s.wrong.push("subscribe without a numeric heartbeat".into());
            }
            let poll = Poll {
                channels,
                groups,
                tt,
                tr,
                uuid: query.get("uuid").cloned().unwrap_or_default(),
            };
            s.polls.push(poll.clone());
            let cut = s.cut_next > 0;
            if cut {
                s.cut_next -= 1;
            }
            let stall = !cut && s.stall_next > 0;
            if stall {
                s.stall_next -= 1;
            }
            let canned = if cut || stall {
                None
            } else {
                s.canned.pop_front()
            };
            (poll, cut, stall, canned)
        };
        if cut {
            return Err(std::io::Error::other("connection cut by the stand-in"));
        }
        if stall {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        if let Some(body) = canned {
            let mut r = Response::new(Full::new(Bytes::from(body)));
            r.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            return Ok(r);
        }
        if poll.tt == 0 {
            let now = self.with(|s| s.next_tt());
            return Ok(reply(
                200,
                json!({"t": {"t": now.to_string(), "r": REGION}, "m": []}),
            ));
        }
        let long_poll = self.with(|s| s.long_poll);
        let deadline = tokio::time::Instant::now() + long_poll;
        loop {
            let notified = self.published.notified();
            let found = self.with(|s| s.after(&poll));
            if !found.is_empty() {
                let t = found.last().map_or(poll.tt, |m| m.timetoken);
                let sub_key = self.with(|s| s.subscribe_key.clone());
                let m: Vec<Value> = found
                    .iter()
                    .map(|m| {
                        let mut e = json!({
                            "a": "3",
                            "f": 0,
                            "i": m.uuid,
                            "p": {"t": m.timetoken.to_string(), "r": REGION},
                            "k": sub_key,
                            "c": m.channel,
                            "b": m.channel,
                            "d": m.message,
                        });
                        if m.signal {
                            e["e"] = json!(1);
                        }
                        if let Some(meta) = &m.meta {
                            e["u"] = meta.clone();
                        }
                        e
                    })
                    .collect();
                return Ok(reply(
                    200,
                    json!({"t": {"t": t.to_string(), "r": REGION}, "m": m}),
                ));
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(reply(
                    200,
                    json!({"t": {"t": poll.tt.to_string(), "r": REGION}, "m": []}),
                ));
            }
        }
    }

    fn publish_request(
        &self,
        method: &str,
        seg: &[String],
        query: &HashMap<String, String>,
        body: &[u8],
    ) -> Response<Full<Bytes>> {
        // /publish/{pub}/{sub}/0/{channel}/0[/{message}]
        let mut s = self.state.lock().unwrap();
        let ok_len = if method == "POST" { 7 } else { 8 };
        if seg.len() != ok_len || seg[4] != "0" || seg[6] != "0" {
            s.wrong.push(format!("publish path {seg:?} ({method})"));
            return reply(400, json!([0, "Invalid path", "0"]));
        }
        if seg[2] != s.publish_key || seg[3] != s.subscribe_key {
            s.wrong
                .push(format!("publish keys {} / {}", seg[2], seg[3]));
            return reply(400, json!([0, "Invalid Key", "0"]));
        }
        if query
            .get("seqn")
            .and_then(|n| n.parse::<u32>().ok())
            .is_none()
        {
            s.wrong.push("publish without seqn".into());
        }
        let text = if method == "POST" {
            String::from_utf8_lossy(body).into_owned()
        } else {
            seg[7].clone()
        };
        s.publishes
            .push((method.to_string(), seg[5].clone(), query.clone()));
        if s.forbid_publish {
            return reply(
                403,
                json!({"status": 403, "error": true, "message": "Forbidden", "service": "Access Manager"}),
            );
        }
        if text.len() > 32 * 1024 {
            return reply(413, json!([0, "Message Too Large", "0"]));
        }
        let Ok(message) = serde_json::from_str::<Value>(&text) else {
            s.wrong
                .push(format!("publish body is not JSON: {text:.80}"));
            return reply(400, json!([0, "Invalid JSON", "0"]));
        };
        let meta = query
            .get("meta")
            .map(|m| serde_json::from_str::<Value>(m).unwrap_or(Value::Null));
        let uuid = query.get("uuid").cloned().unwrap_or_default();
        let fire = query.get("norep").map(String::as_str) == Some("true")
            && query.get("store").map(String::as_str) == Some("0");
        let tt = if fire {
            let tt = s.next_tt();
            s.fired.push(Stored {
                timetoken: tt,
                channel: seg[5].clone(),
                message,
                uuid,
                meta,
                signal: false,
            });
            tt
        } else {
            s.store(&seg[5].clone(), message, &uuid, meta, false)
        };
        drop(s);
        self.published.notify_waiters();
        reply(200, json!([1, "Sent", tt.to_string()]))
    }

    fn history(&self, seg: &[String], query: &HashMap<String, String>) -> Response<Full<Bytes>> {
        // /v3/history/sub-key/{sub}/channel/{channel}
        let mut s = self.state.lock().unwrap();
        s.history_calls += 1;
        if seg.len() != 7 || seg[3] != "sub-key" || seg[5] != "channel" {
            s.wrong.push(format!("history path {seg:?}"));
            return reply(
                400,
                json!({"status": 400, "error": true, "error_message": "Invalid path"}),
            );
        }
        if seg[4] != s.subscribe_key {
            s.wrong.push(format!("history key {}", seg[4]));
        }
        let num = |k: &str| query.get(k).map(|v| v.parse::<u64>());
        let max = match num("max") {
            Some(Ok(m)) if (1..=100).contains(&m) => m as usize,
            None => 100,
            other => {
                s.wrong.push(format!("history max {other:?}"));
                100
            }
        };
        let start = match num("start") {
            Some(Ok(t)) => Some(t),
            None => None,
            Some(Err(e)) => {
                s.wrong.push(format!("history start: {e}"));
                None
            }
        };
        let end = match num("end") {
            Some(Ok(t)) => Some(t),
            None => None,
            Some(Err(e)) => {
                s.wrong.push(format!("history end: {e}"));
                None
            }
        };
        let channel = seg[6].clone();
        let all = s.channels.get(&channel).cloned().unwrap_or_default();
        let range: Vec<&Stored> = all
            .iter()
            .filter(|m| {
                start.is_none_or(|st| m.timetoken < st) && end.is_none_or(|e| m.timetoken >= e)
            })
            .collect();
        let page = &range[range.len().saturating_sub(max)..];
        let include_uuid = query.get("include_uuid").map(String::as_str) == Some("true");
        let include_meta = query.get("include_meta").map(String::as_str) == Some("true");
        let items: Vec<Value> = page
            .iter()
            .map(|m| {
                let mut v = json!({"message": m.message, "timetoken": m.timetoken.to_string()});
                if include_uuid {
                    v["uuid"] = json!(m.uuid);
                }
                if include_meta {
                    v["meta"] = m.meta.clone().unwrap_or(json!(""));
                }
                v
            })
            .collect();
        reply(
            200,
            json!({"status": 200, "error": false, "error_message": "", "channels": {channel: items}}),
        )
    }
}

impl State {
    fn next_tt(&mut self) -> u64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            / 100;
        self.last_tt = now.max(self.last_tt + 1);
        self.last_tt
    }

    fn store(
        &mut self,
        channel: &str,
        message: Value,
        uuid: &str,
        meta: Option<Value>,
        signal: bool,
    ) -> u64 {
        let tt = self.next_tt();
        self.channels
            .entry(channel.to_string())
            .or_default()
            .push(Stored {
                timetoken: tt,
                channel: channel.to_string(),
                message,
                uuid: uuid.to_string(),
                meta,
                signal,
            });
        tt
    }

    /// Messages after the poll's timetoken on its channels and groups, at
    /// most 100, oldest first.
    fn after(&self, poll: &Poll) -> Vec<Stored> {
        let mut names: Vec<&String> = poll.channels.iter().collect();
        for g in &poll.groups {
            if let Some(cs) = self.groups.get(g) {
                names.extend(cs);
            }
        }
        let mut out: Vec<Stored> = Vec::new();
        for n in names {
            if let Some(list) = self.channels.get(n) {
                let window = match self.catch_up_limit {
                    Some(l) => &list[list.len().saturating_sub(l)..],
                    None => &list[..],
                };
                out.extend(window.iter().filter(|m| m.timetoken > poll.tt).cloned());
            }
        }
        out.sort_by_key(|m| m.timetoken);
        out.truncate(100);
        out
    }

    fn check_common(&mut self, path: &str, query: &HashMap<String, String>) {
        match query.get("uuid") {
            Some(u) if !u.is_empty() => {}
            _ => self.wrong.push(format!("{path}: no uuid")),
        }
        if query.get("pnsdk").is_none_or(|p| p.is_empty()) {
            self.wrong.push(format!("{path}: no pnsdk"));
        }
        if let Some(a) = &self.auth_key {
            if query.get("auth") != Some(a) {
                let got = query.get("auth").cloned();
                self.wrong.push(format!("{path}: auth {got:?}"));
            }
        }
    }
}

fn reply(status: u16, body: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

fn form_urlencoded_parse(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}
