//! The none tier: no isolation, for trusted code.
//!
//! Python runs in a host CPython child (the interpreter the process tiers
//! use) with the caller's environment; only the wall timeout, the CPU and
//! memory rlimits and the output caps apply, because they cost nothing.
//! Native closures never get here: [`super::SandboxExecutor`] runs them
//! in-process.

use super::subprocess::ProcessTier;
use super::{
    reject_unsupported, subprocess, CancelToken, Job, Sandbox, SandboxConfig, SandboxLevel,
    SandboxOutput,
};
use crate::task::TaskError;

pub(crate) struct NoneSandbox;

impl Sandbox for NoneSandbox {
    fn level(&self) -> SandboxLevel {
        SandboxLevel::None
    }

    fn check_available(&self) -> Result<(), TaskError> {
        subprocess::python_interpreter().map(|_| ())
    }

    fn check_config(&self, config: &SandboxConfig) -> Result<(), TaskError> {
        reject_unsupported(SandboxLevel::None, config, false, false)
    }

    fn run(&self, job: &Job<'_>, cancel: &CancelToken) -> SandboxOutput {
        ProcessTier {
            level: SandboxLevel::None,
            isolate: false,
            hook: None,
        }
        .run(job, cancel)
    }
}
