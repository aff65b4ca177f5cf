"""One file over many connections: work stealing, If-Range on every segment, per-segment
resume after SIGKILL, and a resource that changes mid-download restarting from zero."""

from __future__ import annotations

import itertools
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from conftest import run_cli

import bgdl_nb as bg
from bgdl_nb._attempt import CHECKPOINT_BYTES
from bgdl_nb._journal import read_journal
from bgdl_nb._regions import MIN_SEGMENT, Segment, compact, split, steal, take

from helpers import sha256_of, wait_until

MB = 1024 * 1024


def test_pieces_are_taken_in_file_order_and_the_tail_is_stolen():
    segments = split(100 * MB, None)
    first, second = take(segments, 8 * MB), take(segments, 8 * MB)
    assert (first.start, first.end, second.start, second.end) == (0, 8 * MB, 8 * MB, 16 * MB)
    assert segments[-1].start == 16 * MB and not segments[-1].owned  # the rest waits, in order
    first.pos = first.end
    assert compact(segments) == [[0, 8 * MB, 8 * MB, 0], [8 * MB, 16 * MB, 8 * MB, 0], [16 * MB, 100 * MB, 16 * MB, 0]]
    # below a journaled mark the regions merge and need no CRC: the mark vouches for them
    assert compact(segments, 8 * MB)[0] == [0, 8 * MB, 8 * MB]
    while take(segments, 8 * MB) is not None:
        pass
    assert all(s.owned or s.pos == s.end for s in segments)
    victim = max((s for s in segments if s.owned), key=lambda s: s.remaining)
    stolen = steal(segments)
    assert stolen.start == victim.end and stolen.end - stolen.start >= MIN_SEGMENT
    tiny = [Segment(0, 3 * MIN_SEGMENT, 3 * MIN_SEGMENT - 1, owned=True)]
    assert steal(tiny) is None  # never split what a new connection cannot pay for
    covered = [(s.start, s.end) for s in segments]
    assert covered[0][0] == 0 and covered[-1][1] == 100 * MB
    assert all(a[1] == b[0] for a, b in itertools.pairwise(covered))  # no gap, no overlap


def test_a_chunk_that_crosses_the_end_of_its_piece_is_counted(tmp_path):
    """The first connection streams on past its piece; when the next piece is taken, the
    part of the chunk before the boundary is written and counted, and the stream stops."""
    import asyncio

    from bgdl_nb._config import Configuration
    from bgdl_nb._journal import TaskRecord
    from bgdl_nb._run import TaskRun
    from bgdl_nb._segments import Segmented

    class Report:  # the Reporter seam: the engine's side is not under test here
        def update(self, **changes: object) -> None: pass
        def emit(self, kind: object, **fields: object) -> None: pass
        def throttle(self, nbytes: int) -> float: return 0.0

    class Body:  # an open response (our Opened's one method used here)
        async def chunks(self):  # type: ignore[no-untyped-def]
            yield b"a" * 15

    path = tmp_path / "f"
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    run = TaskRun(TaskRecord(1, "http://h/f", total=20))
    split = Segmented(run, Report(), Configuration.default(), fd, 20, '"v"', lambda h: None, None,  # type: ignore[arg-type]
                      segments=[Segment(0, 10, 0, owned=True), Segment(10, 20, 10, owned=True)])
    try:
        asyncio.run(split._stream(split.segments[0], Body(), open_ended=True))
    finally:
        os.close(fd)
    assert path.read_bytes() == b"a" * 10 and split.received() == run.received == 10


def test_journaled_regions_continue_where_they_stopped():
    segments = split(40 * MB, [[0, 8 * MB, 8 * MB], [8 * MB, 16 * MB, 11 * MB], [16 * MB, 40 * MB, 16 * MB]])
    piece = take(segments, 8 * MB)
    assert (piece.start, piece.pos, piece.end) == (8 * MB, 11 * MB, 16 * MB)  # a half-done piece goes first
    assert take(segments, 8 * MB).start == 16 * MB


def test_a_capped_origin_is_fetched_over_several_connections(origin, tmp_path):
    size = 24 * MB
    url = origin.url("split", size, rate=4 * MB)
    session = bg.Session(bg.Configuration.default(connections_per_file=4))
    task = session.download_task(url, tmp_path / "split").resume()
    assert task.wait(60) == tmp_path / "split"
    assert sha256_of(tmp_path / "split") == origin.sha256("split", size) == task.sha256
    requests = origin.requests_for("split")
    ranged = [r for r in requests if r.headers.get("Range")]
    assert len(ranged) >= 3 and all(r.headers.get("If-Range") for r in ranged)  # If-Range on every segment
    # nothing fetched twice but what was in flight past a segment that a steal shortened
    assert size <= origin.bytes_sent("split") <= size + len(ranged) * 256 * 1024
    log = session.event_log()
    assert "segmented" in [e.event for e in log] and [e.event for e in log[-2:]] == ["finished", "completed"]
    # the count includes the bytes of a chunk that crossed the end of its piece
    assert log[-1].total_bytes_written == task.count_of_bytes_received == size
    session.close()


