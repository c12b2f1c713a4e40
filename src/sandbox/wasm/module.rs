//! A user's own WASI command module as a task: the input JSON on its stdin,
//! the result JSON on its stdout, under the same limits as Python tasks.

use std::sync::{Arc, Mutex};

use serde_json::Value;
use wasmtime::{InstancePre, Linker, Module};

use super::host::{self, RunReport, TaskState};
use super::{engine, limit_error, trap_error};
use crate::sandbox::{CancelToken, SandboxConfig, SandboxOutput};
use crate::task::{TaskError, WasmSource};

/// Compiled user modules, by content hash: a batch of tasks with the same
/// module compiles it once.
const COMPILED_KEPT: usize = 16;

pub(super) fn run(
    source: &WasmSource,
    input: &str,
    config: &SandboxConfig,
    cancel: &CancelToken,
) -> Result<RunReport, TaskError> {
    let bytes: Arc<[u8]> = match source {
        WasmSource::Bytes(bytes) => bytes.clone(),
        WasmSource::Path(path) => std::fs::read(path)
            .map_err(|e| TaskError::invalid(format!("can't read {}: {e}", path.display())))?
            .into(),
    };
    let pre = compiled(&bytes)?;
    let mut config = config.clone();
    // The result travels on stdout: it gets the result's cap, not the log cap.
    config.max_output_bytes = host::MAX_RESULT_BYTES;
    host::run(&pre, "_start", input.as_bytes().to_vec(), &config, cancel)
}

fn compiled(bytes: &[u8]) -> Result<InstancePre<TaskState>, TaskError> {
    static COMPILED: Mutex<Vec<(u64, InstancePre<TaskState>)>> = Mutex::new(Vec::new());
    let key = {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        bytes.hash(&mut hasher);
        hasher.finish()
    };
    if let Some((_, pre)) = lock(&COMPILED).iter().find(|(k, _)| *k == key) {
        return Ok(pre.clone());
    }
    let engine = engine::engine()?;
    if is_component(bytes) {
        return Err(TaskError::invalid(
            "this is a Wasm component; give a WASI command module (wasm32-wasip1) that reads the input JSON on stdin and writes the result JSON on stdout",
        ));
    }
    let module = Module::new(engine, bytes)
        .map_err(|e| TaskError::invalid(format!("not a valid Wasm module: {e:#}")))?;
    if module.get_export("_start").is_none() {
        return Err(TaskError::invalid(
            "the Wasm module has no _start export (build it as a WASI command)",
        ));
    }
    let mut linker = Linker::new(engine);
    host::add_imports(&mut linker).map_err(|e| TaskError::internal(format!("{e:#}")))?;
    let pre = linker.instantiate_pre(&module).map_err(|e| {
        TaskError::invalid(format!(
            "the Wasm module imports something other than WASI preview 1: {e:#}"
        ))
    })?;
    let mut compiled = lock(&COMPILED);
    if compiled.len() >= COMPILED_KEPT {
        compiled.remove(0);
    }
    compiled.push((key, pre.clone()));
    Ok(pre)
}

/// A component's header has layer 1 (a core module's has layer 0).
fn is_component(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[6..8] == [1, 0]
}

/// What a module run means: exit 0 (returning from `_start` or
/// `proc_exit(0)`) with JSON on stdout is the result.
pub(super) fn outcome(report: RunReport, config: &SandboxConfig) -> SandboxOutput {
    let exited_zero = match &report.call {
        Ok(()) => true,
        Err(e) => e
            .downcast_ref::<wasmtime_wasi::I32Exit>()
            .is_some_and(|exit| exit.0 == 0),
    };
    let result = match limit_error(&report, config) {
        Some(error) => Err(error),
        None if !exited_zero => Err(trap_error(
            report.call.as_ref().expect_err("not exited zero"),
            &report,
        )),
        None if report.stdout.is_truncated() => Err(TaskError::Failed {
            type_name: "ValueError".into(),
            message: format!(
                "the module's result is larger than {} MiB",
                host::MAX_RESULT_BYTES >> 20
            ),
            traceback: String::new(),
        }),
        None => {
            serde_json::from_slice::<Value>(report.stdout.kept()).map_err(|e| TaskError::Failed {
                type_name: "ValueError".into(),
                message: format!("the module's stdout is not JSON: {e}"),
                traceback: String::new(),
            })
        }
    };
    SandboxOutput {
        result,
        stdout: String::new(),
        stderr: report.stderr.finish(),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
