//! What a driver error means for the events of one `insert_many`.
//!
//! The answer follows the engine's delivery model: a document the server
//! refused for what it is (validation, size, field names) fails alone and
//! is not retried; a server that is away, stepping down or slow makes the
//! documents retryable; a duplicate `_id` means the document is already
//! stored (a replay) and counts as delivered. Only numeric codes are read:
//! MongoDB and FerretDB word their messages differently.

use mongodb::error::{Error, ErrorKind, WriteFailure, RETRYABLE_WRITE_ERROR};

/// MongoDB's duplicate key code, the same on FerretDB.
pub(crate) const DUPLICATE_KEY: i32 = 11000;
/// `NamespaceExists`: `create` on a collection that is already there.
pub(crate) const NAMESPACE_EXISTS: i32 = 48;

/// Server codes after which the same write may succeed later: network
/// trouble, a primary stepping down or shutting down, time limits, write
/// conflicts, a write concern not met in time.
const RETRYABLE_CODES: &[i32] = &[
    6,     // HostUnreachable
    7,     // HostNotFound
    50,    // MaxTimeMSExpired
    64,    // WriteConcernFailed
    89,    // NetworkTimeout
    91,    // ShutdownInProgress
    112,   // WriteConflict
    134,   // ReadConcernMajorityNotAvailableYet
    189,   // PrimarySteppedDown
    262,   // ExceededTimeLimit
    9001,  // SocketException
    10058, // LegacyNotPrimary
    10107, // NotWritablePrimary
    11600, // InterruptedAtShutdown
    11602, // InterruptedDueToReplStateChange
    13435, // NotPrimaryNoSecondaryOk
    13436, // NotPrimaryOrSecondary
];

/// Whether a server error code is worth retrying.
pub(crate) fn retryable_code(code: i32) -> bool {
    RETRYABLE_CODES.contains(&code)
}

/// One document of an `insert_many` that was not stored.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DocFailure {
    /// Its position in the `insert_many`.
    pub position: usize,
    /// The server's reason, with its code.
    pub reason: String,
    /// Whether retrying it may work.
    pub retryable: bool,
}

/// How one `insert_many` went.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum InsertOutcome {
    /// Every document is stored (some perhaps from an earlier attempt).
    Stored {
        /// Documents refused as duplicates of stored ones.
        duplicates: usize,
    },
    /// Some documents were not stored; the others are.
    Some {
        /// The documents that were not stored.
        failures: Vec<DocFailure>,
        /// Documents refused as duplicates of stored ones.
        duplicates: usize,
    },
    /// The command as a whole failed: assume nothing is stored.
    Whole {
        /// What went wrong.
        reason: String,
        /// Whether retrying may work.
        retryable: bool,
    },
}

/// Reads an `insert_many` error of `count` documents.
pub(crate) fn classify_insert(error: &Error, count: usize) -> InsertOutcome {
    let retry_label = error.contains_label(RETRYABLE_WRITE_ERROR);
    match &*error.kind {
        ErrorKind::InsertMany(e) => {
            let mut duplicates = 0;
            let mut failures = Vec::new();
            let mut failed = vec![false; count];
            for we in e.write_errors.iter().flatten() {
                if let Some(f) = failed.get_mut(we.index) {
                    *f = true;
                }
                if we.code == DUPLICATE_KEY {
                    duplicates += 1;
                    continue;
                }
                failures.push(DocFailure {
                    position: we.index,
                    reason: server_reason(&we.message, we.code, we.code_name.as_deref()),
                    retryable: retryable_code(we.code),
                });
            }
            if let Some(wce) = &e.write_concern_error {
                // Written, but not as durably as asked: write them again
                // (the replay is idempotent) until the concern is met.
                let reason = format!(
                    "write concern not satisfied: {}",
                    server_reason(&wce.message, wce.code, Some(&wce.code_name))
                );
                if failures.is_empty() && duplicates == 0 {
                    return InsertOutcome::Whole {
                        reason,
                        retryable: true,
                    };
                }
                failures.extend(failed.iter().enumerate().filter(|(_, f)| !**f).map(
                    |(position, _)| DocFailure {
                        position,
                        reason: reason.clone(),
                        retryable: true,
                    },
                ));
            }
            if failures.is_empty() {
                InsertOutcome::Stored { duplicates }
            } else {
                failures.sort_by_key(|f| f.position);
                InsertOutcome::Some {
                    failures,
                    duplicates,
                }
            }
        }
        ErrorKind::Command(c) => InsertOutcome::Whole {
            reason: server_reason(&c.message, c.code, Some(&c.code_name)),
            retryable: retry_label || retryable_code(c.code),
        },
        ErrorKind::Write(WriteFailure::WriteConcernError(wce)) => InsertOutcome::Whole {
            reason: format!(
                "write concern not satisfied: {}",
                server_reason(&wce.message, wce.code, Some(&wce.code_name))
            ),
            retryable: true,
        },
        ErrorKind::Write(WriteFailure::WriteError(we)) => InsertOutcome::Whole {
            reason: server_reason(&we.message, we.code, we.code_name.as_deref()),
            retryable: retry_label || retryable_code(we.code),
        },
        // The documents or the request themselves are at fault: the same
        // bytes will fail the same way.
        ErrorKind::InvalidArgument { .. } | ErrorKind::BsonSerialization(_) => {
            InsertOutcome::Whole {
                reason: error.to_string(),
                retryable: false,
            }
        }
        // Network, server selection, pool cleared, DNS, authentication,
        // TLS, and anything this version does not know: the data is not at
        // fault, so keep it (`retry_max_attempts` bounds the retries).
        _ => InsertOutcome::Whole {
            reason: error.to_string(),
            retryable: true,
        },
    }
}

/// The server code of a command-level error, when there is one.
pub(crate) fn command_code(error: &Error) -> Option<i32> {
    match &*error.kind {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(WriteFailure::WriteError(we)) => Some(we.code),
        _ => None,
    }
}

/// Whether an error in a setup step (create, createIndexes) is about the
/// connection rather than about what was asked.
pub(crate) fn setup_retryable(error: &Error) -> bool {
    match command_code(error) {
        Some(code) => retryable_code(code) || error.contains_label(RETRYABLE_WRITE_ERROR),
        None => !matches!(
            &*error.kind,
            ErrorKind::InvalidArgument { .. } | ErrorKind::BsonSerialization(_)
        ),
    }
}

fn server_reason(message: &str, code: i32, name: Option<&str>) -> String {
    match name.filter(|n| !n.is_empty()) {
        Some(name) => format!("{message} (code {code}, {name})"),
        None => format!("{message} (code {code})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_that_retry() {
        assert!(retryable_code(10107));
        assert!(retryable_code(91));
        assert!(!retryable_code(DUPLICATE_KEY));
        assert!(!retryable_code(121), "document validation failure");
        assert!(!retryable_code(2), "bad value");
    }

    #[test]
    fn reasons_carry_the_code() {
        assert_eq!(
            server_reason("boom", 2, Some("BadValue")),
            "boom (code 2, BadValue)"
        );
        assert_eq!(server_reason("boom", 2, Some("")), "boom (code 2)");
    }
}
