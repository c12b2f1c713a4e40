//! Running one child process to its end, for every tier that uses processes:
//! own session, rlimits, an unprivileged uid, pipes read without deadlock,
//! a wall timeout and cancel that kill the whole group, and a sweep that
//! leaves no process of the task behind.

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use seccompiler::BpfProgram;

use super::cgroup::TaskCgroup;
use super::outcome::{Ended, Ending};
use super::private_fs::PrivateFs;
use super::{CancelToken, OutputCapture};
use crate::task::TaskError;

mod pump;
mod reap;
mod session;
mod spawn;

use pump::*;
use reap::*;
pub(crate) use reap::{sweep_uid, UidLease};
pub(crate) use session::{on_parent_thread, SessionProcess};
use spawn::*;
pub(crate) use spawn::{above_stdio, Exec};

/// One rlimit: resource, soft, hard.
pub(crate) type Rlimit = (libc::__rlimit_resource_t, u64, u64);

/// A hook run in the child after the session, namespaces, rlimits and
/// privilege drop are set up, just before exec (seccomp, Landlock).
pub(crate) type ChildHook = Box<dyn FnMut() -> io::Result<()> + Send + Sync>;

/// What to run and how.
pub(crate) struct ChildSpec<'a> {
    pub program: &'a Path,
    pub args: Vec<OsString>,
    /// The whole environment of the child.
    pub env: Vec<(OsString, OsString)>,
    pub cwd: &'a Path,
    pub stdin: &'a [u8],
    /// Give the child fd 3, a pipe for its result apart from its output.
    pub result_channel: bool,
    pub rlimits: Vec<Rlimit>,
    /// Run as this uid (and gid of the same number), dropping all groups.
    pub uid: Option<u32>,
    /// Give the child an empty network namespace.
    pub new_netns: bool,
    /// Give the child IPC and PID namespaces of its own (the PID namespace
    /// only with `private_fs`, which mounts its /proc).
    pub own_namespaces: bool,
    /// Give the child a mount namespace with its own view of the filesystem.
    pub private_fs: Option<PrivateFs>,
    /// The task's cgroup, which the child joins first; its CPU time is
    /// watched against `max_cpu_time`, and it is removed after the run.
    pub cgroup: Option<TaskCgroup>,
    pub max_cpu_time: Duration,
    /// Set no_new_privs and a parent-death SIGKILL in the child.
    pub no_new_privs: bool,
    /// A seccomp filter the child installs after dropping privileges.
    pub filter: Option<Arc<BpfProgram>>,
    pub timeout: Duration,
    /// Cap on each of stdout and stderr.
    pub output_cap: usize,
    /// Cap on the result channel.
    pub channel_cap: usize,
    pub hook: Option<ChildHook>,
    /// Descriptors the hook uses in the child (kept open for it).
    pub hook_fds: Vec<RawFd>,
}

const POLL_SLICE: Duration = Duration::from_millis(50);
/// How long to keep reading pipes after the child is gone (a process that
/// escaped the group may hold them open until the uid sweep gets it).
const DRAIN_GRACE: Duration = Duration::from_millis(500);

/// Runs the child described by `spec` to its end. Errors only when it
/// could not be started.
pub(crate) fn run_child(mut spec: ChildSpec<'_>, cancel: &CancelToken) -> Result<Ended, TaskError> {
    let spawned = launch(&mut spec)?;
    let uid = spec.uid;
    let pid = spawned.pid;
    let channel_r = spawned.channel;

    // The group may be killed only while its leader is not yet reaped: after
    // that its id can belong to someone else.
    let alive = Arc::new(Mutex::new(true));
    {
        let alive = alive.clone();
        cancel.on_cancel(move || {
            if *alive.lock().unwrap_or_else(|e| e.into_inner()) {
                kill_group(pid);
            }
        });
    }

    let pidfd = pidfd_open(pid);

    let mut run = Ended {
        ending: Ending::Exited(0),
        stdout: OutputCapture::new(spec.output_cap),
        stderr: OutputCapture::new(spec.output_cap),
        channel: Vec::new(),
        channel_overflow: false,
        cpu_time: Duration::ZERO,
        oom_killed: false,
    };
    let cpu_watch = spec
        .cgroup
        .as_ref()
        .map(|cgroup| (cgroup, spec.max_cpu_time));
    let ending = pump(
        PumpFds {
            stdin: Some(spawned.stdin),
            stdout: Some(spawned.stdout),
            stderr: Some(spawned.stderr),
            channel: channel_r,
            pidfd,
        },
        spec.stdin,
        spec.channel_cap,
        Instant::now() + spec.timeout,
        pid,
        uid,
        cpu_watch,
        cancel,
        &mut run,
    );

    // Whatever happened, nothing of the task survives it.
    *alive.lock().unwrap_or_else(|e| e.into_inner()) = false;
    cancel.clear();
    let (status, cpu_time, oom_killed) = end_child(pid, uid, spec.cgroup.take());
    run.cpu_time = cpu_time;
    run.oom_killed = oom_killed;
    run.ending = match ending {
        Some(ending) => ending,
        None if cancel.is_cancelled() => Ending::Cancelled,
        None => status,
    };
    Ok(run)
}

