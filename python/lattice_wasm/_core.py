"""run, run_async, map and Session: the package's own API over the native module.

Tasks travel to the native module as the library's task JSON and come back as
its result JSON, so there is one codec; this module turns them into
:class:`Result` objects and typed exceptions.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import inspect
import json
import os
import threading
from dataclasses import dataclass, field
from typing import (
    Any,
    Awaitable,
    Callable,
    Dict,
    Iterable,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Union,
)

from . import _lattice
from .errors import InvalidTaskError, LatticeError, from_record

__all__ = ["Result", "ErrorInfo", "Session", "run", "run_async", "map"]

#: "No input given" (as opposed to ``input=None``, which passes ``None``).
_MISSING: Any = object()

HostFunction = Callable[..., Any]
Mounts = Union[Mapping[str, str], Sequence[str], None]


@dataclass(frozen=True)
class ErrorInfo:
    """Why a task produced no result: its ``kind`` (``task_error``,
    ``timeout``, ``memory_limit``, ``cancelled``, ``node_failed``,
    ``sandbox_unavailable``, ``invalid_task``, ``internal``), the
    exception's ``type`` name, ``message`` and ``traceback``."""

    kind: str
    type: str
    message: str
    traceback: str

    def exception(self) -> LatticeError:
        """The typed exception of this error (see :mod:`lattice_wasm.errors`)."""
        return from_record(self.__dict__)


@dataclass(frozen=True)
class Result:
    """What a task (or a session call) gave back.

    ``status`` is ``"ok"`` (``result`` holds the value) or ``"error"``
    (``error`` says why); ``stdout``/``stderr`` are what it printed. A
    script (``script=True``) has its ``exit_code`` and the ``files`` it was
    asked to send back; a session's ``exec`` has the ``repr`` of its final
    expression and ``session``, what the call left of the session
    (``ready``, ``interrupted``, ``rolled_back`` or ``closed``).
    """

    status: str
    result: Any
    stdout: str
    stderr: str
    error: Optional[ErrorInfo]
    tier: Optional[str]
    node_id: Optional[str]
    duration_ms: float
    exit_code: Optional[int] = None
    files: Dict[str, bytes] = field(default_factory=dict)
    repr: Optional[str] = None
    session: Optional[str] = None

    @property
    def ok(self) -> bool:
        """True if the task returned a result."""
        return self.status == "ok"

    def unwrap(self) -> Any:
        """The result, or the typed exception raised (a subclass of
        :class:`~lattice_wasm.errors.LatticeError`)."""
        if self.error is not None:
            raise self.error.exception()
        return self.result

    @classmethod
    def _from_line(cls, line: str) -> "Result":
        return cls._from_record(json.loads(line))

    @classmethod
    def _from_record(cls, record: Mapping[str, Any]) -> "Result":
        error = record.get("error")
        files = record.get("files") or {}
        return cls(
            status=record["status"],
            result=record.get("result"),
            stdout=record.get("stdout", ""),
            stderr=record.get("stderr", ""),
            error=ErrorInfo(**error) if error else None,
            tier=record.get("tier"),
            node_id=record.get("node_id"),
            duration_ms=record.get("duration_ms", 0.0),
            exit_code=record.get("exit_code"),
            files={path: base64.b64decode(data) for path, data in files.items()},
        )

    @classmethod
    def _from_reply(cls, line: str, tier: str) -> "Result":
        reply = json.loads(line)
        error = reply.get("error")
        return cls(
            status=reply["status"],
            result=reply.get("value"),
            stdout=reply.get("stdout", ""),
            stderr=reply.get("stderr", ""),
            error=ErrorInfo(**error) if error else None,
            tier=tier,
            node_id="local",
            duration_ms=reply.get("duration_ms", 0.0),
            repr=reply.get("repr"),
            session=reply.get("session"),
        )


# ---------------------------------------------------------------- JSON in


