"""One file over many connections (SPEC §7): segments, work stealing, a digest that follows.

A file whose server gives a strong validator, byte ranges and a length is split into
segments written with positional writes into one partial file (preallocated to its
length). The first connection's body is segment 0; every added connection takes half of
the largest remaining segment (work stealing, as aria2 and parfive do), and so does a
connection whose segment is done. Every segment request carries ``If-Range``; a ``200``
to it, another validator or another total means the resource changed, and the whole
file starts again from byte 0: bytes of two versions are never mixed.

How many connections: ``connections_per_file`` fixes it; ``None`` lets one connection
show its speed first (:data:`bgdl_nb._attempt.SPLIT_BELOW`) and, when it is slow, doubles
the count every quarter second while the file's throughput still grows (by 8 % or more),
up to the per-host limit. The journal keeps each segment's durable offset (``TaskRecord.segments``), so
after a crash every segment continues from its own offset. The sha256 of the whole
file follows the contiguous prefix as it grows (read back from the page cache on the
hash thread) and is finished before the rename.

Bytes altered on disk while no process held the file never reach a finished file: the
digest of the prefix is journaled as a mark every few MiB (as for one connection), and
every region beyond the last mark carries the CRC-32 of its written bytes. Before the
segments continue, :func:`check_on_disk` re-reads both; a region that no longer agrees is
fetched again, with the reason in the log.

The pure decisions on byte ranges (:func:`~bgdl_nb._regions.take`, :func:`~bgdl_nb._regions.steal`,
:func:`~bgdl_nb._regions.check_on_disk`) are in :mod:`bgdl_nb._regions`; :class:`Segmented` runs them.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
import zlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ._events import EventKind
from ._exceptions import NetworkError, TransferError
from ._files import CHECKPOINT_BYTES, HASH_BLOCK, MARK_BYTES, start_writeback
from ._reads import NEAR, carve, first_missing
from ._regions import MIN_SEGMENT, Segment, compact, contiguous, split, steal, take
from ._run import LINK_REFUSED, link_refused
from ._transfer import LowSpeed

if TYPE_CHECKING:
    from ._config import Configuration
    from ._run import Reporter, TaskRun

__all__ = ["Segmented", "SegmentsChanged"]

MIB = 1024 * 1024
FOLLOW_BYTES = 8 * MIB
"""The digest hashes as soon as this much of the contiguous prefix waits for it."""

_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+)\s*$", re.IGNORECASE)
_WINDOW = 0.25           # seconds between decisions about adding a connection
_GROWTH = 1.08           # a new connection must have raised throughput by 8 % to earn another
_SEGMENT_RETRIES = 4     # a segment's connection may fail this often before the attempt fails


class SegmentsChanged(Exception):
    """A segment's response shows the resource changed: restart the whole file."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


Opener = Callable[[dict[str, str]], Any]  # headers -> async context manager of an opened response


