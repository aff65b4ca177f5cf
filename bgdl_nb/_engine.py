"""The engine: runs a session's tasks, keeps the journal, and emits events.

Everything here runs on one event loop (the engine thread's, or later the transfer
service's): no locks are needed, and the journal sees one writer. The engine

* schedules: at most ``max_concurrent_tasks`` transfers, highest priority first, none
  before its ``earliest_begin_date``; a waiting task always has a ``waiting_reason``;
* transfers with retries: a failed attempt is retried from the durable offset after an
  exponential backoff (or the server's Retry-After), and the failure count resets
  whenever an attempt made progress;
* resumes by the rules of :mod:`bgdl_nb._resume`, restarting from byte 0 (with the
  reason in the log) whenever appending could mix two versions;
* writes the journal first and notifies second: a chunk reaches the file before its
  offset reaches the journal, an event is journaled before the delegate sees it, and a
  file is renamed into place only after its digest and target were journaled;
* delivers delegate callbacks one at a time, in order, on a delegate thread, and
  records how far delivery got so a reattached session gets the rest.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
import random
import shutil
import time
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import urlsplit

from ._config import Configuration
from ._delegate import Deliverer, SessionDelegate
from ._events import Event, EventKind
from ._exceptions import (BgdlError, Cancelled, ChecksumMismatch, DiskFull, HTTPStatusError,
                          InvalidDestination, NetworkError, TransferError, TransferTimeout)
from ._journal import Store, TaskRecord
from ._scheduler import RETRY, Item, Scheduler, TokenBucket
from ._resume import (ResumeState, Validator, accepts_ranges, decide, encode_resume_data,
                      resume_headers, validator_from_headers)
from ._task import DownloadTask, TaskState
from ._transfer import new_client, open_response

if TYPE_CHECKING:
    import aiohttp

    from ._session import Session

__all__ = ["Engine", "CHECKPOINT_BYTES"]

log = logging.getLogger("bgdl_nb")

CHECKPOINT_BYTES = 1024 * 1024
"""The journal records a segment's offset at least every this many bytes, so a killed
process re-fetches at most this much (plus what was in flight on the socket)."""

_MAX_RESTARTS = 5


class _HashThread:
    """Feeds a sha256 object on a thread of its own, so hashing (which releases the GIL)
    runs beside the event loop instead of in its way. :meth:`finish` waits until every
    chunk handed over has been hashed."""

    def __init__(self, hasher: Any) -> None:
        import queue
        import threading
        self.hasher = hasher
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="bgdl-hash", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not None:
            self.hasher.update(chunk)

    def update(self, chunk: bytes) -> None:
        self._queue.put(chunk)

    def finish(self) -> Any:
        self._queue.put(None)
        self._thread.join()
        return self.hasher


class _Restart(Exception):
    """The partial file was discarded; ask again from byte 0."""


class _RetryableStatus(TransferError):
    def __init__(self, message: str, *, status: int, retry_after: float | None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.status = status
        self.retry_after = retry_after


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _fsync(path: str | os.PathLike[str]) -> None:
    """fsync a file or a directory (a rename is durable once its directory is synced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _free_disk(folder: str) -> int | None:
    """Free bytes on the file system of ``folder`` (or its nearest existing ancestor)."""
    path = Path(folder)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def _unlink(path: str | os.PathLike[str] | None) -> None:
    if path:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


class Engine:
    """Runs the tasks of one session on the current event loop."""

    def __init__(self, config: Configuration, store: Store, key: bytes, work_dir: Path) -> None:
        self.config = config
        self.store = store
        self.key = key
        self.work_dir = work_dir  # partial files without a destination, and the inbox
        self.identifier = config.identifier
        self.session: Session | None = None
        self.delegate: SessionDelegate | None = None
        self.tasks: dict[int, DownloadTask] = {}
        self.active_destinations: dict[str, int] = {}  # destination -> unfinished task writing it
        self.followers: dict[int, str] = {}  # task -> the task of another session it shares a transfer with
        self.listeners: list[Callable[[Event], None]] = []
        self._jobs: dict[int, asyncio.Task[None]] = {}
        self.scheduler = Scheduler(max_concurrent_tasks=config.max_concurrent_tasks,
                                   max_per_host=config.http_maximum_connections_per_host,
                                   free_disk=_free_disk, discretionary_window=config.discretionary_window)
        self.bucket = TokenBucket(config.bandwidth_limit, now=time.monotonic())
        self._failures: dict[int, int] = {}   # consecutive failed attempts without progress
        self._restarts: dict[int, int] = {}
        self._wakeup: asyncio.TimerHandle | None = None
        self._hashers: dict[int, tuple[Any, int]] = {}      # tid -> (sha256 object, bytes hashed)
        self._client: aiohttp.ClientSession | None = None
        self._outbox: asyncio.Queue[Event | None] = asyncio.Queue()
        self._dispatcher: asyncio.Task[None] | None = None
        self._deliverer = Deliverer()
        self._closing = False
        self.external_delivery = False
        """True in the transfer service: clients deliver events to their delegates and
        acknowledge them with :meth:`ack`; the engine itself calls no delegate."""

    # lifecycle ---------------------------------------------------------------------------

    async def open(self, session: Session, delegate: SessionDelegate | None) -> None:
        """Load the journal, queue undelivered events, and continue running tasks."""
        self.session, self.delegate = session, delegate
        records = self.store.load_tasks()
        for record in records:
            task = DownloadTask(session, record)
            self.tasks[record.task_identifier] = task
            if record.state == TaskState.COMPLETED.value:
                task._settle()
            elif record.destination:
                self.active_destinations[record.destination] = record.task_identifier
        if not self.external_delivery:
            self._dispatcher = asyncio.get_running_loop().create_task(self._dispatch())
        backlog = self.backlog() if self.store.durable else []
        if self.store.durable and (records or backlog) and not self.external_delivery:
            for event in backlog:
                self._outbox.put_nowait(event)
            running = [r for r in records if r.state in ("running", "canceling")]
            self._emit(EventKind.REATTACHED, detail=f"{len(records)} tasks journaled, {len(running)} to continue, "
                                                    f"{len(backlog)} events to deliver")
            self._emit(EventKind.FINISHED_EVENTS)
        for record in records:
            task = self.tasks[record.task_identifier]
            if record.state == "canceling":
                asyncio.get_running_loop().create_task(self._finish_cancel(task, keep_partial=False))
            elif record.state == "running":
                if record.location and self._recover_finalised(task):
                    continue
                self._enqueue(task)
        self._schedule()

    def backlog(self) -> list[Event]:
        """Journaled events no delegate has acknowledged yet, in order."""
        delivered = int(self.store.get_meta("delivered_seq") or 0)
        return [e for e in self.store.events(delivered) if e.event != EventKind.FINISHED_EVENTS.value]

    def ack(self, seq: int, finished_path: str | None = None) -> None:
        """A client's delegate has seen every event up to ``seq``; a finished file it was
        handed without a destination is now removed from the inbox (seed semantics)."""
        if seq > int(self.store.get_meta("delivered_seq") or 0):
            self.store.set_meta("delivered_seq", str(seq))
        if finished_path:
            inbox = (self.work_dir / "inbox").resolve()
            path = Path(finished_path).resolve()
            if path.parent == inbox:  # only ever our own inbox files
                _unlink(path)

    async def close(self, mode: str = "detach") -> None:
        """``detach``: stop transfers, keep tasks for the next session; ``finish``: wait for
        running tasks first; ``cancel``: cancel every unfinished task first."""
        if mode == "finish":
            pending = [t._done for t in self.tasks.values() if t.state == TaskState.RUNNING]
            if pending:
                await asyncio.gather(*(asyncio.wrap_future(f) for f in pending), return_exceptions=True)
        elif mode == "cancel":
            await self.cancel_all()
        if mode == "detach" and self.store.durable and any(
                t.state == TaskState.RUNNING for t in self.tasks.values()):
            self._emit(EventKind.DETACHED, detail="transfers pause until a session reattaches")
        self._closing = True
        if self._wakeup is not None:
            self._wakeup.cancel()
        jobs = list(self._jobs.values())
        for job in jobs:
            job.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
        self._outbox.put_nowait(None)
        if self._dispatcher is not None:
            await self._dispatcher
        if self._client is not None:
            await self._client.close()
        self._deliverer.close()
        self.store.close()

    # task control ------------------------------------------------------------------------

    def create(self, record: TaskRecord) -> DownloadTask:
        record.task_identifier = self.store.next_task_identifier()
        record.created = time.time()
        if not record.partial_path:
            record.partial_path = str(self._partial_path_for(record))
        self.store.put_task(record)
        task = DownloadTask(self.session, record)
        self.tasks[record.task_identifier] = task
        if record.destination:
            self.active_destinations[record.destination] = record.task_identifier
        self._emit(EventKind.CREATED, task, total_bytes_written=record.offset,
                   total_bytes_expected=record.total, detail=record.url)
        return task

    def create_many(self, records: list[TaskRecord], resume: bool) -> list[DownloadTask]:
        """Create (and resume) many tasks at once: one call for the caller, one plan."""
        tasks = [self.create(record) for record in records]
        if resume:
            self.resume_many([t.task_identifier for t in tasks])
        return tasks

    def resume_many(self, tids: list[int]) -> None:
        """Resume several tasks, then plan once."""
        for tid in tids:
            self._resume(self.tasks[tid])
        self._schedule()

    def note(self, kind: EventKind, detail: str) -> Event:
        """Journal a session-level event (a reattach, a launch) and tell everyone listening."""
        return self._emit(kind, detail=detail)

    async def cancel_all(self) -> None:
        """Cancel every unfinished task (``invalidate_and_cancel``)."""
        await asyncio.gather(*(self._finish_cancel(t, keep_partial=False) for t in list(self.tasks.values())
                               if t.state != TaskState.COMPLETED))

    def resume(self, tid: int) -> None:
        if self._resume(self.tasks[tid]):
            self._schedule()

    def _resume(self, task: DownloadTask) -> bool:
        """Queue a suspended task; True when the scheduler has something new to plan."""
        tid = task.task_identifier
        if task.state != TaskState.SUSPENDED or self._closing:
            return False
        self._set(task, state=TaskState.RUNNING.value)
        self._emit(EventKind.RESUMED, task, total_bytes_written=task._record.offset)
        leader = self.followers.get(tid)
        if leader is not None:  # another session already transfers this file: wait for it
            self._wait(task, f"shares the transfer of {leader}")
            return False
        self._enqueue(task)
        return True

    # sharing a transfer with another session (the service links them) --------------------

    def follow(self, tid: int, leader: str) -> None:
        """Task ``tid`` transfers nothing itself: it mirrors the task named ``leader``."""
        self.followers[tid] = leader

    def mirror_progress(self, tid: int, received: int, total: int | None) -> None:
        task = self.tasks[tid]
        if task.state == TaskState.RUNNING and received != task._received:
            written = received - task._received
            task._received = received
            self._set(task, total=total)
            self._emit(EventKind.PROGRESS, task, bytes_written=max(0, written), total_bytes_written=received,
                       total_bytes_expected=total)

    def adopt(self, tid: int, leader: TaskRecord, error: dict[str, Any] | None) -> None:
        """The leading task completed: so does this one, with its file or its error."""
        task = self.tasks[tid]
        self.followers.pop(tid, None)
        if task.state == TaskState.COMPLETED:
            return
        self._set(task, total=leader.total, status=leader.status, response_headers=leader.response_headers,
                  current_url=leader.current_url, digest=leader.digest, location=leader.location,
                  offset=leader.offset)
        task._received = leader.offset
        if error is None and leader.location:
            self._emit(EventKind.FINISHED, task, total_bytes_written=leader.offset,
                       total_bytes_expected=leader.total, detail=leader.location)
        self._complete(task, None if error is None else BgdlError.from_dict(error))

    def suspend(self, tid: int) -> None:
        task = self.tasks[tid]
        if task.state != TaskState.RUNNING:
            return
        self._set(task, state=TaskState.SUSPENDED.value)
        self.scheduler.remove(tid)
        task.waiting_reason = None
        job = self._jobs.pop(tid, None)
        if job is not None:
            job.cancel()
        self._emit(EventKind.SUSPENDED, task, total_bytes_written=task._received,
                   total_bytes_expected=task._record.total)
        self._schedule()

    def cancel(self, tid: int) -> None:
        task = self.tasks[tid]
        if task.state in (TaskState.COMPLETED, TaskState.CANCELING):
            return
        asyncio.get_running_loop().create_task(self._finish_cancel(task, keep_partial=False))

    async def cancel_with_resume_data(self, tid: int) -> bytes | None:
        task = self.tasks[tid]
        if task.state in (TaskState.COMPLETED, TaskState.CANCELING):
            return None
        return await self._finish_cancel(task, keep_partial=True)

    async def _finish_cancel(self, task: DownloadTask, *, keep_partial: bool) -> bytes | None:
        rec = task._record
        self._set(task, state=TaskState.CANCELING.value)
        self.scheduler.remove(rec.task_identifier)
        task.waiting_reason = None
        job = self._jobs.pop(rec.task_identifier, None)
        if job is not None:
            job.cancel()
            await asyncio.gather(job, return_exceptions=True)
        self._emit(EventKind.CANCELED, task, total_bytes_written=task._received, total_bytes_expected=rec.total)
        data = self._resume_data(task) if keep_partial else None
        if data is None:
            _unlink(rec.partial_path)
        error = Cancelled(f"task {rec.task_identifier} was cancelled", url=rec.url,
                          task_identifier=rec.task_identifier, resume_data=data)
        self._complete(task, error)
        self._schedule()
        return data

    # scheduling --------------------------------------------------------------------------

    def _enqueue(self, task: DownloadTask) -> None:
        rec = task._record
        known = rec.total if rec.total is not None else rec.expected_bytes
        folder = Path(rec.destination).parent if rec.destination else Path(rec.partial_path).parent
        self.scheduler.add(Item(
            rec.task_identifier, host=urlsplit(rec.url).netloc.lower(), priority=rec.priority,
            earliest_begin_date=rec.earliest_begin_date, discretionary=rec.discretionary,
            not_before=rec.launch_delay_until, not_before_reason=rec.launch_delay_reason or RETRY,
            remaining_bytes=max(0, (known or 0) - rec.offset), disk=str(folder),
            deadline=rec.created + self.config.timeout_interval_for_resource))

    def _schedule(self) -> None:
        """Apply the policy's plan: start tasks, publish waiting reasons, expire tasks."""
        if self._closing:
            return
        plan = self.scheduler.poll()
        loop = asyncio.get_running_loop()
        for tid in plan.expired:
            task = self.tasks[tid]
            job = self._jobs.pop(tid, None)
            if job is not None:
                job.cancel()
            self._fail(task, TransferTimeout(
                f"task {tid} exceeded timeout_interval_for_resource ({self.config.timeout_interval_for_resource:g} s)"
                f"{' while waiting: ' + task.waiting_reason if task.waiting_reason else ''}; raise the timeout, "
                "or continue from the error's resume_data", url=task._record.url, task_identifier=tid))
        for tid in plan.preempt:
            job = self._jobs.pop(tid, None)
            if job is not None:
                job.cancel()  # its partial bytes stay; it continues with a range request later
        for tid, reason in plan.waiting.items():
            task = self.tasks[tid]
            if reason is not None and task.state == TaskState.RUNNING:
                self._wait(task, reason)
        for tid in plan.start:
            task = self.tasks[tid]
            task.waiting_reason = None
            if tid not in self._jobs and task.state == TaskState.RUNNING:
                self._jobs[tid] = loop.create_task(self._run(task))
        if self._wakeup is not None:
            self._wakeup.cancel()
            self._wakeup = None
        if plan.wake_at is not None:
            self._wakeup = loop.call_later(max(0.0, plan.wake_at - time.time()), self._schedule)

    def _wait(self, task: DownloadTask, reason: str) -> None:
        if task.waiting_reason != reason:
            task.waiting_reason = reason
            self._emit(EventKind.WAITING, task, total_bytes_written=task._received, detail=reason)

    def set_priority(self, tid: int, priority: float) -> None:
        self._set(self.tasks[tid], priority=priority)
        self.scheduler.set_priority(tid, priority)
        self._schedule()

    def set_bandwidth_limit(self, rate: float | None) -> None:
        self.bucket.set_rate(rate, time.monotonic())

    def pause(self) -> None:
        """Stop every transfer and start none until :meth:`unpause`; tasks stay RUNNING,
        waiting with reason "session paused"."""
        self.scheduler.pause()
        for tid, job in list(self._jobs.items()):
            job.cancel()
            del self._jobs[tid]
            self.scheduler.remove(tid)
            self._enqueue(self.tasks[tid])
        self._schedule()

    def unpause(self) -> None:
        self.scheduler.unpause()
        self._schedule()

    # running a task ----------------------------------------------------------------------

    async def _run(self, task: DownloadTask) -> None:
        """One turn of a task in a slot: attempts until it completes, fails, or must back off
        (the slot is given back during a backoff; the scheduler starts it again later)."""
        rec = task._record
        tid = rec.task_identifier
        try:
            while True:
                before = task._received
                try:
                    await self._attempt(task)
                    return
                except _Restart:
                    self._restarts[tid] = self._restarts.get(tid, 0) + 1
                    if self._restarts[tid] > _MAX_RESTARTS:
                        raise NetworkError(f"{rec.url} kept changing while it was downloaded "
                                           f"({self._restarts[tid]} restarts); try again later", url=rec.url,
                                           task_identifier=tid) from None
                except (NetworkError, TransferTimeout, _RetryableStatus) as exc:
                    failures = 1 if task._received > before else self._failures.get(tid, 0) + 1
                    self._failures[tid] = failures
                    if failures > self.config.max_retries:
                        if isinstance(exc, _RetryableStatus):
                            raise HTTPStatusError(
                                f"{rec.url} answered HTTP {exc.status} {failures} times in a row; giving up",
                                status=exc.status, url=rec.url, task_identifier=tid) from None
                        raise
                    delay = min(30.0, self.config.retry_backoff * 2 ** (failures - 1))
                    delay *= random.uniform(0.9, 1.1)
                    if isinstance(exc, _RetryableStatus) and exc.retry_after is not None:
                        delay = min(exc.retry_after, 3600.0)
                    self._emit(EventKind.RETRY, task, total_bytes_written=task._received,
                               error=f"{type(exc).__name__}: {exc}",
                               detail=f"attempt {failures + 1} in {delay:.2f} s")
                    self.scheduler.backoff(tid, time.time() + delay, RETRY)
                    return
        except asyncio.CancelledError:
            raise
        except BgdlError as exc:
            exc.url = exc.url or rec.url
            exc.task_identifier = tid
            self._fail(task, exc)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                self._fail(task, DiskFull(f"no space left for {rec.destination or rec.partial_path}; free some "
                                          "space and resume from the error's resume_data",
                                          url=rec.url, task_identifier=tid))
            else:
                self._fail(task, TransferError(f"writing {rec.partial_path} failed: {exc}", url=rec.url,
                                               task_identifier=tid))
        finally:
            if self._jobs.get(tid) is asyncio.current_task():
                del self._jobs[tid]
            self._schedule()

    def _check_partial(self, task: DownloadTask) -> int:
        """Reconcile the partial file with the journaled offset; return where to continue."""
        rec = task._record
        try:
            size = os.path.getsize(rec.partial_path)
        except FileNotFoundError:
            size = -1
        if rec.offset > 0 and size < rec.offset:
            what = "is missing" if size < 0 else f"has {size} bytes, fewer than the {rec.offset} journaled"
            self._restart(task, f"partial file {what}")
            return 0
        if size > rec.offset:
            os.truncate(rec.partial_path, rec.offset)  # bytes past the journaled offset are not vouched for
        if rec.offset > 0 and (rec.validator_kind is None or not rec.accepts_ranges):
            why = "no validator (ETag or Last-Modified)" if rec.validator_kind is None else "no byte-range support"
            self._restart(task, f"server gave {why}, so the partial file cannot be continued safely")
            return 0
        return rec.offset

    def _restart(self, task: DownloadTask, reason: str) -> None:
        rec = task._record
        self._emit(EventKind.RESTARTED, task, total_bytes_written=task._received, detail=reason)
        self._hashers.pop(rec.task_identifier, None)
        if os.path.exists(rec.partial_path):
            os.truncate(rec.partial_path, 0)
        task._received = 0
        self._set(task, offset=0, validator_kind=None, validator_value=None, accepts_ranges=False, total=None)

    async def _attempt(self, task: DownloadTask) -> None:
        rec = task._record
        offset = self._check_partial(task)
        task._received = offset
        validator = Validator(rec.validator_kind, rec.validator_value) \
            if rec.validator_kind and rec.validator_value else None
        headers = {**rec.headers, **resume_headers(offset, validator)}
        self._emit(EventKind.STARTED, task, total_bytes_written=offset, total_bytes_expected=rec.total,
                   detail=f"from byte {offset}")

        def on_redirect(status: int, target: str) -> None:
            self._emit(EventKind.REDIRECT, task, status=status, detail=target)

        async with open_response(self._http(), rec.url, headers, self.config, on_redirect) as resp:
            self._set(task, current_url=resp.url, status=resp.status, response_headers=resp.headers)
            self._emit(EventKind.RESPONSE, task, status=resp.status, total_bytes_written=offset)
            decision = decide(resp.status, resp.headers, offset=offset, validator=validator, known_total=rec.total)
            if decision.action == "status":
                if resp.status in (408, 425, 429) or resp.status >= 500:
                    raise _RetryableStatus(f"{resp.url} answered HTTP {resp.status}", status=resp.status,
                                           retry_after=_retry_after(resp.headers.get("Retry-After")))
                _unlink(rec.partial_path)
                self._complete(task, None)
                return
            if decision.action == "complete":
                await self._finalise(task)
                return
            if decision.action == "restart":
                self._restart(task, decision.reason)
                if not decision.use_body:
                    raise _Restart()
                offset = 0
            if offset == 0:
                found = validator_from_headers(resp.headers)
                self._set(task, total=decision.total, accepts_ranges=accepts_ranges(resp.headers),
                          validator_kind=found.kind if found else None,
                          validator_value=found.value if found else None)
                if decision.total is not None:
                    self.scheduler.update_remaining(rec.task_identifier, decision.total)
            else:
                self._emit(EventKind.RESUMED_AT_OFFSET, task, total_bytes_written=offset,
                           total_bytes_expected=rec.total)
            await self._receive(task, resp, offset)
        if rec.total is not None and task._received != rec.total:
            raise NetworkError(f"connection closed after {task._received} of {rec.total} bytes", url=rec.url)
        if rec.total is None:
            self._set(task, total=task._received)
        await self._finalise(task)

    async def _hasher_at(self, task: DownloadTask, offset: int) -> Any:
        """A sha256 object that has seen the first ``offset`` bytes of the partial file."""
        tid = task.task_identifier
        hasher, done = self._hashers.get(tid, (None, -1))
        if hasher is None or done != offset:
            def rehash() -> Any:
                h = hashlib.sha256()
                with open(task._record.partial_path, "rb") as f:
                    remaining = offset
                    while remaining > 0:
                        block = f.read(min(remaining, 4 * CHECKPOINT_BYTES))
                        if not block:
                            break
                        h.update(block)
                        remaining -= len(block)
                return h
            hasher = hashlib.sha256() if offset == 0 else await asyncio.to_thread(rehash)
        return hasher

    async def _receive(self, task: DownloadTask, resp: Any, offset: int) -> None:
        rec = task._record
        tid = rec.task_identifier
        hashing = _HashThread(await self._hasher_at(task, offset))
        fd = os.open(rec.partial_path, os.O_WRONLY | os.O_CREAT, 0o600)
        position = journaled = reported = offset
        interval = self.config.progress_interval
        next_report = time.monotonic() + interval
        try:
            os.ftruncate(fd, offset)
            os.lseek(fd, offset, os.SEEK_SET)
            async for chunk in resp.chunks():
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
                hashing.update(chunk)
                position += len(chunk)
                task._received = position
                pause = self.bucket.reserve(len(chunk), time.monotonic())
                if pause > 0:
                    await asyncio.sleep(pause)
                if position - journaled >= CHECKPOINT_BYTES:
                    self.store.set_offset(tid, position)  # the bytes are in the file first
                    rec.offset = journaled = position
                now = time.monotonic()
                if now >= next_report:
                    self._progress(task, position - reported)
                    reported, next_report = position, now + interval
        finally:
            os.close(fd)
            if position != journaled:
                self.store.set_offset(tid, position)
                rec.offset = position
            self._hashers[tid] = (hashing.finish(), position)  # at most a few chunks behind
            if position > reported:
                self._progress(task, position - reported)

    def _progress(self, task: DownloadTask, written: int) -> None:
        self._emit(EventKind.PROGRESS, task, bytes_written=written, total_bytes_written=task._received,
                   total_bytes_expected=task._record.total)

    async def _finalise(self, task: DownloadTask) -> None:
        rec = task._record
        tid = rec.task_identifier
        hasher = await self._hasher_at(task, rec.offset)
        digest = hasher.hexdigest()
        if rec.sha256 and digest != rec.sha256.lower():
            _unlink(rec.partial_path)
            raise ChecksumMismatch(
                f"{rec.url} downloaded to {rec.offset} bytes with sha256 {digest}, expected {rec.sha256}; "
                "nothing was kept. Check the expected digest or whether the source changed",
                expected=rec.sha256, actual=digest)
        target = Path(rec.destination) if rec.destination else self._inbox_path(rec)
        if rec.destination and target.exists() and not rec.overwrite:
            raise InvalidDestination(
                f"{target} appeared while the download ran; it was left untouched. Remove it, or pass "
                "overwrite=True; the download can continue from the error's resume_data")
        await asyncio.to_thread(_fsync, rec.partial_path)
        self._set(task, digest=digest, location=str(target))  # intent first: a crash now is recoverable
        os.replace(rec.partial_path, target)
        await asyncio.to_thread(_fsync, target.parent)
        self._hashers.pop(tid, None)
        self._emit(EventKind.FINISHED, task, total_bytes_written=rec.offset, total_bytes_expected=rec.total,
                   detail=str(target))
        self._complete(task, None)

    def _recover_finalised(self, task: DownloadTask) -> bool:
        """A process died between renaming a finished file and journaling it: finish the job."""
        rec = task._record
        target = Path(rec.location or "")
        if not os.path.exists(rec.partial_path) and target.is_file() and \
                (rec.total is None or target.stat().st_size == rec.total):
            task._received = rec.offset = target.stat().st_size
            self._emit(EventKind.FINISHED, task, total_bytes_written=rec.offset, total_bytes_expected=rec.total,
                       detail=str(target))
            self._complete(task, None)
            return True
        self._set(task, location=None, digest=None)
        return False

    def _resume_data(self, task: DownloadTask) -> bytes | None:
        rec = task._record
        if not rec.validator_kind or not rec.validator_value or not rec.accepts_ranges:
            return None
        if not os.path.exists(rec.partial_path):
            return None
        state = ResumeState(url=rec.url, headers=dict(rec.headers), partial_path=rec.partial_path,
                            offset=rec.offset, total=rec.total,
                            validator=Validator(rec.validator_kind, rec.validator_value),
                            destination=rec.destination, current_url=rec.current_url)
        return encode_resume_data(state, self.key)

    def _fail(self, task: DownloadTask, error: BgdlError) -> None:
        rec = task._record
        if not isinstance(error, ChecksumMismatch):
            error.resume_data = self._resume_data(task)
        if error.resume_data is None:
            _unlink(rec.partial_path)
        self._complete(task, error)

    def _complete(self, task: DownloadTask, error: BgdlError | None) -> None:
        rec = task._record
        task.waiting_reason = None
        self.scheduler.remove(rec.task_identifier)
        self._failures.pop(rec.task_identifier, None)
        self._restarts.pop(rec.task_identifier, None)
        if rec.destination and self.active_destinations.get(rec.destination) == rec.task_identifier:
            del self.active_destinations[rec.destination]
        self._set(task, state=TaskState.COMPLETED.value, error=None if error is None else error.to_dict(),
                  finished_at=time.time())
        if error is None:
            self._emit(EventKind.COMPLETED, task, total_bytes_written=task._received,
                       total_bytes_expected=rec.total, status=rec.status)
        else:
            self._emit(EventKind.FAILED, task, total_bytes_written=task._received, total_bytes_expected=rec.total,
                       status=rec.status, error=f"{type(error).__name__}: {error}")
        task._settle()

    # helpers -----------------------------------------------------------------------------

    def _http(self) -> aiohttp.ClientSession:
        if self._client is None:
            self._client = new_client(self.config)
        return self._client

    def _set(self, task: DownloadTask, **changes: Any) -> None:
        for name, value in changes.items():
            setattr(task._record, name, value)
        self.store.update_task(task.task_identifier, **changes)

    def _partial_path_for(self, record: TaskRecord) -> Path:
        token = os.urandom(4).hex()
        if record.destination:
            dest = Path(record.destination)
            return dest.with_name(f".{dest.name}.{token}.bgdl-part")
        folder = self.work_dir / "partial"
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        return folder / f"{record.task_identifier}-{token}.bgdl-part"

    def _inbox_path(self, record: TaskRecord) -> Path:
        folder = self.work_dir / "inbox"
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        name = Path(record.url.split("?", 1)[0]).name or "download"
        return folder / f"{record.task_identifier}-{name}"

    # events and the delegate -------------------------------------------------------------

    def _emit(self, kind: EventKind, task: DownloadTask | None = None, **fields: Any) -> Event:
        event = Event(0, time.time(), self.identifier, None if task is None else task.task_identifier,
                      kind.value, **fields)
        event = self.store.append_event(event)
        if not self.external_delivery:
            self._outbox.put_nowait(event)
        for listener in list(self.listeners):
            try:
                listener(event)
            except Exception:  # a display must never break a transfer
                log.exception("bgdl_nb event listener failed")
        return event

    async def _dispatch(self) -> None:
        while True:
            event = await self._outbox.get()
            if event is None:
                return
            try:
                await self._deliver(event)
            except Exception:
                log.exception("bgdl_nb could not deliver %s", event)
            # the cursor covers every event before it: write it when the queue runs dry, after a
            # finished file was handed over, or every 256 events (delivery is at least once)
            if self.store.durable and (self._outbox.empty() or event.event == EventKind.FINISHED.value
                                       or event.seq % 256 == 0):
                self.store.set_meta("delivered_seq", str(event.seq))

    async def _deliver(self, event: Event) -> None:
        task = self.tasks.get(event.task_identifier) if event.task_identifier is not None else None
        finished = await asyncio.wrap_future(self._deliverer.submit(self.delegate, self.session, task, event))
        if finished and task is not None and not task._record.destination:
            _unlink(event.detail)  # seed semantics: the temporary location ends with the callback
