"""A hostile world: files on disk that are no longer ours, secrets in URLs and headers,
unusual but valid inputs. Real sockets, real files, real symlinks; no mocks."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

import bgdl_nb as bg

from helpers import fill_disk, read_empty_while_claiming, sha256_of, wait_for_bytes, wait_until

MB = 1024 * 1024


def _suspended_midway(origin, tmp_path: Path, use_service: bool, name: str = "data.bin"):
    session = bg.Session(bg.Configuration.background(f"hostile-{use_service}", use_service=use_service,
                                                     connections_per_file=1))
    task = session.download_task(origin.url(name, 8 * MB, rate=4 * MB), tmp_path / "dest" / name).resume()
    wait_for_bytes(task, MB)
    task.suspend()
    wait_until(lambda: task.state is bg.TaskState.SUSPENDED, what="the suspend")
    partial = Path(task._record.partial_path)
    assert partial.is_file() and partial.parent == tmp_path / "dest"
    return session, task, partial


@pytest.mark.parametrize("use_service", [False, True], ids=["in-process", "service"])
@pytest.mark.parametrize("swap", ["symlink", "hardlink"])
def test_a_partial_file_swapped_for_a_link_is_refused_and_nothing_is_touched(origin, tmp_path, use_service, swap):
    (tmp_path / "dest").mkdir()
    victim = tmp_path / "outside" / "precious.txt"
    victim.parent.mkdir()
    victim.write_bytes(b"the user's own data\n" * 1000)
    before = victim.read_bytes()
    session, task, partial = _suspended_midway(origin, tmp_path, use_service)
    try:
        partial.unlink()
        if swap == "symlink":
            partial.symlink_to(victim)
        else:
            os.link(victim, partial)
        task.resume()
        with pytest.raises(bg.UnsafeFile, match="left untouched") as caught:
            task.wait(30)
        assert str(partial) in str(caught.value)
        assert victim.read_bytes() == before  # neither truncated nor written
        assert not (tmp_path / "dest" / "data.bin").exists()  # and nothing renamed into place
        assert partial.is_symlink() if swap == "symlink" else partial.stat().st_nlink == 2
    finally:
        session.close()


def test_a_partial_file_replaced_after_the_bytes_arrived_is_never_renamed_into_place(origin, tmp_path):
    """The last check happens at the rename itself: a symlink that appears while the file
    is finishing is refused there (the victim is neither chmodded nor moved)."""
    from bgdl_nb._finalise import _rename_all

    victim = tmp_path / "victim"
    victim.write_bytes(b"x")
    victim.chmod(0o600)
    link = tmp_path / ".d.bin.0000.bgdl-part"
    link.symlink_to(victim)
    [error] = _rename_all([(str(link), tmp_path / "d.bin", None)])
    assert isinstance(error, bg.UnsafeFile)
    assert not (tmp_path / "d.bin").exists() and victim.stat().st_mode & 0o777 == 0o600


SECRET, PASSWORD, BEARER = "s3cr3t-t0ken", "hunter2-pw", "Bearer b34rer-value"


def _everything_shown(session, tasks, state_dir, identifier) -> str:
    from conftest import run_cli
    shown = [repr(session)] + [repr(t) + repr(t.original_request) + repr(t.current_request) for t in tasks]
    shown += [str(t.error) for t in tasks if t.error is not None]
    events = session.events
    shown += [events.to_csv()]
    env = {"BGDL_STATE_DIR": str(state_dir)}
    shown += [run_cli("list", "--id", identifier, env=env).stdout, run_cli("events", "--id", identifier, env=env).stdout,
              run_cli("events", "--id", identifier, "--csv", env=env).stdout]
    return "\n".join(shown)


@pytest.mark.parametrize("use_service", [False, True], ids=["in-process", "service"])
def test_secrets_in_urls_and_headers_are_never_shown(origin, tmp_path, state_dir, use_service):
    identifier = f"secrets-{use_service}"
    base = origin.base_url.replace("http://", f"http://reader:{PASSWORD}@")
    good = f"{base}/files/ok.bin?size=100000&token={SECRET}"
    missing = f"{origin.base_url}/no/such/file?X-Amz-Signature={SECRET}&session_key={SECRET}"
    session = bg.Session(bg.Configuration.background(identifier, use_service=use_service,
                                                     secret_query_params=("session_key",)))
    try:
        ok = session.download_task(good, tmp_path / "ok.bin").resume()
        header = session.download_task(bg.Request(origin.url("h.bin", 1000), headers={"Authorization": BEARER}),
                                       tmp_path / "h.bin").resume()
        bad = session.download_task(missing, tmp_path / "missing.bin").resume()
        ok.wait(30)
        header.wait(30)
        with pytest.raises(bg.HTTPStatusError) as caught:
            bad.wait(30)
        text = _everything_shown(session, [ok, header, bad], state_dir, identifier) + str(caught.value) + repr(caught.value)
    finally:
        session.close()
    for secret in (SECRET, PASSWORD, "b34rer-value"):
        assert secret not in text
    assert "REDACTED" in text and "/files/ok.bin" in text  # shown, with only the secret parts hidden
    # the real values still reached the server: redaction is only in what is shown
    [request] = origin.requests_for("ok.bin")
    assert request.query["token"] == SECRET and request.headers["Authorization"].startswith("Basic ")
    [request] = origin.requests_for("h.bin")
    assert request.headers["Authorization"] == BEARER


def test_a_url_redacted_in_a_sentence_keeps_the_punctuation_after_it():
    from bgdl_nb._redact import redact_text

    said = redact_text("  http://h/x.bin?size=4&sig=0: the link expired; see http://h/y?token=abc, "
                       "or http://u:pw@h/z?x=1:2.")
    assert said == ("  http://h/x.bin?size=4&sig=REDACTED: the link expired; see http://h/y?token=REDACTED, "
                    "or http://u:REDACTED@h/z?x=1:2.")


@pytest.mark.parametrize("headers", [{"Range": "bytes=0-99"}, {"if-range": '"x"'}, {"Accept-Encoding": "gzip"}])
def test_headers_that_would_make_the_file_wrong_are_refused_before_any_io(origin, tmp_path, headers):
    session = bg.Session()
    try:
        with pytest.raises(bg.InvalidInput, match="cannot be set on a download task"):
            session.download_task(bg.Request(origin.url("r.bin", 1000), headers=headers), tmp_path / "r.bin")
        with pytest.raises(bg.InvalidInput, match="keep one of them"):
            session.download_task(bg.Request(origin.url("r.bin", 1000).replace("://", "://u:p@"),
                                             headers={"Authorization": "Bearer x"}), tmp_path / "r.bin")
    finally:
        session.close()
    assert not origin.requests_for("r.bin") and not list(tmp_path.iterdir())


def test_fetch_writes_no_secret_into_the_manifest_beside_the_data(origin, tmp_path):
    url = origin.url("m.bin", 5000) + f"&access_token={SECRET}"
    bg.fetch(url, dest=tmp_path / "data", progress=False)
    manifest = (tmp_path / "data" / ".bgdl-manifest.json")
    assert manifest.exists() and SECRET not in manifest.read_text()
    again = origin.url("m.bin", 5000) + "&access_token=a-newer-token"  # a re-signed URL: the same file
    assert bg.fetch(again, dest=tmp_path / "data", progress=False) == [tmp_path / "data" / "m.bin"]
    assert len(origin.requests_for("m.bin")) == 1


def test_a_trickling_server_is_dropped_and_retried_from_the_durable_offset(origin, tmp_path):
    """Bytes keep coming, but below low_speed_limit: the stall timeout never fires, the
    low-speed check does (like curl's --speed-limit/--speed-time), and each new attempt
    continues where the bytes on disk end."""
    config = bg.Configuration.default(low_speed_limit=400_000, low_speed_time=0.5, retry_backoff=0.1,
                                      connections_per_file=1)
    with bg.Session(config) as session:
        task = session.download_task(origin.url("trickle.bin", 300_000, rate=40_000), tmp_path / "t.bin").resume()
        task.wait(60)
        retries = session.events.query("event == 'retry'")
    assert len(retries) >= 1 and retries["error"].str.contains("trickled at .* below low_speed_limit").all()
    requests = origin.requests_for("trickle.bin")
    assert len(requests) == len(retries) + 1
    assert all(r.headers.get("Range", "").startswith("bytes=") and r.headers["Range"] != "bytes=0-"
               for r in requests[1:])  # continued from the durable offset, never from byte 0
    assert origin.bytes_sent("trickle.bin") == 300_000
    assert sha256_of(tmp_path / "t.bin") == origin.sha256("trickle.bin", 300_000)


def test_a_retry_after_beyond_the_cap_stops_the_task_naming_the_time(origin, tmp_path):
    config = bg.Configuration.default(retry_after_cap=60)
    with bg.Session(config) as session:
        far = session.download_task(origin.url("far.bin", 1000, fail503=5, retry_after=7200), tmp_path / "f").resume()
        with pytest.raises(bg.HTTPStatusError, match=r"asked to retry after 7,200 s \(at .*\), longer than "
                                                     "retry_after_cap"):
            far.wait(30)
        near = session.download_task(origin.url("near.bin", 1000, fail503=5, retry_after=40), tmp_path / "n").resume()
        wait_until(lambda: near.waiting_reason is not None, what="the visible wait")
        assert "retry backoff until " in near.waiting_reason and "Retry-After" in near.waiting_reason
        near.cancel()


@pytest.mark.parametrize("use_service", [False, True], ids=["in-process", "service"])
@pytest.mark.parametrize("damage", ["garbage", "newer"])
def test_a_corrupt_or_newer_journal_is_moved_aside_and_the_session_starts_afresh(origin, tmp_path, use_service,
                                                                               damage):
    import sqlite3

    config = bg.Configuration.background(f"damaged-{damage}", use_service=use_service)
    journal = config.journal_path()
    journal.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if damage == "garbage":
        journal.write_bytes(b"this is not a journal\n" * 200)
    else:
        with sqlite3.connect(journal) as conn:
            conn.execute("PRAGMA user_version=999")
    kept = journal.read_bytes()
    with bg.Session(config) as session:
        path = session.download_task(origin.url("after.bin", 5000), tmp_path / "after.bin").resume().wait(30)
        events = session.events
    assert path.stat().st_size == 5000
    first = events.iloc[0]
    assert first["event"] == "journal_reset" and ".corrupt-" in first["detail"]
    assert ("could not be read" in first["detail"]) if damage == "garbage" else ("newer bgdl_nb" in first["detail"])
    [aside] = journal.parent.glob(journal.name + ".corrupt-*")
    assert aside.read_bytes() == kept  # the old journal is kept, byte for byte, for whoever wants it


def test_names_near_the_file_system_limit_work_and_longer_ones_are_refused_before_any_io(origin, tmp_path):
    long_name = "é" * 100 + "x" * 50 + ".csv"  # 254 bytes: the partial's prefix and suffix must not break it
    assert len(os.fsencode(long_name)) == 254
    with bg.Session() as session:
        path = session.download_task(origin.url("long.bin", 3 * MB), tmp_path / long_name).resume().wait(30)
        assert path.name == long_name and path.stat().st_size == 3 * MB
        too_long = "y" * 300
        with pytest.raises(bg.InvalidDestination, match="300 bytes long; this file system allows 255"):
            session.download_task(origin.url("never.bin", 1000), tmp_path / too_long)
    assert not origin.requests_for("never.bin")
    assert sorted(p.name for p in tmp_path.iterdir()) == [long_name]  # no partial left behind


@pytest.mark.parametrize("use_service", [False, True], ids=["in-process", "service"])
def test_a_file_larger_than_its_whole_disk_fails_at_once_instead_of_waiting_for_space(origin, tmp_path, use_service):
    with bg.Session(bg.Configuration.background(f"huge-{use_service}", use_service=use_service)) as session:
        task = session.download_task(origin.url("huge.bin", 1000), tmp_path / "huge.bin")
        task.count_of_bytes_client_expects_to_receive = 10**18  # an exabyte: no disk here holds it
        task.resume()
        with pytest.raises(bg.DiskFull, match=r"more than the whole file system .* can never fit"):
            task.wait(30)
    assert not origin.requests_for("huge.bin")


@pytest.fixture
def full_disk(tmp_path):
    """A real file system with no byte left: a 64 KiB tmpfs, filled (needs root, as CI has)."""
    import subprocess
    folder = tmp_path / "full"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)],
                      capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        filler = folder / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            with pytest.raises(OSError, match="No space left"):
                for _ in range(100):  # bounded: 64 KiB are full after sixteen writes
                    os.write(fd, b"\0" * 4096)
        finally:
            os.close(fd)
        yield folder, filler
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


@pytest.mark.parametrize("use_service", [False, True], ids=["in-process", "service"])
def test_a_full_disk_at_the_start_is_one_line_and_a_rerun_after_freeing_space_completes(origin, tmp_path, full_disk,
                                                                                       use_service):
    """Not even the destination's claim file fits (a new task claims its destination as it
    opens its partial file, once the first response is in): the task fails with that reason
    after that one request, never retrying it, before a byte is written; it leaves nothing
    behind that would block the next run, and the same command works once there is space."""
    from conftest import run_cli

    folder, filler = full_disk
    url = origin.url("nospace.bin", 1000)
    env = {"BGDL_IN_PROCESS": "0" if use_service else "1"}
    args = ("fetch", url, "-o", str(folder), "--id", f"full-{use_service}", "-q")
    try:
        first = run_cli(*args, env=env)
        assert first.returncode == 1, first.stderr
        assert first.stderr.strip().splitlines()[-2:] == [
            "bgdl: 1 of 1 downloads did not complete:",
            f"  {url}: no space left for {folder / 'nospace.bin'}; free some space and run the same command again"]
        # no claim is left to block the rerun (a partial file kept for the error's resume data may be)
        assert not {p.name for p in folder.iterdir()} & {".nospace.bin.bgdl-claim", ".nospace.bin.bgdl-part"}
        assert len(origin.requests_for("nospace.bin")) == 1  # a full disk is not a reason to try again
        filler.unlink()
        again = run_cli(*args, env=env)
        assert again.returncode == 0, again.stderr
        assert (folder / "nospace.bin").stat().st_size == 1000
    finally:
        if use_service:
            run_cli("service", "stop")


def test_a_journal_whose_disk_filled_works_again_once_space_is_freed_without_a_service_restart(
        origin, tmp_path, small_state_disk):
    """The journal's disk fills while the transfer service runs: each command says so in
    one line, naming the folder and what to do, and once space is back the next command
    works, in the same service, and the journal holds every file's rows."""
    from conftest import run_cli

    out = tmp_path / "out"
    assert run_cli("fetch", origin.url("first.bin", 10_000), "-o", str(out), "--id", "filling", "-q").returncode == 0
    service = (small_state_disk / "state" / "run" / "service.pid").read_text()
    filler = fill_disk(small_state_disk)
    many = [origin.url(f"more-{i}.bin", 1000) for i in range(40)]
    for args in (("--id", "filling"), ("--id", "brand-new")):  # a journal in use, and one that cannot even be made
        full = run_cli("fetch", *many, "-o", str(out), *args, "-q")
        assert full.returncode == 1
        [line] = [ln for ln in full.stderr.splitlines() if ln.startswith("bgdl: error:")]
        assert re.search(r"cannot be written: no space is left on the disk of .*state.*; free some space there "
                         r"and run the same command again", line), full.stderr
    filler.unlink()
    for identifier in ("filling", "brand-new"):
        again = run_cli("fetch", *many, "-o", str(out), "--id", identifier, "-q")
        assert again.returncode == 0, again.stderr
    assert (small_state_disk / "state" / "run" / "service.pid").read_text() == service  # no restart was needed
    assert all((out / f"more-{i}.bin").stat().st_size == 1000 for i in range(40))
    log = run_cli("events", "--id", "filling", "--csv")
    assert log.returncode == 0 and log.stdout.count(",finished,") == 41, log.stdout[-2000:]


