"""A new task's partial file carries its destination's claim: its exclusive creation is the
claim, an extended attribute names the task, and the rename into place takes it away. A
claim file holds the claim where the partial file cannot (resume data, no attributes)."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

import bgdl_nb as bg
from bgdl_nb._claims import _ATTRIBUTE, _read, carrier_name, claim, claim_name

from helpers import read_empty_while_claiming, sha256_of, wait_for_bytes, wait_until

MB = 1024 * 1024


def _owner_of(carrier: str) -> dict[str, object]:
    return json.loads(os.getxattr(carrier, _ATTRIBUTE, follow_symlinks=False))


def test_the_partial_file_carries_the_claim_and_the_rename_takes_it_away(origin, tmp_path):
    dest = tmp_path / "carried.bin"
    url = origin.url("carried.bin", 4 * MB, rate=4 * MB)
    with bg.Session(bg.Configuration.background("carrier-a", use_service=False, connections_per_file=1)) as first:
        task = first.download_task(url, dest).resume()
        wait_for_bytes(task, 256 * 1024)
        carrier = carrier_name(dest)
        assert task._record.partial_path == carrier
        owner = _owner_of(carrier)
        assert (owner["identifier"], owner["task"]) == ("carrier-a", task.task_identifier)
        assert not os.path.lexists(claim_name(dest))  # no claim file was written
        with bg.Session(bg.Configuration.background("carrier-b", use_service=False)) as second:
            with pytest.raises(bg.InvalidDestination, match=rf"claimed by task {task.task_identifier} of session "
                                                            r"carrier-a"):
                second.download_task(url, dest)
        assert task.wait(30) == dest
    assert sha256_of(dest) == origin.sha256("carried.bin", 4 * MB)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["carried.bin"]  # nothing left beside it


def test_resume_data_moves_the_bytes_aside_and_frees_the_destination(origin, tmp_path):
    dest = tmp_path / "aside.bin"
    url = origin.url("aside.bin", 4 * MB, rate=4 * MB)
    with bg.Session(bg.Configuration.background("aside", use_service=False, connections_per_file=1)) as session:
        task = session.download_task(url, dest).resume()
        wait_for_bytes(task, MB)
        data = task.cancel_by_producing_resume_data().result(30)
        assert isinstance(data, bytes)
        kept = task.count_of_bytes_received
        assert not os.path.lexists(carrier_name(dest))  # the task ended: its claim with it
        [aside] = tmp_path.glob(".aside.bin.*.bgdl-part")
        assert aside.stat().st_size >= kept
        with bg.Session(bg.Configuration.background("other", use_service=False)) as other:
            other.download_task(url, dest)  # the destination is free: no refusal (not started)
            other.invalidate_and_cancel()
        again = session.download_task_with_resume_data(data).resume()
        assert again.wait(30) == dest
    assert sha256_of(dest) == origin.sha256("aside.bin", 4 * MB)
    # it went on from the bytes moved aside: from the last offset journaled (durable) before the cancel
    start = int(origin.requests_for("aside.bin")[-1].headers["Range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < start <= kept
    assert not aside.exists()


def test_a_carrier_left_without_its_owner_is_refused_while_young_and_taken_over_once_old(origin, tmp_path):
    """Another process creates the carrier, then names itself on it: in between, it is being
    claimed. One left so (its process died in between) is taken over once it is old."""
    dest = tmp_path / "orphan.bin"
    carrier = Path(carrier_name(dest))
    carrier.write_bytes(b"")
    carrier.chmod(0o600)
    url = origin.url("orphan.bin", 1000)
    with bg.Session() as session:
        with pytest.raises(bg.InvalidDestination, match="being claimed by another process right now"):
            session.download_task(url, dest)
        os.utime(carrier, (time.time() - 60, time.time() - 60))
        assert session.download_task(url, dest).resume().wait(30) == dest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["orphan.bin"]


def test_a_carrier_is_never_seen_without_its_owner_in_the_process_that_makes_it(tmp_path):
    # a task claims at its first run while other tasks of the same transfer service are being
    # created and judge the claims there: one that saw no owner would refuse a shared file
    def read(dest: Path) -> bytes | None:
        held = _read(carrier_name(dest))
        return None if held is None else held[0]

    destinations = [tmp_path / f"f{i}" for i in range(2000)]
    assert not read_empty_while_claiming(
        destinations, read, lambda dest: claim(dest, {"journal": None, "identifier": "race", "task": 1,
                                                      "engine": "nonce"}, carried=True))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(Path(carrier_name(d)).name for d in destinations)


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_claiming_hands_back_the_carrier_it_made_so_it_is_opened_once(tmp_path):
    """The hand-off that opens a new partial file claims by creating it: the claim gives the
    new file back open, and the second claim of the same task makes none and gives none."""
    dest = tmp_path / "once.bin"
    owner = {"journal": None, "identifier": "once", "task": 1, "engine": "nonce"}
    fd = claim(dest, owner, carried=True, keep=True)
    assert isinstance(fd, int)
    try:
        assert os.fstat(fd).st_ino == os.lstat(carrier_name(dest)).st_ino  # the carrier itself
        assert os.write(fd, b"first bytes") == 11
        assert json.loads(os.getxattr(fd, _ATTRIBUTE))["identifier"] == "once"  # named before it came back
    finally:
        os.close(fd)
    before = _open_descriptors()
    assert claim(dest, owner, carried=True, keep=True) is None  # its own claim, refreshed: nothing made
    assert claim(tmp_path / "other.bin", owner, carried=True) is None  # made, and closed here
    assert _open_descriptors() == before
    assert Path(carrier_name(dest)).read_bytes() == b"first bytes"
    assert Path(carrier_name(tmp_path / "other.bin")).exists()


@pytest.fixture
def no_attributes(tmp_path: Path):
    """A folder on ramfs, which keeps no user extended attributes (mounting needs root)."""
    folder = tmp_path / "ramfs"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "ramfs", "ramfs", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("mounting ramfs needs root")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def test_where_no_attribute_can_be_kept_a_claim_file_holds_the_claim(origin, tmp_path, no_attributes):
    dest = no_attributes / "plain.bin"
    url = origin.url("plain.bin", 4 * MB, rate=4 * MB)
    with bg.Session(bg.Configuration.background("plain-a", use_service=False, connections_per_file=1)) as first:
        task = first.download_task(url, dest).resume()
        wait_for_bytes(task, 256 * 1024)
        held = json.loads(Path(claim_name(dest)).read_bytes())
        assert (held["identifier"], held["task"]) == ("plain-a", task.task_identifier)
        assert Path(carrier_name(dest)).stat().st_size > 0  # the bytes go to the carrier's name all the same
        with bg.Session(bg.Configuration.background("plain-b", use_service=False)) as second:
            with pytest.raises(bg.InvalidDestination, match=rf"claimed by task {task.task_identifier}"):
                second.download_task(url, dest)
        task.suspend()
        wait_until(lambda: task.state is bg.TaskState.SUSPENDED, what="the suspend")
        task.resume()  # its own claim, found in the claim file: it goes on
        assert task.wait(30) == dest
    assert sha256_of(dest) == origin.sha256("plain.bin", 4 * MB)
    assert sorted(p.name for p in no_attributes.iterdir()) == ["plain.bin"]


def test_of_two_claimers_of_different_kinds_at_most_one_holds_the_destination(tmp_path):
    """A new task claims by creating its carrier, a task from resume data with a claim file.
    Racing for the same destinations, each places its own claim first and looks for the
    other's after: at least one sees the other, so never do both go on to write."""
    destinations = [tmp_path / f"r{i}" for i in range(400)]
    owners = [{"journal": None, "identifier": f"racer-{kind}", "task": 1, "engine": kind}
              for kind in ("carried", "file")]
    won: list[set[Path]] = [set(), set()]
    start = threading.Barrier(2)

    def racer(index: int) -> None:
        start.wait(10)
        for dest in destinations:
            try:
                claim(dest, owners[index], carried=index == 0)
            except bg.InvalidDestination:
                continue
            won[index].add(dest)

    threads = [threading.Thread(target=racer, args=(i,)) for i in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    assert not won[0] & won[1], sorted(p.name for p in won[0] & won[1])[:10]
    assert won[0] | won[1]  # the race had winners
    for dest in destinations:  # a destination nobody holds has no claim left behind
        held = [os.path.lexists(carrier_name(dest)), os.path.lexists(claim_name(dest))]
        assert sum(held) == (dest in won[0] | won[1]), (dest.name, held)
