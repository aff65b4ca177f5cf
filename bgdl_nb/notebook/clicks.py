"""Panel buttons that work while a cell runs: their clicks served on a kernel subshell.

A click on a panel's pause, resume or cancel button is a comm message to the kernel.
ipykernel 7 runs the messages of a subshell on a thread of its own, so a subshell made
once per kernel serves the buttons' messages while the main thread runs a blocking
cell (``fetch()`` waiting for its files). Another kernel has no subshells: its clicks
are served between cells, and the panel says so.
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["serve_clicks"]

_click_lock = threading.Lock()
_click_channel: list[str | None] = []  # the subshell serving panel buttons, made once per kernel


def _button_subshell() -> str | None:
    """A kernel subshell that serves the panel's button clicks while the main thread is
    busy running a cell, or None when the kernel has no subshells (not ipykernel 7)."""
    with _click_lock:
        if _click_channel:
            return _click_channel[0]
        subshell: str | None = None
        try:
            from concurrent.futures import Future

            from IPython.core import getipython

            module: Any = getipython
            kernel = getattr(module.get_ipython(), "kernel", None)
            channel = getattr(kernel, "shell_channel_thread", None)
            if channel is not None and hasattr(channel.manager, "_create_subshell"):
                made: Future[str] = Future()

                def create() -> None:
                    try:
                        made.set_result(channel.manager._create_subshell())
                    except BaseException as exc:  # handed to the waiting thread
                        made.set_exception(exc)

                channel.io_loop.add_callback(create)
                subshell = made.result(timeout=5)
        except Exception:  # any other kernel: clicks are served between cells
            subshell = None
        _click_channel.append(subshell)
        return subshell


def serve_clicks(button: Any) -> bool:
    """Route ``button``'s messages from the front end to the click subshell; True when
    they will be served while a cell runs."""
    subshell = _button_subshell()
    comm = getattr(button, "comm", None)
    if subshell is None or comm is None:
        return False
    comm._reply_subshell_for = lambda _data, _default: subshell
    return True
