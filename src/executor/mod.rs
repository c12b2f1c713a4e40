//! Where tasks run: the [`ExecutorBackend`] trait, the [`LocalExecutor`],
//! the [`RayExecutor`], and the factory. An executor never knows how a tier isolates: it hands
//! each task to a [`crate::sandbox::SandboxExecutor`].

mod completion;
mod factory;
mod local;
mod ray;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use factory::{create_executor, ExecutorOptions};
pub use local::LocalExecutor;
#[cfg(feature = "ray")]
#[doc(hidden)]
pub use ray::serve_ray_worker;
pub use ray::RayOptions;
#[cfg(feature = "ray")]
pub use ray::{RayExecutor, RaySession};

use crate::task::{ExecutorType, TaskError, TaskHandle, TaskOutcome, TaskSubmission};

/// A boxed future, so that [`ExecutorBackend`] stays object-safe.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// The seven executor operations, object-safe, usable from blocking
/// code (every method) and async code ([`ExecutorBackend::get_result_async`]).
///
/// ```no_run
/// use lattice::executor::{create_executor, ExecutorOptions};
/// use lattice::task::{ExecutorType, TaskSubmission};
/// use serde_json::json;
/// use std::time::Duration;
///
/// let executor = create_executor(ExecutorType::Local, ExecutorOptions::default()).unwrap();
/// executor.initialize().unwrap();
/// let handle = executor
///     .submit(TaskSubmission::python("def f(x):\n    return x + 1\n").with_input(json!(41)))
///     .unwrap();
/// let (done, pending) = executor.wait(&[handle.clone()], Duration::from_secs(30));
/// assert_eq!((done.len(), pending.len()), (1, 0));
/// assert_eq!(executor.get_result(&handle).into_result().unwrap(), json!(42));
/// executor.shutdown().unwrap();
/// ```
pub trait ExecutorBackend: Send + Sync {
    /// Which kind of executor this is.
    fn executor_type(&self) -> ExecutorType;

    /// Gets ready to run tasks (starts workers, connects to a cluster).
    fn initialize(&self) -> Result<(), TaskError>;

    /// Queues a task. Err means it was not accepted (and gets no outcome);
    /// every accepted task gets exactly one outcome.
    fn submit(&self, task: TaskSubmission) -> Result<TaskHandle, TaskError>;

    /// Blocks until the task has its outcome. An unknown handle gives an
    /// InvalidTask outcome.
    fn get_result(&self, handle: &TaskHandle) -> TaskOutcome;

    /// The outcome, as a future.
    fn get_result_async(&self, handle: &TaskHandle) -> BoxFuture<TaskOutcome>;

    /// Waits up to `timeout` (zero: just look) until every handle is done;
    /// returns (done, pending) in the order given.
    fn wait(&self, handles: &[TaskHandle], timeout: Duration)
        -> (Vec<TaskHandle>, Vec<TaskHandle>);

    /// Cancels a queued or running task; its outcome becomes Cancelled.
    /// False if it had already finished or is unknown.
    fn cancel(&self, handle: &TaskHandle) -> bool;

    /// Stops the executor: see each implementation for whether it drains or
    /// cancels. Nothing it started keeps running.
    fn shutdown(&self) -> Result<(), TaskError>;

    /// The nodes and their resources.
    fn get_available_resources(&self) -> Result<ClusterResources, TaskError>;

    /// Forgets a finished task (its outcome is dropped), so that long runs
    /// keep memory flat. Does nothing to a task that has not finished.
    fn release(&self, handle: &TaskHandle) {
        let _ = handle;
    }
}

/// What an executor can run on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ClusterResources {
    /// One entry per node (the local executor has one, `local`).
    pub nodes: Vec<NodeResources>,
}

/// One node's resources: totals and what is free now. Memory in bytes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct NodeResources {
    /// The node's id (`local`, or Ray's 56 hex digits).
    pub node_id: String,
    /// The node's IP address.
    pub node_ip: String,
    /// Whether the node is up.
    pub alive: bool,
    /// CPUs in all.
    pub cpu: f64,
    /// CPUs not taken by running tasks.
    pub cpu_available: f64,
    /// Memory in all, bytes.
    pub memory: u64,
    /// Memory not taken, bytes.
    pub memory_available: u64,
    /// GPUs in all.
    pub gpu: f64,
    /// GPUs not taken.
    pub gpu_available: f64,
}
