//! Load: 10,000 mixed tasks (ok, failing, timing out, memory-limited),
//! mostly on the default wasm tier and 1 in 100 in a subprocess (some of
//! those forking a child and timing out), through `LocalExecutor` and
//! through `batch`, at concurrency 1, 2 and 32 — every task gets exactly one
//! outcome, the right one; memory stays flat; no process or temp dir of a
//! task is left behind. And a cancel storm.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::*;
use lattice::executor::{ExecutorBackend, LocalExecutor};
use lattice::sandbox::{SandboxConfig, SandboxLevel};
use lattice::task::json::TaskSpec;
use lattice::task::{ErrorKind, TaskHandle, TaskSubmission};
use serde_json::{json, Value};

const TASKS: usize = 10_000;

/// Task `i` of the mix and the outcome it must have: mostly fine, some
/// failing, a few over their time or memory limit.
fn mixed(i: usize) -> (TaskSubmission, Result<Value, ErrorKind>) {
    if i % 1000 == 7 {
        return (
            TaskSubmission::python(FORKS_AND_SPINS)
                .with_tier(SandboxLevel::Subprocess)
                .with_timeout(Duration::from_millis(300)),
            Err(ErrorKind::Timeout),
        );
    }
    if i % 100 == 3 {
        return (
            TaskSubmission::python("def f(x):\n    return x * 2\n")
                .with_tier(SandboxLevel::Subprocess),
            Ok(json!(i as u64 * 2)),
        );
    }
    match i % 50 {
        0 => (
            TaskSubmission::python("def f(x):\n    while True:\n        pass\n")
                .with_timeout(Duration::from_millis(20)),
            Err(ErrorKind::Timeout),
        ),
        1 => (
            TaskSubmission::python("def f(x):\n    return len(bytearray(64 << 20))\n")
                .with_max_memory_mb(32),
            Err(ErrorKind::MemoryLimit),
        ),
        n if n % 10 == 2 => (
            TaskSubmission::python("def f(x):\n    raise ValueError(x)\n"),
            Err(ErrorKind::TaskError),
        ),
        _ => (
            TaskSubmission::python("def f(x):\n    return x * 2\n"),
            Ok(json!(i as u64 * 2)),
        ),
    }
}

/// Reports itself and its child (`pid:` lines), then spins past its
/// timeout while the child sleeps: both must be gone after the outcome.
const FORKS_AND_SPINS: &str = "import os, time
def report():
    print('pid:', os.getpid(), os.readlink('/proc/self/ns/pid'), flush=True)
def f(x):
    report()
    child = os.fork()
    if child == 0:
        report()
        time.sleep(600)
        os._exit(0)
    while True:
        pass
";

/// The task temp dirs (`lattice-task-*`) in the temp dir now.
fn task_temp_dirs() -> Vec<String> {
    std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("lattice-task-"))
        .collect()
}

/// Checks that the processes a task reported (`pid:` lines) are gone.
fn processes_gone(stdout: &str) {
    for process in pids_in(stdout) {
        assert!(gone(&process), "process {process} outlived its task");
    }
}

/// Resident memory of this process, in MiB.
fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb / 1024.0
}

fn run_mix(workers: usize) {
    let executor = LocalExecutor::new(
        Some(workers),
        Some(SandboxConfig {
            tier: SandboxLevel::Wasm,
            ..SandboxConfig::default()
        }),
    );
    let mut rss_after_warmup = 0.0;
    // In windows, as a user streaming work would, so that memory is measured
    // at a steady state rather than with 10,000 results held.
    for window in 0..10 {
        let batch: Vec<(TaskHandle, Result<Value, ErrorKind>)> = (window * 1000
            ..(window + 1) * 1000)
            .map(|i| {
                let (task, expected) = mixed(i);
                let handle = executor
                    .submit(task.with_input(json!(i)).with_id(i))
                    .unwrap();
                (handle, expected)
            })
            .collect();
        for (handle, expected) in batch {
            let outcome = executor.get_result(&handle);
            match (&outcome.result, &expected) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "task {:?}", outcome.id),
                (Err(e), Err(kind)) => assert_eq!(e.kind(), *kind, "task {:?}", outcome.id),
                _ => panic!(
                    "task {:?}: {:?}, expected {expected:?}",
                    outcome.id, outcome.result
                ),
            }
            processes_gone(&outcome.stdout);
            executor.release(&handle);
        }
        if window == 1 {
            rss_after_warmup = rss_mb();
        }
    }
    let growth = rss_mb() - rss_after_warmup;
    assert!(
        growth < 64.0,
        "memory grew by {growth:.0} MiB over 8,000 tasks at {workers} workers"
    );
    executor.shutdown().unwrap();
}

