"""Resuming downloads, without I/O: validators, range decisions and the resume-data blob.

The seeds list five conditions for a download to continue where it stopped: the
resource has not changed, the request is a GET, the server sent an ETag or a
Last-Modified, it supports byte ranges, and the partial file is still there. This
module turns those into small pure functions:

* :func:`validator_from_headers` picks the validator a range request may rely on: a
  strong ETag, else a Last-Modified that RFC 9110 §8.8.2.2 lets count as strong (at
  least one second older than the response's Date). Weak ETags never qualify: If-Range
  requires a strong comparison.
* :func:`resume_headers` builds ``Range`` + ``If-Range``.
* :func:`decide` reads the answer to a request made at some offset and returns one
  :class:`Outcome` for every status: the body continues the partial file, replaces it
  from byte 0 (and why), completes it, is retried after a delay, or fails (204, 205, a
  206 nobody asked for and other 2xx without the file fail too: never a "success"
  without a file). :func:`retry_delay` and :func:`retry_after_seconds` are the backoff
  rules beside it.
  Appending is only ever allowed after an exact ``Content-Range`` match: bytes of two
  versions are never mixed.
* :func:`encode_resume_data` / :func:`decode_resume_data` produce and check the
  versioned blob of ``cancel_by_producing_resume_data``. It is signed with a per-user
  key (HMAC-SHA256), so altered data, including a swapped URL or partial-file path, is
  refused rather than trusted.
"""

from __future__ import annotations

import dataclasses
import email.utils
import enum
import hashlib
import hmac
import json
import os
import re
import secrets
import time as _time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._exceptions import InvalidResumeData
from ._private import private_dir, read_private_file
from ._redact import redact_headers, redact_url

__all__ = [
    "Decision",
    "Outcome",
    "ResumeState",
    "Validator",
    "decide",
    "decode_resume_data",
    "encode_resume_data",
    "load_key",
    "resume_headers",
    "retry_after_seconds",
    "retry_delay",
    "validator_from_headers",
]

RESUME_DATA_VERSION = 1
_MAGIC = b"BGDLRD"
_MAC_LEN = 32


@dataclass(frozen=True)
class Validator:
    """What If-Range sends: a strong ETag or a qualifying Last-Modified date."""

    kind: str  # "etag" or "last-modified"
    value: str


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def accepts_ranges(headers: Mapping[str, str]) -> bool:
    """True when the server advertises byte ranges (``Accept-Ranges: bytes``)."""
    value = _header(headers, "accept-ranges") or ""
    return "bytes" in [part.strip().lower() for part in value.split(",")]


def validator_from_headers(headers: Mapping[str, str]) -> Validator | None:
    """The validator a later range request may use, or ``None`` when there is none."""
    etag = _header(headers, "etag")
    if etag and not etag.startswith("W/") and etag.startswith('"') and etag.endswith('"'):
        return Validator("etag", etag)
    last_modified = _header(headers, "last-modified")
    if last_modified:
        modified = email.utils.parsedate_to_datetime(last_modified) if _parses(last_modified) else None
        date_header = _header(headers, "date")
        date = email.utils.parsedate_to_datetime(date_header) if date_header and _parses(date_header) else None
        if modified is not None and date is not None and (date - modified).total_seconds() >= 1:
            return Validator("last-modified", last_modified)
    return None


def _parses(value: str) -> bool:
    try:
        return email.utils.parsedate_to_datetime(value) is not None
    except (TypeError, ValueError):
        return False


def resume_headers(offset: int, validator: Validator | None) -> dict[str, str]:
    """Headers for a request that continues at ``offset`` (none when starting at 0)."""
    if offset <= 0 or validator is None:
        return {}
    return {"Range": f"bytes={offset}-", "If-Range": validator.value}


_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)
_UNSATISFIED = re.compile(r"^\s*bytes\s+\*/(\d+)\s*$", re.IGNORECASE)


class Outcome(str, enum.Enum):
    """What a response means for the task that asked for it."""

    APPEND = "append"      # the body continues the partial file at ``offset`` (0: a fresh file)
    RESTART = "restart"    # discard the partial file; with ``use_body`` the body is the file from byte 0
    COMPLETE = "complete"  # the partial file already holds the whole resource
    RETRY = "retry"        # a passing server condition (408, 425, 429, 5xx): ask again after a delay
    FAIL = "fail"          # no file can come of this response; ``client_error`` says whose fault


@dataclass(frozen=True)
class Decision:
    """What to do with a response.

    ``outcome`` is an :class:`Outcome`; ``total`` is the resource length when known;
    ``reason`` explains restarts and failures in words a user can act on. For
    ``FAIL``, ``client_error`` is True when the response could not be turned into a
    file (a 204, a part that was not asked for): the task fails with
    :class:`UnexpectedResponse`. Otherwise the server refused (a 404): seed semantics
    say the task completes without a client-side error and ``task.response`` tells.
    ``retry_after`` is the server's ``Retry-After`` in seconds, when it sent one.
    """

    outcome: Outcome
    offset: int = 0
    total: int | None = None
    reason: str = ""
    use_body: bool = True
    client_error: bool = False
    retry_after: float | None = None

    @property
    def action(self) -> Outcome:
        """The outcome (an older name, kept for readers of the decision)."""
        return self.outcome


