//! The attack corpus (tests/attacks/*.py): hostile programs, each run on
//! every tier that promises to stop it, with the outcome each tier must
//! give in the file's header, and the host checked unharmed after each.
//!
//! Header lines:
//! - `# expect: TIER=OUTCOME ...` (`*` for every tier not named). OUTCOME:
//!   `ok`, `ok:nonzero`, `ok:<json>`, `task_error`, `task_error:<Type>`,
//!   `memory_limit`, `timeout`, `limit` (memory or time), `refused` (a
//!   task error or a limit), `invalid_task`; `A|B` for either.
//!   Tiers not named (and no `*`) only have to give an outcome.
//! - `# forbid: TEXT` — must not appear in the result, stdout or stderr.
//! - `# canary: PATH` — a host path that must not exist afterwards
//!   (`{tier}` in the path and the code is the tier's name); one or more.
//! - `# listener: ...` — the input is the port of a listener on 127.0.0.1
//!   that must get no connection.
//! - `# stdout: truncated` — the output cap must have fired.
//! - `# victim: yes` — a victim task holding a secret
//!   (`lattice-victim-secret-…`) runs on the same executor just before the
//!   attack, and another runs alongside it: a cross-task check.
//! - `# host-process: yes` — a host process with `lattice-cmdline-secret`
//!   in its command line runs meanwhile.
//! - `# unix-listener: yes` — the input is the paths of unix sockets the
//!   host listens on (under /run, under /srv, abstract), which must get no
//!   connection.
//! - `# ipc-key: 0x…` — no System V IPC object with that key may be left
//!   in the host's namespace.
//! - `# timeout: SECS` (10 unless told), `# max_cpu_time: SECS`,
//!   `# max_memory_mb: N` — the task's limits.
//!
//! OUTCOME `task` is any outcome the task's own side may report (a result,
//! a task error, an invalid task): none that only the host decides.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::*;
use lattice::sandbox::{CancelToken, SandboxConfig, SandboxExecutor, SandboxLevel};
use lattice::task::{ErrorKind, TaskError, TaskOutcome, TaskSubmission};
use serde_json::{json, Value};

const TIERS: [SandboxLevel; 4] = [
    SandboxLevel::Wasm,
    SandboxLevel::Subprocess,
    SandboxLevel::Seccomp,
    SandboxLevel::Docker,
];

struct Attack {
    name: String,
    code: String,
    expect: BTreeMap<String, String>,
    forbid: Vec<String>,
    canaries: Vec<PathBuf>,
    listener: bool,
    truncated: bool,
    victim: bool,
    host_process: bool,
    unix_listener: bool,
    ipc_key: Option<u64>,
    timeout: Option<f64>,
    max_cpu_time: Option<f64>,
    max_memory_mb: Option<u64>,
}

/// Holds its secret in a global, a local and a container while it runs.
const VICTIM: &str = "import time
HELD = None
def f(secret, seconds):
    global HELD
    HELD = secret
    kept = [secret, {'secret': secret}]
    time.sleep(seconds)
    return len(kept)
";

fn victim(executor: &SandboxExecutor, tier: &str, seconds: f64) -> TaskOutcome {
    let secret = format!("lattice-victim-secret-{tier}-{seconds}");
    executor.run(
        &TaskSubmission::python(VICTIM).with_args(vec![json!(secret), json!(seconds)]),
        &CancelToken::new(),
    )
}

fn corpus() -> Vec<Attack> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/attacks");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "py"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let code = std::fs::read_to_string(&path).unwrap();
            let header = |key: &str| -> Vec<String> {
                let prefix = format!("# {key}: ");
                code.lines()
                    .filter_map(|l| l.strip_prefix(&prefix))
                    .map(str::to_owned)
                    .collect()
            };
            let expect = header("expect")
                .into_iter()
                .flat_map(|line| {
                    line.split_whitespace()
                        .map(|pair| {
                            let (tier, outcome) = pair.split_once('=').expect("TIER=OUTCOME");
                            (tier.to_owned(), outcome.to_owned())
                        })
                        .collect::<Vec<_>>()
                })
                .collect();
            Attack {
                name: path.file_stem().unwrap().to_string_lossy().into_owned(),
                expect,
                forbid: header("forbid"),
                canaries: header("canary").into_iter().map(PathBuf::from).collect(),
                listener: !header("listener").is_empty(),
                truncated: header("stdout").iter().any(|v| v == "truncated"),
                victim: header("victim").iter().any(|v| v == "yes"),
                host_process: header("host-process").iter().any(|v| v == "yes"),
                unix_listener: header("unix-listener").iter().any(|v| v == "yes"),
                ipc_key: header("ipc-key").first().map(|key| {
                    u64::from_str_radix(key.trim_start_matches("0x"), 16).expect("hex key")
                }),
                timeout: header("timeout").first().map(|v| v.parse().unwrap()),
                max_cpu_time: header("max_cpu_time").first().map(|v| v.parse().unwrap()),
                max_memory_mb: header("max_memory_mb").first().map(|v| v.parse().unwrap()),
                code,
            }
        })
        .collect()
}

