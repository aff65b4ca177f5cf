"""Many tasks in one session, through the transfer service: the cost of a task itself.

One run, interleaved rounds, medians, against ``wget -i`` over the same nginx:

* ``wget -i`` fetching 2,000 files of 100 KiB (the yardstick the targets are quoted in);
* creating 10,000 tasks with ``bgdl fetch -i LIST --detach`` (a service already running,
  started before the clock);
* reattaching to those 10,000 journaled tasks after the service was killed with SIGKILL:
  ``Session(Configuration.background(id))`` and ``all_tasks()`` in a process of its own,
  a new service started on the way (timed inside that process, without its interpreter's start);
* ``session.events`` of that session as a DataFrame, and of a journal of 100,000 rows (through the
  service).

Run:   python benchmarks/many_tasks.py [--rounds 3] [--tasks 10000]
Needs: nginx, wget (Debian: nginx-light wget).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import _write_file, serving  # the same nginx and data as the speed table

REATTACH = """
import json, sys, time
t0 = time.perf_counter()
import bgdl_nb as bg
session = bg.Session(bg.Configuration.background(sys.argv[1]))
tasks = session.all_tasks()
t1 = time.perf_counter()
frame = session.events
t2 = time.perf_counter()
print(json.dumps({"reattach": t1 - t0, "tasks": len(tasks), "events": t2 - t1, "rows": len(frame)}))
session.close()
"""

EVENTS_100K = """
import json, sys, time
from bgdl_nb._events import Event
from bgdl_nb._journal import SqliteStore
import bgdl_nb as bg
from bgdl_nb._private import private_tree
config = bg.Configuration.background("rows100k")
private_tree(config.resolved_state_dir(), "sessions")  # the folders a session makes, as it makes them
store = SqliteStore(config.journal_path(), "rows100k")  # 100,000 journaled rows, written directly
store.group_commit = True
for i in range(100_000):
    store.append_event(Event(0, 1.7e9 + i, "rows100k", i % 10000, "progress", bytes_written=1024,
                             total_bytes_written=i, total_bytes_expected=10**9))
store.flush()
store.close()
import pandas  # imported already in a notebook that reads its events; its import is not timed
with bg.Session(config) as session:  # through the transfer service
    t0 = time.perf_counter()
    frame = session.events
    print(json.dumps({"seconds": time.perf_counter() - t0, "rows": len(frame)}))
"""


def _timed(args: list[str], **kw: object) -> float:
    t0 = time.perf_counter()
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600, **kw)
    return time.perf_counter() - t0


def _round(base: Path, url: str, files: int, tasks: int, r: int) -> dict[str, float]:
    out: dict[str, float] = {}
    listing = base / "many.txt"
    wget_out = base / f"wget{r}"
    wget_out.mkdir()
    out["wget -i, 2,000 × 100 KiB"] = _timed(["wget", "-q", "-i", str(listing), "-P", str(wget_out)])
    shutil.rmtree(wget_out)

    state = base / f"state{r}"
    env = {**os.environ, "BGDL_STATE_DIR": str(state)}
    subprocess.run(["bgdl", "service", "start"], check=True, env=env, stdout=subprocess.DEVNULL)
    dest = base / f"out{r}"
    out[f"create {tasks:,} tasks (--detach)"] = _timed(
        ["bgdl", "fetch", "-i", str(base / "tiny.txt"), "-o", str(dest), "--id", "many", "--detach", "--quiet"],
        env=env)
    status = json.loads(subprocess.run(["bgdl", "service", "status", "--json"], check=True, env=env,
                                       capture_output=True, text=True).stdout)
    os.kill(int(status["pid"]), signal.SIGKILL)
    got = json.loads(subprocess.run([sys.executable, "-c", REATTACH, "many"], check=True, env=env, cwd=base,
                                    capture_output=True, text=True, timeout=600).stdout)
    assert got["tasks"] == tasks, got
    out[f"reattach to {tasks:,} after SIGKILL"] = got["reattach"]
    out["session.events of those tasks"] = got["events"]
    out["(rows in that event log)"] = got["rows"]
    subprocess.run(["bgdl", "service", "stop"], env=env, stdout=subprocess.DEVNULL)
    shutil.rmtree(dest, ignore_errors=True)
    shutil.rmtree(state, ignore_errors=True)
    rows_state = base / f"rows{r}"
    frame = json.loads(subprocess.run([sys.executable, "-c", EVENTS_100K], check=True, capture_output=True, text=True,
                                      env={**os.environ, "BGDL_STATE_DIR": str(rows_state)}, cwd=base).stdout)
    assert frame["rows"] == 100_000, frame
    out["session.events, 100,000 rows"] = frame["seconds"]
    subprocess.run(["bgdl", "service", "stop"], env={**os.environ, "BGDL_STATE_DIR": str(rows_state)},
                   stdout=subprocess.DEVNULL)
    shutil.rmtree(rows_state, ignore_errors=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--tasks", type=int, default=10000)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bgdl-many-"))
    (base / "www" / "many").mkdir(parents=True)
    (base / "www" / "tiny").mkdir(parents=True)
    for i in range(args.files):
        _write_file(base / "www" / "many" / f"f{i:05d}.bin", 100 * 1024, f"small{i}")
    for i in range(args.tasks):
        _write_file(base / "www" / "tiny" / f"t{i:05d}.bin", 1024, f"tiny{i}")
    with serving(base) as url:
        (base / "many.txt").write_text("".join(f"{url}/many/f{i:05d}.bin\n" for i in range(args.files)))
        (base / "tiny.txt").write_text("".join(f"{url}/tiny/t{i:05d}.bin\n" for i in range(args.tasks)))
        runs: dict[str, list[float]] = {}
        print(f"# {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, nginx on loopback, {args.rounds} rounds",
              flush=True)
        for r in range(args.rounds):
            for name, seconds in _round(base, url, args.files, args.tasks, r).items():
                runs.setdefault(name, []).append(seconds)
                print(f"  round {r + 1} {name:40} {seconds:10.2f}", flush=True)
    wget = statistics.median(runs["wget -i, 2,000 × 100 KiB"])
    print("\n| work | median (s) | range (s) | vs wget -i / 4 |\n|---|---|---|---|")
    for name, values in runs.items():
        if name.startswith("("):  # a count, not a time
            print(f"| {name} | {statistics.median(values):,.0f} | | |")
            continue
        ratio = "" if name.startswith("wget") else f"{statistics.median(values) / (wget / 4):.2f}×"
        print(f"| {name} | {statistics.median(values):.2f} | {min(values):.2f}–{max(values):.2f} | {ratio} |")


if __name__ == "__main__":
    main()
