"""The engine/host seam: what a response means is decided once and read the same way by
every host and display; close() is bounded; the engine's loop is never blocked for long."""

from __future__ import annotations

import threading
import time
import warnings

import pytest

import bgdl_nb as bg
from bgdl_nb._hosts.thread import engine_thread
from bgdl_nb._manifest import FileAction, FileFacts, ManifestEntry, file_action
from bgdl_nb._states import TRANSITIONS, TaskState, check_transition

from helpers import Recorder, sha256_of, wait_until

HOSTS = ["in-process", "service"]


def _config(kind: str, **fields) -> bg.Configuration:
    if kind == "in-process":
        return bg.Configuration.default(**fields)
    return bg.Configuration.background("seam", use_service=True, **fields)


@pytest.fixture
def loop_watch():
    """Fails the test when the engine thread's event loop is blocked for longer than a
    bound: a callback is scheduled every 10 ms and the worst lateness is kept."""
    loop = engine_thread().loop
    worst = [0.0]
    stop = threading.Event()

    def tick(expected: float) -> None:
        worst[0] = max(worst[0], time.monotonic() - expected)
        if not stop.is_set():
            loop.call_later(0.01, tick, time.monotonic() + 0.01)

    loop.call_soon_threadsafe(tick, time.monotonic())
    yield worst
    stop.set()
    assert worst[0] < 0.25, f"the engine loop was blocked for {worst[0] * 1000:.0f} ms"


@pytest.mark.parametrize("kind", HOSTS)
@pytest.mark.parametrize("switch, status", [("status=204", 204), ("status=205", 205),
                                            ("unasked_range=3", 206)])
def test_success_without_a_file_is_never_a_success(origin, tmp_path, kind, switch, status, loop_watch):
    key, value = switch.split("=")
    session = bg.Session(_config(kind))
    dest = tmp_path / "x.bin"
    task = session.download_task(origin.url("x", 10, **{key: value}), dest).resume()
    with pytest.raises(bg.BgdlError) as info:
        task.wait(30)
    assert isinstance(info.value, bg.UnexpectedResponse) and str(status) in str(info.value)
    assert not task.succeeded and task.location is None and not dest.exists()
    assert task.state is TaskState.COMPLETED and task.response.status == status
    with pytest.raises(bg.FetchError, match=str(status)):
        bg.fetch(origin.url("y", 10, **{key: value}), tmp_path / "fetched", progress=False)
    session.close()


@pytest.mark.parametrize("kind", HOSTS)
def test_an_unasked_206_that_is_the_whole_file_lands(origin, tmp_path, kind):
    session = bg.Session(_config(kind))
    dest = tmp_path / "w.bin"
    task = session.download_task(origin.url("w", 3000, unasked_range=3000), dest).resume()
    assert task.wait(30) == dest and task.succeeded
    assert sha256_of(dest) == origin.sha256("w", 3000)
    session.close()


@pytest.mark.parametrize("kind", HOSTS)
def test_a_404_completes_without_client_error_and_does_not_succeed(origin, tmp_path, kind):
    delegate = Recorder()
    session = bg.Session(_config(kind), delegate=delegate)
    task = session.download_task(origin.url("gone", 10, status=404), tmp_path / "gone").resume()
    with pytest.raises(bg.HTTPStatusError, match="404"):
        task.wait(30)
    wait_until(lambda: "complete" in delegate.names())
    assert delegate.calls[-1][-1] is None  # seed semantics: no client-side error for a 404
    assert not task.succeeded and not (tmp_path / "gone").exists()
    session.close()


@pytest.mark.parametrize("kind", HOSTS)
def test_close_gives_up_on_a_callback_that_never_returns(origin, tmp_path, kind):
    entered, release = threading.Event(), threading.Event()

    class Stuck(bg.SessionDelegate):
        def did_finish_downloading_to(self, session, task, location):
            entered.set()
            release.wait(60)

    session = bg.Session(_config(kind, delegate_close_timeout=1.0), delegate=Stuck())
    task = session.download_task(origin.url("s", 1000), tmp_path / "s").resume()
    task.wait(30)
    assert entered.wait(30)
    started = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        session.close()
    took = time.monotonic() - started
    release.set()
    assert took < 1.0 + 5.0, took  # the bound, plus the service's detach round trip
    assert any(f"did_finish_downloading_to of task {task.task_identifier} did not return within 1 s"
               in str(w.message) for w in caught), [str(w.message) for w in caught]


def test_transition_table_allows_exactly_the_documented_moves():
    for state in TaskState:
        for new in TaskState:
            if new in TRANSITIONS[state]:
                check_transition(state, new)
            else:
                with pytest.raises(RuntimeError, match=f"from {state.value} to {new.value}"):
                    check_transition(state, new)
    assert TRANSITIONS[TaskState.COMPLETED] == frozenset()


def test_waiting_reasons_are_an_enum_column(origin, tmp_path):
    pytest.importorskip("pandas")
    session = bg.Session(bg.Configuration.default(max_concurrent_tasks=1))
    first = session.download_task(origin.url("a", 2_000_000, rate=4_000_000), tmp_path / "a").resume()
    second = session.download_task(origin.url("b", 1000), tmp_path / "b",
                                   earliest_begin_date=time.time() + 0.3).resume()
    session.wait([first, second], timeout=30)
    frame = session.events
    says_why = frame["event"].isin(["waiting", "resumed"])  # a resumed row says why the task waits from then on
    assert str(frame["reason"].dtype) == "category"
    assert set(frame.loc[says_why, "reason"].dropna().astype(str)) >= {"earliest begin date", "waiting for a free slot"}
    assert frame.loc[~says_why, "reason"].isna().all()
    session.close()


