"""The seam between a session and wherever its engine runs.

A :class:`Host` is what :class:`~bgdl_nb.Session` talks to. Two implement it: the
thread host (the engine on this process's engine thread) and the service host (the
engine in the transfer service, over a socket). Both are built from the same parts:

* :class:`TaskMirror` keeps one public :class:`~bgdl_nb.DownloadTask` view per task,
  filled from the snapshots the engine sends with its events (and live byte counts);
* :class:`Delivery` turns events into delegate callbacks, one at a time and in order,
  on a delegate thread of its own; acknowledges them (the delivery cursor, and the
  removal of inbox files once ``did_finish_downloading_to`` returned); calls
  ``did_finish_events_for_background_session`` once after a reattach's backlog; and,
  on close, waits a bounded time for a stuck callback, then says which one it was;
* :class:`HostCore` joins the two and fans events out to listeners (displays).

So the two hosts cannot disagree about what an event means to a task or a delegate.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import inspect
import logging
import queue
import threading
import warnings
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .._delegate import SessionDelegate
from .._events import Event, EventKind
from .._journal import TaskRecord
from .._snapshots import TaskSnapshot
from .._states import TaskState
from .._task import DownloadTask

if TYPE_CHECKING:
    import asyncio

    from .._exceptions import BgdlError

__all__ = ["Call", "Delivery", "Host", "HostCore", "TaskMirror"]

log = logging.getLogger("bgdl_nb")

Ack = Callable[[int, "str | None"], None]

ACK_DELAY = 0.05
"""Seconds of quiet after which delivered events are acknowledged (one ack covers many)."""


class Call(concurrent.futures.Future):  # type: ignore[type-arg]
    """A pending result that works both ways: ``call.result(timeout)`` from sync code,
    ``await call`` from async code (on any event loop)."""

    def __await__(self) -> Generator[Any, None, Any]:
        import asyncio  # loaded already by whoever awaits

        return asyncio.wrap_future(self).__await__()


class Host(Protocol):
    """What a session needs from the place its engine runs."""

    closed: bool

    @property
    def tasks(self) -> dict[int, DownloadTask]:
        """Every task of the session, as public views."""

    @property
    def current(self) -> set[int]:
        """Identifiers of the tasks of the current job (see :class:`TaskMirror`)."""

    @property
    def listeners(self) -> list[Callable[[Event], None]]:
        """Called with every new event (displays); keep them quick."""

    def attach_session(self, session: Any, delegate: SessionDelegate | None) -> None:
        """Deliver callbacks to ``delegate`` with ``session`` as their first argument."""

    def create_many(self, records: list[TaskRecord], resume: bool) -> list[DownloadTask]:
        """Create tasks (and resume them) in one call."""

    def control(self, name: str, *args: Any) -> Any:
        """resume, suspend, cancel, set_priority, pause, unpause, set_bandwidth_limit, or
        another of :data:`~bgdl_nb._hosts.commands.ControlName`; returns the engine's answer."""

    def cancel_with_resume_data(self, task_identifier: int) -> Call:
        """Cancel a task keeping its partial bytes; its resume data as an awaitable future."""

    def event_columns(self, since: int = 0) -> dict[str, list[Any]]:
        """Journaled events after ``since``, one list per column (what ``session.events`` is built from)."""

    def event_log(self, since: int = 0) -> list[Event]:
        """Journaled events after ``since``."""

    def destination_busy(self, destination: str) -> int | None:
        """The unfinished task writing ``destination``, if any."""

    def bandwidth_limit(self) -> float | None:
        """The session's bandwidth limit (bytes per second)."""

    def sync(self) -> None:
        """Return once every event the engine published before this call is in the views
        (tasks another process just created under the same identifier included)."""

    def close(self, mode: str) -> None:
        """detach, finish or cancel; returns within a bounded time."""


