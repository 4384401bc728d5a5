//! What a `_bulk` answer means for each document.
//!
//! A `_bulk` request that reached the cluster is answered 200 even when
//! documents failed: the body says `"errors": true` and each item carries
//! its own status and, on failure, an `error` object with a `type` and a
//! `reason`. Items come back in the order the documents were sent.
//!
//! ulog asks for a trimmed answer (`filter_path=errors,items.*.status,
//! items.*.error`, understood by Elasticsearch and OpenSearch alike), so
//! 10,000 successful documents cost about 300 KB of answer instead of 2 MB,
//! and an answer with `"errors": false` is not read item by item at all.
//!
//! Per item:
//! - 2xx: written.
//! - 409 for a `create` (`version_conflict_engine_exception`): a document
//!   with that `_id` is there already, i.e. this is a replay of a document
//!   that was written before: delivered.
//! - 429 (`es_rejected_execution_exception`, a full write queue), 5xx and
//!   408: worth trying again later.
//! - any other status (400 `mapper_parsing_exception`, 400
//!   `illegal_argument_exception`, 404 `index_not_found_exception` where
//!   automatic index creation is off…): the document itself is refused; it
//!   goes to `errors` with the type and reason the server gave.

use serde::Deserialize;
use serde_json::value::RawValue;

/// The query string that trims the answer to what is read here.
pub const FILTER_PATH: &str = "filter_path=errors,items.*.status,items.*.error";

/// The failure of one document of a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemError {
    /// Position of the document in the body.
    pub position: usize,
    /// Whether sending it again may work (429, 5xx).
    pub retryable: bool,
    /// `status type: reason`, with the cause when the server gave one.
    pub reason: String,
}

#[derive(Deserialize)]
struct Answer<'a> {
    #[serde(default)]
    errors: bool,
    #[serde(borrow, default)]
    items: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum Action {
    Create(Item),
    Index(Item),
    Update(Item),
    Delete(Item),
}

#[derive(Deserialize)]
struct Item {
    status: u16,
    #[serde(default)]
    error: Option<ServerError>,
}

/// An `error` object as both servers write it.
#[derive(Deserialize, Debug)]
struct ServerError {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    caused_by: Option<Box<ServerError>>,
}

impl ServerError {
    fn describe(&self) -> String {
        let mut text = self.kind.clone();
        if let Some(r) = &self.reason {
            text.push_str(": ");
            text.push_str(r);
        }
        let mut cause = self.caused_by.as_deref();
        while let Some(c) = cause {
            text.push_str(" (caused by ");
            text.push_str(&c.kind);
            if let Some(r) = &c.reason {
                text.push_str(": ");
                text.push_str(r);
            }
            text.push(')');
            cause = c.caused_by.as_deref();
        }
        text
    }
}

/// Whether a status (of an item or of a whole request) is worth a retry.
pub fn retryable_status(status: u16) -> bool {
    status == 429 || status == 408 || status >= 500
}

/// Reads the answer to a body of `sent` documents; `create` says whether
/// they were sent with `create` (so 409 means "already there").
///
/// # Errors
/// An answer that is not a bulk answer, or whose item count differs from
/// what was sent: the caller cannot tell which documents were written and
/// sends the whole body again (safe, as documents carry their `_id`).
pub fn parse(body: &[u8], sent: usize, create: bool) -> Result<Vec<ItemError>, String> {
    let answer: Answer<'_> = serde_json::from_slice(body)
        .map_err(|e| format!("the bulk answer is not the JSON expected ({e})"))?;
    if !answer.errors {
        return Ok(Vec::new());
    }
    let items: Vec<Action> = match answer.items {
        Some(raw) => serde_json::from_str(raw.get())
            .map_err(|e| format!("the bulk answer's items are not as expected ({e})"))?,
        None => Vec::new(),
    };
    if items.len() != sent {
        return Err(format!(
            "the bulk answer lists {} items for {sent} documents",
            items.len()
        ));
    }
    let mut failures = Vec::new();
    for (position, action) in items.into_iter().enumerate() {
        let item = match action {
            Action::Create(i) | Action::Index(i) | Action::Update(i) | Action::Delete(i) => i,
        };
        if (200..300).contains(&item.status) || (create && item.status == 409) {
            continue;
        }
        let what = item
            .error
            .as_ref()
            .map(ServerError::describe)
            .unwrap_or_else(|| "no reason given".to_string());
        failures.push(ItemError {
            position,
            retryable: retryable_status(item.status),
            reason: format!("{} {what}", item.status),
        });
    }
    Ok(failures)
}

