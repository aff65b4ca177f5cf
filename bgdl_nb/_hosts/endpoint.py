"""One engine endpoint per identifier: what a host talks to, wherever the host is.

An :class:`Endpoint` owns, for one session identifier, everything that must exist once:
the journal's lock and its ``.owner`` note, the store (SQLite journal, or memory for a
default session), the work folder, and the :class:`~bgdl_nb._engine.Engine`. The thread
host (in a kernel) and the transfer service (for many kernels) both build their engines
here, so taking the lock, opening the journal and the attach sequence are written once.

It takes typed commands, frozen dataclasses, instead of method names as strings:

* :class:`Create` — new tasks (and resume them), one journal transaction for the batch;
* :class:`Control` — ``resume``, ``suspend``, ``cancel`` and the other controls of
  :data:`ControlName`, checked when the command is made (a misspelt name never travels);
* :class:`Ack` — the delegate's delivery cursor (and a finished inbox file to remove);
* :class:`Events` — the journaled event log after a sequence number.

:meth:`Endpoint.handle` runs one on the engine's loop and publishes the events it caused
before it returns: the rule "a request's events reach its client before its reply" lives
in that one method. :meth:`Endpoint.attach` is the other ordered step: what is pending is
published, then the backlog and the snapshots are read in the same loop turn, so a client
sees every event exactly once (the old ones with the attach, the new ones after it).

The path of one event, service case, after this step::

    Engine._emit ─► journal (seq) ─► Endpoint's engine.flush ─► sink (Hosted) ─► frame
      ─► socket ─► client reader ─► HostCore.on_event ─► Delivery ─► delegate
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import filelock

from .._engine import Engine
from .._exceptions import InvalidInput, SessionBusy
from .._journal import MemoryStore, SqliteStore
from .._locks import take
from .._private import private_tree
from .commands import Ack, Command, Control, Create, Events

if TYPE_CHECKING:
    from .._config import Configuration
    from .._events import Event
    from .._journal import Store
    from .._snapshots import TaskSnapshot

__all__ = ["Attached", "Endpoint"]

@dataclass(frozen=True)
class Attached:
    """What a client attaches with: every task's snapshot and the events it has not had."""

    snapshots: list[TaskSnapshot]
    backlog: list[Event]
    found: int


class Endpoint:
    """One identifier's lock, store and engine (see the module's text).

    Parameters
    ----------
    config
        The session's configuration (a background one journals under its identifier).
    key
        The resume-data signing key of the state directory.
    holder
        Who holds the journal, as a person reads it in :class:`SessionBusy` ("pid 123",
        "transfer service pid 456").
    sink
        Where the engine's events and live counts go (``None``: nowhere yet).
    state_dir
        The state directory (default: the configuration's).
    settings
        Called with the open store before the engine is built; returns the configuration
        the engine runs with (the service keeps a session's settings in its journal).
    """

    def __init__(self, config: Configuration, key: bytes, *, holder: str, sink: Any = None,
                 state_dir: Path | None = None, settings: Callable[[Store], Configuration] | None = None) -> None:
        root = state_dir or config.resolved_state_dir()
        self.lock: filelock.BaseFileLock | None = None
        store: Store
        if config.is_background:
            self.lock = _hold_journal(config, root, holder)
            try:
                store = SqliteStore(root / "sessions" / f"{config.identifier}.sqlite3", str(config.identifier))
            except BaseException:
                self.lock.release()
                raise
            work = root / "work" / str(config.identifier)
        else:
            store, work = MemoryStore(), root / "default" / str(os.getpid())
        try:
            self.config = config if settings is None else settings(store)
            self.engine = Engine(self.config, store, key, work, sink=sink)
        except BaseException:
            store.close()
            if self.lock is not None:
                self.lock.release()
            raise
        self._store_closed = False

    # the ordered steps (call them on the engine's loop) ----------------------------------

    def open(self, *, announce: bool, receive: Callable[[Attached], None] | None = None) -> Attached:
        """Read the journal and continue its tasks. ``receive`` (an in-process client) gets
        the tasks and the backlog before anything new is published: the backlog is read
        before the tasks continue, so it holds only what happened while nobody was
        attached, and (with ``announce``) the ``reattached`` row comes after it."""
        durable = self.engine.store.durable
        backlog = self.engine.backlog() if durable else []
        found = self.engine.load()
        attached = Attached(self.engine.snapshots(), backlog, found)
        if receive is not None:
            receive(attached)
        self.engine.start(announce=announce)
        self.engine.flush()  # the reattach and what it recovered are published before anything later
        return attached

    def attach(self) -> Attached:
        """For a client that attaches to an endpoint already open: nothing is left to
        publish, then the backlog and the snapshots, in one loop turn (refused, with the
        reason, while the journal cannot be written)."""
        self.engine.flush()
        snapshots = self.engine.snapshots()  # once: 10,000 tasks are 10,000 copies
        return Attached(snapshots, self.engine.backlog(), len(snapshots))

    def handle(self, command: Command) -> Any:
        """Run ``command``; its events are published before this returns. While the
        journal cannot be written, a command is refused with the reason (nothing of it
        is done) unless the journal works again now."""
        if self.engine.halted is not None:
            self.engine.flush()
        try:
            if isinstance(command, Create):
                return self.engine.create_many(command.records, command.resume, command.numbered)
            if isinstance(command, Control):
                return getattr(self.engine, command.name)(*command.args)
            if isinstance(command, Ack):
                if not self._store_closed:
                    self.engine.ack(command.seq, command.finished_path)
                return None
            if isinstance(command, Events):
                return (self.engine.store.event_columns(command.since) if command.columns
                        else self.engine.events(command.since))
            raise InvalidInput(f"not a command: {command!r}")
        finally:
            if not self._store_closed:
                self.engine.flush()

    async def cancel_with_resume_data(self, task_identifier: int) -> bytes | None:
        """Cancel a task and return its resume data; its events are published first."""
        try:
            return await self.engine.cancel_with_resume_data(task_identifier)
        finally:
            self.engine.flush()

    async def close(self, mode: str = "detach") -> None:
        """Stop the engine (``detach``, ``finish`` or ``cancel``); the journal stays open
        for the last acknowledgements until :meth:`close_store`."""
        await self.engine.close(mode)

    def close_store(self) -> None:
        """Close the journal and let the identifier go."""
        if self._store_closed:
            return
        self._store_closed = True
        try:
            self.engine.close_store()
        finally:
            if self.lock is not None:
                self.lock.release()


def _hold_journal(config: Configuration, root: Path, holder: str) -> filelock.BaseFileLock:
    """Take the identifier's journal lock (in its checked, private folder), or say who holds it."""
    folder = private_tree(root, "sessions")
    journal = folder / f"{config.identifier}.sqlite3"
    # not thread-local: the host takes it on its own thread and lets it go on the engine's
    owner = Path(str(journal) + ".owner")
    try:
        lock = take(str(journal) + ".lock", 0, thread_local=False)
    except filelock.Timeout:
        held_by = owner.read_text().strip() if owner.exists() else "another process"
        raise SessionBusy(
            f"background session {config.identifier!r} is held by {held_by}; close that session "
            "(session.close()) or stop that process, then create the Session again") from None
    owner.write_text(f"{holder}\n")
    return lock
