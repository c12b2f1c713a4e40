"""The executor abstraction: ExecutorBackend and the task types."""

from __future__ import annotations

import ast
import inspect
import textwrap
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from ..errors import (
    InvalidTaskError,
    NodeFailedError,
    TaskCancelledError,
    TaskError,
)

__all__ = [
    "ExecutorBackend",
    "ExecutorType",
    "TaskHandle",
    "TaskSubmission",
    "TaskError",
    "TaskCancelledError",
    "NodeFailedError",
]


class ExecutorType(Enum):
    """Where tasks run."""

    RAY = "ray"
    LOCAL = "local"


@dataclass
class TaskSubmission:
    """A task: ``func`` called as ``func(*args, **kwargs)`` in the executor's
    sandbox tier.

    ``func`` is a module-level Python function (its source is shipped, so it
    must not use names of its module: import inside it) or Python source
    text defining one (the last top-level ``def`` is called). A lambda, a
    nested function or a closure can't be shipped: submitting one raises
    :class:`~lattice_wasm.errors.InvalidTaskError`. ``resources``: ``cpu``,
    ``cpu_mem`` (bytes), ``gpu``; ``node_id``: run on that node (Ray, hard
    affinity); ``gpu_id``: ``CUDA_VISIBLE_DEVICES``.
    """

    func: Union[Callable[..., Any], str]
    args: tuple = ()
    kwargs: Optional[Dict[str, Any]] = None
    resources: Optional[Dict[str, Any]] = None
    node_id: Optional[str] = None
    gpu_id: Optional[int] = None


@dataclass(frozen=True)
class TaskHandle:
    """A submitted task, to ask its executor about."""

    handle_id: Any
    executor_type: ExecutorType
    #: The executor that issued it (handles of two executors may share an id).
    owner: Any = field(default=None, compare=False, repr=False)


def function_source(func: Union[Callable[..., Any], str]) -> Tuple[str, Optional[str]]:
    """The source to ship for ``func`` and the entry to call (None: the
    source's last top-level ``def``)."""
    if isinstance(func, str):
        return func, None
    if not inspect.isfunction(func):
        raise InvalidTaskError(
            f"func must be a module-level Python function or source text, not {type(func).__name__}"
        )
    name = func.__name__
    if name == "<lambda>":
        raise InvalidTaskError(
            "a lambda can't be shipped to a sandbox: define a module-level function (def) instead"
        )
    if func.__qualname__ != name or func.__closure__:
        raise InvalidTaskError(
            f"{func.__qualname__} is a nested function or closure, which can't be shipped to a "
            "sandbox: define it at module level (and import what it needs inside it)"
        )
    try:
        lines, _ = inspect.getsourcelines(func)
    except (OSError, TypeError) as e:
        raise InvalidTaskError(f"the source of {name} is not available ({e}): pass it as text") from None
    # From the `def` line on: decorators name things of the caller's module.
    source = textwrap.dedent("".join(lines))
    tree = ast.parse(source)
    definition = tree.body[0]
    if definition.decorator_list:
        source = "\n".join(source.splitlines()[definition.lineno - 1 :]) + "\n"
    return source, name


class ExecutorBackend(ABC):
    """The executor operations (local and Ray implement them)."""

    @abstractmethod
    def initialize(self) -> None:
        """Gets ready to run tasks (starts workers, connects to a cluster)."""

    @abstractmethod
    def submit(self, submission: TaskSubmission) -> TaskHandle:
        """Queues a task; its handle is for the calls below."""

    @abstractmethod
    def get_result(self, handle: TaskHandle) -> Any:
        """Blocks until the task ends: its value, or the typed exception
        (:class:`TaskError`, :class:`TaskCancelledError`,
        :class:`NodeFailedError`, ...) raised."""

    @abstractmethod
    def wait(
        self, handles: List[TaskHandle], timeout: Optional[float] = None
    ) -> Tuple[List[TaskHandle], List[TaskHandle]]:
        """Waits up to ``timeout`` seconds (None: until all end; 0: just
        look); returns (done, pending) in the order given."""

    @abstractmethod
    def cancel(self, handle: TaskHandle) -> bool:
        """Cancels a queued or running task; False if it had ended."""

    @abstractmethod
    def shutdown(self) -> None:
        """Stops the executor; nothing it started keeps running."""

    @abstractmethod
    def get_available_resources(self) -> Dict[str, Any]:
        """``{"nodes": [{node_id, node_ip, alive, cpu, cpu_available,
        memory, memory_available, gpu, gpu_available}, ...]}``."""
