//! The time limits and cancel of a task that runs in this process (the
//! wasm and none tiers), checked by whoever watches it: wasmtime's epoch
//! callback, a sleeping host call, or the none tier's watchdog. The process
//! tiers get the same limits from the kernel (rlimits and a deadline).

use std::time::{Duration, Instant};

use super::{CancelToken, SandboxConfig};
use crate::task::TaskError;

/// Why the host stopped a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    Cancelled,
    WallTimeout,
    CpuTimeout,
}

impl Stop {
    /// The error the task ends with.
    pub fn error(self, config: &SandboxConfig) -> TaskError {
        match self {
            Stop::Cancelled => TaskError::Cancelled,
            Stop::WallTimeout => TaskError::wall_timeout(config.timeout),
            Stop::CpuTimeout => TaskError::cpu_timeout(config.max_cpu_time),
        }
    }
}

/// What may stop a running task: its wall time, the CPU time of the thread
/// it runs on, and its cancel flag.
#[derive(Clone)]
pub(crate) struct Limits {
    started: Instant,
    wall: Duration,
    cpu_clock: libc::clockid_t,
    cpu_started: Duration,
    cpu: Duration,
    cancel: CancelToken,
}

impl Limits {
    /// The limits of `config`, starting now. Call it on the thread that
    /// runs the task: its CPU clock is the one measured, also when another
    /// thread checks.
    pub fn start(config: &SandboxConfig, cancel: &CancelToken) -> Limits {
        let mut cpu_clock: libc::clockid_t = libc::CLOCK_THREAD_CPUTIME_ID;
        // SAFETY: pthread_self is always valid; on failure the clock stays
        // CLOCK_THREAD_CPUTIME_ID (right when checked on this thread).
        unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut cpu_clock) };
        Limits {
            started: Instant::now(),
            wall: config.timeout,
            cpu_clock,
            cpu_started: cpu_time(cpu_clock),
            cpu: config.max_cpu_time,
            cancel: cancel.clone(),
        }
    }

    /// The limit that stops the task now, if any. Only valid while the
    /// task's thread is alive.
    pub fn exceeded(&self) -> Option<Stop> {
        if self.cancel.is_cancelled() {
            Some(Stop::Cancelled)
        } else if self.started.elapsed() >= self.wall {
            Some(Stop::WallTimeout)
        } else if cpu_time(self.cpu_clock).saturating_sub(self.cpu_started) >= self.cpu {
            Some(Stop::CpuTimeout)
        } else {
            None
        }
    }
}

fn cpu_time(clock: libc::clockid_t) -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the timespec we own.
    unsafe { libc::clock_gettime(clock, &mut now) };
    Duration::new(
        now.tv_sec.max(0) as u64,
        now.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}
