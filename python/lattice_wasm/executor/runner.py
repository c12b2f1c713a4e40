"""CodeRunner: call the function a code string defines."""

from __future__ import annotations

from typing import Any

from .._core import Result
from .sandbox import get_sandbox_executor

__all__ = ["CodeRunner"]


class CodeRunner:
    """Runs ``code_str``'s function (the last top-level ``def``) with
    ``task_input_data``, in the tier of the process-wide sandbox
    configuration."""

    def __init__(self, code_str: str, task_input_data: Any) -> None:
        self.code_str = code_str
        self.task_input_data = task_input_data

    def run(self) -> Any:
        """The function's return value, or its typed exception raised
        (:class:`~lattice_wasm.errors.TaskError` when the code raised)."""
        record = get_sandbox_executor().execute(
            code_str=self.code_str, task_input_data=self.task_input_data
        )
        return Result._from_record(record).unwrap()
