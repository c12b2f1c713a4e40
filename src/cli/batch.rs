//! `batch`: a JSON-lines file of tasks in, one result line per task out, in
//! input order, streaming (a bounded window of tasks is in flight).

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use lattice::executor::{create_executor, ExecutorBackend, ExecutorOptions};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;

use lattice::task::json::{outcome_to_json, parse_task, task_id};
use lattice::task::{ErrorKind, ExecutorType, TaskError, TaskHandle, TaskOutcome};
use serde_json::Value;

use super::args::BatchArgs;
use super::{signals, usage};

enum Pending {
    Submitted(TaskHandle),
    Ready(Box<TaskOutcome>),
}

struct Tally {
    ok: usize,
    failed: BTreeMap<&'static str, usize>,
    progress: bool,
    last_progress: Instant,
}

impl Tally {
    fn add(&mut self, outcome: &TaskOutcome) {
        match &outcome.result {
            Ok(_) => self.ok += 1,
            Err(e) => *self.failed.entry(e.kind().as_str()).or_default() += 1,
        }
        if self.progress && self.last_progress.elapsed() > Duration::from_millis(100) {
            self.last_progress = Instant::now();
            eprint!(
                "\rbatch: {} done, {} ok, {} failed ",
                self.total(),
                self.ok,
                self.failures()
            );
        }
    }

    fn failures(&self) -> usize {
        self.failed.values().sum()
    }

    fn total(&self) -> usize {
        self.ok + self.failures()
    }
}

