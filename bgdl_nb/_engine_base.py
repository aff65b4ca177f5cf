"""The engine's task records: every change of a task ends here.

:class:`EngineBase` changes a task's record only through :meth:`EngineBase._set`
(journaled), its state only through :meth:`EngineBase._move` (the transition table of
:mod:`bgdl_nb._states`, the new state and its event in one transaction), and hands every
event to its :class:`~bgdl_nb._publisher.Publisher`, which publishes it with a
:class:`~bgdl_nb._snapshots.TaskSnapshot` of the task once the journal committed. It
also answers the questions hosts ask (snapshots, the backlog, who writes a destination,
reads of a file still downloading) and links a transfer shared with another session.
The controls are in :mod:`bgdl_nb._control`, scheduling and running in :mod:`bgdl_nb._engine`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ._bandwidth import TokenBucket
from ._claims import carrier_name, claim, release
from ._config import Configuration
from ._events import Event, EventKind
from ._exceptions import BgdlError, ChecksumMismatch, InvalidInput, UnsafeFile
from ._files import partial_path_for, partial_size, unlink
from ._journal import Store, TaskRecord
from ._meter import ByteMeter
from ._publisher import Publisher, Sink, snapshot_of
from ._reads import Want, covered, reader_view, written_ranges
from ._redact import redact_url
from ._resume import ResumeState, Validator, encode_resume_data
from ._run import TaskRun, host_of
from ._scheduler import Scheduler
from ._snapshots import TaskSnapshot
from ._states import TaskState, check_transition
from ._transfer import AiohttpTransport
from ._waits import Wait

if TYPE_CHECKING:
    from ._transport import Transport

__all__ = ["EngineBase"]

log = logging.getLogger("bgdl_nb")

_PUBLIC = {"earliest_begin_date": "earliest_begin_date", "expected_bytes": "count_of_bytes_client_expects_to_receive",
           "expected_send_bytes": "count_of_bytes_client_expects_to_send"}
_CONFIGURABLE = frozenset(_PUBLIC)

class _Plan(Protocol):
    def __call__(self, resumed: Sequence[TaskRun] = ()) -> None: ...


class EngineBase:
    """Records, journal and sink; see :class:`bgdl_nb._engine.Engine` for the rest."""

    config: Configuration
    store: Store
    key: bytes
    work_dir: Path
    identifier: str | None
    out: Publisher  # the journal's group commit and the sink
    scheduler: Scheduler
    bucket: TokenBucket
    _runs: dict[int, TaskRun]
    _running: set[int]  # the tasks in state RUNNING
    _jobs: dict[int, asyncio.Task[None]]
    _destinations: dict[str, int]
    _held: dict[int, str]
    meter: ByteMeter
    _changed: asyncio.Event
    transport: Transport | None  # how responses are opened (bgdl_nb's aiohttp one unless given)
    _delivered: int
    _nonce: str  # tells apart the tasks of two sessions without a journal in one process
    _claimed: dict[int, float]  # when (monotonic) this engine last claimed or refreshed a task's destination
    _closing: bool  # the engine is closing: nothing new starts
    # scheduling, which :class:`~bgdl_nb._engine.Engine` does: plan (and give tasks just
    # queued their resumed rows), stop a task's transfer, queue a task, say why it waits
    _schedule: _Plan
    _stop_job: Callable[[int], asyncio.Task[None] | None]
    _enqueue: Callable[[TaskRun], None]
    _wait: Callable[[TaskRun, Wait], None]

    # reading -----------------------------------------------------------------------------

    def snapshot(self, tid: int) -> TaskSnapshot:
        """What a host needs to mirror task ``tid`` (a shallow copy: cheap, and encoded at once)."""
        return snapshot_of(self._runs[tid])

    def snapshots(self) -> list[TaskSnapshot]:
        return [self.snapshot(tid) for tid in self._runs]

    def backlog(self) -> list[Event]:
        """Journaled events no delegate has acknowledged yet, in order."""
        delivered = int(self.store.get_meta("delivered_seq") or 0)
        return [e for e in self.store.events(delivered) if e.event != EventKind.FINISHED_EVENTS.value]

    def events(self, since: int = 0) -> list[Event]:
        return self.store.events(since)

    def want_bytes(self, tid: int, start: int, end: int) -> dict[str, Any]:
        """The control behind :func:`bgdl_nb.open`: what a reader of task ``tid``'s file may
        read now; bytes ``[start, end)`` not written yet are fetched next and a
        ``read_wait`` row tells when they are (:mod:`bgdl_nb._reads`)."""
        run = self._runs[tid]
        answer = reader_view(run)
        if run.record.state is TaskState.RUNNING and not covered(answer["ranges"], start, end):
            if not any(w.start == start and w.end == end for w in run.wants):
                run.wants.append(Want(start, end))
            if run.split is not None:
                run.split.want(start, end)
        return answer

    def _served(self, run: TaskRun) -> None:
        """Journal a ``read_wait`` row for each reader whose bytes are now all written."""
        ranges = written_ranges(run)
        for want in [w for w in run.wants if covered(ranges, w.start, w.end)]:
            run.wants.remove(want)
            self._emit(EventKind.READ_WAIT, run, bytes_written=want.end - want.start,
                       total_bytes_written=run.received, total_bytes_expected=run.record.total,
                       detail=f"bytes {want.start}-{want.end - 1} after {time.monotonic() - want.since:.3f} s")

    def destination_owner(self, destination: str) -> int | None:
        """The unfinished task writing ``destination``, if any."""
        return self._destinations.get(destination)

    def url_of(self, tid: int) -> str:
        return self._runs[tid].record.url

    def summary(self) -> tuple[int, int]:
        """(tasks, running tasks)."""
        return len(self._runs), len(self._running)

    @property
    def busy(self) -> bool:
        return bool(self._running)

    @property
    def bandwidth_limit(self) -> float | None:
        return self.bucket.rate

    def ack(self, seq: int, finished_path: str | None = None) -> None:
        """A delegate has seen every event up to ``seq``; a finished file it was handed
        without a destination is now removed from the inbox (seed semantics)."""
        if self.store.durable and seq > self._delivered:
            self._delivered = seq
            self.store.set_meta("delivered_seq", str(seq))
            self.out.flush_soon()
        if finished_path:
            inbox = (self.work_dir / "inbox").resolve()
            path = Path(finished_path).resolve()
            if path.parent == inbox:  # only ever our own inbox files
                unlink(path)

    def _restart(self, run: TaskRun, reason: str) -> None:
        rec = run.record
        self._emit(EventKind.RESTARTED, run, total_bytes_written=run.received, detail=reason)
        run.hasher, run.hashed, run.hashing = None, -1, None
        run.wants.clear()  # its readers learn of the restart from the row above
        if partial_size(rec.partial_path) >= 0:
            # a new file, not the old one emptied: a reader holding the old one open reads
            # the old version whole and is told; it never sees bytes of both. A partial file
            # that carried the claim takes it along: the new one claims again as it is made
            unlink(rec.partial_path)
            self._claimed.pop(rec.task_identifier, None)
        run.received = 0
        self._set(run, offset=0, validator_kind=None, validator_value=None, accepts_ranges=False, total=None,
                  segments=None, marks=None)

    @staticmethod
    def _ours(partial: str) -> bool:
        """Whether ``partial`` is still the private file this task made (a link put in its
        place is left exactly where it is, for the user to see)."""
        try:
            return partial_size(partial) >= 0
        except UnsafeFile:
            return False

    def _resume_data(self, run: TaskRun) -> bytes | None:
        """Resume data for ``run``'s partial file, which the task is leaving (None when it
        cannot be continued). A partial file that carried the destination's claim moves to
        a name of its own first: the task ends, its claim with it; the bytes stay for the data."""
        rec = run.record
        if not rec.validator_kind or not rec.validator_value or not rec.accepts_ranges \
                or not Path(rec.partial_path).exists():
            return None
        if rec.destination and rec.partial_path == carrier_name(rec.destination) and self._ours(rec.partial_path):
            aside = partial_path_for(rec.destination, rec.task_identifier, self.work_dir)
            os.rename(rec.partial_path, aside)  # its owner attribute stays, and names no claim there
            self._set(run, partial_path=aside)
        state = ResumeState(url=rec.url, headers=dict(rec.headers), partial_path=rec.partial_path,
                            offset=rec.offset, total=rec.total,
                            validator=Validator(rec.validator_kind, rec.validator_value),
                            destination=rec.destination, current_url=rec.current_url, marks=rec.marks)
        return encode_resume_data(state, self.key, self.config.resolved_state_dir() / "secrets")

    def _connection_share(self, run: TaskRun) -> int:
        """Connections ``run`` may hold for its pieces now: the host's limit shared evenly
        among this engine's tasks transferring from that host (one at least)."""
        host = host_of(run.record.url)
        sharing = sum(1 for t in self._jobs if (r := self._runs[t]).streaming + r.opening
                      and host_of(r.record.url) == host)
        return max(1, self.config.http_maximum_connections_per_host // max(1, sharing))

    def _owner(self, tid: int) -> dict[str, Any]:
        """What a destination's claim file says of the task that holds it."""
        journal = getattr(self.store, "path", None)
        if journal is None:
            return {"journal": None, "identifier": self.identifier, "task": tid, "engine": self._nonce}
        return {"journal": str(journal), "identifier": self.identifier, "task": tid}

    def _claim_due(self, run: TaskRun, keep: bool = False) -> int | None:
        """Claim ``run``'s destination before its first byte is written, or make sure the
        claim is still its own when it was last claimed or refreshed over half a lease ago
        (a task suspended for long); blocking, called beside the loop. ``keep``: return
        the partial file when claiming created it, open (see :func:`~bgdl_nb._claims.claim`)."""
        rec = run.record
        if rec.destination and time.monotonic() - self._claimed.get(rec.task_identifier, -math.inf) \
                > self.config.claim_lease / 2:
            fd = self._claim(rec, keep=keep)
            self._claimed[rec.task_identifier] = time.monotonic()
            return fd
        return None

    def _claim(self, rec: TaskRecord, keep: bool = False) -> int | None:
        """Claim (or refresh the claim on) ``rec``'s destination (blocking: file I/O)."""
        assert rec.destination
        return claim(rec.destination, {**self._owner(rec.task_identifier), "url": redact_url(rec.url),
                                       "service": self._service_dir}, lease=self.config.claim_lease,
                     carried=rec.partial_path == carrier_name(rec.destination), keep=keep)

    @functools.cached_property
    def _service_dir(self) -> str | None:
        """The state folder of the service running this engine, named in its claims
        (resolved once: resolving a path costs a system call per component)."""
        return str(self.config.resolved_state_dir()) if self.config.runs_in_service else None

    def _fail(self, run: TaskRun, error: BgdlError) -> None:
        if not isinstance(error, ChecksumMismatch):
            error.resume_data = self._resume_data(run)
        if error.resume_data is None:
            unlink(run.record.partial_path)
        self._complete(run, error)

    def _complete(self, run: TaskRun, error: BgdlError | None, *, finished: bool = True) -> None:
        """End the task: with a file (``finished``), with the server's refusal (no error,
        not ``finished``: the status is in the record), or with ``error``."""
        rec = run.record
        tid = rec.task_identifier
        self.scheduler.remove(tid)
        self._held.pop(tid, None)
        self.meter.forget(tid)
        run.waiting = None
        if rec.destination and self._destinations.get(rec.destination) == tid:
            del self._destinations[rec.destination]
        if rec.destination:
            if not run.claim_released:  # the rename releases a finished file's claim
                release(rec.destination, self._owner(tid))
            self._claimed.pop(tid, None)
        if not finished and error is None:
            rec.location = None
        if run.wants and error is None and finished:
            self._served(run)  # the last bytes a reader waited for
        run.wants.clear()
        changes = {"error": None if error is None else error.to_dict(), "finished_at": time.time()}
        if error is None:
            self._move(run, TaskState.COMPLETED, EventKind.COMPLETED, changes, total_bytes_written=run.received,
                       total_bytes_expected=rec.total, status=rec.status)
        else:
            self._move(run, TaskState.COMPLETED, EventKind.FAILED, changes, total_bytes_written=run.received,
                       total_bytes_expected=rec.total, error=f"{type(error).__name__}: {error}",
                       status=getattr(error, "status", None))  # the refusal's status, not a 200 before a reset
        self._changed.set()

    # the record, the journal and the sink ------------------------------------------------

    def _move(self, run: TaskRun, state: TaskState, kind: EventKind | None,
              changes: dict[str, Any] | None = None, **event_fields: Any) -> None:
        """The one place a task changes state: check the table, journal, then emit."""
        check_transition(run.record.state, state)
        if state is not TaskState.RUNNING:
            run.waiting = None
        if kind is None:
            self._set(run, state=state, **(changes or {}))
            return
        with self.store.atomic():  # the new state and its event commit together
            self._set(run, state=state, **(changes or {}))
            event = self.out.journal(kind, run, event_fields)
        self.out.publish(event, run)

    def _transport(self) -> Transport:
        if self.transport is None:
            self.transport = AiohttpTransport(self.config)
        return self.transport

    def _set(self, run: TaskRun, **changes: Any) -> None:
        for name, value in changes.items():
            setattr(run.record, name, value)
        if "state" in changes:  # kept as it changes: "is anything running" is asked on every event
            (self._running.add if changes["state"] is TaskState.RUNNING else self._running.discard)(
                run.task_identifier)
        self.store.update_task(run.task_identifier, **changes)
        self.out.flush_soon()

    def _emit(self, kind: EventKind, run: TaskRun | None, **fields: Any) -> Event:
        """Journal an event, then publish it (:class:`~bgdl_nb._publisher.Publisher`)."""
        return self.out.emit(kind, run, **fields)

    def flush(self) -> None:
        """Commit the journal's open group, then publish its events (a journal that cannot
        be written halts the engine, and this raises why)."""
        self.out.flush()

    @property
    def sink(self) -> Sink:
        return self.out.sink

    @sink.setter
    def sink(self, sink: Sink) -> None:
        self.out.sink = sink

    @property
    def halted(self) -> BgdlError | None:
        """Why the journal cannot be written now (the engine transfers nothing meanwhile)."""
        return self.out.halted

    def _stop_all(self) -> None:
        """Stop every transfer, each queued to go on later from its bytes (a pause, or a
        journal that cannot be written)."""
        for tid in list(self._jobs):
            self._stop_job(tid)  # its bytes stay; it continues from its journaled offset
            self._enqueue(self._runs[tid])

    # a transfer shared with another session (the service links them) ---------------------

    def hold(self, tid: int, leader: str) -> None:
        """Task ``tid`` transfers nothing itself: the task named ``leader`` does."""
        self._held[tid] = f"shares the transfer of {leader}"

    def mirror_progress(self, tid: int, received: int, total: int | None) -> None:
        run = self._runs[tid]
        if run.record.state is TaskState.RUNNING and received != run.received:
            written, run.received = received - run.received, received
            if total is not None:
                self._set(run, total=total)
            self._emit(EventKind.PROGRESS, run, bytes_written=max(0, written), total_bytes_written=received,
                       total_bytes_expected=total)

    def adopt(self, tid: int, leader: dict[str, Any]) -> None:
        """The leading task completed: so does this one, with its file or its error."""
        run = self._runs[tid]
        self._held.pop(tid, None)
        if run.record.state is TaskState.COMPLETED:
            return
        self._set(run, **{k: leader[k] for k in ("total", "status", "response_headers", "current_url", "digest",
                                                 "location", "offset")})
        run.received = leader["offset"]
        error = leader.get("error")
        if error is None and leader["location"]:
            self._emit(EventKind.FINISHED, run, total_bytes_written=run.received,
                       total_bytes_expected=run.record.total, detail=leader["location"])
        self._complete(run, None if error is None else BgdlError.from_dict(error))

    # records outside the transfer ------------------------------------------------------------

    def configure(self, tid: int, changes: dict[str, Any]) -> TaskSnapshot:
        """Set fields of a task that has never run (seed: between downloadTask(with:) and resume())."""
        run = self._runs[tid]
        unknown = set(changes) - _CONFIGURABLE
        if unknown:
            raise InvalidInput(f"{', '.join(sorted(unknown))} cannot be set on a task")
        if run.record.state is not TaskState.SUSPENDED or run.resumed_once:
            raise InvalidInput(f"task {tid} has already started; set {', '.join(_PUBLIC[k] for k in changes)} "
                               "between download_task() and the first resume()")
        self._set(run, **changes)
        return self.snapshot(tid)  # no event: the host shows the change from the reply

    def _recover_finalised(self, run: TaskRun) -> bool:
        """A process died between renaming a finished file and journaling it: finish the job."""
        rec = run.record
        target = Path(rec.location or "")
        if not Path(rec.partial_path).exists() and target.is_file() and \
                (rec.total is None or target.stat().st_size == rec.total):
            run.received = rec.offset = target.stat().st_size
            journaled = self.store.events(0, rec.task_identifier)
            if not journaled or journaled[-1].event != EventKind.FINISHED.value:  # else the backlog delivers it
                self._emit(EventKind.FINISHED, run, total_bytes_written=rec.offset, total_bytes_expected=rec.total,
                           detail=str(target))
            self._complete(run, None)
            return True
        self._set(run, location=None, digest=None)
        return False
