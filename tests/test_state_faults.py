"""Faults of the state folder itself, made for real: a file system whose locks lock nothing
(``flock`` made a no-op in the process by a preloaded library, as NFS without a lock daemon
behaves), and a state folder whose file system turns read-only in the middle of a download
(an ext4 image whose error handling remounts it read-only, as a failing disk does)."""

from __future__ import annotations

import os
import re
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


@pytest.fixture
def failing_state_disk(tmp_path, monkeypatch):
    """The state folder on an ext4 image of its own, mounted so that a disk error remounts it
    read-only (needs root and a loop device): ``fail()`` raises such an error, through the
    kernel's own ``trigger_fs_error``, while every file on it stays open."""
    image, mount = tmp_path / "state.img", tmp_path / "state-disk"
    mount.mkdir()
    with open(image, "wb") as f:
        f.truncate(32 * 2**20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)

    def mount_it() -> str:
        if subprocess.run(["mount", "-o", "loop,errors=remount-ro", str(image), str(mount)],
                          capture_output=True).returncode != 0:
            pytest.skip("mounting a file system image needs root and a loop device")
        os.chmod(mount, 0o700)
        device = subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(mount)], capture_output=True, text=True,
                                check=True).stdout.strip()
        return f"/sys/fs/ext4/{os.path.basename(device)}/trigger_fs_error"

    class Disk:
        folder = mount
        trigger = mount_it()

        def fail(self) -> None:
            with open(self.trigger, "w") as f:
                f.write("bgdl_nb test: the state disk failed\n")

        def repair(self) -> None:
            """Unmount, check and mount again, writable: what a person does after the error."""
            subprocess.run(["umount", str(mount)], check=True, capture_output=True)
            subprocess.run(["e2fsck", "-fy", str(image)], capture_output=True)  # exit 1: errors fixed
            self.trigger = mount_it()

    monkeypatch.setenv("BGDL_STATE_DIR", str(mount / "state"))
    try:
        yield Disk()
    finally:
        run_cli("service", "stop")
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _partial_bytes(folder) -> int:
    return sum(p.stat().st_size for p in folder.glob(".*.bgdl-part"))


def _assert_the_same_command_continues(origin, url: str, out, identifier: str, name: str, size: int) -> None:
    """The same fetch, run again, completes the file whole, continuing from its bytes (its
    last request a Range from past byte 0)."""
    from bgdl_nb.demo.origin import resource_sha256

    from helpers import sha256_of

    done = run_cli("fetch", url, "-o", str(out), "--id", identifier, "-q")
    assert done.returncode == 0, done.stderr
    assert sha256_of(out / name) == resource_sha256(name, size)
    ranges = [r.headers.get("Range") for r in origin.requests_for(name) if r.method == "GET"]
    assert ranges[0] is None and ranges[-1] and ranges[-1].startswith("bytes=") and ranges[-1] != "bytes=0-", ranges


def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    [line] = [ln for ln in stderr.splitlines() if ln.startswith("bgdl: error:")]
    return line


def test_a_state_folder_that_turns_read_only_mid_download_ends_every_command_in_one_line_and_resumes_after_repair(
        origin, tmp_path, failing_state_disk):

    from helpers import wait_until

    out, size = tmp_path / "out", 4_000_000
    url = origin.url("turns-ro.bin", size, rate=500_000)
    running = subprocess.Popen([sys.executable, "-m", "bgdl_nb.cli", "fetch", url, "-o", str(out), "--id", "ro", "-q"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: out.exists() and _partial_bytes(out) > 1_300_000, 30, "a checkpoint's bytes")
        os.sync()  # what the journal committed is on the disk before it fails (else the disk loses it)
        failing_state_disk.fail()
        _, stderr = running.communicate(timeout=60)  # it used to wait for ever
    finally:
        running.kill()
        running.wait()
    said = re.escape(str(failing_state_disk.folder / "state"))
    read_only = rf"{said}\S* is read-only or not writable by you \(Read-only file system\); make it writable"
    assert running.returncode == 1 and re.search(read_only, _one_error_line(stderr)), stderr
    for identifier in ("ro", "another"):  # the same session again, and one the disk cannot even start
        again = run_cli("fetch", url, "-o", str(out), "--id", identifier, "-q")
        assert again.returncode == 1 and re.search(read_only, _one_error_line(again.stderr)), again.stderr
    status = run_cli("service", "status")
    assert status.returncode == 0 and re.search(r"ro: 1 tasks, 1 running.*; transfers stopped: the journal .*"
                                                + read_only, status.stdout), status.stdout
    stop = run_cli("service", "stop")
    assert stop.returncode == 0 and "Traceback" not in stop.stderr, stop.stderr
    kept = _partial_bytes(out)
    assert 0 < kept < size and not (out / "turns-ro.bin").exists()  # a partial file, kept, never passed as complete

    failing_state_disk.repair()
    _assert_the_same_command_continues(origin, url, out, "ro", "turns-ro.bin", size)


def test_a_state_disk_that_fills_mid_download_ends_the_command_in_one_line_and_the_same_command_then_continues(
        origin, tmp_path, small_state_disk):
    from helpers import fill_disk, wait_until

    disk = small_state_disk
    out, size = tmp_path / "out", 4_000_000
    url = origin.url("fills.bin", size, rate=500_000)
    running = subprocess.Popen([sys.executable, "-m", "bgdl_nb.cli", "fetch", url, "-o", str(out), "--id", "full",
                                "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: out.exists() and _partial_bytes(out) > 1_300_000, 30, "a checkpoint's bytes")
        filler = fill_disk(disk)
        _, stderr = running.communicate(timeout=60)
    finally:
        running.kill()
        running.wait()
    line = _one_error_line(stderr)
    assert running.returncode == 1 and re.search(
        r"cannot be written: no space is left on the disk of .*state.*; free some space there and run the same "
        r"command again", line), stderr
    assert not (out / "fills.bin").exists() and _partial_bytes(out) > 0
    filler.unlink()
    _assert_the_same_command_continues(origin, url, out, "full", "fills.bin", size)


def test_in_a_kernel_a_wait_ends_with_the_read_only_state_folder_and_the_session_still_closes(
        origin, tmp_path, failing_state_disk):
    import bgdl_nb as bg

    from helpers import wait_for_bytes

    with bg.Session(bg.Configuration.background("ro-kernel", use_service=False)) as session:
        task = session.download_task(origin.url("ro-kernel.bin", 4_000_000, rate=500_000),
                                     tmp_path / "ro-kernel.bin").resume()
        wait_for_bytes(task, 100_000)
        failing_state_disk.fail()
        with pytest.raises(bg.SessionError, match=r"is read-only or not writable by you \(Read-only file system\)"):
            task.wait(60)
        assert not task.done() and "read-only" in (task.waiting_reason or "")  # stopped, not over
    assert not (tmp_path / "ro-kernel.bin").exists()
