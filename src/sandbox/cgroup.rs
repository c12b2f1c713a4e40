//! A process-tier task's own control group, so that its limits hold for all
//! of its processes together rather than for each one: memory (its tmpfs
//! pages included) and processes are capped by the kernel, and the CPU time
//! and out-of-memory kills of the whole task are read from the cgroup. What
//! the host reads here is what it reports (`timeout`, `memory_limit`): the
//! task can't write it.
//!
//! cgroup v2 is used when its unified hierarchy has the memory and pids
//! controllers; otherwise the v1 `memory`, `pids` and `cpuacct` hierarchies
//! (hosts that still mount them, like this project's test machines). The
//! task's groups live below `lattice-wasm` in each hierarchy — below this
//! process's own group on v1, so the caller's own limits still cover the
//! tasks — and are removed after the task; groups left by a process that
//! died are removed by the next one. Without either (no root, no memory
//! controller), process tiers fall back to per-process rlimits.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{process, OnceOk};
use crate::task::TaskError;

/// The directory (in each hierarchy) that holds the tasks' groups.
const BASE: &str = "lattice-wasm";

/// Where this host keeps the controllers a task group needs.
#[derive(Debug, Clone)]
enum Layout {
    /// One unified hierarchy: the tasks' base directory in it.
    V2 { base: PathBuf },
    /// Separate hierarchies: the tasks' base directory in each.
    V1 {
        memory: PathBuf,
        pids: PathBuf,
        cpuacct: PathBuf,
    },
}

impl Layout {
    fn bases(&self) -> Vec<&Path> {
        match self {
            Layout::V2 { base } => vec![base],
            Layout::V1 {
                memory,
                pids,
                cpuacct,
            } => vec![memory, pids, cpuacct],
        }
    }
}

/// The layout, found once it works (a failure, perhaps transient, is
/// looked into again by the next task).
fn layout() -> Option<&'static Layout> {
    static LAYOUT: OnceOk<Layout> = OnceOk::new();
    if !process::is_root() {
        return None;
    }
    LAYOUT
        .get_or_try_init(|| {
            let layout = find_layout().ok_or(())?;
            remove_orphans(&layout);
            Ok::<_, ()>(layout)
        })
        .ok()
}

/// One line of /proc/self/mountinfo: (mount point, mount root, fs type,
/// super options).
fn cgroup_mounts() -> Vec<(PathBuf, String, String, String)> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fields: Vec<&str> = left.split(' ').collect();
            let mut right = right.split(' ');
            let fs_type = right.next()?;
            let _source = right.next()?;
            let options = right.next().unwrap_or("");
            if fs_type != "cgroup" && fs_type != "cgroup2" {
                return None;
            }
            Some((
                PathBuf::from(unescape(fields.get(4)?)),
                unescape(fields.get(3)?),
                fs_type.to_string(),
                options.to_string(),
            ))
        })
        .collect()
}

/// mountinfo escapes spaces and the like as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(code) = u8::from_str_radix(digits, 8) {
                out.push(code);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// This process's group in each hierarchy, from /proc/self/cgroup: (the
/// controllers, or "" for v2; the path).
fn own_groups() -> Vec<(String, String)> {
    let Ok(text) = std::fs::read_to_string("/proc/self/cgroup") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let _id = parts.next()?;
            let controllers = parts.next()?;
            let path = parts.next()?;
            Some((controllers.to_string(), path.to_string()))
        })
        .collect()
}

/// `own` (a group path) as a directory under a mount of root `root` at `mount`.
fn group_dir(mount: &Path, root: &str, own: &str) -> PathBuf {
    let relative = own
        .strip_prefix(root)
        .unwrap_or(own)
        .trim_start_matches('/');
    mount.join(relative)
}

fn find_layout() -> Option<Layout> {
    let mounts = cgroup_mounts();
    let own = own_groups();
    // v2, if its unified hierarchy has the controllers: the base is made
    // at the hierarchy's root (the only group that may hold processes and
    // hand controllers down at once).
    if let Some((mount, _, _, _)) = mounts.iter().find(|(_, _, fs, _)| fs == "cgroup2") {
        let controllers =
            std::fs::read_to_string(mount.join("cgroup.controllers")).unwrap_or_default();
        let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
        if has("memory") && has("pids") {
            let base = mount.join(BASE);
            let enable = "+memory +pids";
            let ready = std::fs::write(mount.join("cgroup.subtree_control"), enable)
                .and_then(|()| make_dir(&base))
                .and_then(|()| std::fs::write(base.join("cgroup.subtree_control"), enable));
            if ready.is_ok() {
                return Some(Layout::V2 { base });
            }
        }
    }
    // v1: each controller's own hierarchy, below this process's group in it.
    let v1_base = |controller: &str| -> Option<PathBuf> {
        let (mount, root, _, _) = mounts.iter().find(|(_, _, fs, options)| {
            fs == "cgroup" && options.split(',').any(|o| o == controller)
        })?;
        let (_, path) = own
            .iter()
            .find(|(controllers, _)| controllers.split(',').any(|c| c == controller))?;
        let base = group_dir(mount, root, path).join(BASE);
        make_dir(&base).ok()?;
        Some(base)
    };
    Some(Layout::V1 {
        memory: v1_base("memory")?,
        pids: v1_base("pids")?,
        cpuacct: v1_base("cpuacct")?,
    })
}

