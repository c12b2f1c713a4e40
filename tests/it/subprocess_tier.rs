//! The subprocess tier's promises, attacked with real CPython processes:
//! limits fire as what they are, nothing a task starts outlives it.

use std::io::Read;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use crate::common::*;
use lattice::sandbox::{CancelToken, SandboxConfig, SandboxExecutor, SandboxLevel};
use lattice::task::{TaskError, TaskSubmission, TimeLimit};
use serde_json::json;

const TIER: SandboxLevel = SandboxLevel::Subprocess;

fn limited(timeout_s: f64, memory_mb: u64, cpu_s: f64) -> SandboxExecutor {
    SandboxExecutor::new(SandboxConfig {
        tier: TIER,
        timeout: Duration::from_secs_f64(timeout_s),
        max_memory_mb: memory_mb,
        max_cpu_time: Duration::from_secs_f64(cpu_s),
        ..SandboxConfig::default()
    })
}

fn run_limited(executor: &SandboxExecutor, code: &str) -> lattice::task::TaskOutcome {
    executor.run(
        &TaskSubmission::python(code).with_input(json!(null)),
        &CancelToken::new(),
    )
}

#[test]
fn wall_timeout_kills_the_whole_group_and_reports_timeout() {
    let _suite = crate::common::suite(module_path!());
    let code = "import subprocess, sys, time\ndef f(x):\n    p = subprocess.Popen(['sleep', '1000'])\n    print('pid:', p.pid, __import__('os').readlink('/proc/%d/ns/pid' % p.pid), flush=True)\n    print('dir:' + __import__('os').getcwd(), flush=True)\n    time.sleep(1000)\n";
    let started = Instant::now();
    let outcome = run_limited(&limited(1.0, 512, 100.0), code);
    assert!(started.elapsed() < Duration::from_secs(5));
    match err(&outcome) {
        TaskError::Timeout { limit, .. } => assert_eq!(limit, TimeLimit::Wall),
        other => panic!("{other:?}"),
    }
    let pids = pids_in(&outcome.stdout);
    assert_eq!(pids.len(), 1, "{}", outcome.stdout);
    assert!(gone(&pids[0]), "the grandchild survived the timeout");
    let dir = outcome
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("dir:"))
        .unwrap();
    assert!(removed(dir), "the private temp dir survived");
}

#[test]
fn a_daemon_that_left_the_group_is_swept_too() {
    let _suite = crate::common::suite(module_path!());
    // Double fork + setsid: the grandchild is in neither the group nor the session.
    let code = "import os, time\ndef f(x):\n    r, w = os.pipe()\n    if os.fork() == 0:\n        os.setsid()\n        if os.fork() == 0:\n            os.write(w, ('%d %s' % (os.getpid(), os.readlink('/proc/self/ns/pid'))).encode())\n            time.sleep(1000)\n        os._exit(0)\n    print('pid:', os.read(r, 100).decode(), flush=True)\n    return 'forked'\n";
    let outcome = run_limited(&limited(10.0, 512, 10.0), code);
    assert_eq!(ok(&outcome), json!("forked"));
    let daemon = &pids_in(&outcome.stdout)[0];
    if lattice_is_root() {
        assert!(gone(daemon), "a setsid daemon survived its task");
    }
}

#[test]
fn cpu_limit_is_a_cpu_timeout() {
    let _suite = crate::common::suite(module_path!());
    let outcome = run_limited(
        &limited(30.0, 512, 1.0),
        "def f(x):\n    while True:\n        pass\n",
    );
    match err(&outcome) {
        TaskError::Timeout { limit, .. } => assert_eq!(limit, TimeLimit::Cpu),
        other => panic!("{other:?}"),
    }
}

#[test]
fn memory_bombs_are_memory_limits() {
    let _suite = crate::common::suite(module_path!());
    let executor = limited(5.0, 256, 5.0);
    for code in [
        "def f(x):\n    return len('a' * 10**9)\n",
        "def f(x):\n    l = []\n    while True:\n        l.append(' ' * 100000)\n",
        "def f(x):\n    return 10**10**8 > 0\n",
    ] {
        let outcome = run_limited(&executor, code);
        assert!(
            matches!(
                err(&outcome),
                TaskError::MemoryLimit { .. } | TaskError::Timeout { .. }
            ),
            "{code}: {:?}",
            outcome.result
        );
    }
    // The one that can only be a memory error must be reported as such.
    let outcome = run_limited(&executor, "def f(x):\n    return len('a' * 10**9)\n");
    assert!(matches!(err(&outcome), TaskError::MemoryLimit { .. }));
    // More than the machine has fails at once, inside the task, before any
    // limit is reached: the task's own MemoryError, not a memory limit.
    let outcome = run_limited(&executor, "def f(x):\n    return len(bytearray(2**40))\n");
    assert_eq!(failed_type(&outcome), "MemoryError", "{:?}", outcome.result);
}

