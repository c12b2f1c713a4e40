"""The Ray executor: tasks run on the nodes of a Ray cluster."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from typing import Any, Dict, Optional

from ..errors import SandboxUnavailableError
from .base import ExecutorType
from .local_executor import NativeExecutor
from .sandbox import SandboxConfig

__all__ = ["RayExecutor"]


class RayExecutor(NativeExecutor):
    """Runs tasks on a Ray cluster: each in the sandbox tier on its node,
    through the ``lattice-wasm`` binary there.

    ``address`` (GCS ``host:port`` or dashboard URL) connects to a running
    cluster; without it, ``start_ray`` starts a head on this machine on
    ``ray_head_port`` (stopped at shutdown). ``python`` is a Python with
    ``ray`` installed (default: ``$LATTICE_RAY_PYTHON``, else this one if it
    has ``ray``, else ``python3``); ``binary`` the path of ``lattice-wasm``
    on the nodes (default: the one on ``PATH``).
    """

    _type = ExecutorType.RAY

    def __init__(
        self,
        ray_head_port: int = 6379,
        start_ray: bool = True,
        *,
        address: Optional[str] = None,
        dashboard: Optional[str] = None,
        python: Optional[str] = None,
        binary: Optional[str] = None,
        sandbox_config: Optional[SandboxConfig] = None,
        default_cpus: Optional[float] = None,
        head_dashboard_port: Optional[int] = None,
        connect_timeout_s: Optional[float] = None,
    ) -> None:
        if address is None and not start_ray:
            address = os.environ.get("RAY_ADDRESS") or f"127.0.0.1:{ray_head_port}"
        binary = binary or shutil.which("lattice-wasm")
        if binary is None:
            raise SandboxUnavailableError(
                "the Ray executor runs the lattice-wasm binary on the nodes: install it "
                "(cargo install --path . in the lattice-wasm repository) or pass binary="
            )
        if python is None and not os.environ.get("LATTICE_RAY_PYTHON"):
            if importlib.util.find_spec("ray") is not None:
                python = sys.executable
        options: Dict[str, Any] = {
            "address": address,
            "dashboard": dashboard,
            "python": python,
            "binary": os.fspath(binary),
            "head_port": ray_head_port,
            "head_dashboard_port": head_dashboard_port,
            "default_cpus": default_cpus,
            "connect_timeout_s": connect_timeout_s,
        }
        super().__init__(options, sandbox_config)
