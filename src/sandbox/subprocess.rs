//! The subprocess tier: host CPython (`-I`, by absolute path) in a child of
//! its own session, under rlimits, as a dedicated unprivileged uid when we
//! are root, with a clean environment, an empty network namespace unless
//! the network is enabled, and a private temp dir as cwd.
//!
//! The process machinery (spawn, pipes, timeout, cleanup) is in
//! [`super::process`]; this module decides what the child gets and what its
//! ending means. The none and seccomp tiers reuse both through
//! [`ProcessTier`].

use std::ffi::OsString;
use std::os::fd::RawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use std::collections::BTreeMap;
use std::sync::Arc;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

use super::cgroup::TaskCgroup;
use super::driver::DRIVER;
use super::host_calls::HostCalls;
use super::outcome::{command_outcome, envelope_cap, python_outcome};
use super::private_fs::PrivateFs;
use super::process::{self, ChildHook, ChildSpec, UidLease};
use super::session::{SessionRun, SessionState, TierSession};
use super::{
    reject_unsupported, CancelToken, Job, OnceOk, Sandbox, SandboxConfig, SandboxLevel,
    SandboxOutput, Work,
};
use crate::task::TaskError;

/// Open files per task.
const MAX_OPEN_FILES: u64 = 256;
/// Largest file a task may write.
const MAX_FILE_BYTES: u64 = 64 << 20;
/// Processes and threads per task (needs the dedicated uid to count).
const MAX_PROCESSES: u64 = 64;

pub(crate) struct SubprocessSandbox;

impl Sandbox for SubprocessSandbox {
    fn check_available(&self) -> Result<(), TaskError> {
        python_interpreter().map(|_| ())
    }

    fn check_config(&self, config: &SandboxConfig) -> Result<(), TaskError> {
        reject_unsupported(SandboxLevel::Subprocess, config, false, false)
    }

    fn open_session(&self, config: &SandboxConfig) -> Result<Box<dyn TierSession>, TaskError> {
        ProcessTier::isolated(SandboxLevel::Subprocess).open_session(config)
    }

    fn run(&self, job: &Job<'_>, cancel: &CancelToken) -> SandboxOutput {
        ProcessTier::isolated(SandboxLevel::Subprocess).run(job, cancel)
    }
}

/// Builds a tier's child hook for one task, with the descriptors it uses
/// in the child.
pub(crate) type MakeHook =
    fn(&SandboxConfig, &ExecPlan<'_>) -> Result<(ChildHook, Vec<RawFd>), TaskError>;

/// What the child will exec, and where: for hooks that exec it themselves.
pub(crate) struct ExecPlan<'a> {
    pub program: &'a Path,
    pub args: &'a [OsString],
    pub env: &'a [(OsString, OsString)],
    /// The task's private temp dir (its cwd, HOME and TMPDIR).
    pub workdir: &'a Path,
}

/// How a process tier sets up its child.
pub(crate) struct ProcessTier {
    pub level: SandboxLevel,
    /// Limits, dedicated uid, clean environment, network namespace.
    pub isolate: bool,
    /// Extra setup in the child just before exec (seccomp, Landlock).
    pub hook: Option<MakeHook>,
    /// With a uid of its own, the host's tree is read-only to the task
    /// (false where the hook confines writes itself: Landlock's refusals
    /// stay `PermissionError`s rather than read-only-filesystem errors).
    pub read_only_root: bool,
}

impl ProcessTier {
    pub(super) fn isolated(level: SandboxLevel) -> Self {
        ProcessTier {
            level,
            isolate: true,
            hook: None,
            read_only_root: true,
        }
    }

    pub(super) fn run(&self, job: &Job<'_>, cancel: &CancelToken) -> SandboxOutput {
        match self.try_run(job, cancel) {
            Ok(output) => output,
            Err(error) => SandboxOutput::error(error),
        }
    }

