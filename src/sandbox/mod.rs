//! How a task is isolated: one (crate-private) `Sandbox` trait, one module
//! per tier, run through [`SandboxExecutor`].
//!
//! A tier never knows where it runs: it gets a job (the payload and its
//! resolved [`SandboxConfig`]) and a [`CancelToken`], and gives back the
//! result and the captured output.

mod cgroup;
mod config;
#[cfg(feature = "docker")]
mod docker;
mod driver;
pub(crate) mod host_calls;
mod limits;
mod none;
mod outcome;
mod output;
mod policy;
mod private_fs;
pub(crate) mod process;
mod seccomp;
pub(crate) mod session;
mod subprocess;
pub mod wasm;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use serde_json::{Map, Value};

pub use config::{get_sandbox_config, set_sandbox_config, SandboxConfig, DEFAULT_MAX_RESULT_BYTES};
// The task layer's words, also named here where a tier is configured.
pub use crate::task::{CancelToken, Mount, SandboxLevel};
pub(crate) use output::OutputCapture;
pub use policy::{AllowedMount, Policy};
pub use seccomp::allowlist as seccomp_allowlist;
pub use session::SessionState;

use crate::task::{NativeCall, Payload, TaskError, TaskOutcome, TaskSubmission, WasmSource};

/// What a tier is asked to run.
pub(crate) struct Job<'a> {
    pub work: Work<'a>,
    /// The effective configuration (the executor's, with the task's overrides).
    pub config: &'a SandboxConfig,
    /// Sets `CUDA_VISIBLE_DEVICES` for the task.
    pub gpu_id: Option<u32>,
}

/// The payload of a [`Job`].
pub(crate) enum Work<'a> {
    /// Python: the CodeRunner request for the driver (see [`crate::runner`]).
    /// `scratch`: the task writes files to, or fetches them from, its
    /// working directory (script mode); a tier without a directory of its
    /// own per task gives it one for the run.
    ///
    /// `module`: the task's code, when the driver compiles it as a module
    /// before it runs any of it (a one-shot task, not script mode): the
    /// wasm tier keeps its compiled form for later tasks with the same code.
    Python {
        request: &'a str,
        module: Option<&'a str>,
        scratch: bool,
    },
    /// A Wasm module or component with the input JSON for its stdin.
    Wasm {
        source: &'a WasmSource,
        input: &'a str,
    },
    /// A command with the input JSON for its stdin.
    Command { argv: &'a [String], input: &'a str },
}

/// What a tier gives back.
#[derive(Debug)]
pub(crate) struct SandboxOutput {
    pub result: Result<Value, TaskError>,
    pub stdout: String,
    pub stderr: String,
}

impl SandboxOutput {
    pub(crate) fn error(error: TaskError) -> Self {
        SandboxOutput {
            result: Err(error),
            stdout: String::new(),
            stderr: String::new(),
        }
    }
}

/// One isolation tier.
pub(crate) trait Sandbox: Send + Sync {
    /// Ok if the tier can run on this host; otherwise why not, and how to fix it.
    fn check_available(&self) -> Result<(), TaskError>;

    /// Rejects settings this tier can't honour (before anything runs).
    fn check_config(&self, config: &SandboxConfig) -> Result<(), TaskError>;