def _content_length(headers: Mapping[str, str]) -> int | None:
    value = _header(headers, "content-length")
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


_RETRYABLE = frozenset({408, 425, 429})
_BODY_IS_RESOURCE = frozenset({200, 203})  # 203: a transforming proxy's copy, still the whole body


def retry_after_seconds(value: str | None, date: str | None = None, *, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: a number, or an HTTP date read
    against the server's own ``Date`` (so a client whose clock is off waits the time the
    server meant). ``now`` is the client's wall clock, used only without a ``Date``."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    if not _parses(value):
        return None
    when = email.utils.parsedate_to_datetime(value).timestamp()
    base = email.utils.parsedate_to_datetime(date).timestamp() if date and _parses(date) else now
    return max(0.0, when - base)


def retry_delay(failures: int, *, base: float, retry_after: float | None, cap: float = 30.0,
                retry_after_cap: float = 3600.0, jitter: float = 1.0) -> float:
    """Seconds before attempt ``failures + 1``: exponential from ``base`` (capped at
    ``cap``, times ``jitter``), or the server's ``Retry-After`` capped at ``retry_after_cap``."""
    if retry_after is not None:
        return min(retry_after, retry_after_cap)
    return float(min(cap, base * 2.0 ** max(0, failures - 1)) * jitter)


def _not_a_file(status: int, headers: Mapping[str, str], offset: int) -> Decision | None:
    """The answers that end the task whatever the offset, or ``None``."""
    if status in _RETRYABLE or status >= 500:
        return Decision(Outcome.RETRY, reason=f"HTTP {status}", retry_after=retry_after_seconds(
            _header(headers, "retry-after"), _header(headers, "date"), now=_time.time()))
    if status in (204, 205):
        return Decision(Outcome.FAIL, client_error=True,
                        reason=f"the server answered HTTP {status} ({'No Content' if status == 204 else 'Reset Content'})"
                               " and sent no file; check the URL")
    if 200 <= status < 300 and status not in _BODY_IS_RESOURCE and status != 206:
        return Decision(Outcome.FAIL, client_error=True,
                        reason=f"the server answered HTTP {status}, which does not carry the file; check the URL")
    if not 200 <= status < 300 and not (status == 416 and offset > 0):
        return Decision(Outcome.FAIL, reason=f"HTTP {status}")
    return None


def decide(
    status: int,
    headers: Mapping[str, str],
    *,
    offset: int,
    validator: Validator | None,
    known_total: int | None,
) -> Decision:
    """Interpret the response to a request sent at ``offset`` (0 for a fresh request).

    Every status has exactly one outcome here; nothing else in bgdl_nb decides what a
    response means.
    """
    early = _not_a_file(status, headers, offset)
    if early is not None:
        return early
    if offset == 0:
        if status in _BODY_IS_RESOURCE:
            return Decision(Outcome.APPEND, 0, _content_length(headers))
        # a 206 nobody asked for: usable only when it is the whole resource
        match = _CONTENT_RANGE.match(_header(headers, "content-range") or "")
        if match and int(match.group(1)) == 0 and match.group(3) != "*" \
                and int(match.group(2)) == int(match.group(3)) - 1:
            return Decision(Outcome.APPEND, 0, int(match.group(3)))
        shown = (_header(headers, "content-range") or "no Content-Range").strip()
        return Decision(Outcome.FAIL, client_error=True,
                        reason=f"the server answered HTTP 206 with part of the file ({shown}) to a request for all of it; "
                               "try again later or report it to the server's operator")

    new_validator = validator_from_headers(headers)
    if status == 206:
        match = _CONTENT_RANGE.match(_header(headers, "content-range") or "")
        if not match:
            return Decision(Outcome.RESTART, reason="206 without a usable Content-Range", use_body=False)
        first, last, total_text = match.groups()
        total = None if total_text == "*" else int(total_text)
        if int(first) != offset:
            return Decision(Outcome.RESTART, reason=f"server sent bytes from {first}, not {offset}", use_body=False)
        if total is None or int(last) != total - 1:
            return Decision(Outcome.RESTART, reason=f"Content-Range {match.group(0).strip()} does not run to the end",
                            use_body=False)
        if known_total is not None and total != known_total:
            return Decision(Outcome.RESTART, reason=f"length changed from {known_total} to {total}", use_body=False)
        if validator is not None and new_validator is not None and new_validator.kind == validator.kind \
                and new_validator.value != validator.value:
            return Decision(Outcome.RESTART,
                            reason=f"validator changed from {validator.value} to {new_validator.value}",
                            use_body=False)
        return Decision(Outcome.APPEND, offset, total)

    if status in _BODY_IS_RESOURCE:
        if validator is not None and new_validator is not None and new_validator.value != validator.value:
            reason = f"resource changed ({validator.value} -> {new_validator.value})"
        else:
            reason = "server ignored the range request"
        return Decision(Outcome.RESTART, 0, _content_length(headers), reason=reason, use_body=True)

    # 416 to a range request
    match = _UNSATISFIED.match(_header(headers, "content-range") or "")
    if match and int(match.group(1)) == offset and (known_total is None or known_total == offset):
        return Decision(Outcome.COMPLETE, offset, offset)
    return Decision(Outcome.RESTART, reason="416: the partial file does not fit the resource", use_body=False)


