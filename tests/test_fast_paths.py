"""String shortcuts on the per-task path agree with the full parse they skip."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from hypothesis import given, settings
from hypothesis import strategies as st

from bgdl_nb._events import EVENT_COLUMNS, Event
from bgdl_nb._files import beside, name_max
from bgdl_nb._hosts.commands import records_from_wire, records_to_wire
from bgdl_nb._journal import TaskRecord
from bgdl_nb._redact import REDACTED, _secret, redact_url
from bgdl_nb._run import host_of

_names = st.sampled_from(["size", "rate", "token", "X-Amz-Signature", "sig", "a_key", "page", "q", "Key", "x+y",
                          "a%5Fkey", ""])
_values = st.text(alphabet="abcXYZ019-_.~", max_size=6)
_query = st.lists(st.tuples(_names, _values), max_size=4).map(lambda pairs: "&".join(f"{k}={v}" for k, v in pairs))
_host = st.sampled_from(["h", "Host.Example", "h:8080", "u:p@h", "[::1]:9", "user@h.example"])
_urls = st.builds(lambda scheme, host, path, query, frag: f"{scheme}://{host}/{path}" + (f"?{query}" if query else "")
                  + (f"#{frag}" if frag else ""),
                  st.sampled_from(["http", "https"]), _host, st.text(alphabet="abc/._-", max_size=8), _query,
                  st.text(alphabet="abc", max_size=3))


@settings(max_examples=300, deadline=None)
@given(_urls)
def test_host_of_is_the_netloc_urlsplit_gives(url):
    assert host_of(url) == urlsplit(url).netloc.lower()


@settings(max_examples=300, deadline=None)
@given(_urls)
def test_a_url_left_as_it_is_holds_no_secret_and_every_secret_is_redacted(url):
    shown = redact_url(url)
    pairs = parse_qsl(urlsplit(url).query, keep_blank_values=True)
    if shown == url:  # the shortcut (or the full parse) found nothing to hide
        assert not any(_secret(k) for k, _ in pairs) and "@" not in urlsplit(url).netloc
    else:
        kept = parse_qsl(urlsplit(shown).query, keep_blank_values=True)
        assert all(v == REDACTED for k, v in kept if _secret(k))


_file_names = st.text(st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",)), min_size=1,
                      max_size=120).filter(lambda n: n not in (".", ".."))


@settings(max_examples=300, deadline=None)
@given(_file_names, st.sampled_from(["", "1a2b3c4d"]), st.sampled_from([".bgdl-part", ".bgdl-claim"]))
def test_a_hidden_name_beside_a_file_fits_the_file_system_and_keeps_a_name_that_fits(tmp_path_factory, name,
                                                                                      token, suffix):
    """The character count decides whether the name is encoded at all: the result is the
    same as encoding every name would give (whole when it fits, cut to fit when not)."""
    folder = str(tmp_path_factory.getbasetemp())
    got = beside(os.path.join(folder, name), suffix, token)
    tail = f".{token}{suffix}" if token else suffix
    assert os.path.dirname(got) == folder and got.endswith(tail)
    shown = os.path.basename(got)
    assert len(os.fsencode(shown)) <= name_max(Path(folder))
    if len(os.fsencode(f".{name}{tail}")) <= name_max(Path(folder)):
        assert shown == f".{name}{tail}"
    else:
        assert shown.startswith(".") and shown[:-len(tail)].endswith("~")


_records = st.builds(
    TaskRecord, st.just(0), st.sampled_from(["http://h/a", "https://h/b?x=1"]),
    headers=st.dictionaries(st.sampled_from(["A", "Range"]), st.text(max_size=3), max_size=2),
    destination=st.none() | st.just("/tmp/d"), description=st.none() | st.text(max_size=4),
    priority=st.sampled_from([0.0, 0.5, 1.0]), discretionary=st.booleans(), overwrite=st.booleans(),
    expected_bytes=st.none() | st.integers(0, 10**12), sha256=st.none() | st.just("ab" * 32),
    earliest_begin_date=st.none() | st.floats(0, 2e9))


@settings(max_examples=200, deadline=None)
@given(st.lists(_records, max_size=4))
def test_new_records_travel_with_only_their_fields_that_differ_and_arrive_whole(records):
    wire = records_to_wire(records)
    assert all(set(item) >= {"task_identifier", "url"} for item in wire)
    assert list(records_from_wire(wire)) == records


_events = st.builds(
    Event, st.integers(0, 10**9), st.floats(0, 2e9), st.none() | st.just("s"), st.none() | st.integers(1, 10**6),
    st.sampled_from(["created", "resumed", "progress"]), bytes_written=st.none() | st.integers(0, 10**9),
    total_bytes_expected=st.none() | st.integers(0, 10**12), detail=st.none() | st.text(max_size=5),
    reason=st.none() | st.just("waiting for a free slot"))


@settings(max_examples=200, deadline=None)
@given(_events)
def test_an_event_travels_as_its_values_in_column_order_and_arrives_whole(event):
    assert Event.from_wire(event.wire()) == event
    assert event.as_dict() == dict(zip(EVENT_COLUMNS, event.wire()))
