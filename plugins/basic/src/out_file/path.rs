//! The `path` template of `output file`: `{tag}`, `{tag_parts[N]}` and
//! strftime directives (`%Y/%m/%d`, UTC) rendered per event.
//!
//! A tag can never move a file out of the output's directory: the
//! components a tag is substituted into are checked after rendering, and a
//! tag holding `/`, or a component that renders to `.`, `..` or nothing, is
//! refused.

use std::fmt::Write as _;
use std::path::PathBuf;

use chrono::format::Item;
use ulog_engine::{BuildContext, BuildError, EventTime, Tag};

use crate::encode::{compile_strftime, strftime_uses_subsec, to_datetime};

#[derive(Clone, Debug)]
enum Piece {
    Lit(String),
    Tag,
    TagPart(isize),
    Time(Vec<Item<'static>>),
}

#[derive(Clone, Debug)]
struct Component {
    pieces: Vec<Piece>,
    /// Holds `{tag}` or `{tag_parts[N]}`: checked after rendering.
    from_tag: bool,
}

/// A compiled `path` template.
#[derive(Clone, Debug)]
pub struct PathTemplate {
    /// The fixed leading directories (or the whole path when there is no
    /// placeholder), resolved against the routes file's directory.
    root: PathBuf,
    components: Vec<Component>,
    uses_tag: bool,
    uses_time: bool,
    uses_subsec: bool,
}

impl PathTemplate {
    /// Compiles `text`, resolving its fixed leading part with `ctx`.
    ///
    /// # Errors
    /// An unknown placeholder, unbalanced braces or a bad `%` directive.
    pub fn compile(text: &str, ctx: &BuildContext) -> Result<Self, BuildError> {
        if text.is_empty() || text.ends_with('/') {
            return Err(BuildError::param(
                "path",
                "must name a file (not be empty or end with `/`)",
            ));
        }
        let all: Vec<&str> = text.split('/').collect();
        let first_dynamic = all.iter().position(|c| c.contains(['{', '}', '%']));
        let (fixed, dynamic) = all.split_at(first_dynamic.unwrap_or(all.len()));
        let fixed_text = fixed.join("/");
        let root = if fixed_text.is_empty() && text.starts_with('/') {
            PathBuf::from("/")
        } else {
            ctx.resolve(if fixed_text.is_empty() {
                "."
            } else {
                &fixed_text
            })
        };
        let mut components = Vec::new();
        for c in dynamic.iter().filter(|c| !c.is_empty()) {
            components.push(compile_component(c)?);
        }
        let pieces = || components.iter().flat_map(|c| c.pieces.iter());
        let uses_tag = components.iter().any(|c| c.from_tag);
        let uses_time = pieces().any(|p| matches!(p, Piece::Time(_)));
        let uses_subsec =
            pieces().any(|p| matches!(p, Piece::Time(items) if strftime_uses_subsec(items)));
        Ok(Self {
            root,
            components,
            uses_tag,
            uses_time,
            uses_subsec,
        })
    }

    /// Whether the rendered path depends on the event time (else it is the
    /// same for a whole batch).
    pub fn uses_time(&self) -> bool {
        self.uses_time
    }

    /// A key such that two times with the same key render the same path.
    pub fn time_key(&self, time: EventTime) -> i64 {
        if self.uses_subsec {
            time.unix_nanos()
        } else {
            time.secs()
        }
    }

    /// Checks that `tag` may be substituted at all (once per batch).
    ///
    /// # Errors
    /// Why the tag could lead outside the output's directory.
    pub fn check_tag(&self, tag: &Tag) -> Result<(), String> {
        if self.uses_tag && tag.contains(['/', '\\', '\0']) {
            return Err(format!(
                "refusing to write tag {tag:?} to a file: a tag used in a path must not contain \
                 `/`, `\\` or NUL (it could leave the output's directory)"
            ));
        }
        Ok(())
    }

