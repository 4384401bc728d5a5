//! Parsers: from one line or message to a record (and maybe its time).
//!
//! Every input that reads text takes a `format` parameter and the options
//! declared by [`format_params`]; the `parse` filter uses the same parsers on
//! a field of an existing record. One parser instance is shared by all of an
//! input's connections, so parsers are `Sync` and keep no per-call state.
//!
//! Which format to pick:
//! - `json` for JSON lines: the line is validated and kept as its bytes, so a
//!   pipeline that only moves events never builds a tree for it;
//! - `ltsv`, `logfmt`, `csv`/`tsv` for structured text;
//! - `syslog` (or `syslog_rfc5424` / `syslog_rfc3164` when the flavour is
//!   known), `apache2`, `nginx`, `apache_error` for those well-known lines:
//!   they are scanned by hand (no regex) and take their time from the line;
//! - `regex` for anything else, with named groups;
//! - `msgpack` for one binary msgpack map per message;
//! - `none` to keep the line as one field.
//!
//! The common options (`time_key`, `time_format`, `time_zone`,
//! `keep_time_key`, `types`) work the same for every format.

#![deny(missing_docs)]

use std::sync::Arc;

use bytes::Bytes;
use ulog_engine::{BuildError, EventTime, ParamKind, ParamSpec, Params, Record, Registry};

mod common;
pub mod filter_parse;
pub mod msgpack;
pub mod msgpack_stream;
mod parser_apache2;
mod parser_apache_error;
mod parser_csv;
mod parser_json;
mod parser_logfmt;
mod parser_ltsv;
mod parser_msgpack;
mod parser_nginx;
mod parser_none;
mod parser_regexp;
mod parser_syslog;
mod scan;
mod time;

pub use parser_json::JsonParser;
pub use parser_none::NoneParser;

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
pub const FORMATS: &[&str] = &[
    "json",
    "none",
    "msgpack",
    "regex",
    "ltsv",
    "csv",
    "tsv",
    "logfmt",
    "syslog",
    "syslog_rfc5424",
    "syslog_rfc3164",
    "apache2",
    "nginx",
    "apache_error",
];

/// Parameters every input with a `format` option accepts (and the `parse`
/// filter), with `default_format` as the default of `format`.
///
/// Declared here once so every input documents and validates them the same
/// way; options that a format does not use are ignored by it.
pub fn format_params(default_format: &'static str) -> Vec<ParamSpec> {
    vec![
        ParamSpec::with_default(
            "format",
            ParamKind::OneOf(FORMATS),
            default_format,
            "How to read each line or message: json, none (the whole line as `message_key`), msgpack, \
             regex (with `expression`), ltsv, csv / tsv (with `keys`), logfmt, syslog (RFC 5424 or \
             3164, detected), syslog_rfc5424, syslog_rfc3164, apache2, nginx, apache_error.",
        ),
        ParamSpec::with_default(
            "message_key",
            ParamKind::Str,
            "message",
            "With format `none`, the field that receives the line.",
        ),
        ParamSpec::optional(
            "expression",
            ParamKind::Regex,
            "With format `regex` (required there): the regular expression; each named group \
             `(?<name>...)` becomes a field, unnamed groups are ignored.",
        ),
        ParamSpec::optional(
            "keys",
            ParamKind::List(Box::new(ParamKind::Str)),
            "With formats `csv` and `tsv` (required there): the field names, in column order.",
        ),
        ParamSpec::optional(
            "delimiter",
            ParamKind::Str,
            "Field separator, one character: for `csv` (default \",\"), `tsv` (default tab) and \
             `ltsv` (default tab).",
        ),
        ParamSpec::with_default(
            "label_delimiter",
            ParamKind::Str,
            ":",
            "With format `ltsv`: the character between a label and its value.",
        ),
        ParamSpec::optional(
            "types",
            ParamKind::Map,
            "Converts fields after parsing: `{ code = \"int\", size = \"int\", ratio = \"float\", \
             ok = \"bool\", id = \"string\" }`. \"-\" and empty strings become null; other values \
             that do not convert are a parse error.",
        ),
        ParamSpec::optional(
            "time_key",
            ParamKind::Str,
            "Take the event time from this field (removed from the record unless `keep_time_key`). \
             Unset: the time is the one the format carries (syslog, apache2, nginx, apache_error), \
             else the time of reading.",
        ),
        ParamSpec::with_default(
            "keep_time_key",
            ParamKind::Bool,
            false,
            "Keep the time field in the record (for syslog and access logs: add the time as \
             written, under `time_key` or \"time\").",
        ),
        ParamSpec::optional(
            "time_format",
            ParamKind::Str,
            "How the `time_key` field is written: a strftime pattern (\"%d/%b/%Y:%H:%M:%S %z\"), \
             or \"unix\" (seconds, fractions allowed), \"unix_ms\", \"unix_us\", \"unix_ns\", \
             \"iso8601\" / \"rfc3339\". Unset: numbers are unix seconds and strings RFC 3339.",
        ),
        ParamSpec::with_default(
            "time_zone",
            ParamKind::Str,
            "UTC",
            "Zone of times written without an offset (RFC 3164 syslog, apache_error, time_format \
             without %z): \"UTC\", \"local\", or a fixed offset such as \"+09:00\".",
        ),
    ]
}

