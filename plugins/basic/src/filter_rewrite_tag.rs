//! `filter rewrite_tag`: give events a new tag built from their fields, and
//! route them again from the top of the flow.
//!
//! fluentd's rewrite_tag_filter: an ordered list of rules, the first that
//! matches an event decides its new tag. A rule tests a field against a regex
//! (`key`, `pattern`, optionally `invert`) or an expression (`if`); its `tag`
//! is a template over the tag and fields (`{tag}`, `{tag_parts[N]}`,
//! `{household}`, `{a.b}`) in which `$1` to `$9` are the pattern's capture
//! groups. Events of one batch may go to many tags: they are split into one
//! batch per new tag.
//!
//! Loops (a rule whose new tag matches the same filter again, forever) are
//! stopped by the engine's reroute limit: the events go to `errors` saying
//! so. Unlike fluentd, events that no rule matches are kept under their tag
//! unless `unmatched = "drop"`: nothing disappears without being asked to.

use std::collections::HashMap;
use std::sync::Arc;

use regex::Regex;
use ulog_engine::{
    async_trait, template::Template, Batch, BuildContext, BuildError, Event, Filter, ParamKind,
    ParamSpec, Params, PluginError, PluginKind, PluginSpec, Registry, Rejected, Tag, Value,
};
use ulog_expr::{Context, Expr};

use crate::expression;

/// The plugin's documentation and parameters.
pub fn spec() -> PluginSpec {
    PluginSpec::new(
        PluginKind::Filter,
        "rewrite_tag",
        "Gives events a new tag from the first matching rule and routes them again from the \
         top of the flow (fluentd's rewrite_tag_filter). Rules test a field against a regex or \
         an expression; the tag is a template with {tag}, {tag_parts[N]}, {field} and $1-$9.",
    )
    .param(ParamSpec::required(
        "rules",
        ParamKind::List(Box::new(ParamKind::Map)),
        "Rules in order, each `{ key = \"field\", pattern = /re/, tag = \"...\" }` (add \
         `invert = true` to match when the pattern does not) or `{ if = `expr`, tag = \"...\" }`.",
    ))
    .param(ParamSpec::with_default(
        "unmatched",
        ParamKind::Str,
        Value::Str("keep".into()),
        "Events no rule matches: `keep` (under their tag) or `drop`.",
    ))
}

/// Registers `filter rewrite_tag`.
pub fn register(registry: &mut Registry) {
    registry.add_filter(spec(), |params: &Params, _: &BuildContext| {
        Ok(Arc::new(RewriteTagFilter::from_params(params)?) as Arc<dyn Filter>)
    });
}

#[derive(Debug)]
enum Test {
    Pattern {
        field: String,
        read: Expr,
        regex: Regex,
        invert: bool,
    },
    Condition(Expr),
}

#[derive(Debug)]
struct Rule {
    test: Test,
    tag: Template,
    /// Whether `tag` holds `$N` references to capture groups.
    uses_captures: bool,
}

/// The configured rules.
#[derive(Debug)]
pub struct RewriteTagFilter {
    rules: Vec<Rule>,
    drop_unmatched: bool,
}

fn rule(index: usize, entries: &[(String, Value)]) -> Result<Rule, BuildError> {
    let at = |key: &str| vec![index.to_string(), key.to_string()];
    let err = |key: &str, msg: String| {
        BuildError::param("rules", format!("rule {}: {msg}", index + 1)).at(at(key), 0, 0)
    };
    let get = |key: &str| entries.iter().find(|(k, _)| k == key).map(|(_, v)| v);
    for (k, _) in entries {
        if !matches!(k.as_str(), "key" | "pattern" | "invert" | "if" | "tag") {
            return Err(err(
                k,
                format!("unknown key `{k}`; a rule has key, pattern, invert, if and tag"),
            ));
        }
    }
    let tag_text = match get("tag") {
        Some(Value::Str(t)) => t,
        Some(other) => return Err(err("tag", format!("`tag` must be a string, found {other}"))),
        None => return Err(err("tag", "needs a `tag`".into())),
    };
    let tag = Template::parse(tag_text).map_err(|e| err("tag", format!("`tag`: {e}")))?;
    let uses_captures = (1..=9).any(|n| tag_text.contains(&format!("${n}")));
    let test = match (get("key"), get("pattern"), get("if")) {
        (Some(Value::Str(field)), Some(Value::Regex(p) | Value::Str(p)), None) => {
            let regex = Regex::new(p).map_err(|e| err("pattern", format!("invalid regex: {e}")))?;
            let read = expression::field_reader(field).map_err(|e| {
                err(
                    "key",
                    format!("`{field}` is not a field path: {}", e.full_message()),
                )
            })?;
            let invert = match get("invert") {
                None => false,
                Some(Value::Bool(b)) => *b,
                Some(other) => {
                    return Err(err(
                        "invert",
                        format!("`invert` must be true or false, found {other}"),
                    ))
                }
            };
            if invert && uses_captures {
                return Err(err(
                    "tag",
                    "an inverted pattern has no captures for $1-$9".into(),
                ));
            }
            Test::Pattern {
                field: field.clone(),
                read,
                regex,
                invert,
            }
        }
        (None, None, Some(Value::Str(source))) => {
            if uses_captures {
                return Err(err("tag", "$1-$9 need a `pattern`, not `if`".into()));
            }
            let index_text = index.to_string();
            Test::Condition(expression::compile(
                "rules",
                &[index_text.as_str(), "if"],
                source,
                true,
            )?)
        }
        _ => {
            return Err(err(
                "key",
                "a rule needs either `key` (a string) and `pattern` (a regex), or `if` (an \
                 expression)"
                    .into(),
            ))
        }
    };
    Ok(Rule {
        test,
        tag,
        uses_captures,
    })
}

