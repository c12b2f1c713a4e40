//! A Ray head started by the executor when it is given no address, and the
//! means to stop exactly that head.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::dashboard::fetch_nodes;
use super::executor::tail;
use super::RayOptions;
use crate::task::TaskError;

/// The environment variable that marks every process of a head this
/// executor started, so that shutdown stops those and nothing else.
const CLUSTER_MARKER: &str = "LATTICE_RAY_CLUSTER";

/// A head started by this executor: its processes carry
/// `LATTICE_RAY_CLUSTER=<temp dir>` in their environment.
pub(super) struct StartedHead {
    temp_dir: PathBuf,
}

impl StartedHead {
    /// `ray start --head` on this machine, every process of it marked.
    pub(super) fn start(options: &RayOptions) -> Result<StartedHead, TaskError> {
        let temp_dir = tempfile::Builder::new()
            .prefix("lattice-ray-")
            .tempdir_in("/tmp")
            .map_err(|e| TaskError::internal(format!("can't make a temp dir for Ray: {e}")))?
            .keep();
        let head = StartedHead { temp_dir };
        let output = Command::new(&options.python)
            .args([
                "-c",
                "import sys; from ray.scripts.scripts import main; sys.argv[0] = 'ray'; main()",
                "start",
                "--head",
                &format!("--port={}", options.head_port),
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                &format!("--dashboard-port={}", options.head_dashboard_port),
                "--disable-usage-stats",
            ])
            .arg(format!("--temp-dir={}", head.temp_dir.display()))
            .env(CLUSTER_MARKER, &head.temp_dir)
            .env("RAY_USAGE_STATS_ENABLED", "0")
            .stdin(Stdio::null())
            .output();
        let failure = match output {
            Ok(output) if output.status.success() => None,
            Ok(output) => Some(format!(
                "`ray start --head` failed ({}): {}",
                output.status,
                tail(&String::from_utf8_lossy(&output.stderr), 2000)
            )),
            Err(e) => Some(format!(
                "can't run `{}` to start a Ray head ({e})",
                options.python.display()
            )),
        };
        if let Some(message) = failure {
            head.stop();
            return Err(TaskError::unavailable(format!(
                "{message}; install ray with `pip install \"ray[default]\"` and point RayOptions::python \
                 (--ray-python) at that Python, or give the address of a running cluster"
            )));
        }
        // `ray start` returns before the dashboard answers.
        let dashboard = options
            .dashboard
            .clone()
            .unwrap_or_else(|| format!("http://127.0.0.1:{}", options.head_dashboard_port));
        let deadline = Instant::now() + Duration::from_secs(60);
        while fetch_nodes(&dashboard).map_or(true, |nodes| nodes.is_empty()) {
            if Instant::now() > deadline {
                head.stop();
                return Err(TaskError::unavailable(format!(
                    "the Ray head started but its dashboard at {dashboard} did not answer within 60 s"
                )));
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        Ok(head)
    }

    /// Stops every process of this head (and only those), then removes its
    /// temp dir.
    pub(super) fn stop(self) {
        let marker = format!("{CLUSTER_MARKER}={}", self.temp_dir.display());
        let pids = marked_processes(marker.as_bytes());
        signal_all(&pids, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && pids.iter().any(|&pid| alive(pid)) {
            std::thread::sleep(Duration::from_millis(100));
        }
        // Whatever is left, and anything spawned meanwhile.
        let mut left = marked_processes(marker.as_bytes());
        left.extend(pids.iter().filter(|&&pid| alive(pid)));
        signal_all(&left, libc::SIGKILL);
        let _ = std::fs::remove_dir_all(&self.temp_dir);
    }
}

/// Processes whose environment holds `marker`, and all their descendants
/// (Ray's renamed processes overwrite their environment, but their parents
/// carry it).
fn marked_processes(marker: &[u8]) -> Vec<i32> {
    let mut parents: HashMap<i32, i32> = HashMap::new();
    let mut keep: Vec<i32> = Vec::new();
    let me = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return keep;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            if let Some(ppid) = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse().ok())
            {
                parents.insert(pid, ppid);
            }
        }
        if let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) {
            if environ.split(|&b| b == 0).any(|var| var == marker) {
                keep.push(pid);
            }
        }
    }
    loop {
        let more: Vec<i32> = parents
            .iter()
            .filter(|(pid, parent)| !keep.contains(pid) && keep.contains(parent))
            .map(|(pid, _)| *pid)
            .collect();
        if more.is_empty() {
            return keep;
        }
        keep.extend(more);
    }
}

fn signal_all(pids: &[i32], signal: libc::c_int) {
    for &pid in pids {
        // SAFETY: kill(2) with a pid we found in /proc; no memory involved.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

fn alive(pid: i32) -> bool {
    // A zombie is as good as gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}
