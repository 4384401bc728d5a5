//! `filter record`: rename, set, remove and keep fields.
//!
//! fluentd's record_transformer for the common cases. Values given to `set`
//! may be templates that read the tag, the time and other fields. The
//! placeholders use single braces — `{tag}`, `{tag_parts[0]}`, `{time}`,
//! `{record.user.name}` (or `{user.name}`) — because the routes file already
//! replaces `${VAR}` with environment variables when it is loaded. `{{` and
//! `}}` stand for literal braces. Templates are compiled once, when the filter
//! is built.
//!
//! Steps run in a fixed order: `rename`, then `set` (every value is computed
//! from the record as it is after `rename`, then all are stored), then
//! `compute` (expressions, read against the record as `set` left it, then all
//! stored), then `remove`, then `keep`.

use std::fmt::Write as _;
use std::sync::Arc;

use serde_json::{Map, Value as Json};
use ulog_engine::{
    async_trait, Batch, BuildContext, BuildError, Event, EventTime, Filter, ParamKind, ParamSpec,
    Params, PluginError, PluginKind, PluginSpec, Registry, Rejected, Tag, Value,
};

/// The plugin's documentation and parameters.
pub fn spec() -> PluginSpec {
    PluginSpec::new(
        PluginKind::Filter,
        "record",
        "Renames, sets, removes or keeps fields of each record (fluentd's record_transformer). \
         `set` values may use {tag}, {tag_parts[N]}, {time} and {record.field.sub} \
         placeholders; steps run in the order rename, set, remove, keep.",
    )
    .param(ParamSpec::with_default(
        "rename",
        ParamKind::Map,
        Value::Map(Vec::new()),
        "Fields to rename, old name = new name. A missing field is left alone; an existing \
         field with the new name is replaced.",
    ))
    .param(ParamSpec::with_default(
        "set",
        ParamKind::Map,
        Value::Map(Vec::new()),
        "Fields to add or replace, name = value. String values are templates: {tag}, \
         {tag_parts[N]} (N from 0; negative counts from the end), {time} (float seconds), \
         {record.a.b} or {a.b} (a field, nested with dots); {{ and }} are literal braces. A \
         value that is one placeholder alone keeps the field's JSON type.",
    ))
    .param(ParamSpec::with_default(
        "compute",
        ParamKind::Map,
        Value::Map(Vec::new()),
        "Fields computed by expressions (docs/expressions.md), name = `expression`, after \
         `set` and reading the record as `set` left it. An event on which one fails (a \
         missing number, a wrong type) goes to the errors label unchanged, with the reason; \
         a null result stores null.",
    ))
    .param(ParamSpec::with_default(
        "remove",
        ParamKind::List(Box::new(ParamKind::Str)),
        Value::List(Vec::new()),
        "Fields to delete.",
    ))
    .param(ParamSpec::optional(
        "keep",
        ParamKind::List(Box::new(ParamKind::Str)),
        "When set, every field not in this list is deleted (after the other steps).",
    ))
}

/// Registers `filter record`.
pub fn register(registry: &mut Registry) {
    registry.add_filter(spec(), |params: &Params, _: &BuildContext| {
        Ok(std::sync::Arc::new(RecordFilter::from_params(params)?) as std::sync::Arc<dyn Filter>)
    });
}

/// One piece of a compiled template.
#[derive(Clone, Debug, PartialEq)]
enum Part {
    Lit(String),
    Tag,
    TagIndex(isize),
    Time,
    Field(Vec<String>),
}

/// A compiled `set` value template.
#[derive(Clone, Debug, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
}

/// Why a template could not be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `{` without its `}`.
    #[error("unclosed `{{` at byte {0}; write `{{{{` for a literal brace")]
    Unclosed(usize),
    /// `}` that closes nothing.
    #[error("unmatched `}}` at byte {0}; write `}}}}` for a literal brace")]
    Unmatched(usize),
    /// A placeholder that is not one of the known forms.
    #[error("unknown placeholder `{{{0}}}`; use {{tag}}, {{tag_parts[N]}}, {{time}} or {{record.field}}")]
    Unknown(String),
}