class TaskMirror:
    """Public task views, filled from engine snapshots."""

    def __init__(self, host: Any) -> None:
        self.host = host
        self.tasks: dict[int, DownloadTask] = {}
        self._destinations: dict[str, int] = {}  # destination -> unfinished task writing it
        # The current job: tasks unfinished when first seen, and tasks with an event since
        # (new ones, and those that finished while no kernel was attached). Tasks that had
        # finished, and been heard of, before this session attached are history.
        self.current: set[int] = set()

    def apply(self, snap: TaskSnapshot) -> DownloadTask:
        """Create or update the view of the task in ``snap``."""
        fields = snap.fields
        tid = snap.task_identifier
        task = self.tasks.get(tid)
        if task is None:
            if not snap.complete:  # an update of a task this view never had in full: nothing to apply it to
                log.warning("bgdl_nb: an update for unknown task %s was dropped", tid)
                return None  # type: ignore[return-value]
            task = DownloadTask(self.host, TaskRecord(**fields))
            self.tasks[tid] = task
            if TaskState(fields["state"]) is not TaskState.COMPLETED:
                self.current.add(tid)
            task._show(snap, made_from_it=True)
        elif not task._show(snap):
            return task  # an older picture than the one shown (a reply overtaken by events)
        destination = fields["destination"]
        if task.state is TaskState.COMPLETED:
            if destination and self._destinations.get(destination) == tid:
                del self._destinations[destination]
            task._settle()
        elif destination:
            self._destinations[destination] = tid
        return task

    def note(self, event: Event) -> None:
        """An event about a task puts it in the current job."""
        if event.task_identifier is not None:
            self.current.add(event.task_identifier)

    def new_source(self) -> None:
        """Snapshots now come from another engine (a restarted service): its versions start
        again, so the ones shown no longer rank them."""
        for task in self.tasks.values():
            task._new_source()

    def view(self, snap: TaskSnapshot) -> DownloadTask:
        """The view of a task a reply names: the one events already filled when there is
        one (a reply can be older than the events that followed it), else from ``snap``."""
        return self.tasks.get(snap.task_identifier) or self.apply(snap)

    def counts(self, counts: dict[int, int]) -> None:
        for tid, received in counts.items():
            task = self.tasks.get(int(tid))
            if task is not None:
                task._count(received)

    def destination_busy(self, destination: str) -> int | None:
        return self._destinations.get(destination)


def _overrides(delegate: Any, name: str) -> Callable[..., Any] | None:
    method: Callable[..., Any] | None = getattr(delegate, name, None)
    if method is None or getattr(type(delegate), name, None) is getattr(SessionDelegate, name, None):
        return None  # not overridden: nothing to call
    return method


def _calls(event: Event, session: Any, task: DownloadTask | None) -> list[tuple[str, tuple[Any, ...]]]:
    """The delegate methods an event means, with their arguments."""
    kind = event.event
    calls: list[tuple[str, tuple[Any, ...]]] = [("did_receive_event", (session, event))]
    if task is not None:
        if kind == EventKind.PROGRESS.value:
            calls.append(("did_write_data", (session, task, event.bytes_written or 0,
                                             event.total_bytes_written or 0, event.total_bytes_expected)))
        elif kind == EventKind.RESUMED_AT_OFFSET.value:
            calls.append(("did_resume_at_offset", (session, task, event.total_bytes_written or 0,
                                                   event.total_bytes_expected)))
        elif kind == EventKind.FINISHED.value:
            calls.append(("did_finish_downloading_to", (session, task, Path(event.detail or ""))))
        elif kind in (EventKind.COMPLETED.value, EventKind.FAILED.value):
            calls.append(("did_complete_with_error", (session, task, task.error)))
    elif kind == EventKind.FINISHED_EVENTS.value:
        calls.append(("did_finish_events_for_background_session", (session,)))
    return calls


