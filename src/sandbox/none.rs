//! The none tier: no isolation, for trusted code.
//!
//! Python runs in-process in native RustPython with the same driver as
//! every tier, on the tier's own Python threads (one per concurrently
//! running task, each keeping its interpreter, built on its first task);
//! each task gets a fresh namespace, capped in-memory stdout and
//! stderr and an empty stdin. Imported modules stay loaded between tasks
//! and the task can reach the whole process: this tier is for code you
//! trust. Wall time, CPU time and cancel are enforced by a watchdog that
//! raises `KeyboardInterrupt` in the task (again every tick, should it catch
//! it) and wakes it from a blocking call (`time.sleep`) with the real-time
//! signal `SIGRTMIN+4`, whose handler does nothing; memory is not limited.
//! Commands run as a plain child process.
//!
//! RustPython is built by `build.rs` as a shared library (its parser crates
//! declare a newer rustc than this crate builds with, so it can't be linked
//! directly), embedded in the binary, and loaded from a memfd on first use:
//! no file on disk to trust or clean up.

use std::ffi::c_void;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Mutex;

use super::host_calls::HostCalls;
use super::limits::{self, Limits, Watch};
use super::session::{SessionRun, SessionState, TierSession};
use super::subprocess::ProcessTier;
use super::{
    outcome, reject_unsupported, CancelToken, Job, OnceOk, OutputCapture, Sandbox, SandboxConfig,
    SandboxLevel, SandboxOutput, Work,
};
use crate::task::TaskError;

/// The native RustPython library (`guest/src/native.rs`), built by build.rs.
static NATIVE_PYTHON: &[u8] = include_bytes!(env!("LATTICE_NATIVE_PYTHON_PATH"));

/// How often the watchdog checks the running tasks' limits.
const TICK: std::time::Duration = std::time::Duration::from_millis(10);

pub(crate) struct NoneSandbox;

impl Sandbox for NoneSandbox {
    fn check_available(&self) -> Result<(), TaskError> {
        library().map(|_| ())
    }

    fn check_config(&self, config: &SandboxConfig) -> Result<(), TaskError> {
        reject_unsupported(SandboxLevel::None, config, false, false)
    }

    fn open_session(&self, config: &SandboxConfig) -> Result<Box<dyn TierSession>, TaskError> {
        Ok(Box::new(NoneSession {
            thread: Some(python_thread(library()?)?),
            config: config.clone(),
        }))
    }

    fn run(&self, job: &Job<'_>, cancel: &CancelToken) -> SandboxOutput {
        match &job.work {
            Work::Python { request, .. } => {
                run_python(request, job.config, cancel).unwrap_or_else(SandboxOutput::error)
            }
            _ => ProcessTier {
                level: SandboxLevel::None,
                isolate: false,
                hook: None,
                read_only_root: false,
            }
            .run(job, cancel),
        }
    }
}

/// Mirrors `LatticeBytes` of guest/src/native.rs.
#[repr(C)]
struct LatticeBytes {
    ptr: *mut u8,
    len: usize,
}

