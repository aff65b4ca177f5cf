"""One contract suite for every journal backend (memory and SQLite)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bgdl_nb._events import Event
from bgdl_nb._journal import MemoryStore, SqliteStore, TaskRecord, read_journal


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[object]:
    s = MemoryStore() if request.param == "memory" else SqliteStore(tmp_path / "j.sqlite3", "jid")
    yield s
    s.close()


def _event(kind: str, tid: int | None = 1, **kw: object) -> Event:
    return Event(0, time.time(), "jid", tid, kind, **kw)  # type: ignore[arg-type]


def test_task_identifiers_increase(store) -> None:
    assert [store.next_task_identifier() for _ in range(3)] == [1, 2, 3]


def test_put_update_load(store) -> None:
    rec = TaskRecord(7, "http://h/x", headers={"A": "b"}, destination="/d/x", total=None)
    store.put_task(rec)
    store.update_task(7, state="running", total=100, response_headers={"ETag": '"e"'}, accepts_ranges=True,
                      error={"type": "NetworkError", "message": "m"})
    store.set_offset(7, 42)
    [loaded] = store.load_tasks()
    assert loaded.state == "running" and loaded.total == 100 and loaded.offset == 42
    assert loaded.headers == {"A": "b"} and loaded.response_headers == {"ETag": '"e"'}
    assert loaded.accepts_ranges is True and loaded.error["type"] == "NetworkError"


def test_loaded_records_are_copies(store) -> None:
    store.put_task(TaskRecord(1, "http://h/x"))
    store.load_tasks()[0].state = "completed"
    assert store.load_tasks()[0].state == "suspended"


def test_events_get_increasing_seq_and_filter(store) -> None:
    a = store.append_event(_event("created", 1))
    b = store.append_event(_event("created", 2, detail="x"))
    c = store.append_event(_event("progress", 1, bytes_written=5, total_bytes_written=5))
    assert a.seq < b.seq < c.seq
    assert [e.seq for e in store.events(a.seq)] == [b.seq, c.seq]
    assert [e.event for e in store.events(0, task_identifier=1)] == ["created", "progress"]
    assert store.events(0)[1].detail == "x" and store.events(0)[2].bytes_written == 5


def test_meta(store) -> None:
    assert store.get_meta("k") is None
    store.set_meta("k", "v")
    assert store.get_meta("k") == "v"


def test_sqlite_survives_reopen_and_reads_without_the_writer(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    s = SqliteStore(path, "jid")
    s.put_task(TaskRecord(s.next_task_identifier(), "http://h/x"))
    s.set_offset(1, 99)
    s.append_event(_event("created"))
    tasks, events = read_journal(path, "jid")  # while the writer is open
    assert tasks[0].offset == 99 and events[0].event == "created"
    s.close()
    again = SqliteStore(path, "jid")
    assert again.next_task_identifier() == 2
    assert again.load_tasks()[0].offset == 99
    again.close()
    assert path.stat().st_mode & 0o777 == 0o600
