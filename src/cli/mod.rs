//! The `lattice-wasm` command line: `run`, `batch`, `exec`, `resources`, `doctor`, `bench`.
//!
//! Exit codes: 0 ok, 1 a task failed, 2 usage error or invalid input.

mod batch;
mod bench;
mod single;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use lattice::sandbox::{tier, wasm, Mount, SandboxConfig, SandboxLevel};
use lattice::task::{ErrorKind, ExecutorType, TaskOutcome};

/// Run untrusted Python functions in a sandbox: Wasm by default, or a
/// process, seccomp or Docker tier; locally or on a Ray cluster.
#[derive(Parser)]
#[command(name = "lattice-wasm", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one task from a file (.py: Python, .wasm: a Wasm module; -: Python on stdin)
    /// and print its result JSON.
    Run(single::RunArgs),
    /// Run a JSON-lines file of tasks (one task per line) and print one result line per task.
    Batch(batch::BatchArgs),
    /// Read one task JSON on stdin, print its result JSON (the worker entry point).
    Exec(single::ExecArgs),
    /// Print the resources of an executor as JSON.
    Resources(ResourcesArgs),
    /// Check which sandbox tiers work on this host, and how to fix the others.
    Doctor(DoctorArgs),
    /// Compare the sandbox tiers (and a bare CPython, and pydantic-monty when
    /// installed) on the same workloads, side by side, with ratios.
    Bench(bench::BenchArgs),
}

/// Limits and settings shared by `run` and `batch` (a task's own fields win).
#[derive(Args, Clone, Debug, Default)]
pub struct LimitArgs {
    /// Sandbox tier: none, wasm, subprocess, seccomp, docker.
    #[arg(long, value_parser = parse_tier)]
    tier: Option<SandboxLevel>,
    /// Wall-clock limit per task, in seconds.
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    timeout: Option<Duration>,
    /// Memory limit per task, in MiB.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_memory_mb: Option<u64>,
    /// CPU-time limit per task, in seconds.
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    max_cpu_time: Option<Duration>,
    /// Cap on each of stdout and stderr kept per task, in bytes.
    #[arg(long, value_name = "BYTES")]
    max_output_bytes: Option<usize>,
    /// Seccomp tier: kill a task that makes a forbidden system call
    /// (reported as SandboxViolation) instead of failing the call (EPERM).
    #[arg(long)]
    seccomp_kill: bool,
    /// Docker tier: the image to run (default python:3.11-slim; build a
    /// local one with scripts/docker-image.sh).
    #[arg(long, value_name = "IMAGE")]
    docker_image: Option<String>,
}

