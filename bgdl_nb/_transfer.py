"""HTTP transfers: the only module that imports aiohttp.

It opens a response (following redirects itself, so every hop can be checked and
logged), hands the body out in chunks exactly as sent (``Accept-Encoding: identity``,
no decoding), and translates aiohttp's exceptions into bgdl_nb's at one boundary
(:func:`map_exceptions`). The engine decides what the bytes mean.

Redirect rules: only http and https hops; https to http only when the configuration
allows it; ``Authorization``, ``Cookie`` and ``Proxy-Authorization`` never travel to
an origin other than the one the user named.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import ipaddress
import netrc
import os
import socket
import ssl
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import version as _version
from typing import Any
from urllib.parse import SplitResult, urljoin, urlsplit

import aiohttp

from ._checks import check_url
from ._config import Configuration, network_environment
from ._exceptions import (
    BgdlError,
    BlockedDestination,
    CannotConnect,
    NetworkError,
    TransferTimeout,
    UnsupportedURL,
)

__all__ = ["AiohttpTransport", "Opened", "map_exceptions", "new_client", "open_response"]

_CREDENTIAL_HEADERS = {"authorization", "cookie", "proxy-authorization"}
_REDIRECTS = {301, 302, 303, 307, 308}
READ_SIZE = 256 * 1024
USER_AGENT = f"bgdl_nb/{_version('bgdl_nb')} aiohttp/{aiohttp.__version__}"


class LowSpeed:
    """curl's ``--speed-limit``/``--speed-time`` for one connection: :meth:`check` raises
    :class:`TransferTimeout` when fewer than ``limit`` bytes a second arrived over the
    last ``seconds`` seconds (a trickle the stall timeout never sees, since bytes do come).
    Time the session's own bandwidth limit held the connection back does not count."""

    def __init__(self, limit: float, seconds: float, url: str, received: int) -> None:
        self.limit, self.seconds, self.url = limit, seconds, url
        self.reset(received)

    def reset(self, received: int) -> None:
        self.since, self.mark = time.monotonic(), received

    def check(self, received: int) -> None:
        if not self.limit:
            return
        now = time.monotonic()
        spent = now - self.since
        if spent < self.seconds:
            return
        rate = (received - self.mark) / spent
        if rate < self.limit:
            raise TransferTimeout(
                f"{self.url} trickled at {rate:,.0f} bytes/s for {spent:.0f} s, below low_speed_limit "
                f"({self.limit:,.0f} bytes/s); retrying from the last durable offset", url=self.url)
        self.since, self.mark = now, received


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme.lower())
    return parts.scheme.lower(), (parts.hostname or "").lower(), parts.port or default


@contextlib.contextmanager
def map_exceptions(url: str) -> Iterator[None]:
    """Translate aiohttp and OS errors raised inside the block into BgdlError."""
    try:
        yield
    except BgdlError:
        raise
    except (asyncio.TimeoutError, aiohttp.ServerTimeoutError) as exc:
        raise TransferTimeout(f"no data from {url} in time ({type(exc).__name__}); "
                              "it will be retried", url=url) from exc
    except aiohttp.ClientConnectorCertificateError as exc:
        reason = getattr(exc.certificate_error, "verify_message", None) or str(exc.certificate_error)
        raise CannotConnect(
            f"the TLS certificate of {exc.host} is not trusted ({reason}). If the server uses a private "
            "certificate authority, set ca_bundle in the Configuration (or SSL_CERT_FILE) to its certificate "
            "file; verify_tls=False turns the check off, which is unsafe", url=url) from exc
    except aiohttp.ClientSSLError as exc:
        raise NetworkError(f"TLS failed for {url}: {exc}; check the server's TLS setup, or ca_bundle", url=url) from exc
    except aiohttp.ClientProxyConnectionError as exc:
        raise CannotConnect(f"cannot connect to the proxy {exc.host}:{exc.port} ({_why(exc.os_error)}); check the "
                            "proxy setting, or HTTP_PROXY / HTTPS_PROXY / NO_PROXY in the environment", url=url) from exc
    except aiohttp.ClientConnectorError as exc:
        raise CannotConnect(f"cannot connect to {exc.host}:{exc.port} ({_why(exc.os_error)}); check that the "
                            "server is up and the URL is right", url=url) from exc
    except (aiohttp.ClientError, ConnectionError, OSError) as exc:
        detail = str(exc) or type(exc).__name__
        raise NetworkError(f"connection to {url} failed: {detail}", url=url) from exc


