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
import socket
import threading
import warnings
from collections.abc import Callable
from typing import Any

from ..._config import Configuration
from ..._delegate import SessionDelegate
from ..._events import Event
from ..._exceptions import BgdlError, DiskFull, SessionError, SettingsKept, UnsafeLocation
from ..._journal import TaskRecord
from ..._snapshots import TaskSnapshot
from ..._states import TaskState
from ..._task import DownloadTask
from ..base import Call, HostCore
from ..commands import Control, records_to_wire
from .control import (
    REQUEST_TIMEOUT,
    connect,
    service_pid_text,
    service_status,
    socket_path,
    start_service,
    stop_service,
)
from .protocol import (
    PROTOCOL_VERSION,
    FrameReader,
    ServiceNotAnswering,
    ServiceUnavailable,
    runtime_dir,
    write_frame,
)

__all__ = ["ServiceHost", "service_status", "start_service", "stop_service"]

log = logging.getLogger("bgdl_nb")
_REQUEST_TIMEOUT = REQUEST_TIMEOUT  # read at each call (a test shortens it)
_RECONNECT_ATTEMPTS = 8


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
        sock = connect(self.state_dir)
        if sock is None:
            start_service(self.state_dir)
            sock = connect(self.state_dir)
            if sock is None:
                raise ServiceUnavailable(f"cannot reach the transfer service at {socket_path(self.state_dir)}")
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
                self.core.mirror.apply(TaskSnapshot.from_wire(snap))
            for data in reply["backlog"]:
                self.core.backlog(Event.from_wire(data))
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
            task = message.get("task")
            self.core.on_event(Event.from_wire(message["event"]), None if task is None else TaskSnapshot.from_wire(task))
        elif message.get("type") == "halted":
            self.core.halted(BgdlError.from_dict(message["error"]))
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
            except (UnsafeLocation, ServiceNotAnswering, DiskFull):  # trying again changes none of these
                raise
            except BgdlError as exc:
                if isinstance(exc, SessionError) and not isinstance(exc, ServiceUnavailable):
                    raise  # held by another process, or a state folder it cannot write: the same again
                # a service on its way down or up (a broken pipe, a refused connection): try again
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
                f"the transfer service{service_pid_text(self.state_dir)} did not answer ({op}) within {timeout:g} s; "
                "it may be stopped or overloaded: `bgdl service status` tells, and `bgdl service stop` then the same call "
                "again starts a new one (downloads continue from their partial bytes)") from None



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
        tids = self._request("create_many", identifier=self.identifier, resume=resume,
                             records=records_to_wire(records))
        return [self.core.mirror.tasks[tid] for tid in tids]  # the events, sent before the reply, made the views

    def control(self, name: str, *args: Any) -> Any:
        command = Control(name, args)  # type: ignore[arg-type]  # checked here, before it travels
        answer = self.core.control(lambda: self._request("control", identifier=self.identifier, name=command.name,
                                                         args=list(command.args)))
        if name == "set_bandwidth_limit":
            self._bandwidth = args[0]
        return answer

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
        return [Event.from_wire(e) for e in self._request("events", identifier=self.identifier, since=since)]

    def event_columns(self, since: int = 0) -> dict[str, list[Any]]:
        columns: dict[str, list[Any]] = self._request("events", identifier=self.identifier, since=since, columns=True)
        return columns

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
