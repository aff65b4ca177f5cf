"""Liveness, checked rather than hoped for: a task in a slot either moves (bytes, digest,
durable offset), says why it waits, or is doing marked local work (:attr:`TaskRun.local`).

:class:`Liveness` reviews the engine's tasks in slots four times a second and returns
what the engine must do: tasks whose requests all wait for the host's connections (they
are told so, with :data:`~bgdl_nb._waits.HOST_TAKEN`), tasks that stopped waiting for
them, and tasks that did none of the above for longer than the request timeout allows —
a bug or a hang no timeout covers, which the engine ends with an error saying what the
task was doing (:func:`stalled_error`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ._exceptions import TransferTimeout
from ._run import TaskRun, host_of
from ._waits import HOST_TAKEN

__all__ = ["Liveness", "Review", "stalled_error"]

_HOST_WAIT_SHOWN_AFTER = 1.0  # seconds all of a task's requests waited before the reason is shown


@dataclass
class Review:
    """What one look at the tasks in slots found."""

    waiting_for_host: list[TaskRun] = field(default_factory=list)  # to show HOST_TAKEN now
    host_freed: list[TaskRun] = field(default_factory=list)  # HOST_TAKEN no longer holds
    stalled: list[tuple[TaskRun, float]] = field(default_factory=list)  # and for how many seconds


class Liveness:
    """Each task's progress since when, and since when its requests wait for the host."""

    def __init__(self, host_limit: int, request_timeout: float) -> None:
        self.host_limit = host_limit
        self.limit = max(2 * request_timeout, 10.0)
        self._moving: dict[int, tuple[tuple[Any, ...], float]] = {}
        self._starved: dict[int, float] = {}

    def review(self, runs: Iterable[TaskRun], now: float, rate: float | None) -> Review:
        """Look at ``runs`` (the tasks in slots) at ``now``; ``rate`` is the bandwidth limit,
        which spaces out chunks and so lengthens the time a task may move nothing."""
        runs = list(runs)
        present = {r.task_identifier for r in runs}
        for tid in [t for t in self._moving if t not in present]:
            del self._moving[tid]  # out of its slot (backoff, suspend, end): its clock starts again
            self._starved.pop(tid, None)
        streams: dict[str, int] = {}
        for run in runs:
            streams[host_of(run.record.url)] = streams.get(host_of(run.record.url), 0) + run.streaming
        limit = self.limit + (float(1 << 20) / rate if rate else 0.0)
        found = Review()
        for run in runs:
            tid = run.task_identifier
            if run.opening and not run.streaming and streams[host_of(run.record.url)] >= self.host_limit:
                since = self._starved.setdefault(tid, now)
                if now - since >= _HOST_WAIT_SHOWN_AFTER and run.waiting is None:
                    found.waiting_for_host.append(run)
            elif self._starved.pop(tid, None) is not None and run.waiting is HOST_TAKEN:
                found.host_freed.append(run)
            mark = (run.received, run.hashed, run.record.offset, run.waiting, run.record.location)
            seen = self._moving.get(tid)
            if seen is None or seen[0] != mark or run.waiting is not None or run.local:
                self._moving[tid] = (mark, now)
            elif now - seen[1] > limit:
                found.stalled.append((run, now - self._moving.pop(tid)[1]))
        return found


def stalled_error(run: TaskRun, quiet: float) -> TransferTimeout:
    """The error that ends a task that moved nothing for ``quiet`` seconds with no reason."""
    rec, tid = run.record, run.task_identifier
    if run.received:
        doing = f"receiving bytes ({run.received:,} of {'?' if rec.total is None else f'{rec.total:,}'})"
    else:
        doing = "waiting for the first byte of the response"
    return TransferTimeout(
        f"task {tid} made no progress for {quiet:.0f} s while {doing}, and had no reason to wait: it was "
        "stopped instead of hanging; resume it (or run the same command again) to continue from the bytes "
        "on disk", url=rec.url, task_identifier=tid)
