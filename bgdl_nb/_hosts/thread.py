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
from typing import TYPE_CHECKING, Any, TypeVar

from .._resume import load_key
from .base import Call, HostCore
from .commands import CONTROLS, Ack, Control, Create, Events
from .endpoint import Attached, Endpoint

if TYPE_CHECKING:
    from .._config import Configuration
    from .._events import Event
    from .._exceptions import BgdlError
    from .._snapshots import TaskSnapshot

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

    def event(self, event: Event, snapshot: TaskSnapshot | None) -> None:
        self.core.on_event(event, snapshot)

    def batch(self) -> contextlib.AbstractContextManager[None]:
        return self.core.delivery.batch()

    def counts(self, counts: dict[int, int]) -> None:
        self.core.mirror.counts(counts)

    def halted(self, error: BgdlError) -> None:
        self.core.halted(error)


class ThreadHost:
    """An engine on the engine thread of this process: the host of default sessions and
    of background sessions that do not use the transfer service. Its
    :class:`~bgdl_nb._hosts.endpoint.Endpoint` holds the journal (a lock: one engine
    owns it), the store and the engine; this host is the in-process channel to it."""

    def __init__(self, config: Configuration, session: Any, delegate: Any) -> None:
        self.config = config
        self.thread = engine_thread()
        self.closed = False
        self.core = HostCore(self, self._ack, config.delegate_close_timeout)
        self.core.attach_session(session, delegate)
        root = config.resolved_state_dir()
        self.endpoint = Endpoint(config, load_key(root), holder=f"pid {os.getpid()}", sink=_Sink(self.core))
        self.engine = self.endpoint.engine
        try:
            self.thread.call(self._open).result()
        except BaseException:
            self.endpoint.close_store()
            raise

    def _open(self) -> None:
        """On the engine loop, in one turn: mirror the journal's tasks, queue the backlog,
        continue the tasks (a ``reattached`` row first), then the end of the backlog."""
        def receive(attached: Attached) -> None:
            for snap in attached.snapshots:
                self.core.mirror.apply(snap)
            for event in attached.backlog:
                self.core.backlog(event)

        attached = self.endpoint.open(announce=True, receive=receive)
        if self.engine.store.durable and (attached.found or attached.backlog):
            self.core.delivery.finish_events()

    def _ack(self, seq: int, finished_path: str | None) -> None:
        # acknowledgements of the last callbacks come while the session closes: they are
        # queued on the loop before the journal closes (after close() delivered them)
        if not self._store_closed:
            self.thread.loop.call_soon_threadsafe(self.endpoint.handle, Ack(seq, finished_path))

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
        tids = self.thread.call(self.endpoint.handle, Create(tuple(records), resume)).result()
        return [self.core.mirror.tasks[tid] for tid in tids]  # the events filled the views before the reply

    def control(self, name: str, *args: Any) -> Any:
        command = Control(name, args)  # type: ignore[arg-type]  # checked by Control itself
        return self.core.control(lambda: self.thread.call(self.endpoint.handle, command).result())

    def cancel_with_resume_data(self, task_identifier: int) -> Call:
        return self.thread.submit(self.endpoint.cancel_with_resume_data(task_identifier))

    def event_log(self, since: int = 0) -> list[Any]:
        events: list[Any] = self.thread.call(self.endpoint.handle, Events(since)).result()
        return events

    def event_columns(self, since: int = 0) -> dict[str, list[Any]]:
        columns: dict[str, list[Any]] = self.thread.call(self.endpoint.handle, Events(since, columns=True)).result()
        return columns

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
            self.thread.run(self.endpoint.close(mode))
            self.core.delivery.close()
        finally:
            self._store_closed = True
            self.thread.call(self.endpoint.close_store).result()
