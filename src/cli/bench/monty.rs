//! The pydantic-monty reference: Monty (a Python interpreter written in
//! Rust) run through its Python package by a small driver script
//! (`monty_driver.py`) that times fresh sessions from inside Python and
//! reports over JSON lines. The harness only sends work and reads timings.

use std::io::{BufRead, BufReader, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use super::contender::{wrong_result, Contender};
use super::workload::{abbreviate, Workload};

pub(super) const MONTY_REFERENCE: &str = "pydantic-monty";

const DRIVER: &str = include_str!("monty_driver.py");

const NOT_INSTALLED: &str = "not installed (pip install pydantic-monty)";

/// The Python that has pydantic-monty and the package's version; Err: why
/// there is none. `python` is the user's `--monty-python`, else `python3`.
pub(super) fn probe(python: Option<&Path>) -> Result<(PathBuf, String), String> {
    let chosen = python.unwrap_or(Path::new("python3"));
    let output = Command::new(chosen)
        .args([
            "-c",
            "import pydantic_monty; print(pydantic_monty.__version__)",
        ])
        .stdin(Stdio::null())
        .output();
    match output {
        Ok(output) if output.status.success() => Ok((
            chosen.to_path_buf(),
            String::from_utf8_lossy(&output.stdout).trim().to_string(),
        )),
        // Asked for by path: say what that path did, it is probably a typo.
        _ if python.is_some() => Err(format!(
            "{NOT_INSTALLED}: {} can't import pydantic_monty",
            chosen.display()
        )),
        _ => Err(NOT_INSTALLED.to_string()),
    }
}

/// The driver process and its pipes.
pub(super) struct MontyReference {
    child: Child,
    requests: ChildStdin,
    replies: BufReader<ChildStdout>,
}

impl MontyReference {
    /// Starts the driver with its worker pools (one worker, and `concurrency`).
    pub(super) fn start(python: &Path, concurrency: usize) -> Result<MontyReference> {
        let mut child = Command::new(python)
            .args(["-c", DRIVER, &concurrency.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // The driver reports its errors in-band; anything else Python
            // prints there would interleave with the progress lines.
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("can't start {}", python.display()))?;
        let requests = child.stdin.take().context("no stdin pipe")?;
        let replies = BufReader::new(child.stdout.take().context("no stdout pipe")?);
        let mut driver = MontyReference {
            child,
            requests,
            replies,
        };
        driver.read_reply()?;
        Ok(driver)
    }

    fn request(&mut self, request: &Value) -> Result<Value> {
        writeln!(self.requests, "{request}")
            .and_then(|()| self.requests.flush())
            .context("the monty driver stopped reading")?;
        self.read_reply()
    }

    fn read_reply(&mut self) -> Result<Value> {
        let mut line = String::new();
        self.replies
            .read_line(&mut line)
            .context("reading the monty driver")?;
        if line.is_empty() {
            bail!("the monty driver exited");
        }
        let reply: Value = serde_json::from_str(&line)
            .with_context(|| format!("the monty driver said {}", abbreviate(&line)))?;
        if let Some(error) = reply.get("error").and_then(Value::as_str) {
            bail!("the monty driver failed: {error}");
        }
        Ok(reply)
    }

    fn run(&mut self, workload: &Workload, tasks: Range<usize>, concurrent: bool) -> Result<Value> {
        let first = tasks.start;
        let reply = self.request(&json!({
            "op": "run", "first": first, "count": tasks.len(), "concurrent": concurrent,
        }))?;
        if let Some(mismatch) = reply.get("mismatch").and_then(Value::as_str) {
            return Err(wrong_result(
                MONTY_REFERENCE,
                workload,
                first,
                format!("(in the batch from task {first}) {mismatch}"),
            ));
        }
        Ok(reply)
    }
}

impl Drop for MontyReference {
    fn drop(&mut self) {
        // Closing stdin ends the driver's loop; the kill is for a driver
        // stuck in a task.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Contender for MontyReference {
    fn name(&self) -> &str {
        MONTY_REFERENCE
    }

    fn is_reference(&self) -> bool {
        true
    }

    /// Monty's workers are the driver's children, and the driver itself
    /// (a CPython with the package loaded) is no sandbox: not measured.
    fn memory_is_visible(&self) -> bool {
        false
    }

    fn prepare(&mut self, workload: &Workload) -> Result<()> {
        let cases: Vec<Value> = workload
            .cases()
            .iter()
            .map(|case| json!({ "input": case.input, "expect": case.expect.to_json() }))
            .collect();
        self.request(&json!({ "op": "load", "code": workload.code, "cases": cases }))?;
        Ok(())
    }

    fn run_sequential(
        &mut self,
        workload: &Workload,
        tasks: Range<usize>,
    ) -> Result<Vec<Duration>> {
        let reply = self.run(workload, tasks, false)?;
        reply["latencies_ms"]
            .as_array()
            .ok_or_else(|| anyhow!("the monty driver sent no latencies"))?
            .iter()
            .map(|ms| {
                ms.as_f64()
                    .filter(|ms| ms.is_finite() && *ms >= 0.0)
                    .map(|ms| Duration::from_secs_f64(ms / 1000.0))
                    .ok_or_else(|| anyhow!("the monty driver sent a bad latency: {ms}"))
            })
            .collect()
    }

    fn run_concurrent(&mut self, workload: &Workload, tasks: Range<usize>) -> Result<Duration> {
        let reply = self.run(workload, tasks, true)?;
        reply["wall_s"]
            .as_f64()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| anyhow!("the monty driver sent no wall time"))
    }
}
