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

use wasmtime::{Instance, Memory, Store, TypedFunc};

use super::host::{self, AsNobody, CappedOutput, Interrupt, PoolSlot, TaskState, INTERRUPT_GRACE};
use super::{guest, snapshot};
use crate::sandbox::host_calls::HostCalls;
use crate::sandbox::limits::Limits;
use crate::sandbox::session::{SessionRun, SessionState, TierSession};
use crate::sandbox::{CancelToken, SandboxConfig};
use crate::task::TaskError;

pub(crate) struct WasmSession {
    store: Store<TaskState>,
    session: TypedFunc<(), ()>,
    memory: Memory,
    stdout: CappedOutput,
    stderr: CappedOutput,
    as_nobody: bool,
    _slot: PoolSlot,
}

/// Opens a session: a fresh instance of the snapshotted guest.
pub(crate) fn open(config: &SandboxConfig) -> Result<Box<dyn TierSession>, TaskError> {
    Ok(Box::new(SessionThread::start(instance(config)?)?))
}

/// A session restored from `bytes` (see [`snapshot`]).
pub(crate) fn restore(
    config: &SandboxConfig,
    bytes: &[u8],
) -> Result<Box<dyn TierSession>, TaskError> {
    let snapshot = snapshot::decode(bytes, guest::GUEST_HASH, host::memory_limit_bytes(config))?;
    let mut session = instance(config)?;
    session.load(&snapshot)?;
    Ok(Box::new(SessionThread::start(session)?))
}

