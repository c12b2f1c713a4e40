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

mod common;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
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
        level,
        timeout: Duration::from_secs(10),
        max_memory_mb: 256,
        max_output_bytes: 64 << 10,
        ..SandboxConfig::default()
    }
}

#[test]
fn every_attack_fails_as_its_file_says_and_the_host_is_unharmed() {
    // What the attacks go after: a private file, and a variable of ours.
    let secret_dir = tempfile::tempdir().unwrap();
    let secret = secret_dir.path().join("secret.txt");
    std::fs::write(&secret, "lattice-top-secret").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::env::set_var("LATTICE_ATTACK_SECRET", "lattice-env-secret");

    let attacks = corpus();
    assert!(
        attacks.len() >= 25,
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
        let executor = SandboxExecutor::new(config(level));
        for attack in attacks {
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
            let input = match attack.name.as_str() {
                "read_secret" => json!(secret.display().to_string()),
                _ if attack.listener => json!(listener.local_addr().unwrap().port()),
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
            let Some(expected) = expected else {
                continue; // no promise on this tier: an outcome is enough
            };
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
    }
}
