//! One task in one fresh Wasm instance: the store's state (WASI context,
//! memory limiter, captured output, the guest's result), the imports, and
//! the run with its limits.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use wasmtime::{Caller, InstancePre, Linker, ResourceLimiter, Store, UpdateDeadline};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::{FsPerms, ResourceTable, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::code_cache::CodeCacheSlot;
use super::files::{self, FileBudget};
use crate::sandbox::host_calls::HostCalls;
use crate::sandbox::limits::{self, Limits, Stop, Watch};
use crate::sandbox::{CancelToken, OutputCapture, SandboxConfig};
use crate::task::TaskError;

/// Largest table a guest may grow to (RustPython's is ~9k entries).
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

/// What the store of one task holds.
pub(super) struct TaskState {
    wasi: WasiP1Ctx,
    guard: Guard,
    /// The envelope the guest handed back through `lattice.result`.
    result: Option<Vec<u8>>,
    /// The most `lattice.result` takes; `result_too_big` says it was refused.
    result_cap: usize,
    result_too_big: bool,
    files: FileBudget,
    /// A session call's request, read by the guest through `lattice.request_read`.
    request: Vec<u8>,
    /// The call's host functions, called through `lattice.host_call`.
    host: HostCalls,
    /// The last host call's reply, read through `lattice.host_reply_read`.
    host_reply: Vec<u8>,
    /// The task's access to kept compiled code (`lattice.code_cache_*`).
    code_cache: CodeCacheSlot,
    /// The task's stdout and stderr, to see whether it printed yet.
    outputs: [CappedOutput; 2],
}

impl TaskState {
    pub(super) fn wasi(&mut self) -> &mut WasiP1Ctx {
        &mut self.wasi
    }

    pub(super) fn files(&mut self) -> &mut FileBudget {
        &mut self.files
    }

    /// Whether the task printed anything yet (a compile that warned).
    fn printed(&self) -> bool {
        self.outputs.iter().any(|output| !output.is_empty())
    }

    /// Sets up the state for one more call of a session: its request, its
    /// limits, nothing left of the call before.
    pub(super) fn next_call(
        &mut self,
        request: Vec<u8>,
        config: &SandboxConfig,
        cancel: &CancelToken,
        host: HostCalls,
    ) {
        self.request = request;
        self.host = host;
        self.host_reply = Vec::new();
        self.result = None;
        self.result_too_big = false;
        self.guard.stop = None;
        self.guard.interrupted_at = None;
        self.guard.limiter.memory_hit = false;
        self.guard.limits = Some(Limits::start(config, cancel));
    }

    /// Lets this session's calls be stopped without trapping.
    pub(super) fn set_interrupt(&mut self, interrupt: Interrupt) {
        self.guard.set_interrupt(interrupt);
    }

    /// What the last call left: its report (the outputs are taken).
    pub(super) fn report(
        &mut self,
        call: wasmtime::Result<()>,
        stdout: &CappedOutput,
        stderr: &CappedOutput,
    ) -> RunReport {
        let mut report = RunReport::new(call, &self.guard, self.result.take(), stdout, stderr);
        report.result_too_big = self.result_too_big;
        self.request = Vec::new();
        self.host = HostCalls::none();
        self.host_reply = Vec::new();
        report
    }
}

/// The host's hold on a running instance, module or component alike: its
/// memory cap, its limits, and why it stopped.
pub(super) struct Guard {
    limiter: Limiter,
    /// Why the host stopped the task, if it did.
    stop: Option<Stop>,
    /// The task's time limits and cancel flag (none while snapshotting).
    limits: Option<Limits>,
    /// How to stop a session's call without stopping its instance (see
    /// [`Interrupt`]); without it, a limit traps.
    interrupt: Option<Interrupt>,
    /// When the call was asked to stop through `interrupt`.
    interrupted_at: Option<Instant>,
    /// A user's host function is running (`lattice.host_call`): it may
    /// block past a limit, and the code's grace runs from its return.
    in_host_call: Arc<AtomicBool>,
}

/// Where a session's guest looks to be stopped: the host sets its
/// interpreter's "eval breaker" byte and its own stop flag in linear
/// memory, and the code gets `KeyboardInterrupt` at its next instruction
/// (guest/src/main.rs, `interrupt`). Code that does not unwind within
/// [`INTERRUPT_GRACE`] (it caught the exception and went on) is trapped.
#[derive(Clone, Copy)]
pub(super) struct Interrupt {
    pub memory: wasmtime::Memory,
    pub breaker: usize,
    pub flag: usize,
}

