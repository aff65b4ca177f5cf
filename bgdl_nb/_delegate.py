"""The session delegate: the callbacks of URLSessionDownloadDelegate, in snake_case.

Subclass :class:`SessionDelegate` and override what you need; every method is
optional and may be a plain function or ``async def``. Callbacks of one session are
delivered one at a time, in the order the events happened, on a delegate thread of
their own: a slow callback delays later callbacks but never a transfer.

For background sessions every callback is journaled before it is delivered and marked
delivered after it returns; a process that dies in between gets it again when the
session is recreated (delivery is at least once).
"""

from __future__ import annotations

import concurrent.futures
import inspect
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from ._events import Event
    from ._exceptions import BgdlError
    from ._session import Session
    from ._task import DownloadTask

__all__ = ["Deliverer", "SessionDelegate"]

log = logging.getLogger("bgdl_nb")


class SessionDelegate:
    """Receives a session's callbacks. All methods are optional."""

    def did_write_data(self, session: Session, task: DownloadTask, bytes_written: int,
                       total_bytes_written: int, total_bytes_expected_to_write: int | None) -> Any:
        """Progress: called at most every ``progress_interval`` seconds and once at the end.

        ``total_bytes_expected_to_write`` is ``None`` when the server sent no length.
        """

    def did_resume_at_offset(self, session: Session, task: DownloadTask, file_offset: int,
                             expected_total_bytes: int | None) -> Any:
        """A range request continued the partial file at ``file_offset``."""

    def did_finish_downloading_to(self, session: Session, task: DownloadTask, location: Path) -> Any:
        """The file is complete at ``location``.

        Without a ``destination``, ``location`` is a temporary file that is deleted when
        this method returns: move or open it here. With a ``destination``, the file has
        already been moved there atomically and ``location`` is that final path.
        """

    def did_complete_with_error(self, session: Session, task: DownloadTask,
                                error: BgdlError | None) -> Any:
        """The task is over. ``error`` is a client-side error or ``None``; HTTP errors such
        as 404 are not errors here: read ``task.response.status`` (seed semantics)."""

    def did_finish_events_for_background_session(self, session: Session) -> Any:
        """A recreated background session has delivered every event that happened while
        no process held it. Called once per reattach."""

    def did_receive_event(self, session: Session, event: Event) -> Any:
        """Every journaled event, callbacks included, before the specific callback."""


def _overrides(delegate: SessionDelegate, name: str) -> Callable[..., Any] | None:
    method = getattr(delegate, name, None)
    if method is None or getattr(type(delegate), name, None) is getattr(SessionDelegate, name, None):
        return None  # not overridden: nothing to call
    return method


class Deliverer:
    """Turns events into delegate calls, one event at a time, on a delegate thread.

    Used by the in-process engine and by the client of the transfer service alike.
    """

    def __init__(self) -> None:
        self._thread: Any = None

    def submit(self, delegate: SessionDelegate | None, session: Any, task: Any,
               event: Event) -> concurrent.futures.Future[bool]:
        """Deliver ``event``; the future's value says whether a ``did_finish_downloading_to``
        ran (so its temporary file may now be removed)."""
        from ._events import EventKind
        from ._hosts.thread import EngineThread

        kind = event.event
        calls: list[tuple[str, tuple[Any, ...]]] = [("did_receive_event", (session, event))]
        if kind == EventKind.PROGRESS.value and task is not None:
            calls.append(("did_write_data", (session, task, event.bytes_written or 0,
                                             event.total_bytes_written or 0, event.total_bytes_expected)))
        elif kind == EventKind.RESUMED_AT_OFFSET.value and task is not None:
            calls.append(("did_resume_at_offset", (session, task, event.total_bytes_written or 0,
                                                   event.total_bytes_expected)))
        elif kind == EventKind.FINISHED.value and task is not None:
            calls.append(("did_finish_downloading_to", (session, task, Path(event.detail or ""))))
        elif kind in (EventKind.COMPLETED.value, EventKind.FAILED.value) and task is not None:
            calls.append(("did_complete_with_error", (session, task, task.error)))
        elif kind == EventKind.FINISHED_EVENTS.value:
            calls.append(("did_finish_events_for_background_session", (session,)))
        methods = [(name, m, args) for name, args in calls
                   if delegate is not None and (m := _overrides(delegate, name)) is not None]
        if not methods:
            done: concurrent.futures.Future[bool] = concurrent.futures.Future()
            done.set_result(False)
            return done
        if self._thread is None:
            self._thread = EngineThread(name="bgdl-delegate")

        async def invoke() -> bool:
            finished = False
            for name, method, args in methods:
                try:
                    result = method(*args)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    log.exception("bgdl_nb delegate method %s raised", name)
                finished |= name == "did_finish_downloading_to"
            return finished

        return self._thread.submit(invoke())

    def close(self) -> None:
        if self._thread is not None:
            self._thread.loop.call_soon_threadsafe(self._thread.loop.stop)
