"""Writes the SQLite store gathers for one commit (see :class:`~bgdl_nb._journal.sqlite.SqliteStore`).

A task's changes coalesce (six fields changed in four steps are one UPDATE), and a write
handed to a transaction that SQLite then rolled back (a full disk) is given back with
:meth:`Writes.merged`, so the next commit writes it: nothing is lost while a journal
cannot be written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Writes"]


@dataclass
class Writes:
    """Rows not yet committed, by kind."""

    puts: dict[int, tuple[list[Any], int]] = field(default_factory=dict)  # whole records: (row, offset)
    changes: dict[int, dict[str, Any]] = field(default_factory=dict)     # changed fields per task
    offsets: dict[int, int] = field(default_factory=dict)
    events: list[tuple[Any, ...]] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not (self.puts or self.changes or self.offsets or self.events or self.meta)

    @classmethod
    def merged(cls, batches: list[Writes]) -> Writes:
        """One set of writes with the effect of ``batches`` applied oldest first: a whole
        record supersedes its task's earlier changes and offset, later changes win."""
        out = cls()
        for batch in batches:
            for tid, put in batch.puts.items():
                out.changes.pop(tid, None)
                out.offsets.pop(tid, None)
                out.puts[tid] = put
            for tid, changes in batch.changes.items():
                out.changes.setdefault(tid, {}).update(changes)
            out.offsets.update(batch.offsets)
            out.events.extend(batch.events)
            out.meta.update(batch.meta)
        return out
