//! `bench`: the same Python workloads on several sandbox tiers, and on
//! outside references (a bare CPython per task, CPython in-process,
//! pydantic-monty, eryx), in one run: latency, throughput and memory side
//! by side, with ratios against the subprocess tier and against CPython's
//! own compute.
//!
//! Contenders are measured interleaved: each workload runs in rounds, and
//! every round gives each contender its share of the tasks, so a noisy
//! neighbour or a busy moment lands on all of them alike instead of on
//! whichever happened to run then. Every answer is checked against one the
//! harness computes; a tier that answers wrongly stops the run (exit 1),
//! since a benchmark of wrong answers is worthless.

mod contender;
mod http;
mod memory;
mod python;
mod reference;
mod report;
mod session;
mod workload;

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Result;
use lattice::sandbox::{check_available, SandboxLevel};

use super::args::{BenchArgs, WorkloadKind};
use contender::{Contender, PythonReference, TierContender, PYTHON_REFERENCE};
use memory::{own_resident, MemoryProbe};
use reference::{Package, PackageReference, CPYTHON, ERYX, MONTY};
use report::{fill_ratios, Availability, Machine, Report, ResultRow, Samples};
use workload::Workload;

/// Tasks per contender and workload when the budget allows.
const DEFAULT_TASKS: usize = 200;
/// The fewest tasks the time budget may scale a slow contender down to.
const MIN_SCALED_TASKS: usize = 5;
const MAX_ROUNDS: usize = 5;
/// Sequential warm-up tasks (the faster also estimates a task's cost: the
/// other may have paid a one-off).
const WARM_UP_TASKS: usize = 2;
const MIB: f64 = (1 << 20) as f64;

/// The bare-CPython reference runs Debian's interpreter, as the process
/// tiers do.
const BARE_PYTHON: &str = "/usr/bin/python3";

/// The order of the tiers when none are named: the default tier first, then
/// the baseline of the ratios.
const TIER_ORDER: [SandboxLevel; 5] = [
    SandboxLevel::Wasm,
    SandboxLevel::Subprocess,
    SandboxLevel::None,
    SandboxLevel::Seccomp,
    SandboxLevel::Docker,
];

/// The settings of one run, defaults resolved.
struct Plan {
    tiers: Vec<SandboxLevel>,
    workloads: Vec<WorkloadKind>,
    /// Fixed by --tasks; None: scaled to the time budget.
    tasks: Option<usize>,
    concurrency: usize,
    time_budget: Duration,
    monty_python: Option<PathBuf>,
    eryx_python: Option<PathBuf>,
    lattice_python: Option<PathBuf>,
}

impl Plan {
    fn from_args(args: BenchArgs) -> Plan {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Plan {
            tiers: without_repeats(if args.tiers.is_empty() {
                TIER_ORDER.to_vec()
            } else {
                args.tiers
            }),
            workloads: without_repeats(if args.workloads.is_empty() {
                let mut all = WorkloadKind::ALL.to_vec();
                if args.lattice_python.is_some() {
                    all.push(WorkloadKind::Python);
                }
                all
            } else {
                args.workloads
            }),
            tasks: args.tasks.map(|n| n as usize),
            concurrency: args.concurrency.map_or(cores, |n| n as usize),
            time_budget: args.time_budget,
            monty_python: args.monty_python,
            eryx_python: args.eryx_python,
            lattice_python: args.lattice_python,
        }
    }
}

/// The first of `tiers` this host can run.
fn first_available(tiers: &[SandboxLevel]) -> Option<SandboxLevel> {
    tiers
        .iter()
        .copied()
        .find(|&level| check_available(level).is_ok())
}

fn without_repeats<T: PartialEq>(items: Vec<T>) -> Vec<T> {
    let mut kept = Vec::with_capacity(items.len());
    for item in items {
        if !kept.contains(&item) {
            kept.push(item);
        }
    }
    kept
}

