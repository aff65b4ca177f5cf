"""Real transfers against the demo origin honour the scheduler's limits."""

from __future__ import annotations

import time

import pytest

import bgdl_nb as bg

from helpers import wait_for_bytes, wait_until

MB = 1024 * 1024


def _max_overlap(records) -> int:
    wait_until(lambda: all(r.end is not None for r in records), what="the origin to close its responses")
    edges = sorted([(r.time, 1) for r in records] + [(r.end, -1) for r in records], key=lambda e: (e[0], e[1]))
    level = peak = 0
    for _, step in edges:
        level += step
        peak = max(peak, level)
    return peak


def test_max_concurrent_tasks_holds_on_the_wire(origin, tmp_path):
    s = bg.Session(bg.Configuration.default(max_concurrent_tasks=2))
    tasks = [s.download_task(origin.url(f"c{i}", MB, rate=8 * MB), tmp_path / f"c{i}").resume() for i in range(5)]
    s.wait(tasks, timeout=60)
    assert _max_overlap(origin.log) == 2
    rows = s.event_log()
    # the three that found no slot say so in their resumed row, with no waiting row besides
    waits = [e for e in rows if e.reason is not None]
    assert [e.event for e in waits] == ["resumed"] * 3 and all("free slot" in e.detail for e in waits)
    assert {e.task_identifier for e in waits} == {t.task_identifier for t in tasks[2:]}
    assert not [e for e in rows if e.event == "waiting"]
    s.close()


def test_connections_per_host_hold_on_the_wire(origin, second_origin, tmp_path):
    s = bg.Session(bg.Configuration.default(max_concurrent_tasks=4, http_maximum_connections_per_host=1))
    tasks = [s.download_task(o.url(f"h{i}", MB, rate=8 * MB), tmp_path / f"h{n}{i}").resume()
             for n, o in enumerate((origin, second_origin)) for i in range(3)]
    s.wait(tasks, timeout=60)
    assert _max_overlap(origin.log) == 1 and _max_overlap(second_origin.log) == 1
    assert any("host connection limit" in (e.detail or "") for e in s.event_log())
    s.close()


def test_earliest_begin_date_is_honoured(origin, tmp_path):
    s = bg.Session()
    begin = time.time() + 1.0
    task = s.download_task(origin.url("late", 1000), tmp_path / "late", earliest_begin_date=begin).resume()
    assert task.waiting_reason == "earliest begin date"
    task.wait(30)
    assert origin.log[0].time >= begin
    s.close()


def test_discretionary_task_waits_for_other_work(origin, tmp_path):
    s = bg.Session(bg.Configuration.default(max_concurrent_tasks=4))
    busy = s.download_task(origin.url("busy", 2 * MB, rate=8 * MB), tmp_path / "busy").resume()
    idle = s.download_task(origin.url("idle", 1000), tmp_path / "idle", is_discretionary=True).resume()
    assert idle.waiting_reason == "discretionary" and idle.is_discretionary
    s.wait([busy, idle], timeout=60)
    log = s.event_log()  # it starts once the busy task's last byte is in (not its rename: no bandwidth there)
    last_byte = max(e.seq for e in log if e.event == "progress" and e.task_identifier == busy.task_identifier)
    began = next(e.seq for e in log if e.event == "started" and e.task_identifier == idle.task_identifier)
    assert began > last_byte
    s.close()


def test_bandwidth_limit_holds_and_can_change_while_running(origin, tmp_path):
    s = bg.Session(bg.Configuration.default(bandwidth_limit=2 * MB))
    task = s.download_task(origin.url("bw", 3 * MB), tmp_path / "bw").resume()
    task.wait(60)
    started = next(e.time for e in s.event_log() if e.event == "response")
    finished = next(e.time for e in s.event_log() if e.event == "finished")
    burst = s.bandwidth_limit / 4
    assert (3 * MB - burst) / (finished - started) <= 2 * MB * 1.05  # never faster than the limit allows
    s.bandwidth_limit = 256 * 1024
    slow = s.download_task(origin.url("bw2", 8 * MB), tmp_path / "bw2").resume()
    wait_for_bytes(slow, 256 * 1024)
    s.bandwidth_limit = None  # lifted while it runs: it finishes quickly
    slow.wait(60)
    s.close()


def test_resource_timeout_fails_a_task_that_waits_too_long(origin, tmp_path):
    s = bg.Session(bg.Configuration.default(timeout_interval_for_resource=0.5))
    task = s.download_task(origin.url("never", 1000), tmp_path / "never", earliest_begin_date=time.time() + 60)
    task.resume()
    with pytest.raises(bg.TransferTimeout, match=r"timeout_interval_for_resource .* while waiting: earliest begin"):
        task.wait(30)
    assert origin.log == []
    s.close()


