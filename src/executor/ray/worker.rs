//! The node side of the Ray executor's warm path: `lattice-wasm ray-worker`,
//! a long-lived process that one Ray actor per node keeps (the actor is in
//! `sidecar.py`). It runs the tasks it is sent on a [`LocalExecutor`] with
//! one worker per CPU of its node — in-process on the wasm and none tiers,
//! as child processes on the others — so a task pays neither a process
//! start nor a Ray task of its own.
//!
//! Its protocol is JSON lines. On stdin, from the executor (through the
//! sidecar and the actor):
//!
//! - `{"run": ID, "task": "<task JSON>", "config": "<sandbox config JSON>"}`:
//!   run the task under exactly that configuration (resolved at submit);
//! - `{"cancel": ID}`: cancel that task, and only it;
//! - `{"session": SID, "req": R, "op": "open"|"exec"|"call"|"close", ...}`:
//!   a session kept in this process ([`Session`]; `open` takes `config`,
//!   `exec` takes `code`, `call` takes `entry` and `input`/`args`/`kwargs`),
//!   answered by `{"ev": "session_reply", "req": R, "reply": {...}}`
//!   ([`crate::session::Reply::to_json`]).
//!
//! On stdout, one line per task, already in the sidecar's event form (the
//! sidecar passes it on unread): `{"ev": "outcome", "id": ID, "outcome":
//! "<result JSON, as exec prints it>"}`. Closing stdin (the actor is gone,
//! or the executor shuts down) cancels what runs, waits until the tiers have
//! cleaned up after it, and exits.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, Write};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::executor::{ExecutorBackend, LocalExecutor};
use crate::sandbox::{SandboxConfig, SessionState};
use crate::session::{Call, Reply, Session};
use crate::task::json::{outcome_to_json, parse_task, task_id};
use crate::task::{TaskError, TaskHandle, TaskOutcome};

/// A line the worker reads.
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub(super) enum WorkerRequest<'a> {
    /// Run a task (its line and configuration as `exec` takes them).
    /// Borrowed when the executor writes it (no copy per task), owned when
    /// the worker reads it.
    Run {
        run: u64,
        task: Cow<'a, str>,
        config: Cow<'a, str>,
    },
    /// Cancel a task sent earlier (or about to be: a cancel may overtake
    /// its run line on the way).
    Cancel { cancel: u64 },
    /// An operation on a session of this worker.
    Session(SessionRequest),
}

/// An operation on a session: `op` and its fields (see the module's doc).
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct SessionRequest {
    pub session: u64,
    pub req: u64,
    pub op: String,
    #[serde(flatten)]
    pub fields: Map<String, Value>,
}

/// Where the lines the worker writes go (see [`write_lines`]).
type Out = mpsc::Sender<String>;

/// The sessions this worker keeps, by the executor's id.
type Sessions = Mutex<HashMap<u64, Arc<Session>>>;

/// Configurations parsed once, by their JSON text; a batch usually has one.
const MAX_CONFIGS: usize = 64;