impl LimitArgs {
    /// The sandbox configuration these flags describe.
    fn config(&self) -> SandboxConfig {
        let mut config = SandboxConfig::default();
        if let Some(tier) = self.tier {
            config.level = tier;
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
        config.seccomp_kill = self.seccomp_kill;
        if let Some(image) = &self.docker_image {
            config.docker_image = image.clone();
        }
        config
    }
}

#[derive(Args)]
struct ResourcesArgs {
    /// Which executor: local or ray.
    #[arg(long, default_value = "local", value_parser = parse_executor)]
    executor: ExecutorType,
    #[command(flatten)]
    ray: batch::RayArgs,
}

#[derive(Args)]
struct DoctorArgs {
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Prepare the wasm tier now (snapshot and compile the Python guest,
    /// cached on disk) so the first task does not wait for it.
    #[arg(long)]
    warm: bool,
}

fn parse_tier(s: &str) -> Result<SandboxLevel, String> {
    s.parse()
        .map_err(|e: lattice::task::TaskError| e.to_string())
}

fn parse_executor(s: &str) -> Result<ExecutorType, String> {
    s.parse()
        .map_err(|e: lattice::task::TaskError| e.to_string())
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 1e9 => Ok(Duration::from_secs_f64(v)),
        _ => Err(format!("'{s}' is not a positive number of seconds")),
    }
}

fn parse_mount(s: &str) -> Result<Mount, String> {
    s.parse()
        .map_err(|e: lattice::task::TaskError| e.to_string())
}

/// A usage error: exit code 2.
#[derive(Debug)]
pub struct UsageError(String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

pub fn usage(message: impl Into<String>) -> anyhow::Error {
    UsageError(message.into()).into()
}

/// The exit code for one task's outcome.
fn exit_code(outcome: &TaskOutcome) -> i32 {
    match &outcome.result {
        Ok(_) => 0,
        Err(e) if e.kind() == ErrorKind::InvalidTask => 2,
        Err(_) => 1,
    }
}

pub fn main() -> i32 {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => single::run(args),
        Command::Batch(args) => batch::run(args),
        Command::Exec(args) => single::exec(args),
        Command::Resources(args) => resources(args),
        Command::Doctor(args) => doctor(args),
        Command::Bench(args) => bench::run(args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("lattice-wasm: {error:#}");
            if error.downcast_ref::<UsageError>().is_some() {
                2
            } else {
                1
            }
        }
    }
}

fn resources(args: ResourcesArgs) -> Result<i32> {
    let executor = lattice::executor::create_executor(
        args.executor,
        lattice::executor::ExecutorOptions {
            ray: args.ray.options(),
            ..Default::default()
        },
    )?;
    executor.initialize()?;
    let resources = executor.get_available_resources();
    executor.shutdown()?;
    println!("{}", serde_json::to_string_pretty(&resources?)?);
    Ok(0)
}

fn doctor(args: DoctorArgs) -> Result<i32> {
    if args.warm {
        let started = std::time::Instant::now();
        let path = with_spinner("preparing the Python sandbox", wasm::warm)?;
        eprintln!(
            "wasm tier ready in {:.1} s: {}",
            started.elapsed().as_secs_f64(),
            path.display()
        );
    }
    let mut report = Vec::new();
    for level in SandboxLevel::ALL {
        let status = tier(level).check_available();
        report.push((level, status));
    }
    if args.json {
        let json: serde_json::Map<String, serde_json::Value> = report
            .iter()
            .map(|(level, status)| {
                let value = match status {
                    Ok(()) => serde_json::json!({"available": true}),
                    Err(e) => serde_json::json!({"available": false, "reason": reason(e)}),
                };
                (level.to_string(), value)
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        for (level, status) in &report {
            let default = if *level == SandboxLevel::DEFAULT {
                " (default)"
            } else {
                ""
            };
            let note = if *level == SandboxLevel::Wasm && !wasm_is_warm() {
                " (the Python guest is prepared on first use, ~30 s once; `lattice-wasm doctor --warm` does it now)"
            } else {
                ""
            };
            match status {
                Ok(()) => println!("{level:<11} ok{default}{note}"),
                Err(e) => println!("{level:<11} unavailable{default}: {}", reason(e)),
            }
        }
    }
    let default_ok = report
        .iter()
        .any(|(level, status)| *level == SandboxLevel::DEFAULT && status.is_ok());
    Ok(if default_ok { 0 } else { 1 })
}

/// Before the first Wasm task of a machine, prepares the Python guest with
/// a spinner on a terminal (it takes ~30 s once; later runs load the cache).
pub fn prepare_wasm_if_cold(level: SandboxLevel) -> Result<()> {
    if level == SandboxLevel::Wasm && !wasm_is_warm() {
        with_spinner(
            "preparing the Python sandbox (once per machine)",
            wasm::warm,
        )?;
    }
    Ok(())
}

/// True if the compiled Python guest is in the cache.
fn wasm_is_warm() -> bool {
    wasm::cache_path().is_ok_and(|path| path.exists())
}

/// Runs `work`, showing a spinner on stderr while it runs if stderr is a terminal.
fn with_spinner<T>(what: &str, work: impl FnOnce() -> T) -> T {
    use std::io::IsTerminal;
    use std::sync::atomic::{AtomicBool, Ordering};
    if !std::io::stderr().is_terminal() {
        return work();
    }
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let frames = ['|', '/', '-', '\\'];
            let started = std::time::Instant::now();
            let mut i = 0;
            while !done.load(Ordering::Relaxed) {
                eprint!(
                    "\r{} {what}... {:.0} s ",
                    frames[i % 4],
                    started.elapsed().as_secs_f64()
                );
                i += 1;
                std::thread::sleep(std::time::Duration::from_millis(120));
            }
            eprint!("\r\x1b[2K");
        });
        let result = work();
        done.store(true, Ordering::Relaxed);
        result
    })
}

/// The reason of an unavailable tier, without the kind prefix.
fn reason(error: &lattice::task::TaskError) -> String {
    error.to_record().message
}

/// Reads a file, or stdin for `-`.
fn read_source(path: &PathBuf) -> Result<Vec<u8>> {
    if path.as_os_str() == "-" {
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut data).context("reading stdin")?;
        Ok(data)
    } else {
        std::fs::read(path).map_err(|e| usage(format!("can't read {}: {e}", path.display())))
    }
}
