//! The benchmark's numbers, as a table for people and as one JSON object.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};

use crate::cli::args::WorkloadKind;

/// The name of the tier every ratio is taken against.
pub(super) const BASELINE: &str = "subprocess";
/// The reference compute is compared with: CPython running the task in its
/// own process, no sandbox and no process start.
pub(super) const COMPUTE_BASELINE: &str = super::reference::CPYTHON.name;

/// What was measured of one contender on one workload.
#[derive(Default)]
pub(super) struct Samples {
    /// One per task of the sequential runs.
    pub latencies: Vec<Duration>,
    pub concurrent_tasks: usize,
    pub concurrent_wall: Duration,
    /// The largest peak above baseline of any concurrent run, in bytes.
    pub peak_memory: Option<u64>,
}

/// One row of results: a contender on a workload.
#[derive(Serialize)]
pub(super) struct ResultRow {
    pub workload: &'static str,
    pub tier: String,
    /// An outside reference, not a lattice tier.
    pub reference: bool,
    /// Tasks run one at a time (the latencies), and again concurrently.
    pub tasks: usize,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Tasks per second, one at a time.
    pub throughput_c1: Option<f64>,
    /// Tasks per second, `concurrency` at a time.
    pub throughput_cn: Option<f64>,
    pub concurrency: usize,
    pub peak_rss_mb_per_sandbox: Option<f64>,
    /// The baseline's p50 over this p50: above 1 is faster.
    pub ratio_vs_subprocess: Option<f64>,
    /// This throughput over the baseline's: above 1 is faster.
    pub throughput_c1_vs_subprocess: Option<f64>,
    pub throughput_cn_vs_subprocess: Option<f64>,
    /// This p50 over CPython's in-process p50: how many times CPython's own
    /// compute this took (above 1 is slower).
    pub p50_vs_cpython: Option<f64>,
    /// Why a reference has no numbers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ResultRow {
    /// A row from samples (ratios are filled in by [`fill_ratios`]).
    pub(super) fn measured(
        workload: WorkloadKind,
        tier: &str,
        reference: bool,
        samples: &Samples,
        concurrency: usize,
    ) -> ResultRow {
        let mut sorted = samples.latencies.clone();
        sorted.sort_unstable();
        let total: Duration = sorted.iter().sum();
        let rate = |tasks: usize, wall: Duration| {
            (tasks > 0 && !wall.is_zero()).then(|| tasks as f64 / wall.as_secs_f64())
        };
        ResultRow {
            throughput_c1: rate(sorted.len(), total),
            throughput_cn: rate(samples.concurrent_tasks, samples.concurrent_wall),
            p50_ms: percentile_ms(&sorted, 50),
            p90_ms: percentile_ms(&sorted, 90),
            p99_ms: percentile_ms(&sorted, 99),
            tasks: sorted.len(),
            peak_rss_mb_per_sandbox: samples
                .peak_memory
                .map(|bytes| bytes as f64 / (1 << 20) as f64 / concurrency as f64),
            ..ResultRow::empty(workload, tier, reference, concurrency)
        }
    }

    /// A reference's row when it could not run the workload.
    pub(super) fn failed(
        workload: WorkloadKind,
        tier: &str,
        concurrency: usize,
        error: String,
    ) -> ResultRow {
        ResultRow {
            error: Some(error),
            ..ResultRow::empty(workload, tier, true, concurrency)
        }
    }

    fn empty(workload: WorkloadKind, tier: &str, reference: bool, concurrency: usize) -> Self {
        ResultRow {
            workload: workload.name(),
            tier: tier.to_string(),
            reference,
            tasks: 0,
            p50_ms: None,
            p90_ms: None,
            p99_ms: None,
            throughput_c1: None,
            throughput_cn: None,
            concurrency,
            peak_rss_mb_per_sandbox: None,
            ratio_vs_subprocess: None,
            throughput_c1_vs_subprocess: None,
            throughput_cn_vs_subprocess: None,
            p50_vs_cpython: None,
            error: None,
        }
    }
}

/// The nearest-rank percentile, in milliseconds.
pub(super) fn percentile_ms(sorted: &[Duration], percent: usize) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (percent * sorted.len()).div_ceil(100).max(1);
    Some(sorted[rank - 1].as_secs_f64() * 1000.0)
}

