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


