"""Clocks that disagree, made real with libfaketime (Debian's ``faketime``): the client's
wall clock days behind the server's, and a wall clock that jumps by days in the middle
of a transfer (a laptop that slept overnight) just before the connection resets. The
monotonic clock is left alone, as on a real machine."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import time

import pytest

from bgdl_nb.demo.origin import resource_sha256

from helpers import sha256_of

_CLIENT = """
import sys, threading, time
import bgdl_nb as bg
url, dest, jump_file, jump = sys.argv[1:5]
began, pause = time.monotonic(), threading.Event()
with bg.Session() as session:
    task = session.download_task(url, dest).resume()
    if jump_file != "-":
        while task.count_of_bytes_received < 1_000_000 and not task.done() and time.monotonic() - began < 30:
            pause.wait(0.01)  # a client watching its bytes, as a progress bar does (time.sleep: libfaketime breaks it)
        with open(jump_file, "w") as f:
            f.write(jump + "\\n")  # the machine's wall clock moves by days, now
    try:
        print(task.wait(60))
    except bg.BgdlError as exc:
        print(type(exc).__name__, exc, file=sys.stderr)
        sys.exit(1)
    print(f"{time.monotonic() - began:.2f}", [e for e in session.events["event"] if e == "retry"])
"""


def _libfaketime() -> str:
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    if not found:
        if os.environ.get("BGDL_REQUIRE_FAKETIME"):
            pytest.fail("libfaketime is required (apt-get install faketime)")
        pytest.skip("libfaketime is not installed (apt-get install faketime)")
    return found[0]


def _run(url: str, dest, env: dict[str, str], jump_file: str = "-", jump: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _CLIENT, url, str(dest), jump_file, jump], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "LD_PRELOAD": _libfaketime(),
                                                       "FAKETIME_DONT_FAKE_MONOTONIC": "1", **env})


def test_a_client_clock_days_behind_waits_the_retry_after_date_the_server_meant(origin, tmp_path):
    url = origin.url("behind.bin", 300_000, fail503=1, retry_after=2, retry_date=1)
    done = _run(url, tmp_path / "behind.bin", {"FAKETIME": "-3d"})
    assert done.returncode == 0, done.stderr
    seconds, retries = done.stdout.splitlines()[1].split(" ", 1)
    assert retries == "['retry']" and 1.5 <= float(seconds) < 20, done.stdout  # about 2 s, not 3 days
    assert sha256_of(tmp_path / "behind.bin") == resource_sha256("behind.bin", 300_000)
    # the client really was three days behind
    assert float(subprocess.run([sys.executable, "-c", "import time; print(time.time())"], capture_output=True,
                                text=True, env={**os.environ, "LD_PRELOAD": _libfaketime(), "FAKETIME": "-3d"}
                                ).stdout) < time.time() - 2.9 * 86400


@pytest.mark.parametrize("jump", ["+8d", "-3d"])
def test_a_wall_clock_jump_of_days_mid_transfer_then_a_reset_neither_hangs_nor_times_out(origin, tmp_path, jump):
    clock = tmp_path / "clock"
    clock.write_text("+0\n")
    size = 3_000_000
    url = origin.url("jumps.bin", size, rate=1_000_000, reset_after=1_500_000, faults=1)
    done = _run(url, tmp_path / "jumps.bin", {"FAKETIME_TIMESTAMP_FILE": str(clock), "FAKETIME_NO_CACHE": "1"},
                str(clock), jump)
    assert done.returncode == 0, done.stderr
    seconds, retries = done.stdout.splitlines()[1].split(" ", 1)
    assert retries == "['retry']" and float(seconds) < 30, done.stdout  # one retry, then on at once
    assert sha256_of(tmp_path / "jumps.bin") == resource_sha256("jumps.bin", size)
    ranges = [r.headers.get("Range") for r in origin.requests_for("jumps.bin") if r.method == "GET"]
    assert len(ranges) == 2 and ranges[1].startswith("bytes=") and ranges[1] != "bytes=0-", ranges
