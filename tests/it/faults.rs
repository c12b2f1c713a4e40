//! Faults from outside a task: the Docker engine stopped mid-batch, the temp
//! dir full, a task that ignores SIGTERM. Each gives the affected tasks a
//! typed error, every task gets exactly one outcome, and the executor keeps
//! working once the fault is gone. (A killed Ray sidecar and a killed node
//! are in ray_executor.rs; a corrupted or truncated compiled-guest cache in
//! wasm_cache.rs.)
//!
//! These tests stop and restart the machine's `dockerd` and mount a tmpfs,
//! so they need root and an engine started by hand (scripts/test.sh does
//! both); they fail, not skip, without them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use lattice::executor::{ExecutorBackend, LocalExecutor};
use lattice::sandbox::{SandboxConfig, SandboxLevel};
use lattice::task::{ErrorKind, TaskError, TaskSubmission};
use serde_json::{json, Value};

/// One at a time: one test stops the engine the others use.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn engine_answers() -> bool {
    Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The local `dockerd`: its pid and command line.
fn dockerd() -> (i64, Vec<String>) {
    all_pids()
        .into_iter()
        .find(|&pid| comm(pid) == "dockerd" && alive(pid))
        .map(|pid| (pid, proc_list(pid, "cmdline")))
        .unwrap_or_else(|| panic!("no dockerd runs here: this test stops and restarts a local engine (scripts/test.sh starts one)"))
}

/// Stops the engine; starts it again with the same command line when
/// dropped (also if the test fails midway), and waits until it answers.
struct EngineStopped {
    argv: Vec<String>,
}

impl EngineStopped {
    fn now() -> EngineStopped {
        let (pid, argv) = dockerd();
        assert!(
            !argv.iter().any(|a| a.contains("fd://")),
            "dockerd is socket-activated ({argv:?}); stop and start it with systemctl instead"
        );
        // SAFETY: plain kill(2) of the engine's pid.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
        let stopped = EngineStopped { argv };
        wait_until("dockerd to stop", Duration::from_secs(90), || !alive(pid));
        stopped
    }
}