/// How long stopped code has to unwind before it is trapped.
pub(super) const INTERRUPT_GRACE: Duration = Duration::from_millis(500);

/// What to do about a limit that fired.
enum OnLimit {
    /// Ask the code to stop, and let it run on to unwind.
    Unwind(Interrupt),
    /// Stop the instance.
    Trap,
}

impl Guard {
    fn new(config: &SandboxConfig) -> Guard {
        Guard {
            limiter: Limiter {
                max_memory: memory_limit_bytes(config),
                memory_hit: false,
            },
            stop: None,
            limits: None,
            interrupt: None,
            interrupted_at: None,
            in_host_call: Arc::default(),
        }
    }

    /// Lets a session's calls be stopped through `interrupt`.
    pub(super) fn set_interrupt(&mut self, interrupt: Interrupt) {
        self.interrupt = Some(interrupt);
    }

    /// Checks the limits; when one fires, says whether to trap or to ask
    /// the code to stop and let it unwind (for [`INTERRUPT_GRACE`]).
    fn on_limit(&mut self) -> Option<OnLimit> {
        self.check_limits()?;
        let Some(interrupt) = self.interrupt else {
            return Some(OnLimit::Trap);
        };
        // Delivered again at every check of the grace period: a delivery
        // is idempotent, and one the guest consumed early (a closure it
        // ran before the stop) is not lost.
        let at = *self.interrupted_at.get_or_insert_with(Instant::now);
        Some(if at.elapsed() < INTERRUPT_GRACE {
            OnLimit::Unwind(interrupt)
        } else {
            OnLimit::Trap
        })
    }

    /// Records that the host stopped the task.
    pub(super) fn record(&mut self, stop: Stop) {
        self.stop = Some(stop);
    }

    /// Records and returns the limit that stops the task now, if any.
    fn check_limits(&mut self) -> Option<Stop> {
        let stop = self.limits.as_ref().and_then(Limits::exceeded);
        if stop.is_some() {
            self.stop = stop;
        }
        stop
    }
}

/// The memory limit of a Wasm task in MiB: `max_memory_mb`, clamped to the
/// largest linear memory an instance can have here (its pool slot).
pub(super) fn memory_limit_mb(config: &SandboxConfig) -> u64 {
    config
        .max_memory_mb
        .min(super::engine::MAX_POOLED_MEMORY as u64 >> 20)
}

