//! The docker tier: CPython in a hardened, single-use container, through
//! the Docker Engine API (bollard; the API version is negotiated).
//!
//! Each task gets a fresh container hardened: memory =
//! `max_memory_mb` (no swap), 1 CPU, at most 100 processes, a read-only
//! root filesystem with a 64 MiB tmpfs at /tmp, no network unless enabled,
//! `no-new-privileges`, every capability dropped, the nobody user, and the
//! CPU-time, file-size and open-file rlimits of the process tiers. Input goes
//! on stdin; the driver's envelope comes back on stdout after a per-task
//! mark line (attached streams have no fd 3). The container is always
//! removed: after the run, on timeout and cancel; a removal the engine
//! could not take (it was down) is retried by the next task; containers are
//! labelled with our pid, and the first docker task of a process removes
//! those of processes that died before they could. An engine that stops
//! under a running task makes that task `SandboxUnavailable`, not a crash.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use bollard::models::{ContainerCreateBody, HostConfig, ResourcesUlimits};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, EventsOptionsBuilder,
    InspectContainerOptions, KillContainerOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use super::cgroup;
use super::driver::DRIVER;
use super::host_calls::HostCalls;
use super::outcome::{command_outcome, envelope_cap, python_outcome, Ended, Ending};
use super::session::{
    channel_cap, first_frame, limit_reached, reply_frame, CallFrames, Frame, SessionRun,
    SessionState, TierSession,
};
use super::{
    reject_unsupported, CancelToken, Job, OnceOk, OutputCapture, Sandbox, SandboxConfig,
    SandboxLevel, SandboxOutput, Work,
};
use crate::task::TaskError;

/// The label every container of ours carries: the pid of the process that
/// created it; with the boot, PID namespace and start time that make that
/// pid mean one process.
const OWNER_LABEL: &str = "lattice-wasm.owner";
const BOOT_LABEL: &str = "lattice-wasm.owner-boot";
const PIDNS_LABEL: &str = "lattice-wasm.owner-pidns";
const START_LABEL: &str = "lattice-wasm.owner-start";
/// Any single Engine API call taking longer than this is an error, not a hang.
const API_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_PROCESSES: i64 = 100;
const TMPFS: &str = "rw,nosuid,nodev,size=64m,mode=1777";

pub(crate) struct DockerSandbox;

impl Sandbox for DockerSandbox {
    fn check_available(&self) -> Result<(), TaskError> {
        runtime()?.block_on(async { engine().await.map(|_| ()) })
    }

    fn check_config(&self, config: &SandboxConfig) -> Result<(), TaskError> {
        reject_unsupported(SandboxLevel::Docker, config, true, false)?;
        if config.docker_image.trim().is_empty() {
            return Err(TaskError::invalid("docker_image is empty"));
        }
        Ok(())
    }

    fn open_session(&self, config: &SandboxConfig) -> Result<Box<dyn TierSession>, TaskError> {
        let session = runtime()?.block_on(open_session(config))?;
        Ok(Box::new(session))
    }

    fn run(&self, job: &Job<'_>, cancel: &CancelToken) -> SandboxOutput {
        let ran = runtime().and_then(|runtime| runtime.block_on(run(job, cancel)));
        ran.unwrap_or_else(SandboxOutput::error)
    }
}

/// The runtime the Engine API calls run on, shared by all task threads.
fn runtime() -> Result<&'static tokio::runtime::Runtime, TaskError> {
    static RUNTIME: OnceOk<tokio::runtime::Runtime> = OnceOk::new();
    RUNTIME
        .get_or_try_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("lattice-docker")
                .enable_all()
                .build()
        })
        .map_err(|e| {
            TaskError::unavailable(format!("can't start the Docker client's runtime: {e}"))
        })
}

/// The engine, connected and version-negotiated once; on the first
/// connection, stale containers of dead processes are removed.
async fn engine() -> Result<Docker, TaskError> {
    static ENGINE: tokio::sync::OnceCell<Docker> = tokio::sync::OnceCell::const_new();
    ENGINE
        .get_or_try_init(|| async {
            let docker = Docker::connect_with_local_defaults().map_err(|e| unreachable(&e))?;
            let docker = api(docker.negotiate_version())
                .await
                .map_err(|e| unreachable(&e))?;
            api(docker.ping()).await.map_err(|e| unreachable(&e))?;
            sweep_stale(&docker).await;
            Ok(docker)
        })
        .await
        .cloned()
}

fn unreachable(error: &dyn std::fmt::Display) -> TaskError {
    TaskError::unavailable(format!(
        "the Docker engine is not reachable ({error}): start it (e.g. `dockerd`), or use another tier"
    ))
}

