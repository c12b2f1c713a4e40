//! The executor itself: the sidecar it speaks with, placement, the
//! watchdog and the [`ExecutorBackend`] implementation.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::dashboard::{fetch_nodes, NodeInfo};
use super::head::StartedHead;
use super::protocol::{Event, FailureKind, Op};
use super::worker::{SessionRequest, WorkerRequest};
use super::RayOptions;
use super::RaySession;
use crate::executor::completion::{Completion, HandleTable, TaskSlot};
use crate::executor::{BoxFuture, ClusterResources, ExecutorBackend, NodeResources};
use crate::sandbox::{get_sandbox_config, SandboxConfig, SandboxLevel};
use crate::task::json::{parse_outcome, TaskSpec};
use crate::task::{ExecutorType, TaskError, TaskHandle, TaskOutcome, TaskSubmission};

/// The sidecar's source, written to a private file and run by the Python that has ray.
const SIDECAR_SOURCE: &str = include_str!("sidecar.py");

/// A task ready for the sidecar: its line and its resolved configuration
/// (both JSON), and its tier.
#[derive(Clone)]
struct Prepared {
    task: String,
    config: String,
    level: SandboxLevel,
}

/// The sidecar's answer to an available-resources request: free amounts by
/// node id and resource, or why Ray could not tell.
type Reply = Result<HashMap<String, HashMap<String, Value>>, String>;

/// Where a session operation's reply (or why there is none) goes.
type SessionAnswer = mpsc::Sender<Result<Value, TaskError>>;

/// How long membership read from the dashboard is trusted at submit (a
/// task that does not fit always looks again). A node that died within it
/// costs little: Ray fails affinity to it at once, and the watchdog ends
/// tasks that no alive node can run.
const MEMBERSHIP_TTL: Duration = Duration::from_secs(5);

/// How often the watchdog looks for tasks that no alive node can run any
/// more (their node died while they were queued) and for lost cancels.
const WATCH_PERIOD: Duration = Duration::from_secs(2);

/// A task whose cancel got no answer from Ray in this time is reported
/// Cancelled anyway.
const CANCEL_DEADLINE: Duration = Duration::from_secs(15);

/// Tasks a node's warm worker may have in flight, per CPU of the node:
/// enough to keep it busy between round trips, few enough that a node's
/// death ends only those (the rest wait here and go to other nodes).
const WARM_DEPTH_PER_CPU: usize = 32;

/// Runs tasks on a Ray cluster.
///
/// Two paths, one behaviour:
/// - **Warm** (a task that fits one CPU slot and asks for no GPU and no
///   memory, which is most tasks): one Ray actor per node keeps a
///   long-lived `lattice-wasm ray-worker` process that runs as many tasks
///   at once as its node has CPUs. Tasks go to it in chunks (whatever
///   queued up while the last chunk was being sent), at most
///   32 per CPU in flight per node, to the least loaded node (or the one
///   `node_id` names); outcomes stream back as they finish. The actors take
///   no Ray CPUs: the executor counts the slots itself.
/// - **Per task** (a GPU, a memory request, more than one CPU, or
///   [`RayOptions::warm_workers`] off): one `ray.remote` call that runs
///   `lattice-wasm exec` on its node, with Ray reserving exactly what the
///   task asks for.
///
/// - `submit`: `resources` become `num_cpus` (default [`RayOptions::default_cpus`]),
///   `memory` and `num_gpus`; `node_id` a hard `NodeAffinitySchedulingStrategy`
///   (a malformed id is InvalidTask before anything is sent; an unknown one
///   too); `gpu_id` the task's `CUDA_VISIBLE_DEVICES` (and, unless the task
///   says how many GPUs it wants, a request for one GPU, so it lands on a
///   node that has some); with no GPU, `CUDA_VISIBLE_DEVICES` is set empty.
///   A request no alive node can satisfy (more GPUs than any node has) is
///   InvalidTask at once instead of pending forever.
/// - Outcomes: the task's own result or error; Cancelled for **any** ending
///   after a cancel request (a force-cancel races with the task's end);
///   NodeFailed when its node dies (or the node its affinity names is dead);
///   a crashed Ray worker (or warm worker) is retried once, a task failure
///   never.
/// - `cancel` is `ray.cancel(force=True)` (a graceful cancel was measured not
///   to reach a task blocked in its sandbox), or on the warm path a cancel
///   of that one task in its worker; no process of the task survives it,
///   and the worker's other tasks go on. `shutdown` cancels whatever is
///   still running, stops the sidecar and, if this executor started a head,
///   that head (and nothing else). Dropping the executor shuts it down.
/// - If the sidecar dies, every task in flight gets an Internal error and
///   later submits are refused: every accepted task gets exactly one outcome.
///
/// ```no_run
/// use lattice::executor::{ExecutorBackend, RayExecutor, RayOptions};
/// use lattice::task::TaskSubmission;
/// use serde_json::json;
///
/// let executor = RayExecutor::new(RayOptions {
///     address: Some("127.0.0.1:6379".into()),
///     python: "target/ray-venv/bin/python".into(),
///     ..RayOptions::default()
/// });
/// executor.initialize()?;
/// let handle = executor.submit(TaskSubmission::python("def f(x):\n    return x * 2\n").with_input(json!(21)))?;
/// let outcome = executor.get_result(&handle);
/// println!("ran on node {:?}", outcome.node_id);
/// assert_eq!(outcome.into_result()?, json!(42));
/// executor.shutdown()?;
/// # Ok::<(), lattice::task::TaskError>(())
/// ```
pub struct RayExecutor {
    shared: Arc<Shared>,
}

pub(super) struct Shared {
    options: RayOptions,
    tasks: HandleTable<Slot>,
    /// Held while starting or stopping, so those never interleave.
    lifecycle: Mutex<Lifecycle>,
    /// The sidecar's stdin; None when it is not running.
    writer: Mutex<Option<ChildStdin>>,
    /// Set once the cluster is known (after initialize).
    cluster: Mutex<Option<ClusterInfo>>,
    membership: Mutex<Option<(Instant, Vec<NodeInfo>)>>,
    replies: Mutex<HashMap<u64, mpsc::Sender<Reply>>>,
    next_request: AtomicU64,
    ready: Mutex<Option<mpsc::Sender<Result<(), String>>>>,
    stderr_tail: Mutex<VecDeque<u8>>,
    stopping: AtomicBool,
    /// The warm path's tasks and workers.
    pool: Mutex<Pool>,
    /// Signalled whenever the pool changes (a task queued, one ended, a
    /// worker lost, a stop).
    pool_changed: Condvar,
    /// Session operations waiting for their reply, by request id: the
    /// session's worker, and where the reply goes.
    session_calls: Mutex<HashMap<u64, (u64, SessionAnswer)>>,
    /// Why each lost warm worker is gone, for its sessions' later calls.
    lost_workers: Mutex<HashMap<u64, TaskError>>,
}

