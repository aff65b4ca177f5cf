"""A task's run: the engine's live state of one task (:class:`TaskRun`), what an attempt
tells the engine (:class:`Reporter`), and the two ways an attempt ends that are not
failures of the task (:class:`RestartNeeded`, :class:`RetryableStatus`). The engine, an
:class:`~bgdl_nb._attempt.Attempt` and the segments of a split file share them."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ._events import EventKind
from ._exceptions import HTTPStatusError, TransferError

if TYPE_CHECKING:
    from ._journal import TaskRecord
    from ._reads import Want
    from ._segments import Segmented
    from ._waits import Wait

__all__ = ["LINK_REFUSED", "Reporter", "RestartNeeded", "RetryableStatus", "TaskRun", "host_of", "link_refused"]


@dataclass(eq=False)
class TaskRun:
    """The engine's private, live state of one task: its journal record and what is not
    journaled (the byte count ahead of the durable offset, the waiting reason, the running
    digest, the retry counters)."""

    record: TaskRecord
    received: int = 0
    waiting: Wait | None = None
    hasher: Any = None
    hashed: int = -1          # bytes handed to the hasher (-1: none)
    hashing: Any = None       # a future done once the hasher has seen them all
    failures: int = 0         # consecutive failed attempts without progress
    restarts: int = 0
    version: int = 0          # snapshots taken: a host keeps the newest it has seen
    resumed_once: bool = False  # resume() was called in this engine's life
    claim_released: bool = False  # its file is in place and its destination's claim gone
    wants: list[Want] = field(default_factory=list)  # bytes readers wait for (bgdl_nb.open)
    split: Segmented | None = None  # the segments of the attempt under way, when its file is split
    local: str | None = None  # local work under way that moves no byte (checking or finishing the file)
    opening: int = 0          # requests waiting for their response (or for a connection of the host's pool)
    streaming: int = 0        # responses being read

    @contextlib.asynccontextmanager
    async def connection(self, opening: contextlib.AbstractAsyncContextManager[Any]) -> AsyncIterator[Any]:
        """Enter ``opening`` (an :func:`~bgdl_nb._transfer.open_response`), counting the
        request while it waits for its response and the response while it is read: a
        task whose every request waits while the host's connections are all streaming
        waits for the host, and the engine says so."""
        self.opening += 1
        entered = False
        try:
            async with opening as resp:
                self.opening -= 1
                entered = True
                self.streaming += 1
                try:
                    yield resp
                finally:
                    self.streaming -= 1
        finally:
            if not entered:
                self.opening -= 1

    @contextlib.contextmanager
    def working_locally(self, what: str) -> Iterator[None]:
        """Mark local work (reading a large partial file back, syncing the finished one):
        no byte moves meanwhile, rightly, and the engine's liveness check knows it."""
        self.local = what
        try:
            yield
        finally:
            self.local = None

    @property
    def task_identifier(self) -> int:
        return self.record.task_identifier


def host_of(url: str) -> str:
    """The host (and port) a URL's connections go to, as the scheduler and the connection
    share count them."""
    rest = url.partition("://")[2]  # string work: asked of every task as it is queued
    for stop in "/?#":
        rest = rest.partition(stop)[0]
    return rest.lower()


class RestartNeeded(Exception):
    """The partial file was discarded; ask again from byte 0."""


LINK_REFUSED = frozenset({401, 403, 410})
"""Statuses of a link that stopped working while its file downloads (a signed link that
expired, access withdrawn): the bytes already here are kept for a new link."""


def link_refused(status: int, offset: int, url: str) -> HTTPStatusError:
    """The error that ends a task whose link answered ``status`` once ``offset`` bytes were
    here; the engine attaches resume data, and a new link to the same file continues."""
    return HTTPStatusError(
        f"the link answered HTTP {status} after {offset:,} bytes had arrived (a signed link that expired, or "
        "access withdrawn); those bytes are kept: run the same download again with a new link to the same file "
        "and it continues from them", status=status, url=url)


class RetryableStatus(TransferError):
    """A 408, 425, 429 or 5xx: the engine retries after ``retry_after`` or its backoff."""

    def __init__(self, message: str, *, status: int, retry_after: float | None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.status = status
        self.retry_after = retry_after


class Reporter(Protocol):
    """What an attempt tells the engine."""

    def emit(self, kind: EventKind, **fields: Any) -> None:
        """Journal and publish an event of this task."""

    def update(self, **changes: Any) -> None:
        """Change fields of the task's record (journaled)."""

    def checkpoint(self, offset: int) -> None:
        """The first ``offset`` bytes of the partial file are written: journal the offset."""

    def restart(self, reason: str) -> None:
        """The partial file cannot be continued: discard it (with ``reason`` in the log)."""

    def mark(self, offset: int, digest: str) -> None:
        """The sha256 of the first ``offset`` bytes, to check them before a later resume."""

    def learned_total(self, total: int) -> None:
        """The resource's length became known (the disk preflight uses it)."""

    def claim(self, keep: bool = False) -> int | None:
        """Claim the task's destination (or check that a claim older than half its lease
        is still its own) before a byte is written; :class:`InvalidDestination` while
        another task holds it. Blocking: called beside the loop, in the hand-off that
        opens the partial file, so a new file costs no hand-off of its own for its claim.
        ``keep``: return the partial file when the claim created it (its carrier), open
        to read and write, for the caller to close; else None."""

    def release_claim(self) -> None:
        """The file is in place: give up its destination's claim (blocking; beside the loop)."""

    def transferred(self) -> None:
        """Every byte is in and the connection is back in the pool: another task may
        transfer while this one's file is verified, made durable and renamed."""

    def throttle(self, nbytes: int) -> float:
        """Seconds to pause after ``nbytes`` to honour the bandwidth limit."""

    def served(self) -> None:
        """New bytes are written while readers wait (:attr:`TaskRun.wants`): tell those
        whose bytes are all there."""

    def connection_share(self) -> int:
        """Connections this task may hold for its pieces now: its host's limit shared with
        the other tasks transferring from that host, so none waits while one holds all."""
