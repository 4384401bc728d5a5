//! An example of a plugin written outside ulog's source tree.
//!
//! It depends only on `ulog-engine` (the traits and the registry) and ships
//! its own `ulog` binary (`src/bin/ulog-uppercase.rs`) that is the standard
//! command plus this plugin, so routes files can say `match "**" uppercase {}`.

use std::io::Write;
use std::path::PathBuf;

use serde_json::Value;
use ulog_engine::{
    async_trait, Batch, BuildError, Delivery, Output, ParamKind, ParamSpec, PluginError,
    PluginKind, PluginSpec, Registry,
};

/// Writes each record as a JSON line with every string value upper-cased.
pub struct UppercaseOutput {
    path: PathBuf,
    file: Option<std::io::BufWriter<std::fs::File>>,
}

fn shout(v: &mut Value) {
    match v {
        Value::String(s) => *s = s.to_uppercase(),
        Value::Array(items) => items.iter_mut().for_each(shout),
        Value::Object(map) => map.values_mut().for_each(shout),
        _ => {}
    }
}

#[async_trait]
impl Output for UppercaseOutput {
    async fn write(&mut self, batch: &Batch) -> Delivery {
        if self.file.is_none() {
            match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
            {
                Ok(f) => self.file = Some(std::io::BufWriter::new(f)),
                Err(e) => {
                    return Delivery::Retry(PluginError::with_source(
                        format!("opening {}", self.path.display()),
                        e,
                    ))
                }
            }
        }
        let Some(file) = self.file.as_mut() else {
            return Delivery::Retry(PluginError::new("file not open"));
        };
        for event in &batch.events {
            let mut value = Value::Object(event.record.to_map().into_owned());
            shout(&mut value);
            if let Err(e) = writeln!(file, "{value}") {
                self.file = None;
                return Delivery::Retry(PluginError::with_source("writing", e));
            }
        }
        match file.flush() {
            Ok(()) => Delivery::Delivered,
            Err(e) => Delivery::Retry(PluginError::with_source("flushing", e)),
        }
    }
}

/// Registers the `uppercase` output: the one call a host program makes.
pub fn register(registry: &mut Registry) {
    registry.add_output(
        PluginSpec::new(
            PluginKind::Output,
            "uppercase",
            "Writes records as JSON lines with every string upper-cased (an example plugin).",
        )
        .param(ParamSpec::required(
            "path",
            ParamKind::Str,
            "File to append to, relative to the routes file.",
        )),
        |params, ctx| {
            let path = params.str("path")?;
            if path.is_empty() {
                return Err(BuildError::param("path", "must not be empty"));
            }
            Ok(Box::new(UppercaseOutput {
                path: ctx.resolve(path),
                file: None,
            }))
        },
    );
}
