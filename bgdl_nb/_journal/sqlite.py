"""The SQLite journal of a background session (one database file per identifier).

WAL mode with ``synchronous=NORMAL``: a commit survives the death of the process at
any moment (``kill -9`` included) and readers (``bgdl list``, another kernel's
``session.events``) never block the writer. The engine writes a segment's offset only
after the bytes below it were handed to the operating system, so the journal never
claims more than the partial file holds; on reattach the engine truncates a partial
file back to its journaled offset.

The tables and rows are in :mod:`bgdl_nb._journal.rows`; reading a journal without
writing to it is in :mod:`bgdl_nb._journal.reading`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Any, NoReturn

from .._events import EVENT_COLUMNS, Event
from .._private import private_dir, state_write_error
from .base import TaskRecord
from .rows import (
    COLUMN_AT,
    EVENT_INSERT,
    SCHEMA,
    SCHEMA_VERSION,
    STORED_EVENT_COLUMNS,
    TASK_COLUMNS,
    TOTAL,
    NewerJournal,
    column_value,
    connect,
    load_events,
    load_tasks,
    to_row,
)
from .writes import Writes

log = logging.getLogger("bgdl_nb")

__all__ = ["SqliteStore"]

class SqliteStore:
    """A durable store in one SQLite file (created 0600 in a 0700 directory)."""

    durable = True

    reset_reason: str | None = None
    """Why the journal found at ``path`` was moved aside and a new one started (corrupt,
    or from a newer bgdl_nb), or None; the engine journals it as a ``journal_reset`` row."""

    def __init__(self, path: Path, identifier: str) -> None:
        self.path = Path(path)
        self.identifier = identifier
        try:
            private_dir(self.path.parent, "the journal folder")
            self._open_journal()
        except (sqlite3.OperationalError, OSError) as exc:  # locked, full, read-only: never a reason to set it aside
            self._raise(exc)
        except sqlite3.DatabaseError as exc:  # not a journal we can read: keep it, start a new one
            self.reset_reason = self._move_aside(f"it could not be read ({exc})")
            self._open_journal()
        except NewerJournal as exc:
            self.reset_reason = self._move_aside(str(exc))
            self._open_journal()

    def _move_aside(self, why: str) -> str:
        with contextlib.suppress(Exception):
            self._conn.close()
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{self.path}{suffix}", f"{aside}{suffix}")
        log.warning("journal %s: %s; moved to %s, starting a new one", self.path, why, aside)
        return f"the journal of this identifier was moved to {aside.name} because {why}; this session starts afresh"

    def _open_journal(self) -> None:
        if not self.path.exists():
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        # look before changing anything (WAL mode rewrites the header): a journal set aside
        # stays byte for byte what it was
        probe = sqlite3.connect(self.path, timeout=5.0)
        try:
            if probe.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("the database failed its integrity check")
            version = probe.execute("PRAGMA user_version").fetchone()[0]
        finally:
            probe.close()
        if version > SCHEMA_VERSION:
            raise NewerJournal(f"it was written by a newer bgdl_nb (schema {version}, this one reads up to "
                                f"{SCHEMA_VERSION})")
        self._conn = connect(self.path, readonly=False)
        self._conn.executescript(SCHEMA)
        present = {row[1] for row in self._conn.execute("PRAGMA table_info(tasks)")}
        for column in TASK_COLUMNS:  # journals of older versions gain the newer columns
            if column not in present:
                self._conn.execute(f"ALTER TABLE tasks ADD COLUMN {column}")
        if "reason" not in {row[1] for row in self._conn.execute("PRAGMA table_info(events)")}:
            self._conn.execute("ALTER TABLE events ADD COLUMN reason TEXT")
        self._conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self._depth = 0
        self._atomic = _Atomic(self)  # a plain object, not a generator: every write enters one
        self._open = False  # a transaction is open
        self.group_commit = False
        """Keep writes gathered across blocks until :meth:`flush` (set by the engine)."""
        # writes not yet handed to SQLite: written together (one executemany per kind) when
        # the group commits or before anything is read. A task's changes coalesce: a file
        # that changes six fields in four steps within one window costs one UPDATE.
        self._gathered = Writes()
        self._sent: list[Writes] = []  # handed to SQLite in the open transaction, not committed yet
        row = self._conn.execute("SELECT MAX(seq) FROM events").fetchone()
        ever = self._conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        self._seq = max(row[0] or 0, ever[0] if ever else 0)  # events are numbered here, never reusing one

    # tasks -------------------------------------------------------------------------------

    def load_tasks(self) -> list[TaskRecord]:
        self._write()
        return load_tasks(self._conn)

    def atomic(self) -> _Atomic:
        """Everything written inside commits together (nesting joins the outer block).
        With :attr:`group_commit` on, the writes stay gathered after the block and
        :meth:`flush` commits them with everything written since: one commit (and one
        statement per kind of write) for all the events of a short window."""
        return self._atomic

    def _discard(self) -> None:
        unsent = sum(len(w.events) for w in self._sent)
        self._sent.clear()
        self._seq -= unsent + len(self._gathered.events)  # their numbers were never stored: the next events take them
        self._gathered = Writes()
        if self._open:
            self._open = False
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")

    def _take(self) -> Writes:
        """The gathered writes, moved out of the buffers."""
        taken, self._gathered = self._gathered, Writes()
        return taken

    def _restore(self) -> None:
        """After a transaction failed (a full disk, say: SQLite has rolled it back), put every
        write it held back in front of the ones gathered since, so the next commit writes
        them all: a journal that could not be written for a while loses nothing and works
        again once it can be."""
        self._gathered = Writes.merged([*self._sent, self._gathered])
        self._sent.clear()
        self._open = False
        with contextlib.suppress(sqlite3.Error):
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")

    def _write(self) -> None:
        """Hand the gathered writes to SQLite, inside the open transaction (not committed)."""
        if self._gathered.empty:
            return
        try:
            self._send()
        except (sqlite3.Error, OSError) as exc:
            self._restore()
            self._raise(exc)

    def _raise(self, exc: BaseException) -> NoReturn:
        shown = state_write_error(exc, f"the journal {self.path}", self.path.parent)
        if shown is None:
            raise exc
        raise shown from exc

    def _send(self) -> None:
        conn = self._conn
        if not self._open:
            conn.execute("BEGIN IMMEDIATE")
            self._open = True
        w = self._take()
        self._sent.append(w)  # until the commit: a failed transaction gives them back (_restore)
        if w.puts:
            cols = ", ".join(TASK_COLUMNS)
            marks = ", ".join("?" for _ in TASK_COLUMNS)
            conn.executemany(f"INSERT OR REPLACE INTO tasks ({cols}) VALUES ({marks})",
                             [row for row, _ in w.puts.values()])
            conn.executemany('INSERT OR REPLACE INTO segments (task_identifier, idx, start, "end", offset) '
                             "VALUES (?, 0, 0, ?, ?)",
                             [(tid, row[TOTAL], offset) for tid, (row, offset) in w.puts.items()])
        by_columns: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
        for tid, changes in w.changes.items():
            by_columns.setdefault(tuple(changes), []).append((*changes.values(), tid))
        for names, rows in by_columns.items():
            assigns = ", ".join(f"{name} = ?" for name in names)
            conn.executemany(f"UPDATE tasks SET {assigns} WHERE task_identifier = ?", rows)
            if "total" in names:
                at = names.index("total")
                conn.executemany('UPDATE segments SET "end" = ? WHERE task_identifier = ? AND idx = 0',
                                 [(row[at], row[-1]) for row in rows])
        if w.offsets:
            conn.executemany("UPDATE segments SET offset = ? WHERE task_identifier = ? AND idx = 0",
                             [(offset, tid) for tid, offset in w.offsets.items()])
        if w.events:
            conn.executemany(EVENT_INSERT, w.events)
        if w.meta:
            conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", w.meta.items())

    def flush(self) -> None:
        """Write and commit everything gathered so far (nothing to do when nothing is)."""
        self._write()
        if self._open:
            try:
                self._conn.execute("COMMIT")
            except (sqlite3.Error, OSError) as exc:
                self._restore()
                self._raise(exc)
            self._open = False
            self._sent.clear()

    def next_task_identifiers(self, count: int = 1) -> range:
        with self.atomic():
            first = int(self.get_meta("next_task_identifier") or "1")
            self.set_meta("next_task_identifier", str(first + count))
        return range(first, first + count)

    def put_task(self, record: TaskRecord) -> None:
        with self.atomic():
            tid = record.task_identifier
            self._gathered.changes.pop(tid, None)  # the whole record supersedes its earlier changes
            self._gathered.offsets.pop(tid, None)
            self._gathered.puts[tid] = (to_row(record), record.offset)

    def update_task(self, task_identifier: int, **changes: Any) -> None:
        with self.atomic():
            offset = changes.pop("offset", None)
            put = self._gathered.puts.get(task_identifier)
            if put is not None:  # a task created in this group: its row is changed before it is written
                row = put[0]
                for name, value in changes.items():
                    row[COLUMN_AT[name]] = column_value(name, value)
                if offset is not None:
                    self._gathered.puts[task_identifier] = (row, offset)
                return
            if offset is not None:
                self._gathered.offsets[task_identifier] = offset
            if not changes:
                return
            pending = self._gathered.changes.setdefault(task_identifier, {})
            for name, value in changes.items():
                pending.pop(name, None)  # re-inserted last: rows with the same fields share a statement
                pending[name] = column_value(name, value)

    def set_offset(self, task_identifier: int, offset: int) -> None:
        with self.atomic():
            self._gathered.offsets[task_identifier] = offset

    # events ------------------------------------------------------------------------------

    def append_event(self, event: Event) -> Event:
        with self.atomic():
            self._seq += 1
            e = event
            self._gathered.events.append((self._seq, e.time, e.task_identifier, e.event, e.bytes_written,
                                 e.total_bytes_written, e.total_bytes_expected, e.status, e.error, e.detail,
                                 e.reason))
        return Event(self._seq, e.time, e.identifier, e.task_identifier, e.event, e.bytes_written,
                     e.total_bytes_written, e.total_bytes_expected, e.status, e.error, e.detail, e.reason)

    def events(self, since_seq: int = 0, task_identifier: int | None = None) -> list[Event]:
        self._write()
        return load_events(self._conn, self.identifier, since_seq, task_identifier)

    def event_columns(self, since_seq: int = 0) -> dict[str, list[Any]]:
        self._write()
        rows = self._conn.execute(f"SELECT {', '.join(STORED_EVENT_COLUMNS)} FROM events WHERE seq > ? ORDER BY seq",
                                  (since_seq,)).fetchall()
        stored = dict(zip(STORED_EVENT_COLUMNS, (list(c) for c in zip(*rows)))) if rows else {
            name: [] for name in STORED_EVENT_COLUMNS}
        return {name: stored[name] if name in stored else [self.identifier] * len(rows) for name in EVENT_COLUMNS}

    # meta --------------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        if key in self._gathered.meta:
            return self._gathered.meta[key]
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, key: str, value: str) -> None:
        with self.atomic():
            self._gathered.meta[key] = value

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._conn.close()


class _Atomic:
    """:meth:`SqliteStore.atomic`'s block."""

    __slots__ = ("store",)

    def __init__(self, store: SqliteStore) -> None:
        self.store = store

    def __enter__(self) -> None:
        self.store._depth += 1

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        store = self.store
        store._depth -= 1
        if store._depth == 0 and not store.group_commit:
            if kind is None:
                store.flush()
            else:
                store._discard()


