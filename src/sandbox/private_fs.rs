//! A process-tier task's own view of the filesystem, in a mount namespace
//! of its own: its temp dir, `/tmp`, `/var/tmp` and `/dev/shm` are fresh
//! size-capped tmpfs's, so what a task writes there is neither seen by other
//! tasks nor left on the host, and can't fill the host's disk. On the
//! subprocess tier the rest of the host's tree is read-only, so nothing the
//! task writes outlives it (the seccomp tier's Landlock rules confine its
//! writes already). The host paths the task must still reach under the
//! tmpfs's (its program, its `mounts`) are bound back with the host's
//! flags (the subprocess tier, whose root is read-only, takes no mounts).
//!
//! The plan is made before the child exists; the child only makes system
//! calls (see `process::spawn`).

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::process;
use crate::task::TaskError;

/// The world-writable directories a task gets its own copy of.
const SHARED_DIRS: [&str; 3] = ["/tmp", "/var/tmp", "/dev/shm"];

/// Each copy, and the temp dir: 64 MiB (the tier's file size cap) and 4,096
/// inodes, in memory.
const TMPFS_SIZE: &str = "size=64m,nr_inodes=4096";

/// One mount-namespace step of the child.
enum Step {
    /// A fresh tmpfs over a shared directory, or as the temp dir.
    Tmpfs { target: CString, options: CString },
    /// A directory on such a tmpfs: the way to the temp dir or to a kept
    /// path bound back.
    Dir { path: CString },
    /// An empty file on such a tmpfs, where a kept file is bound back.
    File { path: CString },
    /// The host object at `path` bound back there, with the host's
    /// permissions (the seccomp tier's Landlock rules still apply: same
    /// inodes). A bind's source must be a mount of the child's namespace, so
    /// the child opens `path` before anything hides it, as fd `fd` (a number
    /// the plan holds open for it), and binds from `fd_path` (`/proc/self/fd/N`).
    Bind {
        path: CString,
        fd: RawFd,
        fd_path: CString,
    },
}

/// The child's mount steps, with the fd numbers its binds use.
pub(crate) struct PrivateFs {
    read_only_root: bool,
    /// Mount a /proc of the task's own PID namespace over the host's.
    mount_proc: bool,
    steps: Vec<Step>,
    reserved: Vec<OwnedFd>,
}

impl PrivateFs {
    /// Plans the task's view: `temp_dir` a tmpfs of its own owned by `uid`,
    /// private shared directories, the rest of the host's tree read-only if
    /// `read_only_root`, the host paths `keep` reachable, and with
    /// `mount_proc` a /proc that shows only the task's own PID namespace.
    pub(crate) fn plan(
        temp_dir: &Path,
        uid: u32,
        keep: &[&Path],
        read_only_root: bool,
        mount_proc: bool,
    ) -> Result<PrivateFs, TaskError> {
        let mut kept: Vec<PathBuf> = keep
            .iter()
            .filter_map(|path| std::fs::canonicalize(path).ok())
            .collect();
        // Parents before children: a child is then bound onto the parent's
        // host directory, and every directory made below is on a tmpfs.
        kept.sort_by_key(|path| path.components().count());

        // A directory the task was given whole stays the host's.
        let shared: Vec<&PathBuf> = shared_dirs()
            .iter()
            .filter(|dir| !kept.contains(dir))
            .collect();

        let mut steps: Vec<Step> = Vec::new();
        for dir in &shared {
            steps.push(Step::Tmpfs {
                target: cstring(dir)?,
                options: CString::new(format!("{TMPFS_SIZE},mode=1777")).expect("no NUL"),
            });
        }
        // The temp dir: where it is (the host's is the mount point), or made
        // on the shared directory's tmpfs.
        let temp_dir = std::fs::canonicalize(temp_dir)
            .map_err(|e| TaskError::unavailable(format!("the task's temp dir is gone: {e}")))?;
        if let Some(dir) = shared.iter().find(|dir| temp_dir.starts_with(dir)) {
            make_way(&mut steps, dir, &temp_dir, true)?;
        }
        steps.push(Step::Tmpfs {
            target: cstring(&temp_dir)?,
            options: CString::new(format!("{TMPFS_SIZE},mode=0700,uid={uid},gid={uid}"))
                .expect("no NUL"),
        });
        let mut reserved = Vec::new();
        let mut bound: Vec<PathBuf> = Vec::new();
        for path in kept {
            let Some(dir) = shared.iter().find(|dir| path.starts_with(dir)) else {
                continue; // in sight, as the host has it
            };
            let Ok(host) = std::fs::File::options()
                .read(true)
                .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
                .open(&path)
            else {
                continue; // gone: nothing to see
            };
            let is_dir = host.metadata().map(|m| m.is_dir()).unwrap_or(false);
            let fd = process::above_stdio(OwnedFd::from(host))?;
            // Below a path bound back already the host's way is there.
            if !bound.iter().any(|b| path.starts_with(b)) {
                make_way(&mut steps, dir, &path, is_dir)?;
            }
            steps.push(Step::Bind {
                path: cstring(&path)?,
                fd: fd.as_raw_fd(),
                fd_path: CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("no NUL"),
            });
            reserved.push(fd);
            bound.push(path);
        }
        Ok(PrivateFs {
            read_only_root,
            mount_proc,
            steps,
            reserved,
        })
    }

    /// True if the child gets a /proc of its own PID namespace.
    pub(crate) fn mounts_proc(&self) -> bool {
        self.mount_proc
    }

