//! criterion benches of the hot paths: task JSON decode/encode, and the
//! executor's submit + get overhead (native closure: no tier cost), one
//! trivial Python task through the default tier, a failing, a 1 MB and a
//! computing task on the wasm tier beside the none tier, a wasm task with
//! and without its compiled code kept, and a host-function call's round
//! trip from code in a wasm session.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use lattice::executor::{ExecutorBackend, LocalExecutor};
use lattice::sandbox::{CancelToken, SandboxConfig, SandboxExecutor, SandboxLevel};
use lattice::task::json::{outcome_to_json, parse_task};
use lattice::task::TaskSubmission;
use serde_json::json;

const TASK: &str = r#"{"id": "t1", "code": "def f(x):\n    return x + 1\n", "input": {"values": [1, 2, 3, 1267650600228229401496703205376], "name": "bench"}, "timeout_s": 5, "resources": {"cpu": 1}}"#;

fn task_json(c: &mut Criterion) {
    c.bench_function("task_json_decode", |b| b.iter(|| parse_task(TASK).unwrap()));
    let outcome = lattice::task::TaskOutcome {
        id: Some(json!("t1")),
        result: Ok(json!({"values": [1, 2, 3], "ok": true})),
        stdout: "hello\n".into(),
        stderr: String::new(),
        tier: Some(lattice::sandbox::SandboxLevel::Subprocess),
        node_id: Some("local".into()),
        duration: Duration::from_micros(900),
        exit_code: None,
        files: Default::default(),
    };
    c.bench_function("result_json_encode", |b| {
        b.iter(|| outcome_to_json(&outcome))
    });
}

fn executor_overhead(c: &mut Criterion) {
    let executor = LocalExecutor::new(Some(1), None);
    c.bench_function("local_submit_get_native", |b| {
        b.iter(|| {
            let handle = executor
                .submit(TaskSubmission::native(|_| Ok(json!(1))))
                .unwrap();
            let outcome = executor.get_result(&handle);
            executor.release(&handle);
            outcome
        })
    });
}

/// `def f(x): return x + 1` through the wasm tier (instantiate + run +
/// drop, warm engine) and the subprocess tier, side by side.
fn trivial_python_task(c: &mut Criterion) {
    let task = TaskSubmission::python("def f(x):\n    return x + 1\n").with_input(json!(1));
    let mut group = c.benchmark_group("trivial_task");
    group.sample_size(20);
    for level in [SandboxLevel::Wasm, SandboxLevel::Subprocess] {
        let sandbox = SandboxExecutor::new(SandboxConfig {
            tier: level,
            ..SandboxConfig::default()
        });
        // Warm: the first wasm task loads (or prepares) the compiled guest.
        assert!(sandbox.run(&task, &CancelToken::new()).is_ok());
        group.bench_function(level.as_str(), |b| {
            b.iter(|| sandbox.run(&task, &CancelToken::new()))
        });
    }
    group.finish();
}

/// What a task that fails, one that moves ~1 MB of strings, and ones that
/// compute cost on the wasm tier, beside the none tier (the same
/// RustPython, native): the driver's traceback formatting, the JSON scan
/// and encode of strings, the interpreter's int fast paths, the list sort
/// and a generator.
fn wasm_beside_native(c: &mut Criterion) {
    let row = "abcdefghij".repeat(100);
    let rows = json!(vec![row; 1000]);
    let workloads = [
        (
            "raises",
            false,
            TaskSubmission::python("def f(x):\n    raise ValueError(f'bad input: {x}')\n")
                .with_input(json!(1)),
        ),
        (
            "io_1mb",
            true,
            TaskSubmission::python("def f(rows):\n    return [row[::-1] for row in rows]\n")
                .with_input(rows),
        ),
        (
            "fib_20",
            true,
            TaskSubmission::python(
                "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n\ndef f(n):\n    return fib(n)\n",
            )
            .with_input(json!(20)),
        ),
        (
            // The list sort's int path and the interpreter's int fast paths
            // (vendor/README.md, the VM's patches).
            "sort_2e4",
            true,
            TaskSubmission::python(
                "def f(n):\n    values = [i * 7919 % 100003 for i in range(n)]\n    values.sort()\n    return sum(values[::1000])\n",
            )
            .with_input(json!(20_000)),
        ),
        (
            // A generator's steps, deallocation and the int `*` fast path
            // (vendor/README.md, the VM's patches).
            "generator_sum_2e4",
            true,
            TaskSubmission::python(
                "def f(n):\n    values = [i * 7919 % 100003 for i in range(n)]\n    return sum(i * v for i, v in enumerate(values, 1))\n",
            )
            .with_input(json!(20_000)),
        ),
    ];
    for (name, succeeds, task) in workloads {
        let mut group = c.benchmark_group(name);
        group.sample_size(20);
        for level in [SandboxLevel::Wasm, SandboxLevel::None] {
            let sandbox = SandboxExecutor::new(SandboxConfig {
                tier: level,
                ..SandboxConfig::default()
            });
            // Warm, and checked: the bench measures the task it means to.
            let outcome = sandbox.run(&task, &CancelToken::new());
            assert_eq!(outcome.is_ok(), succeeds, "{name} on {level}");
            group.bench_function(level.as_str(), |b| {
                b.iter(|| sandbox.run(&task, &CancelToken::new()))
            });
        }
        group.finish();
    }
}