/// How an Engine API call failed.
enum ApiError {
    /// The engine answered with an error status (404: no such image or
    /// container).
    Refused { status: u16, message: String },
    /// No answer: the engine is down, or did not answer in [`API_TIMEOUT`].
    NoAnswer(String),
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::Refused { message, .. } | ApiError::NoAnswer(message) => f.write_str(message),
        }
    }
}

/// An Engine API call that gives up after [`API_TIMEOUT`].
async fn api<T>(
    call: impl std::future::Future<Output = Result<T, bollard::errors::Error>>,
) -> Result<T, ApiError> {
    match tokio::time::timeout(API_TIMEOUT, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e @ bollard::errors::Error::DockerResponseServerError { status_code, .. })) => {
            Err(ApiError::Refused {
                status: status_code,
                message: e.to_string(),
            })
        }
        Ok(Err(e)) => Err(ApiError::NoAnswer(e.to_string())),
        Err(_) => Err(ApiError::NoAnswer(format!(
            "the Docker engine did not answer in {} s",
            API_TIMEOUT.as_secs()
        ))),
    }
}

/// Removes our containers whose owning process is gone (it crashed between
/// create and remove). A container is only judged by a process that can
/// see its owner: on this boot, in this PID namespace; there the owner's
/// pid must name a process started when the owner was (not a later one
/// that reused the pid). Others are left alone.
async fn sweep_stale(docker: &Docker) {
    let filters = HashMap::from([("label", vec![OWNER_LABEL])]);
    let options = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    let Ok(containers) = api(docker.list_containers(Some(options))).await else {
        return;
    };
    let us = Owner::of(std::process::id() as libc::pid_t);
    for container in containers {
        let labels = container.labels.unwrap_or_default();
        let label = |name: &str| labels.get(name).cloned().unwrap_or_default();
        let Some(pid) = label(OWNER_LABEL).parse::<libc::pid_t>().ok() else {
            continue;
        };
        let owner = Owner {
            boot: label(BOOT_LABEL),
            pid_namespace: label(PIDNS_LABEL),
            start: label(START_LABEL),
        };
        let dead = if owner.boot.is_empty() || owner.pid_namespace.is_empty() {
            false // made before these labels: no way to tell
        } else if owner.boot != us.boot {
            true // the machine restarted since
        } else if owner.pid_namespace != us.pid_namespace {
            false // another namespace's process: not ours to judge
        } else {
            Owner::of(pid).start != owner.start
        };
        if let (true, Some(id)) = (dead, container.id) {
            remove(docker, &id).await;
        }
    }
}

/// Who made a container: this boot, this PID namespace, and the start
/// time of the process (0 if it does not exist), as labels.
struct Owner {
    boot: String,
    pid_namespace: String,
    start: String,
}

impl Owner {
    fn of(pid: libc::pid_t) -> Owner {
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .unwrap_or_default()
            .trim()
            .to_string();
        let pid_namespace = std::fs::read_link("/proc/self/ns/pid")
            .map(|link| link.display().to_string())
            .unwrap_or_default();
        // Field 22 of /proc/PID/stat, after the command's closing paren.
        let start = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                let fields = stat.rsplit_once(')')?.1;
                fields.split_whitespace().nth(19).map(str::to_string)
            })
            .unwrap_or_else(|| "0".into());
        Owner {
            boot,
            pid_namespace,
            start,
        }
    }
}

/// Sends `name` (SIGINT, SIGKILL) to the container. The engine neither
/// signals nor removes a container whose attach stream is full of output
/// nobody reads (a task flooding stdout): each such call would wait out
/// [`API_TIMEOUT`] (a flooding task once ended 90 s late). So a caller keeps
/// reading the stream meanwhile, or hangs it up first.
async fn signal(docker: &Docker, id: &str, name: &str) {
    let options = KillContainerOptionsBuilder::new().signal(name).build();
    let _ = api(docker.kill_container(id, Some(options))).await;
}

/// Containers whose removal the engine did not take (it was down or
/// stopping); the next task retries them.
static LEFTOVERS: Mutex<Vec<String>> = Mutex::new(Vec::new());

async fn remove(docker: &Docker, id: &str) {
    let options = RemoveContainerOptionsBuilder::new()
        .force(true)
        .v(true)
        .build();
    match api(docker.remove_container(id, Some(options))).await {
        Ok(()) | Err(ApiError::Refused { status: 404, .. }) => {}
        Err(_) => LEFTOVERS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(id.to_string()),
    }
}

async fn remove_leftovers(docker: &Docker) {
    let ids = std::mem::take(&mut *LEFTOVERS.lock().unwrap_or_else(|e| e.into_inner()));
    for id in ids {
        remove(docker, &id).await;
    }
}

