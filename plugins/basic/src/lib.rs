//! ulog's basic plugins: the ones every installation needs and that depend on
//! nothing but the local machine.
//!
//! | kind   | name     | for                                              |
//! |--------|----------|--------------------------------------------------|
//! | input  | `stdin`  | shell pipes and one-shot imports                 |
//! | input  | `dummy`  | quickstart, testing routes, benchmarks           |
//! | filter | `record` | renaming, setting, computing, removing fields    |
//! | filter | `grep`   | keeping or dropping events by regex, expression  |
//! | filter | `throttle` | a rate limit per key (household, tag)          |
//! | filter | `rewrite_tag` | new tags from fields, routed again          |
//! | filter | `dedupe`   | dropping repeats of a key within a window        |
//! | filter | `rule`     | stateful per-key rules: thresholds, changes, windows, joins |
//! | output | `stdout` | trying routes out, debugging                     |
//! | output | `file`   | local files split by tag and time                |
//! | output | `null`   | dropping a tag on purpose, measuring             |
//!
//! Each plugin lives in its own module named like fluentd's (`in_stdin`,
//! `out_file`, ...) and exposes its `spec()` (parameters, defaults and
//! descriptions, which drive validation and the docs) and a `register`
//! function; [`register`] adds them all.
#![deny(missing_docs)]

pub mod encode;
pub mod expression;
pub mod filter_dedupe;
pub mod filter_grep;
pub mod filter_record;
pub mod filter_rewrite_tag;
pub mod filter_rule;
pub mod filter_throttle;
pub mod filter_validate;
pub mod in_dummy;
pub mod in_stdin;
pub mod out_file;
pub mod out_null;
pub mod out_stdout;

use ulog_engine::Registry;

/// Registers every plugin of this crate.
pub fn register(registry: &mut Registry) {
    in_stdin::register(registry);
    in_dummy::register(registry);
    filter_record::register(registry);
    filter_grep::register(registry);
    filter_throttle::register(registry);
    filter_rewrite_tag::register(registry);
    filter_dedupe::register(registry);
    filter_rule::register(registry);
    filter_validate::register(registry);
    out_stdout::register(registry);
    out_file::register(registry);
    out_null::register(registry);
}
