//! `filter grep`: keep or drop events by field regexes and expressions.
//!
//! fluentd's grep, with its `<regexp>`, `<exclude>`, `<and>` and `<or>`
//! sections as four maps of field = regex, plus two expression conditions:
//!
//! | parameter     | an event is kept only if               | fluentd                    |
//! |---------------|----------------------------------------|----------------------------|
//! | `regexp`      | every field matches its regex          | several `<regexp>`         |
//! | `regexp_any`  | at least one field matches             | `<or>` of `<regexp>`       |
//! | `exclude`     | no field matches its regex             | several `<exclude>`        |
//! | `exclude_all` | not every field matches                | `<and>` of `<exclude>`     |
//! | `if`          | the expression is true                 | —                          |
//! | `unless`      | the expression is false                | —                          |
//!
//! Every condition given must hold (they are and-ed). A field is a top-level
//! name (`message`, or `"a.b"` for a name with a dot in it) or, starting
//! with `$`, an expression path (`$.battery.soc`, `$.cells[0]`). A missing
//! or null field matches no regex; numbers and booleans are matched as their
//! JSON text, strings as they are, arrays and objects as JSON text.
//!
//! Fields are read with the expression language, so a record that is still
//! raw JSON text is not parsed into a map to be tested. An expression that
//! fails on one event (a string where a number was expected) rejects that
//! event to the `errors` label with the reason, unless `on_error` says
//! otherwise.

use std::sync::Arc;

use regex::Regex;
use ulog_engine::{
    async_trait, Batch, BuildContext, BuildError, Filter, ParamKind, ParamSpec, Params,
    PluginError, PluginKind, PluginSpec, Registry, Rejected, Tag, Value,
};
use ulog_expr::{Context, Expr};

use crate::expression;

/// The plugin's documentation and parameters.
pub fn spec() -> PluginSpec {
    PluginSpec::new(
        PluginKind::Filter,
        "grep",
        "Keeps or drops events by field regexes (fluentd's grep: regexp, exclude and their \
         and/or forms) and by expressions (`if`, `unless`). Every condition given must hold.",
    )
    .param(ParamSpec::with_default(
        "regexp",
        ParamKind::Map,
        Value::Map(Vec::new()),
        "field = /regex/: keeps an event only if every field matches (several fluentd \
         <regexp>). A field is a top-level name or a `$` path (`$.battery.soc`).",
    ))
    .param(ParamSpec::with_default(
        "regexp_any",
        ParamKind::Map,
        Value::Map(Vec::new()),
        "field = /regex/: keeps an event only if at least one field matches (fluentd <or> of \
         <regexp>).",
    ))
    .param(ParamSpec::with_default(
        "exclude",
        ParamKind::Map,
        Value::Map(Vec::new()),
        "field = /regex/: drops an event if any field matches (several fluentd <exclude>).",
    ))
    .param(ParamSpec::with_default(
        "exclude_all",
        ParamKind::Map,
        Value::Map(Vec::new()),
        "field = /regex/: drops an event only if every field matches (fluentd <and> of \
         <exclude>).",
    ))
    .param(ParamSpec::optional(
        "if",
        ParamKind::Str,
        "An expression (see docs/expressions.md), usually written between backticks: keeps \
         an event only when it is true.",
    ))
    .param(ParamSpec::optional(
        "unless",
        ParamKind::Str,
        "An expression: drops an event when it is true.",
    ))
    .param(ParamSpec::with_default(
        "on_error",
        ParamKind::Str,
        Value::Str("reject".into()),
        "What to do with an event on which an expression fails (wrong type, bad number): \
         `reject` (to the errors label, with the reason), `keep` or `drop`.",
    ))
}

/// Registers `filter grep`.
pub fn register(registry: &mut Registry) {
    registry.add_filter(spec(), |params: &Params, _: &BuildContext| {
        Ok(Arc::new(GrepFilter::from_params(params)?) as Arc<dyn Filter>)
    });
}

