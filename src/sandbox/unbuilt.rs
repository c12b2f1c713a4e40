//! Tiers not built into this version: they answer SandboxUnavailable with
//! the reason, and never fall back to a weaker tier.

use super::{CancelToken, Job, Sandbox, SandboxConfig, SandboxLevel, SandboxOutput};
use crate::task::TaskError;

pub(crate) struct Unbuilt {
    level: SandboxLevel,
    what: &'static str,
}

pub(crate) const DOCKER: Unbuilt = Unbuilt {
    level: SandboxLevel::Docker,
    what: "CPython in a hardened Docker container",
};

impl Sandbox for Unbuilt {
    fn level(&self) -> SandboxLevel {
        self.level
    }

    fn check_available(&self) -> Result<(), TaskError> {
        Err(TaskError::unavailable(format!(
            "the {} tier ({}) is not built into this version of lattice-wasm yet; use the subprocess tier (--tier subprocess)",
            self.level, self.what
        )))
    }

    fn check_config(&self, _config: &SandboxConfig) -> Result<(), TaskError> {
        self.check_available()
    }

    fn run(&self, _job: &Job<'_>, _cancel: &CancelToken) -> SandboxOutput {
        SandboxOutput::error(
            self.check_available()
                .expect_err("an unbuilt tier is never available"),
        )
    }
}
