//! A task's outcome slot, set once and awaited from blocking or async code,
//! and the handle table every executor keeps its tasks in.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use super::BoxFuture;
use crate::sandbox::{wait_soon, REPLY_SPIN};
use crate::task::{ExecutorType, TaskError, TaskHandle, TaskOutcome};

/// What an executor keeps per task; it has the task's completion.
pub(crate) trait TaskSlot {
    fn completion(&self) -> &Arc<Completion>;
}

/// One executor's tasks by handle: the handle checks, `get_result`,
/// `get_result_async`, `wait` and `release`, the same for every executor.
pub(crate) struct HandleTable<S> {
    executor_type: ExecutorType,
    signal: Arc<Signal>,
    inner: Mutex<Slots<S>>,
}

struct Slots<S> {
    by_id: HashMap<u64, Arc<S>>,
    next_id: u64,
    /// Why no task is accepted any more.
    closed: Option<TaskError>,
}

impl<S: TaskSlot> HandleTable<S> {
    pub(crate) fn new(executor_type: ExecutorType) -> Self {
        HandleTable {
            executor_type,
            signal: Arc::new(Signal::default()),
            inner: Mutex::new(Slots {
                by_id: HashMap::new(),
                next_id: 0,
                closed: None,
            }),
        }
    }

    /// A completion for a new task, waking this table's waiters.
    pub(crate) fn new_completion(&self) -> Arc<Completion> {
        Arc::new(Completion::new(self.signal.clone()))
    }

    /// Adds a task and gives it its handle; once closed, the reason.
    pub(crate) fn insert(&self, slot: Arc<S>) -> Result<TaskHandle, TaskError> {
        let mut slots = lock(&self.inner);
        if let Some(error) = &slots.closed {
            return Err(error.clone());
        }
        let handle_id = slots.next_id;
        slots.next_id += 1;
        slots.by_id.insert(handle_id, slot);
        Ok(TaskHandle {
            handle_id,
            executor_type: self.executor_type,
        })
    }

    /// Refuses tasks from now on with `error`; returns every task it has.
    pub(crate) fn close(&self, error: TaskError) -> Vec<Arc<S>> {
        let mut slots = lock(&self.inner);
        slots.closed.get_or_insert(error);
        slots.by_id.values().cloned().collect()
    }

    /// Open again and empty (a fresh start after a failed one); handle ids
    /// keep counting, so an old handle never names a new task.
    #[cfg_attr(not(feature = "ray"), allow(dead_code))] // the Ray executor's
    pub(crate) fn reset(&self) {
        let mut slots = lock(&self.inner);
        slots.by_id.clear();
        slots.closed = None;
    }

    /// The task of `handle`, if this executor made it.
    pub(crate) fn get(&self, handle: &TaskHandle) -> Option<Arc<S>> {
        if handle.executor_type != self.executor_type {
            return None;
        }
        self.by_id(handle.handle_id)
    }

    /// The task with this handle id.
    pub(crate) fn by_id(&self, id: u64) -> Option<Arc<S>> {
        lock(&self.inner).by_id.get(&id).cloned()
    }

    /// Every task, with its handle id.
    #[cfg_attr(not(feature = "ray"), allow(dead_code))] // the Ray executor's
    pub(crate) fn entries(&self) -> Vec<(u64, Arc<S>)> {
        lock(&self.inner)
            .by_id
            .iter()
            .map(|(&id, slot)| (id, slot.clone()))
            .collect()
    }

    fn completion(&self, handle: &TaskHandle) -> Option<Arc<Completion>> {
        self.get(handle).map(|slot| slot.completion().clone())
    }

    /// `get_result`: the outcome, once there is one.
    pub(crate) fn get_result(&self, handle: &TaskHandle) -> TaskOutcome {
        result_of(self.completion(handle), handle)
    }

    /// `get_result_async`.
    pub(crate) fn get_result_async(&self, handle: &TaskHandle) -> BoxFuture<TaskOutcome> {
        future_of(self.completion(handle), handle)
    }

    /// `wait`: (finished, pending) once all finished or `timeout` passed.
    pub(crate) fn wait(
        &self,
        handles: &[TaskHandle],
        timeout: std::time::Duration,
    ) -> (Vec<TaskHandle>, Vec<TaskHandle>) {
        let completions: Vec<_> = handles.iter().map(|h| self.completion(h)).collect();
        wait_for(handles, &completions, &self.signal, timeout)
    }

    /// `release`: forgets a finished task.
    pub(crate) fn release(&self, handle: &TaskHandle) {
        if handle.executor_type != self.executor_type {
            return;
        }
        let mut slots = lock(&self.inner);
        if slots
            .by_id
            .get(&handle.handle_id)
            .is_some_and(|slot| slot.completion().is_done())
        {
            slots.by_id.remove(&handle.handle_id);
        }
    }
}

/// `get_result` of an executor whose task `handle` has `completion` (none:
/// the handle is not one of its own).
fn result_of(completion: Option<Arc<Completion>>, handle: &TaskHandle) -> TaskOutcome {
    match completion {
        Some(completion) => completion.wait(),
        None => unknown_handle(handle),
    }
}

/// `get_result_async`, as [`result_of`].
fn future_of(completion: Option<Arc<Completion>>, handle: &TaskHandle) -> BoxFuture<TaskOutcome> {
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
fn wait_for(
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

    /// Blocks until the outcome is set (short tasks end while it still looks).
    pub(super) fn wait(&self) -> TaskOutcome {
        wait_soon(&self.state, &self.done, REPLY_SPIN, |state| {
            state.outcome.clone()
        })
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
