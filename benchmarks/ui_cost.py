"""What the progress panel and the event log cost: the same fetch with the panel open and
closed, interleaved in one run (A B A B ...), medians of the rounds.

The panel is the real ipywidgets ``TaskPanel`` refreshed four times a second by a thread,
as in a notebook (outside a kernel no comm message leaves the process, so this counts
the work on the kernel side: reading the tasks and updating the traits). The event log
is on in both cases (it is the journal), so "closed" is the cost of the engine alone.

Run: python benchmarks/ui_cost.py [--files 2000] [--size-mib 512] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import speed  # the nginx and file helpers of the speed benchmark

MIB = 1024 * 1024


def _fetch(urls: list[str], out: Path, panel: bool) -> float:
    import bgdl_nb as bg
    from bgdl_nb.notebook.widgets import TaskPanel

    config = bg.Configuration.background(f"ui-{out.name}", use_service=False, max_concurrent_tasks=16,
                                         http_maximum_connections_per_host=16)
    session = bg.Session(config)
    started = time.perf_counter()
    tasks = session.download_tasks([{"request": u, "destination": out / u.rsplit("/", 1)[1]} for u in urls],
                                   resume=True)
    stop = threading.Event()
    view = TaskPanel(tasks) if panel else None

    def refresh() -> None:
        while not stop.wait(0.25):
            assert view is not None
            view.refresh()

    ticker = threading.Thread(target=refresh) if panel else None
    if ticker is not None:
        ticker.start()
    session.wait(tasks, timeout=600)
    wall = time.perf_counter() - started
    stop.set()
    if ticker is not None:
        ticker.join()
    session.close()
    return wall


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bgdl-ui-"))
    os.environ["BGDL_STATE_DIR"] = str(base / "state")
    www = base / "www"
    (www / "many").mkdir(parents=True)
    speed._write_file(www / "big.bin", args.size_mib * MIB, "big")
    for i in range(args.files):
        speed._write_file(www / "many" / f"f{i:05d}.bin", 100 * 1024, f"small{i}")
    with speed.serving(base) as url:
        _compare(url, base, args)


def _compare(url: str, base: Path, args: argparse.Namespace) -> None:
    cases = {"one file": [f"{url}/big.bin"], "many files": [f"{url}/many/f{i:05d}.bin" for i in range(args.files)]}
    walls: dict[tuple[str, bool], list[float]] = {}
    for r in range(args.rounds):
        for case, urls in cases.items():
            for panel in (False, True):
                out = base / "out" / f"{case[0]}{int(panel)}{r}"
                out.mkdir(parents=True)
                wall = _fetch(urls, out, panel)
                walls.setdefault((case, panel), []).append(wall)
                print(f"round {r + 1} {case:10} panel {'open  ' if panel else 'closed'} {wall:6.2f} s", flush=True)
                shutil.rmtree(out)
    print("\n| case | panel closed | panel open | cost |\n|---|---|---|---|")
    for case in cases:
        closed, opened = statistics.median(walls[(case, False)]), statistics.median(walls[(case, True)])
        print(f"| {case} | {closed:.2f} s | {opened:.2f} s | {100 * (opened - closed) / closed:+.1f} % |")


if __name__ == "__main__":
    main()
