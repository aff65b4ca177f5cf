"""The demo origin: an aiohttp server of deterministic synthetic files of any size.

Nothing is stored: byte ``p`` of resource ``name`` at version ``v`` is computed. Every
64 KiB block starts with a header naming the resource, the version and the block
number, then carries 64 KiB of pseudo-random bytes derived from ``name`` and ``v``, so
a byte shifted to the wrong offset, or taken from another version, changes the file's
digest.

``GET /files/<name>?size=N`` serves the resource with ETag, Last-Modified, Range and
If-Range. Query switches shape the server's behaviour for one URL:

==================  ===============================================================
``ranges=0``        ignore Range (always 200, no ``Accept-Ranges``)
``validators=``     ``both`` (default), ``etag``, ``lm``, ``weak`` (weak ETag only),
                    ``none``
``changing=1``      a new version of the resource on every request
``rate=B``          at most B bytes per second on this connection
``total_rate=B``    at most B bytes per second for this resource over all its connections
                    (a whole file's pace, however many segments fetch it)
``filename=NAME``   a ``Content-Disposition: attachment; filename="NAME"`` header
``reset_after=N``   reset the connection after N body bytes of a response
``stall_after=N``   stop sending (but keep the connection) after N body bytes
``fail503=K``       answer the first K requests with 503 and ``Retry-After``
``retry_after=S``   the Retry-After value for fail503 (seconds, default 1)
``retry_date=1``    send that Retry-After as an HTTP-date, S seconds after the origin's clock
``faults=K``        apply reset/stall only to the first K requests of this URL
``status=N``        answer every request with status N and no body (204, 205, 404, ...)
``unasked_range=K`` answer 206 with the first K bytes (``Content-Range: bytes 0-K-1/size``)
                    even to a request without Range, as a broken cache might
``auth=USER:PASS``  answer 401 unless the request carries that HTTP Basic credential
``sig=G``           a signed link: 403 once :meth:`Origin.rotate_signatures` moved past G
==================  ===============================================================

``GET /signed/<name>?size=N&...`` redirects (302) to ``/files/<name>`` with the current
``sig``, as an object store hands out expiring presigned links.

``GET /static/<path>`` serves the files of the ``root`` folder (when one is given), with
aiohttp's ETag and Range support; ``GET /stats`` says how many file requests were answered.

``GET /redirect?to=URL[&status=302]`` answers with a redirect. The server records every
request (method, path, headers, status, body bytes sent) in :attr:`Origin.log`, so tests
can assert exactly what was fetched. :meth:`Origin.bump` changes a resource's version
server-side (same size, new ETag and Last-Modified).
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import hashlib
import os
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from multidict import MultiMapping

from .content import BLOCK, content, resource_sha256, resource_url

__all__ = ["Origin", "RequestRecord", "content", "resource_sha256", "resource_url"]

_EPOCH = 1767225600  # 2026-01-01T00:00:00Z: Last-Modified of version 0
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass
class RequestRecord:
    """One request the origin served."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    status: int = 0
    bytes_sent: int = 0
    nth: int = 0
    time: float = field(default_factory=time.time)
    end: float | None = None  # when the response was over (sent, reset or abandoned)


