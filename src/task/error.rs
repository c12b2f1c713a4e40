//! The one error type of a task, and its JSON form.

use serde::{Deserialize, Serialize};

/// Which time limit fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeLimit {
    /// The wall-clock limit (`timeout`).
    Wall,
    /// The CPU-time limit (`max_cpu_time`).
    Cpu,
}

/// Why a task produced no result.
///
/// The variants keep apart what a caller handles differently: the task's own
/// failure, a limit that fired, a cancel, a lost node, a tier that can't run
/// here, a task that was malformed before it ran, and our own bugs.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TaskError {
    /// The task's code raised: `type_name` is the Python exception type.
    #[error("{type_name}: {message}")]
    Failed {
        /// The Python exception's type (or a host-side name such as `ResultTooLarge`).
        type_name: String,
        /// Its message.
        message: String,
        /// Its traceback (the task's own frames), possibly empty.
        traceback: String,
    },
    /// The task was cancelled before it finished.
    #[error("the task was cancelled")]
    Cancelled,
    /// The node running the task died or became unreachable.
    #[error("node failed: {message}")]
    NodeFailed {
        /// What was observed of the node.
        message: String,
    },
    /// A time limit fired.
    #[error("timeout: {message}")]
    Timeout {
        /// Which limit fired.
        limit: TimeLimit,
        /// What was observed.
        message: String,
    },
    /// The memory limit fired.
    #[error("memory limit: {message}")]
    MemoryLimit {
        /// What was observed.
        message: String,
    },
    /// The requested tier or executor can't run on this host; `reason` says
    /// why and how to fix it.
    #[error("sandbox unavailable: {reason}")]
    SandboxUnavailable {
        /// Why, and how to fix it.
        reason: String,
    },
    /// The task was rejected before it ran (bad JSON, syntax error, no
    /// function, unknown node, a setting the tier can't honour, ...).
    #[error("invalid task: {message}")]
    InvalidTask {
        /// The error's type name (`InvalidTask` unless more precise).
        type_name: String,
        /// What is wrong with the task.
        message: String,
    },
    /// A bug or an unexpected failure of lattice itself.
    #[error("internal error: {message}")]
    Internal {
        /// What went wrong.
        message: String,
    },
}

/// The `kind` of an error in the result JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The task's own code failed.
    TaskError,
    /// A wall-clock or CPU-time limit fired.
    Timeout,
    /// The memory limit fired.
    MemoryLimit,
    /// The task was cancelled.
    Cancelled,
    /// The node running the task died.
    NodeFailed,
    /// The tier (or the executor) can't run here.
    SandboxUnavailable,
    /// The task can't be run as given.
    InvalidTask,
    /// A fault of lattice itself.
    Internal,
}

impl ErrorKind {
    /// The name used in JSON and in summaries.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::TaskError => "task_error",
            ErrorKind::Timeout => "timeout",
            ErrorKind::MemoryLimit => "memory_limit",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::NodeFailed => "node_failed",
            ErrorKind::SandboxUnavailable => "sandbox_unavailable",
            ErrorKind::InvalidTask => "invalid_task",
            ErrorKind::Internal => "internal",
        }
    }
}

/// The JSON form of a [`TaskError`]: `{"kind", "type", "message", "traceback"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorRecord {
    /// Which kind of error.
    pub kind: ErrorKind,
    #[serde(rename = "type", default)]
    /// The exception's or error's type name.
    pub type_name: String,
    #[serde(default)]
    /// The message.
    pub message: String,
    #[serde(default)]
    /// The traceback, possibly empty.
    pub traceback: String,
}

impl TaskError {
    /// Shorthand for [`TaskError::InvalidTask`] with the generic type name.
    pub fn invalid(message: impl Into<String>) -> Self {
        TaskError::InvalidTask {
            type_name: "InvalidTask".into(),
            message: message.into(),
        }
    }

    /// Shorthand for [`TaskError::SandboxUnavailable`].
    pub fn unavailable(reason: impl Into<String>) -> Self {
        TaskError::SandboxUnavailable {
            reason: reason.into(),
        }
    }

    /// Shorthand for [`TaskError::Internal`].
    pub fn internal(message: impl Into<String>) -> Self {
        TaskError::Internal {
            message: message.into(),
        }
    }

    /// The wall-clock limit of `limit` fired.
    pub fn wall_timeout(limit: std::time::Duration) -> Self {
        TaskError::Timeout {
            limit: TimeLimit::Wall,
            message: format!(
                "the task ran longer than its wall-clock limit of {} s",
                limit.as_secs_f64()
            ),
        }
    }

