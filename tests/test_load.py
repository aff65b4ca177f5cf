"""Ten processes attach to the transfer service, create, wait and close in a loop while
other files download: every call either works or raises a BgdlError that says what
happened (never a bare builtin exception, never an empty message)."""

from __future__ import annotations

import json
import subprocess
import sys

import bgdl_nb as bg

_ATTACHER = """
import json, sys, traceback
import bgdl_nb as bg
base, who, rounds, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
for n in range(rounds):
    try:
        with bg.Session(bg.Configuration.background(f"load-{who}", use_service=True)) as session:
            tasks = [session.download_task(f"{base}/files/{who}-{n}-{k}.bin?size=200000&rate=2000000",
                                           f"{out}/{who}-{n}-{k}.bin").resume() for k in range(4)]
            if n % 3 == 1:
                tasks[0].suspend()
                tasks[0].resume()
            if n % 3 != 2:  # every third round closes without waiting: its files go on detached
                for task in tasks:
                    task.wait(90)
        print(json.dumps({"ok": True}), flush=True)
    except BaseException as exc:
        print(json.dumps({"ok": False, "type": type(exc).__name__, "bgdl": isinstance(exc, bg.BgdlError),
                          "message": str(exc), "trace": traceback.format_exc()[-600:]}), flush=True)
"""


def test_ten_processes_attaching_and_closing_in_a_loop_while_files_download_see_only_clear_errors(
        origin, tmp_path, state_dir):
    with bg.Session(bg.Configuration.background("load-big", use_service=True)) as big:
        large = [big.download_task(origin.url(f"big-{i}.bin", 20_000_000, rate=4_000_000), tmp_path / f"big-{i}.bin")
                 .resume() for i in range(3)]
        workers = [subprocess.Popen([sys.executable, "-c", _ATTACHER, origin.base_url, str(k), "6", str(tmp_path)],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in range(10)]
        outcomes = []
        for worker in workers:
            out, err = worker.communicate(timeout=300)
            assert worker.returncode == 0, err
            outcomes += [json.loads(line) for line in out.splitlines()]
        for task in large:
            task.wait(120)
    failed = [o for o in outcomes if not o["ok"]]
    assert len(outcomes) == 60
    assert all(o["bgdl"] and o["message"].strip() for o in failed), failed
    assert not failed, failed  # under this load nothing needs to fail at all
