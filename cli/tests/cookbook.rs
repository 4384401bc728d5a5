//! Every routes example in docs/cookbook.md passes `ulog check` with all the
//! built-in plugins, so the cookbook cannot drift from the plugins.

use std::path::Path;
use std::process::Command;

#[test]
fn every_cookbook_example_passes_ulog_check() {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/cookbook.md"))
            .unwrap();
    let mut examples = Vec::new();
    let mut current: Option<String> = None;
    for line in doc.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```conf") => current = Some(String::new()),
            (Some(text), "```") => {
                examples.push(std::mem::take(text));
                current = None;
            }
            (Some(text), l) => {
                text.push_str(l);
                text.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(examples.len() >= 5, "only {} examples", examples.len());
    let dir = tempfile::tempdir().unwrap();
    for (i, example) in examples.iter().enumerate() {
        let path = dir.path().join(format!("cookbook-{i}.conf"));
        std::fs::write(&path, example).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_ulog"))
            .arg("check")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "example {} does not check:\n{example}\n{}",
            i + 1,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
