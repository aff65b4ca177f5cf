"""Journal first, publish second: the engine's group commit, its one sink, and a halt.

Every event an engine makes goes through one :class:`Publisher`. It is journaled at once
(its sequence number given) but reaches the :class:`Sink` only when its group commits, at
most :data:`GROUP_COMMIT_WINDOW` later or at the next :meth:`Publisher.flush`, together
with one :class:`~bgdl_nb._snapshots.TaskSnapshot` per task of the group, taken as the
task is after the group. A host therefore never shows what the journal could still lose.

A journal that cannot be written (its disk full, its folder read-only) halts: the engine
is told to stop its transfers (partial files kept), the sink is told why, committing is
tried again every few seconds and by every flush, and once it works the engine is told
to go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from ._events import Event, EventKind
from ._exceptions import BgdlError
from ._redact import redact_text
from ._snapshots import TaskSnapshot

if TYPE_CHECKING:
    from ._journal import Store
    from ._run import TaskRun

__all__ = ["GROUP_COMMIT_WINDOW", "NullSink", "Publisher", "Sink", "snapshot_of"]

log = logging.getLogger("bgdl_nb")

GROUP_COMMIT_WINDOW = 0.01
"""Seconds journal writes gather in one transaction before it commits and its events are
published. A process killed meanwhile loses at most this much of the journal: offsets
read lower (re-fetching a little more), never higher than the bytes on disk."""


class Sink(Protocol):
    """Where an engine's output goes (a host, or the service's broadcaster)."""

    def event(self, event: Event, snapshot: TaskSnapshot | None) -> None:
        """A journaled event, and the task it concerns after the change."""

    def counts(self, counts: dict[int, int]) -> None:
        """Live byte counts of transferring tasks that moved since the last call."""

    def halted(self, error: BgdlError) -> None:
        """The journal cannot be written (``error`` says why): transfers stopped."""


class NullSink:
    """A sink for an engine nobody watches yet."""

    def event(self, event: Event, snapshot: TaskSnapshot | None) -> None:
        pass

    def counts(self, counts: dict[int, int]) -> None:
        pass

    def halted(self, error: BgdlError) -> None:
        pass


def snapshot_of(run: TaskRun) -> TaskSnapshot:
    """The task of ``run`` as a host mirrors it (a shallow copy: cheap, and encoded at once)."""
    run.version += 1
    waiting = run.waiting
    return TaskSnapshot(dict(vars(run.record)), run.received, run.version,
                        None if waiting is None else str(waiting), None if waiting is None else waiting.reason.value)


class Publisher:
    """One engine's way out (see the module's text).

    Parameters
    ----------
    store
        The journal (its ``flush`` commits the open group).
    identifier
        The session identifier every event carries.
    sink
        Where published events go (:attr:`sink` may be replaced: a host attaches later).
    stop
        Called once when the journal stops taking writes: stop every transfer.
    go_on
        Called once the journal takes writes again.
    """

    def __init__(self, store: Store, identifier: str | None, sink: Sink, *, stop: Callable[[], None],
                 go_on: Callable[[], None]) -> None:
        self.store = store
        self.identifier = identifier
        self.sink = sink
        self._stop = stop
        self._go_on = go_on
        self._pending: list[tuple[Event, TaskRun | None]] = []  # published once the group commits
        self._flusher: asyncio.TimerHandle | None = None
        self.halted: BgdlError | None = None
        """Why the journal cannot be written now (the engine transfers nothing meanwhile)."""
        self._halt_retry: asyncio.TimerHandle | None = None
        self._halted_since = 0.0
        self.closed = False  # the journal is closed: nothing is tried again

    def journal(self, kind: EventKind, run: TaskRun | None, fields: dict[str, Any]) -> Event:
        """Write an event to the journal's open group (published with it, :meth:`publish`)."""
        for name in ("detail", "error"):  # event rows are shown and exported: no secrets in them
            if fields.get(name):
                fields[name] = redact_text(fields[name])
        return self.store.append_event(Event(0, time.time(), self.identifier,
                                             None if run is None else run.task_identifier, kind.value, **fields))

    def publish(self, event: Event, run: TaskRun | None) -> None:
        """Hand ``event`` to the sink once its group committed."""
        self._pending.append((event, run))
        self.flush_soon()

    def emit(self, kind: EventKind, run: TaskRun | None, **fields: Any) -> Event:
        """Journal an event, then publish it."""
        event = self.journal(kind, run, fields)
        self.publish(event, run)
        return event

    def flush_soon(self) -> None:
        """Commit what was written within ``GROUP_COMMIT_WINDOW`` from now."""
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().call_later(GROUP_COMMIT_WINDOW, self._flush_later)

    def _flush_later(self) -> None:
        with contextlib.suppress(BgdlError):  # a journal that cannot be written halts the engine (flush)
            self.flush()

    def flush(self) -> None:
        """Commit the journal's open group, then publish its events, in order (raises the
        reason, and halts, when the journal cannot be written)."""
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        try:
            self.store.flush()  # journal first, notify second
        except BgdlError as exc:
            self._halt(exc)
            raise
        if self.halted is not None:
            self._unhalt()
        pending, self._pending = self._pending, []
        if not pending:
            return
        batch = getattr(self.sink, "batch", None)
        taken: dict[int, TaskSnapshot] = {}  # one picture per task per group: as it is after the group
        with batch() if batch is not None else contextlib.nullcontext():  # one hand-over for the group
            for event, run in pending:
                snapshot = None
                if run is not None:
                    snapshot = taken.get(run.task_identifier)
                    if snapshot is None:
                        snapshot = taken[run.task_identifier] = snapshot_of(run)
                try:
                    self.sink.event(event, snapshot)
                except Exception:  # a display or a slow client must never break a transfer
                    log.exception("bgdl_nb event sink failed")

    def close(self) -> None:
        """The journal is closing: a halted one is not tried again."""
        self.closed = True
        if self._halt_retry is not None:
            self._halt_retry.cancel()
            self._halt_retry = None

    # a journal that cannot be written ----------------------------------------------------

    def _halt(self, error: BgdlError) -> None:
        if self.halted is None:
            log.error("bgdl_nb: %s; transfers stop until it can be written", error)
            self._stop()
            self._halted_since = time.monotonic()
            self.sink.halted(error)
        self.halted = error
        if self._halt_retry is None and not self.closed:
            wait = min(30.0, 2.0 + (time.monotonic() - self._halted_since) / 4)  # 2 s, slower as it lasts
            self._halt_retry = asyncio.get_running_loop().call_later(wait, self._retry_journal)

    def _retry_journal(self) -> None:
        self._halt_retry = None
        if self.halted is not None and not self.closed:
            self._flush_later()

    def _unhalt(self) -> None:
        log.info("bgdl_nb: the journal can be written again; transfers continue")
        self.halted = None
        if self._halt_retry is not None:
            self._halt_retry.cancel()
            self._halt_retry = None
        self._go_on()