impl Template {
    /// Compiles `text`.
    ///
    /// # Errors
    /// Unbalanced braces or an unknown placeholder.
    pub fn compile(text: &str) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let bytes = text.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'{' if bytes.get(i + 1) == Some(&b'{') => {
                    lit.push('{');
                    i += 2;
                }
                b'}' if bytes.get(i + 1) == Some(&b'}') => {
                    lit.push('}');
                    i += 2;
                }
                b'}' => return Err(TemplateError::Unmatched(i)),
                b'{' => {
                    let close = text[i + 1..].find('}').ok_or(TemplateError::Unclosed(i))? + i + 1;
                    if !lit.is_empty() {
                        parts.push(Part::Lit(std::mem::take(&mut lit)));
                    }
                    parts.push(placeholder(text[i + 1..close].trim())?);
                    i = close + 1;
                }
                _ => {
                    // Copy up to the next brace in one go (keeps UTF-8 intact).
                    let next = text[i..].find(['{', '}']).map_or(text.len(), |n| n + i);
                    lit.push_str(&text[i..next]);
                    i = next;
                }
            }
        }
        if !lit.is_empty() || parts.is_empty() {
            parts.push(Part::Lit(lit));
        }
        Ok(Self { parts })
    }

    /// The value for one event. A template that is one placeholder alone
    /// keeps the JSON type of what it refers to; otherwise the pieces are
    /// joined into a string (strings as they are, other values as JSON text,
    /// missing fields and tag parts as nothing).
    pub fn render(
        &self,
        tag: &Tag,
        tag_parts: &[&str],
        time: EventTime,
        record: &Map<String, Json>,
    ) -> Json {
        let value = |part: &Part| -> Option<Json> {
            match part {
                Part::Lit(s) => Some(Json::String(s.clone())),
                Part::Tag => Some(Json::String(tag.as_str().to_string())),
                Part::TagIndex(i) => {
                    let idx = if *i < 0 {
                        tag_parts.len().checked_sub(i.unsigned_abs())?
                    } else {
                        *i as usize
                    };
                    tag_parts.get(idx).map(|s| Json::String((*s).to_string()))
                }
                Part::Time => {
                    serde_json::Number::from_f64(crate::encode::secs_f64(time)).map(Json::Number)
                }
                Part::Field(path) => lookup(record, path).cloned(),
            }
        };
        if let [only] = self.parts.as_slice() {
            return value(only).unwrap_or(Json::Null);
        }
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Lit(s) => out.push_str(s),
                Part::Tag => out.push_str(tag),
                other => match value(other) {
                    Some(Json::String(s)) => out.push_str(&s),
                    Some(v) => {
                        let _ = write!(out, "{v}");
                    }
                    None => {}
                },
            }
        }
        Json::String(out)
    }

    /// The text of a template without placeholders.
    fn as_literal(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [Part::Lit(s)] => Some(s),
            _ => None,
        }
    }
}

fn placeholder(inner: &str) -> Result<Part, TemplateError> {
    let unknown = || TemplateError::Unknown(inner.to_string());
    match inner {
        "tag" => return Ok(Part::Tag),
        "time" => return Ok(Part::Time),
        "" | "record" => return Err(unknown()),
        _ => {}
    }
    if let Some(index) = inner
        .strip_prefix("tag_parts[")
        .and_then(|s| s.strip_suffix(']'))
    {
        return index
            .trim()
            .parse()
            .map(Part::TagIndex)
            .map_err(|_| unknown());
    }
    let path = inner.strip_prefix("record.").unwrap_or(inner);
    let fields: Vec<String> = path.split('.').map(str::to_string).collect();
    if fields
        .iter()
        .any(|f| f.is_empty() || f.contains(['{', '}', '[', ']']))
    {
        return Err(unknown());
    }
    Ok(Part::Field(fields))
}

fn lookup<'a>(record: &'a Map<String, Json>, path: &[String]) -> Option<&'a Json> {
    let (first, rest) = path.split_first()?;
    rest.iter()
        .try_fold(record.get(first)?, |v, key| v.as_object()?.get(key))
}

