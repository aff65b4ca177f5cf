"""Digests of any algorithm (pooch's ``alg:hex``): checked like sha256 on a real origin,
in both hosts and on the command line; bad digests are refused before any I/O."""

from __future__ import annotations

import hashlib

import pytest
from conftest import run_cli

import bgdl_nb as bg
from bgdl_nb._digests import Digest

SIZE = 300_000


def _truth(origin, name: str, tmp_path) -> bytes:
    """The resource's bytes, fetched once and checked against the origin's own sha256."""
    path = bg.fetch([origin.url(name, SIZE)], tmp_path / "truth", sha256=origin.sha256(name, SIZE), progress=False)[0]
    return path.read_bytes()


@pytest.mark.parametrize("algorithm", ["md5", "sha1", "sha256", "sha512", "blake2b"])
@pytest.mark.parametrize("use_service", [False, True])
def test_every_algorithm_verifies_and_a_mismatch_keeps_nothing(origin, tmp_path, algorithm, use_service):
    data = _truth(origin, "d.bin", tmp_path)
    right = f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"
    wrong = f"{algorithm}:{hashlib.new(algorithm, data + b'x').hexdigest()}"
    config = bg.Configuration.background(f"dig-{algorithm}-{use_service}", use_service=use_service)
    with bg.Session(config) as session:
        good = session.download_task(origin.url("d.bin", SIZE), tmp_path / "good.bin", hash=right).resume()
        assert good.wait(60).read_bytes() == data
        bad = session.download_task(origin.url("d.bin", SIZE), tmp_path / "bad.bin", hash=wrong).resume()
        with pytest.raises(bg.ChecksumMismatch) as mismatch:
            bad.wait(60)
    assert not (tmp_path / "bad.bin").exists() and not list(tmp_path.glob(".bad.bin*"))  # nothing kept
    assert algorithm in str(mismatch.value) and Digest.parse(mismatch.value.expected) == Digest.parse(wrong)


def test_fetch_takes_hashes_and_bare_hex_is_sha256(origin, tmp_path):
    data = _truth(origin, "f.bin", tmp_path)
    urls = [origin.url("f.bin", SIZE), origin.url("f.bin", SIZE, v=2)]
    paths = bg.fetch(urls, tmp_path / "out", progress=False,
                     hashes={urls[0]: "md5:" + hashlib.md5(data).hexdigest(), urls[1]: hashlib.sha256(data).hexdigest()})
    assert [p.read_bytes() for p in paths] == [data, data]


def _given(algorithm: str, url: str, data: bytes) -> dict:
    """The digest of ``data`` as a caller gives it: sha256= for a sha256, hashes= for the others."""
    hexdigest = hashlib.new(algorithm, data).hexdigest()
    return {"sha256": {url: hexdigest}} if algorithm == "sha256" else {"hashes": {url: f"{algorithm}:{hexdigest}"}}


@pytest.mark.parametrize("algorithm", ["sha1", "sha256"])
def test_a_digest_given_on_a_rerun_is_checked_against_the_file_already_there(origin, tmp_path, algorithm):
    """The first run had no digest; the second gives one the file does not match: the file
    is fetched again, and since the origin's bytes do not match either, nothing is kept
    under the old promise: the call fails with ChecksumMismatch."""
    data = _truth(origin, "r.bin", tmp_path)
    url = origin.url("r.bin", SIZE)
    [path] = bg.fetch([url], tmp_path / "out", progress=False)
    with pytest.raises(bg.FetchError) as failed:
        bg.fetch([url], tmp_path / "out", progress=False, **_given(algorithm, url, b"other"))
    assert isinstance(failed.value.errors[url], bg.ChecksumMismatch)
    assert path.read_bytes() == data  # the file that was there is left as it was
    again = bg.fetch([url], tmp_path / "out", progress=False, **_given(algorithm, url, data))
    assert again == [path]  # the right digest: it is the file, nothing to fetch


def test_a_file_that_matches_the_digest_given_is_adopted(origin, tmp_path):
    data = _truth(origin, "a.bin", tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.bin").write_bytes(data)  # put there by hand, not by bgdl_nb
    url = origin.url("a.bin", SIZE)
    before = len(origin.requests_for("a.bin"))
    assert bg.fetch([url], out, progress=False, hashes={url: "blake2b:" + hashlib.blake2b(data).hexdigest()}) \
        == [out / "a.bin"]
    assert len(origin.requests_for("a.bin")) == before  # no request: the digest vouches for it


@pytest.mark.parametrize("value, says", [
    ("md4:" + "0" * 32, "names 'md4'"),
    ("md5:" + "0" * 31, "md5 digests are 32 hex digits"),
    ("sha512:" + "z" * 128, "not all hex"),
    ("abc", "sha256 digests are 64 hex digits"),
])
def test_a_bad_digest_is_refused_before_any_request(origin, tmp_path, value, says):
    url = origin.url("never.bin", SIZE)
    with pytest.raises(bg.InvalidInput, match=says):
        bg.fetch([url], tmp_path / "out", hashes={url: value}, progress=False)
    with bg.Session() as session, pytest.raises(bg.InvalidInput, match=says):
        session.download_task(url, tmp_path / "x", hash=value)
    assert origin.requests_for("never.bin") == [] and not (tmp_path / "out").exists()


def test_sha256_and_hash_must_agree():
    with pytest.raises(bg.InvalidInput, match="two different digests"):
        bg.fetch(["http://127.0.0.1:9/x"], "never", sha256="0" * 64, hashes="sha256:" + "1" * 64)
    with pytest.raises(bg.InvalidInput, match="pass md5"):
        bg.fetch(["http://127.0.0.1:9/x"], "never", sha256="md5:" + "0" * 32)


def test_the_command_line_takes_hash(origin, tmp_path):
    data = _truth(origin, "c.bin", tmp_path)
    url = origin.url("c.bin", SIZE)
    ok = run_cli("fetch", url, "-o", str(tmp_path / "cli"), "--hash", "md5:" + hashlib.md5(data).hexdigest(), "-q")
    assert ok.returncode == 0, ok.stderr
    bad = run_cli("fetch", url, "-o", str(tmp_path / "cli2"), "--hash", "md5:" + "0" * 32, "-q")
    assert bad.returncode == 1 and "md5" in bad.stderr
    typo = run_cli("fetch", url, "-o", str(tmp_path / "cli3"), "--hash", "md5:xyz")
    assert typo.returncode == 2 and typo.stderr.count("\n") == 1


def test_digest_parsing():
    assert str(Digest.parse("SHA1:" + "A" * 40)) == "sha1:" + "a" * 40
    assert Digest.parse("b" * 64) == Digest("sha256", "b" * 64)


def test_a_digest_given_on_a_rerun_reaches_a_download_still_under_way(origin, tmp_path):
    """The first call gave up waiting (the download goes on in the transfer service); the
    same call with a digest the file does not match makes that download end in a
    ChecksumMismatch, not in a file passed as verified."""
    url = origin.url("slow.bin", 6 * 1024 * 1024, rate=2 * 1024 * 1024)
    with pytest.raises(bg.FetchError, match="still downloading"):
        bg.fetch([url], tmp_path / "out", progress=False, timeout=0.5)
    with pytest.raises(bg.FetchError) as failed:
        bg.fetch([url], tmp_path / "out", progress=False, sha256="0" * 64)
    assert isinstance(failed.value.errors[url], bg.ChecksumMismatch)
    assert not (tmp_path / "out" / "slow.bin").exists()
