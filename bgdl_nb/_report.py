"""The :class:`~bgdl_nb._attempt.Reporter` of one task: how an attempt (and a file's
pieces) tells the engine what happened — events, record changes, durable offsets, digest
marks, its slot and claim given back — without holding the engine itself."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from ._claims import release
from ._events import EventKind
from ._files import add_mark

if TYPE_CHECKING:
    from ._engine_base import EngineBase
    from ._run import TaskRun

__all__ = ["Report"]


class Report:
    """The :class:`~bgdl_nb._attempt.Reporter` of one task: the attempt's only way in."""

    def __init__(self, engine: EngineBase, run: TaskRun) -> None:
        self.engine, self.run = engine, run

    def emit(self, kind: EventKind, **fields: Any) -> None:
        self.engine._emit(kind, self.run, **fields)

    def update(self, **changes: Any) -> None:
        self.engine._set(self.run, **changes)

    def checkpoint(self, offset: int) -> None:
        self.engine.store.set_offset(self.run.task_identifier, offset)
        self.run.record.offset = offset
        self.engine.out.flush_soon()

    def restart(self, reason: str) -> None:
        self.engine._restart(self.run, reason)

    def mark(self, offset: int, digest: str) -> None:
        rec = self.run.record
        if offset > rec.offset or self.engine.out.closed:  # restarted meanwhile, or the session is gone
            return
        self.engine._set(self.run, marks=add_mark(rec.marks, offset, digest))

    def learned_total(self, total: int) -> None:
        self.engine.scheduler.update_remaining(self.run.task_identifier, total)

    def transferred(self) -> None:
        self.engine.scheduler.release_slot(self.run.task_identifier)
        asyncio.get_running_loop().call_soon(self.engine._schedule)  # the next task starts now, not after the rename

    def claim(self, keep: bool = False) -> int | None:
        return self.engine._claim_due(self.run, keep)

    def release_claim(self) -> None:
        rec = self.run.record
        if rec.destination:
            release(rec.destination, self.engine._owner(rec.task_identifier))
            self.run.claim_released = True  # read on the loop once the rename's future is done

    def throttle(self, nbytes: int) -> float:
        return self.engine.bucket.reserve(nbytes, time.monotonic())

    def served(self) -> None:
        self.engine._served(self.run)

    def connection_share(self) -> int:
        return self.engine._connection_share(self.run)