    fn try_run(&self, job: &Job<'_>, cancel: &CancelToken) -> Result<SandboxOutput, TaskError> {
        let config = job.config;
        let (program, args, stdin, python) = match &job.work {
            Work::Python { request, .. } => {
                let python = python_interpreter()?;
                let args = vec!["-I".into(), "-c".into(), DRIVER.into()];
                (python.to_path_buf(), args, request.as_bytes(), true)
            }
            Work::Command { argv, input } => {
                let program = resolve_program(&argv[0])?;
                let args = argv[1..].iter().map(OsString::from).collect();
                (program, args, input.as_bytes(), false)
            }
            Work::Wasm { .. } => {
                return Err(TaskError::invalid(format!(
                    "the {} tier runs Python code and commands; run Wasm payloads on the wasm tier",
                    self.level
                )))
            }
        };
        let mut child = self.prepare(config, program, args, job.gpu_id, false)?;
        let mut spec = child.spec(config, stdin);
        spec.result_channel = python;
        if !python {
            spec.output_cap = config.max_result_bytes;
        }
        let run = process::run_child(spec, cancel)?;
        child.finish()?;
        Ok(if python {
            python_outcome(run, config)
        } else {
            command_outcome(run, config)
        })
    }

    /// A session: the driver in session mode, in a child set up as a
    /// task's, living until the session closes.
    pub(super) fn open_session(
        &self,
        config: &SandboxConfig,
    ) -> Result<Box<dyn TierSession>, TaskError> {
        let python = python_interpreter()?.to_path_buf();
        let args = vec!["-I".into(), "-c".into(), DRIVER.into(), "--session".into()];
        let mut child = self.prepare(config, python, args, None, true)?;
        let config = config.clone();
        // Started from a thread that outlives the session: the child's
        // parent-death signal fires when the thread that made it exits.
        let (process, child) = process::on_parent_thread(move || {
            process::SessionProcess::start(child.spec(&config, &[])).map(|process| (process, child))
        })??;
        Ok(Box::new(ProcessSession {
            process: Some(process),
            child: Some(child),
        }))
    }

    /// Everything a child of this tier gets, ready to start: uid, temp
    /// dir, environment, hook, private filesystem, cgroup, filter, rlimits.
    /// `session`: the child lives for many calls (its CPU time is limited
    /// per call by the host, not for its life by an rlimit).
    fn prepare(
        &self,
        config: &SandboxConfig,
        program: PathBuf,
        args: Vec<OsString>,
        gpu_id: Option<u32>,
        session: bool,
    ) -> Result<PreparedChild, TaskError> {
        let lease = if self.isolate && process::is_root() {
            Some(UidLease::acquire()?)
        } else {
            None
        };
        let uid = lease.as_ref().map(UidLease::uid);
        let workdir = private_dir(uid)?;
        let mut env: Vec<(OsString, OsString)> = if self.isolate {
            vec![("LANG".into(), "C.UTF-8".into())]
        } else {
            std::env::vars_os().collect()
        };
        env.retain(|(k, _)| k != "HOME" && k != "TMPDIR" && k != "CUDA_VISIBLE_DEVICES");
        env.push(("HOME".into(), workdir.path().into()));
        env.push(("TMPDIR".into(), workdir.path().into()));
        // The task's GPU, else the devices this process was given (a Ray
        // worker's, "" when it has none): never more than ours.
        let gpus = gpu_id
            .map(|gpu| OsString::from(gpu.to_string()))
            .or_else(|| std::env::var_os("CUDA_VISIBLE_DEVICES"));
        if let Some(gpus) = gpus {
            env.push(("CUDA_VISIBLE_DEVICES".into(), gpus));
        }

        let (hook, hook_fds) = match self.hook {
            Some(make) => {
                let (hook, fds) = make(
                    config,
                    &ExecPlan {
                        program: &program,
                        args: &args,
                        env: &env,
                        workdir: workdir.path(),
                    },
                )?;
                (Some(hook), fds)
            }
            None => (None, Vec::new()),
        };
        // With a uid of its own (we are root), the task also gets its own
        // view of the filesystem (see private_fs), with a /proc of its own
        // PID namespace.
        let private_fs = match uid {
            Some(uid) => {
                let mut keep = vec![program.as_path()];
                keep.extend(config.mounts.iter().map(|mount| mount.host.as_path()));
                Some(PrivateFs::plan(
                    workdir.path(),
                    uid,
                    &keep,
                    self.read_only_root,
                    true,
                )?)
            }
            None => None,
        };
        // Limits for all of the task's processes together, where the host
        // has cgroups (see cgroup.rs); else the rlimits alone, per process.
        let memory_bytes = config.max_memory_mb.saturating_mul(1 << 20);
        let cgroup = match uid {
            Some(_) => TaskCgroup::create(memory_bytes, MAX_PROCESSES)?,
            None => None,
        };
        // The subprocess tier without the network: no socket but its own
        // namespace's (no host unix socket by path, no vsock).
        let filter = (self.level == SandboxLevel::Subprocess && !config.network)
            .then(socket_filter)
            .transpose()?;
        let mut rlimits = rlimits(config, self.isolate, uid.is_some(), cgroup.is_some());
        if session {
            rlimits.retain(|(resource, _, _)| *resource != libc::RLIMIT_CPU);
        }
        Ok(PreparedChild {
            program,
            args,
            env,
            workdir: Some(workdir),
            lease,
            uid,
            hook,
            hook_fds,
            private_fs,
            cgroup,
            filter,
            rlimits,
            isolate: self.isolate,
        })
    }
}

