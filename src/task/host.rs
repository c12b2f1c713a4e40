//! Host functions: Rust closures that sandboxed Python code calls by name.
//!
//! Register them on a [`HostFunctions`] and give it to a session
//! (`lattice::session::Session::builder`) or to a one-shot task
//! ([`TaskSubmission::with_host_functions`](crate::task::TaskSubmission::with_host_functions)).
//! The code sees each as an ordinary Python function of that name, called
//! with positional and keyword arguments that are JSON; what the closure
//! returns comes back as the call's value. A closure's error raises
//! `HostError` in the code, carrying only the closure's message. The code
//! can call only the names registered, within [`HostLimits`], and a
//! call's time counts against the call's wall-clock limit.
//!
//! ```no_run
//! use lattice::sandbox::SandboxConfig;
//! use lattice::session::Session;
//! use lattice::task::{HostError, HostFunctions};
//! use serde_json::json;
//!
//! let functions = HostFunctions::new()
//!     .register("add", |call| {
//!         let a = call.args.first().and_then(|v| v.as_i64()).ok_or_else(|| HostError::new("add(a, b): numbers"))?;
//!         let b = call.args.get(1).and_then(|v| v.as_i64()).unwrap_or(0);
//!         Ok(json!(a + b))
//!     })
//!     .register_async("weather", |call| async move {
//!         let city = call.kwargs.get("city").cloned().unwrap_or(json!("?"));
//!         Ok(json!({"city": city, "sky": "clear"}))
//!     });
//! let session = Session::builder(SandboxConfig::default())
//!     .host_functions(functions)
//!     .open()?;
//! assert_eq!(session.exec("add(2, 3)").result?, json!(5));
//! assert_eq!(session.exec("weather(city='Oslo')['sky']").result?, json!("clear"));
//! # Ok::<(), lattice::task::TaskError>(())
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::TaskError;

/// One call of a host function: its name and its JSON arguments.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct HostCall {
    /// The name it was called by.
    pub name: String,
    /// Positional arguments.
    pub args: Vec<Value>,
    /// Keyword arguments.
    pub kwargs: Map<String, Value>,
}

/// A host function's failure: raised as `HostError(message)` in the code
/// that called it. Only the message crosses into the sandbox.
///
/// Any `std::error::Error` converts into one (so `?` works in a closure);
/// other messages through [`HostError::new`].
pub struct HostError {
    message: String,
}

impl HostError {
    /// A failure with this message.
    pub fn new(message: impl Into<String>) -> HostError {
        HostError {
            message: message.into(),
        }
    }

    /// The message the code sees.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl<E: std::error::Error> From<E> for HostError {
    fn from(error: E) -> HostError {
        HostError::new(error.to_string())
    }
}

impl fmt::Debug for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("HostError").field(&self.message).finish()
    }
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// What host calls one exec (or one task) may make. A call past a limit
/// raises `HostCallLimitError` in the code (and so does every later one of
/// that exec); the host function is not called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostLimits {
    /// Calls per exec.
    pub max_calls: u32,
    /// Bytes of arguments (their JSON) per exec, all calls together.
    pub max_bytes_in: u64,
    /// Bytes of results (their JSON) per exec, all calls together.
    pub max_bytes_out: u64,
}

impl Default for HostLimits {
    /// 10,000 calls, 16 MiB in and 16 MiB out per exec.
    fn default() -> Self {
        HostLimits {
            max_calls: 10_000,
            max_bytes_in: 16 << 20,
            max_bytes_out: 16 << 20,
        }
    }
}

type SyncFn = dyn Fn(HostCall) -> Result<Value, HostError> + Send + Sync;
type AsyncFn = dyn Fn(HostCall) -> Pin<Box<dyn Future<Output = Result<Value, HostError>> + Send>>
    + Send
    + Sync;

