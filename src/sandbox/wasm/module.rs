//! A user's own WASI command module as a task: the input JSON on its stdin,
//! the result JSON on its stdout, under the same limits as Python tasks.
//! (Components, the typed alternative, are in `component.rs`.)

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

/// The bytes of a Wasm payload, read from its file if it is one.
pub(super) fn load(source: &WasmSource) -> Result<Arc<[u8]>, TaskError> {
    match source {
        WasmSource::Bytes(bytes) => Ok(bytes.clone()),
        WasmSource::Path(path) => std::fs::read(path)
            .map(Arc::from)
            .map_err(|e| TaskError::invalid(format!("can't read {}: {e}", path.display()))),
    }
}

/// Runs `bytes` (a WASI command module) with `input` on its stdin.
pub(super) fn run(
    bytes: &[u8],
    input: &str,
    config: &SandboxConfig,
    cancel: &CancelToken,
) -> Result<RunReport, TaskError> {
    let pre = compiled(bytes)?;
    let mut config = config.clone();
    // The result travels on stdout: it gets the result's cap, not the log cap.
    config.max_output_bytes = host::MAX_RESULT_BYTES;
    host::run(&pre, "_start", input.as_bytes().to_vec(), &config, cancel)
}

/// The compiled form of `bytes` from `cache`, or `compile`d and kept: a
/// batch of tasks with the same module or component compiles it once.
pub(super) fn cached<T: Clone>(
    cache: &Mutex<Vec<(u64, T)>>,
    bytes: &[u8],
    compile: impl FnOnce() -> Result<T, TaskError>,
) -> Result<T, TaskError> {
    let key = {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        bytes.hash(&mut hasher);
        hasher.finish()
    };
    if let Some((_, compiled)) = lock(cache).iter().find(|(k, _)| *k == key) {
        return Ok(compiled.clone());
    }
    let compiled = compile()?;
    let mut cache = lock(cache);
    if cache.len() >= COMPILED_KEPT {
        cache.remove(0);
    }
    cache.push((key, compiled.clone()));
    Ok(compiled)
}

fn compiled(bytes: &[u8]) -> Result<InstancePre<TaskState>, TaskError> {
    static COMPILED: Mutex<Vec<(u64, InstancePre<TaskState>)>> = Mutex::new(Vec::new());
    cached(&COMPILED, bytes, || {
        let engine = engine::engine()?;
        let module = Module::new(engine, bytes)
            .map_err(|e| TaskError::invalid(format!("not a valid Wasm module: {e:#}")))?;
        if module.get_export("_start").is_none() {
            return Err(TaskError::invalid(
                "the Wasm module has no _start export (build it as a WASI command)",
            ));
        }
        let mut linker = Linker::new(engine);
        host::add_imports(&mut linker).map_err(|e| TaskError::internal(format!("{e:#}")))?;
        linker.instantiate_pre(&module).map_err(|e| {
            TaskError::invalid(format!(
                "the Wasm module imports something other than WASI preview 1: {e:#}"
            ))
        })
    })
}

/// A component's header has layer 1 (a core module's has layer 0).
pub(super) fn is_component(bytes: &[u8]) -> bool {
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
        None if report.stdout.is_truncated() => Err(too_large("module")),
        None => json_result(report.stdout.kept(), "module"),
    };
    SandboxOutput {
        result,
        stdout: String::new(),
        stderr: report.stderr.finish(),
    }
}

/// The result JSON a module or component handed back.
pub(super) fn json_result(bytes: &[u8], what: &str) -> Result<Value, TaskError> {
    if bytes.len() > host::MAX_RESULT_BYTES {
        return Err(too_large(what));
    }
    serde_json::from_slice::<Value>(bytes).map_err(|e| TaskError::Failed {
        type_name: "ValueError".into(),
        message: format!("the {what}'s result is not JSON: {e}"),
        traceback: String::new(),
    })
}

fn too_large(what: &str) -> TaskError {
    TaskError::Failed {
        type_name: "ValueError".into(),
        message: format!(
            "the {what}'s result is larger than {} MiB",
            host::MAX_RESULT_BYTES >> 20
        ),
        traceback: String::new(),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
