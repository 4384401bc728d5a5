//! Compiling routes files into a PipelineSpec and building them: the
//! lowering of every construct, includes, labels, copy and warnings.

mod common;

use std::fs;
use std::path::Path;

use ulog_engine::spec::{FilterSpec, FlowSpec, LabelSpec, MatchSpec, NodeSpec, PipelineSpec, Site};
use ulog_engine::Value;
use ulog_lang::{compile_file, compile_str, render_all, Compiled, Options};

fn compile(text: &str) -> Compiled {
    compile_str(
        "routes.conf",
        text,
        Path::new("/srv/ulog"),
        &common::registry(),
        &common::options(),
    )
    .unwrap_or_else(|d| panic!("{}", render_all(&d)))
}

fn write(dir: &Path, name: &str, text: &str) {
    let path = dir.join(name);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

fn tags(flow: &FlowSpec) -> Vec<String> {
    flow.matches.iter().map(|m| m.patterns.join(" ")).collect()
}

#[test]
fn the_contract_example_compiles_to_its_spec() {
    let c = compile(
        r#"
input http { id = "phones"  listen = "${HTTP_LISTEN:-127.0.0.1:9880}" }
input dummy { tag = "demo.tick"  rate = 5  record = { msg = "alive", n = 1 } }
filter "home.*.owl" "home.*.nissan" record { set = { site = "mk" } }
match "app.**" "web.{api,ui}" file { path = "out/{tag}.jsonl"  format = "json" }
match "trial.**" copy {
  file   { path = "out/trial.jsonl" }
  stdout { }
}
match "**" null { }
label errors {
  match "**" file { path = "out/errors.jsonl" }
}
"#,
    );
    let want = PipelineSpec {
        inputs: vec![
            NodeSpec::new("http")
                .param("id", "phones")
                .param("listen", "127.0.0.1:9880"),
            NodeSpec::new("dummy")
                .param("tag", "demo.tick")
                .param("rate", 5)
                .param(
                    "record",
                    Value::Map(vec![
                        ("msg".into(), Value::Str("alive".into())),
                        ("n".into(), Value::Int(1)),
                    ]),
                ),
        ],
        root: FlowSpec {
            filters: vec![FilterSpec {
                patterns: vec!["home.*.owl".into(), "home.*.nissan".into()],
                node: NodeSpec::new("record").param(
                    "set",
                    Value::Map(vec![("site".into(), Value::Str("mk".into()))]),
                ),
            }],
            matches: vec![
                MatchSpec {
                    patterns: vec!["app.**".into(), "web.{api,ui}".into()],
                    outputs: vec![NodeSpec::new("file")
                        .param("path", "out/{tag}.jsonl")
                        .param("format", "json")],
                },
                MatchSpec {
                    patterns: vec!["trial.**".into()],
                    outputs: vec![
                        NodeSpec::new("file").param("path", "out/trial.jsonl"),
                        NodeSpec::new("stdout"),
                    ],
                },
                MatchSpec {
                    patterns: vec!["**".into()],
                    outputs: vec![NodeSpec::new("null")],
                },
            ],
        },
        labels: vec![LabelSpec {
            name: "errors".into(),
            flow: FlowSpec {
                filters: vec![],
                matches: vec![MatchSpec {
                    patterns: vec!["**".into()],
                    outputs: vec![NodeSpec::new("file").param("path", "out/errors.jsonl")],
                }],
            },
        }],
    };
    assert_eq!(c.spec, want);
    assert!(c.warnings.is_empty(), "{}", render_all(&c.warnings));
    assert_eq!(c.base_dir, Path::new("/srv/ulog"));
    assert_eq!(c.ids.ids[&Site::Input(0)], "phones");
    assert_eq!(c.ids.ids[&Site::Input(1)], "dummy#1");
    assert_eq!(
        c.ids.ids[&Site::Output {
            label: None,
            index: 1,
            output: 1
        }],
        "stdout#1"
    );
}

#[test]
fn warnings_come_back_with_a_successful_build() {
    let c = compile("match \"**\" null { }\nmatch \"app\" stdout { }\n");
    assert_eq!(c.warnings.len(), 1);
    assert_eq!(c.warnings[0].code, "W-shadowed");
    assert_eq!(c.warnings[0].line_col(), Some(("routes.conf".into(), 2, 1)));
}

#[test]
fn warnings_come_back_with_errors_too() {
    let d = compile_str(
        "routes.conf",
        "match \"**\" null { }\nmatch \"app\" stdout { bad = 1 }\n",
        Path::new("."),
        &common::registry(),
        &common::options(),
    )
    .unwrap_err();
    let codes: Vec<&str> = d.iter().map(|d| d.code).collect();
    assert_eq!(
        codes,
        ["W-shadowed", "E-unknown-param"],
        "{}",
        render_all(&d)
    );
}

#[test]
fn includes_follow_globs_in_name_order_relative_to_the_including_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(
        root,
        "routes.conf",
        r#"match "first" null { }
include "conf.d/*.conf"
match "last" null { }
"#,
    );
    write(root, "conf.d/b.conf", "match \"b\" null { }\n");
    write(
        root,
        "conf.d/a.conf",
        "match \"a\" null { }\ninclude \"../shared/x.conf\"\n",
    );
    write(root, "conf.d/c.txt", "this is not included\n");
    write(root, "conf.d/.hidden.conf", "not included either\n");
    write(root, "shared/x.conf", "match \"x\" null { }\n");
    let c = compile_file(
        &root.join("routes.conf"),
        &common::registry(),
        &common::options(),
    )
    .unwrap_or_else(|d| panic!("{}", render_all(&d)));
    assert_eq!(tags(&c.spec.root), ["first", "a", "x", "b", "last"]);
    assert_eq!(c.base_dir, root);
}