/// The warm path: tasks not sent yet, and the warm worker of each node.
#[derive(Default)]
struct Pool {
    queue: VecDeque<(u64, Arc<Slot>)>,
    workers: HashMap<u64, Worker>,
    /// The current worker of each node.
    by_node: HashMap<String, u64>,
    next_worker: u64,
    /// Counts changes, so that the dispatcher tries again only after one.
    generation: u64,
}

/// One warm worker: an actor on `node` and its `ray-worker` process.
struct Worker {
    node: String,
    slots: usize,
    in_flight: HashSet<u64>,
}

/// A chunk of request lines for one worker.
struct Chunk {
    worker: u64,
    node: String,
    slots: usize,
    lines: String,
}

#[derive(Default)]
struct Lifecycle {
    phase: Phase,
    child: Option<Child>,
    threads: Vec<JoinHandle<()>>,
    head: Option<StartedHead>,
    /// The sidecar's source file, removed when the executor stops.
    script: Option<tempfile::NamedTempFile>,
}

#[derive(Default, PartialEq, Eq, Clone, Copy)]
enum Phase {
    #[default]
    New,
    Running,
    ShutDown,
}

#[derive(Clone)]
struct ClusterInfo {
    address: String,
    dashboard: String,
    binary: PathBuf,
}

struct Slot {
    id: Option<Value>,
    tier: SandboxLevel,
    request: Request,
    completion: Arc<Completion>,
    submitted: Instant,
    cancel_requested: Mutex<Option<Instant>>,
    /// The warm path's task and configuration; None: a Ray task of its own.
    warm: Option<Prepared>,
    /// The warm worker it was sent to (set under the pool's lock).
    worker: Mutex<Option<u64>>,
    /// Whether it was sent again after its warm worker crashed.
    retried: AtomicBool,
}

impl TaskSlot for Slot {
    fn completion(&self) -> &Arc<Completion> {
        &self.completion
    }
}

impl Slot {
    fn cancel_requested(&self) -> bool {
        lock(&self.cancel_requested).is_some()
    }

    /// Completes the task with `error` (Cancelled if a cancel was asked for).
    fn fail(&self, error: TaskError, node_id: Option<String>) {
        let error = if self.cancel_requested() {
            TaskError::Cancelled
        } else {
            error
        };
        self.completion.complete(TaskOutcome {
            tier: Some(self.tier),
            node_id,
            duration: self.submitted.elapsed(),
            ..TaskOutcome::from_error(self.id.clone(), error)
        });
    }

    /// Completes the task with the outcome its node reported (Cancelled if
    /// a cancel was asked for: a cancel races with the task's end).
    fn finish(&self, node: Option<String>, outcome: Result<TaskOutcome, TaskError>) {
        match outcome {
            Ok(_) if self.cancel_requested() => self.fail(TaskError::Cancelled, node),
            Ok(mut outcome) => {
                outcome.id = self.id.clone();
                outcome.node_id = node;
                self.completion.complete(outcome);
            }
            Err(error) => self.fail(error, node),
        }
    }

    /// The worker's request line for this (warm) task.
    fn request_line(&self, id: u64) -> String {
        let warm = self.warm.as_ref().expect("a warm task");
        let mut line = serde_json::to_string(&WorkerRequest::Run {
            run: id,
            task: warm.task.as_str().into(),
            config: warm.config.as_str().into(),
        })
        .expect("a request always serialises");
        line.push('\n');
        line
    }
}

/// What a task asks Ray for.
#[derive(Clone, Debug, PartialEq)]
struct Request {
    num_cpus: f64,
    memory: Option<u64>,
    num_gpus: f64,
    node_id: Option<String>,
    gpu_id: Option<u32>,
}

impl Request {
    /// Whether the task takes the warm path: one CPU slot or less, no GPU,
    /// no memory to reserve.
    fn fits_a_slot(&self) -> bool {
        self.num_cpus <= 1.0
            && self.num_gpus == 0.0
            && self.gpu_id.is_none()
            && self.memory.is_none()
    }
}

impl NodeInfo {
    /// The task slots of its warm worker: one per whole CPU (at least one).
    fn slots(&self) -> usize {
        (self.cpu.floor() as usize).max(1)
    }

    fn fits(&self, request: &Request) -> bool {
        self.alive
            && self.cpu >= request.num_cpus
            && self.gpu >= request.num_gpus
            && request.memory.is_none_or(|m| self.memory >= m)
            && request
                .gpu_id
                .is_none_or(|g| f64::from(g) < self.gpu.max(1.0))
            && request.node_id.as_ref().is_none_or(|n| *n == self.node_id)
    }
}

