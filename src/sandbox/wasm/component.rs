//! A user's Wasm component as a task: it implements the `lattice:task`
//! world (`wit/task.wit`), `run(input) -> result<string, string>`, with
//! WASI preview 2 and the same isolation and limits as every Wasm task.
//!
//! Components run through wasmtime's async API, because WASI preview 2
//! blocks (a `sleep`) inside host code, where epoch interruption can't
//! reach: a watchdog checks the limits every tick meanwhile and drops the
//! call when one fires.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime::component::{Component, InstancePre, Linker};

use super::host::{
    self, AsNobody, CappedOutput, ComponentState, Guarded, PoolSlot, RunReport, TICK,
};
use super::{engine, limit_error, module, out_of_memory, trap_error};
use crate::sandbox::limits::{Limits, Stop};
use crate::sandbox::{outcome, CancelToken, SandboxConfig, SandboxOutput};
use crate::task::TaskError;

/// The export a task component must have, as `wit/task.wit` declares it.
const RUN_EXPORT: &str = "run";

/// Runs `bytes` (a component) on `input` under `config`'s limits.
pub(super) fn run(
    bytes: &Arc<[u8]>,
    input: &str,
    config: &SandboxConfig,
    cancel: &CancelToken,
) -> Result<SandboxOutput, TaskError> {
    if let Some(mount) = config.mounts.iter().find(|m| m.writable) {
        return Err(TaskError::invalid(format!(
            "a Wasm component gets its mounts read-only (the write budget of Wasm tasks is kept on WASI preview 1, which Python and modules use): mount {} without :rw",
            mount.host.display()
        )));
    }
    let pre = compiled(bytes)?;
    let watchdog_limits = Limits::start(config, cancel);
    let _slot = PoolSlot::acquire(&watchdog_limits, config)?;
    let stdout = CappedOutput::new(config.max_output_bytes);
    let stderr = CappedOutput::new(config.max_output_bytes);
    let mounts = !config.mounts.is_empty();
    let as_task = mounts.then(AsNobody::enter);
    let state = host::component_state(config, &stdout, &stderr);
    drop(as_task);
    let mut store = host::guarded_store(pre.engine(), state?, config, cancel);
    let _as_task = mounts.then(AsNobody::enter);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| TaskError::internal(format!("can't start the async runtime: {e}")))?;
    // File operations run on this thread: a blocking one is woken at the
    // limits, and so is code that reaches no epoch check (`watched`).
    let limits = watchdog_limits.clone();
    let called = host::watched(&mut store, limits, Duration::ZERO, |store| {
        let ended = runtime.block_on(async {
            let call = async {
                let instance = match pre.instantiate_async(&mut *store).await {
                    Ok(instance) => instance,
                    // Start functions run here: a trap in one is the task's.
                    Err(e) if e.is::<wasmtime::Trap>() => return Ok(Err(e)),
                    Err(e) => {
                        return Err(TaskError::unavailable(format!(
                            "can't instantiate the Wasm component: {e:#}"
                        )))
                    }
                };
                let run = instance
                    .get_typed_func::<(&str,), (Result<String, String>,)>(&mut *store, RUN_EXPORT)
                    .map_err(|e| {
                        TaskError::invalid(format!(
                            "the component does not export `run: func(input: string) -> result<string, string>` (the lattice:task world of wit/task.wit): {e:#}"
                        ))
                    })?;
                Ok(run.call_async(&mut *store, (input,)).await.map(|(returned,)| returned))
            };
            let watchdog = async {
                loop {
                    tokio::time::sleep(TICK).await;
                    if let Some(stop) = watchdog_limits.exceeded() {
                        return stop;
                    }
                }
            };
            tokio::select! {
                called = call => Ended::Called(called),
                stop = watchdog => Ended::Stopped(stop),
            }
        });
        match ended {
            Ended::Called(Ok(called)) => called.map(Ok),
            Ended::Called(Err(error)) => Ok(Err(error)),
            Ended::Stopped(stop) => {
                store.data_mut().guard().record(stop);
                Err(wasmtime::Trap::Interrupt.into())
            }
        }
    });
    let (call, returned) = match called {
        Ok(Ok(returned)) => (Ok(()), Some(returned)),
        Ok(Err(error)) => return Err(error),
        Err(e) => (Err(e), None),
    };
    let report = RunReport::new(call, store.data_mut().guard(), None, &stdout, &stderr);
    Ok(outcome(report, returned, config))
}

/// How the call ended: returned or trapped, or stopped by the watchdog.
enum Ended {
    Called(Result<wasmtime::Result<Result<String, String>>, TaskError>),
    Stopped(Stop),
}

/// What a component run means: `ok(json)` is the result, `err(message)` a
/// task error, anything else a limit or a trap as for every Wasm task.
fn outcome(
    report: RunReport,
    returned: Option<Result<String, String>>,
    config: &SandboxConfig,
) -> SandboxOutput {
    let result = match (limit_error(&report, config), returned) {
        (Some(error), _) => Err(error),
        (None, Some(Ok(json))) => outcome::from_json_text(json.as_bytes(), "component", config),
        (None, Some(Err(message))) => Err(TaskError::Failed {
            type_name: "TaskError".into(),
            message,
            traceback: String::new(),
        }),
        (None, None) => Err(trap_error(
            report
                .call
                .as_ref()
                .expect_err("no value, so the call failed"),
            &report,
        )),
    };
    SandboxOutput {
        result: out_of_memory(result, &report, config),
        stdout: report.stdout.finish(),
        stderr: report.stderr.finish(),
    }
}

fn compiled(bytes: &Arc<[u8]>) -> Result<InstancePre<ComponentState>, TaskError> {
    static COMPILED: module::CompiledCache<InstancePre<ComponentState>> = Mutex::new(Vec::new());
    module::cached(&COMPILED, bytes, || {
        let engine = engine::engine()?;
        let component = Component::new(engine, bytes)
            .map_err(|e| TaskError::invalid(format!("not a valid Wasm component: {e:#}")))?;
        let mut linker = Linker::new(engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| TaskError::internal(format!("{e:#}")))?;
        linker.instantiate_pre(&component).map_err(|e| {
            TaskError::invalid(format!(
                "the Wasm component imports something other than WASI preview 2: {e:#}"
            ))
        })
    })
}
