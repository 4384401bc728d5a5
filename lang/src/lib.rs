//! The ulog routing language: grammar, includes, `${VAR}` interpolation,
//! diagnostics, and compilation into the engine's
//! [`PipelineSpec`](ulog_engine::spec::PipelineSpec).
//!
//! ```text
//! input http { listen = "${HTTP_LISTEN:-127.0.0.1:9880}" }
//! filter "app.**" record { set = { site = "mk" } }
//! match "app.**" file { path = "out/{tag}.jsonl" }
//! ```
//!
//! [`compile_file`] is what `ulog run` and `ulog check` call: it parses the
//! routes file and everything it includes, lowers it into a spec, has the
//! engine build (and thereby validate) the pipeline, and turns every problem,
//! whoever found it, into a [`Diagnostic`] that names `file:line:col` and
//! shows the line with a caret. The engine owns parameter validation (unknown
//! names, types, required parameters, tag patterns, ids, labels); this crate
//! only maps the engine's findings back to the source.
//!
//! ```
//! use std::path::Path;
//! use ulog_lang::{compile_str, Options};
//!
//! // A registry with only the engine's own `relabel` output.
//! let registry = ulog_engine::Registry::new();
//! let routes = "label errors {\n  match \"**\" relabl { label = \"errors\" }\n}\n";
//! let errors = compile_str("routes.conf", routes, Path::new("."), &registry, &Options::default())
//!     .unwrap_err();
//! assert_eq!(errors[0].code, "E-unknown-plugin");
//! assert_eq!(errors[0].line_col(), Some(("routes.conf".to_string(), 2, 14)));
//! assert!(errors[0].render().contains("did you mean `relabel`?"));
//! ```
//!
//! The language is described in `docs/language.md`.
#![deny(missing_docs)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ulog_engine::registry::Registry;
use ulog_engine::runtime::BuildOptions;

pub mod ast;
mod compile;
mod diag;
mod literal;
mod parser;
mod source;

pub use diag::{render_all, Diagnostic, Severity};
pub use source::{SourceFile, Span};

/// Looks up an environment variable by name: `None` when it is unset.
pub type EnvLookup = dyn Fn(&str) -> Option<String> + Send + Sync;

/// How to read a routes file.
pub struct Options {
    /// Looks up environment variables for `${VAR}` interpolation. The
    /// default reads the process environment; tests and embedders pass their
    /// own so results do not depend on the machine.
    pub env: Box<EnvLookup>,
    /// How long the built pipeline may take to stop before queued events
    /// are given up (passed to the engine's `BuildOptions`), so callers need
    /// not build a second time to change it.
    pub shutdown_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            env: Box::new(|name| std::env::var(name).ok()),
            shutdown_timeout: BuildOptions::default().shutdown_timeout,
        }
    }
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("shutdown_timeout", &self.shutdown_timeout)
            .finish_non_exhaustive()
    }
}

impl Options {
    /// Options whose environment is exactly `vars` (nothing else is set), for
    /// deterministic tests and for embedders that keep their own settings.
    pub fn with_vars<K, V>(vars: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: Into<String>,
        V: Into<String>,
    {
        let vars: std::collections::HashMap<String, String> = vars
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        Self {
            env: Box::new(move |name| vars.get(name).cloned()),
            ..Self::default()
        }
    }
}

/// A routes file compiled and built: ready to start.
pub struct Compiled {
    /// The spec the routes file describes (for `ulog graph` and tools).
    pub spec: ulog_engine::spec::PipelineSpec,
    /// The built pipeline; call `start` to run it.
    pub pipeline: ulog_engine::Pipeline,
    /// The id the engine gave each node.
    pub ids: ulog_engine::runtime::NodeIds,
    /// Things that work but are probably not meant (shadowed match blocks).
    pub warnings: Vec<Diagnostic>,
    /// The directory relative paths in parameters resolve against: the root
    /// routes file's directory.
    pub base_dir: PathBuf,
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiled")
            .field("spec", &self.spec)
            .field("warnings", &self.warnings)
            .field("base_dir", &self.base_dir)
            .finish_non_exhaustive()
    }
}

/// Reads, parses and compiles the routes file at `path` and everything it
/// includes, then builds the pipeline (building does no I/O, so this is safe
/// for `ulog check`).
///
/// # Errors
/// Every error found, plus the warnings, sorted by file and position.
pub fn compile_file(
    path: &Path,
    registry: &Registry,
    options: &Options,
) -> Result<Compiled, Vec<Diagnostic>> {
    compile::compile_file(path, registry, options)
}

/// Like [`compile_file`] for a routes file held in memory: `name` is what
/// diagnostics call it, and includes and relative paths resolve against
/// `base_dir`.
///
/// # Errors
/// As [`compile_file`].
pub fn compile_str(
    name: &str,
    source: &str,
    base_dir: &Path,
    registry: &Registry,
    options: &Options,
) -> Result<Compiled, Vec<Diagnostic>> {
    let file = Arc::new(SourceFile::new(name, None, source));
    compile::compile_source(file, base_dir, base_dir.to_path_buf(), registry, options)
}

/// Parses one file into its syntax tree, without following includes or
/// building anything: for tests, formatters and editors.
///
/// # Errors
/// Syntax, value and interpolation errors.
pub fn parse_str(
    name: &str,
    source: &str,
    options: &Options,
) -> Result<ast::File, Vec<Diagnostic>> {
    let file = Arc::new(SourceFile::new(name, None, source));
    let mut diags = Vec::new();
    match parser::parse(&file, &*options.env, &mut diags) {
        Some(f) if diags.is_empty() => Ok(f),
        _ => Err(diags),
    }
}
