//! The references that are Python packages — pydantic-monty, eryx, and
//! CPython itself in-process — each run by one driver script
//! (`references/driver.py`, with the package's part) that times tasks from
//! inside Python and reports over JSON lines. The harness only sends work
//! and reads timings.

use std::io::{BufRead, BufReader, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use super::contender::{wrong_result, Contender};
use super::workload::{abbreviate, Workload};

/// A reference run by the driver: its name in the table, the module that
/// says it is installed, and the driver's part for it.
pub(super) struct Package {
    pub name: &'static str,
    /// Imported to probe for it.
    module: &'static str,
    /// The version shown: a Python expression, once `module` is imported.
    version: &'static str,
    /// How to get it, for the "not installed" line.
    install: &'static str,
    part: &'static str,
}

/// Monty (a Python interpreter written in Rust): a fresh session of a warm
/// worker pool per task.
pub(super) const MONTY: Package = Package {
    name: "pydantic-monty",
    module: "pydantic_monty",
    version: "pydantic_monty.__version__",
    install: "pip install pydantic-monty",
    part: include_str!("references/monty.py"),
};

/// eryx (CPython compiled to WASI, run by wasmtime): a fresh sandbox per
/// task.
pub(super) const ERYX: Package = Package {
    name: "eryx",
    module: "eryx",
    version: "eryx.__version__",
    install: "pip install pyeryx, into a Python >= 3.12",
    part: include_str!("references/eryx.py"),
};

/// CPython's own compute: the task run in the driver's interpreter, no
/// sandbox and no process start (the column the tiers' compute is compared
/// with).
pub(super) const CPYTHON: Package = Package {
    name: "cpython in-process",
    module: "sys",
    version: "sys.version.split()[0]",
    install: "Debian's python3: apt-get install python3",
    part: include_str!("references/cpython.py"),
};

const DRIVER: &str = include_str!("references/driver.py");

impl Package {
    /// The Python that has the package and the package's version; Err: why
    /// there is none. `python` is the user's choice, else `python3`.
    pub(super) fn probe(&self, python: Option<&Path>) -> Result<(PathBuf, String), String> {
        let chosen = python.unwrap_or(Path::new("python3"));
        let (module, version) = (self.module, self.version);
        let output = Command::new(chosen)
            .args(["-c", &format!("import {module}; print({version})")])
            .stdin(Stdio::null())
            .output();
        let not_installed = format!("not installed ({})", self.install);
        match output {
            Ok(output) if output.status.success() => Ok((
                chosen.to_path_buf(),
                String::from_utf8_lossy(&output.stdout).trim().to_string(),
            )),
            // Asked for by path: say what that path did, it is probably a typo.
            _ if python.is_some() => Err(format!(
                "{not_installed}: {} can't import {module}",
                chosen.display()
            )),
            _ => Err(not_installed),
        }
    }
}

/// A package's driver process and its pipes.
pub(super) struct PackageReference {
    package: &'static Package,
    child: Child,
    requests: ChildStdin,
    replies: BufReader<ChildStdout>,
}

impl PackageReference {
    /// Starts `package`'s driver with its pools (one sandbox at a time, and
    /// `concurrency`).
    pub(super) fn start(
        package: &'static Package,
        python: &Path,
        concurrency: usize,
    ) -> Result<PackageReference> {
        let script = format!("{}\n{DRIVER}", package.part);
        let mut child = Command::new(python)
            .args(["-c", &script, &concurrency.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // The driver reports its errors in-band; anything else Python
            // prints there would interleave with the progress lines.
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("can't start {}", python.display()))?;
        let requests = child.stdin.take().context("no stdin pipe")?;
        let replies = BufReader::new(child.stdout.take().context("no stdout pipe")?);
        let mut driver = PackageReference {
            package,
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
            .with_context(|| format!("the {} driver stopped reading", self.package.name))?;
        self.read_reply()
    }

    fn read_reply(&mut self) -> Result<Value> {
        let mut line = String::new();
        self.replies
            .read_line(&mut line)
            .with_context(|| format!("reading the {} driver", self.package.name))?;
        let name = self.package.name;
        if line.is_empty() {
            bail!("the {name} driver exited");
        }
        let reply: Value = serde_json::from_str(&line)
            .with_context(|| format!("the {name} driver said {}", abbreviate(&line)))?;
        if let Some(error) = reply.get("error").and_then(Value::as_str) {
            bail!("the {name} driver failed: {error}");
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
                self.package.name,
                workload,
                first,
                format!("(in the batch from task {first}) {mismatch}"),
            ));
        }
        Ok(reply)
    }
}

impl Drop for PackageReference {
    fn drop(&mut self) {
        // Closing stdin ends the driver's loop; the kill is for a driver
        // stuck in a task.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Contender for PackageReference {
    fn name(&self) -> &str {
        self.package.name
    }

    fn is_reference(&self) -> bool {
        true
    }

    /// Monty's workers are the driver's children, eryx's sandboxes live in
    /// the driver, and the driver itself (a CPython with the package
    /// loaded) is no sandbox: not measured.
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
            .ok_or_else(|| anyhow!("the {} driver sent no latencies", self.package.name))?
            .iter()
            .map(|ms| {
                ms.as_f64()
                    .filter(|ms| ms.is_finite() && *ms >= 0.0)
                    .map(|ms| Duration::from_secs_f64(ms / 1000.0))
                    .ok_or_else(|| {
                        anyhow!("the {} driver sent a bad latency: {ms}", self.package.name)
                    })
            })
            .collect()
    }

    fn run_concurrent(&mut self, workload: &Workload, tasks: Range<usize>) -> Result<Duration> {
        let reply = self.run(workload, tasks, true)?;
        reply["wall_s"]
            .as_f64()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| anyhow!("the {} driver sent no wall time", self.package.name))
    }
}