/// Makes sure `image` is on the engine; checked once per image and process
/// (a later `docker rmi` shows up as a create error, which says the same).
async fn ensure_image(docker: &Docker, image: &str) -> Result<(), TaskError> {
    static PRESENT: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    let present = || PRESENT.lock().unwrap_or_else(|e| e.into_inner());
    if present()
        .as_ref()
        .is_some_and(|images| images.contains(image))
    {
        return Ok(());
    }
    match api(docker.inspect_image(image)).await {
        Ok(_) => {
            present()
                .get_or_insert_with(HashSet::new)
                .insert(image.to_string());
            Ok(())
        }
        Err(ApiError::Refused { status: 404, .. }) => Err(image_missing(image)),
        Err(e) => Err(unreachable(&e)),
    }
}

fn image_missing(image: &str) -> TaskError {
    TaskError::unavailable(format!(
        "the image {image} is not on this Docker engine: `docker pull {image}`, or build a local one with scripts/docker-image.sh (no registry needed) and set docker_image / --docker-image"
    ))
}

/// Removes the container when dropped (also when the run's future is).
struct Removal {
    docker: Docker,
    id: String,
}

impl Drop for Removal {
    fn drop(&mut self) {
        if self.id.is_empty() {
            return;
        }
        let (docker, id) = (self.docker.clone(), std::mem::take(&mut self.id));
        // Inside the runtime: finish the removal there, without blocking it.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move { remove(&docker, &id).await });
        }
    }
}

async fn run(job: &Job<'_>, cancel: &CancelToken) -> Result<SandboxOutput, TaskError> {
    let config = job.config;
    let docker = engine().await?;
    let mark = format!("lattice-envelope-{:032x}", rand_u128());
    let (cmd, stdin, python) =
        match &job.work {
            // The envelope follows a mark line on stdout (attached streams
            // have no fd 3); the driver reads the mark from its stdin's
            // first line, so it is in no file the task could read.
            Work::Python { request, .. } => (
                vec![
                    "python3".to_string(),
                    "-I".into(),
                    "-c".into(),
                    DRIVER.into(),
                    "--mark-on-stdin".into(),
                ],
                format!("{mark}\n{request}").into_bytes(),
                true,
            ),
            Work::Command { argv, input } => (argv.to_vec(), input.as_bytes().to_vec(), false),
            Work::Wasm { .. } => return Err(TaskError::invalid(
                "the docker tier runs Python code and commands; run Wasm payloads on the wasm tier",
            )),
        };
    remove_leftovers(&docker).await;
    ensure_image(&docker, &config.docker_image).await?;
    let mut env = vec!["HOME=/tmp".to_string(), "LANG=C.UTF-8".to_string()];
    if let Some(gpu) = job.gpu_id {
        env.push(format!("CUDA_VISIBLE_DEVICES={gpu}"));
    }
    let id = create(&docker, config, cmd, env, true, host_config(config)).await?;
    // Removed on every path: awaited below, or by the guard if this future
    // is dropped midway.
    let mut removal = Removal {
        docker: docker.clone(),
        id: id.clone(),
    };
    let ran = run_container(&docker, &id, &stdin, python, &mark, config, cancel).await;
    remove(&docker, &id).await;
    removal.id.clear();
    ran
}

