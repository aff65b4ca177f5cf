"""Shared fixtures: an isolated state directory, the demo origin, and a real nginx."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bgdl_nb.demo.origin import Origin


@pytest.fixture(autouse=True)
def state_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every test gets its own BGDL_STATE_DIR (outside tmp_path, which holds downloads),
    and leaves no session attached."""
    path = tmp_path_factory.mktemp("state")
    monkeypatch.setenv("BGDL_STATE_DIR", str(path))
    yield path
    from bgdl_nb._hosts.registry import detach_all
    from bgdl_nb._hosts.service.client import stop_service
    detach_all()
    stop_service(path)  # a test's transfer service never outlives the test


@pytest.fixture
def origin() -> Iterator[Origin]:
    with Origin() as server:
        yield server


second_origin = origin  # a second, independent origin (another host:port) for cross-origin tests


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Nginx:
    """A real nginx serving ``root`` on a loopback port, with ETag and byte ranges."""

    def __init__(self, base: Path, *, extra: str = "") -> None:
        self.root = base / "www"
        self.root.mkdir(parents=True)
        self.prefix = base / "nginx"
        for sub in ("logs", "tmp"):
            (self.prefix / sub).mkdir(parents=True)
        self.extra = extra
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Bind the listening socket here and hand it to nginx (nginx inherits sockets named
        in its NGINX environment variable), so the port is known and accepting before
        nginx runs: no race for a free port and no polling for readiness."""
        binary = shutil.which("nginx") or "/usr/sbin/nginx"  # require_tool checked one exists
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        user = "user root;" if os.geteuid() == 0 else ""
        conf = self.prefix / "nginx.conf"
        tmp = self.prefix / "tmp"
        conf.write_text(f"""
{user}
worker_processes 1;
daemon off;
pid {self.prefix}/nginx.pid;
error_log {self.prefix}/logs/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log {self.prefix}/logs/access.log;
    client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy; fastcgi_temp_path {tmp}/fcgi;
    uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
    default_type application/octet-stream;
    sendfile on;
    server {{
        listen 127.0.0.1:{self.port};
        root {self.root};
        location /limited/ {{ alias {self.root}/; limit_rate 4m; }}
        location /noranges/ {{ alias {self.root}/; max_ranges 0; }}
        location /slow-noranges/ {{ alias {self.root}/; max_ranges 0; limit_rate 4m; }}
        location /named/ {{ alias {self.root}/; add_header Content-Disposition 'attachment; filename="report-2026.csv"'; }}
        location /named-utf8/ {{ alias {self.root}/;
            add_header Content-Disposition "attachment; filename*=UTF-8''r%C3%A9sum%C3%A9%20final.csv"; }}
        location /named-evil/ {{ alias {self.root}/;
            add_header Content-Disposition 'attachment; filename="../../.bashrc"'; }}
        {self.extra}
    }}
}}
""")
        fd = self.sock.fileno()
        self.proc = subprocess.Popen([binary, "-p", str(self.prefix), "-c", str(conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     pass_fds=[fd], env={**os.environ, "NGINX": f"{fd};"})

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.sock.close()

    def requests(self) -> int:
        """How many requests nginx has served (lines of its access log)."""
        log = self.prefix / "logs" / "access.log"
        return len(log.read_bytes().splitlines()) if log.exists() else 0

    def publish(self, name: str, data: bytes, mtime: float | None = None) -> str:
        """Write ``data`` to the document root (atomically) and return its URL."""
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        if mtime is not None:
            os.utime(tmp, (mtime, mtime))
        os.replace(tmp, path)
        return f"{self.base_url}/{name}"


def require_tool(name: str, *fallbacks: str, flag: str, package: str) -> str:
    """The path of a system tool a test needs; without it the test is skipped, or fails
    when CI set ``flag`` (so a missing package never passes silently there)."""
    found = shutil.which(name) or next((p for p in fallbacks if Path(p).exists()), None)
    if found is None:
        if os.environ.get(flag):
            pytest.fail(f"{name} is required ({flag} is set) but not installed")
        pytest.skip(f"{name} is not installed (apt-get install {package}); .ci/run installs it")
    return found


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Nginx]:
    require_tool("nginx", "/usr/sbin/nginx", flag="BGDL_REQUIRE_NGINX", package="nginx-light")
    server = Nginx(tmp_path / "nginx")
    server.start()
    yield server
    server.stop()


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bgdl_nb.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


class Tinyproxy:
    """A real HTTP proxy (Debian's tinyproxy) on a loopback port; it adds a ``Via`` header."""

    def __init__(self, base: Path) -> None:
        self.base = base
        base.mkdir(parents=True)
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        conf = self.base / "tinyproxy.conf"
        conf.write_text(f'Port {self.port}\nListen 127.0.0.1\nTimeout 60\nAllow 127.0.0.1\nMaxClients 50\n'
                        f'LogLevel Info\nLogFile "{self.base}/tinyproxy.log"\nPidFile "{self.base}/tinyproxy.pid"\n')
        self.proc = subprocess.Popen([shutil.which("tinyproxy") or "/usr/bin/tinyproxy", "-d", "-c", str(conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def listening() -> bool:
            assert self.proc is not None and self.proc.poll() is None, "tinyproxy exited at start"
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0

        from helpers import wait_until
        wait_until(listening, timeout=15, what="tinyproxy to listen")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def tinyproxy(tmp_path: Path) -> Iterator[Tinyproxy]:
    require_tool("tinyproxy", "/usr/bin/tinyproxy", flag="BGDL_REQUIRE_PROXY", package="tinyproxy")
    proxy = Tinyproxy(tmp_path / "tinyproxy")
    proxy.start()
    yield proxy
    proxy.stop()


@pytest.fixture
def tls_origin(tmp_path: Path) -> Iterator[tuple[Origin, Path]]:
    """The demo origin over https with a certificate from a throwaway CA (trustme); yields
    the origin and the CA's PEM file."""
    import ssl

    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_context)
    pem = tmp_path / "test-ca.pem"
    ca.cert_pem.write_to_path(str(pem))
    with Origin(ssl_context=server_context) as server:
        yield server, pem


@pytest.fixture
def small_state_disk(tmp_path, monkeypatch):
    """The state directory on a real 4 MiB file system of its own (a tmpfs; needs root)."""
    disk = tmp_path / "state-disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(disk)],
                      capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")
    monkeypatch.setenv("BGDL_STATE_DIR", str(disk / "state"))
    try:
        yield disk
    finally:
        run_cli("service", "stop")
        subprocess.run(["umount", "-l", str(disk)], check=True)