#[test]
fn stdout_floods_are_capped_and_marked() {
    let _suite = crate::common::suite(module_path!());
    let executor = SandboxExecutor::new(SandboxConfig {
        tier: TIER,
        max_output_bytes: 10_000,
        ..SandboxConfig::default()
    });
    let outcome = run_limited(&executor, "import sys\ndef f(x):\n    for _ in range(100000):\n        sys.stdout.write('x' * 100)\n    return 'done'\n");
    assert_eq!(ok(&outcome), json!("done"));
    assert!(outcome.stdout.len() < 11_000);
    assert!(
        outcome.stdout.contains("[lattice: output truncated:"),
        "{}",
        &outcome.stdout[9_990..]
    );
}

#[test]
fn environment_is_clean_and_identity_unprivileged() {
    let _suite = crate::common::suite(module_path!());
    std::env::set_var("LATTICE_TEST_SECRET", "hunter2");
    let code = "import os\ndef f(x):\n    return {'env': dict(os.environ), 'uid': os.getuid(), 'cwd': os.getcwd()}\n";
    let outcome = run(
        TIER,
        TaskSubmission::python(code)
            .with_input(json!(null))
            .with_gpu(1),
    );
    let result = ok(&outcome);
    let env = result["env"].as_object().unwrap();
    let mut keys: Vec<&str> = env.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["CUDA_VISIBLE_DEVICES", "HOME", "LANG", "TMPDIR"]);
    assert_eq!(env["CUDA_VISIBLE_DEVICES"], json!("1"));
    assert_eq!(env["HOME"], result["cwd"]);
    if lattice_is_root() {
        assert_ne!(result["uid"], json!(0), "the task ran as root");
    }
    assert!(removed(result["cwd"].as_str().unwrap()));
}

#[test]
fn host_secrets_outside_world_readable_files_stay_private() {
    let _suite = crate::common::suite(module_path!());
    if !lattice_is_root() {
        return;
    }
    // Not under /tmp (the task has its own) but in a directory anyone may
    // enter, beside a file anyone may read: only the secret's mode stops it.
    let dir = tempfile::tempdir_in("/run").unwrap();
    let secret = dir.path().join("secret.txt");
    let public = dir.path().join("public.txt");
    std::fs::write(&secret, "top secret").unwrap();
    std::fs::write(&public, "public").unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let read = |path: &std::path::Path| {
        let code = format!(
            "def f(x):\n    return open({:?}).read()\n",
            path.display().to_string()
        );
        run_code(TIER, &code, json!(null))
    };
    assert_eq!(ok(&read(&public)), json!("public"));
    assert_eq!(failed_type(&read(&secret)), "PermissionError");
}

#[test]
fn the_network_is_off_unless_enabled() {
    let _suite = crate::common::suite(module_path!());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let code = format!("import socket\ndef f(x):\n    s = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n    s.sendall(b'stolen')\n    return 'connected'\n");
    let outcome = run_code(TIER, &code, json!(null));
    let kind = failed_type(&outcome);
    assert!(kind.contains("Error"), "{kind}");
    assert!(listener.accept().is_err(), "the listener got a connection");

    let mut task = TaskSubmission::python(code).with_input(json!(null));
    task.sandbox.network = Some(true);
    assert_eq!(ok(&run(TIER, task)), json!("connected"));
    let (mut stream, _) = listener.accept().unwrap();
    stream.set_nonblocking(false).unwrap();
    let mut got = String::new();
    stream.read_to_string(&mut got).unwrap();
    assert_eq!(got, "stolen");
}

#[test]
fn fork_bombs_are_contained() {
    let _suite = crate::common::suite(module_path!());
    let code = "import os\ndef f(x):\n    n = 0\n    try:\n        for _ in range(10000):\n            if os.fork() == 0:\n                import time\n                time.sleep(1000)\n            n += 1\n    except OSError as e:\n        return ['stopped', n]\n    return ['unbounded', n]\n";
    let outcome = run_limited(&limited(20.0, 512, 20.0), code);
    let result = ok(&outcome);
    if lattice_is_root() {
        assert_eq!(result[0], json!("stopped"), "{result}");
        assert!(result[1].as_i64().unwrap() < 100);
    }
}

