//! What a task's own side may say about its outcome, what the host's
//! observations of an ended process mean, and the errors every tier reports
//! the same way.
//!
//! The rule: the kinds `timeout`, `memory_limit`, `cancelled`,
//! `sandbox_unavailable`, `node_failed` and `internal` are decided by the
//! host from what it observed (its clock, its limiter, the cgroup, the
//! kernel's signal), never read from anything the task can write. What
//! comes from inside the sandbox — the driver's envelope, a command's or a
//! module's stdout — can only be a result, a `task_error` or an
//! `invalid_task`; anything else it says is a `task_error` of type
//! `ProtocolError`.

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::{OutputCapture, SandboxConfig, SandboxOutput};
use crate::task::{ErrorKind, ErrorRecord, TaskError};

/// The driver's envelope: `{"status": "ok", "result": ...}` or
/// `{"status": "error", "error": {"kind", "type", "message", "traceback"}}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    status: String,
    /// `Some(Value::Null)` for `"result": null`.
    #[serde(default, deserialize_with = "present")]
    result: Option<Value>,
    #[serde(default)]
    error: Option<ErrorRecord>,
}

fn present<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

/// The task's result or error from its driver's envelope.
pub(crate) fn from_envelope(envelope: &[u8], config: &SandboxConfig) -> Result<Value, TaskError> {
    let envelope: Envelope = serde_json::from_slice(envelope).map_err(|e| {
        if e.to_string().contains("recursion limit") {
            TaskError::Failed {
                type_name: "ValueError".into(),
                message: "the result is nested deeper than 128 levels".into(),
                traceback: String::new(),
            }
        } else {
            protocol_error(&format!("its reply is not the driver's envelope ({e})"))
        }
    })?;
    match (envelope.status.as_str(), envelope.result, envelope.error) {
        ("ok", Some(result), None) if encoded_len(&result) > config.max_result_bytes => {
            Err(result_too_big(config))
        }
        ("ok", Some(result), None) => Ok(result),
        ("error", None, Some(error)) => match error.kind {
            ErrorKind::TaskError | ErrorKind::InvalidTask => Err(TaskError::from_record(error)),
            kind => Err(protocol_error(&format!(
                "it reported the outcome `{}`, which only the host decides",
                kind.as_str()
            ))),
        },
        _ => Err(protocol_error(
            "its reply has neither one result nor one error",
        )),
    }
}

/// The bytes of `value` as compact JSON: what `max_result_bytes` bounds
/// (the envelope around it, and the spaces a driver puts in, are not the
/// task's).
fn encoded_len(value: &Value) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
}

/// A reply from inside the sandbox that the host does not take.
pub(crate) fn protocol_error(detail: &str) -> TaskError {
    TaskError::Failed {
        type_name: "ProtocolError".into(),
        message: format!("the task's sandbox sent an answer the host does not accept: {detail}"),
        traceback: String::new(),
    }
}

/// The result was larger than `max_result_bytes`.
pub(crate) fn result_too_big(config: &SandboxConfig) -> TaskError {
    TaskError::Failed {
        type_name: "ResultTooLarge".into(),
        message: format!(
            "the result is larger than max_result_bytes ({} bytes)",
            config.max_result_bytes
        ),
        traceback: String::new(),
    }
}

/// A result JSON handed back by a command, module or component (its stdout
/// or return value): at most `max_result_bytes`, and JSON.
pub(crate) fn from_json_text(
    bytes: &[u8],
    what: &str,
    config: &SandboxConfig,
) -> Result<Value, TaskError> {
    if bytes.len() > config.max_result_bytes {
        return Err(result_too_big(config));
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(TaskError::Failed {
            type_name: "ValueError".into(),
            message: format!("the {what} gave no result (it must be the result JSON)"),
            traceback: String::new(),
        });
    }
    serde_json::from_slice(bytes).map_err(|e| TaskError::Failed {
        type_name: "ValueError".into(),
        message: format!("the {what}'s result is not JSON: {e}"),
        traceback: String::new(),
    })
}