/// Creates a hardened container of `config` (see the module's doc) that
/// runs `cmd` as nobody with its standard streams attached: its id.
async fn create(
    docker: &Docker,
    config: &SandboxConfig,
    cmd: Vec<String>,
    env: Vec<String>,
    stdin_once: bool,
    host_config: HostConfig,
) -> Result<String, TaskError> {
    let body = ContainerCreateBody {
        image: Some(config.docker_image.clone()),
        cmd: Some(cmd),
        env: Some(env),
        user: Some("65534:65534".into()),
        working_dir: Some("/tmp".into()),
        attach_stdin: Some(true),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        open_stdin: Some(true),
        stdin_once: Some(stdin_once),
        network_disabled: Some(!config.network),
        labels: Some(owner_labels()),
        host_config: Some(host_config),
        ..Default::default()
    };
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let name = format!(
        "lattice-{}-{}",
        std::process::id(),
        COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let options = CreateContainerOptionsBuilder::new().name(&name).build();
    match api(docker.create_container(Some(options), body)).await {
        Ok(created) => Ok(created.id),
        Err(ApiError::Refused { status: 404, .. }) => Err(image_missing(&config.docker_image)),
        Err(e @ ApiError::Refused { .. }) => Err(TaskError::unavailable(format!(
            "can't create the container: {e}"
        ))),
        Err(e @ ApiError::NoAnswer(_)) => Err(unreachable(&e)),
    }
}

/// A session on the docker tier: one container, hardened as a task's,
/// running the driver in session mode for the session's life (its CPU
/// time limited per call by the host). Calls go as frames on its attached
/// stdin; the answer follows the call's end mark on stdout (see
/// `crate::sandbox::session`). A limit or a cancel sends SIGINT to the
/// driver (`KeyboardInterrupt` in the code); a call that does not unwind,
/// or a container that dies, ends the session. The container is removed
/// when the session closes.
struct DockerSession {
    docker: Docker,
    id: String,
    input: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
    output: std::pin::Pin<
        Box<
            dyn futures_util::Stream<
                    Item = Result<bollard::container::LogOutput, bollard::errors::Error>,
                > + Send,
        >,
    >,
    cpu_counter: Option<cgroup::CpuCounter>,
    /// Output after a call's end (a thread the code left running): the
    /// start of the next call's.
    carry: [Vec<u8>; 2],
    /// The container's CPU time when the last call ended.
    cpu_after_last_call: Duration,
    ended: bool,
}

async fn open_session(config: &SandboxConfig) -> Result<DockerSession, TaskError> {
    let docker = engine().await?;
    remove_leftovers(&docker).await;
    ensure_image(&docker, &config.docker_image).await?;
    let cmd = vec![
        "python3".to_string(),
        "-I".into(),
        "-c".into(),
        DRIVER.into(),
        "--session".into(),
        "--answer-on-stdout".into(),
    ];
    let mut host_config = host_config(config);
    // The CPU time is limited per call (by the host), not for the life of
    // the session.
    if let Some(ulimits) = &mut host_config.ulimits {
        ulimits.retain(|u| u.name.as_deref() != Some("cpu"));
    }
    let env = vec!["HOME=/tmp".to_string(), "LANG=C.UTF-8".to_string()];
    let id = create(&docker, config, cmd, env, false, host_config).await?;
    let mut removal = Removal {
        docker: docker.clone(),
        id: id.clone(),
    };
    let streams = attach(&docker, &id).await?;
    api(docker.start_container(&id, None))
        .await
        .map_err(|e| TaskError::unavailable(format!("can't start the container: {e}")))?;
    let cpu_counter = api(docker.inspect_container(&id, None::<InspectContainerOptions>))
        .await
        .ok()
        .and_then(|inspected| inspected.state?.pid)
        .and_then(|pid| u32::try_from(pid).ok())
        .filter(|&pid| pid > 0)
        .and_then(|pid| cgroup::CpuCounter::of_pid(pid, &id));
    removal.id.clear();
    Ok(DockerSession {
        docker,
        id,
        input: streams.input,
        output: streams.output,
        cpu_after_last_call: cpu_counter
            .as_ref()
            .and_then(cgroup::CpuCounter::read)
            .unwrap_or_default(),
        cpu_counter,
        carry: [Vec::new(), Vec::new()],
        ended: false,
    })
}

/// How long stopped code has to unwind before the session is ended.
const INTERRUPT_GRACE: Duration = Duration::from_millis(500);
/// How long to wait for the end of a call's stderr once it answered.
const OUTPUT_GRACE: Duration = Duration::from_millis(500);

impl DockerSession {
    /// Writes a frame to the driver's stdin within `timeout`; false if it
    /// could not (the container is gone, or does not read).
    async fn send(&mut self, frame: &[u8], timeout: Duration) -> bool {
        let wrote = tokio::time::timeout(timeout, async {
            self.input.write_all(frame).await?;
            self.input.flush().await
        })
        .await;
        matches!(wrote, Ok(Ok(())))
    }

    fn cpu_time(&self) -> Duration {
        self.cpu_counter
            .as_ref()
            .and_then(cgroup::CpuCounter::read)
            .unwrap_or_default()
    }

    async fn call(
        &mut self,
        request: &[u8],
        config: &SandboxConfig,
        cancel: &CancelToken,
        mut host: HostCalls,
    ) -> SessionRun {
        let CallFrames {
            frame,
            mark,
            header,
            mut streams,
        } = CallFrames::new(request, config, &host, &mut self.carry);
        let cap = channel_cap(config, &host);
        let started = tokio::time::Instant::now();
        // What the container used since the last call ended (a thread or a
        // process the code left running) counts against this call.
        let cpu_start = self.cpu_after_last_call;
        let mut stopped: Option<(tokio::time::Instant, Ending)> = None;
        let mut answered: Option<tokio::time::Instant> = None;
        let mut interrupt: Option<tokio::task::JoinHandle<()>> = None;
        let mut died = false;
        if !self.send(&frame, config.timeout).await {
            died = true;
        }
        let mut poll = tokio::time::interval(Duration::from_millis(50));
        while !died {
            let now = tokio::time::Instant::now();
            if let Some(at) = answered {
                if streams[1].done || now >= at + OUTPUT_GRACE {
                    break;
                }
            }
            if answered.is_none() {
                if let Some((at, _)) = stopped {
                    if now >= at + INTERRUPT_GRACE {
                        break;
                    }
                }
            }
            tokio::select! {
                item = self.output.next() => match item {
                    Some(Ok(bollard::container::LogOutput::StdOut { message })) => {
                        streams[0].push(&message, &mark, &mut self.carry[0]);
                    }
                    Some(Ok(bollard::container::LogOutput::StdErr { message })) => {
                        streams[1].push(&message, &mark, &mut self.carry[1]);
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => died = true,
                },
                _ = poll.tick() => {
                    if answered.is_none() && stopped.is_none() {
                        let cpu_used = self.cpu_time().saturating_sub(cpu_start);
                        let limit = limit_reached(cancel, now - started, cpu_used, config);
                        if let Some(limit) = limit {
                            // Sent beside this loop, which goes on reading
                            // (see `signal`).
                            let (docker, id) = (self.docker.clone(), self.id.clone());
                            interrupt = Some(tokio::spawn(async move {
                                signal(&docker, &id, "SIGINT").await;
                            }));
                            stopped = Some((now, limit));
                        }
                    }
                }
            }
            // After a mark on stdout: a host call (served, and the call's
            // output goes on) or the call's answer.
            while answered.is_none() && streams[0].done {
                match first_frame(&self.carry[0], &header, self.carry[0].len() > cap) {
                    Frame::Partial => break,
                    Frame::HostCall(seq, request, taken) => {
                        let reply = reply_frame(&header, seq, &host.dispatch(request));
                        self.carry[0].drain(..taken);
                        streams[0].resume(&mark, &mut self.carry[0]);
                        if !self.send(&reply, config.timeout).await {
                            died = true;
                            break;
                        }
                    }
                    Frame::Answer(..) | Frame::Bad => answered = Some(tokio::time::Instant::now()),
                }
            }
        }
        let [stdout, stderr] = streams;
        let (stdout, stderr) = (stdout.finish(), stderr.finish());
        // The session goes on only once its interrupt has landed: a late
        // one would stop the next call.
        if let Some(sent) = interrupt {
            if tokio::time::timeout(INTERRUPT_GRACE, sent).await.is_err() {
                answered = None;
            }
        }
        let cpu_time = self.cpu_time().saturating_sub(cpu_start);
        if answered.is_some() {
            let overflow = self.carry[0].len() > cap;
            let parsed = match first_frame(&self.carry[0], &header, overflow) {
                Frame::Answer(envelope, taken) => Some((envelope.to_vec(), taken)),
                _ => None,
            };
            if let Some((envelope, taken)) = parsed {
                self.carry[0].drain(..taken);
                let run = Ended {
                    ending: stopped.map_or(Ending::Exited(0), |(_, limit)| limit),
                    stdout,
                    stderr,
                    channel: envelope,
                    channel_overflow: false,
                    cpu_time,
                    oom_killed: false,
                };
                let output = python_outcome(run, config);
                self.cpu_after_last_call = self.cpu_time();
                return SessionRun {
                    state: crate::sandbox::session::state_after(&output),
                    output,
                };
            }
            self.carry[0].clear();
            self.end().await;
            let error = if overflow {
                super::outcome::result_too_big(config)
            } else {
                super::outcome::protocol_error(
                    "the session's answer was malformed (did the code write the end mark itself?)",
                )
            };
            return SessionRun {
                output: SandboxOutput {
                    result: Err(error),
                    stdout: stdout.finish(),
                    stderr: stderr.finish(),
                },
                state: SessionState::Closed,
            };
        }
        // It died, or did not unwind from a stop: the session ends.
        let (exit, oom_killed) = self.end().await;
        let run = Ended {
            ending: stopped.map_or(Ending::Exited(exit), |(_, limit)| limit),
            stdout,
            stderr,
            channel: Vec::new(),
            channel_overflow: false,
            cpu_time,
            oom_killed,
        };
        SessionRun {
            output: python_outcome(run, config),
            state: SessionState::Closed,
        }
    }

    /// Kills and removes the container: its exit code and whether the
    /// kernel killed it for memory.
    async fn end(&mut self) -> (i32, bool) {
        if self.ended {
            return (0, false);
        }
        self.ended = true;
        // Hung up first (see `signal`), also for the removal below.
        self.input = Box::pin(tokio::io::sink());
        self.output = Box::pin(futures_util::stream::empty());
        signal(&self.docker, &self.id, "SIGKILL").await;
        let state = api(self
            .docker
            .inspect_container(&self.id, None::<InspectContainerOptions>))
        .await
        .ok()
        .and_then(|inspected| inspected.state);
        let oom_killed = state.as_ref().and_then(|s| s.oom_killed).unwrap_or(false);
        let exit = state.and_then(|s| s.exit_code).unwrap_or(-1) as i32;
        remove(&self.docker, &self.id).await;
        (exit, oom_killed)
    }
}

impl TierSession for DockerSession {
    fn run(
        &mut self,
        request: &str,
        config: &SandboxConfig,
        cancel: &CancelToken,
        host: HostCalls,
    ) -> SessionRun {
        if self.ended {
            return SessionRun {
                output: SandboxOutput::error(TaskError::internal(
                    "the session's container is gone",
                )),
                state: SessionState::Closed,
            };
        }
        match runtime() {
            Ok(runtime) => runtime.block_on(self.call(request.as_bytes(), config, cancel, host)),
            Err(error) => SessionRun {
                output: SandboxOutput::error(error),
                state: SessionState::Closed,
            },
        }
    }
}

impl Drop for DockerSession {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        if let Ok(runtime) = runtime() {
            runtime.block_on(self.end());
        }
    }
}

/// The container's stdin, stdout and stderr, attached before it starts.
async fn attach(
    docker: &Docker,
    id: &str,
) -> Result<bollard::container::AttachContainerResults, TaskError> {
    let options = AttachContainerOptionsBuilder::new()
        .stream(true)
        .stdin(true)
        .stdout(true)
        .stderr(true)
        .build();
    api(docker.attach_container(id, Some(options)))
        .await
        .map_err(|e| TaskError::unavailable(format!("can't attach to the container: {e}")))
}

fn owner_labels() -> HashMap<String, String> {
    let us = Owner::of(std::process::id() as libc::pid_t);
    HashMap::from([
        (OWNER_LABEL.to_string(), std::process::id().to_string()),
        (BOOT_LABEL.to_string(), us.boot),
        (PIDNS_LABEL.to_string(), us.pid_namespace),
        (START_LABEL.to_string(), us.start),
    ])
}

/// Why a container ended when neither we nor its limits ended it, if it
/// was not its own doing: the engine went away, or someone stopped it
/// (`docker stop`, `docker kill`, the engine shutting down) — the engine
/// records a kill event for that; a process that merely exits with code
/// 137 or 143 does not get one.
async fn stopped_from_outside(docker: &Docker, id: &str, since: i64) -> Option<TaskError> {
    let until = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        + 1;
    let filters = HashMap::from([("container", vec![id]), ("event", vec!["kill", "stop"])]);
    let options = EventsOptionsBuilder::new()
        .since(&since.to_string())
        .until(&until.to_string())
        .filters(&filters)
        .build();
    let events = tokio::time::timeout(
        Duration::from_secs(5),
        docker.events(Some(options)).collect::<Vec<_>>(),
    )
    .await;
    match events {
        Ok(events) if events.iter().all(Result::is_ok) => (!events.is_empty()).then(|| {
            TaskError::unavailable(
                "the container was stopped from outside the sandbox (the Docker engine shutting down, or `docker stop` / `docker kill`); the task did not finish",
            )
        }),
        Ok(events) => {
            let error = events.into_iter().find_map(Result::err);
            Some(TaskError::unavailable(format!(
                "the Docker engine stopped while the task ran ({}); the task did not finish",
                error.map(|e| e.to_string()).unwrap_or_default()
            )))
        }
        Err(_) => Some(TaskError::unavailable(
            "the Docker engine stopped answering while the task ran; the task did not finish",
        )),
    }
}

/// Attaches, starts, feeds and collects one created container.
async fn run_container(
    docker: &Docker,
    id: &str,
    stdin: &[u8],
    python: bool,
    mark: &str,
    config: &SandboxConfig,
    cancel: &CancelToken,
) -> Result<SandboxOutput, TaskError> {
    let streams = attach(docker, id).await?;
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64
        - 1;
    api(docker.start_container(id, None)).await.map_err(|e| {
        let message = e.to_string();
        if message.contains("executable file not found")
            || (message.contains("exec:") && message.contains("no such file or directory"))
        {
            // The task's own command is not in the image: its mistake.
            TaskError::invalid(format!(
                "the command can't run in the image `{}`: {message}",
                config.docker_image
            ))
        } else {
            TaskError::unavailable(format!("can't start the container: {message}"))
        }
    })?;
    // The container's main process: its cgroup tells the CPU time of all
    // the task's processes.
    let cpu_counter = api(docker.inspect_container(id, None::<InspectContainerOptions>))
        .await
        .ok()
        .and_then(|inspected| inspected.state?.pid)
        .and_then(|pid| u32::try_from(pid).ok())
        .filter(|&pid| pid > 0)
        .and_then(|pid| cgroup::CpuCounter::of_pid(pid, id));
    // A task that never reads its stdin must not block us: write in the background.
    let input = stdin.to_vec();
    let mut writer = streams.input;
    let mut output = streams.output;
    tokio::spawn(async move {
        let _ = writer.write_all(&input).await;
        let _ = writer.shutdown().await;
    });

    // A command's stdout is its result: it gets the result's cap.
    let stdout_cap = if python {
        config.max_output_bytes
    } else {
        config.max_result_bytes
    };
    let mut stdout = Collected::new(stdout_cap, python, mark, config);
    let mut stderr = OutputCapture::new(config.max_output_bytes);
    let started = tokio::time::Instant::now();
    let deadline = started + config.timeout;
    let mut poll = tokio::time::interval(Duration::from_millis(50));
    let mut cpu_time = Duration::ZERO;
    let stopped = loop {
        tokio::select! {
            item = output.next() => match item {
                Some(Ok(bollard::container::LogOutput::StdOut { message })) => stdout.push(&message),
                Some(Ok(bollard::container::LogOutput::StdErr { message })) => stderr.push(&message),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break None,
            },
            _ = tokio::time::sleep_until(deadline) => break Some(Ending::TimedOut),
            _ = poll.tick() => {
                if cancel.is_cancelled() {
                    break Some(Ending::Cancelled);
                }
                if let Some(used) = cpu_counter.as_ref().and_then(cgroup::CpuCounter::read) {
                    cpu_time = used;
                    if used >= config.max_cpu_time {
                        break Some(Ending::CpuLimit);
                    }
                }
            }
        }
    };
    if stopped.is_some() {
        // Hung up first (see `signal`).
        drop(output);
        signal(docker, id, "SIGKILL").await;
    }
    let wait = WaitContainerOptionsBuilder::new()
        .condition("not-running")
        .build();
    let mut waiting = docker.wait_container(id, Some(wait));
    let exit = match tokio::time::timeout(API_TIMEOUT, waiting.next()).await {
        Ok(Some(Ok(status))) => status.status_code,
        // A non-zero exit comes back as an error carrying the code.
        Ok(Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. }))) => code,
        _ => -1,
    };
    let state = api(docker.inspect_container(id, None::<InspectContainerOptions>))
        .await
        .ok()
        .and_then(|inspected| inspected.state);
    let oom_killed = state.as_ref().and_then(|s| s.oom_killed).unwrap_or(false);
    if let Some(used) = cpu_counter.as_ref().and_then(cgroup::CpuCounter::read) {
        cpu_time = cpu_time.max(used);
    }
    if stopped.is_none() && !oom_killed {
        let outside = match state {
            None => Some(TaskError::unavailable(
                "the Docker engine stopped while the task ran (its container could not be inspected after it ended); the task did not finish",
            )),
            Some(_) => stopped_from_outside(docker, id, since).await,
        };
        if let Some(error) = outside {
            return Err(error);
        }
    }
    // An exit code says nothing the task could not fake (`os._exit(137)`):
    // the host's own observations above decide the limits.
    let ending = stopped.unwrap_or(Ending::Exited(exit as i32));
    let (stdout, channel, channel_overflow) = stdout.finish();
    let run = Ended {
        ending,
        stdout,
        stderr,
        channel,
        channel_overflow,
        cpu_time,
        oom_killed,
    };
    Ok(if python {
        python_outcome(run, config)
    } else {
        command_outcome(run, config)
    })
}