/// Kills what is left of a child's group, reaps the child, sweeps its uid
/// and removes its cgroup: its wait status, CPU time and whether the
/// cgroup saw an out-of-memory kill.
fn end_child(
    pid: libc::pid_t,
    uid: Option<u32>,
    cgroup: Option<TaskCgroup>,
) -> (Ending, Duration, bool) {
    kill_group(pid);
    let (status, mut cpu_time) = reap(pid);
    // After the reap: the leader's zombie would make every kill(-1) of the
    // sweep succeed, so it would never see that none is left.
    if let Some(uid) = uid {
        sweep_uid(uid);
    }
    let mut oom_killed = false;
    if let Some(cgroup) = cgroup {
        cgroup.kill();
        cpu_time = cpu_time.max(cgroup.cpu_time().unwrap_or_default());
        oom_killed = cgroup.oom_killed();
        drop(cgroup); // removes it
    }
    (status, cpu_time, oom_killed)
}

/// Starts the child of `spec` (its rlimits and hook are taken from it).
fn launch(spec: &mut ChildSpec<'_>) -> Result<Spawned, TaskError> {
    let channel = if spec.result_channel {
        Some(pipe()?)
    } else {
        None
    };
    let rlimits = std::mem::take(&mut spec.rlimits);
    let mut hook = spec.hook.take();
    let root = is_root();
    let mut unshare_flags = 0;
    if spec.new_netns {
        unshare_flags |= libc::CLONE_NEWNET;
    }
    if spec.own_namespaces {
        unshare_flags |= libc::CLONE_NEWIPC;
    }
    if unshare_flags != 0 && !root {
        unshare_flags |= libc::CLONE_NEWUSER;
    }
    let mut clone_flags = 0;
    if let Some(private_fs) = &spec.private_fs {
        unshare_flags |= libc::CLONE_NEWNS;
        if spec.own_namespaces && private_fs.mounts_proc() {
            clone_flags |= libc::CLONE_NEWPID;
        }
    }
    spawn(
        spec,
        channel,
        &rlimits,
        unshare_flags,
        clone_flags,
        hook.as_mut(),
    )
}

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid never fails.
    unsafe { libc::geteuid() == 0 }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), TaskError> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills both fds; we own them from here.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(TaskError::internal(format!(
            "pipe: {}",
            io::Error::last_os_error()
        )));
    }
    // SAFETY: both fds are fresh and ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn pidfd_open(pid: libc::pid_t) -> Option<OwnedFd> {
    // SAFETY: pidfd_open returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    // SAFETY: a non-negative return is a fresh fd that we own.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// The descriptors one `poll(2)` waits on, each known to its caller by a slot.
struct PollSet {
    polled: Vec<libc::pollfd>,
    slots: Vec<u8>,
}

impl PollSet {
    fn new() -> PollSet {
        PollSet {
            polled: Vec::with_capacity(5),
            slots: Vec::with_capacity(5),
        }
    }

    /// Waits for `events` on `fd`, if it is still open.
    fn add(&mut self, fd: &Option<OwnedFd>, events: libc::c_short, slot: u8) {
        if let Some(fd) = fd {
            self.polled.push(libc::pollfd {
                fd: fd.as_raw_fd(),
                events,
                revents: 0,
            });
            self.slots.push(slot);
        }
    }

    /// Waits up to `wait` (at least 1 ms): the slots that are ready, none
    /// on a timeout or an interrupted wait.
    fn wait(mut self, wait: Duration) -> io::Result<Vec<u8>> {
        // SAFETY: `polled` is a valid array of pollfd for its length.
        let n = unsafe {
            libc::poll(
                self.polled.as_mut_ptr(),
                self.polled.len() as libc::nfds_t,
                wait.as_millis().max(1) as libc::c_int,
            )
        };
        if n < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                return Ok(Vec::new());
            }
            return Err(error);
        }
        Ok(self
            .polled
            .iter()
            .zip(self.slots)
            .filter(|(p, _)| p.revents != 0)
            .map(|(_, slot)| slot)
            .collect())
    }
}

fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on an fd we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
}
