//! `POST /run_code`: SandboxFusion's judge endpoint, so that a client
//! written for it (verl, open-instruct, ...) works unchanged.
//!
//! The request is SandboxFusion's (`code`, `language`, `stdin`,
//! `run_timeout`, `memory_limit_MB`, `files` as name -> base64,
//! `fetch_files`; `compile_timeout`, as Python compiles nothing ahead, and
//! other fields are ignored, as there); `python`
//! code runs in script mode on the server's tier. The answer maps as
//! SandboxFusion maps its runs: a program that exits 0 is `Success`, one
//! that exits otherwise (an exception, a syntax error, `sys.exit(n)`) or
//! runs out of time is `Failed`, with `run_result.status` `Finished` or
//! `TimeLimitExceeded`; a request the sandbox can't run (an unsupported
//! language, a setting the operator refuses, a tier that is down) is
//! `SandboxError` with a message.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use lattice::task::json::{ResultRecord, TaskSpec};
use lattice::task::{ErrorKind, TaskError, TaskOutcome, TaskSubmission};
use serde::Deserialize;
use serde_json::{json, Value};

use super::Shared;

/// The languages this endpoint runs.
const LANGUAGES: [&str; 1] = ["python"];

#[derive(Deserialize)]
struct RunCodeRequest {
    code: String,
    language: String,
    #[serde(default)]
    stdin: Option<String>,
    #[serde(default = "ten_seconds")]
    run_timeout: f64,
    #[serde(default, rename = "memory_limit_MB")]
    memory_limit_mb: Option<f64>,
    #[serde(default)]
    files: BTreeMap<String, Option<String>>,
    #[serde(default)]
    fetch_files: Vec<String>,
}

fn ten_seconds() -> f64 {
    10.0
}

pub(super) async fn run_code(State(server): State<Shared>, body: Bytes) -> Response {
    let request: RunCodeRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        // As FastAPI answers a request its model refuses.
        Err(error) => {
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                axum::Json(json!({"detail": [{"msg": error.to_string(), "type": "value_error"}]})),
            )
                .into_response()
        }
    };
    if !LANGUAGES.contains(&request.language.as_str()) {
        return sandbox_error(format!(
            "language '{}' is not supported here: this server runs {}",
            request.language,
            LANGUAGES.join(", ")
        ));
    }
    let task = match task(&request).and_then(|task| server.checked(task)) {
        Ok(task) => task,
        Err(error) => {
            server.refused(None, error.clone());
            return sandbox_error(error.to_string());
        }
    };
    let _admitted = match server.admit(1) {
        Ok(admitted) => admitted,
        Err(full) => return full,
    };
    let outcome = server.outcome(task).await;
    axum::Json(answer(&outcome)).into_response()
}

/// The script task of a request, as a task line would give it.
fn task(request: &RunCodeRequest) -> Result<TaskSubmission, TaskError> {
    let spec = TaskSpec {
        code: Some(request.code.clone()),
        script: true,
        stdin: Some(request.stdin.clone().unwrap_or_default()),
        // 0 or less: the server's limit.
        timeout_s: Some(request.run_timeout).filter(|&s| s > 0.0),
        // -1 (SandboxFusion's default) or 0: the server's limit.
        max_memory_mb: request
            .memory_limit_mb
            .filter(|&mb| mb > 0.0)
            .map(|mb| mb.ceil().min(u64::MAX as f64) as u64),
        // SandboxFusion skips a file without content.
        files: Some(
            request
                .files
                .iter()
                .filter_map(|(path, content)| Some((path.clone(), content.clone()?)))
                .collect(),
        )
        .filter(|files: &BTreeMap<String, String>| !files.is_empty()),
        fetch_files: Some(request.fetch_files.clone()).filter(|names| !names.is_empty()),
        ..TaskSpec::default()
    };
    spec.into_submission()
}

/// SandboxFusion's answer for an outcome.
fn answer(outcome: &TaskOutcome) -> Value {
    let seconds = outcome.duration.as_secs_f64();
    let run = |status: &str, return_code: Option<i32>, stderr: &str| {
        json!({
            "status": status,
            "execution_time": seconds,
            "return_code": return_code,
            "stdout": outcome.stdout,
            "stderr": stderr,
        })
    };
    let files = ResultRecord::from(outcome).files.unwrap_or_default();
    let (status, message, run_result) = match (&outcome.result, outcome.exit_code) {
        (_, Some(code)) => (
            if code == 0 { "Success" } else { "Failed" },
            String::new(),
            run("Finished", Some(code), &outcome.stderr),
        ),
        (Err(error), None) => match error.kind() {
            ErrorKind::Timeout => (
                "Failed",
                String::new(),
                run("TimeLimitExceeded", None, &outcome.stderr),
            ),
            // What CPython does when an allocation fails: MemoryError, exit 1.
            ErrorKind::MemoryLimit => (
                "Failed",
                String::new(),
                run(
                    "Finished",
                    Some(1),
                    &format!("{}MemoryError: {error}\n", outcome.stderr),
                ),
            ),
            _ => (
                "SandboxError",
                error.to_string(),
                run("Error", None, &error.to_string()),
            ),
        },
        (Ok(_), None) => (
            "SandboxError",
            "the program ended without an exit code".to_string(),
            run("Error", None, &outcome.stderr),
        ),
    };
    json!({
        "status": status,
        "message": message,
        "compile_result": null,
        "run_result": run_result,
        "executor_pod_name": null,
        "files": files,
    })
}

fn sandbox_error(message: String) -> Response {
    axum::Json(json!({
        "status": "SandboxError",
        "message": message,
        "compile_result": null,
        "run_result": null,
        "executor_pod_name": null,
        "files": {},
    }))
    .into_response()
}
