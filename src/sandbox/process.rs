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
use super::private_fs::PrivateFs;
use super::{CancelToken, OutputCapture};
use crate::task::TaskError;

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    Exited(i32),
    Signaled(i32),
    /// Killed by us at the wall-clock deadline.
    TimedOut,
    /// Killed by us when the task's processes together used up their CPU time.
    CpuLimit,
    /// Killed by us on cancel.
    Cancelled,
}

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

/// What came back.
#[derive(Debug)]
pub(crate) struct ChildRun {
    pub ending: Ending,
    pub stdout: OutputCapture,
    pub stderr: OutputCapture,
    pub channel: Vec<u8>,
    pub channel_overflow: bool,
    /// CPU time of the task: of its cgroup when it has one, else of the
    /// child and the children it waited for (user + system).
    pub cpu_time: Duration,
    /// The kernel killed a process of the task for going over its memory
    /// limit (its cgroup says so).
    pub oom_killed: bool,
}

const POLL_SLICE: Duration = Duration::from_millis(50);
/// How long to keep reading pipes after the child is gone (a process that
/// escaped the group may hold them open until the uid sweep gets it).
const DRAIN_GRACE: Duration = Duration::from_millis(500);

/// Runs the child described by `spec` to its end. Errors only when it
/// could not be started.
pub(crate) fn run_child(
    mut spec: ChildSpec<'_>,
    cancel: &CancelToken,
) -> Result<ChildRun, TaskError> {
    let channel = if spec.result_channel {
        Some(pipe()?)
    } else {
        None
    };
    let rlimits = std::mem::take(&mut spec.rlimits);
    let mut hook = spec.hook.take();
    let uid = spec.uid;
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
    let spawned = spawn(
        &spec,
        channel,
        &rlimits,
        unshare_flags,
        clone_flags,
        hook.as_mut(),
    )?;
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

    let mut run = ChildRun {
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
    kill_group(pid);
    *alive.lock().unwrap_or_else(|e| e.into_inner()) = false;
    cancel.clear();
    let (status, cpu_time) = reap(pid);
    // After the reap: the leader's zombie would make every kill(-1) of the
    // sweep succeed, so it would never see that none is left.
    if let Some(uid) = uid {
        sweep_uid(uid);
    }
    run.cpu_time = cpu_time;
    if let Some(cgroup) = spec.cgroup.take() {
        cgroup.kill();
        run.cpu_time = run.cpu_time.max(cgroup.cpu_time().unwrap_or_default());
        run.oom_killed = cgroup.oom_killed();
        drop(cgroup); // removes it
    }
    run.ending = match ending {
        Some(ending) => ending,
        None if cancel.is_cancelled() => Ending::Cancelled,
        None => status,
    };
    Ok(run)
}

/// An exec prepared before the child exists: the child allocates nothing.
pub(crate) struct Exec {
    pub program: CString,
    _strings: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
}

// SAFETY: the pointers point into `_strings` and `program`, owned by the
// same value and never changed.
unsafe impl Send for Exec {}
// SAFETY: as for Send: nothing behind the pointers is ever written.
unsafe impl Sync for Exec {}

impl Exec {
    pub(crate) fn new(
        program: &Path,
        args: &[OsString],
        env: &[(OsString, OsString)],
    ) -> Result<Exec, TaskError> {
        let cstring = |bytes: &[u8]| {
            CString::new(bytes).map_err(|_| TaskError::invalid("an argument contains a NUL byte"))
        };
        let program = cstring(program.as_os_str().as_bytes())?;
        let mut strings = vec![program.clone()];
        for arg in args {
            strings.push(cstring(arg.as_bytes())?);
        }
        let arg_count = strings.len();
        for (key, value) in env {
            let mut pair = key.clone();
            pair.push("=");
            pair.push(value);
            strings.push(cstring(pair.as_bytes())?);
        }
        let pointers = |range: std::ops::Range<usize>| {
            let mut list: Vec<*const libc::c_char> =
                strings[range].iter().map(|s| s.as_ptr()).collect();
            list.push(std::ptr::null());
            list
        };
        let argv = pointers(0..arg_count);
        let envp = pointers(arg_count..strings.len());
        Ok(Exec {
            program,
            _strings: strings,
            argv,
            envp,
        })
    }

    /// execve(2) by raw system call; returns only on failure (errno set).
    ///
    /// # Safety
    /// Replaces the calling process's image: for a child about to run it.
    pub(crate) unsafe fn execve(&self) {
        // SAFETY: the pointers point into this value (see the Send note above); replacing the image is what the caller asked for.
        unsafe {
            libc::syscall(
                libc::SYS_execve,
                self.program.as_ptr(),
                self.argv.as_ptr(),
                self.envp.as_ptr(),
            );
        }
    }
}

/// A started child: its pid and our ends of its pipes.
struct Spawned {
    pid: libc::pid_t,
    stdin: OwnedFd,
    stdout: OwnedFd,
    stderr: OwnedFd,
    channel: Option<OwnedFd>,
}

/// The setup steps of a child, in order; a failing one is reported by
/// number on the error pipe.
const STEPS: [&str; 12] = [
    "signals",
    "session",
    "cgroup",
    "namespace",
    "private mounts",
    "rlimits",
    "file descriptors",
    "working directory",
    "privilege drop",
    "no_new_privs",
    "syscall filter",
    "exec",
];
const STEP_HOOK: u32 = STEPS.len() as u32;

/// Everything the child needs, prepared before it exists: it only makes
/// system calls, since it shares this process's memory (see `run_vforked`).
struct ChildPlan<'a> {
    exec: &'a Exec,
    cwd: CString,
    /// Sources of the child's fds 0, 1, 2 and 3 (-1: none), all above 3.
    fds: [RawFd; 4],
    /// Where a failing step writes (step, errno); closed by a good exec.
    error_fd: RawFd,
    rlimits: &'a [Rlimit],
    /// `cgroup.procs` of the task's cgroup, to write "0" into.
    cgroup_fds: Vec<RawFd>,
    unshare_flags: libc::c_int,
    private_fs: Option<&'a PrivateFs>,
    /// The fds above 3 the child still needs after its stdio is set up
    /// (sorted): every other one is closed.
    keep_fds: Vec<RawFd>,
    uid: Option<u32>,
    no_new_privs: bool,
    filter: Option<libc::sock_fprog>,
    hook: Option<&'a mut ChildHook>,
}