def test_automatic_connections_grow_against_a_capped_nginx(nginx, tmp_path):
    data = os.urandom(3 * MB) * 8
    nginx.publish("big.bin", data)
    url = f"{nginx.base_url}/limited/big.bin"  # nginx limit_rate 4m per connection
    session = bg.Session(bg.Configuration.default())
    task = session.download_task(url, tmp_path / "big.bin").resume()
    task.wait(60)
    assert (tmp_path / "big.bin").read_bytes() == data
    lines = (nginx.prefix / "logs" / "access.log").read_text().splitlines()
    assert sum(" 206 " in line for line in lines) >= 2  # it added connections while throughput grew
    session.close()


@pytest.mark.parametrize("where", ["limited", "plain"])
def test_automatic_splitting_happens_only_when_one_connection_is_slow(nginx, tmp_path, monkeypatch, where):
    """Automatic: the file starts on one connection; if that proves slower than
    SPLIT_BELOW, the same body goes on as the first of several pieces (nothing fetched
    twice); a fast connection keeps the file to itself (no digest read-back, no CRCs)."""
    import bgdl_nb._attempt as attempt
    monkeypatch.setattr(attempt, "SPLIT_BELOW", 8 * MB)  # between nginx's 4 MB/s cap and loopback's pace
    data = os.urandom(3 * MB) * 8
    nginx.publish("big.bin", data)
    with bg.Session(bg.Configuration.default()) as session:
        path = "limited/big.bin" if where == "limited" else "big.bin"
        task = session.download_task(f"{nginx.base_url}/{path}", tmp_path / "big.bin").resume()
        task.wait(60)
        log = session.event_log()
    assert (tmp_path / "big.bin").read_bytes() == data
    lines = [line for line in (nginx.prefix / "logs" / "access.log").read_text().splitlines() if "big.bin" in line]
    sent = sum(int(line.split('" ')[1].split()[1]) for line in lines)  # the body bytes of each response
    segmented = [e for e in log if e.event == "segmented"]
    if where == "plain":
        assert len(lines) == 1 and " 200 " in lines[0] and not segmented
    else:
        assert sum(" 200 " in line for line in lines) == 1 and sum(" 206 " in line for line in lines) >= 2
        assert segmented and sent <= len(data) + 2 * MB  # the first body was cut short, not fetched again


def test_sigkill_mid_split_download_resumes_every_segment(origin, tmp_path, monkeypatch):
    monkeypatch.setenv("BGDL_IN_PROCESS", "1")
    size = 48 * MB
    url = origin.url("killsplit", size, rate=3 * MB)
    out = tmp_path / "out"
    child = subprocess.Popen([sys.executable, "-m", "bgdl_nb.cli", "fetch", url, "-o", str(out), "--id", "split",
                              "--connections", "4", "-q"], env=os.environ.copy())
    journal = bg.Configuration.background("split").journal_path()

    def split_and_under_way() -> bool:
        if child.poll() is not None or not journal.exists():
            return child.poll() is not None
        try:
            tasks, _ = read_journal(journal, "split")
        except sqlite3.Error:  # the child is still creating the schema
            return False
        return bool(tasks) and bool(tasks[0].segments) and len(tasks[0].segments) == 4 \
            and all(g[2] - g[0] >= 2 * MB for g in tasks[0].segments)

    try:
        wait_until(split_and_under_way, timeout=60, what="four segments each 2 MiB along")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    killed_at = time.time()
    tasks, _ = read_journal(journal, "split")
    before = [list(s) for s in tasks[0].segments]
    served_before = origin.bytes_sent("killsplit")
    done = run_cli("fetch", url, "-o", str(out), "--id", "split", "--connections", "4")
    assert done.returncode == 0, done.stderr
    assert sha256_of(out / "killsplit") == origin.sha256("killsplit", size)
    resumed = [r for r in origin.requests_for("killsplit") if r.time > killed_at and r.headers.get("Range")]
    starts = {int(r.headers["Range"].split("=")[1].split("-")[0]) for r in resumed}
    for _start, end, durable, *_crc in before:  # every unfinished segment continued from its own durable offset
        if durable < end:
            assert durable in starts, (durable, sorted(starts))
    refetched = origin.bytes_sent("killsplit") - size
    assert 0 <= refetched <= 4 * (CHECKPOINT_BYTES + 256 * 1024), (refetched, served_before)


