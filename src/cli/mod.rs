//! The `lattice-wasm` command line: `run`, `batch`, `exec`, `resources`, `doctor`, `bench`,
//! `repl`, `mcp`, `serve` (and the hidden `ray-worker`).
//!
//! Exit codes: 0 ok, 1 a task failed, 2 usage error or invalid input.

mod args;
mod batch;
mod bench;
mod mcp;
mod repl;
mod serve;
mod signals;
mod single;

use std::path::PathBuf;

use anyhow::{Context, Result};
use args::{Cli, Command, DoctorArgs, ResourcesArgs, UsageError};
use clap::Parser;
use lattice::sandbox::{check_available, wasm, SandboxLevel};
use lattice::task::{ErrorKind, TaskOutcome};

/// Turns a usage error into the error `main` maps to exit code 2.
pub(crate) fn usage(message: impl Into<String>) -> anyhow::Error {
    UsageError(message.into()).into()
}

/// The children of every thread of `pid` (a child belongs to the thread
/// that forked it, and workers fork from their own threads).
pub(crate) fn children_of(pid: &str) -> Vec<u32> {
    let Ok(threads) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    threads
        .flatten()
        .filter_map(|thread| std::fs::read_to_string(thread.path().join("children")).ok())
        .flat_map(|text| {
            text.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// The exit code for one task's outcome.
fn exit_code(outcome: &TaskOutcome) -> i32 {
    match &outcome.result {
        Ok(_) => 0,
        Err(e) if e.kind() == ErrorKind::InvalidTask => 2,
        Err(_) => 1,
    }
}

pub(crate) fn main() -> i32 {
    signals::install();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => single::run(args),
        Command::Batch(args) => batch::run(args),
        Command::Exec(args) => single::exec(args),
        Command::RayWorker(args) => single::ray_worker(args),
        Command::Resources(args) => resources(args),
        Command::Doctor(args) => doctor(args),
        Command::Bench(args) => bench::run(args),
        Command::Repl(args) => repl::run(args),
        Command::Mcp(args) => mcp::run(args),
        Command::Serve(args) => serve::run(args),
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
        let status = check_available(level);
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
    // Every tier available, or exit 1: a check that is fine only when
    // everything works.
    let unavailable: Vec<&str> = report
        .iter()
        .filter(|(_, status)| status.is_err())
        .map(|(level, _)| level.as_str())
        .collect();
    if unavailable.is_empty() {
        Ok(0)
    } else {
        if !args.json {
            println!(
                "{} of {} tiers unavailable here: {}",
                unavailable.len(),
                report.len(),
                unavailable.join(", ")
            );
        }
        Ok(1)
    }
}

/// Before the first Wasm task of a machine, prepares the Python guest with
/// a spinner on a terminal (it takes ~30 s once; later runs load the cache).
pub(crate) fn prepare_wasm_if_cold(level: SandboxLevel) -> Result<()> {
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
