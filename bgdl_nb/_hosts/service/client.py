"""The kernel side of the transfer service: a host with the thread host's surface.

The :class:`ServiceHost` starts the service when none runs (detached, in a session of
its own, reaped by a thread so it never lingers as a zombie), attaches to an
identifier, and feeds the same :class:`~bgdl_nb._hosts.base.HostCore` as the thread
host: every event pushed by the service carries the task's snapshot, and progress
messages carry live byte counts, so ``DownloadTask`` views read here are always
current; delegate callbacks run in order on the delivery thread, and each event is
acknowledged to the service after its callbacks returned.

When the service vanishes (killed, crashed), the reader thread starts a new one and
attaches again, within a bounded time; pending calls fail with
:class:`ServiceUnavailable` instead of hanging.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import dataclasses
import itertools
import logging
import os
import select
import socket
import subprocess
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..._config import Configuration
from ..._delegate import SessionDelegate
from ..._events import Event
from ..._exceptions import BgdlError, SessionBusy, SettingsKept, UnsafeLocation
from ..._journal import TaskRecord
from ..._private import child_environment, python_command
from ..._states import TaskState
from ..._task import DownloadTask
from ..base import Call, HostCore
from ..commands import Control
from .protocol import (
    PROTOCOL_VERSION,
    FrameReader,
    ServiceNotAnswering,
    ServiceUnavailable,
    check_peer,
    private_runtime_dir,
    read_frame,
    runtime_dir,
    write_frame,
)

__all__ = ["ServiceHost", "service_status", "start_service", "stop_service"]

log = logging.getLogger("bgdl_nb")
_REQUEST_TIMEOUT = 60.0
_RECONNECT_ATTEMPTS = 8


def _socket_path(state_dir: Path) -> Path:
    return runtime_dir(state_dir) / "service.sock"


def _connect(state_dir: Path) -> socket.socket | None:
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
        line = os.read(read_fd, 200).decode() if ready else ""
    finally:
        os.close(read_fd)
    if not line:
        log_path = run / "service.log"
        if not ready:
            raise ServiceUnavailable(f"the transfer service did not start within {timeout:g} s; see {log_path}")
        raise ServiceUnavailable(f"the transfer service exited as it started ({_last_line(log_path)}); see {log_path}")
    return int(line.split()[1])


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
    sock = _connect(state_dir)
    if sock is None:
        return None
    wait = STATUS_TIMEOUT if op == "status" else _REQUEST_TIMEOUT
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
            pid = ""
            with contextlib.suppress(OSError, ValueError):
                pid = f" (pid {int((runtime_dir(state_dir) / 'service.pid').read_text())})"
            raise ServiceNotAnswering(
                f"the transfer service{pid} is not answering (asked for {op}, waited {wait:g} s); it may "
                "be stopped (SIGSTOP) or overloaded. Wait and ask again, or end it (kill that pid) and run the "
                "command again: a new service continues every download from its partial bytes") from None
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
    if _request_once(state_dir, "shutdown") is None:
        return False
    lock = filelock.FileLock(str(runtime_dir(state_dir) / "service.lock"), timeout=timeout)
    with lock:  # acquired only once the service released it on its way out
        pass
    return True


class ServiceHost:
    """A background session's tasks, hosted by the transfer service."""

    def __init__(self, config: Configuration, session: Any, delegate: SessionDelegate | None) -> None:
        self.config = config
        self.identifier = str(config.identifier)
        self.state_dir = config.resolved_state_dir()
        self.closed = False
        self.core = HostCore(self, self._ack, config.delegate_close_timeout)
        self.core.attach_session(session, delegate)
        self._bandwidth: float | None = config.bandwidth_limit
        self._ids = itertools.count(1)
        self._pending: dict[int, Call] = {}
        self._on_reply: dict[int, Callable[[Any], None]] = {}
        self._send_lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._attaching = False
        self._attach_with_retries()

    # connection --------------------------------------------------------------------------

    def _attach(self) -> None:
        sock = _connect(self.state_dir)
        if sock is None:
            start_service(self.state_dir)
            sock = _connect(self.state_dir)
            if sock is None:
                raise ServiceUnavailable(f"cannot reach the transfer service at {_socket_path(self.state_dir)}")
        self._sock = sock
        threading.Thread(target=self._read_loop, args=(sock,), name="bgdl-client-reader", daemon=True).start()
        hello = self._request("hello", protocol=PROTOCOL_VERSION)
        del hello
        fields = {f.name: getattr(self.config, f.name) for f in dataclasses.fields(self.config)
                  if f.name not in ("identifier", "state_directory", "use_service")}
        launched = os.environ.get("BGDL_LAUNCHED_FOR") == self.identifier
        self.core.mirror.new_source()  # a restarted service counts its snapshots from 0 again

        def received(reply: dict[str, Any]) -> None:
            # on the reader thread, before the frames that follow the reply: the events after
            # it carry only what changed, so the tasks they change must be in the views first
            for snap in reply["tasks"]:
                self.core.mirror.apply(snap)
            for data in reply["backlog"]:
                self.core.backlog(Event(**data))
            if reply["reattached"]:
                self.core.delivery.finish_events()

        reply = self._wait(self._submit("attach", on_reply=received, identifier=self.identifier, config=fields,
                                        pid=os.getpid(), interactive=not launched), "attach", _REQUEST_TIMEOUT)
        self._bandwidth = reply.get("bandwidth_limit")
        if reply.get("settings_kept"):
            warnings.warn(SettingsKept(
                f"the transfer service is running session {self.identifier!r} with other settings "
                f"({', '.join(reply['settings_kept'])}) for downloads under way or another process "
                "attached to it; they stay until it is idle. Choose another identifier to download with "
                "these settings now"), stacklevel=2)

    def _read_loop(self, sock: socket.socket) -> None:
        reader = FrameReader(sock)
        while True:
            try:
                messages = reader.messages()
            except (OSError, ValueError):
                messages = None
            if messages is None:
                break
            with self.core.delivery.batch():  # the delegate thread wakes once for what arrived together
                for message in messages:
                    try:
                        self._handle(message)
                    except Exception:  # one bad message must not stop the replies to every call after it
                        log.exception("bgdl_nb: a message from the transfer service could not be handled")
        self._lost(sock)

    def _handle(self, message: dict[str, Any]) -> None:
        if "id" in message and message.get("type") is None:
            call = self._pending.pop(message["id"], None)
            hook = self._on_reply.pop(message["id"], None)
            if call is None:
                if not message.get("ok"):  # refused before any request (another uid)
                    log.error("transfer service: %s", message.get("error", {}).get("message"))
            elif message.get("ok"):
                try:
                    if hook is not None:
                        hook(message.get("result"))
                except Exception as exc:
                    call.set_exception(exc)
                else:
                    call.set_result(message.get("result"))
            else:
                call.set_exception(BgdlError.from_dict(message["error"]))
        elif message.get("type") == "event":
            self.core.on_event(Event(**message["event"]), message.get("task"))
        elif message.get("type") == "progress":
            self.core.mirror.counts({int(tid): received for tid, received in message["counts"].items()})

    def _lost(self, sock: socket.socket) -> None:
        for call in list(self._pending.values()):
            if not call.done():
                call.set_exception(ServiceUnavailable("the transfer service went away during the call; "
                                                      "it restarts by itself: try again"))
        self._pending.clear()
        if self.closed or sock is not self._sock or self._attaching:
            return  # closing, an old connection, or an attach already under way
        try:
            self._attach_with_retries()
            log.info("reattached to a restarted transfer service")
        except BgdlError as exc:
            self.closed = True
            log.error("giving up on the transfer service for %r: %s", self.identifier, exc)

    def _attach_with_retries(self) -> None:
        """Attach, starting the service when needed; a service that dies meanwhile (a
        crash, or a start whose starter was killed) gets a few more tries, then a clear error."""
        wait = threading.Event()
        self._attaching = True
        try:
            self._attach_loop(wait)
        finally:
            self._attaching = False

    def _attach_loop(self, wait: threading.Event) -> None:
        for attempt in range(_RECONNECT_ATTEMPTS):
            try:
                self._attach()
                return
            except (SessionBusy, UnsafeLocation, ServiceNotAnswering):  # trying again changes none of these
                raise
            except BgdlError as exc:
                if attempt == _RECONNECT_ATTEMPTS - 1:
                    raise ServiceUnavailable(f"the transfer service for {self.state_dir} is unavailable: {exc}; "
                                             f"see {runtime_dir(self.state_dir) / 'service.log'}") from exc
                log.info("transfer service unavailable (%s); retrying", exc)
                wait.wait(min(4.0, 0.25 * 2 ** attempt))

    def _request(self, op: str, timeout: float | None = None, **args: Any) -> Any:
        """Send a request and wait for its reply; a service that does not answer in time is
        a :class:`ServiceUnavailable` that says so (never a bare ``TimeoutError``)."""
        return self._wait(self._submit(op, **args), op, _REQUEST_TIMEOUT if timeout is None else timeout)

    def _wait(self, call: Call, op: str, timeout: float) -> Any:
        try:
            return call.result(timeout)
        except concurrent.futures.TimeoutError:
            raise ServiceNotAnswering(
                f"the transfer service{self._pid_text()} did not answer ({op}) within {timeout:g} s; it may be "
                "stopped or overloaded: `bgdl service status` tells, and `bgdl service stop` then the same call "
                "again starts a new one (downloads continue from their partial bytes)") from None

    def _pid_text(self) -> str:
        with contextlib.suppress(OSError, ValueError):
            return f" (pid {int((runtime_dir(self.state_dir) / 'service.pid').read_text())})"
        return ""

    def _submit(self, op: str, on_reply: Callable[[Any], None] | None = None, **args: Any) -> Call:
        """Send a request; ``on_reply`` runs on the reader thread with its result, before
        any frame that came after the reply is handled."""
        call = Call()
        sock = self._sock
        if sock is None:
            call.set_exception(ServiceUnavailable("not connected to the transfer service"))
            return call
        rid = next(self._ids)
        if on_reply is not None:
            self._on_reply[rid] = on_reply
        self._pending[rid] = call
        try:
            with self._send_lock:
                write_frame(sock, {"id": rid, "op": op, **args})
        except OSError as exc:
            self._pending.pop(rid, None)
            if not call.done():  # the reader may have failed it already
                call.set_exception(ServiceUnavailable(f"the transfer service is unreachable ({exc}); try again"))
        return call

    def _ack(self, seq: int, finished_path: str | None) -> None:
        if not self.closed:
            self._submit("ack", identifier=self.identifier, seq=seq, finished_path=finished_path)

    # the host surface --------------------------------------------------------------------

    @property
    def tasks(self) -> dict[int, DownloadTask]:
        return self.core.mirror.tasks

    @property
    def current(self) -> set[int]:
        return self.core.mirror.current

    @property
    def listeners(self) -> list[Callable[[Event], None]]:
        return self.core.listeners

    def attach_session(self, session: Any, delegate: SessionDelegate | None) -> None:
        self.core.attach_session(session, delegate)

    def create_many(self, records: list[TaskRecord], resume: bool) -> list[DownloadTask]:
        snaps = self._request("create_many", identifier=self.identifier, resume=resume,
                              records=[dict(vars(r)) for r in records])  # plain values: encoded at once
        return [self.core.mirror.view(snap) for snap in snaps]

    def control(self, name: str, *args: Any) -> None:
        command = Control(name, args)  # type: ignore[arg-type]  # checked here, before it travels
        self.core.control(lambda: self._request("control", identifier=self.identifier, name=command.name,
                                                args=list(command.args)))
        if name == "set_bandwidth_limit":
            self._bandwidth = args[0]

    def cancel_with_resume_data(self, task_identifier: int) -> Call:
        inner = self._submit("cancel_with_resume_data", identifier=self.identifier, task=task_identifier)
        outer = Call()

        def overdue() -> None:  # an awaited call ends, answered or not
            if not outer.done():
                with contextlib.suppress(concurrent.futures.InvalidStateError):
                    outer.set_exception(ServiceUnavailable(
                        f"the transfer service did not answer the cancel of task {task_identifier} within "
                        f"{_REQUEST_TIMEOUT:g} s; `bgdl service status` shows whether it is running"))

        watchdog = threading.Timer(_REQUEST_TIMEOUT, overdue)
        watchdog.daemon = True
        watchdog.start()

        def done(f: Any) -> None:
            watchdog.cancel()
            if outer.done():
                return
            if f.exception() is not None:
                outer.set_exception(f.exception())
            else:
                value = f.result()
                outer.set_result(None if value is None else base64.b64decode(value))

        inner.add_done_callback(done)
        return outer

    def event_log(self, since: int = 0) -> list[Event]:
        return [Event(**e) for e in self._request("events", identifier=self.identifier, since=since)]

    def destination_busy(self, destination: str) -> int | None:
        return self.core.mirror.destination_busy(destination)

    def bandwidth_limit(self) -> float | None:
        return self._bandwidth

    def sync(self) -> None:
        # the service writes the events of every request to each attached client before it
        # replies to anything later, and the reader applies them in order: one round trip
        self._request("status")

    def close(self, mode: str) -> None:
        if self.closed:
            return
        if mode == "finish":
            for task in list(self.tasks.values()):
                if task.state is not TaskState.COMPLETED:
                    try:
                        task.wait()
                    except BgdlError:
                        pass
        try:
            if mode == "cancel":  # cancel first, so the cancellations reach the delegate below
                self._request("detach", identifier=self.identifier, mode=mode, keep=True, timeout=30)
        except BgdlError:
            pass
        self.core.delivery.close()  # callbacks already queued are delivered (and acknowledged) first
        try:
            self._request("detach", identifier=self.identifier, mode="detach", timeout=30)
        except BgdlError:
            pass
        self.closed = True
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
