//! The seccomp tier: the subprocess tier (own uid, rlimits, empty network
//! namespace, private temp dir, clean environment) plus, in the child just
//! before exec, Landlock path rules and a seccomp-BPF syscall allowlist.
//!
//! - Landlock (ABI >= 1, checked enforced, never best-effort): read only
//!   the system directories CPython needs, write only in the task's temp
//!   dir (and `:rw` mounts), execute only the interpreter and the dynamic
//!   loader.
//! - seccomp: the allowlist below, per architecture; anything else fails
//!   with EPERM (a PermissionError in Python), or kills the task with
//!   SIGSYS when `seccomp_kill` is set. No sockets (unless the network is
//!   enabled), no new processes (`clone` only with `CLONE_THREAD`; `clone3`
//!   answers ENOSYS so glibc falls back to `clone`), and no exec after the
//!   interpreter starts: the hook execs it itself, and `execve` is allowed
//!   only with that exact path pointer.
//!
//! Order in the child: setsid -> namespaces, private mounts -> rlimits -> uid
//! -> Landlock -> seccomp -> exec.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::process::{self, ChildHook, Exec};
use super::subprocess::{python_interpreter, ExecPlan, ProcessTier};
use super::{
    reject_unsupported, CancelToken, Job, Sandbox, SandboxConfig, SandboxLevel, SandboxOutput,
};
use crate::task::TaskError;

pub(crate) struct SeccompSandbox;

impl Sandbox for SeccompSandbox {
    fn check_available(&self) -> Result<(), TaskError> {
        python_interpreter()?;
        landlock_abi()?;
        seccomp_available()
    }

    fn check_config(&self, config: &SandboxConfig) -> Result<(), TaskError> {
        reject_unsupported(SandboxLevel::Seccomp, config, true, true)?;
        if let Some(mount) = config.mounts.iter().find(|m| m.host != Path::new(&m.guest)) {
            return Err(TaskError::invalid(format!(
                "the seccomp tier can grant paths but not remap them: mount {} at the same path ({0}:{0}), or use the wasm or docker tier",
                mount.host.display()
            )));
        }
        Ok(())
    }

    fn open_session(
        &self,
        config: &SandboxConfig,
    ) -> Result<Box<dyn super::session::TierSession>, TaskError> {
        TIER.open_session(config)
    }

    fn run(&self, job: &Job<'_>, cancel: &CancelToken) -> SandboxOutput {
        TIER.run(job, cancel)
    }
}

/// The process tier with this tier's hook.
const TIER: ProcessTier = ProcessTier {
    level: SandboxLevel::Seccomp,
    isolate: true,
    hook: Some(hook),
    read_only_root: false,
};

/// The child's last steps: Landlock, seccomp, exec; with the descriptors
/// of the Landlock rules, which the child keeps for them.
fn hook(
    config: &SandboxConfig,
    plan: &ExecPlan<'_>,
) -> Result<(ChildHook, Vec<std::os::fd::RawFd>), TaskError> {
    let abi = landlock_abi()?;
    let rules = path_rules(config, plan, abi)?;
    let fds = rules
        .iter()
        .filter_map(|rule| match &rule.target {
            RuleTarget::Opened(fd) => Some(fd.as_raw_fd()),
            RuleTarget::InChild(_) => None,
        })
        .collect();
    let exec = Exec::new(plan.program, plan.args, plan.env)?;
    let filters = filters(config, exec.program.as_ptr() as u64)?;
    let hook: ChildHook = Box::new(move || {
        // The whole `Exec` (Send + Sync), not its raw-pointer fields.
        let exec = &exec;
        restrict_paths(abi, &rules)?;
        for filter in &filters {
            // The errno of the refused prctl/seccomp call (formatting
            // seccompiler's error would allocate in the child).
            seccompiler::apply_filter(filter).map_err(|_| io::Error::last_os_error())?;
        }
        // SAFETY: the child execs its program; the filter allows exactly
        // this `program` pointer.
        unsafe { exec.execve() };
        Err(io::Error::last_os_error())
    });
    Ok((hook, fds))
}

