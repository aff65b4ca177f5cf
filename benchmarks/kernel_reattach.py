"""Time from a kernel's restart to its reattached panel showing live progress.

A real Jupyter kernel starts a background download (running in the transfer service),
is restarted, and the new kernel creates the session and a progress panel; the clock
stops when the panel's byte count moves. Kernel start-up is included: it is part of
what the user waits for. Run: python benchmarks/kernel_reattach.py
"""

from __future__ import annotations

import os
import tempfile
import textwrap
import time


def main(rounds: int = 3) -> None:
    os.environ["BGDL_STATE_DIR"] = tempfile.mkdtemp(prefix="bgdl-bench-")
    from jupyter_client.manager import KernelManager

    from bgdl_nb._hosts.service.client import stop_service
    from bgdl_nb.demo import Origin

    work = tempfile.mkdtemp()
    with Origin() as origin:
        for i in range(rounds):
            km = KernelManager(kernel_name="python3")
            km.start_kernel(env=os.environ.copy())
            kc = km.client()
            kc.start_channels()
            kc.wait_for_ready(timeout=60)
            url = origin.url(f"big{i}", 400_000_000, rate=20_000_000)
            kc.execute_interactive(textwrap.dedent(f"""
                import bgdl_nb as bg
                s = bg.Session(bg.Configuration.background("bench{i}"))
                t = s.download_task({url!r}, {work!r} + "/big{i}").resume()
            """), timeout=60)
            t0 = time.time()
            km.restart_kernel(now=True)
            kc.wait_for_ready(timeout=60)
            ready = time.time()
            out: list[str] = []
            kc.execute_interactive(textwrap.dedent(f"""
                import time
                cell_start = time.time()
                import threading, bgdl_nb as bg
                from bgdl_nb.notebook.widgets import SessionPanel
                s = bg.Session(bg.Configuration.background("bench{i}"))
                panel = SessionPanel(s)  # shows the journaled totals at once
                first = panel.overall.value
                for _ in range(1000):  # at most 10 s
                    panel.refresh(force=True)
                    if panel.overall.value != first:  # the panel's bar moved: progress is live
                        break
                    threading.Event().wait(0.01)
                print(time.time(), cell_start)
                s.invalidate_and_cancel()
            """), timeout=60, output_hook=lambda m: out.append(m["content"].get("text", ""))
                if m["msg_type"] == "stream" else None)
            t1, cell = (float(x) for x in "".join(out).split()[:2])
            print(f"round {i + 1}: restart -> live progress in the new kernel's panel: {t1 - t0:.2f} s "
                  f"(new kernel ready {ready - t0:.2f} s, cell sent {cell - t0:.2f} s, "
                  f"import + attach + first moving count {t1 - cell:.2f} s)")
            kc.stop_channels()
            km.shutdown_kernel(now=True)
    from pathlib import Path
    stop_service(Path(os.environ["BGDL_STATE_DIR"]))


if __name__ == "__main__":
    main()