# -- resume data ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ResumeState:
    """Everything needed to continue a download in another task or process."""

    url: str
    headers: dict[str, str]
    partial_path: str
    offset: int
    total: int | None
    validator: Validator | None
    destination: str | None = None
    current_url: str | None = None
    marks: list[list[Any]] | None = None  # digests of the partial file's prefixes, checked before continuing


def load_key(directory: Path) -> bytes:
    """The per-user secret that signs resume data, created (mode 0600) on first use in the
    private state directory. A folder or key another user could have made or read is
    refused (:class:`~bgdl_nb.UnsafeLocation`), never adopted."""
    private_dir(directory, "the state directory")
    path = directory / "resume-data.key"
    what = "the resume-data signing key"
    try:
        return read_private_file(path, what)
    except FileNotFoundError:
        pass
    key = secrets.token_bytes(32)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        os.write(fd, key)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # first writer wins; a racing writer reads the winner's key
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return read_private_file(path, what)


def _vault_entry(vault: Path, token: str) -> Path:
    return vault / f"{token}.json"


def encode_resume_data(state: ResumeState, key: bytes, vault: Path | None = None) -> bytes:
    """Serialise and sign ``state``. With ``vault`` (the private store in the state
    directory), credentials (secret header values, tokens and passwords in the URLs) are
    kept there, 0600, and the bytes carry only their redacted form and a reference."""
    payload = dataclasses.asdict(state)
    secret = {"url": state.url, "current_url": state.current_url, "headers": dict(state.headers)}
    shown = {"url": redact_url(state.url), "current_url": state.current_url and redact_url(state.current_url),
             "headers": redact_headers(state.headers)}
    if vault is not None and shown != secret:
        token = secrets.token_hex(16)
        private_dir(vault, "the secrets folder")
        fd = os.open(_vault_entry(vault, token), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(secret, f)
        payload.update(shown, vault=token)
    body = json.dumps({"v": RESUME_DATA_VERSION, **payload}, sort_keys=True, separators=(",", ":")).encode()
    head = _MAGIC + bytes([RESUME_DATA_VERSION])
    return head + body + hmac.new(key, head + body, hashlib.sha256).digest()


def decode_resume_data(data: object, key: bytes, vault: Path | None = None) -> ResumeState:
    """Check and parse resume data (its credentials from ``vault``); raise
    :class:`InvalidResumeData` on any defect."""
    hint = "; start a new download_task() for the URL instead"
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidResumeData(f"resume data must be bytes, not {type(data).__name__}{hint}")
    blob = bytes(data)
    if not blob:
        raise InvalidResumeData(f"resume data is empty{hint}")
    if not blob.startswith(_MAGIC) or len(blob) < len(_MAGIC) + 1 + _MAC_LEN + 2:
        raise InvalidResumeData(f"these bytes are not bgdl_nb resume data{hint}")
    version = blob[len(_MAGIC)]
    if version > RESUME_DATA_VERSION:
        raise InvalidResumeData(
            f"resume data has format version {version}, newer than this bgdl_nb understands "
            f"({RESUME_DATA_VERSION}); upgrade bgdl_nb"
        )
    head, body, mac = blob[:len(_MAGIC) + 1], blob[len(_MAGIC) + 1:-_MAC_LEN], blob[-_MAC_LEN:]
    expected = hmac.new(key, head + body, hashlib.sha256).digest()  # the version byte is signed too
    if not hmac.compare_digest(mac, expected):
        raise InvalidResumeData(
            "resume data is truncated, altered, or was made under another user's state "
            f"directory{hint}"
        )
    try:
        payload = json.loads(body)
        if payload.get("vault"):
            entry = _vault_entry(vault, str(payload["vault"])) if vault is not None else None
            try:
                payload.update(json.loads(entry.read_text()) if entry is not None else {})
            except (OSError, ValueError):
                entry = None
            if entry is None:
                raise InvalidResumeData("the credentials this resume data needs are not in this state directory's "
                                        f"private store any more{hint}")
        validator = payload.get("validator")
        return ResumeState(
            url=str(payload["url"]),
            headers={str(k): str(v) for k, v in payload["headers"].items()},
            partial_path=str(payload["partial_path"]),
            offset=int(payload["offset"]),
            total=None if payload["total"] is None else int(payload["total"]),
            validator=Validator(str(validator["kind"]), str(validator["value"])) if validator else None,
            destination=payload.get("destination"),
            current_url=payload.get("current_url"),
            marks=[[int(m[0]), str(m[1])] for m in payload["marks"]] if payload.get("marks") else None,
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InvalidResumeData(f"resume data is malformed ({exc}){hint}") from None
