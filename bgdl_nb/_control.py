"""What a host asks of an engine's tasks: create, resume, suspend, cancel, and the rest.

:class:`Controls` is the engine's control surface, the methods a host's commands reach
(:class:`~bgdl_nb._hosts.commands.Control` names them). Each checks the task's state,
changes it only through :meth:`~bgdl_nb._engine_base.EngineBase._move` (journaled, then
published) and asks the scheduler to plan again; none runs a transfer itself. Creating
many tasks is one batch: their identifiers reserved at once, their rows in one journal
group, one plan for all (:meth:`Controls.create_many`).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from ._claims import carrier_name, claimed
from ._engine_base import EngineBase
from ._events import Event, EventKind
from ._exceptions import BgdlError, Cancelled, DiskFull, TransferError
from ._files import partial_path_for, unlink
from ._journal import TaskRecord
from ._run import TaskRun
from ._states import TaskState
from ._waits import Wait, WaitReason

__all__ = ["Controls", "write_error"]

log = logging.getLogger("bgdl_nb")


class Controls(EngineBase):
    """The controls of an engine's tasks (see the module's text); scheduling and running
    them is :class:`bgdl_nb._engine.Engine`'s."""

    def create(self, record: TaskRecord, task_identifier: int | None = None) -> int:
        """Create a task (suspended) from ``record``, as ``task_identifier`` when one was
        reserved for it (:meth:`create_many`)."""
        record.task_identifier = (self.store.next_task_identifiers()[0] if task_identifier is None
                                  else task_identifier)
        record.created = time.time()
        record.state = TaskState.SUSPENDED
        if not record.partial_path:  # a new task's partial file carries its destination's claim
            record.partial_path = carrier_name(record.destination) if record.destination else \
                partial_path_for(None, record.task_identifier, self.work_dir)
        if record.destination and claimed(record.destination):
            # one writer per destination, across sessions, processes and machines: a claim
            # already there is judged now (refused while its task can still write); else the
            # task claims its destination when it first runs, so creating costs no file
            try:
                self._claim(record)
            except OSError as exc:  # nothing is journaled yet: the task does not exist
                raise write_error(exc, record.destination, "run the same command again", url=record.url) from None
            self._claimed[record.task_identifier] = time.monotonic()
        self.store.put_task(record)
        run = TaskRun(record, received=record.offset)
        self._runs[record.task_identifier] = run
        if record.destination:
            self._destinations[record.destination] = record.task_identifier
        self._emit(EventKind.CREATED, run, total_bytes_written=record.offset,
                   total_bytes_expected=record.total, detail=record.url)
        return record.task_identifier

    def create_many(self, records: Sequence[TaskRecord], resume: bool,
                    numbered: Callable[[Sequence[TaskRecord]], None] | None = None) -> list[int]:
        """Create (and resume) many tasks at once: one call for the caller, one plan. The
        tasks' identifiers are returned; their snapshots travel with their events.
        ``numbered`` is called with the records once they are numbered, before any starts."""
        tids = [self.create(record, tid) for record, tid in
                zip(records, self.store.next_task_identifiers(len(records)), strict=True)]
        if numbered is not None:
            numbered(records)
        if resume:
            self.resume_many(tids)
        return tids

    def resume_many(self, tids: list[int]) -> None:
        """Resume several tasks, then plan once."""
        self._schedule([run for run in map(self._runs.__getitem__, tids) if self._resume(run)])

    def resume(self, tid: int) -> None:
        run = self._runs[tid]
        if self._resume(run):
            self._schedule([run])

    def _resume(self, run: TaskRun) -> bool:
        """Queue a suspended task; True when it is queued (its ``resumed`` row comes with
        the plan that follows, :meth:`_schedule`)."""
        if run.record.state is not TaskState.SUSPENDED or self._closing:
            return False
        try:
            return self._queue_resumed(run)
        except Exception as exc:  # a bug must end the task visibly, never leave it half resumed
            self._internal_error(run, exc)
            return False

    def _internal_error(self, run: TaskRun, exc: Exception) -> None:
        """Fail ``run`` for a bug in bgdl_nb, with a message a person can act on."""
        log.exception("bgdl_nb engine error in task %s", run.task_identifier, exc_info=exc)
        self.scheduler.remove(run.task_identifier)
        self._fail(run, TransferError(f"internal error in bgdl_nb ({type(exc).__name__}: {exc}); the download can "
                                      "continue from the error's resume_data; please report it",
                                      url=run.record.url, task_identifier=run.task_identifier))

    def _queue_resumed(self, run: TaskRun) -> bool:
        run.resumed_once = True
        held = self._held.get(run.task_identifier)
        if held is not None:  # another session already transfers this file: wait for it
            self._mark_resumed([run], {})
            self._wait(run, Wait(WaitReason.SHARED, held))
            return False
        self._enqueue(run)
        return True

    def _mark_resumed(self, runs: Sequence[TaskRun], waiting: dict[int, Wait | None]) -> None:
        """The ``resumed`` rows of ``runs``, each with the reason it waits after the plan
        (taken out of ``waiting``): one row where a resumed and a waiting row said it in two."""
        for run in runs:
            why = waiting.pop(run.task_identifier, None)
            try:
                self._move(run, TaskState.RUNNING, EventKind.RESUMED, total_bytes_written=run.record.offset,
                           detail=None if why is None else str(why), reason=None if why is None else why.reason.value)
            except Exception as exc:  # a bug must end the task visibly, never leave it queued but suspended
                self._internal_error(run, exc)
                continue
            run.waiting = why

    def note(self, kind: EventKind, detail: str, tid: int | None = None, **fields: Any) -> Event:
        """Journal an event that no transfer emits (a reattach, a launch; of task ``tid`` when
        given, an unpacked archive) and emit it."""
        return self._emit(kind, None if tid is None else self._runs.get(tid), detail=detail, **fields)

    def suspend(self, tid: int) -> None:
        run = self._runs[tid]
        if run.record.state is not TaskState.RUNNING:
            return
        self._stop_job(tid)
        self._move(run, TaskState.SUSPENDED, EventKind.SUSPENDED, total_bytes_written=run.received,
                   total_bytes_expected=run.record.total)
        self._schedule()

    def suspend_many(self, tids: list[int]) -> None:
        for tid in tids:
            self.suspend(tid)

    def cancel(self, tid: int) -> None:
        run = self._runs[tid]
        if run.record.state not in (TaskState.COMPLETED, TaskState.CANCELING):
            asyncio.get_running_loop().create_task(self._finish_cancel(run, keep_partial=False))

    async def cancel_with_resume_data(self, tid: int) -> bytes | None:
        run = self._runs[tid]
        if run.record.state in (TaskState.COMPLETED, TaskState.CANCELING):
            return None
        return await self._finish_cancel(run, keep_partial=True)

    async def cancel_all(self) -> None:
        """Cancel every unfinished task (``invalidate_and_cancel``)."""
        await asyncio.gather(*(self._finish_cancel(r, keep_partial=False) for r in list(self._runs.values())
                               if r.record.state not in (TaskState.COMPLETED, TaskState.CANCELING)))

    async def _finish_cancel(self, run: TaskRun, *, keep_partial: bool) -> bytes | None:
        rec = run.record
        self._move(run, TaskState.CANCELING, None)
        job = self._stop_job(rec.task_identifier)
        if job is not None:
            await asyncio.gather(job, return_exceptions=True)
        self._emit(EventKind.CANCELED, run, total_bytes_written=run.received, total_bytes_expected=rec.total)
        data = self._resume_data(run) if keep_partial else None
        if data is None:
            unlink(rec.partial_path)
        self._complete(run, Cancelled(f"task {rec.task_identifier} was cancelled", url=rec.url,
                                      task_identifier=rec.task_identifier, resume_data=data))
        self._schedule()
        return data

    def expect_digest(self, tid: int, sha256: str | None, expected_hash: str | None) -> None:
        """A digest given after the task was created (the same fetch() run again with one):
        its file is checked against it at the end, as against one given at creation (a
        sha256 is computed over every byte either way)."""
        run = self._runs[tid]
        if run.record.state is not TaskState.COMPLETED:
            self._set(run, sha256=sha256, expected_hash=expected_hash)

    def relink(self, tid: int, url: str) -> None:
        """A new link to the task's file (its URL apart from secret query values: a link
        signed again): the task goes on with it from the bytes it has. A transfer under way
        stops and starts again from its durable offset, so the old link is not used again."""
        run = self._runs[tid]
        rec = run.record
        if rec.state is TaskState.COMPLETED or rec.url == url:
            return
        self._set(run, url=url, current_url=None)
        self.note(EventKind.RELINKED, "a new link to the same file; the download continues with it", tid,
                  total_bytes_written=rec.offset)
        if tid in self._jobs:
            self._stop_job(tid)
            self._enqueue(run)
            self._schedule()

    def note_unpacked(self, tid: int | None, size: int, detail: str) -> None:
        """The control behind fetch(unpack=True)'s row of the event log for task ``tid``."""
        self.note(EventKind.UNPACKED, detail, tid, total_bytes_written=size)

    def set_priority(self, tid: int, priority: float) -> None:
        self._set(self._runs[tid], priority=priority)
        self.scheduler.set_priority(tid, priority)
        self._schedule()

    def set_bandwidth_limit(self, rate: float | None) -> None:
        self.bucket.set_rate(rate, time.monotonic())

    def pause(self) -> None:
        """Stop every transfer and start none until :meth:`unpause`; tasks stay RUNNING,
        waiting with reason "session paused"."""
        self.scheduler.pause()
        self._stop_all()
        self._schedule()

    def unpause(self) -> None:
        self.scheduler.unpause()
        self._schedule()


def write_error(exc: OSError, where: str, then: str, **fields: Any) -> BgdlError:
    """What a failed write in the destination's folder means to the user: a full disk
    (with what to do ``then``, once space is freed) or the system's own reason."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFull(f"no space left for {where}; free some space and {then}", **fields)
    return TransferError(f"writing {where} failed: {exc.strerror or exc}; {then} once that is fixed", **fields)
