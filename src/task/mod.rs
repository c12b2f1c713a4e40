//! The data of a task: what to run, with what, where, and what came back.
//!
//! Nothing here does I/O; [`json`] holds the JSON forms of tasks and results.

mod cancel;
mod error;
mod host;
pub mod json;
mod tier;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use cancel::CancelToken;
pub use error::{ErrorKind, ErrorRecord, TaskError, TimeLimit};
pub(crate) use host::HostFunction;
pub use host::{HostCall, HostError, HostFunctions, HostLimits};
pub use tier::{Mount, SandboxLevel};

/// A limit given in seconds (`timeout_s`, `--timeout`, ...) as a duration:
/// finite, positive, at most 10^9 s, and not so small that it rounds to
/// zero nanoseconds (a zero limit could never be met).
///
/// ```
/// use lattice::task::limit_seconds;
/// assert_eq!(limit_seconds(1.5), Some(std::time::Duration::from_millis(1500)));
/// assert_eq!(limit_seconds(1e-30), None);
/// assert_eq!(limit_seconds(f64::NAN), None);
/// ```
pub fn limit_seconds(seconds: f64) -> Option<Duration> {
    if !(seconds.is_finite() && seconds > 0.0 && seconds <= 1e9) {
        return None;
    }
    Some(Duration::from_secs_f64(seconds)).filter(|d| !d.is_zero())
}

/// A native function run in-process by the local executor.
pub type NativeFn = Arc<dyn Fn(&NativeCall<'_>) -> Result<Value, String> + Send + Sync>;

/// What a native function is called with.
pub struct NativeCall<'a> {
    /// The task's `input`, if given.
    pub input: Option<&'a Value>,
    /// Positional arguments (empty if none).
    pub args: &'a [Value],
    /// Keyword arguments (empty if none).
    pub kwargs: &'a Map<String, Value>,
    pub(crate) cancel: &'a CancelToken,
}

impl NativeCall<'_> {
    /// True once the task was cancelled: a long native function should check
    /// this and return, since a thread can't be stopped from outside.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
}

/// A WebAssembly module or component, by value or by path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WasmSource {
    /// The module's bytes.
    Bytes(Arc<[u8]>),
    /// A file on the host.
    Path(PathBuf),
}

/// What a task runs.
#[derive(Clone)]
pub enum Payload {
    /// Python source run by the CodeRunner (see [`crate::runner`]).
    Code(String),
    /// A WASI module or `lattice:task` component (input JSON in, result JSON out).
    Wasm(WasmSource),
    /// A command: the input JSON on its stdin, the result JSON on its stdout.
    Command(Vec<String>),
    /// A native Rust closure; local executor only, runs in-process (tier none).
    Native(NativeFn),
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Payload::Code(code) => f.debug_tuple("Code").field(code).finish(),
            Payload::Wasm(source) => f.debug_tuple("Wasm").field(source).finish(),
            Payload::Command(argv) => f.debug_tuple("Command").field(argv).finish(),
            Payload::Native(_) => f.write_str("Native(..)"),
        }
    }
}

/// Resources a task asks for: CPUs, CPU memory in bytes, GPUs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// CPUs (fractions allowed on Ray).
    pub cpu: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Memory, bytes.
    pub cpu_mem: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// GPUs.
    pub gpu: Option<f64>,
}

/// Per-task changes to the executor's sandbox configuration.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SandboxOverrides {
    /// The tier (default: the executor's).
    pub tier: Option<SandboxLevel>,
    /// Wall-clock limit.
    pub timeout: Option<Duration>,
    /// Memory limit, MiB.
    pub max_memory_mb: Option<u64>,
    /// CPU-time limit.
    pub max_cpu_time: Option<Duration>,
    /// The only modules the code may import.
    pub allowed_imports: Option<Vec<String>>,
    /// Whether the task may use the network.
    pub network: Option<bool>,
    /// Host paths made visible to the task.
    pub mounts: Option<Vec<Mount>>,
}

