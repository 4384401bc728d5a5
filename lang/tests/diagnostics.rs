//! One test per kind of diagnostic. Each case is a routes file under
//! `tests/diagnostics/` with the expected rendering next to it (`.txt`);
//! the test also asserts the code, file, line, column and key phrase, so a
//! regenerated golden file cannot silently hide a wrong position.
//!
//! Regenerate the renderings with `UPDATE_GOLDEN=1 cargo test -p ulog-lang
//! --test diagnostics` and review the diff by eye.

mod common;

use std::path::{Path, PathBuf};

use ulog_lang::{compile_file, render_all, Diagnostic};

const DIR: &str = "tests/diagnostics";

/// Compiles `tests/diagnostics/<name>.conf` and compares the rendering of
/// every diagnostic (errors, or warnings on success) with `<name>.txt`.
fn run(name: &str) -> Vec<Diagnostic> {
    let conf = PathBuf::from(DIR).join(format!("{name}.conf"));
    let diags = match compile_file(&conf, &common::registry(), &common::options()) {
        Ok(c) => c.warnings,
        Err(d) => d,
    };
    let rendered = render_all(&diags);
    let golden = Path::new(DIR).join(format!("{name}.txt"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &rendered).unwrap();
    } else {
        let want = std::fs::read_to_string(&golden)
            .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1)", golden.display()));
        assert_eq!(
            rendered,
            want,
            "rendering of {name} differs from {}; got:\n{rendered}",
            golden.display()
        );
    }
    diags
}

/// Runs case `name` and checks that a diagnostic with `code` whose message
/// contains `phrase` is at `file:line:col`. Returns it and all diagnostics.
fn expect(
    name: &str,
    code: &str,
    at: (&str, usize, usize),
    phrase: &str,
) -> (Diagnostic, Vec<Diagnostic>) {
    let diags = run(name);
    let d = diags
        .iter()
        .find(|d| d.code == code && d.message.contains(phrase))
        .unwrap_or_else(|| {
            panic!(
                "{name}: no {code} containing {phrase:?} in\n{}",
                render_all(&diags)
            )
        })
        .clone();
    let file = format!("{DIR}/{}", at.0);
    assert_eq!(
        d.line_col(),
        Some((file, at.1, at.2)),
        "{name}: position of\n{}",
        d.render()
    );
    (d, diags)
}

fn conf(name: &str) -> String {
    format!("{name}.conf")
}

#[test]
fn syntax_missing_brace_before_next_block() {
    let (_, all) = expect(
        "syntax_missing_brace",
        "E-syntax",
        (&conf("syntax_missing_brace"), 5, 1),
        "expected `}` before `match`",
    );
    assert_eq!(all.len(), 1);
}

#[test]
fn syntax_missing_brace_at_end_of_file() {
    let (d, _) = expect(
        "syntax_missing_brace_eof",
        "E-syntax",
        (&conf("syntax_missing_brace_eof"), 2, 25),
        "or `}`, found end of file",
    );
    assert!(d.notes[0].contains("still open"));
}

#[test]
fn syntax_missing_value() {
    expect(
        "syntax_missing_value",
        "E-syntax",
        (&conf("syntax_missing_value"), 2, 11),
        "expected a value (string, number, duration, size, list, map or regex), found `format` on the next line",
    );
}

#[test]
fn syntax_stray_token() {
    expect(
        "syntax_stray_token",
        "E-syntax",
        (&conf("syntax_stray_token"), 1, 39),
        "expected a parameter (`name = value`) or `}`, found `;`",
    );
}

#[test]
fn syntax_unknown_top_level_block() {
    expect(
        "syntax_top_level",
        "E-syntax",
        (&conf("syntax_top_level"), 3, 1),
        "expected `input`, `filter`, `match`, `label` or `include`, found `output`",
    );
}

#[test]
fn syntax_missing_pattern() {
    expect(
        "syntax_missing_pattern",
        "E-syntax",
        (&conf("syntax_missing_pattern"), 1, 7),
        "expected a tag pattern string",
    );
}

#[test]
fn syntax_unterminated_string() {
    let (_, all) = expect(
        "syntax_unterminated_string",
        "E-syntax",
        (&conf("syntax_unterminated_string"), 2, 10),
        "unterminated string",
    );
    // The rest of the block is still read: no cascade of errors.
    assert_eq!(all.len(), 1, "{}", render_all(&all));
}

