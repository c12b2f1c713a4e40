//! The none tier's in-process Python: a C ABI over the same interpreter and
//! driver as the wasm guest, built as a shared library that the host loads
//! with `dlopen` (it can't link RustPython directly: its parser crates
//! declare a newer rustc than the host crate builds with).
//!
//! Each calling thread keeps one interpreter (RustPython's objects are not
//! `Send`), built on its first task (~tens of ms). Per task the driver runs
//! the code in a fresh namespace, stdout and stderr go to capped in-memory
//! buffers and stdin is empty; imported modules stay loaded (no isolation).
//! The host stops a task with [`lattice_python_interrupt`], which raises
//! `KeyboardInterrupt` in it at the next bytecode boundary.

use std::cell::{Cell, RefCell};
use std::sync::Mutex;

use rustpython_vm::signal::{UserSignalSender, user_signal_channel};
use rustpython_vm::{PyObjectRef, PyResult, VirtualMachine};

use crate::Guest;

/// The capped writer a task's stdout and stderr are, and the per-task
/// stream swap around one request.
const STREAMS_SRC: &str = r#"
import sys, io, _signal
_signal.getsignal(2)  # makes the VM check its signal channel (no OS handler is installed)

class _Capture:
    encoding = "utf-8"
    errors = "surrogateescape"
    def __init__(self, cap):
        self._parts = []
        self._room = cap
        self.dropped = 0
    def write(self, text):
        if not isinstance(text, str):
            raise TypeError("write() argument must be str, not " + type(text).__name__)
        data = text.encode("utf-8", "surrogateescape")
        kept = data[:self._room]
        self._parts.append(kept)
        self._room -= len(kept)
        self.dropped += len(data) - len(kept)
        return len(text)
    def flush(self):
        pass
    def isatty(self):
        return False
    def writable(self):
        return True
    def value(self):
        return b"".join(self._parts)

def _begin(cap):
    sys.stdin = io.StringIO()
    sys.stdout = _Capture(cap)
    sys.stderr = _Capture(cap)

def _end():
    out, err = sys.stdout, sys.stderr
    sys.stdin, sys.stdout, sys.stderr = sys.__stdin__, sys.__stdout__, sys.__stderr__
    def take(stream):
        if isinstance(stream, _Capture):
            return (stream.value(), stream.dropped)
        return (b"", 0)  # the task replaced the stream itself
    return take(out) + take(err)
"#;

/// Calls that would end, replace or fork the host process itself (it is the
/// task's process on this tier) fail with PermissionError instead, so that
/// a task that makes one by accident gets an outcome and the host lives on.
/// A guard against accidents, not a boundary: this tier runs trusted code.
const HOST_GUARD_SRC: &str = r#"
import os, posix, signal, _signal

def _refused(name, what):
    def refused(*args, **kwargs):
        raise PermissionError(
            "%s is refused on the none tier: the task runs inside the host process, "
            "which this would %s (run it on the subprocess tier)" % (name, what))
    refused.__name__ = name.rsplit(".", 1)[-1]
    return refused

for _module, _prefix in ((os, "os."), (posix, "os.")):
    for _name in ("_exit", "abort", "execv", "execve", "execvp", "execvpe",
                  "execl", "execle", "execlp", "execlpe"):
        if hasattr(_module, _name):
            setattr(_module, _name, _refused(_prefix + _name, "end or replace"))
    for _name in ("fork", "forkpty"):
        if hasattr(_module, _name):
            setattr(_module, _name, _refused(_prefix + _name, "copy, threads and all"))

def _host_kill(kill=posix.kill, getpid=posix.getpid, getpgrp=posix.getpgrp):
    def guarded(pid, signal):
        if pid in (0, -1, getpid(), -getpgrp()):
            raise PermissionError(
                "os.kill(%d, ...) is refused on the none tier: it would signal the host "
                "process the task runs in (run it on the subprocess tier)" % pid)
        return kill(pid, signal)
    guarded.__name__ = "kill"
    return guarded

def _host_killpg(killpg=posix.killpg, getpgrp=posix.getpgrp):
    def guarded(pgrp, signal):
        if pgrp in (0, getpgrp()):
            raise PermissionError(
                "os.killpg(%d, ...) is refused on the none tier: it would signal the host "
                "process the task runs in (run it on the subprocess tier)" % pgrp)
        return killpg(pgrp, signal)
    guarded.__name__ = "killpg"
    return guarded

os.kill = posix.kill = _host_kill()
os.killpg = posix.killpg = _host_killpg()
for _module in (signal, _signal):
    if hasattr(_module, "raise_signal"):
        _module.raise_signal = _refused("signal.raise_signal", "signal")
"#;

struct Native {
    guest: Guest,
    begin: PyObjectRef,
    end: PyObjectRef,
}

