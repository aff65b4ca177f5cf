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
    assert [store.next_task_identifiers()[0] for _ in range(3)] == [1, 2, 3]
    assert list(store.next_task_identifiers(3)) == [4, 5, 6]  # a batch: one write


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
    s.put_task(TaskRecord(s.next_task_identifiers()[0], "http://h/x"))
    s.set_offset(1, 99)
    s.append_event(_event("created"))
    tasks, events = read_journal(path, "jid")  # while the writer is open
    assert tasks[0].offset == 99 and events[0].event == "created"
    s.close()
    again = SqliteStore(path, "jid")
    assert again.next_task_identifiers()[0] == 2
    assert again.load_tasks()[0].offset == 99
    again.close()
    assert path.stat().st_mode & 0o777 == 0o600


def test_group_commit_gathers_writes_until_flush_and_coalesces_them(tmp_path: Path) -> None:
    """With group commit on, nothing reaches the file before flush(); then every change
    is there, the later value of a field winning, and a whole record replacing earlier changes."""
    path = tmp_path / "j.sqlite3"
    s = SqliteStore(path, "jid")
    s.group_commit = True
    s.put_task(TaskRecord(1, "http://h/a"))
    s.put_task(TaskRecord(2, "http://h/b"))
    s.update_task(1, state="running", status=200)
    s.update_task(1, status=206, total=10)
    s.set_offset(1, 4)
    s.update_task(2, state="running")
    s.put_task(TaskRecord(2, "http://h/b", state="completed"))  # supersedes the change before it
    s.update_task(2, location="/d/b")  # and a change after a whole record still applies
    first = s.append_event(_event("started", 1))
    second = s.append_event(_event("progress", 1, bytes_written=4))
    assert second.seq == first.seq + 1
    assert read_journal(path, "jid") == ([], [])  # another reader sees nothing until the commit
    assert [e.seq for e in s.events(0)] == [first.seq, second.seq]  # the writer reads its own writes
    s.flush()
    tasks, events = read_journal(path, "jid")
    a, b = tasks
    assert (a.state, a.status, a.total, a.offset) == ("running", 206, 10, 4)
    assert (b.state, b.location) == ("completed", "/d/b")
    assert [(e.seq, e.event, e.bytes_written) for e in events] == [(first.seq, "started", None),
                                                                   (second.seq, "progress", 4)]
    s.close()


def test_event_numbers_continue_after_reopen_and_after_a_failed_block(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    s = SqliteStore(path, "jid")
    last = s.append_event(_event("created")).seq
    with pytest.raises(RuntimeError), s.atomic():  # a block that fails writes nothing
        s.append_event(_event("resumed"))
        raise RuntimeError("boom")
    assert [e.event for e in s.events(0)] == ["created"]
    assert s.append_event(_event("resumed")).seq == last + 1
    s.close()
    again = SqliteStore(path, "jid")
    assert again.append_event(_event("started")).seq == last + 2
    again.close()


def test_the_hash_thread_outlives_a_waiter_that_was_cancelled():
    """A task cancelled while it waited for the hash thread cancels that wait's future; the
    thread must go on serving the waits after it (it once died there, and a file finished
    later in the same engine never left its partial name)."""
    import hashlib
    import threading

    from bgdl_nb._files import HashWorker

    gate = threading.Event()

    class Slow:
        def update(self, chunk):
            gate.wait(10)  # the hash thread is busy until the test lets it go

    worker = HashWorker()
    worker.update(Slow(), b"x")
    cancelled = worker.settled()
    assert cancelled.cancel()  # still queued behind the slow chunk: its waiter gives up
    after = worker.settled()
    real = hashlib.sha256()
    worker.update(real, b"abc")
    digest = worker.digest(real)
    gate.set()
    assert after.result(timeout=10) is None
    assert digest.result(timeout=10) == hashlib.sha256(b"abc").hexdigest()
    assert cancelled.cancelled()
    worker.close()


def test_event_columns_hold_the_same_rows_as_the_events(store) -> None:
    from bgdl_nb._events import EVENT_COLUMNS
    assert store.event_columns() == {name: [] for name in EVENT_COLUMNS}
    store.append_event(Event(0, 1.5, "s1", 7, "progress", bytes_written=10, total_bytes_written=10))
    store.append_event(Event(0, 2.5, "s1", None, "reattached", detail="3 tasks", error=None, reason=None))
    store.append_event(Event(0, 3.5, "s1", 7, "waiting", detail="earliest begin date", reason="earliest begin date"))
    for since in (0, 1, 3):
        rows = store.events(since)
        assert store.event_columns(since) == {name: [getattr(e, name) for e in rows] for name in EVENT_COLUMNS}


@pytest.mark.parametrize("use_service", [False, True], ids=["in-process", "service"])
def test_session_events_from_columns_equal_the_frame_of_the_rows(origin, tmp_path, use_service) -> None:
    pytest.importorskip("pandas")
    import bgdl_nb as bg
    from bgdl_nb.notebook.frame import events_frame
    with bg.Session(bg.Configuration.background(f"columns-{use_service}", use_service=use_service)) as session:
        ok = session.download_task(origin.url("cols.bin", 300_000), tmp_path / "cols.bin").resume()
        bad = session.download_task(origin.url("gone.bin", 10, status=404), tmp_path / "gone.bin").resume()
        ok.wait(30)
        with pytest.raises(bg.HTTPStatusError):
            bad.wait(30)
        frame = session.events
        assert frame.equals(events_frame(session.event_log())) and len(frame) > 6
        assert frame.equals(session.events_since(0))
        assert session.events_since(int(frame["seq"].iloc[2])).equals(frame.iloc[3:].reset_index(drop=True))