impl RayExecutor {
    /// An executor with these options; nothing starts before
    /// [`ExecutorBackend::initialize`] (or the first submit).
    pub fn new(options: RayOptions) -> Self {
        RayExecutor {
            shared: Arc::new(Shared {
                options,
                tasks: HandleTable::new(ExecutorType::Ray),
                lifecycle: Mutex::new(Lifecycle::default()),
                writer: Mutex::new(None),
                cluster: Mutex::new(None),
                membership: Mutex::new(None),
                replies: Mutex::new(HashMap::new()),
                next_request: AtomicU64::new(0),
                ready: Mutex::new(None),
                stderr_tail: Mutex::new(VecDeque::new()),
                stopping: AtomicBool::new(false),
                pool: Mutex::new(Pool::default()),
                pool_changed: Condvar::new(),
                session_calls: Mutex::new(HashMap::new()),
                lost_workers: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The options this executor was made with.
    pub fn options(&self) -> &RayOptions {
        &self.shared.options
    }

    /// The process id of the sidecar, while it runs.
    pub fn sidecar_pid(&self) -> Option<u32> {
        lock(&self.shared.lifecycle)
            .child
            .as_ref()
            .map(|child| child.id())
    }

    /// Opens a Python session on the cluster, in the warm worker of the node
    /// `node_id` names (default: the least loaded node), under `config`
    /// (which names its tier and limits). See [`RaySession`].
    pub fn open_session(
        &self,
        config: SandboxConfig,
        node_id: Option<&str>,
    ) -> Result<RaySession, TaskError> {
        let node_id = node_id.map(check_node_id).transpose()?;
        let cluster = self.ensure_running()?;
        let request = Request {
            num_cpus: 1.0,
            memory: None,
            num_gpus: 0.0,
            node_id,
            gpu_id: None,
        };
        if let Some(error) = self.check_feasible(&cluster, &request)? {
            return Err(error);
        }
        let nodes = self.shared.nodes(&cluster, false)?;
        let worker = {
            let mut pool = lock(&self.shared.pool);
            let node = nodes
                .iter()
                .filter(|node| node.fits(&request))
                .min_by(|a, b| pool.load(a).total_cmp(&pool.load(b)))
                .ok_or_else(|| TaskError::NodeFailed {
                    message: "no alive node can hold the session".into(),
                })?;
            let worker = pool.worker_for(node);
            (worker, node.node_id.clone(), node.slots())
        };
        RaySession::open(self.shared.clone(), worker, &config)
    }

    /// Starts the sidecar (and a head, if no address was given) unless it runs.
    fn ensure_running(&self) -> Result<ClusterInfo, TaskError> {
        let mut lifecycle = lock(&self.shared.lifecycle);
        match lifecycle.phase {
            Phase::Running => {
                return lock(&self.shared.cluster)
                    .clone()
                    .ok_or_else(|| TaskError::internal("the Ray executor lost its cluster"))
            }
            Phase::ShutDown => return Err(shut_down()),
            Phase::New => {}
        }
        let result = self.start(&mut lifecycle);
        if result.is_err() {
            // A half-started executor cleans up after itself; initialize
            // may be called again.
            stop_child(&mut lifecycle);
            for thread in lifecycle.threads.drain(..) {
                let _ = thread.join();
            }
            if let Some(head) = lifecycle.head.take() {
                head.stop();
            }
            *lock(&self.shared.writer) = None;
        }
        result
    }

    fn start(&self, lifecycle: &mut Lifecycle) -> Result<ClusterInfo, TaskError> {
        let options = &self.shared.options;
        let binary = match &options.binary {
            Some(path) => path.clone(),
            None => std::env::current_exe().map_err(|e| {
                TaskError::unavailable(format!(
                    "can't find this program's path to run on the Ray nodes ({e}); set RayOptions::binary"
                ))
            })?,
        };
        let (address, dashboard) = match options.gcs_address() {
            Some(address) => (
                address,
                options
                    .dashboard_url()
                    .expect("an address gives a dashboard URL"),
            ),
            None => {
                let head = StartedHead::start(options)?;
                lifecycle.head = Some(head);
                (
                    format!("127.0.0.1:{}", options.head_port),
                    options.dashboard.clone().unwrap_or_else(|| {
                        format!("http://127.0.0.1:{}", options.head_dashboard_port)
                    }),
                )
            }
        };
        let cluster = ClusterInfo {
            address,
            dashboard,
            binary,
        };
        self.spawn_sidecar(lifecycle, &cluster)?;
        *lock(&self.shared.cluster) = Some(cluster.clone());
        lifecycle.phase = Phase::Running;
        let watchdog = {
            let shared = self.shared.clone();
            std::thread::Builder::new()
                .name("lattice-ray-watch".into())
                .spawn(move || shared.watch())
                .map_err(|e| TaskError::internal(format!("can't start a thread: {e}")))?
        };
        lifecycle.threads.push(watchdog);
        let dispatcher = {
            let shared = self.shared.clone();
            let cluster = cluster.clone();
            std::thread::Builder::new()
                .name("lattice-ray-dispatch".into())
                .spawn(move || shared.dispatch(&cluster))
                .map_err(|e| TaskError::internal(format!("can't start a thread: {e}")))?
        };
        lifecycle.threads.push(dispatcher);
        Ok(cluster)
    }

    fn spawn_sidecar(
        &self,
        lifecycle: &mut Lifecycle,
        cluster: &ClusterInfo,
    ) -> Result<(), TaskError> {
        let options = &self.shared.options;
        let python = &options.python;
        let config = json!({
            "address": cluster.address,
            "binary": cluster.binary,
        });
        // From a private file rather than `-c`, so that `ps` shows a name
        // instead of the whole source.
        let script = write_sidecar()?;
        let mut command = Command::new(python);
        command
            .arg("-u")
            .arg(script.path())
            .arg(config.to_string())
            .env("RAY_USAGE_STATS_ENABLED", "0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // Its own process group, so shutdown can end it and whatever it
        // spawned without touching ours.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = command.spawn().map_err(|e| {
            TaskError::unavailable(format!(
                "can't start `{}` for the Ray sidecar ({e}); install Python with `pip install \"ray[default]\"`, \
                 or point the executor at a Python that has ray (RayOptions::python, --ray-python PATH)",
                python.display()
            ))
        })?;
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        *lock(&self.shared.writer) = child.stdin.take();
        lifecycle.child = Some(child);
        lifecycle.script = Some(script);

        let (ready_tx, ready_rx) = mpsc::channel();
        *lock(&self.shared.ready) = Some(ready_tx);
        self.shared.tasks.reset();
        *lock(&self.shared.pool) = Pool::default();
        lock(&self.shared.lost_workers).clear();
        self.shared.stopping.store(false, Ordering::SeqCst);
        let reader = {
            let shared = self.shared.clone();
            std::thread::Builder::new()
                .name("lattice-ray-events".into())
                .spawn(move || shared.read_events(stdout))
        };
        let errors = {
            let shared = self.shared.clone();
            std::thread::Builder::new()
                .name("lattice-ray-stderr".into())
                .spawn(move || shared.read_stderr(stderr))
        };
        for thread in [reader, errors] {
            lifecycle.threads.push(
                thread.map_err(|e| TaskError::internal(format!("can't start a thread: {e}")))?,
            );
        }

        let answer = ready_rx
            .recv_timeout(options.connect_timeout)
            .unwrap_or_else(|_| {
                Err(format!(
                    "no answer from the sidecar within {} s",
                    options.connect_timeout.as_secs()
                ))
            });
        match answer {
            Ok(_) => Ok(()),
            Err(message) => {
                let detail = format!("{message}{}", self.shared.stderr_excerpt());
                Err(if message.starts_with("no_ray:") {
                    TaskError::unavailable(format!(
                        "the Python at `{p}` can't import ray ({detail}); install it there with \
                         `{p} -m pip install \"ray[default]\"`, or point the executor at a Python that has ray \
                         (RayOptions::python, --ray-python PATH, e.g. a venv's bin/python)",
                        p = python.display()
                    ))
                } else {
                    TaskError::unavailable(format!(
                        "can't connect to the Ray cluster at {} ({detail}); is it running? \
                         (`ray start --head`, or `scripts/ray-cluster.sh start` for the test cluster)",
                        cluster.address
                    ))
                })
            }
        }
    }

    fn sandbox_config(&self) -> SandboxConfig {
        self.shared
            .options
            .sandbox
            .clone()
            .unwrap_or_else(get_sandbox_config)
    }

    /// The task's JSON for `lattice-wasm exec` and its Ray request.
    fn prepare(&self, task: &TaskSubmission) -> Result<(Prepared, Request), TaskError> {
        let node_id = task.node_id.as_deref().map(check_node_id).transpose()?;
        // Resolved here, at submit, and sent whole: the node runs the task
        // under exactly this configuration.
        let config = self.sandbox_config().with_overrides(&task.sandbox);
        let mut spec = TaskSpec::from_submission(task)?;
        // Placement is Ray's; on the node the task runs as a plain local
        // task, its settings all in the configuration.
        spec.resources = None;
        spec.node_id = None;
        spec.tier = None;
        spec.timeout_s = None;
        spec.max_memory_mb = None;
        spec.max_cpu_time_s = None;
        spec.allowed_imports = None;
        spec.network = None;
        spec.mounts = None;
        let encode = |what: &str, e: serde_json::Error| {
            TaskError::internal(format!("can't encode the {what}: {e}"))
        };
        let prepared = Prepared {
            task: serde_json::to_string(&spec).map_err(|e| encode("task", e))?,
            config: serde_json::to_string(&config).map_err(|e| encode("configuration", e))?,
            level: config.tier,
        };

        let default_cpus = self.shared.options.default_cpus;
        let request = Request {
            num_cpus: task.resources.cpu.unwrap_or(default_cpus),
            memory: task.resources.cpu_mem.filter(|&m| m > 0),
            num_gpus: task
                .resources
                .gpu
                .unwrap_or(if task.gpu_id.is_some() { 1.0 } else { 0.0 }),
            node_id,
            gpu_id: task.gpu_id,
        };
        Ok((prepared, request))
    }

    /// Checks the request against the cluster: InvalidTask if no alive
    /// node could ever run it; Ok(Some(error)) if it names a dead node.
    fn check_feasible(
        &self,
        cluster: &ClusterInfo,
        request: &Request,
    ) -> Result<Option<TaskError>, TaskError> {
        let mut nodes = self.shared.nodes(cluster, false)?;
        let missing_node = |nodes: &[NodeInfo]| {
            request
                .node_id
                .as_ref()
                .is_some_and(|id| !nodes.iter().any(|n| n.node_id == *id))
        };
        if missing_node(&nodes) || !nodes.iter().any(|n| n.fits(request)) {
            // The cache may predate a node that joined: look again.
            nodes = self.shared.nodes(cluster, true)?;
        }
        if let Some(id) = &request.node_id {
            match nodes.iter().find(|n| n.node_id == *id) {
                None => {
                    return Err(TaskError::invalid(format!(
                        "node {id} is not part of the Ray cluster at {}",
                        cluster.address
                    )))
                }
                Some(node) if !node.alive => {
                    return Ok(Some(TaskError::NodeFailed {
                        message: format!("node {id} ({}) is dead", node.node_ip),
                    }))
                }
                Some(_) => {}
            }
        }
        if nodes.iter().any(|n| n.fits(request)) {
            return Ok(None);
        }
        Err(TaskError::invalid(format!(
            "no alive node of the Ray cluster can run this task: it asks for {}; the nodes have {}",
            describe_request(request),
            describe_nodes(&nodes, request.node_id.as_deref())
        )))
    }

    fn send(&self, message: &Op<'_>) -> Result<(), TaskError> {
        self.shared.send(message)
    }
}

impl Shared {
    fn send(&self, message: &Op<'_>) -> Result<(), TaskError> {
        self.send_line(&encode(message)?)
    }

    fn send_line(&self, line: &str) -> Result<(), TaskError> {
        let mut writer = lock(&self.writer);
        let Some(stdin) = writer.as_mut() else {
            return Err(TaskError::unavailable("the Ray sidecar is not running"));
        };
        stdin
            .write_all(line.as_bytes())
            .and_then(|()| stdin.flush())
            .map_err(|e| TaskError::unavailable(format!("the Ray sidecar is gone ({e})")))
    }

    fn stderr_excerpt(&self) -> String {
        let tail = lock(&self.stderr_tail);
        if tail.is_empty() {
            return String::new();
        }
        let bytes: Vec<u8> = tail.iter().copied().collect();
        format!(
            "; sidecar stderr: {}",
            String::from_utf8_lossy(&bytes).trim()
        )
    }

    /// Reads the sidecar's events until it exits, then ends every task
    /// still in flight.
    fn read_events(self: Arc<Self>, stdout: impl Read) {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // Lines of another shape are not the protocol's: skipped.
            let Ok(event) = serde_json::from_str::<Event>(&line) else {
                continue;
            };
            self.handle_event(event);
        }
        // The sidecar is gone: no task can end any other way now.
        let error = if self.stopping.load(Ordering::SeqCst) {
            TaskError::Cancelled
        } else {
            TaskError::internal(format!(
                "the Ray sidecar exited unexpectedly; the task's fate on the cluster is unknown{}",
                self.stderr_excerpt()
            ))
        };
        if let Some(ready) = lock(&self.ready).take() {
            let _ = ready.send(Err("the sidecar exited before it was ready".into()));
        }
        *lock(&self.writer) = None;
        self.pool_changed.notify_all();
        let slots = self.tasks.close(TaskError::unavailable(
            "the Ray sidecar has exited; make a new executor",
        ));
        for slot in slots {
            slot.fail(error.clone(), None);
        }
        lock(&self.replies).clear();
        for (_, (_, reply_tx)) in lock(&self.session_calls).drain() {
            let _ = reply_tx.send(Err(error.clone()));
        }
    }

    fn handle_event(&self, event: Event) {
        match event {
            Event::Ready {} => {
                if let Some(ready) = lock(&self.ready).take() {
                    let _ = ready.send(Ok(()));
                }
            }
            Event::Fatal { kind, message } => {
                if let Some(ready) = lock(&self.ready).take() {
                    let _ = ready.send(Err(format!("{kind}: {message}")));
                }
            }
            Event::Reply {
                req,
                available,
                error,
            } => {
                if let Some(reply) = lock(&self.replies).remove(&req) {
                    let _ = reply.send(match error {
                        Some(error) => Err(error),
                        None => Ok(available),
                    });
                }
            }
            Event::Done {
                id,
                rc,
                out,
                err,
                node,
            } => {
                if let Some(slot) = self.tasks.by_id(id) {
                    self.finish_done(&slot, node, rc, &out, &err);
                }
            }
            Event::Failed {
                id,
                kind,
                type_name,
                message,
            } => {
                if let Some(slot) = self.tasks.by_id(id) {
                    slot.fail(failure(kind, &type_name, &message, self), None);
                }
            }
            Event::Outcome { id, outcome } => {
                let node = {
                    // Found by the id, not the slot: a task may have been
                    // released (after a late cancel, say) before its outcome.
                    let mut pool = lock(&self.pool);
                    let node = pool.workers.values_mut().find_map(|worker| {
                        worker.in_flight.remove(&id).then(|| worker.node.clone())
                    });
                    pool.generation += 1;
                    node
                };
                self.pool_changed.notify_all();
                if let Some(slot) = self.tasks.by_id(id) {
                    slot.finish(node, parse_outcome(&outcome));
                }
            }
            Event::Lost {
                worker,
                kind,
                message,
            } => self.worker_lost(worker, kind, &message),
            Event::SessionReply { req, reply } => {
                if let Some((_, reply_tx)) = lock(&self.session_calls).remove(&req) {
                    let _ = reply_tx.send(Ok(reply));
                }
            }
        }
    }

    /// A warm worker is gone: each task it had ends as its loss says, or,
    /// after a crash on a live node, is sent again once.
    fn worker_lost(&self, worker: u64, kind: FailureKind, message: &str) {
        let mut pool = lock(&self.pool);
        let Some(lost) = pool.workers.remove(&worker) else {
            return;
        };
        if pool.by_node.get(&lost.node) == Some(&worker) {
            pool.by_node.remove(&lost.node);
        }
        let mut failed = Vec::new();
        for id in lost.in_flight {
            let Some(slot) = self.tasks.by_id(id) else {
                continue;
            };
            *lock(&slot.worker) = None;
            let retry = kind == FailureKind::Crashed && !slot.cancel_requested();
            if retry && !slot.retried.swap(true, Ordering::SeqCst) {
                pool.queue.push_front((id, slot));
            } else {
                failed.push(slot);
            }
        }
        pool.generation += 1;
        drop(pool);
        self.pool_changed.notify_all();
        // Its sessions are gone with it (their state can't be sent again),
        // and so are the tasks that won't be retried, with one error but
        // for a crash, which a session meets once and a task twice.
        let error = match kind {
            FailureKind::Crashed => None,
            _ => Some(failure(kind, "ActorDiedError", message, self)),
        };
        let session_error = error.clone().unwrap_or_else(|| {
            TaskError::internal(format!(
                "the lattice worker holding the session on node {} died: {message}",
                lost.node
            ))
        });
        lock(&self.lost_workers).insert(worker, session_error.clone());
        lock(&self.session_calls).retain(|_, (on, reply_tx)| {
            let keep = *on != worker;
            if !keep {
                let _ = reply_tx.send(Err(session_error.clone()));
            }
            keep
        });
        let node = Some(lost.node);
        for slot in failed {
            let error = error.clone().unwrap_or_else(|| {
                TaskError::internal(format!(
                    "the lattice worker on node {} died twice while it ran the task: {message}",
                    node.as_deref().unwrap_or("?")
                ))
            });
            slot.fail(error, node.clone());
        }
    }

    /// Cancels a warm task: still queued, it ends here; sent, its worker
    /// cancels it (and only it).
    fn cancel_warm(&self, id: u64, slot: &Slot) -> Result<(), TaskError> {
        let pool = lock(&self.pool);
        let Some(worker) = lock(&slot.worker).and_then(|w| pool.workers.get(&w).map(|x| (w, x)))
        else {
            // Not sent (or its worker is lost and it waits to be sent
            // again): the dispatcher skips a task that has ended.
            drop(pool);
            slot.fail(TaskError::Cancelled, None);
            return Ok(());
        };
        let (worker, state) = worker;
        let op = Op::Send {
            worker,
            node: &state.node,
            slots: state.slots,
            lines: &format!("{}\n", serde_json::json!({ "cancel": id })),
        };
        let line = encode(&op)?;
        drop(pool);
        self.send_line(&line)
    }

    /// A fresh id for a request or a session.
    pub(super) fn next_id(&self) -> u64 {
        self.next_request.fetch_add(1, Ordering::SeqCst)
    }

    /// Why `worker` is gone, if it is.
    pub(super) fn worker_error(&self, worker: u64) -> Option<TaskError> {
        lock(&self.lost_workers).get(&worker).cloned()
    }

    /// Sends a session operation to its worker and waits for the reply
    /// (every operation gets one: the worker's, or its loss's, or the
    /// sidecar's).
    pub(super) fn session_request(
        &self,
        worker: u64,
        node: &str,
        slots: usize,
        request: &SessionRequest,
    ) -> Result<Value, TaskError> {
        if let Some(error) = self.worker_error(worker) {
            return Err(error);
        }
        let (reply_tx, reply_rx) = mpsc::channel();
        lock(&self.session_calls).insert(request.req, (worker, reply_tx));
        let mut lines = serde_json::to_string(request)
            .map_err(|e| TaskError::internal(format!("can't encode a session request: {e}")))?;
        lines.push('\n');
        let sent = encode(&Op::Send {
            worker,
            node,
            slots,
            lines: &lines,
        })
        .and_then(|line| self.send_line(&line));
        // The worker may have been lost meanwhile (its event came first).
        let lost = self.worker_error(worker);
        if let Some(error) = sent.err().or(lost) {
            lock(&self.session_calls).remove(&request.req);
            return Err(error);
        }
        reply_rx.recv().unwrap_or_else(|_| {
            Err(TaskError::internal(
                "the Ray executor stopped before the session answered",
            ))
        })
    }

    /// The warm path's sender: whenever the pool changes, sends each node's
    /// worker what it has room for, as one chunk per worker.
    fn dispatch(&self, cluster: &ClusterInfo) {
        let mut seen = u64::MAX;
        loop {
            {
                let mut pool = lock(&self.pool);
                loop {
                    if self.stopping.load(Ordering::SeqCst) || lock(&self.writer).is_none() {
                        return;
                    }
                    // Something to place, and something changed since the
                    // last try (a task queued, one ended, a worker lost);
                    // or a while passed (membership may have changed).
                    if !pool.queue.is_empty() && pool.generation != seen {
                        break;
                    }
                    let (next, waited) = self
                        .pool_changed
                        .wait_timeout(pool, Duration::from_millis(500))
                        .unwrap_or_else(|e| e.into_inner());
                    pool = next;
                    if waited.timed_out() {
                        seen = u64::MAX;
                    }
                }
            }
            let nodes = match self.nodes(cluster, false) {
                Ok(nodes) => nodes,
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
            };
            let chunks = {
                let mut pool = lock(&self.pool);
                seen = pool.generation;
                pool.place(&nodes)
            };
            for chunk in chunks {
                let op = Op::Send {
                    worker: chunk.worker,
                    node: &chunk.node,
                    slots: chunk.slots,
                    lines: &chunk.lines,
                };
                // A sidecar that is gone ends every task (read_events).
                let _ = encode(&op).and_then(|line| self.send_line(&line));
            }
        }
    }

    /// A Ray task returned: the exec's result line is the outcome.
    fn finish_done(&self, slot: &Slot, node: Option<String>, rc: i64, out: &str, err: &str) {
        let node = node.filter(|n| !n.is_empty());
        if slot.cancel_requested() {
            slot.fail(TaskError::Cancelled, node);
            return;
        }
        let last_line = out.lines().rev().find(|l| !l.trim().is_empty());
        match last_line.map(parse_outcome) {
            Some(Ok(outcome)) => slot.finish(node, Ok(outcome)),
            _ => {
                let how = if rc < 0 {
                    format!("was killed by signal {}", -rc)
                } else {
                    format!("exited with status {rc}")
                };
                slot.fail(
                    TaskError::internal(format!(
                        "`lattice-wasm exec` on node {} {how} without a result: {}",
                        node.as_deref().unwrap_or("?"),
                        err.trim()
                    )),
                    node,
                );
            }
        }
    }

    fn read_stderr(self: Arc<Self>, mut stderr: impl Read) {
        let mut buffer = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buffer) {
            if n == 0 {
                break;
            }
            let mut tail = lock(&self.stderr_tail);
            tail.extend(&buffer[..n]);
            let excess = tail.len().saturating_sub(4096);
            tail.drain(..excess);
        }
    }

    /// The dashboard's node list, from the cache unless `fresh` or stale.
    fn nodes(&self, cluster: &ClusterInfo, fresh: bool) -> Result<Vec<NodeInfo>, TaskError> {
        if !fresh {
            if let Some((at, nodes)) = &*lock(&self.membership) {
                if at.elapsed() < MEMBERSHIP_TTL {
                    return Ok(nodes.clone());
                }
            }
        }
        let nodes = fetch_nodes(&cluster.dashboard)?;
        *lock(&self.membership) = Some((Instant::now(), nodes.clone()));
        Ok(nodes)
    }

    /// Every WATCH_PERIOD: tasks no alive node can run any more (their
    /// node died while they waited, or the node of the warm worker they
    /// were sent to died unreported) end as NodeFailed instead of pending
    /// forever; a cancel Ray never answered ends as Cancelled.
    fn watch(self: Arc<Self>) {
        let tick = Duration::from_millis(200);
        let mut last_check = Instant::now();
        loop {
            std::thread::sleep(tick);
            if self.stopping.load(Ordering::SeqCst) || lock(&self.writer).is_none() {
                return;
            }
            if last_check.elapsed() < WATCH_PERIOD {
                continue;
            }
            last_check = Instant::now();
            let pending: Vec<(u64, Arc<Slot>)> = self
                .tasks
                .entries()
                .into_iter()
                // Only tasks that have waited a while: the check costs an
                // HTTP request, and short tasks must not pay for it.
                .filter(|(_, slot)| {
                    !slot.completion.is_done() && slot.submitted.elapsed() > WATCH_PERIOD
                })
                .collect();
            if pending.is_empty() {
                continue;
            }
            for (_, slot) in &pending {
                if lock(&slot.cancel_requested).is_some_and(|at| at.elapsed() > CANCEL_DEADLINE) {
                    slot.fail(TaskError::Cancelled, None);
                }
            }
            let Some(cluster) = lock(&self.cluster).clone() else {
                continue;
            };
            let Ok(nodes) = self.nodes(&cluster, true) else {
                continue;
            };
            for (id, slot) in pending {
                // A warm task sent to a worker runs only on that worker's node.
                let sent_to = {
                    let pool = lock(&self.pool);
                    let worker = *lock(&slot.worker);
                    worker.and_then(|w| pool.workers.get(&w).map(|w| w.node.clone()))
                };
                let runnable = match &sent_to {
                    Some(node) => nodes.iter().any(|n| n.alive && n.node_id == *node),
                    None => nodes.iter().any(|n| n.fits(&slot.request)),
                };
                if slot.completion.is_done() || runnable {
                    continue;
                }
                slot.fail(
                    TaskError::NodeFailed {
                        message: format!(
                            "no alive node can run the task any more (it asks for {}; the nodes have {})",
                            describe_request(&slot.request),
                            describe_nodes(&nodes, slot.request.node_id.as_deref())
                        ),
                    },
                    sent_to,
                );
                if slot.warm.is_none() {
                    let _ = self.send(&Op::Cancel { id });
                }
            }
        }
    }
}

impl ExecutorBackend for RayExecutor {
    fn executor_type(&self) -> ExecutorType {
        ExecutorType::Ray
    }

