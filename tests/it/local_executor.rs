//! The local executor with real CPython tasks: bounded workers, wait with a
//! real timeout, cancel of queued and running tasks, shutdown, resources.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use lattice::executor::{create_executor, ExecutorBackend, ExecutorOptions, LocalExecutor};
use lattice::sandbox::{SandboxConfig, SandboxLevel};
use lattice::task::{ExecutorType, TaskError, TaskHandle, TaskSubmission};
use serde_json::json;

fn executor(workers: usize) -> LocalExecutor {
    LocalExecutor::new(
        Some(workers),
        Some(SandboxConfig {
            tier: SandboxLevel::Subprocess,
            timeout: Duration::from_secs(60),
            ..SandboxConfig::default()
        }),
    )
}

fn sleeper(seconds: f64) -> TaskSubmission {
    TaskSubmission::python(format!(
        "import os, time\ndef f(x):\n    print('pid:', os.getpid(), os.readlink('/proc/self/ns/pid'), flush=True)\n    time.sleep({seconds})\n    return x\n"
    ))
    .with_input(json!("slept"))
}

#[test]
fn results_come_back_through_the_trait_object() {
    let _suite = crate::common::suite(module_path!());
    let executor = create_executor(
        ExecutorType::Local,
        ExecutorOptions {
            max_workers: Some(2),
            sandbox: Some(SandboxConfig {
                tier: SandboxLevel::Subprocess,
                ..SandboxConfig::default()
            }),
            ..ExecutorOptions::default()
        },
    )
    .unwrap();
    executor.initialize().unwrap();
    let handles: Vec<TaskHandle> = (0..6)
        .map(|i| {
            executor
                .submit(
                    TaskSubmission::python("def f(x):\n    return x * x\n")
                        .with_input(json!(i))
                        .with_id(i),
                )
                .unwrap()
        })
        .collect();
    for (i, handle) in handles.iter().enumerate() {
        let outcome = executor.get_result(handle);
        assert_eq!(outcome.id, Some(json!(i)));
        assert_eq!(outcome.node_id.as_deref(), Some("local"));
        assert_eq!(outcome.tier, Some(SandboxLevel::Subprocess));
        assert_eq!(ok(&outcome), json!(i * i));
    }
    executor.shutdown().unwrap();
}

#[test]
fn concurrency_is_bounded_by_max_workers() {
    let _suite = crate::common::suite(module_path!());
    let executor = executor(2);
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let handles: Vec<TaskHandle> = (0..6)
        .map(|_| {
            let (running, peak) = (running.clone(), peak.clone());
            executor
                .submit(TaskSubmission::native(move |_| {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(100));
                    running.fetch_sub(1, Ordering::SeqCst);
                    Ok(json!(now))
                }))
                .unwrap()
        })
        .collect();
    for handle in &handles {
        ok(&executor.get_result(handle));
    }
    assert_eq!(peak.load(Ordering::SeqCst), 2);
}