pub(super) fn run(args: BenchArgs) -> Result<i32> {
    let started = Instant::now();
    let json = args.json;
    let plan = Plan::from_args(args);
    let mut lineup = Lineup::assemble(&plan)?;
    let mut rows = Vec::new();
    let mut sessions = Vec::new();
    let mut snapshots = None;
    let mut http = None;
    let mut python = None;
    for &kind in &plan.workloads {
        if kind == WorkloadKind::Python {
            let Some(interpreter) = &plan.lattice_python else {
                anyhow::bail!("bench: the python workload needs --lattice-python (a Python with lattice_wasm installed)");
            };
            let tier = first_available(&plan.tiers);
            python = tier.map(|tier| {
                let tasks = plan.tasks.unwrap_or(python::DEFAULT_TASKS);
                eprintln!("bench: python: {tasks} tasks on the {tier} tier");
                python::measure(interpreter, tier, tasks, plan.concurrency)
            });
            if let Some(Err(error)) = &python {
                anyhow::bail!("bench: python: {error}");
            }
            continue;
        }
        if kind == WorkloadKind::Http {
            let tier = first_available(&plan.tiers);
            http = tier.map(|tier| {
                let requests = plan.tasks.unwrap_or(http::DEFAULT_REQUESTS);
                eprintln!("bench: http: {requests} requests on the {tier} tier");
                http::measure(tier, requests, plan.concurrency)
            });
            if let Some(Err(error)) = &http {
                // Like a tier's wrong answer: the run is worthless.
                anyhow::bail!("bench: http: {error}");
            }
            continue;
        }
        if kind == WorkloadKind::Session {
            let tiers: Vec<SandboxLevel> = plan
                .tiers
                .iter()
                .copied()
                .filter(|&level| check_available(level).is_ok())
                .collect();
            eprintln!("bench: session: {} tiers", tiers.len());
            sessions = session::measure(&tiers, plan.time_budget);
            if tiers.contains(&SandboxLevel::Wasm) {
                snapshots = Some(session::measure_snapshots());
            }
            continue;
        }
        rows.extend(measure_workload(&plan, &mut lineup.entries, kind)?);
    }
    fill_ratios(&mut rows);
    lineup.note_kept_resident();
    let report = Report {
        machine: Machine::describe(),
        concurrency: plan.concurrency,
        harness_resident_mb: own_resident() as f64 / MIB,
        tiers: lineup.tiers,
        references: lineup.references,
        workloads: plan.workloads,
        rows,
        sessions,
        snapshots,
        http,
        python,
        wall: started.elapsed(),
    };
    eprintln!("bench: done in {:.1} s", report.wall.as_secs_f64());
    if json {
        println!("{}", serde_json::to_string_pretty(&report.to_json())?);
    } else {
        print!("{}", report.to_table());
    }
    Ok(0)
}

/// Who runs, and what was listed.
struct Lineup {
    entries: Vec<Entry>,
    tiers: Vec<Availability>,
    references: Vec<Availability>,
}

/// A contender, and the memory this process kept from its runs.
struct Entry {
    contender: Box<dyn Contender>,
    /// Bytes this process grew by while the contender ran, over the whole
    /// benchmark: an in-process tier's engine code and pooled instances
    /// stay resident between tasks, so a run's peak above its start misses
    /// them; they are reported apart, per tier.
    kept_resident: i64,
}

impl Entry {
    fn new(contender: impl Contender + 'static) -> Entry {
        Entry {
            contender: Box::new(contender),
            kept_resident: 0,
        }
    }

    fn name(&self) -> &str {
        self.contender.name()
    }

    /// Runs `work` on the contender, adding what this process grew by to
    /// its ledger.
    fn tracked<T>(&mut self, work: impl FnOnce(&mut dyn Contender) -> Result<T>) -> Result<T> {
        let before = own_resident();
        let result = work(self.contender.as_mut());
        self.kept_resident += own_resident() as i64 - before as i64;
        result
    }
}

impl Lineup {
    fn assemble(plan: &Plan) -> Result<Lineup> {
        let mut lineup = Lineup {
            entries: Vec::new(),
            tiers: Vec::new(),
            references: Vec::new(),
        };
        for &level in &plan.tiers {
            lineup.add_tier(level, plan.concurrency)?;
        }
        lineup.add_bare_python(plan.concurrency);
        lineup.add_package(&CPYTHON, Some(Path::new(BARE_PYTHON)), plan.concurrency);
        lineup.add_package(&MONTY, plan.monty_python.as_deref(), plan.concurrency);
        lineup.add_package(&ERYX, plan.eryx_python.as_deref(), plan.concurrency);
        Ok(lineup)
    }