    fn initialize(&self) -> Result<(), TaskError> {
        self.ensure_running().map(|_| ())
    }

    fn submit(&self, task: TaskSubmission) -> Result<TaskHandle, TaskError> {
        // Everything that can be checked without the cluster is, first: a
        // malformed task never starts anything.
        let (prepared, request) = self.prepare(&task)?;
        let cluster = self.ensure_running()?;
        let dead_node = self.check_feasible(&cluster, &request)?;
        let warm = self.shared.options.warm_workers && request.fits_a_slot();
        let slot = Arc::new(Slot {
            id: task.id.clone(),
            tier: prepared.level,
            request: request.clone(),
            completion: self.shared.tasks.new_completion(),
            submitted: Instant::now(),
            cancel_requested: Mutex::new(None),
            warm: warm.then(|| prepared.clone()),
            worker: Mutex::new(None),
            retried: AtomicBool::new(false),
        });
        let handle = self.shared.tasks.insert(slot.clone())?;
        let handle_id = handle.handle_id;
        if let Some(error) = dead_node {
            // Affinity to a dead node fails at once, without a round trip.
            slot.fail(error, request.node_id.clone());
            return Ok(handle);
        }
        if warm {
            let mut pool = lock(&self.shared.pool);
            pool.queue.push_back((handle_id, slot));
            pool.generation += 1;
            drop(pool);
            self.shared.pool_changed.notify_all();
            return Ok(handle);
        }
        let cuda = match (task.gpu_id, request.num_gpus > 0.0) {
            (Some(gpu), _) => Some(gpu.to_string()),
            // Ray's own assignment stands.
            (None, true) => None,
            // Ray leaves CUDA_VISIBLE_DEVICES unset without GPUs: every GPU
            // would be visible.
            (None, false) => Some(String::new()),
        };
        let message = Op::Submit {
            id: handle_id,
            task: &prepared.task,
            config: &prepared.config,
            num_cpus: request.num_cpus,
            memory: request.memory,
            num_gpus: request.num_gpus,
            node_id: request.node_id.as_deref(),
            cuda,
        };
        if let Err(error) = self.send(&message) {
            // The reader ends every task once it sees the sidecar gone; this
            // one was never sent.
            slot.fail(error, None);
        }
        Ok(handle)
    }