#[test]
fn ten_thousand_mixed_tasks_through_the_executor_at_1_2_and_32_workers() {
    let _suite = crate::common::suite(module_path!());
    let temp_dirs_before = task_temp_dirs();
    for workers in [1, 2, 32] {
        run_mix(workers);
    }
    let left: Vec<_> = task_temp_dirs()
        .into_iter()
        .filter(|d| !temp_dirs_before.contains(d))
        .collect();
    assert!(left.is_empty(), "task temp dirs left: {left:?}");
}

#[test]
fn ten_thousand_mixed_tasks_through_batch_at_1_2_and_32() {
    let _suite = crate::common::suite(module_path!());
    let mut lines = String::new();
    let mut expected = HashMap::new();
    for i in 0..TASKS {
        let (task, outcome) = mixed(i);
        let task = task.with_id(i).with_input(json!(i));
        let spec = TaskSpec::from_submission(&task).unwrap();
        lines.push_str(&serde_json::to_string(&spec).unwrap());
        lines.push('\n');
        expected.insert(i as u64, outcome);
    }
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &lines).unwrap();
    // The batch's own temp dir, to see that it is left empty.
    let tmp = tempfile::tempdir().unwrap();
    for concurrency in ["1", "2", "32"] {
        let path = file.path().display().to_string();
        let run = lattice_cli(
            &["batch", &path, "--concurrency", concurrency],
            "",
            &[("TMPDIR", tmp.path())],
        );
        let stdout = String::from_utf8_lossy(&run.stdout);
        let outcomes: Vec<Value> = stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(outcomes.len(), TASKS, "one line per task");
        for (line, outcome) in outcomes.iter().enumerate() {
            let id = outcome["id"].as_u64().unwrap();
            assert_eq!(id, line as u64, "input order");
            match &expected[&id] {
                Ok(want) => assert_eq!(&outcome["result"], want, "{outcome}"),
                Err(kind) => {
                    assert_eq!(outcome["error"]["kind"], json!(kind.as_str()), "{outcome}")
                }
            }
            processes_gone(outcome["stdout"].as_str().unwrap());
        }
        let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().flatten().collect();
        assert!(left.is_empty(), "left in TMPDIR: {left:?}");
    }
}

#[test]
fn a_cancel_storm_gives_every_task_one_outcome() {
    let _suite = crate::common::suite(module_path!());
    let executor = LocalExecutor::new(
        Some(4),
        Some(SandboxConfig {
            tier: SandboxLevel::Wasm,
            ..SandboxConfig::default()
        }),
    );
    let handles: Vec<TaskHandle> = (0..1000)
        .map(|i| {
            let code = if i % 3 == 0 {
                "import time\ndef f(x):\n    time.sleep(0.05)\n    return x\n"
            } else {
                "def f(x):\n    return x\n"
            };
            executor
                .submit(TaskSubmission::python(code).with_input(json!(i)))
                .unwrap()
        })
        .collect();
    // Cancel every other task at scattered moments while they run.
    let mut cancelled = std::collections::HashSet::new();
    for (n, handle) in handles.iter().enumerate() {
        if n % 2 == 0 {
            executor.cancel(handle);
            cancelled.insert(n);
        }
        if n % 97 == 0 {
            std::thread::sleep(Duration::from_millis(3));
        }
    }
    for (n, handle) in handles.iter().enumerate() {
        let outcome = executor.get_result(handle);
        match &outcome.result {
            Ok(value) => assert_eq!(value, &json!(n), "task {n}"),
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Cancelled, "task {n}: {e:?}");
                assert!(cancelled.contains(&n), "task {n} was never cancelled");
            }
        }
        // A second look gives the same single outcome.
        assert_eq!(executor.get_result(handle).result, outcome.result);
    }
    executor.shutdown().unwrap();
}
