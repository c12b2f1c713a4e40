//! `GET /metrics`: Prometheus text (format 0.0.4).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use lattice::task::TaskOutcome;

use super::Shared;

/// Upper bounds of the task latency histogram, seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
];

#[derive(Default)]
pub(super) struct Metrics {
    inner: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    /// Finished tasks by (tier, kind); kind `ok` for a result.
    tasks: BTreeMap<(String, &'static str), u64>,
    /// Task latency: count per bucket (the last is +Inf), sum, count.
    latency: [u64; BUCKETS.len() + 1],
    latency_sum: f64,
    /// HTTP answers by status code.
    http: BTreeMap<u16, u64>,
}

impl Metrics {
    pub(super) fn task(&self, outcome: &TaskOutcome) {
        let tier = outcome
            .tier
            .map_or("none_reached".to_string(), |t| t.to_string());
        let kind = match &outcome.result {
            Ok(_) => "ok",
            Err(error) => error.kind().as_str(),
        };
        let seconds = outcome.duration.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(BUCKETS.len());
        let mut counts = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        *counts.tasks.entry((tier, kind)).or_default() += 1;
        counts.latency[bucket] += 1;
        counts.latency_sum += seconds;
    }

    pub(super) fn http(&self, status: StatusCode) {
        let mut counts = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        *counts.http.entry(status.as_u16()).or_default() += 1;
    }
}

pub(super) async fn render(State(server): State<Shared>) -> Response {
    let in_flight = server.in_flight.load(Ordering::Relaxed);
    let running = in_flight.min(server.workers);
    let mut text = String::new();
    {
        let counts = server
            .metrics
            .inner
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        text.push_str("# HELP lattice_tasks_total Tasks finished, by tier and outcome kind (ok or the error kind).\n# TYPE lattice_tasks_total counter\n");
        for ((tier, kind), n) in &counts.tasks {
            let _ = writeln!(
                text,
                "lattice_tasks_total{{tier=\"{tier}\",kind=\"{kind}\"}} {n}"
            );
        }
        text.push_str("# HELP lattice_task_duration_seconds Task latency, submit to outcome.\n# TYPE lattice_task_duration_seconds histogram\n");
        let mut cumulative = 0;
        for (i, n) in counts.latency.iter().enumerate() {
            cumulative += n;
            let le = BUCKETS.get(i).map_or("+Inf".to_string(), |b| b.to_string());
            let _ = writeln!(
                text,
                "lattice_task_duration_seconds_bucket{{le=\"{le}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            text,
            "lattice_task_duration_seconds_sum {}",
            counts.latency_sum
        );
        let _ = writeln!(text, "lattice_task_duration_seconds_count {cumulative}");
        text.push_str("# HELP lattice_http_responses_total HTTP answers, by status code.\n# TYPE lattice_http_responses_total counter\n");
        for (code, n) in &counts.http {
            let _ = writeln!(text, "lattice_http_responses_total{{code=\"{code}\"}} {n}");
        }
    }
    let _ = write!(
        text,
        "# HELP lattice_tasks_running Tasks running now.\n# TYPE lattice_tasks_running gauge\nlattice_tasks_running {running}\n\
         # HELP lattice_tasks_queued Tasks accepted and waiting for a worker.\n# TYPE lattice_tasks_queued gauge\nlattice_tasks_queued {}\n\
         # HELP lattice_sessions_open Sessions open now.\n# TYPE lattice_sessions_open gauge\nlattice_sessions_open {}\n",
        in_flight - running,
        server.sessions.len()
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