/// Whether `outcome` is what `expected` says; why not, if it isn't.
fn check(expected: &str, outcome: &TaskOutcome) -> Result<(), String> {
    if expected.contains('|') {
        return match expected.split('|').any(|one| check(one, outcome).is_ok()) {
            true => Ok(()),
            false => Err(format!("expected {expected}, got {:?}", outcome.result)),
        };
    }
    let (kind, detail) = expected.split_once(':').unwrap_or((expected, ""));
    let fine = match (&outcome.result, kind) {
        (Ok(_), "ok") if detail.is_empty() => true,
        (Ok(value), "ok") if detail == "nonzero" => value.as_i64().is_some_and(|n| n != 0),
        (Ok(value), "ok") => serde_json::from_str::<Value>(detail).ok().as_ref() == Some(value),
        (Err(TaskError::Failed { type_name, .. }), "task_error") => {
            detail.is_empty() || type_name == detail
        }
        (Ok(_), "task") => true,
        (Err(e), "task") => matches!(e.kind(), ErrorKind::TaskError | ErrorKind::InvalidTask),
        (Err(e), "limit") => matches!(e.kind(), ErrorKind::MemoryLimit | ErrorKind::Timeout),
        (Err(e), "refused") => matches!(
            e.kind(),
            ErrorKind::TaskError | ErrorKind::MemoryLimit | ErrorKind::Timeout
        ),
        (Err(e), kind) => e.kind().as_str() == kind,
        _ => false,
    };
    if fine {
        Ok(())
    } else {
        Err(format!("expected {expected}, got {:?}", outcome.result))
    }
}

fn config(level: SandboxLevel) -> SandboxConfig {
    SandboxConfig {
        tier: level,
        timeout: Duration::from_secs(10),
        max_memory_mb: 256,
        max_output_bytes: 64 << 10,
        ..SandboxConfig::default()
    }
}

