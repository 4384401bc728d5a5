//! `ulog`: run, check and draw routes files.
//!
//! The command is a library so that a plugin author can ship a `ulog` with
//! their plugins added, without forking: call [`main_with`] from a two-line
//! `main` that registers them. `ulog-lang` compiles the file against the
//! registry, the engine runs it; errors are rendered here, at the edge.
#![deny(missing_docs)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing::{error, info, warn};
use ulog_engine::{PluginKind, Registry};
use ulog_lang::{Diagnostic, Options};

pub mod api;
mod reference;

/// ulog: a unified log router.
#[derive(Parser)]
#[command(name = "ulog", version, about = "ulog routes events from many sources to many destinations", long_about = None)]
struct Cli {
    /// Log level of ulog's own logs (error, warn, info, debug, trace), or a
    /// tracing filter such as `info,ulog_engine=debug`.
    #[arg(long, global = true, default_value = "info", env = "ULOG_LOG")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipeline a routes file describes until SIGINT/SIGTERM (or until
    /// every input has ended, such as stdin at EOF).
    Run {
        /// The routes file.
        file: PathBuf,
        /// How long a stop may take to drain queues before giving up on them.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        shutdown_timeout: Duration,
        /// Serve `/health` and `/metrics` (Prometheus text) on this address,
        /// such as `127.0.0.1:2020`.
        #[arg(long, env = "ULOG_API")]
        api: Option<std::net::SocketAddr>,
    },
    /// Check a routes file: exit 0 when valid, 1 when not. Warnings (such as a
    /// match block that can never receive events) do not fail the check.
    Check {
        /// The routes file.
        file: PathBuf,
    },
    /// Print the pipeline as a Graphviz DOT graph (`ulog graph r.conf | dot -Tsvg`).
    Graph {
        /// The routes file.
        file: PathBuf,
    },
    /// List the built-in plugins and their parameters.
    Plugins {
        /// Print the full parameter reference as Markdown (docs/reference.md).
        #[arg(long)]
        markdown: bool,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("not a duration: {s:?} (try 30s)"))?;
    Ok(match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        _ => return Err(format!("unknown duration unit in {s:?}: use ms, s or m")),
    })
}

/// Runs the `ulog` command line with the built-in plugins plus whatever
/// `extra` registers (out-of-tree plugins).
pub fn main_with(extra: impl FnOnce(&mut Registry)) -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    let mut registry = ulog_plugins::registry();
    extra(&mut registry);
    let result = match cli.command {
        Command::Run {
            file,
            shutdown_timeout,
            api,
        } => run(&file, &registry, shutdown_timeout, api),
        Command::Check { file } => check(&file, &registry),
        Command::Graph { file } => graph(&file, &registry),
        Command::Plugins { markdown } => {
            if markdown {
                print!("{}", reference::markdown(&registry));
            } else {
                for kind in [PluginKind::Input, PluginKind::Filter, PluginKind::Output] {
                    println!("{kind}s: {}", registry.names(kind).join(", "));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn print_diagnostics(diags: &[Diagnostic]) {
    for d in diags {
        eprintln!("{}", d.render());
    }
}

fn compile(
    file: &Path,
    registry: &Registry,
    options: &Options,
) -> Result<ulog_lang::Compiled, ExitCode> {
    match ulog_lang::compile_file(file, registry, options) {
        Ok(c) => {
            print_diagnostics(&c.warnings);
            Ok(c)
        }
        Err(diags) => {
            print_diagnostics(&diags);
            let errors = diags.iter().filter(|d| d.is_error()).count();
            eprintln!(
                "{}: {errors} error{} found",
                file.display(),
                if errors == 1 { "" } else { "s" }
            );
            Err(ExitCode::from(1))
        }
    }
}

fn check(file: &Path, registry: &Registry) -> anyhow::Result<ExitCode> {
    Ok(match compile(file, registry, &Options::default()) {
        Ok(c) => {
            let outputs: usize = std::iter::once(&c.spec.root)
                .chain(c.spec.labels.iter().map(|l| &l.flow))
                .flat_map(|f| &f.matches)
                .map(|m| m.outputs.len())
                .sum();
            println!(
                "{}: OK ({} inputs, {} outputs, {} labels)",
                file.display(),
                c.spec.inputs.len(),
                outputs,
                c.spec.labels.len()
            );
            ExitCode::SUCCESS
        }
        Err(code) => code,
    })
}

fn graph(file: &Path, registry: &Registry) -> anyhow::Result<ExitCode> {
    Ok(match compile(file, registry, &Options::default()) {
        Ok(c) => {
            print!("{}", ulog_engine::graph::to_dot(&c.spec, &c.ids));
            ExitCode::SUCCESS
        }
        Err(code) => code,
    })
}

fn run(
    file: &Path,
    registry: &Registry,
    shutdown_timeout: Duration,
    api: Option<std::net::SocketAddr>,
) -> anyhow::Result<ExitCode> {
    let options = Options {
        shutdown_timeout,
        ..Options::default()
    };
    let pipeline = match compile(file, registry, &options) {
        Ok(c) => c.pipeline,
        Err(code) => return Ok(code),
    };
    match pipeline.open_buffers() {
        Ok(opened) => {
            for (output, chunks, bytes) in opened.into_iter().filter(|o| o.1 > 0) {
                info!(output = %output, chunks, bytes, "file buffer holds chunks from the last run; they are delivered first");
            }
        }
        Err(errors) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            return Ok(ExitCode::from(2));
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ulog")
        .build()
        .context("starting the Tokio runtime")?;
    let report = runtime.block_on(async move {
        // Bind before starting, so a taken address fails the run at once.
        let api_listener = match api {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the api address {addr}"))?,
            ),
            None => None,
        };
        let started = pipeline.start();
        let stop = started.shutdown_token();
        if let Some(listener) = api_listener {
            let metrics = started.metrics_source();
            tokio::spawn(api::serve(listener, metrics, stop.clone()));
        }
        let running = started;
        tokio::spawn(async move {
            wait_for_signal().await;
            info!("signal received; stopping");
            stop.cancel();
        });
        info!(file = %file.display(), "ulog running");
        anyhow::Ok(running.wait().await)
    })?;
    let m = &report.metrics;
    info!(
        unmatched = m.unmatched,
        rejected = m.rejected,
        dropped = m.dropped,
        lost = report.lost,
        left_in_file_buffers = report.left_buffered,
        "ulog stopped"
    );
    for n in &m.nodes {
        info!(node = %n.id, kind = %n.kind, events_in = n.events_in, events_out = n.events_out, failed = n.events_failed, retries = n.retries, "node totals");
    }
    if m.unmatched > 0 {
        warn!(events = m.unmatched, "events matched no `match` block (add `match \"**\" null {{}}` to discard them on purpose)");
    }
    if report.lost > 0 {
        error!(
            events = report.lost,
            "events were still queued when the shutdown timeout ran out"
        );
        return Ok(ExitCode::from(3));
    }
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