/// A wasm session on a thread of its own (with the task stack Wasm calls
/// need), so that a call costs a channel round trip, not a thread start;
/// dropping it ends the thread and the instance with it.
struct SessionThread {
    jobs: Option<std::sync::mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

type Job = Box<dyn FnOnce(&mut WasmSession) + Send>;

impl SessionThread {
    fn start(session: WasmSession) -> Result<SessionThread, TaskError> {
        let (jobs, received) = std::sync::mpsc::channel::<Job>();
        let thread = crate::sandbox::spawn_task_thread("lattice-wasm-session".into(), move || {
            let mut session = session;
            while let Some(job) =
                crate::sandbox::receive_soon(&received, crate::sandbox::NEXT_JOB_SPIN)
            {
                job(&mut session);
            }
        })
        .map_err(|e| TaskError::unavailable(format!("can't start a session thread: {e}")))?;
        Ok(SessionThread {
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    /// Runs `job` on the session's thread and waits for it.
    fn with<R: Send + 'static>(
        &self,
        job: impl FnOnce(&mut WasmSession) -> R + Send + 'static,
    ) -> Result<R, TaskError> {
        let (reply, answer) = std::sync::mpsc::channel();
        let sent = self.jobs.as_ref().map(|jobs| {
            jobs.send(Box::new(move |session| {
                let _ = reply.send(job(session));
            }))
        });
        if !matches!(sent, Some(Ok(()))) {
            return Err(TaskError::internal("the wasm session's thread is gone"));
        }
        crate::sandbox::receive_soon(&answer, crate::sandbox::REPLY_SPIN)
            .ok_or_else(|| TaskError::internal("the wasm session's thread failed"))
    }
}

impl TierSession for SessionThread {
    fn run(
        &mut self,
        request: &str,
        config: &SandboxConfig,
        cancel: &CancelToken,
        host: HostCalls,
    ) -> SessionRun {
        let (request, config, cancel) = (request.to_owned(), config.clone(), cancel.clone());
        self.with(move |session| session.run(&request, &config, &cancel, host))
            .unwrap_or_else(|error| SessionRun {
                output: crate::sandbox::SandboxOutput::error(error),
                state: SessionState::Closed,
            })
    }

    fn snapshot(&mut self) -> Result<Vec<u8>, TaskError> {
        self.with(|session| session.snapshot())?
    }

    fn fork(&mut self, config: &SandboxConfig) -> Result<Box<dyn TierSession>, TaskError> {
        let config = config.clone();
        self.with(move |session| session.fork(&config))?
    }
}

impl Drop for SessionThread {
    fn drop(&mut self) {
        // The thread ends with its channel; its instance goes with it.
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A fresh instance of the guest for a session under `config`.
fn instance(config: &SandboxConfig) -> Result<WasmSession, TaskError> {
    let guest = guest::python()?;
    let cancel = CancelToken::new();
    let limits = Limits::start(config, &cancel);
    let slot = PoolSlot::acquire(&limits, config)?;
    let stdout = CappedOutput::new(config.max_output_bytes);
    let stderr = CappedOutput::new(config.max_output_bytes);
    let as_nobody = !config.mounts.is_empty();
    let as_task = as_nobody.then(AsNobody::enter);
    let state = host::task_state(Vec::new(), config, &stdout, &stderr);
    drop(as_task);
    let mut store = host::guarded_store(guest.pre.module().engine(), state?, config, &cancel);
    let instance: Instance = guest
        .pre
        .instantiate(&mut store)
        .map_err(|e| host::instantiation_error(&store, guest.pre.module(), config, "guest", &e))?;
    let session = instance
        .get_typed_func::<(), ()>(&mut store, "session")
        .map_err(|e| TaskError::internal(format!("the Wasm guest has no session export: {e:#}")))?;
    let memory = instance
        .get_memory(&mut store, "memory")
        .ok_or_else(|| TaskError::internal("the Wasm guest exports no memory"))?;
    if let Some(interrupt) = interrupt(&instance, &mut store) {
        store.data_mut().set_interrupt(interrupt);
    }
    Ok(WasmSession {
        store,
        session,
        memory,
        stdout,
        stderr,
        as_nobody,
        _slot: slot,
    })
}

impl WasmSession {
    /// Makes this fresh instance's memory the snapshot's.
    fn load(&mut self, snapshot: &snapshot::Snapshot) -> Result<(), TaskError> {
        let size = self.memory.data_size(&self.store);
        if snapshot.memory_len > size {
            let wasm_page = 64 << 10;
            let grow = (snapshot.memory_len - size).div_ceil(wasm_page) as u64;
            self.memory.grow(&mut self.store, grow).map_err(|_| {
                TaskError::memory_limit(
                    (snapshot.memory_len >> 20) as u64,
                    "the snapshot's memory does not fit under this session's memory limit",
                )
            })?;
        }
        let memory = self.memory.data_mut(&mut self.store);
        for (index, page) in snapshot.pages() {
            let start = index * snapshot::PAGE;
            let end = (start + page.len()).min(memory.len());
            memory[start..end].copy_from_slice(&page[..end - start]);
        }
        Ok(())
    }
}

/// The guest's base image: the memory of an instance that never ran, kept
/// for the life of the process (its pages are the module's copy-on-write
/// image, so reading them costs no copy).
fn with_base<R>(read: impl FnOnce(&[u8]) -> R) -> Result<R, TaskError> {
    struct Base {
        store: Store<TaskState>,
        memory: Memory,
    }
    static BASE: crate::sandbox::OnceOk<std::sync::Mutex<Base>> = crate::sandbox::OnceOk::new();
    let base = BASE.get_or_try_init(|| {
        let config = SandboxConfig::default();
        let session = instance(&config)?;
        // Its pool slot is held for good.
        std::mem::forget(session._slot);
        Ok::<_, TaskError>(std::sync::Mutex::new(Base {
            store: session.store,
            memory: session.memory,
        }))
    })?;
    let base = base.lock().unwrap_or_else(|e| e.into_inner());
    Ok(read(base.memory.data(&base.store)))
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
    fn snapshot(&mut self) -> Result<Vec<u8>, TaskError> {
        let memory = self.memory.data(&self.store);
        // Both memories are instances of the one guest module, mapped from
        // its image: only the pages this one holds privately can differ.
        let candidates = snapshot::private_pages(memory);
        with_base(|base| snapshot::encode(guest::GUEST_HASH, memory, base, candidates))
    }

    fn fork(&mut self, config: &SandboxConfig) -> Result<Box<dyn TierSession>, TaskError> {
        restore(config, &self.snapshot()?)
    }

    fn run(
        &mut self,
        request: &str,
        config: &SandboxConfig,
        cancel: &CancelToken,
        host: HostCalls,
    ) -> SessionRun {
        let ran = crate::sandbox::on_task_thread(|| {
            self.store
                .data_mut()
                .next_call(request.as_bytes().to_vec(), config, cancel, host);
            // The deadline must be set again: the last call may have spent it.
            self.store.set_epoch_deadline(1);
            let call = {
                let _as_task = self.as_nobody.then(AsNobody::enter);
                let limits = Limits::start(config, cancel);
                let session = &self.session;
                host::watched(&mut self.store, limits, INTERRUPT_GRACE, |store| {
                    session.call(store, ())
                })
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
