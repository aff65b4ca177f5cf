"""A pooch registry fetched two ways, side by side in one run: pooch's own ``Pooch.fetch``
of every file in turn (its default downloader, sequential, as pooch does), and
``bgdl_nb.pooch.prefetch`` (one background session through the transfer service, the
files in parallel). nginx on loopback serves the files; rounds are interleaved
(A B A B ...), each with a fresh cache folder (and a fresh state directory for bgdl_nb,
whose service is started before the clock), and the medians are reported.

Run:   pip install 'bgdl_nb[pooch]'; python benchmarks/pooch_registry.py [--files 200] [--kib 512] [--rounds 3]
Needs: nginx (Debian: nginx-light).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import _write_file, serving  # the same nginx as the speed table

RUN = """
import sys, time, pooch
mode, base, cache, listing = sys.argv[1:5]
registry = dict(line.split() for line in open(listing))
data = pooch.create(path=cache, base_url=base, registry=registry)
started = time.perf_counter()
if mode == "pooch":
    for name in registry:
        data.fetch(name)
else:
    import bgdl_nb.pooch
    bgdl_nb.pooch.prefetch(data, progress=False)
    for name in registry:  # what a notebook does next: every fetch finds its file
        data.fetch(name)
print(time.perf_counter() - started)
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--kib", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bgdl-pooch-"))
    (base / "www" / "reg").mkdir(parents=True)
    listing = base / "registry.txt"
    lines = []
    for i in range(args.files):
        name = f"r{i:04d}.bin"
        _write_file(base / "www" / "reg" / name, args.kib * 1024, f"reg{i}")
        lines.append(f"{name} {hashlib.sha256((base / 'www' / 'reg' / name).read_bytes()).hexdigest()}\n")
    listing.write_text("".join(lines))
    times: dict[str, list[float]] = {"pooch, sequential (its own downloader)": [],
                                     "bgdl_nb.pooch.prefetch (service)": []}
    with serving(base) as url:
        print(f"# {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, nginx on loopback, {args.files} files × "
              f"{args.kib} KiB, {args.rounds} rounds interleaved", flush=True)
        for r in range(args.rounds):
            for mode, name in (("pooch", "pooch, sequential (its own downloader)"),
                               ("bgdl", "bgdl_nb.pooch.prefetch (service)")):
                cache, state = base / f"cache-{mode}-{r}", base / f"state-{r}"
                env = {**os.environ, "BGDL_STATE_DIR": str(state)}
                if mode == "bgdl":
                    subprocess.run(["bgdl", "service", "start"], env=env, check=True, stdout=subprocess.DEVNULL)
                out = subprocess.run([sys.executable, "-c", RUN, mode, f"{url}/reg/", str(cache), str(listing)],
                                     env=env, capture_output=True, text=True, timeout=900)
                if out.returncode != 0:
                    raise SystemExit(out.stderr)
                seconds = float(out.stdout.strip().splitlines()[-1])
                times[name].append(seconds)
                print(f"  round {r + 1} {name:42} {seconds:7.2f} s", flush=True)
                if mode == "bgdl":
                    subprocess.run(["bgdl", "service", "stop"], env=env, stdout=subprocess.DEVNULL)
                shutil.rmtree(cache, ignore_errors=True)
                shutil.rmtree(state, ignore_errors=True)
    pooch_s = statistics.median(times["pooch, sequential (its own downloader)"])
    print("\n| way | median (s) | range (s) | files/s | vs pooch |\n|---|---|---|---|---|")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"| {name} | {med:.2f} | {min(values):.2f}–{max(values):.2f} | {args.files / med:,.0f} | "
              f"{pooch_s / med:.2f}× |")


if __name__ == "__main__":
    main()
