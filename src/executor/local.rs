//! The local executor: a bounded pool of worker threads on this machine.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use super::completion::{Completion, HandleTable, TaskSlot};
use super::{BoxFuture, ClusterResources, ExecutorBackend, NodeResources};
use crate::sandbox::{
    get_sandbox_config, meminfo, wait_soon, CancelToken, SandboxConfig, SandboxExecutor,
    SandboxLevel, NEXT_JOB_SPIN,
};
use crate::task::{ExecutorType, Payload, TaskError, TaskHandle, TaskOutcome, TaskSubmission};

/// The id of the one node of the local executor.
pub(super) const LOCAL_NODE_ID: &str = "local";

/// Runs tasks on this machine, at most `max_workers` at a time (default: the
/// number of cores), each in its sandbox tier.
///
/// Unlike a plain thread pool, `wait` honours its timeout and
/// `cancel` also stops a running task (its process is killed). `shutdown`
/// **cancels** whatever is queued or running and returns once nothing runs;
/// to drain instead, `wait` for the handles first. Dropping the executor
/// shuts it down.
pub struct LocalExecutor {
    shared: Arc<Shared>,
}

struct Shared {
    max_workers: usize,
    /// The executor's own configuration; None: the process-wide one at submit.
    sandbox: Option<SandboxConfig>,
    state: Mutex<State>,
    work_ready: Condvar,
    tasks: HandleTable<Slot>,
    /// Native closures running now (they can't be interrupted).
    native_running: AtomicUsize,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Arc<Slot>>,
    running: usize,
    workers: Vec<JoinHandle<()>>,
    shut_down: bool,
}

struct Slot {
    /// Taken by the worker that runs it, or by a cancel while queued.
    task: Mutex<Option<TaskSubmission>>,
    id: Option<serde_json::Value>,
    native: bool,
    /// The tier the task runs in (none for a native closure).
    level: SandboxLevel,
    config: SandboxConfig,
    cancel: CancelToken,
    completion: Arc<Completion>,
}

impl TaskSlot for Slot {
    fn completion(&self) -> &Arc<Completion> {
        &self.completion
    }
}

impl Slot {
    /// Cancels the task unless it has finished; true if it was cancelled.
    fn cancel(&self) -> bool {
        if self.completion.is_done() {
            return false;
        }
        let queued = self
            .task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .is_some();
        self.cancel.cancel();
        if queued || self.native {
            // Nothing of it runs (or, for a native closure, nothing can stop
            // the thread): the outcome is final now. A running process-tier
            // task is killed instead, and its worker reports Cancelled once
            // the process is gone.
            self.completion.complete(TaskOutcome {
                tier: Some(self.level),
                node_id: Some(LOCAL_NODE_ID.into()),
                ..TaskOutcome::from_error(self.id.clone(), TaskError::Cancelled)
            });
        }
        true
    }
}

