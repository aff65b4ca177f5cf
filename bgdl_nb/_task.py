"""The public view of a download task, and the request/response records it carries.

A :class:`DownloadTask` is a view: its host (``_hosts/``) fills it from the snapshots
the engine sends with every event, and forwards ``resume()``, ``suspend()`` and
``cancel()`` to the engine. The states and their transition table are in
:mod:`bgdl_nb._states`. ``COMPLETED`` is final; :attr:`DownloadTask.succeeded` is the
one answer to "did this produce a file", read by ``wait()``, ``fetch()``, the CLI and
the displays alike (a 404 completes without a client-side error, as in the seeds, and
does not succeed).
"""

from __future__ import annotations

import concurrent.futures
import datetime as _dt
import difflib
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from multidict import CIMultiDict, CIMultiDictProxy

from ._exceptions import BgdlError, HTTPStatusError, SessionInvalidated, WaitTimedOut
from ._redact import redact_headers, redact_url
from ._states import TaskState

if TYPE_CHECKING:
    from ._hosts.base import Call, Host
    from ._journal import TaskRecord
    from ._snapshots import TaskSnapshot

__all__ = ["DownloadTask", "Progress", "Request", "Response", "TaskState"]



@dataclass(frozen=True)
class Request:
    """What to download. Only GET is supported: the seeds' resume conditions require it."""

    url: str
    headers: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"Request(url={redact_url(self.url)!r}, headers={redact_headers(self.headers)!r})"


@dataclass(frozen=True)
class Response:
    """The status and headers of the last response, and the URL that gave it.

    ``headers`` is case-insensitive (``response.headers["etag"]`` works).
    """

    url: str
    status: int
    headers: Mapping[str, str]


@dataclass(frozen=True)
class Progress:
    """``completed_unit_count`` of ``total_unit_count`` bytes (``None`` when unknown)."""

    completed_unit_count: int
    total_unit_count: int | None

    @property
    def fraction_completed(self) -> float:
        """Completed units over total units, from 0.0 to 1.0 (1.0 for a total of zero)."""
        if not self.total_unit_count:
            return 1.0 if self.total_unit_count == 0 else 0.0
        return min(1.0, self.completed_unit_count / self.total_unit_count)


def _byte_count(value: int | None, name: str) -> int | None:
    from ._exceptions import InvalidInput
    if value is not None and (not isinstance(value, int) or value < 0):
        raise InvalidInput(f"{name} must be a number of bytes (0 or more) or None, got {value!r}")
    return value


