"""Torture: 50 files from a fault-injecting origin, with the client and the transfer
service killed with SIGKILL at random moments, until ``bgdl fetch`` finishes.

The demo origin (in this process) serves 50 files of 1-8 MiB, rate-limited so that the
kills land mid-transfer. Each file gets faults drawn from a seeded random generator:
connection resets partway, stalls (the connection held open and silent: the client gives
up after its 60 s read timeout and continues from its durable offset), 503 with Retry-After,
and for a few files a new version published while the job runs (the client must notice
and restart them, never mixing the versions). Then, round after round, ``bgdl fetch``
runs in a child process against a fresh state directory, half the time with files split
over four connections (``--connections 4``); after a random delay the child, the
transfer service or both are killed with SIGKILL (a client whose service was killed goes
on: it starts a new service, which reattaches to the journal). After a kill of both, 4 KiB
in the middle of a random partial file are overwritten while no process holds it: the
next run must find and re-fetch them. Where libfaketime is installed (Debian's
``faketime``), the wall clock of the client and the service is also set by days, forward
and back, at random moments (the monotonic clock is left alone, as on a real machine).
After the last kill the job is left to finish.
Every file is then compared with the origin's versions (a file that finished before its
new version appeared is whole at the older one; anything else is corrupt), and the bytes
the origin served with the bytes of the files.

Run:   python benchmarks/torture.py [--files 50] [--seed 7] [--kills 20] [--no-clock-jumps]
Prints a Markdown table (faults tried, files byte-identical, bytes re-fetched).
"""

from __future__ import annotations

import argparse
import glob
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bgdl_nb._hosts.service.client import service_status, stop_service
from bgdl_nb._manifest import sha256_file
from bgdl_nb.demo.origin import Origin

MIB = 1024 * 1024


def _alter_a_partial(out: Path, rng: random.Random) -> bool:
    """Overwrite 4 KiB in the middle of the written bytes of a random partial file."""
    partials = sorted(p for p in out.glob(".*.bgdl-part") if p.stat().st_size > 3 * 4096)
    if not partials:
        return False
    victim = rng.choice(partials)
    at = rng.randrange(4096, victim.stat().st_size - 2 * 4096)
    with open(victim, "r+b") as f:
        f.seek(at)
        f.write(bytes(rng.randrange(256) for _ in range(4096)))
    return True


