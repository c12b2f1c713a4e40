//! The Ray executor against a real two-node Ray cluster on this machine
//! (`scripts/ray-cluster.sh start`): placement, GPU pinning, warm workers
//! and their chunks, cancel (also within a chunk), wait, errors, worker and
//! node death (also mid-chunk), sessions, and nothing left running after
//! shutdown. No mocks.
//!
//! The cluster is found through LATTICE_RAY_ADDRESS / LATTICE_RAY_DASHBOARD /
//! LATTICE_RAY_PYTHON, or the file the script writes
//! (target/ray-cluster/cluster.env). Without a cluster every test fails and
//! says how to start one.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crate::common::{alive, all_pids, has_env, parent_of, proc_list, RestoreDefaultConfig};
use lattice::executor::{ExecutorBackend, RayExecutor, RayOptions};
use lattice::sandbox::{SandboxConfig, SandboxLevel};
use lattice::session::{Call, SessionState};
use lattice::task::{ErrorKind, Resources, TaskError, TaskOutcome, TaskSubmission};
use serde_json::{json, Value};

/// The test cluster, as the script describes it.
#[derive(Clone, Debug)]
struct Cluster {
    address: String,
    dashboard: String,
    python: PathBuf,
    /// Every process of the cluster carries LATTICE_RAY_CLUSTER=<this>.
    marker: String,
    script: PathBuf,
}

fn cluster() -> Cluster {
    static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();
    CLUSTER
        .get_or_init(find_cluster)
        .clone()
        .unwrap_or_else(|why| {
            panic!(
                "no Ray test cluster: {why}. Start one with `scripts/ray-cluster.sh start` \
                 (these tests fail, never skip, without it{})",
                if std::env::var("CI").is_ok_and(|v| v == "true") {
                    "; CI must start it before cargo test"
                } else {
                    ""
                }
            )
        })
}

fn find_cluster() -> Result<Cluster, String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let file = root.join("target/ray-cluster/cluster.env");
    let mut vars: HashMap<String, String> = std::fs::read_to_string(&file)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    for key in [
        "LATTICE_RAY_ADDRESS",
        "LATTICE_RAY_DASHBOARD",
        "LATTICE_RAY_PYTHON",
        "LATTICE_RAY_TEMP_DIR",
    ] {
        if let Ok(value) = std::env::var(key) {
            vars.insert(key.into(), value);
        }
    }
    let get = |key: &str| {
        vars.get(key)
            .cloned()
            .ok_or_else(|| format!("{key} is not set and {} has none", file.display()))
    };
    let cluster = Cluster {
        address: get("LATTICE_RAY_ADDRESS")?,
        dashboard: get("LATTICE_RAY_DASHBOARD")?,
        python: get("LATTICE_RAY_PYTHON")?.into(),
        marker: get("LATTICE_RAY_TEMP_DIR").unwrap_or_default(),
        script: root.join("scripts/ray-cluster.sh"),
    };
    if nodes(&cluster.dashboard).is_err() {
        return Err(format!(
            "its dashboard at {} does not answer",
            cluster.dashboard
        ));
    }
    Ok(cluster)
}

/// One test at a time: the node-death test takes a node away, and every
/// test counts processes.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn options(cluster: &Cluster) -> RayOptions {
    RayOptions {
        address: Some(cluster.address.clone()),
        dashboard: Some(cluster.dashboard.clone()),
        python: cluster.python.clone(),
        // Test binaries are not the CLI: the nodes run the real one.
        binary: Some(env!("CARGO_BIN_EXE_lattice-wasm").into()),
        ..RayOptions::default()
    }
}

fn executor(cluster: &Cluster) -> RayExecutor {
    let executor = RayExecutor::new(options(cluster));
    executor.initialize().expect("the executor connects");
    executor
}

/// The dashboard's nodes: (node_id, node_ip, state, is_head).
fn nodes(dashboard: &str) -> Result<Vec<(String, String, String, bool)>, String> {
    let body: Value = reqwest::blocking::Client::builder()
        .user_agent("lattice-wasm-tests")
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?
        .get(format!("{dashboard}/api/v0/nodes?limit=1000"))
        .send()
        .and_then(|r| r.json())
        .map_err(|e| e.to_string())?;
    Ok(body
        .pointer("/data/result/result")
        .and_then(Value::as_array)
        .ok_or("no node list")?
        .iter()
        .map(|n| {
            (
                n["node_id"].as_str().unwrap_or_default().to_string(),
                n["node_ip"].as_str().unwrap_or_default().to_string(),
                n["state"].as_str().unwrap_or_default().to_string(),
                n["is_head_node"].as_bool().unwrap_or(false),
            )
        })
        .collect())
}

/// (head id, second node id), both alive.
fn node_ids(cluster: &Cluster) -> (String, String) {
    let nodes = nodes(&cluster.dashboard).unwrap();
    let alive = |head: bool| {
        nodes
            .iter()
            .find(|n| n.3 == head && n.2 == "ALIVE")
            .map(|n| n.0.clone())
            .unwrap_or_else(|| {
                panic!(
                    "no alive {} node in {nodes:?}",
                    if head { "head" } else { "second" }
                )
            })
    };
    (alive(true), alive(false))
}

fn ok(outcome: &TaskOutcome) -> Value {
    match &outcome.result {
        Ok(value) => value.clone(),
        Err(e) => panic!("expected a result, got {e:?} (stderr: {})", outcome.stderr),
    }
}

fn err(outcome: &TaskOutcome) -> TaskError {
    match &outcome.result {
        Err(e) => e.clone(),
        Ok(value) => panic!("expected an error, got {value}"),
    }
}

/// A Python task that returns its CUDA_VISIBLE_DEVICES (None if unset).
/// The wasm tier has no environment: this runs on the none tier.
fn cuda_probe() -> TaskSubmission {
    TaskSubmission::python(
        "import os\ndef f():\n    return os.environ.get('CUDA_VISIBLE_DEVICES')\n",
    )
    .with_tier(SandboxLevel::None)
}

fn sleeper(seconds: u32) -> TaskSubmission {
    TaskSubmission::python(format!(
        "import time\ndef f():\n    time.sleep({seconds})\n    return 'woke'\n"
    ))
}

/// Processes of the test cluster (its marker in their environment) that
/// run tasks: `lattice-wasm exec` (a task of its own) and `lattice-wasm
/// ray-worker` (a node's warm worker).
fn lattice_processes(cluster: &Cluster) -> Vec<i64> {
    lattice_processes_running(cluster, &["exec", "ray-worker"])
}

fn lattice_processes_running(cluster: &Cluster, commands: &[&str]) -> Vec<i64> {
    let marker = format!("LATTICE_RAY_CLUSTER={}", cluster.marker);
    all_pids()
        .into_iter()
        .filter(|&pid| {
            let args = proc_list(pid, "cmdline");
            args.len() >= 2
                && args[0].ends_with("lattice-wasm")
                && commands.contains(&args[1].as_str())
                && has_env(pid, &marker)
        })
        .collect()
}

