//! One task in one fresh Wasm instance: the store's state (WASI context,
//! memory limiter, captured output, the guest's result), the imports, and
//! the run with its limits.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use wasmtime::{Caller, InstancePre, Linker, ResourceLimiter, Store, UpdateDeadline};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use crate::sandbox::{CancelToken, OutputCapture, SandboxConfig};
use crate::task::TaskError;

/// The biggest result a guest may hand back.
pub(super) const MAX_RESULT_BYTES: usize = 64 << 20;
/// Largest table a guest may grow to (RustPython's is ~9k entries).
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

/// What the store of one task holds.
pub(super) struct TaskState {
    wasi: WasiP1Ctx,
    limiter: Limiter,
    /// The envelope the guest handed back through `lattice.result`.
    result: Option<Vec<u8>>,
    /// Why the host stopped the task, if it did.
    stop: Option<Stop>,
}

/// Why the host interrupted a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stop {
    Cancelled,
    WallTimeout,
    CpuTimeout,
}

/// Caps linear memory; remembers that a grow was refused, so a trap that
/// follows (a Rust `alloc` failure aborts with `unreachable`) is reported
/// as the memory limit it is.
struct Limiter {
    max_memory: usize,
    memory_hit: bool,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_memory {
            // Refuse the grow (memory.grow returns -1): Python raises a
            // MemoryError the task may even catch.
            self.memory_hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// A stdout/stderr for the guest that keeps the first bytes and silently
/// drops the rest, so a flood never becomes a write error in the guest.
#[derive(Clone)]
pub(super) struct CappedOutput(Arc<Mutex<OutputCapture>>);

impl CappedOutput {
    pub(super) fn new(cap: usize) -> Self {
        CappedOutput(Arc::new(Mutex::new(OutputCapture::new(cap))))
    }

    fn push(&self, bytes: &[u8]) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(bytes);
    }

    pub(super) fn take(&self) -> OutputCapture {
        std::mem::replace(
            &mut *self.0.lock().unwrap_or_else(|e| e.into_inner()),
            OutputCapture::new(0),
        )
    }
}

impl wasmtime_wasi::cli::IsTerminal for CappedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for CappedOutput {
    fn p2_stream(&self) -> Box<dyn wasmtime_wasi::p2::OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl wasmtime_wasi::p2::Pollable for CappedOutput {
    async fn ready(&mut self) {}
}

#[wasmtime_wasi::async_trait]
impl wasmtime_wasi::p2::OutputStream for CappedOutput {
    fn write(&mut self, bytes: Bytes) -> wasmtime_wasi::p2::StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> wasmtime_wasi::p2::StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> wasmtime_wasi::p2::StreamResult<usize> {
        Ok(1 << 20)
    }
}

impl tokio::io::AsyncWrite for CappedOutput {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(bytes);
        Poll::Ready(Ok(bytes.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// WASI preview 1 plus `lattice.result(ptr, len)`, through which the guest
/// hands back its envelope.
pub(super) fn add_imports(linker: &mut Linker<TaskState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p1::add_to_linker_sync(linker, |state: &mut TaskState| &mut state.wasi)?;
    linker.func_wrap(
        "lattice",
        "result",
        |mut caller: Caller<'_, TaskState>, ptr: i32, len: i32| -> wasmtime::Result<()> {
            let memory = caller
                .get_export("memory")
                .and_then(|export| export.into_memory())
                .ok_or_else(|| wasmtime::format_err!("the guest exports no memory"))?;
            let (ptr, len) = (ptr as u32 as usize, len as u32 as usize);
            if len > MAX_RESULT_BYTES {
                wasmtime::bail!("lattice: the result is larger than {MAX_RESULT_BYTES} bytes");
            }
            let data = memory
                .data(&caller)
                .get(ptr..ptr.saturating_add(len))
                .ok_or_else(|| wasmtime::format_err!("lattice: the result is out of bounds"))?
                .to_vec();
            caller.data_mut().result = Some(data);
            Ok(())
        },
    )?;
    Ok(())
}

/// The state of a store for a task (or for the snapshot run): stdin from
/// `stdin`, capped outputs, only the given mounts, no env, no args, no network.
pub(super) fn task_state(
    stdin: Vec<u8>,
    config: &SandboxConfig,
    stdout: &CappedOutput,
    stderr: &CappedOutput,
) -> Result<TaskState, TaskError> {
    let mut wasi = WasiCtxBuilder::new();
    wasi.stdin(MemoryInputPipe::new(stdin))
        .stdout(stdout.clone())
        .stderr(stderr.clone())
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    for mount in &config.mount_paths {
        let perms = if mount.writable {
            FsPerms::ReadWrite
        } else {
            FsPerms::ReadOnly
        };
        wasi.preopened_dir(&mount.host, &mount.guest, perms)
            .map_err(|e| {
                TaskError::invalid(format!(
                    "can't mount {} at {}: {e}",
                    mount.host.display(),
                    mount.guest
                ))
            })?;
    }
    Ok(TaskState {
        wasi: wasi.build_p1(),
        limiter: Limiter {
            max_memory: usize::try_from(config.max_memory_mb.saturating_mul(1 << 20))
                .unwrap_or(usize::MAX),
            memory_hit: false,
        },
        result: None,
        stop: None,
    })
}

/// How a run ended.
pub(super) struct RunReport {
    /// Err: the call trapped or failed.
    pub call: wasmtime::Result<()>,
    pub stop: Option<Stop>,
    pub memory_hit: bool,
    pub result: Option<Vec<u8>>,
    pub stdout: OutputCapture,
    pub stderr: OutputCapture,
}

/// How often the engine's epoch ticks: the resolution of time limits and cancel.
pub(super) const TICK: Duration = Duration::from_millis(10);

/// Instantiates `pre` in a fresh store and calls its export `entry`, under
/// the limits of `config`, stoppable through `cancel`.
pub(super) fn run(
    pre: &InstancePre<TaskState>,
    entry: &str,
    stdin: Vec<u8>,
    config: &SandboxConfig,
    cancel: &CancelToken,
) -> Result<RunReport, TaskError> {
    let stdout = CappedOutput::new(config.max_output_bytes);
    let stderr = CappedOutput::new(config.max_output_bytes);
    let state = task_state(stdin, config, &stdout, &stderr)?;
    let mut store = Store::new(pre.module().engine(), state);
    store.limiter(|state| &mut state.limiter);
    // The deadline must always be set (it starts at 0 and would fire at
    // once); every tick the callback checks the limits and the cancel flag.
    store.set_epoch_deadline(1);
    let started = Instant::now();
    let cpu_started = thread_cpu_time();
    let (wall, cpu) = (config.timeout, config.max_cpu_time);
    let cancel = cancel.clone();
    store.epoch_deadline_callback(move |mut context| {
        let stop = if cancel.is_cancelled() {
            Some(Stop::Cancelled)
        } else if started.elapsed() >= wall {
            Some(Stop::WallTimeout)
        } else if thread_cpu_time().saturating_sub(cpu_started) >= cpu {
            Some(Stop::CpuTimeout)
        } else {
            None
        };
        match stop {
            None => Ok(UpdateDeadline::Continue(1)),
            Some(stop) => {
                context.data_mut().stop = Some(stop);
                Err(wasmtime::Trap::Interrupt.into())
            }
        }
    });
    let instance = pre
        .instantiate(&mut store)
        .map_err(|e| TaskError::unavailable(format!("can't instantiate the Wasm module: {e:#}")))?;
    let call = instance
        .get_typed_func::<(), ()>(&mut store, entry)
        .and_then(|function| function.call(&mut store, ()));
    let state = store.data_mut();
    let report = RunReport {
        call,
        stop: state.stop,
        memory_hit: state.limiter.memory_hit,
        result: state.result.take(),
        stdout: stdout.take(),
        stderr: stderr.take(),
    };
    Ok(report)
}

/// CPU time of the calling thread.
fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    Duration::new(
        now.tv_sec.max(0) as u64,
        now.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}