fn make_dir(path: &Path) -> io::Result<()> {
    match std::fs::create_dir(path) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}

/// The prefix of a task group's name; the pid of the process that made it follows.
const GROUP_PREFIX: &str = "task-";

/// Removes the groups of processes that are gone (killed mid-task):
/// their processes are killed first.
fn remove_orphans(layout: &Layout) {
    for base in layout.bases() {
        let Ok(entries) = std::fs::read_dir(base) else {
            continue;
        };
        for entry in entries.flatten() {
            let owner = entry
                .file_name()
                .to_str()
                .and_then(|name| name.strip_prefix(GROUP_PREFIX))
                .and_then(|rest| rest.split_once('-'))
                .and_then(|(pid, _)| pid.parse::<libc::pid_t>().ok());
            if owner.is_some_and(|pid| !process_exists(pid)) {
                kill_members(&entry.path());
                remove_dir(&entry.path());
            }
        }
    }
}

fn process_exists(pid: libc::pid_t) -> bool {
    // SAFETY: signal 0 only asks whether the process exists.
    unsafe { libc::kill(pid, 0) == 0 || *libc::__errno_location() == libc::EPERM }
}

/// One task's group (a directory per hierarchy), removed on drop with
/// every process still in it.
pub(crate) struct TaskCgroup {
    layout: &'static Layout,
    dirs: Vec<PathBuf>,
    /// `cgroup.procs` of each directory, for the child to write "0" into
    /// (which moves the writer itself).
    procs: Vec<OwnedFd>,
}

impl TaskCgroup {
    /// A fresh group that caps memory at `memory_bytes` (no swap) and the
    /// task at `max_tasks` processes and threads; None where this host has
    /// no usable cgroups.
    pub(crate) fn create(
        memory_bytes: u64,
        max_tasks: u64,
    ) -> Result<Option<TaskCgroup>, TaskError> {
        let Some(layout) = layout() else {
            return Ok(None);
        };
        static COUNT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "{GROUP_PREFIX}{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        );
        let mut group = TaskCgroup {
            layout,
            dirs: Vec::new(),
            procs: Vec::new(),
        };
        let setup = |group: &mut TaskCgroup| -> io::Result<()> {
            for base in layout.bases() {
                let dir = base.join(&name);
                std::fs::create_dir(&dir)?;
                group.dirs.push(dir);
            }
            let memory = memory_bytes.to_string();
            let tasks = max_tasks.to_string();
            match layout {
                Layout::V2 { .. } => {
                    let dir = &group.dirs[0];
                    std::fs::write(dir.join("memory.max"), &memory)?;
                    let _ = std::fs::write(dir.join("memory.swap.max"), "0");
                    // An out-of-memory kill ends the whole task, not one process.
                    let _ = std::fs::write(dir.join("memory.oom.group"), "1");
                    std::fs::write(dir.join("pids.max"), &tasks)?;
                }
                Layout::V1 { .. } => {
                    let (memory_dir, pids_dir) = (&group.dirs[0], &group.dirs[1]);
                    std::fs::write(memory_dir.join("memory.limit_in_bytes"), &memory)?;
                    // Without swap accounting these files are missing: fine.
                    let _ = std::fs::write(memory_dir.join("memory.memsw.limit_in_bytes"), &memory);
                    let _ = std::fs::write(memory_dir.join("memory.swappiness"), "0");
                    std::fs::write(pids_dir.join("pids.max"), &tasks)?;
                }
            }
            for dir in &group.dirs {
                let procs = std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_CLOEXEC)
                    .open(dir.join("cgroup.procs"))?;
                group.procs.push(
                    process::above_stdio(procs.into())
                        .map_err(|e| io::Error::other(e.to_string()))?,
                );
            }
            Ok(())
        };
        setup(&mut group).map_err(|e| {
            TaskError::unavailable(format!(
                "can't set up the task's cgroup under {}: {e}",
                layout.bases()[0].display()
            ))
        })?;
        Ok(Some(group))
    }

    /// The descriptors the child writes "0" into to join the group.
    pub(crate) fn join_fds(&self) -> Vec<RawFd> {
        self.procs.iter().map(AsRawFd::as_raw_fd).collect()
    }

    fn file(&self, which: Controller, name: &str) -> PathBuf {
        let index = match (self.layout, which) {
            (Layout::V2 { .. }, _) => 0,
            (Layout::V1 { .. }, Controller::Memory) => 0,
            (Layout::V1 { .. }, Controller::Pids) => 1,
            (Layout::V1 { .. }, Controller::Cpu) => 2,
        };
        self.dirs[index].join(name)
    }

    /// The CPU time every process of the task used, together.
    pub(crate) fn cpu_time(&self) -> Option<Duration> {
        match self.layout {
            Layout::V2 { .. } => {
                let stat = std::fs::read_to_string(self.file(Controller::Cpu, "cpu.stat")).ok()?;
                counter(&stat, "usage_usec").map(Duration::from_micros)
            }
            Layout::V1 { .. } => {
                std::fs::read_to_string(self.file(Controller::Cpu, "cpuacct.usage"))
                    .ok()?
                    .trim()
                    .parse()
                    .ok()
                    .map(Duration::from_nanos)
            }
        }
    }

    /// True if the kernel killed a process of the task for going over
    /// the memory limit.
    pub(crate) fn oom_killed(&self) -> bool {
        let (file, key) = match self.layout {
            Layout::V2 { .. } => ("memory.events", "oom_kill"),
            Layout::V1 { .. } => ("memory.oom_control", "oom_kill"),
        };
        std::fs::read_to_string(self.file(Controller::Memory, file))
            .ok()
            .and_then(|text| counter(&text, key))
            .is_some_and(|n| n > 0)
    }

    /// Kills every process in the group.
    /// Freezes (or thaws) every process of the group (cgroup v2; nothing
    /// on v1, where the freezer is not set up).
    pub(crate) fn freeze(&self, frozen: bool) {
        if let Layout::V2 { .. } = self.layout {
            let _ = std::fs::write(
                self.dirs[0].join("cgroup.freeze"),
                if frozen { "1" } else { "0" },
            );
        }
    }

    pub(crate) fn kill(&self) {
        if let Layout::V2 { .. } = self.layout {
            if std::fs::write(self.dirs[0].join("cgroup.kill"), "1").is_ok() {
                return;
            }
        }
        kill_members(&self.file(Controller::Pids, ""));
    }
}

