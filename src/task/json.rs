//! The JSON forms of a task and of its result (the CLI's task and result lines).
//!
//! Numbers are kept as their exact digits (serde_json's arbitrary
//! precision), unknown fields are rejected by name, and every decoding error
//! becomes [`TaskError::InvalidTask`].
//!
//! ```
//! use lattice::task::json::{parse_task, outcome_to_json};
//!
//! let task = parse_task(r#"{"id": "t1", "code": "def f(x): return x", "input": 1267650600228229401496703205376}"#).unwrap();
//! assert_eq!(task.input.unwrap().to_string(), "1267650600228229401496703205376");
//!
//! let err = parse_task(r#"{"code": "def f(x): return x", "inptu": 1}"#).unwrap_err();
//! assert!(err.to_string().contains("unknown field `inptu`"));
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use super::{
    ErrorRecord, Payload, Resources, SandboxOverrides, TaskError, TaskOutcome, TaskSubmission,
    WasmSource,
};
use crate::task::{Mount, SandboxLevel};

/// A task as it is written in JSON.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Echoed on the result line (default: the line number).
    pub id: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Python source defining the entry function.
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// A Wasm module or component, by path or base64.
    pub wasm: Option<WasmSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// A command to run, input JSON on its stdin.
    pub argv: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// The function to call (default: the last top-level `def`).
    pub entry: Option<String>,
    /// `Some(Value::Null)` when the task says `"input": null`.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub input: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Positional arguments: `f(*args, **kwargs)`.
    pub args: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Keyword arguments: `f(*args, **kwargs)`.
    pub kwargs: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// The tier to run in (within what the operator allows).
    pub tier: Option<SandboxLevel>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Wall-clock limit, seconds.
    pub timeout_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Memory limit, MiB.
    pub max_memory_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// CPU-time limit, seconds.
    pub max_cpu_time_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// The only modules the code may import.
    pub allowed_imports: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Whether the task may use the network.
    pub network: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Host paths to make visible, `HOST:GUEST[:rw]`.
    pub mounts: Option<Vec<Mount>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// What the task asks the executor for (Ray: CPUs, memory, GPUs).
    pub resources: Option<Resources>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Run on this node (Ray).
    pub node_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Run with this GPU visible (`CUDA_VISIBLE_DEVICES`).
    pub gpu_id: Option<u32>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    /// Script mode: `code` is a program run as `__main__` (no entry is
    /// called); the result line has its `exit_code`.
    pub script: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// A script's standard input.
    pub stdin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Files put in a script's working directory first: path -> base64.
    pub files: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Files of a script's working directory sent back in the result's `files`.
    pub fetch_files: Option<Vec<String>>,
}

/// A Wasm payload in JSON: a path, or `{"path": ...}`, or `{"base64": ...}`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(untagged)]
pub enum WasmSpec {
    /// A path on the host.
    Path(String),
    /// `{"path": ...}` or `{"base64": ...}`.
    Object(WasmObject),
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
/// The object form of a Wasm payload: exactly one field.
pub struct WasmObject {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// A path on the host.
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// The module's bytes, base64-encoded.
    pub base64: Option<String>,
}

fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

fn seconds(field: &str, value: Option<f64>) -> Result<Option<Duration>, TaskError> {
    match value {
        None => Ok(None),
        Some(s) => match super::limit_seconds(s) {
            Some(duration) => Ok(Some(duration)),
            None => Err(TaskError::invalid(format!(
                "{field} must be a number of seconds from 1 ns to 10^9, got {s}"
            ))),
        },
    }
}

/// The `id` of a task line, read even when the rest of the line is not a
/// valid task, so its `invalid_task` result can carry it.
///
/// ```
/// use lattice::task::json::task_id;
/// assert_eq!(task_id(r#"{"id": "t7", "code": 5}"#), Some("t7".into()));
/// assert_eq!(task_id(r#"{"id": 3, "code": "def f()"#), Some(3.into()));
/// assert_eq!(task_id("not json"), None);
/// ```
pub fn task_id(text: &str) -> Option<Value> {
    /// Keeps the `id` it meets, whatever comes after it (a line cut short,
    /// a bad field).
    struct IdFinder<'a>(&'a mut Option<Value>);
    impl<'de> serde::de::Visitor<'de> for IdFinder<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a task object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(key) = map.next_key::<String>()? {
                if key == "id" {
                    *self.0 = Some(map.next_value()?);
                } else {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
            Ok(())
        }
    }
    let mut id = None;
    let mut decoder = serde_json::Deserializer::from_str(text);
    let _ = serde::Deserializer::deserialize_map(&mut decoder, IdFinder(&mut id));
    id.filter(|id| !id.is_null())
}

