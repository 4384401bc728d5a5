//! Catch-up from Message Persistence (`GET /v3/history/…`), which the SDK
//! does not cover: what was published on a channel after a timetoken.
//!
//! PubNub's rules: `start` is exclusive and the newer bound, `end` is
//! inclusive and the older bound, a page holds at most 100 messages (the
//! newest of the range), in chronological order. So a catch-up after `tt`
//! asks `end = tt + 1` and pages towards older messages with `start` = the
//! oldest timetoken of the last page, until a page is not full.

use std::collections::HashMap;

use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use pubnub::subscribe::Message;
use serde_json::Value;

use crate::transport::HyperTransport;

/// Messages per page (PubNub's maximum for one channel).
pub const PAGE: usize = 100;

/// What identifies the client on every request.
pub struct Identity<'a> {
    /// The subscribe key.
    pub subscribe_key: &'a str,
    /// The User ID.
    pub uuid: &'a str,
    /// The auth key, if any.
    pub auth_key: Option<&'a str>,
}

/// The messages of `channel` published after `after`, oldest first, at most
/// `limit` (the newest ones when there are more; the caller logs the gap).
///
/// # Errors
/// A transport error, an error answer, or a body that is not history v3.
pub async fn after(
    transport: &HyperTransport,
    who: &Identity<'_>,
    channel: &str,
    after: u64,
    limit: usize,
) -> Result<(Vec<Message>, bool), String> {
    let path = format!(
        "/v3/history/sub-key/{}/channel/{}",
        who.subscribe_key,
        utf8_percent_encode(channel, NON_ALPHANUMERIC)
    );
    let mut pages: Vec<Vec<Message>> = Vec::new();
    let mut start: Option<u64> = None;
    let mut total = 0;
    let mut truncated = false;
    loop {
        let mut query = HashMap::from([
            ("max".to_string(), PAGE.to_string()),
            ("end".to_string(), (after + 1).to_string()),
            ("include_uuid".to_string(), "true".to_string()),
            ("include_meta".to_string(), "true".to_string()),
            ("uuid".to_string(), who.uuid.to_string()),
            (
                "pnsdk".to_string(),
                concat!("ulog/", env!("CARGO_PKG_VERSION")).to_string(),
            ),
        ]);
        if let Some(s) = start {
            query.insert("start".into(), s.to_string());
        }
        if let Some(a) = who.auth_key {
            query.insert("auth".into(), a.to_string());
        }
        let (status, body) = transport
            .get(&path, &query)
            .await
            .map_err(|e| e.to_string())?;
        if status != 200 {
            return Err(format!(
                "history: HTTP {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ));
        }
        let page = parse_page(&body, channel)?;
        let full = page.len() >= PAGE;
        let oldest = page.first().map(|m| m.timestamp as u64);
        total += page.len();
        pages.push(page);
        match oldest {
            Some(o) if full && o > after + 1 => {
                if total >= limit {
                    truncated = true;
                    break;
                }
                start = Some(o);
            }
            _ => break,
        }
    }
    let mut all: Vec<Message> = pages.into_iter().rev().flatten().collect();
    if all.len() > limit {
        all.drain(..all.len() - limit);
        truncated = true;
    }
    Ok((all, truncated))
}

/// Reads one history v3 answer for `channel`.
///
/// # Errors
/// An error answer, or a body that is not history v3.
pub fn parse_page(body: &[u8], channel: &str) -> Result<Vec<Message>, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("history: not JSON: {e}"))?;
    if v.get("error").and_then(Value::as_bool) == Some(true) {
        return Err(format!(
            "history: {}",
            v.get("error_message")
                .and_then(Value::as_str)
                .unwrap_or("error")
        ));
    }
    let Some(channels) = v.get("channels").and_then(Value::as_object) else {
        return Err("history: the answer has no `channels`".into());
    };
    let Some(items) = channels.get(channel) else {
        return Ok(Vec::new());
    };
    let items = items
        .as_array()
        .ok_or("history: the channel's messages are not a list")?;
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let tt = match item.get("timetoken") {
            Some(Value::String(s)) => s.parse::<u64>().ok(),
            Some(Value::Number(n)) => n.as_u64(),
            _ => None,
        }
        .ok_or_else(|| format!("history: a message without a valid timetoken: {item}"))?;
        let message = item
            .get("message")
            .ok_or_else(|| format!("history: an entry without `message`: {item}"))?;
        out.push(Message {
            sender: item.get("uuid").and_then(Value::as_str).map(str::to_string),
            timestamp: usize::try_from(tt).map_err(|_| "timetoken too large")?,
            channel: channel.to_string(),
            subscription: channel.to_string(),
            data: serde_json::to_vec(message).unwrap_or_default(),
            custom_message_type: None,
            user_metadata: item.get("meta").filter(|m| m.is_object()).cloned(),
            decryption_error: None,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_v3_sample_parses_with_exact_timetokens() {
        let body = br#"{"status": 200, "error": false, "error_message": "", "channels": {"TestChannel":[{"message":"Hello","timetoken":"15653750239963666"},{"message":"Hello","timetoken":15654070724737575}]}}"#;
        let page = parse_page(body, "TestChannel").unwrap();
        assert_eq!(page.len(), 2);
        assert_eq!(page[0].timestamp, 15653750239963666);
        assert_eq!(page[1].timestamp, 15654070724737575);
        assert_eq!(page[0].data, b"\"Hello\"");
        assert!(parse_page(body, "Other").unwrap().is_empty());
        assert!(
            parse_page(br#"{"error":true,"error_message":"Forbidden"}"#, "x")
                .unwrap_err()
                .contains("Forbidden")
        );
        assert!(parse_page(b"[1,2", "x").is_err());
        assert!(parse_page(br#"{"channels":{"x":[{"message":1}]}}"#, "x").is_err());
    }
}