/// [`memory_limit_mb`] in bytes.
pub(super) fn memory_limit_bytes(config: &SandboxConfig) -> usize {
    memory_limit_mb(config) as usize * (1 << 20)
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
pub(super) struct CappedOutput(Arc<Mutex<OutputCapture>>, usize);

impl CappedOutput {
    pub(super) fn new(cap: usize) -> Self {
        CappedOutput(Arc::new(Mutex::new(OutputCapture::new(cap))), cap)
    }

    fn push(&self, bytes: &[u8]) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(bytes);
    }

    /// Nothing was written yet.
    fn is_empty(&self) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
    }

    /// What was written so far; the next writes start a new capture (a
    /// session's next call).
    pub(super) fn take(&self) -> OutputCapture {
        std::mem::replace(
            &mut *self.0.lock().unwrap_or_else(|e| e.into_inner()),
            OutputCapture::new(self.1),
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
/// hands back its envelope, with `poll_oneoff` replaced (see
/// [`poll_oneoff`]) and the file functions budgeted (see [`files`]).
pub(super) fn add_imports(linker: &mut Linker<TaskState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p1::add_to_linker_sync(linker, |state: &mut TaskState| &mut state.wasi)?;
    linker.allow_shadowing(true);
    linker.func_wrap("wasi_snapshot_preview1", "poll_oneoff", poll_oneoff)?;
    linker.allow_shadowing(false);
    files::add_to_linker(linker)?;
    linker.func_wrap(
        "lattice",
        "result",
        |mut caller: Caller<'_, TaskState>, ptr: i32, len: i32| -> wasmtime::Result<()> {
            if len as u32 as usize > caller.data().result_cap {
                // Not copied: the host never holds more than the cap.
                caller.data_mut().result_too_big = true;
                return Ok(());
            }
            let (result, state) = guest_bytes(&mut caller, ptr, len, "result")?;
            state.result = Some(result.to_vec());
            Ok(())
        },
    )?;
    // A host-function call: the guest hands over its request and gets the
    // reply's length; `host_reply_read` copies the reply in.
    linker.func_wrap(
        "lattice",
        "host_call",
        |mut caller: Caller<'_, TaskState>, ptr: i32, len: i32| -> wasmtime::Result<i32> {
            let (request, state) = guest_bytes(&mut caller, ptr, len, "host call")?;
            state.guard.in_host_call.store(true, Ordering::Relaxed);
            state.host_reply = state.host.dispatch(request);
            state.guard.in_host_call.store(false, Ordering::Relaxed);
            Ok(state.host_reply.len() as i32)
        },
    )?;
    linker.func_wrap(
        "lattice",
        "host_reply_read",
        |mut caller: Caller<'_, TaskState>, ptr: i32| -> wasmtime::Result<()> {
            let reply = std::mem::take(&mut caller.data_mut().host_reply);
            copy_to_guest(&mut caller, ptr, &reply, "reply")
        },
    )?;
    // Kept compiled code (code_cache.rs): the driver's one question, the
    // read of a hit, the store of a compile the host wants.
    linker.func_wrap(
        "lattice",
        "code_cache_len",
        |mut caller: Caller<'_, TaskState>| -> i32 { caller.data_mut().code_cache.ask() },
    )?;
    linker.func_wrap(
        "lattice",
        "code_cache_read",
        |mut caller: Caller<'_, TaskState>, ptr: i32| -> wasmtime::Result<()> {
            match caller.data_mut().code_cache.read() {
                Some(compiled) => copy_to_guest(&mut caller, ptr, &compiled, "compiled code"),
                None => Ok(()),
            }
        },
    )?;
    linker.func_wrap(
        "lattice",
        "code_cache_store",
        |mut caller: Caller<'_, TaskState>, ptr: i32, len: i32| -> wasmtime::Result<i32> {
            let (compiled, state) = guest_bytes(&mut caller, ptr, len, "compiled code")?;
            let printed = state.printed();
            Ok(i32::from(state.code_cache.store(compiled, printed)))
        },
    )?;
    // The source's regexes (code_cache.rs): the question right after the
    // kept code was read, its answer, the store of what wanted patterns
    // compiled to, and the task's report of the patterns it compiled.
    linker.func_wrap(
        "lattice",
        "regex_cache_len",
        |mut caller: Caller<'_, TaskState>| -> i32 { caller.data_mut().code_cache.ask_regexes() },
    )?;
    linker.func_wrap(
        "lattice",
        "regex_cache_read",
        |mut caller: Caller<'_, TaskState>, ptr: i32| -> wasmtime::Result<()> {
            match caller.data_mut().code_cache.read_regexes() {
                Some(answer) => copy_to_guest(&mut caller, ptr, &answer, "regex answer"),
                None => Ok(()),
            }
        },
    )?;
    linker.func_wrap(
        "lattice",
        "regex_cache_store",
        |mut caller: Caller<'_, TaskState>, ptr: i32, len: i32| -> wasmtime::Result<i32> {
            let (compiled, state) = guest_bytes(&mut caller, ptr, len, "compiled regexes")?;
            let printed = state.printed();
            Ok(i32::from(state.code_cache.store_regexes(compiled, printed)))
        },
    )?;
    linker.func_wrap(
        "lattice",
        "regex_cache_report",
        |mut caller: Caller<'_, TaskState>, ptr: i32, len: i32| -> wasmtime::Result<i32> {
            let (records, state) = guest_bytes(&mut caller, ptr, len, "regex report")?;
            Ok(i32::from(state.code_cache.report_regexes(records)))
        },
    )?;
    linker.func_wrap(
        "lattice",
        "request_len",
        |caller: Caller<'_, TaskState>| -> i32 { caller.data().request.len() as i32 },
    )?;
    linker.func_wrap(
        "lattice",
        "request_read",
        |mut caller: Caller<'_, TaskState>, ptr: i32| -> wasmtime::Result<()> {
            let request = std::mem::take(&mut caller.data_mut().request);
            copy_to_guest(&mut caller, ptr, &request, "request")
        },
    )?;
    Ok(())
}

