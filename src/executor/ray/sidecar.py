# The Ray sidecar of lattice-wasm's RayExecutor (src/executor/ray/executor.rs;
# the protocol's types are in protocol.rs).
#
# Ray has no Rust API, so the executor starts this script under a Python that
# has `ray` and talks to it in JSON lines: requests on stdin, events on
# stdout. Two paths:
# - warm: one actor per node (WarmWorker) keeps a `lattice-wasm ray-worker`
#   process (worker.rs) and passes it chunks of request lines; a thread per
#   actor long-polls it for outcome lines, which the worker writes as
#   events already and which go to the executor unread;
# - per task: one `ray.remote` call that runs `lattice-wasm exec` on its
#   node with the task's JSON on stdin; its ending is reported from a
#   `ref.future()` callback (no polling).
#
# Requests (one JSON object per line):
#   {"op": "submit", "id": N, "task": "<task json>", "config": "<sandbox config json>",
#    "num_cpus": 1.0, "memory": bytes|null, "num_gpus": 0.0, "node_id": hex|null,
#    "cuda": str|null}
#   {"op": "cancel", "id": N}
#   {"op": "send", "worker": W, "node": hex, "slots": N, "lines": "<worker request lines>"}
#   {"op": "available", "req": K}
#   {"op": "shutdown"}
# Events:
#   {"ev": "ready", "ray": version}
#   {"ev": "fatal", "kind": "no_ray"|"connect", "message": ...}
#   {"ev": "done", "id": N, "rc": int, "out": str, "err": str, "node": hex}
#   {"ev": "failed", "id": N, "kind": ..., "type": ..., "message": ...}
#   {"ev": "reply", "req": K, "available": {node_hex: {resource: amount}}}
#   {"ev": "outcome", "id": N, "outcome": "<result json>"}   (written by the worker)
#   {"ev": "lost", "worker": W, "kind": "node_failed"|"crashed"|"unavailable"|"internal",
#    "message": ...}
import json
import os
import sys
import threading
import time

# Only protocol lines may reach the executor: everything else that anything
# prints (Ray's own messages included) goes to stderr.
_PROTOCOL = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
os.dup2(2, 1)
sys.stdout = sys.stderr
_EMIT_LOCK = threading.Lock()


def emit(event):
    emit_lines(json.dumps(event) + "\n")


def emit_lines(text):
    with _EMIT_LOCK:
        _PROTOCOL.write(text)
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


