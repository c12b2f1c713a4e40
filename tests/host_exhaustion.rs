//! A host that runs short of fds or of address space for a moment: tasks
//! fail typed meanwhile, and run again once it recovers (no failure is
//! cached as "tier unavailable"); no panic. Alone in its binary: it uses
//! up this process's fds and caps its address space.

mod common;

use common::*;
use lattice::executor::{ExecutorBackend, LocalExecutor};
use lattice::sandbox::SandboxLevel;
use lattice::task::{ErrorKind, TaskSubmission};
use serde_json::json;

const TIERS: [SandboxLevel; 4] = [
    SandboxLevel::Wasm,
    SandboxLevel::Subprocess,
    SandboxLevel::Seccomp,
    SandboxLevel::Docker,
];

fn set_limit(resource: libc::__rlimit_resource_t, soft: u64) -> u64 {
    // SAFETY: plain rlimit calls on a struct we own.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        assert_eq!(libc::getrlimit(resource, &mut limit), 0);
        let old = limit.rlim_cur;
        limit.rlim_cur = soft;
        assert_eq!(libc::setrlimit(resource, &limit), 0);
        old
    }
}

fn vm_size() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb << 10
}

#[test]
fn tasks_fail_typed_while_the_host_is_short_and_run_once_it_recovers() {
    let double = "def f(x):\n    return 2 * x\n";

    // No room for a worker thread's stack: submit says so, typed. (First,
    // while no task thread has left a stack in glibc's cache to reuse.)
    let old = set_limit(libc::RLIMIT_AS, vm_size() + (8 << 20));
    let executor = LocalExecutor::new(Some(2), None);
    let refused = executor.submit(TaskSubmission::python(double).with_input(json!(4)));
    set_limit(libc::RLIMIT_AS, old);
    match refused {
        Err(error) => assert_eq!(error.kind(), ErrorKind::SandboxUnavailable, "{error:?}"),
        Ok(handle) => panic!(
            "a worker started with no room for its stack: {:?}",
            executor.get_result(&handle)
        ),
    }
    let handle = executor
        .submit(TaskSubmission::python(double).with_input(json!(5)))
        .unwrap();
    assert_eq!(ok(&executor.get_result(&handle)), json!(10));
    executor.shutdown().unwrap();

    // No fd left: at the very first task of each tier in this process (its
    // setup is what must not stick).
    let old = set_limit(libc::RLIMIT_NOFILE, 256);
    let mut hoard = Vec::new();
    while let Ok(file) = std::fs::File::open("/dev/null") {
        hoard.push(file);
    }
    for level in TIERS {
        let outcome = run_code(level, double, json!(1));
        match &outcome.result {
            Ok(value) => assert_eq!(value, &json!(2), "{level}"),
            Err(error) => assert!(
                matches!(
                    error.kind(),
                    ErrorKind::SandboxUnavailable | ErrorKind::Internal
                ),
                "{level}: {error:?}"
            ),
        }
    }
    drop(hoard);
    set_limit(libc::RLIMIT_NOFILE, old);
    for level in TIERS {
        let outcome = run_code(level, double, json!(3));
        assert_eq!(ok(&outcome), json!(6), "{level} after the fds came back");
    }
}