/// One `field = /regex/` entry, compiled.
#[derive(Debug)]
struct FieldMatch {
    field: String,
    read: Expr,
    regex: Regex,
}

impl FieldMatch {
    fn matches(&self, cx: &Context<'_>) -> Result<bool, String> {
        let value = self
            .read
            .eval(cx)
            .map_err(|e| format!("field `{}`: {}", self.field, e.message))?;
        Ok(expression::match_text(value).is_some_and(|text| self.regex.is_match(&text)))
    }
}

/// What happens to an event an expression fails on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OnError {
    Reject,
    Keep,
    Drop,
}

/// The configured conditions.
#[derive(Debug)]
pub struct GrepFilter {
    all: Vec<FieldMatch>,
    any: Vec<FieldMatch>,
    none: Vec<FieldMatch>,
    not_all: Vec<FieldMatch>,
    keep_if: Option<Expr>,
    drop_if: Option<Expr>,
    on_error: OnError,
}

fn field_matches(params: &Params, name: &str) -> Result<Vec<FieldMatch>, BuildError> {
    params
        .map(name)?
        .iter()
        .map(|(field, value)| {
            let pattern = match value {
                Value::Regex(r) | Value::Str(r) => r,
                other => {
                    return Err(BuildError::param(
                        name,
                        format!("`{field}` needs a regex such as /^error/, found {other}"),
                    )
                    .at(vec![field.clone()], 0, 0))
                }
            };
            let regex = Regex::new(pattern).map_err(|e| {
                BuildError::param(name, format!("`{field}`: invalid regex: {e}")).at(
                    vec![field.clone()],
                    0,
                    0,
                )
            })?;
            let read = expression::field_reader(field).map_err(|e| {
                BuildError::param(
                    name,
                    format!("field `{field}` is not a field path: {}", e.full_message()),
                )
            })?;
            Ok(FieldMatch {
                field: field.clone(),
                read,
                regex,
            })
        })
        .collect()
}

impl GrepFilter {
    /// Builds the filter from its validated parameters.
    ///
    /// # Errors
    /// A regex or expression that does not compile (located in the routes
    /// file), a value that is not a regex, or an unknown `on_error`.
    pub fn from_params(params: &Params) -> Result<Self, BuildError> {
        let condition = |name: &str| -> Result<Option<Expr>, BuildError> {
            params
                .opt_str(name)?
                .map(|src| expression::compile(name, &[], src, true))
                .transpose()
        };
        let on_error = match params.str("on_error")? {
            "reject" => OnError::Reject,
            "keep" => OnError::Keep,
            "drop" => OnError::Drop,
            other => {
                return Err(BuildError::param(
                    "on_error",
                    format!("expected `reject`, `keep` or `drop`, found `{other}`"),
                ))
            }
        };
        Ok(Self {
            all: field_matches(params, "regexp")?,
            any: field_matches(params, "regexp_any")?,
            none: field_matches(params, "exclude")?,
            not_all: field_matches(params, "exclude_all")?,
            keep_if: condition("if")?,
            drop_if: condition("unless")?,
            on_error,
        })
    }

