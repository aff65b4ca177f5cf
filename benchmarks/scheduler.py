"""10,000 queued tasks: the scheduling policy and the engine stay free of quadratic work.

Run: python benchmarks/scheduler.py  (about a minute on 2 cores)

1. The pure policy: add N tasks, start them as slots free, complete every one; cancel N
   waiting tasks. Times for N = 1,000 and 10,000 (linear work shows a ratio near 10).
2. The engine: create N suspended tasks, resume them all, cancel them all (no network).
3. Real transfers: N tasks of 1 KiB from the demo origin, 16 at a time.
4. Reattaching a background session with N journaled tasks.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from bgdl_nb._scheduler import Item, Scheduler


def policy(n: int) -> dict[str, float]:
    s = Scheduler(max_concurrent_tasks=16, max_per_host=6)
    t0 = time.perf_counter()
    for tid in range(n):
        s.add(Item(tid, host=f"h{tid % 8}", priority=(tid * 7919 % 100) / 100))
    s.poll()
    t1 = time.perf_counter()
    done = 0
    while s.running:
        for tid in list(s.running):
            s.remove(tid)
            done += 1
        s.poll()
    t2 = time.perf_counter()
    assert done == n
    for tid in range(n):
        s.add(Item(tid))
    s.poll()
    t3 = time.perf_counter()
    for tid in range(n):
        s.remove(tid)
    s.poll()
    t4 = time.perf_counter()
    return {"add+first poll": t1 - t0, "start+complete all": t2 - t1, "cancel all": t4 - t3}


def engine(n: int, work: Path) -> dict[str, float]:
    import bgdl_nb as bg
    s = bg.Session(bg.Configuration.default(max_concurrent_tasks=16))
    t0 = time.perf_counter()
    tasks = [s.download_task(f"http://127.0.0.1:9/f{i}", work / f"e{i}") for i in range(n)]
    t1 = time.perf_counter()
    s.pause()  # nothing may start: this measures queueing, not connection errors
    for t in tasks:
        t.resume()
    t2 = time.perf_counter()
    for t in tasks:
        t.cancel()
    for t in tasks:
        try:
            t.wait(60)
        except bg.BgdlError:
            pass
    t3 = time.perf_counter()
    s.close()
    return {"create": t1 - t0, "resume": t2 - t1, "cancel": t3 - t2}


def transfers(n: int, work: Path) -> dict[str, float]:
    import bgdl_nb as bg
    from bgdl_nb.demo import Origin
    with Origin() as origin:
        s = bg.Session(bg.Configuration.default(max_concurrent_tasks=16, http_maximum_connections_per_host=16))
        t0 = time.perf_counter()
        tasks = [s.download_task(origin.url(f"t{i}", 1024), work / f"t{i}").resume() for i in range(n)]
        s.wait(tasks, timeout=600)
        elapsed = time.perf_counter() - t0
        s.close()
    return {"total": elapsed, "files/s": n / elapsed}


def reattach(n: int) -> dict[str, float]:
    import bgdl_nb as bg
    config = bg.Configuration.background("bench-reattach")
    s = bg.Session(config)
    work = Path(tempfile.mkdtemp())
    for i in range(n):
        s.download_task(f"http://127.0.0.1:9/r{i}", work / f"r{i}")
    s.close()
    t0 = time.perf_counter()
    again = bg.Session(config)
    elapsed = time.perf_counter() - t0
    assert len(again.all_tasks()) == n
    again.close()
    return {"reattach": elapsed}


def main() -> None:
    os.environ["BGDL_STATE_DIR"] = tempfile.mkdtemp(prefix="bgdl-bench-")
    for n in (1_000, 10_000):
        print(f"policy  n={n:>6}: " + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in policy(n).items()))
    for n in (1_000, 10_000):
        work = Path(tempfile.mkdtemp())
        print(f"engine  n={n:>6}: " + ", ".join(f"{k} {v:.2f} s" for k, v in engine(n, work).items()))
    for n in (2_000, 10_000):
        work = Path(tempfile.mkdtemp())
        r = transfers(n, work)
        print(f"1 KiB transfers n={n:>6}: {r['total']:.1f} s, {r['files/s']:.0f} files/s")
    print(f"reattach n=10000: {reattach(10_000)['reattach'] * 1000:.0f} ms")


if __name__ == "__main__":
    main()