#[test]
fn wait_honours_its_timeout_and_zero_polls() {
    let _suite = crate::common::suite(module_path!());
    let executor = executor(1);
    let handle = executor.submit(sleeper(3.0)).unwrap();
    let (done, pending) = executor.wait(std::slice::from_ref(&handle), Duration::ZERO);
    assert_eq!((done.len(), pending.len()), (0, 1));
    let started = Instant::now();
    let (done, pending) = executor.wait(std::slice::from_ref(&handle), Duration::from_millis(700));
    let waited = started.elapsed();
    assert_eq!((done.len(), pending.len()), (0, 1));
    assert!(
        waited >= Duration::from_millis(650) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    let (done, pending) = executor.wait(std::slice::from_ref(&handle), Duration::from_secs(30));
    assert_eq!((done.len(), pending.len()), (1, 0));
    assert_eq!(ok(&executor.get_result(&handle)), json!("slept"));
}

#[test]
fn cancel_stops_queued_and_running_tasks() {
    let _suite = crate::common::suite(module_path!());
    let executor = executor(1);
    let running = executor.submit(sleeper(60.0)).unwrap();
    let queued = executor.submit(sleeper(60.0)).unwrap();
    // Let the first one start.
    std::thread::sleep(Duration::from_millis(800));
    let started = Instant::now();
    assert!(executor.cancel(&queued));
    assert!(executor.cancel(&running));
    let first = executor.get_result(&running);
    let second = executor.get_result(&queued);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(err(&first), TaskError::Cancelled);
    assert_eq!(err(&second), TaskError::Cancelled);
    for process in pids_in(&first.stdout) {
        assert!(gone(&process), "the cancelled task's process survived");
    }
    assert!(second.stdout.is_empty(), "the queued task ran");
    // Cancelling a finished task is refused; the outcome stays.
    assert!(!executor.cancel(&running));
    assert_eq!(err(&executor.get_result(&running)), TaskError::Cancelled);
}

#[test]
fn shutdown_cancels_everything_and_leaves_nothing_running() {
    let _suite = crate::common::suite(module_path!());
    let executor = executor(2);
    let handles: Vec<TaskHandle> = (0..4)
        .map(|_| executor.submit(sleeper(60.0)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(800));
    let started = Instant::now();
    executor.shutdown().unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    for handle in &handles {
        let outcome = executor.get_result(handle);
        assert_eq!(err(&outcome), TaskError::Cancelled);
        for process in pids_in(&outcome.stdout) {
            assert!(gone(&process), "{process}");
        }
    }
    assert!(matches!(
        executor.submit(sleeper(0.0)),
        Err(TaskError::InvalidTask { .. })
    ));
}

#[test]
fn native_closures_run_in_process() {
    let _suite = crate::common::suite(module_path!());
    let executor = executor(1);
    let task = TaskSubmission::native(|call| {
        let x = call.input.and_then(|v| v.as_i64()).ok_or("no input")?;
        Ok(json!(x + call.args.len() as i64))
    })
    .with_input(json!(41));
    let outcome = executor.get_result(&executor.submit(task).unwrap());
    assert_eq!(ok(&outcome), json!(41));
    assert_eq!(outcome.tier, Some(SandboxLevel::None));
    let failing = executor
        .submit(TaskSubmission::native(|_| Err("no luck".into())))
        .unwrap();
    assert_eq!(failed_type(&executor.get_result(&failing)), "NativeError");
    let panicking = executor
        .submit(TaskSubmission::native(|_| panic!("boom")))
        .unwrap();
    match err(&executor.get_result(&panicking)) {
        TaskError::Failed {
            type_name, message, ..
        } => {
            assert_eq!((type_name.as_str(), message.as_str()), ("Panic", "boom"))
        }
        other => panic!("{other:?}"),
    }
    // A closure can't be isolated: asking for a tier is an error, not a silent pass.
    let isolated = executor
        .submit(TaskSubmission::native(|_| Ok(json!(1))).with_tier(SandboxLevel::Subprocess))
        .unwrap();
    assert!(matches!(
        err(&executor.get_result(&isolated)),
        TaskError::InvalidTask { .. }
    ));
}

#[test]
fn bad_placement_is_refused_at_submit() {
    let _suite = crate::common::suite(module_path!());
    let executor = executor(1);
    assert!(matches!(
        executor.submit(sleeper(0.0).with_node("node-elsewhere")),
        Err(TaskError::InvalidTask { .. })
    ));
    let mut greedy = sleeper(0.0);
    greedy.resources.gpu = Some(64.0);
    assert!(matches!(
        executor.submit(greedy),
        Err(TaskError::InvalidTask { .. })
    ));
    let stranger = TaskHandle {
        handle_id: 999,
        executor_type: ExecutorType::Local,
    };
    assert!(matches!(
        err(&executor.get_result(&stranger)),
        TaskError::InvalidTask { .. }
    ));
    assert!(!executor.cancel(&stranger));
}

#[test]
fn resources_describe_this_machine() {
    let _suite = crate::common::suite(module_path!());
    let resources = executor(1).get_available_resources().unwrap();
    assert_eq!(resources.nodes.len(), 1);
    let node = &resources.nodes[0];
    assert_eq!(node.node_id, "local");
    assert!(node.cpu >= 1.0);
    assert!(node.memory > 0 && node.memory_available <= node.memory);
}

#[test]
fn the_ray_executor_says_how_to_get_ray_when_its_python_has_none() {
    let _suite = crate::common::suite(module_path!());
    // The factory builds it; starting it needs a Python with ray (tests/it/ray_executor.rs
    // runs it on a real cluster).
    let executor = create_executor(
        ExecutorType::Ray,
        ExecutorOptions {
            ray: lattice::executor::RayOptions {
                python: "/nonexistent/python3".into(),
                ..Default::default()
            },
            ..ExecutorOptions::default()
        },
    )
    .unwrap();
    assert_eq!(executor.executor_type(), ExecutorType::Ray);
    match executor.initialize() {
        Err(TaskError::SandboxUnavailable { reason }) => {
            assert!(reason.contains("pip install \"ray[default]\""), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn results_can_be_awaited() {
    let executor = executor(2);
    let handles: Vec<TaskHandle> = (0..3)
        .map(|i| {
            executor
                .submit(TaskSubmission::python("def f(x):\n    return -x\n").with_input(json!(i)))
                .unwrap()
        })
        .collect();
    let futures: Vec<_> = handles
        .iter()
        .map(|h| executor.get_result_async(h))
        .collect();
    for (i, future) in futures.into_iter().enumerate() {
        let outcome = tokio::time::timeout(Duration::from_secs(30), future)
            .await
            .unwrap();
        assert_eq!(ok(&outcome), json!(-(i as i64)));
    }
}

#[test]
fn the_process_wide_config_is_used_when_none_is_given() {
    let _suite = crate::common::suite(module_path!());
    // Other tests give their executors a config of their own, so changing the
    // process-wide one here does not race with them; the suites after this
    // one (same process) get the default back.
    let _restore = RestoreDefaultConfig;
    let config = SandboxConfig {
        tier: SandboxLevel::Subprocess,
        timeout: Duration::from_millis(700),
        ..SandboxConfig::default()
    };
    lattice::sandbox::set_sandbox_config(config.clone());
    assert_eq!(lattice::sandbox::get_sandbox_config(), config);
    assert_eq!(lattice::sandbox::get_sandbox_executor().config(), &config);
    let executor = LocalExecutor::new(Some(1), None);
    let outcome = executor.get_result(&executor.submit(sleeper(10.0)).unwrap());
    assert!(matches!(err(&outcome), TaskError::Timeout { .. }));
    let runner =
        lattice::runner::CodeRunner::new("def f(x):\n    return x['a'] + 1\n", json!({"a": 1}));
    assert_eq!(runner.run().unwrap(), json!(2));
}

#[test]
fn a_running_native_closure_is_reported_cancelled_and_never_blocks_shutdown() {
    let _suite = crate::common::suite(module_path!());
    let executor = executor(1);
    let handle = executor
        .submit(TaskSubmission::native(|call| {
            let started = Instant::now();
            while !call.is_cancelled() && started.elapsed() < Duration::from_secs(30) {
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(json!(call.is_cancelled()))
        }))
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let blocked = executor
        .submit(TaskSubmission::native(|_| {
            std::thread::sleep(Duration::from_secs(30));
            Ok(json!(0))
        }))
        .unwrap();
    assert!(executor.cancel(&handle));
    assert_eq!(err(&executor.get_result(&handle)), TaskError::Cancelled);
    // Let the second closure start, then shut down while it can't be stopped.
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    executor.shutdown().unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(err(&executor.get_result(&blocked)), TaskError::Cancelled);
}
