//! The host's promises against a hostile task or task line, across tiers
//! (issue 11): results bounded on every tier, the operator's policy over
//! task lines, refused mounts, Wasm mounts that mean what they say, every
//! wait bounded, signals that leave nothing behind, and the small defects
//! found with them. One tier's own attacks are in tests/attacks.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use lattice::sandbox::{CancelToken, Mount, SandboxConfig, SandboxExecutor, SandboxLevel};
use lattice::task::{ErrorKind, TaskError, TaskSubmission, WasmSource};
use serde_json::{json, Value};

const PROCESS_TIERS: [SandboxLevel; 3] = [
    SandboxLevel::Subprocess,
    SandboxLevel::Seccomp,
    SandboxLevel::Docker,
];

const ISOLATING_TIERS: [SandboxLevel; 4] = [
    SandboxLevel::Wasm,
    SandboxLevel::Subprocess,
    SandboxLevel::Seccomp,
    SandboxLevel::Docker,
];

/// The result lines of a CLI run.
fn lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// `lattice-wasm exec ARGS` with one task line; its outcome and exit code.
fn exec(args: &[&str], task: &Value) -> (Value, Option<i32>) {
    let mut all = vec!["exec"];
    all.extend_from_slice(args);
    let out = cli_within(&all, &task.to_string(), Duration::from_secs(120));
    let outcome = lines(&out).pop().unwrap_or_else(|| panic!("{out:?}"));
    (outcome, out.status.code())
}

fn kind(outcome: &Value) -> &str {
    outcome["error"]["kind"].as_str().unwrap_or("ok")
}

fn message(outcome: &Value) -> &str {
    outcome["error"]["message"].as_str().unwrap_or("")
}

fn wasm_with(config: SandboxConfig) -> SandboxExecutor {
    SandboxExecutor::new(SandboxConfig {
        tier: SandboxLevel::Wasm,
        ..config
    })
}

fn run_on(executor: &SandboxExecutor, code: &str) -> lattice::task::TaskOutcome {
    executor.run(
        &TaskSubmission::python(code).with_input(json!(null)),
        &CancelToken::new(),
    )
}

/// A temp dir the user nobody (whom Wasm tasks reach mounts as) may write.
fn nobodys_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(dir.path(), Some(NOBODY), Some(NOBODY)).unwrap();
    dir
}

// ---- results ---------------------------------------------------------------

/// The high-water mark of `pid`'s resident memory, in MiB.
fn peak_rss_mb(pid: u32) -> Option<f64> {
    status_kb(i64::from(pid), "VmHWM").map(|kb| kb as f64 / 1024.0)
}

