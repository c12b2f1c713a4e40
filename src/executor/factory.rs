//! `create_executor`: an executor by type.

use super::{ExecutorBackend, LocalExecutor, RayOptions};
use crate::sandbox::SandboxConfig;
use crate::task::{ExecutorType, TaskError};

/// Options of [`create_executor`]; each executor takes the ones that apply to it.
#[derive(Clone, Debug, Default)]
pub struct ExecutorOptions {
    /// Local: tasks run at once (default: one per core).
    pub max_workers: Option<usize>,
    /// The executor's sandbox configuration (default: the process-wide one).
    pub sandbox: Option<SandboxConfig>,
    /// Ray: the cluster, the Python with `ray`, the binary on the nodes
    /// (see [`RayOptions`]; its `sandbox` is taken from the field above
    /// when that is set).
    pub ray: RayOptions,
}

/// Makes an executor of the given type.
///
/// ```
/// use lattice::executor::{create_executor, ExecutorOptions, RayOptions};
/// use lattice::task::ExecutorType;
///
/// let executor = create_executor(
///     ExecutorType::Local,
///     ExecutorOptions { max_workers: Some(2), ..Default::default() },
/// )
/// .unwrap();
/// assert_eq!(executor.executor_type(), ExecutorType::Local);
///
/// // Nothing connects before initialize (or the first submit). Built
/// // without the `ray` feature, asking for Ray is sandbox_unavailable.
/// let ray = create_executor(
///     ExecutorType::Ray,
///     ExecutorOptions {
///         ray: RayOptions { address: Some("127.0.0.1:6379".into()), ..Default::default() },
///         ..Default::default()
///     },
/// );
/// if cfg!(feature = "ray") {
///     assert_eq!(ray.unwrap().executor_type(), ExecutorType::Ray);
/// } else {
///     assert!(ray.is_err());
/// }
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
        #[cfg(feature = "ray")]
        ExecutorType::Ray => {
            let mut ray = options.ray;
            if options.sandbox.is_some() {
                ray.sandbox = options.sandbox;
            }
            Ok(Box::new(super::RayExecutor::new(ray)))
        }
        #[cfg(not(feature = "ray"))]
        ExecutorType::Ray => Err(TaskError::unavailable(
            "this build of lattice has no Ray executor: build it with the `ray` feature",
        )),
    }
}
