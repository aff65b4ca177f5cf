"""``fetch(unpack=True)``: archives extracted once, safely, and recorded.

zip and tar (plain, .gz, .bz2, .xz) archives are extracted into a folder named after the
archive, beside it (or into ``extract_dir``), without a second folder of that name when
every member is inside one (``data.zip`` holding ``data/...``); a single compressed file
(.gz, .bz2, .xz) is decompressed beside it without its suffix. Safety comes first: every member is
checked before anything is written (no absolute path, no ``..``, no link of any kind, no
device), tar members also pass Python's ``data`` extraction filter, and the space they
need is compared with what the file system has. Members are written under a temporary
folder beside the target and moved into place one by one, so a member is never seen
half-written.

The manifest entry of the archive records its members (path relative to the
destination folder, size, mtime) and the archive's digest at extraction: the same fetch
again with the archive and members unchanged extracts nothing.
"""

from __future__ import annotations

import bz2
import contextlib
import dataclasses
import gzip
import io
import lzma
import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from ._exceptions import DiskFull, UnpackError
from ._files import nearest_existing
from ._redact import redact_url

if TYPE_CHECKING:
    from ._config import Configuration
    from ._manifest import Manifest, ManifestEntry

__all__ = ["archive_kind", "unpack_files"]

_TARS = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tbz", ".tar.xz", ".txz")
_SINGLE: dict[str, Callable[[str], io.BufferedIOBase]] = {
    ".gz": gzip.GzipFile, ".bz2": bz2.BZ2File, ".xz": lzma.LZMAFile,  # each opens a path for reading
}


def archive_kind(name: str) -> str | None:
    """``"zip"``, ``"tar"``, a single-file suffix (``".gz"``...) or None for other files."""
    lower = name.lower()
    if lower.endswith(".zip"):
        return "zip"
    if lower.endswith(_TARS):
        return "tar"
    return next((suffix for suffix in _SINGLE if lower.endswith(suffix)), None)


def _stem(name: str, kind: str) -> str:
    lower = name.lower()
    for suffix in (".zip", *sorted(_TARS, key=len, reverse=True), *_SINGLE):
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name + ".unpacked"


def _checked_name(name: str, archive: Path) -> str:
    """A member's path inside the target, or UnpackError when it would leave it."""
    clean = name.replace("\\", "/")
    parts = [p for p in PurePosixPath(clean).parts if p not in ("", ".")]
    if clean.startswith("/") or (parts and parts[0].endswith(":")) or ".." in parts or not parts:
        raise UnpackError(f"{archive.name}: member {name!r} would be written outside its folder; nothing was "
                          "extracted (the archive is kept)")
    if parts[0].startswith(".bgdl"):
        raise UnpackError(f"{archive.name}: member {name!r} uses a name of bgdl_nb's own; nothing was extracted")
    return "/".join(parts)


def _zip_members(archive: Path, zf: zipfile.ZipFile) -> Iterator[tuple[zipfile.ZipInfo, str]]:
    for info in zf.infolist():
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise UnpackError(f"{archive.name}: member {info.filename!r} is a symbolic link; bgdl_nb extracts no "
                              "links. Nothing was extracted (the archive is kept)")
        yield info, _checked_name(info.filename, archive)


def _tar_members(archive: Path, tf: tarfile.TarFile) -> Iterator[tuple[tarfile.TarInfo, str]]:
    for member in tf.getmembers():
        if not (member.isfile() or member.isdir()):
            what = "a link" if member.issym() or member.islnk() else "not a file or folder"
            raise UnpackError(f"{archive.name}: member {member.name!r} is {what}; bgdl_nb extracts only files and "
                              "folders. Nothing was extracted (the archive is kept)")
        yield member, _checked_name(member.name, archive)


def _room(archive: Path, target: Path, need: int) -> None:
    free = shutil.disk_usage(nearest_existing(target)).free
    if need > free:
        raise DiskFull(f"{archive.name} unpacks to {need} bytes but {nearest_existing(target)} has {free} free; free "
                       "some space or pass extract_dir= on a larger file system (the archive is kept)")


