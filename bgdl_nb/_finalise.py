"""Putting finished files in place, many at a time, with the guarantees of one at a time.

For one file the order is: the bytes are durable (fsync), the journal records the intent
(digest and final location) and commits, the file is renamed into place, the directory
is synced. A crash at any point leaves either the partial file and no intent, or an
intent that the next engine completes (the file renamed or still to rename).

With thousands of small files, one fsync, one commit and two thread hand-offs per file
cost more than the transfer. The :class:`Finaliser` keeps that order for a *batch*: the
files that finished while the previous batch was being written go together, with one
hand-off to make all their bytes durable (``syncfs`` of the file system for a large
batch, an fsync per file otherwise), one journal commit for all their intents, and one
hand-off for the renames and one sync per directory.

:func:`finalise` is a task's last step, after its last byte: the digest it was given is
checked (a file that does not match is never put in place), then the file joins a batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._digests import Digest
from ._events import EventKind
from ._exceptions import ChecksumMismatch, InvalidDestination, UnsafeFile
from ._files import check_ours, fsync_path, hash_prefix, unlink

if TYPE_CHECKING:
    from ._run import Reporter, TaskRun

__all__ = ["Finaliser", "finalise", "hasher_at"]

_SYNCFS_FROM = 4  # a batch of this many files or more is made durable with one syncfs


def _libc_syncfs() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function: Callable[[int], int] = libc.syncfs
        return function
    except (OSError, AttributeError):
        return None


_syncfs = _libc_syncfs()


def _make_durable(paths: list[str]) -> None:
    """fsync each file, or ``syncfs`` each file system they are on (blocking)."""
    if _syncfs is not None and len(paths) >= _SYNCFS_FROM:
        devices: dict[int, str] = {}
        for path in paths:
            devices.setdefault(os.stat(path).st_dev, path)
        for path in devices.values():
            fd = os.open(path, os.O_RDONLY)
            try:
                if _syncfs(fd) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, os.strerror(err), path)
            finally:
                os.close(fd)
        return
    for path in paths:
        fsync_path(path)


def current_umask() -> int:
    """The process's umask, read without changing it where the system allows."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (at start-up, before other threads write files)
    os.umask(mask)
    return mask


def _rename_all(moves: list[tuple[str, Path, Callable[[], None] | None]]) -> list[Exception | None]:
    """Rename each partial file into place (and call its ``then``), then sync each
    directory once (blocking).

    Partial files are private (0600) while they are incomplete; a finished file gets the
    mode any new file of the user would get (0666 less the umask), as wget and curl do."""
    results: list[Exception | None] = []
    folders: set[Path] = set()
    mode = 0o666 & ~current_umask()
    for partial, target, then in moves:
        try:
            # never chmod or rename a link (or another user's file) into place: the mode is set
            # on the file that was checked, through its descriptor, not through its name again
            try:
                fd = os.open(partial, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
            except OSError:
                check_ours(partial, os.lstat(partial))  # a link: UnsafeFile says so
                raise
            try:
                check_ours(partial, os.fstat(fd))
                os.fchmod(fd, mode)
            finally:
                os.close(fd)
            os.replace(partial, target)
        except (OSError, UnsafeFile) as exc:
            results.append(exc)
            continue
        folders.add(target.parent)
        results.append(None)
        if then is not None:
            with contextlib.suppress(OSError):  # the file is in place: what follows only tidies up
                then()
    for folder in folders:
        with contextlib.suppress(OSError):  # the rename happened; a failed directory sync only weakens it
            fsync_path(folder)
    return results


@dataclass(eq=False)
class _Item:
    partial: str
    target: Path
    record_intent: Callable[[], None]
    then: Callable[[], None] | None
    done: asyncio.Future[None]


class Finaliser:
    """Durable renames in batches; ``commit`` makes the journal's intents durable."""

    def __init__(self, commit: Callable[[], None]) -> None:
        self._commit = commit
        self._batch: list[_Item] = []
        self._worker: asyncio.Task[None] | None = None
        self._under_way: dict[str, asyncio.Future[None]] = {}  # partial file -> its finalisation

    async def finalise(self, partial: str, target: Path, record_intent: Callable[[], None],
                       then: Callable[[], None] | None = None) -> None:
        """Make ``partial`` durable, call ``record_intent`` (which journals the digest and
        the location), commit, and rename it to ``target``; raises what the rename raised.
        ``then`` (blocking: a claim file to remove, say) runs beside the loop right after
        the rename, in the same hand-off."""
        loop = asyncio.get_running_loop()
        item = _Item(partial, target, record_intent, then, loop.create_future())
        self._under_way[partial] = item.done
        item.done.add_done_callback(lambda _: self._under_way.pop(partial, None))
        self._batch.append(item)
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._drain())
        await asyncio.shield(item.done)  # a cancelled waiter does not stop a rename under way

    async def settled(self, partial: str) -> None:
        """Return once no finalisation of ``partial`` is under way (a task suspended while
        its file was being renamed, then resumed, must not start again beside the rename)."""
        under_way = self._under_way.get(partial)
        if under_way is not None:
            await asyncio.gather(asyncio.shield(under_way), return_exceptions=True)

    async def _drain(self) -> None:
        while self._batch:
            batch, self._batch = self._batch, []
            try:
                await self._finish(batch)
            except BaseException as exc:  # whatever went wrong, every waiter hears of it: none waits for ever
                for item in batch:
                    if not item.done.done():
                        item.done.set_exception(exc if isinstance(exc, Exception) else RuntimeError(repr(exc)))
                if not isinstance(exc, Exception):
                    raise

    async def _finish(self, batch: list[_Item]) -> None:
        try:
            await asyncio.to_thread(_make_durable, [item.partial for item in batch])
        except OSError as exc:
            for item in batch:
                item.done.set_exception(exc)
            return
        live = [item for item in batch if not item.done.cancelled()]
        for item in live:
            item.record_intent()  # intent first: a crash after this is recoverable
        self._commit()
        moves = [(i.partial, i.target, i.then) for i in live]
        results = await asyncio.shield(asyncio.to_thread(_rename_all, moves))
        for item, error in zip(live, results):
            if error is None:
                item.done.set_result(None)
            else:
                item.done.set_exception(error)

    async def close(self) -> None:
        if self._worker is not None:
            await asyncio.gather(self._worker, return_exceptions=True)


