"""A session the transfer service hosts (:class:`Hosted`: its endpoint, the clients attached
to it, what they were last sent), one attached client connection (:class:`Client`), and
the settings a client chose for a session (:func:`chosen_settings`: what the service
keeps in the session's journal and compares when another client reattaches)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from ..._config import Configuration
from ..._states import TaskState
from .protocol import encode

if TYPE_CHECKING:
    from ..._events import Event
    from ..._exceptions import BgdlError
    from ..._snapshots import TaskSnapshot
    from ..endpoint import Endpoint
    from .server import Service

__all__ = ["CONFIG_FIELDS", "Client", "Hosted", "changed_fields", "chosen_settings"]


# what a client sends of its configuration: every setting but where the session lives
CONFIG_FIELDS = {f.name for f in dataclasses.fields(Configuration)} - {"identifier", "state_directory", "use_service"}


@functools.cache
def _default_fields() -> dict[str, Any]:
    """A background configuration's defaults, in the JSON form clients send settings in."""
    defaults = Configuration.background("defaults")
    as_sent: dict[str, Any] = json.loads(json.dumps({name: getattr(defaults, name) for name in CONFIG_FIELDS}))
    return as_sent


def chosen_settings(fields: dict[str, Any]) -> dict[str, Any]:
    """The settings a client chose, as opposed to left at their defaults (and to its
    environment, which says where the client runs, not how the session downloads): a
    kernel that reattaches by identifier alone, as a launched handler does, chooses none."""
    defaults = _default_fields()
    return {k: v for k, v in fields.items() if k in defaults and k != "environment" and v != defaults[k]}


class Client:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.identifiers: set[str] = set()
        self.launched: set[str] = set()  # identifiers this client was launched for
        self.pid: object = None  # the client process, as it said when it attached

    def send(self, message: dict[str, Any]) -> None:
        self.send_frames(encode(message))

    def send_frames(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)


class Hosted:
    """One identifier's engine in the service, and the sink its output goes to."""

    def __init__(self, service: Service, identifier: str, endpoint: Endpoint, fields: dict[str, Any]) -> None:
        self.service = service
        self.identifier = identifier
        self.endpoint = endpoint
        self.engine = endpoint.engine
        self.fields = fields  # the configuration the engine runs with, as clients send it
        self.clients: set[Client] = set()
        self.rate = 0.0
        self._last: tuple[float, int] | None = None
        self.launches = 0  # since an interactive client last attached
        self.launched: Any = None  # the running launch_command process
        self.unattended: list[str] = []  # how tasks ended while no client was attached (completed, failed)
        self.told = 0  # how many of those the person has been notified of
        self.frames: list[bytes] | None = None  # the events of a batch under way, encoded
        self._sent: set[int] = set()  # the snapshots (by id) already sent in that batch
        self.shown: dict[int, Mapping[str, Any]] = {}  # each unfinished task's record as its clients last got it
        self.engine.sink = self

    def event(self, event: Event, snapshot: TaskSnapshot | None) -> None:
        self.service._broadcast(self, event, snapshot)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """The events of one journal commit reach each client in one write, not one each."""
        self.frames = []
        try:
            yield
        finally:
            data, self.frames = b"".join(self.frames), None
            self._sent.clear()
            if data:
                for client in self.clients:
                    client.send_frames(data)

    def sent_already(self, snapshot: TaskSnapshot) -> bool:
        """Whether this snapshot went out with an earlier event of the batch under way (the
        engine takes one per task per batch): the clients' views have it already."""
        if self.frames is None:
            return False
        key = id(snapshot)
        if key in self._sent:
            return True
        self._sent.add(key)
        return False

    def counts(self, counts: dict[int, int]) -> None:
        message = {"type": "progress", "identifier": self.identifier, "counts": {str(k): v for k, v in counts.items()}}
        for client in self.clients:
            client.send(message)
        self.service.sharing.progress(self, counts)

    def halted(self, error: BgdlError) -> None:
        """The journal cannot be written: the clients' waits end with ``error``."""
        message = {"type": "halted", "identifier": self.identifier, "error": error.to_dict()}
        for client in self.clients:
            client.send(message)


_ALWAYS_SENT = ("task_identifier", "state", "destination")  # what a client's mirror reads of every update
_ABSENT = object()


def changed_fields(shown: dict[int, Mapping[str, Any]], snapshot: TaskSnapshot) -> dict[str, Any]:
    """``snapshot`` for the wire, with only the row's fields that changed since its task was
    last sent (every client got that one: the whole row comes with a task's first event and
    with the snapshots a client attaches with). Most events change a field or two of thirty."""
    record = snapshot.fields
    tid = snapshot.task_identifier
    before = shown.get(tid)
    if record["state"] == TaskState.COMPLETED:
        shown.pop(tid, None)
    else:
        shown[tid] = record  # the engine's copy: it is not changed after
    if before is None:
        return snapshot.wire()
    return snapshot.wire({k: v for k, v in record.items() if k in _ALWAYS_SENT or before.get(k, _ABSENT) != v})
