"""``fetch()``: idempotent, verified, and careful with files it did not write."""

from __future__ import annotations

import asyncio
import json

import pytest

import bgdl_nb as bg
from bgdl_nb._fetch import file_name_for

from helpers import sha256_of

MB = 1024 * 1024


def test_fetch_is_idempotent_and_writes_a_manifest(origin, tmp_path):
    urls = [origin.url("one.csv", 300_000), origin.url("two.csv", 200_000)]
    paths = bg.fetch(urls, tmp_path, identifier="ds", progress=False)
    assert paths == [tmp_path / "one.csv", tmp_path / "two.csv"]
    assert sha256_of(paths[0]) == origin.sha256("one.csv", 300_000)
    manifest = json.loads((tmp_path / ".bgdl-manifest.json").read_text())["files"]
    entry = manifest["one.csv"]
    assert entry["url"] == urls[0] and entry["size"] == 300_000 and entry["sha256"] == sha256_of(paths[0])
    assert entry["validator"].startswith('"') and entry["completed"].endswith("+00:00")
    served = len(origin.log)
    assert bg.fetch(urls, tmp_path, identifier="ds", progress=False) == paths
    assert len(origin.log) == served  # nothing downloaded again
    session = bg.Session(bg.Configuration.background("ds"))
    assert len(session.all_tasks()) == 2  # and no task duplicated
    session.close()


def test_default_identifier_follows_the_destination(origin, tmp_path):
    url = origin.url("x.bin", 1000)
    bg.fetch(url, tmp_path, progress=False)
    assert bg.fetch(url, tmp_path, progress=False) == [tmp_path / "x.bin"]
    assert len(origin.log) == 1


def test_fetch_refuses_to_replace_a_file_it_did_not_write(origin, tmp_path):
    (tmp_path / "mine.txt").write_text("my notes")
    with pytest.raises(bg.InvalidDestination, match="not downloaded"):
        bg.fetch(origin.url("mine.txt", 100), tmp_path, progress=False)
    assert (tmp_path / "mine.txt").read_text() == "my notes" and origin.log == []


def test_fetch_adopts_an_existing_file_with_the_expected_digest(origin, tmp_path):
    from bgdl_nb.demo.origin import content
    (tmp_path / "have.bin").write_bytes(b"".join(content("have.bin", 5000)))
    paths = bg.fetch(origin.url("have.bin", 5000), tmp_path, sha256=origin.sha256("have.bin", 5000), progress=False)
    assert paths == [tmp_path / "have.bin"] and origin.log == []


def test_checksum_failure_raises_and_keeps_nothing(origin, tmp_path):
    url = origin.url("bad.bin", 5000)
    with pytest.raises(bg.FetchError, match="1 of 1") as info:
        bg.fetch(url, tmp_path, sha256="1" * 64, progress=False)
    assert isinstance(info.value.errors[url], bg.ChecksumMismatch)
    assert [p.name for p in tmp_path.iterdir()] in ([], [".bgdl-manifest.json"])


def test_http_error_raises_with_the_status(origin, tmp_path):
    with pytest.raises(bg.FetchError, match="HTTP 404"):
        bg.fetch(f"{origin.base_url}/files-missing/x", tmp_path, progress=False)


def test_same_file_name_from_two_urls_gets_two_files(origin, tmp_path):
    a = origin.url("same.bin", 100)
    b = origin.url("same.bin", 200)
    pa, pb = bg.fetch([a, b], tmp_path, progress=False)
    assert pa != pb and pa.stat().st_size == 100 and pb.stat().st_size == 200


@pytest.mark.parametrize("url, name", [
    ("http://h/a/..%2F..%2Fetc%2Fpasswd", "etc_passwd"),
    ("http://h/.bashrc", "bashrc"),
    ("http://h/", "download"),
    ("http://h/d/data%20set.csv?x=1", "data_set.csv"),
])
def test_file_names_never_escape_the_destination(url, name):
    assert file_name_for(url).endswith(name) and "/" not in file_name_for(url)


def test_fetch_async(origin, tmp_path):
    paths = asyncio.run(bg.fetch_async(origin.url("as.bin", 1000), tmp_path, progress=False))
    assert paths == [tmp_path / "as.bin"]


def test_bad_urls_fail_before_any_io(origin, tmp_path):
    with pytest.raises(bg.UnsupportedURL):
        bg.fetch([origin.url("ok", 10), "gopher://x/y"], tmp_path / "new", progress=False)
    assert origin.log == [] and not (tmp_path / "new").exists()


def test_a_file_finished_before_the_manifest_was_saved_is_recognised(origin, tmp_path):
    """The process stopped between a file's completion and the manifest's next save."""
    url = origin.url("late.bin", 5000)
    bg.fetch(url, tmp_path, identifier="late", progress=False)
    (tmp_path / ".bgdl-manifest.json").unlink()  # as if it was never written
    served = len(origin.log)
    assert bg.fetch(url, tmp_path, identifier="late", progress=False) == [tmp_path / "late.bin"]
    assert len(origin.log) == served
    assert "late.bin" in json.loads((tmp_path / ".bgdl-manifest.json").read_text())["files"]


def test_two_writers_of_one_manifest_never_lose_each_others_entries(tmp_path):
    """The shards of a cluster job (or two fetches into one folder) save one manifest: each
    save merges what the others saved since it was read."""
    from bgdl_nb._manifest import Manifest

    lock = tmp_path / "state" / "manifest.lock"
    for name in ("a.bin", "b.bin", "c.bin"):
        (tmp_path / name).write_bytes(name.encode())
    first, second = Manifest(tmp_path, lock), Manifest(tmp_path, lock)  # both read an empty folder
    first.adopt("a.bin", "http://127.0.0.1:1/a.bin", tmp_path / "a.bin", "0" * 64)
    first.save()
    second.adopt("b.bin", "http://127.0.0.1:1/b.bin", tmp_path / "b.bin", "1" * 64)
    second.save()
    first.adopt("c.bin", "http://127.0.0.1:1/c.bin", tmp_path / "c.bin", "2" * 64)
    first.save()
    assert sorted(Manifest(tmp_path).files) == ["a.bin", "b.bin", "c.bin"]
    assert not list(tmp_path.glob("*.lock"))  # the lock is kept with the state, not beside the data