def _faked_clock(work: Path, env: dict[str, str]) -> Path | None:
    """Run the children under libfaketime with an offset read from a file on every call:
    the file returned (``None`` where libfaketime is not installed)."""
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    if not found:
        sys.stderr.write("libfaketime not found (apt-get install faketime): the wall clock stays put\n")
        return None
    clock = work / "clock"
    clock.write_text("+0\n")
    env.update(LD_PRELOAD=found[0], FAKETIME_TIMESTAMP_FILE=str(clock), FAKETIME_NO_CACHE="1",
               FAKETIME_DONT_FAKE_MONOTONIC="1")
    return clock


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=50)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--kills", dest="max_rounds", type=int, default=20,
                        help="rounds that end in a kill before the job is left to finish")
    parser.add_argument("--no-clock-jumps", dest="clock_jumps", action="store_false",
                        help="leave the wall clock alone (it jumps only where libfaketime is installed)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="bgdl-torture-"))
    state, out = work / "state", work / "data"
    env = {**os.environ, "BGDL_STATE_DIR": str(state)}
    faults: Counter[str] = Counter()
    clock = _faked_clock(work, env) if args.clock_jumps else None

    with Origin() as origin:
        files: list[tuple[str, int]] = []
        urls = []
        for i in range(args.files):
            name, size = f"shard-{i:03d}.bin", rng.randint(1, 8) * MIB
            switches: dict[str, object] = {"rate": 2 * MIB}
            kind = rng.choice(["none", "reset", "stall", "503", "reset+503"])
            if "reset" in kind:
                switches.update(reset_after=rng.randint(1, size - 1), faults=rng.randint(1, 3))
                faults["connection reset partway"] += int(switches["faults"])  # type: ignore[call-overload]
            if kind == "stall":
                switches.update(stall_after=rng.randint(1, size - 1), stall_seconds=2, faults=1)
                faults["stall (connection held open and silent)"] += 1
            if "503" in kind:
                switches.update(fail503=rng.randint(1, 2), retry_after=1)
                faults["503 with Retry-After"] += int(switches["fail503"])  # type: ignore[call-overload]
            files.append((name, size))
            urls.append(origin.url(name, size, **switches))
        changed = rng.sample([name for name, _ in files], k=max(1, args.files // 10))

        command = [sys.executable, "-m", "bgdl_nb.cli", "fetch", *urls, "-o", str(out), "--id", "torture"]
        started = time.monotonic()
        rounds = 0
        finished = False
        child: subprocess.Popen[str] | None = None
        while not finished:
            rounds += 1
            if child is None:
                split = ["--connections", "4"] if rng.random() < 0.5 else []
                faults["runs with files split over 4 connections"] += bool(split)
                child = subprocess.Popen([*command, *split], env=env, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE, text=True)
            if clock is not None and rng.random() < 0.4:
                offset = rng.choice(["+3d", "-2d", "+9d", "-6d", "+0"])
                clock.write_text(offset + "\n")  # read by every clock call of the client and the service
                faults["wall clock set by days (+3d, -2d, +9d, -6d, back to +0)"] += 1
            if rounds == 3:
                for name in changed:  # a new version appears while partial files of the old one exist
                    origin.bump(name)
                faults["new version mid-job"] += len(changed)
            leave_alone = rounds > args.max_rounds
            try:
                child.wait(timeout=600 if leave_alone else rng.uniform(0.5, 2.5))
            except subprocess.TimeoutExpired:
                if leave_alone:
                    child.kill()
                    child.wait()
                    break
                victim = rng.choice(["client", "service", "both"])
                status = service_status(state)
                if victim in ("service", "both") and status is not None:
                    os.kill(status["pid"], signal.SIGKILL)  # the client notices, starts a new one, goes on
                    faults["SIGKILL of the transfer service"] += 1
                if victim in ("client", "both"):
                    child.send_signal(signal.SIGKILL)
                    child.wait()
                    faults["SIGKILL of the client"] += 1
                    child = None  # the next round runs the same command again
                if victim == "both" and _alter_a_partial(out, rng):
                    faults["4 KiB of a partial file altered while no process held it"] += 1
                sys.stderr.write(f"round {rounds}: killed the {victim} at {time.monotonic() - started:.1f} s\n")
                continue
            finished = child.returncode == 0
            sys.stderr.write(f"round {rounds}: bgdl fetch exited {child.returncode} at "
                             f"{time.monotonic() - started:.1f} s\n")
            if not finished:
                sys.stderr.write((child.stderr.read() if child.stderr else "")[-500:] + "\n")
                child = None
        elapsed = time.monotonic() - started
        stop_service(state)

        identical = older = corrupt = 0
        for name, size in files:
            digest = sha256_file(out / name) if (out / name).is_file() else None
            if digest == origin.sha256(name, size):
                identical += 1
            elif digest is not None and any(digest == origin.sha256(name, size, v) for v in range(origin.version(name))):
                older += 1  # finished before the new version appeared: whole, of one version
            else:
                corrupt += 1
        total = sum(size for _, size in files)
        served = sum(origin.bytes_sent(name) for name, _ in files)

    print(f"### Torture run: {args.files} files, seed {args.seed}, {rounds} rounds, {elapsed:.0f} s\n")
    print("| fault | times |\n|---|---|")
    for kind, count in sorted(faults.items()):
        print(f"| {kind} | {count} |")
    print("\n| result | value |\n|---|---|")
    print(f"| job finished (exit 0) | {'yes' if finished else 'NO'} |")
    print(f"| files byte-identical to the origin's current version | {identical} of {args.files} |")
    print(f"| files whole at the version before a change (finished before it appeared) | {older} |")
    print(f"| files corrupt, mixed or missing | {corrupt} |")
    print(f"| bytes of the files | {total / MIB:,.1f} MiB |")
    print(f"| bytes the origin served | {served / MIB:,.1f} MiB |")
    print(f"| re-fetched (served minus files) | {(served - total) / MIB:,.1f} MiB "
          f"({(served - total) / total:.1%}) |")
    print(f"\n(working folder {work}; remove it when done)")
    return 0 if finished and corrupt == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
