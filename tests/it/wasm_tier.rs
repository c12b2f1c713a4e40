//! The wasm tier, attacked and measured against CPython: isolation by
//! construction, limits that fire as what they are, the snapshot hazards,
//! user Wasm modules, and the compatibility corpus.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;
use lattice::sandbox::{CancelToken, Mount, SandboxConfig, SandboxExecutor, SandboxLevel};
use lattice::task::{TaskError, TaskSubmission, TimeLimit, WasmSource};
use serde_json::{json, Value};

const TIER: SandboxLevel = SandboxLevel::Wasm;

fn wasm(config: SandboxConfig) -> SandboxExecutor {
    SandboxExecutor::new(SandboxConfig {
        tier: TIER,
        ..config
    })
}

fn run_with(executor: &SandboxExecutor, code: &str, input: Value) -> lattice::task::TaskOutcome {
    executor.run(
        &TaskSubmission::python(code).with_input(input),
        &CancelToken::new(),
    )
}

#[test]
fn a_trivial_task_runs() {
    let _suite = crate::common::suite(module_path!());
    let outcome = run_code(
        TIER,
        "def f(x):\n    print('hi')\n    return x + 1\n",
        json!(41),
    );
    assert_eq!(ok(&outcome), json!(42));
    assert_eq!(outcome.stdout, "hi\n");
    assert_eq!(outcome.tier, Some(TIER));
}

#[test]
fn the_host_filesystem_environment_network_and_processes_are_out_of_reach() {
    let _suite = crate::common::suite(module_path!());
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret.txt");
    std::fs::write(&secret, "top secret").unwrap();
    std::env::set_var("LATTICE_WASM_TEST_SECRET", "hunter2");
    let attacks = [
        ("read a host file", format!("def f(x):\n    return open({:?}).read()\n", secret.display().to_string())),
        ("read /etc/passwd", "def f(x):\n    return open('/etc/passwd').read()\n".into()),
        ("list /", "import os\ndef f(x):\n    return os.listdir('/')\n".into()),
        ("write /tmp", "def f(x):\n    open('/tmp/lattice-escape', 'w').write('x')\n    return 'wrote'\n".into()),
        ("socket", "import socket\ndef f(x):\n    s = socket.socket()\n    s.connect(('127.0.0.1', 22))\n    return 'connected'\n".into()),
        ("dns", "import socket\ndef f(x):\n    return socket.getaddrinfo('localhost', 80)\n".into()),
        ("subprocess", "import subprocess\ndef f(x):\n    return subprocess.run(['id']).returncode\n".into()),
        ("os.system", "import os\ndef f(x):\n    return os.system('id')\n".into()),
        ("fork", "import os\ndef f(x):\n    return os.fork()\n".into()),
        ("environment", "import os\ndef f(x):\n    return os.environ['LATTICE_WASM_TEST_SECRET']\n".into()),
        (
            "introspection to os",
            "def f(x):\n    for cls in ().__class__.__base__.__subclasses__():\n        g = getattr(getattr(cls, '__init__', None), '__globals__', None)\n        if g and 'os' in g and hasattr(g['os'], 'listdir'):\n            return g['os'].listdir('/')\n    import sys\n    return sys.modules['os'].listdir('/')\n".into(),
        ),
        (
            "builtins tampering",
            "import builtins\ndef f(x):\n    builtins.open = lambda *a: 'patched'\n    __builtins__['__import__'] if isinstance(__builtins__, dict) else None\n    import io\n    return io.open('/etc/passwd').read()\n".into(),
        ),
    ];
    for (name, code) in attacks {
        let outcome = run_code(TIER, &code, json!(null));
        match &outcome.result {
            Err(TaskError::Failed { type_name, .. }) => {
                assert!(
                    type_name.ends_with("Error") || type_name == "PermissionError",
                    "{name}: {type_name}"
                )
            }
            other => panic!("{name}: the attack was not stopped: {other:?}"),
        }
    }
    assert!(!Path::new("/tmp/lattice-escape").exists());
    let env = run_code(
        TIER,
        "import os, sys\ndef f(x):\n    return [dict(os.environ), sys.argv]\n",
        json!(null),
    );
    assert_eq!(ok(&env), json!([{}, []]));
}

