//! The command line's grammar: every subcommand's flags, and the pure steps
//! that turn flags into library values (a sandbox config, Ray options, a
//! task). Nothing here touches files, processes or the network, so the same
//! module is compiled into the fuzz target `cli_args` (fuzz/), which feeds it
//! arbitrary argument vectors.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use lattice::executor::RayOptions;
use lattice::sandbox::{AllowedMount, Mount, Policy, SandboxConfig, SandboxLevel};
use lattice::task::{limit_seconds, ExecutorType, TaskError, TaskSubmission, WasmSource};
use serde_json::Value;

/// Run untrusted Python functions in a sandbox: Wasm by default, or a
/// process, seccomp or Docker tier; locally or on a Ray cluster.
#[derive(Parser)]
#[command(name = "lattice-wasm", version, about)]
pub(super) struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub(super) enum Command {
    /// Run one task from a file (.py: Python, .wasm: a Wasm module; -: Python on stdin)
    /// and print its result JSON.
    Run(RunArgs),
    /// Run a JSON-lines file of tasks (one task per line) and print one result line per task.
    Batch(BatchArgs),
    /// Read one task JSON on stdin, print its result JSON (the worker entry point).
    Exec(ExecArgs),
    /// The Ray executor's long-lived worker on a node (started by its actor;
    /// JSON lines on stdin and stdout, see `executor/ray/worker.rs`).
    #[command(hide = true)]
    RayWorker(RayWorkerArgs),
    /// Print the resources of an executor as JSON.
    Resources(ResourcesArgs),
    /// Check which sandbox tiers work on this host, and how to fix the others.
    Doctor(DoctorArgs),
    /// Compare the sandbox tiers (and CPython, and pydantic-monty and eryx
    /// when installed) on the same workloads, side by side, with ratios.
    Bench(BenchArgs),
    /// An interactive Python session in a sandbox tier (state kept between
    /// statements). With stdin not a terminal, runs the whole input
    /// statement by statement and prints one result JSON line per statement.
    Repl(ReplArgs),
    /// A Model Context Protocol server on stdio with one tool, `run_python`,
    /// which runs code in the connection's session (state kept across calls).
    Mcp(SessionArgs),
    /// An HTTP service: tasks (/v1/run, /v1/batch), sessions (/v1/sessions),
    /// a SandboxFusion-compatible judge endpoint (/run_code), health,
    /// resources and Prometheus metrics.
    Serve(ServeArgs),
}

#[derive(Args)]
pub(super) struct ServeArgs {
    /// The address to listen on. Beyond loopback, --token-file is required.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "HOST:PORT")]
    pub addr: std::net::SocketAddr,
    /// A file holding the bearer token every request must carry
    /// (`Authorization: Bearer TOKEN`).
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Tasks run at once (default: one per core).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..4097))]
    pub concurrency: Option<u64>,
    /// Tasks accepted but not finished before new ones are refused (429).
    #[arg(long, value_name = "N", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_queue: u64,
    /// The largest request body (a /v1/batch line each), in bytes (413 beyond).
    #[arg(long, value_name = "BYTES", default_value_t = 16 << 20, value_parser = clap::value_parser!(u64).range(1..=(1u64 << 32)))]
    pub max_body_bytes: u64,
    /// Sessions open at once.
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub max_sessions: u64,
    /// A session unused this long is closed.
    #[arg(long, value_name = "SECS", default_value = "600", value_parser = parse_seconds)]
    pub session_idle_timeout: Duration,
    /// On SIGTERM or SIGINT: stop accepting, let running requests finish
    /// this long, then cancel what is left.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_seconds)]
    pub grace: Duration,
    /// Where tasks run: local or ray.
    #[arg(long, default_value = "local", value_parser = parse_value::<ExecutorType>)]
    pub executor: ExecutorType,
    #[command(flatten)]
    pub ray: RayArgs,
}

