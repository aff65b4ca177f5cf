"""The store protocol and the task record it keeps."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

from .._events import Event
from .._states import TaskState

__all__ = ["TASK_FIELDS", "Store", "TaskRecord"]


@dataclass
class TaskRecord:
    """The durable part of a task. Only the engine changes it, and only through a store."""

    task_identifier: int
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    destination: str | None = None
    description: str | None = None
    state: TaskState = TaskState.SUSPENDED
    priority: float = 0.5
    earliest_begin_date: float | None = None
    launch_delay_until: float | None = None
    launch_delay_reason: str | None = None
    discretionary: bool = False
    expected_bytes: int | None = None
    expected_send_bytes: int | None = None
    sha256: str | None = None
    expected_hash: str | None = None  # "alg:hex" of a digest other than sha256, checked before the rename
    overwrite: bool = False
    partial_path: str = ""
    offset: int = 0
    total: int | None = None
    validator_kind: str | None = None
    validator_value: str | None = None
    accepts_ranges: bool = False
    current_url: str | None = None
    status: int | None = None
    response_headers: dict[str, str] | None = None
    error: dict[str, Any] | None = None
    location: str | None = None
    digest: str | None = None
    created: float = 0.0
    finished_at: float | None = None
    segments: list[list[int]] | None = None  # [start, end, durable offset] per segment of a split file
    marks: list[list[Any]] | None = None  # [offset, sha256 of the bytes before it]: the prefix is checked on resume

    @property
    def succeeded(self) -> bool:
        """Completed with its file in place: the one definition every reader uses."""
        return self.state is TaskState.COMPLETED and self.error is None and self.location is not None

    @property
    def outcome(self) -> str:
        """A word for people: the state while unfinished, else done, cancelled or failed."""
        if self.state is not TaskState.COMPLETED:
            return TaskState(self.state).value
        if self.succeeded:
            return "done"
        return "cancelled" if (self.error or {}).get("type") == "Cancelled" else "failed"


TASK_FIELDS = tuple(f.name for f in fields(TaskRecord))


class Store(Protocol):
    """What the engine needs from a journal. Every method is called from one thread."""

    durable: bool

    group_commit: bool
    """When True, writes join one open transaction that :meth:`flush` commits."""

    def atomic(self) -> AbstractContextManager[None]:
        """A block whose writes commit together (a state change and its event)."""

    def flush(self) -> None:
        """Commit everything written so far (group commit)."""

    def load_tasks(self) -> list[TaskRecord]: ...

    def next_task_identifiers(self, count: int = 1) -> range:
        """Reserve ``count`` new task identifiers (one meta write for a batch of any size)."""
        ...

    def put_task(self, record: TaskRecord) -> None: ...

    def update_task(self, task_identifier: int, **changes: Any) -> None: ...

    def set_offset(self, task_identifier: int, offset: int) -> None:
        """Record the durable offset of the task's (single) segment."""

    def append_event(self, event: Event) -> Event:
        """Store ``event`` and return it with its ``seq`` assigned."""

    def events(self, since_seq: int = 0, task_identifier: int | None = None) -> list[Event]: ...

    def event_columns(self, since_seq: int = 0) -> dict[str, list[Any]]:
        """The events after ``since_seq``, one list per column of ``EVENT_COLUMNS``."""

    def get_meta(self, key: str) -> str | None: ...

    def set_meta(self, key: str, value: str) -> None: ...

    def close(self) -> None: ...
