"""The engine thread (one event loop on a daemon thread of this process) and the host
that runs engines on it.

Notebook kernels already run an event loop, and sync calls from a cell must not nest
another one (nest-asyncio patches asyncio and breaks on newer Pythons). Instead every
engine of the process lives on this loop, in its own thread, as fsspec and
jupyter_core do; sync code waits on a ``concurrent.futures.Future`` and async code
awaits the same future wrapped for its own loop. A cell that blocks never stalls a
transfer, because transfers do not run on the cell's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import filelock

from .._engine import Engine
from .._exceptions import SessionBusy
from .._journal import MemoryStore, SqliteStore
from .._private import private_tree
from .._resume import load_key
from .base import CONTROLS, Call, HostCore

if TYPE_CHECKING:
    from .._config import Configuration
    from .._events import Event
    from .._journal import Store

__all__ = ["CONTROLS", "Call", "EngineThread", "ThreadHost", "engine_thread"]

T = TypeVar("T")


class EngineThread:
    """An event loop running forever on a daemon thread."""

    def __init__(self, name: str = "bgdl-engine") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    @property
    def is_current(self) -> bool:
        return threading.current_thread() is self._thread

    def submit(self, coro: Coroutine[Any, Any, T]) -> Call:
        """Run ``coro`` on the engine loop; return a :class:`Call` for its result."""
        call = Call()

        def start() -> None:
            task = self.loop.create_task(coro)

            def done(t: asyncio.Task[T]) -> None:
                if t.cancelled():
                    call.cancel()
                    call.set_running_or_notify_cancel()
                elif t.exception() is not None:
                    call.set_exception(t.exception())
                else:
                    call.set_result(t.result())

            task.add_done_callback(done)

        self.loop.call_soon_threadsafe(start)
        return call

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the engine loop and wait for its result (sync callers)."""
        if self.is_current:
            raise RuntimeError("EngineThread.run() called from the engine thread; await instead")
        result: T = self.submit(coro).result(timeout)
        return result

    def call(self, fn: Callable[..., T], *args: Any) -> Call:
        """Run plain function ``fn`` on the engine loop."""
        async def wrapper() -> T:
            return fn(*args)
        return self.submit(wrapper())


_lock = threading.Lock()
_thread: EngineThread | None = None


def engine_thread() -> EngineThread:
    """The process-wide engine thread, started on first use."""
    global _thread
    with _lock:
        if _thread is None or not _thread._thread.is_alive():
            _thread = EngineThread()
        return _thread




class _Sink:
    """The engine's output, straight into the host's mirror and delivery (engine thread)."""

    def __init__(self, core: HostCore) -> None:
        self.core = core

    def event(self, event: Event, snapshot: dict[str, Any] | None) -> None:
        self.core.on_event(event, snapshot)

    def batch(self) -> contextlib.AbstractContextManager[None]:
        return self.core.delivery.batch()

    def counts(self, counts: dict[int, int]) -> None:
        self.core.mirror.counts(counts)