fn host_config(config: &SandboxConfig) -> HostConfig {
    let memory = i64::try_from(config.max_memory_mb.saturating_mul(1 << 20)).unwrap_or(i64::MAX);
    // A second line behind the host's watch of the container's CPU time.
    let cpu = config.max_cpu_time.as_secs_f64().ceil().max(1.0) as i64 + 1;
    let ulimit = |name: &str, soft: i64, hard: i64| ResourcesUlimits {
        name: Some(name.into()),
        soft: Some(soft),
        hard: Some(hard),
    };
    HostConfig {
        memory: Some(memory),
        memory_swap: Some(memory),
        nano_cpus: Some(1_000_000_000),
        pids_limit: Some(MAX_PROCESSES),
        readonly_rootfs: Some(true),
        tmpfs: Some(HashMap::from([("/tmp".to_string(), TMPFS.to_string())])),
        network_mode: Some(if config.network { "bridge" } else { "none" }.into()),
        security_opt: Some(vec!["no-new-privileges".into()]),
        cap_drop: Some(vec!["ALL".into()]),
        // SIGXCPU at the soft limit, SIGKILL a second later, as the process tiers.
        ulimits: Some(vec![
            ulimit("cpu", cpu, cpu + 1),
            ulimit("core", 0, 0),
            ulimit("nofile", 256, 256),
            ulimit("fsize", 64 << 20, 64 << 20),
        ]),
        binds: Some(
            config
                .mounts
                .iter()
                .map(|m| {
                    let mode = if m.writable { "rw" } else { "ro" };
                    format!("{}:{}:{mode}", m.host.display(), m.guest)
                })
                .collect(),
        ),
        ..Default::default()
    }
}

