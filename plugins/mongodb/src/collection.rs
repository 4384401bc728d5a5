//! Collection names built per event: the engine's [`Template`] placeholders
//! plus strftime of the event time in the literal text.
//!
//! `"{tag_parts[1]}_%Y%m"` puts `home.hh-0042.owl` of December 2026 into
//! `hh-0042_202612`. Only the text *between* placeholders is read as
//! strftime, so a `%` inside a field's value is never interpreted. Times
//! are UTC. A rendered name that MongoDB would refuse (empty, with `$` or a
//! NUL, starting with `system.`, too long) fails that event alone.

use chrono::format::{Item, StrftimeItems};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value as Json};
use std::fmt::Write as _;
use ulog_engine::template::Template;
use ulog_engine::EventTime;

/// MongoDB's limit on `database.collection`, in bytes.
const MAX_NAMESPACE: usize = 255;

#[derive(Debug, Clone)]
enum Piece {
    Text(String),
    /// Literal text with strftime specifiers, checked at build time.
    Time(String),
    Placeholder(Template),
}

/// A compiled collection name template.
#[derive(Debug, Clone)]
pub(crate) struct CollectionTemplate {
    pieces: Vec<Piece>,
    reads_fields: bool,
    reads_time: bool,
    /// Whether a time specifier finer than a second is used (`%f`, `%3f`),
    /// which rules out reusing the name of the previous second.
    subsecond: bool,
}

impl CollectionTemplate {
    /// Compiles `text`.
    ///
    /// # Errors
    /// A malformed placeholder or an unknown strftime specifier.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let mut pieces = Vec::new();
        let mut subsecond = false;
        let mut rest = text;
        loop {
            let (literal, after) = match rest.find('{') {
                Some(open) => (&rest[..open], Some(open)),
                None => (rest, None),
            };
            if literal.contains('%') {
                for item in StrftimeItems::new(literal) {
                    if let Item::Error = item {
                        return Err(format!(
                            "{literal:?} is not a valid strftime format (collection template {text:?})"
                        ));
                    }
                    subsecond |= format!("{item:?}").contains("Nanosecond");
                }
                pieces.push(Piece::Time(literal.to_string()));
            } else if !literal.is_empty() {
                pieces.push(Piece::Text(literal.to_string()));
            }
            let Some(open) = after else { break };
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("unclosed `{{` in collection template {text:?}"))?
                + open;
            pieces.push(Piece::Placeholder(Template::parse(&rest[open..=close])?));
            rest = &rest[close + 1..];
        }
        if pieces.is_empty() {
            return Err("the collection template is empty".into());
        }
        let reads_fields = pieces
            .iter()
            .any(|p| matches!(p, Piece::Placeholder(t) if t.reads_fields()));
        let reads_time = pieces.iter().any(|p| matches!(p, Piece::Time(_)));
        Ok(Self {
            pieces,
            reads_fields,
            reads_time,
            subsecond,
        })
    }

    /// Whether rendering needs the record's fields (so a raw record must be
    /// parsed).
    pub(crate) fn reads_fields(&self) -> bool {
        self.reads_fields
    }

    /// Whether the name depends on the event time.
    pub(crate) fn reads_time(&self) -> bool {
        self.reads_time
    }

    /// The time granularity at which two events surely get the same name,
    /// in nanoseconds (for callers that reuse the previous event's name).
    pub(crate) fn time_granularity(&self) -> i64 {
        if self.subsecond {
            1
        } else {
            1_000_000_000
        }
    }

    /// The collection name for one event, checked against MongoDB's rules.
    ///
    /// # Errors
    /// A missing field or tag part, a non-scalar field, a time out of
    /// range, or a name MongoDB would refuse.
    pub(crate) fn render(
        &self,
        database: &str,
        tag: &str,
        record: &Map<String, Json>,
        time: EventTime,
    ) -> Result<String, String> {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Placeholder(t) => out.push_str(&t.render(tag, record, "collection name")?),
                Piece::Time(format) => {
                    let at = DateTime::<Utc>::from_timestamp(time.secs(), time.subsec_nanos())
                        .ok_or_else(|| {
                            format!("event time {} is out of range", time.unix_nanos())
                        })?;
                    // Checked at build time, so formatting cannot fail.
                    let _ = write!(out, "{}", at.format(format));
                }
            }
        }
        check_name(database, &out)?;
        Ok(out)
    }
}