/// Serves the worker protocol on stdin/stdout with `slots` tasks at a time,
/// until stdin closes. Called by the hidden `lattice-wasm ray-worker`
/// command; not meant for other callers.
#[doc(hidden)]
pub fn serve_ray_worker(slots: usize) -> Result<(), TaskError> {
    let executor = Arc::new(LocalExecutor::new(Some(slots.max(1)), None));
    executor.initialize()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("lattice-ray-worker-out")
        .build()
        .map_err(|e| TaskError::internal(format!("can't start the worker's runtime: {e}")))?;
    let (out, lines) = mpsc::channel::<String>();
    std::thread::Builder::new()
        .name("lattice-ray-worker-write".into())
        .spawn(move || write_lines(&lines))
        .map_err(|e| TaskError::internal(format!("can't start the worker's writer: {e}")))?;
    let running: Arc<Mutex<HashMap<u64, TaskHandle>>> = Arc::default();
    let mut early_cancels: HashSet<u64> = HashSet::new();
    let mut configs: HashMap<String, SandboxConfig> = HashMap::new();
    let sessions: Arc<Sessions> = Arc::default();

    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        match serde_json::from_str::<WorkerRequest>(&line) {
            Ok(WorkerRequest::Run { run, task, config }) => {
                if early_cancels.remove(&run) {
                    let outcome = TaskOutcome::from_error(task_id(&task), TaskError::Cancelled);
                    emit(&out, run, &outcome);
                    continue;
                }
                let submitted = configured(&mut configs, &config).and_then(|config| {
                    let task = parse_task(&task)?;
                    executor.submit_configured(task, config)
                });
                let handle = match submitted {
                    Ok(handle) => handle,
                    Err(error) => {
                        emit(&out, run, &TaskOutcome::from_error(task_id(&task), error));
                        continue;
                    }
                };
                lock(&running).insert(run, handle.clone());
                let (executor, out, running) = (executor.clone(), out.clone(), running.clone());
                runtime.spawn(async move {
                    let outcome = executor.get_result_async(&handle).await;
                    executor.release(&handle);
                    lock(&running).remove(&run);
                    emit(&out, run, &outcome);
                });
            }
            Ok(WorkerRequest::Cancel { cancel }) => {
                let handle = lock(&running).get(&cancel).cloned();
                match handle {
                    Some(handle) => {
                        executor.cancel(&handle);
                    }
                    None => {
                        early_cancels.insert(cancel);
                    }
                }
            }
            Ok(WorkerRequest::Session(request)) => {
                // A session's call blocks until it ends: each has a thread.
                let req = request.req;
                let (sessions, answer_to) = (sessions.clone(), out.clone());
                let spawned = std::thread::Builder::new()
                    .name("lattice-ray-session".into())
                    .spawn(move || answer(&answer_to, req, &session_op(&sessions, request)));
                if let Err(e) = spawned {
                    let error =
                        TaskError::unavailable(format!("the worker can't start a thread: {e}"));
                    answer(
                        &out,
                        req,
                        &Reply::error(error, SessionState::Ready, Instant::now()),
                    );
                }
            }
            Err(error) => eprintln!("lattice ray-worker: a line that is no request ({error})"),
        }
    }
    for (_, session) in lock(&sessions).drain() {
        session.close();
    }
    // The actor is gone, or the executor is shutting down: cancel what
    // runs; shutdown returns once every tier has cleaned up after its task.
    executor.shutdown()?;
    // Lines not written yet go nowhere: nobody reads them any more.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    Ok(())
}

/// The configuration for `text`, parsed once.
fn configured(
    configs: &mut HashMap<String, SandboxConfig>,
    text: &str,
) -> Result<SandboxConfig, TaskError> {
    if let Some(config) = configs.get(text) {
        return Ok(config.clone());
    }
    let config: SandboxConfig = serde_json::from_str(text)
        .map_err(|e| TaskError::invalid(format!("malformed sandbox configuration: {e}")))?;
    if configs.len() >= MAX_CONFIGS {
        configs.clear();
    }
    configs.insert(text.to_string(), config.clone());
    Ok(config)
}

/// Runs one session operation.
fn session_op(sessions: &Sessions, request: SessionRequest) -> Reply {
    let started = Instant::now();
    let SessionRequest {
        session: id,
        op,
        fields,
        ..
    } = request;
    let text = |key: &str| fields.get(key).and_then(Value::as_str).unwrap_or_default();
    let done = |state| Reply::ok(Value::Null, state, started);
    if op == "open" {
        let opened = serde_json::from_str::<SandboxConfig>(text("config"))
            .map_err(|e| TaskError::invalid(format!("malformed sandbox configuration: {e}")))
            .and_then(Session::open);
        return match opened {
            Ok(session) => {
                lock(sessions).insert(id, Arc::new(session));
                done(SessionState::Ready)
            }
            Err(error) => Reply::error(error, SessionState::Closed, started),
        };
    }
    let session = lock(sessions).get(&id).cloned();
    let Some(session) = session else {
        let error = TaskError::invalid("the session is closed");
        return Reply::error(error, SessionState::Closed, started);
    };
    match op.as_str() {
        "exec" => session.exec(text("code")),
        "call" => session.call(text("entry"), Call::from_request(&fields)),
        "close" => {
            lock(sessions).remove(&id);
            session.close();
            done(SessionState::Closed)
        }
        _ => Reply::error(
            TaskError::invalid(format!("no session operation '{op}'")),
            SessionState::Ready,
            started,
        ),
    }
}

