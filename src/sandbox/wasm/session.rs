//! A session on the wasm tier: one instance of the Python guest kept
//! between calls, so its interpreter (and the session's namespace in it)
//! lives on. Each call hands the guest a request through
//! `lattice.request_read` and calls its `session` export under the call's
//! time limits; memory is capped over the session's life by the store's
//! limiter. A call stopped by a time limit or a cancel gets
//! `KeyboardInterrupt` (see `host::Interrupt`) and the session goes on with
//! what the call left; a call that trapped (it did not unwind in time, or
//! the interpreter failed) leaves the instance mid-step, so the session is
//! closed.

use wasmtime::{Instance, Store, TypedFunc};

use super::guest;
use super::host::{self, AsNobody, CappedOutput, Interrupt, PoolSlot, TaskState};
use crate::sandbox::limits::{self, Limits, Watch};
use crate::sandbox::session::{SessionRun, SessionState, TierSession};
use crate::sandbox::{CancelToken, SandboxConfig};
use crate::task::TaskError;

pub(crate) struct WasmSession {
    store: Store<TaskState>,
    session: TypedFunc<(), ()>,
    stdout: CappedOutput,
    stderr: CappedOutput,
    as_nobody: bool,
    _slot: PoolSlot,
}

/// Opens a session: a fresh instance of the snapshotted guest.
pub(crate) fn open(config: &SandboxConfig) -> Result<Box<dyn TierSession>, TaskError> {
    let guest = guest::python()?;
    let cancel = CancelToken::new();
    let limits = Limits::start(config, &cancel);
    let slot = PoolSlot::acquire(&limits, config)?;
    let stdout = CappedOutput::new(config.max_output_bytes);
    let stderr = CappedOutput::new(config.max_output_bytes);
    let as_nobody = !config.mount_paths.is_empty();
    let as_task = as_nobody.then(AsNobody::enter);
    let state = host::task_state(Vec::new(), config, &stdout, &stderr);
    drop(as_task);
    let mut store = host::guarded_store(guest.pre.module().engine(), state?, config, &cancel);
    let instance: Instance = guest
        .pre
        .instantiate(&mut store)
        .map_err(|e| TaskError::unavailable(format!("can't instantiate the Wasm guest: {e:#}")))?;
    let session = instance
        .get_typed_func::<(), ()>(&mut store, "session")
        .map_err(|e| TaskError::internal(format!("the Wasm guest has no session export: {e:#}")))?;
    if let Some(interrupt) = interrupt(&instance, &mut store) {
        store.data_mut().set_interrupt(interrupt);
    }
    Ok(Box::new(WasmSession {
        store,
        session,
        stdout,
        stderr,
        as_nobody,
        _slot: slot,
    }))
}

/// Where the guest is told to stop a call, if it found its interpreter's
/// eval breaker (else a limit traps and closes the session).
fn interrupt(instance: &Instance, store: &mut Store<TaskState>) -> Option<Interrupt> {
    let memory = instance.get_memory(&mut *store, "memory")?;
    let target = instance
        .get_typed_func::<(), i32>(&mut *store, "interrupt_target")
        .ok()?
        .call(&mut *store, ())
        .ok()? as u32 as usize;
    let word = |at: usize| -> Option<usize> {
        let bytes = memory.data(&*store).get(at..at + 4)?;
        Some(u32::from_le_bytes(bytes.try_into().ok()?) as usize)
    };
    let (breaker, flag) = (word(target)?, word(target + 4)?);
    (breaker != 0 && flag != 0).then_some(Interrupt {
        memory,
        breaker,
        flag,
    })
}

impl TierSession for WasmSession {
    fn run(&mut self, request: &str, config: &SandboxConfig, cancel: &CancelToken) -> SessionRun {
        let ran = crate::sandbox::on_task_thread(|| {
            self.store
                .data_mut()
                .next_call(request.as_bytes().to_vec(), config, cancel);
            // The deadline must be set again: the last call may have spent it.
            self.store.set_epoch_deadline(1);
            let call = {
                let _as_task = self.as_nobody.then(AsNobody::enter);
                let _watch =
                    Watch::start(limits::next_token(), Limits::start(config, cancel), None);
                self.session.call(&mut self.store, ())
            };
            let trapped = call.is_err();
            let report = self
                .store
                .data_mut()
                .report(call, &self.stdout, &self.stderr);
            (super::python_outcome(report, config), trapped)
        });
        match ran {
            Ok((output, false)) => SessionRun {
                state: crate::sandbox::session::state_after(&output),
                output,
            },
            Ok((output, true)) => SessionRun {
                output,
                state: SessionState::Closed,
            },
            Err(error) => SessionRun {
                output: crate::sandbox::SandboxOutput::error(error),
                state: SessionState::Closed,
            },
        }
    }
}