#[test]
fn syntax_bad_escape() {
    let (_, all) = expect(
        "syntax_bad_escape",
        "E-syntax",
        (&conf("syntax_bad_escape"), 2, 13),
        "unknown escape `\\l`",
    );
    assert_eq!(all.len(), 2, "both escapes: {}", render_all(&all));
    assert_eq!(all[1].line_col().unwrap().2, 18);
}

#[test]
fn syntax_error_in_an_included_file_names_that_file() {
    expect(
        "syntax_in_include",
        "E-syntax",
        ("include/broken.conf", 3, 19),
        "expected `=`",
    );
}

#[test]
fn unknown_plugin_type_with_suggestion() {
    let (d, _) = expect(
        "unknown_plugin",
        "E-unknown-plugin",
        (&conf("unknown_plugin"), 3, 16),
        "unknown output type `fiel`; did you mean `file`?",
    );
    assert!(d.notes[0].contains("known output types: file, null, relabel, stdout"));
}

#[test]
fn unknown_param_with_suggestion() {
    let (d, all) = expect(
        "unknown_param",
        "E-unknown-param",
        (&conf("unknown_param"), 4, 3),
        "unknown parameter `pth`; did you mean `path`?",
    );
    assert!(d.notes[0].starts_with("`file` takes: id, path, format"));
    // `path` is then missing too; both are reported.
    assert!(all.iter().any(|d| d.code == "E-missing-param"));
}

#[test]
fn wrong_value_type() {
    expect(
        "param_type",
        "E-param-type",
        (&conf("param_type"), 3, 10),
        "expected integer, found string",
    );
}

#[test]
fn value_not_among_choices() {
    expect(
        "param_choice",
        "E-param-type",
        (&conf("param_choice"), 3, 12),
        "did you mean \"json\"?",
    );
}

#[test]
fn missing_required_param() {
    expect(
        "missing_param",
        "E-missing-param",
        (&conf("missing_param"), 1, 12),
        "missing required parameter `path` (string)",
    );
}

#[test]
fn duplicate_param() {
    expect(
        "duplicate_param",
        "E-duplicate-param",
        (&conf("duplicate_param"), 3, 3),
        "given twice",
    );
}

#[test]
fn bad_duration_unit() {
    let (_, all) = expect(
        "bad_duration_unit",
        "E-value",
        (&conf("bad_duration_unit"), 3, 21),
        "unknown unit `sec` in `5sec`; did you mean `s`?",
    );
    assert_eq!(all.len(), 1, "no follow-up error: {}", render_all(&all));
}

#[test]
fn bad_size_unit() {
    expect(
        "bad_size_unit",
        "E-value",
        (&conf("bad_size_unit"), 3, 15),
        "did you mean `MiB`?",
    );
}

#[test]
fn malformed_pattern_points_at_the_character() {
    // `"a.{b,c"`: the unclosed `{` is the 4th character of the literal.
    expect(
        "bad_pattern",
        "E-pattern",
        (&conf("bad_pattern"), 1, 19),
        "unclosed '{'",
    );
}

#[test]
fn malformed_pattern_offset_maps_through_escapes() {
    // `"\u0061.b..c"`: the value is `a.b..c` and the fault is the first `.`
    // of `..` (offset 3 of the value), at column 17 of the source.
    expect(
        "bad_pattern_escaped",
        "E-pattern",
        (&conf("bad_pattern_escaped"), 2, 17),
        "empty tag part",
    );
}

#[test]
fn unset_env_var() {
    let (_, all) = expect(
        "unset_env",
        "E-env",
        (&conf("unset_env"), 2, 13),
        "environment variable `HTTP_LISTEN` is not set",
    );
    assert_eq!(all.len(), 1, "the default is used: {}", render_all(&all));
}

#[test]
fn include_not_found() {
    let (_, all) = expect(
        "include_not_found",
        "E-include",
        (&conf("include_not_found"), 1, 9),
        "included file `tests/diagnostics/conf.d/missing.conf` not found",
    );
    assert_eq!(all.len(), 1, "a wildcard matching nothing is fine");
}

#[test]
fn include_cycle() {
    expect(
        "include_cycle",
        "E-include",
        ("include/cycle_b.conf", 1, 9),
        "include cycle: tests/diagnostics/include_cycle.conf → tests/diagnostics/include/cycle_b.conf → tests/diagnostics/include_cycle.conf",
    );
}

