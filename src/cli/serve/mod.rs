//! `serve`: lattice over HTTP (axum on a Tokio runtime of its own).
//!
//! - `POST /v1/run`: one task JSON in, its result JSON out (200; 400 with an
//!   `invalid_task` result for a task that is malformed or not allowed).
//! - `POST /v1/batch`: task JSON lines in, result lines out as
//!   `application/x-ndjson`, streamed (input order; `?order=completion` for
//!   as they finish); a client that goes away cancels what is left.
//! - `/v1/sessions...`: sessions, with host functions that suspend an exec
//!   until the client answers (see `sessions`).
//! - `POST /run_code`: SandboxFusion's judge endpoint (see `fusion`).
//! - `GET /v1/health`, `GET /v1/resources`, `GET /metrics` (Prometheus).
//!
//! Every request passes the operator's policy (the limit and policy flags),
//! a bearer token when `--token-file` is given (required beyond loopback),
//! a body cap (413) and a bounded queue (429 with Retry-After). SIGTERM or
//! SIGINT stops accepting, lets running requests finish for `--grace`,
//! then cancels the rest and closes every session.

// A handler's early answer is an axum `Response` in `Err`: returned once per
// refused request, so its size costs nothing worth boxing for.
#![allow(clippy::result_large_err)]

mod fusion;
mod metrics;
mod sessions;
mod tasks;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use lattice::executor::{create_executor, ExecutorBackend, ExecutorOptions};
use lattice::sandbox::{Policy, SandboxConfig};
use lattice::task::{ExecutorType, TaskError, TaskOutcome, TaskSubmission};
use serde_json::json;

use super::args::ServeArgs;
use super::{signals, usage};

/// What every handler shares.
struct Server {
    executor: Arc<dyn ExecutorBackend>,
    executor_type: ExecutorType,
    config: SandboxConfig,
    policy: Policy,
    token: Option<String>,
    workers: usize,
    /// Tasks accepted and not finished, and the most there may be.
    in_flight: AtomicUsize,
    max_queue: usize,
    max_body: usize,
    metrics: metrics::Metrics,
    sessions: sessions::Table,
}

type Shared = Arc<Server>;

pub(super) fn run(args: ServeArgs) -> Result<i32> {
    if !args.addr.ip().is_loopback() && args.token_file.is_none() {
        return Err(usage(format!(
            "refusing to serve on {} without --token-file: beyond loopback every request must carry a bearer token",
            args.addr
        )));
    }
    let token = match &args.token_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| usage(format!("can't read {}: {e}", path.display())))?;
            let token = text.trim().to_string();
            if token.is_empty() || token.contains(char::is_whitespace) {
                return Err(usage(format!(
                    "{} must hold one token (no spaces)",
                    path.display()
                )));
            }
            Some(token)
        }
        None => None,
    };
    let config = args.limits.config();
    let policy = args.policy.policy(&config);
    let workers = args
        .concurrency
        .map(|n| n as usize)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let executor: Arc<dyn ExecutorBackend> = Arc::from(create_executor(
        args.executor,
        ExecutorOptions {
            max_workers: Some(workers),
            sandbox: Some(config.clone()),
            ray: args.ray.options(),
        },
    )?);
    executor.initialize()?;
    if args.executor == ExecutorType::Local {
        super::prepare_wasm_if_cold(config.tier)?;
    }
    lattice::session::set_max_sessions(usize::try_from(args.max_sessions).unwrap_or(usize::MAX));
    let server = Arc::new(Server {
        executor: executor.clone(),
        executor_type: args.executor,
        config,
        policy,
        token,
        workers,
        in_flight: AtomicUsize::new(0),
        max_queue: usize::try_from(args.max_queue).unwrap_or(usize::MAX),
        max_body: usize::try_from(args.max_body_bytes).unwrap_or(usize::MAX),
        metrics: metrics::Metrics::default(),
        sessions: sessions::Table::new(args.session_idle_timeout),
    });

    // Few threads parse HTTP (one per four cores): tasks run on the
    // executor's workers, and on a small machine a second runtime thread
    // measurably adds a cross-thread wake-up to each request.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads((cores / 4).max(1))
        .enable_all()
        .thread_name("lattice-serve")
        .build()
        .context("starting the HTTP runtime")?;
    let served = runtime.block_on(serve(server.clone(), &args));
    // Whatever ended the service: nothing of it keeps running.
    server.sessions.close_all();
    signals::clear();
    let _ = executor.shutdown();
    drop(runtime);
    served?;
    Ok(0)
}