/// One task to run, with a payload instead of a
/// Python callable.
///
/// ```
/// use lattice::task::TaskSubmission;
/// use serde_json::json;
///
/// let task = TaskSubmission::python("def f(x):\n    return x + 1\n").with_input(json!(41));
/// assert_eq!(task.input, Some(json!(41)));
/// ```
#[derive(Clone, Debug)]
pub struct TaskSubmission {
    /// Echoed in the result; any JSON value (the CLI uses strings and line numbers).
    pub id: Option<Value>,
    /// What runs.
    pub payload: Payload,
    /// The function to call; default: the last top-level `def`.
    pub entry: Option<String>,
    /// Called as `f(input)` when given.
    pub input: Option<Value>,
    /// Called as `f(*args, **kwargs)` when either is given.
    pub args: Option<Vec<Value>>,
    /// Keyword arguments (`f(*args, **kwargs)`).
    pub kwargs: Option<Map<String, Value>>,
    /// What the task asks the executor for.
    pub resources: Resources,
    /// Run on this node (hard affinity).
    pub node_id: Option<String>,
    /// Pin the task to this GPU (`CUDA_VISIBLE_DEVICES`).
    pub gpu_id: Option<u32>,
    /// Settings that override the executor's sandbox configuration.
    pub sandbox: SandboxOverrides,
    /// Functions of this process the code may call (Python tasks, local
    /// executor only).
    pub host_functions: Option<HostFunctions>,
    /// Script mode: the Python code is a program, run as `__main__` with
    /// [`stdin`](Self::stdin) on its standard input; the outcome carries its
    /// exit code (see [`TaskSubmission::script`]).
    pub script: bool,
    /// A script's standard input (script mode only).
    pub stdin: Option<String>,
    /// Files written to a script's working directory before it runs, by
    /// path relative to it (script mode only; on a tier whose working
    /// directory the task may write: not wasm).
    pub files: BTreeMap<String, Vec<u8>>,
    /// Files of a script's working directory to send back after it ends
    /// (those that exist), in [`TaskOutcome::files`].
    pub fetch_files: Vec<String>,
}

impl TaskSubmission {
    /// A task with this payload and nothing else set.
    pub fn new(payload: Payload) -> Self {
        TaskSubmission {
            id: None,
            payload,
            entry: None,
            input: None,
            args: None,
            kwargs: None,
            resources: Resources::default(),
            node_id: None,
            gpu_id: None,
            sandbox: SandboxOverrides::default(),
            host_functions: None,
            script: false,
            stdin: None,
            files: BTreeMap::new(),
            fetch_files: Vec::new(),
        }
    }

    /// A Python task.
    pub fn python(code: impl Into<String>) -> Self {
        Self::new(Payload::Code(code.into()))
    }

    /// A Python program (script mode): run as `__main__` as `python prog.py`
    /// runs it, with [`with_stdin`](Self::with_stdin)'s text on its standard
    /// input (`input()`, `sys.stdin`; on the process tiers fd 0 too). It
    /// ends `ok` with exit code 0; `sys.exit(n)` with another code, or an
    /// uncaught exception (exit code 1, the traceback on its stderr as
    /// CPython prints it), ends as a task error whose outcome still has the
    /// exit code. Limits end it as they end a function.
    ///
    /// ```no_run
    /// use lattice::sandbox::SandboxExecutor;
    /// use lattice::task::{CancelToken, TaskSubmission};
    ///
    /// let program = TaskSubmission::script("n = int(input())\nprint(n * 2)\n").with_stdin("21\n");
    /// let outcome = SandboxExecutor::new(Default::default()).run(&program, &CancelToken::new());
    /// assert_eq!((outcome.exit_code, outcome.stdout.as_str()), (Some(0), "42\n"));
    /// ```
    pub fn script(code: impl Into<String>) -> Self {
        TaskSubmission {
            script: true,
            ..Self::python(code)
        }
    }

    /// Sets a script's standard input.
    pub fn with_stdin(mut self, stdin: impl Into<String>) -> Self {
        self.stdin = Some(stdin.into());
        self
    }

    /// A Wasm module or component task.
    pub fn wasm(source: WasmSource) -> Self {
        Self::new(Payload::Wasm(source))
    }

