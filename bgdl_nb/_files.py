"""Files on disk: partial-file names, durable renames, free space, and hashing beside the loop.

Small helpers shared by the download attempt and the engine. Anything here that can
take milliseconds (fsync, re-hashing a partial file) is called through
``asyncio.to_thread`` by its callers, so the engine's event loop never waits on a disk.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import functools
import hashlib
import os
import queue
import shutil
import stat
import threading
from pathlib import Path
from typing import Any

from ._exceptions import UnsafeFile
from ._private import private_dir

__all__ = ["CHECKPOINT_BYTES", "PARTIAL_SUFFIX", "HashWorker", "beside", "check_ours", "disk_size", "free_disk",
           "fsync_path", "hash_prefix", "inbox_path", "name_max", "nearest_existing", "open_partial", "partial_path_for",
           "partial_size", "truncate_partial", "unlink"]

HASH_BLOCK = 4 * 1024 * 1024

CHECKPOINT_BYTES = 1024 * 1024
"""The journal records a segment's offset at least every this many bytes, so a killed
process re-fetches at most this much per connection (plus what was in flight)."""


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)

PARTIAL_SUFFIX = ".bgdl-part"
"""How every partial file's name ends."""


def _not_ours(st: os.stat_result) -> str | None:
    """Why a file is not a partial file this user's bgdl_nb made, or None."""
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
        return f"belongs to another user (uid {st.st_uid})"
    if st.st_nlink != 1:
        return f"has {st.st_nlink} hard links"
    return None


def check_ours(path: str | os.PathLike[str], st: os.stat_result) -> None:
    """Raise :class:`UnsafeFile` unless ``st`` (an lstat or fstat of ``path``) is a
    private regular file of ours with one link."""
    why = _not_ours(st)
    if why is not None:
        raise UnsafeFile(f"the partial file {path} {why}: it is not the file bgdl_nb made, so it was left "
                         "untouched. Remove it, then resume the task to download the file again")