def _json(what: str, value: Any) -> str:
    try:
        return json.dumps(value, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as e:
        raise InvalidTaskError(f"{what} is not JSON: {e}") from None


def _name(value: Any) -> Any:
    """An enum's value (SandboxLevel.WASM -> "wasm"), anything else as is."""
    return getattr(value, "value", value)


def _mounts(mounts: Mounts) -> Optional[List[str]]:
    """``{host: guest}`` (read-only) or ``["HOST:GUEST[:rw]", ...]``."""
    if mounts is None:
        return None
    if isinstance(mounts, Mapping):
        return [f"{os.fspath(host)}:{guest}" for host, guest in mounts.items()]
    if isinstance(mounts, str):
        return [mounts]
    return [os.fspath(m) for m in mounts]


def _seconds(value: Optional[float]) -> Optional[float]:
    return None if value is None else float(value)


def task_fields(
    *,
    tier: Any = None,
    timeout_s: Optional[float] = None,
    max_memory_mb: Optional[int] = None,
    max_cpu_time_s: Optional[float] = None,
    allowed_imports: Optional[Iterable[str]] = None,
    mounts: Mounts = None,
    network: Optional[bool] = None,
) -> Dict[str, Any]:
    """The sandbox settings of a task line (only those given)."""
    fields = {
        "tier": _name(tier),
        "timeout_s": _seconds(timeout_s),
        "max_memory_mb": max_memory_mb,
        "max_cpu_time_s": _seconds(max_cpu_time_s),
        "allowed_imports": None if allowed_imports is None else list(allowed_imports),
        "mounts": _mounts(mounts),
        "network": network,
    }
    return {k: v for k, v in fields.items() if v is not None}


def _task(
    code: str,
    input: Any,
    *,
    args: Optional[Sequence[Any]],
    kwargs: Optional[Mapping[str, Any]],
    entry: Optional[str],
    script: bool,
    stdin: Optional[str],
    files: Optional[Mapping[str, Union[bytes, str]]],
    fetch_files: Optional[Sequence[str]],
    **settings: Any,
) -> Dict[str, Any]:
    if not isinstance(code, str):
        raise InvalidTaskError(f"code must be Python source text, not {type(code).__name__}")
    task: Dict[str, Any] = {"code": code, **task_fields(**settings)}
    if input is not _MISSING:
        task["input"] = input
    if args is not None:
        task["args"] = list(args)
    if kwargs is not None:
        task["kwargs"] = dict(kwargs)
    if entry is not None:
        task["entry"] = entry
    if script:
        task["script"] = True
    if stdin is not None:
        task["stdin"] = stdin
    if files:
        task["files"] = {
            path: base64.b64encode(data.encode() if isinstance(data, str) else data).decode()
            for path, data in files.items()
        }
    if fetch_files:
        task["fetch_files"] = list(fetch_files)
    return task


# ---------------------------------------------------------- host functions


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _settle(value: Any, loop: Optional[asyncio.AbstractEventLoop]) -> Any:
    """The value of an async host function's awaitable: on ``loop`` (the
    caller's, when it is free: ``run_async``), else on a loop of its own."""
    if not inspect.isawaitable(value):
        return value
    if loop is not None and loop.is_running():
        try:
            running_here = asyncio.get_running_loop() is loop
        except RuntimeError:
            running_here = False
        if not running_here:
            return asyncio.run_coroutine_threadsafe(_awaited(value), loop).result()
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_awaited(value))
    # This thread's loop is blocked in the call: await on a thread of its own.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, _awaited(value)).result()


def _dispatcher(
    functions: Optional[Mapping[str, HostFunction]],
    loop: Optional[asyncio.AbstractEventLoop] = None,
) -> Tuple[Optional[List[str]], Optional[Callable[[str, str, str], Tuple[bool, str]]]]:
    """The names and the one callable the native module calls them through:
    ``dispatch(name, args_json, kwargs_json) -> (ok, result_json | message)``.
    An exception becomes the message the sandboxed code's ``HostError``
    carries (its type and text; never the host's traceback)."""
    if not functions:
        return None, None
    table = dict(functions)
    for name, function in table.items():
        if not callable(function):
            raise InvalidTaskError(f"host function {name!r} is not callable")

    def dispatch(name: str, args_json: str, kwargs_json: str) -> Tuple[bool, str]:
        try:
            value = table[name](*json.loads(args_json), **json.loads(kwargs_json))
            return True, json.dumps(_settle(value, loop), allow_nan=False)
        except Exception as e:  # every failure of the function goes back to the code
            return False, f"{type(e).__name__}: {e}"

    return list(table), dispatch


