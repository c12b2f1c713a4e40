//! The docker tier against a real Docker engine (CI starts `dockerd` and
//! builds the image with scripts/docker-image.sh): the seed's hardening
//! holds under attack, limits fire as what they are, and no container of
//! ours outlives its task. These tests fail, not skip, without an engine.

use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;
use lattice::sandbox::{CancelToken, Mount, SandboxConfig, SandboxExecutor, SandboxLevel};
use lattice::task::{TaskError, TaskSubmission};
use serde_json::{json, Value};

const TIER: SandboxLevel = SandboxLevel::Docker;

/// The settings of these tests: the docker tier, 30 s, 256 MiB.
fn base() -> SandboxConfig {
    SandboxConfig {
        tier: TIER,
        timeout: Duration::from_secs(30),
        max_memory_mb: 256,
        ..SandboxConfig::default()
    }
}

fn docker(config: SandboxConfig) -> SandboxExecutor {
    SandboxExecutor::new(SandboxConfig {
        tier: TIER,
        ..config
    })
}

fn run_with(config: SandboxConfig, code: &str) -> lattice::task::TaskOutcome {
    docker(config).run(
        &TaskSubmission::python(code).with_input(json!(null)),
        &CancelToken::new(),
    )
}

/// One test at a time: each checks that none of this process's containers
/// is left, which only means something while no other test runs one.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the task saw when it tried `body` (see [`attack_code`]).
fn attempt(body: &str) -> Value {
    ok(&run_with(base(), &attack_code(body)))
}

#[test]
fn a_task_runs_hardened_and_its_container_is_removed() {
    let _suite = crate::common::suite(module_path!());
    let _serial = serial();
    let code = "import os, json\ndef f(x):\n    print('hello from the container')\n    status = open('/proc/self/status').read()\n    caps = [l for l in status.splitlines() if l.startswith(('CapEff', 'NoNewPrivs'))]\n    return {'x': x, 'uid': os.getuid(), 'caps': caps, 'env': sorted(os.environ)}\n";
    let outcome = docker(base()).run(
        &TaskSubmission::python(code).with_input(json!({"n": 1})),
        &CancelToken::new(),
    );
    let result = ok(&outcome);
    assert_eq!(result["x"], json!({"n": 1}));
    assert_eq!(result["uid"], json!(65534));
    assert_eq!(
        result["caps"],
        json!(["CapEff:\t0000000000000000", "NoNewPrivs:\t1"])
    );
    assert!(!result["env"].to_string().contains("LATTICE"), "{result}");
    assert_eq!(outcome.stdout, "hello from the container\n");
    assert!(our_containers().is_empty(), "{:?}", our_containers());
}

#[test]
fn the_filesystem_network_and_processes_are_locked_down() {
    let _suite = crate::common::suite(module_path!());
    let _serial = serial();
    assert_eq!(attempt("open('/etc/passwd-new', 'w')"), json!("OSError"));
    assert_eq!(attempt("open('/usr/evil', 'w')"), json!("OSError"));
    // The host's files are not there at all.
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret.txt");
    std::fs::write(&secret, "top secret").unwrap();
    assert_eq!(
        attempt(&format!("open({:?}).read()", secret.display().to_string())),
        json!("FileNotFoundError")
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let connect = attempt(&format!(
        "socket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'x')"
    ));
    assert_ne!(connect, json!("ok"));
    assert!(listener.accept().is_err());
    // A fork bomb meets the pids limit.
    let bomb = ok(&run_with(
        base(),
        "import os\ndef f(x):\n    n = 0\n    try:\n        for _ in range(1000):\n            if os.fork() == 0:\n                import time\n                time.sleep(60)\n                os._exit(0)\n            n += 1\n    except OSError:\n        return n\n    return -1\n",
    ));
    assert!(bomb.as_i64().unwrap() < 100, "{bomb}");
    // The tmpfs is the place to write.
    assert_eq!(
        attempt("open('/tmp/scratch', 'w').write('ok')"),
        json!("ok")
    );
    assert!(our_containers().is_empty());
}

#[test]
fn mounts_are_read_only_unless_marked() {
    let _suite = crate::common::suite(module_path!());
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("data.txt"), "shared").unwrap();
    let config = SandboxConfig {
        mounts: vec![Mount::new(dir.path(), "/data", false).unwrap()],
        ..base()
    };
    let code = "def f(x):\n    data = open('/data/data.txt').read()\n    try:\n        open('/data/new.txt', 'w')\n    except OSError:\n        return [data, 'read-only']\n    return [data, 'writable']\n";
    assert_eq!(ok(&run_with(config, code)), json!(["shared", "read-only"]));
}

#[test]
fn limits_fire_as_what_they_are() {
    let _suite = crate::common::suite(module_path!());
    let _serial = serial();
    let memory = run_with(
        SandboxConfig {
            max_memory_mb: 64,
            ..base()
        },
        "def f(x):\n    blocks = []\n    while True:\n        blocks.append(bytearray(8 << 20))\n",
    );
    assert!(
        matches!(err(&memory), TaskError::MemoryLimit { .. }),
        "{:?}",
        memory.result
    );
    let started = Instant::now();
    let spin = run_with(
        SandboxConfig {
            timeout: Duration::from_secs(2),
            ..base()
        },
        "def f(x):\n    while True:\n        pass\n",
    );
    assert!(matches!(err(&spin), TaskError::Timeout { .. }));
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    let flood = run_with(
        SandboxConfig {
            max_output_bytes: 1000,
            ..base()
        },
        "def f(x):\n    print('x' * 10**6)\n    return 'done'\n",
    );
    assert_eq!(ok(&flood), json!("done"));
    assert!(flood.stdout.contains("output truncated"));
    assert!(our_containers().is_empty());
}

