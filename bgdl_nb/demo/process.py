"""The demo origin in a process of its own, for notebooks that restart their kernel.

An origin on a thread of the kernel dies with the kernel; :func:`start_origin_process`
runs ``bgdl serve`` detached instead and writes its address to a small JSON file, so
the next kernel finds it again with :meth:`RemoteOrigin.load`. Such an origin exits by
itself once nobody has asked it for anything for ``idle_exit`` seconds, so a notebook
left midway never leaves it running for ever; running the notebook again reuses the
origin that is still up.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .._exceptions import BgdlError
from .._private import child_environment, python_command, read_private_file, write_new_file
from .origin import resource_sha256, resource_url

__all__ = ["RemoteOrigin", "start_origin_process"]


@dataclass(frozen=True)
class RemoteOrigin:
    """A demo origin running in another process."""

    base_url: str
    pid: int

    def url(self, name: str, size: int, **switches: object) -> str:
        return resource_url(self.base_url, name, size, **switches)

    def sha256(self, name: str, size: int, version: int = 0) -> str:
        return resource_sha256(name, size, version)

    @classmethod
    def load(cls, info_file: str | os.PathLike[str]) -> RemoteOrigin:
        """The origin ``info_file`` names. The file must be yours and writable by you
        alone (the folder a notebook runs in may be shared: a file someone else wrote
        could name their server, or a pid of yours to stop), and the origin on loopback;
        otherwise :class:`~bgdl_nb.UnsafeLocation` or :class:`ValueError`."""
        data = json.loads(read_private_file(info_file, "the demo origin's address file", secret=False))
        base = str(data["base_url"])
        if not re.fullmatch(r"http://127\.0\.0\.1:[0-9]{1,5}", base):
            raise ValueError(f"{info_file} names {base!r}, not a demo origin on this machine's loopback")
        return cls(base, int(data["pid"]))

    def alive(self) -> bool:
        """True when the origin answers (a quick request to its index page)."""
        try:
            direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy
            with direct.open(self.base_url + "/", timeout=2) as reply:
                return b"bgdl_nb demo origin" in reply.read(200)
        except OSError:
            return False

    def requests(self) -> int:
        """How many requests for files the origin has answered so far."""
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with direct.open(self.base_url + "/stats", timeout=5) as reply:
            return int(json.loads(reply.read())["requests"])

    def stop(self) -> None:
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def start_origin_process(info_file: str | os.PathLike[str] = "demo-origin.json", *,
                         idle_exit: float = 600.0, root: str | os.PathLike[str] | None = None) -> RemoteOrigin:
    """Start ``bgdl serve`` on a free loopback port, detached from this kernel, or reuse
    the one ``info_file`` names while it still answers. The origin exits after
    ``idle_exit`` seconds without a request; with ``root``, it also serves that folder's
    files under ``/static/``."""
    info = Path(info_file)
    ports = ["0"]
    if info.exists():
        try:
            running = RemoteOrigin.load(info)
        except (ValueError, KeyError, BgdlError):  # damaged, or not one of ours: start our own
            running = None
        if running is not None and running.alive():
            return running
        if running is not None:  # its port first: the URLs of a notebook run again stay the same, as a real site's do
            ports.insert(0, running.base_url.rsplit(":", 1)[1])
    for port in ports:
        proc = subprocess.Popen(
            python_command("bgdl_nb.cli", "serve", "--port", port, "--idle-exit", str(idle_exit),
                           *(() if root is None else ("--root", os.path.abspath(root)))),
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True,
            start_new_session=True,  # survives the kernel's restart
            cwd="/", env=child_environment(),  # nothing from the notebook's folder is imported
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "demo origin serving on http://127.0.0.1:PORT ...", or nothing
        proc.stdout.close()
        base = next((word for word in line.split() if word.startswith("http://")), None)
        if base is not None:
            break
        proc.kill()  # that port is taken now: the next one
        proc.wait()
    if base is None:
        raise RuntimeError(f"bgdl serve did not start: {line!r}")
    origin = RemoteOrigin(base, proc.pid)
    write_new_file(info_file, json.dumps({"base_url": base, "pid": proc.pid}).encode(), 0o644)  # never via a link
    return origin
