"""A shared machine, played for real: a second user (made here with ``useradd``, removed
afterwards) plants what another person on a JupyterHub server or an HPC login node could
plant, and bgdl_nb, running as this user, must neither run it, talk to it, adopt it,
follow it nor wait for it.

The other user acts in forked children that drop to its uid and gid (root's interpreter
lives under /root, which that user cannot enter, so it cannot start a Python of its own).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pwd
import select
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import bgdl_nb as bg
from bgdl_nb._claims import carrier_name, claim_path
from bgdl_nb._hosts.service.protocol import runtime_dir

OTHER = "bgdl-other"


@pytest.fixture(scope="module")
def other() -> Iterator[pwd.struct_passwd]:
    """A real second user of this machine, for the module's tests; removed afterwards."""
    if os.geteuid() != 0:
        if os.environ.get("BGDL_REQUIRE_OTHER_USER"):
            pytest.fail("these tests need root to create a second user (BGDL_REQUIRE_OTHER_USER is set)")
        pytest.skip("needs root to create a second user with useradd")
    with contextlib.suppress(KeyError):
        pwd.getpwnam(OTHER)
        subprocess.run(["userdel", OTHER], check=False, capture_output=True)  # left by an interrupted run
    subprocess.run(["useradd", "--system", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin",
                    OTHER], check=True, capture_output=True)
    try:
        yield pwd.getpwnam(OTHER)
    finally:
        subprocess.run(["userdel", OTHER], check=False, capture_output=True)


def _become(user: pwd.struct_passwd) -> None:
    os.setgroups([])
    os.setgid(user.pw_gid)
    os.setuid(user.pw_uid)


def as_other(user: pwd.struct_passwd, action: Callable[[], Any], timeout: float = 20) -> Any:
    """Run ``action`` as ``user`` in a forked child and return what it returned (JSON)."""
    with Child(user, action) as child:
        return child.result(timeout)


class Child:
    """``action`` running as ``user`` in a forked child, concurrently with the test.
    ``action`` gets a ``stopped()`` callable and a ``ready()`` to call once it is set up;
    :meth:`result` tells it to stop and returns what it returned."""

    def __init__(self, user: pwd.struct_passwd, action: Callable[..., Any]) -> None:
        self.user, self.action = user, action

    def __enter__(self) -> Child:
        out_r, out_w = os.pipe()
        ready_r, ready_w = os.pipe()
        stop_r, self._stop_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the other user
            try:
                os.close(out_r)
                os.close(ready_r)
                os.close(self._stop_w)  # else the child would never see the parent close its end
                _become(self.user)
                stopped = lambda: bool(select.select([stop_r], [], [], 0)[0])
                result = self.action(stopped=stopped, ready=lambda: os.write(ready_w, b"r"), stop_fd=stop_r)
                os.write(ready_w, b"r")
                os.write(out_w, json.dumps({"ok": result}).encode())
            except BaseException as exc:  # said to the parent, so a failure names its cause
                os.write(ready_w, b"r")
                os.write(out_w, json.dumps({"failed": repr(exc)}).encode())
            finally:
                os._exit(0)
        os.close(out_w)
        os.close(ready_w)
        os.close(stop_r)
        self._out, self._ready = out_r, ready_r
        got, _, _ = select.select([ready_r], [], [], 20)
        assert got, "the other user's child did not get ready within 20 s"
        return self

    def result(self, timeout: float = 20) -> Any:
        with contextlib.suppress(OSError):
            os.close(self._stop_w)
        got, _, _ = select.select([self._out], [], [], timeout)
        assert got, f"the other user's child did not finish within {timeout} s"
        with os.fdopen(self._out) as f:
            reply = json.loads(f.read() or '{"failed": "nothing"}')
        self._out = -1
        assert "failed" not in reply, f"the other user's child failed: {reply['failed']}"
        return reply["ok"]

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            os.close(self._stop_w)
        for fd in (self._out, self._ready):
            with contextlib.suppress(OSError):
                os.close(fd)
        os.waitpid(self.pid, 0)