    /// The CPU-time limit of `limit` fired.
    pub fn cpu_timeout(limit: std::time::Duration) -> Self {
        TaskError::Timeout {
            limit: TimeLimit::Cpu,
            message: format!(
                "the task used more than its CPU-time limit of {} s",
                limit.as_secs_f64()
            ),
        }
    }

    /// The memory limit of `limit_mb` MiB fired; `detail` says how it showed.
    pub fn memory_limit(limit_mb: u64, detail: &str) -> Self {
        let detail = if detail.is_empty() {
            "MemoryError"
        } else {
            detail
        };
        TaskError::MemoryLimit {
            message: format!(
                "the task ran out of memory under its limit of {limit_mb} MiB ({detail})"
            ),
        }
    }

    /// The kind of this error, as in the result JSON.
    pub fn kind(&self) -> ErrorKind {
        match self {
            TaskError::Failed { .. } => ErrorKind::TaskError,
            TaskError::Cancelled => ErrorKind::Cancelled,
            TaskError::NodeFailed { .. } => ErrorKind::NodeFailed,
            TaskError::Timeout { .. } => ErrorKind::Timeout,
            TaskError::MemoryLimit { .. } => ErrorKind::MemoryLimit,
            TaskError::SandboxUnavailable { .. } => ErrorKind::SandboxUnavailable,
            TaskError::InvalidTask { .. } => ErrorKind::InvalidTask,
            TaskError::Internal { .. } => ErrorKind::Internal,
        }
    }

    /// The JSON record of this error.
    pub fn to_record(&self) -> ErrorRecord {
        let (type_name, message, traceback) = match self {
            TaskError::Failed {
                type_name,
                message,
                traceback,
            } => (type_name.as_str(), message.clone(), traceback.clone()),
            TaskError::Cancelled => ("Cancelled", "the task was cancelled".into(), String::new()),
            TaskError::NodeFailed { message } => ("NodeFailed", message.clone(), String::new()),
            TaskError::Timeout { limit, message } => (
                match limit {
                    TimeLimit::Wall => "WallTimeout",
                    TimeLimit::Cpu => "CpuTimeout",
                },
                message.clone(),
                String::new(),
            ),
            TaskError::MemoryLimit { message } => ("MemoryError", message.clone(), String::new()),
            TaskError::SandboxUnavailable { reason } => {
                ("SandboxUnavailable", reason.clone(), String::new())
            }
            TaskError::InvalidTask { type_name, message } => {
                (type_name.as_str(), message.clone(), String::new())
            }
            TaskError::Internal { message } => ("InternalError", message.clone(), String::new()),
        };
        ErrorRecord {
            kind: self.kind(),
            type_name: type_name.to_string(),
            message,
            traceback,
        }
    }

    /// Rebuilds the error from its JSON record (the inverse of [`Self::to_record`]).
    pub fn from_record(record: ErrorRecord) -> Self {
        let ErrorRecord {
            kind,
            type_name,
            message,
            traceback,
        } = record;
        match kind {
            ErrorKind::TaskError => TaskError::Failed {
                type_name,
                message,
                traceback,
            },
            ErrorKind::Cancelled => TaskError::Cancelled,
            ErrorKind::NodeFailed => TaskError::NodeFailed { message },
            ErrorKind::Timeout => TaskError::Timeout {
                limit: if type_name == "CpuTimeout" {
                    TimeLimit::Cpu
                } else {
                    TimeLimit::Wall
                },
                message,
            },
            ErrorKind::MemoryLimit => TaskError::MemoryLimit { message },
            ErrorKind::SandboxUnavailable => TaskError::SandboxUnavailable { reason: message },
            ErrorKind::InvalidTask => TaskError::InvalidTask { type_name, message },
            ErrorKind::Internal => TaskError::Internal { message },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_through_its_record() {
        let errors = [
            TaskError::Failed {
                type_name: "ValueError".into(),
                message: "bad".into(),
                traceback: "Traceback ...".into(),
            },
            TaskError::Cancelled,
            TaskError::NodeFailed {
                message: "gone".into(),
            },
            TaskError::Timeout {
                limit: TimeLimit::Cpu,
                message: "cpu".into(),
            },
            TaskError::Timeout {
                limit: TimeLimit::Wall,
                message: "wall".into(),
            },
            TaskError::MemoryLimit {
                message: "oom".into(),
            },
            TaskError::unavailable("no docker"),
            TaskError::InvalidTask {
                type_name: "SyntaxError".into(),
                message: "line 1".into(),
            },
            TaskError::internal("bug"),
        ];
        for error in errors {
            assert_eq!(TaskError::from_record(error.to_record()), error);
        }
    }
}