impl LatticeBytes {
    fn bytes(&self) -> &[u8] {
        if self.ptr.is_null() {
            return &[];
        }
        // SAFETY: the library filled ptr/len and frees them only in `free`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// Mirrors `LatticeRun` of guest/src/native.rs.
#[repr(C)]
struct LatticeRun {
    status: i32,
    envelope: LatticeBytes,
    stdout: LatticeBytes,
    stderr: LatticeBytes,
    stdout_dropped: u64,
    stderr_dropped: u64,
}

type RunFn = unsafe extern "C" fn(u64, *const u8, usize, usize, *mut LatticeRun);
type InterruptFn = unsafe extern "C" fn(u64) -> i32;
type FreeFn = unsafe extern "C" fn(*mut LatticeRun);
/// `write(sink, reply, len)`: how the library takes a host call's reply.
type ReplyFn = unsafe extern "C" fn(*mut c_void, *const u8, usize);
/// `call(context, request, len, sink, write)`: a host-function call.
type HostCallFn = unsafe extern "C" fn(*mut c_void, *const u8, usize, *mut c_void, ReplyFn);
type SetHostFn = unsafe extern "C" fn(Option<HostCallFn>, *mut c_void);

/// The loaded library's entry points.
struct Library {
    run: RunFn,
    interrupt: InterruptFn,
    free: FreeFn,
    set_host: SetHostFn,
}

/// The library's callback for a host-function call of the running task:
/// `context` is that task's [`HostCalls`].
unsafe extern "C" fn serve_host_call(
    context: *mut c_void,
    request: *const u8,
    len: usize,
    sink: *mut c_void,
    write: ReplyFn,
) {
    // SAFETY: `execute` set `context` to the job's HostCalls for this run,
    // and the library calls back on the run's own thread, during the run.
    let host = unsafe { &mut *context.cast::<HostCalls>() };
    // SAFETY: the library passes its request's bytes.
    let request = unsafe { std::slice::from_raw_parts(request, len) };
    let reply = host.dispatch(request);
    // SAFETY: `write` copies the reply before returning.
    unsafe { write(sink, reply.as_ptr(), reply.len()) };
}

fn library() -> Result<&'static Library, TaskError> {
    static LIBRARY: OnceOk<Library> = OnceOk::new();
    LIBRARY
        .get_or_try_init(load)
        .map_err(|e| TaskError::unavailable(format!("the in-process Python can't load: {e}")))
}

/// Copies the embedded library into a memfd and `dlopen`s it from there.
fn load() -> Result<Library, String> {
    use std::io::Write;
    use std::os::fd::{AsRawFd, FromRawFd};
    // SAFETY: memfd_create with a static name; the fd is owned by `file`.
    let fd = unsafe { libc::memfd_create(c"lattice-native-python".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(format!("memfd_create: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: fd is a fresh descriptor we own.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.write_all(NATIVE_PYTHON)
        .map_err(|e| format!("writing the library to a memfd: {e}"))?;
    let path = std::ffi::CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .expect("no NUL in a path we formatted");
    // SAFETY: the library is ours (embedded at build time); its initialisers
    // only set up Rust's runtime. The handle is never closed: the library
    // lives as long as the process.
    let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if handle.is_null() {
        // SAFETY: dlerror returns a C string or null.
        let reason = unsafe { libc::dlerror() };
        return Err(if reason.is_null() {
            "dlopen failed".into()
        } else {
            // SAFETY: a non-null dlerror is a valid C string.
            unsafe { std::ffi::CStr::from_ptr(reason) }
                .to_string_lossy()
                .into_owned()
        });
    }
    let symbol = |name: &std::ffi::CStr| -> Result<*mut c_void, String> {
        // SAFETY: handle is a live library handle.
        let address = unsafe { libc::dlsym(handle, name.as_ptr()) };
        if address.is_null() {
            return Err(format!("the library lacks {name:?}"));
        }
        Ok(address)
    };
    // SAFETY: the symbols have these signatures in guest/src/native.rs.
    unsafe {
        Ok(Library {
            run: std::mem::transmute::<*mut c_void, RunFn>(symbol(c"lattice_python_run")?),
            interrupt: std::mem::transmute::<*mut c_void, InterruptFn>(symbol(
                c"lattice_python_interrupt",
            )?),
            free: std::mem::transmute::<*mut c_void, FreeFn>(symbol(c"lattice_python_free")?),
            set_host: std::mem::transmute::<*mut c_void, SetHostFn>(symbol(
                c"lattice_python_set_host",
            )?),
        })
    }
}

/// Runs one Python request on an idle Python thread, waiting for it.
///
/// Interpreters live on the library's own long-lived threads: an
/// interpreter is built once per thread (tens of ms) and can't be dropped
/// cleanly when a thread exits (its destructor needs thread-locals that are
/// gone by then), so tasks come to them instead of running on the caller's.
fn run_python(
    request: &str,
    config: &SandboxConfig,
    cancel: &CancelToken,
) -> Result<SandboxOutput, TaskError> {
    let thread = python_thread(library()?)?;
    Ok(
        on_python_thread(&thread, request, config, cancel, HostCalls::none(), false)
            .unwrap_or_else(SandboxOutput::error),
    )
}

/// Runs `request` on `thread` and waits for it: Ok with what it gave
/// back, or Err with the error of a task that did not come back from a
/// stop (the thread is lost: it never returns to the pool). `keep`: the
/// thread stays with its caller (a session) instead of going back to the
/// pool.
fn on_python_thread(
    thread: &Sender<PythonJob>,
    request: &str,
    config: &SandboxConfig,
    cancel: &CancelToken,
    host: HostCalls,
    keep: bool,
) -> Result<SandboxOutput, TaskError> {
    let token = limits::next_token();
    let (reply, output) = std::sync::mpsc::channel();
    let job = PythonJob {
        token,
        request: request.to_owned(),
        config: config.clone(),
        cancel: cancel.clone(),
        host,
        reply,
        keep,
    };
    if thread.send(job).is_err() {
        return Err(TaskError::internal(
            "a Python thread of the none tier is gone",
        ));
    }
    match super::receive_briefly(&output, super::REPLY_SPIN) {
        Ok(output) => return Ok(output),
        Err(std::sync::mpsc::TryRecvError::Disconnected) => {
            return Err(TaskError::internal("a Python thread of the none tier died"))
        }
        Err(std::sync::mpsc::TryRecvError::Empty) => {}
    }
    loop {
        match output.recv_timeout(TICK * 10) {
            Ok(output) => return Ok(output),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(TaskError::internal("a Python thread of the none tier died"))
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        // A task that swallows every KeyboardInterrupt keeps its thread (it
        // never returns to the pool), but its caller gets the outcome.
        if let Some(stop) = limits::overdue(token, UNWIND_GRACE) {
            return Err(stop.error(config));
        }
    }
}

/// One request for a Python thread.
struct PythonJob {
    token: u64,
    request: String,
    config: SandboxConfig,
    cancel: CancelToken,
    /// The task's host functions.
    host: HostCalls,
    reply: Sender<SandboxOutput>,
    /// Stay with the caller after this job (a session's thread).
    keep: bool,
}

/// The driver request that forgets a session's namespace.
const RESET: &str = r#"{"op":"reset"}"#;

/// Python threads waiting for work.
static IDLE_THREADS: Mutex<Vec<Sender<PythonJob>>> = Mutex::new(Vec::new());

/// An idle Python thread, or a new one.
fn python_thread(library: &'static Library) -> Result<Sender<PythonJob>, TaskError> {
    if let Some(thread) = lock(&IDLE_THREADS).pop() {
        return Ok(thread);
    }
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let (sender, jobs) = std::sync::mpsc::channel::<PythonJob>();
    let to_pool = sender.clone();
    std::thread::Builder::new()
        .name(format!(
            "lattice-python-{}",
            COUNT.fetch_add(1, Ordering::Relaxed)
        ))
        .stack_size(super::TASK_THREAD_STACK)
        .spawn(move || {
            while let Some(mut job) = super::receive_soon(&jobs, super::NEXT_JOB_SPIN) {
                let output = execute(library, &mut job);
                if !job.keep {
                    // Idle before replying, so the caller's next task finds us.
                    lock(&IDLE_THREADS).push(to_pool.clone());
                }
                if job.reply.send(output).is_err() && job.keep {
                    // A session gave up on this thread (its call did not come
                    // back from a stop in time): forget its namespace, and
                    // serve the pool again.
                    let (reply, _) = std::sync::mpsc::channel();
                    let mut reset = PythonJob {
                        token: limits::next_token(),
                        request: RESET.into(),
                        cancel: CancelToken::new(),
                        host: HostCalls::none(),
                        reply,
                        keep: false,
                        ..job
                    };
                    execute(library, &mut reset);
                    lock(&IDLE_THREADS).push(to_pool.clone());
                }
            }
        })
        .map_err(|e| TaskError::unavailable(format!("can't start a Python thread: {e}")))?;
    Ok(sender)
}

/// A session on the none tier: one Python thread (its interpreter and the
/// session's namespace in it) kept for the session; the namespace is
/// forgotten and the thread goes back to the pool when it closes. A call
/// stopped by a limit is interrupted (`KeyboardInterrupt`) and the session
/// goes on; one that does not come back from the stop loses its thread,
/// and the session is closed.
struct NoneSession {
    thread: Option<Sender<PythonJob>>,
    config: SandboxConfig,
}

impl TierSession for NoneSession {
    fn run(
        &mut self,
        request: &str,
        config: &SandboxConfig,
        cancel: &CancelToken,
        host: HostCalls,
    ) -> SessionRun {
        let Some(thread) = &self.thread else {
            return SessionRun {
                output: SandboxOutput::error(TaskError::internal(
                    "the session's Python thread is gone",
                )),
                state: SessionState::Closed,
            };
        };
        match on_python_thread(thread, request, config, cancel, host, true) {
            Ok(output) => SessionRun {
                state: super::session::state_after(&output),
                output,
            },
            Err(error) => {
                self.thread = None;
                SessionRun {
                    output: SandboxOutput::error(error),
                    state: SessionState::Closed,
                }
            }
        }
    }
}

impl Drop for NoneSession {
    fn drop(&mut self) {
        // Forget the namespace; the thread then goes back to the pool.
        if let Some(thread) = self.thread.take() {
            let _ = on_python_thread(
                &thread,
                RESET,
                &self.config,
                &CancelToken::new(),
                HostCalls::none(),
                false,
            );
        }
    }
}

/// Runs `job` on this thread's interpreter, watched.
fn execute(library: &Library, job: &mut PythonJob) -> SandboxOutput {
    let (token, request, config) = (job.token, &job.request, &job.config);
    // Stopped by a KeyboardInterrupt raised in it, and woken from a
    // blocking call (`time.sleep`).
    let interrupt = library.interrupt;
    let watched = Watch::start(
        token,
        Limits::start(config, &job.cancel),
        Some(Box::new(move || {
            // SAFETY: a plain call into the loaded library.
            unsafe { interrupt(token) };
        })),
    );
    let mut run = std::mem::MaybeUninit::<LatticeRun>::uninit();
    // SAFETY: request is valid for its length; `run` is written by the
    // call; the host callback's context, the job's HostCalls, outlives the
    // run, and is cleared after it.
    let mut run = unsafe {
        (library.set_host)(Some(serve_host_call), (&raw mut job.host).cast::<c_void>());
        (library.run)(
            token,
            request.as_ptr(),
            request.len(),
            config.max_output_bytes,
            run.as_mut_ptr(),
        );
        (library.set_host)(None, std::ptr::null_mut());
        run.assume_init()
    };
    let stop = watched.finish();
    let capture = |bytes: &LatticeBytes, dropped: u64| {
        let mut capture = OutputCapture::new(config.max_output_bytes);
        capture.push(bytes.bytes());
        capture.count_dropped(dropped);
        capture
    };
    let stdout = capture(&run.stdout, run.stdout_dropped);
    let stderr = capture(&run.stderr, run.stderr_dropped);
    let result = match (stop, run.status) {
        (Some(stop), _) => Err(stop.error(config)),
        (None, 0) if run.envelope.len > config.max_result_bytes => Err(outcome::result_too_big(config)),
        (None, 0) => outcome::from_envelope(run.envelope.bytes(), config),
        (None, 1) => Err(outcome::protocol_error(&format!(
            "the CodeRunner driver failed before it could answer (did the task replace its modules?){}",
            stderr.tail_note()
        ))),
        (None, _) => Err(TaskError::unavailable(
            String::from_utf8_lossy(run.envelope.bytes()).into_owned(),
        )),
    };
    // SAFETY: `run` was filled by the library and is freed once.
    unsafe { (library.free)(&mut run) };
    SandboxOutput {
        result,
        stdout: stdout.finish(),
        stderr: stderr.finish(),
    }
}

/// How long a stopped task may take to unwind before its caller gets the
/// outcome without it.
const UNWIND_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