#[test]
fn input_inside_a_label() {
    expect(
        "input_in_label",
        "E-label",
        (&conf("input_in_label"), 2, 9),
        "an `input` cannot be inside a label",
    );
}

#[test]
fn nested_label() {
    expect(
        "nested_label",
        "E-label",
        (&conf("nested_label"), 2, 3),
        "labels cannot be nested",
    );
}

#[test]
fn copy_with_a_param_instead_of_outputs() {
    let (_, all) = expect(
        "copy_param",
        "E-copy",
        (&conf("copy_param"), 2, 3),
        "`copy` takes output blocks, not parameters",
    );
    assert!(all
        .iter()
        .any(|d| d.message.contains("at least one output")));
}

#[test]
fn nested_block_outside_copy() {
    expect(
        "nested_block_outside_copy",
        "E-copy",
        (&conf("nested_block_outside_copy"), 3, 3),
        "a nested block is only allowed inside `copy`",
    );
}

#[test]
fn duplicate_ids() {
    let (d, _) = expect(
        "duplicate_id",
        "E-duplicate-id",
        (&conf("duplicate_id"), 6, 8),
        "node id `phones` is used twice",
    );
    assert_eq!(
        d.notes,
        vec![format!("first used at {DIR}/duplicate_id.conf:2:9")]
    );
}

#[test]
fn unknown_label() {
    expect(
        "unknown_label",
        "E-label",
        (&conf("unknown_label"), 3, 11),
        "no label named `erors`; did you mean `errors`?",
    );
}

#[test]
fn relabel_loop() {
    let (d, _) = expect(
        "relabel_cycle",
        "E-cycle",
        (&conf("relabel_cycle"), 2, 14),
        "events could loop forever",
    );
    assert!(
        d.notes[0].contains("relabel_cycle.conf:5:14"),
        "{:?}",
        d.notes
    );
}

#[test]
fn shadowed_match_is_a_warning() {
    let (d, _) = expect(
        "shadowed_match",
        "W-shadowed",
        (&conf("shadowed_match"), 2, 1),
        "never receives events",
    );
    assert!(!d.is_error());
    assert!(d.render().starts_with("warning[W-shadowed]"));
}

#[test]
fn several_errors_are_all_reported() {
    let d = run("several_errors");
    let summary: Vec<(String, usize, usize)> = d
        .iter()
        .map(|d| {
            let (_, l, c) = d.line_col().unwrap();
            (d.code.to_string(), l, c)
        })
        .collect();
    let want = [
        ("E-param-type", 4, 10),
        ("E-unknown-plugin", 6, 7),
        ("E-unknown-param", 8, 3),
        ("E-env", 11, 11),
        ("E-value", 12, 22),
        ("E-pattern", 14, 9),
        ("W-shadowed", 15, 1),
    ];
    let want: Vec<(String, usize, usize)> = want
        .iter()
        .map(|(c, l, col)| (c.to_string(), *l, *col))
        .collect();
    assert_eq!(summary, want, "{}", render_all(&d));
}

/// Every case file has a test above and a golden rendering.
#[test]
fn every_case_is_covered() {
    let src = std::fs::read_to_string("tests/diagnostics.rs").unwrap();
    for entry in std::fs::read_dir(DIR).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "conf") {
            let name = path.file_stem().unwrap().to_str().unwrap();
            assert!(
                src.contains(&format!("\"{name}\"")),
                "{name}.conf has no test"
            );
            assert!(path.with_extension("txt").exists(), "{name}.txt is missing");
        }
    }
}

#[test]
fn duplicate_label() {
    let (d, _) = expect(
        "duplicate_label",
        "E-label",
        (&conf("duplicate_label"), 4, 7),
        "label `errors` is defined twice",
    );
    assert_eq!(
        d.notes,
        vec![format!("first defined at {DIR}/duplicate_label.conf:1:7")]
    );
}

#[test]
fn copy_in_a_filter() {
    expect(
        "copy_in_filter",
        "E-copy",
        (&conf("copy_in_filter"), 1, 13),
        "belongs in a `match` block",
    );
}

#[test]
fn several_syntax_errors_in_one_file() {
    let (_, all) = expect(
        "syntax_several",
        "E-syntax",
        (&conf("syntax_several"), 6, 10),
        "expected `=` or `{`, found `json`",
    );
    let lines: Vec<usize> = all.iter().map(|d| d.line_col().unwrap().1).collect();
    assert_eq!(lines, [2, 6, 9], "{}", render_all(&all));
}