class ThreadHost:
    """An engine on the engine thread of this process: the host of default sessions and
    of background sessions that do not use the transfer service.

    It builds the engine and its store: a memory store for default sessions, the SQLite
    journal (held with a file lock, so one engine owns it) for background ones.
    """

    def __init__(self, config: Configuration, session: Any, delegate: Any) -> None:
        self.config = config
        self.thread = engine_thread()
        self.closed = False
        self.lock: filelock.BaseFileLock | None = None
        self.core = HostCore(self, self._ack, config.delegate_close_timeout)
        self.core.attach_session(session, delegate)
        root = config.resolved_state_dir()
        store: Store
        if config.is_background:
            self.lock = _hold_journal(config)
            try:
                store = SqliteStore(config.journal_path(), str(config.identifier))
            except BaseException:
                self.lock.release()
                raise
            work = root / "work" / str(config.identifier)
        else:
            store, work = MemoryStore(), root / "default" / str(os.getpid())
        self.engine = Engine(config, store, load_key(root), work, sink=_Sink(self.core))
        try:
            self.thread.call(self._open).result()
        except BaseException:
            if self.lock is not None:
                self.lock.release()
            raise

    def _open(self) -> None:
        """On the engine loop, in one turn: mirror the journal's tasks, queue the backlog,
        continue the tasks (a ``reattached`` row first), then the end of the backlog."""
        engine, durable = self.engine, self.engine.store.durable
        backlog = engine.backlog() if durable else []
        found = engine.load()
        for snap in engine.snapshots():
            self.core.mirror.apply(snap)
        for event in backlog:
            self.core.backlog(event)
        engine.start(announce=True)
        engine.flush()  # the reattach and what it recovered reach the delegate before the end of the backlog
        if durable and (found or backlog):
            self.core.delivery.finish_events()

    def _ack(self, seq: int, finished_path: str | None) -> None:
        # acknowledgements of the last callbacks come while the session closes: they are
        # queued on the loop before the journal closes (after close() delivered them)
        if not self._store_closed:
            self.thread.loop.call_soon_threadsafe(self.engine.ack, seq, finished_path)

    @property
    def tasks(self) -> dict[int, Any]:
        return self.core.mirror.tasks

    @property
    def current(self) -> set[int]:
        return self.core.mirror.current

    @property
    def listeners(self) -> list[Callable[..., None]]:
        return self.core.listeners

    def attach_session(self, session: Any, delegate: Any) -> None:
        self.core.attach_session(session, delegate)

    def create_many(self, records: list[Any], resume: bool) -> list[Any]:
        snaps = self.thread.call(self._flushed, self.engine.create_many, records, resume).result()
        return [self.core.mirror.view(snap) for snap in snaps]

    def _flushed(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run an engine method, then publish its events at once: when a control call
        returns, the task views show its effect."""
        try:
            return fn(*args)
        finally:
            self.engine.flush()

    def control(self, name: str, *args: Any) -> None:
        self.core.control(name, lambda: self.thread.call(self._flushed, getattr(self.engine, name), *args).result())

    def call(self, name: str, *args: Any) -> Call:
        if name != "cancel_with_resume_data":
            raise ValueError(name)

        async def cancel() -> bytes | None:
            try:
                return await self.engine.cancel_with_resume_data(*args)
            finally:
                self.engine.flush()
        return self.thread.submit(cancel())

    def event_log(self, since: int = 0) -> list[Any]:
        events: list[Any] = self.thread.call(self.engine.events, since).result()
        return events

    def destination_busy(self, destination: str) -> int | None:
        return self.core.mirror.destination_busy(destination)

    def bandwidth_limit(self) -> float | None:
        return self.engine.bandwidth_limit

    def sync(self) -> None:
        self.thread.call(self.engine.flush).result()  # only this process can hold the journal

    _store_closed = False

    def close(self, mode: str) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.thread.run(self.engine.close(mode))
            self.core.delivery.close()
        finally:
            self._store_closed = True
            self.thread.call(self.engine.close_store).result()
            if self.lock is not None:
                self.lock.release()




def _hold_journal(config: Configuration) -> filelock.BaseFileLock:
    """Take the identifier's journal lock, or say who holds it."""
    journal = config.journal_path()
    private_tree(config.resolved_state_dir(), "sessions")
    lock = filelock.FileLock(str(journal) + ".lock", timeout=0)
    owner = Path(str(journal) + ".owner")
    try:
        lock.acquire()
    except filelock.Timeout:
        holder = owner.read_text().strip() if owner.exists() else "another process"
        raise SessionBusy(
            f"background session {config.identifier!r} is held by {holder}; close that session "
            "(session.close()) or stop that process, then create the Session again") from None
    owner.write_text(f"pid {os.getpid()}\n")
    return lock
