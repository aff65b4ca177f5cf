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
* :func:`decide` reads the answer to a request made at some offset and says whether the
  body continues the partial file, replaces it from byte 0 (and why), or completes it.
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
import hashlib
import hmac
import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from ._exceptions import InvalidResumeData

__all__ = [
    "Decision",
    "ResumeState",
    "Validator",
    "decide",
    "decode_resume_data",
    "encode_resume_data",
    "load_key",
    "resume_headers",
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


@dataclass(frozen=True)
class Decision:
    """What to do with a response.

    ``action`` is one of ``"append"`` (the body continues the partial file at
    ``offset``), ``"restart"`` (discard the partial file; the body, if ``use_body``,
    is the whole resource from byte 0, else a fresh request is needed),
    ``"complete"`` (the partial file already holds the whole resource) or
    ``"status"`` (not a file: an HTTP error or unexpected status). ``total`` is the
    resource length when known; ``reason`` explains restarts.
    """

    action: str
    offset: int = 0
    total: int | None = None
    reason: str = ""
    use_body: bool = True


def _content_length(headers: Mapping[str, str]) -> int | None:
    value = _header(headers, "content-length")
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


def decide(
    status: int,
    headers: Mapping[str, str],
    *,
    offset: int,
    validator: Validator | None,
    known_total: int | None,
) -> Decision:
    """Interpret the response to a request sent at ``offset`` (0 for a fresh request)."""
    if offset == 0:
        if status == 200:
            return Decision("append", 0, _content_length(headers))
        return Decision("status", reason=f"HTTP {status}")

    new_validator = validator_from_headers(headers)
    if status == 206:
        match = _CONTENT_RANGE.match(_header(headers, "content-range") or "")
        if not match:
            return Decision("restart", reason="206 without a usable Content-Range", use_body=False)
        first, last, total_text = match.groups()
        total = None if total_text == "*" else int(total_text)
        if int(first) != offset:
            return Decision("restart", reason=f"server sent bytes from {first}, not {offset}", use_body=False)
        if total is None or int(last) != total - 1:
            return Decision("restart", reason=f"Content-Range {match.group(0).strip()} does not run to the end",
                            use_body=False)
        if known_total is not None and total != known_total:
            return Decision("restart", reason=f"length changed from {known_total} to {total}", use_body=False)
        if validator is not None and new_validator is not None and new_validator.kind == validator.kind \
                and new_validator.value != validator.value:
            return Decision("restart", reason=f"validator changed from {validator.value} to {new_validator.value}",
                            use_body=False)
        return Decision("append", offset, total)

    if status == 200:
        if validator is not None and new_validator is not None and new_validator.value != validator.value:
            reason = f"resource changed ({validator.value} -> {new_validator.value})"
        else:
            reason = "server ignored the range request"
        return Decision("restart", 0, _content_length(headers), reason=reason, use_body=True)

    if status == 416:
        match = _UNSATISFIED.match(_header(headers, "content-range") or "")
        if match and int(match.group(1)) == offset and (known_total is None or known_total == offset):
            return Decision("complete", offset, offset)
        return Decision("restart", reason="416: the partial file does not fit the resource", use_body=False)

    return Decision("status", reason=f"HTTP {status}")


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


def load_key(directory: Path) -> bytes:
    """The per-user secret that signs resume data, created (mode 0600) on first use."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / "resume-data.key"
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    key = secrets.token_bytes(32)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
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
    return path.read_bytes()


def encode_resume_data(state: ResumeState, key: bytes) -> bytes:
    """Serialise and sign ``state``."""
    payload = dataclasses.asdict(state)
    body = json.dumps({"v": RESUME_DATA_VERSION, **payload}, sort_keys=True, separators=(",", ":")).encode()
    head = _MAGIC + bytes([RESUME_DATA_VERSION])
    return head + body + hmac.new(key, head + body, hashlib.sha256).digest()


def decode_resume_data(data: object, key: bytes) -> ResumeState:
    """Check and parse resume data; raise :class:`InvalidResumeData` on any defect."""
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
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InvalidResumeData(f"resume data is malformed ({exc}){hint}") from None
