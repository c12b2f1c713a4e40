"""create_executor: an executor by type."""

from __future__ import annotations

from typing import Any

from ..errors import InvalidTaskError
from .base import ExecutorBackend, ExecutorType
from .local_executor import LocalExecutor
from .ray_executor import RayExecutor

__all__ = ["create_executor"]


def create_executor(executor_type: ExecutorType, **kwargs: Any) -> ExecutorBackend:
    """An executor of the given type; ``kwargs`` go to its constructor
    (:class:`LocalExecutor`: ``max_workers``, ``sandbox_config``;
    :class:`RayExecutor`: ``ray_head_port``, ``start_ray``, ``address``,
    ``python``, ``binary``, ``sandbox_config``, ...)."""
    try:
        executor_type = ExecutorType(executor_type)
    except ValueError:
        raise InvalidTaskError(f"Unknown executor type: {executor_type!r}") from None
    if executor_type == ExecutorType.RAY:
        return RayExecutor(**kwargs)
    return LocalExecutor(**kwargs)