#[derive(Clone, Copy)]
enum Controller {
    Memory,
    Pids,
    Cpu,
}

impl Drop for TaskCgroup {
    fn drop(&mut self) {
        self.procs.clear();
        self.kill();
        for dir in &self.dirs {
            remove_dir(dir);
        }
    }
}

/// The value of `key` in a flat-keyed file (`key value` lines).
fn counter(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (name, value) = line.split_once(' ')?;
        (name == key).then(|| value.trim().parse().ok()).flatten()
    })
}

/// SIGKILLs the processes listed in `dir`'s `cgroup.procs` until none is
/// left (they may fork meanwhile; the task's process cap bounds that).
fn kill_members(dir: &Path) {
    let procs = dir.join("cgroup.procs");
    for _ in 0..100 {
        let Ok(text) = std::fs::read_to_string(&procs) else {
            return;
        };
        let pids: Vec<libc::pid_t> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            // SAFETY: plain kill(2) of a process in the task's group.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Removes an emptied group; its last processes may take a moment to
/// leave it.
fn remove_dir(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match std::fs::remove_dir(dir) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                kill_members(dir);
                std::thread::sleep(Duration::from_millis(2));
            }
            _ => return,
        }
    }
}

/// The CPU-time counter of another's cgroup (a container's, for the docker
/// tier), read from the cgroup files of this host.
#[cfg(feature = "docker")]
pub(crate) struct CpuCounter {
    /// `cpuacct.usage` (ns) or `cpu.stat` (`usage_usec`).
    file: PathBuf,
}

#[cfg(feature = "docker")]
impl CpuCounter {
    /// The counter of the cgroup process `pid` is in now, if its path
    /// names `name` (a container's id: a process that has already exited
    /// shows as in the root group, whose counter is the whole machine's).
    pub(super) fn of_pid(pid: u32, name: &str) -> Option<CpuCounter> {
        let groups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let mounts = cgroup_mounts();
        for line in groups.lines() {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            if controllers.split(',').any(|c| c == "cpuacct") && path.contains(name) {
                let (mount, root, _, _) = mounts.iter().find(|(_, _, fs, options)| {
                    fs == "cgroup" && options.split(',').any(|o| o == "cpuacct")
                })?;
                return Some(CpuCounter {
                    file: group_dir(mount, root, path).join("cpuacct.usage"),
                });
            }
        }
        let path = groups.lines().find_map(|line| line.strip_prefix("0::"))?;
        if !path.contains(name) {
            return None;
        }
        let (mount, root, _, _) = mounts.iter().find(|(_, _, fs, _)| fs == "cgroup2")?;
        Some(CpuCounter {
            file: group_dir(mount, root, path).join("cpu.stat"),
        })
    }

    /// The CPU time the group used so far; None once it is gone.
    pub(super) fn read(&self) -> Option<Duration> {
        let text = std::fs::read_to_string(&self.file).ok()?;
        if self.file.ends_with("cpu.stat") {
            counter(&text, "usage_usec").map(Duration::from_micros)
        } else {
            text.trim().parse().ok().map(Duration::from_nanos)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_escapes() {
        assert_eq!(counter("oom 0\noom_kill 3\n", "oom_kill"), Some(3));
        assert_eq!(counter("usage_usec 12\n", "user_usec"), None);
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(
            group_dir(Path::new("/m"), "/", "/x/y"),
            PathBuf::from("/m/x/y")
        );
        assert_eq!(
            group_dir(Path::new("/m"), "/x", "/x/y"),
            PathBuf::from("/m/y")
        );
    }
}
