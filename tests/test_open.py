"""Reading a file while it downloads (``bg.open``) on real servers: the demo origin capped
per connection (with a changing resource and stalls) and nginx capped per connection;
reads at the end, the middle and the start come back before the download is done and are
the server's bytes; concurrent readers; a reader process killed mid-read and a new one;
a resource that changes mid-read raises and never mixes versions."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

import bgdl_nb as bg
from bgdl_nb.demo.origin import content, resource_sha256

MB = 1024 * 1024
SIZE = 48 * MB
RATE = 4_000_000  # bytes a second per connection: the whole file takes seconds, a read should not


def _bytes(name: str, start: int, end: int, version: int = 0, size: int = SIZE) -> bytes:
    return b"".join(content(name, size, version, start, end))


def _events(f: bg.BackgroundFile) -> object:
    session = bg.Session(bg.Configuration.background(bg._fetch.default_identifier(Path(f.name).parent)))
    try:
        return session.events
    finally:
        session.close()


@pytest.fixture(params=["service", "in-process"])
def host(request, monkeypatch):
    monkeypatch.setenv("BGDL_IN_PROCESS", "1" if request.param == "in-process" else "0")
    return request.param


def test_reads_at_the_end_the_middle_and_the_start_come_first_and_are_the_servers_bytes(origin, tmp_path, host):
    url = origin.url("big.bin", SIZE, rate=RATE)
    with bg.open(url, tmp_path / "data", timeout=30) as f:
        assert f.size == SIZE
        f.seek(-100_000, os.SEEK_END)
        assert f.read() == _bytes("big.bin", SIZE - 100_000, SIZE)
        assert f.bytes_here < SIZE // 2, f"the footer came with {f.bytes_here:,} bytes of the file"
        f.seek(SIZE // 2)
        assert f.read(MB) == _bytes("big.bin", SIZE // 2, SIZE // 2 + MB)
        f.seek(0)
        assert f.read(1000) == _bytes("big.bin", 0, 1000)
        assert not f.task.done(), "reading the middle waited for the whole file"
        path = f.task.wait(60)
    assert path == tmp_path / "data" / "big.bin"
    assert bg._digests.Digest.parse("sha256:" + resource_sha256("big.bin", SIZE)).of_file(path) \
        == resource_sha256("big.bin", SIZE)
    ranges = [r.headers.get("Range") for r in origin.requests_for("big.bin")]
    assert f"bytes={SIZE - 100_000}-{SIZE - 1}" in ranges or any(
        r and r.startswith(f"bytes={SIZE - 100_000}-") for r in ranges), ranges
    assert all(r.headers.get("If-Range") for r in origin.requests_for("big.bin") if r.headers.get("Range"))
    events = _events(f)
    waits = events[events.event == "read_wait"]
    assert any(d.startswith(f"bytes {SIZE - 100_000}-") for d in waits.detail), waits.detail.tolist()
    assert any(d.startswith(f"bytes {SIZE // 2}-") for d in waits.detail), waits.detail.tolist()


def test_a_file_from_nginx_capped_per_connection_reads_its_end_first(nginx, tmp_path):
    data = os.urandom(24 * MB)
    (nginx.root / "table.bin").write_bytes(data)
    url = f"{nginx.base_url}/limited/table.bin"
    with bg.open(url, tmp_path, timeout=30) as f:
        f.seek(-4096, os.SEEK_END)
        assert f.read() == data[-4096:]
        assert f.bytes_here < len(data) // 2, f"the last 4 KiB came with {f.bytes_here:,} bytes of the file"
        f.seek(10 * MB)
        assert f.read(100_000) == data[10 * MB:10 * MB + 100_000]
        assert f.task.wait(60).read_bytes() == data


def test_two_readers_of_one_file_share_one_download(origin, tmp_path):
    url = origin.url("shared.bin", SIZE, rate=RATE)
    got: dict[str, bytes] = {}
    errors: list[BaseException] = []

    def read(name: str, start: int, length: int) -> None:
        try:
            with bg.open(url, tmp_path, timeout=30) as f:
                f.seek(start)
                got[name] = f.read(length)
        except BaseException as exc:  # reported below, on the test's thread
            errors.append(exc)

    readers = [threading.Thread(target=read, args=("end", SIZE - MB, MB)),
               threading.Thread(target=read, args=("middle", SIZE // 3, MB))]
    for r in readers:
        r.start()
    for r in readers:
        r.join(60)
    assert not errors, errors
    assert got["end"] == _bytes("shared.bin", SIZE - MB, SIZE)
    assert got["middle"] == _bytes("shared.bin", SIZE // 3, SIZE // 3 + MB)
    assert sum(1 for r in origin.requests_for("shared.bin") if not r.headers.get("Range")) == 1  # one download


READER = textwrap.dedent("""
    import os, signal, sys
    import bgdl_nb as bg
    url, dest, start, length = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    f = bg.open(url, dest, timeout=30)
    f.seek(start)
    sys.stdout.buffer.write(f.read(length))
    sys.stdout.flush()
    if len(sys.argv) > 5:
        os.kill(os.getpid(), signal.SIGKILL)  # a kernel killed mid-read: no close, no goodbye