class WarmWorker:
    """A node's warm worker: keeps one `lattice-wasm ray-worker` process.

    The process outlives this actor's own process on purpose (ray-worker
    runs under a keeper in a process group of its own: Ray kills an actor's
    direct children with it); when this actor dies, the worker's stdin
    closes, and it cancels its tasks, lets their tiers clean up and exits.
    Its stdout ends once the worker and its keeper's sweep are done.
    """

    def __init__(self, binary, slots):
        import subprocess

        env = dict(os.environ)
        # The warm path carries no GPU task: no GPU is visible to its tasks.
        env["CUDA_VISIBLE_DEVICES"] = ""
        launcher = subprocess.Popen(
            [binary, "ray-worker", "--slots", str(slots)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        # It starts the worker's keeper in a process group of its own and exits.
        if launcher.wait() != 0:
            raise RuntimeError(f"`{binary} ray-worker` exited with status {launcher.returncode}")
        self._stdin, self._stdout = launcher.stdin, launcher.stdout
        # Chunks are written in the order the executor sent them (a
        # threaded actor may start its calls in any order; one that comes
        # early waits here, not in a thread): tasks start on a node in the
        # order they were submitted.
        self._writing = threading.Lock()
        self._early = {}
        self._next = 0
        self._ready = threading.Condition()
        self._blocks = []  # whole lines, as the worker wrote them
        self._lines = 0  # how many lines the blocks hold
        self._ended = None
        self._waiting = 0  # tasks sent and not answered
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        fd, rest = self._stdout.fileno(), b""
        while True:
            data = os.read(fd, 1 << 16)
            if not data:
                break
            data = rest + data
            cut = data.rfind(b"\n") + 1
            rest = data[cut:]
            if cut:
                with self._ready:
                    self._blocks.append(data[:cut])
                    self._lines += data.count(b"\n", 0, cut)
                    self._ready.notify_all()
        with self._ready:
            self._ended = "the lattice worker process exited"
            self._ready.notify_all()

    def send(self, seq, text):
        runs = text.count('{"run":')
        with self._ready:
            self._waiting += runs
        with self._writing:
            self._early[seq] = text
            while self._next in self._early:
                self._stdin.write(self._early.pop(self._next).encode("utf-8"))
                self._next += 1
            self._stdin.flush()

    def poll(self):
        """The outcome lines written since the last poll (waiting up to 2 s
        for one), and why the worker ended, if it did. With more tasks
        running, it lingers up to 10 ms for more lines: every poll is a Ray
        call, which costs more than a trivial task."""
        with self._ready:
            self._ready.wait_for(lambda: self._lines or self._ended, timeout=2)
            if self._lines and self._waiting > self._lines:
                enough = min(self._waiting, 64)
                self._ready.wait_for(lambda: self._lines >= enough or self._ended, timeout=0.010)
            blocks, self._blocks = self._blocks, []
            self._waiting = max(0, self._waiting - self._lines)
            self._lines = 0
            return b"".join(blocks), self._ended

    def stop(self):
        """Closes the worker's stdin; returns once it has cleaned up and exited."""
        with self._writing:
            try:
                self._stdin.close()
            except OSError:
                pass
        with self._ready:
            self._ready.wait_for(lambda: self._ended, timeout=20)
        return True


WARM = ray.remote(WarmWorker)
_workers = {}  # worker id -> its actor
_sent = {}  # worker id -> how many sends it was given (their order)
_gone = set()  # worker ids reported lost: what is still sent to them is dropped
_stopping = threading.Event()

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


def send(msg):
    worker = msg["worker"]
    with _lock:
        if worker in _gone:
            return  # the executor has (or is about to have) its lost event
        actor = _workers.get(worker)
        if actor is None:
            actor = WARM.options(
                num_cpus=0,
                # send and stop run beside the long poll
                max_concurrency=4,
                max_restarts=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=msg["node"], soft=False),
            ).remote(CONFIG["binary"], msg["slots"])
            _workers[worker] = actor
            threading.Thread(target=pump, args=(worker, actor, msg["node"]), daemon=True).start()
        seq = _sent.get(worker, 0)
        _sent[worker] = seq + 1
    actor.send.remote(seq, msg["lines"])


def pump(worker, actor, node):
    """Passes a warm worker's outcome lines on until it is gone."""
    while not _stopping.is_set():
        try:
            lines, ended = ray.get(actor.poll.remote())
        except BaseException as e:  # noqa: BLE001 - the actor is gone: say why
            lost(worker, actor, node, e)
            return
        if lines:
            emit_lines(lines.decode("utf-8", "replace"))
        if ended:
            lost(worker, actor, node, None)
            return


def lost(worker, actor, node, error):
    with _lock:
        _workers.pop(worker, None)
        _gone.add(worker)
    if _stopping.is_set():
        return
    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # noqa: BLE001 - it may be gone already
        pass
    message = str(error) if error is not None else "the lattice worker process exited"
    if getattr(error, "actor_init_failed", False):
        # Its __init__ failed: the binary is missing or can't run there.
        unrunnable = any(n in message for n in ("FileNotFoundError", "PermissionError"))
        kind = "unavailable" if unrunnable else "internal"
    elif error is not None and node_died(node):
        # The actor died (a worker process that exited on its own is
        # reported by its live actor: a crash, nothing to wait for).
        kind = "node_failed"
        message = f"node {node} died ({message.splitlines()[0] if message else ''})"
    else:
        kind = "crashed"
    emit({"ev": "lost", "worker": worker, "kind": kind, "message": message[-4000:]})


def node_died(node, grace=5.0):
    """Whether `node` is dead, or dies within `grace` seconds (Ray sees a
    node's death some seconds after its worker processes do)."""
    deadline = time.monotonic() + grace
    while True:
        try:
            alive = any(n["NodeID"] == node and n["Alive"] for n in ray.nodes())
        except Exception:  # noqa: BLE001 - the GCS did not answer: assume alive
            alive = True
        if not alive:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.25)


def available(req):
    try:
        per_node = ray._private.state.available_resources_per_node()
        emit({"ev": "reply", "req": req, "available": per_node})
    except Exception as e:  # noqa: BLE001 - the executor reports it
        emit({"ev": "reply", "req": req, "error": f"{type(e).__name__}: {e}"})


def stop_workers():
    """Each warm worker cancels its tasks and exits (its tiers clean up
    first), then its actor is killed."""
    _stopping.set()
    with _lock:
        actors = list(_workers.values())
        _workers.clear()
    stops = [actor.stop.remote() for actor in actors]
    if stops:
        try:
            ray.wait(stops, num_returns=len(stops), timeout=15)
        except Exception:  # noqa: BLE001 - best effort; the kill below ends the actors
            pass
    for actor in actors:
        try:
            ray.kill(actor, no_restart=True)
        except Exception:  # noqa: BLE001
            pass


def shutdown():
    stop_workers()
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
        elif op == "send":
            send(msg)
        elif op == "available":
            threading.Thread(target=available, args=(msg["req"],), daemon=True).start()
        elif op == "shutdown":
            shutdown()
    # The executor is gone (stdin closed): end everything we started.
    shutdown()


main()
