"""Reading a file while it downloads, the engine's side: which bytes are written, what a
reader waits for, and how its bytes become the next ones fetched.

A reader (:func:`bgdl_nb.open`) asks the engine for bytes ``[start, end)`` of a task's
file with the ``want_bytes`` control. The answer says which ranges of the partial file
are written (readable at once, by any process: a positional write is in the page cache
the moment it returns) and which file holds them (its inode: a restart from byte 0 makes
a new partial file, so a reader's open file never mixes two versions). Bytes not written
yet become a :class:`Want` on the task's run:

* while one connection streams the file, a want further ahead than :data:`NEAR` makes the
  attempt split the file (as a slow connection does), and the split file serves it;
* in a split file, :func:`carve` cuts the region that holds the wanted byte so that a
  piece starts exactly there; a connection of its own fetches it, or, when the file
  already has every connection the host allows, the connection with the most bytes left
  is redirected to it (what it leaves goes back to the pool).

Once a want's bytes are all written the engine journals a ``read_wait`` row (the region
and how long it waited); the reader, woken by that event, reads.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._regions import Segment
    from ._run import TaskRun

__all__ = ["NEAR", "Want", "carve", "covered", "first_missing", "reader_view", "written_ranges"]

NEAR = 4 * 1024 * 1024
"""A wanted byte this close ahead of a connection's position is left to that connection:
a new request would not bring it sooner."""


@dataclass
class Want:
    """Bytes ``[start, end)`` a reader waits for, since ``since`` (monotonic)."""

    start: int
    end: int
    since: float = field(default_factory=time.monotonic)


def written_ranges(run: TaskRun) -> list[tuple[int, int]]:
    """The ranges of the task's partial file that are written, merged and in order."""
    split = run.split
    if split is not None:
        ranges = sorted((s.start, s.pos) for s in split.segments if s.pos > s.start)
    elif run.record.segments:  # a split file between attempts: its journaled regions
        ranges = sorted((int(g[0]), int(g[2])) for g in run.record.segments if g[2] > g[0])
    else:
        ranges = [(0, run.received)] if run.received else []
    merged: list[tuple[int, int]] = []
    for a, b in ranges:
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def reader_view(run: TaskRun) -> dict[str, Any]:
    """What a reader of the task's file may read now: the file (path and inode), its
    written ranges, the resource's length and validator, and the task's state."""
    rec = run.record
    path = rec.location if rec.succeeded else rec.partial_path
    try:
        inode: int | None = os.stat(path).st_ino if path else None
    except OSError:
        inode = None
    ranges = [(0, rec.total if rec.total is not None else rec.offset)] if rec.succeeded else written_ranges(run)
    return {"path": path, "inode": inode, "ranges": [list(r) for r in ranges], "total": rec.total,
            "validator": rec.validator_value, "state": rec.state.value, "outcome": rec.outcome}


def covered(ranges: list[tuple[int, int]] | list[list[int]], start: int, end: int) -> bool:
    """Whether ``ranges`` (merged, in order) hold every byte of ``[start, end)``."""
    return end <= start or any(a <= start and end <= b for a, b in ranges)


def first_missing(segments: list[Segment], start: int, end: int) -> int | None:
    """The first byte of ``[start, end)`` no segment has written yet (``None``: all are)."""
    for seg in segments:
        if seg.end <= start or seg.pos >= end:
            continue
        if seg.pos < seg.end and seg.pos < end and max(seg.pos, start) < seg.end:
            return max(seg.pos, start)
    return None


def carve(segments: list[Segment], at: int) -> Segment:
    """Cut the region holding byte ``at`` (not yet written) so that a free piece starts
    there, and return that piece (it stays in ``segments``, in order). A region being
    written keeps its writer up to ``at``."""
    from ._regions import Segment
    index = next(i for i, s in enumerate(segments) if s.start <= at < s.end)
    seg = segments[index]
    if at == seg.pos and not seg.owned:
        return seg
    piece = Segment(at, seg.end, at)
    seg.end = at
    segments.insert(index + 1, piece)
    return piece
