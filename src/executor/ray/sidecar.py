# The Ray sidecar of lattice-wasm's RayExecutor (src/executor/ray/executor.rs;
# the protocol's types are in protocol.rs).
#
# Ray has no Rust API, so the executor starts this script under a Python that
# has `ray` and talks to it in JSON lines: requests on stdin, events on
# stdout. Each task becomes one `ray.remote` call that runs
# `lattice-wasm exec` on its node with the task's JSON on stdin; its ending is
# reported from a `ref.future()` callback (no polling).
#
# Requests (one JSON object per line):
#   {"op": "submit", "id": N, "task": "<task json>", "config": "<sandbox config json>",
#    "num_cpus": 1.0, "memory": bytes|null, "num_gpus": 0.0, "node_id": hex|null,
#    "cuda": str|null}
#   {"op": "cancel", "id": N}
#   {"op": "available", "req": K}
#   {"op": "shutdown"}
# Events:
#   {"ev": "ready", "ray": version}
#   {"ev": "fatal", "kind": "no_ray"|"connect", "message": ...}
#   {"ev": "done", "id": N, "rc": int, "out": str, "err": str, "node": hex}
#   {"ev": "failed", "id": N, "kind": ..., "type": ..., "message": ...}
#   {"ev": "reply", "req": K, "available": {node_hex: {resource: amount}}}
import json
import os
import sys
import threading

# Only protocol lines may reach the executor: everything else that anything
# prints (Ray's own messages included) goes to stderr.
_PROTOCOL = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
os.dup2(2, 1)
sys.stdout = sys.stderr
_EMIT_LOCK = threading.Lock()


def emit(event):
    line = json.dumps(event)
    with _EMIT_LOCK:
        _PROTOCOL.write(line + "\n")
        _PROTOCOL.flush()


CONFIG = json.loads(sys.argv[1])

try:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
except BaseException as e:  # noqa: BLE001 - any import failure means "no usable ray"
    emit({"ev": "fatal", "kind": "no_ray", "message": f"{type(e).__name__}: {e}"})
    sys.exit(3)


# The guardian: one small process per Ray worker that runs the worker's
# `lattice-wasm exec` processes. A force-cancel SIGKILLs the worker and its
# direct children (measured), so the guardian detaches from the worker
# (double fork); it sees its request pipe close, kills the running exec's
# process group and, being a child subreaper, every process the task's
# sandbox left behind (a subprocess-tier child lives in its own session under
# its own uid, so killing exec alone would orphan it), then exits.
GUARDIAN_SOURCE = r"""
import ctypes, json, os, signal, subprocess, sys, threading

# Leave the worker's children: Ray SIGKILLs those first on a force-cancel.
if os.fork() > 0:
    os._exit(0)
os.setsid()
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
requests = os.fdopen(0, "rb")
replies = os.fdopen(os.dup(1), "wb")
os.dup2(2, 1)
running = {}


def die_with_guardian():
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def run(request):
    try:
        proc = subprocess.Popen(request["argv"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=request["env"],
                                start_new_session=True, preexec_fn=die_with_guardian)
        running["proc"] = proc
        out, err = proc.communicate(request["stdin"].encode("utf-8"))
        running.pop("proc", None)
        reap()
        reply = {"rc": proc.returncode, "out": out.decode("utf-8", "replace"),
                 "err": err[-8192:].decode("utf-8", "replace")}
    except BaseException as e:  # the worker must always get an answer
        reply = {"spawn_error": type(e).__name__, "message": str(e)}
    replies.write(json.dumps(reply).encode("utf-8") + b"\n")
    replies.flush()


def children():
    mine = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat", "rb") as f:
                    if int(f.read().rsplit(b")", 1)[1].split()[1]) == os.getpid():
                        mine.append(int(pid))
            except (OSError, IndexError, ValueError):
                pass
    return mine


def reap():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def sweep():
    proc = running.get("proc")
    if proc is not None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
    for _ in range(50):
        left = children()
        if not left:
            return
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        for pid in left:
            try:
                os.waitpid(pid, 0)
            except OSError:
                pass


for line in requests:
    worker = threading.Thread(target=run, args=(json.loads(line),), daemon=True)
    worker.start()
# The worker is gone (a force-cancel, or Ray retired it).
sweep()
os._exit(0)
"""


