"""The engine: runs a session's tasks: its lifecycle, scheduling, and each task's run.

Everything here runs on one event loop (the engine thread's, or the transfer
service's): no locks are needed, and the journal sees one writer. The engine owns its
task records (:class:`~bgdl_nb._run.TaskRun`) and knows nothing of delegates, sessions or
the public ``DownloadTask``. It is one object, written by concept in four modules:

* :mod:`bgdl_nb._engine_base` — the records: a state changes only through ``_move``
  (the transition table of :mod:`bgdl_nb._states`, journaled, then published), and the
  questions hosts ask (snapshots, the backlog, who writes a destination);
* :mod:`bgdl_nb._publisher` — journal first, publish second: the group commit, the one
  :class:`~bgdl_nb._publisher.Sink`, and the halt of a journal that cannot be written;
* :mod:`bgdl_nb._control` — what hosts ask of tasks (create in batches, resume,
  suspend, cancel, priority, relink);
* this module — opening and closing, scheduling through the pure policy of
  :mod:`bgdl_nb._scheduler` (a waiting task always has a :class:`~bgdl_nb._waits.Wait`),
  the ticker (live counts from :mod:`bgdl_nb._meter`, liveness, claim refreshes), and a
  task's run: attempts (:mod:`bgdl_nb._attempt`, through a
  :class:`~bgdl_nb._transport.Transport`) retried after :mod:`bgdl_nb._retrying`.

Every task whose run raised, whatever the exception, ends in ``COMPLETED`` with an
error the user can read: no task hangs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ._attempt import CHECKPOINT_BYTES, Attempt
from ._bandwidth import TokenBucket
from ._claims import claimed
from ._config import Configuration
from ._control import Controls, write_error
from ._events import EventKind
from ._exceptions import (
    BgdlError,
    DiskFull,
    InvalidDestination,
    NetworkError,
    TransferTimeout,
)
from ._files import HashWorker, disk_size, free_disk, inbox_path
from ._finalise import Finaliser
from ._journal import Store
from ._liveness import Liveness, stalled_error
from ._meter import ByteMeter
from ._publisher import NullSink, Publisher, Sink
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


class Engine(Controls):
    """Runs the tasks of one session on the current event loop."""

    def __init__(self, config: Configuration, store: Store, key: bytes, work_dir: Path,
                 sink: Sink | None = None, transport: Transport | None = None) -> None:
        self.config = config
        add_secret_params(config.secret_query_params)  # this process shows them redacted too
        self.store = store
        self.key = key
        self.work_dir = work_dir  # partial files without a destination, and the inbox
        self.identifier = config.identifier
        self.out = Publisher(store, config.identifier, sink or NullSink(), stop=self._stop_all,
                             go_on=self._schedule_soon)
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
        self.meter = ByteMeter()  # live counts, and every byte received (the service's throughput)
        self.liveness = Liveness(config.http_maximum_connections_per_host, config.timeout_interval_for_request)
        self._ticker: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._wakeup: asyncio.TimerHandle | None = None
        self.transport = transport
        self._closing = False
        self.hashing = HashWorker()
        self.finaliser = Finaliser(self.flush)
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
        self.out.close()
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

    def _schedule_soon(self) -> None:
        asyncio.get_running_loop().call_soon(self._schedule)

    def _schedule(self, resumed: Sequence[TaskRun] = ()) -> None:
        """Apply the policy's plan: start tasks, publish waiting reasons, expire tasks.
        ``resumed``: tasks just queued, given their ``resumed`` rows (with the plan's
        reason they wait) before anything of the plan happens to them."""
        if self._closing or self.halted is not None:  # nothing starts while the journal cannot be written
            self._mark_resumed(resumed, {})
            return
        loop = asyncio.get_running_loop()
        try:
            plan = self.scheduler.poll()
        except Exception as exc:  # a bug in the policy must not leave tasks waiting for ever
            self._mark_resumed(resumed, {})
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
        self._mark_resumed(resumed, plan.waiting)
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
            counts = self.meter.read([self._runs[tid] for tid in self._jobs])
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
            if rec.destination and claimed(rec.destination):
                # a claim is there (this task's, or another's that may refuse it): judged before
                # any request. Else the claim is made in the hand-off that opens the partial file
                await asyncio.to_thread(self._claim_due, run)
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
            self._fail(run, write_error(exc, rec.destination or rec.partial_path, "resume from the error's "
                                         "resume_data", url=rec.url, task_identifier=tid))
        except Exception as exc:  # a bug must end the task visibly, never leave it RUNNING
            self._internal_error(run, exc)
        finally:
            if self._jobs.get(tid) is asyncio.current_task():
                del self._jobs[tid]
            self._schedule()
