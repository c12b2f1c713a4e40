//! What task lines may ask for: the operator's bounds.
//!
//! A task from a file, a pipe or a request (the CLI's `batch` and `exec`)
//! carries its own settings; the operator who runs them decides how far
//! those may go. A task asking beyond the [`Policy`] is `invalid_task`,
//! naming the cap, before anything of it runs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{SandboxConfig, SandboxLevel};
use crate::task::{Payload, TaskError, TaskSubmission, WasmSource};

/// The operator's bounds on task lines.
///
/// ```
/// use lattice::sandbox::{Policy, SandboxConfig, SandboxLevel};
/// use lattice::task::TaskSubmission;
///
/// let config = SandboxConfig::default();
/// let policy = Policy::for_config(&config);
/// let asks_none = TaskSubmission::python("def f(): pass").with_tier(SandboxLevel::None);
/// assert!(policy.check(&asks_none, &config).is_err());
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// The tiers a task may ask for (its own `tier` or the default).
    pub allowed_tiers: Vec<SandboxLevel>,
    /// The most a task may ask for as `timeout_s`.
    pub max_timeout: Duration,
    /// The most a task may ask for as `max_cpu_time_s`.
    pub max_cpu_time: Duration,
    /// The most a task may ask for as `max_memory_mb`.
    pub max_memory_mb: u64,
    /// Whether a task may ask for `network: true`.
    pub allow_network: bool,
    /// Host directories a task may mount (and read a Wasm payload from by
    /// path), with whether it may mount them writable.
    pub allowed_mounts: Vec<AllowedMount>,
}

/// A host directory task lines may mount, and all beneath it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowedMount {
    /// The host directory (absolute, resolved).
    pub path: PathBuf,
    /// Whether task lines may mount it writable.
    pub writable: bool,
}

impl std::str::FromStr for AllowedMount {
    type Err = TaskError;

    /// `PATH` (read-only) or `PATH:rw`; the path must be absolute.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (path, writable) = match s.strip_suffix(":rw") {
            Some(path) => (path, true),
            None => (s.strip_suffix(":ro").unwrap_or(s), false),
        };
        if !path.starts_with('/') {
            return Err(TaskError::invalid(format!(
                "allowed mount '{s}' is not an absolute PATH or PATH:rw"
            )));
        }
        Ok(AllowedMount {
            path: PathBuf::from(path),
            writable,
        })
    }
}

impl Policy {
    /// The bounds of an operator whose settings are `config`: its values
    /// are the caps (a task may ask for less, not more), every tier but
    /// `none` is allowed (and `none` too if `config` names it), no network
    /// and no mounts.
    pub fn for_config(config: &SandboxConfig) -> Policy {
        let mut allowed_tiers: Vec<SandboxLevel> = SandboxLevel::ALL
            .into_iter()
            .filter(|&level| level != SandboxLevel::None)
            .collect();
        if config.tier == SandboxLevel::None {
            allowed_tiers.insert(0, SandboxLevel::None);
        }
        Policy {
            allowed_tiers,
            max_timeout: config.timeout,
            max_cpu_time: config.max_cpu_time,
            max_memory_mb: config.max_memory_mb,
            allow_network: config.network,
            allowed_mounts: Vec::new(),
        }
    }

    /// No bounds at all: every tier, no caps, the network and any mount —
    /// for a configuration resolved and bounded elsewhere (the Ray
    /// executor's, sent whole to `exec --sandbox-config`). The rules every
    /// tier keeps (no system trees, the result limit, ...) still hold.
    pub fn unbounded() -> Policy {
        Policy {
            allowed_tiers: SandboxLevel::ALL.to_vec(),
            max_timeout: Duration::MAX,
            max_cpu_time: Duration::MAX,
            max_memory_mb: u64::MAX,
            allow_network: true,
            allowed_mounts: vec![AllowedMount {
                path: PathBuf::from("/"),
                writable: true,
            }],
        }
    }