#[test]
fn include_inside_a_label_adds_to_that_label() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(
        root,
        "routes.conf",
        r#"input dummy { tag = "a" label = "errors" }
label errors {
  filter "**" record { }
  include "errors.d/*.conf"
}
match "**" null { }
"#,
    );
    write(
        root,
        "errors.d/out.conf",
        "filter \"e.**\" record { }\nmatch \"**\" file { path = \"errors.jsonl\" }\n",
    );
    let c = compile_file(
        &root.join("routes.conf"),
        &common::registry(),
        &common::options(),
    )
    .unwrap_or_else(|d| panic!("{}", render_all(&d)));
    assert_eq!(c.spec.labels.len(), 1);
    let errors = &c.spec.labels[0].flow;
    assert_eq!(errors.filters.len(), 2);
    assert_eq!(errors.filters[1].patterns, ["e.**"]);
    assert_eq!(tags(errors), ["**"]);
    assert_eq!(tags(&c.spec.root), ["**"]);
}

#[test]
fn an_input_in_a_file_included_inside_a_label_is_an_error_there() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(
        root,
        "routes.conf",
        "label errors {\n  include \"in.conf\"\n}\n",
    );
    write(root, "in.conf", "\n  input dummy { tag = \"x\" }\n");
    let d = compile_file(
        &root.join("routes.conf"),
        &common::registry(),
        &common::options(),
    )
    .unwrap_err();
    assert_eq!(d.len(), 1, "{}", render_all(&d));
    assert_eq!(d[0].code, "E-label");
    let (file, line, col) = d[0].line_col().unwrap();
    assert!(file.ends_with("/in.conf"), "{file}");
    assert_eq!((line, col), (2, 9));
}

#[test]
fn a_wildcard_matching_nothing_is_fine_a_missing_file_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(
        root,
        "routes.conf",
        "include \"none.d/*.conf\"\nmatch \"**\" null { }\n",
    );
    compile_file(
        &root.join("routes.conf"),
        &common::registry(),
        &common::options(),
    )
    .unwrap_or_else(|d| panic!("{}", render_all(&d)));
    write(root, "routes.conf", "include \"none.conf\"\n");
    let d = compile_file(
        &root.join("routes.conf"),
        &common::registry(),
        &common::options(),
    )
    .unwrap_err();
    assert_eq!(d[0].code, "E-include");
}

#[test]
fn include_paths_interpolate_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "routes.conf", "include \"${HOME_DIR:-x}/a.conf\"\n");
    let d = compile_file(
        &root.join("routes.conf"),
        &common::registry(),
        &common::options(),
    )
    .unwrap_err();
    // HOME_DIR is /home/u in the test environment: an absolute path.
    assert!(
        d[0].message.contains("`/home/u/a.conf` not found"),
        "{}",
        d[0].message
    );
    let options = Options::with_vars([("SUB", "sub")]);
    write(root, "routes.conf", "include \"${SUB}/*.conf\"\n");
    write(root, "sub/one.conf", "match \"one\" null { }\n");
    let c = compile_file(&root.join("routes.conf"), &common::registry(), &options)
        .unwrap_or_else(|d| panic!("{}", render_all(&d)));
    assert_eq!(tags(&c.spec.root), ["one"]);
}

#[test]
fn a_file_included_twice_without_a_cycle_is_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(
        root,
        "routes.conf",
        "include \"common.conf\"\nlabel l {\n  include \"common.conf\"\n}\n",
    );
    write(root, "common.conf", "filter \"**\" record { }\n");
    let c = compile_file(
        &root.join("routes.conf"),
        &common::registry(),
        &common::options(),
    )
    .unwrap_or_else(|d| panic!("{}", render_all(&d)));
    assert_eq!(c.spec.root.filters.len(), 1);
    assert_eq!(c.spec.labels[0].flow.filters.len(), 1);
}

