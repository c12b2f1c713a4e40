//! Ctrl-C (SIGINT) and SIGTERM: a command with tasks in flight cancels
//! them, writes the outcomes it has and exits with 128 + the signal (130,
//! 143), leaving no task process or container behind. A second signal
//! exits at once; a command with nothing to cancel exits at the first.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Mutex;

/// The signal that asked us to stop (0: none yet).
static RECEIVED: AtomicI32 = AtomicI32::new(0);

type Handler = std::sync::Arc<dyn Fn() + Send + Sync>;
static HANDLER: Mutex<Option<Handler>> = Mutex::new(None);

/// Blocks SIGINT and SIGTERM in this thread, so in every thread started
/// after it (call it first), and starts the one thread that takes them.
/// Children start with no signal blocked (their spawners reset the mask).
pub(super) fn install() {
    // SAFETY: signal-set calls on a set we own, for this thread.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    let waiter = std::thread::Builder::new()
        .name("lattice-signals".into())
        .spawn(move || loop {
            let mut signal: libc::c_int = 0;
            // SAFETY: sigwait on the set blocked above.
            if unsafe { libc::sigwait(&set, &mut signal) } != 0 {
                continue;
            }
            let first = RECEIVED
                .compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok();
            let handler = HANDLER.lock().unwrap_or_else(|e| e.into_inner()).clone();
            match (handler, first) {
                (Some(cancel), true) => {
                    eprintln!(
                        "lattice-wasm: {}: cancelling the running tasks (again to quit at once)",
                        name(signal)
                    );
                    // Apart, so that a second signal is still heard.
                    std::thread::spawn(move || cancel());
                }
                _ => std::process::exit(exit_code(signal)),
            }
        });
    if waiter.is_err() {
        // Without the waiter, let the signals act as they would.
        // SAFETY: as above.
        unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
    }
}

/// Runs `cancel` (once) when a signal arrives, until [`clear`]; a signal
/// that came before is handled at once.
pub(super) fn on_signal(cancel: impl Fn() + Send + Sync + 'static) {
    let mut handler = HANDLER.lock().unwrap_or_else(|e| e.into_inner());
    if RECEIVED.load(Ordering::SeqCst) != 0 {
        cancel();
    }
    *handler = Some(std::sync::Arc::new(cancel));
}

/// No more cancelling: a signal now exits at once.
pub(super) fn clear() {
    *HANDLER.lock().unwrap_or_else(|e| e.into_inner()) = None;
}

/// The signal that asked us to stop, if one did.
pub(super) fn received() -> Option<i32> {
    Some(RECEIVED.load(Ordering::SeqCst)).filter(|&s| s != 0)
}

/// The exit code after `signal`: 128 + its number.
pub(super) fn exit_code(signal: i32) -> i32 {
    128 + signal
}

fn name(signal: i32) -> &'static str {
    match signal {
        libc::SIGINT => "interrupted",
        libc::SIGTERM => "terminated",
        _ => "signal",
    }
}
