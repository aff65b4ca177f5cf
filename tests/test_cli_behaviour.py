"""The command line behaves like curl and wget: Ctrl-C stops, a dead server answers fast,
duplicates collapse, bad input is one line with exit 2, files follow the umask."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time

import pytest
from conftest import run_cli

import bgdl_nb as bg
from bgdl_nb._journal import journaled_bytes, read_journal

from helpers import sha256_of, wait_until

MB = 1024 * 1024


def _dead_port() -> int:
    with socket.socket() as s:  # bound, then closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_from_a_terminal() -> None:
    """Ctrl-C reaches the command as it does from a terminal: a test run started in the
    background of a script (no job control) ignores SIGINT, and its children inherit that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_suspends_the_downloads_and_a_rerun_continues(origin, tmp_path, sig):
    url = origin.url("ctrlc", 24 * MB, rate=4 * MB)
    out = tmp_path / "out"
    child = subprocess.Popen([sys.executable, "-m", "bgdl_nb.cli", "fetch", url, "-o", str(out), "--id", "ctl",
                              "--connections", "1"], stderr=subprocess.PIPE, text=True, env=os.environ.copy(),
                             preexec_fn=_as_from_a_terminal)
    journal = bg.Configuration.background("ctl").journal_path()
    try:
        wait_until(lambda: journaled_bytes(journal, "ctl") >= 2 * MB, timeout=60, what="2 MiB journaled")
        child.send_signal(sig)
        _, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 130 and "suspended" in err and "run the same command" in err
    assert "session ctl" in err  # it says which session it used
    state = {t.state.value for t in read_journal(journal, "ctl")[0]}
    assert state == {"suspended"}
    served = origin.bytes_sent("ctrlc")
    time.sleep(0.5)  # negative check: nothing keeps downloading after the interrupt  (bounded, not a sync)
    assert origin.bytes_sent("ctrlc") == served
    done = run_cli("fetch", url, "-o", str(out), "--id", "ctl", "--connections", "1", "-q")
    assert done.returncode == 0, done.stderr
    assert sha256_of(out / "ctrlc") == origin.sha256("ctrlc", 24 * MB)
    assert origin.requests_for("ctrlc")[-1].headers.get("Range")  # continued, not from byte 0


def test_a_dead_server_fails_in_about_a_second_with_a_plain_message(tmp_path):
    url = f"http://127.0.0.1:{_dead_port()}/file.bin"
    started = time.monotonic()
    done = run_cli("fetch", url, "-o", str(tmp_path), "-q")
    took = time.monotonic() - started
    assert done.returncode == 1 and took < 15, (took, done.stderr)
    assert "cannot connect to 127.0.0.1" in done.stderr and "connection refused" in done.stderr
    assert "ssl:default" not in done.stderr and "ClientConnector" not in done.stderr
    assert done.stderr.count(url) == 1  # each URL named once


def test_the_same_url_twice_is_one_task_and_one_file(origin, tmp_path):
    url = origin.url("dup", 100_000)
    paths = bg.fetch([url, url], tmp_path, progress=False)
    assert paths == [tmp_path / "dup", tmp_path / "dup"]
    assert len(origin.requests_for("dup")) == 1 and sorted(p.name for p in tmp_path.iterdir()) == [
        ".bgdl-manifest.json", "dup"]


def test_a_digest_for_a_url_not_fetched_is_refused_before_any_io(origin, tmp_path):
    url = origin.url("a", 100)
    with pytest.raises(bg.InvalidInput, match="not being fetched"):
        bg.fetch([url], tmp_path / "x", sha256={url + "&typo=1": "0" * 64}, progress=False)
    assert origin.log == [] and not (tmp_path / "x").exists()


def test_finished_files_follow_the_umask_and_partials_stay_private(origin, tmp_path):
    old = os.umask(0o022)
    try:
        session = bg.Session(bg.Configuration.default(connections_per_file=1))
        task = session.download_task(origin.url("mode", 4 * MB, rate=4 * MB), tmp_path / "mode").resume()
        wait_until(lambda: list(tmp_path.glob(".mode*.bgdl-part")), what="the partial file")
        partial = next(tmp_path.glob(".mode*.bgdl-part"))
        assert stat.S_IMODE(partial.stat().st_mode) == 0o600
        task.wait(30)
        assert stat.S_IMODE((tmp_path / "mode").stat().st_mode) == 0o644  # like wget and curl
        session.close()
    finally:
        os.umask(old)


