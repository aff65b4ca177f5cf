"""The panel of a cluster job: totals, speed and ETA for the whole cluster, a row per worker
with its active files, and pause / resume / cancel buttons that act on every worker.

It shows what the workers reported through Dask (see :mod:`bgdl_nb._cluster`), refreshed
from the loop that waits in ``fetch(..., cluster=client)`` at most ``rate`` times a
second. The buttons are served on the kernel's click subshell, like the task panel's, so
they work while that ``fetch()`` still runs.
"""

from __future__ import annotations

import html
import re
import threading
import time
from typing import TYPE_CHECKING, Any

from . import require

require("ipywidgets")

import ipywidgets as w  # noqa: E402

from .clicks import serve_clicks  # noqa: E402
from .describe import _format_eta, format_bytes  # noqa: E402
from .widgets import _Speed  # noqa: E402

if TYPE_CHECKING:
    from .._cluster import ClusterJob

__all__ = ["ClusterPanel"]


class ClusterPanel:
    """A live panel over one :class:`~bgdl_nb._cluster.ClusterJob`."""

    def __init__(self, job: ClusterJob, *, rate: float = 4.0) -> None:
        self.job = job
        self.min_interval = 1.0 / rate
        self._last = 0.0
        self._lock = threading.Lock()
        self._speed = _Speed()
        self.state = "running"
        self._started = time.monotonic()
        self.header = w.HTML()
        self.overall = w.FloatProgress(min=0.0, max=1.0, layout=w.Layout(width="100%"))
        self.workers = w.HTML()
        self.note = w.HTML()
        self.buttons = {name: w.Button(description=name, layout=w.Layout(width="90px"))
                        for name in ("pause", "resume", "cancel")}
        for name, button in self.buttons.items():
            button.on_click(lambda _b, name=name: self._act(name))
            serve_clicks(button)
        self.widget = w.VBox([self.header, self.overall, self.workers,
                              w.HBox(list(self.buttons.values())), self.note])
        self.refresh(force=True)

    def _act(self, action: str) -> None:
        """A button: the action reaches every worker of the job."""
        getattr(self.job, action)()
        self.state = {"pause": "paused", "resume": "running", "cancel": "cancelled"}[action]
        self.note.value = f"<i>{action} sent to every worker at {time.strftime('%H:%M:%S')}</i>"
        self.refresh(force=True)

    def display(self) -> None:
        from IPython.display import display

        self._handle = display(self.widget, display_id=True)  # type: ignore[no-untyped-call]

    def _ipython_display_(self) -> None:
        self.display()

    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self._lock.acquire(blocking=False):
            return
        try:
            if force or now - self._last >= self.min_interval:
                self._last = now
                self._refresh(now)
        finally:
            self._lock.release()

    def _refresh(self, now: float) -> None:
        t = self.job.totals()
        speed = self._speed.update(now, t["received"])
        left = max(0, t["expected"] - t["received"])
        ended = bool(t["states"]) and all(s in ("finished", "failed") for s in t["states"])
        if ended:
            pace = f"{format_bytes(t['received'] / max(1e-3, now - self._started))}/s on average"
            state = "done" if not t["failed"] else "ended with failures"
        else:
            pace = f"{format_bytes(speed)}/s · ETA {_format_eta(left / speed if speed > 0 and left else None)}"
            state = self.state
        failed = f", <b style='color:#c62828'>{t['failed']} failed</b>" if t["failed"] else ""
        self.header.value = (
            f"<b>bgdl_nb on a Dask cluster</b> · {html.escape(self.job.identifier)} · "
            f"{t['finished']}/{t['files']} files{failed} · {format_bytes(t['received'])} of "
            f"{format_bytes(t['expected'])} · {pace} · {len(t['workers'])} workers · {state}")
        self.overall.value = t["finished"] / t["files"] if t["files"] else 0.0
        rows = []
        for name, row in sorted(t["workers"].items()):
            files = ", ".join(f"{html.escape(str(a[0]))} {_percent(a[1], a[2])}" for a in row["active"][:4]) or "–"
            rows.append(f"<tr><td>{html.escape(name)}</td><td>{row['shards']}</td>"
                        f"<td>{row['finished']}/{row['files']}</td><td>{format_bytes(row['received'])}</td>"
                        f"<td>{files}</td></tr>")
        self.workers.value = (
            "<table style='border-spacing: 14px 2px'><tr><th>worker</th><th>shards</th><th>files</th>"
            "<th>received</th><th>active files</th></tr>"
            + "".join(rows) + "</table>") if rows else "<i>waiting for the workers' first report…</i>"

    def close(self, ended: bool = True) -> None:
        """The wait stopped: a final picture. When the job ``ended``, the widget's output
        becomes its static record (the header and the workers' table as HTML and text), so
        a saved notebook shows how the job ended instead of a widget's first numbers."""
        self.refresh(force=True)
        handle = getattr(self, "_handle", None)
        if not ended or handle is None:
            return  # interrupted: the buttons stay for the job that goes on
        text = html.unescape(re.sub(r"<[^>]+>", "", self.header.value))
        handle.update({"text/html": f"<div class='bgdl-record'>{self.header.value}{self.workers.value}</div>",
                       "text/plain": text}, raw=True)


def _percent(got: Any, size: Any) -> str:
    return f"{100 * int(got) / int(size):.0f}%" if size else format_bytes(int(got))