def test_a_resource_changed_mid_split_is_one_version_whole(origin, tmp_path):
    """Responses already under way keep serving the version they began with; any new
    segment request after the change is refused by If-Range, and the file restarts."""
    size = 24 * MB
    url = origin.url("changes", size, rate=4 * MB)
    session = bg.Session(bg.Configuration.default())  # automatic: connections added after the change
    task = session.download_task(url, tmp_path / "changes").resume()
    wait_until(lambda: task.count_of_bytes_received >= 2 * MB or task.done(), timeout=60, what="2 MiB")
    origin.bump("changes")
    task.wait(90)
    digest = sha256_of(tmp_path / "changes")
    assert digest in (origin.sha256("changes", size, 0), origin.sha256("changes", size, 1))  # never a mix
    if digest == origin.sha256("changes", size, 1):
        assert any(e.event == "restarted" for e in session.event_log())
    session.close()


def test_a_split_file_changed_while_killed_restarts_from_zero(origin, tmp_path):
    size = 24 * MB
    url = origin.url("changed", size, rate=4 * MB)
    session = bg.Session(bg.Configuration.background("chg", use_service=False, connections_per_file=4))
    task = session.download_task(url, tmp_path / "changed").resume()
    wait_until(lambda: task.count_of_bytes_received >= 6 * MB, timeout=60, what="6 MiB")
    session.close()  # the process lets go mid-download; the segments stay journaled
    origin.bump("changed")
    again = bg.Session(bg.Configuration.background("chg", use_service=False, connections_per_file=4))
    again.all_tasks()[0].wait(90)
    assert sha256_of(tmp_path / "changed") == origin.sha256("changed", size, 1)  # the new version, whole
    restarted = [e for e in again.event_log() if e.event == "restarted"]
    assert restarted and "whole resource" in restarted[-1].detail
    again.close()


@pytest.mark.parametrize("switch", [{"ranges": "0"}, {"validators": "weak"}])
def test_files_without_ranges_or_a_strong_validator_are_not_split(origin, tmp_path, switch):
    size = 12 * MB
    session = bg.Session(bg.Configuration.default(connections_per_file=4))
    task = session.download_task(origin.url("whole", size, **switch), tmp_path / "whole").resume()
    task.wait(60)
    assert len(origin.requests_for("whole")) == 1 and "segmented" not in [e.event for e in session.event_log()]
    session.close()


def test_regions_that_changed_on_disk_are_found_and_only_they_are_fetched_again(tmp_path):
    """The marks vouch for the merged prefix, a CRC-32 for each region past it: a byte
    altered anywhere sends back exactly the region (or the stretch after the last good
    mark) that holds it, and a journal without a CRC for a region past the marks (an
    older bgdl_nb) cannot vouch for that region either."""
    import hashlib
    import random
    import zlib

    from bgdl_nb._regions import check_on_disk

    data = random.Random(7).randbytes(12 * MB)
    path = tmp_path / "partial"
    marks = [[2 * MB, hashlib.sha256(data[:2 * MB]).hexdigest()], [4 * MB, hashlib.sha256(data[:4 * MB]).hexdigest()]]
    journaled = [[0, 4 * MB, 4 * MB], [4 * MB, 8 * MB, 6 * MB, zlib.crc32(data[4 * MB:6 * MB])],
                 [8 * MB, 12 * MB, 10 * MB, zlib.crc32(data[8 * MB:10 * MB])]]

    def check(flip: int | None, regions=journaled):
        body = bytearray(data)
        if flip is not None:
            body[flip] ^= 0xFF
        path.write_bytes(bytes(body))
        segments, hasher, hashed, changed = check_on_disk(str(path), 12 * MB, regions, marks)
        assert hasher.hexdigest() == hashlib.sha256(data[:hashed]).hexdigest()
        return [(s.start, s.end, s.pos) for s in segments], hashed, changed

    untouched = [(0, 4 * MB, 4 * MB), (4 * MB, 8 * MB, 6 * MB), (8 * MB, 12 * MB, 10 * MB)]
    assert check(None) == (untouched, 4 * MB, [])
    assert check(3 * MB) == ([(0, 2 * MB, 2 * MB), (2 * MB, 4 * MB, 2 * MB), *untouched[1:]], 2 * MB,
                             [(2 * MB, 4 * MB)])
    assert check(9 * MB) == ([*untouched[:2], (8 * MB, 12 * MB, 8 * MB)], 4 * MB, [(8 * MB, 10 * MB)])
    assert check(5 * MB)[2] == [(4 * MB, 6 * MB)]
    older = [*journaled[:2], [8 * MB, 12 * MB, 10 * MB]]  # no CRC, and no mark reaches it
    assert check(None, older) == ([*untouched[:2], (8 * MB, 12 * MB, 8 * MB)], 4 * MB, [(8 * MB, 10 * MB)])