/// Decodes one task from JSON text.
pub fn parse_task(text: &str) -> Result<TaskSubmission, TaskError> {
    let spec: TaskSpec = serde_json::from_str(text).map_err(|e| {
        let message = e.to_string();
        TaskError::invalid(if message.contains("recursion limit") {
            format!("task JSON is nested deeper than 128 levels ({message})")
        } else {
            format!("malformed task JSON: {message}")
        })
    })?;
    spec.into_submission()
}

impl TaskSpec {
    /// Checks the spec and turns it into a submission.
    pub fn into_submission(self) -> Result<TaskSubmission, TaskError> {
        let payload = match (self.code, self.wasm, self.argv) {
            (Some(code), None, None) => Payload::Code(code),
            (None, Some(wasm), None) => Payload::Wasm(wasm.into_source()?),
            (None, None, Some(argv)) => {
                if argv.is_empty() || argv[0].is_empty() {
                    return Err(TaskError::invalid("argv must name a program"));
                }
                Payload::Command(argv)
            }
            (None, None, None) => {
                return Err(TaskError::invalid(
                    "the task has no payload: give one of \"code\", \"wasm\" or \"argv\"",
                ))
            }
            _ => {
                return Err(TaskError::invalid(
                    "give only one of \"code\", \"wasm\" and \"argv\"",
                ))
            }
        };
        if self.input.is_some() && (self.args.is_some() || self.kwargs.is_some()) {
            return Err(TaskError::invalid(
                "give either \"input\" or \"args\"/\"kwargs\", not both",
            ));
        }
        check_script(
            self.script,
            matches!(payload, Payload::Code(_)),
            self.stdin.is_some() || self.files.is_some() || self.fetch_files.is_some(),
            self.entry.is_some()
                || self.input.is_some()
                || self.args.is_some()
                || self.kwargs.is_some(),
        )?;
        let mut files = BTreeMap::new();
        for (path, content) in self.files.unwrap_or_default() {
            let bytes = base64_decode(&content)
                .map_err(|_| TaskError::invalid(format!("files[\"{path}\"] is not base64")))?;
            files.insert(path, bytes);
        }
        if let Some(entry) = &self.entry {
            if !is_identifier(entry) {
                return Err(TaskError::invalid(format!(
                    "entry '{entry}' is not a Python identifier"
                )));
            }
        }
        if let Some(resources) = &self.resources {
            check_resources(resources)?;
        }
        if self.max_memory_mb == Some(0) {
            return Err(TaskError::invalid("max_memory_mb must be at least 1"));
        }
        Ok(TaskSubmission {
            id: self.id,
            payload,
            entry: self.entry,
            input: self.input,
            args: self.args,
            kwargs: self.kwargs,
            resources: self.resources.unwrap_or_default(),
            node_id: self.node_id,
            gpu_id: self.gpu_id,
            sandbox: SandboxOverrides {
                tier: self.tier,
                timeout: seconds("timeout_s", self.timeout_s)?,
                max_memory_mb: self.max_memory_mb,
                max_cpu_time: seconds("max_cpu_time_s", self.max_cpu_time_s)?,
                allowed_imports: self.allowed_imports,
                network: self.network,
                mounts: self.mounts,
            },
            host_functions: None,
            script: self.script,
            stdin: self.stdin,
            files,
            fetch_files: self.fetch_files.unwrap_or_default(),
        })
    }

