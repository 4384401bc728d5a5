//! Plugin parameters: the values a routes file gives, the schema each plugin
//! declares for them, and checking one against the other.
//!
//! A plugin declares every option once ([`ParamSpec`]: name, type, default,
//! description). That one declaration drives validation here, the "did you
//! mean" hints and type errors of `ulog check`, and the reference docs.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// A configuration value, as written in a routes file.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `"text"` (after `${VAR}` interpolation).
    Str(String),
    /// `42`.
    Int(i64),
    /// `0.5`.
    Float(f64),
    /// `true` / `false`.
    Bool(bool),
    /// `250ms`, `5s`, `2h`.
    Duration(Duration),
    /// `512KiB`, `8MiB`, in bytes.
    Size(u64),
    /// `[a, b]`.
    List(Vec<Value>),
    /// `{ k = v }`, in written order.
    Map(Vec<(String, Value)>),
    /// `/regex/`, its source text.
    Regex(String),
}

impl Value {
    /// The name of this value's type, as used in error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Str(_) => "string",
            Value::Int(_) => "integer",
            Value::Float(_) => "float",
            Value::Bool(_) => "boolean",
            Value::Duration(_) => "duration",
            Value::Size(_) => "size",
            Value::List(_) => "list",
            Value::Map(_) => "map",
            Value::Regex(_) => "regex",
        }
    }

    /// The value as JSON, for plugins that put configured values into records.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::Str(s) | Value::Regex(s) => J::String(s.clone()),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => J::from(*f),
            Value::Bool(b) => J::Bool(*b),
            Value::Duration(d) => J::from(d.as_secs_f64()),
            Value::Size(s) => J::from(*s),
            Value::List(items) => J::Array(items.iter().map(Value::to_json).collect()),
            Value::Map(entries) => J::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_json()))
                    .collect(),
            ),
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.to_string())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(s)
    }
}
impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}
impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}
impl From<Duration> for Value {
    fn from(d: Duration) -> Self {
        Value::Duration(d)
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Str(s) => write!(f, "{s:?}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Duration(d) => {
                let ms = d.as_millis();
                if ms % 1000 == 0 {
                    write!(f, "{}s", ms / 1000)
                } else {
                    write!(f, "{ms}ms")
                }
            }
            Value::Size(s) => {
                if *s >= 1 << 20 && s % (1 << 20) == 0 {
                    write!(f, "{}MiB", s >> 20)
                } else if *s >= 1 << 10 && s % (1 << 10) == 0 {
                    write!(f, "{}KiB", s >> 10)
                } else {
                    write!(f, "{s}B")
                }
            }
            Value::List(items) => {
                f.write_str("[")?;
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{v}")?;
                }
                f.write_str("]")
            }
            Value::Map(entries) => {
                f.write_str("{")?;
                for (i, (k, v)) in entries.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, " {k} = {v}")?;
                }
                f.write_str(" }")
            }
            Value::Regex(r) => write!(f, "/{r}/"),
        }
    }
}

/// The type a parameter wants.
#[derive(Clone, Debug, PartialEq)]
pub enum ParamKind {
    /// Any string.
    Str,
    /// One of a fixed set of strings.
    OneOf(&'static [&'static str]),
    /// An integer.
    Int,
    /// A float (an integer is accepted).
    Float,
    /// A boolean.
    Bool,
    /// A duration (an integer is read as seconds).
    Duration,
    /// A byte size (an integer is read as bytes).
    Size,
    /// A list whose items all have the given kind.
    List(Box<ParamKind>),
    /// A map of any values.
    Map,
    /// A regular expression (a string is accepted too).
    Regex,
    /// Anything.
    Any,
}

