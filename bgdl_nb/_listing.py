"""Lists of files to fetch, read in: ``fetch(manifest=...)``.

A listing says, per file, where it comes from and what it should be: ``url``, ``path``
(relative to the destination folder), ``size``, ``etag`` and ``hash``. It is read from a
list of dicts, a JSON or JSON Lines file, the ``files`` of a Zenodo record, the
``siblings`` of a Hugging Face-style snapshot, or a pooch registry file (``name hash
[url]`` per line). Field names of those shapes are understood (``key``, ``rfilename``,
``checksum``, ``lfs.sha256``, ``links.self``...); a URL that is not absolute is joined to
``base_url``. Everything is checked before any request: a path that leaves the folder,
a name of bgdl_nb's own, two entries for one file or a bad digest is an
:class:`~bgdl_nb.InvalidInput` naming the entry.
"""

from __future__ import annotations

import email.message
import hashlib
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urljoin, urlsplit

import orjson

from ._checks import check_url
from ._digests import Digest, expected_digests
from ._exceptions import InvalidDestination, InvalidInput
from ._redact import redact_url

if TYPE_CHECKING:
    from ._manifest import Manifest
    from ._task import DownloadTask

__all__ = ["Wanted", "check_relative_path", "file_name_for", "read_listing", "safe_name", "served_name", "server_file_name",
           "unique_names", "wanted_files"]

_CONTROL = re.compile(r"[\x00-\x1f\x7f\\]")
_SAFE = re.compile(r"[^A-Za-z0-9._+-]")


def safe_name(raw: str) -> str:
    """``raw`` as one file name of ours: unsafe characters replaced, never hidden, at most
    200 characters ("" when nothing is left). URL names, server names and cache folders
    all pass here."""
    return _SAFE.sub("_", raw).lstrip(".")[:200]


def file_name_for(url: str) -> str:
    """A safe file name from the URL's last path segment (never a path, never hidden)."""
    return safe_name(unquote(urlsplit(url).path.rsplit("/", 1)[-1])) or "download"


