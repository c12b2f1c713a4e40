//! A user's own WASI command module as a task: the input JSON on its stdin,
//! the result JSON on its stdout, under the same limits as Python tasks.
//! (Components, the typed alternative, are in `component.rs`.)

use std::sync::{Arc, Mutex};

use wasmtime::{InstancePre, Linker, Module};

use super::code_cache::CodeCacheSlot;
use super::host::{self, RunReport, TaskState};
use super::{engine, limit_error, out_of_memory, trap_error};
use crate::sandbox::{outcome, CancelToken, SandboxConfig, SandboxOutput};
use crate::task::{TaskError, WasmSource};

/// Compiled user modules, by content hash: a batch of tasks with the same
/// module compiles it once.
const COMPILED_KEPT: usize = 16;

/// The largest Wasm payload read from a file.
const MAX_PAYLOAD_BYTES: u64 = 256 << 20;

/// The bytes of a Wasm payload, read from its file if it is one: only a
/// regular file of at most [`MAX_PAYLOAD_BYTES`] (not `/dev/zero`, not a
/// FIFO, which is opened without blocking and then refused).
pub(super) fn load(source: &WasmSource) -> Result<Arc<[u8]>, TaskError> {
    match source {
        WasmSource::Bytes(bytes) => Ok(bytes.clone()),
        WasmSource::Path(path) => read_payload(path).map(Arc::from),
    }
}

fn read_payload(path: &std::path::Path) -> Result<Vec<u8>, TaskError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let cant = |e: &dyn std::fmt::Display| {
        TaskError::invalid(format!(
            "can't read the Wasm payload {}: {e}",
            path.display()
        ))
    };
    if crate::sandbox::in_system_tree(path) {
        return Err(cant(&"no task may be given a file of /proc, /sys or /dev"));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| cant(&e))?;
    let meta = file.metadata().map_err(|e| cant(&e))?;
    if !meta.is_file() {
        return Err(cant(&"it is not a regular file"));
    }
    let too_big = || {
        cant(&format_args!(
            "it is larger than {} MiB",
            MAX_PAYLOAD_BYTES >> 20
        ))
    };
    if meta.len() > MAX_PAYLOAD_BYTES {
        return Err(too_big());
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_PAYLOAD_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| cant(&e))?;
    if bytes.len() as u64 > MAX_PAYLOAD_BYTES {
        return Err(too_big());
    }
    Ok(bytes)
}

/// Runs `bytes` (a WASI command module) with `input` on its stdin.
pub(super) fn run(
    bytes: &Arc<[u8]>,
    input: &str,
    config: &SandboxConfig,
    cancel: &CancelToken,
) -> Result<RunReport, TaskError> {
    let pre = compiled(bytes)?;
    let mut config = config.clone();
    // The result travels on stdout: it gets the result's cap, not the log cap.
    config.max_output_bytes = config.max_result_bytes;
    let no_cache = CodeCacheSlot::Closed;
    host::run(
        &pre,
        "_start",
        input.as_bytes().to_vec(),
        &config,
        cancel,
        no_cache,
    )
}

/// Compiled payloads: each by the hash of its bytes, its bytes, and what
/// they compiled to.
pub(super) type CompiledCache<T> = Mutex<Vec<(u64, Arc<[u8]>, T)>>;

/// The compiled form of `bytes` from `cache`, or `compile`d and kept: a
/// batch of tasks with the same module or component compiles it once.
/// The entry for a module is found by its hash and confirmed by its bytes:
/// a module made to collide with another's hash still gets its own code.
pub(super) fn cached<T: Clone>(
    cache: &CompiledCache<T>,
    bytes: &Arc<[u8]>,
    compile: impl FnOnce() -> Result<T, TaskError>,
) -> Result<T, TaskError> {
    let key = {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        bytes.hash(&mut hasher);
        hasher.finish()
    };
    if let Some((_, _, compiled)) = lock(cache)
        .iter()
        .find(|(k, kept, _)| *k == key && kept[..] == bytes[..])
    {
        return Ok(compiled.clone());
    }
    let compiled = compile()?;
    let mut cache = lock(cache);
    if cache.len() >= COMPILED_KEPT {
        cache.remove(0);
    }
    cache.push((key, bytes.clone(), compiled.clone()));
    Ok(compiled)
}

fn compiled(bytes: &Arc<[u8]>) -> Result<InstancePre<TaskState>, TaskError> {
    static COMPILED: CompiledCache<InstancePre<TaskState>> = Mutex::new(Vec::new());
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
/// `proc_exit(0)`) with JSON on stdout is the result; other stdout is kept
/// as its output.
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
        None if report.stdout.is_truncated() => Err(outcome::result_too_big(config)),
        None => outcome::from_json_text(report.stdout.kept(), "module", config),
    };
    let stdout = outcome::stdout_unless_result(&result, &report.stdout, config);
    SandboxOutput {
        result: out_of_memory(result, &report, config),
        stdout,
        stderr: report.stderr.finish(),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
