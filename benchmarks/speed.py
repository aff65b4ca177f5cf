"""Speed side by side with curl, wget, aria2c and parfive, in one run, on loopback.

Every tool downloads the same files from the same nginx (started here on a free port,
serving files generated deterministically into a temporary directory), each at its best
settings: curl and wget plain; aria2c with -x16 -s16 -k1M (one file) and -j16 (many);
parfive with 1 MiB chunks and 16 parallel files. bgdl runs as ``bgdl fetch`` twice: with
its engine in the command's own process (BGDL_IN_PROCESS=1) and through the transfer
service (started before the clock). Wall time and the CPU time of the tool's processes
(children's rusage; the service's CPU is read from /proc) are reported.

Run: pip install parfive; python benchmarks/speed.py [--size-mib 1024] [--files 2000]
Needs nginx, curl, wget and aria2c (Debian: nginx-light curl wget aria2).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MIB = 1024 * 1024


def _nginx(root: Path, work: Path) -> tuple[subprocess.Popen[bytes], str, socket.socket]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)
    port = sock.getsockname()[1]
    (work / "logs").mkdir(parents=True, exist_ok=True)
    conf = work / "nginx.conf"
    user = "user root;" if os.geteuid() == 0 else ""
    conf.write_text(f"""{user}
worker_processes 2; daemon off; pid {work}/nginx.pid; error_log {work}/logs/error.log warn;
events {{ worker_connections 1024; }}
http {{ access_log off; sendfile on; tcp_nopush on; keepalive_requests 100000;
  client_body_temp_path {work}/b; proxy_temp_path {work}/p; fastcgi_temp_path {work}/f;
  uwsgi_temp_path {work}/u; scgi_temp_path {work}/s;
  server {{ listen 127.0.0.1:{port}; root {root}; }} }}
""")
    fd = sock.fileno()
    proc = subprocess.Popen([shutil.which("nginx") or "/usr/sbin/nginx", "-p", str(work), "-c", str(conf)],
                            pass_fds=[fd], env={**os.environ, "NGINX": f"{fd};"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, f"http://127.0.0.1:{port}", sock


def _write_file(path: Path, size: int, seed: str) -> None:
    block = hashlib.shake_256(seed.encode()).digest(MIB)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, MIB)
            f.write(block[:n])
            left -= n


def _service_cpu(state: Path) -> float:
    pid_file = state / "run" / "service.pid"
    if not pid_file.exists():
        return 0.0
    fields = Path(f"/proc/{pid_file.read_text().strip()}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _run(name: str, cmd: list[str], env: dict[str, str] | None = None, state: Path | None = None) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    service_before = _service_cpu(state) if state else 0.0
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, **(env or {})})
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if state:
        cpu += _service_cpu(state) - service_before
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--files", type=int, default=2000)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bgdl-speed-"))
    www = base / "www"
    (www / "many").mkdir(parents=True)
    _write_file(www / "big.bin", args.size_mib * MIB, "big")
    for i in range(args.files):
        _write_file(www / "many" / f"f{i:05d}.bin", 100 * 1024, f"small{i}")
    nginx, url, sock = _nginx(www, base / "nginx")
    big = f"{url}/big.bin"
    urls = [f"{url}/many/f{i:05d}.bin" for i in range(args.files)]
    (base / "urls.txt").write_text("\n".join(urls) + "\n")
    parfive_script = base / "pf.py"
    parfive_script.write_text(
        "import sys\nfrom parfive import Downloader, SessionConfig\n"
        "d = Downloader(max_conn=16, max_splits=16, progress=False, config=SessionConfig(chunksize=1024*1024))\n"
        "for u in open(sys.argv[2]).read().split():\n    d.enqueue_file(u, path=sys.argv[1])\n"
        "r = d.download()\nsys.exit(1 if r.errors else 0)\n")
    results: list[tuple[str, str, float, float]] = []
    try:
        def out(tag: str) -> Path:
            path = base / "out" / tag
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir(parents=True)
            return path

        size = args.size_mib * MIB
        (base / "big.txt").write_text(big + "\n")
        one = [
            ("curl", lambda o: ["curl", "-s", "-o", str(o / "big.bin"), big]),
            ("wget", lambda o: ["wget", "-q", "-O", str(o / "big.bin"), big]),
            ("aria2c -x16 -s16 -k1M", lambda o: ["aria2c", "-q", "-x16", "-s16", "-k1M", "-d", str(o), big]),
            ("parfive (1 MiB chunks)", lambda o: [sys.executable, str(parfive_script), str(o), str(base / "big.txt")]),
        ]
        many = [
            ("curl (one process, reused connection)", lambda o: ["curl", "-s", "--parallel", "--parallel-max", "16",
                                                                 "--output-dir", str(o), "--remote-name-all", *urls]),
            ("wget -i", lambda o: ["wget", "-q", "-P", str(o), "-i", str(base / "urls.txt")]),
            ("aria2c -j16", lambda o: ["aria2c", "-q", "-j16", "-d", str(o), "-i", str(base / "urls.txt")]),
            ("parfive (16 files at once)", lambda o: [sys.executable, str(parfive_script), str(o),
                                                      str(base / "urls.txt")]),
        ]
        for mode in ("in-process", "service"):
            state = base / f"state-{mode}"
            env = {"BGDL_STATE_DIR": str(state), "BGDL_IN_PROCESS": "1" if mode == "in-process" else "0"}
            one.append((f"bgdl fetch ({mode})", lambda o, env=env: (["bgdl", "fetch", big, "-o", str(o), "-q",
                                                                      "--id", f"big-{o.name}"], env)))
            many.append((f"bgdl fetch ({mode}, 16 at once)", lambda o, env=env: (
                ["bgdl", "fetch", "-i", str(base / "urls.txt"), "-o", str(o), "-q", "--id", f"many-{o.name}",
                 "--max-concurrent", "16", "--connections", "16"], env)))
        for c, (case, tools, total) in enumerate((("one file", one, size), ("many files", many, args.files * 100 * 1024))):
            for i, (name, make) in enumerate(tools):
                target = out(f"case{c}-{i}")
                spec = make(target)
                cmd, env = spec if isinstance(spec, tuple) else (spec, None)
                state = Path(env["BGDL_STATE_DIR"]) if env else None
                if env and env["BGDL_IN_PROCESS"] == "0":
                    subprocess.run(["bgdl", "service", "start"], env={**os.environ, **env}, check=True,
                                   stdout=subprocess.DEVNULL)
                wall, cpu = _run(name, cmd, env, state)
                results.append((case, name, wall, cpu))
                rate = f"{total / wall / 1e6:8.0f} MB/s" if case == "one file" else f"{args.files / wall:8.0f} files/s"
                print(f"{case:10} {name:42} {wall:7.2f} s {rate}  CPU {cpu:6.2f} s "
                      f"({cpu / (total / 1e9):.2f} s/GB)", flush=True)
                shutil.rmtree(target, ignore_errors=True)
    finally:
        for mode in ("in-process", "service"):
            subprocess.run(["bgdl", "service", "stop"], env={**os.environ, "BGDL_STATE_DIR": str(base / f"state-{mode}")},
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        nginx.terminate()
        nginx.wait()
        sock.close()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
