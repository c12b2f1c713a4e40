//! The one Python driver every tier runs, and the request it is sent.
//!
//! The host sends the driver a request built by [`request`]; it answers
//! with an envelope that the tier turns into a result or a typed error
//! (only a result, a task error or an invalid task: the rest the host
//! decides, see `outcome`). So results and errors look the same whichever
//! interpreter ran the code.

use std::collections::BTreeMap;

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
    crate::task::json::check_script(
        task.script,
        true,
        task.stdin.is_some() || !task.files.is_empty() || !task.fetch_files.is_empty(),
        task.entry.is_some()
            || task.input.is_some()
            || task.args.is_some()
            || task.kwargs.is_some(),
    )?;
    let mut request = Map::new();
    request.insert("code".into(), Value::String(code.to_string()));
    if task.script {
        request.insert("script".into(), Value::Bool(true));
        let stdin = task.stdin.clone().unwrap_or_default();
        request.insert("stdin".into(), Value::String(stdin));
        if !task.files.is_empty() {
            let files = task
                .files
                .iter()
                .map(|(path, bytes)| {
                    (
                        path.clone(),
                        Value::String(crate::task::json::base64_encode(bytes)),
                    )
                })
                .collect();
            request.insert("files".into(), Value::Object(files));
        }
        if !task.fetch_files.is_empty() {
            let names = task
                .fetch_files
                .iter()
                .cloned()
                .map(Value::String)
                .collect();
            request.insert("fetch_files".into(), Value::Array(names));
        }
    }
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

/// How a script ended.
pub(crate) struct ScriptEnd {
    /// Ok (null) only for exit code 0; else the uncaught exception, or
    /// `SystemExit`, as a task error; a limit or a cancel as it was.
    pub result: Result<Value, TaskError>,
    /// Its exit code, if it ended by itself.
    pub exit_code: Option<i32>,
    /// The files it was asked to send back.
    pub files: BTreeMap<String, Vec<u8>>,
}

/// How a script ended, from the driver's answer `{"exit_code": n, "error"?:
/// {"type", "message", "traceback"}, "files"?: {path: base64}}` (any other
/// result, a limit say, passes through).
pub(crate) fn script_end(result: Result<Value, TaskError>) -> ScriptEnd {
    let mut end = match result {
        Ok(Value::Object(end)) => end,
        result => {
            return ScriptEnd {
                result,
                exit_code: None,
                files: BTreeMap::new(),
            }
        }
    };
    let malformed = |what: &str| ScriptEnd {
        result: Err(TaskError::internal(format!(
            "the driver's answer for a script {what}"
        ))),
        exit_code: None,
        files: BTreeMap::new(),
    };
    let Some(code) = end
        .get("exit_code")
        .and_then(Value::as_i64)
        .and_then(|c| i32::try_from(c).ok())
    else {
        return malformed("has no exit code");
    };
    let mut files = BTreeMap::new();
    if let Some(Value::Object(sent)) = end.remove("files") {
        for (path, content) in sent {
            match content.as_str().map(crate::task::json::base64_decode) {
                Some(Ok(bytes)) => files.insert(path, bytes),
                _ => return malformed("has a file that is not base64"),
            };
        }
    }
    let text = |error: &Value, field: &str| error[field].as_str().unwrap_or_default().to_string();
    let result = match end.get("error") {
        Some(error) => Err(TaskError::Failed {
            type_name: text(error, "type"),
            message: text(error, "message"),
            traceback: text(error, "traceback"),
        }),
        None if code == 0 => Ok(Value::Null),
        None => Err(TaskError::Failed {
            type_name: "SystemExit".into(),
            message: format!("the program exited with code {code}"),
            traceback: String::new(),
        }),
    };
    ScriptEnd {
        result,
        exit_code: Some(code),
        files,
    }
}

/// The stdin of a Wasm module or a command: the task's input as JSON
/// (`null` when none was given).
pub(crate) fn stdin_input(task: &TaskSubmission) -> String {
    task.input
        .as_ref()
        .map(Value::to_string)
        .unwrap_or_else(|| "null".into())
}
