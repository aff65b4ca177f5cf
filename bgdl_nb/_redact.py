"""Secrets never shown: credentials in URLs and request headers are replaced by
``REDACTED`` wherever bgdl_nb shows or logs them (error messages, event rows, ``repr``,
``bgdl list``/``events``, the manifest beside the data).

What counts as a secret: a URL's password (``user:pass@``), the value of a query
parameter whose name matches :data:`SECRET_QUERY_PARAMS` (case-insensitive, ``*`` as a
wildcard; a session's ``Configuration.secret_query_params`` adds names), and the
values of :data:`SECRET_HEADERS`. The real values stay where a resume needs them: the
journal in the private state directory (0600 files in a 0700 folder).
"""

from __future__ import annotations

import fnmatch
import re
import threading
from collections.abc import Iterable, Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["REDACTED", "SECRET_HEADERS", "SECRET_QUERY_PARAMS", "add_secret_params", "redact_headers", "redact_text",
           "redact_url", "same_file"]

REDACTED = "REDACTED"

SECRET_QUERY_PARAMS: tuple[str, ...] = (
    "token", "*_token", "access_token", "auth", "authorization", "key", "apikey", "api_key", "*_key",
    "secret", "*_secret", "password", "passwd", "pwd", "sig", "signature", "credential", "credentials",
    "x-amz-*", "x-goog-*", "awsaccesskeyid", "googleaccessid", "session", "sessionid", "jwt",
)
"""Query parameters whose values are secrets by default (S3, GCS and Azure presigned
URLs, API keys, OAuth tokens)."""

SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "x-api-key", "x-auth-token",
                            "private-token", "x-amz-security-token"})

_lock = threading.Lock()
_patterns: list[str] = [p.lower() for p in SECRET_QUERY_PARAMS]
_URL = re.compile(r"https?://[^\s'\"<>\]\)]*[^\s'\"<>\]\):,.;!?]", re.IGNORECASE)  # not a sentence's punctuation


def _compile(patterns: Iterable[str]) -> re.Pattern[str]:
    return re.compile("|".join(fnmatch.translate(p) for p in patterns))


_matcher = _compile(_patterns)  # every pattern in one expression: one match per query parameter


def add_secret_params(names: Iterable[str]) -> None:
    """Count more query parameter names as secrets, for this process (the set only grows)."""
    global _matcher
    with _lock:
        new = [name.lower() for name in names if name.lower() not in _patterns]
        if new:
            _patterns.extend(new)
            _matcher = _compile(_patterns)


def _secret(name: str) -> bool:
    return _matcher.match(name.lower()) is not None


def _may_hold_secrets(query: str) -> bool:
    """Whether a query string may name a secret: true for a secret name, and for any name
    written with escapes (``%``, ``+``), which only a full parse reads."""
    for pair in query.split("&"):
        name = pair.partition("=")[0]
        if "%" in name or "+" in name or _secret(name):
            return True
    return False


def same_file(url: str, other: str) -> bool:
    """Whether two URLs name one file: equal apart from their secret query values, as two
    links to one object signed at different times are."""
    return url == other or redact_url(url) == redact_url(other)


def redact_url(url: str) -> str:
    """``url`` with its password and secret query values replaced by ``REDACTED``."""
    if "@" not in url and "?" not in url:
        return url  # the common case, at no cost
    if "@" not in url and not _may_hold_secrets(url.partition("?")[2].partition("#")[0]):
        return url  # plain query names, none of them secret: no parsing
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{REDACTED}@{hostport}" if ":" in userinfo else f"{REDACTED}@{hostport}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(_secret(k) for k, _ in pairs):
            query = urlencode([(k, REDACTED if _secret(k) else v) for k, v in pairs], safe="*")
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str) -> str:
    """``text`` with every URL in it redacted (for messages and event details)."""
    if "://" not in text:
        return text
    return _URL.sub(lambda m: redact_url(m.group(0)), text)


def redact_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``headers`` with secret values replaced by ``REDACTED``."""
    return {k: (REDACTED if k.lower() in SECRET_HEADERS else v) for k, v in headers.items()}