#[derive(Args)]
pub(super) struct ReplArgs {
    #[command(flatten)]
    pub session: SessionArgs,
    /// Start from a snapshot a `--save` wrote (wasm tier).
    #[arg(long, value_name = "FILE")]
    pub load: Option<PathBuf>,
    /// Write a snapshot of the session to FILE at the end (wasm tier).
    #[arg(long, value_name = "FILE")]
    pub save: Option<PathBuf>,
}

/// The sandbox of a session (`repl`, `mcp`).
#[derive(Args, Clone, Debug, Default)]
pub(super) struct SessionArgs {
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub access: AccessArgs,
    /// Close the session after this many seconds without a statement.
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    pub idle_timeout: Option<Duration>,
}

impl SessionArgs {
    /// The sandbox configuration of the session.
    pub(super) fn config(&self) -> SandboxConfig {
        let mut config = self.limits.config();
        let access = &self.access;
        if !access.allow_imports.is_empty() {
            config.allowed_imports = Some(access.allow_imports.clone());
        }
        config.mounts = access.mounts.clone();
        config.network = access.network;
        config
    }
}

/// Limits and settings shared by `run`, `batch` and `exec` (a task's own fields win).
#[derive(Args, Clone, Debug, Default)]
pub(super) struct LimitArgs {
    /// Sandbox tier: none, wasm, subprocess, seccomp, docker.
    #[arg(long, value_parser = parse_value::<SandboxLevel>)]
    pub tier: Option<SandboxLevel>,
    /// Wall-clock limit per task, in seconds.
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    pub timeout: Option<Duration>,
    /// Memory limit per task, in MiB.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_memory_mb: Option<u64>,
    /// CPU-time limit per task, in seconds.
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    pub max_cpu_time: Option<Duration>,
    /// Cap on each of stdout and stderr kept per task, in bytes.
    #[arg(long, value_name = "BYTES")]
    pub max_output_bytes: Option<usize>,
    /// Cap on a task's result (its JSON), in bytes (default 16 MiB).
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(1..=(1u64 << 40)))]
    pub max_result_bytes: Option<u64>,
    /// Seccomp tier: kill a task that makes a forbidden system call
    /// (reported as SandboxViolation) instead of failing the call (EPERM).
    #[arg(long)]
    pub seccomp_kill: bool,
    /// Docker tier: the image to run (default python:3.11-slim; build a
    /// local one with scripts/docker-image.sh).
    #[arg(long, value_name = "IMAGE")]
    pub docker_image: Option<String>,
    /// Seccomp tier: the system call numbers (of this machine's
    /// architecture, comma-separated) that replace its allowlist.
    #[arg(long, value_name = "N,N,...", value_delimiter = ',', num_args = 1,
          value_parser = clap::value_parser!(i64).range(0..4096))]
    pub allowed_syscalls: Option<Vec<i64>>,
}

impl LimitArgs {
    /// The sandbox configuration these flags describe.
    pub(super) fn config(&self) -> SandboxConfig {
        let mut config = SandboxConfig::default();
        if let Some(tier) = self.tier {
            config.tier = tier;
        }
        if let Some(timeout) = self.timeout {
            config.timeout = timeout;
        }
        if let Some(mb) = self.max_memory_mb {
            config.max_memory_mb = mb;
        }
        if let Some(cpu) = self.max_cpu_time {
            config.max_cpu_time = cpu;
        }
        if let Some(bytes) = self.max_output_bytes {
            config.max_output_bytes = bytes;
        }
        if let Some(bytes) = self.max_result_bytes {
            config.max_result_bytes = usize::try_from(bytes).unwrap_or(usize::MAX);
        }
        config.seccomp_kill = self.seccomp_kill;
        if let Some(image) = &self.docker_image {
            config.docker_image = image.clone();
        }
        config.allowed_syscalls = self.allowed_syscalls.clone();
        config
    }
}