    /// Runs one job to its end. Every failure is an error in the output,
    /// never a panic; nothing the job started outlives this call.
    fn run(&self, job: &Job<'_>, cancel: &CancelToken) -> SandboxOutput;

    /// Opens a session under `config` (checked by `check_config`).
    fn open_session(
        &self,
        config: &SandboxConfig,
    ) -> Result<Box<dyn session::TierSession>, TaskError>;

    /// Opens a session from a snapshot of one (only the wasm tier has them).
    fn restore_session(
        &self,
        config: &SandboxConfig,
        _snapshot: &[u8],
    ) -> Result<Box<dyn session::TierSession>, TaskError> {
        Err(session::no_snapshots(config.tier))
    }
}

/// Ok if `level`'s tier can run on this host; otherwise why not, and how
/// to fix it (what `lattice-wasm doctor` prints).
pub fn check_available(level: SandboxLevel) -> Result<(), TaskError> {
    tier(level).check_available()
}

/// The tier that implements `level`.
pub(crate) fn tier(level: SandboxLevel) -> &'static dyn Sandbox {
    match level {
        SandboxLevel::None => &none::NoneSandbox,
        SandboxLevel::Wasm => &wasm::WasmSandbox,
        SandboxLevel::Subprocess => &subprocess::SubprocessSandbox,
        SandboxLevel::Seccomp => &seccomp::SeccompSandbox,
        #[cfg(feature = "docker")]
        SandboxLevel::Docker => &docker::DockerSandbox,
        #[cfg(not(feature = "docker"))]
        SandboxLevel::Docker => &NotBuilt {
            level: SandboxLevel::Docker,
            feature: "docker",
        },
    }
}

/// A tier this build left out (its Cargo feature is off): never available.
#[cfg(not(feature = "docker"))]
struct NotBuilt {
    level: SandboxLevel,
    feature: &'static str,
}

#[cfg(not(feature = "docker"))]
impl NotBuilt {
    fn error(&self) -> TaskError {
        TaskError::unavailable(format!(
            "this build of lattice has no {} tier: build it with the `{}` feature",
            self.level, self.feature
        ))
    }
}

#[cfg(not(feature = "docker"))]
impl Sandbox for NotBuilt {
    fn check_available(&self) -> Result<(), TaskError> {
        Err(self.error())
    }

    fn check_config(&self, _config: &SandboxConfig) -> Result<(), TaskError> {
        Err(self.error())
    }

    fn run(&self, _job: &Job<'_>, _cancel: &CancelToken) -> SandboxOutput {
        SandboxOutput::error(self.error())
    }

    fn open_session(
        &self,
        _config: &SandboxConfig,
    ) -> Result<Box<dyn session::TierSession>, TaskError> {
        Err(self.error())
    }
}

/// Settings that only some tiers can honour, checked the same way for all.
pub(crate) fn reject_unsupported(
    level: SandboxLevel,
    config: &SandboxConfig,
    mounts: bool,
    syscalls: bool,
) -> Result<(), TaskError> {
    if !mounts && !config.mounts.is_empty() {
        return Err(TaskError::invalid(format!(
            "the {level} tier can't restrict or remap paths, so mounts can't be honoured: use the wasm, seccomp or docker tier"
        )));
    }
    if !syscalls && config.allowed_syscalls.is_some() {
        return Err(TaskError::invalid(format!(
            "allowed_syscalls only applies to the seccomp tier, not {level}"
        )));
    }
    if config.max_memory_mb == 0 {
        return Err(TaskError::invalid("max_memory_mb must be at least 1"));
    }
    Ok(())
}

/// Fields of `/proc/meminfo` (`"MemTotal:"`, say) in bytes, read at once;
/// 0 for one that is unknown.
pub(crate) fn meminfo<const N: usize>(fields: [&str; N]) -> [u64; N] {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    fields.map(|field| {
        text.lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map_or(0, |kb| kb * 1024)
    })
}

/// A value made once it can be: unlike `OnceLock::get_or_init`, a failure
/// (perhaps passing: no fds left, a full disk) is not kept, and the next
/// caller tries again. Makers are serialised, so the work is done once.
pub(crate) struct OnceOk<T> {
    value: std::sync::OnceLock<T>,
    making: std::sync::Mutex<()>,
}

impl<T> OnceOk<T> {
    pub(crate) const fn new() -> Self {
        OnceOk {
            value: std::sync::OnceLock::new(),
            making: std::sync::Mutex::new(()),
        }
    }