/// Builds the parser described by the `format` parameters in `params`.
///
/// # Errors
/// A [`BuildError`] naming the parameter that is wrong.
pub fn build_parser(params: &Params) -> Result<Arc<dyn Parser>, BuildError> {
    let format = params.str("format")?;
    let common = common::Common::from_params(params)?;
    Ok(match format {
        "json" => parser_json::build(common),
        "none" => Arc::new(NoneParser::new(
            params.opt_str("message_key")?.unwrap_or("message"),
        )),
        "msgpack" => Arc::new(parser_msgpack::MsgpackParser::new(common)),
        "regex" => Arc::new(parser_regexp::RegexParser::from_params(params, common)?),
        "ltsv" => Arc::new(parser_ltsv::LtsvParser::from_params(params, common)?),
        "csv" => Arc::new(parser_csv::CsvParser::from_params(params, b',', common)?),
        "tsv" => Arc::new(parser_csv::CsvParser::from_params(params, b'\t', common)?),
        "logfmt" => Arc::new(parser_logfmt::LogfmtParser::new(common)),
        "syslog" => Arc::new(parser_syslog::SyslogParser::new(
            parser_syslog::Flavor::Auto,
            common,
        )),
        "syslog_rfc5424" => Arc::new(parser_syslog::SyslogParser::new(
            parser_syslog::Flavor::Rfc5424,
            common,
        )),
        "syslog_rfc3164" => Arc::new(parser_syslog::SyslogParser::new(
            parser_syslog::Flavor::Rfc3164,
            common,
        )),
        "apache2" => Arc::new(parser_apache2::AccessLogParser::apache2(common)),
        "nginx" => Arc::new(parser_nginx::nginx(common)),
        "apache_error" => Arc::new(parser_apache_error::ApacheErrorParser::new(common)),
        other => {
            return Err(BuildError::param(
                "format",
                format!("unknown format {other:?}"),
            ))
        }
    })
}

/// Registers the `parse` filter.
pub fn register(registry: &mut Registry) {
    filter_parse::register(registry);
}

/// At most the first 60 characters of `text`, for error messages about lines
/// that may be huge.
pub(crate) fn snippet(text: &[u8]) -> String {
    const MAX: usize = 60;
    let s = String::from_utf8_lossy(&text[..text.len().min(MAX)]);
    if text.len() > MAX {
        format!("{s:?}...")
    } else {
        format!("{s:?}")
    }
}

/// Shows at most the first 60 characters of a string with `{:?}`, so error
/// messages about huge fields stay short.
pub(crate) struct Snip<'a>(pub &'a str);

impl std::fmt::Debug for Snip<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const MAX: usize = 60;
        if self.0.len() <= MAX {
            return write!(f, "{:?}", self.0);
        }
        let mut end = MAX;
        while !self.0.is_char_boundary(end) {
            end -= 1;
        }
        write!(f, "{:?}... ({} bytes)", &self.0[..end], self.0.len())
    }
}