/// A `set` entry, compiled.
#[derive(Clone, Debug)]
enum SetValue {
    Const(Json),
    Template(Template),
}

/// The configured transformation.
#[derive(Clone, Debug, Default)]
pub struct RecordFilter {
    rename: Vec<(String, String)>,
    set: Vec<(String, SetValue)>,
    compute: Vec<(String, Arc<ulog_expr::Expr>)>,
    remove: Vec<String>,
    keep: Option<Vec<String>>,
}

impl RecordFilter {
    /// Builds the filter from its validated parameters, compiling templates.
    ///
    /// # Errors
    /// A `set` template that does not compile, or a non-string `rename` target.
    pub fn from_params(params: &Params) -> Result<Self, BuildError> {
        let rename = params
            .map("rename")?
            .iter()
            .map(|(old, new)| match new {
                Value::Str(new) if !new.is_empty() => Ok((old.clone(), new.clone())),
                other => Err(BuildError::param(
                    "rename",
                    format!("`{old}` must be renamed to a non-empty string, found {other}"),
                )),
            })
            .collect::<Result<_, _>>()?;
        let set = params
            .map("set")?
            .iter()
            .map(|(field, value)| {
                let compiled = match value {
                    Value::Str(text) => {
                        let t = Template::compile(text).map_err(|e| {
                            BuildError::param("set", format!("field `{field}`: {e}"))
                        })?;
                        match t.as_literal() {
                            Some(text) => SetValue::Const(Json::String(text.to_string())),
                            None => SetValue::Template(t),
                        }
                    }
                    other => SetValue::Const(other.to_json()),
                };
                Ok((field.clone(), compiled))
            })
            .collect::<Result<_, BuildError>>()?;
        let compute = params
            .map("compute")?
            .iter()
            .map(|(field, value)| match value {
                Value::Str(source) => {
                    crate::expression::compile("compute", &[field.as_str()], source, false)
                        .map(|e| (field.clone(), Arc::new(e)))
                }
                other => Err(BuildError::param(
                    "compute",
                    format!("`{field}` needs an expression such as `$.a + 1`, found {other}"),
                )
                .at(vec![field.clone()], 0, 0)),
            })
            .collect::<Result<_, BuildError>>()?;
        let keep = params
            .get("keep")
            .map(|_| params.str_list("keep"))
            .transpose()?;
        Ok(Self {
            rename,
            set,
            compute,
            remove: params.str_list("remove")?,
            keep,
        })
    }

    fn is_noop(&self) -> bool {
        self.rename.is_empty()
            && self.set.is_empty()
            && self.compute.is_empty()
            && self.remove.is_empty()
            && self.keep.is_none()
    }

    /// Applies every step to one event.
    /// `values` is scratch space reused across the events of a batch.
    ///
    /// # Errors
    /// The reason, when a `compute` expression fails; the event is then
    /// partly transformed, so the caller keeps a copy to reject.
    fn apply(
        &self,
        tag: &Tag,
        tag_parts: &[&str],
        event: &mut Event,
        values: &mut Vec<Json>,
    ) -> Result<(), String> {
        let mut record = std::mem::take(&mut event.record);
        let result = self.apply_to(tag, tag_parts, event.time, &mut record, values);
        event.record = record;
        result
    }

    fn apply_to(
        &self,
        tag: &Tag,
        tag_parts: &[&str],
        time: EventTime,
        record: &mut ulog_engine::Record,
        values: &mut Vec<Json>,
    ) -> Result<(), String> {
        let map = record.map_mut();
        for (old, new) in &self.rename {
            if let Some(v) = map.shift_remove(old) {
                map.insert(new.clone(), v);
            }
        }
        if !self.set.is_empty() {
            values.clear();
            values.extend(self.set.iter().map(|(_, v)| match v {
                SetValue::Const(c) => c.clone(),
                SetValue::Template(t) => t.render(tag, tag_parts, time, map),
            }));
            for ((field, _), value) in self.set.iter().zip(values.drain(..)) {
                // Replacing in place spares allocating the key again.
                match map.get_mut(field) {
                    Some(slot) => *slot = value,
                    None => {
                        map.insert(field.clone(), value);
                    }
                }
            }
        }
        if !self.compute.is_empty() {
            values.clear();
            let cx = ulog_expr::Context { record, tag, time };
            for (field, expr) in &self.compute {
                let value = expr
                    .eval(&cx)
                    .map_err(|e| format!("compute `{field}`: {}", e.message))?;
                values.push(value.into_json());
            }
            let map = record.map_mut();
            for ((field, _), value) in self.compute.iter().zip(values.drain(..)) {
                map.insert(field.clone(), value);
            }
        }
        let map = record.map_mut();
        for field in &self.remove {
            map.shift_remove(field);
        }
        if let Some(keep) = &self.keep {
            map.retain(|k, _| keep.iter().any(|f| f == k));
        }
        Ok(())
    }
}

