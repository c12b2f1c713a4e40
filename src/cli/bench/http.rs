//! The http workload: `lattice-wasm serve` in a child process answering
//! trivial `/v1/run` requests from many keep-alive connections, beside
//! `lattice-wasm batch` of the same task lines in a child process — what
//! the HTTP service costs over the batch command, on one tier.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lattice::executor::{create_executor, ExecutorBackend, ExecutorOptions};
use lattice::sandbox::{SandboxConfig, SandboxLevel};
use lattice::task::json::{outcome_to_json, parse_task};
use lattice::task::ExecutorType;
use serde::Serialize;
use serde_json::{json, Value};

/// Requests when --tasks is not given, and the connections they share.
pub(super) const DEFAULT_REQUESTS: usize = 10_000;
const CONNECTIONS: usize = 64;
/// Requests sent one at a time, on one connection, for the overhead.
const SEQUENTIAL: usize = 1_000;
const WARM_UP: usize = 200;

/// The http workload's numbers.
#[derive(Serialize)]
pub(super) struct HttpRow {
    pub tier: String,
    pub requests: usize,
    pub connections: usize,
    /// Server workers, and `batch --concurrency`.
    pub workers: usize,
    /// Requests over the whole run of the concurrent requests.
    pub http_per_s: f64,
    /// Client-side latency of the concurrent requests (queueing included).
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Tasks per second of `batch` on the same task lines.
    pub batch_per_s: f64,
    /// `http_per_s / batch_per_s`.
    pub vs_batch: f64,
    /// One request at a time on one connection, p50.
    pub sequential_p50_ms: f64,
    /// The same task through the library's LocalExecutor in this process,
    /// one at a time, interleaved with those requests, p50.
    pub library_p50_ms: f64,
    /// `sequential_p50_ms - library_p50_ms`: what HTTP adds to a task.
    pub overhead_p50_ms: f64,
}

/// Measures `tier`: `requests` tasks through `batch`, then through `serve`.
pub(super) fn measure(
    tier: SandboxLevel,
    requests: usize,
    workers: usize,
) -> Result<HttpRow, String> {
    let binary = std::env::current_exe().map_err(|e| format!("no path to this binary: {e}"))?;
    let lines: Vec<String> = (0..requests)
        .map(|i| json!({"id": i, "code": super::workload::TRIVIAL, "input": i}).to_string())
        .collect();
    let batch_per_s = batch_rate(&binary, tier, workers, &lines)?;
    let library = Library::new(tier)?;
    let server = Server::start(&binary, tier, workers)?;
    let client = Client::new(&server.base, &lines)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let measured = (|| {
        for (i, line) in lines.iter().enumerate().take(WARM_UP) {
            runtime.block_on(client.send(i))?;
            library.run(line, i)?;
        }
        // One at a time, HTTP and library in turn: the same noise on both.
        let (mut sequential, mut direct) = (Vec::new(), Vec::new());
        for (i, line) in lines.iter().enumerate().take(SEQUENTIAL) {
            sequential.push(runtime.block_on(client.send(i))?);
            direct.push(library.run(line, i)?);
        }
        let (latencies, wall) = runtime.block_on(client.all())?;
        Ok::<_, String>((sequential, direct, latencies, wall))
    })();
    server.stop()?;
    let (mut sequential, mut direct, mut latencies, wall) = measured?;
    for times in [&mut sequential, &mut direct, &mut latencies] {
        times.sort_unstable();
    }
    let ms =
        |sorted: &[Duration], percent| super::report::percentile_ms(sorted, percent).unwrap_or(0.0);
    let http_per_s = requests as f64 / wall.as_secs_f64();
    Ok(HttpRow {
        tier: tier.to_string(),
        requests,
        connections: CONNECTIONS.min(requests),
        workers,
        http_per_s,
        p50_ms: ms(&latencies, 50),
        p99_ms: ms(&latencies, 99),
        batch_per_s,
        vs_batch: http_per_s / batch_per_s,
        sequential_p50_ms: ms(&sequential, 50),
        library_p50_ms: ms(&direct, 50),
        overhead_p50_ms: ms(&sequential, 50) - ms(&direct, 50),
    })
}

