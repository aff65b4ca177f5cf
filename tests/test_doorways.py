"""The doorways of fetch(): listings in (manifest=), archives unpacked once and safely,
file names from the server, and an fsspec-style callback, against a real nginx."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import zipfile

import pytest

import bgdl_nb as bg
from bgdl_nb._listing import read_listing

from helpers import sha256_of


def _data(name: str, size: int) -> bytes:
    seed = hashlib.sha256(name.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def _events(identifier: str, kind: str) -> list[dict]:
    session = bg.Session(bg.Configuration.background(identifier))
    try:
        frame = session.events
    finally:
        session.close()
    return frame[frame["event"] == kind].to_dict("records")


# listings ----------------------------------------------------------------------------------


def test_a_listing_with_folders_sizes_and_digests_is_fetched_once(nginx, tmp_path):
    files = {"a.bin": _data("a", 50_000), "sub/b.bin": _data("b", 70_000), "sub/deep/c.bin": _data("c", 1_000)}
    urls = {name: nginx.publish(name, data) for name, data in files.items()}
    listing = tmp_path / "listing.json"
    listing.write_text(json.dumps([
        {"url": urls["a.bin"], "path": "a.bin", "size": 50_000, "hash": "md5:" + hashlib.md5(files["a.bin"]).hexdigest()},
        {"url": urls["sub/b.bin"], "path": "sub/b.bin", "size": 70_000,
         "hash": hashlib.sha256(files["sub/b.bin"]).hexdigest()},
        {"url": urls["sub/deep/c.bin"], "path": "sub/deep/c.bin"},
    ]))
    dest = tmp_path / "out"
    paths = bg.fetch(manifest=listing, dest=dest, identifier="listing", progress=False)
    assert paths == [dest / name for name in files]
    assert all(p.read_bytes() == files[name] for p, name in zip(paths, files))
    served = nginx.requests()
    assert bg.fetch(manifest=listing, dest=dest, identifier="listing", progress=False) == paths
    assert nginx.requests() == served  # present and matching: no request at all

    # the origin's a.bin changes; a listing that says so (new size) fetches it again, and only it
    files["a.bin"] = _data("a2", 60_000)
    nginx.publish("a.bin", files["a.bin"])
    entries = json.loads(listing.read_text())
    entries[0].update(size=60_000, hash=None)
    assert bg.fetch(manifest=entries, dest=dest, identifier="listing", progress=False) == paths
    assert paths[0].read_bytes() == files["a.bin"] and nginx.requests() == served + 1

    # an ETag other than the one recorded means another version too
    recorded = json.loads((dest / ".bgdl-manifest.json").read_text())["files"]["sub/b.bin"]["validator"]
    entries[1]["etag"] = '"not-' + recorded.strip('"') + '"'
    bg.fetch(manifest=entries, dest=dest, identifier="listing", progress=False)
    assert nginx.requests() == served + 2
    entries[1]["etag"] = recorded  # the recorded one: nothing to do
    bg.fetch(manifest=entries, dest=dest, identifier="listing", progress=False)
    assert nginx.requests() == served + 2


def test_listing_shapes_zenodo_hugging_face_jsonl_and_a_pooch_registry(tmp_path):
    zenodo = {"files": [{"key": "table.csv", "size": 12, "checksum": "md5:" + "a" * 32,
                         "links": {"self": "https://zenodo.example/api/records/1/files/table.csv/content"}}]}
    [entry] = read_listing(zenodo)
    assert (entry.url, entry.path, entry.size, str(entry.digest)) == (
        "https://zenodo.example/api/records/1/files/table.csv/content", "table.csv", 12, "md5:" + "a" * 32)

    snapshot = tmp_path / "snapshot.json"
    snapshot.write_text(json.dumps({"base_url": "https://hub.example/org/model/resolve/main", "siblings": [
        {"rfilename": "config.json"}, {"rfilename": "weights/model.safetensors",
                                       "lfs": {"sha256": "b" * 64, "size": 1 << 30}}]}))
    config, weights = read_listing(snapshot)
    assert config.url == "https://hub.example/org/model/resolve/main/config.json"
    assert (weights.path, weights.size, weights.digest.sha256) == ("weights/model.safetensors", 1 << 30, "b" * 64)

    lines = tmp_path / "files.jsonl"
    lines.write_text('{"url": "https://h.example/x.bin", "path": "x.bin"}\n\n{"url": "y.bin"}\n')
    x, y = read_listing(lines, base_url="https://h.example/data/")
    assert (x.url, y.url, y.path) == ("https://h.example/x.bin", "https://h.example/data/y.bin", "y.bin")

    registry = tmp_path / "registry.txt"
    registry.write_text("# name hash\nsst.nc " + "c" * 64 + "\nice.nc md5:" + "d" * 32 + " https://m.example/ice.nc\n")
    sst, ice = read_listing(registry, base_url="https://data.example/v1")
    assert (sst.url, sst.digest.sha256, ice.url, ice.digest.algorithm) == (
        "https://data.example/v1/sst.nc", "c" * 64, "https://m.example/ice.nc", "md5")


@pytest.mark.parametrize(("entries", "says"), [
    ([{"url": "https://h.example/a", "path": "../a"}], "'..'"),
    ([{"url": "https://h.example/a", "path": "/etc/a"}], "relative path"),
    ([{"url": "https://h.example/a", "path": ".bgdl-manifest.json"}], "bgdl_nb's own"),
    ([{"url": "https://h.example/a", "path": "a"}, {"url": "https://h.example/b", "path": "a"}], "same file"),
    ([{"path": "a"}], "no 'url'"),
    ([{"url": "a.bin"}], "base_url"),
    ([{"url": "https://h.example/a", "size": "big"}], "whole number"),
    ([{"url": "https://h.example/a", "hash": "md5:xyz"}], "digest"),
    ([{"url": "ftp://h.example/a"}], "ftp"),
    ([], "no files"),
])
def test_a_bad_listing_is_refused_before_any_io(tmp_path, entries, says):
    dest = tmp_path / "never"
    with pytest.raises(bg.InvalidInput, match=says):
        bg.fetch(manifest=entries, dest=dest, progress=False)
    assert not dest.exists()


def test_urls_and_a_listing_together_are_refused(tmp_path):
    with pytest.raises(bg.InvalidInput, match="not both"):
        bg.fetch(["https://h.example/a"], tmp_path, manifest=[{"url": "https://h.example/b"}])


# archives ----------------------------------------------------------------------------------


def _zip(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, target)
    return out.getvalue()


def _tar(members: dict[str, bytes], mode: str = "w:gz", links: dict[str, str] | None = None) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode=mode) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tf.addfile(info)
    return out.getvalue()


def test_archives_are_unpacked_once_and_their_members_returned(nginx, tmp_path):
    inside = {"readme.txt": b"hello\n", "data/table.csv": b"a,b\n1,2\n" * 1000}
    urls = [nginx.publish("bundle.zip", _zip(inside)), nginx.publish("bundle2.tar.gz", _tar(inside)),
            nginx.publish("rows.csv.gz", gzip.compress(b"x,y\n" * 5000)), nginx.publish("plain.bin", b"plain")]
    dest = tmp_path / "out"
    paths = bg.fetch(urls, dest, identifier="unpack", unpack=True, progress=False)
    assert paths == [dest / "bundle" / "readme.txt", dest / "bundle" / "data" / "table.csv",
                     dest / "bundle2" / "readme.txt", dest / "bundle2" / "data" / "table.csv",
                     dest / "rows.csv", dest / "plain.bin"]
    assert [p.read_bytes() for p in paths[:2]] == list(inside.values()) == [p.read_bytes() for p in paths[2:4]]
    assert paths[4].read_bytes() == b"x,y\n" * 5000
    assert (dest / "bundle.zip").exists()  # the archive itself stays, as downloaded
    entry = json.loads((dest / ".bgdl-manifest.json").read_text())["files"]["bundle.zip"]
    assert [(m[0], m[1]) for m in entry["members"]] == [("bundle/readme.txt", 6), ("bundle/data/table.csv", 8000)]
    rows = _events("unpack", "unpacked")
    assert len(rows) == 3 and {r["total_bytes_written"] for r in rows} >= {8006, 20000}
    assert all("member(s)" in r["detail"] for r in rows)
    assert any(r["detail"].endswith(": readme.txt 6, data/table.csv 8000") for r in rows)  # each member, its size

    stamps = [p.stat().st_mtime_ns for p in paths]
    served = nginx.requests()
    assert bg.fetch(urls, dest, identifier="unpack", unpack=True, progress=False) == paths
    assert [p.stat().st_mtime_ns for p in paths] == stamps and nginx.requests() == served
    assert len(_events("unpack", "unpacked")) == 3  # nothing extracted again

    paths[1].write_bytes(b"edited")  # a member changed: that archive is extracted again, and only it
    bg.fetch(urls, dest, identifier="unpack", unpack=True, progress=False)
    assert paths[1].read_bytes() == inside["data/table.csv"] and len(_events("unpack", "unpacked")) == 4

    nested = nginx.publish("nested.tar", _tar({"nested/a.txt": b"a", "nested/deeper/b.txt": b"b"}, "w"))
    assert bg.fetch(nested, dest, identifier="unpack", unpack=True, progress=False) == [
        dest / "nested" / "a.txt", dest / "nested" / "deeper" / "b.txt"]  # not nested/nested/...

    elsewhere = tmp_path / "extracted"
    moved = bg.fetch(urls[:1], dest, identifier="unpack", unpack=True, extract_dir=elsewhere, progress=False)
    assert moved == [elsewhere / "bundle" / "readme.txt", elsewhere / "bundle" / "data" / "table.csv"]


@pytest.mark.parametrize(("name", "archive", "says"), [
    ("up.tar", _tar({"../escaped.txt": b"x"}, "w"), "outside its folder"),
    ("abs.tar.xz", _tar({"/tmp/abs.txt": b"x"}, "w:xz"), "outside its folder"),
    ("link.tar.bz2", _tar({"ok.txt": b"x"}, "w:bz2", links={"passwd": "/etc/passwd"}), "a link"),
    ("link.zip", _zip({"ok.txt": b"x"}, links={"evil": "/etc/passwd"}), "symbolic link"),
    ("up.zip", _zip({"../../escaped.txt": b"x"}), "outside its folder"),
    ("broken.zip", b"PK\x03\x04 not really a zip", "could not be unpacked"),
], ids=lambda value: value if isinstance(value, str) and "." in value else "")
def test_an_unsafe_or_damaged_archive_extracts_nothing(nginx, tmp_path, name, archive, says):
    url = nginx.publish(name, archive)
    dest = tmp_path / "deep" / "out"
    with pytest.raises(bg.UnpackError, match=says):
        bg.fetch(url, dest, identifier="unsafe", unpack=True, progress=False)
    assert (dest / name).read_bytes() == archive  # the download is kept
    left = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")
                  if p.is_file() and not p.is_relative_to(nginx.prefix.parent))
    assert left == ["deep/out/.bgdl-manifest.json", f"deep/out/{name}"]  # nothing else, anywhere


def test_unpacking_never_replaces_a_file_it_did_not_extract(nginx, tmp_path):
    url = nginx.publish("notes.zip", _zip({"notes.txt": b"from the archive"}))
    dest = tmp_path / "out"
    (dest / "notes").mkdir(parents=True)
    (dest / "notes" / "notes.txt").write_bytes(b"my own notes")
    with pytest.raises(bg.UnpackError, match="not extracted by bgdl_nb"):
        bg.fetch(url, dest, identifier="mine", unpack=True, progress=False)
    assert (dest / "notes" / "notes.txt").read_bytes() == b"my own notes"
    [path] = bg.fetch(url, dest, identifier="mine", unpack=True, overwrite=True, progress=False)
    assert path.read_bytes() == b"from the archive"


# names from the server ----------------------------------------------------------------------


def test_file_names_from_content_disposition(nginx, tmp_path):
    nginx.publish("export", b"a,b\n1,2\n")
    nginx.publish("cv", b"cv")
    dest = tmp_path / "out"
    named, utf8, evil = bg.fetch([f"{nginx.base_url}/named/export", f"{nginx.base_url}/named-utf8/cv",
                                  f"{nginx.base_url}/named-evil/cv"], dest, identifier="named",
                                 name_from_server=True, progress=False)
    assert named == dest / "report-2026.csv" and named.read_bytes() == b"a,b\n1,2\n"
    assert utf8 == dest / "r_sum__final.csv"
    assert evil == dest / "bashrc"  # the last segment, not hidden, never outside the folder
    assert sorted(p.name for p in dest.iterdir()) == [".bgdl-manifest.json", "bashrc", "r_sum__final.csv",
                                                      "report-2026.csv"]
    recorded = json.loads((dest / ".bgdl-manifest.json").read_text())["files"]["report-2026.csv"]
    assert recorded["served_name"] is True and recorded["url"].endswith("/named/export")
    served = nginx.requests()
    assert bg.fetch(f"{nginx.base_url}/named/export", dest, identifier="named", name_from_server=True,
                    progress=False) == [named]
    assert nginx.requests() == served  # found under the server's name: no request
    # without the option the URL names the file, as always
    assert bg.fetch(f"{nginx.base_url}/named/export", dest, identifier="named",
                    progress=False) == [dest / "export"]


# progress callbacks ------------------------------------------------------------------------


def test_an_fsspec_callback_gets_a_child_per_file(nginx, tmp_path):
    fsspec_callbacks = pytest.importorskip("fsspec.callbacks")

    class Child(fsspec_callbacks.Callback):
        def __init__(self, path):
            super().__init__()
            self.path, self.closed = path, False

        def close(self):
            self.closed = True

    class Recording(fsspec_callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.children = []

        def branched(self, path_1, path_2, **kwargs):
            self.children.append(Child(path_2))
            return self.children[-1]

    sizes = {"one.bin": 300_000, "two.bin": 5_000}
    urls = [nginx.publish(name, _data(name, size)) for name, size in sizes.items()]
    callback = Recording()
    paths = bg.fetch(urls, tmp_path, identifier="callback", callback=callback, progress=False)
    assert callback.size == 2 and callback.value == 2
    assert [(c.path, c.size, c.value, c.closed) for c in callback.children] == [
        (str(p), sizes[p.name], sizes[p.name], True) for p in paths]
    again = Recording()
    bg.fetch(urls, tmp_path, identifier="callback", callback=again, progress=False)
    assert (again.size, again.value, again.children) == (2, 2, [])  # both were already here
    assert sha256_of(paths[0]) == hashlib.sha256(_data("one.bin", 300_000)).hexdigest()