# ------------------------------------------------------------- executors

#: Local executors by concurrency (None: one task per core), made on first
#: use; the least recently made go beyond a few.
_executors: Dict[Optional[int], Any] = {}
_executors_lock = threading.Lock()
_EXECUTORS_KEPT = 4


def _local_executor(concurrency: Optional[int] = None) -> Any:
    """The process's local executor running ``concurrency`` tasks at once."""
    if concurrency is not None and (
        not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1
    ):
        raise InvalidTaskError(f"concurrency must be a positive int, not {concurrency!r}")
    with _executors_lock:
        executor = _executors.get(concurrency)
        if executor is None:
            executor = _lattice.Executor("local", json.dumps({"max_workers": concurrency}))
            _executors[concurrency] = executor
            while len(_executors) > _EXECUTORS_KEPT:
                # Shut down once no call holds it any more.
                del _executors[next(iter(_executors))]
        return executor


def _one_task(
    code: str,
    input: Any,
    *,
    functions: Optional[Mapping[str, HostFunction]] = None,
    loop: Optional[asyncio.AbstractEventLoop] = None,
    args: Optional[Sequence[Any]] = None,
    kwargs: Optional[Mapping[str, Any]] = None,
    entry: Optional[str] = None,
    script: bool = False,
    stdin: Optional[str] = None,
    files: Optional[Mapping[str, Union[bytes, str]]] = None,
    fetch_files: Optional[Sequence[str]] = None,
    tier: Any = "wasm",
    network: bool = False,
    **settings: Any,
) -> Tuple[str, Optional[List[str]], Any]:
    """A task line, and its host functions as the native module takes them."""
    task = _task(
        code,
        input,
        args=args,
        kwargs=kwargs,
        entry=entry,
        script=script,
        stdin=stdin,
        files=files,
        fetch_files=fetch_files,
        tier=tier,
        network=network,
        **settings,
    )
    names, dispatch = _dispatcher(functions, loop)
    return _json("the task", task), names, dispatch


def run(
    code: str,
    input: Any = _MISSING,
    *,
    args: Optional[Sequence[Any]] = None,
    kwargs: Optional[Mapping[str, Any]] = None,
    entry: Optional[str] = None,
    tier: Any = "wasm",
    timeout_s: Optional[float] = None,
    max_memory_mb: Optional[int] = None,
    max_cpu_time_s: Optional[float] = None,
    allowed_imports: Optional[Iterable[str]] = None,
    mounts: Mounts = None,
    network: bool = False,
    script: bool = False,
    stdin: Optional[str] = None,
    files: Optional[Mapping[str, Union[bytes, str]]] = None,
    fetch_files: Optional[Sequence[str]] = None,
    functions: Optional[Mapping[str, HostFunction]] = None,
) -> Result:
    """Runs ``code`` in a sandbox tier and returns its :class:`Result`.

    ``code`` defines a function; it is called with ``input`` (one argument),
    or with ``*args, **kwargs``, or with nothing. ``entry`` names it
    (default: the last top-level ``def``). With ``script=True`` the code is
    a program run as ``__main__`` with ``stdin`` on its standard input
    (``files`` are put beside it first; ``fetch_files`` come back in
    ``Result.files``). ``functions`` are host functions the code may call by
    name. The GIL is released while the task runs; Ctrl-C cancels it.

    >>> import lattice_wasm
    >>> lattice_wasm.run("def double(x):\\n    return 2 * x\\n", 21).unwrap()
    42
    """
    task, names, dispatch = _one_task(
        code,
        input,
        functions=functions,
        args=args,
        kwargs=kwargs,
        entry=entry,
        script=script,
        stdin=stdin,
        files=files,
        fetch_files=fetch_files,
        tier=tier,
        timeout_s=timeout_s,
        max_memory_mb=max_memory_mb,
        max_cpu_time_s=max_cpu_time_s,
        allowed_imports=allowed_imports,
        mounts=mounts,
        network=network,
    )
    return Result._from_line(_local_executor().run(task, names, dispatch))