impl fmt::Display for ParamKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamKind::Str => f.write_str("string"),
            ParamKind::OneOf(options) => {
                f.write_str("one of ")?;
                for (i, o) in options.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{o:?}")?;
                }
                Ok(())
            }
            ParamKind::Int => f.write_str("integer"),
            ParamKind::Float => f.write_str("float"),
            ParamKind::Bool => f.write_str("boolean"),
            ParamKind::Duration => f.write_str("duration (e.g. 250ms, 5s, 2h)"),
            ParamKind::Size => f.write_str("size (e.g. 512KiB, 8MiB)"),
            ParamKind::List(item) => write!(f, "list of {item}"),
            ParamKind::Map => f.write_str("map"),
            ParamKind::Regex => f.write_str("regex (/.../)"),
            ParamKind::Any => f.write_str("any value"),
        }
    }
}

impl ParamKind {
    /// Converts `value` to this kind, or says why it cannot be.
    pub fn coerce(&self, value: Value) -> Result<Value, String> {
        let wrong = |v: &Value| format!("expected {self}, found {} {v}", v.type_name());
        Ok(match (self, value) {
            (ParamKind::Any, v) => v,
            (ParamKind::Str, Value::Str(s)) => Value::Str(s),
            (ParamKind::OneOf(options), Value::Str(s)) => {
                if options.contains(&s.as_str()) {
                    Value::Str(s)
                } else {
                    let hint = crate::suggest::closest(&s, options.iter().copied())
                        .map(|c| format!("; did you mean {c:?}?"))
                        .unwrap_or_default();
                    return Err(format!("expected {self}, found {s:?}{hint}"));
                }
            }
            (ParamKind::Int, Value::Int(i)) => Value::Int(i),
            (ParamKind::Float, Value::Float(x)) => Value::Float(x),
            (ParamKind::Float, Value::Int(i)) => Value::Float(i as f64),
            (ParamKind::Bool, Value::Bool(b)) => Value::Bool(b),
            (ParamKind::Duration, Value::Duration(d)) => Value::Duration(d),
            (ParamKind::Duration, Value::Int(i)) if i >= 0 => {
                Value::Duration(Duration::from_secs(i as u64))
            }
            (ParamKind::Size, Value::Size(s)) => Value::Size(s),
            (ParamKind::Size, Value::Int(i)) if i >= 0 => Value::Size(i as u64),
            (ParamKind::List(item), Value::List(items)) => Value::List(
                items
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| item.coerce(v).map_err(|e| format!("item {}: {e}", i + 1)))
                    .collect::<Result<_, _>>()?,
            ),
            (ParamKind::Map, Value::Map(m)) => Value::Map(m),
            (ParamKind::Regex, Value::Regex(r) | Value::Str(r)) => Value::Regex(r),
            (_, v) => return Err(wrong(&v)),
        })
    }
}

/// One documented parameter of a plugin.
#[derive(Clone, Debug)]
pub struct ParamSpec {
    /// The name written in the routes file.
    pub name: &'static str,
    /// The type it wants.
    pub kind: ParamKind,
    /// The value used when it is not given; `None` with `required == false`
    /// means "unset" (the plugin decides).
    pub default: Option<Value>,
    /// Whether the routes file must give it.
    pub required: bool,
    /// What it does, for `ulog check` and the docs.
    pub description: &'static str,
}

impl ParamSpec {
    /// A parameter the routes file must set.
    pub fn required(name: &'static str, kind: ParamKind, description: &'static str) -> Self {
        Self {
            name,
            kind,
            default: None,
            required: true,
            description,
        }
    }

    /// A parameter with a default value.
    pub fn with_default(
        name: &'static str,
        kind: ParamKind,
        default: impl Into<Value>,
        description: &'static str,
    ) -> Self {
        Self {
            name,
            kind,
            default: Some(default.into()),
            required: false,
            description,
        }
    }

    /// A parameter that may be left unset.
    pub fn optional(name: &'static str, kind: ParamKind, description: &'static str) -> Self {
        Self {
            name,
            kind,
            default: None,
            required: false,
            description,
        }
    }
}

