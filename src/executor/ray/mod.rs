//! The Ray executor: tasks run on the nodes of a real Ray cluster.
//!
//! Ray has no Rust API. The executor starts one Python sidecar
//! (`sidecar.py`, shipped inside the crate) under a Python that has
//! `ray`, and speaks JSON lines with it over stdin/stdout. The sidecar turns
//! each task into one `ray.remote` call (num_cpus, memory, num_gpus, hard
//! node affinity) that runs `lattice-wasm exec` on its node with the task's
//! JSON, so a task gets its sandbox tier there exactly as on a laptop; the
//! ending comes back from a `ref.future()` callback. Cluster membership and
//! totals are read from the dashboard's HTTP API (`/api/v0/nodes`,
//! [`dashboard`]); a head the executor starts itself lives in [`head`].
//!
//! On each node, a small guardian process per Ray worker (in the sidecar's
//! source) spawns the `exec` processes: a force-cancel SIGKILLs the worker
//! and its direct children, and the guardian, detached from it, then kills
//! the task's process group and every orphan the task's sandbox left (a
//! subprocess-tier child runs in its own session under its own uid).
//!
//! [`RayOptions`] is plain data and always built; the executor itself needs
//! the `ray` feature (reqwest, for the dashboard).

mod options;
pub use options::RayOptions;

#[cfg(feature = "ray")]
mod dashboard;
#[cfg(feature = "ray")]
mod executor;
#[cfg(feature = "ray")]
mod head;
#[cfg(feature = "ray")]
mod protocol;
#[cfg(feature = "ray")]
pub use executor::RayExecutor;
