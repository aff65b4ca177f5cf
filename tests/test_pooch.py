"""The pooch doorway, with the real pooch against the suite's origin: retrieve, Pooch.fetch,
a registry of many files with sha256 and md5 hashes (also read from a file), prefetch, a
kill of the client and the service mid-file, is_available, and bad input."""

from __future__ import annotations

import hashlib
import textwrap

import pytest

import bgdl_nb as bg

from helpers import kill_mid_file_and_run_again

pooch = pytest.importorskip("pooch")
bgdl_pooch = pytest.importorskip("bgdl_nb.pooch")

MB = 1024 * 1024


def _registry(origin, count: int, size: int = 20_000) -> dict[str, str]:
    """``count`` files, every other one with an md5 hash, the others with a bare sha256."""
    out = {}
    for i in range(count):
        name = f"f{i:03d}.bin"
        data = _bytes(origin, name, size)
        out[name] = f"md5:{hashlib.md5(data).hexdigest()}" if i % 2 else hashlib.sha256(data).hexdigest()
    return out


def _bytes(origin, name: str, size: int) -> bytes:
    from bgdl_nb.demo.origin import content
    return b"".join(content(name, size))


def _pooch(origin, tmp_path, registry):
    base = origin.base_url + "/files/"
    return pooch.create(path=tmp_path / "cache", base_url=base, registry=registry,
                        urls={name: f"{base}{name}?size=20000" for name in registry})


def test_retrieve_with_the_downloader(origin, tmp_path):
    url = origin.url("one.bin", 300_000)
    path = pooch.retrieve(url, known_hash=origin.sha256("one.bin", 300_000), path=tmp_path / "cache",
                          downloader=bgdl_pooch.Downloader(progressbar=False))
    assert hashlib.sha256(open(path, "rb").read()).hexdigest() == origin.sha256("one.bin", 300_000)
    assert not (tmp_path / "cache" / bgdl_pooch.PARTIAL_FOLDER).exists()  # nothing left beside it


def test_pooch_fetch_and_prefetch_of_a_registry(origin, tmp_path):
    registry = _registry(origin, 20)
    data = _pooch(origin, tmp_path, registry)
    down = bgdl_pooch.Downloader(progressbar=False)
    first = data.fetch("f000.bin", downloader=down)  # one file through the downloader
    assert open(first, "rb").read() == _bytes(origin, "f000.bin", 20_000)
    paths = bgdl_pooch.prefetch(data, progress=False)  # the rest in one session
    assert [p.name for p in paths] == sorted(registry)
    served = len(origin.log)
    for name in registry:  # every fetch finds its file: no request, pooch checks the hash as usual
        assert open(data.fetch(name, downloader=down), "rb").read() == _bytes(origin, name, 20_000)
    assert len(origin.log) == served
    assert bgdl_pooch.prefetch(data, progress=False) == paths and len(origin.log) == served  # again: nothing


def test_a_registry_read_from_a_file_with_a_wrong_md5(origin, tmp_path):
    registry = _registry(origin, 4)
    registry["f001.bin"] = "md5:" + "0" * 32  # the file will not match
    listing = tmp_path / "registry.txt"
    listing.write_text("".join(f"{name} {known}\n" for name, known in registry.items()))
    data = _pooch(origin, tmp_path, {})
    data.load_registry(listing)
    data.urls = {name: f"{origin.base_url}/files/{name}?size=20000" for name in registry}
    with pytest.raises(bg.FetchError) as failed:
        bgdl_pooch.prefetch(data, progress=False)
    assert len(failed.value.errors) == 1 and isinstance(next(iter(failed.value.errors.values())), bg.ChecksumMismatch)
    assert not (data.abspath / "f001.bin").exists()  # nothing kept under the name
    assert sorted(p.name for p in data.abspath.iterdir() if p.is_file()) == ["f000.bin", "f002.bin", "f003.bin"]


def test_is_available(origin, tmp_path):
    data = _pooch(origin, tmp_path, {"here.bin": None, "gone.bin": None})
    data.urls["gone.bin"] = f"{origin.base_url}/files/gone.bin?size=10&status=404"
    down = bgdl_pooch.Downloader(progressbar=False)
    assert data.is_available("here.bin", downloader=down) is True
    assert data.is_available("gone.bin", downloader=down) is False


def test_bad_input_is_not_a_value_error_pooch_would_retry(tmp_path):
    down = bgdl_pooch.Downloader(progressbar=False)
    with pytest.raises(bg.BgdlError) as refused:
        down("ftp://127.0.0.1/x", str(tmp_path / "x"), None)
    assert not isinstance(refused.value, ValueError) and "ftp" in str(refused.value)
    with pytest.raises(bg.BgdlError, match="DOIDownloader"):
        down("doi:10.5281/zenodo.1/x.csv", str(tmp_path / "x"), None)


CHILD = textwrap.dedent("""
    import sys, pooch, bgdl_nb.pooch
    url, known, cache = sys.argv[1:4]
    print(pooch.retrieve(url, known_hash=known, path=cache, downloader=bgdl_nb.pooch.Downloader(progressbar=False)))
""")


def test_a_kill_mid_file_then_the_same_call_continues_with_a_range_request(origin, tmp_path, state_dir):
    """The client and the transfer service are killed with SIGKILL mid-file; the same
    pooch.retrieve continues the partial bytes, which pooch alone would have deleted."""
    size = 16 * MB
    url = origin.url("big.bin", size, rate=4 * MB)
    known = origin.sha256("big.bin", size)
    cache = tmp_path / "cache"
    got = kill_mid_file_and_run_again(origin, "big.bin", CHILD, url, known, str(cache), state_dir=state_dir,
                                      at_least=4 * MB)
    assert got.returncode == 0, got.stderr
    path = got.stdout.strip().splitlines()[-1]
    assert hashlib.sha256(open(path, "rb").read()).hexdigest() == known
    ranges = [r.headers.get("Range") for r in origin.requests_for("big.bin")]
    assert any(r and not r.startswith("bytes=0-") for r in ranges), ranges  # continued, not from byte 0
    assert origin.bytes_sent("big.bin") <= size + 4 * MB  # at most what was in flight at the kill
