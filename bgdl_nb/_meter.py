"""The byte meter: how many bytes each transferring task received since it was last shown.

The engine's ticker reads it a few times a second (``_COUNTS_INTERVAL`` in
:mod:`bgdl_nb._engine`): only tasks whose count moved are published as live counts, and
every byte received is added to :attr:`ByteMeter.total` (the transfer service's
throughput). A count that went down (a task restarted from byte zero) adds nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._run import TaskRun

__all__ = ["ByteMeter"]


class ByteMeter:
    """Live byte counts of running tasks, and the bytes all of them moved."""

    def __init__(self) -> None:
        self.total = 0  # every byte received while it was read
        self._shown: dict[int, int] = {}  # received, as last read, per task

    def read(self, runs: Iterable[TaskRun]) -> dict[int, int]:
        """The counts of ``runs`` that moved since the last read (task -> bytes received)."""
        moved = {}
        for run in runs:
            tid, received = run.task_identifier, run.received
            before = self._shown.get(tid)
            if before != received:
                self.total += max(0, received - (received if before is None else before))
                self._shown[tid] = moved[tid] = received
        return moved

    def forget(self, tid: int) -> None:
        """Task ``tid`` ended: its count is no longer read."""
        self._shown.pop(tid, None)
