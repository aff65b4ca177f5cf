"""The transfer service process (``bgdl service run``).

One per user state directory (a file lock makes a second one exit at once). It hosts
one engine per attached identifier, each holding that identifier's journal lock, and
keeps downloading while kernels are busy, restarting or dead. At start it also loads
every journal that has unfinished running tasks, so a service restarted after a crash
continues them without waiting for their kernels. It exits after ``idle_timeout``
seconds with no client and no running task.

Clients attach to identifiers and receive every event (with the task's state) and live
byte counts; they acknowledge events once their delegate has seen them, which is what
advances the journal's delivery cursor and removes inbox files (a file finished without
a destination stays in the inbox until a client's ``did_finish_downloading_to`` returned).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import signal
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import filelock

from ..._config import Configuration
from ..._events import Event, EventKind
from ..._exceptions import BgdlError, InvalidDestination, InvalidInput
from ..._journal import TaskRecord, has_unfinished
from ..._locks import take
from ..._private import state_write_error
from ..._resume import load_key
from ..._snapshots import TaskSnapshot
from ..commands import Ack, Create, Events, control_from_wire, records_from_wire
from ..endpoint import Endpoint
from .hosted import CONFIG_FIELDS, Client, Hosted, changed_fields, chosen_settings
from .launch import launch
from .protocol import (
    PROTOCOL_VERSION,
    decode,
    decode_length,
    encode,
    peer_allowed,
    peer_uid,
    private_runtime_dir,
    runtime_dir,
)
from .sharing import Sharing

__all__ = ["Service"]

log = logging.getLogger("bgdl_nb.service")

_ORDERED = frozenset({"create_many", "control", "cancel_with_resume_data", "detach"})
"""Requests whose events are published before their reply (so the client sees the effect)."""
class Service:
    """The service's state and request handlers; :meth:`run` is its whole life."""

    def __init__(self, state_dir: Path, idle_timeout: float = 30.0) -> None:
        self.state_dir = state_dir
        self.run_dir = runtime_dir(state_dir)
        self.socket_path = self.run_dir / "service.sock"
        self.idle_timeout = idle_timeout
        self.hosted: dict[str, Hosted] = {}
        self.clients: set[Client] = set()
        self.started = time.time()
        self.key = load_key(state_dir)
        self.sharing = Sharing(self.hosted)
        self._stop = asyncio.Event()

    # life --------------------------------------------------------------------------------

    async def run(self, ready_fd: int | None = None) -> int:
        try:
            private_runtime_dir(self.state_dir)
            lock = take(self.run_dir / "service.lock", 0)
        except filelock.Timeout:  # another service owns this state directory: name it
            pid_file = self.run_dir / "service.pid"
            running = pid_file.read_text().strip() if pid_file.exists() else str(os.getpid())
            self._signal_ready(ready_fd, "running", running)
            return 0
        except BgdlError as exc:  # a state folder it must not use: the starter says why, as it is
            log.error("%s", exc)
            self._signal_ready(ready_fd, "failed", json.dumps(exc.to_dict()))
            return 1
        try:
            if self.socket_path.exists():
                self.socket_path.unlink()  # left by a service that was killed
            server = await asyncio.start_unix_server(self._connection, path=str(self.socket_path))
            os.chmod(self.socket_path, 0o600)
            (self.run_dir / "service.pid").write_text(f"{os.getpid()}\n")  # read by a second start
            for journal in sorted((self.state_dir / "sessions").glob("*.sqlite3")):
                await self._load_if_running(journal)
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._stop.set)
            self._signal_ready(ready_fd, "ready")
            ticker = loop.create_task(self._tick())
            await self._stop.wait()
            ticker.cancel()
            server.close()
            for hosted in list(self.hosted.values()):
                await self._unload(hosted)
            for client in list(self.clients):
                client.writer.close()
            with contextlib.suppress(OSError):  # a state folder turned read-only keeps them: the next start copes
                self.socket_path.unlink(missing_ok=True)
                (self.run_dir / "service.pid").unlink(missing_ok=True)
            return 0
        finally:
            lock.release()

    @staticmethod
    def _signal_ready(fd: int | None, word: str, pid: str | None = None) -> None:
        if fd is not None:
            try:
                os.write(fd, f"{word} {pid or os.getpid()}\n".encode())
            except OSError:
                pass  # whoever started us has gone; serve the next client anyway
            finally:
                os.close(fd)

    async def _tick(self) -> None:
        """Throughput (4 times a second) and idle exit."""
        idle_since: float | None = None
        while True:
            await asyncio.sleep(0.25)
            now = time.monotonic()
            for hosted in self.hosted.values():
                moved = hosted.engine.meter.total
                if hosted._last is not None and now > hosted._last[0]:
                    hosted.rate = max(0.0, (moved - hosted._last[1]) / (now - hosted._last[0]))
                hosted._last = (now, moved)
            if self.clients or any(h.engine.busy for h in self.hosted.values()):  # a scan only without clients
                idle_since = None
            elif idle_since is None:
                idle_since = now
            elif now - idle_since >= self.idle_timeout:
                log.info("idle for %.0f s: exiting", self.idle_timeout)
                self._stop.set()
                return

    # engines -----------------------------------------------------------------------------

    async def _load_if_running(self, journal: Path) -> None:
        identifier = journal.name[: -len(".sqlite3")]
        try:
            unfinished = has_unfinished(journal)
        except Exception:
            return
        if unfinished:
            try:
                await self._host(identifier, {})
            except BgdlError as exc:  # an in-process session holds it: leave it alone
                log.info("not loading %s: %s", identifier, exc)

    async def _host(self, identifier: str, fields: dict[str, Any]) -> Hosted:
        hosted = self.hosted.get(identifier)
        if hosted is not None:
            return hosted
        chosen: dict[str, Any] = dict(fields)

        def settings(store: Any) -> Configuration:
            nonlocal chosen
            if chosen:  # the configuration outlives the service: a restarted one reads it back
                store.set_meta("config", json.dumps(chosen))
            else:
                chosen = json.loads(store.get_meta("config") or "{}")
            return Configuration.background(identifier, state_directory=self.state_dir,
                                            **{k: (tuple(v) if isinstance(v, list) else v)
                                               for k, v in chosen.items() if k in CONFIG_FIELDS})

        endpoint = Endpoint(Configuration.background(identifier, state_directory=self.state_dir), self.key,
                            holder=f"transfer service pid {os.getpid()}", state_dir=self.state_dir, settings=settings)
        fields = chosen
        hosted = Hosted(self, identifier, endpoint, fields)
        endpoint.open(announce=False)  # attaching clients are announced one by one
        self.hosted[identifier] = hosted
        return hosted

    async def _unload(self, hosted: Hosted) -> None:
        await hosted.endpoint.close("detach")
        hosted.endpoint.close_store()
        self.hosted.pop(hosted.identifier, None)

    def _broadcast(self, hosted: Hosted, event: Event, snapshot: TaskSnapshot | None) -> None:
        frame = encode({"type": "event", "identifier": hosted.identifier, "event": event.wire(),
                        "task": None if snapshot is None or hosted.sent_already(snapshot)
                        else changed_fields(hosted.shown, snapshot)})
        if hosted.frames is not None:
            hosted.frames.append(frame)
        else:
            for client in hosted.clients:
                client.send_frames(frame)
        if snapshot is not None:
            self.sharing.relay(hosted, event, snapshot)
        if event.event in (EventKind.FINISHED.value, EventKind.COMPLETED.value, EventKind.FAILED.value) \
                and not hosted.clients:
            if event.event != EventKind.FINISHED.value:
                hosted.unattended.append(event.event)
            asyncio.get_running_loop().call_soon(launch, hosted, self.run_dir, self.state_dir)

    # connections -------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock: socket.socket = writer.get_extra_info("socket")
        uid = peer_uid(sock)
        client = Client(writer)
        if not peer_allowed(uid):
            client.send({"id": 0, "ok": False, "error": {
                "type": "SessionError", "message": f"refused: uid {uid} does not own this transfer service"}})
            await writer.drain()
            writer.close()
            return
        self.clients.add(client)
        try:
            while True:
                try:
                    header = await reader.readexactly(4)
                    body = await reader.readexactly(decode_length(header))
                except (asyncio.IncompleteReadError, ConnectionError, ValueError):
                    return  # the client left
                request = decode(body)
                reply = await self._handle(client, request)
                client.send(reply)
                await writer.drain()
        finally:
            self.clients.discard(client)
            for identifier in client.identifiers:  # still attached: it left without closing (killed, crashed)
                hosted = self.hosted.get(identifier)
                if hosted is not None:
                    hosted.clients.discard(client)
                    hosted.engine.note(EventKind.CLIENT_LEFT, f"client pid {client.pid} went away without closing "
                                                              "its session; the transfers go on here")
            writer.close()

    async def _handle(self, client: Client, request: dict[str, Any]) -> dict[str, Any]:
        rid = request.get("id", 0)
        try:
            op = request.get("op")
            if op == "hello":
                theirs = request.get("protocol")
                if theirs != PROTOCOL_VERSION:
                    raise InvalidInput(
                        f"the client speaks protocol {theirs}, this transfer service (pid {os.getpid()}) speaks "
                        f"{PROTOCOL_VERSION}; stop it with `bgdl service stop` and try again")
                return {"id": rid, "ok": True, "result": {"protocol": PROTOCOL_VERSION, "pid": os.getpid()}}
            handler = getattr(self, f"_op_{op}", None)
            if handler is None:
                raise InvalidInput(f"unknown request {op!r}")
            result = await handler(client, request)
            if op in _ORDERED:
                for hosted in self.hosted.values():
                    hosted.engine.flush()  # the events of a request reach clients before its reply
            return {"id": rid, "ok": True, "result": result}
        except BgdlError as exc:
            return {"id": rid, "ok": False, "error": exc.to_dict()}
        except OSError as exc:  # its state folder filled up or turned read-only: it can go on once that passes
            shown = state_write_error(exc, "the transfer service's state", self.state_dir)
            if shown is None:
                log.exception("request %s failed", request.get("op"))
                return {"id": rid, "ok": False, "error": {"type": "BgdlError", "message": f"service error: {exc}"}}
            return {"id": rid, "ok": False, "error": shown.to_dict()}
        except Exception as exc:  # a bug here must not take the service down
            log.exception("request %s failed", request.get("op"))
            return {"id": rid, "ok": False, "error": {"type": "BgdlError", "message": f"service error: {exc}"}}

    async def _op_attach(self, client: Client, request: dict[str, Any]) -> dict[str, Any]:
        identifier = request["identifier"]
        existed = identifier in self.hosted or Configuration.background(
            identifier, state_directory=self.state_dir).journal_path().exists()
        fields = request.get("config", {})
        loaded = self.hosted.get(identifier)
        changed = {} if loaded is None else {k: v for k, v in chosen_settings(fields).items() if loaded.fields.get(k) != v}
        kept: list[str] = []
        if loaded is not None and changed:
            if loaded.clients or loaded.engine.busy:
                kept = sorted(changed)  # downloading, or watched by another client: they wait until it is idle
            else:  # nobody uses it: the session goes on with the settings chosen now
                await self._unload(loaded)
                fields = {**loaded.fields, **changed}
        hosted = await self._host(identifier, fields)
        engine = hosted.engine
        interactive = request.get("interactive", True)
        if existed and engine.summary()[0]:
            reset = f"; launch rate limiter reset after {hosted.launches} launches" \
                if interactive and hosted.launches else ""
            engine.note(EventKind.REATTACHED, f"{'' if interactive else 'launched '}client pid "
                                              f"{request.get('pid')} attached{reset}")
        if interactive:
            hosted.launches = 0
            hosted.unattended, hosted.told = [], 0  # their events go to this client now
        else:
            client.launched.add(identifier)
        # nothing is left to publish, then the backlog (this reattach included), the snapshot
        # and the subscription happen without an await between them: the client sees every
        # event exactly once, the old ones in the reply and the new ones after it
        attached = hosted.endpoint.attach()
        hosted.clients.add(client)
        client.identifiers.add(identifier)
        client.pid = request.get("pid")
        return {"tasks": [snap.wire() for snap in attached.snapshots], "backlog": [e.wire() for e in attached.backlog],
                "reattached": existed, "bandwidth_limit": engine.bandwidth_limit, "settings_kept": kept}

    def _endpoint(self, client: Client, request: dict[str, Any]) -> Endpoint:
        identifier = request["identifier"]
        if identifier not in client.identifiers or identifier not in self.hosted:
            raise InvalidInput(f"attach to {identifier!r} first")
        return self.hosted[identifier].endpoint

    async def _op_create_many(self, client: Client, request: dict[str, Any]) -> list[int]:
        return self._create(client, request, request["records"], resume=bool(request.get("resume")))

    def _create(self, client: Client, request: dict[str, Any], fields: list[dict[str, Any]],
                resume: bool) -> list[int]:
        identifier = request["identifier"]
        endpoint = self._endpoint(client, request)
        engine = endpoint.engine
        hosted = self.hosted[identifier]
        records = records_from_wire(fields)
        for record in records:
            destination = record.destination
            busy = engine.destination_owner(destination) if destination else None
            if busy is not None:
                raise InvalidDestination(f"task {busy} already downloads to {destination}; wait for it or cancel it")
            if identifier in client.launched and hosted.launches:  # the relaunch rate limiter
                delay = engine.config.launch_delay * 2 ** (hosted.launches - 1)
                record.launch_delay_until = time.time() + delay
                record.launch_delay_reason = f"launch rate limit ({delay:g} s after launch {hosted.launches})"
        def link(numbered: Sequence[TaskRecord]) -> None:  # before they start: a shared transfer starts once
            for record in numbered:
                self.sharing.link(hosted, vars(record))

        tids: list[int] = endpoint.handle(Create(records, resume, link))
        return tids  # the client has their snapshots already: they came with the events, before this reply

    async def _op_control(self, client: Client, request: dict[str, Any]) -> Any:
        command = control_from_wire(request.get("name"), request.get("args", []))
        answer = self._endpoint(client, request).handle(command)
        return answer.wire() if isinstance(answer, TaskSnapshot) else answer

    async def _op_cancel_with_resume_data(self, client: Client, request: dict[str, Any]) -> str | None:
        data = await self._endpoint(client, request).cancel_with_resume_data(int(request["task"]))
        return None if data is None else base64.b64encode(data).decode()

    async def _op_events(self, client: Client, request: dict[str, Any]) -> Any:
        since = int(request.get("since", 0))
        if request.get("columns"):  # one list per column: no object per row on either side
            columns: Any = self._endpoint(client, request).handle(Events(since, columns=True))
            return columns
        events = self._endpoint(client, request).handle(Events(since))
        return [e.wire() for e in events]

    async def _op_ack(self, client: Client, request: dict[str, Any]) -> None:
        self._endpoint(client, request).handle(Ack(int(request["seq"]), request.get("finished_path")))

    async def _op_detach(self, client: Client, request: dict[str, Any]) -> None:
        identifier = request["identifier"]
        if request.get("mode") == "cancel" and identifier in self.hosted:
            engine = self.hosted[identifier].engine
            await engine.cancel_all()
            if request.get("keep"):
                return
        client.identifiers.discard(identifier)
        if identifier in self.hosted:
            self.hosted[identifier].clients.discard(client)

    async def _op_status(self, client: Client, request: dict[str, Any]) -> dict[str, Any]:
        sessions = {}
        for identifier, hosted in self.hosted.items():
            count, running = hosted.engine.summary()
            sessions[identifier] = {"tasks": count, "running": running, "clients": len(hosted.clients),
                                    "bytes_per_second": round(hosted.rate),
                                    "finished_unattended": len(hosted.unattended) - hosted.unattended.count("failed"),
                                    "failed_unattended": hosted.unattended.count("failed"),
                                    "halted": None if hosted.engine.halted is None else str(hosted.engine.halted)}
        return {"pid": os.getpid(), "uptime": round(time.time() - self.started, 1), "protocol": PROTOCOL_VERSION,
                "clients": len(self.clients) - 1, "sessions": sessions, "state_dir": str(self.state_dir)}

    async def _op_shutdown(self, client: Client, request: dict[str, Any]) -> dict[str, Any]:
        self._stop.set()
        return {"stopping": os.getpid()}


def main(state_dir: Path, idle_timeout: float, ready_fd: int | None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return asyncio.run(Service(state_dir, idle_timeout).run(ready_fd))