/// The guest's exported memory.
fn guest_memory(caller: &mut Caller<'_, TaskState>) -> wasmtime::Result<wasmtime::Memory> {
    caller
        .get_export("memory")
        .and_then(|export| export.into_memory())
        .ok_or_else(|| wasmtime::format_err!("the guest exports no memory"))
}

/// Copies `bytes` (the host's `what`) into the guest's memory at `ptr`,
/// where the guest made room for them.
fn copy_to_guest(
    caller: &mut Caller<'_, TaskState>,
    ptr: i32,
    bytes: &[u8],
    what: &str,
) -> wasmtime::Result<()> {
    let memory = guest_memory(caller)?;
    let ptr = ptr as u32 as usize;
    memory
        .data_mut(caller)
        .get_mut(ptr..ptr.saturating_add(bytes.len()))
        .ok_or_else(|| wasmtime::format_err!("lattice: the {what} buffer is out of bounds"))?
        .copy_from_slice(bytes);
    Ok(())
}

/// The guest's `len` bytes at `ptr` (its `what`), looked at in place, and
/// the task state beside them: what keeps them copies only what it keeps.
fn guest_bytes<'a>(
    caller: &'a mut Caller<'_, TaskState>,
    ptr: i32,
    len: i32,
    what: &str,
) -> wasmtime::Result<(&'a [u8], &'a mut TaskState)> {
    let (ptr, len) = (ptr as u32 as usize, len as u32 as usize);
    let memory = guest_memory(caller)?;
    let (data, state) = memory.data_and_store_mut(caller);
    let bytes = data
        .get(ptr..ptr.saturating_add(len))
        .ok_or_else(|| wasmtime::format_err!("lattice: the {what} is out of bounds"))?;
    Ok((bytes, state))
}

/// WASI errno values used by [`poll_oneoff`].
const ERRNO_SUCCESS: i32 = 0;
const ERRNO_FAULT: i32 = 21;
const ERRNO_INVAL: i32 = 28;
const ERRNO_NOTSUP: i32 = 58;
/// A subscription and an event of `poll_oneoff`, in bytes.
const SUBSCRIPTION_SIZE: usize = 48;
const EVENT_SIZE: usize = 32;

/// `poll_oneoff`, the guest's only way to block (`time.sleep`), done here so
/// that a sleeping task still honours its limits: wasmtime-wasi's version
/// blocks in host code, where epoch interruption can't reach, so
/// `time.sleep(10**9)` would outlive any timeout. We sleep in ticks and
/// check the limits between them. Every descriptor the guest has (in-memory
/// pipes, preopened files) is always ready, so an fd subscription is
/// answered at once; an absolute monotonic-clock deadline is not supported.
fn poll_oneoff(
    mut caller: Caller<'_, TaskState>,
    subscriptions: i32,
    events: i32,
    count: i32,
    event_count: i32,
) -> wasmtime::Result<i32> {
    let Some(memory) = caller.get_export("memory").and_then(|e| e.into_memory()) else {
        return Ok(ERRNO_FAULT);
    };
    let count = count as u32 as usize;
    if count == 0 {
        return Ok(ERRNO_INVAL);
    }
    let (subscriptions, events, event_count) = (
        subscriptions as u32 as usize,
        events as u32 as usize,
        event_count as u32 as usize,
    );
    let data = memory.data(&caller);
    let Some(input) = data.get(subscriptions..subscriptions + count * SUBSCRIPTION_SIZE) else {
        return Ok(ERRNO_FAULT);
    };
    let field = |bytes: &[u8], at: usize, len: usize| {
        let mut word = [0u8; 8];
        word[..len].copy_from_slice(&bytes[at..at + len]);
        u64::from_le_bytes(word)
    };
    // (userdata, kind) of the events to report, and the earliest clock deadline.
    let mut ready: Vec<(u64, u8)> = Vec::new();
    let mut clocks: Vec<(u64, Duration)> = Vec::new();
    for subscription in input.chunks_exact(SUBSCRIPTION_SIZE) {
        let userdata = field(subscription, 0, 8);
        match subscription[8] {
            0 => {
                let clock = field(subscription, 16, 4);
                let timeout = field(subscription, 24, 8);
                let absolute = field(subscription, 40, 2) & 1 == 1;
                let wait = match (clock, absolute) {
                    (_, false) => Duration::from_nanos(timeout),
                    (0, true) => {
                        let now = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .unwrap_or_default();
                        Duration::from_nanos(timeout).saturating_sub(now)
                    }
                    _ => return Ok(ERRNO_NOTSUP),
                };
                clocks.push((userdata, wait));
            }
            kind @ (1 | 2) => ready.push((userdata, kind)),
            _ => return Ok(ERRNO_INVAL),
        }
    }
    if ready.is_empty() {
        let wait = clocks
            .iter()
            .map(|(_, wait)| *wait)
            .min()
            .unwrap_or_default();
        let until = Instant::now() + wait;
        loop {
            match caller.data_mut().guard.on_limit() {
                None => {}
                Some(OnLimit::Trap) => return Err(wasmtime::Trap::Interrupt.into()),
                Some(OnLimit::Unwind(interrupt)) => {
                    // Wake up: the code is stopped at its next instruction.
                    deliver(&mut caller, interrupt);
                    break;
                }
            }
            let now = Instant::now();
            if now >= until {
                break;
            }
            std::thread::sleep((until - now).min(TICK));
        }
        ready.extend(
            clocks
                .iter()
                .filter(|(_, w)| *w <= wait)
                .map(|(userdata, _)| (*userdata, 0)),
        );
    }
    let data = memory.data_mut(&mut caller);
    let Some(output) = data.get_mut(events..events + ready.len() * EVENT_SIZE) else {
        return Ok(ERRNO_FAULT);
    };
    for (event, (userdata, kind)) in output.chunks_exact_mut(EVENT_SIZE).zip(&ready) {
        event.fill(0);
        event[..8].copy_from_slice(&userdata.to_le_bytes());
        event[10] = *kind;
    }
    let Some(slot) = data.get_mut(event_count..event_count + 4) else {
        return Ok(ERRNO_FAULT);
    };
    slot.copy_from_slice(&(ready.len() as u32).to_le_bytes());
    Ok(ERRNO_SUCCESS)
}