/// How a registered function runs.
pub(crate) enum HostFunction {
    /// On the thread that serves the call.
    Sync(Box<SyncFn>),
    /// On a Tokio runtime: the one current when it was registered (if it is
    /// multi-threaded), else lattice's own.
    Async {
        function: Box<AsyncFn>,
        runtime: Option<tokio::runtime::Handle>,
    },
}

/// Named host functions and the limits on calling them. Cheap to clone
/// (the closures are shared).
#[derive(Clone, Default)]
pub struct HostFunctions {
    functions: Arc<BTreeMap<String, Arc<HostFunction>>>,
    limits: HostLimits,
}

impl HostFunctions {
    /// No functions, the default limits.
    pub fn new() -> HostFunctions {
        HostFunctions::default()
    }

    /// Adds a function the code calls as `name(...)`; it runs on the thread
    /// that serves the call. A name registered again is replaced.
    pub fn register<F>(mut self, name: impl Into<String>, function: F) -> HostFunctions
    where
        F: Fn(HostCall) -> Result<Value, HostError> + Send + Sync + 'static,
    {
        Arc::make_mut(&mut self.functions).insert(
            name.into(),
            Arc::new(HostFunction::Sync(Box::new(function))),
        );
        self
    }

    /// Adds an async function the code calls as `name(...)` (the code
    /// waits for it). It runs on the Tokio runtime current here if that is
    /// multi-threaded, else on one of lattice's; at the call's deadline or
    /// cancel it is dropped.
    pub fn register_async<F, Fut>(mut self, name: impl Into<String>, function: F) -> HostFunctions
    where
        F: Fn(HostCall) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, HostError>> + Send + 'static,
    {
        let runtime = tokio::runtime::Handle::try_current()
            .ok()
            .filter(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let function: Box<AsyncFn> = Box::new(move |call| Box::pin(function(call)));
        Arc::make_mut(&mut self.functions).insert(
            name.into(),
            Arc::new(HostFunction::Async { function, runtime }),
        );
        self
    }

    /// These functions under `limits`.
    pub fn with_limits(mut self, limits: HostLimits) -> HostFunctions {
        self.limits = limits;
        self
    }

    /// The limits on calling them.
    pub fn limits(&self) -> HostLimits {
        self.limits
    }

    /// The registered names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.functions.keys().map(String::as_str)
    }

    /// True if none is registered.
    pub fn is_empty(&self) -> bool {
        self.functions.is_empty()
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Arc<HostFunction>> {
        self.functions.get(name)
    }

    /// Ok if every name can be a Python function's name: an identifier,
    /// not a keyword, not starting with `_` (the driver's own names do).
    pub fn check(&self) -> Result<(), TaskError> {
        for name in self.functions.keys() {
            let mut chars = name.chars();
            let identifier = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !identifier || PYTHON_KEYWORDS.contains(&name.as_str()) {
                return Err(TaskError::invalid(format!(
                    "host function name {name:?} is not usable from Python: use an ASCII identifier that starts with a letter and is not a keyword"
                )));
            }
        }
        Ok(())
    }
}

const PYTHON_KEYWORDS: [&str; 35] = [
    "False", "None", "True", "and", "as", "assert", "async", "await", "break", "class", "continue",
    "def", "del", "elif", "else", "except", "finally", "for", "from", "global", "if", "import",
    "in", "is", "lambda", "nonlocal", "not", "or", "pass", "raise", "return", "try", "while",
    "with", "yield",
];

impl fmt::Debug for HostFunctions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostFunctions")
            .field("names", &self.names().collect::<Vec<_>>())
            .field("limits", &self.limits)
            .finish()
    }
}

impl PartialEq for HostFunctions {
    /// The same closures (not equal ones: closures don't compare) and limits.
    fn eq(&self, other: &Self) -> bool {
        self.limits == other.limits
            && self.functions.len() == other.functions.len()
            && self
                .functions
                .iter()
                .zip(other.functions.iter())
                .all(|((a, f), (b, g))| a == b && Arc::ptr_eq(f, g))
    }
}