class Delivery:
    """Delegate callbacks of one session: serial, ordered, on a thread of their own.

    ``ack(seq, finished_path)`` is told how far delivery got; one acknowledgement covers
    every event before it, so it is sent when no event came for ``ACK_DELAY`` seconds,
    when an inbox file may go, every 256 events, and at close (delivery is at least once).
    """

    def __init__(self, tasks: dict[int, DownloadTask], ack: Ack, close_timeout: float) -> None:
        self.session: Any = None
        self.delegate: SessionDelegate | None = None
        self.close_timeout = close_timeout
        self._tasks = tasks
        self._ack = ack
        self._queue: queue.SimpleQueue[list[tuple[Event, bool]] | None] = queue.SimpleQueue()
        self._held: list[tuple[Event, bool]] | None = None  # events of a batch under way
        self._holder: int | None = None  # the thread putting that batch
        self._delivered = 0
        self._current: str | None = None  # the callback running now, for a stuck close
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None  # for async def callbacks, on this thread only
        self._thread = threading.Thread(target=self._main, name="bgdl-delegate", daemon=True)
        self._thread.start()

    def put(self, event: Event, journaled: bool = True) -> None:
        if self._holder == threading.get_ident() and self._held is not None:
            self._held.append((event, journaled))
        else:
            self._queue.put([(event, journaled)])

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Hand the events this thread puts meanwhile to the delivery thread at once: one
        wake-up for a whole group commit instead of one per event."""
        self._held, self._holder = [], threading.get_ident()
        try:
            yield
        finally:
            held, self._held, self._holder = self._held, None, None
            if held:
                self._queue.put(held)

    def finish_events(self) -> None:
        """Queue ``did_finish_events_for_background_session`` (after the backlog queued so far)."""
        self.put(Event(0, 0.0, None, None, EventKind.FINISHED_EVENTS.value), journaled=False)

    def _main(self) -> None:
        unacked = 0  # the newest delivered event not acknowledged yet
        try:
            while True:
                try:
                    item = self._queue.get(timeout=ACK_DELAY if unacked else None)
                except queue.Empty:  # quiet for a moment: acknowledge what was delivered
                    unacked = self._send_ack(unacked, None)
                    continue
                if item is None:
                    break
                for event, journaled in item:
                    if journaled and event.seq <= self._delivered:
                        continue  # seen before a reconnect
                    task = self._tasks.get(event.task_identifier) if event.task_identifier is not None else None
                    finished = self._deliver(event, task)
                    if journaled:
                        self._delivered = unacked = event.seq
                        path = event.detail if finished and task is not None and task.destination is None else None
                        if path or event.seq % 256 == 0:
                            unacked = self._send_ack(event.seq, path)
            self._send_ack(unacked, None)
        finally:
            if self._loop is not None:
                self._loop.close()

    def _send_ack(self, seq: int, path: str | None) -> int:
        if seq:
            try:
                self._ack(seq, path)
            except Exception:
                log.debug("acknowledging event %s failed", seq, exc_info=True)
        return 0

    def _run_coroutine(self, awaitable: Any) -> None:
        """Run an ``async def`` callback to its end on this thread's own event loop (made
        at the first such callback: a delegate of plain methods never needs one)."""
        if self._loop is None:
            import asyncio

            self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(awaitable)

    def _deliver(self, event: Event, task: DownloadTask | None) -> bool:
        """Run the event's callbacks; True when a ``did_finish_downloading_to`` ran."""
        delegate, finished = self.delegate, False
        if delegate is None:
            return False
        for name, args in _calls(event, self.session, task):
            method = _overrides(delegate, name)
            if method is None:
                continue
            self._current = name if task is None else f"{name} of task {task.task_identifier}"
            try:
                result = method(*args)
                if inspect.isawaitable(result):
                    self._run_coroutine(result)
            except Exception:
                log.exception("bgdl_nb delegate method %s raised", name)
            finally:
                self._current = None
            finished |= name == "did_finish_downloading_to"
        return finished

    def close(self) -> bool:
        """Deliver what is queued, then stop; give up after ``close_timeout`` seconds on a
        callback that does not return (with a warning naming it). True when all was delivered."""
        if not self._closing:
            self._closing = True
            self._queue.put(None)
        self._thread.join(self.close_timeout)
        if not self._thread.is_alive():
            return True
        stuck = self._current or "a delegate callback"
        message = (f"bgdl_nb: {stuck} did not return within {self.close_timeout:g} s; the session closed "
                   "without waiting for it (later callbacks were not delivered and will be delivered again "
                   "to the next session of a background identifier)")
        log.warning(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)
        return False


class HostCore:
    """The parts every host shares: the mirror, the listeners and the delivery."""

    def __init__(self, host: Any, ack: Ack, close_timeout: float) -> None:
        self.mirror = TaskMirror(host)
        self.listeners: list[Callable[[Event], None]] = []
        self.delivery = Delivery(self.mirror.tasks, ack, close_timeout)

    def attach_session(self, session: Any, delegate: SessionDelegate | None) -> None:
        self.delivery.session, self.delivery.delegate = session, delegate

    def control(self, send: Callable[[], Any]) -> Any:
        """Have the host ``send`` a control to the engine, show a task snapshot it answers
        with (a change that has no event of its own), and return the answer."""
        result = send()
        if isinstance(result, dict) and "record" in result:  # from the service: plain values
            result = TaskSnapshot.from_wire(result)
        if isinstance(result, TaskSnapshot):
            self.mirror.apply(result)
        return result

    def halted(self, error: BgdlError) -> None:
        """The engine's journal cannot be written, so its transfers stopped: whoever waits
        for a task of the current job gets ``error`` (the task is not over: the snapshots
        that follow once the journal works again let a new wait wait)."""
        for tid in list(self.mirror.current):
            task = self.mirror.tasks.get(tid)
            if task is not None:
                task._interrupt(error)

    def backlog(self, event: Event) -> None:
        """An event the delegate missed while no session was attached."""
        self.mirror.note(event)
        self.delivery.put(event)

    def on_event(self, event: Event, snapshot: TaskSnapshot | None) -> None:
        """An event from the engine: update the view first, then displays, then the delegate."""
        if snapshot is not None:
            self.mirror.apply(snapshot)
        self.mirror.note(event)
        for listener in list(self.listeners):
            try:
                listener(event)
            except Exception:  # a display must never break a transfer
                log.exception("bgdl_nb event listener failed")
        self.delivery.put(event)