    /// The value, made by `make` if there is none yet.
    pub(crate) fn get_or_try_init<E>(&self, make: impl FnOnce() -> Result<T, E>) -> Result<&T, E> {
        if let Some(value) = self.value.get() {
            return Ok(value);
        }
        let _making = self.making.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(value) = self.value.get() {
            return Ok(value);
        }
        let value = make()?;
        Ok(self.value.get_or_init(|| value))
    }
}

/// The native stack of threads that run tasks: enough for any tier (the
/// wasm tier runs Wasm with an 8 MiB stack on the calling thread).
pub(super) const TASK_THREAD_STACK: usize = 16 << 20;

std::thread_local! {
    static ON_TASK_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// How long a caller looks for the reply of a hand-off to another thread
/// (a call to a session's thread, a task to an executor's worker) before it
/// sleeps, and how long that thread looks for its next job. Calls of a REPL
/// or an agent come back to back, and waking a sleeping thread cost more
/// than a short call itself (a futex wake and a context switch on each side:
/// a wasm session's `x + 1` went from 0.22 ms to ~0.1 ms at p50 on a 2-core
/// VM; 3,000 trivial tasks through `batch` ran ~8% faster). The looking
/// yields the core; the idle side looks only briefly, so idle sessions and
/// workers cost nothing.
pub(crate) const REPLY_SPIN: std::time::Duration = std::time::Duration::from_micros(500);
/// See [`REPLY_SPIN`].
pub(crate) const NEXT_JOB_SPIN: std::time::Duration = std::time::Duration::from_micros(50);

/// What `look` finds within `spin`: it looks again, yielding the core
/// between looks, until it finds something or the time is up.
fn look_briefly<R>(spin: std::time::Duration, mut look: impl FnMut() -> Option<R>) -> Option<R> {
    let started = std::time::Instant::now();
    loop {
        if let Some(found) = look() {
            return Some(found);
        }
        if started.elapsed() >= spin {
            return None;
        }
        std::thread::yield_now();
    }
}

/// The next message of `from` if it comes within `spin`; `Empty` if it did
/// not, `Disconnected` once every sender is gone.
pub(crate) fn receive_briefly<T>(
    from: &std::sync::mpsc::Receiver<T>,
    spin: std::time::Duration,
) -> Result<T, std::sync::mpsc::TryRecvError> {
    look_briefly(spin, || match from.try_recv() {
        Err(std::sync::mpsc::TryRecvError::Empty) => None,
        received => Some(received),
    })
    .unwrap_or(Err(std::sync::mpsc::TryRecvError::Empty))
}

/// The next message of `from`, looking for it for `spin`
/// ([`receive_briefly`]) before sleeping until it comes; None once every
/// sender is gone.
pub(crate) fn receive_soon<T>(
    from: &std::sync::mpsc::Receiver<T>,
    spin: std::time::Duration,
) -> Option<T> {
    match receive_briefly(from, spin) {
        Ok(message) => Some(message),
        Err(std::sync::mpsc::TryRecvError::Disconnected) => None,
        Err(std::sync::mpsc::TryRecvError::Empty) => from.recv().ok(),
    }
}

/// Waits on `condvar` until `ready` finds what it looks for in `mutex`'s
/// value, looking for it for `spin` first ([`look_briefly`]) before
/// sleeping.
pub(crate) fn wait_soon<T, R>(
    mutex: &std::sync::Mutex<T>,
    condvar: &std::sync::Condvar,
    spin: std::time::Duration,
    mut ready: impl FnMut(&mut T) -> Option<R>,
) -> R {
    let lock = || mutex.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(found) = look_briefly(spin, || ready(&mut lock())) {
        return found;
    }
    let mut guard = lock();
    loop {
        if let Some(found) = ready(&mut guard) {
            return found;
        }
        guard = condvar.wait(guard).unwrap_or_else(|e| e.into_inner());
    }
}

/// Starts a thread meant to run tasks (an executor's worker): it has the
/// stack every tier needs, so tiers run on it directly.
pub(crate) fn spawn_task_thread<T: Send + 'static>(
    name: String,
    work: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<T>> {
    std::thread::Builder::new()
        .name(name)
        .stack_size(TASK_THREAD_STACK)
        .spawn(move || {
            ON_TASK_THREAD.set(true);
            work()
        })
}

/// Runs `work` on a thread with the task stack: this one if it is a task
/// thread, else a scoped one (for callers on threads of their own).
pub(crate) fn on_task_thread<R: Send>(work: impl FnOnce() -> R + Send) -> Result<R, TaskError> {
    if ON_TASK_THREAD.get() {
        return Ok(work());
    }
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("lattice-task".into())
            .stack_size(TASK_THREAD_STACK)
            .spawn_scoped(scope, || {
                ON_TASK_THREAD.set(true);
                work()
            })
            .map_err(|e| TaskError::internal(format!("can't start a task thread: {e}")))?
            .join()
            .map_err(|_| TaskError::internal("a task thread panicked"))
    })
}

