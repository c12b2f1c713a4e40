//! The command line's grammar (src/cli/args.rs, compiled in as is) on
//! arbitrary argument vectors: parsing and turning flags into a sandbox
//! config, Ray options or a task must never panic, and what parses must
//! describe limits that can be enforced.

#![no_main]

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use clap::Parser;
use lattice::sandbox::SandboxConfig;
use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../src/cli/args.rs"]
mod args;

use args::{Cli, Command};

fuzz_target!(|data: &[u8]| {
    // NUL separates arguments; an argument needn't be UTF-8.
    let argv = std::iter::once(OsString::from("lattice-wasm"))
        .chain(data.split(|b| *b == 0).map(|a| OsString::from_vec(a.to_vec())));
    let cli = match Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.render().to_string();
            return;
        }
    };
    match cli.command {
        Command::Run(args) => {
            enforceable(&args.limits.config());
            let input_file = args.input_file.as_ref().map(|_| "[1]");
            let stdin = args.script.then(|| b"1 2\n".to_vec());
            let _ = args.task(b"def f(x):\n    return x\n".to_vec(), input_file, stdin);
        }
        Command::Batch(args) => {
            enforceable(&args.limits.config());
            let _ = args.ray.options();
        }
        Command::Exec(args) => enforceable(&args.limits.config()),
        Command::Resources(args) => {
            let _ = args.ray.options();
        }
        Command::Repl(args) => enforceable(&args.session.config()),
        Command::Mcp(args) => enforceable(&args.config()),
        Command::Serve(args) => {
            let config = args.limits.config();
            enforceable(&config);
            let _ = args.policy.policy(&config);
            let _ = args.ray.options();
        }
        Command::Doctor(_) | Command::Bench(_) | Command::RayWorker(_) => {}
    }
});

fn enforceable(config: &SandboxConfig) {
    assert!(!config.timeout.is_zero(), "zero timeout accepted");
    assert!(!config.max_cpu_time.is_zero(), "zero CPU limit accepted");
    assert!(config.max_memory_mb >= 1, "zero memory limit accepted");
    if let Some(calls) = &config.allowed_syscalls {
        assert!(
            calls.iter().all(|c| (0..4096).contains(c)),
            "a system call number out of range accepted: {calls:?}"
        );
    }
}
