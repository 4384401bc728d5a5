//! The `ulog` binary: the built-in plugins and nothing else.

fn main() -> std::process::ExitCode {
    ulog_cli::main_with(|_| {})
}