#[test]
fn a_huge_result_is_refused_alike_on_every_tier_and_the_host_stays_small() {
    let _suite = crate::common::suite(module_path!());
    // 16 M list items: ~48 MB of JSON. It once took the whole CLI down.
    let mut tasks = String::new();
    for tier in ISOLATING_TIERS {
        let task = json!({"id": tier.as_str(), "tier": tier.as_str(), "input": 16_000_000,
                          "code": "def f(n):\n    return [0] * n\n"});
        tasks.push_str(&format!("{task}\n"));
    }
    // Keeps the CLI alive a moment after the big ones, for the last look.
    tasks.push_str(
        "{\"id\": \"after\", \"code\": \"import time\\ndef f():\\n    time.sleep(0.5)\\n    return 'alive'\\n\"}\n",
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_lattice-wasm"))
        .args(["batch", "-", "--concurrency", "1", "--max-memory-mb", "512"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(tasks.as_bytes()).unwrap();
    drop(stdin);
    let watcher = std::thread::spawn(move || {
        let mut peak = 0.0f64;
        while let Some(now) = peak_rss_mb(pid) {
            peak = peak.max(now);
            std::thread::sleep(Duration::from_millis(10));
        }
        peak
    });
    let out = child.wait_with_output().unwrap();
    let peak = watcher.join().unwrap();
    let results = lines(&out);
    assert_eq!(results.len(), 5, "{out:?}");
    for result in &results[..4] {
        assert_eq!(kind(result), "task_error", "{result}");
        assert_eq!(result["error"]["type"], json!("ResultTooLarge"), "{result}");
        assert!(
            message(result).contains("max_result_bytes (16777216 bytes)"),
            "{result}"
        );
        assert!(result["stdout"].as_str().unwrap().len() < 4096, "{result}");
    }
    assert_eq!(results[4]["result"], json!("alive"));
    // The Wasm guest's own memory (up to 512 MiB here) lives in this
    // process; the results around it must not multiply it.
    assert!(peak < 800.0, "the CLI peaked at {peak:.0} MiB resident");
}

#[test]
fn one_result_limit_holds_on_every_tier() {
    let _suite = crate::common::suite(module_path!());
    let mut tasks = String::new();
    for tier in ISOLATING_TIERS.iter().chain([&SandboxLevel::None]) {
        for size in [900, 2000] {
            let task = json!({"id": format!("{tier}-{size}"), "tier": tier.as_str(), "input": size,
                              "code": "def f(n):\n    return 'x' * (n - 2)\n"});
            tasks.push_str(&format!("{task}\n"));
        }
        let task = json!({"id": format!("{tier}-cmd"), "tier": tier.as_str(),
                          "argv": ["/usr/bin/python3", "-c", "print('\"' + 'y' * 3000 + '\"')"]});
        if *tier != SandboxLevel::Wasm {
            tasks.push_str(&format!("{task}\n"));
        }
    }
    let out = cli_within(
        &[
            "batch",
            "-",
            "--max-result-bytes",
            "1000",
            "--allow-tiers",
            "none,wasm,subprocess,seccomp,docker",
        ],
        &tasks,
        Duration::from_secs(300),
    );
    for result in lines(&out) {
        let id = result["id"].as_str().unwrap();
        if id.ends_with("-900") {
            assert_eq!(
                result["result"].as_str().map(str::len),
                Some(898),
                "{result}"
            );
        } else {
            assert_eq!(result["error"]["type"], json!("ResultTooLarge"), "{result}");
            assert!(message(&result).contains("(1000 bytes)"), "{result}");
        }
    }
}

#[test]
fn a_task_flooding_its_output_still_stops_at_its_timeout_on_every_tier() {
    let _suite = crate::common::suite(module_path!());
    // Output nobody reads piles up in a pipe or the engine's attach stream:
    // stopping the task must not wait for it (the docker tier once took
    // 90 s to end such a task: the engine sends no kill while the stream
    // is full). Through the CLI, whose containers are its own (this
    // suite's other tests count this process's).
    let mut tasks = String::new();
    for tier in ALL_TIERS {
        let task = json!({"id": tier.as_str(), "tier": tier.as_str(),
                          "code": "import sys\ndef f():\n    while True:\n        sys.stdout.write('x' * 65536)\n"});
        tasks.push_str(&format!("{task}\n"));
    }
    let out = cli_within(
        &[
            "batch",
            "-",
            "--timeout",
            "2",
            "--concurrency",
            "5",
            "--allow-tiers",
            "none,wasm,subprocess,seccomp,docker",
        ],
        &tasks,
        Duration::from_secs(120),
    );
    let results = lines(&out);
    assert_eq!(results.len(), ALL_TIERS.len(), "{out:?}");
    for result in results {
        assert_eq!(kind(&result), "timeout", "{result}");
        let stdout = result["stdout"].as_str().unwrap();
        assert!(stdout.contains("output truncated"), "{}", result["id"]);
        let took = result["duration_ms"].as_f64().unwrap();
        assert!(took < 12_000.0, "{}: {took} ms", result["id"]);
    }
}

// ---- the operator's policy ---------------------------------------------------

#[test]
fn a_task_line_cannot_pick_a_tier_the_operator_did_not_allow() {
    let _suite = crate::common::suite(module_path!());
    let none = json!({"id": "n", "tier": "none", "code": "def f():\n    return 1\n"});
    let (outcome, code) = exec(&["--tier", "seccomp"], &none);
    assert_eq!(kind(&outcome), "invalid_task", "{outcome}");
    assert!(message(&outcome).contains("--allow-tiers"), "{outcome}");
    assert_eq!(outcome["id"], json!("n"));
    assert_eq!(code, Some(2));
    let (outcome, code) = exec(
        &["--tier", "seccomp", "--allow-tiers", "seccomp,none"],
        &none,
    );
    assert_eq!(outcome["result"], json!(1), "{outcome}");
    assert_eq!(code, Some(0));
    // Named by --tier, none is allowed.
    let (outcome, _) = exec(&["--tier", "none"], &none);
    assert_eq!(outcome["result"], json!(1), "{outcome}");
    // --allow-tiers without the asked one refuses it too.
    let docker = json!({"tier": "docker", "code": "def f():\n    return 1\n"});
    let (outcome, _) = exec(&["--allow-tiers", "wasm,subprocess"], &docker);
    assert_eq!(kind(&outcome), "invalid_task", "{outcome}");

    // And in a batch: the line is refused, the batch goes on.
    let out = cli_within(
        &["batch", "-", "--tier", "seccomp"],
        &format!("{none}\n{{\"id\": \"s\", \"code\": \"def f():\\n    return 2\\n\"}}\n"),
        Duration::from_secs(60),
    );
    let results = lines(&out);
    assert_eq!(kind(&results[0]), "invalid_task");
    assert_eq!(results[1]["result"], json!(2));
    assert_eq!(results[1]["tier"], json!("seccomp"));
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn task_limits_are_bounded_by_the_operators_flags_both_ways() {
    let _suite = crate::common::suite(module_path!());
    let sleeper = |timeout_s: f64| {
        json!({"id": "t", "tier": "subprocess", "timeout_s": timeout_s,
               "code": "import time\ndef f():\n    time.sleep(3)\n    return 'slept'\n"})
    };
    // Asking for more than the operator's cap is refused, naming it.
    let (outcome, _) = exec(&["--timeout", "10"], &sleeper(100.0));
    assert_eq!(kind(&outcome), "invalid_task", "{outcome}");
    assert!(message(&outcome).contains("--timeout"), "{outcome}");
    let (outcome, _) = exec(&["--timeout", "1"], &sleeper(10.0));
    assert_eq!(kind(&outcome), "invalid_task", "{outcome}");
    // Asking for less is honoured.
    let started = Instant::now();
    let (outcome, _) = exec(&["--timeout", "10"], &sleeper(0.5));
    assert_eq!(kind(&outcome), "timeout", "{outcome}");
    assert!(started.elapsed() < Duration::from_secs(3));

    let spin = |field: &str, value: Value| {
        let mut task = json!({"tier": "subprocess", "code": "def f():\n    return 1\n"});
        task[field] = value;
        task
    };
    for (field, value, flags, cap_flag) in [
        (
            "max_memory_mb",
            json!(4096),
            ["--max-memory-mb", "256"],
            "--max-memory-mb",
        ),
        (
            "max_cpu_time_s",
            json!(100),
            ["--max-cpu-time", "5"],
            "--max-cpu-time",
        ),
    ] {
        let (outcome, _) = exec(&flags, &spin(field, value));
        assert_eq!(kind(&outcome), "invalid_task", "{outcome}");
        assert!(message(&outcome).contains(cap_flag), "{outcome}");
    }
    let (outcome, _) = exec(
        &["--max-memory-mb", "256"],
        &spin("max_memory_mb", json!(128)),
    );
    assert_eq!(outcome["result"], json!(1), "{outcome}");
}

#[test]
fn network_and_mounts_need_the_operators_leave() {
    let _suite = crate::common::suite(module_path!());
    let networked = json!({"tier": "seccomp", "network": true, "code": "def f():\n    return 1\n"});
    let (outcome, _) = exec(&[], &networked);
    assert_eq!(kind(&outcome), "invalid_task", "{outcome}");
    assert!(message(&outcome).contains("--allow-network"), "{outcome}");
    let (outcome, _) = exec(&["--allow-network"], &networked);
    assert_eq!(outcome["result"], json!(1), "{outcome}");

    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(dir.path().join("in.txt"), "shared").unwrap();
    let root = dir.path().to_str().unwrap();
    let reader = |mount: String| {
        json!({"tier": "wasm", "mounts": [mount],
               "code": "def f():\n    return open('/data/in.txt').read()\n"})
    };
    let (outcome, _) = exec(&[], &reader(format!("{root}:/data")));
    assert_eq!(kind(&outcome), "invalid_task", "{outcome}");
    assert!(message(&outcome).contains("--allow-mount"), "{outcome}");
    let (outcome, _) = exec(&["--allow-mount", root], &reader(format!("{root}:/data")));
    assert_eq!(outcome["result"], json!("shared"), "{outcome}");
    // Read-only leave does not let it mount writable.
    let (outcome, _) = exec(
        &["--allow-mount", root],
        &reader(format!("{root}:/data:rw")),
    );
    assert_eq!(kind(&outcome), "invalid_task", "{outcome}");
    let rw = format!("{root}:rw");
    let (outcome, _) = exec(&["--allow-mount", &rw], &reader(format!("{root}:/data:rw")));
    assert_eq!(outcome["result"], json!("shared"), "{outcome}");
    // Leave for one directory is not leave for its parent or a sibling.
    let sibling = format!("{root}-other");
    let (outcome, _) = exec(
        &["--allow-mount", &sibling],
        &reader(format!("{root}:/data")),
    );
    assert_eq!(kind(&outcome), "invalid_task", "{outcome}");

    // A Wasm payload read by path is a mount of its file.
    let module = json!({"wasm": format!("{root}/in.txt")});
    let (outcome, _) = exec(&[], &module);
    assert_eq!(kind(&outcome), "invalid_task", "{outcome}");
    assert!(message(&outcome).contains("--allow-mount"), "{outcome}");
}

// ---- mounts ------------------------------------------------------------------

#[test]
fn mounts_of_the_hosts_system_trees_are_refused_on_every_tier() {
    let _suite = crate::common::suite(module_path!());
    let dir = tempfile::tempdir().unwrap();
    let to_proc = dir.path().join("innocent");
    std::os::unix::fs::symlink("/proc", &to_proc).unwrap();
    let to_root = dir.path().join("up");
    std::os::unix::fs::symlink("/", &to_root).unwrap();
    let refused: Vec<(std::path::PathBuf, &str, bool)> = vec![
        ("/proc".into(), "/proc", false),
        ("/".into(), "/host", false),
        ("/".into(), "/", true),
        ("/sys/fs".into(), "/s", false),
        ("/dev".into(), "/dev", false),
        ("/dev/shm".into(), "/shm", true),
        ("/proc/self/root".into(), "/r", false),
        ("/proc/1/cwd".into(), "/r", false),
        (to_proc, "/p", false),
        (to_root, "/u", true),
    ];
    for level in ISOLATING_TIERS {
        for (host, guest, writable) in &refused {
            let config = SandboxConfig {
                tier: level,
                mounts: vec![Mount::new(host, guest, *writable).unwrap()],
                ..SandboxConfig::default()
            };
            let outcome = SandboxExecutor::new(config).run(
                &TaskSubmission::python("def f():\n    return 1\n"),
                &CancelToken::new(),
            );
            match err(&outcome) {
                // The subprocess tier takes no mounts at all.
                TaskError::InvalidTask { .. } if level == SandboxLevel::Subprocess => {}
                TaskError::InvalidTask { message, .. } => assert!(
                    message.contains("/proc")
                        && message.contains("/sys")
                        && message.contains("/dev"),
                    "{level} {host:?}: {message}"
                ),
                other => panic!("{level} {host:?}: {other:?}"),
            }
        }
    }
    // Even an operator's leave for all of / does not reach them.
    let task = json!({"tier": "seccomp", "mounts": ["/:/:rw"], "code": "def f():\n    return 1\n"});
    let (outcome, _) = exec(&["--allow-mount", "/:rw"], &task);
    assert_eq!(kind(&outcome), "invalid_task", "{outcome}");
}

#[test]
fn wasm_tasks_reach_their_mounts_as_nobody() {
    let _suite = crate::common::suite(module_path!());
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let secret = dir.path().join("root-only");
    std::fs::write(&secret, "root's secret").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(dir.path().join("public"), "for all").unwrap();
    let executor = wasm_with(SandboxConfig {
        mounts: vec![Mount::new(dir.path(), "/data", false).unwrap()],
        ..SandboxConfig::default()
    });
    let outcome = run_on(
        &executor,
        "def f(x):\n    return open('/data/public').read()\n",
    );
    assert_eq!(ok(&outcome), json!("for all"));
    let outcome = run_on(
        &executor,
        "def f(x):\n    return open('/data/root-only').read()\n",
    );
    assert_eq!(
        failed_type(&outcome),
        "PermissionError",
        "{:?}",
        outcome.result
    );
    // Not the directory's owner either: a read-write mount of root's 0755
    // directory can't be written.
    let writable = wasm_with(SandboxConfig {
        mounts: vec![Mount::new(dir.path(), "/data", true).unwrap()],
        ..SandboxConfig::default()
    });
    let outcome = run_on(
        &writable,
        "def f(x):\n    open('/data/new', 'w').write('x')\n",
    );
    assert_eq!(
        failed_type(&outcome),
        "PermissionError",
        "{:?}",
        outcome.result
    );
    assert!(!dir.path().join("new").exists());
}

#[test]
fn what_a_wasm_task_writes_to_its_mounts_is_capped() {
    let _suite = crate::common::suite(module_path!());
    let dir = nobodys_dir();
    let executor = wasm_with(SandboxConfig {
        mounts: vec![Mount::new(dir.path(), "/data", true).unwrap()],
        max_memory_mb: 64,
        timeout: Duration::from_secs(60),
        ..SandboxConfig::default()
    });
    // 200 MiB in 1 MiB writes, into one file and then into many.
    let outcome = run_on(
        &executor,
        "def f(x):\n    chunk = b'x' * (1 << 20)\n    written = 0\n    try:\n        with open('/data/big', 'wb') as out:\n            for _ in range(200):\n                out.write(chunk)\n                out.flush()\n                written += 1\n    except OSError as e:\n        return ['big', written, type(e).__name__]\n    return ['big', written, None]\n",
    );
    let result = ok(&outcome);
    assert!(result[2].is_string(), "{result}");
    assert!(result[1].as_u64().unwrap() <= 64, "{result}");
    let size = std::fs::metadata(dir.path().join("big")).unwrap().len();
    assert!(size <= 64 << 20, "{size}");
    std::fs::remove_file(dir.path().join("big")).unwrap();
    let outcome = run_on(
        &executor,
        "def f(x):\n    chunk = b'x' * (1 << 20)\n    for i in range(200):\n        try:\n            with open('/data/f%d' % i, 'wb') as out:\n                out.write(chunk)\n        except OSError as e:\n            return [i, type(e).__name__]\n    return [200, None]\n",
    );
    let result = ok(&outcome);
    assert!(
        result[0].as_u64().unwrap() <= 64 && result[1].is_string(),
        "{result}"
    );
    let total: u64 = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert!(total <= 64 << 20, "{total}");

    // A 1 TB sparse file, by seek or by truncate.
    for grow in [
        "f.seek(10**12)\n        f.write(b'x')",
        "f.truncate(10**12)",
    ] {
        let code = format!(
            "def f(x):\n    try:\n      with open('/data/sparse', 'wb') as f:\n        {grow}\n    except OSError as e:\n        return type(e).__name__\n    return 'grew'\n"
        );
        let outcome = run_on(&executor, &code);
        assert_ne!(ok(&outcome), json!("grew"), "{grow}");
        let size = std::fs::metadata(dir.path().join("sparse")).map_or(0, |m| m.len());
        assert!(size <= 64 << 20, "{grow}: {size}");
    }

    // No symbolic link is left behind in a host directory.
    let outcome = run_on(
        &executor,
        "import os\ndef f(x):\n    try:\n        os.symlink('../../../../root/.ssh', '/data/link')\n    except OSError as e:\n        return type(e).__name__\n    return 'linked'\n",
    );
    assert_ne!(ok(&outcome), json!("linked"));
    assert!(std::fs::symlink_metadata(dir.path().join("link")).is_err());
}

#[test]
fn special_files_never_block_a_wasm_task_past_its_limits() {
    let _suite = crate::common::suite(module_path!());
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let fifo = dir.path().join("fifo");
    let path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a path we own.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o666) }, 0);
    let _socket = std::os::unix::net::UnixListener::bind(dir.path().join("socket")).unwrap();
    let executor = wasm_with(SandboxConfig {
        mounts: vec![Mount::new(dir.path(), "/data", false).unwrap()],
        timeout: Duration::from_secs(2),
        ..SandboxConfig::default()
    });
    for code in [
        "def f(x):\n    return open('/data/fifo').read()\n",
        "def f(x):\n    return open('/data/fifo', 'rb', buffering=0).read(1)\n",
        "def f(x):\n    return open('/data/socket').read()\n",
    ] {
        let started = Instant::now();
        let outcome = run_on(&executor, code);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{code}: {:?}",
            started.elapsed()
        );
        assert!(outcome.result.is_err(), "{code}: {:?}", outcome.result);
    }

    // A Wasm payload must be a regular file of bounded size: no device, no
    // FIFO (either would be read until the host ran out of memory, or wait
    // for ever), and nothing of /proc, /sys or /dev (as written or through a
    // symlink), whose "regular" files show the host's processes.
    let to_environ = dir.path().join("environ.wasm");
    std::os::unix::fs::symlink("/proc/self/environ", &to_environ).unwrap();
    for payload in [
        "/dev/zero".to_string(),
        fifo.display().to_string(),
        dir.path().display().to_string(),
        "/proc/self/environ".to_string(),
        "/proc/self/../self/cmdline".to_string(),
        to_environ.display().to_string(),
    ] {
        let started = Instant::now();
        let task = TaskSubmission::wasm(WasmSource::Path(payload.clone().into()));
        let outcome = sandbox(SandboxLevel::Wasm).run(&task, &CancelToken::new());
        assert!(started.elapsed() < Duration::from_secs(5), "{payload}");
        assert_eq!(err(&outcome).kind(), ErrorKind::InvalidTask, "{payload}");
        if payload.contains("environ") || payload.contains("cmdline") {
            let message = err(&outcome).to_string();
            assert!(
                message.contains("/proc, /sys or /dev"),
                "{payload}: {message}"
            );
            assert!(!message.contains("PATH="), "{payload}: {message}");
        }
        let line = json!({"wasm": payload});
        let (outcome, _) = exec(&["--allow-mount", "/"], &line);
        assert_eq!(kind(&outcome), "invalid_task", "{outcome}");
    }
}

