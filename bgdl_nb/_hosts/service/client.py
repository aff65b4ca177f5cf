"""The kernel side of the transfer service: a host with the thread host's surface.

The :class:`ServiceHost` starts the service when none runs (detached, in a session of
its own, reaped by a thread so it never lingers as a zombie), attaches to an
identifier, and mirrors its tasks: every event pushed by the service carries the task's
state, and progress messages carry live byte counts, so ``DownloadTask`` objects read
here are always current. Delegate callbacks run in order on a delegate thread; each
event is acknowledged after its callbacks returned.

When the service vanishes (killed, crashed), the reader thread starts a new one and
attaches again, within a bounded time; pending calls fail with
:class:`ServiceUnavailable` instead of hanging.
"""

from __future__ import annotations

import base64
import dataclasses
import itertools
import logging
import os
import queue
import select
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable

from ..._config import Configuration
from ..._delegate import Deliverer, SessionDelegate
from ..._events import Event, EventKind
from ..._exceptions import BgdlError, SessionBusy
from ..._journal import TaskRecord
from ..._task import DownloadTask, TaskState
from ..thread import Call
from .protocol import PROTOCOL_VERSION, ServiceUnavailable, ensure_private_dir, read_frame, runtime_dir, write_frame

__all__ = ["ServiceHost", "service_status", "start_service", "stop_service"]

log = logging.getLogger("bgdl_nb")
_REQUEST_TIMEOUT = 60.0
_RECONNECT_ATTEMPTS = 8


def _socket_path(state_dir: Path) -> Path:
    return runtime_dir(state_dir) / "service.sock"


def _connect(state_dir: Path) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(_socket_path(state_dir)))
    except OSError:
        sock.close()
        return None
    return sock


def start_service(state_dir: Path, idle_timeout: float | None = None, timeout: float = 30.0) -> int:
    """Start the service for ``state_dir`` unless one runs; return its pid."""
    ensure_private_dir(runtime_dir(state_dir))
    read_fd, write_fd = os.pipe()
    args = [sys.executable, "-m", "bgdl_nb.cli", "service", "run", "--state-dir", str(state_dir),
            "--ready-fd", str(write_fd)]
    if idle_timeout is not None:
        args += ["--idle-timeout", str(idle_timeout)]
    log_file = open(runtime_dir(state_dir) / "service.log", "ab")
    try:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                                pass_fds=[write_fd], start_new_session=True, close_fds=True)
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
        raise ServiceUnavailable(f"the transfer service did not start within {timeout:g} s; see "
                                 f"{runtime_dir(state_dir) / 'service.log'}")
    return int(line.split()[1])


def _request_once(state_dir: Path, op: str, **args: Any) -> Any:
    sock = _connect(state_dir)
    if sock is None:
        return None
    with sock:
        sock.settimeout(_REQUEST_TIMEOUT)
        write_frame(sock, {"id": 1, "op": "hello", "protocol": PROTOCOL_VERSION})
        hello = read_frame(sock)
        if not hello or not hello.get("ok"):
            raise ServiceUnavailable((hello or {}).get("error", {}).get("message", "the service refused to talk"))
        write_frame(sock, {"id": 2, "op": op, **args})
        reply = read_frame(sock)
        if reply is None:
            return None
        if not reply.get("ok"):
            raise BgdlError.from_dict(reply["error"])
        return reply["result"]