pub(super) fn run(args: BatchArgs) -> Result<i32> {
    let input: Box<dyn BufRead + Send> = if args.file.as_os_str() == "-" {
        Box::new(BufReader::new(std::io::stdin()))
    } else {
        let file = std::fs::File::open(&args.file)
            .map_err(|e| usage(format!("can't read {}: {e}", args.file.display())))?;
        Box::new(BufReader::new(file))
    };
    let mut output: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("can't write {}", path.display()))?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    let config = args.limits.config();
    let policy = args.policy.policy(&config);
    let concurrency = args
        .concurrency
        .map(|n| n as usize)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // On Ray, tasks in flight are spread over every node's workers and a
    // round trip is milliseconds: a deeper window keeps them all busy.
    let window = match args.executor {
        ExecutorType::Ray => 4096,
        ExecutorType::Local => (concurrency * 4).max(8),
    };
    let executor: Arc<dyn ExecutorBackend> = Arc::from(create_executor(
        args.executor,
        ExecutorOptions {
            max_workers: args.concurrency.map(|n| n as usize),
            sandbox: Some(config.clone()),
            ray: args.ray.options(),
        },
    )?);
    let lines = read_lines(input, window);
    {
        let executor = executor.clone();
        let stop = lines.stop.clone();
        signals::on_signal(move || {
            // Wakes the loop below even while it waits for a line.
            let _ = stop.try_send(Input::Stop);
            let _ = executor.shutdown();
        });
    }
    executor.initialize()?;
    if args.executor == ExecutorType::Local {
        super::prepare_wasm_if_cold(args.limits.config().tier)?;
    }

    let started = Instant::now();
    let mut tally = Tally {
        ok: 0,
        failed: BTreeMap::new(),
        progress: std::io::stderr().is_terminal(),
        last_progress: Instant::now(),
    };
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let emit = |pending: Pending, out: &mut dyn Write, tally: &mut Tally| -> Result<()> {
        let outcome = match pending {
            Pending::Ready(outcome) => *outcome,
            Pending::Submitted(handle) => {
                let outcome = executor.get_result(&handle);
                executor.release(&handle);
                outcome
            }
        };
        tally.add(&outcome);
        writeln!(out, "{}", outcome_to_json(&outcome))?;
        out.flush()?;
        Ok(())
    };

    let mut line_no = 0u64;
    loop {
        let line = match lines.next.recv() {
            Ok(Input::Line(line)) => line,
            Ok(Input::Failed(error)) => {
                return Err(anyhow::Error::new(error).context("reading the task file"))
            }
            Ok(Input::End | Input::Stop) | Err(_) => break,
        };
        line_no += 1;
        if signals::received().is_some() {
            break; // no new task once asked to stop
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        // A line that is no task (or one the operator does not allow) gets
        // its invalid_task result, with its id when that can be read.
        let parsed = match std::str::from_utf8(&line) {
            Ok(text) => parse_task(text)
                .and_then(|task| policy.check(&task, &config).map(|()| task))
                .map_err(|error| (task_id(text), error)),
            Err(_) => Err((
                None,
                TaskError::invalid(format!("line {line_no} is not UTF-8")),
            )),
        };
        let item = match parsed {
            Ok(mut task) => {
                let id = task.id.get_or_insert(Value::from(line_no)).clone();
                match executor.submit(task) {
                    Ok(handle) => Pending::Submitted(handle),
                    Err(error) => {
                        Pending::Ready(Box::new(TaskOutcome::from_error(Some(id), error)))
                    }
                }
            }
            Err((id, error)) => Pending::Ready(Box::new(TaskOutcome::from_error(
                Some(id.unwrap_or_else(|| Value::from(line_no))),
                error,
            ))),
        };
        pending.push_back(item);
        while pending.len() >= window || front_is_ready(&pending, &*executor) {
            let front = pending.pop_front().expect("checked non-empty");
            emit(front, &mut output, &mut tally)?;
        }
    }
    while let Some(front) = pending.pop_front() {
        emit(front, &mut output, &mut tally)?;
    }
    signals::clear();
    executor.shutdown()?;

    let elapsed = started.elapsed().as_secs_f64();
    let kinds: Vec<String> = tally
        .failed
        .iter()
        .map(|(kind, n)| format!("{kind} {n}"))
        .collect();
    if tally.progress {
        eprint!("\r");
    }
    eprintln!(
        "batch: {} tasks, {} ok, {} failed{} in {:.2} s ({:.1} tasks/s)",
        tally.total(),
        tally.ok,
        tally.failures(),
        if kinds.is_empty() {
            String::new()
        } else {
            format!(" ({})", kinds.join(", "))
        },
        elapsed,
        tally.total() as f64 / elapsed.max(1e-9)
    );
    Ok(match signals::received() {
        Some(signal) => signals::exit_code(signal),
        None if tally.failed.contains_key(ErrorKind::InvalidTask.as_str()) => 2,
        None if tally.failures() > 0 => 1,
        None => 0,
    })
}

/// What the reading thread passes on: a line, or why there are no more.
enum Input {
    Line(Vec<u8>),
    Failed(std::io::Error),
    End,
    /// A signal asked us to stop.
    Stop,
}

struct Lines {
    next: Receiver<Input>,
    stop: SyncSender<Input>,
}

/// Reads `input` line by line on a thread of its own, at most `window`
/// lines ahead: waiting for a line (a pipe that stays open) must not keep
/// a signal from stopping the batch.
fn read_lines(input: Box<dyn BufRead + Send>, window: usize) -> Lines {
    let (sender, next) = sync_channel(window);
    let stop = sender.clone();
    std::thread::spawn(move || {
        for line in input.split(b'\n') {
            let item = line.map_or_else(Input::Failed, Input::Line);
            let failed = matches!(item, Input::Failed(_));
            if sender.send(item).is_err() || failed {
                return;
            }
        }
        let _ = sender.send(Input::End);
    });
    Lines { next, stop }
}

fn front_is_ready(pending: &VecDeque<Pending>, executor: &dyn ExecutorBackend) -> bool {
    match pending.front() {
        None => false,
        Some(Pending::Ready(_)) => true,
        Some(Pending::Submitted(handle)) => {
            let (done, _) = executor.wait(std::slice::from_ref(handle), Duration::ZERO);
            !done.is_empty()
        }
    }
}
