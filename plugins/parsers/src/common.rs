//! The options every format shares (`time_key`, `time_format`, `time_zone`,
//! `keep_time_key`, `types`) and the last step every parser runs: converting
//! field types and taking the event time out of the record.

use serde_json::{Map, Number, Value};
use ulog_engine::{BuildError, EventTime, Params, Record};

use crate::time::{TimeFormat, Zone};
use crate::{ParseError, Parsed, Snip};

/// What a `types` entry converts a field to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FieldType {
    Int,
    Float,
    Bool,
    String,
}

impl FieldType {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "int" | "integer" => FieldType::Int,
            "float" => FieldType::Float,
            "bool" | "boolean" => FieldType::Bool,
            "string" => FieldType::String,
            _ => return None,
        })
    }

    /// Converts one value; "-" and "" become null (access logs write "-"
    /// for "none").
    fn convert(self, key: &str, v: Value) -> Result<Value, ParseError> {
        let fail = |v: &Value, what: &str| {
            let shown = match v {
                Value::String(s) => format!("{:?}", Snip(s)),
                other => other.to_string(),
            };
            ParseError::new(format!("field `{key}`: {shown} is not {what}"))
        };
        if let Value::String(s) = &v {
            if self != FieldType::String && (s.is_empty() || s == "-") {
                return Ok(Value::Null);
            }
        }
        Ok(match self {
            FieldType::String => match v {
                Value::String(_) | Value::Null => v,
                other => Value::String(other.to_string()),
            },
            FieldType::Int => match &v {
                Value::Number(n) if n.is_i64() || n.is_u64() => v,
                Value::String(s) => s
                    .trim()
                    .parse::<i64>()
                    .map(Value::from)
                    .map_err(|_| fail(&v, "an integer"))?,
                Value::Null => v,
                _ => return Err(fail(&v, "an integer")),
            },
            FieldType::Float => match &v {
                Value::Number(_) | Value::Null => v,
                Value::String(s) => s
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .and_then(Number::from_f64)
                    .map(Value::Number)
                    .ok_or_else(|| fail(&v, "a number"))?,
                _ => return Err(fail(&v, "a number")),
            },
            FieldType::Bool => match &v {
                Value::Bool(_) | Value::Null => v,
                Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
                    "true" | "yes" | "on" | "1" => Value::Bool(true),
                    "false" | "no" | "off" | "0" => Value::Bool(false),
                    _ => return Err(fail(&v, "a boolean")),
                },
                Value::Number(n) if n.as_i64() == Some(0) => Value::Bool(false),
                Value::Number(n) if n.as_i64() == Some(1) => Value::Bool(true),
                _ => return Err(fail(&v, "a boolean")),
            },
        })
    }
}

/// The shared options, read once when the parser is built.
#[derive(Clone, Debug)]
pub(crate) struct Common {
    pub time_key: Option<String>,
    pub keep_time_key: bool,
    pub time_format: TimeFormat,
    pub zone: Zone,
    pub types: Vec<(String, FieldType)>,
}

impl Default for Common {
    fn default() -> Self {
        Self {
            time_key: None,
            keep_time_key: false,
            time_format: TimeFormat::Auto,
            zone: Zone::Fixed(0),
            types: Vec::new(),
        }
    }
}

impl Common {
    /// Reads the options; a parameter missing from the spec (an input that
    /// declared only `format`) takes its default.
    pub(crate) fn from_params(params: &Params) -> Result<Self, BuildError> {
        let keep_time_key = match params.get("keep_time_key") {
            None => false,
            Some(_) => params.bool("keep_time_key")?,
        };
        let time_format = TimeFormat::parse(params.opt_str("time_format")?)
            .map_err(|e| BuildError::param("time_format", e))?;
        let zone = match params.opt_str("time_zone")? {
            None => Zone::Fixed(0),
            Some(z) => Zone::parse(z).map_err(|e| BuildError::param("time_zone", e))?,
        };
        let mut types = Vec::new();
        for (field, value) in params.map("types")? {
            let ulog_engine::Value::Str(name) = value else {
                return Err(BuildError::param(
                    "types",
                    format!("`{field}`: expected a type name string, found {value}"),
                ));
            };
            let t = FieldType::parse(name).ok_or_else(|| {
                BuildError::param(
                    "types",
                    format!(
                        "`{field}`: unknown type {name:?}; use \"int\", \"float\", \"bool\" or \
                         \"string\""
                    ),
                )
            })?;
            types.push((field.clone(), t));
        }
        let time_key = params.opt_str("time_key")?.map(str::to_string);
        if time_key.as_deref() == Some("") {
            return Err(BuildError::param("time_key", "must not be empty"));
        }
        Ok(Self {
            time_key,
            keep_time_key,
            time_format,
            zone,
            types,
        })
    }

    /// True when a record must be built as a map to apply these options.
    pub(crate) fn needs_map(&self) -> bool {
        self.time_key.is_some() || !self.types.is_empty()
    }

