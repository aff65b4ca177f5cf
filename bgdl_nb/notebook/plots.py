"""Plots of the event log (matplotlib; headless-safe, every function takes ``ax=``).

Throughput is rebuilt from the coalesced progress rows: each task's received bytes form
a cumulative curve anchored at every ``response`` row (so bytes are never spread over a
time when nothing was transferring, such as a dead kernel), and the curve is sampled at
evenly spaced bin edges. The bin width is picked from a list of round durations so a
10-second download and a 10-hour one both get about 40–150 bins.

Scheduler delay is the time from ``resume()`` to the first response, split by why the
task was not transferring: waiting for a slot, its earliest begin date, discretionary
conditions, retry backoff, the launch rate limiter, or connecting.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from .._waits import WaitReason
from . import require

if TYPE_CHECKING:
    import pandas
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["delay_segments", "plot_scheduler_delay", "plot_throughput", "throughput_frame"]

_NICE_STEPS = (0.1, 0.2, 0.25, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600)
_SLOT = WaitReason.SLOT.value
_REASONS = (*(r.value for r in WaitReason), "other wait", "connecting")
_COLORS = {_SLOT: "#9ecae1", WaitReason.BEGIN.value: "#fdae6b", WaitReason.DISCRETIONARY.value: "#c7e9c0",
           WaitReason.RETRY.value: "#fc9272", WaitReason.LAUNCH.value: "#bcbddc", WaitReason.DISK.value: "#e7969c",
           WaitReason.HOST.value: "#fdd0a2", WaitReason.PAUSED.value: "#bdbdbd", WaitReason.SHARED.value: "#dadaeb",
           "other wait": "#d9d9d9", "connecting": "#6baed6", "transferring": "#31a354"}


def _bin_width(span: float) -> float:
    for step in _NICE_STEPS:
        if span / step <= 150:
            return float(step)
    return float(_NICE_STEPS[-1])


def throughput_frame(events: pandas.DataFrame, bin_seconds: float | None = None) -> pandas.DataFrame:
    """MB/s per time bin (rows) and task (columns), plus a ``total`` column."""
    require("pandas")
    import numpy as np
    import pandas as pd

    rows = events[events["event"].isin(["response", "progress"]) & events["task_identifier"].notna()]
    if rows.empty:
        return pd.DataFrame({"total": pd.Series(dtype="float64")})
    t0 = rows["time"].min()
    seconds = (rows["time"] - t0).dt.total_seconds().to_numpy()
    span = max(float(seconds.max()), 1e-3)
    width = bin_seconds or _bin_width(span)
    edges = np.arange(0.0, span + width, width)
    columns: dict[Any, Any] = {}
    for tid, group in rows.assign(_s=seconds).groupby("task_identifier", sort=True):
        written = group["bytes_written"].fillna(0).astype("float64").to_numpy()
        times = group["_s"].to_numpy()
        # Response rows carry no bytes, so the curve is flat up to each of them: bytes
        # accrue only after a transfer (re)started, never across a dead kernel's gap.
        cumulative = np.cumsum(written)
        sampled = np.interp(edges, times, cumulative, left=0.0, right=cumulative[-1])
        columns[int(cast(Any, tid))] = np.diff(sampled) / width / 1e6
    index = pd.to_datetime(t0) + pd.to_timedelta(edges[:-1], unit="s")
    frame = pd.DataFrame(columns, index=index)
    frame["total"] = frame.sum(axis=1)
    frame.index.name = "time"
    return frame


def _markers(ax: Axes, events: pandas.DataFrame, t0: Any) -> None:
    styles = {"reattached": ("k", "--", "reattached (new kernel)"), "retry": ("#d62728", ":", "retry"),
              "suspended": ("#ff7f0e", ":", "suspended")}
    for kind, (color, line, label) in styles.items():
        times = events.loc[events["event"] == kind, "time"]
        for i, t in enumerate(times):
            ax.axvline(_elapsed(t, t0), color=color, linestyle=line, linewidth=1, alpha=0.8,
                       label=label if i == 0 else None)


def _elapsed(t: Any, t0: Any) -> float:
    return float((t - t0).total_seconds())


def _elapsed_label(t0: Any, extra: str = "") -> str:
    """``seconds since 14:03:07 UTC (2026-11-22)``: elapsed time, anchored to a readable clock."""
    return f"seconds since {t0:%H:%M:%S} UTC ({t0:%Y-%m-%d}){extra}"


def plot_throughput(events: pandas.DataFrame, *, ax: Axes | None = None, per_task: bool | None = None,
                    bin_seconds: float | None = None) -> Axes:
    """Plot MB/s over time for the session and (up to 10 tasks) per task.

    Kernel reattaches, retries and suspends are marked with vertical lines. Returns the Axes.
    """
    frame = throughput_frame(events, bin_seconds)
    tasks = [c for c in frame.columns if c != "total"]
    if per_task is None:
        per_task = 1 < len(tasks) <= 10
    lines = {f"task {tid}": frame[tid] for tid in tasks} if per_task else {}
    return draw_throughput(frame, lines, ax=ax, total_label="all tasks", title="download throughput",
                           markers=events)


def draw_throughput(frame: pandas.DataFrame, lines: dict[str, Any], *, ax: Axes | None, total_label: str,
                    title: str, markers: pandas.DataFrame | None = None) -> Axes:
    """Draw a :func:`throughput_frame`: its total as a wide grey line, ``lines`` (label ->
    MB/s per bin) over it, the legend beside the plot; with ``markers``, the reattaches,
    retries and suspends among those events as vertical lines."""
    require("matplotlib")
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(9, 3.6), layout="constrained")
    if frame.empty:
        ax.text(0.5, 0.5, "no bytes transferred yet", ha="center", va="center", transform=ax.transAxes)
        return ax
    t0 = frame.index[0]
    x = (frame.index - t0).total_seconds()
    ax.plot(x, frame["total"], color="0.3", linewidth=3, alpha=0.5, label=total_label,
            drawstyle="steps-post", zorder=1)
    for label, series in lines.items():
        ax.plot(x, series, linewidth=1.2, label=label, drawstyle="steps-post", zorder=2)
    if markers is not None:
        _markers(ax, markers[markers["time"] >= t0], t0)
    width = (frame.index[1] - frame.index[0]).total_seconds() if len(frame.index) > 1 else 0
    ax.set_ylabel("throughput (MB/s)")
    ax.set_xlabel(_elapsed_label(t0, f", {width:g} s bins" if width else ""))
    ax.set_ylim(bottom=0)
    ax.set_xlim(left=0)
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", borderaxespad=0)  # beside, not over, the lines
    ax.grid(alpha=0.3)
    return ax


def delay_segments(events: pandas.DataFrame) -> pandas.DataFrame:
    """Per task, the spans of its life: waiting (by reason), connecting and transferring.

    Columns: task_identifier, start, end, kind, seconds, and ``first_byte``, which marks
    the spans that count toward the scheduler delay (from a resume to the first
    successful response after it). A ``reattached`` row ends every open span at the last
    sign of life before it, so a dead kernel's gap is never counted as transferring.
    """
    require("pandas")
    import pandas as pd

    spans: list[dict[str, Any]] = []
    current: dict[int, tuple[str, Any, bool]] = {}  # tid -> (kind, since, before first byte)
    last_time = None

    def close(tid: int, at: Any) -> None:
        kind, since, first = current.pop(tid)
        if at > since:
            spans.append({"task_identifier": tid, "start": since, "end": at, "kind": kind,
                          "first_byte": first and kind != "transferring"})

    rows: Any = events.sort_values("seq").itertuples(index=False)  # pandas types a row loosely
    for row in rows:
        kind = row.event
        if pd.isna(row.task_identifier):
            if kind in ("reattached", "detached") and last_time is not None:
                for tid in list(current):
                    close(tid, last_time if kind == "reattached" else row.time)
            last_time = row.time
            continue
        tid = int(row.task_identifier)
        state, _, first = current.get(tid, (None, None, False))
        new: str | None = state
        reason = getattr(row, "reason", None)
        said = None if reason is None or pd.isna(reason) else str(reason)
        if kind == "resumed":  # its reason, when it could not start at once (a journal before it: none)
            new, first = said or _SLOT, True
        elif kind == "waiting":
            new = said or "other wait"
        elif kind == "retry":
            new = WaitReason.RETRY.value
        elif kind == "started":
            new = "connecting"
        elif kind == "response":
            ok = row.status is not None and not pd.isna(row.status) and int(row.status) in (200, 206)
            new = "transferring" if ok else state  # a 503 is not a first byte
        elif kind in ("resumed_at_offset", "progress"):
            new = "transferring"
        elif kind in ("suspended", "canceled", "completed", "failed", "finished"):
            new = None
        if new != state:
            if state is not None:
                close(tid, row.time)
            if new is not None:
                current[tid] = (new, row.time, first and new != "transferring")
        last_time = row.time
    for tid in list(current):
        close(tid, last_time)
    frame = pd.DataFrame(spans, columns=["task_identifier", "start", "end", "kind", "first_byte"])
    frame["seconds"] = (frame["end"] - frame["start"]).dt.total_seconds() if len(frame) else []
    return frame


def plot_scheduler_delay(events: pandas.DataFrame, *, ax: Axes | tuple[Axes, Axes] | None = None,
                         max_tasks: int = 40) -> Figure | Axes:
    """Left: each task's time from resume() to first byte, stacked by reason. Right: a
    timeline of waiting vs transferring. Give ``ax=(left, right)`` to draw into your own
    axes, or one Axes for the stacked bars only. Returns the Figure it made, else ``ax``.
    """
    require("matplotlib")
    import matplotlib.pyplot as plt

    segments = delay_segments(events)
    made = None
    if ax is None:
        made, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained",
                                           gridspec_kw={"width_ratios": [1, 1.6]})
    elif isinstance(ax, tuple):
        left, right = ax
    else:
        left, right = ax, None
    tasks = sorted(segments["task_identifier"].unique())[:max_tasks] if len(segments) else []
    delays = segments[segments["first_byte"]].groupby(["task_identifier", "kind"])["seconds"].sum()
    bottom = {t: 0.0 for t in tasks}
    for reason in _REASONS:
        values = [float(delays.get((t, reason), 0.0)) for t in tasks]
        if any(values):
            left.barh([str(t) for t in tasks], values, left=[bottom[t] for t in tasks], color=_COLORS.get(reason),
                      label=reason)
            for t, v in zip(tasks, values):
                bottom[t] += v
    left.set_xlabel("seconds from resume() to first byte")
    left.set_ylabel("task")
    left.set_title("scheduler delay by reason")
    left.invert_yaxis()
    if tasks:
        left.legend(fontsize="small")
    else:
        left.text(0.5, 0.5, "no task has been resumed", ha="center", va="center", transform=left.transAxes)
    if right is not None:
        t0 = segments["start"].min() if len(segments) else None
        for i, t in enumerate(tasks):
            for span in segments[segments["task_identifier"] == t].itertuples(index=False):
                right.barh(i, _elapsed(span.end, span.start), left=_elapsed(span.start, t0),
                           color=_COLORS.get(span.kind, "#999999"), height=0.7)
        right.set_yticks(range(len(tasks)), [str(t) for t in tasks])
        right.invert_yaxis()
        right.set_title("timeline: waiting vs transferring")
        right.set_xlabel(_elapsed_label(t0) if t0 is not None else "seconds")
        right.set_xlim(left=0)
        from matplotlib.patches import Rectangle
        names = ("transferring", "connecting", _SLOT, WaitReason.RETRY.value)
        right.legend([Rectangle((0, 0), 1, 1, color=_COLORS[k]) for k in names], names,
                     fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return made if made is not None else ax  # type: ignore[return-value]
