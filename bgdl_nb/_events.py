"""The event record: one row per delegate callback and lifecycle event.

The same frozen :class:`Event` object is journaled, handed to
``SessionDelegate.did_receive_event`` and becomes a row of ``session.events``. One
dataclass with an ``event`` kind (rather than one class per kind) keeps that row shape
identical for every kind, which is what the journal and the DataFrame need; the kinds
are listed in :class:`EventKind` with the circumstances that produce each.
"""

from __future__ import annotations

import enum
import operator
from dataclasses import dataclass
from typing import Any

__all__ = ["EVENT_COLUMNS", "Event", "EventKind"]


class EventKind(str, enum.Enum):
    """What an event row records."""

    CREATED = "created"            # download_task() made the task (it starts suspended)
    RESUMED = "resumed"            # task.resume(): the scheduler delay starts; reason: why it waits (none: it starts)
    WAITING = "waiting"            # the task is ready but waits; detail says why
    STARTED = "started"            # a request went out (first attempt or a retry)
    REDIRECT = "redirect"          # a redirect hop was followed; detail has the new URL
    RESPONSE = "response"          # response headers arrived; status is set
    RESUMED_AT_OFFSET = "resumed_at_offset"  # a range request continued at total_bytes_written
    RESTARTED = "restarted"        # resuming was impossible; the file starts over at byte 0
    SEGMENTED = "segmented"        # the file is split over several connections; detail says how many and why
    PROGRESS = "progress"          # coalesced did_write_data (at most every progress_interval)
    RETRY = "retry"                # an attempt failed and will be retried; detail has the delay
    SUSPENDED = "suspended"        # task.suspend()
    CANCELED = "canceled"          # task.cancel() or cancel_by_producing_resume_data()
    FINISHED = "finished"          # did_finish_downloading_to: the file is complete
    COMPLETED = "completed"        # did_complete_with_error(error=None)
    FAILED = "failed"              # did_complete_with_error(error=...)
    RELINKED = "relinked"          # a new link to the same file (signed again) took over the task; it continues
    READ_WAIT = "read_wait"        # bgdl_nb.open() waited for bytes not yet here; detail: the region, the wait
    UNPACKED = "unpacked"          # fetch(unpack=True) extracted the file; detail has the members, bytes is their total
    DETACHED = "detached"          # the process closed the session; its tasks wait for a reattach
    CLIENT_LEFT = "client_left"    # the process attached to the service died without closing; transfers go on
    REATTACHED = "reattached"      # a process reattached to a journaled background session
    JOURNAL_RESET = "journal_reset"  # the journal was unreadable (or newer); moved aside, a new one started
    LAUNCHED = "launched"          # the service ran launch_command; detail has the command, pid and delay
    FINISHED_EVENTS = "finished_events"  # did_finish_events_for_background_session


EVENT_COLUMNS = (
    "seq", "time", "identifier", "task_identifier", "event", "bytes_written",
    "total_bytes_written", "total_bytes_expected", "status", "error", "detail", "reason",
)


@dataclass(frozen=True, slots=True)
class Event:
    """One journaled event.

    Attributes
    ----------
    seq
        Position in the session's log (strictly increasing, survives restarts).
    time
        Seconds since the epoch, UTC.
    identifier
        The session identifier (``None`` for default sessions).
    task_identifier
        The task, or ``None`` for session-level events.
    event
        The :class:`EventKind` value.
    bytes_written, total_bytes_written, total_bytes_expected
        As in ``did_write_data``; ``total_bytes_expected`` is ``None`` when unknown.
    status
        HTTP status for ``response`` rows.
    error
        The error's type and message for ``failed``/``retry`` rows.
    detail
        Human-readable specifics: why a task waits, why it restarted, where it redirected.
    reason
        Why the task waits from this row on, as a :class:`~bgdl_nb.WaitReason` value
        (data, not text to parse): on ``waiting`` rows, and on a ``resumed`` row whose
        task could not start at once; ``None`` otherwise.
    """

    seq: int
    time: float
    identifier: str | None
    task_identifier: int | None
    event: str
    bytes_written: int | None = None
    total_bytes_written: int | None = None
    total_bytes_expected: int | None = None
    status: int | None = None
    error: str | None = None
    detail: str | None = None
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The row as a dict of its columns."""
        return dict(zip(EVENT_COLUMNS, _values(self)))  # every field is a plain value

    def wire(self) -> list[Any]:
        """The row as its values in :data:`EVENT_COLUMNS` order (what the transfer service
        sends: no column name repeated per event)."""
        return list(_values(self))

    @classmethod
    def from_wire(cls, values: list[Any]) -> Event:
        """The event :meth:`wire` gave."""
        return cls(*values)


_values = operator.attrgetter(*EVENT_COLUMNS)
"""An event's values in column order (the fields are declared in that order: :meth:`Event.from_wire`)."""