    fn get_result(&self, handle: &TaskHandle) -> TaskOutcome {
        self.shared.tasks.get_result(handle)
    }

    fn get_result_async(&self, handle: &TaskHandle) -> BoxFuture<TaskOutcome> {
        self.shared.tasks.get_result_async(handle)
    }

    fn wait(
        &self,
        handles: &[TaskHandle],
        timeout: Duration,
    ) -> (Vec<TaskHandle>, Vec<TaskHandle>) {
        self.shared.tasks.wait(handles, timeout)
    }

    fn cancel(&self, handle: &TaskHandle) -> bool {
        let Some(slot) = self.shared.tasks.get(handle) else {
            return false;
        };
        if slot.completion.is_done() {
            return false;
        }
        lock(&slot.cancel_requested).get_or_insert_with(Instant::now);
        let sent = if slot.warm.is_some() {
            self.shared.cancel_warm(handle.handle_id, &slot)
        } else {
            self.send(&Op::Cancel {
                id: handle.handle_id,
            })
        };
        if sent.is_err() {
            slot.fail(TaskError::Cancelled, None);
        }
        true
    }

    fn shutdown(&self) -> Result<(), TaskError> {
        let mut lifecycle = lock(&self.shared.lifecycle);
        if lifecycle.phase == Phase::ShutDown {
            return Ok(());
        }
        lifecycle.phase = Phase::ShutDown;
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.pool_changed.notify_all();
        for (_, slot) in self.shared.tasks.entries() {
            if !slot.completion.is_done() {
                lock(&slot.cancel_requested).get_or_insert_with(Instant::now);
            }
        }
        // The sidecar force-cancels what is in flight, waits for the
        // endings (reported as Cancelled) and disconnects; closing its
        // stdin is the signal.
        let _ = self.send(&Op::Shutdown);
        *lock(&self.shared.writer) = None;
        if let Some(child) = lifecycle.child.as_mut() {
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        stop_child(&mut lifecycle);
        for thread in lifecycle.threads.drain(..) {
            let _ = thread.join();
        }
        // Whatever got no ending (the sidecar never started) is cancelled.
        for slot in self.shared.tasks.close(shut_down()) {
            slot.fail(TaskError::Cancelled, None);
        }
        if let Some(head) = lifecycle.head.take() {
            head.stop();
        }
        Ok(())
    }

    fn get_available_resources(&self) -> Result<ClusterResources, TaskError> {
        let cluster = self.ensure_running()?;
        let nodes = self.shared.nodes(&cluster, true)?;
        let request = self.shared.next_request.fetch_add(1, Ordering::SeqCst);
        let (reply_tx, reply_rx) = mpsc::channel();
        lock(&self.shared.replies).insert(request, reply_tx);
        self.send(&Op::Available { req: request })?;
        let reply = reply_rx
            .recv_timeout(Duration::from_secs(30))
            .map_err(|_| {
                lock(&self.shared.replies).remove(&request);
                TaskError::internal("the Ray sidecar did not report the available resources")
            })?;
        let available = reply.map_err(|error| {
            TaskError::internal(format!(
                "Ray could not report the available resources: {error}"
            ))
        })?;
        Ok(ClusterResources {
            nodes: nodes
                .into_iter()
                .filter(|node| node.alive)
                .map(|node| {
                    let free = available.get(&node.node_id);
                    let amount = |key: &str| {
                        free.and_then(|free| free.get(key))
                            .and_then(Value::as_f64)
                            .unwrap_or(0.0)
                    };
                    NodeResources {
                        cpu_available: amount("CPU"),
                        memory_available: amount("memory") as u64,
                        gpu_available: amount("GPU"),
                        node_id: node.node_id,
                        node_ip: node.node_ip,
                        alive: node.alive,
                        cpu: node.cpu,
                        memory: node.memory,
                        gpu: node.gpu,
                    }
                })
                .collect(),
        })
    }

    fn release(&self, handle: &TaskHandle) {
        self.shared.tasks.release(handle);
    }
}

impl Drop for RayExecutor {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// Ends the sidecar and anything in its process group, and reaps it.
fn stop_child(lifecycle: &mut Lifecycle) {
    if let Some(mut child) = lifecycle.child.take() {
        // The whole group, even if the sidecar itself has exited: anything
        // it left behind would hold its stdout open. (A group id is not
        // reused while any member lives, so this reaches only its group.)
        // SAFETY: kill(2) on the sidecar's own process group (it was
        // started as its leader).
        unsafe {
            libc::kill(-(child.id() as i32), libc::SIGKILL);
        }
        let _ = child.wait();
    }
    lifecycle.script = None;
}

/// A sidecar request as its line.
fn encode(message: &Op<'_>) -> Result<String, TaskError> {
    let mut line = serde_json::to_string(message)
        .map_err(|e| TaskError::internal(format!("a sidecar request can't be encoded: {e}")))?;
    line.push('\n');
    Ok(line)
}

impl Pool {
    /// Warm tasks in flight on `node`.
    fn in_flight(&self, node: &NodeInfo) -> usize {
        self.by_node
            .get(&node.node_id)
            .and_then(|w| self.workers.get(w))
            .map_or(0, |w| w.in_flight.len())
    }

