//! After the child: its wait status and CPU time, killing its group, the
//! sweep of every process left under its uid, and the uids themselves.

use super::*;

pub(super) fn reap(pid: libc::pid_t) -> (Ending, Duration) {
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

pub(super) fn timeval(t: libc::timeval) -> Duration {
    Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
}

pub(super) fn kill_group(pgid: libc::pid_t) {
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

/// A uid reserved for one running task, so that RLIMIT_NPROC counts only its
/// processes and the sweep reaches only them. The reservation is an flock
/// on a file per uid, so it holds across every lattice process on the host
/// (and ends with the process if it crashes). Given back, after a sweep, on drop.
pub(crate) struct UidLease {
    uid: u32,
    _lock: std::fs::File,
}

/// Task uids: far above any uid a distribution hands out.
pub(super) const UID_BASE: u32 = 1_900_000_000;
pub(super) const UID_COUNT: u32 = 4096;
pub(super) const UID_LOCK_DIR: &str = "/run/lattice-wasm/uids";

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