/// Starts the child of `spec` with `CLONE_VM | CLONE_VFORK`, like
/// `posix_spawn`: the session, namespace, rlimits, fds, uid and hook are
/// set up in the child by system calls alone, then it execs.
fn spawn(
    spec: &ChildSpec<'_>,
    channel: Option<(OwnedFd, OwnedFd)>,
    rlimits: &[Rlimit],
    unshare_flags: libc::c_int,
    clone_flags: libc::c_int,
    hook: Option<&mut ChildHook>,
) -> Result<Spawned, TaskError> {
    let exec = Exec::new(spec.program, &spec.args, &spec.env)?;
    let cwd = CString::new(spec.cwd.as_os_str().as_bytes())
        .map_err(|_| TaskError::invalid("the working directory contains a NUL byte"))?;
    let (stdin_r, stdin_w) = pipe()?;
    let (stdout_r, stdout_w) = pipe()?;
    let (stderr_r, stderr_w) = pipe()?;
    let (error_r, error_w) = pipe()?;
    let (channel_r, channel_w) = match channel {
        Some((r, w)) => (Some(r), Some(above_stdio(w)?)),
        None => (None, None),
    };
    let (stdin_r, stdout_w, stderr_w, error_w) = (
        above_stdio(stdin_r)?,
        above_stdio(stdout_w)?,
        above_stdio(stderr_w)?,
        above_stdio(error_w)?,
    );
    let mut keep_fds = vec![error_w.as_raw_fd()];
    if let Some(private_fs) = &spec.private_fs {
        keep_fds.extend(private_fs.fds());
    }
    keep_fds.extend(&spec.hook_fds);
    keep_fds.sort_unstable();
    keep_fds.dedup();
    let mut plan = ChildPlan {
        exec: &exec,
        cwd,
        fds: [
            stdin_r.as_raw_fd(),
            stdout_w.as_raw_fd(),
            stderr_w.as_raw_fd(),
            channel_w.as_ref().map_or(-1, |fd| fd.as_raw_fd()),
        ],
        error_fd: error_w.as_raw_fd(),
        rlimits,
        cgroup_fds: spec
            .cgroup
            .as_ref()
            .map(TaskCgroup::join_fds)
            .unwrap_or_default(),
        unshare_flags,
        private_fs: spec.private_fs.as_ref(),
        keep_fds,
        uid: spec.uid,
        no_new_privs: spec.no_new_privs,
        filter: spec.filter.as_ref().map(|program| libc::sock_fprog {
            len: program.len() as libc::c_ushort,
            filter: program.as_ptr() as *mut libc::sock_filter,
        }),
        hook,
    };
    // SAFETY: `child_main` makes system calls only (the hook's promise too)
    // and ends in exec or exit; `plan` outlives the clone.
    let pid = unsafe {
        vfork_clone(
            child_main,
            &mut plan as *mut ChildPlan as *mut libc::c_void,
            clone_flags,
        )
    }
    .map_err(|e| TaskError::internal(format!("can't start {}: {e}", spec.program.display())))?;
    drop((stdin_r, stdout_w, stderr_w, channel_w, error_w));
    // The child has exec'd (the pipe closed on exec) or failed and exited.
    let mut report = [0u8; 8];
    let mut got = 0;
    while got < report.len() {
        // SAFETY: reading into our own buffer.
        let n = unsafe {
            libc::read(
                error_r.as_raw_fd(),
                report[got..].as_mut_ptr() as *mut libc::c_void,
                report.len() - got,
            )
        };
        if n > 0 {
            got += n as usize;
        } else if n == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            break;
        }
    }
    if got == report.len() {
        let _ = reap(pid);
        let step = u32::from_ne_bytes(report[..4].try_into().unwrap());
        let errno = i32::from_ne_bytes(report[4..].try_into().unwrap());
        return Err(spawn_error(
            spec.program,
            step,
            io::Error::from_raw_os_error(errno),
        ));
    }
    Ok(Spawned {
        pid,
        stdin: stdin_w,
        stdout: stdout_r,
        stderr: stderr_r,
        channel: channel_r,
    })
}