#[derive(Args)]
pub(super) struct RunArgs {
    /// The task: a .py file, a .wasm module or component, or - for Python on stdin.
    pub file: PathBuf,
    /// The input, as JSON: the function is called as f(input).
    #[arg(long, value_name = "JSON", conflicts_with = "input_file")]
    pub input: Option<String>,
    /// Read the input JSON from a file.
    #[arg(long, value_name = "PATH")]
    pub input_file: Option<PathBuf>,
    /// The function to call (default: the last top-level def).
    #[arg(long, value_name = "NAME")]
    pub entry: Option<String>,
    /// Positional arguments, as a JSON array: the function is called as f(*args, **kwargs).
    #[arg(long, value_name = "JSON")]
    pub args: Option<String>,
    /// Keyword arguments, as a JSON object.
    #[arg(long, value_name = "JSON")]
    pub kwargs: Option<String>,
    /// Script mode: run the .py file as a program (`__main__`) with this
    /// command's stdin as its stdin; the result JSON has its exit_code, and
    /// the command exits with it.
    #[arg(long, conflicts_with_all = ["input", "input_file", "entry", "args", "kwargs"])]
    pub script: bool,
    /// Script mode: the program's stdin from this file, not this command's.
    #[arg(long, value_name = "PATH", requires = "script")]
    pub stdin_file: Option<PathBuf>,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub access: AccessArgs,
}

/// What the code may reach: imports, host paths, the network (`run`, `repl`, `mcp`).
#[derive(Args, Clone, Debug, Default)]
pub(super) struct AccessArgs {
    /// Allow importing this module (repeat for more); without any, all imports are allowed.
    #[arg(long = "allow-import", value_name = "MOD")]
    pub allow_imports: Vec<String>,
    /// Make a host path visible to the code: HOST:GUEST, or HOST:GUEST:rw for writable.
    #[arg(long = "mount", value_name = "HOST:GUEST[:rw]", value_parser = parse_value::<Mount>)]
    pub mounts: Vec<Mount>,
    /// Let the code use the network (tiers that can block it do).
    #[arg(long)]
    pub network: bool,
}

impl RunArgs {
    /// The task these flags describe, given the bytes of `file`, with
    /// `--input-file` the text of that file, and with `--script` the
    /// program's stdin.
    pub(super) fn task(
        self,
        source: Vec<u8>,
        input_file_text: Option<&str>,
        script_stdin: Option<Vec<u8>>,
    ) -> Result<TaskSubmission, UsageError> {
        let is_wasm = self.file.extension().is_some_and(|ext| ext == "wasm");
        if is_wasm && self.script {
            return Err(UsageError(
                "--script runs Python programs; a Wasm module already reads its stdin".into(),
            ));
        }
        let mut task = if is_wasm {
            TaskSubmission::wasm(WasmSource::Bytes(source.into()))
        } else {
            let code = String::from_utf8(source)
                .map_err(|_| UsageError(format!("{} is not UTF-8 text", self.file.display())))?;
            TaskSubmission::python(code)
        };
        if self.script {
            task.script = true;
            let stdin = String::from_utf8(script_stdin.unwrap_or_default())
                .map_err(|_| UsageError("the program's stdin is not UTF-8 text".into()))?;
            task.stdin = Some(stdin);
        }
        task.id = Some(Value::String(self.file.display().to_string()));
        task.entry = self.entry;
        task.input = match (&self.input, input_file_text) {
            (Some(text), _) => Some(parse_json("--input", text)?),
            (None, Some(text)) => Some(parse_json("--input-file", text)?),
            (None, None) => None,
        };
        if let Some(text) = &self.args {
            match parse_json("--args", text)? {
                Value::Array(values) => task.args = Some(values),
                _ => return Err(UsageError("--args must be a JSON array".into())),
            }
        }
        if let Some(text) = &self.kwargs {
            match parse_json("--kwargs", text)? {
                Value::Object(map) => task.kwargs = Some(map),
                _ => return Err(UsageError("--kwargs must be a JSON object".into())),
            }
        }
        if task.input.is_some() && (task.args.is_some() || task.kwargs.is_some()) {
            return Err(UsageError(
                "give either --input or --args/--kwargs, not both".into(),
            ));
        }
        let access = self.access;
        if !access.allow_imports.is_empty() {
            task.sandbox.allowed_imports = Some(access.allow_imports);
        }
        if !access.mounts.is_empty() {
            task.sandbox.mounts = Some(access.mounts);
        }
        if access.network {
            task.sandbox.network = Some(true);
        }
        Ok(task)
    }
}

