//! Deciding where a tag goes: match tables and the per-tag decision cache.
//!
//! A [`MatchTable`] answers "which block takes this tag first?" by checking a
//! hash map of exact tags, then only the wildcard blocks that come earlier.
//! The answer for a tag never changes while a pipeline runs, so each emitter
//! keeps a [`RouteCache`] and routing a batch is one hash lookup, however many
//! blocks there are.

use std::collections::HashMap;
use std::hash::Hash;

use crate::pattern::PatternSet;
use crate::tag::Tag;

/// Ordered blocks of patterns; the first block that matches wins.
#[derive(Clone, Debug, Default)]
pub struct MatchTable {
    sets: Vec<PatternSet>,
    /// Exact tag → index of the first block with that exact pattern.
    exact: HashMap<Box<str>, usize>,
    /// Blocks with at least one wildcard pattern, in order.
    general: Vec<usize>,
}

impl MatchTable {
    /// A table of `sets` in priority order.
    pub fn new(sets: Vec<PatternSet>) -> Self {
        let mut exact = HashMap::new();
        let mut general = Vec::new();
        for (i, set) in sets.iter().enumerate() {
            let mut has_general = false;
            for p in set.patterns() {
                match p.exact() {
                    Some(t) => {
                        exact.entry(t.into()).or_insert(i);
                    }
                    None => has_general = true,
                }
            }
            if has_general {
                general.push(i);
            }
        }
        Self {
            sets,
            exact,
            general,
        }
    }

    /// The blocks.
    pub fn sets(&self) -> &[PatternSet] {
        &self.sets
    }

    /// The number of blocks.
    pub fn len(&self) -> usize {
        self.sets.len()
    }

    /// True when there are no blocks.
    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }

    /// The index of the first block matching `tag`.
    pub fn first_match(&self, tag: &str) -> Option<usize> {
        let best = self.exact.get(tag).copied();
        let limit = best.unwrap_or(usize::MAX);
        self.general
            .iter()
            .copied()
            .take_while(|&i| i < limit)
            .find(|&i| self.sets[i].matches(tag))
            .or(best)
    }

    /// Every block matching `tag`, in order (filters all run).
    pub fn all_matches<'a>(&'a self, tag: &'a str) -> impl Iterator<Item = usize> + 'a {
        self.sets
            .iter()
            .enumerate()
            .filter(move |(_, s)| s.matches(tag))
            .map(|(i, _)| i)
    }

    /// Blocks that can never be chosen because an earlier block catches every
    /// tag they would: `(shadowed, by)`. Conservative: only reports what is
    /// certain.
    pub fn shadowed(&self) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for (i, later) in self.sets.iter().enumerate() {
            let by = (0..i).find(|&j| {
                later
                    .patterns()
                    .iter()
                    .all(|p| self.sets[j].patterns().iter().any(|q| covers(q, p)))
            });
            if let Some(j) = by {
                out.push((i, j));
            }
        }
        out
    }
}

/// Does every tag matched by `later` also match `earlier`? Only the certain
/// cases: `**`, identical text, an exact tag the earlier pattern matches, and a
/// pattern whose literal head lies inside an earlier `prefix.**`.
fn covers(earlier: &crate::pattern::TagPattern, later: &crate::pattern::TagPattern) -> bool {
    if earlier.matches_everything() || earlier.as_str() == later.as_str() {
        return true;
    }
    if let Some(tag) = later.exact() {
        return earlier.matches(tag);
    }
    if let Some(prefix) = earlier.as_str().strip_suffix(".**") {
        if prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        {
            let head: String = later
                .as_str()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
                .collect();
            return head.starts_with(&format!("{prefix}."));
        }
    }
    false
}

/// A bounded map from tag to a routing decision.
///
/// When full it is cleared rather than evicting one by one: tags are usually
/// few, and a flood of distinct tags should not cost more than re-deciding.
#[derive(Clone, Debug)]
pub struct RouteCache<V> {
    map: HashMap<Tag, V>,
    capacity: usize,
}

impl<V: Clone> RouteCache<V> {
    /// A cache holding at most `capacity` tags.
    pub fn new(capacity: usize) -> Self {
        Self {
            map: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// The cached decision for `tag`, computed by `decide` on first sight.
    pub fn get_or_insert_with(&mut self, tag: &Tag, decide: impl FnOnce() -> V) -> V {
        if let Some(v) = self.map.get(tag.as_str()) {
            return v.clone();
        }
        if self.map.len() >= self.capacity {
            self.map.clear();
        }
        let v = decide();
        self.map.insert(tag.clone(), v.clone());
        v
    }

    /// Number of cached tags.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Deduplicates keys for the "report once" logs.
pub(crate) fn first_time<K: Eq + Hash>(
    seen: &std::sync::Mutex<std::collections::HashSet<K>>,
    key: K,
) -> bool {
    let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
    if seen.len() > 10_000 {
        return false;
    }
    seen.insert(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(blocks: &[&[&str]]) -> MatchTable {
        MatchTable::new(
            blocks
                .iter()
                .map(|b| PatternSet::parse(b).unwrap())
                .collect(),
        )
    }

    #[test]
    fn first_match_wins_across_exact_and_wildcards() {
        let t = table(&[&["app.**"], &["app.web"], &["web.{api,ui}"], &["**"]]);
        assert_eq!(t.first_match("app.web"), Some(0));
        assert_eq!(t.first_match("web.api"), Some(2));
        assert_eq!(t.first_match("other"), Some(3));
        let t = table(&[&["a.b"], &["a.*"], &["a.b"]]);
        assert_eq!(t.first_match("a.b"), Some(0));
        assert_eq!(t.first_match("a.c"), Some(1));
        assert_eq!(t.first_match("x"), None);
        let t = table(&[&["x.*"], &["a.b", "a.c"]]);
        assert_eq!(t.first_match("a.c"), Some(1));
    }

    #[test]
    fn shadowed_blocks_are_found() {
        let t = table(&[
            &["app.**"],
            &["app.web"],
            &["app.{x,y}.**"],
            &["db"],
            &["**"],
            &["late"],
        ]);
        assert_eq!(t.shadowed(), vec![(1, 0), (2, 0), (5, 4)]);
        let t = table(&[&["a.*"], &["a.**"], &["b"]]);
        assert!(t.shadowed().is_empty());
    }

    #[test]
    fn cache_is_bounded() {
        let mut c = RouteCache::new(2);
        let mut calls = 0;
        for t in ["a", "b", "a", "c", "a"] {
            c.get_or_insert_with(&Tag::new_unchecked(t), || {
                calls += 1;
                calls
            });
        }
        assert!(c.len() <= 2);
        assert_eq!(calls, 4);
    }
}
