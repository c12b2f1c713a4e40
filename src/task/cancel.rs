//! Cancelling a running task, whatever tier runs it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

type Hook = Box<dyn FnOnce() + Send>;

/// Set once to cancel a task; the tier running it has registered how to stop
/// it (kill a process group, interrupt a Wasm store), which runs at once.
///
/// ```
/// use lattice::task::CancelToken;
///
/// let token = CancelToken::new();
/// let seen_by_the_tier = token.clone();
/// token.cancel();
/// assert!(seen_by_the_tier.is_cancelled());
/// ```
#[derive(Clone, Default)]
pub struct CancelToken {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    cancelled: AtomicBool,
    hook: Mutex<Option<Hook>>,
}

impl CancelToken {
    /// A token nobody has cancelled yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Requests cancellation and runs the registered hook, once.
    pub fn cancel(&self) {
        self.inner.cancelled.store(true, Ordering::SeqCst);
        let hook = self.lock().take();
        if let Some(hook) = hook {
            hook();
        }
    }

    /// True once [`CancelToken::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancelled.load(Ordering::SeqCst)
    }

    /// Registers how to stop the running work; runs it at once if the token
    /// is already cancelled. Replaces any earlier hook.
    pub(crate) fn on_cancel(&self, hook: impl FnOnce() + Send + 'static) {
        let mut slot = self.lock();
        if self.is_cancelled() {
            drop(slot);
            hook();
        } else {
            *slot = Some(Box::new(hook));
        }
    }

    /// Removes the hook: the work it would stop is over.
    pub fn clear(&self) {
        self.lock().take();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Hook>> {
        self.inner.hook.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl std::fmt::Debug for CancelToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CancelToken")
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}