#[test]
fn mounts_are_read_only_unless_marked_and_do_not_leak_their_parent() {
    let _suite = crate::common::suite(module_path!());
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.txt"), "secret").unwrap();
    let mounted = outside.path().join("data");
    std::fs::create_dir(&mounted).unwrap();
    std::fs::write(mounted.join("in.txt"), "hello").unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret.txt"), mounted.join("link")).unwrap();
    std::os::unix::fs::symlink("../secret.txt", mounted.join("rel")).unwrap();
    // Wasm tasks reach their mounts as the user nobody: the writable one
    // must be nobody's to write to.
    std::os::unix::fs::chown(&mounted, Some(NOBODY), Some(NOBODY)).unwrap();
    let read_only = wasm(SandboxConfig {
        mounts: vec![Mount::new(&mounted, "/data", false).unwrap()],
        ..SandboxConfig::default()
    });
    assert_eq!(
        ok(&run_with(
            &read_only,
            "def f(x):\n    return open('/data/in.txt').read()\n",
            json!(null)
        )),
        json!("hello")
    );
    for code in [
        "def f(x):\n    open('/data/new.txt', 'w').write('x')\n",
        "def f(x):\n    open('/data/in.txt', 'a').write('x')\n",
        "import os\ndef f(x):\n    os.remove('/data/in.txt')\n",
        "def f(x):\n    return open('/data/../secret.txt').read()\n",
        "def f(x):\n    return open('/data/link').read()\n",
        "def f(x):\n    return open('/data/rel').read()\n",
        "import os\ndef f(x):\n    return os.listdir('/data/..')\n",
    ] {
        let outcome = run_with(&read_only, code, json!(null));
        assert!(
            matches!(outcome.result, Err(TaskError::Failed { .. })),
            "{code}: {:?}",
            outcome.result
        );
    }
    assert_eq!(
        std::fs::read_to_string(mounted.join("in.txt")).unwrap(),
        "hello"
    );
    assert!(!mounted.join("new.txt").exists());

    let writable = wasm(SandboxConfig {
        mounts: vec![Mount::new(&mounted, "/data", true).unwrap()],
        ..SandboxConfig::default()
    });
    let outcome = run_with(
        &writable,
        "def f(x):\n    open('/data/out.txt', 'w').write(x)\n    return 'ok'\n",
        json!("written"),
    );
    assert_eq!(ok(&outcome), json!("ok"));
    assert_eq!(
        std::fs::read_to_string(mounted.join("out.txt")).unwrap(),
        "written"
    );
    let escape = run_with(
        &writable,
        "def f(x):\n    open('/data/../escaped.txt', 'w').write('x')\n",
        json!(null),
    );
    assert!(escape.result.is_err());
    assert!(!outside.path().join("escaped.txt").exists());
}