_waiters: Optional[concurrent.futures.ThreadPoolExecutor] = None


def _waiter_pool() -> concurrent.futures.ThreadPoolExecutor:
    # Threads that only wait (the GIL released) for run_async's tasks.
    global _waiters
    with _executors_lock:
        if _waiters is None:
            _waiters = concurrent.futures.ThreadPoolExecutor(64, thread_name_prefix="lattice-wait")
        return _waiters


async def run_async(code: str, input: Any = _MISSING, **options: Any) -> Result:
    """:func:`run` for asyncio (the same options): awaits the task without
    blocking the loop; cancelling the awaiting coroutine cancels the task.
    Async host functions run on this loop."""
    loop = asyncio.get_running_loop()
    task, names, dispatch = _one_task(code, input, loop=loop, **options)
    executor = _local_executor()
    handle = executor.submit(task, names, dispatch)
    try:
        # The waiting thread forgets the task once it has ended, also after a cancel.
        line = await loop.run_in_executor(_waiter_pool(), executor.take, handle)
    except asyncio.CancelledError:
        executor.cancel(handle)
        raise
    return Result._from_line(line)


def map(
    code: str,
    inputs: Iterable[Any],
    *,
    concurrency: Optional[int] = None,
    entry: Optional[str] = None,
    tier: Any = "wasm",
    timeout_s: Optional[float] = None,
    max_memory_mb: Optional[int] = None,
    max_cpu_time_s: Optional[float] = None,
    allowed_imports: Optional[Iterable[str]] = None,
    mounts: Mounts = None,
    network: bool = False,
    functions: Optional[Mapping[str, HostFunction]] = None,
) -> List[Result]:
    """Runs ``code``'s function once per input, ``concurrency`` at a time
    (default: one per core), and returns the results in input order — the
    batch call of evaluation and RL loops. A failing input does not stop the
    others: each :class:`Result` says how its input went."""
    template = _task(
        code,
        _MISSING,
        args=None,
        kwargs=None,
        entry=entry,
        script=False,
        stdin=None,
        files=None,
        fetch_files=None,
        tier=tier,
        timeout_s=timeout_s,
        max_memory_mb=max_memory_mb,
        max_cpu_time_s=max_cpu_time_s,
        allowed_imports=allowed_imports,
        mounts=mounts,
        network=network,
    )
    encoded = [_json(f"input {i}", value) for i, value in enumerate(inputs)]
    names, dispatch = _dispatcher(functions)
    executor = _local_executor(concurrency)
    lines = executor.map(_json("the task", template), encoded, names, dispatch)
    return [Result._from_line(line) for line in lines]


# ---------------------------------------------------------------- sessions


