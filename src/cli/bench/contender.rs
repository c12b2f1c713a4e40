//! What the benchmark compares: lattice's sandbox tiers, and the outside
//! references (a bare CPython per task; the package references in
//! reference.rs) behind one trait.

use std::collections::VecDeque;
use std::io::Write;
use std::ops::Range;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use lattice::executor::{ExecutorBackend, LocalExecutor};
use lattice::sandbox::{SandboxConfig, SandboxLevel};
use lattice::task::{ErrorKind, TaskHandle, TaskOutcome, TaskSubmission};
use serde_json::{json, Value};

use super::workload::{abbreviate, Observed, Workload};

/// Long enough for any workload on a slow machine, short enough that a
/// hung task can't hang the benchmark.
const TASK_TIMEOUT: Duration = Duration::from_secs(120);

/// Something that runs a workload's tasks and is timed doing it.
pub(super) trait Contender {
    /// The name in the table (`wasm`, `python3 -c`, ...).
    fn name(&self) -> &str;

    /// An outside reference rather than a lattice tier: its failures are
    /// reported, not fatal.
    fn is_reference(&self) -> bool;

    /// Whether its sandboxes' memory shows up in this process or its
    /// children (so the memory probe means something for it).
    fn memory_is_visible(&self) -> bool {
        true
    }

    /// Gets ready for a workload's tasks (nothing timed).
    fn prepare(&mut self, _workload: &Workload) -> Result<()> {
        Ok(())
    }

    /// Runs `tasks` one at a time; the latency of each, each checked.
    fn run_sequential(&mut self, workload: &Workload, tasks: Range<usize>)
        -> Result<Vec<Duration>>;

    /// Runs `tasks` with the contender's concurrency; the wall time of all,
    /// each checked.
    fn run_concurrent(&mut self, workload: &Workload, tasks: Range<usize>) -> Result<Duration>;
}

/// The error of a task whose answer was wrong.
pub(super) fn wrong_result(
    who: &str,
    workload: &Workload,
    task: usize,
    what: String,
) -> anyhow::Error {
    anyhow!(
        "{who} gave a wrong answer to {} task {task}: {what}",
        workload.name()
    )
}

/// A lattice tier, through the library's local executor: one executor with
/// one worker for the sequential runs, one with `concurrency` workers.
pub(super) struct TierContender {
    level: SandboxLevel,
    name: String,
    sequential: LocalExecutor,
    concurrent: LocalExecutor,
    concurrency: usize,
}

impl TierContender {
    pub(super) fn new(level: SandboxLevel, concurrency: usize) -> Result<TierContender> {
        let config = SandboxConfig {
            tier: level,
            timeout: TASK_TIMEOUT,
            ..SandboxConfig::default()
        };
        let sequential = LocalExecutor::new(Some(1), Some(config.clone()));
        let concurrent = LocalExecutor::new(Some(concurrency), Some(config));
        sequential.initialize()?;
        concurrent.initialize()?;
        Ok(TierContender {
            level,
            name: level.to_string(),
            sequential,
            concurrent,
            concurrency,
        })
    }

    /// Runs one trivial task: Err(reason) if the tier, although it said it
    /// was available, answers that it can't run here after all (a kernel
    /// feature missing at run time, say). Any other failure shows, with the
    /// task, when the workloads run.
    pub(super) fn smoke_test(&self) -> Result<(), String> {
        let task = TaskSubmission::python("def f(x):\n    return x\n").with_input(json!(1));
        let outcome = match self.sequential.submit(task) {
            Ok(handle) => self.sequential.get_result(&handle),
            Err(error) => return Err(error.to_string()),
        };
        match outcome.result {
            Err(error) if error.kind() == ErrorKind::SandboxUnavailable => {
                Err(error.to_record().message)
            }
            _ => Ok(()),
        }
    }

    fn verify(&self, workload: &Workload, task: usize, outcome: &TaskOutcome) -> Result<()> {
        workload
            .case(task)
            .expect
            .verify(&Observed::from_outcome(outcome))
            .map_err(|what| wrong_result(&format!("the {} tier", self.name), workload, task, what))
    }

    /// Waits for the oldest task in flight and checks it.
    fn collect_oldest(
        &self,
        workload: &Workload,
        in_flight: &mut VecDeque<(usize, TaskHandle)>,
    ) -> Result<()> {
        if let Some((task, handle)) = in_flight.pop_front() {
            let outcome = self.concurrent.get_result(&handle);
            self.concurrent.release(&handle);
            self.verify(workload, task, &outcome)?;
        }
        Ok(())
    }
}

impl Contender for TierContender {
    fn name(&self) -> &str {
        &self.name
    }

    fn is_reference(&self) -> bool {
        false
    }

    /// A docker container is the Docker daemon's child, not ours.
    fn memory_is_visible(&self) -> bool {
        self.level != SandboxLevel::Docker
    }

    fn run_sequential(
        &mut self,
        workload: &Workload,
        tasks: Range<usize>,
    ) -> Result<Vec<Duration>> {
        let mut latencies = Vec::with_capacity(tasks.len());
        for task in tasks {
            let submission = workload.submission(task);
            let started = Instant::now();
            let handle = self.sequential.submit(submission)?;
            let outcome = self.sequential.get_result(&handle);
            latencies.push(started.elapsed());
            self.sequential.release(&handle);
            self.verify(workload, task, &outcome)?;
        }
        Ok(latencies)
    }