@pytest.fixture
def shared(other: pwd.struct_passwd) -> Iterator[Path]:
    """A folder both users can write in, as a shared project folder is (the suite's
    tmp_path is private to root)."""
    base = Path(tempfile.mkdtemp(prefix="bgdl-shared-"))
    os.chmod(base, 0o777)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def _long_state_dir(base: Path) -> Path:
    """A state directory whose socket path is too long, so the socket moves to /tmp."""
    path = base / ("a-state-directory-deep-enough-" * 3) / "state"
    path.mkdir(parents=True, mode=0o700)
    assert runtime_dir(path).parent == Path(tempfile.gettempdir())
    return path


def _fake_service(path: str) -> Callable[..., Any]:
    """The other user's listener at ``path``: it answers the hello as a service would and
    counts every byte a client sends it."""

    def listen(stopped: Callable[[], bool], ready: Callable[[], None], stop_fd: int) -> dict[str, Any]:
        server = socket.socket(socket.AF_UNIX)
        server.bind(path)
        os.chmod(path, 0o777)
        server.listen(4)
        ready()
        received = b""
        while not stopped():
            readable, _, _ = select.select([server, stop_fd], [], [], 15)
            if server not in readable:
                break
            conn, _ = server.accept()
            conn.settimeout(3)
            with contextlib.suppress(OSError):
                while chunk := conn.recv(65536):
                    received += chunk
                    if b'"hello"' in chunk:
                        body = json.dumps({"id": 1, "ok": True, "result": {"protocol": 2}}).encode()
                        conn.sendall(len(body).to_bytes(4, "big") + body)
            conn.close()
        return {"bytes": len(received), "sample": received[:200].decode(errors="replace")}

    return listen


# 1. code planted in the working folder ---------------------------------------------------


def _plant_package(folder: Path, marker: Path) -> Callable[..., Any]:
    def plant(**_: Any) -> None:
        folder.mkdir(mode=0o777)
        os.chmod(folder, 0o777)  # a shared project folder: everyone may write in it
        for name in ("bgdl_nb", "aiohttp"):
            package = folder / name
            package.mkdir()
            (package / "__init__.py").write_text(
                f"open({str(marker)!r}, 'a').write('imported {name} as uid %d\\n' % __import__('os').getuid())\n")
            (package / "cli.py").write_text("")
        os.chmod(folder, 0o777)
    return plant


def test_a_package_planted_in_the_working_folder_never_runs(other, shared, origin, state_dir):
    folder, marker = shared / "project", shared / "marker"
    as_other(other, _plant_package(folder, marker))
    url = origin.url("plant.bin", 2 * 1024 * 1024)
    bgdl = shutil.which("bgdl") or pytest.fail("the bgdl console script is not installed")
    out = shared / "out"
    done = subprocess.run([bgdl, "fetch", url, "-o", str(out), "--id", "planted", "--quiet"], cwd=folder,
                          capture_output=True, text=True, timeout=120)
    assert not marker.exists(), f"planted code ran: {marker.read_text()}"
    assert done.returncode == 0, done.stderr
    assert hashlib.sha256((out / "plant.bin").read_bytes()).hexdigest() == origin.sha256("plant.bin", 2 * 1024 * 1024)
    status = bg.service_status(state_dir)  # the transfer service was started from that folder, and runs
    assert status is not None and status["pid"] > 0


def test_the_demo_origin_process_ignores_the_working_folder(other, shared, monkeypatch):
    from bgdl_nb.demo.process import start_origin_process
    folder, marker = shared / "project", shared / "marker"
    as_other(other, _plant_package(folder, marker))
    monkeypatch.chdir(folder)
    info = shared / "mine" / "origin.json"
    info.parent.mkdir()
    remote = start_origin_process(info, idle_exit=30)
    try:
        assert remote.alive() and not marker.exists()
    finally:
        remote.stop()


