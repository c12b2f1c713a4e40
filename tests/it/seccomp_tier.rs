//! The seccomp tier's promises (design.md §3), attacked with real CPython
//! under a real kernel filter and a real Landlock domain: no sockets, no
//! new processes, no exec, no writes outside the task's temp dir, no reads
//! of the host's files; the subprocess tier's limits still fire.

use std::net::TcpListener;
use std::time::Duration;

use crate::common::*;
use lattice::sandbox::{CancelToken, Mount, SandboxConfig, SandboxExecutor, SandboxLevel};
use lattice::task::{TaskError, TaskSubmission};
use serde_json::{json, Value};

const TIER: SandboxLevel = SandboxLevel::Seccomp;

fn seccomp(config: SandboxConfig) -> SandboxExecutor {
    SandboxExecutor::new(SandboxConfig {
        tier: TIER,
        timeout: Duration::from_secs(20),
        max_memory_mb: 512,
        ..config
    })
}

fn run_with(config: SandboxConfig, code: &str) -> lattice::task::TaskOutcome {
    seccomp(config).run(
        &TaskSubmission::python(code).with_input(json!(null)),
        &CancelToken::new(),
    )
}

/// What the task saw when it tried `body` (see [`attack_code`]).
fn attempt(body: &str) -> Value {
    ok(&run_with(SandboxConfig::default(), &attack_code(body)))
}

#[test]
fn python_runs_and_computes_under_the_filter() {
    let _suite = crate::common::suite(module_path!());
    let code = "import json, math, re, collections, datetime, decimal, hashlib, threading\ndef f(x):\n    t = threading.Thread(target=lambda: None)\n    t.start(); t.join()\n    open('scratch.txt', 'w').write('mine')\n    return [math.factorial(20), re.sub('a', 'b', 'aa'), open('scratch.txt').read(), x]\n";
    let outcome = seccomp(SandboxConfig::default()).run(
        &TaskSubmission::python(code).with_input(json!(7)),
        &CancelToken::new(),
    );
    assert_eq!(
        ok(&outcome),
        json!([2432902008176640000u64, "bb", "mine", 7])
    );
}

#[test]
fn sockets_fork_and_exec_are_refused() {
    let _suite = crate::common::suite(module_path!());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    assert_eq!(
        attempt(&format!(
            "socket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'stolen')"
        )),
        json!("PermissionError")
    );
    assert!(listener.accept().is_err(), "the listener got a connection");
    assert_eq!(
        attempt("socket.socket(socket.AF_UNIX)"),
        json!("PermissionError")
    );
    assert_eq!(attempt("os.fork()"), json!("PermissionError"));
    assert_eq!(
        attempt("subprocess.run(['true'])"),
        json!("PermissionError")
    );
    assert_eq!(
        attempt("os.execv(sys.executable, [sys.executable, '-c', 'pass'])"),
        json!("PermissionError")
    );
    assert_eq!(
        attempt("os.execv('/bin/sh', ['sh', '-c', 'true'])"),
        json!("PermissionError")
    );
}

#[test]
fn os_system_cannot_start_a_shell() {
    let _suite = crate::common::suite(module_path!());
    let outcome = run_with(
        SandboxConfig::default(),
        "import os\ndef f(x):\n    return os.system('echo escaped > /tmp/lattice-escape')\n",
    );
    assert_ne!(ok(&outcome), json!(0));
    assert!(!std::path::Path::new("/tmp/lattice-escape").exists());
}

#[test]
fn writes_outside_the_temp_dir_and_host_reads_are_refused() {
    let _suite = crate::common::suite(module_path!());
    // /tmp is world-writable: only Landlock stops this one.
    let probe = format!("/tmp/lattice-seccomp-probe-{}", std::process::id());
    assert_eq!(
        attempt(&format!("open({probe:?}, 'w').write('x')")),
        json!("PermissionError")
    );
    assert!(!std::path::Path::new(&probe).exists());
    // A file the host made, readable by anyone: outside the allowed tree.
    // (Not under /tmp, which the task has its own copy of: only Landlock
    // stops this one.)
    let world_readable = |dir: tempfile::TempDir| {
        let secret = dir.path().join("secret.txt");
        std::fs::write(&secret, "top secret").unwrap();
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        (dir, secret)
    };
    let (_outside, secret) = world_readable(tempfile::tempdir_in("/run").unwrap());
    assert_eq!(
        attempt(&format!("open({:?}).read()", secret.display().to_string())),
        json!("PermissionError")
    );
    // Unless it is mounted (read-only: no writes), also from under /tmp.
    let (dir, secret) = world_readable(tempfile::tempdir().unwrap());
    let mounted = SandboxConfig {
        mounts: vec![Mount::new(dir.path(), &dir.path().display().to_string(), false).unwrap()],
        ..SandboxConfig::default()
    };
    let code = format!(
        "def f(x):\n    data = open({0:?}).read()\n    try:\n        open({0:?}, 'w')\n    except PermissionError:\n        return [data, 'read-only']\n    return [data, 'writable']\n",
        secret.display().to_string()
    );
    assert_eq!(
        ok(&run_with(mounted, &code)),
        json!(["top secret", "read-only"])
    );
}