/// The WASI context of a task (or of the snapshot run), module or
/// component: stdin from `stdin`, capped outputs, only the given mounts
/// (read-only unless marked), no env, no args, no network.
fn wasi_context(
    stdin: Vec<u8>,
    config: &SandboxConfig,
    stdout: &CappedOutput,
    stderr: &CappedOutput,
) -> Result<WasiCtxBuilder, TaskError> {
    let mut wasi = WasiCtxBuilder::new();
    // File operations run on the task's own thread, where the limits
    // watchdog can wake one that blocks, and as the task's identity (see
    // `AsNobody`); and without a hop to a thread pool.
    wasi.allow_blocking_current_thread(true);
    wasi.stdin(MemoryInputPipe::new(stdin))
        .stdout(stdout.clone())
        .stderr(stderr.clone())
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    for mount in &config.mounts {
        let perms = if mount.writable {
            FsPerms::ReadWrite
        } else {
            FsPerms::ReadOnly
        };
        wasi.preopened_dir(&mount.host, &mount.guest, perms)
            .map_err(|e| {
                TaskError::invalid(format!(
                    "can't mount {} at {}: {e}{}",
                    mount.host.display(),
                    mount.guest,
                    if AsNobody::applies() {
                        " (Wasm tasks reach their mounts as the user nobody)"
                    } else {
                        ""
                    }
                ))
            })?;
    }
    Ok(wasi)
}

/// The state of a module's store (see [`wasi_context`]).
pub(super) fn task_state(
    stdin: Vec<u8>,
    config: &SandboxConfig,
    stdout: &CappedOutput,
    stderr: &CappedOutput,
) -> Result<TaskState, TaskError> {
    Ok(TaskState {
        wasi: wasi_context(stdin, config, stdout, stderr)?.build_p1(),
        guard: Guard::new(config),
        result: None,
        result_cap: crate::sandbox::outcome::envelope_cap(config),
        result_too_big: false,
        files: FileBudget::default(),
        request: Vec::new(),
        host: HostCalls::none(),
        host_reply: Vec::new(),
        code_cache: CodeCacheSlot::Closed,
        outputs: [stdout.clone(), stderr.clone()],
    })
}

/// What the store of one component task holds: WASI preview 2 state.
pub(super) struct ComponentState {
    wasi: WasiCtx,
    table: ResourceTable,
    guard: Guard,
}