    /// The path for an event with this tag and time.
    ///
    /// # Errors
    /// A tag component that renders to `.`, `..` or nothing, or a
    /// `tag_parts` index the tag does not have.
    pub fn render(&self, tag: &Tag, time: EventTime) -> Result<PathBuf, String> {
        let mut path = self.root.clone();
        let mut text = String::new();
        let datetime = self.uses_time.then(|| to_datetime(time));
        for component in &self.components {
            text.clear();
            for piece in &component.pieces {
                match piece {
                    Piece::Lit(s) => text.push_str(s),
                    Piece::Tag => text.push_str(tag),
                    Piece::TagPart(i) => {
                        let parts: Vec<&str> = tag.parts().collect();
                        let idx = if *i < 0 {
                            parts.len().checked_sub(i.unsigned_abs())
                        } else {
                            Some(*i as usize)
                        };
                        match idx.and_then(|i| parts.get(i)) {
                            Some(p) => text.push_str(p),
                            None => {
                                return Err(format!(
                                    "tag {tag:?} has no part {{tag_parts[{i}]}} for the file path"
                                ))
                            }
                        }
                    }
                    Piece::Time(items) => {
                        if let Some(dt) = &datetime {
                            let _ = write!(text, "{}", dt.format_with_items(items.iter()));
                        }
                    }
                }
            }
            if component.from_tag && matches!(text.as_str(), "" | "." | "..") {
                return Err(format!(
                    "refusing to write tag {tag:?} to a file: the path component it makes is \
                     {text:?}, which would leave the output's directory"
                ));
            }
            path.push(&text);
        }
        Ok(path)
    }
}

fn compile_component(text: &str) -> Result<Component, BuildError> {
    let mut pieces = Vec::new();
    let mut lit = String::new();
    let mut from_tag = false;
    let flush = |lit: &mut String, pieces: &mut Vec<Piece>| -> Result<(), BuildError> {
        if lit.is_empty() {
            return Ok(());
        }
        let text = std::mem::take(lit);
        pieces.push(if text.contains('%') {
            Piece::Time(compile_strftime("path", &text)?)
        } else {
            Piece::Lit(text)
        });
        Ok(())
    };
    let mut rest = text;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("{{") {
            lit.push('{');
            rest = r;
        } else if let Some(r) = rest.strip_prefix("}}") {
            lit.push('}');
            rest = r;
        } else if rest.starts_with('}') {
            return Err(BuildError::param(
                "path",
                format!("unmatched `}}` in {text:?}; write `}}}}` for a literal brace"),
            ));
        } else if let Some(r) = rest.strip_prefix('{') {
            let close = r.find('}').ok_or_else(|| {
                BuildError::param(
                    "path",
                    format!("unclosed `{{` in {text:?}; write `{{{{` for a literal brace"),
                )
            })?;
            flush(&mut lit, &mut pieces)?;
            let name = r[..close].trim();
            let piece = if name == "tag" {
                Piece::Tag
            } else if let Some(i) = name
                .strip_prefix("tag_parts[")
                .and_then(|s| s.strip_suffix(']'))
                .and_then(|s| s.trim().parse().ok())
            {
                Piece::TagPart(i)
            } else {
                return Err(BuildError::param(
                    "path",
                    format!(
                        "unknown placeholder `{{{name}}}`; a path knows {{tag}}, {{tag_parts[N]}} \
                         and strftime directives such as %Y-%m-%d"
                    ),
                ));
            };
            from_tag = true;
            pieces.push(piece);
            rest = &r[close + 1..];
        } else {
            let next = rest.find(['{', '}']).unwrap_or(rest.len());
            lit.push_str(&rest[..next]);
            rest = &rest[next..];
        }
    }
    flush(&mut lit, &mut pieces)?;
    Ok(Component { pieces, from_tag })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> BuildContext {
        BuildContext {
            id: "file#1".into(),
            base_dir: PathBuf::from("/base"),
        }
    }

    #[test]
    fn renders_tag_parts_and_time() {
        let t = PathTemplate::compile("out/{tag_parts[0]}/%Y/%m-%d/{tag}.%H.log", &ctx()).unwrap();
        let time = EventTime::from_secs_nanos(1_700_000_000, 0); // 2023-11-14T22:13:20Z
        assert_eq!(
            t.render(&Tag::new_unchecked("app.web"), time).unwrap(),
            PathBuf::from("/base/out/app/2023/11-14/app.web.22.log")
        );
        assert!(t.uses_time());
    }

    #[test]
    fn fixed_paths_resolve_against_the_base_dir() {
        let t = PathTemplate::compile("logs/all.jsonl", &ctx()).unwrap();
        assert_eq!(
            t.render(&Tag::new_unchecked("x"), EventTime::now())
                .unwrap(),
            PathBuf::from("/base/logs/all.jsonl")
        );
        let abs = PathTemplate::compile("/var/{tag}.log", &ctx()).unwrap();
        assert_eq!(
            abs.render(&Tag::new_unchecked("x"), EventTime::now())
                .unwrap(),
            PathBuf::from("/var/x.log")
        );
        let literal = PathTemplate::compile("a/{{x}}%%.log", &ctx()).unwrap();
        assert_eq!(
            literal
                .render(&Tag::new_unchecked("x"), EventTime::now())
                .unwrap(),
            PathBuf::from("/base/a/{x}%.log")
        );
    }

    #[test]
    fn tags_cannot_escape() {
        let t = PathTemplate::compile("out/{tag}/x.log", &ctx()).unwrap();
        for bad in ["..", ".", "a/b", "/etc"] {
            let tag = Tag::new_unchecked(bad);
            assert!(
                t.check_tag(&tag)
                    .and_then(|_| t.render(&tag, EventTime::now()))
                    .is_err(),
                "{bad}"
            );
        }
        let joined = PathTemplate::compile("out/.{tag}", &ctx()).unwrap();
        assert!(joined
            .render(&Tag::new_unchecked("."), EventTime::now())
            .is_err());
        let part = PathTemplate::compile("out/{tag_parts[1]}.log", &ctx()).unwrap();
        assert!(part
            .render(&Tag::new_unchecked("solo"), EventTime::now())
            .is_err());
    }

    #[test]
    fn bad_templates_are_build_errors() {
        for bad in ["out/{nope}.log", "out/{tag.log", "out/}x", "out/%Q", "out/"] {
            let e = PathTemplate::compile(bad, &ctx()).unwrap_err();
            assert_eq!(e.param.as_deref(), Some("path"), "{bad}");
        }
    }
}