/// Which of the three plugin roles a plugin plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PluginKind {
    /// Produces events.
    Input,
    /// Transforms events between inputs and outputs.
    Filter,
    /// Delivers events somewhere.
    Output,
}

impl fmt::Display for PluginKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PluginKind::Input => "input",
            PluginKind::Filter => "filter",
            PluginKind::Output => "output",
        })
    }
}

/// A plugin's documentation and parameter schema.
#[derive(Clone, Debug)]
pub struct PluginSpec {
    /// The type name used in routes files (`http`, `file`, ...).
    pub name: &'static str,
    /// Input, filter or output.
    pub kind: PluginKind,
    /// One paragraph on what it is for.
    pub description: &'static str,
    /// Every parameter it accepts.
    pub params: Vec<ParamSpec>,
}

impl PluginSpec {
    /// A spec with no parameters yet.
    pub fn new(kind: PluginKind, name: &'static str, description: &'static str) -> Self {
        Self {
            name,
            kind,
            description,
            params: Vec::new(),
        }
    }

    /// Adds a parameter.
    pub fn param(mut self, param: ParamSpec) -> Self {
        self.params.push(param);
        self
    }

    /// The parameter named `name`.
    pub fn get(&self, name: &str) -> Option<&ParamSpec> {
        self.params.iter().find(|p| p.name == name)
    }

    /// Checks given parameters against this spec, fills in defaults, and
    /// reports every problem (not just the first).
    pub fn validate(&self, given: &[(String, Value)]) -> Result<Params, Vec<ParamError>> {
        let mut values = BTreeMap::new();
        let mut errors = Vec::new();
        for (name, value) in given {
            let Some(spec) = self.get(name) else {
                errors.push(ParamError::Unknown {
                    name: name.clone(),
                    suggestion: crate::suggest::closest(name, self.params.iter().map(|p| p.name))
                        .map(str::to_string),
                    known: self.params.iter().map(|p| p.name).collect(),
                });
                continue;
            };
            if values.contains_key(name.as_str()) {
                errors.push(ParamError::Duplicate { name: name.clone() });
                continue;
            }
            match spec.kind.coerce(value.clone()) {
                Ok(v) => {
                    values.insert(spec.name, v);
                }
                Err(message) => errors.push(ParamError::WrongType {
                    name: name.clone(),
                    message,
                }),
            }
        }
        for spec in &self.params {
            if values.contains_key(spec.name) {
                continue;
            }
            if spec.required {
                errors.push(ParamError::Missing {
                    name: spec.name,
                    kind: spec.kind.clone(),
                });
            } else if let Some(d) = &spec.default {
                values.insert(spec.name, d.clone());
            }
        }
        if errors.is_empty() {
            Ok(Params {
                plugin: self.name,
                values,
            })
        } else {
            Err(errors)
        }
    }
}

/// A problem with one parameter of one block.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ParamError {
    /// Not a parameter of this plugin.
    #[error("unknown parameter `{name}`{}", suggestion.as_ref().map(|s| format!("; did you mean `{s}`?")).unwrap_or_default())]
    Unknown {
        /// What was written.
        name: String,
        /// The nearest known name, if one is close.
        suggestion: Option<String>,
        /// Every known parameter.
        known: Vec<&'static str>,
    },
    /// Given twice.
    #[error("parameter `{name}` is given twice")]
    Duplicate {
        /// The parameter.
        name: String,
    },
    /// A value of the wrong type.
    #[error("parameter `{name}`: {message}")]
    WrongType {
        /// The parameter.
        name: String,
        /// Which type was wanted and what was found.
        message: String,
    },
    /// A required parameter is missing.
    #[error("missing required parameter `{name}` ({kind})")]
    Missing {
        /// The parameter.
        name: &'static str,
        /// Its type.
        kind: ParamKind,
    },
}

impl ParamError {
    /// The parameter this error is about.
    pub fn param(&self) -> &str {
        match self {
            ParamError::Unknown { name, .. }
            | ParamError::Duplicate { name }
            | ParamError::WrongType { name, .. } => name,
            ParamError::Missing { name, .. } => name,
        }
    }
}