/// The seccomp tier's built-in allowlist: the system calls CPython needs
/// (start, imports, JSON, math, files in its temp dir, threads), by group,
/// measured with `strace -f` on Debian's python3.11 (the `x86_64`-only ones
/// are the legacy forms glibc still uses). `SandboxConfig::allowed_syscalls`
/// replaces it; start from this list to extend it. Whatever the list,
/// `clone` (threads only), `clone3` (ENOSYS), `execve` (the interpreter's
/// own, once) and `ioctl` (TCGETS, FIONBIO, FIOCLEX) are ruled on their
/// arguments.
///
/// ```
/// let calls = lattice::sandbox::seccomp_allowlist();
/// assert!(calls.contains(&libc::SYS_read));
/// assert!(!calls.contains(&libc::SYS_socket));
/// ```
pub fn allowlist() -> Vec<i64> {
    let mut calls = vec![
        // I/O on descriptors it has
        libc::SYS_read,
        libc::SYS_write,
        libc::SYS_readv,
        libc::SYS_writev,
        libc::SYS_pread64,
        libc::SYS_pwrite64,
        libc::SYS_lseek,
        libc::SYS_close,
        libc::SYS_dup,
        libc::SYS_dup3,
        libc::SYS_fcntl,
        libc::SYS_pipe2,
        libc::SYS_ppoll,
        libc::SYS_pselect6,
        libc::SYS_epoll_create1,
        libc::SYS_epoll_ctl,
        libc::SYS_epoll_pwait,
        // files (Landlock decides which paths)
        libc::SYS_openat,
        libc::SYS_newfstatat,
        libc::SYS_fstat,
        libc::SYS_statx,
        libc::SYS_faccessat,
        libc::SYS_faccessat2,
        libc::SYS_readlinkat,
        libc::SYS_getdents64,
        libc::SYS_getcwd,
        libc::SYS_chdir,
        libc::SYS_fchdir,
        libc::SYS_mkdirat,
        libc::SYS_unlinkat,
        libc::SYS_renameat2,
        libc::SYS_ftruncate,
        libc::SYS_fsync,
        libc::SYS_fdatasync,
        libc::SYS_utimensat,
        libc::SYS_fchmod,
        libc::SYS_fchmodat,
        libc::SYS_umask,
        // memory
        libc::SYS_mmap,
        libc::SYS_munmap,
        libc::SYS_mremap,
        libc::SYS_mprotect,
        libc::SYS_brk,
        libc::SYS_madvise,
        // signals (its own)
        libc::SYS_rt_sigaction,
        libc::SYS_rt_sigprocmask,
        libc::SYS_rt_sigreturn,
        libc::SYS_sigaltstack,
        libc::SYS_tgkill,
        // identity, time, randomness, limits
        libc::SYS_getpid,
        libc::SYS_getppid,
        libc::SYS_gettid,
        libc::SYS_getuid,
        libc::SYS_getgid,
        libc::SYS_geteuid,
        libc::SYS_getegid,
        libc::SYS_uname,
        libc::SYS_sysinfo,
        libc::SYS_getrusage,
        libc::SYS_times,
        libc::SYS_getrandom,
        libc::SYS_prlimit64,
        libc::SYS_clock_gettime,
        libc::SYS_clock_getres,
        libc::SYS_clock_nanosleep,
        libc::SYS_gettimeofday,
        libc::SYS_nanosleep,
        // threads (clone is added with its flag check)
        libc::SYS_futex,
        libc::SYS_set_robust_list,
        libc::SYS_set_tid_address,
        libc::SYS_rseq,
        libc::SYS_sched_yield,
        libc::SYS_sched_getaffinity,
        libc::SYS_membarrier,
        libc::SYS_exit,
        libc::SYS_exit_group,
    ];
    #[cfg(target_arch = "x86_64")]
    calls.extend([
        libc::SYS_open,
        libc::SYS_stat,
        libc::SYS_lstat,
        libc::SYS_access,
        libc::SYS_readlink,
        libc::SYS_dup2,
        libc::SYS_poll,
        libc::SYS_select,
        libc::SYS_mkdir,
        libc::SYS_rmdir,
        libc::SYS_unlink,
        libc::SYS_rename,
        libc::SYS_arch_prctl,
        libc::SYS_epoll_wait,
    ]);
    calls
}

/// What a task with the network enabled may also do.
const NETWORK: &[i64] = &[
    libc::SYS_socket,
    libc::SYS_socketpair,
    libc::SYS_connect,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_accept,
    libc::SYS_accept4,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_setsockopt,
    libc::SYS_getsockopt,
    libc::SYS_shutdown,
];

#[cfg(target_arch = "x86_64")]
pub(crate) const ARCH: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
pub(crate) const ARCH: TargetArch = TargetArch::aarch64;