impl WasiView for ComponentState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The state of a component's store (see [`wasi_context`]; its input is an
/// argument, so stdin is empty).
pub(super) fn component_state(
    config: &SandboxConfig,
    stdout: &CappedOutput,
    stderr: &CappedOutput,
) -> Result<ComponentState, TaskError> {
    Ok(ComponentState {
        wasi: wasi_context(Vec::new(), config, stdout, stderr)?.build(),
        table: ResourceTable::new(),
        guard: Guard::new(config),
    })
}

/// A store's state that has a [`Guard`].
pub(super) trait Guarded: Send + 'static {
    fn guard(&mut self) -> &mut Guard;
}

impl Guarded for TaskState {
    fn guard(&mut self) -> &mut Guard {
        &mut self.guard
    }
}

impl Guarded for ComponentState {
    fn guard(&mut self) -> &mut Guard {
        &mut self.guard
    }
}

/// A fresh store for one task under the limits of `config`: the memory
/// cap, and at every epoch tick a check of wall time, CPU time and cancel.
pub(super) fn guarded_store<T: Guarded>(
    engine: &wasmtime::Engine,
    mut state: T,
    config: &SandboxConfig,
    cancel: &CancelToken,
) -> Store<T> {
    state.guard().limits = Some(Limits::start(config, cancel));
    let mut store = Store::new(engine, state);
    store.limiter(|state| &mut state.guard().limiter);
    // The deadline must always be set (it starts at 0 and would fire at once).
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|mut context| match context.data_mut().guard().on_limit() {
        None => Ok(UpdateDeadline::Continue(1)),
        Some(OnLimit::Unwind(interrupt)) => {
            deliver(&mut context, interrupt);
            Ok(UpdateDeadline::Continue(1))
        }
        Some(OnLimit::Trap) => Err(wasmtime::Trap::Interrupt.into()),
    });
    store
}

/// Runs `call` (Wasm code in `store`, instantiation included) under the
/// watchdog ([`Watch`]): a blocking host call is woken at the limits, and
/// Wasm code that reaches no epoch check is stopped too. The vendored
/// Cranelift leaves out the epoch check at function entries (a loop header
/// still has one), so a call tree without loops would run on past every
/// limit: once a limit has fired for `grace` (a session's call gets
/// [`INTERRUPT_GRACE`] to unwind), the watchdog poisons the store's stack
/// limit at every tick, and the next function prologue traps. A call that
/// fails after a limit fired is reported as that limit.
pub(super) fn watched<T: Guarded, R>(
    store: &mut Store<T>,
    limits: Limits,
    grace: Duration,
    call: impl FnOnce(&mut Store<T>) -> wasmtime::Result<R>,
) -> wasmtime::Result<R> {
    let stack_limit = store.stack_limit_interrupt();
    let in_host_call = store.data_mut().guard().in_host_call.clone();
    // When the grace started (the watchdog runs the closure, one tick at a
    // time, under its lock).
    let since = std::cell::Cell::new(None::<Instant>);
    let interrupt = move || {
        // A user's host function that blocks past the limit runs no Wasm:
        // the grace starts when it returns (as a session's unwinding does).
        if in_host_call.load(Ordering::Relaxed) {
            since.set(None);
            return;
        }
        let started = since.get().unwrap_or_else(Instant::now);
        since.set(Some(started));
        if started.elapsed() >= grace {
            // SAFETY: the store outlives this function, and the watchdog
            // runs this only while the watch is registered: `finish` (or the
            // watch's drop, on a panic) removes it, under the watchdog's
            // lock, before this function returns.
            unsafe { stack_limit.interrupt() }
        }
    };
    let watch = Watch::start(limits::next_token(), limits, Some(Box::new(interrupt)));
    let called = call(store);
    let stop = watch.finish();
    store.clear_stack_limit_interrupt();
    if let (Err(_), Some(stop)) = (&called, stop) {
        let guard = store.data_mut().guard();
        if guard.stop.is_none() {
            guard.record(stop);
        }
    }
    called
}

/// Asks the guest's interpreter to stop: its stop flag and its eval
/// breaker set (the guest is not running while the host writes).
fn deliver(store: &mut impl wasmtime::AsContextMut, interrupt: Interrupt) {
    let memory = interrupt.memory.data_mut(store);
    if let Some(flag) = memory.get_mut(interrupt.flag) {
        *flag = 1;
    }
    if let Some(breaker) = memory.get_mut(interrupt.breaker) {
        *breaker |= 1;
    }
}

