//! The integration tests, as one binary (each former test binary linked
//! wasmtime and the guests again): one module per suite, the shared helpers
//! in `common`. Suites run one at a time, their own tests in parallel
//! ([`common::suite`]), as when each was its own process. `low_fds` and
//! `host_exhaustion` stay binaries of their own: they change this
//! process's fds and rlimits.

#[path = "../common/mod.rs"]
mod common;

mod attacks;
mod bench;
mod cli;
mod code_runner;
mod docker_tier;
mod faults;
mod hardening;
mod host_functions;
mod load;
mod local_executor;
mod mcp;
mod none_tier;
mod ray_executor;
mod readme;
mod script_mode;
mod seccomp_tier;
mod serve;
mod sessions;
mod subprocess_tier;
mod task_json;
mod wasm_cache;
mod wasm_tier;