def test_an_address_file_another_user_wrote_is_not_trusted(other, shared, monkeypatch):
    from bgdl_nb.demo.process import RemoteOrigin, start_origin_process
    info = shared / "demo-origin.json"
    victim = subprocess.Popen(["sleep", "60"])  # a process of ours the planted file names
    try:
        def plant(**_: Any) -> None:
            info.write_text(json.dumps({"base_url": "http://127.0.0.1:9", "pid": victim.pid}))
        as_other(other, plant)
        with pytest.raises(bg.UnsafeLocation, match=f"belongs to {OTHER}"):
            RemoteOrigin.load(info)
        remote = start_origin_process(info, idle_exit=30)  # starts its own, in place of the planted file
        try:
            assert remote.pid != victim.pid and info.stat().st_uid == os.getuid()
        finally:
            remote.stop()
        assert victim.poll() is None  # never signalled
    finally:
        victim.kill()
        victim.wait()


# 2. a predictable socket folder in /tmp ---------------------------------------------------


@pytest.mark.parametrize("mode", [0o700, 0o777])
def test_a_socket_folder_another_user_made_in_tmp_receives_nothing(other, shared, monkeypatch, mode):
    state = _long_state_dir(shared)
    monkeypatch.setenv("BGDL_STATE_DIR", str(state))
    run = runtime_dir(state)
    shutil.rmtree(run, ignore_errors=True)

    def listen(**kw: Any) -> Any:
        run.mkdir(mode=mode)
        os.chmod(run, mode)
        return _fake_service(str(run / "service.sock"))(**kw)

    try:
        with Child(other, listen) as fake:
            config = bg.Configuration.background("secrets", proxy="http://user:pw@127.0.0.1:9")
            with pytest.raises(bg.UnsafeLocation) as refused:
                bg.Session(config)
            heard = fake.result()
        assert heard["bytes"] == 0, f"the fake service received: {heard['sample']}"
        assert str(run) in str(refused.value) and OTHER in str(refused.value)
        assert os.lstat(run).st_uid == other.pw_uid and not (run / "service.log").exists()  # never written into
        with pytest.raises(bg.UnsafeLocation):
            bg.service_status(state)  # the command line's status refuses it too
    finally:
        shutil.rmtree(run, ignore_errors=True)


def test_a_socket_served_by_another_user_is_refused_before_a_byte(other, monkeypatch):
    """With the ownership checks turned off (a file system that cannot show owners), the
    client still asks the kernel who serves the socket (SO_PEERCRED) before it speaks."""
    base = Path(tempfile.mkdtemp(prefix="bgdl-noowner-", dir="/var/tmp"))  # not under /tmp: the opt-out applies
    try:
        os.chmod(base, 0o777)
        state = base / "state"
        monkeypatch.setenv("BGDL_STATE_DIR", str(state))
        monkeypatch.setenv("BGDL_ALLOW_INSECURE_STATE_DIR", "1")

        def listen(**kw: Any) -> Any:
            (state / "run").mkdir(parents=True, mode=0o777)
            os.chmod(state, 0o777)
            os.chmod(state / "run", 0o777)
            return _fake_service(str(state / "run" / "service.sock"))(**kw)

        with Child(other, listen) as fake:
            with pytest.raises(bg.UnsafeLocation, match=f"served by {OTHER}.*nothing was sent"):
                bg.Session(bg.Configuration.background("peer"))
            heard = fake.result()
        assert heard["bytes"] == 0, f"the fake service received: {heard['sample']}"
    finally:
        shutil.rmtree(base, ignore_errors=True)


# 3. a state directory or key another user made --------------------------------------------


@pytest.mark.parametrize("use_service", [False, True])
def test_a_state_directory_another_user_made_is_refused(other, shared, monkeypatch, use_service):
    state = shared / "state"

    def plant(**_: Any) -> None:
        state.mkdir(mode=0o777)
        os.chmod(state, 0o777)
        (state / "resume-data.key").write_bytes(b"k" * 32)
    as_other(other, plant)
    monkeypatch.setenv("BGDL_STATE_DIR", str(state))
    with pytest.raises(bg.UnsafeLocation) as refused:
        bg.Session(bg.Configuration.background("foreign", use_service=use_service))
    message = str(refused.value)
    assert str(state) in message and f"belongs to {OTHER}" in message and "BGDL_STATE_DIR" in message
    assert sorted(p.name for p in state.iterdir()) == ["resume-data.key"]  # nothing of ours went in


