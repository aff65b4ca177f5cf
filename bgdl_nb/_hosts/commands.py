"""The commands a host sends to an engine endpoint: frozen dataclasses, not method names.

They are plain data (no engine, no HTTP library behind them), so a client of the transfer
service builds and checks them without loading the engine; the service rebuilds them from
a request with :func:`control_from_wire` and :func:`records_from_wire`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, get_args

from .._exceptions import InvalidInput
from .._journal import TaskRecord

__all__ = ["CONTROLS", "Ack", "Command", "Control", "ControlName", "Create", "Events", "control_from_wire",
           "records_from_wire"]

ControlName = Literal["resume", "resume_many", "suspend", "suspend_many", "cancel", "set_priority", "pause",
                      "unpause", "set_bandwidth_limit", "configure", "expect_digest",
                      "note_unpacked", "want_bytes", "relink"]
"""The engine controls a host forwards for ``task.resume()`` and friends."""

CONTROLS: frozenset[str] = frozenset(get_args(ControlName))


@dataclass(frozen=True)
class Create:
    """Create ``records`` as tasks, and resume them all when ``resume``."""

    records: tuple[TaskRecord, ...]
    resume: bool = False


@dataclass(frozen=True)
class Control:
    """Apply the control ``name`` with ``args`` (a task identifier first, for most)."""

    name: ControlName
    args: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        if self.name not in CONTROLS:
            raise InvalidInput(f"unknown control {self.name!r}; one of {', '.join(sorted(CONTROLS))}")


@dataclass(frozen=True)
class Ack:
    """Events up to ``seq`` reached the delegate; ``finished_path`` is an inbox file it moved away."""

    seq: int
    finished_path: str | None = None


@dataclass(frozen=True)
class Events:
    """The journaled events after sequence number ``since``: :class:`Event` rows, or with
    ``columns`` one list per column of :data:`~bgdl_nb._events.EVENT_COLUMNS` (what a
    DataFrame is built from, with no object per row)."""

    since: int = 0
    columns: bool = False


Command = Create | Control | Ack | Events


def control_from_wire(name: object, args: object) -> Control:
    """A :class:`Control` from a request's ``name`` and ``args`` (checked here)."""
    return Control(name, tuple(args) if isinstance(args, list) else ())  # type: ignore[arg-type]


def records_from_wire(items: list[dict[str, Any]]) -> tuple[TaskRecord, ...]:
    """Task records from the plain fields a client sent (the state as its enum again)."""
    from .._states import TaskState
    names = {f.name for f in dataclasses.fields(TaskRecord)}
    return tuple(TaskRecord(**{**{k: v for k, v in item.items() if k in names},
                               "state": TaskState(item.get("state", TaskState.SUSPENDED))}) for item in items)
