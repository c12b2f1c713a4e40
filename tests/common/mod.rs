//! Helpers shared by the integration tests: real executors, real CPython
//! processes, and the checks that nothing a task started outlives it.

#![allow(dead_code)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use lattice::sandbox::{CancelToken, SandboxConfig, SandboxExecutor, SandboxLevel};
use lattice::task::{TaskError, TaskOutcome, TaskSubmission};
use serde_json::Value;

/// Holds a test's place in its suite: see [`suite`].
pub(crate) struct Suite {
    /// When the test got its turn (its time goes to `LATTICE_SUITE_TIMES`).
    started: Instant,
}

/// Which suite runs now, and how many of its tests.
static RUNNING: std::sync::Mutex<(Option<&'static str>, usize)> = std::sync::Mutex::new((None, 0));
static TURN: std::sync::Condvar = std::sync::Condvar::new();

/// Waits until no other suite has a test running, then counts this test in
/// `name`'s (a module path): the tests of one suite run together, never
/// beside another suite's. The suites share a process, and some change
/// what another would see (stop dockerd, set the process-wide sandbox
/// configuration, count processes, containers, temp dirs or memory).
pub(crate) fn suite(name: &'static str) -> Suite {
    let mut running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
    while running.0.is_some_and(|current| current != name) {
        running = TURN.wait(running).unwrap_or_else(|e| e.into_inner());
    }
    if running.1 == 0 {
        suite_times(name, "starts");
    }
    *running = (Some(name), running.1 + 1);
    Suite {
        started: Instant::now(),
    }
}

/// With `LATTICE_SUITE_TIMES=FILE`, appends when each suite's turn starts
/// and ends there (seconds since the epoch), and how long each test took
/// (libtest names a test's thread after it), so a run shows where the
/// integration tests' time goes.
fn suite_times(name: &str, what: &str) {
    let Some(path) = std::env::var_os("LATTICE_SUITE_TIMES") else {
        return;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
    {
        let _ = writeln!(file, "{now:.1} {what} {name}");
    }
}

impl Drop for Suite {
    fn drop(&mut self) {
        let took = format!("took {:.1}", self.started.elapsed().as_secs_f64());
        suite_times(std::thread::current().name().unwrap_or("?"), &took);
        let mut running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
        running.1 -= 1;
        if running.1 == 0 {
            if let Some(name) = running.0 {
                suite_times(name, "ends");
            }
            running.0 = None;
            TURN.notify_all();
        }
    }
}

/// A sandbox executor on `level` with a short timeout.
pub(crate) fn sandbox(level: SandboxLevel) -> SandboxExecutor {
    SandboxExecutor::new(SandboxConfig {
        tier: level,
        timeout: Duration::from_secs(20),
        max_memory_mb: 512,
        ..SandboxConfig::default()
    })
}

/// Runs one task on `level` and returns its outcome.
pub(crate) fn run(level: SandboxLevel, task: TaskSubmission) -> TaskOutcome {
    sandbox(level).run(&task, &CancelToken::new())
}

/// Runs `code` with `input` on `level`.
pub(crate) fn run_code(level: SandboxLevel, code: &str, input: Value) -> TaskOutcome {
    run(level, TaskSubmission::python(code).with_input(input))
}

/// A task whose `f` runs `body` (with os, sys, socket and subprocess
/// imported) and returns the type of the exception it raised, or "ok": an
/// attack's outcome as the task itself saw it.
pub(crate) fn attack_code(body: &str) -> String {
    format!(
        "import os, sys, socket, subprocess\ndef f(x):\n    try:\n{}\n    except BaseException as e:\n        return type(e).__name__\n    return 'ok'\n",
        body.lines()
            .map(|l| format!("        {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    )
}

/// Every tier (each has sessions).
pub(crate) const ALL_TIERS: [SandboxLevel; 5] = [
    SandboxLevel::Wasm,
    SandboxLevel::None,
    SandboxLevel::Subprocess,
    SandboxLevel::Seccomp,
    SandboxLevel::Docker,
];

/// The configuration the session suites open sessions under.
pub(crate) fn session_config(level: SandboxLevel) -> SandboxConfig {
    SandboxConfig {
        tier: level,
        timeout: Duration::from_secs(20),
        max_memory_mb: 256,
        ..SandboxConfig::default()
    }
}

/// A session call's value, or a panic that shows the whole reply.
pub(crate) fn reply_value(reply: &lattice::session::Reply) -> Value {
    match &reply.result {
        Ok(value) => value.clone(),
        Err(error) => panic!(
            "expected a value, got {error:?} (stdout {:?}, stderr {:?})",
            reply.stdout, reply.stderr
        ),
    }
}

/// The result, or a panic that shows the whole outcome.
pub(crate) fn ok(outcome: &TaskOutcome) -> Value {
    match &outcome.result {
        Ok(value) => value.clone(),
        Err(e) => panic!(
            "expected a result, got {e:?}\nstdout: {}\nstderr: {}",
            outcome.stdout, outcome.stderr
        ),
    }
}

/// The error, or a panic that shows the result.
pub(crate) fn err(outcome: &TaskOutcome) -> TaskError {
    match &outcome.result {
        Err(e) => e.clone(),
        Ok(value) => panic!("expected an error, got {value}\nstdout: {}", outcome.stdout),
    }
}

/// The Python exception type of a task failure.
pub(crate) fn failed_type(outcome: &TaskOutcome) -> String {
    match err(outcome) {
        TaskError::Failed { type_name, .. } => type_name,
        other => panic!("expected a task failure, got {other:?}"),
    }
}

// ---- /proc: the one place the tests read other processes from ----------

/// Every pid of our PID namespace, live or zombie.
pub(crate) fn all_pids() -> Vec<i64> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// True while a process with this pid exists (and is not a zombie).
pub(crate) fn alive(pid: i64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// The entries of a NUL-separated file of `pid` (`cmdline`, `environ`);
/// empty when it is gone or unreadable.
pub(crate) fn proc_list(pid: i64, file: &str) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/{file}"))
        .unwrap_or_default()
        .split(|&b| b == 0)
        .filter(|entry| !entry.is_empty())
        .map(|entry| String::from_utf8_lossy(entry).into_owned())
        .collect()
}

/// True if `pid`'s environment has exactly this `KEY=VALUE` entry.
pub(crate) fn has_env(pid: i64, entry: &str) -> bool {
    proc_list(pid, "environ").iter().any(|e| e == entry)
}

/// The name of `pid`'s program (`/proc/PID/comm`).
pub(crate) fn comm(pid: i64) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The parent of `pid`.
pub(crate) fn parent_of(pid: i64) -> Option<i64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// A `Key:` line of `/proc/PID/status` in kB (`VmHWM`, say).
pub(crate) fn status_kb(pid: i64, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// A process a task reported with a `pid: PID NS` line, NS being its
/// `/proc/self/ns/pid` link: the process tiers give a task a pid namespace
/// of its own, where the pid alone names nothing on the host.
#[derive(Clone, Debug)]
pub(crate) struct TaskProcess {
    pub pid: i64,
    /// E.g. `pid:[4026532291]`.
    pub namespace: Option<String>,
}

impl std::fmt::Display for TaskProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} in {:?}", self.pid, self.namespace)
    }
}

/// Waits up to three seconds (a loaded machine reaps slowly) for the
/// process to be gone; true if it is. A process in a pid namespace of its
/// own is gone when no process is left in that namespace (the pid it saw is
/// not the host's). Namespace numbers are reused: a process that started
/// after this check began is in a new namespace of the same number (another
/// test's), not the task's.
pub(crate) fn gone(process: &TaskProcess) -> bool {
    let ours = std::fs::read_link("/proc/self/ns/pid").ok();
    let private = process
        .namespace
        .as_deref()
        .filter(|ns| ours.as_deref() != Some(Path::new(ns)));
    let checking_since = boot_ticks_now();
    let still_there = || match private {
        Some(ns) => in_namespace(ns)
            .into_iter()
            .any(|pid| start_ticks(pid).is_some_and(|start| start <= checking_since)),
        None => alive(process.pid),
    };
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if !still_there() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    !still_there()
}

/// When `pid` started, in clock ticks since boot (`/proc/PID/stat` field 22).
fn start_ticks(pid: i64) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Now, in clock ticks since boot (the clock of [`start_ticks`]).
fn boot_ticks_now() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut now) };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    now.tv_sec as u64 * hz + now.tv_nsec as u64 * hz / 1_000_000_000
}

