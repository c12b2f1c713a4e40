//! The words every layer shares about isolation: the tiers and mounts.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::TaskError;

/// How strongly a task is isolated: the tiers, weakest first.
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

    /// The tier's name, as in JSON and on the command line.
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
    /// The host path (absolute).
    pub host: PathBuf,
    /// Where the task sees it (absolute).
    pub guest: String,
    /// Whether the task may write to it.
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
