"""One ``fetch()`` over a Dask cluster: shards on workers, one live panel, one event log.

``fetch(urls, dest, cluster=client)`` splits the job into shards, one per worker. URLs are
dealt to shards host by host (so each shard gets its share of every host, and the
per-host connection limit, divided among the shards, holds for the whole cluster); URLs
whose file names collide stay in one shard, so they are told apart exactly as on one
machine. Each shard runs on a worker as an ordinary background session of bgdl_nb,
``<identifier>.shard<k>``, whose journal and key live in ``dest/.bgdl-cluster/<identifier>/``:
on the shared storage the cluster writes ``dest`` to, beside the partial files. That is
what lets Dask run a shard again on another worker after the first one died: the journal
(offsets, validators, segments, digest marks) and the partial files are all there, so
finished files are skipped (the manifest and their sha256) and files in flight continue
from their bytes. Re-running the cell after a kernel restart submits the same shards,
which reattach to the same journals.

Workers report through Dask's own channels: every shard sends its totals and its active
files under the topic ``bgdl-<identifier>`` (``Worker.log_event``) a few times a second;
the kernel subscribes (``Client.subscribe_topic``) and the panel shows the sum. Pause,
resume and cancel reach every worker with ``Client.run``, and are written to the job's
folder so a shard that starts later (a rerun) obeys them too. The event log of the job
is read from the shard journals, with the worker that ran each stretch of a shard.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._config import Configuration
from ._exceptions import BgdlError, FetchError, InvalidInput
from ._shards import JOB_FOLDER, ShardSpec, _job_folder, _set_control, plan_shards, run_shard

if TYPE_CHECKING:
    import pandas
    from matplotlib.axes import Axes

__all__ = ["ClusterJob", "cluster_job"]

_JOBS: dict[str, ClusterJob] = {}  # the kernel's jobs by identifier: their futures stay held


def _require_distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise InvalidInput("fetch(..., cluster=client) needs Dask distributed: pip install 'bgdl_nb[cluster]'") from None
    return distributed


def check_client(client: Any) -> Any:
    """``client`` is a ``distributed.Client``; returns the ``distributed`` module."""
    distributed = _require_distributed()
    if not isinstance(client, distributed.Client):
        raise InvalidInput(f"cluster= takes a distributed.Client (from distributed import Client; "
                           f"client = Client(...)), not {type(client).__name__}")
    return distributed


# in the kernel -------------------------------------------------------------------------------


_COUNTS = ("files", "finished", "failed", "received", "expected")  # what a shard's report adds up


@dataclass
class _ShardView:
    """The newest report of one shard."""

    worker: str = ""
    state: str = "submitted"
    files: int = 0
    finished: int = 0
    failed: int = 0
    received: int = 0
    expected: int = 0
    active: list[list[Any]] = field(default_factory=list)
    time: float = 0.0


class ClusterJob:
    """One fetch over a Dask cluster: its shards, their live totals, its event log.

    Made by ``fetch(..., cluster=client)`` (and :func:`cluster_job` for a job that ran
    earlier); ``shards`` holds the newest report of every shard, :meth:`totals` their sum."""

    def __init__(self, client: Any, dest: str | os.PathLike[str], identifier: str) -> None:
        self.client = client
        self.dest = Path(dest).expanduser().absolute()
        self.identifier = identifier
        self.folder = self.dest / JOB_FOLDER / identifier
        self.topic = f"bgdl-{identifier}"
        self.shards: dict[int, _ShardView] = {}
        self.specs: dict[int, ShardSpec] = {}  # what each shard runs
        self.futures: list[Any] = []  # one per shard, in the order of ``specs``
        self._lock = threading.Lock()
        self.updates = 0

    # reports from the workers ---------------------------------------------------------------

    def _on_report(self, event: Any) -> None:
        """Called by Dask on the client's thread for every report under the job's topic."""
        _stamp, msg = event
        with self._lock:
            view = self.shards.setdefault(int(msg["shard"]), _ShardView())
            if float(msg["time"]) < view.time:
                return  # an older run's late report
            view.worker, view.state, view.time = msg["worker"], msg["state"], float(msg["time"])
            view.files, view.finished, view.failed = int(msg["files"]), int(msg["finished"]), int(msg["failed"])
            view.received, view.expected, view.active = int(msg["received"]), int(msg["expected"]), msg["active"]
            self.updates += 1

    def totals(self) -> dict[str, Any]:
        """Files and bytes over every shard, and per worker."""
        with self._lock:
            views = [(k, _ShardView(**vars(v))) for k, v in sorted(self.shards.items())]
        workers: dict[str, dict[str, Any]] = {}
        for _k, v in views:
            row = workers.setdefault(v.worker or "(starting)", {"shards": 0, "active": [],
                                                               **dict.fromkeys(_COUNTS, 0)})
            row["shards"] += 1
            for name in _COUNTS:
                row[name] += getattr(v, name)
            row["active"] += v.active
        return {**{name: sum(getattr(v, name) for _k, v in views) for name in _COUNTS}, "workers": workers,
                "states": [v.state for _k, v in views]}

    # control --------------------------------------------------------------------------------

    def _control(self, action: str) -> None:
        _job_folder(self.folder)
        (self.folder / "control.json").write_text(json.dumps({"action": action, "time": time.time()}))
        self.client.run(_set_control, str(self.folder), action)

    def pause(self) -> None:
        """Stop every transfer of the job on every worker (partial files stay)."""
        self._control("pause")

    def resume(self) -> None:
        """Undo :meth:`pause`."""
        self._control("run")

    def cancel(self) -> None:
        """Cancel every unfinished file of the job on every worker."""
        self._control("cancel")

    # the record -----------------------------------------------------------------------------

    @property
    def events(self) -> pandas.DataFrame:
        """Every event of every shard, in time order, with the ``worker`` that ran the shard
        at that time and the ``shard`` (read from the shard journals in the job's folder,
        so it survives kernel restarts)."""
        import pandas as pd

        from ._journal import read_journal
        from .notebook.frame import events_frame

        runs: list[dict[str, Any]] = []
        with contextlib.suppress(OSError):
            for line in (self.folder / "runs.jsonl").read_text().splitlines():
                with contextlib.suppress(ValueError):
                    runs.append(json.loads(line))
        frames = []
        for journal in sorted((self.folder / "sessions").glob(f"{self.identifier}.shard*.sqlite3")):
            shard = int(journal.stem.rsplit(".shard", 1)[1])
            _tasks, events = read_journal(journal, journal.stem)
            frame = events_frame(events)
            starts = sorted((r["time"], r["worker"]) for r in runs if r.get("shard") == shard)
            stamps = [t.timestamp() for t in frame["time"]]
            frame["worker"] = pd.array([_worker_at(starts, t) for t in stamps], dtype="string")
            frame["shard"] = pd.array([shard] * len(frame), dtype="Int64")
            frames.append(frame)
        if not frames:
            return events_frame([]).assign(worker=pd.array([], dtype="string"), shard=pd.array([], dtype="Int64"))
        merged = pd.concat(frames, ignore_index=True)
        return merged.sort_values("time", kind="stable").reset_index(drop=True)

    def plot_throughput(self, *, ax: Axes | None = None, bin_seconds: float | None = None) -> Axes:
        """MB/s over time: the cluster's total and each worker's."""
        return plot_cluster_throughput(self.events, ax=ax, bin_seconds=bin_seconds)

    def __repr__(self) -> str:
        t = self.totals()
        return (f"<ClusterJob {self.identifier!r}: {t['finished']}/{t['files']} files, {len(self.shards)} shards "
                f"reporting, {len(t['workers'])} workers>")


def _worker_at(starts: list[tuple[float, str]], t: float) -> str | None:
    """The worker whose run of a shard began last before ``t``."""
    found = None
    for at, worker in starts:
        if at <= t + 1e-3:
            found = worker
        else:
            break
    return found


def plot_cluster_throughput(events: pandas.DataFrame, *, ax: Axes | None = None,
                            bin_seconds: float | None = None) -> Axes:
    """The cluster's total MB/s and each worker's, from a cluster job's event log."""
    from .notebook.plots import draw_throughput, throughput_frame

    # a task is a shard's task: its bytes add up along one curve, whichever worker ran it
    keyed = events.assign(task_identifier=events["shard"].astype("Int64") * 1_000_000 + events["task_identifier"])
    frame = throughput_frame(keyed, bin_seconds)
    present = keyed[keyed["task_identifier"].notna()]
    worker_of = dict(zip(present["task_identifier"].astype(int), present["worker"]))
    by_worker: dict[str, Any] = {}
    for column in frame.columns:
        if column != "total":
            worker = worker_of.get(int(column)) or "?"
            by_worker[worker] = by_worker.get(worker, 0) + frame[column]
    return draw_throughput(frame, dict(sorted(by_worker.items())), ax=ax, total_label="cluster",
                           title="download throughput: the cluster and each worker")