thread_local! {
    static NATIVE: RefCell<Option<Result<Native, String>>> = const { RefCell::new(None) };
    /// The token of the task running on this thread (0: none).
    static CURRENT: Cell<u64> = const { Cell::new(0) };
    static SIGNALS: RefCell<Option<UserSignalSender>> = const { RefCell::new(None) };
}

/// The host's callback for host-function calls: `call(context, request,
/// len, sink, write)` serves the request and hands the reply to
/// `write(sink, reply, len)`, which copies it.
pub type HostCallFn = unsafe extern "C" fn(
    context: *mut std::ffi::c_void,
    request: *const u8,
    len: usize,
    sink: *mut std::ffi::c_void,
    write: ReplyFn,
);
/// Takes a host call's reply (see [`HostCallFn`]).
pub type ReplyFn = unsafe extern "C" fn(sink: *mut std::ffi::c_void, reply: *const u8, len: usize);

thread_local! {
    /// This thread's host callback and its context, while a task runs.
    static HOST: Cell<Option<(HostCallFn, *mut std::ffi::c_void)>> = const { Cell::new(None) };
}

/// Sets (or, with `call` null, clears) the host-function callback of the
/// calling thread's tasks.
///
/// # Safety
/// `call` is valid with `context` until it is cleared again.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lattice_python_set_host(
    call: Option<HostCallFn>,
    context: *mut std::ffi::c_void,
) {
    HOST.set(call.map(|call| (call, context)));
}

/// One host-function call through this thread's callback.
pub(crate) fn host_call(request: &[u8]) -> Vec<u8> {
    unsafe extern "C" fn write(sink: *mut std::ffi::c_void, reply: *const u8, len: usize) {
        let sink = unsafe { &mut *sink.cast::<Vec<u8>>() };
        sink.extend_from_slice(unsafe { std::slice::from_raw_parts(reply, len) });
    }
    let Some((call, context)) = HOST.get() else {
        return br#"{"error":"no host functions are registered","type":"NameError"}"#.to_vec();
    };
    let mut reply = Vec::new();
    // SAFETY: the host set `call` with `context` for this task.
    unsafe {
        call(
            context,
            request.as_ptr(),
            request.len(),
            (&raw mut reply).cast(),
            write,
        )
    };
    reply
}

/// The signal senders of running tasks, by token.
static RUNNING: Mutex<Vec<(u64, UserSignalSender)>> = Mutex::new(Vec::new());

/// Bytes handed to the host; freed by [`lattice_python_free`].
#[repr(C)]
pub struct LatticeBytes {
    pub ptr: *mut u8,
    pub len: usize,
}

impl LatticeBytes {
    fn new(bytes: Vec<u8>) -> LatticeBytes {
        let mut bytes = bytes.into_boxed_slice();
        let out = LatticeBytes {
            ptr: bytes.as_mut_ptr(),
            len: bytes.len(),
        };
        std::mem::forget(bytes);
        out
    }

    fn empty() -> LatticeBytes {
        LatticeBytes::new(Vec::new())
    }

    /// # Safety
    /// `self` came from [`LatticeBytes::new`] and is freed once.
    unsafe fn free(&mut self) {
        if !self.ptr.is_null() {
            let slice = std::ptr::slice_from_raw_parts_mut(self.ptr, self.len);
            drop(unsafe { Box::from_raw(slice) });
            self.ptr = std::ptr::null_mut();
        }
    }
}

/// What one run produced.
#[repr(C)]
pub struct LatticeRun {
    /// 0: `envelope` is the driver's envelope; 1: the driver itself failed
    /// (its traceback is in `stderr`); 2: the interpreter can't start
    /// (`envelope` is the reason).
    pub status: i32,
    pub envelope: LatticeBytes,
    pub stdout: LatticeBytes,
    pub stderr: LatticeBytes,
    pub stdout_dropped: u64,
    pub stderr_dropped: u64,
}

/// Runs one request (the driver's request JSON) on the calling thread's
/// interpreter as task `token` (nonzero, unique), keeping at most
/// `output_cap` bytes of each output stream.
///
/// # Safety
/// `request` points to `len` readable bytes; `out` to a writable `LatticeRun`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lattice_python_run(
    token: u64,
    request: *const u8,
    len: usize,
    output_cap: usize,
    out: *mut LatticeRun,
) {
    let request =
        String::from_utf8_lossy(unsafe { std::slice::from_raw_parts(request, len) }).into_owned();
    let run = std::panic::catch_unwind(|| run(token, request, output_cap))
        .unwrap_or_else(|_| failure(2, "the in-process Python interpreter panicked".into()));
    unsafe { out.write(run) };
}

