"""What a host is told of a task: a typed, frozen :class:`TaskSnapshot`.

The engine keeps a task's journal row (:class:`~bgdl_nb._journal.TaskRecord`) and its
live state (:class:`~bgdl_nb._run.TaskRun`); a host never sees either. It gets a
``TaskSnapshot``: the row's fields as plain values (a copy, so the engine can change its
own at once), the live byte count, why the task waits, and a version that orders two
pictures of one task. The transfer service sends it as :meth:`TaskSnapshot.wire` (with
only the fields that changed since the last one its clients got) and a client reads it
back with :meth:`TaskSnapshot.from_wire`, so a new task field is a change in one layer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["TaskSnapshot"]


@dataclass(frozen=True, slots=True)
class TaskSnapshot:
    """One task as the engine had it after an event (or a control's reply).

    Attributes
    ----------
    fields
        The journal row's fields by name (``task_identifier``, ``url``, ``state`` ...): all
        of them, or (from the service) only those that changed plus ``task_identifier``,
        ``state`` and ``destination``.
    received
        Bytes received so far (live, ahead of the journaled offset).
    version
        Increases with every snapshot of the task: an older picture is never shown.
    waiting_reason, wait
        Why the task waits, as text for people and as a ``WaitReason`` value.
    """

    fields: Mapping[str, Any]
    received: int
    version: int = 0
    waiting_reason: str | None = None
    wait: str | None = None

    @property
    def task_identifier(self) -> int:
        return int(self.fields["task_identifier"])

    @property
    def complete(self) -> bool:
        """All of the row's fields are here (not a service's delta)."""
        return "url" in self.fields

    def wire(self, fields: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Plain values for a frame (``fields`` instead of all of them: a delta)."""
        return {"record": dict(self.fields if fields is None else fields), "received": self.received,
                "version": self.version, "waiting_reason": self.waiting_reason, "wait": self.wait}

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> TaskSnapshot:
        return cls(data["record"], data["received"], data.get("version", 0), data.get("waiting_reason"),
                   data.get("wait"))
