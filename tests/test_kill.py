"""``bgdl fetch`` running its engine in-process (BGDL_IN_PROCESS=1), killed with SIGKILL
at random points, then re-run: the file is whole and the origin served no more than the
file plus one checkpoint (and what was in flight) per kill. (Killing the transfer
service instead is in test_service.py.)"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys

from conftest import run_cli

import bgdl_nb as bg
from bgdl_nb._engine import CHECKPOINT_BYTES
from bgdl_nb._journal import journaled_bytes

from helpers import sha256_of, wait_until

MB = 1024 * 1024
IN_FLIGHT = 256 * 1024  # the origin's largest write at this rate


def test_kill_9_at_random_points_then_resume(origin, tmp_path, monkeypatch):
    monkeypatch.setenv("BGDL_IN_PROCESS", "1")
    size = 24 * MB
    url = origin.url("dataset.bin", size, rate=12 * MB)
    out = tmp_path / "out"
    rng = random.Random(20261121)
    points = sorted(rng.uniform(0.1, 0.9) for _ in range(3))
    kills = 0
    for fraction in points:
        child = subprocess.Popen([sys.executable, "-m", "bgdl_nb.cli", "fetch", url, "-o", str(out),
                                  "--id", "killed", "-q"], env=os.environ.copy())
        try:
            journal = bg.Configuration.background("killed").journal_path()
            wait_until(lambda: journaled_bytes(journal, "killed") >= fraction * size or child.poll() is not None,
                       timeout=60, what=f"{fraction:.0%} journaled")
        finally:
            if child.poll() is None:
                child.send_signal(signal.SIGKILL)
                kills += 1
            child.wait()
    assert kills == 3
    assert not (out / "dataset.bin").exists()  # a partial file never passes as complete

    done = run_cli("fetch", url, "-o", str(out), "--id", "killed", "--sha256", origin.sha256("dataset.bin", size))
    assert done.returncode == 0, done.stderr
    assert sha256_of(out / "dataset.bin") == origin.sha256("dataset.bin", size)
    served = origin.bytes_sent("dataset.bin")
    assert size <= served <= size + kills * (CHECKPOINT_BYTES + IN_FLIGHT), served - size
    ranges = [r.headers.get("Range") for r in origin.requests_for("dataset.bin")]
    assert ranges[0] is None and all(r and r.startswith("bytes=") for r in ranges[1:])

    requests_before = len(origin.log)
    again = run_cli("fetch", url, "-o", str(out), "--id", "killed")
    assert again.returncode == 0 and len(origin.log) == requests_before  # verified file: nothing fetched
