//! The session workload: one session per tier, `x + 1` executed in it one
//! call at a time, in blocks of [`BLOCK`] calls per tier — what a call of an open session costs (REPL, MCP,
//! agents), apart from what a fresh task costs — and the round trip of a
//! host-function call from code in the session.

use std::time::{Duration, Instant};

use lattice::sandbox::{SandboxConfig, SandboxLevel};
use lattice::session::{HostFunctions, Session};
use serde::Serialize;
use serde_json::json;

/// Calls per tier at most, and the share of the time budget they may take.
const MAX_CALLS: usize = 2000;
/// Calls per tier in a row; the p50 is over the calls after the first.
const BLOCK: usize = 20;
const BUDGET_SHARE: u32 = 10;

/// One tier's session calls.
#[derive(Serialize)]
pub(super) struct SessionRow {
    pub tier: String,
    pub calls: usize,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// p50 of the first call of each block: after the session sat idle
    /// (for the other tiers' blocks), its thread or process asleep.
    pub idle_p50_ms: Option<f64>,
    /// The wasm tier's p50 over this p50: above 1 is faster.
    pub p50_vs_wasm: Option<f64>,
    /// One host-function call's round trip from code in the session, µs
    /// (the median of rounds of [`HOST_CALLS`] calls).
    pub host_call_p50_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Measures each tier's session, interleaved call by call.
pub(super) fn measure(tiers: &[SandboxLevel], budget: Duration) -> Vec<SessionRow> {
    let mut sessions: Vec<(SandboxLevel, Result<Session, String>, Vec<Duration>)> = tiers
        .iter()
        .map(|&level| {
            let opened = Session::builder(SandboxConfig {
                tier: level,
                timeout: Duration::from_secs(30),
                ..SandboxConfig::default()
            })
            .host_functions(HostFunctions::new().register("ping", |_| Ok(json!(1))))
            .open()
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
    let mut idle: Vec<Vec<Duration>> = vec![Vec::new(); sessions.len()];
    for _ in 0..MAX_CALLS / BLOCK {
        if Instant::now() >= until {
            break;
        }
        // A block of calls per tier, back to back as a REPL's or a loop's
        // come; the blocks interleaved, so that noise hits every tier alike.
        for (((_, session, latencies), failure), idle) in sessions
            .iter_mut()
            .zip(failures.iter_mut())
            .zip(idle.iter_mut())
        {
            for call in 0..BLOCK {
                let (Ok(session), None) = (&*session, &failure) else {
                    continue;
                };
                let started = Instant::now();
                let reply = session.exec("x + 1");
                let took = started.elapsed();
                if call == 0 {
                    // After the other tiers' blocks: the session sat idle.
                    idle.push(took);
                } else {
                    latencies.push(took);
                }
                if reply.result.as_ref().ok() != Some(&json!(2)) {
                    *failure = Some(format!("wrong answer: {:?}", reply.result));
                }
            }
        }
    }
    let mut rows: Vec<SessionRow> = sessions
        .into_iter()
        .zip(failures)
        .zip(idle)
        .map(|(((level, session, mut latencies), failure), mut idle)| {
            latencies.sort_unstable();
            idle.sort_unstable();
            let host_call = session.as_ref().ok().and_then(host_call_round_trip);
            let error = session.err().or(failure);
            let p = |percent| super::report::percentile_ms(&latencies, percent);
            SessionRow {
                tier: level.to_string(),
                calls: latencies.len(),
                p50_ms: p(50).filter(|_| error.is_none()),
                p90_ms: p(90).filter(|_| error.is_none()),
                p99_ms: p(99).filter(|_| error.is_none()),
                idle_p50_ms: super::report::percentile_ms(&idle, 50).filter(|_| error.is_none()),
                p50_vs_wasm: None,
                host_call_p50_us: host_call.filter(|_| error.is_none()),
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

/// Host calls per round of the round-trip measurement, and rounds.
const HOST_CALLS: usize = 500;
const HOST_CALL_ROUNDS: usize = 7;

/// The median time of one `ping()` host call in a loop of them, µs.
fn host_call_round_trip(session: &Session) -> Option<f64> {
    let code = format!("for _ in range({HOST_CALLS}):\n    ping()");
    let mut rounds = Vec::new();
    for _ in 0..HOST_CALL_ROUNDS {
        let started = Instant::now();
        session.exec(&code).result.ok()?;
        rounds.push(started.elapsed().as_secs_f64() * 1e6 / HOST_CALLS as f64);
    }
    rounds.sort_by(f64::total_cmp);
    Some(rounds[rounds.len() / 2])
}

/// Snapshot, restore and fork of a wasm session holding ~1 MB of data.
#[derive(Serialize)]
pub(super) struct SnapshotRow {
    pub bytes: usize,
    pub snapshot_p50_ms: f64,
    pub restore_p50_ms: f64,
    pub fork_p50_ms: f64,
}

const SNAPSHOT_ROUNDS: usize = 30;

/// Measures snapshots of a wasm session holding ~1 MB of user data.
pub(super) fn measure_snapshots() -> Result<SnapshotRow, String> {
    let config = SandboxConfig::default();
    let session = Session::open(config.clone()).map_err(|e| e.to_string())?;
    session
        .exec("data = [i * 0.5 for i in range(40000)]\nblob = bytes(range(256)) * 1024")
        .result
        .map_err(|e| e.to_string())?;
    let median = |mut times: Vec<Duration>| {
        times.sort_unstable();
        times[times.len() / 2].as_secs_f64() * 1000.0
    };
    let (mut snapshots, mut restores, mut forks) = (Vec::new(), Vec::new(), Vec::new());
    let mut bytes = Vec::new();
    for _ in 0..SNAPSHOT_ROUNDS {
        let started = Instant::now();
        bytes = session.snapshot().map_err(|e| e.to_string())?;
        snapshots.push(started.elapsed());
        let started = Instant::now();
        let restored = Session::restore(config.clone(), &bytes).map_err(|e| e.to_string())?;
        restores.push(started.elapsed());
        drop(restored);
        let started = Instant::now();
        let fork = session.fork().map_err(|e| e.to_string())?;
        forks.push(started.elapsed());
        drop(fork);
    }
    Ok(SnapshotRow {
        bytes: bytes.len(),
        snapshot_p50_ms: median(snapshots),
        restore_p50_ms: median(restores),
        fork_p50_ms: median(forks),
    })
}

pub(super) fn to_json(
    rows: &[SessionRow],
    snapshots: &Result<SnapshotRow, String>,
) -> serde_json::Value {
    json!({
        "calls": rows,
        "snapshot": match snapshots {
            Ok(row) => json!(row),
            Err(error) => json!({"error": error}),
        },
    })
}