/// A container's stdout: the user's output, then (Python) the mark line and
/// the envelope. Keeps the first `cap` bytes for the user, and enough of
/// the end to find the last mark and the envelope after it.
struct Collected {
    cap: usize,
    /// The most the envelope may take.
    envelope_cap: usize,
    split: bool,
    mark: Vec<u8>,
    /// What came before the mark, its middle dropped past `cap` (a flood).
    user: Vec<u8>,
    dropped: u64,
    /// Where the next search for the mark starts in `user`.
    searched: usize,
    /// What came after the mark, up to `envelope_cap`.
    envelope: Option<Vec<u8>>,
    overflow: bool,
}

impl Collected {
    fn new(cap: usize, split: bool, mark: &str, config: &SandboxConfig) -> Collected {
        Collected {
            cap,
            envelope_cap: if split {
                envelope_cap(config)
            } else {
                config.max_result_bytes
            },
            split,
            mark: format!("\n{mark}\n").into_bytes(),
            user: Vec::new(),
            dropped: 0,
            searched: 0,
            envelope: None,
            overflow: false,
        }
    }

    /// Keeps at most `cap` bytes and a tail that may hold the start of
    /// the mark; the task's output and the envelope are each bounded as
    /// they arrive, so neither can grow the host.
    fn push(&mut self, data: &[u8]) {
        if let Some(envelope) = &mut self.envelope {
            let room = self.envelope_cap + 1 - envelope.len().min(self.envelope_cap + 1);
            envelope.extend_from_slice(&data[..data.len().min(room)]);
            self.overflow |= envelope.len() > self.envelope_cap;
            return;
        }
        self.user.extend_from_slice(data);
        if self.split {
            if let Some(at) = find(&self.user[self.searched..], &self.mark) {
                let at = self.searched + at;
                let after = self.user.split_off(at + self.mark.len());
                self.user.truncate(at);
                self.envelope = Some(Vec::new());
                self.push(&after);
                return;
            }
            self.searched = self.user.len().saturating_sub(self.mark.len() - 1);
        }
        let keep_tail = self.mark.len();
        if self.user.len() > 2 * (self.cap + keep_tail) {
            let excess = self.user.len() - self.cap - keep_tail;
            self.user.drain(self.cap..self.cap + excess);
            self.dropped += excess as u64;
            self.searched = self.searched.saturating_sub(excess).max(self.cap);
        }
    }

