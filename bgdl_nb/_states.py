"""Task states and the one table of transitions between them.

A task starts ``SUSPENDED``; nothing moves until ``resume()``::

    SUSPENDED --resume()--> RUNNING --(file complete / error / HTTP status)--> COMPLETED
    RUNNING --suspend()--> SUSPENDED
    SUSPENDED|RUNNING --cancel()--> CANCELING --> COMPLETED (error: Cancelled)
    SUSPENDED --(expired, or adopted from a shared transfer)--> COMPLETED

``RUNNING`` covers waiting for a slot and transferring, as in URLSession; the waiting
reason tells which. ``COMPLETED`` is final. The engine applies every change through
:func:`check_transition`, so an impossible move is a bug that names itself instead of a
task silently stuck. The journal stores the enum's value.
"""

from __future__ import annotations

import enum

__all__ = ["TRANSITIONS", "TaskState", "check_transition"]


class TaskState(str, enum.Enum):
    """Where a task is in its life."""

    SUSPENDED = "suspended"   # created, or suspend() was called
    RUNNING = "running"       # resume() was called: waiting for its turn or transferring
    CANCELING = "canceling"   # cancel() was called and the transfer is being stopped
    COMPLETED = "completed"   # finished, failed or cancelled; final

    def __str__(self) -> str:
        return self.value


TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    TaskState.SUSPENDED: frozenset({TaskState.RUNNING, TaskState.CANCELING, TaskState.COMPLETED}),
    TaskState.RUNNING: frozenset({TaskState.SUSPENDED, TaskState.CANCELING, TaskState.COMPLETED}),
    TaskState.CANCELING: frozenset({TaskState.COMPLETED}),
    TaskState.COMPLETED: frozenset(),
}
"""Allowed moves: ``TRANSITIONS[now]`` holds every state a task in ``now`` may enter."""


def check_transition(current: TaskState, new: TaskState) -> None:
    """Raise ``RuntimeError`` for a move the table does not allow."""
    if new not in TRANSITIONS[current]:
        raise RuntimeError(f"a task cannot go from {current.value} to {new.value}")
