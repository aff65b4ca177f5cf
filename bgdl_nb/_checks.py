"""Checks of a task's input that run before any I/O and need no HTTP library: the
service-mode command line and a notebook that only talks to the transfer service
validate URLs and headers without importing aiohttp (a third of a second)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import urlsplit

from ._exceptions import InvalidInput, UnsupportedURL
from ._redact import redact_url

__all__ = ["check_headers", "check_url"]

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
