//! Compiling the expressions that filter parameters hold, with errors that
//! point at the character at fault in the routes file.

use ulog_engine::BuildError;
use ulog_expr::{CompileError, Expr};

/// Compiles `source`, written in parameter `param` at `path` (map keys and
/// list indices from the parameter's value down to the string). A condition
/// must be able to give a boolean.
///
/// # Errors
/// The compile error, located inside the string so `ulog check` shows
/// `file:line:col` and a caret under the mistake.
pub fn compile(
    param: &str,
    path: &[&str],
    source: &str,
    condition: bool,
) -> Result<Expr, BuildError> {
    let compiled = if condition {
        Expr::compile_condition(source)
    } else {
        Expr::compile(source)
    };
    compiled.map_err(|e| located(param, path, &e))
}

fn located(param: &str, path: &[&str], e: &CompileError) -> BuildError {
    let what = match path.last() {
        Some(field) => format!("`{field}`: "),
        None => String::new(),
    };
    BuildError::param(param, format!("{what}{}", e.full_message())).at(
        path.iter().map(|s| s.to_string()).collect(),
        e.offset,
        e.len,
    )
}