/// Runs tasks in their sandbox tier.
///
/// ```no_run
/// use lattice::sandbox::{SandboxConfig, SandboxExecutor, SandboxLevel};
/// use serde_json::json;
///
/// let executor = SandboxExecutor::new(SandboxConfig {
///     tier: SandboxLevel::Subprocess,
///     ..SandboxConfig::default()
/// });
/// let outcome = executor.execute(Some("def f(x):\n    return x * 2\n"), None, Some(json!(21)));
/// assert_eq!(outcome.result.unwrap(), json!(42));
/// ```
#[derive(Clone, Debug)]
pub struct SandboxExecutor {
    config: SandboxConfig,
}

/// A [`SandboxExecutor`] with the process-wide configuration.
pub fn get_sandbox_executor() -> SandboxExecutor {
    SandboxExecutor::new(get_sandbox_config())
}

impl SandboxExecutor {
    /// An executor of tasks under `config`.
    pub fn new(config: SandboxConfig) -> Self {
        SandboxExecutor { config }
    }

    /// The configuration it runs tasks under.
    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// `execute(code_str, serialized_code, task_input_data)`, the original framework's call:
    /// runs Python code or a Wasm module with `input`.
    pub fn execute(
        &self,
        code: Option<&str>,
        serialized_code: Option<WasmSource>,
        input: Option<Value>,
    ) -> TaskOutcome {
        let payload = match (code, serialized_code) {
            (Some(code), None) => Payload::Code(code.to_string()),
            (None, Some(source)) => Payload::Wasm(source),
            _ => {
                return TaskOutcome::from_error(
                    None,
                    TaskError::invalid("give exactly one of code and serialized_code"),
                )
            }
        };
        let mut task = TaskSubmission::new(payload);
        task.input = input;
        self.run(&task, &CancelToken::new())
    }

    /// Runs one submission to its outcome, in the tier its configuration
    /// names. `cancel` stops it from another thread.
    pub fn run(&self, task: &TaskSubmission, cancel: &CancelToken) -> TaskOutcome {
        let started = Instant::now();
        let config = self.config.with_overrides(&task.sandbox);
        let (level, output) = match &task.payload {
            Payload::Wasm(_) | Payload::Command(_) | Payload::Native(_)
                if task.host_functions.is_some() =>
            {
                (
                    None,
                    SandboxOutput::error(TaskError::invalid(
                        "host functions are for Python tasks: a Wasm module, a command or a native closure can't call them",
                    )),
                )
            }
            Payload::Native(function) => match task.sandbox.tier {
                Some(level) if level != SandboxLevel::None => (
                    None,
                    SandboxOutput::error(TaskError::invalid(format!(
                        "a native closure runs in-process and can't be isolated by the {level} tier; submit it without a tier or with tier none"
                    ))),
                ),
                _ => (
                    Some(SandboxLevel::None),
                    run_native(function.as_ref(), task, cancel),
                ),
            },
            _ => (Some(config.tier), run_in_tier(task, &config, cancel)),
        };
        let end = match task.payload {
            Payload::Code(_) if task.script => driver::script_end(output.result),
            _ => driver::ScriptEnd {
                result: output.result,
                exit_code: None,
                files: Default::default(),
            },
        };
        let mut outcome = TaskOutcome {
            id: task.id.clone(),
            result: end.result,
            stdout: output.stdout,
            stderr: output.stderr,
            tier: level,
            node_id: None,
            duration: started.elapsed(),
            exit_code: end.exit_code,
            files: end.files,
        };
        if cancel.is_cancelled() {
            outcome.result = Err(TaskError::Cancelled);
            outcome.exit_code = None;
            outcome.files.clear();
        }
        outcome
    }
}

