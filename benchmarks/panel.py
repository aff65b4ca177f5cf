"""What the progress panel costs: widget updates per second while downloads run, and a
refresh over 10,000 tasks. Widgets are real ipywidgets objects outside a kernel; every
trait change counted here is one comm message in a notebook.

Run: python benchmarks/panel.py
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path


def main() -> None:
    os.environ["BGDL_STATE_DIR"] = tempfile.mkdtemp(prefix="bgdl-bench-")
    import bgdl_nb as bg
    from bgdl_nb.demo import Origin
    from bgdl_nb.notebook.widgets import SessionPanel, TaskPanel

    work = Path(tempfile.mkdtemp())
    with Origin() as origin:
        s = bg.Session(bg.Configuration.default(max_concurrent_tasks=4))
        for i in range(8):
            s.download_task(origin.url(f"p{i}", 16_000_000, rate=8_000_000), work / f"p{i}").resume()
        panel = SessionPanel(s)
        start, sent0 = time.perf_counter(), panel.updates_sent
        threading.Event().wait(6)
        rate = (panel.updates_sent - sent0) / (time.perf_counter() - start)
        print(f"8 tasks (4 running): {rate:.1f} widget updates/s at a 4 Hz refresh")
        s.wait(timeout=120)
        panel.close()
        s.close()

    s = bg.Session()
    tasks = [s.download_task(f"http://127.0.0.1:9/f{i}", work / f"f{i}") for i in range(10_000)]
    t0 = time.perf_counter()
    panel = TaskPanel(tasks)
    built = time.perf_counter() - t0
    times = []
    for _ in range(20):
        t = time.perf_counter()
        panel.refresh(force=True)
        times.append(time.perf_counter() - t)
    times.sort()
    print(f"10,000 tasks: panel built in {built * 1000:.0f} ms, refresh median {times[10] * 1000:.1f} ms, "
          f"{len(panel.rows_box.children)} rows shown")
    s.invalidate_and_cancel()


if __name__ == "__main__":
    main()
