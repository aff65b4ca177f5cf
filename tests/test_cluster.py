"""One fetch over a Dask cluster: a LocalCluster of two worker processes, the demo origin
and nginx, real SIGKILLs of a worker and of the kernel-side process."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import bgdl_nb as bg
from bgdl_nb._cluster import plan_shards
from bgdl_nb._files import CHECKPOINT_BYTES
from bgdl_nb._journal import read_journal

from helpers import sha256_of, wait_until

distributed = pytest.importorskip("distributed")
pytestmark = pytest.mark.cluster

KIB = 1024


@pytest.fixture
def cluster():
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None,
                                  worker_dashboard_address=None) as local, distributed.Client(local) as client:
        yield local, client


def test_urls_are_dealt_host_by_host_and_colliding_names_share_a_shard():
    urls = [f"http://a.example/f{i}.bin" for i in range(6)] + [f"http://b.example/g{i}.bin" for i in range(3)]
    urls += ["http://b.example/x/same.bin", "http://b.example/y/same.bin"]
    shard_of = plan_shards(urls, 2)
    assert [shard_of[i] for i in range(6)].count(0) == 3  # each host's files spread evenly
    assert shard_of[-1] == shard_of[-2]  # same file name: one shard tells them apart, as on one machine
    assert set(plan_shards(urls, 4, spread=1)[:6]) == {0}  # a host allowing one connection: one shard


def test_a_job_over_two_workers_has_every_file_one_panel_total_and_one_event_log(origin, nginx, cluster, tmp_path):
    _local, client = cluster
    urls = [origin.url(f"o{i}.bin", 20 * KIB + i, rate=2_000_000) for i in range(100)]
    urls += [nginx.publish(f"n{i}.bin", bytes([i]) * (10 * KIB + i)) for i in range(100)]
    paths = bg.fetch(urls, tmp_path / "data", identifier="two-workers", cluster=client, progress=False)
    assert len(paths) == 200
    for i in range(100):
        assert sha256_of(paths[i]) == origin.sha256(f"o{i}.bin", 20 * KIB + i)
        assert paths[100 + i].read_bytes() == bytes([i]) * (10 * KIB + i)
    job = bg.cluster_job("two-workers")
    totals = job.totals()
    assert (totals["finished"], totals["files"], totals["failed"]) == (200, 200, 0)  # the kernel's view: 100 %
    assert len(totals["workers"]) == 2 and job.updates >= 2  # reports arrived through Dask from both workers
    events = job.events
    workers = set(client.scheduler_info()["workers"])
    assert set(events["worker"].dropna()) == workers  # rows from both workers
    assert events["time"].is_monotonic_increasing  # one log, in time order
    assert (events["event"] == "finished").sum() == 200
    again = bg.cluster_job("two-workers", dest=tmp_path / "data").events  # as read after a kernel restart
    assert len(again) == len(events)


def _pids(client) -> dict[str, int]:
    return client.run(os.getpid)


def test_a_worker_killed_mid_job_costs_no_finished_file_and_in_flight_files_resume(origin, cluster, tmp_path):
    _local, client = cluster
    small = [(f"s{i}.bin", 48 * KIB + i) for i in range(190)]
    big = [(f"b{i}.bin", 3 * 1024 * KIB + i) for i in range(10)]
    files = small + big
    urls = [origin.url(name, size, rate=1_500_000) for name, size in files]
    config = bg.Configuration.background("killed-worker", connections_per_file=1)
    from concurrent.futures import ThreadPoolExecutor

    folder = tmp_path / "data" / ".bgdl-cluster" / "killed-worker"
    pool = ThreadPoolExecutor(1)
    running = pool.submit(bg.fetch, urls, tmp_path / "data", identifier="killed-worker", cluster=client,
                          progress=False, configuration=config)

    def victim() -> int | None:
        """A shard with a big file journaled at least one checkpoint along, unfinished."""
        for journal in folder.glob("sessions/*.sqlite3"):
            try:
                tasks, _ = read_journal(journal, journal.stem)
            except (sqlite3.Error, bg.BgdlError):
                continue
            done = sum(t.state is bg.TaskState.COMPLETED for t in tasks)
            if done >= 10 and any(t.offset >= CHECKPOINT_BYTES and t.state is not bg.TaskState.COMPLETED
                                  for t in tasks):
                return int(journal.stem.rsplit(".shard", 1)[1])
        return None

    wait_until(lambda: victim() is not None or running.done(), timeout=120, what="a shard part way")
    assert not running.done()
    shard = victim()
    journal = next(folder.glob(f"sessions/*.shard{shard}.sqlite3"))
    tasks, _ = read_journal(journal, journal.stem)
    finished_before = {Path(t.destination).name for t in tasks if t.state is bg.TaskState.COMPLETED}
    job = bg.cluster_job("killed-worker")
    worker = job.shards[shard].worker
    killed_at = time.time()
    os.kill(_pids(client)[worker], signal.SIGKILL)
    paths = running.result(timeout=240)
    pool.shutdown()
    for (name, size), path in zip(files, paths):
        assert sha256_of(path) == origin.sha256(name, size), name
    for name in finished_before:  # finished before the kill: fetched once, never again
        assert len(origin.requests_for(name)) == 1, name
    resumed = [r for name, _ in big for r in origin.requests_for(name)
               if r.time > killed_at and r.headers.get("Range", "bytes=0-") != "bytes=0-"]
    assert resumed, "an in-flight big file continued from its partial bytes"
    total = sum(size for _, size in files)
    refetched = sum(origin.bytes_sent(name) for name, _ in files) - total
    per_host = config.http_maximum_connections_per_host
    assert 0 <= refetched <= per_host * (CHECKPOINT_BYTES + 256 * KIB), refetched
    events = job.events
    assert events["worker"].nunique() >= 2 and (events["event"] == "finished").sum() >= 200


def test_rerunning_the_cell_after_the_kernel_died_reattaches_to_the_running_job(origin, cluster, tmp_path):
    """The kernel-side process is SIGKILLed mid-job; its shards go on in the workers. The
    same call from a new process waits for them and starts nothing twice."""
    local, _client = cluster
    files = [(f"k{i}.bin", 512 * KIB + i) for i in range(24)]
    urls = [origin.url(name, size, rate=1_000_000) for name, size in files]
    script = textwrap.dedent(f"""
        import json, sys
        import distributed, bgdl_nb as bg
        client = distributed.Client({local.scheduler_address!r})
        paths = bg.fetch(json.loads(sys.argv[1]), {str(tmp_path / 'data')!r}, identifier="restarted",
                         cluster=client, progress=False)
        print(len(paths))
    """)
    first = subprocess.Popen([sys.executable, "-c", script, json.dumps(urls)], env=os.environ.copy())
    folder = tmp_path / "data" / ".bgdl-cluster" / "restarted"

    def under_way() -> bool:
        for journal in folder.glob("sessions/*.sqlite3"):
            try:
                tasks, _ = read_journal(journal, journal.stem)
            except (sqlite3.Error, bg.BgdlError):
                continue
            if any(t.state is bg.TaskState.COMPLETED for t in tasks):
                return True
        return first.poll() is not None

    try:
        wait_until(under_way, timeout=90, what="a first file finished")
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGKILL)  # the kernel dies; the shards run on in the workers
        first.wait()
    second = subprocess.run([sys.executable, "-c", script, json.dumps(urls)], env=os.environ.copy(),
                            capture_output=True, text=True, timeout=240)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.strip().endswith("24")
    for name, size in files:
        assert sha256_of(tmp_path / "data" / name) == origin.sha256(name, size)
        assert sum(r.bytes_sent for r in origin.requests_for(name)) == size, name  # nothing fetched twice


def test_the_panel_buttons_pause_resume_and_cancel_the_job_on_every_worker(origin, cluster, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from bgdl_nb.notebook.cluster import ClusterPanel

    _local, client = cluster
    files = [(f"p{i}.bin", 3 * 1024 * KIB + i) for i in range(8)]
    urls = [origin.url(name, size, rate=1_000_000) for name, size in files]
    pool = ThreadPoolExecutor(1)
    running = pool.submit(bg.fetch, urls, tmp_path / "data", identifier="buttons", cluster=client, progress=False)
    wait_until(lambda: "buttons" in bg._cluster._JOBS and len(bg.cluster_job("buttons").totals()["workers"]) == 2
               and bg.cluster_job("buttons").totals()["received"] > 0, timeout=60, what="both shards under way")
    job = bg.cluster_job("buttons")
    panel = ClusterPanel(job)
    panel.buttons["pause"].click()
    wait_until(lambda: [v.state for v in job.shards.values()] == ["paused", "paused"], timeout=30,
               what="both shards paused")
    updates = job.updates
    wait_until(lambda: job.updates >= updates + 4, timeout=30, what="two more reports from each shard")
    served = sum(origin.bytes_sent(name) for name, _ in files)
    updates = job.updates
    wait_until(lambda: job.updates >= updates + 4, timeout=30, what="two more reports from each shard")
    assert sum(origin.bytes_sent(name) for name, _ in files) == served  # paused: nothing moves on any worker
    panel.buttons["resume"].click()
    wait_until(lambda: sum(origin.bytes_sent(name) for name, _ in files) > served, timeout=30,
               what="transfers to go on")
    panel.buttons["cancel"].click()
    with pytest.raises(bg.FetchError) as caught:
        running.result(timeout=60)
    pool.shutdown()
    unfinished = [name for name, _ in files if not (tmp_path / "data" / name).exists()]
    assert unfinished and len(caught.value.errors) == len(unfinished)
    assert all("Cancelled" in str(e) for e in caught.value.errors.values())
    assert "cancelled" in panel.header.value


def test_a_cluster_that_is_not_a_client_is_refused_before_any_io(tmp_path):
    with pytest.raises(bg.InvalidInput, match=r"distributed\.Client"):
        bg.fetch(["http://127.0.0.1:9/a.bin"], tmp_path / "never", cluster="tcp://127.0.0.1:8786")
    assert not (tmp_path / "never").exists()
