//! Checks that a docs/plugins page matches the code: every parameter in a
//! table row with its declared default, and every routes example builds.

use std::path::Path;

use ulog_engine::{PluginSpec, Registry};

/// Parameters the engine adds to every plugin (documented in language.md).
const ENGINE_PARAMS: &[&str] = &[
    "id",
    "label",
    "retry_wait",
    "retry_max_wait",
    "retry_max_attempts",
    "retry_timeout",
    "secondary",
    "buffer",
    "queue_batches",
    "id_key",
];

/// The text of docs/plugins/`file`.
pub fn read(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../docs/plugins")
        .join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn section<'a>(doc: &'a str, heading: &str) -> &'a str {
    let start = doc
        .find(&format!("\n## {heading}\n"))
        .unwrap_or_else(|| panic!("no section `## {heading}`"));
    let rest = &doc[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    &rest[..end]
}

/// Checks that each spec's section (`` ## `input stdin` ``) has a row for
/// each parameter — except the engine's and those `elsewhere` says are
/// documented on another page — showing its default. Returns how many
/// parameters were checked.
pub fn check_params(
    doc: &str,
    specs: &[&PluginSpec],
    elsewhere: impl Fn(&str, &str) -> bool,
) -> usize {
    let mut checked = 0;
    for spec in specs {
        let text = section(doc, &format!("`{} {}`", spec.kind, spec.name));
        for p in spec
            .params
            .iter()
            .filter(|p| !ENGINE_PARAMS.contains(&p.name) && !elsewhere(spec.name, p.name))
        {
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
    checked
}

/// Compiles and builds every ```conf block of `doc` with `registry`, the
/// environment being exactly `vars`. Returns how many were built.
pub fn check_examples(doc: &str, registry: &Registry, vars: &[(&str, &str)]) -> usize {
    let options = ulog_lang::Options::with_vars(vars.iter().copied());
    let mut built = 0;
    for (i, block) in doc.split("```conf\n").skip(1).enumerate() {
        let body = &block[..block.find("```").expect("closed code block")];
        if let Err(errors) =
            ulog_lang::compile_str("example", body, Path::new("/tmp"), registry, &options)
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
    built
}