/// What ratios are taken against: a row's latency and throughputs.
#[derive(Clone, Copy)]
struct Speed {
    p50_ms: Option<f64>,
    c1: Option<f64>,
    cn: Option<f64>,
}

impl ResultRow {
    fn speed(&self) -> Speed {
        Speed {
            p50_ms: self.p50_ms,
            c1: self.throughput_c1,
            cn: self.throughput_cn,
        }
    }
}

/// Sets each row's ratios against the baseline tier's row of its workload,
/// and its p50 against CPython's in-process one.
pub(super) fn fill_ratios(rows: &mut [ResultRow]) {
    let speeds = |tier: &str, reference: bool| -> Vec<(&'static str, Speed)> {
        rows.iter()
            .filter(|row| row.tier == tier && row.reference == reference)
            .map(|row| (row.workload, row.speed()))
            .collect()
    };
    let (baselines, computes) = (speeds(BASELINE, false), speeds(COMPUTE_BASELINE, true));
    let of = |speeds: &[(&'static str, Speed)], workload: &str| {
        speeds.iter().find(|(w, _)| *w == workload).map(|&(_, s)| s)
    };
    for row in rows.iter_mut() {
        if let Some(base) = of(&baselines, row.workload) {
            row.ratio_vs_subprocess = divide(base.p50_ms, row.p50_ms);
            row.throughput_c1_vs_subprocess = divide(row.throughput_c1, base.c1);
            row.throughput_cn_vs_subprocess = divide(row.throughput_cn, base.cn);
        }
        if let Some(compute) = of(&computes, row.workload) {
            row.p50_vs_cpython = divide(row.p50_ms, compute.p50_ms);
        }
    }
}

fn divide(numerator: Option<f64>, denominator: Option<f64>) -> Option<f64> {
    match (numerator, denominator) {
        (Some(n), Some(d)) if d > 0.0 => Some(n / d),
        _ => None,
    }
}

/// The machine the numbers come from.
#[derive(Serialize)]
pub(super) struct Machine {
    pub cores: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub memory_gib: f64,
}

impl Machine {
    pub(super) fn describe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|line| line.starts_with("model name"))
            .and_then(|line| line.split_once(':'))
            .map_or("unknown CPU", |(_, model)| model.trim())
            .to_string();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_kb: u64 = meminfo
            .lines()
            .find_map(|line| line.strip_prefix("MemTotal:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        Machine {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            kernel: kernel(),
            memory_gib: memory_kb as f64 / (1 << 20) as f64,
        }
    }
}

/// `uname -sr`.
fn kernel() -> String {
    // SAFETY: uname fills the zeroed struct; its fields are NUL-terminated.
    unsafe {
        let mut name: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut name) != 0 {
            return "unknown kernel".into();
        }
        let field = |f: &[libc::c_char]| {
            std::ffi::CStr::from_ptr(f.as_ptr())
                .to_string_lossy()
                .into_owned()
        };
        format!("{} {}", field(&name.sysname), field(&name.release))
    }
}

/// A tier or reference that was asked for: whether it could run, and why not.
#[derive(Default, Serialize)]
pub(super) struct Availability {
    pub name: String,
    pub available: bool,
    /// The version (references), when available.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Why not, when unavailable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A measured tier: what this process grew by while it ran, over the
    /// whole benchmark (an in-process tier's engine and pooled instances).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kept_resident_mb: Option<f64>,
}

/// Everything the run found.
pub(super) struct Report {
    pub machine: Machine,
    pub concurrency: usize,
    /// This process's resident size at the end (the process tiers start
    /// their children from it).
    pub harness_resident_mb: f64,
    pub tiers: Vec<Availability>,
    pub references: Vec<Availability>,
    pub workloads: Vec<WorkloadKind>,
    pub rows: Vec<ResultRow>,
    /// The session workload's rows.
    pub sessions: Vec<super::session::SessionRow>,
    /// The session workload's snapshot numbers (wasm).
    pub snapshots: Option<Result<super::session::SnapshotRow, String>>,
    /// The http workload's numbers (failures end the run instead).
    pub http: Option<Result<super::http::HttpRow, String>>,
    /// The python workload's numbers (failures end the run instead).
    pub python: Option<Result<super::python::PythonRow, String>>,
    pub wall: Duration,
}

