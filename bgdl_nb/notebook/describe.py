"""How a task reads in words, for the live panel and the static record alike: its
name, its state and amount, the bar's style and fill, and one row per file (a file
downloaded again after a cancel is one row that says so). No widgets here, so a record
can be written where ipywidgets is not installed."""

from __future__ import annotations

from collections.abc import Sequence

from .._task import DownloadTask, TaskState

__all__ = ["describe", "format_bytes", "one_per_file"]


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


def one_per_file(tasks: Sequence[DownloadTask]) -> tuple[list[DownloadTask], dict[int, str]]:
    """The newest task of each destination, in order, and for a task that replaced an
    earlier one that was cancelled or failed, that earlier outcome: a file downloaded
    again after a cancel is one row saying so, never two rows of one name."""
    newest: dict[str, DownloadTask] = {}
    for task in tasks:
        if task.destination is not None:
            key = str(task.destination)
            if key not in newest or task.task_identifier > newest[key].task_identifier:
                newest[key] = task
    earlier: dict[int, str] = {}
    kept = []
    for task in tasks:
        if task.destination is None:
            kept.append(task)
            continue
        winner = newest[str(task.destination)]
        if winner is task:
            kept.append(task)
        elif task.state is TaskState.COMPLETED and task.outcome in ("cancelled", "failed"):
            earlier.setdefault(winner.task_identifier, task.outcome)
    return kept, earlier


def describe(task: DownloadTask, earlier: str | None = None) -> tuple[str, str, str, float]:
    """A task as a row shows it: its name, its state in words, the bar's style and how
    full the bar is; ``earlier`` is the outcome of an earlier task of the same file
    (see :func:`one_per_file`). The live row and the static record both read it from here."""
    total = task.count_of_bytes_expected_to_receive or task.count_of_bytes_client_expects_to_receive
    got = task.count_of_bytes_received
    state = task.state
    amount = f"{format_bytes(got)} of {format_bytes(total)}" if total else f"{format_bytes(got)} (size unknown)"
    if state is TaskState.COMPLETED:
        outcome = task.outcome
        text, style = {"done": (f"done, {format_bytes(got)}", "success"),
                       "cancelled": (f"cancelled at {format_bytes(got)}", "")}.get(
            outcome, (f"failed: {_short_error(task)}", "danger"))
    elif task.waiting_reason:
        text, style = f"{amount} · {task.waiting_reason}", "warning"
    elif state is TaskState.RUNNING:
        text, style = amount, "info"
    else:  # suspended: what is on disk is kept, so say how much
        text, style = f"{state.value} at {amount}", ""
    if earlier is not None:
        text = f"{earlier} earlier; downloading again · {text}" if state is not TaskState.COMPLETED else \
            f"{text} (downloaded again after it {earlier})"
    label = task.task_description or task.original_request.url.split("?")[0].rsplit("/", 1)[-1]
    fraction = round(min(1.0, got / total), 3) if total else (1.0 if style == "success" else 0.0)
    return label, text, style, fraction


def _short_error(task: DownloadTask) -> str:
    if task.error is not None:
        return type(task.error).__name__
    response = task.response
    return f"HTTP {response.status}" if response is not None else "?"
