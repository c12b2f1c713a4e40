//! The Ray executor: tasks run on the nodes of a real Ray cluster.
//!
//! Ray has no Rust API. The executor starts one Python sidecar
//! (`sidecar.py`, shipped inside the crate) under a Python that has
//! `ray`, and speaks JSON lines with it over stdin/stdout ([`protocol`]).
//! Most tasks take the warm path: one actor per node keeps a long-lived
//! `lattice-wasm ray-worker` process ([`worker`]) that runs them as many at
//! a time as its node has CPUs, sent in chunks, their outcomes streamed
//! back; sessions ([`RaySession`]) live in those workers too. A task that
//! asks for a GPU, memory or more than one CPU becomes one `ray.remote`
//! call (num_cpus, memory, num_gpus, hard node affinity) that runs
//! `lattice-wasm exec` on its node, its ending reported from a
//! `ref.future()` callback. Either way a task gets its sandbox tier on the
//! node exactly as on a laptop. Cluster membership and totals are read from
//! the dashboard's HTTP API (`/api/v0/nodes`, [`dashboard`]); a head the
//! executor starts itself lives in [`head`].
//!
//! On each node, a small guardian process per Ray worker (in the sidecar's
//! source) spawns the `exec` processes: a force-cancel SIGKILLs the worker
//! and its direct children, and the guardian, detached from it, then kills
//! the task's process group and every orphan the task's sandbox left (a
//! subprocess-tier child runs in its own session under its own uid). A
//! warm worker runs under a keeper of its own for the same reason: the
//! worker cancels its tasks and exits when its actor goes, and the keeper,
//! a child subreaper detached from the actor, then kills whatever the
//! tasks left, also after the worker itself was killed mid-task.
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
mod session;
#[cfg(feature = "ray")]
mod worker;
#[cfg(feature = "ray")]
pub use executor::RayExecutor;
#[cfg(feature = "ray")]
pub use session::RaySession;
#[cfg(feature = "ray")]
pub use worker::serve_ray_worker;
