//! Every `routes` example in docs/plugins/forward.md compiles and builds
//! with the real forward plugins, so the documentation cannot drift from the
//! parameters.

use std::path::Path;

use ulog_engine::{
    async_trait, Batch, Delivery, Output, ParamKind, ParamSpec, PluginKind, PluginSpec, Registry,
};

struct Nothing;

#[async_trait]
impl Output for Nothing {
    async fn write(&mut self, _batch: &Batch) -> Delivery {
        Delivery::Delivered
    }
}

fn examples() -> Vec<(usize, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/plugins/forward.md");
    let text = std::fs::read_to_string(&path).expect("docs/plugins/forward.md");
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        match &mut current {
            None if line.trim() == "```routes" => current = Some((i + 2, String::new())),
            Some(_) if line.trim() == "```" => out.extend(current.take()),
            Some((_, body)) => {
                body.push_str(line);
                body.push('\n');
            }
            None => {}
        }
    }
    out
}

#[test]
fn routes_examples_in_the_docs_build() {
    let mut registry = Registry::new();
    ulog_plugins_forward::register(&mut registry);
    // A stand-in for the `file` output some examples route to.
    registry.add_output(
        PluginSpec::new(PluginKind::Output, "file", "stand-in").param(ParamSpec::required(
            "path",
            ParamKind::Str,
            "where",
        )),
        |_, _| Ok(Box::new(Nothing)),
    );
    let examples = examples();
    assert!(examples.len() >= 5, "found {} examples", examples.len());
    let options = ulog_lang::Options::with_vars([("FORWARD_KEY", "k"), ("EDGE_PASSWORD", "p")]);
    for (line, body) in examples {
        if let Err(errors) =
            ulog_lang::compile_str("forward.md", &body, Path::new("/tmp"), &registry, &options)
        {
            let rendered: Vec<String> = errors.iter().map(|e| e.render()).collect();
            panic!(
                "the example at docs line {line} does not build:\n{}",
                rendered.join("\n")
            );
        }
    }
}
