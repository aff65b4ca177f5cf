"""The progress panel (ipywidgets 8): one overall bar and one row per active task.

The panel only reads task counters when it refreshes, at most ``rate`` times a second
(from a timer thread for ``session.show()``, or from the loop that waits in
``fetch()``); it changes a widget only when the shown value changed, so an idle panel
sends nothing. With thousands of tasks it shows at most ``max_rows`` rows — tasks
transferring first, then waiting ones, then the most recently finished — and a one-line
summary of the rest. Rows are a fixed pool of widgets rebound to tasks, never rebuilt.

Each row has pause, resume and cancel buttons that act on the task itself; a waiting
task shows why it waits.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from . import require

require("ipywidgets")

import ipywidgets as w  # noqa: E402

from .._task import DownloadTask, TaskState  # noqa: E402

if TYPE_CHECKING:
    from .._session import Session

__all__ = ["SessionPanel", "TaskPanel", "format_bytes"]


def format_bytes(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _format_eta(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds > 365 * 86400:
        return "–"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class _Speed:
    """Bytes per second, smoothed over the last few refreshes."""

    def __init__(self) -> None:
        self.last: tuple[float, int] | None = None
        self.value = 0.0

    def update(self, now: float, count: int) -> float:
        if self.last is not None and now > self.last[0]:
            instant = max(0.0, (count - self.last[1]) / (now - self.last[0]))
            self.value = instant if self.value == 0 else 0.6 * self.value + 0.4 * instant
        self.last = (now, count)
        return self.value


def _set(widget: w.Widget, name: str, value: object) -> int:
    """Set a trait only when it changes; return how many updates were sent."""
    if getattr(widget, name) != value:
        setattr(widget, name, value)
        return 1
    return 0


class _Row:
    """One reusable row: name, bar, state, speed and three buttons."""

    def __init__(self, panel: TaskPanel) -> None:
        self.task: DownloadTask | None = None
        self.speed = _Speed()
        self.name = w.Label(layout=w.Layout(width="22%"))
        self.bar = w.FloatProgress(min=0.0, max=1.0, layout=w.Layout(width="30%"))
        self.state = w.Label(layout=w.Layout(width="26%"))
        self.rate = w.Label(layout=w.Layout(width="10%"))
        self.pause = w.Button(icon="pause", tooltip="suspend", layout=w.Layout(width="34px"))
        self.play = w.Button(icon="play", tooltip="resume", layout=w.Layout(width="34px"))
        self.stop = w.Button(icon="stop", tooltip="cancel", layout=w.Layout(width="34px"))
        self.pause.on_click(lambda _: self._act(DownloadTask.suspend))
        self.play.on_click(lambda _: self._act(DownloadTask.resume))
        self.stop.on_click(lambda _: self._act(DownloadTask.cancel))
        self.box = w.HBox([self.name, self.bar, self.state, self.rate, self.pause, self.play, self.stop])
        self.panel = panel

    def _act(self, action: Callable[[DownloadTask], object]) -> None:
        if self.task is not None:
            action(self.task)
            self.panel.refresh(force=True)

    def show(self, task: DownloadTask, now: float) -> int:
        if task is not self.task:
            self.task, self.speed = task, _Speed()
        total = task.count_of_bytes_expected_to_receive or task.count_of_bytes_client_expects_to_receive
        got = task.count_of_bytes_received
        speed = self.speed.update(now, got)
        state = task.state
        if state is TaskState.COMPLETED:
            outcome = task.outcome
            text, style = {"done": ("done", "success"), "cancelled": ("cancelled", "")}.get(
                outcome, (f"failed: {_short_error(task)}", "danger"))
        elif task.waiting_reason:
            text, style = f"waiting: {task.waiting_reason}", "warning"
        elif state is TaskState.RUNNING:
            text, style = f"{format_bytes(got)} / {format_bytes(total)}", "info"
        else:
            text, style = state.value, ""
        label = task.task_description or task.original_request.url.split("?")[0].rsplit("/", 1)[-1]
        sent = _set(self.name, "value", label[:40])
        sent += _set(self.bar, "value", round(min(1.0, got / total), 3) if total else (1.0 if style == "success" else 0.0))
        sent += _set(self.bar, "bar_style", style)
        sent += _set(self.state, "value", text[:80])
        sent += _set(self.rate, "value", f"{format_bytes(speed)}/s" if state is TaskState.RUNNING and speed else "")
        sent += _set(self.pause, "disabled", state is not TaskState.RUNNING)
        sent += _set(self.play, "disabled", state is not TaskState.SUSPENDED)
        sent += _set(self.stop, "disabled", state in (TaskState.COMPLETED, TaskState.CANCELING))
        return sent


def _short_error(task: DownloadTask) -> str:
    if task.error is not None:
        return type(task.error).__name__
    response = task.response
    return f"HTTP {response.status}" if response is not None else "?"


def _execution_count() -> int | None:
    """The number of the cell being run (None outside IPython)."""
    try:
        from IPython.core import getipython
    except ImportError:
        return None
    module: Any = getipython  # get_ipython is typed in some IPython releases and not in others
    shell = module.get_ipython()
    return None if shell is None else int(shell.execution_count)


class TaskPanel:
    """A panel over a fixed list of tasks (``fetch()`` uses it) or, through
    :class:`SessionPanel`, over every task of a session."""

    def __init__(self, tasks: Sequence[DownloadTask] | None = None, *, max_rows: int = 12,
                 rate: float = 4.0, title: str = "bgdl_nb") -> None:
        self._tasks = list(tasks or [])
        self.max_rows = max_rows
        self.min_interval = 1.0 / rate
        self.title = title
        self.updates_sent = 0
        self._last_refresh = 0.0
        self._lock = threading.Lock()
        self._speed = _Speed()
        self.header = w.HTML()
        self.overall = w.FloatProgress(min=0.0, max=1.0, layout=w.Layout(width="100%"))
        self.summary = w.HTML()
        self._rows: list[_Row] = []
        self.rows_box = w.VBox([])
        self.widget = w.VBox([self.header, self.overall, self.rows_box, self.summary])
        self.refresh(force=True)

    def tasks(self) -> Sequence[DownloadTask]:
        return self._tasks

    def display(self) -> None:
        from IPython.display import display

        display(self.widget)  # type: ignore[no-untyped-call]
        self._shown_in = _execution_count()

    def _ipython_display_(self) -> None:
        # ``session.show()`` displays the panel and returns it; as the last line of a cell
        # IPython would display it a second time: once per cell is enough
        if getattr(self, "_shown_in", None) != _execution_count():
            self.display()

    def refresh(self, force: bool = False) -> None:
        """Bring the widgets up to date (at most ``rate`` times a second unless forced)."""
        now = time.monotonic()
        if not self._lock.acquire(blocking=False):
            return  # another thread is refreshing right now
        try:
            if not force and now - self._last_refresh < self.min_interval:
                return
            self._last_refresh = now
            self.updates_sent += self._refresh(now)
        finally:
            self._lock.release()

    def _refresh(self, now: float) -> int:
        tasks = self.tasks()
        counts = {"transferring": 0, "waiting": 0, "suspended": 0, "done": 0, "failed": 0, "cancelled": 0}
        done_bytes = total_bytes = 0
        unknown = 0
        active: list[DownloadTask] = []
        waiting: list[DownloadTask] = []
        finished: list[DownloadTask] = []
        for task in tasks:
            state = task.state
            outcome = task.outcome
            if outcome == "cancelled":  # its own state, out of the totals: the bar can still reach 100 %
                counts["cancelled"] += 1
                finished.append(task)
                continue
            got = task.count_of_bytes_received
            total = task.count_of_bytes_expected_to_receive or task.count_of_bytes_client_expects_to_receive
            done_bytes += got
            if total is None:
                unknown += 1
            else:
                total_bytes += total
            if state is TaskState.COMPLETED:
                counts[outcome] += 1
                finished.append(task)
            elif state is TaskState.SUSPENDED:
                counts["suspended"] += 1
                waiting.append(task)
            elif task.waiting_reason:
                counts["waiting"] += 1
                waiting.append(task)
            else:
                counts["transferring"] += 1
                active.append(task)
        shown = (active + waiting + finished[::-1])[: self.max_rows]
        while len(self._rows) < len(shown):
            self._rows.append(_Row(self))
        sent = 0
        for row, task in zip(self._rows, shown):
            sent += row.show(task, now)
        boxes = tuple(r.box for r in self._rows[: len(shown)])
        if self.rows_box.children != boxes:
            self.rows_box.children = boxes
            sent += 1
        speed = self._speed.update(now, done_bytes)
        eta = (total_bytes - done_bytes) / speed if speed > 0 and not unknown and total_bytes > done_bytes else None
        size = format_bytes(total_bytes) + (" + ?" if unknown else "")
        header = (f"<b>{self.title}</b> &nbsp; {format_bytes(done_bytes)} / {size} &nbsp; "
                  f"{format_bytes(speed) + '/s' if counts['transferring'] else 'idle'} &nbsp; ETA {_format_eta(eta)} &nbsp; "
                  f"{counts['transferring']} running · {counts['waiting']} waiting · "
                  f"{counts['suspended']} suspended · {counts['done']} done · {counts['failed']} failed"
                  + (f" · {counts['cancelled']} cancelled" if counts["cancelled"] else ""))
        sent += _set(self.header, "value", header)
        counted = len(tasks) - counts["cancelled"]
        all_done = counted > 0 and counts["done"] == counted
        fraction = done_bytes / total_bytes if total_bytes else (1.0 if all_done else 0.0)
        sent += _set(self.overall, "value", round(min(1.0, fraction), 3))
        sent += _set(self.overall, "bar_style", "danger" if counts["failed"] else ("success" if all_done else "info"))
        hidden = len(tasks) - len(shown)
        sent += _set(self.summary, "value", f"<i>… and {hidden} more tasks not shown</i>" if hidden > 0 else "")
        return sent


class SessionPanel(TaskPanel):
    """A live panel over every task of a session, refreshed by a timer thread."""

    def __init__(self, session: Session, **kwargs: object) -> None:
        self.session = session
        self._stop = threading.Event()
        title = f"bgdl_nb · {session.identifier}" if session.identifier else "bgdl_nb"
        super().__init__(None, title=title, **kwargs)  # type: ignore[arg-type]
        self._timer = threading.Thread(target=self._tick, name="bgdl-panel", daemon=True)
        self._timer.start()

    def tasks(self) -> Sequence[DownloadTask]:
        try:
            return self.session.all_tasks()
        except Exception:  # the session was closed: show what we have
            return []

    def _tick(self) -> None:
        while not self._stop.wait(self.min_interval):
            self.refresh()
            if self.session._host.closed:
                self.refresh(force=True)
                return

    def close(self) -> None:
        self._stop.set()
        self.widget.close()