/// Writes a task's outcome line.
fn emit(out: &Out, run: u64, outcome: &TaskOutcome) {
    write_line(
        out,
        &json!({"ev": "outcome", "id": run, "outcome": outcome_to_json(outcome)}),
    );
}

/// Writes a session operation's reply.
fn answer(out: &Out, req: u64, reply: &Reply) {
    write_line(
        out,
        &json!({"ev": "session_reply", "req": req, "reply": reply.to_json()}),
    );
}

/// Queues one line for the writer.
fn write_line(out: &Out, line: &Value) {
    let _ = out.send(format!("{line}\n"));
}

/// Writes the lines as they come, each batch that queued up meanwhile with
/// one write: every write wakes the actor, whose Python costs more than a
/// trivial task. A closed stdout means the actor is gone: stdin closes too,
/// and the worker's loop ends there.
fn write_lines(lines: &mpsc::Receiver<String>) {
    let mut stdout = std::io::stdout().lock();
    let mut batch = String::new();
    while let Ok(line) = lines.recv() {
        batch.push_str(&line);
        while let Ok(line) = lines.try_recv() {
            batch.push_str(&line);
        }
        let _ = stdout
            .write_all(batch.as_bytes())
            .and_then(|()| stdout.flush());
        batch.clear();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_decode_as_the_executor_writes_them() {
        let run = serde_json::to_string(&WorkerRequest::Run {
            run: 7,
            task: r#"{"code": "def f(): return 1"}"#.into(),
            config: "{}".into(),
        })
        .unwrap();
        let Ok(WorkerRequest::Run { run: 7, task, .. }) = serde_json::from_str(&run) else {
            panic!("{run}")
        };
        assert!(task.contains("return 1"));
        assert!(matches!(
            serde_json::from_str(r#"{"cancel": 7}"#),
            Ok(WorkerRequest::Cancel { cancel: 7 })
        ));
        let Ok(WorkerRequest::Session(request)) = serde_json::from_str(
            r#"{"session": 3, "req": 4, "op": "call", "entry": "f", "args": [1]}"#,
        ) else {
            panic!("a session request")
        };
        assert_eq!(
            (request.session, request.req, request.op.as_str()),
            (3, 4, "call")
        );
        assert_eq!(request.fields["args"], serde_json::json!([1]));
    }

    #[test]
    fn session_operations_run_in_the_worker_and_answer_replies() {
        let sessions = Sessions::default();
        let op = |op: &str, fields: Value| {
            let request = SessionRequest {
                session: 1,
                req: 0,
                op: op.into(),
                fields: fields.as_object().cloned().unwrap_or_default(),
            };
            Reply::from_json(&session_op(&sessions, request).to_json()).unwrap()
        };
        let config = serde_json::to_string(&SandboxConfig {
            tier: crate::sandbox::SandboxLevel::None,
            ..SandboxConfig::default()
        })
        .unwrap();
        assert!(op("open", json!({ "config": config })).result.is_ok());
        op("exec", json!({"code": "def f(x):\n    return x + 1"}))
            .result
            .unwrap();
        let reply = op("call", json!({"entry": "f", "input": 41}));
        assert_eq!(reply.result.unwrap(), json!(42));
        assert_eq!(op("close", json!({})).state, SessionState::Closed);
        let reply = op("exec", json!({"code": "1"}));
        assert_eq!(reply.state, SessionState::Closed);
        assert!(reply.result.is_err());
    }
}
