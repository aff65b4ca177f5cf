"""The journal: where a session's tasks, segment offsets and events are kept.

:class:`Store` is the seam; :class:`SqliteStore` is the durable backend for background
sessions and :class:`MemoryStore` the backend for default sessions (and a fake for
tests). ``tests/test_journal.py`` runs one contract suite on both.
"""

from .base import Store, TaskRecord
from .memory import MemoryStore
from .reading import has_unfinished, journaled_bytes, read_journal
from .sqlite import SqliteStore

__all__ = ["MemoryStore", "SqliteStore", "Store", "TaskRecord", "has_unfinished", "journaled_bytes", "read_journal"]
