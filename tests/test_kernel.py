"""A real Jupyter kernel starts a download, is restarted midway, and the new kernel
reattaches by identifier and completes it from the partial bytes."""

from __future__ import annotations

import contextlib
import os
import textwrap

import pytest

import bgdl_nb as bg
from bgdl_nb._engine import CHECKPOINT_BYTES
from bgdl_nb._journal import journaled_bytes

from helpers import run_in_kernel, sha256_of, wait_until

jupyter_client = pytest.importorskip("jupyter_client")
pytestmark = pytest.mark.kernel

MB = 1024 * 1024


def _run(kc, code: str, timeout: float = 60) -> str:
    return run_in_kernel(kc, textwrap.dedent(code), timeout)


@contextlib.contextmanager
def _kernel(folder, state_dir):
    """A real kernel working in ``folder`` with the test's state directory, bgdl_nb imported."""
    from jupyter_client.manager import KernelManager

    km = KernelManager(kernel_name="python3")
    km.start_kernel(cwd=str(folder), env={**os.environ, "BGDL_STATE_DIR": str(state_dir)})
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        _run(kc, "import bgdl_nb as bg")
        yield km, kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_kernel_restart_midway_then_reattach(origin, tmp_path, state_dir):
    from jupyter_client.manager import KernelManager

    size = 16 * MB
    url = origin.url("kernel.bin", size, rate=4 * MB)
    dest = tmp_path / "kernel.bin"
    km = KernelManager(kernel_name="python3")
    km.start_kernel(env={**os.environ, "BGDL_STATE_DIR": str(state_dir)})
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        _run(kc, f"""
            import bgdl_nb as bg
            session = bg.Session(bg.Configuration.background("kernel-demo", connections_per_file=1))
            task = session.download_task({url!r}, {str(dest)!r}).resume()
            print(task.task_identifier)
        """)
        journal = bg.Configuration.background("kernel-demo").journal_path()
        wait_until(lambda: journaled_bytes(journal, "kernel-demo") >= 4 * MB, timeout=60,
                   what="4 MiB journaled in the first kernel")
        km.restart_kernel(now=True)  # kills the kernel process mid-download
        kc.wait_for_ready(timeout=60)
        before = journaled_bytes(journal, "kernel-demo")
        assert before < size
        out = _run(kc, """
            import bgdl_nb as bg
            session = bg.Session(bg.Configuration.background("kernel-demo", connections_per_file=1))
            [task] = session.all_tasks()
            print(task.state.value, task.count_of_bytes_received)
            print(task.wait(120))
            print([e.event for e in session.event_log()].count("reattached"))
        """, timeout=150)
        state, received, path, reattached = out.split()[:4]
        assert state == "running" and int(received) >= before
        assert path == str(dest) and reattached == "1"
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    assert sha256_of(dest) == origin.sha256("kernel.bin", size)
    assert origin.bytes_sent("kernel.bin") <= size + CHECKPOINT_BYTES + 512 * 1024


def test_interrupting_a_blocking_fetch_leaves_a_live_panel_and_running_downloads(origin, tmp_path, state_dir):
    """Ctrl-C (Kernel ▸ Interrupt) on a ``fetch()`` cell gives the kernel back; the
    download goes on in the background and its panel stays live and says so."""

    size = 12 * MB
    url = origin.url("interrupted.bin", size, rate=3 * MB)
    with _kernel(tmp_path, state_dir) as (km, kc):
        msg_id = kc.execute(f"paths = bg.fetch([{url!r}], dest='data', identifier='interrupt-me')")
        journal = bg.Configuration.background("interrupt-me").journal_path()
        wait_until(lambda: journal.exists() and journaled_bytes(journal, "interrupt-me") >= MB, timeout=60,
                   what="the download under way")
        km.interrupt_kernel()
        reply = kc.get_shell_msg(timeout=30)
        assert reply["parent_header"]["msg_id"] == msg_id
        assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "KeyboardInterrupt"
        shown_tb = reply["content"]["traceback"]  # what the notebook shows under the cell: one line
        assert len(shown_tb) == 1 and "the downloads go on in the background" in shown_tb[0], shown_tb
        shown = """
            from ipywidgets.widgets import widget as _widget
            print(" | ".join(v.value for v in list(_widget._instances.values())
                             if type(v).__name__ == "HTML" and v.value))
        """
        live = _run(kc, shown)  # at once: the cell gave the kernel back while the download runs
        assert "the cell was interrupted: the downloads go on in the background" in live, live
        wait_until(lambda: (tmp_path / "data" / "interrupted.bin").exists(), timeout=60,
                   what="the download to finish in the background")
        wait_until(lambda: "1 done" in _run(kc, shown), timeout=10, what="the panel to follow the task to its end")
    assert sha256_of(tmp_path / "data" / "interrupted.bin") == origin.sha256("interrupted.bin", size)


@pytest.mark.parametrize("call, message", [
    ("bg.fetch(['htp://127.0.0.1/x'], dest='data')", "UnsupportedURL: "),
    ("bg.fetch(['http://127.0.0.1:9/x'], dest='/proc/no-such-place/data')", "InvalidDestination: "),
])
def test_bad_input_in_a_notebook_is_a_short_message(call, message, tmp_path, state_dir):
    """Bad input shows as its message under the cell, as FetchError does, not as a
    traceback through bgdl_nb's argument checks."""
    with _kernel(tmp_path, state_dir) as (_km, kc):
        msg_id = kc.execute(call)
        reply = kc.get_shell_msg(timeout=60)
        assert reply["parent_header"]["msg_id"] == msg_id and reply["content"]["status"] == "error"
        shown = reply["content"]["traceback"]
        assert len(shown) == 1 and shown[0].startswith(message), shown
