//! docs/plugins/http.md documents every parameter of both http plugins with
//! the default the code declares, and its routes examples build.

mod common;

use common::docs;
use ulog_engine::{PluginKind, Registry};

#[test]
fn every_parameter_is_documented_with_its_default() {
    let mut registry = Registry::new();
    ulog_plugins_http::register(&mut registry);
    let specs = [
        registry.spec(PluginKind::Input, "http").unwrap(),
        registry.spec(PluginKind::Output, "http").unwrap(),
    ];
    let checked = docs::check_params(&docs::read("http.md"), &specs, |_, _| false);
    assert!(checked >= 19, "only {checked} parameters checked");
}

#[test]
fn routes_examples_in_the_docs_build() {
    let (registry, _, _) = common::http_registry();
    let built = docs::check_examples(
        &docs::read("http.md"),
        &registry,
        &[("COLLECTOR_TOKEN", "t")],
    );
    assert!(built >= 3, "only {built} examples");
}
