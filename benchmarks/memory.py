"""Peak memory: independent of file size, and with 10,000 tasks.

Each case runs in a fresh process (peak RSS is per process): a 512 MiB and a 2 GiB
download from the demo origin served by another process (engine in the measuring
process), and 10,000 queued tasks. Run: python benchmarks/memory.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap

CASE = textwrap.dedent("""
    import os, resource, sys, tempfile
    import bgdl_nb as bg
    kind, arg, base = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    out = tempfile.mkdtemp()
    s = bg.Session(bg.Configuration.default(max_concurrent_tasks=16))
    if kind == "file":
        t = s.download_task(f"{base}/files/m{arg}.bin?size={arg}", out + "/f").resume()
        t.wait(600)
        os.unlink(out + "/f")
    else:
        tasks = [s.download_task(f"http://127.0.0.1:9/t{i}", out + f"/t{i}") for i in range(arg)]
        s.pause()
        for t in tasks:
            t.resume()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
    s.invalidate_and_cancel()
""")


def main() -> None:
    env = {**os.environ, "BGDL_STATE_DIR": tempfile.mkdtemp(prefix="bgdl-mem-")}
    server = subprocess.Popen([sys.executable, "-m", "bgdl_nb.cli", "serve", "--port", "0"], stdout=subprocess.PIPE,
                              text=True)
    base = server.stdout.readline().split()[4]
    try:
        for label, kind, arg in (("512 MiB file", "file", 512 << 20), ("2 GiB file", "file", 2 << 30),
                                 ("10,000 queued tasks", "tasks", 10_000)):
            rss = subprocess.run([sys.executable, "-c", CASE, kind, str(arg), base], env=env, capture_output=True,
                                 text=True, check=True).stdout.split()[0]
            print(f"{label:22} peak RSS {rss} MiB", flush=True)
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