def test_a_state_directory_open_to_others_is_refused_with_its_mode(shared, monkeypatch):
    state = shared / "state"
    state.mkdir(mode=0o777)
    os.chmod(state, 0o777)
    monkeypatch.setenv("BGDL_STATE_DIR", str(state))
    with pytest.raises(bg.UnsafeLocation, match=r"mode 0777.*chmod 700"):
        bg.Session(bg.Configuration.background("open", use_service=False))
    assert list(state.iterdir()) == []  # and it was not chmod-ed either
    assert state.stat().st_mode & 0o777 == 0o777


def test_a_key_another_user_planted_is_refused_even_once_the_folder_is_private(other, shared, monkeypatch):
    state = shared / "state"
    state.mkdir(mode=0o777)
    os.chmod(state, 0o777)
    as_other(other, lambda **_: (state / "resume-data.key").write_bytes(b"k" * 32))
    os.chmod(state, 0o700)  # the owner tightened the folder later: the planted key is still theirs
    monkeypatch.setenv("BGDL_STATE_DIR", str(state))
    with pytest.raises(bg.UnsafeLocation, match=rf"resume-data signing key {state}/resume-data.key belongs to {OTHER}"):
        bg.Session(bg.Configuration.background("key", use_service=False))


def test_a_state_directory_of_ours_is_still_used(tmp_path, monkeypatch, origin):
    """The checks refuse only what they should: a fresh state directory (and its folders) is
    made private and works, in both hosts."""
    state = tmp_path / "fresh" / "state"
    monkeypatch.setenv("BGDL_STATE_DIR", str(state))
    for use_service in (False, True):
        with bg.Session(bg.Configuration.background(f"ok{use_service}", use_service=use_service)) as session:
            task = session.download_task(origin.url(f"ok{use_service}", 1000), tmp_path / f"ok{use_service}")
            task.resume()
            task.wait(timeout=60)
    for folder in (state, state / "sessions", state / "run"):
        assert folder.stat().st_mode & 0o777 == 0o700 and not folder.is_symlink()
    assert (state / "resume-data.key").stat().st_mode & 0o777 == 0o600
    bg_stop = __import__("bgdl_nb._hosts.service.client", fromlist=["stop_service"]).stop_service
    bg_stop(state)


# 4. a symbolic link planted at the fallback runtime folder --------------------------------


def test_a_symlink_at_the_socket_folder_is_refused_and_its_target_untouched(other, shared, monkeypatch):
    state = _long_state_dir(shared)
    monkeypatch.setenv("BGDL_STATE_DIR", str(state))
    run = runtime_dir(state)
    shutil.rmtree(run, ignore_errors=True)
    target = shared / "my-folder"  # a folder of ours the other user can name
    target.mkdir(mode=0o755)
    os.chmod(target, 0o755)
    (target / "notes.txt").write_text("mine")
    as_other(other, lambda **_: os.symlink(target, run))
    try:
        with pytest.raises(bg.UnsafeLocation, match="is a symbolic link"):
            bg.Session(bg.Configuration.background("link"))
        assert target.stat().st_mode & 0o777 == 0o755  # not chmod-ed
        assert sorted(p.name for p in target.iterdir()) == ["notes.txt"]  # no socket, pid, lock or log
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(run)


# 5. a lock another user holds --------------------------------------------------------------


