//! Embedding the ulog engine: a routes file given as a string, events
//! produced by the program itself through an emitter, results read from the
//! run report.

use std::path::Path;

use ulog_engine::{Batch, Event, EventTime, Record, RunReport, Tag};

/// The pipeline this program runs: tag the events, count them in a null sink.
pub const ROUTES: &str = r#"
filter "sensor.**" record { set = { site = "mk" } }
match "sensor.**" file { path = "${EMBED_OUT:-embedded.jsonl}" }
match "**" null { }
"#;

/// Compiles [`ROUTES`], sends `n` events of our own, and stops.
pub async fn run_embedded(n: usize, base_dir: &Path) -> Result<RunReport, String> {
    let registry = ulog_plugins::registry();
    let compiled = ulog_lang::compile_str(
        "embedded.conf",
        ROUTES,
        base_dir,
        &registry,
        &ulog_lang::Options::default(),
    )
    .map_err(|diags| {
        diags
            .iter()
            .map(|d| d.render())
            .collect::<Vec<_>>()
            .join("\n")
    })?;
    let running = compiled.pipeline.start();
    let mut emitter = running.emitter();
    let events = (0..n)
        .map(|i| {
            let mut r = Record::new();
            r.insert("reading", serde_json::json!(i));
            Event::new(EventTime::now(), r)
        })
        .collect();
    emitter
        .emit(Batch::new(
            Tag::parse("sensor.owl").map_err(|e| e.to_string())?,
            events,
        ))
        .await
        .map_err(|e| e.to_string())?;
    emitter
        .emit(Batch::single(
            Tag::parse("other").map_err(|e| e.to_string())?,
            Event::new(EventTime::now(), Record::new()),
        ))
        .await
        .map_err(|e| e.to_string())?;
    running.stop();
    Ok(running.wait().await)
}

#[tokio::main]
async fn main() {
    match run_embedded(5, Path::new(".")).await {
        Ok(report) => {
            for n in &report.metrics.nodes {
                println!("{:<12} in={} out={}", n.id, n.events_in, n.events_out);
            }
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn embedded_pipeline_routes_our_events() {
        let dir = std::env::temp_dir().join(format!("ulog-embed-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let report = run_embedded(7, &dir).await.unwrap();
        let file = report.metrics.node("file#1").unwrap();
        assert_eq!(file.events_out, 7);
        assert_eq!(report.metrics.node("null#1").unwrap().events_out, 1);
        let text = std::fs::read_to_string(dir.join("embedded.jsonl")).unwrap();
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first["site"], "mk");
        assert_eq!(first["reading"], 0);
        std::fs::remove_dir_all(&dir).ok();
    }
}