impl RewriteTagFilter {
    /// Builds the filter from its validated parameters.
    ///
    /// # Errors
    /// No rules, a rule that is not a map or lacks what it needs, a regex,
    /// expression or template that does not compile, an unknown `unmatched`.
    pub fn from_params(params: &Params) -> Result<Self, BuildError> {
        let list = params.list("rules")?;
        if list.is_empty() {
            return Err(BuildError::param("rules", "needs at least one rule"));
        }
        let rules = list
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::Map(entries) => rule(i, entries),
                other => Err(BuildError::param(
                    "rules",
                    format!("rule {} must be a map, found {other}", i + 1),
                )),
            })
            .collect::<Result<_, _>>()?;
        let drop_unmatched = match params.str("unmatched")? {
            "keep" => false,
            "drop" => true,
            other => {
                return Err(BuildError::param(
                    "unmatched",
                    format!("expected `keep` or `drop`, found `{other}`"),
                ))
            }
        };
        Ok(Self {
            rules,
            drop_unmatched,
        })
    }

    /// The new tag of one event: `Ok(None)` when no rule matches.
    fn new_tag(&self, tag: &Tag, event: &Event) -> Result<Option<Tag>, String> {
        let cx = Context {
            record: &event.record,
            tag,
            time: event.time,
        };
        for (i, rule) in self.rules.iter().enumerate() {
            let captures: Vec<String> = match &rule.test {
                Test::Pattern {
                    field,
                    read,
                    regex,
                    invert,
                } => {
                    let value = read
                        .eval(&cx)
                        .map_err(|e| format!("rule {}: field `{field}`: {}", i + 1, e.message))?;
                    let text = expression::match_text(value);
                    let caps = text.as_deref().and_then(|t| regex.captures(t));
                    match (caps, invert) {
                        (Some(_), true) | (None, false) => continue,
                        (None, true) => Vec::new(),
                        (Some(c), false) => c
                            .iter()
                            .map(|m| m.map_or(String::new(), |m| m.as_str().to_string()))
                            .collect(),
                    }
                }
                Test::Condition(expr) => {
                    if !expr
                        .eval_bool(&cx)
                        .map_err(|e| format!("rule {}: `if`: {}", i + 1, e.message))?
                    {
                        continue;
                    }
                    Vec::new()
                }
            };
            // Only a template that reads fields needs the record parsed.
            let empty = serde_json::Map::new();
            let map = if rule.tag.reads_fields() {
                event.record.to_map()
            } else {
                std::borrow::Cow::Borrowed(&empty)
            };
            let mut text = rule
                .tag
                .render(tag.as_str(), &map, "tag")
                .map_err(|e| format!("rule {}: {e}", i + 1))?;
            if rule.uses_captures {
                for n in (1..=9).rev() {
                    let with = captures.get(n).map_or("", String::as_str);
                    text = text.replace(&format!("${n}"), with);
                }
            }
            return Tag::parse(&text)
                .map(Some)
                .map_err(|e| format!("rule {}: new tag `{text}` is not a valid tag: {e}", i + 1));
        }
        Ok(None)
    }
}

#[async_trait]
impl Filter for RewriteTagFilter {
    /// Each event's new tag depends on that event alone.
    fn order_independent(&self) -> bool {
        true
    }

    async fn filter(
        &self,
        batch: &mut Batch,
        rejects: &mut Vec<Rejected>,
    ) -> Result<(), PluginError> {
        // Called directly (not through the engine): keep what stays, and
        // re-tag the batch only when every event goes to one new tag.
        let extra = self.filter_split(batch, rejects).await?;
        if batch.events.is_empty() && extra.len() == 1 {
            *batch = extra.into_iter().next().expect("one batch");
        } else if !extra.is_empty() {
            return Err(PluginError::new(
                "rewrite_tag splits batches; run it through the engine (filter_split)",
            ));
        }
        Ok(())
    }

    async fn filter_split(
        &self,
        batch: &mut Batch,
        rejects: &mut Vec<Rejected>,
    ) -> Result<Vec<Batch>, PluginError> {
        let tag = batch.tag.clone();
        let mut kept = Vec::with_capacity(batch.events.len());
        let mut moved: Vec<Batch> = Vec::new();
        let mut index: HashMap<Tag, usize> = HashMap::new();
        for event in batch.events.drain(..) {
            match self.new_tag(&tag, &event) {
                Ok(Some(new)) if new == tag => kept.push(event),
                Ok(Some(new)) => match index.get(&new) {
                    Some(&i) => moved[i].events.push(event),
                    None => {
                        index.insert(new.clone(), moved.len());
                        moved.push(Batch::new(new, vec![event]));
                    }
                },
                Ok(None) if self.drop_unmatched => {}
                Ok(None) => kept.push(event),
                Err(reason) => rejects.push(Rejected { event, reason }),
            }
        }
        batch.events = kept;
        Ok(moved)
    }
}
