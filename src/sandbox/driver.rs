//! The one Python driver every tier runs, and the request it is sent.
//!
//! The host sends the driver a request built by [`request`]; it answers
//! with an envelope that the tier turns into a result or a typed error
//! (only a result, a task error or an invalid task: the rest the host
//! decides, see `outcome`). So results and errors look the same whichever
//! interpreter ran the code.

use serde_json::{Map, Value};

use super::SandboxConfig;
use crate::task::{TaskError, TaskSubmission};

/// The driver source: CPython runs it as a script (envelope on fd 3),
/// RustPython imports it and calls `run_request`.
pub(crate) const DRIVER: &str = include_str!("driver.py");

/// The driver request for a Python task.
pub(crate) fn request(
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
    if let Some(names) = super::host_calls::HostCalls::names(task.host_functions.as_ref()) {
        request.insert("functions".into(), names);
    }
    serde_json::to_string(&request)
        .map_err(|e| TaskError::invalid(format!("the task's input can't be encoded: {e}")))
}

/// The stdin of a Wasm module or a command: the task's input as JSON
/// (`null` when none was given).
pub(crate) fn stdin_input(task: &TaskSubmission) -> String {
    task.input
        .as_ref()
        .map(Value::to_string)
        .unwrap_or_else(|| "null".into())
}