/// A child of a process tier, prepared (see [`ProcessTier::prepare`]); it
/// holds the task's uid and temp dir until [`PreparedChild::finish`].
pub(crate) struct PreparedChild {
    program: PathBuf,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    workdir: Option<tempfile::TempDir>,
    lease: Option<UidLease>,
    uid: Option<u32>,
    hook: Option<ChildHook>,
    hook_fds: Vec<RawFd>,
    private_fs: Option<PrivateFs>,
    cgroup: Option<TaskCgroup>,
    filter: Option<Arc<BpfProgram>>,
    rlimits: Vec<process::Rlimit>,
    isolate: bool,
}

impl PreparedChild {
    /// The child's spec, fed `stdin`, with a result channel (Python).
    fn spec<'a>(&'a mut self, config: &SandboxConfig, stdin: &'a [u8]) -> ChildSpec<'a> {
        ChildSpec {
            program: &self.program,
            args: self.args.clone(),
            env: self.env.clone(),
            cwd: self
                .workdir
                .as_ref()
                .map_or(Path::new("/"), tempfile::TempDir::path),
            stdin,
            result_channel: true,
            rlimits: std::mem::take(&mut self.rlimits),
            uid: self.uid,
            new_netns: self.isolate && !config.network,
            own_namespaces: self.isolate,
            private_fs: self.private_fs.take(),
            cgroup: self.cgroup.take(),
            max_cpu_time: config.max_cpu_time,
            no_new_privs: self.isolate,
            filter: self.filter.take(),
            timeout: config.timeout,
            output_cap: config.max_output_bytes,
            channel_cap: envelope_cap(config),
            hook: self.hook.take(),
            hook_fds: std::mem::take(&mut self.hook_fds),
        }
    }

    /// Gives back the uid and removes the temp dir (the child is gone).
    fn finish(&mut self) -> Result<(), TaskError> {
        self.lease = None;
        // The task's files go with it; a failure here would leak a temp dir.
        match self.workdir.take() {
            Some(workdir) => workdir
                .close()
                .map_err(|e| TaskError::internal(format!("can't remove the task's temp dir: {e}"))),
            None => Ok(()),
        }
    }
}

impl Drop for PreparedChild {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// A session on a process tier: its driver process, then its uid and
/// temp dir, freed in that order when it closes.
struct ProcessSession {
    process: Option<process::SessionProcess>,
    child: Option<PreparedChild>,
}

impl TierSession for ProcessSession {
    fn run(
        &mut self,
        request: &str,
        config: &SandboxConfig,
        cancel: &CancelToken,
        host: HostCalls,
    ) -> SessionRun {
        match self.process.as_mut() {
            Some(process) => process.call(request.as_bytes(), config, cancel, host),
            None => SessionRun {
                output: SandboxOutput::error(TaskError::internal("the session's process is gone")),
                state: SessionState::Closed,
            },
        }
    }
}

impl Drop for ProcessSession {
    fn drop(&mut self) {
        // The process first: its uid and files are freed after it is gone.
        self.process = None;
        self.child = None;
    }
}

/// The seccomp filter of the subprocess tier without network: `socket`
/// only for the IP families (which reach nothing in the task's empty
/// network namespace) and netlink, no io_uring (which could open sockets
/// around this filter). Everything else is allowed.
fn socket_filter() -> Result<Arc<BpfProgram>, TaskError> {
    static FILTER: OnceOk<Arc<BpfProgram>> = OnceOk::new();
    FILTER.get_or_try_init(make_socket_filter).cloned()
}

fn make_socket_filter() -> Result<Arc<BpfProgram>, TaskError> {
    let internal = |e: &dyn std::fmt::Display| TaskError::internal(format!("seccomp filter: {e}"));
    let other_family = |family: i32| {
        SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, family as u64)
            .map_err(|e| internal(&e))
    };
    let rule = SeccompRule::new(vec![
        other_family(libc::AF_INET)?,
        other_family(libc::AF_INET6)?,
        other_family(libc::AF_NETLINK)?,
    ])
    .map_err(|e| internal(&e))?;
    let rules = BTreeMap::from([
        (libc::SYS_socket, vec![rule]),
        (libc::SYS_io_uring_setup, Vec::new()),
    ]);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EACCES as u32),
        super::seccomp::ARCH,
    )
    .map_err(|e| internal(&e))?;
    let program: BpfProgram = filter.try_into().map_err(|e| internal(&e))?;
    Ok(Arc::new(program))
}