def _facts(**kw) -> FileFacts:
    base = dict(url="u", expected=None, entry=None, entry_matches=False, journal_digest=None, overwrite=False)
    return FileFacts(**{**base, **kw})


def _entry(url="u", sha="a" * 64) -> ManifestEntry:
    return ManifestEntry(url, url, None, 1, sha, "", 0)


@pytest.mark.parametrize("facts, action", [
    (_facts(entry=_entry(), entry_matches=True), FileAction.SKIP),
    (_facts(entry=_entry(), entry_matches=False), FileAction.CONFLICT),
    (_facts(entry=_entry(), entry_matches=False, overwrite=True), FileAction.FETCH),
    (_facts(entry=_entry(url="other"), entry_matches=True), FileAction.CONFLICT),
    (_facts(), FileAction.CONFLICT),
    (_facts(overwrite=True), FileAction.FETCH),
    (_facts(journal_digest="b" * 64, digest="b" * 64), FileAction.ADOPT),
    (_facts(journal_digest="b" * 64, digest="c" * 64), FileAction.CONFLICT),
    (_facts(expected="d" * 64, digest="d" * 64), FileAction.ADOPT),
    (_facts(entry=_entry(), entry_matches=True, expected="e" * 64, digest="f" * 64), FileAction.FETCH),
])
def test_file_action(facts, action):
    assert file_action(facts)[0] is action


def test_session_creates_many_tasks_in_one_call_and_checks_them_all_first(origin, tmp_path):
    session = bg.Session(bg.Configuration.default())
    specs = [{"request": origin.url(f"m{i}", 100), "destination": tmp_path / f"m{i}"} for i in range(3)]
    with pytest.raises(bg.UnsupportedURL):
        session.download_tasks([*specs, {"request": "ftp://x/y", "destination": tmp_path / "bad"}])
    assert session.all_tasks() == []  # nothing was created
    tasks = session.download_tasks(specs, resume=True)
    assert [t.wait(30) for t in tasks] == [tmp_path / f"m{i}" for i in range(3)]
    session.close()


def test_a_transport_plugged_at_the_seam_serves_a_download_without_a_socket(tmp_path):
    """The engine opens every response through its Transport: a fake one (our own seam)
    serves a file from memory, an interrupted first response included, and the engine
    continues it with a range request, verifies and renames it as with aiohttp."""
    import asyncio
    import contextlib

    from bgdl_nb._engine import Engine
    from bgdl_nb._exceptions import NetworkError
    from bgdl_nb._journal import MemoryStore, TaskRecord

    body = bytes(range(256)) * 4000

    class Response:
        def __init__(self, url: str, start: int) -> None:
            self.url, self.start, self.complete = url, start, False
            self.status = 206 if start else 200
            self.headers = {"Content-Length": str(len(body) - start), "ETag": '"v1"', "Accept-Ranges": "bytes",
                            **({"Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}"} if start else {})}

        def abort(self) -> None:
            pass

        async def chunks(self):
            end = len(body) if self.start else 300_000  # the first response breaks off
            for at in range(self.start, end, 65_536):
                yield body[at:min(end, at + 65_536)]
            if not self.start:
                raise NetworkError("connection reset by the fake")
            self.complete = True

    class Fake:
        def __init__(self) -> None:
            self.ranges: list[str | None] = []
            self.closed = False

        @contextlib.asynccontextmanager
        async def open(self, url, headers, on_redirect):
            self.ranges.append(headers.get("Range"))
            start = int(headers["Range"].split("=")[1].rstrip("-")) if "Range" in headers else 0
            yield Response(url, start)

        async def close(self) -> None:
            self.closed = True

    fake = Fake()

    async def main() -> None:
        engine = Engine(bg.Configuration.default(connections_per_file=1, retry_backoff=0.01), MemoryStore(),
                        b"k" * 32, tmp_path / "work", transport=fake)
        engine.open()
        engine.create_many([TaskRecord(0, "http://fake.invalid/f.bin", destination=str(tmp_path / "f.bin"))],
                           resume=True)
        await asyncio.wait_for(engine.drain(), 30)
        await engine.close()

    asyncio.run(main())
    assert (tmp_path / "f.bin").read_bytes() == body
    assert fake.ranges[0] is None and fake.ranges[1].startswith("bytes=") and len(fake.ranges) == 2, fake.ranges
    assert fake.closed


def test_a_failed_row_carries_the_refusals_status_not_the_200_before_a_reset(origin, tmp_path):
    with bg.Session(bg.Configuration.default(max_retries=0, connections_per_file=1)) as session:
        task = session.download_task(origin.url("resets.bin", 1_000_000, reset_after=50_000),
                                     tmp_path / "resets.bin").resume()
        with pytest.raises(bg.NetworkError):
            task.wait(30)
        rows = session.event_log()
    [response] = [e for e in rows if e.event == "response"]
    [failed] = [e for e in rows if e.event == "failed"]
    assert response.status == 200 and failed.status is None and failed.error.startswith("NetworkError")
