//! `/v1/sessions`: sessions over HTTP.
//!
//! - `POST /v1/sessions` `{tier?, timeout_s?, max_memory_mb?, max_cpu_time_s?,
//!   allowed_imports?, network?, functions?: [name], idle_timeout_s?}` ->
//!   201 `{id, tier, functions, idle_timeout_s}`; or, to restore one, the
//!   bytes of a snapshot as `application/octet-stream` with the settings in
//!   the query (`?functions=a,b&timeout_s=5`).
//! - `POST /v1/sessions/{id}/exec` `{code}`, `POST .../call` `{entry, input
//!   | args/kwargs}` -> the call's reply (`Reply::to_json`): `status` ok or
//!   error, `value`, `repr`, `stdout`, `stderr`, `session`, `duration_ms`.
//! - A call of one of the session's `functions` suspends the exec: the
//!   answer is `{status: "host_call", call: {id, name, args, kwargs}}`, and
//!   `POST .../resume` `{call_id, result | error}` answers it and goes on
//!   to the next host call or the end. The exec's wall-clock limit counts
//!   the time it waits.
//! - `GET .../snapshot` -> the bytes (wasm tier); `DELETE /v1/sessions/{id}`;
//!   `GET /v1/sessions` lists them. A session unused for its idle timeout
//!   is closed and forgotten.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use lattice::sandbox::{CancelToken, SandboxLevel};
use lattice::session::{Call, Reply, Session};
use lattice::task::{
    ErrorKind, HostCall, HostError, HostFunctions, SandboxOverrides, TaskError, TaskSubmission,
};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, oneshot};

use super::{problem, Shared};

/// The open sessions, by id.
pub(super) struct Table {
    idle_timeout: Duration,
    sessions: Mutex<HashMap<String, Arc<Entry>>>,
}

struct Entry {
    session: Arc<Session>,
    bridge: Arc<Bridge>,
    functions: Vec<String>,
    /// The call in progress (between a host call and its answer), taken by
    /// one request at a time.
    running: tokio::sync::Mutex<Option<Running>>,
}

/// A call of the session that has not ended yet.
struct Running {
    events: mpsc::UnboundedReceiver<Event>,
    cancel: CancelToken,
}

enum Event {
    HostCall { id: String, call: HostCall },
    Done(Reply),
}

/// Carries the host calls of a session's code to its HTTP client, and the
/// client's answers back.
#[derive(Default)]
struct Bridge {
    /// Where the call running now sends its host calls.
    events: Mutex<Option<mpsc::UnboundedSender<Event>>>,
    /// Host calls waiting for their answer, by id.
    waiting: Mutex<HashMap<String, oneshot::Sender<Result<Value, HostError>>>>,
    next_id: AtomicU64,
}

impl Bridge {
    async fn call(self: Arc<Self>, call: HostCall) -> Result<Value, HostError> {
        let id = format!("call-{}", self.next_id.fetch_add(1, Ordering::Relaxed) + 1);
        let (answer, answered) = oneshot::channel();
        lock(&self.waiting).insert(id.clone(), answer);
        // Forgotten when the call ends, answered or not (the exec's deadline
        // drops this future).
        let _forget = Forget {
            bridge: self.clone(),
            id: id.clone(),
        };
        let sent = lock(&self.events)
            .as_ref()
            .is_some_and(|events| events.send(Event::HostCall { id, call }).is_ok());
        if !sent {
            return Err(HostError::new("no client is there to answer the host call"));
        }
        answered
            .await
            .unwrap_or_else(|_| Err(HostError::new("the host call was not answered")))
    }
}

struct Forget {
    bridge: Arc<Bridge>,
    id: String,
}