def cluster_job(identifier: str, dest: str | os.PathLike[str] | None = None, client: Any = None) -> ClusterJob:
    """The cluster job ``identifier``: the one this kernel started, or (with ``dest``) the
    one that wrote into ``dest`` earlier, for its event log after a kernel restart; with
    ``client`` its pause, resume and cancel work too."""
    job = _JOBS.get(identifier)
    if job is not None and (dest is None or job.dest == Path(dest).expanduser().absolute()):
        return job
    if dest is None:
        raise InvalidInput(f"no cluster job {identifier!r} started in this kernel; pass dest= (the folder it "
                           "wrote into) to read its event log")
    return ClusterJob(client, dest, identifier)


# fetch(..., cluster=client) --------------------------------------------------------------------


def fetch_on_cluster(client: Any, urls: list[str], dest_dir: Path, names: list[str], expected: list[str | None],
                     *, identifier: str, overwrite: bool, configuration: Configuration | None, progress: bool,
                     timeout: float | None, wait: bool) -> tuple[list[Path], ClusterJob]:
    """Run the job on ``client``'s cluster and wait for it (see the module's text)."""
    distributed = check_client(client)
    job = ClusterJob(client, dest_dir, identifier)
    _job_folder(job.folder)
    plan_path = job.folder / "plan.json"
    known: dict[str, int] = {}
    with contextlib.suppress(OSError, ValueError):
        known = {str(u): int(s) for u, s in json.loads(plan_path.read_text())["shard_of"].items()}
    workers = max(1, len(client.scheduler_info(n_workers=-1).get("workers", {})))
    shards = max(known.values(), default=-1) + 1 or min(workers, len(urls))
    base = configuration or Configuration.background(identifier)
    limit = base.http_maximum_connections_per_host  # for the whole cluster, per host
    per_host = max(1, limit // shards)
    fresh = [i for i, u in enumerate(urls) if u not in known]
    for i, k in zip(fresh, plan_shards([urls[i] for i in fresh], shards, spread=limit)):
        known[urls[i]] = k  # a URL keeps its shard across re-runs: its journal is there
    plan_path.write_text(json.dumps({"identifier": identifier, "shards": shards, "shard_of": known}))
    members: dict[int, list[int]] = {}
    for i, url in enumerate(urls):
        members.setdefault(known[url], []).append(i)
    specs = [ShardSpec(job=identifier, shard=k, urls=[urls[i] for i in mine], sha256=[expected[i] for i in mine],
                       dest=str(dest_dir), state_dir=str(job.folder), per_host=per_host,
                       connections_per_file=base.connections_per_file, overwrite=overwrite, topic=job.topic,
                       max_concurrent_tasks=base.max_concurrent_tasks)
             for k, mine in sorted(members.items())]
    for spec in specs:
        job.shards[spec.shard] = _ShardView(files=len(spec.urls))
    running = _JOBS.get(identifier)
    if running is not None and running.dest == job.dest and running.specs == {s.shard: s for s in specs} \
            and any(not f.done() for f in running.futures):
        job = running  # the same cell again while its shards run: wait for them, do not start more
    else:
        run = secrets.token_hex(4)  # a finished job's shards run afresh (a file may have been deleted since)
        client.subscribe_topic(job.topic, job._on_report)
        job.specs = {spec.shard: spec for spec in specs}
        job.futures = [client.submit(run_shard, spec, key=f"bgdl-{identifier}-shard{spec.shard}-{run}", pure=False)
                       for spec in specs]
        _JOBS[identifier] = job  # its futures stay held (the shards go on) if the wait below is interrupted
    paths = [dest_dir / n for n in names]
    if not wait:
        return paths, job
    from ._progress import in_notebook
    display: Any = None
    if progress:
        if in_notebook():
            from .notebook.cluster import ClusterPanel
            display = ClusterPanel(job)
            display.display()
        else:
            display = _TextProgress(job)
    errors: dict[str, BgdlError] = {}
    deadline = None if timeout is None else time.monotonic() + timeout
    by_key = dict(zip((f.key for f in job.futures), job.specs.values()))
    try:
        pending = list(job.futures)
        while pending:
            try:
                distributed.wait(pending, timeout=0.25, return_when="FIRST_COMPLETED")
            except TimeoutError:
                pass
            for future in [f for f in pending if f.done()]:
                pending.remove(future)
                try:
                    result = future.result()
                except Exception as exc:  # the shard itself failed (a worker died too often, say)
                    result = {"errors": {u: f"shard {by_key[future.key].shard} failed: {type(exc).__name__}: {exc}"
                                         for u in by_key[future.key].urls}}
                if "report" in result:  # the shard's last word, even if its topic message comes later
                    job._on_report((None, result["report"]))
                for url, message in result["errors"].items():
                    errors[url] = BgdlError(message, url=url)
            if display is not None:
                display.refresh()
            if deadline is not None and time.monotonic() >= deadline and pending:
                for future in pending:  # the shards still running; the others' files are done or failed
                    for url in by_key[future.key].urls:
                        errors.setdefault(url, BgdlError(f"still downloading after {timeout} s on the cluster; call "
                                                         "fetch() again to wait for the rest", url=url))
                break
    finally:
        if display is not None:
            display.refresh(force=True)
            display.close(ended=not pending)
    if errors:
        from ._fetch import _without
        lines = "\n".join(f"  {url}: {_without(str(err), url)}" for url, err in errors.items())
        raise FetchError(f"{len(errors)} of {len(urls)} downloads did not complete on the cluster:\n{lines}",
                         errors=errors)
    return paths, job


class _TextProgress:
    """One line on a terminal, rewritten in place."""

    def __init__(self, job: ClusterJob) -> None:
        self.job = job
        self.last = 0.0

    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < 1.0:
            return
        self.last = now
        from rich.filesize import decimal  # not the notebook's formatter: a terminal may lack ipywidgets

        t = self.job.totals()
        print(f"\r{t['finished']}/{t['files']} files, {decimal(t['received'])} of "
              f"{decimal(t['expected'])} on {len(t['workers'])} workers", end="", flush=True)

    def close(self, ended: bool = True) -> None:
        print(flush=True)