/// Tasks per second of `batch` on `lines`: its wall time on all of them
/// less its wall time on one (process start, engine load), so both sides
/// count task work only.
pub(super) fn batch_rate(
    binary: &Path,
    tier: SandboxLevel,
    workers: usize,
    lines: &[String],
) -> Result<f64, String> {
    let run = |lines: &[String]| -> Result<Duration, String> {
        let mut child = Command::new(binary)
            .args(["batch", "-", "--tier", &tier.to_string()])
            .args(["--concurrency", &workers.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("can't start batch: {e}"))?;
        let started = Instant::now();
        let mut stdin = child.stdin.take().expect("piped");
        let input = lines.join("\n") + "\n";
        let feeder = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
        let output = child.wait_with_output().map_err(|e| e.to_string())?;
        let wall = started.elapsed();
        let _ = feeder.join();
        if !output.status.success() {
            return Err(format!(
                "batch failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        for (i, line) in String::from_utf8_lossy(&output.stdout).lines().enumerate() {
            check(line, i)?;
        }
        Ok(wall)
    };
    run(&lines[..1])?; // warm: the wasm tier's cache is on disk after this
    let one = run(&lines[..1])?;
    let all = run(lines)?;
    let work = all.saturating_sub(one).max(Duration::from_micros(1));
    Ok(lines.len().saturating_sub(1).max(1) as f64 / work.as_secs_f64())
}

/// Checks the result line of task `i`.
fn check(line: &str, i: usize) -> Result<(), String> {
    let result: Value =
        serde_json::from_str(line).map_err(|e| format!("not a result line ({e}): {line}"))?;
    if result["status"] != "ok" || result["result"] != json!(i + 1) || result["id"] != json!(i) {
        return Err(format!("task {i}: wrong answer: {line}"));
    }
    Ok(())
}

/// The same tasks through the library, in this process.
struct Library(Box<dyn ExecutorBackend>);

impl Library {
    fn new(tier: SandboxLevel) -> Result<Library, String> {
        let executor = create_executor(
            ExecutorType::Local,
            ExecutorOptions {
                max_workers: Some(1),
                sandbox: Some(SandboxConfig {
                    tier,
                    ..SandboxConfig::default()
                }),
                ..ExecutorOptions::default()
            },
        )
        .map_err(|e| e.to_string())?;
        executor.initialize().map_err(|e| e.to_string())?;
        Ok(Library(executor))
    }

    /// Task line `i`, submit to checked result.
    fn run(&self, line: &str, i: usize) -> Result<Duration, String> {
        let started = Instant::now();
        let task = parse_task(line).map_err(|e| e.to_string())?;
        let handle = self.0.submit(task).map_err(|e| e.to_string())?;
        let outcome = self.0.get_result(&handle);
        self.0.release(&handle);
        let line = outcome_to_json(&outcome);
        let elapsed = started.elapsed();
        check(&line, i)?;
        Ok(elapsed)
    }
}

impl Drop for Library {
    fn drop(&mut self) {
        let _ = self.0.shutdown();
    }
}

/// An HTTP client of the server's `/v1/run`, with the task lines.
struct Client<'a> {
    http: reqwest::Client,
    url: String,
    lines: &'a [String],
}

impl<'a> Client<'a> {
    fn new(base: &str, lines: &'a [String]) -> Result<Client<'a>, String> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(CONNECTIONS)
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Client {
            http,
            url: format!("{base}/v1/run"),
            lines,
        })
    }

    /// Task line `i`, request to checked answer.
    async fn send(&self, i: usize) -> Result<Duration, String> {
        let started = Instant::now();
        let response = self
            .http
            .post(&self.url)
            .body(self.lines[i].clone())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response.text().await.map_err(|e| e.to_string())?;
        let latency = started.elapsed();
        if status != reqwest::StatusCode::OK {
            return Err(format!("task {i}: HTTP {status}: {body}"));
        }
        check(&body, i)?;
        Ok(latency)
    }

    /// Every line at once over the connections: their latencies and the
    /// wall time.
    async fn all(&self) -> Result<(Vec<Duration>, Duration), String> {
        let next = &AtomicUsize::new(0);
        let latencies = &Mutex::new(Vec::with_capacity(self.lines.len()));
        let started = Instant::now();
        let connection = || async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= self.lines.len() {
                    return Ok::<(), String>(());
                }
                let latency = self.send(i).await?;
                latencies.lock().expect("not poisoned").push(latency);
            }
        };
        let connections: Vec<_> = (0..CONNECTIONS.min(self.lines.len()))
            .map(|_| connection())
            .collect();
        for done in futures_util::future::join_all(connections).await {
            done?;
        }
        let wall = started.elapsed();
        let latencies = std::mem::take(&mut *latencies.lock().expect("not poisoned"));
        Ok((latencies, wall))
    }
}

/// A `serve` child on a free port of loopback.
struct Server {
    child: Child,
    base: String,
    stderr: Arc<Mutex<String>>,
}

impl Server {
    fn start(binary: &Path, tier: SandboxLevel, workers: usize) -> Result<Server, String> {
        let mut child = Command::new(binary)
            .args([
                "serve",
                "--addr",
                "127.0.0.1:0",
                "--tier",
                &tier.to_string(),
            ])
            .args(["--concurrency", &workers.to_string()])
            .args(["--max-queue", "1000000"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("can't start serve: {e}"))?;
        let mut lines = BufReader::new(child.stderr.take().expect("piped")).lines();
        let stderr = Arc::new(Mutex::new(String::new()));
        let base = loop {
            let Some(Ok(line)) = lines.next() else {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("serve exited: {}", stderr.lock().expect("ok")));
            };
            stderr.lock().expect("not poisoned").push_str(&line);
            if let Some(rest) = line.split("serving on ").nth(1) {
                break rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string();
            }
        };
        let kept = stderr.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                kept.lock().expect("not poisoned").push_str(&(line + "\n"));
            }
        });
        Ok(Server {
            child,
            base,
            stderr,
        })
    }

    /// SIGTERM, then its exit, which must be clean.
    fn stop(mut self) -> Result<(), String> {
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().map_err(|e| e.to_string())?;
        if status.success() {
            Ok(())
        } else {
            Err(format!(
                "serve exited with {status}: {}",
                self.stderr.lock().expect("not poisoned")
            ))
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
