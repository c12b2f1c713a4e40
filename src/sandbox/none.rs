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
use std::sync::{Mutex, OnceLock};

use super::limits::{Limits, Stop};
use super::subprocess::ProcessTier;
use super::{
    reject_unsupported, CancelToken, Job, OutputCapture, Sandbox, SandboxConfig, SandboxLevel,
    SandboxOutput, Work,
};
use crate::runner;
use crate::task::TaskError;

/// The native RustPython library (`guest/src/native.rs`), built by build.rs.
static NATIVE_PYTHON: &[u8] = include_bytes!(env!("LATTICE_NATIVE_PYTHON_PATH"));

/// How often the watchdog checks the running tasks' limits.
const TICK: std::time::Duration = std::time::Duration::from_millis(10);

pub(crate) struct NoneSandbox;

impl Sandbox for NoneSandbox {
    fn level(&self) -> SandboxLevel {
        SandboxLevel::None
    }

    fn check_available(&self) -> Result<(), TaskError> {
        library().map(|_| ())
    }

    fn check_config(&self, config: &SandboxConfig) -> Result<(), TaskError> {
        reject_unsupported(SandboxLevel::None, config, false, false)
    }

    fn run(&self, job: &Job<'_>, cancel: &CancelToken) -> SandboxOutput {
        match &job.work {
            Work::Python { request } => {
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

/// The loaded library's entry points.
struct Library {
    run: RunFn,
    interrupt: InterruptFn,
    free: FreeFn,
}

fn library() -> Result<&'static Library, TaskError> {
    static LIBRARY: OnceLock<Result<Library, String>> = OnceLock::new();
    LIBRARY
        .get_or_init(load)
        .as_ref()
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
    let library = library()?;
    static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);
    let token = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed);
    let (reply, output) = std::sync::mpsc::channel();
    let job = PythonJob {
        token,
        request: request.to_owned(),
        config: config.clone(),
        cancel: cancel.clone(),
        reply,
    };
    let idle = lock(&IDLE_THREADS).pop();
    match idle {
        Some(thread) => thread
            .send(job)
            .map_err(|_| TaskError::internal("a Python thread of the none tier is gone"))?,
        None => spawn_python_thread(library, job)?,
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
        if let Some(stop) = overdue(token) {
            return Ok(SandboxOutput::error(stop.error(config)));
        }
    }
}

/// One request for a Python thread.
struct PythonJob {
    token: u64,
    request: String,
    config: SandboxConfig,
    cancel: CancelToken,
    reply: std::sync::mpsc::Sender<SandboxOutput>,
}

/// Python threads waiting for work.
static IDLE_THREADS: Mutex<Vec<std::sync::mpsc::Sender<PythonJob>>> = Mutex::new(Vec::new());

fn spawn_python_thread(library: &'static Library, first: PythonJob) -> Result<(), TaskError> {
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let (sender, jobs) = std::sync::mpsc::channel::<PythonJob>();
    std::thread::Builder::new()
        .name(format!(
            "lattice-python-{}",
            COUNT.fetch_add(1, Ordering::Relaxed)
        ))
        .stack_size(super::TASK_THREAD_STACK)
        .spawn(move || {
            let mut job = first;
            loop {
                let output = execute(library, &job);
                // Idle before replying, so the caller's next task finds us.
                lock(&IDLE_THREADS).push(sender.clone());
                let _ = job.reply.send(output);
                match jobs.recv() {
                    Ok(next) => job = next,
                    Err(_) => return,
                }
            }
        })
        .map(|_| ())
        .map_err(|e| TaskError::unavailable(format!("can't start a Python thread: {e}")))
}

/// Runs `job` on this thread's interpreter, watched.
fn execute(library: &Library, job: &PythonJob) -> SandboxOutput {
    let (token, request, config) = (job.token, &job.request, &job.config);
    let watched = Watched::start(token, Limits::start(config, &job.cancel));
    let mut run = std::mem::MaybeUninit::<LatticeRun>::uninit();
    // SAFETY: request is valid for its length; `run` is written by the call.
    let mut run = unsafe {
        (library.run)(
            token,
            request.as_ptr(),
            request.len(),
            config.max_output_bytes,
            run.as_mut_ptr(),
        );
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
        (None, 0) => runner::parse_envelope(run.envelope.bytes(), config),
        (None, 1) => Err(TaskError::internal(format!(
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

/// A running task the watchdog checks every tick.
struct Entry {
    token: u64,
    thread: libc::pthread_t,
    limits: Limits,
    stop: Option<Stop>,
    stopped_at: Option<std::time::Instant>,
}

/// How long a stopped task may take to unwind before its caller gets the
/// outcome without it.
const UNWIND_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// The limit that stopped task `token` longer than [`UNWIND_GRACE`] ago.
fn overdue(token: u64) -> Option<Stop> {
    let watched = lock(&WATCHED);
    let entry = watched.iter().find(|entry| entry.token == token)?;
    match (entry.stop, entry.stopped_at) {
        (Some(stop), Some(at)) if at.elapsed() >= UNWIND_GRACE => Some(stop),
        _ => None,
    }
}

/// The signal that interrupts a task's blocking system call (`EINTR`), so
/// the interpreter checks for the watchdog's `KeyboardInterrupt`.
fn wake_signal() -> libc::c_int {
    libc::SIGRTMIN() + 4
}

/// Installs a do-nothing handler for [`wake_signal`] without `SA_RESTART`,
/// unless the program already handles that signal.
fn install_wake_handler() {
    extern "C" fn wake(_: libc::c_int) {}
    // SAFETY: sigaction with zeroed structs we own; the handler is
    // async-signal-safe (it does nothing).
    unsafe {
        let mut current: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(wake_signal(), std::ptr::null(), &mut current) != 0
            || current.sa_sigaction != libc::SIG_DFL
        {
            return;
        }
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = wake as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(wake_signal(), &action, std::ptr::null_mut());
    }
}

static WATCHED: Mutex<Vec<Entry>> = Mutex::new(Vec::new());

/// A task under the watchdog, until [`Watched::finish`].
struct Watched(u64);

impl Watched {
    fn start(token: u64, limits: Limits) -> Watched {
        static WATCHDOG: OnceLock<()> = OnceLock::new();
        WATCHDOG.get_or_init(|| {
            install_wake_handler();
            std::thread::Builder::new()
                .name("lattice-none-watchdog".into())
                .spawn(watchdog)
                .map(|_| ())
                .unwrap_or_else(|e| {
                    eprintln!("lattice-wasm: can't start the none tier's watchdog: {e}")
                })
        });
        lock(&WATCHED).push(Entry {
            token,
            // SAFETY: pthread_self always succeeds.
            thread: unsafe { libc::pthread_self() },
            limits,
            stop: None,
            stopped_at: None,
        });
        Watched(token)
    }

    /// Stops watching; returns the limit that stopped the task, if one did.
    fn finish(self) -> Option<Stop> {
        let mut watched = lock(&WATCHED);
        let at = watched.iter().position(|entry| entry.token == self.0)?;
        watched.swap_remove(at).stop
    }
}

/// Every tick: records the limit a task went over and interrupts it (again,
/// in case it caught the `KeyboardInterrupt`).
fn watchdog() {
    loop {
        std::thread::sleep(TICK);
        let Ok(library) = library() else { return };
        let mut watched = lock(&WATCHED);
        for entry in watched.iter_mut() {
            if entry.stop.is_none() {
                entry.stop = entry.limits.exceeded();
                entry.stopped_at = entry.stop.map(|_| std::time::Instant::now());
            }
            if entry.stop.is_some() {
                // SAFETY: a plain call into the loaded library; the thread is
                // alive, as its entry is removed (under this lock) before
                // its task returns.
                unsafe {
                    (library.interrupt)(entry.token);
                    libc::pthread_kill(entry.thread, wake_signal());
                }
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
