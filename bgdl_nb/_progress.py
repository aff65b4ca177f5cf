"""Progress for code that waits on tasks: a widget panel in notebooks, rich bars in a
terminal, nothing when disabled or when output is not a terminal.

The display only reads task counters when :meth:`refresh` is called (a few times a
second by the waiting loop); it never reaches into the engine.
"""

from __future__ import annotations

import contextlib
import functools
import queue
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

from ._task import DownloadTask

__all__ = ["CallbackFeed", "Display", "Follower", "finished_batches", "in_notebook", "progress_display", "watch"]


class Display(Protocol):
    def refresh(self, force: bool = False) -> None: ...


@runtime_checkable
class Follower(Display, Protocol):
    """A display that can stay live on its own after the waiting code was interrupted."""

    def follow(self, when_done: Callable[[], None]) -> None: ...


class CallbackFeed:
    """Progress for an fsspec-style callback (``set_size``, ``relative_update``,
    ``branched``; ``TqdmCallback`` and friends): its size is the number of files and it
    moves by one per finished file; each file has a child (``branched(url, path)``) fed with
    the file's bytes, the way fsspec's own ``get`` feeds one.

    The children are read at each :meth:`update` of the waiting loop (a few times a
    second), from the counters the task mirrors; no engine is touched.
    """

    def __init__(self, callback: Any, tasks: Sequence[tuple[str, DownloadTask]], already_done: int) -> None:
        self.callback = callback
        callback.set_size(len(tasks) + already_done)
        if already_done:
            callback.relative_update(already_done)
        self.children: dict[int, tuple[DownloadTask, Any]] = {}
        for k, (url, task) in enumerate(tasks):
            child = callback.branched(url, str(task.destination or ""))
            self.children[k] = (task, child)

    def update(self, finished: Sequence[int]) -> None:
        for task, child in self.children.values():
            expected = task.count_of_bytes_expected_to_receive
            if expected is not None and expected >= 0 and child.size != expected:
                child.set_size(expected)
            child.absolute_update(task.count_of_bytes_received)
        for k in finished:
            entry = self.children.pop(k, None)
            if entry is not None:
                entry[1].close()
                self.callback.relative_update(1)

    def close(self) -> None:
        for _task, child in self.children.values():
            child.close()
        self.children.clear()
        self.callback.close()


class _Null:
    def refresh(self, force: bool = False) -> None:
        pass


def in_notebook() -> bool:
    """True inside a Jupyter kernel (JupyterLab, Notebook 7, VS Code)."""
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    try:
        ip = shell.get_ipython()
    except AttributeError:
        return False
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"


class _Rich:
    def __init__(self, tasks: Sequence[DownloadTask]) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description}", justify="left"), BarColumn(), DownloadColumn(),
            TransferSpeedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[state]}"),
            transient=False, refresh_per_second=4,
        )
        self.rows: list[tuple[DownloadTask, Any]] = []
        for task in tasks:
            name = task.task_description or task.original_request.url.rsplit("/", 1)[-1][:40]
            row = self.progress.add_task(name, total=task.count_of_bytes_expected_to_receive,
                                         completed=task.count_of_bytes_received, state="")
            self.rows.append((task, row))

    def refresh(self, force: bool = False) -> None:
        for task, row in self.rows:
            state = task.waiting_reason or task.state.value
            if task.done():
                state = "done" if task.succeeded else "failed"
            self.progress.update(row, total=task.count_of_bytes_expected_to_receive,
                                 completed=task.count_of_bytes_received, state=state)


def _panel_class() -> Any:
    try:
        from .notebook.widgets import TaskPanel
    except ImportError:  # ipywidgets missing: fall back to text progress
        return None
    return TaskPanel


@contextlib.contextmanager
def progress_display(tasks: Sequence[DownloadTask], *, enabled: bool = True) -> Iterator[Display]:
    """Show progress of ``tasks`` for the duration of the block."""
    if not enabled or not tasks:
        yield _Null()
        return
    panel_class = _panel_class() if in_notebook() else None
    if panel_class is not None:
        panel = panel_class(tasks)
        panel.display()
        panel.waiting_cell = True  # buttons a busy kernel cannot serve say so
        try:
            yield panel
        finally:
            panel.waiting_cell = False
            panel.refresh(force=True)
            if all(task.done() for task in tasks):  # the final picture stays in the notebook as a record
                panel.record()
        return
    if not sys.stderr.isatty():
        yield _Null()
        return
    display = _Rich(tasks)
    with display.progress:
        try:
            yield display
        finally:
            display.refresh()


def _put(finished: queue.SimpleQueue[int], i: int, _future: object) -> None:
    finished.put(i)


def finished_batches(tasks: Sequence[DownloadTask], timeout: float | None = None) -> Iterator[list[int]]:
    """Yield the positions of ``tasks`` that completed, in batches, at least every 0.25 s
    (an empty batch when none did), until all completed or ``timeout`` seconds passed.

    Completion callbacks feed one queue, so waiting costs linear work however many
    tasks there are (``concurrent.futures.wait`` would rescan them all every time).
    """
    finished: queue.SimpleQueue[int] = queue.SimpleQueue()
    for i, task in enumerate(tasks):
        task._done.add_done_callback(functools.partial(_put, finished, i))
    left = len(tasks)
    deadline = None if timeout is None else time.monotonic() + timeout
    while left:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return
        batch = []
        try:
            batch.append(finished.get(timeout=0.25 if remaining is None else min(0.25, remaining)))
            while True:
                batch.append(finished.get_nowait())
        except queue.Empty:
            pass
        left -= len(batch)
        yield batch


def watch(tasks: Sequence[DownloadTask], timeout: float | None = None) -> None:
    """Show progress of ``tasks`` until they all complete (or ``timeout`` seconds pass)."""
    with progress_display(list(tasks)) as display:
        for _ in finished_batches(tasks, timeout):
            display.refresh()