    fn add_tier(&mut self, level: SandboxLevel, concurrency: usize) -> Result<()> {
        let status = match check_available(level) {
            Ok(()) => {
                prepare_wasm(level)?;
                // The first task loads the tier's engine: that memory is
                // the tier's too.
                let before = own_resident();
                let contender = TierContender::new(level, concurrency)?;
                contender.smoke_test().map(|()| Entry {
                    contender: Box::new(contender),
                    kept_resident: own_resident() as i64 - before as i64,
                })
            }
            Err(error) => Err(super::reason(&error)),
        };
        self.tiers.push(Availability {
            name: level.to_string(),
            available: status.is_ok(),
            reason: status.as_ref().err().cloned(),
            ..Availability::default()
        });
        if let Ok(entry) = status {
            self.entries.push(entry);
        }
        Ok(())
    }

    fn add_bare_python(&mut self, concurrency: usize) {
        let python = Path::new(BARE_PYTHON);
        let version = contender::probe_python(python);
        self.add_reference(PYTHON_REFERENCE, version.map_err(|e| e.to_string()));
        if self.references.last().is_some_and(|r| r.available) {
            self.entries.push(Entry::new(PythonReference::new(
                python.to_path_buf(),
                concurrency,
            )));
        }
    }

    fn add_package(
        &mut self,
        package: &'static Package,
        python: Option<&Path>,
        concurrency: usize,
    ) {
        let started = package.probe(python).and_then(|(python, version)| {
            PackageReference::start(package, &python, concurrency)
                .map(|driver| (driver, version))
                .map_err(|e| format!("can't start its driver: {e:#}"))
        });
        match started {
            Ok((driver, version)) => {
                self.add_reference(package.name, Ok(version));
                self.entries.push(Entry::new(driver));
            }
            Err(reason) => self.add_reference(package.name, Err(reason)),
        }
    }

    fn add_reference(&mut self, name: &str, version: Result<String, String>) {
        self.references.push(Availability {
            name: name.to_string(),
            available: version.is_ok(),
            reason: version.as_ref().err().cloned(),
            version: version.ok(),
            ..Availability::default()
        });
    }

    /// Copies each tier's ledger of kept memory into its listing.
    fn note_kept_resident(&mut self) {
        for entry in self.entries.iter().filter(|e| !e.contender.is_reference()) {
            if let Some(tier) = self.tiers.iter_mut().find(|t| t.name == entry.name()) {
                tier.kept_resident_mb = Some(entry.kept_resident.max(0) as f64 / MIB);
            }
        }
    }
}