/// Host paths no task may be given, nor anything beneath them: the
/// kernel's views of processes (another's memory and environment), of the
/// system and of devices; and `/` itself, the whole host.
const FORBIDDEN_MOUNTS: [&str; 3] = ["/proc", "/sys", "/dev"];

/// The mounts of `config` with their host paths resolved (symlinks
/// followed, so what is checked is what is mounted), or why one is refused.
fn resolve_mounts(config: &SandboxConfig) -> Result<Vec<Mount>, TaskError> {
    let refused = |mount: &Mount| {
        TaskError::invalid(format!(
            "mount {} is refused: no task may be given /, /proc, /sys, /dev or anything beneath them",
            mount.host.display()
        ))
    };
    let forbidden =
        |path: &std::path::Path| path == std::path::Path::new("/") || under_system_tree(path);
    config
        .mounts
        .iter()
        .map(|mount| {
            // As written first (a path under /proc may not even resolve
            // for us), then as it resolves.
            if forbidden(&lexically_normal(&mount.host)) {
                return Err(refused(mount));
            }
            let real = std::fs::canonicalize(&mount.host)
                .map_err(|e| TaskError::invalid(format!("mount {}: {e}", mount.host.display())))?;
            if forbidden(&real) {
                return Err(refused(mount));
            }
            Ok(Mount {
                host: real,
                ..mount.clone()
            })
        })
        .collect()
}

/// True if `path`, as written or as it resolves, is in /proc, /sys or
/// /dev: no task may be given a file of those (a Wasm payload included).
pub(crate) fn in_system_tree(path: &std::path::Path) -> bool {
    let absolute = match std::env::current_dir() {
        Ok(cwd) if path.is_relative() => cwd.join(path),
        _ => path.to_path_buf(),
    };
    under_system_tree(&lexically_normal(&absolute))
        || std::fs::canonicalize(&absolute).is_ok_and(|real| under_system_tree(&real))
}

/// True if the (absolute, normal) `path` is /proc, /sys, /dev or beneath them.
fn under_system_tree(path: &std::path::Path) -> bool {
    FORBIDDEN_MOUNTS.iter().any(|dir| path.starts_with(dir))
}

/// `path` with `.` and `..` taken out as written (no symlink followed).
fn lexically_normal(path: &std::path::Path) -> std::path::PathBuf {
    let mut normal = std::path::PathBuf::from("/");
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                normal.pop();
            }
            std::path::Component::Normal(name) => normal.push(name),
            _ => {}
        }
    }
    normal
}