/// The two filters, in the order they are installed: `clone3 -> ENOSYS`,
/// then the allowlist (which allows `clone3`: the kernel takes the
/// strictest answer of all filters, so ENOSYS wins, also in kill mode; and
/// installed second, the allowlist need not allow installing a filter).
fn filters(config: &SandboxConfig, exec_path: u64) -> Result<Vec<BpfProgram>, TaskError> {
    fn internal(e: impl std::fmt::Display) -> TaskError {
        TaskError::internal(format!("seccomp filter: {e}"))
    }
    let condition = |arg: u8, op: SeccompCmpOp, value: u64| {
        SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, value).map_err(internal)
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let calls = match &config.allowed_syscalls {
        Some(calls) => calls.clone(),
        None => {
            let mut calls = allowlist();
            if config.network {
                calls.extend_from_slice(NETWORK);
            }
            calls
        }
    };
    for call in calls {
        rules.insert(call, Vec::new());
    }
    let thread_only = condition(
        0,
        SeccompCmpOp::MaskedEq(libc::CLONE_THREAD as u64),
        libc::CLONE_THREAD as u64,
    )?;
    rules.insert(
        libc::SYS_clone,
        vec![SeccompRule::new(vec![thread_only]).map_err(internal)?],
    );
    rules.insert(libc::SYS_clone3, Vec::new());
    let exec_once = condition(0, SeccompCmpOp::Eq, exec_path)?;
    rules.insert(
        libc::SYS_execve,
        vec![SeccompRule::new(vec![exec_once]).map_err(internal)?],
    );
    // isatty() and non-blocking mode, nothing else of ioctl.
    let mut ioctls = Vec::new();
    let requests: [u64; 3] = [libc::TCGETS, libc::FIONBIO, libc::FIOCLEX];
    for request in requests {
        ioctls.push(
            SeccompRule::new(vec![condition(1, SeccompCmpOp::Eq, request)?]).map_err(internal)?,
        );
    }
    rules.insert(libc::SYS_ioctl, ioctls);
    let denied = if config.seccomp_kill {
        SeccompAction::KillProcess
    } else {
        SeccompAction::Errno(libc::EPERM as u32)
    };
    let allowlist =
        SeccompFilter::new(rules, denied, SeccompAction::Allow, ARCH).map_err(internal)?;
    let clone3 = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        ARCH,
    )
    .map_err(internal)?;
    Ok(vec![
        clone3.try_into().map_err(internal)?,
        allowlist.try_into().map_err(internal)?,
    ])
}

// Landlock (linux/landlock.h): the system calls are not in glibc.
const LANDLOCK_CREATE_RULESET_VERSION: u32 = 1;
const LANDLOCK_RULE_PATH_BENEATH: libc::c_int = 1;
const EXECUTE: u64 = 1 << 0;
const WRITE_FILE: u64 = 1 << 1;
const READ_FILE: u64 = 1 << 2;
const READ_DIR: u64 = 1 << 3;
/// REMOVE_DIR .. MAKE_SYM (ABI 1).
const CHANGE_TREE: u64 = 0b1_1111_1111 << 4;
/// MAKE_CHAR, MAKE_SOCK, MAKE_FIFO, MAKE_BLOCK and MAKE_SYM: what a task
/// may not make in a host directory (a FIFO there could hang, and a link
/// mislead, whatever uses the directory next).
const MAKE_SPECIAL: u64 = (1 << 6) | (1 << 9) | (1 << 10) | (1 << 11) | (1 << 12);
const REFER: u64 = 1 << 13;
const TRUNCATE: u64 = 1 << 14;
const IOCTL_DEV: u64 = 1 << 15;
const FILE_RIGHTS: u64 = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV;

/// Every filesystem right Landlock ABI `abi` knows: all are handled (denied
/// unless a rule grants them).
fn handled(abi: i64) -> u64 {
    let mut rights = EXECUTE | WRITE_FILE | READ_FILE | READ_DIR | CHANGE_TREE;
    if abi >= 2 {
        rights |= REFER;
    }
    if abi >= 3 {
        rights |= TRUNCATE;
    }
    if abi >= 5 {
        rights |= IOCTL_DEV;
    }
    rights
}

#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
}

#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

/// The Landlock ABI version of this kernel, at least 1.
fn landlock_abi() -> Result<i64, TaskError> {
    // SAFETY: the version query takes no attribute.
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<RulesetAttr>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if abi < 1 {
        return Err(TaskError::unavailable(format!(
            "the seccomp tier needs Landlock for its path rules, and this kernel has none ({}); use the wasm or docker tier",
            io::Error::last_os_error()
        )));
    }
    Ok(abi)
}

