//! Running one child process to its end, for every tier that uses processes:
//! own session, rlimits, an unprivileged uid, pipes read without deadlock,
//! a wall timeout and cancel that kill the whole group, and a sweep that
//! leaves no process of the task behind.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{CancelToken, OutputCapture};
use crate::task::TaskError;

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    Exited(i32),
    Signaled(i32),
    /// Killed by us at the wall-clock deadline.
    TimedOut,
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
    pub timeout: Duration,
    /// Cap on each of stdout and stderr.
    pub output_cap: usize,
    /// Cap on the result channel.
    pub channel_cap: usize,
    pub hook: Option<ChildHook>,
}

/// What came back.
#[derive(Debug)]
pub(crate) struct ChildRun {
    pub ending: Ending,
    pub stdout: OutputCapture,
    pub stderr: OutputCapture,
    pub channel: Vec<u8>,
    pub channel_overflow: bool,
    /// CPU time of the child (user + system).
    pub cpu_time: Duration,
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
    let mut command = Command::new(spec.program);
    command
        .args(&spec.args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(spec.cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let channel_fd = channel.as_ref().map(|(_, w)| w.as_raw_fd());
    let rlimits = std::mem::take(&mut spec.rlimits);
    let uid = spec.uid;
    let netns = spec.new_netns;
    let mut hook = spec.hook.take();
    let root = is_root();
    // SAFETY: the closure runs in the forked child before exec and only
    // makes system calls; it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            check(libc::setsid())?;
            if netns {
                let flags = if root {
                    libc::CLONE_NEWNET
                } else {
                    libc::CLONE_NEWUSER | libc::CLONE_NEWNET
                };
                check(libc::unshare(flags))?;
            }
            for &(resource, soft, hard) in &rlimits {
                let limit = libc::rlimit {
                    rlim_cur: soft,
                    rlim_max: hard,
                };
                check(libc::setrlimit(resource, &limit))?;
            }
            if let Some(fd) = channel_fd {
                if fd == 3 {
                    check(libc::fcntl(3, libc::F_SETFD, 0))?;
                } else {
                    check(libc::dup2(fd, 3))?;
                }
            }
            if let Some(uid) = uid {
                check(libc::setgroups(0, std::ptr::null()))?;
                check(libc::setresgid(uid, uid, uid))?;
                check(libc::setresuid(uid, uid, uid))?;
            }
            if let Some(hook) = hook.as_mut() {
                hook()?;
            }
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(|e| spawn_error(spec.program, e))?;
    let pid = child.id() as libc::pid_t;
    let channel_r = channel.map(|(r, w)| {
        drop(w);
        r
    });

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

    let stdin: Option<OwnedFd> = child.stdin.take().map(OwnedFd::from);
    let stdout: Option<OwnedFd> = child.stdout.take().map(OwnedFd::from);
    let stderr: Option<OwnedFd> = child.stderr.take().map(OwnedFd::from);
    let pidfd = pidfd_open(pid);

    let mut run = ChildRun {
        ending: Ending::Exited(0),
        stdout: OutputCapture::new(spec.output_cap),
        stderr: OutputCapture::new(spec.output_cap),
        channel: Vec::new(),
        channel_overflow: false,
        cpu_time: Duration::ZERO,
    };
    let ending = pump(
        PumpFds {
            stdin,
            stdout,
            stderr,
            channel: channel_r,
            pidfd,
        },
        spec.stdin,
        spec.channel_cap,
        Instant::now() + spec.timeout,
        pid,
        uid,
        cancel,
        &mut run,
    );

    // Whatever happened, nothing of the task survives it.
    kill_group(pid);
    if let Some(uid) = uid {
        sweep_uid(uid);
    }
    *alive.lock().unwrap_or_else(|e| e.into_inner()) = false;
    cancel.clear();
    let (status, cpu_time) = reap(pid);
    drop(child);
    run.cpu_time = cpu_time;
    run.ending = match ending {
        Some(ending) => ending,
        None if cancel.is_cancelled() => Ending::Cancelled,
        None => status,
    };
    Ok(run)
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
/// process group or session. A forked helper takes the uid and calls
/// `kill(-1)`, which reaches exactly the processes that uid may signal.
pub(crate) fn sweep_uid(uid: u32) {
    if !is_root() {
        return;
    }
    // SAFETY: the child only makes async-signal-safe raw system calls and
    // leaves with _exit.
    unsafe {
        let pid = libc::fork();
        if pid == 0 {
            if libc::syscall(libc::SYS_setresgid, uid, uid, uid) != 0
                || libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0
            {
                libc::_exit(1);
            }
            // Repeat while forks race with the kill; ESRCH means none is left.
            for _ in 0..64 {
                if libc::kill(-1, libc::SIGKILL) != 0 {
                    break;
                }
            }
            libc::_exit(0);
        }
        if pid > 0 {
            let mut status = 0;
            while libc::waitpid(pid, &mut status, 0) < 0
                && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted
            {}
        }
    }
}

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid never fails.
    unsafe { libc::geteuid() == 0 }
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
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

fn spawn_error(program: &Path, error: io::Error) -> TaskError {
    match error.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::EACCES) => TaskError::unavailable(format!(
            "can't run {} (as the task's unprivileged uid when lattice runs as root): {error}",
            program.display()
        )),
        Some(libc::EPERM) | Some(libc::EINVAL) => TaskError::unavailable(format!(
            "can't set up the sandbox for {}: {error} (the kernel refused a step of its setup: session, network namespace, rlimits, privilege drop, or the seccomp tier's Landlock rules or filter; `lattice-wasm doctor` checks what this host supports)",
            program.display()
        )),
        _ => TaskError::internal(format!("can't start {}: {error}", program.display())),
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
    pub fn acquire() -> Result<Self, TaskError> {
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

    pub fn uid(&self) -> u32 {
        self.uid
    }
}

impl Drop for UidLease {
    fn drop(&mut self) {
        // Sweep before the lock (closed after this) frees the uid for others.
        sweep_uid(self.uid);
    }
}