/// The rlimits of a task's processes. With a cgroup the memory limit is
/// the cgroup's (for all processes together, so that an out-of-memory kill
/// is seen by the host); the address-space rlimit is then only a bound at
/// the machine's memory, past which no allocation could be backed anyway.
fn rlimits(
    config: &SandboxConfig,
    isolate: bool,
    own_uid: bool,
    cgroup: bool,
) -> Vec<process::Rlimit> {
    let limit = config.max_memory_mb.saturating_mul(1 << 20);
    let memory = if cgroup {
        limit.max(machine_memory())
    } else {
        limit
    };
    // Per process, SIGXCPU at the soft limit, SIGKILL a second later if it
    // is ignored; with a cgroup, whose CPU time the host watches for the
    // whole task, only a second line a second after it.
    let cpu = config.max_cpu_time.as_secs_f64().ceil().max(1.0) as u64 + u64::from(cgroup);
    let mut limits = vec![
        (libc::RLIMIT_AS, memory, memory),
        (libc::RLIMIT_CPU, cpu, cpu + 1),
        (libc::RLIMIT_CORE, 0, 0),
    ];
    if isolate {
        limits.push((libc::RLIMIT_NOFILE, MAX_OPEN_FILES, MAX_OPEN_FILES));
        limits.push((libc::RLIMIT_FSIZE, MAX_FILE_BYTES, MAX_FILE_BYTES));
        if own_uid {
            // The kernel ignores NPROC for root, and counts per uid: it only
            // means something for a uid of the task's own.
            limits.push((libc::RLIMIT_NPROC, MAX_PROCESSES, MAX_PROCESSES));
        }
    }
    limits
}

/// The prefix of a task's temp dir; the pid of the process that made it follows.
const TEMP_DIR_PREFIX: &str = "lattice-task-";

/// A fresh 0700 temp dir owned by the task's uid, named after this process.
fn private_dir(uid: Option<u32>) -> Result<tempfile::TempDir, TaskError> {
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(remove_orphaned_dirs);
    let dir = tempfile::Builder::new()
        .prefix(&format!("{TEMP_DIR_PREFIX}{}-", std::process::id()))
        .tempdir()
        .map_err(|e| {
            // Typically a full or read-only temp filesystem: the sandbox
            // can't be built until that is fixed.
            TaskError::unavailable(format!(
                "can't create the task's temp dir in {} ({e}): free space there, or set TMPDIR to another directory",
                std::env::temp_dir().display()
            ))
        })?;
    let setup = || -> std::io::Result<()> {
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
        if let Some(uid) = uid {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(uid))?;
        }
        Ok(())
    };
    setup()
        .map_err(|e| TaskError::unavailable(format!("can't prepare the task's temp dir: {e}")))?;
    Ok(dir)
}

