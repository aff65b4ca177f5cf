"""The URLSession-style API against the demo origin: tasks, delegate, resume, faults."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

import bgdl_nb as bg
from bgdl_nb._resume import ResumeState, Validator, encode_resume_data, load_key
from bgdl_nb.demo.origin import content

from helpers import Recorder, sha256_of, wait_for_bytes, wait_until

MB = 1024 * 1024


@pytest.fixture
def delegate() -> Recorder:
    return Recorder()


@pytest.fixture
def session(delegate: Recorder):
    s = bg.Session(bg.Configuration.default(progress_interval=0.1), delegate=delegate)
    yield s
    s.invalidate_and_cancel()


def test_download_to_destination(session, delegate, origin, tmp_path):
    dest = tmp_path / "out" / "a.bin"
    task = session.download_task(origin.url("a", 3 * MB), dest)
    assert task.state is bg.TaskState.SUSPENDED and origin.log == []  # a new task starts suspended
    assert task.resume().wait(30) == dest
    assert sha256_of(dest) == origin.sha256("a", 3 * MB) == task.sha256
    assert task.state is bg.TaskState.COMPLETED and task.error is None and task.response.status == 200
    assert task.count_of_bytes_received == task.count_of_bytes_expected_to_receive == 3 * MB
    assert origin.log[0].headers["Accept-Encoding"] == "identity"
    assert not list(dest.parent.glob(".*bgdl-part"))  # no partial file left behind
    wait_until(lambda: "complete" in delegate.names())
    assert delegate.names()[-2:] == ["finish", "complete"]
    assert delegate.calls[-2] == ("finish", task.task_identifier, dest, True)


def test_callbacks_are_serial_ordered_and_off_the_engine_thread(session, delegate, origin, tmp_path):
    tasks = [session.download_task(origin.url(f"f{i}", MB, rate=4 * MB), tmp_path / f"f{i}").resume()
             for i in range(4)]
    session.wait(tasks, timeout=30)
    wait_until(lambda: delegate.names().count("complete") == 4)
    assert not delegate.overlapped
    assert delegate.threads == {"bgdl-delegate"}
    for t in tasks:
        names = delegate.names(t.task_identifier)
        assert names[-2:] == ["finish", "complete"] and set(names[:-2]) == {"write"}
        totals = [c[3] for c in delegate.calls if c[0] == "write" and c[1] == t.task_identifier]
        assert totals == sorted(totals) and totals[-1] == MB
    seqs = [e.seq for e in delegate.events]
    assert seqs == sorted(seqs)


def test_progress_is_periodic_not_per_chunk(session, delegate, origin, tmp_path):
    task = session.download_task(origin.url("p", 2 * MB, rate=4 * MB), tmp_path / "p").resume()
    task.wait(30)
    wait_until(lambda: "complete" in delegate.names())
    writes = [c for c in delegate.calls if c[0] == "write"]
    chunks = 2 * MB // (4 * MB // 20)  # the origin sends rate/20-byte pieces
    assert 1 <= len(writes) < chunks / 2
    assert sum(c[2] for c in writes) == 2 * MB and writes[-1][3:] == (2 * MB, 2 * MB)


def test_async_delegate_methods_are_awaited(origin, tmp_path):
    seen = []

    class AsyncDelegate(bg.SessionDelegate):
        async def did_complete_with_error(self, session, task, error):
            await asyncio.sleep(0)
            seen.append((task.task_identifier, error))

    s = bg.Session(delegate=AsyncDelegate())
    t = s.download_task(origin.url("x", 1000), tmp_path / "x").resume()
    t.wait(30)
    wait_until(lambda: seen == [(t.task_identifier, None)])
    s.close()


def test_temporary_location_lives_until_the_callback_returns(origin):
    copies = {}

    class Mover(bg.SessionDelegate):
        def did_finish_downloading_to(self, session, task, location):
            copies[task.task_identifier] = (location, location.read_bytes())

    s = bg.Session(delegate=Mover())
    t = s.download_task(origin.url("tmp", 200_000)).resume()
    location = t.wait(30)
    wait_until(lambda: t.task_identifier in copies and not location.exists(), what="inbox file removal")
    assert copies[t.task_identifier][0] == location
    assert copies[t.task_identifier][1] == b"".join(content("tmp", 200_000))
    s.close()


def test_slow_delegate_never_stalls_a_transfer(origin, tmp_path):
    release = threading.Event()

    class Slow(bg.SessionDelegate):
        def did_write_data(self, *args):
            release.wait(30)  # blocks the delegate thread until the transfer is over

    s = bg.Session(bg.Configuration.default(progress_interval=0.05), delegate=Slow())
    t = s.download_task(origin.url("slow", 2 * MB, rate=8 * MB), tmp_path / "slow").resume()
    assert t.wait(30) == tmp_path / "slow"  # completes while the first callback is still blocked
    release.set()
    s.close()


def test_suspend_then_resume_continues_with_a_range_request(delegate, origin, tmp_path):
    # one connection per file: this is the single-stream resume (test_segments.py covers split files)
    session = bg.Session(bg.Configuration.default(progress_interval=0.1, connections_per_file=1), delegate=delegate)
    url = origin.url("s", 4 * MB, rate=8 * MB)
    task = session.download_task(url, tmp_path / "s").resume()
    wait_for_bytes(task, MB)
    task.suspend()
    assert task.state is bg.TaskState.SUSPENDED
    kept = task.count_of_bytes_received
    assert 0 < kept < 4 * MB
    task.resume()
    task.wait(30)
    assert sha256_of(tmp_path / "s") == origin.sha256("s", 4 * MB)
    first, second = origin.requests_for("s")
    assert second.headers["Range"] == f"bytes={kept}-" and second.status == 206
    assert second.headers["If-Range"] == task.response.headers["ETag"]  # the strong ETag of the first response
    assert first.bytes_sent + second.bytes_sent <= 4 * MB + 512 * 1024  # in flight at suspend
    wait_until(lambda: "complete" in delegate.names())
    assert ("resume", task.task_identifier, kept, 4 * MB) in delegate.calls


def test_cancel_deletes_the_partial_file(session, origin, tmp_path):
    task = session.download_task(origin.url("c", 4 * MB, rate=4 * MB), tmp_path / "c").resume()
    wait_for_bytes(task, 256 * 1024)
    task.cancel()
    with pytest.raises(bg.Cancelled):
        task.wait(30)
    assert task.state is bg.TaskState.COMPLETED and task.error.resume_data is None
    assert list(tmp_path.iterdir()) == []


def test_resume_data_continues_in_a_new_task(session, origin, tmp_path):
    url = origin.url("r", 4 * MB, rate=8 * MB)
    task = session.download_task(url, tmp_path / "r").resume()
    wait_for_bytes(task, MB)
    data = task.cancel_by_producing_resume_data().result(30)
    assert isinstance(data, bytes) and task.state is bg.TaskState.COMPLETED
    assert isinstance(task.error, bg.Cancelled)
    kept = task.count_of_bytes_received
    again = session.download_task_with_resume_data(data).resume()
    assert again.wait(30) == tmp_path / "r"
    assert sha256_of(tmp_path / "r") == origin.sha256("r", 4 * MB)
    assert origin.requests_for("r")[-1].headers["Range"] == f"bytes={kept}-"


@pytest.mark.parametrize("switches", [{"validators": "none"}, {"validators": "weak"}, {"ranges": 0}])
def test_no_resume_data_without_validator_or_ranges(session, origin, tmp_path, switches):
    task = session.download_task(origin.url("n", 4 * MB, rate=4 * MB, **switches), tmp_path / "n").resume()
    wait_for_bytes(task, 256 * 1024)
    assert task.cancel_by_producing_resume_data().result(30) is None
    assert not (tmp_path / "n").exists() and list(tmp_path.iterdir()) == []


def test_changed_resource_restarts_and_ends_as_the_new_version_whole(session, origin, tmp_path):
    url = origin.url("chg", 4 * MB, rate=8 * MB)
    task = session.download_task(url, tmp_path / "chg").resume()
    wait_for_bytes(task, MB)
    task.suspend()
    origin.bump("chg")  # same size, new ETag and Last-Modified
    task.resume().wait(30)
    assert sha256_of(tmp_path / "chg") == origin.sha256("chg", 4 * MB, version=1)
    assert sha256_of(tmp_path / "chg") != origin.sha256("chg", 4 * MB, version=0)
    second = origin.requests_for("chg")[1]
    assert "Range" in second.headers and second.status == 200  # If-Range failed: the whole new version
    restarts = [e for e in session.event_log() if e.event == "restarted"]
    assert len(restarts) == 1 and "changed" in restarts[0].detail


def test_resource_changing_on_every_request_never_mixes(session, origin, tmp_path):
    url = origin.url("flux", 2 * MB, changing=1, reset_after=700_000, faults=1)
    task = session.download_task(url, tmp_path / "flux").resume()
    task.wait(30)
    version = origin.version("flux")
    assert sha256_of(tmp_path / "flux") == origin.sha256("flux", 2 * MB, version=version)


def test_416_on_a_complete_partial_file_finishes_it(session, origin, tmp_path, state_dir):
    size = 300_000
    url = origin.url("done", size)
    partial = tmp_path / "done.partial"
    partial.write_bytes(b"".join(content("done", size)))
    etag = origin.app  # the validator comes from a HEAD request below
    import urllib.request
    with urllib.request.urlopen(urllib.request.Request(url, method="HEAD")) as r:
        etag = r.headers["ETag"]
    data = encode_resume_data(ResumeState(url, {}, str(partial), size, size, Validator("etag", etag)),
                              load_key(state_dir))
    task = session.download_task_with_resume_data(data, tmp_path / "done").resume()
    assert task.wait(30) == tmp_path / "done"
    assert sha256_of(tmp_path / "done") == origin.sha256("done", size)
    last = origin.requests_for("done")[-1]
    assert last.status == 416 and last.bytes_sent == 0


def test_connection_resets_are_retried_from_the_durable_offset(origin, tmp_path):
    s = bg.Session(bg.Configuration.default(retry_backoff=0.01))
    url = origin.url("reset", 2 * MB, reset_after=600_000, faults=2)
    task = s.download_task(url, tmp_path / "reset").resume()
    task.wait(30)
    assert sha256_of(tmp_path / "reset") == origin.sha256("reset", 2 * MB)
    retries = [e for e in s.event_log() if e.event == "retry"]
    assert len(retries) == 2 and "NetworkError" in retries[0].error
    assert origin.bytes_sent("reset") == 2 * MB  # nothing fetched twice
    s.close()


def test_503_with_retry_after_is_honoured(origin, tmp_path):
    s = bg.Session(bg.Configuration.default(retry_backoff=0.01))
    task = s.download_task(origin.url("busy", 100_000, fail503=1, retry_after=1), tmp_path / "busy").resume()
    task.wait(30)
    [retry] = [e for e in s.event_log() if e.event == "retry"]
    assert retry.detail.endswith("in 1.00 s")
    assert [r.status for r in origin.requests_for("busy")] == [503, 200]
    s.close()


def test_a_stall_is_caught_by_the_idle_timeout(origin, tmp_path):
    s = bg.Session(bg.Configuration.default(timeout_interval_for_request=0.5, retry_backoff=0.01))
    url = origin.url("stall", MB, stall_after=300_000, faults=1, stall_seconds=20)
    task = s.download_task(url, tmp_path / "stall").resume()
    task.wait(30)
    assert sha256_of(tmp_path / "stall") == origin.sha256("stall", MB)
    [retry] = [e for e in s.event_log() if e.event == "retry"]
    assert "TransferTimeout" in retry.error
    assert origin.requests_for("stall")[1].headers["Range"] == "bytes=300000-"
    s.close()


def test_a_task_that_moves_no_byte_and_gives_no_reason_is_ended_saying_what_it_was_doing(origin, tmp_path,
                                                                                        monkeypatch):
    """The liveness check: a hang no timeout covers (here a bug at our own seam, an attempt
    that never reads the response it has) ends the task with an error naming what it was
    doing, instead of leaving it RUNNING at 0 bytes for ever; the engine goes on."""
    import asyncio
    import time

    from bgdl_nb._attempt import Attempt

    real = Attempt._receive
    hung = []

    async def never(self, *args, **kwargs):
        if not hung:
            hung.append(self.run.task_identifier)
            await asyncio.Event().wait()  # stuck, holding the response and moving nothing
        return await real(self, *args, **kwargs)

    monkeypatch.setattr(Attempt, "_receive", never)
    with bg.Session(bg.Configuration.default(timeout_interval_for_request=1, connections_per_file=1)) as s:
        started = time.monotonic()
        task = s.download_task(origin.url("stuck.bin", 100_000), tmp_path / "stuck.bin").resume()
        with pytest.raises(bg.TransferTimeout, match=r"made no progress for \d+ s while waiting for the first "
                           r"byte of the response, and had no reason to wait: it was stopped instead of hanging"):
            task.wait(60)
        assert 10 <= time.monotonic() - started < 30
        assert task.state is bg.TaskState.COMPLETED and hung == [task.task_identifier]
        after = s.download_task(origin.url("after.bin", 100_000), tmp_path / "after.bin").resume().wait(30)
    assert sha256_of(after) == origin.sha256("after.bin", 100_000)


def test_checksum_mismatch_keeps_nothing(session, origin, tmp_path):
    task = session.download_task(origin.url("sum", 100_000), tmp_path / "sum", sha256="0" * 64).resume()
    with pytest.raises(bg.ChecksumMismatch) as info:
        task.wait(30)
    assert info.value.actual == origin.sha256("sum", 100_000)
    assert list(tmp_path.iterdir()) == []


def test_http_errors_are_read_from_the_response(session, delegate, origin, tmp_path):
    task = session.download_task(f"{origin.base_url}/missing", tmp_path / "m").resume()
    with pytest.raises(bg.HTTPStatusError) as info:
        task.wait(30)
    assert info.value.status == 404 and task.response.status == 404 and task.error is None
    wait_until(lambda: "complete" in delegate.names())
    assert delegate.calls[-1] == ("complete", task.task_identifier, None)  # no client-side error
    assert not (tmp_path / "m").exists()


def test_redirects_are_followed_and_logged(session, origin, tmp_path):
    target = origin.url("moved", 50_000)
    task = session.download_task(origin.redirect_url(target, 301), tmp_path / "moved").resume()
    task.wait(30)
    assert task.current_request.url == target and task.original_request.url != target
    [hop] = [e for e in session.event_log() if e.event == "redirect"]
    assert hop.status == 301 and hop.detail == target


def test_a_redirect_to_another_scheme_is_refused(session, origin, tmp_path):
    task = session.download_task(origin.redirect_url("ftp://127.0.0.1/x"), tmp_path / "x").resume()
    with pytest.raises(bg.UnsupportedURL, match="only http:// and https://"):
        task.wait(30)


def test_credentials_never_cross_to_another_origin(session, origin, second_origin, tmp_path):
    target = second_origin.url("cred", 1000)
    request = bg.Request(origin.redirect_url(target), headers={"Authorization": "Bearer secret", "X-Keep": "1"})
    session.download_task(request, tmp_path / "cred").resume().wait(30)
    assert origin.log[0].headers["Authorization"] == "Bearer secret"
    [there] = second_origin.log
    assert "Authorization" not in there.headers and there.headers["X-Keep"] == "1"


def test_await_from_async_code(origin, tmp_path):
    async def main() -> tuple[Path, bytes | None]:
        s = bg.Session()
        t = s.download_task(origin.url("aw", 200_000), tmp_path / "aw").resume()
        path = await t
        t2 = s.download_task(origin.url("aw2", 4 * MB, rate=4 * MB), tmp_path / "aw2").resume()
        while t2.count_of_bytes_received == 0:
            await asyncio.sleep(0.01)
        data = await t2.cancel_by_producing_resume_data()
        s.close()
        return path, data

    path, data = asyncio.run(main())
    assert path == tmp_path / "aw" and isinstance(data, bytes)


def test_a_wait_that_times_out_is_our_error_and_says_the_task_goes_on(origin, tmp_path):
    with bg.Session() as s:
        task = s.download_task(origin.url("slowly", 2 * MB, rate=1 * MB), tmp_path / "slowly").resume()
        with pytest.raises(bg.WaitTimedOut, match=r"task \d+ still running after waiting 0.05 s \(.* bytes so far\); "
                                                  r"it goes on: wait again for the rest") as raised:
            task.wait(0.05)
        assert isinstance(raised.value, TimeoutError) and raised.value.task_identifier == task.task_identifier
        assert task.wait(30) == tmp_path / "slowly"


def test_max_concurrent_tasks_and_waiting_reason(origin, tmp_path):
    s = bg.Session(bg.Configuration.default(max_concurrent_tasks=1))
    first = s.download_task(origin.url("q1", 2 * MB, rate=8 * MB), tmp_path / "q1").resume()
    second = s.download_task(origin.url("q2", 1000), tmp_path / "q2").resume()
    assert second.waiting_reason is not None and "free slot" in second.waiting_reason
    s.wait([first, second], timeout=30)
    log = s.event_log()
    start_second = next(e.seq for e in log if e.event == "started" and e.task_identifier == second.task_identifier)
    last_byte = max(e.seq for e in log if e.event == "progress" and e.task_identifier == first.task_identifier)
    assert last_byte < start_second  # the slot frees with the last byte; the rename needs no connection
    s.close()


@pytest.mark.parametrize("where", ["another folder", "no destination, outside the state directory"])
def test_signed_resume_data_cannot_name_a_partial_file_elsewhere(session, origin, tmp_path, state_dir, where):
    victim = tmp_path / "elsewhere" / "victim.txt"
    victim.parent.mkdir()
    victim.write_bytes(b"a file that is not ours")
    url = origin.url("v", 1000)
    forged = encode_resume_data(ResumeState(url, {}, str(victim), 5, 1000, Validator("etag", '"x"')),
                                load_key(state_dir))  # signed with the user's own key
    destination = tmp_path / "out" / "v" if where == "another folder" else None
    with pytest.raises(bg.InvalidResumeData, match="partial file"):
        session.download_task_with_resume_data(forged, destination)
    assert victim.read_bytes() == b"a file that is not ours" and origin.log == []
    assert session.all_tasks() == []
