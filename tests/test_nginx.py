"""The key resume cases against nginx, so the client is never tested only against itself."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import run_cli

import bgdl_nb as bg
from bgdl_nb._resume import ResumeState, Validator, encode_resume_data, load_key

from helpers import sha256_of, wait_for_bytes, wait_until

MB = 1024 * 1024
pytestmark = pytest.mark.nginx


def _data(seed: str, size: int) -> bytes:
    return hashlib.shake_256(seed.encode()).digest(size)


@pytest.fixture
def session():
    # one connection per file: nginx's limit_rate then holds for the whole file, so a
    # suspend after the first MiB always lands mid-download (split files: test_segments)
    s = bg.Session(bg.Configuration.default(connections_per_file=1))
    yield s
    s.invalidate_and_cancel()


def _access_log(nginx) -> list[str]:
    return (nginx.prefix / "logs" / "access.log").read_text().splitlines()


def test_suspend_and_resume_use_a_range_request(nginx, session, tmp_path):
    body = _data("a", 8 * MB)
    nginx.publish("a.bin", body)
    task = session.download_task(f"{nginx.base_url}/limited/a.bin", tmp_path / "a").resume()
    wait_for_bytes(task, MB)
    task.suspend()
    task.resume().wait(60)
    assert (tmp_path / "a").read_bytes() == body
    kinds = [e.event for e in session.event_log()]
    assert "resumed_at_offset" in kinds and "restarted" not in kinds
    assert ' 206 ' in _access_log(nginx)[-1]


def test_resume_data_continues_against_nginx(nginx, session, tmp_path):
    body = _data("b", 8 * MB)
    nginx.publish("b.bin", body)
    task = session.download_task(f"{nginx.base_url}/limited/b.bin", tmp_path / "b").resume()
    wait_for_bytes(task, MB)
    data = task.cancel_by_producing_resume_data().result(30)
    assert data is not None
    session.download_task_with_resume_data(data).resume().wait(60)
    assert (tmp_path / "b").read_bytes() == body


def test_a_changed_file_restarts_and_is_the_new_version_whole(nginx, session, tmp_path):
    old, new = _data("old", 8 * MB), _data("new", 8 * MB)
    nginx.publish("c.bin", old, mtime=time.time() - 3600)
    task = session.download_task(f"{nginx.base_url}/limited/c.bin", tmp_path / "c").resume()
    wait_for_bytes(task, MB)
    task.suspend()
    nginx.publish("c.bin", new, mtime=time.time() - 60)  # same size, new mtime: new ETag
    task.resume().wait(60)
    assert (tmp_path / "c").read_bytes() == new
    [restart] = [e for e in session.event_log() if e.event == "restarted"]
    assert "changed" in restart.detail


def test_without_ranges_there_is_no_resume_data_and_a_restart(nginx, session, tmp_path):
    body = _data("d", 2 * MB)
    nginx.publish("d.bin", body)
    url = f"{nginx.base_url}/noranges/d.bin"
    task = session.download_task(url, tmp_path / "d").resume()
    task.wait(60)
    assert (tmp_path / "d").read_bytes() == body and task.response.headers.get("Accept-Ranges") is None

    nginx.publish("e.bin", _data("e", 8 * MB))
    slow = session.download_task(f"{nginx.base_url}/slow-noranges/e.bin", tmp_path / "e").resume()
    wait_for_bytes(slow, MB)
    assert slow.response.headers["ETag"].startswith('"')  # a strong validator, but no byte ranges
    assert slow.cancel_by_producing_resume_data().result(30) is None
    assert not list(tmp_path.glob(".e.*"))


def test_416_from_nginx_completes_a_whole_partial_file(nginx, session, tmp_path, state_dir):
    body = _data("f", 500_000)
    url = nginx.publish("f.bin", body)
    with urllib.request.urlopen(urllib.request.Request(url, method="HEAD")) as r:
        etag = r.headers["ETag"]
    partial = tmp_path / "f.partial"
    partial.write_bytes(body)
    data = encode_resume_data(ResumeState(url, {}, str(partial), len(body), len(body), Validator("etag", etag)),
                              load_key(state_dir))
    session.download_task_with_resume_data(data, tmp_path / "f").resume().wait(30)
    assert (tmp_path / "f").read_bytes() == body
    assert ' 416 ' in _access_log(nginx)[-1]


def test_bgdl_fetch_killed_and_rerun_against_nginx(nginx, tmp_path, monkeypatch):
    monkeypatch.setenv("BGDL_IN_PROCESS", "1")  # the engine dies with the command
    body = _data("g", 12 * MB)
    nginx.publish("g.bin", body)
    url = f"{nginx.base_url}/limited/g.bin"
    out = tmp_path / "out"
    child = subprocess.Popen([sys.executable, "-m", "bgdl_nb.cli", "fetch", url, "-o", str(out), "--id", "ng",
                              "-q", "--connections", "1"], env=os.environ.copy())  # the single-stream resume
    partials = lambda: [p for p in out.glob(".g.bin*.bgdl-part") if p.stat().st_size > 2 * MB] \
        if out.exists() else []
    try:
        wait_until(lambda: bool(partials()) or child.poll() is not None, timeout=60, what="2 MiB on disk")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    done = run_cli("fetch", url, "-o", str(out), "--id", "ng", "--connections", "1")
    assert done.returncode == 0, done.stderr
    assert sha256_of(out / "g.bin") == hashlib.sha256(body).hexdigest()
    statuses = [line.split('"')[2].split()[0] for line in _access_log(nginx)]
    assert statuses == ["200", "206"]