class Session:
    """Python state kept across calls, REPL-style, on one tier.

    ``exec(code)`` runs code in the session's namespace (the value of a final
    expression is the result, its ``repr`` in ``Result.repr``); ``call``
    calls a function defined earlier. ``functions`` are host functions the
    code calls by name (sync or async callables; an exception they raise is
    raised inside the sandbox as ``HostError``). Limits: ``timeout_s`` and
    ``max_cpu_time_s`` per call, ``max_memory_mb`` over the session's life;
    what is not given comes from the process-wide sandbox configuration
    (:func:`lattice_wasm.executor.set_sandbox_config`).
    On the wasm tier a session can be saved (``snapshot``), reopened in
    another process (``Session.restore``) and copied (``fork``). Close it
    (or use it as a context manager): its interpreter, process or container
    is gone then. Calls from several threads take turns.

    >>> from lattice_wasm import Session
    >>> with Session() as s:
    ...     _ = s.exec("x = 20")
    ...     s.exec("x + 1").unwrap()
    21
    """

    def __init__(
        self,
        tier: Any = "wasm",
        *,
        functions: Optional[Mapping[str, HostFunction]] = None,
        timeout_s: Optional[float] = None,
        max_memory_mb: Optional[int] = None,
        max_cpu_time_s: Optional[float] = None,
        allowed_imports: Optional[Iterable[str]] = None,
        mounts: Mounts = None,
        network: bool = False,
        docker_image: Optional[str] = None,
        idle_timeout_s: Optional[float] = None,
        _snapshot: Optional[bytes] = None,
        _native: Any = None,
    ) -> None:
        self._functions = dict(functions or {})
        if _native is not None:
            self._native = _native
            return
        config = json.loads(_lattice.get_sandbox_config())
        config.update(
            task_fields(
                tier=tier,
                timeout_s=timeout_s,
                max_memory_mb=max_memory_mb,
                max_cpu_time_s=max_cpu_time_s,
                allowed_imports=allowed_imports,
                mounts=mounts,
                network=network,
            )
        )
        if docker_image is not None:
            config["docker_image"] = docker_image
        names, dispatch = _dispatcher(self._functions)
        self._native = _lattice.Session(
            json.dumps(config), idle_timeout_s, names, dispatch, _snapshot
        )

    @classmethod
    def restore(
        cls,
        snapshot: bytes,
        *,
        functions: Optional[Mapping[str, HostFunction]] = None,
        **limits: Any,
    ) -> "Session":
        """A session from :meth:`snapshot`'s bytes (made by this build, in
        this process or another; wasm tier). Bytes of another build, or
        corrupted, raise :class:`~lattice_wasm.errors.InvalidTaskError`."""
        if not isinstance(snapshot, (bytes, bytearray, memoryview)):
            raise InvalidTaskError(f"a snapshot is bytes, not {type(snapshot).__name__}")
        return cls(functions=functions, _snapshot=bytes(snapshot), **limits)

    @property
    def tier(self) -> str:
        """The tier the session runs on."""
        return self._native.tier

    @property
    def is_open(self) -> bool:
        """True until the session is closed (by :meth:`close`, its idle
        timeout, or a call its interpreter could not survive)."""
        return self._native.is_open

    def exec(self, code: str) -> Result:
        """Runs ``code`` in the session's namespace, as a REPL does."""
        return Result._from_reply(self._native.exec(code), self.tier)

    def call(
        self,
        entry: str,
        input: Any = _MISSING,
        *,
        args: Optional[Sequence[Any]] = None,
        kwargs: Optional[Mapping[str, Any]] = None,
    ) -> Result:
        """Calls the function ``entry`` the session defined, with ``input``
        (one argument) or ``*args, **kwargs``."""
        call: Dict[str, Any] = {}
        if input is not _MISSING:
            if args is not None or kwargs is not None:
                raise InvalidTaskError("give input, or args and kwargs, not both")
            call["input"] = input
        if args is not None:
            call["args"] = list(args)
        if kwargs is not None:
            call["kwargs"] = dict(kwargs)
        return Result._from_reply(self._native.call(entry, _json("the call", call)), self.tier)

    def snapshot(self) -> bytes:
        """The session's state as bytes (wasm tier): what differs from the
        guest's base image, compressed; nothing of the host's."""
        return self._native.snapshot()

    def fork(self) -> "Session":
        """An independent copy (wasm tier), with the same host functions."""
        return Session(functions=self._functions, _native=self._native.fork())

    def statements(self, code: str) -> List[str]:
        """``code``'s top-level statements, as a REPL reads them."""
        return self._native.statements(code)

    def close(self) -> None:
        """Closes the session; closing again does nothing."""
        self._native.close()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "open" if self.is_open else "closed"
        return f"<lattice_wasm.Session tier={self.tier} {state}>"