# a task's finished file -------------------------------------------------------------

async def hasher_at(run: TaskRun, offset: int) -> Any:
    """A sha256 object that has seen the first ``offset`` bytes of the partial file."""
    if run.hasher is not None and run.hashed == offset:
        if run.hashing is not None:
            await asyncio.wrap_future(run.hashing)
        return run.hasher
    if offset == 0:
        return hashlib.sha256()
    with run.working_locally("reading the partial file back for its digest"):
        return await asyncio.to_thread(hash_prefix, run.record.partial_path, offset)


async def finalise(run: TaskRun, report: Reporter, target: Path, finaliser: Finaliser) -> None:
    """Verify the digest, then (with other files finishing at the same time) make the bytes
    durable, journal the intent, and rename into place."""
    with run.working_locally("putting the finished file in place"):
        await _finalise(run, report, target, finaliser)


async def _finalise(run: TaskRun, report: Reporter, target: Path, finaliser: Finaliser) -> None:
    rec = run.record
    hasher = await hasher_at(run, rec.offset)
    digest = hasher.hexdigest()
    if rec.sha256 and digest != rec.sha256.lower():
        unlink(rec.partial_path)
        raise ChecksumMismatch(
            f"{rec.url} downloaded to {rec.offset} bytes with sha256 {digest}, expected {rec.sha256}; "
            "nothing was kept. Check the expected digest or whether the source changed",
            expected=rec.sha256, actual=digest)
    if rec.expected_hash:  # another algorithm: one read of the finished bytes, off the loop
        wanted = Digest.parse(rec.expected_hash)
        actual = await asyncio.to_thread(wanted.of_file, rec.partial_path)
        if actual != wanted.hexdigest:
            unlink(rec.partial_path)
            raise ChecksumMismatch(
                f"{rec.url} downloaded to {rec.offset} bytes with {wanted.algorithm} {actual}, expected "
                f"{wanted.hexdigest}; nothing was kept. Check the expected digest or whether the source changed",
                expected=str(wanted), actual=f"{wanted.algorithm}:{actual}")
    if rec.destination and target.exists() and not rec.overwrite:
        raise InvalidDestination(
            f"{target} appeared while the download ran; it was left untouched. Remove it, or pass "
            "overwrite=True; the download can continue from the error's resume_data")
    await finaliser.finalise(rec.partial_path, target, lambda: report.update(digest=digest, location=str(target)),
                             report.release_claim)
    run.hasher, run.hashed, run.hashing = None, -1, None
    report.emit(EventKind.FINISHED, total_bytes_written=rec.offset, total_bytes_expected=rec.total,
                detail=str(target))