@pytest.mark.parametrize("target", ["/proc/bgdl-cannot-exist", "/dev/null/x"])
def test_an_output_folder_that_cannot_be_made_is_one_line_and_exit_2(origin, target):
    done = run_cli("fetch", origin.url("z", 10), "-o", target)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("bgdl: error")]
    assert len(lines) == 1 and "Traceback" not in done.stderr and target in lines[0]


def test_cli_words_list_without_id_and_user_agent(origin, tmp_path):
    url = origin.url("w", 100)
    (tmp_path / "w").write_bytes(b"someone else's")
    done = run_cli("fetch", url, "-o", str(tmp_path), "--id", "words")
    assert done.returncode == 2 and "--overwrite" in done.stderr and "overwrite=True" not in done.stderr
    assert run_cli("fetch", url, "-o", str(tmp_path / "ok"), "--id", "words2", "-q").returncode == 0
    sessions = run_cli("list")
    assert sessions.returncode == 0 and "words2" in sessions.stdout and str(tmp_path / "ok") in sessions.stdout
    agent = origin.requests_for("w")[-1].headers["User-Agent"]
    assert agent.startswith(f"bgdl_nb/{bg.__version__} ")
    version = run_cli("--version")
    assert version.returncode == 0 and version.stdout == f"bgdl_nb {bg.__version__}\n"


def test_detach_hands_the_job_to_the_service_and_returns(origin, tmp_path):
    url = origin.url("det", 8 * MB, rate=4 * MB)
    started = time.monotonic()
    done = run_cli("fetch", url, "-o", str(tmp_path), "--id", "det", "--detach")
    assert done.returncode == 0 and time.monotonic() - started < 10
    assert "bgdl pause --id det" in done.stderr and not (tmp_path / "det").exists()
    finished = run_cli("fetch", url, "-o", str(tmp_path), "--id", "det", "-q")
    assert finished.returncode == 0 and sha256_of(tmp_path / "det") == origin.sha256("det", 8 * MB)


@pytest.mark.parametrize("args, words", [
    (["-i", "/nonexistent/urls.txt"], "cannot read the list of URLs /nonexistent/urls.txt"),
    (["http://127.0.0.1:9/x", "--connections", "0"], "--connections must be at least 1"),
    (["http://127.0.0.1:9/x", "--max-concurrent", "0"], "--max-concurrent must be at least 1"),
    (["http://127.0.0.1:9/x", "--retries", "-1"], "--retries must be at least 0"),
])
def test_typos_on_the_command_line_are_one_line_and_exit_2(tmp_path, args, words):
    done = run_cli("fetch", *args, "-o", str(tmp_path))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bgdl: error: ") and words in lines[0], lines


def test_a_notebook_demo_origin_is_reused_and_exits_when_idle(tmp_path):
    """An origin started for a notebook that is left midway does not run for ever; a
    request in flight keeps it up, and running the notebook again reuses it."""
    import urllib.request

    from bgdl_nb.demo import start_origin_process

    info = tmp_path / "demo-origin.json"
    origin = start_origin_process(info, idle_exit=1.0)
    try:
        assert start_origin_process(info, idle_exit=1.0).pid == origin.pid  # the second run reuses it
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with direct.open(origin.url("slow", 3_000_000, rate=1_000_000), timeout=30) as reply:
            assert len(reply.read()) == 3_000_000  # three seconds of transfer, three times the idle limit
        assert origin.alive()

        def gone() -> bool:
            try:  # our child: reap it once it exited
                return os.waitpid(origin.pid, os.WNOHANG)[0] == origin.pid
            except ChildProcessError:  # already reaped
                try:
                    os.kill(origin.pid, 0)
                except ProcessLookupError:
                    return True
                return False

        wait_until(gone, timeout=20, what="the idle origin to exit")
    finally:
        origin.stop()



