//! Diagnostics: one type for every problem found in a routes file, whether
//! the grammar, the include loader, env interpolation or the engine's build
//! found it, so the cli prints them all the same way.

use std::fmt::Write;

use crate::source::Span;

pub use ulog_engine::spec::Severity;

/// A problem found in a routes file, with where it is and what was expected.
#[derive(Clone, Debug)]
pub struct Diagnostic {
    /// Error (the configuration cannot be used) or warning.
    pub severity: Severity,
    /// A short stable identifier (`E-syntax`, `E-unknown-param`,
    /// `W-shadowed`, ...), for tests, docs and tools that filter.
    pub code: &'static str,
    /// What is wrong and what was expected, on one line.
    pub message: String,
    /// The characters at fault, when known.
    pub primary: Option<Span>,
    /// Extra lines: known names, hints, where something was first defined.
    pub notes: Vec<String>,
}

impl Diagnostic {
    /// An error with code `code` at `span`.
    pub fn error(code: &'static str, span: Option<Span>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            code,
            message: message.into(),
            primary: span,
            notes: Vec::new(),
        }
    }

    /// A warning with code `code` at `span`.
    pub fn warning(code: &'static str, span: Option<Span>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Warning,
            ..Self::error(code, span, message)
        }
    }

    /// Adds a note line.
    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.notes.push(note.into());
        self
    }

    /// True for errors, false for warnings: the cli exits non-zero on errors
    /// only.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// `(file, line, column)` of the fault, 1-based, column in characters;
    /// `None` when the problem has no place in a file (an unreadable root
    /// file).
    pub fn line_col(&self) -> Option<(String, usize, usize)> {
        let span = self.primary.as_ref()?;
        let (line, col) = span.file.line_col(span.start);
        Some((span.file.name().to_string(), line, col))
    }

    /// The diagnostic as plain text, in the style of rustc: a header line, the
    /// location, the source line with carets under the fault, then notes.
    ///
    /// ```text
    /// error[E-unknown-param]: unknown parameter `pth`; did you mean `path`?
    ///   --> routes.conf:12:3
    ///    |
    /// 12 |   pth = "out/x.jsonl"
    ///    |   ^^^
    ///    = note: `file` takes: id, path, format, ...
    /// ```
    pub fn render(&self) -> String {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let mut out = format!("{severity}[{}]: {}\n", self.code, self.message);
        let mut width = 1;
        if let Some(span) = &self.primary {
            let file = &span.file;
            let start = file.clamp(span.start);
            let (line, col) = file.line_col(start);
            width = line.to_string().len();
            let pad = " ".repeat(width);
            let _ = writeln!(out, "{pad}--> {}:{line}:{col}", file.name());
            let _ = writeln!(out, "{pad} |");
            let text = file.line_text(line);
            let _ = writeln!(out, "{line:>width$} | {text}");
            // Carets: under the span's characters on its first line, at least one.
            let before: String = text
                .chars()
                .take(col - 1)
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            let line_rest: String = text.chars().skip(col - 1).collect();
            let span_chars = file.text()[start..file.clamp(span.end.max(start))]
                .chars()
                .count();
            let carets = span_chars.min(line_rest.chars().count()).max(1);
            let _ = writeln!(out, "{pad} | {before}{}", "^".repeat(carets));
        }
        let pad = " ".repeat(width);
        for note in &self.notes {
            let _ = writeln!(out, "{pad} = note: {note}");
        }
        out
    }
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.render().trim_end())
    }
}

/// So a diagnostic can travel through `?` into `anyhow` and friends.
impl std::error::Error for Diagnostic {}

/// Renders several diagnostics separated by blank lines, as `ulog check`
/// prints them.
pub fn render_all(diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(Diagnostic::render)
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::source::SourceFile;

    #[test]
    fn renders_like_the_contract() {
        let mut text = String::new();
        for _ in 0..11 {
            text.push_str("#\n");
        }
        text.push_str("  pth = \"out/x.jsonl\"\n");
        let file = Arc::new(SourceFile::new("routes.conf", None, text));
        let start = 11 * 2 + 2;
        let d = Diagnostic::error(
            "E-unknown-param",
            Some(Span::new(&file, start, start + 3)),
            "unknown parameter `pth`; did you mean `path`?",
        )
        .note("`file` takes: id, path, format, ...");
        assert_eq!(
            d.render(),
            "error[E-unknown-param]: unknown parameter `pth`; did you mean `path`?\n\
             \x20 --> routes.conf:12:3\n\
             \x20  |\n\
             12 |   pth = \"out/x.jsonl\"\n\
             \x20  |   ^^^\n\
             \x20  = note: `file` takes: id, path, format, ...\n"
        );
        assert_eq!(d.line_col(), Some(("routes.conf".into(), 12, 3)));
        assert!(d.is_error());
    }

    #[test]
    fn carets_keep_tabs_and_stop_at_the_line_end() {
        let file = Arc::new(SourceFile::new("t", None, "\tab cd\nxy"));
        let d = Diagnostic::warning("W-x", Some(Span::new(&file, 4, 9)), "m");
        let r = d.render();
        assert!(r.starts_with("warning[W-x]: m\n"), "{r}");
        assert!(r.contains("1 | \tab cd\n  | \t   ^^\n"), "{r}");
        assert!(!d.is_error());
    }

    #[test]
    fn no_span_still_renders() {
        let d = Diagnostic::error("E-io", None, "cannot read x").note("n");
        assert_eq!(d.render(), "error[E-io]: cannot read x\n  = note: n\n");
        assert_eq!(d.line_col(), None);
    }
}