/// How a run ended.
pub(super) struct RunReport {
    /// Err: the call trapped or failed.
    pub call: wasmtime::Result<()>,
    pub stop: Option<Stop>,
    pub memory_hit: bool,
    /// What the guest handed back (the envelope, or a component's result).
    pub result: Option<Vec<u8>>,
    /// The guest handed back more than `max_result_bytes`.
    pub result_too_big: bool,
    pub stdout: OutputCapture,
    pub stderr: OutputCapture,
}

impl RunReport {
    pub(super) fn new(
        call: wasmtime::Result<()>,
        guard: &Guard,
        result: Option<Vec<u8>>,
        stdout: &CappedOutput,
        stderr: &CappedOutput,
    ) -> RunReport {
        RunReport {
            call,
            stop: guard.stop,
            memory_hit: guard.limiter.memory_hit,
            result,
            result_too_big: false,
            stdout: stdout.take(),
            stderr: stderr.take(),
        }
    }
}

/// How often the engine's epoch ticks: the resolution of time limits and cancel.
pub(super) const TICK: Duration = Duration::from_millis(10);

/// Instantiates `pre` in a fresh store and calls its export `entry`, under
/// the limits of `config`, stoppable through `cancel`; `code_cache` is what
/// the instance may read from and store into the kept compiled code.
pub(super) fn run(
    pre: &InstancePre<TaskState>,
    entry: &str,
    stdin: Vec<u8>,
    config: &SandboxConfig,
    cancel: &CancelToken,
    code_cache: CodeCacheSlot,
) -> Result<RunReport, TaskError> {
    let limits = Limits::start(config, cancel);
    let _slot = PoolSlot::acquire(&limits, config)?;
    let stdout = CappedOutput::new(config.max_output_bytes);
    let stderr = CappedOutput::new(config.max_output_bytes);
    let as_task = (!config.mounts.is_empty()).then(AsNobody::enter);
    let state = task_state(stdin, config, &stdout, &stderr);
    drop(as_task);
    let mut state = state?;
    state.code_cache = code_cache;
    let mut store = guarded_store(pre.module().engine(), state, config, cancel);
    let mut not_instantiated = None;
    let call = {
        let _as_task = (!config.mounts.is_empty()).then(AsNobody::enter);
        watched(&mut store, limits, Duration::ZERO, |store| {
            // A module's start function runs here: a trap in it is the task's.
            let instance = match pre.instantiate(&mut *store) {
                Ok(instance) => instance,
                Err(e) if e.is::<wasmtime::Trap>() => return Err(e),
                Err(e) => {
                    not_instantiated = Some(e);
                    return Ok(());
                }
            };
            instance
                .get_typed_func::<(), ()>(&mut *store, entry)
                .and_then(|function| function.call(&mut *store, ()))
        })
    };
    if let Some(e) = not_instantiated {
        return Err(instantiation_error(
            &store,
            pre.module(),
            config,
            "module",
            &e,
        ));
    }
    let state = store.data_mut();
    let mut report = RunReport::new(call, &state.guard, state.result.take(), &stdout, &stderr);
    report.result_too_big = state.result_too_big;
    Ok(report)
}

/// Why an instance of the Wasm `what` could not be made: a memory limit
/// below the memory it starts with (the Python guest's snapshot: ~30 MiB)
/// is that limit, reported as such, with the memory it needs; anything else
/// leaves the tier unavailable.
pub(super) fn instantiation_error(
    store: &Store<TaskState>,
    module: &wasmtime::Module,
    config: &SandboxConfig,
    what: &str,
    error: &wasmtime::Error,
) -> TaskError {
    if !store.data().guard.limiter.memory_hit {
        return TaskError::unavailable(format!("can't instantiate the Wasm {what}: {error:#}"));
    }
    let starts_with = module
        .exports()
        .map(|export| export.ty())
        .chain(module.imports().map(|import| import.ty()))
        .find_map(|ty| {
            ty.memory()
                .map(|memory| memory.minimum() * memory.page_size())
        });
    let detail = match starts_with {
        Some(bytes) => format!(
            "the Wasm {what} needs {:.1} MiB of memory to start: give it at least {} MiB",
            bytes as f64 / f64::from(1 << 20),
            bytes.div_ceil(1 << 20)
        ),
        None => format!("the Wasm {what} needs more memory than that to start: {error:#}"),
    };
    TaskError::memory_limit(memory_limit_mb(config), &detail)
}