    /// A command task.
    pub fn command<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::new(Payload::Command(argv.into_iter().map(Into::into).collect()))
    }

    /// A native closure task (local executor only).
    pub fn native<F>(function: F) -> Self
    where
        F: Fn(&NativeCall<'_>) -> Result<Value, String> + Send + Sync + 'static,
    {
        Self::new(Payload::Native(Arc::new(function)))
    }

    /// Sets the id echoed on the outcome.
    pub fn with_id(mut self, id: impl Into<Value>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Calls the entry as `f(input)`.
    pub fn with_input(mut self, input: Value) -> Self {
        self.input = Some(input);
        self
    }

    /// Calls the entry as `f(*args)`.
    pub fn with_args(mut self, args: Vec<Value>) -> Self {
        self.args = Some(args);
        self
    }

    /// Calls the entry as `f(**kwargs)` (with `args`, if any).
    pub fn with_kwargs(mut self, kwargs: Map<String, Value>) -> Self {
        self.kwargs = Some(kwargs);
        self
    }

    /// Names the entry function.
    pub fn with_entry(mut self, entry: impl Into<String>) -> Self {
        self.entry = Some(entry.into());
        self
    }

    /// Runs the task in `tier`.
    pub fn with_tier(mut self, tier: SandboxLevel) -> Self {
        self.sandbox.tier = Some(tier);
        self
    }

    /// Sets the wall-clock limit.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.sandbox.timeout = Some(timeout);
        self
    }

    /// Sets the memory limit, MiB.
    pub fn with_max_memory_mb(mut self, mb: u64) -> Self {
        self.sandbox.max_memory_mb = Some(mb);
        self
    }

    /// Sets the CPU-time limit.
    pub fn with_max_cpu_time(mut self, cpu: Duration) -> Self {
        self.sandbox.max_cpu_time = Some(cpu);
        self
    }

    /// Allows only these modules to be imported.
    pub fn with_allowed_imports<I, S>(mut self, modules: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.sandbox.allowed_imports = Some(modules.into_iter().map(Into::into).collect());
        self
    }

    /// Pins the task to a node (Ray).
    pub fn with_node(mut self, node_id: impl Into<String>) -> Self {
        self.node_id = Some(node_id.into());
        self
    }

    /// Makes only this GPU visible to the task.
    pub fn with_gpu(mut self, gpu_id: u32) -> Self {
        self.gpu_id = Some(gpu_id);
        self
    }

    /// Sets what the task asks the executor for.
    pub fn with_resources(mut self, resources: Resources) -> Self {
        self.resources = resources;
        self
    }

    /// Lets the code call these functions of this process (see
    /// [`HostFunctions`]); local executor only.
    pub fn with_host_functions(mut self, functions: HostFunctions) -> Self {
        self.host_functions = Some(functions);
        self
    }
}

/// Which executor made a handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutorType {
    /// A Ray cluster.
    Ray,
    /// This machine.
    Local,
}

impl fmt::Display for ExecutorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ExecutorType::Ray => "ray",
            ExecutorType::Local => "local",
        })
    }
}

impl std::str::FromStr for ExecutorType {
    type Err = TaskError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ray" => Ok(ExecutorType::Ray),
            "local" => Ok(ExecutorType::Local),
            other => Err(TaskError::invalid(format!(
                "unknown executor '{other}' (expected local or ray)"
            ))),
        }
    }
}

/// A submitted task, to ask its executor about.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TaskHandle {
    /// Unique within its executor.
    pub handle_id: u64,
    /// The executor that issued it.
    pub executor_type: ExecutorType,
}

/// Everything a finished task produced: its result or error, its output,
/// and where and how long it ran.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskOutcome {
    /// The submission's id, if it had one.
    pub id: Option<Value>,
    /// The entry's JSON result, or the typed error.
    pub result: Result<Value, TaskError>,
    /// What the task printed, capped.
    pub stdout: String,
    /// What the task wrote to stderr, capped.
    pub stderr: String,
    /// The tier that ran it (None if it never reached one).
    pub tier: Option<SandboxLevel>,
    /// The node that ran it (`local`, or a Ray node id).
    pub node_id: Option<String>,
    /// Submit (or start) to outcome.
    pub duration: Duration,
    /// A script's exit code (script mode, when the program ended by itself:
    /// not after a limit, a cancel or a crash).
    pub exit_code: Option<i32>,
    /// The files a script was asked to send back (`fetch_files`) that it
    /// left, by path.
    pub files: BTreeMap<String, Vec<u8>>,
}

impl TaskOutcome {
    /// An outcome that is only an error (the task produced no output).
    pub fn from_error(id: Option<Value>, error: TaskError) -> Self {
        TaskOutcome {
            id,
            result: Err(error),
            stdout: String::new(),
            stderr: String::new(),
            tier: None,
            node_id: None,
            duration: Duration::ZERO,
            exit_code: None,
            files: BTreeMap::new(),
        }
    }

    /// True if the task returned a result.
    pub fn is_ok(&self) -> bool {
        self.result.is_ok()
    }

    /// The result, or the error, dropping the rest.
    pub fn into_result(self) -> Result<Value, TaskError> {
        self.result
    }
}
