"""One download attempt: a request, what its response means, the bytes (then :func:`~bgdl_nb._finalise.finalise`).

An :class:`Attempt` works on the engine's private record of one task (:class:`TaskRun`)
and tells the engine everything through a :class:`Reporter`: events, changed fields,
durable offsets (only after the bytes below them were written to the partial file),
restarts. It never touches the journal and never decides a retry: it raises, and the
engine applies :func:`bgdl_nb._resume.retry_delay`.

What a response means is decided in one place, :func:`bgdl_nb._resume.decide`; this
module only carries out the :class:`~bgdl_nb._resume.Outcome`.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._events import EventKind
from ._exceptions import NetworkError, UnexpectedResponse
from ._files import (
    CHECKPOINT_BYTES,
    MARK_BYTES,
    WRITEBACK_BYTES,
    HashWorker,
    open_partial,
    partial_size,
    truncate_partial,
    unlink,
    verify_prefix,
)
from ._finalise import Finaliser, finalise, hasher_at
from ._reads import NEAR
from ._regions import MIN_SEGMENT, Segment, check_on_disk, compact
from ._resume import Outcome, Validator, accepts_ranges, decide, resume_headers, validator_from_headers
from ._run import LINK_REFUSED, Reporter, RestartNeeded, RetryableStatus, TaskRun, link_refused
from ._segments import Segmented, SegmentsChanged
from ._transfer import LowSpeed

if TYPE_CHECKING:
    from ._config import Configuration
    from ._transport import Transport

INLINE_HASH_BYTES = 1024 * 1024
"""Bodies up to this size are hashed on the event loop as they arrive, not on the hash thread."""

SPLIT_BELOW = 200_000_000
"""Bytes a second under which one connection is deemed held back (a server's or CDN's cap,
a long path), so that an automatically split file adds connections. A faster one keeps the
file: split, the digest reads the bytes back and every region keeps a CRC, which on few
cores costs more than a second connection adds."""

SPLIT_WARMUP = 0.25
"""Seconds of a new connection (slow start, the first bytes) not counted in its speed."""

SPLIT_WINDOW = 0.25
"""Seconds over which one connection's speed is measured before a split is decided."""

__all__ = ["CHECKPOINT_BYTES", "Attempt"]


class _SpeedProbe:
    """One connection's speed, measured once: its bytes over :data:`SPLIT_WINDOW` seconds
    after :data:`SPLIT_WARMUP`."""

    def __init__(self) -> None:
        self.due = time.monotonic() + SPLIT_WARMUP
        self.start: tuple[float, int] | None = None

    def rate(self, now: float, position: int) -> float | None:
        """Bytes a second once the window is over (asked with every chunk), else None."""
        if now < self.due:
            return None
        if self.start is None:  # warmed up: measure from here
            self.start, self.due = (now, position), now + SPLIT_WINDOW
            return None
        return (position - self.start[1]) / (now - self.start[0])