/// The child's side of `spawn`: set up, exec; on failure, report the step
/// and errno on the error pipe and exit 127.
extern "C" fn child_main(plan: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `spawn` passes its `ChildPlan`, alive while it waits for us.
    let plan = unsafe { &mut *(plan as *mut ChildPlan) };
    // SAFETY: system calls on memory the plan owns.
    let (step, errno) = unsafe { child_setup(plan) };
    let mut report = [0u8; 8];
    report[..4].copy_from_slice(&step.to_ne_bytes());
    report[4..].copy_from_slice(&errno.to_ne_bytes());
    // SAFETY: raw write and exit of this child.
    unsafe {
        libc::syscall(
            libc::SYS_write,
            plan.error_fd,
            report.as_ptr(),
            report.len(),
        );
        libc::syscall(libc::SYS_exit, 127);
    }
    127
}

/// Sets the child up and execs; returns only on failure: (step, errno).
unsafe fn child_setup(plan: &mut ChildPlan<'_>) -> (u32, i32) {
    // SAFETY: raw system calls only, on memory the plan owns, in the vforked child (the caller's contract).
    unsafe {
        let errno = || *libc::__errno_location();
        macro_rules! step {
            ($n:expr, $call:expr) => {
                if $call < 0 {
                    return ($n, errno());
                }
            };
        }
        // Handlers of ours must not run here, and SIGPIPE (ignored by Rust)
        // must be the default again for the program: like posix_spawn, every
        // caught or ignored signal goes back to its default.
        let default = [0usize; 4]; // the kernel's sigaction: handler SIG_DFL, no flags
        for signal in 1..=64 {
            if signal == libc::SIGKILL || signal == libc::SIGSTOP {
                continue;
            }
            let mut old = [0usize; 4];
            if libc::syscall(
                libc::SYS_rt_sigaction,
                signal,
                std::ptr::null::<usize>(),
                old.as_mut_ptr(),
                8,
            ) == 0
                && old[0] != libc::SIG_DFL
            {
                step!(
                    0,
                    libc::syscall(
                        libc::SYS_rt_sigaction,
                        signal,
                        default.as_ptr(),
                        std::ptr::null_mut::<usize>(),
                        8
                    )
                );
            }
        }
        step!(1, libc::syscall(libc::SYS_setsid));
        // Into the task's cgroup before anything else runs ("0": the writer).
        for &fd in &plan.cgroup_fds {
            step!(2, libc::syscall(libc::SYS_write, fd, c"0".as_ptr(), 1));
        }
        if plan.unshare_flags != 0 {
            step!(3, libc::syscall(libc::SYS_unshare, plan.unshare_flags));
        }
        if let Some(private_fs) = plan.private_fs {
            if let Err(errno) = private_fs.apply() {
                return (4, errno);
            }
        }
        for &(resource, soft, hard) in plan.rlimits {
            let limit = libc::rlimit64 {
                rlim_cur: soft,
                rlim_max: hard,
            };
            step!(
                5,
                libc::syscall(
                    libc::SYS_prlimit64,
                    0,
                    resource,
                    &limit as *const libc::rlimit64,
                    std::ptr::null_mut::<libc::rlimit64>()
                )
            );
        }
        for (target, &source) in plan.fds.iter().enumerate() {
            if source >= 0 {
                step!(
                    6,
                    libc::syscall(libc::SYS_dup3, source, target as libc::c_int, 0)
                );
            }
        }
        // Only the fds the child needs: none of this process's others (which
        // would count against its RLIMIT_NOFILE, and must not reach the task).
        let mut from: libc::c_uint = 4;
        for &keep in &plan.keep_fds {
            let keep = keep as libc::c_uint;
            if keep > from {
                close_range(from, keep - 1);
            }
            from = from.max(keep + 1);
        }
        close_range(from, libc::c_uint::MAX);
        step!(7, libc::syscall(libc::SYS_chdir, plan.cwd.as_ptr()));
        if let Some(uid) = plan.uid {
            step!(
                8,
                libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>())
            );
            step!(8, libc::syscall(libc::SYS_setresgid, uid, uid, uid));
            step!(8, libc::syscall(libc::SYS_setresuid, uid, uid, uid));
        }
        if plan.no_new_privs {
            // No setuid binary gains privileges; and the task dies with the
            // thread that started it, should this process die first (set after
            // the uid change, which clears it).
            step!(
                9,
                libc::syscall(libc::SYS_prctl, libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
            );
            step!(
                9,
                libc::syscall(
                    libc::SYS_prctl,
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL,
                    0,
                    0,
                    0
                )
            );
        }
        if let Some(filter) = &plan.filter {
            step!(
                10,
                libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    0,
                    filter as *const libc::sock_fprog
                )
            );
        }
        // Signals were blocked around the clone; the program starts with none.
        let empty = 0u64;
        step!(
            0,
            libc::syscall(
                libc::SYS_rt_sigprocmask,
                libc::SIG_SETMASK,
                &empty as *const u64,
                std::ptr::null_mut::<u64>(),
                8
            )
        );
        if let Some(hook) = plan.hook.as_mut() {
            // The hook execs the program itself once it is done.
            if let Err(e) = hook() {
                return (STEP_HOOK, e.raw_os_error().unwrap_or(libc::EPERM));
            }
        }
        plan.exec.execve();
        (11, errno())
    }
}

