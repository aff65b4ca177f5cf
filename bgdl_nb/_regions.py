"""The regions of a file downloaded over several connections: pure decisions on byte ranges.

A file of ``total`` bytes is a list of :class:`Segment` regions. :func:`take` gives an
idle connection the first bytes nobody writes (so the digest's contiguous prefix keeps
growing), :func:`steal` halves the largest region under way for the tail of the file,
:func:`compact` is the journal's form of the list, and :func:`check_on_disk` re-reads what
the journal says is written after a crash, keeping only what still agrees. Nothing here
opens a connection; :class:`bgdl_nb._segments.Segmented` runs these decisions.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

from ._files import HASH_BLOCK, read_partial, verify_prefix

__all__ = ["MIN_SEGMENT", "Segment", "check_on_disk", "compact", "contiguous", "split", "steal", "take"]

MIB = 1024 * 1024
MIN_SEGMENT = 2 * MIB
"""A segment is never split below this size: a new connection costs a round trip."""


@dataclass
class Segment:
    """Bytes ``[start, end)`` of the file; ``pos`` is how far they are written; ``owned``
    while a connection is writing them; ``crc`` is the CRC-32 of bytes ``[start, pos)``
    (``None``: the prefix's marks vouch for them instead)."""

    start: int
    end: int
    pos: int
    owned: bool = False
    crc: int | None = 0

    @property
    def remaining(self) -> int:
        return max(0, self.end - self.pos)

    def as_list(self) -> list[int]:
        return [self.start, self.end, self.pos] + ([] if self.crc is None else [self.crc])


def split(total: int, segments: list[list[int]] | None) -> list[Segment]:
    """The regions of a file of ``total`` bytes: the journaled ones (``[start, end, pos]``,
    and the CRC-32 of the written bytes when the marks do not cover them), or one for all."""
    if segments:
        return sorted((Segment(int(g[0]), int(g[1]), int(g[2]), crc=int(g[3]) if len(g) > 3 else None)
                       for g in segments), key=lambda g: g.start)
    return [Segment(0, total, 0)]


def take(segments: list[Segment], piece: int) -> Segment | None:
    """The next piece for an idle connection: the first bytes nobody writes, in file order
    (so the digest's contiguous prefix keeps growing); ``None`` when every byte has a writer."""
    for i, seg in enumerate(segments):
        if seg.owned or not seg.remaining:
            continue
        if seg.remaining <= piece + piece // 2:
            seg.owned = True
            return seg
        new = Segment(seg.pos, seg.pos + piece, seg.pos, owned=True)
        if seg.pos > seg.start:  # a journaled region with bytes done: keep them as a finished region
            done = Segment(seg.start, seg.pos, seg.pos, crc=seg.crc)
            segments[i:i + 1] = [done, new]
            i += 1
        else:
            segments[i:i + 1] = [new]
        segments.insert(i + 1, Segment(new.end, seg.end, new.end))
        return new
    return None


def steal(segments: list[Segment], minimum: int = MIN_SEGMENT) -> Segment | None:
    """Take the second half of the largest remaining piece under way as a new piece (its
    ``end`` shrinks), for the tail of the file; ``None`` when nothing is worth splitting."""
    victim = max((s for s in segments if s.owned), key=lambda s: s.remaining, default=None)
    if victim is None or victim.remaining < 2 * minimum:
        return None
    middle = victim.pos + victim.remaining // 2
    new = Segment(middle, victim.end, middle, owned=True)
    victim.end = middle
    segments.insert(segments.index(victim) + 1, new)
    return new


def compact(segments: list[Segment], marked: int = 0) -> list[list[int]]:
    """The journal's form: finished regions below ``marked`` (where a journaled mark vouches
    for every byte) merged without a CRC, every other region as it is, with its CRC."""
    out: list[list[int]] = []
    for seg in segments:
        covered = seg.pos == seg.end <= marked
        if covered and out and len(out[-1]) == 3 and out[-1][2] == out[-1][1] == seg.start:
            out[-1][1] = out[-1][2] = seg.end
        else:
            out.append([seg.start, seg.end, seg.pos] if covered else seg.as_list())
    return out


def contiguous(segments: list[Segment]) -> int:
    """Bytes from 0 that are all written."""
    end = 0
    for s in sorted(segments, key=lambda s: s.start):
        if s.start > end:
            break
        end = max(end, s.pos)
        if s.pos < s.end:
            break
    return end


def check_on_disk(path: str, total: int, journaled: list[list[int]],
                  marks: list[list[Any]] | None) -> tuple[list[Segment], Any, int, list[tuple[int, int]]]:
    """Re-read what the journal says is written and keep only what still agrees (blocking).

    Returns the regions to continue (a region whose bytes changed is to be written again
    from its start; the prefix from its last agreeing mark), the sha256 of the first
    ``hashed`` bytes, ``hashed``, and the byte ranges found changed."""
    segments = split(total, journaled)
    prefix = contiguous(segments)
    vouched = max((int(m[0]) for m in marks or [] if int(m[0]) <= prefix), default=0)
    hasher, good = verify_prefix(path, vouched, marks)
    changed = [(good, vouched)] if good < vouched else []
    out: list[Segment] = []
    with read_partial(path) as f:
        for seg in segments:
            if seg.crc is None and seg.pos > good:  # the marks vouch for bytes up to ``good`` only
                if seg.start < good:
                    out.append(Segment(seg.start, good, good, crc=None))
                begin = max(seg.start, good)
                out.append(Segment(begin, seg.end, begin))
                if seg.pos > vouched:  # a region journaled without a CRC and past every mark
                    changed.append((max(begin, vouched), seg.pos))
                continue
            if seg.crc is not None and seg.pos > seg.start and _crc_of(f, seg.start, seg.pos) != seg.crc:
                changed.append((seg.start, seg.pos))
                seg = Segment(seg.start, seg.end, seg.start)
            out.append(seg)
    return out, hasher, good, changed


def _crc_of(f: Any, start: int, end: int) -> int:
    crc, f_at = 0, f.seek(start)
    while f_at < end:
        block = f.read(min(HASH_BLOCK, end - f_at))
        if not block:
            return -1
        crc, f_at = zlib.crc32(block, crc), f_at + len(block)
    return crc