class Segmented:
    """Downloads the rest of one file over several connections, piece by piece in order."""

    def __init__(self, run: TaskRun, report: Reporter, config: Configuration, fd: int, total: int,
                 validator: str, opener: Opener, hasher: Any, *, segments: list[Segment] | None = None,
                 hashed: int = 0) -> None:
        self.run, self.report, self.config = run, report, config
        self.fd, self.total, self.validator = fd, total, validator
        self.opener = opener
        self.hasher = hasher
        self.segments = segments if segments is not None else split(total, run.record.segments)
        self.limit = config.connections_per_file or config.http_maximum_connections_per_host
        self.piece = max(MIN_SEGMENT, min(16 * 1024 * 1024, total // (self.limit * 8)))
        self.hashed = hashed  # the digest has seen (or is being fed) bytes [0, hashed)
        self.marked = hashed  # the newest journaled mark: the regions below it need no CRC
        self._hash_job: asyncio.Future[str] | None = None
        self.workers: set[asyncio.Task[None]] = set()
        self.failures = 0
        self.error: BaseException | None = None
        self._target = 1
        self.priority: list[Segment] = []  # pieces a reader waits for: the next ones any connection takes
        self._received = sum(g.pos - g.start for g in self.segments)
        self._unjournaled = 0
        self.reported = self._received

    # progress -------------------------------------------------------------------------------

    def received(self) -> int:
        """Bytes written (the regions always cover the whole file between them)."""
        return self._received

    def _checkpoint(self, force: bool = False) -> None:
        """Journal every region's offset once a checkpoint's worth of bytes is unjournaled,
        so a crash re-fetches at most that much per connection."""
        if force or self._unjournaled >= CHECKPOINT_BYTES:
            self.report.update(segments=compact(self.segments, self.marked), offset=self._received)
            self._unjournaled = 0

    # running ---------------------------------------------------------------------------------

    async def run_all(self, first: Any | None) -> None:
        """Finish the file. ``first`` is an open response for the whole file from byte 0
        (its connection keeps streaming while the pieces after it are free), or ``None``
        when continuing journaled regions."""
        if os.fstat(self.fd).st_size < self.total:
            os.ftruncate(self.fd, self.total)  # preallocated: every piece writes in place
        self.run.split = self
        if first is not None:
            head = take(self.segments, self.piece)
            assert head is not None
            self._spawn(self._worker(head, first))
        else:
            self._spawn(self._worker(None, None))
        for wanted in list(self.run.wants):  # readers that asked before the file was split
            self.want(wanted.start, wanted.end)
        self._checkpoint(force=True)
        grower = asyncio.get_running_loop().create_task(self._grow())
        digest = asyncio.get_running_loop().create_task(self._follow())
        try:
            while self.workers and self.error is None:
                await asyncio.wait(self.workers, return_when=asyncio.FIRST_COMPLETED)
                for job in [j for j in self.workers if j.done()]:
                    self.workers.discard(job)
                    if not job.cancelled() and job.exception() is not None and self.error is None:
                        self.error = job.exception()
                if self.error is None and not self.workers and any(g.remaining for g in self.segments):
                    self._spawn(self._worker(None, None))  # every connection failed over: start again
            if self.error is not None:
                raise self.error
        finally:
            grower.cancel()
            digest.cancel()
            for job in self.workers:
                job.cancel()
            await asyncio.gather(grower, digest, *self.workers, return_exceptions=True)
            if self._hash_job is not None:  # a hashing thread still reads the file: the caller closes it next
                await asyncio.gather(self._hash_job, return_exceptions=True)
            for seg in self.segments:
                seg.owned = False
            self._checkpoint(force=True)
            self.run.split = None
            self.progress()
        await self._hash_to(self.total)
        self.run.hasher, self.run.hashed, self.run.hashing = self.hasher, self.total, None

    def _spawn(self, coro: Awaitable[None]) -> None:
        self.workers.add(asyncio.get_running_loop().create_task(coro))  # type: ignore[arg-type]

    async def _grow(self) -> None:
        """Add connections while the file's throughput still grows (or up to the fixed count)."""
        fixed = self.config.connections_per_file
        if fixed is not None:
            self._target = fixed
            self._fill()
            self.report.emit(EventKind.SEGMENTED, total_bytes_written=self._received,
                             detail=f"{fixed} connections (connections_per_file), pieces of {self.piece // MIB} MiB")
            return
        best, last, at = 0.0, self._received, time.monotonic()
        while self._target < self.limit:
            await asyncio.sleep(_WINDOW)
            now, got = time.monotonic(), self._received
            rate, last, at = (got - last) / max(1e-6, now - at), got, now
            if rate < best * _GROWTH and self._target > 1:
                self.report.emit(EventKind.SEGMENTED, total_bytes_written=got, detail=(
                    f"{self._target} connections: throughput stopped growing at {rate / 1e6:.0f} MB/s"))
                return
            best = max(best, rate)
            self._target = min(self.limit, self._target * 2)  # doubling: 16 connections in 1 s
            self._fill()
        self.report.emit(EventKind.SEGMENTED, total_bytes_written=self._received,
                         detail=f"{self._target} connections (the limit), pieces of {self.piece // MIB} MiB")

    def _cap(self) -> int:
        """Connections this file uses now: its target, within its share of the host."""
        return max(1, min(self._target, self.report.connection_share()))

    def _fill(self) -> None:
        while len(self.workers) < self._cap() and any(g.remaining and not g.owned for g in self.segments):
            self._spawn(self._worker(None, None))

    def want(self, start: int, end: int) -> None:
        """A reader waits for bytes ``[start, end)``: unless a connection is about to write
        them, a piece starts at the first missing one and is the next piece fetched, by a
        connection of its own or, at the host's limit, by the connection with the most
        bytes left, which stops where it is for it (see :mod:`bgdl_nb._reads`)."""
        at = first_missing(self.segments, start, end)
        if at is None:
            return
        holder = next(s for s in self.segments if s.start <= at < s.end)
        if holder.owned and at - holder.pos <= NEAR:
            return  # its connection is nearly there
        if any(p.start == at for p in self.priority):
            return
        piece = carve(self.segments, at)
        self.priority.append(piece)
        if len(self.workers) < self.limit:
            self._spawn(self._worker(None, None))
            return
        victim = max((s for s in self.segments if s.owned), key=lambda s: s.remaining, default=None)
        if victim is not None and victim.remaining > NEAR:
            rest = Segment(victim.pos, victim.end, victim.pos)
            victim.end = victim.pos  # it stops after the chunk it writes; its worker takes the piece
            self.segments.insert(self.segments.index(victim) + 1, rest)

    def _next(self) -> Segment | None:
        while self.priority:
            piece = self.priority.pop(0)
            if piece.remaining and not piece.owned and any(s is piece for s in self.segments):
                piece.owned = True
                return piece
        return take(self.segments, self.piece) or steal(self.segments)

    async def _worker(self, piece: Segment | None, first: Any | None) -> None:
        """One connection: pieces one after another until none is left."""
        if piece is not None and first is not None:
            try:
                await self._stream(piece, first, open_ended=True)
            finally:
                first.abort()  # the rest of that body belongs to other pieces: stop it arriving
        while True:
            if len(self.workers) > self._cap() and not self.priority:
                return  # a connection added for a reader, or another file of the host needs one
            self._fill()  # another file of the host finished: this one's share grew
            piece = self._next()
            if piece is None:
                return
            try:
                await self._fetch(piece)
            finally:
                piece.owned = False

    async def _fetch(self, segment: Segment) -> None:
        """Request ``segment``'s remaining bytes (retrying a few times) and write them."""
        while segment.remaining:
            headers = {"Range": f"bytes={segment.pos}-{segment.end - 1}", "If-Range": self.validator}
            try:
                async with self.opener(headers) as resp:
                    self._check(resp, segment)
                    await self._stream(segment, resp, open_ended=False)
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
        if resp.status in LINK_REFUSED:
            raise link_refused(resp.status, self.run.received, self.run.record.url)
        if resp.status != 206:
            raise TransferError(f"segment request answered HTTP {resp.status}", url=self.run.record.url)
        match = _CONTENT_RANGE.match(headers.get("content-range", ""))
        if not match or int(match.group(1)) != segment.pos or int(match.group(3)) != self.total:
            raise SegmentsChanged(f"segment answered Content-Range {headers.get('content-range')!r}, asked "
                                  f"bytes {segment.pos}-{segment.end - 1}/{self.total}")
        etag = headers.get("etag")
        if etag is not None and self.validator.startswith('"') and etag != self.validator:
            raise SegmentsChanged(f"validator changed from {self.validator} to {etag}")

    def _extend(self, segment: Segment) -> bool:
        """An open-ended response reached its piece's end: take the next piece if nobody
        has it (the first connection streams on instead of asking again)."""
        index = self.segments.index(segment)
        if index + 1 < len(self.segments) and not self.priority:  # a reader's piece comes first
            after = self.segments[index + 1]
            if not after.owned and after.start == segment.end and after.pos == after.start and after.remaining:
                piece = take(self.segments, self.piece)
                if piece is after or (piece is not None and piece.start == segment.end):
                    assert piece is not None
                    self.segments.remove(piece)
                    segment.end = piece.end
                    return True
                if piece is not None:
                    piece.owned = False
        return False

    async def _stream(self, segment: Segment, resp: Any, *, open_ended: bool) -> None:
        """Write a response body at ``segment.pos`` until the segment's (possibly shrunk) end."""
        segment.owned = True
        floor = LowSpeed(self.config.low_speed_limit, self.config.low_speed_time, self.run.record.url, 0)
        got = 0
        async for chunk in resp.chunks():
            data = memoryview(chunk)
            while data:
                room = segment.end - segment.pos
                if room <= 0 and not (open_ended and self._extend(segment)):
                    segment.owned = False
                    return
                part = data[:segment.end - segment.pos]
                written = 0
                while written < len(part):
                    written += os.pwrite(self.fd, part[written:], segment.pos + written)
                if segment.crc is not None:
                    segment.crc = zlib.crc32(part, segment.crc)
                segment.pos += len(part)
                self._received += len(part)
                self.run.received = self._received  # also when the piece ends inside this chunk
                self._unjournaled += len(part)
                data = data[len(part):]
            got += len(chunk)
            if self.run.wants:
                self.report.served()
            pause = self.report.throttle(len(chunk))
            if pause > 0:
                await asyncio.sleep(pause)
                floor.reset(got)  # our own bandwidth limit is not the server trickling
            else:
                floor.check(got)
            self._checkpoint()
        segment.owned = False
        if segment.remaining:
            raise NetworkError(f"connection closed inside a piece of {self.run.record.url}",
                               url=self.run.record.url)

    # the digest ------------------------------------------------------------------------------

    async def _follow(self) -> None:
        """The digest follows the prefix as it grows, pausing a quarter second whenever it
        is within :data:`FOLLOW_BYTES` of it (so what is left to hash after the last byte
        is the last pieces, not a quarter second's worth of the whole file); progress at
        its interval."""
        next_report = time.monotonic() + self.config.progress_interval
        while True:
            if contiguous(self.segments) - self.hashed < FOLLOW_BYTES:
                await asyncio.sleep(0.25)
            if time.monotonic() >= next_report:
                self.progress()
                next_report = time.monotonic() + self.config.progress_interval
            await self._hash_to(contiguous(self.segments))

    def progress(self) -> None:
        """A ``progress`` event for the bytes written since the last one."""
        got = self.received()
        if got > self.reported:
            self.report.emit(EventKind.PROGRESS, bytes_written=got - self.reported, total_bytes_written=got,
                             total_bytes_expected=self.total)
            self.reported = got

    async def _hash_to(self, end: int) -> None:
        """Feed the digest up to ``end``; one feeding at a time, and a cancelled waiter
        never leaves a feeding half done behind the next one. Every ``MARK_BYTES`` the
        digest so far is journaled as a mark (after the regions it covers)."""
        if self._hash_job is not None:
            await asyncio.shield(self._hash_job)
        if end > self.hashed:
            start, self.hashed = self.hashed, end
            self._hash_job = asyncio.ensure_future(asyncio.to_thread(_hash_range, self.hasher, self.fd, start, end))
            digest = await asyncio.shield(self._hash_job)
            if end - self.marked >= MARK_BYTES or end == self.total:
                self._checkpoint(force=True)  # the journal's regions reach ``end`` before its mark does
                self.report.mark(end, digest)
                self.marked = end


def _hash_range(hasher: Any, fd: int, start: int, end: int) -> str:
    """Feed bytes ``[start, end)`` of ``fd`` to ``hasher`` and return the digest so far
    (blocking; page-cache reads)."""
    position = start
    while position < end:
        block = os.pread(fd, min(HASH_BLOCK, end - position), position)
        if not block:
            raise NetworkError(f"the partial file ends at {position}, before {end}")
        hasher.update(block)
        position += len(block)
    start_writeback(fd, start, end)  # hashed: on to the disk now, so the final fsync stays short
    return str(hasher.copy().hexdigest())