#[test]
fn cancel_kills_and_removes_the_container() {
    let _suite = crate::common::suite(module_path!());
    let _serial = serial();
    let (cancel, canceller) = cancel_after(Duration::from_millis(1500));
    let started = Instant::now();
    let outcome = docker(base()).run(
        &TaskSubmission::python("import time\ndef f(x):\n    time.sleep(600)\n")
            .with_input(json!(null)),
        &cancel,
    );
    canceller.join().unwrap();
    assert!(
        matches!(err(&outcome), TaskError::Cancelled),
        "{:?} after {:?}",
        outcome.result,
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(our_containers().is_empty());
}

#[test]
fn a_missing_image_is_unavailable_with_the_fix() {
    let _suite = crate::common::suite(module_path!());
    let _serial = serial();
    let outcome = run_with(
        SandboxConfig {
            docker_image: "lattice/no-such-image:0".into(),
            ..base()
        },
        "def f(x):\n    return 1\n",
    );
    match err(&outcome) {
        TaskError::SandboxUnavailable { reason } => {
            assert!(reason.contains("docker-image.sh"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

/// Creates a stopped container with these owner labels; its id.
fn container_owned_by(labels: &[(&str, String)]) -> String {
    let mut create = Command::new("docker");
    create.arg("create");
    for (name, value) in labels {
        create
            .arg("--label")
            .arg(format!("lattice-wasm.{name}={value}"));
    }
    let created = create
        .args(["lattice/python:3.11", "true"])
        .output()
        .unwrap();
    assert!(created.status.success(), "{created:?}");
    String::from_utf8_lossy(&created.stdout).trim().to_string()
}

fn container_exists(id: &str) -> bool {
    let listed = Command::new("docker")
        .args(["ps", "-aq", "--no-trunc", "--filter"])
        .arg(format!("id={id}"))
        .output()
        .unwrap();
    !String::from_utf8_lossy(&listed.stdout).trim().is_empty()
}

#[test]
fn containers_of_a_crashed_process_are_swept_on_start() {
    let _suite = crate::common::suite(module_path!());
    let _serial = serial();
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap()
        .trim()
        .to_string();
    let pidns = std::fs::read_link("/proc/self/ns/pid")
        .unwrap()
        .display()
        .to_string();
    let our_start = std::fs::read_to_string("/proc/self/stat").unwrap();
    let our_start = our_start
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .nth(19)
        .unwrap()
        .to_string();
    let owner = |pid: String, ns: &str, start: &str| {
        vec![
            ("owner", pid),
            ("owner-boot", boot.clone()),
            ("owner-pidns", ns.to_string()),
            ("owner-start", start.to_string()),
        ]
    };
    // Left by a process that died between create and remove.
    let dead = container_owned_by(&owner("2147483646".into(), &pidns, "12345"));
    // Its pid now names a later process (this one): the owner is gone.
    let reused = container_owned_by(&owner(std::process::id().to_string(), &pidns, "1"));
    // Still owned: by this live process.
    let live = container_owned_by(&owner(std::process::id().to_string(), &pidns, &our_start));
    // Another PID namespace's process (pid 1 there says nothing here),
    // and a container without the boot/namespace labels: not ours to judge.
    let foreign = container_owned_by(&owner("1".into(), "pid:[1]", "1"));
    let unlabelled = container_owned_by(&[("owner", "2147483646".to_string())]);

    let run = lattice_cli(
        &["run", "-", "--tier", "docker", "--input", "1"],
        "def f(x):\n    return x + 1\n",
        &[],
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&run.stdout).unwrap()["result"],
        json!(2),
        "{run:?}"
    );
    assert!(
        !container_exists(&dead),
        "a dead owner's container was kept"
    );
    assert!(
        !container_exists(&reused),
        "a container whose owner's pid was reused was kept"
    );
    for (what, id) in [
        ("live", &live),
        ("foreign", &foreign),
        ("unlabelled", &unlabelled),
    ] {
        assert!(
            container_exists(id),
            "the {what} owner's container was swept"
        );
        let _ = Command::new("docker").args(["rm", "-f", id]).output();
    }
}

#[test]
fn an_engine_that_is_down_is_unavailable_not_a_hang() {
    let _suite = crate::common::suite(module_path!());
    let _serial = serial();
    let started = Instant::now();
    let run = lattice_cli(
        &["run", "-", "--tier", "docker", "--input", "1"],
        "def f(x):\n    return x\n",
        &[(
            "DOCKER_HOST",
            std::path::Path::new("unix:///nonexistent/docker.sock"),
        )],
    );
    let outcome: Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(
        outcome["error"]["kind"],
        json!("sandbox_unavailable"),
        "{outcome}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
}