def partial_size(path: str | os.PathLike[str]) -> int:
    """The partial file's size, -1 when it is missing; :class:`UnsafeFile` when it is not ours."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return -1
    check_ours(path, st)
    return st.st_size


def open_partial(path: str | os.PathLike[str], *, read: bool = False) -> int:
    """Open the partial file for writing (and reading): created with ``O_EXCL`` when it
    is new, never through a symbolic link, and checked with ``fstat`` to be ours."""
    flags = (os.O_RDWR if read else os.O_WRONLY) | _NOFOLLOW
    try:
        return os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _open_ours(path, flags)


def read_partial(path: str | os.PathLike[str]) -> Any:
    """An existing partial file of ours, opened to read (never through a symbolic link)."""
    return open(_open_ours(path, os.O_RDONLY), "rb")


def _open_ours(path: str | os.PathLike[str], flags: int) -> int:
    """Open an existing file never through a symbolic link, and only when ``fstat`` says
    it is ours (:class:`UnsafeFile` otherwise)."""
    try:
        fd = os.open(path, flags | _NOFOLLOW)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            check_ours(path, os.lstat(path))
        raise
    try:
        check_ours(path, os.fstat(fd))
    except BaseException:
        os.close(fd)
        raise
    return fd


def truncate_partial(path: str | os.PathLike[str], length: int) -> None:
    """Cut the partial file to ``length`` bytes (through :func:`open_partial`)."""
    fd = open_partial(path)
    try:
        os.ftruncate(fd, length)
    finally:
        os.close(fd)


def fsync_path(path: str | os.PathLike[str]) -> None:
    """fsync a file or a directory (a rename is durable once its directory is synced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


WRITEBACK_BYTES = 64 * 1024 * 1024
"""A large download asks the kernel to start writing its bytes to disk every this many
bytes, so the fsync before the rename waits for the last stretch only, not the whole file."""


def start_writeback(fd: int, start: int, end: int) -> None:
    """Start writing bytes ``[start, end)`` of ``fd`` to disk without waiting for it, and
    let the page cache drop them once written (blocking only to submit: run beside the
    loop). Linux does both for ``POSIX_FADV_DONTNEED``; elsewhere this does nothing. Only
    bytes that were hashed already are passed: nothing reads them back."""
    advise = getattr(os, "posix_fadvise", None)
    if advise is not None and end > start:
        with contextlib.suppress(OSError):
            advise(fd, start, end - start, os.POSIX_FADV_DONTNEED)


def nearest_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (what a mkdir would have to write into)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _disk_usage(folder: str) -> Any:
    """The usage of ``folder``'s file system, None when it does not say (ramfs and some
    FUSE file systems give a size of 0: no limit is known, so none is assumed)."""
    try:
        usage = shutil.disk_usage(nearest_existing(Path(folder)))
    except OSError:
        return None
    return usage if usage.total > 0 else None


def free_disk(folder: str) -> int | None:
    """Free bytes on the file system of ``folder`` (or its nearest existing ancestor)."""
    usage = _disk_usage(folder)
    return None if usage is None else int(usage.free)


def disk_size(folder: str) -> int | None:
    """The total size of the file system of ``folder`` (or its nearest existing ancestor)."""
    usage = _disk_usage(folder)
    return None if usage is None else int(usage.total)


def unlink(path: str | os.PathLike[str] | None) -> None:
    """Remove ``path`` if it exists."""
    if path:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def name_max(folder: Path) -> int:
    """The longest file name (in bytes) the file system of ``folder`` allows."""
    return _name_max(str(folder))


@functools.lru_cache(maxsize=64)
def _name_max(folder: str) -> int:
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return 255


def partial_path_for(destination: str | None, task_identifier: int, work_dir: Path) -> str:
    """A partial file name of the task's own (a random token in it): beside its destination
    (so the final rename stays on one file system), or in the session's private work
    folder. A new task with a destination writes to the destination's claim carrier
    instead (:func:`bgdl_nb._claims.carrier_name`); this name is where its bytes move when
    the task ends and leaves them to resume data. A name near the file system's limit is
    shortened in the partial's name (the final name is kept)."""
    token = os.urandom(4).hex()
    if destination:
        return beside(destination, PARTIAL_SUFFIX, token)
    folder = private_dir(work_dir / "partial", "the partial files' folder")
    return os.path.join(folder, f"{task_identifier}-{token}{PARTIAL_SUFFIX}")


def beside(destination: str | os.PathLike[str], suffix: str, token: str = "") -> str:
    """A hidden file beside ``destination``: ``.<name>[.token]<suffix>``, with the name
    shortened when the result would pass the file system's limit (string work, not
    pathlib's: a batch of 10,000 tasks asks this twice per task)."""
    folder, name = os.path.split(os.fspath(destination))
    tail = f".{token}{suffix}" if token else suffix
    room = _name_max(folder) - 1 - len(os.fsencode(tail))
    if len(name) * 4 > room:  # only then can the name be too long in bytes (UTF-8: at most 4 a character)
        raw = os.fsencode(name)
        if len(raw) > room:
            name = os.fsdecode(raw[: room - 1] + b"~")
    return os.path.join(folder, f".{name}{tail}")


def inbox_path(url: str, task_identifier: int, work_dir: Path) -> Path:
    """The temporary location of a finished file that has no destination."""
    folder = private_dir(work_dir / "inbox", "the inbox folder")
    name = Path(url.split("?", 1)[0]).name or "download"
    return folder / f"{task_identifier}-{name}"


MARK_BYTES = 1024 * 1024
"""A mark (the digest of the bytes so far) is journaled at most every this many bytes, and
at the end of each attempt; a resume checks the partial file against them and fetches
again what lies past the newest one (a process killed before it marked those bytes)."""

MAX_MARKS = 24
"""Marks kept per task: older ones are thinned out, so the record stays small."""


def add_mark(marks: list[list[Any]] | None, offset: int, digest: str) -> list[list[Any]]:
    """``marks`` with ``[offset, digest]`` added (and thinned to ``MAX_MARKS``)."""
    kept = [m for m in (marks or []) if m[0] < offset] + [[offset, digest]]
    while len(kept) > MAX_MARKS:
        kept = kept[:-1:2] + kept[-1:]  # every other one, and always the newest
    return kept


def verify_prefix(path: str, length: int, marks: list[list[Any]] | None) -> tuple[Any, int]:
    """Re-read the first ``length`` bytes of ``path`` and check them against ``marks``:
    ``(sha256 object, length)`` when they all agree, else ``(sha256 object, offset)`` of
    the last mark that still agrees (0 when none does). Blocking: run on a thread."""
    digest, at = hashlib.sha256(), 0
    good, good_at = digest.copy(), 0
    with read_partial(path) as f:
        for offset, expected in sorted(m for m in (marks or []) if m[0] <= length):
            at += _feed(f, digest, offset - at)
            if at != offset or digest.hexdigest() != expected:
                return good, good_at
            good, good_at = digest.copy(), offset
        _feed(f, digest, length - at)
    return digest, length


def _feed(f: Any, digest: Any, count: int) -> int:
    fed = 0
    while fed < count:
        block = f.read(min(count - fed, HASH_BLOCK))
        if not block:
            break
        digest.update(block)
        fed += len(block)
    return fed


def hash_prefix(path: str, length: int) -> Any:
    """A sha256 object over the first ``length`` bytes of ``path`` (blocking: run on a thread)."""
    return verify_prefix(path, length, None)[0]


class HashWorker:
    """One thread that feeds the sha256 objects of every transfer of an engine, so hashing
    (which releases the GIL) runs beside the event loop instead of in its way, without a
    thread per file. :meth:`settled` gives a future that is done once every chunk handed
    over before it has been hashed."""

    LIMIT = 32 * 1024 * 1024
    """Bytes handed over and not hashed yet above which :attr:`behind` is True: the
    caller then waits for :meth:`settled`, so memory stays flat when the disk and the
    network outrun the hash."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Any, Any] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._queued = 0  # written only by the thread that hands chunks over
        self._hashed = 0  # written only by the hash thread

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            hasher, chunk = item
            if isinstance(chunk, concurrent.futures.Future):  # a settled() or digest() marker
                # its waiter may have been cancelled meanwhile (a task cancelled while it waited
                # for the hash): setting it would raise here and end this thread, and every later
                # settled() would then never be done, leaving files that finished unfinalised
                if chunk.set_running_or_notify_cancel():
                    chunk.set_result(None if hasher is None else hasher.copy().hexdigest())
            elif isinstance(chunk, tuple):  # a writeback marker: (a duplicate of the fd, start, end)
                fd, start, end = chunk
                try:
                    start_writeback(fd, start, end)
                finally:
                    os.close(fd)
            else:
                hasher.update(chunk)
                self._hashed += len(chunk)

    @property
    def behind(self) -> bool:
        return self._queued - self._hashed > self.LIMIT

    def update(self, hasher: Any, chunk: bytes) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="bgdl-hash", daemon=True)
            self._thread.start()
        self._queued += len(chunk)
        self._queue.put((hasher, chunk))

    def writeback(self, fd: int, start: int, end: int) -> None:
        """Once the chunks handed over so far are hashed, start writing ``[start, end)``
        of ``fd`` to disk (:func:`start_writeback`, on the hash thread, with its own
        duplicate of ``fd``, so the caller may close its own at any time)."""
        if self._thread is None:
            start_writeback(fd, start, end)
        else:
            self._queue.put((None, (os.dup(fd), start, end)))

    def settled(self) -> concurrent.futures.Future[None]:
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        if self._thread is None:
            done.set_result(None)
        else:
            self._queue.put((None, done))
        return done

    def digest(self, hasher: Any) -> concurrent.futures.Future[str]:
        """The hex digest of what ``hasher`` has been handed so far, once it is hashed."""
        done: concurrent.futures.Future[str] = concurrent.futures.Future()
        if self._thread is None:
            done.set_result(hasher.copy().hexdigest())
        else:
            self._queue.put((hasher, done))
        return done

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
