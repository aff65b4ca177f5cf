"""The commands a host sends to an engine endpoint: frozen dataclasses, not method names.

They are plain data (no engine, no HTTP library behind them), so a client of the transfer
service builds and checks them without loading the engine; the service rebuilds them from
a request with :func:`control_from_wire` and :func:`records_from_wire`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from .._exceptions import InvalidInput
from .._journal import TaskRecord

__all__ = ["CONTROLS", "Ack", "Command", "Control", "ControlName", "Create", "Events", "control_from_wire",
           "records_from_wire", "records_to_wire"]

ControlName = Literal["resume", "resume_many", "suspend", "suspend_many", "cancel", "set_priority", "pause",
                      "unpause", "set_bandwidth_limit", "configure", "expect_digest",
                      "note_unpacked", "want_bytes", "relink"]
"""The engine controls a host forwards for ``task.resume()`` and friends."""

CONTROLS: frozenset[str] = frozenset(get_args(ControlName))


@dataclass(frozen=True)
class Create:
    """Create ``records`` as tasks, and resume them all when ``resume``. ``numbered`` is
    called with the records once the engine numbered them, before any starts (the service
    links a file two sessions want there): creating, that, and resuming are one journal
    group, so each task's events and snapshot reach a client once."""

    records: tuple[TaskRecord, ...]
    resume: bool = False
    numbered: Callable[[Sequence[TaskRecord]], None] | None = None


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


_FIELDS = frozenset(f.name for f in dataclasses.fields(TaskRecord))
_DEFAULTS = vars(TaskRecord(0, ""))
_ALWAYS = ("task_identifier", "url")


def records_to_wire(records: list[TaskRecord]) -> list[dict[str, Any]]:
    """New tasks' records as plain values, each with only the fields that differ from a
    new record's defaults (of thirty, a URL and a destination, mostly)."""
    return [{k: v for k, v in vars(r).items() if k in _ALWAYS or v != _DEFAULTS[k]} for r in records]


def records_from_wire(items: list[dict[str, Any]]) -> tuple[TaskRecord, ...]:
    """Task records from the plain fields a client sent (:func:`records_to_wire`; a field
    of no record is left out, the state is its enum again)."""
    from .._states import TaskState
    records = []
    for item in items:
        known = item if _FIELDS.issuperset(item) else {k: v for k, v in item.items() if k in _FIELDS}
        record = TaskRecord(**known)
        record.state = TaskState(record.state)
        records.append(record)
    return tuple(records)