#[derive(Args)]
pub(super) struct ExecArgs {
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// The task's whole sandbox configuration, resolved elsewhere, as JSON
    /// (what the Ray executor sends its nodes): it replaces the limit and
    /// policy flags, and the task line runs under it as it is.
    #[arg(long, value_name = "JSON", value_parser = parse_sandbox_config)]
    pub sandbox_config: Option<SandboxConfig>,
}

#[derive(Args)]
pub(super) struct RayWorkerArgs {
    /// Tasks run at once (the node's CPUs).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..4097))]
    pub slots: u64,
    /// Which process of the worker this is (see `single::ray_worker`);
    /// none: the one the actor starts.
    #[arg(long, hide = true, value_enum)]
    pub stage: Option<WorkerStage>,
}

/// The processes of a Ray worker after the first (`single::ray_worker`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(super) enum WorkerStage {
    /// Runs the worker as its child, and sweeps what it leaves.
    Keeper,
    /// The worker itself.
    Serve,
}

/// What task lines may ask for (`batch`, `exec`): the limit flags above are
/// also caps (a task may ask for less, not more), and these allow the rest.
#[derive(Args, Clone, Debug, Default)]
pub(super) struct PolicyArgs {
    /// Tiers task lines may ask for, comma-separated (default: every tier
    /// but none, which must be named here or by --tier).
    #[arg(long, value_name = "TIERS", value_delimiter = ',', value_parser = parse_value::<SandboxLevel>)]
    pub allow_tiers: Vec<SandboxLevel>,
    /// Let task lines ask for the network.
    #[arg(long)]
    pub allow_network: bool,
    /// Let task lines mount this host directory (and what is beneath it),
    /// or read Wasm payloads from it; PATH:rw also lets them mount it
    /// writable (repeat for more).
    #[arg(long = "allow-mount", value_name = "PATH[:rw]", value_parser = parse_value::<AllowedMount>)]
    pub allow_mounts: Vec<AllowedMount>,
}

impl PolicyArgs {
    /// The operator's bounds, with `config` (from the limit flags) as caps.
    pub(super) fn policy(&self, config: &SandboxConfig) -> Policy {
        let mut policy = Policy::for_config(config);
        if !self.allow_tiers.is_empty() {
            policy.allowed_tiers = self.allow_tiers.clone();
            if !policy.allowed_tiers.contains(&config.tier) {
                policy.allowed_tiers.push(config.tier);
            }
        }
        policy.allow_network |= self.allow_network;
        policy.allowed_mounts = self.allow_mounts.clone();
        policy
    }
}

#[derive(Args)]
pub(super) struct BatchArgs {
    /// A JSON-lines file, one task per line (see the README), or - for stdin.
    pub file: PathBuf,
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Tasks run at once (default: one per core).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..4097))]
    pub concurrency: Option<u64>,
    /// Write the result lines to this file instead of stdout.
    #[arg(long, value_name = "PATH")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Where tasks run: local or ray.
    #[arg(long, default_value = "local", value_parser = parse_value::<ExecutorType>)]
    pub executor: ExecutorType,
    #[command(flatten)]
    pub ray: RayArgs,
}

/// Where the Ray executor finds its cluster (`--executor ray`).
#[derive(Args, Clone, Debug, Default)]
pub(super) struct RayArgs {
    /// The Ray cluster: its GCS address (host:6379) or its dashboard URL
    /// (http://host:8265); default: $RAY_ADDRESS. Without either, a Ray head
    /// is started on this machine for the run and stopped after.
    #[arg(long, value_name = "ADDRESS")]
    pub ray_address: Option<String>,
    /// The dashboard URL, if not on port 8265 of the address's host.
    #[arg(long, value_name = "URL")]
    pub ray_dashboard: Option<String>,
    /// The Python that has `ray` installed (default: $LATTICE_RAY_PYTHON, else python3 on PATH).
    #[arg(long, value_name = "PATH")]
    pub ray_python: Option<PathBuf>,
    /// The path of the lattice-wasm binary on the Ray nodes (default: this one).
    #[arg(long, value_name = "PATH")]
    pub ray_binary: Option<PathBuf>,
}