    /// The JSON spec of a submission (for the Ray and Docker transports).
    /// Native closures have no JSON form.
    pub fn from_submission(task: &TaskSubmission) -> Result<TaskSpec, TaskError> {
        if task.host_functions.is_some() {
            return Err(TaskError::invalid(
                "host functions are closures of this process and can't be called from another: a task with them runs on the local executor only",
            ));
        }
        let mut spec = TaskSpec {
            id: task.id.clone(),
            entry: task.entry.clone(),
            input: task.input.clone(),
            args: task.args.clone(),
            kwargs: task.kwargs.clone(),
            tier: task.sandbox.tier,
            timeout_s: task.sandbox.timeout.map(|d| d.as_secs_f64()),
            max_memory_mb: task.sandbox.max_memory_mb,
            max_cpu_time_s: task.sandbox.max_cpu_time.map(|d| d.as_secs_f64()),
            allowed_imports: task.sandbox.allowed_imports.clone(),
            network: task.sandbox.network,
            mounts: task.sandbox.mounts.clone(),
            resources: Some(task.resources.clone()).filter(|r| *r != Resources::default()),
            node_id: task.node_id.clone(),
            gpu_id: task.gpu_id,
            script: task.script,
            stdin: task.stdin.clone(),
            files: Some(base64_files(&task.files)).filter(|files| !files.is_empty()),
            fetch_files: Some(task.fetch_files.clone()).filter(|names| !names.is_empty()),
            ..TaskSpec::default()
        };
        match &task.payload {
            Payload::Code(code) => spec.code = Some(code.clone()),
            Payload::Command(argv) => spec.argv = Some(argv.clone()),
            Payload::Wasm(WasmSource::Path(path)) => {
                spec.wasm = Some(WasmSpec::Path(path.display().to_string()))
            }
            Payload::Wasm(WasmSource::Bytes(bytes)) => {
                spec.wasm = Some(WasmSpec::Object(WasmObject {
                    path: None,
                    base64: Some(base64_encode(bytes)),
                }))
            }
            Payload::Native(_) => {
                return Err(TaskError::invalid(
                    "a native closure can't be sent to another process; it runs on the local executor only",
                ))
            }
        }
        Ok(spec)
    }
}

impl WasmSpec {
    fn into_source(self) -> Result<WasmSource, TaskError> {
        match self {
            WasmSpec::Path(path)
            | WasmSpec::Object(WasmObject {
                path: Some(path),
                base64: None,
            }) => Ok(WasmSource::Path(path.into())),
            WasmSpec::Object(WasmObject {
                path: None,
                base64: Some(data),
            }) => Ok(WasmSource::Bytes(Arc::from(base64_decode(&data)?))),
            WasmSpec::Object(_) => Err(TaskError::invalid(
                "\"wasm\" must be a path, {\"path\": ...} or {\"base64\": ...}",
            )),
        }
    }
}

/// Files by path, their contents in base64.
fn base64_files(files: &BTreeMap<String, Vec<u8>>) -> BTreeMap<String, String> {
    files
        .iter()
        .map(|(path, bytes)| (path.clone(), base64_encode(bytes)))
        .collect()
}

/// A script is Python code run as a program: it has no entry to call and
/// takes its input on stdin; only a script has a stdin and files.
pub(crate) fn check_script(
    script: bool,
    python: bool,
    stdin: bool,
    call: bool,
) -> Result<(), TaskError> {
    if script && !python {
        return Err(TaskError::invalid(
            "script mode is for Python code: a Wasm module or a command already reads its stdin",
        ));
    }
    if script && call {
        return Err(TaskError::invalid(
            "a script runs as a program and calls no function: give its input as \"stdin\", not \"entry\", \"input\", \"args\" or \"kwargs\"",
        ));
    }
    if stdin && !script {
        return Err(TaskError::invalid(
            "\"stdin\", \"files\" and \"fetch_files\" are a script's: set \"script\": true",
        ));
    }
    Ok(())
}

fn check_resources(resources: &Resources) -> Result<(), TaskError> {
    for (name, value) in [("cpu", resources.cpu), ("gpu", resources.gpu)] {
        if let Some(v) = value {
            if !v.is_finite() || v < 0.0 {
                return Err(TaskError::invalid(format!(
                    "resources.{name} must be a non-negative number, got {v}"
                )));
            }
        }
    }
    Ok(())
}