/// The warm workers of the test cluster (the processes that run tasks,
/// not their keepers).
fn warm_workers(cluster: &Cluster) -> Vec<i64> {
    lattice_processes_running(cluster, &["ray-worker"])
        .into_iter()
        .filter(|&pid| proc_list(pid, "cmdline").iter().any(|arg| arg == "serve"))
        .collect()
}

/// Child processes of the cluster's task-running processes (a process
/// tier's task), but for the workers under their keepers.
fn task_children(cluster: &Cluster) -> Vec<i64> {
    let runners = lattice_processes(cluster);
    all_pids()
        .into_iter()
        .filter(|pid| !runners.contains(pid))
        .filter(|&pid| parent_of(pid).is_some_and(|parent| runners.contains(&parent)))
        .collect()
}

/// Tasks of `run_exec` (the sidecar's remote function) the cluster says
/// are still running or waiting.
fn ray_tasks_not_finished(cluster: &Cluster) -> Vec<Value> {
    let url = format!("{}/api/v0/tasks?limit=10000&detail=true", cluster.dashboard);
    let body: Value = reqwest::blocking::Client::builder()
        .user_agent("lattice-wasm-tests")
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
        .get(url)
        .send()
        .and_then(|r| r.json())
        .unwrap_or_default();
    body.pointer("/data/result/result")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|t| {
            t["name"].as_str().is_some_and(|n| n.contains("run_exec"))
                && !matches!(t["state"].as_str(), Some("FINISHED" | "FAILED"))
        })
        .collect()
}

#[test]
fn resources_list_both_nodes_with_their_totals() {
    let _suite = crate::common::suite(module_path!());
    let cluster = cluster();
    let _serial = serial();
    let executor = executor(&cluster);
    let resources = executor.get_available_resources().unwrap();
    assert_eq!(resources.nodes.len(), 2, "{resources:?}");
    let (head, second) = node_ids(&cluster);
    let head = resources.nodes.iter().find(|n| n.node_id == head).unwrap();
    let second = resources
        .nodes
        .iter()
        .find(|n| n.node_id == second)
        .unwrap();
    assert_eq!((head.cpu, head.gpu), (2.0, 0.0));
    assert_eq!((second.cpu, second.gpu), (1.0, 2.0));
    assert_eq!(second.node_ip, "127.0.0.2");
    assert_eq!(second.memory, 2_000_000_000);
    for node in &resources.nodes {
        assert!(node.alive);
        assert!(node.cpu_available <= node.cpu && node.gpu_available <= node.gpu);
        assert!(node.memory_available <= node.memory);
    }
    executor.shutdown().unwrap();
}

#[test]
fn affinity_runs_each_task_on_the_node_it_names() {
    let _suite = crate::common::suite(module_path!());
    let cluster = cluster();
    let _serial = serial();
    let executor = executor(&cluster);
    let (head, second) = node_ids(&cluster);
    for node in [&head, &second, &head] {
        let handle = executor
            .submit(
                TaskSubmission::python("def f(x):\n    return x * 2\n")
                    .with_input(json!(21))
                    .with_node(node.clone()),
            )
            .unwrap();
        let outcome = executor.get_result(&handle);
        assert_eq!(ok(&outcome), json!(42));
        assert_eq!(outcome.node_id.as_deref(), Some(node.as_str()));
        assert_eq!(outcome.tier, Some(SandboxLevel::Wasm));
    }
    // The node id's case does not matter.
    let handle = executor
        .submit(TaskSubmission::python("def f():\n    return 1\n").with_node(second.to_uppercase()))
        .unwrap();
    assert_eq!(executor.get_result(&handle).node_id, Some(second));
    executor.shutdown().unwrap();
}

#[test]
fn gpu_id_pins_cuda_visible_devices_and_no_gpu_means_none_visible() {
    let _suite = crate::common::suite(module_path!());
    let cluster = cluster();
    let _serial = serial();
    let executor = executor(&cluster);
    let (head, second) = node_ids(&cluster);
    let run = |task: TaskSubmission| {
        let outcome = executor.get_result(&executor.submit(task).unwrap());
        (ok(&outcome), outcome.node_id)
    };
    // Pinned: the task sees exactly that GPU, on the node that has GPUs.
    assert_eq!(
        run(cuda_probe().with_gpu(1)),
        (json!("1"), Some(second.clone()))
    );
    assert_eq!(
        run(cuda_probe().with_gpu(0)),
        (json!("0"), Some(second.clone()))
    );
    // On the subprocess tier too (its environment is otherwise empty).
    assert_eq!(
        run(cuda_probe().with_tier(SandboxLevel::Subprocess).with_gpu(1)).0,
        json!("1")
    );
    // A GPU asked for but not pinned: the one Ray assigned.
    let (assigned, node) = run(cuda_probe().with_resources(Resources {
        gpu: Some(1.0),
        ..Resources::default()
    }));
    assert!(
        assigned == json!("0") || assigned == json!("1"),
        "{assigned}"
    );
    assert_eq!(node, Some(second.clone()));
    // No GPU: Ray would leave the variable unset (all GPUs visible); we
    // set it empty.
    assert_eq!(run(cuda_probe().with_node(head.clone())).0, json!(""));
    assert_eq!(run(cuda_probe().with_node(second)).0, json!(""));
    // A GPU the nodes don't have.
    let error = executor.submit(cuda_probe().with_gpu(7)).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidTask, "{error}");
    executor.shutdown().unwrap();
}