/// Where inside a parameter's value a [`BuildError`] is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Within {
    /// Map keys and list indices (as text) from the value down to a string.
    pub path: Vec<String>,
    /// Byte offset in that string.
    pub offset: usize,
    /// Bytes at fault from `offset`.
    pub len: usize,
}

/// A plugin could not be built from its parameters.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{}{message}", param.as_ref().map(|p| format!("parameter `{p}`: ")).unwrap_or_default())]
pub struct BuildError {
    /// The parameter at fault, when one is.
    pub param: Option<String>,
    /// What is wrong.
    pub message: String,
    /// Where inside the parameter's value, when known: map keys and list
    /// indices down to a string, and a byte offset in it. Lets a configuration
    /// tool point at the character at fault, e.g. in an embedded expression.
    pub within: Option<Within>,
}

impl BuildError {
    /// An error about the parameter `param`.
    pub fn param(param: &str, message: impl Into<String>) -> Self {
        Self {
            param: Some(param.to_string()),
            message: message.into(),
            within: None,
        }
    }

    /// An error about the block as a whole.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            param: None,
            message: message.into(),
            within: None,
        }
    }

    /// Points the error at bytes `offset..offset + len` of the string
    /// reached from the parameter's value by `path` (map keys, list indices
    /// as text; empty for the value itself).
    pub fn at(mut self, path: Vec<String>, offset: usize, len: usize) -> Self {
        self.within = Some(Within { path, offset, len });
        self
    }

    /// Which part of the block the error is about.
    pub fn focus(&self) -> crate::spec::Focus {
        use crate::spec::Focus;
        match (&self.param, &self.within) {
            (None, _) => Focus::Block,
            (Some(p), None) => Focus::Param(p.clone()),
            (Some(p), Some(w)) => Focus::Value {
                param: p.clone(),
                path: w.path.clone(),
                offset: w.offset,
                len: w.len,
            },
        }
    }
}

/// Validated parameters with defaults filled in, handed to a plugin factory.
///
/// Getters return a [`BuildError`] naming the parameter, so a factory can use
/// `?` and the error still points at the right line of the routes file.
#[derive(Clone, Debug, Default)]
pub struct Params {
    plugin: &'static str,
    values: BTreeMap<&'static str, Value>,
}

