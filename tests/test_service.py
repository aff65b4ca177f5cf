"""The transfer service: downloads go on while kernels die, the service survives its own
SIGKILL, only its owner may talk to it, and it leaves when idle."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap

import filelock
import pytest
from conftest import run_cli

import bgdl_nb as bg
from bgdl_nb._engine import CHECKPOINT_BYTES
from bgdl_nb._hosts.service.client import service_status, start_service, stop_service
from bgdl_nb._hosts.service.protocol import PROTOCOL_VERSION, peer_allowed, read_frame, runtime_dir, write_frame
from bgdl_nb._journal import journaled_bytes, read_journal

from helpers import Recorder, run_in_kernel, sha256_of, wait_for_bytes, wait_until

MB = 1024 * 1024


def _alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}") and "zombie" not in open(f"/proc/{pid}/status").read().lower()


def test_kill_9_of_the_service_mid_download(origin, tmp_path, state_dir):
    size = 12 * MB
    session = bg.Session(bg.Configuration.background("survivor"))
    task = session.download_task(origin.url("s", size, rate=8 * MB), tmp_path / "s").resume()
    wait_for_bytes(task, 3 * MB)
    pid = service_status(state_dir)["pid"]
    os.kill(pid, signal.SIGKILL)
    # the client notices, starts a new service, which continues from the journal
    assert task.wait(60) == tmp_path / "s"
    assert sha256_of(tmp_path / "s") == origin.sha256("s", size)
    assert service_status(state_dir)["pid"] != pid
    assert origin.bytes_sent("s") <= size + CHECKPOINT_BYTES + 512 * 1024
    ranges = [r.headers.get("Range") for r in origin.requests_for("s")]
    assert ranges[0] is None and ranges[-1].startswith("bytes=")
    assert not list(tmp_path.glob(".s.*"))  # nothing left half-finalised
    session.close()


def test_a_download_goes_on_while_no_process_holds_the_session(origin, tmp_path, state_dir):
    size = 8 * MB
    first = bg.Session(bg.Configuration.background("alone"))
    task = first.download_task(origin.url("a", size, rate=8 * MB), tmp_path / "a").resume()
    wait_for_bytes(task, MB)
    first.close()
    journal = bg.Configuration.background("alone").journal_path()
    wait_until(lambda: read_journal(journal, "alone")[0][0].state == "completed", timeout=60,
               what="the service to finish the download with no client attached")
    assert sha256_of(tmp_path / "a") == origin.sha256("a", size)
    delegate = Recorder()
    second = bg.Session(bg.Configuration.background("alone"), delegate=delegate)
    assert delegate.finished_events.wait(30)
    assert delegate.names()[-3:] == ["finish", "complete", "finished_events"]
    assert delegate.names().count("finished_events") == 1
    second.close()


def test_two_kernels_one_identifier_one_transfer(origin, tmp_path, state_dir):
    """Two real Jupyter kernels attach to one identifier: both see progress and the
    outcome, and the file is transferred once."""
    from jupyter_client.manager import KernelManager

    url = origin.url("shared", 12 * MB, rate=6 * MB)
    kernels = []
    try:
        for _ in range(2):
            km = KernelManager(kernel_name="python3")
            km.start_kernel(env=os.environ.copy())
            kc = km.client()
            kc.start_channels()
            kc.wait_for_ready(timeout=60)
            kernels.append((km, kc))
        (_, first), (_, second) = kernels
        run_in_kernel(first, textwrap.dedent(f"""
            import bgdl_nb as bg
            session = bg.Session(bg.Configuration.background("two", connections_per_file=1))
            task = session.download_task({url!r}, {str(tmp_path / "shared")!r}).resume()
        """))
        watch = textwrap.dedent("""
            import bgdl_nb as bg
            session = bg.Session(bg.Configuration.background("two", connections_per_file=1))
            [task] = session.all_tasks()
            seen = []
            session.add_listener(lambda e: seen.append(e.event))
            path = task.wait(120)
            print(path, task.count_of_bytes_received, seen.count("progress") > 0)
        """)
        out_second = run_in_kernel(second, watch, timeout=150)
        out_first = run_in_kernel(first, "print(task.wait(120), task.count_of_bytes_received)", timeout=150)
    finally:
        for km, kc in kernels:
            kc.stop_channels()
            km.shutdown_kernel(now=True)
    assert out_second.split() == [str(tmp_path / "shared"), str(12 * MB), "True"]
    assert out_first.split() == [str(tmp_path / "shared"), str(12 * MB)]
    assert sha256_of(tmp_path / "shared") == origin.sha256("shared", 12 * MB)
    assert len(origin.requests_for("shared")) == 1  # transferred once


def test_a_second_start_finds_the_running_service(state_dir):
    first = start_service(state_dir)
    assert start_service(state_dir) == first
    status = run_cli("service", "status")
    assert f"pid {first}" in status.stdout and status.returncode == 0


def test_status_shows_sessions_tasks_and_throughput(origin, tmp_path, state_dir):
    session = bg.Session(bg.Configuration.background("stat"))
    task = session.download_task(origin.url("st", 16 * MB, rate=4 * MB), tmp_path / "st").resume()
    wait_for_bytes(task, MB)
    # throughput is measured over the service's last quarter second: wait for a window with bytes in it
    wait_until(lambda: service_status(state_dir)["sessions"]["stat"]["bytes_per_second"] > 0, timeout=10,
               what="a measured throughput")
    status = json.loads(run_cli("service", "status", "--json").stdout)
    assert status["sessions"]["stat"]["tasks"] == 1 and status["uptime"] >= 0
    text = run_cli("service", "status").stdout
    assert "stat: 1 tasks" in text and "MB/s" in text
    session.invalidate_and_cancel()


def test_idle_service_exits_and_leaves_no_process(origin, tmp_path, state_dir, monkeypatch):
    monkeypatch.setenv("BGDL_SERVICE_IDLE", "0.5")
    session = bg.Session(bg.Configuration.background("idle"))
    session.download_task(origin.url("i", 1000), tmp_path / "i").resume().wait(30)
    pid = service_status(state_dir)["pid"]
    session.close()
    with filelock.FileLock(str(runtime_dir(state_dir) / "service.lock"), timeout=60):
        pass  # free once the service exited on its own
    wait_until(lambda: not _alive(pid), what="the service process to be gone (and reaped)")
    assert service_status(state_dir) is None


def test_protocol_mismatch_names_both_versions(state_dir):
    start_service(state_dir)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(runtime_dir(state_dir) / "service.sock"))
        write_frame(sock, {"id": 1, "op": "hello", "protocol": 999})
        reply = read_frame(sock)
    assert not reply["ok"]
    assert "protocol 999" in reply["error"]["message"] and f"speaks {PROTOCOL_VERSION}" in reply["error"]["message"]


def test_runtime_directory_is_private(state_dir):
    start_service(state_dir)
    run = runtime_dir(state_dir)
    assert run.stat().st_mode & 0o777 == 0o700
    assert (run / "service.sock").stat().st_mode & 0o777 == 0o600


def test_peer_check():
    assert peer_allowed(os.getuid()) and not peer_allowed(os.getuid() + 1)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_another_user_is_refused(monkeypatch):
    import shutil
    import tempfile
    from pathlib import Path
    state_dir = Path(tempfile.mkdtemp(prefix="bgdl-uid-"))  # under /tmp, so nobody can walk the path
    monkeypatch.setenv("BGDL_STATE_DIR", str(state_dir))
    try:
        _refuse_nobody(state_dir)
    finally:
        stop_service(state_dir)
        shutil.rmtree(state_dir, ignore_errors=True)


def _refuse_nobody(state_dir):
    start_service(state_dir)
    run = runtime_dir(state_dir)
    # open the folders' doors once the service runs (a client checks them, and would refuse
    # them now), so that only the service's own uid check stands in the way
    os.chmod(state_dir, 0o711)
    os.chmod(run, 0o711)
    os.chmod(run / "service.sock", 0o666)
    path = str(run / "service.sock")
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child becomes nobody and tries to talk to the service
        try:
            os.close(read_fd)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(path)
            body = json.dumps({"id": 1, "op": "hello", "protocol": PROTOCOL_VERSION}).encode()
            try:
                sock.sendall(struct.pack(">I", len(body)) + body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the service refuses before reading anything, and may have closed already
            reply = read_frame(sock)  # its refusal waits in our socket either way
            os.write(write_fd, json.dumps(reply).encode())
        except BaseException as exc:  # said to the parent, so a failure names its cause
            os.write(write_fd, json.dumps({"child failed": repr(exc)}).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as f:
        reply = json.loads(f.read() or "null")
    os.waitpid(pid, 0)
    os.chmod(run, 0o700)
    os.chmod(state_dir, 0o700)
    assert reply is not None and reply["ok"] is False and "refused: uid 65534" in reply["error"]["message"]


def test_kernel_killed_mid_download_then_a_new_kernel_gets_the_missed_events(origin, tmp_path, state_dir):
    from jupyter_client.manager import KernelManager

    size = 12 * MB
    url = origin.url("k.bin", size, rate=6 * MB)
    dest = tmp_path / "k.bin"
    km = KernelManager(kernel_name="python3")
    km.start_kernel(env=os.environ.copy())
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        run_in_kernel(kc, textwrap.dedent(f"""
            import bgdl_nb as bg
            session = bg.Session(bg.Configuration.background("kdead", connections_per_file=1))
            task = session.download_task({url!r}, {str(dest)!r}).resume()
        """))
        journal = bg.Configuration.background("kdead").journal_path()
        wait_until(lambda: journaled_bytes(journal, "kdead") >= 2 * MB, timeout=60, what="2 MiB")
        os.kill(km.provisioner.pid, signal.SIGKILL)
        wait_until(lambda: not km.is_alive(), what="the kernel to die")
        at_death = journaled_bytes(journal, "kdead")
        wait_until(lambda: journaled_bytes(journal, "kdead") > at_death + MB, timeout=60,
                   what="the file to keep growing while the kernel is dead")
        km.restart_kernel(now=True)
        kc.wait_for_ready(timeout=60)
        out = run_in_kernel(kc, textwrap.dedent("""
            import threading, bgdl_nb as bg
            calls = []
            done = threading.Event()
            class D(bg.SessionDelegate):
                def did_finish_downloading_to(self, s, t, loc): calls.append("finish")
                def did_complete_with_error(self, s, t, e): calls.append("complete")
                def did_finish_events_for_background_session(self, s):
                    calls.append("finished_events")
                    done.set()
            session = bg.Session(bg.Configuration.background("kdead", connections_per_file=1), delegate=D())
            [task] = session.all_tasks()
            print(task.wait(120))
            done.wait(30)
            print(" ".join(calls))
        """), timeout=150)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    lines = out.split("\n")
    assert lines[0] == str(dest)
    assert lines[1].split().count("finished_events") == 1
    assert sha256_of(dest) == origin.sha256("k.bin", size)
    assert len(origin.requests_for("k.bin")) == 1  # never interrupted: the kernel was not the downloader


def test_stop_service_when_none_runs(state_dir):
    assert stop_service(state_dir) is False
    assert "no transfer service" in run_cli("service", "stop").stdout


def test_two_identifiers_share_one_transfer_of_the_same_file(origin, tmp_path, state_dir):
    url = origin.url("same.bin", 4 * MB, rate=8 * MB)
    a = bg.Session(bg.Configuration.background("team-a"))
    b = bg.Session(bg.Configuration.background("team-b"))
    first = a.download_task(url, tmp_path / "same.bin").resume()
    second = b.download_task(url, tmp_path / "same.bin").resume()
    assert "shares the transfer of session 'team-a'" in second.waiting_reason
    assert first.wait(60) == second.wait(60) == tmp_path / "same.bin"
    assert second.sha256 == first.sha256 == origin.sha256("same.bin", 4 * MB)
    assert len(origin.requests_for("same.bin")) == 1
    kinds = [e.event for e in b.event_log()]
    assert "progress" in kinds and kinds[-2:] == ["finished", "completed"]
    a.close()
    b.close()


def test_events_carry_only_the_fields_that_changed_since_the_task_was_last_sent():
    from bgdl_nb._hosts.service.hosted import changed_fields as _changed
    from bgdl_nb._snapshots import TaskSnapshot

    shown: dict = {}
    record = {"task_identifier": 3, "state": "running", "destination": "/d/x", "url": "http://h/x",
              "status": None, "response_headers": None}
    first = TaskSnapshot(dict(record), 0, 1)
    assert _changed(shown, first) == first.wire()  # a task's first event carries the whole record
    assert TaskSnapshot.from_wire(first.wire()) == first
    second = TaskSnapshot({**record, "status": 200, "response_headers": {"ETag": '"e"'}}, 5, 2)
    sent = _changed(shown, second)
    assert sent["record"] == {"task_identifier": 3, "state": "running", "destination": "/d/x", "status": 200,
                              "response_headers": {"ETag": '"e"'}}
    assert (sent["received"], sent["version"]) == (5, 2)
    done = TaskSnapshot({**second.fields, "state": "completed"}, 5, 3)
    assert _changed(shown, done)["record"] == {"task_identifier": 3, "state": "completed", "destination": "/d/x"}
    assert shown == {}  # nothing is kept of a finished task


def test_a_session_opened_again_with_other_settings_runs_with_them_and_a_busy_one_says_it_keeps_its_own(
        origin, tmp_path, state_dir):
    first = bg.Session(bg.Configuration.background("resettle"))  # connections: automatic
    first.download_task(origin.url("one", 1000), tmp_path / "one").resume().wait(30)
    first.close()  # the service keeps the session loaded, idle, with nobody attached
    second = bg.Session(bg.Configuration.background("resettle", connections_per_file=1))
    task = second.download_task(origin.url("slow", 12 * MB, rate=6 * MB), tmp_path / "slow").resume()
    wait_for_bytes(task, 4 * MB)  # automatic connections would have split this slow file by now
    # another process asks for other settings while the file downloads: it is told they wait
    busy = run_cli("fetch", origin.url("two", 1000), "-o", str(tmp_path / "cli"), "--id", "resettle",
                   "--connections", "3", "-q", env={"BGDL_IN_PROCESS": "0"})
    assert busy.returncode == 0, busy.stderr
    [warning] = busy.stderr.splitlines()
    assert warning.startswith("bgdl: warning: the transfer service is running session 'resettle' with other "
                              "settings (connections_per_file) for downloads under way")
    assert warning.endswith("Give another --id to download with these settings now")
    assert task.wait(60) == tmp_path / "slow"
    events = second.events
    second.close()
    assert "segmented" not in set(events[events["task_identifier"] == task.task_identifier]["event"])
    assert len(origin.requests_for("slow")) == 1  # one connection, as this session asked


REATTACH = """
import sys, bgdl_nb as bg
session = bg.Session(bg.Configuration.background("many"))
print(len(session.all_tasks()), len(session.event_log()))
session.close()
"""


def test_reattaching_to_many_tasks_after_a_sigkill_sees_every_later_event(origin, tmp_path, state_dir):
    """After a SIGKILL of the service, a new client attaches while the restarted service
    continues 2,000 tasks: the updates that follow the attach reply (which carry only what
    changed) must find their tasks in the views. They were once handled before the reply's
    tasks were, which killed the client's reader thread and left every later call to time out."""
    listing = tmp_path / "urls.txt"
    listing.write_text("".join(origin.url(f"m{i}", 1024) + "\n" for i in range(2000)))
    assert run_cli("fetch", "-i", str(listing), "-o", str(tmp_path / "out"), "--id", "many", "--detach",
                   "-q").returncode == 0
    os.kill(bg.service_status(state_dir)["pid"], signal.SIGKILL)
    done = subprocess.run([sys.executable, "-c", REATTACH], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    tasks, events = map(int, done.stdout.split())
    assert tasks == 2000 and events >= 2000
    assert "Exception in thread" not in done.stderr and "could not be handled" not in done.stderr, done.stderr[-2000:]


def test_a_service_that_does_not_answer_is_named_not_a_bare_timeout(state_dir, monkeypatch):
    """A transfer service stopped with SIGSTOP: a call through it ends with a
    ServiceUnavailable that names the service and says what to do, not a TimeoutError
    without a message."""
    from bgdl_nb._hosts.service import client
    session = bg.Session(bg.Configuration.background("frozen"))
    pid = bg.service_status(state_dir)["pid"]
    monkeypatch.setattr(client, "_REQUEST_TIMEOUT", 1.0)  # the real one is a minute
    os.kill(pid, signal.SIGSTOP)
    try:
        with pytest.raises(bg.SessionError, match=rf"transfer service \(pid {pid}\) did not answer") as stuck:
            session.event_log()
        assert "bgdl service status" in str(stuck.value)
    finally:
        os.kill(pid, signal.SIGCONT)
    session.close()
