"""The exceptions of lattice_wasm: one class per error kind of a task.

Every error a task (or a session call) can end with has a ``kind``; each kind
has its class here, all under :class:`LatticeError`. Each carries the
error's ``kind``, ``type`` (the Python exception's type name for a
``TaskError``), ``message`` and ``traceback`` (the task's own frames).
"""

from __future__ import annotations

import json
from typing import Any, Dict, Mapping, Optional, Type

__all__ = [
    "LatticeError",
    "TaskError",
    "TaskTimeoutError",
    "MemoryLimitError",
    "TaskCancelledError",
    "NodeFailedError",
    "SandboxUnavailableError",
    "InvalidTaskError",
    "InternalError",
    "from_record",
]


class LatticeError(Exception):
    """A task (or a call of a session) that produced no result, and why."""

    #: The error kind, as the result JSON names it.
    kind: str = "internal"

    def __init__(
        self,
        message: str = "",
        *,
        type: Optional[str] = None,
        traceback: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.type = type or self.__class__.__name__
        self.traceback = traceback

    def __str__(self) -> str:
        if self.type and self.type != self.__class__.__name__:
            return f"{self.type}: {self.message}"
        return self.message

    def to_record(self) -> Dict[str, Any]:
        """The error as the result JSON's ``error`` object."""
        return {
            "kind": self.kind,
            "type": self.type,
            "message": self.message,
            "traceback": self.traceback,
        }


class TaskError(LatticeError):
    """The task's own code raised: ``type`` is the exception's type name
    (``ValueError``, ...), ``traceback`` the task's frames."""

    kind = "task_error"


class TaskTimeoutError(LatticeError, TimeoutError):
    """A time limit fired (``type`` says which: ``WallTimeout`` or ``CpuTimeout``)."""

    kind = "timeout"


class MemoryLimitError(LatticeError, MemoryError):
    """The task went past its memory limit."""

    kind = "memory_limit"


class TaskCancelledError(LatticeError):
    """The task was cancelled before it finished."""

    kind = "cancelled"


class NodeFailedError(LatticeError):
    """The node running the task died or became unreachable."""

    kind = "node_failed"


class SandboxUnavailableError(LatticeError):
    """The tier (or the executor) can't run here; the message says how to fix it."""

    kind = "sandbox_unavailable"


class InvalidTaskError(LatticeError, ValueError):
    """The task was rejected before it ran (bad arguments, syntax error, no
    function, a setting the tier can't honour, ...)."""

    kind = "invalid_task"


class InternalError(LatticeError):
    """A fault of lattice itself."""

    kind = "internal"


_BY_KIND: Dict[str, Type[LatticeError]] = {
    cls.kind: cls
    for cls in (
        TaskError,
        TaskTimeoutError,
        MemoryLimitError,
        TaskCancelledError,
        NodeFailedError,
        SandboxUnavailableError,
        InvalidTaskError,
        InternalError,
    )
}


def from_record(record: Mapping[str, Any]) -> LatticeError:
    """The exception of a result JSON's ``error`` object."""
    cls = _BY_KIND.get(record.get("kind", ""), InternalError)
    return cls(
        record.get("message", ""),
        type=record.get("type") or None,
        traceback=record.get("traceback", ""),
    )


def from_record_json(text: str) -> LatticeError:
    """:func:`from_record` of the object's JSON text (the native module's way in)."""
    return from_record(json.loads(text))
