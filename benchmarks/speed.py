"""Speed side by side with curl, wget, aria2c, parfive and plain aiohttp, in one run, on loopback.

Every tool downloads the same files from the same nginx (started here on a free port,
serving files generated deterministically into a temporary directory), each at its best
settings, in interleaved rounds (A B C A B C ...: a noisy neighbour hurts every tool
alike), and the table reports the median and the range of the rounds. Scenarios:

(a) one big file;
(b) one big file from ``/capped/``, where nginx limits every connection to 25 MB/s
    (``limit_rate``), as CDNs and object stores do;
(c) 2,000 files of 100 KiB;
(d) 10,000 files of 1 KiB through the transfer service.

bgdl runs as ``bgdl fetch`` with its engine in the command's own process
(BGDL_IN_PROCESS=1) and through the transfer service (a fresh one per run, started
before the clock; its CPU time and peak memory are read from /proc and counted with the
command's). Wall time, CPU time (user + system of the tool's processes) and peak RSS
(``/usr/bin/time``) are reported. Dirty pages are written out (``sync``) before every
run, outside the clock, so no tool pays for the writeback of the one before it (bgdl
syncs its finished files before it renames them; the peers leave theirs to the kernel),
and bgdl_nb's bytecode is written first, as ``pip install`` does.

Run:   pip install parfive; python benchmarks/speed.py [--size-mib 1024] [--rounds 3]
Needs: nginx, curl, wget, aria2c, GNU time (Debian: nginx-light curl wget aria2 time).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

MIB = 1024 * 1024
HASH_ONLY = "sha256 in Python (hashlib, the file, no download)"
EVENT_LOGS = Path(tempfile.gettempdir()) / "bgdl-speed-events"  # each bgdl run's event log, kept
RUN_TIMEOUT = 120  # seconds; curl --parallel has been seen to stall with thousands of URLs here

AIOHTTP_ONE = """
import asyncio, sys, aiohttp
async def main(url, out):
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        with open(out, "wb") as f:
            async for chunk in r.content.iter_chunked(1 << 20):
                f.write(chunk)
asyncio.run(main(sys.argv[1], sys.argv[2]))
"""

AIOHTTP_MANY = """
import asyncio, os, sys, aiohttp
async def main(listing, out):
    urls = open(listing).read().split()
    sem = asyncio.Semaphore(16)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16)) as s:
        async def one(url):
            async with sem, s.get(url) as r:
                data = await r.read()
            with open(os.path.join(out, url.rsplit("/", 1)[1]), "wb") as f:
                f.write(data)
        await asyncio.gather(*(one(u) for u in urls))
asyncio.run(main(sys.argv[1], sys.argv[2]))
"""

PARFIVE = """
import sys
from parfive import Downloader, SessionConfig
splits = int(sys.argv[3])
d = Downloader(max_conn=16, max_splits=splits, progress=False, config=SessionConfig(chunksize=1024 * 1024))
for u in open(sys.argv[2]).read().split():
    d.enqueue_file(u, path=sys.argv[1])
r = d.download()
sys.exit(1 if r.errors else 0)
"""


def _nginx(root: Path, work: Path) -> tuple[subprocess.Popen[bytes], str, socket.socket]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    port = sock.getsockname()[1]
    (work / "logs").mkdir(parents=True, exist_ok=True)
    conf = work / "nginx.conf"
    user = "user root;" if os.geteuid() == 0 else ""
    conf.write_text(f"""{user}
worker_processes 2; daemon off; pid {work}/nginx.pid; error_log {work}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{ access_log off; sendfile on; tcp_nopush on; keepalive_requests 100000;
  client_body_temp_path {work}/b; proxy_temp_path {work}/p; fastcgi_temp_path {work}/f;
  uwsgi_temp_path {work}/u; scgi_temp_path {work}/s;
  server {{ listen 127.0.0.1:{port}; root {root};
    location /capped/ {{ alias {root}/; limit_rate 25m; }} }} }}
