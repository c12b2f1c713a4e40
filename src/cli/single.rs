//! `run` (one task from a file and flags) and `exec` (one task JSON on stdin).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use lattice::executor::{ExecutorBackend, LocalExecutor};
use lattice::sandbox::{Mount, SandboxConfig};
use lattice::task::json::{outcome_to_json, parse_task};
use lattice::task::{TaskOutcome, TaskSubmission, WasmSource};
use serde_json::Value;

use super::{exit_code, parse_mount, read_source, usage, LimitArgs};

#[derive(Args)]
pub struct RunArgs {
    /// The task: a .py file, a .wasm module or component, or - for Python on stdin.
    file: PathBuf,
    /// The input, as JSON: the function is called as f(input).
    #[arg(long, value_name = "JSON", conflicts_with = "input_file")]
    input: Option<String>,
    /// Read the input JSON from a file.
    #[arg(long, value_name = "PATH")]
    input_file: Option<PathBuf>,
    /// The function to call (default: the last top-level def).
    #[arg(long, value_name = "NAME")]
    entry: Option<String>,
    /// Positional arguments, as a JSON array: the function is called as f(*args, **kwargs).
    #[arg(long, value_name = "JSON")]
    args: Option<String>,
    /// Keyword arguments, as a JSON object.
    #[arg(long, value_name = "JSON")]
    kwargs: Option<String>,
    #[command(flatten)]
    limits: LimitArgs,
    /// Allow importing this module (repeat for more); without any, all imports are allowed.
    #[arg(long = "allow-import", value_name = "MOD")]
    allow_imports: Vec<String>,
    /// Make a host path visible to the task: HOST:GUEST, or HOST:GUEST:rw for writable.
    #[arg(long = "mount", value_name = "HOST:GUEST[:rw]", value_parser = parse_mount)]
    mounts: Vec<Mount>,
    /// Let the task use the network.
    #[arg(long)]
    network: bool,
}

#[derive(Args)]
pub struct ExecArgs {
    #[command(flatten)]
    limits: LimitArgs,
}

fn parse_json(what: &str, text: &str) -> Result<Value> {
    serde_json::from_str(text).map_err(|e| usage(format!("{what} is not valid JSON: {e}")))
}

pub fn run(args: RunArgs) -> Result<i32> {
    let source = read_source(&args.file)?;
    let is_wasm = args.file.extension().is_some_and(|ext| ext == "wasm");
    let mut task = if is_wasm {
        TaskSubmission::wasm(WasmSource::Bytes(source.into()))
    } else {
        let code = String::from_utf8(source)
            .map_err(|_| usage(format!("{} is not UTF-8 text", args.file.display())))?;
        TaskSubmission::python(code)
    };
    task.id = Some(Value::String(args.file.display().to_string()));
    task.entry = args.entry;
    task.input = match (&args.input, &args.input_file) {
        (Some(text), _) => Some(parse_json("--input", text)?),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| usage(format!("can't read {}: {e}", path.display())))?;
            Some(parse_json("--input-file", &text)?)
        }
        (None, None) => None,
    };
    if let Some(text) = &args.args {
        match parse_json("--args", text)? {
            Value::Array(values) => task.args = Some(values),
            _ => return Err(usage("--args must be a JSON array")),
        }
    }
    if let Some(text) = &args.kwargs {
        match parse_json("--kwargs", text)? {
            Value::Object(map) => task.kwargs = Some(map),
            _ => return Err(usage("--kwargs must be a JSON object")),
        }
    }
    if task.input.is_some() && (task.args.is_some() || task.kwargs.is_some()) {
        return Err(usage("give either --input or --args/--kwargs, not both"));
    }
    if !args.allow_imports.is_empty() {
        task.sandbox.allowed_imports = Some(args.allow_imports);
    }
    if !args.mounts.is_empty() {
        task.sandbox.mounts = Some(args.mounts);
    }
    if args.network {
        task.sandbox.network = Some(true);
    }
    let config = args.limits.config();
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
