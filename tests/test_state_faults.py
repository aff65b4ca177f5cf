"""Faults of the state folder itself, made for real: a file system whose locks lock nothing
(``flock`` made a no-op in the process by a preloaded library, as NFS without a lock daemon
behaves), and a state folder whose file system turns read-only in the middle of a download
(an ext4 image whose error handling remounts it read-only, as a failing disk does)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from conftest import run_cli

_NO_FLOCK = "#include <sys/file.h>\nint flock(int fd, int operation) { (void)fd; (void)operation; return 0; }\n"


@pytest.fixture(scope="module")
def no_flock(tmp_path_factory) -> str:
    """A shared library whose ``flock`` grants every lock and locks nothing."""
    if shutil.which("gcc") is None:
        pytest.skip("building the flock shim needs gcc")
    folder = tmp_path_factory.mktemp("noflock")
    (folder / "noflock.c").write_text(_NO_FLOCK)
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(folder / "noflock.so"), str(folder / "noflock.c")],
                   check=True, capture_output=True)
    return str(folder / "noflock.so")


_IN_PROCESS = """
import sys
import bgdl_nb as bg
try:
    with bg.Session(bg.Configuration.background("nolocks", use_service=False)) as session:
        print(session.download_task(sys.argv[1], sys.argv[2]).resume().wait(30))
except bg.BgdlError as exc:
    print(type(exc).__name__, exc, file=sys.stderr)
    sys.exit(3)
"""


@pytest.mark.parametrize("use_service", [False, True], ids=["in-process", "service"])
def test_a_state_folder_whose_locks_lock_nothing_is_refused_before_anything_is_written(
        origin, tmp_path, no_flock, use_service):
    state = tmp_path / "state"
    env = {"LD_PRELOAD": no_flock, "BGDL_STATE_DIR": str(state)}
    url = origin.url("locked.bin", 1000)
    if use_service:
        done = run_cli("fetch", url, "-o", str(tmp_path / "out"), "--id", "nolocks", "-q", env=env)
        said = done.stderr
    else:
        done = subprocess.run([sys.executable, "-c", _IN_PROCESS, url, str(tmp_path / "out" / "locked.bin")],
                              capture_output=True, text=True, timeout=60, env={**os.environ, **env})
        said = done.stderr
    assert done.returncode in (2, 3), said
    [line] = [ln for ln in said.splitlines() if "file locks do not work" in ln]
    assert f"file locks do not work in {state}" in line and "set BGDL_STATE_DIR to a folder on a local disk" in line
    assert "Traceback" not in said
    assert not (tmp_path / "out" / "locked.bin").exists() and not origin.requests_for("locked.bin")
    assert not list(state.glob("sessions/*.sqlite3"))  # no journal was written
    # the same commands where locks work
    again = run_cli("fetch", url, "-o", str(tmp_path / "out"), "--id", "nolocks", "-q",
                    env={"BGDL_STATE_DIR": str(state)})
    assert again.returncode == 0, again.stderr
    run_cli("service", "stop", env={"BGDL_STATE_DIR": str(state)})