""")
    fd = sock.fileno()
    proc = subprocess.Popen([shutil.which("nginx") or "/usr/sbin/nginx", "-p", str(work), "-c", str(conf)],
                            pass_fds=[fd], env={**os.environ, "NGINX": f"{fd};"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, f"http://127.0.0.1:{port}", sock


@contextlib.contextmanager
def serving(base: Path) -> Iterator[str]:
    """nginx over ``base / "www"`` for the duration of the block; ``base`` is removed after."""
    nginx, url, sock = _nginx(base / "www", base / "nginx")
    try:
        yield url
    finally:
        nginx.terminate()
        nginx.wait()
        sock.close()
        shutil.rmtree(base, ignore_errors=True)


def _write_file(path: Path, size: int, seed: str) -> None:
    block = hashlib.shake_256(seed.encode()).digest(min(size, MIB))
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, len(block))
            f.write(block[:n])
            left -= n


def _proc_stat(pid: int) -> tuple[float, float]:
    """(CPU seconds, peak RSS in MB) of a running process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    peak = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1]) / 1024
    return cpu, peak


@dataclass
class Tool:
    name: str
    command: Callable[[Path], list[str]]
    service: bool = False   # runs through a fresh transfer service
    in_process: bool = False


@dataclass
class Scenario:
    name: str
    unit: str               # "MB/s" or "files/s"
    amount: float           # bytes, or files
    nbytes: int
    tools: list[Tool]
    runs: dict[str, list[tuple[float, float, float]]] = field(default_factory=dict)  # wall, cpu, rss