def test_one_destination_has_one_writer_across_sessions_and_processes(origin, tmp_path):
    """An in-process session and the transfer service (another process) cannot both write
    one file: the second is refused, naming the first, until the first is done."""
    dest = tmp_path / "shared.bin"
    with bg.Session(bg.Configuration.default(connections_per_file=1)) as first:
        task = first.download_task(origin.url("shared.bin", 8 * MB, rate=4 * MB), dest).resume()
        wait_for_bytes(task, 1)
        with bg.Session(bg.Configuration.background("second-writer", use_service=True)) as second:
            with pytest.raises(bg.InvalidDestination, match=r"claimed by task \d+ of session \(not journaled\)"):
                second.download_task(origin.url("other.bin", 1000), dest, overwrite=True)
            task.wait(60)
            again = second.download_task(origin.url("other.bin", 1000), dest, overwrite=True).resume().wait(30)
    assert again == dest and dest.stat().st_size == 1000  # once the first was done, the second could write
    assert not list(tmp_path.glob(".*bgdl-claim*"))  # no claim outlives its task


def test_a_claim_whose_task_can_no_longer_run_is_taken_over(origin, tmp_path):
    import json
    import socket

    from bgdl_nb._claims import claim_path

    dest = tmp_path / "orphan.bin"
    gone = tmp_path / "state-that-was-deleted" / "sessions" / "old.sqlite3"
    claim_path(dest).write_text(json.dumps({"journal": str(gone), "identifier": "old", "task": 3, "pid": 1,
                                            "host": socket.gethostname()}))
    with bg.Session() as session:
        assert session.download_task(origin.url("orphan.bin", 1000), dest).resume().wait(30) == dest
    assert not claim_path(dest).exists()


