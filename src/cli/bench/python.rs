//! The python workload: `lattice_wasm.map` of trivial tasks in a Python that
//! has the package installed (`--lattice-python`), beside `lattice-wasm
//! batch` of the same tasks — what the Python package costs over the batch
//! command, on one tier.

use std::path::Path;
use std::process::Command;

use lattice::sandbox::SandboxLevel;
use serde::Serialize;
use serde_json::json;

/// Tasks when --tasks is not given.
pub(super) const DEFAULT_TASKS: usize = 10_000;
/// Rounds of (batch, map), interleaved so that noise hits both alike.
const ROUNDS: usize = 3;

/// The python workload's numbers (medians over the rounds).
#[derive(Serialize)]
pub(super) struct PythonRow {
    pub tier: String,
    pub tasks: usize,
    /// `map(concurrency=)` and `batch --concurrency`.
    pub workers: usize,
    /// Tasks per second of one `lattice_wasm.map` call (the wall time of
    /// the call, results decoded into `Result` objects and checked).
    pub map_per_s: f64,
    /// Tasks per second of `batch` on the same tasks.
    pub batch_per_s: f64,
    /// `map_per_s / batch_per_s`.
    pub vs_batch: f64,
}

/// Times one `map` of `tasks` trivial tasks (after a warm-up call), checks
/// every answer, prints tasks per second.
const MAP_SCRIPT: &str = r#"
import sys, time
import lattice_wasm as lw
code, tier, n, workers = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
lw.map(code, range(workers * 4), tier=tier, concurrency=workers)
started = time.perf_counter()
results = lw.map(code, range(n), tier=tier, concurrency=workers)
wall = time.perf_counter() - started
wrong = [i for i, r in enumerate(results) if r.result != i + 1]
if wrong:
    sys.exit(f"task {wrong[0]}: wrong answer: {results[wrong[0]]}")
print(n / wall)
"#;

/// Measures `tier`: `tasks` trivial tasks through `batch` and through
/// `lattice_wasm.map` in `python`, interleaved, [`ROUNDS`] times.
pub(super) fn measure(
    python: &Path,
    tier: SandboxLevel,
    tasks: usize,
    workers: usize,
) -> Result<PythonRow, String> {
    let binary = std::env::current_exe().map_err(|e| format!("no path to this binary: {e}"))?;
    let lines: Vec<String> = (0..tasks)
        .map(|i| json!({"id": i, "code": super::workload::TRIVIAL, "input": i}).to_string())
        .collect();
    let (mut map, mut batch) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        batch.push(super::http::batch_rate(&binary, tier, workers, &lines)?);
        map.push(map_rate(python, tier, tasks, workers)?);
    }
    let (map_per_s, batch_per_s) = (median(&mut map), median(&mut batch));
    Ok(PythonRow {
        tier: tier.to_string(),
        tasks,
        workers,
        map_per_s,
        batch_per_s,
        vs_batch: map_per_s / batch_per_s,
    })
}

fn map_rate(
    python: &Path,
    tier: SandboxLevel,
    tasks: usize,
    workers: usize,
) -> Result<f64, String> {
    let output = Command::new(python)
        .args([
            "-c",
            MAP_SCRIPT,
            super::workload::TRIVIAL,
            &tier.to_string(),
        ])
        .args([tasks.to_string(), workers.to_string()])
        .output()
        .map_err(|e| format!("can't run {}: {e}", python.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    match stdout.trim().parse::<f64>() {
        Ok(rate) if output.status.success() => Ok(rate),
        _ => Err(format!(
            "{} (lattice_wasm.map) failed: {}{}",
            python.display(),
            stdout.trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        )),
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