#[test]
fn wall_and_cpu_limits_fire_as_timeouts() {
    let _suite = crate::common::suite(module_path!());
    let spin = "def f(x):\n    while True:\n        pass\n";
    let started = Instant::now();
    let outcome = run_with(
        &wasm(SandboxConfig {
            timeout: Duration::from_millis(500),
            ..SandboxConfig::default()
        }),
        spin,
        json!(null),
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(matches!(
        err(&outcome),
        TaskError::Timeout {
            limit: TimeLimit::Wall,
            ..
        }
    ));
    let outcome = run_with(
        &wasm(SandboxConfig {
            timeout: Duration::from_secs(30),
            max_cpu_time: Duration::from_millis(500),
            ..SandboxConfig::default()
        }),
        spin,
        json!(null),
    );
    assert!(matches!(
        err(&outcome),
        TaskError::Timeout {
            limit: TimeLimit::Cpu,
            ..
        }
    ));
}

#[test]
fn a_sleeping_task_still_honours_its_limits() {
    let _suite = crate::common::suite(module_path!());
    let started = Instant::now();
    let outcome = run_with(
        &wasm(SandboxConfig {
            timeout: Duration::from_millis(500),
            ..SandboxConfig::default()
        }),
        "import time\ndef f(x):\n    time.sleep(10**6)\n",
        json!(null),
    );
    assert!(matches!(
        err(&outcome),
        TaskError::Timeout {
            limit: TimeLimit::Wall,
            ..
        }
    ));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // Sleeping still sleeps as long as asked.
    let slept = ok(&run_code(
        TIER,
        "import time\ndef f(x):\n    t = time.monotonic()\n    time.sleep(0.3)\n    return time.monotonic() - t\n",
        json!(null),
    ));
    assert!((0.29..1.0).contains(&slept.as_f64().unwrap()), "{slept}");
    // And a cancel reaches a sleeping task.
    let (cancel, canceller) = cancel_after(Duration::from_millis(300));
    let started = Instant::now();
    let outcome = sandbox(TIER).run(
        &TaskSubmission::python("import time\ndef f(x):\n    time.sleep(60)\n")
            .with_input(json!(0)),
        &cancel,
    );
    canceller.join().unwrap();
    assert_eq!(err(&outcome), TaskError::Cancelled);
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[test]
fn memory_bombs_are_memory_limits() {
    let _suite = crate::common::suite(module_path!());
    let executor = wasm(SandboxConfig {
        max_memory_mb: 64,
        timeout: Duration::from_secs(30),
        ..SandboxConfig::default()
    });
    for code in [
        "def f(x):\n    return len('a' * 10**9)\n",
        "def f(x):\n    return len(bytearray(10**9))\n",
        "def f(x):\n    l = []\n    while True:\n        l.append('x' * 1000)\n",
        "def f(x):\n    l = []\n    while True:\n        l.append([0] * 100000)\n",
    ] {
        let outcome = run_with(&executor, code, json!(null));
        assert!(
            matches!(err(&outcome), TaskError::MemoryLimit { .. }),
            "{code}: {:?}",
            outcome.result
        );
    }
    // A size no 32-bit guest can even ask for is the task's own error
    // (no limit was reached): it can't be passed off as a memory limit.
    let outcome = run_with(
        &executor,
        "def f(x):\n    return len('a' * 10**12)\n",
        json!(null),
    );
    assert_eq!(
        failed_type(&outcome),
        "OverflowError",
        "{:?}",
        outcome.result
    );
    // The next task on the same engine is unharmed.
    assert_eq!(
        ok(&run_with(&executor, "def f(x):\n    return x\n", json!(1))),
        json!(1)
    );
}

#[test]
fn deep_recursion_is_a_recursion_error_not_a_crash() {
    let _suite = crate::common::suite(module_path!());
    for code in [
        "def f(x):\n    return f(x)\n",
        "import sys\nsys.setrecursionlimit(10**6)\ndef g(n):\n    return 0 if n == 0 else 1 + g(n - 1)\ndef f(x):\n    return g(10**5)\n",
    ] {
        assert_eq!(failed_type(&run_code(TIER, code, json!(null))), "RecursionError", "{code}");
    }
}

#[test]
fn output_floods_are_capped_and_cancel_interrupts() {
    let _suite = crate::common::suite(module_path!());
    let executor = wasm(SandboxConfig {
        max_output_bytes: 10_000,
        ..SandboxConfig::default()
    });
    let outcome = run_with(
        &executor,
        "def f(x):\n    for _ in range(100000):\n        print('x' * 100)\n    return 'done'\n",
        json!(null),
    );
    assert_eq!(ok(&outcome), json!("done"));
    assert!(outcome.stdout.contains("[lattice: output truncated:"));

    let (cancel, canceller) = cancel_after(Duration::from_millis(300));
    let outcome = sandbox(TIER).run(
        &TaskSubmission::python("def f(x):\n    while True: pass\n").with_input(json!(0)),
        &cancel,
    );
    canceller.join().unwrap();
    assert_eq!(err(&outcome), TaskError::Cancelled);
}

#[test]
fn tasks_never_share_random_streams_or_state() {
    let _suite = crate::common::suite(module_path!());
    let code = "import random\nSEEN = []\ndef f(x):\n    SEEN.append(x)\n    return [random.random(), random.getrandbits(64), len(SEEN)]\n";
    let a = ok(&run_code(TIER, code, json!(1)));
    let b = ok(&run_code(TIER, code, json!(2)));
    assert_ne!(a[0], b[0]);
    assert_ne!(a[1], b[1]);
    assert_eq!(
        (a[2].clone(), b[2].clone()),
        (json!(1), json!(1)),
        "state leaked between tasks"
    );
    let poison = run_code(
        TIER,
        "import json\ndef f(x):\n    json.dumps = None\n    return 1\n",
        json!(0),
    );
    ok(&poison);
    assert_eq!(
        ok(&run_code(
            TIER,
            "import json\ndef f(x):\n    return json.dumps(x)\n",
            json!([1])
        )),
        json!("[1]")
    );
}

/// A pooled slot is reset by copying back the pages it keeps, and one that
/// keeps more than 1 MiB is emptied every 32nd reset (vendor/README.md):
/// through both, every task starts from the clean snapshot, whatever the
/// task before it wrote.
#[test]
fn every_task_starts_clean_after_large_tasks_fill_its_slot() {
    let _suite = crate::common::suite(module_path!());
    let executor = wasm(SandboxConfig::default());
    let large = "import json, sys\ndef f(x):\n    json.dumps = None\n    sys.modules['lattice_marker'] = x\n    kept = [str(i) * 8 for i in range(50_000)]\n    return len(kept) + len('y' * (3 << 20))\n";
    let check = "import json, sys\ndef f(x):\n    return [json.dumps(x), 'lattice_marker' in sys.modules]\n";
    for round in 0..40 {
        let filled = run_with(&executor, large, json!(round));
        assert_eq!(ok(&filled), json!(50_000 + (3 << 20)), "round {round}");
        let seen = run_with(&executor, check, json!([round]));
        assert_eq!(
            ok(&seen),
            json!([format!("[{round}]"), false]),
            "round {round}: the task before leaked into this one"
        );
    }
}

/// What the snapshot made, a task may free, grow and replace, and the next
/// task still starts from the snapshot; memory freed in a task is used
/// again; and a task that needs more memory than the snapshot has grows it,
/// up to its limit.
#[test]
fn tasks_free_grow_and_replace_what_the_snapshot_made() {
    let _suite = crate::common::suite(module_path!());
    let executor = wasm(SandboxConfig {
        max_memory_mb: 64,
        ..SandboxConfig::default()
    });
    let churn = "import collections, json, re, sys
def f(x):
    # Grown: containers the snapshot made.
    sys.path.extend(str(i) for i in range(20_000))
    for i in range(5_000):
        sys.modules['lattice_m%d' % i] = i
    # Freed and replaced: objects the snapshot made.
    re.purge()
    json.decoder.__dict__.pop('scanstring', None)
    collections.OrderedDict = dict
    # Freed in a loop: ~2 MB a round, 40 rounds, under a 64 MiB limit.
    total = 0
    for round in range(40):
        block = [bytes(1000) for _ in range(2_000)]
        total += len(block)
        del block
    big = 'z' * (24 << 20)
    return [len(sys.path) > 20_000, total, len(big), json.loads(json.dumps(x))]\n";
    let check = "import collections, json, re, sys
def f(x):
    return [
        any(p.isdigit() for p in sys.path),
        sum(name.startswith('lattice_m') for name in sys.modules),
        collections.OrderedDict is dict,
        'scanstring' in json.decoder.__dict__,
        re.findall(r'[a-z]+', 'ab 12 cd'),
    ]\n";
    for round in 0..5 {
        let churned = run_with(&executor, churn, json!({ "round": round }));
        assert_eq!(
            ok(&churned),
            json!([true, 80_000, 24 << 20, { "round": round }]),
            "round {round}"
        );
        let seen = run_with(&executor, check, json!(null));
        assert_eq!(
            ok(&seen),
            json!([false, 0, false, true, ["ab", "cd"]]),
            "round {round}: the task before leaked into this one"
        );
    }
    // Past the limit: a memory limit, not a crash.
    let outcome = run_with(
        &executor,
        "def f(x):\n    kept = []\n    while True:\n        kept.append(bytes(1 << 20))\n",
        json!(null),
    );
    assert!(
        matches!(err(&outcome), TaskError::MemoryLimit { .. }),
        "{:?}",
        outcome.result
    );
}

/// The Python guest starts with its snapshot's memory (~30 MiB): a limit
/// below it is a memory limit, reported as one, for a task and a session.
#[test]
fn a_limit_below_what_the_guest_starts_with_is_a_memory_limit() {
    let _suite = crate::common::suite(module_path!());
    let small = SandboxConfig {
        max_memory_mb: 16,
        ..SandboxConfig::default()
    };
    let outcome = run_with(&wasm(small.clone()), "def f(x):\n    return x\n", json!(1));
    match err(&outcome) {
        TaskError::MemoryLimit { message } => {
            assert!(
                message.contains("16 MiB") && message.contains("to start"),
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }
    let error = lattice::session::Session::open(SandboxConfig {
        tier: TIER,
        ..small
    })
    .unwrap_err();
    assert!(matches!(error, TaskError::MemoryLimit { .. }), "{error:?}");
    // At 40 MiB it starts, and what is above the snapshot is the task's.
    let roomy = wasm(SandboxConfig {
        max_memory_mb: 40,
        ..SandboxConfig::default()
    });
    let outcome = run_with(
        &roomy,
        "def f(x):\n    return len(bytes(x))\n",
        json!(2 << 20),
    );
    assert_eq!(ok(&outcome), json!(2 << 20));
}

#[test]
fn settings_the_tier_cannot_honour_are_errors() {
    let _suite = crate::common::suite(module_path!());
    let networked = wasm(SandboxConfig {
        network: true,
        ..SandboxConfig::default()
    });
    assert!(matches!(
        err(&run_with(&networked, "def f(x):\n    return 1\n", json!(0))),
        TaskError::InvalidTask { .. }
    ));
    let command = sandbox(TIER).run(&TaskSubmission::command(["true"]), &CancelToken::new());
    assert!(matches!(err(&command), TaskError::InvalidTask { .. }));
}

/// Builds a fixture crate of tests/fixtures for a Wasm target and returns
/// its artifact (cargo does nothing when it is fresh).
fn fixture(name: &str, target: &str, artifact: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target_dir = root.join("target/fixtures");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--target", target, "--manifest-path"])
        .arg(root.join("tests/fixtures").join(name).join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "building {name} failed (is the rustup target {target} installed? scripts/test.sh adds it)"
    );
    target_dir.join(target).join("release").join(artifact)
}

/// The echo module fixture: a WASI command for wasm32-wasip1.
fn echo_module() -> PathBuf {
    fixture("echo-module", "wasm32-wasip1", "echo-module.wasm")
}

/// The echo component fixture: the lattice:task world for wasm32-wasip2.
fn echo_component() -> PathBuf {
    fixture("echo-component", "wasm32-wasip2", "echo_component.wasm")
}

#[test]
fn user_wasm_modules_run_under_the_same_limits() {
    let _suite = crate::common::suite(module_path!());
    let path = echo_module();
    let run_module = |input: Value, config: SandboxConfig| {
        wasm(config).run(
            &TaskSubmission::wasm(WasmSource::Path(path.clone())).with_input(input),
            &CancelToken::new(),
        )
    };
    let outcome = run_module(
        json!({"n": 1267650600228229401496703205376u128}),
        SandboxConfig::default(),
    );
    assert_eq!(
        ok(&outcome)["echo"]["n"].to_string(),
        "1267650600228229401496703205376"
    );
    let bytes = std::fs::read(&path).unwrap();
    let by_value = wasm(SandboxConfig::default()).run(
        &TaskSubmission::wasm(WasmSource::Bytes(bytes.into())).with_input(json!([1])),
        &CancelToken::new(),
    );
    assert_eq!(ok(&by_value)["echo"], json!([1]));
    let failing = run_module(json!("fail"), SandboxConfig::default());
    match err(&failing) {
        TaskError::Failed { message, .. } => assert!(message.contains("code 3"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert!(failing.stderr.contains("asked to fail"));
    let spin = run_module(
        json!("spin"),
        SandboxConfig {
            timeout: Duration::from_millis(300),
            ..SandboxConfig::default()
        },
    );
    assert!(matches!(err(&spin), TaskError::Timeout { .. }));
    assert_eq!(
        ok(&run_module(json!("read-host"), SandboxConfig::default())),
        json!({"read_host": false})
    );
    let garbage = wasm(SandboxConfig::default()).run(
        &TaskSubmission::wasm(WasmSource::Bytes(b"\0asm\x01\0\0\0garbage".to_vec().into())),
        &CancelToken::new(),
    );
    assert!(matches!(err(&garbage), TaskError::InvalidTask { .. }));
}

/// A Wasm module whose functions call each other in a tree without loops:
/// each of 13 levels calls the next ten times (10^13 calls), from `_start`,
/// from the module's start function (which runs at instantiation), or from
/// that of a module inside a component.
#[derive(Clone, Copy, Debug)]
enum CallTreeFrom {
    Start,
    StartFunction,
    ComponentStartFunction,
}

fn call_tree(from: CallTreeFrom) -> Vec<u8> {
    let mut functions = String::from("(func $f13)\n");
    for level in (0..13).rev() {
        let call = format!(" (call $f{})", level + 1);
        functions += &format!("(func $f{level}{})\n", call.repeat(10));
    }
    let memory = "(memory (export \"memory\") 1)";
    match from {
        CallTreeFrom::Start => {
            format!("(module {memory}\n{functions}(func (export \"_start\") (call $f0)))").into()
        }
        CallTreeFrom::StartFunction => {
            format!("(module {memory}\n{functions}(start $f0)\n(func (export \"_start\")))").into()
        }
        CallTreeFrom::ComponentStartFunction => wat::parse_str(format!(
            "(component (core module $m {functions}(start $f0)) (core instance (instantiate $m)))"
        ))
        .unwrap(),
    }
}

/// A call tree without loops reaches no loop's epoch check, and the wasm
/// tier's compiled code checks no epoch at function entries (the vendored
/// Cranelift, vendor/README.md): the watchdog stops it through the store's
/// stack limit. Every limit must: wall time, CPU time and cancel, in
/// `_start` and in a start function (a trap there was once reported as the
/// tier being unavailable), of a module and of a component.
#[test]
fn a_call_tree_without_loops_stops_at_every_limit() {
    let _suite = crate::common::suite(module_path!());
    let in_300_ms = Duration::from_millis(300);
    let limits = [
        (
            SandboxConfig {
                timeout: in_300_ms,
                ..SandboxConfig::default()
            },
            Some(TimeLimit::Wall),
        ),
        (
            SandboxConfig {
                max_cpu_time: in_300_ms,
                ..SandboxConfig::default()
            },
            Some(TimeLimit::Cpu),
        ),
        // No limit: a cancel stops it.
        (SandboxConfig::default(), None),
    ];
    for from in [
        CallTreeFrom::Start,
        CallTreeFrom::StartFunction,
        CallTreeFrom::ComponentStartFunction,
    ] {
        let task = TaskSubmission::wasm(WasmSource::Bytes(call_tree(from).into()));
        for (config, limit) in limits.clone() {
            let (cancel, canceller) = match limit {
                Some(_) => (CancelToken::new(), None),
                None => {
                    let (cancel, canceller) = cancel_after(Duration::from_millis(200));
                    (cancel, Some(canceller))
                }
            };
            let started = Instant::now();
            let outcome = wasm(config).run(&task, &cancel);
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{from:?}: {outcome:?}"
            );
            match (err(&outcome), limit) {
                (TaskError::Timeout { limit: fired, .. }, Some(limit)) if fired == limit => {}
                (TaskError::Cancelled, None) => {}
                (error, _) => panic!("{from:?}, expected {limit:?}: {error:?}"),
            }
            if let Some(canceller) = canceller {
                canceller.join().unwrap();
            }
        }
    }
}

#[test]
fn user_wasm_components_run_under_the_same_limits() {
    let _suite = crate::common::suite(module_path!());
    let path = echo_component();
    let run_component = |input: Value, config: SandboxConfig| {
        wasm(config).run(
            &TaskSubmission::wasm(WasmSource::Path(path.clone())).with_input(input),
            &CancelToken::new(),
        )
    };
    let short = || SandboxConfig {
        timeout: Duration::from_millis(300),
        ..SandboxConfig::default()
    };
    let outcome = run_component(json!({"n": 2}), SandboxConfig::default());
    assert_eq!(ok(&outcome)["echo"], json!({"n": 2}));
    assert_eq!(
        outcome.stdout, "got 7 bytes\n",
        "the component's prints are its log"
    );
    match err(&run_component(json!("fail"), SandboxConfig::default())) {
        TaskError::Failed { message, .. } => assert_eq!(message, "asked to fail"),
        other => panic!("{other:?}"),
    }
    match err(&run_component(json!("not-json"), SandboxConfig::default())) {
        TaskError::Failed { message, .. } => assert!(message.contains("not JSON"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        err(&run_component(json!("spin"), short())),
        TaskError::Timeout { .. }
    ));
    // A sleep blocks in host code, where epochs can't reach: the watchdog must.
    let started = Instant::now();
    assert!(matches!(
        err(&run_component(json!("sleep"), short())),
        TaskError::Timeout { .. }
    ));
    assert!(started.elapsed() < Duration::from_secs(5));
    let (cancel, canceller) = cancel_after(Duration::from_millis(200));
    let started = Instant::now();
    let cancelled = wasm(SandboxConfig::default()).run(
        &TaskSubmission::wasm(WasmSource::Path(path.clone())).with_input(json!("sleep")),
        &cancel,
    );
    canceller.join().unwrap();
    assert!(matches!(err(&cancelled), TaskError::Cancelled));
    assert!(started.elapsed() < Duration::from_secs(5));
    match err(&run_component(
        json!("grow"),
        SandboxConfig {
            max_memory_mb: 64,
            ..SandboxConfig::default()
        },
    )) {
        TaskError::MemoryLimit { .. } => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(
        ok(&run_component(json!("read-host"), SandboxConfig::default())),
        json!({"read_host": false})
    );
    let garbage = wasm(SandboxConfig::default()).run(
        &TaskSubmission::wasm(WasmSource::Bytes(
            b"\0asm\x0d\0\x01\0garbage".to_vec().into(),
        )),
        &CancelToken::new(),
    );
    match err(&garbage) {
        TaskError::InvalidTask { message, .. } => {
            assert!(message.contains("component"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

/// Each program of tests/compat gives CPython's result, on the wasm tier
/// and on the none tier (the same patched VM, natively).
#[test]
fn the_compatibility_corpus_gives_cpythons_results() {
    let _suite = crate::common::suite(module_path!());
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/compat");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 8);
    let mut differences = Vec::new();
    for file in files {
        let code = std::fs::read_to_string(&file).unwrap();
        let input = json!(["b", "a", "c"]);
        let cpython = ok(&run_code(SandboxLevel::Subprocess, &code, input.clone()));
        // The none tier runs the same (patched) VM natively.
        for tier in [TIER, SandboxLevel::None] {
            match &run_code(tier, &code, input.clone()).result {
                Ok(value) if *value == cpython => {}
                other => differences.push(format!(
                    "{}: CPython {cpython}\n  the {tier:?} tier {other:?}",
                    file.display()
                )),
            }
        }
    }
    assert!(differences.is_empty(), "{}", differences.join("\n"));
}

/// What a run gave, all of it: the result or the error (traceback
/// included), and the output.
fn whole_outcome(outcome: &lattice::task::TaskOutcome) -> String {
    format!(
        "{:?}\nstdout: {}\nstderr: {}",
        outcome.result, outcome.stdout, outcome.stderr
    )
}

/// The host keeps the compiled code of a source that runs again and hands
/// it to later tasks with that source (src/sandbox/wasm/code_cache.rs): the
/// third run of every source here is served the code the second one
/// compiled, and must answer exactly as the first, which compiled it.
#[test]
fn a_source_run_again_answers_alike_from_its_kept_code() {
    let _suite = crate::common::suite(module_path!());
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/compat");
    let mut sources: Vec<(String, Value)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            (
                std::fs::read_to_string(e.unwrap().path()).unwrap(),
                json!(["b", "a", "c"]),
            )
        })
        .collect();
    for (code, input) in [
        // Carets and lines in a traceback come from the code object's positions.
        ("def helper(x):\n    return 1 / x\n\ndef f(x):\n    return helper(x) + 1\n", json!(0)),
        // Constants of every kind, nested code, docstrings, annotations, closures.
        (
            "\"\"\"doc\"\"\"\nBIG = 2 ** 100 + 7\n\ndef f(x: int) -> dict:\n    \"\"\"f's doc\"\"\"\n    k = frozenset({1, 2})\n    def inner(y=(1.5, 2j, b'b', None, ...)):\n        return y, x\n    class C:\n        z: int = 3\n    return {'big': BIG * x, 'k': sorted(k), 'inner': repr(inner()), 'doc': f.__doc__ + __doc__, 'ann': sorted(f.__annotations__), 'c': C.z, 'q': inner.__qualname__}\n",
            json!(3),
        ),
        // Compile warnings are printed by every run (such a compile is not kept).
        ("import re\n\ndef f(x):\n    return re.findall(\"\\d+\", x)\n", json!("a1b22")),
        // Bad code stays bad.
        ("def f(x):\n    return (\n", json!(1)),
    ] {
        sources.push((code.to_string(), input));
    }
    for (code, input) in &sources {
        let runs: Vec<String> = (0..3)
            .map(|_| whole_outcome(&run_code(TIER, code, input.clone())))
            .collect();
        assert_eq!(runs[1], runs[0], "second run of:\n{code}");
        assert_eq!(runs[2], runs[0], "third run of:\n{code}");
    }
    let warned = run_code(TIER, &sources[sources.len() - 2].0, json!("a1"));
    assert!(warned.stderr.contains("SyntaxWarning"), "{}", warned.stderr);
}

/// A source's regular expressions, once kept, answer as a fresh compile
/// does: named groups, flags, bytes and str patterns, templates, and the
/// patterns the driver leaves to the task (one that warns, one that prints
/// its compile, one that fails, a lone surrogate), over five runs: the
/// report, the compile before the task's code, and the loads after.
#[test]
fn a_sources_regexes_answer_alike_once_kept() {
    let _suite = crate::common::suite(module_path!());
    let sources = [
        (
            r#"import re
WORD = re.compile(r"(?P<word>[a-z]+)(?:-(?P<n>\d+))?", re.I)

def f(x):
    return {
        "groups": [m.groupdict() for m in WORD.finditer(x)],
        "spans": [m.span("n") for m in WORD.finditer(x)],
        "bytes": [b.decode() for b in re.findall(rb"[0-9]+", x.encode())],
        "sub": re.sub(r"(\w)(\w*)", r"\2\1", x),
        "split": re.split(r"[-\s]+", x, flags=re.M),
        "ascii": re.findall(r"\w+", "\u00e9t\u00e9 x", re.A),
        "unicode": re.findall(r"\w+", "\u00e9t\u00e9 x"),
        "word": [WORD.pattern, WORD.flags, dict(WORD.groupindex), WORD.groups],
        "verbose": re.fullmatch(r"(?x) a + \# b", "aa#b") is not None,
    }
"#,
            json!("Ab-12 cd ef-3"),
        ),
        (
            "import re\n\ndef f(x):\n    return [m.group() for m in re.finditer('[[a]', x)]\n",
            json!("a[b"),
        ),
        (
            "import re\n\ndef f(x):\n    return re.findall('a+', x, re.DEBUG)\n",
            json!("aab"),
        ),
        (
            "import re\n\ndef f(x):\n    try:\n        re.compile(x)\n    except re.error as e:\n        return str(e)\n",
            json!("("),
        ),
        (
            "import re\n\ndef f(x):\n    return re.findall('\\ud800|b+', x)\n",
            json!("abb"),
        ),
    ];
    for (code, input) in &sources {
        let runs: Vec<String> = (0..5)
            .map(|_| whole_outcome(&run_code(TIER, code, input.clone())))
            .collect();
        for (i, run) in runs.iter().enumerate().skip(1) {
            assert_eq!(run, &runs[0], "run {} of:\n{code}", i + 1);
        }
    }
    let warned = run_code(TIER, sources[1].0, sources[1].1.clone());
    assert!(warned.stderr.contains("FutureWarning"), "{warned:?}");
    let printed = run_code(TIER, sources[2].0, sources[2].1.clone());
    assert!(printed.stdout.contains("LITERAL"), "{printed:?}");
}

/// A task that reaches the driver's regex functions (through a frame's
/// globals) can't plant what a pattern compiles to: the regex answer was
/// read before its code ran, and a call out of the driver's order closes
/// the slot for good. What a task may say is which patterns it compiled,
/// and those the next run's driver compiles with the snapshot's `re`
/// before that run's code, silently leaving to the task any pattern that
/// warns, prints or fails.
#[test]
fn a_task_cannot_plant_compiled_regexes_for_its_source() {
    let _suite = crate::common::suite(module_path!());
    let planter = r#"import marshal, re, sys, _sre
_driver = sys._getframe(1).f_globals
KEPT = (str, "[a-z]+", 0) in re._cache
# What `[0-9]*` hands to _sre.compile, filed as `[a-z]+`.
_handed = []
_real = _sre.compile
_sre.compile = lambda *args: _handed.append(args) or _real(*args)
re.compile("[0-9]*")
_sre.compile = _real
_forged = marshal.dumps([(("[a-z]+", 0), _handed[0])])
_read = _driver["_regex_cache_get"]()
_stored = _driver["_regex_cache_put"](_forged)
print("read", _read, "stored", _stored)

def f(x):
    return [re.fullmatch("[a-z]+", x) is None, re.fullmatch("[a-z]+", "abc") is not None, KEPT]
"#;
    // The task's own report, of patterns that warn, print (DEBUG), fail,
    // are no UTF-8, and `[a-z]+` itself.
    let reporter = planter
        .replace(
            "_read = _driver",
            r#"def _record(kind, flags, pattern):
    return kind + flags.to_bytes(8, "little", signed=True) + len(pattern).to_bytes(4, "little") + pattern

_driver["_regex_cache_report"](b"".join([
    _record(b"s", 0, b"[[a]"), _record(b"s", 128, b"a+"), _record(b"s", 0, b"("),
    _record(b"s", 0, b"\xff+"), _record(b"b", 0, b"\xff+"), _record(b"s", 0, b"[a-z]+"),
]))
_read = None and _driver"#,
        )
        .replace("_stored = _driver", "_stored = False and _driver");
    for _ in 0..3 {
        let outcome = run(TIER, TaskSubmission::script(planter));
        assert_eq!(outcome.stdout, "read None stored False\n", "{outcome:?}");
        assert_eq!(outcome.exit_code, Some(0), "{outcome:?}");
    }
    for (code, kept_from) in [(planter, None), (reporter.as_str(), Some(2))] {
        for run in 0..6 {
            let outcome = run_code(TIER, code, json!("123"));
            assert_eq!(outcome.stdout, "read None stored False\n", "{outcome:?}");
            assert_eq!(outcome.stderr, "", "{outcome:?}");
            let kept = kept_from.is_some_and(|from| run >= from);
            assert_eq!(
                ok(&outcome),
                json!([true, true, kept]),
                "run {run} of:\n{code}"
            );
        }
    }
}

/// A task that reaches the driver's cache functions (through a frame's
/// globals) can neither read nor store compiled code: the slot is closed
/// before any of its code runs, in script mode it never opens, and later
/// tasks with the same source run that source.
#[test]
fn a_task_cannot_plant_compiled_code_for_its_source() {
    let _suite = crate::common::suite(module_path!());
    let code = "import marshal, sys
_driver = sys._getframe(1).f_globals
_planted = marshal.dumps(compile(\"def f(x):\\n    return 'planted'\\n\", '<task>', 'exec'))
_kept = _driver['_code_cache_get']()
_stored = _driver['_code_cache_put'](_planted)
print('read', _kept, 'stored', _stored)

def f(x):
    return 'honest'
";
    for _ in 0..3 {
        let outcome = run(TIER, TaskSubmission::script(code));
        assert_eq!(outcome.stdout, "read None stored False\n", "{outcome:?}");
        assert_eq!(outcome.exit_code, Some(0), "{outcome:?}");
    }
    for _ in 0..4 {
        let outcome = run_code(TIER, code, json!(1));
        assert_eq!(outcome.stdout, "read None stored False\n", "{outcome:?}");
        assert_eq!(ok(&outcome), json!("honest"));
    }
}
