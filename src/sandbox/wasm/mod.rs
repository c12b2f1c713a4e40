//! The wasm tier (the default): Python runs in RustPython compiled to
//! wasm32-wasip1, in-process, in a fresh wasmtime instance per task, started
//! from a pre-initialised snapshot.
//!
//! Isolation is by construction: the instance sees no file but the mounts
//! (read-only unless marked), no network, no processes, no environment, no
//! arguments. Linear memory is capped by the store's limiter, wall time,
//! CPU time and cancel are checked at every epoch tick, output is capped.
//! User Wasm modules (WASI commands: input JSON on stdin, result JSON on
//! stdout) and components (the `lattice:task` world of `wit/task.wit`) run
//! under the same limits.

mod code_cache;
mod component;
mod engine;
mod files;
mod guest;
mod host;
mod module;
mod session;
mod snapshot;

use wasmtime::Trap;

use serde_json::Value;

use super::{
    outcome, reject_unsupported, CancelToken, Job, Sandbox, SandboxConfig, SandboxLevel,
    SandboxOutput, Work,
};
use crate::task::TaskError;
use host::RunReport;

pub use engine::cache_dir;
pub use guest::cache_path;

pub(crate) struct WasmSandbox;

impl Sandbox for WasmSandbox {
    fn check_available(&self) -> Result<(), TaskError> {
        engine::engine().map(|_| ())
    }

    fn check_config(&self, config: &SandboxConfig) -> Result<(), TaskError> {
        reject_unsupported(SandboxLevel::Wasm, config, true, false)?;
        if config.network {
            return Err(TaskError::invalid(
                "the wasm tier has no network at all, so network can't be enabled: use the subprocess or docker tier",
            ));
        }
        Ok(())
    }

    fn run(&self, job: &Job<'_>, cancel: &CancelToken) -> SandboxOutput {
        let config = job.config;
        let ran = match &job.work {
            Work::Python {
                request,
                module,
                scratch,
            } => crate::sandbox::on_task_thread(|| {
                let scratch = scratch
                    .then(|| host::ScratchRoot::new(config))
                    .transpose()?;
                let config = scratch.as_ref().map_or(config, |root| &root.config);
                let code_cache = module.map_or(
                    code_cache::CodeCacheSlot::Closed,
                    code_cache::CodeCacheSlot::for_task,
                );
                guest::run(request, config, cancel, code_cache)
                    .map(|report| python_outcome(report, config))
            }),
            Work::Wasm { source, input } => crate::sandbox::on_task_thread(|| {
                let bytes = module::load(source)?;
                if module::is_component(&bytes) {
                    component::run(&bytes, input, config, cancel)
                } else {
                    module::run(&bytes, input, config, cancel)
                        .map(|report| module::outcome(report, config))
                }
            }),
            Work::Command { .. } => Err(TaskError::invalid(
                "the wasm tier can't run commands (it has no processes); use the subprocess tier",
            )),
        };
        match ran.and_then(|output| output) {
            Ok(output) => output,
            Err(error) => SandboxOutput::error(error),
        }
    }

    fn open_session(
        &self,
        config: &SandboxConfig,
    ) -> Result<Box<dyn crate::sandbox::session::TierSession>, TaskError> {
        crate::sandbox::on_task_thread(|| session::open(config))?
    }

    fn restore_session(
        &self,
        config: &SandboxConfig,
        snapshot: &[u8],
    ) -> Result<Box<dyn crate::sandbox::session::TierSession>, TaskError> {
        crate::sandbox::on_task_thread(|| session::restore(config, snapshot))?
    }
}

/// Prepares the Python guest now (snapshot and compile, cached on disk), so
/// that the first task does not pay for it. Returns where it is cached.
pub fn warm() -> Result<std::path::PathBuf, TaskError> {
    crate::sandbox::on_task_thread(guest::python)??;
    guest::cache_path()
}

/// What a Python run means: the same result and error kinds as every tier.
fn python_outcome(report: RunReport, config: &SandboxConfig) -> SandboxOutput {
    let result = match limit_error(&report, config) {
        Some(error) => Err(error),
        None => match (&report.call, &report.result) {
            _ if report.result_too_big => Err(outcome::result_too_big(config)),
            (Ok(()), Some(envelope)) => outcome::from_envelope(envelope, config),
            // The driver itself failed: the task tampered with it, or a bug.
            (Ok(()), None) => Err(outcome::protocol_error(&format!(
                "the CodeRunner driver in the Wasm guest failed before it could answer (did the task replace its modules?){}",
                report.stderr.tail_note()
            ))),
            (Err(e), _) => Err(trap_error(e, &report)),
        },
    };
    SandboxOutput {
        result: out_of_memory(result, &report, config),
        stdout: report.stdout.finish(),
        stderr: report.stderr.finish(),
    }
}

/// The limit that ended the run, if the host stopped it.
fn limit_error(report: &RunReport, config: &SandboxConfig) -> Option<TaskError> {
    report.stop.map(|stop| stop.error(config))
}

/// A run that failed (an error, or a trap: an allocation failure in the
/// interpreter itself aborts) after the limiter refused to grow its memory
/// failed of the memory limit. A task that caught the `MemoryError` and
/// returned a result is fine.
fn out_of_memory(
    result: Result<Value, TaskError>,
    report: &RunReport,
    config: &SandboxConfig,
) -> Result<Value, TaskError> {
    match result {
        Err(error) if report.memory_hit && !outcome::host_decided(&error) => {
            let limit = host::memory_limit_mb(config);
            let clamped = if config.max_memory_mb > limit {
                format!(
                    "; max_memory_mb {} is clamped to the Wasm tier's {limit} MiB",
                    config.max_memory_mb
                )
            } else {
                String::new()
            };
            Err(TaskError::memory_limit(
                limit,
                &format!("the Wasm linear memory could not grow{clamped}"),
            ))
        }
        result => result,
    }
}

/// A call that failed without a limit firing: the guest exited or trapped.
fn trap_error(error: &wasmtime::Error, report: &RunReport) -> TaskError {
    if let Some(exit) = error.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return TaskError::Failed {
            type_name: "SystemExit".into(),
            message: format!(
                "the task exited with code {} before returning a result",
                exit.0
            ),
            traceback: String::new(),
        };
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::StackOverflow) => TaskError::Failed {
            type_name: "RecursionError".into(),
            message: "maximum recursion depth exceeded (the Wasm stack is full)".into(),
            traceback: String::new(),
        },
        _ => TaskError::Failed {
            type_name: "WasmTrap".into(),
            message: format!(
                "the interpreter trapped: {error:#}{}",
                report.stderr.tail_note()
            ),
            traceback: String::new(),
        },
    }
}
