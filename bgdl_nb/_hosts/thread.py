"""The engine thread: one event loop on a daemon thread of this process.

Notebook kernels already run an event loop, and sync calls from a cell must not nest
another one (nest-asyncio patches asyncio and breaks on newer Pythons). Instead every
engine of the process lives on this loop, in its own thread, as fsspec and
jupyter_core do; sync code waits on a ``concurrent.futures.Future`` and async code
awaits the same future wrapped for its own loop. A cell that blocks never stalls a
transfer, because transfers do not run on the cell's thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any, Callable, Coroutine, Generator, TypeVar

__all__ = ["Call", "EngineThread", "engine_thread"]

T = TypeVar("T")


class Call(concurrent.futures.Future):  # type: ignore[type-arg]
    """A pending result that works both ways: ``call.result(timeout)`` from sync code,
    ``await call`` from async code (on any event loop)."""

    def __await__(self) -> Generator[Any, None, Any]:
        return asyncio.wrap_future(self).__await__()


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
        return self.submit(coro).result(timeout)

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




class ThreadHost:
    """An engine on the engine thread of this process: the host of default sessions and
    of background sessions that do not use the transfer service.

    Every host offers the same surface to :class:`~bgdl_nb.Session`: ``tasks``,
    ``listeners``, ``closed``, ``create``, ``control``, ``call``, ``event_log``,
    ``destination_busy``, ``bandwidth_limit``, ``set_session`` and ``close``.
    """

    def __init__(self, engine: Any, lock: Any, thread: EngineThread) -> None:
        self.engine = engine
        self.lock = lock
        self.thread = thread
        self.closed = False

    @property
    def tasks(self) -> dict[int, Any]:
        return self.engine.tasks

    @property
    def listeners(self) -> list[Callable[..., None]]:
        return self.engine.listeners

    def open(self, session: Any, delegate: Any) -> None:
        self.thread.run(self.engine.open(session, delegate))

    def set_session(self, session: Any, delegate: Any) -> None:
        self.engine.session, self.engine.delegate = session, delegate
        for task in list(self.engine.tasks.values()):
            task._session = session

    def create(self, record: Any) -> Any:
        return self.thread.call(self.engine.create, record).result()

    def create_many(self, records: list[Any], resume: bool) -> list[Any]:
        return self.thread.call(self.engine.create_many, records, resume).result()

    def control(self, name: str, *args: Any) -> None:
        self.thread.call(getattr(self.engine, name), *args).result()

    def call(self, name: str, *args: Any) -> Call:
        return self.thread.submit(getattr(self.engine, name)(*args))

    def event_log(self, since: int = 0) -> list[Any]:
        return self.thread.call(self.engine.store.events, since).result()

    def destination_busy(self, destination: str) -> int | None:
        return self.engine.active_destinations.get(destination)

    def bandwidth_limit(self) -> float | None:
        return self.engine.bucket.rate

    def close(self, mode: str) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.thread.run(self.engine.close(mode))
        finally:
            if self.lock is not None:
                self.lock.release()
