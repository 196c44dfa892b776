"""The executor contract shared by every backend.

The scheduler calls :meth:`Executor.submit` for a ready task, :meth:`Executor.poll` to collect
finished attempts, :meth:`Executor.cancel` to abandon one and :meth:`Executor.shutdown` at the
end. It never knows which backend it drives. A backend reports a lost worker as a failed attempt
(:class:`~smallpond.errors.WorkerLost`, retryable); it never hangs waiting for a dead process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional

from smallpond.execution.task import Task


@dataclass
class Completion:
    """A finished attempt: ``ok`` with the output ``dataset``, or not ok with ``error``."""

    key: str
    attempt: int
    ok: bool
    dataset: Any = None
    error: Optional[BaseException] = None
    elapsed: float = 0.0


class Executor:
    #: CPU units the backend offers (tasks with cpu_limit c use c units).
    num_cpus: int = 1
    #: Bytes of memory the backend offers.
    memory: int = 0

    def start(self) -> None:
        """Make workers ready (may return before they are)."""

    def free_slots(self) -> int:
        """How many more tasks could start now."""
        raise NotImplementedError

    def submit(self, task: Task, inputs: list, attempt: int) -> None:
        raise NotImplementedError

    def poll(self, timeout: float) -> List[Completion]:
        raise NotImplementedError

    def cancel(self, key: str) -> None:
        raise NotImplementedError

    def shutdown(self) -> None:
        raise NotImplementedError