fn run_in_tier(
    task: &TaskSubmission,
    config: &SandboxConfig,
    cancel: &CancelToken,
) -> SandboxOutput {
    let sandbox = tier(config.tier);
    if let Err(error) = sandbox.check_available() {
        return SandboxOutput::error(error);
    }
    // The refused mounts are refused on every tier, with the same reason;
    // the tier then judges the mounts as they resolve.
    let resolved;
    let config = match resolve_mounts(config) {
        Ok(mounts) if mounts.is_empty() => config,
        Ok(mounts) => {
            resolved = SandboxConfig {
                mounts,
                ..config.clone()
            };
            &resolved
        }
        Err(error) => return SandboxOutput::error(error),
    };
    if let Err(error) = sandbox.check_config(config) {
        return SandboxOutput::error(error);
    }
    let input_json;
    let request;
    let work = match &task.payload {
        Payload::Code(code) => {
            request = match driver::request(code, task, config) {
                Ok(request) => request,
                Err(error) => return SandboxOutput::error(error),
            };
            if let Some(functions) = task.host_functions.as_ref().filter(|f| !f.is_empty()) {
                return run_with_host_functions(sandbox, &request, config, functions, cancel);
            }
            Work::Python {
                request: &request,
                module: (!task.script).then_some(code.as_str()),
                scratch: task.script && !(task.files.is_empty() && task.fetch_files.is_empty()),
            }
        }
        Payload::Wasm(source) => {
            input_json = driver::stdin_input(task);
            Work::Wasm {
                source,
                input: &input_json,
            }
        }
        Payload::Command(argv) if argv.first().is_none_or(String::is_empty) => {
            return SandboxOutput::error(TaskError::invalid("a command task must name a program"))
        }
        Payload::Command(argv) => {
            input_json = driver::stdin_input(task);
            Work::Command {
                argv,
                input: &input_json,
            }
        }
        Payload::Native(_) => unreachable!("native closures never reach a tier"),
    };
    let job = Job {
        work,
        config,
        gpu_id: task.gpu_id,
    };
    match catch_unwind(AssertUnwindSafe(|| sandbox.run(&job, cancel))) {
        Ok(output) => output,
        Err(panic) => SandboxOutput::error(TaskError::internal(format!(
            "the {} tier panicked: {}",
            config.tier,
            panic_message(&*panic)
        ))),
    }
}

/// Runs a Python task that may call host functions: in a session of its
/// own (the session's channel carries the calls), closed when it ends.
fn run_with_host_functions(
    sandbox: &dyn Sandbox,
    request: &str,
    config: &SandboxConfig,
    functions: &crate::task::HostFunctions,
    cancel: &CancelToken,
) -> SandboxOutput {
    if let Err(error) = functions.check() {
        return SandboxOutput::error(error);
    }
    let ran = catch_unwind(AssertUnwindSafe(|| {
        let mut session = sandbox.open_session(config)?;
        let host = host_calls::HostCalls::new(Some(functions), config, cancel);
        let out_of_time = host.out_of_time();
        let mut output = session.run(request, config, cancel, host).output;
        out_of_time.settle(&mut output.result, config);
        Ok(output)
    }));
    match ran {
        Ok(Ok(output)) => output,
        Ok(Err(error)) => SandboxOutput::error(error),
        Err(panic) => SandboxOutput::error(TaskError::internal(format!(
            "the {} tier panicked: {}",
            config.tier,
            panic_message(&*panic)
        ))),
    }
}

fn run_native(
    function: &(dyn Fn(&NativeCall<'_>) -> Result<Value, String> + Send + Sync),
    task: &TaskSubmission,
    cancel: &CancelToken,
) -> SandboxOutput {
    let empty_kwargs = Map::new();
    let call = NativeCall {
        input: task.input.as_ref(),
        args: task.args.as_deref().unwrap_or(&[]),
        kwargs: task.kwargs.as_ref().unwrap_or(&empty_kwargs),
        cancel,
    };
    let result = match catch_unwind(AssertUnwindSafe(|| function(&call))) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(message)) => Err(TaskError::Failed {
            type_name: "NativeError".into(),
            message,
            traceback: String::new(),
        }),
        Err(panic) => Err(TaskError::Failed {
            type_name: "Panic".into(),
            message: panic_message(&*panic),
            traceback: String::new(),
        }),
    };
    SandboxOutput {
        result,
        stdout: String::new(),
        stderr: String::new(),
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".into()
    }
}