class DownloadTask:
    """One download. Create it with :meth:`Session.download_task`.

    Await it (``path = await task``) or call :meth:`wait` to get the final path; both
    raise the task's error, or :class:`HTTPStatusError` when the server answered with a
    status that carries no file.
    """

    def __init__(self, host: Host, record: TaskRecord) -> None:
        self._host = host
        self._record = record
        self._done: concurrent.futures.Future[Path] = concurrent.futures.Future()
        self._interrupted = False  # _done holds a session's error, not the task's end
        self._received = record.offset  # live count, ahead of the journaled offset
        self._version = 0  # of the engine snapshot shown
        self.waiting_reason: str | None = None
        """Why a RUNNING task is not transferring yet (``None`` while it transfers)."""

    # identity --------------------------------------------------------------------------

    @property
    def task_identifier(self) -> int:
        """Unique within the session and stable across restarts."""
        return self._record.task_identifier

    @property
    def task_description(self) -> str | None:
        """The description given at creation (``fetch`` gives the file's path)."""
        return self._record.description

    @property
    def original_request(self) -> Request:
        """The request as created, before any redirect."""
        return Request(self._record.url, dict(self._record.headers))

    @property
    def current_request(self) -> Request:
        """The request after redirects (the original one until a response arrived)."""
        return Request(self._record.current_url or self._record.url, dict(self._record.headers))

    @property
    def destination(self) -> Path | None:
        """Where the finished file goes (``None``: a temporary location handed to the delegate)."""
        return None if self._record.destination is None else Path(self._record.destination)

    # state -----------------------------------------------------------------------------

    @property
    def state(self) -> TaskState:
        """The task's state: suspended, running, canceling or completed."""
        return TaskState(self._record.state)

    @property
    def succeeded(self) -> bool:
        """True once the task completed with its file in place (at ``location``); False
        while it runs and when it failed, was cancelled or the server refused."""
        return self._record.succeeded

    @property
    def outcome(self) -> str:
        """In a word: the state while unfinished, then ``done``, ``cancelled`` or ``failed``."""
        return self._record.outcome

    @property
    def response(self) -> Response | None:
        """The server's last response (status and headers), once one arrived."""
        rec = self._record
        if rec.status is None:
            return None
        headers = CIMultiDictProxy(CIMultiDict(rec.response_headers or {}))
        return Response(rec.current_url or rec.url, rec.status, headers)

    @property
    def error(self) -> BgdlError | None:
        """Why the task ended without its file (``None`` while it runs, or when it succeeded)."""
        return None if self._record.error is None else BgdlError.from_dict(self._record.error)

    @property
    def count_of_bytes_received(self) -> int:
        """Bytes of the file received so far (live, four times a second while it transfers)."""
        return self._received

    @property
    def count_of_bytes_expected_to_receive(self) -> int | None:
        """The file's length, once the server gave it."""
        return self._record.total

    @property
    def count_of_bytes_client_expects_to_receive(self) -> int | None:
        """Your estimate of the size (used until the server tells it). Settable before the
        first ``resume()``."""
        return self._record.expected_bytes

    @count_of_bytes_client_expects_to_receive.setter
    def count_of_bytes_client_expects_to_receive(self, value: int | None) -> None:
        self._configure(expected_bytes=_byte_count(value, "count_of_bytes_client_expects_to_receive"))

    @property
    def earliest_begin_date(self) -> float | None:
        """Seconds since the epoch before which the task does not start. Settable (a
        datetime or seconds) between ``download_task()`` and the first ``resume()``."""
        return self._record.earliest_begin_date

    @earliest_begin_date.setter
    def earliest_begin_date(self, value: float | _dt.datetime | None) -> None:
        from ._checks import timestamp
        self._configure(earliest_begin_date=timestamp(value))

    @property
    def count_of_bytes_client_expects_to_send(self) -> int | None:
        """Your estimate of the request body (seed API; downloads send none). Settable
        before the first ``resume()``."""
        return self._record.expected_send_bytes

    @count_of_bytes_client_expects_to_send.setter
    def count_of_bytes_client_expects_to_send(self, value: int | None) -> None:
        self._configure(expected_send_bytes=_byte_count(value, "count_of_bytes_client_expects_to_send"))

    def _configure(self, **changes: Any) -> None:
        self._control("configure", changes)

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_") or name in _SETTABLE:
            object.__setattr__(self, name, value)
            return
        public = [n for n in dir(type(self)) if not n.startswith("_")]
        near = difflib.get_close_matches(name, public, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise AttributeError(f"DownloadTask has no settable attribute {name!r}{hint}")

    @property
    def priority(self) -> float:
        """0.0 to 1.0; among ready tasks the highest starts first. Settable while it waits."""
        return self._record.priority

    @priority.setter
    def priority(self, value: float) -> None:
        from ._exceptions import InvalidInput
        if not 0.0 <= float(value) <= 1.0:
            raise InvalidInput(f"priority must be between 0.0 and 1.0, got {value}")
        self._control("set_priority", float(value))

    @property
    def is_discretionary(self) -> bool:
        """Waits until no non-discretionary task is active and inside ``discretionary_window``."""
        return self._record.discretionary

    @property
    def progress(self) -> Progress:
        """Bytes received against the file's length, as a :class:`Progress`."""
        return Progress(self._received, self._record.total)

    @property
    def location(self) -> Path | None:
        """Where the finished file is (the destination, or the inbox when none was given)."""
        return Path(self._record.location) if self.succeeded and self._record.location else None

    @property
    def sha256(self) -> str | None:
        """Hex digest of the finished file, when it was computed."""
        return self._record.digest

    @property
    def expected_digest(self) -> str | None:
        """The digest the file must match, as ``"alg:hex"`` (``None``: none was given)."""
        if self._record.sha256:
            return f"sha256:{self._record.sha256}"
        return self._record.expected_hash

    # control ---------------------------------------------------------------------------

    def resume(self) -> DownloadTask:
        """Start or continue the task (it continues from its partial file when it can)."""
        self._control("resume")
        return self

    def suspend(self) -> DownloadTask:
        """Pause the transfer; bytes received so far are kept for resume()."""
        self._control("suspend")
        return self

    def cancel(self) -> None:
        """Stop the task and delete its partial file."""
        self._control("cancel")

    def cancel_by_producing_resume_data(self) -> Call:
        """Stop the task, keep its partial file, and produce resume data.

        Returns an awaitable (``data = await task.cancel_by_producing_resume_data()``)
        that is also a future (``.result(timeout)`` from sync code). The value is
        ``None`` when the server gave no validator or does not support byte ranges,
        since such a download cannot continue.
        """
        return self._live_host().cancel_with_resume_data(self.task_identifier)

    def _live_host(self) -> Host:
        if self._host.closed:
            raise SessionInvalidated(f"the session of task {self.task_identifier} was closed; create a new "
                                     "Session with the same configuration to reach its tasks again")
        return self._host

    def _control(self, name: str, *args: Any) -> None:
        self._live_host().control(name, self.task_identifier, *args)

    # results ---------------------------------------------------------------------------

    def wait(self, timeout: float | None = None) -> Path:
        """Block until the task completes; return the final path or raise its error."""
        try:
            return self._done.result(timeout)
        except concurrent.futures.TimeoutError:
            raise WaitTimedOut(
                f"task {self.task_identifier} still {self.state.value} after waiting {timeout:g} s "
                f"({self._received:,} bytes so far); it goes on: wait again for the rest",
                url=self._record.url, task_identifier=self.task_identifier) from None

    def done(self) -> bool:
        """Whether the task has ended (with its file or with an error)."""
        return self._done.done() and not self._interrupted

    def __await__(self) -> Generator[Any, None, Path]:
        import asyncio
        return asyncio.wrap_future(self._done).__await__()

    def __repr__(self) -> str:
        total = self._record.total
        size = f"{self._received}/{total if total is not None else '?'} bytes"
        return f"<DownloadTask {self.task_identifier} {self.state.value} {size} {redact_url(self._record.url)}>"

    # host side -------------------------------------------------------------------------

    def _show(self, snap: TaskSnapshot, *, made_from_it: bool = False) -> bool:
        """Show the engine's picture ``snap`` of this task: its record, live count and why
        it waits (the caller settles the waiters of a COMPLETED one). False, and nothing
        changed, when it is older than the picture shown (a reply overtaken by events).
        ``made_from_it``: this view was just made from ``snap``'s record."""
        if not made_from_it:
            if snap.version < self._version:
                return False
            vars(self._record).update(snap.fields)
        self._version = snap.version
        self._record.state = TaskState(self._record.state)
        self._received = snap.received
        self.waiting_reason = snap.waiting_reason
        self._reopen()  # the engine goes on: a wait that a halt ended may wait again
        return True

    def _count(self, received: int) -> None:
        """A live byte count from the engine, between its snapshots."""
        if not self.done():
            self._received = received

    def _new_source(self) -> None:
        """Snapshots now come from another engine (a restarted service), whose versions
        start again."""
        self._version = 0

    def _interrupt(self, error: BgdlError) -> None:
        """The engine stopped transferring for a reason of the whole session (its journal
        cannot be written): waits end with ``error``; the task itself is not over."""
        if not self._done.done():
            self.waiting_reason = str(error)
            self._interrupted = True
            self._done.set_exception(error)

    def _reopen(self) -> None:
        """After :meth:`_interrupt`, once the engine goes on: the next wait waits again."""
        if self._interrupted:
            self._interrupted = False
            self._done = concurrent.futures.Future()

    def _settle(self) -> None:
        """Resolve the waiters once the record is COMPLETED."""
        if self._done.done():
            return
        rec = self._record
        if rec.error is not None:
            self._done.set_exception(BgdlError.from_dict(rec.error))
        elif not self.succeeded:
            self._done.set_exception(HTTPStatusError(
                f"{rec.current_url or rec.url} answered HTTP {rec.status}; no file was written",
                status=rec.status or 0, url=rec.url, task_identifier=rec.task_identifier))
        else:
            self._done.set_result(Path(rec.location or ""))


_SETTABLE = frozenset({"waiting_reason", "priority", "earliest_begin_date", "count_of_bytes_client_expects_to_receive",
                       "count_of_bytes_client_expects_to_send"})
"""Public attributes that may be assigned (the rest are read-only views)."""