/// The output of a command or module whose stdout was to be its result:
/// nothing when it was, else what it printed (capped as output is).
pub(crate) fn stdout_unless_result(
    result: &Result<Value, TaskError>,
    stdout: &OutputCapture,
    config: &SandboxConfig,
) -> String {
    if result.is_ok() {
        return String::new();
    }
    let mut kept = OutputCapture::new(config.max_output_bytes);
    kept.push(stdout.kept());
    kept.finish()
}

/// True for the kinds only the host may decide.
pub(crate) fn host_decided(error: &TaskError) -> bool {
    !matches!(error.kind(), ErrorKind::TaskError | ErrorKind::InvalidTask)
}

/// How a sandboxed process (or container) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    Exited(i32),
    Signaled(i32),
    /// Killed by us at the wall-clock deadline.
    TimedOut,
    /// Killed by us when the task's processes together used up their CPU time.
    CpuLimit,
    /// Killed by us on cancel.
    Cancelled,
}

/// What the host observed of a sandboxed process (or container) that
/// ended: how it ended, what it wrote, what it used.
#[derive(Debug)]
pub(crate) struct Ended {
    pub ending: Ending,
    pub stdout: OutputCapture,
    pub stderr: OutputCapture,
    pub channel: Vec<u8>,
    pub channel_overflow: bool,
    /// CPU time of the task: of its cgroup when it has one, else of the
    /// child and the children it waited for (user + system).
    pub cpu_time: Duration,
    /// The kernel killed a process of the task for going over its memory
    /// limit (its cgroup says so).
    pub oom_killed: bool,
}

/// The most a task's envelope may take: its result (`max_result_bytes`)
/// and room for an error's message and traceback.
pub(crate) fn envelope_cap(config: &SandboxConfig) -> usize {
    config.max_result_bytes.saturating_add(ENVELOPE_ROOM)
}

/// What an envelope holds besides the result (an error's message and
/// traceback are cut to fit by the driver).
const ENVELOPE_ROOM: usize = 256 << 10;

/// What a Python process's ending means (every process tier and docker):
/// the limits the host saw fire, else what the driver's envelope says.
pub(crate) fn python_outcome(run: Ended, config: &SandboxConfig) -> SandboxOutput {
    let result = match limit_error(&run, config) {
        Some(error) => Err(error),
        None if run.channel_overflow => Err(result_too_big(config)),
        None if !run.channel.is_empty() => from_envelope(&run.channel, config),
        None => Err(died_without_result(&run)),
    };
    SandboxOutput {
        result: out_of_memory(result, &run, config),
        stdout: run.stdout.finish(),
        stderr: run.stderr.finish(),
    }
}

/// What a command child's ending means: its stdout is its result. When it
/// is not one, the stdout is kept as the task's output.
pub(crate) fn command_outcome(run: Ended, config: &SandboxConfig) -> SandboxOutput {
    let result = match limit_error(&run, config) {
        Some(error) => Err(error),
        None => match run.ending {
            Ending::Exited(0) if run.stdout.is_truncated() => Err(result_too_big(config)),
            Ending::Exited(0) => from_json_text(run.stdout.kept(), "command", config),
            _ => Err(died_without_result(&run)),
        },
    };
    let stdout = stdout_unless_result(&result, &run.stdout, config);
    SandboxOutput {
        result: out_of_memory(result, &run, config),
        stdout,
        stderr: run.stderr.finish(),
    }
}

/// A task that failed after the kernel killed one of its processes for
/// going over the memory limit failed of that.
fn out_of_memory(
    result: Result<Value, TaskError>,
    run: &Ended,
    config: &SandboxConfig,
) -> Result<Value, TaskError> {
    match result {
        Err(error) if run.oom_killed && !host_decided(&error) => Err(TaskError::memory_limit(
            config.max_memory_mb,
            "the kernel killed a process of the task at its memory limit",
        )),
        result => result,
    }
}

