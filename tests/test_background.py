"""Background sessions run in this process (use_service=False): the journal outlives the
process, and a new session reattaches and continues. The transfer service's side of the
same story is in test_service.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

import bgdl_nb as bg
from bgdl_nb._engine import CHECKPOINT_BYTES
from bgdl_nb._journal import journaled_bytes

from helpers import Recorder, sha256_of, wait_for_bytes, wait_until

MB = 1024 * 1024


def test_reattach_in_a_new_session_continues_from_the_partial_file(origin, tmp_path):
    url = origin.url("big", 6 * MB, rate=8 * MB)
    first = bg.Session(bg.Configuration.background("ds", use_service=False))
    task = first.download_task(url, tmp_path / "big").resume()
    wait_for_bytes(task, 2 * MB)
    first.close()  # the process stops holding the session: transfers pause
    tid = task.task_identifier

    delegate = Recorder()
    second = bg.Session(bg.Configuration.background("ds", use_service=False), delegate=delegate)
    [again] = second.all_tasks()
    assert again.task_identifier == tid and again.state is bg.TaskState.RUNNING
    assert again.count_of_bytes_received >= 2 * MB  # the true byte count, at once
    assert again.wait(30) == tmp_path / "big"
    assert sha256_of(tmp_path / "big") == origin.sha256("big", 6 * MB)
    resumed = origin.requests_for("big")[-1]
    assert resumed.status == 206 and resumed.headers["Range"].startswith("bytes=")
    assert origin.bytes_sent("big") <= 6 * MB + CHECKPOINT_BYTES + 512 * 1024
    wait_until(lambda: "complete" in delegate.names())
    assert delegate.names().count("finished_events") == 1
    assert delegate.names().index("finished_events") < delegate.names().index("resume")
    kinds = [e.event for e in second.event_log()]
    assert kinds.count("reattached") == 1 and "resumed_at_offset" in kinds
    second.close()


def test_same_identifier_in_one_process_shares_the_engine(origin, tmp_path):
    a = bg.Session(bg.Configuration.background("shared", use_service=False))
    t = a.download_task(origin.url("s", 1000), tmp_path / "s")
    recorder = Recorder()
    b = bg.Session(bg.Configuration.background("shared", use_service=False), delegate=recorder)  # re-running a cell
    assert [x.task_identifier for x in b.all_tasks()] == [t.task_identifier]
    t.resume().wait(30)
    wait_until(lambda: "complete" in recorder.names())  # the newest delegate gets the callbacks
    b.close()


HOLDER = textwrap.dedent("""
    import sys, bgdl_nb as bg
    s = bg.Session(bg.Configuration.background("busy", use_service=False))
    print("ready", flush=True)
    sys.stdin.readline()
""")


def test_another_process_holding_the_identifier_is_reported():
    child = subprocess.Popen([sys.executable, "-c", HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, env=os.environ.copy())
    try:
        assert child.stdout.readline().strip() == "ready"
        with pytest.raises(bg.SessionBusy, match=f"pid {child.pid}"):
            bg.Session(bg.Configuration.background("busy", use_service=False))
    finally:
        child.kill()
        child.wait()
    bg.Session(bg.Configuration.background("busy", use_service=False)).close()  # a killed holder releases the lock


STUCK_IN_CALLBACK = textwrap.dedent("""
    import sys, threading, bgdl_nb as bg
    class Stuck(bg.SessionDelegate):
        def did_finish_downloading_to(self, session, task, location):
            print("in-callback", location, flush=True)
            threading.Event().wait()
    s = bg.Session(bg.Configuration.background("inbox"), delegate=Stuck())
    s.download_task(sys.argv[1]).resume()
    threading.Event().wait()
""")


@pytest.mark.parametrize("in_process", ["1", "0"], ids=["in-process", "service"])
def test_undelivered_events_reach_the_next_session_in_order(origin, monkeypatch, in_process):
    monkeypatch.setenv("BGDL_IN_PROCESS", in_process)
    url = origin.url("ev", 300_000)
    child = subprocess.Popen([sys.executable, "-c", STUCK_IN_CALLBACK, url], stdout=subprocess.PIPE, text=True,
                             env=os.environ.copy())
    try:
        line = child.stdout.readline().split()
        assert line[0] == "in-callback"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    location = line[1]
    assert os.path.exists(location)  # the file waits in the inbox until a callback returns

    digests = []

    class Reader(Recorder):
        def did_finish_downloading_to(self, session, task, location):
            digests.append(sha256_of(location))
            super().did_finish_downloading_to(session, task, location)

    delegate = Reader()
    session = bg.Session(bg.Configuration.background("inbox"), delegate=delegate)
    delegate.finished_events.wait(30)
    names = delegate.names()
    assert names[-3:] == ["finish", "complete", "finished_events"]
    finish = next(c for c in delegate.calls if c[0] == "finish")
    assert str(finish[2]) == location and finish[3] is True
    assert digests == [origin.sha256("ev", 300_000)]
    wait_until(lambda: not os.path.exists(location), what="inbox file removal after the callback")
    session.close()
    assert len(origin.requests_for("ev")) == 1  # delivered again, not downloaded again


KILLED_MID_DOWNLOAD = textwrap.dedent("""
    import sys, threading, bgdl_nb as bg
    s = bg.Session(bg.Configuration.background("killme", use_service=False))
    s.download_task(sys.argv[1], sys.argv[2]).resume()
    threading.Event().wait()
""")


def test_kill_minus_9_mid_download_loses_at_most_one_checkpoint(origin, tmp_path, state_dir):
    size = 8 * MB
    url = origin.url("k", size, rate=8 * MB)
    dest = tmp_path / "k"
    child = subprocess.Popen([sys.executable, "-c", KILLED_MID_DOWNLOAD, url, str(dest)], env=os.environ.copy())
    journal = bg.Configuration.background("killme").journal_path()

    try:
        wait_until(lambda: journaled_bytes(journal, "killme") >= 3 * MB, what="3 MiB journaled")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    session = bg.Session(bg.Configuration.background("killme", use_service=False))
    [task] = session.all_tasks()
    assert task.wait(30) == dest
    assert sha256_of(dest) == origin.sha256("k", size)
    assert origin.bytes_sent("k") <= size + CHECKPOINT_BYTES + 512 * 1024
    session.close()
