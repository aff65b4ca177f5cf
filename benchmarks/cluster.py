"""A 200-file job on a Dask LocalCluster: one worker against two, and a worker killed mid-job.

Two jobs, each run on a cluster of one worker process and of two (threads_per_worker=1),
interleaved round by round (1, 2, 1, 2, ...), each round into a fresh folder, from the
demo origin in this process:

* ``small``: 200 files of 100 KiB at full speed (the per-file cost on each worker is what
  a second worker shares);
* ``capped``: 200 files of 1 MiB, each origin connection capped at 2 MB/s, with a per-host
  limit of 12 connections for the whole cluster (6 per worker with two) and the default 4
  tasks at once per worker: here a second worker doubles the tasks under way.

Then ``kill``: 190 files of 48 KiB and 10 of 3 MiB (2 MB/s per connection) on two workers;
once a shard has a large file more than a journaled MiB along, its worker is killed with
SIGKILL. The table gives the time, whether every file is byte-identical, how many files
finished before the kill were fetched again (must be 0), and the bytes the origin served
beyond the job's size (what the kill cost).

Run:   python benchmarks/cluster.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import distributed

import bgdl_nb as bg
from bgdl_nb._manifest import sha256_file
from bgdl_nb.demo.origin import Origin

KIB = 1024
MIB = 1024 * KIB


def _cluster(workers: int) -> tuple[distributed.LocalCluster, distributed.Client]:
    local = distributed.LocalCluster(n_workers=workers, processes=True, threads_per_worker=1,
                                     dashboard_address=None, worker_dashboard_address=None, silence_logs=50)
    return local, distributed.Client(local)


def _job(origin: Origin, files: list[tuple[str, int]], rate: int | None, work: Path, client: distributed.Client,
         tag: str, per_host: int = 6) -> tuple[float, bool]:
    switches = {"rate": rate} if rate else {}
    urls = [origin.url(name, size, **switches) for name, size in files]
    dest = work / tag
    config = bg.Configuration.background(tag, http_maximum_connections_per_host=per_host)
    started = time.perf_counter()
    paths = bg.fetch(urls, dest, identifier=tag, cluster=client, configuration=config, progress=False)
    took = time.perf_counter() - started
    same = all(sha256_file(p) == origin.sha256(name, size) for p, (name, size) in zip(paths, files))
    shutil.rmtree(dest)
    return took, same


def _kill_round(origin: Origin, work: Path, client: distributed.Client, tag: str) -> dict[str, object]:
    files = [(f"{tag}-s{i}.bin", 48 * KIB + i) for i in range(190)] + [(f"{tag}-b{i}.bin", 3 * MIB + i)
                                                                         for i in range(10)]
    urls = [origin.url(name, size, rate=2_000_000) for name, size in files]
    dest = work / tag
    config = bg.Configuration.background(tag, connections_per_file=1)
    started = time.perf_counter()
    result: dict[str, object] = {}

    def run() -> None:
        try:
            result["paths"] = bg.fetch(urls, dest, identifier=tag, cluster=client, configuration=config,
                                       progress=False)
        except Exception as exc:
            result["error"] = exc

    runner = threading.Thread(target=run)
    runner.start()
    deadline = time.monotonic() + 120
    victim = None
    pause = threading.Event()
    while time.monotonic() < deadline and runner.is_alive():
        job = bg._cluster._JOBS.get(tag)
        if job is not None:
            views = [v for v in job.shards.values() if any(a[1] > 1.2 * MIB for a in v.active)]
            if views and job.totals()["finished"] >= 10:
                victim = views[0]
                break
        pause.wait(0.05)
    if victim is None:
        runner.join()
        return {"error": "no shard was part way when expected"}
    finished_before = {p.name for p in dest.iterdir() if p.is_file() and not p.name.startswith(".")}
    os.kill(client.run(os.getpid)[victim.worker], signal.SIGKILL)
    runner.join(timeout=300)
    took = time.perf_counter() - started
    if "error" in result:
        return {"error": repr(result["error"])}
    paths = result["paths"]
    assert isinstance(paths, list)
    same = all(sha256_file(p) == origin.sha256(name, size) for p, (name, size) in zip(paths, files))
    again = sum(len(origin.requests_for(name)) > 1 for name in finished_before)
    extra = sum(origin.bytes_sent(name) for name, _ in files) - sum(size for _, size in files)
    shutil.rmtree(dest)
    return {"seconds": took, "identical": same, "finished_before": len(finished_before), "fetched_again": again,
            "extra_bytes": extra}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bgdl-cluster-"))
    os.environ["BGDL_STATE_DIR"] = str(work / "state")
    small = [(f"small-{i:03d}.bin", 100 * KIB + i) for i in range(200)]
    capped = [(f"capped-{i:03d}.bin", MIB + i) for i in range(200)]
    times: dict[tuple[str, int], list[float]] = {}
    identical = True
    with Origin() as origin:
        clusters = {n: _cluster(n) for n in (1, 2)}
        try:
            for r in range(args.rounds):
                for n in (1, 2):
                    for name, files, rate, per_host in (("small", small, None, 6), ("capped", capped, 2_000_000, 12)):
                        took, same = _job(origin, files, rate, work, clusters[n][1], f"{name}-{n}w-r{r}", per_host)
                        times.setdefault((name, n), []).append(took)
                        identical &= same
                        print(f"round {r + 1}: {name} on {n} worker(s): {took:.2f} s", file=sys.stderr)
            kills = [_kill_round(origin, work, clusters[2][1], f"kill-r{r}") for r in range(args.rounds)]
        finally:
            for local, client in clusters.values():
                client.close()
                local.close()
    shutil.rmtree(work, ignore_errors=True)
    print(f"\n{args.rounds} rounds, medians (range), {time.strftime('%Y-%m-%d')}, LocalCluster on 2 cores\n")
    print("| job | one worker | two workers | files byte-identical |")
    print("|---|---|---|---|")
    labels = (("small", "200 × 100 KiB, full speed"),
              ("capped", "200 × 1 MiB, 2 MB/s per connection (4 tasks at once per worker, 12 per host in all)"))
    for name, label in labels:
        cells = []
        for n in (1, 2):
            values = times[(name, n)]
            count = len(small if name == "small" else capped)
            cells.append(f"{statistics.median(values):.2f} s ({min(values):.2f}–{max(values):.2f}), "
                         f"{count / statistics.median(values):.0f} files/s")
        print(f"| {label} | {cells[0]} | {cells[1]} | {'all' if identical else 'NOT ALL'} |")
    print("\n| worker killed mid-job (two workers) | time | byte-identical | finished before the kill, "
          "fetched again | bytes served beyond the job's size |")
    print("|---|---|---|---|---|")
    for r, k in enumerate(kills, 1):
        if "error" in k:
            print(f"| round {r} | error: {k['error']} | | | |")
            continue
        print(f"| round {r} | {k['seconds']:.2f} s | {k['identical']} | {k['fetched_again']} of "
              f"{k['finished_before']} | {k['extra_bytes']:,} |")
    return 0 if identical and all(k.get("identical") and not k.get("fetched_again") for k in kills) else 1


if __name__ == "__main__":
    sys.exit(main())
