//! Sandbox levels, the sandbox configuration, and the process-wide default.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::RwLock;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::task::{SandboxOverrides, TaskError};

/// How strongly a task is isolated (design.md §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxLevel {
    /// No isolation: trusted code only.
    None,
    /// RustPython on WASI inside wasmtime, in-process.
    Wasm,
    /// Host CPython in a limited child process.
    Subprocess,
    /// The subprocess tier plus a seccomp-BPF filter and Landlock.
    Seccomp,
    /// CPython in a hardened Docker container.
    Docker,
}

impl SandboxLevel {
    /// Every level, weakest first.
    pub const ALL: [SandboxLevel; 5] = [
        SandboxLevel::None,
        SandboxLevel::Wasm,
        SandboxLevel::Subprocess,
        SandboxLevel::Seccomp,
        SandboxLevel::Docker,
    ];

    /// The default tier: in-process Wasm, isolated by construction and
    /// needing nothing installed.
    pub const DEFAULT: SandboxLevel = SandboxLevel::Wasm;

    pub fn as_str(self) -> &'static str {
        match self {
            SandboxLevel::None => "none",
            SandboxLevel::Wasm => "wasm",
            SandboxLevel::Subprocess => "subprocess",
            SandboxLevel::Seccomp => "seccomp",
            SandboxLevel::Docker => "docker",
        }
    }
}

impl fmt::Display for SandboxLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SandboxLevel {
    type Err = TaskError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SandboxLevel::ALL
            .into_iter()
            .find(|level| level.as_str() == s)
            .ok_or_else(|| {
                TaskError::invalid(format!(
                    "unknown tier '{s}' (expected one of none, wasm, subprocess, seccomp, docker)"
                ))
            })
    }
}

/// A host path made visible to the task at `guest`, read-only unless `writable`.
///
/// In JSON and on the command line: `"HOST:GUEST"`, `"HOST:GUEST:rw"`, or
/// `{"host": ..., "guest": ..., "rw": true}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub host: PathBuf,
    pub guest: String,
    pub writable: bool,
}

impl FromStr for Mount {
    type Err = TaskError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || TaskError::invalid(format!("mount '{s}' is not HOST:GUEST or HOST:GUEST:rw"));
        let mut parts = s.split(':');
        let host = parts.next().filter(|p| !p.is_empty()).ok_or_else(bad)?;
        let guest = parts.next().filter(|p| !p.is_empty()).ok_or_else(bad)?;
        let writable = match parts.next() {
            None | Some("ro") => false,
            Some("rw") => true,
            Some(_) => return Err(bad()),
        };
        if parts.next().is_some() {
            return Err(bad());
        }
        Mount::new(host, guest, writable)
    }
}

impl Mount {
    /// A mount; both paths must be absolute.
    pub fn new(host: impl Into<PathBuf>, guest: &str, writable: bool) -> Result<Self, TaskError> {
        let host = host.into();
        if !host.is_absolute() || !guest.starts_with('/') {
            return Err(TaskError::invalid(format!(
                "mount paths must be absolute: {}:{guest}",
                host.display()
            )));
        }
        Ok(Mount {
            host,
            guest: guest.to_string(),
            writable,
        })
    }
}

impl<'de> Deserialize<'de> for Mount {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Object {
            host: PathBuf,
            guest: String,
            #[serde(default)]
            rw: bool,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Text(String),
            Object(Object),
        }
        let mount = match Form::deserialize(deserializer)? {
            Form::Text(text) => text.parse(),
            Form::Object(o) => Mount::new(o.host, &o.guest, o.rw),
        };
        mount.map_err(serde::de::Error::custom)
    }
}

impl Serialize for Mount {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mode = if self.writable { ":rw" } else { "" };
        serializer.serialize_str(&format!("{}:{}{mode}", self.host.display(), self.guest))
    }
}

/// How tasks are isolated and limited: the seed's `SandboxConfig`, every
/// field enforced on the tiers where it means something, and an error where
/// a tier can't honour it.
///
/// ```
/// use lattice::sandbox::{SandboxConfig, SandboxLevel};
/// use std::time::Duration;
///
/// let config = SandboxConfig {
///     level: SandboxLevel::Subprocess,
///     timeout: Duration::from_secs(10),
///     max_memory_mb: 512,
///     ..SandboxConfig::default()
/// };
/// assert_eq!(config.max_cpu_time, Duration::from_secs(300));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct SandboxConfig {
    pub level: SandboxLevel,
    /// Wall-clock limit per task.
    pub timeout: Duration,
    /// Memory limit per task (address space, linear memory or cgroup, by tier).
    pub max_memory_mb: u64,
    /// CPU-time limit per task.
    pub max_cpu_time: Duration,
    /// If set, the only modules the task's code may import.
    pub allowed_imports: Option<Vec<String>>,
    /// The image of the docker tier.
    pub docker_image: String,
    /// Whether the task may use the network (tiers that can block it do).
    pub network_enabled: bool,
    /// Host paths visible to the task.
    pub mount_paths: Vec<Mount>,
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
            level: SandboxLevel::DEFAULT,
            timeout: Duration::from_secs(300),
            max_memory_mb: 2048,
            max_cpu_time: Duration::from_secs(300),
            allowed_imports: None,
            docker_image: "python:3.11-slim".into(),
            network_enabled: false,
            mount_paths: Vec::new(),
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
            config.level = tier;
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
            config.network_enabled = network;
        }
        if let Some(mounts) = &overrides.mounts {
            config.mount_paths = mounts.clone();
        }
        config
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