/// Compiles the Python guest (once per machine, no task's cost) if the
/// cache is cold, in a child process: the compiler's memory would otherwise
/// stay in this process's heap and skew the resident numbers.
fn prepare_wasm(level: SandboxLevel) -> Result<()> {
    if level == SandboxLevel::Wasm && !super::wasm_is_warm() {
        if let Ok(exe) = std::env::current_exe() {
            // Its failure shows below, when preparing in-process is tried.
            let _ = Command::new(exe)
                .args(["doctor", "--warm"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .status();
        }
    }
    super::prepare_wasm_if_cold(level)
}

/// One contender's progress through a workload.
struct Run {
    tasks: usize,
    /// What one task cost in the warm-up.
    per_task: Duration,
    samples: Samples,
    /// Why a reference stopped (a tier's failure stops the benchmark).
    failure: Option<String>,
}

/// Warms every contender up, then runs the workload's rounds, interleaved.
fn measure_workload(
    plan: &Plan,
    entries: &mut [Entry],
    kind: WorkloadKind,
) -> Result<Vec<ResultRow>> {
    let workload = Workload::new(kind);
    let mut runs = Vec::with_capacity(entries.len());
    for entry in entries.iter_mut() {
        runs.push(warm_up(plan, entry, &workload)?);
    }
    size_runs(plan, &mut runs);
    let sizes: Vec<String> = entries
        .iter()
        .zip(&runs)
        .filter(|(_, run)| run.failure.is_none())
        .map(|(entry, run)| format!("{} {}", entry.name(), run.tasks))
        .collect();
    eprintln!("bench: {}: tasks {}", workload.name(), sizes.join(", "));

    let rounds = rounds_for(&runs, plan.concurrency);
    for round in 0..rounds {
        let mut spent = Vec::new();
        for (entry, run) in entries.iter_mut().zip(runs.iter_mut()) {
            if run.failure.is_some() {
                continue;
            }
            let started = Instant::now();
            let share = share_of(run.tasks, rounds, round);
            let measured = measure_share(entry, &workload, share, &mut run.samples);
            absorb(entry.contender.as_ref(), run, measured)?;
            spent.push(format!(
                "{} {:.1} s",
                entry.name(),
                started.elapsed().as_secs_f64()
            ));
        }
        eprintln!(
            "bench: {} round {}/{rounds}: {}",
            workload.name(),
            round + 1,
            spent.join(", ")
        );
    }
    Ok(entries
        .iter()
        .zip(runs)
        .map(|(entry, run)| match run.failure {
            Some(error) => ResultRow::failed(kind, entry.name(), plan.concurrency, error),
            None => ResultRow::measured(
                kind,
                entry.name(),
                entry.contender.is_reference(),
                &run.samples,
                plan.concurrency,
            ),
        })
        .collect())
}

/// Prepares a contender for the workload and runs its warm-up tasks (one
/// at a time, then a concurrent batch so every worker is warm), which also
/// tell how many tasks fit its `budget`.
fn warm_up(plan: &Plan, entry: &mut Entry, workload: &Workload) -> Result<Run> {
    let warmed = entry.tracked(|contender| {
        contender.prepare(workload)?;
        let latencies = contender.run_sequential(workload, 0..WARM_UP_TASKS)?;
        contender.run_concurrent(workload, 0..plan.concurrency)?;
        Ok(latencies.into_iter().min().unwrap_or_default())
    });
    let mut run = Run {
        tasks: 0,
        per_task: Duration::ZERO,
        samples: Samples::default(),
        failure: None,
    };
    if let Some(per_task) = absorb(entry.contender.as_ref(), &mut run, warmed)? {
        run.per_task = per_task;
    }
    Ok(run)
}

/// Sets how many tasks each contender runs: --tasks, or what the
/// workload's part of the time budget allows.
fn size_runs(plan: &Plan, runs: &mut [Run]) {
    let live = runs.iter_mut().filter(|run| run.failure.is_none());
    if let Some(tasks) = plan.tasks {
        live.for_each(|run| run.tasks = tasks);
        return;
    }
    // One sequential pass, plus a concurrent one that takes about 1/cores
    // as long.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let passes = 1.0 + 1.0 / plan.concurrency.min(cores) as f64;
    let live: Vec<&mut Run> = live.collect();
    let costs: Vec<f64> = live
        .iter()
        .map(|run| run.per_task.as_secs_f64().max(1e-6) * passes)
        .collect();
    let budget = plan.time_budget.as_secs_f64() / plan.workloads.len().max(1) as f64;
    for (run, tasks) in live.into_iter().zip(allot(&costs, budget)) {
        run.tasks = tasks;
    }
}

/// Splits `budget` seconds over contenders whose tasks cost `costs`
/// seconds each: equal shares, except that what a contender leaves of its
/// share at DEFAULT_TASKS goes to the others, so the slow ones, the
/// baseline among them, get as many samples as the time allows.
fn allot(costs: &[f64], budget: f64) -> Vec<usize> {
    let full = DEFAULT_TASKS as f64;
    let mut tasks = vec![DEFAULT_TASKS; costs.len()];
    let mut open: Vec<usize> = (0..costs.len()).collect();
    let mut left = budget;
    while !open.is_empty() {
        let share = left / open.len() as f64;
        let (sated, hungry): (Vec<usize>, Vec<usize>) =
            open.iter().partition(|&&i| costs[i] * full <= share);
        if sated.is_empty() {
            for i in hungry {
                tasks[i] = ((share / costs[i]) as usize).clamp(MIN_SCALED_TASKS, DEFAULT_TASKS);
            }
            break;
        }
        left -= sated.iter().map(|&i| costs[i] * full).sum::<f64>();
        open = hungry;
    }
    tasks
}

/// A result, or for a reference its failure recorded in `run`; a tier's
/// failure is the benchmark's.
fn absorb<T>(contender: &dyn Contender, run: &mut Run, result: Result<T>) -> Result<Option<T>> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(error) if contender.is_reference() => {
            eprintln!("bench: {}: {error:#}", contender.name());
            run.failure = Some(format!("{error:#}"));
            Ok(None)
        }
        Err(error) => Err(error),
    }
}