/// Whether MongoDB accepts `name` as a collection of `database`.
pub(crate) fn check_name(database: &str, name: &str) -> Result<(), String> {
    let problem = if name.is_empty() {
        "is empty"
    } else if name.contains('$') {
        "contains `$`"
    } else if name.contains('\0') {
        "contains a NUL character"
    } else if name.starts_with("system.") {
        "starts with `system.` (reserved)"
    } else if name.starts_with('.') || name.ends_with('.') {
        "starts or ends with `.`"
    } else if database.len() + 1 + name.len() > MAX_NAMESPACE {
        "is too long (database and collection together are limited to 255 bytes)"
    } else {
        return Ok(());
    };
    Err(format!("collection name {name:?} {problem}"))
}

/// Whether MongoDB accepts `name` as a database name.
pub(crate) fn check_database(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 {
        return Err(format!("database name {name:?} must be 1 to 63 bytes"));
    }
    if let Some(c) = name.chars().find(|c| "/\\. \"$*<>:|?\0".contains(*c)) {
        return Err(format!("database name {name:?} must not contain {c:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn placeholders_and_time_in_literals_only() {
        let r = json!({"household": "hh-0042", "pct": "50%Y"});
        let r = r.as_object().unwrap();
        // 2026-12-03T10:00:00.250Z
        let t = EventTime::from_secs_nanos(1_796_292_000, 250_000_000);
        let render = |s: &str| {
            CollectionTemplate::parse(s)
                .unwrap()
                .render("db", "home.hh-0042.owl", r, t)
        };
        assert_eq!(render("{tag}").unwrap(), "home.hh-0042.owl");
        assert_eq!(render("{tag_parts[1]}_%Y%m").unwrap(), "hh-0042_202612");
        assert_eq!(
            render("e_%Y-%m-%d_{household}").unwrap(),
            "e_2026-12-03_hh-0042"
        );
        assert_eq!(
            render("x_{pct}").unwrap(),
            "x_50%Y",
            "a field's % is not strftime"
        );
        assert_eq!(render("plain").unwrap(), "plain");
        assert!(render("{missing}").unwrap_err().contains("no field"));
        assert!(render("{tag_parts[7]}").unwrap_err().contains("no part 7"));
        assert!(!CollectionTemplate::parse("{tag}").unwrap().reads_fields());
        assert!(!CollectionTemplate::parse("{tag}").unwrap().reads_time());
        assert!(CollectionTemplate::parse("{household}")
            .unwrap()
            .reads_fields());
        assert!(CollectionTemplate::parse("a_%Y").unwrap().reads_time());
        assert_eq!(
            CollectionTemplate::parse("a_%Y")
                .unwrap()
                .time_granularity(),
            1_000_000_000
        );
        assert_eq!(
            CollectionTemplate::parse("a_%S%3f")
                .unwrap()
                .time_granularity(),
            1
        );
    }

    #[test]
    fn bad_templates_and_names_are_refused() {
        assert!(CollectionTemplate::parse("a_%Q").is_err());
        assert!(CollectionTemplate::parse("a_{tag").is_err());
        assert!(CollectionTemplate::parse("").is_err());
        let r = json!({"d": "$bad", "sys": "system"});
        let r = r.as_object().unwrap();
        let render = |s: &str| {
            CollectionTemplate::parse(s).unwrap().render(
                "db",
                "t",
                r,
                EventTime::from_unix_nanos(0),
            )
        };
        assert!(render("x{d}").unwrap_err().contains("contains `$`"));
        assert!(render("{sys}.users").unwrap_err().contains("reserved"));
        assert!(render(&"x".repeat(300)).unwrap_err().contains("too long"));
        assert!(check_database("ulog_test").is_ok());
        assert!(check_database("a.b").is_err());
        assert!(check_database("").is_err());
    }
}