/// The limit that ended the child, as the host saw it: its clock, its
/// cancel, and the CPU time it measured (the task's cgroup, else the
/// child's own usage) when a CPU signal or kill ended it.
fn limit_error(run: &Ended, config: &SandboxConfig) -> Option<TaskError> {
    match run.ending {
        Ending::Cancelled => Some(TaskError::Cancelled),
        Ending::TimedOut => Some(TaskError::wall_timeout(config.timeout)),
        Ending::CpuLimit => Some(TaskError::cpu_timeout(config.max_cpu_time)),
        // Killed (SIGXCPU, SIGKILL, or a container's exit code for them)
        // after the host measured its CPU time at the limit.
        Ending::Signaled(libc::SIGXCPU | libc::SIGKILL) | Ending::Exited(1..)
            if run.cpu_time >= config.max_cpu_time =>
        {
            Some(TaskError::cpu_timeout(config.max_cpu_time))
        }
        _ => None,
    }
}

fn died_without_result(run: &Ended) -> TaskError {
    if let Ending::Signaled(libc::SIGSYS) = run.ending {
        return TaskError::Failed {
            type_name: "SandboxViolation".into(),
            message:
                "the task made a system call its seccomp filter forbids, and was killed by SIGSYS"
                    .into(),
            traceback: String::new(),
        };
    }
    let how = match run.ending {
        Ending::Exited(code) => format!("exited with code {code}"),
        Ending::Signaled(signal) => format!("was killed by signal {}", signal_name(signal)),
        Ending::TimedOut | Ending::Cancelled | Ending::CpuLimit => "was stopped".into(),
    };
    TaskError::Failed {
        type_name: match run.ending {
            Ending::Signaled(_) => "Crash".into(),
            _ => "SystemExit".into(),
        },
        message: format!(
            "the task's process {how} before returning a result{}",
            run.stderr.tail_note()
        ),
        traceback: String::new(),
    }
}

fn signal_name(signal: i32) -> String {
    let name = match signal {
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGSYS => "SIGSYS",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGTERM => "SIGTERM",
        _ => return format!("{signal}"),
    };
    format!("{name} ({signal})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_results_task_errors_and_invalid_tasks_come_from_inside() {
        assert_eq!(
            from_envelope(
                br#"{"status":"ok","result":null}"#,
                &SandboxConfig::default()
            ),
            Ok(Value::Null)
        );
        let ok = br#"{"status":"ok","result":1267650600228229401496703205376}"#;
        assert_eq!(
            from_envelope(ok, &SandboxConfig::default())
                .unwrap()
                .to_string(),
            "1267650600228229401496703205376"
        );
        for kind in [
            "timeout",
            "memory_limit",
            "cancelled",
            "sandbox_unavailable",
            "node_failed",
            "internal",
        ] {
            let forged = format!(
                r#"{{"status":"error","error":{{"kind":"{kind}","type":"x","message":"","traceback":""}}}}"#
            );
            let error = from_envelope(forged.as_bytes(), &SandboxConfig::default()).unwrap_err();
            assert!(
                matches!(&error, TaskError::Failed { type_name, .. } if type_name == "ProtocolError"),
                "{kind}: {error:?}"
            );
        }
        let raised = br#"{"status":"error","error":{"kind":"task_error","type":"MemoryError","message":"","traceback":""}}"#;
        assert!(
            matches!(from_envelope(raised, &SandboxConfig::default()), Err(TaskError::Failed { type_name, .. }) if type_name == "MemoryError")
        );
        for garbage in [
            &br#"{"status":"ok","result":1,"error":{"kind":"timeout"}}"#[..],
            br#"{"status":"ok"}"#,
            br#"{"status":"ok","result":1}{"status":"ok","result":2}"#,
            br#"{"status":"ok","result":1,"status":"error"}"#,
            b"not json",
        ] {
            let error = from_envelope(garbage, &SandboxConfig::default()).unwrap_err();
            assert_eq!(error.kind(), ErrorKind::TaskError, "{error:?}");
        }
    }
}
