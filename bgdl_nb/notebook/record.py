"""The static record a finished panel leaves in its output: every file, its final size and
outcome, as ``text/html`` and ``text/plain``.

A widget lives only as long as its kernel: a saved notebook reopened, or shown by GitHub,
nbviewer, nbconvert or VS Code, has no model for it ("model not found", or the numbers of
its first moment). Once a panel's work is over (every task done, or its session closed),
:meth:`~bgdl_nb.notebook.widgets.TaskPanel.record` puts this record in the widget's place,
so what is kept is the final state. Plain HTML with inline styles: no script, no CSS
class a viewer would need to know.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence

from .._task import DownloadTask
from .describe import describe, one_per_file

__all__ = ["MAX_ROWS", "static_record"]

MAX_ROWS = 2000
"""Files listed one by one; a larger job lists the first ones and counts the rest."""

_CELL = "padding:1px 8px;text-align:left"
_COLOURS = {"success": "#2e7d32", "danger": "#c62828", "warning": "#ef6c00", "info": "#1565c0", "": "#555"}


def static_record(title: str, header_html: str, tasks: Sequence[DownloadTask]) -> dict[str, str]:
    """The ``text/html`` and ``text/plain`` of a finished panel over ``tasks``."""
    summary = re.sub(r"<[^>]+>", "", header_html).replace("&nbsp;", " ")
    summary = html.unescape(re.sub(r"\s+", " ", summary)).strip()
    rows, lines = [], [summary]
    tasks, earlier = one_per_file(tasks)
    for task in tasks[:MAX_ROWS]:
        label, text, style, fraction = describe(task, earlier.get(task.task_identifier))
        where = str(task.destination) if task.destination is not None else "(handed to the delegate)"
        colour = _COLOURS.get(style, "#555")
        rows.append(
            f'<tr><td style="{_CELL};white-space:nowrap">{html.escape(label)}</td>'
            f'<td style="{_CELL};white-space:nowrap;color:{colour}">{html.escape(text)}</td>'
            f'<td style="{_CELL};text-align:right">{fraction:.0%}</td>'
            f'<td style="{_CELL};color:#777">{html.escape(where)}</td></tr>')
        lines.append(f"  {label}: {text} -> {where}")
    more = len(tasks) - MAX_ROWS
    if more > 0:
        rows.append(f'<tr><td colspan="4" style="padding:1px 8px"><i>… and {more} more files</i></td></tr>')
        lines.append(f"  … and {more} more files")
    table = "".join(rows)
    body = (f'<div class="bgdl-record" style="font-family:var(--jp-ui-font-family,sans-serif);font-size:90%">'
            f"<div><b>{html.escape(summary)}</b></div>"
            f'<table style="border-collapse:collapse;margin-top:4px">{table}</table>'
            f'<div style="color:#777"><small>the final state of this {html.escape(title)} panel '
            f"(kept in the notebook)</small></div></div>")
    return {"text/html": body, "text/plain": "\n".join(lines)}