def test_a_claim_file_is_never_seen_half_written(tmp_path):
    # a task claims at its first run while other tasks are being created and judge the claims
    # already there: one that read an empty claim refused its destination as "being claimed"
    from bgdl_nb._claims import claim, claim_path

    def read(dest: Path) -> bytes | None:
        try:
            return claim_path(dest).read_bytes()
        except FileNotFoundError:
            return None

    destinations = [tmp_path / f"f{i}" for i in range(2000)]
    assert not read_empty_while_claiming(
        destinations, read, lambda dest: claim(dest, {"journal": None, "identifier": "race", "task": 1,
                                                      "engine": "nonce"}))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(claim_path(d).name for d in destinations)


def test_bytes_altered_while_no_process_held_the_partial_file_are_caught_before_continuing(origin, tmp_path):
    """No digest was given, so only bgdl_nb's own record of the bytes it wrote can tell: a
    byte changed on disk between two runs makes the next run continue from the last
    verified point before it, never from the altered bytes."""
    size = 12 * MB
    config = bg.Configuration.background("altered", use_service=False, connections_per_file=1)
    with bg.Session(config) as session:
        task = session.download_task(origin.url("altered.bin", size, rate=6 * MB), tmp_path / "altered.bin").resume()
        wait_for_bytes(task, 9 * MB)
        task.suspend()
        wait_until(lambda: task.state is bg.TaskState.SUSPENDED, what="the suspend")
        partial = Path(task._record.partial_path)
    stopped_at = partial.stat().st_size
    with open(partial, "r+b") as f:  # someone edits the partial file while no process holds it
        f.seek(8 * MB + 12345)
        byte = f.read(1)
        f.seek(8 * MB + 12345)
        f.write(bytes([byte[0] ^ 0xFF]))
    with bg.Session(config) as session:
        [task] = session.current_tasks() or session.all_tasks()
        path = task.resume().wait(60)
        restarted = session.events.query("event == 'restarted'")
    assert sha256_of(path) == origin.sha256("altered.bin", size)  # the altered byte did not survive
    assert len(restarted) == 1 and "changed on disk" in restarted["detail"].iloc[0]
    assert restarted["total_bytes_written"].iloc[0] == 8 * MB  # the last verified point before the change
    second = origin.requests_for("altered.bin")[-1]
    assert second.headers["Range"] == f"bytes={8 * MB}-" and stopped_at > 8 * MB + 12345