    /// The field under which formats with their own timestamp keep it as
    /// written, when `keep_time_key` asks for that.
    pub(crate) fn natural_time_key(&self) -> Option<&str> {
        self.keep_time_key
            .then(|| self.time_key.as_deref().unwrap_or("time"))
    }

    /// Converts the `types` fields of `map`.
    pub(crate) fn apply_types(&self, map: &mut Map<String, Value>) -> Result<(), ParseError> {
        for (key, t) in &self.types {
            if let Some(slot) = map.get_mut(key) {
                let v = std::mem::take(slot);
                *slot = t.convert(key, v)?;
            }
        }
        Ok(())
    }

    /// Takes the event time out of the `time_key` field (left in place with
    /// `keep_time_key`). A missing field gives no time; one that does not
    /// read as a time is an error naming its value.
    pub(crate) fn take_time(
        &self,
        map: &mut Map<String, Value>,
    ) -> Result<Option<EventTime>, ParseError> {
        let Some(key) = &self.time_key else {
            return Ok(None);
        };
        let parse = |v: &Value| {
            self.time_format
                .parse_value(v, &self.zone)
                .map_err(|e| ParseError::new(format!("field `{key}`: {e}")))
        };
        if self.keep_time_key {
            map.get(key.as_str()).map(parse).transpose()
        } else {
            match map.shift_remove(key.as_str()) {
                None => Ok(None),
                Some(v) => parse(&v).map(Some),
            }
        }
    }

    /// The last step of formats that produce a map: types, then time.
    pub(crate) fn finish(&self, mut map: Map<String, Value>) -> Result<Parsed, ParseError> {
        self.apply_types(&mut map)?;
        let time = self.take_time(&mut map)?;
        Ok(Parsed {
            time,
            record: Record::Map(map),
        })
    }

    /// The last step of formats that carry their own time.
    pub(crate) fn finish_natural(
        &self,
        mut map: Map<String, Value>,
        time: Option<EventTime>,
    ) -> Result<Parsed, ParseError> {
        self.apply_types(&mut map)?;
        Ok(Parsed {
            time,
            record: Record::Map(map),
        })
    }
}

/// The input as text: UTF-8 required, one trailing `\r` (a CRLF line)
/// dropped.
pub(crate) fn text(input: &[u8]) -> Result<&str, ParseError> {
    let input = input.strip_suffix(b"\r").unwrap_or(input);
    std::str::from_utf8(input).map_err(|e| {
        ParseError::new(format!(
            "not UTF-8 text (invalid byte at offset {}); use format `none` or `msgpack` for binary input",
            e.valid_up_to()
        ))
    })
}

/// The input as text that must hold something besides spaces.
pub(crate) fn non_empty_text(input: &[u8]) -> Result<&str, ParseError> {
    let t = text(input)?;
    if t.trim().is_empty() {
        return Err(ParseError::new("empty line"));
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn types_convert_and_complain() {
        let c = Common {
            types: vec![
                ("code".into(), FieldType::Int),
                ("ratio".into(), FieldType::Float),
                ("ok".into(), FieldType::Bool),
                ("size".into(), FieldType::Int),
                ("id".into(), FieldType::String),
            ],
            ..Common::default()
        };
        let mut m = json!({"code": "200", "ratio": "0.5", "ok": "yes", "size": "-", "id": 7})
            .as_object()
            .unwrap()
            .clone();
        c.apply_types(&mut m).unwrap();
        assert_eq!(
            Value::Object(m),
            json!({"code": 200, "ratio": 0.5, "ok": true, "size": null, "id": "7"})
        );
        let mut bad = json!({"code": "abc"}).as_object().unwrap().clone();
        let err = c.apply_types(&mut bad).unwrap_err();
        assert_eq!(err.0, "field `code`: \"abc\" is not an integer");
    }

    #[test]
    fn time_key_is_taken_or_kept() {
        let mut c = Common {
            time_key: Some("ts".into()),
            ..Common::default()
        };
        let m = json!({"ts": 1700000000, "a": 1, "b": 2})
            .as_object()
            .unwrap()
            .clone();
        let p = c.finish(m.clone()).unwrap();
        assert_eq!(p.time.unwrap().secs(), 1_700_000_000);
        assert_eq!(p.record.to_json_string(), r#"{"a":1,"b":2}"#);
        c.keep_time_key = true;
        let p = c.finish(m).unwrap();
        assert_eq!(
            p.record.to_json_string(),
            r#"{"ts":1700000000,"a":1,"b":2}"#
        );
        let err = c
            .finish(json!({"ts": "never"}).as_object().unwrap().clone())
            .unwrap_err();
        assert!(
            err.0.contains("`ts`") && err.0.contains("\"never\""),
            "{err}"
        );
    }

    #[test]
    fn text_requires_utf8() {
        assert_eq!(text(b"abc\r").unwrap(), "abc");
        assert!(text(b"a\xffb").unwrap_err().0.contains("offset 1"));
        assert!(non_empty_text(b"  ").is_err());
    }
}