/// close_range(2) of `first..=last` (a no-op before Linux 5.9).
///
/// # Safety
/// System calls only (for the child).
unsafe fn close_range(first: libc::c_uint, last: libc::c_uint) {
    // SAFETY: close_range only closes descriptors of the calling (child) process.
    unsafe {
        libc::syscall(libc::SYS_close_range, first, last, 0u32);
    }
}

/// `fd`, moved to a number above 3, close-on-exec: every fd the child
/// uses after its fds 0–3 are dup'ed onto must be one of these.
pub(crate) fn above_stdio(fd: OwnedFd) -> Result<OwnedFd, TaskError> {
    if fd.as_raw_fd() > 3 {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC returns a fresh fd that we own.
    let moved = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 4) };
    if moved < 0 {
        return Err(TaskError::internal(format!(
            "fcntl: {}",
            io::Error::last_os_error()
        )));
    }
    // SAFETY: as above.
    Ok(unsafe { OwnedFd::from_raw_fd(moved) })
}

struct PumpFds {
    stdin: Option<OwnedFd>,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    channel: Option<OwnedFd>,
    pidfd: Option<OwnedFd>,
}

/// Feeds stdin and drains the outputs until the child is gone and its pipes
/// are closed. Returns the ending if we ended it (timeout, cancel).
#[allow(clippy::too_many_arguments)]
fn pump(
    mut fds: PumpFds,
    input: &[u8],
    channel_cap: usize,
    deadline: Instant,
    pid: libc::pid_t,
    uid: Option<u32>,
    cpu_watch: Option<(&TaskCgroup, Duration)>,
    cancel: &CancelToken,
    run: &mut ChildRun,
) -> Option<Ending> {
    for fd in [&fds.stdin, &fds.stdout, &fds.stderr, &fds.channel]
        .into_iter()
        .flatten()
    {
        set_nonblocking(fd.as_raw_fd());
    }
    let mut written = 0;
    if input.is_empty() {
        fds.stdin = None;
    }
    let mut ended: Option<Ending> = None;
    let mut leader_gone = false;
    let mut drain_until: Option<Instant> = None;
    let mut buffer = vec![0u8; 64 * 1024];

    loop {
        let now = Instant::now();
        if ended.is_none() {
            if cancel.is_cancelled() {
                ended = Some(Ending::Cancelled);
            } else if now >= deadline {
                ended = Some(Ending::TimedOut);
            } else if cpu_watch
                .is_some_and(|(cgroup, limit)| cgroup.cpu_time().is_some_and(|used| used >= limit))
            {
                ended = Some(Ending::CpuLimit);
            }
            if ended.is_some() {
                kill_group(pid);
                if let Some(uid) = uid {
                    sweep_uid(uid);
                }
                drain_until = Some(now + DRAIN_GRACE);
            }
        }
        if !leader_gone && fds.pidfd.is_none() && leader_exited(pid) {
            leader_gone = true;
            kill_group(pid);
            drain_until.get_or_insert(now + DRAIN_GRACE);
        }
        let outputs_open = fds.stdout.is_some() || fds.stderr.is_some() || fds.channel.is_some();
        if !outputs_open && leader_gone {
            break;
        }
        if drain_until.is_some_and(|until| now >= until) {
            break;
        }

        let mut polled: Vec<libc::pollfd> = Vec::with_capacity(5);
        let mut slots: Vec<u8> = Vec::with_capacity(5);
        let mut add = |fd: &Option<OwnedFd>, events: libc::c_short, slot: u8| {
            if let Some(fd) = fd {
                polled.push(libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events,
                    revents: 0,
                });
                slots.push(slot);
            }
        };
        add(&fds.stdin, libc::POLLOUT, 0);
        add(&fds.stdout, libc::POLLIN, 1);
        add(&fds.stderr, libc::POLLIN, 2);
        add(&fds.channel, libc::POLLIN, 3);
        if !leader_gone {
            add(&fds.pidfd, libc::POLLIN, 4);
        }
        let limit = drain_until.unwrap_or(deadline);
        let wait = limit.saturating_duration_since(now).min(POLL_SLICE);
        // SAFETY: `polled` is a valid array of pollfd for its length.
        let n = unsafe {
            libc::poll(
                polled.as_mut_ptr(),
                polled.len() as libc::nfds_t,
                wait.as_millis().max(1) as libc::c_int,
            )
        };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            break;
        }
        for (p, slot) in polled.iter().zip(slots.iter()) {
            if p.revents == 0 {
                continue;
            }
            match slot {
                0 => {
                    let fd = fds.stdin.as_ref().map(|f| f.as_raw_fd()).unwrap_or(-1);
                    match write_some(fd, &input[written..]) {
                        Ok(n) => {
                            written += n;
                            if written >= input.len() {
                                fds.stdin = None;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(_) => fds.stdin = None,
                    }
                }
                1 => drain(&mut fds.stdout, &mut buffer, |b| run.stdout.push(b)),
                2 => drain(&mut fds.stderr, &mut buffer, |b| run.stderr.push(b)),
                3 => drain(&mut fds.channel, &mut buffer, |b| {
                    let room = channel_cap.saturating_sub(run.channel.len());
                    if b.len() > room {
                        run.channel_overflow = true;
                    }
                    run.channel.extend_from_slice(&b[..room.min(b.len())]);
                }),
                _ => {
                    // The leader exited: end the rest of its group now, then
                    // read what is left in the pipes.
                    leader_gone = true;
                    fds.stdin = None;
                    kill_group(pid);
                    if let Some(uid) = uid {
                        sweep_uid(uid);
                    }
                    drain_until.get_or_insert(Instant::now() + DRAIN_GRACE);
                }
            }
        }
    }
    ended
}

