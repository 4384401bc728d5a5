//! Parsers: from one line or message to a record (and maybe its time).
//!
//! Every input that reads text takes a `format` parameter and the options
//! declared by [`format_params`]; the `parse` filter uses the same parsers on
//! a field of an existing record. One parser instance is shared by all of an
//! input's connections, so parsers are `Sync` and keep no per-call state.

#![deny(missing_docs)]

use std::sync::Arc;

use bytes::Bytes;
use ulog_engine::{BuildError, EventTime, ParamKind, ParamSpec, Params, Record, Registry};

pub mod msgpack;

/// The result of parsing one line or message.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    /// The time found in the input, when the format or `time_key` gives one.
    pub time: Option<EventTime>,
    /// The fields.
    pub record: Record,
}

/// Why an input could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

impl ParseError {
    /// An error with a message.
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// Turns one unit of input (a line, a datagram, a message) into a record.
pub trait Parser: Send + Sync + 'static {
    /// Parses `input` (without its line terminator). `input` is handed over as
    /// [`Bytes`] so a parser may keep a slice of it without copying (the json
    /// parser keeps the line itself as the record).
    fn parse(&self, input: Bytes) -> Result<Parsed, ParseError>;
}

/// The names accepted by `format`.
pub const FORMATS: &[&str] = &["json", "none"];

/// Parameters every input with a `format` option accepts (and the `parse`
/// filter), with `default_format` as the default of `format`.
pub fn format_params(default_format: &'static str) -> Vec<ParamSpec> {
    vec![
        ParamSpec::with_default(
            "format",
            ParamKind::OneOf(FORMATS),
            default_format,
            "How to read each line or message: json, none (the whole line as `message`), ...",
        ),
        ParamSpec::with_default(
            "message_key",
            ParamKind::Str,
            "message",
            "With format `none`, the field that receives the line.",
        ),
    ]
}

/// Builds the parser described by the `format` parameters in `params`.
///
/// # Errors
/// A [`BuildError`] naming the parameter that is wrong.
pub fn build_parser(params: &Params) -> Result<Arc<dyn Parser>, BuildError> {
    match params.str("format")? {
        "json" => Ok(Arc::new(JsonParser)),
        "none" => Ok(Arc::new(NoneParser {
            key: params.str("message_key")?.to_string(),
        })),
        other => Err(BuildError::param("format", format!("unknown format {other:?}"))),
    }
}

/// Registers the `parse` filter.
pub fn register(_registry: &mut Registry) {}

/// One JSON object per input, kept as its validated text (parsed lazily).
pub struct JsonParser;

impl Parser for JsonParser {
    fn parse(&self, input: Bytes) -> Result<Parsed, ParseError> {
        Record::from_json_bytes(input)
            .map(|record| Parsed { time: None, record })
            .map_err(|e| ParseError(e.to_string()))
    }
}

/// The whole input as one string field.
pub struct NoneParser {
    key: String,
}

impl Parser for NoneParser {
    fn parse(&self, input: Bytes) -> Result<Parsed, ParseError> {
        let text = String::from_utf8_lossy(&input).into_owned();
        let mut record = Record::new();
        record.insert(self.key.clone(), serde_json::Value::String(text));
        Ok(Parsed { time: None, record })
    }
}