""")


def test_a_reader_killed_mid_read_and_a_new_one_reuse_the_bytes_already_here(origin, tmp_path, host):
    url = origin.url("kept.bin", SIZE, rate=RATE)
    dest = str(tmp_path)
    first = subprocess.run([sys.executable, "-c", READER, url, dest, str(SIZE - MB), str(MB), "kill"],
                           capture_output=True, timeout=60, cwd=tmp_path)
    assert first.returncode == -9, first.stderr.decode()[-2000:]
    assert first.stdout == _bytes("kept.bin", SIZE - MB, SIZE)
    second = subprocess.run([sys.executable, "-c", READER, url, dest, str(SIZE // 2), str(MB)],
                            capture_output=True, timeout=60, cwd=tmp_path)
    assert second.returncode == 0, second.stderr.decode()[-2000:]
    assert second.stdout == _bytes("kept.bin", SIZE // 2, SIZE // 2 + MB)
    with bg.open(url, dest, timeout=60, verified=True) as f:
        assert f.read() == _bytes("kept.bin", 0, SIZE)
    whole = [r for r in origin.requests_for("kept.bin") if not r.headers.get("Range")]
    assert len(whole) == 1, "the second reader started the download again from byte 0"


def test_a_resource_that_changes_mid_read_raises_and_no_read_mixes_versions(origin, tmp_path):
    url = origin.url("moving.bin", SIZE, rate=RATE)
    with bg.open(url, tmp_path, timeout=30) as f:
        f.seek(SIZE - MB)
        assert f.read(MB) == _bytes("moving.bin", SIZE - MB, SIZE)
        origin.bump("moving.bin")  # the server now has version 1, same size, new ETag
        with pytest.raises(bg.FileChanged, match="open the file again"):
            for k in range(1, 40):  # bounded: each read is one region further in
                start = (k * 5 * MB) % (SIZE - MB)
                f.seek(start)
                piece = f.read(64 * 1024)
                assert piece == _bytes("moving.bin", start, start + len(piece)), f"read {k} is not version 0"
    with bg.open(url, tmp_path, timeout=30) as again:
        again.seek(SIZE - MB)
        assert again.read(MB) == _bytes("moving.bin", SIZE - MB, SIZE, version=1)


def test_a_read_whose_bytes_do_not_come_ends_with_a_read_timeout_and_the_download_goes_on(origin, tmp_path):
    url = origin.url("stuck.bin", SIZE, stall_after=1000)
    with bg.open(url, tmp_path, timeout=1.5) as f:
        f.seek(SIZE - 100_000)
        with pytest.raises(bg.ReadTimeout, match=r"did not arrive within 1.5 s .* read again, or open it with a "
                                                 r"longer timeout"):
            f.read(100_000)
        assert not f.task.done()
        f.task.cancel()


def test_verified_waits_for_the_digest_and_a_finished_file_opens_as_it_is(origin, tmp_path):
    url = origin.url("small.bin", 3 * MB)
    with bg.open(url, tmp_path, verified=True, sha256=resource_sha256("small.bin", 3 * MB)) as f:
        assert f.task.succeeded
        assert f.read() == _bytes("small.bin", 0, 3 * MB, size=3 * MB)
    requests = len(origin.requests_for("small.bin"))
    with bg.open(url, tmp_path) as again:  # the file is here and complete: no task, no request
        assert again.task is None and again.read(10) == _bytes("small.bin", 0, 10, size=3 * MB)
    assert len(origin.requests_for("small.bin")) == requests


def test_bad_arguments_are_refused_before_any_io(tmp_path):
    with pytest.raises(bg.InvalidInput, match="timeout must be a positive"):
        bg.open("http://127.0.0.1:9/x.bin", tmp_path, timeout=0)
    with pytest.raises(bg.InvalidInput, match="takes a URL; for a request with headers"):
        bg.open(bg.Request("http://127.0.0.1:9/x.bin", headers={"A": "b"}), tmp_path)
    with pytest.raises(bg.InvalidInput):
        bg.open("ftp://example.org/x.bin", tmp_path)
    with pytest.raises(bg.InvalidInput, match="name must be a file name"):
        bg.open("http://127.0.0.1:9/x.bin", tmp_path, name="folder/")
    assert not any(tmp_path.iterdir())
    (tmp_path / "x.bin").write_bytes(b"a file already here")
    with pytest.raises(bg.InvalidInput, match=r"is a file; bg.open\(\) takes the folder to download into"):
        bg.open("http://127.0.0.1:9/x.bin", tmp_path / "x.bin")


def test_open_and_fetch_with_one_folder_share_one_download_and_name_picks_the_file(origin, tmp_path):
    # the folder does not exist yet: dest is a folder all the same, as fetch reads it
    url = origin.url("shared-name.bin", 2 * MB, rate=RATE)
    with bg.open(url, tmp_path / "new", timeout=30) as f:
        f.seek(-1000, os.SEEK_END)
        assert f.read() == _bytes("shared-name.bin", 2 * MB - 1000, 2 * MB)
        [path] = bg.fetch(url, tmp_path / "new", progress=False)
        assert path == Path(f.name) == tmp_path / "new" / "shared-name.bin"
    assert sum(1 for r in origin.requests_for("shared-name.bin") if not r.headers.get("Range")) == 1
    with bg.open(url, tmp_path / "new", name="sub/renamed.bin", timeout=30, verified=True) as g:
        assert g.read() == _bytes("shared-name.bin", 0, 2 * MB)
        assert Path(g.name) == tmp_path / "new" / "sub" / "renamed.bin"