/// Without a pidfd (old kernels), notices the leader's exit by asking.
fn leader_exited(pid: libc::pid_t) -> bool {
    // SAFETY: siginfo_t is plain data; all zeroes is a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid with WNOWAIT only inspects the child; it stays unreaped.
    let r = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    // SAFETY: si_pid is valid to read after waitid filled `info`.
    r == 0 && unsafe { info.si_pid() } == pid
}

fn drain(fd: &mut Option<OwnedFd>, buffer: &mut [u8], mut sink: impl FnMut(&[u8])) {
    let Some(raw) = fd.as_ref().map(|f| f.as_raw_fd()) else {
        return;
    };
    loop {
        // SAFETY: reading into a buffer we own, of its length.
        let n = unsafe { libc::read(raw, buffer.as_mut_ptr().cast(), buffer.len()) };
        if n > 0 {
            sink(&buffer[..n as usize]);
            continue;
        }
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock => return,
                io::ErrorKind::Interrupted => continue,
                _ => {}
            }
        }
        *fd = None;
        return;
    }
}

/// Writes part of `data` to a pipe. SIGPIPE is blocked around the write
/// (and a pending one consumed), so a child that closed its stdin gives
/// EPIPE instead of killing a host that does not ignore SIGPIPE.
fn write_some(fd: RawFd, data: &[u8]) -> io::Result<usize> {
    let chunk = data.len().min(64 * 1024);
    // SAFETY: signal-mask calls on this thread only, and a write from a
    // slice we own.
    unsafe {
        let mut pipe_only: libc::sigset_t = std::mem::zeroed();
        let mut previous: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut pipe_only);
        libc::sigaddset(&mut pipe_only, libc::SIGPIPE);
        libc::pthread_sigmask(libc::SIG_BLOCK, &pipe_only, &mut previous);
        let n = libc::write(fd, data.as_ptr().cast(), chunk);
        let error = io::Error::last_os_error();
        if n < 0 && error.raw_os_error() == Some(libc::EPIPE) {
            let zero = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            libc::sigtimedwait(&pipe_only, std::ptr::null_mut(), &zero);
        }
        libc::pthread_sigmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut());
        if n < 0 {
            Err(error)
        } else {
            Ok(n as usize)
        }
    }
}