async fn serve(server: Shared, args: &ServeArgs) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("can't listen on {}", args.addr))?;
    eprintln!(
        "lattice-wasm: serving on http://{} ({} executor, {} tier{})",
        listener.local_addr()?,
        server.executor_type,
        server.config.tier,
        if server.token.is_some() {
            ", bearer token required"
        } else {
            ""
        }
    );
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    signals::on_signal(move || {
        let _ = stop.send(true);
    });
    let shutdown = {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|&stop| stop).await;
        }
    };
    // After the grace period, what still runs is cancelled.
    let grace = args.grace;
    let canceller = {
        let server = server.clone();
        tokio::spawn(async move {
            let _ = stopped.wait_for(|&stop| stop).await;
            eprintln!(
                "lattice-wasm: stopping: no new requests; cancelling what runs in {:.0} s",
                grace.as_secs_f64()
            );
            tokio::time::sleep(grace).await;
            server.sessions.close_all();
            let executor = server.executor.clone();
            let _ = tokio::task::spawn_blocking(move || executor.shutdown()).await;
        })
    };
    let sweeper = {
        let server = server.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                server.sessions.sweep();
            }
        })
    };
    let app = router(server.clone());
    // Answers and streamed result lines go out as soon as written (no
    // Nagle wait behind a delayed ACK).
    let listener = axum::serve::ListenerExt::tap_io(listener, |stream| {
        let _ = stream.set_nodelay(true);
    });
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving HTTP");
    canceller.abort();
    sweeper.abort();
    served
}

fn router(server: Shared) -> Router {
    Router::new()
        .route("/v1/run", post(tasks::run))
        .route("/v1/batch", post(tasks::batch))
        .route("/run_code", post(fusion::run_code))
        .route("/v1/sessions", post(sessions::create).get(sessions::list))
        .route("/v1/sessions/{id}", axum::routing::delete(sessions::delete))
        .route("/v1/sessions/{id}/exec", post(sessions::exec))
        .route("/v1/sessions/{id}/call", post(sessions::call))
        .route("/v1/sessions/{id}/resume", post(sessions::resume))
        .route("/v1/sessions/{id}/snapshot", get(sessions::snapshot))
        .route("/v1/health", get(health))
        .route("/v1/resources", get(resources))
        .route("/metrics", get(metrics::render))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(server.max_body))
        .layer(axum::middleware::from_fn_with_state(server.clone(), guard))
        .with_state(server)
}

/// The bearer token, and the count of every answer by status.
async fn guard(State(server): State<Shared>, request: Request, next: Next) -> Response {
    if let Some(token) = &server.token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|given| same_secret(given.trim().as_bytes(), token.as_bytes())) {
            server.metrics.http(StatusCode::UNAUTHORIZED);
            let mut response = problem(StatusCode::UNAUTHORIZED, "a bearer token is required");
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return response;
        }
    }
    let response = next.run(request).await;
    server.metrics.http(response.status());
    response
}

/// Compares two secrets in time that depends on their lengths only.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

async fn not_found() -> Response {
    problem(StatusCode::NOT_FOUND, "no such endpoint")
}

async fn health(State(server): State<Shared>) -> Response {
    axum::Json(json!({
        "status": "ok",
        "executor": server.executor_type,
        "tier": server.config.tier,
        "tasks_in_flight": server.in_flight.load(Ordering::Relaxed),
        "sessions": server.sessions.len(),
    }))
    .into_response()
}