    /// The descriptors the child's steps use.
    pub(crate) fn fds(&self) -> impl Iterator<Item = RawFd> + '_ {
        self.reserved.iter().map(AsRawFd::as_raw_fd)
    }

    /// In the child, inside its new mount namespace: takes the steps.
    /// Returns the errno of a step that failed.
    ///
    /// # Safety
    /// For a child set up by `process::spawn`: system calls only.
    pub(crate) unsafe fn apply(&self) -> Result<(), i32> {
        // SAFETY: called as the # Safety section says: raw system calls on the paths and fds this value owns, in the child.
        unsafe {
            let errno = || *libc::__errno_location();
            let check = |result: libc::c_long| if result < 0 { Err(errno()) } else { Ok(()) };
            let none = std::ptr::null::<libc::c_char>();
            // Nothing mounted here may reach the host's namespace.
            check(libc::syscall(
                libc::SYS_mount,
                none,
                c"/".as_ptr(),
                none,
                libc::MS_REC | libc::MS_PRIVATE,
                none,
            ))?;
            for step in &self.steps {
                if let Step::Bind { path, fd, .. } = step {
                    let opened = libc::syscall(
                        libc::SYS_openat,
                        libc::AT_FDCWD,
                        path.as_ptr(),
                        libc::O_PATH | libc::O_CLOEXEC,
                    );
                    check(opened)?;
                    check(libc::syscall(libc::SYS_dup3, opened, *fd, libc::O_CLOEXEC))?;
                    libc::syscall(libc::SYS_close, opened);
                }
            }
            // A /proc of the child's own PID namespace (it is that namespace's
            // first process): other processes, the host's included, are not in
            // it.
            if self.mount_proc {
                check(libc::syscall(
                    libc::SYS_mount,
                    c"proc".as_ptr(),
                    c"/proc".as_ptr(),
                    c"proc".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    none,
                ))?;
            }
            // The whole tree at once needs mount_setattr (Linux 5.12); before
            // that, the rest of the tree stays writable as the task's uid allows.
            // Mounts made below are writable: they are new.
            if self.read_only_root {
                match make_read_only(c"/") {
                    Ok(()) | Err(libc::ENOSYS) => {}
                    Err(errno) => return Err(errno),
                }
            }
            for step in &self.steps {
                match step {
                    Step::Tmpfs { target, options } => check(libc::syscall(
                        libc::SYS_mount,
                        c"tmpfs".as_ptr(),
                        target.as_ptr(),
                        c"tmpfs".as_ptr(),
                        libc::MS_NOSUID | libc::MS_NODEV,
                        options.as_ptr(),
                    ))?,
                    Step::Dir { path } => {
                        if libc::syscall(libc::SYS_mkdirat, libc::AT_FDCWD, path.as_ptr(), 0o755)
                            < 0
                            && errno() != libc::EEXIST
                        {
                            return Err(errno());
                        }
                    }
                    Step::File { path } => {
                        let fd = libc::syscall(
                            libc::SYS_openat,
                            libc::AT_FDCWD,
                            path.as_ptr(),
                            libc::O_CREAT | libc::O_EXCL | libc::O_RDONLY | libc::O_CLOEXEC,
                            0o644,
                        );
                        if fd < 0 && errno() != libc::EEXIST {
                            return Err(errno());
                        }
                        if fd >= 0 {
                            libc::syscall(libc::SYS_close, fd);
                        }
                    }
                    // A bind takes its source's flags: read-only under a
                    // read-only root.
                    Step::Bind { path, fd_path, .. } => check(libc::syscall(
                        libc::SYS_mount,
                        fd_path.as_ptr(),
                        path.as_ptr(),
                        none,
                        libc::MS_BIND | libc::MS_REC,
                        none,
                    ))?,
                }
            }
            Ok(())
        }
    }
}

/// The shared directories this host has, resolved once per process.
fn shared_dirs() -> &'static [PathBuf] {
    static DIRS: OnceLock<Vec<PathBuf>> = OnceLock::new();
    DIRS.get_or_init(|| {
        let mut dirs: Vec<PathBuf> = Vec::new();
        for dir in SHARED_DIRS {
            // Not on this system, or a link to one already listed: skipped.
            if let Ok(dir) = std::fs::canonicalize(dir) {
                if dir.is_dir() && !dirs.contains(&dir) {
                    dirs.push(dir);
                }
            }
        }
        dirs
    })
}

/// The directories (and, for a file, the empty file) on a tmpfs over `dir`
/// that lead to `path`, which is below `dir`.
fn make_way(steps: &mut Vec<Step>, dir: &Path, path: &Path, is_dir: bool) -> Result<(), TaskError> {
    let inner: Vec<_> = path
        .strip_prefix(dir)
        .expect("below dir")
        .components()
        .collect();
    let mut way = dir.to_path_buf();
    for (i, part) in inner.iter().enumerate() {
        way.push(part);
        let path = cstring(&way)?;
        steps.push(if i + 1 < inner.len() || is_dir {
            Step::Dir { path }
        } else {
            Step::File { path }
        });
    }
    Ok(())
}

fn cstring(path: &Path) -> Result<CString, TaskError> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| TaskError::invalid("a path contains a NUL byte"))
}

/// mount_setattr(2): the mounts at and below `path` made read-only.
///
/// # Safety
/// System calls only (for the child).
unsafe fn make_read_only(path: &CStr) -> Result<(), i32> {
    // SAFETY: one raw system call on a path the caller owns; `attr` outlives it.
    unsafe {
        let attr = libc::mount_attr {
            attr_set: libc::MOUNT_ATTR_RDONLY,
            attr_clr: 0,
            propagation: 0,
            userns_fd: 0,
        };
        let result = libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::AT_RECURSIVE as libc::c_uint,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        );
        if result < 0 {
            Err(*libc::__errno_location())
        } else {
            Ok(())
        }
    }
}
