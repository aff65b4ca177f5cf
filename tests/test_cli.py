"""The bgdl command line."""

from __future__ import annotations

import csv
import io

from conftest import run_cli


def test_fetch_list_events(origin, tmp_path):
    url = origin.url("c.bin", 100_000)
    done = run_cli("fetch", url, "-o", str(tmp_path), "--id", "cli")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(tmp_path / "c.bin")
    listing = run_cli("list", "--id", "cli")
    assert listing.returncode == 0 and " done " in listing.stdout and url in listing.stdout
    events = run_cli("events", "--id", "cli")
    assert "finished" in events.stdout and "HTTP 200" in events.stdout
    rows = list(csv.DictReader(io.StringIO(run_cli("events", "--id", "cli", "--csv").stdout)))
    assert [r["event"] for r in rows][:2] == ["created", "resumed"]
    assert rows[-1]["event"] == "completed" and rows[-1]["total_bytes_written"] == "100000"


def test_bad_input_is_one_clear_line_and_exit_2(tmp_path):
    bad = run_cli("fetch", "ftp://example.org/x", "-o", str(tmp_path))
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "only http:// and https://" in bad.stderr
    unknown = run_cli("list", "--id", "nope")
    assert unknown.returncode == 2 and "no background session 'nope'" in unknown.stderr
    none = run_cli("fetch", "-o", str(tmp_path))
    assert none.returncode == 2 and "no URLs" in none.stderr


def test_failed_download_exits_1(origin, tmp_path):
    result = run_cli("fetch", f"{origin.base_url}/nothing/here", "-o", str(tmp_path), "--id", "f")
    assert result.returncode == 1 and "HTTP 404" in result.stderr


def test_pause_resume_cancel_on_an_idle_session(origin, tmp_path):
    import bgdl_nb as bg
    s = bg.Session(bg.Configuration.background("ctl"))
    t = s.download_task(origin.url("p", 1000), tmp_path / "p")
    s.close()
    assert "resumed 1 task(s) of 'ctl'" in run_cli("resume", "--id", "ctl").stdout
    cancelled = run_cli("cancel", "--id", "ctl").stdout  # a 1000-byte file may finish before the cancel lands
    assert "cancelled 1 task(s) of 'ctl'" in cancelled or "nothing to cancel in 'ctl'" in cancelled
    listing = run_cli("list", "--id", "ctl").stdout.splitlines()[1].split()
    assert listing[1] in ("done", "cancelled")  # a 1000-byte file may finish before the cancel lands
    del t


def test_fetch_shows_terminal_progress_on_a_tty(origin, tmp_path):
    """In a terminal, bgdl fetch draws progress bars (rich); piped, it stays quiet."""
    import os
    import pty
    import subprocess
    import sys

    url = origin.url("tty.bin", 4_000_000, rate=4_000_000)
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "bgdl_nb.cli", "fetch", url, "-o", str(tmp_path), "--id", "tty"],
                            stdin=slave, stdout=slave, stderr=slave, env={**os.environ, "COLUMNS": "120"})
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(60) == 0
    os.close(master)
    screen = b"".join(chunks).decode(errors="replace")
    assert "tty.bin" in screen and "4.0 MB" in screen and "done" in screen
    piped = run_cli("fetch", origin.url("pipe.bin", 1000), "-o", str(tmp_path), "--id", "tty2")
    assert piped.stderr == ""
