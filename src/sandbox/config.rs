//! The sandbox configuration, and the process-wide default.

use std::sync::RwLock;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::task::{Mount, SandboxLevel, SandboxOverrides};

/// How tasks are isolated and limited: every
/// field enforced on the tiers where it means something, and an error where
/// a tier can't honour it.
///
/// ```
/// use lattice::sandbox::{SandboxConfig, SandboxLevel};
/// use std::time::Duration;
///
/// let config = SandboxConfig {
///     tier: SandboxLevel::Subprocess,
///     timeout: Duration::from_secs(10),
///     max_memory_mb: 512,
///     ..SandboxConfig::default()
/// };
/// assert_eq!(config.max_cpu_time, Duration::from_secs(300));
/// ```
///
/// As JSON (how a resolved configuration travels whole, to a Ray node's
/// `lattice-wasm exec --sandbox-config`), fields carry the task line's
/// names — `tier`, `timeout_s`, `max_cpu_time_s`, `network`, `mounts` —
/// and the rest their own; a missing field is its default:
///
/// ```
/// use lattice::sandbox::{SandboxConfig, SandboxLevel};
///
/// let config: SandboxConfig =
///     serde_json::from_str(r#"{"tier": "subprocess", "timeout_s": 2.5}"#).unwrap();
/// assert_eq!(config.tier, SandboxLevel::Subprocess);
/// assert_eq!(config.timeout.as_millis(), 2500);
/// let again: SandboxConfig = serde_json::from_str(&serde_json::to_string(&config).unwrap()).unwrap();
/// assert_eq!(again, config);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxConfig {
    /// The tier tasks run in (default: wasm).
    pub tier: SandboxLevel,
    /// Wall-clock limit per task.
    #[serde(rename = "timeout_s", with = "seconds")]
    pub timeout: Duration,
    /// Memory limit per task (address space, linear memory or cgroup, by tier).
    pub max_memory_mb: u64,
    /// CPU-time limit per task.
    #[serde(rename = "max_cpu_time_s", with = "seconds")]
    pub max_cpu_time: Duration,
    /// If set, the only modules the task's code may import.
    pub allowed_imports: Option<Vec<String>>,
    /// The image of the docker tier.
    pub docker_image: String,
    /// Whether the task may use the network (tiers that can block it do).
    pub network: bool,
    /// Host paths visible to the task.
    pub mounts: Vec<Mount>,
    /// Syscall numbers that replace the seccomp tier's allowlist.
    pub allowed_syscalls: Option<Vec<i64>>,
    /// Seccomp tier: kill the task (SIGSYS) on a forbidden system call
    /// instead of failing the call with EPERM.
    pub seccomp_kill: bool,
    /// Cap on each of stdout and stderr kept per task; the rest is dropped
    /// and the text marked truncated.
    pub max_output_bytes: usize,
    /// Cap on a task's result, as JSON text: a bigger one is a task error
    /// (`ResultTooLarge`), the same on every tier, checked while it is read.
    pub max_result_bytes: usize,
}

/// The default `max_result_bytes`: 16 MiB of JSON.
pub const DEFAULT_MAX_RESULT_BYTES: usize = 16 << 20;

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            tier: SandboxLevel::DEFAULT,
            timeout: Duration::from_secs(300),
            max_memory_mb: 2048,
            max_cpu_time: Duration::from_secs(300),
            allowed_imports: None,
            docker_image: "python:3.11-slim".into(),
            network: false,
            mounts: Vec::new(),
            allowed_syscalls: None,
            seccomp_kill: false,
            max_output_bytes: 1 << 20,
            max_result_bytes: DEFAULT_MAX_RESULT_BYTES,
        }
    }
}

impl SandboxConfig {
    /// This configuration with a task's overrides applied.
    pub fn with_overrides(&self, overrides: &SandboxOverrides) -> SandboxConfig {
        let mut config = self.clone();
        if let Some(tier) = overrides.tier {
            config.tier = tier;
        }
        if let Some(timeout) = overrides.timeout {
            config.timeout = timeout;
        }
        if let Some(mb) = overrides.max_memory_mb {
            config.max_memory_mb = mb;
        }
        if let Some(cpu) = overrides.max_cpu_time {
            config.max_cpu_time = cpu;
        }
        if let Some(imports) = &overrides.allowed_imports {
            config.allowed_imports = Some(imports.clone());
        }
        if let Some(network) = overrides.network {
            config.network = network;
        }
        if let Some(mounts) = &overrides.mounts {
            config.mounts = mounts.clone();
        }
        config
    }
}

/// A limit as seconds in JSON, checked as every limit given in seconds is.
mod seconds {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(limit: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(limit.as_secs_f64())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let seconds = f64::deserialize(d)?;
        crate::task::limit_seconds(seconds).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "{seconds} s is not a usable limit (finite, above zero, at most 1e9)"
            ))
        })
    }
}

static GLOBAL_CONFIG: RwLock<Option<SandboxConfig>> = RwLock::new(None);

/// Sets the process-wide sandbox configuration (used by executors that
/// were not given one of their own).
pub fn set_sandbox_config(config: SandboxConfig) {
    *GLOBAL_CONFIG.write().unwrap_or_else(|e| e.into_inner()) = Some(config);
}

/// The process-wide sandbox configuration (the default until set).
pub fn get_sandbox_config() -> SandboxConfig {
    GLOBAL_CONFIG
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_parse() {
        let m: Mount = "/data:/in".parse().unwrap();
        assert_eq!(
            (m.host.to_str(), m.guest.as_str(), m.writable),
            (Some("/data"), "/in", false)
        );
        assert!("/data:/out:rw".parse::<Mount>().unwrap().writable);
        assert!("data:/x".parse::<Mount>().is_err());
        assert!("/a:/b:rx".parse::<Mount>().is_err());
        assert!("/a".parse::<Mount>().is_err());
    }

    #[test]
    fn levels_parse() {
        for level in SandboxLevel::ALL {
            assert_eq!(level.as_str().parse::<SandboxLevel>().unwrap(), level);
        }
        assert!("jail".parse::<SandboxLevel>().is_err());
    }
}
