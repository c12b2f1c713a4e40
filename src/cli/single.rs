//! `run` (one task from a file and flags) and `exec` (one task JSON on stdin).

use std::path::PathBuf;

use anyhow::Result;
use lattice::executor::{ExecutorBackend, LocalExecutor};
use lattice::sandbox::SandboxConfig;
use lattice::task::json::{outcome_to_json, parse_task};
use lattice::task::{TaskOutcome, TaskSubmission};

use super::args::{ExecArgs, RunArgs};
use super::{exit_code, read_source, usage};

pub fn run(args: RunArgs) -> Result<i32> {
    let source = read_source(&args.file)?;
    let input_file_text = match &args.input_file {
        Some(path) if args.input.is_none() => Some(
            std::fs::read_to_string(path)
                .map_err(|e| usage(format!("can't read {}: {e}", path.display())))?,
        ),
        _ => None,
    };
    let config = args.limits.config();
    let task = args.task(source, input_file_text.as_deref())?;
    super::prepare_wasm_if_cold(task.sandbox.tier.unwrap_or(config.level))?;
    let outcome = run_one(task, config);
    println!("{}", outcome_to_json(&outcome));
    Ok(exit_code(&outcome))
}

pub fn exec(args: ExecArgs) -> Result<i32> {
    let input = read_source(&PathBuf::from("-"))?;
    let outcome = match std::str::from_utf8(&input) {
        Ok(text) => match parse_task(text) {
            Ok(task) => run_one(task, args.limits.config()),
            Err(error) => TaskOutcome::from_error(None, error),
        },
        Err(_) => TaskOutcome::from_error(
            None,
            lattice::task::TaskError::invalid("the task on stdin is not UTF-8"),
        ),
    };
    println!("{}", outcome_to_json(&outcome));
    Ok(exit_code(&outcome))
}

/// Runs one task on a one-worker local executor.
fn run_one(task: TaskSubmission, config: SandboxConfig) -> TaskOutcome {
    let executor = LocalExecutor::new(Some(1), Some(config));
    let id = task.id.clone();
    match executor.submit(task) {
        Ok(handle) => executor.get_result(&handle),
        Err(error) => TaskOutcome::from_error(id, error),
    }
}
