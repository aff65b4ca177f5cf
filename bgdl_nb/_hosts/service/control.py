"""Talking to the transfer service from outside a session: start it, ask it once (status,
stop), and connect to it after checking its folder and its peer. :class:`ServiceHost`
(``client.py``) builds its connection on :func:`connect`; the command line's ``bgdl service``
uses the rest.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from ..._exceptions import BgdlError, DiskFull
from ..._private import child_environment, python_command
from .protocol import (
    PROTOCOL_VERSION,
    ServiceNotAnswering,
    ServiceUnavailable,
    check_peer,
    private_runtime_dir,
    read_frame,
    runtime_dir,
    write_frame,
)

__all__ = ["REQUEST_TIMEOUT", "STATUS_TIMEOUT", "connect", "service_pid_text", "service_status", "socket_path",
           "start_service", "stop_service"]

log = logging.getLogger("bgdl_nb")

REQUEST_TIMEOUT = 60.0
"""Seconds a request waits for the service's answer."""


def socket_path(state_dir: Path) -> Path:
    return runtime_dir(state_dir) / "service.sock"


def connect(state_dir: Path) -> socket.socket | None:
    """A connection to the service of ``state_dir``, or None when none listens. Its folder
    and its peer are checked first: a socket another user could have put there, or that
    another user serves, is refused before a byte is sent."""
    try:
        folder = private_runtime_dir(state_dir, create=False)
    except FileNotFoundError:
        return None
    path = folder / "service.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError:
        sock.close()
        return None
    try:
        check_peer(sock, path)
    except BaseException:
        sock.close()
        raise
    return sock


def start_service(state_dir: Path, idle_timeout: float | None = None, timeout: float = 30.0) -> int:
    """Start the service for ``state_dir`` unless one runs; return its pid."""
    run = private_runtime_dir(state_dir)
    read_fd, write_fd = os.pipe()
    args = ["service", "run", "--state-dir", str(state_dir), "--ready-fd", str(write_fd)]
    if idle_timeout is not None:
        args += ["--idle-timeout", str(idle_timeout)]
    log_file = open(run / "service.log", "ab")
    try:  # the installed bgdl_nb only, in its own private folder: nothing from the caller's folder
        proc = subprocess.Popen(python_command("bgdl_nb.cli", *args), stdin=subprocess.DEVNULL, stdout=log_file,
                                stderr=log_file, pass_fds=[write_fd], start_new_session=True, close_fds=True,
                                cwd=run, env=child_environment())
    finally:
        os.close(write_fd)
        log_file.close()
    threading.Thread(target=proc.wait, name="bgdl-service-reaper", daemon=True).start()
    try:
        ready, _, _ = select.select([read_fd], [], [], timeout)
        line = os.read(read_fd, 65536).decode() if ready else ""
    finally:
        os.close(read_fd)
    if not line:
        log_path = run / "service.log"
        if not ready:
            raise ServiceUnavailable(f"the transfer service did not start within {timeout:g} s; see {log_path}")
        with contextlib.suppress(OSError):
            if os.statvfs(state_dir).f_bavail == 0:  # not even its log could be written
                raise DiskFull(f"the transfer service cannot start: no space is left on the disk of {state_dir}; "
                               "free some space there and run the same command again")
        raise ServiceUnavailable(f"the transfer service exited as it started ({_last_line(log_path)}); see {log_path}")
    word, said = line.split(maxsplit=1)
    if word == "failed":  # a refusal of its own (a state folder it cannot use): said as it is
        raise BgdlError.from_dict(json.loads(said))
    return int(said.split()[0])


def _last_line(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 4096))
            lines = [ln for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    return lines[-1].strip() if lines else "nothing in its log"


STATUS_TIMEOUT = 5.0
"""Seconds ``bgdl service status`` waits for the service before saying it does not answer
(a stop waits the request timeout: a busy service finishing its work is not a stuck one)."""


def _request_once(state_dir: Path, op: str, **args: Any) -> Any:
    sock = connect(state_dir)
    if sock is None:
        return None
    wait = STATUS_TIMEOUT if op == "status" else REQUEST_TIMEOUT
    with sock:
        sock.settimeout(wait)
        try:
            write_frame(sock, {"id": 1, "op": "hello", "protocol": PROTOCOL_VERSION})
            hello = read_frame(sock)
            if not hello or not hello.get("ok"):
                raise ServiceUnavailable((hello or {}).get("error", {}).get("message", "the service refused to talk"))
            write_frame(sock, {"id": 2, "op": op, **args})
            reply = read_frame(sock)
        except TimeoutError:  # socket.timeout: the process is there, its loop does not answer
            raise ServiceNotAnswering(
                f"the transfer service{service_pid_text(state_dir)} is not answering (asked for {op}, waited "
                f"{wait:g} s); it may be stopped (SIGSTOP) or overloaded. Wait and ask again, or end it (kill that "
                "pid) and run the command again: a new service continues every download from its partial bytes") from None
        if reply is None:
            return None
        if not reply.get("ok"):
            raise BgdlError.from_dict(reply["error"])
        return reply["result"]


def service_status(state_dir: str | os.PathLike[str] | None = None) -> dict[str, Any] | None:
    """The running transfer service's status, or ``None`` when none runs.

    Parameters
    ----------
    state_dir
        The state directory the service serves (default: ``BGDL_STATE_DIR`` or the
        platform's); what ``bgdl service status --json`` prints.

    Returns
    -------
    dict or None
        ``pid``, ``uptime`` (seconds), ``clients``, ``protocol``, ``state_dir`` and
        ``sessions``: per identifier, its ``tasks``, ``running``, attached ``clients`` and
        ``bytes_per_second``.
    """
    from ..._config import state_dir as default_state_dir
    status: dict[str, Any] | None = _request_once(default_state_dir(state_dir), "status")
    return status


def stop_service(state_dir: Path, timeout: float = 30.0) -> bool:
    """Ask the service to stop and wait until its lock is free; False when none ran."""
    import filelock
    answer = _request_once(state_dir, "shutdown")
    if answer is None:
        return False
    lock = filelock.FileLock(str(runtime_dir(state_dir) / "service.lock"), timeout=timeout)
    try:
        with lock:  # acquired only once the service released it on its way out
            pass
    except OSError:  # a state folder that turned read-only: the lock file cannot even be opened
        _wait_gone(int(answer["stopping"]), timeout)
    return True


def _wait_gone(pid: int, timeout: float) -> None:
    """Wait (polling, up to ``timeout`` s) until process ``pid`` has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise ServiceNotAnswering(f"the transfer service (pid {pid}) was asked to stop and is still running after "
                              f"{timeout:g} s; stop it with `kill {pid}`")



def service_pid_text(state_dir: Path) -> str:
    """`` (pid N)`` of the service of ``state_dir`` as its pid file says, or nothing."""
    with contextlib.suppress(OSError, ValueError):
        return f" (pid {int((runtime_dir(state_dir) / 'service.pid').read_text())})"
    return ""