fn run(token: u64, request: String, output_cap: usize) -> LatticeRun {
    NATIVE.with(|native| {
        let mut native = native.borrow_mut();
        let native = native.get_or_insert_with(start);
        let native = match native {
            Ok(native) => native,
            Err(reason) => return failure(2, reason.clone()),
        };
        if let Some(sender) = SIGNALS.with(|s| s.borrow().clone()) {
            lock(&RUNNING).push((token, sender));
        }
        CURRENT.set(token);
        let run = native
            .guest
            .interp
            .enter(|vm| run_in(native, vm, request, output_cap));
        CURRENT.set(0);
        lock(&RUNNING).retain(|(t, _)| *t != token);
        run.unwrap_or_else(|reason| failure(2, reason))
    })
}

fn run_in(
    native: &Native,
    vm: &VirtualMachine,
    request: String,
    output_cap: usize,
) -> Result<LatticeRun, String> {
    let python = |e: rustpython_vm::builtins::PyBaseExceptionRef| {
        let mut text = String::new();
        let _ = vm.write_exception(&mut text, &e);
        text
    };
    native
        .begin
        .call((vm.ctx.new_int(output_cap),), vm)
        .map_err(python)?;
    let envelope = native.guest.run(vm, request);
    let streams = native.end.call((), vm).map_err(python)?;
    let (stdout, stdout_dropped, stderr, stderr_dropped): (Vec<u8>, u64, Vec<u8>, u64) = (|| {
        let items: Vec<PyObjectRef> = streams.try_to_value(vm)?;
        let bytes = |o: &PyObjectRef| -> PyResult<Vec<u8>> { o.try_to_value(vm) };
        let count = |o: &PyObjectRef| -> PyResult<u64> { o.try_to_value(vm) };
        Ok((
            bytes(&items[0])?,
            count(&items[1])?,
            bytes(&items[2])?,
            count(&items[3])?,
        ))
    })()
    .map_err(python)?;
    Ok(LatticeRun {
        status: if envelope.is_some() { 0 } else { 1 },
        envelope: LatticeBytes::new(envelope.unwrap_or_default().into_bytes()),
        stdout: LatticeBytes::new(stdout),
        stderr: LatticeBytes::new(stderr),
        stdout_dropped,
        stderr_dropped,
    })
}

fn start() -> Result<Native, String> {
    let (sender, receiver) = user_signal_channel();
    let guest = crate::build(move |vm| vm.set_user_signal_channel(receiver))
        .map_err(|_| "the in-process Python interpreter failed to start".to_string())?;
    SIGNALS.with(|s| *s.borrow_mut() = Some(sender));
    let (begin, end) = guest.interp.enter(|vm| {
        let set_up = || -> PyResult<(PyObjectRef, PyObjectRef)> {
            vm.run_string(
                vm.new_scope_with_builtins(),
                HOST_GUARD_SRC,
                "<lattice_host_guard>",
            )?;
            let scope = vm.new_scope_with_builtins();
            vm.run_string(scope.clone(), STREAMS_SRC, "<lattice_streams>")?;
            Ok((
                scope.globals.get_item("_begin", vm)?,
                scope.globals.get_item("_end", vm)?,
            ))
        };
        set_up().map_err(|e| {
            let mut text = String::new();
            let _ = vm.write_exception(&mut text, &e);
            format!("the in-process Python interpreter failed to set up: {text}")
        })
    })?;
    Ok(Native { guest, begin, end })
}

fn failure(status: i32, reason: String) -> LatticeRun {
    LatticeRun {
        status,
        envelope: LatticeBytes::new(reason.into_bytes()),
        stdout: LatticeBytes::empty(),
        stderr: LatticeBytes::empty(),
        stdout_dropped: 0,
        stderr_dropped: 0,
    }
}

/// Asks task `token` to stop: raises `KeyboardInterrupt` in it at its next
/// bytecode boundary. Returns 1 if the task is running, else 0. Call it
/// again while the task runs on (it may catch the exception).
#[unsafe(no_mangle)]
pub extern "C" fn lattice_python_interrupt(token: u64) -> i32 {
    let sender = lock(&RUNNING)
        .iter()
        .find(|(t, _)| *t == token)
        .map(|(_, sender)| sender.clone());
    let Some(sender) = sender else { return 0 };
    let sent = sender.send(Box::new(move |vm: &VirtualMachine| {
        // A signal that arrives after its task ended is for nobody.
        if CURRENT.get() != token {
            return Ok(());
        }
        Err(vm.new_exception_msg(
            vm.ctx.exceptions.keyboard_interrupt.to_owned(),
            "lattice: the task was stopped".into(),
        ))
    }));
    i32::from(sent.is_ok())
}

/// Frees what [`lattice_python_run`] handed back.
///
/// # Safety
/// `run` was filled by `lattice_python_run` and is freed once.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lattice_python_free(run: *mut LatticeRun) {
    let run = unsafe { &mut *run };
    unsafe {
        run.envelope.free();
        run.stdout.free();
        run.stderr.free();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
