"""Run a notebook the way a person does: every code cell in order in a real kernel started
in the notebook's folder. A cell tagged ``restart-kernel`` kills its kernel: it is run,
the kernel's death is awaited, and a new kernel takes the next cell at once. Used by the
notebook tests and by ``docs/execute_notebooks.py``, which stores the outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nbformat

from helpers import wait_until

CELL_TIMEOUT = 240


def run_all(path: Path, env: dict[str, str], *, keep_outputs: bool = False) -> list[list[dict[str, Any]]]:
    """Run every code cell of ``path``; return each cell's output messages. With
    ``keep_outputs`` the notebook is written back with the outputs of this run."""
    from jupyter_client.manager import KernelManager

    nb = nbformat.read(path, as_version=4)
    km = KernelManager(kernel_name="python3")
    km.start_kernel(cwd=str(path.parent), env=env)
    kc = km.client()
    kc.start_channels()
    outputs: list[list[dict[str, Any]]] = []
    count = 0
    shown: dict[str, Any] = {}  # display id -> its output, which a later cell's message may update
    try:
        kc.wait_for_ready(timeout=60)
        for cell in nb.cells:
            if cell.cell_type != "code":
                continue
            messages: list[dict[str, Any]] = []
            count += 1
            if "restart-kernel" in cell.metadata.get("tags", []):
                kc.execute(cell.source)
                wait_until(lambda: not km.is_alive(), timeout=30, what="the cell to kill its kernel")
                km.restart_kernel(now=True)
                kc.wait_for_ready(timeout=60)
                outputs.append(messages)
                _store(cell, messages, count, keep_outputs, shown)
                continue
            try:
                reply = kc.execute_interactive(cell.source, timeout=CELL_TIMEOUT, output_hook=messages.append)
            except TimeoutError:  # name the cell that hung and what it had shown
                raise AssertionError(f"{path.name}: this cell did not finish within {CELL_TIMEOUT} s:\n"
                                     f"{cell.source}\nits output so far: {text_of(messages)!r}") from None
            errors = [m["content"] for m in messages if m["msg_type"] == "error"]
            assert reply["content"]["status"] == "ok" and not errors, (
                f"{path.name}, cell:\n{cell.source}\n\n" + "\n".join("\n".join(e["traceback"]) for e in errors))
            outputs.append(messages)
            _store(cell, messages, count, keep_outputs, shown)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    if keep_outputs:
        nbformat.write(nb, path)
    return outputs


def _store(cell: Any, messages: list[dict[str, Any]], count: int, keep: bool, shown: dict[str, Any]) -> None:
    if not keep:
        return
    cell.outputs = []
    cell.execution_count = count
    for m in messages:
        display_id = m["content"].get("transient", {}).get("display_id")
        if m["msg_type"] == "update_display_data":  # a panel's record replacing it, sent from any later cell
            if display_id in shown:
                shown[display_id]["data"] = m["content"]["data"]
                shown[display_id]["metadata"] = m["content"].get("metadata", {})
            continue
        if m["msg_type"] == "clear_output":
            cell.outputs = []
            continue
        if m["msg_type"] in ("stream", "display_data", "execute_result", "error"):
            out = nbformat.v4.output_from_msg(m)
            if display_id:
                shown[display_id] = out
            cell.outputs.append(out)


def text_of(messages: list[dict[str, Any]]) -> str:
    """What a person reads in a cell's output: streams and the plain text of results."""
    parts = []
    for m in messages:
        if m["msg_type"] == "stream":
            parts.append(m["content"]["text"])
        elif m["msg_type"] in ("execute_result", "display_data", "update_display_data"):
            parts.append(m["content"]["data"].get("text/plain", ""))
    return "".join(parts)
