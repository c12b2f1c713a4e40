"""lattice_wasm: run untrusted Python functions in a sandbox — WebAssembly by
default — from Python.

>>> import lattice_wasm
>>> lattice_wasm.run("def double(x):\\n    return 2 * x\\n", 21).unwrap()
42
>>> [r.result for r in lattice_wasm.map("def sq(x):\\n    return x * x\\n", [1, 2, 3])]
[1, 4, 9]

- :func:`run`, :func:`run_async`, :func:`map`: one-shot tasks; a
  :class:`Result` each.
- :class:`Session`: state kept across calls, host functions, snapshots.
- :mod:`lattice_wasm.errors`: one exception class per error kind.
- :mod:`lattice_wasm.executor`: the executor API of the original lattice
  framework (local and Ray executors, sandbox configuration, CodeRunner).
"""

from . import _lattice
from ._core import ErrorInfo, Result, Session, map, run, run_async
from .errors import (
    InternalError,
    InvalidTaskError,
    LatticeError,
    MemoryLimitError,
    NodeFailedError,
    SandboxUnavailableError,
    TaskCancelledError,
    TaskError,
    TaskTimeoutError,
)
from .executor.sandbox import SandboxLevel

__version__: str = _lattice.__version__

__all__ = [
    "run",
    "run_async",
    "map",
    "Session",
    "Result",
    "ErrorInfo",
    "SandboxLevel",
    "LatticeError",
    "TaskError",
    "TaskTimeoutError",
    "MemoryLimitError",
    "TaskCancelledError",
    "NodeFailedError",
    "SandboxUnavailableError",
    "InvalidTaskError",
    "InternalError",
]
