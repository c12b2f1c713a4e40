//! lattice-wasm: run untrusted Python functions (and Wasm modules, commands,
//! native closures) in a sandbox tier of your choice, on this machine or on a
//! Ray cluster.
//!
//! The layers:
//! - [`task`]: the data: submission, payload, handle, outcome, errors, JSON.
//! - [`sandbox`]: *how* a task is isolated, one module per tier.
//! - [`executor`]: *where* tasks run (local pool, Ray), behind one trait.
//! - [`runner`]: the CodeRunner semantics every tier shares.
//! - [`session`]: Python state kept across calls (REPL-style).
//!
//! ```no_run
//! use lattice::executor::{create_executor, ExecutorOptions};
//! use lattice::task::{ExecutorType, TaskSubmission};
//! use serde_json::json;
//!
//! let executor = create_executor(ExecutorType::Local, ExecutorOptions::default())?;
//! let handle = executor.submit(
//!     TaskSubmission::python("def double(x):\n    return 2 * x\n").with_input(json!(21)),
//! )?;
//! assert_eq!(executor.get_result(&handle).into_result()?, json!(42));
//! # Ok::<(), lattice::task::TaskError>(())
//! ```

pub mod executor;
pub mod runner;
pub mod sandbox;
pub mod session;
pub mod task;

/// The README's Rust examples, compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