fn reap(pid: libc::pid_t) -> (Ending, Duration) {
    let mut status = 0;
    // SAFETY: rusage is plain data filled by the kernel.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: waiting for our own child.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            break;
        }
        if r < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        return (Ending::Exited(-1), Duration::ZERO);
    }
    let cpu = timeval(usage.ru_utime) + timeval(usage.ru_stime);
    let ending = if libc::WIFSIGNALED(status) {
        Ending::Signaled(libc::WTERMSIG(status))
    } else {
        Ending::Exited(libc::WEXITSTATUS(status))
    };
    (ending, cpu)
}

fn timeval(t: libc::timeval) -> Duration {
    Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
}

fn kill_group(pgid: libc::pid_t) {
    // SAFETY: plain kill(2); ESRCH when the group is already gone is fine.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

/// Kills every process of `uid`, including ones that left the task's
/// process group or session. A helper process takes the uid and calls
/// `kill(-1)`, which reaches exactly the processes that uid may signal.
pub(crate) fn sweep_uid(uid: u32) {
    if !is_root() {
        return;
    }
    extern "C" fn sweep(uid: *mut libc::c_void) -> libc::c_int {
        let uid = uid as usize as libc::uid_t;
        // SAFETY: raw system calls only (see `run_vforked`): the credentials
        // change for this helper task alone, never for the process it shares
        // memory with.
        unsafe {
            if libc::syscall(libc::SYS_setresgid, uid, uid, uid) != 0
                || libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0
            {
                libc::syscall(libc::SYS_exit, 1);
            }
            // Repeat while forks race with the kill; ESRCH means none is left.
            for _ in 0..64 {
                if libc::syscall(libc::SYS_kill, -1, libc::SIGKILL) != 0 {
                    break;
                }
            }
            libc::syscall(libc::SYS_exit, 0);
        }
        0
    }
    // SAFETY: `sweep` makes raw system calls only and ends with exit.
    let _ = unsafe { run_vforked(sweep, uid as usize as *mut libc::c_void) };
}

/// Runs `child(arg)` in a new process that shares this one's memory until
/// it exits, as `posix_spawn` does (`CLONE_VM | CLONE_VFORK`), and returns
/// its wait status. Unlike `fork`, nothing of this process is copied, nor
/// torn down after: a fork of a process that hosts wasmtime's pools costs
/// milliseconds on each side.
///
/// # Safety
/// `child` must only make raw system calls (`libc::syscall`, no libc
/// wrappers that touch shared state, no allocation, no locks) and must end
/// with `SYS_exit`: it runs on a small stack of its own, with this thread's
/// TLS, while this thread is suspended. Signals stay blocked in it.
unsafe fn run_vforked(
    child: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    arg: *mut libc::c_void,
) -> io::Result<libc::c_int> {
    // SAFETY: `child` keeps this function's contract (the caller's); waitpid only reaps our own child.
    unsafe {
        let pid = vfork_clone(child, arg, 0)?;
        let mut status = 0;
        while libc::waitpid(pid, &mut status, 0) < 0 {
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(error);
            }
        }
        Ok(status)
    }
}