    /// (user output, envelope, whether the envelope was too big).
    fn finish(self) -> (OutputCapture, Vec<u8>, bool) {
        let mut user = OutputCapture::new(self.cap);
        user.push(&self.user);
        user.count_dropped(self.dropped);
        (user, self.envelope.unwrap_or_default(), self.overflow)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A per-task mark the task can't predict before it runs.
fn rand_u128() -> u128 {
    let mut bytes = [0u8; 16];
    // SAFETY: getrandom fills the buffer we own.
    let got = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if got != bytes.len() as isize {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        return now.as_nanos() ^ u128::from(std::process::id());
    }
    u128::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(chunks: &[&[u8]], config: &SandboxConfig) -> (String, Vec<u8>, bool) {
        let mut collected = Collected::new(16, true, "MARK", config);
        for chunk in chunks {
            collected.push(chunk);
        }
        let (user, envelope, overflow) = collected.finish();
        (user.finish(), envelope, overflow)
    }

    #[test]
    fn the_envelope_is_split_off_at_the_mark_even_across_chunks_and_floods() {
        let config = SandboxConfig::default();
        let (user, envelope, overflow) = collect(&[b"hi\n\nMA", b"RK\n{\"k\":1}"], &config);
        assert_eq!(
            (user.as_str(), &envelope[..], overflow),
            ("hi\n", &b"{\"k\":1}"[..], false)
        );
        // A flood before the mark is cut to the cap; the mark is still found.
        let flood = vec![b'x'; 100_000];
        let chunks: Vec<&[u8]> = (0..50)
            .map(|_| &flood[..])
            .chain([&b"\nMARK\n[]"[..]])
            .collect();
        let (user, envelope, _) = collect(&chunks, &config);
        assert!(
            user.starts_with("xxxxxxxxxxxxxxxx") && user.contains("truncated"),
            "{user}"
        );
        assert_eq!(envelope, b"[]");
    }

    #[test]
    fn an_envelope_past_its_cap_is_kept_bounded_and_flagged() {
        let config = SandboxConfig {
            max_result_bytes: 1000,
            ..SandboxConfig::default()
        };
        let big = vec![b'0'; 1 << 20];
        let chunks: Vec<&[u8]> = [&b"\nMARK\n"[..]]
            .into_iter()
            .chain((0..4).map(|_| &big[..]))
            .collect();
        let (user, envelope, overflow) = collect(&chunks, &config);
        assert_eq!(user, "");
        assert!(overflow);
        assert_eq!(envelope.len(), envelope_cap(&config) + 1);
    }
}
