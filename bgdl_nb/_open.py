"""``bgdl_nb.open``: read a file while it downloads.

:func:`open` starts (or reattaches to) the background download of a URL and returns a
:class:`BackgroundFile`, a seekable binary file over it. A read of bytes already written
returns at once; a read of bytes still missing asks the engine for them (they become the
next bytes fetched, see :mod:`bgdl_nb._reads`) and waits, woken by the task's events,
for at most ``timeout`` seconds. The rest of the file keeps downloading meanwhile.

Versions are never mixed: the reader holds the file it opened, and a download that must
start again from byte 0 (the resource changed) writes a new file, so whatever one read
returns comes from one version; the next read then raises :class:`FileChanged`.
"""

from __future__ import annotations

import io
import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._checks import check_url
from ._config import Configuration
from ._exceptions import FileChanged, InvalidInput, ReadTimeout, TransferError
from ._files import _NOFOLLOW
from ._reads import covered
from ._states import TaskState
from ._task import DownloadTask, Request

if TYPE_CHECKING:
    from ._events import Event
    from ._session import Session

__all__ = ["BackgroundFile", "open"]


def open(  # bg.open, beside the builtin: never star-imported (not in bgdl_nb.__all__)
    url_or_request: str | Request | DownloadTask,
    dest: str | os.PathLike[str] = "data",
    identifier: str | None = None,
    *,
    name: str | None = None,
    configuration: Configuration | None = None,
    timeout: float | None = None,
    verified: bool = False,
    sha256: str | None = None,
) -> BackgroundFile:
    """Open a file that is still downloading, to read it now.

    Parameters
    ----------
    url_or_request
        The URL (or a :class:`Request` without headers) to download, or a task of a
        session already created (``session.download_task(...)``), to read its file.
    dest
        The folder to download into, as in :func:`bgdl_nb.fetch` (default ``data``): the
        same URL, folder and identifier opened or fetched again, from a new kernel too,
        reattach to the same download and reuse its bytes.
    identifier
        The background session; by default the one :func:`bgdl_nb.fetch` uses for the
        destination's folder, so ``fetch`` and ``open`` share their downloads.
    configuration
        A background :class:`Configuration` to use instead.
    timeout
        Seconds one read may wait for its bytes (:class:`ReadTimeout` after that; the
        download goes on). ``None``: as long as the download is under way.
    name
        The file's name (or a path under ``dest``); by default the last part of the URL's
        path, as :func:`bgdl_nb.fetch` names it.
    verified
        Wait until the whole file is downloaded and its digest checked before the first
        read returns.
    sha256
        The file's expected digest, checked when it is complete.

    Returns
    -------
    BackgroundFile
        A binary file object (``io.RawIOBase``): ``read``, ``readinto``, ``seek``,
        ``tell``; a context manager. Wrap it in ``io.BufferedReader`` for many small reads.

    Notes
    -----
    Bytes read before the file is complete have not been checked against the file's
    digest, which needs every byte: they are the bytes the server sent for this version
    (every range request carries ``If-Range``), but only ``verified=True`` (or reading
    after the download finished) gives bytes whose digest was checked.

    Examples
    --------
    >>> import pyarrow.parquet as pq                                   # doctest: +SKIP
    >>> with bg.open("https://example.org/big.parquet", "data") as f:  # doctest: +SKIP
    ...     print(pq.ParquetFile(f).metadata)                           # the footer first
    """
    if timeout is not None and not timeout > 0:
        raise InvalidInput(f"timeout must be a positive number of seconds or None, not {timeout!r}")
    if isinstance(url_or_request, DownloadTask):
        return BackgroundFile(url_or_request, timeout=timeout, verified=verified)
    if isinstance(url_or_request, Request):
        if url_or_request.headers:
            raise InvalidInput("bg.open() takes a URL; for a request with headers create the task with "
                               "session.download_task(request, path) and pass the task to bg.open()")
        url_or_request = url_or_request.url
    if not isinstance(url_or_request, str):
        raise InvalidInput(f"bg.open() takes a URL, a Request or a DownloadTask, not {type(url_or_request).__name__}")
    url = url_or_request
    check_url(url)
    from ._fetch import default_identifier
    folder = Path(dest).expanduser().absolute()
    if folder.exists() and not folder.is_dir():
        raise InvalidInput(f"dest={os.fspath(dest)!r} is a file; bg.open() takes the folder to download into, as "
                           f"bg.fetch() does (name= gives the file's name in it)")
    if name is not None and (not isinstance(name, str) or not name.strip() or name.endswith(("/", os.sep))):
        raise InvalidInput(f"name must be a file name (or a path under dest), not {name!r}")
    config = configuration or Configuration.background(identifier or default_identifier(folder))
    entry = {"url": url, **({"path": name} if name else {}), **({"hash": sha256} if sha256 else {})}
    return open_entry(entry, folder, config, timeout=timeout, verified=verified)


