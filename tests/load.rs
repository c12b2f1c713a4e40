//! Load: 10,000 mixed tasks (ok, failing, timing out, memory-limited) on
//! the default wasm tier through `LocalExecutor` and through `batch`, at
//! concurrency 1, 2 and 32 — every task gets exactly one outcome, the right
//! one; memory stays flat; nothing is left behind. And a cancel storm.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use lattice::executor::{ExecutorBackend, LocalExecutor};
use lattice::sandbox::{SandboxConfig, SandboxLevel};
use lattice::task::{ErrorKind, TaskHandle, TaskSubmission};
use serde_json::{json, Value};

const TASKS: usize = 10_000;

/// Task `i` of the mix and the outcome it must have: mostly fine, some
/// failing, a few over their time or memory limit.
fn mixed(i: usize) -> (TaskSubmission, Result<Value, ErrorKind>) {
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
            level: SandboxLevel::Wasm,
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
    for workers in [1, 2, 32] {
        run_mix(workers);
    }
}

#[test]
fn ten_thousand_mixed_tasks_through_batch_at_1_2_and_32() {
    let mut lines = String::new();
    let mut expected = HashMap::new();
    for i in 0..TASKS {
        let (task, outcome) = mixed(i);
        let mut spec = json!({"id": i, "code": task_code(&task), "input": i});
        if i % 50 == 0 {
            spec["timeout_s"] = json!(0.02);
        }
        if i % 50 == 1 {
            spec["max_memory_mb"] = json!(32);
        }
        lines.push_str(&spec.to_string());
        lines.push('\n');
        expected.insert(i as u64, outcome);
    }
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &lines).unwrap();
    for concurrency in ["1", "2", "32"] {
        let path = file.path().display().to_string();
        let run = lattice_cli(&["batch", &path, "--concurrency", concurrency], "", &[]);
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
        }
    }
}

fn task_code(task: &TaskSubmission) -> String {
    match &task.payload {
        lattice::task::Payload::Code(code) => code.clone(),
        _ => unreachable!("the mix is Python"),
    }
}

#[test]
fn a_cancel_storm_gives_every_task_one_outcome() {
    let executor = LocalExecutor::new(
        Some(4),
        Some(SandboxConfig {
            level: SandboxLevel::Wasm,
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