/// Unix sockets the host listens on for an attack: one under /run, one
/// under /srv (both open to everyone) and an abstract one. Each accepts
/// into a counter.
struct UnixListeners {
    paths: Vec<PathBuf>,
    abstract_name: String,
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl UnixListeners {
    fn open(tier: &str) -> UnixListeners {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::net::{SocketAddr, UnixListener};
        use std::sync::atomic::Ordering;
        std::fs::create_dir_all("/srv/lattice-attack").unwrap();
        std::fs::set_permissions(
            "/srv/lattice-attack",
            std::fs::Permissions::from_mode(0o777),
        )
        .unwrap();
        let paths = vec![
            PathBuf::from(format!("/run/lattice-attack-{tier}.sock")),
            PathBuf::from(format!("/srv/lattice-attack/{tier}.sock")),
        ];
        let abstract_name = format!("lattice-attack-{tier}");
        let mut listeners = Vec::new();
        for path in &paths {
            let _ = std::fs::remove_file(path);
            let listener = UnixListener::bind(path).unwrap();
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)).unwrap();
            listeners.push(listener);
        }
        let address = SocketAddr::from_abstract_name(abstract_name.as_bytes()).unwrap();
        listeners.push(UnixListener::bind_addr(&address).unwrap());
        for listener in &listeners {
            listener.set_nonblocking(true).unwrap();
        }
        let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let (connections, stop) = (connections.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    for listener in &listeners {
                        if listener.accept().is_ok() {
                            connections.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        UnixListeners {
            paths,
            abstract_name,
            connections,
            stop,
            thread: Some(thread),
        }
    }

    /// The task's input: the paths, and the abstract name with its NUL.
    fn input(&self) -> Value {
        let mut names: Vec<Value> = self
            .paths
            .iter()
            .map(|p| json!(p.display().to_string()))
            .collect();
        names.push(json!(format!("\0{}", self.abstract_name)));
        Value::Array(names)
    }

    /// How many connections the listeners took, once closed.
    fn close(mut self) -> usize {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap();
        for path in &self.paths {
            let _ = std::fs::remove_file(path);
        }
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// True if the host's namespace has a System V IPC object with `key`.
fn ipc_key_present(key: u64) -> bool {
    [
        "/proc/sysvipc/shm",
        "/proc/sysvipc/msg",
        "/proc/sysvipc/sem",
    ]
    .iter()
    .any(|table| {
        std::fs::read_to_string(table)
            .unwrap_or_default()
            .lines()
            .skip(1)
            .any(|line| {
                line.split_whitespace()
                    .next()
                    .and_then(|k| k.parse::<i64>().ok())
                    .is_some_and(|k| k as u32 as u64 == key)
            })
    })
}

#[test]
fn every_attack_fails_as_its_file_says_and_the_host_is_unharmed() {
    let _suite = crate::common::suite(module_path!());
    // What the attacks go after: a private file, and a variable of ours.
    let secret_dir = tempfile::tempdir().unwrap();
    let secret = secret_dir.path().join("secret.txt");
    std::fs::write(&secret, "lattice-top-secret").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::env::set_var("LATTICE_ATTACK_SECRET", "lattice-env-secret");

    let attacks = corpus();
    assert!(
        attacks.len() >= 44,
        "the corpus has {} attacks",
        attacks.len()
    );
    // The tiers in parallel (each attack's host paths name its tier).
    let (attacks, secret) = (&attacks, secret.as_path());
    let failures: Vec<String> = std::thread::scope(|scope| {
        let runs: Vec<_> = TIERS
            .iter()
            .map(|&level| scope.spawn(move || attack_tier(level, attacks, secret)))
            .collect();
        runs.into_iter()
            .flat_map(|run| run.join().unwrap())
            .collect()
    });
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// Runs every attack on `level`; what went wrong.
fn attack_tier(level: SandboxLevel, attacks: &[Attack], secret: &Path) -> Vec<String> {
    let mut failures = Vec::new();
    {
        for attack in attacks {
            let mut limits = config(level);
            if let Some(seconds) = attack.timeout {
                limits.timeout = Duration::from_secs_f64(seconds);
            }
            if let Some(cpu) = attack.max_cpu_time {
                limits.max_cpu_time = Duration::from_secs_f64(cpu);
            }
            if let Some(mb) = attack.max_memory_mb {
                limits.max_memory_mb = mb;
            }
            let executor = SandboxExecutor::new(limits);
            let tier = level.as_str();
            let started = std::time::Instant::now();
            let code = attack.code.replace("{tier}", tier);
            let canaries: Vec<PathBuf> = attack
                .canaries
                .iter()
                .map(|c| PathBuf::from(c.display().to_string().replace("{tier}", tier)))
                .collect();
            let expected = attack.expect.get(tier).or_else(|| attack.expect.get("*"));
            for canary in &canaries {
                let _ = std::fs::remove_file(canary);
            }
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.set_nonblocking(true).unwrap();
            let unix_listeners = attack.unix_listener.then(|| UnixListeners::open(tier));
            let host_process = attack.host_process.then(|| {
                std::process::Command::new("/usr/bin/python3")
                    .args([
                        "-c",
                        "import time; time.sleep(60)",
                        &format!("lattice-cmdline-secret-{tier}"),
                    ])
                    .spawn()
                    .unwrap()
            });
            let input = match attack.name.as_str() {
                "read_secret" => json!(secret.display().to_string()),
                _ if attack.listener => json!(listener.local_addr().unwrap().port()),
                _ if attack.unix_listener => unix_listeners.as_ref().unwrap().input(),
                _ => json!(null),
            };
            let attack_task = TaskSubmission::python(code.clone()).with_input(input);
            let mut problems = Vec::new();
            let outcome = if attack.name == "deep_input" {
                deep_input_outcome(level, &code)
            } else if attack.victim {
                let before = victim(&executor, tier, 0.0);
                std::thread::scope(|scope| {
                    let during = scope.spawn(|| victim(&executor, tier, 3.0));
                    // Docker needs a moment to start the victim's container.
                    std::thread::sleep(Duration::from_millis(800));
                    let outcome = executor.run(&attack_task, &CancelToken::new());
                    for (when, victim) in [("before", before), ("during", during.join().unwrap())] {
                        if victim.result != Ok(json!(2)) {
                            problems.push(format!("the victim {when} failed: {:?}", victim.result));
                        }
                    }
                    outcome
                })
            } else {
                executor.run(&attack_task, &CancelToken::new())
            };
            if let Some(mut process) = host_process {
                let _ = process.kill();
                let _ = process.wait();
            }
            let unix_connections = unix_listeners.map_or(0, UnixListeners::close);
            let ipc_left = attack.ipc_key.is_some_and(ipc_key_present);
            if let Some(key) = attack.ipc_key {
                // The host's namespace must not have it; clean up if it does.
                let _ = std::process::Command::new("ipcrm")
                    .args(["-M", &key.to_string(), "-Q", &key.to_string()])
                    .output();
            }
            let Some(expected) = expected else {
                continue; // no promise on this tier: an outcome is enough
            };
            if unix_connections > 0 {
                problems.push(format!(
                    "the host's unix sockets got {unix_connections} connection(s)"
                ));
            }
            if ipc_left {
                problems.push("a System V IPC object was left in the host's namespace".into());
            }
            if let Err(why) = check(expected, &outcome) {
                problems.push(why);
            }
            let seen = format!("{:?} {} {}", outcome.result, outcome.stdout, outcome.stderr);
            for text in &attack.forbid {
                if seen.contains(text.as_str()) {
                    problems.push(format!("{text:?} leaked"));
                }
            }
            for canary in &canaries {
                if canary.exists() {
                    problems.push(format!("{} was created on the host", canary.display()));
                }
                let _ = std::fs::remove_file(canary);
            }
            if attack.listener && listener.accept().is_ok() {
                problems.push("the host's listener got a connection".into());
            }
            if attack.truncated && !outcome.stdout.contains("output truncated") {
                problems.push("stdout was not capped".into());
            }
            eprintln!("{tier}/{}: {:?}", attack.name, started.elapsed());
            if !problems.is_empty() {
                failures.push(format!("{tier}/{}: {}", attack.name, problems.join("; ")));
            }
        }
    }
    failures
}

/// An input nested 100,000 lists deep, as a user would send it: JSON text
/// through the CLI (a `Value` that deep can't even be dropped safely).
fn deep_input_outcome(level: SandboxLevel, code: &str) -> TaskOutcome {
    let input = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        input.path(),
        format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)),
    )
    .unwrap();
    let input_path = input.path().display().to_string();
    let run = lattice_cli(
        &[
            "run",
            "-",
            "--tier",
            level.as_str(),
            "--input-file",
            &input_path,
        ],
        code,
        &[],
    );
    // The CLI refuses bad input before any task exists: exit 2, a message.
    if run.status.code() == Some(2) && run.stdout.is_empty() {
        let message = String::from_utf8_lossy(&run.stderr).into_owned();
        return TaskOutcome {
            id: None,
            result: Err(TaskError::invalid(message)),
            stdout: String::new(),
            stderr: String::new(),
            tier: Some(level),
            node_id: None,
            duration: Duration::ZERO,
            exit_code: None,
            files: Default::default(),
        };
    }
    let line: Value = serde_json::from_slice(&run.stdout).unwrap_or(Value::Null);
    let error = &line["error"];
    TaskOutcome {
        id: None,
        result: match error["kind"].as_str() {
            Some("invalid_task") => Err(TaskError::invalid(error["message"].to_string())),
            Some(other) => Err(TaskError::internal(format!("{other}: {error}"))),
            None => Ok(line["result"].clone()),
        },
        stdout: String::new(),
        stderr: String::from_utf8_lossy(&run.stderr).into_owned(),
        tier: Some(level),
        node_id: None,
        duration: Duration::ZERO,
        exit_code: None,
        files: Default::default(),
    }
}
