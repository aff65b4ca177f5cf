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
import json
import os
import queue
import shutil
import socket
import stat
import threading
import time
from pathlib import Path
from typing import Any

from ._exceptions import InvalidDestination, UnsafeFile
from ._private import private_dir

__all__ = ["CHECKPOINT_BYTES", "HashWorker", "check_ours", "claim", "claim_path", "disk_size", "free_disk", "fsync_path",
           "hash_prefix", "inbox_path", "name_max", "nearest_existing", "open_partial", "partial_path_for",
           "partial_size", "release", "truncate_partial", "unlink"]

HASH_BLOCK = 4 * 1024 * 1024

CHECKPOINT_BYTES = 1024 * 1024
"""The journal records a segment's offset at least every this many bytes, so a killed
process re-fetches at most this much per connection (plus what was in flight)."""


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


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
    try:
        return shutil.disk_usage(nearest_existing(Path(folder)))
    except OSError:
        return None


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


def partial_path_for(destination: str | None, task_identifier: int, work_dir: Path) -> Path:
    """Where a task's partial file lives: beside its destination (so the final rename
    stays on one file system), or in the session's private work folder. A name near the
    file system's limit is shortened in the partial's name (the final name is kept)."""
    token = os.urandom(4).hex()
    if destination:
        return _beside(Path(destination), ".bgdl-part", token)
    folder = private_dir(work_dir / "partial", "the partial files' folder")
    return folder / f"{task_identifier}-{token}.bgdl-part"


def _beside(destination: Path, suffix: str, token: str = "") -> Path:
    """A hidden file beside ``destination``: ``.<name>[.token]<suffix>``, with the name
    shortened when the result would pass the file system's limit."""
    tail = f".{token}{suffix}" if token else suffix
    name = os.fsencode(destination.name)
    room = name_max(destination.parent) - 1 - len(os.fsencode(tail))
    if len(name) > room:
        name = name[: room - 1] + b"~"
    return destination.with_name(f".{os.fsdecode(name)}{tail}")


def claim_path(destination: str | os.PathLike[str]) -> Path:
    """The claim file of a destination: it names the task that will write it."""
    return _claim_path(os.fspath(destination))


@functools.lru_cache(maxsize=4096)  # asked when a task claims its destination and when it lets it go
def _claim_path(destination: str) -> Path:
    return _beside(Path(destination), ".bgdl-claim")


CLAIM_LEASE = 120.0
"""Seconds a claim written on another machine holds when its file does not say."""

_TASK_KEYS = ("journal", "identifier", "task", "engine")


@functools.lru_cache(maxsize=1)
def _hostname() -> str:
    return socket.gethostname()


