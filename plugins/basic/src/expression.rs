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

/// The expression that reads `field`: a `$` path as written (`$.a.b`), any
/// other text as one top-level name (`"a.b"` is a name with a dot in it).
///
/// # Errors
/// A `$` path that is not a valid expression.
pub fn field_reader(field: &str) -> Result<Expr, CompileError> {
    if field.starts_with('$') {
        Expr::compile(field)
    } else {
        Expr::compile(&format!("$[{}]", serde_json::Value::String(field.into())))
    }
}

/// The key `expr` gives for one event, as text: a string as it is,
/// anything else as its JSON text; `Err` names `what` and the failure.
pub fn key_text(expr: &Expr, cx: &ulog_expr::Context<'_>, what: &str) -> Result<String, String> {
    match expr.eval(cx) {
        Ok(ulog_expr::Value::String(s)) => Ok(s),
        Ok(other) => Ok(other.into_json().to_string()),
        Err(e) => Err(format!("{what}: {}", e.message)),
    }
}

/// The text a regex is matched against: strings as they are, numbers,
/// booleans, lists and maps as their JSON text; `None` for null or missing.
pub fn match_text(value: ulog_expr::Value) -> Option<String> {
    match value {
        ulog_expr::Value::Null => None,
        ulog_expr::Value::String(s) => Some(s),
        other => Some(other.into_json().to_string()),
    }
}