def _open_at(path: str, offset: int | None, claim: Callable[..., int | None]) -> int:
    """Open (or create, private, never through a link) the partial file to write at
    ``offset``, or with ``None`` for positional writes and reads (blocking). ``claim``
    claims the destination first; a new partial file that carries the claim comes back
    from it open."""
    fd = claim(keep=True)
    if fd is None:
        fd = open_partial(path, read=offset is None)
    if offset is None:
        return fd
    try:
        os.ftruncate(fd, offset)
        os.lseek(fd, offset, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


class Attempt:
    """One request for a task and what follows from its response."""

    def __init__(self, run: TaskRun, reporter: Reporter, transport: Transport,
                 config: Configuration, target: Path, hashing: HashWorker, finaliser: Finaliser) -> None:
        self.hashing = hashing
        self.finaliser = finaliser
        self.run = run
        self.report = reporter
        self.transport = transport
        self.config = config
        self.target = target

    def _partial_size(self) -> int:
        """The partial file's size, -1 when missing; :class:`UnsafeFile` when not ours."""
        return partial_size(self.run.record.partial_path)

    def check_partial(self) -> int:
        """Reconcile the partial file with the journaled offset; return where to continue."""
        rec = self.run.record
        if rec.offset == 0:
            return 0  # nothing to reconcile: opening the partial file empties it (and refuses a link)
        size = self._partial_size()
        if size < rec.offset:
            what = "is missing" if size < 0 else f"has {size} bytes, fewer than the {rec.offset} journaled"
            self.report.restart(f"partial file {what}")
            return 0
        if size > rec.offset:
            truncate_partial(rec.partial_path, rec.offset)  # bytes past the journaled offset are not vouched for
        if rec.validator_kind is None or not rec.accepts_ranges:
            why = "no validator (ETag or Last-Modified)" if rec.validator_kind is None else "no byte-range support"
            self.report.restart(f"server gave {why}, so the partial file cannot be continued safely")
            return 0
        return rec.offset

    async def verify_prefix(self, offset: int) -> int:
        """Check the bytes before ``offset`` against the digests journaled while they were
        written; continue from the last point that still agrees (a byte altered on disk
        while no process held the file never reaches a finished file). Bytes past the
        newest mark cannot be checked (a process killed before it marked them): they are
        fetched again, at most about a mark's worth."""
        run, rec = self.run, self.run.record
        if offset == 0 or (run.hasher is not None and run.hashed == offset):
            return offset  # nothing to check, or this process wrote the bytes and hashed them itself
        marks = [m for m in rec.marks or [] if m[0] <= offset]
        if not marks:
            return offset  # nothing marked yet (the first MiB, or resume data from before marks): trusted
        vouched = marks[-1][0]
        with run.working_locally("checking the partial file's bytes"):
            hasher, good = await asyncio.to_thread(verify_prefix, rec.partial_path, vouched, marks)
        if good < offset:
            truncate_partial(rec.partial_path, good)
            self.report.checkpoint(good)
            self.report.update(marks=[m for m in marks if m[0] <= good] or None)
        if good < vouched:
            self.report.emit(EventKind.RESTARTED, total_bytes_written=good, total_bytes_expected=rec.total,
                             detail=f"bytes of the partial file changed on disk since they were written (between "
                                    f"byte {good} and {vouched}); continuing from byte {good}, the last verified "
                                    "point")
        run.hasher, run.hashed, run.hashing = hasher, good, None
        return good

    def _mark(self, hasher: Any, position: int) -> None:
        """Journal the digest of the first ``position`` bytes once the hash thread has it."""
        loop = asyncio.get_running_loop()
        report = self.report

        def done(future: Any) -> None:
            if not future.cancelled() and future.exception() is None:
                loop.call_soon_threadsafe(report.mark, position, future.result())

        self.hashing.digest(hasher).add_done_callback(done)

    async def __call__(self) -> bool:
        """Run the attempt. True: the file is finished at the target. False: the server
        refused (a 404, say) and the task completes with that status and no file.
        Raises :class:`RestartNeeded`, :class:`RetryableStatus`, or a :class:`BgdlError`."""
        run, rec = self.run, self.run.record
        if rec.segments and self.check_segments():
            return await self._segmented(None)
        offset = await self.verify_prefix(self.check_partial())
        run.received = offset
        validator = Validator(rec.validator_kind, rec.validator_value) \
            if rec.validator_kind and rec.validator_value else None
        headers = {**rec.headers, **resume_headers(offset, validator)}
        self.report.emit(EventKind.STARTED, total_bytes_written=offset, total_bytes_expected=rec.total,
                         detail=f"from byte {offset}")

        def on_redirect(status: int, target: str) -> None:
            self.report.emit(EventKind.REDIRECT, status=status, detail=target)

        async with run.connection(self.transport.open(rec.url, headers, on_redirect)) as resp:
            self.report.update(current_url=resp.url, status=resp.status, response_headers=resp.headers)
            self.report.emit(EventKind.RESPONSE, status=resp.status, total_bytes_written=offset)
            decision = decide(resp.status, resp.headers, offset=offset, validator=validator, known_total=rec.total)
            if decision.outcome is Outcome.RETRY:
                raise RetryableStatus(f"{resp.url} answered HTTP {resp.status}", status=resp.status,
                                      retry_after=decision.retry_after)
            if decision.outcome is Outcome.FAIL:
                if resp.status in LINK_REFUSED and offset > 0 and validator is not None:
                    raise link_refused(resp.status, offset, rec.url)  # the partial file stays, for a new link
                unlink(rec.partial_path)
                if decision.client_error:
                    raise UnexpectedResponse(f"{resp.url}: {decision.reason}", status=resp.status, url=rec.url)
                return False
            if decision.outcome is Outcome.COMPLETE:  # every byte is here already: claimed before the rename
                await asyncio.to_thread(self.report.claim)
                await finalise(run, self.report, self.target, self.finaliser)
                return True
            if decision.outcome is Outcome.RESTART:
                self.report.restart(decision.reason)
                if not decision.use_body:
                    raise RestartNeeded()
                offset = 0
            split_if_slow = False
            if offset == 0:
                found = validator_from_headers(resp.headers)
                self.report.update(total=decision.total, accepts_ranges=accepts_ranges(resp.headers),
                                   validator_kind=found.kind if found else None,
                                   validator_value=found.value if found else None)
                if decision.total is not None:
                    self.report.learned_total(decision.total)
                if self._splittable():
                    if self.config.connections_per_file is not None:
                        return await self._segmented(resp)  # a fixed count: split at once, like aria2c -x
                    split_if_slow = self.config.bandwidth_limit is None  # our own limit is no reason to split
            else:
                self.report.emit(EventKind.RESUMED_AT_OFFSET, total_bytes_written=offset,
                                 total_bytes_expected=rec.total)
            if await self._receive(resp, offset, split_if_slow=split_if_slow, can_split=self._splittable()):
                return await self._segmented(resp, at=run.received)  # the same body goes on from there
        return await self._finish()

    async def _finish(self) -> bool:
        """The body ended: check its length, then put the file in place."""
        run, rec = self.run, self.run.record
        if rec.total is not None and run.received != rec.total:
            raise NetworkError(f"connection closed after {run.received} of {rec.total} bytes", url=rec.url)
        if rec.total is None:
            self.report.update(total=run.received)
        self.report.transferred()  # the connection is back in the pool
        await finalise(run, self.report, self.target, self.finaliser)
        return True

    # one file over many connections ---------------------------------------------------------

    def _splittable(self) -> bool:
        """A fresh download may be split: a strong validator, byte ranges, a length worth it."""
        rec, config = self.run.record, self.config
        connections = config.connections_per_file or config.http_maximum_connections_per_host
        return connections > 1 and rec.accepts_ranges and rec.validator_value is not None \
            and rec.total is not None and rec.total >= 2 * MIN_SEGMENT

    def check_segments(self) -> bool:
        """Journaled segments can continue when the partial file still has its full length."""
        rec = self.run.record
        size = self._partial_size()
        if rec.total is None or size != rec.total or not rec.validator_value:
            what = "is missing" if size < 0 else f"has {size} bytes, not the {rec.total} of the split file"
            self.report.restart(f"partial file {what}")
            return False
        return True

    async def _segmented(self, first: Any | None, at: int = 0) -> bool:
        """Finish the file over several connections; True once it is in place. ``first``
        is the open response from byte ``at`` (the bytes before it written and hashed by
        one connection, which found itself slow), or None to continue journaled segments."""
        run, rec = self.run, self.run.record
        assert rec.total is not None and rec.validator_value is not None

        def opener(headers: dict[str, str]) -> Any:
            return run.connection(self.transport.open(rec.url, {**rec.headers, **headers}, lambda *_: None))

        segments: list[Segment] | None = None
        hasher, hashed = hashlib.sha256(), 0  # the digest follows the contiguous prefix
        if at:  # the prefix is hashed already; its mark vouches for it
            segments = [Segment(0, at, at, crc=None), Segment(at, rec.total, at)]
            hasher, hashed = await hasher_at(run, at), at
        if first is None and rec.segments:
            with run.working_locally("checking the partial file's pieces"):
                found, hasher, hashed, changed = await asyncio.to_thread(
                    check_on_disk, rec.partial_path, rec.total, rec.segments, rec.marks)
            segments = found
            if changed:
                written = sum(g.pos - g.start for g in found)
                self.report.update(segments=compact(found, hashed), offset=written,
                                   marks=[m for m in rec.marks or [] if m[0] <= hashed] or None)
                ranges = ", ".join(f"{a}-{b - 1}" for a, b in changed)
                self.report.emit(EventKind.RESTARTED, total_bytes_written=written,
                                 total_bytes_expected=rec.total,
                                 detail=f"bytes of the partial file changed on disk since they were written "
                                        f"(bytes {ranges}); those are fetched again, the rest continues")
        fd = await asyncio.to_thread(_open_at, rec.partial_path, None, self.report.claim)
        try:
            split = Segmented(run, self.report, self.config, fd, rec.total, rec.validator_value, opener, hasher,
                              segments=segments, hashed=hashed)
            if first is None:
                self.report.emit(EventKind.RESUMED_AT_OFFSET, total_bytes_written=split.received(),
                                 total_bytes_expected=rec.total,
                                 detail=f"{sum(1 for s in split.segments if s.remaining)} segments continue")
            try:
                await split.run_all(first)
            except SegmentsChanged as exc:
                self.report.restart(exc.reason)
                raise RestartNeeded() from None
        finally:
            os.close(fd)
        self.report.transferred()  # the connection is back in the pool
        await finalise(run, self.report, self.target, self.finaliser)
        return True

    async def _receive(self, resp: Any, offset: int, *, split_if_slow: bool = False, can_split: bool = False) -> bool:
        """Write the body from ``offset`` to its end, hashing it; True when it stopped early
        because ``split_if_slow`` and this one connection proved slow (:data:`SPLIT_BELOW`),
        or because a reader waits for bytes well ahead of it and the file ``can_split``:
        the bytes so far are written, journaled and handed to the hasher, and the rest of
        the body is for :meth:`_segmented`."""
        run, rec = self.run, self.run.record
        hasher = await hasher_at(run, offset)
        run.hasher, run.hashed, run.hashing = None, -1, None  # until this attempt's bytes are handed over
        # creating a file can wait on the file system's journal for milliseconds while other
        # files are synced: it happens beside the loop, not on it
        fd = await asyncio.to_thread(_open_at, rec.partial_path, offset, self.report.claim)
        # a small body is hashed here as it arrives: a hand-off to the hash thread per chunk
        # (two thread wake-ups) costs more than hashing a few hundred KiB on the loop
        inline = rec.total is not None and rec.total - offset <= INLINE_HASH_BYTES
        position = journaled = reported = marked = written_back = offset
        interval = self.config.progress_interval
        next_report = time.monotonic() + interval
        floor = LowSpeed(self.config.low_speed_limit, self.config.low_speed_time, rec.url, offset)
        probe = _SpeedProbe() if split_if_slow else None
        slow = False
        try:
            async for chunk in resp.chunks():
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
                if inline:
                    hasher.update(chunk)
                else:
                    self.hashing.update(hasher, chunk)
                    if self.hashing.behind:  # bounded: wait for the hash instead of holding the bytes
                        await asyncio.wrap_future(self.hashing.settled())
                position += len(chunk)
                run.received = position
                if run.wants:
                    self.report.served()
                    ahead = min(w.start for w in run.wants)
                    if can_split and ahead - position > NEAR and rec.total is not None \
                            and rec.total - position >= 2 * MIN_SEGMENT:
                        self.report.emit(EventKind.SEGMENTED, total_bytes_written=position, detail=(
                            f"a reader waits for byte {ahead}: the file is split so that its bytes come next"))
                        slow = True
                        break
                pause = self.report.throttle(len(chunk))
                if pause > 0:
                    await asyncio.sleep(pause)
                    floor.reset(position)  # our own bandwidth limit is not the server trickling
                else:
                    floor.check(position)
                if position - written_back >= WRITEBACK_BYTES:  # the fsync before the rename stays short
                    self.hashing.writeback(fd, written_back, position)
                    written_back = position
                if position - journaled >= CHECKPOINT_BYTES:
                    self.report.checkpoint(position)  # the bytes are in the file first
                    journaled = position
                    if position - marked >= MARK_BYTES:
                        self._mark(hasher, position)
                        marked = position
                now = time.monotonic()
                if now >= next_report:
                    self._progress(position - reported)
                    reported, next_report = position, now + interval
                if probe is not None and (rate := probe.rate(now, position)) is not None:
                    probe = None  # decided, once
                    if rate < SPLIT_BELOW and rec.total is not None and rec.total - position >= 2 * MIN_SEGMENT:
                        self.report.emit(EventKind.SEGMENTED, total_bytes_written=position, detail=(
                            f"one connection gave {rate / 1e6:.0f} MB/s: connections are added while the "
                            "file's throughput grows"))
                        slow = True
                        break  # the rest of this body goes to the first of several connections
        finally:
            os.close(fd)
            if position != journaled:
                self.report.checkpoint(position)
            if position > marked:
                if inline:
                    self.report.mark(position, hasher.copy().hexdigest())
                else:
                    self._mark(hasher, position)
            run.hasher, run.hashed, run.hashing = hasher, position, None if inline else self.hashing.settled()
            if position > reported:
                self._progress(position - reported)
        return slow

    def _progress(self, written: int) -> None:
        self.report.emit(EventKind.PROGRESS, bytes_written=written, total_bytes_written=self.run.received,
                         total_bytes_expected=self.run.record.total)