#[test]
fn cancel_ends_a_sleeping_task_as_cancelled_and_the_next_task_runs() {
    let _suite = crate::common::suite(module_path!());
    let cluster = cluster();
    let _serial = serial();
    let executor = executor(&cluster);
    let handle = executor.submit(sleeper(60)).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let started = Instant::now();
    assert!(executor.cancel(&handle));
    let outcome = executor.get_result(&handle);
    assert_eq!(err(&outcome), TaskError::Cancelled);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(
        !executor.cancel(&handle),
        "a finished task can't be cancelled"
    );
    // Measured pitfall: the task after a force-cancel may meet a crashed
    // worker; it is retried, never reported.
    for i in 0..3 {
        let handle = executor
            .submit(TaskSubmission::python("def f(x):\n    return x\n").with_input(json!(i)))
            .unwrap();
        assert_eq!(ok(&executor.get_result(&handle)), json!(i));
    }
    // A task cancelled before Ray ran it is Cancelled too.
    let queued: Vec<_> = (0..4)
        .map(|_| executor.submit(sleeper(30)).unwrap())
        .collect();
    for handle in &queued {
        assert!(executor.cancel(handle));
    }
    for handle in &queued {
        assert_eq!(err(&executor.get_result(handle)), TaskError::Cancelled);
    }
    // A subprocess-tier task runs a child in its own session under its
    // own uid: a force-cancel must not orphan it, even one that ignores
    // SIGTERM.
    let handle = executor
        .submit(
            TaskSubmission::python(
                "import signal, time\ndef f():\n    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n    time.sleep(60)\n",
            )
            .with_tier(SandboxLevel::Subprocess),
        )
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let child = loop {
        if let Some(&child) = task_children(&cluster).first() {
            break child;
        }
        assert!(Instant::now() < deadline, "the task's child never started");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(executor.cancel(&handle));
    assert_eq!(err(&executor.get_result(&handle)), TaskError::Cancelled);
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(child) {
        assert!(
            Instant::now() < deadline,
            "the task's child {child} outlived the cancel"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    executor.shutdown().unwrap();
    assert_eq!(lattice_processes(&cluster), Vec::<i64>::new());
}

#[test]
fn small_tasks_run_on_one_warm_worker_per_node_and_come_back_whole() {
    let _suite = crate::common::suite(module_path!());
    let cluster = cluster();
    let _serial = serial();
    let executor = executor(&cluster);
    let (head, second) = node_ids(&cluster);
    let double = || TaskSubmission::python("def f(x):\n    return x * 2\n");
    // Many more than fit in flight at once (32 per CPU): the rest waits in
    // the executor and goes out in chunks as results come back.
    let n = 1500;
    let handles: Vec<_> = (0..n)
        .map(|i| {
            executor
                .submit(double().with_input(json!(i)).with_id(format!("t{i}")))
                .unwrap()
        })
        .collect();
    let mut per_node: HashMap<String, usize> = HashMap::new();
    for (i, handle) in handles.iter().enumerate() {
        let outcome = executor.get_result(handle);
        assert_eq!(ok(&outcome), json!(i * 2));
        assert_eq!(outcome.id, Some(json!(format!("t{i}"))));
        assert_eq!(outcome.tier, Some(SandboxLevel::Wasm));
        *per_node
            .entry(outcome.node_id.clone().unwrap())
            .or_default() += 1;
        executor.release(handle);
    }
    assert_eq!(per_node.values().sum::<usize>(), n);
    assert!(
        per_node.get(&head) > Some(&0) && per_node.get(&second) > Some(&0),
        "{per_node:?}"
    );
    // One warm worker per node, no process per task, and the same workers
    // serve what comes next.
    let workers = warm_workers(&cluster);
    assert_eq!(workers.len(), 2, "{workers:?}");
    assert_eq!(
        lattice_processes_running(&cluster, &["exec"]),
        Vec::<i64>::new()
    );
    for node in [&head, &second] {
        let outcome = executor.get_result(
            &executor
                .submit(double().with_input(json!(4)).with_node(node.clone()))
                .unwrap(),
        );
        assert_eq!(
            (ok(&outcome), outcome.node_id.as_deref()),
            (json!(8), Some(node.as_str()))
        );
    }
    assert_eq!(warm_workers(&cluster), workers);
    // Code that does not parse, a task error and a limit come back typed
    // from a worker too.
    let outcomes: Vec<_> = [
        TaskSubmission::python("def f(:\n"),
        TaskSubmission::python("def f():\n    raise KeyError('k')\n"),
        TaskSubmission::python("def f():\n    while True:\n        pass\n")
            .with_timeout(Duration::from_secs(1)),
    ]
    .into_iter()
    .map(|task| executor.submit(task).unwrap())
    .map(|handle| executor.get_result(&handle))
    .collect();
    assert_eq!(err(&outcomes[0]).kind(), ErrorKind::InvalidTask);
    assert!(
        err(&outcomes[1]).to_string().contains("KeyError"),
        "{:?}",
        outcomes[1]
    );
    assert_eq!(err(&outcomes[2]).kind(), ErrorKind::Timeout);
    executor.shutdown().unwrap();
    assert_eq!(
        lattice_processes(&cluster),
        Vec::<i64>::new(),
        "a warm worker outlived shutdown"
    );
}

#[test]
fn a_cancel_within_a_chunk_stops_that_task_alone() {
    let _suite = crate::common::suite(module_path!());
    let cluster = cluster();
    let _serial = serial();
    let executor = executor(&cluster);
    let (head, _) = node_ids(&cluster);
    // One chunk for the head's worker (2 slots): two sleepers run, the
    // third and the quick tasks wait behind them in the worker.
    let sleepers: Vec<_> = (0..3)
        .map(|_| executor.submit(sleeper(4).with_node(head.clone())).unwrap())
        .collect();
    let quick: Vec<_> = (0..5)
        .map(|i| {
            executor
                .submit(
                    TaskSubmission::python("def f(x):\n    return x\n")
                        .with_input(json!(i))
                        .with_node(head.clone()),
                )
                .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    // A running one and a waiting one.
    let started = Instant::now();
    assert!(executor.cancel(&sleepers[0]));
    assert!(executor.cancel(&quick[4]));
    assert_eq!(
        err(&executor.get_result(&sleepers[0])),
        TaskError::Cancelled
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(err(&executor.get_result(&quick[4])), TaskError::Cancelled);
    // The worker's other tasks go on.
    for handle in &sleepers[1..] {
        assert_eq!(ok(&executor.get_result(handle)), json!("woke"));
    }
    for (i, handle) in quick[..4].iter().enumerate() {
        assert_eq!(ok(&executor.get_result(handle)), json!(i));
    }
    assert!(
        !executor.cancel(&quick[0]),
        "a finished task can't be cancelled"
    );
    executor.shutdown().unwrap();
}

#[test]
fn a_warm_worker_that_dies_is_replaced_and_its_tasks_retried_once() {
    let _suite = crate::common::suite(module_path!());
    let cluster = cluster();
    let _serial = serial();
    let executor = executor(&cluster);
    let (head, _) = node_ids(&cluster);
    let handles: Vec<_> = (0..3)
        .map(|_| executor.submit(sleeper(3).with_node(head.clone())).unwrap())
        .collect();
    let worker_on = |cluster: &Cluster| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let [worker] = warm_workers(cluster)[..] {
                return worker;
            }
            assert!(Instant::now() < deadline, "{:?}", warm_workers(cluster));
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let first = worker_on(&cluster);
    std::thread::sleep(Duration::from_millis(1000));
    // SAFETY: kill(2) on the test cluster's warm worker.
    unsafe {
        libc::kill(first as i32, libc::SIGKILL);
    }
    // Sent again to a new worker: they all wake.
    for handle in &handles {
        let outcome = executor.get_result(handle);
        assert_eq!(
            (ok(&outcome), outcome.node_id),
            (json!("woke"), Some(head.clone()))
        );
    }
    let second = worker_on(&cluster);
    assert_ne!(first, second);
    // A worker killed mid-task can't clean up after its tasks: its keeper
    // kills what they left. Here a none-tier task (it runs in the worker's
    // own process) starts a daemon in a session of its own, which neither
    // a process group nor the worker's death reaches.
    let daemon_marker = "31313";
    let forker = executor
        .submit(
            TaskSubmission::python(format!(
                "import subprocess, time\ndef f():\n    subprocess.Popen(['/bin/sleep', '{daemon_marker}'], start_new_session=True,\n        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n    time.sleep(60)\n"
            ))
            .with_tier(SandboxLevel::None)
            .with_node(head.clone()),
        )
        .unwrap();
    let daemons = || -> Vec<i64> {
        all_pids()
            .into_iter()
            .filter(|&pid| proc_list(pid, "cmdline") == ["/bin/sleep", daemon_marker])
            .filter(|&pid| alive(pid))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while daemons().is_empty() {
        assert!(Instant::now() < deadline, "the daemon never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    let first_daemon = daemons();
    let worker = worker_on(&cluster);
    // SAFETY: kill(2) on the test cluster's warm worker.
    unsafe {
        libc::kill(worker as i32, libc::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while first_daemon.iter().any(|&pid| alive(pid)) {
        assert!(
            Instant::now() < deadline,
            "the daemon {first_daemon:?} outlived its worker"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // It is sent again (and starts a daemon again, which the worker's clean
    // exit at shutdown leaves to the keeper, below).
    executor.cancel(&forker);
    assert_eq!(err(&executor.get_result(&forker)), TaskError::Cancelled);
    // A task whose worker dies twice under it is retried once, then
    // reported.
    let handle = executor
        .submit(sleeper(60).with_node(head.clone()))
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    for _ in 0..2 {
        let worker = worker_on(&cluster);
        std::thread::sleep(Duration::from_millis(1000));
        // SAFETY: kill(2) on the test cluster's warm worker.
        unsafe {
            libc::kill(worker as i32, libc::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while warm_workers(&cluster).contains(&worker) {
            assert!(
                Instant::now() < deadline,
                "the killed worker is still listed"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let error = err(&executor.get_result(&handle));
    assert_eq!(error.kind(), ErrorKind::Internal, "{error}");
    assert!(error.to_string().contains("died twice"), "{error}");
    // And the node still serves.
    let outcome = executor.get_result(&executor.submit(sleeper(0).with_node(head)).unwrap());
    assert_eq!(ok(&outcome), json!("woke"));
    executor.shutdown().unwrap();
    assert_eq!(lattice_processes(&cluster), Vec::<i64>::new());
    assert_eq!(daemons(), Vec::<i64>::new());
}

#[test]
fn a_session_keeps_its_state_on_its_node() {
    let _suite = crate::common::suite(module_path!());
    let cluster = cluster();
    let _serial = serial();
    let executor = executor(&cluster);
    let (_, second) = node_ids(&cluster);
    let config = SandboxConfig {
        timeout: Duration::from_secs(2),
        ..SandboxConfig::default()
    };
    let session = executor
        .open_session(config.clone(), Some(&second))
        .unwrap();
    assert_eq!(session.node_id(), second);
    session
        .exec("def area(w, h):\n    return w * h\nunit = 'm2'")
        .result
        .unwrap();
    let reply = session.exec("f'{area(3, 4)} {unit}'");
    assert_eq!(reply.result.unwrap(), json!("12 m2"));
    assert_eq!(reply.repr.as_deref(), Some("'12 m2'"));
    let reply = session.call("area", Call::args(vec![json!(2), json!(5)]));
    assert_eq!(
        (reply.result.unwrap(), reply.state),
        (json!(10), SessionState::Ready)
    );
    // Output, a typed error, and a limit that interrupts the call but
    // leaves the session.
    let reply = session.exec("print('hi')\n1/0");
    assert_eq!(reply.stdout, "hi\n");
    let error = reply.result.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::TaskError);
    assert!(error.to_string().contains("ZeroDivisionError"), "{error}");
    let reply = session.exec("n = 0\nwhile True:\n    n += 1");
    assert_eq!(reply.result.unwrap_err().kind(), ErrorKind::Timeout);
    assert_ne!(reply.state, SessionState::Closed);
    assert_eq!(session.exec("unit").result.unwrap(), json!("m2"));
    // A session on another tier, placed by the executor, beside it.
    let other = executor
        .open_session(
            SandboxConfig {
                tier: SandboxLevel::Subprocess,
                ..config
            },
            None,
        )
        .unwrap();
    assert_eq!(
        other.exec("import sys\nx = 41\nx + 1").result.unwrap(),
        json!(42)
    );
    assert_eq!(other.exec("x").result.unwrap(), json!(41));
    // Closed: later calls fail.
    session.close();
    assert!(!session.is_open());
    let reply = session.exec("unit");
    assert_eq!(
        (reply.result.unwrap_err().kind(), reply.state),
        (ErrorKind::InvalidTask, SessionState::Closed)
    );
    // An unknown node is refused before anything starts.
    let error = executor
        .open_session(SandboxConfig::default(), Some(&"ab".repeat(28)))
        .err()
        .unwrap();
    assert_eq!(error.kind(), ErrorKind::InvalidTask, "{error}");
    // Shutdown ends the other session with everything else.
    executor.shutdown().unwrap();
    assert!(other.exec("x").result.is_err());
    assert_eq!(lattice_processes(&cluster), Vec::<i64>::new());
    assert_eq!(task_children(&cluster), Vec::<i64>::new());
}

/// The per-worker guardians of the test cluster's Ray workers.
fn guardians(cluster: &Cluster) -> Vec<i64> {
    let marker = format!("LATTICE_RAY_CLUSTER={}", cluster.marker);
    all_pids()
        .into_iter()
        .filter(|&pid| {
            proc_list(pid, "cmdline")
                .join(" ")
                .contains("PR_SET_CHILD_SUBREAPER")
                && has_env(pid, &marker)
        })
        .collect()
}

#[test]
fn wait_honours_its_timeout() {
    let _suite = crate::common::suite(module_path!());
    let cluster = cluster();
    let _serial = serial();
    let executor = executor(&cluster);
    let slow = executor.submit(sleeper(4)).unwrap();
    let fast = executor
        .submit(TaskSubmission::python("def f():\n    return 1\n"))
        .unwrap();
    let started = Instant::now();
    let (done, pending) = executor.wait(std::slice::from_ref(&slow), Duration::from_millis(300));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!((done.len(), pending,), (0, vec![slow.clone()]));
    let (done, pending) = executor.wait(&[slow.clone(), fast.clone()], Duration::from_secs(60));
    assert_eq!((done, pending.len()), (vec![slow.clone(), fast], 0));
    assert_eq!(ok(&executor.get_result(&slow)), json!("woke"));
    // Zero just looks.
    let (done, _) = executor.wait(&[slow], Duration::ZERO);
    assert_eq!(done.len(), 1);
    executor.shutdown().unwrap();
}

#[test]
fn infeasible_requests_fail_at_once_with_a_clear_error() {
    let _suite = crate::common::suite(module_path!());
    let cluster = cluster();
    let _serial = serial();
    let executor = executor(&cluster);
    let (head, _) = node_ids(&cluster);
    let asks = |resources: Resources| {
        let started = Instant::now();
        let error = executor
            .submit(TaskSubmission::python("def f():\n    return 1\n").with_resources(resources))
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(error.kind(), ErrorKind::InvalidTask, "{error}");
        error.to_string()
    };
    let message = asks(Resources {
        gpu: Some(3.0),
        ..Resources::default()
    });
    assert!(
        message.contains("3 GPU") && message.contains("2 GPU"),
        "{message}"
    );
    let message = asks(Resources {
        cpu: Some(8.0),
        ..Resources::default()
    });
    assert!(message.contains("8 CPU"), "{message}");
    asks(Resources {
        cpu_mem: Some(64_000_000_000),
        ..Resources::default()
    });
    // Feasible on the cluster, not on the node it names: the head has no GPU.
    let error = executor
        .submit(cuda_probe().with_node(head).with_resources(Resources {
            gpu: Some(1.0),
            ..Resources::default()
        }))
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidTask, "{error}");
    // What fits, runs.
    let handle = executor
        .submit(
            TaskSubmission::python("def f():\n    return 2\n").with_resources(Resources {
                cpu: Some(1.0),
                gpu: Some(2.0),
                cpu_mem: Some(1_000_000_000),
            }),
        )
        .unwrap();
    assert_eq!(ok(&executor.get_result(&handle)), json!(2));
    executor.shutdown().unwrap();
}

#[test]
fn malformed_or_unknown_node_ids_are_invalid_tasks() {
    let _suite = crate::common::suite(module_path!());
    let cluster = cluster();
    let _serial = serial();
    // Before anything is started: a malformed id sends nothing.
    let executor = RayExecutor::new(options(&cluster));
    for bad in ["local", "abc", &"g".repeat(56), &"a".repeat(55)] {
        let error = executor
            .submit(TaskSubmission::python("def f():\n    return 1\n").with_node(bad))
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidTask, "{bad}: {error}");
        assert!(error.to_string().contains("56 hex"), "{error}");
    }
    assert_eq!(executor.sidecar_pid(), None, "nothing was started");
    // Well-formed, but no such node.
    let error = executor
        .submit(TaskSubmission::python("def f():\n    return 1\n").with_node("ab".repeat(28)))
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidTask, "{error}");
    assert!(
        error.to_string().contains("not part of the Ray cluster"),
        "{error}"
    );
    executor.shutdown().unwrap();
}

#[test]
fn task_errors_and_limits_come_back_typed() {
    let _suite = crate::common::suite(module_path!());
    let cluster = cluster();
    let _serial = serial();
    let executor = executor(&cluster);
    let failing = executor
        .submit(TaskSubmission::python("def f():\n    raise ValueError('boom')\n").with_id("v"))
        .unwrap();
    let outcome = executor.get_result(&failing);
    assert_eq!(outcome.id, Some(json!("v")));
    match err(&outcome) {
        TaskError::Failed {
            type_name, message, ..
        } => {
            assert_eq!(
                (type_name.as_str(), message.as_str()),
                ("ValueError", "boom")
            )
        }
        other => panic!("{other:?}"),
    }
    let timed = executor
        .submit(sleeper(30).with_timeout(Duration::from_secs(1)))
        .unwrap();
    assert_eq!(err(&executor.get_result(&timed)).kind(), ErrorKind::Timeout);
    let syntax = executor
        .submit(TaskSubmission::python("def f(:\n"))
        .unwrap();
    assert_eq!(
        err(&executor.get_result(&syntax)).kind(),
        ErrorKind::InvalidTask
    );
    // Output and the async path.
    let printing = executor
        .submit(TaskSubmission::python(
            "def f():\n    print('hi')\n    return 3\n",
        ))
        .unwrap();
    let outcome = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(executor.get_result_async(&printing));
    assert_eq!((ok(&outcome), outcome.stdout.as_str()), (json!(3), "hi\n"));
    // Native closures can't travel.
    let error = executor
        .submit(TaskSubmission::native(|_| Ok(json!(1))))
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidTask);
    executor.shutdown().unwrap();
}

#[test]
fn settings_without_a_task_field_reach_the_nodes() {
    let _suite = crate::common::suite(module_path!());
    let cluster = cluster();
    let _serial = serial();
    let with = |sandbox: SandboxConfig| {
        let executor = RayExecutor::new(RayOptions {
            sandbox: Some(sandbox),
            ..options(&cluster)
        });
        executor.initialize().expect("the executor connects");
        executor
    };
    // A seccomp allowlist without getcwd: refused on the node.
    let mut calls = lattice::sandbox::seccomp_allowlist();
    calls.retain(|&c| c != libc::SYS_getcwd);
    let seccomp = with(SandboxConfig {
        tier: SandboxLevel::Seccomp,
        allowed_syscalls: Some(calls),
        ..SandboxConfig::default()
    });
    let task = seccomp.submit(TaskSubmission::python(
        "import os\ndef f():\n    try:\n        os.getcwd()\n    except PermissionError:\n        return 'refused'\n    return 'allowed'\n",
    ));
    assert_eq!(ok(&seccomp.get_result(&task.unwrap())), json!("refused"));
    seccomp.shutdown().unwrap();
    // The docker image: one that is there runs, one that is not is named.
    for (image, expected) in [
        ("lattice/python:3.11", Ok(json!(3))),
        ("lattice/no-such-image:0", Err("lattice/no-such-image:0")),
    ] {
        let docker = with(SandboxConfig {
            tier: SandboxLevel::Docker,
            docker_image: image.into(),
            ..SandboxConfig::default()
        });
        let task = docker
            .submit(TaskSubmission::python("def f():\n    return 3\n"))
            .unwrap();
        let outcome = docker.get_result(&task);
        match expected {
            Ok(value) => assert_eq!(ok(&outcome), value),
            Err(name) => match err(&outcome) {
                TaskError::SandboxUnavailable { reason } => {
                    assert!(reason.contains(name), "{reason}")
                }
                other => panic!("{other:?}"),
            },
        }
        docker.shutdown().unwrap();
    }
}

#[test]
fn the_process_wide_configuration_is_read_at_each_submit() {
    let _suite = crate::common::suite(module_path!());
    let cluster = cluster();
    let _serial = serial();
    let _restore = RestoreDefaultConfig;
    // No configuration of its own: each task gets the process-wide one as
    // it is when the task is submitted, whole, on its node.
    let executor = executor(&cluster);
    let chatty = || TaskSubmission::python("def f():\n    print('x' * 5000)\n    return 1\n");
    lattice::sandbox::set_sandbox_config(SandboxConfig {
        max_output_bytes: 1000,
        ..SandboxConfig::default()
    });
    let capped = executor.submit(chatty()).unwrap();
    lattice::sandbox::set_sandbox_config(SandboxConfig::default());
    let whole = executor.submit(chatty()).unwrap();
    let capped = executor.get_result(&capped);
    let whole = executor.get_result(&whole);
    assert_eq!(ok(&capped), json!(1));
    assert!(
        capped.stdout.len() < 1200 && capped.stdout.contains("truncated"),
        "{}",
        capped.stdout
    );
    assert_eq!(ok(&whole), json!(1));
    assert!(whole.stdout.contains(&"x".repeat(5000)), "{}", whole.stdout);
    executor.shutdown().unwrap();
}

#[test]
fn a_python_without_ray_says_how_to_fix_it() {
    let _suite = crate::common::suite(module_path!());
    let cluster = cluster();
    let _serial = serial();
    let python = ["/usr/bin/python3", "/usr/local/bin/python3"]
        .into_iter()
        .find(|p| {
            std::process::Command::new(p)
                .args(["-c", "import ray"])
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| !s.success())
        })
        .expect("a Python without ray on this machine");
    let executor = RayExecutor::new(RayOptions {
        python: python.into(),
        ..options(&cluster)
    });
    let error = executor.initialize().unwrap_err();
    assert_eq!(error.kind(), ErrorKind::SandboxUnavailable, "{error}");
    let message = error.to_string();
    assert!(
        message.contains("pip install \"ray[default]\"") && message.contains("--ray-python"),
        "{message}"
    );
    let error = RayExecutor::new(RayOptions {
        python: "/nonexistent/python3".into(),
        ..options(&cluster)
    })
    .initialize()
    .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::SandboxUnavailable, "{error}");
}

#[test]
fn shutdown_cancels_what_runs_and_leaves_nothing_running() {
    let _suite = crate::common::suite(module_path!());
    let cluster = cluster();
    let _serial = serial();
    let executor = executor(&cluster);
    let sidecar = executor.sidecar_pid().expect("the sidecar runs");
    // Process-tier sleepers, so that each running task is a process; one
    // per-task (cold) one too, which asks for memory.
    let subprocess_sleeper = || sleeper(120).with_tier(SandboxLevel::Subprocess);
    let mut handles: Vec<_> = (0..3)
        .map(|_| executor.submit(subprocess_sleeper()).unwrap())
        .collect();
    handles.push(
        executor
            .submit(sleeper(120).with_resources(Resources {
                cpu: Some(0.5),
                cpu_mem: Some(100_000_000),
                ..Resources::default()
            }))
            .unwrap(),
    );
    // Let them start: the three sleepers and the per-task worker.
    let deadline = Instant::now() + Duration::from_secs(30);
    while (task_children(&cluster).len() < 3
        || lattice_processes_running(&cluster, &["exec"]).is_empty())
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    let children = task_children(&cluster);
    assert_eq!(children.len(), 3, "three tasks run (one per CPU)");
    assert_eq!(lattice_processes_running(&cluster, &["exec"]).len(), 1);
    executor.shutdown().unwrap();
    for handle in &handles {
        assert_eq!(err(&executor.get_result(handle)), TaskError::Cancelled);
    }
    assert!(!alive(i64::from(sidecar)), "the sidecar is gone");
    assert_eq!(executor.sidecar_pid(), None);
    assert_eq!(
        lattice_processes(&cluster),
        Vec::<i64>::new(),
        "no exec or warm worker survives"
    );
    for child in children {
        assert!(!alive(child), "the task process {child} survived");
    }
    // Ray agrees (its task table lags a little).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = ray_tasks_not_finished(&cluster);
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "Ray still runs: {left:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
    // The workers of the finished job go, and their guardians with them.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !guardians(&cluster).is_empty() {
        assert!(
            Instant::now() < deadline,
            "guardians left: {:?}",
            guardians(&cluster)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // And the executor refuses new work.
    assert_eq!(
        executor.submit(sleeper(1)).unwrap_err().kind(),
        ErrorKind::InvalidTask
    );
    executor.shutdown().unwrap();
}

#[test]
fn a_dead_sidecar_ends_every_task_with_a_typed_error() {
    let _suite = crate::common::suite(module_path!());
    let cluster = cluster();
    let _serial = serial();
    let executor = executor(&cluster);
    let handles: Vec<_> = (0..2)
        .map(|_| executor.submit(sleeper(60)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let pid = executor.sidecar_pid().unwrap();
    // SAFETY: kill(2) on the sidecar this test's executor started.
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
    for handle in &handles {
        let error = err(&executor.get_result(handle));
        assert_eq!(error.kind(), ErrorKind::Internal, "{error}");
        assert!(error.to_string().contains("sidecar exited"), "{error}");
    }
    let error = executor.submit(sleeper(1)).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::SandboxUnavailable, "{error}");
    executor.shutdown().unwrap();
    // The driver is gone, so Ray ends its tasks and actors (and their exec
    // and warm worker processes).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !lattice_processes(&cluster).is_empty() {
        assert!(
            Instant::now() < deadline,
            "exec or warm worker processes outlive the driver"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn node_death_is_node_failed_and_the_executor_keeps_serving() {
    let _suite = crate::common::suite(module_path!());
    let cluster = cluster();
    let _serial = serial();
    let executor = executor(&cluster);
    let (head, second) = node_ids(&cluster);
    // Mid-chunk: the second node (1 CPU) runs one of these and holds the
    // other two; the head's tasks go on.
    let pinned: Vec<_> = (0..3)
        .map(|_| {
            executor
                .submit(sleeper(120).with_node(second.clone()))
                .unwrap()
        })
        .collect();
    let on_head: Vec<_> = (0..2)
        .map(|_| executor.submit(sleeper(6).with_node(head.clone())).unwrap())
        .collect();
    // A session on the node that dies, and one on the head.
    let doomed = executor
        .open_session(SandboxConfig::default(), Some(&second))
        .unwrap();
    doomed.exec("x = 1").result.unwrap();
    let survivor = executor
        .open_session(SandboxConfig::default(), Some(&head))
        .unwrap();
    survivor.exec("x = 2").result.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while warm_workers(&cluster).len() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(1500)); // the sleepers start
    let raylet = second_raylet_pid(&cluster).expect("the second node's raylet");
    // SAFETY: kill(2) on the test cluster's raylet, found by its marker.
    unsafe {
        libc::kill(raylet, libc::SIGKILL);
    }
    let killed = Instant::now();
    let outcome = executor.get_result(&pinned[0]);
    let restart = || {
        let status = std::process::Command::new("bash")
            .arg(&cluster.script)
            .arg("restart-worker")
            .status()
            .unwrap();
        assert!(status.success(), "restart-worker failed");
    };
    let error = match &outcome.result {
        Err(e) => e.clone(),
        Ok(v) => {
            restart();
            panic!("the task on the dead node returned {v}");
        }
    };
    assert_eq!(error.kind(), ErrorKind::NodeFailed, "{error}");
    assert!(
        killed.elapsed() < Duration::from_secs(30),
        "{:?}",
        killed.elapsed()
    );
    for handle in &pinned[1..] {
        let outcome = executor.get_result(handle);
        assert_eq!(err(&outcome).kind(), ErrorKind::NodeFailed);
        assert_eq!(outcome.node_id.as_deref(), Some(second.as_str()));
    }
    for handle in &on_head {
        let outcome = executor.get_result(handle);
        assert_eq!(
            (ok(&outcome), outcome.node_id),
            (json!("woke"), Some(head.clone()))
        );
    }
    let reply = doomed.exec("x");
    assert_eq!(reply.result.unwrap_err().kind(), ErrorKind::NodeFailed);
    assert_eq!(reply.state, SessionState::Closed);
    assert!(!doomed.is_open());
    assert_eq!(survivor.exec("x").result.unwrap(), json!(2));
    // The executor keeps serving on the head.
    let handle = executor
        .submit(TaskSubmission::python("def f():\n    return 'alive'\n"))
        .unwrap();
    let outcome = executor.get_result(&handle);
    assert_eq!(
        (ok(&outcome), outcome.node_id),
        (json!("alive"), Some(head))
    );
    // Once the node is known dead: affinity to it fails at once, and a GPU
    // (only it had some) is no longer feasible.
    let deadline = Instant::now() + Duration::from_secs(30);
    while nodes(&cluster.dashboard)
        .unwrap()
        .iter()
        .any(|n| n.0 == second && n.2 == "ALIVE")
    {
        assert!(Instant::now() < deadline, "the node never shows dead");
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_secs(6)); // the executor's node cache
    let started = Instant::now();
    let handle = executor
        .submit(sleeper(1).with_node(second.clone()))
        .unwrap();
    assert_eq!(
        err(&executor.get_result(&handle)).kind(),
        ErrorKind::NodeFailed
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    let error = executor.submit(cuda_probe().with_gpu(0)).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidTask, "{error}");
    executor.shutdown().unwrap();
    restart();
    assert_eq!(node_ids(&cluster).1.len(), 56);
}

/// The raylet of the second node: a process of the test cluster marked
/// LATTICE_RAY_NODE=worker whose program is the raylet.
fn second_raylet_pid(cluster: &Cluster) -> Option<i32> {
    let marker = format!("LATTICE_RAY_CLUSTER={}", cluster.marker);
    all_pids().into_iter().find_map(|pid| {
        let program = proc_list(pid, "cmdline").into_iter().next()?;
        (has_env(pid, &marker)
            && has_env(pid, "LATTICE_RAY_NODE=worker")
            && program.ends_with("/raylet"))
        .then_some(pid as i32)
    })
}

/// The executor beside Ray's own paths on the test cluster, in one run:
/// round trip (median of one task at a time) and throughput (a batch) of a
/// trivial task on the warm path, `batch --executor ray` of 10,000 such
/// tasks, a plain Python driver's `ray.remote` no-op (Ray's own per-task
/// floor), the per-task path (`warm_workers` off), and the seed's path (a
/// Python driver's `ray.remote` running `lattice-wasm exec`,
/// benches/ray_baseline.py). Each is run twice, alternating, and the best
/// kept (the machine is shared and noisy). A benchmark, not a timed test:
/// `cargo test --test it ray_executor::bench -- --ignored --nocapture`.
#[test]
#[ignore = "a benchmark; run with --ignored --nocapture"]
fn bench_against_plain_ray_remote() {
    let _suite = crate::common::suite(module_path!());
    let cluster = cluster();
    let _serial = serial();
    let binary = env!("CARGO_BIN_EXE_lattice-wasm");
    let (rounds, pipelined, batch, repeats) = (60, 2000, 10_000, 2);
    let trivial = TaskSubmission::python("def f(x):\n    return x + 1\n").with_input(json!(1));
    let trivial_json = json!({"code": "def f(x):\n    return x + 1\n", "input": 1});
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let baseline = |args: &[&str]| -> (f64, f64) {
        let output = std::process::Command::new(&cluster.python)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/benches/ray_baseline.py"
            ))
            .arg(&cluster.address)
            .args(args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let line = output
            .stdout
            .split(|&b| b == b'\n')
            .rfind(|l| l.starts_with(b"{"))
            .unwrap();
        let result: Value = serde_json::from_slice(line).unwrap();
        let rtts = result["rtt_ms"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_f64)
            .collect();
        let n: f64 = args[args.len() - 1].parse().unwrap();
        (median(rtts), n / result["pipelined_s"].as_f64().unwrap())
    };
    let ours = |warm: bool, pipelined: usize| -> (f64, f64) {
        let executor = RayExecutor::new(RayOptions {
            warm_workers: warm,
            ..options(&cluster)
        });
        executor.initialize().unwrap();
        let run_many = |n: usize| {
            let handles: Vec<_> = (0..n)
                .map(|_| executor.submit(trivial.clone()).unwrap())
                .collect();
            for handle in &handles {
                ok(&executor.get_result(handle));
                executor.release(handle);
            }
        };
        run_many(12);
        let rtts = (0..rounds)
            .map(|_| {
                let started = Instant::now();
                run_many(1);
                started.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        let started = Instant::now();
        run_many(pipelined);
        let rate = pipelined as f64 / started.elapsed().as_secs_f64();
        executor.shutdown().unwrap();
        (median(rtts), rate)
    };
    let tasks_file = tempfile::NamedTempFile::new().unwrap();
    let line = format!("{trivial_json}\n");
    std::fs::write(tasks_file.path(), line.repeat(batch)).unwrap();
    let batch_rate = || -> f64 {
        let output = std::process::Command::new(binary)
            .args([
                "batch",
                "--executor",
                "ray",
                "--ray-address",
                &cluster.address,
            ])
            .args(["--ray-python", cluster.python.to_str().unwrap()])
            .arg(tasks_file.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stderr}");
        let ok_lines = output
            .stdout
            .split(|&b| b == b'\n')
            .filter(|l| l.starts_with(b"{"))
            .count();
        assert_eq!(ok_lines, batch, "{stderr}");
        // "batch: N tasks, N ok, 0 failed in S s (R tasks/s)"
        let summary = stderr.lines().rfind(|l| l.starts_with("batch:")).unwrap();
        summary
            .rsplit_once('(')
            .unwrap()
            .1
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let best = |best: &mut (f64, f64), (rtt, rate): (f64, f64)| {
        *best = (best.0.min(rtt), best.1.max(rate));
    };
    let mut warm = (f64::MAX, 0.0);
    let mut batched = 0.0f64;
    let mut noop = (f64::MAX, 0.0);
    let mut cold = (f64::MAX, 0.0);
    let mut seed = (f64::MAX, 0.0);
    for _ in 0..repeats {
        best(
            &mut noop,
            baseline(&["noop", &rounds.to_string(), &batch.to_string()]),
        );
        best(&mut warm, ours(true, pipelined));
        batched = batched.max(batch_rate());
        best(&mut cold, ours(false, 200));
        best(
            &mut seed,
            baseline(&["exec", binary, &trivial_json.to_string(), "20", "200"]),
        );
    }
    println!("\n| path (trivial task) | round trip, median | throughput |\n|---|---|---|");
    println!(
        "| RayExecutor, warm workers | {:.1} ms | {:.0} tasks/s ({pipelined} submitted at once) |",
        warm.0, warm.1
    );
    println!("| `lattice-wasm batch --executor ray`, {batch} tasks | | {batched:.0} tasks/s |");
    println!("| Python `ray.remote` no-op, num_cpus=1 (Ray's floor) | {:.1} ms | {:.0} tasks/s ({batch} at once) |", noop.0, noop.1);
    println!(
        "| RayExecutor, a Ray task each (`warm_workers: false`) | {:.1} ms | {:.0} tasks/s |",
        cold.0, cold.1
    );
    println!("| Python `ray.remote` running `lattice-wasm exec` (the seed's path) | {:.1} ms | {:.0} tasks/s |", seed.0, seed.1);
    println!(
        "\nwarm vs Ray's no-op: round trip {:.2}x, throughput {:.2}x (batch {:.2}x); warm vs a Ray task each: {:.1}x the throughput",
        warm.0 / noop.0,
        warm.1 / noop.1,
        batched / noop.1,
        warm.1 / cold.1
    );
}

#[test]
fn without_an_address_it_starts_a_head_and_stops_only_that() {
    let _suite = crate::common::suite(module_path!());
    let cluster = cluster();
    let _serial = serial();
    let executor = RayExecutor::new(RayOptions {
        address: None,
        dashboard: None,
        // Beside the test cluster, so its own ports.
        head_port: 6391,
        head_dashboard_port: 8291,
        ..options(&cluster)
    });
    executor.initialize().expect("a head starts");
    let resources = executor.get_available_resources().unwrap();
    assert_eq!(resources.nodes.len(), 1, "{resources:?}");
    let handle = executor
        .submit(TaskSubmission::python(
            "def f():\n    return 'on my head'\n",
        ))
        .unwrap();
    let outcome = executor.get_result(&handle);
    assert_eq!(ok(&outcome), json!("on my head"));
    assert_eq!(outcome.node_id, Some(resources.nodes[0].node_id.clone()));
    executor.shutdown().unwrap();
    // Its head is gone; the test cluster still runs.
    assert!(
        nodes("http://127.0.0.1:8291").is_err(),
        "the started head still answers"
    );
    let (head, second) = node_ids(&cluster);
    assert_eq!((head.len(), second.len()), (56, 56));
    let leftovers: Vec<i64> = all_pids()
        .into_iter()
        .filter(|&pid| {
            proc_list(pid, "environ")
                .iter()
                .any(|v| v.starts_with("LATTICE_RAY_CLUSTER=/tmp/lattice-ray-"))
        })
        .collect();
    assert_eq!(
        leftovers,
        Vec::<i64>::new(),
        "processes of the started head"
    );
}

#[test]
fn the_cli_runs_a_batch_and_lists_resources_on_the_cluster() {
    let _suite = crate::common::suite(module_path!());
    let cluster = cluster();
    let _serial = serial();
    let (head, second) = node_ids(&cluster);
    let binary = env!("CARGO_BIN_EXE_lattice-wasm");
    let probe = "import os\ndef f():\n    return os.environ.get('CUDA_VISIBLE_DEVICES')\n";
    let lines = [
        json!({"id": "head", "code": "def f(x):\n    return x + 1\n", "input": 1, "node_id": head}),
        json!({"id": "second", "code": "def f(x):\n    return x + 1\n", "input": 2, "node_id": second}),
        json!({"id": "gpu", "code": probe, "tier": "none", "gpu_id": 1}),
        json!({"id": "nogpu", "code": probe, "tier": "none"}),
        json!({"id": "toomany", "code": "def f():\n    return 1\n", "resources": {"gpu": 3}}),
        json!({"id": "badnode", "code": "def f():\n    return 1\n", "node_id": "n1"}),
        json!({"id": "raises", "code": "def f():\n    raise KeyError('k')\n"}),
    ];
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        file.path(),
        lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .unwrap();
    let output = std::process::Command::new(binary)
        .args([
            "batch",
            "--executor",
            "ray",
            "--ray-address",
            &cluster.dashboard,
            // The probes ask for the none tier, which only the operator can allow.
            "--allow-tiers",
            "wasm,none",
        ])
        .arg(file.path())
        .env("LATTICE_RAY_PYTHON", &cluster.python)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    // invalid_task results outrank the task error: exit 2.
    assert_eq!(
        output.status.code(),
        Some(2),
        "some tasks are invalid: {stderr}"
    );
    assert!(stderr.contains("7 tasks, 4 ok, 3 failed"), "{stderr}");
    let results: HashMap<String, Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|r| (r["id"].as_str().unwrap().to_string(), r))
        .collect();
    assert_eq!(results["head"]["result"], json!(2));
    assert_eq!(results["head"]["node_id"], json!(head));
    assert_eq!(results["second"]["node_id"], json!(second));
    assert_eq!(results["gpu"]["result"], json!("1"));
    assert_eq!(results["nogpu"]["result"], json!(""));
    assert_eq!(results["toomany"]["error"]["kind"], json!("invalid_task"));
    assert_eq!(results["badnode"]["error"]["kind"], json!("invalid_task"));
    assert_eq!(results["raises"]["error"]["type"], json!("KeyError"));

    let output = std::process::Command::new(binary)
        .args([
            "resources",
            "--executor",
            "ray",
            "--ray-address",
            &cluster.address,
        ])
        .args([
            std::ffi::OsStr::new("--ray-python"),
            cluster.python.as_os_str(),
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let resources: Value = serde_json::from_slice(&output.stdout).unwrap();
    let nodes = resources["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2);
    let gpus: f64 = nodes.iter().map(|n| n["gpu"].as_f64().unwrap()).sum();
    assert_eq!(gpus, 2.0);
}

#[test]
fn serve_runs_requests_on_the_cluster() {
    let _suite = crate::common::suite(module_path!());
    let cluster = cluster();
    let _serial = serial();
    let (head, second) = node_ids(&cluster);
    let server = crate::serve::Server::start_with(
        &["--executor", "ray", "--ray-address", &cluster.dashboard],
        None,
        &[("LATTICE_RAY_PYTHON", &cluster.python)],
    );
    let (status, result) = server.post_json(
        "/v1/run",
        &json!({"code": "def f(x):\n    return x + 1\n", "input": 41, "node_id": second}),
    );
    assert_eq!(status, reqwest::StatusCode::OK, "{result}");
    assert_eq!(result["result"], json!(42));
    assert_eq!(result["node_id"], json!(second));
    let (status, result) = server.post_json(
        "/run_code",
        &json!({"code": "print(int(input()) * 2)", "stdin": "21", "language": "python"}),
    );
    assert_eq!(status, reqwest::StatusCode::OK, "{result}");
    assert_eq!(result["status"], "Success", "{result}");
    assert_eq!(result["run_result"]["stdout"], "42\n");
    // Both ran on warm workers: no process per request.
    assert!(!warm_workers(&cluster).is_empty());
    assert_eq!(
        lattice_processes_running(&cluster, &["exec"]),
        Vec::<i64>::new()
    );
    let (_, result) = server.post_json(
        "/v1/run",
        &json!({"code": "def f():\n    return 1\n", "node_id": "n1"}),
    );
    assert_eq!(result["error"]["kind"], "invalid_task", "{result}");
    let resources: Value = server.get("/v1/resources").json().unwrap();
    let nodes: Vec<&str> = resources["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node_id"].as_str().unwrap())
        .collect();
    assert!(
        nodes.contains(&head.as_str()) && nodes.contains(&second.as_str()),
        "{resources}"
    );
    assert_eq!(server.terminate(std::time::Duration::from_secs(30)), 0);
    assert_eq!(lattice_processes(&cluster), Vec::<i64>::new());
}

#[test]
fn a_binary_missing_on_the_nodes_is_sandbox_unavailable() {
    let _suite = crate::common::suite(module_path!());
    let cluster = cluster();
    let _serial = serial();
    let executor = RayExecutor::new(RayOptions {
        binary: Some("/nonexistent/lattice-wasm".into()),
        ..options(&cluster)
    });
    executor.initialize().unwrap();
    let handle = executor
        .submit(TaskSubmission::python("def f():\n    return 1\n"))
        .unwrap();
    let error = err(&executor.get_result(&handle));
    assert_eq!(error.kind(), ErrorKind::SandboxUnavailable, "{error}");
    assert!(
        error.to_string().contains("/nonexistent/lattice-wasm"),
        "{error}"
    );
    executor.shutdown().unwrap();
}