impl RayArgs {
    /// The Ray executor's options these flags describe.
    pub(super) fn options(&self) -> RayOptions {
        let defaults = RayOptions::default();
        RayOptions {
            address: self.ray_address.clone().or_else(|| {
                std::env::var("RAY_ADDRESS")
                    .ok()
                    .filter(|a| !a.is_empty() && a != "auto")
            }),
            dashboard: self.ray_dashboard.clone(),
            python: self.ray_python.clone().unwrap_or(defaults.python.clone()),
            binary: self.ray_binary.clone(),
            ..defaults
        }
    }
}

#[derive(Args)]
pub(super) struct ResourcesArgs {
    /// Which executor: local or ray.
    #[arg(long, default_value = "local", value_parser = parse_value::<ExecutorType>)]
    pub executor: ExecutorType,
    #[command(flatten)]
    pub ray: RayArgs,
}

#[derive(Args)]
pub(super) struct DoctorArgs {
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Prepare the wasm tier now (snapshot and compile the Python guest,
    /// cached on disk) so the first task does not wait for it.
    #[arg(long)]
    pub warm: bool,
}

#[derive(Args)]
pub(super) struct BenchArgs {
    /// Tiers to compare, comma-separated, of wasm, subprocess, none, seccomp,
    /// docker (default: all; a tier this host can't run is listed as
    /// unavailable, with the reason).
    #[arg(long, value_name = "TIERS", value_delimiter = ',', value_parser = parse_value::<SandboxLevel>)]
    pub tiers: Vec<SandboxLevel>,
    /// Tasks per contender and workload, run once one at a time and once
    /// concurrently (default: up to 200, fewer where tasks are slow, to keep
    /// to --time-budget).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub tasks: Option<u64>,
    /// Tasks at a time in the concurrent runs (default: one per core).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..4097))]
    pub concurrency: Option<u64>,
    /// Workloads, comma-separated (default: all).
    #[arg(long, value_name = "WORKLOADS", value_delimiter = ',', value_enum)]
    pub workloads: Vec<WorkloadKind>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// A Python that has pydantic-monty installed (default: python3 on PATH).
    #[arg(long, value_name = "PATH")]
    pub monty_python: Option<PathBuf>,
    /// A Python (>= 3.12) that has eryx installed, `pip install pyeryx`
    /// (default: python3 on PATH).
    #[arg(long, value_name = "PATH")]
    pub eryx_python: Option<PathBuf>,
    /// A Python that has the lattice_wasm package installed: adds the
    /// python workload to the default set (pip install ./python).
    #[arg(long, value_name = "PATH")]
    pub lattice_python: Option<PathBuf>,
    /// Seconds the measured tasks should take in all, when --tasks is not
    /// given: shared evenly by the workloads, and within a workload by the
    /// contenders, the fast ones' leftover going to the slow ones (warm-up,
    /// and at least 5 tasks per contender, come on top).
    #[arg(long, value_name = "SECS", default_value = "45", value_parser = parse_seconds)]
    pub time_budget: Duration,
}

/// One kind of benchmark work, from "the sandbox's fixed cost" to "moving
/// data" (the workloads themselves are in bench/workload.rs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(super) enum WorkloadKind {
    /// `def f(x): return x + 1`: what a task costs before it does anything.
    Trivial,
    /// Recursive fib(25): interpreter speed.
    Cpu,
    /// Generate 10^5 ints from a seed, sort them, return a checksum.
    Sort,
    /// json, re, collections and datetime used in the function.
    Imports,
    /// About 1 MB of JSON in and 1 MB out.
    Io,
    /// The function raises ValueError: an expected failure.
    Raises,
    /// `x + 1` in an open session: a call's latency, not a task's.
    Session,
    /// Trivial tasks over HTTP (`serve`, 64 keep-alive connections) beside
    /// `batch` of the same tasks, on the first tier.
    Http,
    /// `lattice_wasm.map` of trivial tasks in the Python package (needs
    /// --lattice-python) beside `batch` of the same tasks, on the first tier.
    Python,
}

