"""Sandbox tiers and their configuration; the process-wide configuration."""

from __future__ import annotations

import base64
import json
import os
import threading
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List, Optional, Union

from .. import _lattice
from .._core import _json, _mounts

__all__ = [
    "SandboxLevel",
    "SandboxConfig",
    "SandboxExecutor",
    "set_sandbox_config",
    "get_sandbox_config",
    "get_sandbox_executor",
]


class SandboxLevel(Enum):
    """How a task is isolated (``lattice-wasm doctor`` says which run here)."""

    #: RustPython compiled to WebAssembly, in-process (the default).
    WASM = "wasm"
    #: In-process native RustPython: no isolation, trusted code only.
    NONE = "none"
    #: A CPython process under rlimits, as an unprivileged user.
    SUBPROCESS = "subprocess"
    #: SUBPROCESS plus a seccomp system-call filter.
    SECCOMP = "seccomp"
    #: A CPython container (Docker engine).
    DOCKER = "docker"


@dataclass
class SandboxConfig:
    """How tasks are isolated and limited. Times in seconds; ``mount_paths``
    maps host paths to guest paths (read-only; a guest path ending in
    ``:rw`` is writable)."""

    level: SandboxLevel = SandboxLevel.WASM
    timeout: float = 300
    max_memory_mb: int = 2048
    max_cpu_time: float = 300
    allowed_imports: Optional[List[str]] = None
    docker_image: str = "python:3.11-slim"
    network_enabled: bool = False
    mount_paths: Dict[str, str] = field(default_factory=dict)
    allowed_syscalls: Optional[List[int]] = None
    #: Seccomp tier: kill the task on a forbidden system call (instead of EPERM).
    seccomp_kill: bool = False
    #: Cap on each of stdout and stderr kept per task.
    max_output_bytes: int = 1 << 20
    #: Cap on a task's result, as JSON text.
    max_result_bytes: int = 16 << 20

    def to_json(self) -> str:
        """The configuration as the library's JSON."""
        level = SandboxLevel(self.level)
        return _json(
            "the sandbox configuration",
            {
                "tier": level.value,
                "timeout_s": float(self.timeout),
                "max_memory_mb": self.max_memory_mb,
                "max_cpu_time_s": float(self.max_cpu_time),
                "allowed_imports": self.allowed_imports,
                "docker_image": self.docker_image,
                "network": self.network_enabled,
                "mounts": _mounts(self.mount_paths) or [],
                "allowed_syscalls": self.allowed_syscalls,
                "seccomp_kill": self.seccomp_kill,
                "max_output_bytes": self.max_output_bytes,
                "max_result_bytes": self.max_result_bytes,
            },
        )


_config = SandboxConfig()
_config_lock = threading.Lock()


def set_sandbox_config(config: SandboxConfig) -> None:
    """Sets the process-wide configuration (executors made without one of
    their own use it)."""
    global _config, _default_executor
    with _config_lock:
        _lattice.set_sandbox_config(config.to_json())
        _config = config
        _default_executor = None


def get_sandbox_config() -> SandboxConfig:
    """The process-wide configuration (the defaults until set)."""
    with _config_lock:
        return _config


class SandboxExecutor:
    """Runs code in the tier its configuration names (on a local executor
    of its own, one task per core)."""

    def __init__(self, config: Optional[SandboxConfig] = None) -> None:
        self.config = config or get_sandbox_config()
        options = json.dumps({"sandbox": json.loads(self.config.to_json())})
        self._executor = _lattice.Executor("local", options)

    def execute(
        self,
        code_str: Optional[str] = None,
        serialized_code: Union[bytes, str, "os.PathLike[str]", None] = None,
        task_input_data: Any = None,
    ) -> Dict[str, Any]:
        """Runs Python source (``code_str``) or a Wasm module
        (``serialized_code``: its bytes or its path) with
        ``task_input_data``; returns the result record: ``status``
        (``ok``/``error``), ``result``, ``error`` (``kind``, ``type``,
        ``message``, ``traceback``), ``stdout``, ``stderr``, ``tier``,
        ``node_id``, ``duration_ms``."""
        task: Dict[str, Any] = {"input": task_input_data}
        if code_str is not None:
            task["code"] = code_str
        if isinstance(serialized_code, (bytes, bytearray)):
            task["wasm"] = {"base64": base64.b64encode(serialized_code).decode()}
        elif serialized_code is not None:
            task["wasm"] = os.fspath(serialized_code)
        line = self._executor.run(_json("the task", task), None, None)
        return json.loads(line)


_default_executor: Optional[SandboxExecutor] = None


def get_sandbox_executor() -> SandboxExecutor:
    """A :class:`SandboxExecutor` with the process-wide configuration (one,
    made on first use and again after :func:`set_sandbox_config`)."""
    global _default_executor
    with _config_lock:
        if _default_executor is None or _default_executor.config is not _config:
            _default_executor = SandboxExecutor(_config)
        return _default_executor
