"""The local executor, and the operations both executors share."""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Tuple

from .. import _lattice
from .._core import Result, _json
from ..errors import InvalidTaskError
from .base import ExecutorBackend, ExecutorType, TaskHandle, TaskSubmission, function_source
from .sandbox import SandboxConfig

__all__ = ["LocalExecutor"]


class NativeExecutor(ExecutorBackend):
    """An executor of the native library (local or Ray): tasks run in the
    sandbox tier of its configuration (default: the process-wide one)."""

    _type: ExecutorType

    def __init__(self, options: Dict[str, Any], sandbox_config: Optional[SandboxConfig]) -> None:
        if sandbox_config is not None:
            options["sandbox"] = json.loads(sandbox_config.to_json())
        self._native = _lattice.Executor(self._type.value, json.dumps(options))

    def initialize(self) -> None:
        self._native.initialize()

    def submit(self, submission: TaskSubmission) -> TaskHandle:
        code, entry = function_source(submission.func)
        task: Dict[str, Any] = {
            "code": code,
            "args": list(submission.args or ()),
            "kwargs": dict(submission.kwargs or {}),
        }
        if entry is not None:
            task["entry"] = entry
        if submission.resources:
            task["resources"] = dict(submission.resources)
        if submission.node_id is not None:
            task["node_id"] = submission.node_id
        if submission.gpu_id is not None:
            task["gpu_id"] = submission.gpu_id
        handle_id = self._native.submit(_json("the task", task), None, None)
        return TaskHandle(handle_id=handle_id, executor_type=self._type, owner=self._native)

    def _id(self, handle: TaskHandle) -> int:
        if (
            not isinstance(handle, TaskHandle)
            or handle.executor_type != self._type
            or handle.owner not in (None, self._native)
        ):
            raise InvalidTaskError(f"{handle!r} is not a handle of this {self._type.value} executor")
        return handle.handle_id

    def get_result(self, handle: TaskHandle) -> Any:
        """The task's value (or its typed exception raised); asking again
        gives it again until :meth:`release`."""
        return Result._from_line(self._native.result(self._id(handle))).unwrap()

    def get_outcome(self, handle: TaskHandle, timeout: Optional[float] = None) -> Optional[Result]:
        """The task's whole :class:`~lattice_wasm.Result` (output, tier,
        node, duration), waiting up to ``timeout`` seconds (None: until it
        ends); None if it has not ended by then."""
        line = self._native.result(self._id(handle), timeout)
        return None if line is None else Result._from_line(line)

    def wait(
        self, handles: List[TaskHandle], timeout: Optional[float] = None
    ) -> Tuple[List[TaskHandle], List[TaskHandle]]:
        by_id = {self._id(h): h for h in handles}
        done, pending = self._native.wait([self._id(h) for h in handles], timeout)
        return [by_id[i] for i in done], [by_id[i] for i in pending]

    def cancel(self, handle: TaskHandle) -> bool:
        return self._native.cancel(self._id(handle))

    def release(self, handle: TaskHandle) -> None:
        """Forgets an ended task (its outcome is dropped), so long runs keep
        memory flat."""
        self._native.release(self._id(handle))

    def shutdown(self) -> None:
        self._native.shutdown()

    def get_available_resources(self) -> Dict[str, Any]:
        return json.loads(self._native.resources())

    def __enter__(self) -> "NativeExecutor":
        self.initialize()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()


class LocalExecutor(NativeExecutor):
    """Runs tasks on this machine, ``max_workers`` at once (default: one per core)."""

    _type = ExecutorType.LOCAL

    def __init__(
        self, max_workers: Optional[int] = None, sandbox_config: Optional[SandboxConfig] = None
    ) -> None:
        super().__init__({"max_workers": max_workers}, sandbox_config)
