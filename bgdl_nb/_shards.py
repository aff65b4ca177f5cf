"""A cluster job's shards: how URLs are dealt to them, and what one shard does on its worker.

:func:`plan_shards` deals URLs to shards host by host; a :class:`ShardSpec` is what the
kernel submits; :func:`run_shard` is the Dask task: an ordinary background session of
bgdl_nb whose journal lives in the job's folder beside the data, with a reporter thread
that sends the shard's totals to the kernel through Dask and obeys pause, resume and
cancel. The kernel's side (the job, its panel and event log) is :mod:`bgdl_nb._cluster`.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ._config import Configuration
from ._exceptions import BgdlError, FetchError

__all__ = ["JOB_FOLDER", "ShardSpec", "plan_shards", "run_shard"]

JOB_FOLDER = ".bgdl-cluster"
_REPORT_INTERVAL = 0.4  # seconds between a shard's reports: a few per second for the whole cluster
_CONTROLS: dict[str, str] = {}  # job folder -> "pause" | "run" | "cancel", set on each worker by Client.run


# the plan -----------------------------------------------------------------------------------


def plan_shards(urls: Sequence[str], shards: int, spread: int | None = None) -> list[int]:
    """The shard of each URL: each host's URLs dealt round-robin over ``spread`` shards
    (all of them by default; fewer when the host allows fewer connections than there are
    shards), each host starting where the previous one stopped; URLs sharing a file name
    stay in one shard."""
    from ._fetch import file_name_for

    groups: dict[str, list[int]] = {}  # a file name -> the URLs that would write it
    for i, url in enumerate(urls):
        groups.setdefault(file_name_for(url), []).append(i)
    by_host: dict[str, list[list[int]]] = {}
    for members in groups.values():
        by_host.setdefault(urlsplit(urls[members[0]]).netloc.lower(), []).append(members)
    shard_of = [0] * len(urls)
    width = max(1, min(shards, spread or shards))
    start = 0
    for host in sorted(by_host):
        for turn, members in enumerate(by_host[host]):
            for i in members:
                shard_of[i] = (start + turn % width) % shards
        start += len(by_host[host])
    return shard_of


@dataclass
class ShardSpec:
    """What a worker needs to run one shard (plain data: it travels to the worker)."""

    job: str
    shard: int
    urls: list[str]
    sha256: list[str | None]
    dest: str
    state_dir: str
    per_host: int
    connections_per_file: int | None
    overwrite: bool
    topic: str
    max_concurrent_tasks: int = 4

    @property
    def identifier(self) -> str:
        return f"{self.job}.shard{self.shard}"

    def configuration(self) -> Configuration:
        return Configuration.background(self.identifier, use_service=False, state_directory=self.state_dir,
                                        http_maximum_connections_per_host=self.per_host,
                                        connections_per_file=self.connections_per_file,
                                        max_concurrent_tasks=self.max_concurrent_tasks)


# on a worker ---------------------------------------------------------------------------------


def _set_control(folder: str, action: str) -> None:
    """Run on every worker by ``Client.run``: the shards of that job obey ``action``."""
    _CONTROLS[folder] = action


def _append_json(path: Path, row: dict[str, Any]) -> None:
    # one short O_APPEND write: whole lines from processes of one host; a line that appends
    # from two hosts at once mangled (NFS) is skipped by the reader
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


class _ShardReporter:
    """Sends the shard's totals to the kernel through Dask, and applies pause/resume/cancel."""

    def __init__(self, spec: ShardSpec, worker: Any, session: Any) -> None:
        self.spec, self.worker, self.session = spec, worker, session
        self.applied = "run"
        self.done_paths: dict[str, Path] = {}  # the shard's files once fetch() returned them
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"bgdl-shard{spec.shard}-report", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, state: str, paths: dict[str, Path] | None = None) -> dict[str, Any]:
        """The final report, sent and returned (the kernel applies it with the shard's result,
        so a shard that ends before its report arrives is still shown as it ended)."""
        self._stop.set()
        self._thread.join(timeout=5)
        self.done_paths = paths or {}
        return self.send(state)

    def _loop(self) -> None:
        while not self._stop.wait(_REPORT_INTERVAL):
            with contextlib.suppress(Exception):  # a report that fails must not stop the shard
                self._obey(_CONTROLS.get(self.spec.state_dir, "run"))
                self.send("paused" if self.applied == "pause" else "running")

    def _obey(self, action: str) -> None:
        if action == self.applied:
            return
        if action == "pause":
            self.session.pause()
        elif action == "run":
            self.session.resume()
        elif action == "cancel":
            for task in self.session.all_tasks():
                if not task.done():
                    task.cancel()
        self.applied = action

    def send(self, state: str) -> dict[str, Any]:
        wanted = set(self.spec.urls)
        latest = {}
        for task in self.session.all_tasks():  # newest last: the newest task of each URL counts
            if task.original_request.url in wanted:
                latest[task.original_request.url] = task
        received = expected = 0
        finished = failed = 0
        active = []
        for task in latest.values():
            got, size = task.count_of_bytes_received, task.count_of_bytes_expected_to_receive
            received += got
            expected += size or got
            if task.done():
                finished += task.succeeded
                failed += not task.succeeded
            elif got:
                active.append([task.destination.name if task.destination else task.original_request.url, got, size])
        skipped = len(wanted) - len(latest) if state == "finished" else 0  # already complete: no task was needed
        for url in wanted - set(latest) if state == "finished" else ():
            with contextlib.suppress(OSError, KeyError):  # its bytes are here: the job's totals count them
                size = self.done_paths[url].stat().st_size
                received += size
                expected += size
        active.sort(key=lambda a: -a[1])
        report = {"shard": self.spec.shard, "worker": self.worker.address, "time": time.time(), "state": state,
                  "files": len(wanted), "finished": finished + skipped, "failed": failed, "received": received,
                  "expected": expected, "active": active[:4]}
        self.worker.log_event(self.spec.topic, report)
        return report


