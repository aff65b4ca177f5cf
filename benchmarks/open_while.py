"""Reading one column of a large Parquet file that is still downloading (``bg.open``).

nginx (started here on a free port) serves a Parquet file generated deterministically
(``--size-mib``, default 1 GiB: 64 float64 columns of seeded random numbers) from
``/capped/``, where every connection is limited to 25 MB/s, as object stores do. Each
way below reads the file's footer and one column with pyarrow and checks the column's
sum; the clock runs from before the first request to the column in hand. Ways, run in
interleaved rounds (A B C D A B C D ...), medians and ranges reported:

- curl, then read: the whole file with curl (one connection), then the column from disk;
- bgdl fetch, then read: the whole file with ``bgdl fetch`` (split over connections
  through the transfer service), then the column from disk;
- fsspec HTTP: the column read remotely with range requests (``fsspec``'s HTTP file
  system), nothing kept;
- bg.open: the column read through ``bg.open`` while the transfer service downloads the
  whole file: the reader's bytes are fetched first, and the file is complete later.

For ``bg.open`` the time until the whole file is on disk is also given, since it goes
on after the column is read. The transfer service of each bgdl run is a fresh one,
started before the clock and stopped after.

Run:   python benchmarks/open_while.py [--size-mib 1024] [--rounds 3]
Needs: nginx, curl, pyarrow, fsspec (Debian: nginx-light curl; pip install pyarrow fsspec).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import MIB, _compile_bgdl, serving  # the nginx both benchmarks use

COLUMN = "c17"
ROWS_PER_GROUP = 1 << 18
RUN_TIMEOUT = 300

READ = """
import json, sys, time
import pyarrow.parquet as pq
way, url, out, column = sys.argv[1:5]
start = time.perf_counter()
if way == "curl":
    import subprocess
    subprocess.run(["curl", "-sSf", "-o", out + "/data.parquet", url], check=True)
    source = out + "/data.parquet"
elif way == "fetch":
    import subprocess
    subprocess.run(["bgdl", "fetch", url, "-o", out, "-q", "--id", "bench-open"], check=True)
    source = out + "/data.parquet"
elif way == "fsspec":
    import fsspec
    source = fsspec.filesystem("http").open(url, "rb", block_size=4 << 20)
else:
    import io
    import bgdl_nb as bg
    raw = bg.open(url, out, "bench-open", timeout=120)
    source = io.BufferedReader(raw, 4 << 20)
table = pq.ParquetFile(source).read(columns=[column])
read = time.perf_counter() - start
total = float(table.column(0).to_numpy().sum())
whole = None
if way == "open":
    raw.close()
    task = bg.fetch(url, out, identifier="bench-open", progress=False)
    whole = time.perf_counter() - start
print(json.dumps({"read": read, "sum": total, "whole": whole}))
"""


def _write_parquet(path: Path, size: int) -> dict[str, float]:
    """A Parquet file of about ``size`` bytes; returns each column's sum."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = 64
    rows = max(ROWS_PER_GROUP, size // (8 * columns))
    rng = np.random.default_rng(20261207)
    sums: dict[str, float] = {}
    schema = pa.schema([(f"c{i}", pa.float64()) for i in range(columns)])
    with pq.ParquetWriter(path, schema, compression="none") as writer:
        for first in range(0, rows, ROWS_PER_GROUP):
            n = min(ROWS_PER_GROUP, rows - first)
            data = {f"c{i}": rng.standard_normal(n) for i in range(columns)}
            for name, values in data.items():
                sums[name] = sums.get(name, 0.0) + float(values.sum())
            writer.write_table(pa.table(data, schema=schema))
    return sums


def _run(way: str, url: str, base: Path, round_: int) -> dict[str, float]:
    out = base / "out" / f"{way}{round_}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    state = base / "state" / f"{way}{round_}"
    env = {**os.environ, "BGDL_STATE_DIR": str(state), "BGDL_IN_PROCESS": "0"}
    bgdl = way in ("fetch", "open")
    if bgdl:
        subprocess.run(["bgdl", "service", "start"], env=env, check=True, stdout=subprocess.DEVNULL)
    os.sync()
    try:
        done = subprocess.run([sys.executable, "-c", READ, way, url, str(out), COLUMN], env=env,
                              capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False)
    finally:
        if bgdl:
            subprocess.run(["bgdl", "service", "stop"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(out, ignore_errors=True)
    if done.returncode != 0:
        raise SystemExit(f"{way} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bgdl-open-"))
    (base / "www").mkdir()
    sums = _write_parquet(base / "www" / "data.parquet", args.size_mib * MIB)
    size = (base / "www" / "data.parquet").stat().st_size
    ways = {"curl": "curl, then read", "fetch": "bgdl fetch, then read", "fsspec": "fsspec HTTP range reads",
            "open": "bg.open while it downloads"}
    runs: dict[str, list[dict[str, float]]] = {w: [] for w in ways}
    _compile_bgdl()
    with serving(base) as url:
        data = f"{url}/capped/data.parquet"
        print(f"# {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, nginx on loopback at 25 MB/s per "
              f"connection, {size / MIB:,.0f} MiB Parquet, column {COLUMN} of 64, {args.rounds} rounds interleaved",
              flush=True)
        for r in range(args.rounds):
            for way, name in ways.items():
                got = _run(way, data, base, r)
                if abs(got["sum"] - sums[COLUMN]) > 1e-6 * max(1.0, abs(sums[COLUMN])):
                    raise SystemExit(f"{name}: the column's sum is {got['sum']}, not {sums[COLUMN]}")
                runs[way].append(got)
                whole = f", whole file {got['whole']:.2f} s" if got.get("whole") else ""
                print(f"  round {r + 1} {name:28} column in {got['read']:7.2f} s{whole}", flush=True)
    print()
    print("| way | column in hand (median, range) | whole file on disk |")
    print("|---|---|---|")
    for way, name in ways.items():
        reads = [g["read"] for g in runs[way]]
        wholes = [g["whole"] for g in runs[way] if g.get("whole")]
        whole = (f"{statistics.median(wholes):.2f} s" if wholes
                 else "—" if way == "fsspec" else f"{statistics.median(reads):.2f} s")
        print(f"| {name} | {statistics.median(reads):.2f} s ({min(reads):.2f}–{max(reads):.2f}) | {whole} |")


if __name__ == "__main__":
    main()