    /// Ok if `task`, run with the operator's `config`, stays within the
    /// bounds; else `invalid_task` naming the one it crosses.
    pub fn check(&self, task: &TaskSubmission, config: &SandboxConfig) -> Result<(), TaskError> {
        let asked = &task.sandbox;
        let tier = asked.tier.unwrap_or(config.tier);
        if matches!(task.payload, Payload::Native(_)) {
            return Err(TaskError::invalid(
                "a native closure can't come from a task line",
            ));
        }
        if !self.allowed_tiers.contains(&tier) {
            let allowed: Vec<&str> = self.allowed_tiers.iter().map(|t| t.as_str()).collect();
            return Err(TaskError::invalid(format!(
                "the {tier} tier is not allowed here (the operator allows {}; --allow-tiers)",
                allowed.join(", ")
            )));
        }
        let over = |what: &str, asked: String, cap: String, flag: &str| {
            TaskError::invalid(format!(
                "{what} {asked} is above the operator's cap of {cap} ({flag})"
            ))
        };
        if let Some(timeout) = asked.timeout.filter(|&t| t > self.max_timeout) {
            return Err(over(
                "timeout_s",
                seconds(timeout),
                seconds(self.max_timeout),
                "--timeout",
            ));
        }
        if let Some(cpu) = asked.max_cpu_time.filter(|&t| t > self.max_cpu_time) {
            return Err(over(
                "max_cpu_time_s",
                seconds(cpu),
                seconds(self.max_cpu_time),
                "--max-cpu-time",
            ));
        }
        if let Some(mb) = asked.max_memory_mb.filter(|&mb| mb > self.max_memory_mb) {
            return Err(over(
                "max_memory_mb",
                mb.to_string(),
                format!("{} MiB", self.max_memory_mb),
                "--max-memory-mb",
            ));
        }
        if asked.network == Some(true) && !self.allow_network {
            return Err(TaskError::invalid(
                "the task asks for the network, which the operator does not allow (--allow-network)",
            ));
        }
        for mount in asked.mounts.iter().flatten() {
            self.check_path(&mount.host, mount.writable, "mount")?;
        }
        if let Payload::Wasm(WasmSource::Path(path)) = &task.payload {
            self.check_path(path, false, "Wasm payload")?;
        }
        Ok(())
    }

    /// A host path a task names must be within an allowed mount.
    fn check_path(&self, path: &Path, writable: bool, what: &str) -> Result<(), TaskError> {
        let real = std::fs::canonicalize(path)
            .map_err(|e| TaskError::invalid(format!("{what} {}: {e}", path.display())))?;
        let allowed = self.allowed_mounts.iter().any(|allowed| {
            std::fs::canonicalize(&allowed.path)
                .is_ok_and(|root| real.starts_with(root) && (allowed.writable || !writable))
        });
        if allowed {
            return Ok(());
        }
        let mode = if writable { " writable" } else { "" };
        Err(TaskError::invalid(format!(
            "the task's {what} {} is not within what the operator allows{mode} (--allow-mount PATH{})",
            path.display(),
            if writable { ":rw" } else { "" }
        )))
    }
}

fn seconds(duration: Duration) -> String {
    format!("{} s", duration.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::Mount;

    #[test]
    fn caps_bound_what_a_task_asks() {
        let config = SandboxConfig {
            timeout: Duration::from_secs(10),
            ..SandboxConfig::default()
        };
        let policy = Policy::for_config(&config);
        let task = || TaskSubmission::python("def f(): pass");
        assert!(policy
            .check(&task().with_timeout(Duration::from_secs(1)), &config)
            .is_ok());
        let error = policy
            .check(&task().with_timeout(Duration::from_secs(100)), &config)
            .unwrap_err();
        assert!(error.to_string().contains("--timeout"), "{error}");
        assert!(policy
            .check(&task().with_tier(SandboxLevel::None), &config)
            .is_err());
        let mut networked = task();
        networked.sandbox.network = Some(true);
        assert!(policy.check(&networked, &config).is_err());
        let mut mounted = task();
        mounted.sandbox.mounts = Some(vec![Mount::new("/tmp", "/data", false).unwrap()]);
        assert!(policy.check(&mounted, &config).is_err());
        let open = Policy {
            allowed_mounts: vec!["/tmp".parse().unwrap()],
            ..policy.clone()
        };
        assert!(open.check(&mounted, &config).is_ok());
        mounted.sandbox.mounts = Some(vec![Mount::new("/tmp", "/data", true).unwrap()]);
        assert!(open.check(&mounted, &config).is_err());
    }
}
