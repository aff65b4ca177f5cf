"""Small helpers shared by tests."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from bgdl_nb import DownloadTask, Event, SessionDelegate


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def wait_until(condition: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    """Wait for ``condition`` with a bounded number of short waits on an Event."""
    pause = threading.Event()
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        pause.wait(0.01)


def wait_for_bytes(task: DownloadTask, at_least: int, timeout: float = 30.0) -> None:
    wait_until(lambda: task.count_of_bytes_received >= at_least or task.done(), timeout,
               f"task {task.task_identifier} to receive {at_least} bytes")


class Recorder(SessionDelegate):
    """Records every callback, and whether two ever overlapped."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.events: list[Event] = []
        self.active = 0
        self.overlapped = False
        self.threads: set[str] = set()
        self.finished_events = threading.Event()
        self._lock = threading.Lock()

    def _enter(self, *call: object) -> None:
        with self._lock:
            self.active += 1
            self.overlapped |= self.active > 1
            self.calls.append(call)
            self.threads.add(threading.current_thread().name)

    def _leave(self) -> None:
        with self._lock:
            self.active -= 1

    def did_write_data(self, session, task, bytes_written, total_bytes_written, expected):
        self._enter("write", task.task_identifier, bytes_written, total_bytes_written, expected)
        self._leave()

    def did_resume_at_offset(self, session, task, offset, expected):
        self._enter("resume", task.task_identifier, offset, expected)
        self._leave()

    def did_finish_downloading_to(self, session, task, location):
        self._enter("finish", task.task_identifier, Path(location), Path(location).exists())
        self._leave()

    def did_complete_with_error(self, session, task, error):
        self._enter("complete", task.task_identifier, error)
        self._leave()

    def did_finish_events_for_background_session(self, session):
        self._enter("finished_events")
        self._leave()
        self.finished_events.set()

    def did_receive_event(self, session, event):
        self.events.append(event)

    def names(self, tid: int | None = None) -> list[str]:
        return [c[0] for c in self.calls if tid is None or (len(c) > 1 and c[1] == tid)]


def run_in_kernel(kc, code: str, timeout: float = 120) -> str:
    """Execute ``code`` in a jupyter_client kernel client; return its text output or fail."""
    out: list[str] = []

    def hook(msg):
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            out.append("\n".join(msg["content"]["traceback"]))

    reply = kc.execute_interactive(code, timeout=timeout, output_hook=hook)
    assert reply["content"]["status"] == "ok", "".join(out)
    return "".join(out)


def kill_mid_file_and_run_again(origin, name: str, script: str, *args: str, state_dir: Path,
                                at_least: int) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a child Python; once ``at_least`` bytes of resource ``name`` are on
    their way, SIGKILL the child and the transfer service (as a crash would), then run the
    same script again to its end and return what it did."""
    import bgdl_nb as bg

    command = [sys.executable, "-c", script, *args]
    child = subprocess.Popen(command, env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: origin.bytes_sent(name) >= at_least or child.poll() is not None, timeout=60,
                   what=f"{at_least} bytes of {name} to be on their way")
        status = bg.service_status(state_dir)
    finally:
        child.send_signal(signal.SIGKILL)
        child.communicate()
    if status is not None:
        os.kill(status["pid"], signal.SIGKILL)
    return subprocess.run(command, env=os.environ.copy(), capture_output=True, text=True, timeout=120)


def fill_disk(folder: Path) -> Path:
    """Fill the small file system ``folder`` is on (a 4 MiB tmpfs) to its last byte with one
    file, and return it (unlink it to free the space)."""
    import pytest
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with pytest.raises(OSError, match="No space left"):
            for _ in range(2000):  # bounded: 4 MiB are full after 1,024 writes
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)
    return filler


def read_empty_while_claiming(destinations: list[Path], read: Callable[[Path], bytes | None],
                              claim_one: Callable[[Path], None]) -> list[Path]:
    """Claim each of ``destinations`` in turn while a thread reads each claim as soon as it
    is there (``read`` gives None until then): the destinations whose claim it read empty."""
    empty: list[Path] = []
    finished = threading.Event()

    def watch() -> None:
        for dest in destinations:
            while not finished.is_set():
                raw = read(dest)
                if raw is not None:
                    empty.extend([dest] if not raw else [])
                    break

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for dest in destinations:
            claim_one(dest)
    finally:
        finished.set()
        watcher.join(30)
    return empty