#[test]
fn cancel_kills_a_running_task() {
    let _suite = crate::common::suite(module_path!());
    let executor = limited(60.0, 512, 60.0);
    let (cancel, canceller) = cancel_after(Duration::from_millis(500));
    let started = Instant::now();
    let outcome = executor.run(
        &TaskSubmission::python("import time\ndef f(x):\n    print('pid:', __import__('os').getpid(), __import__('os').readlink('/proc/self/ns/pid'), flush=True)\n    time.sleep(60)\n").with_input(json!(null)),
        &cancel,
    );
    canceller.join().unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(err(&outcome), TaskError::Cancelled);
    let processes = pids_in(&outcome.stdout);
    assert_eq!(processes.len(), 1, "{}", outcome.stdout);
    for process in processes {
        assert!(gone(&process), "{process}");
    }
}

#[test]
fn commands_take_input_on_stdin_and_give_json_on_stdout() {
    let _suite = crate::common::suite(module_path!());
    let task =
        TaskSubmission::command(["sh", "-c", "read x; echo $((x * 2))"]).with_input(json!(21));
    assert_eq!(ok(&run(TIER, task)), json!(42));
    let failing = TaskSubmission::command(["sh", "-c", "echo oops >&2; exit 3"]);
    match err(&run(TIER, failing)) {
        TaskError::Failed { message, .. } => assert!(
            message.contains("code 3") && message.contains("oops"),
            "{message}"
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_child_starts_with_no_signal_blocked_or_ignored_and_a_missing_program_is_named() {
    let _suite = crate::common::suite(module_path!());
    // The child is set up in memory shared with this process (vfork-style):
    // nothing of this process's signal state may reach the program.
    let task = TaskSubmission::command([
        "sh",
        "-c",
        r#"printf '"%s"' "$(grep -E '^Sig(Blk|Ign):' /proc/self/status | tr '\n\t' '  ')""#,
    ]);
    assert_eq!(
        ok(&run(TIER, task)),
        json!("SigBlk: 0000000000000000 SigIgn: 0000000000000000 ")
    );
    let missing = TaskSubmission::command(["/nonexistent/lattice-program"]);
    match err(&run(TIER, missing)) {
        TaskError::SandboxUnavailable { reason } => assert!(
            reason.contains("can't run /nonexistent/lattice-program"),
            "{reason}"
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_task_has_its_own_tmp_var_tmp_and_dev_shm() {
    let _suite = crate::common::suite(module_path!());
    if !lattice_is_root() {
        return; // without a uid of its own a task shares the host's
    }
    let name = format!("lattice-private-{}", std::process::id());
    let host_file = tempfile::Builder::new()
        .prefix("lattice-host-")
        .tempfile_in("/tmp")
        .unwrap();
    let host_name = host_file.path().file_name().unwrap().to_str().unwrap();
    let dirs = ["/tmp", "/var/tmp", "/dev/shm"];
    let writer = format!(
        "import os, time\ndef f(x):\n    for d in {dirs:?}:\n        open(d + '/{name}', 'w').write('mine')\n    time.sleep(3)\n    return sorted(os.listdir('/tmp'))\n"
    );
    let reader = format!(
        "import os\ndef f(x):\n    return [os.path.exists(d + '/{name}') for d in {dirs:?}]\n"
    );
    let executor = limited(20.0, 512, 20.0);
    let listing = std::thread::scope(|scope| {
        let writing = scope.spawn(|| run_limited(&executor, &writer));
        std::thread::sleep(Duration::from_millis(1500));
        // While the writer holds its files: another task and the host see none.
        let seen = run_limited(&executor, &reader);
        assert_eq!(ok(&seen), json!([false, false, false]));
        for dir in dirs {
            let path = std::path::Path::new(dir).join(&name);
            assert!(!path.exists(), "{} reached the host", path.display());
        }
        writing.join().unwrap()
    });
    let listing = ok(&listing);
    let listing: Vec<&str> = listing
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    // Its own file and its temp dir; nothing of the host's /tmp.
    assert!(listing.contains(&name.as_str()), "{listing:?}");
    assert!(!listing.contains(&host_name), "{listing:?}");
    assert!(listing.len() <= 2, "{listing:?}");
}

#[test]
fn a_task_cannot_fill_the_host_disk_through_tmp_or_its_temp_dir() {
    let _suite = crate::common::suite(module_path!());
    if !lattice_is_root() {
        return;
    }
    // 1 MiB files until the filesystem refuses: in /tmp, and in the cwd
    // (the temp dir, also a tmpfs of the task's own).
    let code = "import os\ndef f(where):\n    chunk = b'x' * (1 << 20)\n    n = 0\n    try:\n        while n < 1024:\n            with open(os.path.join(where, 'fill-%d' % n), 'wb') as out:\n                out.write(chunk)\n            n += 1\n    except OSError as e:\n        return [n, e.errno]\n    return [n, 0]\n";
    let executor = limited(60.0, 512, 60.0);
    for place in ["/tmp", "."] {
        let outcome = executor.run(
            &TaskSubmission::python(code).with_input(json!(place)),
            &CancelToken::new(),
        );
        let result = ok(&outcome);
        assert_eq!(result[1], json!(libc::ENOSPC), "{place}: {result}");
        assert!(result[0].as_u64().unwrap() <= 64, "{place}: {result}");
    }
}

#[test]
fn the_rest_of_the_host_tree_is_read_only_but_the_temp_dir_is_not() {
    let _suite = crate::common::suite(module_path!());
    if !lattice_is_root() {
        return;
    }
    // A world-writable directory outside /tmp (like /run/lock), and a TMPDIR
    // outside /tmp too: the temp dir's tmpfs is mounted over the host's dir
    // there, writable under the read-only root.
    let open_dir = tempfile::tempdir_in("/run").unwrap();
    let tmpdir = tempfile::tempdir_in("/run").unwrap();
    for dir in [open_dir.path(), tmpdir.path()] {
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o1777))
            .unwrap();
    }
    let planted = open_dir.path().join("planted");
    let code = format!(
        "import os\ndef f(x):\n    open('mine.txt', 'w').write('ok')\n    try:\n        open({:?}, 'w').write('left behind')\n    except OSError as e:\n        return [os.getcwd(), open('mine.txt').read(), e.errno]\n    return [os.getcwd(), 'written', 0]\n",
        planted.display().to_string()
    );
    let run = lattice_cli(
        &["run", "-", "--tier", "subprocess", "--input", "null"],
        &code,
        &[("TMPDIR", tmpdir.path())],
    );
    let line: serde_json::Value = serde_json::from_slice(&run.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&run.stderr)));
    let result = &line["result"];
    assert!(
        result[0]
            .as_str()
            .unwrap_or("")
            .starts_with(tmpdir.path().to_str().unwrap()),
        "{line}"
    );
    assert_eq!(result[1], json!("ok"), "{line}");
    assert_eq!(result[2], json!(libc::EROFS), "{line}");
    assert!(!planted.exists());
}

#[test]
fn a_temp_dir_left_by_a_killed_process_is_removed_by_the_next() {
    let _suite = crate::common::suite(module_path!());
    let tmpdir = tempfile::tempdir().unwrap();
    let entries = || -> Vec<String> {
        std::fs::read_dir(tmpdir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with("lattice-task-"))
            .collect()
    };
    // A CLI killed (SIGKILL) while its task runs can't remove the task's
    // temp dir.
    let mut killed = std::process::Command::new(env!("CARGO_BIN_EXE_lattice-wasm"))
        .args(["run", "-", "--tier", "subprocess", "--input", "null"])
        .env("TMPDIR", tmpdir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        &mut killed.stdin.take().unwrap(),
        b"import time\ndef f(x):\n    time.sleep(2)\n",
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while entries().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    killed.kill().unwrap();
    killed.wait().unwrap();
    let orphans = entries();
    assert_eq!(orphans.len(), 1, "{orphans:?}");
    // The next process removes it before its first task, and its own too.
    let run = lattice_cli(
        &["run", "-", "--tier", "subprocess", "--input", "1"],
        "def f(x):\n    return x\n",
        &[("TMPDIR", tmpdir.path())],
    );
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(entries(), Vec::<String>::new());
}

#[test]
fn a_program_under_tmp_still_runs() {
    let _suite = crate::common::suite(module_path!());
    if !lattice_is_root() {
        return;
    }
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let script = dir.path().join("answer.sh");
    std::fs::write(&script, "#!/bin/sh\necho 42\n").unwrap();
    for (path, mode) in [(dir.path(), 0o755), (script.as_path(), 0o755)] {
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
    }
    let outcome = run(
        TIER,
        TaskSubmission::command([script.display().to_string()]),
    );
    assert_eq!(ok(&outcome), json!(42));
}

#[test]
fn settings_the_tier_cannot_honour_are_errors() {
    let _suite = crate::common::suite(module_path!());
    let mut task = TaskSubmission::python("def f(x):\n    return 1\n");
    task.sandbox.mounts = Some(vec!["/tmp:/data".parse().unwrap()]);
    assert!(matches!(
        err(&run(TIER, task)),
        TaskError::InvalidTask { .. }
    ));
    // A syscall allowlist only means something on the seccomp tier.
    let outcome = SandboxExecutor::new(SandboxConfig {
        tier: TIER,
        allowed_syscalls: Some(vec![0]),
        ..SandboxConfig::default()
    })
    .run(
        &TaskSubmission::python("def f(x):\n    return 1\n").with_input(json!(1)),
        &CancelToken::new(),
    );
    match err(&outcome) {
        TaskError::InvalidTask { message, .. } => {
            assert!(message.contains("allowed_syscalls"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

fn lattice_is_root() -> bool {
    // SAFETY: geteuid never fails.
    unsafe { libc::geteuid() == 0 }
}
