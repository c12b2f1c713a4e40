//! Starting the child: a vforked helper that sets up its session,
//! cgroup, namespaces, private filesystem, rlimits, fds, uid and filters
//! with raw system calls only, then execs; and the errors of each step.

use super::*;

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
pub(super) struct Spawned {
    pub(super) pid: libc::pid_t,
    pub(super) stdin: OwnedFd,
    pub(super) stdout: OwnedFd,
    pub(super) stderr: OwnedFd,
    pub(super) channel: Option<OwnedFd>,
}

/// The setup steps of a child, in order; a failing one is reported by
/// number on the error pipe.
pub(super) const STEPS: [&str; 12] = [
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
pub(super) const STEP_HOOK: u32 = STEPS.len() as u32;

/// Everything the child needs, prepared before it exists: it only makes
/// system calls, since it shares this process's memory (see `run_vforked`).
pub(super) struct ChildPlan<'a> {
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
pub(super) fn spawn(
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
pub(super) extern "C" fn child_main(plan: *mut libc::c_void) -> libc::c_int {
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
pub(super) unsafe fn child_setup(plan: &mut ChildPlan<'_>) -> (u32, i32) {
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
pub(super) unsafe fn close_range(first: libc::c_uint, last: libc::c_uint) {
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
pub(super) unsafe fn run_vforked(
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
pub(super) unsafe fn vfork_clone(
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

pub(super) fn spawn_error(program: &Path, step: u32, error: io::Error) -> TaskError {
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
