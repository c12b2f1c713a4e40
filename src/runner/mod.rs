//! CodeRunner: call a function defined by Python source with JSON input.
//!
//! The whole module is executed in a fresh namespace, then the entry
//! function (`entry`, else the last top-level `def`) is called with the
//! input; its return value comes back as JSON, an exception as a typed
//! error. Every tier runs the same driver, so results and errors look the
//! same whichever interpreter ran the code.

use serde_json::Value;

use crate::sandbox::get_sandbox_executor;
use crate::task::TaskError;

/// `CodeRunner(code_str, task_input_data).run()`: runs `code`
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
    /// A runner for `code` called with `input`.
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
