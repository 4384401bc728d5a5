//! Templates over an event's tag and fields, for names built per event:
//! an MQTT topic (`home/{household}/alerts`), a PubNub channel
//! (`hub.{tag_parts[1]}`), an index or a file name.
//!
//! Placeholders: `{tag}`, `{tag_path}` (the tag with `.` as `/`),
//! `{tag_parts[N]}` (negative N counts from the end) and any other name as
//! a record field, dotted for nested objects (`{a.b}`, `{record.a}`).

use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Tag,
    TagPath,
    TagIndex(isize),
    Field(Vec<String>),
}

/// A compiled template; render it once per event.
#[derive(Debug, Clone)]
pub struct Template {
    parts: Vec<Part>,
}

impl Template {
    /// Compiles `text`.
    ///
    /// # Errors
    /// An unclosed or empty placeholder, or a bad tag part index.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("unclosed `{{` in template {text:?}"))?
                + open;
            let name = rest[open + 1..close].trim();
            parts.push(match name {
                "tag" => Part::Tag,
                "tag_path" => Part::TagPath,
                "" => return Err(format!("empty placeholder `{{}}` in template {text:?}")),
                n if n.starts_with("tag_parts[") && n.ends_with(']') => Part::TagIndex(
                    n["tag_parts[".len()..n.len() - 1]
                        .parse()
                        .map_err(|_| format!("bad index in `{{{n}}}`"))?,
                ),
                n => Part::Field(
                    n.trim_start_matches("record.")
                        .split('.')
                        .map(str::to_string)
                        .collect(),
                ),
            });
            rest = &rest[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Self { parts })
    }

    /// The literal text between placeholders, for callers that forbid some
    /// characters there (MQTT wildcards).
    pub fn literals(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Text(t) => Some(t.as_str()),
            _ => None,
        })
    }

    /// Whether rendering reads record fields (so the record must be parsed).
    pub fn reads_fields(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Field(_)))
    }

    /// The text for one event; `what` names the result in errors
    /// ("topic", "channel").
    ///
    /// # Errors
    /// A missing tag part or field, or a field that is not a scalar.
    pub fn render(
        &self,
        tag: &str,
        record: &Map<String, Value>,
        what: &str,
    ) -> Result<String, String> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Tag => out.push_str(tag),
                Part::TagPath => out.push_str(&tag.replace('.', "/")),
                Part::TagIndex(i) => {
                    let count = tag.split('.').count() as isize;
                    let idx = if *i < 0 { count + i } else { *i };
                    match usize::try_from(idx)
                        .ok()
                        .and_then(|i| tag.split('.').nth(i))
                    {
                        Some(s) => out.push_str(s),
                        None => return Err(format!("tag {tag:?} has no part {i}")),
                    }
                }
                Part::Field(path) => {
                    let mut v = record.get(&path[0]);
                    for k in &path[1..] {
                        v = v.and_then(|v| v.get(k));
                    }
                    match v {
                        Some(Value::String(s)) => out.push_str(s),
                        Some(Value::Number(n)) => out.push_str(&n.to_string()),
                        Some(Value::Bool(b)) => out.push_str(if *b { "true" } else { "false" }),
                        Some(other) => {
                            return Err(format!(
                                "field {:?} is {} and cannot be part of a {what}",
                                path.join("."),
                                if other.is_null() {
                                    "null"
                                } else {
                                    "not a scalar"
                                }
                            ))
                        }
                        None => {
                            return Err(format!(
                                "the event has no field {:?} for the {what}",
                                path.join(".")
                            ))
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn placeholders() {
        let r = json!({"household": "h7", "n": 3, "a": {"b": true}, "o": {}, "z": null});
        let r = r.as_object().unwrap();
        let t = |s: &str| Template::parse(s).unwrap().render("home.a.owl", r, "topic");
        assert_eq!(t("x/{tag}").unwrap(), "x/home.a.owl");
        assert_eq!(t("{tag_path}").unwrap(), "home/a/owl");
        assert_eq!(t("{tag_parts[1]}-{tag_parts[-1]}").unwrap(), "a-owl");
        assert_eq!(
            t("{household}/{n}/{a.b}/{record.n}").unwrap(),
            "h7/3/true/3"
        );
        assert!(t("{tag_parts[5]}").is_err());
        assert!(t("{missing}").unwrap_err().contains("no field"));
        assert!(t("{o}").unwrap_err().contains("not a scalar"));
        assert!(t("{z}").unwrap_err().contains("null"));
        assert!(Template::parse("a/{x").is_err());
        assert!(Template::parse("a/{}").is_err());
        assert!(Template::parse("{tag_parts[x]}").is_err());
        assert!(!Template::parse("a.{tag}").unwrap().reads_fields());
        assert!(Template::parse("a.{f}").unwrap().reads_fields());
    }
}
