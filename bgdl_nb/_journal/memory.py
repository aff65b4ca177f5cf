"""An in-memory store: the journal of default sessions and a fake for tests."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Iterator
from typing import Any

from .._events import EVENT_COLUMNS, Event
from .base import TaskRecord

__all__ = ["MemoryStore"]


class MemoryStore:
    """Keeps everything in lists and dicts; nothing survives the process."""

    durable = False

    def __init__(self) -> None:
        self._tasks: dict[int, TaskRecord] = {}
        self._events: list[Event] = []
        self._meta: dict[str, str] = {}
        self._lock = threading.Lock()  # events() may be read from other threads

    group_commit = False

    @contextlib.contextmanager
    def atomic(self) -> Iterator[None]:
        """Nothing here outlives the process, so there is nothing to make atomic."""
        yield

    def flush(self) -> None:
        pass

    def load_tasks(self) -> list[TaskRecord]:
        return [dataclasses.replace(r) for r in self._tasks.values()]

    def next_task_identifiers(self, count: int = 1) -> range:
        first = int(self._meta.get("next_task_identifier", "1"))
        self._meta["next_task_identifier"] = str(first + count)
        return range(first, first + count)

    def put_task(self, record: TaskRecord) -> None:
        self._tasks[record.task_identifier] = dataclasses.replace(record)

    def update_task(self, task_identifier: int, **changes: Any) -> None:
        record = self._tasks[task_identifier]
        for key, value in changes.items():
            setattr(record, key, value)

    def set_offset(self, task_identifier: int, offset: int) -> None:
        self._tasks[task_identifier].offset = offset

    def append_event(self, event: Event) -> Event:
        with self._lock:
            event = dataclasses.replace(event, seq=len(self._events) + 1)
            self._events.append(event)
        return event

    def events(self, since_seq: int = 0, task_identifier: int | None = None) -> list[Event]:
        with self._lock:
            rows = self._events[since_seq:]
        if task_identifier is not None:
            rows = [e for e in rows if e.task_identifier == task_identifier]
        return rows

    def event_columns(self, since_seq: int = 0) -> dict[str, list[Any]]:
        rows = self.events(since_seq)
        return {name: [getattr(e, name) for e in rows] for name in EVENT_COLUMNS}

    def get_meta(self, key: str) -> str | None:
        return self._meta.get(key)

    def set_meta(self, key: str, value: str) -> None:
        self._meta[key] = value

    def close(self) -> None:
        pass