/// A trivial task on the wasm tier after tasks that moved ~1 MB through the
/// same pooled slots, beside one after trivial tasks only: a slot keeps
/// the pages its tasks wrote resident and copies them back at every reset,
/// until it is emptied (vendor/README.md, the second wasmtime patch).
fn trivial_after_large(c: &mut Criterion) {
    let trivial = TaskSubmission::python("def f(x):\n    return x + 1\n").with_input(json!(1));
    let large = TaskSubmission::python("def f(rows):\n    return [row[::-1] for row in rows]\n")
        .with_input(json!(vec!["abcdefghij".repeat(100); 1000]));
    let sandbox = SandboxExecutor::new(SandboxConfig {
        tier: SandboxLevel::Wasm,
        ..SandboxConfig::default()
    });
    let mut group = c.benchmark_group("trivial_after");
    group.sample_size(20);
    for (name, before) in [("trivial", &trivial), ("io_1mb", &large)] {
        group.bench_function(name, |b| {
            for _ in 0..20 {
                assert!(sandbox.run(before, &CancelToken::new()).is_ok());
            }
            b.iter(|| sandbox.run(&trivial, &CancelToken::new()))
        });
    }
    group.finish();
}

/// A trivial wasm task whose source ran before (its compiled code is kept
/// by the host, src/sandbox/wasm/code_cache.rs) beside one whose source is
/// new at every task (compiled in the task); and the same for a task that
/// uses a regex (its compile kept too, or done by every task).
fn kept_compiled_code(c: &mut Criterion) {
    let sandbox = SandboxExecutor::new(SandboxConfig {
        tier: SandboxLevel::Wasm,
        ..SandboxConfig::default()
    });
    let seen = TaskSubmission::python("def f(x):\n    return x + 1\n").with_input(json!(1));
    for _ in 0..3 {
        assert!(sandbox.run(&seen, &CancelToken::new()).is_ok());
    }
    let mut group = c.benchmark_group("wasm_compile");
    group.sample_size(20);
    group.bench_function("source_seen_before", |b| {
        b.iter(|| sandbox.run(&seen, &CancelToken::new()))
    });
    let mut n = 0u64;
    group.bench_function("source_new_each_task", |b| {
        b.iter(|| {
            n += 1;
            let code = format!("def f(x):\n    return x + {n}\n");
            sandbox.run(
                &TaskSubmission::python(code).with_input(json!(1)),
                &CancelToken::new(),
            )
        })
    });
    // A regex: loaded as its source's earlier run compiled it, beside one
    // compiled by every task (a new pattern each time, so `re` has it in
    // no cache).
    let regex = |pattern: &str| {
        TaskSubmission::python(format!(
            "import re\n\ndef f(x):\n    return re.findall(r'{pattern}', x)\n"
        ))
        .with_input(json!("the quick brown fox, 42 times"))
    };
    let kept = regex("[a-z]+|[0-9]+");
    for _ in 0..4 {
        assert!(sandbox.run(&kept, &CancelToken::new()).is_ok());
    }
    group.bench_function("regex_kept", |b| {
        b.iter(|| sandbox.run(&kept, &CancelToken::new()))
    });
    group.bench_function("regex_new_each_task", |b| {
        b.iter(|| {
            n += 1;
            sandbox.run(
                &regex(&format!("[a-z]+|[0-9]+|x{{{n}}}")),
                &CancelToken::new(),
            )
        })
    });
    group.finish();
}

/// One `ping()` host call from code in a session, round trip (the Python
/// loop around it included), on the wasm tier and, for scale, the none
/// and subprocess tiers.
fn host_call_round_trip(c: &mut Criterion) {
    use lattice::session::{HostFunctions, HostLimits, Session};
    let mut group = c.benchmark_group("host_call");
    for level in [
        SandboxLevel::Wasm,
        SandboxLevel::None,
        SandboxLevel::Subprocess,
    ] {
        let session = Session::builder(SandboxConfig {
            tier: level,
            ..SandboxConfig::default()
        })
        .host_functions(
            HostFunctions::new()
                .register("ping", |_| Ok(json!(1)))
                .with_limits(HostLimits {
                    max_calls: u32::MAX,
                    max_bytes_in: u64::MAX,
                    max_bytes_out: u64::MAX,
                }),
        )
        .open()
        .unwrap();
        assert_eq!(session.exec("ping()").result.unwrap(), json!(1));
        group.bench_function(level.as_str(), |b| {
            b.iter_custom(|iters| {
                let code = format!("for _ in range({iters}):\n    ping()");
                let started = std::time::Instant::now();
                session.exec(&code).result.unwrap();
                started.elapsed()
            })
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    task_json,
    executor_overhead,
    trivial_python_task,
    wasm_beside_native,
    trivial_after_large,
    kept_compiled_code,
    host_call_round_trip
);
criterion_main!(benches);
