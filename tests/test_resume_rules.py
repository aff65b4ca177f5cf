"""The sans-IO resume rules and the resume-data codec."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bgdl_nb import InvalidResumeData
from bgdl_nb._resume import (
    RESUME_DATA_VERSION,
    Outcome,
    ResumeState,
    Validator,
    decide,
    decode_resume_data,
    encode_resume_data,
    load_key,
    resume_headers,
    retry_after_seconds,
    retry_delay,
    validator_from_headers,
)

DATE = "Sat, 21 Nov 2026 12:00:00 GMT"
ETAG = '"abc"'


def test_strong_etag_is_the_validator() -> None:
    assert validator_from_headers({"ETag": ETAG, "Last-Modified": DATE}) == Validator("etag", ETAG)


def test_weak_etag_never_validates_a_range() -> None:
    assert validator_from_headers({"ETag": 'W/"abc"'}) is None


def test_last_modified_counts_only_when_a_second_older_than_date() -> None:
    old = "Sat, 21 Nov 2026 11:00:00 GMT"
    assert validator_from_headers({"Last-Modified": old, "Date": DATE}) == Validator("last-modified", old)
    assert validator_from_headers({"Last-Modified": DATE, "Date": DATE}) is None
    assert validator_from_headers({"Last-Modified": old}) is None  # no Date: cannot tell


def test_resume_headers() -> None:
    assert resume_headers(0, Validator("etag", ETAG)) == {}
    assert resume_headers(10, None) == {}
    assert resume_headers(10, Validator("etag", ETAG)) == {"Range": "bytes=10-", "If-Range": ETAG}


def _d(status: int, headers: dict[str, str], offset: int = 100, total: int | None = 1000):
    return decide(status, headers, offset=offset, validator=Validator("etag", ETAG), known_total=total)


def test_matching_206_appends() -> None:
    d = _d(206, {"Content-Range": "bytes 100-999/1000", "ETag": ETAG})
    assert (d.action, d.offset, d.total) == ("append", 100, 1000)


@pytest.mark.parametrize("headers, why", [
    ({"Content-Range": "bytes 0-999/1000"}, "not 100"),
    ({"Content-Range": "bytes 100-499/1000"}, "does not run to the end"),
    ({"Content-Range": "bytes 100-1999/2000"}, "length changed"),
    ({"Content-Range": "bytes 100-999/1000", "ETag": '"other"'}, "validator changed"),
    ({}, "without a usable Content-Range"),
])
def test_mismatched_206_restarts_without_using_the_body(headers: dict[str, str], why: str) -> None:
    d = _d(206, headers)
    assert d.action == "restart" and not d.use_body and why in d.reason


def test_200_to_a_range_request_restarts_with_that_body() -> None:
    d = _d(200, {"ETag": '"new"', "Content-Length": "1000"})
    assert d.action == "restart" and d.use_body and "changed" in d.reason
    d = _d(200, {"ETag": ETAG})
    assert d.action == "restart" and "ignored the range" in d.reason


def test_416_on_a_complete_file_completes() -> None:
    assert _d(416, {"Content-Range": "bytes */100"}, total=100).action == "complete"
    assert _d(416, {"Content-Range": "bytes */100"}, total=None).action == "complete"
    assert _d(416, {"Content-Range": "bytes */5000"}).action == "restart"


def test_error_statuses_are_statuses() -> None:
    refused = _d(404, {})
    assert refused.outcome is Outcome.FAIL and not refused.client_error
    assert decide(503, {}, offset=0, validator=None, known_total=None).outcome is Outcome.RETRY


@pytest.mark.parametrize("status, headers, offset", [
    (204, {}, 0), (205, {}, 0), (204, {}, 100), (201, {"Content-Length": "3"}, 0), (202, {}, 0),
    (206, {"Content-Range": "bytes 0-2/10"}, 0),      # part of the file, never asked for
    (206, {"Content-Range": "bytes 5-9/10"}, 0),
    (206, {}, 0),
])
def test_success_statuses_without_the_file_fail_as_client_errors(status, headers, offset) -> None:
    d = decide(status, headers, offset=offset, validator=None, known_total=None)
    assert d.outcome is Outcome.FAIL and d.client_error and str(status) in d.reason + str(headers)


def test_an_unasked_206_that_is_the_whole_file_is_kept() -> None:
    d = decide(206, {"Content-Range": "bytes 0-2/3"}, offset=0, validator=None, known_total=None)
    assert (d.outcome, d.offset, d.total) == (Outcome.APPEND, 0, 3)


@given(st.integers(min_value=100, max_value=599), st.integers(min_value=0, max_value=10_000))
def test_every_status_has_exactly_one_outcome(status: int, offset: int) -> None:
    d = decide(status, {}, offset=offset, validator=Validator("etag", ETAG), known_total=None)
    assert isinstance(d.outcome, Outcome)
    if d.outcome in (Outcome.APPEND, Outcome.COMPLETE):  # a file can only come from a 2xx (or a 416 at the end)
        assert 200 <= status < 300 or (status == 416 and offset > 0)
    if status >= 500 or status in (408, 425, 429):
        assert d.outcome is Outcome.RETRY


def test_retry_after_reads_the_servers_clock_and_is_capped() -> None:
    date = "Sun, 22 Nov 2026 10:00:00 GMT"
    later = "Sun, 22 Nov 2026 10:00:30 GMT"
    # the client's clock is a day off: the wait is still the 30 s the server meant
    assert retry_after_seconds(later, date, now=0.0) == 30.0
    assert retry_after_seconds("12", None, now=0.0) == 12.0
    assert retry_after_seconds("soon", None, now=0.0) is None
    assert retry_delay(3, base=0.5, retry_after=None) == 2.0
    assert retry_delay(30, base=0.5, retry_after=None) == 30.0
    assert retry_delay(1, base=0.5, retry_after=10 ** 6, retry_after_cap=3600) == 3600


# resume data -------------------------------------------------------------------------------

STATE = ResumeState(url="http://127.0.0.1:1/f", headers={}, partial_path="/tmp/p", offset=10, total=20,
                    validator=Validator("etag", ETAG), destination=None)


@pytest.fixture
def key(tmp_path: Path) -> bytes:
    return load_key(tmp_path)


def test_round_trip(key: bytes) -> None:
    assert decode_resume_data(encode_resume_data(STATE, key), key) == STATE


def test_key_is_private_and_stable(tmp_path: Path) -> None:
    first = load_key(tmp_path)
    assert load_key(tmp_path) == first
    assert (tmp_path / "resume-data.key").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("mangle, message", [
    (lambda b: b"", "empty"),
    (lambda b: b[:20], "not bgdl_nb resume data"),
    (lambda b: b[:-1], "truncated, altered"),
    (lambda b: b.replace(b"127.0.0.1:1", b"127.0.0.1:2"), "truncated, altered"),
    (lambda b: b[:6] + bytes([RESUME_DATA_VERSION + 1]) + b[7:], "newer than this bgdl_nb"),
    (lambda b: "text", "must be bytes"),
])
def test_bad_resume_data_is_refused(key: bytes, mangle, message: str) -> None:
    with pytest.raises(InvalidResumeData, match=message):
        decode_resume_data(mangle(encode_resume_data(STATE, key)), key)


def test_data_from_another_key_is_refused(key: bytes, tmp_path: Path) -> None:
    other = load_key(tmp_path / "other")
    with pytest.raises(InvalidResumeData):
        decode_resume_data(encode_resume_data(STATE, other), key)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_never_decode(data: bytes) -> None:
    key = b"k" * 32
    with pytest.raises(InvalidResumeData):
        decode_resume_data(data, key)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=300), st.integers(min_value=1, max_value=255))
@example(position=6, flip=1)  # the version byte: once unsigned, 1 -> 0 passed
def test_any_flipped_byte_is_detected(position: int, flip: int) -> None:
    key = b"k" * 32
    blob = bytearray(encode_resume_data(STATE, key))
    position = position % len(blob)
    blob[position] ^= flip
    with pytest.raises(InvalidResumeData):
        decode_resume_data(bytes(blob), key)


def test_payload_is_json_bound_to_the_url(key: bytes) -> None:
    blob = encode_resume_data(STATE, key)
    payload = json.loads(blob[7:-32])
    assert payload["url"] == STATE.url and payload["v"] == RESUME_DATA_VERSION
