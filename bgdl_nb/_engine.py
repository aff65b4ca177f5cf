"""The engine: runs a session's tasks, keeps the journal, and emits.

Everything here runs on one event loop (the engine thread's, or the transfer
service's): no locks are needed, and the journal sees one writer. The engine owns its
task records (:class:`~bgdl_nb._attempt.TaskRun`) and knows nothing of delegates,
sessions or the public ``DownloadTask``: it emits every event, with a snapshot of the
task it concerns, to one :class:`Sink`, plus live byte counts a few times a second.
Hosts (``_hosts/``) turn that into public task views and delegate calls.

The engine

* schedules through the pure policy of :mod:`bgdl_nb._scheduler` (slots, hosts,
  priority, begin dates, discretionary work, backoff, disk), and a waiting task always
  has a :class:`~bgdl_nb._waits.Wait` (text for people, an enum for programs);
* runs attempts (:mod:`bgdl_nb._attempt`) and retries them after
  :mod:`bgdl_nb._retrying` (how long to wait, or to give up), resetting the count whenever one made progress;
* changes a task's state only through :meth:`Engine._move`, which checks the transition
  table of :mod:`bgdl_nb._states`, journals, then emits (journal first, notify second);
* ends every task whose run raised, whatever the exception, in ``COMPLETED`` with an
  error the user can read: no task hangs.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import math
import os
import random
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._attempt import CHECKPOINT_BYTES, Attempt
from ._bandwidth import TokenBucket
from ._claims import CLAIM_SUFFIX
from ._config import Configuration
from ._engine_base import EngineBase, Sink, _NullSink
from ._events import Event, EventKind
from ._exceptions import (
    BgdlError,
    Cancelled,
    DiskFull,
    InvalidDestination,
    NetworkError,
    TransferError,
    TransferTimeout,
)
from ._files import HashWorker, beside, disk_size, free_disk, inbox_path, partial_path_for, unlink
from ._finalise import Finaliser
from ._journal import Store, TaskRecord
from ._liveness import Liveness, stalled_error
from ._redact import add_secret_params
from ._report import Report
from ._retrying import after_failure, after_restart
from ._run import RestartNeeded, RetryableStatus, TaskRun, host_of
from ._scheduler import Item, Scheduler
from ._states import TaskState
from ._waits import HOST_TAKEN, LAUNCH, RETRY, Wait, WaitReason

if TYPE_CHECKING:
    from ._transport import Transport

__all__ = ["CHECKPOINT_BYTES", "Engine", "Sink"]

log = logging.getLogger("bgdl_nb")

_COUNTS_INTERVAL = 0.25


class Engine(EngineBase):
    """Runs the tasks of one session on the current event loop."""

    def __init__(self, config: Configuration, store: Store, key: bytes, work_dir: Path,
                 sink: Sink | None = None, transport: Transport | None = None) -> None:
        self.config = config
        add_secret_params(config.secret_query_params)  # this process shows them redacted too
        self.store = store
        self.key = key
        self.work_dir = work_dir  # partial files without a destination, and the inbox
        self.identifier = config.identifier
        self.sink: Sink = sink or _NullSink()
        self._runs: dict[int, TaskRun] = {}
        self._running: set[int] = set()
        self._destinations: dict[str, int] = {}  # destination -> unfinished task writing it
        self._held: dict[int, str] = {}  # tasks whose bytes another session's task transfers
        self._jobs: dict[int, asyncio.Task[None]] = {}
        self._policy_failures = 0  # scheduler errors in a row
        self.scheduler = Scheduler(max_concurrent_tasks=config.max_concurrent_tasks,
                                   max_per_host=config.http_maximum_connections_per_host,
                                   free_disk=free_disk, disk_size=disk_size,
                                   discretionary_window=config.discretionary_window)
        self.bucket = TokenBucket(config.bandwidth_limit, now=time.monotonic())
        self.bytes_moved = 0  # every byte received by this engine (the service's throughput)
        self._seen: dict[int, int] = {}  # received as last published by the counts ticker
        self.liveness = Liveness(config.http_maximum_connections_per_host, config.timeout_interval_for_request)
        self._ticker: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._wakeup: asyncio.TimerHandle | None = None
        self.transport = transport
        self._closing = False
        self.hashing = HashWorker()
        self.finaliser = Finaliser(self.flush)
        self._pending = []
        self._flusher = None
        self._delivered = int(store.get_meta("delivered_seq") or 0) if store.durable else 0
        self._nonce = secrets.token_hex(8)
        self._claimed = {}
        self._claims_refreshed = time.monotonic()
        store.group_commit = True

    # lifecycle ---------------------------------------------------------------------------

    def load(self) -> int:
        """Read the journal's tasks (no event, no transfer yet); return how many there are."""
        for record in self.store.load_tasks():
            run = TaskRun(record, received=record.offset)
            self._runs[record.task_identifier] = run
            if record.state is TaskState.RUNNING:
                self._running.add(record.task_identifier)
            if record.state is not TaskState.COMPLETED and record.destination:
                self._destinations[record.destination] = record.task_identifier
        return len(self._runs)

    def start(self, *, announce: bool) -> None:
        """Continue the tasks that were running. With ``announce``, a journal that holds
        tasks gets a ``reattached`` row first."""
        reset = getattr(self.store, "reset_reason", None)
        if reset:  # the first row of the new journal says why the old one was set aside
            self.note(EventKind.JOURNAL_RESET, reset)
            self.store.reset_reason = None  # type: ignore[attr-defined]
        runs = list(self._runs.values())
        if announce and self.store.durable and runs:
            running = [r for r in runs if r.record.state in (TaskState.RUNNING, TaskState.CANCELING)]
            self.note(EventKind.REATTACHED, f"{len(runs)} tasks journaled, {len(running)} to continue, "
                                            f"{len(self.backlog())} events to deliver")
        for run in runs:
            if run.record.state is TaskState.CANCELING:
                asyncio.get_running_loop().create_task(self._finish_cancel(run, keep_partial=False))
            elif run.record.state is TaskState.RUNNING:
                if run.record.location and self._recover_finalised(run):
                    continue
                self._enqueue(run)
        self._schedule()

    def open(self, *, announce: bool = True) -> None:
        """:meth:`load`, then :meth:`start` (call it on the engine's event loop)."""
        self.load()
        self.start(announce=announce)

    async def close(self, mode: str = "detach") -> None:
        """``detach``: stop transfers, keep tasks for the next session; ``finish``: wait for
        running tasks first; ``cancel``: cancel every unfinished task first. The journal
        stays open for acknowledgements until :meth:`close_store`."""
        if mode == "finish":
            await self.drain()
        elif mode == "cancel":
            await self.cancel_all()
        if mode == "detach" and self.store.durable and any(
                r.record.state is TaskState.RUNNING for r in self._runs.values()):
            self.note(EventKind.DETACHED, "transfers pause until a session reattaches")
        self._closing = True
        if self._wakeup is not None:
            self._wakeup.cancel()
        jobs = list(self._jobs.values()) + ([self._ticker] if self._ticker else [])
        for job in jobs:
            job.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
        await self.finaliser.close()  # a rename under way completes (its intent is journaled)
        if self.transport is not None:
            await self.transport.close()
        self.hashing.close()
        self._last_flush()

    def close_store(self) -> None:
        self._last_flush()
        self._closed_store = True
        if self._halt_retry is not None:
            self._halt_retry.cancel()
        with contextlib.suppress(BgdlError):  # what it could not commit, _last_flush said
            self.store.close()

    def _last_flush(self) -> None:
        """Commit what is left; a journal that cannot be written keeps what it last
        committed (offsets never above the bytes on disk), and closing goes on."""
        try:
            self.flush()
        except BgdlError as exc:
            log.warning("bgdl_nb: closed without journaling the last changes: %s", exc)

    async def drain(self) -> None:
        """Wait until no task is running or being cancelled."""
        while any(r.record.state in (TaskState.RUNNING, TaskState.CANCELING) for r in self._runs.values()):
            self._changed.clear()
            await self._changed.wait()

    # task control ------------------------------------------------------------------------

    def create(self, record: TaskRecord, task_identifier: int | None = None) -> int:
        """Create a task (suspended) from ``record``, as ``task_identifier`` when one was
        reserved for it (:meth:`create_many`)."""
        record.task_identifier = (self.store.next_task_identifiers()[0] if task_identifier is None
                                  else task_identifier)
        record.created = time.time()
        record.state = TaskState.SUSPENDED
        if not record.partial_path:
            record.partial_path = partial_path_for(record.destination, record.task_identifier, self.work_dir)
        if record.destination and os.path.lexists(beside(record.destination, CLAIM_SUFFIX)):
            # one writer per destination, across sessions, processes and machines: a claim
            # already there is judged now (refused while its task can still write); else the
            # task claims its destination when it first runs, so creating costs no file
            try:
                self._claim(record)
            except OSError as exc:  # nothing is journaled yet: the task does not exist
                raise _write_error(exc, record.destination, "run the same command again", url=record.url) from None
            self._claimed[record.task_identifier] = time.monotonic()
        self.store.put_task(record)
        run = TaskRun(record, received=record.offset)
        self._runs[record.task_identifier] = run
        if record.destination:
            self._destinations[record.destination] = record.task_identifier
        self._emit(EventKind.CREATED, run, total_bytes_written=record.offset,
                   total_bytes_expected=record.total, detail=record.url)
        return record.task_identifier

    def create_many(self, records: list[TaskRecord], resume: bool) -> list[int]:
        """Create (and resume) many tasks at once: one call for the caller, one plan. The
        tasks' identifiers are returned; their snapshots travel with their events."""
        tids = [self.create(record, tid) for record, tid in
                zip(records, self.store.next_task_identifiers(len(records)), strict=True)]
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

    def _mark_resumed(self, runs: list[TaskRun], waiting: dict[int, Wait | None]) -> None:
        """The ``resumed`` rows of ``runs``, each with the reason it waits after the plan
        (taken out of ``waiting``): one row where a resumed and a waiting row said it in two."""
        for run in runs:
            why = waiting.pop(run.task_identifier, None)
            self._move(run, TaskState.RUNNING, EventKind.RESUMED, total_bytes_written=run.record.offset,
                       detail=None if why is None else str(why), reason=None if why is None else why.reason.value)
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
        for tid in list(self._jobs):
            self._stop_job(tid)
            self._enqueue(self._runs[tid])
        self._schedule()

    def unpause(self) -> None:
        self.scheduler.unpause()
        self._schedule()

    # scheduling --------------------------------------------------------------------------

    def _enqueue(self, run: TaskRun) -> None:
        rec = run.record
        known = rec.total if rec.total is not None else rec.expected_bytes
        folder = os.path.dirname(rec.destination or rec.partial_path)
        launch = Wait(WaitReason.LAUNCH, rec.launch_delay_reason) if rec.launch_delay_reason else LAUNCH
        self.scheduler.add(Item(
            rec.task_identifier, host=host_of(rec.url), priority=rec.priority,
            earliest_begin_date=rec.earliest_begin_date, discretionary=rec.discretionary,
            not_before=rec.launch_delay_until, not_before_reason=launch if rec.launch_delay_until else RETRY,
            remaining_bytes=max(0, (known or 0) - rec.offset), disk=folder,
            deadline=rec.created + self.config.timeout_interval_for_resource))

    def _schedule(self, resumed: list[TaskRun] | None = None) -> None:
        """Apply the policy's plan: start tasks, publish waiting reasons, expire tasks.
        ``resumed``: tasks just queued, given their ``resumed`` rows (with the plan's
        reason they wait) before anything of the plan happens to them."""
        if self._closing or self.halted is not None:  # nothing starts while the journal cannot be written
            self._mark_resumed(resumed or [], {})
            return
        loop = asyncio.get_running_loop()
        try:
            plan = self.scheduler.poll()
        except Exception as exc:  # a bug in the policy must not leave tasks waiting for ever
            self._mark_resumed(resumed or [], {})
            self._policy_failures += 1
            log.exception("bgdl_nb scheduler error (%d in a row)", self._policy_failures)
            if self._policy_failures < 3:
                loop.call_later(0.25, self._schedule)  # try again shortly
                return
            self._policy_failures = 0
            for run in list(self._runs.values()):
                if run.record.state is TaskState.RUNNING and run.task_identifier not in self._jobs:
                    self._internal_error(run, exc)  # stopped instead of waiting for ever
            return
        self._policy_failures = 0
        self._mark_resumed(resumed or [], plan.waiting)
        for tid in plan.expired:
            run = self._runs[tid]
            waiting = f" while waiting: {run.waiting}" if run.waiting else ""
            self._stop_job(tid)
            self._fail(run, TransferTimeout(
                f"task {tid} exceeded timeout_interval_for_resource ({self.config.timeout_interval_for_resource:g} s)"
                f"{waiting}; raise the timeout, or continue from the error's resume_data",
                url=run.record.url, task_identifier=tid))
        for tid, why in plan.impossible.items():
            run = self._runs[tid]
            self._stop_job(tid)
            self._fail(run, DiskFull(f"the file {why}: it can never fit there; choose a destination on a larger "
                                     "file system", url=run.record.url, task_identifier=tid))
        for tid in plan.preempt:
            self._stop_job(tid)  # its partial bytes stay; it continues with a range request later
        for tid, reason in plan.waiting.items():
            run = self._runs[tid]
            if reason is not None and run.record.state is TaskState.RUNNING:
                self._wait(run, reason)
        for tid in plan.start:
            run = self._runs[tid]
            run.waiting = None
            if tid not in self._jobs and run.record.state is TaskState.RUNNING:
                self._jobs[tid] = loop.create_task(self._run(run))
        if self._jobs and (self._ticker is None or self._ticker.done()):
            self._ticker = loop.create_task(self._tick())
        if self._wakeup is not None:
            self._wakeup.cancel()
            self._wakeup = None
        if plan.wake_at is not None:
            self._wakeup = loop.call_later(max(0.0, plan.wake_at - time.time()), self._schedule)

    def _wait(self, run: TaskRun, reason: Wait) -> None:
        if run.waiting != reason:
            run.waiting = reason
            self._emit(EventKind.WAITING, run, total_bytes_written=run.received, detail=str(reason),
                       reason=reason.reason.value)

    def _stop_job(self, tid: int) -> asyncio.Task[None] | None:
        self.scheduler.remove(tid)
        self._runs[tid].waiting = None
        job = self._jobs.pop(tid, None)
        if job is not None:
            job.cancel()
        return job

    async def _tick(self) -> None:
        """Publish live byte counts of transferring tasks while any transfers; refresh
        their destinations' claims every quarter lease."""
        while self._jobs:
            await asyncio.sleep(_COUNTS_INTERVAL)
            if time.monotonic() - self._claims_refreshed >= self.config.claim_lease / 4:
                self._claims_refreshed = time.monotonic()
                await self._refresh_claims([tid for tid in self._jobs if self._runs[tid].record.destination])
            counts = {}
            for tid in list(self._jobs):
                received = self._runs[tid].received
                if self._seen.get(tid) != received:
                    self.bytes_moved += max(0, received - self._seen.get(tid, received))
                    self._seen[tid] = counts[tid] = received
            if counts:
                self.sink.counts(counts)
            await self._review_liveness()

    async def _review_liveness(self) -> None:
        found = self.liveness.review((self._runs[tid] for tid in self._jobs), time.monotonic(), self.bucket.rate)
        for run in found.waiting_for_host:
            self._wait(run, HOST_TAKEN)
        for run in found.host_freed:
            run.waiting = None  # the next progress row carries it
        for run, quiet in found.stalled:
            job = self._stop_job(run.task_identifier)
            if job is not None:
                await asyncio.gather(job, return_exceptions=True)
            if run.record.state is TaskState.RUNNING:
                error = stalled_error(run, quiet)
                log.error("bgdl_nb %s", error)
                self._fail(run, error)
                self._schedule()

    async def _refresh_claims(self, tids: list[int]) -> None:
        """Renew the claims of ``tids`` (one hand-off to a thread); a task whose claim
        another task took over meanwhile stops, failing with the reason."""
        def renew() -> dict[int, InvalidDestination]:
            lost = {}
            for tid in tids:
                if self._runs[tid].claim_released:
                    continue  # its file is in place: renewing would bring the claim back
                try:
                    self._claim(self._runs[tid].record)
                except InvalidDestination as exc:
                    lost[tid] = exc
            return lost

        lost = await asyncio.to_thread(renew)
        now = time.monotonic()
        for tid in tids:
            run = self._runs[tid]
            if tid in lost:
                if run.record.state is TaskState.RUNNING:
                    self._stop_job(tid)
                    self._fail(run, InvalidDestination(f"{lost[tid]} (this task's claim lapsed and was taken over)",
                                                       url=run.record.url, task_identifier=tid))
            elif run.record.state is not TaskState.COMPLETED:
                self._claimed[tid] = now

    # running a task ----------------------------------------------------------------------

    async def _run(self, run: TaskRun) -> None:
        """One turn of a task in a slot: attempts until it completes, fails, or must back off
        (the slot is given back during a backoff; the scheduler starts it again later)."""
        rec = run.record
        tid = rec.task_identifier
        try:
            await self.finaliser.settled(rec.partial_path)  # a rename a suspend interrupted ends first
            if rec.location and self._recover_finalised(run):
                return  # renamed into place by a finalisation that a suspend interrupted
            if rec.destination and time.monotonic() - self._claimed.get(tid, -math.inf) > self.config.claim_lease / 2:
                await asyncio.to_thread(self._claim, rec)  # its claim may have lapsed meanwhile: still ours?
                self._claimed[tid] = time.monotonic()
            while True:
                before = run.received
                try:
                    target = Path(rec.destination) if rec.destination else inbox_path(rec.url, tid, self.work_dir)
                    finished = await Attempt(run, Report(self, run), self._transport(), self.config, target,
                                             self.hashing, self.finaliser)()
                    self._complete(run, None, finished=finished)
                    return
                except RestartNeeded:
                    after_restart(run)  # raises once the file changed too often
                except (NetworkError, TransferTimeout, RetryableStatus) as exc:
                    retry = after_failure(exc, run, before, self.config, jitter=random.uniform(0.9, 1.1))
                    self._emit(EventKind.RETRY, run, total_bytes_written=run.received, error=retry.error,
                               detail=f"attempt {run.failures + 1} in {retry.delay:.2f} s")
                    now = time.time()
                    self.scheduler.backoff(tid, now + retry.delay, retry.wait(now))
                    return
        except asyncio.CancelledError:
            raise
        except BgdlError as exc:
            exc.url = exc.url or rec.url
            exc.task_identifier = tid
            self._fail(run, exc)
        except OSError as exc:
            self._fail(run, _write_error(exc, rec.destination or rec.partial_path, "resume from the error's "
                                         "resume_data", url=rec.url, task_identifier=tid))
        except Exception as exc:  # a bug must end the task visibly, never leave it RUNNING
            self._internal_error(run, exc)
        finally:
            if self._jobs.get(tid) is asyncio.current_task():
                del self._jobs[tid]
            self._schedule()


def _write_error(exc: OSError, where: str, then: str, **fields: Any) -> BgdlError:
    """What a failed write in the destination's folder means to the user: a full disk
    (with what to do ``then``, once space is freed) or the system's own reason."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFull(f"no space left for {where}; free some space and {then}", **fields)
    return TransferError(f"writing {where} failed: {exc.strerror or exc}; {then} once that is fixed", **fields)