/// The fds open in the task's process.
const OPEN_FDS: &str = "import os\ndef f(x):\n    n = 0\n    for fd in range(4096):\n        try:\n            os.fstat(fd)\n            n += 1\n        except OSError:\n            pass\n    return n\n";

#[test]
fn a_wasm_task_has_an_fd_budget_and_its_files_do_not_reach_other_tasks() {
    let _suite = crate::common::suite(module_path!());
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(dir.path().join("f"), "x").unwrap();
    let executor = wasm_with(SandboxConfig {
        mounts: vec![Mount::new(dir.path(), "/data", false).unwrap()],
        ..SandboxConfig::default()
    });
    let hoarder = std::thread::spawn(move || {
        run_on(
            &executor,
            "import time\ndef f(x):\n    held = []\n    try:\n        for _ in range(1000):\n            held.append(open('/data/f'))\n    except OSError as e:\n        err = type(e).__name__\n    time.sleep(3)\n    return [len(held), err]\n",
        )
    });
    std::thread::sleep(Duration::from_millis(1500));
    // Meanwhile, process-tier tasks start as usual.
    for level in [SandboxLevel::Seccomp, SandboxLevel::Subprocess] {
        let outcome = run_code(level, OPEN_FDS, json!(null));
        assert!(
            ok(&outcome).as_u64().unwrap() < 10,
            "{level}: {:?}",
            outcome.result
        );
    }
    let result = ok(&hoarder.join().unwrap());
    assert!(result[0].as_u64().unwrap() <= 256, "{result}");
    assert_eq!(result[1], json!("OSError"), "{result}");
}

