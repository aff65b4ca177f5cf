"""Reading a journal without writing to it: safe while an engine holds the session
(``bgdl list``, ``bgdl events``, a restarted service choosing what to load)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from .._events import Event
from .._states import TaskState
from .base import TaskRecord
from .rows import connect, load_events, load_tasks

__all__ = ["has_unfinished", "journaled_bytes", "read_journal"]


def read_journal(path: Path, identifier: str, *, events: bool = True) -> tuple[list[TaskRecord], list[Event]]:
    """Read a journal without writing to it (safe while an engine holds the session);
    ``events=False`` reads the tasks' state only, not the history."""
    try:
        conn = connect(Path(path), readonly=True)
        try:
            return load_tasks(conn), load_events(conn, identifier, 0, None) if events else []
        finally:
            conn.close()
    except sqlite3.OperationalError:
        raise  # locked, or its schema still being written: a moment later it reads
    except sqlite3.DatabaseError as exc:  # not a journal at all
        from .._exceptions import SessionError
        raise SessionError(f"the journal {path} cannot be read ({exc}); the next session of {identifier!r} "
                           "moves it aside and starts afresh") from None


def has_unfinished(path: Path) -> bool:
    """Whether a journal holds a task that was running or being cancelled (one question of
    its tasks table, not a read of the journal: a restarted service asks it of every journal)."""
    conn = connect(Path(path), readonly=True)
    try:
        return conn.execute("SELECT 1 FROM tasks WHERE state IN (?, ?) LIMIT 1",
                            (TaskState.RUNNING.value, TaskState.CANCELING.value)).fetchone() is not None
    finally:
        conn.close()


def journaled_bytes(path: Path, identifier: str) -> int:
    """The bytes a journal vouches for across its tasks; 0 while it is missing or being created."""
    if not Path(path).exists():
        return 0
    try:
        tasks, _ = read_journal(path, identifier, events=False)
    except Exception:  # the schema is still being created by its writer, or the file is not a journal
        return 0
    return sum(t.offset for t in tasks)
