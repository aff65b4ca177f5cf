"""A hostile world: files on disk that are no longer ours, secrets in URLs and headers,
unusual but valid inputs. Real sockets, real files, real symlinks; no mocks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import bgdl_nb as bg

from helpers import wait_for_bytes, wait_until

MB = 1024 * 1024


def _suspended_midway(origin, tmp_path: Path, use_service: bool, name: str = "data.bin"):
    session = bg.Session(bg.Configuration.background(f"hostile-{use_service}", use_service=use_service,
                                                     connections_per_file=1))
    task = session.download_task(origin.url(name, 8 * MB, rate=4 * MB), tmp_path / "dest" / name).resume()
    wait_for_bytes(task, MB)
    task.suspend()
    wait_until(lambda: task.state is bg.TaskState.SUSPENDED, what="the suspend")
    partial = Path(task._record.partial_path)
    assert partial.is_file() and partial.parent == tmp_path / "dest"
    return session, task, partial


@pytest.mark.parametrize("use_service", [False, True], ids=["in-process", "service"])
@pytest.mark.parametrize("swap", ["symlink", "hardlink"])
def test_a_partial_file_swapped_for_a_link_is_refused_and_nothing_is_touched(origin, tmp_path, use_service, swap):
    (tmp_path / "dest").mkdir()
    victim = tmp_path / "outside" / "precious.txt"
    victim.parent.mkdir()
    victim.write_bytes(b"the user's own data\n" * 1000)
    before = victim.read_bytes()
    session, task, partial = _suspended_midway(origin, tmp_path, use_service)
    try:
        partial.unlink()
        if swap == "symlink":
            partial.symlink_to(victim)
        else:
            os.link(victim, partial)
        task.resume()
        with pytest.raises(bg.UnsafeFile, match="left untouched") as caught:
            task.wait(30)
        assert str(partial) in str(caught.value)
        assert victim.read_bytes() == before  # neither truncated nor written
        assert not (tmp_path / "dest" / "data.bin").exists()  # and nothing renamed into place
        assert partial.is_symlink() if swap == "symlink" else partial.stat().st_nlink == 2
    finally:
        session.close()


def test_a_partial_file_replaced_after_the_bytes_arrived_is_never_renamed_into_place(origin, tmp_path):
    """The last check happens at the rename itself: a symlink that appears while the file
    is finishing is refused there (the victim is neither chmodded nor moved)."""
    from bgdl_nb._finalise import _rename_all

    victim = tmp_path / "victim"
    victim.write_bytes(b"x")
    victim.chmod(0o600)
    link = tmp_path / ".d.bin.0000.bgdl-part"
    link.symlink_to(victim)
    [error] = _rename_all([(str(link), tmp_path / "d.bin")])
    assert isinstance(error, bg.UnsafeFile)
    assert not (tmp_path / "d.bin").exists() and victim.stat().st_mode & 0o777 == 0o600
