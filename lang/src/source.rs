//! Source files and byte spans inside them.
//!
//! Every AST node and every diagnostic carries a [`Span`] so that an error
//! found late (by the engine, while building the pipeline) can still point at
//! the exact characters of the routes file that caused it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One routes file (or string) that was read, kept whole so diagnostics can
/// quote its lines.
pub struct SourceFile {
    name: String,
    path: Option<PathBuf>,
    text: String,
    line_starts: Vec<usize>,
}

impl fmt::Debug for SourceFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SourceFile({:?})", self.name)
    }
}

impl SourceFile {
    /// A source named `name` (what diagnostics print) with its text. `path`
    /// is where it was read from, when it came from disk.
    /// A leading byte order mark is dropped: editors on Windows write one.
    pub fn new(name: impl Into<String>, path: Option<PathBuf>, text: impl Into<String>) -> Self {
        let mut text = text.into();
        if text.starts_with('\u{feff}') {
            text.drain(..'\u{feff}'.len_utf8());
        }
        let mut line_starts = vec![0];
        line_starts.extend(
            text.bytes()
                .enumerate()
                .filter(|(_, b)| *b == b'\n')
                .map(|(i, _)| i + 1),
        );
        Self {
            name: name.into(),
            path,
            text,
            line_starts,
        }
    }

    /// The name diagnostics use for this file (the path as it was given or
    /// joined, not canonicalised, so it reads like what the user typed).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where the file was read from, if it was read from disk.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The whole text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// 1-based line and column (in characters) of a byte offset. Offsets past
    /// the end, or inside a character, are clamped.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = self.clamp(offset);
        let line = match self.line_starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i - 1,
        };
        let start = self.line_starts[line];
        let col = self.text[start..offset].chars().count() + 1;
        (line + 1, col)
    }

    /// The text of a 1-based line, without its line ending.
    pub fn line_text(&self, line: usize) -> &str {
        let Some(&start) = self.line_starts.get(line.saturating_sub(1)) else {
            return "";
        };
        let end = self
            .line_starts
            .get(line)
            .map_or(self.text.len(), |&next| next - 1);
        self.text[start..end].trim_end_matches('\r')
    }

    /// `offset` moved back to a character boundary and not past the end.
    pub fn clamp(&self, offset: usize) -> usize {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        offset
    }
}

/// A range of bytes in one source file.
#[derive(Clone)]
pub struct Span {
    /// The file.
    pub file: Arc<SourceFile>,
    /// Byte offset of the first byte.
    pub start: usize,
    /// Byte offset just past the last byte.
    pub end: usize,
}

impl fmt::Debug for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (l, c) = self.file.line_col(self.start);
        write!(
            f,
            "{}:{l}:{c}({}..{})",
            self.file.name, self.start, self.end
        )
    }
}

impl PartialEq for Span {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.file, &other.file) && self.start == other.start && self.end == other.end
    }
}

impl Span {
    /// A span of `file` from `start` to `end` (byte offsets).
    pub fn new(file: &Arc<SourceFile>, start: usize, end: usize) -> Self {
        Self {
            file: file.clone(),
            start,
            end: end.max(start),
        }
    }

    /// The text the span covers.
    pub fn text(&self) -> &str {
        let start = self.file.clamp(self.start);
        let end = self.file.clamp(self.end);
        &self.file.text()[start..end]
    }

    /// The span from the start of `self` to the end of `other` (same file).
    pub fn to(&self, other: &Span) -> Span {
        Span::new(&self.file, self.start, other.end.max(self.end))
    }

    /// A span of the single character at byte offset `at`.
    pub fn char_at(file: &Arc<SourceFile>, at: usize) -> Span {
        let at = file.clamp(at);
        let len = file.text()[at..].chars().next().map_or(0, char::len_utf8);
        Span::new(file, at, at + len)
    }

    /// `file:line:col` of the start, 1-based.
    pub fn location(&self) -> String {
        let (l, c) = self.file.line_col(self.start);
        format!("{}:{l}:{c}", self.file.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_columns_count_characters() {
        let f = SourceFile::new("t", None, "ab\r\né x\n\nlast");
        assert_eq!(f.line_col(0), (1, 1));
        assert_eq!(f.line_col(4), (2, 1));
        assert_eq!(f.line_col(7), (2, 3)); // after the two-byte é and a space
        assert_eq!(f.line_col(10), (4, 1));
        assert_eq!(f.line_text(1), "ab");
        assert_eq!(f.line_text(2), "é x");
        assert_eq!(f.line_text(3), "");
        assert_eq!(f.line_text(4), "last");
        assert_eq!(f.line_col(100), (4, 5));
    }
}