#[test]
fn the_wasm_memory_cap_is_reported_as_the_limit_that_holds() {
    let _suite = crate::common::suite(module_path!());
    let executor = wasm_with(SandboxConfig {
        max_memory_mb: 2048,
        timeout: Duration::from_secs(60),
        ..SandboxConfig::default()
    });
    let outcome = run_on(
        &executor,
        "def f(x):\n    l = []\n    while True:\n        l.append(bytearray(10**6))\n",
    );
    match err(&outcome) {
        TaskError::MemoryLimit { message } => {
            assert!(
                message.contains("1024 MiB") && message.contains("2048"),
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn more_concurrent_wasm_tasks_than_pool_slots_wait_for_one() {
    let _suite = crate::common::suite(module_path!());
    let tasks: String = (0..300)
        .map(|i| {
            format!(
                "{}\n",
                json!({"id": i, "input": i, "code": "import time\ndef f(x):\n    time.sleep(1)\n    return x\n"})
            )
        })
        .collect();
    let out = cli_within(
        &["batch", "-", "--concurrency", "300"],
        &tasks,
        Duration::from_secs(300),
    );
    let results = lines(&out);
    assert_eq!(results.len(), 300);
    for (i, result) in results.iter().enumerate() {
        assert_eq!(result["result"], json!(i), "{result}");
    }
    assert_eq!(out.status.code(), Some(0));
}

// ---- signals -----------------------------------------------------------------

#[test]
fn a_signal_to_batch_cancels_its_tasks_writes_their_outcomes_and_leaves_nothing() {
    let _suite = crate::common::suite(module_path!());
    for (signal, code) in [(libc::SIGINT, 130), (libc::SIGTERM, 143)] {
        let mut tasks = String::new();
        for (i, tier) in ["subprocess", "seccomp", "docker", "wasm"]
            .iter()
            .enumerate()
        {
            let task = json!({"id": i, "tier": tier, "code": "import os\ndef f():\n    try:\n        print('pid:', os.getpid(), os.readlink('/proc/self/ns/pid'), flush=True)\n    except OSError:\n        pass\n    while True:\n        pass\n"});
            tasks.push_str(&format!("{task}\n"));
        }
        // Not started when the signal comes: gets no line.
        tasks.push_str("{\"id\": \"late\", \"code\": \"def f():\\n    return 1\\n\"}\n");
        let mut child = Command::new(env!("CARGO_BIN_EXE_lattice-wasm"))
            .args(["batch", "-", "--concurrency", "4"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(tasks.as_bytes()).unwrap();
        // stdin stays open: the batch must stop though it could read on.
        let batch = child.id();
        let deadline = Instant::now() + Duration::from_secs(60);
        while containers_of(batch, true).is_empty() {
            assert!(Instant::now() < deadline, "the docker task never ran");
            std::thread::sleep(Duration::from_millis(200));
        }
        std::thread::sleep(Duration::from_millis(500));
        // SAFETY: our child.
        unsafe { libc::kill(child.id() as i32, signal) };
        let started = Instant::now();
        let out = child.wait_with_output().unwrap();
        drop(stdin);
        assert!(started.elapsed() < Duration::from_secs(20));
        assert_eq!(out.status.code(), Some(code), "{out:?}");
        let results = lines(&out);
        assert!(results.len() >= 4, "{out:?}");
        for result in &results[..4] {
            assert_eq!(kind(result), "cancelled", "{result}");
            for process in pids_in(result["stdout"].as_str().unwrap()) {
                assert!(gone(&process), "{process} outlived the batch");
            }
        }
        assert_eq!(containers_of(batch, false), Vec::<String>::new());
    }
}

// ---- smaller defects -----------------------------------------------------------

#[test]
fn malformed_lines_keep_their_id() {
    let _suite = crate::common::suite(module_path!());
    let tasks = [
        r#"{"id": "x1", "code": 5}"#,
        r#"{"id": "x2", "colour": "red", "code": "def f(): pass"}"#,
        r#"{"id": 7, "code": "def f(): pass", "timeout_s": -1}"#,
        r#"{"id": "x3", "code": "def f(): pass", "#,
        r#"{"code": "def f(): pass", "id": "x4", "bad": "#,
        "not json at all",
    ];
    let out = cli_within(&["batch", "-"], &tasks.join("\n"), Duration::from_secs(60));
    let ids: Vec<Value> = lines(&out).iter().map(|r| r["id"].clone()).collect();
    assert_eq!(
        ids,
        vec![
            json!("x1"),
            json!("x2"),
            json!(7),
            json!("x3"),
            json!("x4"),
            json!(6)
        ]
    );
    assert_eq!(out.status.code(), Some(2), "only invalid lines: exit 2");
    let out = cli_within(&["exec"], tasks[0], Duration::from_secs(60));
    assert_eq!(lines(&out)[0]["id"], json!("x1"));
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn batch_exit_codes_say_what_happened() {
    let _suite = crate::common::suite(module_path!());
    let ok_line = r#"{"code": "def f(): return 1"}"#;
    let failing = r#"{"code": "def f(): raise ValueError()"}"#;
    let invalid = r#"{"code": "def f(: pass"}"#;
    for (tasks, code) in [
        (vec![ok_line], 0),
        (vec![ok_line, failing], 1),
        (vec![invalid], 2),
        (vec![invalid, invalid], 2),
        (vec![failing, invalid], 2),
    ] {
        let out = cli_within(&["batch", "-"], &tasks.join("\n"), Duration::from_secs(60));
        assert_eq!(out.status.code(), Some(code), "{tasks:?}");
    }
}

#[test]
fn doctor_fails_and_names_the_tiers_without_a_usable_python() {
    let _suite = crate::common::suite(module_path!());
    let out = lattice_cli(
        &["doctor"],
        "",
        &[("LATTICE_PYTHON", Path::new("/nonexistent/python3"))],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    for tier in ["subprocess", "seccomp"] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("{tier} unavailable"))),
            "{text}"
        );
    }
    assert!(text.lines().any(|l| l.starts_with("wasm ok")), "{text}");
}

#[test]
fn the_readmes_task_line_example_runs_as_documented() {
    let _suite = crate::common::suite(module_path!());
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let after = readme
        .split("A task line")
        .nth(1)
        .expect("the README shows a task line");
    let block = after
        .split("```json\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a json block");
    let task: Value = serde_json::from_str(block).unwrap_or_else(|e| panic!("{e}: {block}"));
    // The command the README runs it with, in backquotes.
    let command = after
        .split('`')
        .find(|span| span.starts_with("lattice-wasm exec"))
        .expect("the README says how to run it");
    let flags: Vec<&str> = command.split_whitespace().skip(2).collect();
    let (outcome, code) = exec(&flags, &task);
    assert_eq!(outcome["status"], json!("ok"), "{flags:?}: {outcome}");
    assert_eq!(code, Some(0));
}

#[test]
fn a_commands_stdout_that_is_not_json_is_kept() {
    let _suite = crate::common::suite(module_path!());
    for level in PROCESS_TIERS {
        // The docker image has python3 and little else.
        let task =
            TaskSubmission::command(["/usr/bin/python3", "-c", "print('hello'); print('world')"]);
        let outcome = run(level, task);
        assert!(matches!(err(&outcome), TaskError::Failed { .. }), "{level}");
        assert_eq!(outcome.stdout, "hello\nworld\n", "{level}");
    }
}

#[test]
fn async_entries_are_awaited_on_every_tier() {
    let _suite = crate::common::suite(module_path!());
    let code = "import asyncio\nasync def f(x):\n    await asyncio.sleep(0.01)\n    return x + 1\n";
    for level in ISOLATING_TIERS.into_iter().chain([SandboxLevel::None]) {
        let outcome = run_code(level, code, json!(1));
        assert_eq!(ok(&outcome), json!(2), "{level}");
    }
}

#[test]
fn an_empty_command_is_invalid_on_every_tier() {
    let _suite = crate::common::suite(module_path!());
    let before = our_containers();
    for level in ISOLATING_TIERS.into_iter().chain([SandboxLevel::None]) {
        let outcome = run(level, TaskSubmission::command(Vec::<String>::new()));
        assert_eq!(err(&outcome).kind(), ErrorKind::InvalidTask, "{level}");
    }
    assert_eq!(our_containers(), before);
}

#[test]
fn a_task_cannot_change_what_a_later_task_returns() {
    let _suite = crate::common::suite(module_path!());
    let tamper = "import builtins, json, sys, os\ndef f():\n    json.dumps = lambda *a, **k: '\"forged\"'\n    builtins.len = lambda x: -1\n    sys.modules['math'] = None\n    os.environ['LATTICE_FORGED'] = '1'\n    try:\n        open('/tmp/forged', 'w').write('x')\n    except OSError:\n        pass\n    return 'tampered'\n";
    let check = "import json, math, os\ndef f():\n    return [json.dumps([1]), len('ab'), math.floor(1.5), os.environ.get('LATTICE_FORGED'), os.path.exists('/tmp/forged')]\n";
    for level in ISOLATING_TIERS {
        let executor = sandbox(level);
        let tampered = executor.run(&TaskSubmission::python(tamper), &CancelToken::new());
        assert_eq!(ok(&tampered), json!("tampered"), "{level}");
        let checked = executor.run(&TaskSubmission::python(check), &CancelToken::new());
        assert_eq!(ok(&checked), json!(["[1]", 2, 1, null, false]), "{level}");
    }
}
