//! A host process whose lowest fds are free (a daemon started with stdin
//! closed, say) still runs tasks on the process tiers: an fd the child
//! uses after its fds 0–3 are replaced (Landlock rules, binds of its own
//! /tmp) must not be one of them. Alone in its binary: it closes fds.

mod common;

use common::*;
use lattice::sandbox::SandboxLevel;
use serde_json::json;

#[test]
fn tasks_run_when_fds_0_and_3_are_free() {
    // SAFETY: this binary's only test; nothing else uses these fds.
    unsafe {
        libc::close(0);
        libc::close(3);
    }
    for level in [SandboxLevel::Subprocess, SandboxLevel::Seccomp] {
        for round in 0..3 {
            let outcome = run_code(level, "def f(x):\n    return x + 1\n", json!(round));
            assert_eq!(ok(&outcome), json!(round + 1), "{level} round {round}");
        }
    }
}