def unique_names(urls: Sequence[str]) -> list[str]:
    names = [file_name_for(u) for u in urls]
    counts: dict[str, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    result = []
    for url, name in zip(urls, names):
        if counts[name] > 1:  # same last segment from different URLs: keep both, tell them apart
            stem, dot, ext = name.partition(".")
            name = f"{stem}-{hashlib.sha256(url.encode()).hexdigest()[:8]}{dot}{ext}"
        result.append(name)
    return result



@dataclass(frozen=True)
class Wanted:
    """One file a listing asks for."""

    url: str
    path: str                      # relative to the destination folder, with "/" between folders
    size: int | None = None
    etag: str | None = None
    digest: Digest | None = None


def check_relative_path(path: str, where: str) -> str:
    """``path`` as a clean relative path inside the destination folder, or InvalidInput."""
    if not path or _CONTROL.search(path) or path.startswith("/"):
        raise InvalidInput(f"{where}: path {path!r} must be a relative path with '/' between folders, without "
                           "control characters or backslashes")
    parts = PurePosixPath(path).parts
    for part in parts:
        if part in ("..", ".") or part.startswith(".bgdl"):
            raise InvalidInput(f"{where}: path {path!r} may not contain '{part}' (it must stay inside the "
                               "destination folder and not use bgdl_nb's own names)")
    return "/".join(parts)


def _field(entry: Mapping[str, Any], *names: str) -> Any:
    """The first of ``names`` that ``entry`` has; ``a.b`` looks inside a nested dict."""
    for name in names:
        value: Any = entry
        for key in name.split("."):
            value = value.get(key) if isinstance(value, Mapping) else None
        if value not in (None, ""):
            return value
    return None


def _entry(raw: Any, where: str, base_url: str | None) -> Wanted:
    if isinstance(raw, str):
        raw = {"url": raw}
    if not isinstance(raw, Mapping):
        raise InvalidInput(f"{where}: an entry must be a URL or a dict with 'url' and 'path', not {type(raw).__name__}")
    path = _field(raw, "path", "key", "filename", "rfilename", "name")
    url = _field(raw, "url", "links.self", "links.download", "download_url")
    if url is None and path is not None and base_url:
        url = str(path)
    if url is None:
        raise InvalidInput(f"{where}: no 'url' (and no base_url to join its path to); give one")
    url = str(url)
    if not urlsplit(url).scheme:
        if not base_url:
            raise InvalidInput(f"{where}: {url!r} is not an absolute URL; pass base_url= (bgdl fetch --base-url) "
                               "to join it to")
        url = urljoin(base_url if base_url.endswith("/") else base_url + "/", url)
    if path is None:
        path = file_name_for(url)
    size = _field(raw, "size", "lfs.size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise InvalidInput(f"{where}: size must be a whole number of bytes, not {size!r}")
    known = _field(raw, "hash", "checksum", "sha256", "lfs.sha256", "digest")
    digest = None if known is None else Digest.parse(known, f"the digest of {where}")
    etag = _field(raw, "etag", "ETag")
    return Wanted(url, check_relative_path(str(path), where), size, None if etag is None else str(etag), digest)


def _records(source: str | os.PathLike[str]) -> tuple[list[Any], str | None]:
    path = Path(source).expanduser()
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read the listing {path}: {exc.strerror or exc}") from None
    name = path.name.lower()
    try:
        if name.endswith((".jsonl", ".ndjson")):
            return [orjson.loads(line) for line in text.splitlines() if line.strip()], None
        if name.endswith(".json"):
            data = orjson.loads(text)
            if isinstance(data, Mapping):
                base = data.get("base_url")
                return _listed(data, path), str(base) if base else None
            return list(data) if isinstance(data, list) else [data], None
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the listing {path} is not valid JSON ({exc}); fix it or give a list") from None
    return _registry_lines(text.decode("utf-8", "replace"), path), None


def _listed(data: Mapping[str, Any], path: Path) -> list[Any]:
    for key in ("files", "siblings", "entries"):
        if isinstance(data.get(key), list):
            return list(data[key])
    raise InvalidInput(f"the listing {path} has no 'files' (nor 'siblings') list; give a list of entries")


def _registry_lines(text: str, path: Path) -> list[Any]:
    """A pooch registry file: ``name hash [url]`` per line, ``#`` comments."""
    out: list[Any] = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) not in (2, 3):
            raise InvalidInput(f"{path}, line {number}: a registry line is 'name hash' or 'name hash url', "
                               f"got {len(parts)} fields")
        entry = {"path": parts[0], "hash": parts[1]}
        if len(parts) == 3:
            entry["url"] = parts[2]
        out.append(entry)
    return out


def read_listing(source: str | os.PathLike[str] | Iterable[Any], base_url: str | None = None) -> list[Wanted]:
    """The files ``source`` lists (see the module's text), checked, in order."""
    if isinstance(source, (str, os.PathLike)):
        raw, base = _records(source)
        base_url = base_url or base
        label = str(source)
    elif isinstance(source, Mapping):
        raw, label = _listed(source, Path("<dict>")), "the listing"
        base_url = base_url or source.get("base_url")
    else:
        raw, label = list(source), "the listing"
    wanted = [_entry(item, f"{label}, entry {i + 1}", base_url) for i, item in enumerate(raw)]
    seen: dict[str, int] = {}
    for i, item in enumerate(wanted):
        for key in (item.path.lower(), item.url):
            if key in seen:
                raise InvalidInput(f"{label}: entries {seen[key] + 1} and {i + 1} are the same file "
                                   f"({item.path if key != item.url else item.url}); list each file once")
            seen[key] = i
    if not wanted:
        raise InvalidInput(f"{label} lists no files")
    return wanted


def server_file_name(headers: Mapping[str, str]) -> str | None:
    """The file name of a ``Content-Disposition`` header (RFC 6266, ``filename*`` too),
    made safe as a URL's name is: its last segment only, no hidden name; None without one."""
    value = next((v for k, v in headers.items() if k.lower() == "content-disposition"), None)
    if not value:
        return None
    message = email.message.EmailMessage()
    try:
        message["content-disposition"] = value
        raw = message.get_filename()
    except (ValueError, TypeError, IndexError):  # a header that does not parse names nothing
        return None
    if not raw:
        return None
    return safe_name(str(raw).replace("\\", "/").rsplit("/", 1)[-1]) or None


def served_name(task: DownloadTask, path: Path, name: str, manifest: Manifest,
                overwrite: bool) -> tuple[Path, str | None]:
    """Move a finished file to the name its server gave it (``name_from_server=True``):
    the new path and its name relative to the destination folder (None: the server gave
    none, the file stays). Another file under that name is never replaced unless it is
    ours from the same URL or ``overwrite`` says so."""
    served = server_file_name(task.response.headers) if task.response is not None else None
    if served is None:
        return path, None
    folder, _, _ = name.rpartition("/")
    new_name = f"{folder}/{served}" if folder else served
    target = path.parent / served
    if new_name == name:
        return path, new_name
    entry = manifest.files.get(new_name)
    url = task.original_request.url
    ours = entry is not None and (entry.url == redact_url(url) or (entry.sha256 == task.sha256 and entry.matches(target)))
    if target.exists() and not overwrite and not ours:  # another file there: kept, unless it is this one already
        raise InvalidDestination(f"{redact_url(url)}: its server names it {served}, but {target} exists and is not "
                                 f"this URL's; the download was kept as {path}. Remove {target}, or pass "
                                 "overwrite=True to replace it")
    os.replace(path, target)
    return target, new_name


def wanted_files(urls: str | Iterable[str] | None, manifest: Any, base_url: str | None, sha256: object,
            hashes: object) -> tuple[list[Wanted], list[int]]:
    """The files asked for, each once, and the position of each given URL among them
    (checked, before any I/O)."""
    if manifest is not None:
        if urls is not None:
            raise InvalidInput("give either urls or manifest=, not both (a listing names its URLs)")
        if sha256 is not None or hashes is not None:
            raise InvalidInput("the digests of a listing go in its entries ('hash' or 'checksum'), not in "
                               "sha256= or hashes=")
        listed = read_listing(manifest, base_url)
        for item in listed:
            check_url(item.url)
        return listed, list(range(len(listed)))
    if urls is None:
        raise InvalidInput("fetch() needs URLs (or manifest= with a listing of them)")
    if base_url is not None:
        raise InvalidInput("base_url= is joined to the entries of manifest=; give full URLs without it")
    url_list = [urls] if isinstance(urls, str) else list(urls)
    for url in url_list:
        check_url(url)
    digests = expected_digests(url_list, sha256, hashes)
    order = list(dict.fromkeys(url_list))  # the same URL twice: one task, one file, the same path for both
    chosen: dict[str, Digest | None] = dict.fromkeys(order)
    for url, digest in zip(url_list, digests):
        if digest is not None:
            if chosen[url] not in (None, digest):
                raise InvalidInput(f"{url} is given twice with different digests")
            chosen[url] = digest
    position = {url: i for i, url in enumerate(order)}
    return ([Wanted(url, name, digest=chosen[url]) for url, name in zip(order, unique_names(order))],
            [position[url] for url in url_list])
