"""``bgdl demo``: the whole story in one command, on the embedded origin (no internet).

1. Start the demo origin on a free loopback port (rate-limited, so the download takes a
   few seconds).
2. Run ``bgdl fetch`` for a small dataset in a child process; the transfers run in the
   transfer service. Once about 40% of the bytes are journaled, ``kill -9`` both the
   service (the process doing the transfer) and the child.
3. Run the same fetch again in this process: it starts a new service, which reattaches
   to the journal and continues each file from its partial bytes.
4. Verify every file against the origin's sha256, and summarise the event log and how
   many bytes the origin served in all.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .._private import child_environment, python_command

__all__ = ["run_demo"]

MB = 1024 * 1024


def run_demo(workdir: str | None = None, size_mb: int = 48) -> int:
    from .._config import Configuration
    from .._fetch import fetch
    from .._hosts.service.control import service_status, stop_service
    from .._journal import journaled_bytes, read_journal
    from .origin import Origin

    console = Console(soft_wrap=not sys.stdout.isatty())  # piped or logged: one line stays one line
    root = Path(workdir or tempfile.mkdtemp(prefix="bgdl-demo-")).absolute()
    root.mkdir(parents=True, exist_ok=True)
    state, out = root / "state", root / "data"
    os.environ["BGDL_STATE_DIR"] = str(state)
    identifier = "demo"
    files = [("weather-2026.csv.gz", size_mb * MB), ("taxi-trips.parquet", size_mb * MB // 2),
             ("satellite-tiles.tar", size_mb * MB // 3)]
    total = sum(size for _, size in files)
    rate = max(MB, size_mb * MB // 4)  # bytes/s per connection: about four seconds in all

    with Origin() as origin:
        urls = [origin.url(name, size, rate=rate) for name, size in files]
        digests = [origin.sha256(name, size) for name, size in files]
        console.print(f"[bold]bgdl demo[/] — origin {origin.base_url}, {len(files)} files, "
                      f"{total / MB:.0f} MiB, working in {root}")

        console.print("\n[bold]1.[/] `bgdl fetch` in a child process …")
        child = subprocess.Popen(python_command("bgdl_nb.cli", "fetch", *urls, "-o", str(out), "--id", identifier),
                                 cwd=root, env=child_environment())
        journal = Configuration.background(identifier).journal_path()
        deadline = time.monotonic() + 120
        got = 0
        while time.monotonic() < deadline:
            got = journaled_bytes(journal, identifier)
            if got >= 0.4 * total:
                break
            try:
                child.wait(timeout=0.1)
                break  # the child ended on its own (a very fast machine)
            except subprocess.TimeoutExpired:
                pass
        if child.poll() is None:
            status = service_status(state)
            child.send_signal(signal.SIGKILL)  # the client first, so it cannot start a new service
            child.wait()
            if status is not None:
                os.kill(status["pid"], signal.SIGKILL)
            who = f"the transfer service (pid {status['pid']}) and the client" if status else "the client"
            console.print(f"\n[bold]2.[/] killed {who} with SIGKILL at {got / MB:.1f} of {total / MB:.0f} MiB "
                          "journaled; partial files stay on disk")
        else:
            console.print(f"\n[bold]2.[/] the child finished before it could be killed (exit {child.returncode})")

        console.print("\n[bold]3.[/] the same fetch again, in this process: it reattaches and resumes …")
        started = time.monotonic()
        paths = fetch(urls, out, identifier=identifier, sha256=digests)
        elapsed = time.monotonic() - started

        console.print("\n[bold]4.[/] verification")
        ok = True
        for path, digest in zip(paths, digests):
            actual = hashlib.sha256(path.read_bytes()).hexdigest()
            good = actual == digest
            ok &= good
            console.print(f"  {'[green]ok[/]' if good else '[red]MISMATCH[/]'}  {path.name}  sha256 {actual[:16]}…")

        _, events = read_journal(journal, identifier)
        served = sum(origin.bytes_sent(name) for name, _ in files)
        kinds = Counter(e.event for e in events)
        table = Table(title="event log summary")
        table.add_column("event")
        table.add_column("rows", justify="right")
        for kind, count in sorted(kinds.items(), key=lambda kv: -kv[1]):
            table.add_row(kind, str(count))
        console.print(table)
        for e in events:
            if e.event == "resumed_at_offset":
                console.print(f"  task {e.task_identifier} resumed at byte {e.total_bytes_written:,} "
                              f"of {e.total_bytes_expected:,}")
        console.print(f"  origin served {served / MB:.2f} MiB for {total / MB:.2f} MiB of files "
                      f"(re-fetched {max(0, served - total) / 1024:.0f} KiB); resume took {elapsed:.1f} s")
        console.print("[bold green]all files complete and verified[/]" if ok else "[bold red]verification failed[/]")
        stop_service(state)
    if workdir is None:  # a temporary folder of ours: nothing is left behind
        shutil.rmtree(root, ignore_errors=True)
        console.print(f"removed the working folder {root} (the transfer service is stopped); "
                      "`bgdl demo --dir DIR` keeps the files and the journal")
    else:
        console.print(f"left in {root}: the verified files in {out}, the journal in {state} (the transfer service "
                      f"is stopped). Every event: BGDL_STATE_DIR={state} bgdl events --id {identifier}; "
                      f"remove it all with: rm -rf {root}")
    return 0 if ok else 1