fn seccomp_available() -> Result<(), TaskError> {
    // SAFETY: PR_GET_SECCOMP only reads the calling thread's mode.
    if unsafe { libc::prctl(libc::PR_GET_SECCOMP) } < 0 {
        return Err(TaskError::unavailable(format!(
            "this kernel has no seccomp ({}); use the wasm or docker tier",
            io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// A Landlock rule: what may be done beneath one path.
struct PathRule {
    target: RuleTarget,
    access: u64,
}

enum RuleTarget {
    /// Opened `O_PATH` before the child exists.
    Opened(OwnedFd),
    /// Opened by the child: its temp dir, a tmpfs mounted in the child's
    /// own mount namespace when lattice runs as root (see private_fs).
    InChild(CString),
}

/// The dynamic loader the interpreter names.
fn dynamic_loader() -> PathBuf {
    #[cfg(target_arch = "x86_64")]
    let loader = "/lib64/ld-linux-x86-64.so.2";
    #[cfg(target_arch = "aarch64")]
    let loader = "/lib/ld-linux-aarch64.so.1";
    std::fs::canonicalize(loader).unwrap_or_else(|_| PathBuf::from(loader))
}

fn path_rules(
    config: &SandboxConfig,
    plan: &ExecPlan<'_>,
    abi: i64,
) -> Result<Vec<PathRule>, TaskError> {
    let all = handled(abi);
    let read = READ_FILE | READ_DIR;
    let mut wanted: Vec<(PathBuf, u64)> = ["/usr", "/lib", "/lib64", "/etc", "/dev"]
        .into_iter()
        .map(|dir| (PathBuf::from(dir), read))
        .collect();
    wanted.push(("/dev/null".into(), READ_FILE | WRITE_FILE));
    let program = std::fs::canonicalize(plan.program).unwrap_or(plan.program.to_path_buf());
    wanted.push((program, EXECUTE | READ_FILE));
    wanted.push((dynamic_loader(), EXECUTE | READ_FILE));
    for mount in &config.mounts {
        let access = if mount.writable {
            all & !EXECUTE & !MAKE_SPECIAL
        } else {
            read
        };
        wanted.push((mount.host.clone(), access));
    }
    let mut rules = vec![PathRule {
        target: RuleTarget::InChild(
            CString::new(plan.workdir.as_os_str().as_bytes())
                .map_err(|_| TaskError::invalid("the temp dir's path contains a NUL byte"))?,
        ),
        access: all,
    }];
    for (path, access) in wanted {
        let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
            continue;
        };
        // SAFETY: open with a valid C string; the fd is owned below.
        let fd = unsafe { libc::open(c_path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
        if fd < 0 {
            continue; // not on this system (e.g. /lib64 on aarch64)
        }
        // SAFETY: fd is a fresh descriptor we own.
        let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        // The hook adds the rules after the child's fds 0–3 are replaced.
        let fd = process::above_stdio(fd)?;
        let is_dir = std::fs::metadata(&path)
            .map(|m| m.is_dir())
            .unwrap_or(false);
        let access = if is_dir { access } else { access & FILE_RIGHTS };
        rules.push(PathRule {
            target: RuleTarget::Opened(fd),
            access: access & all,
        });
    }
    Ok(rules)
}

/// In the child: the Landlock domain, enforced or an error.
fn restrict_paths(abi: i64, rules: &[PathRule]) -> io::Result<()> {
    let attr = RulesetAttr {
        handled_access_fs: handled(abi),
    };
    // SAFETY: raw Landlock system calls with structs we own.
    unsafe {
        let ruleset = libc::syscall(
            libc::SYS_landlock_create_ruleset,
            &attr as *const RulesetAttr,
            std::mem::size_of::<RulesetAttr>(),
            0u32,
        );
        if ruleset < 0 {
            return Err(io::Error::last_os_error());
        }
        let ruleset = ruleset as libc::c_int;
        for rule in rules {
            let fd = match &rule.target {
                RuleTarget::Opened(fd) => fd.as_raw_fd(),
                RuleTarget::InChild(path) => {
                    let fd = libc::open(path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    fd
                }
            };
            let beneath = PathBeneathAttr {
                allowed_access: rule.access,
                parent_fd: fd,
            };
            let added = libc::syscall(
                libc::SYS_landlock_add_rule,
                ruleset,
                LANDLOCK_RULE_PATH_BENEATH,
                &beneath as *const PathBeneathAttr,
                0u32,
            );
            let refused = (added != 0).then(io::Error::last_os_error);
            if let RuleTarget::InChild(_) = rule.target {
                libc::close(fd);
            }
            if let Some(error) = refused {
                return Err(error);
            }
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            || libc::syscall(libc::SYS_landlock_restrict_self, ruleset, 0u32) != 0
        {
            return Err(io::Error::last_os_error());
        }
        libc::close(ruleset);
    }
    Ok(())
}