/// The live host pids in the pid namespace `ns` (a `pid:[N]` link).
pub(crate) fn in_namespace(ns: &str) -> Vec<i64> {
    all_pids()
        .into_iter()
        .filter(|&pid| {
            std::fs::read_link(format!("/proc/{pid}/ns/pid"))
                .is_ok_and(|link| link == Path::new(ns))
                && alive(pid)
        })
        .collect()
}

/// The processes in a task's stdout, one per `pid: N [NS]` line.
pub(crate) fn pids_in(text: &str) -> Vec<TaskProcess> {
    text.lines()
        .filter_map(|l| l.strip_prefix("pid:"))
        .filter_map(|rest| {
            let mut words = rest.split_whitespace();
            Some(TaskProcess {
                pid: words.next()?.parse().ok()?,
                namespace: words.next().map(str::to_string),
            })
        })
        .collect()
}

/// True if `path` no longer exists.
pub(crate) fn removed(path: &str) -> bool {
    !Path::new(path).exists()
}

/// Runs the `lattice-wasm` binary with `args`, `stdin` and extra `env`.
pub(crate) fn lattice_cli(args: &[&str], stdin: &str, env: &[(&str, &Path)]) -> Output {
    run_cli(args, stdin, env, None)
}

/// The CLI as [`lattice_cli`], failing the test (not hanging it) past `limit`.
pub(crate) fn cli_within(args: &[&str], stdin: &str, limit: Duration) -> Output {
    run_cli(args, stdin, &[], Some(limit))
}