    fn run_concurrent(&mut self, workload: &Workload, tasks: Range<usize>) -> Result<Duration> {
        // Every worker busy and one task queued behind each, as a streaming
        // client keeps it; submitting all at once would also hold every
        // input (1 MB each for io) in memory and in the measured peak.
        let window = 2 * self.concurrency;
        let mut in_flight = VecDeque::with_capacity(window);
        let started = Instant::now();
        for task in tasks {
            if in_flight.len() >= window {
                self.collect_oldest(workload, &mut in_flight)?;
            }
            let handle = self.concurrent.submit(workload.submission(task))?;
            in_flight.push_back((task, handle));
        }
        while !in_flight.is_empty() {
            self.collect_oldest(workload, &mut in_flight)?;
        }
        Ok(started.elapsed())
    }
}

/// The bare-CPython reference: `python3 -c SCRIPT` per task, the input
/// JSON on stdin, the answer JSON on stdout. No isolation, no limits: what
/// one fresh CPython costs.
pub(super) struct PythonReference {
    python: PathBuf,
    concurrency: usize,
    script: String,
    /// Each case's input JSON, serialised once.
    inputs: Vec<Vec<u8>>,
}

pub(super) const PYTHON_REFERENCE: &str = "python3 -c";

/// Wraps a workload's source: call `f` on stdin's JSON, print the outcome.
const PYTHON_EPILOGUE: &str = "
import json as _bench_json, sys as _bench_sys
try:
    _bench_outcome = {'ok': f(_bench_json.load(_bench_sys.stdin))}
except Exception as _bench_error:
    _bench_outcome = {'raised': type(_bench_error).__name__}
_bench_sys.stdout.write(_bench_json.dumps(_bench_outcome))
";

impl PythonReference {
    pub(super) fn new(python: PathBuf, concurrency: usize) -> PythonReference {
        PythonReference {
            python,
            concurrency,
            script: String::new(),
            inputs: Vec::new(),
        }
    }

    /// Runs one task in a fresh interpreter and checks it.
    fn run_task(&self, workload: &Workload, task: usize) -> Result<()> {
        let input = &self.inputs[task % self.inputs.len()];
        let observed = self.spawn(input)?;
        workload
            .case(task)
            .expect
            .verify(&observed)
            .map_err(|what| wrong_result(PYTHON_REFERENCE, workload, task, what))
    }

    fn spawn(&self, input: &[u8]) -> Result<Observed> {
        let mut child = Command::new(&self.python)
            .arg("-c")
            .arg(&self.script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("can't start {}", self.python.display()))?;
        let mut stdin = child.stdin.take().context("no stdin pipe")?;
        // Written from a thread: a 1 MB input fills the pipe before Python
        // reads it, and the answer must be read meanwhile.
        let output = std::thread::scope(|scope| {
            scope.spawn(move || stdin.write_all(input));
            child.wait_with_output()
        })?;
        let answer: Option<Value> = serde_json::from_slice(&output.stdout).ok();
        Ok(match answer {
            Some(Value::Object(mut answer)) if answer.contains_key("ok") => {
                Observed::Value(answer.remove("ok").unwrap_or_default())
            }
            Some(Value::Object(answer)) if answer.contains_key("raised") => {
                Observed::Raised(answer["raised"].as_str().unwrap_or_default().to_string())
            }
            _ => Observed::Failed(format!(
                "python3 exited with {}: {}",
                output.status,
                abbreviate(String::from_utf8_lossy(&output.stderr).trim())
            )),
        })
    }
}

impl Contender for PythonReference {
    fn name(&self) -> &str {
        PYTHON_REFERENCE
    }

    fn is_reference(&self) -> bool {
        true
    }

    fn prepare(&mut self, workload: &Workload) -> Result<()> {
        self.script = format!("{}{PYTHON_EPILOGUE}", workload.code);
        self.inputs = workload
            .cases()
            .iter()
            .map(|case| serde_json::to_vec(&case.input))
            .collect::<Result<_, _>>()?;
        Ok(())
    }

    fn run_sequential(
        &mut self,
        workload: &Workload,
        tasks: Range<usize>,
    ) -> Result<Vec<Duration>> {
        tasks
            .map(|task| {
                let started = Instant::now();
                self.run_task(workload, task)?;
                Ok(started.elapsed())
            })
            .collect()
    }

    fn run_concurrent(&mut self, workload: &Workload, tasks: Range<usize>) -> Result<Duration> {
        let next = AtomicUsize::new(tasks.start);
        let this = &*self;
        let started = Instant::now();
        let outcomes: Vec<Result<()>> = std::thread::scope(|scope| {
            let runners: Vec<_> = (0..this.concurrency)
                .map(|_| {
                    scope.spawn(|| loop {
                        let task = next.fetch_add(1, Ordering::Relaxed);
                        if task >= tasks.end {
                            return Ok(());
                        }
                        this.run_task(workload, task)?;
                    })
                })
                .collect();
            runners
                .into_iter()
                .map(|runner| {
                    runner
                        .join()
                        .unwrap_or_else(|_| Err(anyhow!("a runner thread panicked")))
                })
                .collect()
        });
        let elapsed = started.elapsed();
        outcomes.into_iter().collect::<Result<()>>()?;
        Ok(elapsed)
    }
}

/// The `/usr/bin/python3` of the bare-CPython reference, and its version;
/// Err: why it can't run.
pub(super) fn probe_python(python: &std::path::Path) -> Result<String> {
    let output = Command::new(python)
        .args(["-c", "import sys; print(sys.version.split()[0])"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            anyhow!(
                "not installed ({}: {e}; apt-get install python3)",
                python.display()
            )
        })?;
    if !output.status.success() {
        bail!(
            "{} does not run: {}",
            python.display(),
            abbreviate(String::from_utf8_lossy(&output.stderr).trim())
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}
