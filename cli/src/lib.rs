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
    /// Reload the routes file of a running `ulog run --api ADDR`: the new file
    /// is checked first; a broken one is refused with its diagnostics and the
    /// running pipeline goes on (exit 1). SIGHUP does the same.
    Reload {
        /// The `--api` address the running ulog serves.
        #[arg(long, env = "ULOG_API")]
        api: std::net::SocketAddr,
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
        Command::Reload { api } => reload(api),
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

/// Compiles the routes file for a run, rendering diagnostics into a string
/// (a reload reports them to whoever asked, as well as to the log).
fn compile_for_run(
    file: &Path,
    registry: &Registry,
    options: &Options,
) -> Result<ulog_engine::Pipeline, String> {
    match ulog_lang::compile_file(file, registry, options) {
        Ok(c) => {
            print_diagnostics(&c.warnings);
            Ok(c.pipeline)
        }
        Err(diags) => {
            let errors = diags.iter().filter(|d| d.is_error()).count();
            let mut text: String = diags.iter().map(|d| format!("{}\n", d.render())).collect();
            text.push_str(&format!(
                "{}: {errors} error{} found\n",
                file.display(),
                if errors == 1 { "" } else { "s" }
            ));
            Err(text)
        }
    }
}

/// Opens a pipeline's file buffers, logging what they hold from before.
fn open_buffers(pipeline: &ulog_engine::Pipeline) -> Result<(), String> {
    match pipeline.open_buffers() {
        Ok(opened) => {
            for (output, chunks, bytes) in opened.into_iter().filter(|o| o.1 > 0) {
                info!(output = %output, chunks, bytes, "file buffer holds chunks from the last run; they are delivered first");
            }
            Ok(())
        }
        Err(errors) => Err(errors.iter().map(|e| format!("error: {e}\n")).collect()),
    }
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
    let pipeline = match compile_for_run(file, registry, &options) {
        Ok(p) => p,
        Err(text) => {
            eprint!("{text}");
            return Ok(ExitCode::from(1));
        }
    };
    if let Err(text) = open_buffers(&pipeline) {
        eprint!("{text}");
        return Ok(ExitCode::from(2));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ulog")
        .build()
        .context("starting the Tokio runtime")?;
    let (report, lost) = runtime.block_on(async move {
        // Bind before starting, so a taken address fails the run at once.
        let api_listener = match api {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the api address {addr}"))?,
            ),
            None => None,
        };
        let exit = tokio_util::sync::CancellationToken::new();
        let (reload_tx, mut reload_rx) = tokio::sync::mpsc::channel::<api::ReloadRequest>(4);
        let current = api::CurrentMetrics::default();
        if let Some(listener) = api_listener {
            tokio::spawn(api::serve(
                listener,
                current.source(),
                Some(reload_tx.clone()),
                exit.clone(),
            ));
        }
        {
            let exit = exit.clone();
            tokio::spawn(async move {
                wait_for_signal().await;
                info!("signal received; stopping");
                exit.cancel();
            });
        }
        tokio::spawn(forward_sighup(reload_tx));
        info!(file = %file.display(), "ulog running");
        let mut lost = 0;
        let mut pipeline = pipeline;
        let report = loop {
            let running = pipeline.start();
            current.set(running.metrics_source());
            let stop = running.shutdown_token();
            let wait = running.wait();
            tokio::pin!(wait);
            let (report, next) = loop {
                tokio::select! {
                    report = &mut wait => break (report, None),
                    _ = exit.cancelled() => {
                        stop.cancel();
                        break ((&mut wait).await, None);
                    }
                    Some(request) = reload_rx.recv() => {
                        // Check the new routes before touching what runs: a
                        // broken file is refused and the old pipeline goes on.
                        let next = match compile_for_run(file, registry, &options) {
                            Ok(p) => p,
                            Err(text) => {
                                error!("reload refused; the running pipeline is unchanged:\n{text}");
                                request.answer(Err(text));
                                continue;
                            }
                        };
                        info!("reloading: the running pipeline stops (its buffers drain or stay on disk), then the new one starts");
                        stop.cancel();
                        let report = (&mut wait).await;
                        break (report, Some((next, request)));
                    }
                }
            };
            lost += report.lost;
            let Some((next, request)) = next else {
                break report;
            };
            match open_buffers(&next) {
                Ok(()) => {
                    request.answer(Ok(format!("reloaded {}\n", file.display())));
                    info!(file = %file.display(), lost = report.lost, "reloaded");
                    pipeline = next;
                }
                Err(text) => {
                    // The old routes built once: build them again.
                    error!("reload failed after the old pipeline stopped; starting the old routes again:\n{text}");
                    request.answer(Err(text));
                    drop(next);
                    match compile_for_run(file, registry, &options) {
                        Ok(p) if open_buffers(&p).is_ok() => pipeline = p,
                        _ => {
                            error!("the routes file can no longer be run; stopping");
                            break report;
                        }
                    }
                }
            }
        };
        anyhow::Ok((report, lost))
    })?;
    let m = &report.metrics;
    info!(
        unmatched = m.unmatched,
        rejected = m.rejected,
        dropped = m.dropped,
        lost,
        left_in_file_buffers = report.left_buffered,
        "ulog stopped"
    );
    for n in &m.nodes {
        info!(node = %n.id, kind = %n.kind, events_in = n.events_in, events_out = n.events_out, failed = n.events_failed, retries = n.retries, "node totals");
    }
    if m.unmatched > 0 {
        warn!(events = m.unmatched, "events matched no `match` block (add `match \"**\" null {{}}` to discard them on purpose)");
    }
    if lost > 0 {
        error!(
            events = lost,
            "events were still queued when the shutdown timeout ran out"
        );
        return Ok(ExitCode::from(3));
    }
    Ok(ExitCode::SUCCESS)
}

/// `ulog reload`: asks the running ulog to reload and prints its answer.
fn reload(api: std::net::SocketAddr) -> anyhow::Result<ExitCode> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(api)
        .with_context(|| format!("connecting to the ulog api at {api}"))?;
    write!(
        s,
        "POST /reload HTTP/1.1\r\nHost: {api}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)
        .context("reading the answer to the reload")?;
    let status: u16 = reply
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("not an HTTP answer: {reply:?}"))?;
    let body = reply.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    if status == 200 {
        print!("{body}");
        Ok(ExitCode::SUCCESS)
    } else {
        eprint!("{body}");
        Ok(ExitCode::from(1))
    }
}

/// Turns SIGHUP into reload requests (what `systemctl reload` sends).
async fn forward_sighup(reload: tokio::sync::mpsc::Sender<api::ReloadRequest>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            info!("SIGHUP received; reloading the routes file");
            let (request, _answer) = api::ReloadRequest::new();
            if reload.send(request).await.is_err() {
                return;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = reload;
    }
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
