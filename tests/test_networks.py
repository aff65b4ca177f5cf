"""Real networks: a real proxy (tinyproxy), HTTPS with a private CA (trustme), ``.netrc``
credentials, and expiring signed links. Everything stays on loopback."""

from __future__ import annotations

import pytest

import bgdl_nb as bg

from helpers import sha256_of, wait_for_bytes, wait_until

MB = 1024 * 1024


def _session(use_service: bool, name: str, **fields) -> bg.Session:
    return bg.Session(bg.Configuration.background(f"{name}-{use_service}", use_service=use_service, **fields))


both = pytest.mark.parametrize("use_service", [False, True], ids=["in-process", "service"])


@both
def test_the_proxy_from_the_environment_is_used_and_no_proxy_is_honoured(origin, tmp_path, tinyproxy,
                                                                          monkeypatch, use_service):
    monkeypatch.setenv("HTTP_PROXY", tinyproxy.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with _session(use_service, "proxied") as session:
        session.download_task(origin.url("via.bin", MB), tmp_path / "via.bin").resume().wait(30)
    [request] = origin.requests_for("via.bin")
    assert "tinyproxy" in request.headers.get("Via", "")  # it came through the proxy
    assert sha256_of(tmp_path / "via.bin") == origin.sha256("via.bin", MB)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with _session(use_service, "direct") as session:
        session.download_task(origin.url("direct.bin", 1000), tmp_path / "direct.bin").resume().wait(30)
    [request] = origin.requests_for("direct.bin")
    assert "Via" not in request.headers


def test_the_proxy_setting_wins_and_a_resume_through_it_continues(origin, tmp_path, tinyproxy):
    config = bg.Configuration.default(proxy=tinyproxy.url, connections_per_file=1)
    with bg.Session(config) as session:
        task = session.download_task(origin.url("big.bin", 8 * MB, rate=4 * MB), tmp_path / "big.bin").resume()
        wait_for_bytes(task, MB)
        task.suspend()
        wait_until(lambda: task.state is bg.TaskState.SUSPENDED, what="the suspend")
        task.resume().wait(60)
    requests = origin.requests_for("big.bin")
    assert all("tinyproxy" in r.headers.get("Via", "") for r in requests) and len(requests) == 2
    assert requests[1].headers["Range"].startswith("bytes=") and requests[1].headers["Range"] != "bytes=0-"
    assert sha256_of(tmp_path / "big.bin") == origin.sha256("big.bin", 8 * MB)


def test_a_bad_proxy_setting_is_refused_at_once():
    with pytest.raises(bg.InvalidConfiguration, match="must be an http:// or https:// URL"):
        bg.Configuration.default(proxy="127.0.0.1:3128")


@both
def test_https_with_a_private_ca_needs_ca_bundle_and_says_so(tls_origin, tmp_path, use_service):
    origin, ca = tls_origin
    url = origin.url("secure.bin", 2 * MB)
    assert url.startswith("https://")
    with _session(use_service, "untrusted", connect_retries=0) as session:
        task = session.download_task(url, tmp_path / "secure.bin").resume()
        with pytest.raises(bg.CannotConnect, match=r"not trusted .*set ca_bundle") as caught:
            task.wait(30)
    assert "ssl:default" not in str(caught.value) and not (tmp_path / "secure.bin").exists()
    with _session(use_service, "trusted", ca_bundle=str(ca)) as session:
        session.download_task(url, tmp_path / "secure.bin").resume().wait(30)
    assert sha256_of(tmp_path / "secure.bin") == origin.sha256("secure.bin", 2 * MB)


def test_ssl_cert_file_from_the_environment_is_honoured(tls_origin, tmp_path, monkeypatch):
    origin, ca = tls_origin
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    with bg.Session() as session:
        session.download_task(origin.url("env.bin", 1000), tmp_path / "env.bin").resume().wait(30)
    assert (tmp_path / "env.bin").stat().st_size == 1000


def test_a_missing_ca_bundle_is_a_configuration_error():
    with pytest.raises(bg.InvalidConfiguration, match="is not a file"):
        bg.Configuration.default(ca_bundle="/no/such/ca.pem")


def test_netrc_credentials_go_to_their_host_only(origin, tmp_path, monkeypatch):
    """The .netrc entry for 127.0.0.1 is used there; a redirect to another host name
    (localhost) does not carry it."""
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1\n  login reader\n  password from-netrc\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    guarded = origin.url("guarded.bin", 5000, auth="reader:from-netrc")
    elsewhere = origin.url("elsewhere.bin", 4000).replace("127.0.0.1", "localhost")
    with bg.Session() as session:
        ok = session.download_task(guarded, tmp_path / "guarded.bin").resume()
        moved = session.download_task(origin.redirect_url(elsewhere), tmp_path / "elsewhere.bin").resume()
        assert ok.wait(30).stat().st_size == 5000
        assert moved.wait(30).stat().st_size == 4000
    [request] = origin.requests_for("guarded.bin")
    assert request.headers["Authorization"].startswith("Basic ")
    [request] = origin.requests_for("elsewhere.bin")
    assert "Authorization" not in request.headers  # another host: the credential stays home


@both
def test_an_expired_signed_link_is_resolved_again_and_the_file_continues(origin, tmp_path, use_service):
    """Object stores hand out presigned links that expire; a resume hours later starts
    again from the URL the user gave, gets a fresh link, and continues the partial file."""
    size = 8 * MB
    with _session(use_service, "signed", connections_per_file=1) as session:
        task = session.download_task(f"{origin.base_url}/signed/dataset.bin?size={size}&rate={4 * MB}",
                                     tmp_path / "dataset.bin").resume()
        wait_for_bytes(task, MB)
        task.suspend()
        wait_until(lambda: task.state is bg.TaskState.SUSPENDED, what="the suspend")
        origin.rotate_signatures()  # every link handed out so far has expired
        task.resume().wait(60)
        restarted = session.events.query("event == 'restarted'")
    files = origin.requests_for("dataset.bin")
    assert [r.query["sig"] for r in files] == ["0", "1"]  # the second request used a fresh link
    assert files[1].headers["Range"] != "bytes=0-" and restarted.empty  # continued, not restarted
    assert origin.bytes_sent("dataset.bin") <= size + 2 * MB
    assert sha256_of(tmp_path / "dataset.bin") == origin.sha256("dataset.bin", size)


def test_the_destination_policy_refuses_private_addresses_by_name_by_number_and_on_redirect(origin, tmp_path):
    """For shared notebook servers: loopback, link-local (cloud metadata) and private
    addresses are refused after name resolution and at every redirect hop, unless listed."""
    blocked = bg.Configuration.default(block_private_networks=True, connect_retries=0)
    with bg.Session(blocked) as session:
        for url in (origin.url("num.bin", 1000), origin.url("name.bin", 1000).replace("127.0.0.1", "localhost"),
                    "http://169.254.169.254/latest/meta-data/"):
            task = session.download_task(url, tmp_path / f"x-{len(url)}").resume()
            with pytest.raises(bg.BlockedDestination, match=r"a (loopback|link-local) address; .*allowed_networks"):
                task.wait(30)
    allowed = bg.Configuration.default(block_private_networks=True, allowed_networks=("127.0.0.1/32",))
    with bg.Session(allowed) as session:
        assert session.download_task(origin.url("ok.bin", 1000), tmp_path / "ok.bin").resume().wait(30)
        hop = origin.redirect_url(origin.url("hop.bin", 1000).replace("127.0.0.1", "127.0.0.2"))
        task = session.download_task(hop, tmp_path / "hop.bin").resume()
        with pytest.raises(bg.BlockedDestination, match=r"127\.0\.0\.2 is 127\.0\.0\.2, a loopback address"):
            task.wait(30)
    assert not origin.requests_for("num.bin") and not origin.requests_for("name.bin")
    assert not origin.requests_for("hop.bin") and len(origin.requests_for("ok.bin")) == 1


def test_a_bad_allowed_network_is_a_configuration_error():
    with pytest.raises(bg.InvalidConfiguration, match="is not a network"):
        bg.Configuration.default(block_private_networks=True, allowed_networks=("10.0.0.0/33",))


def test_a_proxy_that_is_down_is_named_as_the_proxy(origin, tmp_path):
    import socket
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with bg.Session(bg.Configuration.default(proxy=f"http://127.0.0.1:{port}", connect_retries=0)) as session:
        task = session.download_task(origin.url("p.bin", 1000), tmp_path / "p.bin").resume()
        with pytest.raises(bg.CannotConnect, match=f"cannot connect to the proxy 127.0.0.1:{port} .*HTTP_PROXY"):
            task.wait(30)


@both
@pytest.mark.parametrize("expired", [False, True], ids=["old-link-working", "old-link-expired"])
def test_a_link_signed_again_takes_over_its_task_and_continues_its_bytes(origin, tmp_path, use_service, expired):
    """A re-run with a freshly signed link to the same object (only its signature differs),
    as S3, GCS and CDNs hand out, continues the old link's task from its partial bytes,
    whether the old link still streams or has expired (then the task failed, keeping them)."""
    size = 8 * MB

    def link(sig: int) -> str:
        return origin.url("object.bin", size, rate=4 * MB, sig=sig)

    with _session(use_service, f"relink-{expired}", connections_per_file=1) as session:
        bg.fetch(link(0), tmp_path, configuration=session.configuration, wait=False, progress=False)
        [task] = session.all_tasks()
        wait_for_bytes(task, MB)
        if expired:
            task.suspend()
            wait_until(lambda: task.state is bg.TaskState.SUSPENDED, what="the suspend")
            origin.rotate_signatures()  # the old link answers 403 from now on
            task.resume()
            with pytest.raises(bg.HTTPStatusError, match=r"HTTP 403 after [\d,]+ bytes had arrived \(a signed link "
                               r"that expired.*those bytes are kept: run the same download again with a new link"):
                task.wait(30)
            assert task.error.resume_data is not None
            assert "127.0.0.1" not in str(task.error)  # the URL is said once, by whoever shows the error
        else:
            origin.rotate_signatures()  # the stream under way goes on; a new request with the old link would fail
        [path] = bg.fetch(link(1), tmp_path, configuration=session.configuration, progress=False)
        log, tasks = session.events, session.all_tasks()
    assert sha256_of(path) == origin.sha256("object.bin", size)
    files = origin.requests_for("object.bin")
    assert sum(1 for r in files if "Range" not in r.headers) == 1, "the new link started the file again from byte 0"
    assert files[-1].query["sig"] == "1" and files[-1].status == 206
    assert origin.bytes_sent("object.bin") <= size + MB
    assert (log.event == "relinked").any() is not expired  # a live task takes the link; a failed one is continued
    assert len(tasks) == (2 if expired else 1)