/// The `type: reason` of an error answer to a whole request (401, 400…),
/// or the start of its body when it is not the usual error object.
pub fn describe_error_body(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Whole {
        error: ErrorField,
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ErrorField {
        Object(ServerError),
        Text(String),
    }
    match serde_json::from_slice::<Whole>(body) {
        Ok(Whole {
            error: ErrorField::Object(e),
        }) => e.describe(),
        Ok(Whole {
            error: ErrorField::Text(t),
        }) => t,
        Err(_) => {
            let text = String::from_utf8_lossy(&body[..body.len().min(300)]);
            text.trim().to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clean_answer_is_not_read_item_by_item() {
        let body =
            br#"{"errors":false,"items":[{"create":{"status":201}},{"create":{"status":201}}]}"#;
        assert_eq!(parse(body, 2, true).unwrap(), []);
        // Even a short item list: "errors": false is the server's word.
        assert_eq!(parse(br#"{"errors":false}"#, 2, true).unwrap(), []);
    }

    /// A recorded-by-hand answer in the documented bulk format, the way a
    /// busy cluster writes it: one document written, one already there
    /// (replay), one refused for its content, one rejected by a full write
    /// queue (429) and one on a shard that was not available (503).
    #[test]
    fn each_item_is_read_for_what_it_means() {
        let body = br#"{
          "took": 12, "errors": true,
          "items": [
            {"create": {"_index": "mk-2016.05.04", "_id": "a", "status": 201, "result": "created"}},
            {"create": {"_index": "mk-2016.05.04", "_id": "b", "status": 409,
              "error": {"type": "version_conflict_engine_exception",
                        "reason": "[b]: version conflict, document already exists (current version [1])"}}},
            {"create": {"_index": "mk-2016.05.04", "_id": "c", "status": 400,
              "error": {"type": "mapper_parsing_exception",
                        "reason": "failed to parse field [battery_mv] of type [long] in document with id 'c'. Preview of field's value: 'low'",
                        "caused_by": {"type": "illegal_argument_exception",
                                      "reason": "For input string: \"low\""}}}},
            {"create": {"_index": "mk-2016.05.04", "_id": "d", "status": 429,
              "error": {"type": "es_rejected_execution_exception",
                        "reason": "rejected execution of coordinating operation [shard_detail=[mk-2016.05.04][0][P], shard_coordinating_and_primary_bytes=0, shard_operation_bytes=98, shard_max_coordinating_and_primary_bytes=10]"}}},
            {"index": {"_index": "mk-2016.05.04", "_id": "e", "status": 503,
              "error": {"type": "unavailable_shards_exception", "reason": "[mk-2016.05.04][0] primary shard is not active"}}}
          ]
        }"#;
        let failures = parse(body, 5, true).unwrap();
        let summary: Vec<_> = failures.iter().map(|f| (f.position, f.retryable)).collect();
        assert_eq!(summary, [(2, false), (3, true), (4, true)]);
        assert_eq!(
            failures[0].reason,
            "400 mapper_parsing_exception: failed to parse field [battery_mv] of type [long] in \
             document with id 'c'. Preview of field's value: 'low' (caused by \
             illegal_argument_exception: For input string: \"low\")"
        );
        assert!(failures[1]
            .reason
            .starts_with("429 es_rejected_execution_exception: rejected execution"));
        // With `index` a 409 is a real conflict (external versioning), not a replay.
        let failures = parse(body, 5, false).unwrap();
        assert_eq!(failures[0].position, 1);
        assert!(!failures[0].retryable);
    }

    #[test]
    fn answers_that_do_not_add_up_are_errors() {
        let body = br#"{"errors":true,"items":[{"create":{"status":201}}]}"#;
        assert!(parse(body, 2, true)
            .unwrap_err()
            .contains("1 items for 2 documents"));
        assert!(parse(b"<html>proxy error</html>", 1, true).is_err());
    }

    #[test]
    fn whole_request_errors_are_described() {
        let body = br#"{"error":{"root_cause":[],"type":"security_exception","reason":"missing authentication credentials for REST request [/_bulk]"},"status":401}"#;
        assert_eq!(
            describe_error_body(body),
            "security_exception: missing authentication credentials for REST request [/_bulk]"
        );
        let body = br#"{"error":"Content-Type header [application/vnd.elasticsearch+json; compatible-with=8] is not supported","status":406}"#;
        assert!(describe_error_body(body).starts_with("Content-Type header"));
        assert_eq!(describe_error_body(b"Bad Gateway\n"), "Bad Gateway");
    }
}