def test_bgdl_demo_kills_resumes_verifies_and_says_what_it_left(tmp_path):
    """The README's first command, with its output piped (not a terminal): every line
    whole, the resume shown, and where it worked named."""
    work = tmp_path / "a folder with a rather long name to need more than eighty columns" / "demo"
    done = run_cli("demo", "--size-mb", "8", "--dir", str(work), timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all files complete and verified" in done.stdout
    assert "resumed at byte" in done.stdout or "finished before it could be killed" in done.stdout
    lines = done.stdout.splitlines()
    assert any(f"rm -rf {work}" in line for line in lines), done.stdout  # the whole path on one line
    assert sorted(p.name for p in (work / "data").iterdir() if not p.name.startswith(".")) == [
        "satellite-tiles.tar", "taxi-trips.parquet", "weather-2026.csv.gz"]


def test_a_listing_into_a_closed_pipe_ends_quietly_as_unix_tools_do(origin, tmp_path):
    assert run_cli("fetch", origin.url("p", 100), "-o", str(tmp_path), "--id", "piped", "-q").returncode == 0
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before a line is written (`bgdl events | head -0`)
    try:
        done = subprocess.run([sys.executable, "-m", "bgdl_nb.cli", "events", "--id", "piped"], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (141, "")


@pytest.mark.parametrize("command", ["cancel", "pause", "resume"])
def test_a_misspelt_identifier_is_exit_2_and_makes_no_session(command, state_dir):
    done = run_cli(command, "--id", "typo-in-id")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "no background session 'typo-in-id'" in done.stderr
    assert not (state_dir / "sessions" / "typo-in-id.sqlite3").exists()
    assert "typo-in-id" not in run_cli("list").stdout


def test_controls_on_a_finished_session_say_there_is_nothing_to_do(origin, tmp_path):
    assert run_cli("fetch", origin.url("f", 1000), "-o", str(tmp_path), "--id", "done", "--quiet").returncode == 0
    for command, word in (("pause", "pause"), ("resume", "resume"), ("cancel", "cancel")):
        done = run_cli(command, "--id", "done")
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"nothing to {word} in 'done'"), done.stdout
    assert run_cli("pause", "--id", "done", "--task", "7").returncode == 2  # a task it does not have


def test_a_service_that_does_not_answer_is_named_by_the_status_within_seconds(state_dir):
    """`bgdl service status` with the service stopped by SIGSTOP: one line naming its pid,
    exit 1, after the status's few seconds, not after a minute of silence."""
    assert run_cli("service", "start").returncode == 0
    pid = bg.service_status(state_dir)["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        done = run_cli("service", "status", timeout=30)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert done.returncode == 1 and done.stdout == "", done
    assert done.stderr.count("\n") == 1 and f"transfer service (pid {pid}) is not answering" in done.stderr


def test_the_list_of_a_session_says_when_its_running_tasks_have_a_service_that_does_not_answer(origin, tmp_path,
                                                                                                 state_dir):
    """`bgdl list` reads the journal, which says "running"; with the service stopped by
    SIGSTOP it says too that those tasks may not be moving, and why (it said nothing)."""
    detached = run_cli("fetch", origin.url("slow.bin", 40 * MB, rate=MB), "-o", str(tmp_path), "--id", "frozen",
                       "--detach", "-q")
    assert detached.returncode == 0, detached.stderr
    pid = bg.service_status(state_dir)["pid"]
    answered = run_cli("list", "--id", "frozen")
    assert "running" in answered.stdout and "not answering" not in answered.stderr
    os.kill(pid, signal.SIGSTOP)
    try:
        frozen = run_cli("list", "--id", "frozen", timeout=30)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert frozen.returncode == 0 and "running" in frozen.stdout
    assert f"the tasks shown as running may not be moving: the transfer service (pid {pid}) is not answering" \
        in frozen.stderr, frozen.stderr


def test_a_manifest_overwritten_mid_run_is_exit_1_saying_how_to_go_on(origin, tmp_path):
    """Garbage written over the manifest while files download: the run fails (exit 1, not
    the exit 2 of bad input), says how to go on, keeps the files; doing what it says works."""
    urls = [origin.url("first.bin", 100_000), origin.url("later.bin", 6 * MB, total_rate=2 * MB)]
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "bgdl_nb.cli", "fetch", *urls, "-o", str(out), "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        manifest = out / ".bgdl-manifest.json"
        wait_until(lambda: manifest.exists() or proc.poll() is not None, timeout=60, what="the first file's record")
        assert proc.poll() is None, proc.communicate()
        manifest.write_text("not a manifest {")  # as a careless script or another tool might
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, err
    assert "was replaced with something that is not a bgdl_nb manifest" in err and "Move that file away" in err
    assert (out / "first.bin").stat().st_size == 100_000  # what was downloaded is kept
    manifest.rename(tmp_path / "garbage.json")
    served = len(origin.requests_for("first.bin"))
    again = run_cli("fetch", *urls, "-o", str(out), "-q")
    assert again.returncode == 0, again.stderr
    assert len(origin.requests_for("first.bin")) == served  # recorded again, not downloaded again
    assert (out / "later.bin").stat().st_size == 6 * MB