def _job_folder(folder: Path) -> Path:
    """The job's folder under ``dest/.bgdl-cluster/``, made or checked as private (its
    journals and signing key are state: on shared storage nobody else may plant or read them)."""
    from ._private import private_dir
    private_dir(folder.parent, "the cluster jobs folder")
    return private_dir(folder, "the cluster job folder")


def run_shard(spec: ShardSpec) -> dict[str, Any]:
    """Run one shard on this worker (a Dask task): a background session of its own whose
    journal is in the job's folder; returns the errors by URL (empty when all is done)."""
    import filelock
    from distributed import get_worker

    from ._fetch import fetch
    from ._session import Session

    worker = get_worker()
    folder = _job_folder(Path(spec.state_dir))
    config = spec.configuration()
    _append_json(folder / "runs.jsonl", {"time": time.time(), "shard": spec.shard, "worker": worker.address})
    # an earlier run of this shard may still hold its journal (a kernel restart leaves its shards
    # running): wait for it to end, then this run finds its work done or continues it
    with filelock.FileLock(str(folder / f"shard{spec.shard}.lock"), timeout=24 * 3600):
        with Session(config) as session:
            reporter = _ShardReporter(spec, worker, session)
            control = folder / "control.json"
            if control.exists():
                with contextlib.suppress(OSError, ValueError):
                    _CONTROLS.setdefault(str(folder), json.loads(control.read_text())["action"])
            reporter.start()
            state, errors, done = "finished", {}, {}
            try:
                paths = fetch(spec.urls, spec.dest, configuration=config,
                              hashes=spec.sha256 if any(spec.sha256) else None, progress=False,
                              overwrite=spec.overwrite, on_interrupt="suspend")
                done = dict(zip(spec.urls, paths))
            except FetchError as exc:
                state, errors = "failed", {url: f"{type(e).__name__}: {e}" for url, e in exc.errors.items()}
            except BgdlError as exc:
                state, errors = "failed", {url: f"{type(exc).__name__}: {exc}" for url in spec.urls}
            finally:
                report = reporter.stop(state, done)
    return {"shard": spec.shard, "worker": worker.address, "errors": errors, "report": report}