def service_status(state_dir: Path) -> dict[str, Any] | None:
    """The running service's status, or ``None`` when none runs."""
    return _request_once(state_dir, "status")


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
        self.session, self.delegate = session, delegate
        self.tasks: dict[int, DownloadTask] = {}
        self._destinations: dict[str, int] = {}  # destination -> unfinished task writing it
        self.listeners: list[Callable[[Event], None]] = []
        self.closed = False
        self._bandwidth: float | None = config.bandwidth_limit
        self._ids = itertools.count(1)
        self._pending: dict[int, Call] = {}
        self._send_lock = threading.Lock()
        self._deliveries: queue.Queue[tuple[Event, bool] | None] = queue.Queue()
        self._delivered = 0
        self._deliverer = Deliverer()
        self._sock: socket.socket | None = None
        self._attaching = False
        self._attach_with_retries()
        self._delivery_thread = threading.Thread(target=self._deliver_loop, name="bgdl-client-delegate",
                                                 daemon=True)
        self._delivery_thread.start()

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
        reply = self._request("attach", identifier=self.identifier, config=fields, pid=os.getpid(),
                              interactive=not launched)
        self._bandwidth = reply.get("bandwidth_limit")
        for snap in reply["tasks"]:
            self._mirror(snap)
        for data in reply["backlog"]:
            self._deliveries.put((Event(**data), True))
        if reply["reattached"]:
            self._deliveries.put((Event(0, 0.0, self.identifier, None, EventKind.FINISHED_EVENTS.value), False))

    def _read_loop(self, sock: socket.socket) -> None:
        while True:
            try:
                message = read_frame(sock)
            except (OSError, ValueError):
                message = None
            if message is None:
                break
            if "id" in message and message.get("type") is None:
                call = self._pending.pop(message["id"], None)
                if call is None:
                    if not message.get("ok"):  # refused before any request (another uid)
                        log.error("transfer service: %s", message.get("error", {}).get("message"))
                    continue
                if message.get("ok"):
                    call.set_result(message.get("result"))
                else:
                    call.set_exception(BgdlError.from_dict(message["error"]))
            elif message.get("type") == "event":
                self._on_event(message)
            elif message.get("type") == "progress":
                for tid, (received, reason) in message["counts"].items():
                    task = self.tasks.get(int(tid))
                    if task is not None:
                        task._received, task.waiting_reason = received, reason
        self._lost(sock)

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
            except SessionBusy:
                raise
            except BgdlError as exc:
                if attempt == _RECONNECT_ATTEMPTS - 1:
                    raise ServiceUnavailable(f"the transfer service for {self.state_dir} is unavailable: {exc}; "
                                             f"see {runtime_dir(self.state_dir) / 'service.log'}") from exc
                log.info("transfer service unavailable (%s); retrying", exc)
                wait.wait(min(4.0, 0.25 * 2 ** attempt))

    def _request(self, op: str, timeout: float | None = _REQUEST_TIMEOUT, **args: Any) -> Any:
        return self._submit(op, **args).result(timeout)

    def _submit(self, op: str, **args: Any) -> Call:
        call = Call()
        sock = self._sock
        if sock is None:
            call.set_exception(ServiceUnavailable("not connected to the transfer service"))
            return call
        rid = next(self._ids)
        self._pending[rid] = call
        try:
            with self._send_lock:
                write_frame(sock, {"id": rid, "op": op, **args})
        except OSError as exc:
            self._pending.pop(rid, None)
            if not call.done():  # the reader may have failed it already
                call.set_exception(ServiceUnavailable(f"the transfer service is unreachable ({exc}); try again"))
        return call

    # mirroring ---------------------------------------------------------------------------

    def _mirror(self, snap: dict[str, Any]) -> DownloadTask:
        fields = snap["record"]
        task = self.tasks.get(fields["task_identifier"])
        if task is None:
            task = DownloadTask(self.session, TaskRecord(**fields))
            self.tasks[task.task_identifier] = task
        else:
            vars(task._record).update(fields)
        task._received = snap["received"]
        task.waiting_reason = snap["waiting_reason"]
        destination = fields["destination"]
        if fields["state"] == TaskState.COMPLETED.value:
            task._settle()
            if destination and self._destinations.get(destination) == task.task_identifier:
                del self._destinations[destination]
        elif destination:
            self._destinations[destination] = task.task_identifier
        return task

    def _on_event(self, message: dict[str, Any]) -> None:
        if message.get("task") is not None:
            self._mirror(message["task"])
        event = Event(**message["event"])
        for listener in list(self.listeners):
            try:
                listener(event)
            except Exception:
                log.exception("bgdl_nb event listener failed")
        self._deliveries.put((event, True))

    def _deliver_loop(self) -> None:
        while True:
            item = self._deliveries.get()
            if item is None:
                return
            event, journaled = item
            if journaled and event.seq <= self._delivered:
                continue  # seen before a reconnect
            task = self.tasks.get(event.task_identifier) if event.task_identifier is not None else None
            try:
                finished = self._deliverer.submit(self.delegate, self.session, task, event).result()
            except Exception:
                log.exception("bgdl_nb could not deliver %s", event)
                finished = False
            if journaled:
                self._delivered = event.seq
                path = event.detail if finished and task is not None and not task._record.destination else None
                # one acknowledgement covers every event before it: send it when the queue runs
                # dry, when an inbox file may go, or every 256 events
                if not self.closed and (path or self._deliveries.empty() or event.seq % 256 == 0):
                    self._submit("ack", identifier=self.identifier, seq=event.seq, finished_path=path)

    # the host surface --------------------------------------------------------------------

    def set_session(self, session: Any, delegate: SessionDelegate | None) -> None:
        self.session, self.delegate = session, delegate
        for task in list(self.tasks.values()):
            task._session = session

    def create(self, record: TaskRecord) -> DownloadTask:
        snap = self._request("create", identifier=self.identifier, record=dataclasses.asdict(record))
        return self._mirror(snap)

    def create_many(self, records: list[TaskRecord], resume: bool) -> list[DownloadTask]:
        snaps = self._request("create_many", identifier=self.identifier, resume=resume,
                              records=[dataclasses.asdict(r) for r in records])
        return [self._mirror(snap) for snap in snaps]

    def control(self, name: str, *args: Any) -> None:
        self._request("control", identifier=self.identifier, name=name, args=list(args))
        if name == "set_bandwidth_limit":
            self._bandwidth = args[0]

    def call(self, name: str, *args: Any) -> Call:
        if name != "cancel_with_resume_data":
            raise ValueError(name)
        inner = self._submit("cancel_with_resume_data", identifier=self.identifier, task=args[0])
        outer = Call()

        def done(f: Any) -> None:
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
        return self._destinations.get(destination)

    def bandwidth_limit(self) -> float | None:
        return self._bandwidth

    def close(self, mode: str) -> None:
        if self.closed:
            return
        if mode == "finish":
            for task in list(self.tasks.values()):
                if task.state != TaskState.COMPLETED:
                    try:
                        task.wait()
                    except BgdlError:
                        pass
        self._deliveries.put(None)  # callbacks already queued are delivered (and acknowledged) first
        self._delivery_thread.join(30)
        try:
            self._request("detach", identifier=self.identifier, mode=mode, timeout=30)
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
        self._deliverer.close()
