//! A task's outcome slot: set once, awaited from blocking or async code.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use super::BoxFuture;
use crate::task::{TaskError, TaskHandle, TaskOutcome};

/// `get_result` of an executor whose task `handle` has `completion` (none:
/// the handle is not one of its own).
pub(crate) fn result_of(completion: Option<Arc<Completion>>, handle: &TaskHandle) -> TaskOutcome {
    match completion {
        Some(completion) => completion.wait(),
        None => unknown_handle(handle),
    }
}

/// `get_result_async`, as [`result_of`].
pub(crate) fn future_of(
    completion: Option<Arc<Completion>>,
    handle: &TaskHandle,
) -> BoxFuture<TaskOutcome> {
    match completion {
        Some(completion) => Box::pin(completion.future()),
        None => {
            let outcome = unknown_handle(handle);
            Box::pin(async move { outcome })
        }
    }
}

/// `wait`: splits `handles` (with their completions, none for a foreign
/// handle, which counts as done) into finished and pending, waiting on
/// `signal` until all are finished or `timeout` passes.
pub(crate) fn wait_for(
    handles: &[TaskHandle],
    completions: &[Option<Arc<Completion>>],
    signal: &Signal,
    timeout: std::time::Duration,
) -> (Vec<TaskHandle>, Vec<TaskHandle>) {
    let deadline = Instant::now().checked_add(timeout);
    loop {
        let seen = signal.generation();
        let (done, pending): (Vec<_>, Vec<_>) = handles
            .iter()
            .zip(completions)
            .partition(|(_, completion)| completion.as_ref().is_none_or(|c| c.is_done()));
        let unzip = |v: Vec<(&TaskHandle, _)>| v.into_iter().map(|(h, _)| h.clone()).collect();
        if pending.is_empty() || deadline.is_some_and(|d| Instant::now() >= d) {
            return (unzip(done), unzip(pending));
        }
        signal.wait_past(seen, deadline);
    }
}

fn unknown_handle(handle: &TaskHandle) -> TaskOutcome {
    TaskOutcome::from_error(
        None,
        TaskError::invalid(format!(
            "handle {} ({}) was not made by this executor",
            handle.handle_id, handle.executor_type
        )),
    )
}

/// Wakes whoever waits for "some task of this executor finished".
#[derive(Default)]
pub(crate) struct Signal {
    generation: Mutex<u64>,
    changed: Condvar,
}

impl Signal {
    pub(super) fn generation(&self) -> u64 {
        *lock(&self.generation)
    }

    fn notify(&self) {
        *lock(&self.generation) += 1;
        self.changed.notify_all();
    }

    /// Waits until the generation moves past `seen` or `deadline` passes.
    pub(super) fn wait_past(&self, seen: u64, deadline: Option<Instant>) {
        let mut generation = lock(&self.generation);
        while *generation == seen {
            match deadline {
                None => {
                    generation = self
                        .changed
                        .wait(generation)
                        .unwrap_or_else(|e| e.into_inner())
                }
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return;
                    }
                    generation = self
                        .changed
                        .wait_timeout(generation, deadline - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
    }
}

/// The outcome of one task, written once.
pub(crate) struct Completion {
    state: Mutex<State>,
    done: Condvar,
    signal: Arc<Signal>,
}

#[derive(Default)]
struct State {
    outcome: Option<TaskOutcome>,
    wakers: Vec<Waker>,
}

impl Completion {
    pub(super) fn new(signal: Arc<Signal>) -> Self {
        Completion {
            state: Mutex::new(State::default()),
            done: Condvar::new(),
            signal,
        }
    }

    /// Sets the outcome unless one is set already; true if this call set it.
    pub(super) fn complete(&self, outcome: TaskOutcome) -> bool {
        let wakers = {
            let mut state = lock(&self.state);
            if state.outcome.is_some() {
                return false;
            }
            state.outcome = Some(outcome);
            std::mem::take(&mut state.wakers)
        };
        self.done.notify_all();
        for waker in wakers {
            waker.wake();
        }
        self.signal.notify();
        true
    }

    pub(super) fn is_done(&self) -> bool {
        lock(&self.state).outcome.is_some()
    }

    /// Blocks until the outcome is set.
    pub(super) fn wait(&self) -> TaskOutcome {
        let mut state = lock(&self.state);
        loop {
            if let Some(outcome) = &state.outcome {
                return outcome.clone();
            }
            state = self.done.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// A future of the outcome.
    pub(super) fn future(self: Arc<Self>) -> CompletionFuture {
        CompletionFuture { completion: self }
    }
}

/// Resolves to a task's outcome.
pub(crate) struct CompletionFuture {
    completion: Arc<Completion>,
}

impl Future for CompletionFuture {
    type Output = TaskOutcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<TaskOutcome> {
        let mut state = lock(&self.completion.state);
        match &state.outcome {
            Some(outcome) => Poll::Ready(outcome.clone()),
            None => {
                if !state.wakers.iter().any(|w| w.will_wake(cx.waker())) {
                    state.wakers.push(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
