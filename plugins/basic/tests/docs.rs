//! docs/plugins/basic.md documents every parameter of every plugin of this
//! crate with the default the code declares, and its routes examples build.

mod common;

use common::docs;
use ulog_engine::Registry;

fn registry() -> Registry {
    let mut registry = Registry::new();
    ulog_plugins_basic::register(&mut registry);
    registry
}

#[test]
fn every_parameter_is_documented_with_its_default() {
    let registry = registry();
    let specs: Vec<_> = registry.specs().filter(|s| s.name != "relabel").collect();
    assert_eq!(specs.len(), 12);
    // stdin takes the parsers' format options, documented in parsers.md.
    let formats = ulog_parsers::format_params("json");
    let checked = docs::check_params(&docs::read("basic.md"), &specs, |plugin, name| {
        plugin == "stdin"
            && !matches!(name, "format" | "message_key")
            && formats.iter().any(|p| p.name == name)
    });
    assert!(checked >= 50, "only {checked} parameters checked");
}

#[test]
fn routes_examples_in_the_docs_build() {
    let built = docs::check_examples(&docs::read("basic.md"), &registry(), &[("HOSTNAME", "h")]);
    assert!(built >= 11, "only {built} examples");
}
