//! The session workload: one session per tier, `x + 1` executed in it one
//! call at a time — what a call of an open session costs (REPL, MCP,
//! agents), apart from what a fresh task costs.

use std::time::{Duration, Instant};

use lattice::sandbox::{SandboxConfig, SandboxLevel};
use lattice::session::Session;
use serde::Serialize;
use serde_json::json;

/// Calls per tier at most, and the share of the time budget they may take.
const MAX_CALLS: usize = 2000;
const BUDGET_SHARE: u32 = 10;

/// One tier's session calls.
#[derive(Serialize)]
pub(super) struct SessionRow {
    pub tier: String,
    pub calls: usize,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// The wasm tier's p50 over this p50: above 1 is faster.
    pub p50_vs_wasm: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Measures each tier's session, interleaved call by call.
pub(super) fn measure(tiers: &[SandboxLevel], budget: Duration) -> Vec<SessionRow> {
    let mut sessions: Vec<(SandboxLevel, Result<Session, String>, Vec<Duration>)> = tiers
        .iter()
        .map(|&level| {
            let opened = Session::open(SandboxConfig {
                level,
                timeout: Duration::from_secs(30),
                ..SandboxConfig::default()
            })
            .map_err(|e| e.to_string())
            .and_then(|session| {
                // Warm: the first call pays for imports and first touches.
                for code in ["x = 1", "x + 1", "x + 1"] {
                    session.exec(code).result.map_err(|e| e.to_string())?;
                }
                Ok(session)
            });
            (level, opened, Vec::new())
        })
        .collect();
    let until = Instant::now() + budget / BUDGET_SHARE;
    let mut failures: Vec<Option<String>> = vec![None; sessions.len()];
    for _ in 0..MAX_CALLS {
        if Instant::now() >= until {
            break;
        }
        for ((_, session, latencies), failure) in sessions.iter_mut().zip(failures.iter_mut()) {
            let (Ok(session), None) = (session, &failure) else {
                continue;
            };
            let started = Instant::now();
            let reply = session.exec("x + 1");
            latencies.push(started.elapsed());
            if reply.result.as_ref().ok() != Some(&json!(2)) {
                *failure = Some(format!("wrong answer: {:?}", reply.result));
            }
        }
    }
    let mut rows: Vec<SessionRow> = sessions
        .into_iter()
        .zip(failures)
        .map(|((level, session, mut latencies), failure)| {
            latencies.sort_unstable();
            let error = session.err().or(failure);
            let p = |percent| super::report::percentile_ms(&latencies, percent);
            SessionRow {
                tier: level.to_string(),
                calls: latencies.len(),
                p50_ms: p(50).filter(|_| error.is_none()),
                p90_ms: p(90).filter(|_| error.is_none()),
                p99_ms: p(99).filter(|_| error.is_none()),
                p50_vs_wasm: None,
                error,
            }
        })
        .collect();
    let wasm = rows
        .iter()
        .find(|r| r.tier == "wasm")
        .and_then(|r| r.p50_ms);
    for row in &mut rows {
        row.p50_vs_wasm = wasm.zip(row.p50_ms).map(|(w, p)| w / p);
    }
    rows
}

pub(super) fn to_json(rows: &[SessionRow]) -> serde_json::Value {
    json!(rows)
}