    /// Whether one event passes every condition; `Err` with the reason when
    /// an expression failed on it.
    fn keeps(&self, cx: &Context<'_>) -> Result<bool, String> {
        for m in &self.all {
            if !m.matches(cx)? {
                return Ok(false);
            }
        }
        if !self.any.is_empty() {
            let mut found = false;
            for m in &self.any {
                if m.matches(cx)? {
                    found = true;
                    break;
                }
            }
            if !found {
                return Ok(false);
            }
        }
        for m in &self.none {
            if m.matches(cx)? {
                return Ok(false);
            }
        }
        if !self.not_all.is_empty() {
            let mut every = true;
            for m in &self.not_all {
                if !m.matches(cx)? {
                    every = false;
                    break;
                }
            }
            if every {
                return Ok(false);
            }
        }
        if let Some(e) = &self.keep_if {
            if !e
                .eval_bool(cx)
                .map_err(|e| format!("`if`: {}", e.message))?
            {
                return Ok(false);
            }
        }
        if let Some(e) = &self.drop_if {
            if e.eval_bool(cx)
                .map_err(|e| format!("`unless`: {}", e.message))?
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn context<'a>(tag: &'a Tag, event: &'a ulog_engine::Event) -> Context<'a> {
        Context {
            record: &event.record,
            tag,
            time: event.time,
        }
    }
}

#[async_trait]
impl Filter for GrepFilter {
    /// Each event is tested on its own.
    fn order_independent(&self) -> bool {
        true
    }

    async fn filter(
        &self,
        batch: &mut Batch,
        rejects: &mut Vec<Rejected>,
    ) -> Result<(), PluginError> {
        let tag = &batch.tag;
        let mut kept = Vec::with_capacity(batch.events.len());
        for event in batch.events.drain(..) {
            match self.keeps(&Self::context(tag, &event)) {
                Ok(true) => kept.push(event),
                Ok(false) => {}
                Err(reason) => match self.on_error {
                    OnError::Keep => kept.push(event),
                    OnError::Drop => {}
                    OnError::Reject => rejects.push(Rejected { event, reason }),
                },
            }
        }
        batch.events = kept;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use ulog_engine::{Event, EventTime, Record};

    fn build(pairs: Vec<(&str, Value)>) -> Result<GrepFilter, BuildError> {
        let given: Vec<(String, Value)> =
            pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        let params = spec().validate(&given).expect("valid params");
        GrepFilter::from_params(&params)
    }

    fn map(entries: &[(&str, &str)]) -> Value {
        Value::Map(
            entries
                .iter()
                .map(|(k, v)| (k.to_string(), Value::Regex(v.to_string())))
                .collect(),
        )
    }

    /// Runs the filter over raw JSON lines; returns the kept lines' `id`s and
    /// the rejected ones' `(id, reason)`.
    fn run(filter: &GrepFilter, lines: &[&str]) -> (Vec<i64>, Vec<(i64, String)>) {
        let events = lines
            .iter()
            .map(|l| {
                let record = Record::from_json_bytes(Bytes::from(l.to_string())).unwrap();
                Event::new(EventTime::from_secs_nanos(1, 0), record)
            })
            .collect();
        let mut batch = Batch::new(Tag::parse("home.h1.owl").unwrap(), events);
        let mut rejects = Vec::new();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(filter.filter(&mut batch, &mut rejects))
            .unwrap();
        let id = |e: &Event| e.record.to_map()["id"].as_i64().unwrap();
        (
            batch.events.iter().map(id).collect(),
            rejects
                .iter()
                .map(|r| (id(&r.event), r.reason.clone()))
                .collect(),
        )
    }

    const LINES: &[&str] = &[
        r#"{"id":1,"level":"error","msg":"disk full","code":500}"#,
        r#"{"id":2,"level":"info","msg":"ok","code":200}"#,
        r#"{"id":3,"level":"error","msg":"debug: retry","code":503}"#,
        r#"{"id":4,"msg":"no level"}"#,
        r#"{"id":5,"level":"warn","msg":"slow","code":"n/a"}"#,
    ];

    #[test]
    fn regexp_keeps_only_events_where_every_field_matches() {
        let f = build(vec![(
            "regexp",
            map(&[("level", "^error$"), ("code", "^5")]),
        )])
        .unwrap();
        // Numbers are matched as their JSON text; a missing field matches nothing.
        assert_eq!(run(&f, LINES).0, vec![1, 3]);
    }

    #[test]
    fn regexp_any_keeps_events_where_one_field_matches() {
        let f = build(vec![(
            "regexp_any",
            map(&[("level", "^warn$"), ("msg", "full")]),
        )])
        .unwrap();
        assert_eq!(run(&f, LINES).0, vec![1, 5]);
    }

    #[test]
    fn exclude_drops_on_any_match_and_exclude_all_only_on_every_match() {
        let f = build(vec![(
            "exclude",
            map(&[("msg", "^debug"), ("level", "info")]),
        )])
        .unwrap();
        assert_eq!(run(&f, LINES).0, vec![1, 4, 5]);
        let f = build(vec![(
            "exclude_all",
            map(&[("level", "error"), ("msg", "debug")]),
        )])
        .unwrap();
        assert_eq!(run(&f, LINES).0, vec![1, 2, 4, 5]);
    }

    #[test]
    fn dollar_paths_reach_nested_fields_and_quoted_names_are_literal() {
        let f = build(vec![("regexp", map(&[("$.battery.soc", "^4")]))]).unwrap();
        let lines = [
            r#"{"id":1,"battery":{"soc":42}}"#,
            r#"{"id":2,"battery":{"soc":90}}"#,
            r#"{"id":3,"battery.soc":42}"#,
        ];
        assert_eq!(run(&f, &lines).0, vec![1]);
        let f = build(vec![("regexp", map(&[("battery.soc", "^4")]))]).unwrap();
        assert_eq!(run(&f, &lines).0, vec![3]);
    }

    #[test]
    fn if_and_unless_combine_with_the_regexes() {
        let f = build(vec![
            ("regexp", map(&[("level", ".")])),
            ("if", Value::Str("exists($.code)".into())),
            ("unless", Value::Str(r#"contains($.msg, "debug")"#.into())),
        ])
        .unwrap();
        assert_eq!(run(&f, LINES).0, vec![1, 2, 5]);
    }

    #[test]
    fn an_expression_failing_on_one_event_rejects_it_with_the_reason() {
        let f = build(vec![("if", Value::Str("$.code >= 500".into()))]).unwrap();
        let (kept, rejected) = run(&f, LINES);
        assert_eq!(kept, vec![1, 3]);
        let ids: Vec<i64> = rejected.iter().map(|r| r.0).collect();
        // 4 has no code (null), 5 has a string.
        assert_eq!(ids, vec![4, 5]);
        assert!(
            rejected.iter().all(|r| r.1.starts_with("`if`: ")),
            "{rejected:?}"
        );

        let keep = build(vec![
            ("if", Value::Str("$.code >= 500".into())),
            ("on_error", Value::Str("keep".into())),
        ])
        .unwrap();
        assert_eq!(run(&keep, LINES), (vec![1, 3, 4, 5], vec![]));
        let drop = build(vec![
            ("if", Value::Str("$.code >= 500".into())),
            ("on_error", Value::Str("drop".into())),
        ])
        .unwrap();
        assert_eq!(run(&drop, LINES), (vec![1, 3], vec![]));
    }

    #[test]
    fn the_tag_is_visible_to_expressions() {
        let f = build(vec![("if", Value::Str(r#"tag[1] == "h1""#.into()))]).unwrap();
        assert_eq!(run(&f, LINES).0.len(), LINES.len());
        let f = build(vec![("if", Value::Str(r#"tag[1] == "h2""#.into()))]).unwrap();
        assert!(run(&f, LINES).0.is_empty());
    }

    #[test]
    fn mistakes_are_build_errors_located_in_the_value() {
        let e = build(vec![("if", Value::Str("uper($.a) == 1".into()))]).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("if"));
        assert!(e.message.contains("did you mean `upper`"), "{e}");
        assert_eq!(e.within.as_ref().map(|w| (w.offset, w.len)), Some((0, 4)));

        let e = build(vec![("if", Value::Str("$.a + 1".into()))]).unwrap_err();
        assert!(e.message.contains("bool"), "{e}");

        let e = build(vec![("regexp", map(&[("msg", "(unclosed")]))]).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("regexp"));
        assert!(e.message.contains("invalid regex"), "{e}");
        assert_eq!(e.within.map(|w| w.path), Some(vec!["msg".to_string()]));

        let e = build(vec![(
            "exclude",
            Value::Map(vec![("msg".into(), Value::Int(3))]),
        )])
        .unwrap_err();
        assert!(e.message.contains("needs a regex"), "{e}");

        let e = build(vec![("on_error", Value::Str("ignore".into()))]).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("on_error"));
    }
}