/// Starts `child(arg)` as `run_vforked` does, with the extra clone `flags`
/// (a new PID namespace), and returns its pid once it has exec'd or exited
/// (this thread is suspended until then).
///
/// # Safety
/// As for `run_vforked`; `child` may also end in a successful exec.
unsafe fn vfork_clone(
    child: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    arg: *mut libc::c_void,
    flags: libc::c_int,
) -> io::Result<libc::pid_t> {
    // SAFETY: `child` keeps run_vforked's contract; the stack outlives the child's use of it (CLONE_VFORK suspends this thread until it execs or exits) and the signal mask is restored.
    unsafe {
        // Room for the seccomp tier's hook (Landlock, filters) too.
        const STACK_BYTES: usize = 256 << 10;
        let mut stack = vec![0u8; STACK_BYTES];
        // The stack grows down from its 16-byte aligned top.
        let top = (stack.as_mut_ptr() as usize + STACK_BYTES) & !15;
        // No handler of ours may run in the helper (on its stack, with its uid).
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let pid = libc::clone(
            child,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | flags | libc::SIGCHLD,
            arg,
        );
        let spawn_error = io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        drop(stack);
        if pid < 0 {
            return Err(spawn_error);
        }
        Ok(pid)
    }
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

fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on an fd we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
}

fn spawn_error(program: &Path, step: u32, error: io::Error) -> TaskError {
    let step = STEPS
        .get(step as usize)
        .copied()
        .unwrap_or("Landlock, seccomp or exec");
    match error.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::EACCES) if step.contains("exec") => {
            TaskError::unavailable(format!(
                "can't run {} (as the task's unprivileged uid when lattice runs as root): {error}",
                program.display()
            ))
        }
        _ => TaskError::unavailable(format!(
            "can't set up the sandbox for {}: the kernel refused its {step} step: {error} (`lattice-wasm doctor` checks what this host supports)",
            program.display()
        )),
    }
}

/// A uid reserved for one running task, so that RLIMIT_NPROC counts only its
/// processes and the sweep reaches only them. The reservation is an flock
/// on a file per uid, so it holds across every lattice process on the host
/// (and ends with the process if it crashes). Given back, after a sweep, on drop.
pub(crate) struct UidLease {
    uid: u32,
    _lock: std::fs::File,
}

/// Task uids: far above any uid a distribution hands out.
const UID_BASE: u32 = 1_900_000_000;
const UID_COUNT: u32 = 4096;
const UID_LOCK_DIR: &str = "/run/lattice-wasm/uids";

impl UidLease {
    pub(crate) fn acquire() -> Result<Self, TaskError> {
        use std::os::unix::fs::DirBuilderExt;
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);

        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(UID_LOCK_DIR)
            .map_err(|e| TaskError::unavailable(format!("can't create {UID_LOCK_DIR}: {e}")))?;
        // Start where this process left off, spread across processes by pid.
        let start = NEXT
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_add(std::process::id() * 97);
        for i in 0..UID_COUNT {
            let uid = UID_BASE + start.wrapping_add(i) % UID_COUNT;
            let lock = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(format!("{UID_LOCK_DIR}/{uid}"))
                .map_err(|e| TaskError::internal(format!("can't open a uid lock: {e}")))?;
            // SAFETY: flock on a file we own.
            if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                NEXT.store(start.wrapping_add(i + 1), Ordering::Relaxed);
                return Ok(UidLease { uid, _lock: lock });
            }
        }
        Err(TaskError::unavailable(format!(
            "more than {UID_COUNT} process-tier tasks are running at once on this host"
        )))
    }

    pub(crate) fn uid(&self) -> u32 {
        self.uid
    }
}

impl Drop for UidLease {
    fn drop(&mut self) {
        // Sweep before the lock (closed after this) frees the uid for others.
        sweep_uid(self.uid);
    }
}