async fn resources(State(server): State<Shared>) -> Response {
    let executor = server.executor.clone();
    match tokio::task::spawn_blocking(move || executor.get_available_resources()).await {
        Ok(Ok(resources)) => axum::Json(resources).into_response(),
        Ok(Err(error)) => problem(StatusCode::SERVICE_UNAVAILABLE, &error.to_string()),
        Err(_) => problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the resources query failed",
        ),
    }
}

/// A JSON error answer: `{"error": message}`.
fn problem(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "error": message }))).into_response()
}

/// A place in the queue for `n` tasks, given back when dropped.
struct Admitted {
    server: Shared,
    n: usize,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.server.in_flight.fetch_sub(self.n, Ordering::Relaxed);
    }
}

impl Server {
    /// Takes `n` places in the queue, or answers 429 when it is full.
    fn admit(self: &Arc<Self>, n: usize) -> Result<Admitted, Response> {
        let taken = self.in_flight.fetch_add(n, Ordering::Relaxed);
        let admitted = Admitted {
            server: self.clone(),
            n,
        };
        if taken + n > self.max_queue {
            drop(admitted);
            let mut response = problem(
                StatusCode::TOO_MANY_REQUESTS,
                &format!(
                    "the queue is full ({} tasks accepted and not finished); retry later",
                    self.max_queue
                ),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return Err(response);
        }
        Ok(admitted)
    }

    /// A place in the queue for `n` tasks already accepted (a batch's).
    fn occupy(self: &Arc<Self>, n: usize) -> Admitted {
        self.in_flight.fetch_add(n, Ordering::Relaxed);
        Admitted {
            server: self.clone(),
            n,
        }
    }

    /// The outcome of a task refused before it ran (counted as such).
    fn refused(&self, id: Option<serde_json::Value>, error: TaskError) -> TaskOutcome {
        let outcome = TaskOutcome::from_error(id, error);
        self.metrics.task(&outcome);
        outcome
    }

    /// The task in `text`, if it is one the operator allows.
    fn task(&self, text: &str) -> Result<TaskSubmission, TaskError> {
        let task = lattice::task::json::parse_task(text)?;
        self.checked(task)
    }

    /// `task` if the operator's policy allows it.
    fn checked(&self, task: TaskSubmission) -> Result<TaskSubmission, TaskError> {
        self.policy.check(&task, &self.config)?;
        Ok(task)
    }

    /// Runs one task to its outcome; dropped (the client went away), it
    /// cancels the task.
    async fn outcome(self: &Arc<Self>, task: TaskSubmission) -> TaskOutcome {
        let id = task.id.clone();
        let executor = self.executor.clone();
        // The Ray executor's submit makes HTTP calls of its own (blocking).
        let submitted = if self.executor_type == ExecutorType::Local {
            executor.submit(task)
        } else {
            tokio::task::spawn_blocking(move || executor.submit(task))
                .await
                .unwrap_or_else(|_| Err(TaskError::internal("submitting the task failed")))
        };
        let handle = match submitted {
            Ok(handle) => handle,
            Err(error) => return TaskOutcome::from_error(id, error),
        };
        let cancel = CancelOnDrop {
            server: self.clone(),
            handle: Some(handle.clone()),
        };
        let outcome = self.executor.get_result_async(&handle).await;
        cancel.disarm();
        self.executor.release(&handle);
        self.metrics.task(&outcome);
        outcome
    }
}

/// Cancels a task whose outcome nobody waits for any more.
struct CancelOnDrop {
    server: Shared,
    handle: Option<lattice::task::TaskHandle>,
}

impl CancelOnDrop {
    fn disarm(mut self) {
        self.handle = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            self.server.executor.cancel(&handle);
            // Its outcome comes once the task is stopped: counted, then
            // dropped.
            let server = self.server.clone();
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let outcome = server.executor.get_result_async(&handle).await;
                    server.executor.release(&handle);
                    server.metrics.task(&outcome);
                });
            }
        }
    }
}
