"""Checks of a task's input that run before any I/O and need no HTTP library: the
service-mode command line and a notebook that only talks to the transfer service
validate URLs, headers, destinations and begin dates without importing aiohttp (a third
of a second). A destination is looked at (its folder, its name's length, whether it
exists) but nothing is created."""

from __future__ import annotations

import datetime as _dt
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from ._exceptions import InvalidDestination, InvalidInput, UnsupportedURL
from ._files import name_max, nearest_existing
from ._redact import redact_url

__all__ = ["check_destination", "check_headers", "check_url", "timestamp"]

_UNSAFE_CHARACTERS = re.compile(r"[\s\x00-\x1f]")  # whitespace (any script's) and control characters


def check_url(url: object, *, what: str = "URL") -> str:
    """Return ``url`` if it is an absolute http(s) URL, else raise UnsupportedURL."""
    if not isinstance(url, str):
        raise UnsupportedURL(f"{what} must be a string, not {type(url).__name__}")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for a bad port
    except ValueError as exc:
        raise UnsupportedURL(f"{what} {url!r} is malformed ({exc})", url=url) from None
    del port
    if parts.scheme.lower() not in ("http", "https"):
        shown = parts.scheme or "no scheme"
        raise UnsupportedURL(
            f"{what} {url!r} uses {shown}; only http:// and https:// URLs can be downloaded", url=url)
    if not parts.hostname:
        raise UnsupportedURL(f"{what} {url!r} has no host name", url=url)
    if _UNSAFE_CHARACTERS.search(url):
        raise UnsupportedURL(f"{what} {url!r} contains whitespace or control characters; "
                             "percent-encode them", url=url)
    return url


_OWN_HEADERS = {"range": "Range", "if-range": "If-Range", "accept-encoding": "Accept-Encoding"}


def check_headers(url: str, headers: Mapping[str, str]) -> None:
    """Refuse request headers that would make the result wrong, before any I/O."""
    for name in headers:
        own = _OWN_HEADERS.get(name.lower())
        if own is not None:
            raise InvalidInput(
                f"a {own} header cannot be set on a download task: bgdl_nb sets it itself to continue "
                "interrupted downloads and to keep the bytes as the server stores them. Download the whole "
                "file (and slice it afterwards), or use a plain HTTP client for a byte range")
        if name.lower() == "authorization" and "@" in urlsplit(url).netloc:
            raise InvalidInput(f"{redact_url(url)} carries credentials (user:password@) and the request has an "
                               "Authorization header too: keep one of them")


def check_destination(destination: str | os.PathLike[str], *, overwrite: bool,
                      folders: dict[Path, tuple[Path, int]] | None = None) -> Path:
    """Validate a destination file path without creating anything. ``folders`` keeps what
    was learnt of each folder (its nearest existing ancestor, writable, and its name limit)
    across the destinations of one call, so a batch checks each folder once."""
    path = Path(destination).expanduser().absolute()
    known = None if folders is None else folders.get(path.parent)
    parent, limit = known or (nearest_existing(path.parent), 0)
    if known is None:
        limit = name_max(parent)
    if len(os.fsencode(path.name)) > limit:
        raise InvalidDestination(f"the file name {path.name[:40]}… is {len(os.fsencode(path.name))} bytes long; this "
                                 f"file system allows {limit}: choose a shorter name")
    try:
        mode: int | None = os.stat(path).st_mode
    except OSError:
        mode = None
    if mode is not None and stat.S_ISDIR(mode):
        raise InvalidDestination(f"destination {path} is a directory; give a file path inside it")
    if known is None:
        if not parent.is_dir():
            raise InvalidDestination(f"destination {path} cannot be created: {parent} is not a directory")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise InvalidDestination(f"destination {path} is not writable (no write permission on {parent})")
        if folders is not None:
            folders[path.parent] = (parent, limit)
    if mode is not None and not overwrite:
        raise InvalidDestination(
            f"destination {path} already exists and was left untouched; remove it, choose another path, "
            "or pass overwrite=True to replace it atomically once the download is complete")
    return path


def timestamp(value: float | _dt.datetime | None) -> float | None:
    """``earliest_begin_date`` as seconds since the epoch (a naive datetime is local time)."""
    if value is None or isinstance(value, (int, float)):
        return value
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.astimezone()
        return value.timestamp()
    raise InvalidInput(f"earliest_begin_date must be a datetime or seconds since the epoch, not {value!r}")