impl Drop for Forget {
    fn drop(&mut self) {
        lock(&self.bridge.waiting).remove(&self.id);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Table {
    pub(super) fn new(idle_timeout: Duration) -> Table {
        Table {
            idle_timeout,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    pub(super) fn len(&self) -> usize {
        lock(&self.sessions).len()
    }

    fn get(&self, id: &str) -> Result<Arc<Entry>, Response> {
        lock(&self.sessions)
            .get(id)
            .cloned()
            .ok_or_else(|| problem(StatusCode::NOT_FOUND, &format!("no session '{id}'")))
    }

    /// Forgets the sessions that closed (their idle timeout, a crash).
    pub(super) fn sweep(&self) {
        lock(&self.sessions).retain(|_, entry| entry.session.is_open());
    }

    /// Closes every session (at shutdown).
    pub(super) fn close_all(&self) {
        let entries: Vec<Arc<Entry>> = lock(&self.sessions).drain().map(|(_, e)| e).collect();
        for entry in entries {
            entry.session.close();
        }
    }
}

/// A session's settings, as the JSON body or the query of a create.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Settings {
    tier: Option<SandboxLevel>,
    timeout_s: Option<f64>,
    max_memory_mb: Option<u64>,
    max_cpu_time_s: Option<f64>,
    allowed_imports: Option<Vec<String>>,
    network: Option<bool>,
    functions: Option<Vec<String>>,
    idle_timeout_s: Option<f64>,
}

/// The query form of [`Settings`] (lists comma-separated).
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SettingsQuery {
    tier: Option<SandboxLevel>,
    timeout_s: Option<f64>,
    max_memory_mb: Option<u64>,
    max_cpu_time_s: Option<f64>,
    allowed_imports: Option<String>,
    network: Option<bool>,
    functions: Option<String>,
    idle_timeout_s: Option<f64>,
}

fn split(list: Option<String>) -> Option<Vec<String>> {
    list.map(|list| {
        list.split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .map(String::from)
            .collect()
    })
}

pub(super) async fn create(
    State(server): State<Shared>,
    Query(query): Query<SettingsQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let raw_snapshot = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/octet-stream"));
    let (settings, snapshot) = if raw_snapshot {
        let settings = Settings {
            tier: query.tier,
            timeout_s: query.timeout_s,
            max_memory_mb: query.max_memory_mb,
            max_cpu_time_s: query.max_cpu_time_s,
            allowed_imports: split(query.allowed_imports),
            network: query.network,
            functions: split(query.functions),
            idle_timeout_s: query.idle_timeout_s,
        };
        (settings, Some(body.to_vec()))
    } else {
        let settings: Settings = if body.iter().all(u8::is_ascii_whitespace) {
            Settings::default()
        } else {
            match serde_json::from_slice(&body) {
                Ok(settings) => settings,
                Err(error) => {
                    return task_error(TaskError::invalid(format!(
                        "malformed session settings: {error}"
                    )))
                }
            }
        };
        (settings, None)
    };
    let (config, idle_timeout) = match resolve(&server, &settings) {
        Ok(resolved) => resolved,
        Err(error) => return task_error(error),
    };
    if server.sessions.len() >= lattice::session::max_sessions() {
        let mut response = problem(
            StatusCode::TOO_MANY_REQUESTS,
            "the most sessions this server allows are open: close one first",
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
        return response;
    }
    let names = settings.functions.unwrap_or_default();
    let bridge = Arc::new(Bridge::default());
    let mut functions = HostFunctions::new();
    for name in &names {
        let bridge = bridge.clone();
        functions = functions.register_async(name.clone(), move |call| bridge.clone().call(call));
    }
    if let Err(error) = functions.check() {
        return task_error(error);
    }
    let opened = tokio::task::spawn_blocking(move || {
        let builder = Session::builder(config)
            .idle_timeout(idle_timeout)
            .host_functions(functions);
        match snapshot {
            Some(bytes) => builder.restore(&bytes),
            None => builder.open(),
        }
    })
    .await
    .unwrap_or_else(|_| Err(TaskError::internal("opening the session failed")));
    let session = match opened {
        Ok(session) => session,
        Err(error) => return task_error(error),
    };
    let id = new_id();
    let tier = session.tier();
    let entry = Arc::new(Entry {
        session: Arc::new(session),
        bridge,
        functions: names.clone(),
        running: tokio::sync::Mutex::new(None),
    });
    lock(&server.sessions.sessions).insert(id.clone(), entry);
    (
        StatusCode::CREATED,
        axum::Json(json!({
            "id": id,
            "tier": tier,
            "functions": names,
            "idle_timeout_s": idle_timeout.as_secs_f64(),
        })),
    )
        .into_response()
}

/// The session's configuration (the server's, with the settings the
/// operator's policy allows) and idle timeout.
fn resolve(
    server: &Shared,
    settings: &Settings,
) -> Result<(lattice::sandbox::SandboxConfig, Duration), TaskError> {
    let seconds = |field: &str, value: Option<f64>| -> Result<Option<Duration>, TaskError> {
        value
            .map(|s| {
                lattice::task::limit_seconds(s).ok_or_else(|| {
                    TaskError::invalid(format!(
                        "{field} must be a number of seconds from 1 ns to 10^9, got {s}"
                    ))
                })
            })
            .transpose()
    };
    let mut probe = TaskSubmission::python("");
    probe.sandbox = SandboxOverrides {
        tier: settings.tier,
        timeout: seconds("timeout_s", settings.timeout_s)?,
        max_memory_mb: settings.max_memory_mb,
        max_cpu_time: seconds("max_cpu_time_s", settings.max_cpu_time_s)?,
        allowed_imports: settings.allowed_imports.clone(),
        network: settings.network,
        mounts: None,
    };
    if settings.max_memory_mb == Some(0) {
        return Err(TaskError::invalid("max_memory_mb must be at least 1"));
    }
    server.policy.check(&probe, &server.config)?;
    let idle = seconds("idle_timeout_s", settings.idle_timeout_s)?
        .unwrap_or(server.sessions.idle_timeout)
        .min(server.sessions.idle_timeout);
    Ok((server.config.with_overrides(&probe.sandbox), idle))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ExecRequest {
    code: String,
}

pub(super) async fn exec(
    State(server): State<Shared>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let request: ExecRequest = match parse(&body) {
        Ok(request) => request,
        Err(response) => return response,
    };
    start(&server, &id, move |session, cancel| {
        session.exec_cancellable(&request.code, cancel)
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CallRequest {
    entry: String,
    #[serde(default, deserialize_with = "present")]
    input: Option<Value>,
    args: Option<Vec<Value>>,
    kwargs: Option<Map<String, Value>>,
}

fn present<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

pub(super) async fn call(
    State(server): State<Shared>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let request: CallRequest = match parse(&body) {
        Ok(request) => request,
        Err(response) => return response,
    };
    let call = match (request.input, request.args, request.kwargs) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            return task_error(TaskError::invalid(
                "give either input or args/kwargs, not both",
            ))
        }
        (Some(input), None, None) => Call::input(input),
        (None, args, Some(kwargs)) => Call::args(args.unwrap_or_default()).with_kwargs(kwargs),
        (None, Some(args), None) => Call::args(args),
        (None, None, None) => Call::none(),
    };
    let entry = request.entry;
    start(&server, &id, move |session, cancel| {
        session.call_cancellable(&entry, call, cancel)
    })
    .await
}

/// Starts a call of the session and answers with its first event.
async fn start(
    server: &Shared,
    id: &str,
    work: impl FnOnce(&Session, &CancelToken) -> Reply + Send + 'static,
) -> Response {
    let entry = match server.sessions.get(id) {
        Ok(entry) => entry,
        Err(response) => return response,
    };
    let Ok(mut running) = entry.running.try_lock() else {
        return busy();
    };
    if let Some(call) = running.as_mut() {
        // A call left behind (its client went away) that has ended is done with.
        match call.events.try_recv() {
            Ok(Event::Done(_)) | Err(mpsc::error::TryRecvError::Disconnected) => *running = None,
            _ => return busy(),
        }
    }
    let (events, receiver) = mpsc::unbounded_channel();
    *lock(&entry.bridge.events) = Some(events.clone());
    let cancel = CancelToken::new();
    let session = entry.session.clone();
    let token = cancel.clone();
    tokio::task::spawn_blocking(move || {
        let reply = work(&session, &token);
        let _ = events.send(Event::Done(reply));
    });
    *running = Some(Running {
        events: receiver,
        cancel,
    });
    next_event(&mut running).await
}

fn busy() -> Response {
    problem(
        StatusCode::CONFLICT,
        "the session is busy: a call of it is running or waits for a host call's answer (POST .../resume)",
    )
}

/// Waits for the running call's next event: a host call (the call stays
/// running) or its end. A client that goes away meanwhile cancels the call.
async fn next_event(running: &mut Option<Running>) -> Response {
    let Some(call) = running.as_mut() else {
        return problem(StatusCode::CONFLICT, "no call of the session is running");
    };
    let guard = CancelUnlessAnswered(Some(call.cancel.clone()));
    let event = call.events.recv().await;
    guard.answered();
    match event {
        Some(Event::HostCall { id, call }) => axum::Json(json!({
            "status": "host_call",
            "call": {"id": id, "name": call.name, "args": call.args, "kwargs": call.kwargs},
        }))
        .into_response(),
        Some(Event::Done(reply)) => {
            *running = None;
            axum::Json(reply.to_json()).into_response()
        }
        None => {
            *running = None;
            task_error(TaskError::internal(
                "the session's call ended without a reply",
            ))
        }
    }
}

struct CancelUnlessAnswered(Option<CancelToken>);

impl CancelUnlessAnswered {
    fn answered(mut self) {
        self.0 = None;
    }
}

impl Drop for CancelUnlessAnswered {
    fn drop(&mut self) {
        if let Some(cancel) = self.0.take() {
            cancel.cancel();
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ResumeRequest {
    call_id: String,
    #[serde(default, deserialize_with = "present")]
    result: Option<Value>,
    error: Option<String>,
}

pub(super) async fn resume(
    State(server): State<Shared>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let request: ResumeRequest = match parse(&body) {
        Ok(request) => request,
        Err(response) => return response,
    };
    let answer = match (request.result, request.error) {
        (Some(value), None) => Ok(value),
        (None, Some(message)) => Err(HostError::new(message)),
        _ => return task_error(TaskError::invalid("give exactly one of result and error")),
    };
    let entry = match server.sessions.get(&id) {
        Ok(entry) => entry,
        Err(response) => return response,
    };
    let Ok(mut running) = entry.running.try_lock() else {
        return busy();
    };
    let waiting = lock(&entry.bridge.waiting).remove(&request.call_id);
    let delivered = waiting.is_some_and(|sender| sender.send(answer).is_ok());
    match delivered {
        true => next_event(&mut running).await,
        false => {
            // Not waiting (any more): perhaps the call ran out of time
            // meanwhile, and its end is there to give.
            if let Some(call) = running.as_mut() {
                if let Ok(Event::Done(reply)) = call.events.try_recv() {
                    *running = None;
                    return axum::Json(reply.to_json()).into_response();
                }
            }
            problem(
                StatusCode::CONFLICT,
                &format!("no host call '{}' waits for an answer", request.call_id),
            )
        }
    }
}

pub(super) async fn snapshot(State(server): State<Shared>, Path(id): Path<String>) -> Response {
    let entry = match server.sessions.get(&id) {
        Ok(entry) => entry,
        Err(response) => return response,
    };
    if entry.session.tier() != SandboxLevel::Wasm {
        // The client asked for what this session can't give: not a
        // service that is unavailable for now.
        return problem(
            StatusCode::BAD_REQUEST,
            &format!(
                "session snapshots are supported on the wasm tier only, not on the {} tier",
                entry.session.tier()
            ),
        );
    }
    let Ok(running) = entry.running.try_lock() else {
        return busy();
    };
    if running.is_some() {
        return busy();
    }
    let session = entry.session.clone();
    let taken = tokio::task::spawn_blocking(move || session.snapshot())
        .await
        .unwrap_or_else(|_| Err(TaskError::internal("the snapshot failed")));
    drop(running);
    match taken {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response(),
        Err(error) => task_error(error),
    }
}

pub(super) async fn delete(State(server): State<Shared>, Path(id): Path<String>) -> Response {
    let entry = lock(&server.sessions.sessions).remove(&id);
    let Some(entry) = entry else {
        return problem(StatusCode::NOT_FOUND, &format!("no session '{id}'"));
    };
    let session = entry.session.clone();
    let _ = tokio::task::spawn_blocking(move || session.close()).await;
    StatusCode::NO_CONTENT.into_response()
}

pub(super) async fn list(State(server): State<Shared>) -> Response {
    let sessions: Vec<Value> = lock(&server.sessions.sessions)
        .iter()
        .map(|(id, entry)| {
            json!({
                "id": id,
                "tier": entry.session.tier(),
                "open": entry.session.is_open(),
                "functions": entry.functions,
            })
        })
        .collect();
    axum::Json(json!({ "sessions": sessions })).into_response()
}

/// A request body as `T`, or the 400 answer saying why not.
fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Response> {
    serde_json::from_slice(body)
        .map_err(|e| task_error(TaskError::invalid(format!("malformed request: {e}"))))
}

/// An error as an answer: `{"status": "error", "error": {kind, type,
/// message, traceback}}`, with the status code its kind calls for.
fn task_error(error: TaskError) -> Response {
    let status = match error.kind() {
        ErrorKind::InvalidTask => StatusCode::BAD_REQUEST,
        ErrorKind::SandboxUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Cancelled => StatusCode::CONFLICT,
        ErrorKind::MemoryLimit => StatusCode::UNPROCESSABLE_ENTITY,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (
        status,
        axum::Json(json!({"status": "error", "error": error.to_record()})),
    )
        .into_response()
}

/// A new session id: 128 random bits, hex.
fn new_id() -> String {
    let mut bytes = [0u8; 16];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .is_err()
    {
        // No urandom: the time and a counter still make ids unique here.
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        bytes[..8].copy_from_slice(&now.to_le_bytes());
        bytes[8..].copy_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