def _claim_alive(owner: dict[str, Any], age: float) -> bool:
    """Whether the task a claim names may still write its destination. On this machine
    its journal (or process) tells; another machine's task is alive while its engine
    keeps refreshing the claim (its age under the lease the claim states)."""
    if owner.get("host") != _hostname():
        lease = owner.get("lease")
        return age < (float(lease) if isinstance(lease, (int, float)) and lease > 0 else CLAIM_LEASE)
    journal, identifier, task = owner.get("journal"), owner.get("identifier"), owner.get("task")
    if journal and identifier:
        from ._journal import read_journal
        from ._states import TaskState
        try:
            tasks, _ = read_journal(Path(journal), str(identifier))
        except Exception:  # no journal (deleted, moved aside): nothing can continue that task
            return False
        return any(t.task_identifier == task and t.state is not TaskState.COMPLETED for t in tasks)
    pid = owner.get("pid")
    if not isinstance(pid, int):
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim(destination: str | os.PathLike[str], owner: dict[str, Any], lease: float = CLAIM_LEASE) -> None:
    """Claim ``destination`` for the task ``owner`` names, across sessions, processes and
    machines: :class:`InvalidDestination` while another live task holds it; a claim whose
    task can no longer run (finished, journal gone, process dead, another machine's lease
    lapsed) is taken over. The task's own claim is refreshed (its lease starts again)."""
    path = claim_path(destination)
    host = _hostname()
    body = json.dumps({**owner, "pid": os.getpid(), "host": host, "lease": lease}).encode()
    for _ in range(5):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | _NOFOLLOW, 0o600)
        except FileExistsError:
            pass
        else:
            try:
                os.write(fd, body)  # a few hundred bytes: one write
            except BaseException:  # a full disk, say: an empty claim must not block the next try
                os.close(fd)
                unlink(path)
                raise
            os.close(fd)
            return
        try:
            raw = path.read_bytes()
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            continue  # released meanwhile: try again
        try:
            other = json.loads(raw)
        except ValueError:
            other = None  # being written by its claimer right now, or damaged long ago
        if other is None and age < 10:
            raise InvalidDestination(f"{destination} is being claimed by another process right now; wait for it or "
                                     "choose another destination")
        if other and all(other.get(k) == owner.get(k) for k in _TASK_KEYS):
            # our own claim, whichever host wrote it: a journaled task is known by its journal
            # (this engine holds that journal's lock: a shard run again on another worker),
            # an unjournaled one by its engine's nonce. It holds for another lease.
            with contextlib.suppress(FileNotFoundError):
                os.utime(path, follow_symlinks=False)  # the claim file itself, never a link's target
            return
        if other and other.get("service") and other.get("service") == owner.get("service") \
                and other.get("url") == owner.get("url") and _claim_alive(other, age):
            return  # the same file from the same transfer service: it shares the one transfer
        if other and _claim_alive(other, age):
            who = f"task {other.get('task')} of session {other.get('identifier') or '(not journaled)'}"
            lapses = "" if other.get("host") == host else (
                f"; its claim was refreshed {age:.0f} s ago and lapses if that machine stops refreshing it")
            raise InvalidDestination(
                f"{destination} is claimed by {who} (pid {other.get('pid')} on {other.get('host')}), which "
                f"will write it{lapses}; wait for it or cancel it, or choose another destination")
        _remove_stale_claim(path, raw)
    raise InvalidDestination(f"{destination}: could not claim it (its claim file {path} keeps changing)")


def _remove_stale_claim(path: Path, raw: bytes) -> None:
    """Remove the claim file at ``path`` if it still holds ``raw`` (the stale claim judged
    by the caller). Two claimers taking over one stale claim serialise on an ``flock`` of
    that very file, which only its owner can open: of the two, one removes it and the
    other finds it gone or replaced. No lock lives in a folder another user could make."""
    import errno
    import fcntl
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        return  # released meanwhile
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InvalidDestination(f"the claim file {path} is a symbolic link, not one bgdl_nb wrote; remove "
                                     "it, or choose another destination") from None
        raise
    try:
        st = os.fstat(fd)
        if hasattr(os, "getuid") and st.st_uid != os.getuid():
            from ._private import _user
            raise InvalidDestination(f"the claim file {path} belongs to {_user(st.st_uid)}, not to you: bgdl_nb "
                                     "did not write it; remove it, or choose another destination")
        fcntl.flock(fd, fcntl.LOCK_EX)  # held by our own processes only, for a read and an unlink
        try:
            if os.lstat(path).st_ino != st.st_ino:
                return  # another claimer removed it and a new claim stands there now
        except FileNotFoundError:
            return
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        if b"".join(chunks) == raw:
            unlink(path)
    finally:
        os.close(fd)


def release(destination: str | os.PathLike[str], owner: dict[str, Any]) -> None:
    """Give up the claim on ``destination`` if ``owner``'s task holds it."""
    path = claim_path(destination)
    try:
        held = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return
    if all(held.get(k) == v for k, v in owner.items()):
        unlink(path)


def inbox_path(url: str, task_identifier: int, work_dir: Path) -> Path:
    """The temporary location of a finished file that has no destination."""
    folder = private_dir(work_dir / "inbox", "the inbox folder")
    name = Path(url.split("?", 1)[0]).name or "download"
    return folder / f"{task_identifier}-{name}"


MARK_BYTES = 4 * 1024 * 1024
"""A mark (the digest of the bytes so far) is journaled at most every this many bytes, and
at the end of each attempt; a resume checks the partial file against them."""

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