#[async_trait]
impl Filter for RecordFilter {
    /// Each event is parsed on its own, so large batches may be split across
    /// cores.
    fn order_independent(&self) -> bool {
        true
    }

    async fn filter(
        &self,
        batch: &mut Batch,
        rejects: &mut Vec<Rejected>,
    ) -> Result<(), PluginError> {
        if self.is_noop() {
            return Ok(());
        }
        let tag = batch.tag.clone();
        let tag_parts: Vec<&str> = tag.parts().collect();
        let mut values = Vec::with_capacity(self.set.len().max(self.compute.len()));
        if self.compute.is_empty() {
            for event in &mut batch.events {
                // Without expressions nothing can fail.
                let _ = self.apply(&tag, &tag_parts, event, &mut values);
            }
            return Ok(());
        }
        let mut kept = Vec::with_capacity(batch.events.len());
        for mut event in batch.events.drain(..) {
            let original = event.clone();
            match self.apply(&tag, &tag_parts, &mut event, &mut values) {
                Ok(()) => kept.push(event),
                Err(reason) => rejects.push(Rejected {
                    event: original,
                    reason,
                }),
            }
        }
        batch.events = kept;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn compiles_placeholders_and_escapes() {
        let t = Template::compile("{{x}} {tag}-{tag_parts[-1]} {record.a.b}{c}").unwrap();
        assert_eq!(
            t.parts,
            vec![
                Part::Lit("{x} ".into()),
                Part::Tag,
                Part::Lit("-".into()),
                Part::TagIndex(-1),
                Part::Lit(" ".into()),
                Part::Field(vec!["a".into(), "b".into()]),
                Part::Field(vec!["c".into()]),
            ]
        );
    }

    #[test]
    fn refuses_bad_templates() {
        assert_eq!(Template::compile("a {tag"), Err(TemplateError::Unclosed(2)));
        assert_eq!(Template::compile("a } b"), Err(TemplateError::Unmatched(2)));
        assert!(matches!(
            Template::compile("{}"),
            Err(TemplateError::Unknown(_))
        ));
        assert!(matches!(
            Template::compile("{tag_parts[x]}"),
            Err(TemplateError::Unknown(_))
        ));
        assert!(matches!(
            Template::compile("{a..b}"),
            Err(TemplateError::Unknown(_))
        ));
    }

    #[test]
    fn renders_typed_alone_and_text_embedded() {
        let tag = Tag::new_unchecked("app.web.eu");
        let parts: Vec<&str> = tag.parts().collect();
        let time = EventTime::from_secs_nanos(10, 500_000_000);
        let rec = json!({"n": 5, "u": {"name": "ann"}});
        let rec = rec.as_object().unwrap();
        let r = |t: &str| {
            Template::compile(t)
                .unwrap()
                .render(&tag, &parts, time, rec)
        };
        assert_eq!(r("{n}"), json!(5));
        assert_eq!(r("{time}"), json!(10.5));
        assert_eq!(r("{missing}"), Json::Null);
        assert_eq!(r("{tag_parts[1]}"), json!("web"));
        assert_eq!(r("{tag_parts[-3]}"), json!("app"));
        assert_eq!(r("{tag_parts[9]}"), Json::Null);
        assert_eq!(
            r("{u.name}@{tag} n={n}{missing}"),
            json!("ann@app.web.eu n=5")
        );
    }
}
