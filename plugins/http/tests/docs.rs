//! docs/plugins/http.md documents every parameter of every plugin of this
//! crate with the default the code declares, and its routes examples build.

use std::path::Path;

use ulog_engine::{PluginKind, Registry};

const DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/plugins/http.md");

/// Parameters documented elsewhere: the engine's own.
fn documented_elsewhere(name: &str) -> bool {
    [
        "id",
        "label",
        "retry_wait",
        "retry_max_wait",
        "retry_max_attempts",
        "queue_batches",
    ]
    .contains(&name)
}

fn section<'a>(doc: &'a str, heading: &str) -> &'a str {
    let start = doc
        .find(&format!("\n## {heading}\n"))
        .unwrap_or_else(|| panic!("no section `## {heading}`"));
    let rest = &doc[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    &rest[..end]
}

#[test]
fn every_parameter_is_documented_with_its_default() {
    let doc = std::fs::read_to_string(DOC).expect("docs/plugins/http.md");
    let mut registry = Registry::new();
    ulog_plugins_basic::register(&mut registry);
    ulog_plugins_http::register(&mut registry);
    let mut checked = 0;
    let mine: Vec<_> = {
        let mut r = Registry::new();
        ulog_plugins_http::register(&mut r);
        r.specs()
            .map(|s| (s.kind, s.name))
            .filter(|(_, n)| *n != "relabel")
            .collect()
    };
    for spec in registry
        .specs()
        .filter(|s| mine.contains(&(s.kind, s.name)))
    {
        let text = section(&doc, &format!("`{} {}`", spec.kind, spec.name));
        for p in spec.params.iter().filter(|p| !documented_elsewhere(p.name)) {
            let row = text
                .lines()
                .find(|l| l.starts_with(&format!("| `{}` |", p.name)))
                .unwrap_or_else(|| {
                    panic!(
                        "`{} {}`: `{}` is not documented",
                        spec.kind, spec.name, p.name
                    )
                });
            let default = match (&p.default, p.required) {
                (_, true) => "*required*".to_string(),
                (Some(v), _) => format!("`{v}`"),
                (None, _) => "unset".to_string(),
            };
            assert!(
                row.contains(&format!("| {default} |")),
                "`{}`: should show {default}: {row}",
                p.name
            );
            checked += 1;
        }
    }
    assert!(checked >= 19, "only {checked} parameters checked");
    assert_eq!(
        mine,
        [(PluginKind::Input, "http"), (PluginKind::Output, "http")]
    );
}

#[test]
fn routes_examples_in_the_docs_build() {
    let doc = std::fs::read_to_string(DOC).expect("docs/plugins/http.md");
    let mut registry = Registry::new();
    ulog_plugins_basic::register(&mut registry);
    ulog_plugins_http::register(&mut registry);
    let options = ulog_lang::Options::with_vars([("COLLECTOR_TOKEN", "t")]);
    let mut built = 0;
    for (i, block) in doc.split("```conf\n").skip(1).enumerate() {
        let body = &block[..block.find("```").expect("closed code block")];
        if let Err(errors) =
            ulog_lang::compile_str("http.md", body, Path::new("/tmp"), &registry, &options)
        {
            let rendered: Vec<String> = errors.iter().map(|e| e.render()).collect();
            panic!(
                "example {} does not build:\n{body}\n{}",
                i + 1,
                rendered.join("\n")
            );
        }
        built += 1;
    }
    assert!(built >= 3, "only {built} examples");
}