/// Removes the temp dirs whose process is gone: it was killed mid-task
/// (as a force-cancelled Ray worker's `exec` is) or crashed before it could.
/// Done by each process before its first task.
fn remove_orphaned_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name
            .to_str()
            .and_then(|name| name.strip_prefix(TEMP_DIR_PREFIX))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<libc::pid_t>().ok());
        let Some(pid) = pid.filter(|&pid| pid > 0) else {
            continue;
        };
        // SAFETY: signal 0 only asks whether the process exists.
        let gone = unsafe { libc::kill(pid, 0) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// RAM and swap of this machine, in bytes (read once).
fn machine_memory() -> u64 {
    static TOTAL: OnceLock<u64> = OnceLock::new();
    *TOTAL.get_or_init(|| super::meminfo(["MemTotal:", "SwapTotal:"]).iter().sum())
}

/// Finds a command's program: a path as given, else on the host's PATH.
fn resolve_program(name: &str) -> Result<PathBuf, TaskError> {
    if name.contains('/') {
        return Ok(PathBuf::from(name));
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
        .ok_or_else(|| TaskError::invalid(format!("command '{name}' is not on PATH")))
}

/// The host CPython that process tiers run: resolved once, by absolute path
/// to the real binary (a pyenv shim is a bash script), and usable by the
/// task's unprivileged uid. `LATTICE_PYTHON` overrides the search.
pub(crate) fn python_interpreter() -> Result<&'static Path, TaskError> {
    static PYTHON: OnceOk<PathBuf> = OnceOk::new();
    PYTHON
        .get_or_try_init(find_python)
        .map(PathBuf::as_path)
        .map_err(TaskError::unavailable)
}

fn find_python() -> Result<PathBuf, String> {
    let mut candidates = Vec::new();
    if let Some(chosen) = std::env::var_os("LATTICE_PYTHON") {
        candidates.push(PathBuf::from(chosen));
    } else {
        if let Ok(path) = resolve_program("python3") {
            candidates.push(path);
        }
        candidates.push("/usr/bin/python3".into());
        candidates.push("/usr/local/bin/python3".into());
    }
    let mut rejected = Vec::new();
    // A binary is taken as it is; a script (a pyenv shim) only if no binary
    // works, since asking it for its interpreter costs a shell and a Python.
    for ask_scripts in [false, true] {
        for candidate in &candidates {
            match real_interpreter(candidate, ask_scripts) {
                Ok(Some(path)) => return Ok(path),
                Ok(None) => {}
                Err(why) => {
                    let why = format!("{}: {why}", candidate.display());
                    if !rejected.contains(&why) {
                        rejected.push(why);
                    }
                }
            }
        }
    }
    Err(format!(
        "no usable CPython 3 for the process tiers ({}); install python3 (apt-get install python3) or set LATTICE_PYTHON to an interpreter every user can execute",
        rejected.join("; ")
    ))
}

/// The real binary behind `candidate`, if it is CPython 3 and the task uid
/// can run it. Ok(None): a script, and `ask_scripts` is false.
fn real_interpreter(candidate: &Path, ask_scripts: bool) -> Result<Option<PathBuf>, String> {
    let real = std::fs::canonicalize(candidate).map_err(|e| e.to_string())?;
    let mut magic = [0u8; 4];
    std::io::Read::read_exact(
        &mut std::fs::File::open(&real).map_err(|e| e.to_string())?,
        &mut magic,
    )
    .map_err(|e| e.to_string())?;
    let real = if &magic == b"\x7fELF" {
        let name = real.file_name().unwrap_or_default().to_string_lossy();
        if !name.starts_with("python3") {
            return Err(format!("{name} is not named like a CPython 3 binary"));
        }
        real
    } else if !ask_scripts {
        return Ok(None);
    } else {
        let output = Command::new(candidate)
            .args([
                "-I",
                "-c",
                "import sys; print(sys.executable); print(sys.version_info[0])",
            ])
            .output()
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&output.stdout);
        let mut lines = text.lines();
        let (Some(executable), Some("3")) = (lines.next(), lines.next()) else {
            return Err("not a working CPython 3".into());
        };
        std::fs::canonicalize(executable).map_err(|e| e.to_string())?
    };
    if process::is_root() && !world_usable(&real) {
        return Err(
            "not usable by an unprivileged uid (a directory on its path is not world-searchable)"
                .into(),
        );
    }
    Ok(Some(real))
}

/// True if others can reach and execute `path` (every parent o+x, file o+x).
fn world_usable(path: &Path) -> bool {
    let mode = |p: &Path| std::fs::metadata(p).map(|m| m.mode()).unwrap_or(0);
    mode(path) & 0o001 != 0 && path.ancestors().skip(1).all(|dir| mode(dir) & 0o001 != 0)
}
