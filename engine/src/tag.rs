//! Tags: the dotted names events are routed by.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

/// The longest tag accepted from outside.
pub const MAX_TAG_LEN: usize = 256;

/// A dotted event tag such as `home.42.owl`, cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(Arc<str>);

/// Why a tag from outside was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TagError {
    /// The empty string is not a tag.
    #[error("tag is empty")]
    Empty,
    /// Longer than [`MAX_TAG_LEN`].
    #[error("tag is {0} bytes long, more than the {MAX_TAG_LEN} allowed")]
    TooLong(usize),
    /// A character outside `[A-Za-z0-9_.-]`.
    #[error("tag {tag:?} has the character {ch:?} at byte {at}; allowed are A-Z a-z 0-9 _ . -")]
    BadChar {
        /// The refused tag.
        tag: String,
        /// The first disallowed character.
        ch: char,
        /// Its byte offset.
        at: usize,
    },
    /// Two dots in a row, or a dot at either end.
    #[error("tag {0:?} has an empty part (a leading, trailing or doubled '.')")]
    EmptyPart(String),
}

impl Tag {
    /// Validates a tag that came from outside (an HTTP path, a forward frame).
    ///
    /// Only `[A-Za-z0-9_.-]` is allowed and no part may be empty, so a tag can
    /// always be used in a file name without escaping its directory.
    pub fn parse(s: &str) -> Result<Self, TagError> {
        validate(s)?;
        Ok(Self(Arc::from(s)))
    }

    /// Makes a tag from trusted text (a routes file, a plugin constant)
    /// without checking it.
    pub fn new_unchecked(s: &str) -> Self {
        Self(Arc::from(s))
    }

    /// The tag's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The dot-separated parts.
    pub fn parts(&self) -> std::str::Split<'_, char> {
        self.0.split('.')
    }
}

/// Checks `s` against the ingress rules of [`Tag::parse`].
pub fn validate(s: &str) -> Result<(), TagError> {
    if s.is_empty() {
        return Err(TagError::Empty);
    }
    if s.len() > MAX_TAG_LEN {
        return Err(TagError::TooLong(s.len()));
    }
    if let Some((at, ch)) = s
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(TagError::BadChar {
            tag: s.to_string(),
            ch,
            at,
        });
    }
    if s.starts_with('.') || s.ends_with('.') || s.contains("..") {
        return Err(TagError::EmptyPart(s.to_string()));
    }
    Ok(())
}

impl Deref for Tag {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Tag {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Tag {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_tags() {
        for t in ["a", "app.web", "home.42.owl", "A-b_c.d-9"] {
            assert_eq!(Tag::parse(t).unwrap().as_str(), t);
        }
    }

    #[test]
    fn refuses_what_could_escape_or_confuse() {
        assert_eq!(Tag::parse(""), Err(TagError::Empty));
        assert!(matches!(
            Tag::parse("a/b"),
            Err(TagError::BadChar { ch: '/', at: 1, .. })
        ));
        assert!(matches!(Tag::parse("a b"), Err(TagError::BadChar { .. })));
        assert!(matches!(Tag::parse("é"), Err(TagError::BadChar { .. })));
        assert!(matches!(Tag::parse(".."), Err(TagError::EmptyPart(_))));
        assert!(matches!(Tag::parse(".a"), Err(TagError::EmptyPart(_))));
        assert!(matches!(Tag::parse("a."), Err(TagError::EmptyPart(_))));
        assert!(matches!(Tag::parse("a..b"), Err(TagError::EmptyPart(_))));
        assert_eq!(
            Tag::parse(&"a".repeat(MAX_TAG_LEN + 1)),
            Err(TagError::TooLong(MAX_TAG_LEN + 1))
        );
        assert!(Tag::parse(&"a".repeat(MAX_TAG_LEN)).is_ok());
    }
}