def test_a_lock_another_user_holds_in_tmp_never_blocks_a_takeover(other, origin, tmp_path):
    """Taking over a stale claim once locked a file in /tmp/bgdl_nb-<uid>/, a folder anyone
    could make first; the other user makes it and holds every lock in it."""
    folder = Path(tempfile.gettempdir()) / f"bgdl_nb-{os.getuid()}"
    shutil.rmtree(folder, ignore_errors=True)

    def hold(stopped: Callable[[], bool], ready: Callable[[], None], stop_fd: int) -> None:
        import fcntl
        folder.mkdir(mode=0o777)
        os.chmod(folder, 0o777)
        fd = os.open(folder / "claims.lock", os.O_CREAT | os.O_RDWR, 0o666)
        fcntl.flock(fd, fcntl.LOCK_EX)
        ready()
        select.select([stop_fd], [], [], 60)

    dest = tmp_path / "stale.bin"
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs: its claim is stale
    claim = claim_path(dest)
    claim.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    os.chmod(claim, 0o600)
    try:
        with Child(other, hold) as holder:
            with bg.Session(bg.Configuration.default()) as session:
                task = session.download_task(origin.url("stale.bin", 4096), dest)  # takes the stale claim over
                task.resume()
                assert task.wait(timeout=60) == dest
            holder.result()
        assert dest.stat().st_size == 4096
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("carried", [False, True], ids=["claim-file", "carrier"])
def test_two_takeovers_of_one_stale_claim_leave_one_claim(tmp_path, carried):
    """Without a shared lock folder, two processes that take over one stale claim at once
    still end with exactly one of them holding it (a claim file, or a partial file that
    carries the claim)."""
    dest = tmp_path / "race.bin"
    held = Path(carrier_name(dest)) if carried else claim_path(dest)

    def stale(body: str) -> None:
        if carried:
            held.write_bytes(b"")
            os.setxattr(held, "user.bgdl_nb.claim", body.encode())
        else:
            held.write_text(body)

    script = (
        "import os, sys\n"
        "from bgdl_nb._claims import claim\n"
        "from bgdl_nb._exceptions import InvalidDestination\n"
        "sys.stdin.readline()\n"
        "try:\n"
        f"    claim({str(dest)!r}, {{'engine': str(os.getpid())}}, carried={carried})\n"
        "    print('won', flush=True)\n"
        "except InvalidDestination as exc:\n"
        "    print('lost', exc, flush=True)\n"
        "sys.stdin.readline()\n")  # the winner stays alive (its claim live) until both have said
    for _ in range(20):
        dead = subprocess.Popen(["true"])
        dead.wait()
        stale(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
        racers = [subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   text=True) for _ in range(2)]
        for racer in racers:
            assert racer.stdin is not None
            racer.stdin.write("go\n")
            racer.stdin.flush()
        outcomes = []
        for racer in racers:
            assert racer.stdout is not None
            ready, _, _ = select.select([racer.stdout], [], [], 60)
            assert ready, "a racer did not answer within 60 s"
            outcomes.append(racer.stdout.readline().split()[0])
        for racer in racers:
            racer.communicate("done\n", timeout=60)
        assert sorted(outcomes) == ["lost", "won"], outcomes
        held.unlink()


def test_a_partial_file_another_user_put_at_the_destination_is_refused_and_left_untouched(other, shared, origin):
    """A new task's partial file has a name anyone can tell from the destination: in a
    folder others may write to, another user can make it first. It is refused, naming its
    owner, before a byte is written, and their file stays as it was."""
    os.chmod(shared, 0o1777)  # sticky, like /tmp
    dest = shared / "data.bin"
    planted = Path(carrier_name(dest))

    def plant(**_: Any) -> None:
        planted.write_bytes(b"theirs")
        os.chmod(planted, 0o644)
        os.setxattr(planted, "user.bgdl_nb.claim", json.dumps({"pid": 1, "host": "elsewhere"}).encode())

    as_other(other, plant)
    with bg.Session(bg.Configuration.default()) as session:
        with pytest.raises(bg.InvalidDestination, match=rf"belongs to {OTHER} \(uid \d+\), not to you.*left untouched"):
            session.download_task(origin.url("data.bin", 4096), dest)
    assert planted.read_bytes() == b"theirs" and planted.stat().st_uid == other.pw_uid
    assert not dest.exists() and origin.requests_for("data.bin") == []
