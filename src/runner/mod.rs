//! CodeRunner semantics (design.md §4), shared by every tier.
//!
//! One Python driver ([`DRIVER`]) runs the user's code in every tier: the
//! host sends it a request built by [`request`], it answers with an
//! envelope that the tier turns into a result or a typed error (only a
//! result, a task error or an invalid task: the rest the host decides). So
//! results and errors look the same whichever interpreter ran the code.

use serde_json::{Map, Value};

use crate::sandbox::{get_sandbox_executor, SandboxConfig};
use crate::task::{TaskError, TaskSubmission};

/// The driver source: CPython runs it as a script (envelope on fd 3),
/// RustPython imports it and calls `run_request`.
pub const DRIVER: &str = include_str!("driver.py");

/// The driver request for a Python task.
pub fn request(
    code: &str,
    task: &TaskSubmission,
    config: &SandboxConfig,
) -> Result<String, TaskError> {
    let mut request = Map::new();
    request.insert("code".into(), Value::String(code.to_string()));
    if let Some(entry) = &task.entry {
        request.insert("entry".into(), Value::String(entry.clone()));
    }
    if task.input.is_some() && (task.args.is_some() || task.kwargs.is_some()) {
        return Err(TaskError::invalid(
            "give either input or args/kwargs, not both",
        ));
    }
    if let Some(input) = &task.input {
        request.insert("input".into(), input.clone());
    }
    if let Some(args) = &task.args {
        request.insert("args".into(), Value::Array(args.clone()));
    }
    if let Some(kwargs) = &task.kwargs {
        request.insert("kwargs".into(), Value::Object(kwargs.clone()));
    }
    if let Some(allowed) = &config.allowed_imports {
        request.insert(
            "allowed_imports".into(),
            Value::Array(allowed.iter().cloned().map(Value::String).collect()),
        );
    }
    serde_json::to_string(&request)
        .map_err(|e| TaskError::invalid(format!("the task's input can't be encoded: {e}")))
}

/// The stdin of a Wasm module or a command: the task's input as JSON
/// (`null` when none was given).
pub fn stdin_input(task: &TaskSubmission) -> String {
    task.input
        .as_ref()
        .map(Value::to_string)
        .unwrap_or_else(|| "null".into())
}

/// The seed's `CodeRunner(code_str, task_input_data).run()`: runs `code`
/// with `input` in the process-wide sandbox configuration.
///
/// ```no_run
/// use lattice::runner::CodeRunner;
/// use serde_json::json;
///
/// let result = CodeRunner::new("def f(x):\n    return sum(x)\n", json!([1, 2, 3])).run();
/// assert_eq!(result.unwrap(), json!(6));
/// ```
pub struct CodeRunner {
    code: String,
    input: Value,
}

impl CodeRunner {
    pub fn new(code: impl Into<String>, input: Value) -> Self {
        CodeRunner {
            code: code.into(),
            input,
        }
    }

    /// Runs the code's entry function with the input.
    pub fn run(&self) -> Result<Value, TaskError> {
        get_sandbox_executor()
            .execute(Some(&self.code), None, Some(self.input.clone()))
            .into_result()
    }
}