def test_insufficient_disk_is_a_visible_wait(origin, tmp_path):
    """More than is free now, but not more than the disk holds: space may be freed, so the
    task waits, saying why (a file larger than the whole disk fails at once instead)."""
    import shutil
    usage = shutil.disk_usage(tmp_path)
    s = bg.Session()
    task = s.download_task(origin.url("huge", 1000), tmp_path / "huge",
                           count_of_bytes_client_expects_to_receive=usage.free + (usage.total - usage.free) // 2).resume()
    assert task.waiting_reason.startswith("insufficient disk")
    task.cancel()
    assert origin.log == []
    s.close()


def test_pause_and_resume_the_whole_session(origin, tmp_path):
    s = bg.Session()
    task = s.download_task(origin.url("pz", 4 * MB, rate=4 * MB), tmp_path / "pz").resume()
    wait_for_bytes(task, 512 * 1024)
    s.pause()
    assert task.state is bg.TaskState.RUNNING and task.waiting_reason == "session paused"
    late = s.download_task(origin.url("pz2", 1000), tmp_path / "pz2").resume()
    assert late.waiting_reason == "session paused"
    s.resume()
    s.wait([task, late], timeout=60)
    assert origin.requests_for("pz")[-1].headers["Range"].startswith("bytes=")  # continued, not restarted
    s.close()


def test_priority_can_change_while_waiting(origin, tmp_path):
    s = bg.Session(bg.Configuration.default(max_concurrent_tasks=1))
    first = s.download_task(origin.url("p0", 2 * MB, rate=8 * MB), tmp_path / "p0").resume()
    low = s.download_task(origin.url("p1", 1000), tmp_path / "p1", priority=0.2).resume()
    high = s.download_task(origin.url("p2", 1000), tmp_path / "p2", priority=0.5).resume()
    low.priority = 0.9
    s.wait([first, low, high], timeout=60)
    order = [r.path for r in origin.log]
    assert order == ["/files/p0", "/files/p1", "/files/p2"]
    with pytest.raises(bg.InvalidInput):
        low.priority = 3
    s.close()


def test_retry_backoff_gives_the_slot_to_another_task(origin, tmp_path):
    s = bg.Session(bg.Configuration.default(max_concurrent_tasks=1))
    flaky = s.download_task(origin.url("flaky", 1000, fail503=1, retry_after=1), tmp_path / "flaky").resume()
    other = s.download_task(origin.url("other", 1000), tmp_path / "other").resume()
    s.wait([flaky, other], timeout=60)
    paths = [(r.path, r.status) for r in origin.log]
    assert paths == [("/files/flaky", 503), ("/files/other", 200), ("/files/flaky", 200)]
    s.close()


@pytest.mark.parametrize("use_service", [False, True], ids=["in-process", "service"])
def test_a_task_whose_requests_wait_for_the_hosts_connections_says_so(origin, tmp_path, use_service):
    """Another file of the host holds all its connections for its pieces: the task in a
    slot moves no byte, and shows the reason (it used to read 0 B with no reason at all),
    and goes on once the connections are free."""
    config = bg.Configuration.background(f"host-taken-{use_service}", use_service=use_service,
                                         http_maximum_connections_per_host=2, connections_per_file=2)
    with bg.Session(config) as s:
        big = s.download_task(origin.url("hog.bin", 64 * MB, rate=2 * MB), tmp_path / "hog.bin").resume()
        wait_for_bytes(big, MB)
        small = s.download_task(origin.url("starved.bin", MB), tmp_path / "starved.bin").resume()
        wait_until(lambda: small.waiting_reason == "host connection limit: other files of this host hold its "
                   "connections", timeout=20, what="the reason to show")
        assert small.count_of_bytes_received == 0 and small.state is bg.TaskState.RUNNING
        big.cancel()
        assert small.wait(30).stat().st_size == MB
        assert small.waiting_reason is None
        waits = s.events.query("event == 'waiting' and task_identifier == @small.task_identifier")
    assert "host connection limit" in " ".join(waits.detail.astype(str))


@pytest.mark.parametrize("use_service", [False, True], ids=["in-process", "service"])
def test_a_file_beside_a_split_file_of_its_host_gets_its_share_of_the_connections(origin, tmp_path, use_service):
    """The host's connections are shared among the files transferring from it: a file
    resumed while another one's pieces hold them all gets one once a piece ends, and
    finishes while the split file goes on (it used to wait for the whole split file)."""
    config = bg.Configuration.background(f"fair-{use_service}", use_service=use_service,
                                         http_maximum_connections_per_host=2, connections_per_file=2)
    with bg.Session(config) as s:
        big = s.download_task(origin.url("wide.bin", 128 * MB, rate=2 * MB), tmp_path / "wide.bin").resume()
        wait_for_bytes(big, 2 * MB)
        small = s.download_task(origin.url("fair.bin", 4 * MB, rate=2 * MB), tmp_path / "fair.bin").resume()
        assert small.wait(30).stat().st_size == 4 * MB
        assert not big.done() and big.count_of_bytes_received < 128 * MB
        big.cancel()