impl EngineStopped {
    fn restart(&self) -> Result<(), String> {
        if engine_answers() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open("/tmp/lattice-dockerd.log")
            .map_err(|e| e.to_string())?;
        // Detached (setsid -f): the engine outlives this test process.
        let started = Command::new("setsid")
            .arg("-f")
            .args(&self.argv)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .status()
            .map_err(|e| e.to_string())?;
        if !started.success() {
            return Err(format!("restarting dockerd: {started}"));
        }
        let deadline = Instant::now() + Duration::from_secs(90);
        while !engine_answers() {
            if Instant::now() > deadline {
                return Err("dockerd did not answer within 90 s of its restart".into());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }
}

impl Drop for EngineStopped {
    fn drop(&mut self) {
        if let Err(e) = self.restart() {
            // No second panic while a failed test unwinds.
            if std::thread::panicking() {
                eprintln!("{e}");
            } else {
                panic!("{e}");
            }
        }
    }
}

fn docker_config() -> SandboxConfig {
    SandboxConfig {
        tier: SandboxLevel::Docker,
        timeout: Duration::from_secs(180),
        max_cpu_time: Duration::from_secs(600),
        max_memory_mb: 128,
        ..SandboxConfig::default()
    }
}

fn doubler(i: i64) -> TaskSubmission {
    TaskSubmission::python("def f(x):\n    return 2 * x\n")
        .with_id(i)
        .with_input(json!(i))
}

fn unavailable_reason(error: &TaskError) -> String {
    match error {
        TaskError::SandboxUnavailable { reason } => reason.clone(),
        other => panic!("expected SandboxUnavailable, got {other:?}"),
    }
}

#[test]
fn the_docker_engine_stopped_mid_batch_fails_its_tasks_typed_and_the_executor_recovers() {
    let _suite = crate::common::suite(module_path!());
    let _serial = serial();
    let executor = LocalExecutor::new(Some(2), Some(docker_config()));
    // Warm: the engine is reachable and the image present.
    let first = executor.submit(doubler(1)).unwrap();
    assert_eq!(ok(&executor.get_result(&first)), json!(2));

    let sleepers: Vec<_> = (0..2)
        .map(|_| {
            executor
                .submit(TaskSubmission::python(
                    "import time\ndef f():\n    time.sleep(600)\n",
                ))
                .unwrap()
        })
        .collect();
    wait_until("both sleepers to run", Duration::from_secs(60), || {
        our_running_containers().len() == 2
    });

    let stopped = EngineStopped::now();
    // The running tasks end typed: the engine took their containers down.
    for handle in &sleepers {
        let outcome = executor.get_result(handle);
        let error = outcome.result.as_ref().unwrap_err();
        assert_eq!(error.kind(), ErrorKind::SandboxUnavailable, "{error:?}");
        let reason = unavailable_reason(error);
        assert!(
            reason.contains("engine") && reason.contains("did not finish"),
            "{reason}"
        );
    }
    // Tasks submitted while it is down fail at once, typed, no hang.
    let started = Instant::now();
    let while_down: Vec<_> = (10..13)
        .map(|i| executor.submit(doubler(i)).unwrap())
        .collect();
    for handle in &while_down {
        let outcome = executor.get_result(handle);
        let reason = unavailable_reason(outcome.result.as_ref().unwrap_err());
        assert!(reason.contains("not reachable"), "{reason}");
    }
    assert!(started.elapsed() < Duration::from_secs(30));

    drop(stopped);
    // The same executor runs tasks again, and the containers the engine
    // could not remove while it was down are gone.
    let after: Vec<_> = (20..24)
        .map(|i| executor.submit(doubler(i)).unwrap())
        .collect();
    for (handle, i) in after.iter().zip(20..) {
        assert_eq!(ok(&executor.get_result(handle)), json!(2 * i));
    }
    executor.shutdown().unwrap();
    assert_eq!(our_containers(), Vec::<String>::new());
}

/// A tmpfs too small for anything, mounted over a fresh dir; unmounted on drop.
struct FullFilesystem {
    dir: tempfile::TempDir,
    filler: PathBuf,
}

impl FullFilesystem {
    fn mount() -> FullFilesystem {
        let dir = tempfile::tempdir().unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k,nr_inodes=16", "tmpfs"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            mounted.status.success(),
            "mounting a tmpfs needs root: {mounted:?}"
        );
        let full = FullFilesystem {
            filler: dir.path().join("filler"),
            dir,
        };
        full.fill();
        full
    }

    /// Uses up every block and every inode.
    fn fill(&self) {
        std::fs::create_dir(&self.filler).unwrap();
        let block = vec![7u8; 4096];
        let mut file = std::fs::File::create(self.filler.join("blocks")).unwrap();
        while std::io::Write::write_all(&mut file, &block).is_ok() {}
        for i in 0.. {
            if std::fs::File::create(self.filler.join(i.to_string())).is_err() {
                break;
            }
        }
        assert!(std::fs::create_dir(self.dir.path().join("probe")).is_err());
    }

    fn free(&self) {
        std::fs::remove_dir_all(&self.filler).unwrap();
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for FullFilesystem {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Runs `batch` over `tasks` with TMPDIR on `tmp`; the result lines by id.
fn batch_with_tmpdir(tasks: &[Value], tmp: &Path) -> Vec<Value> {
    let lines: String = tasks.iter().map(|t| format!("{t}\n")).collect();
    let run = lattice_cli(
        &[
            "batch",
            "-",
            "--concurrency",
            "2",
            "--allow-tiers",
            "wasm,subprocess,seccomp,none",
        ],
        &lines,
        &[("TMPDIR", tmp)],
    );
    let results: Vec<Value> = String::from_utf8_lossy(&run.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), tasks.len(), "{run:?}");
    for (result, task) in results.iter().zip(tasks) {
        assert_eq!(result["id"], task["id"]);
    }
    results
}

#[test]
fn a_full_temp_dir_fails_the_tasks_that_need_one_typed_and_the_rest_run() {
    let _suite = crate::common::suite(module_path!());
    let _serial = serial();
    let full = FullFilesystem::mount();
    let tiers = ["wasm", "subprocess", "seccomp", "none"];
    let tasks: Vec<Value> = (0..8)
        .map(|i| {
            json!({"id": i, "code": "def f(x):\n    return 2 * x\n", "input": i,
                   "tier": tiers[i % tiers.len()]})
        })
        .collect();
    for (result, task) in batch_with_tmpdir(&tasks, full.path()).iter().zip(&tasks) {
        match task["tier"].as_str().unwrap() {
            // The process tiers build a private temp dir per task.
            "subprocess" | "seccomp" => {
                assert_eq!(
                    result["error"]["kind"],
                    json!("sandbox_unavailable"),
                    "{result}"
                );
                let message = result["error"]["message"].as_str().unwrap();
                assert!(
                    message.contains("No space left") && message.contains("TMPDIR"),
                    "{message}"
                );
            }
            // In-process tiers need no temp files.
            _ => assert_eq!(
                result["result"],
                json!(2 * task["input"].as_i64().unwrap()),
                "{result}"
            ),
        }
    }
    // Space again: the same tasks all run.
    full.free();
    for (result, task) in batch_with_tmpdir(&tasks, full.path()).iter().zip(&tasks) {
        assert_eq!(
            result["result"],
            json!(2 * task["input"].as_i64().unwrap()),
            "{result}"
        );
    }
    // Nothing of the tasks is left in the temp dir.
    let left: Vec<_> = std::fs::read_dir(full.path()).unwrap().flatten().collect();
    assert!(left.is_empty(), "{left:?}");
}

/// Ignores SIGTERM, forks a child that ignores it too (where forking is
/// allowed), reports both pids, and sleeps forever.
const STUBBORN: &str = r#"
import os, signal, time
def report():
    print("pid:", os.getpid(), os.readlink("/proc/self/ns/pid"), flush=True)
def f():
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    report()
    try:
        child = os.fork()
    except OSError:
        child = None
    if child == 0:
        report()
        while True:
            time.sleep(1)
    while True:
        time.sleep(1)
"#;

#[test]
fn a_task_that_ignores_sigterm_is_still_stopped_on_every_process_tier() {
    let _suite = crate::common::suite(module_path!());
    let _serial = serial();
    for level in [
        SandboxLevel::Subprocess,
        SandboxLevel::Seccomp,
        SandboxLevel::Docker,
    ] {
        let config = SandboxConfig {
            tier: level,
            timeout: Duration::from_secs(3),
            ..SandboxConfig::default()
        };
        let executor = LocalExecutor::new(Some(2), Some(config));
        // One ends by its timeout, one by a cancel.
        let timed = executor.submit(TaskSubmission::python(STUBBORN)).unwrap();
        let cancelled = executor.submit(TaskSubmission::python(STUBBORN)).unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        let started = Instant::now();
        assert!(executor.cancel(&cancelled));
        let outcomes = [executor.get_result(&timed), executor.get_result(&cancelled)];
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{level}: {:?}",
            started.elapsed()
        );
        assert_eq!(
            outcomes[0].result.as_ref().unwrap_err().kind(),
            ErrorKind::Timeout,
            "{level}"
        );
        assert_eq!(
            outcomes[1].result.as_ref().unwrap_err().kind(),
            ErrorKind::Cancelled,
            "{level}"
        );
        if level == SandboxLevel::Docker {
            assert_eq!(our_containers(), Vec::<String>::new());
        } else {
            for outcome in &outcomes {
                let pids = pids_in(&outcome.stdout);
                assert!(!pids.is_empty(), "{level}: {:?}", outcome.stdout);
                for process in pids {
                    assert!(
                        gone(&process),
                        "{level}: process {process} outlived its task"
                    );
                }
            }
        }
        // And the executor still runs tasks.
        let next = executor.submit(doubler(5)).unwrap();
        assert_eq!(ok(&executor.get_result(&next)), json!(10), "{level}");
        executor.shutdown().unwrap();
    }
}
