//! `format = "regex"`: a regular expression with named groups, for lines no
//! built-in format reads. Each named group that took part in the match
//! becomes a string field (`types` converts them); unnamed groups are
//! ignored.

use bytes::Bytes;
use regex::Regex;
use serde_json::{Map, Value};
use ulog_engine::{BuildError, Params};

use crate::common::{text, Common};
use crate::{ParseError, Parsed, Parser, Snip};

/// Matches each line against `expression`.
pub(crate) struct RegexParser {
    regex: Regex,
    /// Group index and field name of every named group.
    names: Vec<(usize, String)>,
    common: Common,
}

impl RegexParser {
    pub(crate) fn from_params(params: &Params, common: Common) -> Result<Self, BuildError> {
        let expression = params.opt_str("expression")?.ok_or_else(|| {
            BuildError::param(
                "expression",
                "format \"regex\" needs `expression`, e.g. expression = /^(?<host>\\S+) (?<message>.*)$/",
            )
        })?;
        Self::new(expression, common).map_err(|e| BuildError::param("expression", e))
    }

    pub(crate) fn new(expression: &str, common: Common) -> Result<Self, String> {
        let regex = Regex::new(expression).map_err(|e| e.to_string())?;
        let names: Vec<(usize, String)> = regex
            .capture_names()
            .enumerate()
            .filter_map(|(i, n)| n.map(|n| (i, n.to_string())))
            .collect();
        if names.is_empty() {
            return Err(
                "the expression has no named group; name the parts to keep: (?<field>...)".into(),
            );
        }
        Ok(Self {
            regex,
            names,
            common,
        })
    }
}

impl Parser for RegexParser {
    fn parse(&self, input: Bytes) -> Result<Parsed, ParseError> {
        let line = text(&input)?;
        let mut locs = self.regex.capture_locations();
        if self.regex.captures_read(&mut locs, line).is_none() {
            return Err(ParseError::new(format!(
                "regex: {:?} does not match the expression",
                Snip(line)
            )));
        }
        let mut map = Map::with_capacity(self.names.len());
        for (i, name) in &self.names {
            if let Some((start, end)) = locs.get(*i) {
                map.insert(name.clone(), Value::String(line[start..end].to_string()));
            }
        }
        self.common.finish(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::FieldType;
    use crate::time::TimeFormat;
    use serde_json::json;

    #[test]
    fn named_groups_types_and_time() {
        // A real Redis log line.
        let common = Common {
            time_key: Some("time".into()),
            time_format: TimeFormat::parse(Some("%d %b %Y %H:%M:%S%.3f")).unwrap(),
            types: vec![("pid".into(), FieldType::Int)],
            ..Common::default()
        };
        let p = RegexParser::new(
            r"^(?<pid>\d+):(?<role>[XCSM]) (?<time>\d+ \w+ \d+ [\d:.]+) (?:\*|#|-|\.) (?<message>.*)$",
            common,
        )
        .unwrap();
        let parsed = p
            .parse(Bytes::from_static(
                b"1:M 05 Mar 2024 10:12:01.123 * Ready to accept connections tcp",
            ))
            .unwrap();
        assert_eq!(
            Value::Object(parsed.record.to_map().into_owned()),
            json!({"pid": 1, "role": "M", "message": "Ready to accept connections tcp"})
        );
        let t = parsed.time.unwrap();
        assert_eq!((t.secs(), t.subsec_nanos()), (1_709_633_521, 123_000_000));
    }

    #[test]
    fn optional_groups_are_absent_and_mismatches_fail() {
        let p = RegexParser::new(r"^(?<a>\w+)(?: (?<b>\d+))?$", Common::default()).unwrap();
        let r = p.parse(Bytes::from_static(b"word")).unwrap();
        assert_eq!(r.record.to_json_string(), r#"{"a":"word"}"#);
        let e = p.parse(Bytes::from_static(b"two words")).unwrap_err();
        assert!(e.0.contains("does not match"), "{e}");
        assert!(RegexParser::new(r"^(\w+)$", Common::default()).is_err());
        assert!(RegexParser::new(r"^(?<a>\w+$", Common::default()).is_err());
    }
}
