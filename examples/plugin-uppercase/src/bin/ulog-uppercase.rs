//! The standard `ulog` command with the `uppercase` output added.

fn main() -> std::process::ExitCode {
    ulog_cli::main_with(ulog_plugin_uppercase::register)
}