def _extract(archive: Path, kind: str, target: Path, replaceable: set[Path]) -> list[Path]:
    """Extract ``archive`` into ``target`` (a folder; for a single compressed file, the
    file to write): the member files written, in archive order. A file already at a
    member's place is replaced only when it is in ``replaceable``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".bgdl-unpack-", dir=target.parent) as scratch:
        work = Path(scratch)
        try:
            if kind in _SINGLE:
                with _SINGLE[kind](str(archive)) as source, open(work / "member", "wb") as sink:
                    shutil.copyfileobj(source, sink, 1 << 20)
                names = ["member"]
            else:
                names = _unpack_into(archive, kind, work)
        except (OSError, EOFError, zipfile.BadZipFile, tarfile.TarError, lzma.LZMAError) as exc:
            if isinstance(exc, OSError) and exc.errno == 28:
                raise DiskFull(f"no space left while unpacking {archive.name}; the archive is kept") from None
            raise UnpackError(f"{archive.name} could not be unpacked ({exc}); it is kept as downloaded. If it is "
                              "damaged, delete it and fetch again") from None
        places = [target] if kind in _SINGLE else [target / name for name in _unnested(names, target.name)]
        taken = [p for p in places if os.path.lexists(p) and p not in replaceable]
        if taken:
            raise UnpackError(f"{archive.name}: {taken[0]} exists and was not extracted by bgdl_nb "
                              f"({len(taken)} such file(s)); nothing was replaced. Remove them, pass "
                              "extract_dir= to unpack elsewhere, or overwrite=True to replace them")
        for name, destination in zip(names, places):  # each member moves into place whole
            destination.parent.mkdir(parents=True, exist_ok=True)
            os.replace(work / name, destination)
        return places


def _unnested(names: list[str], stem: str) -> list[str]:
    """Member names without a top folder named as the archive (``data.zip`` holding
    ``data/...`` unpacks to ``data/...``, not ``data/data/...``)."""
    if names and all(name.startswith(stem + "/") for name in names):
        return [name[len(stem) + 1:] for name in names]
    return names


def _unpack_into(archive: Path, kind: str, work: Path) -> list[str]:
    if kind == "zip":
        with zipfile.ZipFile(archive) as zf:
            zip_members = list(_zip_members(archive, zf))
            _room(archive, work, sum(info.file_size for info, _ in zip_members))
            for info, name in zip_members:
                if info.is_dir():
                    continue
                (work / name).parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as source, open(work / name, "wb") as sink:
                    shutil.copyfileobj(source, sink, 1 << 20)
            return [name for info, name in zip_members if not info.is_dir()]
    with tarfile.open(archive, "r:*") as tf:
        tar_members = list(_tar_members(archive, tf))
        _room(archive, work, sum(m.size for m, _ in tar_members))
        for member, name in tar_members:
            member.name = name
        extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tf.extractall(work, members=[m for m, _ in tar_members], **extra)  # type: ignore[arg-type]
        return [name for member, name in tar_members if member.isfile()]


def _target(archive: Path, name: str, kind: str, extract_dir: Path | None) -> Path:
    folder = extract_dir if extract_dir is not None else archive.parent
    return folder / _stem(PurePosixPath(name).name, kind)


def _recorded(entry: ManifestEntry | None, dest: Path) -> set[Path]:
    return set() if entry is None or entry.members is None else {dest / m[0] for m in entry.members}


def _unchanged(entry: ManifestEntry | None, dest: Path, where: str) -> list[Path] | None:
    """The members recorded for ``entry`` when they are all still as extracted, else None."""
    if entry is None or entry.members is None or entry.unpacked_sha256 != entry.sha256 \
            or entry.unpacked_to != where:
        return None
    paths = []
    for relative, size, mtime_ns in entry.members:
        path = dest / relative
        try:
            st = path.stat()
        except OSError:
            return None
        if st.st_size != size or st.st_mtime_ns != mtime_ns:
            return None
        paths.append(path)
    return paths


def unpack_files(paths: list[Path], names: list[str], manifest: Manifest, config: Configuration,
                 extract_dir: Path | None, overwrite: bool = False) -> list[list[Path]]:
    """Per fetched file: its extracted members (an archive) or itself (any other file)."""
    dest = manifest.path.parent
    out: list[list[Path]] = []
    done: list[tuple[str, list[Path], Path]] = []
    for path, name in zip(paths, names):
        kind = archive_kind(name)
        if kind is None:
            out.append([path])
            continue
        target = _target(path, name, kind, extract_dir)
        where = os.path.relpath(target, dest)
        entry = manifest.files.get(name)
        members = _unchanged(entry, dest, where)
        if members is None:
            replaceable = _recorded(entry, dest)
            if overwrite:
                replaceable |= _every_file(target, kind)
            members = _extract(path, kind, target, replaceable)
            if entry is not None:  # a new entry object: the manifest re-encodes only the entries it has not seen
                manifest.update(name, dataclasses.replace(
                    entry, members=[[os.path.relpath(m, dest), (st := m.stat()).st_size, st.st_mtime_ns]
                                    for m in members], unpacked_sha256=entry.sha256, unpacked_to=where))
            done.append((entry.url if entry is not None else name, members, target))
        out.append(members)
    if done:
        manifest.save()
        _note(config, done)
    return out


def _every_file(target: Path, kind: str) -> set[Path]:
    if kind in _SINGLE:
        return {target}
    return {p for p in target.rglob("*") if not p.is_dir()} if target.is_dir() else set()


def _note(config: Configuration, done: list[tuple[str, list[Path], Path]]) -> None:
    """One ``unpacked`` row per extracted archive in the session's event log."""
    from ._session import Session

    with contextlib.closing(Session(config)) as session:
        by_url = {redact_url(t.original_request.url): t.task_identifier for t in session.all_tasks()}
        for url, members, target in done:
            sizes = [(m, m.stat().st_size) for m in members]
            listed = ", ".join(f"{os.path.relpath(m, target) if m != target else m.name} {n}" for m, n in sizes[:20])
            more = f", and {len(sizes) - 20} more" if len(sizes) > 20 else ""
            total = sum(n for _, n in sizes)
            session._live_host.control("note_unpacked", by_url.get(url), total,
                                       f"{len(sizes)} member(s), {total} bytes, into {target}: {listed}{more}")
