//! The seed's `create_executor`.

use super::{ExecutorBackend, LocalExecutor};
use crate::sandbox::SandboxConfig;
use crate::task::{ExecutorType, TaskError};

/// Options of [`create_executor`]; each executor takes the ones that apply to it.
#[derive(Clone, Debug, Default)]
pub struct ExecutorOptions {
    /// Local: tasks run at once (default: one per core).
    pub max_workers: Option<usize>,
    /// The executor's sandbox configuration (default: the process-wide one).
    pub sandbox: Option<SandboxConfig>,
}

/// Makes an executor of the given type.
///
/// ```
/// use lattice::executor::{create_executor, ExecutorOptions};
/// use lattice::task::ExecutorType;
///
/// let executor = create_executor(
///     ExecutorType::Local,
///     ExecutorOptions { max_workers: Some(2), ..Default::default() },
/// )
/// .unwrap();
/// assert_eq!(executor.executor_type(), ExecutorType::Local);
/// ```
pub fn create_executor(
    executor_type: ExecutorType,
    options: ExecutorOptions,
) -> Result<Box<dyn ExecutorBackend>, TaskError> {
    match executor_type {
        ExecutorType::Local => Ok(Box::new(LocalExecutor::new(
            options.max_workers,
            options.sandbox,
        ))),
        ExecutorType::Ray => Err(TaskError::unavailable(
            "the Ray executor is not built into this version of lattice-wasm yet; use the local executor",
        )),
    }
}
