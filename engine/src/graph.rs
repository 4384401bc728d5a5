//! Graphviz rendering of a pipeline, for `ulog graph`.

use std::fmt::Write;

use crate::runtime::NodeIds;
use crate::spec::{FlowSpec, PipelineSpec, Site};

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn patterns(ps: &[String]) -> String {
    ps.join(" ")
}

/// Renders `spec` as a DOT digraph: inputs, one router node per flow (the top
/// level and each label), filters and outputs, with edges labelled by the tag
/// patterns that lead there. `ids` are the node ids the build resolved.
pub fn to_dot(spec: &PipelineSpec, ids: &NodeIds) -> String {
    let id = |site: Site, fallback: &str| {
        ids.ids
            .get(&site)
            .cloned()
            .unwrap_or_else(|| fallback.to_string())
    };
    let mut out = String::from("digraph ulog {\n  rankdir=LR;\n  node [fontname=\"Helvetica\"];\n");
    let flow_node = |label: Option<usize>| match label {
        None => "flow:top".to_string(),
        Some(i) => format!("flow:label:{}", spec.labels[i].name),
    };
    for (i, node) in spec.inputs.iter().enumerate() {
        let nid = id(Site::Input(i), &node.plugin);
        let _ = writeln!(
            out,
            "  {} [shape=box, style=rounded, label={}];",
            quote(&format!("in:{nid}")),
            quote(&format!("{nid}\\n(input {})", node.plugin))
        );
        let target = crate::runtime::spec_param(node, "label").and_then(|v| match v {
            crate::params::Value::Str(s) => spec.labels.iter().position(|l| &l.name == s),
            _ => None,
        });
        let _ = writeln!(
            out,
            "  {} -> {};",
            quote(&format!("in:{nid}")),
            quote(&flow_node(target))
        );
    }
    let flows = std::iter::once((None, &spec.root)).chain(
        spec.labels
            .iter()
            .enumerate()
            .map(|(i, l)| (Some(i), &l.flow)),
    );
    for (label, flow) in flows {
        write_flow(&mut out, spec, label, flow, &id, &flow_node);
    }
    out.push_str("}\n");
    out
}

fn write_flow(
    out: &mut String,
    spec: &PipelineSpec,
    label: Option<usize>,
    flow: &FlowSpec,
    id: &dyn Fn(Site, &str) -> String,
    flow_node: &dyn Fn(Option<usize>) -> String,
) {
    let me = flow_node(label);
    let title = match label {
        None => "routes (top level)".to_string(),
        Some(i) => format!("label {}", spec.labels[i].name),
    };
    let _ = writeln!(
        out,
        "  {} [shape=diamond, label={}];",
        quote(&me),
        quote(&title)
    );
    for (index, f) in flow.filters.iter().enumerate() {
        let nid = id(Site::Filter { label, index }, &f.node.plugin);
        let n = format!("filter:{nid}");
        let _ = writeln!(
            out,
            "  {} [shape=box, label={}];",
            quote(&n),
            quote(&format!("{nid}\\n(filter {})", f.node.plugin))
        );
        let _ = writeln!(
            out,
            "  {} -> {} [style=dashed, dir=both, label={}];",
            quote(&me),
            quote(&n),
            quote(&patterns(&f.patterns))
        );
    }
    for (index, m) in flow.matches.iter().enumerate() {
        for (output, node) in m.outputs.iter().enumerate() {
            let nid = id(
                Site::Output {
                    label,
                    index,
                    output,
                },
                &node.plugin,
            );
            let n = format!("out:{nid}");
            let _ = writeln!(
                out,
                "  {} [shape=box, style=bold, label={}];",
                quote(&n),
                quote(&format!("{nid}\\n(output {})", node.plugin))
            );
            let _ = writeln!(
                out,
                "  {} -> {} [label={}];",
                quote(&me),
                quote(&n),
                quote(&format!("#{} {}", index + 1, patterns(&m.patterns)))
            );
            if node.plugin == "relabel" {
                if let Some(crate::params::Value::Str(target)) =
                    crate::runtime::spec_param(node, "label")
                {
                    if let Some(t) = spec.labels.iter().position(|l| &l.name == target) {
                        let _ = writeln!(out, "  {} -> {};", quote(&n), quote(&flow_node(Some(t))));
                    }
                }
            }
        }
    }
}