def open_entry(entry: dict[str, Any], folder: Path, config: Configuration, *, timeout: float | None = None,
               verified: bool = False) -> BackgroundFile:
    """Open the file a listing's ``entry`` names under ``folder`` (``url``, ``path`` and
    what else :func:`bgdl_nb.fetch` reads of an entry), downloading it in the background
    session of ``config`` as :func:`open` does."""
    from ._fetch import fetch
    from ._hosts.registry import open_here
    from ._session import Session
    if not config.is_background:
        raise InvalidInput("bg.open() needs a background configuration (its download outlives the kernel)")
    shared = open_here(config)
    session = Session(config)
    try:
        # fetch() finds or creates the task (one per URL and file), or finds the file done
        [path] = fetch(manifest=[entry], dest=folder, configuration=config, wait=False, progress=False)
        session._live_host.sync()
        task = next((t for t in reversed(session.all_tasks()) if t.original_request.url == entry["url"]
                     and t.destination == path and t.state is not TaskState.COMPLETED), None)
        return BackgroundFile(task, path=path, session=None if shared else session, timeout=timeout,
                              verified=verified)
    except BaseException:
        if not shared:
            session.close()
        raise


class BackgroundFile(io.RawIOBase):
    """A binary, seekable file over a download that may still be under way; made by
    :func:`bgdl_nb.open` (see there). Reading never changes the download, and closing
    the file leaves the download going on.

    Attributes
    ----------
    name
        The file's final path.
    task
        The download's :class:`DownloadTask` (``None`` when the file was already here).
    """

    def __init__(self, task: DownloadTask | None, *, path: Path | None = None, session: Session | None = None,
                 timeout: float | None = None, verified: bool = False) -> None:
        super().__init__()
        self.task = task
        dest = path if path is not None else (task.destination if task is not None else None)
        self.name = str(dest or "")
        self._session = session  # closed with the file when the file opened it
        self._timeout = timeout
        self._pos = 0
        self._fd: int | None = None
        self._inode: int | None = None
        self._ranges: list[list[int]] = []
        self._total: int | None = None
        self._validator: str | None = None
        self._read_any = False
        self._news = 0  # events of the task seen: a waiting read wakes when it moves
        self._cond = threading.Condition()
        self._listener: Callable[[Event], None] | None = None
        if task is None:
            if dest is None:
                raise InvalidInput("BackgroundFile needs a task or a path")
            self._fd = _open_file(str(dest))
            self._total = os.fstat(self._fd).st_size
            self._ranges = [[0, self._total]]
            return
        if task.destination is None:
            raise InvalidInput(f"task {task.task_identifier} has no destination; bg.open() reads a file at a path")
        self._listener = self._on_event
        task._live_host().listeners.append(self._listener)
        try:
            self._ask(0, 0)
            if verified:
                self._wait_for(lambda answer: answer["outcome"] == "done", "the whole file and its digest")
        except BaseException:
            self.close()
            raise

    # the file protocol -------------------------------------------------------------------

    def readable(self) -> bool:
        """True: the file can be read."""
        return True

    def seekable(self) -> bool:
        """True: the file can be read at any offset, also one not downloaded yet."""
        return True

    def tell(self) -> int:
        """The offset of the next read."""
        return self._pos

    @property
    def size(self) -> int:
        """The file's length in bytes (waits for the server's answer when not known yet)."""
        if self._total is None:
            self._wait_for(lambda answer: answer["total"] is not None or answer["state"] == "completed",
                           "the file's length")
        if self._total is None:
            raise TransferError(f"{self.name}: the server gave no length, so the file cannot be read from its end",
                                url=self._url)
        return self._total

    @property
    def bytes_here(self) -> int:
        """How many of the file's bytes were on disk when the engine was last asked."""
        return sum(b - a for a, b in self._ranges)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move to ``offset`` (from the start, the current offset or the end, as for any file);
        returns the new offset. Seeking from the end waits for the file's length."""
        if self.closed:
            raise ValueError("seek of a closed file")
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self.size + offset
        else:
            raise ValueError(f"whence must be 0, 1 or 2, not {whence!r}")
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        self._pos = pos
        return pos

    def readinto(self, buffer: Any) -> int:
        """Read into ``buffer`` from the current offset; returns the number of bytes read
        (0 at the end). Bytes not here yet are fetched first and waited for, at most
        ``timeout`` seconds (:class:`~bgdl_nb.ReadTimeout`); :class:`~bgdl_nb.FileChanged`
        when the download had to start again on a new version."""
        if self.closed:
            raise ValueError("read of a closed file")
        view = memoryview(buffer).cast("B")
        start = self._pos
        end = start + len(view)
        if self._total is None:
            self._wait_for(lambda answer: covered(answer["ranges"], start, end) or answer["total"] is not None
                           or answer["state"] == "completed", f"bytes {start}-{end - 1}")
        if self._total is not None:
            end = min(end, self._total)
        if end <= start:
            return 0
        if not (self._fd is not None and covered(self._ranges, start, end)):
            self._wait_for(lambda answer: covered(answer["ranges"], start, end), f"bytes {start}-{end - 1}",
                           start, end)
        assert self._fd is not None
        got = os.preadv(self._fd, [view[:end - start]], start)
        self._pos += got
        self._read_any = True
        return got

    def close(self) -> None:
        """Close the file; the download goes on."""
        if self.closed:
            return
        if self._listener is not None and self.task is not None:
            try:
                self.task._live_host().listeners.remove(self._listener)
            except (ValueError, Exception):  # the session is gone already
                pass
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._session is not None:
            self._session.close()  # the download goes on in the transfer service
            self._session = None
        super().close()

    def __repr__(self) -> str:
        total = "?" if self._total is None else f"{self._total:,}"
        return f"<BackgroundFile {self.name!r} {self.bytes_here:,} of {total} bytes here>"

    # asking the engine ---------------------------------------------------------------------

    @property
    def _url(self) -> str | None:
        return None if self.task is None else self.task.original_request.url

    def _on_event(self, event: Event) -> None:
        if self.task is not None and event.task_identifier == self.task.task_identifier:
            with self._cond:
                self._news += 1
                self._cond.notify_all()

    def _ask(self, start: int, end: int) -> dict[str, Any]:
        """What the engine says of the file now (and, for ``[start, end)`` not written yet,
        that a reader waits for it)."""
        assert self.task is not None
        answer: dict[str, Any] = self.task._live_host().control("want_bytes", self.task.task_identifier, start, end)
        inode = answer["inode"]
        if self._fd is not None and inode is not None and inode != self._inode:
            if self._read_any:
                raise FileChanged(f"{self._url} changed on its server while {self.name} was being read (its download "
                                  "started again from byte 0); what was read so far is of the old version: open the "
                                  "file again to read the new one", url=self._url,
                                  task_identifier=self.task.task_identifier)
            os.close(self._fd)
            self._fd = None
        if self._validator is not None and answer["validator"] not in (None, self._validator) and self._read_any:
            raise FileChanged(f"{self._url} changed on its server (validator {self._validator} became "
                              f"{answer['validator']}) while {self.name} was being read; open it again",
                              url=self._url, task_identifier=self.task.task_identifier)
        if self._fd is None and inode is not None and answer["path"]:
            try:
                fd = _open_file(answer["path"])
            except FileNotFoundError:  # renamed or restarted meanwhile: the next answer tells
                fd = None
            if fd is not None and os.fstat(fd).st_ino != inode:
                os.close(fd)
                fd = None
            self._fd, self._inode = fd, (inode if fd is not None else None)
        self._ranges = answer["ranges"] if self._fd is not None else []
        self._total = answer["total"] if answer["total"] is not None else self._total
        self._validator = answer["validator"] or self._validator
        return answer

    def _wait_for(self, ready: Callable[[dict[str, Any]], bool], what: str, start: int = 0, end: int = 0) -> None:
        """Ask until ``ready(answer)`` holds, sleeping on the task's events in between,
        for at most the reader's timeout; a download that ended or stopped raises."""
        assert self.task is not None
        since = time.monotonic()
        deadline = None if self._timeout is None else since + self._timeout
        while True:
            with self._cond:
                seen = self._news
            answer = self._ask(start, end)
            if ready(answer) and (self._fd is not None or answer["state"] == "completed"):
                return
            state = answer["state"]
            if state == "completed":
                error = self.task.error
                if error is not None:
                    raise error
                raise TransferError(f"the download of {self._url} ended as {answer['outcome']}; {what} of "
                                    f"{self.name} will not arrive", url=self._url,
                                    task_identifier=self.task.task_identifier)
            if state in ("suspended", "canceling"):
                raise TransferError(f"the download of {self._url} is {state}, so {what} of {self.name} will not "
                                    "arrive; resume the task (bg.open() again resumes it) and read again",
                                    url=self._url, task_identifier=self.task.task_identifier)
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise ReadTimeout(
                    f"{what} of {self.name} did not arrive within {self._timeout:g} s ({self.bytes_here:,} of "
                    f"{self._total if self._total is not None else '?'} bytes are here; the download goes "
                    "on): read again, or open it with a longer timeout", url=self._url,
                    task_identifier=self.task.task_identifier)
            with self._cond:
                if self._news == seen:  # woken by the task's next event, or asks again within 5 s
                    self._cond.wait(5.0 if left is None else min(left, 5.0))


def _open_file(path: str) -> int:
    """Open ``path`` to read, never through a symbolic link, and only a regular file."""
    fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise InvalidInput(f"{path} is not a regular file")
    return fd