fn run_cli(args: &[&str], stdin: &str, env: &[(&str, &Path)], limit: Option<Duration>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lattice-wasm"))
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let Some(limit) = limit else {
        return child.wait_with_output().unwrap();
    };
    let pid = child.id();
    let watchdog = std::thread::spawn(move || {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            if !alive(i64::from(pid)) {
                return false;
            }
        }
        // SAFETY: our own child, not yet reaped (we still wait for it).
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        true
    });
    let out = child.wait_with_output().unwrap();
    assert!(
        !watchdog.join().unwrap(),
        "lattice-wasm {args:?} hung past {limit:?}"
    );
    out
}

/// Puts the default process-wide sandbox configuration back when dropped
/// (also when a test fails midway): the suites after it share the process.
pub(crate) struct RestoreDefaultConfig;

impl Drop for RestoreDefaultConfig {
    fn drop(&mut self) {
        lattice::sandbox::set_sandbox_config(SandboxConfig::default());
    }
}

/// A cancel token that another thread cancels after `delay`.
pub(crate) fn cancel_after(delay: Duration) -> (CancelToken, std::thread::JoinHandle<()>) {
    let cancel = CancelToken::new();
    let canceller = {
        let cancel = cancel.clone();
        std::thread::spawn(move || {
            std::thread::sleep(delay);
            cancel.cancel();
        })
    };
    (cancel, canceller)
}

/// The docker containers this test process created that are still on the
/// engine, running or not (they carry our pid in their owner label).
pub(crate) fn our_containers() -> Vec<String> {
    containers_of(std::process::id(), false)
}

/// Our docker containers that are running.
pub(crate) fn our_running_containers() -> Vec<String> {
    containers_of(std::process::id(), true)
}

/// The docker containers process `pid` created (all, or the running ones).
pub(crate) fn containers_of(pid: u32, running_only: bool) -> Vec<String> {
    let out = Command::new("docker")
        .args(["ps", if running_only { "-q" } else { "-aq" }, "--filter"])
        .arg(format!("label=lattice-wasm.owner={pid}"))
        .output()
        .expect("the docker CLI runs");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The user Wasm tasks reach their mounts as (and docker tasks run as).
pub(crate) const NOBODY: u32 = 65534;