def _why(error: OSError | None) -> str:
    """A few words for why a connection failed, without the client library's wording."""
    if isinstance(error, socket.gaierror):
        return "unknown host name"
    if error is not None and error.errno:
        return os.strerror(error.errno).lower()
    return "no connection could be made"


def check_address(host: str, address: str, config: Configuration) -> None:
    """Apply the destination policy to one resolved ``address`` of ``host``."""
    if not config.block_private_networks:
        return
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if any(ip in ipaddress.ip_network(net, strict=False) for net in config.allowed_networks):
        return
    kind = next((name for name, flag in (("loopback", ip.is_loopback), ("link-local", ip.is_link_local),
                                         ("private", ip.is_private), ("reserved", ip.is_reserved),
                                         ("multicast", ip.is_multicast), ("unspecified", ip.is_unspecified))
                 if flag), None)
    if kind is not None:
        raise BlockedDestination(
            f"{host} is {address}, a {kind} address; this session reaches only public addresses "
            "(block_private_networks). Add the network to allowed_networks to reach it")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


class _PolicyResolver(aiohttp.ThreadedResolver):
    """The system resolver, with every answer checked against the destination policy (at
    connect time, so a name that resolves to a private address later is caught too)."""

    def __init__(self, config: Configuration) -> None:
        super().__init__()
        self.config = config

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> Any:
        answers = await super().resolve(host, port, family)
        for answer in answers:
            check_address(host, answer["host"], self.config)
        return answers


def new_client(config: Configuration) -> aiohttp.ClientSession:
    """An aiohttp session tuned for large downloads: no total timeout, an idle timeout,
    no decompression, connection reuse across tasks."""
    connector = aiohttp.TCPConnector(
        limit=0,
        limit_per_host=config.http_maximum_connections_per_host,
        ssl=tls_context(config),
        resolver=_PolicyResolver(config) if config.block_private_networks else None,
        use_dns_cache=not config.block_private_networks,  # every connection's answer is checked
    )
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=config.timeout_interval_for_request)
    # proxies and .netrc come from the session's copy of the environment (proxy_for,
    # netrc_auth), not from this process's: a shared transfer service serves many
    return aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False,
                                 read_bufsize=READ_SIZE, headers={"User-Agent": USER_AGENT})


def _environment(config: Configuration) -> dict[str, str]:
    """The session's copy of the network variables (this process's for a bare Configuration)."""
    return config.environment if config.environment is not None else network_environment(os.environ)


def tls_context(config: Configuration) -> ssl.SSLContext | bool:
    """The certificates trusted: ``config.ca_bundle`` when set, else the system's with
    the session's ``SSL_CERT_FILE``/``SSL_CERT_DIR``; ``False`` when verification is off."""
    if not config.verify_tls:
        return False
    env = _environment(config)
    if config.ca_bundle:
        return ssl.create_default_context(cafile=os.path.expanduser(config.ca_bundle))
    return ssl.create_default_context(cafile=env.get("ssl_cert_file"), capath=env.get("ssl_cert_dir"))


def proxy_for(parts: SplitResult, config: Configuration) -> str | None:
    """The proxy for the URL split in ``parts``: ``config.proxy``, else the session's
    ``<scheme>_proxy`` or ``all_proxy`` unless ``no_proxy`` names the host (urllib's rules, as pip's)."""
    if config.proxy:
        return config.proxy
    env = _environment(config)
    proxy = env.get(f"{parts.scheme.lower()}_proxy") or env.get("all_proxy")
    if not proxy:
        return None
    no_proxy = env.get("no_proxy")
    if no_proxy and urllib.request.proxy_bypass_environment(parts.netloc, {"no": no_proxy}):  # type: ignore[attr-defined]
        return None
    return proxy


@functools.lru_cache(maxsize=8)
def _netrc(path: str, mtime_ns: int) -> netrc.netrc | None:
    del mtime_ns  # part of the cache key: an edited file is read again
    try:
        return netrc.netrc(path)
    except (OSError, netrc.NetrcParseError):
        return None