class Origin:
    """The demo origin server; run it on its own thread with :meth:`start`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, ssl_context: Any = None,
                 root: str | os.PathLike[str] | None = None) -> None:
        self.host = host
        self.root = None if root is None else os.path.abspath(root)  # served as /static/ (ETag, ranges)
        self.port = port
        self.ssl_context = ssl_context  # an ssl.SSLContext: serve https
        self.log: list[RequestRecord] = []
        self._versions: Counter[str] = Counter()
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._stopped = threading.Event()
        self.signature = 0  # the generation of signed links that is still valid
        self.in_flight = 0  # requests being answered now
        self.served = 0  # requests for files answered (GET and HEAD)
        self._turns: dict[str, float] = {}  # total_rate: when each resource may send its next piece
        self.last_activity = time.monotonic()  # when the last request ended (or the origin started)

    def idle_for(self) -> float:
        """Seconds since the origin last answered a request (0 while one is in flight)."""
        return 0.0 if self.in_flight else time.monotonic() - self.last_activity

    # public helpers ------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"{'https' if self.ssl_context is not None else 'http'}://{self.host}:{self.port}"

    def url(self, name: str, size: int, **switches: object) -> str:
        """The URL of resource ``name`` of ``size`` bytes with the given switches."""
        return resource_url(self.base_url, name, size, **switches)

    def redirect_url(self, to: str, status: int = 302) -> str:
        return f"{self.base_url}/redirect?{urlencode({'to': to, 'status': status})}"

    def version(self, name: str) -> int:
        with self._lock:
            return self._versions[name]

    def bump(self, name: str) -> int:
        """Change resource ``name`` (same size, new content and validators)."""
        with self._lock:
            self._versions[name] += 1
            return self._versions[name]

    def sha256(self, name: str, size: int, version: int | None = None) -> str:
        return resource_sha256(name, size, self.version(name) if version is None else version)

    def requests_for(self, name: str) -> list[RequestRecord]:
        with self._lock:
            return [r for r in self.log if r.path == f"/files/{name}"]

    def bytes_sent(self, name: str) -> int:
        return sum(r.bytes_sent for r in self.requests_for(name))

    # application ---------------------------------------------------------------------------

    @web.middleware
    async def _activity(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.in_flight += 1
        if request.path.startswith(("/files/", "/static/")):
            self.served += 1
        try:
            response: web.StreamResponse = await handler(request)
            return response
        finally:
            self.in_flight -= 1
            self.last_activity = time.monotonic()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._activity])
        app.router.add_route("GET", "/files/{name}", self._files)
        app.router.add_route("HEAD", "/files/{name}", self._files)
        app.router.add_get("/redirect", self._redirect)
        app.router.add_get("/signed/{name}", self._signed)
        app.router.add_get("/", self._index)
        app.router.add_get("/stats", self._stats)
        if self.root is not None:
            app.router.add_static("/static/", self.root, follow_symlinks=False)
        return app

    async def _stats(self, request: web.Request) -> web.Response:
        """How many requests for files it has answered (``/files/`` and ``/static/``)."""
        return web.json_response({"requests": self.served})

    async def _index(self, request: web.Request) -> web.Response:
        return web.Response(text="bgdl_nb demo origin: GET /files/<name>?size=N\n")

    async def _redirect(self, request: web.Request) -> web.Response:
        record = self._record(request)
        record.status = int(request.query.get("status", "302"))
        return web.Response(status=record.status, headers={"Location": request.query["to"]})

    def _record(self, request: web.Request) -> RequestRecord:
        record = RequestRecord(request.method, request.path, dict(request.query), dict(request.headers))
        with self._lock:
            self.log.append(record)
        return record

    def rotate_signatures(self) -> int:
        """Expire every signed link handed out so far (the links of ``/signed/...``)."""
        with self._lock:
            self.signature += 1
            return self.signature

    async def _signed(self, request: web.Request) -> web.Response:
        self._record(request)
        with self._lock:
            sig = self.signature
        query = urlencode([*request.query.items(), ("sig", str(sig))])
        return web.Response(status=302, headers={"Location": f"/files/{request.match_info['name']}?{query}"})

    async def _files(self, request: web.Request) -> web.StreamResponse:
        record = self._record(request)
        q = request.query
        name = request.match_info["name"]
        if "sig" in q and q["sig"] != str(self.signature):
            record.status = 403
            return web.Response(status=403, text="this signed link has expired\n")
        if "auth" in q:
            expected = "Basic " + base64.b64encode(q["auth"].encode()).decode()
            if request.headers.get("Authorization") != expected:
                record.status = 401
                return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="demo"'})
        try:
            size = int(q.get("size", str(1024 * 1024)))
        except ValueError:
            raise web.HTTPBadRequest(text="size must be an integer number of bytes") from None
        key = request.path_qs
        with self._lock:
            self._counts[key] += 1
            nth = self._counts[key]
            if q.get("changing") == "1":
                self._versions[name] += 1
            version = self._versions[name]
        record.nth = nth

        if nth <= int(q.get("fail503", "0")):
            record.status = 503
            after = q.get("retry_after", "1")
            if q.get("retry_date") == "1":  # the server's own clock, as an HTTP-date
                after = email.utils.formatdate(time.time() + float(after), usegmt=True)
            return web.Response(status=503, headers={"Retry-After": after}, text="temporarily unavailable\n")

        if "status" in q:
            record.status = int(q["status"])
            return web.Response(status=record.status)

        etag_value = hashlib.sha256(f"{name}:{size}:{version}".encode()).hexdigest()[:20]
        validators = q.get("validators", "both")
        headers = {"Content-Type": "application/octet-stream"}
        if "filename" in q:  # the name the server gives the file, as a download site does
            headers["Content-Disposition"] = 'attachment; filename="{}"'.format(q["filename"].replace('"', ""))
        if validators in ("both", "etag"):
            headers["ETag"] = f'"{etag_value}"'
        elif validators == "weak":
            headers["ETag"] = f'W/"{etag_value}"'
        if validators in ("both", "lm"):
            headers["Last-Modified"] = formatdate(_EPOCH + 60 * version, usegmt=True)
        ranges = q.get("ranges", "1") != "0"
        if ranges:
            headers["Accept-Ranges"] = "bytes"

        start, end, status = 0, size, 200
        if "unasked_range" in q:
            end, status = min(size, int(q["unasked_range"])), 206
            headers["Content-Range"] = f"bytes 0-{end - 1}/{size}"
        range_header = None if "unasked_range" in q else request.headers.get("Range")
        if ranges and range_header:
            if_range = request.headers.get("If-Range")
            fresh = if_range is None or (if_range in (headers.get("ETag"), headers.get("Last-Modified")) \
                and not if_range.startswith("W/"))
            match = _RANGE.match(range_header.strip())
            if fresh and match and (match.group(1) or match.group(2)):
                first, last = match.groups()
                if first:
                    start, end = int(first), (min(int(last) + 1, size) if last else size)
                else:
                    start, end = max(0, size - int(last)), size
                if start >= size or start >= end:
                    record.status = 416
                    return web.Response(status=416, headers={**headers, "Content-Range": f"bytes */{size}"})
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"

        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = end - start
        record.status = status
        await response.prepare(request)
        if request.method == "HEAD":
            return response

        try:
            await self._send(request, response, record, name, size, version, start, end, q)
        except ConnectionResetError:
            pass  # the client went away; record.bytes_sent says how far it got
        finally:
            record.end = time.time()
        return response

    async def _send(self, request: web.Request, response: web.StreamResponse, record: RequestRecord,
                    name: str, size: int, version: int, start: int, end: int, q: MultiMapping[str]) -> None:
        faulty = record.nth <= int(q.get("faults", "1000000000"))
        reset_after = int(q["reset_after"]) if faulty and "reset_after" in q else None
        stall_after = int(q["stall_after"]) if faulty and "stall_after" in q else None
        rate = float(q["rate"]) if "rate" in q else None
        shared = float(q["total_rate"]) if "total_rate" in q else None  # the whole resource, over every connection
        slowest = min(r for r in (rate, shared, float("inf")) if r is not None)
        chunk = 4 * BLOCK if slowest == float("inf") else max(4096, min(4 * BLOCK, int(slowest / 20)))
        began = time.monotonic()
        sent = 0
        for piece in content(name, size, version, start, end, chunk=chunk):
            for limit, action in ((reset_after, "reset"), (stall_after, "stall")):
                if limit is not None and sent + len(piece) > limit:
                    piece = piece[: max(0, limit - sent)]
                    if piece:
                        await response.write(piece)
                        sent += len(piece)
                        record.bytes_sent = sent
                    if action == "reset":
                        assert request.transport is not None
                        request.transport.abort()
                        return
                    await asyncio.sleep(float(q.get("stall_seconds", "60")))
                    return
            if shared is not None:  # one schedule per resource: each piece waits for its turn on it
                now = time.monotonic()
                turn = max(now, self._turns.get(name, now))
                self._turns[name] = turn + len(piece) / shared
                if turn > now:
                    await asyncio.sleep(turn - now)
            await response.write(piece)
            sent += len(piece)
            record.bytes_sent = sent
            if rate is not None:
                ahead = sent / rate - (time.monotonic() - began)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        await response.write_eof()

    # running -------------------------------------------------------------------------------

    async def start_async(self) -> str:
        self._runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.ssl_context)
        await site.start()
        server: Any = site._server  # the bound port when port was 0
        assert server is not None and server.sockets
        self.port = int(server.sockets[0].getsockname()[1])
        return self.base_url

    async def stop_async(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def start(self) -> str:
        """Serve on a background thread; return the base URL."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self.start_async())
            except BaseException as exc:  # reported to the starting thread
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.stop_async())
            loop.close()
            self._stopped.set()

        self._thread = threading.Thread(target=run, name="bgdl-origin", daemon=True)
        self._thread.start()
        if not ready.wait(30):
            raise RuntimeError("the demo origin did not start within 30 s")
        if failure:
            raise failure[0]
        return self.base_url

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)

    def __enter__(self) -> Origin:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