/// Instances that may live at once: the pooling allocator's slots. A task
/// that finds none free waits for one, within its own limits.
pub(super) struct PoolSlot;

static SLOTS_IN_USE: Mutex<u32> = Mutex::new(0);
static SLOT_FREED: std::sync::Condvar = std::sync::Condvar::new();

impl PoolSlot {
    pub(super) fn acquire(limits: &Limits, config: &SandboxConfig) -> Result<PoolSlot, TaskError> {
        let mut in_use = SLOTS_IN_USE.lock().unwrap_or_else(|e| e.into_inner());
        while *in_use >= super::engine::POOL_SLOTS {
            if let Some(stop) = limits.exceeded() {
                return Err(stop.error(config));
            }
            in_use = SLOT_FREED
                .wait_timeout(in_use, TICK)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *in_use += 1;
        Ok(PoolSlot)
    }
}

impl Drop for PoolSlot {
    fn drop(&mut self) {
        *SLOTS_IN_USE.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        SLOT_FREED.notify_one();
    }
}

/// An empty directory the task sees as `/`, its working directory,
/// writable under the mounts' write budget (files.rs): where a script's
/// files go on a tier with no filesystem of its own. Removed when dropped.
pub(super) struct ScratchRoot {
    /// The task's configuration with the directory mounted.
    pub config: SandboxConfig,
    _dir: tempfile::TempDir,
}

impl ScratchRoot {
    pub(super) fn new(config: &SandboxConfig) -> Result<ScratchRoot, TaskError> {
        let failed = |e: std::io::Error| {
            TaskError::unavailable(format!("can't make the task's working directory: {e}"))
        };
        let dir = tempfile::Builder::new()
            .prefix(&format!("lattice-files-{}-", std::process::id()))
            .tempdir()
            .map_err(failed)?;
        if AsNobody::applies() {
            // The task reaches its mounts as nobody (see `AsNobody`).
            std::os::unix::fs::chown(dir.path(), Some(NOBODY), Some(NOBODY)).map_err(failed)?;
        }
        let mut config = config.clone();
        if !config.mounts.iter().any(|mount| mount.guest == "/") {
            config.mounts.push(crate::task::Mount {
                host: dir.path().to_path_buf(),
                guest: "/".into(),
                writable: true,
            });
        }
        Ok(ScratchRoot { config, _dir: dir })
    }
}

/// The identity a Wasm task reaches its mounts with: while alive, the
/// filesystem uid and gid of this thread are nobody's (65534) and it has no
/// supplementary groups, so the kernel lets the task read and write only
/// what nobody could — not what this process, perhaps root, can. Only this
/// thread changes (the kernel keeps these per thread; the raw system calls
/// do not spread them to the others as glibc's wrappers would). A process
/// that is not root can't change them: its tasks reach its own files.
pub(super) struct AsNobody {
    fsuid: libc::c_long,
    fsgid: libc::c_long,
    groups: Vec<libc::gid_t>,
}

const NOBODY: libc::uid_t = 65534;

impl AsNobody {
    pub(super) fn applies() -> bool {
        crate::sandbox::process::is_root()
    }

    pub(super) fn enter() -> Option<AsNobody> {
        if !Self::applies() {
            return None;
        }
        let mut groups = vec![0 as libc::gid_t; 256];
        // SAFETY: raw credential calls on this thread, with a buffer we own.
        unsafe {
            let n = libc::syscall(libc::SYS_getgroups, groups.len(), groups.as_mut_ptr());
            groups.truncate(n.max(0) as usize);
            libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>());
            // Each returns the value it replaces.
            let fsgid = libc::syscall(libc::SYS_setfsgid, NOBODY);
            let fsuid = libc::syscall(libc::SYS_setfsuid, NOBODY);
            Some(AsNobody {
                fsuid,
                fsgid,
                groups,
            })
        }
    }
}

impl Drop for AsNobody {
    fn drop(&mut self) {
        // SAFETY: as in `enter`: this thread goes back to what it was.
        unsafe {
            libc::syscall(libc::SYS_setfsuid, self.fsuid);
            libc::syscall(libc::SYS_setfsgid, self.fsgid);
            libc::syscall(libc::SYS_setgroups, self.groups.len(), self.groups.as_ptr());
        }
    }
}