#[test]
fn a_file_including_itself_is_a_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "routes.conf", "include \"*.conf\"\n");
    let d = compile_file(
        &root.join("routes.conf"),
        &common::registry(),
        &common::options(),
    )
    .unwrap_err();
    assert_eq!(d.len(), 1, "{}", render_all(&d));
    assert!(
        d[0].message.starts_with("include cycle: "),
        "{}",
        d[0].message
    );
}

#[test]
fn a_syntax_error_in_one_file_does_not_hide_errors_in_others() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(
        root,
        "routes.conf",
        "include \"d/*.conf\"\nmatch \"x\" file { path = \"${NOPE}\" }\n",
    );
    write(root, "d/1.conf", "match \"a\" null {\n");
    write(root, "d/2.conf", "match \"b\" null { } }\n");
    write(root, "d/3.conf", "match \"c\" file { path = 5sec }\n");
    let d = compile_file(
        &root.join("routes.conf"),
        &common::registry(),
        &common::options(),
    )
    .unwrap_err();
    let got: Vec<(String, &str)> = d
        .iter()
        .map(|d| {
            let (file, _, _) = d.line_col().unwrap();
            (
                Path::new(&file)
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
                d.code,
            )
        })
        .collect();
    let want: Vec<(String, &str)> = [
        ("routes.conf", "E-env"),
        ("1.conf", "E-syntax"),
        ("2.conf", "E-syntax"),
        ("3.conf", "E-value"),
    ]
    .iter()
    .map(|(f, c)| (f.to_string(), *c))
    .collect();
    assert_eq!(got, want, "{}", render_all(&d));
}

#[test]
fn compile_file_reports_an_unreadable_root() {
    let d = compile_file(
        Path::new("/nonexistent/routes.conf"),
        &common::registry(),
        &common::options(),
    )
    .unwrap_err();
    assert_eq!(d[0].code, "E-io");
    assert!(d[0].render().contains("/nonexistent/routes.conf"));
}

#[test]
fn relabel_and_input_labels_resolve() {
    let c = compile(
        r#"
input dummy { tag = "a"  label = "raw" }
label raw {
  filter "**" record { }
  match "**" relabel { label = "errors" }
}
label errors {
  match "**" stdout { }
}
"#,
    );
    assert_eq!(c.spec.labels.len(), 2);
    assert_eq!(
        c.spec.labels[0].flow.matches[0].outputs[0],
        NodeSpec::new("relabel").param("label", "errors")
    );
}

#[test]
fn grep_regex_values_reach_the_engine_as_regex() {
    let c = compile(r#"filter "**" grep { key = "msg"  regex = /^ERROR\/\d+/ }"#);
    assert_eq!(
        c.spec.root.filters[0].node.params[1],
        ("regex".to_string(), Value::Regex(r"^ERROR/\d+".into()))
    );
}

#[test]
fn values_are_typed_for_the_engine() {
    let c = compile(
        r#"match "**" file {
  path = "x"
  flush_interval = 250ms
  max_size = 8MiB
}"#,
    );
    let p = &c.spec.root.matches[0].outputs[0].params;
    assert_eq!(
        p[1].1,
        Value::Duration(std::time::Duration::from_millis(250))
    );
    assert_eq!(p[2].1, Value::Size(8 << 20));
}

#[test]
fn options_default_to_the_engine_shutdown_timeout() {
    let o = Options::default();
    assert_eq!(
        o.shutdown_timeout,
        ulog_engine::BuildOptions::default().shutdown_timeout
    );
    let o = Options {
        shutdown_timeout: std::time::Duration::from_secs(3),
        ..Options::with_vars([("A", "b")])
    };
    assert_eq!((o.env)("A").as_deref(), Some("b"));
    assert_eq!((o.env)("PATH"), None);
}

#[test]
fn a_repeated_unknown_parameter_is_reported_at_each_place() {
    let d = compile_str(
        "routes.conf",
        "match \"**\" null {\n  x = 1\n  x = 2\n}\n",
        Path::new("."),
        &common::registry(),
        &common::options(),
    )
    .unwrap_err();
    let lines: Vec<usize> = d
        .iter()
        .filter(|d| d.code == "E-unknown-param")
        .map(|d| d.line_col().unwrap().1)
        .collect();
    assert_eq!(lines, [2, 3], "{}", render_all(&d));
}

#[test]
fn an_invalid_glob_points_into_the_include_path() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "routes.conf", "include \"conf.d/[é*.conf\"\n");
    let d = compile_file(
        &root.join("routes.conf"),
        &common::registry(),
        &common::options(),
    )
    .unwrap_err();
    assert_eq!(d[0].code, "E-include");
    assert!(
        d[0].message.starts_with("invalid include glob"),
        "{}",
        d[0].message
    );
    // At the `[` that opens the bad range.
    let (_, line, col) = d[0].line_col().unwrap();
    assert_eq!((line, col), (1, 17), "{}", d[0].render());
}
