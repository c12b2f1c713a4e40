"""The lattice executor API: executors, sandbox tiers, CodeRunner.

The same names as the original lattice framework's ``lattice.executor``
(``ExecutorType``, ``TaskSubmission``, ``TaskHandle``, ``create_executor``,
``SandboxLevel``, ``SandboxConfig``, ``SandboxExecutor``, ``CodeRunner``,
``TaskError``, ``TaskCancelledError``, ``NodeFailedError``), so code written
for it switches by changing the import. Tasks run in a sandbox tier (wasm
by default), so a ``func`` is shipped as its source.

>>> from lattice_wasm.executor import ExecutorType, TaskSubmission, create_executor
>>> executor = create_executor(ExecutorType.LOCAL)
>>> executor.initialize()
>>> handle = executor.submit(TaskSubmission("def add(a, b):\\n    return a + b\\n", args=(2, 3)))
>>> executor.get_result(handle)
5
>>> executor.shutdown()
"""

from ..errors import NodeFailedError, TaskCancelledError, TaskError
from .base import ExecutorBackend, ExecutorType, TaskHandle, TaskSubmission
from .factory import create_executor
from .local_executor import LocalExecutor
from .ray_executor import RayExecutor
from .runner import CodeRunner
from .sandbox import (
    SandboxConfig,
    SandboxExecutor,
    SandboxLevel,
    get_sandbox_config,
    get_sandbox_executor,
    set_sandbox_config,
)

__all__ = [
    "ExecutorBackend",
    "ExecutorType",
    "TaskHandle",
    "TaskSubmission",
    "create_executor",
    "LocalExecutor",
    "RayExecutor",
    "SandboxLevel",
    "SandboxConfig",
    "SandboxExecutor",
    "set_sandbox_config",
    "get_sandbox_config",
    "get_sandbox_executor",
    "CodeRunner",
    "TaskError",
    "TaskCancelledError",
    "NodeFailedError",
]
