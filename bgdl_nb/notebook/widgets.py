"""The progress panel (ipywidgets 8): one overall bar and one row per active task.

The panel only reads task counters when it refreshes, at most ``rate`` times a second
(from a timer thread for ``session.show()``, or from the loop that waits in
``fetch()``); it changes a widget only when the shown value changed, so an idle panel
sends nothing. With thousands of tasks it shows at most ``max_rows`` rows — tasks
transferring first, then waiting ones, then the most recently finished — and a one-line
summary of the rest. Rows are a fixed pool of widgets rebound to tasks, never rebuilt.

Rows keep their place: a task keeps its row while it is shown, a state change never
re-sorts the rows, and for a few seconds after a click nothing moves at all, so a
second click lands on the task named on that row. A task the user acted on stays shown.

Each row has pause, resume and cancel buttons that act on the task itself; a waiting
task shows why it waits. The buttons' messages are served on a kernel subshell thread
of their own (ipykernel 7, :mod:`bgdl_nb.notebook.clicks`), so they work while the cell that showed the panel is still
running (a blocking ``fetch()``); where a kernel has no subshells, a panel shown by a
running cell says that its buttons act once the cell is done.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from . import require

require("ipywidgets")

import ipywidgets as w  # noqa: E402

from .._exceptions import BgdlError  # noqa: E402
from .._task import DownloadTask, TaskState  # noqa: E402
from .clicks import serve_clicks  # noqa: E402
from .describe import _format_eta, describe, format_bytes, one_per_file  # noqa: E402

if TYPE_CHECKING:
    from .._session import Session

__all__ = ["SessionPanel", "TaskPanel", "format_bytes"]

HOLD_SECONDS = 3.0  # rows stay in place this long after a click
SILENT_SECONDS = 10  # a live panel that heard nothing from its kernel this long says so

_LIVENESS = ('<style>@keyframes bgdl-silent {{ to {{ visibility: visible; }} }}</style>'
             '<span class="bgdl-silent" data-beat="{beat}" style="visibility: hidden; color: #b35900; '
             'animation: bgdl-silent 0s {after}s forwards">⚠ no word from the kernel for {after} s: it died, '
             'or is busy elsewhere. Downloads of background sessions go on in the transfer service; run this '
             'cell again (in a new kernel too) to see them.</span>')
"""A heartbeat drawn by the browser itself: every refresh re-renders the span (its beat
changes once a second), restarting its animation; when refreshes stop (the kernel died),
the animation ends and the notice shows, with no kernel needed to say so."""
REFRESH_SHARE = 0.02
"""A panel spends at most this share of the time refreshing: with thousands of tasks a
refresh takes milliseconds, and it then comes less often than ``rate`` a second (the
engine shares the interpreter with it; ``benchmarks/ui_cost.py`` measures the cost)."""


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
        self.live = all([serve_clicks(b) for b in (self.pause, self.play, self.stop)])
        self.box = w.HBox([self.name, self.bar, self.state, self.rate, self.pause, self.play, self.stop])
        for widget, css in ((self.box, "bgdl-row"), (self.name, "bgdl-name"), (self.state, "bgdl-state")):
            widget.add_class(css)  # stable handles for styles and browser tests
        self.panel = panel

    def _act(self, action: Callable[[DownloadTask], object]) -> None:
        task = self.task
        if task is not None and not self.panel.frozen:
            self.panel.touched(task)
            action(task)
            self.panel.refresh(force=True)

    def show(self, task: DownloadTask, now: float, frozen: bool, earlier: str | None = None) -> int:
        if task is not self.task:
            self.task, self.speed = task, _Speed()
        speed = self.speed.update(now, task.count_of_bytes_received)
        state = task.state
        label, text, style, fraction = describe(task, earlier)
        sent = _set(self.name, "value", label[:40])
        sent += _set(self.bar, "value", fraction)
        sent += _set(self.bar, "bar_style", style)
        sent += _set(self.state, "value", text[:80])
        sent += _set(self.rate, "value", f"{format_bytes(speed)}/s" if state is TaskState.RUNNING and speed else "")
        sent += _set(self.pause, "disabled", frozen or state is not TaskState.RUNNING)
        sent += _set(self.play, "disabled", frozen or state is not TaskState.SUSPENDED)
        sent += _set(self.stop, "disabled", frozen or state in (TaskState.COMPLETED, TaskState.CANCELING))
        return sent


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
        self._cost = 0.0  # seconds the last refresh took
        self._lock = threading.Lock()
        self._speed = _Speed()
        self.header = w.HTML()
        self.overall = w.FloatProgress(min=0.0, max=1.0, layout=w.Layout(width="100%"))
        self.summary = w.HTML()
        self._rows: list[_Row] = []
        self._slots: list[DownloadTask] = []  # the task on each row, in row order
        self._pinned: set[int] = set()  # tasks the user acted on: they stay shown
        self._hold_until = 0.0  # rows do not move before this time (the user is clicking)
        self.frozen = False  # the session closed: the final picture, no buttons
        self.waiting_cell = False  # the cell that showed the panel is still running
        self._following = False  # the cell was interrupted: the panel refreshes itself
        self.rows_box = w.VBox([])
        self.hint = w.HTML()
        self.liveness = w.HTML()
        self.liveness.add_class("bgdl-liveness")
        self.header.add_class("bgdl-header")
        self.widget = w.VBox([self.header, self.overall, self.rows_box, self.summary, self.hint, self.liveness])
        self.refresh(force=True)

    def touched(self, task: DownloadTask) -> None:
        """The user acted on ``task`` from its row: keep it shown, and hold every row in
        place for ``HOLD_SECONDS`` so the next click lands on the task it names."""
        self._pinned.add(task.task_identifier)
        self._hold_until = time.monotonic() + HOLD_SECONDS

    def _place(self, ranked: list[DownloadTask], now: float) -> list[DownloadTask]:
        """The tasks to show, row by row: a task keeps its row while it is shown."""
        present = {t.task_identifier: t for t in ranked}
        self._pinned = {tid for tid in self._pinned
                        if tid in present and present[tid].state is not TaskState.COMPLETED}
        first = [present[tid] for tid in self._pinned]
        wanted = list({t.task_identifier: t for t in first + ranked}.values())[: self.max_rows]
        if now < self._hold_until:  # nothing moves while the user clicks; new tasks only below
            slots = [t for t in self._slots if t.task_identifier in present]
            placed = {t.task_identifier for t in slots}
            slots += [t for t in wanted if t.task_identifier not in placed][: max(0, self.max_rows - len(slots))]
            self._slots = slots
            return slots
        keep = {t.task_identifier for t in wanted}
        kept: list[DownloadTask | None] = [t if t.task_identifier in keep else None for t in self._slots]
        placed = {t.task_identifier for t in kept if t is not None}
        newcomers = iter([t for t in wanted if t.task_identifier not in placed])
        filled = [t if t is not None else next(newcomers, None) for t in kept]
        self._slots = [t for t in filled if t is not None] + list(newcomers)
        return self._slots

    def tasks(self) -> Sequence[DownloadTask]:
        return self._tasks

    def display(self) -> None:
        from IPython.display import display

        self._handle = display(self.widget, display_id=True)  # type: ignore[no-untyped-call]
        self._shown_in = _execution_count()

    def record(self) -> None:
        """Replace the live panel in its output with its static record: every file, its
        final size and outcome, as HTML and text. A saved notebook then keeps the final
        state, and GitHub, nbviewer, nbconvert, VS Code and a reopened notebook show it
        (a widget would show as "model not found" there, or with its first numbers)."""
        handle = getattr(self, "_handle", None)
        if handle is None or getattr(self, "_recorded", False):
            return
        self._recorded = True
        self.refresh(force=True)
        from .record import static_record
        handle.update(static_record(self.title, self.header.value, self.tasks()), raw=True)

    def _ipython_display_(self) -> None:
        # ``session.show()`` displays the panel and returns it; as the last line of a cell
        # IPython would display it a second time: once per cell is enough
        if getattr(self, "_shown_in", None) != _execution_count():
            self.display()

    def refresh(self, force: bool = False) -> None:
        """Bring the widgets up to date: at most ``rate`` times a second, and at most
        :data:`REFRESH_SHARE` of the time; ``force`` (a click) refreshes at once.

        The share is judged on what a refresh costs once the panel is built: a forced
        refresh (the first one, which creates the rows, or a click) and a refresh that
        adds rows do one-off work, so their cost does not space out the next ones (it
        froze a new panel for seconds), and the cost is this thread's CPU time, not the
        wall-clock time: a refresh that waited for the interpreter while the session's
        threads worked (a busy first second) cost the panel nothing, and must not freeze it."""
        now = time.monotonic()
        if not self._lock.acquire(blocking=False):
            return  # another thread is refreshing right now
        try:
            if not force and now - self._last_refresh < max(self.min_interval, self._cost / REFRESH_SHARE):
                return
            self._last_refresh = now
            rows = len(self._rows)
            spent = time.thread_time()
            self.updates_sent += self._refresh(now)
            if not force and len(self._rows) == rows:
                self._cost = time.thread_time() - spent
        finally:
            self._lock.release()

    def _refresh(self, now: float) -> int:
        tasks, earlier = one_per_file(self.tasks())
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
        shown = self._place(active + waiting + finished[::-1], now)
        while len(self._rows) < len(shown):
            self._rows.append(_Row(self))
        idle_buttons = self.waiting_cell and not all(row.live for row in self._rows)
        sent = 0
        for row, task in zip(self._rows, shown):
            sent += row.show(task, now, self.frozen or idle_buttons, earlier.get(task.task_identifier))
        boxes = tuple(r.box for r in self._rows[: len(shown)])
        if self.rows_box.children != boxes:
            self.rows_box.children = boxes
            sent += 1
        speed = self._speed.update(now, done_bytes)
        eta = (total_bytes - done_bytes) / speed if speed > 0 and not unknown and total_bytes > done_bytes else None
        size = format_bytes(total_bytes) if not unknown else (
            f"{format_bytes(total_bytes)} + {unknown} of unknown size" if total_bytes else "size unknown")
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
        notes = [f"… and {hidden} more tasks not shown"] if hidden > 0 else []
        notes += self._notes()
        sent += _set(self.summary, "value", f"<i>{' · '.join(notes)}</i>" if notes else "")
        hint = ("the buttons act once this cell is done (this kernel cannot serve them while a cell runs; "
                "<code>await bg.fetch_async(...)</code> keeps them live)") if idle_buttons else ""
        sent += _set(self.hint, "value", f"<small>{hint}</small>" if hint else "")
        beat = "" if self.frozen else _LIVENESS.format(beat=int(now), after=SILENT_SECONDS)
        sent += _set(self.liveness, "value", beat)
        return sent

    def _notes(self) -> list[str]:
        return ["the cell was interrupted: the downloads go on in the background, and the buttons here "
                "control them"] if self._following else []

    def follow(self, when_done: Callable[[], None]) -> None:
        """Keep the panel live after the cell that showed it was interrupted: a timer
        thread refreshes it until every task is done, then calls ``when_done``."""
        self._following, self.waiting_cell = True, False

        def run() -> None:
            try:
                while not all(task.done() for task in self.tasks()):
                    time.sleep(self.min_interval)
                    self.refresh()
            finally:
                self._following = False
                when_done()
                self.refresh(force=True)
                self.record()

        threading.Thread(target=run, name="bgdl-panel", daemon=True).start()


class SessionPanel(TaskPanel):
    """A live panel over the current job of a session (``all_tasks=True``: every task
    ever created under its identifier), refreshed by a timer thread. When the session
    closes, the panel keeps its final picture (a saved notebook keeps the record)."""

    def __init__(self, session: Session, *, all_tasks: bool = False, **kwargs: Any) -> None:
        self.session = session
        self.all_tasks = all_tasks
        self._last: list[DownloadTask] = []
        self._earlier = 0
        self._stop = threading.Event()
        title = f"bgdl_nb · {session.identifier}" if session.identifier else "bgdl_nb"
        super().__init__(None, title=title, **kwargs)
        self._timer = threading.Thread(target=self._tick, name="bgdl-panel", daemon=True)
        self._timer.start()

    def tasks(self) -> Sequence[DownloadTask]:
        if self.session._host.closed:
            self.frozen = True
            return self._last  # the final picture, not an empty panel
        try:
            everything = self.session.all_tasks()
            shown = everything if self.all_tasks else self.session.current_tasks()
        except BgdlError:  # closed between the check and the read
            self.frozen = True
            return self._last
        self._earlier = len(everything) - len(shown)
        self._last = shown
        return shown

    def _notes(self) -> list[str]:
        notes = super()._notes()
        if self._earlier:
            notes.append(f"{self._earlier} finished tasks of earlier runs under this identifier not shown "
                         "(<code>session.show(all_tasks=True)</code> shows them)")
        if self.frozen:
            notes.append("session closed: final state")
        return notes

    def _tick(self) -> None:
        while not self._stop.wait(self.min_interval):
            self.refresh()
            if self.session._host.closed:
                self.refresh(force=True)
                self.record()
                return

    def close(self) -> None:
        self._stop.set()
        self.widget.close()