impl LocalExecutor {
    /// A local executor with `max_workers` workers (None: one per core) and
    /// its own sandbox configuration (None: the process-wide one).
    pub fn new(max_workers: Option<usize>, sandbox: Option<SandboxConfig>) -> Self {
        let max_workers = max_workers
            .filter(|&n| n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        LocalExecutor {
            shared: Arc::new(Shared {
                max_workers,
                sandbox,
                state: Mutex::new(State::default()),
                work_ready: Condvar::new(),
                tasks: HandleTable::new(ExecutorType::Local),
                native_running: AtomicUsize::new(0),
            }),
        }
    }

    /// The number of workers.
    pub fn max_workers(&self) -> usize {
        self.shared.max_workers
    }

    /// Queues a task to run under `config` (its own overrides still
    /// apply), whatever this executor's configuration is: the Ray worker's
    /// tasks each bring the one their executor resolved at submit.
    pub(crate) fn submit_configured(
        &self,
        task: TaskSubmission,
        config: SandboxConfig,
    ) -> Result<TaskHandle, TaskError> {
        if let Some(node) = &task.node_id {
            if node != LOCAL_NODE_ID {
                return Err(TaskError::invalid(format!(
                    "node '{node}' is not part of the local executor (its only node is '{LOCAL_NODE_ID}')"
                )));
            }
        }
        let gpus = gpu_count();
        if let Some(asked) = task.resources.gpu.filter(|&g| g > 0.0) {
            if asked > gpus as f64 {
                return Err(TaskError::invalid(format!(
                    "the task asks for {asked} GPU(s) but this machine has {gpus}"
                )));
            }
        }
        let native = matches!(task.payload, Payload::Native(_));
        let slot = Arc::new(Slot {
            id: task.id.clone(),
            native,
            level: match task.sandbox.tier {
                _ if native => SandboxLevel::None,
                Some(level) => level,
                None => config.tier,
            },
            task: Mutex::new(Some(task)),
            config,
            cancel: CancelToken::new(),
            completion: self.shared.tasks.new_completion(),
        });
        let mut state = self.shared.lock();
        if state.shut_down {
            return Err(shut_down());
        }
        self.start_workers(&mut state)?;
        // Under the state's lock: a shutdown sees this task or refuses it.
        let handle = self.shared.tasks.insert(slot.clone())?;
        state.queue.push_back(slot);
        drop(state);
        self.shared.work_ready.notify_one();
        Ok(handle)
    }

    /// Starts the missing workers. Failing to start even one is an error
    /// (the task would never run); fewer than asked, the ones started serve.
    fn start_workers(&self, state: &mut State) -> Result<(), TaskError> {
        while state.workers.len() < self.shared.max_workers {
            let shared = self.shared.clone();
            let name = format!("lattice-worker-{}", state.workers.len());
            match crate::sandbox::spawn_task_thread(name, move || shared.work()) {
                Ok(worker) => state.workers.push(worker),
                Err(_) if !state.workers.is_empty() => break,
                Err(e) => {
                    return Err(TaskError::unavailable(format!(
                        "the OS refused to start a worker thread: {e}"
                    )))
                }
            }
        }
        Ok(())
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A worker: runs queued tasks until shutdown.
    fn work(&self) {
        loop {
            let next = wait_soon(&self.state, &self.work_ready, NEXT_JOB_SPIN, |state| {
                if state.shut_down {
                    return Some(None);
                }
                let slot = state.queue.pop_front()?;
                state.running += 1;
                Some(Some(slot))
            });
            let Some(slot) = next else {
                return;
            };
            let task = slot.task.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(task) = task {
                if slot.native {
                    self.native_running.fetch_add(1, Ordering::SeqCst);
                }
                let mut outcome =
                    SandboxExecutor::new(slot.config.clone()).run(&task, &slot.cancel);
                if slot.native {
                    self.native_running.fetch_sub(1, Ordering::SeqCst);
                }
                outcome.node_id = Some(LOCAL_NODE_ID.into());
                slot.completion.complete(outcome);
            }
            self.lock().running -= 1;
        }
    }
}

impl ExecutorBackend for LocalExecutor {
    fn executor_type(&self) -> ExecutorType {
        ExecutorType::Local
    }

    fn initialize(&self) -> Result<(), TaskError> {
        let mut state = self.shared.lock();
        if state.shut_down {
            return Err(shut_down());
        }
        self.start_workers(&mut state)
    }

    fn submit(&self, task: TaskSubmission) -> Result<TaskHandle, TaskError> {
        let config = self
            .shared
            .sandbox
            .clone()
            .unwrap_or_else(get_sandbox_config);
        self.submit_configured(task, config)
    }

    fn get_result(&self, handle: &TaskHandle) -> TaskOutcome {
        self.shared.tasks.get_result(handle)
    }

    fn get_result_async(&self, handle: &TaskHandle) -> BoxFuture<TaskOutcome> {
        self.shared.tasks.get_result_async(handle)
    }

    fn wait(
        &self,
        handles: &[TaskHandle],
        timeout: Duration,
    ) -> (Vec<TaskHandle>, Vec<TaskHandle>) {
        self.shared.tasks.wait(handles, timeout)
    }

    fn cancel(&self, handle: &TaskHandle) -> bool {
        self.shared
            .tasks
            .get(handle)
            .is_some_and(|slot| slot.cancel())
    }

    fn shutdown(&self) -> Result<(), TaskError> {
        let (workers, slots) = {
            let mut state = self.shared.lock();
            state.shut_down = true;
            state.queue.clear();
            let slots = self.shared.tasks.close(shut_down());
            (std::mem::take(&mut state.workers), slots)
        };
        for slot in &slots {
            slot.cancel();
        }
        self.shared.work_ready.notify_all();
        for worker in workers {
            // A worker still inside a native closure can't be stopped: leave
            // it detached rather than block until the closure returns.
            if worker.is_finished() || self.shared.native_running.load(Ordering::SeqCst) == 0 {
                let _ = worker.join();
            }
        }
        Ok(())
    }

    fn get_available_resources(&self) -> Result<ClusterResources, TaskError> {
        let cpu = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let running = self.shared.lock().running as f64;
        let [memory, memory_available] = meminfo(["MemTotal:", "MemAvailable:"]);
        let gpu = gpu_count() as f64;
        Ok(ClusterResources {
            nodes: vec![NodeResources {
                node_id: LOCAL_NODE_ID.into(),
                node_ip: "127.0.0.1".into(),
                alive: true,
                cpu,
                cpu_available: (cpu - running).max(0.0),
                memory,
                memory_available,
                gpu,
                gpu_available: gpu,
            }],
        })
    }

    fn release(&self, handle: &TaskHandle) {
        self.shared.tasks.release(handle);
    }
}

impl Drop for LocalExecutor {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

fn shut_down() -> TaskError {
    TaskError::invalid("the executor is shut down")
}

/// NVIDIA GPUs the driver reports (0 without a driver), read once.
fn gpu_count() -> usize {
    static GPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *GPUS.get_or_init(|| std::fs::read_dir("/proc/driver/nvidia/gpus").map_or(0, |dir| dir.count()))
}