def _run(tool: Tool, out: Path, base: Path) -> tuple[float, float, float]:
    env = dict(os.environ)
    state = base / "state" / out.name
    shutil.rmtree(state, ignore_errors=True)
    env["BGDL_STATE_DIR"] = str(state)
    service_pid = None
    if tool.in_process:
        env["BGDL_IN_PROCESS"] = "1"
    if tool.service:
        env["BGDL_IN_PROCESS"] = "0"
        subprocess.run(["bgdl", "service", "start"], env=env, check=True, stdout=subprocess.DEVNULL)
        service_pid = int((state / "run" / "service.pid").read_text())
    os.sync()  # the previous tool's dirty pages are written now, not during (and at the cost of) this run
    before = _proc_stat(service_pid) if service_pid else (0.0, 0.0)
    stats = base / "time.txt"
    cmd = ["/usr/bin/time", "-o", str(stats), "-f", "%e %U %S %M", *tool.command(out)]
    start = time.perf_counter()
    # a session of its own, so a tool that hangs is stopped with everything it started
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    try:
        code: int | None = proc.wait(RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        code = None
    wall = time.perf_counter() - start
    after = _proc_stat(service_pid) if service_pid else (0.0, 0.0)
    if tool.in_process or tool.service:  # bgdl's own record of the run, for an outlier to be explained
        log = subprocess.run(["bgdl", "events", "--id", f"b-{out.name}"], env=env, capture_output=True, text=True)
        EVENT_LOGS.mkdir(exist_ok=True)
        (EVENT_LOGS / f"{out.name}-{time.strftime('%H%M%S')}-{wall:.0f}s.txt").write_text(log.stdout + log.stderr)
    if service_pid:
        subprocess.run(["bgdl", "service", "stop"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if code is None:
        return float("nan"), float("nan"), float("nan")  # reported as a hang, not as a speed
    if code != 0:
        raise subprocess.CalledProcessError(code, cmd)
    _, user, system, rss_kb = stats.read_text().split()[-4:]
    cpu = float(user) + float(system) + after[0] - before[0]
    return wall, cpu, max(int(rss_kb) / 1024, after[1])


def _bgdl(urls: list[str] | Path, *extra: str) -> Callable[[Path], list[str]]:
    def command(out: Path) -> list[str]:
        source = ["-i", str(urls)] if isinstance(urls, Path) else list(urls)
        return ["bgdl", "fetch", *source, "-o", str(out), "-q", "--id", f"b-{out.name}", *extra]
    return command


def scenarios(base: Path, url: str, size: int, files: int, tiny: int) -> list[Scenario]:
    py = sys.executable
    scripts = base / "scripts"
    scripts.mkdir(exist_ok=True)
    for name, text in (("one.py", AIOHTTP_ONE), ("many.py", AIOHTTP_MANY), ("pf.py", PARFIVE)):
        (scripts / name).write_text(text)
    big, capped = f"{url}/big.bin", f"{url}/capped/big.bin"
    (base / "big.txt").write_text(big + "\n")
    (base / "capped.txt").write_text(capped + "\n")
    many = base / "many.txt"
    many.write_text("".join(f"{url}/many/f{i:05d}.bin\n" for i in range(files)))
    tinies = base / "tiny.txt"
    tinies.write_text("".join(f"{url}/tiny/t{i:05d}.bin\n" for i in range(tiny)))
    many_urls = many.read_text().split()

    def single(target: str, listing: Path) -> list[Tool]:
        return [
            Tool("curl", lambda o: ["curl", "-s", "-o", str(o / "big.bin"), target]),
            Tool("wget", lambda o: ["wget", "-q", "-O", str(o / "big.bin"), target]),
            Tool("aria2c -x16 -s16 -k1M", lambda o: ["aria2c", "-q", "-x16", "-s16", "-k1M", "-d", str(o), target]),
            Tool("parfive (16 splits, 1 MiB chunks)", lambda o: [py, str(scripts / "pf.py"), str(o), str(listing),
                                                                 "16"]),
            Tool("plain aiohttp", lambda o: [py, str(scripts / "one.py"), target, str(o / "big.bin")]),
            Tool("bgdl fetch (in-process)", _bgdl([target]), in_process=True),
            Tool("bgdl fetch (service)", _bgdl([target]), service=True),
            Tool("bgdl fetch --connections 16 (in-process)", _bgdl([target], "--connections", "16"),
                 in_process=True),
            Tool("bgdl fetch --connections 16 (service)", _bgdl([target], "--connections", "16"), service=True),
        ]

    one = single(big, base / "big.txt")
    one.insert(2, Tool("curl && sha256sum", lambda o: ["sh", "-c", f"curl -s -o {o}/big.bin {big} && "
                                                                    f"sha256sum {o}/big.bin >/dev/null"]))
    # no download: what sha256 alone costs Python on this machine now (the hash term of bar a)
    one.append(Tool(HASH_ONLY, lambda o: [py, "-c", "import hashlib, sys; hashlib.file_digest(open(sys.argv[1], 'rb'), "
                                                    "'sha256')", str(base / "www" / "big.bin")]))
    many_tools = [
        Tool("curl --parallel (16)", lambda o: ["curl", "-s", "--parallel", "--parallel-max", "16", "--output-dir",
                                                str(o), "--remote-name-all", *many_urls]),
        Tool("xargs -P16 curl", lambda o: ["sh", "-c", f"cd {o} && xargs -P16 -n 125 curl -s --remote-name-all "
                                                       f"< {many}"]),
        Tool("wget -i", lambda o: ["wget", "-q", "-P", str(o), "-i", str(many)]),
        Tool("aria2c -j16", lambda o: ["aria2c", "-q", "-j16", "-d", str(o), "-i", str(many)]),
        Tool("parfive (16 at once)", lambda o: [py, str(scripts / "pf.py"), str(o), str(many), "1"]),
        Tool("plain aiohttp (16 at once)", lambda o: [py, str(scripts / "many.py"), str(many), str(o)]),
        Tool("bgdl fetch (in-process, 16 at once)", _bgdl(many, "--max-concurrent", "16", "--connections", "16"),
             in_process=True),
        Tool("bgdl fetch (service, 16 at once)", _bgdl(many, "--max-concurrent", "16", "--connections", "16"),
             service=True),
    ]
    tiny_tools = [
        Tool("xargs -P16 curl", lambda o: ["sh", "-c", f"cd {o} && xargs -P16 -n 125 curl -s --remote-name-all "
                                                       f"< {tinies}"]),
        Tool("bgdl fetch (service, 16 at once)", _bgdl(tinies, "--max-concurrent", "16", "--connections", "16"),
             service=True),
    ]
    return [
        Scenario(f"a. one {size // MIB} MiB file", "MB/s", size, size, one),
        Scenario(f"b. one {size // MIB} MiB file, 25 MB/s per connection", "MB/s", size, size,
                 single(capped, base / "capped.txt")),
        Scenario(f"c. {files} x 100 KiB", "files/s", files, files * 100 * 1024, many_tools),
        Scenario(f"d. {tiny} x 1 KiB through the service", "files/s", tiny, tiny * 1024, tiny_tools),
    ]


def _table(results: list[Scenario], rounds: int) -> str:
    lines = [f"| scenario | tool | median | range ({rounds} rounds) | CPU | peak RSS |", "|---|---|---|---|---|---|"]
    for sc in results:
        for tool in sc.tools:
            runs = [r for r in sc.runs.get(tool.name, []) if r[0] == r[0]]  # NaN: the run hung
            hung = len(sc.runs.get(tool.name, [])) - len(runs)
            if not runs:
                lines.append(f"| {sc.name} | {tool.name} | hung ({hung} of {rounds} runs) | | | |")
                continue
            rates = [sc.amount / w / (1e6 if sc.unit == "MB/s" else 1) for w, _, _ in runs]
            cpu = statistics.median(c for _, c, _ in runs)
            cost = f"{cpu / (sc.nbytes / 1e9):.2f} s/GB" if sc.unit == "MB/s" else f"{cpu / sc.amount * 1e3:.2f} ms/file"
            rss = max(r for _, _, r in runs)
            lines.append(f"| {sc.name} | {tool.name} | {statistics.median(rates):,.0f} {sc.unit} | "
                         f"{min(rates):,.0f}–{max(rates):,.0f}{f' ({hung} hung)' if hung else ''} | {cost} | "
                         f"{rss:,.0f} MB |")
    return "\n".join(lines)


def _medians(sc: Scenario) -> dict[str, tuple[float, float]]:
    """Each tool's median rate and CPU (s/GB or ms/file) in ``sc``, hung runs left out."""
    out = {}
    for name, runs in sc.runs.items():
        done = [r for r in runs if r[0] == r[0]]
        if done:
            rate = statistics.median(sc.amount / w / (1e6 if sc.unit == "MB/s" else 1) for w, _, _ in done)
            cpu = statistics.median(c for _, c, _ in done)
            out[name] = (rate, cpu / (sc.nbytes / 1e9) if sc.unit == "MB/s" else cpu / sc.amount * 1e3)
    return out


def _bars(results: list[Scenario]) -> str:
    """The issue's bars, judged on this run's medians."""
    lines = []
    by = {sc.name[0]: _medians(sc) for sc in results}
    bgdl = ("bgdl fetch (in-process)", "bgdl fetch (service)")
    if (a := by.get("a")) and all(k in a for k in ("curl", HASH_ONLY, *bgdl)):
        peers = {k: v for k, v in a.items() if not k.startswith("bgdl") and k != HASH_ONLY}
        fastest = max(peers, key=lambda k: peers[k][0])
        cpu_bar = 1.5 * a["curl"][1] + a[HASH_ONLY][1]
        for name in bgdl:
            rate, cpu = a[name]
            lines.append(f"a. {name}: {rate:,.0f} MB/s against the fastest peer's {peers[fastest][0]:,.0f} ({fastest}) "
                         f"and curl && sha256sum's {a.get('curl && sha256sum', (0, 0))[0]:,.0f}; CPU {cpu:.2f} s/GB "
                         f"against the bar of 1.5 x curl's {a['curl'][1]:.2f} + the hash's {a[HASH_ONLY][1]:.2f} = "
                         f"{cpu_bar:.2f} ({'met' if cpu <= cpu_bar else 'not met'})")
    if b := by.get("b"):
        rivals = {k: v[0] for k, v in b.items() if k.startswith(("aria2c", "parfive"))}
        for name in ("bgdl fetch --connections 16 (in-process)", "bgdl fetch --connections 16 (service)"):
            if name in b:
                rate = b[name][0]
                ahead = all(rate > r for r in rivals.values())
                lines.append(f"b. {name}: {rate:,.0f} MB/s, bar 375 and ahead of aria2c and parfive: "
                             f"{'met' if rate >= 375 and ahead else 'not met'}")
    if c := by.get("c"):
        others = {k: v[0] for k, v in c.items() if not k.startswith(("bgdl", "curl --parallel"))}
        for name in (k for k in c if k.startswith("bgdl")):
            behind = [f"{k} ({r:,.0f})" for k, r in others.items() if r > c[name][0]]
            lines.append(f"c. {name}: {c[name][0]:,.0f} files/s at {c[name][1]:.2f} ms/file; "
                         + (f"behind {', '.join(behind)}" if behind else "met"))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--tiny", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", help="run only scenarios whose name starts with these letters, e.g. 'ac'")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bgdl-speed-"))
    www = base / "www"
    (www / "many").mkdir(parents=True)
    (www / "tiny").mkdir(parents=True)
    _write_file(www / "big.bin", args.size_mib * MIB, "big")
    for i in range(args.files):
        _write_file(www / "many" / f"f{i:05d}.bin", 100 * 1024, f"small{i}")
    for i in range(args.tiny):
        _write_file(www / "tiny" / f"t{i:05d}.bin", 1024, f"tiny{i}")
    with serving(base) as url:
        _measure(base, url, args)


def _compile_bgdl() -> None:
    """Write bgdl_nb's bytecode first, as ``pip install`` does: from an editable install
    under ``PYTHONDONTWRITEBYTECODE`` every command would compile the package again
    (about 70 ms on this machine's 2 cores), which no installed user pays."""
    import compileall

    found = subprocess.run(["bgdl", "--version"], capture_output=True, text=True, check=True)  # the runs' bgdl
    where = subprocess.run([sys.executable, "-c", "import bgdl_nb, os; print(os.path.dirname(bgdl_nb.__file__))"],
                           capture_output=True, text=True, check=True).stdout.strip()
    compileall.compile_dir(where, quiet=1)
    print(f"# {found.stdout.strip()} from {where}, bytecode compiled", flush=True)


def _measure(base: Path, url: str, args: argparse.Namespace) -> None:
    results = scenarios(base, url, args.size_mib * MIB, args.files, args.tiny)
    _compile_bgdl()
    if args.only:
        results = [sc for sc in results if sc.name[0] in args.only]
    print(f"# {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, nginx on loopback, {args.rounds} rounds "
          "interleaved", flush=True)
    for sc in results:
        for r in range(args.rounds):
            for i, tool in enumerate(sc.tools):
                out = base / "out" / f"{sc.name[0]}{i}"
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir(parents=True)
                wall, cpu, rss = _run(tool, out, base)
                sc.runs.setdefault(tool.name, []).append((wall, cpu, rss))
                rate = sc.amount / wall / (1e6 if sc.unit == "MB/s" else 1)
                print(f"  {sc.name[:2]} round {r + 1} {tool.name:38} {wall:7.2f} s {rate:9,.0f} {sc.unit} "
                      f"CPU {cpu:6.2f} s RSS {rss:5.0f} MB", flush=True)
                shutil.rmtree(out, ignore_errors=True)
    print()
    print(_table(results, args.rounds))
    print()
    print(_bars(results))


if __name__ == "__main__":
    main()