    /// Tasks in flight per slot of `node`.
    fn load(&self, node: &NodeInfo) -> f64 {
        self.in_flight(node) as f64 / node.slots() as f64
    }

    /// The warm worker of `node`, made (named) if it has none; the sidecar
    /// starts it when it is first sent something.
    fn worker_for(&mut self, node: &NodeInfo) -> u64 {
        if let Some(&worker) = self.by_node.get(&node.node_id) {
            return worker;
        }
        self.next_worker += 1;
        let worker = self.next_worker;
        self.by_node.insert(node.node_id.clone(), worker);
        self.workers.insert(
            worker,
            Worker {
                node: node.node_id.clone(),
                slots: node.slots(),
                in_flight: HashSet::new(),
            },
        );
        worker
    }

    /// Takes the queued tasks that a worker has room for, in order, and
    /// returns them as one chunk per worker; a task whose node has no room
    /// (or is not alive) stays queued.
    fn place(&mut self, nodes: &[NodeInfo]) -> Vec<Chunk> {
        let mut chunks: HashMap<u64, Chunk> = HashMap::new();
        let mut kept = VecDeque::new();
        // A node takes more only once it is down to half its depth, and
        // then up to all of it: chunks of many tasks, not one task sent
        // per result back (each send is a Ray call, measured to cost the
        // sidecar and the actor more CPU than a trivial task itself).
        let refill: HashSet<&str> = nodes
            .iter()
            .filter(|node| self.in_flight(node) <= node.slots() * WARM_DEPTH_PER_CPU / 2)
            .map(|node| node.node_id.as_str())
            .collect();
        while let Some((id, slot)) = self.queue.pop_front() {
            if slot.completion.is_done() {
                continue; // cancelled while it waited
            }
            let load = |pool: &Pool, node: &NodeInfo| {
                let room = refill.contains(node.node_id.as_str())
                    && pool.in_flight(node) < node.slots() * WARM_DEPTH_PER_CPU;
                room.then(|| pool.load(node))
            };
            let target = nodes
                .iter()
                .filter(|node| node.fits(&slot.request))
                .filter_map(|node| load(self, node).map(|load| (load, node)))
                .min_by(|a, b| a.0.total_cmp(&b.0))
                .map(|(_, node)| node);
            let Some(node) = target else {
                kept.push_back((id, slot));
                if nodes
                    .iter()
                    .filter(|node| node.alive)
                    .all(|node| load(self, node).is_none())
                {
                    break; // every node is full: the rest waits too
                }
                continue;
            };
            let worker = self.worker_for(node);
            let state = self.workers.get_mut(&worker).expect("just found or made");
            state.in_flight.insert(id);
            *lock(&slot.worker) = Some(worker);
            let chunk = chunks.entry(worker).or_insert_with(|| Chunk {
                worker,
                node: state.node.clone(),
                slots: state.slots,
                lines: String::new(),
            });
            chunk.lines.push_str(&slot.request_line(id));
        }
        kept.extend(self.queue.drain(..));
        self.queue = kept;
        chunks.into_values().collect()
    }
}

/// The sidecar's source in a private (0600) temp file.
fn write_sidecar() -> Result<tempfile::NamedTempFile, TaskError> {
    let mut file = tempfile::Builder::new()
        .prefix("lattice-ray-sidecar-")
        .suffix(".py")
        .tempfile()
        .map_err(|e| TaskError::internal(format!("can't write the Ray sidecar: {e}")))?;
    file.write_all(SIDECAR_SOURCE.as_bytes())
        .and_then(|()| file.flush())
        .map_err(|e| TaskError::internal(format!("can't write the Ray sidecar: {e}")))?;
    Ok(file)
}

/// A Ray node id: 56 hex digits (lowercased).
fn check_node_id(id: &str) -> Result<String, TaskError> {
    if id.len() == 56 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(id.to_ascii_lowercase())
    } else {
        Err(TaskError::invalid(format!(
            "'{id}' is not a Ray node id (56 hex digits, as `resources --executor ray` lists them)"
        )))
    }
}

/// The error of a task that Ray ended with an exception (or whose warm
/// worker it lost).
fn failure(kind: FailureKind, type_name: &str, message: &str, shared: &Shared) -> TaskError {
    match kind {
        FailureKind::Cancelled => TaskError::Cancelled,
        FailureKind::NodeFailed => TaskError::NodeFailed {
            message: format!("{type_name}: {message}"),
        },
        FailureKind::MemoryLimit => TaskError::MemoryLimit {
            message: format!("Ray's memory monitor killed the task's worker: {message}"),
        },
        FailureKind::Unavailable => {
            let binary = lock(&shared.cluster)
                .as_ref()
                .map(|c| c.binary.display().to_string())
                .unwrap_or_default();
            TaskError::unavailable(format!(
                "can't run `{binary}` on the node ({message}); install lattice-wasm on the nodes \
                 and set its path there (RayOptions::binary)"
            ))
        }
        FailureKind::Unschedulable => {
            TaskError::invalid(format!("Ray can't schedule the task: {message}"))
        }
        FailureKind::Crashed | FailureKind::Internal => {
            TaskError::internal(format!("Ray failed the task ({type_name}): {message}"))
        }
    }
}

fn describe_request(request: &Request) -> String {
    let mut parts = vec![format!("{} CPU", request.num_cpus)];
    if request.num_gpus > 0.0 {
        parts.push(format!("{} GPU", request.num_gpus));
    }
    if let Some(gpu) = request.gpu_id {
        parts.push(format!("GPU #{gpu}"));
    }
    if let Some(memory) = request.memory {
        parts.push(format!("{memory} bytes of memory"));
    }
    if let Some(node) = &request.node_id {
        parts.push(format!("node {node}"));
    }
    parts.join(", ")
}

fn describe_nodes(nodes: &[NodeInfo], only: Option<&str>) -> String {
    let listed: Vec<String> = nodes
        .iter()
        .filter(|n| n.alive && only.is_none_or(|id| id == n.node_id))
        .map(|n| {
            format!(
                "{} ({}): {} CPU, {} GPU, {} bytes",
                &n.node_id[..n.node_id.len().min(8)],
                n.node_ip,
                n.cpu,
                n.gpu,
                n.memory
            )
        })
        .collect();
    if listed.is_empty() {
        "no alive node".into()
    } else {
        listed.join("; ")
    }
}

pub(super) fn tail(text: &str, max: usize) -> &str {
    let text = text.trim();
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

fn shut_down() -> TaskError {
    TaskError::invalid("the executor is shut down")
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_must_be_56_hex_digits() {
        let good = "0fa5419e082f6b07e0c07755b8e30cba794f9622ecc86ec5a8c4bfef";
        assert_eq!(check_node_id(good).unwrap(), good);
        assert_eq!(check_node_id(&good.to_uppercase()).unwrap(), good);
        for bad in [
            "",
            "local",
            &good[1..],
            &format!("{good}0"),
            &good.replace('0', "g"),
        ] {
            assert_eq!(
                check_node_id(bad).unwrap_err().kind(),
                crate::task::ErrorKind::InvalidTask
            );
        }
    }

    #[test]
    fn a_request_fits_only_nodes_that_have_enough() {
        let node = NodeInfo {
            node_id: "a".into(),
            node_ip: "127.0.0.2".into(),
            alive: true,
            cpu: 1.0,
            memory: 2_000_000_000,
            gpu: 2.0,
        };
        let request = Request {
            num_cpus: 1.0,
            memory: None,
            num_gpus: 2.0,
            node_id: None,
            gpu_id: Some(1),
        };
        assert!(node.fits(&request));
        assert!(!node.fits(&Request {
            num_gpus: 3.0,
            ..request.clone()
        }));
        assert!(!node.fits(&Request {
            gpu_id: Some(2),
            ..request.clone()
        }));
        assert!(!node.fits(&Request {
            node_id: Some("b".into()),
            ..request.clone()
        }));
        assert!(!NodeInfo {
            alive: false,
            ..node
        }
        .fits(&request));
    }
}
