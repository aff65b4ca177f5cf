"""The session delegate: the callbacks of URLSessionDownloadDelegate, in snake_case.

Subclass :class:`SessionDelegate` and override what you need; every method is
optional and may be a plain function or ``async def``. Callbacks of one session are
delivered one at a time, in the order the events happened, on a delegate thread of
their own: a slow callback delays later callbacks but never a transfer.

For background sessions every callback is journaled before it is delivered and marked
delivered after it returns; a process that dies in between gets it again when the
session is recreated (delivery is at least once). The delivery itself lives with the
hosts (:class:`bgdl_nb._hosts.base.Delivery`); this module only names the callbacks.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._events import Event
    from ._exceptions import BgdlError
    from ._session import Session
    from ._task import DownloadTask

__all__ = ["SessionDelegate"]


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
