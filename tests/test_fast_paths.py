"""String shortcuts on the per-task path agree with the full parse they skip."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

from hypothesis import given, settings
from hypothesis import strategies as st

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
