"""The journal's tables and how a task's record and an event become rows and back.

Schema (``PRAGMA user_version`` = 1)::

    tasks(task_identifier PK, <TaskRecord fields>, headers/response_headers/error as JSON)
    segments(task_identifier, idx, start, end, offset)   -- one segment per task for now
    events(seq PK autoincrement, time, task_identifier, event, ..., detail, reason)
    meta(key PK, value)
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import orjson

from .._events import EVENT_COLUMNS, Event
from .._states import TaskState
from .base import TASK_FIELDS, TaskRecord

__all__ = ["BOOL_FIELDS", "COLUMN_AT", "EVENT_INSERT", "JSON_FIELDS", "SCHEMA", "SCHEMA_VERSION",
           "STORED_EVENT_COLUMNS", "TASK_COLUMNS", "TOTAL", "NewerJournal", "column_value", "connect", "from_row",
           "json_text", "load_events", "load_tasks", "to_row"]

SCHEMA_VERSION = 1
JSON_FIELDS = {"headers", "response_headers", "error", "segments", "marks"}
BOOL_FIELDS = {"overwrite", "accepts_ranges", "discretionary"}
TASK_COLUMNS = [f for f in TASK_FIELDS if f != "offset"]
TOTAL = TASK_COLUMNS.index("total")
COLUMN_AT = {name: at for at, name in enumerate(TASK_COLUMNS)}
STORED_EVENT_COLUMNS = tuple(name for name in EVENT_COLUMNS if name != "identifier")  # one journal, one identifier
EVENT_INSERT = (f"INSERT INTO events ({', '.join(STORED_EVENT_COLUMNS)}) "
                f"VALUES ({', '.join('?' for _ in STORED_EVENT_COLUMNS)})")

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS tasks ({", ".join(
    ("task_identifier INTEGER PRIMARY KEY" if f == "task_identifier" else f) for f in TASK_COLUMNS)});
CREATE TABLE IF NOT EXISTS segments (
    task_identifier INTEGER NOT NULL, idx INTEGER NOT NULL, start INTEGER NOT NULL,
    "end" INTEGER, offset INTEGER NOT NULL, PRIMARY KEY (task_identifier, idx));
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, task_identifier INTEGER,
    event TEXT NOT NULL, bytes_written INTEGER, total_bytes_written INTEGER,
    total_bytes_expected INTEGER, status INTEGER, error TEXT, detail TEXT, reason TEXT);
CREATE INDEX IF NOT EXISTS events_by_task ON events(task_identifier, seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""


class NewerJournal(Exception):
    pass


def connect(path: Path, *, readonly: bool) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None,
                               check_same_thread=False)
    else:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


def json_text(value: Any) -> str | None:
    """A JSON column's text (orjson: a record's headers and regions, written per change)."""
    return None if value is None else orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def column_value(name: str, value: Any) -> Any:
    """A record field as its column stores it (JSON text, 0/1, or as it is)."""
    if name in JSON_FIELDS:
        return json_text(value)
    if name in BOOL_FIELDS:
        return int(bool(value))
    return value


_JSON_AT = [at for at, name in enumerate(TASK_COLUMNS) if name in JSON_FIELDS]
_BOOL_AT = [at for at, name in enumerate(TASK_COLUMNS) if name in BOOL_FIELDS]


def to_row(record: TaskRecord) -> list[Any]:
    """A record as its row (the columns :func:`column_value` converts, converted)."""
    fields = vars(record)
    row = [fields[name] for name in TASK_COLUMNS]
    for at in _JSON_AT:
        row[at] = json_text(row[at])
    for at in _BOOL_AT:
        row[at] = int(bool(row[at]))
    return row


def from_row(names: list[str], row: tuple[Any, ...]) -> TaskRecord:
    values = dict(zip(names, row))
    values["state"] = TaskState(values.get("state") or TaskState.SUSPENDED.value)
    for name in JSON_FIELDS:
        if values.get(name) is not None:
            values[name] = orjson.loads(values[name])
    for name in BOOL_FIELDS:
        values[name] = bool(values.get(name))
    if values.get("headers") is None:
        values["headers"] = {}
    return TaskRecord(**values)


def load_tasks(conn: sqlite3.Connection) -> list[TaskRecord]:
    # a journal an older bgdl_nb wrote (read without writing, so not yet given the newer
    # columns) is read with the columns it has; the others keep their defaults
    present = {row[1] for row in conn.execute("PRAGMA table_info(tasks)")}
    names = [c for c in TASK_COLUMNS if c in present] if present else TASK_COLUMNS
    cols = ", ".join(f"t.{c}" for c in names)
    cur = conn.execute(
        f"SELECT {cols}, COALESCE(s.offset, 0) FROM tasks t LEFT JOIN segments s "
        "ON s.task_identifier = t.task_identifier AND s.idx = 0 ORDER BY t.task_identifier"
    )
    return [from_row([*names, "offset"], row) for row in cur.fetchall()]




def load_events(conn: sqlite3.Connection, identifier: str, since_seq: int,
                 task_identifier: int | None) -> list[Event]:
    query = f"SELECT {', '.join(STORED_EVENT_COLUMNS)} FROM events WHERE seq > ?"
    args: list[Any] = [since_seq]
    if task_identifier is not None:
        query += " AND task_identifier = ?"
        args.append(task_identifier)
    rows = conn.execute(query + " ORDER BY seq", args).fetchall()
    return [Event(r[0], r[1], identifier, *r[2:]) for r in rows]