#[test]
fn a_writable_mount_under_tmp_reaches_the_host() {
    let _suite = crate::common::suite(module_path!());
    // SAFETY: geteuid never fails.
    if unsafe { libc::geteuid() } != 0 {
        return; // the task's own /tmp needs root
    }
    // The task writes into a host dir under /tmp, which it sees through
    // its own /tmp; a file beside the dir stays out of sight.
    let dir = tempfile::tempdir().unwrap();
    let beside = tempfile::NamedTempFile::new().unwrap();
    std::os::unix::fs::chown(dir.path(), Some(0), Some(0)).unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let config = SandboxConfig {
        mounts: vec![Mount::new(dir.path(), &dir.path().display().to_string(), true).unwrap()],
        ..SandboxConfig::default()
    };
    let code = format!(
        "import os\ndef f(x):\n    open({:?}, 'w').write('from the task')\n    return os.path.exists({:?})\n",
        dir.path().join("out.txt").display().to_string(),
        beside.path().display().to_string()
    );
    assert_eq!(ok(&run_with(config, &code)), json!(false));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out.txt")).unwrap(),
        "from the task"
    );
}

#[test]
fn the_kill_option_reports_a_sandbox_violation() {
    let _suite = crate::common::suite(module_path!());
    let kill = || SandboxConfig {
        seccomp_kill: true,
        ..SandboxConfig::default()
    };
    assert_eq!(
        ok(&run_with(
            kill(),
            "import json\ndef f(x):\n    return json.dumps([1])\n"
        )),
        json!("[1]"),
        "a well-behaved task runs in kill mode"
    );
    let outcome = run_with(
        SandboxConfig {
            seccomp_kill: true,
            ..SandboxConfig::default()
        },
        "import socket\ndef f(x):\n    socket.socket()\n",
    );
    match err(&outcome) {
        TaskError::Failed {
            type_name, message, ..
        } => {
            assert_eq!(type_name, "SandboxViolation");
            assert!(message.contains("SIGSYS"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn allowed_syscalls_replace_the_allowlist() {
    let _suite = crate::common::suite(module_path!());
    // An allowlist without `getcwd`: CPython still starts (it does not
    // need it), but os.getcwd() is refused.
    let mut calls: Vec<i64> = default_allowlist_for_test();
    calls.retain(|&c| c != libc_getcwd());
    let outcome = run_with(
        SandboxConfig {
            allowed_syscalls: Some(calls),
            ..SandboxConfig::default()
        },
        "import os\ndef f(x):\n    try:\n        os.getcwd()\n    except PermissionError:\n        return 'refused'\n    return 'allowed'\n",
    );
    assert_eq!(ok(&outcome), json!("refused"));
}

fn libc_getcwd() -> i64 {
    #[cfg(target_arch = "x86_64")]
    return 79;
    #[cfg(target_arch = "aarch64")]
    return 17;
}

fn default_allowlist_for_test() -> Vec<i64> {
    lattice::sandbox::seccomp_allowlist()
}

#[test]
fn limits_still_fire() {
    let _suite = crate::common::suite(module_path!());
    let memory = run_with(
        SandboxConfig {
            max_memory_mb: 200,
            ..SandboxConfig::default()
        },
        "def f(x):\n    return len(bytearray(1 << 30))\n",
    );
    assert!(matches!(err(&memory), TaskError::MemoryLimit { .. }));
    let spin = run_with(
        SandboxConfig {
            timeout: Duration::from_millis(500),
            ..SandboxConfig::default()
        },
        "def f(x):\n    while True:\n        pass\n",
    );
    assert!(matches!(err(&spin), TaskError::Timeout { .. }));
    let flood = run_with(
        SandboxConfig {
            max_output_bytes: 1000,
            ..SandboxConfig::default()
        },
        "def f(x):\n    print('x' * 10**6)\n    return 1\n",
    );
    assert_eq!(ok(&flood), json!(1));
    assert!(flood.stdout.contains("output truncated"));
    let env = ok(&run_code(
        TIER,
        "import os\ndef f(x):\n    return sorted(os.environ)\n",
        json!(null),
    ));
    for name in env.as_array().unwrap() {
        assert!(
            ["HOME", "LANG", "LC_CTYPE", "TMPDIR"].contains(&name.as_str().unwrap()),
            "{env}"
        );
    }
}
