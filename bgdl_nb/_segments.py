"""One file over many connections (SPEC §7): segments, work stealing, a digest that follows.

A file whose server gives a strong validator, byte ranges and a length is split into
segments written with positional writes into one partial file (preallocated to its
length). The first connection's body is segment 0; every added connection takes half of
the largest remaining segment (work stealing, as aria2 and parfive do), and so does a
connection whose segment is done. Every segment request carries ``If-Range``; a ``200``
to it, another validator or another total means the resource changed, and the whole
file starts again from byte 0: bytes of two versions are never mixed.

How many connections: ``connections_per_file`` fixes it; ``None`` doubles it every quarter
second while the file's throughput still grows (by 8 % or more), up to the per-host
limit. The journal keeps each segment's durable offset (``TaskRecord.segments``), so
after a crash every segment continues from its own offset. The sha256 of the whole
file follows the contiguous prefix as it grows (read back from the page cache on the
hash thread) and is finished before the rename.

:func:`split` and :func:`steal` are the pure decisions; :class:`Segmented` runs them.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._events import EventKind
from ._exceptions import NetworkError, TransferError
from ._files import HASH_BLOCK

if TYPE_CHECKING:
    from ._attempt import Reporter, TaskRun
    from ._config import Configuration

__all__ = ["MIN_SEGMENT", "Segment", "Segmented", "SegmentsChanged", "split", "steal"]

MIN_SEGMENT = 2 * 1024 * 1024
"""A segment is never split below this size: a new connection costs a round trip."""

_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+)\s*$", re.IGNORECASE)
_WINDOW = 0.25           # seconds between decisions about adding a connection
_GROWTH = 1.08           # a new connection must have raised throughput by 8 % to earn another
_SEGMENT_RETRIES = 4     # a segment's connection may fail this often before the attempt fails


@dataclass
class Segment:
    """Bytes ``[start, end)`` of the file; ``pos`` is how far they are written."""

    start: int
    end: int
    pos: int

    @property
    def remaining(self) -> int:
        return max(0, self.end - self.pos)

    def as_list(self) -> list[int]:
        return [self.start, self.end, self.pos]


def split(total: int, segments: list[list[int]] | None) -> list[Segment]:
    """The segments of a file of ``total`` bytes: the journaled ones, or one for all of it."""
    if segments:
        return [Segment(int(s), int(e), int(p)) for s, e, p in segments]
    return [Segment(0, total, 0)]


def steal(segments: list[Segment], minimum: int = MIN_SEGMENT) -> Segment | None:
    """Take the second half of the largest remaining segment as a new segment (the
    victim's ``end`` shrinks); ``None`` when nothing is worth splitting."""
    victim = max(segments, key=lambda s: s.remaining, default=None)
    if victim is None or victim.remaining < 2 * minimum:
        return None
    middle = victim.pos + victim.remaining // 2
    new = Segment(middle, victim.end, middle)
    victim.end = middle
    segments.append(new)
    return new


class SegmentsChanged(Exception):
    """A segment's response shows the resource changed: restart the whole file."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


Opener = Callable[[dict[str, str]], Any]  # headers -> async context manager of an opened response


class Segmented:
    """Downloads the rest of one file over several connections."""

    def __init__(self, run: TaskRun, report: Reporter, config: Configuration, fd: int, total: int,
                 validator: str, opener: Opener, hashing: Any, hasher: Any) -> None:
        self.run, self.report, self.config = run, report, config
        self.fd, self.total, self.validator = fd, total, validator
        self.opener = opener
        self.hashing, self.hasher = hashing, hasher
        self.segments = split(total, run.record.segments)
        self.journaled = {id(s): s.pos for s in self.segments}
        self.hashed = 0  # the digest has seen (or is being fed) bytes [0, hashed)
        self._hash_job: asyncio.Future[None] | None = None
        self.limit = config.connections_per_file or config.http_maximum_connections_per_host
        self.workers: set[asyncio.Task[None]] = set()
        self.failures = 0
        self.error: BaseException | None = None
        self._target = 1
        self.reported = self.received()

    # progress -------------------------------------------------------------------------------

    def received(self) -> int:
        """Bytes written: the segments always cover the whole file between them."""
        return sum(s.pos - s.start for s in self.segments)

    def _checkpoint(self, force: bool = False) -> None:
        """Journal every segment's offset once one of them ran a checkpoint ahead."""
        from ._attempt import CHECKPOINT_BYTES
        if force or any(s.pos - self.journaled.get(id(s), s.start) >= CHECKPOINT_BYTES for s in self.segments):
            self.report.update(segments=[s.as_list() for s in self.segments], offset=self.received())
            for s in self.segments:
                self.journaled[id(s)] = s.pos

    # running ---------------------------------------------------------------------------------

    async def run_all(self, first: Any | None) -> None:
        """Finish the file. ``first`` is an open response for segment 0 (bytes from 0), or
        ``None`` when continuing journaled segments."""
        if os.fstat(self.fd).st_size < self.total:
            os.ftruncate(self.fd, self.total)  # preallocated: every segment writes in place
        self._checkpoint(force=True)
        if first is not None:
            self._spawn(self._stream(self.segments[0], first))
        else:
            for segment in [s for s in self.segments if s.remaining]:
                self._spawn(self._fetch(segment))
        grower = asyncio.get_running_loop().create_task(self._grow())
        digest = asyncio.get_running_loop().create_task(self._follow())
        try:
            while self.workers and self.error is None:
                await asyncio.wait(self.workers, return_when=asyncio.FIRST_COMPLETED)
                for job in [j for j in self.workers if j.done()]:
                    self.workers.discard(job)
                    if not job.cancelled() and job.exception() is not None and self.error is None:
                        self.error = job.exception()
                if self.error is None and len(self.workers) < self._wanted():
                    new = steal(self.segments)
                    if new is not None:
                        self._spawn(self._fetch(new))
            if self.error is not None:
                raise self.error
            if any(s.remaining for s in self.segments):
                raise NetworkError(f"segments of {self.run.record.url} ended early", url=self.run.record.url)
        finally:
            grower.cancel()
            digest.cancel()
            for job in self.workers:
                job.cancel()
            await asyncio.gather(grower, digest, *self.workers, return_exceptions=True)
            self._checkpoint(force=True)
            self.progress()
        await self._hash_to(self.total)
        self.run.hasher, self.run.hashed, self.run.hashing = self.hasher, self.total, None

    def _wanted(self) -> int:
        return self._target

    def _spawn(self, coro: Awaitable[None]) -> None:
        self.workers.add(asyncio.get_running_loop().create_task(coro))  # type: ignore[arg-type]

    async def _grow(self) -> None:
        """Add connections while the file's throughput still grows (or up to the fixed count)."""
        fixed = self.config.connections_per_file
        self._target = max(1, len(self.workers))
        if fixed is not None:
            self._target = fixed
            self._fill()
            self.report.emit(EventKind.SEGMENTED, total_bytes_written=self.received(),
                             detail=f"{fixed} connections (connections_per_file)")
            return
        best, last, at = 0.0, self.received(), time.monotonic()
        while self._target < self.limit:
            await asyncio.sleep(_WINDOW)
            now, got = time.monotonic(), self.received()
            rate, last, at = (got - last) / max(1e-6, now - at), got, now
            if rate < best * _GROWTH and self._target > 1:
                self.report.emit(EventKind.SEGMENTED, total_bytes_written=got, detail=(
                    f"{self._target} connections: throughput stopped growing at {rate / 1e6:.0f} MB/s"))
                return
            best = max(best, rate)
            self._target = min(self.limit, self._target * 2)  # doubling: 16 connections in 1 s
            self._fill()
        self.report.emit(EventKind.SEGMENTED, total_bytes_written=self.received(),
                         detail=f"{self._target} connections (the per-host limit)")

    def _fill(self) -> None:
        while len(self.workers) < self._target:
            new = steal(self.segments)
            if new is None:
                return
            self._spawn(self._fetch(new))

    async def _fetch(self, segment: Segment) -> None:
        """Request ``segment``'s remaining bytes (retrying a few times) and write them."""
        while segment.remaining:
            headers = {"Range": f"bytes={segment.pos}-{segment.end - 1}", "If-Range": self.validator}
            try:
                async with self.opener(headers) as resp:
                    self._check(resp, segment)
                    await self._stream(segment, resp)
            except (NetworkError, TransferError) as exc:
                if isinstance(exc, SegmentsChanged):
                    raise
                self.failures += 1
                if self.failures > _SEGMENT_RETRIES:
                    raise
                await asyncio.sleep(min(5.0, self.config.retry_backoff * 2 ** self.failures))

    def _check(self, resp: Any, segment: Segment) -> None:
        headers = {k.lower(): v for k, v in resp.headers.items()}
        if resp.status == 200:
            raise SegmentsChanged("server answered a segment's range request with the whole resource "
                                  "(it changed, or stopped honouring ranges)")
        if resp.status != 206:
            raise TransferError(f"segment request answered HTTP {resp.status}", url=self.run.record.url)
        match = _CONTENT_RANGE.match(headers.get("content-range", ""))
        if not match or int(match.group(1)) != segment.pos or int(match.group(3)) != self.total:
            raise SegmentsChanged(f"segment answered Content-Range {headers.get('content-range')!r}, asked "
                                  f"bytes {segment.pos}-{segment.end - 1}/{self.total}")
        etag = headers.get("etag")
        if etag is not None and self.validator.startswith('"') and etag != self.validator:
            raise SegmentsChanged(f"validator changed from {self.validator} to {etag}")

    async def _stream(self, segment: Segment, resp: Any) -> None:
        """Write a response body at ``segment.pos`` until the segment's (possibly shrunk) end."""
        async for chunk in resp.chunks():
            room = segment.end - segment.pos
            if room <= 0:
                break
            data = memoryview(chunk)[:room]
            written = 0
            while written < len(data):
                written += os.pwrite(self.fd, data[written:], segment.pos + written)
            segment.pos += len(data)
            self.run.received = self.received()
            pause = self.report.throttle(len(data))
            if pause > 0:
                await asyncio.sleep(pause)
            self._checkpoint()
            if segment.pos >= segment.end:
                break
        if segment.remaining:
            raise NetworkError(f"connection closed inside a segment of {self.run.record.url}",
                               url=self.run.record.url)

    # the digest ------------------------------------------------------------------------------

    def _contiguous(self) -> int:
        """Bytes from 0 that are all written."""
        end = 0
        for s in sorted(self.segments, key=lambda s: s.start):
            if s.start > end:
                break
            end = max(end, s.pos)
            if s.pos < s.end:
                break
        return end

    async def _follow(self) -> None:
        """Every quarter second: the digest follows the prefix; progress at its interval."""
        next_report = time.monotonic() + self.config.progress_interval
        while True:
            await asyncio.sleep(0.25)
            if time.monotonic() >= next_report:
                self.progress()
                next_report = time.monotonic() + self.config.progress_interval
            await self._hash_to(self._contiguous())

    def progress(self) -> None:
        """A ``progress`` event for the bytes written since the last one."""
        got = self.received()
        if got > self.reported:
            self.report.emit(EventKind.PROGRESS, bytes_written=got - self.reported, total_bytes_written=got,
                             total_bytes_expected=self.total)
            self.reported = got

    async def _hash_to(self, end: int) -> None:
        """Feed the digest up to ``end``; one feeding at a time, and a cancelled waiter
        never leaves a feeding half done behind the next one."""
        if self._hash_job is not None:
            await asyncio.shield(self._hash_job)
        if end > self.hashed:
            start, self.hashed = self.hashed, end
            self._hash_job = asyncio.ensure_future(asyncio.to_thread(_hash_range, self.hasher, self.fd, start, end))
            await asyncio.shield(self._hash_job)


def _hash_range(hasher: Any, fd: int, start: int, end: int) -> None:
    """Feed bytes ``[start, end)`` of ``fd`` to ``hasher`` (blocking; page-cache reads)."""
    position = start
    while position < end:
        block = os.pread(fd, min(HASH_BLOCK, end - position), position)
        if not block:
            raise NetworkError(f"the partial file ends at {position}, before {end}")
        hasher.update(block)
        position += len(block)
