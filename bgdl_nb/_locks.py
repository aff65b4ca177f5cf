"""File locks that are checked to lock.

bgdl_nb keeps one writer per journal and one transfer service per state folder with
``flock`` locks (through :mod:`filelock`). On some file systems ``flock`` succeeds and
locks nothing: NFS mounted without a lock daemon (``nolock``), some FUSE file systems.
Two commands on one identifier would then both write one journal. :func:`take` acquires
a lock and proves it holds: a second, independent open of the same file must be refused
the lock. Where it is not, the folder is refused with :class:`UnsafeLocation`, naming it
and what to do, before anything is written.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import filelock

from ._exceptions import UnsafeLocation

__all__ = ["holding", "take"]


def take(path: str | os.PathLike[str], timeout: float, *, thread_local: bool = True) -> filelock.BaseFileLock:
    """Acquire the lock file ``path`` (waiting up to ``timeout`` seconds; ``filelock.Timeout``
    when another process keeps it) and check that it really excludes others."""
    lock = filelock.FileLock(str(path), timeout=timeout, thread_local=thread_local)
    lock.acquire()
    try:
        _prove(Path(path))
    except BaseException:
        lock.release()
        raise
    return lock


@contextlib.contextmanager
def holding(path: str | os.PathLike[str], timeout: float) -> Iterator[None]:
    """``with holding(path, timeout):`` — :func:`take` for a block."""
    lock = take(path, timeout)
    try:
        yield
    finally:
        lock.release()


def _prove(path: Path) -> None:
    """Ask for the lock we hold through a second open file: a file system whose locks work
    refuses it (EWOULDBLOCK)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return  # refused: the lock we hold excludes others
    except OSError as exc:
        if exc.errno not in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
            raise
        reason = f"flock is not supported there ({exc.strerror})"
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        reason = "a second lock on a file already locked was granted, so its locks exclude nobody"
    finally:
        os.close(fd)
    folder = path.parent
    raise UnsafeLocation(
        f"file locks do not work in {folder}: {reason} (NFS mounted without a lock daemon and some FUSE file "
        "systems do this), so two commands could write one journal at once; set BGDL_STATE_DIR to a folder on a "
        "local disk (under $XDG_RUNTIME_DIR or /tmp, say) and run the same command again", path=str(folder))