/// How the numbers were taken: the table's footnote and the JSON's `method`.
fn method(concurrency: usize, harness_resident_mb: f64) -> Vec<String> {
    vec![
        format!(
            "Latency: wall time of one task, submit to checked result, one at a time: tiers through lattice's LocalExecutor \
             (1 worker); python3 -c from spawn to exit; the package references timed inside their Python driver: \
             cpython in-process as exec of the task's module in a fresh namespace and the call of its f (no sandbox, \
             no process start: CPython's own compute), pydantic-monty as checkout() + feed_run() of a fresh session on \
             a warm worker pool, eryx as execute() on a fresh eryx.Sandbox(). tasks/s c=1 = tasks / the sum of those latencies; \
             c={concurrency} = the same tasks run {concurrency} at a time (LocalExecutor with {concurrency} workers, \
             {} in flight; {concurrency} threads for the references), over their wall time.",
            2 * concurrency
        ),
        "Interleaved: every workload runs in rounds, each round giving every contender its share of the tasks, so machine \
         noise hits all alike. Warm-up tasks (sequential and concurrent) run first and are not counted."
            .into(),
        format!(
            "MB/sandbox: the peak during the c={concurrency} run above the resident level at its start, divided by \
             {concurrency}: this process's VmHWM (reset by writing 5 to /proc/self/clear_refs) with the VmRSS of its \
             child processes sampled every 4 ms (children forked but not yet exec'd are skipped: they map this \
             process). Each child's RSS counts the shared library pages it touched. An in-process tier keeps its \
             engine code and pooled instance memory resident between tasks, so that is already in the starting \
             level: it is listed apart as what the tier keeps resident (this process's growth during the tier's \
             runs, over the whole benchmark). Not measured for docker (containers are the Docker daemon's \
             children) nor the package references (their sandboxes live in their driver or its children)."
        ),
        format!(
            "Process tiers start their children from this process, which also hosts the in-process tiers \
             ({harness_resident_mb:.0} MB resident at the end), the way posix_spawn does (CLONE_VM | CLONE_VFORK): \
             nothing of it is copied per task, so their cost here is what it is in any application."
        ),
        format!(
            "Ratios are against the {BASELINE} tier: p50 latency ({BASELINE} p50 / this p50) and throughput \
             (this / {BASELINE}); \"p50 vs CPython\" is this p50 over {COMPUTE_BASELINE}'s (how many times \
             CPython's own compute it took). Every answer is checked against one computed by the harness; a wrong answer from \
             a tier stops the run (exit 1)."
        ),
    ]
}

impl Report {
    pub(super) fn to_json(&self) -> Value {
        json!({
            "machine": self.machine,
            "concurrency": self.concurrency,
            "wall_s": round(self.wall.as_secs_f64(), 2),
            "tiers": self.tiers,
            "references": self.references,
            "results": self.rows,
            "sessions": self.snapshots.as_ref().map(|snapshots| super::session::to_json(&self.sessions, snapshots)),
            "http": self.http.as_ref().and_then(|http| http.as_ref().ok()),
            "python": self.python.as_ref().and_then(|python| python.as_ref().ok()),
            "harness_resident_mb": round(self.harness_resident_mb, 1),
            "method": method(self.concurrency, self.harness_resident_mb).join(" "),
        })
    }

    pub(super) fn to_table(&self) -> String {
        let mut out = String::new();
        out.push_str(&lineup("tiers", &self.tiers));
        out.push_str(&lineup("references", &self.references));
        for workload in &self.workloads {
            if *workload == WorkloadKind::Session {
                let _ = writeln!(out, "\n== {}: {} ==", workload.name(), workload.describe());
                out.push_str(&self.session_section());
                continue;
            }
            if *workload == WorkloadKind::Http {
                let _ = writeln!(out, "\n== {}: {} ==", workload.name(), workload.describe());
                out.push_str(&self.http_section());
                continue;
            }
            if *workload == WorkloadKind::Python {
                let _ = writeln!(out, "\n== {}: {} ==", workload.name(), workload.describe());
                out.push_str(&self.python_section());
                continue;
            }
            let rows: Vec<&ResultRow> = self
                .rows
                .iter()
                .filter(|row| row.workload == workload.name())
                .collect();
            let _ = writeln!(out, "\n== {}: {} ==", workload.name(), workload.describe());
            out.push_str(&self.section(&rows));
        }
        let _ = writeln!(
            out,
            "\nMachine: {} cores ({}), {:.1} GiB, {}. Whole run: {:.1} s.",
            self.machine.cores,
            self.machine.cpu_model,
            self.machine.memory_gib,
            self.machine.kernel,
            self.wall.as_secs_f64()
        );
        for (i, note) in method(self.concurrency, self.harness_resident_mb)
            .iter()
            .enumerate()
        {
            let _ = writeln!(out, "[{}] {note}", i + 1);
        }
        out
    }