def run_exec(binary, exec_args, task_json, cuda, guardian_source):
    """Runs `lattice-wasm exec` on this node. Self-contained: Ray ships it by value."""
    import json
    import os
    import subprocess
    import sys

    env = dict(os.environ)
    if cuda is None:
        # Ray assigned GPUs (num_gpus > 0) and set CUDA_VISIBLE_DEVICES itself.
        ids = [str(i) for i in ray.get_gpu_ids()]
        cuda = ",".join(ids)
        if len(ids) == 1:
            # The process tiers pin a task's GPU from its gpu_id.
            task = json.loads(task_json)
            if task.get("gpu_id") is None:
                task["gpu_id"] = int(float(ids[0]))
                task_json = json.dumps(task)
    # With no GPU asked for, Ray leaves the variable unset (every GPU visible).
    env["CUDA_VISIBLE_DEVICES"] = cuda

    request = {"argv": [binary, "exec", *exec_args], "env": env, "stdin": task_json}
    line = json.dumps(request).encode("utf-8") + b"\n"
    guardian = getattr(sys, "_lattice_guardian", None)
    for attempt in range(2):
        if guardian is None:
            launcher = subprocess.Popen(
                [sys.executable, "-I", "-c", guardian_source],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            launcher.wait()  # it forks the guardian off and exits at once
            guardian = (launcher.stdin, launcher.stdout)
            sys._lattice_guardian = guardian
        try:
            guardian[0].write(line)
            guardian[0].flush()
            break
        except OSError:
            # That guardian is gone (it never is while its worker lives,
            # but a retired one must not cost the task).
            sys._lattice_guardian = guardian = None
    answer = guardian[1].readline()
    if not answer:
        sys._lattice_guardian = None
        raise RuntimeError("the lattice guardian process of this Ray worker died")
    reply = json.loads(answer)
    if "spawn_error" in reply:
        # Typed, so that the executor can say "the binary is not there".
        kind = {"FileNotFoundError": FileNotFoundError, "PermissionError": PermissionError}
        raise kind.get(reply["spawn_error"], OSError)(reply["message"])
    reply["node"] = ray.get_runtime_context().get_node_id()
    return reply


REMOTE = ray.remote(run_exec)

_lock = threading.Lock()
_inflight = {}  # id -> ObjectRef of the current attempt
_cancelled = set()
_idle = threading.Condition(_lock)


def _error_class(name):
    return getattr(ray.exceptions, name, None) or type(name, (Exception,), {})


TaskCancelledError = _error_class("TaskCancelledError")
WorkerCrashedError = _error_class("WorkerCrashedError")
NodeDiedError = _error_class("NodeDiedError")
TaskUnschedulableError = _error_class("TaskUnschedulableError")
OutOfMemoryError = _error_class("OutOfMemoryError")
RayTaskError = _error_class("RayTaskError")
NODE_LOST = tuple(
    _error_class(n)
    for n in (
        "NodeDiedError",
        "LocalRayletDiedError",
        "ObjectLostError",
        "OwnerDiedError",
        "ObjectFetchTimedOutError",
    )
)


def submit(msg, attempt):
    options = {
        "num_cpus": msg["num_cpus"],
        "num_gpus": msg.get("num_gpus") or 0,
        # Retries are decided here: system failures once, task failures never.
        "max_retries": 0,
        "retry_exceptions": False,
    }
    if msg.get("memory"):
        options["memory"] = msg["memory"]
    if msg.get("node_id"):
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(
            node_id=msg["node_id"], soft=False
        )
    task_id = msg["id"]
    try:
        ref = REMOTE.options(**options).remote(
            CONFIG["binary"], ["--sandbox-config", msg["config"]], msg["task"], msg.get("cuda"),
            GUARDIAN_SOURCE
        )
    except BaseException as e:  # noqa: BLE001 - reported as the task's ending
        finish(task_id, {"ev": "failed", "id": task_id, "kind": "internal",
                         "type": type(e).__name__, "message": f"ray.remote failed: {e}"})
        return
    with _lock:
        _inflight[task_id] = ref
        cancelled = task_id in _cancelled
    if cancelled:
        ray.cancel(ref, force=True)
    ref.future().add_done_callback(lambda fut: on_done(msg, attempt, fut))


def finish(task_id, event):
    emit(event)
    with _lock:
        _inflight.pop(task_id, None)
        _cancelled.discard(task_id)
        _idle.notify_all()


def on_done(msg, attempt, fut):
    task_id = msg["id"]
    try:
        value = fut.result()
    except BaseException as e:  # noqa: BLE001 - every ending is reported
        with _lock:
            cancelled = task_id in _cancelled
        if cancelled or isinstance(e, TaskCancelledError):
            kind = "cancelled"
        elif isinstance(e, WorkerCrashedError) and attempt == 0:
            # Measured: the task after a force-cancel may land on a dying
            # worker. A system failure is retried once; a task failure never
            # gets here (it is the exec's result, not an exception).
            threading.Thread(target=submit, args=(msg, 1), daemon=True).start()
            return
        elif isinstance(e, NODE_LOST):
            kind = "node_failed"
        elif isinstance(e, TaskUnschedulableError):
            # Hard affinity to a node that is dead (or gone).
            kind = "node_failed" if msg.get("node_id") else "unschedulable"
        elif isinstance(e, OutOfMemoryError):
            kind = "memory_limit"
        elif isinstance(e, RayTaskError) and isinstance(
            getattr(e, "cause", None), (FileNotFoundError, PermissionError)
        ):
            kind = "unavailable"
        else:
            kind = "internal"
        message = str(e)
        cause = getattr(e, "cause", None)
        if kind == "unavailable" and cause is not None:
            message = f"{type(cause).__name__}: {cause}"
        finish(task_id, {"ev": "failed", "id": task_id, "kind": kind,
                         "type": type(e).__name__, "message": message[-4000:]})
        return
    finish(task_id, {"ev": "done", "id": task_id, **value})


def cancel(task_id):
    with _lock:
        _cancelled.add(task_id)
        ref = _inflight.get(task_id)
    if ref is not None:
        try:
            # force: a task blocked in its sandbox never sees a
            # KeyboardInterrupt (measured: force=False left it running).
            ray.cancel(ref, force=True)
        except Exception:  # noqa: BLE001 - it may have ended meanwhile
            pass


def available(req):
    try:
        per_node = ray._private.state.available_resources_per_node()
        emit({"ev": "reply", "req": req, "available": per_node})
    except Exception as e:  # noqa: BLE001 - the executor reports it
        emit({"ev": "reply", "req": req, "error": f"{type(e).__name__}: {e}"})


def shutdown():
    with _lock:
        refs = list(_inflight.values())
        _cancelled.update(_inflight.keys())
    for ref in refs:
        try:
            ray.cancel(ref, force=True)
        except Exception:  # noqa: BLE001 - best effort; the driver exit ends them too
            pass
    with _lock:
        _idle.wait_for(lambda: not _inflight, timeout=10)
    try:
        ray.shutdown()
    finally:
        os._exit(0)


def main():
    try:
        ray.init(
            address=CONFIG["address"],
            log_to_driver=False,
            logging_level="ERROR",
            namespace="lattice-wasm",
        )
    except BaseException as e:  # noqa: BLE001 - reported to the executor
        emit({"ev": "fatal", "kind": "connect", "message": f"{type(e).__name__}: {e}"})
        os._exit(4)
    emit({"ev": "ready", "ray": ray.__version__,
          "node": ray.get_runtime_context().get_node_id()})
    for line in sys.stdin:
        if not line.strip():
            continue
        msg = json.loads(line)
        op = msg.get("op")
        if op == "submit":
            submit(msg, 0)
        elif op == "cancel":
            cancel(msg["id"])
        elif op == "available":
            threading.Thread(target=available, args=(msg["req"],), daemon=True).start()
        elif op == "shutdown":
            shutdown()
    # The executor is gone (stdin closed): end everything we started.
    shutdown()


main()
