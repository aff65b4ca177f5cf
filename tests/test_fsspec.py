"""The fsspec doorway with the real fsspec, pandas and pyarrow: ``bgdl::`` URLs opened and
read, freshness by ETag and size, ``fs.get`` of many files as one session, info/ls/exists
through the target, and a kill of the client and the service mid-file continued with a
Range request."""

from __future__ import annotations

import hashlib
import io
import textwrap

import pytest

import bgdl_nb as bg

from helpers import kill_mid_file_and_run_again

fsspec = pytest.importorskip("fsspec")
bgdl_fsspec = pytest.importorskip("bgdl_nb.fsspec")

MB = 1024 * 1024


def _gets(nginx) -> int:
    log = nginx.prefix / "logs" / "access.log"
    return sum('"GET ' in line for line in log.read_text().splitlines()) if log.exists() else 0


def test_open_reads_through_the_cache_and_a_changed_file_is_fetched_again(nginx, tmp_path):
    url = nginx.publish("table.csv", b"a,b\n1,2\n")
    options = {"cache_storage": str(tmp_path / "cache"), "identifier": "fs"}
    with fsspec.open("bgdl::" + url, bgdl=options) as f:
        assert f.read() == b"a,b\n1,2\n"
    local = tmp_path / "cache" / bgdl_fsspec.cache_path_for(url)
    assert local.read_bytes() == b"a,b\n1,2\n" and local.parent.parent == tmp_path / "cache"
    gets = _gets(nginx)
    with fsspec.open("bgdl::" + url, bgdl=options) as f:
        assert f.read() == b"a,b\n1,2\n"
    assert _gets(nginx) == gets  # the cached copy is the server's version: a HEAD, no GET

    nginx.publish("table.csv", b"a,b\n3,4\n", mtime=1_700_000_000)  # same size, new ETag
    with fsspec.open("bgdl::" + url, bgdl=options) as f:
        assert f.read() == b"a,b\n3,4\n"
    assert _gets(nginx) == gets + 1

    fs = fsspec.filesystem("bgdl", target_protocol="http", **options)
    assert fs.cat_file(url, 2, 5) == b"b\n3" and fs.cat_file(url, -2) == b"4\n"
    with pytest.raises(bg.InvalidInput, match="read-only"):
        fs.open(url, "wb")


def test_pandas_and_pyarrow_read_bgdl_urls(nginx, tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    frame = pd.DataFrame({"x": range(1000), "y": [f"row {i}" for i in range(1000)]})
    parquet = io.BytesIO()
    frame.to_parquet(parquet)
    csv_url = nginx.publish("frame.csv", frame.to_csv(index=False).encode())
    parquet_url = nginx.publish("frame.parquet", parquet.getvalue())
    options = {"bgdl": {"cache_storage": str(tmp_path / "cache"), "identifier": "pandas"}}
    pd.testing.assert_frame_equal(pd.read_csv("bgdl::" + csv_url, storage_options=options), frame)
    pd.testing.assert_frame_equal(pd.read_parquet("bgdl::" + parquet_url, storage_options=options), frame)
    assert (tmp_path / "cache" / bgdl_fsspec.cache_path_for(parquet_url)).exists()


def test_get_of_many_files_is_one_session_with_a_callback(nginx, tmp_path):
    from fsspec.callbacks import Callback

    urls = [nginx.publish(f"part-{i}.bin", bytes([i]) * (10_000 + i)) for i in range(12)]
    fs = fsspec.filesystem("bgdl", target_protocol="http", identifier="get-many")
    callback = Callback()
    fs.get(urls, str(tmp_path / "local") + "/", callback=callback)
    assert sorted(p.name for p in (tmp_path / "local").iterdir()) == sorted(
        [f"part-{i}.bin" for i in range(12)] + [".bgdl-manifest.json"])
    assert (callback.size, callback.value) == (12, 12)
    session = bg.Session(bg.Configuration.background("get-many"))
    try:
        assert len(session.all_tasks()) == 12  # one session holds them all
    finally:
        session.close()
    fs.get(urls[0], str(tmp_path / "one.bin"))  # one URL to a file name
    assert (tmp_path / "one.bin").read_bytes() == bytes([0]) * 10_000


def test_info_ls_and_exists_go_to_the_target(nginx, tmp_path):
    url = nginx.publish("here.bin", b"x" * 123)
    fs = fsspec.filesystem("bgdl", target_protocol="http", cache_storage=str(tmp_path / "cache"))
    assert fs.info(url)["size"] == 123
    assert fs.exists(url) and not fs.exists(nginx.base_url + "/missing.bin")
    assert not (tmp_path / "cache").exists()  # asking downloads nothing
    with pytest.raises(bg.InvalidInput, match="http"):
        fsspec.filesystem("bgdl", target_protocol="memory")


CHILD = textwrap.dedent("""
    import sys, fsspec
    with fsspec.open("bgdl::" + sys.argv[1], bgdl={"cache_storage": sys.argv[2], "identifier": "killed"}) as f:
        print(len(f.read()))
""")


def test_a_kill_mid_file_then_the_same_open_continues_with_a_range_request(origin, tmp_path, state_dir):
    size = 16 * MB
    url = origin.url("big.bin", size, rate=4 * MB)
    cache = tmp_path / "cache"
    got = kill_mid_file_and_run_again(origin, "big.bin", CHILD, url, str(cache), state_dir=state_dir,
                                      at_least=4 * MB)
    assert got.returncode == 0, got.stderr
    assert got.stdout.split() == [str(size)]
    local = cache / bgdl_fsspec.cache_path_for(url)
    assert hashlib.sha256(local.read_bytes()).hexdigest() == origin.sha256("big.bin", size)
    ranges = [r.headers.get("Range") for r in origin.requests_for("big.bin") if r.method == "GET"]
    assert any(r and not r.startswith("bytes=0-") for r in ranges), ranges  # continued, not from byte 0


def test_read_while_downloading_reads_a_parquet_column_through_bg_open(nginx, tmp_path):
    """``bgdl={"read_while_downloading": True}``: pandas reads the footer and one column of
    a Parquet file while it downloads (read_wait rows show the reads that waited), and the
    whole file lands afterwards."""
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    import numpy as np

    rng = np.random.default_rng(7)
    frame = pd.DataFrame({name: rng.random(1_000_000) for name in "abcd"})
    parquet = io.BytesIO()
    frame.to_parquet(parquet, row_group_size=250_000, compression=None)
    nginx.publish("wide.parquet", parquet.getvalue())
    url = f"{nginx.base_url}/limited/wide.parquet"
    options = {"bgdl": {"cache_storage": str(tmp_path / "cache"), "identifier": "rwd", "read_while_downloading": True,
                        "read_timeout": 60}}
    column = pd.read_parquet("bgdl::" + url, columns=["c"], storage_options=options)
    assert column["c"].equals(frame["c"])
    session = bg.Session(bg.Configuration.background("rwd"))
    try:
        [task] = session.all_tasks()
        events = session.events
        assert (events.event == "read_wait").any(), events.event.value_counts()
        local = task.wait(60)
    finally:
        session.close()
    assert hashlib.sha256(local.read_bytes()).digest() == hashlib.sha256(parquet.getvalue()).digest()