    fn python_section(&self) -> String {
        let Some(Ok(row)) = &self.python else {
            return "no tier available\n".into();
        };
        let mut out = render(&[
            vec![
                "tier".to_string(),
                "tasks".into(),
                "map tasks/s".into(),
                "batch tasks/s".into(),
                "vs batch".into(),
            ],
            vec![
                row.tier.clone(),
                row.tasks.to_string(),
                format!("{:.0}", row.map_per_s),
                format!("{:.0}", row.batch_per_s),
                format!("{:.2}x", row.vs_batch),
            ],
        ]);
        let _ = writeln!(
            out,
            "{} workers (map concurrency = batch --concurrency); medians of 3 interleaved rounds; map: the wall time of \
             one call, Result objects made and checked; batch: its wall time less a one-task run's (process start)",
            row.workers
        );
        out
    }

    fn http_section(&self) -> String {
        let Some(Ok(row)) = &self.http else {
            return "no tier available\n".into();
        };
        let mut out = render(&[
            vec![
                "tier".to_string(),
                "requests".into(),
                "req/s".into(),
                "p50 ms".into(),
                "p99 ms".into(),
                "batch tasks/s".into(),
                "vs batch".into(),
                "1-at-a-time p50 ms".into(),
                "library p50 ms".into(),
                "overhead p50 ms".into(),
            ],
            vec![
                row.tier.clone(),
                row.requests.to_string(),
                format!("{:.0}", row.http_per_s),
                number(Some(row.p50_ms)),
                number(Some(row.p99_ms)),
                format!("{:.0}", row.batch_per_s),
                format!("{:.2}x", row.vs_batch),
                format!("{:.3}", row.sequential_p50_ms),
                format!("{:.3}", row.library_p50_ms),
                format!("{:.3}", row.overhead_p50_ms),
            ],
        ]);
        let _ = writeln!(
            out,
            "{} connections, {} workers (serve --concurrency = batch --concurrency); p50/p99: client-side, queueing \
             included; overhead: one request at a time on one connection, p50, less the p50 of the same task through \
             the library's LocalExecutor (1 worker) in this process, the two interleaved",
            row.connections, row.workers
        );
        out
    }

    fn session_section(&self) -> String {
        let mut lines = vec![vec![
            "tier".to_string(),
            "calls".into(),
            "p50 ms".into(),
            "p90 ms".into(),
            "p99 ms".into(),
            "idle p50 ms".into(),
            "p50 vs wasm".into(),
            "host call µs".into(),
        ]];
        for row in &self.sessions {
            let mut cells = vec![
                row.tier.clone(),
                row.calls.to_string(),
                number(row.p50_ms),
                number(row.p90_ms),
                number(row.p99_ms),
                number(row.idle_p50_ms),
                ratio(row.p50_vs_wasm, row.tier == "wasm"),
                number(row.host_call_p50_us),
            ];
            if let Some(error) = &row.error {
                cells.truncate(1);
                cells.push(format!("failed: {error}"));
            }
            lines.push(cells);
        }
        let mut out = render(&lines);
        match &self.snapshots {
            Some(Ok(row)) => {
                let _ = writeln!(
                    out,
                    "wasm snapshot of a session holding ~1 MB: {:.2} MB, snapshot {:.2} ms, restore {:.2} ms, fork {:.2} ms (p50)",
                    row.bytes as f64 / (1 << 20) as f64,
                    row.snapshot_p50_ms,
                    row.restore_p50_ms,
                    row.fork_p50_ms
                );
            }
            Some(Err(error)) => {
                let _ = writeln!(out, "wasm snapshot: failed: {error}");
            }
            None => {}
        }
        out
    }

    fn section(&self, rows: &[&ResultRow]) -> String {
        let c = self.concurrency;
        let header = [
            "tier".to_string(),
            "tasks".into(),
            "p50 ms".into(),
            "p90 ms".into(),
            "p99 ms".into(),
            "tasks/s c=1".into(),
            format!("tasks/s c={c}"),
            "MB/sandbox".into(),
            "p50 vs subprocess".into(),
            format!("c={c} vs subprocess"),
            "p50 vs CPython".into(),
        ];
        let mut lines = vec![header.to_vec()];
        for row in rows {
            lines.push(table_cells(row));
        }
        render(&lines)
    }
}