/// True if `name` is a valid Python identifier (ASCII letters, digits, `_`, or non-ASCII letters).
pub(crate) fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_alphabetic())
        && chars.all(|c| c == '_' || c.is_alphanumeric())
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub(crate) fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(BASE64[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub(crate) fn base64_decode(text: &str) -> Result<Vec<u8>, TaskError> {
    let bad = || TaskError::invalid("\"wasm\".base64 is not valid base64");
    let text: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if !text.len().is_multiple_of(4) {
        return Err(bad());
    }
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    for chunk in text.chunks(4) {
        let mut n = 0u32;
        let mut pad = 0;
        for (i, &c) in chunk.iter().enumerate() {
            let v = match c {
                b'=' if i >= 2 => {
                    pad += 1;
                    0
                }
                _ if pad > 0 => return Err(bad()),
                _ => BASE64.iter().position(|&x| x == c).ok_or_else(bad)? as u32,
            };
            n = (n << 6) | v;
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Ok(out)
}

/// A result as it is written in JSON.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ResultRecord {
    /// The task line's `id` (or its line number).
    pub id: Value,
    /// `ok` or `error`.
    pub status: Status,
    /// The entry function's return value (`null` on error).
    pub result: Value,
    /// What the task printed, capped.
    pub stdout: String,
    /// What the task wrote to stderr, capped.
    pub stderr: String,
    /// The typed error, on error.
    pub error: Option<ErrorRecord>,
    /// The tier that ran it (none for a task refused before it ran).
    pub tier: Option<SandboxLevel>,
    /// The node that ran it.
    pub node_id: Option<String>,
    /// Submit to outcome, milliseconds.
    pub duration_ms: f64,
    /// A script's exit code (script mode, when the program ended by itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The files a script sent back (`fetch_files`): path -> base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<BTreeMap<String, String>>,
}

/// `"ok"` or `"error"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The task returned a result.
    Ok,
    /// The task ended with an error.
    Error,
}

impl From<&TaskOutcome> for ResultRecord {
    fn from(outcome: &TaskOutcome) -> Self {
        let (status, result, error) = match &outcome.result {
            Ok(value) => (Status::Ok, value.clone(), None),
            Err(error) => (Status::Error, Value::Null, Some(error.to_record())),
        };
        ResultRecord {
            id: outcome.id.clone().unwrap_or(Value::Null),
            status,
            result,
            stdout: outcome.stdout.clone(),
            stderr: outcome.stderr.clone(),
            error,
            tier: outcome.tier,
            node_id: outcome.node_id.clone(),
            duration_ms: duration_to_ms(outcome.duration),
            exit_code: outcome.exit_code,
            files: Some(base64_files(&outcome.files)).filter(|files| !files.is_empty()),
        }
    }
}

impl ResultRecord {
    /// The outcome this record describes.
    pub fn into_outcome(self) -> Result<TaskOutcome, TaskError> {
        let result = match (self.status, self.error) {
            (Status::Ok, None) => Ok(self.result),
            (Status::Error, Some(error)) => Err(TaskError::from_record(error)),
            (Status::Ok, Some(_)) => {
                return Err(TaskError::internal(
                    "result record is ok but carries an error",
                ))
            }
            (Status::Error, None) => {
                return Err(TaskError::internal(
                    "result record is an error without an \"error\"",
                ))
            }
        };
        Ok(TaskOutcome {
            id: Some(self.id).filter(|id| !id.is_null()),
            result,
            stdout: self.stdout,
            stderr: self.stderr,
            tier: self.tier,
            node_id: self.node_id,
            duration: duration_from_ms(self.duration_ms)?,
            exit_code: self.exit_code,
            files: {
                let mut files = BTreeMap::new();
                for (path, content) in self.files.unwrap_or_default() {
                    let bytes = base64_decode(&content).map_err(|_| {
                        TaskError::internal(format!(
                            "malformed result JSON: files[\"{path}\"] is not base64"
                        ))
                    })?;
                    files.insert(path, bytes);
                }
                files
            },
        })
    }
}

/// Durations travel as milliseconds with microsecond precision. Up to 2^50 µs
/// (35 years) `µs / 1e3 * 1e3` rounds back to the same µs; past it the value
/// could drift on each trip. No task runs that long: such a record is malformed.
const MAX_DURATION_MICROS: u64 = 1 << 50;

fn duration_to_ms(duration: Duration) -> f64 {
    let micros = duration.as_micros().min(u128::from(MAX_DURATION_MICROS));
    micros as f64 / 1e3
}

fn duration_from_ms(ms: f64) -> Result<Duration, TaskError> {
    let micros = (ms * 1e3).round();
    if !(0.0..=MAX_DURATION_MICROS as f64).contains(&micros) {
        return Err(TaskError::internal(format!(
            "malformed result JSON: duration_ms {ms} is not between 0 and 2^50 µs"
        )));
    }
    Ok(Duration::from_micros(micros as u64))
}

/// The result JSON of an outcome, on one line.
pub fn outcome_to_json(outcome: &TaskOutcome) -> String {
    serde_json::to_string(&ResultRecord::from(outcome)).expect("a result record always serialises")
}

/// Decodes a result line (the inverse of [`outcome_to_json`]).
pub fn parse_outcome(text: &str) -> Result<TaskOutcome, TaskError> {
    serde_json::from_str::<ResultRecord>(text)
        .map_err(|e| TaskError::internal(format!("malformed result JSON: {e}")))?
        .into_outcome()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for len in 0..20 {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            assert_eq!(base64_decode(&base64_encode(&data)).unwrap(), data);
        }
        assert_eq!(base64_encode(b"Man"), "TWFu");
        assert_eq!(base64_encode(b"Ma"), "TWE=");
        assert!(base64_decode("TW=u").is_err());
        assert!(base64_decode("TWF").is_err());
    }

    #[test]
    fn input_null_is_kept_apart_from_no_input() {
        let with_null = parse_task(r#"{"code":"def f(x): return x","input":null}"#).unwrap();
        assert_eq!(with_null.input, Some(Value::Null));
        let without = parse_task(r#"{"code":"def f(): return 1"}"#).unwrap();
        assert_eq!(without.input, None);
    }

    #[test]
    fn payload_must_be_exactly_one() {
        assert!(parse_task(r#"{"input":1}"#).is_err());
        assert!(parse_task(r#"{"code":"def f(): pass","argv":["true"]}"#).is_err());
    }

    #[test]
    fn a_limit_that_rounds_to_zero_is_refused() {
        // Found by the task_json fuzz target: 1e-26 s became a zero timeout.
        let error = parse_task(r#"{"code":"def f(): pass","timeout_s":1e-26}"#).unwrap_err();
        assert!(error.to_string().contains("timeout_s"), "{error}");
        assert!(parse_task(r#"{"code":"def f(): pass","max_cpu_time_s":1e-9}"#).is_ok());
    }

    #[test]
    fn durations_travel_unchanged_or_are_refused() {
        // Found by the task_json fuzz target: 33e30 ms overflowed Duration (a panic).
        let record = |ms: &str| {
            format!(
                r#"{{"id":null,"status":"ok","result":1,"stdout":"","stderr":"","error":null,"tier":null,"node_id":null,"duration_ms":{ms}}}"#
            )
        };
        for ms in ["33e30", "-1", "1.2e12", "1e400"] {
            let error = parse_outcome(&record(ms)).unwrap_err();
            assert_eq!(
                error.kind(),
                crate::task::ErrorKind::Internal,
                "{ms}: {error}"
            );
        }
        let max = MAX_DURATION_MICROS;
        for micros in [0, 1, 999, 1_000_001, max - 7, max - 1, max] {
            let ms = duration_to_ms(Duration::from_micros(micros));
            assert_eq!(duration_from_ms(ms).unwrap().as_micros(), micros.into());
            let sent = outcome_to_json(&parse_outcome(&record(&ms.to_string())).unwrap());
            assert_eq!(sent, outcome_to_json(&parse_outcome(&sent).unwrap()));
        }
        assert_eq!(duration_to_ms(Duration::MAX), max as f64 / 1e3);
    }

    #[test]
    fn identifiers() {
        assert!(is_identifier("main"));
        assert!(is_identifier("_f2"));
        assert!(is_identifier("données"));
        assert!(!is_identifier("2f"));
        assert!(!is_identifier("a-b"));
        assert!(!is_identifier(""));
    }
}