/// As many rounds as the smallest contender has room for: each round's
/// concurrent batch must still give every worker a task.
fn rounds_for(runs: &[Run], concurrency: usize) -> usize {
    let fewest = runs
        .iter()
        .filter(|run| run.failure.is_none())
        .map(|run| run.tasks)
        .min()
        .unwrap_or(0);
    (fewest / concurrency).clamp(1, MAX_ROUNDS)
}

/// The tasks of round `round` out of `rounds` (the shares tile 0..tasks).
fn share_of(tasks: usize, rounds: usize, round: usize) -> Range<usize> {
    tasks * round / rounds..tasks * (round + 1) / rounds
}

/// One round of one contender: its share one at a time, then concurrently
/// with the memory probe on.
fn measure_share(
    entry: &mut Entry,
    workload: &Workload,
    share: Range<usize>,
    samples: &mut Samples,
) -> Result<()> {
    if share.is_empty() {
        return Ok(());
    }
    let latencies = entry.tracked(|c| c.run_sequential(workload, share.clone()))?;
    samples.latencies.extend(latencies);
    let probe = entry.contender.memory_is_visible().then(MemoryProbe::start);
    let wall = entry.tracked(|c| c.run_concurrent(workload, share.clone()));
    let peak = probe.map(MemoryProbe::finish);
    samples.concurrent_wall += wall?;
    samples.concurrent_tasks += share.len();
    if let Some(peak) = peak {
        samples.peak_memory = Some(samples.peak_memory.unwrap_or(0).max(peak));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_tile_the_tasks() {
        for (tasks, rounds) in [(10, 3), (37, 5), (3, 1), (200, 5)] {
            let shares: Vec<Range<usize>> =
                (0..rounds).map(|r| share_of(tasks, rounds, r)).collect();
            assert_eq!(shares[0].start, 0);
            assert_eq!(shares[rounds - 1].end, tasks);
            assert!(shares.windows(2).all(|w| w[0].end == w[1].start));
            assert!(shares.iter().all(|s| !s.is_empty()));
        }
    }

    #[test]
    fn the_budget_left_by_fast_contenders_goes_to_slow_ones() {
        // 10 s: the two fast contenders need 0.78 s for all their tasks;
        // the 9.22 s left is shared by the two slow ones (costs are binary
        // fractions, so the arithmetic is exact).
        let fast = 1.0 / 512.0;
        let tasks = allot(&[fast, fast, 0.0625, 0.125], 10.0);
        assert_eq!(tasks, [DEFAULT_TASKS, DEFAULT_TASKS, 73, 36]);
        // Too slow for the budget: the floor.
        assert_eq!(allot(&[5.0], 1.0), [MIN_SCALED_TASKS]);
        assert_eq!(allot(&[], 1.0), Vec::<usize>::new());
    }

    #[test]
    fn rounds_follow_the_smallest_contender() {
        let run = |tasks| Run {
            tasks,
            per_task: Duration::ZERO,
            samples: Samples::default(),
            failure: None,
        };
        assert_eq!(rounds_for(&[run(200), run(37)], 2), 5);
        assert_eq!(rounds_for(&[run(200), run(5)], 2), 2);
        assert_eq!(rounds_for(&[run(3), run(3)], 2), 1);
        assert_eq!(rounds_for(&[run(3), run(3)], 8), 1);
    }
}