/// "tiers: wasm (keeps 62 MB resident), subprocess", then one line per
/// one that could not run, with the reason.
fn lineup(what: &str, entries: &[Availability]) -> String {
    let measured: Vec<String> = entries
        .iter()
        .filter(|entry| entry.available)
        .map(|entry| {
            let mut item = entry.name.clone();
            if let Some(version) = &entry.version {
                let _ = write!(item, " {version}");
            }
            if let Some(mb) = entry.kept_resident_mb {
                let _ = write!(item, " (keeps {} MB resident)", number(Some(mb)));
            }
            item
        })
        .collect();
    let mut out = format!("{what}: {}\n", measured.join(", "));
    for entry in entries.iter().filter(|entry| !entry.available) {
        let reason = entry.reason.as_deref().unwrap_or("unknown");
        let _ = writeln!(out, "  {}: unavailable: {reason}", entry.name);
    }
    out
}

fn table_cells(row: &ResultRow) -> Vec<String> {
    let name = if row.reference {
        format!("{} (ref)", row.tier)
    } else {
        row.tier.clone()
    };
    if let Some(error) = &row.error {
        return vec![name, format!("failed: {error}")];
    }
    let baseline = row.tier == BASELINE && !row.reference;
    vec![
        name,
        row.tasks.to_string(),
        number(row.p50_ms),
        number(row.p90_ms),
        number(row.p99_ms),
        number(row.throughput_c1),
        number(row.throughput_cn),
        number(row.peak_rss_mb_per_sandbox),
        ratio(row.ratio_vs_subprocess, baseline),
        ratio(row.throughput_cn_vs_subprocess, baseline),
        match row.p50_vs_cpython {
            _ if row.reference && row.tier == COMPUTE_BASELINE => "baseline".into(),
            Some(r) if r > 0.0 => times(r),
            _ => "-".into(),
        },
    ]
}

/// Aligned columns: the first left-aligned, the rest right-aligned. A row
/// with fewer cells (a failed reference) runs its last cell on freely.
fn render(lines: &[Vec<String>]) -> String {
    let columns = lines.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|col| {
            lines
                .iter()
                .filter(|cells| cells.len() == columns)
                .filter_map(|cells| cells.get(col))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for cells in lines {
        let mut line = String::new();
        for (col, cell) in cells.iter().enumerate() {
            let free = cells.len() < columns && col == cells.len() - 1;
            if col == 0 {
                let _ = write!(line, "{cell:<w$}", w = widths[0]);
            } else if free {
                let _ = write!(line, "  {cell}");
            } else {
                let _ = write!(line, "  {cell:>w$}", w = widths[col]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Three significant digits or so, "-" for nothing.
fn number(value: Option<f64>) -> String {
    match value {
        None => "-".into(),
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) if v >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    }
}

/// "62x faster", "4.4x slower", "baseline".
fn ratio(value: Option<f64>, baseline: bool) -> String {
    match value {
        _ if baseline => "baseline".into(),
        None => "-".into(),
        Some(r) if r >= 1.0 => format!("{} faster", times(r)),
        Some(r) if r > 0.0 => format!("{} slower", times(1.0 / r)),
        Some(_) => "-".into(),
    }
}

fn times(r: f64) -> String {
    if r >= 10.0 {
        format!("{r:.0}x")
    } else {
        format!("{r:.1}x")
    }
}

fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let ms: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile_ms(&ms, 50), Some(50.0));
        assert_eq!(percentile_ms(&ms, 99), Some(99.0));
        assert_eq!(percentile_ms(&ms[..3], 50), Some(2.0));
        assert_eq!(percentile_ms(&ms[..1], 99), Some(1.0));
        assert_eq!(percentile_ms(&[], 50), None);
    }

    #[test]
    fn ratios_read_as_speed() {
        assert_eq!(ratio(Some(62.4), false), "62x faster");
        assert_eq!(ratio(Some(0.25), false), "4.0x slower");
        assert_eq!(ratio(Some(3.0), true), "baseline");
        assert_eq!(ratio(None, false), "-");
    }
}