impl Params {
    /// The raw value of `name`, if set (or defaulted).
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.values.get(name)
    }

    fn missing(&self, name: &str) -> BuildError {
        BuildError::param(
            name,
            format!("`{}` needs a value for `{name}`", self.plugin),
        )
    }

    fn wrong(name: &str, want: &str, got: &Value) -> BuildError {
        BuildError::param(name, format!("expected {want}, found {}", got.type_name()))
    }

    /// A string parameter.
    pub fn str(&self, name: &str) -> Result<&str, BuildError> {
        self.opt_str(name)?.ok_or_else(|| self.missing(name))
    }

    /// A string parameter that may be unset.
    pub fn opt_str(&self, name: &str) -> Result<Option<&str>, BuildError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Str(s) | Value::Regex(s)) => Ok(Some(s)),
            Some(v) => Err(Self::wrong(name, "string", v)),
        }
    }

    /// An integer parameter.
    pub fn int(&self, name: &str) -> Result<i64, BuildError> {
        self.opt_int(name)?.ok_or_else(|| self.missing(name))
    }

    /// An integer parameter that may be unset.
    pub fn opt_int(&self, name: &str) -> Result<Option<i64>, BuildError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Int(i)) => Ok(Some(*i)),
            Some(v) => Err(Self::wrong(name, "integer", v)),
        }
    }

    /// A non-negative integer parameter as usize.
    pub fn usize(&self, name: &str) -> Result<usize, BuildError> {
        let i = self.int(name)?;
        usize::try_from(i)
            .map_err(|_| BuildError::param(name, format!("must not be negative, got {i}")))
    }

    /// A float parameter.
    pub fn float(&self, name: &str) -> Result<f64, BuildError> {
        match self.get(name) {
            None => Err(self.missing(name)),
            Some(Value::Float(x)) => Ok(*x),
            Some(Value::Int(i)) => Ok(*i as f64),
            Some(v) => Err(Self::wrong(name, "float", v)),
        }
    }

    /// A boolean parameter.
    pub fn bool(&self, name: &str) -> Result<bool, BuildError> {
        match self.get(name) {
            None => Err(self.missing(name)),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(Self::wrong(name, "boolean", v)),
        }
    }

    /// A duration parameter.
    pub fn duration(&self, name: &str) -> Result<Duration, BuildError> {
        self.opt_duration(name)?.ok_or_else(|| self.missing(name))
    }

    /// A duration parameter that may be unset.
    pub fn opt_duration(&self, name: &str) -> Result<Option<Duration>, BuildError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Duration(d)) => Ok(Some(*d)),
            Some(v) => Err(Self::wrong(name, "duration", v)),
        }
    }

    /// A size parameter, in bytes.
    pub fn size(&self, name: &str) -> Result<u64, BuildError> {
        match self.get(name) {
            None => Err(self.missing(name)),
            Some(Value::Size(s)) => Ok(*s),
            Some(v) => Err(Self::wrong(name, "size", v)),
        }
    }

    /// A list parameter (empty when unset).
    pub fn list(&self, name: &str) -> Result<&[Value], BuildError> {
        match self.get(name) {
            None => Ok(&[]),
            Some(Value::List(items)) => Ok(items),
            Some(v) => Err(Self::wrong(name, "list", v)),
        }
    }

    /// A list of strings (empty when unset).
    pub fn str_list(&self, name: &str) -> Result<Vec<String>, BuildError> {
        self.list(name)?
            .iter()
            .map(|v| match v {
                Value::Str(s) => Ok(s.clone()),
                other => Err(Self::wrong(name, "list of strings", other)),
            })
            .collect()
    }

    /// A map parameter (empty when unset).
    pub fn map(&self, name: &str) -> Result<&[(String, Value)], BuildError> {
        match self.get(name) {
            None => Ok(&[]),
            Some(Value::Map(entries)) => Ok(entries),
            Some(v) => Err(Self::wrong(name, "map", v)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> PluginSpec {
        PluginSpec::new(PluginKind::Output, "file", "test")
            .param(ParamSpec::required("path", ParamKind::Str, "where"))
            .param(ParamSpec::with_default(
                "format",
                ParamKind::OneOf(&["json", "msgpack"]),
                "json",
                "how",
            ))
            .param(ParamSpec::with_default(
                "flush_interval",
                ParamKind::Duration,
                Duration::from_secs(1),
                "when",
            ))
    }

    #[test]
    fn defaults_fill_in_and_ints_coerce() {
        let p = spec()
            .validate(&[
                ("path".into(), "x".into()),
                ("flush_interval".into(), Value::Int(3)),
            ])
            .unwrap();
        assert_eq!(p.str("path").unwrap(), "x");
        assert_eq!(p.str("format").unwrap(), "json");
        assert_eq!(
            p.duration("flush_interval").unwrap(),
            Duration::from_secs(3)
        );
    }

    #[test]
    fn every_problem_is_reported() {
        let errs = spec()
            .validate(&[
                ("pth".into(), "x".into()),
                ("format".into(), "jsn".into()),
                ("flush_interval".into(), Value::Bool(true)),
            ])
            .unwrap_err();
        assert_eq!(errs.len(), 4, "{errs:?}");
        assert!(errs[0].to_string().contains("did you mean `path`"));
        assert!(errs[1].to_string().contains("did you mean \"json\""));
        assert!(errs[2].to_string().contains("expected duration"));
        assert!(errs[3]
            .to_string()
            .contains("missing required parameter `path`"));
    }
}
