//! The none tier: Python in-process in native RustPython, for trusted code.
//! It isolates nothing, but its limits, cancel and output caps still hold,
//! and every task gets its outcome, even one that swallows the interrupt.

use std::time::{Duration, Instant};

use crate::common::*;
use lattice::sandbox::{CancelToken, SandboxConfig, SandboxExecutor, SandboxLevel};
use lattice::task::{TaskError, TaskSubmission, TimeLimit};
use serde_json::{json, Value};

const TIER: SandboxLevel = SandboxLevel::None;

fn none(config: SandboxConfig) -> SandboxExecutor {
    SandboxExecutor::new(SandboxConfig {
        tier: TIER,
        ..config
    })
}

fn run_with(config: SandboxConfig, code: &str, input: Value) -> lattice::task::TaskOutcome {
    none(config).run(
        &TaskSubmission::python(code).with_input(input),
        &CancelToken::new(),
    )
}

fn short(timeout_ms: u64) -> SandboxConfig {
    SandboxConfig {
        timeout: Duration::from_millis(timeout_ms),
        ..SandboxConfig::default()
    }
}

#[test]
fn python_runs_in_this_process_in_a_fresh_namespace() {
    let _suite = crate::common::suite(module_path!());
    let pid = ok(&run_code(
        TIER,
        "import os\nleak = 1\ndef f(x):\n    return os.getpid()\n",
        json!(null),
    ));
    assert_eq!(pid, json!(std::process::id()));
    let fresh = run_code(
        TIER,
        "def f(x):\n    return 'leak' in globals()\n",
        json!(null),
    );
    assert_eq!(ok(&fresh), json!(false));
    // stdin is empty, not the host's.
    assert_eq!(
        failed_type(&run_code(
            TIER,
            "def f(x):\n    return input()\n",
            json!(null)
        )),
        "EOFError"
    );
}

#[test]
fn output_is_captured_and_capped() {
    let _suite = crate::common::suite(module_path!());
    let outcome = run_with(
        SandboxConfig {
            max_output_bytes: 1000,
            ..SandboxConfig::default()
        },
        "import sys\ndef f(x):\n    print('x' * 100000)\n    print('err', file=sys.stderr)\n    return 1\n",
        json!(null),
    );
    assert_eq!(ok(&outcome), json!(1));
    assert!(outcome.stdout.starts_with(&"x".repeat(1000)));
    assert!(
        outcome.stdout.contains("output truncated"),
        "{}",
        outcome.stdout
    );
    assert_eq!(outcome.stderr, "err\n");
}

#[test]
fn spinning_and_sleeping_tasks_stop_at_their_limits() {
    let _suite = crate::common::suite(module_path!());
    let started = Instant::now();
    let spin = run_with(
        short(300),
        "def f(x):\n    while True:\n        pass\n",
        json!(null),
    );
    assert!(matches!(
        err(&spin),
        TaskError::Timeout {
            limit: TimeLimit::Wall,
            ..
        }
    ));
    let sleep = run_with(
        short(300),
        "import time\ndef f(x):\n    time.sleep(100)\n",
        json!(null),
    );
    assert!(matches!(err(&sleep), TaskError::Timeout { .. }));
    let cpu = run_with(
        SandboxConfig {
            max_cpu_time: Duration::from_millis(300),
            ..SandboxConfig::default()
        },
        "def f(x):\n    while True:\n        pass\n",
        json!(null),
    );
    assert!(matches!(
        err(&cpu),
        TaskError::Timeout {
            limit: TimeLimit::Cpu,
            ..
        }
    ));
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    // The interpreters that were interrupted serve the next task.
    assert_eq!(
        ok(&run_code(TIER, "def f(x):\n    return x * 2\n", json!(21))),
        json!(42)
    );
}

#[test]
fn a_sleeping_task_is_cancelled() {
    let _suite = crate::common::suite(module_path!());
    let (cancel, canceller) = cancel_after(Duration::from_millis(200));
    let started = Instant::now();
    let outcome = none(SandboxConfig::default()).run(
        &TaskSubmission::python("import time\ndef f():\n    time.sleep(100)\n"),
        &cancel,
    );
    canceller.join().unwrap();
    assert!(
        matches!(err(&outcome), TaskError::Cancelled),
        "{outcome:?} after {:?}",
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[test]
fn a_task_that_swallows_the_interrupt_still_gets_its_outcome() {
    let _suite = crate::common::suite(module_path!());
    // It catches KeyboardInterrupt for ~3 s (then gives up, so the thread
    // comes back); its caller must hear of the timeout after the grace.
    let code = "def f(x):\n    caught = 0\n    while caught < 300:\n        try:\n            while True:\n                pass\n        except BaseException:\n            caught += 1\n    return caught\n";
    let started = Instant::now();
    let outcome = run_with(short(200), code, json!(null));
    assert!(matches!(err(&outcome), TaskError::Timeout { .. }));
    let took = started.elapsed();
    assert!(took < Duration::from_millis(2500), "{took:?}");
}

#[test]
fn calls_that_would_end_replace_or_fork_the_host_are_refused() {
    let _suite = crate::common::suite(module_path!());
    // Each would end this test process (or copy it) if it went through:
    // that the test goes on is half of what it checks.
    let executor = none(SandboxConfig::default());
    for call in [
        "os._exit(3)",
        "os.abort()",
        "os.fork()",
        "os.forkpty()",
        "os.execv('/bin/true', ['true'])",
        "os.execvp('true', ['true'])",
        "os.kill(os.getpid(), 9)",
        "os.kill(0, 15)",
        "os.killpg(os.getpgrp(), 15)",
        "posix._exit(3)",
        "posix.fork()",
        "signal.raise_signal(9)",
    ] {
        let code =
            format!("import os, posix, signal\ndef f(x):\n    {call}\n    return 'went through'\n");
        let outcome = executor.run(
            &TaskSubmission::python(code).with_input(json!(null)),
            &CancelToken::new(),
        );
        match err(&outcome) {
            TaskError::Failed {
                type_name, message, ..
            } => {
                assert_eq!(type_name, "PermissionError", "{call}: {message}");
                assert!(message.contains("none tier"), "{call}: {message}");
            }
            other => panic!("{call}: {other:?}"),
        }
    }
    // Signalling another process still works (trusted code may manage its children).
    let child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let code = format!(
        "import os\ndef f(x):\n    os.kill({}, 15)\n    return 'sent'\n",
        child.id()
    );
    assert_eq!(ok(&run_code(TIER, &code, json!(null))), json!("sent"));
    let mut child = child;
    let status = child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(15)
    );
}