/// A usage error: bad flags or flag values (the CLI exits with code 2).
#[derive(Debug)]
pub(super) struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn parse_json(what: &str, text: &str) -> Result<Value, UsageError> {
    serde_json::from_str(text).map_err(|e| UsageError(format!("{what} is not valid JSON: {e}")))
}

/// A flag value the library parses (tier, executor, mount), its error as
/// clap shows it.
fn parse_value<T: std::str::FromStr<Err = TaskError>>(s: &str) -> Result<T, String> {
    s.parse().map_err(|e: TaskError| e.to_string())
}

fn parse_sandbox_config(s: &str) -> Result<SandboxConfig, String> {
    serde_json::from_str(s).map_err(|e| format!("not a sandbox configuration: {e}"))
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    s.parse()
        .ok()
        .and_then(limit_seconds)
        .ok_or_else(|| format!("'{s}' is not a number of seconds from 1 ns to 10^9"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_grammar_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_flags_become_a_task() {
        let cli = Cli::try_parse_from([
            "lattice-wasm",
            "run",
            "f.py",
            "--args",
            "[1, 2]",
            "--kwargs",
            r#"{"k": 3}"#,
            "--mount",
            "/tmp:/data:rw",
            "--timeout",
            "1.5",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert_eq!(args.limits.config().timeout, Duration::from_millis(1500));
        let task = args
            .task(b"def f(a, b, k): pass".to_vec(), None, None)
            .unwrap();
        assert_eq!(task.args.unwrap().len(), 2);
        assert!(task.sandbox.mounts.unwrap()[0].writable);
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for argv in [
            &["lattice-wasm", "run", "f.py", "--timeout", "NaN"][..],
            &["lattice-wasm", "run", "f.py", "--timeout", "-1"],
            &["lattice-wasm", "run", "f.py", "--timeout", "1e-30"],
            &["lattice-wasm", "run", "f.py", "--tier", "vm"],
            &["lattice-wasm", "run", "f.py", "--mount", "relative:/x"],
            &["lattice-wasm", "batch", "t.jsonl", "--concurrency", "0"],
            &["lattice-wasm", "bench", "--workloads", "nope"],
            &["lattice-wasm", "exec", "--allowed-syscalls", "1,-2"],
            &["lattice-wasm", "exec", "--allowed-syscalls", "1,,2"],
            &["lattice-wasm", "exec", "--allowed-syscalls", "read"],
            &["lattice-wasm", "exec", "--allowed-syscalls="],
        ] {
            assert!(Cli::try_parse_from(argv).is_err(), "{argv:?} parsed");
        }
        let cli = Cli::try_parse_from(["lattice-wasm", "run", "f.py", "--args", "{}"]).unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        let error = args
            .task(b"def f(): pass".to_vec(), None, None)
            .unwrap_err();
        assert!(error.0.contains("--args must be a JSON array"), "{error}");
    }

    #[test]
    fn settings_without_a_task_field_are_flags() {
        let cli = Cli::try_parse_from([
            "lattice-wasm",
            "exec",
            "--allowed-syscalls=0,1,60",
            "--docker-image",
            "img:1",
            "--seccomp-kill",
        ])
        .unwrap();
        let Command::Exec(args) = cli.command else {
            panic!("not exec")
        };
        let config = args.limits.config();
        assert_eq!(config.allowed_syscalls, Some(vec![0, 1, 60]));
        assert_eq!(config.docker_image, "img:1");
        assert!(config.seccomp_kill);
    }
}