def netrc_auth(parts: SplitResult, config: Configuration) -> str | None:
    """The ``Authorization`` value from ``.netrc`` for the host of the URL split in
    ``parts`` (the session's ``NETRC``, else ``~/.netrc``), or None; only ever for that host."""
    env = _environment(config)
    path = env.get("netrc") or os.path.join(env.get("home") or os.path.expanduser("~"), ".netrc")
    try:
        stamp = os.stat(path).st_mtime_ns
    except OSError:
        return None
    parsed = _netrc(path, stamp)
    host = parts.hostname
    entry = parsed.authenticators(host) if parsed is not None and host else None
    if entry is None:
        return None
    login, _, password = entry
    return "Basic " + base64.b64encode(f"{login or ''}:{password or ''}".encode()).decode("ascii")


def readable(text: str) -> str:
    """A header as text that can be journaled and shown. aiohttp keeps bytes that are not
    UTF-8 (a Latin-1 file name or ETag from an old server) as surrogate escapes, which no
    JSON encoder or terminal accepts; those headers are read as ISO-8859-1 instead, as
    HTTP/1.1 historically defines header bytes (a task once hung at 0 bytes on one)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("latin-1")
    return text


@dataclass
class Opened:
    """An open response: status, headers and the body still to read."""

    url: str
    status: int
    headers: dict[str, str]
    _response: aiohttp.ClientResponse
    _complete: bool = False

    @property
    def complete(self) -> bool:
        """The whole body was read."""
        return self._complete

    def abort(self) -> None:
        """Stop reading now: the connection is closed, not reused (the rest of the body
        would otherwise keep arriving)."""
        if not self._complete:
            self._response.close()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as sent, chunk by chunk."""
        with map_exceptions(self.url):
            content = self._response.content
            while True:
                data = await content.readany()
                if not data:
                    self._complete = True
                    return
                yield data


class AiohttpTransport:
    """bgdl_nb's :class:`~bgdl_nb._transport.Transport`: one aiohttp session (made at the
    first request, on the engine's loop) and :func:`open_response`'s rules."""

    def __init__(self, config: Configuration) -> None:
        self.config = config
        self._client: aiohttp.ClientSession | None = None

    def open(self, url: str, headers: dict[str, str],
             on_redirect: Callable[[int, str], None]) -> contextlib.AbstractAsyncContextManager[Opened]:
        if self._client is None:
            self._client = new_client(self.config)
        return open_response(self._client, url, headers, self.config, on_redirect)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


@contextlib.asynccontextmanager
async def open_response(
    client: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    config: Configuration,
    on_redirect: Callable[[int, str], None],
) -> AsyncIterator[Opened]:
    """GET ``url``, follow redirects under the rules above, and yield the final response."""
    first_origin = _origin(url)
    current = url
    for _ in range(config.max_redirects + 1):
        sent = {k: v for k, v in headers.items()
                if _origin(current) == first_origin or k.lower() not in _CREDENTIAL_HEADERS}
        sent["Accept-Encoding"] = "identity"
        parts = urlsplit(current)
        if config.block_private_networks and _is_ip(parts.hostname or ""):  # names are checked by the resolver
            check_address(parts.hostname or "", parts.hostname or "", config)
        with map_exceptions(current):
            if "@" not in parts.netloc and not any(k.lower() == "authorization" for k in sent):
                auth = netrc_auth(parts, config)
                if auth is not None:
                    sent["Authorization"] = auth
            response = await client.get(current, headers=sent, allow_redirects=False, proxy=proxy_for(parts, config))
        if response.status in _REDIRECTS and "Location" in response.headers:
            target = urljoin(current, readable(response.headers["Location"]))
            response.release()
            check_url(target, what="redirect target")
            if urlsplit(current).scheme == "https" and urlsplit(target).scheme == "http" \
                    and not config.allows_insecure_redirects:
                raise UnsupportedURL(
                    f"{current} redirects to insecure {target}; set allows_insecure_redirects=True "
                    "in the Configuration to follow it", url=url)
            on_redirect(response.status, target)
            current = target
            continue
        opened = Opened(current, response.status, {readable(k): readable(v) for k, v in response.headers.items()},
                        response)
        try:
            yield opened
        finally:
            if opened._complete:
                response.release()  # the connection goes back to the pool for the next task
            else:
                response.close()  # never reuse a connection whose body was not read to the end
        return
    raise UnsupportedURL(f"{url} redirected more than {config.max_redirects} times", url=url)

