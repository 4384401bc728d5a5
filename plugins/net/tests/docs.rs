//! docs/plugins/net.md documents every parameter of every plugin of this
//! crate, with the default the code declares.

use ulog_engine::{PluginKind, Registry};

fn section<'a>(doc: &'a str, heading: &str) -> &'a str {
    let start = doc
        .find(&format!("\n## {heading}\n"))
        .unwrap_or_else(|| panic!("net.md has no section `## {heading}`"));
    let rest = &doc[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    &rest[..end]
}

#[test]
fn every_parameter_is_documented_with_its_default() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/plugins/net.md");
    let doc = std::fs::read_to_string(path).expect("docs/plugins/net.md");
    let mut registry = Registry::new();
    ulog_plugins_net::register(&mut registry);
    // Options of the formats are documented in parsers.md.
    let format_options: Vec<&str> = ulog_parsers::format_params("json")
        .iter()
        .map(|p| p.name)
        .filter(|n| !matches!(*n, "format" | "message_key"))
        .collect();
    let engine_common = [
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
    let mut checked = 0;
    for (kind, name) in [
        (PluginKind::Input, "tcp"),
        (PluginKind::Input, "udp"),
        (PluginKind::Input, "syslog"),
        (PluginKind::Output, "tcp"),
    ] {
        let spec = registry.spec(kind, name).unwrap();
        let text = section(&doc, &format!("`{kind} {name}`"));
        for p in &spec.params {
            if engine_common.contains(&p.name) || format_options.contains(&p.name) {
                continue;
            }
            let row = text
                .lines()
                .find(|l| l.starts_with(&format!("| `{}` |", p.name)))
                .unwrap_or_else(|| {
                    panic!("`{kind} {name}`: parameter `{}` is not documented", p.name)
                });
            let default = match (&p.default, p.required) {
                (_, true) => "*required*".to_string(),
                (Some(v), _) => format!("`{v}`"),
                (None, _) => "unset".to_string(),
            };
            assert!(
                row.contains(&format!("| {default} |")),
                "`{kind} {name}`: `{}` should show the default {default}: {row}",
                p.name
            );
            checked += 1;
        }
    }
    assert!(checked > 30, "only {checked} parameters checked");
}
