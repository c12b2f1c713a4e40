//! `run` (one task from a file and flags), `exec` (one task JSON on stdin)
//! and the hidden `ray-worker` (the Ray executor's warm worker on a node).

use std::os::fd::AsRawFd;
use std::path::PathBuf;

use anyhow::Result;
use lattice::executor::{ExecutorBackend, LocalExecutor};
use lattice::sandbox::{Policy, SandboxConfig};
use std::sync::Arc;

use lattice::task::json::{outcome_to_json, parse_task, task_id};
use lattice::task::{TaskOutcome, TaskSubmission};

use super::args::{ExecArgs, RayWorkerArgs, RunArgs, WorkerStage};
use super::{exit_code, read_source, signals, usage};

pub(super) fn run(args: RunArgs) -> Result<i32> {
    let source = read_source(&args.file)?;
    let input_file_text = match &args.input_file {
        Some(path) if args.input.is_none() => Some(
            std::fs::read_to_string(path)
                .map_err(|e| usage(format!("can't read {}: {e}", path.display())))?,
        ),
        _ => None,
    };
    let script_stdin = match (&args.stdin_file, args.script) {
        (Some(path), _) => Some(read_source(path)?),
        (None, true) if args.file.as_os_str() == "-" => {
            return Err(usage(
                "--script with the program on stdin needs --stdin-file for the program's input",
            ))
        }
        (None, true) => Some(read_source(&PathBuf::from("-"))?),
        (None, false) => None,
    };
    let config = args.limits.config();
    let task = args.task(source, input_file_text.as_deref(), script_stdin)?;
    super::prepare_wasm_if_cold(task.sandbox.tier.unwrap_or(config.tier))?;
    let outcome = run_one(task, config);
    println!("{}", outcome_to_json(&outcome));
    Ok(match outcome.exit_code {
        // A script's own exit code, as `python prog.py` would exit.
        Some(code) if signals::received().is_none() => code,
        _ => finished(&outcome),
    })
}

pub(super) fn exec(args: ExecArgs) -> Result<i32> {
    let input = read_source(&PathBuf::from("-"))?;
    let (config, policy) = match args.sandbox_config {
        Some(config) => (config, Policy::unbounded()),
        None => {
            let config = args.limits.config();
            let policy = args.policy.policy(&config);
            (config, policy)
        }
    };
    let outcome = match std::str::from_utf8(&input) {
        Ok(text) => {
            match parse_task(text).and_then(|task| policy.check(&task, &config).map(|()| task)) {
                Ok(task) => run_one(task, config),
                Err(error) => TaskOutcome::from_error(task_id(text), error),
            }
        }
        Err(_) => TaskOutcome::from_error(
            None,
            lattice::task::TaskError::invalid("the task on stdin is not UTF-8"),
        ),
    };
    println!("{}", outcome_to_json(&outcome));
    Ok(finished(&outcome))
}

/// `ray-worker`: the Ray executor's warm worker on a node, as three
/// processes. The one the actor starts starts a keeper in a process group
/// of its own and exits: Ray kills an actor's direct children with it, and
/// the worker must live on to see its stdin close and clean up after its
/// tasks. The keeper, a child subreaper, runs the worker proper as its
/// child; once that exits (or is killed mid-task, when it can't clean up),
/// the keeper kills whatever its tasks left (a none-tier task's own
/// processes, which no sandbox contains), then exits.
pub(super) fn ray_worker(args: RayWorkerArgs) -> Result<i32> {
    let next = |stage: &str| {
        let mut command = std::process::Command::new(std::env::current_exe()?);
        command.args([
            "ray-worker",
            "--stage",
            stage,
            "--slots",
            &args.slots.to_string(),
        ]);
        Ok::<_, std::io::Error>(command)
    };
    match args.stage {
        None => {
            let mut keeper = next("keeper")?;
            std::os::unix::process::CommandExt::process_group(&mut keeper, 0);
            keeper.spawn()?;
            Ok(0)
        }
        Some(WorkerStage::Keeper) => {
            // SAFETY: prctl(2) on this process; no memory involved.
            unsafe {
                libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
            }
            let mut worker = next("serve")?.spawn()?;
            // The worker has the actor's pipes now. The keeper lets go of
            // stdin, so that the actor closing it reaches the worker, and
            // keeps stdout until it has swept, so that the actor sees the
            // end only once nothing is left.
            let null = std::fs::File::open("/dev/null")?;
            // SAFETY: dup2(2) onto this process's own stdin.
            unsafe {
                libc::dup2(null.as_raw_fd(), 0);
            }
            let _ = worker.wait();
            // What the worker's tasks left has been reparented here.
            for _ in 0..50 {
                let left = super::children_of("self");
                if left.is_empty() {
                    break;
                }
                for &pid in &left {
                    // SAFETY: kill(2) and waitpid(2) on this process's own
                    // children; no memory involved.
                    unsafe {
                        libc::kill(pid as i32, libc::SIGKILL);
                        libc::waitpid(pid as i32, std::ptr::null_mut(), 0);
                    }
                }
            }
            Ok(0)
        }
        Some(WorkerStage::Serve) => {
            super::prepare_wasm_if_cold(lattice::sandbox::SandboxLevel::Wasm)?;
            lattice::executor::serve_ray_worker(args.slots as usize)?;
            Ok(0)
        }
    }
}

/// Runs one task on a one-worker local executor; a signal cancels it.
fn run_one(task: TaskSubmission, config: SandboxConfig) -> TaskOutcome {
    let executor = Arc::new(LocalExecutor::new(Some(1), Some(config)));
    let id = task.id.clone();
    {
        let executor = executor.clone();
        signals::on_signal(move || {
            let _ = executor.shutdown();
        });
    }
    let outcome = match executor.submit(task) {
        Ok(handle) => executor.get_result(&handle),
        Err(error) => TaskOutcome::from_error(id, error),
    };
    signals::clear();
    outcome
}

/// The exit code after one task: a signal's, else the outcome's.
fn finished(outcome: &TaskOutcome) -> i32 {
    signals::received().map_or_else(|| exit_code(outcome), signals::exit_code)
}