def test_bytes_altered_past_the_newest_mark_of_a_killed_process_are_fetched_again(origin, tmp_path, state_dir):
    """A process killed with SIGKILL marks nothing at the end: the bytes it journaled past
    its newest mark cannot be checked, so the next run fetches them again instead of
    trusting them (4 KiB altered there used to end in a corrupt file and exit 0)."""
    import signal
    import subprocess
    import sys

    from bgdl_nb._journal import read_journal

    size = 3 * MB
    url = origin.url("killed.bin", size, rate=MB)
    child = subprocess.Popen([sys.executable, "-c", "import sys, bgdl_nb as bg; bg.fetch(sys.argv[1], sys.argv[2], "
                              "identifier='killed', progress=False)", url, str(tmp_path)],
                             env={**os.environ, "BGDL_IN_PROCESS": "1"})
    journal = state_dir / "sessions" / "killed.sqlite3"

    def journaled() -> int:
        try:
            tasks, _ = read_journal(journal, "killed")
        except Exception:
            return 0
        return tasks[0].offset if tasks else 0

    try:
        wait_until(lambda: journaled() >= MB + MB // 2, timeout=30, what="1.5 MiB journaled")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    [partial] = tmp_path.glob(".killed.bin*.bgdl-part")
    at = journaled() - 64 * 1024  # bytes the journal counts, past the 1 MiB mark
    with open(partial, "r+b") as f:
        f.seek(at)
        f.write(bytes(4096))
    [path] = bg.fetch(url, tmp_path, identifier="killed", progress=False,
                      configuration=bg.Configuration.background("killed", use_service=False))
    assert sha256_of(path) == origin.sha256("killed.bin", size)
    ranges = [r.headers.get("Range") for r in origin.requests_for("killed.bin")]
    assert ranges[0] is None and len(ranges) == 2, ranges
    continued = int(ranges[1].split("=")[1].rstrip("-"))
    assert 0 < continued <= at, ranges  # from a verified point before the altered bytes, not from byte 0


FAULTS = [  # (module, attribute): one step of a task's life in the engine each
    ("bgdl_nb._transfer.AiohttpTransport", "open"),
    ("bgdl_nb._attempt", "decide"),
    ("bgdl_nb._attempt.Attempt", "check_partial"),
    ("bgdl_nb._attempt.Attempt", "_receive"),
    ("bgdl_nb._attempt", "finalise"),
    ("bgdl_nb._finalise", "_rename_all"),
    ("bgdl_nb._files.HashWorker", "update"),
    ("bgdl_nb._scheduler.Scheduler", "poll"),
    ("bgdl_nb._engine_base.EngineBase", "_set"),
]


@pytest.mark.parametrize("where", FAULTS, ids=[f"{m.rsplit('.', 1)[-1]}.{a}" for m, a in FAULTS])
def test_an_unexpected_exception_at_any_engine_step_ends_its_task_visibly(origin, tmp_path, monkeypatch, where):
    """A bug at any step fails the task it hit with a clear error; the session goes on
    (another task completes) and nothing stays RUNNING for ever."""
    import importlib

    module_name, attribute = where
    head, _, last = module_name.rpartition(".")
    owner = getattr(importlib.import_module(head), last) if last[0].isupper() else importlib.import_module(module_name)
    real = getattr(owner, attribute)
    calls = {"n": 0}

    def faulty(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError(f"injected fault in {attribute}")
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, attribute, faulty)
    with bg.Session(bg.Configuration.default(connections_per_file=1, max_retries=1, retry_backoff=0.1)) as session:
        # larger than INLINE_HASH_BYTES, so the chunks go through the hash thread. The second
        # starts once the first has ended: two files finishing together share one batch of
        # renames, and a fault there rightly fails both
        outcomes = []
        tasks = []
        for name in ("first.bin", "second.bin"):
            task = session.download_task(origin.url(name, 2_000_000), tmp_path / name).resume()
            tasks.append(task)
            try:
                task.wait(30)
                outcomes.append("done")
            except bg.BgdlError as exc:
                outcomes.append(type(exc).__name__)
        first, second = tasks
        assert calls["n"] >= 1
        assert all(t.state is bg.TaskState.COMPLETED for t in (first, second))  # none left running
        assert "done" in outcomes  # the session went on
        late = session.download_task(origin.url("late.bin", 1000), tmp_path / "late.bin").resume()
        assert late.wait(30).stat().st_size == 1000


def test_fetch_after_a_crash_between_the_rename_and_the_journal_knows_the_file_is_ours(origin, tmp_path, state_dir):
    """The process died after renaming a finished file into place but before journaling
    'completed' (and before the manifest): the journal's intent (digest and location)
    vouches for the file, so a re-run adopts it instead of refusing it as a stranger."""
    import sqlite3

    from bgdl_nb._manifest import MANIFEST_NAME

    url, dest = origin.url("crashed.bin", 200_000), tmp_path / "data"
    [path] = bg.fetch(url, dest=dest, identifier="crash-window", progress=False)
    (dest / MANIFEST_NAME).unlink()
    journal = bg.Configuration.background("crash-window").journal_path()
    with sqlite3.connect(journal) as conn:  # back to the moment after the rename: intent journaled, state not yet
        conn.execute("UPDATE tasks SET state = 'running', finished_at = NULL")
        conn.execute("DELETE FROM events WHERE event IN ('finished', 'completed')")
    assert bg.fetch(url, dest=dest, identifier="crash-window", progress=False) == [path]
    assert len(origin.requests_for("crashed.bin")) == 1  # adopted, not fetched again
    assert sha256_of(path) == origin.sha256("crashed.bin", 200_000)


def test_two_fetch_processes_for_one_identifier_share_the_transfer_and_both_succeed(origin, tmp_path, state_dir):
    import subprocess
    import sys

    urls = [origin.url(f"twin-{i}.bin", 4 * MB, rate=8 * MB) for i in range(12)]
    command = [sys.executable, "-m", "bgdl_nb.cli", "fetch", *urls, "-o", str(tmp_path / "out"), "--id", "twins"]
    env = {**os.environ, "BGDL_STATE_DIR": str(state_dir)}
    procs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    try:
        results = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, out + err
    for i in range(12):
        assert sha256_of(tmp_path / "out" / f"twin-{i}.bin") == origin.sha256(f"twin-{i}.bin", 4 * MB)
        assert origin.bytes_sent(f"twin-{i}.bin") <= 4 * MB + MB  # one transfer per file, not two


def test_resume_data_carries_no_secret_and_still_resumes_with_the_credentials(origin, tmp_path, state_dir):
    url = origin.url("vault.bin", 8 * MB, rate=4 * MB) + f"&token={SECRET}"
    request = bg.Request(url, headers={"Authorization": BEARER})
    with bg.Session(bg.Configuration.default(connections_per_file=1)) as session:
        task = session.download_task(request, tmp_path / "vault.bin").resume()
        wait_for_bytes(task, MB)
        data = task.cancel_by_producing_resume_data().result(30)
    assert SECRET.encode() not in data and b"b34rer-value" not in data and b"REDACTED" in data
    [entry] = (state_dir / "secrets").iterdir()  # the private store holds them
    assert entry.stat().st_mode & 0o777 == 0o600 and (state_dir / "secrets").stat().st_mode & 0o777 == 0o700
    with bg.Session(bg.Configuration.default(connections_per_file=1)) as session:
        again = session.download_task_with_resume_data(data)
        assert SECRET not in repr(again)
        path = again.resume().wait(60)
    last = origin.requests_for("vault.bin")[-1]
    assert last.query["token"] == SECRET and last.headers["Authorization"] == BEARER
    assert last.headers["Range"] != "bytes=0-" and sha256_of(path) == origin.sha256("vault.bin", 8 * MB)


def test_the_command_line_reads_an_unreadable_journal_as_a_person_would(state_dir):
    from conftest import run_cli

    journal = bg.Configuration.background("broken").journal_path()
    journal.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    journal.write_bytes(b"not a journal" * 100)
    env = {"BGDL_STATE_DIR": str(state_dir)}
    one = run_cli("list", "--id", "broken", env=env)
    assert one.returncode != 0 and "Traceback" not in one.stderr
    assert "cannot be read" in one.stderr and "moves it aside" in one.stderr
    listing = run_cli("list", env=env)
    assert listing.returncode == 0 and "journal unreadable" in listing.stdout


def test_bytes_altered_in_a_split_file_while_no_process_held_it_are_fetched_again(origin, tmp_path):
    """One byte is altered in every region a split download had written when its process
    let go (the prefix its marks vouch for, and each region past it): the next run finds
    each one, fetches those regions again, and the file is the origin's, byte for byte."""
    from bgdl_nb._journal import read_journal

    size = 32 * 1024 * 1024
    url = origin.url("altered-split.bin", size, rate=2 * 1024 * 1024)
    config = bg.Configuration.background("altered-split", use_service=False, connections_per_file=4)
    with bg.Session(config) as session:
        task = session.download_task(url, tmp_path / "altered-split.bin").resume()
        wait_until(lambda: task._record.marks and task.count_of_bytes_received >= 12 * 1024 * 1024,
                   timeout=60, what="12 MiB and a journaled mark")
    [record], _ = read_journal(config.journal_path(), "altered-split")
    written = [(s, p) for s, _e, p, *_crc in record.segments if p > s]
    assert any(len(g) == 3 for g in record.segments) and len(written) >= 2  # a vouched prefix, and regions past it
    with open(record.partial_path, "r+b") as f:
        for start, pos in written:
            f.seek(start + (pos - start) // 2)
            byte = f.read(1)
            f.seek(start + (pos - start) // 2)
            f.write(bytes([byte[0] ^ 0xFF]))
    served = origin.bytes_sent("altered-split.bin")
    with bg.Session(config) as session:
        [task] = session.all_tasks()
        path = task.resume().wait(90)
        restarted = session.events.query("event == 'restarted'")
    assert sha256_of(path) == origin.sha256("altered-split.bin", size)
    assert len(restarted) == 1 and "changed on disk" in restarted["detail"].iloc[0]
    refetched = origin.bytes_sent("altered-split.bin") - served - (size - record.offset)
    assert refetched <= sum(p - s for s, p in written) + 4 * 256 * 1024  # only the altered regions came again


def _claim_from_another_machine(dest: Path, age: float, lease: float = 120) -> None:
    """A claim file as a task on another machine sharing this storage writes it, ``age``
    seconds after its engine last refreshed it. Its journal path exists nowhere here."""
    import json
    import time

    from bgdl_nb._claims import claim_path

    path = claim_path(dest)
    path.write_text(json.dumps({"journal": "/home/shared/.local/state/bgdl_nb/sessions/job.sqlite3",
                                "identifier": "job", "task": 7, "pid": 4242, "host": "node-b.cluster",
                                "lease": lease}))
    os.utime(path, (time.time() - age, time.time() - age))


def test_a_claim_from_another_machine_holds_while_it_is_refreshed_and_is_taken_over_once_it_lapses(origin, tmp_path):
    dest = tmp_path / "shared-storage.bin"
    _claim_from_another_machine(dest, age=5)
    with bg.Session() as session:
        with pytest.raises(bg.InvalidDestination, match=r"on node-b\.cluster\).*refreshed 5 s ago"):
            session.download_task(origin.url("shared-storage.bin", 1000), dest)
        _claim_from_another_machine(dest, age=300)  # that machine stopped refreshing it: it died, or let go
        assert session.download_task(origin.url("shared-storage.bin", 1000), dest).resume().wait(30) == dest
    from bgdl_nb._claims import claim_path
    assert not claim_path(dest).exists()


def test_a_running_task_keeps_its_claim_fresh_for_other_machines(origin, tmp_path):
    import time

    from bgdl_nb._claims import carrier_name

    dest = tmp_path / "long.bin"
    carrier = Path(carrier_name(dest))  # the partial file carries the claim
    # the server stops sending after 64 KiB and keeps the connection: no write makes the file
    # look fresh, only the engine's refresh of its claim can
    url = origin.url("long.bin", 6 * 1024 * 1024, stall_after=65536, stall_seconds=30)
    with bg.Session(bg.Configuration.default(claim_lease=2, connections_per_file=1, low_speed_limit=0)) as session:
        task = session.download_task(url, dest).resume()
        wait_for_bytes(task, 65536)
        claim = json.loads(os.getxattr(carrier, "user.bgdl_nb.claim"))
        assert claim["task"] == task.task_identifier and claim["lease"] == 2
        os.utime(carrier, (time.time() - 60, time.time() - 60))  # as if its engine had stalled
        wait_until(lambda: time.time() - carrier.stat().st_mtime < 2 or task.done(), timeout=10,
                   what="the claim refreshed")
        assert not task.done()
        task.cancel()


def test_a_task_whose_lapsed_claim_another_machine_took_over_stops_before_writing(origin, tmp_path):
    """The transfer service stopped (its tasks' claims lapse); another machine took the
    destination over; when the task is resumed here it finds that out and fails with the
    reason, never writing over the other machine's file."""
    dest = tmp_path / "taken.bin"
    config = bg.Configuration.background("lapsed", use_service=False)
    with bg.Session(config) as session:
        session.download_task(origin.url("taken.bin", 4096), dest)  # claimed, not started
    _claim_from_another_machine(dest, age=1)
    dest.write_bytes(b"the other machine's file")
    with bg.Session(config) as session:
        [task] = session.all_tasks()
        with pytest.raises(bg.InvalidDestination, match=r"node-b\.cluster"):
            task.resume().wait(30)
    assert dest.read_bytes() == b"the other machine's file"
    assert origin.requests_for("taken.bin") == []


class _RawServer:
    """A server that writes its response bytes as given: header bytes no HTTP library would
    produce (Latin-1, 0xFF), as old servers send them. Port 0 on loopback; it stops with the test."""

    def __init__(self, head: bytes, body: bytes) -> None:
        import socket
        import threading

        self.head, self.body = head, body
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.requests = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(5)
                try:
                    conn.recv(65536)
                    self.requests += 1
                    conn.sendall(self.head % len(self.body) + b"Connection: close\r\n\r\n" + self.body)
                except OSError:
                    pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.mark.parametrize("use_service", [False, True], ids=["in-process", "service"])
@pytest.mark.parametrize("head", [
    b'HTTP/1.1 200 OK\r\nContent-Length: %d\r\nETag: "caf\xe9"\r\n'
    b'Content-Disposition: attachment; filename="caf\xe9.csv"\r\n',
    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Odd: \xff\xfe\x80\r\nLast-Modified: Mon, 07 D\xe9c 2026\r\n",
], ids=["latin1-etag-and-name", "bytes-that-are-no-text"])
def test_header_bytes_that_are_not_utf8_end_in_a_file(tmp_path, state_dir, use_service, head):
    """A task once stayed RUNNING at 0 bytes for ever in the service (and failed as an
    internal error in process) on one Latin-1 byte in a header: now the headers are read
    as ISO-8859-1, the file completes, and a server name with such a byte is made safe."""
    body = bytes(range(256)) * 400
    server = _RawServer(head, body)
    try:
        config = bg.Configuration.background(f"latin-{use_service}", use_service=use_service)
        [path] = bg.fetch(f"http://127.0.0.1:{server.port}/export", tmp_path / "out", configuration=config,
                          name_from_server=True, progress=False, timeout=60)
    finally:
        server.stop()
    assert path.read_bytes() == body
    if b"filename" in head:
        assert path.name == "caf_.csv"
        import json
        recorded = json.loads((tmp_path / "out" / ".bgdl-manifest.json").read_text(encoding="utf-8"))
        assert recorded["files"]["caf_.csv"]["validator"] == '"café"'  # the server's bytes, read as Latin-1


@pytest.mark.parametrize("use_service", [False, True], ids=["in-process", "service"])
def test_a_malformed_chunked_body_is_the_servers_network_error_not_ours(tmp_path, state_dir, use_service):
    """A chunk size that is not hex, after 64 KiB of good chunks: retried as a NetworkError
    that names what the server sent, and never reported as an internal error of bgdl_nb."""
    good = b"".join(b"1000\r\n" + bytes([i % 256]) * 4096 + b"\r\n" for i in range(16))
    server = _RawServer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Body: %d\r\n", good + b"zz\r\nbad\r\n")
    try:
        config = bg.Configuration.background(f"chunked-{use_service}", use_service=use_service, max_retries=1,
                                             retry_backoff=0.05)
        with pytest.raises(bg.FetchError) as raised:
            bg.fetch(f"http://127.0.0.1:{server.port}/broken", tmp_path / "out", configuration=config,
                     progress=False, timeout=60)
    finally:
        server.stop()
    [error] = raised.value.errors.values()
    assert isinstance(error, bg.NetworkError) and "internal error" not in str(error), repr(error)
    assert re.search(r"chunk|payload|transfer", str(error), re.I), str(error)
    assert server.requests == 2  # tried again once, as max_retries says
    assert not (tmp_path / "out" / "broken").exists()
