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
    pub(super) fn error(self, config: &SandboxConfig) -> TaskError {
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
    pub(super) fn start(config: &SandboxConfig, cancel: &CancelToken) -> Limits {
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
    pub(super) fn exceeded(&self) -> Option<Stop> {
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

/// A task under the watchdog: a thread that, every tick, checks the limits
/// of the tasks running in this process and, once one is over, interrupts
/// it (`interrupt`, again every tick, should the task catch it) and wakes
/// its thread from a blocking system call with [`wake_signal`] — a sleep,
/// or an `open` of a FIFO in a Wasm mount, which would otherwise outlive
/// every limit. Until [`Watch::finish`] (or drop).
pub(crate) struct Watch {
    token: u64,
}

/// A running task the watchdog checks every tick.
struct Entry {
    token: u64,
    thread: libc::pthread_t,
    limits: Limits,
    interrupt: Option<Box<dyn Fn() + Send>>,
    stop: Option<Stop>,
    stopped_at: Option<Instant>,
}

static WATCHED: std::sync::Mutex<Vec<Entry>> = std::sync::Mutex::new(Vec::new());

/// How often the watchdog checks.
const WATCH_TICK: Duration = Duration::from_millis(10);

impl Watch {
    /// Watches the task that runs on this thread under `limits`.
    pub(super) fn start(
        token: u64,
        limits: Limits,
        interrupt: Option<Box<dyn Fn() + Send>>,
    ) -> Watch {
        static WATCHDOG: std::sync::Once = std::sync::Once::new();
        WATCHDOG.call_once(|| {
            install_wake_handler();
            if let Err(e) = std::thread::Builder::new()
                .name("lattice-watchdog".into())
                .spawn(watchdog)
            {
                eprintln!("lattice-wasm: can't start the limits watchdog: {e}");
            }
        });
        lock(&WATCHED).push(Entry {
            token,
            // SAFETY: pthread_self always succeeds.
            thread: unsafe { libc::pthread_self() },
            limits,
            interrupt,
            stop: None,
            stopped_at: None,
        });
        Watch { token }
    }

    /// Stops watching; the limit that stopped the task, if one did.
    pub(super) fn finish(self) -> Option<Stop> {
        let token = self.token;
        std::mem::forget(self);
        remove(token)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        remove(self.token);
    }
}

fn remove(token: u64) -> Option<Stop> {
    let mut watched = lock(&WATCHED);
    let at = watched.iter().position(|entry| entry.token == token)?;
    watched.swap_remove(at).stop
}

/// A fresh token for [`Watch::start`].
pub(crate) fn next_token() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The limit that stopped task `token` at least `grace` ago, if one did.
pub(crate) fn overdue(token: u64, grace: Duration) -> Option<Stop> {
    let watched = lock(&WATCHED);
    let entry = watched.iter().find(|entry| entry.token == token)?;
    match (entry.stop, entry.stopped_at) {
        (Some(stop), Some(at)) if at.elapsed() >= grace => Some(stop),
        _ => None,
    }
}

fn watchdog() {
    loop {
        std::thread::sleep(WATCH_TICK);
        let mut watched = lock(&WATCHED);
        for entry in watched.iter_mut() {
            if entry.stop.is_none() {
                entry.stop = entry.limits.exceeded();
                entry.stopped_at = entry.stop.map(|_| Instant::now());
            }
            if entry.stop.is_some() {
                if let Some(interrupt) = &entry.interrupt {
                    interrupt();
                }
                // SAFETY: the thread is alive: its entry is removed (under
                // this lock) before its task returns.
                unsafe { libc::pthread_kill(entry.thread, wake_signal()) };
            }
        }
    }
}

/// The signal that interrupts a stopped task's blocking system call
/// (`EINTR`).
fn wake_signal() -> libc::c_int {
    libc::SIGRTMIN() + 4
}

/// Installs a do-nothing handler for [`wake_signal`] without `SA_RESTART`,
/// unless the program already handles that signal.
fn install_wake_handler() {
    extern "C" fn wake(_: libc::c_int) {}
    // SAFETY: sigaction with zeroed structs we own; the handler is
    // async-signal-safe (it does nothing).
    unsafe {
        let mut current: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(wake_signal(), std::ptr::null(), &mut current) != 0
            || current.sa_sigaction != libc::SIG_DFL
        {
            return;
        }
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = wake as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(wake_signal(), &action, std::ptr::null_mut());
    }
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
